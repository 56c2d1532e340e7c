"""Turn one or more folders of Slippi replays (.slp) into one compact per-game dataset.

``prepare(replay_dirs, out_dir)`` parses every ``*.slp`` under each of ``replay_dirs`` (one folder or a list)
with peppi-py (falling back to libmelee's file reader for a replay peppi-py cannot read, see below) and
writes, per accepted game, one compressed ``<name>.npz`` holding, for every player ``i`` (ports in ascending
order):

- ``p{i}_floats[N, NUM_FLOATS]`` float32, ``p{i}_action[N]`` int16, ``p{i}_character[N]`` uint8
- ``p{i}_nana[N, NUM_FLOATS + 1]`` float32: the Ice Climbers follower's floats plus a presence flag
  (zeros for every other character and for frames where Nana is gone)
- targets ``p{i}_buttons[N, 5]`` uint8, ``p{i}_main[N]`` int16, ``p{i}_cstick[N]``, ``p{i}_shoulder[N]`` uint8
- ``frame[N]`` int32 (ascending, one per frame index), ``stage`` (compact index, see ``features``).

plus ``manifest.json`` with per-game metadata and the run's report. Rollback duplicates are removed by
keeping the *last* record of each frame index (the one the game finally used).

Several folders (``prepare([a, b], out)``): a game is identified by its content (:func:`file_sha256` of the
.slp, the hash the train/test split uses), so a replay found twice, in two folders or under two names in
one, is prepared once: the first one in folder order (the folders as given, files sorted within each) is
kept, the others are listed under ``duplicates`` with the file they repeat. ``<name>`` is the file's path
inside its folder (``/`` written ``__``, without ``.slp``); where two different games would get the same
name (``game1.slp`` in both folders; compared ignoring case), each of them gets ``-<first 12 hex digits of
its sha256>`` appended: names are unique, and a game's name depends only on the set of files kept (not on
their order, nor on which of them the filters skip). Each manifest entry records ``source_dir`` (the folder
as given) and ``source_file`` (the path inside it).

Tournament ruleset (``ruleset="tournament"``): 2 players, no teams, a legal stage, 4 starting stocks, an
8-minute timer, items off (item spawn frequency ``-1``). Rule for missing information: a check whose field
the replay does not hold passes, and the game's manifest entry lists it under ``ruleset.assumed``.
``ruleset="any"`` accepts every game that parses. CPU players are kept and marked (``cpu: true``); the
trainer never imitates them.

Readers (``reader="auto"``): peppi-py first; when it fails on a file (some 3.x replays make peppi-py 0.8.6
panic with ``OutOfSpec``), libmelee's offline file console (:mod:`recurl.melee.libmelee_reader`) reads the
frames, encoded by the same ``features`` encoders into identical arrays (tested against peppi-py). What
libmelee does not expose (timer, items, a non-legal stage's id, the end method) is taken from peppi-py's
header-only read (``skip_frames=True``), which still works on such files; where that fails too, the fields
are listed under ``metadata_missing`` (timer and items then also under ``ruleset.assumed``). Each manifest
entry records its ``reader`` and the file's ``sha256``. A file is unreadable only when both readers fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from recurl.checkpoint import read_json, write_json
from recurl.errors import RecurlError
from recurl.melee import features as F
from recurl.melee import libmelee_reader as LM

TOURNAMENT_STOCKS = 4
TOURNAMENT_TIMER_S = 480
ITEMS_OFF = -1
# peppi post fields the features read, with the raw key they feed.
_POST_OPTIONAL = {"airborne": "airborne", "jumps": "jumps", "hurtbox_state": "hurtbox", "hitlag": "hitlag",
                  "misc_as": "misc_as", "velocities": "vel_air_x, vel_y, kb_x, kb_y, vel_ground_x"}
READERS = ("auto", "peppi", "libmelee")
# Exceptions that must stop the run; everything else a reader raises (including pyo3's PanicException,
# a BaseException) only makes that reader fail on that file.
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)
# What ``prepare`` takes as its replay folders: one path, or a list of them.
ReplayDirs = str | os.PathLike | Sequence[str | os.PathLike]


@dataclass
class PrepareReport:
    """What ``prepare`` did: accepted games (manifest entries), skipped files with reasons, files skipped as
    duplicates of an earlier one (same sha256; ``duplicate_of`` names it), throughput, the replay folders."""

    games: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    replay_dirs: list[str] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def readers(self) -> dict[str, int]:
        """Number of accepted games per reader (``"peppi"``, ``"libmelee"``)."""
        return dict(Counter(g["reader"] for g in self.games))

    def shown(self, entry: dict[str, Any]) -> str:
        """How the report names a file: its path inside its replay folder, prefixed with the folder when the
        run read several."""
        rel = entry.get("source_file", entry["file"])
        return f"{entry['source_dir']}/{rel}" if len(self.replay_dirs) > 1 and "source_dir" in entry else rel

    def lines(self) -> list[str]:
        """Human-readable report, one line per game, skipped file or duplicate."""
        out = []
        for g in self.games:
            players = " vs ".join(f"{p['character']}{' (CPU)' if p['cpu'] else ''}" for p in g["players"])
            miss = ", ".join(g["missing_fields"]) or "-"
            assumed = ", ".join(g["ruleset"]["assumed"]) or "-"
            via = "" if g["reader"] == "peppi" else f"; read by {g['reader']} ({g['fallback_reason']})"
            out.append(f"ok   {self.shown(g)}: v{g['slippi_version']} {g['stage_name']} {players}, "
                       f"{g['frames']} frames ({g['rollback_frames_removed']} rollback dropped); "
                       f"missing: {miss}; assumed: {assumed}{via}")
        out += [f"skip {self.shown(s)}: {s['reason']}" for s in self.skipped]
        out += [f"dup  {self.shown(d)}: same content as {d['duplicate_of']} (sha256 {d['sha256'][:12]}), "
                "prepared once" for d in self.duplicates]
        fallback = [self.shown(g) for g in self.games if g["reader"] == "libmelee"]
        readers = ", ".join(f"{r} {n}" for r, n in sorted(self.readers.items())) or "-"
        out.append(f"readers: {readers}" + (f" (libmelee fallback: {', '.join(fallback)})" if fallback else ""))
        out.append(f"{len(self.games)} games, {len(self.skipped)} skipped, {len(self.duplicates)} duplicates "
                   f"skipped, {self.frames} frames "
                   f"in {self.seconds:.2f}s ({self.frames_per_s:,.0f} frames/s)")
        return out


def dedupe_frames(frame_ids: np.ndarray) -> np.ndarray:
    """Indices that keep the last record of every frame index, in ascending frame order.

    ``frame_ids[M]`` may repeat (rollback); returns ``idx[N]`` with ``frame_ids[idx]`` strictly increasing.
    """
    ids = np.asarray(frame_ids)
    _, rev_first = np.unique(ids[::-1], return_index=True)  # first in reverse = last in order
    return (len(ids) - 1 - rev_first).astype(np.int64)


def _np(arr: Any) -> np.ndarray:
    """Arrow array -> float64 numpy, nulls as NaN (defaults are applied by the encoders)."""
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)


def _raw_post(post: Any, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Raw per-player arrays (keys of ``features.RAW_DEFAULTS``) from a peppi ``Post`` at rows ``idx``."""
    n = len(idx)
    raw = {k: np.full(n, np.nan) for k in F.RAW_DEFAULTS}
    direct = {"x": post.position.x, "y": post.position.y, "percent": post.percent, "stocks": post.stocks,
              "direction": post.direction, "shield": post.shield, "action": post.state,
              "character": post.character, "jumps": post.jumps, "airborne": post.airborne,
              "hurtbox": post.hurtbox_state, "hitlag": post.hitlag, "misc_as": post.misc_as}
    if post.velocities is not None:
        v = post.velocities
        direct.update(vel_air_x=v.self_x_air, vel_y=v.self_y, kb_x=v.knockback_x, kb_y=v.knockback_y,
                      vel_ground_x=v.self_x_ground)
    for key, arr in direct.items():
        if arr is not None:
            raw[key] = _np(arr)[idx]
    return raw


