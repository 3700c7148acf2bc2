"""A real S3 server for the tests: SeaweedFS ``weed mini`` on 127.0.0.1 (one per session).

Every test here runs with a clean AWS environment: no ``AWS_*`` variables of the machine,
AWS config/credentials files pointing at empty places in the test's folder, and the
instance-metadata lookup off, so no request leaves 127.0.0.1.
"""

from __future__ import annotations

import uuid

import pytest
from servers import SeaweedServer, find_weed

#: buckets of the session: ``cubes`` (private), ``public`` (anonymous read and list)
BUCKET = "cubes"
PUBLIC = "public"


@pytest.fixture(scope="session")
def seaweed():
    """The session's SeaweedFS: admin, reader and anonymous-on-``public`` identities."""
    try:
        find_weed()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with SeaweedServer(public_buckets=(PUBLIC,)) as server:
        server.create_bucket(BUCKET)
        server.create_bucket(PUBLIC)
        yield server


@pytest.fixture(autouse=True)
def clean_aws_env(monkeypatch, tmp_path):
    """No AWS settings from the machine: each test sets exactly what it means to test."""
    import os

    for key in list(os.environ):
        if key.startswith("AWS_") or key == "S2CUBE_STORAGE_BACKEND":
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix in the ``cubes`` bucket for one test."""
    return f"t-{uuid.uuid4().hex[:12]}"


def secrets_of(server: SeaweedServer) -> list[str]:
    """Every secret the server's identities hold (for greps)."""
    return [server.admin.secret_key, server.reader.secret_key]


# --- a real cluster and the converter's inputs ------------------------------------------

ROIS = ("ROIs1868_73",)
GRID = (2, 2)
PATCH = 32
VOLATILE_ATTRS = {"created", "updated"}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any AWS setting, plus ``extra``."""
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**base, "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, **extra}


@pytest.fixture(scope="session")
def dask_cluster(seaweed):
    """``dask scheduler`` + 2 ``dask worker`` processes on 127.0.0.1; the workers hold the
    admin credentials in their AWS variables, as a deployment would give them."""
    from servers import DaskProcessCluster

    env = clean_env(**seaweed.env("admin"), OMP_NUM_THREADS="1")
    with DaskProcessCluster(2, env=env) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    """A small synthetic archive on local disk: 1 ROI x 2x2 patches x 30 slots, 32 px."""
    from s2cube_conversion.synth import synthesize_archive

    root = tmp_path_factory.mktemp("s3-archive") / "SEN12MSCRTS"
    synthesize_archive(root, rois=ROIS, grid=GRID, patch_size=PATCH, seed=11)
    return root


@pytest.fixture(scope="session")
def s3_archive(seaweed, archive) -> str:
    """The same archive uploaded to ``s3://cubes/archive``."""
    assert seaweed.upload_folder(archive, BUCKET, "archive") > 100
    return f"s3://{BUCKET}/archive"


@pytest.fixture(scope="session")
def reference_cube(archive, tmp_path_factory, dask_cluster):
    """The undisturbed local conversion every S3 cube must equal (it also warms the workers)."""
    from dask.distributed import Client

    from s2cube_conversion import convert

    cube = tmp_path_factory.mktemp("s3-reference") / "cube.zarr"
    with Client(dask_cluster.address) as client:
        report = convert(archive, cube, client=client)
    assert report.ok, report.problems
    return cube


def assert_same_cube(cube, reference) -> None:
    """Same ROIs, same variables equal value for value, same attrs but the creation time."""
    assert list(cube.roi.values) == list(reference.roi.values)
    assert set(cube.variables) == set(reference.variables)
    for name in reference.variables:
        assert cube[name].equals(reference[name]), f"{name} differs from the reference"
    drop = lambda attrs: {k: v for k, v in attrs.items() if k not in VOLATILE_ATTRS}  # noqa: E731
    assert drop(cube.attrs) == drop(reference.attrs)


@pytest.fixture
def same_cube():
    """:func:`assert_same_cube` for the test modules (conftest is not importable by name)."""
    return assert_same_cube


@pytest.fixture
def env_without_aws():
    """:func:`clean_env` for the test modules."""
    return clean_env
