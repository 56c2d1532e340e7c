"""Recurrent soft actor-critic for continuous control under partial observability (Ni et al. 2022).

Reading order: config -> the squashed Gaussian -> actor and critic towers -> the soft targets -> the
learner step -> the acting/training loop -> persistence.

The design is pomdp-baselines' "separate" recurrent SAC (Ni, Eysenbach & Salakhutdinov 2022, "Recurrent
Model-Free RL Can Be a Strong Baseline for Many POMDPs"), on recurl's pieces:

- *Separate towers*: the actor is ``encoder -> core -> MLP -> (mean, log_std)``; the critic is ``encoder
  -> core``, and two MLP heads take ``[core output, action]`` (twin Q, Fujimoto et al. 2018). The two
  cores share nothing (the paper found a shared one unstable). ``--core none`` is ordinary SAC.
- *Squashed Gaussian*: ``a = low + (tanh(u) + 1) / 2 * (high - low)``, ``u ~ N(mean, std)``; ``log pi`` is
  that of ``tanh(u)`` in ``[-1, 1]^d`` (SB3's convention), so the target entropy ``-|A|`` does not depend on
  the bounds. The critic sees actions rescaled to ``[-1, 1]``.
- *Temperature*: ``alpha = exp(log_alpha)`` learned so that the policy's entropy tracks ``-|A|``.
- *Sequence replay* (:mod:`recurl.data.sequence_replay`, as R2D2): windows of ``burn_in + seq_len`` steps
  that never cross an episode and keep both cores' state at their start (*stored state*; the actors step
  the critic's core too, so that its state is stored). Replay is uniform.
- *Burn-in*: the first ``burn_in`` steps of a window are unrolled from the stored state without gradient.
- *Targets*: ``y_t = r_t + gamma (1 - terminated_t) (min_i Q'_i(s_{t+1}, a') - alpha log pi(a'|s_{t+1}))``,
  ``a' ~ pi(.|s_{t+1})``, with Polyak-averaged target critics (``tau``). A truncated episode bootstraps
  from its final observation (stored after its last transition); a terminated one does not. Padding and
  autoreset steps (never stored) are masked out of every loss.
- *Losses*: critic ``0.5 sum_i (Q_i(s_t, a_t) - y_t)^2``; actor ``alpha log pi(a~|s_t) - min_i Q_i(s_t, a~)``
  with ``a~`` reparameterised and the critic frozen; temperature ``-log_alpha (log pi + target_entropy)``.
  Each loss reaches only its own parameters, so one Adam with three parameter groups steps them all.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from recurl.algos.replay import ReplayAlgorithm, time_slice
from recurl.config import (
    AT_LEAST_0,
    AT_LEAST_1,
    DEVICE,
    DISCOUNT,
    POSITIVE,
    UNIT,
    EvalSchedule,
    Ranges,
    check_config,
)
from recurl.data.sequence_replay import SequenceBatch, SequenceReplay
from recurl.errors import RecurlError
from recurl.nn.encoders import Obs, ObsEncoder, mlp
from recurl.nn.policy import ACTIVATIONS, NetworkConfig, build_core
from recurl.nn.recurrent import State
from recurl.obs import ObsConverter

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SACNetworkConfig(NetworkConfig):
    """Network shape of each tower: encoder MLP -> recurrent core -> MLP (pomdp-baselines: 256-unit MLPs)."""

    activation: Literal["tanh", "relu", "elu"] = "relu"
    """Activation of the MLPs: tanh, relu or elu."""
    hidden_size: int = 128
    """Units per recurrent layer (each of the actor's and the critic's cores)."""
    head_hidden: tuple[int, ...] = (256, 256)
    """MLP sizes after the core: the actor's before (mean, log_std); each Q head's after [core, action]."""


@dataclass(frozen=True)
class SACConfig(EvalSchedule):
    """Recurrent SAC settings. Every field is a ``recurl train --algo sac`` flag (``--seq-len 32``)."""

    env: str = "recurl/Pendulum-P-v1"
    """Gymnasium env id with a bounded Box action space."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Keyword arguments for the env constructor."""
    num_envs: int = 1
    """Parallel actors, each with its own recurrent state."""
    total_steps: int = 20_000
    """Env steps to train for (over all envs)."""
    seed: int = 0
    """Seed for the envs, the network init, exploration and replay sampling."""
    policy: SACNetworkConfig = field(default_factory=SACNetworkConfig)
    """Network shape (the same for the actor and the critic tower)."""
    seq_len: int = 32
    """Trained steps per replayed sequence."""
    overlap: int = 16
    """Trained steps shared by consecutive sequences of an episode (stride = seq_len - overlap)."""
    burn_in: int = 8
    """Steps unrolled without gradient from the stored state before the trained steps."""
    stored_state: bool = True
    """Start each replayed sequence from the actors' stored state (false: zero state)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target critics: ``theta' <- (1 - tau) theta' + tau theta`` after every update."""
    actor_lr: float = 3e-4
    """Adam step size of the actor."""
    critic_lr: float = 3e-4
    """Adam step size of the critic (both Q heads and the critic's encoder and core)."""
    alpha_lr: float = 3e-4
    """Adam step size of log(alpha), the entropy temperature."""
    init_alpha: float = 1.0
    """Initial entropy temperature."""
    learn_alpha: bool = True
    """Tune alpha towards the target entropy (false: keep init_alpha)."""
    target_entropy: float | None = None
    """Entropy the temperature aims at (None: -|A|, the number of action dimensions)."""
    prev_action_reward: bool = False
    """Feed the previous action and reward to both towers as inputs (zeroed at episode starts)."""
    replay_capacity: int = 10_000
    """Sequences kept in replay (FIFO)."""
    learning_starts: int = 1_000
    """Env steps collected with uniform random actions before the first update (from each learn call)."""
    batch_size: int = 32
    """Sequences per update."""
    train_every: int = 1
    """Env steps (over all envs) between training rounds."""
    gradient_steps: int = 1
    """Updates per training round (updates per env step = gradient_steps / train_every)."""
    max_grad_norm: float = 0.0
    """Gradient norm clip of each of actor and critic (0: none)."""
    eval_episodes: int = 10
    """Episodes of the final deterministic evaluation written to summary.json."""
    checkpoint_every: int = 5_000
    """Save a resumable checkpoint every this many updates."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda or cuda:N."""
    threads: int = 0
    """Torch CPU threads (0: one, fastest for small networks)."""

    RANGES: ClassVar[Ranges] = {
        **EvalSchedule.RANGES,
        "num_envs": AT_LEAST_1, "total_steps": AT_LEAST_1, "seed": AT_LEAST_0, "seq_len": AT_LEAST_1,
        "overlap": AT_LEAST_0, "burn_in": AT_LEAST_0, "gamma": DISCOUNT, "tau": UNIT, "actor_lr": POSITIVE,
        "critic_lr": POSITIVE, "alpha_lr": POSITIVE, "init_alpha": POSITIVE, "replay_capacity": AT_LEAST_1,
        "learning_starts": AT_LEAST_0, "batch_size": AT_LEAST_1, "train_every": AT_LEAST_1,
        "gradient_steps": AT_LEAST_1, "max_grad_norm": AT_LEAST_0, "eval_episodes": AT_LEAST_1,
        "checkpoint_every": AT_LEAST_1, "device": DEVICE, "threads": AT_LEAST_0,
    }

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise RecurlError(f"bad SAC option: {msg}")

        check_config(self)
        self.check_schedule()
        if self.overlap >= self.seq_len:
            bad(f"--overlap ({self.overlap}) must be below --seq-len ({self.seq_len})")
        if self.batch_size > self.replay_capacity:
            bad(f"--batch-size ({self.batch_size}) exceeds --replay-capacity ({self.replay_capacity})")


