"""Regenerate the Melee results of docs/melee.md: pooled and per-character models on the shared corpus.

Usage: python bench/melee_results.py [--out DIR] [--seeds 0 1] [--characters ALL FOX FALCO CAPTAIN_FALCON MARTH]

1. prepares ../shared/data/slp-corpus (36 real 1v1 games) with ``--ruleset any`` into OUT/data;
2. runs ``recurl melee train --dataset OUT/data --character C --seed S`` for each character with the
   default recipe (plus its memoryless baseline) into OUT/<C>-s<S>; a finished run is kept, a killed one
   resumes. The default recipe of a character pretrains the pooled model of its seed, which is the
   ``--character ALL`` run: the character runs fine-tune OUT/ALL-s<S> (``--init-from``, which checks that it
   is exactly that model) instead of training it again;
3. scores every run on its test games (unseen by every run of this seed: the test games are drawn from the
   whole dataset) against the memoryless model, majority and repeat-previous, and each character's own
   model against the pooled one on that character's test games;
4. writes OUT/results.json and OUT/results.md (the tables of docs/melee.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recurl.algos.melee import evaluate
from recurl.melee.cli import melee_main
from recurl.melee.evaluate import MEMORYLESS, evaluate_run, format_report, load_run
from recurl.melee.prepare import prepare

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CHARACTERS = ("ALL", "FOX", "FALCO", "CAPTAIN_FALCON", "MARTH")


def train(data: Path, run: Path, character: str, seed: int, pretrain: bool = True) -> float:
    """Train (or resume, or keep) one run and its memoryless sibling; returns the training seconds (of a
    fine-tuned character's run: its fine-tuning plus the pooled run's training, which it starts from)."""
    pooled = run.parent / f"ALL-s{seed}"
    tune = character != "ALL" and pretrain
    if not (run / MEMORYLESS / "summary.json").is_file():
        if tune:
            train(data, pooled, "ALL", seed)
        # a killed run (or its killed memoryless sibling) continues from its last checkpoint
        argv = (["--resume", str(run)] if (run / "trainer.pt").is_file() else
                ["--dataset", str(data), "--character", character, "--seed", str(seed), "--run-dir", str(run),
                 *(["--init-from", str(pooled)] if tune else []), *([] if pretrain else ["--no-pretrain"])])
        if melee_main(["train", *argv, "--quiet"]) != 0:
            raise SystemExit(f"training {character} failed")
    runs = (run, run / MEMORYLESS, pooled, pooled / MEMORYLESS) if tune else (run, run / MEMORYLESS)
    return sum(json.loads((d / "summary.json").read_text())["wall_time_s"] for d in runs)


def run_seed(data: Path, out: Path, seed: int, characters: list[str]) -> tuple[dict, list[str]]:
    """Train and score every character of one seed; returns its results and its markdown section."""
    results: dict = {"runs": {}, "versus_pooled": {}}
    md = [f"## Seed {seed}", ""]
    for character in characters:
        run = out / f"{character}-s{seed}"
        seconds = train(data, run, character, seed)
        report = evaluate_run(run)
        results["runs"][character] = report | {"train_seconds": seconds}
        md += [f"### {character}", "", format_report(report), "",
               f"training time (model + memoryless baseline): {seconds:.0f} s", ""]
    pooled = out / f"ALL-s{seed}"
    if pooled.is_dir():
        models = {"pooled (lstm)": load_run(pooled), "pooled memoryless": load_run(pooled / MEMORYLESS)}
        names = ("fine-tuned (lstm)", "fine-tuned memoryless", "pooled (lstm)", "pooled memoryless",
                 "own games only (lstm)", "own games only memoryless", "repeat-previous", "majority")
        md += ["### character-specific vs pooled, on each character's test games", "",
               "own games only: `--no-pretrain`, trained on the character's games alone (OUT/<C>-s<S>-alone)", "",
               "| character | test frames | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for character in characters:
            if character == "ALL":
                continue
            run, alone = out / f"{character}-s{seed}", out / f"{character}-s{seed}-alone"
            seconds = train(data, alone, character, seed, pretrain=False)
            own = load_run(run)
            rows = evaluate({"fine-tuned (lstm)": own, "fine-tuned memoryless": load_run(run / MEMORYLESS),
                             **models, "own games only (lstm)": load_run(alone),
                             "own games only memoryless": load_run(alone / MEMORYLESS)}, own.split, str(data))
            results["versus_pooled"][character] = rows | {"own_games_only_train_seconds": seconds}
            r = rows["rows"]
            md.append(f"| {character} | {rows['frames']} | " + " | ".join(f"{r[k]['nll/total']:.3f}" for k in names)
                      + " |")
        md.append("")
    return results, md


def claims(by_seed: dict[int, dict]) -> list[str]:
    """The issue's claim per run and seed: the recurrent model's total NLL on its test games below both the
    memoryless model's and repeat-previous's."""
    md = ["## The claim on every seed: recurrent below memoryless and repeat-previous (total NLL, test games)",
          "", "| character | seed | test frames | recurrent (lstm) | memoryless | repeat-previous | holds |",
          "|---|---|---|---|---|---|---|"]
    for seed, res in by_seed.items():
        for character, report in res["runs"].items():
            r = {k: v["nll/total"] for k, v in report["rows"].items()}
            lstm, none, rep = r["recurrent (lstm)"], r["memoryless (none)"], r["repeat-previous"]
            md.append(f"| {character} | {seed} | {report['frames']} | {lstm:.3f} | {none:.3f} | {rep:.3f} | "
                      f"{'yes' if lstm < min(none, rep) else 'NO'} |")
    return [*md, ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="melee_results")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--characters", nargs="+", default=list(CHARACTERS))
    p.add_argument("--replays", default=str(SHARED / "slp-corpus"))
    args = p.parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "manifest.json").is_file():
        t0 = time.perf_counter()
        report = prepare(args.replays, data, ruleset="any", progress=False)
        print(f"prepared {len(report.games)} games, {report.frames} frames in {time.perf_counter() - t0:.1f}s")
    by_seed, sections = {}, []
    for seed in args.seeds:
        by_seed[seed], md = run_seed(data, out, seed, args.characters)
        sections += md
    md = [f"Seeds {', '.join(map(str, args.seeds))}; dataset {args.replays} prepared with --ruleset any; "
          "default recipe.", "", *claims(by_seed), *sections]
    (out / "results.json").write_text(json.dumps({"seeds": by_seed}, indent=1))
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
