"""R2D2 on the seven swamp-tour tasks: the article's DRQN agents against recurl's presets, one table.

Each (task, agent) pair is trained from its preset (``article-lstm`` / ``article-gru`` retargeted to the
task, or the task's own r2d2 preset), then evaluated greedily on ``--episodes`` seeded episodes.
"Over optimal" is mean steps minus the mean of the exact solver's optimum (capped at the time limit)
on the very same layouts: sub-env ``i`` of the evaluation vector env draws its layouts from its own
generator seeded ``seed + i``, whatever the agent does, so the solver replays those draws.

usage: python bench/r2d2_swamptour.py [--tasks ruin_2swamp ...] [--agents article-lstm article-gru r2d2]
       [--episodes 1000] [--steps-scale 1.0] [--out runs/bench_r2d2] [--table docs/r2d2_results.md]

Rows are appended to ``OUT/results.jsonl`` as they finish, so a long run can be split over calls;
the table is rebuilt from all rows there. Recurrent PPO columns are left for its own benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.utils import seeding

from recurl.algos import build_config
from recurl.algos.r2d2 import R2D2, R2D2Config
from recurl.envs import make_vec_env
from recurl.envs.swamptour import TASKS, generate_layout, make_config
from recurl.envs.swamptour_solver import optimal_steps_for_layout
from recurl.evaluation import run_episodes
from recurl.presets import preset

AGENTS = ("article-lstm", "article-gru", "r2d2")
EVAL_SEED, EVAL_ENVS = 10_000, 50


def agent_config(agent: str, task: str, steps_scale: float) -> R2D2Config:
    """The preset of ``agent`` on ``task``: the article agents keep their settings on every task (whole
    episodes: ``seq_len`` = the task's time limit; epsilon 0.2 on open_field, as in the article)."""
    if agent == "r2d2":
        _, overrides = preset(f"r2d2-{task}")
    else:
        _, overrides = preset(agent)
        overrides.update(env=f"recurl/SwampTour-{task}-v0", seq_len=make_config(task).max_time)
        if task == "open_field":
            overrides["epsilon"] = 0.2
    cfg = build_config(R2D2Config, overrides)
    return dataclasses.replace(cfg, total_steps=max(1, int(cfg.total_steps * steps_scale)), device="cpu")


def optimal_mean(task: str, n_episodes: int) -> float:
    """Mean solver optimum over the layouts that :func:`run_episodes` counts (each sub-env's first quota)."""
    config = make_config(task)
    quota = np.full(EVAL_ENVS, n_episodes // EVAL_ENVS) + (np.arange(EVAL_ENVS) < n_episodes % EVAL_ENVS)
    steps = []
    for i, q in enumerate(quota):
        rng, _ = seeding.np_random(EVAL_SEED + i)
        steps += [optimal_steps_for_layout(generate_layout(rng, config), config) for _ in range(q)]
    return float(np.mean(steps))


def run(agent: str, task: str, episodes: int, steps_scale: float, out: Path) -> dict[str, Any]:
    cfg = agent_config(agent, task, steps_scale)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = R2D2(config=cfg)
    model.learn(run_dir=out / f"{task}__{agent}", progress_bar=False)
    wall = time.perf_counter() - t0
    env = make_vec_env(cfg.env, EVAL_ENVS, {**cfg.env_kwargs, "compute_optimal": False}, cfg.prev_action_reward)
    model.policy.eval()
    r = run_episodes(model.policy, env, episodes, seed=EVAL_SEED, deterministic=True, device="cpu")
    env.close()
    return {"task": task, "agent": agent, "success": r["success_rate"], "mean_steps": r["mean_length"],
            "mean_return": r["mean_return"], "optimal_steps": optimal_mean(task, episodes),
            "env_steps": model.num_timesteps, "updates": model.n_updates, "wall_s": round(wall, 1),
            "episodes": r["episodes"]}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per task, success / mean steps (+ over optimal) / env steps / wall per agent."""
    by = {(r["task"], r["agent"]): r for r in rows}
    head = "| task | optimum | " + " | ".join(AGENTS) + " | recurrent PPO |"
    lines = [head, "|" + "---|" * (len(AGENTS) + 3)]
    for task in TASKS:
        cells = []
        opt = None
        for agent in AGENTS:
            r = by.get((task, agent))
            if r is None:
                cells.append("–")
                continue
            opt = r["optimal_steps"]
            cells.append(f"{100 * r['success']:.1f}% / {r['mean_steps']:.2f} (+{r['mean_steps'] - opt:.2f}) / "
                         f"{r['env_steps'] // 1000}k / {r['wall_s'] / 60:.1f} min")
        if opt is not None:
            lines.append(f"| {task} | {opt:.2f} | " + " | ".join(cells) + " | (see PPO bench) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every preset's total_steps")
    p.add_argument("--out", default="runs/bench_r2d2")
    p.add_argument("--table", default=None, help="also write the markdown table to this file")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in a.tasks:
        for agent in a.agents:
            row = run(agent, task, a.episodes, a.steps_scale, out)
            print(json.dumps(row), flush=True)
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    md = table(rows)
    print(md)
    if a.table:
        Path(a.table).write_text(md + "\n")


if __name__ == "__main__":
    main()
