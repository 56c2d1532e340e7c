"""Prioritised replay of fixed-length, overlapping sequences with stored recurrent states (R2D2).

Vocabulary (Kapturowski et al. 2019): a *window* is ``W = burn_in + seq_len`` transitions plus the
observation after the last one (``W + 1`` observations). Its first ``burn_in`` steps only warm the
recurrent state up; the last ``seq_len`` are trained on. Consecutive windows of one episode start
``stride = seq_len - overlap`` steps apart, so ``overlap`` trained steps are shared.

How episodes map onto windows:

- A window never crosses an episode. An episode's first window begins ``burn_in`` steps *before* the
  episode: those slots are padding (zero observations, ``valid`` false), and the episode's first
  observation is flagged ``is_first``, so the core zeroes its state there and the first steps are
  trained too, from the exact zero state.
- After the episode's last transition comes its final observation (the bootstrap observation of a
  truncated episode), then padding to the window's end. Padding is masked out of every loss.
- Each window stores the actor's recurrent state before its first observation (and nothing per step).

:class:`SequenceWriter` cuts the actors' streams into windows; :class:`SequenceReplay` stores them
and samples them in proportion to ``priority ** priority_exponent``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from recurl.nn.encoders import Obs
from recurl.nn.recurrent import State
from recurl.obs import ObsConverter


def _take(obs: Obs, idx: torch.Tensor | int | slice) -> Obs:
    """``obs[idx]`` for every leaf of a plain or Dict observation."""
    return {k: v[idx] for k, v in obs.items()} if isinstance(obs, dict) else obs[idx]


def _put(buf: Obs, idx: tuple | int, value: Obs) -> None:
    """``buf[idx] = value`` for every leaf."""
    if isinstance(buf, dict):
        for k in buf:
            buf[k][idx] = value[k]  # type: ignore[index]
    else:
        buf[idx] = value


class SequenceBatch(NamedTuple):
    """A sampled batch, time-major. ``W = burn_in + seq_len``; ``B`` sequences."""

    obs: Obs  # [W + 1, B, ...]
    actions: torch.Tensor  # [W, B] long (discrete), or [W, B, *action_shape] (e.g. float Box actions)
    rewards: torch.Tensor  # [W, B] float32
    terminated: torch.Tensor  # [W, B] bool: the episode ended here with no bootstrap
    valid: torch.Tensor  # [W, B] bool: a real transition (not padding)
    is_first: torch.Tensor  # [W + 1, B] bool
    state0: State  # tensors [layers, B, H]: the state before obs[0]
    masks: torch.Tensor | None  # [W + 1, B, n] bool: the valid actions at each observation (masked envs)
    weights: torch.Tensor  # [B] importance-sampling weights, max-normalised
    indices: np.ndarray  # [B] replay slots, for update_priorities


class SequenceReplay:
    """FIFO store of ``capacity`` windows, sampled proportionally to ``priority ** priority_exponent``.

    Args:
        capacity: windows kept (with ``seq_len`` >= the episode length, one window per episode).
        burn_in, seq_len: window layout (see the module docstring).
        obs_conv: converter of the observation space (plain or Dict).
        state_shapes: ``(layers, H)`` of each recurrent state tensor (``()`` for a memoryless core).
        priority_exponent: ``alpha``; 0 samples uniformly.
        stored_state: false replays every window from the zero state (DRQN's "bootstrapped random
            updates" start) instead of the stored actor state.
        mask_width: store each observation's valid-action mask of this width (0: the env has none).
        action_shape, action_dtype: one action's shape and dtype (default: a long scalar, a Discrete action;
            SAC stores ``(d,)`` float32 Box actions).
    """

    def __init__(self, capacity: int, burn_in: int, seq_len: int, obs_conv: ObsConverter,
                 state_shapes: tuple[tuple[int, int], ...], priority_exponent: float = 0.9,
                 stored_state: bool = True, seed: int = 0, mask_width: int = 0,
                 action_shape: tuple[int, ...] = (), action_dtype: torch.dtype = torch.long) -> None:
        self.capacity, self.burn_in, self.seq_len = capacity, burn_in, seq_len
        self.window = W = burn_in + seq_len
        self.alpha = priority_exponent
        self.stored_state = stored_state
        self.obs = obs_conv.empty((capacity, W + 1), torch.device("cpu"))
        self.actions = torch.zeros(capacity, W, *action_shape, dtype=action_dtype)
        self.rewards = torch.zeros(capacity, W)
        self.terminated = torch.zeros(capacity, W, dtype=torch.bool)
        self.valid = torch.zeros(capacity, W, dtype=torch.bool)
        self.is_first = torch.zeros(capacity, W + 1, dtype=torch.bool)
        self.states = tuple(torch.zeros(capacity, *shape) for shape in state_shapes)  # [C, layers, H]
        self.masks = torch.ones(capacity, W + 1, mask_width, dtype=torch.bool) if mask_width else None
        self.priorities = np.zeros(capacity, np.float64)
        self.max_priority = 1.0
        self.size = 0
        self.next = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: Obs, actions: torch.Tensor, rewards: torch.Tensor, terminated: torch.Tensor,
            valid: torch.Tensor, is_first: torch.Tensor, state0: State, masks: torch.Tensor | None = None) -> int:
        """Store one window (``obs[W + 1, ...]``, the rest ``[W]``, ``is_first[W + 1]``, ``state0`` tensors
        ``[layers, H]``, ``masks[W + 1, n]``) with the highest priority seen so far, so it is replayed soon;
        returns its slot."""
        i = self.next
        _put(self.obs, i, obs)
        self.actions[i], self.rewards[i], self.terminated[i] = actions, rewards, terminated
        self.valid[i], self.is_first[i] = valid, is_first
        for buf, s in zip(self.states, state0):
            buf[i] = s
        if self.masks is not None:
            self.masks[i] = masks
        self.priorities[i] = self.max_priority
        self.next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        return i

    def sample(self, batch_size: int, beta: float, device: torch.device) -> SequenceBatch:
        """Draw ``batch_size`` windows (with replacement) with importance weights ``(N P(i)) ** -beta``."""
        p = self.priorities[: self.size] ** self.alpha
        p /= p.sum()
        idx = self.rng.choice(self.size, batch_size, p=p)
        w = (self.size * p[idx]) ** -beta
        return self.gather(idx, w / w.max(), device)

    def gather(self, idx: np.ndarray, weights: np.ndarray, device: torch.device) -> SequenceBatch:
        """The windows at slots ``idx`` as a time-major batch with importance weights ``weights[B]``."""
        t_idx = torch.as_tensor(idx)
        obs = _take(self.obs, t_idx)
        obs = {k: v.transpose(0, 1).to(device) for k, v in obs.items()} if isinstance(obs, dict) else \
            obs.transpose(0, 1).to(device)
        state0 = tuple(s[t_idx].transpose(0, 1).contiguous().to(device) for s in self.states)
        if not self.stored_state:
            state0 = tuple(torch.zeros_like(s) for s in state0)
        return SequenceBatch(
            obs=obs,
            actions=self.actions[t_idx].transpose(0, 1).to(device),
            rewards=self.rewards[t_idx].t().to(device),
            terminated=self.terminated[t_idx].t().to(device),
            valid=self.valid[t_idx].t().to(device),
            is_first=self.is_first[t_idx].t().to(device),
            state0=state0,
            masks=None if self.masks is None else self.masks[t_idx].transpose(0, 1).to(device),
            weights=torch.as_tensor(weights, dtype=torch.float32, device=device),
            indices=idx,
        )

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set new priorities (e.g. ``eta * max|delta| + (1 - eta) * mean|delta|``) after a learner step."""
        priorities = np.maximum(priorities, 1e-6)  # a zero priority would never be replayed again
        self.priorities[indices] = priorities
        self.max_priority = max(self.max_priority, float(priorities.max()))


