"""The real pixels ship with the package, exactly: the float32 reflectance is the original file's.

``S2CUBE_ORIGINAL_PIXELS`` may point at the original float32 ``reference_scenes.npy`` (eo-learn's
``REFERENCE_SCENES.npy``) for a direct comparison; without it that test skips, and the checksum
test still proves the same bit-identity against the sha256 recorded in ``data/README.md``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from s2cube_conversion import _realpixels as rp

#: sha256 of the original float32 (5, 101, 100, 13) array's bytes (C order, little-endian)
ORIGINAL_SHA256 = "5fb5de076e3aab95a4314893963f560387c3547a6377f639aa0878d1538132c2"
#: sha256 of the packaged uint16 (5, 13, 101, 100) DN array's bytes
DN_SHA256 = "a88f8094e2343ff6c800aacd510937e13b1edc1a8d224f782105dbfe31994c67"


@pytest.fixture
def packaged(monkeypatch):
    """Reads go to the packaged copy whatever the caller's environment says."""
    monkeypatch.delenv(rp.ENV_VAR, raising=False)


def _original() -> Path:
    path = os.environ.get("S2CUBE_ORIGINAL_PIXELS")
    if not path or not Path(path).is_file():
        pytest.skip("S2CUBE_ORIGINAL_PIXELS does not name the original float32 reference_scenes.npy")
    return Path(path)


def test_the_packaged_copy_is_package_data_and_small(packaged):
    res = rp.packaged_pixels()
    assert res.is_file() and rp.real_pixels_available()
    assert rp.real_pixels_path() == res
    assert len(res.read_bytes()) < 1_000_000


def test_the_packaged_dn_and_reflectance_reproduce_the_original_bit_for_bit(packaged):
    dn = rp.load_dn()
    assert dn.dtype == np.uint16 and dn.shape == rp.DN_SHAPE and dn.flags.c_contiguous
    assert hashlib.sha256(dn.tobytes()).hexdigest() == DN_SHA256
    refl = rp.load_scenes()
    assert refl.dtype == np.float32 and refl.shape == rp.DN_SHAPE and refl.flags.c_contiguous
    original_layout = np.ascontiguousarray(refl.transpose(0, 2, 3, 1)).astype("<f4")
    assert hashlib.sha256(original_layout.tobytes()).hexdigest() == ORIGINAL_SHA256


def test_the_packaged_copy_equals_the_original_file(packaged):
    original = np.load(_original(), allow_pickle=False)
    assert original.dtype == np.float32 and original.shape == rp.SHAPE
    refl = rp.load_scenes()
    assert np.array_equal(refl.transpose(0, 2, 3, 1).view(np.uint32), original.view(np.uint32))
    # the original file as an override gives the same arrays (what load_scenes returned before)
    old = np.ascontiguousarray(original.astype(np.float32).transpose(0, 3, 1, 2))
    assert np.array_equal(rp.load_scenes(path=_original()).view(np.uint32), old.view(np.uint32))
    assert np.array_equal(rp.load_dn(path=_original()), rp.load_dn())


def test_overrides_take_precedence(tmp_path, monkeypatch):
    copy = tmp_path / "copy.npy.xz"
    copy.write_bytes(rp.packaged_pixels().read_bytes())
    monkeypatch.setenv(rp.ENV_VAR, str(tmp_path / "absent.npy"))
    assert rp.real_pixels_path() == tmp_path / "absent.npy" and not rp.real_pixels_available()
    with pytest.raises(FileNotFoundError, match=rp.ENV_VAR):
        rp.load_scenes()
    assert np.array_equal(rp.load_dn(copy), rp.load_dn(rp.packaged_pixels()))  # argument first
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        rp.load_scenes(path=wrong)
