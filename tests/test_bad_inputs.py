"""Bad input, one row each: a non-zero exit and one clear message naming the problem, never a traceback.

CLI rows run ``recurl.cli.main`` in-process against one tiny real run (trained once per module) and broken
copies of it; Python-API rows expect :class:`~recurl.errors.RecurlError`. Everything is refused before any
training starts, so the whole table runs in seconds.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recurl import RecurrentPPO
from recurl.algos.ppo import PPOConfig
from recurl.algos.r2d2 import R2D2Config
from recurl.cli import main
from recurl.envs import make_vec_env
from recurl.errors import RecurlError
from recurl.evaluation import evaluate_policy
from recurl.nn.policy import PolicyConfig

ENV = ["--env", "recurl/TMaze-v0", "--env-kwargs", "length", "3"]
TINY = [*ENV, "--total-steps", "64", "--num-envs", "2", "--n-steps", "32", "--batch-size", "32", "--eval-episodes", "2",
        "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny PPO run, broken copies of it, and other paths the rows point at (by name)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    run = root / "run"
    assert main(["train", "--algo", "ppo", *TINY, "--run-dir", str(run)]) == 0

    def copy(name: str, edit: Callable[[Path], Any]) -> None:
        shutil.copytree(run, root / name)
        # Without the checksum manifest (as runs written before it): the broken file itself is what is read.
        (root / name / "checkpoint.json").unlink(missing_ok=True)
        edit(root / name)

    model = (run / "model.safetensors").read_bytes()
    copy("truncated_model", lambda d: (d / "model.safetensors").write_bytes(model[: len(model) // 2]))
    copy("empty_model", lambda d: (d / "model.safetensors").write_bytes(b""))
    copy("garbage_model", lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 10))
    copy("missing_model", lambda d: (d / "model.safetensors").unlink())
    copy("list_config", lambda d: (d / "config.json").write_text("[]"))
    copy("unknown_algo", lambda d: (d / "config.json").write_text(json.dumps({"algo": "dqn"})))
    copy("broken_config", lambda d: (d / "config.json").write_text('{"algo": "ppo", '))
    copy("missing_config", lambda d: (d / "config.json").unlink())
    (root / "empty_dir").mkdir()
    (root / "a_file").write_text("not a directory\n")
    return {"run": run, "root": root, **{p.name: p for p in root.iterdir()}}


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on an env whose images need pygame (for the missing-dependency row)."""
    run = tmp_path_factory.mktemp("cartpole") / "run"
    assert main(["train", "--env", "recurl/CartPoleNoVel-v1", "--total-steps", "32", "--num-envs", "1",
                 "--n-steps", "32", "--batch-size", "32", "--eval-episodes", "1", "--quiet",
                 "--run-dir", str(run)]) == 0
    return run


