"""R2D2: sequence windows, burn-in without gradient, n-step targets, priorities, save/load, the CLI."""

from __future__ import annotations

import copy
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from recurl.algos.r2d2 import (
    R2D2,
    QNetwork,
    QNetworkConfig,
    inverse_value_rescale,
    n_step_targets,
    value_rescale,
)
from recurl.checkpoint import write_json
from recurl.cli import main
from recurl.data.sequence_replay import SequenceReplay, SequenceWriter
from recurl.data.trajectories import load_dataset
from recurl.evaluation import evaluate_policy
from recurl.nn.recurrent import HardSigmoidCore
from recurl.obs import ObsConverter

TINY = dict(env="recurl/SwampTour-ruin_2swamp-v0", env_kwargs={"compute_optimal": False}, num_envs=4,
            learning_starts=200, batch_size=8, train_every=8, device="cpu", seed=0,
            policy=QNetworkConfig(hidden_size=16, encoder_hidden=(16,)))


def _fill(burn_in: int, seq_len: int, overlap: int, n_env: int = 3, steps: int = 400, max_len: int = 0):
    """Drive a writer with episodes (up to ``max_len`` steps) whose observations are ``[episode id, step]``;
    the states carry the same."""
    rng = np.random.default_rng(0)
    max_len = max_len or 3 * (burn_in + seq_len)
    conv = ObsConverter(gym.spaces.Box(-np.inf, np.inf, (2,), np.float32))
    replay = SequenceReplay(10_000, burn_in, seq_len, conv, ((1, 2),), priority_exponent=0.0)
    writer = SequenceWriter(replay, n_env, conv, overlap)
    ep = np.arange(n_env) + 1.0
    t = np.zeros(n_env)
    length = rng.integers(1, max_len + 1, n_env)
    valid = np.ones(n_env, bool)
    finished: dict[float, int] = {}
    for _ in range(steps):
        obs = torch.tensor(np.stack([ep, t], 1), dtype=torch.float32)
        done = (t == length - 1) & valid
        term = done & (rng.random(n_env) < 0.5)
        trunc = done & ~term
        next_obs = torch.tensor(np.stack([ep, t + 1], 1), dtype=torch.float32)
        writer.add(np.flatnonzero(valid), obs, (obs.unsqueeze(0),), torch.zeros(n_env, dtype=torch.long),
                   t.copy(), term, trunc, torch.as_tensor(t == 0), next_obs)
        for i in np.flatnonzero(done):
            finished[float(ep[i])] = int(length[i])
        # NEXT_STEP autoreset: the step after an end is skipped; the next episode then starts at t = 0.
        autoreset = ~valid
        t = np.where(valid, t + 1, 0)
        ep = np.where(autoreset, ep + n_env, ep)
        length = np.where(autoreset, rng.integers(1, max_len + 1, n_env), length)
        valid = ~done
    return replay, finished


@pytest.mark.parametrize("burn_in,seq_len,overlap", [(3, 5, 2), (0, 6, 0), (4, 4, 3)])
def test_windows_never_mix_episodes_and_cover_every_step(burn_in: int, seq_len: int, overlap: int) -> None:
    replay, finished = _fill(burn_in, seq_len, overlap)
    covered: dict[float, set[int]] = {}
    for i in range(len(replay)):
        obs, valid, first = replay.obs[i], replay.valid[i], replay.is_first[i]
        pos = torch.nonzero(valid).squeeze(1)
        assert pos.numel() > 0
        assert torch.equal(pos, torch.arange(int(pos[0]), int(pos[-1]) + 1)), "valid steps are contiguous"
        ids, steps = obs[pos, 0], obs[pos, 1]
        assert (ids == ids[0]).all(), "one window, one episode"
        assert torch.equal(steps, steps[0] + torch.arange(len(pos)))
        assert torch.equal(first[pos], steps == 0) and not first[int(pos[-1]) + 1 :].any()
        assert (obs[: int(pos[0])] == 0).all(), "padding only in front of an episode start"
        if int(pos[0]) > 0:
            assert steps[0] == 0
        # The observation after the last valid transition is the next one of the same episode.
        assert obs[int(pos[-1]) + 1].tolist() == [float(ids[0]), float(steps[-1]) + 1]
        if valid[0]:  # the stored state is the actor's state before obs[0]
            assert replay.states[0][i, 0].tolist() == obs[0].tolist()
        trained = pos[pos >= burn_in]
        covered.setdefault(float(ids[0]), set()).update(int(s) for s in obs[trained, 1])
    for ep, n in finished.items():
        assert covered.get(ep) == set(range(n)), f"episode {ep}: every step is trained on at least once"


