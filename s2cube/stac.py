"""A STAC catalog for a cube: one Collection for the cube, one Item per ROI.

The catalog makes a cube findable like other Earth-observation data: STAC browsers,
pystac, stac-geoparquet and xpystac read it, and :func:`search` filters its Items by
bounding box and date so the matching ROIs can be opened from the cube::

    import s2cube
    from s2cube import stac

    stac.write_catalog("/data/sen12mscrts.zarr")          # -> /data/sen12mscrts.stac/
    items = stac.search("/data/sen12mscrts.stac", bbox=[139, 32, 142, 33],
                        datetime="2018-03-01/2018-06-30")
    ds = s2cube.open_cube("/data/sen12mscrts.zarr").s2cube.sel_roi([i.id for i in items])

Layout of a catalog (``<cube>/../<cube name without .zarr>.stac/`` by default, a sibling
folder or S3 prefix of the cube)::

    sen12mscrts.stac/
        collection.json              the Collection (root): extent, bands, datacube, cube asset
        ROIs1868_73/ROIs1868_73.json  one Item per ROI: exact footprint, proj:*, dates, clouds
        ROIs1868_73/thumbnail.png     true-colour quicklook of the ROI's least cloudy slot
        ...

Every link is relative (a self-contained catalog), and so is the cube asset when the
catalog sits beside the cube: move the cube and its catalog together and both keep
working. A catalog written elsewhere (``out=``) points at the cube by its absolute URL.
Writing the catalog again after an incremental conversion lists every ROI of the cube;
thumbnails whose slot did not change are kept.

pystac and pyproj are imported inside the functions that need them (``pip install
s2cube[stac]``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from s2cube import schema
from s2cube.errors import NotACubeError, S2CubeError, StorageError
from s2cube.io.storage import Location, filesystem, parse_location, redact

if TYPE_CHECKING:  # pragma: no cover
    import pystac
    import xarray as xr

logger = logging.getLogger(__name__)

# --- what the catalog says, in one place ------------------------------------------------

STAC_VERSION = "1.1.0"
COLLECTION_ID = "sen12ms-cr-ts"
COLLECTION_FILE = "collection.json"
CATALOG_SUFFIX = ".stac"
CUBE_ASSET = "cube"
THUMBNAIL_ASSET = "thumbnail"
THUMBNAIL_FILE = "thumbnail.png"
#: Largest side of a thumbnail in pixels (the ROI is subsampled to fit).
THUMBNAIL_SIZE = 512
#: Segments per edge of a footprint (at least one per patch), so that the WGS84 polygon
#: follows the curvature of the UTM grid's edges.
DENSIFY_MIN = 16
ZARR_MEDIA_TYPE = "application/vnd.zarr"
#: The detector whose coverage becomes ``eo:cloud_cover`` and picks the thumbnail slot.
PRIMARY_DETECTOR = "s2cloudless_mask"

#: The extensions the catalog uses. eo v1.1 carries ``eo:bands`` (the Collection's
#: summaries, what STAC 1.0 tools read); eo v2.0 the ``eo:*`` fields of STAC 1.1 ``bands``.
EXT = {
    "datacube": "https://stac-extensions.github.io/datacube/v2.2.0/schema.json",
    "projection": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "eo2": "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "sci": "https://stac-extensions.github.io/scientific/v1.0.0/schema.json",
    "zarr": "https://stac-extensions.github.io/zarr/v1.0.0/schema.json",
    "storage": "https://stac-extensions.github.io/storage/v2.0.0/schema.json",
    "xarray": "https://stac-extensions.github.io/xarray-assets/v1.0.0/schema.json",
}

DOI = schema.REFERENCES.removeprefix("doi:")
CITATION = ("Ebel, P., Xu, Y., Schmitt, M., & Zhu, X. X. (2022). SEN12MS-CR-TS: A Remote-Sensing "
            "Data Set for Multimodal Multitemporal Cloud Removal. IEEE Transactions on Geoscience "
            f"and Remote Sensing, 60, 1-14. https://doi.org/{DOI}")
#: The data set's licence (SPDX) as its authors publish it, and where to read it.
LICENSE = "CC-BY-4.0"
LICENSE_URL = "https://creativecommons.org/licenses/by/4.0/"
DATASET_URL = "https://patrickTUM.github.io/cloud_removal/sen12mscrts/"

PROVIDERS = (
    {"name": "Technical University of Munich, Data Science in Earth Observation "
             "(P. Ebel, Y. Xu, M. Schmitt, X. X. Zhu)",
     "description": "Curated SEN12MS-CR-TS: 53 ROIs, 30 co-registered Sentinel-1/-2 "
                    "observations each over 2018, splits and regions",
     "roles": ["producer", "licensor"], "url": "https://patrickTUM.github.io/cloud_removal/"},
    {"name": "European Space Agency, Copernicus Sentinel-1 and Sentinel-2",
     "description": "Source observations (contains modified Copernicus Sentinel data 2018)",
     "roles": ["producer"], "url": "https://sentinels.copernicus.eu/"},
    {"name": "s2cube",
     "description": "Converted the GeoTIFF archive into one chunked Zarr v3 cube with "
                    "s2cloudless and rule-based cloud and shadow masks",
     "roles": ["processor"]},
)

#: Sentinel-2 bands: (common name in eo v1.1, common name in eo v2.0, description).
S2_BANDS: dict[str, tuple[str, str, str]] = {
    "B1": ("coastal", "coastal", "coastal aerosol"),
    "B2": ("blue", "blue", "blue"),
    "B3": ("green", "green", "green"),
    "B4": ("red", "red", "red"),
    "B5": ("rededge", "rededge071", "vegetation red edge 1"),
    "B6": ("rededge", "rededge075", "vegetation red edge 2"),
    "B7": ("rededge", "rededge078", "vegetation red edge 3"),
    "B8": ("nir", "nir", "near infrared"),
    "B8A": ("nir08", "nir08", "narrow near infrared"),
    "B9": ("nir09", "nir09", "water vapour"),
    "B10": ("cirrus", "cirrus", "short-wave infrared cirrus"),
    "B11": ("swir16", "swir16", "short-wave infrared 1.6 um"),
    "B12": ("swir22", "swir22", "short-wave infrared 2.2 um"),
}

#: Dimensions of the cube for the datacube extension: type and description.
DIMENSIONS: dict[str, tuple[str, str]] = {
    "roi": ("roi", "region of interest of SEN12MS-CR-TS, e.g. ROIs1868_73: one STAC Item each"),
    "time": ("temporal", "observation slot (30 per ROI over 2018, labels 0..29); the acquisition "
                         "date of each frame is in s2_date and s1_date"),
    "band": ("bands", "Sentinel-2 band"),
    "polarization": ("polarization", "Sentinel-1 polarization"),
    "y": ("spatial", "pixel row in the ROI's own grid (north to south); each ROI has its own "
                     "CRS and transform: see the roi coordinates epsg and transform, or the "
                     "proj:* fields of its Item. Padded to the largest ROI"),
    "x": ("spatial", "pixel column in the ROI's own grid (west to east); padded to the "
                     "largest ROI"),
    "row": ("patch_index", "patch row in the ROI's grid of patches"),
    "col": ("patch_index", "patch column in the ROI's grid of patches"),
    "detector": ("detector", "cloud detector"),
    "affine": ("affine_coefficient", "coefficient a, b, c, d, e, f of an affine transform"),
}

#: Descriptions of the variables whose attributes have no ``long_name``.
DESCRIPTIONS: dict[str, str] = {
    "s2_date": "acquisition date of the Sentinel-2 frame (NaT where missing)",
    "s1_date": "acquisition date of the Sentinel-1 frame (NaT where missing)",
    "roi": "ROI name",
    "collection": "archive collection of the ROI (ROIs1158, ROIs1868, ROIs1970, ROIs2017)",
    "roi_id": "ROI number within its collection",
    "split": "benchmark split of the ROI (train, val, test)",
    "region": "continental region of the ROI",
    "epsg": "EPSG code of the ROI's CRS (-1: see the grids attribute's WKT)",
    "n_rows": "rows of patches of the ROI's own grid",
    "n_cols": "columns of patches of the ROI's own grid",
    "wavelength": "centre wavelength of the band",
    "time": "observation slot",
    "band": "Sentinel-2 band name",
    "polarization": "Sentinel-1 polarization",
    "detector": "cloud detector name",
    "y": "pixel row", "x": "pixel column", "row": "patch row", "col": "patch column",
}
DATA_VARIABLES = ("s2", "s1", "cloud_prob", "cloud_mask", "coverage")


# --- where the catalog lives ---------------------------------------------------------------


def default_location(cube: str | os.PathLike, storage_options: dict | None = None) -> str:
    """The catalog's default URL: ``<cube>/../<cube name without .zarr>.stac``.

    A sibling of the cube (a folder, or a prefix in the same bucket), not a folder
    inside it: the cube's store stays a pure Zarr hierarchy.

    Raises
    ------
    S2CubeError
        When ``cube`` has no parent folder or prefix to hold a sibling.
    """
    loc = parse_location(cube, storage_options)
    if loc.is_local:
        parent, name = os.path.split(loc.path.rstrip(os.sep))
    else:
        head, _, name = loc.url.rstrip("/").rpartition("/")
        parent = head if "/" in loc.path.strip("/") else ""
    if not parent or not name:
        raise S2CubeError(f"cube {redact(loc.url, storage_options)!r} has no parent folder or "
                          "prefix to put its catalog beside it; pass out= (--out) explicitly")
    stem = name[: -len(".zarr")] if name.endswith(".zarr") and len(name) > 5 else name
    return (os.path.join(parent, stem + CATALOG_SUFFIX) if loc.is_local
            else f"{parent}/{stem}{CATALOG_SUFFIX}")


def _stac_io(storage_options: dict | None):
    """A pystac ``StacIO`` that reads and writes through s2cube's storage (local, S3, fsspec)."""
    from pystac.stac_io import DefaultStacIO

    class FsspecStacIO(DefaultStacIO):
        def __init__(self, options: dict | None) -> None:
            super().__init__()
            self.options = dict(options or {})

        def read_text_from_href(self, href: str) -> str:
            if href.startswith(("http://", "https://")):
                return super().read_text_from_href(href)
            return _read_bytes(parse_location(href, self.options)).decode("utf-8")

        def write_text_to_href(self, href: str, txt: str) -> None:
            _write_bytes(parse_location(href, self.options), txt.encode("utf-8"))

    return FsspecStacIO(storage_options)


