"""The wheel and the sdist hold what a user needs and nothing of the repository's test tooling.

    python check_dist.py DIST_FOLDER
"""

from __future__ import annotations

import fnmatch
import sys
import tarfile
import zipfile
from pathlib import Path

dist = Path(sys.argv[1])
(wheel,) = dist.glob("s2cube-*.whl")
(sdist,) = dist.glob("s2cube-*.tar.gz")
names = zipfile.ZipFile(wheel).namelist()

top = {n.split("/")[0] for n in names}
info = next(t for t in top if t.endswith(".dist-info"))
assert top == {"s2cube", "s2cube_conversion", info}, f"unexpected top-level entries: {sorted(top)}"
required = ["s2cube/py.typed", "s2cube/__init__.py", "s2cube/cli.py", "s2cube/io/backend.py",
            "s2cube/kernels/median.py", "s2cube_conversion/data/README.md",
            "s2cube_conversion/data/*.npy.xz", f"{info}/entry_points.txt"]
for pattern in required:
    assert fnmatch.filter(names, pattern), f"the wheel lacks {pattern}"
forbidden = ["*/testing.py", "*servers*", "tests/*", "benchmarks/*", "notebooks/*", "docs/*",
             "*/__pycache__/*", "*.pyc", "*.so", "*.c"]
for pattern in forbidden:
    hits = fnmatch.filter(names, pattern)
    assert not hits, f"the wheel holds {hits}"
entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
assert "s2cube = s2cube.cli:main" in entry_points, entry_points
assert "s2cube = s2cube.io.backend:S2CubeBackend" in entry_points, entry_points

# the sdist builds that wheel (python -m build makes the wheel from it) and has no local junk
members = tarfile.open(sdist).getnames()
junk = [m for m in members if any(part in {".venv", ".git", "__pycache__", "demo-output", "tests",
                                              "benchmarks", "notebooks", "build"}
                                  for part in Path(m).parts[1:2] + Path(m).parts[2:])]
assert not junk, f"the sdist holds {junk[:5]}"
size = wheel.stat().st_size
print(f"{wheel.name}: {len(names)} files, {size / 1e6:.2f} MB; {sdist.name}: {len(members)} members: ok")
