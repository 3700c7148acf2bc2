"""notebooks/04_training.ipynb runs end to end with no warning: the loss goes down, the
loading share is printed."""

from __future__ import annotations

import re
import time

import pytest
from nbrun import NOTEBOOKS, execute

NOTEBOOK = NOTEBOOKS / "04_training.ipynb"


def test_training_notebook_streams_batches_and_the_loss_goes_down(tmp_path, small_cube):
    """Runs on the session's converted cube (``S2CUBE_CUBE``): the notebook's own conversion
    cell is the converter's, tested with it; here the loader and the training are."""
    pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("torch")
    t = time.perf_counter()
    nb = execute(NOTEBOOK, small_cube, tmp_path, timeout=120)
    elapsed = time.perf_counter() - t
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []))
    m = re.search(r"loss: first 5 steps ([\d.]+) -> last 5 steps ([\d.]+)", text)
    assert m, text
    assert float(m.group(2)) < float(m.group(1))
    share = re.search(r"data loading: ([\d.]+)% of step time", text)
    assert share and 0 <= float(share.group(1)) <= 100
    assert "steps: 40" in text
    assert elapsed < 60, f"the notebook took {elapsed:.0f} s"
