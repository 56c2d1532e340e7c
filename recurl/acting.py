"""The acting step as one module of explicit tensors (:class:`ActStep`), and that step traced once per
call shape for fast acting (:class:`TracedAct`).

:class:`ActStep` is what ``recurl export`` writes to ONNX, and what ``predict`` and :class:`recurl.Agent`
run on the torch backend, traced: one acting step of ``policy.act`` (the same step evaluation runs) with
the observation leaves, the actor's state, ``is_first``, the action mask and the sampling noise as
inputs, and the action, the distribution's outputs and the new state as outputs.

Why trace: at one observation an eager step is ~20 module and op calls, each a few microseconds of Python
dispatch; the step's arithmetic is a fraction of that. A TorchScript trace of the same module runs the
same ops from C++ (about 2x the calls/s at the zoo network), on the same parameters, so it follows
training and ``load_state_dict`` without re-tracing. Each trace is checked against the eager step on
fresh inputs before it is used; a call shape that cannot be traced, or whose trace disagrees, acts eagerly.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from recurl.nn.heads import noise_width
from recurl.nn.recurrent import State
from recurl.obs import _torch_dtype, mask_width

#: traced graphs kept per policy, most recently used first out (one per batch size and kind of call)
MAX_GRAPHS = 8


def leaf_keys(space: gym.Space) -> list[str | None]:
    """The observation's leaves in input order: sorted keys of a Dict space, ``[None]`` for a plain one."""
    return sorted(space.spaces) if isinstance(space, gym.spaces.Dict) else [None]


def obs_input_names(space: gym.Space) -> list[str]:
    """``["obs"]`` for a plain space; ``["obs.<key>", ...]`` in sorted key order for a Dict space."""
    return [f"obs.{key}" if key is not None else "obs" for key in leaf_keys(space)]


class ActStep(nn.Module):
    """One acting step of ``policy`` with explicit state and ``is_first`` masking.

    ``forward(*obs_leaves, *state, is_first, action_mask, noise)`` with obs leaves ``[B, ...]`` in
    :func:`obs_input_names` order, state tensors ``[layers, B, H]`` in ``policy.act_state_names`` order,
    ``is_first`` ``[B]`` (float 1.0 or bool true where an episode starts; present when there is a state
    and ``with_first``), ``action_mask`` ``[B, n]`` (masked policies) and ``noise`` ``[B, k]`` (``stochastic``:
    ``U(0, 1)`` per discrete component, ``N(0, 1)`` per Box dimension). Returns
    ``(action, *dist.outputs(), *new_state)``; a Box action is clipped to the space's bounds.
    """

    def __init__(self, policy: nn.Module, observation_space: gym.Space, action_space: gym.Space,
                 masked: bool = False, stochastic: bool = False, with_first: bool = True) -> None:
        super().__init__()
        self.policy = policy
        self.keys = leaf_keys(observation_space)
        self.n_state = len(policy.act_state_names)
        self.with_first = with_first and self.n_state > 0
        self.masked = masked
        self.mask_width = mask_width(action_space) if masked else 0
        self.box = isinstance(action_space, gym.spaces.Box)
        self.noise_width = noise_width(action_space) if stochastic else 0
        if self.box:
            self.register_buffer("low", torch.as_tensor(np.asarray(action_space.low, np.float32).reshape(-1)))
            self.register_buffer("high", torch.as_tensor(np.asarray(action_space.high, np.float32).reshape(-1)))

    def split(self, inputs: list[torch.Tensor]) -> tuple[Any, tuple, torch.Tensor | None, torch.Tensor | None]:
        """Inputs -> ``(obs, state, is_first, mask)`` as ``policy.act`` takes them."""
        n_obs, n_first = len(self.keys), int(self.with_first)
        leaves, state = inputs[:n_obs], tuple(inputs[n_obs : n_obs + self.n_state])
        obs = leaves[0] if self.keys == [None] else dict(zip(self.keys, leaves))
        is_first = inputs[n_obs + self.n_state] > 0.5 if n_first else None
        mask = inputs[n_obs + self.n_state + n_first] > 0.5 if self.masked else None
        return obs, state, is_first, mask

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dist, new_state = self.policy.act(*self.split(list(inputs)))
        action = dist.sample_with(inputs[-1]) if self.noise_width else dist.mode()
        if self.box:
            action = torch.minimum(torch.maximum(action, self.low), self.high)
        return (action, *dist.outputs().values(), *new_state)


