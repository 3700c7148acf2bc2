"""Synthetic SEN12MS-CR archives: the layout, real pixels, overlapping patches, gaps in the
patch numbers, an unpaired patch, the ground of the time-series archive; reproducible."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from s2cube import sen12mscr as cr
from s2cube_conversion.cr_synth import DEFAULT_SCENES, synthesize_cr_archive
from s2cube_conversion.synth import synthesize_archive


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.tif")):
        h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_the_layout_and_its_quirks(cr_archive):
    root = cr_archive.root
    assert sorted(p.name for p in root.iterdir()) == sorted(
        f"{c}_{cr.SEASONS[c]}_{m}" for c in ("ROIs1868", "ROIs2017") for m in cr.MODALITIES)
    assert [s.name for s in cr_archive.scenes] == list(DEFAULT_SCENES)
    for scene in cr_archive.scenes:
        pids = scene.pids
        assert len(pids) == 24 and pids == tuple(sorted(pids))
        assert max(pids) - min(pids) + 1 == 25  # one number left out: a gap
        t = [scene.transform(p) for p in pids]
        xs = sorted({v[2] for v in t})
        assert np.diff(xs).tolist() == [160.0] * 4  # 16 px of 10 m: patches overlap by half
        for pid in pids[:3]:
            with rasterio.open(root / cr.relpath(scene.name, "s2", pid)) as src:
                assert (src.count, src.dtypes[0], src.width) == (13, "uint16", 32)
                assert src.crs.to_epsg() == scene.epsg and tuple(src.transform)[:6] == scene.transform(pid)
            with rasterio.open(root / cr.relpath(scene.name, "s1", pid)) as src:
                assert (src.count, src.dtypes[0]) == (2, "float32")
    (lost,) = cr_archive.unpaired
    assert "s2_cloudy" in lost and not (root / lost).exists()
    assert (root / lost.replace("s2_cloudy", "s2")).exists()
    (scene, pid) = cr_archive.blank[0]
    with rasterio.open(root / cr.relpath(scene, "s2_cloudy", pid)) as src:
        assert not src.read().any()
    with rasterio.open(root / cr.relpath(scene, "s2", pid)) as src:
        assert src.read().any()


def test_shared_scenes_lie_on_the_time_series_ground(cr_archive, synthetic_archive):
    for roi, scene in (("ROIs1868_73", "ROIs1868_summer_73"), ("ROIs2017_8", "ROIs2017_winter_8")):
        ts = next(synthetic_archive.glob(f"{roi.split('_')[0]}/{roi.split('_')[1]}/S2/0/*.tif"))
        with rasterio.open(ts) as src:
            epsg = src.crs.to_epsg()
        s = cr_archive.scene(scene)
        assert s.roi == roi and s.epsg == epsg


def test_the_same_arguments_give_the_same_bytes(tmp_path):
    kw = {"scenes": ("ROIs1868_73", "ROIs1158_spring_9"), "grid": (2, 2), "patch_size": 16,
          "seed": 5}
    a = synthesize_cr_archive(tmp_path / "a", **kw)
    b = synthesize_cr_archive(tmp_path / "b", **kw)
    assert a.files == b.files and _digest(a.root) == _digest(b.root)
    assert [s.name for s in a.scenes] == ["ROIs1158_spring_9", "ROIs1868_summer_73"]
    with pytest.raises(ValueError, match="neither a SEN12MS-CR scene"):
        synthesize_cr_archive(tmp_path / "c", scenes=("ROIs9999_x_1",))
    with pytest.raises(FileExistsError):
        synthesize_cr_archive(tmp_path / "a", **kw)


def test_cli_synth_writes_either_layout(tmp_path):
    from s2cube.cli import main

    runner = CliRunner()
    out = runner.invoke(main, ["synth", str(tmp_path / "cr"), "--layout", "sen12ms-cr", "--roi",
                               "ROIs2017_winter_8", "--grid", "2x2", "--patch-size", "16",
                               "--gaps", "0", "--unpaired", "0"])
    assert out.exit_code == 0, out.output
    assert "1 SEN12MS-CR scenes" in out.output
    assert len(list((tmp_path / "cr").rglob("*.tif"))) == 27  # 3x3 overlapping patches, 3 files
    out = runner.invoke(main, ["synth", str(tmp_path / "x"), "--layout", "sen12ms-cr", "--junk"])
    assert out.exit_code == 2 and "--junk" in out.output


def test_time_series_archives_are_unchanged(tmp_path):
    m = synthesize_archive(tmp_path / "ts", rois=("ROIs1868_73",), grid=(1, 1), patch_size=16,
                           n_slots=2, seed=1)
    assert len(m.files) == 4
