"""The synthetic archive looks like SEN12MS-CR-TS as archive.md describes it, read back with rasterio."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from s2cube import schema  # noqa: E402
from s2cube_conversion.synth import (  # noqa: E402
    CORRUPT_KINDS,
    DEFAULT_ROIS,
    ENV_VAR,
    SynthManifest,
    real_pixels_available,
    real_pixels_path,
    synthesize_archive,
)

P = 32
GRID = (2, 3)  # rows != cols, so a swapped axis shows
NAME = re.compile(
    r"^(s[12])_(ROIs\d{4})_(\d+)_ImgNo_(\d+)_(\d{4}-\d{2}-\d{2})_patch_(\d+)\.tif$"
)
MISSING_PIXELS = (
    f"real Sentinel-2 pixels not found at {real_pixels_path()} (set ${ENV_VAR} to the file)"
)


def _need_real_pixels() -> None:
    if not real_pixels_available():
        pytest.skip(MISSING_PIXELS)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> SynthManifest:
    _need_real_pixels()
    return synthesize_archive(tmp_path_factory.mktemp("a") / "root", grid=GRID, patch_size=P,
                              seed=7)


@pytest.fixture(scope="module")
def s2_frames(archive) -> dict[str, np.ndarray]:
    return {f: _read(archive.path(f)) for f in archive.files if "/S2/" in f}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> SynthManifest:
    _need_real_pixels()
    return synthesize_archive(tmp_path_factory.mktemp("d") / "root", grid=GRID, patch_size=P,
                              n_slots=4, seed=3, missing=0.1, corrupt=3, holes=1, junk=True)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _parse(rel: str) -> dict:
    coll, roi, mod, slot, name = rel.split("/")
    match = NAME.match(name)
    assert match, f"{name} does not follow archive.md's naming"
    prefix, coll2, roi2, slot2, date, pid = match.groups()
    assert (mod, coll, roi, slot) == (prefix.upper(), coll2, roi2, slot2), rel
    assert name.split("_")[5] == date  # archive.md: the date is the 6th token
    return {"roi": f"{coll}_{roi}", "mod": prefix, "slot": int(slot), "date": date,
            "pid": int(pid)}


def _mosaic(archive: SynthManifest, roi_name: str, slot: int) -> np.ndarray:
    """Assemble one ROI's S2 slot from the files, placed by their georeference only."""
    tiles = {}
    for rel in archive.files:
        info = _parse(rel)
        if (info["roi"], info["mod"], info["slot"]) == (roi_name, "s2", slot):
            with rasterio.open(archive.path(rel)) as src:
                tiles[(src.transform.f, src.transform.c)] = src.read()
    ys = sorted({k[0] for k in tiles}, reverse=True)
    xs = sorted({k[1] for k in tiles})
    return np.concatenate([np.concatenate([tiles[(y, x)] for x in xs], 2) for y in ys], 1)


# --- tree, names, file format ------------------------------------------------------------

def test_tree_and_file_names_follow_archive_md(archive):
    on_disk = sorted(p.relative_to(archive.root).as_posix()
                     for p in archive.root.rglob("*") if p.is_file())
    assert on_disk == list(archive.files)
    assert len(on_disk) == len(DEFAULT_ROIS) * 2 * GRID[0] * GRID[1] * schema.N_SLOTS
    parsed = [_parse(rel) for rel in on_disk]
    assert {p["roi"] for p in parsed} == set(DEFAULT_ROIS) <= set(schema.ROIS)
    assert {p["slot"] for p in parsed} == set(range(schema.N_SLOTS))
    assert sorted(p.name for p in archive.root.iterdir()) == ["ROIs1868", "ROIs2017"]
    assert sorted(p.name for p in (archive.root / "ROIs1868" / "73").iterdir()) == ["S1", "S2"]
    keys = {m: {(p["roi"], p["slot"], p["pid"]) for p in parsed if p["mod"] == m}
            for m in ("s1", "s2")}
    assert keys["s1"] == keys["s2"]  # every S2 patch has its S1 twin