# ---------------------------------------------------------------------------------------------------
# The tanh-squashed Gaussian, scaled to the action bounds
# ---------------------------------------------------------------------------------------------------
class SquashedGaussian:
    """``a = center + scale * tanh(u)``, ``u ~ N(mean, exp(log_std))``, per action dimension.

    ``mode()`` is ``center + scale * tanh(mean)`` (deterministic acting), ``sample()`` a random action;
    ``rsample()`` a reparameterised one with ``log pi`` of ``tanh(u)`` (summed over dimensions).
    """

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> None:
        self.mean, self.log_std, self.center, self.scale = mean, log_std, center, scale

    def mode(self) -> torch.Tensor:
        return self.center + self.scale * torch.tanh(self.mean)

    def sample(self) -> torch.Tensor:
        return self.center + self.scale * torch.tanh(self.mean + torch.randn_like(self.mean) * self.log_std.exp())

    def rsample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(action[..., d] in the env's bounds, log pi[...])``, differentiable in the mean and std."""
        eps = torch.randn_like(self.mean)
        u = self.mean + eps * self.log_std.exp()
        # log N(u; mean, std) - log(1 - tanh(u)^2), the latter as 2 (log 2 - u - softplus(-2u)) (stable)
        logp = (-0.5 * eps.pow(2) - self.log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        logp = logp - (2 * (np.log(2.0) - u - nn.functional.softplus(-2 * u))).sum(-1)
        return self.center + self.scale * torch.tanh(u), logp

    def outputs(self) -> dict[str, torch.Tensor]:
        """What the ONNX graph returns beside the action: the pre-squash ``mean`` and ``log_std``."""
        return {"mean": self.mean, "log_std": self.log_std}


# ---------------------------------------------------------------------------------------------------
# Actor and critic towers
# ---------------------------------------------------------------------------------------------------
class _Tower(nn.Module):
    """Encoder -> core; ``step`` for acting, ``unroll`` (optionally from a burn-in without gradient)."""

    def __init__(self, obs_space: gym.Space, cfg: SACNetworkConfig) -> None:
        super().__init__()
        act = ACTIVATIONS[cfg.activation]
        self.encoder = ObsEncoder(obs_space, cfg.encoder_hidden, act, cfg.embed_dim)
        self.core = build_core(cfg, self.encoder.out_dim)

    def step(self, obs: Obs, state: State, is_first: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        return self.core.step(self.encoder(obs), state, is_first)

    def unroll(self, obs: Obs, state: State, is_first: torch.Tensor, burn_in: int = 0) -> torch.Tensor:
        """``obs[T, B, ...]`` -> core outputs ``[T - burn_in, B, H]``; the first ``burn_in`` steps only bring
        the state up to date, with no gradient."""
        if burn_in > 0:
            with torch.no_grad():
                _, state = self.core.unroll(self.encoder(time_slice(obs, 0, burn_in)), state, is_first[:burn_in])
        y, _ = self.core.unroll(self.encoder(time_slice(obs, burn_in, None)), state, is_first[burn_in:])
        return y


class Critic(nn.Module):
    """Critic tower and twin Q heads: ``Q_i(h_t, a_t) = MLP_i([core output, action rescaled to [-1, 1]])``."""

    def __init__(self, obs_space: gym.Space, action_space: gym.spaces.Box, cfg: SACNetworkConfig) -> None:
        super().__init__()
        act = ACTIVATIONS[cfg.activation]
        self.tower = _Tower(obs_space, cfg)
        d = int(np.prod(action_space.shape))
        self.q1, self.q2 = (nn.Sequential(mlp([cfg.hidden_size + d, *cfg.head_hidden], act),
                                          nn.Linear(cfg.head_hidden[-1] if cfg.head_hidden else cfg.hidden_size + d, 1))
                            for _ in range(2))
        _register_bounds(self, action_space)

    def q(self, y: torch.Tensor, action: torch.Tensor, frozen: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q_1, Q_2)``, each ``[...]``, for core outputs ``y[..., H]`` and env actions ``[..., d]``.
        ``frozen``: no gradient reaches the heads' weights (the actor's loss), only the action."""
        x = torch.cat([y, (action - self.center) / self.scale], -1)
        if not frozen:
            return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)
        return tuple(functional_call(h, {k: v.detach() for k, v in h.named_parameters()}, (x,)).squeeze(-1)
                     for h in (self.q1, self.q2))  # type: ignore[return-value]


class SACPolicy(nn.Module):
    """The actor (what acts), the critic and the temperature, saved together as ``policy.*``.

    Acting (``predict``, :class:`recurl.Agent`, evaluation, ONNX): :meth:`act` steps the actor alone and
    carries its state, tensors ``[layers, B, H]`` named :attr:`act_state_names`. The training actors use
    :meth:`step`, which also steps the critic's core and carries both states as one flat tuple (actor's
    tensors first), so that replay stores both.
    """

    def __init__(self, obs_space: gym.Space, action_space: gym.spaces.Box, cfg: SACNetworkConfig,
                 init_alpha: float = 1.0) -> None:
        super().__init__()
        act = ACTIVATIONS[cfg.activation]
        self.actor = _Tower(obs_space, cfg)
        self.actor_mlp = mlp([cfg.hidden_size, *cfg.head_hidden], act)
        self.d = int(np.prod(action_space.shape))
        self.pi = nn.Linear(cfg.head_hidden[-1] if cfg.head_hidden else cfg.hidden_size, 2 * self.d)
        self.critic = Critic(obs_space, action_space, cfg)
        self.log_alpha = nn.Parameter(torch.tensor(float(np.log(init_alpha))))
        _register_bounds(self, action_space)
        self.n_actor_state = len(self.actor.core.state_names)

    @property
    def act_state_names(self) -> tuple[str, ...]:
        """Names of the acting state's tensors: ``("h", "c")`` for LSTM, ``("h",)``, or ``()``."""
        return self.actor.core.state_names

    def initial_act_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """Zero actor state ``[layers, batch, H]`` (acting)."""
        return self.actor.core.initial_state(batch, device if device is not None else self.pi.weight.device)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """Zero actor and critic state, one flat tuple (the training actors and replay)."""
        device = device if device is not None else self.pi.weight.device
        return (*self.actor.core.initial_state(batch, device), *self.critic.tower.core.initial_state(batch, device))

    def split_state(self, state: State) -> tuple[State, State]:
        """A flat training state -> ``(actor part, critic part)``."""
        return tuple(state[: self.n_actor_state]), tuple(state[self.n_actor_state :])

    def dist(self, y: torch.Tensor) -> SquashedGaussian:
        """Actor core outputs ``[..., H]`` -> the action distribution over ``[..., d]``."""
        mean, log_std = self.pi(self.actor_mlp(y)).chunk(2, -1)
        return SquashedGaussian(mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX), self.center, self.scale)

    def act(self, obs: Obs, state: State, is_first: torch.Tensor | None,
            mask: torch.Tensor | None = None) -> tuple[SquashedGaussian, State]:
        """One actor step: ``obs[B, ...]``, actor state, ``is_first[B]`` -> (distribution over ``[B, d]``, state)."""
        if mask is not None:
            raise RecurlError("action masks apply to Discrete and MultiDiscrete actions, not to SAC's Box actions")
        y, state = self.actor.step(obs, state, is_first)
        return self.dist(y), state

    def step(self, obs: Obs, state: State, is_first: torch.Tensor | None) -> tuple[SquashedGaussian, State]:
        """One step of both cores (training actors): flat state in, flat state out."""
        a_state, c_state = self.split_state(state)
        dist, a_state = self.act(obs, a_state, is_first)
        _, c_state = self.critic.tower.step(obs, c_state, is_first)
        return dist, (*a_state, *c_state)


