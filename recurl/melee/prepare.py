"""Turn a folder of Slippi replays (.slp) into a compact per-game dataset.

``prepare(replay_dir, out_dir)`` parses every ``*.slp`` under ``replay_dir`` with peppi-py and writes, per
accepted game, one compressed ``<name>.npz`` holding, for every player ``i`` (ports in ascending order):

- ``p{i}_floats[N, NUM_FLOATS]`` float32, ``p{i}_action[N]`` int16, ``p{i}_character[N]`` uint8
- ``p{i}_nana[N, NUM_FLOATS + 1]`` float32: the Ice Climbers follower's floats plus a presence flag
  (zeros for every other character and for frames where Nana is gone)
- targets ``p{i}_buttons[N, 5]`` uint8, ``p{i}_main[N]`` int16, ``p{i}_cstick[N]``, ``p{i}_shoulder[N]`` uint8
- ``frame[N]`` int32 (ascending, one per frame index), ``stage`` (compact index, see ``features``).

plus ``manifest.json`` with per-game metadata and the run's report. Rollback duplicates are removed by
keeping the *last* record of each frame index (the one the game finally used).

Tournament ruleset (``ruleset="tournament"``): 2 players, no teams, a legal stage, 4 starting stocks, an
8-minute timer, items off (item spawn frequency ``-1``). Rule for missing information: a check whose field
the replay does not hold passes, and the game's manifest entry lists it under ``ruleset.assumed``.
``ruleset="any"`` accepts every game that parses. CPU players are kept and marked (``cpu: true``); the
trainer never imitates them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recurl.checkpoint import read_json, write_json
from recurl.errors import RecurlError
from recurl.melee import features as F

TOURNAMENT_STOCKS = 4
TOURNAMENT_TIMER_S = 480
ITEMS_OFF = -1
# peppi post fields the features read, with the raw key they feed.
_POST_OPTIONAL = {"airborne": "airborne", "jumps": "jumps", "hurtbox_state": "hurtbox", "hitlag": "hitlag",
                  "misc_as": "misc_as", "velocities": "vel_air_x, vel_y, kb_x, kb_y, vel_ground_x"}


@dataclass
class PrepareReport:
    """What ``prepare`` did: accepted games (manifest entries), skipped files with reasons, throughput."""

    games: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        """Human-readable report, one line per game or skipped file."""
        out = []
        for g in self.games:
            players = " vs ".join(f"{p['character']}{' (CPU)' if p['cpu'] else ''}" for p in g["players"])
            miss = ", ".join(g["missing_fields"]) or "-"
            assumed = ", ".join(g["ruleset"]["assumed"]) or "-"
            out.append(f"ok   {g['file']}: v{g['slippi_version']} {g['stage_name']} {players}, "
                       f"{g['frames']} frames ({g['rollback_frames_removed']} rollback dropped); "
                       f"missing: {miss}; assumed: {assumed}")
        out += [f"skip {s['file']}: {s['reason']}" for s in self.skipped]
        out.append(f"{len(self.games)} games, {len(self.skipped)} skipped, {self.frames} frames "
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


def check_tournament(start: Any) -> tuple[list[str], list[str]]:
    """Tournament-ruleset check of a peppi ``Start``: ``(violations, assumed)`` (assumed: unchecked)."""
    bad, assumed = [], []
    if len(start.players) != 2:
        bad.append(f"{len(start.players)} players (needs 1v1)")
    if getattr(start, "is_teams", None):
        bad.append("teams")
    if start.stage not in F.LEGAL_STAGES:
        bad.append(f"stage {start.stage} not legal")
    stocks = [p.stocks for p in start.players]
    if any(s is None for s in stocks):
        assumed.append("stocks")
    elif any(s != TOURNAMENT_STOCKS for s in stocks):
        bad.append(f"stocks {stocks} (needs {TOURNAMENT_STOCKS})")
    timer = getattr(start, "timer", None)
    if timer is None:
        assumed.append("timer")
    elif timer != TOURNAMENT_TIMER_S:
        bad.append(f"timer {timer}s (needs {TOURNAMENT_TIMER_S}s)")
    items = getattr(start, "item_spawn_frequency", None)
    if items is None:
        assumed.append("items")
    elif items != ITEMS_OFF:
        bad.append(f"items on (frequency {items})")
    return bad, assumed


class _Skip(Exception):
    """A replay that parsed but was filtered out."""


def _prepare_one(path: Path, out_dir: Path, name: str, ruleset: str, characters: set[int] | None,
                 opponents: set[int] | None) -> dict[str, Any]:
    """Parse one replay and write its .npz; returns its manifest entry. Raises ``_Skip`` when filtered."""
    from peppi_py import read_slippi  # optional dependency: recurl[melee]

    game = read_slippi(str(path))
    start = game.start
    bad, assumed = check_tournament(start)
    if ruleset == "tournament" and bad:
        raise _Skip("not tournament ruleset: " + "; ".join(bad))
    css = [p.character for p in start.players]
    if characters is not None or opponents is not None:
        human = [pl.type.name != "CPU" for pl in start.players]
        ok = any(human[i] and (characters is None or css[i] in characters)
                 and (opponents is None or any(css[j] in opponents for j in range(len(css)) if j != i))
                 for i in range(len(css)))
        if not ok:
            raise _Skip("character filter: " + " vs ".join(F.character_name(c) for c in css))
    ids = _np(game.frames.id).astype(np.int64)
    idx = dedupe_frames(ids)
    if len(idx) == 0 or len(game.frames.ports) != len(start.players):
        raise _Skip("no frames")
    arrays: dict[str, np.ndarray] = {"frame": ids[idx].astype(np.int32),
                                     "stage": np.asarray(F.stage_index(start.stage), dtype=np.int16)}
    players = []
    for i, (pl, pd) in enumerate(zip(start.players, game.frames.ports, strict=True)):
        arrays.update(_player_arrays(pd.leader, pd.follower, idx, f"p{i}"))
        players.append({"index": i, "port": int(pl.port) + 1, "character": F.character_name(pl.character),
                        "css_id": int(pl.character), "cpu": pl.type.name == "CPU",
                        "start_stocks": pl.stocks, "has_nana": pd.follower is not None})
    post = game.frames.ports[0].leader.post
    missing = [f for f in _POST_OPTIONAL if getattr(post, f) is None]
    defaults = {}
    for f in missing:
        for key in _POST_OPTIONAL[f].split(", "):
            defaults[key] = F.RAW_DEFAULTS[key]
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    return {
        "file": path.name, "npz": f"{name}.npz", "slippi_version": ".".join(map(str, start.slippi.version)),
        "stage": int(start.stage), "stage_name": F.LEGAL_STAGES.get(start.stage, f"STAGE_{start.stage}"),
        "players": players, "frames": len(idx), "raw_frames": len(ids),
        "rollback_frames_removed": len(ids) - len(idx), "duration_s": round(len(idx) / 60.0, 2),
        "missing_fields": missing, "defaults_used": defaults,
        "ruleset": {"tournament": not bad, "violations": bad, "assumed": assumed},
        "end_method": getattr(getattr(game.end, "method", None), "name", None) if game.end else None,
    }


def prepare(replay_dir: str | os.PathLike, out_dir: str | os.PathLike, *, characters: list[str] | None = None,
            opponents: list[str] | None = None, ruleset: str = "tournament",
            progress: bool = True) -> PrepareReport:
    """Parse every ``*.slp`` under ``replay_dir`` into ``out_dir`` (npz per game + ``manifest.json``).

    Args:
        characters: keep games where a *human* player (one the trainer may imitate) is one of these
            (CSS names such as ``"FOX"``).
        opponents: ...and that player's opponent (human or CPU) is one of these.
        ruleset: ``"tournament"`` or ``"any"``.
        progress: show a tqdm progress bar.

    A replay that fails to parse is skipped with its reason in the report; it never aborts the run.
    """
    from tqdm import tqdm

    if ruleset not in ("tournament", "any"):
        raise RecurlError(f"unknown ruleset {ruleset!r}: choose tournament or any")
    src, dst = Path(replay_dir), Path(out_dir)
    if not src.is_dir():
        raise RecurlError(f"replay directory not found: {src}")
    chars = {F.character_id(c) for c in characters} if characters else None
    opps = {F.character_id(c) for c in opponents} if opponents else None
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.rglob("*.slp"))
    report = PrepareReport()
    t0 = time.perf_counter()
    used: set[str] = set()
    for path in tqdm(files, desc="prepare", unit="replay", disable=not progress):
        name = path.relative_to(src).with_suffix("").as_posix().replace("/", "__")
        while name in used:  # keep npz names unique
            name += "_"
        try:
            entry = _prepare_one(path, dst, name, ruleset, chars, opps)
        except _Skip as e:
            report.skipped.append({"file": path.name, "reason": str(e)})
            continue
        except Exception as e:  # a bad replay must never abort the run
            report.skipped.append({"file": path.name, "reason": f"unreadable ({type(e).__name__}: {e})"})
            continue
        used.add(name)
        report.games.append(entry)
        report.frames += entry["frames"]
    report.seconds = time.perf_counter() - t0
    manifest = {"ruleset": ruleset, "characters": characters, "opponents": opponents,
                "features": {"floats": list(F.FLOAT_NAMES), "buttons": list(F.BUTTON_NAMES),
                             "main_classes": F.NUM_MAIN, "cstick": list(F.CSTICK_NAMES),
                             "shoulder_edges": list(F.SHOULDER_EDGES), "raw_defaults": F.RAW_DEFAULTS},
                "games": report.games, "skipped": report.skipped}
    write_json(dst / "manifest.json", manifest)
    return report


def load_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``manifest.json`` of a prepared dataset (``FileNotFoundError`` if there is none)."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise RecurlError(f"no prepared dataset at {data_dir} (no manifest.json): run `recurl melee prepare`")
    return read_json(path)