def test_whole_episode_windows_are_one_per_episode() -> None:
    replay, finished = _fill(0, 20, 0, steps=300, max_len=20)
    starts = replay.is_first[: len(replay), 0]
    assert starts.all() and len(replay) == len(finished)


def test_n_step_targets_termination_vs_truncation() -> None:
    g, n = 0.9, 3
    r = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [0.0, 0.0]])
    valid = torch.tensor([[True, True], [True, True], [True, True], [False, False]])
    term = torch.tensor([[False, False], [False, False], [True, False], [False, False]])  # col 1: truncated
    boot = torch.tensor([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0], [50.0, 50.0]])
    G = n_step_targets(r, term, valid, boot, g, n)
    # Column 0 terminates at t=2: no bootstrap. Column 1 is truncated at t=2: bootstrap from its final obs (40).
    assert G[:3, 0].tolist() == pytest.approx([1 + g * 2 + g * g * 3, 2 + g * 3, 3.0])
    assert G[:3, 1].tolist() == pytest.approx([1 + g * 2 + g * g * 3 + g**3 * 40, 2 + g * 3 + g * g * 40,
                                               3 + g * 40])
    # A window end stops the sum too: with n = 3 and only 2 steps left, bootstrap from the window's last obs.
    G2 = n_step_targets(r[:2], torch.zeros(2, 2, dtype=torch.bool), valid[:2], boot[:3], g, n)
    assert G2[0, 0].item() == pytest.approx(1 + g * 2 + g * g * 30)


def test_value_rescaling_inverts() -> None:
    x = torch.linspace(-500, 500, 101, dtype=torch.float64)
    torch.testing.assert_close(inverse_value_rescale(value_rescale(x)), x)


def test_hard_sigmoid_cells_have_the_articles_parameter_counts() -> None:
    space = gym.spaces.Box(0, 1, (5, 10), np.float32)
    for core, total in (("lstm", 15_779), ("gru", 12_675)):
        cfg = QNetworkConfig(core=core, hidden_size=32, encoder_hidden=(64,), dueling=False, hard_sigmoid=True)
        net = QNetwork(space, 3, cfg)
        assert sum(p.numel() for p in net.parameters()) == total
        # step-by-step == unroll, and the reset inside the core stops state from leaking
        x, first = torch.randn(6, 2, 5, 10), torch.zeros(6, 2, dtype=torch.bool)
        first[3, 0] = True
        q, s = net.unroll(x, net.initial_state(2), first)
        state = net.initial_state(2)
        for t in range(6):
            dist, state = net.act(x[t], state, first[t])
            torch.testing.assert_close(dist.q, q[t])
        q_alone, _ = net.unroll(x[3:, :1], net.initial_state(1), first[3:, :1])
        torch.testing.assert_close(q[3:, :1], q_alone)
    assert isinstance(net.core, HardSigmoidCore)


def _trained(**kw) -> R2D2:
    m = R2D2(**{**TINY, **kw})
    m.learn(total_steps=600, progress_bar=False)
    return m


