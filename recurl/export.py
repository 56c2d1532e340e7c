"""ONNX export of a trained model's acting step, with the recurrent state as explicit inputs and outputs.

The graph is one acting step (``policy.act``, the same step ``predict``, :class:`recurl.Agent` and
evaluation run) for a batch of ``B`` envs (``B`` is dynamic), for every algorithm: PPO and BC export the
actor (the critic is not needed to act), R2D2 its Q-network (greedy action):

- inputs: the observation (``obs``, or ``obs.<key>`` per key of a Dict space, in sorted key order), the
  acting state's tensors ``[layers, B, H]`` named ``<name>_in`` after the core's ``state_names`` (``h_in``,
  and ``c_in`` for LSTM; ``h_re_in``, ``h_im_in`` for LRU), and ``is_first`` float32
  ``[B]`` (1.0 where the observation starts an episode: the graph zeroes that env's incoming state,
  exactly like the PyTorch core; a memoryless ``none`` core has neither state nor ``is_first``), and for a
  policy trained with action masks ``action_mask`` float32 ``[B, n]`` (1.0 where the action is valid);
- with ``stochastic=True`` (``recurl export --stochastic``) a last input ``noise`` float32 ``[B, k]``, from
  which the graph samples its action (see :func:`export_onnx`);
- outputs: ``action`` (argmax, or the Gaussian mean clipped to the action bounds; a sample in a
  stochastic graph), then ``logits``
  (Discrete, MultiDiscrete), ``mean`` and ``log_std`` (Box) or ``q`` (R2D2), then the new state
  (``<name>_out``).

The observation normaliser is inside the graph: feed raw observations. Everything a runtime needs to
drive the graph (names, shapes, dtypes, spaces, core type, the action delay and its default action) is
stored as JSON under the ``recurl`` key of the model's ``metadata_props``. A behaviour-cloned model with
``action_delay = D`` outputs the action to *execute D steps later*; the runtime keeps the queue
(:class:`recurl.collector.ActionQueue`, as :class:`recurl.Agent` does).

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

from recurl.acting import ActStep, example_inputs, obs_input_names
from recurl.checkpoint import space_to_json
from recurl.collector import default_action
from recurl.errors import RecurlError
from recurl.runs import load_model
from recurl.version import __version__

METADATA_KEY = "recurl"
OPSET = 17


def _describe(name: str, t: torch.Tensor) -> dict[str, Any]:
    return {"name": name, "shape": ["B", *t.shape[1:]], "dtype": str(t.dtype).removeprefix("torch.")}


def interface(model: Any, step: ActStep) -> dict[str, Any]:
    """The exported graph's interface as JSON (stored in ``metadata_props["recurl"]``); shapes use ``"B"``
    for the dynamic batch axis. Output names and shapes come from running ``step`` once."""
    policy, obs_space, act_space = step.policy, model.observation_space, model.action_space
    example = example_inputs(step, obs_space, batch=2)
    with torch.no_grad():
        dist, state = policy.act(*step.split(example))
    names = list(policy.act_state_names)
    cfg = model.config.policy
    state_shape = [int(s.shape[0]), "B", int(s.shape[2])] if (s := next(iter(state), None)) is not None else []
    n_obs = len(step.keys)
    delay = int(getattr(model, "action_delay", 0))
    return {
        "format": "recurl-onnx-step/2",
        "recurl_version": __version__,
        "algo": getattr(model, "algo", None),
        "observation_space": space_to_json(obs_space),
        "action_space": space_to_json(act_space),
        "core": cfg.core,
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers,
        "action_delay": delay,
        "default_action": default_action(act_space).tolist() if delay else None,
        # A memoryless core has no state and so no use for is_first: the exporter drops unused inputs.
        "inputs": [*(_describe(n, t) for n, t in zip(obs_input_names(obs_space), example[:n_obs])),
                   *({"name": f"{n}_in", "shape": state_shape, "dtype": "float32"} for n in names),
                   *([{"name": "is_first", "shape": ["B"], "dtype": "float32"}] if names else []),
                   *([{"name": "action_mask", "shape": ["B", step.mask_width], "dtype": "float32"}]
                     if step.masked else []),
                   *([{"name": "noise", "shape": ["B", step.noise_width], "dtype": "float32"}]
                     if step.noise_width else [])],
        "outputs": [_describe("action", step(*example)[0]), *(_describe(k, v) for k, v in dist.outputs().items()),
                    *({"name": f"{n}_out", "shape": state_shape, "dtype": "float32"} for n in names)],
        "state_inputs": [f"{n}_in" for n in names],
        "state_outputs": [f"{n}_out" for n in names],
        "state_shape": state_shape,
        # how a runtime drives a stochastic graph: fresh noise of this law and width every step
        "noise": {"law": "normal" if step.box else "uniform", "width": step.noise_width} if step.noise_width else None,
    }


def export_onnx(model: Any, path: str | Path, opset: int = OPSET, verify: bool = True,
                stochastic: bool = False) -> dict[str, Any]:
    """Write the acting step of ``model`` (a run directory, or a loaded/trained model of any algorithm)
    to the ONNX file ``path``; returns the interface stored in its metadata (see :func:`interface`).

    ``stochastic``: the graph samples its action instead of taking the mode, from a ``noise`` input
    ``[B, k]`` the runtime draws every step (``U(0, 1)`` per component of a discrete action: inverse CDF,
    the autoregressive head's conditionals in turn; ``N(0, 1)`` per dimension of a Box, before clipping).
    Policies only (PPO, BC, Melee imitation); the same noise gives the same action as
    ``dist.sample_with(noise)`` in PyTorch.

    With ``verify`` the file is checked by ``onnx.checker`` and, when onnxruntime is installed, run on a
    random batch and compared with the same step run in PyTorch (over 1e-4 apart raises :class:`RecurlError`).
    """
    try:
        import onnx
    except ImportError:
        raise RecurlError("ONNX export needs the onnx package: pip install 'recurl[export]'") from None
    if isinstance(model, str | Path):
        model = load_model(model, device="cpu")
    policy = copy.deepcopy(model.policy).cpu().eval().requires_grad_(False)
    step = ActStep(policy, model.observation_space, model.action_space, bool(getattr(model, "masked", False)),
                    stochastic).eval()
    if stochastic:
        with torch.no_grad():
            dist, _ = policy.act(*step.split(example_inputs(step, model.observation_space, 1)))
        if not hasattr(dist, "sample_with"):
            raise RecurlError(f"a stochastic graph samples a policy's distribution; the {model.algo} model's acting "
                              "step has none (export it without --stochastic)")
    meta = interface(model, step)
    in_names = [d["name"] for d in meta["inputs"]]
    out_names = [d["name"] for d in meta["outputs"]]
    dyn = {d["name"]: {d["shape"].index("B"): "B"} for d in [*meta["inputs"], *meta["outputs"]]}
    example = example_inputs(step, model.observation_space, batch=2)  # 2: no 1-axis
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
        _verify_runtime(proto.SerializeToString(), step, model.observation_space, in_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return meta


def _verify_runtime(data: bytes, step: ActStep, obs_space: gym.Space, in_names: list[str]) -> None:
    """Run the graph in onnxruntime on a fresh random batch of 3 and compare it with the PyTorch module."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    inputs = example_inputs(step, obs_space, batch=3, seed=1)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: t.numpy() for n, t in zip(in_names, inputs)})
    with torch.no_grad():
        want = step(*inputs)
    err = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
    if err > 1e-4:
        raise RecurlError(f"exported ONNX graph disagrees with the PyTorch policy (max error {err:.2e})")

