"""Stores from URLs: local paths, ``file://``, ``s3://`` and any fsspec URL.

One place turns a user's URL and ``storage_options`` into a zarr store or an fsspec
filesystem, so the converter, the accessor and the loader agree on credentials and
never print them.

S3 configuration comes from where users' other AWS tools take it, and from nowhere else:
explicit ``storage_options`` (s3fs names: ``key``, ``secret``, ``token``, ``anon``,
``endpoint_url``, ``profile``, ``client_kwargs={"region_name": ...}``) first, then the
standard environment variables (``AWS_ENDPOINT_URL[_S3]``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
``AWS_PROFILE``), then the AWS config and credentials files, resolved by botocore exactly
as the AWS CLI does. The same settings drive both backends: fsspec (s3fs) and obstore.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any, Literal, cast

from s2cube.errors import StorageError

if TYPE_CHECKING:  # obstore's option types exist for type checkers only
    from obstore import GetOptions
    from obstore.store import ClientConfig, RetryConfig, S3Config, S3Credential

logger = logging.getLogger(__name__)

Backend = Literal["fsspec", "obstore"]

#: The backend for S3. obstore (Rust, object_store) measured faster than s3fs for all
#: s2cube does on the loopback SeaweedFS (``benchmarks/bench_s3.py``, BENCHMARKS.md):
#: writing sharded zarr ~1.4x the throughput, a loader sample (a byte-range GET) ~0.7x
#: the time, small whole-object GETs (the converter's GeoTIFFs) ~0.3x the time, S3->S3
#: conversion 0.82x local speed vs 0.56x with s3fs. Its per-request cost is ~1 ms of Rust
#: where s3fs spends several ms of Python. ``S2CUBE_STORAGE_BACKEND`` overrides it.
DEFAULT_BACKEND: Backend = "obstore"

#: Data path: transient errors (connection refused or reset, timeouts, 5xx, throttling)
#: are retried with growing backoff for up to ~30 s, enough to ride out a server
#: restart; connecting gives up after a few seconds per attempt.
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 60
#: s3fs: botocore "standard" mode, 6 retries, each after rand(0, 1) x 2**n s (cap 20 s),
#: so ~0.5 s on average before the first one; botocore takes no other backoff setting.
#: On top, s3fs makes up to 5 such calls on SlowDown or a connection error (0.1 x 1.7**n s apart).
MAX_ATTEMPTS = 7
#: obstore: the first retry after RETRY_INIT_BACKOFF_MS, each next one after a wait drawn
#: uniformly in [init, RETRY_BACKOFF_BASE x the previous wait] (at most RETRY_MAX_BACKOFF_S);
#: no new retry once RETRY_BUDGET_S have passed. A lone failed request (a 503 SlowDown, a
#: reset connection) thus holds up its batch ~5 ms, not the 200 ms it did before (the
#: retry cost at 1 % failed requests, BENCHMARKS.md), while repeated failures back off
#: geometrically: a median 0.16, 2.2, 16 s have passed after 5, 10, 15 retries. The count
#: runs out before the time budget with odds below 1e-4, so against a server that is down
#: the budget, not the count, ends the retries.
RETRY_INIT_BACKOFF_MS = 5
RETRY_BACKOFF_BASE = 4
RETRY_MAX_BACKOFF_S = 5
MAX_RETRIES = 80
RETRY_BUDGET_S = 30
#: Preflight checks (:func:`check_access`) fail fast instead: a wrong endpoint,
#: credential, bucket or permission is reported within a few seconds.
PREFLIGHT_TIMEOUT_S = 2
PREFLIGHT_ATTEMPTS = 2

_S3_PROTOCOLS = ("s3", "s3a")
_ENV_PREFIXES = ("AWS_",)


@dataclass(frozen=True)
class Location:
    """A parsed URL: protocol, path inside it, and the options to reach it."""

    url: str
    protocol: str
    path: str
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False,
                                            repr=False)

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    @property
    def is_s3(self) -> bool:
        return self.protocol in _S3_PROTOCOLS

    @property
    def bucket(self) -> str:
        """The bucket (first path segment) of an object-store URL."""
        return self.path.split("/", 1)[0]

    @property
    def key(self) -> str:
        """The path inside the bucket (no leading or trailing slash)."""
        return self.path.partition("/")[2].strip("/")

    def child(self, name: str) -> Location:
        """The location of ``name`` below this one (``name`` may not climb out with ``..``)."""
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise ValueError(f"path {name!r} climbs out of {self.url!r}; use a name below it")
        if any(_CONTROL.search(p) for p in parts):
            raise ValueError(f"path {name!r} holds control characters; use a plain name")
        sep = "" if self.url.endswith("/") else "/"
        return parse_location(self.url + sep + "/".join(parts), self.storage_options)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_location(url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Location:
    """Parse a local path or URL (``s3://bucket/key``, ``file:///tmp/x``, ``memory://x``).

    Raises
    ------
    ValueError
        When an object-store URL has ``.`` or ``..`` segments (object stores and some S3
        servers treat them differently, so a cube could land outside its prefix) or
        control characters.
    """
    text = os.fspath(url)
    options = dict(storage_options or {})
    if "://" not in text:
        return Location(os.path.abspath(text), "file", os.path.abspath(text), options)
    protocol, _, rest = text.partition("://")
    protocol = protocol.lower()
    if protocol == "file":
        path = os.path.abspath("/" + rest.lstrip("/"))
        return Location(path, "file", path, options)
    segments = rest.rstrip("/").split("/")
    if any(s in (".", "..") for s in segments[1:]) or _CONTROL.search(rest):
        raise ValueError(f"URL {redact(text, options)!r} has '.', '..' or control characters "
                         "in its path; write the path out without them")
    return Location(text.rstrip("/"), protocol, rest.rstrip("/"), options)


# --- S3 settings: one resolution for both backends ------------------------------------


@dataclass(frozen=True)
class S3Settings:
    """Where and as whom to reach S3, resolved from options, environment and AWS files."""

    endpoint_url: str | None
    region: str
    anon: bool
    credentials_from: str  # where the credentials came from, for error messages
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    #: the credentials expire and botocore refreshes them (assume-role, SSO,
    #: ``credential_process``, container roles): obstore then asks :class:`RefreshingCredentials`
    refreshable: bool = False

    @property
    def endpoint(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"


def s3_settings(options: dict[str, Any] | None = None) -> S3Settings:
    """Resolve endpoint, region and credentials as botocore (AWS CLI, boto3, s3fs) would.

    Order: ``storage_options``; environment variables; the profile of ``AWS_PROFILE``
    (or ``options["profile"]``) in the AWS config/credentials files; botocore's remaining
    providers (SSO, container and instance roles unless ``AWS_EC2_METADATA_DISABLED``).
    """
    return _resolve(_freeze(options or {}), _env_snapshot())


@functools.lru_cache(maxsize=32)
def _resolve(frozen: str, env: tuple) -> S3Settings:
    opts = json.loads(frozen)
    quick = _resolve_without_botocore(opts)
    if quick is not None:
        return quick
    ck = opts.get("client_kwargs") or {}
    import botocore.session

    session = botocore.session.Session(profile=opts.get("profile"))
    region = (ck.get("region_name") or opts.get("region") or os.environ.get("AWS_REGION")
              or session.get_config_variable("region") or "us-east-1")
    endpoint = opts.get("endpoint_url") or ck.get("endpoint_url") or _session_endpoint(session)
    explicit = _explicit_settings(opts, endpoint, region)
    if explicit is not None:
        return explicit
    creds = session.get_credentials()
    if creds is None:
        return S3Settings(endpoint, region, False, "nowhere (no credentials found)")
    frozen_creds = creds.get_frozen_credentials()
    _remember_secret(frozen_creds.secret_key, frozen_creds.token)
    return S3Settings(endpoint, region, False, _describe_method(creds.method, session),
                      frozen_creds.access_key, frozen_creds.secret_key, frozen_creds.token,
                      refreshable=hasattr(creds, "refresh_needed"))


class RefreshingCredentials:
    """An obstore ``credential_provider`` over botocore's refreshable credentials.

    Temporary credentials (an assumed role, SSO, a ``credential_process``, a container
    role) expire, often within the hour, while a training run or a conversion goes on for
    days. obstore calls this when its cached credential is about to expire; botocore
    refreshes from the same source. It pickles as its ``storage_options`` only (no secret),
    so each process that unpickles a store (dask workers, DataLoader workers) resolves its
    own credentials.
    """

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})
        self._creds: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.options, self._creds = state["options"], None

    def __call__(self) -> S3Credential:
        if self._creds is None:
            import botocore.session

            creds = botocore.session.Session(profile=self.options.get("profile")).get_credentials()
            if creds is None:
                raise StorageError("the AWS credentials that were found before are gone; check "
                                   "AWS_PROFILE and the AWS config files")
            self._creds = creds
        frozen = self._creds.get_frozen_credentials()  # refreshes when near expiry
        _remember_secret(frozen.secret_key, frozen.token)
        expiry = getattr(self._creds, "_expiry_time", None)  # botocore's, in dateutil's tz
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
                "token": frozen.token,
                "expires_at": None if expiry is None else expiry.astimezone(UTC)}


def _explicit_settings(opts: dict[str, Any], endpoint, region) -> S3Settings | None:
    """Anonymous access or a key/secret given in ``storage_options``, if either is."""
    ck = opts.get("client_kwargs") or {}
    if opts.get("anon"):
        return S3Settings(endpoint, region, True, "anonymous access (anon=True)")
    key = opts.get("key") or opts.get("username") or ck.get("aws_access_key_id")
    secret = opts.get("secret") or opts.get("password") or ck.get("aws_secret_access_key")
    if key and secret:
        return S3Settings(endpoint, region, False, "storage_options key/secret", key, secret,
                          opts.get("token") or ck.get("aws_session_token"))
    return None


def _resolve_without_botocore(opts: dict[str, Any]) -> S3Settings | None:
    """The settings when options and environment name endpoint and credentials outright.

    Saves importing botocore (~0.2 s) when opening a cube; profiles, config files and
    AWS proper (no endpoint) go through botocore.
    """
    ck = opts.get("client_kwargs") or {}
    env = os.environ
    endpoint = (opts.get("endpoint_url") or ck.get("endpoint_url")
                or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"))
    if not endpoint or opts.get("profile") or env.get("AWS_PROFILE"):
        return None
    region = (ck.get("region_name") or opts.get("region") or env.get("AWS_REGION")
              or env.get("AWS_DEFAULT_REGION") or "us-east-1")
    explicit = _explicit_settings(opts, endpoint, region)
    if explicit is not None:
        return explicit
    key = opts.get("key") or opts.get("username") or ck.get("aws_access_key_id")
    secret = opts.get("secret") or opts.get("password") or ck.get("aws_secret_access_key")
    if not key and not secret and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return S3Settings(endpoint, region, False, _describe_method("env", None),
                          env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                          env.get("AWS_SESSION_TOKEN"))
    return None


def _session_endpoint(session) -> str | None:
    """``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or the profile's ``endpoint_url``."""
    from botocore.config import Config

    client = session.create_client("s3", region_name="us-east-1", aws_access_key_id="x",
                                   aws_secret_access_key="x",
                                   config=Config(retries={"max_attempts": 1}))
    url = client.meta.endpoint_url
    return None if url.rstrip("/").endswith("amazonaws.com") else url


def _describe_method(method: str, session) -> str:
    if method == "env":
        return "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    if method in ("shared-credentials-file", "config-file"):
        profile = session.profile or "default"
        return f"profile {profile!r} of the AWS {method.replace('-', ' ')}"
    if method == "custom-process":
        return f"credential_process of profile {session.profile or 'default'!r}"
    return f"botocore provider {method!r}"


def _freeze(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True, default=repr)


def _env_snapshot() -> tuple:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))


