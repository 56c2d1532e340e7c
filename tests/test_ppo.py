"""Recurrent PPO: GAE by hand, rollout flags under NEXT_STEP autoreset, bootstrap state, the loss's masking
and first-epoch ratio, the KL-to-teacher term, the learn API, save/load, predict."""

import numpy as np
import pytest
import torch

from recurl import RecurrentPPO, evaluate_policy
from recurl.algos.ppo import RolloutBuffer, compute_gae
from recurl.errors import RecurlError

G, LAM = 0.9, 0.8


def _gae(term: list[bool], trunc: list[bool], valid: list[bool]):
    r = torch.tensor([[1.0], [2.0], [0.0], [3.0]])
    v = torch.tensor([[0.5], [0.6], [0.7], [0.8], [0.9]])
    f = lambda x: torch.tensor(x).view(4, 1)  # noqa: E731
    return compute_gae(r, v, f(term), f(trunc), f(valid), G, LAM)


def test_gae_termination_does_not_bootstrap() -> None:
    # Episode ends (terminated) at t=1; t=2 is the autoreset step (invalid); t=3 starts a new episode.
    adv, ret = _gae([False, True, False, False], [False] * 4, [True, True, False, True])
    a1 = 2.0 - 0.6
    a0 = (1.0 + G * 0.6 - 0.5) + G * LAM * a1
    a3 = 3.0 + G * 0.9 - 0.8
    torch.testing.assert_close(adv.view(-1), torch.tensor([a0, a1, 0.0, a3]))
    torch.testing.assert_close(ret.view(-1), torch.tensor([a0 + 0.5, a1 + 0.6, 0.0, a3 + 0.8]))


def test_gae_truncation_bootstraps_from_the_final_observation() -> None:
    adv, _ = _gae([False] * 4, [False, True, False, False], [True, True, False, True])
    a1 = 2.0 + G * 0.7 - 0.6  # V of the final observation (computed on the invalid step)
    a0 = (1.0 + G * 0.6 - 0.5) + G * LAM * a1
    torch.testing.assert_close(adv.view(-1)[:2], torch.tensor([a0, a1]))
    assert adv[2].item() == 0.0


def _model(**kw) -> RecurrentPPO:
    base = dict(num_envs=2, n_steps=8, batch_size=16, n_epochs=1, seed=0, normalize_reward=False,
                policy={"normalize_obs": False})
    base.update(kw)
    return RecurrentPPO(**base)


def _collect(model: RecurrentPPO) -> RolloutBuffer:
    cfg = model.config
    model._start_collector()
    buf = RolloutBuffer(cfg, model.obs_conv, (), torch.long, model.device)
    model._collect(buf)
    return buf


def test_rollout_flags_with_next_step_autoreset() -> None:
    """Episodes of exactly 3 steps: the 4th step is the autoreset (invalid) and the 5th obs is first."""
    model = _model(env="recurl/RepeatPrevious-v0", env_kwargs={"k": 1, "length": 3})
    buf = _collect(model)
    valid = buf.valid[:, 0].tolist()
    first = buf.is_first[:, 0].tolist()
    assert valid == [True, True, True, False, True, True, True, False]
    assert first == [True, False, False, False, True, False, False, False]
    assert buf.terminated[:, 0].tolist() == [False, False, True, False, False, False, True, False]
    assert not buf.truncated.any()
    assert (buf.rewards[~buf.valid] == 0).all()


def test_truncation_is_not_termination_and_bootstrap_uses_the_episode_state() -> None:
    model = _model(env="recurl/TMaze-v0", env_kwargs={"length": 10, "max_steps": 3}, n_steps=8)
    buf = _collect(model)
    assert buf.truncated[:, 0].tolist() == [False, False, True, False, False, False, True, False]
    assert not buf.terminated.any()
    # values[3] (invalid step) is V(final obs of episode 1) under episode 1's hidden state.
    obs = buf.obs[:4, :1]
    is_first = torch.tensor([[True], [False], [False], [False]])
    with torch.no_grad():
        _, v, _ = model.policy.unroll(obs, model.policy.initial_state(1), is_first)
    torch.testing.assert_close(buf.values[:4, 0], v[:, 0])
    # A zero state at the final observation would give a different value: the state matters.
    with torch.no_grad():
        _, v0, _ = model.policy.step(obs[3], model.policy.initial_state(1), torch.tensor([True]))
    assert not torch.allclose(v0, v[3])
    adv, _ = compute_gae(buf.rewards, buf.values, buf.terminated, buf.truncated, buf.valid, 0.99, 0.95)
    assert (adv[~buf.valid] == 0).all()


