"""Saving and loading without pickle: weights in safetensors, everything else in JSON.

A model directory holds ``model.safetensors`` (policy weights, observation and reward normaliser
statistics) and ``config.json`` (the resolved config, the observation and action spaces, the core type
and size, versions, ``format_version``); a run directory adds ``trainer.pt``, the trainer state for
resuming (optimizer, RNG, counters), a ``torch.save`` file only ever read with ``weights_only=True``.

These files are one *checkpoint set*, written so that a reader sees the previous set or the new one,
never a mix (weights of one update with the optimizer of another):

1. every file is serialised in memory, then written and fsynced under a temporary name
   ``.NAME.recurl-tmp``;
2. the manifest (``checkpoint.json``: format version, generation, each file's size and sha256, the
   files the new set drops) is renamed into place as ``.checkpoint-pending.json``: the commit point;
3. the temporaries are renamed onto their names, dropped files are removed, and the pending manifest
   is renamed onto ``checkpoint.json``.

Every reader and writer first recovers, holding a lock on the directory: a pending manifest is rolled
forward (step 3 is finished); temporaries without one belong to a write that never committed and are
deleted. The files read are then checked against the manifest. A directory without ``checkpoint.json``
(written before manifests existed) is read as it is, unverified.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from recurl.errors import RecurlError
from recurl.version import __version__

MODEL_FILE, CONFIG_FILE, TRAINER_FILE = "model.safetensors", "config.json", "trainer.pt"
MANIFEST_FILE = "checkpoint.json"
#: the on-disk format of config.json and checkpoint.json; a newer one is refused with "upgrade recurl"
FORMAT_VERSION = 1
_PENDING = ".checkpoint-pending.json"
_TMP = ".recurl-tmp"
_MEMBERS = (MODEL_FILE, CONFIG_FILE, TRAINER_FILE)
_WHAT = {MODEL_FILE: "model file", CONFIG_FILE: "config", TRAINER_FILE: "trainer state"}


_PARTIAL = ".partial"


def _umask() -> int:
    """The process's umask (read once: ``os.umask`` can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the mode a plain ``open(path, "w")`` gives a new file; ``mkstemp``'s own 0600 would hide the run's logs and
