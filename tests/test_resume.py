"""Killed and resumed runs: real ``recurl train`` processes SIGKILLed before their first checkpoint, at a
random moment, between the files of a checkpoint and after the last one, then ``recurl train --resume``d.

What must hold for PPO, R2D2 and BC: the resumed run exits 0 at exactly the budget an uninterrupted run
reaches (never one update more), every file loads, ``progress.csv`` has one header and strictly
increasing ``env_steps``, and no checkpoint temporary is left. BC (no env) resumes bit-exactly. PPO and
R2D2 restart their episodes (and R2D2 its replay) from a fresh seeded reset, so they are not bit-exact
against an uninterrupted run: what is checked there is that resume continues the checkpoint's counters
and weights, and that resuming the same checkpoint twice gives identical results.

Kill points inside a checkpoint are hit deterministically by a wrapper script (written into the test's
temporary directory, never into the library) that SIGKILLs the child just before its k-th ``os.replace``
onto a given file name, or its k-th ``os.fsync``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from safetensors.torch import load_file

from recurl.checkpoint import MANIFEST_FILE, MODEL_FILE, read_run
from recurl.cli import main
from recurl.data.trajectories import write_dataset
from recurl.record import collect_episodes
from recurl.runs import load_model

SMALL = ["--hidden-size", "8", "--encoder-hidden", "8", "--device", "cpu", "--threads", "1", "--eval-episodes", "2",
         "--quiet"]
TMAZE = ["--env", "recurl/TMaze-v0", "--env-kwargs", "length", "3", "--num-envs", "2"]
#: tiny runs with frequent checkpoints (PPO: 20 updates of 16 steps; R2D2: 120 vector steps; BC: stops at
#: its 100th gradient step, in epoch 13 of 8 steps each)
ARGS = {
    "ppo": ["--algo", "ppo", *TMAZE, "--n-steps", "8", "--batch-size", "16", "--n-epochs", "1",
            "--total-steps", "320", "--checkpoint-every", "2", *SMALL],
    "r2d2": ["--algo", "r2d2", *TMAZE, "--learning-starts", "16", "--batch-size", "4", "--seq-len", "4",
             "--overlap", "0", "--burn-in", "0", "--train-every", "4", "--total-steps", "240",
             "--checkpoint-every", "3", *SMALL],
    "bc": ["--algo", "bc", "--max-epochs", "20", "--max-steps", "100", "--val-fraction", "0.2", "--chunk-len", "4",
           "--batch-size", "4", "--checkpoint-every", "2", *SMALL],
}
PENDING = ".checkpoint-pending.json"
#: the scripted optimal plan on the fixed SwampTour T-maze (as in test_bc.py): BC's expert
SWAMP_TMAZE, PLAN = "recurl/SwampTour-Tmaze_both-v0", [0, 0, 1, 0, 0, 0, 0, 2, 0, 0]

KILLER = '''\
"""recurl's CLI, SIGKILLed just before the k-th os.replace onto NAME (RECURL_TEST_KILL_AT=NAME:k) or the
k-th os.fsync (fsync:k). Test-only: recurl itself has no such hook."""
import os
import signal
import sys

what, _, k = os.environ["RECURL_TEST_KILL_AT"].rpartition(":")
k, seen = int(k), 0


def hooked(real, hit):
    def call(*args, **kwargs):
        global seen
        if hit(*args):
            seen += 1
            if seen == k:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call


if what == "fsync":
    os.fsync = hooked(os.fsync, lambda fd: True)
else:
    os.replace = hooked(os.replace, lambda src, dst, *a: os.path.basename(os.fspath(dst)) == what)

from recurl.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
'''


class Scripted:
    def reset(self, env: gym.Env) -> None:
        self.i = 0

    def act(self, obs) -> int:
        self.i += 1
        return PLAN[self.i - 1] if self.i <= len(PLAN) else 0


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's directory: the kill wrapper and BC's dataset."""
    d = tmp_path_factory.mktemp("resume")
    (d / "killer.py").write_text(KILLER)
    env = gym.make(SWAMP_TMAZE)
    write_dataset(d / "tmaze-v0", collect_episodes(env, Scripted(), 12, seed=0), SWAMP_TMAZE)
    env.close()
    return d


def _args(algo: str, work: Path) -> list[str]:
    return ARGS[algo] + (["--dataset", str(work / "tmaze-v0")] if algo == "bc" else [])


