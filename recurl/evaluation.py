"""Evaluation that threads the recurrent state per env: mean return, success rate, episode length."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch

from recurl.collector import Collector
from recurl.errors import RecurlError


class ActingPolicy(Protocol):
    """What evaluation needs of a policy: acting with the actor's state (every recurl policy has it)."""

    def initial_act_state(self, batch: int, device: torch.device | str | None = None) -> tuple: ...

    def act(self, obs: Any, state: tuple, is_first: torch.Tensor | None,
            mask: torch.Tensor | None = None) -> tuple[Any, tuple]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


class ActingModel(Protocol):
    """A trained model as :func:`evaluate_policy` sees it (:class:`~recurl.RecurrentPPO`, R2D2, BC)."""

    policy: ActingPolicy
    device: torch.device
    action_delay: int

    def make_env(self, n: int, render_mode: str | None = None) -> gym.vector.VectorEnv: ...


@torch.inference_mode()
def run_episodes(
    policy: ActingPolicy,
    env: gym.vector.VectorEnv,
    n_episodes: int,
    seed: int = 0,
    deterministic: bool = True,
    device: torch.device | str = "cpu",
    action_delay: int = 0,
    masks: bool = True,
) -> dict[str, Any]:
    """Play exactly ``n_episodes`` through the :class:`~recurl.collector.Collector` (the first ones to finish
    are not favoured: each env plays a fixed quota).

    Returns ``mean_return``, ``std_return``, ``mean_length``, ``success_rate`` (``None`` when the env
    reports no ``info["success"]``), ``mean_optimal_steps`` and ``steps_over_optimal`` (mean over
    successful episodes of length minus the optimum, for envs that report ``info["optimal_steps"]`` at
    reset, like the swamp tour), and per-episode ``returns``, ``lengths``, ``successes``.
    """
    if n_episodes < 1:
        raise RecurlError(f"n_episodes must be >= 1, got {n_episodes}")
    n = env.num_envs
    quota = np.full(n, n_episodes // n) + (np.arange(n) < n_episodes % n)
    col = Collector(env, device, action_delay=action_delay, masks=masks)
    optimal = np.full(n, np.nan)  # per-env optimum of the current episode, when the env reports one
    _note_optimal(optimal, col.reset(seed, policy.initial_act_state(n, device)))
    returns: list[float] = []
    lengths: list[int] = []
    successes: list[bool] = []
    optima: list[float] = []
    done_count = np.zeros(n, np.int64)
    while (done_count < quota).any():
        dist, state = policy.act(col.obs, col.state, col.is_first, col.action_mask)
        step = col.step(dist.mode() if deterministic else dist.sample(), state)
        for i, ret, length in zip(step.finished, step.episode_returns, step.episode_lengths):
            if done_count[i] >= quota[i]:
                continue
            returns.append(float(ret))
            lengths.append(int(length))
            if (ok := step.success(int(i))) is not None:
                successes.append(ok)
            optima.append(float(optimal[i]))
            done_count[i] += 1
        _note_optimal(optimal, step.info)  # autoreset steps report the next episode's optimum
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


def evaluate_policy(model: ActingModel, env: gym.vector.VectorEnv | None = None, n_episodes: int = 100,
                    deterministic: bool = True, seed: int = 10_000, num_envs: int = 16) -> dict[str, Any]:
    """Evaluate a trained model (e.g. :class:`~recurl.RecurrentPPO`) on ``env`` or a fresh copy of its own.

    The recurrent state is kept per env and reset at each episode's first observation; a behaviour-cloned
    model's action delay is applied.
    """
    if not isinstance(n_episodes, int) or n_episodes < 1:
        raise RecurlError(f"n_episodes must be an integer >= 1, got {n_episodes!r}")
    own = env is None
    env = env or model.make_env(min(num_envs, n_episodes))
    try:
        model.policy.eval()
        return run_episodes(model.policy, env, n_episodes, seed, deterministic, model.device, model.action_delay,
                            bool(model.config.policy.action_masks))
    finally:
        model.policy.train()
        if own:
            env.close()


class EvalCallback:
    """Evaluate every ``every`` env steps, keep the best policy, and stop once it holds (SB3's
    ``EvalCallback`` + ``StopTrainingOnRewardThreshold``, with a hold requirement).

    Each evaluation plays ``episodes`` deterministic episodes on fresh seeds (``20_000 + k`` for the
    ``k``-th, so holding means solving new episodes, not the same ones again). The best-so-far model goes
    to ``run_dir/best`` and every evaluation to ``run_dir/evaluations.csv``; ``stop_at`` and ``hold``: stop
    after ``hold`` consecutive evaluations with mean return ``>= stop_at``, so the final policy is the
    held one. Its progress lives in ``model.eval_record`` (saved with checkpoints, so a resumed run keeps
    its best and its streak); evaluation time is kept apart from training time (``time_s``).
    """

    def __init__(self, every: int, episodes: int, stop_at: float | None = None, hold: int = 1,
                 run_dir: str | Path | None = None) -> None:
        self.every, self.episodes, self.stop_at, self.hold = every, episodes, stop_at, hold
        self.run_dir = Path(run_dir) if run_dir is not None else None

    def __call__(self, model: Any) -> bool:
        rec = model.eval_record
        if model.num_timesteps - rec["last_step"] < self.every:
            return True
        t0 = time.perf_counter()
        r = evaluate_policy(model, n_episodes=self.episodes, seed=20_000 + rec["evaluations"])
        rec["time_s"] += time.perf_counter() - t0
        rec["last_step"], rec["evaluations"] = model.num_timesteps, rec["evaluations"] + 1
        mean = r["mean_return"]
        if rec["best"] is None or mean > rec["best"]:
            rec["best"] = mean
            if self.run_dir is not None:
                model.save(self.run_dir / "best")
        rec["streak"] = rec["streak"] + 1 if self.stop_at is not None and mean >= self.stop_at else 0
        rec["held"] = self.stop_at is not None and rec["streak"] >= self.hold
        if self.run_dir is not None:
            _append_row(self.run_dir / "evaluations.csv", {
                "env_steps": model.num_timesteps, "mean_return": mean, "std_return": r["std_return"],
                "success_rate": r["success_rate"], "mean_length": r["mean_length"], "eval_time_s": rec["time_s"]})
        return not rec["held"]


def new_eval_record() -> dict[str, Any]:
    """The state of :class:`EvalCallback`, kept on the model: JSON-able numbers only."""
    return {"last_step": 0, "evaluations": 0, "best": None, "streak": 0, "held": False, "time_s": 0.0}


def _append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, list(row))
        if new:
            w.writeheader()
        w.writerow(row)
