"""The ``recurl`` command line: train, eval, enjoy, demo (and more, see ``recurl --help``).

Every problem with the user's input ends as one ``recurl: error: ...`` line and exit status 1
(2 for a malformed command line), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from recurl.errors import RecurlError

USAGE = """usage: recurl COMMAND [options]

commands:
  train    train an agent:   recurl train --algo ppo --env ID --core lstm [--preset NAME] [config flags]
  eval     evaluate a run:   recurl eval RUN_DIR --episodes N [--json]
  enjoy    watch a run:      recurl enjoy RUN_DIR [--episodes N] [--gif out.gif]
  demo     the memory demo:  LSTM vs memoryless PPO on the T-maze, side by side
  diagnose does ENV need memory? recurl diagnose --env ID [--seeds N] [--steps N]
  bench    speed and time-to-solve against sb3-contrib (writes docs/benchmarks.md)
  melee    Melee imitation:  recurl melee prepare|train|eval ... (see docs/melee.md)
  export   deploy a run:     recurl export RUN_DIR --onnx out.onnx (see docs/deployment.md)
  record   save demos:       recurl record --env ID --from RUN_DIR --episodes N --out PATH (docs/imitation.md)
  play     play by keyboard: recurl play ENV_ID [--episodes N] [--record PATH]

`recurl COMMAND --help` lists each command's options."""


def _train_parser() -> argparse.ArgumentParser:
    from recurl.algos import ALGOS

    p = argparse.ArgumentParser(prog="recurl train", add_help=False)
    p.add_argument("--algo", default=None, choices=sorted(ALGOS))
    p.add_argument("--preset", default=None)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--resume", default=None, metavar="RUN_DIR")
    p.add_argument("--quiet", action="store_true")
    return p


TRAIN_HELP = """Train an agent. recurl's own options:
  --algo NAME           algorithm: {algos} (default: the preset's, else ppo)
  --preset NAME         start from a named preset ({presets}); later flags override it
  --run-dir DIR         where to write the run (default runs/<env>__<algo>__<seed>__<time>)
  --resume RUN_DIR      continue a killed run from its last checkpoint
  --quiet               no progress bar
Config flags of the chosen algorithm follow."""


def cmd_train(argv: list[str]) -> int:
    import tyro

    from recurl.algos import ALGOS, algo_classes, build_config
    from recurl.checkpoint import CONFIG_FILE, read_json
    from recurl.presets import PRESETS, preset
    from recurl.runs import default_run_dir, finish_run

    known, rest = _train_parser().parse_known_args(argv)
    if known.resume:
        _, algo_cls = algo_classes(read_json(Path(known.resume) / CONFIG_FILE).get("algo", "?"))
        t0 = time.perf_counter()
        model = algo_cls.resume(known.resume, progress=not known.quiet)
        _print_summary(finish_run(model, known.resume, time.perf_counter() - t0, model.config.eval_episodes))
        return 0
    algo, overrides = preset(known.preset) if known.preset else ("ppo", {})
    algo = known.algo or algo
    cfg_cls, algo_cls = algo_classes(algo)
    cfg = tyro.cli(
        cfg_cls, args=rest, default=build_config(cfg_cls, overrides), prog=f"recurl train --algo {algo}",
        description=TRAIN_HELP.format(algos=", ".join(ALGOS), presets=", ".join(sorted(PRESETS))),
        config=(tyro.conf.OmitArgPrefixes,),
    )
    run_dir = Path(known.run_dir) if known.run_dir else default_run_dir(cfg.env, algo, cfg.seed)
    print(f"training {algo} on {cfg.env} with core {cfg.policy.core} -> {run_dir}", file=sys.stderr)
    t0 = time.perf_counter()
    model = algo_cls(config=cfg)
    model.learn(run_dir=run_dir, progress=not known.quiet)
    _print_summary(finish_run(model, run_dir, time.perf_counter() - t0, cfg.eval_episodes))
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    parts = [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()]
    print("final evaluation: " + " ".join(parts))


def cmd_eval(argv: list[str]) -> int:
    from recurl.evaluation import evaluate_policy
    from recurl.runs import load_model

    p = argparse.ArgumentParser(prog="recurl eval", description="Evaluate a trained run (deterministic).")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of taking the mode")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.episodes < 1:
        raise RecurlError("--episodes must be >= 1")
    model = load_model(a.run_dir)
    r = evaluate_policy(model, n_episodes=a.episodes, deterministic=not a.stochastic, seed=a.seed)
    out = {k: v for k, v in r.items() if not isinstance(v, list)}
    if a.json:
        print(json.dumps(out))
    else:
        _print_summary(out)
    return 0


