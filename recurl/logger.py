"""Run logging: a tqdm progress bar, ``progress.csv``, TensorBoard events (SB3's scalar names) and
``curve.png``. The x-axis everywhere is env steps.

``progress.csv`` gains a column whenever a metric first appears (e.g. ``rollout/ep_rew_mean`` once an
episode has ended): the file is rewritten, atomically, with the wider header and empty cells in the
earlier rows. A resumed run first drops the rows logged after its checkpoint, so ``env_steps`` stays
increasing and no row appears twice.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from recurl.checkpoint import atomic_write, discard_partials


class RunLogger:
    """Writes one row per update. ``run_dir=None`` only drives the progress bar."""

    def __init__(self, run_dir: str | Path | None, total_steps: int, progress: bool = True) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.total = total_steps
        self.progress = progress
        self.bar: tqdm | None = None
        self.writer = None
        self._csv_keys: list[str] | None = None

    def start(self, steps_done: int) -> None:
        """Open the bar and the writers at ``steps_done`` env steps (the checkpoint's, when resuming):
        rows of ``progress.csv`` logged after it are dropped."""
        if self.progress:
            self.bar = tqdm(total=self.total, initial=min(steps_done, self.total), unit="step",
                            dynamic_ncols=True, smoothing=0.1)
        if self.run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            discard_partials(self.run_dir)  # a killed run's half-written progress.csv or summary.json
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=steps_done or None)
            path = self.run_dir / "progress.csv"
            if path.exists():
                self._csv_keys, rows = _read_csv(path)
                _write_csv(path, self._csv_keys, [r for r in rows if _step(r) <= steps_done])

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(min(step, self.total) - self.bar.n)
            post = {"fps": f"{scalars.get('time/fps', 0):.0f}"}
            if "rollout/ep_rew_mean" in scalars:
                post["return"] = f"{scalars['rollout/ep_rew_mean']:.3g}"
            if "rollout/success_rate" in scalars:
                post["success"] = f"{scalars['rollout/success_rate']:.2f}"
            self.bar.set_postfix(post, refresh=False)
        if self.run_dir is None:
            return
        for k, v in scalars.items():
            if isinstance(v, int | float) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        path = self.run_dir / "progress.csv"
        row = {"env_steps": step, **scalars}
        if self._csv_keys is None:  # start() was not called
            self._csv_keys = _read_csv(path)[0] if path.exists() else []
        new = [k for k in row if k not in self._csv_keys]
        if new or not path.exists():  # a metric seen for the first time: widen the header, keep the rows
            rows = _read_csv(path)[1] if path.exists() else []
            self._csv_keys = self._csv_keys + new
            _write_csv(path, self._csv_keys, rows)
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, self._csv_keys, extrasaction="ignore").writerow(row)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.run_dir is not None and (self.run_dir / "progress.csv").exists():
            plot_curve(self.run_dir / "progress.csv", self.run_dir / "curve.png")


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file; a last line cut off by a kill (no line end) is dropped."""
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _write_csv(path: Path, keys: list[str], rows: list[dict[str, str]]) -> None:
    """Atomically replace ``path`` by ``keys`` and ``rows`` (missing cells empty)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


def _step(row: dict[str, str]) -> float:
    """A row's ``env_steps`` (an unreadable one sorts after every checkpoint, so it is dropped on resume)."""
    try:
        return float(row.get("env_steps") or "inf")
    except ValueError:
        return math.inf


def plot_curve(csv_path: str | Path, png_path: str | Path) -> None:
    """Plot mean episode return (and success rate when logged) against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("rollout/ep_rew_mean", "mean return"), ("rollout/success_rate", "success rate")):
        pts = [(float(r["env_steps"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        if pts:
            ax.plot(*zip(*pts), label=label)
    ax.set_xlabel("env steps")
    if ax.lines:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
