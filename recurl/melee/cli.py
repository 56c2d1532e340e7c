"""``recurl melee prepare | train | eval``: the command line of the Melee pipeline.

Every user error (missing directory, no games after filtering, corrupt checkpoint, bad option) prints one
``recurl: error: ...`` line on stderr and returns a non-zero code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from recurl.config import AT_LEAST_0, AT_LEAST_1, POSITIVE, Check, check_value
from recurl.errors import RecurlError
from recurl.melee.features import CSS_CHARACTERS
from recurl.nn.recurrent import CORE_KINDS

#: ``melee train``'s numeric options and their ranges, checked before the dataset is read
TRAIN_RANGES: dict[str, Check] = {"delay": AT_LEAST_1, "seq_len": AT_LEAST_1, "batch": AT_LEAST_1,
                                  "steps": AT_LEAST_1, "hidden": AT_LEAST_1, "lr": POSITIVE, "seed": AT_LEAST_0}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recurl melee", description="Melee imitation learning from replays")
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="parse .slp replays into a per-game dataset")
    pp.add_argument("replay_dir")
    pp.add_argument("out_dir")
    pp.add_argument("--character", action="append", help="keep games with this character (repeatable)")
    pp.add_argument("--opponent", action="append", help="...against this opponent (repeatable)")
    pp.add_argument("--ruleset", choices=("tournament", "any"), default="tournament")
    pp.add_argument("--quiet", action="store_true", help="no progress bar")
    pt = sub.add_parser("train", help="train a recurrent imitation policy (and a memoryless baseline)")
    pt.add_argument("--data", required=True)
    pt.add_argument("--out", required=True)
    pt.add_argument("--character", default="FOX", help=f"one of {', '.join(CSS_CHARACTERS)}, or ALL")
    pt.add_argument("--core", choices=CORE_KINDS, default="lstm")
    pt.add_argument("--delay", type=int, default=18, help="reaction delay in frames (>= 1)")
    pt.add_argument("--seq-len", type=int, default=64)
    pt.add_argument("--batch", type=int, default=16)
    pt.add_argument("--steps", type=int, default=300)
    pt.add_argument("--hidden", type=int, default=256)
    pt.add_argument("--lr", type=float, default=1e-3)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--no-memoryless", action="store_true", help="skip the core=none baseline")
    pt.add_argument("--quiet", action="store_true")
    pe = sub.add_parser("eval", help="held-out NLL/accuracy of a run against baselines")
    pe.add_argument("run_dir")
    pe.add_argument("--data", required=True)
    pe.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def melee_main(argv: list[str]) -> int:
    """Run ``recurl melee ...`` with ``argv`` (the words after ``melee``); returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed usage and a one-line error (or --help)
        return int(e.code or 0)
    # Each branch imports its command's module itself (the command-line exemption of tests/test_layers.py):
    # --help and option errors answer before torch and the optional Melee packages are loaded.
    try:
        if args.cmd == "prepare":
            from recurl.melee.prepare import prepare

            report = prepare(args.replay_dir, args.out_dir, characters=args.character,
                             opponents=args.opponent, ruleset=args.ruleset, progress=not args.quiet)
            print("\n".join(report.lines()))
            if not report.games:
                print("recurl: error: no games left after filtering", file=sys.stderr)
                return 1
        elif args.cmd == "train":
            from recurl.melee.train import train

            for name, check in TRAIN_RANGES.items():
                check_value(name, getattr(args, name), check)
            config = train(args.data, args.out, character=args.character, core=args.core, delay=args.delay,
                           seq_len=args.seq_len, batch=args.batch, steps=args.steps, seed=args.seed,
                           hidden=args.hidden, lr=args.lr, memoryless=not args.no_memoryless,
                           progress=not args.quiet)
            print(f"character: {config['character_note']}")
            print(f"train games: {', '.join(config['train_games'])}; "
                  f"held out: {', '.join(config['heldout_games'])}")
            for kind in (args.core, "none"):
                if f"train_{kind}" in config:
                    fit = config[f"train_{kind}"]
                    print(f"{kind}: final train nll {fit['nll/total']:.3f}, "
                          f"{fit['frames_per_s']:,.0f} frames/s")
            print(f"saved to {args.out}")
        else:
            from recurl.melee.train import evaluate, format_report

            report = evaluate(args.run_dir, args.data)
            print(json.dumps(report, indent=1) if args.json else format_report(report))
    except (RecurlError, ValueError, OSError) as e:
        print(f"recurl: error: {e}", file=sys.stderr)
        return 1
    return 0
