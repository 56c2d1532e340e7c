"""Run directories on disk: atomic checkpoint sets, recovery after a kill, format and structure checks,
resume keeping the run's objective, and ``progress.csv`` bookkeeping."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from recurl.algos.ppo import RecurrentPPO
from recurl.checkpoint import (
    CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    TRAINER_FILE,
    encode_json,
    encode_trainer_state,
    read_checkpoint,
    read_run,
    write_checkpoint,
    write_json,
)
from recurl.errors import RecurlError
from recurl.logger import RunLogger

ENV = "recurl/TMaze-v0"
NAMES = (CONFIG_FILE, MODEL_FILE, TRAINER_FILE)


def _tiny(**kw) -> RecurrentPPO:
    return RecurrentPPO(ENV, env_kwargs={"length": 3}, num_envs=2, n_steps=8, batch_size=16, n_epochs=1,
                        eval_episodes=1, device="cpu", policy={"hidden_size": 8, "encoder_hidden": (8,)}, **kw)


def _leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PPO run directory with a full checkpoint (config, weights, trainer state, manifest)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    _tiny(total_steps=16).learn(progress_bar=False, run_dir=run)
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


# -- the set is atomic ----------------------------------------------------------------------------------
def _write_killed_at(run: Path, files: dict[str, bytes], k: int) -> bool:
    """``write_checkpoint`` in a forked child killed (``os._exit``: no cleanup runs) just before its k-th
    fsync or rename; True if the write completed first."""
    pid = os.fork()
    if pid == 0:
        calls = 0

        def killed_at_k(real):
            def call(*args):
                nonlocal calls
                calls += 1
                if calls == k:
                    os._exit(3)
                return real(*args)
            return call

        try:
            os.fsync, os.replace = killed_at_k(os.fsync), killed_at_k(os.replace)
            write_checkpoint(run, files)
            os._exit(0)
        except BaseException:
            os._exit(1)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert code in (0, 3), "the writer failed"
    return code == 0


@pytest.mark.parametrize("legacy", [False, True], ids=["manifest", "legacy"])
def test_a_writer_killed_anywhere_leaves_exactly_the_old_or_the_new_set(tmp_path: Path, legacy: bool) -> None:
    old = {n: f"old {n}".encode() for n in NAMES}
    new = {n: f"new {n}, longer".encode() for n in NAMES}
    seen = []
    for k in range(1, 30):  # every kill point, until one lies past the write's last step
        run = tmp_path / f"k{k}"
        if legacy:  # a run directory written before manifests existed
            run.mkdir()
            for n, data in old.items():
                (run / n).write_bytes(data)
        else:
            write_checkpoint(run, old)
        completed = _write_killed_at(run, new, k)
        got = read_checkpoint(run, NAMES)
        assert got in (old, new), f"kill point {k} left a mixed set"
        assert _leftovers(run) == [], f"kill point {k} left temporaries"
        seen.append("new" if got == new else "old")
        if completed:  # k lies past the write's last step
            break
    assert seen[-1] == "new" and "old" in seen and seen == sorted(seen, reverse=True), seen  # old..., new...


def test_a_failed_model_checkpoint_loads_as_the_old_or_the_new_model(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny(total_steps=16)
    dirs = [tmp_path / f"k{k}" for k in range(1, 7)]
    for d in dirs:
        model.checkpoint(d)
    old_weights = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(16, progress_bar=False)
    outcomes = set()
    for k, d in enumerate(dirs, start=1):
        calls, real = [0], os.replace

        def failing(*args, k=k, calls=calls, real=real):
            calls[0] += 1
            if calls[0] == k:
                raise OSError(28, "No space left on device")
            return real(*args)

        monkeypatch.setattr(os, "replace", failing)
        try:
            model.checkpoint(d)
        except RecurlError as e:
            assert "cannot write a checkpoint" in str(e)
        monkeypatch.undo()
        saved = read_run(d, trainer_keys=())
        weights = {k[7:]: v for k, v in saved.tensors.items() if k.startswith("policy.")}
        is_new = saved.trainer_state["n_updates"] == model.n_updates
        expected = model.policy.state_dict() if is_new else old_weights
        assert all(torch.equal(weights[n], t) for n, t in expected.items()), f"mixed set after failure {k}"
        assert saved.trainer_state["n_updates"] == (model.n_updates if is_new else 0)
        assert _leftovers(d) == []
        outcomes.add(is_new)
    assert outcomes == {False, True}


def test_a_replaced_file_is_refused_and_deleting_the_manifest_accepts_it(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    _tiny(seed=1).save(other)
    shutil.copy(other / MODEL_FILE, run / MODEL_FILE)  # a valid file, but from another model
    with pytest.raises(RecurlError, match=f"corrupt model file .*{MODEL_FILE}: it does not match {MANIFEST_FILE}"):
        RecurrentPPO.load(run)
    (run / MANIFEST_FILE).unlink()
    RecurrentPPO.load(run, device="cpu")  # as a run directory written before manifests: unverified


def test_a_run_directory_written_before_manifests_loads(run: Path) -> None:
    (run / MANIFEST_FILE).unlink()
    meta = json.loads((run / CONFIG_FILE).read_text())
    del meta["format_version"]
    (run / CONFIG_FILE).write_text(json.dumps(meta))
    assert RecurrentPPO.load(run, device="cpu").observation_space == read_run(run).observation_space
    assert read_run(run, trainer_keys=("optimizer",)).trainer_state["n_updates"] == 1


def test_stale_temporaries_are_removed_and_edits_through_recurl_stay_verified(run: Path) -> None:
    (run / f".{MODEL_FILE}.recurl-tmp").write_bytes(b"half a model")  # from a write that never committed
    generation = json.loads((run / MANIFEST_FILE).read_text())["generation"]
    meta = read_run(run).meta
    assert _leftovers(run) == []
    meta["config"]["total_steps"] = 32
    write_json(run / CONFIG_FILE, meta)  # a hand edit written back with recurl: a new generation of the set
    assert json.loads((run / MANIFEST_FILE).read_text())["generation"] == generation + 1
    assert read_run(run).meta["config"]["total_steps"] == 32


def test_a_filesystem_without_locks_still_loads(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import fcntl

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    RecurrentPPO.load(run, device="cpu").save(run)
    assert RecurrentPPO.load(run, device="cpu").algo == "ppo"


def test_save_drops_the_trainer_state_of_an_earlier_checkpoint(run: Path) -> None:
    RecurrentPPO.load(run, device="cpu").save(run)
    assert not (run / TRAINER_FILE).exists()
    with pytest.raises(RecurlError, match="no trainer.pt .*no checkpoint to resume from"):
        RecurrentPPO.resume(run, progress=False)


def test_save_to_an_unwritable_path_is_a_clear_error(tmp_path: Path) -> None:
    model = _tiny()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(RecurlError, match="cannot write a checkpoint to .*a_file/run"):
        model.save(tmp_path / "a_file" / "run")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only directory is still writable")
        with pytest.raises(RecurlError, match="cannot write a checkpoint"):
            model.save(locked / "run")
    finally:
        locked.chmod(0o700)


# -- format version and structure -----------------------------------------------------------------------
def _edit_config(run: Path, edit) -> None:
    meta = json.loads((run / CONFIG_FILE).read_text())
    write_checkpoint(run, {CONFIG_FILE: encode_json(edit(meta))}, update=True)


@pytest.mark.parametrize("edit,message", [
    (lambda m: {**m, "format_version": 99}, r"format version 99\), newer than this recurl .* \(format 1\): upgrade"),
    (lambda m: {**m, "versions": {**m["versions"], "recurl": "99.0.0"}}, r"written by recurl 99.0.0.*upgrade recurl"),
    (lambda m: [], r"config.json is not a recurl file \(expected a JSON object, got list\)"),
    (lambda m: {k: v for k, v in m.items() if k != "config"}, r"malformed .*config.json: it needs \"algo\""),
    (lambda m: {**m, "config": "oops"}, r"malformed .*config.json: it needs"),
    (lambda m: {k: v for k, v in m.items() if k != "action_space"}, r"malformed .*config.json: no action_space"),
    (lambda m: {**m, "observation_space": {"type": "Box"}}, r"config.json: bad observation_space: malformed"),
    (lambda m: {**m, "observation_space": "Box(4)"}, r"config.json: bad observation_space"),
    (lambda m: {**m, "format_version": "1"}, r"config.json: format_version must be an integer"),
])
def test_config_json_problems_are_one_clear_error(run: Path, edit, message: str) -> None:
    _edit_config(run, edit)
    for load in (lambda: RecurrentPPO.load(run), lambda: RecurrentPPO.resume(run, progress=False)):
        with pytest.raises(RecurlError, match=message):
            load()


@pytest.mark.parametrize("data,message", [
    (b"", "corrupt model file"),
    (b"\x00garbage" * 10, "corrupt model file"),
    (None, "corrupt model file"),  # truncated
])
def test_corrupt_weights_are_one_clear_error(run: Path, data: bytes | None, message: str) -> None:
    if data is None:
        data = (run / MODEL_FILE).read_bytes()[:100]
    write_checkpoint(run, {MODEL_FILE: data}, update=True)  # committed, so the parser itself is reached
    with pytest.raises(RecurlError, match=f"{message} .*{MODEL_FILE}"):
        RecurrentPPO.load(run)


@pytest.mark.parametrize("state,message", [
    ([1, 2, 3], "corrupt trainer state .*trainer.pt: it holds a list, not a dict"),
    ({"optimizer": {}}, "trainer state .*trainer.pt lacks num_timesteps, n_updates, span, torch_rng"),
    (b"truncated", r"corrupt trainer state .*trainer.pt \("),
])
def test_bad_trainer_state_is_one_clear_error(run: Path, state, message: str) -> None:
    data = state if isinstance(state, bytes) else encode_trainer_state(state)
    write_checkpoint(run, {TRAINER_FILE: data}, update=True)
    with pytest.raises(RecurlError, match=message):
        RecurrentPPO.resume(run, progress=False)


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_file_is_one_clear_error(run: Path, name: str) -> None:
    (run / name).unlink()
    with pytest.raises(RecurlError, match=f"no {name} at {run}"):
        RecurrentPPO.resume(run, progress=False)


# -- resume keeps the run's objective -------------------------------------------------------------------
def test_resume_keeps_the_kl_teacher(trained: Path, tmp_path: Path) -> None:
    student_dir = tmp_path / "student"
    student = _tiny(total_steps=16, seed=3, init_from=str(trained), kl_teacher=0.5)
    student.learn(progress_bar=False, run_dir=student_dir)
    assert RecurrentPPO.load(student_dir, device="cpu").teacher is None  # acting needs no teacher
    resumed = RecurrentPPO.resume(student_dir, progress=False)
    assert resumed.config.kl_teacher == 0.5 and resumed.config.init_from == str(trained)
    assert resumed.teacher is not None
    teacher = RecurrentPPO.load(trained, device="cpu").policy.state_dict()
    assert all(torch.equal(v, teacher[k]) for k, v in resumed.teacher.state_dict().items())
    # ... and the student continues from its own weights, not the teacher's
    assert all(torch.equal(v, student.policy.state_dict()[k]) for k, v in resumed.policy.state_dict().items())


# -- progress.csv ---------------------------------------------------------------------------------------
def _rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def test_a_metric_appearing_later_widens_the_csv(tmp_path: Path) -> None:
    log = RunLogger(tmp_path, 100, progress=False)
    log.start(0)
    log.log(8, {"time/fps": 10.0})
    log.log(16, {"time/fps": 11.0, "rollout/ep_rew_mean": 0.5})
    log.log(24, {"rollout/ep_rew_mean": 0.7, "time/fps": 12.0})
    log.close()
    assert _rows(tmp_path / "progress.csv") == [
        ["env_steps", "time/fps", "rollout/ep_rew_mean"], ["8", "10.0", ""], ["16", "11.0", "0.5"],
        ["24", "12.0", "0.7"]]
    assert (tmp_path / "curve.png").is_file()


def test_atomic_files_get_the_mode_open_would_give(tmp_path: Path) -> None:
    """progress.csv (and every file written atomically) is readable as a plain ``open`` would leave it, not
    the temporary file's private 0600, so a TensorBoard server or a teammate can read the run."""
    log = RunLogger(tmp_path, 100, progress=False)
    log.start(0)
    log.log(8, {"time/fps": 10.0})
    log.close()
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert (tmp_path / "progress.csv").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_resume_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    log = RunLogger(tmp_path, 100, progress=False)
    log.start(0)
    for step in (8, 16, 24, 32):
        log.log(step, {"time/fps": float(step)})
    log.close()
    with open(tmp_path / "progress.csv", "a") as f:
        f.write("40,4")  # a row cut off by the kill
    resumed = RunLogger(tmp_path, 100, progress=False)
    resumed.start(16)  # the checkpoint was at 16 env steps
    resumed.log(24, {"time/fps": 1.0})
    resumed.close()
    steps = [int(r[0]) for r in _rows(tmp_path / "progress.csv")[1:]]
    assert steps == [8, 16, 24]