def test_chunk_states_are_the_states_entering_each_chunk() -> None:
    model = _model(env="recurl/TMaze-v0", n_steps=8, seq_len=4, batch_size=8)
    buf = _collect(model)
    assert len(buf.chunk_states) == 2
    with torch.no_grad():
        _, _, s4 = model.policy.unroll(buf.obs[:4], buf.chunk_states[0], buf.is_first[:4])
    for a, b in zip(s4, buf.chunk_states[1]):
        torch.testing.assert_close(a, b)
    assert len(s4.actor) == len(s4.critic) == 2  # named parts: the critic's own LSTM state is carried too


def test_training_runs_and_save_load_gives_identical_actions_and_states(tmp_path) -> None:
    model = _model(env="recurl/TMaze-v0", policy={"core": "gru"}, n_epochs=2).learn(64, progress_bar=False)
    model.save(tmp_path)
    loaded = RecurrentPPO.load(tmp_path)
    rng = np.random.default_rng(0)
    s1 = s2 = None
    for t in range(12):
        obs = rng.random((3, 4)).astype(np.float32)
        start = np.array([t == 0, t % 5 == 0, False])
        a1, s1 = model.predict(obs, s1, start, deterministic=True)
        a2, s2 = loaded.predict(obs, s2, start, deterministic=True)
        np.testing.assert_array_equal(a1, a2)
        for x, y in zip(s1, s2):
            np.testing.assert_array_equal(x, y)


def test_predict_rejects_bad_input() -> None:
    model = _model(env="recurl/TMaze-v0")
    with pytest.raises(RecurlError, match="shape"):
        model.predict(np.zeros(5, np.float32))
    with pytest.raises(RecurlError, match="NaN"):
        model.predict(np.array([0, np.nan, 0, 0], np.float32))
    _, state = model.predict(np.zeros((2, 4), np.float32))
    with pytest.raises(RecurlError, match="state tensor has shape"):
        model.predict(np.zeros((3, 4), np.float32), state)
    with pytest.raises(RecurlError, match="state must be a tuple"):
        model.predict(np.zeros((2, 4), np.float32), "oops")
    with pytest.raises(RecurlError, match="episode_start must be 2"):
        model.predict(np.zeros((2, 4), np.float32), state, episode_start=[True])
    with pytest.raises(RecurlError, match="dtype"):
        model.predict(np.array(["a", "b", "c", "d"]))


def test_unbatched_predict_returns_one_action() -> None:
    model = _model(env="recurl/TMaze-v0")
    a, state = model.predict(np.zeros(4, np.float32))
    assert np.ndim(a) == 0 and state[0].shape == (1, 1, 64)


@pytest.mark.parametrize("env_id,kw", [("recurl/RepeatPrevious-v0", {}), ("recurl/CartPoleNoVel-v1", {})])
def test_every_core_trains_on_each_task(env_id: str, kw: dict) -> None:
    for core in ("lstm", "gru", "rnn", "none"):
        model = _model(env=env_id, env_kwargs=kw, policy={"core": core})
        before = {k: v.clone() for k, v in model.policy.state_dict().items()}
        model.learn(32, progress_bar=False)
        moved = [k for k, v in model.policy.state_dict().items() if not torch.equal(v, before[k])]
        assert any(".core." in k for k in moved) or core == "none", f"{core}: the core did not train"
        assert any(k.startswith("pi.") for k in moved) and any(k.startswith("v.") for k in moved)
        assert np.isfinite(evaluate_policy(model, n_episodes=2)["mean_return"])


def test_bad_config_is_one_clear_error() -> None:
    with pytest.raises(RecurlError, match="seq-len"):
        _model(env="recurl/TMaze-v0", n_steps=8, seq_len=3)
    with pytest.raises(RecurlError, match="unknown env id"):
        _model(env="NoSuchEnv-v0")
    with pytest.raises(RecurlError, match="unknown PPO option"):
        _model(env="recurl/TMaze-v0", bogus=1)


