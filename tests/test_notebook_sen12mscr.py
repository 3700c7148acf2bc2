"""notebooks/05_sen12ms_cr.ipynb runs end to end with no warning: both layouts converted (here:
the session's cubes), the pairs found, the reference's leak shown, and training on the
combined, leak-free split lowers the loss."""

from __future__ import annotations

import re
import time

import pytest
from nbrun import NOTEBOOKS, execute, outputs

NOTEBOOK = NOTEBOOKS / "05_sen12ms_cr.ipynb"


def test_sen12mscr_notebook_pairs_and_trains_without_leaks(tmp_path, small_cube, cr_cube,
                                                           monkeypatch):
    """Runs on the session's cubes (``S2CUBE_CUBE``, ``S2CUBE_CR_CUBE``): the notebook's own
    conversion cells are the converter's, tested with it."""
    pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("torch")
    monkeypatch.setenv("S2CUBE_CR_CUBE", str(cr_cube))
    t = time.perf_counter()
    nb = execute(NOTEBOOK, small_cube, tmp_path, timeout=120)
    elapsed = time.perf_counter() - t
    figures, text = outputs(nb)
    assert figures >= 1
    assert re.search(r"pairs: \d+ for 18 time-series patches", text), text
    assert "substring of s1_7" in text and "ROIs1868_summer_100" in text
    m = re.search(r"loss: first 5 steps ([\d.]+) -> last 5 steps ([\d.]+)", text)
    assert m and float(m.group(2)) < float(m.group(1)), text
    assert "training patches sharing ground with a SEN12MS-CR-TS test patch: 0" in text
    assert elapsed < 90, f"the notebook took {elapsed:.0f} s"
