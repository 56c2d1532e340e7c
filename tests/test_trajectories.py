"""Minari trajectory datasets: write/load round trips, `recurl record`, `recurl play --record`."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from recurl.algos.bc import BCConfig, BehaviourCloning
from recurl.algos.ppo import RecurrentPPO
from recurl.cli import main
from recurl.data.trajectories import Episode, dataset_env, load_dataset, write_dataset
from recurl.errors import RecurlError
from recurl.play import play
from recurl.record import PolicyAgent, collect_episodes
from recurl.runs import load_model

RUIN = "recurl/SwampTour-ruin_2swamp-v0"


def _assert_same(a: list[Episode], b: list[Episode]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            u, v = np.asarray(getattr(x, name)), np.asarray(getattr(y, name))
            assert u.shape == v.shape and np.array_equal(u, v), name
        assert np.asarray(x.observations).dtype == np.asarray(y.observations).dtype


class _Random:
    def __init__(self, space: gym.Space) -> None:
        self.space = space

    def reset(self, env: gym.Env) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.space.sample()


def test_write_load_round_trip_is_exact_and_a_plain_minari_dataset(tmp_path, monkeypatch) -> None:
    env = gym.make(RUIN, max_time=7)
    env.action_space.seed(0)
    episodes = collect_episodes(env, _Random(env.action_space), 4, seed=0)
    path = write_dataset(tmp_path / "ruin-random-v0", episodes, RUIN, {"max_time": 7})
    assert (path / "data" / "metadata.json").is_file()
    ds = load_dataset(path)
    _assert_same(episodes, ds.episodes)
    assert (ds.env, ds.env_kwargs) == (RUIN, {"max_time": 7}) == dataset_env(path)
    assert ds.observation_space == env.observation_space and ds.action_space == env.action_space
    # Minari itself opens it from its datasets root, by id.
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    assert minari.load_dataset("ruin-random-v0").total_episodes == 4
    with pytest.raises(RecurlError, match="already exists"):
        write_dataset(path, episodes, RUIN)
    with pytest.raises(RecurlError, match="NAME-vN"):
        write_dataset(tmp_path / "no_version", episodes, RUIN)
    with pytest.raises(RecurlError, match="no Minari dataset"):
        load_dataset(tmp_path)


def test_continuous_actions_round_trip(tmp_path) -> None:
    env = gym.make("Pendulum-v1", max_episode_steps=5)
    env.action_space.seed(1)
    episodes = collect_episodes(env, _Random(env.action_space), 2, seed=1)
    _assert_same(episodes, load_dataset(write_dataset(tmp_path / "p-v0", episodes, "Pendulum-v1")).episodes)


def test_recurl_record_writes_the_agents_episodes(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    RecurrentPPO(RUIN, num_envs=2, n_steps=8, batch_size=16, device="cpu",
                 policy={"hidden_size": 8, "encoder_hidden": (8,)}).save(run)
    out = tmp_path / "demos-v0"
    assert main(["record", "--env", RUIN, "--from", str(run), "--episodes", "3", "--out", str(out)]) == 0
    assert "wrote 3 episodes" in capsys.readouterr().out
    env = gym.make(RUIN)
    again = collect_episodes(env, PolicyAgent(load_model(run, "cpu"), deterministic=True), 3, seed=0)
    _assert_same(again, load_dataset(out).episodes)  # record -> load gives exactly the episodes played
    assert main(["record", "--from", str(run), "--episodes", "2", "--out", str(tmp_path / "s-v0"),
                 "--stochastic", "--seed", "5"]) == 0
    assert len(load_dataset(tmp_path / "s-v0").episodes) == 2
    assert main(["record", "--from", str(run), "--episodes", "1", "--out", str(out)]) == 1  # never overwrites


def test_play_records_finished_keyboard_episodes(tmp_path) -> None:
    keys = itertools.cycle("wad")  # forward, left, right: a 20-step time-out at the latest
    out = tmp_path / "human-v0"
    played = play(RUIN, episodes=2, record=str(out), read_key=lambda _: next(keys), seed=4, show=lambda _: None)
    saved = load_dataset(out)
    assert saved.env == RUIN and len(saved.episodes) == 2
    for ep, data in zip(saved.episodes, played):
        np.testing.assert_array_equal(ep.observations, np.stack(data["obs"]))
        np.testing.assert_array_equal(ep.actions, data["actions"])
        np.testing.assert_array_equal(ep.rewards, data["rewards"])
        assert ep.terminations[-1] or ep.truncations[-1]
    with pytest.raises(RecurlError, match="already exists"):
        play(RUIN, record=str(out), read_key=lambda _: "q", show=lambda _: None)


def test_recorded_dataset_env_drives_bc_config(tmp_path) -> None:
    from recurl.algos.bc import BCConfig

    env = gym.make(RUIN, max_time=5)
    path = write_dataset(tmp_path / "d-v0", collect_episodes(env, _Random(env.action_space), 1), RUIN, {"max_time": 5})
    cfg = BCConfig(dataset=str(path))
    assert (cfg.env, cfg.env_kwargs) == (RUIN, {"max_time": 5})
    assert json.loads((path / "data" / "metadata.json").read_text())["recurl_env"] == RUIN


# -- reading a dataset is reading data ------------------------------------------------------------------
@pytest.fixture
def dataset(tmp_path) -> Path:
    """A small real dataset written by :func:`write_dataset` (2 episodes)."""
    env = gym.make(RUIN, max_time=5)
    env.action_space.seed(0)
    return write_dataset(tmp_path / "real-v0", collect_episodes(env, _Random(env.action_space), 2, seed=0), RUIN,
                         {"max_time": 5})


def _edit_metadata(path: Path, edit) -> None:
    meta_file = path / "data" / "metadata.json"
    meta_file.write_text(json.dumps(edit(json.loads(meta_file.read_text()))))


def test_loading_a_dataset_never_builds_its_env(dataset: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil-v0"
    shutil.copytree(dataset, evil)
    # A complete spec (minari would build it) whose "env" is os.system(command=...).
    spec = {**json.loads(json.loads((dataset / "data" / "metadata.json").read_text())["env_spec"]),
            "id": "Evil-v0", "entry_point": "os:system", "kwargs": {"command": f"touch {marker}"},
            "vector_entry_point": None}
    _edit_metadata(evil, lambda m: {**{k: v for k, v in m.items() if k not in (
        "observation_space", "action_space", "recurl_env", "recurl_env_kwargs")}, "env_spec": json.dumps(spec)})
    with pytest.raises(RecurlError, match="stores no observation_space .*recurl reads the spaces only from there"):
        load_dataset(evil)
    assert dataset_env(evil) == ("Evil-v0", {})  # the spec's id only: never its entry point or kwargs
    with pytest.raises(RecurlError, match="stores no observation_space"):
        BehaviourCloning(config=BCConfig(dataset=str(evil), env=RUIN, env_kwargs={"max_time": 5}, device="cpu"))
    _edit_metadata(evil, lambda m: {**m, "env_spec": json.dumps({**spec, "id": "os:system"})})
    with pytest.raises(RecurlError, match="names its env as 'os:system'"):
        dataset_env(evil)
    assert not marker.exists()


def test_write_dataset_takes_relative_paths_and_leaves_nothing_when_it_fails(dataset: Path, tmp_path: Path,
                                                                            monkeypatch) -> None:
    from minari.dataset._storages.arrow_storage import ArrowStorage

    episodes = load_dataset(dataset).episodes
    monkeypatch.chdir(tmp_path)
    _assert_same(episodes, load_dataset(write_dataset("data/rel-v0", episodes, RUIN)).episodes)

    def disk_full(self, buffers) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ArrowStorage, "update_episodes", disk_full)
    with pytest.raises(RecurlError, match="cannot write the dataset data/full-v0 .*No space left"):
        write_dataset("data/full-v0", episodes, RUIN)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["rel-v0"]  # no partial or staging dir
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert len(load_dataset(write_dataset("data/full-v0", episodes, RUIN)).episodes) == 2  # nothing blocks it


@pytest.mark.parametrize("damage,where", [
    (lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), "1/part-0.arrow"),
    (lambda f: f.write_bytes(b"not an arrow file" * 20), "1/part-0.arrow"),
    (lambda f: shutil.rmtree(f.parent), "data/1 does not exist"),
])
def test_a_damaged_episode_file_is_one_clear_error(dataset: Path, damage, where: str) -> None:
    damage(dataset / "data" / "1" / "part-0.arrow")
    with pytest.raises(RecurlError, match=f"episode 1 .*{where}"):
        load_dataset(dataset)
