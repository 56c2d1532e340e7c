"""R2D2: recurrent experience replay in distributed RL (Kapturowski et al. 2019), on one machine.

Reading order: config -> Q-network (and the article's hard-sigmoid cells) -> value rescaling and
n-step targets -> the learner step -> the acting/training loop -> persistence.

The pieces, with the paper's names:

- *Actors*: ``num_envs`` vectorised envs, each with its own recurrent state, acting epsilon-greedily
  (Ape-X per-actor epsilons ``eps_i = eps ** (1 + alpha * i / (N - 1))`` by default). Under Gymnasium's
  NEXT_STEP autoreset the step after an episode end only resets the env: its action is ignored and it
  is not stored; the observation it returns is flagged ``is_first`` and the core zeroes the state there.
- *Sequence replay* (:mod:`recurl.data.sequence_replay`): windows of ``burn_in + seq_len`` steps that
  overlap by ``overlap`` trained steps, never cross an episode, and keep the actor's recurrent state
  at their start (*stored state*).
- *Burn-in*: the learner unrolls the first ``burn_in`` steps from the stored state without gradient,
  then trains on the remaining ``seq_len`` steps.
- *Targets*: n-step double-Q with a target network, under the invertible value rescaling
  ``h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x``. ``terminated`` stops bootstrapping; a truncated
  episode bootstraps from its final observation (stored after its last transition).
- *Prioritised replay*: a window's priority is ``eta * max|delta| + (1 - eta) * mean|delta|``.

DRQN (Hausknecht & Stone 2015) is a configuration of the same code: ``stored_state=False``,
``burn_in=0`` and ``seq_len`` >= the episode length (whole episodes). The swamp-tour article's agents
are presets (``article-lstm``, ``article-gru``; see docs/r2d2.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from recurl.algos.replay import ReplayAlgorithm, time_slice
from recurl.config import (
    AT_LEAST_0,
    AT_LEAST_1,
    DEVICE,
    DISCOUNT,
    POSITIVE,
    UNIT,
    EvalSchedule,
    OneOf,
    Ranges,
    check_config,
)
from recurl.data.sequence_replay import SequenceBatch, SequenceReplay
from recurl.errors import RecurlError
from recurl.nn.encoders import Obs, ObsEncoder, mlp
from recurl.nn.heads import apply_mask
from recurl.nn.policy import ACTIVATIONS, NetworkConfig, build_core
from recurl.nn.recurrent import State
from recurl.obs import ObsConverter

EXPLORATION = ("apex", "linear", "constant")


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QNetworkConfig(NetworkConfig):
    """Network shape: encoder MLP -> recurrent core -> MLP -> (dueling) Q head."""

    activation: Literal["tanh", "relu", "elu"] = "relu"
    """Activation of the MLPs: tanh, relu or elu."""
    dueling: bool = True
    """Dueling head: Q = V + A - mean(A) (Wang et al. 2016)."""
    hard_sigmoid: bool = False
    """The article's Keras-2.2 cells: LSTM/GRU (reset_after=False) with hard-sigmoid gates. Slow path: a
    Python loop over time steps; use it to reproduce the article, not for speed. Needs core lstm or gru."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hard_sigmoid and (self.core not in ("lstm", "gru") or self.num_layers != 1):
            raise RecurlError("--hard-sigmoid cells exist for a single lstm or gru layer only (--num-layers 1)")


