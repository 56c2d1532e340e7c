"""Behaviour cloning on swamp tour from an exact-planner expert, with and without memory; then BC -> PPO.

Reproduce (CPU, a few minutes per task)::

    python bench/bc_swamptour.py --out runs/bc_bench

For each task (Tmaze_both, ruin_2swamp) it records ``--episodes`` expert episodes as a Minari dataset,
trains ``recurl train --algo bc`` with an LSTM core and with ``--core none``, and compares their
deterministic success rate over ``--eval-episodes`` fresh layouts with the expert's. Then it clones a
weak policy from ``--few`` episodes and fine-tunes it with ``recurl train --algo ppo --init-from``.
Results go to ``OUT/results.json``.

The expert plans with full map knowledge (breadth-first search over cell, heading and collected goals,
with the env's own rules) and replays the shortest plan. Its behaviour is a function of what the agent
has seen: at the start pose the window covers the whole field, and after the teleport that follows the
first goal the view is the same as at the start, so only memory tells which goal is left.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import recurl  # noqa: F401  (registers the env ids)
from recurl.cli import main as recurl_main
from recurl.data.trajectories import write_dataset
from recurl.envs.swamptour import Layout, SwampTourConfig
from recurl.envs.swamptour_solver import _Board
from recurl.record import PolicyAgent, collect_episodes
from recurl.runs import load_model

POLICY_FLAGS = ["--hidden-size", "64", "--encoder-hidden", "64"]


def plan(layout: Layout, config: SwampTourConfig) -> list[int]:
    """Shortest action sequence collecting every goal (empty when none exists).

    The same search as :func:`recurl.envs.swamptour_solver.solve`, with parent links to read the plan.
    """
    board = _Board(layout)
    cells, moves, goal_id, full = board.cells, board.moves, board.goal_id, board.full_mask
    passable = config.erase_visited_goal or not config.second_visit_penalty
    start = (board.initial_mask, board.start_dir, board.start)
    parent: dict[tuple[int, int, int], tuple[tuple[int, int, int], int] | None] = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for s in frontier:
            mask, h, c = s
            succ = [((mask, (h + 1) % 4, c), 1), ((mask, (h - 1) % 4, c), 2)]
            p = c + moves[h]
            if cells[p] == 2:  # wall: a bump changes nothing
                pass
            elif p in goal_id and not mask & (1 << goal_id[p]):
                m2 = mask | (1 << goal_id[p])
                if m2 == full:
                    actions = [0]
                    while parent[s] is not None:
                        s, a = parent[s]  # type: ignore[misc]
                        actions.append(a)
                    return actions[::-1]
                succ.append(((m2, board.start_dir, board.start) if config.reset_after_subgoal else (m2, h, p), 0))
            elif p not in goal_id or passable:
                succ.append(((mask, h, p), 0))
            for s2, a in succ:
                if s2 not in parent:
                    parent[s2] = (s, a)
                    nxt.append(s2)
        frontier = nxt
    return []


class PlannerExpert:
    """Replays :func:`plan` for the layout drawn at reset (then walks forward if the plan is exhausted)."""

    def reset(self, env: gym.Env) -> None:
        self.actions = plan(env.unwrapped.layout, env.unwrapped.config)[::-1]

    def act(self, obs: Any) -> int:
        return self.actions.pop() if self.actions else 0


def make_expert(kind: str, task: str, out: Path, seed: int, eval_episodes: int) -> tuple[Any, float]:
    """``(expert, its deterministic success rate)``: the planner, or a recurrent PPO agent trained here
    with the task's preset (it sees only what the agent sees, so its behaviour is clonable)."""
    env_id = f"recurl/SwampTour-{task}-v0"
    if kind == "planner":
        return PlannerExpert(), expert_success(env_id, eval_episodes, seed=10_000)
    run = out / f"{task}-expert-ppo"
    s = train(["--preset", f"ppo-{task}", "--seed", str(seed), "--eval-episodes", str(eval_episodes),
               "--run-dir", str(run)])
    return PolicyAgent(load_model(run)), s["success_rate"]


def expert_success(env_id: str, episodes: int, seed: int) -> float:
    env = gym.make(env_id)
    eps = collect_episodes(env, PlannerExpert(), episodes, seed)
    env.close()
    # success = every goal collected = the episode terminated (time-outs truncate)
    return float(np.mean([bool(ep.terminations[-1]) for ep in eps]))


