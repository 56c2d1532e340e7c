"""The command line: a tiny run end to end, resume, and one clear error (no traceback) for bad input."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from recurl.algos import algo_classes, build_config
from recurl.cli import main
from recurl.evaluation import evaluate_policy
from recurl.presets import PRESETS, preset
from recurl.runs import load_model

TINY = ["--env", "recurl/TMaze-v0", "--env-kwargs", "length", "3", "--num-envs", "2", "--n-steps", "8",
        "--batch-size", "16", "--n-epochs", "1", "--eval-episodes", "4", "--quiet"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recurl.cli", *args], capture_output=True, text=True, timeout=300)


def test_train_eval_resume_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "--algo", "ppo", *TINY, "--total-steps", "64", "--core", "gru",
                 "--checkpoint-every", "2", "--run-dir", str(run)]) == 0
    for name in ("config.json", "model.safetensors", "trainer.pt", "progress.csv", "curve.png", "summary.json"):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir()), "TensorBoard events missing"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["policy"]["core"] == "gru" and cfg["config"]["env_kwargs"] == {"length": 3}
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # the CLI's evaluation is the API's: the same episodes, the same numbers
    want = evaluate_policy(load_model(run), n_episodes=5, seed=10_000)
    assert out["episodes"] == 5 and out["mean_return"] == pytest.approx(want["mean_return"], abs=1e-9)
    assert out["success_rate"] == want["success_rate"] and out["mean_length"] == want["mean_length"]
    # Simulate a killed run: the trainer state says 32 steps were done; resume continues to 64.
    from recurl.checkpoint import load_trainer_state, save_trainer_state

    state = load_trainer_state(run / "trainer.pt")
    state["num_timesteps"] = 32
    save_trainer_state(run / "trainer.pt", state)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    rows = (run / "progress.csv").read_text().strip().splitlines()
    assert rows[-1].startswith("64,")


def test_text_enjoy(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY, "--total-steps", "16", "--run-dir", str(run)]) == 0
    assert main(["enjoy", str(run), "--episodes", "1"]) == 0
    assert "episode 1: return" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["train", "--env", "NoSuchEnv-v0", "--quiet"], 1, "unknown env id"),
        (["train", "--no-such-flag", "1"], 2, "no-such-flag"),
        (["train", "--n-steps", "many"], 2, "many"),
        (["train", "--core", "transformer"], 2, "transformer"),
        (["train", "--preset", "nope"], 1, "unknown preset"),
        (["train", "--n-steps", "8", "--seq-len", "3"], 1, "--seq-len (3) must divide"),
        (["eval", "/no/such/run"], 1, "no config.json"),
        (["frobnicate"], 2, "unknown command"),
    ],
)
def test_bad_input_is_one_clear_error(args: list[str], code: int, message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("args,code,message", [(["train", "--env", "NoSuchEnv-v0", "--quiet"], 1, "unknown env id"),
                                               (["train", "--no-such-flag", "1"], 2, "no-such-flag")])
def test_the_console_script_exits_with_one_clear_error(args: list[str], code: int, message: str) -> None:
    """The same through a real process: exit status and stderr as a shell sees them."""
    res = _run(*args)
    assert res.returncode == code, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr


def test_corrupt_checkpoint_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """In process: main's exit status and stderr are the console script's (its own test runs it for real)."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "--total-steps", "16", "--run-dir", str(run)]) == 0
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["eval", str(run)]) == 1
    assert "corrupt model file" in capsys.readouterr().err
    (run / "config.json").write_text("{not json")
    assert main(["eval", str(run)]) == 1
    assert "corrupt" in capsys.readouterr().err


def test_diagnose_compares_memory_and_memoryless(tmp_path: Path) -> None:
    out = tmp_path / "diag"
    assert main(["diagnose", "--env", "TMaze-v0", "--steps", "1024", "--episodes", "8", "--out", str(out)]) == 0
    text = (out / "results.md").read_text()
    assert "| lstm | 0 |" in text and "| none | 0 |" in text and "Verdict" in text
    assert (out / "memory.png").is_file()
    rows = json.loads((out / "results.json").read_text())
    assert {r["core"] for r in rows} == {"lstm", "none"} and all(r["env_steps"] == 1024 for r in rows)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_its_config(name: str) -> None:
    """A preset naming a field its algorithm lacks (or a bad value) would only fail when a user runs it."""
    algo, overrides = preset(name)
    cfg_cls, algo_cls = algo_classes(algo)
    cfg = build_config(cfg_cls, overrides)
    if algo != "bc":  # build the algorithm itself (env, spaces, networks): a bad env option fails here, not later
        model = algo_cls(config=dataclasses.replace(cfg, device="cpu"))
        assert model.config.env == cfg.env and model.policy is not None


def test_env_kwargs_add_to_a_presets_own(tmp_path: Path) -> None:
    """A preset with env kwargs of its own (compute_optimal) still takes new ones from --env-kwargs."""
    run = tmp_path / "run"
    assert main(["train", "--preset", "ppo-Tmaze_either", "--env-kwargs", "mask_walls", "true", "max_time", "7",
                 "--total-steps", "16", "--num-envs", "2", "--n-steps", "8", "--batch-size", "16",
                 "--eval-episodes", "1", "--run-dir", str(run), "--quiet"]) == 0
    kwargs = json.loads((run / "config.json").read_text())["config"]["env_kwargs"]
    assert kwargs == {"compute_optimal": False, "mask_walls": True, "max_time": 7}
