"""POPGym Easy tasks with recurrent PPO: gru, lstm and the memoryless baseline (docs/popgym.md).

Usage: python bench/popgym_suite.py [--seeds 0] [--envs RepeatPrevious ...] [--cores gru none lstm]
                                    [--steps 500000] [--report-only]

Needs popgym (``pip install 'recurl[popgym]'``); each task is its Gymnasium id
``popgym-<Name>Easy-v0`` passed as ``env=``. Every run is recurrent PPO with one recipe, :data:`SETTINGS`,
the same for every task and core; only the env, the core and the seed change (and the budget, ``--steps``,
the same for the whole grid):

- ``prev_action_reward``: the core sees the previous action and reward, as POPGym's memory models do;
- 16 envs x ``n_steps`` 128, one BPTT window per env per rollout (``seq_len`` 0 = ``n_steps``): longer than
  a whole Easy episode of the card tasks (51 steps for RepeatPrevious, RepeatFirst, CountRecall,
  HigherLower; 103 for Autoencode; CartPole up to 200, MineSweeper a few), so most episodes lie whole in
  one window (windows are not aligned to episodes; a window starts from the state stored while acting);
- GRU / LSTM / memoryless core of 128 units after a 64-unit encoder, a separate critic core;
- lr 1e-3 annealed, 4 epochs of 1024-sample minibatches (8 sequences), gamma 0.99, GAE 0.95, clip 0.2,
  entropy 0.01, rewards normalised, the gradient's global norm clipped at 0.5 (POPGym's rewards are
  dense: every step of the card tasks is scored, so the T-maze's starved actor does not apply).

The score of a run is the mean return over ``FINAL_EPISODES`` deterministic episodes from seed ``FINAL_SEED``
(POPGym normalises every task's return to [-1, 1]), with the env steps, the training wall time and the
machine. Each run also records the best training mean return (the highest ``rollout/ep_rew_mean``, a mean over
the last 100 training episodes, seen at any update): the paper's MMER measure, optimistic by construction, so
that the comparison with the paper is like for like. Results go to docs/results/popgym.json after every run
(atomically), keyed by env, core, seed and budget, so a killed grid resumes with its missing cells;
``--report-only`` rewrites docs/results/popgym.md and docs/popgym.png from that JSON. The grid runs all tasks
with gru and none first, then lstm (then lru), one torch thread; CUDA when present (``device="auto"``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from results_file import load_results, record_result
from tqdm import tqdm

from recurl import RecurrentPPO, evaluate_policy
from recurl.checkpoint import atomic_write
from recurl.presets import POPGYM_TASKS, popgym_env_id, popgym_ppo

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "popgym.json"
REPORT = ROOT / "docs" / "results" / "popgym.md"
PLOT = ROOT / "docs" / "popgym.png"
ENVS = POPGYM_TASKS
CORES = ("gru", "none", "lstm", "lru")  # the order the grid runs them in: memory and its baseline first
DIFFICULTY = "Easy"
STEPS = 500_000
FINAL_EPISODES, FINAL_SEED = 100, 10_000

#: how every run of the grid is made beyond its preset: one torch thread, CUDA when present
RUN = {"threads": 1, "device": "auto"}


def env_id(name: str) -> str:
    return popgym_env_id(name, DIFFICULTY)


def config(name: str, core: str, seed: int, steps: int) -> dict[str, Any]:
    """The grid's run: the ``popgym-<Name>`` preset's recipe with this core, seed and budget."""
    return {**popgym_ppo(name, core, DIFFICULTY, seed, steps)[1], **RUN}


def recipe_id() -> str:
    """A short hash of the recipe (the settings every run shares), part of each result's key, so results
    of an earlier recipe are never mixed into a table of this one."""
    shared = {k: v for k, v in config(ENVS[0], "gru", 0, STEPS).items() if k not in ("env", "seed", "total_steps")}
    shared["policy"] = {k: v for k, v in shared["policy"].items() if k != "core"}
    return hashlib.sha1(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:8]


def key(name: str, core: str, seed: int, steps: int) -> str:
    return f"{env_id(name)}|{core}|{seed}|{steps}|{recipe_id()}"


def best_training_mean(run_dir: Path) -> float | None:
    """The highest ``rollout/ep_rew_mean`` (mean return of the last 100 training episodes) in a run's
    ``progress.csv``: POPGym's MMER, the maximum over training of the mean episodic reward."""
    with open(run_dir / "progress.csv", newline="") as f:
        means = [float(row["rollout/ep_rew_mean"]) for row in csv.DictReader(f) if row.get("rollout/ep_rew_mean")]
    return max(means) if means else None