def test_files_have_the_archives_bands_dtypes_and_layout(archive):
    roi = archive.rois[0]
    r, c, pid = next(roi.locations())
    with rasterio.open(archive.path(roi.relpath("s2", 0, pid))) as s2, \
            rasterio.open(archive.path(roi.relpath("s1", 0, pid))) as s1:
        assert (s2.count, set(s2.dtypes), s2.width, s2.height) == (13, {"uint16"}, P, P)
        assert (s1.count, set(s1.dtypes), s1.width, s1.height) == (2, {"float64"}, P, P)
        for src in (s2, s1):
            assert src.driver == "GTiff" and src.compression is None and src.nodata is None
            assert src.profile["tiled"] is False
            assert src.res == (10.0, 10.0)
            assert src.crs.to_epsg() == roi.epsg
            assert tuple(src.transform)[:6] == roi.transform(r, c)
        assert s1.transform == s2.transform
    # one file is exactly the pixels: 13 x P x P x 2 bytes plus a small header
    size = archive.path(roi.relpath("s2", 0, pid)).stat().st_size
    assert 13 * P * P * 2 <= size < 13 * P * P * 2 + 4096


def test_rois_sit_in_utm_zones_of_both_hemispheres(archive):
    epsg = {roi.name: roi.epsg for roi in archive.rois}
    assert 32601 <= epsg["ROIs1868_73"] <= 32660  # north
    assert 32701 <= epsg["ROIs2017_8"] <= 32760  # south
    assert schema.ROIS["ROIs1868_73"].split != schema.ROIS["ROIs2017_8"].split
    for rel in archive.files:
        if "/0/" in rel:  # every file of slot 0 carries its ROI's CRS
            with rasterio.open(archive.path(rel)) as src:
                assert src.crs.to_epsg() == epsg[_parse(rel)["roi"]]
                assert 0 < src.transform.f < 10_000_000 and 100_000 < src.transform.c < 900_000


def test_patches_tile_seamlessly_and_ids_are_not_positions(archive):
    for roi in archive.rois:
        where = {}
        for rel in archive.files:
            info = _parse(rel)
            if info["roi"] == roi.name and info["slot"] == 3:
                with rasterio.open(archive.path(rel)) as src:
                    where[info["pid"]] = (src.transform.c, src.transform.f)
        xs = sorted({x for x, _ in where.values()})
        ys = sorted({y for _, y in where.values()}, reverse=True)
        assert (len(ys), len(xs)) == GRID
        assert np.all(np.diff(xs) == P * 10) and np.all(np.diff(ys) == -P * 10)
        for pid, (x, y) in where.items():  # placed by georeference, ids agree row-major
            assert roi.pids[ys.index(y)][xs.index(x)] == pid
        stride = roi.pids[1][0] - roi.pids[0][0]
        assert stride > GRID[1] and min(where) > 0


def test_neighbouring_patches_continue_each_other(archive):
    roi = archive.rois[0]
    cover = np.array(roi.cloud_cover)
    blank_slots = {t for t, _ in roi.blank}
    slot = next(t for t in range(archive.n_slots)
                if cover[t].max() == 0 and t not in blank_slots)
    nir = _mosaic(archive, roi.name, slot)[7].astype(float)
    steps = np.abs(np.diff(nir, axis=1)).mean(axis=0)  # between columns x and x+1
    border, inside = steps[P - 1], np.delete(steps, [P - 1, 2 * P - 1]).mean()
    assert border < 3 * inside  # independent patches would jump at the border


# --- determinism ---------------------------------------------------------------------------

def test_same_seed_gives_byte_identical_files(archive, tmp_path):
    twin = synthesize_archive(tmp_path / "twin", grid=GRID, patch_size=P, seed=7)
    assert dataclasses.replace(twin, root=archive.root) == archive
    for rel in archive.files:
        assert archive.path(rel).read_bytes() == twin.path(rel).read_bytes(), rel


def test_different_seeds_give_different_data(tmp_path):
    _need_real_pixels()
    a, b = (synthesize_archive(tmp_path / str(s), grid=GRID, patch_size=P, n_slots=2, seed=s)
            for s in (1, 2))
    roi_a, roi_b = a.rois[0], b.rois[0]
    pid = roi_a.pids[0][0]
    assert not np.array_equal(_read(a.path(roi_a.relpath("s2", 0, pid))),
                              _read(b.path(roi_b.relpath("s2", 0, pid))))


