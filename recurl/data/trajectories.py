"""Whole-episode trajectory datasets in Minari's on-disk format (written and read with minari's own API).

A dataset written by :func:`write_dataset` at ``PATH`` is a Minari dataset directory::

    PATH/                 # its name is the Minari dataset id, e.g. swamp-expert-v0
      data/
        metadata.json     # spaces, env spec, counts, plus recurl_env / recurl_env_kwargs
        0/, 1/, ...       # one arrow file per episode (lossless: no JPEG encoding)

So ``MINARI_DATASETS_PATH=$(dirname PATH) python -c "import minari; minari.load_dataset('NAME-v0')"``
opens it too, and :func:`load_dataset` opens any Minari dataset on disk (``PATH`` or ``PATH/data``).
Nothing is ever downloaded, and reading a dataset never runs code from it: the spaces come from the
metadata only (minari would otherwise build the env its stored spec names, any entry point with any
kwargs), and the env id only from ``recurl_env`` or the spec's ``id``.

An :class:`Episode` of ``T`` steps holds ``T + 1`` observations (the first one, then one after every
action, Minari's convention) and ``T`` actions, rewards, terminations and truncations.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from recurl.envs import resolve_env_id
from recurl.errors import RecurlError

Array = np.ndarray
ObsArray = Array | dict[str, Array]


@dataclass(frozen=True)
class Episode:
    """One episode of ``T`` steps.

    ``observations``: ``[T + 1, *obs_shape]`` (a dict of such arrays for Dict spaces);
    ``actions``: ``[T, *action_shape]``; ``rewards``: ``[T]`` float; ``terminations``, ``truncations``:
    ``[T]`` bool.
    """

    observations: ObsArray
    actions: Array
    rewards: Array
    terminations: Array
    truncations: Array

    def __len__(self) -> int:
        return len(self.rewards)


@dataclass(frozen=True)
class TrajectoryDataset:
    """Episodes loaded from disk, with the spaces and the env that produced them.

    ``env`` is ``None`` (and ``env_kwargs`` empty) when the dataset names no env.
    """

    episodes: list[Episode]
    observation_space: gym.Space
    action_space: gym.Space
    env: str | None
    env_kwargs: dict[str, Any]


@contextmanager
def _datasets_root(root: Path) -> Iterator[None]:
    """Point ``MINARI_DATASETS_PATH`` at ``root`` for the duration (minari reads it at call time)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def write_dataset(
    path: str | Path,
    episodes: list[Episode],
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    algorithm_name: str = "recurl",
    description: str = "episodes recorded with recurl",
) -> Path:
    """Write ``episodes`` of ``env_id`` (made with ``env_kwargs``) as a Minari dataset directory ``path``.

    The directory name must be a Minari dataset id (``NAME-vN``, e.g. ``data/swamp-expert-v0``); an
    existing dataset is never overwritten. The dataset is written under a temporary directory next to
    ``path`` and renamed into place once complete, so a failed or killed write leaves nothing at ``path``.
    Returns ``path``.
    """
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id

    path = Path(path)
    try:
        parse_dataset_id(path.name)
    except (ValueError, TypeError):
        raise RecurlError(f"dataset directory {path.name!r} must be named like a Minari id, NAME-vN "
                          f"(e.g. {path.with_name(path.name + '-v0')})") from None
    if path.exists():
        raise RecurlError(f"{path} already exists: Minari datasets are never overwritten, choose a new path")
    if not episodes:
        raise RecurlError("no episodes to write")
    env_id = resolve_env_id(env_id)
    env_kwargs = dict(env_kwargs or {})
    buffers = [
        minari.data_collector.EpisodeBuffer(
            id=i, observations=ep.observations, actions=ep.actions, rewards=list(ep.rewards),
            terminations=list(ep.terminations), truncations=list(ep.truncations))
        for i, ep in enumerate(episodes)
    ]
    with contextlib.closing(gym.make(env_id, **env_kwargs)) as env:
        try:
            # Absolute: minari joins a relative root onto its own relative paths (data/x-v0/data/data/...).
            parent = path.resolve().parent
            parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
            try:
                with _datasets_root(staging), warnings.catch_warnings():
                    # minari warns about every unset bibliographic field (author, e-mail, permalink).
                    warnings.simplefilter("ignore", UserWarning)
                    ds = minari.create_dataset_from_buffers(
                        path.name, buffers, env=env, algorithm_name=algorithm_name, description=description,
                        data_format="arrow", jpeg_encoding=False)
                ds.storage.update_metadata({"recurl_env": env_id, "recurl_env_kwargs": env_kwargs})
                # Fails (ENOTEMPTY) if a dataset appeared there meanwhile: still never overwritten.
                os.rename(staging / path.name, parent / path.name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except OSError as e:
            raise RecurlError(f"cannot write the dataset {path} ({e.strerror or e}): choose a writable "
                              "directory") from None
        except (ValueError, TypeError, AssertionError) as e:  # minari's checks of the episodes against the spaces
            raise RecurlError(f"cannot write the dataset {path} ({type(e).__name__}: {e}): the episodes must fit "
                              f"{env_id}'s spaces") from None
    return path


def load_dataset(path: str | Path) -> TrajectoryDataset:
    """Load every episode of the Minari dataset at ``path`` (the dataset directory or its ``data/``).

    Only data is read (see the module docstring): the spaces stored in the metadata decode the episode
    files through minari's storage reader. A dataset without stored spaces, and a missing, truncated or
    foreign episode file, are each one :class:`RecurlError` naming the file.
    """
    from minari.dataset._storages import get_minari_storage, get_storage_keys

    data = _data_dir(path)
    meta = _read_metadata(path, data)
    obs_space, action_space = (_stored_space(path, data, meta, key) for key in ("observation_space", "action_space"))
    fmt, total = meta.get("data_format"), meta.get("total_episodes")
    if fmt not in get_storage_keys() or isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise RecurlError(f"malformed {data / 'metadata.json'}: data_format {fmt!r} must be one of "
                          f"{get_storage_keys()} and total_episodes {total!r} a count: re-record the dataset")
    try:
        storage = get_minari_storage(fmt)(data, obs_space, action_space,
                                          jpeg_encoding=bool(meta.get("jpeg_encoding", True)))
    except (ImportError, ValueError) as e:  # hdf5 without h5py, or without its data file
        raise RecurlError(f"cannot read the {fmt} dataset at {path}: {e}") from None
    episodes = [_read_episode(storage, data, fmt, i) for i in range(total)]
    env, kwargs = _env_of(path, meta)
    return TrajectoryDataset(episodes, obs_space, action_space, env, kwargs)


def dataset_env(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    """The env id and kwargs a dataset was recorded in, from its metadata alone (episodes are not read)."""
    return _env_of(path, _read_metadata(path, _data_dir(path)))


def _read_metadata(path: str | Path, data: Path) -> dict[str, Any]:
    file = data / "metadata.json"
    if not file.is_file():
        raise RecurlError(f"no Minari dataset at {path} (expected {path}/data/metadata.json)")
    try:
        meta = json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecurlError(f"corrupt {file} ({e}): re-record the dataset") from None
    if not isinstance(meta, dict):
        raise RecurlError(f"malformed {file}: expected a JSON object: re-record the dataset")
    return meta


def _stored_space(path: str | Path, data: Path, meta: dict[str, Any], key: str) -> gym.Space:
    """A space serialised in the metadata (a JSON string, minari's format), decoded as data only."""
    from minari.serialization import deserialize_space

    if key not in meta:
        raise RecurlError(f"the dataset at {path} stores no {key} in {data / 'metadata.json'}: recurl reads the "
                          "spaces only from there (building the env of its env_spec could run any code); "
                          "re-record it with minari >= 0.5 or `recurl record`")
    try:
        return deserialize_space(meta[key])
    except (ValueError, KeyError, TypeError, AssertionError, NotImplementedError) as e:
        raise RecurlError(f"malformed {key} in {data / 'metadata.json'} ({type(e).__name__}: {e}): re-record "
                          "the dataset") from None


def _env_of(path: str | Path, meta: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """``recurl_env`` and its kwargs, else the id of the stored env spec (never its entry point or kwargs)."""
    env, kwargs = meta.get("recurl_env"), meta.get("recurl_env_kwargs") or {}
    if not env:
        spec, kwargs = meta.get("env_spec"), {}
        try:
            spec = json.loads(spec) if isinstance(spec, str) else None
        except json.JSONDecodeError:
            raise RecurlError(f"malformed env_spec in the metadata of {path}: pass --env ID") from None
        env = spec.get("id") if isinstance(spec, dict) else None
        if env is None:
            return None, {}
    if not isinstance(env, str) or ":" in env or not isinstance(kwargs, dict):
        # A "module:Env" id would make gymnasium import that module, i.e. run code named by the file.
        raise RecurlError(f"the dataset at {path} names its env as {env!r} with kwargs {kwargs!r}: expected a "
                          "registered Gymnasium id and a kwargs object; pass --env ID")
    return env, dict(kwargs)


def _read_episode(storage: Any, data: Path, fmt: str, i: int) -> Episode:
    """Episode ``i`` through the storage's reader; any failure names the episode's file."""
    where = data / ("main_data.hdf5" if fmt == "hdf5" else str(i))
    if not where.exists():
        raise RecurlError(f"episode {i} of the dataset at {data.parent} is missing ({where} does not exist): "
                          "re-record the dataset")
    if where.is_dir():
        where = next((p for p in sorted(where.iterdir()) if p.name != "metadata.json"), where)
    try:
        ep = next(iter(storage.get_episodes([i])))
        episode = Episode(ep["observations"], np.asarray(ep["actions"]), np.asarray(ep["rewards"], np.float64),
                          np.asarray(ep["terminations"], bool), np.asarray(ep["truncations"], bool))
    except Exception as e:  # pyarrow / h5py / minari raise many types for truncated or foreign files
        raise RecurlError(f"cannot read episode {i} from {where} ({type(e).__name__}: {e}): the file is truncated "
                          "or not a Minari episode; re-record the dataset") from None
    obs = episode.observations.values() if isinstance(episode.observations, dict) else [episode.observations]
    T = len(episode)
    lengths = {len(episode.actions), len(episode.terminations), len(episode.truncations)}
    if lengths != {T} or any(len(o) != T + 1 for o in obs):
        raise RecurlError(f"episode {i} in {where} is malformed: {T} rewards need {T} actions, terminations and "
                          f"truncations and {T + 1} observations; re-record the dataset")
    return episode


def _data_dir(path: str | Path) -> Path:
    """A dataset's ``data/`` directory, given the dataset directory or ``data/`` itself."""
    path = Path(path)
    return path / "data" if (path / "data" / "metadata.json").is_file() else path


def episode_from_lists(obs: list[Any], actions: list[Any], rewards: list[float], terminated: list[bool],
                       truncated: list[bool]) -> Episode:
    """Stack per-step lists (``len(obs) == len(actions) + 1``) into an :class:`Episode`."""
    if isinstance(obs[0], dict):
        observations: ObsArray = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
    else:
        observations = np.stack([np.asarray(o) for o in obs])
    return Episode(observations, np.stack([np.asarray(a) for a in actions]), np.asarray(rewards, np.float64),
                   np.asarray(terminated, bool), np.asarray(truncated, bool))
