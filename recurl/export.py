"""ONNX export of a trained policy's acting step, with the recurrent state as explicit inputs and outputs.

The graph is one step of :meth:`RecurrentPolicy.step` for a batch of ``B`` envs (``B`` is dynamic):

- inputs: the observation (``obs``, or ``obs.<key>`` per key of a Dict space, in sorted key order), the
  state tensors ``[layers, B, H]`` (actor core ``h_in`` and, for LSTM, ``c_in``; a separate critic core
  adds ``critic_h_in`` / ``critic_c_in``) and ``is_first`` float32 ``[B]`` (1.0 where the observation
  starts an episode: the graph zeroes that env's incoming state, exactly like the PyTorch core; a
  memoryless ``none`` core has neither state nor ``is_first``);
- outputs: ``action`` (argmax, or the Gaussian mean clipped to the action bounds), ``logits`` (normalised
  log-probabilities; Discrete ``[B, n]``, MultiDiscrete the components' concatenated ``[B, sum(nvec)]``)
  or ``mean`` and ``log_std`` (Box, ``[B, d]``), ``value`` ``[B]`` and the new state (``h_out``, ...).

The observation normaliser is inside the graph: feed raw observations. Everything a runtime needs to
drive the graph (names, shapes, dtypes, spaces, core type) is stored as JSON under the ``recurl`` key
of the model's ``metadata_props``.

The legacy TorchScript exporter (``dynamo=False``) is used: it needs only ``onnx``, works offline and
exports ``nn.LSTM``/``nn.GRU``/``nn.RNN`` as the native ONNX recurrent ops. The dynamo exporter would
additionally need ``onnxscript``.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from recurl.checkpoint import space_to_json
from recurl.errors import RecurlError
from recurl.nn.policy import RecurrentPolicy, _leaves
from recurl.nn.recurrent import RecurrentCore
from recurl.obs import _torch_dtype

METADATA_KEY = "recurl"
OPSET = 17


def state_names(policy: RecurrentPolicy) -> list[str]:
    """Base names of the policy's state tensors in state-tuple order: ``h``, ``c``, ``critic_h``, ...

    Inputs append ``_in`` and outputs ``_out``.
    """
    towers = [("", policy.actor.core)] + ([("critic_", policy.critic.core)] if policy.critic else [])
    return [prefix + name for prefix, core in towers for name in ("h", "c")[: core.n_state]]


def obs_input_names(space: gym.Space) -> list[str]:
    """``["obs"]`` for a plain space; ``["obs.<key>", ...]`` in sorted key order for a Dict space."""
    return [f"obs.{key}" if key is not None else "obs" for key, _ in _leaves(space)]


def _core_step(core: RecurrentCore, x: torch.Tensor, state: tuple[torch.Tensor, ...],
               keep: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One core step on ``x[B, F]`` with the state already masked by ``keep[1, B, 1]``; ``y[B, H]``."""
    if core.kind == "none":
        return core.net(x), ()
    h0 = tuple(s * keep for s in state)  # the reset, as a multiply the exporter keeps in the graph
    y, hT = core.net(x.unsqueeze(0), h0 if core.kind == "lstm" else h0[0])  # length-1 sequence
    return y.squeeze(0), (tuple(hT) if core.kind == "lstm" else (hT,))


class OnnxStep(nn.Module):
    """Export-only module: one acting step with explicit state and ``is_first`` masking.

    ``forward(*obs_leaves, *state, is_first)`` with obs leaves ``[B, ...]`` in :func:`obs_input_names`
    order, state tensors ``[layers, B, H]`` in :func:`state_names` order and ``is_first`` float ``[B]``.
    Returns ``(action, logits | (mean, log_std), value[B], *new_state)``.
    """

    def __init__(self, policy: RecurrentPolicy) -> None:
        super().__init__()
        self.policy = policy
        self.keys = [key for key, _ in _leaves(policy.obs_space)]
        self.n_actor = policy.actor.core.n_state
        self.n_state = len(state_names(policy))
        space = policy.action_space
        if policy.pi.kind == "gaussian":
            low = torch.as_tensor(np.asarray(space.low, np.float32).reshape(-1))
            high = torch.as_tensor(np.asarray(space.high, np.float32).reshape(-1))
            self.register_buffer("low", low)
            self.register_buffer("high", high)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n_obs = len(self.keys)
        leaves, state, is_first = inputs[:n_obs], inputs[n_obs:-1], inputs[-1]
        obs = leaves[0] if self.keys == [None] else dict(zip(self.keys, leaves))
        pol = self.policy
        obs = pol.normalize(obs)
        keep = (1.0 - is_first).view(1, -1, 1)
        h_pi, a_state = _core_step(pol.actor.core, pol.actor.encoder(obs), state[: self.n_actor], keep)
        h_pi = pol.actor.mlp(h_pi)
        c_state: tuple[torch.Tensor, ...] = ()
        if pol.critic is None:
            h_v = h_pi
        else:
            h_v, c_state = _core_step(pol.critic.core, pol.critic.encoder(obs), state[self.n_actor :], keep)
            h_v = pol.critic.mlp(h_v)
        value = pol.v(h_v).squeeze(-1)
        params = pol.pi.linear(h_pi)
        if pol.pi.kind == "gaussian":
            action = torch.minimum(torch.maximum(params, self.low), self.high)
            return (action, params, pol.pi.log_std.expand_as(params), value, *a_state, *c_state)
        if pol.pi.kind == "categorical":
            logits = torch.log_softmax(params, -1)
            return (logits.argmax(-1), logits, value, *a_state, *c_state)
        parts = [torch.log_softmax(p, -1) for p in params.split(pol.pi.splits, -1)]
        action = torch.stack([p.argmax(-1) for p in parts], -1)
        return (action, torch.cat(parts, -1), value, *a_state, *c_state)


