"""Regenerate the recurrent-SAC results of docs/sac.md: recurrent vs memoryless vs fully observed SAC.

Usage: python bench/sac_results.py [--seeds 0 1 2] [--mujoco [--mujoco-steps N]] [--report-only]

Every run uses the ``sac-pendulum-p`` preset's settings with only the env, the core and the seed changed
(and, for ``--mujoco``, the budget), so all rows of a task share one budget:

- ``recurl/Pendulum-P-v1`` (angle only) with ``--core lstm`` and ``--core none`` (memoryless SAC),
- ``Pendulum-v1`` (fully observed) with ``--core none``, the reference,
- ``recurl/Pendulum-V-v1`` (velocity only) with ``--core lstm`` and ``--core none``;
- ``--mujoco``: ``recurl/HalfCheetah-P-v5`` (velocities removed) with ``lstm`` and ``none``, and
  ``HalfCheetah-v5`` with ``none``, ``--mujoco-steps`` each (needs ``recurl[mujoco]``; the pendulum's
  settings, not tuned for it).

Each run evaluates every ``EVAL_EVERY`` env steps (``EVAL_CURVE`` deterministic episodes: the learning
curve) and at the end on ``FINAL_EPISODES`` deterministic episodes from seed 10000 (the table), one torch
thread, on the CPU. A finished run's result is kept in docs/results/sac.json (written atomically after
each run), so an interrupted grid resumes where it stopped; ``--report-only`` rewrites only
docs/results/sac.md and docs/sac_curves.png from that JSON.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from results_file import load_results, record_result

from recurl import RecurrentSAC, evaluate_policy
from recurl.presets import preset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "sac.json"
REPORT = ROOT / "docs" / "results" / "sac.md"
CURVES = ROOT / "docs" / "sac_curves.png"
EVAL_EVERY, EVAL_CURVE, FINAL_EPISODES, FINAL_SEED = 1_000, 10, 20, 10_000

#: (preset, [(env, core), ...]): one preset's settings for every row of a task family
PRESET = "sac-pendulum-p"
PENDULUM = (PRESET, [("recurl/Pendulum-P-v1", "lstm"), ("Pendulum-v1", "none"),
                               ("recurl/Pendulum-P-v1", "none"), ("recurl/Pendulum-V-v1", "lstm"),
                               ("recurl/Pendulum-V-v1", "none")])
MUJOCO = (PRESET, [("recurl/HalfCheetah-P-v5", "lstm"), ("recurl/HalfCheetah-P-v5", "none"),
                                ("HalfCheetah-v5", "none")])


def key(env: str, core: str, seed: int) -> str:
    return f"{env}|{core}|{seed}"




def run_one(preset_name: str, env: str, core: str, seed: int, run_dir: Path, **extra: object) -> dict:
    """Train one (env, core, seed) from the preset (``extra``: other overrides, e.g. the budget); returns its
    final evaluation, learning curve and training wall time."""
    _, overrides = preset(preset_name)
    policy = {**overrides.pop("policy", {}), "core": core}
    model = RecurrentSAC(**{**overrides, **extra, "env": env, "policy": policy, "seed": seed, "device": "cpu",
                            "threads": 1, "eval_every": EVAL_EVERY, "eval_episodes": EVAL_CURVE})
    t0 = time.perf_counter()
    model.learn(progress_bar=False, run_dir=run_dir)
    # training wall time: the periodic evaluations' own time is left out
    wall = time.perf_counter() - t0 - model.eval_record["time_s"]
    final = evaluate_policy(model, n_episodes=FINAL_EPISODES, seed=FINAL_SEED)
    with open(run_dir / "evaluations.csv") as f:
        curve = [(int(r["env_steps"]), float(r["mean_return"])) for r in csv.DictReader(f)]
    return {"preset": preset_name, "env": env, "core": core, "seed": seed, "total_steps": model.config.total_steps,
            "n_updates": model.n_updates, "wall_s": round(wall, 1), "mean_return": final["mean_return"],
            "std_return": final["std_return"], "returns": [round(x, 1) for x in final["returns"]], "curve": curve,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread"}


def run_grid(grid: tuple[str, list[tuple[str, str]]], seeds: list[int], run_root: Path, **extra: object) -> None:
    preset_name, rows = grid
    results = load_results(RESULTS)
    todo = [(env, core, s) for env, core in rows for s in seeds if key(env, core, s) not in results["runs"]]
    print(f"{preset_name}: {len(todo)} runs to do, {len(rows) * len(seeds) - len(todo)} kept")
    for i, (env, core, seed) in enumerate(todo, 1):
        run_dir = run_root / f"{env.replace('/', '_')}-{core}-s{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a killed run restarts from scratch (its replay is not saved)
        r = run_one(preset_name, env, core, seed, run_dir, **extra)
        record_result(RESULTS, key(env, core, seed), r)
        print(f"[{i}/{len(todo)}] {env} {core} seed {seed}: {r['mean_return']:.1f} +- {r['std_return']:.1f} "
              f"({FINAL_EPISODES} ep.), {r['wall_s']:.0f}s", flush=True)


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------
def rows_of(results: dict) -> dict[tuple[str, str], list[dict]]:
    """(env, core) -> its runs, by seed, in the order of the grids."""
    order = [rc for _, rows in (PENDULUM, MUJOCO) for rc in rows]
    out: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(results["runs"].values(), key=lambda r: (order.index((r["env"], r["core"])), r["seed"])):
        out.setdefault((r["env"], r["core"]), []).append(r)
    return out


def report(results: dict) -> str:
    rows = rows_of(results)
    md = ["| env | core | budget (env steps) | seeds | eval return: mean over seeds | min / max seed | per seed "
          "(mean of 20 ep.) | wall time per run |", "|---|---|---|---|---|---|---|---|"]
    for (env, core), runs in rows.items():
        means = [r["mean_return"] for r in runs]
        md.append(f"| `{env}` | {core} | {runs[0]['total_steps']:,} | {', '.join(str(r['seed']) for r in runs)} | "
                  f"**{np.mean(means):.0f}** | {min(means):.0f} / {max(means):.0f} | "
                  f"{', '.join(f'{m:.0f}' for m in means)} | {np.mean([r['wall_s'] for r in runs]):.0f} s |")
    full, part = rows.get(("Pendulum-v1", "none")), rows.get(("recurl/Pendulum-P-v1", "lstm"))
    if full and part:
        f, p = np.mean([r["mean_return"] for r in full]), np.mean([r["mean_return"] for r in part])
        worst = min(r["mean_return"] for r in part)
        md += ["", f"Target (recurrent SAC on Pendulum-P within 10% of fully observed SAC, P >= 1.1 x full = "
                   f"{1.1 * f:.0f}): mean {p:.0f} -> **{'met' if p >= 1.1 * f else 'not met'}**; worst seed "
                   f"{worst:.0f} -> {'met' if worst >= 1.1 * f else 'not met'} on every seed."]
    machine = {r["machine"] for runs in rows.values() for r in runs}
    md += ["", f"Evaluation: {FINAL_EPISODES} deterministic episodes from seed {FINAL_SEED} (the same starts for "
               f"every row). Machine: {'; '.join(sorted(machine))}."]
    return "\n".join(md) + "\n"


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows_of(results)
    panels = [("Pendulum-P (angle only) vs fully observed", ["recurl/Pendulum-P-v1", "Pendulum-v1"]),
              ("Pendulum-V (velocity only)", ["recurl/Pendulum-V-v1"]),
              ("HalfCheetah-P (no velocities) vs fully observed", ["recurl/HalfCheetah-P-v5", "HalfCheetah-v5"])]
    panels = [(t, envs) for t, envs in panels if any(env in envs for env, _ in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, envs) in zip(axes[0], panels):
        for (env, core), runs in rows.items():
            if env not in envs:
                continue
            steps = np.array([s for s, _ in runs[0]["curve"]])
            n = min(len(r["curve"]) for r in runs)
            ys = np.array([[y for _, y in r["curve"][:n]] for r in runs])
            name = env.removeprefix("recurl/") + ("" if env.startswith("recurl/") else " (fully observed)")
            label = f"{name}, {'memoryless' if core == 'none' else core} ({len(runs)} seeds)"
            line, = ax.plot(steps[:n], ys.mean(0), label=label)
            ax.fill_between(steps[:n], ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"eval return ({EVAL_CURVE} det. episodes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Recurrent SAC: mean over seeds, shaded min-max")
    fig.tight_layout()
    fig.savefig(CURVES, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--mujoco", action="store_true", help="also run the HalfCheetah-P grid (recurl[mujoco])")
    p.add_argument("--mujoco-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--mujoco-steps", type=int, default=100_000, help="env steps of each MuJoCo run")
    p.add_argument("--runs", default=str(ROOT / "runs" / "sac_results"), help="run directories (logs, models)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the table and plot from the JSON")
    args = p.parse_args()
    torch.set_num_threads(1)
    if not args.report_only:
        run_grid(PENDULUM, args.seeds, Path(args.runs))
        if args.mujoco:
            run_grid(MUJOCO, args.mujoco_seeds, Path(args.runs), total_steps=args.mujoco_steps)
    results = load_results(RESULTS)
    REPORT.write_text(report(results))
    plot(results)
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