def test_predict_state_is_the_actor_state_only() -> None:
    """predict carries what acting reads: the actor's (h, c), not the critic's tensors as well."""
    model = _model(env="recurl/TMaze-v0")  # separate critic core
    _, state = model.predict(np.zeros((2, 4), np.float32))
    assert len(state) == 2 and model.policy.act_state_names == ("h", "c")


def _loss_on_rollout(model: RecurrentPPO, buf: RolloutBuffer, clip: float = 0.2):
    seq, states, teacher_states, _ = model._sequences(buf)
    model.optimizer.zero_grad(set_to_none=True)
    loss, stats = model._loss(seq, states, teacher_states, clip)
    loss.backward()
    return loss.detach(), stats, [p.grad.clone() for p in model.policy.parameters() if p.grad is not None]


def test_first_minibatch_ratio_is_one() -> None:
    """Acting (cell kernels, step by step) and training (fused unroll) see the same policy: ratio == 1."""
    model = _model(env="recurl/RepeatPrevious-v0", env_kwargs={"k": 1, "length": 3}, n_steps=16, seq_len=8,
                   batch_size=32, policy={"normalize_obs": True})
    buf = _collect(model)
    seq, states, _, _ = model._sequences(buf)
    with torch.no_grad():
        dist, _, _ = model.policy.unroll(seq["obs"], states, seq["is_first"], return_state=False)
    ratio = (dist.log_prob(seq["actions"]) - seq["logp"]).exp()
    assert (ratio - 1).abs().max() < 1e-5
    _, stats, _ = _loss_on_rollout(model, buf)
    assert float(stats["clip_fraction"]) == 0.0 and abs(float(stats["approx_kl"])) < 1e-8


def test_loss_masks_the_autoreset_steps() -> None:
    """Whatever sits in an invalid (autoreset) step's action, log-prob, advantage and return, the loss and
    its gradient are unchanged: those steps are no transitions."""
    model = _model(env="recurl/RepeatPrevious-v0", env_kwargs={"k": 1, "length": 3})
    buf = _collect(model)
    invalid = ~buf.valid
    assert invalid.any()
    loss, _, grads = _loss_on_rollout(model, buf)
    buf.actions[invalid] = (buf.actions[invalid] + 1) % 2
    buf.logp[invalid] = -5.0
    buf.rewards[invalid] = 100.0
    loss2, _, grads2 = _loss_on_rollout(model, buf)
    torch.testing.assert_close(loss, loss2, rtol=0, atol=1e-7)
    for g, g2 in zip(grads, grads2):
        torch.testing.assert_close(g, g2, rtol=0, atol=1e-7)


def test_kl_teacher_term_changes_the_update(tmp_path) -> None:
    teacher_run = tmp_path / "teacher"
    _model(env="recurl/TMaze-v0").save(teacher_run)
    model = _model(env="recurl/TMaze-v0", init_from=str(teacher_run), kl_teacher=1.0)
    with torch.no_grad():  # move the student away from its teacher, so the KL is not zero
        model.policy.pi.linear.weight.add_(torch.randn_like(model.policy.pi.linear.weight))
    buf = _collect(model)
    loss, stats, grads = _loss_on_rollout(model, buf)
    assert float(stats["teacher_kl"]) > 1e-3
    teacher, model.teacher = model.teacher, None
    loss0, stats0, grads0 = _loss_on_rollout(model, buf)
    assert "teacher_kl" not in stats0
    torch.testing.assert_close(loss - loss0, stats["teacher_kl"], rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(g, g0) for g, g0 in zip(grads, grads0))
    assert teacher is not None


def test_learn_continues_and_callbacks_stop() -> None:
    model = _model(env="recurl/TMaze-v0")  # 16 env steps per update
    model.learn(32, progress_bar=False)
    w = model.policy.pi.linear.weight.clone()
    assert (model.num_timesteps, model.n_updates) == (32, 2)
    model.learn(32, progress_bar=False)  # a second call trains again (SB3: the counter restarts)
    assert (model.num_timesteps, model.n_updates) == (32, 4) and not torch.equal(w, model.policy.pi.linear.weight)
    model.learn(48, reset_num_timesteps=False, progress_bar=False)
    assert (model.num_timesteps, model.n_updates) == (80, 7)
    calls = []
    model.learn(64, callback=lambda m: calls.append(m.n_updates) or len(calls) < 2, progress_bar=False)
    assert calls == [8, 9]
    with pytest.raises(RecurlError, match="total_steps"):
        model.learn(-100)


