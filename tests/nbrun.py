"""Execute the notebooks as CI does: on a given cube, with every warning an error in the kernel.

Used by ``tests/test_notebooks.py`` and ``tests/test_notebook_training.py``, and by
``make notebooks``, which re-executes ``notebooks/0*.ipynb`` on a small synthetic cube (the
test suite's) and writes them back with their outputs, so they read on the repository's page
without being run::

    python tests/nbrun.py [NOTEBOOK ...]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

#: Run first inside the kernel, and taken out again before a notebook is saved: a warning,
#: from s2cube or from anything it calls, fails the notebook. Filters only for warnings of
#: other packages that neither s2cube nor the notebook can act on, each with its reason.
WARNINGS_AS_ERRORS = """\
import warnings

warnings.simplefilter("error")
"""

#: the kernel's environment: a cube given by path, figures as PNG
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "OMP_NUM_THREADS": "1"}


class NotebookWarning(AssertionError):
    """A notebook wrote a warning to its outputs (from a process the filters do not reach)."""


def execute(path: str | os.PathLike, cube: str | os.PathLike, workdir: str | os.PathLike,
            timeout: int = 300):
    """Execute the notebook at ``path`` on ``cube`` in ``workdir``; return the executed book.

    Raises ``nbclient.exceptions.CellExecutionError`` when a cell fails, a warning included,
    and :class:`NotebookWarning` when an output stream shows a warning.
    """
    import nbclient
    import nbformat

    book = nbformat.read(path, as_version=4)
    book.cells.insert(0, nbformat.v4.new_code_cell(WARNINGS_AS_ERRORS))
    env = {**os.environ, **KERNEL_ENV, "S2CUBE_CUBE": str(cube)}
    client = nbclient.NotebookClient(book, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)
    del book.cells[0]
    for cell in book.cells:
        cell.metadata.pop("execution", None)  # timestamps: noise in the committed files
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and "Warning" in out.get("text", ""):
                raise NotebookWarning(f"{Path(path).name}: {out['text'].strip()}")
    for i, cell in enumerate(c for c in book.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
    return book


def outputs(book) -> tuple[int, str]:
    """How many PNG figures a notebook shows, and all of its text outputs."""
    figures, text = 0, []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            figures += "image/png" in data
            text.append(out.get("text", "") + data.get("text/plain", "") + data.get("text/html", ""))
    return figures, "\n".join(text)


def small_cube(folder: Path) -> Path:
    """The test suite's cube (``tests/conftest.py``): 2 ROIs x 3x3 patches x 30 slots, 32 px."""
    from s2cube_conversion import convert
    from s2cube_conversion.synth import synthesize_archive

    synthesize_archive(folder / "archive", rois=("ROIs1868_73", "ROIs2017_8"), grid=(3, 3),
                       patch_size=32, seed=7)
    report = convert(folder / "archive", folder / "cube.zarr", n_workers=2)
    if not report.ok:
        raise RuntimeError(f"the conversion reported problems: {report.problems}")
    return folder / "cube.zarr"


def main(argv: list[str]) -> int:
    """Re-execute the notebooks (all by default) and write them back with their outputs."""
    import nbformat

    paths = [Path(a) for a in argv] or sorted(NOTEBOOKS.glob("0*.ipynb"))
    with tempfile.TemporaryDirectory(prefix="s2cube-notebooks-") as tmp:
        cube = small_cube(Path(tmp))
        for path in paths:
            book = execute(path, cube, tmp)
            nbformat.write(book, path)
            figures, _ = outputs(book)
            print(f"{path}: {figures} figures, {path.stat().st_size / 1e3:.0f} kB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
