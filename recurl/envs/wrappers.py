"""Vector-env wrappers that give a memory policy more to remember with."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from recurl.errors import RecurlError


def action_features(space: gym.Space) -> int:
    """Width of the float encoding of an action: one-hot for (Multi)Discrete, the vector for Box."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(space.nvec.sum())
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    raise RecurlError(f"unsupported action space {space}: use Discrete, MultiDiscrete or Box")


def encode_actions(space: gym.Space, actions: np.ndarray) -> np.ndarray:
    """``actions[N, ...]`` -> float32 ``[N, action_features(space)]`` (one-hot for discrete actions)."""
    n = actions.shape[0]
    if isinstance(space, gym.spaces.Discrete):
        out = np.zeros((n, int(space.n)), np.float32)
        out[np.arange(n), actions.astype(np.int64) - int(space.start)] = 1.0
        return out
    if isinstance(space, gym.spaces.MultiDiscrete):
        offsets = np.concatenate([[0], np.cumsum(space.nvec.ravel())[:-1]])
        out = np.zeros((n, int(space.nvec.sum())), np.float32)
        out[np.arange(n)[:, None], offsets[None] + actions.reshape(n, -1).astype(np.int64)] = 1.0
        return out
    return actions.reshape(n, -1).astype(np.float32)


class PrevActionReward(gym.vector.VectorWrapper):
    """Observation becomes ``Dict(obs, prev_action, prev_reward)``; both are zero at every episode start.

    Works with Gymnasium's NEXT_STEP autoreset: the step that resets a sub-env returns its first
    observation, so that step's action and reward (ignored by the env) are replaced by zeros.
    """

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        mode = env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if mode != gym.vector.AutoresetMode.NEXT_STEP:
            raise RecurlError(f"PrevActionReward needs NEXT_STEP autoreset, the env uses {mode}")
        self._act_space = env.single_action_space
        width = action_features(self._act_space)
        self.single_observation_space = gym.spaces.Dict(
            {
                "obs": env.single_observation_space,
                "prev_action": gym.spaces.Box(-np.inf, np.inf, (width,), np.float32),
                "prev_reward": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            }
        )
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, env.num_envs)
        self._resetting = np.zeros(env.num_envs, bool)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._resetting[:] = False
        n = self.num_envs
        zeros_a = np.zeros((n, action_features(self._act_space)), np.float32)
        return {"obs": obs, "prev_action": zeros_a, "prev_reward": np.zeros((n, 1), np.float32)}, info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        prev_a = encode_actions(self._act_space, np.asarray(actions))
        prev_r = np.asarray(reward, np.float32).reshape(-1, 1).copy()
        prev_a[self._resetting] = 0.0
        prev_r[self._resetting] = 0.0
        self._resetting = np.logical_or(terminated, truncated)
        return {"obs": obs, "prev_action": prev_a, "prev_reward": prev_r}, reward, terminated, truncated, info