# (argv with {name} placeholders for the fixture's paths and {new} for a fresh run dir, exit code, message)
CLI_ROWS: list[tuple[list[str], int, str]] = [
    # config values, refused when the config is built
    ([*TINY, "--checkpoint-every", "0"], 1, "--checkpoint-every must be >= 1, got 0"),
    ([*TINY, "--checkpoint-every", "-1"], 1, "--checkpoint-every must be >= 1, got -1"),
    ([*TINY, "--eval-episodes", "0"], 1, "--eval-episodes must be >= 1"),
    ([*TINY, "--learning-rate", "-1"], 1, "--learning-rate must be > 0"),
    ([*TINY, "--learning-rate", "nan"], 1, "--learning-rate must be a finite number"),
    ([*TINY, "--learning-rate", "inf"], 1, "--learning-rate must be a finite number"),
    ([*TINY, "--forget-bias", "nan"], 1, "--forget-bias must be a finite number"),
    ([*TINY, "--hidden-size", "0"], 1, "--hidden-size must be >= 1"),
    ([*TINY, "--num-layers", "0"], 1, "--num-layers must be >= 1"),
    ([*TINY, "--encoder-hidden", "-4"], 1, "--encoder-hidden must be >= 1"),
    ([*TINY, "--num-envs", "-2"], 1, "--num-envs must be >= 1"),
    ([*TINY, "--gamma", "1.5"], 1, "--gamma must be in (0, 1]"),
    ([*TINY, "--target-kl", "-0.1"], 1, "--target-kl must be > 0"),
    ([*TINY, "--device", "tpu"], 1, "--device must be auto, cpu, cuda or cuda:N"),
    ([*TINY, "--kl-teacher", "0.5"], 1, "--kl-teacher needs --init-from"),
    # contradictory sizes
    ([*TINY, "--n-steps", "8", "--seq-len", "3"], 1, "--seq-len (3) must divide --n-steps (8)"),
    ([*TINY, "--seq-len", "8", "--batch-size", "12"], 1, "must be a multiple of the sequence length"),
    ([*TINY, "--batch-size", "128"], 1, "exceeds the rollout size"),
    (["--algo", "r2d2", *ENV, "--seq-len", "0"], 1, "--seq-len must be >= 1"),
    (["--algo", "r2d2", *ENV, "--overlap", "20", "--seq-len", "20"], 1, "--overlap (20) must be below"),
    (["--algo", "r2d2", *ENV, "--batch-size", "64", "--replay-capacity", "8"], 1, "exceeds --replay-capacity"),
    (["--algo", "r2d2", *ENV, "--epsilon", "2"], 1, "--epsilon must be in [0, 1]"),
    (["--algo", "bc", "--val-fraction", "1.0"], 1, "--val-fraction must be in [0, 1)"),
    # the env and its options
    ([*TINY, "--env-kwargs", "length", "-3"], 1, "cannot build env recurl/TMaze-v0 with length=-3"),
    ([*TINY, "--env-kwargs", "bogus", "1"], 1, "bogus=1 (TypeError"),
    (["--env", "NoSuchEnv-v0", "--quiet"], 1, "unknown env id 'NoSuchEnv-v0'"),
    # unknown names and malformed command lines (argparse / tyro: exit 2)
    (["--algo", "nope"], 2, "invalid choice: 'nope'"),
    (["--core", "transformer"], 2, "transformer"),
    (["--preset", "nope"], 1, "unknown preset 'nope'"),
    (["--no-such-flag", "1"], 2, "no-such-flag"),
    (["--num-envs", "many"], 2, "many"),
    # run directories
    (["--algo", "r2d2", *ENV, "--run-dir", "{run}"], 1, "already holds a run"),
    ([*TINY, "--run-dir", "{a_file}"], 1, "is a file"),
    ([*TINY, "--run-dir", "{a_file}/sub"], 1, "which is a file"),
    # resume changes nothing but the budget
    (["--resume", "{run}", "--learning-rate", "0.1", "--bogus-flag", "7"], 1, "only --total-steps N"),
    (["--resume", "{run}", "--algo", "r2d2"], 1, "--algo would not apply"),
    (["--resume", "{run}", "--overwrite"], 1, "--overwrite would not apply"),
    (["--resume", "{run}", "--total-steps", "0"], 1, "--total-steps must be >= 1"),
    (["--resume", "{run}", "--total-steps", "10"], 1, "below the 64 steps already done"),
    (["--resume", "{list_config}"], 1, "is not a recurl run's config"),
    (["--resume", "{empty_dir}"], 1, "no config.json"),
]
# Every train row gets a fresh --run-dir (unless it tests one), so a row that wrongly passes trains there.
CLI_ROWS = [(["train", *argv, *([] if "--resume" in argv or "--run-dir" in argv else ["--run-dir", "{new}"])],
             code, msg) for argv, code, msg in CLI_ROWS] + [
    # loading runs
    (["eval", "/no/such/run"], 1, "no config.json"),
    (["eval", "{empty_dir}"], 1, "no config.json"),
    (["eval", "{a_file}"], 1, "no config.json"),
    (["eval", "{missing_config}"], 1, "no config.json"),
    (["eval", "{list_config}"], 1, "is not a recurl run's config"),
    (["eval", "{unknown_algo}"], 1, "is not a recurl run's config"),
    (["eval", "{broken_config}"], 1, "corrupt"),
    (["eval", "{truncated_model}"], 1, "corrupt model file"),
    (["eval", "{empty_model}"], 1, "corrupt model file"),
    (["eval", "{garbage_model}"], 1, "corrupt model file"),
    (["eval", "{missing_model}"], 1, "no model"),
    (["eval", "{run}", "--episodes", "0"], 1, "--episodes must be >= 1"),
    # export
    (["export", "{run}", "--onnx", "{a_file}/out.onnx"], 1, "which is a file"),
    (["export", "{run}", "--onnx", "{empty_dir}"], 1, "is a directory"),
    (["export", "{run}", "--onnx", "/proc/recurl-test/out.onnx"], 1, "cannot write --onnx"),
    (["export", "{run}", "--onnx", "{new}.onnx", "--opset", "3"], 1, "--opset must be in [14, "),
    (["export", "{list_config}", "--onnx", "{new}.onnx"], 1, "is not a recurl run's config"),
    # play, enjoy, diagnose, demo
    (["play", "NoSuch-v0"], 1, "unknown env id 'NoSuch-v0'"),
    (["play", "recurl/TMaze-v0", "--episodes", "0"], 1, "--episodes must be >= 1"),
    (["enjoy", "{run}", "--episodes", "0"], 1, "--episodes must be >= 1"),
    (["enjoy", "{run}", "--gif", "{empty_dir}"], 1, "is a directory"),
    (["enjoy", "{missing_config}"], 1, "no config.json"),
    (["diagnose", "--env", "TMaze-v0", "--cores", "lstm,transformer"], 1, "--cores must be one of"),
    (["diagnose", "--env", "TMaze-v0", "--preset", "nope"], 1, "unknown preset"),
    (["demo", "--length", "0"], 1, "--length must be >= 1"),
    # melee
    (["melee", "train", "--dataset", "{empty_dir}", "--run-dir", "{new}", "--max-epochs", "-1"], 1,
     "--max-epochs must be >= 1"),
    (["melee", "train", "--dataset", "{empty_dir}", "--run-dir", "{new}", "--chunk-len", "0"], 1,
     "--chunk-len must be >= 1"),
    (["melee", "train", "--dataset", "{empty_dir}", "--run-dir", "{new}", "--action-delay", "0"], 1,
     "--action-delay must be >= 1"),
    (["melee", "train", "--dataset", "{empty_dir}", "--run-dir", "{new}", "--character", "NOBODY"], 1,
     "unknown character"),
    (["melee", "train", "--dataset", "{empty_dir}", "--run-dir", "{new}"], 1, "not a prepared Melee dataset"),
    (["train", "--algo", "melee", "--dataset", "{empty_dir}", "--run-dir", "{new}", "--env", "CartPole-v1"], 1,
     "has no env"),
    (["melee", "eval", "{run}"], 1, "holds a 'ppo' model"),
    (["frobnicate"], 2, "unknown command"),
]


