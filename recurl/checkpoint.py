"""Saving and loading without pickle: weights in safetensors, everything else in JSON.

A model directory holds ``model.safetensors`` (policy weights, observation and reward normaliser
statistics) and ``config.json`` (the resolved config, the observation and action spaces, the core type
and size, versions). Trainer state for resuming (optimizer, RNG, counters) is a ``torch.save`` file that
is only ever read with ``weights_only=True``. Every file is written to a temporary name and renamed into
place, so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from recurl.errors import RecurlError

MODEL_FILE, CONFIG_FILE, TRAINER_FILE = "model.safetensors", "config.json", "trainer.pt"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""

    def _write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)

    atomic_write(path, _write)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple | set):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# -- spaces as JSON -------------------------------------------------------------------------------------
def space_to_json(space: gym.Space) -> dict[str, Any]:
    """Describe a Box, Discrete, MultiDiscrete, MultiBinary or Dict space as plain JSON."""
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "low": space.low.tolist(), "high": space.high.tolist(),
                "shape": list(space.shape), "dtype": str(space.dtype)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist()}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": list(space.shape)}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    raise RecurlError(f"unsupported space {space}: use Box, Discrete, MultiDiscrete, MultiBinary or Dict")


def space_from_json(d: dict[str, Any]) -> gym.Space:
    """Inverse of :func:`space_to_json`."""
    kind = d["type"]
    if kind == "Box":
        dtype = np.dtype(d["dtype"])
        return gym.spaces.Box(np.array(d["low"], dtype), np.array(d["high"], dtype), tuple(d["shape"]), dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(d["n"], start=d.get("start", 0))
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(np.array(d["nvec"]), start=np.array(d["start"]))
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(d["n"])
    if kind == "Dict":
        return gym.spaces.Dict({k: space_from_json(s) for k, s in d["spaces"].items()})
    raise RecurlError(f"unknown space type {kind!r} in config.json")


# -- model files ----------------------------------------------------------------------------------------
def save_weights(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Atomically write a safetensors file of contiguous CPU tensors."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file raises one clear :class:`RecurlError`."""
    path = Path(path)
    if not path.is_file():
        raise RecurlError(f"no model file at {path}: pass a run directory written by `recurl train`")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RecurlError(f"corrupt model file {path} ({e}): retrain or restore it from a checkpoint") from None


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file; missing or corrupt files raise :class:`RecurlError`."""
    path = Path(path)
    if not path.is_file():
        raise RecurlError(f"no {path.name} at {path.parent}: pass a run directory written by recurl")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecurlError(f"corrupt {path} ({e}): retrain or restore it from a checkpoint") from None


def save_trainer_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` trainer state made only of tensors, numbers, strings, lists and dicts."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Load trainer state with ``weights_only=True`` (no code from the file is ever executed)."""
    path = Path(path)
    if not path.is_file():
        raise RecurlError(f"no trainer state at {path}: the run has no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise RecurlError(f"corrupt trainer state {path} ({type(e).__name__}): start a new run") from None
