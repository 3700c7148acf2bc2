"""The notebooks run end to end against the small converted cube and show their figures."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = {  # notebook -> (figures at least, text that must appear in its outputs)
    "01_quickstart.ipynb": (2, "EPSG:"),
    "02_cloud_statistics.ipynb": (4, "cloudy_share"),
    "03_baselines_and_metrics.ipynb": (3, "rmse_cloudy"),
}


def _outputs(book) -> tuple[int, str]:
    figures, text = 0, []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            figures += "image/png" in data
            text.append(out.get("text", "") + data.get("text/plain", "") + data.get("text/html", ""))
    return figures, "\n".join(text)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_and_shows_its_figures(name, small_cube, tmp_path, monkeypatch):
    monkeypatch.setenv("S2CUBE_CUBE", str(small_cube))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(book, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    figures, text = _outputs(book)
    min_figures, must_show = EXPECTED[name]
    assert figures >= min_figures, f"{name} showed {figures} figures"
    assert must_show in text
