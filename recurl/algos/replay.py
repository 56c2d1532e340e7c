"""What the algorithms that learn from sequence replay share (R2D2, recurrent SAC), written once.

Actors step ``num_envs`` envs through the :class:`~recurl.collector.Collector`; every valid transition,
with the actor's recurrent state before it, goes to a :class:`~recurl.data.sequence_replay.SequenceWriter`
that cuts windows into a :class:`~recurl.data.sequence_replay.SequenceReplay`; after ``learning_starts``
steps of a learn call the learner runs ``gradient_steps`` updates every ``train_every`` env steps. A
subclass supplies how the actors act (:meth:`ReplayAlgorithm._explore`), its replay
(:meth:`ReplayAlgorithm._new_replay`), one learner update (:meth:`ReplayAlgorithm._update`) and the module
its target network copies (:meth:`ReplayAlgorithm._target_source`).

The replay lives as long as the model object (a second learn call keeps it); a resumed run refills it,
since the replay is not saved.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from recurl.algos.base import Algorithm, Callback
from recurl.collector import Collector
from recurl.data.sequence_replay import SequenceReplay, SequenceWriter
from recurl.logger import RunLogger
from recurl.nn.encoders import Obs
from recurl.nn.recurrent import State


class ReplayAlgorithm(Algorithm):
    """An :class:`~recurl.algos.base.Algorithm` whose learner samples stored-state sequence replay."""

    #: ``train/*`` scalars of :meth:`_update`, logged as NaN until the first update (so the CSV has them)
    train_log_keys: ClassVar[tuple[str, ...]]
    target: nn.Module
    collector: Collector | None = None
    stats_history: dict[str, Any] | None = None

    # -- hooks ---------------------------------------------------------------------------------------------
    def _explore(self, obs: Obs, state: State, is_first: torch.Tensor, mask: torch.Tensor | None,
                 warm: bool) -> tuple[torch.Tensor, State, dict[str, float]]:
        """The actors' actions ``[N, ...]`` for the current observations, their new state, and scalars to log.
        ``warm`` is true during the first ``learning_starts`` steps, before any update."""
        raise NotImplementedError

    def _new_replay(self) -> SequenceReplay:
        raise NotImplementedError

    def _update(self, replay: SequenceReplay) -> dict[str, float]:
        raise NotImplementedError

    def _target_source(self) -> nn.Module:
        """The online module whose copy is :attr:`target`."""
        raise NotImplementedError

    # -- the loop --------------------------------------------------------------------------------------------
    def _train(self, run_dir: str | Path | None, progress_bar: bool, callbacks: list[Callback], fresh: bool) -> None:
        """Act, store sequences, learn, until the span's end (in steps of ``num_envs`` env steps)."""
        cfg = self.config
        N = cfg.num_envs
        start, total = self._span
        if fresh or self.collector is None:
            self._start_actors()
        col, replay, writer = self.collector, self.replay, self.writer
        logger = RunLogger(run_dir, total, progress_bar)
        logger.start(self.num_timesteps)
        log_every = max(N, (total - start) // 200)
        since_train, next_log = 0, self.num_timesteps + log_every
        train_logs = dict.fromkeys(self.train_log_keys, float("nan"))
        t_log, steps_log = time.perf_counter(), self.num_timesteps
        try:
            while self.num_timesteps < total:
                obs, state, is_first, mask = col.obs, col.state, col.is_first, col.action_mask
                warm = self.num_timesteps - self._actor_start < cfg.learning_starts
                with torch.inference_mode():
                    action, new_state, act_logs = self._explore(obs, state, is_first, mask, warm)
                step = col.step(action, new_state)
                writer.add(np.flatnonzero(step.valid), to_cpu(obs), tuple(s.cpu() for s in state), action.cpu(),
                           step.reward, step.terminated, step.truncated, is_first.cpu(), to_cpu(col.obs),
                           mask, col.action_mask)
                self.num_timesteps += N
                since_train += N
                if self.num_timesteps - self._actor_start >= cfg.learning_starts and len(replay) >= cfg.batch_size:
                    while since_train >= cfg.train_every:
                        since_train -= cfg.train_every
                        for _ in range(cfg.gradient_steps):
                            train_logs = self._update(replay)
                            if run_dir is not None and self.n_updates % cfg.checkpoint_every == 0:
                                self.checkpoint(run_dir)
                else:
                    since_train = 0
                if self.num_timesteps >= next_log or self.num_timesteps >= total:
                    now = time.perf_counter()
                    logger.log(self.num_timesteps, {
                        **col.stats.summary(), **train_logs, **act_logs, "train/n_updates": self.n_updates,
                        "replay/sequences": len(replay),
                        "time/fps": (self.num_timesteps - steps_log) / max(now - t_log, 1e-9)})
                    t_log, steps_log, next_log = now, self.num_timesteps, next_log + log_every
                if any(cb(self) is False for cb in callbacks):
                    break
        finally:
            logger.close()
        if run_dir is not None:
            self.checkpoint(run_dir)

    def _start_actors(self) -> None:
        """Fresh envs, zero states, an empty replay (``learning_starts`` counts from here)."""
        cfg = self.config
        self.replay = self._new_replay()
        self.writer = SequenceWriter(self.replay, cfg.num_envs, self.obs_conv, cfg.overlap)
        self._fresh_collector(self.policy.initial_state(cfg.num_envs, self.device))
        self._actor_start = self.num_timesteps

    def _state_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(layers, H)`` of every tensor of the state the replay stores."""
        return tuple((s.shape[0], s.shape[2]) for s in self.policy.initial_state(1, "cpu"))

    # -- persistence -----------------------------------------------------------------------------------------
    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super()._load_tensors(tensors)
        self.target.load_state_dict(self._target_source().state_dict())

    def _algo_state(self) -> dict[str, Any]:
        return {"target": self.target.state_dict(),
                "episodes": self.collector.stats.state() if self.collector else self.stats_history}

    def _restore_algo(self, state: dict[str, Any]) -> None:
        """The target network and the episode window continue; the replay is refilled before updates."""
        self.target.load_state_dict(state["target"])
        self.stats_history = state["episodes"]


def time_slice(obs: Obs, start: int, stop: int | None) -> Obs:
    """``obs[start:stop]`` along time for plain and Dict observations."""
    return {k: v[start:stop] for k, v in obs.items()} if isinstance(obs, dict) else obs[start:stop]


def to_cpu(obs: Obs) -> Obs:
    return {k: v.cpu() for k, v in obs.items()} if isinstance(obs, dict) else obs.cpu()
