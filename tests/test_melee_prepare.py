"""``recurl melee prepare``'s readers: the libmelee fallback for replays peppi-py cannot read, its parity
with peppi-py (identical npz arrays and manifest fields), the content hash of every game, and several
replay folders merged into one dataset (duplicates by content prepared once, npz names unique)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("peppi_py")
pytest.importorskip("melee")

from _shared import SHARED_DATA  # noqa: E402

from recurl.errors import RecurlError  # noqa: E402
from recurl.melee import features as F  # noqa: E402
from recurl.melee import prepare as P  # noqa: E402
from recurl.melee.cli import melee_main  # noqa: E402

SLP, FAILS = SHARED_DATA / "slp", SHARED_DATA / "slp-peppi-fails"
pytestmark = pytest.mark.skipif(not (SLP.is_dir() and FAILS.is_dir()), reason="shared replays not available")

# slp-peppi-fails/README.md: players (port order) and stage; game states as libmelee reads them.
FAIL_GAMES = {
    "libmelee_test_game_1.slp": (["FOX", "FOX"], "YOSHIS_STORY", 1038),
    "slprealtime_200306_2258_Falco_v_Fox_PS.slp": (["FALCO", "FOX"], "POKEMON_STADIUM", 9079),
}
# The smaller shared replays (libmelee reads ~2,600 frames/s; the two largest would take seconds each).
PARITY = ["peppi_ics.slp", "peppi_v3.12.slp", "peppi_v3.13.slp", "peppi_v3.16.slp"]
# Manifest fields only peppi-py knows here (libmelee does not expose timer, items and the end method) or
# that describe the reader rather than the game.
READER_FIELDS = {"reader", "metadata_reader", "metadata_missing", "fallback_reason", "ruleset", "end_method"}


def _games(out: Path) -> dict[str, dict]:
    return {g["file"]: g for g in json.loads((out / "manifest.json").read_text())["games"]}


def _subset(tmp_path: Path, names: list[str], src: Path = SLP) -> Path:
    d = tmp_path / "replays"
    d.mkdir()
    for n in names:
        shutil.copy(src / n, d / n)
    return d


@pytest.mark.parametrize("name", [
    "libmelee_test_game_1.slp",
    pytest.param("slprealtime_200306_2258_Falco_v_Fox_PS.slp", marks=pytest.mark.slow),  # 3-4 s in libmelee
])
def test_peppi_failures_prepare_via_libmelee(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    src = _subset(tmp_path, [name], FAILS)
    report = P.prepare(src, out, progress=False)  # default tournament ruleset: both are tournament games
    assert report.skipped == [] and report.readers == {"libmelee": 1}
    assert f"readers: libmelee 1 (libmelee fallback: {name})" in report.lines()
    chars, stage, frames = FAIL_GAMES[name]
    g = _games(out)[name]
    assert g["reader"] == "libmelee" and "OutOfSpec" in g["fallback_reason"]
    assert [p["character"] for p in g["players"]] == chars and not any(p["cpu"] for p in g["players"])
    assert g["stage_name"] == stage and g["frames"] == frames and g["sha256"] == P.file_sha256(FAILS / name)
    # peppi-py still reads the header, so nothing had to be assumed
    assert g["metadata_reader"] == "libmelee + peppi header" and g["metadata_missing"] == []
    assert g["ruleset"] == {"tournament": True, "violations": [], "assumed": []}
    with np.load(out / g["npz"]) as z:
        assert (np.diff(z["frame"]) == 1).all() and len(z["frame"]) == frames
        for i in range(2):
            assert z[f"p{i}_floats"].shape == (frames, F.NUM_FLOATS) and z[f"p{i}_floats"].dtype == np.float32
            assert np.isfinite(z[f"p{i}_floats"]).all() and np.isfinite(z[f"p{i}_nana"]).all()
            assert z[f"p{i}_main"].max() < F.NUM_MAIN and z[f"p{i}_buttons"].any()
    if name.startswith("slprealtime"):
        assert [p["port"] for p in g["players"]] == [2, 4] and g["end_method"] == "GAME"
        assert g["missing_fields"] == ["hitlag", "velocities"]
    else:
        assert g["missing_fields"] == ["hitlag"] and g["rollback_frames_removed"] == 12


@pytest.fixture(scope="module")
def parity_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The PARITY replays prepared by peppi-py, by libmelee alone, and by the fallback of ``auto``."""
    base = tmp_path_factory.mktemp("parity")
    src = base / "replays"
    src.mkdir()
    for n in PARITY:
        shutil.copy(SLP / n, src / n)
    peppi, lm, fb = base / "peppi", base / "libmelee", base / "fallback"
    assert P.prepare(src, peppi, ruleset="any", reader="peppi", progress=False).readers == {"peppi": 4}
    assert P.prepare(src, lm, ruleset="any", reader="libmelee", progress=False).readers == {"libmelee": 4}
    with pytest.MonkeyPatch.context() as mp:  # peppi-py's frame read fails, its header read still works
        def broken(path: Path) -> P._Game:
            raise RuntimeError("forced peppi failure")
        mp.setattr(P, "_read_peppi", broken)
        assert P.prepare(src, fb, ruleset="any", progress=False).readers == {"libmelee": 4}
    return peppi, lm, fb


