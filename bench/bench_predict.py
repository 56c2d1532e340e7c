"""Acting speed for one observation with recurrent state: Agent.act vs RecurrentPPO.predict vs ONNX Runtime.

An untrained T-maze policy (default network: LSTM 64, separate critic core) is saved to a temporary run
directory and driven one observation at a time, the way a game or robot loop calls it. Prints a
Markdown table of calls per second (median of ``--repeats`` timed blocks).

    python bench/bench_predict.py [--core lstm] [--calls 3000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from recurl import Agent, RecurrentPPO
from recurl.export import export_onnx


def calls_per_s(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median calls per second of ``fn`` over ``repeats`` blocks of ``calls`` calls (after a warm-up)."""
    for _ in range(min(calls, 200)):
        fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(calls / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--core", default="lstm", choices=["lstm", "gru", "rnn"])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    obs = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        run, onnx_path = Path(tmp) / "run", Path(tmp) / "agent.onnx"
        RecurrentPPO("recurl/TMaze-v0", policy={"core": a.core}, device="cpu").save(run)
        meta = export_onnx(run, onnx_path)
        model = RecurrentPPO.load(run, device="cpu")
        agent = Agent.load(run)

        agent.reset(1)
        pure_state = agent.initial_state(1)
        ppo_state = [model.predict(obs, None, deterministic=True)[1]]

        def agent_pure() -> None:
            nonlocal pure_state
            _, pure_state = agent.act(obs, pure_state)

        def ppo_predict() -> None:
            _, ppo_state[0] = model.predict(obs, ppo_state[0], deterministic=True)

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # like torch's single thread
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        layers, _, hidden = meta["state_shape"]
        feed = {"obs": obs[None], "is_first": np.zeros(1, np.float32),
                **{n: np.zeros((layers, 1, hidden), np.float32) for n in meta["state_inputs"]}}
        outs = ["action", *meta["state_outputs"]]

        def onnx_run() -> None:
            _, *state = sess.run(outs, feed)
            feed.update(zip(meta["state_inputs"], state))

        rows = [
            ("`Agent.act(obs)` (internal state)", lambda: agent.act(obs)),
            ("`Agent.act(obs, state)` (pure)", agent_pure),
            ("`RecurrentPPO.predict(obs, state)`", ppo_predict),
            ("onnxruntime `session.run` (actor + critic)", onnx_run),
        ]
        print(f"{a.core} core, hidden 64, batch 1; torch {torch.__version__} ({torch.get_num_threads()} thread), "
              f"onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}\n")
        print("| method | calls/s | us/call |\n|---|---:|---:|")
        for name, fn in rows:
            rate = calls_per_s(fn, a.calls, a.repeats)
            print(f"| {name} | {rate:,.0f} | {1e6 / rate:.0f} |")


if __name__ == "__main__":
    main()
