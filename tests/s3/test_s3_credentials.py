"""Temporary credentials that expire are refreshed from their source during a long job."""

from __future__ import annotations

import pickle
import sys
import textwrap
import time

import numpy as np
import pytest

from s2cube.io import storage
from s2cube.io.storage import parse_location, zarr_store

PROCESS = textwrap.dedent("""\
    import datetime, json, sys
    with open(sys.argv[1], "a") as log:  # one line per time the credentials are fetched
        log.write("fetched\\n")
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=int(sys.argv[4]))
    print(json.dumps({"Version": 1, "AccessKeyId": sys.argv[2], "SecretAccessKey": sys.argv[3],
                      "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}))
""")


LIFETIME_S = 6


@pytest.fixture
def expiring_profile(seaweed, monkeypatch, tmp_path):
    """An AWS profile whose ``credential_process`` hands out credentials valid for seconds."""
    script, log = tmp_path / "creds.py", tmp_path / "fetched.log"
    script.write_text(PROCESS)
    cmd = (f"{sys.executable} {script} {log} {seaweed.admin.access_key} {seaweed.admin.secret_key} "
           f"{LIFETIME_S}")
    (tmp_path / "config").write_text(f"[profile temp]\nregion = us-east-1\n"
                                     f"endpoint_url = {seaweed.endpoint_url}\n"
                                     f"credential_process = {cmd}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "temp")
    storage._resolve.cache_clear()
    yield log
    storage._resolve.cache_clear()


def _fetches(log) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_expiring_credentials_are_refreshed_by_obstore(seaweed, prefix, expiring_profile):
    import zarr

    settings = storage.s3_settings()
    assert settings.refreshable and "credential_process" in settings.credentials_from
    loc = parse_location(f"s3://cubes/{prefix}/c.zarr")
    store = zarr_store(loc, backend="obstore")
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    zarr.create_array(store, name="a", shape=data.shape, chunks=(16, 16), dtype=data.dtype)[:] = data
    # every process that holds the store (here: an unpickled copy) resolves its own
    # credentials, and fetches them again from the credential_process as they expire
    copy = pickle.loads(pickle.dumps(zarr_store(loc, read_only=True, backend="obstore")))
    assert seaweed.admin.secret_key not in pickle.dumps(copy).decode("latin-1")
    counts = []
    for _ in range(3):
        np.testing.assert_array_equal(zarr.open_array(copy, path="a", mode="r")[:], data)
        counts.append(_fetches(expiring_profile))
        time.sleep(LIFETIME_S / 2)
    assert counts[-1] > counts[0]  # refreshed while the store was in use, and still reads


def test_static_keys_are_not_refreshed(seaweed, monkeypatch):
    for key, value in seaweed.env("admin").items():
        monkeypatch.setenv(key, value)
    storage._resolve.cache_clear()
    assert not storage.s3_settings().refreshable
