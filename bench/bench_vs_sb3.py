"""recurl's recurrent PPO against sb3-contrib's RecurrentPPO, side by side, on this machine.

Measured in one run (see docs/benchmarks.md for the latest table):

1. training env steps/s at identical hyperparameters (rl-baselines3-zoo's CartPoleNoVel settings);
2. wall time from start to a policy scoring >= 475 (mean of 20 deterministic episodes), median over
   seeds: sb3-contrib with the zoo settings, recurl with its own fastest preset, whose *final* policy
   must also hold the score. Evaluation time is excluded for both;
3. ``predict`` calls/s for one observation with state;
4. a roofline: the measured matmul rate at the LSTM's per-step shapes, and the fraction of it that the
   training step reaches.

recurl runs on one torch thread; sb3-contrib is measured with one thread and with torch's default (one
per core), and every ratio is taken against the faster of its two. The report names the CPU model and
says whether other work loaded the machine while it ran.

sb3-contrib is optional (``pip install -c constraints.txt -e '.[bench]'``); without it only recurl's
side is measured. Speed is never asserted in tests: this script is where it is measured.

    python bench/bench_vs_sb3.py [--quick] [--seeds N] [--repeats N] [--out DIR] [--no-sb3] [--no-solve]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recurl.agent import Agent
from recurl.algos import build_config
from recurl.algos.ppo import PPOConfig, RecurrentPPO
from recurl.evaluation import evaluate_policy
from recurl.presets import preset

ENV = "recurl/CartPoleNoVel-v1"
SOLVED = 475.0
# The report goes to the repository's docs/, wherever the script is started from.
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _spread(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


# -- recurl ------------------------------------------------------------------------------------------------
def _recurl(preset_name: str, seed: int, **overrides: Any) -> RecurrentPPO:
    _, ov = preset(preset_name)
    return RecurrentPPO(config=build_config(PPOConfig, {**ov, "seed": seed, **overrides}))


def recurl_throughput(steps: int, seed: int = 0) -> float:
    """Env steps/s of recurl PPO with the zoo settings, after a warm-up update."""
    model = _recurl("cartpole-novel-zoo", seed, total_steps=10**9, anneal_lr=False, anneal_clip=False)
    model.learn(256, progress_bar=False)
    t0 = time.perf_counter()
    model.learn(256 + steps, progress_bar=False)
    return steps / (time.perf_counter() - t0)


def recurl_time_to_solve(preset_name: str, seed: int, eval_every: int) -> dict[str, Any]:
    """Run the preset as a user does (it stops once solved and held); record when a policy first scores
    >= 475 and, strictly, the whole run's time (model build + learn) to the policy it returns, whose
    score on 20 other episodes must then be >= 475. Evaluation time is excluded from both: the preset's
    own evaluations (``eval_record["time_s"]``) and this probe's."""
    t_start = time.perf_counter()
    model = _recurl(preset_name, seed)
    clock = {"train": 0.0, "last": time.perf_counter(), "probe": 0.0, "solved_s": None, "solved_steps": None}

    def callback(m: RecurrentPPO) -> bool:
        now = time.perf_counter()
        clock["train"] += now - clock["last"]
        if clock["solved_s"] is None and m.n_updates % eval_every == 0:
            score = evaluate_policy(m, n_episodes=20, seed=seed + 1000, num_envs=20)["mean_return"]
            if score >= SOLVED:
                clock["solved_s"] = clock["train"] - m.eval_record["time_s"]
                clock["solved_steps"] = m.num_timesteps
        clock["last"] = time.perf_counter()
        clock["probe"] += clock["last"] - now
        return True

    model.learn(progress_bar=False, callback=callback)
    strict = time.perf_counter() - t_start - clock["probe"] - model.eval_record["time_s"]
    final = evaluate_policy(model, n_episodes=20, seed=seed + 2000, num_envs=20)["mean_return"]
    return {"seed": seed, "solved_s": clock["solved_s"], "solved_steps": clock["solved_steps"],
            "train_s": clock["train"] - model.eval_record["time_s"], "strict_s": strict,
            "eval_s": model.eval_record["time_s"], "steps": model.num_timesteps,
            "held": bool(model.eval_record["held"]), "final_return": final,
            "final_holds": final >= SOLVED}


# -- sb3-contrib -------------------------------------------------------------------------------------------
#: sb3-contrib is measured both ways: with one torch thread (as recurl runs) and with torch's default
#: thread count (one per core), as its users run it; each ratio is taken against the faster of the two
SB3_THREADS = {"1t": 1, "default": os.cpu_count() or 1}