def _read_bytes(loc: Location) -> bytes:
    try:
        with filesystem(loc).open(loc.path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise NotACubeError(f"nothing at {redact(loc.url, loc.storage_options)}: check the URL "
                            "of the STAC catalog (write one with `s2cube stac CUBE`)") from None
    except OSError as exc:
        raise _storage_failure(exc, loc, "read") from None


def _write_bytes(loc: Location, data: bytes) -> None:
    try:
        if loc.is_local:
            os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        with filesystem(loc).open(loc.path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise _storage_failure(exc, loc, "write") from None


def _storage_failure(exc: OSError, loc: Location, action: str) -> Exception:
    """A :class:`StorageError` naming what to fix (object stores), else a plain one."""
    from s2cube.io.storage import storage_error

    if not loc.is_local:
        err = storage_error(exc, loc, action=action)
        if err is not None:
            return err
    where = redact(loc.url, loc.storage_options)
    hint = ("choose a catalog location you may write to with out= (--out)" if action == "write"
            else "check the URL and the storage options")
    return StorageError(f"cannot {action} {where} ({redact(str(exc), loc.storage_options)}); {hint}")


# --- reading what the cube holds -----------------------------------------------------------


@dataclass(frozen=True)
class RoiSummary:
    """What one ROI's Item says, computed from the cube's small variables."""

    name: str
    split: str
    region: str
    start: datetime | None
    end: datetime | None
    cloud_cover: dict[str, float]  # percent per detector, mean over valid S2 frames
    s2_frames: int
    s1_frames: int
    thumbnail_slot: int | None  # least cloudy slot (missing frames count as cloudy)


def _as_datetime(value: np.datetime64) -> datetime | None:
    if np.isnat(value):
        return None
    seconds = value.astype("datetime64[s]").astype(np.int64)
    return datetime.fromtimestamp(int(seconds), tz=UTC)


def summarize_rois(ds: xr.Dataset) -> list[RoiSummary]:
    """Dates, cloudiness and the least cloudy slot of every ROI (reads only small variables).

    Cloud cover is the mean ``coverage`` of each detector over the ROI's valid S2 frames
    (``valid_s2``), in percent. The thumbnail slot minimises the mean cloud fraction of the
    :data:`PRIMARY_DETECTOR` over the ROI's patch grid, a missing frame counting as cloudy.
    """
    import dask

    wanted = [v for v in ("valid_s2", "valid_s1", "coverage", "s2_date", "s1_date") if v in ds]
    small = dict(zip(wanted, dask.compute(*[ds[v].data for v in wanted])))
    detectors = [str(d) for d in np.asarray(ds["detector"].values)] if "detector" in ds.coords \
        else list(schema.DETECTORS)
    out = []
    for i, name in enumerate(schema.as_str(ds["roi"].values)):
        n_rows, n_cols = int(ds["n_rows"].values[i]), int(ds["n_cols"].values[i])
        grid = (i, slice(None), slice(0, n_rows), slice(0, n_cols))
        v2 = np.asarray(small["valid_s2"][grid], bool) if "valid_s2" in small else None
        v1 = np.asarray(small["valid_s1"][grid], bool) if "valid_s1" in small else None
        dates = []
        for var, valid in (("s2_date", v2), ("s1_date", v1)):
            if var in small:
                d = np.asarray(small[var][grid], "datetime64[ns]")
                d = d[valid] if valid is not None else d.ravel()
                dates.append(d[~np.isnat(d)])
        alld = np.concatenate(dates) if dates else np.array([], "datetime64[ns]")
        cover: dict[str, float] = {}
        slot = None
        if "coverage" in small and v2 is not None:
            cov = np.asarray(small["coverage"][grid], np.float64)  # time, row, col, detector
            ok = v2 & np.isfinite(cov).all(axis=-1)
            for k, det in enumerate(detectors):
                vals = cov[..., k][ok]
                if vals.size:
                    cover[det] = round(float(vals.mean()) * 100.0, 3)
            k = detectors.index(PRIMARY_DETECTOR) if PRIMARY_DETECTOR in detectors else 0
            score = np.where(ok, cov[..., k], 1.0).mean(axis=(1, 2))
            if ok.any():
                slot = int(np.argmin(np.where(ok.any(axis=(1, 2)), score, np.inf)))
        out.append(RoiSummary(
            name=name, split=str(ds["split"].values[i]), region=str(ds["region"].values[i]),
            start=_as_datetime(alld.min()) if alld.size else None,
            end=_as_datetime(alld.max()) if alld.size else None,
            cloud_cover=cover, s2_frames=int(v2.sum()) if v2 is not None else 0,
            s1_frames=int(v1.sum()) if v1 is not None else 0, thumbnail_slot=slot))
    return out


def footprint(grid, densify: int | None = None) -> dict[str, Any]:
    """The exact footprint of an ROI grid in WGS84 as a GeoJSON Polygon.

    The grid's outline (pixel corners (0, 0), (0, H), (W, H), (W, 0) through its affine)
    is densified to at least :data:`DENSIFY_MIN` segments per edge, one per patch, and
    reprojected with pyproj (lon, lat order); the ring runs counter-clockwise (RFC 7946).
    The corners are vertices, so they transform back to the grid's corners exactly.

    Parameters
    ----------
    grid
        A :class:`s2cube.analysis.georef.RoiGrid` (``ds.s2cube.grid(name)``).
    densify
        Segments per edge; default ``max(DENSIFY_MIN, patches along the edge)``.
    """
    from pyproj import CRS, Transformer

    a, b, c, d, e, f = grid.transform
    height, width = grid.height, grid.width
    corners = [(0.0, 0.0), (0.0, float(height)), (float(width), float(height)),
               (float(width), 0.0)]  # (col, row) pixel corners
    ring_px: list[tuple[float, float]] = []
    for k, (c0, r0) in enumerate(corners):
        c1, r1 = corners[(k + 1) % 4]
        patches = grid.n_rows if k % 2 == 0 else grid.n_cols  # left/right, then bottom/top
        n = max(DENSIFY_MIN, patches) if densify is None else max(1, int(densify))
        for t in range(n):
            ring_px.append((c0 + (c1 - c0) * t / n, r0 + (r1 - r0) * t / n))
    xs = np.array([c + a * col + b * row for col, row in ring_px])
    ys = np.array([f + d * col + e * row for col, row in ring_px])
    transformer = Transformer.from_crs(CRS.from_user_input(grid.crs), CRS.from_epsg(4326),
                                       always_xy=True)
    lon, lat = transformer.transform(xs, ys)
    ring = [[float(x), float(y)] for x, y in zip(lon, lat)]
    if _signed_area(ring) < 0:
        ring.reverse()
    if max(lon) - min(lon) > 180:
        logger.warning("%s crosses the antimeridian; its footprint is not split", grid.name)
    ring.append(list(ring[0]))
    return {"type": "Polygon", "coordinates": [ring]}


def _signed_area(ring: Sequence[Sequence[float]]) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, [*ring[1:], ring[0]]))


