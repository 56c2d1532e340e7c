"""Deployment: the stateful Agent runtime and the ONNX export with explicit state.

Parity: the exported graph, stepped by onnxruntime through whole episodes with resets, matches the
PyTorch policy's acting step (actions, logits / mean and log_std, every state tensor) within 1e-5 for
LSTM, GRU, RNN and the scan cores (minGRU, minLSTM, LRU) with discrete and continuous actions; the
Agent matches it too, and so do R2D2's Q-network and a behaviour-cloned policy with an action delay. A
trained T-maze agent, exported, solves the maze in a process that never imports torch or recurl.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from recurl import Agent, RecurrentPPO
from recurl.cli import main
from recurl.errors import RecurlError
from recurl.export import export_onnx

ort = pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


def _tiny_run(tmp_path: Path, env: str, core: str, env_kwargs: dict | None = None, **policy: object) -> Path:
    """An untrained model with random weights and random normaliser statistics, saved as a run dir."""
    model = RecurrentPPO(env, env_kwargs=env_kwargs or {}, num_envs=2, n_steps=8, batch_size=16,
                         prev_action_reward=bool(policy.pop("prev_action_reward", False)),
                         policy={"core": core, "ortho_init": False, **policy})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for norm in model.policy.norms.values():  # so a normaliser missing from the graph would show
            norm.mean.copy_(torch.rand(norm.mean.shape, generator=gen))
            norm.var.copy_(0.2 + 2 * torch.rand(norm.var.shape, generator=gen))
        if model.policy.pi.log_std is not None:
            model.policy.pi.log_std.normal_(0.0, 0.5, generator=gen)
    run = tmp_path / f"{core}_{env.replace('/', '_')}"
    model.save(run)
    return run


def _max_err(a: np.ndarray, b: torch.Tensor) -> float:
    assert a.shape == tuple(b.shape), (a.shape, tuple(b.shape))
    return float(np.abs(a - b.detach().numpy()).max()) if a.size else 0.0


def _parity(run: Path, onnx_path: Path, steps: int, batch: int = 4, seed: int = 0) -> float:
    """Step env episodes with the ONNX graph, the PyTorch policy and the Agent side by side.

    Observations come from real envs (NEXT_STEP autoreset gives ``is_first`` after every episode end),
    plus random extra resets. Returns the largest absolute difference seen.
    """
    meta = export_onnx(run, onnx_path)
    model = Agent.load(run)
    pol, space = model.policy, model.action_space
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    in_names = [d["name"] for d in meta["inputs"]]
    out_names = [d["name"] for d in meta["outputs"]]
    env = RecurrentPPO.load(run, device="cpu").make_env(batch)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    state = pol.initial_act_state(batch)
    onnx_state = [s.numpy() for s in state]
    agent_state = model.initial_state(batch)
    is_first = np.ones(batch, bool)
    worst = 0.0
    for _ in range(steps):
        leaves = obs if isinstance(obs, dict) else {"obs": obs}
        feed = {("obs" if k == "obs" and not isinstance(obs, dict) else f"obs.{k}"): np.asarray(v)
                for k, v in leaves.items()}
        feed.update(zip(meta["state_inputs"], onnx_state))
        if "is_first" in in_names:
            feed["is_first"] = is_first.astype(np.float32)
        got = dict(zip(out_names, sess.run(None, feed)))
        with torch.inference_mode():
            dist, state = pol.act(model._obs_conv.to_torch(obs, model.device), state, torch.as_tensor(is_first))
        agent_action, agent_state = model.act(obs, agent_state, is_first)
        if dist.kind == "gaussian":
            want_action = np.clip(dist.params.numpy(), space.low, space.high)
            worst = max(worst, _max_err(got["mean"], dist.params),
                        _max_err(got["log_std"], dist.log_std.expand_as(dist.params)),
                        float(np.abs(got["action"] - want_action).max()),
                        float(np.abs(agent_action - want_action).max()))
        else:
            worst = max(worst, _max_err(got["logits"], dist.logits))
            np.testing.assert_array_equal(got["action"], dist.mode().numpy())
            np.testing.assert_array_equal(agent_action, got["action"])
        for name, s in zip(meta["state_outputs"], state):
            worst = max(worst, _max_err(got[name], s))
        for a, s in zip(agent_state, state):
            worst = max(worst, float((a - s).abs().max()))
        onnx_state = [got[name] for name in meta["state_outputs"]]
        obs, _, term, trunc, _ = env.step(got["action"])
        # NEXT_STEP autoreset: the step after an episode end returns the next episode's first obs.
        is_first = np.logical_or(term, trunc) | (rng.random(batch) < 0.1)
    env.close()
    assert worst < TOL, worst
    return worst


TMAZE = ("recurl/TMaze-v0", {"length": 3})
PENDULUM = ("Pendulum-v1", None)


@pytest.mark.parametrize(("core", "env", "policy"), [
    ("lstm", TMAZE, {"num_layers": 2, "prev_action_reward": True}),  # Dict obs, 2 layers, critic core
    ("gru", TMAZE, {"shared_core": True, "head_hidden": (32,)}),
    ("rnn", TMAZE, {}),
    ("none", TMAZE, {}),
    ("lstm", PENDULUM, {"shared_core": True}),
    ("gru", PENDULUM, {"num_layers": 2}),
    ("rnn", PENDULUM, {"shared_core": True}),
    ("mingru", TMAZE, {"num_layers": 2, "prev_action_reward": True}),
    ("minlstm", TMAZE, {}),
    ("lru", TMAZE, {"shared_core": True}),
    ("mingru", PENDULUM, {}),
    ("lru", PENDULUM, {"num_layers": 2}),
])
def test_onnx_matches_pytorch_through_episodes(tmp_path: Path, core: str, env: tuple, policy: dict) -> None:
    env_id, env_kwargs = env
    steps = 210 if env_id == "Pendulum-v1" else 60  # at least one whole episode per env, with resets
    err = _parity(_tiny_run(tmp_path, env_id, core, env_kwargs, **policy), tmp_path / "m.onnx", steps)
    print(f"{core} {env_id} {policy}: max abs error {err:.2e}")


def test_onnx_metadata_describes_the_interface(tmp_path: Path) -> None:
    run = _tiny_run(tmp_path, "recurl/TMaze-v0", "lstm", {"length": 3}, num_layers=2)
    export_onnx(run, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["recurl"])
    assert meta["core"] == "lstm" and meta["num_layers"] == 2 and meta["hidden_size"] == 64
    assert meta["state_inputs"] == ["h_in", "c_in"]  # the actor's state: the same predict and Agent carry
    assert meta["algo"] == "ppo" and meta["action_delay"] == 0
    assert meta["action_space"] == {"type": "Discrete", "n": 3, "start": 0}
    assert [i.name for i in sess.get_inputs()] == [d["name"] for d in meta["inputs"]]
    assert [o.name for o in sess.get_outputs()] == [d["name"] for d in meta["outputs"]]
    assert all(i.shape[i.shape.index("B")] == "B" for i in sess.get_inputs())  # dynamic batch axis


def test_agent_stateful_equals_pure(tmp_path: Path) -> None:
    agent = Agent.load(_tiny_run(tmp_path, "recurl/TMaze-v0", "lstm", {"length": 3}))
    rng = np.random.default_rng(0)
    agent.reset(3)
    state = agent.initial_state(3)
    for t in range(20):
        obs = rng.random((3, 4), dtype=np.float32)
        starts = rng.random(3) < 0.2
        action = agent.act(obs, is_first=starts if starts.any() else None)  # both code paths
        pure, state = agent.act(obs, state, starts | (t == 0))  # the first call after reset is a start
        np.testing.assert_array_equal(action, pure)
    for a, b in zip(agent._state, state):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    agent.reset(1)
    assert np.shape(agent.act(np.zeros(4, np.float32))) == ()  # unbatched in, one action out
    agent.deterministic = False
    assert agent.act(np.zeros((1, 4), np.float32)).shape == (1,)


def test_agent_rejects_bad_input_clearly(tmp_path: Path) -> None:
    agent = Agent.load(_tiny_run(tmp_path, "recurl/TMaze-v0", "gru", {"length": 3}, num_layers=2))
    ok = np.zeros((2, 4), np.float32)
    with pytest.raises(RecurlError, match=r"call agent.reset"):
        agent.act(ok)
    agent.reset(2)
    with pytest.raises(RecurlError, match=r"shape \(2, 5\), expected \(4,\)"):
        agent.act(np.zeros((2, 5), np.float32))
    with pytest.raises(RecurlError, match="NaN"):
        agent.act(np.full((2, 4), np.nan, np.float32))
    with pytest.raises(RecurlError, match="dtype"):
        agent.act(np.array([["a"] * 4] * 2))
    with pytest.raises(RecurlError, match=r"got 3 observation\(s\) but the agent was reset for 2"):
        agent.act(np.zeros((3, 4), np.float32))
    with pytest.raises(RecurlError, match="is_first must be 2"):
        agent.act(ok, is_first=[True])
    with pytest.raises(RecurlError, match=r"\[layers, N, hidden\] = \(2, 2, 64\)"):
        agent.act(ok, agent.initial_state(3))
    with pytest.raises(RecurlError, match="tuple of 1 array"):
        agent.act(ok, np.zeros((2, 2, 64), np.float32))
    assert agent.act(ok).shape == (2,)  # a rejected call leaves the agent usable


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _tiny_run(tmp_path, "recurl/TMaze-v0", "gru", {"length": 3})
    assert main(["export", str(run), "--onnx", str(tmp_path / "out.onnx")]) == 0
    assert (tmp_path / "out.onnx").is_file() and "h_in" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing"), "--onnx", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("recurl: error: no config.json") and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow  # trains a 50k-step agent first (~6 s)
def test_exported_tmaze_agent_solves_the_maze_without_torch(tmp_path: Path) -> None:
    model = RecurrentPPO("recurl/TMaze-v0", num_envs=16, n_steps=64, batch_size=512, n_epochs=4,
                         learning_rate=1e-3, ent_coef=0.01, env_kwargs={"length": 2}).learn(50_000, progress_bar=False)
    model.save(tmp_path / "run")
    export_onnx(tmp_path / "run", tmp_path / "tmaze.onnx")
    res = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "examples" / "onnx_game_loop.py"), str(tmp_path / "tmaze.onnx"),
         "--length", "2", "--episodes", "100"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines() if "|" in line}
    assert "onnxruntime" in imported and not imported & {"torch", "recurl"}, sorted(imported)
    rate = float(res.stdout.strip().split("=")[1])
    print(f"onnxruntime-only T-maze success rate: {rate:.3f}")
    assert rate >= 0.95


def test_onnx_dict_of_discrete_obs_and_multidiscrete_actions(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from recurl.nn.policy import PolicyConfig, RecurrentPolicy

    obs_space = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (3,), np.float32), "room": gym.spaces.Discrete(5),
                                 "keys": gym.spaces.MultiDiscrete([2, 3])})
    pol = RecurrentPolicy(obs_space, gym.spaces.MultiDiscrete([3, 4]), PolicyConfig(core="gru", ortho_init=False))
    model = SimpleNamespace(policy=pol, observation_space=obs_space, action_space=pol.action_space,
                            config=SimpleNamespace(policy=pol.cfg))
    meta = export_onnx(model, tmp_path / "m.onnx")
    assert [d["name"] for d in meta["inputs"][:3]] == ["obs.keys", "obs.pos", "obs.room"]
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    obs_space.seed(0)
    obs = {k: np.stack([obs_space[k].sample() for _ in range(3)]) for k in sorted(obs_space.spaces)}
    state = np.random.default_rng(0).standard_normal((1, 3, 64)).astype(np.float32)
    is_first = np.array([1.0, 0.0, 0.0], np.float32)
    got = sess.run(None, {**{f"obs.{k}": v for k, v in obs.items()}, "h_in": state, "is_first": is_first})
    with torch.inference_mode():
        dist, new_state = pol.act({k: torch.as_tensor(v) for k, v in obs.items()}, (torch.as_tensor(state),),
                                  torch.as_tensor(is_first > 0))
    np.testing.assert_array_equal(got[0], dist.mode().numpy())
    for a, b in zip(got[1:], [torch.cat(dist.logits_list, -1), *new_state]):
        assert _max_err(a, b) < TOL


@pytest.mark.parametrize("env_id,policy", [("recurl/TMaze-v0", {"core": "lstm"}),
                                           ("recurl/TMaze-v0", {"core": "gru", "shared_core": True}),
                                           ("Pendulum-v1", {"core": "rnn"}),
                                           ("recurl/TMaze-v0", {"core": "none"})])
def test_onnx_backend_agent_acts_like_the_torch_agent(env_id: str, policy: dict) -> None:
    model = RecurrentPPO(env_id, policy=policy, device="cpu")
    torch_agent, onnx_agent = Agent(model), Agent(model, backend="onnx")
    torch_agent.reset(3)
    onnx_agent.reset(3)
    rng = np.random.default_rng(0)
    for _ in range(12):
        obs = rng.random((3, *model.observation_space.shape)).astype(np.float32)
        first = rng.random(3) < 0.2
        np.testing.assert_allclose(torch_agent.act(obs, is_first=first), onnx_agent.act(obs, is_first=first),
                                   atol=1e-5)


@pytest.mark.parametrize("env_id,policy", [("recurl/TMaze-v0", {"core": "lstm"}), ("Pendulum-v1", {"core": "gru"})])
def test_stochastic_graph_samples_like_the_policy(tmp_path: Path, env_id: str, policy: dict) -> None:
    """`export --stochastic`: the graph's action is the policy's sample for the noise it is given (checked by
    the export against PyTorch), sampled actions follow the policy's probabilities, and the onnx Agent
    samples reproducibly from its seed."""
    model = RecurrentPPO(env_id, policy=policy, device="cpu")
    meta = export_onnx(model, tmp_path / "s.onnx", stochastic=True)
    box = env_id == "Pendulum-v1"
    assert meta["noise"] == {"law": "normal" if box else "uniform", "width": 1}
    assert meta["inputs"][-1]["name"] == "noise"
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    n = 4000
    obs = np.tile(np.random.default_rng(0).random((1, *model.observation_space.shape)).astype(np.float32), (n, 1))
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal if box else rng.random)((n, 1), dtype=np.float32)
    feed = {"obs": obs, "noise": noise, "is_first": np.ones(n, np.float32),
            **{name: np.zeros((1, n, 64), np.float32) for name in meta["state_inputs"]}}
    action = sess.run(["action"], feed)[0]
    with torch.inference_mode():
        dist, _ = model.policy.act(torch.as_tensor(obs[:1]), model.policy.initial_act_state(1), None)
    if box:
        std = float(dist.log_std.detach().exp())  # log_std is a parameter: detach before reading it
        assert abs(action.mean() - float(dist.params)) < 0.1 and abs(action.std() - std) < 0.1
    else:
        freq = np.bincount(action, minlength=3) / n
        np.testing.assert_allclose(freq, dist.logits.exp()[0].numpy(), atol=0.03)
    a1, a2 = (Agent(model, deterministic=False, backend="onnx", seed=7) for _ in range(2))
    a1.reset(2)
    a2.reset(2)
    for _ in range(5):
        np.testing.assert_array_equal(a1.act(obs[:2]), a2.act(obs[:2]))
    a1.deterministic = True
    with pytest.raises(RecurlError, match="chosen when the Agent was made"):
        a1.act(obs[:2])


@pytest.mark.parametrize("hard_sigmoid", [False, True])
def test_r2d2_exports_and_deploys_greedy(tmp_path: Path, hard_sigmoid: bool) -> None:
    """An R2D2 run goes through `recurl export` and the Agent (both backends): greedy Q acting, the same
    actions and states as the Q-network's own step, through episodes with resets."""
    from recurl import R2D2
    from recurl.algos.r2d2 import QNetworkConfig

    model = R2D2("recurl/TMaze-v0", env_kwargs={"length": 3}, num_envs=2, device="cpu",
                 policy=QNetworkConfig(core="lstm", hidden_size=16, hard_sigmoid=hard_sigmoid))
    model.save(tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--onnx", str(tmp_path / "q.onnx")]) == 0
    assert main(["export", str(tmp_path / "run"), "--onnx", str(tmp_path / "s.onnx"), "--stochastic"]) == 1
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["recurl"])
    assert meta["algo"] == "r2d2" and [d["name"] for d in meta["outputs"]] == ["action", "q", "h_out", "c_out"]
    agents = [Agent.load(tmp_path / "run"), Agent.load(tmp_path / "run", backend="onnx")]
    for a in agents:
        a.reset(3)
    rng = np.random.default_rng(0)
    state = model.policy.initial_act_state(3)
    onnx_state = [s.numpy() for s in state]
    for t in range(15):
        obs = rng.random((3, 4)).astype(np.float32)
        first = (rng.random(3) < 0.2) | (t == 0)
        with torch.no_grad():
            dist, state = model.policy.act(torch.as_tensor(obs), state, torch.as_tensor(first))
        got = sess.run(None, {"obs": obs, "h_in": onnx_state[0], "c_in": onnx_state[1],
                              "is_first": first.astype(np.float32)})
        onnx_state = got[2:]
        np.testing.assert_array_equal(got[0], dist.q.argmax(-1).numpy())
        assert _max_err(got[1], dist.q) < TOL
        for a in agents:
            np.testing.assert_array_equal(a.act(obs, is_first=first), got[0])