def s3fs_options(options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``storage_options`` for s3fs with s2cube's timeouts and retries filled in.

    Credentials are left to s3fs/botocore (the same resolution as :func:`s3_settings`);
    only the region of ``AWS_REGION`` (which botocore ignores) is passed on.
    """
    out = dict(options or {})
    ck = dict(out.get("client_kwargs") or {})
    if "region_name" not in ck and os.environ.get("AWS_REGION"):
        ck["region_name"] = os.environ["AWS_REGION"]
    if ck:
        out["client_kwargs"] = ck
    config = dict(out.get("config_kwargs") or {})
    config.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    config.setdefault("read_timeout", READ_TIMEOUT_S)
    config.setdefault("retries", {"max_attempts": MAX_ATTEMPTS, "mode": "standard"})
    out["config_kwargs"] = config
    return out


def obstore_s3(loc: Location, *, settings: S3Settings | None = None):
    """An ``obstore.store.S3Store`` for ``loc`` with the resolved settings and retries."""
    from datetime import timedelta

    from obstore.store import S3Store

    s = settings or s3_settings(loc.storage_options)
    config: S3Config = {"region": s.region}
    if s.endpoint_url:
        config["endpoint"] = s.endpoint_url
    provider = None
    if s.anon:
        config["skip_signature"] = True
    elif s.refreshable:
        provider = RefreshingCredentials(loc.storage_options)
    elif s.key and s.secret:  # a key always comes with its secret (S3Settings)
        config |= {"access_key_id": s.key, "secret_access_key": s.secret}
        if s.token:
            config["session_token"] = s.token
    else:
        raise _no_credentials(loc, s)
    client: ClientConfig = {"connect_timeout": timedelta(seconds=CONNECT_TIMEOUT_S),
                            "timeout": timedelta(seconds=10 * READ_TIMEOUT_S),
                            "allow_http": bool(s.endpoint_url
                                               and s.endpoint_url.startswith("http://"))}
    # fast first retries, a time budget that outlasts a server restart: see RETRY_* above
    retry: RetryConfig = {
        "max_retries": MAX_RETRIES, "retry_timeout": timedelta(seconds=RETRY_BUDGET_S),
        "backoff": {"init_backoff": timedelta(milliseconds=RETRY_INIT_BACKOFF_MS),
                    "max_backoff": timedelta(seconds=RETRY_MAX_BACKOFF_S),
                    "base": RETRY_BACKOFF_BASE}}
    return S3Store(loc.bucket, prefix=loc.key or None, config=config, client_options=client,
                   retry_config=retry, credential_provider=provider)


# --- filesystems and zarr stores ------------------------------------------------------

_FS_CACHE: dict[tuple, Any] = {}
_FS_LOCK = threading.Lock()


def backend_of(backend: str | None = None) -> Backend:
    """``backend``, else ``$S2CUBE_STORAGE_BACKEND``, else :data:`DEFAULT_BACKEND`."""
    chosen = backend or os.environ.get("S2CUBE_STORAGE_BACKEND") or DEFAULT_BACKEND
    if chosen not in ("fsspec", "obstore"):
        raise ValueError(f"storage backend {chosen!r} is not 'fsspec' or 'obstore'; fix "
                         "S2CUBE_STORAGE_BACKEND or the backend argument")
    return chosen  # type: ignore[return-value]


def filesystem(loc: Location, *, backend: Backend | None = None):
    """An fsspec filesystem for ``loc`` (imported here: fsspec is light, s3fs is not).

    S3 filesystems are s3fs with s2cube's timeouts and retries (:func:`s3fs_options`);
    with the obstore backend their whole-object GETs and PUTs go through obstore
    (:class:`FastS3FileSystem`), listings stay s3fs's. They are cached per process,
    thread, options and ``AWS_*`` environment (a changed credential in the environment
    is never served from a stale instance).
    """
    import fsspec

    if loc.is_local:
        return fsspec.filesystem("file")
    if not loc.is_s3:
        return fsspec.filesystem(loc.protocol, **loc.storage_options)
    return _s3fs(loc.storage_options, asynchronous=False, fast=backend_of(backend) == "obstore")


def _s3fs(options: dict[str, Any], *, asynchronous: bool, fast: bool = False):
    import s3fs

    key = (os.getpid(), None if asynchronous else threading.get_ident(), asynchronous, fast,
           _freeze(options), _env_snapshot())
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            if len(_FS_CACHE) > 64:
                _FS_CACHE.clear()
            cls = _fast_s3fs_class() if fast else s3fs.S3FileSystem
            fs = cls(skip_instance_cache=True, asynchronous=asynchronous, **s3fs_options(options))
            _FS_CACHE[key] = fs
    return fs


def __getattr__(name: str):
    """``FastS3FileSystem`` is built on first use (it subclasses s3fs, a heavy import)."""
    if name == "FastS3FileSystem":
        return _fast_s3fs_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _fast_s3fs_class():
    import s3fs

    class FastS3FileSystem(s3fs.S3FileSystem):
        """s3fs whose GETs (whole objects and byte ranges) and PUTs go through obstore.

        Reading the archive's GeoTIFFs, the journal and the loader's byte ranges are many
        small requests; s3fs spends several ms of Python on each (and a HEAD before each
        whole-object GET), obstore about 1 ms (``benchmarks/bench_s3.py``). Listings,
        ``info``, deletes, versioned and odd ranges stay s3fs's. Errors come back as
        s3fs's would: ``FileNotFoundError``, ``PermissionError``.
        """

        _PUT_LIMIT = 64 * 2**20  # bigger payloads take s3fs's multipart upload

        def _obstore(self, bucket: str):
            stores = self.__dict__.setdefault("_s2cube_stores", {})
            if bucket not in stores:
                user = {k: v for k, v in self.storage_options.items()
                        if k not in ("asynchronous", "skip_instance_cache", "loop")}
                stores[bucket] = obstore_s3(parse_location(f"s3://{bucket}", user))
            return stores[bucket]

        async def _cat_file(self, path, version_id=None, start=None, end=None, **kwargs):
            bucket, key, vers = self.split_path(path)
            options = _range_options(start, end)
            if version_id or vers or not key or options is None:
                return await super()._cat_file(path, version_id=version_id, start=start,
                                               end=end, **kwargs)
            import obstore

            try:
                store = self._obstore(bucket)
                if "bounded" in options:
                    got = await obstore.get_range_async(store, key, start=start, end=end)
                    return got.to_bytes()
                resp = await obstore.get_async(store, key, options=cast("GetOptions", options))
                return (await resp.bytes_async()).to_bytes()
            except Exception as exc:
                _reraise_as_os_error(exc, path)

        async def _pipe_file(self, path, data, mode="overwrite", **kwargs):
            bucket, key, _ = self.split_path(path)
            if mode != "overwrite" or len(data) > self._PUT_LIMIT or not key:
                return await super()._pipe_file(path, data, mode=mode, **kwargs)
            import obstore

            try:
                await obstore.put_async(self._obstore(bucket), key, data)
            except Exception as exc:
                _reraise_as_os_error(exc, path)
            finally:
                self.invalidate_cache(path)

    FastS3FileSystem.__module__ = __name__  # pickled by reference, rebuilt by __getattr__
    FastS3FileSystem.__qualname__ = "FastS3FileSystem"
    return FastS3FileSystem


def _range_options(start: int | None, end: int | None) -> dict | None:
    """obstore GET options for an fsspec ``start``/``end`` (``None``: leave it to s3fs)."""
    if end is None:
        if start is None:
            return {}
        return {"range": {"offset": start}} if start >= 0 else {"range": {"suffix": -start}}
    if start is not None and 0 <= start < end:
        return {"bounded": True}
    return None


def _reraise_as_os_error(exc: Exception, path: str) -> None:
    """Raise obstore's not-found and access errors as the ``OSError`` kinds fsspec callers
    expect (``FileNotFoundError``, ``PermissionError``); anything else as it is."""
    name = type(exc).__name__
    if name == "NotFoundError":
        raise FileNotFoundError(path) from exc
    if name in ("PermissionDeniedError", "UnauthenticatedError"):
        raise PermissionError(f"{path}: {_short(exc)}") from exc
    if "416 Range Not Satisfiable" in str(exc):
        raise OSError(errno.EINVAL, "The requested range is not satisfiable", path) from exc
    raise exc


def zarr_store(loc: Location, *, read_only: bool = False, backend: Backend | None = None):
    """A zarr v3 store for ``loc``.

    ``LocalStore`` for local paths; for S3 an obstore-backed ``ObjectStore`` or an
    s3fs-backed ``FsspecStore`` (``backend``, default :data:`DEFAULT_BACKEND` or the
    ``S2CUBE_STORAGE_BACKEND`` environment variable); ``FsspecStore`` for other URLs.
    """
    from zarr.storage import FsspecStore, LocalStore

    if loc.is_local:
        return LocalStore(loc.path, read_only=read_only)
    if loc.is_s3:
        if backend_of(backend) == "obstore":
            from zarr.storage import ObjectStore

            return ObjectStore(obstore_s3(loc), read_only=read_only)
        return FsspecStore(_s3fs(loc.storage_options, asynchronous=True), path=loc.path,
                           read_only=read_only)
    fs = filesystem(loc)
    if not getattr(fs, "async_impl", False):
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        fs = AsyncFileSystemWrapper(fs)
    return FsspecStore(fs, path=loc.path, read_only=read_only)


# --- preflight and clear errors -------------------------------------------------------


def check_access(loc: Location, *, write: bool = False, expect: str | None = None) -> None:
    """Fail fast, with a :class:`StorageError` naming what to fix, if ``loc`` is unusable.

    Parameters
    ----------
    loc
        Where to read or write.
    write
        Also check that objects may be written and deleted below ``loc`` (a tiny probe
        object is written and removed).
    expect
        A key below ``loc`` that must exist, e.g. ``"zarr.json"`` for a cube; read with
        a one-byte GET (needs no list permission). Without it, reading is checked by
        listing one key below ``loc``.

    Raises
    ------
    StorageError
        Unreachable endpoint, unknown access key, wrong secret, missing bucket, missing
        ``expect``, missing permission. Within a few seconds, never a hang.
    """
    if loc.is_local:
        _check_local(loc, write=write, expect=expect)
        return
    if not loc.is_s3:
        return
    settings = s3_settings(loc.storage_options)
    if not settings.anon and not settings.key:
        raise _no_credentials(loc, settings)
    client = _preflight_client(settings)
    prefix = f"{loc.key}/" if loc.key else ""
    probe = f"{prefix}.s2cube-write-probe-{uuid.uuid4().hex}"
    steps = [("read", (lambda: client.get_object(Bucket=loc.bucket, Key=prefix + expect,
                                                 Range="bytes=0-0")) if expect else
              (lambda: client.list_objects_v2(Bucket=loc.bucket, Prefix=prefix, MaxKeys=1)))]
    if write:
        steps += [("write", lambda: client.put_object(Bucket=loc.bucket, Key=probe, Body=b"")),
                  ("delete", lambda: client.delete_object(Bucket=loc.bucket, Key=probe))]
    for action, step in steps:
        _preflight_step(step, loc, action, settings, expect)


def missing_bucket(loc: Location) -> StorageError | None:
    """A :class:`StorageError` saying so when the bucket of ``loc`` does not exist, else None.

    For the moment a read found nothing: an object store answers "not found" alike for a
    missing key and a missing bucket, and the two need different fixes. One request; any
    answer but "no such bucket" (including no permission to ask) gives None.
    """
    if not loc.is_s3:
        return None
    settings = None
    try:
        settings = s3_settings(loc.storage_options)
        if not settings.anon and not settings.key:
            return None
        _preflight_client(settings).list_objects_v2(Bucket=loc.bucket, MaxKeys=1)
    except Exception as exc:
        if _error_code(exc)[0] == "NoSuchBucket":
            return storage_error(exc, loc, settings=settings)
    return None


def _preflight_step(step, loc: Location, action: str, settings: S3Settings,
                    expect: str | None) -> None:
    try:
        step()
    except Exception as exc:
        err = storage_error(exc, loc, action=action, settings=settings, expect=expect)
        if err is None:
            raise
        raise err from None


def _preflight_client(s: S3Settings):
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(connect_timeout=PREFLIGHT_TIMEOUT_S, read_timeout=5 * PREFLIGHT_TIMEOUT_S,
                    retries={"max_attempts": PREFLIGHT_ATTEMPTS, "mode": "standard"},
                    signature_version=UNSIGNED if s.anon else None)
    return botocore.session.Session().create_client(
        "s3", endpoint_url=s.endpoint_url, region_name=s.region, config=config,
        aws_access_key_id=s.key, aws_secret_access_key=s.secret, aws_session_token=s.token)


def _check_local(loc: Location, *, write: bool, expect: str | None) -> None:
    if expect and not os.path.exists(os.path.join(loc.path, expect)):
        raise StorageError(f"{loc.path} has no {expect}; check the path")
    if write:
        parent = loc.path
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK):
            raise StorageError(f"{parent} is not writable; choose a folder you may write to")


def storage_error(exc: BaseException, loc: Location, *, action: str = "read",
                  settings: S3Settings | None = None,
                  expect: str | None = None) -> StorageError | None:
    """A :class:`StorageError` saying what to fix for a storage exception, or ``None``.

    Understands botocore ``ClientError`` and connection errors, s3fs's translated
    ``PermissionError``/``FileNotFoundError`` and obstore's exceptions. The message holds
    no secret (it passes through :func:`redact`).
    """
    s = settings or (s3_settings(loc.storage_options) if loc.is_s3 else None)
    code, text = _error_code(exc)
    where = f"{loc.url} at {s.endpoint}" if s else loc.url
    creds = f"the credentials from {s.credentials_from}" if s else "the credentials"
    if code == "Connection":
        msg = (f"cannot reach {s.endpoint if s else loc.url} ({text}); check AWS_ENDPOINT_URL "
               "or storage_options['endpoint_url'] and that the server is up")
    elif code == "InvalidAccessKeyId":
        msg = (f"the access key of {creds} is not known to {s.endpoint if s else loc.url}; "
               "check AWS_ACCESS_KEY_ID / storage_options['key'] or the AWS profile")
    elif code == "SignatureDoesNotMatch":
        msg = (f"the secret key of {creds} does not match its access key; check "
               "AWS_SECRET_ACCESS_KEY / storage_options['secret'] or the AWS profile")
    elif code == "NoSuchBucket":
        msg = (f"bucket {loc.bucket!r} does not exist at {s.endpoint if s else loc.url}; "
               "create it or fix the bucket name in the URL")
    elif code in ("NoSuchKey", "NotFound") and expect:
        msg = f"nothing at {loc.url}/{expect}: {loc.url} is not a cube; check the URL"
    elif code in ("AccessDenied", "Forbidden", "AllAccessDisabled"):
        need = {"read": "read (s3:GetObject, s3:ListBucket)", "write": "write (s3:PutObject)",
                "delete": "delete (s3:DeleteObject)"}.get(action, action)
        msg = (f"{creds} may not {action} {where}; use credentials with {need} permission "
               f"on {loc.url}" + (", or anon=True if the bucket is public" if action == "read"
                                  and s and not s.anon else ""))
    elif code == "NoCredentials":
        return _no_credentials(loc, s)
    else:
        return None
    return StorageError(redact(msg, loc.storage_options))


def _error_code(exc: BaseException | None) -> tuple[str | None, str]:
    """A normalised S3 error code for ``exc`` (walking its causes) and a short text."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = _one_code(exc)
        if code:
            return code, _short(exc)
        exc = exc.__cause__ or exc.__context__
    return None, ""


def _one_code(exc: BaseException) -> str | None:
    name = type(exc).__name__
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        return {"403": "Forbidden", "404": "NotFound"}.get(code, code) or None
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                "ReadTimeoutError", "ClientConnectorError", "ServerDisconnectedError"):
        return "Connection"
    if name == "NoCredentialsError":
        return "NoCredentials"
    text = str(exc)
    for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "AccessDenied"):
        if code in text or _HUMAN.get(code, "\0") in text:
            return code
    if name in ("PermissionDeniedError", "UnauthenticatedError") or isinstance(exc, PermissionError):
        return "Forbidden"
    if name == "GenericError" and re.search(r"connect|Connection refused|timed out", text, re.I):
        return "Connection"
    return None


