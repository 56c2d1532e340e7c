"""The policy builds for every supported space, and rejects the rest with one clear error."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from recurl.errors import RecurlError
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
    pol = RecurrentPolicy(obs_space, act_space, PolicyConfig(core="gru", hidden_size=8, encoder_hidden=(8,)))
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
        torch.testing.assert_close(d1.params, dist.params[t], atol=1e-6, rtol=0)
        torch.testing.assert_close(d2.params, d1.params, atol=1e-6, rtol=0)
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
