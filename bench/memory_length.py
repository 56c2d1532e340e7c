"""Memory length on the passive T-maze: success per core and corridor length L (docs/cores.md).

Usage: python bench/memory_length.py [--lengths 50 100 250 500 1000 1500] [--cores lstm gru mingru lru none]
                                     [--seed 0] [--report-only]

Every run is recurrent PPO with one recipe (:func:`recurl.presets.tmaze_memory`; the presets ``tmaze-250`` ...
``tmaze-1500`` are it with the LRU), the same for every core except its kind:

- the task is ``recurl/TMaze-v0`` with ``mask_actions`` (forward is the only valid action in the corridor,
  the two turns the only ones at the junction) and its fixed horizon ``max_steps = L + 1``: the one
  decision is the turn, so success measures the memory, not the exploration of a long corridor;
- each rollout is exactly one whole episode per env: ``n_steps = L + 2``, the episode's ``L + 1`` steps and
  the autoreset step after it (Gymnasium's NEXT_STEP autoreset: the step whose action the env ignores), so
  episodes stay aligned with the rollouts and backpropagation runs from the turn back to the cue. With
  ``n_steps = L + 1`` the episodes drift one step per rollout and the cue and the turn almost never share a
  window: nothing is learned (the first version of this sweep);
- no gradient clipping (``max_grad_norm 0``): one decision in ``L + 1`` steps gives the actor a small
  gradient, and clipping the global norm (the critic's gradient sets it) cut it to nothing at ``L >= 250``;
- initialisations for long delays: chrono gates over ``L + 1`` steps for lstm, gru and mingru, the LRU's
  eigenvalue moduli on the ring ``[0.99, 0.9999]``;
- the budget is :func:`budget` env steps; training stops early once two evaluations in a row (50
  deterministic episodes each) score a mean return >= 0.95 (at most two wrong turns).

The result of each run is 200 deterministic episodes (seed 10000): the success rate, with the env steps and
the wall time it took. A core that scores below 99% at some L is not run at longer ones (it has stopped
there). Results go to docs/results/memory_length.json after every run (atomically), so a killed sweep
resumes where it stopped; ``--report-only`` rewrites docs/results/memory_length.md and
docs/memory_length.png from that JSON. One torch thread, CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from results_file import load_results, record_result

from recurl import RecurrentPPO, evaluate_policy
from recurl.checkpoint import atomic_write
from recurl.presets import tmaze_memory

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "memory_length.json"
REPORT = ROOT / "docs" / "results" / "memory_length.md"
PLOT = ROOT / "docs" / "memory_length.png"
CORES = ("lstm", "gru", "mingru", "lru", "none")
LENGTHS = (50, 100, 250, 500, 1000, 1500)
SOLVED = 0.99  # success over the final 200 episodes for a core to go on to the next length


def budget(length: int) -> int:
    """Env steps per run: 4000 episodes (each ``L + 2`` collector steps: ``L + 1`` plus the autoreset step)."""
    return tmaze_memory(length)[1]["total_steps"]


def config(length: int, core: str, seed: int) -> dict[str, Any]:
    """The one PPO recipe of the sweep (:func:`recurl.presets.tmaze_memory`), with one torch thread."""
    return {**tmaze_memory(length, core, seed)[1], "threads": 1}


def key(length: int, core: str, seed: int) -> str:
    return f"{length}|{core}|{seed}"




def run_one(length: int, core: str, seed: int, run_dir: Path) -> dict[str, Any]:
    """Train one (L, core, seed) cell into ``run_dir`` (replaced) and score it on 200 episodes."""
    shutil.rmtree(run_dir, ignore_errors=True)
    model = RecurrentPPO(**config(length, core, seed))
    start = time.perf_counter()
    model.learn(run_dir=run_dir, progress_bar=False)
    wall = time.perf_counter() - start
    result = evaluate_policy(model, n_episodes=200, seed=10_000)
    eval_s = model.eval_record["time_s"]
    return {"length": length, "core": core, "seed": seed, "env_steps": model.num_timesteps,
            "budget": budget(length), "held": bool(model.eval_record["held"]),
            "success_rate": result["success_rate"], "mean_return": result["mean_return"],
            "train_s": round(wall - eval_s, 1), "eval_s": round(eval_s, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread"}


def sweep(lengths: list[int], cores: list[str], seed: int, run_root: Path) -> None:
    """Run every missing cell, lengths in increasing order, each core until it fails one."""
    results = load_results(RESULTS)
    for core in cores:
        for length in sorted(lengths):
            done = results["runs"].get(key(length, core, seed))
            if done is None:
                print(f"L={length} core={core} seed={seed} ...", flush=True)
                done = run_one(length, core, seed, run_root / f"L{length}-{core}-{seed}")
                results = record_result(RESULTS, key(length, core, seed), done)
                print(f"  success {done['success_rate']:.1%} in {done['env_steps']:,} steps, "
                      f"{done['train_s']:.0f} s", flush=True)
            if done["success_rate"] < SOLVED:
                break  # this core stops here: longer corridors are not run


def report(results: dict[str, Any]) -> str:
    """The Markdown table: one row per length, one column per core (success, steps, training time)."""
    runs = list(results["runs"].values())
    cores = [c for c in CORES if any(r["core"] == c for r in runs)]
    lengths = sorted({r["length"] for r in runs})
    lines = ["| L | budget (env steps) | " + " | ".join(cores) + " |", "|---:|---:|" + "---|" * len(cores)]
    for length in lengths:
        cells = []
        for core in cores:
            rs = [r for r in runs if r["length"] == length and r["core"] == core]
            cells.append(" / ".join(f"**{r['success_rate']:.0%}**, {r['env_steps'] / 1e3:.0f}k, {r['train_s']:.0f} s"
                                    for r in rs) or "not run")
        lines.append(f"| {length} | {budget(length):,} | " + " | ".join(cells) + " |")
    machines = "; ".join(sorted({r["machine"] for r in runs}))
    seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in runs}))
    lines += ["", f"Each cell: success over 200 deterministic episodes, env steps used (training stops once held), "
              f"training time without evaluations. Seeds: {seeds}. Machine: {machines}. \"not run\": the core "
              f"scored below {SOLVED:.0%} at a shorter length."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any]) -> None:
    """Success against L (left; cores offset slightly so that equal values stay visible) and the env steps
    each run used (right; a cross where the core failed, i.e. used its whole budget)."""
    import matplotlib  # plotting is optional for the sweep itself

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    runs = list(results["runs"].values())
    for i, core in enumerate(CORES):
        rs = sorted((r["length"], r["success_rate"], r["env_steps"]) for r in runs if r["core"] == core)
        if not rs:
            continue
        lengths, success, steps = zip(*rs)
        shift = 1 + 0.03 * (i - 2)
        line = ax.plot([n * shift for n in lengths], success, marker="o", label=core)[0]
        solved = [(n, st) for n, su, st in rs if su >= SOLVED]
        if solved:
            ax2.plot(*zip(*solved), marker="o", color=line.get_color(), label=core)
        failed = [(n, st) for n, su, st in rs if su < SOLVED]
        if failed:
            ax2.plot(*zip(*failed), ls="", marker="x", ms=9, color=line.get_color())
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("corridor length L (steps from cue to turn)")
    ax.set_ylabel("success (200 deterministic episodes)")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=8)
    ax.set_title("Passive T-maze (masked), PPO, whole-episode BPTT", fontsize=10)
    ax2.set_yscale("log")
    ax2.set_ylabel("env steps used (x: failed, whole budget)")
    ax2.plot(sorted({r["length"] for r in runs}), [budget(n) for n in sorted({r["length"] for r in runs})],
             color="grey", ls="--", lw=0.8, label="budget")
    ax2.legend(fontsize=8)
    ax2.set_title("Env steps used (training stops once held)", fontsize=10)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    p.add_argument("--cores", nargs="+", default=list(CORES), choices=CORES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-root", type=Path, default=Path("runs/memory_length"))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    if not args.report_only:
        sweep(args.lengths, args.cores, args.seed, args.run_root)
    results = load_results(RESULTS)
    atomic_write(REPORT, lambda tmp: Path(tmp).write_text(report(results)))
    plot(results)
    print(report(results))


if __name__ == "__main__":
    main()
