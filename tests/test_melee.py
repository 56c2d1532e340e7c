"""Melee pipeline on the real shared replays: prepare, features, delay, streaming, training, libmelee."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peppi_py")

from recurl.melee import features as F  # noqa: E402
from recurl.melee.cli import melee_main  # noqa: E402
from recurl.melee.model import MeleeModel  # noqa: E402
from recurl.melee.prepare import dedupe_frames, prepare  # noqa: E402
from recurl.melee.train import (  # noqa: E402
    ChunkStreamer,
    Sequence,
    evaluate,
    load_checkpoint,
    make_sequence,
    to_torch,
    train,
)

SLP = Path(__file__).resolve().parents[2] / "shared" / "data" / "slp"
if not SLP.is_dir():
    SLP = Path("/work/shared/data/slp")
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
        seq = make_sequence(dict(z), 0, 1, 3)
    once = F.mirror(seq)
    assert not np.array_equal(once["floats"], seq["floats"]) and not np.array_equal(once["main"], seq["main"])
    x_col = F.FLOAT_NAMES.index("x")
    assert np.array_equal(once["floats"][:, x_col], -seq["floats"][:, x_col])
    twice = F.mirror(once)
    for k in seq:
        assert np.array_equal(twice[k], seq[k]), k


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
    seq = make_sequence(arrays, 1, 0, delay)
    m = n - delay
    assert len(seq["main"]) == m
    assert (seq["target_frame"] - seq["frame"] == delay).all()
    obs_frame = seq["floats"][:, 0] - 1000  # self = player 1
    assert (obs_frame == frame[:m]).all() and (seq["floats"][:, F.NUM_FLOATS] == frame[:m]).all()
    assert (seq["main"] == frame[delay:] + 107).all()  # target: self's controller of frame t
    assert (seq["prev_main"] == frame[delay - 1:-1] + 107).all()  # input: self's controller of t - 1
    assert (seq["action"][:, 0] == frame[:m] % 300 + 1).all()
    assert (seq["action"][:, 1] == frame[:m] % 300).all()
    with pytest.raises(ValueError):
        make_sequence(arrays, 0, 1, 0)


# -- streaming and state -------------------------------------------------------------------------------
def _toy_sequences(lengths: list[int]) -> list[Sequence]:
    rng = np.random.default_rng(0)
    out = []
    for g, n in enumerate(lengths):
        data = {"action": rng.integers(0, F.NUM_ACTIONS, (n, 2)), "character": rng.integers(0, 5, (n, 2)),
                "stage": np.full(n, 1), "floats": rng.normal(size=(n, F.OBS_FLOATS)).astype(np.float32),
                "prev_buttons": rng.integers(0, 2, (n, 5)), "prev_main": rng.integers(0, F.NUM_MAIN, n),
                "prev_cstick": rng.integers(0, 5, n), "prev_shoulder": rng.integers(0, 4, n),
                "buttons": rng.integers(0, 2, (n, 5)), "main": rng.integers(0, F.NUM_MAIN, n),
                "cstick": rng.integers(0, 5, n), "shoulder": rng.integers(0, 4, n),
                "pos": np.arange(n)}
        out.append(Sequence(f"g{g}", 0, "FOX", data))
    return out


def test_streamer_streams_consecutive_chunks_and_marks_game_starts() -> None:
    seqs = _toy_sequences([23, 50, 9])
    streamer = ChunkStreamer(seqs, batch=3, seq_len=8, seed=1, mirror_p=0.0)
    chunks = [streamer.next() for _ in range(12)]
    pos = np.concatenate([c["pos"] for c in chunks])  # [T_total, B]
    sid = np.concatenate([c["seq_id"] for c in chunks])
    first = np.concatenate([c["is_first"] for c in chunks])
    assert (first == (pos == 0)).all()
    cont = ~first[1:]
    assert (pos[1:][cont] == pos[:-1][cont] + 1).all() and (sid[1:][cont] == sid[:-1][cont]).all()
    assert first[1:].any()  # rows did move to new games inside chunks


@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_carried_state_equals_full_unroll_and_resets_across_games(core: str) -> None:
    torch.manual_seed(0)
    model = MeleeModel(core=core, hidden=16, head_hidden=8)
    seqs = _toy_sequences([30, 30])
    full = {k: v[:24, None].repeat(2, axis=1) for k, v in seqs[0].data.items() if k != "pos"}
    full["is_first"] = np.zeros((24, 2), bool)
    full["is_first"][0] = True
    full["is_first"][10, 1] = True  # row 1 starts a new game at step 10
    batch = to_torch(full)
    with torch.no_grad():
        ref, _ = model(batch, model.initial_state(2))
        state = model.initial_state(2)
        parts = []
        for a, b in ((0, 8), (8, 16), (16, 24)):  # TBPTT chunks carrying the state
            chunk = {k: v[a:b] for k, v in batch.items()}
            out, state = model(chunk, state)
            parts.append(out["main"])
        assert torch.allclose(torch.cat(parts), ref["main"], atol=1e-5)
        noisy = tuple(torch.randn_like(s) * 3 for s in model.initial_state(2))
        late = {k: v[10:] for k, v in batch.items()}
        late["is_first"] = late["is_first"].clone()
        a, _ = model(late, noisy)
        b, _ = model(late, model.initial_state(2))
        assert torch.allclose(a["main"][:, 1], b["main"][:, 1], atol=1e-6)  # reset: old state is gone
        assert not torch.allclose(a["main"][:, 0], b["main"][:, 0], atol=1e-3)  # no reset: state matters


# -- end to end ----------------------------------------------------------------------------------------
def test_prepare_train_eval_end_to_end(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    config = train(data_dir, run, character="FOX", delay=6, seq_len=16, batch=4, steps=15, hidden=32,
                   progress=False)
    assert config["character"] == "MARTH" and "fell back" in config["character_note"]  # FOX: 2 games only
    assert set(config["train_games"]).isdisjoint(config["heldout_games"]) and config["heldout_games"]
    assert (run / "model.safetensors").is_file() and (run / "memoryless" / "config.json").is_file()
    model, cfg = load_checkpoint(run)
    assert cfg["model"]["core"] == "lstm" and cfg["delay"] == 6
    report = evaluate(run, data_dir)
    assert set(report["rows"]) == {"recurrent (lstm)", "memoryless (none)", "majority", "repeat-previous"}
    for row in report["rows"].values():
        assert np.isfinite(row["nll/total"]) and 0 <= row["acc/main"] <= 1
    assert melee_main(["eval", str(run), "--data", str(data_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["heldout_games"] == config["heldout_games"]
    (run / "model.safetensors").write_bytes(b"garbage")
    assert melee_main(["eval", str(run), "--data", str(data_dir)]) == 1
    assert "corrupt" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert melee_main(["prepare", str(tmp_path / "missing"), str(tmp_path / "o")]) == 1
    assert melee_main(["prepare", str(SLP), str(tmp_path / "o"), "--character", "PIKACHU", "--quiet"]) == 1
    assert melee_main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "replay directory not found" in err and "no games left" in err and "no prepared dataset" in err
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


def test_agent_steps_on_replay_gamestates(tmp_path: Path) -> None:
    melee = pytest.importorskip("melee")
    from recurl.integrations.melee import MeleeAgent

    delay = 4
    agent = MeleeAgent(MeleeModel(hidden=16, head_hidden=8), delay=delay, port=1, opponent_port=2)
    console = melee.Console(is_dolphin=False, path=str(SLP / "peppi_v3.16.slp"), allow_old_version=True)
    assert console.connect()
    actions = []
    for _ in range(30):
        gs = console.step()
        actions.append(agent.step(gs))
    neutral = [a["main"][0] == F.MAIN_NEUTRAL and a["buttons"].sum() == 0 for a in actions[: delay - 1]]
    assert all(neutral) and not agent.first
    assert all(0 <= a["main"][0] < F.NUM_MAIN and a["shoulder"][0] < F.NUM_SHOULDER for a in actions)