def test_burn_in_carries_no_gradient_and_priorities_update() -> None:
    m = R2D2(**{**TINY, "burn_in": 4, "seq_len": 6, "overlap": 2})
    m.learn(total_steps=400, progress_bar=False)
    replay = SequenceReplay(100, 4, 6, m.obs_conv, ((1, 16), (1, 16)))
    writer = SequenceWriter(replay, 1, m.obs_conv, 2)
    env = m.make_env(1)
    obs, _ = env.reset(seed=0)
    state, first = m.policy.initial_state(1), torch.ones(1, dtype=torch.bool)
    while len(replay) < 8:
        o = m.obs_conv.to_torch(obs, m.device)
        dist, new_state = m.policy.act(o, state, first, epsilon=0.5)
        a = dist.sample()
        obs, r, te, tr, _ = env.step(a.numpy())
        writer.add(np.array([0]), o, state, a, r, te, tr, first, m.obs_conv.to_torch(obs, m.device))
        state, first = new_state, torch.as_tensor(te | tr)
        if te[0] or tr[0]:  # skip the autoreset step
            obs, *_ = env.step(a.numpy())
    batch = replay.sample(8, 0.6, m.device)
    batch.obs.requires_grad_(True)
    loss, prio, _ = m._loss(batch)
    loss.backward()
    grad = batch.obs.grad.abs().sum(dim=(1, 2, 3))  # [W + 1]
    assert (grad[:4] == 0).all(), "burn-in steps carry no gradient"
    assert grad[4:-1].sum() > 0
    # The learner step writes eta * max|delta| + (1 - eta) * mean|delta| computed by hand (below).
    assert (replay.priorities[:8] == 1.0).all()
    sampled = []
    draw = replay.sample
    replay.sample = lambda *a: sampled.append(draw(*a)) or sampled[-1]
    before = (copy.deepcopy(m.policy), copy.deepcopy(m.target))
    m._update(replay)
    want = _priorities_by_hand(m.config, *before, sampled[0])
    np.testing.assert_allclose(replay.priorities[sampled[0].indices], want, rtol=1e-4, atol=1e-6)
    assert replay.max_priority >= float(want.max())


def _priorities_by_hand(cfg, online, target, batch) -> np.ndarray:
    """The R2D2 TD error of a batch, written out independently of the learner: one unroll of the whole
    window from the stored state (so burn-in is just the first steps), the online network choosing the
    bootstrap action and the target network valuing it (double Q), n-step returns under value rescaling."""
    L = cfg.burn_in
    with torch.no_grad():
        q_on = online.unroll(batch.obs, batch.state0, batch.is_first)[0][L:]
        q_tg = target.unroll(batch.obs, batch.state0, batch.is_first)[0][L:]
    if batch.masks is not None:  # only valid actions bootstrap
        q_on = q_on.masked_fill(~batch.masks[L:], -1e8)
    q_next = inverse_value_rescale(q_tg.gather(-1, q_on.argmax(-1, keepdim=True)).squeeze(-1))
    G = n_step_targets(batch.rewards[L:], batch.terminated[L:], batch.valid[L:], q_next, cfg.gamma, cfg.n_step)
    q_taken = q_on[:-1].gather(-1, batch.actions[L:].unsqueeze(-1)).squeeze(-1)
    mask = batch.valid[L:].float()
    d = ((value_rescale(G) - q_taken) * mask).abs()
    return (cfg.priority_eta * d.max(0).values + (1 - cfg.priority_eta) * d.sum(0) / mask.sum(0).clamp(min=1)).numpy()


def _actor_batch(m: R2D2, n: int = 16):
    """A replay filled by the model's own collector-driven actors, and one sampled batch of it."""
    m._start_actors()
    col = m.collector
    while len(m.replay) < n:
        obs, state, first = col.obs, col.state, col.is_first
        with torch.no_grad():
            dist, new_state = m.policy.act(obs, state, first, epsilon=0.3)
        action = dist.sample()
        step = col.step(action, new_state)
        m.writer.add(np.flatnonzero(step.valid), obs, state, action, step.reward, step.terminated,
                     step.truncated, first, col.obs)
    return m.replay.sample(n, 0.6, m.device)