# --- what samplers and cloud detectors need --------------------------------------------------

def test_about_half_the_frames_are_clouded_and_some_fully_clear(archive, s2_frames):
    frames = np.stack([v for v in s2_frames.values() if v.any()]).astype(np.int64)
    cloudy = (frames[:, 10] > 50) | (frames[:, 1:4].mean(axis=1) > 2000)  # B10 / brightness
    share = cloudy.mean(axis=(1, 2))
    assert 0.4 <= (share > 0.05).mean() <= 0.75
    clear = frames[share == 0]
    assert len(clear) >= 0.2 * len(frames)
    # clear frames are vegetated land: NIR (B8) well above red (B4), reflectance < 0.6
    assert np.median(clear[:, 7]) > 2 * np.median(clear[:, 3])
    assert np.percentile(clear[:, :10], 99) < 6000
    truth = np.array([c for roi in archive.rois for c in roi.cloud_cover]).ravel()
    assert abs((truth > 0.05).mean() - (share > 0.05).mean()) < 0.1


def test_blank_frames_and_glare_occur_as_recorded(archive, s2_frames):
    blank = {(_parse(rel)["roi"], _parse(rel)["slot"], _parse(rel)["pid"])
             for rel, v in s2_frames.items() if not v.any()}
    recorded = {(roi.name, t, pid) for roi in archive.rois for t, pid in roi.blank}
    assert blank == recorded and len(blank) >= len(archive.rois)
    assert max(int(v.max()) for v in s2_frames.values()) > 10000


def test_s1_is_db_backscatter_with_some_nans(archive):
    s1 = np.stack([_read(archive.path(f)) for f in archive.files if "/S1/" in f])
    nan_files = np.isnan(s1).any(axis=(1, 2, 3))
    assert 0 < nan_files.sum() < 0.5 * len(s1)
    vv, vh = np.nanmedian(s1[:, 0]), np.nanmedian(s1[:, 1])
    assert -25 < vh < vv < 0
    assert np.nanpercentile(s1, 1) > -50 and np.nanpercentile(s1, 99) < 5


def test_dates_increase_per_slot_and_s1_s2_differ_within_a_slot(archive):
    dates: dict[tuple, set] = {}
    for rel in archive.files:
        p = _parse(rel)
        dates.setdefault((p["roi"], p["mod"], p["slot"]), set()).add(p["date"])
    for roi in archive.rois:
        for mod, listed in (("s1", roi.s1_dates), ("s2", roi.s2_dates)):
            found = [dates[(roi.name, mod, t)] for t in range(archive.n_slots)]
            assert found == [{d} for d in listed]  # one date per ROI and slot, as recorded
            days = np.array(listed, dtype="datetime64[D]")
            assert np.all(np.diff(days) > np.timedelta64(0, "D"))
            assert all(d.startswith("2018-") for d in listed)
        gap = np.array(roi.s1_dates, "datetime64[D]") - np.array(roi.s2_dates, "datetime64[D]")
        assert np.all(gap != np.timedelta64(0, "D")) and np.all(abs(gap) <= np.timedelta64(5))
        spacing = np.diff(np.array(roi.s2_dates, "datetime64[D]")).astype(int).mean()
        assert 10 <= spacing <= 14


# --- damage, junk and options -----------------------------------------------------------------

