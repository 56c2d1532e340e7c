"""A prepared Melee dataset as behaviour-cloning data: spaces, perspectives, the delay shift, splits.

Each perspective (a human player of a 2-player game) is one episode for recurl's behaviour cloning. Its
observation at row ``i`` is a dict (:data:`OBSERVATION_SPACE`):

- ``action[2]``, ``character[2]``: action-state and in-game character ids of self and opponent;
- ``stage``: compact stage index;
- ``floats[OBS_FLOATS]``: self, opponent, self's Nana, opponent's Nana (``features.FLOAT_BLOCKS``);
- ``prev_controller[8]``: the player's own controller one frame before the target (known at play time: it
  is what the agent pressed last).

and its action (:data:`ACTION_SPACE`, ``MultiDiscrete``) is the controller: the five buttons A, B, JUMP, Z,
SHIELD (0/1 each), the main-stick class (289), the c-stick class (5) and the shoulder class (4), in that
order, the order the autoregressive head draws them.

Reaction delay ``D`` (>= 1): row ``i`` holds the game state of frame ``i`` and the controller of frame
``i + D`` as target, with the controller of frame ``i + D - 1`` as ``prev_controller``, so the model
predicts frame ``t``'s controller from frame ``t - D``'s state. ``D = 0`` is refused: a frame's post-frame
state already shows that frame's input.

Splits are by game content (the ``sha256`` of the .slp file in the manifest), never by frame or file name.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from recurl.checkpoint import read_json
from recurl.errors import RecurlError
from recurl.melee import features as F

#: controller components: five buttons, main stick, c-stick, shoulder
CONTROLLER_NVEC: tuple[int, ...] = (2,) * F.NUM_BUTTONS + (F.NUM_MAIN, F.NUM_CSTICK, F.NUM_SHOULDER)
MAIN, CSTICK, SHOULDER = F.NUM_BUTTONS, F.NUM_BUTTONS + 1, F.NUM_BUTTONS + 2
#: report groups: name -> controller columns
GROUPS: dict[str, tuple[int, ...]] = {"buttons": tuple(range(F.NUM_BUTTONS)), "main": (MAIN,), "cstick": (CSTICK,),
                                      "shoulder": (SHOULDER,)}
ACTION_SPACE = gym.spaces.MultiDiscrete(np.array(CONTROLLER_NVEC))
OBSERVATION_SPACE = gym.spaces.Dict({
    "action": gym.spaces.MultiDiscrete([F.NUM_ACTIONS, F.NUM_ACTIONS]),
    "character": gym.spaces.MultiDiscrete([F.NUM_CHARACTERS, F.NUM_CHARACTERS]),
    "stage": gym.spaces.Discrete(F.NUM_STAGES),
    "floats": gym.spaces.Box(-12.0, 12.0, (F.OBS_FLOATS,), np.float32),
    "prev_controller": gym.spaces.MultiDiscrete(np.array(CONTROLLER_NVEC)),
})
#: a character needs this many games: at least one to hold out, one to validate on, one to train on
MIN_GAMES = 3
MANIFEST = "manifest.json"

Pair = tuple[dict[str, np.ndarray], np.ndarray]


class MeleeDataError(RecurlError):
    """No usable games (after filtering) or an unusable dataset."""


@dataclass(frozen=True)
class Perspective:
    """One human player of one 2-player game: ``npz`` file, player index, character and the game's hash."""

    game: str
    sha256: str
    npz: str
    player: int
    character: str
    frames: int