#: results from the other users of a shared machine (a TensorBoard server, a teammate)
_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` (atomic on POSIX). A kill in between
    leaves a ``.NAME.XXXX.partial`` file, which :func:`discard_partials` removes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_PARTIAL, dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def encode_json(obj: Any) -> bytes:
    """``obj`` as indented JSON bytes (numpy scalars, tuples and sets allowed)."""
    return json.dumps(obj, indent=2, default=_json_default).encode()


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (inside a checkpoint set: as a new generation of the set)."""
    _write_file(Path(path), encode_json(obj))


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
    """Inverse of :func:`space_to_json`; a malformed description raises :class:`RecurlError`."""
    try:
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
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RecurlError(f"malformed space description ({type(e).__name__}: {e})") from None
    raise RecurlError(f"unknown space type {kind!r}")


# -- checkpoint sets ------------------------------------------------------------------------------------
def write_checkpoint(run_dir: str | Path, files: dict[str, bytes], update: bool = False) -> None:
    """Make ``files`` (name -> contents) the checkpoint set of ``run_dir``, in one atomic step.

    Files of the previous set that ``files`` lacks are removed, unless ``update`` (then they are kept
    and only ``files`` are replaced). An unwritable directory raises :class:`RecurlError`.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with locked(run_dir):
            old = _recover(run_dir)
            if update and old is not None:
                files = {**{n: _read_member(run_dir, n, old) for n in old["files"]}, **files}
            _write_set(run_dir, files, old)
    except OSError as e:
        raise RecurlError(f"cannot write a checkpoint to {run_dir} ({e.strerror or e}): choose a writable "
                          "directory") from None


def read_checkpoint(run_dir: str | Path, names: Sequence[str]) -> dict[str, bytes]:
    """The contents of ``names`` from one checkpoint set of ``run_dir``, each checked against the manifest.

    An interrupted write is finished (it had committed) or discarded (it had not) first.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecurlError(f"no {names[0]} at {run_dir}: {_missing_hint(names[0])}")
    try:
        with locked(run_dir):
            manifest = _recover(run_dir)
            return {name: _read_member(run_dir, name, manifest) for name in names}
    except OSError as e:
        raise RecurlError(f"cannot read the checkpoint in {run_dir} ({e.strerror or e}): it must be readable, "
                          "and writable if a write to it was interrupted") from None


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the directory ``run_dir`` (released by the kernel if the process dies): a
    reader of a checkpoint set never recovers, or reads, while a writer is between its renames; writers of one
    results file (``bench/results_file.py``) take turns."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # a filesystem without locks (some network and FUSE mounts) still loads
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
        yield
    finally:
        os.close(fd)


def _tmp(run_dir: Path, name: str) -> Path:
    return run_dir / f".{name}{_TMP}"


def _digest(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(run_dir: Path) -> None:
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_set(run_dir: Path, files: dict[str, bytes], old: dict[str, Any] | None) -> None:
    """Steps 1-3 of the module docstring; the lock is held and ``old`` is the recovered manifest."""
    manifest = {"format_version": FORMAT_VERSION, "recurl": __version__,
                "generation": (old["generation"] if old else 0) + 1,
                "files": {name: _digest(data) for name, data in files.items()},
                "drops": sorted(set(old["files"]) - set(files)) if old else []}
    try:
        for name, data in files.items():
            _write_synced(_tmp(run_dir, name), data)
        _write_synced(_tmp(run_dir, MANIFEST_FILE), encode_json(manifest))
        _fsync_dir(run_dir)
        os.replace(_tmp(run_dir, MANIFEST_FILE), run_dir / _PENDING)  # the commit point
    except BaseException:
        _discard_temporaries(run_dir)  # nothing committed: the previous set is intact
        raise
    _roll_forward(run_dir, manifest)


def _roll_forward(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Finish a committed write: idempotent, so a write killed anywhere in here is finished by the next."""
    for name in manifest["files"]:
        if _tmp(run_dir, name).exists():
            os.replace(_tmp(run_dir, name), run_dir / name)
    for name in manifest["drops"]:
        (run_dir / name).unlink(missing_ok=True)
    _fsync_dir(run_dir)
    os.replace(run_dir / _PENDING, run_dir / MANIFEST_FILE)
    _fsync_dir(run_dir)


def discard_partials(run_dir: str | Path) -> None:
    """Remove what a killed :func:`atomic_write` left in ``run_dir`` (``progress.csv``, ``summary.json``
    and other single files). Only the run's own writer calls this, as it starts: a reader must not, since
    the writer may be between its write and its rename."""
    for tmp in Path(run_dir).glob(f".*{_PARTIAL}"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _discard_temporaries(run_dir: Path) -> None:
    for tmp in run_dir.glob(f".*{_TMP}"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _recover(run_dir: Path) -> dict[str, Any] | None:
    """Finish or discard an interrupted write; return the manifest (``None``: a directory without one)."""
    if (run_dir / _PENDING).is_file():
        _roll_forward(run_dir, _read_manifest(run_dir / _PENDING))
    _discard_temporaries(run_dir)  # any left now belong to a write that never committed
    return _read_manifest(run_dir / MANIFEST_FILE) if (run_dir / MANIFEST_FILE).is_file() else None


def _read_manifest(path: Path) -> dict[str, Any]:
    m = _decode_json(path, path.read_bytes())
    _check_format(path, m, m.get("recurl") if isinstance(m, dict) else None)

    def plain(name: Any) -> bool:  # a file of the directory itself: a manifest never names a path elsewhere
        return isinstance(name, str) and name == Path(name).name and not name.startswith(".")

    files = m.get("files")
    if not (isinstance(m.get("generation"), int) and isinstance(files, dict) and isinstance(m.get("drops"), list)
            and all(plain(n) and isinstance(d, dict) and set(d) == {"size", "sha256"} for n, d in files.items())
            and all(plain(n) for n in m["drops"])):
        raise RecurlError(f"corrupt checkpoint manifest {path}: delete it to load the files unverified")
    return m


def _read_member(run_dir: Path, name: str, manifest: dict[str, Any] | None) -> bytes:
    path = run_dir / name
    if manifest is not None and name not in manifest["files"]:
        raise RecurlError(f"no {name} in the checkpoint at {run_dir} ({MANIFEST_FILE} does not list it): "
                          f"{_missing_hint(name)}")
    if not path.is_file():
        raise RecurlError(f"no {name} at {run_dir}: {_missing_hint(name)}")
    data = path.read_bytes()
    if manifest is not None and _digest(data) != manifest["files"][name]:
        raise RecurlError(f"corrupt {_WHAT.get(name, name)} {path}: it does not match {MANIFEST_FILE} (it was "
                          "changed or replaced after the checkpoint was written): restore it, or delete "
                          f"{MANIFEST_FILE} to load the files unverified")
    return data


def _missing_hint(name: str) -> str:
    if name == TRAINER_FILE:
        return "the run has no checkpoint to resume from (it was saved, not trained into a run directory)"
    return "pass a run directory written by recurl"


def _write_file(path: Path, data: bytes) -> None:
    """Write one file; a member of a checkpoint set becomes part of a new generation of that set, so the
    manifest stays true (e.g. a hand-edited ``config.json`` written back with :func:`write_json`)."""
    if path.name in _MEMBERS and _has_manifest(path.parent):
        write_checkpoint(path.parent, {path.name: data}, update=True)
    else:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _read_file(path: Path) -> bytes:
    """One file's bytes; a member of a checkpoint set is recovered and verified first."""
    if path.name in _MEMBERS and _has_manifest(path.parent):
        return read_checkpoint(path.parent, [path.name])[path.name]
    if not path.is_file():
        raise RecurlError(f"no {path.name} at {path.parent}: {_missing_hint(path.name)}")
    return path.read_bytes()


def _has_manifest(run_dir: Path) -> bool:
    return (run_dir / MANIFEST_FILE).is_file() or (run_dir / _PENDING).is_file()


# -- the files, encoded and decoded ---------------------------------------------------------------------
def encode_weights(tensors: dict[str, torch.Tensor]) -> bytes:
    """A safetensors file of ``tensors`` (copied to contiguous CPU tensors)."""
    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def encode_trainer_state(state: dict[str, Any]) -> bytes:
    """``torch.save`` of trainer state made only of tensors, numbers, strings, lists and dicts."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Atomically write a safetensors file of ``tensors``."""
    _write_file(Path(path), encode_weights(tensors))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file raises one clear :class:`RecurlError`."""
    path = Path(path)
    return _decode_weights(path, _read_file(path))


def read_json(path: str | Path) -> Any:
    """Read a JSON file; missing or corrupt files raise :class:`RecurlError`."""
    path = Path(path)
    return _decode_json(path, _read_file(path))


def save_trainer_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` trainer state (see :func:`encode_trainer_state`)."""
    _write_file(Path(path), encode_trainer_state(state))


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Load trainer state with ``weights_only=True`` (no code from the file is ever executed)."""
    path = Path(path)
    return _decode_trainer_state(path, _read_file(path), ())