def _bbox(geometry: dict[str, Any]) -> list[float]:
    ring = np.asarray(geometry["coordinates"][0], np.float64)
    return [float(ring[:, 0].min()), float(ring[:, 1].min()),
            float(ring[:, 0].max()), float(ring[:, 1].max())]


def _native_polygon(grid) -> dict[str, Any]:
    a, b, c, d, e, f = grid.transform
    pts = [(0, 0), (0, grid.height), (grid.width, grid.height), (grid.width, 0), (0, 0)]
    ring = [[c + a * col + b * row, f + d * col + e * row] for col, row in pts]
    if _signed_area(ring[:-1]) < 0:
        ring.reverse()
    return {"type": "Polygon", "coordinates": [ring]}


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- storage facts for the cube asset ------------------------------------------------------


def _s3_facts(loc: Location) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(storage scheme, xarray storage_options)`` for an S3 cube, ``None`` elsewhere.

    Only where the data is (endpoint, region, bucket): never a credential. Read from the
    options and ``AWS_*`` variables without botocore, so nothing is sent anywhere.
    """
    if not loc.is_s3:
        return None
    opts = loc.storage_options
    ck = opts.get("client_kwargs") or {}
    env = os.environ
    endpoint = (opts.get("endpoint_url") or ck.get("endpoint_url")
                or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"))
    region = (ck.get("region_name") or opts.get("region") or env.get("AWS_REGION")
              or env.get("AWS_DEFAULT_REGION"))
    xr_options: dict[str, Any] = {}
    scheme: dict[str, Any]
    if endpoint:
        endpoint = _without_userinfo(endpoint)
    if endpoint and "amazonaws.com" not in endpoint:
        scheme = {"type": "custom-s3", "platform": endpoint.rstrip("/"), "bucket": loc.bucket}
        xr_options["endpoint_url"] = endpoint
    else:
        scheme = {"type": "aws-s3", "platform": "https://{bucket}.s3.{region}.amazonaws.com",
                  "bucket": loc.bucket}
        region = region or "us-east-1"
    if region:
        scheme["region"] = region
        xr_options["client_kwargs"] = {"region_name": region}
    if opts.get("anon"):
        xr_options["anon"] = True
    scheme["requester_pays"] = bool(opts.get("requester_pays", False))
    return scheme, xr_options


def _without_userinfo(url: str) -> str:
    """``url`` without a ``user:password@`` part (a catalog never holds a credential)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# --- building the catalog ------------------------------------------------------------------