def _onnx_dtype(space: gym.Space) -> str:
    """The input's element type, the one recurl's policies take: ``float32``, ``uint8`` or ``int64``."""
    return str(_torch_dtype(space)).removeprefix("torch.")


def interface(policy: RecurrentPolicy) -> dict[str, Any]:
    """The exported graph's interface as JSON (stored in ``metadata_props["recurl"]``).

    Shapes use ``"B"`` for the dynamic batch axis.
    """
    from recurl import __version__

    cfg = policy.cfg
    obs = [{"name": name, "shape": ["B", *space.shape], "dtype": _onnx_dtype(space)}
           for name, (_, space) in zip(obs_input_names(policy.obs_space), _leaves(policy.obs_space))]
    state_shape = [cfg.num_layers, "B", cfg.hidden_size]
    names = state_names(policy)
    act_space = policy.action_space
    n_params = int(policy.pi.linear.out_features)
    if policy.pi.kind == "gaussian":
        heads = [{"name": "action", "shape": ["B", n_params], "dtype": "float32"},
                 {"name": "mean", "shape": ["B", n_params], "dtype": "float32"},
                 {"name": "log_std", "shape": ["B", n_params], "dtype": "float32"}]
    else:
        action_shape = ["B"] if policy.pi.kind == "categorical" else ["B", len(policy.pi.splits)]
        heads = [{"name": "action", "shape": action_shape, "dtype": "int64"},
                 {"name": "logits", "shape": ["B", n_params], "dtype": "float32"}]
    return {
        "format": "recurl-onnx-step/1",
        "recurl_version": __version__,
        "observation_space": space_to_json(policy.obs_space),
        "action_space": space_to_json(act_space),
        "action_kind": policy.pi.kind,
        "core": cfg.core,
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers,
        "shared_core": cfg.shared_core,
        # A memoryless core has no state and so no use for is_first: the exporter drops unused inputs.
        "inputs": [*obs, *({"name": f"{n}_in", "shape": state_shape, "dtype": "float32"} for n in names),
                   *([{"name": "is_first", "shape": ["B"], "dtype": "float32"}] if names else [])],
        "outputs": [*heads, {"name": "value", "shape": ["B"], "dtype": "float32"},
                    *({"name": f"{n}_out", "shape": state_shape, "dtype": "float32"} for n in names)],
        "state_inputs": [f"{n}_in" for n in names],
        "state_outputs": [f"{n}_out" for n in names],
        "state_shape": state_shape,
    }


def _example_inputs(policy: RecurrentPolicy, batch: int, seed: int = 0) -> list[torch.Tensor]:
    """Random valid inputs for a batch: observations from the space, random state, mixed ``is_first``."""
    gen = torch.Generator().manual_seed(seed)
    leaves = []
    for _, space in _leaves(policy.obs_space):
        space = copy.deepcopy(space)
        space.seed(seed)
        a = np.stack([space.sample() for _ in range(batch)])
        if np.issubdtype(a.dtype, np.floating):  # unbounded Box samples can be huge: keep them moderate
            a = np.clip(a, -5.0, 5.0)
        leaves.append(torch.as_tensor(a, dtype=_torch_dtype(space)))
    cfg = policy.cfg
    state = [torch.randn(cfg.num_layers, batch, cfg.hidden_size, generator=gen) for _ in state_names(policy)]
    is_first = (torch.arange(batch) % 2).float()
    return [*leaves, *state, is_first]


def export_onnx(model: Any, path: str | Path, opset: int = OPSET, verify: bool = True) -> dict[str, Any]:
    """Write the acting step of ``model`` (a run directory, or a loaded/trained model with ``.policy``)
    to the ONNX file ``path``; returns the interface stored in its metadata (see :func:`interface`).

    With ``verify`` the file is checked by ``onnx.checker`` and, when onnxruntime is installed, run on a
    random batch and compared with the same step run in PyTorch (over 1e-4 apart raises :class:`RecurlError`).
    """
    try:
        import onnx
    except ImportError:
        raise RecurlError("ONNX export needs the onnx package: pip install 'recurl[export]'") from None
    if isinstance(model, str | Path):
        from recurl.runs import load_model

        model = load_model(model, device="cpu")
    policy = copy.deepcopy(model.policy).cpu().eval().requires_grad_(False)
    step = OnnxStep(policy).eval()
    meta = interface(policy)
    in_names = [d["name"] for d in meta["inputs"]]
    out_names = [d["name"] for d in meta["outputs"]]
    dyn = {d["name"]: {d["shape"].index("B"): "B"} for d in [*meta["inputs"], *meta["outputs"]]}
    example = _example_inputs(policy, batch=2)  # batch 2, so no size-1 axis gets baked in as a constant
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and RNN batch-size notes
        torch.onnx.export(step, tuple(example), buf, dynamo=False, input_names=in_names, output_names=out_names,
                          dynamic_axes=dyn, opset_version=opset)
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name = "recurl"
    if verify:
        onnx.checker.check_model(proto, full_check=True)
        _verify_runtime(proto.SerializeToString(), step, policy, in_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return meta


def _verify_runtime(data: bytes, step: OnnxStep, policy: RecurrentPolicy, in_names: list[str]) -> None:
    """Run the graph in onnxruntime on a fresh random batch of 3 and compare it with the PyTorch module."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    inputs = _example_inputs(policy, batch=3, seed=1)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: t.numpy() for n, t in zip(in_names, inputs)})
    with torch.no_grad():
        want = step(*inputs)
    err = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
    if err > 1e-4:
        raise RecurlError(f"exported ONNX graph disagrees with the PyTorch policy (max error {err:.2e})")