@pytest.fixture(scope="module")
def reference(work: Path) -> dict[str, Path]:
    """Uninterrupted runs, trained once per algorithm on first use (in this process)."""

    class Lazy(dict):
        def __missing__(self, algo: str) -> Path:
            run = work / f"ref_{algo}"
            assert main(["train", *_args(algo, work), "--run-dir", str(run)]) == 0
            self[algo] = run
            return run

    return Lazy()


# -- helpers ----------------------------------------------------------------------------------------------
def _cli(work: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """``recurl ARGS`` in a child process, through the kill wrapper when ``kill_at`` is given."""
    env = dict(os.environ, RECURL_TEST_KILL_AT=kill_at or "")
    cmd = [sys.executable, str(work / "killer.py")] if kill_at else [sys.executable, "-m", "recurl.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env=env)


def _killed_at(work: Path, args: list[str], spec: str) -> None:
    res = _cli(work, *args, kill_at=spec)
    assert res.returncode == -signal.SIGKILL, f"kill point {spec} was never reached:\n{res.stderr[-2000:]}"


def _resume(work: Path, run: Path) -> None:
    res = _cli(work, "train", "--resume", str(run), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr


def _kill_after_a_checkpoint(args: list[str], run: Path, delay: float) -> None:
    """Start ``recurl ARGS``, wait for a checkpoint newer than the one in ``run`` (if any), sleep ``delay``
    and SIGKILL it: a wall-clock kill point, wherever the run happens to be."""
    before = _generation(run)
    with open(run.parent / f"{run.name}.stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "recurl.cli", *args], stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 120
        while _generation(run) <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        proc.kill()
        code = proc.wait()
    assert code == -signal.SIGKILL, f"the run ended (exit {code}) before the kill: make it longer"
    assert _generation(run) > before, "killed before a new checkpoint was written"


def _generation(run: Path) -> int:
    try:
        return json.loads((run / MANIFEST_FILE).read_text())["generation"]
    except (OSError, ValueError, KeyError):
        return 0


def _checkpoint_temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".recurl-tmp") or p.name == PENDING)


def _progress(run: Path) -> list[dict[str, str]]:
    """``progress.csv``'s rows, checked: one header, complete rows, strictly increasing ``env_steps``."""
    text = (run / "progress.csv").read_text()
    lines = text.splitlines()
    assert lines and lines[0].startswith("env_steps,") and lines.count(lines[0]) == 1, "a repeated header"
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert all(None not in r and None not in r.values() for r in rows), "a row with a wrong number of cells"
    steps = [float(r["env_steps"]) for r in rows]
    assert all(b > a for a, b in zip(steps, steps[1:])), f"env_steps not strictly increasing: {steps}"
    return rows


def _untimed(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _trainer(run: Path) -> dict:
    return read_run(run, trainer_keys=()).trainer_state


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / MODEL_FILE))


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _check_clean(run: Path) -> None:
    """A finished run: no checkpoint temporary left, every file loads, ``progress.csv`` is well formed."""
    assert _checkpoint_temporaries(run) == []
    load_model(run, device="cpu")
    _trainer(run)
    json.loads((run / "summary.json").read_text())
    _progress(run)
    assert list((run / "tb").iterdir()) and (run / "curve.png").is_file()


def _check_budget(run: Path, ref: Path, algo: str) -> None:
    """The run ended exactly where the uninterrupted run ``ref`` did: not one update more."""
    state, ref_state = _trainer(run), _trainer(ref)
    rows, ref_rows = _progress(run), _progress(ref)
    assert rows[-1]["env_steps"] == ref_rows[-1]["env_steps"]
    if algo == "bc":  # the budget is epochs and gradient steps (--max-steps 100); no env steps
        assert (state["epoch"], state["n_updates"]) == (ref_state["epoch"], ref_state["n_updates"]) == (13, 100)
        assert [r["train/epoch"] for r in rows] == [str(e) for e in range(1, 14)]
        return
    budget = int(ARGS[algo][ARGS[algo].index("--total-steps") + 1])
    summary, ref_summary = (json.loads((r / "summary.json").read_text()) for r in (run, ref))
    assert (summary["env_steps"], state["num_timesteps"]) == (ref_summary["env_steps"], budget) == (budget, budget)
    if algo == "ppo":  # one row per update, each update once: 1, 2, ..., 20
        assert state["n_updates"] == ref_state["n_updates"] == 20
        assert [int(r["train/n_updates"]) for r in rows] == list(range(1, 21))


# -- the kill chain ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chains(work: Path) -> dict:
    """Per algorithm, on first use: one run directory killed and resumed again and again, like a run on a
    flaky machine:

    1. trained, SIGKILLed at a random moment (wall clock) after its first checkpoint;
    2. resumed, killed between the files of its first checkpoint (model renamed; config, trainer not);
    3. resumed, killed after its final checkpoint, before ``summary.json`` is written;
    4. resumed to the end (in this process: ``main``).

    Copies of the directory as stage 2 and stage 3 left it (raw: not recovered) are kept as ``killed``
    and ``final``.
    """

    class Lazy(dict):
        def __missing__(self, algo: str) -> dict:
            run = work / f"chain_{algo}"
            delay = random.Random(algo).uniform(0.0, 0.15)
            _kill_after_a_checkpoint(["train", *_args(algo, work), "--run-dir", str(run)], run, delay)
            _killed_at(work, ["train", "--resume", str(run), "--quiet"], "config.json:1")
            assert PENDING in _checkpoint_temporaries(run), "not killed between the files of a checkpoint"
            shutil.copytree(run, work / f"killed_{algo}")
            _killed_at(work, ["train", "--resume", str(run), "--quiet"], "summary.json:1")
            shutil.copytree(run, work / f"final_{algo}")
            assert main(["train", "--resume", str(run), "--quiet"]) == 0
            self[algo] = {"run": run, "killed": work / f"killed_{algo}", "final": work / f"final_{algo}"}
            return self[algo]

    return Lazy()


# Each algorithm's chain is ~15 s of killed processes: slow tests (the fast suite resumes in process below)
ALGOS = [pytest.param(a, marks=pytest.mark.slow) for a in ("ppo", "r2d2", "bc")]


@pytest.mark.parametrize("algo", ALGOS)
def test_a_run_killed_anywhere_resumes_clean(chains: dict, algo: str) -> None:
    _check_clean(chains[algo]["run"])


@pytest.mark.parametrize("algo", ALGOS)
def test_a_run_killed_anywhere_resumes_to_exactly_its_budget(chains: dict, reference: dict, algo: str) -> None:
    run, final = chains[algo]["run"], chains[algo]["final"]
    _check_budget(run, reference[algo], algo)
    # resumed after its final checkpoint, the run only wrote its summary: no update, no row, the same weights
    assert _trainer(run)["n_updates"] == _trainer(final)["n_updates"]
    assert _untimed(_progress(run)) == _untimed(_progress(final))
    assert _same_tensors(_tensors(run), _tensors(final))


@pytest.mark.slow
def test_bc_resumes_bit_exactly(chains: dict, reference: dict) -> None:
    """BC has no env: killed at a random moment and between the files of a checkpoint, resumed in other
    processes, it ends with the uninterrupted run's exact weights, optimizer state and logged numbers."""
    final, ref = chains["bc"]["final"], reference["bc"]
    _check_budget(final, ref, "bc")
    assert _same_tensors(_tensors(final), _tensors(ref))
    assert _untimed(_progress(final)) == _untimed(_progress(ref))
    state, ref_state = _trainer(final), _trainer(ref)
    assert (state["best_val"], state["bad_epochs"]) == (ref_state["best_val"], ref_state["bad_epochs"])
    opt, ref_opt = state["optimizer"]["state"], ref_state["optimizer"]["state"]
    assert opt.keys() == ref_opt.keys() and all(_same_tensors(opt[k], ref_opt[k]) for k in opt)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "r2d2"])