@dataclass(frozen=True)
class R2D2Config(EvalSchedule):
    """R2D2 settings. Every field is a ``recurl train --algo r2d2`` flag (``--seq-len 20``)."""

    env: str = "recurl/SwampTour-ruin_2swamp-v0"
    """Gymnasium env id with a Discrete action space."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Keyword arguments for the env constructor (swamp tour: compute_optimal false trains faster)."""
    num_envs: int = 16
    """Parallel actors, each with its own recurrent state."""
    total_steps: int = 200_000
    """Env steps to train for (over all envs)."""
    seed: int = 0
    """Seed for the envs, the network init, exploration and replay sampling."""
    policy: QNetworkConfig = field(default_factory=QNetworkConfig)
    """Network shape."""
    seq_len: int = 20
    """Trained steps per replayed sequence (m in the paper)."""
    overlap: int = 10
    """Trained steps shared by consecutive sequences of an episode (stride = seq_len - overlap)."""
    burn_in: int = 10
    """Steps unrolled without gradient from the stored state before the trained steps (l in the paper)."""
    stored_state: bool = True
    """Start each replayed sequence from the actor's stored state (false: zero state, DRQN-style)."""
    bptt: int = 0
    """Truncate backpropagation through time to this many steps (0: the whole sequence; 1: the article)."""
    n_step: int = 5
    """Steps of the n-step return."""
    gamma: float = 0.99
    """Discount factor."""
    double_q: bool = True
    """Double Q-learning: the online network picks the bootstrap action, the target network values it."""
    target_update_every: int = 500
    """Copy the online network into the target network every this many learner updates (1: the targets
    come from the network as it was before each update, as in the article)."""
    value_rescaling: bool = True
    """Train on h(G) with h(x) = sign(x)(sqrt(|x|+1)-1) + 1e-3 x, bootstrapping with h^-1(Q)."""
    priority_eta: float = 0.9
    """Sequence priority = eta * max|delta| + (1 - eta) * mean|delta|."""
    priority_exponent: float = 0.9
    """Sampling probability proportional to priority ** this (0: uniform replay)."""
    importance_beta: float = 0.6
    """Importance-sampling correction exponent (0: none)."""
    exploration: str = "apex"
    """Epsilon schedule: apex (per actor eps^(1 + alpha i/(N-1))), linear (decay over time) or constant."""
    epsilon: float = 0.4
    """apex: the base eps; linear: the final value; constant: the value."""
    epsilon_start: float = 1.0
    """linear: the initial epsilon."""
    epsilon_decay: float = 0.3
    """linear: fraction of total_steps over which epsilon decays."""
    apex_alpha: float = 7.0
    """apex: the exponent spread alpha."""
    prev_action_reward: bool = False
    """Feed the previous action and reward to the network as inputs (zeroed at episode starts)."""
    replay_capacity: int = 20_000
    """Sequences kept in replay (FIFO); with seq_len >= the episode length, one sequence per episode."""
    learning_starts: int = 5_000
    """Env steps collected before the first update (counted from the start of each learn call)."""
    batch_size: int = 32
    """Sequences per learner update."""
    train_every: int = 16
    """Env steps (over all envs) between training rounds."""
    gradient_steps: int = 1
    """Learner updates per training round (updates per env step = gradient_steps / train_every)."""
    learning_rate: float = 5e-4
    """Adam step size."""
    adam_eps: float = 1e-3
    """Adam epsilon (the paper's 1e-3)."""
    max_grad_norm: float = 10.0
    """Gradient norm clip (0: none)."""
    eval_episodes: int = 100
    """Episodes of the final greedy evaluation written to summary.json."""
    checkpoint_every: int = 2_000
    """Save a resumable checkpoint every this many learner updates."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda or cuda:N."""
    threads: int = 0
    """Torch CPU threads (0: one, fastest for small networks)."""
    workers: int = 0
    """Actor workers on Ray (Ape-X), each acting in num_envs / workers of the envs on CPU (0: in this process)."""
    ray_address: str = ""
    """Ray cluster to run the workers on (auto, HOST:PORT; empty: start a local one; inline: no Ray)."""
    sync_every: int = 50
    """Steps of its envs an actor worker takes with one set of weights before pulling fresh ones."""

    RANGES: ClassVar[Ranges] = {
        **EvalSchedule.RANGES,
        "num_envs": AT_LEAST_1, "total_steps": AT_LEAST_1, "seed": AT_LEAST_0, "seq_len": AT_LEAST_1,
        "overlap": AT_LEAST_0, "burn_in": AT_LEAST_0, "bptt": AT_LEAST_0, "n_step": AT_LEAST_1, "gamma": DISCOUNT,
        "target_update_every": AT_LEAST_1, "priority_eta": UNIT, "priority_exponent": AT_LEAST_0,
        "importance_beta": UNIT, "exploration": OneOf(EXPLORATION), "epsilon": UNIT, "epsilon_start": UNIT,
        "epsilon_decay": AT_LEAST_0, "apex_alpha": AT_LEAST_0, "replay_capacity": AT_LEAST_1,
        "learning_starts": AT_LEAST_0, "batch_size": AT_LEAST_1, "train_every": AT_LEAST_1,
        "gradient_steps": AT_LEAST_1, "learning_rate": POSITIVE, "adam_eps": POSITIVE, "max_grad_norm": AT_LEAST_0,
        "eval_episodes": AT_LEAST_1, "checkpoint_every": AT_LEAST_1, "device": DEVICE, "threads": AT_LEAST_0,
        "workers": AT_LEAST_0, "sync_every": AT_LEAST_1,
    }

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise RecurlError(f"bad R2D2 option: {msg}")

        check_config(self)
        self.check_schedule()
        if self.overlap >= self.seq_len:
            bad(f"--overlap ({self.overlap}) must be below --seq-len ({self.seq_len})")
        if self.batch_size > self.replay_capacity:  # the learner would wait forever for a full batch
            bad(f"--batch-size ({self.batch_size}) exceeds --replay-capacity ({self.replay_capacity})")
        if self.workers and self.num_envs % self.workers:
            bad(f"--num-envs ({self.num_envs}) must be a multiple of --workers ({self.workers})")


