"""libmelee adapter: turn live ``melee.GameState`` objects into the replay features and play a model.

``player_arrays(player_state)`` gathers one frame of a libmelee ``PlayerState`` into the same raw fields as
the replay path and encodes them with ``recurl.melee.features``, so a frame seen live and the same frame
read from a replay by peppi-py give identical inputs (tested on the shared replays through libmelee's
offline file console). ``MeleeAgent`` builds the model's observation from each frame, acts with
:class:`recurl.Agent` (torch or ONNX) and presses the controller on a libmelee ``Controller`` with the
exact alignment of training (to choose the controller of frame ``u`` it sees the state of frame ``u - D``
and its own controller of frame ``u - 1``).

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

from pathlib import Path
from typing import Any

import numpy as np

from recurl.agent import Agent
from recurl.collector import ActionQueue
from recurl.errors import RecurlError
from recurl.melee import dataset as D
from recurl.melee import features as F
from recurl.melee import libmelee_reader as LM
from recurl.runs import load_model

#: the controller at rest: no button, sticks centred, shoulder released
NEUTRAL = np.zeros(len(D.CONTROLLER_NVEC), np.int64)
NEUTRAL[D.MAIN] = F.MAIN_NEUTRAL


def stage_index(stage: Any) -> int:
    """Compact stage index of a libmelee ``Stage`` enum (0 for anything but the six legal stages)."""
    return LM.stage_index(stage)


def player_arrays(ps: Any) -> dict[str, np.ndarray]:
    """Encode one frame of a libmelee ``PlayerState``: the ``p{i}_*`` arrays of ``prepare`` without the
    prefix, each with a leading length-1 frame axis (``floats[1, F]``, ``nana[1, F + 1]``, ``buttons[1, 5]``,
    ``action, character, main, cstick, shoulder[1]``). The converter is ``libmelee_reader.encode_states``,
    the same one ``prepare``'s libmelee fallback uses for whole replays."""
    return LM.encode_states([ps])


class MeleeAgent:
    """Plays a trained Melee run through libmelee, one frame at a time, on :class:`recurl.Agent` (torch or
    ONNX backend).

    Timing, the training alignment exactly (``recurl.melee.dataset``): the ``GameState`` of frame ``t``
    arrives after frame ``t`` ran. The agent feeds it with its own previous decision as
    ``prev_controller``, and the decision is the controller of frame ``t + D``; what it presses now is
    frame ``t + 1``'s controller, the decision made ``D - 1`` frames ago (neutral for the first ``D - 1``
    frames of a game).

    Args:
        model: a run directory of ``recurl melee train`` or a loaded :class:`recurl.algos.melee.MeleeImitation`.
        port, opponent_port: libmelee controller ports (1-4) of the agent and its opponent.
        controller: a connected ``melee.Controller`` for ``port`` (``None``: only compute the controller).
        deterministic: the greedy chain of the head (each component's argmax) instead of sampling.
        backend: ``"torch"`` or ``"onnx"`` (the exported graph under ONNX Runtime, the fast one: sampling
            runs the stochastic graph, fed noise drawn from ``seed``).
        seed: seed of the onnx backend's sampling noise.
    """

    def __init__(self, model: Any, port: int, opponent_port: int, controller: Any = None,
                 deterministic: bool = False, backend: str = "torch", seed: int | None = None) -> None:
        model = load_model(model, device="cpu") if isinstance(model, str | Path) else model
        if model.observation_space != D.OBSERVATION_SPACE or model.action_space != D.ACTION_SPACE:
            raise RecurlError("MeleeAgent plays a model trained by `recurl melee train` (Melee's observation and "
                              "controller spaces)")
        self.agent = Agent(model, deterministic=deterministic, backend=backend, seed=seed)
        self.delay = int(model.action_delay)
        self.port, self.opp, self.controller = port, opponent_port, controller
        self.reset()

    def reset(self) -> None:
        """Forget the game: zero recurrent state, neutral controller, empty queue."""
        self.state = self.agent.initial_state(1)
        self.first = True
        self.chosen = NEUTRAL.copy()
        self.queue = ActionQueue(D.ACTION_SPACE, 1, self.delay - 1, default=NEUTRAL)

    def observation(self, gamestate: Any) -> dict[str, np.ndarray]:
        """The model's input for frame ``gamestate.frame`` (``OBSERVATION_SPACE``, unbatched)."""
        floats, action, character, nana = LM.encode_bodies([gamestate.players[self.port],
                                                            gamestate.players[self.opp]])
        return {
            "action": action.astype(np.int64), "character": character.astype(np.int64),
            "stage": np.int64(stage_index(gamestate.stage)),
            "floats": np.concatenate([floats[0], floats[1], nana[0], nana[1]]),
            "prev_controller": self.chosen.astype(np.int64),
        }

    def step(self, gamestate: Any) -> np.ndarray:
        """Observe frame ``t``; press (and return) frame ``t + 1``'s controller, ``[8]`` in ``ACTION_SPACE``'s
        layout (buttons A, B, JUMP, Z, SHIELD; main, c-stick, shoulder classes)."""
        first = np.array([self.first])
        chosen, self.state = self.agent.act(self.observation(gamestate), self.state, first)
        self.first = False
        self.chosen = np.asarray(chosen)
        return self._press(self.queue(self.chosen[None], first)[0])

    def _press(self, action: np.ndarray) -> np.ndarray:
        """Write the controller ``action[8]`` to the libmelee controller (if any); returns it."""
        if self.controller is None:
            return action
        import melee

        c = self.controller
        for pressed, button in zip(action[:F.NUM_BUTTONS], ("BUTTON_A", "BUTTON_B", "BUTTON_X", "BUTTON_Z", "BUTTON_R"),
                                   strict=True):
            (c.press_button if pressed else c.release_button)(getattr(melee.Button, button))
        mx, my = F.main_values(action[D.MAIN : D.MAIN + 1])
        cx, cy = F.cstick_values(action[D.CSTICK : D.CSTICK + 1])
        # libmelee sticks take 0..1 with 0.5 neutral
        c.tilt_analog(melee.Button.BUTTON_MAIN, float(mx[0]) / 2 + 0.5, float(my[0]) / 2 + 0.5)
        c.tilt_analog(melee.Button.BUTTON_C, float(cx[0]) / 2 + 0.5, float(cy[0]) / 2 + 0.5)
        c.press_shoulder(melee.Button.BUTTON_L, F.SHOULDER_VALUES[int(action[D.SHOULDER])])
        return action
