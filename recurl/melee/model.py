"""``MeleeModel``: embeddings + float features -> a recurrent core (any kind) -> autoregressive controller head.

Batch layout (all time-major, ``T`` steps by ``B`` rows; see ``train.make_sequence`` for how the reaction
delay aligns them): row ``t`` holds the game state of frame ``t - D`` and the target controller of frame
``t``.

- ``action[T, B, 2]``, ``character[T, B, 2]`` long (self, opponent); ``stage[T, B]`` long
- ``floats[T, B, OBS_FLOATS]`` float (self, opponent, self's Nana, opponent's Nana)
- ``prev_buttons[T, B, 5]`` float, ``prev_main / prev_cstick / prev_shoulder[T, B]`` long: the player's own
  controller one frame before the target (known at play time: the agent pressed it)
- targets ``buttons[T, B, 5]`` float, ``main / cstick / shoulder[T, B]`` long
- ``is_first[T, B]`` bool: first step of a game, where the core resets its state

The head is autoregressive: buttons -> main stick -> c-stick -> shoulder. Each component's logits are
conditioned on the previous components: on their targets during training (teacher forcing) and on the
sampled values when acting.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from recurl.melee import features as F
from recurl.nn.recurrent import State, make_core

COMPONENTS: tuple[str, ...] = ("buttons", "main", "cstick", "shoulder")
Batch = dict[str, torch.Tensor]


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.ReLU(), nn.Linear(n_hidden, n_out))


class ControllerHead(nn.Module):
    """Autoregressive controller distribution given the core output ``h[..., H]``."""

    def __init__(self, hidden: int, head_hidden: int, ctrl_dim: int) -> None:
        super().__init__()
        self.main_emb = nn.Embedding(F.NUM_MAIN, ctrl_dim)
        self.cstick_emb = nn.Embedding(F.NUM_CSTICK, ctrl_dim)
        self.buttons = _mlp(hidden, head_hidden, F.NUM_BUTTONS)
        self.main = _mlp(hidden + F.NUM_BUTTONS, head_hidden, F.NUM_MAIN)
        self.cstick = _mlp(hidden + F.NUM_BUTTONS + ctrl_dim, head_hidden, F.NUM_CSTICK)
        self.shoulder = _mlp(hidden + F.NUM_BUTTONS + 2 * ctrl_dim, head_hidden, F.NUM_SHOULDER)

    def logits(self, h: torch.Tensor, buttons: torch.Tensor, main: torch.Tensor,
               cstick: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher-forced logits. ``h[..., H]``, ``buttons[..., 5]`` float, ``main, cstick[...]`` long.

        Returns ``{"buttons": [..., 5], "main": [..., 289], "cstick": [..., 5], "shoulder": [..., 4]}``.
        """
        x1 = torch.cat([h, buttons], -1)
        x2 = torch.cat([x1, self.main_emb(main)], -1)
        x3 = torch.cat([x2, self.cstick_emb(cstick)], -1)
        return {"buttons": self.buttons(h), "main": self.main(x1), "cstick": self.cstick(x2),
                "shoulder": self.shoulder(x3)}

    @torch.no_grad()
    def sample(self, h: torch.Tensor, greedy: bool = False,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Sample a controller for ``h[B, H]``, each component conditioned on the sampled earlier ones.

        Returns ``buttons[B, 5]`` float (0/1), ``main, cstick, shoulder[B]`` long.
        """
        def pick(logits: torch.Tensor) -> torch.Tensor:
            if greedy:
                return logits.argmax(-1)
            return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)

        p = torch.sigmoid(self.buttons(h))
        buttons = (p > 0.5).float() if greedy else torch.bernoulli(p, generator=generator)
        x1 = torch.cat([h, buttons], -1)
        main = pick(self.main(x1))
        x2 = torch.cat([x1, self.main_emb(main)], -1)
        cstick = pick(self.cstick(x2))
        shoulder = pick(self.shoulder(torch.cat([x2, self.cstick_emb(cstick)], -1)))
        return {"buttons": buttons, "main": main, "cstick": cstick, "shoulder": shoulder}


class MeleeModel(nn.Module):
    """Recurrent imitation policy for Melee.

    Args:
        core: ``"lstm"``, ``"gru"``, ``"rnn"`` or ``"none"`` (memoryless baseline).
        hidden: width of the encoder and of the recurrent core.
        num_layers: core layers.
        action_dim, char_dim, stage_dim, ctrl_dim: embedding widths.
        head_hidden: hidden width of each controller-head MLP.
    """

    def __init__(self, core: str = "lstm", hidden: int = 256, num_layers: int = 1, action_dim: int = 32,
                 char_dim: int = 8, stage_dim: int = 4, ctrl_dim: int = 16, head_hidden: int = 128) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(core=core, hidden=hidden, num_layers=num_layers,
                                           action_dim=action_dim, char_dim=char_dim, stage_dim=stage_dim,
                                           ctrl_dim=ctrl_dim, head_hidden=head_hidden)
        self.action_emb = nn.Embedding(F.NUM_ACTIONS, action_dim)
        self.char_emb = nn.Embedding(F.NUM_CHARACTERS, char_dim)
        self.stage_emb = nn.Embedding(F.NUM_STAGES, stage_dim)
        self.prev_main_emb = nn.Embedding(F.NUM_MAIN, ctrl_dim)
        self.prev_cstick_emb = nn.Embedding(F.NUM_CSTICK, ctrl_dim)
        self.prev_shoulder_emb = nn.Embedding(F.NUM_SHOULDER, ctrl_dim)
        n_in = 2 * action_dim + 2 * char_dim + stage_dim + F.OBS_FLOATS + F.NUM_BUTTONS + 3 * ctrl_dim
        self.encoder = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU())
        self.core = make_core(core, hidden, hidden, num_layers)
        self.head = ControllerHead(hidden, head_hidden, ctrl_dim)

    def initial_state(self, batch: int) -> State:
        """Zero core state for ``batch`` rows (tensors ``[layers, B, hidden]``)."""
        return self.core.initial_state(batch)

    def encode(self, batch: Batch) -> torch.Tensor:
        """Observation + previous controller -> encoder output ``[T, B, hidden]`` (any leading dims)."""
        x = torch.cat([
            self.action_emb(batch["action"]).flatten(-2),
            self.char_emb(batch["character"]).flatten(-2),
            self.stage_emb(batch["stage"]),
            batch["floats"],
            batch["prev_buttons"],
            self.prev_main_emb(batch["prev_main"]),
            self.prev_cstick_emb(batch["prev_cstick"]),
            self.prev_shoulder_emb(batch["prev_shoulder"]),
        ], -1)
        return self.encoder(x)

    def forward(self, batch: Batch, state: State) -> tuple[dict[str, torch.Tensor], State]:
        """Teacher-forced logits for a ``[T, B]`` batch; returns ``(logits, state_T)``."""
        y, state = self.core.unroll(self.encode(batch), state, batch["is_first"])
        logits = self.head.logits(y, batch["buttons"], batch["main"], batch["cstick"])
        return logits, state

    def loss(self, batch: Batch, state: State) -> tuple[torch.Tensor, dict[str, float], State]:
        """Summed per-frame NLL of the target controller over a ``[T, B]`` batch.

        Returns ``(loss, metrics, state_T)``: ``loss`` is the mean over frames of the NLL summed over
        components; ``metrics`` has ``nll/<component>`` (nats per frame) and ``acc/<component>`` (buttons:
        all five right); ``state_T`` is detached, ready to carry into the next chunk of the same rows.
        """
        logits, state = self(batch, state)
        nll = component_nll(logits, batch)
        total = sum(nll.values())
        metrics = {f"nll/{k}": float(v.detach().mean()) for k, v in nll.items()}
        correct = component_correct(logits, batch)
        metrics.update({f"acc/{k}": float(v.float().mean()) for k, v in correct.items()})
        metrics["nll/total"] = float(total.detach().mean())
        return total.mean(), metrics, tuple(s.detach() for s in state)

    @torch.no_grad()
    def act(self, obs: Batch, state: State, is_first: torch.Tensor, greedy: bool = False,
            generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], State]:
        """One acting step for ``B`` rows: ``obs`` holds the model inputs with shape ``[B, ...]``.

        Returns ``(controller, state)``: ``buttons[B, 5]``, ``main, cstick, shoulder[B]``.
        """
        y, state = self.core.step(self.encode(obs), state, is_first)
        return self.head.sample(y, greedy=greedy, generator=generator), state


def component_nll(logits: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
    """Per-frame NLL of each component, each ``[T, B]`` (buttons: summed over the five Bernoullis)."""
    out = {"buttons": nnf.binary_cross_entropy_with_logits(
        logits["buttons"], batch["buttons"], reduction="none").sum(-1)}
    for k in COMPONENTS[1:]:
        out[k] = nnf.cross_entropy(logits[k].flatten(0, -2), batch[k].flatten(), reduction="none"
                                   ).view(batch[k].shape)
    return out


def component_correct(logits: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
    """Per-frame argmax correctness of each component, bool ``[T, B]`` (buttons: all five right)."""
    out = {"buttons": ((logits["buttons"] > 0).float() == batch["buttons"]).all(-1)}
    for k in COMPONENTS[1:]:
        out[k] = logits[k].argmax(-1) == batch[k]
    return out
