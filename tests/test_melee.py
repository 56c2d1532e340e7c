"""Melee pipeline on the real shared replays: prepare, features, delay, streaming, training, libmelee."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peppi_py")

from _shared import SHARED_DATA  # noqa: E402

from recurl.algos.melee import MeleeImitation, baseline_conditionals, evaluate  # noqa: E402
from recurl.errors import RecurlError  # noqa: E402
from recurl.melee import dataset as D  # noqa: E402
from recurl.melee import features as F  # noqa: E402
from recurl.melee.cli import melee_main  # noqa: E402
from recurl.melee.evaluate import evaluate_run  # noqa: E402
from recurl.melee.prepare import dedupe_frames, prepare  # noqa: E402

SLP = SHARED_DATA / "slp"
pytestmark = pytest.mark.skipif(not SLP.is_dir(), reason="shared replays not available")

# Frames per replay after rollback removal (README of the shared replays).
FRAMES = {"peppi_game.slp": 5209, "peppi_ics.slp": 344, "peppi_v3.12.slp": 124, "peppi_v3.13.slp": 148,
          "peppi_v3.16.slp": 308, "peppi_v3.18.slp": 941, "slippijs_actionEdgeCases.slp": 2902,
          "slippijs_realtimeTest.slp": 2306}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("melee_any")
    report = prepare(SLP, out, ruleset="any", progress=False)
    print("\n".join(report.lines()))
    return out


@pytest.fixture(scope="module")
def manifest(data_dir: Path) -> dict:
    return json.loads((data_dir / "manifest.json").read_text())


def _games(manifest: dict) -> dict[str, dict]:
    return {g["file"]: g for g in manifest["games"]}


# -- prepare -------------------------------------------------------------------------------------------
def test_prepare_every_shared_replay(manifest: dict, data_dir: Path) -> None:
    games = _games(manifest)
    assert {f: g["frames"] for f, g in games.items()} == FRAMES
    assert manifest["skipped"] == []
    assert games["peppi_v3.16.slp"]["rollback_frames_removed"] == 7
    for old in ("peppi_game.slp", "peppi_ics.slp"):
        missing = set(games[old]["missing_fields"])
        assert {"airborne", "jumps", "hurtbox_state", "velocities", "hitlag"} <= missing
        assert games[old]["defaults_used"]["jumps"] == F.RAW_DEFAULTS["jumps"]
    assert set(games["slippijs_realtimeTest.slp"]["missing_fields"]) == {"hurtbox_state", "hitlag",
                                                                          "velocities"}
    assert games["peppi_v3.18.slp"]["missing_fields"] == []
    assert [p["cpu"] for p in games["peppi_game.slp"]["players"]] == [False, True]
    assert [p["character"] for p in games["peppi_game.slp"]["players"]] == ["MARTH", "FOX"]
    assert [p["port"] for p in games["slippijs_actionEdgeCases.slp"]["players"]] == [2, 3]
    with np.load(data_dir / games["peppi_ics.slp"]["npz"]) as z:  # Nana kept as extra features
        assert z["p0_nana"][:, -1].mean() > 0.9 and z["p1_nana"].max() == 0
        assert z["p0_floats"].shape == (344, F.NUM_FLOATS) and np.isfinite(z["p0_floats"]).all()


def test_tournament_ruleset_and_character_filters(tmp_path: Path) -> None:
    rep = prepare(SLP, tmp_path / "t", progress=False)
    assert [s["file"] for s in rep.skipped] == ["peppi_v3.13.slp"]
    assert "stocks" in rep.skipped[0]["reason"] and "items" in rep.skipped[0]["reason"]
    rep = prepare(SLP, tmp_path / "fox", characters=["fox"], ruleset="any", progress=False)
    assert sorted(g["file"] for g in rep.games) == ["peppi_v3.13.slp", "peppi_v3.16.slp"]
    rep = prepare(SLP, tmp_path / "fox_falco", characters=["FOX"], opponents=["FALCO"], ruleset="any",
                  progress=False)
    assert [g["file"] for g in rep.games] == ["peppi_v3.16.slp"]


def test_corrupt_replays_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "replays"
    src.mkdir()
    shutil.copy(SLP / "peppi_v3.16.slp", src / "good.slp")
    data = (SLP / "peppi_v3.18.slp").read_bytes()
    (src / "truncated.slp").write_bytes(data[: len(data) // 2])
    (src / "notes.slp").write_text("this is not a replay\n")
    rep = prepare(src, tmp_path / "out", ruleset="any", progress=False)
    assert [g["file"] for g in rep.games] == ["good.slp"]
    reasons = {s["file"]: s["reason"] for s in rep.skipped}
    assert set(reasons) == {"truncated.slp", "notes.slp"}
    assert all(r.startswith("unreadable") for r in reasons.values())
    assert any(line.startswith("skip truncated.slp") for line in rep.lines())


def test_rollback_dedupe_keeps_last_record() -> None:
    ids = np.array([-2, -1, 0, 1, 2, 1, 2, 3, 3])
    idx = dedupe_frames(ids)
    assert idx.tolist() == [0, 1, 2, 5, 6, 8]
    from peppi_py import read_slippi

    game = read_slippi(str(SLP / "peppi_v3.16.slp"))
    raw_ids = game.frames.id.to_numpy()
    x = game.frames.ports[0].leader.post.position.x.to_numpy()
    keep = dedupe_frames(raw_ids)
    assert (np.diff(raw_ids[keep]) == 1).all()
    for frame_id in np.unique(raw_ids):
        last = np.flatnonzero(raw_ids == frame_id)[-1]
        assert x[keep[np.searchsorted(raw_ids[keep], frame_id)]] == x[last]


# -- features ------------------------------------------------------------------------------------------
def test_stick_encoding_and_mirror_consistency() -> None:
    grid = np.arange(-160, 161) / 160.0  # every grid and half-grid value (CPUs use half steps)
    xs, ys = np.meshgrid(grid, grid[::7])
    main = F.encode_main(xs.ravel(), ys.ravel())
    assert main.min() >= 0 and main.max() < F.NUM_MAIN
    assert (F.mirror_main(main) == F.encode_main(-xs.ravel(), ys.ravel())).all()
    c = F.encode_cstick(xs.ravel(), ys.ravel())
    assert (F.mirror_cstick(c) == F.encode_cstick(-xs.ravel(), ys.ravel())).all()
    assert F.encode_main(np.zeros(1), np.zeros(1))[0] == F.MAIN_NEUTRAL
    x, y = F.main_values(F.encode_main(np.array([1.0, -0.5]), np.array([0.0, 1.0])))
    assert x.tolist() == [1.0, -0.5] and y.tolist() == [0.0, 1.0]
    assert F.encode_shoulder(np.array([0.0, 0.31, 0.6, 1.0])).tolist() == [0, 1, 2, 3]
    assert F.encode_buttons(np.array([0x0100 | 0x0800 | 0x0040])).tolist() == [[1, 0, 1, 0, 1]]


def test_mirror_is_an_involution(data_dir: Path, manifest: dict) -> None:
    with np.load(data_dir / _games(manifest)["peppi_v3.16.slp"]["npz"]) as z:
        pair = D.perspective_pair(dict(z), 0, 3)
    once = D.mirror_pair(pair)
    assert not np.array_equal(once[0]["floats"], pair[0]["floats"]) and not np.array_equal(once[1], pair[1])
    x_col = F.FLOAT_NAMES.index("x")
    for block in F.FLOAT_BLOCKS:  # every player block, Nana's included
        assert np.array_equal(once[0]["floats"][:, block + x_col], -pair[0]["floats"][:, block + x_col])
    assert np.array_equal(once[1][:, D.MAIN], F.mirror_main(pair[1][:, D.MAIN]))
    twice = D.mirror_pair(once)
    for k in pair[0]:
        assert np.array_equal(twice[0][k], pair[0][k]), k
    assert np.array_equal(twice[1], pair[1])


def test_old_replay_augmentation_matches_a_real_2_0_replay(data_dir: Path, manifest: dict) -> None:
    """A 3.x game presented "as a 2.0 replay" has exactly the values a real 2.0 replay stores in the columns
    2.0 lacks (every player block), and nothing else changes; on a real 2.0 replay it changes nothing."""
    games = _games(manifest)
    assert set(games["slippijs_realtimeTest.slp"]["missing_fields"]) >= {"hurtbox_state", "hitlag", "velocities"}
    with np.load(data_dir / games["slippijs_realtimeTest.slp"]["npz"]) as z:
        v2 = D.perspective_pair(dict(z), 0, 3)[0]["floats"]
    with np.load(data_dir / games["peppi_v3.16.slp"]["npz"]) as z:
        v3 = D.perspective_pair(dict(z), 0, 3)[0]["floats"]
    cols = [b + F.FLOAT_NAMES.index(n) for b in F.FLOAT_BLOCKS[:2] for n in F.V2_MISSING]
    assert (v3[:, cols] != 0).any(0).sum() >= 6  # the 3.x game has these features
    old = F.as_v2_obs_floats(v3)
    assert np.array_equal(old[:, cols], np.broadcast_to(v2[:1, cols], old[:, cols].shape))
    assert (v2[:, cols] == v2[:1, cols]).all()  # a real 2.0 replay holds its defaults there throughout
    rest = np.setdiff1d(np.arange(F.OBS_FLOATS), [b + F.FLOAT_NAMES.index(n) for b in F.FLOAT_BLOCKS
                                                    for n in F.V2_MISSING])
    assert np.array_equal(old[:, rest], v3[:, rest])
    assert np.array_equal(F.as_v2_obs_floats(v2), v2)
    persp = [p for p in D.perspectives(data_dir) if p.game == "peppi_v3.16.slp"][:1]
    plain = D.PerspectivePairs(data_dir, persp, 3)
    assert np.array_equal(plain.augmented(np.zeros(1, bool), np.ones(1, bool))[0][0]["floats"],
                          F.as_v2_obs_floats(plain[0][0]["floats"]))


# -- delay ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("delay", [1, 5, 18])
def test_delay_shift_is_exact(delay: int) -> None:
    n = 40
    frame = np.arange(-10, n - 10, dtype=np.int32)
    arrays: dict[str, np.ndarray] = {"frame": frame, "stage": np.asarray(3)}
    for i in range(2):
        floats = np.zeros((n, F.NUM_FLOATS), np.float32)
        floats[:, 0] = frame + 1000 * i  # state of frame f carries f in column 0
        arrays.update({f"p{i}_floats": floats, f"p{i}_action": (frame % 300 + i).astype(np.int16),
                       f"p{i}_character": np.full(n, i, np.uint8), f"p{i}_nana": np.zeros((n, F.NANA_WIDTH)),
                       f"p{i}_buttons": np.stack([frame % 2] * 5, -1).astype(np.uint8),
                       f"p{i}_main": (frame + 100 + 7 * i).astype(np.int16),
                       f"p{i}_cstick": (frame % 5).astype(np.uint8),
                       f"p{i}_shoulder": (frame % 4).astype(np.uint8)})
    obs, target = D.perspective_pair(arrays, 1, delay)
    m = n - delay
    assert len(target) == m and all(len(v) == m for v in obs.values())
    assert obs["floats"].shape == (m, F.OBS_FLOATS) and target.shape == (m, len(D.CONTROLLER_NVEC))
    assert (obs["floats"][:, 0] - 1000 == frame[:m]).all()  # self = player 1 sees frame t
    assert (obs["floats"][:, F.NUM_FLOATS] == frame[:m]).all()  # then the opponent's block
    assert (target[:, D.MAIN] == frame[delay:] + 107).all()  # target: self's controller of frame t + D
    assert (obs["prev_controller"][:, D.MAIN] == frame[delay - 1:-1] + 107).all()  # input: of t + D - 1
    assert (target[:, 0] == frame[delay:] % 2).all() and (target[:, D.SHOULDER] == frame[delay:] % 4).all()
    assert (obs["action"][:, 0] == frame[:m] % 300 + 1).all() and (obs["action"][:, 1] == frame[:m] % 300).all()
    for key, space in D.OBSERVATION_SPACE.spaces.items():
        if key == "floats":  # carries frame numbers here, beyond the real features' range
            continue
        assert all(space.contains(np.asarray(obs[key][t], space.dtype)) for t in range(m)), key
    with pytest.raises(D.MeleeDataError):
        D.perspective_pair(arrays, 0, 0)


def test_baselines_are_distributions() -> None:
    stats = {"majority": [[0.5, 0.5]] * 5 + [list(np.full(k, 1 / k)) for k in D.CONTROLLER_NVEC[5:]],
             "change": [0.1] * len(D.CONTROLLER_NVEC)}
    prev = torch.as_tensor(np.array([[1, 0, 0, 1, 0, 144, 3, 2]]))
    for kind in ("majority", "repeat"):
        for c, lp in enumerate(baseline_conditionals(stats, kind, prev)):
            assert torch.allclose(lp.exp().sum(-1), torch.ones(1)), (kind, c)
    rep = baseline_conditionals(stats, "repeat", prev)
    assert all(int(lp.argmax(-1)) == int(prev[0, c]) for c, lp in enumerate(rep))


# -- the split and the run -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("melee_run") / "run"
    policy = ["--hidden-size", "32", "--encoder-hidden", "32", "--embed-dim", "8", "--autoregressive-hidden", "16"]
    code = melee_main(["train", "--dataset", str(data_dir), "--character", "FOX", "--run-dir", str(run),
                       "--action-delay", "6", "--chunk-len", "32", "--batch-size", "16", "--max-epochs", "1",
                       "--no-pretrain", "--quiet", *policy])
    assert code == 0
    return run


def test_split_is_by_content_never_by_name(data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "replays"
    src.mkdir()
    for name in FRAMES:
        shutil.copy(SLP / name, src / name)
    shutil.copy(SLP / "peppi_game.slp", src / "copy_of_game.slp")  # the same game under another name
    rep = prepare(src, tmp_path / "data", ruleset="any", progress=False)
    persp = D.perspectives(tmp_path / "data")
    sha = {p.game: p.sha256 for p in persp}
    # the same content is one game: prepared once (the first name in sorted order), the other reported
    assert [(d["file"], d["duplicate_of"]) for d in rep.duplicates] == [("peppi_game.slp", "copy_of_game.slp")]
    assert "copy_of_game.slp" in sha and "peppi_game.slp" not in sha and len(set(sha.values())) == len(sha)
    from recurl.algos.melee import MeleeConfig, make_split

    for seed in range(6):
        split = make_split(MeleeConfig(dataset=str(tmp_path / "data"), character="ALL", seed=seed))
        sets = [set(split[k]) for k in ("train", "val", "test")]
        assert sets[0] and sets[1] and sets[2]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        assert set().union(*sets) == set(sha.values())
        # a character's test and validation games are the pooled run's too: never among its training games
        for character in {p.character for p in persp}:
            try:
                mine = make_split(MeleeConfig(dataset=str(tmp_path / "data"), character=character, seed=seed))
            except D.MeleeDataError:
                continue  # too few games of it for this seed
            if mine["character"] == character:
                assert set(mine["test"]) <= sets[2] and set(mine["val"]) <= sets[1], (character, seed)


def _same_weights(a: MeleeImitation, b: MeleeImitation) -> None:
    """``a`` and ``b`` hold the same policy weights, to the bit."""
    theirs = b.policy.state_dict()
    for k, v in a.policy.state_dict().items():
        assert torch.equal(v, theirs[k]), k


def _pretrain_kw(data_dir: Path, **kw: object) -> dict:
    return {"dataset": str(data_dir), "action_delay": 6, "chunk_len": 32, "batch_size": 16, "max_epochs": 1,
            "device": "cpu", "policy": {"hidden_size": 16, "encoder_hidden": (16,), "embed_dim": 4,
                                        "autoregressive_hidden": 8}, **kw}


@pytest.mark.slow  # five short trainings (~6 s)
def test_character_run_fine_tunes_the_pooled_model(data_dir: Path, tmp_path: Path) -> None:
    """Pretraining trains the pooled run of the same seed into RUN/pooled (the same weights as a separate
    ``--character ALL`` run, which ``init_from`` takes instead), and fine-tuning starts from its validation
    loss on the character's games, so it can only keep or improve it."""
    from recurl.algos.melee import POOLED

    run = tmp_path / "marth"
    model = MeleeImitation(**_pretrain_kw(data_dir, character="MARTH")).learn(run_dir=run, progress_bar=False)
    pooled = MeleeImitation.load(run / POOLED, device="cpu")
    assert pooled.split["character"] == "ALL" and model.split["character"] == "MARTH"
    assert set(model.split["val"]) <= set(pooled.split["val"])  # early stopping on games pooled never trained on
    before = MeleeImitation(**_pretrain_kw(data_dir, character="MARTH", max_epochs=1))
    before.policy.load_state_dict(pooled.policy.state_dict())
    before.policy.eval()
    val = before._split()[1]
    start = before._pass(before._stream(val, np.arange(len(val))), train=False)["loss"]
    assert model.best_val <= start + 1e-6
    # a separate pooled run is what pretraining trains, to the bit; init_from fine-tunes it the same way, and
    # the memoryless sibling fine-tunes the pooled run's memoryless sibling
    flags = ["--dataset", str(data_dir), "--action-delay", "6", "--chunk-len", "32", "--batch-size", "16",
             "--max-epochs", "1", "--device", "cpu", "--hidden-size", "16", "--encoder-hidden", "16", "--embed-dim",
             "4", "--autoregressive-hidden", "8", "--quiet"]
    assert melee_main(["train", "--character", "ALL", "--run-dir", str(tmp_path / "all"), *flags]) == 0
    alone = MeleeImitation.load(tmp_path / "all", device="cpu")
    _same_weights(pooled, alone)
    assert melee_main(["train", "--character", "MARTH", "--init-from", str(tmp_path / "all"), "--run-dir",
                       str(tmp_path / "tuned"), *flags]) == 0
    tuned = MeleeImitation.load(tmp_path / "tuned", device="cpu")
    _same_weights(model, tuned)
    sibling = MeleeImitation.load(tmp_path / "tuned" / "memoryless", device="cpu").config
    assert sibling.policy.core == "none" and sibling.init_from == str(tmp_path / "all" / "memoryless")
    assert not (tmp_path / "tuned" / POOLED).exists()
    # a pooled run of another recipe is refused, naming the difference
    with pytest.raises(RecurlError, match="learning_rate=0.0005 there, 0.001 here"):
        MeleeImitation(**_pretrain_kw(data_dir, character="MARTH", learning_rate=1e-3,
                                      init_from=str(tmp_path / "all"))).learn(progress_bar=False)