def test_learner_uses_burn_in_and_double_q() -> None:
    """Catches a learner that trains from the stale stored state (skipping burn-in) and double Q whose
    bootstrap action is picked by the target network."""
    m = R2D2(**{**TINY, "burn_in": 3, "seq_len": 4, "overlap": 1})
    m.learn(total_steps=400, progress_bar=False)  # the online network moves away from the target
    with torch.no_grad():
        for p in m.target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    batch = _actor_batch(m)
    assert any(s.abs().sum() > 0 for s in batch.state0), "windows start from stored, non-zero states"
    _, prio, _ = m._loss(batch)
    np.testing.assert_allclose(prio.numpy(), _priorities_by_hand(m.config, m.policy, m.target, batch),
                               rtol=1e-4, atol=1e-6)


def test_masked_targets_bootstrap_on_valid_actions_only() -> None:
    """With action masks the double-Q bootstrap action is the best *valid* one at the next observation."""
    from test_masking import RandomMasks  # noqa: F401 - registers recurl-test/RandomMasks-v0

    m = R2D2("recurl-test/RandomMasks-v0", num_envs=4, learning_starts=64, batch_size=8, train_every=4, seq_len=6,
             overlap=0, burn_in=0, n_step=1, device="cpu", policy={"hidden_size": 16})
    m.learn(400, progress_bar=False)
    with torch.no_grad():
        for p in m.target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    batch = m.replay.sample(16, 0.6, m.device)
    _, prio, _ = m._loss(batch)
    np.testing.assert_allclose(prio.numpy(), _priorities_by_hand(m.config, m.policy, m.target, batch),
                               rtol=1e-4, atol=1e-6)


def test_writer_keeps_truncation_apart_from_termination() -> None:
    """One env, episodes of 3 steps: the first truncated, the second terminated. The replay must bootstrap
    the truncated one (terminated false) and not the terminated one."""
    conv = ObsConverter(gym.spaces.Box(-np.inf, np.inf, (1,), np.float32))
    replay = SequenceReplay(10, 0, 8, conv, ((1, 1),))
    writer = SequenceWriter(replay, 1, conv, 0)
    t, first = 0, True
    for k in range(8):  # steps 3 and 7 are autoreset steps (skipped, as the collector marks them invalid)
        if k in (3, 7):
            t, first = 0, True
            continue
        end = t == 2
        writer.add(np.array([0]), torch.tensor([[float(t)]]), (torch.zeros(1, 1, 1),), torch.zeros(1, dtype=torch.long),
                   np.array([1.0]), np.array([end and k > 3]), np.array([end and k < 3]), torch.tensor([first]),
                   torch.tensor([[float(t + 1)]]))
        t, first = t + 1, False
    assert len(replay) == 2
    assert replay.terminated[0, :3].tolist() == [False, False, False] and replay.valid[0, :3].all()
    assert replay.terminated[1, :3].tolist() == [False, False, True]
    assert replay.obs[0, 3].item() == 3.0, "the truncated episode's final observation is kept for its bootstrap"


