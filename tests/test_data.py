"""`agent data`: import (validation, all-or-nothing, split), CoT curation (world and VLM), categories."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import agent.cli as cli
from agent.cli_data import data_app
from agent.curate import CoTAnswer, CurateRecord, WorldCurator
from agent.data import MAX_PROMPT_CHARS, import_dataset, passes_filter, split_of
from reward.world.corrupt import corrupt
from reward.world.simulator import render, sample_scene
from store import Store, default_db_path, read_video, sha256_file, write_video
from tests.vlm_server import LoopbackVLM, answer, truncated

CLIP = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)


@pytest.fixture()
def main():
    return cli.main


@pytest.fixture()
def files(tmp_path):
    """A folder with a lossless .npy clip, an .mp4 clip and a corrupt .mp4."""
    d = tmp_path / "in"
    d.mkdir()
    write_video(d / "a.npy", CLIP)
    write_video(d / "b.mp4", CLIP)
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 4)
    np.save(d / "gray.npy", np.zeros((3, 8, 8), dtype=np.uint8))  # decodes, but is not (T, H, W, 3)
    return d


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def csv_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    return err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


GOOD = [
    {"prompt": "a glass falls off a table and shatters", "video": "a.npy", "category": "breaking"},
    {"prompt": "a ball rolls down a ramp", "video": "b.mp4", "category": "rolling", "split": "heldout"},
    {"prompt": "water is poured into a cup", "category": "pouring", "id": "pour-1"},
]


# ------------------------------------------------------------------ import: happy paths
def test_import_jsonl_copies_videos_and_stores_rows(main, files, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["data", "import", str(jsonl(files / "set.jsonl", GOOD)), "--runs-dir", str(runs)]) == 0
    assert "imported 3 prompts as data set 'set'" in capsys.readouterr().out
    with Store.open(default_db_path(runs)) as s:
        rows = {p["id"]: p for p in s.dataset_prompts()}
    assert set(rows) == {"set:1", "set:2", "set:pour-1"}
    a, b, c = rows["set:1"], rows["set:2"], rows["set:pour-1"]
    assert (a["text"], a["category"], a["real_video"]) == (GOOD[0]["prompt"], "breaking", "datasets/set/1.npy")
    assert np.array_equal(read_video(runs / a["real_video"]), CLIP)  # .npy is copied byte for byte
    assert a["real_sha256"] == sha256_file(runs / a["real_video"]) == sha256_file(files / "a.npy")
    assert b["source"] == "heldout" and b["real_video"] == "datasets/set/2.mp4"
    assert read_video(runs / b["real_video"]).shape == CLIP.shape
    assert c["real_video"] is None and c["real_sha256"] is None and c["curate"] is None
    assert a["source"] == split_of("set:1", 0.2) and c["source"] == split_of("set:pour-1", 0.2)


def test_import_csv_with_clustering(main, files, tmp_path, capsys):
    runs = tmp_path / "runs"
    f = csv_file(files / "clips.csv", "prompt,video,split\n"
                 'a plate falls and shatters on the kitchen floor,a.npy,train\n'
                 '"a bartender pours beer into a glass, slowly",,heldout\n'
                 "a soccer player kicks the ball into the goal,b.mp4,\n")
    assert main(["data", "import", str(f), "--runs-dir", str(runs), "--name", "clips"]) == 0
    out = capsys.readouterr().out
    assert "3 matched with the 'general' list" in out
    with Store.open(default_db_path(runs)) as s:
        rows = {p["id"]: p for p in s.dataset_prompts()}
    assert [rows[f"clips:{i}"]["category"] for i in (1, 2, 3)] == ["breaking", "pouring", "kicking"]
    assert rows["clips:2"]["text"] == "a bartender pours beer into a glass, slowly"
    assert [rows[f"clips:{i}"]["source"] for i in (1, 2)] == ["train", "heldout"]
    assert rows["clips:3"]["source"] == split_of("clips:3", 0.2)


def test_split_is_deterministic_and_matches_the_fraction(files, tmp_path):
    ids = [f"d:{i}" for i in range(4000)]
    first = [split_of(i, 0.2) for i in ids]
    assert first == [split_of(i, 0.2) for i in ids]
    assert abs(Counter(first)["heldout"] / len(ids) - 0.2) < 0.03
    assert all(split_of(i, 0.0) == "train" for i in ids[:50]) and split_of("x", 1.0) == "heldout"
    # a fraction only moves prompts one way: heldout at 0.2 stays heldout at 0.3
    assert all(split_of(i, 0.3) == "heldout" for i, s in zip(ids, first) if s == "heldout")
    rows = [{"prompt": f"prompt number {i}", "category": "x"} for i in range(40)]
    f = jsonl(files / "many.jsonl", rows)
    a = import_dataset(f, tmp_path / "r1", heldout_fraction=0.25)
    b = import_dataset(f, tmp_path / "r2", heldout_fraction=0.25)
    assert [r["source"] for r in a.rows] == [r["source"] for r in b.rows]
    assert 0 < a.counts["heldout"] < 40


# ------------------------------------------------------------------ import: every bad row kind
BAD_ROWS = [
    ("missing prompt", [GOOD[0], {"video": "a.npy"}], "row 2", "prompt is missing"),
    ("empty prompt", [{"prompt": "   "}, GOOD[2]], "row 1", "prompt is missing"),
    ("non-string prompt", [GOOD[2], {"prompt": 42}], "row 2", "must be a string"),
    ("too long", [GOOD[0], {"prompt": "x" * (MAX_PROMPT_CHARS + 1)}], "row 2", "at most 2000"),
    ("unknown field", [GOOD[0], {"prompt": "a cup tips over", "promt": "typo"}], "row 2", "unknown field"),
    ("missing video", [GOOD[0], {"prompt": "a cup tips over", "video": "nope.mp4"}], "row 2", "does not exist"),
    ("corrupt video", [{"prompt": "a cup tips over", "video": "broken.mp4"}], "row 1", "cannot decode video"),
    ("not a colour video", [GOOD[2], {"prompt": "a cup tips over", "video": "gray.npy"}], "row 2",
     "cannot decode video"),
    ("bad video suffix", [{"prompt": "a cup tips over", "video": "set.jsonl"}], "row 1", "must end in"),
    ("duplicate text", [GOOD[0], GOOD[2], {"prompt": "A glass falls off a table  and shatters"}], "row 3",
     "same text as row 1"),
    ("duplicate id", [{"prompt": "one", "id": "k"}, {"prompt": "two", "id": "k"}], "row 2", "duplicate id"),
    ("id clash with row number", [{"prompt": "one"}, {"prompt": "two", "id": "1"}], "row 2", "duplicate id"),
    ("bad id", [{"prompt": "one", "id": "../x"}], "row 1", "id '../x'"),
    ("bad split", [GOOD[0], {"prompt": "two", "split": "test"}], "row 2", "split 'test'"),
    ("not json", [json.dumps(GOOD[0]), "{oops"], "row 2", "not valid JSON"),
    ("not an object", [json.dumps(GOOD[0]), "[1, 2]"], "row 2", "expected a JSON object"),
]


@pytest.fixture()
def stored(main, files, tmp_path):
    """A runs folder whose database already holds one imported data set; yields (runs, db digest)."""
    runs = tmp_path / "runs"
    assert main(["data", "import", str(jsonl(files / "first.jsonl", [{"prompt": "a stone sinks in a pond",
                                                                       "category": "sinking"}])),
                 "--runs-dir", str(runs)]) == 0
    db = default_db_path(runs)
    return runs, db, digest(db)


@pytest.mark.parametrize("kind,rows,row,expect", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_bad_rows_are_rejected_and_nothing_changes(main, files, stored, capsys, kind, rows, row, expect):
    runs, db, before = stored
    capsys.readouterr()
    f = jsonl(files / "set.jsonl", rows)
    assert main(["data", "import", str(f), "--runs-dir", str(runs)]) == 2
    err = one_error(capsys)
    assert "nothing was imported" in err.splitlines()[0]
    assert any(line.strip().startswith(row) and expect in line for line in err.splitlines()[1:]), err
    assert digest(db) == before
    assert not (runs / "datasets" / "set").exists()  # the good rows' videos were not copied either


BAD_FILES = [
    ("empty file", "set.jsonl", b"", "is empty"),
    ("blank file", "set.jsonl", b"\n  \n", "is empty"),
    ("not utf-8", "set.jsonl", b'{"prompt": "caf\xe9"}\n', "not UTF-8 text (line 1"),
    ("csv unknown column", "set.csv", b"prompt,colour\na,b\n", "unknown column(s) 'colour'"),
    ("csv no prompt column", "set.csv", b"video,category\na.npy,x\n", "no 'prompt' column"),
    ("csv header only", "set.csv", b"prompt,video\n", "no rows"),
    ("csv extra field", "set.csv", b"prompt,category\na cup,x,y\n", "row 1 (line 2): 3 fields"),
    ("csv empty prompt", "set.csv", b"prompt,category\n,x\n", "row 1 (line 2): the prompt is missing"),
    ("unknown format", "set.txt", b"a prompt\n", "unknown format"),
]


@pytest.mark.parametrize("kind,name,content,expect", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_rejected(main, files, stored, capsys, kind, name, content, expect):
    runs, db, before = stored
    capsys.readouterr()
    (files / name).write_bytes(content)
    assert main(["data", "import", str(files / name), "--runs-dir", str(runs)]) == 2
    assert expect in one_error(capsys)
    assert digest(db) == before


def test_all_problems_are_listed_up_to_a_cap(main, files, stored, capsys):
    runs, db, before = stored
    capsys.readouterr()
    rows = [{"prompt": ""} for _ in range(30)]
    assert main(["data", "import", str(jsonl(files / "set.jsonl", rows)), "--runs-dir", str(runs)]) == 2
    lines = one_error(capsys).splitlines()
    assert lines[0] == "error: set.jsonl: 30 problems; nothing was imported"
    assert [ln.split(":")[0].strip() for ln in lines[1:21]] == [f"row {i} (line {i})" for i in range(1, 21)]
    assert lines[21].strip() == "… and 10 more"
    assert digest(db) == before


def test_collisions_with_the_store(main, files, stored, capsys):
    runs, db, before = stored
    capsys.readouterr()
    again = jsonl(files / "first.jsonl", [{"prompt": "something new", "category": "x"}])
    assert main(["data", "import", str(again), "--runs-dir", str(runs)]) == 2
    assert "already holds 1 stored prompts" in one_error(capsys)
    dup = jsonl(files / "other.jsonl", [{"prompt": "A stone sinks in a pond", "category": "x"}])
    assert main(["data", "import", str(dup), "--runs-dir", str(runs)]) == 2
    assert "already stored as 'first:1'" in one_error(capsys)
    for bad_name in ("world", "../x"):
        assert main(["data", "import", str(dup), "--runs-dir", str(runs), "--name", bad_name]) == 2
        one_error(capsys)
    assert main(["data", "import", str(dup), "--runs-dir", str(runs), "--heldout-fraction", "1.5"]) == 2
    one_error(capsys)
    fresh = jsonl(files / "fresh.jsonl", [{"prompt": "a kite flies in the wind"}])
    assert main(["data", "import", str(fresh), "--runs-dir", str(runs), "--categories", "nope.txt"]) == 2
    assert "no category list" in one_error(capsys)
    assert digest(db) == before


def test_failed_import_creates_no_database(main, files, tmp_path, capsys):
    runs = tmp_path / "fresh"
    assert main(["data", "import", str(jsonl(files / "set.jsonl", [{"prompt": ""}])), "--runs-dir", str(runs)]) == 2
    one_error(capsys)
    assert not default_db_path(runs).exists()


# ------------------------------------------------------------------ the CoT record
def _record(**kw):
    base = dict(original="a ball drops", entities=["ball (rubber)"], actions=["falls"], forces=["gravity"],
                outcomes=["it bounces"], reasoning="gravity pulls it down", physics_richness=0.7,
                physics_label=1, extended_prompt="a ball drops; gravity pulls it down", curator="t")
    return CurateRecord(**{**base, **kw})


def test_record_validation():
    assert _record().physics_label == 1
    assert CurateRecord.build(**{k: v for k, v in _record().model_dump().items()
                                 if k not in ("physics_richness", "physics_label")},
                              physics_richness=0.59).physics_label == 0
    assert CurateRecord.build(**{k: v for k, v in _record().model_dump().items()
                                 if k not in ("physics_richness", "physics_label")},
                              physics_richness=0.6).physics_label == 1
    for bad in (dict(physics_label=0), dict(physics_richness=1.2, physics_label=1),
                dict(physics_richness=-0.1, physics_label=0), dict(extended_prompt="word " * 101),
                dict(extended_prompt="  "), dict(entities="ball"), dict(extra_field=1)):
        with pytest.raises(ValidationError):
            _record(**bad)
    assert _record(extended_prompt="word " * 100).extended_prompt.count("word") == 100


def test_vlm_answer_accepts_alg1_key_names():
    a = CoTAnswer.model_validate({"parse": {"entities": ["cup"], "actions": ["tips"], "forces": ["gravity"],
                                            "outcomes": ["spills"]}, "reason": "r", "physics_richness": 0.4,
                                  "extended": "a cup tips and spills", "physics_label": 1})
    assert (a.entities, a.reasoning, a.extended_prompt) == (["cup"], "r", "a cup tips and spills")


# ------------------------------------------------------------------ the world curator
@pytest.mark.parametrize("family", ["drop", "projectile", "slide", "collision"])
def test_world_curator_on_real_videos(family):
    scene = sample_scene(family, 7)
    cur = WorldCurator()
    video = render(scene)
    for prompt in scene.prompts:
        rec = cur.curate(prompt, video, family)
        assert rec == cur.curate(prompt, video, family)  # deterministic
        assert rec.original == prompt and rec.physics_label == 1 and 0.6 <= rec.physics_richness <= 1
        assert rec.entities and rec.actions and rec.forces and rec.outcomes and rec.reasoning
        assert rec.vision_check == "the frames match the prompt"
        assert rec.extended_prompt.startswith(prompt.rstrip(".")) and len(rec.extended_prompt.split()) <= 100
        named = {c for c in scene.colours if c in prompt}
        others = {"red", "green", "blue", "yellow", "purple"} - named
        assert not any(c in rec.extended_prompt.split() for c in others)  # no new entities
    # what a real video shows counts: without frames the data is less certain, a broken video is poorer
    text_only = cur.curate(scene.prompts[0], None, family)
    broken = cur.curate(scene.prompts[0], corrupt(scene, "teleport", 0), family)
    clean = cur.curate(scene.prompts[0], video, family)
    assert text_only.vision_check == "no frames"
    assert text_only.physics_richness < clean.physics_richness
    assert broken.physics_richness < clean.physics_richness and broken.details["penalties"]


def test_world_curator_vision_check_names_changes():
    scene = sample_scene("drop", 1)
    rec = WorldCurator().curate(scene.prompts[0], corrupt(scene, "wrong_colour", 0), "drop")
    assert "removed" in rec.vision_check and "added" in rec.vision_check
    assert rec.physics_richness < WorldCurator().curate(scene.prompts[0], render(scene), "drop").physics_richness


def test_curate_world_pool_from_the_cli(main, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["data", "curate", "--dataset", "world", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    with Store.open(default_db_path(runs)) as s:
        rows = s.dataset_prompts()
    assert rows and all(r["id"].startswith("world:") for r in rows)
    assert f"curated {len(rows)} prompts" in out
    for r in rows:
        rec = CurateRecord.model_validate(r["curate"])
        assert rec.original == r["text"] and rec.curator == "world-analytic"
        assert passes_filter(r) == bool(rec.physics_label)
    before = digest(default_db_path(runs))
    assert main(["data", "curate", "--dataset", "world", "--runs-dir", str(runs)]) == 0
    assert f"skipping {len(rows)} prompts" in capsys.readouterr().out
    assert digest(default_db_path(runs)) == before
    assert main(["data", "curate", "--dataset", "world", "--runs-dir", str(runs), "--force"]) == 0
    assert f"curated {len(rows)} prompts" in capsys.readouterr().out
    assert main(["data", "categories", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert all(f in out for f in ("drop", "projectile", "slide", "collision"))


# ------------------------------------------------------------------ the VLM curator
COT = {"entities": ["glass (glass)", "table (wood)", "floor (tile)"], "actions": ["falls", "shatters"],
       "forces": ["gravity", "impact force of the floor"], "outcomes": ["the glass breaks into shards"],
       "vision_check": "added the floor", "reasoning": "Gravity pulls the glass off the edge; the floor's impact "
       "force exceeds the glass's strength, so it shatters.", "physics_richness": 0.82, "physics_label": 0,
       "extended_prompt": "a glass falls off a table, accelerates under gravity and shatters on impact"}


def test_vlm_curation_against_a_loopback_server(main, files, tmp_path, capsys):
    runs = tmp_path / "runs"
    rows = [GOOD[0], GOOD[2]]  # one with a video, one without
    assert main(["data", "import", str(jsonl(files / "set.jsonl", rows)), "--runs-dir", str(runs)]) == 0
    with LoopbackVLM(default=answer(COT)) as srv:
        assert main(["data", "curate", "--dataset", "set", "--runs-dir", str(runs), "--vlm-url", srv.base_url,
                     "--vlm-model", "m", "--n-frames", "3"]) == 0
        requests = list(srv.requests)
    assert "curated 2 prompts: 2 physics-rich" in capsys.readouterr().out
    with Store.open(default_db_path(runs)) as s:
        stored = {p["id"]: p["curate"] for p in s.dataset_prompts()}
    rec = CurateRecord.model_validate(stored["set:1"])
    assert rec.curator == "vlm:test-vlm" and rec.physics_richness == 0.82
    assert rec.physics_label == 1  # derived from the richness, not copied from the model
    assert rec.original == GOOD[0]["prompt"] and rec.vision_check == "added the floor"
    assert stored["set:pour-1"]["vision_check"] == "no frames"
    images = sorted(sum(p.get("type") == "image_url" for p in r["messages"][1]["content"]) for r in requests)
    assert images == [0, 3]
    texts = " ".join(p["text"] for r in requests for p in r["messages"][1]["content"] if p["type"] == "text")
    assert GOOD[0]["prompt"] in texts and GOOD[2]["prompt"] in texts


def test_vlm_failures_leave_prompts_uncurated(main, files, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["data", "import", str(jsonl(files / "set.jsonl", [GOOD[2]])), "--runs-dir", str(runs)]) == 0
    too_long = answer({**COT, "extended_prompt": "word " * 120})
    with LoopbackVLM([truncated(), too_long]) as srv:
        assert main(["data", "curate", "--runs-dir", str(runs), "--vlm-url", srv.base_url]) == 1
        assert len(srv.requests) == 2  # asked once, re-asked once, then given up
    assert "failed set:pour-1" in capsys.readouterr().out
    with Store.open(default_db_path(runs)) as s:
        assert s.dataset_prompts()[0]["curate"] is None


def test_curate_bad_input(main, files, stored, capsys, monkeypatch):
    runs, db, before = stored
    capsys.readouterr()
    cases = [
        ([], "needs a VLM"),
        (["--curator", "magic"], "--curator"),
        (["--dataset", "nope"], "no data set 'nope'"),
        (["--vlm-url", "ftp://x"], "base_urls"),
        (["--vlm-url", "http://127.0.0.1:9/v1", "--api-key-env", "PHYLOOP_TEST_UNSET_KEY"], "PHYLOOP_TEST_UNSET_KEY"),
        (["--preset", "smoke"], "no [judge.vlm]"),
    ]
    monkeypatch.delenv("PHYLOOP_TEST_UNSET_KEY", raising=False)
    for args, expect in cases:
        assert main(["data", "curate", "--runs-dir", str(runs), *args]) == 2, args
        assert expect in one_error(capsys), args
    assert main(["data", "curate", "--runs-dir", str(tmp_runs := runs / "none")]) == 2
    assert "no database" in one_error(capsys)
    assert not tmp_runs.exists()
    assert main(["data", "categories", "--runs-dir", str(runs / "none")]) == 2
    one_error(capsys)
    assert digest(db) == before


def test_passes_filter():
    assert passes_filter({"curate": None}) and passes_filter({})
    assert passes_filter({"curate": {"physics_richness": 0.6}})
    assert not passes_filter({"curate": {"physics_richness": 0.59}})


def test_store_failure_removes_copied_videos(files, stored, monkeypatch):
    runs, db, before = stored

    def boom(self, rows):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Store, "upsert_prompts", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        import_dataset(jsonl(files / "set.jsonl", GOOD), runs)
    assert not (runs / "datasets" / "set").exists()
    assert digest(db) == before


def test_csv_with_bom_and_crlf(files, tmp_path):
    f = files / "win.csv"
    f.write_bytes("\ufeffprompt,category\r\na cup tips over,spilling\r\n\r\na kite flies,flying\r\n".encode("utf-8"))
    report = import_dataset(f, tmp_path / "runs")
    assert [(r["id"], r["text"], r["category"]) for r in report.rows] == [
        ("win:1", "a cup tips over", "spilling"), ("win:2", "a kite flies", "flying")]
