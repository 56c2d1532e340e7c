"""libmelee's view of Melee frames as the replay features: the one libmelee -> features converter.

Used by the live adapter (:mod:`recurl.integrations.melee`, one ``PlayerState`` per step) and by ``prepare``'s
fallback reader for replays peppi-py cannot read (:func:`read_replay`, libmelee's offline file console).
Both gather the raw fields of ``features.RAW_DEFAULTS`` from libmelee ``PlayerState`` objects and call the
shared encoders, so a frame gives identical arrays whichever reader produced it (tested against peppi-py
on the shared replays).

What libmelee cannot give, and how it is handled:

- ``state_age`` is rewritten by libmelee (not a feature); Nana's controller is dropped (not a target).
- The game start block is only partly exposed: version, stage (the six legal ones; anything else is
  ``NO_STAGE``), teams flag, ports, CPU level. Start stocks come from each player's first frame and the
  CSS character from the first frame's in-game character (both equal peppi's on the shared replays).
  The timer, the item setting, a non-legal stage's id and the game end method are not available.
- Post-frame fields an old format version lacks are filled by libmelee with the same defaults as
  ``features.RAW_DEFAULTS``; which ones were filled follows from the post-frame event size
  (:data:`POST_FIELD_END`), under the same names as peppi's ``Post`` fields.

``melee`` (libmelee) is an optional dependency and is imported inside the functions that need it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recurl.melee import features as F

# libmelee stage names -> external stage ids (see features.LEGAL_STAGES); libmelee names no other stage.
LIBMELEE_STAGES: dict[str, int] = {"FOUNTAIN_OF_DREAMS": 2, "POKEMON_STADIUM": 3, "YOSHIS_STORY": 8,
                                   "DREAMLAND": 28, "BATTLEFIELD": 31, "FINAL_DESTINATION": 32}
# libmelee (in-game, internal) character names -> CSS names of features.CSS_CHARACTERS.
_CSS_OF_INTERNAL: dict[str, str] = {
    "CPTFALCON": "CAPTAIN_FALCON", "DK": "DONKEY_KONG", "GAMEANDWATCH": "GAME_AND_WATCH",
    "POPO": "ICE_CLIMBERS", "NANA": "ICE_CLIMBERS", "YLINK": "YOUNG_LINK", "DOC": "DR_MARIO",
}
_BUTTON_ENUMS: dict[str, str] = {"A": "BUTTON_A", "B": "BUTTON_B", "X": "BUTTON_X", "Y": "BUTTON_Y",
                                 "Z": "BUTTON_Z", "R": "BUTTON_R", "L": "BUTTON_L"}
# Post-frame event size (bytes, command byte included) a field needs: libmelee reads each field at a fixed
# offset and falls back to its default when the event is too short. Names are peppi's ``Post`` fields.
POST_FIELD_END: dict[str, int] = {"airborne": 0x30, "jumps": 0x33, "hurtbox_state": 0x35, "hitlag": 0x4D,
                                  "misc_as": 0x2F, "velocities": 0x49}
_POST_FRAME_EVENT = 0x38
_RAW_KEYS: tuple[str, ...] = ("x", "y", "percent", "stocks", "direction", "shield", "jumps", "airborne",
                              "hurtbox", "hitlag", "misc_as", "vel_air_x", "vel_y", "kb_x", "kb_y",
                              "vel_ground_x", "action", "character")


def stage_external_id(stage: Any) -> int | None:
    """External stage id of a libmelee ``Stage`` enum; ``None`` for any stage libmelee does not name."""
    return LIBMELEE_STAGES.get(getattr(stage, "name", ""))


def stage_index(stage: Any) -> int:
    """Compact stage index of a libmelee ``Stage`` enum (0 for anything but the six legal stages)."""
    ext = stage_external_id(stage)
    return F.stage_index(ext if ext is not None else -1)


def css_id(character: Any) -> int:
    """External (CSS) character id of a libmelee in-game ``Character`` enum (-1 if it has none)."""
    name = _CSS_OF_INTERNAL.get(character.name, character.name)
    return F.CSS_CHARACTERS.index(name) if name in F.CSS_CHARACTERS else -1


def _raw_row(ps: Any) -> tuple[float, ...]:
    """One ``PlayerState`` as the values of :data:`_RAW_KEYS` (the raw fields of ``features``)."""
    return (ps.position.x, ps.position.y, ps.percent, ps.stock, 1.0 if ps.facing else -1.0,
            ps.shield_strength, ps.jumps_left, 0.0 if ps.on_ground else 1.0, float(bool(ps.invulnerable)),
            ps.hitlag_left, ps.hitstun_frames_left, ps.speed_air_x_self, ps.speed_y_self, ps.speed_x_attack,
            ps.speed_y_attack, ps.speed_ground_x_self, ps.action.value, ps.character.value)


def _encode_raw(states: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # float32 per value, as the live path always did: the encoders then see exactly peppi's values
    raw = np.asarray([_raw_row(ps) for ps in states], dtype=np.float32).reshape(len(states), len(_RAW_KEYS))
    return F.encode_player({k: raw[:, j] for j, k in enumerate(_RAW_KEYS)})


def encode_bodies(states: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The game-state features of ``N`` libmelee ``PlayerState`` s (any players, any frames), without their
    controllers: ``floats[N, F]``, ``action[N]``, ``character[N]``, ``nana[N, F + 1]`` (zeros where Nana is
    absent). One encoder call for all of them (the live agent encodes both players of a frame at once)."""
    floats, action, character = _encode_raw(states)
    nana = np.zeros((len(states), F.NANA_WIDTH), dtype=np.float32)
    rows = [i for i, ps in enumerate(states) if ps.nana is not None]
    if rows:
        nana[rows, :F.NUM_FLOATS] = _encode_raw([states[i].nana for i in rows])[0]
        nana[rows, F.NUM_FLOATS] = 1.0
    return floats, action, character, nana