def run_one(name: str, core: str, seed: int, steps: int, run_dir: Path) -> dict[str, Any]:
    """Train one (env, core, seed) cell into ``run_dir`` (replaced) and score it on the final episodes."""
    shutil.rmtree(run_dir, ignore_errors=True)
    model = RecurrentPPO(**config(name, core, seed, steps))
    start = time.perf_counter()
    model.learn(run_dir=run_dir, progress_bar=False)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    result = evaluate_policy(model, n_episodes=FINAL_EPISODES, seed=FINAL_SEED)
    eval_s = time.perf_counter() - start
    device = str(getattr(model, "device", "cpu"))
    return {"env": env_id(name), "task": name, "core": core, "seed": seed, "budget": steps, "recipe": recipe_id(),
            "env_steps": model.num_timesteps, "mean_return": result["mean_return"],
            "std_return": result["std_return"], "episodes": FINAL_EPISODES,
            "best_train_mean": best_training_mean(run_dir),
            "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
            "steps_per_s": round(model.num_timesteps / train_s),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread, "
                       f"{device}"}


def grid(envs: list[str], cores: list[str], seeds: list[int], steps: int, run_root: Path) -> None:
    """Run every missing cell: seed by seed, cores in :data:`CORES` order, every task per core."""
    results = load_results(RESULTS)
    cells = [(n, c, s) for s in seeds for c in CORES if c in cores for n in ENVS if n in envs]
    todo = [cell for cell in cells if key(*cell, steps) not in results["runs"]]
    print(f"{len(todo)} runs to do, {len(cells) - len(todo)} kept", flush=True)
    with tqdm(todo, desc="popgym grid", unit="run") as bar:
        for name, core, seed in bar:
            bar.set_postfix_str(f"{name} {core} s{seed}")
            r = run_one(name, core, seed, steps, run_root / f"{name}-{core}-s{seed}")
            record_result(RESULTS, key(name, core, seed, steps), r)
            bar.write(f"{name} {core} seed {seed}: {r['mean_return']:+.3f} ({r['env_steps']:,} steps, "
                      f"{r['train_s']:.0f} s, {r['steps_per_s']:,} steps/s)")


def current_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of this recipe (:func:`recipe_id`): the table and plot show nothing else."""
    return [r for r in results["runs"].values() if r.get("recipe") == recipe_id()]


def cells_of(results: dict[str, Any], budget: int | None = None) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(task, core) -> its runs (by seed) at ``budget`` env steps (``None``: every budget), tasks and cores in
    grid order."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    runs = sorted(current_runs(results), key=lambda r: (ENVS.index(r["task"]), CORES.index(r["core"]),
                                                          r["seed"], r["budget"]))
    for r in runs:
        if budget is None or r["budget"] == budget:
            out.setdefault((r["task"], r["core"]), []).append(r)
    return out


def rows_of(results: dict[str, Any]) -> list[tuple[str, int]]:
    """The table's rows: (task, budget) in grid order, the grid's budget first; runs of another budget (a
    task trained longer) get rows of their own, never averaged with the grid's."""
    budgets = {(r["task"], r["budget"]) for r in current_runs(results)}
    return sorted(budgets, key=lambda tb: (ENVS.index(tb[0]), tb[1] != STEPS, tb[1]))


