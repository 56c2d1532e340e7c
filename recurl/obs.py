"""Moving observations between numpy (envs, users) and torch (policy), for plain and Dict spaces.

Also the single place where user-supplied observations are validated (shape, dtype, NaN, range). A policy
of a Tuple, nested Dict or text-bearing env sees the flat Dict of :class:`recurl.envs.wrappers.FlattenObs`;
the env's own observations are accepted too and flattened the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from recurl.envs.wrappers import flatten_obs
from recurl.errors import RecurlError
from recurl.nn.encoders import Obs


def _torch_dtype(space: gym.Space) -> torch.dtype:
    if isinstance(space, gym.spaces.Discrete | gym.spaces.MultiDiscrete):
        return torch.long
    if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8:
        return torch.uint8
    return torch.float32


_NUMPY_OF = {torch.float32: np.dtype(np.float32), torch.long: np.dtype(np.int64), torch.uint8: np.dtype(np.uint8)}


def user_tensor(a: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A checked array from a user's call (``predict``, ``Agent.act``) -> a ``dtype`` tensor on ``device``.

    On CPU an array already of that dtype is shared, not copied (``torch.from_numpy``: ~1 us against ~3 us
    for ``torch.as_tensor``, per tensor per call): the acting step only reads it and keeps nothing. Env
    observations go through :meth:`ObsConverter.to_torch`, which copies, since an env may reuse its buffer.
    """
    if not a.flags.writeable:  # torch would share it all the same, and warn: it has no read-only tensors
        a = a.copy()
    if device.type == "cpu" and a.dtype == _NUMPY_OF.get(dtype) and a.flags.c_contiguous:
        return torch.from_numpy(a)
    return torch.as_tensor(a, dtype=dtype, device=device)


class ObsConverter:
    """Converts observations of ``space`` (plain or a Dict of leaves) to and from torch."""

    def __init__(self, space: gym.Space) -> None:
        self.space = space
        self.is_dict = isinstance(space, gym.spaces.Dict)
        self.leaves: dict[str | None, gym.Space] = (
            dict(space.spaces) if self.is_dict else {None: space}  # type: ignore[union-attr]
        )
        self.dtypes = {k: _torch_dtype(s) for k, s in self.leaves.items()}

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
        For a Dict space, the env's own Tuple or nested observation (text leaves included) is flattened
        first, as ``make_vec_env`` flattens the env's.
        """
        if self.is_dict:
            if isinstance(obs, tuple) or (isinstance(obs, dict) and obs.keys() != self.leaves.keys()):
                obs = flatten_obs(obs)
            if not isinstance(obs, dict) or set(obs) != set(self.leaves):
                got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
                raise RecurlError(f"observation must be a dict with keys {sorted(self.leaves)} (or the env's own "
                                  f"observation, which flattens to them), got {got}")
            parts = {k: _check_leaf(_as_array(obs[k], f"observation[{k!r}]"), s, f"observation[{k!r}]")
                     for k, s in self.leaves.items()}
            ns = {n for _, n, _ in parts.values()}
            if len(ns) != 1:
                raise RecurlError(f"observation dict entries have different batch sizes: {sorted(ns)}")
            return {k: a for k, (a, _, _) in parts.items()}, ns.pop(), next(iter(parts.values()))[2]
        return _check_leaf(_as_array(obs, "observation"), self.space, "observation")

    def from_user(self, obs: Any, device: torch.device) -> tuple[Obs, int, bool]:
        """:meth:`check`, then convert to torch on ``device``."""
        a, n, batched = self.check(obs)
        if self.is_dict:
            return {k: user_tensor(a[k], dtype, device) for k, dtype in self.dtypes.items()}, n, batched
        return user_tensor(a, self.dtypes[None], device), n, batched


def _as_array(obs: Any, name: str) -> np.ndarray:
    """``np.asarray``, with a ragged batch (observations of different shapes) as one clear error."""
    try:
        return np.asarray(obs)
    except ValueError:
        shapes = sorted({np.shape(o) for o in obs}) if isinstance(obs, list | tuple) else "?"
        raise RecurlError(f"{name} is a ragged batch (shapes {shapes}): stack observations of one shape, "
                          "[N, *obs_shape]") from None


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


def check_is_first(is_first: Any, n: int, name: str = "is_first") -> np.ndarray:
    """A user's episode-start flags -> ``[n]`` bool array; anything else (wrong length, non-bool values)
    is a :class:`RecurlError`."""
    if type(is_first) is np.ndarray and is_first.dtype == bool and is_first.shape == (n,):
        return is_first  # already what is asked for (the usual call): no copy
    a = np.asarray(is_first.cpu() if isinstance(is_first, torch.Tensor) else is_first)
    if a.size != n or a.dtype.kind not in "biu" or (a.dtype != bool and not np.isin(a, (0, 1)).all()):
        raise RecurlError(f"{name} must be {n} bool(s), one per observation, got shape {a.shape} of {a.dtype}")
    return a.reshape(n).astype(bool)


def check_state(state: Any, shapes: list[tuple[int, int]], n: int) -> list[np.ndarray]:
    """A user's recurrent state -> float32 arrays ``[layers, n, H]``, checked against the policy's
    ``(layers, H)`` per tensor; anything else is one :class:`RecurlError` saying what to pass."""
    if not isinstance(state, tuple | list) or len(state) != len(shapes):
        raise RecurlError(f"state must be a tuple of {len(shapes)} array(s) returned by the previous call "
                          f"(or None to start), got {type(state).__name__}"
                          + (f" of length {len(state)}" if isinstance(state, tuple | list) else ""))
    out = []
    for s, (layers, hidden) in zip(state, shapes):
        try:
            a = np.asarray(s.detach().cpu() if isinstance(s, torch.Tensor) else s, np.float32)
        except (TypeError, ValueError):
            raise RecurlError(f"state entries must be float arrays, got {type(s).__name__}") from None
        if a.shape != (layers, n, hidden):
            raise RecurlError(f"state tensor has shape {a.shape} but {n} observation(s) need "
                              f"[layers, N, hidden] = {(layers, n, hidden)}: pass the state returned by the "
                              "previous call, or None")
        out.append(a)
    return out


def mask_width(space: gym.Space) -> int:
    """Width of an action mask for ``space``: ``n`` (Discrete), ``sum(nvec)`` (1-D MultiDiscrete)."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    raise RecurlError(f"action masks need a Discrete or MultiDiscrete action space, not {space}")


def check_mask(mask: Any, n: int, action_space: gym.Space, required: bool) -> np.ndarray | None:
    """A user's valid-action masks -> ``[n, width]`` bool (``None`` passes when not ``required``)."""
    if mask is None:
        if required:
            raise RecurlError("this policy was trained with action masks: pass action_masks, [N, n] bools "
                              "(the env's action_masks())")
        return None
    width = mask_width(action_space)
    a = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
    if a.size != n * width or a.dtype.kind not in "biu":
        raise RecurlError(f"action masks must be {n} x {width} bools for {action_space}, got shape {a.shape} "
                          f"of {a.dtype}")
    a = a.reshape(n, width).astype(bool)
    if not a.any(1).all():
        raise RecurlError("action masks leave no valid action for some observation: at least one must be true")
    return a
