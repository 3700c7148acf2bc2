"""s2cube.io.storage against a real S3 server: both backends, AWS configuration, clear errors,
anonymous and read-only access, paths that cannot escape their prefix, no secret in messages."""

from __future__ import annotations

import pickle
import time

import numpy as np
import obstore.exceptions
import pytest
import zarr

from s2cube.errors import StorageError
from s2cube.io import storage
from s2cube.io.storage import check_access, parse_location, redact, zarr_store

pytestmark = pytest.mark.s3

BACKENDS = ("fsspec", "obstore")
#: what each backend raises when S3 says 403: s3fs a PermissionError, obstore its own
DENIED = (PermissionError, obstore.exceptions.BaseError)
P = 32  # patch size
SHAPE = (1, 30, 13, 2 * P, 2 * P)  # one ROI, 2x2 patches


def _pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10000, SHAPE, dtype=np.uint16)


def _write(store, data: np.ndarray) -> None:
    arr = zarr.create_array(store, name="s2", shape=data.shape, dtype=data.dtype,
                            chunks=(1, 1, 13, P, P), shards=(1, 30, 13, P, P), fill_value=0)
    arr[:] = data


def _read(store) -> np.ndarray:
    return zarr.open_array(store, path="s2")[:]


def _keys(seaweed, bucket: str, prefix: str) -> list[str]:
    out = seaweed.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return sorted(o["Key"] for o in out.get("Contents", []))


# --- both backends ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_sharded_array_round_trips_as_one_object_per_patch_series(seaweed, prefix, backend):
    loc = parse_location(f"s3://cubes/{prefix}/c.zarr", seaweed.storage_options())
    data = _pixels()
    _write(zarr_store(loc, backend=backend), data)
    other = "obstore" if backend == "fsspec" else "fsspec"
    for reader in (backend, other):  # what one backend writes, the other reads
        np.testing.assert_array_equal(_read(zarr_store(loc, read_only=True, backend=reader)), data)
    chunks = [k for k in _keys(seaweed, "cubes", prefix) if "/s2/c/" in k]
    assert len(chunks) == 4, chunks  # 2x2 patch locations, each one object with 30 slots


def test_default_backend_is_the_measured_faster_one_and_env_overrides_it(seaweed, monkeypatch):
    loc = parse_location("s3://cubes/x", seaweed.storage_options())
    assert type(zarr_store(loc)).__name__ == "ObjectStore"  # obstore: bench_s3.py
    monkeypatch.setenv("S2CUBE_STORAGE_BACKEND", "fsspec")
    assert type(zarr_store(loc)).__name__ == "FsspecStore"
    with pytest.raises(ValueError, match="'fsspec' or 'obstore'"):
        zarr_store(loc, backend="boto")


def test_filesystem_speaks_fsspec_whatever_the_backend(seaweed, prefix, monkeypatch):
    loc = parse_location(f"s3://cubes/{prefix}", seaweed.storage_options())
    for backend in BACKENDS:
        fs = storage.filesystem(loc, backend=backend)
        base = f"{loc.path}/{backend}"
        fs.pipe_file(f"{base}/a.tif", b"abc")
        assert fs.cat_file(f"{base}/a.tif") == b"abc"
        fs.pipe_file(f"{base}/r.bin", bytes(range(100)))  # byte ranges, as the loader reads
        ranges = [(10, 20), (90, 200), (-10, None), (95, None), (-200, None), (0, -10)]
        got = fs.cat_ranges([f"{base}/r.bin"] * len(ranges), *zip(*ranges))
        assert got == [bytes(range(100))[slice(a, b)] for a, b in ranges]
        with pytest.raises(OSError, match="not satisfiable"):
            fs.cat_file(f"{base}/r.bin", start=100, end=110)
        got = fs.cat([f"{base}/a.tif", f"{base}/missing.tif"], on_error="return")
        assert got[f"{base}/a.tif"] == b"abc"
        assert isinstance(got[f"{base}/missing.tif"], FileNotFoundError)
        assert fs.find(base) == [f"{base}/a.tif", f"{base}/r.bin"]  # writes seen by listings
        with pytest.raises(FileNotFoundError):
            fs.cat_file(f"{base}/missing.tif")
        reader = storage.filesystem(parse_location(loc.url, seaweed.storage_options("reader")),
                                    backend=backend)
        with pytest.raises(PermissionError):
            reader.pipe_file(f"{base}/b.tif", b"x")
        clone = pickle.loads(pickle.dumps(fs))  # as shipped to dask workers
        assert clone.cat_file(f"{base}/a.tif") == b"abc"
    assert type(storage.filesystem(loc)).__name__ == "FastS3FileSystem"  # the default