@contextlib.contextmanager
def _sb3_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sb3_model(seed: int) -> Any:
    from sb3_contrib import RecurrentPPO as SB3RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(sb3_make_vec_env(ENV, n_envs=8, seed=seed), gamma=0.98)
    return SB3RecurrentPPO(
        "MlpLstmPolicy", venv, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8,
        learning_rate=lambda p: 1e-3 * p, clip_range=lambda p: 0.2 * p, ent_coef=0.0, seed=seed, verbose=0,
        device="cpu",
        policy_kwargs=dict(ortho_init=False, activation_fn=nn.ReLU, lstm_hidden_size=64,
                           enable_critic_lstm=True, net_arch=dict(pi=[64], vf=[64])),
    )


def _sb3_evaluate(model: Any, seed: int, n: int = 20) -> float:
    """Mean return of ``n`` deterministic episodes, one per env, LSTM state threaded per env."""
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env

    env = sb3_make_vec_env(ENV, n_envs=n, seed=seed)
    norm = model.get_env()
    obs = env.reset()
    state, starts = None, np.ones(n, bool)
    returns, done_once = np.zeros(n), np.zeros(n, bool)
    while not done_once.all():
        action, state = model.predict(norm.normalize_obs(obs), state=state, episode_start=starts, deterministic=True)
        obs, reward, dones, _ = env.step(action)
        returns += np.where(done_once, 0.0, reward)
        done_once |= dones
        starts = dones
    env.close()
    return float(returns.mean())


def sb3_throughput(steps: int, seed: int = 0, threads: int = 1) -> float:
    with _sb3_threads(threads):
        model = _sb3_model(seed)
        model.learn(256)
        t0 = time.perf_counter()
        model.learn(steps, reset_num_timesteps=False)
        return steps / (time.perf_counter() - t0)


def sb3_time_to_solve(seed: int, max_steps: int, eval_every_steps: int = 2048, threads: int = 1) -> dict[str, Any]:
    """Train until the first policy scoring >= 475 (zoo settings), evaluation time excluded."""
    with _sb3_threads(threads):
        return _sb3_solve(seed, max_steps, eval_every_steps)


def _sb3_solve(seed: int, max_steps: int, eval_every_steps: int) -> dict[str, Any]:
    from stable_baselines3.common.callbacks import BaseCallback

    model = _sb3_model(seed)
    clock = {"train": 0.0, "last": time.perf_counter(), "solved_s": None, "solved_steps": None}

    class Solve(BaseCallback):
        """Evaluates after updates (sb3 starts a rollout right after each update) and stops at a solve."""

        solved = False

        def _on_step(self) -> bool:
            return not self.solved

        def _on_rollout_start(self) -> None:
            clock["train"] += time.perf_counter() - clock["last"]
            due = self.num_timesteps and self.num_timesteps % eval_every_steps < 256
            if due and _sb3_evaluate(model, seed + 1000) >= SOLVED:
                clock["solved_s"], clock["solved_steps"] = clock["train"], self.num_timesteps
                self.solved = True
            clock["last"] = time.perf_counter()

    model.learn(max_steps, callback=Solve())
    return {"seed": seed, "solved_s": clock["solved_s"], "solved_steps": clock["solved_steps"],
            "train_s": clock["train"]}


def sb3_predict_rate(n: int, threads: int = 1) -> float:
    with _sb3_threads(threads):
        model = _sb3_model(0)
        obs = np.zeros((1, 2), np.float32)
        return _rate(lambda s: model.predict(obs, state=s, episode_start=np.zeros(1, bool))[1], n)


# -- predict and roofline ----------------------------------------------------------------------------------
def _rate(step: Callable[[Any], Any], n: int) -> float:
    state = None
    for _ in range(50):
        state = step(state)
    t0 = time.perf_counter()
    for _ in range(n):
        state = step(state)
    return n / (time.perf_counter() - t0)


def recurl_predict_rate(n: int) -> float:
    model = _recurl("cartpole-novel-zoo", 0)
    obs = np.zeros(2, np.float32)
    return _rate(lambda s: model.predict(obs, state=s, episode_start=np.zeros(1, bool))[1], n)


