"""Throughput and latency of the Melee pipeline: prepare (frames/s), training (frames/s), and the live
decision latency per frame at batch 1 (p50, p99) on the torch and ONNX backends.

Usage: python bench/bench_melee.py [REPLAY_DIR] [--epochs N] [--frames N]

Prepare is timed over every replay in REPLAY_DIR (default: the shared test replays). Training runs the
default recipe (`recurl melee train --character ALL`) for N epochs on the prepared data. The latency is
that of `MeleeAgent.step` on real `GameState`s of a shared replay read by libmelee's file console (feature
encoding + one recurrent step + the autoregressive head), after a warm-up, against the 16.7 ms of a frame.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from recurl.algos.melee import MeleeImitation
from recurl.integrations.melee import MeleeAgent
from recurl.melee.prepare import prepare

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "slp"


def latency(run: Path, replay: Path, backend: str, frames: int, deterministic: bool) -> tuple[float, float]:
    """p50 and p99 of ``MeleeAgent.step`` in milliseconds over ``frames`` frames of ``replay``."""
    import melee

    console = melee.Console(is_dolphin=False, path=str(replay), allow_old_version=True)
    console.connect()
    states = []
    while len(states) < frames and (gs := console.step()) is not None:
        states.append(gs)
    agent = MeleeAgent(run, port=sorted(states[0].players)[0], opponent_port=sorted(states[0].players)[1],
                       deterministic=deterministic, backend=backend, seed=0)
    for gs in states[:50]:  # warm-up
        agent.step(gs)
    agent.reset()
    times = []
    for gs in states:
        t0 = time.perf_counter()
        agent.step(gs)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("replay_dir", nargs="?", default=str(SHARED))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--latency-replay", default=str(SHARED / "peppi_game.slp"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare(args.replay_dir, data, ruleset="any", progress=False)  # warm-up run
        report = prepare(args.replay_dir, data, ruleset="any", progress=False)
        print(f"prepare: {report.frames} frames from {len(report.games)} games in {report.seconds:.3f}s "
              f"= {report.frames_per_s:,.0f} frames/s")
        model = MeleeImitation(dataset=str(data), character="ALL", max_epochs=args.epochs)
        t0 = time.perf_counter()
        model.learn(progress_bar=False, run_dir=Path(tmp) / "run")
        seconds = time.perf_counter() - t0
        frames = args.epochs * sum(len(a) for _, a in model._split()[0])
        print(f"train (recipe: {model.config.policy.core} {model.config.policy.hidden_size}, batch "
              f"{model.config.batch_size} x {model.config.chunk_len}, {model.device}): {frames} frames in "
              f"{seconds:.1f}s = {frames / seconds:,.0f} frames/s (validation passes included)")
        for backend, deterministic in (("torch", False), ("onnx", False), ("onnx", True)):
            p50, p99 = latency(Path(tmp) / "run", Path(args.latency_replay), backend, args.frames, deterministic)
            print(f"decision latency per frame, batch 1, {backend} {'greedy' if deterministic else 'sampling'}: "
                  f"p50 {p50:.3f} ms, p99 {p99:.3f} ms (frame: 16.7 ms)")


if __name__ == "__main__":
    main()
