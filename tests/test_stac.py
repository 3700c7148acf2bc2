"""The STAC catalog of a cube: valid, searchable, exact footprints, in step with conversions.

Validation is offline: the published JSON schemas are kept in ``tests/stac_schemas/``
(``https://<host>/<path>`` of each is ``tests/stac_schemas/<host>/<path>``, see its
README), and both jsonschema and pystac's validator resolve every ``$ref`` there; a
reference to anything else fails instead of going to the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pystac = pytest.importorskip("pystac")
pytest.importorskip("pyproj")
pytest.importorskip("jsonschema")

from s2cube import stac  # noqa: E402
from s2cube.errors import NotACubeError, S2CubeError  # noqa: E402

SCHEMAS = Path(__file__).parent / "stac_schemas"
CORE = {
    "Feature": "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json",
    "Collection": "https://schemas.stacspec.org/v1.1.0/collection-spec/json-schema/collection.json",
}
NORTH, SOUTH = "ROIs1868_73", "ROIs2017_8"


# --- offline validation ------------------------------------------------------------------


def local_schemas() -> dict[str, dict]:
    """Every schema kept in the repository, by the URL it is published at."""
    return {"https://" + p.relative_to(SCHEMAS).as_posix(): json.loads(p.read_text())
            for p in sorted(SCHEMAS.rglob("*.json"))}


def registry():
    from referencing import Registry, Resource
    from referencing.exceptions import NoSuchResource

    def offline(uri: str):
        raise NoSuchResource(ref=uri)  # never fetched: a missing schema is a test failure

    return Registry(retrieve=offline).with_resources(
        (url, Resource.from_contents(schema)) for url, schema in local_schemas().items())


def validation_errors(obj: dict) -> list[str]:
    """jsonschema errors of a STAC dict against its core schema and each declared extension."""
    from jsonschema import Draft7Validator

    schemas, reg = local_schemas(), registry()
    errors = []
    for uri in [CORE[obj["type"]], *obj.get("stac_extensions", [])]:
        assert uri in schemas, f"{uri} is not kept in tests/stac_schemas"
        for err in Draft7Validator(schemas[uri], registry=reg).iter_errors(obj):
            errors.append(f"{uri}: {'/'.join(map(str, err.absolute_path))}: {err.message[:200]}")
    return errors


@pytest.fixture
def offline_pystac_validator():
    """pystac's own validator, fed the local schemas and refusing to fetch any other."""
    from pystac.validation import JsonSchemaSTACValidator, RegisteredValidator, set_validator

    class OfflineValidator(JsonSchemaSTACValidator):
        def _get_schema(self, schema_uri: str) -> dict:
            if schema_uri not in self.schema_cache:
                raise AssertionError(f"pystac wanted to fetch {schema_uri}")
            return self.schema_cache[schema_uri]

    validator = OfflineValidator()
    validator.schema_cache.update(local_schemas())
    before = RegisteredValidator._validator
    set_validator(validator)
    yield validator
    RegisteredValidator._validator = before


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog(small_cube) -> Path:
    """The small cube's catalog at its default place (a sibling ``cube.stac``)."""
    url = stac.write_catalog(small_cube)
    return Path(url).parent


@pytest.fixture(scope="module")
def collection_dict(catalog) -> dict:
    return json.loads((catalog / "collection.json").read_text())


@pytest.fixture(scope="module")
def item_dicts(catalog) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(catalog.glob("*/*.json"))}


@pytest.fixture(scope="module")
def cube_ds(small_cube):
    import s2cube

    return s2cube.open_cube(small_cube)


# --- layout and validity ----------------------------------------------------------------


