"""Swamp-tour env, vector env, solver, render and keyboard play (spec: shared/specs/swamptour.md)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from recurl.envs.swamptour import (
    GOAL,
    TASKS,
    WALL,
    SwampTourEnv,
    SwampTourVectorEnv,
    generate_layout,
    make_config,
    register_swamptour,
)
from recurl.envs.swamptour_solver import optimal_steps, optimum_statistics, revisit_plan, solve
from recurl.play import play

FORWARD, LEFT, RIGHT = 0, 1, 2
OBS_SHAPES = {"open_field": (9, 9), "Tmaze_both": (7, 14)}


@pytest.mark.parametrize("task", TASKS)
def test_check_env_and_spaces(task: str) -> None:
    register_swamptour()
    # Made through the registry so that check_env also tries the other render modes.
    check_env(gym.make(f"recurl/SwampTour-{task}-v0", render_mode="rgb_array").unwrapped)
    env = SwampTourEnv(task)
    obs, info = env.reset(seed=0)
    assert obs.shape == OBS_SHAPES.get(task, (5, 10)) and obs.dtype == np.float32
    assert env.observation_space.contains(obs) and env.action_space.n == 3
    assert info["optimal_steps"] == optimal_steps(env)
    _, _, _, _, info = env.step(FORWARD)
    assert set(info) == {"goal_collected", "bump", "goals_visited", "success"}


@pytest.mark.parametrize("task", ["ruin_2swamp", "many_swamp", "Tmaze_either", "open_field", "silent_ruin"])
def test_vector_env_equals_sync_vector_of_single_envs(task: str) -> None:
    n, seed = 5, 123
    ref = gym.vector.SyncVectorEnv([lambda: SwampTourEnv(task) for _ in range(n)],
                                   autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    vec = SwampTourVectorEnv(n, task)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    assert vec.observation_space == ref.observation_space and vec.action_space == ref.action_space
    out_ref, out_vec = ref.reset(seed=seed), vec.reset(seed=seed)
    rng = np.random.default_rng(0)
    n_resets = 0
    for t in range(400):
        for a, b in zip(out_ref, out_vec, strict=True):
            if isinstance(a, dict):
                assert a.keys() == b.keys(), t
                for key in a:
                    np.testing.assert_array_equal(a[key], b[key], err_msg=f"step {t} info {key}")
                    assert a[key].dtype == b[key].dtype
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"step {t}")
        n_resets += int(out_vec[-1].get("_optimal_steps", np.zeros(n)).sum()) if t else 0
        actions = rng.integers(0, 3, size=n)
        out_ref, out_vec = ref.step(actions), vec.step(actions)
    assert n_resets >= n  # autoresets were exercised


def test_next_step_autoreset_semantics() -> None:
    vec = SwampTourVectorEnv(3, "Tmaze_either", compute_optimal=False)
    vec.reset(seed=0)
    for _ in range(5):  # turning in place times out at t = 5
        _, reward, terminated, truncated, _ = vec.step(np.full(3, LEFT))
    assert truncated.all() and not terminated.any() and np.allclose(reward, -0.2)
    obs, reward, terminated, truncated, info = vec.step(np.full(3, FORWARD))
    assert np.all(reward == 0) and not terminated.any() and not truncated.any()
    assert "bump" not in info  # nothing was stepped
    assert obs[:, :, :5].sum() == 3  # fresh episodes: the goal is visible again


def test_make_vec_and_registration() -> None:
    register_swamptour()
    register_swamptour()  # idempotent
    for task in TASKS:
        assert f"recurl/SwampTour-{task}-v0" in gym.registry
    env = gym.make_vec("recurl/SwampTour-ruin_2swamp-v0", num_envs=16,
                       vectorization_mode="vector_entry_point")
    assert isinstance(env.unwrapped, SwampTourVectorEnv)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (16, 5, 10)
    single = gym.make("recurl/SwampTour-Tmaze_both-v0")
    assert single.reset(seed=0)[0].shape == (7, 14)


def test_seeding_is_reproducible() -> None:
    a, b = SwampTourEnv("ruin_2swamp"), SwampTourEnv("ruin_2swamp")
    np.testing.assert_array_equal(a.reset(seed=7)[0], b.reset(seed=7)[0])
    np.testing.assert_array_equal(a.layout.grid, b.layout.grid)
    layouts = {a.reset()[0].tobytes() for _ in range(20)}
    assert len(layouts) > 10


def test_fixed_layouts() -> None:
    env = SwampTourEnv("silent_ruin")
    env.reset(seed=0)
    grid = env.layout.grid
    assert {tuple(p) for p in np.argwhere(grid == GOAL)[:, ::-1]} == {(2, 0), (1, 2)}
    assert grid[4, 4] == 0 and env.layout.start_pos == (4, 4)
    assert np.count_nonzero(grid == WALL) == 9
    obs, _ = env.reset()
    assert obs[:, :5].sum() == 0  # neither goal is visible from the start
    env = SwampTourEnv("Tmaze_both")
    env.reset(seed=0)
    assert {tuple(p) for p in np.argwhere(env.layout.grid == GOAL)[:, ::-1]} == {(0, 1), (4, 1)}
    env = SwampTourEnv("Tmaze_either")
    sides = []
    for s in range(40):
        env.reset(seed=s)
        goals = [tuple(p) for p in np.argwhere(env.layout.grid == GOAL)[:, ::-1]]
        assert goals in ([(1, 1)], [(3, 1)])
        sides.append(goals[0][0])
    assert 10 < sides.count(1) < 30


def test_random_layouts_follow_the_rules() -> None:
    rng = np.random.default_rng(0)
    for task in ("ruin_2swamp", "many_swamp", "open_field"):
        config = make_config(task)
        for _ in range(50):
            layout = generate_layout(rng, config)
            assert np.count_nonzero(layout.grid == GOAL) == config.n_goal
            assert np.count_nonzero(layout.grid == WALL) == config.n_wall
            x, y = config.start
            assert layout.grid[y, x] == 0
            assert solve(layout, config).steps is not None
    with pytest.raises(TypeError):
        SwampTourEnv("ruin_2swamp", not_an_option=1)
    big = SwampTourEnv("ruin_2swamp", field_size=9, n_goal=3, n_wall=12, max_time=40, sight_size=3)
    obs, info = big.reset(seed=0)
    assert obs.shape == (7, 14) and big.layout.start_pos == (4, 4) and info["optimal_steps"] <= 40


def test_rotation_and_border() -> None:
    env = SwampTourEnv("Tmaze_both")
    first, _ = env.reset(seed=0)
    planes = [first[:, :7], first[:, 7:]]
    # Headings after left turns: left (1), down (2), right (3): rot90 k = 3, 2, 1.
    for k in (3, 2, 1):
        obs, reward, *_ = env.step(LEFT)
        assert reward == pytest.approx(-0.1)
        np.testing.assert_array_equal(obs[:, :7], np.rot90(planes[0], k))
        np.testing.assert_array_equal(obs[:, 7:], np.rot90(planes[1], k))
    # Rows 5, 6 of the view from (2, 3) lie outside the 5x5 field: wall plane 1, goal plane 0.
    assert first[5:, 7:].all() and not first[5:, :7].any()


def test_bump() -> None:
    env = SwampTourEnv("Tmaze_either")
    env.reset(seed=0)
    env.step(LEFT)
    obs, reward, terminated, truncated, info = env.step(FORWARD)
    assert info["bump"] and reward == pytest.approx(-0.2) and not (terminated or truncated)


def test_tmaze_both_teleport_and_visited_goal() -> None:
    env = SwampTourEnv("Tmaze_both")
    first, _ = env.reset(seed=0)
    to_left_goal = [FORWARD, FORWARD, LEFT, FORWARD, FORWARD]
    for a in to_left_goal:
        obs, reward, terminated, truncated, info = env.step(a)
    assert info["goal_collected"] and reward == pytest.approx(1.0) and info["goals_visited"] == 1
    np.testing.assert_array_equal(obs, first)  # teleported: the view is identical to the first one
    for a in to_left_goal:  # the visited goal looks the same, is entered for -0.1 and does not teleport
        obs, reward, terminated, truncated, info = env.step(a)
    assert reward == pytest.approx(-0.1) and not info["goal_collected"] and not terminated
    for a in [LEFT, LEFT, FORWARD, FORWARD, FORWARD]:
        obs, reward, terminated, truncated, info = env.step(a)
    assert not terminated
    obs, reward, terminated, truncated, info = env.step(FORWARD)
    assert terminated and not truncated and info["success"] and reward == pytest.approx(1.0)
    assert revisit_plan(env.layout) == 16


def test_tmaze_either_goal_hidden_from_t2() -> None:
    env = SwampTourEnv("Tmaze_either")
    obs, _ = env.reset(seed=3)
    assert obs[:, :5].sum() == 1
    obs, *_ = env.step(FORWARD)
    assert obs[:, :5].sum() == 1
    for _ in range(3):
        obs, *_ = env.step(FORWARD)
        assert obs[:, :5].sum() == 0


def test_timeout_reward_override_and_flags() -> None:
    env = SwampTourEnv("ruin_1swamp")
    env.reset(seed=0)
    for t in range(10):
        obs, reward, terminated, truncated, info = env.step(LEFT)
        assert reward == pytest.approx(-0.2 if t == 9 else -0.1)
    assert truncated and not terminated and not info["success"]
    env = SwampTourEnv("ruin_1swamp", timeout_terminal=True)
    env.reset(seed=0)
    for _ in range(10):
        obs, reward, terminated, truncated, info = env.step(LEFT)
    assert terminated and not truncated
    # QUIRK: the final goal collected on the last allowed step scores -0.2.
    env = SwampTourEnv("Tmaze_either", max_time=4)
    obs, _ = env.reset(seed=0)
    turn = LEFT if obs[0, 1] == 1 else RIGHT
    for a in (FORWARD, FORWARD, turn, FORWARD):
        obs, reward, terminated, truncated, info = env.step(a)
    assert info["goal_collected"] and info["success"] and terminated and not truncated
    assert reward == pytest.approx(-0.2)


def test_solver_fixed_tasks() -> None:
    for task, steps in (("silent_ruin", 14), ("Tmaze_both", 10), ("Tmaze_either", 4)):
        env = SwampTourEnv(task)
        _, info = env.reset(seed=0)
        assert info["optimal_steps"] == steps


@pytest.mark.parametrize(
    ("task", "n", "mean", "tol"),
    [("ruin_2swamp", 4000, 8.97, 0.2), ("ruin_1swamp", 3000, 4.45, 0.15), ("open_field", 3000, 3.83, 0.1),
     ("many_swamp", 600, 18.6, 0.5)],
)
def test_solver_statistics_match_spec(task: str, n: int, mean: float, tol: float) -> None:
    stats = optimum_statistics(task, n, seed=0)
    assert abs(stats["mean"] - mean) < tol, stats
    if task == "ruin_2swamp":
        assert abs(stats["return_mean"] - 1.31) < 0.03, stats
        assert stats["unfinishable"] < 0.02 and 0.06 < stats["revisit_unfinishable"] < 0.11, stats


def test_render_shapes() -> None:
    for task in ("ruin_2swamp", "open_field", "Tmaze_both"):
        env = SwampTourEnv(task, render_mode="rgb_array")
        env.reset(seed=0)
        img = env.render()
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and img.shape[1] > img.shape[0]
        text = SwampTourEnv(task, render_mode="ansi")
        text.reset(seed=0)
        picture = text.render()
        assert isinstance(picture, str) and "^" in picture
    vec = SwampTourVectorEnv(2, "ruin_2swamp", render_mode="rgb_array")
    vec.reset(seed=0)
    assert len(vec.render()) == 2


def test_play_with_injected_keys() -> None:
    keys = iter(["w", "w", "a", "x", "e", "e"])  # Tmaze_both: walk to the left goal ('x' is rejected)
    shown: list[str] = []
    episodes = play("recurl/SwampTour-Tmaze_both-v0", episodes=2, read_key=lambda _: next(keys, "q"), seed=0,
                    show=shown.append)
    assert len(episodes) == 1
    ep = episodes[0]
    assert ep["actions"] == [0, 0, 1, 0, 0] and len(ep["obs"]) == 6
    assert ep["rewards"][-1] == pytest.approx(1.0) and not any(ep["terminated"])
    assert any("unknown key" in s for s in shown)
    keys = iter(["0"] * 20)
    episodes = play("recurl/SwampTour-Tmaze_either-v0", episodes=1, read_key=lambda _: next(keys), seed=0,
                    show=lambda _: None)
    assert episodes[0]["truncated"][-1] and len(episodes[0]["actions"]) == 5
