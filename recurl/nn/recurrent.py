"""The recurrent cores: every piece of hidden-state logic in recurl lives in this module.

One protocol, :class:`MemoryCore`, for every core (``lstm``, ``gru``, ``rnn``, the memoryless ``none``,
and the swamp-tour article's hard-sigmoid Keras cells):

- ``initial_state(batch)`` returns the zero state, a tuple of tensors each ``[num_layers, B, H]``
  named by ``state_names`` (LSTM: ``("h", "c")``; GRU and RNN: ``("h",)``; ``none``: ``()``), float32
  on the core's device.
- ``step(x[B, F], state, is_first[B]) -> (y[B, H], state)`` for acting one step at a time (also the
  step that ONNX export traces).
- ``unroll(x[T, B, F], state0, is_first[T, B]) -> (y[T, B, H], state_T)`` for training;
  :meth:`MemoryCore.unroll_truncated` detaches the state every ``bptt`` steps.

``is_first[t, b]`` is true when ``x[t, b]`` is the first observation of an episode. The state entering
that step is replaced by zeros *here and nowhere else*, so no caller can forget a reset, reset twice, or
reset one step late. ``T`` calls of ``step`` and one ``unroll`` give the same outputs, and no gradient
flows from any output at or after a reset to any input before it. :func:`make_core` builds any core.

Speed: :class:`RecurrentCore`'s ``unroll`` never loops over time steps in Python. Without a reset after
``t = 0`` it is one fused library call. With resets inside the window, each column is cut at its resets
into episode segments and the segments run side by side as the columns of one fused call; segments after
a reset start from zeros, so gradients cannot cross the cut by construction (see
``bench/bench_core.py``). An LSTM window that is only trained on (``return_state=False``, PPO's case)
instead keeps its batch and gets a separator step before each reset that zeroes the state exactly
(:meth:`RecurrentCore._unroll_separated`).
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

CoreKind = Literal["lstm", "gru", "rnn", "none"]
CORE_KINDS: tuple[str, ...] = ("lstm", "gru", "rnn", "none")
State = tuple[torch.Tensor, ...]
_CELLS = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn": torch.rnn_tanh_cell}
_STATE_NAMES = {"lstm": ("h", "c"), "gru": ("h",), "rnn": ("h",), "none": ()}


def state_size(kind: str) -> int:
    """Number of tensors in a core's state: LSTM 2 (h, c), GRU/RNN 1 (h), none 0."""
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


def make_core(kind: str, input_size: int, hidden_size: int, num_layers: int = 1, forget_bias: float = 1.0,
              hard_sigmoid: bool = False) -> MemoryCore:
    """Build a core by name: :class:`RecurrentCore` (``lstm``, ``gru``, ``rnn``, ``none``), or with
    ``hard_sigmoid`` the article's :class:`HardSigmoidCore` (one ``lstm`` or ``gru`` layer)."""
    if hard_sigmoid:
        if kind not in ("lstm", "gru") or num_layers != 1:
            raise ValueError("hard_sigmoid cells exist for a single lstm or gru layer only")
        return HardSigmoidCore(kind, input_size, hidden_size)
    return RecurrentCore(kind, input_size, hidden_size, num_layers, forget_bias)


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
    """

    def __init__(
        self, kind: str, input_size: int, hidden_size: int, num_layers: int = 1, forget_bias: float = 1.0
    ) -> None:
        super().__init__()
        if kind not in CORE_KINDS:
            raise ValueError(f"unknown core {kind!r}: choose one of {', '.join(CORE_KINDS)}")
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
            if kind == "lstm":
                # The cell starts out remembering (forget gate sigmoid(1) ~ 0.73 rather than ~0.5).
                with torch.no_grad():
                    for name, p in self.net.named_parameters():
                        if name.startswith("bias_ih"):
                            p[hidden_size : 2 * hidden_size].fill_(forget_bias)
                        elif name.startswith("bias_hh"):
                            p[hidden_size : 2 * hidden_size].zero_()

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
        return x, tuple(torch.stack(o) for o in outs)

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
        if x.shape[0] == 1 or not bool(is_first[1:].any()):
            y, hT = self.net(x, _pack_state(self.kind, h0))
            return y, _unpack_state(self.kind, hT)
        if self.kind == "lstm" and not return_state:
            return self._unroll_separated(x, h0, is_first), ()
        return self._unroll_segments(x, h0, is_first, return_state)

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