def test_written_beside_the_cube_with_relative_links(small_cube, catalog, collection_dict,
                                                     item_dicts):
    assert catalog == small_cube.parent / "cube.stac"
    assert sorted(item_dicts) == [NORTH, SOUTH]
    for name in (NORTH, SOUTH):
        assert (catalog / name / "thumbnail.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hrefs = [link["href"] for link in collection_dict["links"] if link["rel"] in ("item", "root")]
    assert all(h.startswith("./") for h in hrefs)
    assert collection_dict["assets"]["cube"]["href"] == "../cube.zarr"
    for item in item_dicts.values():
        assert item["assets"]["cube"]["href"] == "../../cube.zarr"
        assert item["assets"]["thumbnail"]["href"] == "./thumbnail.png"
        assert all(not link["href"].startswith("/") for link in item["links"])
        assert "self" not in {link["rel"] for link in item["links"]}


def test_collection_and_items_validate_offline(collection_dict, item_dicts):
    assert validation_errors(collection_dict) == []
    for item in item_dicts.values():
        assert validation_errors(item) == []
    for ext in ("datacube", "projection", "eo", "sci", "zarr"):
        assert any(ext in uri for uri in collection_dict["stac_extensions"]
                   + item_dicts[NORTH]["stac_extensions"])


@pytest.mark.parametrize("path, value", [
    (("sci:doi",), "not a doi"),
    (("assets", "cube", "xarray:open_kwargs"), "engine=zarr"),
    (("cube:dimensions", "y", "axis"), "q"),
    (("cube:variables", "s2", "dimensions"), "roi"),
    (("assets", "cube", "bands", 0, "eo:common_name"), "ultraviolet"),
])
def test_the_schemas_catch_a_broken_field(collection_dict, path, value):
    broken = json.loads(json.dumps(collection_dict))
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert validation_errors(broken), f"{path} = {value!r} passed validation"


@pytest.mark.parametrize("path, value", [
    (("properties", "proj:shape"), [96]),
    (("properties", "eo:cloud_cover"), 150),
    (("properties", "proj:geometry"), {"type": "Polygon"}),
    (("assets", "cube", "zarr:zarr_format"), 4),
    (("bbox",), "everywhere"),
])
def test_the_schemas_catch_a_broken_item_field(item_dicts, path, value):
    broken = json.loads(json.dumps(item_dicts[NORTH]))
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert validation_errors(broken), f"{path} = {value!r} passed validation"


def test_pystac_validates_offline(catalog, offline_pystac_validator):
    collection = stac.read_catalog(catalog)
    assert collection.validate()
    for item in collection.get_items():
        assert item.validate()
    assert offline_pystac_validator.schema_cache  # served from the local files only


def test_round_trip_through_pystac(catalog, collection_dict, item_dicts):
    collection = pystac.Collection.from_file(str(catalog / "collection.json"))
    assert collection.to_dict(include_self_link=False, transform_hrefs=True) == collection_dict
    for item in collection.get_items():
        assert item.to_dict(include_self_link=False, transform_hrefs=True) == item_dicts[item.id]
    assert collection.extent.temporal.intervals[0][0].year == 2018
    assert collection.ext.has("sci") and collection.ext.sci.doi == "10.1109/TGRS.2022.3146246"


# --- contents --------------------------------------------------------------------------------


def test_collection_describes_the_whole_cube(collection_dict, item_dicts, cube_ds):
    c = collection_dict
    assert c["id"] == "sen12ms-cr-ts" and c["license"] == stac.LICENSE
    assert c["sci:doi"] == "10.1109/TGRS.2022.3146246" and "Ebel" in c["sci:citation"]
    assert {"producer", "licensor", "processor"} <= {r for p in c["providers"] for r in p["roles"]}
    assert set(c["cube:dimensions"]) == set(cube_ds.dims)
    expected_vars = set(cube_ds.data_vars) | {n for n in cube_ds.coords if n not in cube_ds.dims}
    assert set(c["cube:variables"]) == expected_vars
    for name, var in c["cube:variables"].items():
        assert var["dimensions"] == list(cube_ds[name].dims)
    assert c["cube:dimensions"]["band"]["values"] == list(cube_ds.band.values)
    # spatial extent: union first, then one box per ROI
    boxes = c["extent"]["spatial"]["bbox"]
    union = boxes[0]
    for item in item_dicts.values():
        b = item["bbox"]
        assert union[0] <= b[0] and union[1] <= b[1] and union[2] >= b[2] and union[3] >= b[3]
        assert b in boxes[1:]
    start, end = c["extent"]["temporal"]["interval"][0]
    assert start == min(i["properties"]["start_datetime"] for i in item_dicts.values())
    assert end == max(i["properties"]["end_datetime"] for i in item_dicts.values())


def test_bands_carry_centre_wavelengths(collection_dict, cube_ds):
    bands = collection_dict["assets"]["cube"]["bands"]
    eo_bands = collection_dict["summaries"]["eo:bands"]
    assert [b["name"] for b in bands] == [b["name"] for b in eo_bands] == list(cube_ds.band.values)
    nm = cube_ds.wavelength.values
    assert np.allclose([b["eo:center_wavelength"] * 1000 for b in bands], nm, atol=0.05)
    assert np.allclose([b["center_wavelength"] * 1000 for b in eo_bands], nm, atol=0.05)
    assert {b["name"]: b["common_name"] for b in eo_bands}["B4"] == "red"


def test_cube_asset_opens_with_the_zarr_facts(collection_dict):
    asset = collection_dict["assets"]["cube"]
    assert asset["type"] == "application/vnd.zarr" and asset["roles"] == ["data"]
    assert asset["zarr:zarr_format"] == 3 and asset["zarr:consolidated"] is True
    assert asset["xarray:open_kwargs"]["engine"] == "zarr"
    assert asset["xarray:open_kwargs"]["consolidated"] is True
    assert "storage:refs" not in asset  # a local cube: no storage scheme


def test_items_describe_their_roi(item_dicts, cube_ds):
    for name, item in item_dicts.items():
        one = cube_ds.sel(roi=name)
        props = item["properties"]
        grid = cube_ds.s2cube.grid(name)
        assert props["proj:code"] == f"EPSG:{int(one.epsg)}"
        assert props["proj:shape"] == [grid.height, grid.width]
        assert props["proj:transform"] == list(grid.transform)
        assert props["s2cube:split"] == str(one.split.values)
        assert props["s2cube:region"] == str(one.region.values)
        # dates: the first and last valid frame of either sensor
        v2, v1 = one.valid_s2.values, one.valid_s1.values
        dates = np.concatenate([one.s2_date.values[v2], one.s1_date.values[v1]])
        first, last = (str(np.datetime_as_string(d, "s")) + "Z" for d in (dates.min(), dates.max()))
        assert (props["start_datetime"], props["end_datetime"]) == (first, last)
        assert props["datetime"] is None
        # cloudiness: mean coverage over valid S2 frames, per detector, in percent
        for k, det in enumerate(cube_ds.detector.values):
            want = float(one.coverage.values[..., k][v2].mean()) * 100
            assert props["s2cube:cloud_cover"][str(det)] == pytest.approx(want, abs=1e-3)
        assert props["eo:cloud_cover"] == props["s2cube:cloud_cover"]["s2cloudless_mask"]


def test_thumbnail_shows_the_least_cloudy_slot(item_dicts, cube_ds, catalog):
    from s2cube.analysis.quicklook import quicklook

    for name, item in item_dicts.items():
        one = cube_ds.sel(roi=name)
        cov = np.where(one.valid_s2.values, one.coverage.values[..., 0], 1.0).mean(axis=(1, 2))
        slot = item["properties"]["s2cube:thumbnail_slot"]
        assert cov[slot] == cov.min()
        png = quicklook(one.s2.isel(time=slot).sel(band=["B4", "B3", "B2"])).to_png()
        assert (catalog / name / "thumbnail.png").read_bytes() == png


def test_footprints_match_the_grids_to_the_centimetre(item_dicts, cube_ds):
    from pyproj import Transformer

    for name, item in item_dicts.items():
        grid = cube_ds.s2cube.grid(name)
        ring = np.array(item["geometry"]["coordinates"][0])
        assert (ring[0] == ring[-1]).all() and len(ring) > 5  # closed and densified
        back = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
        x, y = back.transform(ring[:, 0], ring[:, 1])
        left, bottom, right, top = grid.bounds
        for cx, cy in [(left, top), (left, bottom), (right, bottom), (right, top)]:
            assert np.hypot(x - cx, y - cy).min() < 0.01, f"{name}: corner {cx, cy} missing"
        on_edge = np.minimum.reduce([abs(x - left), abs(x - right), abs(y - top), abs(y - bottom)])
        assert on_edge.max() < 0.01  # every vertex lies on the grid's outline
        lon, lat = ring[:, 0], ring[:, 1]
        assert item["bbox"] == [lon.min(), lat.min(), lon.max(), lat.max()]
        area = 0.5 * np.sum(lon[:-1] * lat[1:] - lon[1:] * lat[:-1])
        assert area > 0  # counter-clockwise exterior ring (RFC 7946)
    assert item_dicts[NORTH]["bbox"][1] > 0 > item_dicts[SOUTH]["bbox"][3]


# --- search and open -------------------------------------------------------------------------


def test_search_by_bbox_and_date_finds_the_right_rois(catalog, item_dicts, cube_ds):
    north, south = item_dicts[NORTH]["bbox"], item_dicts[SOUTH]["bbox"]
    around = lambda b: [b[0] - 0.01, b[1] - 0.01, b[2] + 0.01, b[3] + 0.01]  # noqa: E731
    assert [i.id for i in stac.search(catalog, bbox=around(north))] == [NORTH]
    assert [i.id for i in stac.search(catalog, bbox=around(south))] == [SOUTH]
    assert [i.id for i in stac.search(catalog, bbox=[-180, -90, 180, 90])] == [NORTH, SOUTH]
    assert stac.search(catalog, bbox=[0, 60, 10, 70]) == []  # nowhere near
    assert [i.id for i in stac.search(catalog, bbox=[-180, 0, 180, 90])] == [NORTH]
    assert stac.search(catalog, datetime="2017-01-01/2017-12-31") == []
    assert len(stac.search(catalog, datetime="2018-06-01")) == 2
    assert len(stac.search(catalog, datetime=("2018-06-01", None))) == 2
    assert stac.search(catalog, datetime="2019-01-01/..") == []
    assert [i.id for i in stac.search(catalog, split="test")] == [NORTH]
    assert [i.id for i in stac.search(catalog, region="africa")] == [SOUTH]
    # the matching ROIs open from the cube
    found = stac.search(catalog, bbox=around(south), datetime="2018-01-01/2018-12-31")
    picked = cube_ds.s2cube.sel_roi([i.id for i in found])
    assert list(picked.roi.values) == [SOUTH]
    assert list(cube_ds.sel(roi=[i.id for i in found]).roi.values) == [SOUTH]
    with pytest.raises(ValueError, match="west, south, east, north"):
        stac.search(catalog, bbox=[1, 2, 3])
    with pytest.raises(ValueError, match="RFC 3339"):
        stac.search(catalog, datetime="last tuesday")


def test_resolve_turns_stac_into_the_cube_url(catalog, small_cube, item_dicts):
    import s2cube

    want = (str(small_cube), None)
    collection = stac.read_catalog(catalog)
    item = next(iter(collection.get_items()))
    assert stac.resolve(collection) == want
    assert stac.resolve(item) == want
    assert stac.resolve(collection.assets["cube"]) == want
    assert stac.resolve(catalog) == want  # the catalog folder
    assert stac.resolve(str(catalog / "collection.json")) == want
    assert stac.resolve(catalog / SOUTH / f"{SOUTH}.json") == want
    raw = pystac.Collection.from_file(str(catalog / "collection.json"))  # relative asset href
    assert stac.resolve(raw) == want
    as_dict = dict(item_dicts[SOUTH])
    with pytest.raises(NotACubeError, match="relative"):
        stac.resolve(as_dict)  # no self link to resolve "../../cube.zarr" against
    self_link = {"rel": "self", "href": str(catalog / SOUTH / f"{SOUTH}.json")}
    assert stac.resolve({**as_dict, "links": [*as_dict["links"], self_link]}) == want
    on_s3 = {**as_dict, "links": [{"rel": "self", "href": f"s3://b/x.stac/{SOUTH}/{SOUTH}.json"}],
             "assets": {"cube": {**as_dict["assets"]["cube"],
                                 "xarray:storage_options": {"endpoint_url": "http://127.0.0.1:9"}}}}
    assert stac.resolve(on_s3) == ("s3://b/cube.zarr", {"endpoint_url": "http://127.0.0.1:9"})
    assert stac.resolve(on_s3, {"endpoint_url": "http://127.0.0.1:8", "anon": True})[1] == {
        "endpoint_url": "http://127.0.0.1:8", "anon": True}  # the caller's options win
    _, options = stac.resolve(catalog, storage_options={"anon": True})
    assert options == {"anon": True}
    url, options = stac.resolve(catalog)
    ds = s2cube.open_cube(url, storage_options=options)
    assert set(ds.roi.values) == {NORTH, SOUTH}
    no_cube = {**as_dict, "assets": {"thumbnail": as_dict["assets"]["thumbnail"]}}
    with pytest.raises(NotACubeError, match="no Zarr asset"):
        stac.resolve(no_cube)
    with pytest.raises(NotACubeError, match="nothing at"):
        stac.resolve(catalog.parent / "nowhere.stac")


def test_is_stac(catalog, small_cube, collection_dict):
    assert stac.is_stac(catalog) and stac.is_stac(str(catalog / "collection.json"))
    assert stac.is_stac(collection_dict) and stac.is_stac(stac.read_catalog(catalog))
    assert not stac.is_stac(small_cube) and not stac.is_stac(str(small_cube))
    assert not stac.is_stac({"not": "stac"}) and not stac.is_stac(42)


def test_xpystac_opens_the_same_dataset_as_open_zarr(catalog, small_cube, local_threads):
    pytest.importorskip("xpystac")
    import xarray as xr

    collection = stac.read_catalog(catalog)
    expected = xr.open_zarr(small_cube)
    xr.testing.assert_identical(xr.open_dataset(collection.assets["cube"]), expected)
    item = collection.get_item(NORTH)
    one = xr.open_dataset(item.assets["cube"]).sel(roi=NORTH)
    xr.testing.assert_identical(one, expected.sel(roi=NORTH))


# --- keeping in step, elsewhere, inline ----------------------------------------------------


def test_catalog_of_an_incremental_conversion_lists_every_roi(synthetic_archive, tmp_path,
                                                               dask_client):
    from s2cube_conversion import Selection, convert

    cube = tmp_path / "grown.zarr"
    convert(synthetic_archive, cube, selection=Selection(rois=(NORTH,)), client=dask_client)
    first = Path(stac.write_catalog(cube))
    assert first == tmp_path / "grown.stac" / "collection.json"
    listed = [link["href"] for link in json.loads(first.read_text())["links"]
              if link["rel"] == "item"]
    assert listed == [f"./{NORTH}/{NORTH}.json"]
    thumb = first.parent / NORTH / "thumbnail.png"
    stamp = thumb.stat().st_mtime_ns
    os.utime(thumb, ns=(stamp - 10**9, stamp - 10**9))

    convert(synthetic_archive, cube, selection=Selection(rois=(SOUTH,)), client=dask_client)
    again = stac.read_catalog(stac.write_catalog(cube))
    assert sorted(i.id for i in again.get_items()) == [NORTH, SOUTH]
    assert again.extent.spatial.bboxes[0][1] < 0 < again.extent.spatial.bboxes[0][3]
    assert sorted(again.summaries.to_dict()["s2cube:roi"]) == [NORTH, SOUTH]
    assert thumb.stat().st_mtime_ns == stamp - 10**9  # same slot: the thumbnail was kept
    assert (first.parent / SOUTH / "thumbnail.png").exists()
    assert validation_errors(again.to_dict(include_self_link=False)) == []


def test_catalog_elsewhere_points_at_the_cube_absolutely(small_cube, tmp_path):
    out = tmp_path / "elsewhere" / "catalog"
    url = stac.write_catalog(small_cube, out, thumbnails=False)
    data = json.loads(Path(url).read_text())
    assert data["assets"]["cube"]["href"] == str(small_cube)
    moved = tmp_path / "moved"
    os.rename(out, moved)
    assert stac.resolve(moved) == (str(small_cube), None)
    item = json.loads((moved / NORTH / f"{NORTH}.json").read_text())
    assert "thumbnail" not in item["assets"]


def test_catalog_on_an_fsspec_filesystem(small_cube):
    import fsspec

    url = stac.write_catalog(small_cube, "memory://stac-test/catalog")
    assert url == "memory://stac-test/catalog/collection.json"
    fs = fsspec.filesystem("memory")
    assert fs.exists(f"/stac-test/catalog/{NORTH}/thumbnail.png")
    collection = stac.read_catalog("memory://stac-test/catalog")
    assert sorted(i.id for i in collection.get_items()) == [NORTH, SOUTH]
    assert stac.resolve("memory://stac-test/catalog") == (str(small_cube), None)
    fs.rm("/stac-test", recursive=True)


def test_build_catalog_writes_nothing(small_cube, tmp_path):
    out = tmp_path / "never"
    collection = stac.build_catalog(small_cube, out=out)
    assert isinstance(collection, pystac.Collection)
    assert sorted(i.id for i in collection.get_items()) == [NORTH, SOUTH]
    assert collection.get_self_href() == str(out / "collection.json")
    assert not out.exists()


def test_default_location():
    assert stac.default_location("/data/sen12mscrts.zarr") == "/data/sen12mscrts.stac"
    assert stac.default_location("/data/cube/") == "/data/cube.stac"
    assert stac.default_location("s3://bucket/cubes/v1.zarr") == "s3://bucket/cubes/v1.stac"
    assert stac.default_location("s3://bucket/v1.zarr") == "s3://bucket/v1.stac"
    with pytest.raises(S2CubeError, match="--out"):
        stac.default_location("s3://bucket")


def test_not_a_cube_is_refused(tmp_path):
    with pytest.raises(NotACubeError):
        stac.write_catalog(tmp_path / "nothing.zarr")


def test_s3_facts_name_the_place_never_the_credentials(monkeypatch):
    from s2cube.io.storage import parse_location

    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    secret = {"key": "AKIDEXAMPLE", "secret": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"}
    custom = stac._s3_facts(parse_location(
        "s3://cubes/v1.zarr", {**secret, "endpoint_url": "http://127.0.0.1:8333",
                               "client_kwargs": {"region_name": "eu-central-1"}}))
    assert custom[0] == {"type": "custom-s3", "platform": "http://127.0.0.1:8333",
                         "bucket": "cubes", "region": "eu-central-1", "requester_pays": False}
    assert custom[1] == {"endpoint_url": "http://127.0.0.1:8333",
                         "client_kwargs": {"region_name": "eu-central-1"}}
    aws = stac._s3_facts(parse_location("s3://my-bucket/v1.zarr", {**secret, "anon": True}))
    assert aws[0]["type"] == "aws-s3" and aws[0]["region"] == "us-east-1"
    assert aws[1]["anon"] is True
    assert "EXAMPLE" not in json.dumps([custom, aws])
    assert stac._s3_facts(parse_location("/data/v1.zarr")) is None


def test_storage_extension_fields_validate(small_cube, monkeypatch):
    """An S3 cube's catalog (storage:schemes, storage:refs, xarray:storage_options) validates."""
    from s2cube.io.storage import parse_location

    facts = stac._s3_facts(parse_location("s3://cubes/v1.zarr", {
        "endpoint_url": "http://127.0.0.1:8333", "client_kwargs": {"region_name": "us-east-1"}}))
    monkeypatch.setattr(stac, "_s3_facts", lambda loc: facts)
    collection = stac.build_catalog(small_cube)
    data = collection.to_dict(include_self_link=False)
    assert data["storage:schemes"]["s3"]["platform"] == "http://127.0.0.1:8333"
    assert data["assets"]["cube"]["storage:refs"] == ["s3"]
    assert validation_errors(data) == []
    for item in collection.get_items():
        assert validation_errors(item.to_dict(include_self_link=False)) == []


# --- the command line ------------------------------------------------------------------------


def test_cli_writes_prints_and_fails_clearly(small_cube, tmp_path):
    from click.testing import CliRunner

    from s2cube.cli import main

    runner = CliRunner()
    out = tmp_path / "cli.stac"
    done = runner.invoke(main, ["stac", str(small_cube), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert f"wrote {out / 'collection.json'}" in done.output
    assert (out / NORTH / "thumbnail.png").exists()

    inline = runner.invoke(main, ["stac", str(small_cube), "--inline"])
    assert inline.exit_code == 0, inline.output
    printed = json.loads(inline.output)
    assert printed["type"] == "Collection" and validation_errors(printed) == []
    assert printed["assets"]["cube"]["href"] == "../cube.zarr"

    both = runner.invoke(main, ["stac", str(small_cube), "--inline", "--out", str(out)])
    assert both.exit_code == 2 and "--inline" in both.output

    missing = runner.invoke(main, ["stac", str(tmp_path / "nowhere.zarr")])
    assert missing.exit_code == 2
    assert "error:" in missing.output and "nowhere.zarr" in missing.output


# --- on a real S3 server (SeaweedFS on 127.0.0.1) -------------------------------------------


@pytest.mark.s3
def test_catalog_on_s3_beside_the_cube(small_cube, monkeypatch, tmp_path):
    from servers import SeaweedServer, find_weed

    try:
        find_weed()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    with SeaweedServer(public_buckets=()) as server:
        server.create_bucket("cubes")
        server.upload_folder(small_cube, "cubes", "v1/cube.zarr")
        options = server.storage_options("admin")
        url = stac.write_catalog("s3://cubes/v1/cube.zarr", storage_options=options)
        assert url == "s3://cubes/v1/cube.stac/collection.json"
        client = server.client("admin")
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="cubes",
                                                         Prefix="v1/cube.stac/")["Contents"]}
        assert f"v1/cube.stac/{NORTH}/thumbnail.png" in keys
        text = client.get_object(Bucket="cubes", Key="v1/cube.stac/collection.json")["Body"].read()
        for secret in (server.admin.secret_key, server.admin.access_key):
            assert secret.encode() not in text
        data = json.loads(text)
        assert data["assets"]["cube"]["href"] == "../cube.zarr"
        assert data["storage:schemes"]["s3"] == {
            "type": "custom-s3", "platform": server.endpoint_url, "bucket": "cubes",
            "region": "us-east-1", "requester_pays": False}
        assert validation_errors(data) == []
        collection = stac.read_catalog("s3://cubes/v1/cube.stac", options)
        for item in collection.get_items():
            assert validation_errors(item.to_dict(include_self_link=False)) == []
        cube_url, cube_options = stac.resolve(collection, storage_options=options)
        assert cube_url == "s3://cubes/v1/cube.zarr"
        import s2cube

        ds = s2cube.open_cube(cube_url, storage_options=cube_options)
        assert set(ds.roi.values) == {NORTH, SOUTH}
        found = stac.search(collection, bbox=collection.get_item(SOUTH).bbox)
        assert [i.id for i in found] == [SOUTH]


def test_open_cube_takes_the_catalog_collection_item_or_its_url(catalog, small_cube):
    import s2cube

    ref = s2cube.open_cube(small_cube)
    collection = stac.read_catalog(catalog)
    item = next(iter(collection.get_items()))
    for obj in (collection, item, catalog / "collection.json", str(catalog)):
        ds = s2cube.open_cube(obj)
        assert ds.encoding["source"] == ref.encoding["source"]
        assert list(ds.roi.values) == list(ref.roi.values)


def test_convert_writes_the_catalog_on_request(synthetic_archive, small_cube, tmp_path):
    import shutil

    from click.testing import CliRunner

    from s2cube.cli import main

    cube = tmp_path / "cube.zarr"
    shutil.copytree(small_cube, cube)  # everything is converted already: the run resumes
    result = CliRunner().invoke(main, ["convert", str(synthetic_archive), str(cube), "--stac",
                                       "--no-progress", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cube.stac" / "collection.json").exists()


def test_the_readme_find_and_open_section_runs_and_finds_the_roi_in_its_box(small_cube, tmp_path):
    """README's "Find and open" block, verbatim but for the cube's path, on a copy of the cube:
    the box over Japan finds ROIs1868_73 (and not the African ROI), which is what is opened."""
    import re
    import shutil

    import s2cube

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Find and open (STAC)", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shutil.copytree(small_cube, tmp_path / "cube.zarr")
    env: dict = {"s2cube": s2cube}
    exec(compile(code.replace("demo-output/", f"{tmp_path}/"), "README.md", "exec"), env)
    assert [item.id for item in env["items"]] == ["ROIs1868_73"]
    assert env["rois"].roi.values.tolist() == ["ROIs1868_73"]
    assert sorted(env["ds"].roi.values.tolist()) == sorted(s2cube.open_cube(small_cube).roi.values.tolist())
    assert (tmp_path / "cube.stac" / "collection.json").exists()
