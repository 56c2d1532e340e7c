"""Workers on Ray (``--workers N``): processes, placement, object transfer and restarts, nothing home-made.

recurl keeps its own algorithms and state contract; Ray Core actors only host them. A worker is an
ordinary algorithm object (PPO or R2D2 built with the worker's share of the envs, on CPU) that a factory
function builds inside a Ray actor; the learner calls its methods by name. So a worker runs the same
rollout code as the single process (:meth:`recurl.algos.ppo.RecurrentPPO._collect`,
:meth:`recurl.algos.replay.ReplayAlgorithm._act_step`), not a copy of it.

- :class:`WorkerPool` starts ``n`` actors with ``max_restarts=-1`` (Ray restarts a dead one by calling the
  factory again) and waits on them with timeouts: a call on a dead or hung worker is retried on its
  restarted actor, so the learner never hangs on it. A restarted worker is a fresh object: it starts
  fresh episodes on its next call.
- :class:`InlinePool` has the same interface with the workers in this process, one after the other
  (``--ray-address inline``): the distributed code path without Ray, for tests and debugging.

Ray is optional (``pip install 'recurl[ray]'``): importing this module never needs it, and asking for
workers without it is one :class:`~recurl.errors.RecurlError`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from recurl.errors import RecurlError

try:  # optional: only --workers needs it
    import ray
    from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

    WORKER_ERRORS: tuple[type[BaseException], ...] = (RayActorError, ActorUnavailableError, GetTimeoutError)
except ImportError:
    ray = None
    WORKER_ERRORS = ()

INLINE = "inline"
"""``--ray-address inline``: the workers run in this process, without Ray."""
CALL_TIMEOUT_S = 300.0
"""Longest wait for one worker call before the worker is killed, restarted and the call retried."""
MAX_RETRIES = 5
"""Retries of one call on restarted workers before the run fails."""


def check_ray(address: str) -> None:
    """Fail clearly when workers are asked for but Ray is not installed (``inline`` needs no Ray)."""
    if address != INLINE and ray is None:
        raise RecurlError("--workers needs Ray, which is not installed: pip install 'recurl[ray]' "
                          "(or run without --workers)")


def init_ray(address: str) -> None:
    """Connect to the cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://...``), or start a local one
    for ``""``; nothing when this process is already connected."""
    check_ray(address)
    if address == INLINE or ray.is_initialized():
        return
    try:
        ray.init(address=address or None, log_to_driver=False, configure_logging=False, include_dashboard=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise RecurlError(f"cannot connect to the Ray cluster at --ray-address {address!r}: {e}") from None


class _Host:
    """The Ray actor class: it builds its worker with ``factory(*args)`` and calls its methods by name."""

    def __init__(self, factory: Callable[..., Any], *args: Any) -> None:
        self.worker = factory(*args)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.worker, method)(*args)

    def pid(self) -> int:
        return os.getpid()

    def ping(self, *args: Any) -> int:
        """Nothing: a call whose arguments (object references) Ray fetches, to time a broadcast."""
        return 0


class WorkerPool:
    """``n`` Ray actors, worker ``i`` built by ``factory(*args, i)`` on one CPU; restarted by Ray when they die.

    ``map`` calls one method on every worker and waits for all (PPO's synchronous rollouts); ``submit`` and
    ``wait`` run calls asynchronously (R2D2's actors). Every wait has a timeout.
    """

    def __init__(self, factory: Callable[..., Any], args: Sequence[Any], n: int,
                 timeout_s: float = CALL_TIMEOUT_S) -> None:
        remote = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(_Host)
        self.timeout_s = timeout_s
        self.restarts = 0  # calls retried on a restarted worker
        self.actors = [remote.remote(factory, *args, i) for i in range(n)]
        # handle -> (worker, method, args, tries, start time)
        self._calls: dict[Any, tuple[int, str, tuple[Any, ...], int, float]] = {}

    def __len__(self) -> int:
        return len(self.actors)

    def put(self, value: Any) -> Any:
        """Put ``value`` in the object store once; pass the reference to every worker (one broadcast)."""
        return ray.put(value)

    def submit(self, i: int, method: str, *args: Any, tries: int = 0) -> Any:
        """Start ``method(*args)`` on worker ``i``; returns a handle for :meth:`wait`."""
        ref = self.actors[i].call.remote(method, *args)
        self._calls[ref] = (i, method, args, tries, time.monotonic())
        return ref

    def wait(self, handles: list[Any], timeout_s: float) -> list[tuple[int, Any, Any]]:
        """Wait up to ``timeout_s`` for the calls of ``handles``; returns ``(worker, result, retry)`` for each
        call that is over: ``result`` when it finished, else (its worker died, or ran past the call timeout
        and was killed) ``retry``, the handle of the same call resubmitted to the restarted worker."""
        ready, waiting = ray.wait(handles, num_returns=len(handles), timeout=timeout_s, fetch_local=True)
        now = time.monotonic()
        hung = [h for h in waiting if now - self._calls[h][4] > self.timeout_s]
        out = []
        for ref in ready:
            try:
                result = ray.get(ref, timeout=self.timeout_s)
            except WORKER_ERRORS as e:
                out.append((self._calls[ref][0], None, self._retry(ref, e, kill=False)))
            else:
                out.append((self._calls.pop(ref)[0], result, None))
        for ref in hung:
            out.append((self._calls[ref][0], None, self._retry(ref, TimeoutError("no answer"), kill=True)))
        return out

    def map(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``method(*args[i])`` on every worker ``i``, waiting for all; dead or hung workers are retried."""
        handles = {i: self.submit(i, method, *a) for i, a in enumerate(args)}
        results: list[Any] = [None] * len(args)
        while handles:
            for i, result, retry in self.wait(list(handles.values()), timeout_s=min(self.timeout_s, 5.0)):
                if retry is not None:
                    handles[i] = retry
                else:
                    results[i] = result
                    del handles[i]
        return results

    def pids(self) -> list[int]:
        """The process id of every worker (tests kill one)."""
        return ray.get([a.pid.remote() for a in self.actors], timeout=self.timeout_s)

    def close(self) -> None:
        """Stop every worker (no restart)."""
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors, self._calls = [], {}

    def _retry(self, ref: Any, error: BaseException, kill: bool) -> Any:
        i, method, args, tries, _ = self._calls.pop(ref)
        if tries >= MAX_RETRIES:
            raise RecurlError(f"worker {i} failed {tries + 1} times in a row ({type(error).__name__}: {error}); "
                              "giving up") from None
        if kill:  # hung, not dead: kill it so that Ray restarts it
            ray.kill(self.actors[i], no_restart=False)
        self.restarts += 1
        return self.submit(i, method, *args, tries=tries + 1)


class InlinePool:
    """:class:`WorkerPool`'s interface with the workers built and called in this process, in turn."""

    def __init__(self, factory: Callable[..., Any], args: Sequence[Any], n: int) -> None:
        self.workers = [factory(*args, i) for i in range(n)]
        self.restarts = 0
        self._results: dict[int, tuple[int, Any]] = {}

    def __len__(self) -> int:
        return len(self.workers)

    def put(self, value: Any) -> Any:
        return value

    def submit(self, i: int, method: str, *args: Any) -> Any:
        handle = object()
        self._results[id(handle)] = (i, getattr(self.workers[i], method)(*args))
        return handle

    def wait(self, handles: list[Any], timeout_s: float) -> list[tuple[int, Any, Any]]:
        return [(*self._results.pop(id(h)), None) for h in handles]

    def map(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [getattr(w, method)(*a) for w, a in zip(self.workers, args)]

    def pids(self) -> list[int]:
        return [os.getpid()] * len(self.workers)

    def close(self) -> None:
        self.workers = []


def start_pool(factory: Callable[..., Any], args: Sequence[Any], n: int, address: str) -> WorkerPool | InlinePool:
    """``n`` workers ``factory(*args, i)``: Ray actors on the cluster at ``address``, or in-process for ``inline``."""
    init_ray(address)
    return InlinePool(factory, args, n) if address == INLINE else WorkerPool(factory, args, n)