def test_resume_is_deterministic_and_continues_the_checkpoint(chains: dict, work: Path, algo: str) -> None:
    """Not bit-exact against an uninterrupted run (episodes restart from a fresh seeded reset; R2D2's
    replay refills), but one checkpoint resumed twice, in two processes, gives the same run; and resume
    starts from the checkpoint's counters and weights."""
    killed, final = chains[algo]["killed"], chains[algo]["final"]  # final: killed, resumed by a child process
    twin, probe = work / f"twin_{algo}", work / f"probe_{algo}"
    shutil.copytree(killed, twin)
    shutil.copytree(killed, probe)
    assert main(["train", "--resume", str(twin), "--quiet"]) == 0  # the same checkpoint, resumed in this process
    assert _same_tensors(_tensors(twin), _tensors(final))
    a, b = _trainer(twin), _trainer(final)
    assert (a["num_timesteps"], a["n_updates"]) == (b["num_timesteps"], b["n_updates"])
    assert _same_tensors(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    assert _untimed(_progress(twin)) == _untimed(_progress(final))
    # ... continuing the checkpoint's counters: the first row logged after it
    saved = read_run(probe, trainer_keys=())
    steps, updates = saved.trainer_state["num_timesteps"], saved.trainer_state["n_updates"]
    after = next(r for r in _progress(twin) if float(r["env_steps"]) > steps)
    if algo == "ppo":  # the next update, one rollout (16 steps) later
        assert (int(after["env_steps"]), int(after["train/n_updates"])) == (steps + 16, updates + 1)
    else:  # the next vector step; the replay refills (learning_starts) before the next update
        assert (int(after["env_steps"]), int(after["train/n_updates"])) == (steps + 2, updates)
    # ... and its weights: resumed to a budget already reached, it trains no further and saves them as read
    assert main(["train", "--resume", str(probe), "--total-steps", str(steps), "--quiet"]) == 0
    assert _trainer(probe)["n_updates"] == updates
    assert _same_tensors(_tensors(probe), {k: v.contiguous() for k, v in saved.tensors.items()})


@pytest.mark.slow
def test_resume_before_the_first_checkpoint_is_one_clear_error(work: Path, tmp_path: Path) -> None:
    """Killed at its first checkpoint's commit point (every file written under a temporary name, none
    committed): there is nothing to resume, said in one line; a new run over it (--overwrite) is clean."""
    run = tmp_path / "run"
    train = ["train", *_args("ppo", work), "--run-dir", str(run)]
    _killed_at(work, train, f"{PENDING}:1")
    assert not (run / MANIFEST_FILE).exists() and _checkpoint_temporaries(run), "not killed mid-checkpoint"
    res = _cli(work, "train", "--resume", str(run), "--quiet")
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and lines[0].startswith(f"recurl: error: no config.json at {run}"), res.stderr
    assert main([*train, "--overwrite"]) == 0
    _check_clean(run)


@pytest.mark.slow  # the PPO kill chain (~15 s of killed processes)
def test_a_killed_run_leaves_no_hidden_file_at_all(chains: dict) -> None:
    run = chains["ppo"]["run"]  # killed once just before summary.json was renamed into place
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


# -- every kill point inside a checkpoint, and before the first one (slow) -------------------------------------
#: in write order: temporaries fsynced (model, config, trainer, manifest, directory: checkpoint 2's are
#: fsync 8-12), the commit (rename onto the pending manifest), the members renamed, the manifest renamed
INSIDE = ["fsync:9", "fsync:12", f"{PENDING}:2", "model.safetensors:2", "trainer.pt:2", "checkpoint.json:2"]


@pytest.mark.slow
@pytest.mark.parametrize("spec", INSIDE)
@pytest.mark.parametrize("algo", ALGOS)
def test_every_kill_point_inside_a_checkpoint_resumes(work: Path, reference: dict, tmp_path: Path, algo: str,
                                                      spec: str) -> None:
    run = tmp_path / "run"
    _killed_at(work, ["train", *_args(algo, work), "--run-dir", str(run)], spec)
    assert _checkpoint_temporaries(run), f"{spec} is not inside a checkpoint"
    _resume(work, run)
    _check_clean(run)
    _check_budget(run, reference[algo], algo)
    if algo == "bc":
        assert _same_tensors(_tensors(run), _tensors(reference[algo]))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["r2d2", "bc"])
def test_resume_before_the_first_checkpoint_fails_for_every_algorithm(work: Path, tmp_path: Path, algo: str) -> None:
    run = tmp_path / "run"
    _killed_at(work, ["train", *_args(algo, work), "--run-dir", str(run)], f"{PENDING}:1")
    res = _cli(work, "train", "--resume", str(run), "--quiet")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert [line for line in res.stderr.splitlines() if line.strip()] == [
        f"recurl: error: no config.json at {run}: pass a run directory written by recurl"]