def report(results: dict[str, Any]) -> str:
    """The Markdown table: one row per task and budget, one column per core (mean return over seeds, per
    seed)."""
    cells = cells_of(results)
    cores = [c for c in CORES if any(k[1] == c for k in cells)]
    lines = ["| task (Easy) | " + " | ".join(cores) + " | best memory core - none |",
             "|---|" + "---:|" * len(cores) + "---:|"]
    for task, budget in rows_of(results):
        row, means = [], {}
        at_budget = cells_of(results, budget)
        for core in cores:
            rs = at_budget.get((task, core), [])
            if rs:
                scores = [r["mean_return"] for r in rs]
                means[core] = sum(scores) / len(scores)
                spread = f"{min(scores):+.2f} to {max(scores):+.2f}, " if len(scores) > 1 else ""
                best = [r["best_train_mean"] for r in rs if r.get("best_train_mean") is not None]
                mmer = f"; MMER {sum(best) / len(best):+.2f}" if len(best) == len(rs) else ""
                row.append(f"**{means[core]:+.2f}** ({spread}{len(rs)} seed{'s' * (len(rs) > 1)}; "
                           f"{sum(r['train_s'] for r in rs) / len(rs) / 60:.1f} min{mmer})")
            else:
                row.append("not run")
        mem = [m for c, m in means.items() if c != "none"]
        gap = f"{max(mem) - means['none']:+.2f}" if mem and "none" in means else "-"
        label = task if budget == STEPS else f"{task}, {budget / 1e6:g}M steps"
        lines.append(f"| {label} | " + " | ".join(row) + f" | {gap} |")
    runs = current_runs(results)
    machines = "; ".join(sorted({r["machine"] for r in runs}))
    seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in runs}))
    budgets = ", ".join(f"{b:,}" for b in sorted({r["budget"] for r in runs}))
    total_h = sum(r["train_s"] + r["eval_s"] for r in runs) / 3600
    lines += ["", f"Each cell: the mean over seeds of each run's return over {FINAL_EPISODES} deterministic episodes "
                  f"from seed {FINAL_SEED} (returns in [-1, 1]), the lowest and highest run, the number of seeds, "
                  f"and the training wall time per run; MMER, where recorded, is the mean over seeds of each run's "
                  f"best training mean return (the paper's measure: the highest mean over the last 100 training "
                  f"episodes at any update). Recipe {recipe_id()} (the `popgym-<Name>` presets). "
                  f"Seeds: {seeds}. Budget: {budgets} env steps per run. {len(runs)} runs, "
                  f"{total_h:.2f} h in all. Machine: {machines}."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any]) -> None:
    """Grouped bars: final return per task, one bar per core."""
    import matplotlib  # plotting is optional for the grid itself

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = cells_of(results, STEPS)  # the grid's budget: longer runs are in the table
    cores = [c for c in CORES if any(k[1] == c for k in cells)]
    tasks = [n for n in ENVS if any(k[0] == n for k in cells)]
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / max(len(cores), 1)
    for i, core in enumerate(cores):
        xs, ys, dots = [], [], []
        for j, task in enumerate(tasks):
            rs = cells.get((task, core), [])
            if rs:
                xs.append(j + (i - (len(cores) - 1) / 2) * width)
                ys.append(sum(r["mean_return"] for r in rs) / len(rs))
                dots += [(xs[-1], r["mean_return"]) for r in rs]
        ax.bar(xs, ys, width, label=core)
        ax.plot(*zip(*dots), ls="", marker=".", color="black", ms=4)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=20, fontsize=8)
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel(f"mean return ({FINAL_EPISODES} det. episodes)")
    seeds = sorted({r["seed"] for r in current_runs(results)})
    ax.set_title(f"POPGym {DIFFICULTY} tasks, recurrent PPO, {STEPS:,} steps: bars the mean over seeds, dots each seed "
                 f"(seeds run: {seeds}, not every cell has all)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    p.add_argument("--cores", nargs="+", default=["gru", "none", "lstm"], choices=CORES)
    p.add_argument("--steps", type=int, default=STEPS, help="env steps per run")
    p.add_argument("--run-root", type=Path, default=Path("runs/popgym"))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    if not args.report_only:
        grid(args.envs, args.cores, args.seeds, args.steps, args.run_root)
    results = load_results(RESULTS)
    atomic_write(REPORT, lambda tmp: Path(tmp).write_text(report(results)))
    if current_runs(results):
        plot(results)
    print(report(results))


if __name__ == "__main__":
    main()
