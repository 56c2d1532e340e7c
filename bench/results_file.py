"""A benchmark grid's results as one JSON file (``{"runs": {key: result}}``), rewritten atomically after every
run, so that a killed grid never leaves a half-written file and resumes with the cells it has not run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recurl.checkpoint import atomic_write, locked


def load_results(path: Path) -> dict[str, Any]:
    """The results so far (``{"runs": {}}`` before the first run)."""
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}}


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` to ``path`` atomically (written aside, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n"))


def record_result(path: Path, key: str, result: dict[str, Any]) -> dict[str, Any]:
    """Add one run's ``result`` under ``key`` to the file and return the whole of it: read, changed and written
    under an exclusive lock, so grids running side by side (one per core) never drop each other's runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent):  # the file's folder: no lock file to leave behind
        results = load_results(path)
        results["runs"][key] = result
        save_results(path, results)
    return results

