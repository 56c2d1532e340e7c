"""recurl's first tasks: Gymnasium compliance and the facts that make them memory tasks."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import recurl  # noqa: F401  (registers the ids)
from recurl.envs import make_vec_env, resolve_env_id
from recurl.envs.wrappers import PrevActionReward
from recurl.errors import RecurlError


@pytest.mark.parametrize("env_id", ["recurl/CartPoleNoVel-v1", "recurl/TMaze-v0", "recurl/RepeatPrevious-v0"])
def test_check_env(env_id: str) -> None:
    check_env(gym.make(env_id).unwrapped, skip_render_check="CartPole" in env_id)  # its renderer needs pygame


def test_cartpole_novel_drops_velocities_single_and_vector() -> None:
    env = gym.make("recurl/CartPoleNoVel-v1")
    obs, _ = env.reset(seed=1)
    assert obs.shape == (2,)
    full = gym.make("CartPole-v1")
    full_obs, _ = full.reset(seed=1)
    np.testing.assert_array_equal(obs, full_obs[[0, 2]])
    venv = make_vec_env("recurl/CartPoleNoVel-v1", 4)
    vobs, _ = venv.reset(seed=0)
    assert vobs.shape == (4, 2) and venv.single_observation_space.shape == (2,)
    assert gym.spec("recurl/CartPoleNoVel-v1").max_episode_steps == 500


def test_bare_zoo_name_resolves() -> None:
    assert resolve_env_id("CartPoleNoVel-v1") == "recurl/CartPoleNoVel-v1"
    with pytest.raises(RecurlError, match="unknown env id"):
        resolve_env_id("CartPoleNoVel-v9")


@pytest.mark.parametrize("length", [1, 20, 300])
def test_tmaze_cue_only_first_and_success(length: int) -> None:
    env = gym.make("recurl/TMaze-v0", length=length)
    for seed in range(4):
        obs, info = env.reset(seed=seed)
        cue = info["cue"]
        assert obs[cue] == 1 and obs[1 - cue] == 0
        corridor = []
        for _ in range(length):
            obs, r, term, trunc, _ = env.step(0)
            corridor.append(obs.copy())
            assert obs[:2].sum() == 0 and r == 0 and not term
        assert obs[3] == 1  # at the junction
        assert all((o == corridor[0]).all() for o in corridor[:-1])  # the corridor looks the same
        _, r, term, _, info = env.step(1 + cue)
        assert term and r == 1.0 and info["success"]


def test_tmaze_wrong_turn_and_timeout() -> None:
    env = gym.make("recurl/TMaze-v0", length=2, max_steps=5)
    _, info = env.reset(seed=0)
    env.step(0)
    env.step(0)
    _, r, term, trunc, info = env.step(2 - info["cue"])
    assert term and r == -0.1 and not info["success"]
    env.reset(seed=0)
    for _ in range(4):
        assert env.step(1)[1] == 0.0  # turning in the corridor does nothing
    _, _, term, trunc, info = env.step(1)
    assert trunc and not term and not info["success"]


def test_tmaze_lag_penalty_charges_every_step_behind_schedule() -> None:
    """Ni et al.'s shaping: walking straight to the junction costs nothing; each step ending with fewer
    cells walked than steps taken costs the penalty, bumping included; the final turn pays as before."""
    env = gym.make("recurl/TMaze-v0", length=3, max_steps=4, lag_penalty=-0.25)
    _, info = env.reset(seed=0)
    assert [env.step(0)[1] for _ in range(3)] == [0.0, 0.0, 0.0]
    _, r, term, _, info = env.step(1 + info["cue"])
    assert term and r == 1.0 and info["success"]
    _, info = env.reset(seed=0)
    assert env.step(1)[1] == -0.25 and env.step(0)[1] == -0.25  # a turn in the corridor, then one cell behind
    _, r, _, trunc, _ = env.step(0)
    assert r == -0.25
    _, r, _, trunc, _ = env.step(0)  # at the junction after 4 steps: the time limit (length + 1) ends it
    assert r == -0.25 and trunc


def test_tmaze_masks_leave_only_the_turn_to_decide() -> None:
    """With mask_actions, forward is the only valid action in the corridor and the two turns the only ones
    at the junction; without it the env has no action_masks at all (recurl would otherwise mask)."""
    assert not hasattr(gym.make("recurl/TMaze-v0").unwrapped, "action_masks")
    env = gym.make("recurl/TMaze-v0", length=3, max_steps=4, mask_actions=True).unwrapped
    _, info = env.reset(seed=1)
    masks = [env.action_masks().tolist()]
    for _ in range(3):
        env.step(0)
        masks.append(env.action_masks().tolist())
    assert masks == [[True, False, False]] * 3 + [[False, True, True]]
    _, r, term, _, info = env.step(1 + info["cue"])
    assert term and r == 1.0 and info["success"]


def test_repeat_previous_rewards_recall() -> None:
    env = gym.make("recurl/RepeatPrevious-v0", k=2, length=10)
    obs, _ = env.reset(seed=3)
    seen = [int(obs.argmax())]
    total = 0.0
    for t in range(10):
        action = seen[t - 2] if t >= 2 else 0
        obs, r, term, _, _ = env.step(action)
        seen.append(int(obs.argmax()))
        total += r
    assert term and total == pytest.approx(1.0)


def test_prev_action_reward_zeroed_at_episode_start() -> None:
    env = PrevActionReward(make_vec_env("recurl/TMaze-v0", 2, {"length": 1}))
    obs, _ = env.reset(seed=0)
    assert (obs["prev_action"] == 0).all() and (obs["prev_reward"] == 0).all()
    obs, *_ = env.step(np.array([0, 0]))
    np.testing.assert_array_equal(obs["prev_action"], [[1, 0, 0], [1, 0, 0]])
    obs, r, term, trunc, _ = env.step(np.array([1, 2]))  # both at the junction: the episode ends
    np.testing.assert_array_equal(obs["prev_action"], [[0, 1, 0], [0, 0, 1]])
    assert term.all()
    np.testing.assert_allclose(obs["prev_reward"][:, 0], r, rtol=1e-6)
    obs, *_ = env.step(np.array([2, 2]))  # autoreset step: returns first obs with zeroed extras
    assert (obs["prev_action"] == 0).all() and (obs["prev_reward"] == 0).all()
    assert obs["obs"][:, :2].sum() == 2  # the new cue is visible
