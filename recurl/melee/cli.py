"""``recurl melee prepare | train | eval``: thin front-ends of the Melee pipeline.

``prepare REPLAY_DIR [REPLAY_DIR ...] OUT_DIR`` builds one dataset from every folder given (the output
folder comes last). ``train`` is ``recurl train --algo melee`` (the same flags: ``--dataset``,
``--character``, ``--run-dir``, ``--core``, ``--max-epochs``, ...; ``recurl melee train --help`` lists them)
followed by the same training with ``--core none`` into ``RUN/memoryless``, the baseline that shows what
memory adds (skip it with ``--no-memoryless``), and the held-out report. Every user error prints one
``recurl: error: ...`` line on stderr and returns a non-zero code, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from recurl.errors import RecurlError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recurl melee", description="Melee imitation learning from replays")
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="parse .slp replays (one or more folders) into one per-game dataset",
                        description="Parse every .slp under the REPLAY_DIRs into one dataset in OUT_DIR (the "
                                    "last folder); a replay found twice (same content) is prepared once.")
    pp.add_argument("replay_dirs", nargs="+", metavar="REPLAY_DIR", help="folder of .slp replays (one or more)")
    pp.add_argument("out_dir", metavar="OUT_DIR", help="the dataset folder (comes last)")
    pp.add_argument("--character", action="append", help="keep games with this character (repeatable)")
    pp.add_argument("--opponent", action="append", help="...against this opponent (repeatable)")
    pp.add_argument("--ruleset", choices=("tournament", "any"), default="tournament")
    pp.add_argument("--reader", choices=("auto", "peppi", "libmelee"), default="auto",
                    help="auto: peppi-py, falling back to libmelee for files peppi-py cannot read")
    pp.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("train", add_help=False,
                   help="train a character's policy and its memoryless baseline (recurl train --algo melee's flags)")
    pe = sub.add_parser("eval", help="NLL/accuracy of a run on unseen games against the baselines")
    pe.add_argument("run_dir")
    pe.add_argument("--dataset", "--data", dest="dataset", default=None,
                    help="a prepared dataset (default: the run's own; its unseen games are scored)")
    pe.add_argument("--no-games", action="store_true", help="totals only, no per-game rows")
    pe.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def melee_main(argv: list[str]) -> int:
    """Run ``recurl melee ...`` with ``argv`` (the words after ``melee``); returns the exit code."""
    if argv[:1] == ["train"]:
        return _guard(lambda: _train(argv[1:]))
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed usage and a one-line error (or --help)
        return int(e.code or 0)
    if args.cmd == "prepare":
        return _guard(lambda: _prepare(args))
    return _guard(lambda: _eval(args.run_dir, args.dataset, args.json, not args.no_games))


def _guard(fn: Callable[[], int]) -> int:
    try:
        return int(fn())
    except (RecurlError, ValueError, OSError) as e:
        print(f"recurl: error: {e}", file=sys.stderr)
        return 1


def _prepare(args: argparse.Namespace) -> int:
    # Each command imports its modules itself (the command-line exemption of tests/test_layers.py):
    # --help and option errors answer before torch and the optional Melee packages are loaded.
    from recurl.melee.prepare import prepare

    report = prepare(args.replay_dirs, args.out_dir, characters=args.character, opponents=args.opponent,
                     ruleset=args.ruleset, reader=args.reader, progress=not args.quiet)
    print("\n".join(report.lines()))
    if not report.games:
        raise RecurlError("no games left after filtering")
    return 0


def _train(argv: list[str]) -> int:
    """``recurl train --algo melee ARGV``, then the memoryless sibling, then the report."""
    from recurl.algos.melee import POOLED, MeleeImitation, with_policy
    from recurl.checkpoint import CONFIG_FILE, TRAINER_FILE
    from recurl.cli import cmd_train
    from recurl.melee.evaluate import MEMORYLESS, load_run
    from recurl.runs import finish_run

    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--no-memoryless", action="store_true")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--resume", default=None)
    p.add_argument("--quiet", action="store_true")
    own, rest = p.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print("recurl melee train: `recurl train --algo melee` (flags below), then the same with --core none into "
              "RUN/memoryless (--no-memoryless skips it), then the held-out report.\n")
        return cmd_train(["--algo", "melee", *rest])
    run = own.resume or own.run_dir or f"runs/melee__{time.strftime('%Y%m%d-%H%M%S')}"
    pooled = Path(run) / POOLED
    if own.resume and not (Path(run) / CONFIG_FILE).is_file() and (pooled / TRAINER_FILE).is_file():
        raise RecurlError(f"{run} was stopped while it pretrained its pooled model ({pooled}), before "
                          "its own first checkpoint: run the command that started it again, without --resume; "
                          "it continues the pooled model from its last checkpoint")
    quiet = ["--quiet"] if own.quiet else []
    code = cmd_train(["--resume", run, *quiet, *rest] if own.resume else
                     ["--algo", "melee", "--run-dir", run, *quiet, *rest])
    if code:
        return code
    sibling = Path(run) / MEMORYLESS
    if not own.no_memoryless and not (sibling / "summary.json").is_file():
        t0 = time.perf_counter()
        if (sibling / "trainer.pt").is_file():  # a killed memoryless run continues
            model = MeleeImitation.resume(sibling, progress=not own.quiet)
        else:
            cfg = with_policy(load_run(run).config, core="none")
            if cfg.init_from:  # the pooled run's own memoryless sibling is the one to fine-tune
                cfg = dataclasses.replace(cfg, init_from=str(Path(cfg.init_from) / MEMORYLESS))
            print(f"training the memoryless baseline -> {sibling}", file=sys.stderr)
            model = MeleeImitation(config=cfg)
            model.learn(run_dir=sibling, progress_bar=not own.quiet)
        finish_run(model, sibling, time.perf_counter() - t0, 0)
    return _eval(run, None, False, per_game=False)


def _eval(run_dir: str, dataset: str | None, as_json: bool, per_game: bool) -> int:
    from recurl.melee.evaluate import evaluate_run, format_report

    report = evaluate_run(run_dir, dataset)
    print(json.dumps(report, indent=1) if as_json else format_report(report, per_game))
    return 0
