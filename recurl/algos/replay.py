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

Distributed actors (``--workers N``, Ape-X's layout; :mod:`recurl.algos.distributed`): each worker is a
CPU copy of the algorithm with ``num_envs / N`` of the envs (and their slice of the Ape-X epsilons). It
runs the same acting step (:meth:`ReplayAlgorithm._act_step`) for ``sync_every`` steps with the weights
it was given, cuts windows with the same writer, computes their initial priorities with its copy of the
network (:meth:`ReplayAlgorithm._priorities`) and returns them; the learner puts them in its replay,
hands the worker the newest weights for its next ``sync_every`` steps, and updates at its own pace in
between, holding the configured replay ratio (``gradient_steps / train_every`` updates per env step).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from recurl.algos.base import Algorithm, Callback
from recurl.algos.distributed import InlinePool, WorkerPool, check_ray, start_pool
from recurl.collector import Collector, EpisodeStats, Step
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
    pool: WorkerPool | InlinePool | None = None  # actor workers (--workers)
    remote_stats: EpisodeStats | None = None  # the workers' episodes, as the learner sees them
    rows: tuple[int, int] | None = None  # an actor worker's (first env, all envs): its slice of the epsilons

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

    def _priorities(self, replay: SequenceReplay, idx: np.ndarray) -> np.ndarray | None:
        """Initial priorities ``[len(idx)]`` of new windows, computed by an actor worker; ``None``: the
        replay's highest priority so far (the single process's rule)."""
        return None

    # -- the loop --------------------------------------------------------------------------------------------
    def _train(self, run_dir: str | Path | None, progress_bar: bool, callbacks: list[Callback], fresh: bool) -> None:
        """Act, store sequences, learn, until the span's end (in steps of ``num_envs`` env steps)."""
        cfg = self.config
        N = cfg.num_envs
        start, total = self._span
        if fresh or (self.collector is None and self.pool is None):
            self._start_actors()
        if self.pool is not None:
            return self._train_remote(run_dir, progress_bar, callbacks)
        col, replay = self.collector, self.replay
        logger = RunLogger(run_dir, total, progress_bar)
        logger.start(self.num_timesteps)
        log_every = max(N, (total - start) // 200)
        since_train, next_log = 0, self.num_timesteps + log_every
        train_logs = dict.fromkeys(self.train_log_keys, float("nan"))
        t_log, steps_log = time.perf_counter(), self.num_timesteps
        try:
            while self.num_timesteps < total:
                _, act_logs = self._act_step(self.num_timesteps - self._actor_start < cfg.learning_starts)
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

    def _act_step(self, warm: bool) -> tuple[Step, dict[str, float]]:
        """One step of every env: act, step, stage the transitions (with the state before them) into windows."""
        col = self.collector
        obs, state, is_first, mask = col.obs, col.state, col.is_first, col.action_mask
        with torch.inference_mode():
            action, new_state, act_logs = self._explore(obs, state, is_first, mask, warm)
        step = col.step(action, new_state)
        self.writer.add(np.flatnonzero(step.valid), to_cpu(obs), tuple(s.cpu() for s in state), action.cpu(),
                        step.reward, step.terminated, step.truncated, is_first.cpu(), to_cpu(col.obs),
                        mask, col.action_mask)
        return step, act_logs

    def _start_actors(self) -> None:
        """Fresh envs, zero states, an empty replay (``learning_starts`` counts from here)."""
        cfg = self.config
        if getattr(cfg, "workers", 0):  # the envs live in the workers; they restart their episodes
            if self.pool is None:
                check_ray(cfg.ray_address)
                self.pool = start_pool(actor_worker, (type(self), cfg), cfg.workers, cfg.ray_address)
                self.remote_stats = EpisodeStats()
                if self.stats_history:
                    self.remote_stats.load(self.stats_history)
            self.replay = self._new_replay()
            self._actor_start = self.num_timesteps
            self._workers_fresh = True
            return
        self.replay = self._new_replay()
        self.writer = SequenceWriter(self.replay, cfg.num_envs, self.obs_conv, cfg.overlap)
        self._fresh_collector(self.policy.initial_state(cfg.num_envs, self.device))
        self._actor_start = self.num_timesteps

    # -- distributed actors ------------------------------------------------------------------------------------
    def _train_remote(self, run_dir: str | Path | None, progress_bar: bool, callbacks: list[Callback]) -> None:
        """The learner of a ``--workers`` run: store what the actors send, send them fresh weights, and make
        ``gradient_steps / train_every`` updates per env step received, until the span's end."""
        cfg, pool, replay = self.config, self.pool, self.replay
        start, total = self._span
        logger = RunLogger(run_dir, total, progress_bar)
        logger.start(self.num_timesteps)
        log_every = max(cfg.num_envs * cfg.sync_every, (total - start) // 200)
        next_log = self.num_timesteps + log_every
        train_logs = dict.fromkeys(self.train_log_keys, float("nan"))
        worker_logs: dict[int, dict[str, float]] = {}  # each worker's latest acting scalars
        t_log, steps_log, updates_log = time.perf_counter(), self.num_timesteps, self.n_updates
        due = 0.0  # updates owed to the replay ratio
        # Updates owed by one round of calls: with more owed, the learner stops taking the actors' results
        # (they wait, holding them) until it has caught up, so the replay ratio holds whichever side is faster.
        backlog = cfg.num_envs * cfg.sync_every * cfg.gradient_steps / cfg.train_every

        def send(w: int, fresh: bool) -> Any:
            warm = self.num_timesteps - self._actor_start < cfg.learning_starts
            return pool.submit(w, "act", self._weights_ref(), cfg.sync_every, warm, fresh, self.num_timesteps)

        handles = {w: send(w, self._workers_fresh) for w in range(len(pool))}
        self._workers_fresh = False
        try:
            while self.num_timesteps < total:
                learning = (self.num_timesteps - self._actor_start >= cfg.learning_starts
                            and len(replay) >= cfg.batch_size)
                ready = [] if learning and due >= backlog else \
                    pool.wait(list(handles.values()), 0.0 if learning and due >= 1 else 1.0)
                for w, result, retry in ready:
                    if retry is not None:  # the worker died (or hung) and was restarted: same call again
                        handles[w] = retry
                        continue
                    self._store_windows(result)
                    worker_logs[w] = result["logs"]
                    self.num_timesteps += result["steps"]
                    if learning:
                        due += result["steps"] * cfg.gradient_steps / cfg.train_every
                    handles[w] = send(w, False)
                for _ in range(min(int(due), 4) if learning else 0):  # a few at a time: actors wait on replies
                    train_logs = self._learner_step(run_dir)
                    due -= 1
                if self.num_timesteps >= next_log or self.num_timesteps >= total:
                    now = time.perf_counter()
                    dt = max(now - t_log, 1e-9)
                    act_logs = {k: float(np.mean([lg[k] for lg in worker_logs.values()]))
                                for k in next(iter(worker_logs.values()), {})}  # equal shares of the envs
                    logger.log(self.num_timesteps, {
                        **self.remote_stats.summary(), **train_logs, **act_logs, "train/n_updates": self.n_updates,
                        "replay/sequences": len(replay), "time/fps": (self.num_timesteps - steps_log) / dt,
                        "time/updates_per_s": (self.n_updates - updates_log) / dt,
                        "time/worker_restarts": pool.restarts})
                    t_log, steps_log, updates_log = now, self.num_timesteps, self.n_updates
                    next_log += log_every
                if any(cb(self) is False for cb in callbacks):
                    break
            else:
                while due >= 1 and len(replay) >= cfg.batch_size:  # the updates the last steps earned
                    self._learner_step(run_dir)
                    due -= 1
        finally:
            logger.close()
        if run_dir is not None:
            self.checkpoint(run_dir)

    def _learner_step(self, run_dir: str | Path | None) -> dict[str, float]:
        logs = self._update(self.replay)
        if run_dir is not None and self.n_updates % self.config.checkpoint_every == 0:
            self.checkpoint(run_dir)
        return logs

    def _weights_ref(self) -> Any:
        """The acting network's weights in the object store, put once per learner update."""
        if getattr(self, "_weights", (None, -1))[1] != self.n_updates:
            state = {k: v.detach().cpu() for k, v in self.policy.state_dict().items()}
            self._weights = (self.pool.put(state), self.n_updates)
        return self._weights[0]

    def _store_windows(self, result: dict[str, Any]) -> None:
        """Put an actor's windows in the replay with their initial priorities, and its finished episodes."""
        w = result["windows"]
        for j in range(len(w["actions"])):
            obs = {k: v[j] for k, v in w["obs"].items()} if isinstance(w["obs"], dict) else w["obs"][j]
            slot = self.replay.add(obs, w["actions"][j], w["rewards"][j], w["terminated"][j], w["valid"][j],
                                   w["is_first"][j], tuple(s[j] for s in w["states"]),
                                   None if w["masks"] is None else w["masks"][j])
            if w["priorities"] is not None:
                self.replay.update_priorities(np.array([slot]), w["priorities"][j : j + 1])
        self.remote_stats.add(*result["episodes"])

    def act(self, weights: dict[str, torch.Tensor], n_steps: int, warm: bool, fresh: bool,
            num_timesteps: int) -> dict[str, Any]:
        """An actor worker's side of :meth:`_train_remote`: ``n_steps`` steps of its envs with the learner's
        ``weights`` (fresh episodes when ``fresh`` or after a restart of this worker); returns the windows
        completed meanwhile (tensors ``[n, ...]`` with their initial priorities), the env steps taken, the
        episodes finished ``(returns, lengths, successes)`` and the acting scalars."""
        self.policy.load_state_dict(weights)
        self.target.load_state_dict(self._target_source().state_dict())  # Ape-X actors: one network
        self.num_timesteps = num_timesteps  # a time-dependent epsilon follows the learner's clock
        if fresh or self.collector is None:
            self._start_actors()
        out = self.replay
        out.size = out.next = 0  # the local replay is an outbox, emptied on every call
        stats = self.collector.stats
        before, act_logs = stats.episodes, {}
        for _ in range(n_steps):
            _, act_logs = self._act_step(warm)
        n, idx = min(stats.episodes - before, stats.window), np.arange(out.size)
        last = [x[len(x) - min(n, len(x)) :] for x in (stats.returns, stats.lengths, stats.successes)]
        t = torch.as_tensor(idx)
        with torch.no_grad():
            priorities = self._priorities(out, idx) if out.size else None
        windows = {
            "obs": {k: v[t] for k, v in out.obs.items()} if isinstance(out.obs, dict) else out.obs[t],
            "actions": out.actions[t], "rewards": out.rewards[t], "terminated": out.terminated[t],
            "valid": out.valid[t], "is_first": out.is_first[t], "states": tuple(s[t] for s in out.states),
            "masks": None if out.masks is None else out.masks[t], "priorities": priorities,
        }
        return {"windows": windows, "steps": n_steps * self.config.num_envs, "logs": act_logs,
                "episodes": (np.asarray(last[0]), np.asarray(last[1], np.int64), last[2])}

    def shutdown_workers(self) -> None:
        """Stop the actor workers (a later ``learn`` starts new ones)."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def _state_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(layers, H)`` of every tensor of the state the replay stores."""
        return tuple((s.shape[0], s.shape[2]) for s in self.policy.initial_state(1, "cpu"))

    # -- persistence -----------------------------------------------------------------------------------------
    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super()._load_tensors(tensors)
        self.target.load_state_dict(self._target_source().state_dict())

    def _algo_state(self) -> dict[str, Any]:
        stats = self.remote_stats if self.pool is not None else self.collector.stats if self.collector else None
        return {"target": self.target.state_dict(), "episodes": stats.state() if stats else self.stats_history}

    def _restore_algo(self, state: dict[str, Any]) -> None:
        """The target network and the episode window continue; the replay is refilled before updates."""
        self.target.load_state_dict(state["target"])
        self.stats_history = state["episodes"]


def time_slice(obs: Obs, start: int, stop: int | None) -> Obs:
    """``obs[start:stop]`` along time for plain and Dict observations."""
    return {k: v[start:stop] for k, v in obs.items()} if isinstance(obs, dict) else obs[start:stop]


def to_cpu(obs: Obs) -> Obs:
    return {k: v.cpu() for k, v in obs.items()} if isinstance(obs, dict) else obs.cpu()


def actor_worker(algo: type[ReplayAlgorithm], config: Any, index: int) -> ReplayAlgorithm:
    """Actor worker ``index`` of a ``--workers`` run: a CPU copy of the algorithm holding envs
    ``index * k .. (index + 1) * k - 1`` of the config's ``num_envs``, whose replay is an outbox big enough
    for the windows of one call (at most two per env step: one full, one closed by an episode's end)."""
    k = config.num_envs // config.workers
    cfg = dataclasses.replace(config, num_envs=k, workers=0, device="cpu", batch_size=1, eval_every=0,
                              stop_at_return=None, replay_capacity=2 * k * config.sync_every + 1)
    worker = algo(config=cfg)
    worker.env_offset, worker.rows = index * k, (index * k, config.num_envs)
    torch.manual_seed(config.seed * 1000 + index + 1)  # each worker explores with its own draws
    return worker
