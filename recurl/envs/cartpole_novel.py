"""CartPole-v1 with both velocities removed (rl-baselines3-zoo's ``CartPoleNoVel-v1``).

The observation keeps cart position and pole angle, ``Box(2,)`` float32; the policy must infer both
velocities from the history, so a memoryless policy cannot balance the pole for long.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv, CartPoleVectorEnv
from gymnasium.wrappers.vector import TransformObservation as VectorTransformObservation

_KEEP = np.array([0, 2])  # x, theta (drop x_dot, theta_dot)


def _space(full: gym.spaces.Box) -> gym.spaces.Box:
    return gym.spaces.Box(full.low[_KEEP], full.high[_KEEP], dtype=np.float32)


class CartPoleNoVelEnv(CartPoleEnv):
    """Single env: Gymnasium's ``CartPoleEnv`` whose observations are ``[x, theta]``."""

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        self.observation_space = _space(self.observation_space)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        return obs[_KEEP], info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs[_KEEP], reward, terminated, truncated, info


def make_cartpole_novel_vec(num_envs: int = 1, max_episode_steps: int = 500, **kwargs) -> gym.vector.VectorEnv:
    """Gymnasium's native batched ``CartPoleVectorEnv`` (NEXT_STEP autoreset) minus the velocities."""
    env = CartPoleVectorEnv(num_envs=num_envs, max_episode_steps=max_episode_steps, **kwargs)
    single = _space(env.single_observation_space)
    return VectorTransformObservation(
        env,
        func=lambda obs: obs[:, _KEEP],
        observation_space=gym.vector.utils.batch_space(single, num_envs),
        single_observation_space=single,
    )
