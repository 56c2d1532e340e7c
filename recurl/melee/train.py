"""Imitation training on a prepared dataset: stateful truncated BPTT, held-out evaluation, baselines.

Perspectives: every (game, player) where the player is human; the player is "self", the other player of a
2-player game is the opponent (games with other player counts are not used for training). CPU players are
never imitated.

Character rule: ``character="FOX"`` uses the perspectives whose CSS character is FOX. A character needs at
least ``MIN_GAMES`` (3) games, so that at least one game can be held out and two trained on. If it has
fewer, training falls back to the qualifying character with the most frames; if none qualifies, to every
human perspective (one model, conditioned on the character embedding). ``character="ALL"`` asks for the
latter directly. The choice and the reason are stored in ``config.json`` and printed.

Held-out split (by game, never by frame): games in a seeded random order are moved to the held-out set
while it holds less than ``HOLDOUT_FRACTION`` of the frames, skipping any game that alone holds more than
half of the frames; at least one game is held out and one kept for training.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recurl.checkpoint import CONFIG_FILE, MODEL_FILE, load_weights, read_json, save_weights, write_json
from recurl.errors import RecurlError
from recurl.melee import features as F
from recurl.melee.model import COMPONENTS, MeleeModel, component_correct, component_nll
from recurl.melee.prepare import load_manifest

MIN_GAMES = 3
HOLDOUT_FRACTION = 0.2
DEFAULT_DELAY = 18
SEQ_KEYS_LONG = ("action", "character", "stage", "prev_main", "prev_cstick", "prev_shoulder", "main",
                 "cstick", "shoulder")


class MeleeDataError(RecurlError):
    """No usable games (after filtering) or an unusable dataset."""


class CheckpointError(RecurlError):
    """A run directory without a readable checkpoint."""


@dataclass
class Sequence:
    """One perspective of one game after the delay shift: ``data[key]`` arrays share length ``M``."""

    game: str
    player: int
    character: str
    data: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.data["main"])


def make_sequence(arrays: dict[str, np.ndarray], self_idx: int, opp_idx: int,
                  delay: int) -> dict[str, np.ndarray]:
    """Align one perspective of a game for reaction delay ``D = delay`` (>= 1).

    ``arrays`` is a prepared game (``p{i}_*`` arrays of length ``N``). Row ``i`` of the result (``M = N - D``
    rows) holds the game state of frame index ``i`` and the controller of frame index ``i + D``: the target
    ``buttons/main/cstick/shoulder`` and ``prev_*`` = the controller of frame ``i + D - 1``. ``frame`` and
    ``target_frame`` give the two frame ids, so ``target_frame - frame == D`` everywhere.

    ``D = 0`` is refused: a frame's post-frame state already shows that frame's input (e.g. jump squat).
    """
    if delay < 1:
        raise ValueError("delay must be >= 1 frame (delay 0 would let the state reveal the target input)")
    s, o = f"p{self_idx}", f"p{opp_idx}"
    n = len(arrays["frame"])
    m = n - delay
    if m <= 0:
        return {}
    obs = slice(0, m)
    tgt = slice(delay, n)
    prev = slice(delay - 1, n - 1)
    return {
        "frame": arrays["frame"][obs], "target_frame": arrays["frame"][tgt],
        "action": np.stack([arrays[f"{s}_action"][obs], arrays[f"{o}_action"][obs]], -1),
        "character": np.stack([arrays[f"{s}_character"][obs], arrays[f"{o}_character"][obs]], -1),
        "stage": np.full(m, int(arrays["stage"]), dtype=np.int16),
        "floats": np.concatenate([arrays[f"{s}_floats"][obs], arrays[f"{o}_floats"][obs],
                                  arrays[f"{s}_nana"][obs], arrays[f"{o}_nana"][obs]], -1),
        "buttons": arrays[f"{s}_buttons"][tgt], "main": arrays[f"{s}_main"][tgt],
        "cstick": arrays[f"{s}_cstick"][tgt], "shoulder": arrays[f"{s}_shoulder"][tgt],
        "prev_buttons": arrays[f"{s}_buttons"][prev], "prev_main": arrays[f"{s}_main"][prev],
        "prev_cstick": arrays[f"{s}_cstick"][prev], "prev_shoulder": arrays[f"{s}_shoulder"][prev],
    }


def perspectives(manifest: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    """All trainable ``(game entry, player index)`` pairs: human players of 2-player games."""
    return [(g, p["index"]) for g in manifest["games"] if len(g["players"]) == 2
            for p in g["players"] if not p["cpu"]]


def choose_character(manifest: dict[str, Any], character: str | None) -> tuple[str, str]:
    """Apply the character rule (module docstring). Returns ``(character or "ALL", note)``."""
    persp = perspectives(manifest)
    if not persp:
        raise MeleeDataError("no human player in a 2-player game in the dataset")
    games: dict[str, set[str]] = {}
    frames: Counter[str] = Counter()
    for g, i in persp:
        name = g["players"][i]["character"]
        games.setdefault(name, set()).add(g["file"])
        frames[name] += g["frames"]
    if character is None or character.upper() == "ALL":
        return "ALL", "all human perspectives"
    want = F.character_name(F.character_id(character))
    if len(games.get(want, ())) >= MIN_GAMES:
        return want, f"{want}: {len(games[want])} games"
    have = f"{want} has {len(games.get(want, ()))} games (needs {MIN_GAMES})"
    ok = [c for c in games if len(games[c]) >= MIN_GAMES]
    if ok:
        best = max(ok, key=lambda c: frames[c])
        return best, f"{have}; fell back to {best}, the character with most frames ({frames[best]})"
    return "ALL", f"{have} and no character has {MIN_GAMES}; fell back to all human perspectives"


def split_games(game_frames: dict[str, int], seed: int) -> tuple[list[str], list[str]]:
    """Held-out split by game (module docstring). Returns ``(train_games, heldout_games)``."""
    names = sorted(game_frames)
    if len(names) < 2:
        raise MeleeDataError(f"need at least 2 games for a held-out split, have {len(names)}")
    total = sum(game_frames.values())
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    held: list[str] = []
    for g in order:
        if sum(game_frames[h] for h in held) >= HOLDOUT_FRACTION * total or len(held) == len(names) - 1:
            break
        if game_frames[g] <= total / 2:
            held.append(g)
    if not held:  # every game is big: hold out the smallest
        held = [min(names, key=lambda g: game_frames[g])]
    return [g for g in names if g not in held], sorted(held)


def load_sequences(data_dir: str | os.PathLike, entries: list[tuple[dict[str, Any], int]],
                   delay: int) -> list[Sequence]:
    """Build the delay-aligned ``Sequence`` of every ``(game entry, player index)``."""
    out, cache = [], {}
    for g, i in entries:
        if g["npz"] not in cache:
            with np.load(Path(data_dir) / g["npz"]) as z:
                cache[g["npz"]] = dict(z)
        data = make_sequence(cache[g["npz"]], i, 1 - i, delay)
        if data:
            out.append(Sequence(g["file"], i, g["players"][i]["character"], data))
    return out


class ChunkStreamer:
    """Stateful TBPTT batches: each of ``batch`` rows streams consecutive ``seq_len`` chunks of one game.

    When a row's game ends inside a chunk, the row continues with a new game (drawn with probability
    proportional to its length, mirrored left/right with probability ``mirror_p``) and ``is_first`` is
    true at that step, so the core resets there and the carried state never leaks across games.
    ``next()`` returns numpy arrays ``[T, B, ...]`` plus ``is_first[T, B]`` and ``seq_id[T, B]`` (the
    sequence each step came from).
    """

    def __init__(self, seqs: list[Sequence], batch: int, seq_len: int, seed: int = 0,
                 mirror_p: float = 0.5) -> None:
        if not seqs:
            raise MeleeDataError("no training sequences")
        self.seqs, self.batch, self.seq_len, self.mirror_p = seqs, batch, seq_len, mirror_p
        self.mirrored = [F.mirror(s.data) for s in seqs] if mirror_p > 0 else []
        lengths = np.array([len(s) for s in seqs], dtype=np.float64)
        self.p = lengths / lengths.sum()
        self.rng = np.random.default_rng(seed)
        self.rows: list[list[Any]] = [[None, 0, False] for _ in range(batch)]  # [seq index, pos, mirrored]

    def _data(self, k: int, mirrored: bool) -> dict[str, np.ndarray]:
        return self.mirrored[k] if mirrored else self.seqs[k].data

    def next(self) -> dict[str, np.ndarray]:
        T, B = self.seq_len, self.batch
        keys = [k for k in self.seqs[0].data if k not in ("frame", "target_frame")]
        out = {k: np.empty((T, B) + self.seqs[0].data[k].shape[1:], self.seqs[0].data[k].dtype) for k in keys}
        is_first = np.zeros((T, B), dtype=bool)
        seq_id = np.zeros((T, B), dtype=np.int64)
        for b, row in enumerate(self.rows):
            t = 0
            while t < T:
                if row[0] is None or row[1] >= len(self.seqs[row[0]]):
                    k = int(self.rng.choice(len(self.seqs), p=self.p))
                    row[:] = [k, 0, bool(self.rng.random() < self.mirror_p)]
                k, pos, mir = row
                n = min(T - t, len(self.seqs[k]) - pos)
                data = self._data(k, mir)
                for key in keys:
                    out[key][t:t + n, b] = data[key][pos:pos + n]
                is_first[t, b] = pos == 0
                seq_id[t:t + n, b] = k
                row[1] = pos + n
                t += n
        out["is_first"], out["seq_id"] = is_first, seq_id
        return out


def to_torch(batch: dict[str, np.ndarray], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Numpy batch -> model batch (long ids, float features and targets, bool ``is_first``)."""
    out = {}
    for k, v in batch.items():
        if k in ("seq_id", "frame", "target_frame"):
            continue
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.bool() if k == "is_first" else t.long() if k in SEQ_KEYS_LONG else t.float()
    return {k: v.to(device) for k, v in out.items()}


