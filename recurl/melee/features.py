"""Feature definitions shared by the replay path (peppi-py) and the live path (libmelee).

Both paths first gather *raw* per-player arrays with the keys in :data:`RAW_DEFAULTS` (the names and units
of the Slippi post-frame / pre-frame fields), then call the same encoders here, so a feature can never be
computed two different ways.

Observation (per player, per frame):

- ``action``: action state id, clipped to ``NUM_ACTIONS - 1`` (ids above 398 are rare special states).
- ``character``: in-game (internal) character id, ``0..NUM_CHARACTERS-1`` (Sheik and Zelda differ, Nana
  is 11).
- ``floats``: the ``FLOAT_NAMES`` columns, each ``clip(raw * scale, lo, hi)`` with the constants in
  :data:`FLOAT_SPECS`.
- stage (per game): compact index ``0`` = not a legal stage, ``1..6`` = :data:`LEGAL_STAGES`.

Controller targets (per player, per frame):

- ``buttons[5]``: A, B, JUMP (X or Y), Z, SHIELD (digital L or R), from the *physical* button bits.
- ``main``: joint main-stick class ``ix * STICK_BUCKETS + iy`` (17 x 17 = 289 classes). Each axis is
  snapped to Melee's 1/80 stick grid (rounding half away from zero) and then bucketed in steps of 10 grid
  units: bucket ``8`` is neutral (``|k| <= 4``), ``16``/``0`` are full right/left (``|k| >= 75``).
- ``cstick``: 5 classes NEUTRAL, UP, DOWN, LEFT, RIGHT: neutral unless an axis reaches half tilt (40 grid
  units); otherwise the larger axis wins, x on ties.
- ``shoulder``: analog trigger in 4 classes: OFF (< 0.3, the game's dead zone), LIGHT (< 0.55),
  MEDIUM (< 1.0), FULL (1.0, also what a digital L/R click gives).

Fields that old replays lack (1.x: airborne, jumps, hurtbox, velocities, hitlag, misc_as; 2.0: hurtbox,
velocities, hitlag) take the values in :data:`RAW_DEFAULTS`, the same ones libmelee uses, so both paths
agree on old replays too.
"""

from __future__ import annotations

import numpy as np

NUM_ACTIONS = 400
NUM_CHARACTERS = 33
# External (stage-select) ids of the six tournament-legal stages; the compact index is position + 1.
LEGAL_STAGES: dict[int, str] = {
    2: "FOUNTAIN_OF_DREAMS",
    3: "POKEMON_STADIUM",
    8: "YOSHIS_STORY",
    28: "DREAM_LAND_N64",
    31: "BATTLEFIELD",
    32: "FINAL_DESTINATION",
}
NUM_STAGES = len(LEGAL_STAGES) + 1
# Character-select-screen (external) ids, as stored in a replay's game start block.
CSS_CHARACTERS: tuple[str, ...] = (
    "CAPTAIN_FALCON", "DONKEY_KONG", "FOX", "GAME_AND_WATCH", "KIRBY", "BOWSER", "LINK", "LUIGI",
    "MARIO", "MARTH", "MEWTWO", "NESS", "PEACH", "PIKACHU", "ICE_CLIMBERS", "JIGGLYPUFF", "SAMUS",
    "YOSHI", "ZELDA", "SHEIK", "FALCO", "YOUNG_LINK", "DR_MARIO", "ROY", "PICHU", "GANONDORF",
)

# Raw per-player fields and the default used when a replay's version lacks the field.
RAW_DEFAULTS: dict[str, float] = {
    "x": 0.0, "y": 0.0, "percent": 0.0, "stocks": 0.0, "direction": 1.0, "shield": 60.0,
    "jumps": 1.0,        # missing before 2.0: libmelee's default too
    "airborne": 0.0,     # missing before 2.0: counted as on ground
    "hurtbox": 0.0,      # missing before 3.0: vulnerable
    "hitlag": 0.0, "misc_as": 0.0,
    "vel_air_x": 0.0, "vel_y": 0.0, "kb_x": 0.0, "kb_y": 0.0, "vel_ground_x": 0.0,
    "action": 0.0, "character": 0.0,
}