def roofline(n_reps: int = 200) -> dict[str, float]:
    """Matmul GFLOP/s at the LSTM step's shapes vs the GFLOP/s the zoo-config training step achieves."""
    torch.set_num_threads(1)
    B, F, H, T = 8, 2, 64, 32
    a, w = torch.randn(B, F + H), torch.randn(F + H, 4 * H)
    t0 = time.perf_counter()
    for _ in range(n_reps * 10):
        torch.mm(a, w)
    mm_gflops = 2 * B * (F + H) * 4 * H * n_reps * 10 / (time.perf_counter() - t0) / 1e9
    big = torch.randn(512, 512)
    t0 = time.perf_counter()
    for _ in range(20):
        torch.mm(big, big)
    peak = 2 * 512**3 * 20 / (time.perf_counter() - t0) / 1e9
    # One zoo minibatch: 2 LSTMs (actor, critic) + 2 MLPs [64 -> 64] + heads, forward and backward (~3x).
    lstm = 2 * T * B * 4 * H * (F + H)
    mlp = 2 * T * B * (H * 64 + 64 * 3)
    flops_per_minibatch = 3 * 2 * (lstm + mlp)
    model = _recurl("cartpole-novel-zoo", 0, total_steps=10**9, anneal_lr=False)
    model.learn(256, progress_bar=False)
    update_s: list[float] = []  # the training step alone: the rollout between updates is not counted
    model.learn(256 * 11, progress_bar=False, callback=lambda m: update_s.append(m.timing["update_s"]))
    per_update = statistics.median(update_s)
    achieved = flops_per_minibatch * 20 / per_update / 1e9  # 20 epochs x 1 minibatch per update
    # The library's fused LSTM kernel alone (actor's and critic's, forward + backward, no resets): the
    # floor of a minibatch whatever the code around it does.
    cores, x = [nn.LSTM(F, H) for _ in range(2)], torch.randn(T, B, F)
    blocks = []
    for _ in range(6):
        t0 = time.perf_counter()
        for _ in range(50):
            sum(core(x)[0].sum() for core in cores).backward()
        blocks.append((time.perf_counter() - t0) / 50)
    lstm_s = statistics.median(blocks[1:])
    return {"matmul_gflops_at_step_shape": mm_gflops, "matmul_gflops_512": peak,
            "train_step_gflops": achieved, "fraction_of_step_shape_roofline": achieved / mm_gflops,
            "minibatch_ms": per_update / 20 * 1e3, "lstm_kernel_ms": lstm_s * 1e3,
            "lstm_kernel_fraction_of_step_shape_roofline": 3 * 2 * lstm / lstm_s / 1e9 / mm_gflops}