def _register_bounds(module: nn.Module, space: gym.spaces.Box) -> None:
    """Buffers ``center`` and ``scale`` (the affine map from ``[-1, 1]^d`` to the action bounds)."""
    low = torch.as_tensor(np.asarray(space.low, np.float32).reshape(-1))
    high = torch.as_tensor(np.asarray(space.high, np.float32).reshape(-1))
    module.register_buffer("center", (high + low) / 2)
    module.register_buffer("scale", (high - low) / 2)


# ---------------------------------------------------------------------------------------------------
# The soft Bellman target
# ---------------------------------------------------------------------------------------------------
def soft_targets(rewards: torch.Tensor, terminated: torch.Tensor, q_next: torch.Tensor, logp_next: torch.Tensor,
                 alpha: torch.Tensor | float, gamma: float) -> torch.Tensor:
    """``y_t = r_t + gamma (1 - terminated_t) (q_next_t - alpha logp_next_t)``, all ``[T, B]``.

    ``q_next`` is ``min_i Q'_i(s_{t+1}, a')`` and ``logp_next`` ``log pi(a'|s_{t+1})`` for ``a' ~ pi(.|s_{t+1})``.
    A truncated episode (``terminated`` false at its last step) bootstraps from its final observation.
    """
    return rewards + gamma * (~terminated).float() * (q_next - alpha * logp_next)


