"""Recording demonstrations: roll out an agent (a trained run, or any scripted expert) and save a dataset.

``recurl record --env ID --from RUN_DIR --episodes N --out PATH`` is :func:`record_run`. Any object
with ``reset(env)`` and ``act(obs)`` (:class:`Agent`) can be recorded with :func:`collect_episodes`,
e.g. a planner that reads the map from ``env.unwrapped`` (see ``bench/bc_swamptour.py``). Both step
through :class:`recurl.collector.Collector`, like training and evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch

from recurl.agent import Agent as Runtime
from recurl.collector import Collector
from recurl.data.trajectories import Episode, write_dataset
from recurl.envs import make_vec_env, resolve_env_id
from recurl.errors import RecurlError
from recurl.runs import load_model


class Agent(Protocol):
    """A scripted expert: ``reset(env)`` at each episode start (``env`` is the single env, so a planner can
    read ``env.unwrapped``), then ``act(obs)`` per step, returning an env action."""

    def reset(self, env: gym.Env) -> None: ...

    def act(self, obs: Any) -> Any: ...


class PolicyAgent:
    """A trained model as an :class:`Agent`, through the deployment runtime :class:`recurl.Agent` (which
    threads the recurrent state and runs any action delay)."""

    def __init__(self, model: Any, deterministic: bool = True) -> None:
        self.runtime = Runtime(model, deterministic=deterministic)

    def reset(self, env: gym.Env) -> None:
        self.runtime.reset(1)

    def act(self, obs: Any) -> Any:
        return self.runtime.act(obs)


def collect_episodes(env: gym.Env, agent: Agent, episodes: int, seed: int | None = 0) -> list[Episode]:
    """Play ``episodes`` whole episodes of ``agent`` in the single env ``env``, through the collector.

    ``seed`` seeds the first reset only; later resets continue the env's own generator, so a run is
    reproducible and its layouts all differ.
    """
    vec = gym.vector.SyncVectorEnv([lambda: env])
    col = Collector(vec, record=True, policy_actions=False)
    col.reset(seed, ())
    out: list[Episode] = []
    while len(out) < episodes:
        if col.is_first[0]:
            agent.reset(env)
        obs = {k: v[0] for k, v in col.obs.items()} if isinstance(col.obs, dict) else col.obs[0]
        col.step(np.asarray(agent.act(_numpy(obs)))[None])
        out += col.pop_episodes()
    return out[:episodes]


def _numpy(obs: Any) -> Any:
    return {k: v.numpy() for k, v in obs.items()} if isinstance(obs, dict) else obs.numpy()


@torch.inference_mode()
def record_run(run_dir: str | Path, out: str | Path, episodes: int, env_id: str | None = None,
               deterministic: bool = True, seed: int = 0, device: str = "cpu") -> tuple[Path, dict[str, float]]:
    """Roll out the model in ``run_dir`` for ``episodes`` episodes through the collector and write them as a
    Minari dataset (the actions recorded are the ones the env executed).

    ``env_id`` defaults to the run's own env (with its env kwargs). Returns the dataset path and
    ``{"episodes", "mean_return", "success_rate"}`` of the recorded episodes (``success_rate`` is NaN
    when the env reports no success).
    """
    if episodes < 1:
        raise RecurlError("--episodes must be >= 1")
    model = load_model(run_dir, device=device)
    cfg = model.config
    if getattr(cfg, "prev_action_reward", False):
        raise RecurlError(f"{run_dir} sees its previous action and reward through an env wrapper "
                          "(prev_action_reward): recording its episodes is not supported")
    run_env = resolve_env_id(cfg.env)  # from the run's file: registered ids only
    env_id = run_env if env_id is None else resolve_env_id(env_id, allow_import=True)  # typed by the user
    same_env = env_id == run_env
    env_kwargs = dict(cfg.env_kwargs) if same_env else {}
    col = Collector(make_vec_env(env_id, 1, env_kwargs), model.device, model.action_delay, record=True,
                    env_id=env_id, masks=bool(model.config.policy.action_masks))
    recorded: list[Episode] = []
    successes: list[float] = []
    try:
        model.policy.eval()
        col.reset(seed, model.policy.initial_act_state(1, model.device))
        while len(recorded) < episodes:
            dist, state = model.policy.act(col.obs, col.state, col.is_first, col.action_mask)
            step = col.step(dist.mode() if deterministic else dist.sample(), state)
            if step.finished.size and (ok := step.success(0)) is not None:
                successes.append(float(ok))
            recorded += col.pop_episodes()
    finally:
        col.env.close()
    path = write_dataset(out, recorded, env_id, env_kwargs, algorithm_name=f"recurl {cfg.__class__.__name__}",
                         description=f"{episodes} episodes of {run_dir} "
                                     f"({'deterministic' if deterministic else 'sampled'} actions)")
    stats = {"episodes": float(episodes),
             "mean_return": float(np.mean([ep.rewards.sum() for ep in recorded])),
             "success_rate": float(np.mean(successes)) if successes else float("nan")}
    return path, stats
