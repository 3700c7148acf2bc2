"""The full-cardinality synthetic archive: real-like grids, same bytes as synth, resumable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("rasterio")

from s2cube import schema
from s2cube_conversion.synth import real_pixels_available, synthesize_archive
from s2cube_conversion.synth_full import (
    PARTIAL,
    TEST_PATCHES,
    TOTAL_PATCHES,
    full_archive_grids,
    synthesize_full_archive,
)

ROIS = ("ROIs1868_73", "ROIs2017_8")


def _need_real_pixels() -> None:
    if not real_pixels_available():
        pytest.skip("real Sentinel-2 pixels not found")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_grids_have_the_real_archives_cardinality():
    grids = full_archive_grids()
    assert set(grids) == set(schema.ROIS)
    counts = {n: r * c - h for n, (r, c, h) in grids.items()}
    assert sum(counts.values()) == TOTAL_PATCHES
    assert all(0 <= h < c for _, c, h in grids.values())
    for region, total in TEST_PATCHES.items():
        assert sum(n for name, n in counts.items() if schema.ROIS[name].split == "test"
                   and schema.ROIS[name].region == region) == total
    assert grids["ROIs1868_73"] == (16, 15, 0)
    assert counts["ROIs1868_100"] == 300
    assert 200 <= min(counts.values()) and max(counts.values()) <= 400


def test_same_bytes_as_synth_and_a_killed_run_resumes(tmp_path):
    _need_real_pixels()
    kw = {"patch_size": 8, "n_slots": 3, "seed": 5}
    ref = synthesize_archive(tmp_path / "ref", rois=ROIS, grid=(2, 3), **kw)
    full = synthesize_full_archive(tmp_path / "full", rois=ROIS, grid=(2, 3), workers=1, **kw)
    assert full.files == full.written == len(ref.files) and full.kept == 0
    assert _tree(tmp_path / "full") == _tree(ref.root)
    # a run killed mid-way: some files gone, one half-written under its temporary name
    files = sorted((tmp_path / "full").rglob("*.tif"))
    for f in files[::3]:
        f.unlink()
    half = files[1].with_name(files[1].name + PARTIAL)
    half.write_bytes(b"II*\x00")
    files[1].unlink()
    again = synthesize_full_archive(tmp_path / "full", rois=ROIS, grid=(2, 3), workers=2, **kw)
    assert again.written == len(files[::3]) + 1 and again.kept == len(files) - again.written
    assert not half.exists()
    assert _tree(tmp_path / "full") == _tree(ref.root)


def test_real_like_grids_are_used_without_a_grid(tmp_path):
    _need_real_pixels()
    out = synthesize_full_archive(tmp_path / "a", rois=["ROIs1868_100"], n_slots=1, s1=False,
                                  workers=1)
    assert out.patches == 300 and out.files == 300
    assert len(os.listdir(tmp_path / "a" / "ROIs1868" / "100" / "S2" / "0")) == 300


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="ROIs9999_1"):
        synthesize_full_archive(tmp_path / "x", rois=["ROIs9999_1"])
    with pytest.raises(ValueError, match="patch_size=4"):
        synthesize_full_archive(tmp_path / "x", patch_size=4)
    (tmp_path / "f").write_text("")
    with pytest.raises(FileExistsError, match="not a directory"):
        synthesize_full_archive(tmp_path / "f", rois=ROIS, n_slots=1)
