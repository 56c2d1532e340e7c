"""Whole-episode trajectory datasets in Minari's on-disk format (written and read with minari's own API).

A dataset written by :func:`write_dataset` at ``PATH`` is a Minari dataset directory::

    PATH/                 # its name is the Minari dataset id, e.g. swamp-expert-v0
      data/
        metadata.json     # spaces, env spec, counts, plus recurl_env / recurl_env_kwargs
        0/, 1/, ...       # one arrow file per episode (lossless: no JPEG encoding)

So ``MINARI_DATASETS_PATH=$(dirname PATH) python -c "import minari; minari.load_dataset('NAME-v0')"``
opens it too, and :func:`load_dataset` opens any Minari dataset on disk (``PATH`` or ``PATH/data``).
Nothing is ever downloaded.

An :class:`Episode` of ``T`` steps holds ``T + 1`` observations (the first one, then one after every
action, Minari's convention) and ``T`` actions, rewards, terminations and truncations.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

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
    existing dataset is never overwritten. Returns ``path``.
    """
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id

    from recurl.envs import resolve_env_id

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
    env = gym.make(env_id, **env_kwargs)
    buffers = [
        minari.data_collector.EpisodeBuffer(
            id=i, observations=ep.observations, actions=ep.actions, rewards=list(ep.rewards),
            terminations=list(ep.terminations), truncations=list(ep.truncations))
        for i, ep in enumerate(episodes)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _datasets_root(path.parent), warnings.catch_warnings():
            # minari warns about every unset bibliographic field (author, e-mail, permalink).
            warnings.simplefilter("ignore", UserWarning)
            ds = minari.create_dataset_from_buffers(
                path.name, buffers, env=env, algorithm_name=algorithm_name, description=description,
                data_format="arrow", jpeg_encoding=False)
        ds.storage.update_metadata({"recurl_env": env_id, "recurl_env_kwargs": env_kwargs})
    finally:
        env.close()
    return path


def load_dataset(path: str | Path) -> TrajectoryDataset:
    """Load every episode of the Minari dataset at ``path`` (the dataset directory or its ``data/``)."""
    from minari import MinariDataset

    data = _data_dir(path)
    if not (data / "metadata.json").is_file():
        raise RecurlError(f"no Minari dataset at {path} (expected {path}/data/metadata.json)")
    try:
        ds = MinariDataset(data)
    except (ValueError, KeyError, OSError) as e:
        raise RecurlError(f"cannot read the Minari dataset at {path}: {e}") from None
    episodes = [
        Episode(ep.observations, np.asarray(ep.actions), np.asarray(ep.rewards, np.float64),
                np.asarray(ep.terminations, bool), np.asarray(ep.truncations, bool))
        for ep in ds.iterate_episodes()
    ]
    env, kwargs = dataset_env(data)
    return TrajectoryDataset(episodes, ds.observation_space, ds.action_space, env, kwargs)


def dataset_env(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    """The env id and kwargs a dataset was recorded in, from its metadata alone (episodes are not read)."""
    from gymnasium.envs.registration import EnvSpec
    from minari.dataset.minari_storage import MinariStorage

    try:
        meta = MinariStorage.read_raw_metadata(_data_dir(path))
    except ValueError as e:
        raise RecurlError(f"no Minari dataset at {path}: {e}") from None
    if meta.get("recurl_env"):
        return meta["recurl_env"], dict(meta.get("recurl_env_kwargs") or {})
    spec = meta.get("env_spec")
    return (EnvSpec.from_json(spec).id if isinstance(spec, str) else None), {}


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
