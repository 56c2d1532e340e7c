"""A passive T-maze (Bakker 2002): remember a cue seen once, act on it many steps later.

The agent starts at the west end of a corridor of ``length`` cells. Only the first observation shows
the cue (go up or go down); every corridor cell looks the same afterwards. At the junction (the east
end) the agent must turn the way the cue said. A memoryless policy can reach the junction but then
guesses: about 50% success.

Observation ``Box(0, 1, (4,), float32)``: ``[cue_up, cue_down, in_corridor, at_junction]``.
Actions ``Discrete(3)``: 0 = forward (east), 1 = turn up, 2 = turn down. Turning inside the corridor
does nothing; pushing forward at the junction bumps into the wall and costs ``bump_penalty`` (0.1),
which makes dawdling there worse than guessing. Turning at the junction ends the episode with reward
``+1`` (correct, ``info["success"] = True``) or ``-wrong_penalty`` (default ``-0.1``, as in Bakker's
maze: reaching the junction pays even for a guesser, so a memoryless agent learns to walk there and
then scores about 50%). The episode is truncated after ``max_steps`` (default ``3 * length + 10``)
with no final reward.

``lag_penalty`` (default 0) is Ni et al.'s (2023, the Memory-RL code) shaping for long corridors: each step
that ends behind schedule (fewer cells forward than steps taken) adds this reward (use a negative value,
e.g. ``-1 / length``), so walking east is learned from every step rather than from the junction's reward
alone. With ``max_steps = length + 1`` as well (their fixed horizon) only the cue is left to learn: long
corridors then test memory, not exploration.

``mask_actions`` (default false) gives the env an ``action_masks()`` method (sb3-contrib's convention, which
recurl's collector reads): in the corridor only forward is valid, at the junction only the two turns. Walking
is then not learned at all and every episode is exactly ``length + 1`` steps: the one decision left is the
turn, so the task measures how long a delay the agent's memory spans and nothing else (the memory-length
measurements in docs/cores.md). Without masks, walking ``length`` cells and then turning must be explored
first, which at ``length >= 250`` is the harder part of the task.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class TMazeEnv(gym.Env[np.ndarray, np.int64]):
    """Passive T-maze with a configurable corridor length (hundreds of steps are fine)."""

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        length: int = 20,
        max_steps: int | None = None,
        bump_penalty: float = 0.1,
        wrong_penalty: float = 0.1,
        lag_penalty: float = 0.0,
        mask_actions: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if length < 1:
            raise ValueError(f"TMaze length must be >= 1, got {length}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.length = length
        self.max_steps = max_steps if max_steps is not None else 3 * length + 10
        self.bump_penalty = bump_penalty
        self.wrong_penalty = wrong_penalty
        self.lag_penalty = lag_penalty
        if mask_actions:  # only then does the env have masks (recurl detects the method)
            self.action_masks = self._action_masks
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0.0, 1.0, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self._pos = 0
        self._cue = 0
        self._t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(4, np.float32)
        if self._t == 0:
            obs[self._cue] = 1.0
        obs[3 if self._pos == self.length else 2] = 1.0
        return obs

    def _action_masks(self) -> np.ndarray:
        """``[3]`` bools: forward in the corridor, the two turns at the junction."""
        junction = self._pos == self.length
        return np.array([not junction, junction, junction])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._pos, self._t = 0, 0
        self._cue = int(self.np_random.integers(2))  # 0: up, 1: down
        return self._obs(), {"cue": self._cue}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"invalid TMaze action {action!r}: expected an int in [0, 3)")
        action = int(action)
        self._t += 1
        reward, terminated, info = 0.0, False, {}
        if action == 0 and self._pos < self.length:
            self._pos += 1
        elif action == 0:  # forward at the junction: into the wall
            reward = -self.bump_penalty
        elif self._pos == self.length:
            terminated = True
            success = action - 1 == self._cue
            reward = 1.0 if success else -self.wrong_penalty
            info["success"] = success
        if not terminated and self._pos < self._t:
            reward += self.lag_penalty
        truncated = not terminated and self._t >= self.max_steps
        if truncated:
            info["success"] = False
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        corridor = ["."] * (self.length + 1)
        corridor[self._pos] = "A"
        goal_up, goal_down = ("G", " ") if self._cue == 0 else (" ", "G")
        pad = " " * self.length
        return f"{pad}{goal_up}\n{''.join(corridor)}\n{pad}{goal_down}\n"
