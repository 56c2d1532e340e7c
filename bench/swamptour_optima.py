"""Optimum statistics of a swamp-tour task over many layouts, printed as JSON.

Exact solver (:func:`recurl.envs.swamptour_solver.optimum_statistics`) over layouts drawn by the env's
own generator; see docs/swamptour.md for what the numbers mean.

    python bench/swamptour_optima.py ruin_2swamp [N_LAYOUTS] [--seed S]
"""

from __future__ import annotations

import argparse
import json

from recurl.envs.swamptour import TASKS
from recurl.envs.swamptour_solver import optimum_statistics


def main(argv: list[str] | None = None) -> None:
    """Command line: print :func:`optimum_statistics` as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("n_layouts", type=int, nargs="?", default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(optimum_statistics(args.task, args.n_layouts, args.seed), indent=2))


if __name__ == "__main__":
    main()
