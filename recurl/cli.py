"""The ``recurl`` command line: train, eval, enjoy, demo (and more, see ``recurl --help``).

Every problem with the user's input ends as one ``recurl: error: ...`` line and exit status 1
(2 for a malformed command line), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from recurl.config import AT_LEAST_0, AT_LEAST_1, POSITIVE, OneOf, Range, check_value
from recurl.errors import RecurlError

USAGE = """usage: recurl COMMAND [options]

commands:
  train    train an agent:   recurl train --algo ppo --env ID --core lstm [--preset NAME] [config flags]
  eval     evaluate a run:   recurl eval RUN_DIR --episodes N [--json]
  enjoy    watch a run:      recurl enjoy RUN_DIR [--episodes N] [--gif out.gif]
  demo     the memory demo:  LSTM vs memoryless PPO on the T-maze, side by side
  diagnose does ENV need memory? recurl diagnose --env ID [--seeds N] [--steps N]
  melee    Melee imitation:  recurl melee prepare|train|eval ... (see docs/melee.md)
  export   deploy a run:     recurl export RUN_DIR --onnx out.onnx (see docs/deployment.md)
  record   save demos:       recurl record --env ID --from RUN_DIR --episodes N --out PATH (docs/imitation.md)
  play     play by keyboard: recurl play ENV_ID [--episodes N] [--record PATH]

`recurl COMMAND --help` lists each command's options."""


def _train_parser() -> argparse.ArgumentParser:
    from recurl.algos import ALGOS

    # No abbreviations: a prefix of one of these would otherwise swallow a config flag.
    p = argparse.ArgumentParser(prog="recurl train", add_help=False, allow_abbrev=False)
    p.add_argument("--algo", default=None, choices=sorted(ALGOS))
    p.add_argument("--preset", default=None)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--resume", default=None, metavar="RUN_DIR")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


TRAIN_HELP = """Train an agent. recurl's own options:
  --algo NAME           algorithm: {algos} (default: the preset's, else ppo)
  --preset NAME         start from a named preset ({presets}); later flags override it
  --run-dir DIR         where to write the run (default runs/<env>__<algo>__<seed>__<time>)
  --overwrite           replace the run already in --run-dir (its files are removed first)
  --resume RUN_DIR      continue a killed run from its last checkpoint with its saved config; only
                        --total-steps N (to extend the run) and --quiet may be given with it
  --quiet               no progress bar

Config flags of the chosen algorithm follow."""

RESUME_ALLOWED = "--total-steps N (to extend the run) and --quiet"
#: a directory holding any of these holds a run
RUN_MARKERS = ("config.json", "progress.csv", "model.safetensors")
#: what --overwrite removes: a run's files and only those (the directory may hold the user's own)
RUN_FILES = (*RUN_MARKERS, "trainer.pt", "checkpoint.json", "summary.json", "curve.png", "tb")


def cmd_train(argv: list[str]) -> int:
    import tyro

    from recurl.algos import ALGOS, algo_classes, build_config
    from recurl.presets import PRESETS, preset
    from recurl.runs import default_run_dir, finish_run

    known, rest = _train_parser().parse_known_args(argv)
    if known.resume:
        return _resume(known, rest)
    algo, overrides = preset(known.preset) if known.preset else ("ppo", {})
    algo = known.algo or algo
    cfg_cls, algo_cls = algo_classes(algo)
    # --env-kwargs K V ... adds to (or overrides) the preset's env kwargs. tyro would turn a non-empty
    # default dict into fixed per-key flags and refuse new keys, so the dict is merged here.
    rest, env_kwargs = _split_env_kwargs(rest)
    env_kwargs = {**overrides.pop("env_kwargs", {}), **env_kwargs}
    cfg = tyro.cli(
        cfg_cls, args=rest, default=build_config(cfg_cls, overrides), prog=f"recurl train --algo {algo}",
        description=TRAIN_HELP.format(algos=", ".join(ALGOS), presets=", ".join(sorted(PRESETS))),
        config=(tyro.conf.OmitArgPrefixes,),
    )
    if env_kwargs:
        cfg = dataclasses.replace(cfg, env_kwargs={**cfg.env_kwargs, **env_kwargs})
    source = cfg.env or Path(getattr(cfg, "dataset", "") or "dataset").name  # a Melee run learns from replays alone
    run_dir = Path(known.run_dir) if known.run_dir else default_run_dir(source, algo, cfg.seed)
    _check_writable(run_dir, "--run-dir", want_dir=True)
    held = [name for name in RUN_MARKERS if (run_dir / name).exists()]
    if held and not known.overwrite:
        raise RecurlError(f"--run-dir {run_dir} already holds a run ({', '.join(held)}): continue it with "
                          f"--resume {run_dir}, replace it with --overwrite, or pick another --run-dir")
    print(f"training {algo} on {source} with core {cfg.policy.core} -> {run_dir}", file=sys.stderr)
    t0 = time.perf_counter()
    model = algo_cls(config=cfg)
    if held:  # removed only now, once the config and the env have been built without error
        for path in (run_dir / name for name in RUN_FILES):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    model.learn(run_dir=run_dir, progress_bar=not known.quiet)
    _print_summary(finish_run(model, run_dir, time.perf_counter() - t0, cfg.eval_episodes))
    return 0