def build_catalog(
    cube: str | os.PathLike,
    storage_options: dict[str, Any] | None = None,
    *,
    out: str | os.PathLike | None = None,
    collection_id: str = COLLECTION_ID,
    ds: xr.Dataset | None = None,
) -> pystac.Collection:
    """The STAC Collection of a cube, with one Item per ROI attached; nothing is written.

    Parameters
    ----------
    cube
        The cube's URL or path (what :func:`s2cube.open_cube` takes).
    storage_options
        fsspec options for the cube (and for ``out``): credentials, ``endpoint_url``, ...
        Only the endpoint and region end up in the catalog, never a credential.
    out
        Where the catalog would be written (default :func:`default_location`): the
        hrefs are laid out for it (``collection.json``, ``<roi>/<roi>.json``,
        ``<roi>/thumbnail.png``).
    collection_id
        The Collection's id.
    ds
        The cube already opened from ``cube`` (saves opening it again).

    Returns
    -------
    pystac.Collection
        ``collection.get_items()`` gives the Items; hrefs are absolute until written.

    Raises
    ------
    NotACubeError, IncompleteCubeError
        As :func:`s2cube.open_cube` does.
    """
    import pystac

    loc = parse_location(cube, storage_options)
    if ds is None:
        from s2cube import open_cube

        ds = open_cube(cube, storage_options=storage_options)
    root = _root_url(out, cube, storage_options)
    rois = summarize_rois(ds)
    if not rois:
        raise NotACubeError(f"{redact(loc.url, storage_options)} holds no ROI; convert some first")
    starts = [r.start for r in rois if r.start is not None]
    ends = [r.end for r in rois if r.end is not None]
    if not starts:
        raise NotACubeError(f"{redact(loc.url, storage_options)} has no acquisition date in "
                            "s2_date or s1_date: its conversion wrote no frame; run it again")
    start, end = min(starts), max(ends)
    s3 = _s3_facts(loc)
    cube_href = loc.url if not loc.is_local else loc.path

    items, bboxes = [], []
    for r in rois:
        grid = ds.s2cube.grid(r.name)
        item = _item(r, grid, cube_href, s3, collection_id, (start, end), root)
        items.append(item)
        bboxes.append(item.bbox)
    union = [min(b[0] for b in bboxes), min(b[1] for b in bboxes),
             max(b[2] for b in bboxes), max(b[3] for b in bboxes)]
    extent = pystac.Extent(
        pystac.SpatialExtent([union, *bboxes] if len(bboxes) > 1 else [union]),
        pystac.TemporalExtent([[start, end]]))
    collection = pystac.Collection(
        id=collection_id,
        title=str(ds.attrs.get("title") or schema.TITLE),
        description=_description(ds, rois),
        extent=extent,
        license=LICENSE,
        providers=[pystac.Provider.from_dict(dict(p)) for p in PROVIDERS],
        keywords=["SEN12MS-CR-TS", "cloud removal", "Sentinel-1", "Sentinel-2", "SAR",
                  "multispectral", "time series", "benchmark", "Zarr"],
        stac_extensions=[EXT[k] for k in ("datacube", "eo", "eo2", "sci", "zarr", "xarray")]
        + ([EXT["storage"]] if s3 else []),
        extra_fields=_collection_fields(ds, s3, (start, end)),
    )
    collection.summaries = pystac.Summaries(_summaries(ds, rois))
    collection.add_asset(CUBE_ASSET, _cube_asset(cube_href, s3, bands=True))
    collection.add_link(pystac.Link("license", LICENSE_URL, "text/html",
                                    "Creative Commons Attribution 4.0 International"))
    collection.add_link(pystac.Link("cite-as", f"https://doi.org/{DOI}", "text/html",
                                    "Ebel et al. (2022), IEEE TGRS 60"))
    collection.add_link(pystac.Link("about", DATASET_URL, "text/html", "SEN12MS-CR-TS"))
    collection.add_items(items)
    # pystac takes a folder with a dot in its name (".stac") for a file: name the file
    collection.normalize_hrefs(_join(root, COLLECTION_FILE))
    collection.catalog_type = pystac.CatalogType.SELF_CONTAINED
    return collection


def _root_url(out, cube, storage_options) -> str:
    url = os.fspath(out) if out is not None else default_location(cube, storage_options)
    loc = parse_location(url, storage_options)
    return loc.path if loc.is_local else loc.url


def _join(base: str, name: str) -> str:
    return os.path.join(base, name) if "://" not in base else f"{base.rstrip('/')}/{name}"


