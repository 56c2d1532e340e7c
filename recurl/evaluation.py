"""Evaluation that threads the recurrent state per env: mean return, success rate, episode length."""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch

from recurl.nn.policy import RecurrentPolicy
from recurl.obs import ObsConverter


class HasPolicy(Protocol):
    policy: RecurrentPolicy
    device: torch.device

    def _make_env(self, n: int, render_mode: str | None = None) -> gym.vector.VectorEnv: ...


@torch.inference_mode()
def run_episodes(
    policy: RecurrentPolicy,
    env: gym.vector.VectorEnv,
    n_episodes: int,
    seed: int = 0,
    deterministic: bool = True,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Play exactly ``n_episodes`` (the first ones to finish are not favoured: each env plays a fixed quota).

    Returns ``mean_return``, ``std_return``, ``mean_length``, ``success_rate`` (``None`` when the env
    reports no ``info["success"]``), ``mean_optimal_steps`` and ``steps_over_optimal`` (mean over
    successful episodes of length minus the optimum, for envs that report ``info["optimal_steps"]`` at
    reset, like the swamp tour), and per-episode ``returns``, ``lengths``, ``successes``.
    """
    n = env.num_envs
    quota = np.full(n, n_episodes // n) + (np.arange(n) < n_episodes % n)
    conv = ObsConverter(env.single_observation_space)
    obs, info = env.reset(seed=seed)
    optimal = np.full(n, np.nan)  # per-env optimum of the current episode, when the env reports one
    _note_optimal(optimal, info)
    state = policy.initial_state(n, device)
    is_first = torch.ones(n, dtype=torch.bool, device=device)
    valid = np.ones(n, bool)
    ret, length = np.zeros(n), np.zeros(n, np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    successes: list[bool] = []
    optima: list[float] = []
    done_count = np.zeros(n, np.int64)
    box = isinstance(env.single_action_space, gym.spaces.Box)
    while (done_count < quota).any():
        dist, state = policy.act(conv.to_torch(obs, device), state, is_first)
        action = (dist.mode() if deterministic else dist.sample()).cpu().numpy()
        if box:
            action = np.clip(action, env.single_action_space.low, env.single_action_space.high)
        obs, reward, term, trunc, info = env.step(action)
        counting = valid & (done_count < quota)
        ret += np.where(counting, reward, 0.0)
        length += counting
        done = np.logical_or(term, trunc)
        for i in np.flatnonzero(done & counting):
            returns.append(float(ret[i]))
            lengths.append(int(length[i]))
            if "success" in info and info.get("_success", np.ones(n, bool))[i]:
                successes.append(bool(info["success"][i]))
            optima.append(float(optimal[i]))
            done_count[i] += 1
        _note_optimal(optimal, info)  # autoreset steps report the next episode's optimum
        ret[done], length[done] = 0.0, 0
        is_first = torch.as_tensor(~valid, device=device)
        valid = ~done
    over = [ln - o for ln, o, ok in zip(lengths, optima, successes or [True] * len(lengths)) if ok and o == o]
    return {
        "episodes": len(returns),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "success_rate": float(np.mean(successes)) if successes else None,
        "mean_optimal_steps": float(np.nanmean(optima)) if not np.isnan(optima).all() else None,
        "steps_over_optimal": float(np.mean(over)) if over else None,
        "returns": returns,
        "lengths": lengths,
        "successes": successes,
    }


def _note_optimal(optimal: np.ndarray, info: dict[str, Any]) -> None:
    if "optimal_steps" in info:
        mask = info.get("_optimal_steps", np.ones(len(optimal), bool))
        optimal[mask] = np.asarray(info["optimal_steps"])[mask]


def evaluate_policy(model: HasPolicy, env: gym.vector.VectorEnv | None = None, n_episodes: int = 100,
                    deterministic: bool = True, seed: int = 10_000, num_envs: int = 16) -> dict[str, Any]:
    """Evaluate a trained model (e.g. :class:`~recurl.RecurrentPPO`) on ``env`` or a fresh copy of its own.

    The recurrent state is kept per env and reset at each episode's first observation.
    """
    own = env is None
    env = env or model._make_env(min(num_envs, n_episodes))
    try:
        model.policy.eval()
        return run_episodes(model.policy, env, n_episodes, seed, deterministic, model.device)
    finally:
        model.policy.train()
        if own:
            env.close()
