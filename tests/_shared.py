"""Where the team's shared test data lives: ``../shared/data`` beside this checkout, or ``/work/shared/data``
for a clone elsewhere (CI clones into a temporary directory). The first when neither exists: tests that
need it skip on ``is_dir()``."""

from __future__ import annotations

from pathlib import Path

_CANDIDATES = (Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data"))
SHARED_DATA: Path = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0])
