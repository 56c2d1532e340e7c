"""Third-party memory suites by id: every POPGym task and MiniGrid's Memory tasks train, evaluate, save, load,
export and act on the env's own observations. Each suite's tests skip when its extra is not installed
(``pip install 'recurl[popgym]'`` / ``'recurl[minigrid]'``; ``.[test]`` installs both).
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import recurl
from recurl.cli import main
from recurl.envs import SUITES, make_vec_env, resolve_env_id
from recurl.envs.wrappers import FlattenObs, flatten_obs, flatten_space
from recurl.errors import RecurlError
from recurl.export import export_onnx, obs_input_names
from recurl.nn.encoders import ObsEncoder
from recurl.obs import ObsConverter

# The suites' own notices, not recurl's: POPGym's mazes warn that they are weak memory benchmarks, and
# Gymnasium's passive checker that POPGym reuses its info dicts between steps.
pytestmark = [pytest.mark.filterwarnings("ignore:Maze environments have been shown:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*share an object:UserWarning")]

#: one task of each suite, run by default; the sweep over the rest is marked slow
FAST = ("popgym-AutoencodeEasy-v0", "MiniGrid-MemoryS7-v0")
MINIGRID_MEMORY = ("MiniGrid-MemoryS7-v0", "MiniGrid-MemoryS9-v0", "MiniGrid-MemoryS11-v0", "MiniGrid-MemoryS13-v0",
                   "MiniGrid-MemoryS13Random-v0", "MiniGrid-MemoryS17Random-v0")


def _suite(env_id: str) -> str:
    return next(pkg for prefix, pkg in SUITES.items() if env_id.startswith(prefix))


def _need(env_id: str) -> None:
    """Skip, saying which extra to install, unless the suite of ``env_id`` is installed."""
    pkg = _suite(env_id)
    pytest.importorskip(pkg, reason=f"{pkg} is not installed: pip install 'recurl[{pkg}]'")


def _popgym_ids() -> list[str]:
    """Every id POPGym registers; without POPGym, the fast one alone (its test then skips)."""
    try:
        importlib.import_module("popgym")
    except ModuleNotFoundError:
        return [FAST[0]]
    return sorted(k for k in gym.registry if k.startswith("popgym-"))


def _params(ids: list[str] | tuple[str, ...]) -> list[Any]:
    return [pytest.param(i, marks=() if i in FAST else pytest.mark.slow) for i in ids]


@pytest.mark.parametrize("env_id", _params(_popgym_ids()) + _params(MINIGRID_MEMORY))
def test_suite_task_end_to_end(env_id: str, tmp_path: Path) -> None:
    _need(env_id)
    model = recurl.RecurrentPPO(env_id, num_envs=2, n_steps=8, batch_size=16, n_epochs=1,
                                policy={"core": "gru", "hidden_size": 16}).learn(16, progress_bar=False)
    assert recurl.evaluate_policy(model, n_episodes=2, num_envs=2)["episodes"] == 2
    model.save(tmp_path / "run")
    loaded = recurl.load_model(tmp_path / "run", device="cpu")
    assert loaded.observation_space == model.observation_space  # the space the policy sees, as saved
    meta = export_onnx(loaded, tmp_path / "agent.onnx")
    assert [d["name"] for d in meta["inputs"] if d["name"].startswith("obs")] == \
        obs_input_names(loaded.observation_space)
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)  # the env's own observation: a tuple, or a dict with a text mission
    agent = recurl.Agent(loaded)
    agent.reset(1)
    action = agent.act(obs)
    assert env.action_space.contains(np.asarray(action, env.action_space.dtype))
    env.step(action)
    env.close()


@pytest.mark.parametrize("env_id,names", [(FAST[0], ["obs.0", "obs.1"]), (FAST[1], ["obs.direction", "obs.image"])])
def test_flat_inputs_by_name_and_onnx_agent_on_raw_obs(env_id: str, names: list[str]) -> None:
    _need(env_id)
    model = recurl.RecurrentPPO(env_id, num_envs=2, n_steps=8, batch_size=16, n_epochs=1,
                                policy={"core": "gru", "hidden_size": 16})
    assert obs_input_names(model.observation_space) == names
    env = gym.make(env_id)
    obs, _ = env.reset(seed=1)
    action, _ = model.predict(obs, deterministic=True)
    agent = recurl.Agent(model, backend="onnx")
    agent.reset(1)
    np.testing.assert_array_equal(agent.act(obs), action)
    env.close()


def test_popgym_registers_every_task() -> None:
    pytest.importorskip("popgym", reason="popgym is not installed: pip install 'recurl[popgym]'")
    assert len(_popgym_ids()) == 48, "42 without the 6 mazes: install popgym's navigation extra (mazelib)"


def test_prev_action_reward_on_a_tuple_task() -> None:
    """The flattening comes last, so the wrapped observation is flat too."""
    _need(FAST[0])
    env = make_vec_env(FAST[0], 2, prev_action_reward=True)
    assert list(env.single_observation_space.spaces) == ["obs.0", "obs.1", "prev_action", "prev_reward"]
    obs, _ = env.reset(seed=0)
    assert env.single_observation_space.contains({k: v[0] for k, v in obs.items()})
    env.close()


def test_cli_trains_a_popgym_task(tmp_path: Path) -> None:
    _need("popgym-RepeatPreviousEasy-v0")
    run = tmp_path / "run"
    assert main(["train", "--env", "popgym-RepeatPreviousEasy-v0", "--core", "gru", "--hidden-size", "16",
                 "--num-envs", "2", "--n-steps", "8", "--batch-size", "16", "--n-epochs", "1", "--total-steps", "16",
                 "--eval-episodes", "2", "--quiet", "--run-dir", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["env"] == "popgym-RepeatPreviousEasy-v0"


def test_module_prefix_imports_only_where_typed() -> None:
    _need("popgym-RepeatPreviousEasy-v0")
    assert resolve_env_id("popgym:popgym-RepeatPreviousEasy-v0", allow_import=True) == "popgym-RepeatPreviousEasy-v0"
    model = recurl.RecurrentPPO("popgym:popgym-RepeatPreviousEasy-v0", num_envs=1, n_steps=8, batch_size=8)
    assert model.config.env == "popgym-RepeatPreviousEasy-v0"  # config.json will name no module
    with pytest.raises(RecurlError, match="names a module to import"):  # e.g. from a hand-edited config.json
        make_vec_env("popgym:popgym-RepeatPreviousEasy-v0", 1)


def test_missing_suite_or_module_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SUITES, "NoSuite-", "recurl_no_such_suite")
    with pytest.raises(RecurlError, match=r"pip install 'recurl\[recurl_no_such_suite\]'"):
        resolve_env_id("NoSuite-Task-v0")
    with pytest.raises(RecurlError, match="which is not installed"):
        resolve_env_id("recurl_no_such_module:Task-v0", allow_import=True)


def test_flattening_tuple_nested_dict_and_text() -> None:
    """What the vector env presents, and what predict / the Agent accept: no suite needed."""
    space = gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Dict(
        {"pos": gym.spaces.Box(-1, 1, (2,)), "mission": gym.spaces.Text(8)})))
    flat = flatten_space(space)
    assert list(flat.spaces) == ["0", "1.pos"]
    raw = (2, {"pos": np.zeros(2, np.float32), "mission": "go left"})
    assert set(flatten_obs(raw)) == {"0", "1.pos"}
    conv = ObsConverter(flat)
    obs, n, batched = conv.check(raw)
    assert n == 1 and not batched and set(obs) == {"0", "1.pos"}
    batch = (np.array([0, 2]), {"pos": np.zeros((2, 2), np.float32), "mission": ("a", "b")})  # a vector env's
    assert conv.check(batch)[1:] == (2, True)
    with pytest.raises(RecurlError, match="observation must be a dict with keys"):
        conv.check((1,))
    with pytest.raises(RecurlError, match="nothing recurl can encode"):
        FlattenObs(gym.vector.SyncVectorEnv([_TextOnly]))


class _TextOnly(gym.Env):
    observation_space = gym.spaces.Dict({"mission": gym.spaces.Text(4)})
    action_space = gym.spaces.Discrete(2)


def test_minigrid_image_codes_are_scaled_by_their_real_bounds() -> None:
    """MiniGrid declares its symbolic image up to 255; the codes stop at 10 (object), 5 (colour), 2 (state).
    The image encoder divides by the declared bound, so without the tight bounds every code would lie in
    [0, 0.04]; pixel images keep 1/255."""
    _need(FAST[1])
    env = make_vec_env(FAST[1], 2)
    space = env.single_observation_space
    np.testing.assert_array_equal(space["image"].high[0, 0], [10, 5, 2])
    obs, _ = env.reset(seed=0)
    for _ in range(20):
        assert space.contains({k: v[0] for k, v in obs.items()})
        obs, *_ = env.step(env.action_space.sample())
    cnn = ObsEncoder(space).leaves[sorted(space.spaces).index("image")]
    np.testing.assert_allclose(cnn.scale[0, 0].numpy(), [1 / 10, 1 / 5, 1 / 2], rtol=1e-6)
    pixels = ObsEncoder(gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)).leaves[0]
    assert float(pixels.scale.max()) == float(pixels.scale.min()) == pytest.approx(1 / 255)
    env.close()


def test_popgym_report_keeps_each_budget_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/popgym_suite.py: a task also trained at a longer budget gets a row of its own, never averaged
    with the grid's runs (the table the docs publish)."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    suite = importlib.import_module("popgym_suite")

    def run(core: str, seed: int, budget: int, score: float) -> dict[str, Any]:
        return {"task": "CountRecall", "core": core, "seed": seed, "budget": budget, "recipe": suite.recipe_id(),
                "mean_return": score, "train_s": 60.0, "eval_s": 1.0, "machine": "test"}

    runs = [run("gru", 0, suite.STEPS, -0.5), run("none", 0, suite.STEPS, -0.9), run("gru", 0, 5_000_000, -0.1),
            run("gru", 1, 5_000_000, -0.2)]
    table = suite.report({"runs": {str(i): r for i, r in enumerate(runs)}}).splitlines()
    grid = next(line for line in table if line.startswith("| CountRecall |"))
    longer = next(line for line in table if line.startswith("| CountRecall, 5M steps |"))
    assert "**-0.50** (1 seed" in grid and grid.endswith("| +0.40 |")
    assert "**-0.15** (-0.20 to -0.10, 2 seeds" in longer and "not run" in longer and longer.endswith("| - |")


def test_popgym_records_the_papers_best_training_mean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """bench/popgym_suite.py: MMER is the highest ``rollout/ep_rew_mean`` logged (rows before the first
    finished episode have none), shown only where every seed of a cell has it."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    suite = importlib.import_module("popgym_suite")
    (tmp_path / "progress.csv").write_text("env_steps,rollout/ep_rew_mean\n2048,\n4096,-0.4\n6144,0.25\n8192,0.1\n")
    assert suite.best_training_mean(tmp_path) == 0.25
    (tmp_path / "progress.csv").write_text("env_steps,rollout/ep_rew_mean\n2048,\n")
    assert suite.best_training_mean(tmp_path) is None

    def run(core: str, seed: int, best: float | None) -> dict[str, Any]:
        return {"task": "CountRecall", "core": core, "seed": seed, "budget": suite.STEPS, "recipe": suite.recipe_id(),
                "mean_return": -0.5, "train_s": 60.0, "eval_s": 1.0, "machine": "test", "best_train_mean": best}

    runs = [run("gru", 0, 0.1), run("gru", 1, 0.3), run("lstm", 0, 0.2), run("lstm", 1, None)]
    row = next(line for line in suite.report({"runs": {str(i): r for i, r in enumerate(runs)}}).splitlines()
               if line.startswith("| CountRecall |"))
    gru, lstm = row.split(" | ")[1:3]
    assert "MMER +0.20" in gru and "MMER" not in lstm


def test_grids_side_by_side_keep_every_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """bench/results_file.py: two grids recording into one results file at once (one per core, as the docs'
    runs were made) lose none of each other's runs."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    results_file = importlib.import_module("results_file")
    path = tmp_path / "results.json"
    ctx = multiprocessing.get_context("fork")  # the children only write files: no re-import
    start = ctx.Barrier(2)  # both write at once, not one after the other's start-up
    procs = [ctx.Process(target=_record_many, args=(str(path), name, start)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(results_file.load_results(path)["runs"]) == sorted(f"{n}{i}" for n in "ab" for i in range(200))


def _record_many(path: str, name: str, start: Any) -> None:
    record_result = importlib.import_module("results_file").record_result
    start.wait()
    for i in range(200):
        record_result(Path(path), f"{name}{i}", {"score": i})