# ---------------------------------------------------------------------------------------------------
# The algorithm
# ---------------------------------------------------------------------------------------------------
class RecurrentSAC(ReplayAlgorithm):
    """Recurrent SAC with the SB3-style API: ``learn``, ``predict``, ``save``, ``load``, ``resume``.

    Args:
        env: an env id (replaces the config's ``env``) or ``None`` to use ``config.env``.
        config: a :class:`SACConfig`; keyword ``overrides`` replace its fields.
    """

    algo = "sac"
    config_class = SACConfig

    def _check_spaces(self) -> None:
        space = self.action_space
        if not isinstance(space, gym.spaces.Box) or not np.issubdtype(space.dtype, np.floating):
            raise RecurlError(f"SAC needs a Box action space (continuous actions), {self.config.env} has {space}: "
                              "use --algo ppo or r2d2 for discrete actions")
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise RecurlError(f"SAC needs finite action bounds to squash its actions into, {self.config.env} has "
                              f"{space}")

    def _build(self, obs_space: gym.Space, action_space: gym.Space) -> None:
        cfg = self.config
        self.policy = SACPolicy(obs_space, action_space, cfg.policy, cfg.init_alpha).to(self.device)
        self.target = copy.deepcopy(self.policy.critic).requires_grad_(False)
        self.target_entropy = float(-self.policy.d if cfg.target_entropy is None else cfg.target_entropy)
        self.obs_conv = ObsConverter(obs_space)
        p = self.policy
        self.actor_params = [*p.actor.parameters(), *p.actor_mlp.parameters(), *p.pi.parameters()]
        self.critic_params = list(p.critic.parameters())
        self.optimizer = torch.optim.Adam([
            {"params": self.critic_params, "lr": cfg.critic_lr},
            {"params": self.actor_params, "lr": cfg.actor_lr},
            {"params": [p.log_alpha], "lr": cfg.alpha_lr if cfg.learn_alpha else 0.0},
        ])
        self.num_timesteps = 0
        self.n_updates = 0
        self.collector = None
        self.stats_history = None

    # -- the learner step --------------------------------------------------------------------------------
    def _losses(self, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Critic + actor + temperature loss of one batch (each reaches only its own parameters).

        Shapes: ``W = burn_in + seq_len`` transitions, ``W + 1`` observations, ``B`` sequences; after the
        burn-in, ``seq_len + 1`` observations and ``seq_len`` transitions are trained on.
        """
        cfg, p = self.config, self.policy
        L = cfg.burn_in
        a_state, c_state = p.split_state(batch.state0)
        alpha = p.log_alpha.exp().detach()
        y_actor = p.actor.unroll(batch.obs, a_state, batch.is_first, L)  # [seq_len + 1, B, H]
        y_critic = p.critic.tower.unroll(batch.obs, c_state, batch.is_first, L)
        dist = p.dist(y_actor)
        action_new, logp_new = dist.rsample()  # [seq_len + 1, B, d], [seq_len + 1, B]
        r, term, valid = batch.rewards[L:], batch.terminated[L:], batch.valid[L:]
        with torch.no_grad():
            y_target = self.target.tower.unroll(batch.obs, c_state, batch.is_first, L)
            q1_t, q2_t = self.target.q(y_target[1:], action_new[1:].detach())
            target = soft_targets(r, term, torch.min(q1_t, q2_t), logp_new[1:].detach(), alpha, cfg.gamma)
        mask = valid.float()
        n = mask.sum().clamp(min=1.0)
        q1, q2 = p.critic.q(y_critic[:-1], batch.actions[L:])
        critic_loss = 0.5 * (((q1 - target).pow(2) + (q2 - target).pow(2)) * mask).sum() / n
        # The actor maximises the frozen critic's value of its own reparameterised action.
        q1_pi, q2_pi = p.critic.q(y_critic[:-1].detach(), action_new[:-1], frozen=True)
        logp = logp_new[:-1]
        actor_loss = ((alpha * logp - torch.min(q1_pi, q2_pi)) * mask).sum() / n
        alpha_loss = (-p.log_alpha * (logp.detach() + self.target_entropy) * mask).sum() / n
        logs = {"train/critic_loss": float(critic_loss.detach()), "train/actor_loss": float(actor_loss.detach()),
                "train/alpha": float(alpha), "train/entropy": float(-(logp.detach() * mask).sum() / n),
                "train/q_mean": float((q1.detach() * mask).sum() / n)}
        return critic_loss + actor_loss + alpha_loss, logs

    def _update(self, replay: SequenceReplay) -> dict[str, float]:
        """One update: sample, losses, one Adam step of all three groups, Polyak-average the target critics."""
        cfg = self.config
        batch = replay.sample(cfg.batch_size, 0.0, self.device)
        loss, logs = self._losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.critic_params, cfg.max_grad_norm)
            nn.utils.clip_grad_norm_(self.actor_params, cfg.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            for target, online in zip(self.target.parameters(), self.policy.critic.parameters()):
                target.lerp_(online, cfg.tau)
        self.n_updates += 1
        return logs

    # -- the training loop ---------------------------------------------------------------------------------
    # -- the actors ---------------------------------------------------------------------------------------
    train_log_keys = ("train/critic_loss", "train/actor_loss", "train/alpha", "train/entropy", "train/q_mean")

    def _explore(self, obs: Obs, state: State, is_first: torch.Tensor, mask: torch.Tensor | None,
                 warm: bool) -> tuple[torch.Tensor, State, dict[str, float]]:
        """A sample of the squashed Gaussian; uniformly random actions in the bounds while ``warm``. The
        critic's core steps too, so the replay stores both cores' states."""
        p = self.policy
        dist, new_state = p.step(obs, state, is_first)
        action = p.center + p.scale * (2 * torch.rand_like(dist.mean) - 1) if warm else dist.sample()
        return action, new_state, {}

    def _new_replay(self) -> SequenceReplay:
        cfg = self.config
        return SequenceReplay(cfg.replay_capacity, cfg.burn_in, cfg.seq_len, self.obs_conv, self._state_shapes(),
                              priority_exponent=0.0, stored_state=cfg.stored_state, seed=cfg.seed + self.n_updates,
                              action_shape=(self.policy.d,), action_dtype=torch.float32)

    def _target_source(self) -> nn.Module:
        return self.policy.critic
