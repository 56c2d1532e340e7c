"""What every algorithm that trains a :class:`~recurl.nn.policy.RecurrentPolicy` shares: acting.

PPO and behaviour cloning both end with a recurrent policy; ``predict`` (SB3's signature), the
conversion of sampled actions to env actions, and snapshots live here once.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from recurl.errors import RecurlError
from recurl.nn.policy import RecurrentPolicy
from recurl.obs import ObsConverter


class PolicyModel:
    """Mixin for algorithms with ``policy``, ``device``, ``obs_conv`` and ``action_space`` attributes."""

    policy: RecurrentPolicy
    device: torch.device
    obs_conv: ObsConverter
    action_space: gym.Space

    def _env_action(self, action: torch.Tensor) -> np.ndarray:
        a = action.cpu().numpy()
        if isinstance(self.action_space, gym.spaces.Box):
            a = np.clip(a, self.action_space.low, self.action_space.high)
        return a

    # -- acting ------------------------------------------------------------------------------------------
    def predict(
        self,
        observation: Any,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Act on one observation or a batch, threading the recurrent state (SB3's signature).

        Args:
            observation: one observation (shape of the observation space) or a batch ``[N, ...]``.
            state: the state returned by the previous call (``None``: zero state, episode start).
            episode_start: ``[N]`` bools, true where ``observation`` starts a new episode.
        Returns ``(action, state)``: actions ``[N, ...]`` (or one action for an unbatched observation)
        and the new state, a tuple of ``[layers, N, H]`` float32 arrays.
        """
        obs, n, batched = self.obs_conv.from_user(observation, self.device)
        if state is None:
            torch_state = self.policy.initial_state(n, self.device)
        else:
            torch_state = tuple(torch.as_tensor(s, dtype=torch.float32, device=self.device) for s in state)
            expect = [(L, n, H) for L, _, H in self._state_shapes()]
            if [tuple(s.shape) for s in torch_state] != expect:
                raise RecurlError(f"state shapes {[tuple(s.shape) for s in torch_state]} do not match {n} "
                                  f"observation(s): expected {expect}; pass the state returned by the previous "
                                  "predict call, or None")
        if episode_start is None:
            is_first = torch.full((n,), state is None, dtype=torch.bool, device=self.device)
        else:
            is_first = torch.as_tensor(np.asarray(episode_start, bool).reshape(n), device=self.device)
        with torch.inference_mode():
            dist, new_state = self.policy.act(obs, torch_state, is_first)
            action = dist.mode() if deterministic else dist.sample()
        a = self._env_action(action)
        return (a if batched else a[0]), tuple(s.cpu().numpy() for s in new_state)

    def _state_shapes(self) -> list[tuple[int, int, int]]:
        if not hasattr(self, "_shapes"):
            self._shapes = [tuple(s.shape) for s in self.policy.initial_state(1, "cpu")]
        return self._shapes

    def copy_policy(self) -> RecurrentPolicy:
        """A frozen copy of the current policy (e.g. a teacher or a snapshot for evaluation)."""
        return copy.deepcopy(self.policy).eval().requires_grad_(False)
