"""Swamp-tour env throughput: single env vs Gymnasium's SyncVectorEnv vs the native batched vector env.

Random actions, episodes reset as they end (NEXT_STEP autoreset for the vector envs). Prints a
Markdown table of env steps per second (sub-env steps, i.e. ``num_envs`` per vector step), with
the per-reset BFS solver (``compute_optimal``) off and on.

    python bench/bench_swamptour_env.py [--task ruin_2swamp] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import time

import gymnasium as gym
import numpy as np

from recurl.envs.swamptour import SwampTourEnv, SwampTourVectorEnv


def bench_single(task: str, steps: int, compute_optimal: bool) -> float:
    """Env steps per second of one :class:`SwampTourEnv` stepped in a Python loop."""
    env = SwampTourEnv(task, compute_optimal=compute_optimal)
    actions = np.random.default_rng(0).integers(0, 3, size=steps).tolist()
    env.reset(seed=0)
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def bench_vector(env: gym.vector.VectorEnv, steps: int) -> float:
    """Env steps per second (``num_envs`` per call) of a vector env over ``steps`` sub-env steps."""
    n = env.num_envs
    calls = max(steps // n, 10)
    actions = np.random.default_rng(0).integers(0, 3, size=(calls, n))
    env.reset(seed=0)
    start = time.perf_counter()
    for a in actions:
        env.step(a)
    return calls * n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="ruin_2swamp")
    parser.add_argument("--quick", action="store_true", help="about 10x fewer steps")
    args = parser.parse_args(argv)
    steps = 20_000 if args.quick else 200_000
    rows = []
    for label, n in (("single env (loop)", 1), ("SyncVectorEnv of single envs", 16),
                     ("SwampTourVectorEnv", 1), ("SwampTourVectorEnv", 16), ("SwampTourVectorEnv", 256)):
        rates = []
        for solver in (False, True):
            if label.startswith("single"):
                rates.append(bench_single(args.task, steps // 4, solver))
            elif label.startswith("Sync"):
                env = gym.vector.SyncVectorEnv(
                    [lambda s=solver: SwampTourEnv(args.task, compute_optimal=s) for _ in range(n)],
                    autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
                rates.append(bench_vector(env, steps // 4))
            else:
                budget = steps if n > 1 else steps // 4
                rates.append(bench_vector(SwampTourVectorEnv(n, args.task, compute_optimal=solver), budget))
        rows.append((label, n, *rates))
    cpu = platform.processor() or platform.machine()
    print(f"task {args.task}, {cpu}, python {platform.python_version()}, numpy {np.__version__}\n")
    print("| implementation | num_envs | steps/s (solver off) | steps/s (solver on) |")
    print("|---|---:|---:|---:|")
    for label, n, off, on in rows:
        print(f"| {label} | {n} | {off:,.0f} | {on:,.0f} |")


if __name__ == "__main__":
    main()