def _player_arrays(leader: Any, follower: Any, idx: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    floats, action, character = F.encode_player(_raw_post(leader.post, idx))
    pre = leader.pre
    out = {
        f"{prefix}_floats": floats, f"{prefix}_action": action, f"{prefix}_character": character,
        f"{prefix}_buttons": F.encode_buttons(_np(pre.buttons_physical)[idx].astype(np.int64)),
        f"{prefix}_main": F.encode_main(_np(pre.joystick.x)[idx], _np(pre.joystick.y)[idx]),
        f"{prefix}_cstick": F.encode_cstick(_np(pre.cstick.x)[idx], _np(pre.cstick.y)[idx]),
        f"{prefix}_shoulder": F.encode_shoulder(_np(pre.triggers)[idx]),
    }
    nana = np.zeros((len(idx), F.NANA_WIDTH), dtype=np.float32)
    if follower is not None:
        present = np.isfinite(_np(follower.post.position.x)[idx])
        nf, _, _ = F.encode_player(_raw_post(follower.post, idx))
        nana[:, :F.NUM_FLOATS] = np.where(present[:, None], nf, 0.0)
        nana[:, F.NUM_FLOATS] = present
    out[f"{prefix}_nana"] = nana
    return out


def check_rules(num_players: int, is_teams: bool | None, stage: int | None, stocks: list[int | None],
                timer: int | None, items: int | None) -> tuple[list[str], list[str]]:
    """Tournament-ruleset check of a game's settings: ``(violations, assumed)``.

    ``stage`` is the external stage id, ``None`` when the reader could not name it (libmelee names only the
    legal stages, so such a stage is known not to be legal). A check whose value is ``None`` (the replay
    or reader lacks it) passes and is listed in ``assumed``.
    """
    bad, assumed = [], []
    if num_players != 2:
        bad.append(f"{num_players} players (needs 1v1)")
    if is_teams:
        bad.append("teams")
    if stage not in F.LEGAL_STAGES:
        bad.append(f"stage {stage if stage is not None else '(not named by libmelee)'} not legal")
    if any(s is None for s in stocks):
        assumed.append("stocks")
    elif any(s != TOURNAMENT_STOCKS for s in stocks):
        bad.append(f"stocks {stocks} (needs {TOURNAMENT_STOCKS})")
    if timer is None:
        assumed.append("timer")
    elif timer != TOURNAMENT_TIMER_S:
        bad.append(f"timer {timer}s (needs {TOURNAMENT_TIMER_S}s)")
    if items is None:
        assumed.append("items")
    elif items != ITEMS_OFF:
        bad.append(f"items on (frequency {items})")
    return bad, assumed


def check_tournament(start: Any) -> tuple[list[str], list[str]]:
    """Tournament-ruleset check of a peppi ``Start``: ``(violations, assumed)`` (assumed: unchecked)."""
    return check_rules(len(start.players), getattr(start, "is_teams", None), start.stage,
                       [p.stocks for p in start.players], getattr(start, "timer", None),
                       getattr(start, "item_spawn_frequency", None))


class _Skip(Exception):
    """A replay that parsed but was filtered out."""


class _Unreadable(Exception):
    """No reader could read the replay; the message holds every reader's reason."""


@dataclass
class _Game:
    """One replay as a reader gives it: everything the filters, the npz and the manifest entry need.

    ``players``: per player in port order the manifest's player fields except ``index``; ``frame_ids``: every
    frame record (rollback duplicates included); ``encode(idx)``: the npz arrays of the records ``idx``.
    """

    reader: str
    version: str
    stage: int | None
    is_teams: bool | None
    timer: int | None
    items: int | None
    end_method: str | None
    players: list[dict[str, Any]]
    frame_ids: np.ndarray
    missing_post: list[str]
    encode: Callable[[np.ndarray], dict[str, np.ndarray]]
    metadata_reader: str = "peppi"
    metadata_missing: list[str] = field(default_factory=list)
    fallback_reason: str | None = None


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for a block: a peppi-py (Rust) panic prints its message and, with
    RUST_BACKTRACE set, a whole backtrace there before Python sees the exception; the reason goes into the
    report instead."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _read_peppi(path: Path) -> _Game:
    """Read a replay with peppi-py (raises on any failure, pyo3's ``PanicException`` included)."""
    from peppi_py import read_slippi  # optional dependency: recurl[melee]

    with _quiet_native_stderr():
        game = read_slippi(str(path))
    start = game.start
    if len(game.frames.ports) != len(start.players):
        raise _Skip("no frames")
    players = [{"port": int(pl.port) + 1, "character": F.character_name(pl.character), "css_id": int(pl.character),
                "cpu": pl.type.name == "CPU", "start_stocks": pl.stocks, "has_nana": pd.follower is not None}
               for pl, pd in zip(start.players, game.frames.ports, strict=True)]

    def encode(idx: np.ndarray) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for i, pd in enumerate(game.frames.ports):
            arrays.update(_player_arrays(pd.leader, pd.follower, idx, f"p{i}"))
        return arrays

    post = game.frames.ports[0].leader.post
    return _Game(reader="peppi", version=".".join(map(str, start.slippi.version)), stage=int(start.stage),
                 is_teams=getattr(start, "is_teams", None), timer=getattr(start, "timer", None),
                 items=getattr(start, "item_spawn_frequency", None),
                 end_method=getattr(getattr(game.end, "method", None), "name", None) if game.end else None,
                 players=players, frame_ids=_np(game.frames.id).astype(np.int64),
                 missing_post=[f for f in _POST_OPTIONAL if getattr(post, f) is None], encode=encode)


def _peppi_header(path: Path) -> tuple[Any, Any] | None:
    """peppi-py's game start and end without the frames (``skip_frames=True``), or ``None`` if that fails."""
    try:
        from peppi_py import read_slippi

        with _quiet_native_stderr():
            game = read_slippi(str(path), skip_frames=True)
        return game.start, game.end
    except _FATAL:
        raise
    except BaseException:  # the header is optional: without it the fields are recorded as missing
        return None


def _read_libmelee(path: Path, header: tuple[Any, Any] | None) -> _Game:
    """Read a replay's frames with libmelee's file console; ``header`` (peppi's start and end, if readable)
    supplies what libmelee does not expose: timer, items, stage id, end method."""
    rep = LM.read_replay(path)
    ports = sorted(rep.players)
    players = []
    for port in ports:
        info = rep.player_info(port)
        players.append({"port": int(port), "character": F.character_name(info["css_id"]), "css_id": info["css_id"],
                        "cpu": info["cpu"], "start_stocks": info["start_stocks"], "has_nana": info["has_nana"]})

    def encode(idx: np.ndarray) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for i, port in enumerate(ports):
            states = rep.players[port]
            enc = LM.encode_states([states[j] for j in idx])
            arrays.update({f"p{i}_{k}": v for k, v in enc.items()})
        return arrays

    game = _Game(reader="libmelee", version=rep.version, stage=LM.stage_external_id(rep.stage),
                 is_teams=rep.is_teams, timer=None, items=None, end_method=None, players=players,
                 frame_ids=rep.frame_ids, missing_post=rep.missing_post, encode=encode, metadata_reader="libmelee")
    if header is not None:
        start, end = header
        game.metadata_reader = "libmelee + peppi header"
        game.stage, game.timer, game.items = int(start.stage), start.timer, start.item_spawn_frequency
        game.end_method = getattr(getattr(end, "method", None), "name", None) if end else None
    else:
        game.metadata_missing = ["timer", "items", "end_method"] + (["stage"] if game.stage is None else [])
    return game


def _read(path: Path, reader: str, available: dict[str, bool]) -> _Game:
    """Read with peppi-py, falling back to libmelee (``reader="auto"``), or with the one reader asked for.
    Raises ``_Unreadable`` with each reader's reason when none can read the file."""
    errors = []
    if reader in ("auto", "peppi"):
        if not available["peppi"]:
            errors.append("peppi: peppi-py not installed (pip install recurl[melee])")
        else:
            try:
                return _read_peppi(path)
            except (_Skip, *_FATAL):
                raise
            except BaseException as e:  # a bad replay must never abort the run
                errors.append(f"peppi: {_reason(e)}")
    if reader in ("auto", "libmelee"):
        if not available["libmelee"]:
            errors.append("libmelee fallback skipped: libmelee not installed (pip install melee)")
        else:
            try:
                game = _read_libmelee(path, _peppi_header(path) if reader == "auto" and available["peppi"]
                                      else None)
                game.fallback_reason = errors[0] if errors else f"reader={reader}"
                return game
            except _FATAL:
                raise
            except BaseException as e:
                errors.append(f"libmelee: {_reason(e)}")
    raise _Unreadable("; ".join(errors))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes: identifies a game by content, whatever its file name."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _prepare_one(path: Path, source: dict[str, str], sha256: str, out_dir: Path, name: str, ruleset: str,
                 characters: set[int] | None, opponents: set[int] | None, reader: str,
                 available: dict[str, bool]) -> dict[str, Any]:
    """Read one replay and write its .npz; returns its manifest entry (``source``: its ``file``,
    ``source_dir`` and ``source_file``). Raises ``_Skip`` when filtered and ``_Unreadable`` when no reader can
    read it."""
    game = _read(path, reader, available)
    bad, assumed = check_rules(len(game.players), game.is_teams, game.stage,
                               [p["start_stocks"] for p in game.players], game.timer, game.items)
    if ruleset == "tournament" and bad:
        raise _Skip("not tournament ruleset: " + "; ".join(bad))
    css = [p["css_id"] for p in game.players]
    if characters is not None or opponents is not None:
        human = [not p["cpu"] for p in game.players]
        ok = any(human[i] and (characters is None or css[i] in characters)
                 and (opponents is None or any(css[j] in opponents for j in range(len(css)) if j != i))
                 for i in range(len(css)))
        if not ok:
            raise _Skip("character filter: " + " vs ".join(F.character_name(c) for c in css))
    ids = game.frame_ids
    idx = dedupe_frames(ids)
    if len(idx) == 0:
        raise _Skip("no frames")
    stage_id = game.stage if game.stage is not None else -1
    arrays: dict[str, np.ndarray] = {"frame": ids[idx].astype(np.int32),
                                     "stage": np.asarray(F.stage_index(stage_id), dtype=np.int16)}
    arrays.update(game.encode(idx))
    defaults = {}
    for f in game.missing_post:
        for key in _POST_OPTIONAL[f].split(", "):
            defaults[key] = F.RAW_DEFAULTS[key]
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    return {
        "file": source["file"], "npz": f"{name}.npz", "sha256": sha256, "source_dir": source["source_dir"],
        "source_file": source["source_file"], "reader": game.reader,
        "slippi_version": game.version, "stage": game.stage,
        "stage_name": "UNKNOWN_STAGE" if game.stage is None else F.LEGAL_STAGES.get(game.stage,
                                                                                     f"STAGE_{game.stage}"),
        "players": [{"index": i, **p} for i, p in enumerate(game.players)], "frames": len(idx),
        "raw_frames": len(ids), "rollback_frames_removed": len(ids) - len(idx),
        "duration_s": round(len(idx) / 60.0, 2), "missing_fields": game.missing_post, "defaults_used": defaults,
        "ruleset": {"tournament": not bad, "violations": bad, "assumed": assumed},
        "end_method": game.end_method, "metadata_reader": game.metadata_reader,
        "metadata_missing": game.metadata_missing, "fallback_reason": game.fallback_reason,
    }


