"""The loopback servers of ``tests/servers.py`` for the benchmarks.

They are test tools, not part of the installed package, so the benchmarks import them from
the repository's ``tests/`` folder: ``from _servers import SeaweedServer``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers import DaskProcessCluster, FaultyS3Proxy, SeaweedServer, find_weed

__all__ = ["DaskProcessCluster", "FaultyS3Proxy", "SeaweedServer", "find_weed"]
