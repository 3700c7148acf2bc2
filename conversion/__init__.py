"""The converter: SEN12MS-CR-TS GeoTIFF archive → s2cube Zarr v3 cube.

Installed as ``s2cube_conversion`` (the folder is ``conversion/``): discover → plan →
read → clouds → write → run, plus validate and synth. Depends on ``s2cube``; never the
reverse.
"""

from __future__ import annotations

from s2cube_conversion.run import ConvertReport, Selection, convert

__all__ = ["ConvertReport", "Selection", "convert"]
