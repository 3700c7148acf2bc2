"""The rough edges of S3 a new user hit (issue 11, item 6): a wrong secret or a missing
bucket is one clear line from every command and a ``StorageError`` from every function, with
no secret; a loader with workers made outside ``if __name__ == "__main__":`` says so."""

from __future__ import annotations

import subprocess
import sys

import pytest

from s2cube.errors import StorageError

pytestmark = [pytest.mark.s3]

WRONG = "wrong-secret-value"
NO_BUCKET = "s3://no-such-bucket/cube.zarr"


@pytest.fixture(scope="module")
def s3_cube(seaweed, reference_cube) -> str:
    """The reference conversion uploaded to ``s3://cubes/rough/cube.zarr``."""
    assert seaweed.upload_folder(reference_cube, "cubes", "rough/cube.zarr") > 10
    return "s3://cubes/rough/cube.zarr"


@pytest.fixture
def run(env_without_aws):
    def run(args: list[str], env: dict[str, str], timeout: float = 120):
        return subprocess.run([sys.executable, *args], env=env_without_aws(**env),
                              capture_output=True, text=True, timeout=timeout)

    return run


def _one_line(seaweed, proc, says: str) -> None:
    err = proc.stderr
    assert proc.returncode == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert says in err and "Traceback" not in err
    for secret in (seaweed.admin.secret_key, seaweed.reader.secret_key, WRONG):
        assert secret not in err + proc.stdout


SECRET_SAYS = "secret key of the credentials from environment"
BUCKET_SAYS = "bucket 'no-such-bucket' does not exist"


def test_commands_with_a_wrong_secret_print_one_line(seaweed, s3_cube, s3_archive, run):
    bad = {**seaweed.env("admin"), "AWS_SECRET_ACCESS_KEY": WRONG}
    for args in (["info", s3_cube], ["verify", s3_cube, "--no-progress"],
                 ["validate", s3_archive, s3_cube]):
        _one_line(seaweed, run(["-m", "s2cube.cli", *args], bad), SECRET_SAYS)


def test_commands_on_a_missing_bucket_say_so(seaweed, s3_archive, run):
    for args in (["info", NO_BUCKET], ["validate", s3_archive, NO_BUCKET]):
        _one_line(seaweed, run(["-m", "s2cube.cli", *args], seaweed.env("admin")), BUCKET_SAYS)


def test_functions_raise_one_clear_storage_error(seaweed, s3_cube):
    import s2cube
    from s2cube.torch import SEN12MSCRTS, make_loader

    good = seaweed.storage_options()
    bad = {**good, "secret": WRONG}
    calls = {
        "open_cube, missing bucket": (lambda: s2cube.open_cube(NO_BUCKET, storage_options=good),
                                      BUCKET_SAYS),
        "SEN12MSCRTS, missing bucket": (lambda: SEN12MSCRTS(NO_BUCKET, storage_options=good),
                                        BUCKET_SAYS),
        "make_loader, missing bucket": (lambda: make_loader(NO_BUCKET, storage_options=good),
                                        BUCKET_SAYS),
        "open_cube, wrong secret": (lambda: s2cube.open_cube(s3_cube, storage_options=bad),
                                    "does not match its access key"),
        "make_loader, wrong secret": (lambda: make_loader(s3_cube, split="all",
                                                          storage_options=bad),
                                      "does not match its access key"),
    }
    for name, (call, says) in calls.items():
        with pytest.raises(StorageError) as err:
            call()
        msg = str(err.value)
        assert says in msg and "\n" not in msg, (name, msg)
        assert WRONG not in msg and good["secret"] not in msg, name
    # and a missing cube in a bucket that exists is still "not a cube"
    with pytest.raises(s2cube.errors.NotACubeError):
        s2cube.open_cube("s3://cubes/rough/none.zarr", storage_options=good)


UNGUARDED = """
from s2cube.torch import make_loader
loader = make_loader({cube!r}, split="all", sampler="fixed", num_workers=2, batch_size=2)
for batch in loader:
    pass
"""


GUARDED = """
from s2cube.torch import make_loader

if __name__ == "__main__":
    loader = make_loader({cube!r}, split="all", sampler="fixed", num_workers=2, batch_size=2)
    for batch in loader:
        pass
"""


def test_a_loader_with_workers_outside_the_main_guard_says_so(seaweed, s3_cube, run, tmp_path):
    """An S3 cube's workers start with forkserver, which imports the script in each."""
    script = tmp_path / "train.py"
    script.write_text(UNGUARDED.format(cube=s3_cube))
    proc = run([str(script)], seaweed.env("admin"), timeout=300)
    assert proc.returncode != 0
    assert "make_loader was called while a new worker process imported" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "exited unexpectedly" in last and 'if __name__ == "__main__":' in last
    guarded = tmp_path / "guarded.py"
    guarded.write_text(GUARDED.format(cube=s3_cube))
    ok = run([str(guarded)], seaweed.env("admin"), timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
