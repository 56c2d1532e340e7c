"""The recurrent actor-critic: normalise -> encode -> recurrent core -> MLP -> action head / value head.

State is named: :class:`ActorCriticState` holds the actor core's tensors and the critic core's (empty
with ``shared_core``), each ``[layers, B, H]``. Acting (:meth:`RecurrentPolicy.act`, and so ``predict``,
:class:`recurl.Agent` and the ONNX graph) carries the actor's part alone, since nothing else reads the
critic's. Resets happen inside the cores, driven by ``is_first``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

import gymnasium as gym
import torch
from torch import nn

from recurl.config import AT_LEAST_0, AT_LEAST_1, OneOf, Range, Ranges, check_config, check_value
from recurl.errors import RecurlError
from recurl.nn.encoders import Obs, ObsEncoder, RunningNorm, is_normalisable, mlp
from recurl.nn.heads import ActionDist, ActionHead, AutoregressiveDist, AutoregressiveHead
from recurl.nn.recurrent import CORE_KINDS, MemoryCore, State, make_core

Dist = ActionDist | AutoregressiveDist
"""What a policy's head returns: sample, mode, log_prob, entropy, kl, outputs."""
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


@dataclass(frozen=True)
class NetworkConfig:
    """Encoder -> recurrent core -> MLP: the shape every recurl network shares."""

    core: Literal["lstm", "gru", "rnn", "none", "mingru", "minlstm", "lru"] = "lstm"
    """Memory core: lstm, gru, rnn (tanh), none (memoryless baseline, same interface), or a parallel-scan core
    trained without a loop over time: mingru, minlstm or lru (see docs/cores.md)."""
    hidden_size: int = 64
    """Units per recurrent layer."""
    num_layers: int = 1
    """Stacked recurrent layers."""
    forget_bias: float = 1.0
    """Initial LSTM forget-gate bias; larger values help the untrained core carry a cue over long delays."""
    chrono: int = 0
    """Chrono initialisation (Tallec & Ollivier 2018) for delays up to this many steps, instead of
    forget_bias: keep-gate biases log U(1, chrono - 1) for lstm (input gate: their negatives), gru, mingru
    and minlstm. 0: off."""
    lru_r_min: float = 0.9
    """LRU only: the eigenvalues' moduli start uniform (in area) on the ring [lru_r_min, lru_r_max]; a
    cue decays as |lambda|^delay, so long delays want the ring near 1 (e.g. 0.99-0.9999)."""
    lru_r_max: float = 0.999
    """LRU only: the ring's outer radius (< 1)."""
    lru_max_phase: float = 2 * math.pi
    """LRU only: the eigenvalues' phases start uniform on [0, lru_max_phase] (small: slow rotation)."""
    encoder_hidden: tuple[int, ...] = (64,)
    """MLP sizes between the observation encoding and the core (empty: feed the encoding directly)."""
    head_hidden: tuple[int, ...] = ()
    """MLP sizes between the core and the heads (SB3's net_arch after the LSTM)."""
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    """Activation of the MLPs: tanh, relu or elu."""
    embed_dim: int = 16
    """Embedding width per Discrete/MultiDiscrete observation component."""
    action_masks: bool | None = None
    """Use the env's action masks (its action_masks() method or an action_mask observation key): None
    uses them when the env has them; false ignores them (an unmasked baseline)."""

    RANGES: ClassVar[Ranges] = {
        "core": OneOf(CORE_KINDS), "hidden_size": AT_LEAST_1, "num_layers": AT_LEAST_1,
        "encoder_hidden": AT_LEAST_1, "head_hidden": AT_LEAST_1, "activation": OneOf(tuple(ACTIVATIONS)),
        "embed_dim": AT_LEAST_1, "chrono": AT_LEAST_0, "lru_r_min": Range(0, 1, hi_open=True),
        "lru_r_max": Range(0, 1, lo_open=True, hi_open=True), "lru_max_phase": Range(0, lo_open=True),
    }

    def __post_init__(self) -> None:
        check_config(self)
        if self.chrono == 1:
            raise RecurlError("--chrono must be 0 (off) or a delay of >= 2 steps, got 1")
        if self.lru_r_min >= self.lru_r_max:
            raise RecurlError(f"--lru-r-min ({self.lru_r_min}) must be below --lru-r-max ({self.lru_r_max})")


def build_core(cfg: NetworkConfig, input_size: int, hard_sigmoid: bool = False) -> MemoryCore:
    """The memory core a network config describes, reading ``input_size`` features per step."""
    return make_core(cfg.core, input_size, cfg.hidden_size, cfg.num_layers, cfg.forget_bias, hard_sigmoid,
                     cfg.chrono, (cfg.lru_r_min, cfg.lru_r_max), cfg.lru_max_phase)