# ---------------------------------------------------------------------------------------------------
# The Q-network and its acting interface
# ---------------------------------------------------------------------------------------------------
class EpsilonGreedy:
    """The action "distribution" of a Q-network: ``mode()`` is argmax Q, ``sample()`` is epsilon-greedy.

    ``q`` is ``[B, A]``; ``epsilon`` a float or a ``[B]`` tensor (one per actor); ``mask[B, A]`` the valid
    actions (masked envs): the greedy action is the best valid one and exploration draws among valid ones.
    """

    def __init__(self, q: torch.Tensor, epsilon: float | torch.Tensor = 0.0, mask: torch.Tensor | None = None) -> None:
        self.q, self.epsilon, self.mask = q, epsilon, mask

    def mode(self) -> torch.Tensor:
        return apply_mask(self.q, self.mask).argmax(-1)

    def outputs(self) -> dict[str, torch.Tensor]:
        """What the ONNX graph returns beside the action: the Q-values ``[B, A]``."""
        return {"q": self.q}

    def sample(self) -> torch.Tensor:
        greedy = self.mode()
        explore = torch.rand(greedy.shape, device=greedy.device) < self.epsilon
        if self.mask is None:
            random = torch.randint_like(greedy, self.q.shape[-1])
        else:  # uniform over the valid actions
            random = torch.multinomial(self.mask.float().reshape(-1, self.q.shape[-1]), 1).view(greedy.shape)
        return torch.where(explore, random, greedy)


