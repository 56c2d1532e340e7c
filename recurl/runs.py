"""Run directories: train into one, load any algorithm's model back from one.

A run directory holds ``config.json`` (resolved config, spaces, versions), ``model.safetensors``,
``trainer.pt`` (resume state), ``progress.csv``, TensorBoard events under ``tb/``, ``curve.png`` and
``summary.json`` (the final evaluation).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from recurl.algos import Algorithm, algo_classes
from recurl.checkpoint import CONFIG_FILE, read_json, write_json
from recurl.errors import RecurlError


def default_run_dir(env_id: str, algo: str, seed: int) -> Path:
    """``runs/<env>__<algo>__<seed>__<time>`` (the CleanRL / SB3 naming users know)."""
    name = env_id.replace("/", "_").replace(":", "_")  # ``module:EnvId`` makes no colon in a path
    return Path("runs") / f"{name}__{algo}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def load_model(run_dir: str | Path, device: str = "auto") -> Algorithm:
    """Load the model in ``run_dir`` whatever algorithm trained it."""
    meta = read_json(Path(run_dir) / CONFIG_FILE)
    if not isinstance(meta, dict):
        raise RecurlError(f"{Path(run_dir) / CONFIG_FILE} is not a recurl run's config (expected a JSON object)")
    _, algo_cls = algo_classes(str(meta.get("algo", "?")))
    return algo_cls.load(run_dir, device=device)


def finish_run(model: Any, run_dir: str | Path, wall_time: float, episodes: int, seed: int = 10_000) -> dict:
    """Evaluate a trained model deterministically and write ``summary.json``; returns the summary."""
    summary = {
        "env": model.config.env,
        "core": model.config.policy.core,
        "env_steps": model.num_timesteps,
        "wall_time_s": round(wall_time, 2),
        **model.summarize(episodes, seed),
    }
    rec = getattr(model, "eval_record", None)
    if rec and rec["evaluations"]:  # --eval-every: the periodic evaluations, their time kept apart
        summary.update({"evaluations": rec["evaluations"], "best_eval_return": rec["best"], "held": rec["held"],
                        "eval_time_s": round(rec["time_s"], 2)})
    write_json(Path(run_dir) / "summary.json", summary)
    return summary