def _description(ds: xr.Dataset, rois: list[RoiSummary]) -> str:
    n = len(rois)
    splits = ", ".join(f"{s} {sum(r.split == s for r in rois)}" for s in schema.SPLITS
                       if any(r.split == s for r in rois))
    return (
        "SEN12MS-CR-TS, the multimodal multitemporal cloud-removal benchmark of Ebel et al. "
        f"(2022), as one chunked Zarr v3 cube written by s2cube: {n} of its 53 ROIs "
        f"({splits}), each with {ds.sizes.get('time', schema.N_SLOTS)} observation slots over "
        "2018 of co-registered Sentinel-1 GRD backscatter (VV, VH) and Sentinel-2 L1C "
        "top-of-atmosphere reflectance (13 bands), with per-pixel cloud probabilities, cloud "
        "and shadow masks and per-patch cloud coverage. One Item per ROI gives its exact "
        "footprint, CRS, dates and cloudiness; open the cube with `s2cube.open_cube` or "
        "`xarray.open_dataset(collection.assets['cube'])` (xpystac) and select ROIs by name."
    )


def _collection_fields(ds: xr.Dataset, s3, dates: tuple[datetime, datetime]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "sci:doi": DOI,
        "sci:citation": CITATION,
        "cube:dimensions": _dimensions(ds, dates),
        "cube:variables": _variables(ds),
        "s2cube:schema_version": ds.attrs.get("schema_version"),
        "s2cube:patch_size": ds.attrs.get("patch_size"),
    }
    for key in ("created", "updated"):
        value = ds.attrs.get(key)
        if value:
            fields[key] = _rfc3339(str(value))
    if s3:
        fields["storage:schemes"] = {"s3": s3[0]}
    return fields


def _rfc3339(text: str) -> str:
    try:
        return _iso(datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)) or text
    except ValueError:
        return text


