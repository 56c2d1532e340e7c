"""``recurl melee eval``: score a run on any prepared dataset against the memoryless model and the baselines.

The run is scored on every perspective of its character in the dataset's games it did not train or
validate on (matched by content hash, :func:`recurl.algos.melee.unseen`); its memoryless sibling
(``RUN/memoryless``, trained by ``recurl melee train`` on the same games) is scored beside it when present.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recurl.algos.melee import MeleeImitation, evaluate
from recurl.errors import RecurlError
from recurl.melee.dataset import GROUPS

MEMORYLESS = "memoryless"


def load_run(run_dir: str | os.PathLike) -> MeleeImitation:
    """A Melee run directory's model (an error naming the problem if it is not one)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RecurlError(f"run directory not found: {path}")
    return MeleeImitation.load(path, device="cpu")


def evaluate_run(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The report of a run on ``data_dir`` (default: the run's own dataset, i.e. its test games).

    Rows: the run's model (``recurrent (<core>)``), its memoryless sibling if trained, ``majority`` and
    ``repeat-previous``; per-game rows give each one's total NLL.
    """
    model = load_run(run_dir)
    split = model.split
    if not split or "baselines" not in split:
        raise RecurlError(f"{run_dir} holds no Melee split (it was not written by a finished `recurl melee train`)")
    models = {f"recurrent ({model.config.policy.core})": model}
    if (Path(run_dir) / MEMORYLESS / "config.json").is_file():
        models["memoryless (none)"] = load_run(Path(run_dir) / MEMORYLESS)
    data = str(data_dir) if data_dir is not None else model.config.dataset
    report = evaluate(models, split, data)
    return {"character": split["character"], "character_note": split["character_note"],
            "delay": model.config.action_delay, "dataset": data, "train_frames": split["frames"]["train"],
            **report}


def format_report(report: dict[str, Any], per_game: bool = True) -> str:
    """Markdown tables of an :func:`evaluate_run` report: totals per model, then total NLL per game."""
    cols = [f"nll/{g}" for g in GROUPS] + ["nll/total"] + [f"acc/{g}" for g in GROUPS]
    lines = [f"character {report['character']} ({report['character_note']}), delay {report['delay']}: "
             f"{report['frames']} unseen frames of {len(report['games'])} perspectives in {report['dataset']}; "
             f"trained on {report['train_frames']} frames",
             "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    if per_game:
        names = list(report["rows"])
        lines += ["", "| game | player | frames | " + " | ".join(names) + " |", "|---" * (len(names) + 3) + "|"]
        for g in report["games"]:
            lines.append(f"| {g['game']} | {g['player']} ({g['character']}) | {g['frames']} | "
                         + " | ".join(f"{g[n]:.3f}" for n in names) + " |")
    return "\n".join(lines)