def train(args: list[str]) -> dict[str, Any]:
    run_dir = args[args.index("--run-dir") + 1]
    t0 = time.perf_counter()
    rc = recurl_main(["train", *args, "--quiet"])
    if rc != 0:
        raise SystemExit(f"recurl train {' '.join(args)} failed with status {rc}")
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bc_bench")
    p.add_argument("--tasks", nargs="+", default=["Tmaze_both", "ruin_2swamp"])
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--eval-episodes", type=int, default=500)
    p.add_argument("--few", type=int, default=0, help="episodes for the BC -> PPO part (0: skip it)")
    p.add_argument("--ppo-task", default="ruin_2swamp")
    p.add_argument("--ppo-steps", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bc-seeds", type=int, default=1, help="BC seeds per core (the expert and data stay fixed)")
    p.add_argument("--bc-preset", default="bc-small", help="recurl preset for the BC runs ('' for the defaults)")
    p.add_argument("--expert", choices=["planner", "ppo"], default="planner",
                   help="planner: full-map BFS; ppo: a recurrent PPO agent trained with the task's preset")
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    results: dict[str, Any] = {}
    common = ["--eval-episodes", str(a.eval_episodes), *POLICY_FLAGS]
    for task in a.tasks:
        env_id = f"recurl/SwampTour-{task}-v0"
        expert, success = make_expert(a.expert, task, out, a.seed, a.eval_episodes)
        env = gym.make(env_id)
        t0 = time.perf_counter()
        episodes = collect_episodes(env, expert, a.episodes, seed=a.seed)
        env.close()
        data = write_dataset(out / f"{task}-expert-v0", episodes, env_id, algorithm_name=f"{a.expert} expert")
        r: dict[str, Any] = {
            "expert": a.expert,
            "record_s": round(time.perf_counter() - t0, 1),
            "dataset_steps": int(sum(len(ep) for ep in episodes)),
            "expert_success": success,
        }
        preset = ["--preset", a.bc_preset] if a.bc_preset else []
        for core in ("lstm", "none"):
            runs = [train(["--algo", "bc", *preset, "--dataset", str(data), "--core", core,
                           "--run-dir", str(out / f"{task}-bc-{core}-s{seed}"), *common, "--seed", str(seed)])
                    for seed in range(a.seed, a.seed + a.bc_seeds)]
            rates = [s["success_rate"] for s in runs]
            r[f"bc_{core}"] = {"success_rate": float(np.median(rates)), "per_seed": rates,
                               "mean_return": float(np.median([s["mean_return"] for s in runs])),
                               "wall_s": float(np.median([s["wall_s"] for s in runs]))}
            r[f"ratio_{core}"] = [x / r["expert_success"] for x in rates]
        results[task] = r
        print(task, json.dumps(r), flush=True)
    if a.few:
        task = a.ppo_task
        env_id = f"recurl/SwampTour-{task}-v0"
        env = gym.make(env_id)
        few = collect_episodes(env, PlannerExpert(), a.few, seed=a.seed + 1)
        env.close()
        data = write_dataset(out / f"{task}-few-v0", few, env_id, algorithm_name="BFS planner")
        bc_dir = out / f"{task}-bc-few"
        seed = ["--seed", str(a.seed)]
        r = {"bc": train(["--algo", "bc", "--dataset", str(data), "--run-dir", str(bc_dir), *common, *seed])}
        ppo = ["--algo", "ppo", "--env", env_id, "--total-steps", str(a.ppo_steps), "--num-envs", "16",
               "--n-steps", "64", "--batch-size", "512", "--n-epochs", "4", "--ent-coef", "0.01",
               *common, *seed]
        r["bc_ppo"] = train([*ppo, "--init-from", str(bc_dir), "--kl-teacher", "0.05",
                             "--run-dir", str(out / f"{task}-bc-ppo")])
        r["ppo_scratch"] = train([*ppo, "--run-dir", str(out / f"{task}-ppo-scratch")])
        results[f"{task}_finetune"] = {k: {m: v[m] for m in ("success_rate", "mean_return", "wall_s")}
                                       for k, v in r.items()}
        print("finetune", json.dumps(results[f"{task}_finetune"]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
