"""Forward + backward time of one recurrent-core window, by unroll path (what docs/design.md quotes).

    python bench/bench_core.py [--T 32] [--B 8] [--H 64] [--episode-len 20]

Resets are drawn with probability ``1 / episode_len`` per step (CartPole early in training has episodes
of ~20 steps). Rows: the fused call with no reset (the floor), ``unroll`` with resets keeping the final
state (episode segments as extra columns), ``unroll`` with resets for training only (LSTM: separator
steps), and a Python loop of ``step`` calls (what a per-step fallback costs). Median of 5 blocks, one
torch thread.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from recurl.nn.recurrent import RecurrentCore


def ms_per_call(fn: Callable[[], None], calls: int = 100) -> float:
    for _ in range(10):
        fn()
    blocks = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        blocks.append((time.perf_counter() - t0) / calls * 1e3)
    return statistics.median(blocks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=32)
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--F", type=int, default=2)
    p.add_argument("--H", type=int, default=64)
    p.add_argument("--episode-len", type=float, default=20.0)
    a = p.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(a.T, a.B, a.F, generator=gen)
    resets = torch.rand(a.T, a.B, generator=gen) < 1 / a.episode_len
    none = torch.zeros_like(resets)
    print(f"T={a.T} B={a.B} F={a.F} H={a.H}, {int(resets[1:].sum())} resets after t=0; ms per forward+backward\n")
    print("| core | no reset (fused) | resets, state kept (segments) | resets, training only | step loop |")
    print("|---|---:|---:|---:|---:|")
    for kind in ("lstm", "gru"):
        core = RecurrentCore(kind, a.F, a.H)
        s0 = core.initial_state(a.B)

        def unroll(is_first: torch.Tensor, return_state: bool, core: RecurrentCore = core,
                   s0: tuple = s0) -> None:
            core.unroll(x, s0, is_first, return_state)[0].sum().backward()

        def loop(core: RecurrentCore = core, s0: tuple = s0) -> None:
            state, ys = s0, []
            for t in range(a.T):
                y, state = core.step(x[t], state, resets[t])
                ys.append(y)
            torch.stack(ys).sum().backward()

        cells = [ms_per_call(lambda: unroll(none, True)), ms_per_call(lambda: unroll(resets, True)),
                 ms_per_call(lambda: unroll(resets, False)), ms_per_call(loop, 20)]
        print(f"| {kind} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
