"""Melee imitation: recurl's behaviour cloning on Slippi replays, with the controller as the action.

Reading order: the recipe (config) -> the algorithm -> scoring against the no-learning baselines.

What is Melee-specific here, and nothing else (the training loop, stateful truncated BPTT with resets at
game starts, the reaction delay, validation with early stopping, checkpoints, resume, logs and the
progress bar are behaviour cloning's, :mod:`recurl.algos.bc`):

- the data: the perspectives of a dataset written by ``recurl melee prepare``
  (:mod:`recurl.melee.dataset`), filtered by character, split by game content into train / validation
  (early stopping) / test (never seen; ``recurl melee eval`` reports on it);
- the network: recurl's :class:`~recurl.nn.policy.RecurrentPolicy` over the Melee observation (embeddings of
  action states, characters, stage and the previous controller, plus the float features), a residual
  core, and an autoregressive head that draws buttons, main stick, c-stick and shoulder in turn, each
  conditioned on the ones before;
- left/right mirror and old-replay (2.0 features) augmentation of the training games;
- the statistics of two baselines that need no learning, majority and repeat-previous, saved with the
  run so that any dataset can be scored against them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from recurl.algos.bc import BCConfig, BehaviourCloning
from recurl.config import Range, Ranges, check_config
from recurl.errors import RecurlError
from recurl.melee import dataset as D
from recurl.melee import features as F
from recurl.nn.policy import PolicyConfig

#: The network of the recipe: slippi-ai's shape (embeddings -> MLP -> residual LSTM -> autoregressive head).
MELEE_POLICY = PolicyConfig(core="lstm", hidden_size=256, encoder_hidden=(256,), activation="relu", embed_dim=32,
                            residual=True, autoregressive=True, autoregressive_hidden=128, shared_core=True,
                            ortho_init=False)
#: Where a character's run trains the pooled model it fine-tunes (``RUN/pooled``).
POOLED = "pooled"


@dataclass(frozen=True)
class MeleeConfig(BCConfig):
    """The Melee recipe. Every field is a ``recurl melee train`` / ``recurl train --algo melee`` flag."""

    dataset: str = ""
    """A dataset directory written by `recurl melee prepare`."""
    character: str = "FOX"
    """Imitate this character (CSS name, e.g. FOX, FALCO, MARTH), or ALL for one model of every human player."""
    policy: PolicyConfig = field(default_factory=lambda: MELEE_POLICY)
    """Network shape (defaults: the recipe's residual LSTM of 256 with an autoregressive controller head)."""
    action_delay: int = 18
    """Reaction delay D in frames: the controller of frame t is predicted from the state of frame t - D."""
    chunk_len: int = 64
    batch_size: int = 32
    mirror: float = 0.5
    """Probability that a training game is mirrored left/right in an epoch."""
    old_replay: float = 0.5
    """Probability that a training game is presented as a 2.0 replay in an epoch (hurtbox, hitlag and velocity
    features at their defaults, as 15 of the corpus's 36 games store them), so the model also learns to play
    from an old replay's features, e.g. to infer velocities from positions over time."""
    test_fraction: float = 0.2
    """Fraction of the frames held out as whole games, never trained or validated on (the final report)."""
    val_fraction: float = 0.1
    """Fraction of the remaining frames held out as whole games for early stopping."""
    pretrain: bool = True
    """With a character: first train the pooled model on every player's training games (into RUN/pooled, or
    take it from --init-from), then fine-tune it on the character's games, early-stopped on the character's
    validation games (--no-pretrain: the character's games alone)."""
    init_from: str | None = None
    """The pooled model to fine-tune instead of training one: a `--character ALL` run with this run's
    dataset, seed and recipe (what pretraining would train, to the bit, on one machine)."""
    max_epochs: int = 30
    patience: int = 5
    learning_rate: float = 5e-4
    weight_decay: float = 0.01

    RANGES: ClassVar[Ranges] = {**BCConfig.RANGES, "action_delay": Range(1), "mirror": Range(0, 1),
                                "old_replay": Range(0, 1),
                                "test_fraction": Range(0, 1, lo_open=True, hi_open=True),
                                "val_fraction": Range(0, 1, lo_open=True, hi_open=True)}

    def __post_init__(self) -> None:
        check_config(self)  # no env to resolve: Melee runs learn from replays alone
        if self.env:
            raise RecurlError("a Melee run has no env (it learns from replays): drop --env")
        if self.character.upper() != "ALL":
            try:
                F.character_id(self.character)
            except ValueError as e:
                raise RecurlError(str(e)) from None


class MeleeImitation(BehaviourCloning):
    """Behaviour cloning of one character (or all) from prepared Slippi replays.

    ``learn()`` trains until the validation NLL stops improving (``patience`` epochs) or ``max_epochs``,
    keeping the best weights. Acting (``predict``, :class:`recurl.Agent`, ONNX) takes the observation dict of
    :data:`recurl.melee.dataset.OBSERVATION_SPACE` and returns the controller (``ACTION_SPACE``) to press
    ``action_delay`` frames later; :class:`recurl.integrations.melee.MeleeAgent` builds that dict live.
    """

    algo = "melee"
    config_class = MeleeConfig

    # -- data --------------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        if not self.config.dataset:
            raise RecurlError("Melee imitation needs --dataset DIR (written by `recurl melee prepare`)")
        self._data = None
        self._pairs: tuple[D.PerspectivePairs, D.PerspectivePairs] | None = None
        self.split = make_split(self.config)

    def _dataset_spaces(self) -> tuple[gym.Space, gym.Space]:
        return D.OBSERVATION_SPACE, D.ACTION_SPACE

    def _check_spaces(self) -> None:
        """The spaces are Melee's own (nothing to compare them with)."""

    def _loaded(self) -> None:
        self._pairs = None
        self.split = self.saved_meta.get("melee") or None  # a resumed run keeps its split

    def _split(self) -> tuple[D.PerspectivePairs, D.PerspectivePairs]:
        if self._pairs is None:
            if self.split is None:
                self.split = make_split(self.config)
            persp = D.perspectives(self.config.dataset)
            by_set = {name: [p for p in persp if p.sha256 in set(self.split[name]) and _plays(p, self.split)]
                      for name in ("train", "val")}
            self._pairs = tuple(D.PerspectivePairs(self.config.dataset, by_set[name], self.config.action_delay)
                                for name in ("train", "val"))
            if not any(self._pairs[0].lengths):
                raise D.MeleeDataError(f"no training game is longer than the delay ({self.config.action_delay} frames)")
        return self._pairs

    def _epoch_pairs(self, pairs: D.PerspectivePairs) -> D.PerspectivePairs:
        """Each training game mirrored left/right with probability ``mirror`` and presented as a 2.0 replay
        with probability ``old_replay``, drawn anew every epoch."""
        u = np.random.default_rng([self.config.seed, self.epoch, 17]).random((2, len(pairs)))
        return pairs.augmented(u[0] < self.config.mirror, u[1] < self.config.old_replay)

    def _pretrain(self, run_dir: str | Path | None, progress_bar: bool) -> bool:
        """With a character and ``pretrain``: start from the pooled model (:meth:`pooled`)."""
        if self.split["character"] == "ALL" or not self.config.pretrain:
            return False
        self.policy.load_state_dict(self.pooled(run_dir, progress_bar).policy.state_dict())
        return True

    def pooled(self, run_dir: str | Path | None = None, progress_bar: bool = False) -> MeleeImitation:
        """The pooled model this character's run fine-tunes: ``init_from``'s, checked to be what pretraining
        would train, else trained now (into ``RUN/pooled`` with a run directory, resumed there when killed)."""
        cfg = dataclasses.replace(self.config, character="ALL", init_from=None)
        path = self.config.init_from
        if path:
            return _checked_pooled(path, MeleeImitation.load(path, device=self.device), cfg)
        sub = Path(run_dir) / POOLED if run_dir is not None else None
        if sub is not None and (sub / "trainer.pt").is_file():
            return MeleeImitation.resume(sub, progress=progress_bar)
        model = MeleeImitation(config=cfg)
        return model.learn(run_dir=sub, progress_bar=progress_bar)

    def summarize(self, episodes: int = 0, seed: int = 0) -> dict[str, Any]:
        """The final report of a run (``summary.json``): NLL and accuracy on the run's own test games, beside
        the majority and repeat-previous baselines (``episodes`` and ``seed`` do not apply)."""
        self._meta()  # the baselines' statistics
        report = evaluate({"model": self}, self.split, self.config.dataset)
        return {"character": self.split["character"], "test_frames": report["frames"],
                **{f"{name}/{k}": v for name, row in report["rows"].items() for k, v in row.items()
                   if k == "nll/total" or name == "model"}}

    def _meta(self) -> dict[str, Any]:
        split = self.split or {}
        if split and "baselines" not in split:  # from the training games, once
            split["baselines"] = baseline_stats(self._split()[0])
        return {"melee": split}


def _checked_pooled(path: str, model: MeleeImitation, cfg: MeleeConfig) -> MeleeImitation:
    """``model`` (the run at ``path``) if it is the pooled run of recipe ``cfg``: the same settings, apart from
    where it ran, and the same split of the same games; else an error naming the difference."""
    run_only = {"dataset", "device", "threads", "checkpoint_every", "eval_episodes"}
    have, want = dataclasses.asdict(model.config), dataclasses.asdict(cfg)
    diff = [f"{k}={have[k]!r} there, {want[k]!r} here" for k in want if k not in run_only and have[k] != want[k]]
    split = make_split(cfg)
    diff += [f"its {k} games differ" for k in ("train", "val", "test") if model.split[k] != split[k]]
    if diff:
        raise RecurlError(f"--init-from {path}: not the pooled run of this "
                          f"recipe ({'; '.join(diff)}): train one with `recurl melee train --character ALL` and "
                          "this run's other flags, or drop --init-from to pretrain here")
    return model


def _plays(p: D.Perspective, split: dict[str, Any]) -> bool:
    return split["character"] == "ALL" or p.character == split["character"]


def make_split(cfg: MeleeConfig) -> dict[str, Any]:
    """The character rule and the three-way split by game content; JSON-ready (saved in ``config.json``).

    The test games are drawn from all the dataset's games, whatever the character (seeded), and a run keeps
    those of its character: runs of different characters with one seed share their test games, so a
    character's own model and the pooled model are compared on games neither has seen. Validation games are
    then drawn from each character's other games (seeded); a character's run validates on its own draw and
    the pooled run on the union of every character's, so a character's validation games are never among
    the pooled run's training games (the pooled model can be fine-tuned on a character, ``pretrain``).
    """
    persp = D.perspectives(cfg.dataset)
    frames = {p.sha256: p.frames for p in persp}
    names = {p.sha256: p.game for p in persp}
    test_all = set(D.split_games(frames, cfg.test_fraction, cfg.seed)[1])
    character, note = D.choose_character(persp, cfg.character)
    rest_of: dict[str, set[str]] = {}  # each character's games outside the test set
    for p in persp:
        if p.sha256 not in test_all:
            rest_of.setdefault(p.character, set()).add(p.sha256)
    val_of = {c: D.split_games({h: frames[h] for h in r}, cfg.val_fraction, cfg.seed + 1)[1]
              for c, r in rest_of.items() if len(r) >= 2}
    mine = sorted({p.sha256 for p in persp if character == "ALL" or p.character == character})
    test = [h for h in mine if h in test_all]
    rest = [h for h in mine if h not in test_all]
    val = sorted({h for v in val_of.values() for h in v}) if character == "ALL" else val_of.get(character, [])
    train = [h for h in rest if h not in set(val)]
    if not test or not val or not train:
        raise D.MeleeDataError(f"{character} has {len(test)} game(s) among the test games of seed {cfg.seed} and "
                               f"{len(rest)} other(s) (needs 1 and 2, split into training and validation "
                               "games): add games, or try another --seed")
    return {"character": character, "character_note": note, "train": train, "val": val, "test": test,
            "names": names, "frames": {k: sum(frames[h] for h in v) for k, v in
                                       (("train", train), ("val", val), ("test", test))}}


# ---------------------------------------------------------------------------------------------------
# Scoring against the baselines
# ---------------------------------------------------------------------------------------------------
def baseline_stats(pairs: D.PerspectivePairs) -> dict[str, list]:
    """Training statistics of the no-learning baselines, per controller component (add-one smoothed):
    ``majority``: the class frequencies; ``change``: how often the target differs from the previous
    frame's controller. Counted game by game (nothing is held but the counts)."""
    counts = [np.zeros(k) for k in D.CONTROLLER_NVEC]
    changes = np.zeros(len(D.CONTROLLER_NVEC))
    for obs, a in (pairs[i] for i in range(len(pairs))):
        for c, k in enumerate(D.CONTROLLER_NVEC):
            counts[c] += np.bincount(a[:, c].astype(np.int64), minlength=k)
        changes += (a != obs["prev_controller"]).sum(0)
    n = sum(pairs.lengths)
    return {"majority": [((m + 1) / (n + len(m))).tolist() for m in counts],
            "change": [float((ch + 1) / (n + 2)) for ch in changes]}


def baseline_conditionals(stats: dict[str, list], kind: str, prev: torch.Tensor) -> list[torch.Tensor]:
    """Log-probabilities of a baseline for every component, each ``[..., n_c]`` for ``prev[..., 8]``.

    ``majority``: the training marginal. ``repeat``: the previous frame's value with probability
    ``1 - change``, the rest spread evenly over the other values.
    """
    out = []
    for c, k in enumerate(D.CONTROLLER_NVEC):
        if kind == "majority":
            out.append(torch.tensor(stats["majority"][c], dtype=torch.float32).log().expand(*prev.shape[:-1], k))
        elif kind == "repeat":
            ch = stats["change"][c]
            lp = torch.full((*prev.shape[:-1], k), float(np.log(ch / (k - 1))))
            out.append(lp.scatter(-1, prev[..., c : c + 1].long(), float(np.log(1 - ch))))
        else:
            raise ValueError(f"unknown baseline {kind!r}")
    return out


def score(conditionals: list[torch.Tensor], target: torch.Tensor) -> dict[str, float]:
    """Summed NLL (nats) and argmax hits per report group over ``target[..., 8]``, given the per-component
    log-probabilities ``conditionals[c][..., n_c]`` (teacher-forced). Buttons: NLL summed over the five,
    a hit when all five are right. Also returns ``frames``."""
    nll = [-lp.gather(-1, target[..., c : c + 1].long()).squeeze(-1) for c, lp in enumerate(conditionals)]
    hit = [lp.argmax(-1) == target[..., c] for c, lp in enumerate(conditionals)]
    out = {"frames": float(target[..., 0].numel())}
    for name, cols in D.GROUPS.items():
        out[f"nll/{name}"] = float(sum(nll[c] for c in cols).sum())
        out[f"acc/{name}"] = float(torch.stack([hit[c] for c in cols]).all(0).sum())
    return out


@torch.no_grad()
def model_conditionals(model: MeleeImitation, pair: D.Pair) -> list[torch.Tensor]:
    """Teacher-forced per-component log-probabilities ``[M, 1, n_c]`` of ``model`` on one whole perspective,
    unrolled from a zero state."""
    obs, target = pair
    x = model.obs_conv.to_torch({k: v[:, None] for k, v in obs.items()}, model.device)
    is_first = torch.zeros(len(target), 1, dtype=torch.bool, device=model.device)
    is_first[0] = True
    model.policy.eval()
    dist, _, _ = model.policy.unroll(x, model.policy.initial_state(1), is_first, return_state=False)
    return [c.cpu() for c in dist.forced(torch.as_tensor(target[:, None], device=model.device))]


def unseen(split: dict[str, Any], data_dir: str) -> list[D.Perspective]:
    """The perspectives of ``data_dir`` a run with ``split`` may be scored on: its character's, in games
    (by content hash) it neither trained nor validated on. An error if there are none."""
    seen = set(split["train"]) | set(split["val"])
    persp = [p for p in D.perspectives(data_dir) if _plays(p, split) and p.sha256 not in seen]
    if not persp:
        raise D.MeleeDataError(f"{data_dir} holds no {split['character']} game this run has not trained or "
                               "validated on: score it on other games")
    return persp


def evaluate(models: dict[str, MeleeImitation], split: dict[str, Any], data_dir: str) -> dict[str, Any]:
    """Score ``models`` (name -> model) and the baselines ``majority`` and ``repeat-previous`` on every unseen
    perspective of ``data_dir`` (:func:`unseen`), each game unrolled whole from a zero state.

    Returns ``{"rows": {name: {nll/<group>, acc/<group>, nll/total}}, "games": [{"game", "player", "frames",
    name: nll/total, ...}], "frames": N}``: NLL in nats per frame, teacher-forced argmax accuracy.
    """
    delay = {int(m.config.action_delay) for m in models.values()}
    if len(delay) != 1:
        raise RecurlError(f"the models to compare have different reaction delays ({sorted(delay)})")
    persp = unseen(split, data_dir)
    totals: dict[str, dict[str, float]] = {}
    games = []
    pairs = D.PerspectivePairs(data_dir, persp, delay.pop(), cache=1)
    for i, p in enumerate(persp):
        pair = pairs[i]
        if not len(pair[1]):
            continue
        target = torch.as_tensor(pair[1][:, None])
        prev = torch.as_tensor(pair[0]["prev_controller"][:, None])
        conds = {name: model_conditionals(m, pair) for name, m in models.items()}
        conds |= {"majority": baseline_conditionals(split["baselines"], "majority", prev),
                  "repeat-previous": baseline_conditionals(split["baselines"], "repeat", prev)}
        row: dict[str, Any] = {"game": p.game, "player": p.player, "character": p.character, "frames": len(target)}
        for name, c in conds.items():
            s = score(c, target)
            acc = totals.setdefault(name, dict.fromkeys(s, 0.0))
            for k, v in s.items():
                acc[k] += v
            row[name] = sum(s[f"nll/{g}"] for g in D.GROUPS) / s["frames"]
        games.append(row)
    rows = {}
    for name, acc in totals.items():
        n = acc.pop("frames")
        rows[name] = {k: v / n for k, v in acc.items()} | {"nll/total": sum(acc[f"nll/{g}"] for g in D.GROUPS) / n}
    return {"rows": rows, "games": games, "frames": int(sum(g["frames"] for g in games))}


def with_policy(cfg: MeleeConfig, **fields: Any) -> MeleeConfig:
    """``cfg`` with some policy fields replaced (e.g. ``core="none"`` for the memoryless baseline)."""
    return dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, **fields))