# --- configuration the way AWS tools take it -----------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_standard_aws_env_vars_are_enough(seaweed, prefix, monkeypatch, backend):
    for key, value in seaweed.env("admin").items():
        monkeypatch.setenv(key, value)
    loc = parse_location(f"s3://cubes/{prefix}/c.zarr")  # no storage_options at all
    check_access(loc, write=True)
    data = _pixels(1)
    _write(zarr_store(loc, backend=backend), data)
    np.testing.assert_array_equal(_read(zarr_store(loc, read_only=True, backend=backend)), data)
    assert storage.filesystem(loc).exists(f"cubes/{prefix}/c.zarr/s2/zarr.json")


@pytest.mark.parametrize("backend", BACKENDS)
def test_aws_profile_from_config_files(seaweed, prefix, monkeypatch, tmp_path, backend):
    (tmp_path / "config").write_text(
        f"[profile s2]\nregion = eu-central-1\nendpoint_url = {seaweed.endpoint_url}\n")
    (tmp_path / "credentials").write_text(
        f"[s2]\naws_access_key_id = {seaweed.admin.access_key}\n"
        f"aws_secret_access_key = {seaweed.admin.secret_key}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_PROFILE", "s2")
    settings = storage.s3_settings()
    assert settings.endpoint_url == seaweed.endpoint_url and settings.region == "eu-central-1"
    assert "profile 's2'" in settings.credentials_from
    loc = parse_location(f"s3://cubes/{prefix}/c.zarr")
    data = _pixels(2)
    _write(zarr_store(loc, backend=backend), data)
    np.testing.assert_array_equal(_read(zarr_store(loc, read_only=True, backend=backend)), data)
    assert seaweed.admin.secret_key not in redact(f"x {seaweed.admin.secret_key} y", None)


def test_explicit_storage_options_win_over_the_environment(seaweed, prefix, monkeypatch):
    for key, value in seaweed.env("reader").items():
        monkeypatch.setenv(key, value)
    reader = parse_location(f"s3://cubes/{prefix}")
    with pytest.raises(StorageError, match="may not write"):
        check_access(reader, write=True)
    check_access(parse_location(f"s3://cubes/{prefix}", seaweed.storage_options("admin")),
                 write=True)


# --- clear, fast errors without secrets ----------------------------------------------

