"""The recurrent cores: every piece of hidden-state logic in recurl lives in this module.

One protocol, :class:`MemoryCore`, for every core (``lstm``, ``gru``, ``rnn``, the memoryless ``none``,
the parallel-scan cores ``mingru``, ``minlstm`` and ``lru`` of :class:`ScanCore`, and the swamp-tour
article's hard-sigmoid Keras cells):

- ``initial_state(batch)`` returns the zero state, a tuple of tensors each ``[num_layers, B, H]``
  named by ``state_names`` (LSTM: ``("h", "c")``; GRU, RNN, minGRU, minLSTM: ``("h",)``; LRU:
  ``("h_re", "h_im")``, the real and imaginary parts of its complex state; ``none``: ``()``), float32
  on the core's device.
- ``step(x[B, F], state, is_first[B]) -> (y[B, H], state)`` for acting one step at a time (also the
  step that ONNX export traces).
- ``unroll(x[T, B, F], state0, is_first[T, B]) -> (y[T, B, H], state_T)`` for training;
  :meth:`MemoryCore.unroll_truncated` detaches the state every ``bptt`` steps.

``is_first[t, b]`` is true when ``x[t, b]`` is the first observation of an episode. The state entering
that step is replaced by zeros *here and nowhere else*, so no caller can forget a reset, reset twice, or
reset one step late. ``T`` calls of ``step`` and one ``unroll`` give the same outputs, and no gradient
flows from any output at or after a reset to any input before it. :func:`make_core` builds any core.

Speed: :class:`RecurrentCore`'s LSTM and RNN ``unroll`` never loops over time steps in Python. Without a
reset after ``t = 0`` it is one fused library call. With resets inside the window, each column is cut at
its resets into episode segments and the segments run side by side as the columns of one fused call;
segments after a reset start from zeros, so gradients cannot cross the cut by construction (see
``bench/bench_core.py``). An LSTM window that is only trained on (``return_state=False``, PPO's case)
instead keeps its batch and gets a separator step before each reset that zeroes the state exactly
(:meth:`RecurrentCore._unroll_separated`). PyTorch's CPU GRU has no fused kernel, so a GRU on CPU runs
:class:`_FusedGRU` instead: a loop whose only per-step work is the ``h @ W_hh`` recurrence and the
gates, masking the state at resets itself (no segments). :class:`ScanCore`'s recurrences are linear in
the state, so its ``unroll`` is a parallel scan over time (:func:`linear_scan`) with each reset folded
into the scan's decay coefficient; see ``docs/cores.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from recurl.nn.native import gru_kernel

CoreKind = Literal["lstm", "gru", "rnn", "none", "mingru", "minlstm", "lru"]
SCAN_KINDS: tuple[str, ...] = ("mingru", "minlstm", "lru")  # built by ScanCore, the rest by RecurrentCore
CORE_KINDS: tuple[str, ...] = ("lstm", "gru", "rnn", "none", *SCAN_KINDS)
State = tuple[torch.Tensor, ...]
# Measured (docs/cores.md): without resets nn.GRU's C++ loop is ~10% faster from B = 64 up; with resets
# the fused GRU wins at every size (nn.GRU would need the segment layout).
_FUSED_GRU_MAX_BATCH = 32
# The compiled GRU loops' matmul is a plain vectorised loop: MKL's is faster once W_hh outgrows the cache.
_GRU_KERNEL_MAX_HIDDEN = 128
_CELLS = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn": torch.rnn_tanh_cell}
_STATE_NAMES = {"lstm": ("h", "c"), "gru": ("h",), "rnn": ("h",), "none": (), "mingru": ("h",),
                "minlstm": ("h",), "lru": ("h_re", "h_im")}


def state_size(kind: str) -> int:
    """Number of tensors in a core's state: LSTM 2 (h, c), LRU 2 (h_re, h_im), GRU/RNN/minGRU/minLSTM 1
    (h), none 0."""
    return len(_STATE_NAMES[kind])


def reset_state(state: State, is_first: torch.Tensor, dtype: torch.dtype) -> State:
    """Zero each env's state where ``is_first[B]`` is true; ``state`` tensors are ``[L, B, H]``, made
    ``dtype`` (the input's) on the way.

    A multiply rather than ``where`` so that the exported ONNX graph keeps it as one op.
    """
    keep = (~is_first.to(torch.bool)).to(dtype).view(1, -1, 1)
    return tuple(s * keep for s in state)


class MemoryCore(nn.Module):
    """The core protocol. Subclasses set ``kind``, ``input_size``, ``hidden_size``, ``num_layers`` and
    ``state_names``, and implement :meth:`step` and :meth:`unroll` with the reset inside."""

    kind: str
    input_size: int
    hidden_size: int
    num_layers: int
    state_names: tuple[str, ...]

    @property
    def n_state(self) -> int:
        """Number of state tensors (2 for LSTM, 1 for GRU/RNN, 0 for none)."""
        return len(self.state_names)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """Zero state: ``n_state`` tensors of shape ``[num_layers, batch, hidden_size]``, float32."""
        if device is None:
            device = next(self.parameters()).device
        shape = (self.num_layers, batch, self.hidden_size)
        return tuple(torch.zeros(shape, device=device) for _ in range(self.n_state))

    def step(self, x: torch.Tensor, state: State, is_first: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """One step: ``x[B, F]``, ``state`` tensors ``[L, B, H]``, ``is_first[B]`` bool (``None``: no
        episode starts) -> ``(y[B, H], new_state)``."""
        raise NotImplementedError

    def unroll(
        self, x: torch.Tensor, state0: State, is_first: torch.Tensor, return_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        """Run ``T`` steps. ``x[T, B, F]``, ``state0`` tensors ``[L, B, H]``, ``is_first[T, B]`` bool.

        Returns ``(y[T, B, H], state_T)``, where ``state_T`` is the state after the last step.
        ``return_state=False`` says the final state is not needed (a window that is only trained on, as
        in PPO, not continued); it may then come back as ``()``.
        """
        raise NotImplementedError

    def unroll_truncated(
        self, x: torch.Tensor, state0: State, is_first: torch.Tensor, bptt: int
    ) -> tuple[torch.Tensor, State]:
        """:meth:`unroll` with the state detached every ``bptt`` steps (``bptt <= 0``: never), so gradients
        reach back at most ``bptt`` steps while the state itself flows on unchanged."""
        if bptt <= 0 or bptt >= x.shape[0]:
            return self.unroll(x, state0, is_first)
        ys, state = [], state0
        for t0 in range(0, x.shape[0], bptt):
            y, state = self.unroll(x[t0 : t0 + bptt], tuple(s.detach() for s in state), is_first[t0 : t0 + bptt])
            ys.append(y)
        return torch.cat(ys), state

    def _check(self, x: torch.Tensor, state0: State, is_first: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"core expects x of shape [T, B, {self.input_size}], got {tuple(x.shape)}")
        if tuple(is_first.shape) != tuple(x.shape[:2]):
            raise ValueError(f"is_first must be [T, B] = {tuple(x.shape[:2])}, got {tuple(is_first.shape)}")
        if len(state0) != self.n_state:
            raise ValueError(f"{self.kind} state has {self.n_state} tensors, got {len(state0)}")
        want = (self.num_layers, x.shape[1], self.hidden_size)
        for s in state0:
            if tuple(s.shape) != want:
                raise ValueError(f"state tensor must be [layers, B, H] = {want}, got {tuple(s.shape)}")


def chrono_bias(hidden_size: int, horizon: int) -> torch.Tensor:
    """Chrono initialisation (Tallec & Ollivier 2018): keep-gate biases ``log(u)``, ``u ~ U(1, horizon - 1)``,
    so the untrained units' memory timescales (about ``u`` steps) spread over the delays the task has.
    Returns ``[hidden_size]``; ``horizon >= 2``."""
    if horizon < 2:
        raise ValueError(f"chrono horizon must be >= 2 steps, got {horizon}")
    return torch.log(1 + (horizon - 2) * torch.rand(hidden_size))


def keep_gate_bias(hidden_size: int, forget_bias: float, chrono: int) -> torch.Tensor:
    """The initial keep-gate biases ``[hidden_size]``: :func:`chrono_bias` when ``chrono > 0``, else
    ``forget_bias`` for every unit."""
    return chrono_bias(hidden_size, chrono) if chrono else torch.full((hidden_size,), float(forget_bias))


def make_core(kind: str, input_size: int, hidden_size: int, num_layers: int = 1, forget_bias: float = 1.0,
              hard_sigmoid: bool = False, chrono: int = 0, lru_ring: tuple[float, float] = (0.9, 0.999),
              lru_max_phase: float = 2 * math.pi) -> MemoryCore:
    """Build a core by name: :class:`RecurrentCore` (``lstm``, ``gru``, ``rnn``, ``none``), :class:`ScanCore`
    (``mingru``, ``minlstm``, ``lru``), or with ``hard_sigmoid`` the article's :class:`HardSigmoidCore` (one
    ``lstm`` or ``gru`` layer). ``forget_bias`` sets the initial keep gate of lstm, mingru and minlstm;
    ``chrono > 0`` replaces it by :func:`chrono_bias` for delays up to ``chrono`` steps (lstm, gru, mingru,
    minlstm). ``lru_ring`` ``(r_min, r_max)`` and ``lru_max_phase``: the LRU's initial eigenvalues."""
    if kind in SCAN_KINDS and not hard_sigmoid:
        return ScanCore(kind, input_size, hidden_size, num_layers, forget_bias, *lru_ring, lru_max_phase, chrono)
    if hard_sigmoid:
        if kind not in ("lstm", "gru") or num_layers != 1:
            raise ValueError("hard_sigmoid cells exist for a single lstm or gru layer only")
        return HardSigmoidCore(kind, input_size, hidden_size)
    return RecurrentCore(kind, input_size, hidden_size, num_layers, forget_bias, chrono)


