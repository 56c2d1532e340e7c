"""Moving observations between numpy (envs, users) and torch (policy), for plain and Dict spaces.

Also the single place where user-supplied observations are validated (shape, dtype, NaN, range).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from recurl.errors import RecurlError
from recurl.nn.encoders import Obs


def _torch_dtype(space: gym.Space) -> torch.dtype:
    if isinstance(space, gym.spaces.Discrete | gym.spaces.MultiDiscrete):
        return torch.long
    if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8:
        return torch.uint8
    return torch.float32


class ObsConverter:
    """Converts observations of ``space`` (plain or a Dict of leaves) to and from torch."""

    def __init__(self, space: gym.Space) -> None:
        self.space = space
        self.is_dict = isinstance(space, gym.spaces.Dict)
        self.leaves: dict[str | None, gym.Space] = (
            dict(space.spaces) if self.is_dict else {None: space}  # type: ignore[union-attr]
        )

    def map(self, obs: Obs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Obs:
        """Apply ``fn`` to every leaf tensor."""
        return {k: fn(v) for k, v in obs.items()} if isinstance(obs, dict) else fn(obs)

    def empty(self, lead: tuple[int, ...], device: torch.device) -> Obs:
        """Zero buffer ``[*lead, *leaf_shape]`` per leaf."""
        out = {k: torch.zeros((*lead, *s.shape), dtype=_torch_dtype(s), device=device)
               for k, s in self.leaves.items()}
        return out if self.is_dict else out[None]

    def to_torch(self, obs: Any, device: torch.device) -> Obs:
        """Batched env observations (numpy) -> torch, without validation (trusted env output)."""
        if self.is_dict:
            return {k: torch.as_tensor(np.asarray(obs[k]), dtype=_torch_dtype(s), device=device)
                    for k, s in self.leaves.items()}
        return torch.as_tensor(np.asarray(obs), dtype=_torch_dtype(self.space), device=device)

    @staticmethod
    def write(buf: Obs, t: int, obs: Obs) -> None:
        """``buf[t] = obs`` for every leaf."""
        if isinstance(buf, dict):
            for k in buf:
                buf[k][t] = obs[k]  # type: ignore[index]
        else:
            buf[t] = obs

    def check(self, obs: Any) -> tuple[np.ndarray | dict[str, np.ndarray], int, bool]:
        """Validate a user's observation (one, or a batch ``[N, ...]``), staying in numpy.

        Returns ``(obs with a batch axis, N, whether the input was batched)``. Raises
        :class:`RecurlError` naming the problem for a wrong shape, dtype, NaN or out-of-range value.
        """
        if self.is_dict:
            if not isinstance(obs, dict) or set(obs) != set(self.leaves):
                got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
                raise RecurlError(f"observation must be a dict with keys {sorted(self.leaves)}, got {got}")
            parts = {k: _check_leaf(np.asarray(obs[k]), s, f"observation[{k!r}]") for k, s in self.leaves.items()}
            ns = {n for _, n, _ in parts.values()}
            if len(ns) != 1:
                raise RecurlError(f"observation dict entries have different batch sizes: {sorted(ns)}")
            return {k: a for k, (a, _, _) in parts.items()}, ns.pop(), next(iter(parts.values()))[2]
        return _check_leaf(np.asarray(obs), self.space, "observation")

    def from_user(self, obs: Any, device: torch.device) -> tuple[Obs, int, bool]:
        """:meth:`check`, then convert to torch on ``device``."""
        a, n, batched = self.check(obs)
        return self.to_torch(a, device), n, batched


def _check_leaf(a: np.ndarray, space: gym.Space, name: str) -> tuple[np.ndarray, int, bool]:
    shape = tuple(space.shape or ())
    if a.shape == shape:
        a, batched = a[None], False
    elif a.shape[1:] == shape and a.ndim == len(shape) + 1:
        batched = True
    else:
        raise RecurlError(f"{name} has shape {a.shape}, expected {shape} or a batch [N, *{shape}] for {space}")
    if a.dtype.kind not in "biufc":  # bool, (unsigned) int, float, complex
        raise RecurlError(f"{name} has dtype {a.dtype}, expected numbers for {space}")
    # A finite sum proves every entry finite (one cheap reduction per call); otherwise check each entry,
    # since a sum of large finite values can overflow.
    if a.dtype.kind == "f" and not math.isfinite(a.sum()) and not np.isfinite(a).all():
        raise RecurlError(f"{name} contains NaN or infinity: check the env or the preprocessing that made it")
    if isinstance(space, gym.spaces.Discrete | gym.spaces.MultiDiscrete):
        lo = space.start
        hi = space.start + (space.n if isinstance(space, gym.spaces.Discrete) else space.nvec)
        if np.any(a != np.round(a)) or np.any(a < lo) or np.any(a >= hi):
            raise RecurlError(f"{name} has values outside {space}")
    return a, a.shape[0], batched
