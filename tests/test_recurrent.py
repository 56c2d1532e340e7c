"""The recurrent core contract, for every core kind (the scan cores included): step == unroll, resets
inside the core, no gradient across a reset, outputs independent of padding."""

import pytest
import torch

from recurl.nn import native, recurrent
from recurl.nn.recurrent import CORE_KINDS, RecurrentCore, linear_scan, make_core, state_size

KINDS = [k for k in CORE_KINDS]
STATEFUL = [k for k in CORE_KINDS if k != "none"]


def _random_resets(T: int, B: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(T, B, generator=gen) < p


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("p_reset", [0.0, 0.15, 0.6])
@pytest.mark.parametrize("return_state", [True, False])  # False: the training-only path (LSTM separators)
def test_step_loop_equals_unroll(kind: str, layers: int, p_reset: float, return_state: bool) -> None:
    gen = torch.Generator().manual_seed(hash((kind, layers, p_reset)) % 2**31)
    T, B, F, H = 23, 7, 5, 6
    core = make_core(kind, F, H, layers).double()
    x = torch.randn(T, B, F, generator=gen, dtype=torch.double)
    is_first = _random_resets(T, B, p_reset, gen)
    state0 = tuple(torch.randn(s.shape, generator=gen, dtype=torch.double) for s in core.initial_state(B))
    y, state_T = core.unroll(x, state0, is_first, return_state)
    state, ys = state0, []
    for t in range(T):
        out, state = core.step(x[t], state, is_first[t])
        ys.append(out)
    torch.testing.assert_close(torch.stack(ys), y, atol=1e-10, rtol=0)
    if return_state:
        assert len(state) == len(state_T) == core.n_state
        for a, b in zip(state, state_T):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_unroll_split_into_chunks_equals_whole(kind: str) -> None:
    """Carrying state_T into the next unroll is the same as one long unroll (truncated BPTT chunks)."""
    gen = torch.Generator().manual_seed(3)
    core = make_core(kind, 4, 8, 2).double()
    x = torch.randn(30, 5, 4, generator=gen, dtype=torch.double)
    is_first = _random_resets(30, 5, 0.1, gen)
    s0 = core.initial_state(5)
    y, sT = core.unroll(x, s0, is_first)
    y1, s1 = core.unroll(x[:13], s0, is_first[:13])
    y2, s2 = core.unroll(x[13:], s1, is_first[13:])
    torch.testing.assert_close(torch.cat([y1, y2]), y)
    for a, b in zip(s2, sT):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", STATEFUL)
@pytest.mark.parametrize("return_state", [True, False])
def test_no_gradient_crosses_a_reset(kind: str, return_state: bool) -> None:
    """d(any output at or after a reset) / d(any input, state or earlier step) is exactly zero."""
    gen = torch.Generator().manual_seed(5)
    T, B = 16, 4
    core = make_core(kind, 3, 5, 2)
    x = torch.randn(T, B, 3, generator=gen, requires_grad=True)
    state0 = tuple(torch.randn(s.shape, generator=gen).requires_grad_() for s in core.initial_state(B))
    is_first = torch.zeros(T, B, dtype=torch.bool)
    resets = {0: 6, 1: 1, 2: 11, 3: 15}  # column -> reset time
    for b, t in resets.items():
        is_first[t, b] = True
    is_first[9, 0] = True  # a second reset in column 0
    y, _ = core.unroll(x, state0, is_first, return_state)
    for b, t in resets.items():
        g_x, *g_s = torch.autograd.grad(y[t:, b].sum(), [x, *state0], retain_graph=True)
        assert torch.count_nonzero(g_x[:t, b]) == 0, f"gradient leaked across the reset at t={t}, b={b}"
        assert all(torch.count_nonzero(g[:, b]) == 0 for g in g_s)
        # and the gradient after the reset is real
        assert torch.count_nonzero(g_x[t:, b]) > 0
        # other columns are untouched by column b's outputs
        others = [c for c in range(B) if c != b]
        assert torch.count_nonzero(g_x[:, others]) == 0


@pytest.mark.parametrize("kind", STATEFUL)
def test_reset_at_t0_ignores_incoming_state(kind: str) -> None:
    core = make_core(kind, 3, 4)
    x = torch.randn(5, 2, 3)
    is_first = torch.zeros(5, 2, dtype=torch.bool)
    is_first[0] = True
    junk = tuple(torch.full(s.shape, 7.0) for s in core.initial_state(2))
    y_junk, _ = core.unroll(x, junk, is_first)
    y_zero, _ = core.unroll(x, core.initial_state(2), is_first)
    torch.testing.assert_close(y_junk, y_zero, atol=0, rtol=0)


@pytest.mark.parametrize("kind", STATEFUL)
@pytest.mark.parametrize("return_state", [True, False])
def test_state_leak_across_episodes_is_impossible(kind: str, return_state: bool) -> None:
    """Episode 2's outputs do not depend on what episode 1 saw, however large its inputs."""
    core = make_core(kind, 2, 8)
    ep2 = torch.randn(6, 1, 2)
    is_first = torch.zeros(10, 1, dtype=torch.bool)
    is_first[0] = is_first[4] = True
    outs = []
    for _ in range(2):
        x = torch.cat([torch.randn(4, 1, 2) * 1000, ep2])  # different first episodes, saturated gates
        y, _ = core.unroll(x, core.initial_state(1), is_first, return_state)
        outs.append(y[4:])
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_state_shapes_and_dtypes(kind: str) -> None:
    core = make_core(kind, 3, 6, 2)
    st = core.initial_state(5)
    assert len(st) == state_size(kind) == {"lstm": 2, "gru": 1, "rnn": 1, "none": 0, "mingru": 1, "minlstm": 1,
                                           "lru": 2}[kind]
    for s in st:
        assert s.shape == (2, 5, 6) and s.dtype == torch.float32
    y, _ = core.step(torch.randn(5, 3), st, torch.zeros(5, dtype=torch.bool))
    assert y.shape == (5, 6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("return_state", [True, False])
def test_outputs_do_not_depend_on_padding(kind: str, return_state: bool) -> None:
    """Junk steps after the window and junk columns beside it (how batches are padded) change no real output."""
    gen = torch.Generator().manual_seed(7)
    T, B, F = 12, 3, 4
    core = make_core(kind, F, 5, 2).double()
    x = torch.randn(T, B, F, generator=gen, dtype=torch.double)
    is_first = _random_resets(T, B, 0.2, gen)
    y, _ = core.unroll(x, tuple(s.double() for s in core.initial_state(B)), is_first, return_state)
    x_pad = torch.randn(T + 5, B + 2, F, generator=gen, dtype=torch.double) * 100
    x_pad[:T, :B] = x
    first_pad = _random_resets(T + 5, B + 2, 0.5, gen)
    first_pad[:T, :B] = is_first
    s_pad = tuple(s.double() for s in core.initial_state(B + 2))
    y_pad, _ = core.unroll(x_pad, s_pad, first_pad, return_state)
    torch.testing.assert_close(y_pad[:T, :B], y, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(17, 4, 6, 8), (33, 9, 66, 64)])
@pytest.mark.parametrize("loops", ["compiled", "torch ops"])
@pytest.mark.parametrize("p_reset", [0.0, 0.2])
def test_cpu_gru_matches_nn_gru_values_and_gradients(p_reset: float, loops: str, shape: tuple[int, ...],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused CPU GRU (RecurrentCore's gru unroll) against nn.GRU's own kernel (no resets) or a loop of
    torch.gru_cell steps (resets): outputs, final state and every gradient within 1e-5 in float32, with
    the compiled time loops of recurl/nn/gru_kernel.c and with their torch-op fallback."""
    if loops == "compiled" and native.gru_kernel() is None:
        pytest.skip(f"the GRU kernel did not build here: {native.unavailable_reason}")
    if loops == "torch ops":
        monkeypatch.setattr(recurrent, "gru_kernel", lambda: None)
    gen = torch.Generator().manual_seed(11)
    T, B, F, H = shape
    core = RecurrentCore("gru", F, H, 2)
    x = torch.randn(T, B, F, generator=gen, requires_grad=True)
    h0 = torch.randn(2, B, H, generator=gen, requires_grad=True)
    is_first = _random_resets(T, B, p_reset, gen)
    dy = torch.randn(T, B, H, generator=gen)
    y, (hT,) = core.unroll(x, (h0,), is_first)
    grads = torch.autograd.grad((y * dy).sum() + hT.sum(), [x, h0, *core.parameters()])
    if p_reset:
        state, ys = (h0,), []
        for t in range(T):
            out, state = core.step(x[t], state, is_first[t])
            ys.append(out)
        y_ref, hT_ref = torch.stack(ys), state[0]
    else:
        y_ref, hT_ref = core.net(x, h0)
    ref = torch.autograd.grad((y_ref * dy).sum() + hT_ref.sum(), [x, h0, *core.parameters()])
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(hT, hT_ref, atol=1e-5, rtol=0)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("T", [1, 2, 5, 8, 13])
def test_linear_scan_matches_the_recurrence_and_its_gradient(T: int, complex_: bool) -> None:
    """The scan the scan cores train with: values, and gradients by finite differences (gradcheck)."""
    gen = torch.Generator().manual_seed(T)
    dtype = torch.cdouble if complex_ else torch.double
    keep = torch.rand(T, 3, 2, generator=gen) > 0.25
    a = (torch.rand(T, 3, 2, generator=gen, dtype=torch.double) * keep).to(dtype).requires_grad_()
    b = torch.randn(T, 3, 2, generator=gen, dtype=dtype).requires_grad_()
    h0 = torch.randn(3, 2, generator=gen, dtype=dtype).requires_grad_()
    h, ref = h0, []
    for t in range(T):
        h = a[t] * h + b[t]
        ref.append(h)
    torch.testing.assert_close(linear_scan(a, b, h0), torch.stack(ref), atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(linear_scan, (a, b, h0))


def test_bad_shapes_are_named() -> None:
    core = RecurrentCore("gru", 3, 4)
    with pytest.raises(ValueError, match="x of shape"):
        core.unroll(torch.randn(5, 2, 4), core.initial_state(2), torch.zeros(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_first"):
        core.unroll(torch.randn(5, 2, 3), core.initial_state(2), torch.zeros(5, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="state tensor"):
        core.unroll(torch.randn(5, 2, 3), core.initial_state(3), torch.zeros(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown core"):
        RecurrentCore("transformer", 3, 4)
    with pytest.raises(ValueError, match="unknown core"):
        RecurrentCore("mingru", 3, 4)  # a scan kind: make_core builds it


# -- initialisations for long delays ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lstm", "gru", "mingru", "minlstm"])
def test_chrono_init_spreads_the_keep_gates_over_the_horizon(kind: str) -> None:
    torch.manual_seed(0)
    T, H = 1000, 256
    core = make_core(kind, 3, H, num_layers=2 if kind in ("lstm", "gru") else 1, chrono=T)
    if kind in ("lstm", "gru"):
        for layer in range(2):
            b_ih, b_hh = getattr(core.net, f"bias_ih_l{layer}"), getattr(core.net, f"bias_hh_l{layer}")
            keep = b_ih[H:2 * H]
            assert torch.all(b_hh[H:2 * H] == 0)
            if kind == "lstm":  # Tallec & Ollivier: the input gate opens as much as the forget gate keeps
                assert torch.equal(b_ih[:H], -keep) and torch.all(b_hh[:H] == 0)
    else:
        bias = core.mixers[0].proj.bias[:H]
        keep = bias if kind == "minlstm" else -bias  # minGRU's gate is the update z = 1 - keep
    timescale = torch.exp(keep.detach())  # sigmoid(b) = u / (1 + u): memory of about u steps
    assert timescale.min() >= 1 - 1e-6 and timescale.max() <= T - 1 + 1e-3
    assert timescale.max() > 0.9 * T and timescale.median() > 0.3 * T  # uniform on [1, T - 1]
    plain = make_core(kind, 3, H, forget_bias=2.0)  # chrono 0: forget_bias as before
    if kind == "lstm":
        assert torch.all(plain.net.bias_ih_l0[H:2 * H] == 2.0)


def test_lru_ring_and_phase_set_the_initial_eigenvalues() -> None:
    torch.manual_seed(0)
    core = make_core("lru", 4, 128, lru_ring=(0.99, 0.9999), lru_max_phase=0.3)
    lam_re, lam_im, gamma = core.mixers[0]._coefficients()
    modulus, phase = torch.sqrt(lam_re**2 + lam_im**2), torch.atan2(lam_im, lam_re)
    assert modulus.min() >= 0.99 - 1e-6 and modulus.max() <= 0.9999 + 1e-6
    assert phase.min() >= 0 and phase.max() <= 0.3 + 1e-6
    torch.testing.assert_close(gamma, torch.sqrt(1 - modulus**2), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="ring"):
        make_core("lru", 4, 8, lru_ring=(0.999, 0.99))
    with pytest.raises(ValueError, match=">= 2"):
        make_core("mingru", 4, 8, chrono=1)