def test_learn_never_exceeds_the_budget() -> None:
    model = _model(env="recurl/TMaze-v0").learn(40, progress_bar=False)
    assert model.num_timesteps == 32
    assert _model(env="recurl/TMaze-v0").learn(5, progress_bar=False).num_timesteps == 16  # one update at least


def test_dict_observations_train_through_learn() -> None:
    model = _model(env="recurl/TMaze-v0", prev_action_reward=True)
    assert isinstance(model.observation_space, __import__("gymnasium").spaces.Dict)
    w = model.policy.pi.linear.weight.clone()
    model.learn(32, progress_bar=False)
    assert model.n_updates == 2 and not torch.equal(w, model.policy.pi.linear.weight)


def test_stop_when_solved_and_stay_solved(tmp_path) -> None:
    """--stop-at-return R --eval-every N --hold H: training stops after H evaluations in a row reach R,
    the best model is kept in best/, and evaluations are logged apart."""
    from recurl.checkpoint import read_run
    from recurl.runs import finish_run

    model = _model(env="recurl/TMaze-v0", env_kwargs={"length": 2}, eval_every=16, eval_episodes=4,
                   stop_at_return=-100.0, hold=3)  # a bar every policy clears: stops after exactly 3 evals
    model.learn(1600, run_dir=tmp_path, progress_bar=False)
    assert model.eval_record["held"] and model.eval_record["evaluations"] == 3 and model.num_timesteps == 48
    rows = (tmp_path / "evaluations.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and rows[1].startswith("16,")
    assert read_run(tmp_path / "best").meta["algo"] == "ppo"
    summary = finish_run(model, tmp_path, 1.0, episodes=2)
    assert summary["held"] and summary["evaluations"] == 3 and summary["eval_time_s"] >= 0
    never = _model(env="recurl/TMaze-v0", eval_every=32, eval_episodes=2, stop_at_return=100.0)
    never.learn(96, progress_bar=False)
    assert never.num_timesteps == 96 and never.eval_record["evaluations"] == 3 and not never.eval_record["held"]


@pytest.mark.parametrize("max_grad_norm, clips", [(0.5, True), (0.0, False)])
def test_max_grad_norm_zero_turns_clipping_off(monkeypatch: pytest.MonkeyPatch, max_grad_norm: float,
                                              clips: bool) -> None:
    calls = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(a[1]) or clip(*a, **k))
    RecurrentPPO("recurl/TMaze-v0", num_envs=2, n_steps=8, batch_size=16, n_epochs=1,
                 max_grad_norm=max_grad_norm).learn(16, progress_bar=False)
    assert calls == ([max_grad_norm] if clips else [])
    with pytest.raises(RecurlError, match="max-grad-norm"):
        RecurrentPPO("recurl/TMaze-v0", max_grad_norm=-1.0)


def test_predict_episode_start_resets_only_the_flagged_envs() -> None:
    """predict's reset path: a flagged env acts exactly as from a fresh state, an unflagged one keeps its
    memory (the fast path skips the reset arithmetic only when no env is flagged)."""
    model = RecurrentPPO("recurl/TMaze-v0", num_envs=2, n_steps=8, batch_size=16, seed=3)
    rng = np.random.default_rng(0)
    obs = [rng.random((2, 4), dtype=np.float32) for _ in range(4)]
    _, state = model.predict(obs[0], deterministic=True)
    for o in obs[1:3]:
        _, state = model.predict(o, state, episode_start=np.array([False, False]), deterministic=True)
    _, after = model.predict(obs[3], state, episode_start=np.array([True, False]), deterministic=True)
    _, fresh = model.predict(obs[3], None, deterministic=True)
    _, kept = model.predict(obs[3], state, episode_start=np.array([False, False]), deterministic=True)
    for a, f, k in zip(after, fresh, kept):
        np.testing.assert_array_equal(a[:, 0], f[:, 0])  # env 0 restarted
        np.testing.assert_array_equal(a[:, 1], k[:, 1])  # env 1 carried on
        assert not np.allclose(k[:, 0], f[:, 0])  # and its memory did matter
