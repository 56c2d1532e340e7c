"""The memory demonstration (README command 1): recurrent vs memoryless PPO on the passive T-maze.

Both agents get the same algorithm, budget and seed; only the core differs. The LSTM remembers the
cue it saw on the first step; the memoryless agent can only guess at the junction (about 50%).
"""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

from recurl.algos import build_config
from recurl.algos.ppo import PPOConfig, RecurrentPPO
from recurl.checkpoint import write_json
from recurl.presets import preset
from recurl.runs import finish_run


def _config(core: str, length: int, steps: int | None, seed: int) -> PPOConfig:
    _, overrides = preset("tmaze")
    cfg = build_config(PPOConfig, overrides)
    cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, core=core), seed=seed,
                              env_kwargs={**cfg.env_kwargs, "length": length})
    return dataclasses.replace(cfg, total_steps=steps) if steps else cfg


def run_demo(out: str | Path = "runs/demo", length: int = 20, steps: int | None = None, seed: int = 0) -> list[dict]:
    """Train both agents, print a side-by-side table, write ``results.md``, ``results.json``, ``demo.png``."""
    out = Path(out)
    rows = []
    for core in ("lstm", "none"):
        cfg = _config(core, length, steps, seed)
        print(f"\n== PPO with core {core!r} on {cfg.env} (corridor {length}), {cfg.total_steps} env steps")
        t0 = time.perf_counter()
        model = RecurrentPPO(config=cfg).learn(run_dir=out / core)
        rows.append(finish_run(model, out / core, time.perf_counter() - t0, episodes=200))
    table = ["| core | success rate | mean return | mean length | env steps | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['core']} | {r['success_rate']:.1%} | {r['mean_return']:.3f} | {r['mean_length']:.1f} "
                     f"| {r['env_steps']} | {r['wall_time_s']:.0f} |")
    text = "\n".join(table)
    print(f"\nT-maze, corridor length {length}, 200 deterministic evaluation episodes each:\n\n{text}\n")
    (out / "results.md").write_text(text + "\n")
    write_json(out / "results.json", rows)
    _plot(out, [r["core"] for r in rows])
    print(f"wrote {out / 'results.md'} and {out / 'demo.png'}")
    return rows


def _plot(out: Path, cores: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for core in cores:
        with open(out / core / "progress.csv", newline="") as f:
            pts = [(float(r["env_steps"]), float(r["rollout/success_rate"])) for r in csv.DictReader(f)
                   if r.get("rollout/success_rate")]
        ax.plot(*zip(*pts), label=f"PPO, core {core}")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate (training episodes)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=100)
    plt.close(fig)