def _replay_dir_list(replay_dirs: ReplayDirs) -> list[Path]:
    """The replay folders as a list (one path or several), each checked to be an existing folder."""
    dirs = [Path(replay_dirs)] if isinstance(replay_dirs, (str, os.PathLike)) else [Path(d) for d in replay_dirs]
    if not dirs:
        raise RecurlError("no replay directory given")
    bad = [f"{d}{'' if not d.exists() else ' (not a directory)'}" for d in dirs if not d.is_dir()]
    if bad:
        raise RecurlError(f"replay directory not found: {', '.join(bad)}")
    return dirs


def _check_out_dir(dst: Path, dirs: list[Path]) -> None:
    """Refuse an output folder that is a file, one of the replay folders, or a folder holding replays (with
    ``prepare A B`` the last folder is the output: a forgotten OUT_DIR would write the dataset into B). An
    output folder *inside* a replay folder is fine: prepare writes no .slp, so it never reads its output."""
    if dst.exists() and not dst.is_dir():
        raise RecurlError(f"output directory {dst} is a file")
    for d in dirs:
        if dst.resolve() == d.resolve():
            raise RecurlError(f"output directory {dst} is also a replay directory: give a new directory, last")
    if dst.is_dir() and any(dst.glob("*.slp")):
        raise RecurlError(f"output directory {dst} holds .slp replays (is it a replay directory?): "
                          "the output directory comes last")