class RecurrentCore(MemoryCore):
    """A stack of LSTM, GRU or tanh-RNN layers, or a memoryless MLP layer (``none``) with the same API.

    Args:
        kind: ``"lstm"``, ``"gru"``, ``"rnn"`` or ``"none"``.
        input_size: F, features per step.
        hidden_size: H, units per layer (also the output width).
        num_layers: stacked layers (``none``: stacked Linear+tanh layers, so the baseline has a
            comparable depth and output scale).
        forget_bias: initial LSTM forget-gate bias (1.0: Jozefowicz et al. 2015, Keras's default; larger
            values make the untrained cell remember longer, which long-delay tasks need).
        chrono: if > 0, chrono initialisation for delays up to this many steps instead: the LSTM's forget-gate
            biases from :func:`chrono_bias` and its input-gate biases their negatives; the GRU's update
            (keep) gate biases from :func:`chrono_bias`.
    """

    def __init__(
        self, kind: str, input_size: int, hidden_size: int, num_layers: int = 1, forget_bias: float = 1.0,
        chrono: int = 0,
    ) -> None:
        super().__init__()
        if kind not in CORE_KINDS or kind in SCAN_KINDS:
            rnn_kinds = ", ".join(k for k in CORE_KINDS if k not in SCAN_KINDS)
            raise ValueError(f"unknown core {kind!r} for RecurrentCore: choose one of {rnn_kinds} "
                             f"(make_core builds every kind: {', '.join(CORE_KINDS)})")
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise ValueError("input_size, hidden_size and num_layers must be >= 1")
        self.kind = kind
        self.state_names = _STATE_NAMES[kind]
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        if kind == "none":
            layers: list[nn.Module] = []
            for i in range(num_layers):
                layers += [nn.Linear(input_size if i == 0 else hidden_size, hidden_size), nn.Tanh()]
            self.net: nn.Module = nn.Sequential(*layers)
        else:
            cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
            self.net = cls(input_size, hidden_size, num_layers=num_layers)
            if kind == "lstm" or (kind == "gru" and chrono):  # the GRU keeps PyTorch's init otherwise
                self._init_keep_gates(forget_bias, chrono)

    def _init_keep_gates(self, forget_bias: float, chrono: int) -> None:
        """The cell starts out remembering: the LSTM's forget gate at ``sigmoid(forget_bias)`` (~0.73 rather
        than ~0.5 at 1.0), or both cells' keep gates chrono-initialised. PyTorch's gate order: LSTM
        ``(i, f, g, o)``, GRU ``(r, z, n)``; the hidden-to-hidden bias of the keep gate is zeroed."""
        H = self.hidden_size
        keep = slice(H, 2 * H)  # f for the LSTM, z for the GRU
        with torch.no_grad():
            for name, p in self.net.named_parameters():
                if name.startswith("bias_ih"):
                    bias = keep_gate_bias(H, forget_bias, chrono)
                    p[keep] = bias
                    if chrono and self.kind == "lstm":
                        p[:H] = -bias  # Tallec & Ollivier: input gate = -forget gate
                elif name.startswith("bias_hh"):
                    p[keep] = 0.0
                    if chrono and self.kind == "lstm":
                        p[:H] = 0.0

    # -- acting ---------------------------------------------------------------------------------------
    def step(
        self, x: torch.Tensor, state: State, is_first: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        """One step. ``x[B, F]``, ``state`` as from ``initial_state(B)``, ``is_first[B]`` bool (``None``: no
        episode starts, which skips the reset arithmetic).

        Returns ``(y[B, H], new_state)``. Runs the library's single-step cell kernels
        (``torch.lstm_cell`` and friends) on the same weights, layer by layer: on CPU they cost a fraction
        of a length-1 sequence call (~28 us vs ~140 us at 64 units), and acting is all single steps.
        Under ONNX export it is a length-1 sequence instead, which exports as the native recurrent op.
        """
        if self.kind == "none":
            return self.net(x), ()
        if is_first is not None:
            state = reset_state(state, is_first, x.dtype)  # the reset, inside the core
        if torch.onnx.is_in_onnx_export():
            y, hT = self.net(x.unsqueeze(0), _pack_state(self.kind, state))
            return y.squeeze(0), _unpack_state(self.kind, hT)
        net, cell = self.net, _CELLS[self.kind]
        outs: list[list[torch.Tensor]] = [[] for _ in state]
        for i in range(self.num_layers):
            w = (getattr(net, f"weight_ih_l{i}"), getattr(net, f"weight_hh_l{i}"),
                 getattr(net, f"bias_ih_l{i}"), getattr(net, f"bias_hh_l{i}"))
            if self.kind == "lstm":
                x, c = cell(x, (state[0][i], state[1][i]), *w)
                outs[1].append(c)
            else:
                x = cell(x, state[0][i], *w)
            outs[0].append(x)
        # One layer (the usual case): a view, not a copy, and one op fewer per tensor in the traced step.
        return x, tuple(o[0].unsqueeze(0) if len(o) == 1 else torch.stack(o) for o in outs)

    # -- training -------------------------------------------------------------------------------------
    def unroll(
        self, x: torch.Tensor, state0: State, is_first: torch.Tensor, return_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        """Run ``T`` steps. ``x[T, B, F]``, ``state0`` tensors ``[L, B, H]``, ``is_first[T, B]`` bool.

        Returns ``(y[T, B, H], state_T)``, where ``state_T`` is the state after the last step.
        ``return_state=False`` says the final state is not needed (a window that is only trained on, as
        in PPO, not continued); it may then come back as ``()``, which saves work when there are resets.
        """
        self._check(x, state0, is_first)
        if self.kind == "none":
            return self.net(x), ()
        is_first = is_first.to(torch.bool)
        h0 = reset_state(state0, is_first[0], x.dtype)  # reset at t = 0, inside the core
        resets = x.shape[0] > 1 and bool(is_first[1:].any())
        if self.kind == "gru" and x.device.type == "cpu" and (resets or x.shape[1] <= _FUSED_GRU_MAX_BATCH):
            return self._unroll_fused_gru(x, h0[0], is_first if resets else None)
        if not resets:
            y, hT = self.net(x, _pack_state(self.kind, h0))
            return y, _unpack_state(self.kind, hT)
        if self.kind == "lstm" and not return_state:
            return self._unroll_separated(x, h0, is_first), ()
        return self._unroll_segments(x, h0, is_first, return_state)

    def _unroll_fused_gru(
        self, x: torch.Tensor, h0: torch.Tensor, is_first: torch.Tensor | None, kernel: bool = True
    ) -> tuple[torch.Tensor, State]:
        """GRU layers through :class:`_FusedGRU`: ``x[T, B, F]``, ``h0[L, B, H]`` (already reset at t = 0),
        ``is_first[T, B]`` (``None``: no reset after t = 0) -> ``(y[T, B, H], (h_T[L, B, H],))``.
        ``kernel=False`` runs the torch-op loops even where the compiled ones are available (benchmarks)."""
        keep = None if is_first is None else (~is_first).to(x.dtype).unsqueeze(-1)
        y, finals = x, []
        for i in range(self.num_layers):
            w = [getattr(self.net, f"{name}_l{i}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            y = _FusedGRU.apply(y, h0[i], keep, kernel, *w)
            finals.append(y[-1])
        return y, (torch.stack(finals),)

    def _unroll_separated(self, x: torch.Tensor, h0: State, is_first: torch.Tensor) -> torch.Tensor:
        """LSTM outputs over a window with resets, in one fused call per layer at the window's own batch.

        Before every reset a *separator* step is inserted into the column. Its input is zero except for
        an extra flag feature whose fixed weight (-1e4) shuts the input, forget and output gates: the
        separator leaves ``c = 0`` and ``h = 0``, exactly the zero state the next episode starts from.
        Its gate derivatives ``sigmoid'(-1e4)`` are exactly 0, so no gradient crosses it, and the flag
        weight is a constant, not a parameter. Columns grow by their reset count instead of being split
        into more columns (:meth:`_unroll_segments`), which at PPO's shapes costs ~35% less. The final
        state would sit under the end padding, hence ``return_state=False`` only.
        """
        T, B, F = x.shape
        plan = _separator_plan(is_first.cpu().numpy().tobytes(), T, B, str(x.device))
        H, net = self.hidden_size, self.net
        gates = torch.zeros(4 * H, 1, dtype=x.dtype, device=x.device)
        gates[: 2 * H] = gates[3 * H :] = -1e4  # PyTorch's gate order: input, forget, cell, output
        flag = plan.flag.to(x.dtype).unsqueeze(-1)
        y = x.reshape(T * B, F)
        for i in range(self.num_layers):
            w = torch.cat([getattr(net, f"weight_ih_l{i}"), gates], 1)
            # each layer's input gets the flag too, so the separator resets every layer at the same step
            xs = torch.cat([y.new_zeros(plan.length * B, y.shape[1]).index_copy(0, plan.dst, y), flag], 1)
            out = torch.lstm(xs.view(plan.length, B, -1), (h0[0][i : i + 1], h0[1][i : i + 1]),
                             (w, getattr(net, f"weight_hh_l{i}"), getattr(net, f"bias_ih_l{i}"),
                              getattr(net, f"bias_hh_l{i}")), True, 1, 0.0, self.training, False, False)[0]
            y = out.reshape(plan.length * B, H).index_select(0, plan.dst)
        return y.view(T, B, H)

    def _unroll_segments(
        self, x: torch.Tensor, h0: State, is_first: torch.Tensor, return_state: bool
    ) -> tuple[torch.Tensor, State]:
        """Cut every column at its resets; run all episode segments side by side in one fused call.

        Segment ``k`` becomes column ``k`` of a ``[L, n_seg, F]`` batch (``L`` = longest segment), left
        aligned and zero padded. The first segment of each original column starts from the carried
        state, every later one from zeros, so no gradient can cross a reset. Padded steps come after
        a segment's last real step and never reach an output we keep. This is cheaper than a
        ``PackedSequence`` on CPU, whose backward zero-fills a full gradient buffer per time step.
        """
        T, B, F = x.shape
        seg = _segment_plan(is_first.cpu().numpy().tobytes(), T, B, str(x.device))
        n_seg = seg.n_seg
        x_flat = torch.cat([x.reshape(T * B, F), x.new_zeros(1, F)])  # row T*B is the padding row
        x_pad = x_flat.index_select(0, seg.src).view(seg.max_len, n_seg, F)
        h0_seg = tuple(s.new_zeros(s.shape[0], n_seg, s.shape[2]).index_copy(1, seg.first_seg, s) for s in h0)
        y_pad, h_pad = self.net(x_pad, _pack_state(self.kind, h0_seg))
        y = y_pad.reshape(seg.max_len * n_seg, -1).index_select(0, seg.out_idx).view(T, B, -1)
        if not return_state:
            return y, ()
        # Final state: a column without a reset after t=0 has one segment of length T == max_len, so
        # the padded run's final state is exact. Columns that reset re-run their last segment packed.
        state_T = tuple(s.index_select(1, seg.first_seg) for s in _unpack_state(self.kind, h_pad))
        if seg.reset_cols.numel():
            lengths = T - seg.last_start
            rows = torch.arange(T, device=x.device).unsqueeze(1)
            src_t = (seg.last_start.unsqueeze(0) + rows).clamp(max=T - 1)
            last = x[src_t, seg.reset_cols.unsqueeze(0)] * (rows < lengths.unsqueeze(0)).unsqueeze(-1)
            packed = pack_padded_sequence(last, lengths.cpu(), enforce_sorted=False)
            _, h_last = self.net(packed)
            state_T = tuple(
                s.index_copy(1, seg.reset_cols, hl) for s, hl in zip(state_T, _unpack_state(self.kind, h_last))
            )
        return y, state_T


class _FusedGRU(torch.autograd.Function):
    """One ``nn.GRU`` layer over ``T`` steps with a hand-written backward; the same math as ``nn.GRU``
    (``r, z = sigmoid(.)``, ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = n + z (h - n)``).

    ``forward(x[T, B, F], h0[B, H], keep[T, B, 1] or None, kernel, w_ih[3H, F], w_hh[3H, H], b_ih[3H],
    b_hh[3H])`` -> ``y[T, B, H]``. The input projections and all weight gradients are single matmuls over
    the ``T * B`` rows; only the recurrence runs step by step: in the compiled loops of :mod:`recurl.nn.native` (all
    ``T`` steps in one call; float32, ``H <= 128``), or else in :func:`_gru_forward_loop` /
    :func:`_gru_backward_loop` (torch ops into preallocated buffers). ``keep`` (0 at an episode start)
    multiplies the carried state, and in the backward its gradient, so nothing crosses a reset.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, h0: torch.Tensor,
                keep: torch.Tensor | None, kernel: bool, w_ih: torch.Tensor, w_hh: torch.Tensor,
                b_ih: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
        T, B, F = x.shape
        H = h0.shape[-1]
        gi = torch.addmm(b_ih, x.reshape(T * B, F), w_ih.T).view(T, B, 3 * H)  # every step's input part
        loops = gru_kernel() if kernel and x.dtype == torch.float32 and H <= _GRU_KERNEL_MAX_HIDDEN else None
        ctx.loops = loops
        if loops is None:
            hp, rz, ghn, n, y = _gru_forward_loop(gi, b_hh, w_hh, h0, keep)
        else:
            hp, rz, ghn, n, y = (x.new_empty(T, B, c * H) for c in (1, 2, 1, 1, 1))
            # every tensor whose pointer the kernel gets is held by a name until it returns
            h0c, w_hh_t, b_hh_c = h0.contiguous(), w_hh.T.contiguous(), b_hh.contiguous()
            keep = None if keep is None else keep.contiguous()
            scratch = x.new_empty(B, 3 * H)
            loops.gru_forward(T, B, H, *_ptrs(gi, b_hh_c, w_hh_t, h0c, keep, hp, rz, ghn, n, y, scratch))
        ctx.save_for_backward(x, w_ih, w_hh, keep, hp, rz, ghn, n)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w_ih, w_hh, keep, hp, rz, ghn, n = ctx.saved_tensors
        T, B, F = x.shape
        H = hp.shape[-1]
        dy, loops = dy.contiguous(), ctx.loops
        if loops is None:
            dgh, dgi_n, dh0 = _gru_backward_loop(dy, w_hh, keep, hp, rz, ghn, n)
        else:
            dgh, dgi_n, dh0 = x.new_empty(T, B, 3 * H), x.new_empty(T, B, H), x.new_empty(B, H)
            w_hh_c, g, g_prev = w_hh.contiguous(), x.new_empty(B, H), x.new_empty(B, H)
            loops.gru_backward(T, B, H, *_ptrs(dy, w_hh_c, keep, hp, rz, ghn, n, dgh, dgi_n, dh0, g, g_prev))
        dgi = torch.cat([dgh[..., : 2 * H], dgi_n], -1).view(T * B, 3 * H)
        dgh = dgh.view(T * B, 3 * H)
        return ((dgi @ w_ih).view(T, B, F), dh0, None, None, dgi.T @ x.reshape(T * B, F),
                dgh.T @ hp.view(T * B, H), dgi.sum(0), dgh.sum(0))


def _ptrs(*tensors: torch.Tensor | None) -> list[int | None]:
    """Data pointers for the C kernel (``None`` for an absent ``keep``); every tensor is contiguous, and
    the caller keeps each alive until the call returns (a temporary here would be freed first)."""
    return [None if t is None else t.data_ptr() for t in tensors]


def _gru_forward_loop(gi: torch.Tensor, b_hh: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor,
                      keep: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """``gru_forward`` of ``gru_kernel.c`` in torch ops: ``gi[T, B, 3H]`` (``x W_ih^T + b_ih``), ``h0[B, H]``
    -> ``hp`` (the state each step reads), ``rz[T, B, 2H]``, ``ghn`` (``W_hn hp + b_hn``), ``n``, ``y``."""
    T, B, H3 = gi.shape
    H = H3 // 3
    gh, rz, n = gi.new_empty(T, B, H3), gi.new_empty(T, B, 2 * H), gi.new_empty(T, B, H)
    hy = gi.new_empty(T + 1, B, H)  # [h0, y]: without resets the states read are hy[:-1], no copy
    hy[0] = h0
    hp = hy[:-1] if keep is None else gi.new_empty(T, B, H)
    # per-step views made by unbind in one call: indexing in the loop would cost more than the math
    steps = zip(gi[..., : 2 * H].unbind(0), gi[..., 2 * H :].unbind(0), gh.unbind(0), gh[..., : 2 * H].unbind(0),
                gh[..., 2 * H :].unbind(0), rz.unbind(0), rz[..., :H].unbind(0), rz[..., H:].unbind(0),
                n.unbind(0), hy[1:].unbind(0), hp.unbind(0), _steps_of(keep, T))
    h, w_hh_t = hy[0], w_hh.T
    for gi_rz, gi_n, gh_t, gh_rz, gh_n, rz_t, r, z, n_t, y_t, hp_t, k in steps:
        if k is not None:
            h = torch.mul(h, k, out=hp_t)
        torch.addmm(b_hh, h, w_hh_t, out=gh_t)
        torch.add(gi_rz, gh_rz, out=rz_t).sigmoid_()
        torch.addcmul(gi_n, r, gh_n, out=n_t).tanh_()
        h = torch.lerp(n_t, h, z, out=y_t)  # n + z (h - n)
    return hp, rz, gh[..., 2 * H :], n, hy[1:]


def _gru_backward_loop(dy: torch.Tensor, w_hh: torch.Tensor, keep: torch.Tensor | None, hp: torch.Tensor,
                       rz: torch.Tensor, ghn: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``gru_backward`` of ``gru_kernel.c`` in torch ops -> ``dgh[T, B, 3H]``, ``dgi_n[T, B, H]``,
    ``dh0[B, H]``. Every gate gradient is the step's state gradient ``g_t`` times a coefficient known from
    the forward, so the coefficients are computed for all steps at once and the loop is two ops per step:
    ``G = g_t * c_t`` and ``g_{t-1} = dy_{t-1} + keep_t (G @ [W_hh; I])`` (the identity rows carry
    ``g_t * z_t``)."""
    T, B, H = hp.shape
    r, z = rz[..., :H], rz[..., H:]
    dn = (1 - z) * (1 - n * n)  # d n / d(gi_n), times dL/dn = g (1 - z)
    c = torch.stack([dn * ghn * r * (1 - r), (hp - n) * z * (1 - z), dn * r, z], 2)  # [T, B, 4, H]
    ck = c if keep is None else c * keep.unsqueeze(-1)
    w_aug = torch.cat([w_hh, torch.eye(H, dtype=w_hh.dtype, device=w_hh.device)])  # [4H, H]
    g = dy.new_empty(T + 1, B, H)  # g[t + 1] = dL/dh_t in total; g[0] = dL/dh0
    g[T] = dy[T - 1]
    G = dy.new_empty(B, 4, H)
    steps = list(zip(g[1:].unsqueeze(2).unbind(0), ck.unbind(0), (torch.zeros_like(dy[0]), *dy[:-1].unbind(0)),
                     g[:-1].unbind(0)))
    for g_t, ck_t, dy_prev, g_prev in reversed(steps):
        torch.mul(g_t, ck_t, out=G)
        torch.addmm(dy_prev, G.view(B, 4 * H), w_aug, out=g_prev)
    dgh = (g[1:].unsqueeze(2) * c[:, :, :3]).view(T, B, 3 * H)
    return dgh, g[1:] * dn, g[0]


def _steps_of(keep: torch.Tensor | None, T: int) -> tuple[torch.Tensor | None, ...]:
    return keep.unbind(0) if keep is not None else (None,) * T


def _pack_state(kind: str, state: State) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    return (state[0], state[1]) if kind == "lstm" else state[0]


def _unpack_state(kind: str, h: torch.Tensor | tuple[torch.Tensor, ...]) -> State:
    return tuple(h) if kind == "lstm" else (h,)  # type: ignore[arg-type]


class _Separators(NamedTuple):
    """Index plan of :meth:`RecurrentCore._unroll_separated` for a ``[T, B]`` window."""

    length: int  # T + the most resets after t = 0 in any column
    dst: torch.Tensor  # [T * B]: row of each time-major step in the separated [length * B] layout
    flag: torch.Tensor  # [length * B]: 1.0 on separator rows


@functools.lru_cache(maxsize=32)
def _separator_plan(is_first_bytes: bytes, T: int, B: int, device: str) -> _Separators:
    is_first = torch.frombuffer(bytearray(is_first_bytes), dtype=torch.bool).view(T, B).clone()
    is_first[0] = False  # a reset at t = 0 is the masked initial state, not a separator
    pos = torch.arange(T).unsqueeze(1) + torch.cumsum(is_first.long(), 0)  # [T, B] separated time
    length = int(pos[-1].max()) + 1
    cols = torch.arange(B).expand(T, B)
    flag = torch.zeros(length, B)
    flag[pos[is_first] - 1, cols[is_first]] = 1.0  # the separator sits just before the episode's first step
    return _Separators(length, (pos * B + cols).reshape(-1).to(device), flag.reshape(-1).to(device))


class _Segments(NamedTuple):
    """Index plan that lays the episode segments of a ``[T, B]`` window out as padded columns."""

    n_seg: int
    max_len: int
    src: torch.Tensor  # [max_len * n_seg]: time-major source row of each padded cell (T*B = padding)
    out_idx: torch.Tensor  # [T * B]: padded cell of each time-major source row
    first_seg: torch.Tensor  # [B]: segment index of each column's first segment
    reset_cols: torch.Tensor  # [R]: columns with a reset after t = 0
    last_start: torch.Tensor  # [R]: start time of those columns' last segment


@functools.lru_cache(maxsize=32)
def _segment_plan(is_first_bytes: bytes, T: int, B: int, device: str) -> _Segments:
    """Cached by the flags' content: PPO unrolls the same windows every epoch, actor and critic alike."""
    is_first = torch.frombuffer(bytearray(is_first_bytes), dtype=torch.bool).view(T, B).to(device)
    return _segments(is_first)


def _segments(is_first: torch.Tensor) -> _Segments:
    T, B = is_first.shape
    dev = is_first.device
    starts = is_first.t().clone()  # [B, T]: column-major so each segment is a contiguous run
    starts[:, 0] = True
    flat = starts.reshape(-1)
    seg = torch.cumsum(flat.long(), 0) - 1  # segment id of every (b, t)
    start_idx = torch.nonzero(flat).squeeze(1)
    n_seg = start_idx.numel()
    lengths = torch.diff(start_idx, append=start_idx.new_tensor([B * T]))
    max_len = int(lengths.max())
    pos = torch.arange(B * T, device=dev) - start_idx[seg]
    dst = pos * n_seg + seg  # padded cell of every (b, t)
    b = torch.arange(B, device=dev).repeat_interleave(T)
    t = torch.arange(T, device=dev).repeat(B)
    src = torch.full((max_len * n_seg,), T * B, dtype=torch.long, device=dev)
    src[dst] = t * B + b
    out_idx = torch.empty(T * B, dtype=torch.long, device=dev)
    out_idx[t * B + b] = dst
    reset_cols = torch.nonzero(is_first[1:].any(0)).squeeze(1)
    last_seg = seg.view(B, T)[:, -1]
    last_start = start_idx[last_seg].index_select(0, reset_cols) - reset_cols * T
    return _Segments(n_seg, max_len, src, out_idx, seg.view(B, T)[:, 0], reset_cols, last_start)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras 2.2's ``hard_sigmoid``: ``clip(0.2 x + 0.5, 0, 1)``."""
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


class HardSigmoidCore(MemoryCore):
    """One Keras-2.2 LSTM or GRU layer with hard-sigmoid gates: the swamp-tour article's cells.

    State tensors ``[1, B, H]``; the reset at ``is_first`` happens inside, as in every core. Keras
    initialisation: glorot-uniform kernels, orthogonal recurrent kernels, zero biases, LSTM forget bias 1;
    the GRU is the ``reset_after=False`` variant (the reset gate multiplies the state before the recurrent
    kernel). ``unroll`` is a Python loop over :meth:`_cell`: fine for the article's 32 units, not for speed.
    """

    def __init__(self, kind: str, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if kind not in ("lstm", "gru"):
            raise ValueError(f"hard-sigmoid cells exist for lstm and gru, not {kind!r}")
        self.kind, self.input_size, self.hidden_size, self.num_layers = kind, input_size, hidden_size, 1
        self.state_names = _STATE_NAMES[kind]
        gates = 4 if kind == "lstm" else 3  # Keras gate order: LSTM i, f, c, o; GRU z, r, h
        self.kernel = nn.Parameter(nn.init.xavier_uniform_(torch.empty(input_size, gates * hidden_size)))
        self.recurrent_kernel = nn.Parameter(nn.init.orthogonal_(torch.empty(hidden_size, gates * hidden_size)))
        self.bias = nn.Parameter(torch.zeros(gates * hidden_size))
        if kind == "lstm":
            with torch.no_grad():
                self.bias[hidden_size : 2 * hidden_size] = 1.0

    def _cell(self, xw: torch.Tensor, state: State) -> State:
        """One step from the input part of every gate, ``xw[B, gates * H]``, and ``state`` tensors ``[B, H]``."""
        H, U = self.hidden_size, self.recurrent_kernel
        h = state[0]
        if self.kind == "lstm":
            z = xw + h @ U
            i, f, g, o = hard_sigmoid(z[:, :H]), hard_sigmoid(z[:, H : 2 * H]), z[:, 2 * H : 3 * H], z[:, 3 * H :]
            c = f * state[1] + i * torch.tanh(g)
            return hard_sigmoid(o) * torch.tanh(c), c
        zr = hard_sigmoid(xw[:, : 2 * H] + h @ U[:, : 2 * H])
        z, r = zr[:, :H], zr[:, H:]
        h_hat = torch.tanh(xw[:, 2 * H :] + (r * h) @ U[:, 2 * H :])
        return (z * h + (1 - z) * h_hat,)

    def step(self, x: torch.Tensor, state: State, is_first: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """One step: ``x[B, F]``, ``state`` tensors ``[1, B, H]``, ``is_first[B]`` -> ``(y[B, H], state)``."""
        if is_first is not None:
            state = reset_state(state, is_first, x.dtype)
        new = self._cell(x @ self.kernel + self.bias, tuple(s[0] for s in state))
        return new[0], tuple(s.unsqueeze(0) for s in new)

    def unroll(
        self, x: torch.Tensor, state0: State, is_first: torch.Tensor, return_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        """``x[T, B, F]``, ``state0`` tensors ``[1, B, H]``, ``is_first[T, B]`` -> ``(y[T, B, H], state_T)``."""
        self._check(x, state0, is_first)
        xw = x @ self.kernel + self.bias  # [T, B, gates * H]: the input part of every gate at once
        state = tuple(s[0] for s in state0)
        ys = []
        for t in range(x.shape[0]):
            keep = (~is_first[t].to(torch.bool)).to(x.dtype).unsqueeze(-1)
            state = self._cell(xw[t], tuple(s * keep for s in state))
            ys.append(state[0])
        return torch.stack(ys), tuple(s.unsqueeze(0) for s in state)


# -- parallel-scan cores ----------------------------------------------------------------------------------
def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All ``h_t = a_t * h_{t-1} + b_t`` at once, ``h_{-1} = h0``: ``a``, ``b`` ``[T, ...]`` (real or complex,
    same shape), ``h0`` ``[...]`` -> ``h[T, ...]``.

    A reset is ``a_t = 0``: the carry is then dropped inside the scan and, since the backward pass is the
    same recurrence run backwards with the same ``a``, no gradient reaches anything before ``t`` (exactly
    zero, not small). Odd-even recursive doubling: ``log2(T)`` levels of whole-tensor ops, ``O(T)`` work,
    no Python loop over time steps; the backward saves only ``a``, ``h0`` and ``h``.
    """
    return _LinearScan.apply(a, b, h0)


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor, b: torch.Tensor,
                h0: torch.Tensor) -> torch.Tensor:
        h = torch.empty_like(b)
        _scan_into(a, b, h0, h)
        ctx.save_for_backward(a, h0, h)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a, h0, h = ctx.saved_tensors
        # lam_t = dL/db_t = conj(a_{t+1}) lam_{t+1} + g_t: the same recurrence backwards in time
        c = torch.empty_like(a)
        c[:-1] = a[1:].conj()
        c[-1] = 0  # multiplies lam_T = 0
        lam = torch.empty_like(g)
        _reverse_scan_into(c, g, lam)
        grad_a = torch.empty_like(a)
        torch.mul(lam[1:], h[:-1].conj(), out=grad_a[1:])
        torch.mul(lam[0], h0.conj(), out=grad_a[0])  # Wirtinger convention: conj, a no-op for real tensors
        return grad_a, lam, a[0].conj() * lam[0]


def _scan_into(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, out: torch.Tensor) -> None:
    """Write the scan of ``(a, b)`` from ``h0`` (``None``: zeros) into ``out`` (all ``[T, ...]``, ``out`` may
    be a strided view). Pairs ``(2k, 2k+1)`` compose into one step ``(a_{2k+1} a_{2k}, a_{2k+1} b_{2k} +
    b_{2k+1})``, whose half-length scan gives the odd outputs; each even output is then one step on."""
    T = b.shape[0]
    first = b[0] if h0 is None else torch.addcmul(b[0], a[0], h0)
    if T == 1:
        out[0] = first
        return
    n = T // 2
    a_e, a_o, b_e = a[0 : 2 * n : 2], a[1 : 2 * n : 2], b[0 : 2 * n : 2]
    _scan_into(a_o * a_e, torch.addcmul(b[1 : 2 * n : 2], a_o, b_e), h0, out[1 : 2 * n : 2])
    out[0] = first
    torch.addcmul(b_e[1:], a_e[1:], out[1 : 2 * n - 2 : 2], out=out[2 : 2 * n : 2])
    if T % 2:
        torch.addcmul(b[-1], a[-1], out[-2], out=out[-1])


def _reverse_scan_into(c: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> None:
    """Write ``out_t = c_t * out_{t+1} + g_t`` (``out_T = 0``) into ``out``, all ``[T, ...]``: the mirror of
    :func:`_scan_into`, pairing ``(p, p+1)`` from ``p = T % 2`` (an odd first element is solved last)."""
    T = g.shape[0]
    if T == 1:
        out[0] = g[0]
        return
    o = T % 2
    c_e, c_o, g_o = c[o::2], c[o + 1 :: 2], g[o + 1 :: 2]
    _reverse_scan_into(c_e * c_o, torch.addcmul(g[o::2], c_e, g_o), out[o::2])
    out[-1] = g[-1]
    torch.addcmul(g_o[:-1], c_o[:-1], out[o + 2 :: 2], out=out[o + 1 : T - 1 : 2])
    if o:
        torch.addcmul(g[0], c[0], out[1], out=out[0])


def _g(x: torch.Tensor) -> torch.Tensor:
    """minGRU's positive candidate activation: ``x + 0.5`` for ``x >= 0``, else ``sigmoid(x)``.

    Written as ``relu(x) + sigmoid(min(x, 0))``: the same values, ~25% faster forward and backward on CPU
    than ``torch.where``, whose boolean mask takes a slow path."""
    return torch.relu(x) + torch.sigmoid(x.clamp(max=0))


class _MinRNNLayer(nn.Module):
    """One minGRU or minLSTM layer (Feng et al. 2024, "Were RNNs all we needed?"): every gate reads the
    input only, so ``h_t = a_t * h_{t-1} + b_t`` with ``a``, ``b`` computed for all steps at once.

    minGRU: ``z = sigmoid(W_z x)``, ``a = 1 - z``, ``b = z * g(W_h x)``. minLSTM: ``f, i = sigmoid(W_f x),
    sigmoid(W_i x)`` normalised to ``f / (f + i)`` and ``i / (f + i)`` (so ``h`` stays a convex mixture).
    ``h`` is ``[..., H]``; the layer's output is ``h`` itself.
    """

    def __init__(self, kind: str, input_size: int, hidden_size: int, forget_bias: float, chrono: int) -> None:
        super().__init__()
        self.minlstm = kind == "minlstm"
        self.proj = nn.Linear(input_size, (3 if self.minlstm else 2) * hidden_size)
        # start out remembering, like the LSTM: keep = sigmoid(bias) for minGRU, about that for minLSTM
        bias = keep_gate_bias(hidden_size, forget_bias, chrono)
        with torch.no_grad():
            self.proj.bias[:hidden_size] = bias if self.minlstm else -bias

    def coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x[..., F]`` -> ``(a, b)``, each ``[..., H]``."""
        if self.minlstm:
            f, i, v = self.proj(x).chunk(3, -1)
            w = torch.sigmoid(nn.functional.softplus(-f) - nn.functional.softplus(-i))  # i / (f + i), stably
        else:
            k, v = self.proj(x).chunk(2, -1)
            w = torch.sigmoid(k)
        return 1 - w, w * _g(v)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """``x[B, F]``, ``state = (h[B, H],)`` (already reset) -> ``(y[B, H], (h,))``."""
        a, b = self.coefficients(x)
        h = torch.addcmul(b, a, state[0])
        return h, (h,)

    def unroll(self, x: torch.Tensor, state0: State, keep: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """``x[T, B, F]``, ``state0 = (h[B, H],)``, ``keep[T, B, 1]`` (0 at resets; ``None``: no reset after
        t = 0, ``state0`` already reset) -> ``(y[T, B, H], (h_T,))``."""
        a, b = self.coefficients(x)
        h = linear_scan(a if keep is None else a * keep, b, state0[0])
        return h, (h[-1],)


class _LRULayer(nn.Module):
    """One Linear Recurrent Unit (Orvieto et al. 2023): ``h_t = lambda * h_{t-1} + gamma * (B x_t)``,
    ``y_t = Re(C h_t) + D x_t``, with a complex diagonal ``lambda = exp(-exp(nu) + i exp(theta))``.

    ``|lambda|`` starts uniform on the ring ``[r_min, r_max]`` (near 1: long memory) and ``gamma`` at
    ``sqrt(1 - |lambda|^2)``, which keeps ``h`` at the input's scale. The state is ``H`` complex units,
    carried as two real tensors ``(h_re, h_im)`` so that acting and ONNX see float32 only. Parameters: ``B``
    ``[H, 2, F]`` and ``C`` ``[H, H, 2]`` hold (real, imaginary) pairs.
    """

    def __init__(self, input_size: int, hidden_size: int, r_min: float, r_max: float, max_phase: float) -> None:
        super().__init__()
        n = hidden_size
        u1, u2 = torch.rand(n), torch.rand(n)
        # |lambda|^2 uniform on [r_min^2, r_max^2]: uniform in area over the ring
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        self.nu_log = nn.Parameter(nu_log)
        self.theta_log = nn.Parameter(torch.log(max_phase * u2))
        self.gamma_log = nn.Parameter(0.5 * torch.log1p(-torch.exp(-2 * torch.exp(nu_log))))
        self.B = nn.Parameter(torch.randn(n, 2, input_size) / math.sqrt(2 * input_size))
        self.C = nn.Parameter(torch.randn(hidden_size, n, 2) / math.sqrt(n))
        self.D = nn.Linear(input_size, hidden_size)

    def _coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(lambda_re, lambda_im, gamma)``, each ``[H]``, computed in float64 and rounded once: exp, cos and
        sin differ by a few ulp between PyTorch and ONNX Runtime, and with ``|lambda|`` near 1 an error in
        ``lambda`` adds up over hundreds of steps instead of fading."""
        nu, theta, gamma_log = (p.double() for p in (self.nu_log, self.theta_log, self.gamma_log))
        r, phase = torch.exp(-torch.exp(nu)), torch.exp(theta)
        dtype = self.nu_log.dtype
        return (r * torch.cos(phase)).to(dtype), (r * torch.sin(phase)).to(dtype), torch.exp(gamma_log).to(dtype)

    def _input(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """``x[..., F]`` -> ``gamma * (B x)`` as ``[..., H, 2]`` (real, imaginary); ``gamma`` scales the
        ``[H, 2, F]`` weight rather than the ``[..., H, 2]`` activations (less memory traffic)."""
        w = (self.B * gamma.view(-1, 1, 1)).flatten(0, 1)
        return (x @ w.T).unflatten(-1, (self.C.shape[1], 2))

    def _output(self, x: torch.Tensor, h_pairs: torch.Tensor) -> torch.Tensor:
        """``Re(C h) + D x`` from ``h`` as ``[..., H, 2]`` pairs: ``C_re h_re - C_im h_im``."""
        c = (self.C * self.C.new_tensor([1.0, -1.0])).flatten(1)
        return h_pairs.flatten(-2) @ c.T + self.D(x)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """``x[B, F]``, ``state = (h_re, h_im)`` each ``[B, H]`` (already reset) -> ``(y[B, H], state)``.
        Real arithmetic only: the exported graph needs no complex type."""
        lam_re, lam_im, gamma = self._coefficients()
        bx = self._input(x, gamma)
        h_re, h_im = state
        re = lam_re * h_re - lam_im * h_im + bx[..., 0]
        im = lam_re * h_im + lam_im * h_re + bx[..., 1]
        return self._output(x, torch.stack([re, im], -1)), (re, im)

    def unroll(self, x: torch.Tensor, state0: State, keep: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """``x[T, B, F]``, ``state0 = (h_re, h_im)`` each ``[B, H]``, ``keep[T, B, 1]`` or ``None`` as for
        :class:`_MinRNNLayer` -> ``(y[T, B, H], state_T)``. The scan runs on torch complex tensors."""
        lam_re, lam_im, gamma = self._coefficients()
        b = torch.view_as_complex(self._input(x, gamma))
        lam = torch.complex(lam_re, lam_im)
        a = lam.expand_as(b) if keep is None else lam * keep
        h = linear_scan(a, b, torch.complex(*state0))
        return self._output(x, torch.view_as_real(h)), (h[-1].real, h[-1].imag)


_Mix = Callable[[nn.Module, torch.Tensor, State], tuple[torch.Tensor, State]]


class ScanCore(MemoryCore):
    """A stack of minGRU, minLSTM or LRU layers: recurrences linear in the state, trained by a parallel scan.

    Layers are residual blocks: ``u = mixer(u)`` for the first (whose input is the encoder's, of width F),
    ``u = u + mixer(LayerNorm(u))`` for the others, and between two layers ``u = u + MLP(LayerNorm(u))``
    (H -> 2H, GELU, -> H). One LRU layer is therefore a linear filter of its input (the encoder before it
    and the heads after it are the nonlinear parts); minGRU/minLSTM gates are nonlinear in the input.
    ``step`` and ``unroll`` run the same blocks; ``unroll`` folds each reset into the scan by multiplying
    the decay ``a_t`` by ``1 - is_first_t``.

    Args:
        kind: ``"mingru"``, ``"minlstm"`` or ``"lru"``.
        input_size, hidden_size, num_layers: F, H (units per layer and output width), stacked layers.
        forget_bias: initial keep-gate bias of minGRU/minLSTM (keep ``sigmoid(1) ~ 0.73`` at 1.0).
        r_min, r_max, max_phase: LRU eigenvalue ring and phase range at initialisation.
        chrono: if > 0, minGRU/minLSTM keep-gate biases from :func:`chrono_bias` instead of ``forget_bias``.
    """

    def __init__(self, kind: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 forget_bias: float = 1.0, r_min: float = 0.9, r_max: float = 0.999,
                 max_phase: float = 2 * math.pi, chrono: int = 0) -> None:
        super().__init__()
        if kind not in SCAN_KINDS:
            raise ValueError(f"unknown scan core {kind!r}: choose one of {', '.join(SCAN_KINDS)}")
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise ValueError("input_size, hidden_size and num_layers must be >= 1")
        if not 0 <= r_min < r_max < 1:
            raise ValueError(f"LRU ring needs 0 <= r_min < r_max < 1, got {r_min}, {r_max}")
        self.kind, self.state_names = kind, _STATE_NAMES[kind]
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        H = hidden_size
        sizes = [input_size] + [H] * (num_layers - 1)
        self.mixers = nn.ModuleList(
            _LRULayer(f, H, r_min, r_max, max_phase) if kind == "lru" else _MinRNNLayer(kind, f, H, forget_bias, chrono)
            for f in sizes)
        # between layers only: a residual MLP costs 4 H^2 multiply-adds per step, more than a minGRU layer
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(H), nn.Linear(H, 2 * H), nn.GELU(), nn.Linear(2 * H, H))
            for _ in range(num_layers - 1))
        self.norms = nn.ModuleList(nn.LayerNorm(H) for _ in range(num_layers - 1))  # pre-norm of layers >= 2

    def _blocks(self, x: torch.Tensor, state: State, mix: _Mix) -> tuple[torch.Tensor, State]:
        """Run the residual blocks on ``x[..., F]``; ``mix(layer, u, layer_state)`` runs one mixer (a step
        or an unroll). ``state`` tensors ``[L, B, H]`` -> ``(y[..., H], new state [L, B, H] each)``."""
        u, new = x, []
        for i, mixer in enumerate(self.mixers):
            y, h = mix(mixer, self.norms[i - 1](u) if i else u, tuple(s[i] for s in state))
            u = u + y if i else y
            if i < len(self.mlps):
                u = u + self.mlps[i](u)
            new.append(h)
        return u, tuple(torch.stack(s) for s in zip(*new))

    def step(self, x: torch.Tensor, state: State, is_first: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """One step: ``x[B, F]``, ``state`` tensors ``[L, B, H]``, ``is_first[B]`` bool (``None``: no
        episode starts) -> ``(y[B, H], new_state)``. Plain elementwise ops and matmuls, so it exports."""
        if is_first is not None:
            state = reset_state(state, is_first, x.dtype)  # the reset, inside the core
        return self._blocks(x, state, lambda m, u, h: m.step(u, h))

    def unroll(
        self, x: torch.Tensor, state0: State, is_first: torch.Tensor, return_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        """Run ``T`` steps as one parallel scan per layer. ``x[T, B, F]``, ``state0`` tensors ``[L, B, H]``,
        ``is_first[T, B]`` -> ``(y[T, B, H], state_T)``; the final state is free, so ``return_state`` is moot."""
        self._check(x, state0, is_first)
        is_first = is_first.to(torch.bool)
        keep = None  # no reset after t = 0: the scan needs no mask (two passes fewer over [T, B, H])
        if bool(is_first[1:].any()):
            keep = (~is_first).to(x.dtype).unsqueeze(-1)  # [T, B, 1]: the resets, inside the scan
        return self._blocks(x, reset_state(state0, is_first[0], x.dtype), lambda m, u, h: m.unroll(u, h, keep))