ERRORS = {
    "wrong secret": (lambda s: {**s.storage_options(), "secret": "wrong-" + s.admin.secret_key},
                     "cubes/{p}", {}, r"secret key .* does not match .*AWS_SECRET_ACCESS_KEY"),
    "unknown key": (lambda s: {**s.storage_options(), "key": "nobody"},
                    "cubes/{p}", {}, r"access key .* not known .*AWS_ACCESS_KEY_ID"),
    "missing bucket": (lambda s: s.storage_options(), "no-such-bucket/{p}", {},
                       r"bucket 'no-such-bucket' does not exist .*create it"),
    "missing cube": (lambda s: s.storage_options(), "cubes/{p}/none.zarr",
                     {"expect": "zarr.json"}, r"nothing at .*none.zarr/zarr.json.*not a cube"),
    "read-only write": (lambda s: s.storage_options("reader"), "cubes/{p}", {"write": True},
                        r"may not write .*write \(s3:PutObject\) permission"),
    "anonymous on private": (lambda s: s.storage_options("anon"), "cubes/{p}", {},
                             r"anonymous access .* may not read"),
    "no credentials": (lambda s: {"endpoint_url": s.endpoint_url}, "cubes/{p}", {},
                       r"no S3 credentials .*AWS_ACCESS_KEY_ID.*anon"),
    "server down": (lambda s: {**s.storage_options(), "endpoint_url": "http://127.0.0.1:9"},
                    "cubes/{p}", {}, r"cannot reach http://127.0.0.1:9 .*AWS_ENDPOINT_URL"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_misconfiguration_is_a_clear_error_within_seconds(seaweed, prefix, case):
    options, path, kwargs, hint = ERRORS[case]
    opts = options(seaweed)
    loc = parse_location("s3://" + path.format(p=prefix), opts)
    started = time.monotonic()
    with pytest.raises(StorageError, match=hint) as info:
        check_access(loc, **kwargs)
    assert time.monotonic() - started < 8
    message = str(info.value)
    for secret in (seaweed.admin.secret_key, seaweed.reader.secret_key, opts.get("secret")):
        assert not secret or secret not in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_on_the_data_path_translate_without_secrets(seaweed, prefix, backend):
    good = parse_location(f"s3://cubes/{prefix}/c.zarr", seaweed.storage_options())
    _write(zarr_store(good, backend=backend), _pixels())
    bad = {**seaweed.storage_options(), "secret": "wrong-" + seaweed.admin.secret_key}
    loc = parse_location(good.url, bad)
    with pytest.raises(DENIED) as info:
        _read(zarr_store(loc, read_only=True, backend=backend))
    err = storage.storage_error(info.value, loc)
    assert isinstance(err, StorageError), repr(info.value)
    assert bad["secret"] not in str(err) and seaweed.admin.secret_key not in str(err)
    assert bad["secret"] not in redact(str(info.value), bad)

    reader = parse_location(good.url, seaweed.storage_options("reader"))
    with pytest.raises(DENIED) as info:
        zarr.open_array(zarr_store(reader, backend=backend), path="s2")[0, 0, 0, 0, 0] = 1
    err = storage.storage_error(info.value, reader, action="write")
    assert isinstance(err, StorageError) and "may not write" in str(err)


# --- read-only and anonymous access --------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_credentials_suffice_to_read(seaweed, prefix, backend):
    url = f"s3://cubes/{prefix}/c.zarr"
    data = _pixels(3)
    _write(zarr_store(parse_location(url, seaweed.storage_options())), data)
    reader = parse_location(url, seaweed.storage_options("reader"))
    check_access(reader, expect="s2/zarr.json")
    np.testing.assert_array_equal(_read(zarr_store(reader, read_only=True, backend=backend)), data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_anonymous_read_of_a_public_bucket(seaweed, prefix, backend):
    url = f"s3://public/{prefix}/c.zarr"
    data = _pixels(4)
    _write(zarr_store(parse_location(url, seaweed.storage_options())), data)
    anon = parse_location(url, {"anon": True, "endpoint_url": seaweed.endpoint_url})
    check_access(anon, expect="s2/zarr.json")
    np.testing.assert_array_equal(_read(zarr_store(anon, read_only=True, backend=backend)), data)
    with pytest.raises(StorageError, match=r"anonymous access .* may not write"):
        check_access(anon, write=True)


# --- paths and secrets ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "../other", "a/../../b", "a/..\\..\\b", "ok/\x00/x"])
def test_user_names_cannot_climb_out_of_their_prefix(name):
    with pytest.raises(ValueError, match=r"climbs out|control characters"):
        parse_location("s3://cubes/users/alice").child(name)


@pytest.mark.parametrize("url", ["s3://cubes/users/../bob", "s3://cubes/a/./b", "s3://cubes/a\n"])
def test_urls_with_dot_segments_are_refused(url):
    with pytest.raises(ValueError, match="write the path out"):
        parse_location(url)


def test_odd_but_harmless_names_stay_below_the_prefix(seaweed, prefix):
    base = parse_location(f"s3://cubes/{prefix}/users/alice", seaweed.storage_options())
    names = ["/etc/passwd", "s3://cubes/elsewhere", "./x/./y", "..x", "%2e%2e"]
    for name in names:
        child = base.child(name)
        assert child.path.startswith(base.path + "/"), (name, child.path)
        storage.filesystem(child).pipe_file(child.path + "/f", b"1")
    keys = _keys(seaweed, "cubes", prefix)
    assert len(keys) == len(names) and all(k.startswith(f"{prefix}/users/alice/") for k in keys)


def test_redact_removes_every_kind_of_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-123")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token-456")
    opts = {"key": "AKIAEXAMPLE", "secret": "opt-secret-789",
            "client_kwargs": {"aws_session_token": "nested-token-000", "region_name": "eu"}}
    text = ("AKIAEXAMPLE opt-secret-789 nested-token-000 env-secret-123 env-token-456 "
            "https://user:pa55@host/x s3://cubes/x eu")
    out = redact(text, opts)
    for secret in ("AKIAEXAMPLE", "opt-secret-789", "nested-token-000", "env-secret-123",
                   "env-token-456", "pa55"):
        assert secret not in out
    assert "s3://cubes/x" in out and out.endswith(" eu")
    assert "opt-secret-789" not in repr(parse_location("s3://cubes/x", opts))