def test_action_delay_is_applied_by_the_agent_and_described_in_the_graph(tmp_path: Path) -> None:
    """A behaviour-cloned policy with action_delay D: Agent (both backends) executes each choice D steps
    later and the default action first; the ONNX metadata carries D and the default for other runtimes."""
    from recurl import BehaviourCloning
    from recurl.data.trajectories import Episode, write_dataset

    rng = np.random.default_rng(0)
    eps = [Episode(rng.random((6, 4)).astype(np.float32), rng.integers(0, 3, 5), np.zeros(5),
                   np.eye(5, dtype=bool)[-1], np.zeros(5, bool)) for _ in range(3)]
    data = write_dataset(tmp_path / "tm-v0", eps, "recurl/TMaze-v0", {"length": 3})
    bc = BehaviourCloning(dataset=str(data), action_delay=2, device="cpu")
    meta = export_onnx(bc, tmp_path / "bc.onnx")
    assert meta["action_delay"] == 2 and meta["default_action"] == 0
    for backend in ("torch", "onnx"):
        agent, plain = Agent(bc, backend=backend), Agent(bc, backend=backend)
        plain.action_delay = 0  # the same policy without the queue: what it chooses, when it chooses it
        agent.reset(2)
        plain.reset(2)
        chosen, done = [], []
        for t in range(8):
            obs = rng.random((2, 4)).astype(np.float32)
            first = np.array([t == 4, False])  # env 0 starts a new episode at t = 4
            done.append(agent.act(obs, is_first=first))
            chosen.append(plain.act(obs, is_first=first))
        np.testing.assert_array_equal([d[1] for d in done], [0, 0] + [c[1] for c in chosen[:6]])
        np.testing.assert_array_equal([d[0] for d in done], [0, 0, chosen[0][0], chosen[1][0], 0, 0,
                                                             chosen[4][0], chosen[5][0]])
