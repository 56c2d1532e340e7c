"""Action masking with memory: masks from the env's ``action_masks()`` (sb3-contrib) or an ``action_mask``
observation key (PettingZoo), for PPO, R2D2, the Agent and the ONNX graph; an invalid action is never taken."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from recurl import R2D2, Agent, RecurrentPPO, evaluate_policy
from recurl.errors import RecurlError
from recurl.export import export_onnx
from recurl.nn.heads import ActionDist


class RandomMasks(gym.Env):
    """Episodes of 6 steps; at each step a random subset of the 5 actions is valid (at least one). Taking an
    invalid action raises, so any test that runs through it proves no invalid action was ever sent."""

    action_space = gym.spaces.Discrete(5)

    def __init__(self, in_obs: bool = False) -> None:
        self.in_obs = in_obs
        box = gym.spaces.Box(-1, 1, (3,), np.float32)
        self.observation_space = gym.spaces.Dict({"x": box, "action_mask": gym.spaces.MultiBinary(5)}) \
            if in_obs else box
        self.t = 0

    def _new_mask(self) -> None:
        self.mask = self.np_random.random(5) < 0.4
        self.mask[self.np_random.integers(5)] = True

    def _obs(self) -> Any:
        x = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return {"x": x, "action_mask": self.mask.astype(np.int8)} if self.in_obs else x

    def action_masks(self) -> np.ndarray:
        return self.mask.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.t = 0
        self._new_mask()
        return self._obs(), {}

    def step(self, action):
        if not self.mask[int(action)]:
            raise AssertionError(f"invalid action {action} taken (mask {self.mask.astype(int).tolist()})")
        self.t += 1
        self._new_mask()
        return self._obs(), float(action == 4), self.t == 6, False, {}


gym.register("recurl-test/RandomMasks-v0", entry_point=f"{__name__}:RandomMasks")


def _ppo(**kw: Any) -> RecurrentPPO:
    return RecurrentPPO("recurl-test/RandomMasks-v0", num_envs=4, n_steps=12, batch_size=48, seq_len=6,
                        n_epochs=2, seed=0, device="cpu", policy={"hidden_size": 16, **kw.pop("policy", {})}, **kw)


@pytest.mark.parametrize("in_obs", [False, True])
def test_ppo_never_takes_an_invalid_action(in_obs: bool) -> None:
    model = _ppo(env_kwargs={"in_obs": in_obs}, ent_coef=0.05)
    assert model.masked
    model.learn(1_200, progress_bar=False)  # the env raises on any invalid action, in rollouts and evaluation
    evaluate_policy(model, n_episodes=20, deterministic=False)
    evaluate_policy(model, n_episodes=20)


def test_r2d2_never_takes_an_invalid_action_and_bootstraps_on_valid_ones() -> None:
    model = R2D2("recurl-test/RandomMasks-v0", num_envs=4, learning_starts=64, batch_size=8, train_every=4,
                 seq_len=6, overlap=0, burn_in=0, epsilon=0.9, exploration="constant", device="cpu",
                 policy={"hidden_size": 16})
    model.learn(800, progress_bar=False)
    assert model.n_updates > 0 and model.replay.masks is not None
    evaluate_policy(model, n_episodes=20)
    batch = model.replay.sample(8, 0.6, model.device)
    valid_masks = batch.masks[batch.valid.nonzero(as_tuple=True)]
    assert valid_masks.any(-1).all() and not valid_masks.all()  # real masks were stored with the windows


def test_first_epoch_ratio_is_one_with_masks() -> None:
    model = _ppo()
    model._start_collector()
    from recurl.algos.ppo import RolloutBuffer

    buf = RolloutBuffer(model.config, model.obs_conv, (), torch.long, model.device, 5)
    model._collect(buf)
    assert not buf.masks.all()
    seq, states, teacher, _ = model._sequences(buf)
    with torch.no_grad():
        dist, _, _ = model.policy.unroll(seq["obs"], states, seq["is_first"], return_state=False, mask=seq["mask"])
    assert ((dist.log_prob(seq["actions"]) - seq["logp"]).exp() - 1).abs().max() < 1e-5
    _, stats = model._loss(seq, states, teacher, 0.2)
    assert float(stats["clip_fraction"]) == 0.0


def test_masking_keeps_the_valid_actions_relative_probabilities() -> None:
    logits = torch.randn(7, 5)
    mask = torch.rand(7, 5) < 0.5
    mask[:, 2] = True
    full, masked = ActionDist("categorical", logits), ActionDist("categorical", logits, mask=mask)
    p, q = full.logits.exp(), masked.logits.exp()
    assert (q[~mask] == 0).all()
    torch.testing.assert_close(q, torch.where(mask, p / (p * mask).sum(-1, keepdim=True), 0.0))
    assert torch.isfinite(masked.entropy()).all() and torch.isfinite(masked.kl(full)).all()
    assert mask.gather(1, masked.sample().unsqueeze(1)).all() and mask.gather(1, masked.mode().unsqueeze(1)).all()
    multi = ActionDist("multi", torch.randn(7, 5), splits=[2, 3], mask=torch.tensor([[True, False, False, True, True]]))
    assert (multi.sample()[:, 0] == 0).all() and (multi.sample()[:, 1] != 0).all()


def test_agent_and_onnx_take_the_mask_as_input(tmp_path: Path) -> None:
    model = _ppo()
    model.save(tmp_path / "run")
    meta = export_onnx(tmp_path / "run", tmp_path / "m.onnx")
    assert meta["inputs"][-1] == {"name": "action_mask", "shape": ["B", 5], "dtype": "float32"}
    rng = np.random.default_rng(0)
    agents = [Agent.load(tmp_path / "run"), Agent.load(tmp_path / "run", backend="onnx")]
    for a in agents:
        a.reset(8)
        with pytest.raises(RecurlError, match="trained with action masks"):
            a.act(np.zeros((8, 3), np.float32))
    for _ in range(10):
        obs = rng.uniform(-1, 1, (8, 3)).astype(np.float32)
        mask = rng.random((8, 5)) < 0.3
        mask[np.arange(8), rng.integers(0, 5, 8)] = True
        actions = [a.act(obs, action_mask=mask) for a in agents]
        np.testing.assert_array_equal(actions[0], actions[1])
        assert mask[np.arange(8), actions[0]].all()
        pred, _ = model.predict(obs, None, np.ones(8, bool), deterministic=True, action_masks=mask)
        assert mask[np.arange(8), pred].all()


def test_unmasked_baseline_ignores_the_masks() -> None:
    """--action-masks false trains as if the env had none (the comparison masking is measured against)."""
    model = RecurrentPPO("recurl/TMaze-v0", policy={"action_masks": False}, device="cpu")
    assert not model.masked
    with pytest.raises(RecurlError, match="has no action masks"):
        RecurrentPPO("recurl/TMaze-v0", policy={"action_masks": True}, device="cpu")


@pytest.mark.parametrize("algo", ["ppo", "r2d2"])
def test_masked_swamp_tour_never_bumps(algo: str) -> None:
    """The swamp tour's mask_walls option: with masks, no step ever bumps into a wall; without, some do."""
    from recurl.collector import Collector

    bumps = {}
    for masked in (True, False):
        kw = {"env_kwargs": {"mask_walls": masked, "compute_optimal": False}, "num_envs": 8, "device": "cpu"}
        model = (RecurrentPPO("recurl/SwampTour-ruin_2swamp-v0", **kw) if algo == "ppo" else
                 R2D2("recurl/SwampTour-ruin_2swamp-v0", learning_starts=200, batch_size=4, **kw))
        model.learn(400, progress_bar=False)
        col = Collector(model.make_env(8), masks=model.masked)
        col.reset(1, model.policy.initial_act_state(8))
        n = 0
        for _ in range(100):
            dist, state = model._act(col.obs, col.state, col.is_first, col.action_mask)  # R2D2: its epsilon
            step = col.step(dist.sample(), state)
            n += int(np.sum(step.info.get("bump", 0) & step.valid))
        bumps[masked] = n
    assert bumps[True] == 0 and bumps[False] > 0, bumps


def test_masked_tmaze_is_the_cue_alone_for_a_policy() -> None:
    """Through the collector: a random masked PPO policy walks every episode to the junction in exactly
    length + 1 steps and turns there, so its success is the coin flip and nothing else."""
    model = RecurrentPPO("recurl/TMaze-v0", env_kwargs={"length": 12, "max_steps": 13, "mask_actions": True},
                         num_envs=4, batch_size=64, policy={"hidden_size": 8})
    result = evaluate_policy(model, n_episodes=40, deterministic=False)
    assert result["mean_length"] == 13 and 0.2 < result["success_rate"] < 0.8
