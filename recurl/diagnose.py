"""Does my task need memory, and how much? Train the same algorithm with and without a memory core.

``recurl diagnose --env ID`` (and ``recurl demo``, the same comparison on the T-maze) trains recurrent
PPO once per core kind and seed under equal budgets, evaluates every agent on the same seeded
episodes, and reports a table, a plot of the learning curves, and a verdict: the gap between the best
memory core and the memoryless baseline, next to the spread between seeds.
"""

from __future__ import annotations

import csv
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

from recurl.algos import build_config
from recurl.algos.ppo import PPOConfig, RecurrentPPO
from recurl.checkpoint import write_json
from recurl.presets import PRESETS, preset
from recurl.runs import finish_run


def _config(env: str | None, preset_name: str | None, core: str, seed: int, steps: int | None,
            env_kwargs: dict[str, Any]) -> PPOConfig:
    overrides = preset(preset_name)[1] if preset_name else {}
    if env is not None:
        overrides["env"] = env
    cfg = build_config(PPOConfig, overrides)
    cfg = dataclasses.replace(cfg, seed=seed, env_kwargs={**cfg.env_kwargs, **env_kwargs},
                              policy=dataclasses.replace(cfg.policy, core=core))
    return dataclasses.replace(cfg, total_steps=steps) if steps else cfg


def default_preset(env: str) -> str | None:
    """The PPO preset written for ``env``, if there is one."""
    for name, (algo, ov) in PRESETS.items():
        if algo == "ppo" and ov.get("env") == env and not name.endswith(("-zoo", "-fast")):
            return name
    return None


def diagnose(
    env: str | None = None,
    preset_name: str | None = None,
    cores: tuple[str, ...] = ("lstm", "none"),
    seeds: tuple[int, ...] = (0,),
    steps: int | None = None,
    out: str | Path = "runs/diagnose",
    episodes: int = 200,
    env_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train and evaluate every (core, seed); write ``results.md``, ``results.json`` and ``memory.png``."""
    out = Path(out)
    if preset_name is None and env is not None:
        preset_name = default_preset(env)
    rows = []
    for core in cores:
        for seed in seeds:
            cfg = _config(env, preset_name, core, seed, steps, env_kwargs or {})
            run = out / f"{core}_seed{seed}"
            print(f"\n== PPO, core {core!r}, seed {seed} on {cfg.env}: {cfg.total_steps} env steps -> {run}")
            t0 = time.perf_counter()
            model = RecurrentPPO(config=cfg).learn(run_dir=run)
            rows.append({"seed": seed, "run": str(run),
                         **finish_run(model, run, time.perf_counter() - t0, episodes=episodes)})
    text = _table(rows) + "\n\n" + _verdict(rows)
    print(f"\n{rows[0]['env']}: {episodes} deterministic evaluation episodes per agent\n\n{text}\n")
    (out / "results.md").write_text(text + "\n")
    write_json(out / "results.json", rows)
    _plot(out, rows)
    print(f"wrote {out / 'results.md'} and {out / 'memory.png'}")
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| core | seed | success rate | mean return | mean length | env steps | wall time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        success = "-" if r["success_rate"] is None else f"{r['success_rate']:.1%}"
        lines.append(f"| {r['core']} | {r['seed']} | {success} | {r['mean_return']:.3f} | {r['mean_length']:.1f} "
                     f"| {r['env_steps']} | {r['wall_time_s']:.0f} |")
    return "\n".join(lines)


def _verdict(rows: list[dict[str, Any]]) -> str:
    by_core: dict[str, list[float]] = {}
    for r in rows:
        by_core.setdefault(r["core"], []).append(r["mean_return"])
    if "none" not in by_core or len(by_core) < 2:
        return "Verdict: needs a memoryless ('none') and a memory core to compare."
    base = statistics.mean(by_core["none"])
    best_core = max((c for c in by_core if c != "none"), key=lambda c: statistics.mean(by_core[c]))
    best = statistics.mean(by_core[best_core])
    spread = max((max(v) - min(v) for v in by_core.values()), default=0.0)
    gap = best - base
    if gap > max(spread, 0.05 * max(abs(base), abs(best), 1e-8)):
        return (f"Verdict: memory helps. {best_core} reaches a mean return of {best:.3f} against {base:.3f} "
                f"without memory (gap {gap:.3f}, seed spread {spread:.3f}).")
    return (f"Verdict: no clear benefit from memory at this budget ({best_core} {best:.3f} vs none {base:.3f}, "
            f"seed spread {spread:.3f}); the observation may already hold what the task needs.")


def _plot(out: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in rows:
        with open(Path(r["run"]) / "progress.csv", newline="") as f:
            pts = [(float(x["env_steps"]), float(x["rollout/ep_rew_mean"])) for x in csv.DictReader(f)
                   if x.get("rollout/ep_rew_mean")]
        if pts:
            ax.plot(*zip(*pts), label=f"{r['core']} (seed {r['seed']})")
    ax.set_xlabel("env steps")
    ax.set_ylabel("mean training return")
    ax.set_title(rows[0]["env"])
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=100)
    plt.close(fig)