def _whole(seq: Sequence) -> dict[str, torch.Tensor]:
    """One full sequence as a ``[M, 1]`` batch."""
    batch = {k: v[:, None] for k, v in seq.data.items()}
    batch["is_first"] = np.zeros((len(seq), 1), dtype=bool)
    batch["is_first"][0] = True
    return to_torch(batch)


def save_checkpoint(model: MeleeModel, config: dict[str, Any], run_dir: Path) -> None:
    """``model.safetensors`` + ``config.json`` (model kwargs under ``"model"``), each written atomically."""
    save_weights(Path(run_dir) / MODEL_FILE, model.state_dict())
    write_json(Path(run_dir) / CONFIG_FILE, {**config, "model": model.config})


def load_checkpoint(run_dir: str | os.PathLike) -> tuple[MeleeModel, dict[str, Any]]:
    """Load a run directory; raises ``CheckpointError`` with a one-line reason if it is unusable."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"run directory not found: {run}")
    try:
        config = read_json(run / CONFIG_FILE)
        model = MeleeModel(**config["model"])
        model.load_state_dict(load_weights(run / MODEL_FILE))
    except RecurlError as e:
        raise CheckpointError(str(e)) from None
    except (KeyError, TypeError, RuntimeError) as e:  # config or weights that do not fit the model
        msg = f"checkpoint in {run} does not match MeleeModel ({type(e).__name__}: {e})"
        raise CheckpointError(msg) from None
    model.eval()
    return model, config


def baseline_stats(seqs: list[Sequence]) -> dict[str, Any]:
    """Training-set statistics for the no-learning baselines.

    ``majority``: per-component class frequencies (add-one smoothed; buttons: P(pressed) each).
    ``change``: per-component rate at which the target differs from the previous frame's controller.
    """
    cat = {k: np.concatenate([s.data[k] for s in seqs]) for k in ("buttons", "main", "cstick", "shoulder",
                                                                   "prev_buttons", "prev_main", "prev_cstick",
                                                                   "prev_shoulder")}
    sizes = {"main": F.NUM_MAIN, "cstick": F.NUM_CSTICK, "shoulder": F.NUM_SHOULDER}
    n = len(cat["main"])
    majority: dict[str, list[float]] = {"buttons": ((cat["buttons"].sum(0) + 1) / (n + 2)).tolist()}
    change: dict[str, Any] = {"buttons": ((cat["buttons"] != cat["prev_buttons"]).sum(0) + 1) / (n + 2)}
    change["buttons"] = change["buttons"].tolist()
    for k, size in sizes.items():
        majority[k] = ((np.bincount(cat[k].astype(np.int64), minlength=size) + 1) / (n + size)).tolist()
        change[k] = float(((cat[k] != cat[f"prev_{k}"]).sum() + 1) / (n + 2))
    return {"majority": majority, "change": change}


def baseline_logits(stats: dict[str, Any], kind: str,
                    batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Logits of a no-learning baseline for a ``[T, B]`` batch, in the model's format.

    ``majority``: the training marginal of each component. ``repeat``: the previous frame's value with
    probability ``1 - change``, the rest spread evenly over the other values.
    """
    T, B = batch["main"].shape
    out: dict[str, torch.Tensor] = {}
    if kind == "majority":
        p = torch.tensor(stats["majority"]["buttons"])
        out["buttons"] = torch.logit(p).expand(T, B, -1)
        for k in COMPONENTS[1:]:
            out[k] = torch.tensor(stats["majority"][k]).log().expand(T, B, -1)
        return out
    if kind != "repeat":
        raise ValueError(kind)
    c = torch.tensor(stats["change"]["buttons"])
    prev = batch["prev_buttons"]
    out["buttons"] = torch.where(prev > 0.5, 1.0, -1.0) * torch.logit(1 - c)
    for k, size in (("main", F.NUM_MAIN), ("cstick", F.NUM_CSTICK), ("shoulder", F.NUM_SHOULDER)):
        ch = stats["change"][k]
        logp = torch.full((T, B, size), float(np.log(ch / (size - 1))))
        logp.scatter_(-1, batch[f"prev_{k}"].unsqueeze(-1), float(np.log(1 - ch)))
        out[k] = logp
    return out


