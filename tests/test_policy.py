"""The policy builds for every supported space, and rejects the rest with one clear error."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from recurl.errors import RecurlError
from recurl.nn.heads import inverse_cdf
from recurl.nn.policy import PolicyConfig, RecurrentPolicy
from recurl.obs import ObsConverter

SPACES = {
    "box": gym.spaces.Box(-1, 1, (5,), np.float32),
    "image": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
    "discrete": gym.spaces.Discrete(7),
    "multidiscrete": gym.spaces.MultiDiscrete([3, 4]),
    "multibinary": gym.spaces.MultiBinary(6),
    "dict": gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,), np.float32), "room": gym.spaces.Discrete(4),
                             "frame": gym.spaces.Box(0, 255, (1, 12, 12), np.uint8)}),
}
ACTIONS = {
    "discrete": gym.spaces.Discrete(3),
    "multidiscrete": gym.spaces.MultiDiscrete([2, 5]),
    "box": gym.spaces.Box(-2, 2, (2,), np.float32),
    "autoregressive": gym.spaces.MultiDiscrete([2, 5, 3]),  # with a residual core, too
}


@pytest.mark.parametrize("obs_name", SPACES)
@pytest.mark.parametrize("act_name", ACTIONS)
def test_every_space_steps_and_unrolls(obs_name: str, act_name: str) -> None:
    """For every space: T steps (training step, and actor-only act) equal one unroll over distinct
    observations with an episode start inside the window, in every row."""
    obs_space, act_space = SPACES[obs_name], ACTIONS[act_name]
    obs_space.seed(0)
    act_space.seed(0)
    torch.manual_seed(0)
    chain = act_name == "autoregressive"
    pol = RecurrentPolicy(obs_space, act_space, PolicyConfig(core="gru", hidden_size=8, encoder_hidden=(8,),
                                                             autoregressive=chain, residual=chain))
    conv = ObsConverter(obs_space)
    T, B = 5, 3
    rows = [gym.vector.utils.concatenate(obs_space, [obs_space.sample() for _ in range(B)],
                                         gym.vector.utils.create_empty_array(obs_space, B)) for _ in range(T)]
    steps = [conv.to_torch(r, "cpu") for r in rows]
    obs_seq = {k: torch.stack([o[k] for o in steps]) for k in steps[0]} if isinstance(steps[0], dict) \
        else torch.stack(steps)
    is_first = torch.zeros(T, B, dtype=torch.bool)
    is_first[0] = True
    is_first[3, 1] = True  # a new episode inside the window, in one row
    dist, value, state = pol.unroll(obs_seq, pol.initial_state(B), is_first)
    a = dist.sample()
    assert value.shape == (T, B) and dist.log_prob(a).shape == (T, B) and dist.entropy().shape == (T, B)
    s, s_act = pol.initial_state(B), pol.initial_act_state(B)
    for t in range(T):
        d1, v1, s = pol.step(steps[t], s, is_first[t])
        d2, s_act = pol.act(steps[t], s_act, is_first[t])
        torch.testing.assert_close(v1, value[t], atol=1e-6, rtol=0)
        torch.testing.assert_close(d1.log_prob(a[t]), dist.log_prob(a)[t], atol=1e-5, rtol=0)
        torch.testing.assert_close(d2.log_prob(a[t]), d1.log_prob(a[t]), atol=1e-6, rtol=0)
        torch.testing.assert_close(d1.mode(), dist.mode()[t])
    for x, y in zip(s.actor + s.critic, state.actor + state.critic):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


@pytest.mark.parametrize("space", [gym.spaces.Text(5), gym.spaces.Tuple((gym.spaces.Discrete(2),)),
                                   gym.spaces.MultiDiscrete([[2, 3], [4, 5]])])
def test_unsupported_observation_space_is_one_clear_error(space: gym.Space) -> None:
    with pytest.raises(RecurlError, match="unsupported observation space"):
        RecurrentPolicy(space, gym.spaces.Discrete(2), PolicyConfig())


def test_unsupported_action_space_is_one_clear_error() -> None:
    with pytest.raises(RecurlError, match="unsupported action space"):
        RecurrentPolicy(SPACES["box"], gym.spaces.Text(3), PolicyConfig())


def test_image_encoder_is_a_cnn_and_scales_pixels() -> None:
    pol = RecurrentPolicy(SPACES["image"], ACTIONS["discrete"], PolicyConfig())
    assert any(isinstance(m, torch.nn.Conv2d) for m in pol.modules())
    assert "obs" not in pol.norms  # images are scaled by 1/255, not running-normalised


def test_shared_core_has_one_core_and_half_the_state() -> None:
    shared = RecurrentPolicy(SPACES["box"], ACTIONS["discrete"], PolicyConfig(shared_core=True))
    separate = RecurrentPolicy(SPACES["box"], ACTIONS["discrete"], PolicyConfig())
    assert (len(shared.initial_state(2).actor), len(shared.initial_state(2).critic)) == (2, 0)
    assert (len(separate.initial_state(2).actor), len(separate.initial_state(2).critic)) == (2, 2)
    assert len(shared.initial_act_state(2)) == len(separate.initial_act_state(2)) == 2


def test_autoregressive_head_is_one_joint_distribution() -> None:
    """The chain's log_prob is an exact joint distribution (sums to 1 over every action), sampling draws from
    it, the mode is the greedy chain, masks give invalid components probability 0, KL(p || p) = 0."""
    torch.manual_seed(0)
    space = gym.spaces.MultiDiscrete([2, 3, 4])
    pol = RecurrentPolicy(gym.spaces.Box(-1, 1, (3,), np.float32), space,
                          PolicyConfig(core="none", hidden_size=8, encoder_hidden=(8,), autoregressive=True))
    x = torch.randn(2, 3)
    dist, _ = pol.act(x, pol.initial_act_state(2), None)
    every = torch.tensor(np.stack(np.meshgrid(*[np.arange(n) for n in space.nvec], indexing="ij"), -1).reshape(-1, 3))
    p = torch.stack([dist.log_prob(a.expand(2, 3)) for a in every]).exp()  # [24, 2]
    torch.testing.assert_close(p.sum(0), torch.ones(2))
    draws = torch.stack([dist.sample() for _ in range(2000)])  # [2000, 2, 3]
    codes = (draws * torch.tensor([12, 4, 1])).sum(-1)
    freq = torch.stack([(codes[:, b, None] == torch.arange(24)).float().mean(0) for b in range(2)], -1)
    assert (freq - p.detach()).abs().max() < 0.05
    a0 = dist.conditional(0, []).argmax(-1)
    a1 = dist.conditional(1, [a0]).argmax(-1)
    assert torch.equal(dist.mode()[:, :2], torch.stack([a0, a1], -1))
    assert torch.allclose(dist.kl(dist), torch.zeros(2), atol=1e-6)
    many, _ = pol.act(x.repeat(2000, 1), pol.initial_act_state(4000), None)  # rows alternate the two inputs
    # noise-driven sampling (the stochastic ONNX graph) draws the same law
    codes = (many.sample_with(torch.rand(4000, 3)) * torch.tensor([12, 4, 1])).sum(-1).view(2000, 2)
    freq = torch.stack([(codes[:, b, None] == torch.arange(24)).float().mean(0) for b in range(2)], -1)
    assert (freq - p.detach()).abs().max() < 0.05
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[:, 2 + 0] = False  # component 1 may not be 0
    masked, _ = pol.act(torch.randn(2, 3), pol.initial_act_state(2), None, mask)
    assert (torch.stack([masked.sample() for _ in range(300)])[..., 1] != 0).all()
    with pytest.raises(RecurlError, match="autoregressive"):
        RecurrentPolicy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(3), PolicyConfig(autoregressive=True))
    with pytest.raises(RecurlError, match="residual"):
        PolicyConfig(residual=True, hidden_size=16, encoder_hidden=(8,))


@pytest.mark.parametrize("fields, message", [
    ({"chrono": 1}, "chrono must be 0"), ({"chrono": -3}, "--chrono"),
    ({"lru_r_min": 0.999, "lru_r_max": 0.99}, "must be below"), ({"lru_r_max": 1.0}, "lru-r-max"),
    ({"lru_max_phase": 0.0}, "lru-max-phase"),
])
def test_long_memory_initialisations_are_checked(fields: dict, message: str) -> None:
    with pytest.raises(RecurlError, match=message):
        PolicyConfig(**fields)


def test_chrono_and_the_lru_ring_reach_the_policy_core() -> None:
    torch.manual_seed(0)
    space = gym.spaces.Box(-1, 1, (3,))
    pol = RecurrentPolicy(space, gym.spaces.Discrete(2),
                          PolicyConfig(core="lru", lru_r_min=0.995, lru_r_max=0.9995, lru_max_phase=0.1))
    lam_re, lam_im, _ = pol.actor.core.mixers[0]._coefficients()
    assert torch.sqrt(lam_re**2 + lam_im**2).min() >= 0.995 - 1e-6
    lstm = RecurrentPolicy(space, gym.spaces.Discrete(2), PolicyConfig(chrono=500))
    assert lstm.actor.core.net.bias_ih_l0[64:128].max() > 5  # log(u), u up to 499


def test_inverse_cdf_is_the_categorical_quantile_without_a_clamp() -> None:
    probs = torch.tensor([0.2, 0.0, 0.5, 0.3])  # category 1 can never be drawn
    logp = probs.log().expand(7, 4)
    u = torch.tensor([0.0, 0.1999, 0.2001, 0.6999, 0.7001, 0.99999, 1.0 - 1e-9])[:, None]
    assert inverse_cdf(logp, u).tolist() == [0, 0, 2, 2, 3, 3, 3]
    # rounding can leave the last cumulative sum below u: the draw stays in range, the last category
    short = torch.log(torch.tensor([0.5, 0.49999]))
    assert inverse_cdf(short.expand(1, 2), torch.tensor([[0.999999]])).tolist() == [1]
    u = torch.rand(40_000, 1, generator=torch.Generator().manual_seed(0))
    draws = inverse_cdf(probs.log().expand(40_000, 4), u)
    np.testing.assert_allclose(np.bincount(draws.numpy(), minlength=4) / 40_000, probs.numpy(), atol=0.01)