def _decode_json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecurlError(f"corrupt {path} ({e}): retrain or restore it from a checkpoint") from None


def _decode_weights(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(data)
    except SafetensorError as e:
        raise RecurlError(f"corrupt model file {path} ({e}): retrain or restore it from a checkpoint") from None


def _decode_trainer_state(path: Path, data: bytes, required: Sequence[str]) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise RecurlError(f"corrupt trainer state {path} ({type(e).__name__}): start a new run") from None
    if not isinstance(state, dict):
        raise RecurlError(f"corrupt trainer state {path}: it holds a {type(state).__name__}, not a dict: "
                          "start a new run")
    missing = [k for k in required if k not in state]
    if missing:
        raise RecurlError(f"trainer state {path} lacks {', '.join(missing)}: it was not written by this recurl "
                          "for this algorithm; start a new run")
    return state


def _version_key(version: str) -> tuple[int, ...]:
    m = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(p) for p in m.group().split(".")) if m else ()


def _check_format(path: Path, obj: Any, written_by: Any) -> None:
    """Refuse a file from a newer recurl (by its ``format_version`` or its writer's version) or one that is
    not a JSON object; a file without ``format_version`` predates it and is format 1."""
    if not isinstance(obj, dict):
        raise RecurlError(f"{path} is not a recurl file (expected a JSON object, got {type(obj).__name__}): "
                          "pass a run directory written by recurl")
    fmt = obj.get("format_version", 1)
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise RecurlError(f"corrupt {path}: format_version must be an integer, got {fmt!r}")
    newer = isinstance(written_by, str) and _version_key(written_by) > _version_key(__version__)
    if fmt > FORMAT_VERSION or newer:
        raise RecurlError(f"{path} was written by recurl {written_by or '(unknown)'} (format version {fmt}), newer "
                          f"than this recurl {__version__} (format {FORMAT_VERSION}): upgrade recurl")


