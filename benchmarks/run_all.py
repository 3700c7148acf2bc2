"""Run every benchmark script in turn and keep what each prints in benchmarks/output/.

    .venv/bin/python benchmarks/run_all.py [name ...]     # e.g. convert clouds

Each script prints its own table and the exact command that reproduces it; BENCHMARKS.md
quotes those tables with the machine they were measured on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    names = sys.argv[1:] or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    out = HERE / "output"
    out.mkdir(exist_ok=True)
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"bench_{name}.py")]
        print(f"$ {' '.join(cmd)}", flush=True)
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        (out / f"{name}.txt").write_text(done.stdout + done.stderr)
        print(done.stdout, flush=True)
        if done.returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