class SequenceWriter:
    """Cuts the streams of ``num_envs`` actors into replay windows, one episode at a time.

    Each env has a staging area of ``W + 1`` slots holding the current window: observation, action,
    reward, flags and the actor's recurrent state before each observation (states are staged per step
    only here, so that the state at the *next* window's start is at hand; the replay keeps one per
    window). A window is written to the replay when its ``W + 1``-th observation arrives, and then the
    staging area shifts by ``stride``; at an episode's end the final observation closes the last window.
    """

    def __init__(self, replay: SequenceReplay, num_envs: int, obs_conv: ObsConverter, overlap: int) -> None:
        self.replay = replay
        self.W = W = replay.window
        self.burn_in = replay.burn_in
        self.stride = replay.seq_len - overlap
        self.obs = obs_conv.empty((num_envs, W + 1), torch.device("cpu"))
        self.actions = torch.zeros(num_envs, W + 1, *replay.actions.shape[2:], dtype=replay.actions.dtype)
        self.rewards = torch.zeros(num_envs, W + 1)
        self.terminated = torch.zeros(num_envs, W + 1, dtype=torch.bool)
        self.valid = torch.zeros(num_envs, W + 1, dtype=torch.bool)
        self.is_first = torch.zeros(num_envs, W + 1, dtype=torch.bool)
        self.states = tuple(torch.zeros(num_envs, W + 1, *s.shape[1:]) for s in replay.states)
        self.masks = None if replay.masks is None else torch.ones(num_envs, W + 1, replay.masks.shape[-1],
                                                                   dtype=torch.bool)
        # Next slot to write; slots before burn_in are the padding in front of a new episode.
        self.pos = np.full(num_envs, self.burn_in)
        # Trained slots below this were already written in the previous (overlapping) window.
        self.covered = np.full(num_envs, self.burn_in)

    def add(self, envs: np.ndarray, obs: Obs, state: State, actions: torch.Tensor, rewards: np.ndarray,
            terminated: np.ndarray, truncated: np.ndarray, is_first: torch.Tensor, next_obs: Obs,
            masks: torch.Tensor | None = None, next_masks: torch.Tensor | None = None) -> None:
        """Stage one transition for each env in ``envs`` (those whose step was not an autoreset step).

        ``obs``, ``actions[N]``, ``rewards[N]``, flags ``[N]``, ``is_first[N]`` and ``next_obs`` cover
        all ``N`` envs; ``state`` is the acting state *before* ``obs``, tensors ``[layers, N, H]``;
        ``masks``/``next_masks`` ``[N, n]`` are the valid actions at ``obs``/``next_obs`` (masked envs).
        """
        if envs.size == 0:
            return
        e = torch.as_tensor(envs)
        p = torch.as_tensor(self.pos[envs])
        _put(self.obs, (e, p), _take(obs, e))
        for buf, s in zip(self.states, state):
            buf[e, p] = s[:, e].transpose(0, 1)
        self.actions[e, p] = actions[e]
        self.rewards[e, p] = torch.as_tensor(rewards[envs], dtype=torch.float32)
        self.terminated[e, p] = torch.as_tensor(terminated[envs])
        self.valid[e, p] = True
        self.is_first[e, p] = is_first[e]
        if self.masks is not None:
            self.masks[e, p] = masks[e].cpu()
        self.pos[envs] += 1
        for i in envs[self.pos[envs] == self.W + 1]:  # the window's bootstrap observation has arrived
            self._emit(i)
            self._shift(i)
        for i in envs[np.logical_or(terminated[envs], truncated[envs])]:
            q = self.pos[i]
            _put(self.obs, (int(i), q), _take(next_obs, int(i)))  # the final observation
            if self.masks is not None:
                self.masks[i, q] = next_masks[int(i)].cpu()
            if q - 1 >= self.covered[i]:  # the last window holds transitions not trained on yet
                self._emit(i)
            self._clear(i)

    def _emit(self, i: int) -> None:
        W = self.W
        self.replay.add(_take(self.obs, int(i)), self.actions[i, :W], self.rewards[i, :W], self.terminated[i, :W],
                        self.valid[i, :W], self.is_first[i], tuple(s[i, 0] for s in self.states),
                        None if self.masks is None else self.masks[i])

    def _shift(self, i: int) -> None:
        """Drop the first ``stride`` slots: the next window starts ``stride`` steps later."""
        k, W = self.stride, self.W
        for b in self._buffers():
            b[i, : W + 1 - k] = b[i, k:].clone()
            b[i, W + 1 - k :] = 0
        self.pos[i] -= k
        self.covered[i] = W - k

    def _clear(self, i: int) -> None:
        for b in self._buffers():
            b[i] = 0
        self.pos[i] = self.covered[i] = self.burn_in

    def _buffers(self) -> list[torch.Tensor]:
        obs = list(self.obs.values()) if isinstance(self.obs, dict) else [self.obs]
        masks = [] if self.masks is None else [self.masks]
        return [self.actions, self.rewards, self.terminated, self.valid, self.is_first, *self.states, *obs, *masks]