# -- a saved run, read as one set -----------------------------------------------------------------------
@dataclass(frozen=True)
class SavedRun:
    """A model or run directory read as one verified checkpoint set, its structure checked.

    ``meta`` is ``config.json`` (``algo``, ``config``, spaces, ``versions``); ``trainer_state`` is
    ``None`` unless it was asked for.
    """

    meta: dict[str, Any]
    observation_space: gym.Space
    action_space: gym.Space
    tensors: dict[str, torch.Tensor]
    trainer_state: dict[str, Any] | None


def read_run(run_dir: str | Path, trainer_keys: Sequence[str] | None = None) -> SavedRun:
    """``config.json`` and ``model.safetensors`` of ``run_dir`` (plus ``trainer.pt``, which must hold
    ``trainer_keys``, unless that is ``None``), all from the same checkpoint. Nothing read executes code;
    every problem (missing, corrupt, mixed, newer-format or malformed files) is one :class:`RecurlError`."""
    run_dir = Path(run_dir)
    names = [CONFIG_FILE, MODEL_FILE] + ([TRAINER_FILE] if trainer_keys is not None else [])
    files = read_checkpoint(run_dir, names)
    path = run_dir / CONFIG_FILE
    meta = _decode_json(path, files[CONFIG_FILE])
    versions = meta.get("versions") if isinstance(meta, dict) else None
    _check_format(path, meta, versions.get("recurl") if isinstance(versions, dict) else None)
    if not isinstance(meta.get("algo"), str) or not isinstance(meta.get("config"), dict):
        raise RecurlError(f"malformed {path}: it needs \"algo\" (a name) and \"config\" (an object): pass a run "
                          "directory written by recurl")
    spaces = []
    for key in ("observation_space", "action_space"):
        if key not in meta:
            raise RecurlError(f"malformed {path}: no {key}: pass a run directory written by recurl")
        try:
            spaces.append(space_from_json(meta[key]))
        except RecurlError as e:
            raise RecurlError(f"malformed {path}: bad {key}: {e}") from None
    trainer = (_decode_trainer_state(run_dir / TRAINER_FILE, files[TRAINER_FILE], trainer_keys)
               if trainer_keys is not None else None)
    return SavedRun(meta, spaces[0], spaces[1], _decode_weights(run_dir / MODEL_FILE, files[MODEL_FILE]), trainer)