def load_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``manifest.json`` of a dataset written by ``recurl melee prepare``."""
    path = Path(data_dir)
    if not (path / MANIFEST).is_file():
        raise MeleeDataError(f"{path} is not a prepared Melee dataset (no {MANIFEST}): run `recurl melee prepare`")
    manifest = read_json(path / MANIFEST)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("games"), list):
        raise MeleeDataError(f"{path / MANIFEST} is not a Melee dataset manifest")
    return manifest


def perspectives(data_dir: str | os.PathLike) -> list[Perspective]:
    """Every trainable perspective of a dataset: the human players of its 2-player games."""
    out = []
    for g in load_manifest(data_dir)["games"]:
        if len(g["players"]) != 2:
            continue
        if "sha256" not in g:
            raise MeleeDataError(f"{data_dir} was prepared by an older recurl (no content hashes): prepare it again")
        out += [Perspective(g["file"], g["sha256"], g["npz"], p["index"], p["character"], int(g["frames"]))
                for p in g["players"] if not p["cpu"]]
    return out


def choose_character(persp: list[Perspective], character: str) -> tuple[str, str]:
    """The character rule: ``character`` itself when it has :data:`MIN_GAMES` games, else the qualifying
    character with the most frames, else every perspective (``"ALL"``, which can also be asked for).

    Returns ``(character or "ALL", note)``: the note says what was chosen and why.
    """
    if not persp:
        raise MeleeDataError("no human player in a 2-player game in the dataset")
    if character.upper() == "ALL":
        return "ALL", "all human perspectives"
    games: dict[str, set[str]] = {}
    frames: Counter[str] = Counter()
    for p in persp:
        games.setdefault(p.character, set()).add(p.sha256)
        frames[p.character] += p.frames
    want = F.character_name(F.character_id(character))
    if len(games.get(want, ())) >= MIN_GAMES:
        return want, f"{want}: {len(games[want])} games"
    have = f"{want} has {len(games.get(want, ()))} games (needs {MIN_GAMES})"
    ok = [c for c in games if len(games[c]) >= MIN_GAMES]
    if ok:
        best = max(ok, key=lambda c: frames[c])
        return best, f"{have}; fell back to {best}, the character with most frames ({frames[best]})"
    return "ALL", f"{have} and no character has {MIN_GAMES}; fell back to all human perspectives"


def split_games(game_frames: dict[str, int], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole games (keys of ``game_frames``, e.g. hashes): in a seeded random order, games join the
    held-out set while it holds less than ``fraction`` of the frames, skipping any game that alone holds
    more than half of them; at least one game on each side. Returns ``(kept, held_out)``, each sorted."""
    names = sorted(game_frames)
    if len(names) < 2:
        raise MeleeDataError(f"need at least 2 games for a held-out split, have {len(names)}")
    total = sum(game_frames.values())
    held: list[str] = []
    for i in np.random.default_rng(seed).permutation(len(names)):
        if sum(game_frames[h] for h in held) >= fraction * total or len(held) == len(names) - 1:
            break
        if game_frames[names[i]] <= total / 2:
            held.append(names[i])
    if not held:  # every game is big: hold out the smallest
        held = [min(names, key=lambda g: game_frames[g])]
    return [g for g in names if g not in held], sorted(held)


def controller(arrays: dict[str, np.ndarray], player: int) -> np.ndarray:
    """The controller targets of player ``player`` of a prepared game as ``[N, 8]`` int16 (CONTROLLER_NVEC)."""
    p = f"p{player}"
    return np.concatenate([arrays[f"{p}_buttons"].astype(np.int16), arrays[f"{p}_main"][:, None].astype(np.int16),
                           arrays[f"{p}_cstick"][:, None].astype(np.int16),
                           arrays[f"{p}_shoulder"][:, None].astype(np.int16)], -1)