# name: (raw key, scale, lo, hi). The x-like columns are negated by the mirror augmentation.
FLOAT_SPECS: dict[str, tuple[str, float, float, float]] = {
    "x": ("x", 0.05, -12.0, 12.0),
    "y": ("y", 0.05, -12.0, 12.0),
    "percent": ("percent", 0.01, 0.0, 5.0),
    "stocks": ("stocks", 0.25, 0.0, 1.25),
    "facing": ("direction", 1.0, -1.0, 1.0),  # +1 right, -1 left
    "shield": ("shield", 1.0 / 60.0, 0.0, 1.0),
    "jumps": ("jumps", 0.25, 0.0, 1.5),
    "on_ground": ("airborne", 1.0, 0.0, 1.0),  # 1 - airborne, see encode_player
    "invulnerable": ("hurtbox", 1.0, 0.0, 1.0),  # hurtbox state != 0
    "hitlag": ("hitlag", 0.1, 0.0, 2.0),  # whole frames left
    "hitstun": ("misc_as", 0.02, 0.0, 2.0),  # whole frames left while in hitstun (misc_as)
    "vel_air_x": ("vel_air_x", 0.2, -5.0, 5.0),
    "vel_y": ("vel_y", 0.2, -5.0, 5.0),
    "kb_x": ("kb_x", 0.2, -5.0, 5.0),
    "kb_y": ("kb_y", 0.2, -5.0, 5.0),
    "vel_ground_x": ("vel_ground_x", 0.2, -5.0, 5.0),
}
FLOAT_NAMES: tuple[str, ...] = tuple(FLOAT_SPECS)
NUM_FLOATS = len(FLOAT_NAMES)
MIRROR_COLUMNS: tuple[int, ...] = tuple(
    FLOAT_NAMES.index(n) for n in ("x", "facing", "vel_air_x", "kb_x", "vel_ground_x")
)

BUTTON_NAMES: tuple[str, ...] = ("A", "B", "JUMP", "Z", "SHIELD")
# Physical button bits (Slippi pre-frame "physical buttons", same layout as the GameCube pad).
BUTTON_BITS: dict[str, int] = {"A": 0x0100, "B": 0x0200, "X": 0x0400, "Y": 0x0800, "Z": 0x0010,
                               "R": 0x0020, "L": 0x0040}