def test_missing_corrupt_and_junk_files_are_what_the_manifest_says(damaged):
    m = damaged
    planned = len(m.rois) * (GRID[0] * GRID[1] - 1) * m.n_slots * 2  # one hole per ROI
    assert len(m.files) + len(m.missing) == planned
    assert len(m.missing) == round(0.1 * planned)
    tifs = sorted(p.relative_to(m.root).as_posix() for p in m.root.rglob("*.tif"))
    assert tifs == list(m.files)
    assert not any(m.path(f).exists() for f in m.missing)
    assert set(m.corrupt) <= set(m.files) and len(m.corrupt) == 3
    assert m.corrupt_kinds == CORRUPT_KINDS
    for rel in m.corrupt:
        with pytest.raises(rasterio.errors.RasterioIOError):
            with rasterio.open(m.path(rel)) as src:
                src.read()
    good = [f for f in m.files if f not in m.corrupt]
    assert all(_read(m.path(f)).shape[1:] == (P, P) for f in good[::7])
    assert {Path(j).name for j in m.junk} == {".DS_Store", "notes.txt", "checksums.md5"}
    assert not any(j.endswith(".tif") for j in m.junk)
    assert any(len(Path(j).parts) == 5 for j in m.junk)  # one sits inside a slot folder
    on_disk = {p.relative_to(m.root).as_posix() for p in m.root.rglob("*") if p.is_file()}
    assert on_disk == set(m.files) | set(m.junk)
    assert m.bytes_written == sum(m.path(f).stat().st_size for f in on_disk)
    md5 = next(j for j in m.junk if j.endswith("checksums.md5"))
    for line in m.path(md5).read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.md5((m.path(md5).parent / name).read_bytes()).hexdigest() == digest
    for roi in m.rois:
        assert sum(pid < 0 for line in roi.pids for pid in line) == 1


def test_damage_leaves_the_other_files_unchanged(damaged, tmp_path):
    clean = synthesize_archive(tmp_path / "clean", grid=GRID, patch_size=P, n_slots=4, seed=3,
                               holes=1)
    assert set(clean.files) == set(damaged.files) | set(damaged.missing)
    for rel in damaged.files:
        if rel not in damaged.corrupt:
            assert clean.path(rel).read_bytes() == damaged.path(rel).read_bytes()


def test_s2_only_archive_with_per_roi_grid_and_missing_count(tmp_path):
    _need_real_pixels()
    m = synthesize_archive(tmp_path / "a", rois=["ROIs1970_20"], grid=GRID,
                           grids={"ROIs1970_20": (1, 4)}, patch_size=P, n_slots=2, s1=False,
                           missing=2)
    assert not list(m.root.rglob("S1"))
    assert m.rois[0].grid == (1, 4) and len(m.missing) == 2 and len(m.files) == 8 - 2
    assert m.rois[0].epsg // 100 == 326  # europa: north


def test_bad_arguments_are_refused_with_a_clear_message(tmp_path):
    _need_real_pixels()
    bad = [
        ({"patch_size": 0}, "patch_size"), ({"patch_size": 4}, "patch_size"),
        ({"n_slots": 31}, "n_slots"), ({"grids": {"ROIs1970_20": (1, 1)}}, "ROIs1970_20"),
        ({"rois": ["ROIs9999_1"]}, "ROIs9999_1"), ({"missing": 1.5}, "missing"),
        ({"corrupt": -1}, "corrupt"), ({"holes": 6}, "holes"), ({"grid": (2,)}, "rows, cols"),
        ({"rois": ["ROIs1868_73", "ROIs1868_73"]}, "twice"), ({"spectra": "fake"}, "spectra"),
    ]
    for kwargs, words in bad:
        with pytest.raises(ValueError, match=re.escape(words)):
            synthesize_archive(tmp_path / "x", **{"grid": GRID, "patch_size": P, **kwargs})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="empty directory"):
        synthesize_archive(tmp_path / "full", patch_size=P)


def test_absent_real_pixels_raise_unless_the_stand_in_is_asked_for(tmp_path, monkeypatch):
    nowhere = tmp_path / "nowhere" / "reference_scenes.npy"
    monkeypatch.setenv(ENV_VAR, str(nowhere))
    assert real_pixels_path() == nowhere and not real_pixels_available()
    with pytest.raises(FileNotFoundError, match=ENV_VAR) as err:
        synthesize_archive(tmp_path / "a", patch_size=P, n_slots=2)
    assert str(nowhere) in str(err.value) and "synthetic" in str(err.value)
    assert not (tmp_path / "a").exists()  # nothing written before the check
    m = synthesize_archive(tmp_path / "b", grid=GRID, patch_size=P, n_slots=2,
                           spectra="synthetic")
    s2 = _read(m.path(next(f for f in m.files if "/S2/" in f)))
    assert s2.shape == (13, P, P) and s2.dtype == np.uint16 and m.spectra == "synthetic"

