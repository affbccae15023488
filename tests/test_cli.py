"""The CLI: --help everywhere, and bad input → one line on stderr, exit 2, the database untouched."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from agent.cli import main

COMMANDS = [[], ["run"], ["runs"], ["show"], ["replay"], ["serve-vlm"], ["world"], ["world", "render"],
            ["world", "judge"], ["world", "sample"], ["data"], ["data", "import"], ["data", "curate"],
            ["data", "categories"], ["eval"], ["compare"], ["export"], ["grid"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "agent")
def test_help(cmd, capsys):
    assert main([*cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out and len(out.splitlines()) > 3


@pytest.fixture()
def db(tmp_path):
    """A runs folder with one stored run; yields (runs_dir, sha256 of the database)."""
    from store import Store, default_db_path

    path = default_db_path(tmp_path)
    with Store.open(path) as s:
        s.create_run("keep", {"rounds": 1}, preset="smoke")
    digest = lambda: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    before = digest()
    yield tmp_path, before, digest


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: "), err
    assert len(err.splitlines()) == 1, err
    return err


BAD_RUNS = [
    (["--rounds", "0"], "at least 1"),
    (["--rounds", "-3"], "at least 1"),
    (["--set", "train.stpes=3"], "train.stpes"),
    (["--set", "generate.backend='gan'"], "generate.backend"),
    (["--set", "nonsense"], "key.subkey=value"),
    (["--preset", "no-such-preset"], "unknown preset"),
    (["--name", "../escape"], "run name"),
    (["--name", "a/b"], "run name"),
    (["--name", "keep"], "already exists"),
    (["--set", "generate.toy.checkpoint='/nope/x.safetensors'"], "does not exist"),
    (["--resume", "missing-run"], "no run named"),
]


@pytest.mark.parametrize("args,expect", BAD_RUNS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_bad_run_input(db, capsys, args, expect):
    runs_dir, before, digest = db
    assert main(["run", "--runs-dir", str(runs_dir), *args]) == 2
    assert expect in one_line_error(capsys)
    assert digest() == before


@pytest.mark.parametrize("args,expect", [
    (["keep", "missing"], "no run named 'missing'"),
    (["keep", "keep", "--split", "train"], "--split must be one of"),
    (["keep", "keep"], "cannot pair"),
    (["keep", "keep", "--gap"], "no finished round"),
    (["keep", ","], "at least one run"),
], ids=["missing run", "bad split", "no config seed", "gap without rounds", "empty side"])
def test_bad_compare_input(db, capsys, args, expect):
    runs_dir, before, digest = db
    assert main(["compare", "--runs-dir", str(runs_dir), *args]) == 2
    assert expect in one_line_error(capsys)
    assert digest() == before


def test_runs_evaluated_before_the_text_split_are_not_continued(db, capsys):
    """A run whose evaluations predate the unseen-text held-out split cannot be resumed or re-evaluated."""
    from store import Store, default_db_path

    runs_dir, _, digest = db
    with Store.open(default_db_path(runs_dir)) as s:
        s.start_round("keep", 0)
        s.record_evaluation("keep", 0, "physics", n=128, joint_success=0.25, mean_sa=None, mean_pc=None,
                            accept_rate=None)  # no counts: written the way a pre-v3 phyloop left it
        s.finish_round("keep", 0)
    before = digest()
    for args in (["run", "--resume", "keep"], ["eval", "keep"]):
        assert main([*args, "--runs-dir", str(runs_dir)]) == 2
        assert "before 2026-12-03" in one_line_error(capsys)
        assert digest() == before


def test_eval_refuses_to_change_the_evaluation_prompts(db, capsys):
    runs_dir, before, digest = db
    for override in ("data.world.heldout_scenes_per_family=1", "seed=3", "evaluate.clips_per_prompt=8"):
        assert main(["eval", "keep", "--set", override, "--runs-dir", str(runs_dir)]) == 2
        assert "only judges and generation settings" in one_line_error(capsys)
    assert digest() == before


def test_bad_preset_files(db, capsys, tmp_path):
    runs_dir, before, digest = db
    bad = tmp_path / "bad.toml"
    for content in (b"rounds = = 2", b"\xff\xfe not utf8", b"[train]\nsteps = 'many'\n", b"rounds = 0\n"):
        bad.write_bytes(content)
        assert main(["run", "--runs-dir", str(runs_dir), "--preset", str(bad)]) == 2
        one_line_error(capsys)
    assert digest() == before


def test_inspection_of_missing_runs(db, capsys):
    runs_dir, before, digest = db
    assert main(["show", "nope", "--runs-dir", str(runs_dir)]) == 2
    assert "no run named" in one_line_error(capsys)
    assert main(["replay", "nope", "--runs-dir", str(runs_dir)]) == 2
    one_line_error(capsys)
    assert main(["runs", "--runs-dir", str(runs_dir / "empty")]) == 2
    one_line_error(capsys)
    assert digest() == before


def test_world_tools(tmp_path, capsys):
    out = tmp_path / "drop.npy"
    assert main(["world", "render", "drop", "3", "--out", str(out)]) == 0
    assert out.is_file() and np.load(out).dtype == np.uint8
    prompt = capsys.readouterr().out.splitlines()[1].split(": ", 1)[1]
    assert main(["world", "judge", str(out), prompt]) == 0
    assert "verdict Accept" in capsys.readouterr().out
    # bad input
    assert main(["world", "render", "spin", "0", "--out", str(out)]) == 2
    assert "unknown scenario family" in one_line_error(capsys)
    assert main(["world", "judge", str(tmp_path / "none.mp4"), "x"]) == 2
    one_line_error(capsys)
    corrupt = tmp_path / "bad.mp4"
    corrupt.write_bytes(b"\x00not a video" * 10)
    assert main(["world", "judge", str(corrupt), "a red ball is dropped"]) == 2
    assert "cannot read video" in one_line_error(capsys)
    assert main(["world", "judge", str(out), "  "]) == 2
    one_line_error(capsys)


def test_missing_model_directory(db, capsys):
    runs_dir, before, digest = db
    args = ["run", "--runs-dir", str(runs_dir), "--preset", "wan2.1-1.3b",
            "--set", "generate.wan.model='/no/such/wan-model'"]
    assert main(args) == 2
    assert "not found" in one_line_error(capsys)
    assert digest() == before


def test_very_long_prompt_is_refused(tmp_path, capsys):
    video = tmp_path / "v.npy"
    assert main(["world", "render", "drop", "0", "--out", str(video)]) == 0
    capsys.readouterr()
    assert main(["world", "judge", str(video), "a red ball is dropped " * 500]) == 2
    assert "characters" in one_line_error(capsys)
    assert main(["world", "sample", "x" * 10_000, "--out", str(tmp_path / "s.npy")]) == 2
    assert "characters" in one_line_error(capsys)