def encode_states(states: Sequence[Any]) -> dict[str, np.ndarray]:
    """Encode a sequence of one player's libmelee ``PlayerState`` (one per frame, ``N`` of them).

    Returns the ``p{i}_*`` arrays of ``prepare`` without the prefix: ``floats[N, F]``, ``action[N]``,
    ``character[N]``, ``nana[N, F + 1]`` (zeros where Nana is absent), ``buttons[N, 5]``, ``main[N]``,
    ``cstick[N]``, ``shoulder[N]``, with the dtypes of the replay path.
    """
    import melee

    floats, action, character, nana = encode_bodies(states)
    enums = [(F.BUTTON_BITS[n], getattr(melee.Button, e)) for n, e in _BUTTON_ENUMS.items()]
    n = len(states)
    bits = np.zeros(n, dtype=np.int64)
    sticks = np.zeros((n, 4), dtype=np.float32)
    trigger = np.zeros(n, dtype=np.float32)
    for i, ps in enumerate(states):
        cs = ps.controller_state
        bits[i] = sum(bit for bit, e in enums if cs.button[e])
        sticks[i] = (*cs.main_stick, *cs.c_stick)
        trigger[i] = cs.l_shoulder
    # libmelee stores sticks as v / 2 + 0.5 (float32); features.stick_grid absorbs this round trip's rounding
    sticks = (sticks - np.float32(0.5)) * np.float32(2)
    return {
        "floats": floats, "action": action, "character": character, "nana": nana,
        "buttons": F.encode_buttons(bits), "main": F.encode_main(sticks[:, 0], sticks[:, 1]),
        "cstick": F.encode_cstick(sticks[:, 2], sticks[:, 3]), "shoulder": F.encode_shoulder(trigger),
    }


@dataclass
class LibmeleeReplay:
    """Every frame record of a replay as libmelee's file console gives it (rollback duplicates included).

    ``frame_ids[M]`` in file order; ``players[port]``: that port's ``PlayerState`` per record (ports
    1-based, ascending); ``missing_post`` the post-frame fields the format lacks (libmelee defaults used).
    """

    version: str
    stage: Any
    is_teams: bool
    frame_ids: np.ndarray
    players: dict[int, list[Any]] = field(default_factory=dict)
    missing_post: list[str] = field(default_factory=list)

    def player_info(self, port: int) -> dict[str, Any]:
        """What the frames tell about a player: CSS id (first frame's character), CPU flag, start stocks
        (first frame's stocks) and whether Nana ever appears."""
        states = self.players[port]
        first = states[0]
        return {"css_id": css_id(first.character), "cpu": int(first.cpu_level) > 0,
                "start_stocks": int(first.stock), "has_nana": any(ps.nana is not None for ps in states)}


def read_replay(path: str | os.PathLike) -> LibmeleeReplay:
    """Read every frame of a ``.slp`` with libmelee's offline file console.

    ``skip_rollback_frames=False`` keeps every record (dedupe with ``prepare.dedupe_frames``, keeping the
    last record per frame as peppi-py's path does); ``allow_old_version`` reads formats before 3.0.
    Raises ``ImportError`` without libmelee and ``ValueError`` for a replay without usable frames.
    """
    import melee

    console = melee.Console(is_dolphin=False, path=str(path), allow_old_version=True,
                            skip_rollback_frames=False)
    if not console.connect():
        raise ValueError("libmelee could not open the file")
    ids: list[int] = []
    players: dict[int, list[Any]] = {}
    stage, teams = None, False
    while (gs := console.step()) is not None:
        if not gs.players:
            continue
        if not players:
            players = {p: [] for p in sorted(gs.players)}
            stage, teams = gs.stage, bool(gs.is_teams)
        if set(gs.players) != set(players):
            raise ValueError(f"frame {gs.frame}: ports {sorted(gs.players)} differ from {sorted(players)}")
        ids.append(int(gs.frame))
        for port, states in players.items():
            states.append(gs.players[port])
    if not ids:
        raise ValueError("no frames")
    size = console.eventsize[_POST_FRAME_EVENT]
    return LibmeleeReplay(version=str(console.slp_version), stage=stage, is_teams=teams,
                          frame_ids=np.asarray(ids, dtype=np.int64), players=players,
                          missing_post=[f for f, end in POST_FIELD_END.items() if size < end])