def test_libmelee_arrays_equal_peppi(parity_dirs: tuple[Path, Path, Path]) -> None:
    peppi, lm, fb = parity_dirs
    ref = _games(peppi)
    for other in (lm, fb):
        games = _games(other)
        for name in PARITY:
            with np.load(peppi / ref[name]["npz"]) as a, np.load(other / games[name]["npz"]) as b:
                assert set(a) == set(b), name
                for key in a:
                    assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, (name, key)
                    assert np.array_equal(a[key], b[key]), (name, key)


def test_libmelee_manifest_agrees_with_peppi(parity_dirs: tuple[Path, Path, Path]) -> None:
    peppi, lm, fb = parity_dirs
    ref, alone, fallback = _games(peppi), _games(lm), _games(fb)
    for name in PARITY:
        p, a, f = ref[name], alone[name], fallback[name]
        assert set(p) == set(a) == set(f)
        assert {k: v for k, v in a.items() if k not in READER_FIELDS} == \
            {k: v for k, v in p.items() if k not in READER_FIELDS}, name
        # libmelee alone: what it cannot know is listed, and unchecked rules are assumed, not invented
        assert a["reader"] == "libmelee" and a["metadata_missing"] == ["timer", "items", "end_method"]
        assert a["end_method"] is None and {"timer", "items"} <= set(a["ruleset"]["assumed"])
        assert set(a["ruleset"]["violations"]) <= set(p["ruleset"]["violations"])
        # the fallback with peppi-py's header agrees on every field but the reader's own
        assert f["reader"] == "libmelee" and "forced peppi failure" in f["fallback_reason"]
        assert {k: v for k, v in f.items() if k not in {"reader", "metadata_reader", "fallback_reason"}} == \
            {k: v for k, v in p.items() if k not in {"reader", "metadata_reader", "fallback_reason"}}, name
        assert p["reader"] == "peppi" and p["metadata_missing"] == [] and p["fallback_reason"] is None
    # v3.13 is not tournament (1 stock, items on): libmelee alone still sees the stocks
    assert alone["peppi_v3.13.slp"]["ruleset"]["violations"] == ["stocks [1, 1] (needs 4)"]


def test_sha256_is_the_content_hash(tmp_path: Path) -> None:
    src = _subset(tmp_path, ["peppi_v3.12.slp"])
    shutil.copy(src / "peppi_v3.12.slp", src / "renamed copy.slp")
    rep = P.prepare(src, tmp_path / "out", ruleset="any", progress=False)
    games = _games(tmp_path / "out")
    want = hashlib.sha256((SLP / "peppi_v3.12.slp").read_bytes()).hexdigest()
    assert games["peppi_v3.12.slp"]["sha256"] == want and set(games) == {"peppi_v3.12.slp"}
    # the same game under another name in the same folder is prepared once
    assert [(d["file"], d["duplicate_of"], d["sha256"]) for d in rep.duplicates] == \
        [("renamed copy.slp", "peppi_v3.12.slp", want)]
    assert P.file_sha256(SLP / "peppi_v3.13.slp") != want


def _two_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Folder a: game1 (v3.12), fox (v3.16), game1_again (v3.12 again). Folder b: game1 (the same v3.12 under
    the same name), falco_copy (v3.16 under another name), fox (v3.13: same name as a/fox, other game)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for folder, name, src in [(a, "game1.slp", "peppi_v3.12.slp"), (a, "fox.slp", "peppi_v3.16.slp"),
                              (a, "game1_again.slp", "peppi_v3.12.slp"), (b, "game1.slp", "peppi_v3.12.slp"),
                              (b, "falco_copy.slp", "peppi_v3.16.slp"), (b, "fox.slp", "peppi_v3.13.slp")]:
        shutil.copy(SLP / src, folder / name)
    return a, b


