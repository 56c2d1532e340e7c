"""One contract for every algorithm (SB3's habit of looping its API tests over all algorithms): the same
constructor, learn that continues, callbacks that stop, same-seed determinism, save/load, predict, export
and the Agent, for PPO, R2D2, BC and SAC; Melee imitation (no env) takes the learning half."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from _shared import SHARED_DATA

from recurl import R2D2, Agent, BehaviourCloning, RecurrentPPO, RecurrentSAC, evaluate_policy, load_model
from recurl.algos.base import Algorithm
from recurl.data.trajectories import write_dataset
from recurl.export import export_onnx
from recurl.record import collect_episodes

TMAZE = "recurl/TMaze-v0"
KW = {"env_kwargs": {"length": 3}, "device": "cpu", "seed": 0}


class _Cue:
    """A perfect scripted T-maze expert: remember the cue, walk, turn."""

    def reset(self, env: gym.Env) -> None:
        self.turn = None

    def act(self, obs: np.ndarray) -> int:
        if self.turn is None:
            self.turn = 1 if obs[0] > 0.5 else 2
        return self.turn if obs[3] > 0.5 else 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    env = gym.make(TMAZE, length=3)
    root = tmp_path_factory.mktemp("d")
    replays = SHARED_DATA / "slp"
    if importlib.util.find_spec("peppi_py") and replays.is_dir():  # beside it, the Melee one
        from recurl.melee.prepare import prepare

        prepare(replays, root / "melee", ruleset="any", progress=False)
    return str(write_dataset(root / "cue-v0", collect_episodes(env, _Cue(), 20), TMAZE, {"length": 3}))


def _ppo(_: str) -> Algorithm:
    return RecurrentPPO(TMAZE, num_envs=2, n_steps=8, batch_size=16, policy={"hidden_size": 16}, **KW)


def _r2d2(_: str) -> Algorithm:
    return R2D2(TMAZE, num_envs=2, learning_starts=16, batch_size=4, train_every=4, seq_len=4, overlap=1,
                burn_in=2, policy={"hidden_size": 16}, **KW)


def _bc(data: str) -> Algorithm:
    return BehaviourCloning(dataset=data, chunk_len=8, batch_size=4, max_epochs=3, patience=5,
                            policy={"hidden_size": 16}, **KW)


def _sac(_: str) -> Algorithm:  # continuous actions: the angle-only pendulum
    return RecurrentSAC("recurl/Pendulum-P-v1", learning_starts=16, batch_size=4, seq_len=4, overlap=1, burn_in=2,
                        policy={"hidden_size": 16, "encoder_hidden": (16,), "head_hidden": (16,)}, device="cpu",
                        seed=0)


def _melee(data: str) -> Algorithm:  # learns from replays alone: no env (tests/test_melee.py checks the rest)
    if not (Path(data).parent / "melee" / "manifest.json").is_file():
        pytest.skip("peppi-py or the shared replays are not available")
    from recurl.algos.melee import MeleeImitation

    policy = {"hidden_size": 16, "encoder_hidden": (16,), "embed_dim": 4, "autoregressive_hidden": 8}
    return MeleeImitation(dataset=str(Path(data).parent / "melee"), character="MARTH", chunk_len=32, batch_size=16,
                          max_epochs=3, patience=5, device="cpu", seed=0, policy=policy,
                          pretrain=False)  # its pooled pretraining: test_melee.py


MAKERS: dict[str, tuple[Callable[[str], Algorithm], int]] = {"ppo": (_ppo, 32), "r2d2": (_r2d2, 48), "bc": (_bc, 6),
                                                             "sac": (_sac, 32), "melee": (_melee, 6)}
ENV_ALGOS = [a for a in MAKERS if a != "melee"]  # the ones that act in an env


def _weights(model: Algorithm) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.policy.state_dict().items()}


@pytest.mark.parametrize("algo", MAKERS)
def test_same_seed_same_weights_and_learn_continues(algo: str, dataset: str) -> None:
    make, steps = MAKERS[algo]
    a, b = make(dataset).learn(steps, progress_bar=False), make(dataset).learn(steps, progress_bar=False)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "same seed, same machine: identical weights"
    before = a.n_updates
    a.learn(steps, progress_bar=False)  # a second call trains more, from where the first stopped
    assert a.n_updates > before and any(not torch.equal(wa[k], v) for k, v in _weights(a).items())


@pytest.mark.parametrize("algo", MAKERS)
def test_callback_stops_training(algo: str, dataset: str) -> None:
    make, steps = MAKERS[algo]
    model, calls = make(dataset), []
    model.learn(steps * 4, callback=lambda m: calls.append(m.n_updates) is not None, progress_bar=False)
    assert len(calls) == 1


@pytest.mark.parametrize("algo", ENV_ALGOS)
def test_save_load_predict_export_agent(algo: str, dataset: str, tmp_path: Path) -> None:
    make, steps = MAKERS[algo]
    model = make(dataset).learn(steps, progress_bar=False)
    model.save(tmp_path / "run")
    loaded = load_model(tmp_path / "run", device="cpu")
    assert type(loaded) is type(model)
    rng = np.random.default_rng(0)
    obs = rng.random((3, *model.observation_space.shape)).astype(np.float32)
    s1 = s2 = None
    for t in range(6):
        start = np.array([t == 0, t == 3, False])
        a1, s1 = model.predict(obs, s1, start, deterministic=True)
        a2, s2 = loaded.predict(obs, s2, start, deterministic=True)
        np.testing.assert_array_equal(a1, a2)
        assert all(np.array_equal(x, y) for x, y in zip(s1, s2))
    assert len(s1) == len(loaded.policy.act_state_names) == 2  # the acting (h, c), for every algorithm
    meta = export_onnx(tmp_path / "run", tmp_path / "m.onnx")
    assert meta["algo"] == algo and meta["state_inputs"] == ["h_in", "c_in"]
    agent = Agent(loaded)
    agent.reset(3)
    first = agent.act(obs)
    np.testing.assert_array_equal(first, loaded.predict(obs, None, np.ones(3, bool), deterministic=True)[0])
    assert evaluate_policy(loaded, n_episodes=4)["episodes"] == 4