@dataclass(frozen=True)
class PolicyConfig(NetworkConfig):
    """Network shape of a recurrent actor-critic."""

    shared_core: bool = False
    """One core for actor and critic (true) or a separate critic core (false, SB3's enable_critic_lstm)."""
    normalize_obs: bool = True
    """Running mean/std normalisation of float Box observations (statistics saved with the model)."""
    ortho_init: bool | None = None
    """Orthogonal init of linear layers (gain sqrt(2) hidden, 0.01 policy head, 1 value head). None: the
    algorithm's default, true for PPO, false for behaviour cloning (a 0.01 head starves a clone's core of
    gradient, and it settles on the memoryless solution: docs/imitation.md)."""
    residual: bool = False
    """Add the core's input to its output (slippi-ai's residual recurrent block), so the memoryless path
    through the network is free and the core learns what memory adds; needs the last encoder_hidden size
    to equal hidden_size."""
    autoregressive: bool = False
    """MultiDiscrete actions only: draw component i conditioned on components 0..i-1 (a chain of
    categoricals, as a game controller needs) instead of independently."""
    autoregressive_hidden: int = 128
    """Hidden width of each component's MLP in the autoregressive head."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_value("autoregressive_hidden", self.autoregressive_hidden, AT_LEAST_1)
        if self.residual and (self.encoder_hidden[-1:] or (None,))[0] != self.hidden_size:
            raise RecurlError(f"residual=True adds the core's input to its output: the last encoder_hidden size "
                              f"({list(self.encoder_hidden)}) must equal hidden_size ({self.hidden_size})")


class ActorCriticState(NamedTuple):
    """The state of a :class:`RecurrentPolicy`, by part: tuples of ``[layers, B, H]`` tensors."""

    actor: State
    critic: State  # () when actor and critic share one core

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ActorCriticState:
        """Apply ``fn`` to every tensor (e.g. ``clone``, or indexing a batch of envs)."""
        return ActorCriticState(tuple(fn(s) for s in self.actor), tuple(fn(s) for s in self.critic))


class _Tower(nn.Module):
    """Encoder -> core -> MLP for one of actor / critic."""

    def __init__(self, obs_space: gym.Space, cfg: PolicyConfig) -> None:
        super().__init__()
        act = ACTIVATIONS[cfg.activation]
        self.encoder = ObsEncoder(obs_space, cfg.encoder_hidden, act, cfg.embed_dim)
        self.core = build_core(cfg, self.encoder.out_dim)
        self.mlp = mlp([cfg.hidden_size, *cfg.head_hidden], act)
        self.out_dim = cfg.head_hidden[-1] if cfg.head_hidden else cfg.hidden_size
        self.residual = cfg.residual

    def unroll(
        self, obs: Obs, state: State, is_first: torch.Tensor, return_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        x = self.encoder(obs)
        y, state = self.core.unroll(x, state, is_first, return_state)
        return self.mlp(y + x if self.residual else y), state

    def step(self, obs: Obs, state: State, is_first: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        x = self.encoder(obs)
        y, state = self.core.step(x, state, is_first)
        return self.mlp(y + x if self.residual else y), state


class RecurrentPolicy(nn.Module):
    """Recurrent actor-critic for any supported observation and action space.

    Shapes: acting takes ``obs[B, ...]`` and ``is_first[B]``; training takes ``obs[T, B, ...]`` and
    ``is_first[T, B]``. :meth:`step` and :meth:`unroll` carry an :class:`ActorCriticState`; :meth:`act`
    carries the actor's part alone, a tuple of ``[layers, B, hidden_size]`` float32 tensors named by
    :attr:`act_state_names`.
    """

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.obs_space, self.action_space = obs_space, action_space
        self.norms = nn.ModuleDict()
        if cfg.normalize_obs:
            for key, space in _leaves(obs_space):
                if is_normalisable(space):
                    self.norms[key or "obs"] = RunningNorm(tuple(space.shape))
        self.actor = _Tower(obs_space, cfg)
        self.critic = None if cfg.shared_core else _Tower(obs_space, cfg)
        self.pi: ActionHead | AutoregressiveHead = (
            AutoregressiveHead(action_space, self.actor.out_dim, cfg.embed_dim, cfg.autoregressive_hidden)
            if cfg.autoregressive else
            ActionHead(action_space, self.actor.out_dim, 0.01 if cfg.ortho_init is not False else None))
        self.v = nn.Linear((self.critic or self.actor).out_dim, 1)
        if cfg.ortho_init is not False:  # None (unresolved, a bare policy) keeps PPO's init
            for m in [*self.actor.encoder.modules(), *self.actor.mlp.modules(),
                      *(self.critic.encoder.modules() if self.critic else []),
                      *(self.critic.mlp.modules() if self.critic else [])]:
                if isinstance(m, nn.Linear):
                    nn.init.orthogonal_(m.weight, 2**0.5)
                    nn.init.zeros_(m.bias)
            nn.init.orthogonal_(self.v.weight, 1.0)
            nn.init.zeros_(self.v.bias)

    @property
    def act_state_names(self) -> tuple[str, ...]:
        """Names of the acting state's tensors: ``("h", "c")`` for LSTM, ``("h",)``, or ``()``."""
        return self.actor.core.state_names

    # -- state ----------------------------------------------------------------------------------------
    def initial_state(self, batch: int, device: torch.device | str | None = None) -> ActorCriticState:
        """Zero state for ``batch`` envs, actor and critic parts, each tensor ``[L, B, H]``."""
        device = device if device is not None else self.v.weight.device
        critic = self.critic.core.initial_state(batch, device) if self.critic else ()
        return ActorCriticState(self.actor.core.initial_state(batch, device), critic)

    def initial_act_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """Zero state for acting only (:meth:`act`): the actor core's tensors, each ``[L, B, H]``."""
        device = device if device is not None else self.v.weight.device
        return self.actor.core.initial_state(batch, device)

    # -- observation normalisation ---------------------------------------------------------------------
    def normalize(self, obs: Obs) -> Obs:
        """Apply the running observation normalisers (identity where there are none)."""
        if not len(self.norms):
            return obs
        if isinstance(obs, dict):
            return {k: self.norms[k](v) if k in self.norms else v for k, v in obs.items()}
        return self.norms["obs"](obs)

    @torch.no_grad()
    def update_normalizer(self, obs: Obs, mask: torch.Tensor) -> None:
        """Fold the raw observations where ``mask`` is true into the running statistics."""
        for key, norm in self.norms.items():
            x = obs[key] if isinstance(obs, dict) else obs
            norm.update(x[mask])

    # -- acting and training ----------------------------------------------------------------------------
    def unroll(
        self, obs: Obs, state: ActorCriticState, is_first: torch.Tensor, return_state: bool = True,
        mask: torch.Tensor | None = None,
    ) -> tuple[Dist, torch.Tensor, ActorCriticState]:
        """``obs[T, B, ...]``, ``is_first[T, B]`` (and the valid-action ``mask[T, B, n]``) -> (action
        distribution over ``[T, B]``, value ``[T, B]``, state after the last step; empty parts when
        ``return_state`` is false)."""
        obs = self.normalize(obs)
        h_pi, a_state = self.actor.unroll(obs, state.actor, is_first, return_state)
        h_v, c_state = h_pi, ()
        if self.critic is not None:
            h_v, c_state = self.critic.unroll(obs, state.critic, is_first, return_state)
        return self.pi(h_pi, mask), self.v(h_v).squeeze(-1), ActorCriticState(a_state, c_state)

    def step(self, obs: Obs, state: ActorCriticState, is_first: torch.Tensor | None,
             mask: torch.Tensor | None = None) -> tuple[Dist, torch.Tensor, ActorCriticState]:
        """One step: ``obs[B, ...]``, ``is_first[B]`` (and ``mask[B, n]``) -> (distribution over ``[B]``,
        value ``[B]``, state)."""
        obs = self.normalize(obs)
        h_pi, a_state = self.actor.step(obs, state.actor, is_first)
        h_v, c_state = h_pi, ()
        if self.critic is not None:
            h_v, c_state = self.critic.step(obs, state.critic, is_first)
        return self.pi(h_pi, mask), self.v(h_v).squeeze(-1), ActorCriticState(a_state, c_state)

    def act(self, obs: Obs, state: State, is_first: torch.Tensor | None,
            mask: torch.Tensor | None = None) -> tuple[Dist, State]:
        """Acting only: one step of the actor. ``obs[B, ...]``, the actor's state (from
        :meth:`initial_act_state`), ``is_first[B]`` (or ``None``), the valid-action ``mask[B, n]`` (or
        ``None``) -> (distribution over ``[B]``, state).

        Skips the critic, which acting never needs (half the work with separate cores).
        """
        h_pi, a_state = self.actor.step(self.normalize(obs), state, is_first)
        return self.pi(h_pi, mask), a_state


def _leaves(space: gym.Space) -> list[tuple[str | None, gym.Space]]:
    if isinstance(space, gym.spaces.Dict):
        return [(k, space[k]) for k in sorted(space.spaces)]
    return [(None, space)]
