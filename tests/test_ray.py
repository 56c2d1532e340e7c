"""Rollout workers and Ape-X actors (``--workers``, recurl/algos/distributed.py).

Fast tests run the distributed code path in-process (``ray_address="inline"``: the same worker objects,
buffers and merges, without Ray) and check the no-Ray error. Tests on a local Ray cluster
(``ray.init(num_cpus=2)``, shared by the module, ~7 s to start) are marked slow.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from recurl.algos import distributed
from recurl.algos.ppo import RecurrentPPO, sample_rows
from recurl.algos.r2d2 import R2D2, QNetworkConfig
from recurl.cli import main
from recurl.errors import RecurlError
from recurl.evaluation import evaluate_policy
from recurl.nn.heads import ActionDist

# 16 envs per worker: this CPU's GEMM gives a row the same result in a batch of 16 as in a batch of 32
# (below 16 rows it takes other kernels, which round differently: docs/distributed.md)
PPO_KW = dict(env_kwargs={"length": 4}, num_envs=32, n_steps=16, seq_len=8, batch_size=128, n_epochs=2,
              device="cpu", seed=3)


def _record_rollouts(model: RecurrentPPO) -> list[dict[str, torch.Tensor]]:
    """Every rollout ``model`` trains on (its buffer's tensors and chunk states), as it enters the update."""
    seen: list[dict[str, torch.Tensor]] = []
    update = model._update

    def spy(buf, progress):
        parts = buf.parts()
        seen.append({**{k: v for k, v in parts.items() if isinstance(v, torch.Tensor)},
                     "states": torch.cat([t.flatten() for s in parts["chunk_states"] for t in (*s.actor, *s.critic)])})
        return update(buf, progress)

    model._update = spy
    return seen


def _assert_same_training(a: RecurrentPPO, seen_a: list, b: RecurrentPPO, seen_b: list) -> None:
    assert len(seen_a) == len(seen_b) == 2
    for ra, rb in zip(seen_a, seen_b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert torch.equal(ra[k], rb[k]), k
    for (k, p), q in zip(a.policy.state_dict().items(), b.policy.state_dict().values()):
        assert torch.equal(p, q), k
    assert torch.equal(a.reward_norm.var, b.reward_norm.var)


def _ppo_pair(address: str) -> None:
    """One process with 32 envs and 2 workers x 16 envs: identical rollouts and weights after 2 updates."""
    a = RecurrentPPO("recurl/TMaze-v0", **PPO_KW)
    seen_a = _record_rollouts(a)
    a.learn(total_steps=32 * 16 * 2, progress_bar=False)
    b = RecurrentPPO("recurl/TMaze-v0", workers=2, ray_address=address, **PPO_KW)
    seen_b = _record_rollouts(b)
    b.learn(total_steps=32 * 16 * 2, progress_bar=False)
    b.shutdown_workers()
    _assert_same_training(a, seen_a, b, seen_b)


# -- without a cluster -------------------------------------------------------------------------------------
def test_sample_rows_equals_the_rows_of_a_full_batch() -> None:
    """A worker's rows sampled from a padded batch are the rows one process samples for them, and the RNG
    ends in the same state (categorical, multi-discrete, Gaussian)."""
    torch.manual_seed(0)
    dists = [ActionDist("categorical", torch.randn(12, 5)),
             ActionDist("multi", torch.randn(12, 7), splits=[3, 4]),
             ActionDist("gaussian", torch.randn(12, 2), log_std=torch.randn(2))]
    for full in dists:
        for offset in (0, 4, 8):
            own = ActionDist(full.kind, full.params[offset : offset + 4], full.log_std, full.splits)
            for _ in range(3):
                state = torch.get_rng_state()
                want = full.sample()[offset : offset + 4]
                after = torch.get_rng_state()
                torch.set_rng_state(state)
                assert torch.equal(sample_rows(own, offset, 12), want), full.kind
                assert torch.equal(torch.get_rng_state(), after)


def test_inline_workers_train_exactly_like_one_process() -> None:
    _ppo_pair(distributed.INLINE)


def test_workers_without_ray_is_one_clear_error(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(distributed, "ray", None)
    with pytest.raises(RecurlError, match=r"pip install 'recurl\[ray\]'"):
        RecurrentPPO("recurl/TMaze-v0", workers=2, **PPO_KW).learn(total_steps=512, progress_bar=False)
    with pytest.raises(RecurlError, match="needs Ray"):
        R2D2("recurl/TMaze-v0", num_envs=4, workers=2, device="cpu").learn(total_steps=100, progress_bar=False)
    assert main(["train", "--algo", "ppo", "--env", "recurl/TMaze-v0", "--workers", "2", "--quiet",
                 "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "recurl: error: --workers needs Ray" in err and "Traceback" not in err


def test_workers_must_divide_the_envs() -> None:
    with pytest.raises(RecurlError, match="multiple of --workers"):
        RecurrentPPO("recurl/TMaze-v0", workers=3, **PPO_KW)
    with pytest.raises(RecurlError, match="multiple of --workers"):
        R2D2("recurl/TMaze-v0", num_envs=4, workers=3)


def _small_r2d2(address: str, **kw) -> R2D2:
    return R2D2("recurl/TMaze-v0", env_kwargs={"length": 4}, num_envs=4, workers=2, ray_address=address,
                sync_every=10, learning_starts=200, batch_size=8, seq_len=8, overlap=4, burn_in=2, device="cpu",
                train_every=4, policy=QNetworkConfig(hidden_size=16, encoder_hidden=(16,)), **kw)


def test_inline_r2d2_actors_push_prioritised_windows_and_the_learner_updates() -> None:
    m = _small_r2d2(distributed.INLINE)
    m.learn(total_steps=480, progress_bar=False)
    assert m.num_timesteps >= 480
    # the replay ratio of one process: an update every train_every env steps after learning_starts
    assert m.n_updates == (m.num_timesteps - 200) // 4
    assert len(m.replay) > 0 and m.remote_stats.episodes > 0
    prio = m.replay.priorities[: len(m.replay)]
    assert np.isfinite(prio).all() and len(np.unique(prio)) > 1  # actors' TD priorities, not one max value
    # the Ape-X epsilons of the 4 envs, split between the workers
    eps = torch.cat([w.epsilons() for w in m.pool.workers])
    m.pool.workers = []
    full = R2D2("recurl/TMaze-v0", num_envs=4, device="cpu").epsilons()
    assert torch.equal(eps, full)


# -- on a local Ray cluster --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_workers_train_exactly_like_one_process(cluster) -> None:
    _ppo_pair("")


@pytest.mark.slow
def test_killed_worker_is_restarted_and_the_run_resumes(cluster, tmp_path) -> None:
    """SIGKILL a worker after the first update: Ray restarts it, training finishes; then the run resumes."""
    run = tmp_path / "run"
    m = RecurrentPPO("recurl/TMaze-v0", workers=2, **{**PPO_KW, "num_envs": 4, "batch_size": 64})
    killed = []

    def kill_one(model: RecurrentPPO) -> None:
        if model.n_updates == 1:
            pid = model.pool.pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    m.learn(total_steps=4 * 16 * 4, callback=kill_one, progress_bar=False, run_dir=run)
    assert killed and m.n_updates == 4 and m.pool.restarts >= 1
    assert m.pool.pids()[0] != killed[0]  # a new process
    m.shutdown_workers()
    r = RecurrentPPO.resume(run, progress=False, total_steps=4 * 16 * 6)
    assert r.n_updates == 6 and r.num_timesteps == 4 * 16 * 6
    r.shutdown_workers()


@pytest.mark.slow
def test_r2d2_with_two_actor_workers_learns_the_tmaze(cluster) -> None:
    """The slow T-maze check of tests/test_r2d2.py (4-cell corridor) with two asynchronous actor workers.

    Asynchronous actors make the run depend on timing (which weights each window was acted with), so a
    fixed budget is not a fixed run: it trains until two evaluations in a row (50 fresh episodes each)
    average a return of 0.95, within a budget of twice what one process needs (30k steps on seeds 0-3),
    and the held policy must then succeed on 95% of 100 other episodes."""
    m = R2D2("recurl/TMaze-v0", env_kwargs={"length": 4}, num_envs=8, workers=2, sync_every=25, seed=0,
             device="cpu", seq_len=12, overlap=0, burn_in=0, learning_starts=1000, batch_size=16, train_every=8,
             replay_capacity=4000, gamma=0.95, value_rescaling=False, n_step=1, learning_rate=1e-3,
             target_update_every=200, eval_every=5000, eval_episodes=50, stop_at_return=0.95, hold=2,
             policy=QNetworkConfig(core="lstm", hidden_size=32, encoder_hidden=(32,)))
    m.learn(60_000, progress_bar=False)
    restarts = m.pool.restarts
    m.shutdown_workers()
    r = evaluate_policy(m, n_episodes=100, seed=123)
    assert r["success_rate"] >= 0.95, (r, m.eval_record, m.num_timesteps, m.n_updates, restarts)
