"""A stateful runtime for deploying a trained recurl policy: observations in, actions out, memory kept.

Two ways to act:

- stateful: ``agent.reset(n_envs)`` then ``agent.act(obs)`` once per step; the agent keeps one
  recurrent state per env. Pass ``is_first`` (``[N]`` bools) on steps where some envs begin a new
  episode; the first call after ``reset`` is an episode start for every env.
- pure: ``agent.act(obs, state, is_first) -> (action, new_state)`` threads the state explicitly (for
  callers that store it themselves, e.g. one state per player in a game server); ``agent.initial_state(n)``
  makes a zero state.

Acting runs ``policy.act``: for PPO and BC the actor only (observation normaliser, encoder, core, action
head; the critic is skipped), for R2D2 the greedy Q-network. The state is the acting core's: ``(h, c)``
for LSTM, ``(h,)`` for GRU/RNN, ``()`` for ``none``, each ``[layers, N, hidden_size]`` float32: the
same state ``predict`` returns and the ONNX graph takes. A behaviour-cloned model with an action delay
``D`` has its actions executed ``D`` steps after they were chosen: the agent keeps that queue per env
(stateful acting only; the pure form returns the chosen action).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recurl.acting import TracedAct
from recurl.collector import ActionQueue, env_action
from recurl.errors import RecurlError
from recurl.export import export_onnx
from recurl.nn.recurrent import State
from recurl.obs import ObsConverter, check_is_first, check_mask, check_state, user_tensor
from recurl.runs import load_model
from recurl.util import set_threads


class Agent:
    """Acts with a trained policy, keeping the recurrent state per env.

    Args:
        model: a loaded or freshly trained recurl model of any algorithm (e.g. a :class:`RecurrentPPO`).
        deterministic: take the most likely action (argmax / Gaussian mean) instead of sampling.
            It is a plain attribute: change it between calls if needed (torch backend; the onnx backend
            runs the graph chosen at construction: the mode's, or the stochastic one that samples).
        backend: ``"torch"`` or ``"onnx"`` (ONNX Runtime, several times faster per call at batch 1).
        seed: seed of the onnx backend's sampling noise (the torch backend samples from torch's generator).
    """

    def __init__(self, model: Any, deterministic: bool = True, backend: str = "torch", seed: int | None = None) -> None:
        if backend not in ("torch", "onnx"):
            raise RecurlError(f"unknown backend {backend!r}: choose torch or onnx")
        self.policy = model.policy
        self.device: torch.device = model.device
        self.observation_space = model.observation_space
        self.action_space = model.action_space
        self.deterministic = deterministic
        self.action_delay = int(getattr(model, "action_delay", 0))
        self.masked = bool(getattr(model, "masked", False))  # then every act call takes the valid actions
        set_threads(getattr(model.config, "threads", 0))  # one torch thread unless configured: fastest here
        self._obs_conv = ObsConverter(self.observation_space)
        # backend "onnx": the acting step runs as `recurl export`'s graph of the actor under ONNX Runtime
        # (several times faster per call at batch 1 than eager PyTorch); same state as the torch backend.
        # sampling on onnx: the stochastic graph, fed noise from this agent's generator
        self._onnx = _OnnxStep(model, stochastic=not deterministic) if backend == "onnx" else None
        self._rng = np.random.default_rng(seed)
        # backend "torch": the same step traced per call shape (recurl.acting), eager where it cannot be
        self._traced = TracedAct(self.policy, self.observation_space, self.action_space, self.masked)
        shapes = self._onnx.state_shapes if self._onnx else [tuple(s.shape) for s in
                                                              self.policy.initial_act_state(1, "cpu")]
        self._shapes = [(layers, hidden) for layers, _, hidden in shapes]
        self._queue: ActionQueue | None = None
        self._state: State | None = None  # None until reset()
        self._n_envs = 0
        self._pending_first: torch.Tensor | None = None  # [n_envs] bool episode starts for the next step

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu", deterministic: bool = True,
             backend: str = "torch") -> Agent:
        """Load the policy of a run directory written by any recurl algorithm (``backend="onnx"``: PPO and BC
        policies, run by ONNX Runtime)."""
        return cls(load_model(run_dir, device=device), deterministic=deterministic, backend=backend)

    # -- state --------------------------------------------------------------------------------------------
    @property
    def n_envs(self) -> int | None:
        """Envs the internal state is sized for (``None`` before :meth:`reset`)."""
        return None if self._state is None else self._n_envs

    def initial_state(self, n: int = 1) -> State:
        """Zero state for ``n`` envs: ``n_state`` float32 tensors ``[layers, n, hidden_size]``."""
        if self._onnx is not None:
            return tuple(np.zeros((layers, n, hidden), np.float32) for layers, hidden in self._shapes)
        return self.policy.initial_act_state(n, self.device)

    def reset(self, n_envs: int = 1) -> None:
        """Start ``n_envs`` envs afresh: zero state, and the next :meth:`act` is an episode start."""
        if n_envs < 1:
            raise RecurlError(f"n_envs must be >= 1, got {n_envs}")
        self._state = self.initial_state(n_envs)
        self._n_envs = n_envs
        self._queue = ActionQueue(self.action_space, n_envs, self.action_delay)
        self._pending_first = torch.ones(n_envs, dtype=torch.bool, device=self.device)

    # -- acting -------------------------------------------------------------------------------------------
    def act(self, obs: Any, state: State | None = None, is_first: Any = None, action_mask: Any = None) -> Any:
        """Choose actions for one observation or a batch ``[N, ...]``.

        Stateful (``state`` omitted): uses and updates the state set up by :meth:`reset`; ``N`` must equal
        its ``n_envs``. ``is_first`` (``[N]`` bools, optional) marks envs whose observation begins a new
        episode. Returns the action(s): ``[N, ...]``, or one action for an unbatched observation.

        Pure (``state`` given, e.g. from :meth:`initial_state` or a previous call): returns
        ``(action, new_state)`` and leaves the internal state alone. ``state`` is a tuple of
        ``[layers, N, hidden_size]`` tensors (or arrays); ``is_first`` defaults to all false.

        ``action_mask`` (``[N, n]`` bools, the env's ``action_masks()``) is required for a policy trained
        with masks: the chosen action is always a valid one.

        Raises :class:`RecurlError` for an observation of the wrong shape, dtype or range, NaN, a batch
        that does not match the state, or a stateful call before :meth:`reset`.
        """
        # The onnx backend stays in numpy from the user's array to the action: no torch call per step.
        x, n, batched = self._obs_conv.check(obs) if self._onnx else self._obs_conv.from_user(obs, self.device)
        mask = check_mask(action_mask, n, self.action_space, self.masked)
        if mask is not None and self._onnx is None:
            mask = torch.as_tensor(mask, device=self.device)
        if state is None:
            if self._state is None:
                raise RecurlError("call agent.reset(n_envs) before agent.act(obs), or pass a state")
            if n != self._n_envs:
                raise RecurlError(f"got {n} observation(s) but the agent was reset for {self._n_envs} "
                                  f"env(s): call agent.reset({n}) or pass one observation per env")
            first, user_first = self._pending_first, self._is_first(is_first, n)
            if user_first is not None:
                first = user_first if first is None else first | user_first
            action, self._state = self._step(x, self._state, first, mask)
            self._pending_first = None
            action = self._queue(action, np.zeros(n, bool) if first is None else first.cpu().numpy())
            return action if batched else action[0]
        action, new_state = self._step(x, self._check_state(state, n), self._is_first(is_first, n), mask)
        return (action if batched else action[0]), new_state

    def _step(self, x: Any, state: State, is_first: torch.Tensor | None, mask: Any) -> tuple[np.ndarray, State]:
        """Actor-only step: ``x`` obs ``[N, ...]`` (numpy for onnx, torch otherwise), ``state``
        ``[layers, N, H]``, ``is_first[N]`` bool (``None``: no episode starts, the common case, which skips
        the reset arithmetic), the valid actions ``mask[N, n]`` (or ``None``)."""
        if self._onnx is not None:
            if self.deterministic != (self._onnx.noise is None):
                raise RecurlError("the onnx backend runs the graph chosen when the Agent was made: make a new "
                                  f"Agent(..., deterministic={self.deterministic}, backend='onnx')")
            noise = None
            if self._onnx.noise is not None:
                n = len(next(iter(x.values())) if isinstance(x, dict) else x)
                draw = self._rng.standard_normal if self._onnx.noise["law"] == "normal" else self._rng.random
                noise = draw((n, self._onnx.noise["width"]), dtype=np.float32)
            action, new_state = self._onnx(x, state, is_first, mask, noise)
            return env_action(self.action_space, action), new_state
        with torch.inference_mode():
            action, new_state = self._traced(x, state, is_first, mask, self.deterministic)
        return env_action(self.action_space, action), new_state

    def _is_first(self, is_first: Any, n: int) -> torch.Tensor | None:
        return None if is_first is None else torch.as_tensor(check_is_first(is_first, n), device=self.device)

    def _check_state(self, state: Any, n: int) -> State:
        arrays = check_state(state, self._shapes, n)
        return tuple(arrays) if self._onnx is not None else tuple(user_tensor(a, torch.float32, self.device)
                                                                 for a in arrays)


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(uint8)": np.uint8}


class _OnnxStep:
    """The exported acting graph under ONNX Runtime, one thread: ``(obs, state, is_first) -> (action, state)``."""

    def __init__(self, model: Any, stochastic: bool = False) -> None:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            meta = export_onnx(model, Path(tmp) / "agent.onnx", stochastic=stochastic)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(Path(tmp) / "agent.onnx"), opts,
                                                providers=["CPUExecutionProvider"])
        self.noise: dict[str, Any] | None = meta["noise"]
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.dtypes = {i.name: _ORT_DTYPES[i.type] for i in self.session.get_inputs() if i.type in _ORT_DTYPES}
        self.obs_names = [d["name"] for d in meta["inputs"] if d["name"].startswith("obs")]
        self.state_in, self.state_out = meta["state_inputs"], meta["state_outputs"]
        self.state_shapes = [tuple(meta["state_shape"])] * len(self.state_in)
        self.outputs = ["action", *self.state_out]

    def __call__(self, x: Any, state: tuple, is_first: torch.Tensor | None, mask: np.ndarray | None = None,
                 noise: np.ndarray | None = None) -> tuple[np.ndarray, tuple]:
        """``x``: validated numpy obs ``[N, ...]`` (or a dict of them); ``state``: ``[layers, N, H]`` arrays;
        ``noise[N, k]`` for the stochastic graph."""
        leaves = [x[k[4:]] for k in self.obs_names] if isinstance(x, dict) else [x]
        feed = {name: leaf.astype(self.dtypes[name], copy=False) for name, leaf in zip(self.obs_names, leaves)}
        feed.update(zip(self.state_in, state))
        if "is_first" in self.inputs:
            n = leaves[0].shape[0]
            feed["is_first"] = (np.zeros(n, np.float32) if is_first is None
                                else is_first.cpu().numpy().astype(np.float32))
        if mask is not None:
            feed["action_mask"] = mask.astype(np.float32)
        if noise is not None:
            feed["noise"] = noise
        action, *new_state = self.session.run(self.outputs, feed)
        return action, tuple(new_state)
