"""Pendulum-v1 with half of its state hidden (Ni et al. 2022, pomdp-baselines' ``Pendulum-P``/``-V``).

Gymnasium's ``Pendulum-v1`` observes ``[cos(theta), sin(theta), theta_dot]``. Two POMDPs remove part of it:

- ``recurl/Pendulum-P-v1`` keeps the *position*, ``[cos(theta), sin(theta)]`` (``Box(2,)``): the angular
  velocity must be inferred from consecutive angles.
- ``recurl/Pendulum-V-v1`` keeps the *velocity*, ``[theta_dot]`` (``Box(1,)``): the angle must be integrated
  from the velocities (and the actions).

Dynamics, reward, action space ``Box(-2, 2, (1,))`` and the 200-step time limit are Pendulum-v1's.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv

KEEP = {"P": np.array([0, 1]), "V": np.array([2])}  # cos, sin | theta_dot


class PendulumPOMDPEnv(PendulumEnv):
    """Gymnasium's ``PendulumEnv`` observing only ``KEEP[keep]`` of ``[cos(theta), sin(theta), theta_dot]``."""

    def __init__(self, keep: str = "P", render_mode: str | None = None, g: float = 10.0) -> None:
        super().__init__(render_mode=render_mode, g=g)
        self._keep = KEEP[keep]
        full = self.observation_space
        self.observation_space = gym.spaces.Box(full.low[self._keep], full.high[self._keep], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        return obs[self._keep], info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs[self._keep], reward, terminated, truncated, info
