# make demo  — set up .venv and convert a small synthetic archive (local files)
# make test  — set up .venv and run the test suite
# make lint typecheck docs wheel-smoke oldest — the other CI steps (.ci/run runs them all)
# make notebooks — re-execute notebooks/*.ipynb on a small synthetic cube, keep their outputs
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
DEMO   ?= demo-output
PYTEST_ARGS ?=

.PHONY: setup demo demo-s3 test test-s3 lint typecheck docs notebooks wheel-smoke oldest bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	rm -rf $(DEMO)
	$(BIN)/s2cube synth $(DEMO)/archive --roi ROIs1868_73 --roi ROIs2017_8 --grid 3x3 --patch-size 128 --seed 0
	$(BIN)/s2cube convert $(DEMO)/archive $(DEMO)/cube.zarr
	$(BIN)/s2cube validate $(DEMO)/archive $(DEMO)/cube.zarr
	$(BIN)/s2cube info $(DEMO)/cube.zarr

demo-s3: setup
	$(PY) tests/servers.py demo $(DEMO)-s3

test: setup
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-s3: setup
	$(BIN)/pytest -q -m s3 tests/s3

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

# the API reference, the CLI and the docs/ pages, warnings as errors: docs/_build/html
docs: setup
	rm -rf docs/_build docs/api/generated
	$(BIN)/sphinx-build -b html -W --keep-going -q docs docs/_build/html

notebooks: setup
	$(PY) tests/nbrun.py

# sdist + wheel, installed with its extras into a fresh venv outside the repository
wheel-smoke: setup
	.ci/wheel-smoke

# a smoke subset of the tests against the oldest versions pyproject.toml allows
oldest:
	.ci/oldest

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache .mypy_cache docs/_build docs/api/generated
