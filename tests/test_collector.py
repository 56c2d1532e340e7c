"""The collector is the one stepping path: every caller acts the same, env output is checked at the door."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch

from recurl import R2D2, Agent, RecurrentPPO, evaluate_policy
from recurl.collector import ActionQueue, Collector, env_action
from recurl.data.trajectories import load_dataset
from recurl.errors import RecurlError
from recurl.record import record_run


class ShiftedActions(gym.Env):
    """Episodes of 5 steps, ``Discrete(3, start=1)`` actions (an action of 0 is an error), observations
    drawn from the env's own generator. Every executed action is logged; ``bad`` plants bad output."""

    log: ClassVar[list[int]] = []
    observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    action_space = gym.spaces.Discrete(3, start=1)

    def __init__(self, bad: str = "") -> None:
        self.bad, self.t = bad, 0

    def _obs(self) -> np.ndarray:
        obs = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        if self.bad == "nan" and self.t == 3:
            obs[2] = np.nan
        return obs[:3] if self.bad == "shape" and self.t == 2 else obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        if not self.action_space.contains(int(action)):
            raise AssertionError(f"action {action} is outside {self.action_space}")
        ShiftedActions.log.append(int(action))
        self.t += 1
        return self._obs(), float(action == 2), self.t == 5, False, {"success": bool(action == 2)}


gym.register("recurl-test/Shifted-v0", entry_point=f"{__name__}:ShiftedActions")


def _ppo() -> RecurrentPPO:
    return RecurrentPPO("recurl-test/Shifted-v0", num_envs=2, n_steps=8, batch_size=16, seed=0,
                        policy={"hidden_size": 8, "ortho_init": False})


def test_every_caller_maps_actions_alike(tmp_path: Path) -> None:
    """evaluate_policy, recording, the Agent and predict act identically, in the env's own action range."""
    model = _ppo()
    ShiftedActions.log.clear()
    evaluate_policy(model, n_episodes=3, num_envs=1, seed=7)
    by_eval = list(ShiftedActions.log)
    ShiftedActions.log.clear()
    model.save(tmp_path / "run")
    path, _ = record_run(tmp_path / "run", tmp_path / "rec-v0", episodes=3, seed=7)
    by_record = list(ShiftedActions.log)
    recorded = np.concatenate([ep.actions for ep in load_dataset(path).episodes]).tolist()

    env = gym.make("recurl-test/Shifted-v0")
    agent = Agent(model)
    by_agent, by_predict = [], []
    for run in (by_agent, by_predict):
        obs, _ = env.reset(seed=7)
        state, first = None, True
        agent.reset(1)
        for _ in range(15):  # 3 episodes of 5 steps; a single env resets by hand
            if run is by_agent:
                a = agent.act(obs)
            else:
                a, state = model.predict(obs, state, [first], deterministic=True)
            run.append(int(a))
            obs, _, term, _, _ = env.step(a)
            first = bool(term)
            if term:
                obs, _ = env.reset()
                agent.reset(1)
    assert set(by_eval) <= {1, 2, 3} and len(by_eval) == 15
    assert by_eval == by_record == recorded == by_agent == by_predict


def test_training_callers_act_in_the_env_action_range() -> None:
    """PPO rollouts and R2D2 actors sample actions: every one the env receives is valid (it raises otherwise)."""
    ShiftedActions.log.clear()
    _ppo().learn(32, progress_bar=False)
    R2D2("recurl-test/Shifted-v0", num_envs=2, learning_starts=10, batch_size=2, seq_len=3, overlap=0, burn_in=0,
         device="cpu").learn(40, progress_bar=False)
    assert set(ShiftedActions.log) == {1, 2, 3} and len(ShiftedActions.log) >= 60


@pytest.mark.parametrize("bad,match", [("nan", "NaN or infinity at step 3"), ("shape", "failed at step 2")])
def test_bad_env_output_names_the_env_and_the_step(bad: str, match: str) -> None:
    env = gym.vector.SyncVectorEnv([lambda: ShiftedActions(bad)])
    model = _ppo()
    with pytest.raises(RecurlError, match=match) as e:
        evaluate_policy(model, env=env, n_episodes=2)
    assert "ShiftedActions" in str(e.value)


def test_flags_under_next_step_autoreset() -> None:
    """is_first on the observation after an end (the autoreset step's return); valid false on that step;
    finished episodes carry their return and length."""
    col = Collector(gym.vector.SyncVectorEnv([ShiftedActions]))
    col.reset(0, ())
    firsts, valids, finished = [], [], []
    for _ in range(12):
        firsts.append(bool(col.is_first[0]))
        step = col.step(torch.tensor([1]))  # policy action 1 = env action 2: reward 1 per step
        valids.append(bool(step.valid[0]))
        finished += list(zip(step.episode_returns, step.episode_lengths))
    assert firsts == [True, False, False, False, False, False, True, False, False, False, False, False]
    assert valids == [True] * 5 + [False] + [True] * 5 + [False]
    assert finished == [(5.0, 5), (5.0, 5)] and col.stats.summary()["rollout/success_rate"] == 1.0


def test_action_mapping_and_delay_queue() -> None:
    assert env_action(gym.spaces.Discrete(3, start=-1), torch.tensor([0, 2])).tolist() == [-1, 1]
    assert env_action(gym.spaces.MultiDiscrete([2, 3], start=[1, 5]), np.array([[1, 2]])).tolist() == [[2, 7]]
    assert env_action(gym.spaces.Box(-1, 1, (1,)), np.array([[3.0]])).tolist() == [[1.0]]
    q = ActionQueue(gym.spaces.Discrete(4, start=1), n_envs=2, delay=2)
    out = [q(np.array([a, 10 + a]), np.array([t == 0 or t == 3, t == 0])).tolist() for t, a in enumerate(range(6))]
    # env 0 restarts at t = 3: two default actions again; env 1 runs each choice two steps late throughout
    assert out == [[1, 1], [1, 1], [0, 10], [1, 11], [1, 12], [3, 13]]
