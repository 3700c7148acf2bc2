"""Stores from URLs: local paths, ``file://``, ``s3://`` and any fsspec URL.

One place turns a user's URL and ``storage_options`` into a zarr store or an fsspec
filesystem, so the converter, the accessor and the loader agree on credentials and
never print them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    """A parsed URL: protocol, path inside it, and the options to reach it."""

    url: str
    protocol: str
    path: str
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    def child(self, name: str) -> Location:
        """The location of ``name`` below this one (``name`` may not climb out with ``..``)."""
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise ValueError(f"path {name!r} climbs out of {self.url!r}; use a name below it")
        sep = "" if self.url.endswith("/") else "/"
        return parse_location(self.url + sep + "/".join(parts), self.storage_options)


def parse_location(url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Location:
    """Parse a local path or URL (``s3://bucket/key``, ``file:///tmp/x``, ``memory://x``)."""
    text = os.fspath(url)
    options = dict(storage_options or {})
    if "://" not in text:
        return Location(os.path.abspath(text), "file", os.path.abspath(text), options)
    protocol, _, rest = text.partition("://")
    protocol = protocol.lower()
    if protocol == "file":
        path = os.path.abspath("/" + rest.lstrip("/"))
        return Location(path, "file", path, options)
    return Location(text.rstrip("/"), protocol, rest.rstrip("/"), options)


def filesystem(loc: Location):
    """An fsspec filesystem for ``loc`` (imported here: fsspec is light, s3fs is not)."""
    import fsspec

    if loc.is_local:
        return fsspec.filesystem("file")
    return fsspec.filesystem(loc.protocol, **loc.storage_options)


def zarr_store(loc: Location, *, read_only: bool = False):
    """A zarr v3 store for ``loc``: ``LocalStore`` for local paths, ``FsspecStore`` otherwise."""
    from zarr.storage import FsspecStore, LocalStore

    if loc.is_local:
        return LocalStore(loc.path, read_only=read_only)
    fs = filesystem(loc)
    if not getattr(fs, "async_impl", False):
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        fs = AsyncFileSystemWrapper(fs)
    return FsspecStore(fs, path=loc.path, read_only=read_only)


def redact(text: str, storage_options: dict[str, Any] | None) -> str:
    """Remove every secret value of ``storage_options`` (and AWS env secrets) from ``text``."""
    secrets = []
    for key, value in _flatten(storage_options or {}):
        if isinstance(value, str) and value and _is_secret_key(key):
            secrets.append(value)
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        if os.environ.get(key):
            secrets.append(os.environ[key])
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _is_secret_key(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in ("secret", "key", "token", "password", "credential"))


def _flatten(options: dict[str, Any], prefix: str = ""):
    for key, value in options.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