def perspective_pair(arrays: dict[str, np.ndarray], player: int, delay: int) -> Pair:
    """Observations ``[M, ...]`` and target controllers ``[M, 8]`` of one perspective, ``M = N - delay``
    (module docstring: row ``i`` sees frame ``i`` and predicts frame ``i + delay``)."""
    if delay < 1:
        raise MeleeDataError("the reaction delay must be >= 1 frame (with 0 the state would reveal the target input)")
    s, o = f"p{player}", f"p{1 - player}"
    n = len(arrays["frame"])
    m = max(n - delay, 0)
    ctrl = controller(arrays, player)
    obs = {
        "action": np.stack([arrays[f"{s}_action"][:m], arrays[f"{o}_action"][:m]], -1).astype(np.int16),
        "character": np.stack([arrays[f"{s}_character"][:m], arrays[f"{o}_character"][:m]], -1).astype(np.int16),
        "stage": np.full(m, int(arrays["stage"]), dtype=np.int16),
        "floats": np.concatenate([arrays[f"{s}_floats"][:m], arrays[f"{o}_floats"][:m], arrays[f"{s}_nana"][:m],
                                  arrays[f"{o}_nana"][:m]], -1).astype(np.float32),
        "prev_controller": ctrl[delay - 1 : delay - 1 + m],
    }
    return obs, ctrl[delay : delay + m]


class PerspectivePairs(SequenceABC):
    """The :func:`perspective_pair` of each perspective, read from disk when asked for (a lazy sequence).

    Behaviour cloning streams its batches window by window (:class:`recurl.algos.bc.EpisodeStream`), so
    only the games the batch rows are in are held: the ``cache`` most recently read perspectives. ``flip``
    marks perspectives to mirror left/right (:func:`mirror_pair`) as they are read, ``old`` those to present
    as a 2.0 replay would (:func:`recurl.melee.features.as_v2_obs_floats`).
    """

    def __init__(self, data_dir: str | os.PathLike, persp: list[Perspective], delay: int, cache: int = 128,
                 flip: np.ndarray | None = None, old: np.ndarray | None = None) -> None:
        self.data_dir, self.persp, self.delay, self.cache_size = Path(data_dir), list(persp), delay, cache
        self.flip, self.old = (np.zeros(len(self.persp), bool) if m is None else np.asarray(m, bool)
                               for m in (flip, old))
        self.lengths = [max(p.frames - delay, 0) for p in self.persp]
        self._cache: OrderedDict[int, Pair] = OrderedDict()

    def __len__(self) -> int:
        return len(self.persp)

    def __getitem__(self, i: int) -> Pair:  # type: ignore[override]
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        p = self.persp[i]
        with np.load(self.data_dir / p.npz) as z:
            pair = perspective_pair(dict(z), p.player, self.delay)
        if len(pair[1]) != self.lengths[i]:
            raise MeleeDataError(f"{p.npz} holds {len(pair[1]) + self.delay} frames, its manifest entry says "
                                 f"{p.frames}: prepare the dataset again")
        pair = mirror_pair(pair) if self.flip[i] else pair
        if self.old[i]:
            pair = {**pair[0], "floats": F.as_v2_obs_floats(pair[0]["floats"])}, pair[1]
        self._cache[i] = pair
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return pair

    def augmented(self, flip: np.ndarray, old: np.ndarray | None = None) -> PerspectivePairs:
        """The same perspectives with ``flip[i]`` ones mirrored and ``old[i]`` ones presented as a 2.0 replay
        (a new view, nothing read yet)."""
        return PerspectivePairs(self.data_dir, self.persp, self.delay, self.cache_size, flip, old)


def mirror_controller(ctrl: np.ndarray) -> np.ndarray:
    """Left/right mirror of controllers ``[..., 8]``: main-stick x bucket flipped, c-stick LEFT/RIGHT swapped."""
    out = np.array(ctrl, copy=True)
    out[..., MAIN] = F.mirror_main(ctrl[..., MAIN])
    out[..., CSTICK] = F.mirror_cstick(ctrl[..., CSTICK])
    return out


def mirror_pair(pair: Pair) -> Pair:
    """Left/right mirror of a perspective (an involution): x positions, facing and x velocities of every
    player block, and the stick x direction of the target and previous controllers."""
    obs, ctrl = pair
    return {**obs, "floats": F.mirror_obs_floats(obs["floats"]),
            "prev_controller": mirror_controller(obs["prev_controller"])}, mirror_controller(ctrl)