def cmd_enjoy(argv: list[str]) -> int:
    from recurl.enjoy import enjoy

    p = argparse.ArgumentParser(prog="recurl enjoy", description="Play and render a trained agent's episodes.")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gif", default=None, help="write the episodes as a GIF (envs with rgb_array rendering)")
    p.add_argument("--fps", type=float, default=4.0)
    a = p.parse_args(argv)
    enjoy(a.run_dir, a.episodes, a.seed, a.gif, a.fps)
    return 0


def cmd_demo(argv: list[str]) -> int:
    from recurl.diagnose import diagnose

    p = argparse.ArgumentParser(prog="recurl demo",
                                description="Train LSTM and memoryless PPO on the T-maze and compare them.")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--length", type=int, default=20, help="T-maze corridor length")
    p.add_argument("--steps", type=int, default=None, help="env steps per agent (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    diagnose(preset_name="tmaze", seeds=(a.seed,), steps=a.steps, out=a.out, env_kwargs={"length": a.length})
    return 0


def cmd_diagnose(argv: list[str]) -> int:
    from recurl.diagnose import diagnose

    p = argparse.ArgumentParser(prog="recurl diagnose",
                                description="Does this task need memory? Recurrent vs memoryless PPO, equal budgets.")
    p.add_argument("--env", required=True)
    p.add_argument("--preset", default=None, help="PPO preset to start from (default: the env's own, if any)")
    p.add_argument("--cores", default="lstm,none", help="comma-separated core kinds; include none")
    p.add_argument("--seeds", type=int, default=1, help="seeds per core")
    p.add_argument("--steps", type=int, default=None, help="env steps per agent")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from recurl.envs import resolve_env_id

    env = resolve_env_id(a.env)
    out = a.out or f"runs/diagnose_{env.replace('/', '_')}"
    diagnose(env, a.preset, tuple(a.cores.split(",")), tuple(range(a.seeds)), a.steps, out, a.episodes)
    return 0


def cmd_melee(argv: list[str]) -> int:
    from recurl.melee.cli import melee_main

    return melee_main(argv)


def cmd_export(argv: list[str]) -> int:
    from recurl.export import OPSET, export_onnx

    p = argparse.ArgumentParser(prog="recurl export",
                                description="Export a run's acting policy to ONNX with explicit recurrent state.")
    p.add_argument("run_dir")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="where to write the ONNX file")
    p.add_argument("--opset", type=int, default=OPSET)
    a = p.parse_args(argv)
    meta = export_onnx(a.run_dir, a.onnx, opset=a.opset)
    print(f"wrote {a.onnx}\n  inputs:  " + ", ".join(d["name"] for d in meta["inputs"])
          + "\n  outputs: " + ", ".join(d["name"] for d in meta["outputs"]))
    return 0


def cmd_record(argv: list[str]) -> int:
    from recurl.record import record_run

    p = argparse.ArgumentParser(prog="recurl record",
                                description="Roll out a trained agent and save its episodes as a Minari dataset.")
    p.add_argument("--from", dest="run_dir", required=True, metavar="RUN_DIR", help="the trained run to roll out")
    p.add_argument("--out", required=True, metavar="PATH", help="new dataset directory, named NAME-vN")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--env", default=None, help="env id (default: the run's own env)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of taking the mode")
    a = p.parse_args(argv)
    path, stats = record_run(a.run_dir, a.out, a.episodes, a.env, not a.stochastic, a.seed)
    print(f"wrote {a.episodes} episodes to {path}: mean return {stats['mean_return']:.3f}, "
          f"success rate {stats['success_rate']:.3f}")
    return 0


def cmd_play(argv: list[str]) -> int:
    from recurl.envs.play import play

    p = argparse.ArgumentParser(prog="recurl play", description="Play an env by keyboard in the terminal.")
    p.add_argument("env_id")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--record", default=None, metavar="PATH", help="save the finished episodes as a Minari dataset")
    a = p.parse_args(argv)
    play(a.env_id, a.episodes, record=a.record, seed=a.seed)
    return 0


def cmd_bench(argv: list[str]) -> int:
    from recurl.bench import main_bench

    return main_bench(argv)


COMMANDS = {
    "train": cmd_train, "eval": cmd_eval, "enjoy": cmd_enjoy, "demo": cmd_demo, "diagnose": cmd_diagnose,
    "bench": cmd_bench,
    "melee": cmd_melee, "export": cmd_export, "record": cmd_record, "play": cmd_play,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recurl`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"recurl: error: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd](rest)
    except RecurlError as e:
        print(f"recurl: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recurl: interrupted (resume a training run with `recurl train --resume RUN_DIR`)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