def test_two_replay_dirs_merge_into_one_dataset(tmp_path: Path) -> None:
    a, b = _two_dirs(tmp_path)
    out = tmp_path / "out"
    rep = P.prepare([a, b], out, ruleset="any", reader="peppi", progress=False)
    sha = {n: P.file_sha256(SLP / n) for n in ("peppi_v3.12.slp", "peppi_v3.13.slp", "peppi_v3.16.slp")}
    manifest = json.loads((out / "manifest.json").read_text())
    games = manifest["games"]
    assert len(games) == 3 and rep.skipped == [] and manifest["replay_dirs"] == [str(a), str(b)]
    got = {(g["source_dir"], g["source_file"]): (g["sha256"], g["npz"]) for g in games}
    assert got == {(str(a), "game1.slp"): (sha["peppi_v3.12.slp"], "game1.npz"),
                   (str(a), "fox.slp"): (sha["peppi_v3.16.slp"], f"fox-{sha['peppi_v3.16.slp'][:12]}.npz"),
                   (str(b), "fox.slp"): (sha["peppi_v3.13.slp"], f"fox-{sha['peppi_v3.13.slp'][:12]}.npz")}
    assert sorted(p.name for p in out.glob("*.npz")) == sorted(g["npz"] for g in games)  # no name collision
    assert len({g["sha256"] for g in games}) == 3
    # duplicates by content, whatever their name or folder: listed with the file they repeat, never prepared
    dups = {(d["source_dir"], d["source_file"]): d["duplicate_of"] for d in rep.duplicates}
    assert dups == {(str(a), "game1_again.slp"): f"{a}/game1.slp", (str(b), "game1.slp"): f"{a}/game1.slp",
                    (str(b), "falco_copy.slp"): f"{a}/fox.slp"}
    assert manifest["duplicates"] == rep.duplicates
    lines = rep.lines()
    assert f"dup  {b}/falco_copy.slp: same content as {a}/fox.slp (sha256 {sha['peppi_v3.16.slp'][:12]}), " \
           "prepared once" in lines
    assert lines[-1].startswith("3 games, 0 skipped, 3 duplicates skipped, ")
    # the names are stable: the same folders give the same names, and a kept file's name does not depend on
    # the order of the files
    again = P.prepare([a, b], tmp_path / "again", ruleset="any", reader="peppi", progress=False)
    assert [g["npz"] for g in again.games] == [g["npz"] for g in games]
    kept = [{"source_file": g["source_file"]} for g in games]
    hashes = [g["sha256"] for g in games]
    assert P._npz_names(kept[::-1], hashes[::-1]) == [g["npz"][:-4] for g in games][::-1]
    # the other order keeps b's copy of v3.16: the same games, again under unique names
    swapped = P.prepare([b, a], tmp_path / "swapped", ruleset="any", reader="peppi", progress=False)
    assert {g["sha256"] for g in swapped.games} == set(hashes) and len(swapped.duplicates) == 3
    assert len({g["npz"] for g in swapped.games}) == 3


def test_cli_prepare_two_dirs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _two_dirs(tmp_path)
    out = tmp_path / "out"
    assert melee_main(["prepare", str(a), str(b), str(out), "--ruleset", "any", "--reader", "peppi",
                       "--quiet"]) == 0
    assert len(json.loads((out / "manifest.json").read_text())["games"]) == 3
    stdout = capsys.readouterr().out
    assert stdout.count("\ndup  ") == 3 and "3 games, 0 skipped, 3 duplicates skipped" in stdout


@pytest.mark.parametrize("case", ["missing dir", "no replays", "output is a replay dir", "output forgotten"])
def test_cli_prepare_bad_dirs_fail_in_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _two_dirs(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    argv, want = {
        "missing dir": ([a, tmp_path / "missing", out], f"replay directory not found: {tmp_path / 'missing'}"),
        "no replays": ([empty, out], f"no .slp replays in {empty}"),
        "output is a replay dir": ([a, b, a], f"output directory {a} is also a replay directory"),
        "output forgotten": ([a, b], f"output directory {b} holds .slp replays"),
    }[case]
    assert melee_main(["prepare", *map(str, argv), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"recurl: error: {want}"), err
    assert not out.exists()  # nothing written
    with pytest.raises(RecurlError, match="no replay directory given"):
        P.prepare([], out)


def test_unreadable_by_both_readers_and_missing_libmelee(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "replays"
    src.mkdir()
    (src / "notes.slp").write_text("this is not a replay\n")
    data = (SLP / "peppi_v3.12.slp").read_bytes()
    (src / "truncated.slp").write_bytes(data[: len(data) // 2])
    rep = P.prepare(src, tmp_path / "out", ruleset="any", progress=False)
    assert rep.games == [] and len(rep.skipped) == 2
    for s in rep.skipped:
        assert s["reason"].startswith("unreadable (peppi: ") and "; libmelee: " in s["reason"], s
    # without libmelee the fallback is skipped with a reason; a peppi failure is then unreadable
    real = P.importlib.util.find_spec
    monkeypatch.setattr(P.importlib.util, "find_spec", lambda n, *a: None if n == "melee" else real(n, *a))
    shutil.copy(FAILS / "libmelee_test_game_1.slp", src / "fails.slp")
    rep = P.prepare(src, tmp_path / "out2", ruleset="any", progress=False)
    reasons = {s["file"]: s["reason"] for s in rep.skipped}
    assert "OutOfSpec" in reasons["fails.slp"] and "libmelee not installed" in reasons["fails.slp"]
    with pytest.raises(RecurlError, match="unknown reader"):
        P.prepare(src, tmp_path / "o", reader="pepi")
    with pytest.raises(RecurlError, match="no replay reader installed"):
        P.prepare(src, tmp_path / "o", reader="libmelee")
