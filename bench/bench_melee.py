"""Throughput of the Melee pipeline: prepare (replay frames/s) and training (frames/s).

Usage: python bench/bench_melee.py [REPLAY_DIR] [--steps N]
Prepare is timed over every replay in REPLAY_DIR (default: the shared test replays), training on the
prepared data with the default model (LSTM 256, batch 16 x seq_len 64) for N steps.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from recurl.melee.prepare import prepare
from recurl.melee.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "slp"
    p.add_argument("replay_dir", nargs="?", default=str(shared))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--core", default="lstm")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepare(args.replay_dir, Path(tmp) / "data", ruleset="any", progress=False)  # warm-up run
        report = prepare(args.replay_dir, Path(tmp) / "data", ruleset="any", progress=False)
        print(f"prepare: {report.frames} frames from {len(report.games)} games in {report.seconds:.3f}s "
              f"= {report.frames_per_s:,.0f} frames/s")
        config = train(Path(tmp) / "data", Path(tmp) / "run", character="ALL", core=args.core,
                       steps=args.steps, memoryless=False, progress=False)
        fit = config[f"train_{args.core}"]
        print(f"train ({args.core}, batch 16 x 64): {args.steps} steps in {fit['seconds']:.1f}s "
              f"= {fit['frames_per_s']:,.0f} frames/s")


if __name__ == "__main__":
    main()