class QNetwork(nn.Module):
    """Recurrent Q-network: encode -> core -> MLP -> Q-values, one per discrete action.

    Acting takes ``obs[B, ...]`` and ``is_first[B]``; training takes ``obs[T, B, ...]`` and
    ``is_first[T, B]``. ``state`` is a tuple of ``[layers, B, H]`` tensors. This is also the policy that
    :func:`recurl.evaluation.run_episodes` plays: ``act`` returns an :class:`EpsilonGreedy`.
    """

    def __init__(self, obs_space: gym.Space, n_actions: int, cfg: QNetworkConfig) -> None:
        super().__init__()
        act = ACTIVATIONS[cfg.activation]
        self.encoder = ObsEncoder(obs_space, cfg.encoder_hidden, act, cfg.embed_dim)
        self.core = build_core(cfg, self.encoder.out_dim, cfg.hard_sigmoid)
        self.torso = mlp([cfg.hidden_size, *cfg.head_hidden], act)
        width = cfg.head_hidden[-1] if cfg.head_hidden else cfg.hidden_size
        self.advantage = nn.Linear(width, n_actions)
        self.value = nn.Linear(width, 1) if cfg.dueling else None

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """Zero state for ``batch`` envs: tensors ``[layers, batch, H]``."""
        return self.core.initial_state(batch, device if device is not None else self.advantage.weight.device)

    initial_act_state = initial_state  # acting and learning use the same state

    @property
    def act_state_names(self) -> tuple[str, ...]:
        """Names of the state's tensors: ``("h", "c")`` for LSTM, ``("h",)``, or ``()``."""
        return self.core.state_names

    def _q(self, y: torch.Tensor) -> torch.Tensor:
        z = self.torso(y)
        a = self.advantage(z)
        return a if self.value is None else self.value(z) + a - a.mean(-1, keepdim=True)

    def unroll(self, obs: Obs, state: State, is_first: torch.Tensor, bptt: int = 0) -> tuple[torch.Tensor, State]:
        """``obs[T, B, ...]``, ``is_first[T, B]`` -> ``(q[T, B, A], state after the last step)``.

        ``bptt > 0`` detaches the state every ``bptt`` steps (truncated backpropagation through time).
        """
        y, state = self.core.unroll_truncated(self.encoder(obs), state, is_first, bptt)
        return self._q(y), state

    def act(self, obs: Obs, state: State, is_first: torch.Tensor | None, mask: torch.Tensor | None = None,
            epsilon: float | torch.Tensor = 0.0) -> tuple[EpsilonGreedy, State]:
        """One step through the core's ``step``: ``obs[B, ...]``, ``is_first[B]``, the valid actions
        ``mask[B, A]`` (or ``None``) -> (epsilon-greedy action distribution over ``[B]``, state)."""
        y, state = self.core.step(self.encoder(obs), state, is_first)
        return EpsilonGreedy(self._q(y), epsilon, mask), state


# ---------------------------------------------------------------------------------------------------
# Value rescaling and n-step double-Q targets
# ---------------------------------------------------------------------------------------------------
RESCALE_EPS = 1e-3


def value_rescale(x: torch.Tensor) -> torch.Tensor:
    """``h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x`` (Pohlen et al. 2018), eps = 1e-3."""
    return x.sign() * ((x.abs() + 1).sqrt() - 1) + RESCALE_EPS * x


def inverse_value_rescale(x: torch.Tensor) -> torch.Tensor:
    """``h^-1(x) = sign(x) (((sqrt(1 + 4 eps (|x| + 1 + eps)) - 1) / (2 eps))^2 - 1)``."""
    e = RESCALE_EPS
    return x.sign() * ((((1 + 4 * e * (x.abs() + 1 + e)).sqrt() - 1) / (2 * e)).pow(2) - 1)


def n_step_targets(rewards: torch.Tensor, terminated: torch.Tensor, valid: torch.Tensor,
                   bootstrap: torch.Tensor, gamma: float, n: int) -> torch.Tensor:
    """n-step returns ``G_t = sum_{i<m} gamma^i r_{t+i} + gamma^m (1 - terminated) bootstrap_{t+m}``.

    Args:
        rewards, terminated, valid: ``[T, B]``; ``valid`` is false on padding after an episode's end.
        bootstrap: ``[T + 1, B]``, the value of the observation at each position; position ``k + 1``
            after an episode's last transition ``k`` holds its final observation.
        n: the horizon. ``m = min(n, steps left in the episode, steps left in the window)``: the sum
            stops at the episode's end (bootstrapping only if it was truncated, not terminated) and at
            the window's end (bootstrapping from the window's last observation).

    Returns ``G[T, B]`` (meaningless where ``valid`` is false).
    """
    T = rewards.shape[0]
    pad = rewards.new_zeros(n, rewards.shape[1])
    r = torch.cat([rewards, pad])
    v = torch.cat([valid, pad.bool()])
    term = torch.cat([terminated, pad.bool()])
    G = torch.zeros_like(rewards)
    discount = torch.ones_like(rewards)
    m = torch.zeros_like(rewards, dtype=torch.long)
    going = valid.clone()  # still summing: no episode end yet, inside the window
    ended_terminal = torch.zeros_like(valid)
    for i in range(n):
        inc = going & v[i : i + T]
        G = G + discount * r[i : i + T] * inc
        discount = torch.where(inc, discount * gamma, discount)
        m = m + inc.long()
        ended_terminal |= inc & term[i : i + T]
        going = inc & ~term[i : i + T] & v[i + 1 : i + 1 + T]  # the next step belongs to the episode
    t = torch.arange(T, device=rewards.device).unsqueeze(1)
    boot = bootstrap.gather(0, (t + m).clamp(max=T))
    return G + discount * boot * (~ended_terminal)