def _ids(rows: list[tuple[list[str], int, str]]) -> list[str]:
    return [" ".join(argv)[:80] for argv, _, _ in rows]


@pytest.mark.parametrize("argv,code,message", CLI_ROWS, ids=_ids(CLI_ROWS))
def test_cli_bad_input(argv: list[str], code: int, message: str, runs: dict[str, Path], tmp_path: Path,
                       capsys: pytest.CaptureFixture) -> None:
    paths = {name: str(p) for name, p in runs.items()} | {"new": str(tmp_path / "new")}
    args = [a.format(**paths) if "{" in a else a for a in argv]
    before = (runs["run"] / "progress.csv").read_text()
    assert main(args) == code
    out, err = capsys.readouterr()
    assert message in err, err
    assert "Traceback" not in out + err
    assert (runs["run"] / "progress.csv").read_text() == before, "a refused command changed the run"


def test_gif_without_pygame_says_what_to_install(cartpole_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pygame", None)  # as if it were not installed (the test extra has it)
    assert main(["enjoy", str(cartpole_run), "--episodes", "1", "--gif", str(tmp_path / "x.gif")]) == 1
    out, err = capsys.readouterr()
    assert "needs an optional package" in err and "pygame" in err
    assert "Traceback" not in out + err


def test_overwrite_replaces_the_run(runs: dict[str, Path], tmp_path: Path) -> None:
    """The one way to train into a directory that holds a run; an empty existing directory needs none."""
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    assert main(["train", "--algo", "r2d2", *ENV, "--total-steps", "16", "--learning-starts", "0",
                 "--seq-len", "4", "--overlap", "0", "--burn-in", "0", "--batch-size", "2", "--num-envs", "2",
                 "--eval-episodes", "1", "--quiet", "--run-dir", str(run), "--overwrite"]) == 0
    assert json.loads((run / "config.json").read_text())["algo"] == "r2d2"
    rows = (run / "progress.csv").read_text().splitlines()
    assert all(len(r.split(",")) == len(rows[0].split(",")) for r in rows), "rows under another run's header"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", *TINY, "--total-steps", "32", "--run-dir", str(empty)]) == 0


def test_resume_may_extend_the_budget(runs: dict[str, Path], tmp_path: Path) -> None:
    """What --resume does accept: a larger --total-steps (and --quiet)."""
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    assert main(["train", "--resume", str(run), "--total-steps", "128", "--quiet"]) == 0
    assert (run / "progress.csv").read_text().strip().splitlines()[-1].startswith("128,")
    assert json.loads((run / "config.json").read_text())["config"]["total_steps"] == 128


# -- the Python API ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(runs: dict[str, Path]) -> Any:
    from recurl.runs import load_model

    return load_model(runs["run"], device="cpu")


def _obs(model: Any) -> np.ndarray:
    return model.observation_space.sample()


# (id, a call on the fixture's loaded model, a substring of the RecurlError's message)
API_ROWS: list[tuple[str, Callable[[Any], Any], str]] = [
    ("policy-dict-unknown-field", lambda m: RecurrentPPO("recurl/TMaze-v0", policy={"bogus": 1}), "bogus"),
    ("evaluate-zero-episodes", lambda m: evaluate_policy(m, n_episodes=0), "n_episodes"),
    ("episode-start-wrong-length", lambda m: m.predict(_obs(m), episode_start=[True, False]), "episode_start"),
    ("state-not-a-tuple", lambda m: m.predict(_obs(m), state="oops"), "state"),
    ("ragged-observations", lambda m: m.predict([np.zeros(m.observation_space.shape), np.zeros(7)]), "shape"),
    ("learn-negative-budget", lambda m: m.learn(-100), "total_steps"),
    ("config-string-for-int", lambda m: PPOConfig(n_steps="32"), "--n-steps must be an integer"),
    ("config-bool-for-int", lambda m: PolicyConfig(hidden_size=True), "--hidden-size must be an integer"),
    ("config-inf-float", lambda m: R2D2Config(gamma=float("inf")), "--gamma must be a finite number"),
    ("vec-env-of-no-envs", lambda m: make_vec_env("recurl/TMaze-v0", 0), "num_envs must be >= 1"),
]


@pytest.mark.parametrize("fn,message", [r[1:] for r in API_ROWS], ids=[r[0] for r in API_ROWS])
def test_api_bad_input(fn: Callable[[Any], Any], message: str, model: Any) -> None:
    with pytest.raises(RecurlError) as e:
        fn(model)
    assert message in str(e.value)
