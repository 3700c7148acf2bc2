"""notebooks/04_training.ipynb runs end to end: the loss goes down, the loading share is printed."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_training.ipynb"


def test_training_notebook_streams_batches_and_the_loss_goes_down(tmp_path, monkeypatch,
                                                                   small_cube):
    """Runs on the session's converted cube (``S2CUBE_CUBE``): the notebook's own conversion
    cell is the converter's, tested with it; here the loader and the training are."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("torch")
    monkeypatch.setenv("S2CUBE_CUBE", str(small_cube))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
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
