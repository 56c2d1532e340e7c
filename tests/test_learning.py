"""Learning claims, proven with fixed seeds against thresholds, each beside its memoryless baseline.

These train real agents (a minute or two each on 2 CPU cores); `pytest -m "not slow"` skips them.
"""

import pytest

from recurl import RecurrentPPO, evaluate_policy
from recurl.algos import build_config
from recurl.algos.ppo import PPOConfig
from recurl.presets import preset

pytestmark = pytest.mark.slow


def _train(preset_name: str, core: str, **overrides) -> RecurrentPPO:
    _, ov = preset(preset_name)
    ov.update(overrides)
    ov["policy"] = {**ov.get("policy", {}), "core": core}
    return RecurrentPPO(config=build_config(PPOConfig, {**ov, "seed": 0})).learn(progress_bar=False)


@pytest.mark.parametrize("core,check", [("lstm", lambda r: r >= 475), ("none", lambda r: r < 200)])
def test_cartpole_novel_needs_memory(core: str, check) -> None:
    model = _train("cartpole-novel", core)
    assert model.num_timesteps <= 100_000
    ret = evaluate_policy(model, n_episodes=20, seed=123)["mean_return"]
    assert check(ret), f"core {core}: mean return {ret:.1f}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cartpole_novel_fast_stops_held_on_every_seed(seed: int) -> None:
    """The preset stops once solved and held, and the policy it returns stays solved on other episodes:
    on every seed, not only on the seed and CPU it was tuned with (docs/performance.md has sweeps over 80
    seeds: one in 80 still fails)."""
    _, ov = preset("cartpole-novel-fast")
    model = RecurrentPPO(config=build_config(PPOConfig, {**ov, "seed": seed})).learn(progress_bar=False)
    assert model.eval_record["held"] and model.num_timesteps < ov["total_steps"], model.eval_record
    ret = evaluate_policy(model, n_episodes=20, seed=seed + 2000, num_envs=20)["mean_return"]
    assert ret >= 475, f"seed {seed}: the held policy scores {ret:.1f} on 20 other episodes"


def test_tmaze_lstm_remembers_the_cue() -> None:
    model = _train("tmaze", "lstm")
    r = evaluate_policy(model, n_episodes=200, seed=123)
    assert r["success_rate"] >= 0.95 and r["mean_length"] <= 23, r  # optimum 21: 20 steps + the turn


def test_tmaze_memoryless_guesses() -> None:
    model = _train("tmaze", "none")
    r = evaluate_policy(model, n_episodes=200, seed=123)
    assert 0.35 <= r["success_rate"] <= 0.65, r


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lru_carries_the_tmaze_cue_over_250_steps(seed: int) -> None:
    """The memory-length recipe (docs/cores.md) with the best scan core: 250 corridor steps between the cue
    and the turn, on every seed. A memoryless policy scores the coin flip here (the turn is the only
    decision: the masks leave forward as the only move in the corridor)."""
    _, ov = preset("tmaze-250")
    model = RecurrentPPO(config=build_config(PPOConfig, {**ov, "seed": seed})).learn(progress_bar=False)
    assert model.eval_record["held"], model.eval_record
    r = evaluate_policy(model, n_episodes=200, seed=seed + 3000)
    assert r["success_rate"] >= 0.99 and r["mean_length"] == 251, r


def test_tmaze_250_is_a_coin_flip_without_memory() -> None:
    model = _train("tmaze-250", "none", total_steps=100_400)
    r = evaluate_policy(model, n_episodes=200, seed=3000)
    assert 0.35 <= r["success_rate"] <= 0.65, r
