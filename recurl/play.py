"""Keyboard play in the terminal for any Gymnasium env with a ``Discrete`` action space and ansi rendering.

Type a key and Enter each step: the env's own map from :meth:`get_keys_to_action` when it has one
(swamp tour: ``w``/``e`` forward, ``a``/``s`` turn left, ``d``/``f`` turn right), or the action
number; ``q`` quits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from recurl.data.trajectories import episode_from_lists, write_dataset
from recurl.errors import RecurlError

_FIELDS = ("obs", "actions", "rewards", "terminated", "truncated")


def _key_map(env: gym.Env) -> dict[str, int]:
    """Single-key strings to actions: the env's ``get_keys_to_action()`` plus the action numbers."""
    keys = {str(a): a for a in range(int(env.action_space.n))}
    get = getattr(env.unwrapped, "get_keys_to_action", None)
    if get is not None:
        keys |= {"".join(combo): int(a) for combo, a in get().items() if len(combo) == 1}
    return keys


def play(
    env_id: str,
    episodes: int = 1,
    record: str | None = None,
    read_key: Callable[[str], str] = input,
    seed: int | None = None,
    show: Callable[[str], Any] = print,
    **env_kwargs: Any,
) -> list[dict[str, list[Any]]]:
    """Play ``episodes`` episodes of ``env_id`` by hand; returns one dict per episode played.

    Each dict has lists ``obs`` (first observation plus one per step, so ``len(actions) + 1``),
    ``actions``, ``rewards``, ``terminated``, ``truncated``. An episode cut short by ``q`` is
    returned too (its flags then all read False at the end).

    Args:
        env_id: registered id, e.g. ``"recurl/SwampTour-ruin_2swamp-v0"`` (recurl's own ids are
            registered on ``import recurl``).
        episodes: number of episodes to play.
        record: a new Minari dataset directory (``NAME-vN``) to save the finished episodes in; an
            episode cut short by ``q`` is not saved.
        read_key: called with a prompt, returns the typed line (inject a fake for tests).
        seed: seed of the first reset.
        show: receives the text picture and messages (``print`` by default).
        **env_kwargs: passed to ``gymnasium.make``.
    """
    env = gym.make(env_id, render_mode="ansi", **env_kwargs)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise TypeError(f"play() needs a Discrete action space, {env_id} has {env.action_space}")
    if record is not None and Path(record).exists():  # fail before the human plays, not after
        raise RecurlError(f"{record} already exists: choose a new dataset path")
    keys = _key_map(env)
    names = ", ".join(f"{k}={a}" for k, a in keys.items())
    prompt = f"action ({names}, q quits): "
    played: list[dict[str, list[Any]]] = []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed if ep == 0 else None)
            data: dict[str, list[Any]] = {k: [] for k in _FIELDS}
            data["obs"].append(np.asarray(obs).copy())
            played.append(data)
            show(env.render())
            done = False
            while not done:
                key = read_key(prompt).strip().lower()
                if key == "q":
                    _save(record, played, env_id, env_kwargs)
                    return played
                if key not in keys:
                    show(f"unknown key {key!r}")
                    continue
                obs, reward, terminated, truncated, _ = env.step(keys[key])
                step = (np.asarray(obs).copy(), keys[key], float(reward), bool(terminated), bool(truncated))
                for name, value in zip(_FIELDS, step, strict=True):
                    data[name].append(value)
                show(env.render())
                done = terminated or truncated
            show(f"episode {ep + 1}: return {sum(data['rewards']):.2f} in {len(data['actions'])} steps")
    finally:
        env.close()
    _save(record, played, env_id, env_kwargs)
    return played


def _save(record: str | None, played: list[dict[str, list[Any]]], env_id: str, env_kwargs: dict[str, Any]) -> None:
    """Write the finished episodes of ``played`` to the dataset ``record`` (nothing when ``None``)."""
    finished = [ep for ep in played if ep["actions"] and (ep["terminated"][-1] or ep["truncated"][-1])]
    if record is None or not finished:
        return
    write_dataset(record, [episode_from_lists(*(ep[k] for k in _FIELDS)) for ep in finished], env_id, env_kwargs,
                  algorithm_name="human (recurl play)", description="keyboard episodes recorded with recurl play")