# -- the report ---------------------------------------------------------------------------------------------
def run_bench(out: str | Path = DOCS, quick: bool = False, seeds: int = 5, sb3: bool = True,
              solve: bool = True, repeats: int = 3) -> dict[str, Any]:
    """Run every measurement, write ``benchmarks.md``, ``benchmarks.json`` and ``benchmarks.png``."""
    torch.set_num_threads(1)
    try:
        import sb3_contrib  # noqa: F401
    except ImportError:
        print("sb3-contrib not installed (pip install -c constraints.txt -e '.[bench]'): measuring recurl only")
        sb3 = False
    steps = 2048 if quick else 10240
    seeds = 1 if quick else seeds
    res: dict[str, Any] = {"machine": _machine()}
    print("training throughput ...", flush=True)
    res["recurl_steps_per_s"] = _spread([recurl_throughput(steps, s) for s in range(repeats)])
    if sb3:
        for tag, threads in SB3_THREADS.items():
            res[f"sb3_{tag}_steps_per_s"] = _spread([sb3_throughput(steps // 4 if quick else steps, s, threads)
                                                     for s in range(repeats)])
    print("predict ...", flush=True)
    n = 500 if quick else 3000
    res["recurl_predict_per_s"] = _spread([recurl_predict_rate(n) for _ in range(repeats)])
    res["recurl_agent_act_per_s"] = _spread([_agent_rate(n) for _ in range(repeats)])
    with contextlib.suppress(ImportError):  # the onnx backend needs the optional onnxruntime
        res["recurl_agent_onnx_per_s"] = _spread([_agent_rate(n, "onnx") for _ in range(repeats)])
    if sb3:
        for tag, threads in SB3_THREADS.items():
            res[f"sb3_{tag}_predict_per_s"] = _spread([sb3_predict_rate(n, threads) for _ in range(repeats)])
    print("roofline ...", flush=True)
    res["roofline"] = roofline()
    if solve:
        print(f"time to solve over {seeds} seeds ...", flush=True)
        res["recurl_solve"] = [recurl_time_to_solve("cartpole-novel-fast", s, eval_every=2) for s in range(seeds)]
        if sb3:
            for tag, threads in SB3_THREADS.items():
                res[f"sb3_{tag}_solve"] = [sb3_time_to_solve(s, max_steps=30_000 if quick else 100_000,
                                                             threads=threads) for s in range(seeds)]
    res["load_end"] = os.getloadavg()[0]
    _report(res, Path(out))
    return res


def _agent_rate(n: int, backend: str = "torch") -> float:
    with tempfile.TemporaryDirectory() as d:
        _recurl("cartpole-novel-zoo", 0).save(d)
        agent = Agent.load(d, backend=backend)
    agent.reset(1)
    obs = np.zeros((1, 2), np.float32)
    return _rate(lambda _: agent.act(obs), n)


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else the platform's processor or machine."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _machine() -> dict[str, Any]:
    return {"cpu": _cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "load_start": os.getloadavg()[0]}


def _load_note(res: dict[str, Any]) -> str:
    """Whether other work shared the machine: the 1-minute load average when the benchmark started (before
    any of its own work), and at the end for the record (sb3-contrib's default threads keep every core
    busy then, so the end is not judged)."""
    start, end = res["machine"].get("load_start"), res.get("load_end")
    if start is None:
        return ""
    busy = start > 1.0
    return (f"Load average (1 min) at the start: {start:.1f} on {res['machine']['cores']} cores"
            + (f" (at the end, after sb3-contrib's multi-threaded runs: {end:.1f})" if end is not None else "")
            + (": **the machine was loaded** when the benchmark started (other work), so absolute numbers are "
               "pessimistic and both sides' ratios noisier." if busy else ": idle when the benchmark started."))


def _median_solve(runs: list[dict[str, Any]]) -> float | None:
    times = [r["solved_s"] for r in runs if r["solved_s"] is not None]
    return statistics.median(times) if len(times) > len(runs) / 2 else None


def _report(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cores = SB3_THREADS["default"]
    rows = [f"| measure | recurl (1 thread) | sb3-contrib, 1 thread | sb3-contrib, {cores} threads (default) | "
            "ratio to the faster sb3 |", "|---|---|---|---|---|"]

    def cell(d: dict | float | None, fmt: str) -> str:
        if d is None:
            return "-"
        if isinstance(d, dict):
            return f"{d['median']:{fmt}} ({d['min']:{fmt}}-{d['max']:{fmt}})"
        return format(d, fmt)

    def median(d: dict | float | None) -> float | None:
        return d["median"] if isinstance(d, dict) else d

    def row(name: str, ours: dict | float | None, measure: str, fmt: str, lower_better: bool = False,
            ours_cell: str | None = None, ok: bool = True) -> None:
        """One measure; sb3's two thread settings from ``res["sb3_<tag>_<measure>"]``."""
        theirs = [res.get(f"sb3_{tag}_{measure}") for tag in SB3_THREADS]
        vals = [median(t) for t in theirs if median(t) is not None]
        o = median(ours)
        best = (min(vals) if lower_better else max(vals)) if vals else None
        ratio = "" if o is None or best is None else f"{(best / o if lower_better else o / best):.1f}x"
        if not ok and ratio:
            ratio = "- (a seed did not hold)"
        rows.append(f"| {name} | {ours_cell or cell(ours, fmt)} | {cell(theirs[0], fmt)} | {cell(theirs[1], fmt)} "
                    f"| {ratio} |")

    row("training env steps/s (zoo settings)", res["recurl_steps_per_s"], "steps_per_s", ".0f")
    row("predict calls/s (one obs + state)", res["recurl_predict_per_s"], "predict_per_s", ".0f")
    if "recurl_agent_act_per_s" in res:
        row("Agent.act calls/s", res["recurl_agent_act_per_s"], "predict_per_s", ".0f")
    if "recurl_agent_onnx_per_s" in res:
        row("Agent.act calls/s, backend onnx", res["recurl_agent_onnx_per_s"], "predict_per_s", ".0f")
    if "recurl_solve" in res:
        for tag in SB3_THREADS:  # sb3's side of the time rows: its median first solve
            if f"sb3_{tag}_solve" in res:
                res[f"sb3_{tag}_first_solve_s"] = _median_solve(res[f"sb3_{tag}_solve"])
        row("median wall time to >= 475 (s), first solve", _median_solve(res["recurl_solve"]), "first_solve_s",
            ".1f", lower_better=True)
        runs = res["recurl_solve"]
        strict = _spread([r["strict_s"] for r in runs])
        held = sum(r["final_holds"] for r in runs)
        row("strict: recurl's whole run to the policy it returns (>= 475 on other episodes), vs sb3's first "
            "solve (s)", strict, "first_solve_s", ".1f", lower_better=True,
            ours_cell=f"{cell(strict, '.1f')}, {held}/{len(runs)} held", ok=held == len(runs))
        if all("eval_s" in r for r in runs):  # the same runs with the preset's own evaluations counted in
            with_evals = _spread([r["strict_s"] + r["eval_s"] for r in runs])
            row("the same, with the preset's own evaluations (`--eval-every`) counted in (s)", with_evals,
                "first_solve_s", ".1f", lower_better=True, ok=held == len(runs))
    rf = res["roofline"]
    lines = [
        "# Benchmarks: recurl vs sb3-contrib RecurrentPPO",
        "",
        f"Machine: {res['machine']}. Regenerate with `python bench/bench_vs_sb3.py` (`--quick` for a smoke run).",
        "Ranges are min-max over repeats; the machine's noise shows in them.",
        _load_note(res),
        "",
        *rows,
        "",
        f"Roofline: matmul at the LSTM step's shape [8, 66] x [66, 256]: {rf['matmul_gflops_at_step_shape']:.1f} "
        f"GFLOP/s (512^3: {rf['matmul_gflops_512']:.1f}); the training step reaches {rf['train_step_gflops']:.1f} "
        f"GFLOP/s, {rf['fraction_of_step_shape_roofline']:.0%} of the step-shape rate "
        f"({rf['minibatch_ms']:.1f} ms per minibatch). The fused LSTM kernels alone (actor and critic, "
        f"forward + backward, no resets) take {rf['lstm_kernel_ms']:.1f} ms, "
        f"{rf['lstm_kernel_fraction_of_step_shape_roofline']:.0%} of the step-shape rate.",
        "",
        "What these numbers mean, and what was tried: [performance.md](performance.md).",
    ]
    if "recurl_solve" in res:
        lines += ["", "Time to solve, per seed (training seconds, env steps; recurl's final score):", ""]
        for r in res["recurl_solve"]:
            lines.append(f"- recurl seed {r['seed']}: solved at {r['solved_s'] and round(r['solved_s'], 1)} s, "
                         f"{r['solved_steps']} steps; whole run {r['strict_s']:.1f} s, {r['steps']} steps"
                         + (f" (+{r['eval_s']:.1f} s of its evaluations), " if "eval_s" in r else ", ") +
                         f"stopped held: {r['held']}; final {r['final_return']:.0f} (holds: {r['final_holds']})")
        for tag, threads in SB3_THREADS.items():
            for r in res.get(f"sb3_{tag}_solve", []):
                lines.append(f"- sb3-contrib ({threads} thread{'s' * (threads > 1)}) seed {r['seed']}: solved at "
                             f"{r['solved_s'] and round(r['solved_s'], 1)} s, {r['solved_steps']} steps")
    (out / "benchmarks.md").write_text("\n".join(lines) + "\n")
    (out / "benchmarks.json").write_text(json.dumps(res, indent=2, default=str))
    _plot(res, out / "benchmarks.png")
    print("\n".join(lines))


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [("train steps/s", "recurl_steps_per_s", "sb3_1t_steps_per_s"),
             ("predict calls/s", "recurl_predict_per_s", "sb3_1t_predict_per_s")]
    pairs = [p for p in pairs if p[2] in res]
    if not pairs:
        return
    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.2))
    for ax, (title, a, b) in zip(np.atleast_1d(axes), pairs):
        vals = [res[a]["median"], res[b]["median"]]
        ax.bar(["recurl", "sb3-contrib (1 thread)"], vals, color=["tab:blue", "tab:grey"])
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Command line: run :func:`run_bench` and write its report (default: the repository's docs/)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DOCS))
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer steps, one seed")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-sb3", action="store_true")
    p.add_argument("--no-solve", action="store_true")
    a = p.parse_args(argv)
    run_bench(a.out, a.quick, a.seeds, not a.no_sb3, not a.no_solve, a.repeats)


if __name__ == "__main__":
    main()

