"""libmelee adapter: turn live ``melee.GameState`` objects into the replay features and play a model.

``player_arrays(player_state)`` gathers one frame of a libmelee ``PlayerState`` into the same raw fields as
the replay path and encodes them with ``recurl.melee.features``, so a frame seen live and the same frame
read from a replay by peppi-py give identical inputs (tested on the shared replays through libmelee's
offline file console). ``MeleeAgent`` keeps the last ``D`` frames, builds the model input with
``train.make_sequence`` (the exact training alignment: to choose the controller of frame ``u`` it sees the
state of frame ``u - D`` and its own controller of frame ``u - 1``), steps the recurrent model and writes
the sampled controller to a libmelee ``Controller``. Timing: the ``GameState`` of frame ``t`` arrives after
frame ``t`` ran, so what the agent presses now is frame ``t + 1``'s controller (``u = t + 1``).

Fields that cannot match between the two paths, and why:

- ``state_age`` (action frame) is not used: libmelee rewrites it (1-indexed for some actions).
- Nana's controller is not available from libmelee (its post-frame handler replaces the pre-frame
  record), which is fine: the features only use Nana's post-frame state.
- libmelee skips rollback frames by keeping the *first* record of a frame index; pass
  ``skip_rollback_frames=False`` and keep the last record (``prepare.dedupe_frames``) to match the dataset.
- libmelee only names the six legal stages; any other stage becomes compact index 0 in both paths.

Live play needs Slippi Dolphin and a Melee ISO, which this repository cannot ship or test.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

from recurl.melee import features as F
from recurl.melee.model import MeleeModel
from recurl.melee.train import make_sequence, to_torch

# libmelee stage names -> external stage ids (see features.LEGAL_STAGES).
_LIBMELEE_STAGES = {"FOUNTAIN_OF_DREAMS": 2, "POKEMON_STADIUM": 3, "YOSHIS_STORY": 8, "DREAMLAND": 28,
                    "BATTLEFIELD": 31, "FINAL_DESTINATION": 32}
_BUTTON_ENUMS = {"A": "BUTTON_A", "B": "BUTTON_B", "X": "BUTTON_X", "Y": "BUTTON_Y", "Z": "BUTTON_Z",
                 "R": "BUTTON_R", "L": "BUTTON_L"}


def stage_index(stage: Any) -> int:
    """Compact stage index of a libmelee ``Stage`` enum (0 for anything but the six legal stages)."""
    return F.stage_index(_LIBMELEE_STAGES.get(getattr(stage, "name", ""), -1))


def _raw(ps: Any) -> dict[str, np.ndarray]:
    """One frame of a libmelee ``PlayerState`` as raw arrays ``[1]`` (keys of ``features.RAW_DEFAULTS``)."""
    values = {
        "x": ps.position.x, "y": ps.position.y, "percent": ps.percent, "stocks": ps.stock,
        "direction": 1.0 if ps.facing else -1.0, "shield": ps.shield_strength, "jumps": ps.jumps_left,
        "airborne": 0.0 if ps.on_ground else 1.0, "hurtbox": float(bool(ps.invulnerable)),
        "hitlag": ps.hitlag_left, "misc_as": ps.hitstun_frames_left,
        "vel_air_x": ps.speed_air_x_self, "vel_y": ps.speed_y_self, "kb_x": ps.speed_x_attack,
        "kb_y": ps.speed_y_attack, "vel_ground_x": ps.speed_ground_x_self,
        "action": ps.action.value, "character": ps.character.value,
    }
    return {k: np.asarray([v], dtype=np.float32) for k, v in values.items()}


def player_arrays(ps: Any) -> dict[str, np.ndarray]:
    """Encode one frame of a libmelee ``PlayerState``: the ``p{i}_*`` arrays of ``prepare`` without the
    prefix, each with a leading length-1 frame axis (``floats[1, F]``, ``nana[1, F + 1]``, ``buttons[1, 5]``,
    ``action, character, main, cstick, shoulder[1]``)."""
    import melee

    floats, action, character = F.encode_player(_raw(ps))
    cs = ps.controller_state
    bits = sum(F.BUTTON_BITS[n] for n, e in _BUTTON_ENUMS.items() if cs.button[getattr(melee.Button, e)])
    # libmelee stores sticks as v / 2 + 0.5; features.stick_grid absorbs the rounding of this round trip
    (mx, my), (cx, cy) = cs.main_stick, cs.c_stick
    nana = np.zeros((1, F.NANA_WIDTH), dtype=np.float32)
    if ps.nana is not None:
        nana[:, :F.NUM_FLOATS] = F.encode_player(_raw(ps.nana))[0]
        nana[:, F.NUM_FLOATS] = 1.0
    return {
        "floats": floats, "action": action, "character": character, "nana": nana,
        "buttons": F.encode_buttons(np.asarray([bits])),
        "main": F.encode_main(np.asarray([(mx - 0.5) * 2]), np.asarray([(my - 0.5) * 2])),
        "cstick": F.encode_cstick(np.asarray([(cx - 0.5) * 2]), np.asarray([(cy - 0.5) * 2])),
        "shoulder": F.encode_shoulder(np.asarray([cs.l_shoulder])),
    }


class MeleeAgent:
    """Plays a trained ``MeleeModel`` through libmelee, one frame at a time.

    Args:
        model: the trained model (``train.load_checkpoint``).
        delay: the reaction delay ``D`` it was trained with (``config["delay"]``).
        port, opponent_port: libmelee controller ports (1-4) of the agent and its opponent.
        controller: a connected ``melee.Controller`` for ``port`` (``None``: only compute the action).
        greedy: argmax instead of sampling.
    """

    def __init__(self, model: MeleeModel, delay: int, port: int, opponent_port: int, controller: Any = None,
                 greedy: bool = False) -> None:
        self.model, self.delay, self.port, self.opp = model.eval(), delay, port, opponent_port
        self.controller, self.greedy = controller, greedy
        self.reset()

    def reset(self) -> None:
        """Forget the game: empty frame history, zero recurrent state, neutral last controller."""
        self.frames: deque[dict[str, np.ndarray]] = deque(maxlen=self.delay)
        self.state = self.model.initial_state(1)
        self.first = True
        self.last = {"buttons": np.zeros((1, F.NUM_BUTTONS), np.uint8),
                     "main": np.array([F.MAIN_NEUTRAL], np.int16),
                     "cstick": np.zeros(1, np.uint8), "shoulder": np.zeros(1, np.uint8)}

    def step(self, gamestate: Any) -> dict[str, np.ndarray]:
        """Observe frame ``t`` and choose frame ``t + 1``'s controller. Returns the controller classes it
        pressed (neutral during the first ``D - 1`` frames of a game, before frame ``t + 1 - D`` exists)."""
        me, opp = gamestate.players[self.port], gamestate.players[self.opp]
        frame = {f"p0_{k}": v for k, v in player_arrays(me).items()}
        frame.update({f"p1_{k}": v for k, v in player_arrays(opp).items()})
        for k, v in self.last.items():  # frame t ran with what we pressed last step: use it, not the echo
            frame[f"p0_{k}"] = v
        frame["frame"] = np.asarray([gamestate.frame], np.int32)
        frame["stage"] = np.asarray(stage_index(gamestate.stage), np.int16)
        self.frames.append(frame)
        if len(self.frames) < self.delay:
            return self._press(self.last)
        # frames t+1-D .. t, plus frame t again as the placeholder row for t + 1 (its target is unused)
        rows = [*self.frames, frame]
        window = {k: np.concatenate([f[k] for f in rows]) if k != "stage" else frame["stage"] for k in frame}
        seq = make_sequence(window, 0, 1, self.delay)  # one row: state t + 1 - D, own controller t
        obs = to_torch(seq)
        is_first = torch.tensor([self.first])
        ctrl, self.state = self.model.act(obs, self.state, is_first, greedy=self.greedy)
        self.first = False
        action = {"buttons": ctrl["buttons"].numpy().astype(np.uint8),
                  "main": ctrl["main"].numpy().astype(np.int16),
                  "cstick": ctrl["cstick"].numpy().astype(np.uint8),
                  "shoulder": ctrl["shoulder"].numpy().astype(np.uint8)}
        return self._press(action)

    def _press(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Remember ``action`` as the last controller and write it to the libmelee controller."""
        self.last = action
        if self.controller is None:
            return action
        import melee

        c = self.controller
        pressed = dict(zip(F.BUTTON_NAMES, action["buttons"][0].astype(bool), strict=True))
        for name, button in (("A", "BUTTON_A"), ("B", "BUTTON_B"), ("JUMP", "BUTTON_X"), ("Z", "BUTTON_Z"),
                             ("SHIELD", "BUTTON_R")):
            (c.press_button if pressed[name] else c.release_button)(getattr(melee.Button, button))
        mx, my = F.main_values(action["main"])
        cx, cy = F.cstick_values(action["cstick"])
        # libmelee sticks take 0..1 with 0.5 neutral
        c.tilt_analog(melee.Button.BUTTON_MAIN, float(mx[0]) / 2 + 0.5, float(my[0]) / 2 + 0.5)
        c.tilt_analog(melee.Button.BUTTON_C, float(cx[0]) / 2 + 0.5, float(cy[0]) / 2 + 0.5)
        c.press_shoulder(melee.Button.BUTTON_L, F.SHOULDER_VALUES[int(action["shoulder"][0])])
        return action