def example_inputs(step: ActStep, observation_space: gym.Space, batch: int, seed: int = 0,
                   device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Random valid inputs of ``step`` for a batch: observations from the space, random state, mixed
    ``is_first``, random masks (the first action always valid) and noise."""
    gen = torch.Generator().manual_seed(seed)
    spaces = observation_space.spaces if isinstance(observation_space, gym.spaces.Dict) else {None: observation_space}
    leaves = []
    for key in step.keys:
        space = copy.deepcopy(spaces[key])
        space.seed(seed)
        a = np.stack([space.sample() for _ in range(batch)])
        if np.issubdtype(a.dtype, np.floating):  # unbounded Box samples can be huge: keep them moderate
            a = np.clip(a, -5.0, 5.0)
        leaves.append(torch.as_tensor(a, dtype=_torch_dtype(space)))
    state = [torch.randn(s.shape, generator=gen) for s in step.policy.initial_act_state(batch, "cpu")]
    is_first = [(torch.arange(batch) % 2).float()] if step.with_first else []
    masks = []
    if step.masked:
        m = (torch.rand(batch, step.mask_width, generator=gen) < 0.6).float()
        m[:, 0] = 1.0
        masks = [m]
    noises = ([(torch.randn if step.box else torch.rand)(batch, step.noise_width, generator=gen)]
              if step.noise_width else [])
    return [t.to(device) for t in [*leaves, *state, *is_first, *masks, *noises]]


class TracedAct:
    """``policy.act`` and the action choice, traced per call shape: ``(obs, state, is_first, mask,
    deterministic) -> (action, new_state)``, the same as the eager step gives them. Where a call shape
    cannot be traced, ``eager`` acts instead (``(obs, state, is_first, mask) -> (dist, state)``; default
    ``policy.act``; R2D2 passes its epsilon-greedy step), and its ``mode()`` or ``sample()`` is taken.

    One graph per (batch size, episode starts or not, deterministic), at most :data:`MAX_GRAPHS` kept.
    Sampling draws its noise from torch's global generator, as the eager sampler does.
    """

    def __init__(self, policy: nn.Module, observation_space: gym.Space, action_space: gym.Space,
                 masked: bool, eager: Callable[..., tuple[Any, State]] | None = None) -> None:
        self.policy, self.observation_space, self.action_space, self.masked = (
            policy, observation_space, action_space, masked)
        self.eager = eager or policy.act
        self.keys = leaf_keys(observation_space)
        #: call shape -> (its ActStep, the bound ``forward`` of its trace), or None where it acts eagerly
        self._graphs: OrderedDict[tuple, tuple[ActStep, Callable[..., tuple]] | None] = OrderedDict()
        #: why a call shape acts eagerly (shape key -> reason), for whoever wonders why acting is slow
        self.eager_reasons: dict[tuple, str] = {}
        self._last_key: tuple | None = None
        self._last_entry: tuple[ActStep, Callable[..., tuple]] | None = None

    def __call__(self, obs: Any, state: State, is_first: torch.Tensor | None, mask: torch.Tensor | None,
                 deterministic: bool) -> tuple[torch.Tensor, State]:
        """``obs`` ``[N, ...]`` (a dict of leaves for a Dict space), ``state`` ``[layers, N, H]`` tensors,
        ``is_first[N]`` bool or ``None``, ``mask[N, n]`` bool or ``None`` -> ``(action[N, ...], state)``."""
        leaves = [obs[k] for k in self.keys] if isinstance(obs, dict) else [obs]
        n = leaves[0].shape[0]
        key = (n, is_first is not None, deterministic, leaves[0].device)
        if key == self._last_key:  # the usual case, a loop of calls of one shape: skip the LRU's bookkeeping
            entry = self._last_entry
        else:
            if key not in self._graphs:
                self._graphs[key] = self._trace(key, n, is_first is not None, deterministic, leaves[0].device)
                while len(self._graphs) > MAX_GRAPHS:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            entry = self._last_entry = self._graphs[key]
            self._last_key = key
        if entry is None:
            dist, new_state = self.eager(obs, state, is_first, mask)
            return (dist.mode() if deterministic else dist.sample()), new_state
        step, forward = entry
        inputs = [*leaves, *state]
        if step.with_first:
            inputs.append(is_first)
        if mask is not None:
            inputs.append(mask)
        if step.noise_width:
            inputs.append((torch.randn if step.box else torch.rand)(n, step.noise_width, device=key[3]))
        out = forward(*inputs)
        return out[0], tuple(out[len(out) - step.n_state:]) if step.n_state else ()

    def _trace(self, key: tuple, n: int, with_first: bool, deterministic: bool,
               device: torch.device) -> tuple[ActStep, Callable[..., tuple]] | None:
        step = ActStep(self.policy, self.observation_space, self.action_space, self.masked,
                       stochastic=not deterministic, with_first=with_first).to(device)
        try:
            probe = example_inputs(step, self.observation_space, n, device=device)
            with torch.no_grad():
                if not deterministic and not hasattr(self.policy.act(*step.split(probe))[0], "sample_with"):
                    self.eager_reasons[key] = "the distribution samples only its own way (R2D2's epsilon-greedy)"
                    return None
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # tracer notes on shapes read as Python numbers
                    graph = torch.jit.trace(step, tuple(probe), check_trace=False)
                fresh = example_inputs(step, self.observation_space, n, seed=1, device=device)
                same = all(torch.allclose(a.float(), b.float(), atol=1e-5)
                           for a, b in zip(graph(*fresh), step(*fresh)))
        except Exception as e:  # noqa: BLE001 - any op the tracer cannot record: this step acts eagerly
            self.eager_reasons[key] = f"not traceable: {type(e).__name__}: {e}"
            return None
        if not same:
            self.eager_reasons[key] = "the trace disagreed with the eager step on fresh inputs"
            return None
        # The bound forward, not the module: a ScriptModule has no hooks to run, and nn.Module's __call__ and
        # the traced module's attribute lookup cost a few us per call at batch 1.
        return step, graph.forward