# ---------------------------------------------------------------------------------------------------
# The algorithm
# ---------------------------------------------------------------------------------------------------
class R2D2(ReplayAlgorithm):
    """Recurrent replay distributed DQN with the SB3-style API: ``learn``, ``predict``, ``save``, ``load``.

    Args:
        env: an env id (replaces the config's ``env``) or ``None`` to use ``config.env``.
        config: an :class:`R2D2Config`; keyword ``overrides`` replace its fields.
    """

    algo = "r2d2"
    config_class = R2D2Config

    def _build(self, obs_space: gym.Space, action_space: gym.Space) -> None:
        if not isinstance(action_space, gym.spaces.Discrete):
            raise RecurlError(f"R2D2 needs a Discrete action space, {self.config.env} has {action_space}")
        cfg = self.config
        self.policy = QNetwork(obs_space, int(action_space.n), cfg.policy).to(self.device)
        self.target = copy.deepcopy(self.policy).requires_grad_(False)
        self.obs_conv = ObsConverter(obs_space)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
        self.num_timesteps = 0
        self.n_updates = 0
        self.collector = None
        self.stats_history = None

    # -- exploration -------------------------------------------------------------------------------------
    def epsilons(self) -> torch.Tensor:
        """Per-actor epsilon ``[num_envs]`` at the current ``num_timesteps`` (an actor worker: its envs' slice of
        the epsilons of all envs)."""
        cfg = self.config
        first, N = self.rows or (0, cfg.num_envs)
        if cfg.exploration == "apex":
            i = torch.arange(N, dtype=torch.float64)
            eps = cfg.epsilon ** (1 + cfg.apex_alpha * i / max(N - 1, 1))
        elif cfg.exploration == "linear":
            frac = min(1.0, self.num_timesteps / max(1.0, cfg.epsilon_decay * cfg.total_steps))
            eps = torch.full((N,), cfg.epsilon_start + frac * (cfg.epsilon - cfg.epsilon_start), dtype=torch.float64)
        else:
            eps = torch.full((N,), cfg.epsilon, dtype=torch.float64)
        return eps[first : first + cfg.num_envs].float().to(self.device)

    # -- the learner step --------------------------------------------------------------------------------
    def _loss(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """TD loss of one batch of sequences; returns ``(loss, priorities[B], logs)``.

        Shapes: ``W = burn_in + seq_len`` transitions, ``W + 1`` observations, ``B`` sequences.
        """
        cfg = self.config
        L = cfg.burn_in
        obs_after = time_slice(batch.obs, L, None)
        with torch.no_grad():
            # Burn-in: bring the stored (possibly stale) state up to date without training on it.
            state = batch.state0
            if L > 0:
                _, state = self.policy.unroll(time_slice(batch.obs, 0, L), state, batch.is_first[:L])
            q_target, _ = self.target.unroll(batch.obs, batch.state0, batch.is_first)  # [W + 1, B, A]
        q_online, _ = self.policy.unroll(obs_after, state, batch.is_first[L:], cfg.bptt)  # [seq_len + 1, B, A]
        q_target = q_target[L:]
        with torch.no_grad():
            masks = None if batch.masks is None else batch.masks[L:]  # only valid actions bootstrap
            if cfg.double_q:
                a_star = apply_mask(q_online, masks).argmax(-1, keepdim=True)
                q_next = q_target.gather(-1, a_star).squeeze(-1)
            else:
                q_next = apply_mask(q_target, masks).max(-1).values
            if cfg.value_rescaling:
                q_next = inverse_value_rescale(q_next)
            G = n_step_targets(batch.rewards[L:], batch.terminated[L:], batch.valid[L:], q_next, cfg.gamma,
                               cfg.n_step)
            target = value_rescale(G) if cfg.value_rescaling else G
        q_taken = q_online[:-1].gather(-1, batch.actions[L:].unsqueeze(-1)).squeeze(-1)  # [seq_len, B]
        mask = batch.valid[L:].float()
        delta = (target - q_taken) * mask
        n_valid = mask.sum(0).clamp(min=1.0)  # [B]
        # Each sequence's mean squared TD error, weighted by its importance-sampling weight.
        loss = (batch.weights * 0.5 * delta.pow(2).sum(0) / n_valid).mean()
        with torch.no_grad():
            abs_d = delta.abs()
            priorities = cfg.priority_eta * abs_d.max(0).values + (1 - cfg.priority_eta) * abs_d.sum(0) / n_valid
        logs = {"train/loss": float(loss.detach()),
                "train/q_mean": float((q_taken.detach() * mask).sum() / mask.sum().clamp(min=1))}
        return loss, priorities, logs

    def _update(self, replay: SequenceReplay) -> dict[str, float]:
        """One learner step: sample, TD loss, Adam step, new priorities, periodic target copy."""
        cfg = self.config
        batch = replay.sample(cfg.batch_size, cfg.importance_beta, self.device)
        if cfg.target_update_every == 1:  # the article: targets from the network as it was before this update
            self.target.load_state_dict(self.policy.state_dict())
        loss, priorities, logs = self._loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        replay.update_priorities(batch.indices, priorities.cpu().numpy())
        self.n_updates += 1
        if cfg.target_update_every > 1 and self.n_updates % cfg.target_update_every == 0:
            self.target.load_state_dict(self.policy.state_dict())
        return logs

    # -- the actors ---------------------------------------------------------------------------------------
    train_log_keys = ("train/loss", "train/q_mean")

    def _explore(self, obs: Obs, state: State, is_first: torch.Tensor, mask: torch.Tensor | None,
                 warm: bool) -> tuple[torch.Tensor, State, dict[str, float]]:
        """Epsilon-greedy over the valid actions, each actor with its own epsilon."""
        eps = self.epsilons()
        dist, new_state = self.policy.act(obs, state, is_first, mask, eps)
        return dist.sample(), new_state, {"train/epsilon_mean": float(eps.mean())}

    def _new_replay(self) -> SequenceReplay:
        cfg = self.config
        return SequenceReplay(cfg.replay_capacity, cfg.burn_in, cfg.seq_len, self.obs_conv, self._state_shapes(),
                              cfg.priority_exponent, cfg.stored_state, seed=cfg.seed + self.n_updates,
                              mask_width=int(self.action_space.n) if self.masked else 0)

    def _target_source(self) -> nn.Module:
        return self.policy

    def _priorities(self, replay: SequenceReplay, idx: np.ndarray) -> np.ndarray:
        """Ape-X: an actor computes its windows' initial priorities with its copy of the network."""
        return self._loss(replay.gather(idx, np.ones(len(idx)), self.device))[1].cpu().numpy()

    # -- acting ------------------------------------------------------------------------------------------
    def _act(self, obs: Obs, state: State, is_first: torch.Tensor | None,
             mask: torch.Tensor | None) -> tuple[EpsilonGreedy, State]:
        # predict(deterministic=False) explores with the config's epsilon; True takes argmax Q
        return self.policy.act(obs, state, is_first, mask, self.config.epsilon)