def _scores(rows: dict[str, dict[str, float]], name: str, logits: dict[str, torch.Tensor],
            batch: dict[str, torch.Tensor]) -> None:
    """Accumulate summed NLL and correct counts of one model/baseline on one batch into ``rows[name]``."""
    acc = rows.setdefault(name, Counter())
    for k, v in component_nll(logits, batch).items():
        acc[f"nll/{k}"] += float(v.sum())
    for k, v in component_correct(logits, batch).items():
        acc[f"acc/{k}"] += float(v.sum())
    acc["frames"] += batch["main"].numel()


def _fit(model: MeleeModel, seqs: list[Sequence], *, seq_len: int, batch: int, steps: int, lr: float,
         seed: int, progress: bool, desc: str) -> dict[str, float]:
    """Stateful TBPTT: the state is carried between consecutive chunks of every row (reset inside the core
    at ``is_first``). Returns the last metrics plus ``frames_per_s``."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    streamer = ChunkStreamer(seqs, batch, seq_len, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    state = model.initial_state(batch)
    metrics: dict[str, float] = {}
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for _ in bar:
        loss, metrics, state = model.loss(to_torch(streamer.next()), state)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(nll=f"{metrics['nll/total']:.3f}")
    seconds = time.perf_counter() - t0
    model.eval()
    return {**metrics, "frames_per_s": steps * batch * seq_len / max(seconds, 1e-9), "seconds": seconds}


def train(data_dir: str | os.PathLike, out_dir: str | os.PathLike, character: str | None = "FOX",
          core: str = "lstm", delay: int = DEFAULT_DELAY, seq_len: int = 64, batch: int = 16,
          steps: int = 300, seed: int = 0, hidden: int = 256, lr: float = 1e-3,
          memoryless: bool = True, progress: bool = True) -> dict[str, Any]:
    """Train a recurrent imitation policy (and, with ``memoryless``, a ``core="none"`` baseline with the
    same budget in ``out_dir/memoryless``). Returns the saved config (character choice, split, speed)."""
    manifest = load_manifest(data_dir)
    chosen, note = choose_character(manifest, character)
    entries = [(g, i) for g, i in perspectives(manifest)
               if chosen == "ALL" or g["players"][i]["character"] == chosen]
    train_games, held = split_games({g["file"]: g["frames"] for g, _ in entries}, seed)
    train_seqs = load_sequences(data_dir, [(g, i) for g, i in entries if g["file"] in train_games], delay)
    if not train_seqs:
        raise MeleeDataError(f"no training game is longer than the delay ({delay} frames)")
    config: dict[str, Any] = {
        "character_requested": character, "character": chosen, "character_note": note, "delay": delay,
        "seq_len": seq_len, "batch": batch, "steps": steps, "seed": seed, "lr": lr,
        "train_games": train_games, "heldout_games": held,
        "train_frames": int(sum(len(s) for s in train_seqs)), "baselines": baseline_stats(train_seqs),
    }
    runs = [(Path(out_dir), core)] + ([(Path(out_dir) / "memoryless", "none")] if memoryless else [])
    models = []
    for _, kind in runs:
        torch.manual_seed(seed)
        model = MeleeModel(core=kind, hidden=hidden)
        config[f"train_{kind}"] = _fit(model, train_seqs, seq_len=seq_len, batch=batch, steps=steps, lr=lr,
                                       seed=seed, progress=progress, desc=f"train {kind}")
        models.append(model)
    for (run_dir, _), model in zip(runs, models, strict=True):
        save_checkpoint(model, config, run_dir)
    return config


@torch.no_grad()
def evaluate(run_dir: str | os.PathLike, data_dir: str | os.PathLike) -> dict[str, Any]:
    """Held-out NLL (nats/frame) and teacher-forced accuracy per controller component.

    Rows: the trained model, the memoryless model (if trained), ``majority`` and ``repeat-previous``.
    Each held-out game is unrolled whole from a zero state.
    """
    model, config = load_checkpoint(run_dir)
    models = {f"recurrent ({model.config['core']})": model}
    if (Path(run_dir) / "memoryless").is_dir():
        models["memoryless (none)"] = load_checkpoint(Path(run_dir) / "memoryless")[0]
    manifest = load_manifest(data_dir)
    entries = [(g, i) for g, i in perspectives(manifest) if g["file"] in config["heldout_games"]
               and (config["character"] == "ALL" or g["players"][i]["character"] == config["character"])]
    seqs = load_sequences(data_dir, entries, config["delay"])
    if not seqs:
        raise MeleeDataError(f"none of the held-out games {config['heldout_games']} is in {data_dir}")
    sums: dict[str, dict[str, float]] = {}
    for seq in seqs:
        batch = _whole(seq)
        for name, m in models.items():
            logits, _ = m(batch, m.initial_state(1))
            _scores(sums, name, logits, batch)
        _scores(sums, "majority", baseline_logits(config["baselines"], "majority", batch), batch)
        _scores(sums, "repeat-previous", baseline_logits(config["baselines"], "repeat", batch), batch)
    rows = {}
    for name, acc in sums.items():
        n = acc.pop("frames")
        row = {k: v / n for k, v in acc.items()}
        row["nll/total"] = sum(row[f"nll/{k}"] for k in COMPONENTS)
        rows[name] = row
    return {"character": config["character"], "character_note": config["character_note"],
            "delay": config["delay"], "heldout_games": config["heldout_games"],
            "heldout_frames": int(sum(len(s) for s in seqs)), "train_frames": config["train_frames"],
            "rows": rows}


def format_report(report: dict[str, Any]) -> str:
    """Markdown table of an ``evaluate`` report."""
    cols = [f"nll/{k}" for k in (*COMPONENTS, "total")] + [f"acc/{k}" for k in COMPONENTS]
    lines = [f"character {report['character']} ({report['character_note']}), delay {report['delay']}, "
             f"held-out {report['heldout_frames']} frames from {', '.join(report['heldout_games'])}; "
             f"trained on {report['train_frames']} frames",
             "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines)
