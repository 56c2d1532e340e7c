"""Recording demonstrations: roll out an agent (a trained run, or any scripted expert) and save a dataset.

``recurl record --env ID --from RUN_DIR --episodes N --out PATH`` is :func:`record_run`. Any object
with ``reset(env)`` and ``act(obs)`` (:class:`Agent`) can be recorded with :func:`collect_episodes`,
e.g. a planner that reads the map from ``env.unwrapped`` (see ``bench/bc_swamptour.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from recurl.data.trajectories import Episode, episode_from_lists, write_dataset
from recurl.envs import resolve_env_id
from recurl.errors import RecurlError


class Agent(Protocol):
    """Something that plays episodes: ``reset(env)`` after each env reset, then ``act(obs)`` per step."""

    def reset(self, env: gym.Env) -> None: ...

    def act(self, obs: Any) -> Any: ...


class PolicyAgent:
    """A trained model (anything :func:`recurl.runs.load_model` returns) as an :class:`Agent`, through the
    deployment runtime :class:`recurl.Agent`, which threads the recurrent state through the episode."""

    def __init__(self, model: Any, deterministic: bool = True) -> None:
        from recurl.agent import Agent as Runtime

        self.runtime = Runtime(model, deterministic=deterministic)

    def reset(self, env: gym.Env) -> None:
        self.runtime.reset(1)

    def act(self, obs: Any) -> Any:
        return self.runtime.act(obs)


def collect_episodes(env: gym.Env, agent: Agent, episodes: int, seed: int | None = 0) -> list[Episode]:
    """Play ``episodes`` whole episodes of ``agent`` in the single env ``env``.

    ``seed`` seeds the first reset only; later resets continue the env's own generator, so a run is
    reproducible and its layouts all differ.
    """
    out: list[Episode] = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed if i == 0 else None)
        agent.reset(env)
        data: dict[str, list[Any]] = {"obs": [obs], "actions": [], "rewards": [], "terminated": [], "truncated": []}
        done = False
        while not done:
            action = agent.act(obs)
            obs, reward, term, trunc, _ = env.step(action)
            for key, value in (("obs", obs), ("actions", action), ("rewards", float(reward)),
                               ("terminated", bool(term)), ("truncated", bool(trunc))):
                data[key].append(value)
            done = term or trunc
        out.append(episode_from_lists(**data))
    return out


def record_run(run_dir: str | Path, out: str | Path, episodes: int, env_id: str | None = None,
               deterministic: bool = True, seed: int = 0, device: str = "cpu") -> tuple[Path, dict[str, float]]:
    """Roll out the model in ``run_dir`` for ``episodes`` episodes and write them as a Minari dataset.

    ``env_id`` defaults to the run's own env (with its env kwargs). Returns the dataset path and
    ``{"episodes", "mean_return", "success_rate"}`` of the recorded episodes (``success_rate`` is NaN
    when the env reports no success).
    """
    from recurl.runs import load_model

    if episodes < 1:
        raise RecurlError("--episodes must be >= 1")
    model = load_model(run_dir, device=device)
    cfg = model.config
    if getattr(cfg, "prev_action_reward", False) or getattr(cfg, "action_delay", 0):
        raise RecurlError(f"{run_dir} acts through an env wrapper (prev_action_reward or action_delay): "
                          "recording its episodes is not supported")
    same_env = env_id is None or resolve_env_id(env_id) == resolve_env_id(cfg.env)
    env_id = resolve_env_id(cfg.env if env_id is None else env_id)
    env_kwargs = dict(cfg.env_kwargs) if same_env else {}
    env = gym.make(env_id, **env_kwargs)
    successes: list[float] = []
    try:
        agent = PolicyAgent(model, deterministic)
        recorded = collect_episodes(_SuccessProbe(env, successes), agent, episodes, seed)
    finally:
        env.close()
    path = write_dataset(out, recorded, env_id, env_kwargs, algorithm_name=f"recurl {cfg.__class__.__name__}",
                         description=f"{episodes} episodes of {run_dir} "
                                     f"({'deterministic' if deterministic else 'sampled'} actions)")
    stats = {"episodes": float(episodes),
             "mean_return": float(np.mean([ep.rewards.sum() for ep in recorded])),
             "success_rate": float(np.mean(successes)) if successes else float("nan")}
    return path, stats


class _SuccessProbe(gym.Wrapper):
    """Appends ``info["success"]`` at each episode end to a list (for the recording summary)."""

    def __init__(self, env: gym.Env, sink: list[float]) -> None:
        super().__init__(env)
        self.sink = sink

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, term, trunc, info = self.env.step(action)
        if (term or trunc) and "success" in info:
            self.sink.append(float(info["success"]))
        return obs, reward, term, trunc, info
