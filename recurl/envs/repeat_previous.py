"""A recall task in the style of POPGym's RepeatPrevious.

Each step shows a random card suit (one of ``n_suits``) and the agent must name the suit shown ``k``
steps earlier. Observation ``Box(0, 1, (n_suits,), float32)`` (one-hot suit); actions
``Discrete(n_suits)``. For ``t >= k`` a correct answer earns ``+1 / (length - k)`` and a wrong one
``-1 / (length - k)``, so returns lie in ``[-1, 1]``; the first ``k`` answers earn nothing. The episode
terminates after ``length`` steps. A memoryless policy scores about ``(2 / n_suits) - 1``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class RepeatPreviousEnv(gym.Env[np.ndarray, np.int64]):
    """Name the suit seen ``k`` steps ago (POPGym RepeatPrevious, easy: ``k = 4``, 52 cards)."""

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, k: int = 4, length: int = 52, n_suits: int = 4, render_mode: str | None = None) -> None:
        if not 1 <= k < length:
            raise ValueError(f"RepeatPrevious needs 1 <= k < length, got k={k}, length={length}")
        self.k, self.length, self.n_suits = k, length, n_suits
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0.0, 1.0, (n_suits,), np.float32)
        self.action_space = gym.spaces.Discrete(n_suits)
        self._cards = np.zeros(length, np.int64)
        self._t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.n_suits, np.float32)
        obs[self._cards[self._t]] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._cards = self.np_random.integers(self.n_suits, size=self.length)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"invalid RepeatPrevious action {action!r}: expected an int in [0, {self.n_suits})")
        reward = 0.0
        if self._t >= self.k:
            correct = int(action) == self._cards[self._t - self.k]
            reward = (1.0 if correct else -1.0) / (self.length - self.k)
        self._t += 1
        terminated = self._t >= self.length
        if terminated:
            self._t = self.length - 1  # keep the last card on screen for the terminal observation
        return self._obs(), reward, terminated, False, {}

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return f"t={self._t} card={'SHDC'[self._cards[self._t] % 4]}\n"
