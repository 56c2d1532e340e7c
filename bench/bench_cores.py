"""Forward + backward time of every recurrent core over one training window (what docs/cores.md quotes).

    python bench/bench_cores.py            # the full grid: T 32..2048, B 8/64, H 64/256 (tens of minutes)
    python bench/bench_cores.py --quick    # a few rows, under ~3 minutes on a 2-core CPU
    python bench/bench_cores.py --json docs/results/cores.json --plot docs/cores.png   # what docs/cores.md shows

One layer per core, input width ``--F``, ``unroll(...)[0].sum().backward()``; the LSTM takes its fastest
training path (``return_state=False``: separator steps when the window has resets). ``gru`` is what
``RecurrentCore`` runs (on CPU: the compiled time loops of ``recurl/nn/gru_kernel.c`` when they built, see
the first line of the output). ``--kinds`` may add ``gru.ops``, the same fused GRU with its torch-op
loops (the fallback without a C compiler), and ``nn.gru``, PyTorch's ``nn.GRU`` (episode segments when
the window has resets). "resets" draws an episode start with probability ``1 / --episode-len`` per step. Each
cell is the median of 5 timed blocks after a warm-up, in ms, on one torch thread; the kinds' blocks
interleave, so a busy machine slows every column of a row alike.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from recurl.nn import native
from recurl.nn.recurrent import make_core

KINDS = ("lstm", "gru", "rnn", "mingru", "minlstm", "lru")
SCANS = ("mingru", "minlstm", "lru")
FULL = {"T": (32, 128, 512, 2048), "B": (8, 64), "H": (64, 256)}
QUICK = [(32, 8, 64), (512, 8, 64), (2048, 8, 64), (512, 64, 256)]  # (T, B, H)


def ms_per_call(fns: dict[str, Callable[[], None]], block_s: float = 0.2, rounds: int = 5) -> dict[str, float]:
    """Median ms per call of each of ``fns`` over ``rounds`` blocks of about ``block_s`` seconds, the kinds'
    blocks interleaved round by round so that load from other processes falls on all of them alike."""
    calls = {}
    for k, fn in fns.items():
        fn()  # warm-up, then size the block
        t0 = time.perf_counter()
        fn()
        calls[k] = max(1, min(50, round(block_s / max(time.perf_counter() - t0, 1e-6))))
    blocks: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls[k]):
                fn()
            blocks[k].append((time.perf_counter() - t0) / calls[k] * 1e3)
    return {k: statistics.median(v) for k, v in blocks.items()}


def fwd_bwd(kind: str, core: torch.nn.Module, x: torch.Tensor, s0: tuple, is_first: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of ``core`` over ``x[T, B, F]`` (``nn.gru``: the ``nn.GRU`` library path)."""
    def run() -> None:
        if kind == "gru.ops":
            resets = bool(is_first[1:].any())
            y = core._unroll_fused_gru(x, s0[0], is_first if resets else None, kernel=False)[0]
        elif kind != "nn.gru":
            y = core.unroll(x, s0, is_first, return_state=False)[0]
        elif bool(is_first[1:].any()):
            y = core._unroll_segments(x, s0, is_first, False)[0]
        else:
            y = core.net(x, s0[0])[0]
        y.sum().backward()
    return run


def time_row(T: int, B: int, H: int, F: int, is_first: torch.Tensor, kinds: tuple[str, ...]) -> dict[str, float]:
    """ms per forward + backward of each core kind on one ``x[T, B, F]`` window with these episode starts."""
    x = torch.randn(T, B, F, generator=torch.Generator().manual_seed(0))
    fns = {}
    for kind in kinds:
        torch.manual_seed(0)
        core = make_core(kind.removeprefix("nn.").removesuffix(".ops"), F, H)
        fns[kind] = fwd_bwd(kind, core, x, core.initial_state(B), is_first)
    return ms_per_call(fns)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"only (T, B, H) in {QUICK}")
    p.add_argument("--F", type=int, default=64, help="input features per step")
    p.add_argument("--episode-len", type=float, default=50.0, help="mean episode length of the reset rows")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated core kinds")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--plot", help="also plot ms against T for each (B, H, resets) to this PNG")
    p.add_argument("--replot", metavar="JSON", help="only plot (to --plot) the rows of an earlier --json run")
    a = p.parse_args()
    if a.replot:
        saved = json.loads(Path(a.replot).read_text())
        plot(saved["rows"], tuple(saved["rows"][0]["ms"]), a.plot, saved["machine"])
        return
    torch.set_num_threads(1)
    kinds = tuple(a.kinds.split(","))
    shapes = QUICK if a.quick else list(itertools.product(FULL["T"], FULL["B"], FULL["H"]))
    machine = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
               f"{torch.get_num_threads()} thread, F={a.F}; ms per forward+backward, one layer; GRU time loops: "
               f"{'compiled' if native.gru_kernel() else 'torch ops (' + native.unavailable_reason + ')'}")
    print(machine + "\n")
    scans = [k for k in kinds if k in SCANS]
    ratio = "lstm / best scan" if "lstm" in kinds and scans else ""
    print("| T | B | H | resets | " + " | ".join(kinds) + (f" | {ratio} |" if ratio else " |"))
    print("|---:|---:|---:|---:|" + "---:|" * (len(kinds) + bool(ratio)))
    rows = []
    for T, B, H in shapes:
        gen = torch.Generator().manual_seed(1)
        with_resets = torch.rand(T, B, generator=gen) < 1 / a.episode_len
        for is_first in (torch.zeros(T, B, dtype=torch.bool), with_resets):
            ms = time_row(T, B, H, a.F, is_first, kinds)
            rows.append({"T": T, "B": B, "H": H, "resets": int(is_first[1:].sum()), "ms": ms})
            cells = [f"{ms[k]:.1f}" for k in kinds]
            if ratio:
                cells.append(f"{ms['lstm'] / min(ms[k] for k in scans):.1f}x")
            print(f"| {T} | {B} | {H} | {rows[-1]['resets']} | " + " | ".join(cells) + " |", flush=True)
            if a.json:  # rewritten after every row: a long run interrupted keeps what it measured
                Path(a.json).write_text(json.dumps({"machine": machine, "F": a.F, "rows": rows}, indent=1))
    if a.plot:
        plot(rows, kinds, a.plot, machine)


def plot(rows: list[dict], kinds: tuple[str, ...], path: str, title: str) -> None:
    """ms per forward + backward against T (log-log): a column per (B, H), a row without and with resets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(r["B"], r["H"]) for r in rows})
    fig, axes = plt.subplots(2, len(shapes), figsize=(3.6 * len(shapes), 6.4), squeeze=False, sharex=True)
    for j, (B, H) in enumerate(shapes):
        for i, resets in enumerate((False, True)):
            ax = axes[i][j]
            sel = sorted((r for r in rows if (r["B"], r["H"]) == (B, H) and (r["resets"] > 0) == resets),
                         key=lambda r: r["T"])
            for k in kinds:
                ax.plot([r["T"] for r in sel], [r["ms"][k] for r in sel], marker="o", ms=3, label=k,
                        linestyle="--" if k in SCANS else "-")
            ax.set(xscale="log", yscale="log", title=f"B={B}, H={H}, {'with' if resets else 'no'} resets")
            ax.grid(True, which="both", alpha=0.3)
            if i == 1:
                ax.set_xlabel("T (steps per window)")
        axes[0][0].set_ylabel("ms per forward + backward")
        axes[1][0].set_ylabel("ms per forward + backward")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
