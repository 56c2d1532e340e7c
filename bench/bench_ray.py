"""Scaling of ``--workers`` on this machine, with an env slow enough for workers to matter.

The env is recurl's T-maze (corridor 8) behind a wrapper that sleeps ``--sleep-ms`` (1 ms) per step, a
stand-in for a game or a simulator. For PPO (rollout workers) and R2D2 (Ape-X actors) it measures env
steps/s and learner updates/s with the envs in the learner's process and with 1 and 2 workers, and the
costs the projection in docs/distributed.md is built from: the weights broadcast per update (bytes, and
the time of ``ray.put`` plus every worker reading them), the bytes a worker sends back per env step, and
the learner's time per update.

    python bench/bench_ray.py [--sleep-ms 1] [--out docs/results/bench_ray.json]

Every number is wall time on a local cluster (``ray.init(num_cpus=2)``); run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import ray
import torch

from recurl.algos.ppo import RecurrentPPO
from recurl.algos.r2d2 import R2D2, QNetworkConfig

SLOW_ID = "bench/SlowTMaze-v0"
SLEEP_S = 0.001


class Sleepy(gym.Wrapper):
    """Sleeps a fixed time per step: the cost of a slow simulator, without using the CPU."""

    def step(self, action):
        time.sleep(SLEEP_S)
        return self.env.step(action)


def _make_slow(**kwargs) -> gym.Env:
    from recurl.envs.tmaze import TMazeEnv

    return Sleepy(TMazeEnv(**kwargs))


def register_slow_env() -> None:
    """Registers the slow env in this process; Ray runs it in every worker process too (setup hook)."""
    if SLOW_ID not in gym.registry:
        gym.register(SLOW_ID, entry_point=_make_slow, kwargs={"length": 8})


PPO_KW = dict(num_envs=8, n_steps=32, batch_size=128, n_epochs=4, device="cpu", seed=0)
R2D2_KW = dict(num_envs=8, seq_len=12, overlap=0, burn_in=0, learning_starts=500, batch_size=16, train_every=8,
               sync_every=25, device="cpu", seed=0, policy=QNetworkConfig(hidden_size=32, encoder_hidden=(32,)))


def bench_ppo(workers: int, updates: int) -> dict:
    m = RecurrentPPO(SLOW_ID, workers=workers, **PPO_KW)
    m.learn(total_steps=PPO_KW["num_envs"] * PPO_KW["n_steps"], progress_bar=False)  # start workers, warm up
    t0 = time.perf_counter()
    collect = update = 0.0

    def phases(model):
        nonlocal collect, update
        collect += model.timing["collect_s"]
        update += model.timing["update_s"]

    steps = PPO_KW["num_envs"] * PPO_KW["n_steps"] * updates
    m.learn(total_steps=steps, callback=phases, progress_bar=False)
    wall = time.perf_counter() - t0
    out = {"algo": "ppo", "workers": workers, "env_steps_per_s": steps / wall, "updates_per_s": updates / wall,
           "collect_s_per_update": collect / updates, "learner_s_per_update": update / updates}
    if workers:
        out.update(_transfer_costs(m))
        m.shutdown_workers()
    return out


def _transfer_costs(m: RecurrentPPO) -> dict:
    """Bytes and time of the weight broadcast, and the bytes of one worker's rollout per env step."""
    weights = {k: v.detach().cpu() for k, v in m.policy.state_dict().items()}
    size = sum(v.numel() * v.element_size() for v in weights.values())
    ts = []
    for _ in range(5):  # one put, then every worker receives the weights (a call that only takes them)
        t = time.perf_counter()
        ref = m.pool.put(weights)
        ray.get([a.ping.remote(ref) for a in m.pool.actors])
        ts.append(time.perf_counter() - t)
    k = m.config.num_envs // m.config.workers
    part = m.pool.map("rollout", [(m.pool.put(weights), torch.get_rng_state(), m.n_updates, False)])[0]
    return {"weights_bytes": size, "broadcast_s": float(np.median(ts)),
            "rollout_bytes_per_env_step": len(pickle.dumps(part["buffer"])) / (k * m.config.n_steps)}


def bench_r2d2(workers: int, steps: int) -> dict:
    m = R2D2(SLOW_ID, workers=workers, **R2D2_KW)
    m.learn(total_steps=R2D2_KW["learning_starts"] + 200, progress_bar=False)  # start workers, fill the replay
    n0, t0 = m.n_updates, time.perf_counter()
    m.learn(total_steps=steps, reset_num_timesteps=False, progress_bar=False)
    wall = time.perf_counter() - t0
    n_learn = m.n_updates - n0
    # the learner's own cost: updates alone, back to back
    t = time.perf_counter()
    for _ in range(50):
        m._update(m.replay)
    learner_s = (time.perf_counter() - t) / 50
    out = {"algo": "r2d2", "workers": workers, "env_steps_per_s": steps / wall,
           "updates_per_s": n_learn / wall, "learner_s_per_update": learner_s}
    if workers:
        m.shutdown_workers()
    return out


def main() -> None:
    global SLEEP_S
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sleep-ms", type=float, default=1.0)
    p.add_argument("--ppo-updates", type=int, default=6)
    p.add_argument("--r2d2-steps", type=int, default=4000)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    SLEEP_S = a.sleep_ms / 1000
    register_slow_env()
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": register_slow_env})
    rows = []
    for workers in (0, 1, 2):
        rows.append(bench_ppo(workers, a.ppo_updates))
        print(json.dumps(rows[-1]), flush=True)
    for workers in (0, 1, 2):
        rows.append(bench_r2d2(workers, a.r2d2_steps))
        print(json.dumps(rows[-1]), flush=True)
    meta = {"sleep_ms": a.sleep_ms, "ray": ray.__version__, "torch": torch.__version__, "cpu": platform.processor(),
            "ppo": {k: v for k, v in PPO_KW.items()}, "r2d2": {k: str(v) for k, v in R2D2_KW.items()}}
    print("\n| algo | workers | env steps/s | updates/s | learner s/update |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['algo']} | {r['workers']} | {r['env_steps_per_s']:.0f} | {r['updates_per_s']:.1f} | "
              f"{r['learner_s_per_update'] * 1000:.1f} ms |")
    if a.out:
        Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