def _npz_names(sources: list[dict[str, str]], hashes: list[str]) -> list[str]:
    """Unique npz names (without ``.npz``) of the kept replays, independent of their order: the path inside
    the replay folder, plus the sha256's first 12 hex digits for every game whose name (ignoring case)
    another kept game also has."""
    base = [PurePosixPath(s["source_file"]).with_suffix("").as_posix().replace("/", "__") for s in sources]
    clash = Counter(b.casefold() for b in base)
    names, used = [], set()
    for b, sha in zip(base, hashes, strict=True):
        name = b if clash[b.casefold()] == 1 else f"{b}-{sha[:12]}"
        while name.casefold() in used:  # only if a file is itself named like another's suffixed name
            name += "_"
        used.add(name.casefold())
        names.append(name)
    return names


def prepare(replay_dirs: ReplayDirs, out_dir: str | os.PathLike, *, characters: list[str] | None = None,
            opponents: list[str] | None = None, ruleset: str = "tournament", reader: str = "auto",
            progress: bool = True) -> PrepareReport:
    """Parse every ``*.slp`` under ``replay_dirs`` (one folder or a list) into one dataset in ``out_dir``
    (npz per game + ``manifest.json``).

    Args:
        replay_dirs: a replay folder or a list of them, searched recursively. A replay whose content
            (sha256) was already seen is prepared once and reported under ``duplicates``.
        characters: keep games where a *human* player (one the trainer may imitate) is one of these
            (CSS names such as ``"FOX"``).
        opponents: ...and that player's opponent (human or CPU) is one of these.
        ruleset: ``"tournament"`` or ``"any"``.
        reader: ``"auto"`` (peppi-py, libmelee's file reader where peppi-py fails), ``"peppi"`` or
            ``"libmelee"`` (only that reader; ``"libmelee"`` does not use peppi-py at all).
        progress: show a tqdm progress bar.

    Raises ``RecurlError`` for a missing replay folder, an output folder that is a file, a replay folder or
    holds replays, and when the folders hold no ``.slp`` at all. A replay that no reader can parse is
    skipped with every reader's reason in the report; it never aborts the run.
    """
    from tqdm import tqdm

    if ruleset not in ("tournament", "any"):
        raise RecurlError(f"unknown ruleset {ruleset!r}: choose tournament or any")
    if reader not in READERS:
        raise RecurlError(f"unknown reader {reader!r}: choose {', '.join(READERS)}")
    dirs, dst = _replay_dir_list(replay_dirs), Path(out_dir)
    _check_out_dir(dst, dirs)
    available = {"peppi": importlib.util.find_spec("peppi_py") is not None,
                 "libmelee": importlib.util.find_spec("melee") is not None}
    needed = {"auto": ("peppi", "libmelee"), "peppi": ("peppi",), "libmelee": ("libmelee",)}[reader]
    if not any(available[r] for r in needed):
        raise RecurlError(f"no replay reader installed for reader={reader}: pip install recurl[melee] "
                          "(peppi-py) or melee (libmelee)")
    chars = {F.character_id(c) for c in characters} if characters else None
    opps = {F.character_id(c) for c in opponents} if opponents else None
    files = [(d, p) for d in dirs for p in sorted(d.rglob("*.slp"))]
    if not files:
        raise RecurlError(f"no .slp replays in {', '.join(str(d) for d in dirs)}")
    dst.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(replay_dirs=[str(d) for d in dirs])
    t0 = time.perf_counter()
    first: dict[str, dict[str, str]] = {}  # sha256 -> the source kept for it
    todo: list[tuple[Path, dict[str, str], str]] = []
    for d, path in tqdm(files, desc="hash", unit="replay", disable=not progress):
        source = {"file": path.name, "source_dir": str(d), "source_file": path.relative_to(d).as_posix()}
        try:
            sha = file_sha256(path)
        except OSError as e:  # e.g. a folder named *.slp, a file without read permission
            report.skipped.append({**source, "reason": f"unreadable ({_reason(e)})"})
            continue
        if sha in first:
            report.duplicates.append({**source, "sha256": sha, "duplicate_of": report.shown(first[sha])})
            continue
        first[sha] = source
        todo.append((path, source, sha))
    names = _npz_names([s for _, s, _ in todo], [h for _, _, h in todo])
    for (path, source, sha), name in tqdm(list(zip(todo, names, strict=True)), desc="prepare", unit="replay",
                                          disable=not progress):
        try:
            entry = _prepare_one(path, source, sha, dst, name, ruleset, chars, opps, reader, available)
        except _Skip as e:
            report.skipped.append({**source, "reason": str(e)})
            continue
        except _Unreadable as e:
            report.skipped.append({**source, "reason": f"unreadable ({e})"})
            continue
        except Exception as e:  # a bad replay must never abort the run (e.g. a failing npz write)
            report.skipped.append({**source, "reason": f"unreadable ({_reason(e)})"})
            continue
        report.games.append(entry)
        report.frames += entry["frames"]
    report.seconds = time.perf_counter() - t0
    manifest = {"ruleset": ruleset, "characters": characters, "opponents": opponents, "reader": reader,
                "replay_dirs": report.replay_dirs,
                "features": {"floats": list(F.FLOAT_NAMES), "buttons": list(F.BUTTON_NAMES),
                             "main_classes": F.NUM_MAIN, "cstick": list(F.CSTICK_NAMES),
                             "shoulder_edges": list(F.SHOULDER_EDGES), "raw_defaults": F.RAW_DEFAULTS},
                "games": report.games, "skipped": report.skipped, "duplicates": report.duplicates}
    write_json(dst / "manifest.json", manifest)
    return report


def load_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``manifest.json`` of a prepared dataset (``FileNotFoundError`` if there is none)."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise RecurlError(f"no prepared dataset at {data_dir} (no manifest.json): run `recurl melee prepare`")
    return read_json(path)