def _dimensions(ds: xr.Dataset, dates: tuple[datetime, datetime]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dim, size in ds.sizes.items():
        kind, text = DIMENSIONS.get(str(dim), ("index", f"dimension {dim}"))
        entry: dict[str, Any] = {"type": kind, "description": text}
        if kind == "spatial":
            entry.update(axis=dim, extent=[0, max(size - 1, 0)], step=1)
        elif kind == "temporal":
            entry.update(extent=[_iso(dates[0]), _iso(dates[1])], step=None)
        elif dim in ds.coords and ds[dim].dtype.kind in "USO":
            entry["values"] = [str(v) for v in schema.as_str(ds[dim].values)]
        else:
            entry.update(extent=[0, max(size - 1, 0)], step=1)
        out[str(dim)] = entry
    return out


def _variables(ds: xr.Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = [*ds.data_vars, *(c for c in ds.coords if c not in ds.dims)]
    for name in names:
        var = ds[name]
        attrs = var.attrs
        entry: dict[str, Any] = {
            "dimensions": [str(d) for d in var.dims],
            "type": "data" if name in DATA_VARIABLES else "auxiliary",
            "description": str(attrs.get("long_name") or DESCRIPTIONS.get(str(name), str(name))),
            "data_type": "string" if var.dtype.kind in "USO" else str(var.dtype),
        }
        if attrs.get("units"):
            entry["unit"] = str(attrs["units"])
        if var.dtype.kind in "USO" and var.size <= 64:
            entry["values"] = [str(v) for v in np.asarray(schema.as_str(var.values)).ravel()]
        out[str(name)] = entry
    return out


def _eo_bands() -> list[dict[str, Any]]:
    return [{"name": b, "common_name": S2_BANDS[b][0], "description": S2_BANDS[b][2],
             "center_wavelength": round(w / 1000.0, 4)}
            for b, w in zip(schema.BANDS, schema.WAVELENGTHS)]


def _bands() -> list[dict[str, Any]]:
    """STAC 1.1 ``bands`` with the eo v2 fields (centre wavelength in micrometres)."""
    return [{"name": b, "description": f"Sentinel-2 {b}: {S2_BANDS[b][2]}, DN = reflectance x 10000",
             "eo:common_name": S2_BANDS[b][1], "eo:center_wavelength": round(w / 1000.0, 4),
             "data_type": "uint16", "nodata": 0}
            for b, w in zip(schema.BANDS, schema.WAVELENGTHS)]


def _summaries(ds: xr.Dataset, rois: list[RoiSummary]) -> dict[str, Any]:
    return {
        "constellation": ["sentinel-1", "sentinel-2"],
        "platform": ["sentinel-1a", "sentinel-1b", "sentinel-2a", "sentinel-2b"],
        "instruments": ["c-sar", "msi"],
        "gsd": [10],
        "eo:bands": _eo_bands(),
        "s2cube:split": sorted({r.split for r in rois}),
        "s2cube:region": sorted({r.region for r in rois}),
        "s2cube:roi": [r.name for r in rois],
    }


def _cube_asset(href: str, s3, *, bands: bool, roi: str | None = None):
    import pystac

    fields: dict[str, Any] = {
        "zarr:zarr_format": 3,
        "zarr:consolidated": True,
        "zarr:node_type": "group",
        "xarray:open_kwargs": {"engine": "zarr", "consolidated": True, "zarr_format": 3,
                               "chunks": {}},
    }
    if s3:
        fields["storage:refs"] = ["s3"]
        if s3[1]:
            fields["xarray:storage_options"] = dict(s3[1])
    if bands:
        fields["bands"] = _bands()
    where = (f" Select this ROI with ds.sel(roi='{roi}') or ds.s2cube.sel_roi('{roi}')."
             if roi else "")
    return pystac.Asset(
        href=href, media_type=ZARR_MEDIA_TYPE, roles=["data"],
        title="SEN12MS-CR-TS Zarr v3 cube",
        description=("The whole cube (every ROI; dims roi, time, band, polarization, y, x, "
                     "row, col, detector): open with s2cube.open_cube(href) or "
                     f"xarray.open_dataset(asset) through xpystac.{where}"),
        extra_fields=fields,
    )


def _item(r: RoiSummary, grid, cube_href: str, s3, collection_id: str,
          fallback: tuple[datetime, datetime], root: str):
    import pystac

    geometry = footprint(grid)
    start = r.start or fallback[0]
    end = r.end or fallback[1]
    if r.start is None:
        logger.warning("%s has no acquisition date; its Item spans the cube's dates", r.name)
    epsg = _epsg(grid.crs)
    props: dict[str, Any] = {
        "proj:code": f"EPSG:{epsg}" if epsg else None,
        "proj:shape": [grid.height, grid.width],
        "proj:transform": [float(v) for v in grid.transform],
        "proj:bbox": [float(v) for v in grid.bounds],
        "proj:geometry": _native_polygon(grid),
        "gsd": 10,
        "s2cube:roi": r.name,
        "s2cube:split": r.split,
        "s2cube:region": r.region,
        "s2cube:n_rows": grid.n_rows,
        "s2cube:n_cols": grid.n_cols,
        "s2cube:patch_size": grid.patch_size,
        "s2cube:s2_frames": r.s2_frames,
        "s2cube:s1_frames": r.s1_frames,
        "s2cube:cloud_cover": dict(r.cloud_cover),
        "s2cube:thumbnail_slot": r.thumbnail_slot,
    }
    if not epsg:
        from pyproj import CRS

        props["proj:wkt2"] = CRS.from_user_input(grid.crs).to_wkt()
    if PRIMARY_DETECTOR in r.cloud_cover:
        props["eo:cloud_cover"] = r.cloud_cover[PRIMARY_DETECTOR]
    centre = geometry["coordinates"][0]
    lon = [p[0] for p in centre[:-1]]
    lat = [p[1] for p in centre[:-1]]
    props["proj:centroid"] = {"lat": round(float(np.mean(lat)), 7), "lon": round(float(np.mean(lon)), 7)}
    if s3:
        props["storage:schemes"] = {"s3": s3[0]}
    item = pystac.Item(
        id=r.name, geometry=geometry, bbox=_bbox(geometry), datetime=None,
        properties=props, collection=collection_id,
        stac_extensions=[EXT[k] for k in ("projection", "eo", "zarr", "xarray")]
        + ([EXT["storage"]] if s3 else []),
        start_datetime=start, end_datetime=end,
    )
    item.add_asset(CUBE_ASSET, _cube_asset(cube_href, s3, bands=False, roi=r.name))
    item.add_asset(THUMBNAIL_ASSET, pystac.Asset(
        href=_join(_join(root, r.name), THUMBNAIL_FILE), media_type=pystac.MediaType.PNG,
        roles=["thumbnail", "overview"],
        title=(f"{r.name}, slot {r.thumbnail_slot}: true colour (B4, B3, B2)"
               if r.thumbnail_slot is not None else f"{r.name}: no valid Sentinel-2 frame")))
    return item


def _epsg(crs: str) -> int | None:
    if crs.upper().startswith("EPSG:"):
        try:
            return int(crs.split(":", 1)[1])
        except ValueError:
            return None
    return None


# --- writing ---------------------------------------------------------------------------------


def write_catalog(
    cube: str | os.PathLike,
    out: str | os.PathLike | None = None,
    storage_options: dict[str, Any] | None = None,
    *,
    thumbnails: bool = True,
    collection_id: str = COLLECTION_ID,
) -> str:
    """Write the STAC catalog of a cube (Collection, Items, thumbnails) and return its URL.

    Parameters
    ----------
    cube
        The cube's URL or path.
    out
        The catalog's folder or S3 prefix; default :func:`default_location` (a sibling
        ``<name>.stac``). Written again, it lists every ROI of the cube (after an
        incremental conversion too); a thumbnail whose slot did not change is kept.
    storage_options
        fsspec options for both the cube and ``out``.
    thumbnails
        Render a PNG quicklook of each ROI's least cloudy slot (reads three bands of one
        slot per ROI, subsampled to at most :data:`THUMBNAIL_SIZE` pixels a side).
    collection_id
        The Collection's id.

    Returns
    -------
    str
        The URL (local path) of ``collection.json``.

    Raises
    ------
    NotACubeError, IncompleteCubeError
        ``cube`` is not a complete cube.
    StorageError
        ``out`` cannot be written.
    """
    from s2cube import open_cube

    ds = open_cube(cube, storage_options=storage_options)
    collection = build_catalog(cube, storage_options, out=out, collection_id=collection_id, ds=ds)
    self_href = collection.get_self_href()
    assert self_href is not None, "build_catalog sets the Collection's self link"
    root = posixpath.dirname(self_href) if "://" in self_href else os.path.dirname(self_href)
    stac_io = _stac_io(storage_options)
    previous = _previous_slots(root, storage_options)
    for item in collection.get_items():
        thumb = item.assets[THUMBNAIL_ASSET]
        slot = item.properties.get("s2cube:thumbnail_slot")
        if not thumbnails or slot is None:
            del item.assets[THUMBNAIL_ASSET]
            continue
        target = parse_location(thumb.href, storage_options)
        if previous.get(item.id) == slot and _exists(target):
            logger.debug("keeping the thumbnail of %s (slot %s)", item.id, slot)
            continue
        _write_bytes(target, _thumbnail(ds, item.id, slot))
    _finalize_hrefs(collection, cube, root, storage_options)
    collection.save(stac_io=stac_io)
    url = collection.get_self_href() or self_href
    logger.info("wrote the STAC catalog of %s: %s (%d items)", redact(str(cube), storage_options),
                url, len(list(collection.get_items())))
    return url


def _finalize_hrefs(collection, cube, root: str, storage_options) -> None:
    """Make every asset href relative, but the cube's only where the catalog sits beside it.

    A catalog written elsewhere keeps the cube's absolute URL, so that it still finds the
    cube when it is moved on its own.
    """
    collection.make_asset_hrefs_relative()
    collection.make_all_asset_hrefs_relative()  # the Items'
    loc = parse_location(cube, storage_options)
    cube_url = loc.path if loc.is_local else loc.url
    parent = os.path.dirname if loc.is_local else posixpath.dirname
    if parent(cube_url.rstrip("/")) == parent(root.rstrip("/")):
        return
    for obj in [collection, *collection.get_items()]:
        asset = obj.assets.get(CUBE_ASSET)
        if asset is not None:
            asset.href = cube_url


def _previous_slots(root: str, storage_options) -> dict[str, int]:
    """The thumbnail slot of each ROI in the catalog already at ``root`` (if any)."""
    out: dict[str, int] = {}
    loc = parse_location(_join(root, COLLECTION_FILE), storage_options)
    if not _exists(loc):
        return out
    try:
        collection = json.loads(_read_bytes(loc))
        for link in collection.get("links", []):
            if link.get("rel") != "item":
                continue
            item_loc = parse_location(_join(root, link["href"].removeprefix("./")),
                                      storage_options)
            if _exists(item_loc):
                item = json.loads(_read_bytes(item_loc))
                slot = item.get("properties", {}).get("s2cube:thumbnail_slot")
                if isinstance(slot, int):
                    out[item["id"]] = slot
    except (ValueError, KeyError, S2CubeError) as exc:
        logger.info("not reusing the thumbnails at %s (%s)", root, exc)
    return out


def _exists(loc: Location) -> bool:
    try:
        return bool(filesystem(loc).exists(loc.path))
    except (FileNotFoundError, PermissionError):
        return False


def _thumbnail(ds: xr.Dataset, roi: str, slot: int) -> bytes:
    """A true-colour PNG of ``roi`` at ``slot``, cropped to its grid and subsampled."""
    from s2cube.analysis.quicklook import TRUE_COLOUR, quicklook

    grid = ds.s2cube.grid(roi)
    step = max(1, math.ceil(max(grid.height, grid.width) / THUMBNAIL_SIZE))
    frame = ds["s2"].sel(roi=roi, band=list(TRUE_COLOUR)).isel(
        time=slot, y=slice(0, grid.height, step), x=slice(0, grid.width, step))
    return quicklook(frame, title=f"{roi} slot {slot}").to_png()


def catalog_json(cube: str | os.PathLike, out: str | os.PathLike | None = None,
                 storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Collection JSON that :func:`write_catalog` would write (``s2cube stac --inline``)."""
    from s2cube import open_cube

    ds = open_cube(cube, storage_options=storage_options)
    collection = build_catalog(cube, storage_options, out=out, ds=ds)
    self_href = collection.get_self_href()
    assert self_href is not None, "build_catalog sets the Collection's self link"
    root = os.path.dirname(self_href) if "://" not in self_href else posixpath.dirname(self_href)
    _finalize_hrefs(collection, cube, root, storage_options)
    return collection.to_dict(include_self_link=False, transform_hrefs=True)


# --- reading, searching and resolving ------------------------------------------------------


def read_catalog(url: str | os.PathLike,
                 storage_options: dict[str, Any] | None = None) -> pystac.Collection:
    """Read a catalog written by :func:`write_catalog` (local, S3 or any fsspec URL).

    ``url`` is the catalog's folder or its ``collection.json``. Asset hrefs are made
    absolute, so ``xarray.open_dataset(collection.assets["cube"])`` (xpystac) works
    wherever the catalog was read from.
    """
    import pystac

    href = _collection_href(url, storage_options)
    collection = pystac.Collection.from_file(href, stac_io=_stac_io(storage_options))
    collection.make_asset_hrefs_absolute()
    collection.make_all_asset_hrefs_absolute()  # the Items'
    return collection


def _collection_href(url: str | os.PathLike, storage_options) -> str:
    loc = parse_location(url, storage_options)
    base = loc.path if loc.is_local else loc.url
    if base.endswith(".json"):
        return base
    if loc.is_local and os.path.isfile(base):
        return base
    return _join(base, COLLECTION_FILE)


def search(
    catalog: str | os.PathLike | pystac.Collection | Iterable[pystac.Item],
    *,
    bbox: Sequence[float] | None = None,
    datetime: str | Sequence[Any] | None = None,
    split: str | None = None,
    region: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[pystac.Item]:
    """The Items (ROIs) of a catalog that intersect ``bbox`` and overlap ``datetime``.

    Parameters
    ----------
    catalog
        A catalog URL (folder or ``collection.json``), a pystac Collection, or Items.
    bbox
        ``[west, south, east, north]`` in WGS84 degrees; Items whose bbox intersects it.
    datetime
        An interval ``"2018-03-01/2018-06-30"`` (open ends ``..``), one instant, or a
        ``(start, end)`` pair of datetimes or strings (``None`` for an open end); Items
        whose ``start_datetime``..``end_datetime`` overlaps it.
    split, region
        Only ROIs of this split or region.

    Returns
    -------
    list of pystac.Item
        In catalog order; ``[i.id for i in items]`` are the ROI names to select in the cube.
    """
    import pystac

    if isinstance(catalog, str | os.PathLike):
        items = list(read_catalog(catalog, storage_options).get_items())
    elif isinstance(catalog, pystac.Catalog):
        items = list(catalog.get_items())
    else:
        items = list(catalog)
    lo, hi = _interval(datetime)
    if bbox is not None and len(bbox) != 4:
        raise ValueError(f"bbox {list(bbox)!r} is not [west, south, east, north]")
    out = []
    for item in items:
        if bbox is not None and item.bbox is not None:
            w, s, e, n = (float(v) for v in bbox)
            iw, is_, ie, in_ = item.bbox[:4]
            if iw > e or ie < w or is_ > n or in_ < s:
                continue
        if lo is not None or hi is not None:
            start = item.common_metadata.start_datetime or item.datetime
            end = item.common_metadata.end_datetime or item.datetime
            if (hi is not None and start is not None and start > hi) or \
                    (lo is not None and end is not None and end < lo):
                continue
        if split is not None and item.properties.get("s2cube:split") != split:
            continue
        if region is not None and item.properties.get("s2cube:region") != region:
            continue
        out.append(item)
    return out


def _interval(value) -> tuple[datetime | None, datetime | None]:
    if value is None:
        return None, None
    if isinstance(value, str):
        parts = value.split("/")
        if len(parts) == 1:
            parts = [parts[0], parts[0]]
        if len(parts) != 2:
            raise ValueError(f"datetime {value!r} is not an instant or an interval START/END")
        start, end = parts
    else:
        start, end = value
    lo, hi = _parse_time(start, end=False), _parse_time(end, end=True)
    return lo, hi


def _parse_time(value, *, end: bool) -> datetime | None:
    if value is None or value in ("", ".."):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip()
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 date or datetime, e.g. 2018-03-01 or "
                         "2018-03-01T00:00:00Z") from None
    if len(text) == 10 and end:  # a date as the end of an interval: the whole day
        dt = dt.replace(hour=23, minute=59, second=59)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def is_stac(obj: Any) -> bool:
    """Whether ``obj`` looks like a STAC object or the URL of one (for :func:`s2cube.open_cube`).

    True for pystac objects, dicts with ``stac_version``, and paths or URLs ending in
    ``.json`` or naming a catalog folder (one holding ``collection.json``, not ``zarr.json``).
    """
    if type(obj).__module__.startswith("pystac"):
        return True
    if isinstance(obj, dict):
        return "stac_version" in obj
    if isinstance(obj, str | os.PathLike):
        text = os.fspath(obj)
        if text.endswith(".json"):
            return True
        if "://" not in text and os.path.isdir(text):
            return (os.path.isfile(os.path.join(text, COLLECTION_FILE))
                    and not os.path.isfile(os.path.join(text, "zarr.json")))
        return text.rstrip("/").endswith(CATALOG_SUFFIX)
    return False


def resolve(obj: Any, storage_options: dict[str, Any] | None = None
            ) -> tuple[str, dict[str, Any] | None]:
    """The cube URL (and storage options) that a STAC Collection, Item or Asset points at.

    Parameters
    ----------
    obj
        A pystac Collection, Item or Asset; a STAC dict (with a ``self`` link if its cube
        href is relative); or the URL/path of a STAC JSON or of a catalog folder.
    storage_options
        Options to read the JSON from object storage; they also override the catalog's
        ``xarray:storage_options`` (endpoint, region: never credentials) in the result.

    Returns
    -------
    (url, storage_options or None)
        What to pass to :func:`s2cube.open_cube`.

    Raises
    ------
    NotACubeError
        ``obj`` holds no Zarr asset, or its href cannot be made absolute.
    """
    asset, base = _find_asset(obj, storage_options)
    href = asset.get("href")
    if not href:
        raise NotACubeError(f"the cube asset of {_describe(obj)} has no href; write the "
                            "catalog again with `s2cube stac CUBE`")
    if not _is_absolute(href):
        if base is None:
            raise NotACubeError(
                f"the cube href {href!r} of {_describe(obj)} is relative and the object has no "
                "self link to resolve it against; pass the URL of its JSON instead, or read it "
                "with s2cube.stac.read_catalog")
        href = _absolute(href, base)
    options = dict(asset.get("xarray:storage_options") or {})
    options.update(storage_options or {})
    return href, (options or None)


def _describe(obj: Any) -> str:
    if isinstance(obj, str | os.PathLike):
        return repr(os.fspath(obj))
    ident = getattr(obj, "id", None) or (obj.get("id") if isinstance(obj, dict) else None)
    return f"STAC object {ident!r}" if ident else "the STAC object"


def _is_absolute(href: str) -> bool:
    return "://" in href or href.startswith("/") or (len(href) > 2 and href[1] == ":")


def _absolute(href: str, base: str) -> str:
    """``href`` resolved against the JSON at ``base`` (a path or URL; no pystac needed)."""
    if "://" not in base:
        return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base)), href))
    scheme, _, rest = base.partition("://")
    host, _, path = rest.partition("/")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname("/" + path), href))
    return f"{scheme}://{host}{joined}"


def _find_asset(obj: Any, storage_options) -> tuple[dict[str, Any], str | None]:
    """The cube asset of ``obj`` as a dict, and the href relative hrefs resolve against."""
    if isinstance(obj, str | os.PathLike):
        href = _collection_href(obj, storage_options)
        data = json.loads(_read_bytes(parse_location(href, storage_options)))
        asset, _ = _find_asset(data, storage_options)
        return asset, href
    if type(obj).__module__.startswith("pystac"):
        import pystac

        if isinstance(obj, pystac.Asset):
            absolute = obj.get_absolute_href()
            return {**obj.to_dict(), "href": absolute or obj.href}, None
        if isinstance(obj, pystac.Item | pystac.Collection):
            assets = obj.get_assets()
            key = _pick_asset({k: a.to_dict() for k, a in assets.items()}, obj)
            absolute = assets[key].get_absolute_href()
            return {**assets[key].to_dict(), "href": absolute or assets[key].href}, \
                obj.get_self_href()
        raise NotACubeError(f"{type(obj).__name__} is not a STAC Collection, Item or Asset; "
                            "pass the Collection or an Item of the cube's catalog")
    if isinstance(obj, dict):
        if "href" in obj and "stac_version" not in obj:  # an asset dict
            return obj, None
        listed: dict[str, dict[str, Any]] = obj.get("assets") or {}
        key = _pick_asset(listed, obj)
        base = next((link.get("href") for link in obj.get("links", [])
                     if link.get("rel") == "self"), None)
        return listed[key], base
    raise NotACubeError(f"cannot read a cube location from a {type(obj).__name__}; pass a pystac "
                        "Collection or Item, a STAC dict, or the URL of a STAC JSON")


def _pick_asset(assets: dict[str, dict[str, Any]], obj: Any) -> str:
    if CUBE_ASSET in assets and _is_zarr(assets[CUBE_ASSET]):
        return CUBE_ASSET
    for key, asset in assets.items():
        if _is_zarr(asset) and "data" in (asset.get("roles") or []):
            return key
    for key, asset in assets.items():
        if _is_zarr(asset):
            return key
    raise NotACubeError(f"{_describe(obj)} has no Zarr asset (media type {ZARR_MEDIA_TYPE}); it "
                        "is not the catalog of an s2cube cube")


def _is_zarr(asset: dict[str, Any]) -> bool:
    kind = str(asset.get("type") or "")
    return kind.split(";")[0].strip() in (ZARR_MEDIA_TYPE, "application/vnd+zarr") \
        or "zarr:zarr_format" in asset
