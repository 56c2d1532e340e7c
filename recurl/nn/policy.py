"""The recurrent actor-critic: normalise -> encode -> recurrent core -> MLP -> action head / value head.

State is one flat tuple of tensors ``[layers, B, H]``: the actor core's state, then the critic core's
(when ``shared_core`` is false). Resets happen inside the cores, driven by ``is_first``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import torch
from torch import nn

from recurl.errors import RecurlError
from recurl.nn.encoders import Obs, ObsEncoder, RunningNorm, is_normalisable, mlp
from recurl.nn.heads import ActionDist, ActionHead
from recurl.nn.recurrent import CORE_KINDS, RecurrentCore, State

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


@dataclass(frozen=True)
class NetworkConfig:
    """Encoder -> recurrent core -> MLP: the shape every recurl network shares."""

    core: Literal["lstm", "gru", "rnn", "none"] = "lstm"
    """Memory core: lstm, gru, rnn (tanh) or none (memoryless baseline, same interface)."""
    hidden_size: int = 64
    """Units per recurrent layer."""
    num_layers: int = 1
    """Stacked recurrent layers."""
    forget_bias: float = 1.0
    """Initial LSTM forget-gate bias; larger values help the untrained core carry a cue over long delays."""
    encoder_hidden: tuple[int, ...] = (64,)
    """MLP sizes between the observation encoding and the core (empty: feed the encoding directly)."""
    head_hidden: tuple[int, ...] = ()
    """MLP sizes between the core and the heads (SB3's net_arch after the LSTM)."""
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    """Activation of the MLPs: tanh, relu or elu."""
    embed_dim: int = 16
    """Embedding width per Discrete/MultiDiscrete observation component."""

    def __post_init__(self) -> None:
        if self.core not in CORE_KINDS:
            raise RecurlError(f"unknown core {self.core!r}: choose one of {', '.join(CORE_KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise RecurlError(f"unknown activation {self.activation!r}: choose one of {', '.join(ACTIVATIONS)}")


@dataclass(frozen=True)
class PolicyConfig(NetworkConfig):
    """Network shape of a recurrent actor-critic."""

    shared_core: bool = False
    """One core for actor and critic (true) or a separate critic core (false, SB3's enable_critic_lstm)."""
    normalize_obs: bool = True
    """Running mean/std normalisation of float Box observations (statistics saved with the model)."""
    ortho_init: bool = True
    """Orthogonal init of linear layers (gain sqrt(2) hidden, 0.01 policy head, 1 value head)."""


class _Tower(nn.Module):
    """Encoder -> core -> MLP for one of actor / critic."""

    def __init__(self, obs_space: gym.Space, cfg: PolicyConfig) -> None:
        super().__init__()
        act = ACTIVATIONS[cfg.activation]
        self.encoder = ObsEncoder(obs_space, cfg.encoder_hidden, act, cfg.embed_dim)
        self.core = RecurrentCore(cfg.core, self.encoder.out_dim, cfg.hidden_size, cfg.num_layers, cfg.forget_bias)
        self.mlp = mlp([cfg.hidden_size, *cfg.head_hidden], act)
        self.out_dim = cfg.head_hidden[-1] if cfg.head_hidden else cfg.hidden_size

    def unroll(
        self, obs: Obs, state: State, is_first: torch.Tensor, return_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        y, state = self.core.unroll(self.encoder(obs), state, is_first, return_state)
        return self.mlp(y), state

    def step(self, obs: Obs, state: State, is_first: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        y, state = self.core.step(self.encoder(obs), state, is_first)
        return self.mlp(y), state


class RecurrentPolicy(nn.Module):
    """Recurrent actor-critic for any supported observation and action space.

    Shapes: acting takes ``obs[B, ...]`` and ``is_first[B]``; training takes ``obs[T, B, ...]`` and
    ``is_first[T, B]``. ``state`` is a tuple of ``[layers, B, hidden_size]`` float32 tensors.
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
        self.pi = ActionHead(action_space, self.actor.out_dim, 0.01 if cfg.ortho_init else None)
        self.v = nn.Linear((self.critic or self.actor).out_dim, 1)
        if cfg.ortho_init:
            for m in [*self.actor.encoder.modules(), *self.actor.mlp.modules(),
                      *(self.critic.encoder.modules() if self.critic else []),
                      *(self.critic.mlp.modules() if self.critic else [])]:
                if isinstance(m, nn.Linear):
                    nn.init.orthogonal_(m.weight, 2**0.5)
                    nn.init.zeros_(m.bias)
            nn.init.orthogonal_(self.v.weight, 1.0)
            nn.init.zeros_(self.v.bias)
        self._n_actor = self.actor.core.n_state

    # -- state ----------------------------------------------------------------------------------------
    def initial_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """Zero state for ``batch`` envs: actor core tensors then critic core tensors, each ``[L, B, H]``."""
        device = device if device is not None else self.v.weight.device
        state = self.actor.core.initial_state(batch, device)
        return state + (self.critic.core.initial_state(batch, device) if self.critic else ())

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
        self, obs: Obs, state: State, is_first: torch.Tensor, return_state: bool = True
    ) -> tuple[ActionDist, torch.Tensor, State]:
        """``obs[T, B, ...]``, ``is_first[T, B]`` -> (action distribution over ``[T, B]``, value ``[T, B]``,
        state after the last step; ``()`` when ``return_state`` is false)."""
        obs = self.normalize(obs)
        a_state, c_state = state[: self._n_actor], state[self._n_actor :]
        h_pi, a_state = self.actor.unroll(obs, a_state, is_first, return_state)
        h_v = h_pi
        if self.critic is not None:
            h_v, c_state = self.critic.unroll(obs, c_state, is_first, return_state)
        return self.pi(h_pi), self.v(h_v).squeeze(-1), tuple(a_state) + tuple(c_state)

    def step(self, obs: Obs, state: State, is_first: torch.Tensor) -> tuple[ActionDist, torch.Tensor, State]:
        """One step: ``obs[B, ...]``, ``is_first[B]`` -> (distribution over ``[B]``, value ``[B]``, state)."""
        obs = self.normalize(obs)
        a_state, c_state = state[: self._n_actor], state[self._n_actor :]
        h_pi, a_state = self.actor.step(obs, a_state, is_first)
        h_v = h_pi
        if self.critic is not None:
            h_v, c_state = self.critic.step(obs, c_state, is_first)
        return self.pi(h_pi), self.v(h_v).squeeze(-1), tuple(a_state) + tuple(c_state)

    def act(self, obs: Obs, state: State, is_first: torch.Tensor | None) -> tuple[ActionDist, State]:
        """Acting only: one step of the actor, ``obs[B, ...]``, ``is_first[B]`` (or ``None``) ->
        (distribution, state).

        Skips the critic (half the work with separate cores); its part of the state, if passed, comes
        back unchanged, so use either ``act`` or ``step`` for a whole episode, not both.
        """
        h_pi, a_state = self.actor.step(self.normalize(obs), state[: self._n_actor], is_first)
        return self.pi(h_pi), tuple(a_state) + tuple(state[self._n_actor :])


def _leaves(space: gym.Space) -> list[tuple[str | None, gym.Space]]:
    if isinstance(space, gym.spaces.Dict):
        return [(k, space[k]) for k in sorted(space.spaces)]
    return [(None, space)]
