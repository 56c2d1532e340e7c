"""Recurrent behaviour cloning: maximum likelihood of a dataset's actions by truncated BPTT over chunks.

Reading order: config -> the delay shift -> the chunk streamer -> the user-facing class.

How memory is handled, in one place:
- Training pairs come from whole episodes (:mod:`recurl.data.trajectories`). Each of the ``batch_size``
  rows of a batch streams its own queue of episodes back to back. A row's stream is cut into chunks of
  ``chunk_len`` steps; chunk ``k + 1`` of a row starts from the row's state after chunk ``k``, detached
  (truncated BPTT: gradients stay within a chunk, memory flows across chunks).
- When a row's episode ends inside a chunk, the row's next episode starts right there, in the same
  chunk, with ``is_first`` set on its first step; the core zeroes the state at that step (inside the
  core, nowhere else), so nothing leaks between episodes in either direction. No padding is needed,
  except at the end of an epoch, where a row that has run out of episodes is padded and masked out.
- Episodes are dealt to rows after a shuffle, each to the row with the fewest steps so far, so the rows
  end within one episode of each other and padding stays small.

Action delay ``D`` (as in Melee imitation): the model sees observation ``t`` and predicts the action
taken ``D`` steps later, ``a[t + D]``; at run time the action computed from observation ``t`` is executed
at step ``t + D`` (:class:`recurl.collector.ActionQueue`, run by evaluation, :class:`recurl.Agent` and
the ONNX runtime; the first ``D`` steps of an episode execute a default action).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from recurl.algos.base import Algorithm, Callback, as_callbacks, check_budget
from recurl.config import AT_LEAST_0, AT_LEAST_1, DEVICE, POSITIVE, Range, Ranges, check_config
from recurl.data.trajectories import Episode, ObsArray, TrajectoryDataset, dataset_env, load_dataset
from recurl.errors import RecurlError
from recurl.logger import RunLogger
from recurl.nn.encoders import Obs
from recurl.nn.policy import Dist, PolicyConfig, RecurrentPolicy
from recurl.obs import ObsConverter


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BCConfig:
    """Behaviour-cloning settings. Every field is a ``recurl train --algo bc`` flag (``--chunk-len 16``)."""

    dataset: str = ""
    """Minari dataset directory to clone (written by `recurl record` or `recurl play --record`)."""
    env: str = ""
    """Env to evaluate on; empty: the env named in the dataset's metadata."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Env constructor arguments (default: the dataset's when env is empty)."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """Network shape (use the same one for `recurl train --algo ppo --init-from` afterwards)."""
    chunk_len: int = 32
    """Truncated-BPTT chunk length: gradients flow back at most this many steps; the state flows on."""
    batch_size: int = 16
    """Rows per batch: episode streams trained side by side (each carries its own state)."""
    action_delay: int = 0
    """D: observation t is trained to predict action t + D, which runs at step t + D (Melee's delay)."""
    val_fraction: float = 0.1
    """Fraction of the episodes held out (split by episode) for the early-stopping loss."""
    max_epochs: int = 100
    """Passes over the training episodes."""
    max_steps: int = 0
    """Stop after this many gradient steps (0: no limit)."""
    patience: int = 10
    """Stop when the held-out loss has not improved for this many epochs; the best weights are kept."""
    learning_rate: float = 1e-3
    """Adam step size."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW): a regulariser for small datasets, where the clone overfits."""
    max_grad_norm: float = 1.0
    """Gradient norm clip."""
    seed: int = 0
    """Seed for the split, the shuffles and the network init."""
    eval_episodes: int = 100
    """Episodes of the final deterministic evaluation in the env, written to summary.json."""
    checkpoint_every: int = 5
    """Save a resumable checkpoint every this many epochs."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda or cuda:N."""
    threads: int = 0
    """Torch CPU threads (0: one)."""

    RANGES: ClassVar[Ranges] = {
        "chunk_len": AT_LEAST_1, "batch_size": AT_LEAST_1, "action_delay": AT_LEAST_0,
        "val_fraction": Range(0, 1, hi_open=True), "max_epochs": AT_LEAST_1, "max_steps": AT_LEAST_0,
        "patience": AT_LEAST_1, "learning_rate": POSITIVE, "weight_decay": AT_LEAST_0, "max_grad_norm": POSITIVE,
        "seed": AT_LEAST_0, "eval_episodes": AT_LEAST_1, "checkpoint_every": AT_LEAST_1, "device": DEVICE,
        "threads": AT_LEAST_0,
    }

    def __post_init__(self) -> None:
        check_config(self)
        if self.dataset and not self.env:
            # Resolved here, once, so the run name, config.json and evaluation all see the real env.
            env, kwargs = dataset_env(self.dataset)
            if env is None:
                raise RecurlError(f"the dataset {self.dataset} names no env: pass --env ID")
            object.__setattr__(self, "env", env)
            object.__setattr__(self, "env_kwargs", {**kwargs, **self.env_kwargs})


# ---------------------------------------------------------------------------------------------------
# The delay shift
# ---------------------------------------------------------------------------------------------------
def _leaves(obs: ObsArray) -> dict[str | None, np.ndarray]:
    return obs if isinstance(obs, dict) else {None: obs}  # type: ignore[return-value]


def _unleaves(leaves: dict[str | None, Any]) -> Any:
    return leaves[None] if list(leaves) == [None] else leaves


def delayed_pairs(ep: Episode, delay: int) -> tuple[ObsArray, np.ndarray]:
    """Training inputs and targets of one episode of ``T`` steps under action delay ``D``.

    Returns ``(obs[T - D, ...], targets[T - D, ...])`` with ``targets[t] = actions[t + D]``: observation
    ``t`` is paired with the action taken ``D`` steps later. The final observation (after the last
    action) and the last ``D`` observations have no target and are dropped; so are the first ``D``
    actions, which were chosen before the episode's first observation could have been seen.
    """
    n = max(len(ep) - delay, 0)
    obs = _unleaves({k: v[:n] for k, v in _leaves(ep.observations).items()})
    return obs, ep.actions[delay : delay + n]


# ---------------------------------------------------------------------------------------------------
# The chunk streamer
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stream:
    """``R`` rows of back-to-back episodes, time-major: ``obs[N, R, ...]``, ``actions[N, R, ...]``,
    ``is_first[N, R]`` (true at each episode's first step) and ``mask[N, R]`` (false on end padding)."""

    obs: Obs
    actions: torch.Tensor
    is_first: torch.Tensor
    mask: torch.Tensor

    @property
    def length(self) -> int:
        return self.is_first.shape[0]

    @property
    def rows(self) -> int:
        return self.is_first.shape[1]

    def window(self, t0: int, t1: int) -> Stream:
        """Steps ``t0 .. t1 - 1`` of every row."""
        obs = {k: v[t0:t1] for k, v in self.obs.items()} if isinstance(self.obs, dict) else self.obs[t0:t1]
        return Stream(obs, self.actions[t0:t1], self.is_first[t0:t1], self.mask[t0:t1])


class EpisodeStream:
    """``R`` rows of back-to-back episodes, materialised one window at a time (bounded memory).

    Built by :func:`build_stream`. :meth:`window` copies steps ``t0 .. t1 - 1`` of every row out of the
    episodes that overlap them, so a dataset that loads its episodes lazily (a sequence whose items are
    read from disk, e.g. :class:`recurl.melee.dataset.PerspectivePairs`) is never held in memory whole.
    """

    def __init__(self, pairs: PairSequence, row_eps: list[list[int]], length: int, conv: ObsConverter,
                 action_dtype: torch.dtype, device: torch.device | str) -> None:
        self.pairs, self.length, self.conv = pairs, length, conv
        self.action_dtype, self.device = action_dtype, torch.device(device)
        lengths = pair_lengths(pairs)
        # per row: the episodes in order and the step at which each starts
        self.row_eps = row_eps
        self.row_starts = [np.cumsum([0] + [lengths[i] for i in eps]) for eps in row_eps]
        obs0, act0 = pairs[row_eps[0][0]]  # the dtypes and shapes of a step
        self._obs_like = {k: (v.shape[1:], v.dtype) for k, v in _leaves(obs0).items()}
        self._act_like = (act0.shape[1:], act0.dtype)

    @property
    def rows(self) -> int:
        return len(self.row_eps)

    def window(self, t0: int, t1: int) -> Stream:
        """Steps ``t0 .. t1 - 1`` of every row (padding: mask false, ``is_first`` true on the first padded step)."""
        t1 = min(t1, self.length)
        n, rows = t1 - t0, self.rows
        obs = {k: np.zeros((n, rows, *shape), dtype) for k, (shape, dtype) in self._obs_like.items()}
        actions = np.zeros((n, rows, *self._act_like[0]), self._act_like[1])
        is_first, mask = np.zeros((n, rows), bool), np.zeros((n, rows), bool)
        for r, (eps, starts) in enumerate(zip(self.row_eps, self.row_starts, strict=True)):
            j = max(int(np.searchsorted(starts, t0, side="right")) - 1, 0)
            while j < len(eps) and starts[j] < t1:
                ep_obs, ep_act = self.pairs[eps[j]]
                a, b = max(starts[j], t0), min(starts[j + 1], t1)  # the episode's part inside the window
                src = slice(a - starts[j], b - starts[j])
                for key, v in _leaves(ep_obs).items():
                    obs[key][a - t0 : b - t0, r] = v[src]
                actions[a - t0 : b - t0, r] = ep_act[src]
                mask[a - t0 : b - t0, r] = True
                if starts[j] >= t0:
                    is_first[starts[j] - t0, r] = True
                j += 1
            end = int(starts[-1])
            if t0 <= end < t1:  # padding starts here: it never continues an episode
                is_first[end - t0, r] = True
        return Stream(self.conv.to_torch(_unleaves(obs), self.device),
                      torch.as_tensor(actions, dtype=self.action_dtype, device=self.device),
                      torch.as_tensor(is_first, device=self.device), torch.as_tensor(mask, device=self.device))

    def full(self) -> Stream:
        """The whole stream materialised (small datasets, tests)."""
        return self.window(0, self.length)


PairSequence = Sequence[tuple[ObsArray, np.ndarray]]
"""Training pairs ``(obs[T, ...], targets[T, ...])`` of episodes; a lazy sequence may give ``lengths``."""


def pair_lengths(pairs: PairSequence) -> list[int]:
    """Steps of every pair, without reading the episodes when the sequence knows them (``pairs.lengths``)."""
    known = getattr(pairs, "lengths", None)
    return list(known) if known is not None else [len(a) for _, a in pairs]


def build_stream(pairs: PairSequence, order: list[int] | np.ndarray, rows: int, chunk_len: int, conv: ObsConverter,
                 action_dtype: torch.dtype, device: torch.device | str = "cpu") -> EpisodeStream:
    """Deal the episodes ``pairs[i]`` for ``i`` in ``order`` to ``rows`` rows and lay them out end to end.

    Each episode goes, in turn, to the row with the fewest steps so far. The length ``N`` is the longest
    row rounded up to a multiple of ``chunk_len``; shorter rows are padded (mask false, ``is_first``
    true on the first padded step so the padding never continues a real episode's state). Nothing is
    copied until a window is asked for (:class:`EpisodeStream`).
    """
    rows = max(1, min(rows, len(order)))
    lengths = pair_lengths(pairs)
    heap = [(0, r) for r in range(rows)]
    row_eps: list[list[int]] = [[] for _ in range(rows)]
    for i in order:
        load, r = heapq.heappop(heap)
        row_eps[r].append(int(i))
        heapq.heappush(heap, (load + lengths[i], r))
    n = max(math.ceil(max(load for load, _ in heap) / chunk_len) * chunk_len, chunk_len)
    return EpisodeStream(pairs, row_eps, n, conv, action_dtype, device)


def stream_unroll(policy: RecurrentPolicy, stream: EpisodeStream | Stream,
                  chunk_len: int) -> Iterator[tuple[Stream, Dist]]:
    """Unroll ``policy`` over ``stream`` chunk by chunk, carrying each row's state (detached) between chunks.

    Yields ``(chunk, dist)`` with ``dist`` over ``[chunk_len, R]``. A caller may take an optimizer step
    between yields: the next chunk starts from the state the previous parameters produced (truncated
    BPTT), and the detach keeps gradients inside the chunk.
    """
    state = policy.initial_state(stream.rows)
    for t0 in range(0, stream.length, chunk_len):
        chunk = stream.window(t0, t0 + chunk_len)
        # a dataset whose observations carry an action_mask (PettingZoo's convention) trains masked
        mask = chunk.obs.get("action_mask") if isinstance(chunk.obs, dict) else None
        dist, _, state = policy.unroll(chunk.obs, state, chunk.is_first, mask=None if mask is None else mask > 0)
        state = state.map(torch.Tensor.detach)
        yield chunk, dist


# ---------------------------------------------------------------------------------------------------
# The algorithm
# ---------------------------------------------------------------------------------------------------
class BehaviourCloning(Algorithm):
    """Recurrent behaviour cloning with the same run-directory, loading and evaluation API as PPO.

    Args:
        env: the env to evaluate in (default: the dataset's), replacing the config's ``env``.
        config: a :class:`BCConfig` (``dataset`` is required); keyword ``overrides`` replace its fields.

    ``learn(total_steps)`` counts gradient steps, not env steps (cloning takes none): it trains for up to
    ``max_epochs`` more epochs, ``total_steps`` more gradient steps (default: ``max_steps``, 0 = no limit)
    or until the held-out loss stops improving for ``patience`` epochs, and keeps the best weights.
    """

    algo = "bc"
    config_class = BCConfig
    ortho_init_default = False  # PPO's 0.01 policy head keeps a clone from learning memory (docs/imitation.md)

    def _prepare(self) -> None:
        if not self.config.dataset:
            raise RecurlError("behaviour cloning needs --dataset PATH (a Minari dataset directory)")
        self._data: TrajectoryDataset | None = load_dataset(self.config.dataset)

    def _check_spaces(self) -> None:
        data = self._data
        if (data.observation_space, data.action_space) != (self.observation_space, self.action_space):
            raise RecurlError(f"the dataset's spaces ({data.observation_space}, {data.action_space}) "
                              f"differ from {self.config.env}'s ({self.observation_space}, {self.action_space})")

    def _loaded(self) -> None:
        self._data = None  # the dataset is only needed to train

    def _build(self, obs_space: gym.Space, action_space: gym.Space) -> None:
        self.policy = RecurrentPolicy(obs_space, action_space, self.config.policy).to(self.device)
        self.obs_conv = ObsConverter(obs_space)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=self.config.learning_rate,
                                           weight_decay=self.config.weight_decay)
        self.num_timesteps = 0  # behaviour cloning takes no env steps
        self.epoch = 0
        self.n_updates = 0
        self.best_val = math.inf
        self.bad_epochs = 0
        self._best: dict[str, torch.Tensor] | None = None
        self._step_limit = 0  # n_updates at which the current learn call stops (0: none)

    # -- data --------------------------------------------------------------------------------------------
    def _split(self) -> tuple[PairSequence, PairSequence]:
        """Delay-shifted (obs, target) pairs of the training and held-out episodes (split by episode)."""
        cfg = self.config
        if self._data is None:
            self._data = load_dataset(cfg.dataset)
        pairs = [delayed_pairs(ep, cfg.action_delay) for ep in self._data.episodes]
        pairs = [p for p in pairs if len(p[1])]
        if not pairs:
            raise RecurlError(f"no episode of {cfg.dataset} is longer than action_delay={cfg.action_delay}")
        perm = np.random.default_rng(cfg.seed).permutation(len(pairs))
        n_val = min(max(round(cfg.val_fraction * len(pairs)), 1), len(pairs) - 1) if cfg.val_fraction > 0 else 0
        return [pairs[i] for i in perm[n_val:]], [pairs[i] for i in perm[:n_val]]

    def _epoch_pairs(self, pairs: PairSequence) -> PairSequence:
        """The training pairs of the coming epoch (a hook for data augmentation; ``self.epoch`` is its index)."""
        return pairs

    def _stream(self, pairs: PairSequence, order: list[int] | np.ndarray) -> EpisodeStream:
        box = isinstance(self.action_space, gym.spaces.Box)
        return build_stream(pairs, order, self.config.batch_size, self.config.chunk_len, self.obs_conv,
                            torch.float32 if box else torch.long, self.device)

    # -- one pass ----------------------------------------------------------------------------------------
    def _pass(self, stream: EpisodeStream, train: bool) -> dict[str, float]:
        """Mean negative log-likelihood (and accuracy for discrete actions) over ``stream``'s real steps."""
        cfg = self.config
        nll_sum, hits, count = 0.0, 0.0, 0.0
        discrete = not isinstance(self.action_space, gym.spaces.Box)
        with torch.set_grad_enabled(train):
            for chunk, dist in stream_unroll(self.policy, stream, cfg.chunk_len):
                mask = chunk.mask.float()
                n = float(mask.sum())
                if n == 0:
                    continue
                nll = -(dist.log_prob(chunk.actions) * mask).sum() / n
                if train:
                    self.optimizer.zero_grad(set_to_none=True)
                    nll.backward()
                    nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.n_updates += 1
                nll_sum += float(nll.detach()) * n
                count += n
                if discrete:
                    same = (dist.mode() == chunk.actions).reshape(*mask.shape, -1).all(-1)
                    hits += float((same.float() * mask).sum())
                if train and 0 < self._step_limit <= self.n_updates:
                    break
        out = {"loss": nll_sum / max(count, 1.0), "samples": count}
        if discrete:
            out["accuracy"] = hits / max(count, 1.0)
        return out

    # -- the training loop ---------------------------------------------------------------------------------
    def learn(self, total_steps: int | None = None, callback: Callback | list[Callback] | None = None,
              reset_num_timesteps: bool = True, progress_bar: bool = True,
              run_dir: str | Path | None = None) -> BehaviourCloning:
        """Train for up to ``max_epochs`` more epochs or ``total_steps`` more gradient steps (default: the
        config's ``max_steps``, 0 = no limit), stopping early on the held-out loss; keep the best weights.

        A second call continues from the current weights and optimizer (``reset_num_timesteps`` is
        accepted for the common API; cloning takes no env steps). ``callback(model)`` runs after every
        epoch; returning ``False`` stops.
        """
        steps = self.config.max_steps if total_steps is None else check_budget(total_steps)
        self._span = (self.epoch, self.epoch + self.config.max_epochs)
        self._step_limit = self.n_updates + int(steps) if steps else 0
        self.bad_epochs = 0
        self._train(run_dir, progress_bar, as_callbacks(callback), fresh=True)
        return self

    def _budget(self) -> int:
        return int(self.config.max_epochs)

    def _pretrain(self, run_dir: str | Path | None, progress_bar: bool) -> bool:
        """Load already trained weights before the first epoch (a hook: plain cloning has none); returns
        whether it did. Pretrained weights keep their observation statistics, and their held-out loss is
        the one to beat: fine-tuning replaces them only where it helps."""
        return False

    def _train(self, run_dir: str | Path | None, progress_bar: bool, callbacks: list[Callback], fresh: bool) -> None:
        cfg = self.config
        pretrained = self.epoch == 0 and self._pretrain(run_dir, progress_bar)
        train, val = self._split()
        n_train = sum(pair_lengths(train))
        if self.epoch == 0 and not pretrained:  # observation statistics come from the training episodes, once
            stream = self._stream(train, np.arange(len(train)))
            for t0 in range(0, stream.length, cfg.chunk_len):
                window = stream.window(t0, t0 + cfg.chunk_len)
                self.policy.update_normalizer(window.obs, window.mask)
        val_stream = self._stream(val, np.arange(len(val))) if val else None
        if pretrained and val_stream is not None:  # fine-tuning must beat the weights it starts from
            self.policy.eval()
            self.best_val = self._pass(val_stream, train=False)["loss"]
            self.policy.train()
            self._best = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        first, last = self._span
        logger = RunLogger(run_dir, last * n_train, progress_bar)
        logger.start(self.epoch * n_train)
        try:
            while self.epoch < last and self.bad_epochs < cfg.patience and not 0 < self._step_limit <= self.n_updates:
                t0 = time.perf_counter()
                order = np.random.default_rng([cfg.seed, self.epoch]).permutation(len(train))
                tr = self._pass(self._stream(self._epoch_pairs(train), order), train=True)
                self.epoch += 1
                logs = {"train/loss": tr["loss"], "train/epoch": self.epoch, "train/n_updates": self.n_updates}
                if "accuracy" in tr:
                    logs["train/accuracy"] = tr["accuracy"]
                if val_stream is not None:
                    self.policy.eval()
                    va = self._pass(val_stream, train=False)
                    self.policy.train()
                    logs.update({f"val/{k}": v for k, v in va.items() if k != "samples"})
                    if va["loss"] < self.best_val:
                        self.best_val, self.bad_epochs = va["loss"], 0
                        self._best = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
                    else:
                        self.bad_epochs += 1
                logs["time/fps"] = tr["samples"] / (time.perf_counter() - t0)
                logger.log(self.epoch * n_train, logs)
                if run_dir is not None and self.epoch % cfg.checkpoint_every == 0:
                    self.checkpoint(run_dir)
                # the callbacks see every epoch, the last one (cut by the step budget) included
                if any(cb(self) is False for cb in callbacks) or 0 < self._step_limit <= self.n_updates:
                    break
        finally:
            logger.close()
        if self._best is not None:
            self.policy.load_state_dict(self._best)
        if run_dir is not None:
            self.checkpoint(run_dir)

    # -- persistence -------------------------------------------------------------------------------------
    def _algo_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "best_val": self.best_val, "bad_epochs": self.bad_epochs, "best": self._best,
                "step_limit": self._step_limit}

    def _restore_algo(self, state: dict[str, Any]) -> None:
        self.epoch, self._step_limit = int(state["epoch"]), int(state["step_limit"])
        self.best_val, self.bad_epochs = float(state["best_val"]), int(state["bad_epochs"])
        self._best = state["best"]