def test_save_load_gives_identical_q_values_and_states(tmp_path) -> None:
    m = _trained(policy=QNetworkConfig(core="gru", hidden_size=16, encoder_hidden=(16,)))
    assert m.n_updates > 0
    m.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["algo"] == "r2d2"
    m2 = R2D2.load(tmp_path, device="cpu")
    x = torch.rand(7, 3, *m.observation_space.shape)
    first = torch.zeros(7, 3, dtype=torch.bool)
    first[0] = True
    q1, s1 = m.policy.unroll(x, m.policy.initial_state(3), first)
    q2, s2 = m2.policy.unroll(x, m2.policy.initial_state(3), first)
    torch.testing.assert_close(q1, q2, rtol=0, atol=0)
    for a, b in zip(s1, s2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    a1, st1 = m.predict(x[0, 0].numpy(), deterministic=True)
    a2, st2 = m2.predict(x[0, 0].numpy(), deterministic=True)
    assert a1 == a2 and all(np.array_equal(u, v) for u, v in zip(st1, st2))


def test_cli_trains_evaluates_and_resumes(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = ["train", "--algo", "r2d2", "--env", "recurl/SwampTour-Tmaze_either-v0", "--total-steps", "800",
            "--num-envs", "4", "--learning-starts", "200", "--batch-size", "4", "--hidden-size", "16",
            "--seq-len", "5", "--overlap", "0", "--burn-in", "0", "--eval-episodes", "4", "--device", "cpu",
            "--checkpoint-every", "10", "--run-dir", str(run), "--quiet"]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["episodes"] == 4 and summary["core"] == "lstm" and summary["env_steps"] >= 800
    for f in ("model.safetensors", "config.json", "trainer.pt", "progress.csv"):
        assert (run / f).exists()
    assert main(["eval", str(run), "--episodes", "3", "--json"]) == 0
    # an R2D2 run records (greedy Q acting through the collector) and exports like any other
    assert main(["record", "--from", str(run), "--episodes", "3", "--out", str(tmp_path / "greedy-v0")]) == 0
    assert len(load_dataset(tmp_path / "greedy-v0").episodes) == 3
    assert main(["export", str(run), "--onnx", str(tmp_path / "q.onnx")]) == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["config"]["total_steps"] = 1200
    write_json(run / "config.json", cfg)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["env_steps"] >= 1200


def test_dict_observations_train_through_learn() -> None:
    m = R2D2(**{**TINY, "prev_action_reward": True, "learning_starts": 100})
    assert isinstance(m.observation_space, gym.spaces.Dict)
    m.learn(total_steps=300, progress_bar=False)
    assert m.n_updates > 0 and m.num_timesteps == 300


def test_learn_continues_and_callbacks_stop() -> None:
    m = R2D2(**TINY)
    m.learn(total_steps=400, progress_bar=False)
    updates = m.n_updates
    m.learn(total_steps=100, reset_num_timesteps=False, progress_bar=False)  # the replay is kept: no refill wait
    assert m.num_timesteps == 500 and m.n_updates > updates
    seen = []
    m.learn(total_steps=400, callback=lambda model: seen.append(model.num_timesteps) or len(seen) < 3,
            progress_bar=False)
    assert seen == [4, 8, 12]


def test_bad_options_are_clear_errors(capsys) -> None:
    assert main(["train", "--algo", "r2d2", "--overlap", "30", "--seq-len", "20"]) == 1
    assert "overlap" in capsys.readouterr().err


def _tmaze_r2d2(core: str, seed: int) -> R2D2:
    """R2D2 (DRQN-style whole-episode windows) on the passive T-maze with a 4-cell corridor: the cue shown at
    the first step decides the turn at the junction."""
    return R2D2("recurl/TMaze-v0", env_kwargs={"length": 4}, num_envs=8, seed=seed, device="cpu", seq_len=12,
                overlap=0, burn_in=0, learning_starts=1000, batch_size=16, train_every=8, replay_capacity=4000,
                gamma=0.95, value_rescaling=False, n_step=1, learning_rate=1e-3, target_update_every=200,
                policy=QNetworkConfig(core=core, hidden_size=32, encoder_hidden=(32,))).learn(30_000,
                                                                                              progress_bar=False)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_r2d2_learns_the_tmaze_cue(seed: int) -> None:
    """Measured on seeds 0-3: 100% success (mean length 7-9 against the optimum 5) in 30k steps, ~12 s each."""
    r = evaluate_policy(_tmaze_r2d2("lstm", seed), n_episodes=100, seed=123)
    assert r["success_rate"] >= 0.95, r


@pytest.mark.slow
def test_r2d2_memoryless_baseline_guesses() -> None:
    """Without memory the junction is a coin flip at best (this one even learns to dawdle there)."""
    r = evaluate_policy(_tmaze_r2d2("none", 0), n_episodes=100, seed=123)
    assert r["success_rate"] <= 0.65, r