def _split_env_kwargs(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Take every ``--env-kwargs K V [K V ...]`` out of ``argv``; values parse as JSON scalars where they can
    (``3``, ``0.5``, ``true``), else stay strings. Returns the rest of ``argv`` and the kwargs."""
    rest, kwargs, i = [], {}, 0
    while i < len(argv):
        if argv[i] != "--env-kwargs":
            rest.append(argv[i])
            i += 1
            continue
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        pairs = argv[i + 1 : j]
        if not pairs or len(pairs) % 2:
            raise RecurlError(f"--env-kwargs takes KEY VALUE pairs, got {' '.join(pairs) or 'nothing'}")
        for key, value in zip(pairs[::2], pairs[1::2]):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            if isinstance(parsed, list | dict) or parsed is None:
                parsed = value
            kwargs[key.replace("-", "_")] = parsed
        i = j
    return rest, kwargs


def _resume(known: argparse.Namespace, rest: list[str]) -> int:
    """``recurl train --resume RUN_DIR``: the saved config, optionally with a larger ``--total-steps``."""
    from recurl.algos import algo_classes
    from recurl.runs import finish_run

    p = argparse.ArgumentParser(prog="recurl train --resume", add_help=False, allow_abbrev=False)
    p.add_argument("--total-steps", type=int, default=None)
    extra, refused = p.parse_known_args(rest)
    refused += [f"--{k.replace('_', '-')}" for k in ("algo", "preset", "run_dir", "overwrite") if getattr(known, k)]
    if refused:
        raise RecurlError(f"--resume continues {known.resume} with its saved config, so {' '.join(refused)} "
                          f"would not apply: only {RESUME_ALLOWED} may be given with --resume")
    check_value("total_steps", extra.total_steps, AT_LEAST_1)
    _, algo_cls = algo_classes(_run_meta(known.resume)["algo"])
    t0 = time.perf_counter()
    model = algo_cls.resume(known.resume, progress=not known.quiet, total_steps=extra.total_steps)
    _print_summary(finish_run(model, known.resume, time.perf_counter() - t0, model.config.eval_episodes))
    return 0


def _run_meta(run_dir: str) -> dict[str, Any]:
    """``config.json`` of a run directory, refused unless it is a recurl run's: a JSON object naming a
    registered algorithm."""
    from recurl.algos import ALGOS
    from recurl.checkpoint import CONFIG_FILE, read_json

    meta = read_json(Path(run_dir) / CONFIG_FILE)
    if not isinstance(meta, dict) or meta.get("algo") not in ALGOS:
        raise RecurlError(f"{Path(run_dir) / CONFIG_FILE} is not a recurl run's config (a JSON object whose "
                          f"algo is one of {', '.join(ALGOS)}): pass a run directory written by `recurl train`")
    return meta


def _check_writable(path: Path, flag: str, want_dir: bool = False) -> None:
    """Refuse, before the work that would write it, an output path that cannot be written: a directory
    where a file is wanted (or the reverse), a path under a regular file, or one without permission."""
    kind = "directory" if want_dir else "file"
    if path.exists() and path.is_dir() != want_dir:
        raise RecurlError(f"{flag} {path} is {'a file' if want_dir else 'a directory'}: give a {kind} path")
    full = path.absolute()
    existing = next(p for p in (full, *full.parents) if p.exists())
    if existing != full and not existing.is_dir():
        raise RecurlError(f"{flag} {path} lies under {existing}, which is a file: give a {kind} path")
    if not os.access(existing, os.W_OK):
        raise RecurlError(f"{flag} {path}: no permission to write in {existing}")


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
    p.add_argument("--dataset", default=None,
                   help="a Melee run (no env): score it on this prepared dataset's unseen games (default: its own)")
    a = p.parse_args(argv)
    check_value("episodes", a.episodes, AT_LEAST_1)
    if _run_meta(a.run_dir)["algo"] == "melee":  # learned from replays alone: scored on unseen games
        from recurl.melee.cli import melee_main

        return melee_main(["eval", a.run_dir, *(["--dataset", a.dataset] if a.dataset else []),
                           *(["--json"] if a.json else [])])
    model = load_model(a.run_dir)
    r = evaluate_policy(model, n_episodes=a.episodes, deterministic=not a.stochastic, seed=a.seed)
    out = {k: v for k, v in r.items() if not isinstance(v, list)}
    if a.json:
        print(json.dumps(out))
    else:
        _print_summary(out)
    return 0


def cmd_enjoy(argv: list[str]) -> int:
    from gymnasium.error import DependencyNotInstalled

    from recurl.enjoy import enjoy

    p = argparse.ArgumentParser(prog="recurl enjoy", description="Play and render a trained agent's episodes.")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gif", default=None, help="write the episodes as a GIF (envs with rgb_array rendering)")
    p.add_argument("--fps", type=float, default=4.0)
    a = p.parse_args(argv)
    check_value("episodes", a.episodes, AT_LEAST_1)
    check_value("fps", a.fps, POSITIVE)
    _run_meta(a.run_dir)
    if a.gif:
        _check_writable(Path(a.gif), "--gif")
    try:
        enjoy(a.run_dir, a.episodes, a.seed, a.gif, a.fps)
    except DependencyNotInstalled as e:  # e.g. pygame, which classic-control envs need to draw frames
        raise RecurlError(f"rendering this run's env needs an optional package: {e}") from None
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
    check_value("length", a.length, AT_LEAST_1)
    check_value("steps", a.steps, AT_LEAST_1)
    check_value("seed", a.seed, AT_LEAST_0)
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
    from recurl.nn.recurrent import CORE_KINDS
    from recurl.presets import preset

    env = resolve_env_id(a.env, allow_import=True)  # typed by the user
    cores = tuple(a.cores.split(","))
    check_value("cores", cores, OneOf(CORE_KINDS))
    check_value("seeds", a.seeds, AT_LEAST_1)
    check_value("steps", a.steps, AT_LEAST_1)
    check_value("episodes", a.episodes, AT_LEAST_1)
    if a.preset:
        preset(a.preset)  # an unknown name fails now, not after the first agent has trained
    out = a.out or f"runs/diagnose_{env.replace('/', '_')}"
    diagnose(env, a.preset, cores, tuple(range(a.seeds)), a.steps, out, a.episodes)
    return 0


def cmd_melee(argv: list[str]) -> int:
    from recurl.melee.cli import melee_main

    return melee_main(argv)


def _opsets() -> Range:
    """ONNX opsets ``recurl export`` accepts: 14 (recurl supports none older) up to the newest that both
    torch's TorchScript exporter and the installed onnx package know (a higher one fails mid-export)."""
    try:
        import onnx
    except ImportError:
        raise RecurlError("ONNX export needs the onnx package: pip install 'recurl[export]'") from None
    from torch.onnx._constants import ONNX_MAX_OPSET  # no public name for the exporter's limit

    return Range(14, min(onnx.defs.onnx_opset_version(), ONNX_MAX_OPSET))


def cmd_export(argv: list[str]) -> int:
    from recurl.export import OPSET, export_onnx

    p = argparse.ArgumentParser(prog="recurl export",
                                description="Export a run's acting policy to ONNX with explicit recurrent state.")
    p.add_argument("run_dir")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="where to write the ONNX file")
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument("--stochastic", action="store_true",
                   help="the graph samples its action from a noise input (policies; docs/deployment.md)")
    a = p.parse_args(argv)
    check_value("opset", a.opset, _opsets())
    _run_meta(a.run_dir)
    _check_writable(Path(a.onnx), "--onnx")
    try:
        meta = export_onnx(a.run_dir, a.onnx, opset=a.opset, stochastic=a.stochastic)
    except OSError as e:  # what the checks above cannot foresee: a read-only filesystem, a full disk
        raise RecurlError(f"cannot write --onnx {a.onnx}: {e.strerror or e}") from None
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
    _run_meta(a.run_dir)
    path, stats = record_run(a.run_dir, a.out, a.episodes, a.env, not a.stochastic, a.seed)
    print(f"wrote {a.episodes} episodes to {path}: mean return {stats['mean_return']:.3f}, "
          f"success rate {stats['success_rate']:.3f}")
    return 0


def cmd_play(argv: list[str]) -> int:
    from recurl.envs import resolve_env_id
    from recurl.play import play

    p = argparse.ArgumentParser(prog="recurl play", description="Play an env by keyboard in the terminal.")
    p.add_argument("env_id")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--record", default=None, metavar="PATH", help="save the finished episodes as a Minari dataset")
    a = p.parse_args(argv)
    check_value("episodes", a.episodes, AT_LEAST_1)
    play(resolve_env_id(a.env_id, allow_import=True), a.episodes, record=a.record, seed=a.seed)
    return 0


# Each cmd_* imports its command's modules itself (the one exemption from tests/test_layers.py's rule of
# module-level imports): `recurl --help` and argument errors then answer without importing torch.
COMMANDS = {
    "train": cmd_train, "eval": cmd_eval, "enjoy": cmd_enjoy, "demo": cmd_demo, "diagnose": cmd_diagnose,
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
    except SystemExit as e:  # argparse and tyro already printed usage and the error (or --help)
        return int(e.code or 0)
    except RecurlError as e:
        print(f"recurl: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recurl: interrupted (resume a training run with `recurl train --resume RUN_DIR`)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
