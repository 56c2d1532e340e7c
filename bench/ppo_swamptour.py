"""Recurrent PPO on the seven swamp-tour tasks, each beside its memoryless baseline.

Trains the `ppo-<task>` preset with an LSTM and with `--core none`, evaluates each agent on the same
1000 seeded episodes (deterministic actions, the exact solver's optimum per layout), and writes a
Markdown table and JSON to OUT (default docs/results/ppo_swamptour.*).

    python bench/ppo_swamptour.py [--tasks Tmaze_both,Tmaze_either] [--episodes 1000] [--out DIR]
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from recurl.algos import build_config
from recurl.algos.ppo import PPOConfig, RecurrentPPO
from recurl.envs import make_vec_env
from recurl.envs.swamptour import TASKS
from recurl.evaluation import evaluate_policy
from recurl.presets import preset


def run(task: str, core: str, episodes: int, seed: int) -> dict:
    cfg = build_config(PPOConfig, preset(f"ppo-{task}")[1])
    cfg = dataclasses.replace(cfg, seed=seed, policy=dataclasses.replace(cfg.policy, core=core))
    t0 = time.perf_counter()
    model = RecurrentPPO(config=cfg).learn(progress_bar=False)
    wall = time.perf_counter() - t0
    env = make_vec_env(cfg.env, 16, {**cfg.env_kwargs, "compute_optimal": True})
    r = evaluate_policy(model, env, n_episodes=episodes, seed=100_000)
    env.close()
    return {"task": task, "core": core, "success_rate": r["success_rate"], "mean_steps": r["mean_length"],
            "mean_optimal_steps": r["mean_optimal_steps"], "steps_over_optimal": r["steps_over_optimal"],
            "mean_return": r["mean_return"], "env_steps": model.num_timesteps, "wall_time_s": round(wall, 1)}


def table(rows: list[dict]) -> str:
    lines = ["| task | core | success | mean steps | optimum | steps over optimal (successes) | env steps | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        over = "-" if r["steps_over_optimal"] is None else f"{r['steps_over_optimal']:.2f}"
        lines.append(f"| {r['task']} | {r['core']} | {r['success_rate']:.1%} | {r['mean_steps']:.2f} "
                     f"| {r['mean_optimal_steps']:.2f} | {over} | {r['env_steps']} | {r['wall_time_s']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--cores", default="lstm,none")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/results")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in a.tasks.split(","):
        for core in a.cores.split(","):
            rows.append(run(task, core, a.episodes, a.seed))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            (out / "ppo_swamptour.json").write_text(json.dumps(rows, indent=2))
            (out / "ppo_swamptour.md").write_text(table(rows) + "\n")
    print(table(rows))