#: s3fs keeps only the server's message of a ClientError; these identify the code.
_HUMAN = {
    "InvalidAccessKeyId": "Access Key Id you provided does not exist",
    "SignatureDoesNotMatch": "signature we calculated does not match",
    "NoSuchBucket": "specified bucket does not exist",
}


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("…" if len(text) > 200 else "")


def _no_credentials(loc: Location, s: S3Settings | None) -> StorageError:
    return StorageError(
        f"no S3 credentials found for {loc.url}: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or storage_options key/secret; for a public "
        "bucket pass storage_options={'anon': True}")


# --- secrets --------------------------------------------------------------------------

_KNOWN_SECRETS: set[str] = set()
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def _remember_secret(*values: str | None) -> None:
    _KNOWN_SECRETS.update(v for v in values if v)


def redact(text: str, storage_options: dict[str, Any] | None) -> str:
    """Remove every secret value of ``storage_options`` (and AWS env secrets) from ``text``.

    Also removes credentials resolved from AWS profiles and ``user:password@`` parts of
    URLs.
    """
    secrets = set(_KNOWN_SECRETS)
    for key, value in _flatten(storage_options or {}):
        if isinstance(value, str) and value and _is_secret_key(key):
            secrets.add(value)
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                "AWS_SECURITY_TOKEN"):
        if os.environ.get(key):
            secrets.add(os.environ[key])
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _USERINFO.sub("***@", text)


def _is_secret_key(key: str) -> bool:
    key = key.lower().rsplit(".", 1)[-1]
    return any(word in key for word in ("secret", "key", "token", "password", "credential",
                                        "username"))


def _flatten(options: dict[str, Any], prefix: str = ""):
    for key, value in options.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
