"""The notebooks run end to end against the small converted cube, show their figures, and
raise no warning (``tests/nbrun.py`` makes every warning an error inside the kernel)."""

from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from nbrun import NOTEBOOKS, execute, outputs  # noqa: E402

EXPECTED = {  # notebook -> (figures at least, text that must appear in its outputs)
    "01_quickstart.ipynb": (2, "EPSG:"),
    "02_cloud_statistics.ipynb": (4, "cloudy_share"),
    "03_baselines_and_metrics.ipynb": (3, "rmse_cloudy"),
    "06_seq2seq.ipynb": (3, "internal learning"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_and_shows_its_figures(name, small_cube, tmp_path):
    book = execute(NOTEBOOKS / name, small_cube, tmp_path)
    figures, text = outputs(book)
    min_figures, must_show = EXPECTED[name]
    assert figures >= min_figures, f"{name} showed {figures} figures"
    assert must_show in text


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("0*.ipynb")))
def test_notebook_is_committed_with_its_outputs(name):
    """Readable on the repository's page without running it: every code cell has run, in
    order, figures are PNG, and the file stays small (``make notebooks`` regenerates them)."""
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"{name}: not executed in order; run `make notebooks`"
    figures, text = outputs(book)
    assert figures >= EXPECTED.get(name, (0, ""))[0], f"{name}: figures missing"
    assert "Warning" not in text and "Traceback" not in text
    for cell in code:
        for out in cell.outputs:
            assert out.get("output_type") != "error", f"{name}: an error is committed"
            assert "image/svg+xml" not in out.get("data", {}), f"{name}: SVG figure"
    size = (NOTEBOOKS / name).stat().st_size
    assert size < 400_000, f"{name} is {size / 1e3:.0f} kB"