NUM_BUTTONS = len(BUTTON_NAMES)
STICK_GRID = 80  # Melee's sticks move in steps of 1/80
STICK_BUCKETS = 17
STICK_STEP = 10  # grid units per bucket
NUM_MAIN = STICK_BUCKETS * STICK_BUCKETS
MAIN_NEUTRAL = (STICK_BUCKETS // 2) * STICK_BUCKETS + STICK_BUCKETS // 2
CSTICK_NAMES: tuple[str, ...] = ("NEUTRAL", "UP", "DOWN", "LEFT", "RIGHT")
NUM_CSTICK = len(CSTICK_NAMES)
CSTICK_THRESHOLD = 40  # grid units: half tilt
SHOULDER_EDGES: tuple[float, ...] = (0.3, 0.55, 1.0)
SHOULDER_VALUES: tuple[float, ...] = (0.0, 0.4, 0.75, 1.0)  # value pressed at acting time, per class
NUM_SHOULDER = len(SHOULDER_VALUES)


def stage_index(external_id: int) -> int:
    """Compact stage index: 1..6 for the legal stages (external ids), 0 for anything else."""
    return list(LEGAL_STAGES).index(external_id) + 1 if external_id in LEGAL_STAGES else 0



def character_id(name: str) -> int:
    """External (CSS) id of a character name such as ``"FOX"`` (case-insensitive)."""
    key = name.strip().upper().replace("-", "_").replace(" ", "_")
    if key not in CSS_CHARACTERS:
        raise ValueError(f"unknown character {name!r}: choose from {', '.join(CSS_CHARACTERS)}")
    return CSS_CHARACTERS.index(key)


def character_name(css_id: int) -> str:
    """Name of an external (CSS) character id, ``"UNKNOWN_<id>"`` outside the table."""
    return CSS_CHARACTERS[css_id] if 0 <= css_id < len(CSS_CHARACTERS) else f"UNKNOWN_{css_id}"


_RAW_KEYS: tuple[str, ...] = tuple(RAW_DEFAULTS)
_RAW_DEFAULT = np.array([RAW_DEFAULTS[k] for k in _RAW_KEYS], np.float32)
_SPEC_COLUMNS = [_RAW_KEYS.index(key) for key, _, _, _ in FLOAT_SPECS.values()]
_SCALE = np.array([scale for _, scale, _, _ in FLOAT_SPECS.values()], np.float32)
_LO = np.array([lo for _, _, lo, _ in FLOAT_SPECS.values()], np.float32)
_HI = np.array([hi for _, _, _, hi in FLOAT_SPECS.values()], np.float32)


def encode_player(raw: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode one player's raw arrays (each ``[N]``, keys of :data:`RAW_DEFAULTS`).

    Returns ``(floats[N, NUM_FLOATS] float32, action[N] int16, character[N] uint8)``. Vectorised over
    the fields (the live agent calls it every frame: a handful of numpy calls, not one per field).
    """
    m = np.stack([np.asarray(raw[k], dtype=np.float32) for k in _RAW_KEYS], -1)
    m = np.where(np.isfinite(m), m, _RAW_DEFAULT)  # a field a replay lacks (NaN) takes its default
    col = {k: m[..., i] for i, k in enumerate(_RAW_KEYS)}
    m[..., _RAW_KEYS.index("direction")] = np.where(col["direction"] > 0, 1.0, -1.0)
    m[..., _RAW_KEYS.index("airborne")] = col["airborne"] == 0  # on_ground = not airborne
    m[..., _RAW_KEYS.index("hurtbox")] = col["hurtbox"] != 0
    # whole frames, truncated towards zero as the game (and libmelee) reads them
    for k in ("hitlag", "misc_as"):
        m[..., _RAW_KEYS.index(k)] = np.trunc(col[k])
    floats = np.clip(m[..., _SPEC_COLUMNS] * _SCALE, _LO, _HI)
    action = np.clip(col["action"], 0, NUM_ACTIONS - 1).astype(np.int16)
    character = np.clip(col["character"], 0, NUM_CHARACTERS - 1).astype(np.uint8)
    return floats, action, character


def encode_buttons(bits: np.ndarray) -> np.ndarray:
    """Physical button bits ``[N]`` -> ``[N, 5]`` uint8 (A, B, JUMP, Z, SHIELD)."""
    b = np.asarray(bits, dtype=np.int64)

    def pressed(*names: str) -> np.ndarray:
        mask = 0
        for n in names:
            mask |= BUTTON_BITS[n]
        return (b & mask) != 0

    return np.stack([pressed("A"), pressed("B"), pressed("X", "Y"), pressed("Z"), pressed("L", "R")],
                    axis=-1).astype(np.uint8)


def stick_grid(v: np.ndarray) -> np.ndarray:
    """Stick axis in [-1, 1] -> integer grid units in [-80, 80], rounding half away from zero.

    The tiny bias keeps CPU inputs, which sit on half grid steps, on the same side in both the peppi and
    the libmelee path (libmelee stores ``v / 2 + 0.5`` and loses the last bit).
    """
    v = np.nan_to_num(np.asarray(v, dtype=np.float64))
    k = np.floor(np.abs(v) * STICK_GRID + 0.5 + 1e-3)
    return (np.sign(v) * np.minimum(k, STICK_GRID)).astype(np.int64)


def stick_bucket(v: np.ndarray) -> np.ndarray:
    """Stick axis in [-1, 1] -> bucket ``0..16`` (8 = neutral), symmetric under ``v -> -v``."""
    k = stick_grid(v)
    return (np.sign(k) * ((np.abs(k) + STICK_STEP // 2) // STICK_STEP) + STICK_BUCKETS // 2).astype(np.int64)


def encode_main(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Main stick ``x[N], y[N]`` in [-1, 1] -> joint class ``[N]`` int16 in ``0..288``."""
    return (stick_bucket(x) * STICK_BUCKETS + stick_bucket(y)).astype(np.int16)


def encode_cstick(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """C-stick ``x[N], y[N]`` in [-1, 1] -> class ``[N]`` uint8 (NEUTRAL, UP, DOWN, LEFT, RIGHT)."""
    kx, ky = stick_grid(x), stick_grid(y)
    use_x = np.abs(kx) >= np.abs(ky)
    out = np.where(use_x, np.where(kx > 0, 4, 3), np.where(ky > 0, 1, 2))
    return np.where(np.maximum(np.abs(kx), np.abs(ky)) >= CSTICK_THRESHOLD, out, 0).astype(np.uint8)


def encode_shoulder(trigger: np.ndarray) -> np.ndarray:
    """Processed analog trigger ``[N]`` in [0, 1] -> class ``[N]`` uint8 (OFF, LIGHT, MEDIUM, FULL)."""
    t = np.nan_to_num(np.asarray(trigger, dtype=np.float32))
    return np.searchsorted(np.asarray(SHOULDER_EDGES, dtype=np.float32), t, side="right").astype(np.uint8)


def main_values(cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint main-stick class ``[N]`` -> bucket-centre stick ``(x[N], y[N])`` in [-1, 1]."""
    cls = np.asarray(cls, dtype=np.int64)
    step = STICK_STEP / STICK_GRID
    return ((cls // STICK_BUCKETS - STICK_BUCKETS // 2) * step).clip(-1, 1), \
        ((cls % STICK_BUCKETS - STICK_BUCKETS // 2) * step).clip(-1, 1)


def cstick_values(cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C-stick class ``[N]`` -> full-tilt stick ``(x[N], y[N])`` in [-1, 1]."""
    table = np.array([[0, 0], [0, 1], [0, -1], [-1, 0], [1, 0]], dtype=np.float64)
    v = table[np.asarray(cls, dtype=np.int64)]
    return v[..., 0], v[..., 1]


def mirror_main(cls: np.ndarray) -> np.ndarray:
    """Flip the x bucket of joint main-stick classes (any shape)."""
    cls = np.asarray(cls)
    ix, iy = cls // STICK_BUCKETS, cls % STICK_BUCKETS
    return ((STICK_BUCKETS - 1 - ix) * STICK_BUCKETS + iy).astype(cls.dtype)


def mirror_cstick(cls: np.ndarray) -> np.ndarray:
    """Swap LEFT and RIGHT c-stick classes (any shape)."""
    cls = np.asarray(cls)
    return np.choose(cls.astype(np.int64), [0, 1, 2, 4, 3]).astype(cls.dtype)


def mirror_floats(floats: np.ndarray) -> np.ndarray:
    """Negate the x-like columns (x, facing, x velocities) of ``floats[..., NUM_FLOATS]``; returns a copy."""
    out = np.array(floats, copy=True)
    out[..., list(MIRROR_COLUMNS)] *= -1
    return out


# Observation float layout used by the model: self, opponent, self's Nana, opponent's Nana; each Nana
# block is NUM_FLOATS columns plus a presence flag.
NANA_WIDTH = NUM_FLOATS + 1
OBS_FLOATS = 2 * NUM_FLOATS + 2 * NANA_WIDTH
FLOAT_BLOCKS: tuple[int, ...] = (0, NUM_FLOATS, 2 * NUM_FLOATS, 2 * NUM_FLOATS + NANA_WIDTH)


# The float columns a 2.0 replay lacks (hurtbox, hitlag, velocities; 15 of the 36 corpus games are 2.0.1)
# and the value their default encodes to; the "old replay" augmentation sets them in every player block.
V2_MISSING: tuple[str, ...] = ("invulnerable", "hitlag", "vel_air_x", "vel_y", "kb_x", "kb_y", "vel_ground_x")
_V2_COLUMNS = [FLOAT_NAMES.index(n) for n in V2_MISSING]
_V2_DEFAULTS = np.clip(_RAW_DEFAULT[_SPEC_COLUMNS] * _SCALE, _LO, _HI)[_V2_COLUMNS]
_V2_OBS_COLUMNS = [start + c for start in FLOAT_BLOCKS for c in _V2_COLUMNS]  # in every player block


def as_v2_obs_floats(obs: np.ndarray) -> np.ndarray:
    """An observation float array ``[..., OBS_FLOATS]`` as a 2.0 replay would give it: the :data:`V2_MISSING`
    columns of all four player blocks at their defaults (a no-op on a replay that lacks them); a copy."""
    out = np.array(obs, copy=True)
    out[..., _V2_OBS_COLUMNS] = np.tile(_V2_DEFAULTS, len(FLOAT_BLOCKS))
    return out


def mirror_obs_floats(obs: np.ndarray) -> np.ndarray:
    """Mirror an observation float array ``[..., OBS_FLOATS]`` (all four player blocks)."""
    out = np.array(obs, copy=True)
    for start in FLOAT_BLOCKS:
        out[..., start:start + NUM_FLOATS] = mirror_floats(obs[..., start:start + NUM_FLOATS])
    return out
