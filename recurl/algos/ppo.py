"""Recurrent PPO (Schulman et al. 2017) with truncated BPTT over stored-state chunks.

Reading order: config -> GAE -> rollout -> update -> the user-facing class.

How memory is handled, in one place:
- Each env has its own recurrent state, carried from step to step while acting. Gymnasium's NEXT_STEP
  autoreset means the step after an episode ends only resets that env: its action is ignored and its
  reward is 0. That step is *invalid*: masked out of every loss and advantage. But the policy still
  runs on it, on the episode's final observation with the episode's own hidden state, and the value
  it computes is exactly the bootstrap value a truncated episode needs.
- The observation that reset step returns is the next episode's first: it is flagged ``is_first`` and
  the core zeroes the state there (inside the core, nowhere else).
- Training cuts each env's rollout into chunks of ``seq_len`` steps and stores the recurrent state at
  the start of every chunk (and only there). A minibatch is a set of (env, chunk) sequences, unrolled
  from their stored states.
- ``terminated`` stops bootstrapping; ``truncated`` bootstraps from the final observation's value.

Rollout workers (``--workers N``, :mod:`recurl.algos.distributed`): each worker is a :class:`RecurrentPPO`
with ``num_envs / N`` of the envs, running the same :meth:`RecurrentPPO._collect`; the learner merges their
buffers and runs the same update. Two things make N workers x k envs give exactly the rollouts of one
process with N*k envs: worker ``w`` seeds its envs as envs ``w*k .. (w+1)*k - 1`` (``env_offset``), and it
samples its actions from the learner's torch RNG state, drawing the noise of all N*k envs and keeping its
own rows (:func:`sample_rows`), so the single process's sampling stream is unchanged. Reward scaling
depends on every env, so it runs on the learner, over the merged rollout (:meth:`RecurrentPPO._scale_rewards`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from recurl.algos.base import Algorithm, Callback, build_config
from recurl.algos.distributed import InlinePool, WorkerPool, check_ray, start_pool
from recurl.checkpoint import read_run
from recurl.collector import Collector, EpisodeStats
from recurl.config import AT_LEAST_0, AT_LEAST_1, DEVICE, DISCOUNT, POSITIVE, UNIT, EvalSchedule, Ranges, check_config
from recurl.errors import RecurlError
from recurl.logger import RunLogger
from recurl.nn.encoders import RunningNorm
from recurl.nn.policy import ActorCriticState, PolicyConfig, RecurrentPolicy
from recurl.obs import ObsConverter, mask_width


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PPOConfig(EvalSchedule):
    """Recurrent PPO settings. Every field is a ``recurl train`` flag (``--n-steps 64``)."""

    env: str = "recurl/TMaze-v0"
    """Gymnasium env id (recurl's ids, e.g. recurl/CartPoleNoVel-v1, or any registered id)."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Keyword arguments for the env constructor, e.g. --env-kwargs length 40."""
    num_envs: int = 8
    """Parallel envs, each with its own recurrent state."""
    total_steps: int = 100_000
    """Env steps to train for (over all envs)."""
    seed: int = 0
    """Seed for the envs, the network init and the action sampling."""
    n_steps: int = 32
    """Rollout length per env between updates."""
    seq_len: int = 0
    """BPTT chunk length; 0 means n_steps (one chunk per env per rollout). Must divide n_steps."""
    batch_size: int = 256
    """Samples per minibatch (a multiple of seq_len: batch_size / seq_len sequences)."""
    n_epochs: int = 10
    """Passes over each rollout."""
    learning_rate: float = 3e-4
    """Adam step size."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over training."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO ratio clip."""
    anneal_clip: bool = False
    """Decay clip_range linearly to 0 over training (zoo's lin_0.2)."""
    clip_range_vf: float | None = None
    """Clip the value update around the old value (None: no value clipping)."""
    normalize_advantage: bool = True
    """Normalise advantages per minibatch."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Clip the gradient's global norm (actor and critic together) to this; 0: no clipping. With one rare
    decision per long episode (the T-maze at L >= 250) the critic's gradient sets the norm and the clip
    shrinks the actor's memory signal to nothing: docs/cores.md."""
    target_kl: float | None = None
    """Stop an update's epochs early when the approximate KL exceeds this."""
    normalize_reward: bool = True
    """Scale rewards by the running std of the discounted return (statistics saved with the model)."""
    prev_action_reward: bool = False
    """Feed the previous action and reward to the policy as inputs (zeroed at episode starts)."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """Network shape."""
    init_from: str | None = None
    """Start from the weights of another run with the same spaces and network (e.g. a BC run)."""
    kl_teacher: float = 0.0
    """Penalty coefficient on KL(policy || init_from policy): keep fine-tuning close to a cloned policy."""
    eval_episodes: int = 100
    """Episodes of the final deterministic evaluation written to summary.json."""
    checkpoint_every: int = 25
    """Save a resumable checkpoint every this many updates."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda or cuda:N."""
    threads: int = 0
    """Torch CPU threads (0: one, fastest for small networks; raise it for image encoders)."""
    workers: int = 0
    """Rollout workers on Ray, each stepping num_envs / workers of the envs on CPU (0: envs in this process)."""
    ray_address: str = ""
    """Ray cluster to run the workers on (auto, HOST:PORT; empty: start a local one; inline: no Ray)."""

    RANGES: ClassVar[Ranges] = {
        **EvalSchedule.RANGES,
        "num_envs": AT_LEAST_1, "total_steps": AT_LEAST_1, "seed": AT_LEAST_0, "n_steps": AT_LEAST_1,
        "seq_len": AT_LEAST_0, "batch_size": AT_LEAST_1, "n_epochs": AT_LEAST_1, "learning_rate": POSITIVE,
        "gamma": DISCOUNT, "gae_lambda": UNIT, "clip_range": POSITIVE, "clip_range_vf": POSITIVE,
        "ent_coef": AT_LEAST_0, "vf_coef": AT_LEAST_0, "max_grad_norm": AT_LEAST_0, "target_kl": POSITIVE,
        "kl_teacher": AT_LEAST_0, "eval_episodes": AT_LEAST_1, "checkpoint_every": AT_LEAST_1, "device": DEVICE,
        "threads": AT_LEAST_0, "workers": AT_LEAST_0,
    }

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise RecurlError(f"bad PPO option: {msg}")

        check_config(self)
        self.check_schedule()
        if self.n_steps % self.chunk_len:
            bad(f"--seq-len ({self.seq_len}) must divide --n-steps ({self.n_steps})")
        if self.batch_size % self.chunk_len or self.batch_size < self.chunk_len:
            bad(f"--batch-size ({self.batch_size}) must be a multiple of the sequence length --seq-len "
                f"({self.chunk_len})")
        if self.batch_size > self.num_envs * self.n_steps:
            bad(f"--batch-size ({self.batch_size}) exceeds the rollout size --num-envs * --n-steps "
                f"({self.num_envs * self.n_steps})")
        if self.kl_teacher > 0 and not self.init_from:
            bad("--kl-teacher needs --init-from RUN_DIR (the teacher)")
        if self.workers and self.num_envs % self.workers:
            bad(f"--num-envs ({self.num_envs}) must be a multiple of --workers ({self.workers})")

    @property
    def chunk_len(self) -> int:
        """The effective BPTT chunk length."""
        return self.seq_len or self.n_steps

    @property
    def seqs_per_batch(self) -> int:
        """Sequences per minibatch."""
        return self.batch_size // self.chunk_len


# ---------------------------------------------------------------------------------------------------
# Generalised advantage estimation
# ---------------------------------------------------------------------------------------------------
def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    valid: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over a rollout with NEXT_STEP autoreset.

    Args:
        rewards, terminated, truncated, valid: ``[T, B]``; ``valid[t]`` is false on autoreset steps.
        values: ``[T + 1, B]``; ``values[T]`` is the value of the observation after the rollout. On a
            step right after an episode end, ``values[t + 1]`` is the value of that episode's final
            observation under the episode's own hidden state: the bootstrap for truncation.

    Returns ``(advantages[T, B], returns[T, B])``, both zero on invalid steps.

    ``delta_t = r_t + gamma * (1 - terminated_t) * V_{t+1} - V_t`` and
    ``A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}`` with ``done = terminated | truncated``.
    """
    T = rewards.shape[0]
    not_term = 1.0 - terminated.float()
    not_done = 1.0 - (terminated | truncated).float()
    validf = valid.float()
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(T - 1, -1, -1):
        delta = rewards[t] + gamma * not_term[t] * values[t + 1] - values[t]
        last = (delta + gamma * gae_lambda * not_done[t] * last) * validf[t]
        adv[t] = last
    return adv, (adv + values[:-1]) * validf


# ---------------------------------------------------------------------------------------------------
# Rollout storage: per-step tensors plus the recurrent state at each chunk start
# ---------------------------------------------------------------------------------------------------
class RolloutBuffer:
    """``n_steps x num_envs`` transitions on the training device; states only at chunk starts.

    ``rewards`` hold the env's rewards until :meth:`RecurrentPPO._scale_rewards` scales them in place.
    """

    #: the per-step tensors, ``[T, B, ...]`` (``values`` ``[T + 1, B]``); ``obs`` may be a dict of them
    FIELDS = ("obs", "actions", "logp", "rewards", "values", "is_first", "valid", "terminated", "truncated", "masks")

    def __init__(self, cfg: PPOConfig, obs_conv: ObsConverter, act_shape: tuple[int, ...],
                 act_dtype: torch.dtype, device: torch.device, mask_width: int = 0) -> None:
        T, B = cfg.n_steps, cfg.num_envs
        self.obs = obs_conv.empty((T, B), device)
        self.actions = torch.zeros((T, B, *act_shape), dtype=act_dtype, device=device)
        z = {"device": device}
        self.logp, self.rewards = torch.zeros(T, B, **z), torch.zeros(T, B, **z)
        self.values = torch.zeros(T + 1, B, **z)
        self.is_first = torch.zeros(T, B, dtype=torch.bool, **z)
        self.valid = torch.zeros(T, B, dtype=torch.bool, **z)
        self.terminated = torch.zeros(T, B, dtype=torch.bool, **z)
        self.truncated = torch.zeros(T, B, dtype=torch.bool, **z)
        # valid-action masks of the observations acted on, when the env has them ([T, B, n])
        self.masks = torch.ones(T, B, mask_width, dtype=torch.bool, **z) if mask_width else None
        self.chunk_states: list[ActorCriticState] = []
        self.teacher_states: list[ActorCriticState] = []

    def parts(self) -> dict[str, Any]:
        """The contents as CPU tensors (what a worker sends back): :attr:`FIELDS` plus the chunk states."""
        def cpu(x: Any) -> Any:
            return {k: v.cpu() for k, v in x.items()} if isinstance(x, dict) else None if x is None else x.cpu()

        return {**{k: cpu(getattr(self, k)) for k in self.FIELDS},
                "chunk_states": [s.map(torch.Tensor.cpu) for s in self.chunk_states],
                "teacher_states": [s.map(torch.Tensor.cpu) for s in self.teacher_states]}

    def merge(self, parts: list[dict[str, Any]]) -> None:
        """Fill this buffer with the :meth:`parts` of buffers holding consecutive slices of its envs."""
        off = 0
        for p in parts:
            k = p["valid"].shape[1]
            for name in self.FIELDS:
                dst, src = getattr(self, name), p[name]
                for d, s in (zip(dst.values(), src.values()) if isinstance(dst, dict) else [(dst, src)]):
                    if d is not None:
                        d[:, off : off + k] = s.to(d.device)
            off += k
        dev = self.valid.device
        for name in ("chunk_states", "teacher_states"):  # per chunk: the workers' states side by side
            setattr(self, name, [_stack_states([s.map(lambda x: x.to(dev)) for s in chunk])
                                 for chunk in zip(*(p[name] for p in parts))])


def _stack_states(chunk_states: list[ActorCriticState]) -> ActorCriticState:
    """Per-chunk states ``[layers, B, H]`` -> ``[layers, n_chunks * B, H]`` in sequence order."""
    return ActorCriticState(*(tuple(torch.cat(parts, dim=1) for parts in zip(*(getattr(s, part) for s in chunk_states)))
                              for part in ActorCriticState._fields))


def sample_rows(dist: Any, offset: int, total: int) -> torch.Tensor:
    """``dist.sample()`` for rows ``offset .. offset + k`` of a batch of ``total``: ``dist`` (an action
    distribution of :mod:`recurl.nn.heads` over a batch ``[k]``) is padded to ``[total]`` and sampled whole,
    and its own rows are kept.

    torch draws the noise of a batch independently of the values (multinomial's exponential race,
    ``randn`` for a Gaussian), so from the same RNG state a worker's rows are exactly what one process
    holding all ``total`` envs samples for them, and the RNG advances by the same amount.
    """
    def pad(x: torch.Tensor, fill: float | bool = 0.0) -> torch.Tensor:
        out = x.new_full((total, *x.shape[1:]), fill)
        out[offset : offset + len(x)] = x
        return out

    # the distributions of recurl.nn.heads, rebuilt around padded inputs
    if dist.kind == "autoregressive":  # a chain: the head recomputes each conditional from h
        k = len(dist.h)
        mask = None if dist.masks is None else pad(torch.cat(dist.masks, -1), True)
        full = type(dist)(dist.head, pad(dist.h), mask)
    else:
        k = len(dist.params)
        full = type(dist)(dist.kind, pad(dist.params), dist.log_std, dist.splits)
        if dist.kind == "categorical":
            full.logits = pad(dist.logits)
        elif dist.kind == "multi":
            full.logits_list = [pad(lg) for lg in dist.logits_list]
    return full.sample()[offset : offset + k]


def _to_sequences(x: torch.Tensor, L: int) -> torch.Tensor:
    """``[n_steps, B, ...]`` -> ``[L, n_chunks * B, ...]``; sequence ``c * B + b`` is chunk c of env b."""
    T, B = x.shape[:2]
    return x.reshape(T // L, L, B, *x.shape[2:]).transpose(0, 1).reshape(L, (T // L) * B, *x.shape[2:])


def load_policy(run_dir: str | Path, device: torch.device) -> RecurrentPolicy:
    """The actor-critic of another run (PPO or BC: same network class), frozen, e.g. ``init_from``'s
    weights and teacher. Only JSON and safetensors are read, verified as one checkpoint set."""
    saved = read_run(run_dir)
    if saved.meta["algo"] not in ("ppo", "bc"):
        raise RecurlError(f"--init-from {run_dir}: a {saved.meta['algo']!r} run has no actor-critic policy "
                          "(use a ppo or bc run)")
    pol = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.meta["config"].get("policy", {}).items()}
    policy = RecurrentPolicy(saved.observation_space, saved.action_space, build_config(PolicyConfig, pol))
    try:
        policy.load_state_dict({k[7:]: v for k, v in saved.tensors.items() if k.startswith("policy.")})
    except RuntimeError as e:
        raise RecurlError(f"--init-from {run_dir}: its weights do not fit its own config ({e})") from None
    return policy.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------
# The algorithm
# ---------------------------------------------------------------------------------------------------
class RecurrentPPO(Algorithm):
    """Recurrent PPO with the Stable-Baselines3 API: ``learn``, ``predict``, ``save``, ``load``.

    Args:
        env: an env id (the config's ``env`` is replaced by it) or ``None`` to use ``config.env``.
        config: a :class:`PPOConfig`; keyword ``overrides`` replace its fields (``policy`` may be a dict).
    """

    algo = "ppo"
    config_class = PPOConfig
    load_overrides = {"init_from": None, "kl_teacher": 0.0}  # a loaded model acts; it needs no teacher

    def _build(self, obs_space: gym.Space, action_space: gym.Space) -> None:
        cfg = self.config
        self.policy = RecurrentPolicy(obs_space, action_space, cfg.policy).to(self.device)
        self.obs_conv = ObsConverter(obs_space)
        self.reward_norm = RunningNorm(()).to(self.device)  # variance of the discounted return
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.learning_rate, eps=1e-5, fused=True)
        self.num_timesteps = 0
        self.n_updates = 0
        self.collector: Collector | None = None
        self.stats_history: dict[str, Any] | None = None
        self.pool: WorkerPool | InlinePool | None = None  # rollout workers (--workers)
        self.remote_stats: EpisodeStats | None = None  # the workers' episodes, as the learner sees them
        self.rows: tuple[int, int] | None = None  # a worker's (first env, all envs): it samples its rows only
        self.teacher: RecurrentPolicy | None = None
        if cfg.init_from:
            src = load_policy(cfg.init_from, self.device)
            try:
                self.policy.load_state_dict(src.state_dict())
            except RuntimeError as e:
                raise RecurlError(f"--init-from {cfg.init_from}: network or spaces differ ({e})") from None
            if cfg.kl_teacher > 0:
                self.teacher = src

    # -- rollout -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _collect(self, buf: RolloutBuffer) -> None:
        """Fill ``buf`` with ``n_steps`` steps of every env. The collector's state is ``(policy state,
        teacher state)``: the teacher keeps its own memory of the same episodes."""
        cfg, col, pol = self.config, self.collector, self.policy
        L = cfg.chunk_len
        buf.chunk_states, buf.teacher_states = [], []
        for t in range(cfg.n_steps):
            state, t_state = col.state
            if t % L == 0:
                buf.chunk_states.append(state.map(torch.clone))
                buf.teacher_states.append(t_state.map(torch.clone))
            self.obs_conv.write(buf.obs, t, col.obs)
            buf.is_first[t] = col.is_first
            buf.valid[t] = torch.as_tensor(col.valid, device=self.device)
            mask = col.action_mask
            if buf.masks is not None:
                buf.masks[t] = mask
            if self.teacher is not None:
                _, _, t_state = self.teacher.step(col.obs, t_state, col.is_first, mask)
            dist, value, state = pol.step(col.obs, state, col.is_first, mask)
            action = dist.sample() if self.rows is None else sample_rows(dist, *self.rows)
            buf.actions[t] = action
            buf.logp[t] = dist.log_prob(action)
            buf.values[t] = value
            step = col.step(action, (state, t_state))
            buf.rewards[t] = torch.as_tensor(step.reward, device=self.device)  # scaled by _scale_rewards
            buf.terminated[t] = torch.as_tensor(step.terminated, device=self.device)
            buf.truncated[t] = torch.as_tensor(step.truncated, device=self.device)
        # Bootstrap value of the observation after the rollout; the state is not advanced by it.
        _, buf.values[cfg.n_steps], _ = pol.step(col.obs, col.state[0], col.is_first, col.action_mask)

    def _scale_rewards(self, buf: RolloutBuffer) -> None:
        """Scale the rollout's rewards in place, step by step over all envs (the running statistics see every
        env, so this runs on the learner once the workers' rollouts are merged)."""
        rewards = buf.rewards.cpu().numpy()
        done = (buf.terminated | buf.truncated).cpu().numpy()
        valid = buf.valid.cpu().numpy()
        for t in range(len(rewards)):
            rewards[t] = self._scale_reward(rewards[t], done[t], valid[t])
        buf.rewards.copy_(torch.as_tensor(rewards))

    def _scale_reward(self, reward: np.ndarray, done: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Divide by the running std of the discounted return (SB3 VecNormalize's scheme)."""
        r = np.asarray(reward, np.float32)
        if not self.config.normalize_reward:
            return r
        self._ret = self._ret * self.config.gamma + r
        self.reward_norm.update(torch.as_tensor(self._ret[valid], device=self.device))
        self._ret[done] = 0.0
        std = math.sqrt(float(self.reward_norm.var) + 1e-8)
        return np.clip(r / std, -10.0, 10.0)

    # -- update ------------------------------------------------------------------------------------------
    def _sequences(self, buf: RolloutBuffer) -> tuple[dict[str, Any], ActorCriticState, ActorCriticState, torch.Tensor]:
        """GAE over the rollout, then everything cut into ``[L, n_chunks * B]`` training sequences with the
        states entering each chunk; also returns the returns ``[T, B]``."""
        cfg = self.config
        L = cfg.chunk_len
        adv, returns = compute_gae(buf.rewards, buf.values, buf.terminated, buf.truncated, buf.valid,
                                   cfg.gamma, cfg.gae_lambda)
        seq = {
            "obs": self.obs_conv.map(buf.obs, lambda x: _to_sequences(x, L)),
            "actions": _to_sequences(buf.actions, L),
            "logp": _to_sequences(buf.logp, L),
            "values": _to_sequences(buf.values[:-1], L),
            "adv": _to_sequences(adv, L),
            "returns": _to_sequences(returns, L),
            "is_first": _to_sequences(buf.is_first, L),
            "valid": _to_sequences(buf.valid, L),
            "mask": None if buf.masks is None else _to_sequences(buf.masks, L),
        }
        return seq, _stack_states(buf.chunk_states), _stack_states(buf.teacher_states), returns

    def _update(self, buf: RolloutBuffer, progress: float) -> dict[str, float]:
        cfg, pol = self.config, self.policy
        L, B = cfg.chunk_len, cfg.num_envs
        seq, states, teacher_states, returns = self._sequences(buf)
        n_seq = (cfg.n_steps // L) * B
        clip = cfg.clip_range * (1.0 - progress if cfg.anneal_clip else 1.0)
        lr = cfg.learning_rate * (1.0 - progress if cfg.anneal_lr else 1.0)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        one_batch = cfg.seqs_per_batch == n_seq  # the whole rollout is one minibatch: no gathering needed
        logs: dict[str, list[torch.Tensor]] = {}
        for _epoch in range(cfg.n_epochs):
            perm = torch.randperm(n_seq, device=self.device)
            for start in range(0, n_seq - cfg.seqs_per_batch + 1, cfg.seqs_per_batch):
                idx = perm[start : start + cfg.seqs_per_batch]
                mb = seq if one_batch else {k: self.obs_conv.map(v, lambda x, idx=idx: x[:, idx]) if k == "obs"
                                            else None if v is None else v[:, idx] for k, v in seq.items()}
                mb_states = states if one_batch else states.map(lambda s, idx=idx: s[:, idx])
                mb_teacher = teacher_states if one_batch else teacher_states.map(lambda s, idx=idx: s[:, idx])
                loss, stats = self._loss(mb, mb_states, mb_teacher, clip)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(pol.parameters(), cfg.max_grad_norm, foreach=True)
                self.optimizer.step()
                for k, v in stats.items():
                    logs.setdefault(k, []).append(v)
            if cfg.target_kl is not None and float(logs["approx_kl"][-1]) > 1.5 * cfg.target_kl:
                break
        means = {k: float(torch.stack(v).mean()) for k, v in logs.items()}
        # Fold this rollout's observations into the normaliser only now, so that acting and every
        # epoch of this update saw the same statistics (the PPO ratio starts at exactly 1).
        pol.update_normalizer(buf.obs, buf.valid)
        self.n_updates += 1
        v, r = buf.values[:-1][buf.valid], returns[buf.valid]
        explained = float(1 - (r - v).var() / r.var()) if r.numel() > 1 and r.var() > 0 else float("nan")
        return {
            "train/policy_gradient_loss": means["pg_loss"],
            "train/value_loss": means["vf_loss"],
            "train/entropy_loss": -means["entropy"],
            "train/approx_kl": means["approx_kl"],
            "train/clip_fraction": means["clip_fraction"],
            **({"train/teacher_kl": means["teacher_kl"]} if "teacher_kl" in means else {}),
            "train/clip_range": clip,
            "train/learning_rate": lr,
            "train/explained_variance": explained,
            "train/n_updates": self.n_updates,
        }

    def _loss(self, mb: dict[str, Any], states: ActorCriticState, teacher_states: ActorCriticState,
              clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO loss on a minibatch of sequences (every tensor ``[L, n, ...]``), masked to valid steps.

        ``L^CLIP - c1 L^VF + c2 S`` (Schulman et al. 2017, eq. 9), plus ``kl_teacher * KL(pi || teacher)``.
        """
        cfg = self.config
        mask = mb["valid"].float()
        n_valid = mask.sum().clamp(min=1.0)

        def masked_mean(x: torch.Tensor) -> torch.Tensor:
            return (x * mask).sum() / n_valid

        dist, value, _ = self.policy.unroll(mb["obs"], states, mb["is_first"], return_state=False, mask=mb["mask"])
        log_ratio = dist.log_prob(mb["actions"]) - mb["logp"]
        ratio = log_ratio.exp()
        adv = mb["adv"]
        if cfg.normalize_advantage:
            mean = masked_mean(adv)
            adv = (adv - mean) / (masked_mean((adv - mean).pow(2)).sqrt() + 1e-8)
        pg_loss = -masked_mean(torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv))
        if cfg.clip_range_vf is not None:
            old_v = mb["values"]
            value = old_v + (value - old_v).clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
        vf_loss = masked_mean((value - mb["returns"]).pow(2))
        entropy = masked_mean(dist.entropy())
        loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
        stats = {"pg_loss": pg_loss, "vf_loss": vf_loss, "entropy": entropy}
        if self.teacher is not None:
            with torch.no_grad():
                t_dist, _, _ = self.teacher.unroll(mb["obs"], teacher_states, mb["is_first"], return_state=False,
                                                   mask=mb["mask"])
            stats["teacher_kl"] = masked_mean(dist.kl(t_dist))
            loss = loss + cfg.kl_teacher * stats["teacher_kl"]
        with torch.no_grad():
            stats["approx_kl"] = masked_mean((ratio - 1) - log_ratio)
            stats["clip_fraction"] = masked_mean(((ratio - 1).abs() > clip).float())
        return loss, {k: v.detach() for k, v in stats.items()}

    # -- the training loop ---------------------------------------------------------------------------------
    def _train(self, run_dir: str | Path | None, progress_bar: bool, callbacks: list[Callback], fresh: bool) -> None:
        """Rollout + update until the span's end. Each update takes ``n_steps * num_envs`` env steps; the
        last update never overshoots the span, except that a span shorter than one rollout gets one."""
        cfg = self.config
        steps_per_update = cfg.n_steps * cfg.num_envs
        start, end = self._span
        if fresh or (self.collector is None and self.pool is None):
            self._start_collector()
        buf = self._new_buffer()
        logger = RunLogger(run_dir, end, progress_bar)
        logger.start(self.num_timesteps)
        try:
            while self.num_timesteps + steps_per_update <= end or self.num_timesteps == start < end:
                t0 = time.perf_counter()
                progress = self._progress()
                if self.pool is None:
                    self._collect(buf)
                else:
                    self._collect_remote(buf)
                self._scale_rewards(buf)
                self.num_timesteps += steps_per_update
                t1 = time.perf_counter()
                train_logs = self._update(buf, progress)
                t2 = time.perf_counter()
                self.timing = {"collect_s": t1 - t0, "update_s": t2 - t1}  # the last iteration's phases
                logs = {**self._episode_stats().summary(), **train_logs, "time/fps": steps_per_update / (t2 - t0),
                        **{f"time/{k}": v for k, v in self.timing.items()}}
                logger.log(self.num_timesteps, logs)
                if run_dir is not None and self.n_updates % cfg.checkpoint_every == 0:
                    self.checkpoint(run_dir)
                if any(cb(self) is False for cb in callbacks):
                    break
        finally:
            logger.close()
        if run_dir is not None:
            self.checkpoint(run_dir)

    def _start_collector(self) -> None:
        """Fresh envs and zero states (a resumed run restarts its episodes: env state is not saved)."""
        cfg = self.config
        self._ret = np.zeros(cfg.num_envs, np.float64)
        if cfg.workers:  # the envs live in the workers; they restart their episodes on the next rollout
            if self.pool is None:
                check_ray(cfg.ray_address)
                self.pool = start_pool(ppo_worker, (cfg,), cfg.workers, cfg.ray_address)
                self.remote_stats = EpisodeStats()
                if self.stats_history:
                    self.remote_stats.load(self.stats_history)
            self._workers_fresh = True
            return
        teacher = self.teacher.initial_state(cfg.num_envs, self.device) if self.teacher else ActorCriticState((), ())
        self._fresh_collector((self.policy.initial_state(cfg.num_envs, self.device), teacher))

    # -- rollout workers -----------------------------------------------------------------------------------
    def _collect_remote(self, buf: RolloutBuffer) -> None:
        """One rollout from the workers into ``buf``: the weights go out once (one object-store entry read by
        every worker) with the RNG state to sample from; each worker returns its envs' slice of the buffer."""
        weights = self.pool.put({k: v.detach().cpu() for k, v in self.policy.state_dict().items()})
        rng = torch.get_rng_state()
        results = self.pool.map("rollout", [(weights, rng, self.n_updates, self._workers_fresh)] * len(self.pool))
        self._workers_fresh = False
        buf.merge([r["buffer"] for r in results])
        # every worker drew the noise of all envs, so each ends where one process would have
        torch.set_rng_state(results[0]["rng"])
        for r in results:
            self.remote_stats.add(*r["episodes"])

    @torch.inference_mode()
    def rollout(self, weights: dict[str, torch.Tensor], rng: torch.Tensor, n_updates: int,
                fresh: bool) -> dict[str, Any]:
        """A worker's side of :meth:`_collect_remote`: load the learner's ``weights``, restart the envs when
        ``fresh`` (or after a restart of this worker), fill the buffer with ``_collect`` sampling from the
        learner's RNG state ``rng``; returns the buffer's :meth:`RolloutBuffer.parts`, the RNG state after
        it and the episodes finished meanwhile ``(returns, lengths, successes)``."""
        self.policy.load_state_dict(weights)
        if fresh or self.collector is None:
            self.n_updates = n_updates  # the reset seed of the single process
            self._start_collector()
            self._buf = self._new_buffer()
        torch.set_rng_state(rng)
        stats = self.collector.stats
        before = stats.episodes
        self._collect(self._buf)
        n = min(stats.episodes - before, stats.window)
        last = [x[len(x) - min(n, len(x)) :] for x in (stats.returns, stats.lengths, stats.successes)]
        episodes = (np.asarray(last[0]), np.asarray(last[1], np.int64), last[2])
        return {"buffer": self._buf.parts(), "rng": torch.get_rng_state(), "episodes": episodes}

    def shutdown_workers(self) -> None:
        """Stop the rollout workers (a later ``learn`` starts new ones)."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def _episode_stats(self) -> EpisodeStats:
        return self.collector.stats if self.pool is None else self.remote_stats

    def _new_buffer(self) -> RolloutBuffer:
        return RolloutBuffer(self.config, self.obs_conv, tuple(self.action_space.shape or ()),
                             torch.float32 if isinstance(self.action_space, gym.spaces.Box) else torch.long,
                             self.device, mask_width(self.action_space) if self.masked else 0)

    # -- persistence -------------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**super()._tensors(), **{f"reward_norm.{k}": v for k, v in self.reward_norm.state_dict().items()}}

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super()._load_tensors(tensors)
        self.reward_norm.load_state_dict({k[12:]: v for k, v in tensors.items() if k.startswith("reward_norm.")})

    def _algo_state(self) -> dict[str, Any]:
        started = self.collector is not None or self.pool is not None
        return {"episodes": self._episode_stats().state() if started else self.stats_history}

    def _restore_algo(self, state: dict[str, Any]) -> None:
        self.stats_history = state["episodes"]


def ppo_worker(config: PPOConfig, index: int) -> RecurrentPPO:
    """Rollout worker ``index`` of a ``--workers`` run: a CPU :class:`RecurrentPPO` holding envs
    ``index * k .. (index + 1) * k - 1`` of the config's ``num_envs`` (``k = num_envs / workers``)."""
    k = config.num_envs // config.workers
    # the worker never updates: a batch of one chunk passes the config checks for its k envs
    cfg = dataclasses.replace(config, num_envs=k, workers=0, device="cpu", batch_size=config.chunk_len,
                              eval_every=0, stop_at_return=None)
    worker = RecurrentPPO(config=cfg)
    worker.env_offset, worker.rows = index * k, (index * k, config.num_envs)
    return worker
