"""The recurrent core contract: step == unroll, resets inside the core, no gradient across a reset."""

import pytest
import torch

from recurl.nn.recurrent import CORE_KINDS, RecurrentCore

KINDS = [k for k in CORE_KINDS]


def _random_resets(T: int, B: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(T, B, generator=gen) < p


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("p_reset", [0.0, 0.15, 0.6])
@pytest.mark.parametrize("return_state", [True, False])  # False: the training-only path (LSTM separators)
def test_step_loop_equals_unroll(kind: str, layers: int, p_reset: float, return_state: bool) -> None:
    gen = torch.Generator().manual_seed(hash((kind, layers, p_reset)) % 2**31)
    T, B, F, H = 23, 7, 5, 6
    core = RecurrentCore(kind, F, H, layers).double()
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
    core = RecurrentCore(kind, 4, 8, 2).double()
    x = torch.randn(30, 5, 4, generator=gen, dtype=torch.double)
    is_first = _random_resets(30, 5, 0.1, gen)
    s0 = core.initial_state(5)
    y, sT = core.unroll(x, s0, is_first)
    y1, s1 = core.unroll(x[:13], s0, is_first[:13])
    y2, s2 = core.unroll(x[13:], s1, is_first[13:])
    torch.testing.assert_close(torch.cat([y1, y2]), y)
    for a, b in zip(s2, sT):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("return_state", [True, False])
def test_no_gradient_crosses_a_reset(kind: str, return_state: bool) -> None:
    """d(any output at or after a reset) / d(any input, state or earlier step) is exactly zero."""
    gen = torch.Generator().manual_seed(5)
    T, B = 16, 4
    core = RecurrentCore(kind, 3, 5, 2)
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


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_reset_at_t0_ignores_incoming_state(kind: str) -> None:
    core = RecurrentCore(kind, 3, 4)
    x = torch.randn(5, 2, 3)
    is_first = torch.zeros(5, 2, dtype=torch.bool)
    is_first[0] = True
    junk = tuple(torch.full(s.shape, 7.0) for s in core.initial_state(2))
    y_junk, _ = core.unroll(x, junk, is_first)
    y_zero, _ = core.unroll(x, core.initial_state(2), is_first)
    torch.testing.assert_close(y_junk, y_zero, atol=0, rtol=0)


@pytest.mark.parametrize("return_state", [True, False])
def test_state_leak_across_episodes_is_impossible(return_state: bool) -> None:
    """Episode 2's outputs do not depend on what episode 1 saw, however large its inputs."""
    core = RecurrentCore("lstm", 2, 8)
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
    core = RecurrentCore(kind, 3, 6, 2)
    st = core.initial_state(5)
    assert len(st) == {"lstm": 2, "gru": 1, "rnn": 1, "none": 0}[kind]
    for s in st:
        assert s.shape == (2, 5, 6) and s.dtype == torch.float32
    y, _ = core.step(torch.randn(5, 3), st, torch.zeros(5, dtype=torch.bool))
    assert y.shape == (5, 6)


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
