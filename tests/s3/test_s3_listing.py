"""Listing an archive on S3: the folders listed in parallel find exactly what one listing finds."""

from __future__ import annotations

import pytest
from conftest import BUCKET

from s2cube.io.storage import parse_location
from s2cube_conversion.discover import discover, list_files


@pytest.fixture(scope="module")
def odd_archive(seaweed, archive, tmp_path_factory) -> str:
    """The test archive with files at every level of the tree (root, collection, ROI), a
    second collection and an empty-looking folder, uploaded to a fresh prefix."""
    import shutil

    root = tmp_path_factory.mktemp("odd") / "archive"
    shutil.copytree(archive, root)
    (root / "README.txt").write_text("not a patch")
    collection = next(p for p in root.iterdir() if p.is_dir())
    (collection / "notes.txt").write_text("a stray file in a collection folder")
    roi = next(p for p in collection.iterdir() if p.is_dir())
    (roi / "stray.tif").write_bytes(b"not a tiff")
    (root / "ROIs2017" / "8" / "S2").mkdir(parents=True)
    (root / "ROIs2017" / "8" / "S2" / "readme.md").write_text("another ROI, nothing to convert")
    seaweed.upload_folder(root, BUCKET, "odd-archive")
    return root


@pytest.mark.parametrize("threads", [1, 4, 16])
def test_parallel_listing_finds_what_the_local_tree_holds(seaweed, odd_archive, threads):
    loc = parse_location(f"s3://{BUCKET}/odd-archive", seaweed.storage_options())
    local = list_files(parse_location(str(odd_archive)))
    assert list_files(loc, threads=threads) == local
    assert "README.txt" in local and "ROIs2017/8/S2/readme.md" in local


def test_discovery_on_s3_equals_discovery_on_disk(seaweed, odd_archive):
    on_s3 = discover(parse_location(f"s3://{BUCKET}/odd-archive", seaweed.storage_options()))
    on_disk = discover(parse_location(str(odd_archive)))
    assert [f.path for f in on_s3.files] == [f.path for f in on_disk.files]
    assert sorted(on_s3.skipped) == sorted(on_disk.skipped)
    assert [p.path for p in on_s3.problems] == [p.path for p in on_disk.problems]
    assert any(p.path.endswith("stray.tif") for p in on_s3.problems) or any(
        s.endswith("stray.tif") for s in on_s3.skipped)


def test_a_selection_of_an_roi_the_bucket_lacks_lists_nothing_of_it(seaweed, odd_archive):
    loc = parse_location(f"s3://{BUCKET}/odd-archive", seaweed.storage_options())
    assert list_files(loc, ["ROIs1158/106", "ROIs9999/1"]) == {}