def test_prepare_train_eval_end_to_end(tiny_run: Path, data_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    meta = json.loads((tiny_run / "config.json").read_text())
    split = meta["melee"]
    assert meta["algo"] == "melee" and split["character"] == "MARTH" and "fell back" in split["character_note"]
    assert (tiny_run / "memoryless" / "summary.json").is_file()
    assert json.loads((tiny_run / "memoryless" / "config.json").read_text())["config"]["policy"]["core"] == "none"
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["test_frames"] > 0 and np.isfinite(summary["model/nll/total"])
    report = evaluate_run(tiny_run)
    assert set(report["rows"]) == {"recurrent (lstm)", "memoryless (none)", "majority", "repeat-previous"}
    test_games = {split["names"][h] for h in split["test"]}
    assert {g["game"] for g in report["games"]} == test_games  # its own dataset: the test games
    for row in report["rows"].values():
        assert np.isfinite(row["nll/total"]) and 0 <= row["acc/main"] <= 1
        assert row["nll/total"] == pytest.approx(sum(row[f"nll/{g}"] for g in D.GROUPS))
    assert melee_main(["eval", str(tiny_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == report["frames"]
    from recurl.cli import main

    assert main(["eval", str(tiny_run), "--json"]) == 0  # `recurl eval` takes a Melee run too
    assert json.loads(capsys.readouterr().out)["rows"].keys() == report["rows"].keys()
    # a dataset of only trained-on games has nothing to score
    only_train = tmp_path / "replays"
    only_train.mkdir()
    shutil.copy(SLP / "peppi_game.slp", only_train / "renamed.slp")
    prepare(only_train, tmp_path / "seen", ruleset="any", progress=False)
    if D.perspectives(tmp_path / "seen")[0].sha256 in split["train"]:
        assert melee_main(["eval", str(tiny_run), "--dataset", str(tmp_path / "seen")]) == 1
        assert "has not trained" in capsys.readouterr().err


def test_teacher_forced_scores_equal_the_policy_log_prob(tiny_run: Path, data_dir: Path) -> None:
    """The report's NLL is the policy's own log-likelihood of the human's controller (one whole game)."""
    model = MeleeImitation.load(tiny_run, device="cpu")
    split = model.split
    persp = [p for p in D.perspectives(data_dir) if p.sha256 in split["test"] and p.character == "MARTH"][:1]
    pair = D.PerspectivePairs(data_dir, persp, model.config.action_delay)[0]
    rep = evaluate({"m": model}, {**split, "test": [persp[0].sha256]}, str(data_dir))
    game = [g for g in rep["games"] if g["game"] == persp[0].game and g["player"] == persp[0].player][0]
    x = model.obs_conv.to_torch({k: v[:, None] for k, v in pair[0].items()}, torch.device("cpu"))
    is_first = torch.zeros(len(pair[1]), 1, dtype=torch.bool)
    is_first[0] = True
    with torch.no_grad():
        dist, _, _ = model.policy.unroll(x, model.policy.initial_state(1), is_first)
        nll = -dist.log_prob(torch.as_tensor(pair[1][:, None])).mean()
    assert game["m"] == pytest.approx(float(nll), rel=1e-5)


def test_melee_run_exports_and_resumes(tiny_run: Path, tmp_path: Path) -> None:
    from recurl.agent import Agent
    from recurl.export import export_onnx

    meta = export_onnx(tiny_run, tmp_path / "melee.onnx")  # verifies ONNX Runtime against torch
    assert meta["action_delay"] == 6 and {i["name"] for i in meta["inputs"]} >= {"obs.prev_controller", "obs.floats"}
    model = MeleeImitation.load(tiny_run, device="cpu")
    with pytest.raises(Exception, match="no env"):
        model.make_env(1)
    obs = {k: np.asarray(sp.sample()) for k, sp in D.OBSERVATION_SPACE.spaces.items()}
    torch_agent, onnx_agent = Agent(model), Agent(model, backend="onnx")
    s1, s2 = torch_agent.initial_state(1), onnx_agent.initial_state(1)
    for _ in range(5):
        a1, s1 = torch_agent.act(obs, s1, np.array([False]))
        a2, s2 = onnx_agent.act(obs, s2, np.array([False]))
        assert np.array_equal(a1, a2) and D.ACTION_SPACE.contains(np.asarray(a1, np.int64))


@pytest.mark.slow  # seven short trainings (~20 s)
def test_killed_melee_run_resumes_to_the_same_weights(data_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """A run stopped after its first epoch's checkpoint and resumed ends with the weights of an unbroken run,
    and so does one stopped in its pooled pretraining, run again."""
    kw = {"dataset": str(data_dir), "character": "MARTH", "action_delay": 6, "chunk_len": 32, "batch_size": 16,
          "max_epochs": 2, "patience": 5, "device": "cpu",
          "policy": {"hidden_size": 16, "encoder_hidden": (16,), "embed_dim": 4, "autoregressive_hidden": 8}}
    whole = MeleeImitation(**kw).learn(run_dir=tmp_path / "whole", progress_bar=False)
    MeleeImitation(**kw).learn(run_dir=tmp_path / "killed", progress_bar=False, callback=lambda m: False)
    assert json.loads((tmp_path / "killed" / "config.json").read_text())["melee"]["baselines"]
    resumed = MeleeImitation.resume(tmp_path / "killed", progress=False)
    assert resumed.epoch == whole.epoch == 2
    _same_weights(whole, resumed)
    # killed while it pretrained, before its own first checkpoint: --resume says to run the command again,
    # which continues RUN/pooled from its checkpoint and ends where the unbroken run did
    from recurl.algos.melee import POOLED

    early = tmp_path / "early"
    MeleeImitation(**kw | {"character": "ALL"}).learn(run_dir=early / POOLED, progress_bar=False,
                                                      callback=lambda m: False)
    assert melee_main(["train", "--resume", str(early), "--quiet"]) == 1
    assert "run the command that started it again" in capsys.readouterr().err
    again = MeleeImitation(**kw).learn(run_dir=early, progress_bar=False)
    pooled = MeleeImitation.load(early / POOLED, device="cpu")
    _same_weights(MeleeImitation.load(tmp_path / "whole" / POOLED, device="cpu"), pooled)
    _same_weights(whole, again)


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert melee_main(["prepare", str(tmp_path / "missing"), str(tmp_path / "o")]) == 1
    assert melee_main(["prepare", str(SLP), str(tmp_path / "o"), "--character", "PIKACHU", "--quiet"]) == 1
    assert melee_main(["train", "--dataset", str(tmp_path / "none"), "--run-dir", str(tmp_path / "r")]) == 1
    assert melee_main(["train", "--dataset", str(tmp_path), "--character", "NOBODY"]) == 1
    assert melee_main(["eval", str(tmp_path / "no_run")]) == 1
    err = capsys.readouterr().err
    assert "replay directory not found" in err and "no games left" in err and "not a prepared Melee dataset" in err
    assert "unknown character" in err and "run directory not found" in err
    assert "Traceback" not in err


# -- libmelee ------------------------------------------------------------------------------------------
# The two largest replays also match (checked once, 15 s under libmelee); the test keeps to the others.
@pytest.mark.parametrize("name", ["peppi_ics.slp", "peppi_v3.12.slp", "peppi_v3.13.slp", "peppi_v3.16.slp",
                                  "peppi_v3.18.slp", "slippijs_realtimeTest.slp"])
def test_libmelee_features_equal_peppi(name: str, data_dir: Path, manifest: dict) -> None:
    melee = pytest.importorskip("melee")
    from recurl.integrations.melee import player_arrays, stage_index

    console = melee.Console(is_dolphin=False, path=str(SLP / name), allow_old_version=True,
                            skip_rollback_frames=False)
    assert console.connect()
    frames, rows, stages = [], [], set()
    while (gs := console.step()) is not None:
        frames.append(gs.frame)
        stages.add(stage_index(gs.stage))
        rows.append([player_arrays(gs.players[p]) for p in sorted(gs.players)])
    keep = dedupe_frames(np.array(frames))
    with np.load(data_dir / _games(manifest)[name]["npz"]) as z:
        assert np.array_equal(np.array(frames)[keep], z["frame"])
        assert stages == {int(z["stage"])}
        for i in range(2):
            for key in rows[0][i]:
                live = np.concatenate([rows[j][i][key] for j in keep])
                assert np.array_equal(live, z[f"p{i}_{key}"]), (name, i, key)


def _console(name: str):  # noqa: ANN202 (a libmelee Console)
    melee = pytest.importorskip("melee")
    console = melee.Console(is_dolphin=False, path=str(SLP / name), allow_old_version=True,
                            skip_rollback_frames=False)
    assert console.connect()
    return console


def test_agent_observations_equal_the_dataset_and_backends_agree(tiny_run: Path, data_dir: Path,
                                                                  manifest: dict) -> None:
    """A real replay streamed through libmelee's file console into MeleeAgent: the agent sees exactly the
    dataset's observation of each frame, presses neutral until its first decision is due, then the
    decision made D - 1 frames earlier; the torch and ONNX backends press the same controllers."""
    from recurl.integrations.melee import NEUTRAL, MeleeAgent

    name = "peppi_v3.12.slp"  # MARTH vs MARTH, 124 frames, no rollback
    agents = [MeleeAgent(tiny_run, port=p, opponent_port=3 - p, deterministic=True, backend=b)
              for p, b in ((1, "torch"), (1, "onnx"))]
    with np.load(data_dir / _games(manifest)[name]["npz"]) as z:
        obs, _ = D.perspective_pair(dict(z), 0, 1)
    console = _console(name)
    pressed: list[list[np.ndarray]] = [[], []]
    chosen: list[np.ndarray] = []
    t = 0
    while (gs := console.step()) is not None and t < len(obs["floats"]):
        live = agents[0].observation(gs)
        for key in ("action", "character", "stage", "floats"):
            assert np.array_equal(live[key], obs[key][t]), (t, key)
        for i, agent in enumerate(agents):
            pressed[i].append(agent.step(gs))
        chosen.append(agents[0].chosen)
        t += 1
    d = agents[0].delay
    assert t > 3 * d
    assert np.array_equal(np.stack(pressed[0]), np.stack(pressed[1]))  # torch == onnx
    traced = agents[0].agent._traced  # the torch backend ran the traced step (recurl.acting), not eager
    assert traced._graphs and all(g is not None for g in traced._graphs.values()), traced.eager_reasons
    assert all(np.array_equal(a, NEUTRAL) for a in pressed[0][: d - 1])
    assert all(np.array_equal(pressed[0][k], chosen[k - (d - 1)]) for k in range(d - 1, t))
    sampler = MeleeAgent(tiny_run, port=1, opponent_port=2, backend="onnx", seed=0)  # the stochastic graph
    console = _console(name)
    presses = [sampler.step(console.step()) for _ in range(3 * d)]
    assert all(D.ACTION_SPACE.contains(np.asarray(a, np.int64)) for a in presses)


@pytest.mark.slow
def test_latency_benchmark_runs() -> None:
    """bench/bench_melee.py: prepare and training throughput, and the per-frame decision latency on both
    backends (the numbers are the benchmark's to report, not this test's to judge)."""
    pytest.importorskip("melee")
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench" / "bench_melee.py"
    out = subprocess.run([sys.executable, str(bench), str(SLP), "--epochs", "1", "--frames", "300",
                          "--latency-replay", str(SLP / "peppi_game.slp")],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    assert "frames/s" in out and out.count("p99") == 3, out
