"""Store: schema round-trips, idempotent upserts, migrations, metrics, secrets, artifacts."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from store import (
    SCHEMA_VERSION,
    RunLayout,
    SchemaTooNew,
    Store,
    StoreError,
    atomic_open,
    atomic_write_bytes,
    atomic_write_text,
    read_video,
    redact,
    remove_stale_temps,
    sha256_dir,
    sha256_file,
    validate_run_name,
    verify,
    write_video,
)
from store.schema import MIGRATIONS, PRIMARY_KEYS, migrate

REPO = Path(__file__).resolve().parents[1]


@dataclass
class FakeScore:
    """Mirrors reward.base.Score's fields (the store must not import reward)."""

    sa: float | None
    pc: float | None
    accept: bool | None
    rationale: str = ""
    raw: str = ""
    judged: bool = True
    error: str | None = None
    details: dict = field(default_factory=dict)


# Train prompt 0 ("fall") gets scores (1, 1) and (0.75, 0.5); prompt 1 ("slide") gets (0.5, 0.25)
# and an unjudged timeout. Held-out prompt 0 gets one eval video.
TRAIN_SCORES = {(0, 0): (1.0, 1.0, True), (0, 1): (0.75, 0.5, False), (1, 0): (0.5, 0.25, False)}


def populate(store: Store, run: str = "r1", round: int = 0, *, bump: float = 0.0, finish: bool = True) -> None:
    """Writes one complete round the way the loop's nodes would (each stage one transaction)."""
    store.create_run(run, {"rounds": 3, "judge": {"backend": "physics"}}, preset="toy", seed=7)
    store.upsert_prompts([
        {"id": "fall-1", "text": "a ball falls", "category": "fall", "level": 0, "source": "world",
         "real_video": "data/fall-1.npy", "real_sha256": "ab" * 32, "curate": {"kept": True}},
        {"id": "slide-1", "text": "a box slides", "category": "slide", "level": 1, "source": "world"},
    ])
    store.start_round(run, round)
    with store.transaction():
        rp0 = store.record_round_prompt(run, round, "train", 0, text="a red ball falls and bounces twice",
                                        original="a ball falls", prompt_id="fall-1", category="fall",
                                        refine_steps=1, critique="name the bounces", similarity=0.8)
        store.record_refinement(rp0, 1, before="a ball falls", after="a red ball falls and bounces twice",
                                critique="name the bounces", similarity=0.8)
        store.record_round_prompt(run, round, "train", 1, text="a box slides", prompt_id="slide-1",
                                  category="slide")
        store.record_round_prompt(run, round, "heldout", 0, text="a ball is thrown", category="projectile")
        store.record_stage_time(run, round, "refine", 0.5)
    with store.transaction():
        for (p, g) in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            store.record_video(run, round, "train", p, "generated", g, path=f"videos/{round}/{p}_{g}.npy",
                               sha256="cd" * 32, seed=100 + g, prompt_text="x", adapter_round=round - 1 if round else None,
                               frames=8, height=16, width=16, fps=8)
        store.record_video(run, round, "train", 0, "real", 0, path="videos/real.npy", frames=8, height=16, width=16)
        store.record_video(run, round, "heldout", 0, "eval", 0, path="videos/eval.npy")
        store.record_stage_time(run, round, "generate", 2.0)
    with store.transaction():
        for (p, g), (sa, pc, acc) in TRAIN_SCORES.items():
            store.record_score(f"{run}:{round}:train:{p}:generated:{g}", "physics",
                               FakeScore(sa, pc, acc, rationale="frame 3 breaks gravity", raw="{}",
                                         details={"laws": ["gravity"]}), attempts=1, seconds=0.01)
        store.record_score(f"{run}:{round}:train:1:generated:1", "physics",
                           FakeScore(None, None, None, judged=False, error="timeout"), attempts=3)
        store.record_event(run, "judge_timeout", round=round, stage="judge", key=f"{run}:{round}:train:1:generated:1",
                           message="timed out after 30 s")
        store.record_stage_time(run, round, "judge", 1.0)
    with store.transaction():
        for step, loss in enumerate([0.7, 0.5, 0.3]):
            store.record_train_step(run, round, step, loss=loss + bump, margin=0.1 * step, accuracy=0.5 + 0.25 * step,
                                    grad_norm=1.0, lr=1e-5, alpha_mean=0.7, gamma_mean=2.9)
        store.record_train_step(run, round, 3, skipped=True, reason="no winner", loss=99.0)
        store.record_train_summary(run, round, objective="phygdpo", steps=4, groups_used=1, groups_skipped=1,
                                   skip_reasons={"no winner": 1}, restored=False, seconds=3.0, extra={"beta": 500})
        store.record_adapter(run, round, path=f"adapters/round_{round:03d}", sha256="ef" * 32, bytes=1234)
        store.record_stage_time(run, round, "train", 3.0)
    with store.transaction():
        store.record_evaluation(run, round, "physics", n=4, joint_success=0.5 + bump, mean_sa=0.8, mean_pc=0.6,
                                accept_rate=0.25, per_category={"fall": {"n": 4, "joint_success": 0.5}})
        store.record_evaluation(run, round, "physics", refine=True, n=4, joint_success=0.75, mean_sa=0.9,
                                mean_pc=0.7, accept_rate=0.5)
        store.record_category_stats(run, round, [
            {"category": "fall", "score": 0.8, "difficulty": 0.2, "weight": 1.82, "allocation": 3, "available": 5},
            {"category": "slide", "score": 0.4, "difficulty": 0.6, "weight": 6.05, "allocation": 5, "available": 5},
        ])
        store.record_stage_time(run, round, "evaluate", 1.5)
    if finish:
        store.finish_round(run, round)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "nested" / "dir" / "phyloop.db")
    yield s
    s.close()


# ---------------------------------------------------------------- opening and schema


def test_open_creates_folders_and_sets_pragmas(tmp_path):
    path = tmp_path / "a" / "b" / "phyloop.db"
    with Store.open(path) as s:
        assert path.exists()
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert s.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert s.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
        assert set(PRIMARY_KEYS) <= set(s.table_counts())


def test_every_table_is_documented_in_schema_docstring():
    import store.schema as schema

    for table in PRIMARY_KEYS:
        assert f"\n{table}" in schema.__doc__, f"table {table} missing from the schema docstring"


def test_migrates_empty_version_0_file(tmp_path):
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()  # an empty file: user_version 0
    with Store.open(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        s.create_run("r1", {})
        assert s.get_run("r1")["name"] == "r1"


def test_migrates_version_1_database_keeping_its_rows(tmp_path):
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = ON")
    assert migrate(conn, MIGRATIONS[:1]) == 1
    conn.execute("INSERT INTO runs (name, config_json) VALUES ('old', '{\"rounds\": 2}')")
    conn.execute("INSERT INTO rounds (run, round, status) VALUES ('old', 0, 'done')")
    conn.commit()
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "videos_by_round" not in indexes
    conn.close()

    with Store.open(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.get_run("old")["config"] == {"rounds": 2}
        assert s.completed_rounds("old") == [0]
        indexes = {r["name"] for r in s.db.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"videos_by_round", "scores_by_judge", "events_by_kind"} <= indexes


def test_migrates_version_2_evaluations_to_the_split_schema(tmp_path):
    """v2 → v3: evaluations gain a split (old rows: 'heldout') and counts; scores gain judged_prompt."""
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = ON")
    assert migrate(conn, MIGRATIONS[:2]) == 2
    conn.execute("INSERT INTO runs (name, config_json) VALUES ('old', '{}')")
    conn.execute("INSERT INTO rounds (run, round, status) VALUES ('old', 0, 'done')")
    conn.execute("INSERT INTO evaluations (run, round, judge, refine, n, joint_success) "
                 "VALUES ('old', 0, 'physics', 0, 128, 0.25)")
    conn.commit()
    conn.close()
    with Store.open(path) as s:
        (ev,) = s.round_detail("old", 0)["evaluations"]
        assert (ev["split"], ev["n"], ev["joint_success"], ev["n_success"]) == ("heldout", 128, 0.25, None)
        assert "judged_prompt" in {c.name for c in s.db["scores"].columns}
        s.record_evaluation("old", 0, "physics", split="seen", n=4, n_success=1, joint_success=0.25, mean_sa=None,
                            mean_pc=None, accept_rate=None)
        assert {e["split"] for e in s.round_detail("old", 0)["evaluations"]} == {"heldout", "seen"}
        with pytest.raises(ValueError, match="evaluation split"):
            s.record_evaluation("old", 0, "physics", split="train", n=1, joint_success=0.0, mean_sa=None,
                                mean_pc=None, accept_rate=None)


def test_refuses_database_from_newer_schema(tmp_path):
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer"):
        Store.open(path)


def test_failed_migration_rolls_back(tmp_path):
    def broken(conn):
        conn.execute("CREATE TABLE half (x)")
        raise RuntimeError("boom")

    conn = sqlite3.connect(tmp_path / "x.db")
    with pytest.raises(RuntimeError, match="boom"):
        migrate(conn, [MIGRATIONS[0], broken])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchone() is None


# ---------------------------------------------------------------- round trip of every table


def test_round_trip_every_table(store):
    populate(store)
    counts = store.table_counts()
    assert all(counts[t] > 0 for t in PRIMARY_KEYS), counts

    run = store.get_run("r1")
    assert run["config"] == {"rounds": 3, "judge": {"backend": "physics"}}
    assert (run["preset"], run["seed"], run["status"]) == ("toy", 7, "created")
    assert [r["name"] for r in store.list_runs()] == ["r1"]
    assert store.list_runs()[0]["rounds_done"] == 1

    d = store.round_detail("r1", 0)
    assert d["round"]["status"] == "done" and d["round"]["seconds"] >= 0
    train0 = next(p for p in d["prompts"] if p["split"] == "train" and p["idx"] == 0)
    assert train0["original"] == "a ball falls" and train0["text"] == "a red ball falls and bounces twice"
    assert train0["prompt_id"] == "fall-1" and train0["category"] == "fall"
    assert [(f["before"], f["after"], f["critique"]) for f in train0["refinements"]] == [
        ("a ball falls", "a red ball falls and bounces twice", "name the bounces")]
    assert {p["split"] for p in d["prompts"]} == {"train", "heldout"}

    videos = {v["id"]: v for v in d["videos"]}
    assert len(videos) == 6
    v = videos["r1:0:train:0:generated:1"]
    assert (v["seed"], v["frames"], v["height"], v["width"], v["path"]) == (101, 8, 16, 16, "videos/0/0_1.npy")
    (s,) = v["scores"]
    assert (s["sa"], s["pc"], s["accept"], s["judged"]) == (0.75, 0.5, 0, 1)
    assert s["rationale"] == "frame 3 breaks gravity" and s["details"] == {"laws": ["gravity"]}
    (u,) = videos["r1:0:train:1:generated:1"]["scores"]
    assert (u["judged"], u["sa"], u["error"], u["attempts"]) == (0, None, "timeout", 3)

    summary = d["training"]["summary"]
    assert summary["skip_reasons"] == {"no winner": 1} and summary["extra"] == {"beta": 500}
    assert [st["step"] for st in d["training"]["steps"]] == [0, 1, 2, 3]
    assert d["training"]["steps"][3]["reason"] == "no winner"
    assert {(e["refine"], e["joint_success"]) for e in d["evaluations"]} == {(0, 0.5), (1, 0.75)}
    assert d["evaluations"][0]["per_category"] == {"fall": {"n": 4, "joint_success": 0.5}}
    assert [c["category"] for c in d["category_stats"]] == ["fall", "slide"]
    assert d["stage_times"] == {"refine": 0.5, "generate": 2.0, "judge": 1.0, "train": 3.0, "evaluate": 1.5}
    assert d["adapter"]["bytes"] == 1234
    assert d["events"][0]["kind"] == "judge_timeout"

    assert store.category_stats("r1") == store.category_stats("r1", 0)
    assert store.category_stats("r1")[1]["allocation"] == 5
    assert store.adapter("r1")["path"] == "adapters/round_000"
    assert len(store.videos("r1", 0, split="train", kind="generated")) == 4
    assert [r["idx"] for r in store.round_prompts("r1", 0, "train")] == [0, 1]
    assert store.scores("r1:0:train:0:generated:0")[0]["sa"] == 1.0
    assert len(store.train_steps("r1", 0)) == 4
    prompt = store.db["prompts"].get("fall-1")
    assert json.loads(prompt["curate_json"]) == {"kept": True} and prompt["level"] == 0


def test_round_detail_of_unknown_round_is_none(store):
    store.create_run("r1", {})
    assert store.round_detail("r1", 5) is None
    assert store.round_metrics("nope") == []


# ---------------------------------------------------------------- idempotency and transactions


def test_same_writes_twice_give_same_rows(store):
    populate(store)
    first = store.table_counts()
    populate(store, bump=0.1)  # a node re-run after a crash, with slightly different numbers
    assert store.table_counts() == first
    m = store.round_metrics("r1")[0]
    assert m["loss"] == pytest.approx(0.6)  # the second write won: (0.8 + 0.6 + 0.4) / 3
    assert m["heldout_joint_success"] == pytest.approx(0.6)
    assert store.get_run("r1")["created_at"] == store.list_runs()[0]["created_at"]


def test_category_stats_write_replaces_the_rounds_set(store):
    populate(store)
    store.record_category_stats("r1", 0, [{"category": "fall", "score": 0.1}])
    assert [c["category"] for c in store.category_stats("r1", 0)] == ["fall"]
    with pytest.raises(ValueError, match="category"):
        store.record_category_stats("r1", 0, [{"cat": "fall"}])


def test_transaction_is_all_or_nothing(store):
    store.create_run("r1", {})
    store.start_round("r1", 0)
    with pytest.raises(RuntimeError, match="crash"):
        with store.transaction():
            store.record_stage_time("r1", 0, "plan", 1.0)
            with store.transaction():  # nested: a savepoint
                store.record_stage_time("r1", 0, "refine", 1.0)
            raise RuntimeError("crash mid-stage")
    assert store.table_counts()["stage_times"] == 0
    with store.transaction():
        store.record_stage_time("r1", 0, "plan", 1.0)
        with pytest.raises(ValueError):
            with store.transaction():
                store.record_stage_time("r1", 0, "refine", 1.0)
                raise ValueError("inner fails")
    assert store.round_detail("r1", 0)["stage_times"] == {"plan": 1.0}


def test_rows_need_their_parents(store):
    store.create_run("r1", {})
    with pytest.raises(StoreError, match="must exist first"):
        store.record_stage_time("r1", 0, "plan", 1.0)  # round 0 never started
    store.start_round("r1", 0)
    with pytest.raises(StoreError, match="videos"):
        store.record_video("r1", 0, "train", 0, "generated", 0, path="x.npy")  # no round prompt 0
    with pytest.raises(ValueError, match="split"):
        store.record_round_prompt("r1", 0, "test", 0, text="x")
    with pytest.raises(ValueError, match="kind"):
        store.record_video("r1", 0, "train", 0, "fake", 0, path="x.npy")
    with pytest.raises(KeyError, match="start_round"):
        store.finish_round("r1", 3)
    with pytest.raises(ValueError, match="run name"):
        store.create_run("../escape", {})
    store.record_round_prompt("r1", 0, "train", 0, text="p")
    for bad in ("/abs/x.npy", "../x.npy"):
        with pytest.raises(ValueError, match="relative"):
            store.record_video("r1", 0, "train", 0, "generated", 0, path=bad)


def test_scores_from_the_real_judge_interface(store):
    """record_score takes reward.base.Score as is (the store itself never imports reward)."""
    from reward.base import Score

    store.create_run("r1", {})
    store.start_round("r1", 0)
    store.record_round_prompt("r1", 0, "train", 0, text="p")
    vid = store.record_video("r1", 0, "train", 0, "generated", 0, path="v.npy")
    store.record_score(vid, "vlm", Score(sa=0.75, pc=1.0, accept=True, rationale="ok", raw="SA: 4",
                                        details={"frames": 8}))
    store.record_score(vid, "flow", Score.unjudged("malformed answer", raw="???"), attempts=2)
    vlm, flow = sorted(store.scores(vid), key=lambda r: r["judge"] != "vlm")
    assert (vlm["sa"], vlm["pc"], vlm["accept"], vlm["raw"], vlm["details"]) == (0.75, 1.0, 1, "SA: 4", {"frames": 8})
    assert (flow["judged"], flow["error"], flow["raw"], flow["attempts"], flow["accept"]) == (
        0, "malformed answer", "???", 2, None)


def test_in_memory_store():
    with Store.open(":memory:") as s:
        populate(s)
        assert s.completed_rounds("r1") == [0] and s.path is None


def test_delete_run_cascades(store):
    populate(store)
    store.delete_run("r1")
    counts = store.table_counts()
    assert all(counts[t] == 0 for t in PRIMARY_KEYS if t != "prompts"), counts
    assert counts["prompts"] == 2  # the dataset is shared by runs


# ---------------------------------------------------------------- read queries


def test_round_metrics_values(store):
    populate(store, round=0)
    (m,) = store.round_metrics("r1")
    # judged generated train videos: (1,1,acc) (0.75,0.5,rej) (0.5,0.25,rej); one unjudged
    assert (m["n_videos"], m["n_judged"], m["n_unjudged"]) == (4, 3, 1)
    assert m["accept_rate"] == pytest.approx(1 / 4)  # of all four: the unjudged one counts as a failure
    assert (m["n_accept"], m["n_joint"]) == (1, 1)
    assert m["mean_sa"] == pytest.approx(0.75)
    assert m["mean_pc"] == pytest.approx(1.75 / 3)
    assert m["mean_score"] == pytest.approx((1.0 + 0.625 + 0.375) / 3)
    assert m["joint_success"] == pytest.approx(1 / 4)
    assert m["heldout_joint_success"] == 0.5 and m["heldout_joint_success_refined"] == 0.75
    assert m["loss"] == pytest.approx(0.5)  # the skipped step's 99.0 is not averaged
    assert (m["n_steps"], m["n_skipped_steps"]) == (4, 1)
    assert m["accuracy"] == pytest.approx(0.75) and m["margin"] == pytest.approx(0.1)
    assert (m["objective"], m["groups_used"], m["groups_skipped"], m["restored"]) == ("phygdpo", 1, 1, False)
    assert m["stage_times"]["train"] == 3.0
    assert store.round_metrics("r1", threshold=0.5)[0]["joint_success"] == pytest.approx(2 / 4)  # of all four
    assert store.round_metrics("r1", judge="vlm")[0]["n_judged"] == 0


def test_unfinished_rounds_are_hidden_unless_asked(store):
    populate(store, round=0)
    populate(store, round=1, finish=False)
    assert [m["round"] for m in store.round_metrics("r1")] == [0]
    assert [m["round"] for m in store.round_metrics("r1", done_only=False)] == [0, 1]
    assert store.completed_rounds("r1") == [0]
    assert store.round_status("r1", 1) == "running" and store.round_status("r1", 9) is None
    assert store.adapter("r1")["round"] == 1 and store.adapter("r1", done_only=True)["round"] == 0
    store.finish_round("r1", 1, status="failed")
    assert store.completed_rounds("r1") == [0]
    store.start_round("r1", 1)  # redo
    populate(store, round=1)
    assert store.completed_rounds("r1") == [0, 1]


def test_latest_category_scores(store):
    assert store.latest_category_scores("r1") == {}
    populate(store, round=0)
    # round 0: fall = mean((1+1)/2, (0.75+0.5)/2) = 0.8125; slide = (0.5+0.25)/2 (unjudged ignored)
    assert store.latest_category_scores("r1") == pytest.approx({"fall": 0.8125, "slide": 0.375})
    store.start_round("r1", 1)
    store.record_round_prompt("r1", 1, "train", 0, text="a ball falls", category="fall")
    vid = store.record_video("r1", 1, "train", 0, "generated", 0, path="v.npy")
    assert store.latest_category_scores("r1") == pytest.approx({"fall": 0.8125, "slide": 0.375})  # not judged yet
    store.record_score(vid, "physics", {"sa": 0.5, "pc": 0.5, "accept": False})
    assert store.latest_category_scores("r1") == {"fall": 0.5}
    assert store.latest_category_scores("r1", before_round=1) == pytest.approx({"fall": 0.8125, "slide": 0.375})
    assert store.latest_category_scores("r1", judge="vlm") == {}


def test_fault_counts_count_each_fault_once(store):
    populate(store)
    for _ in range(3):  # a retried judge stage re-records the same faults
        store.record_event("r1", "judge_timeout", round=0, stage="judge", key="v1")
        store.record_event("r1", "malformed_answer", round=0, stage="judge", key="v2", count=2)
    store.record_event("r1", "judge_timeout", round=1, stage="judge", key="v1")  # round 1 never started: fine
    store.record_event("r1", "resumed", message="resumed after crash")
    assert store.fault_counts("r1") == {"judge_timeout": 3, "malformed_answer": 2, "resumed": 1}
    assert store.fault_counts("r1", round=0) == {"judge_timeout": 2, "malformed_answer": 2}
    assert [e["round"] for e in store.events("r1")][0] == -1


def test_unscored_videos_is_what_a_resumed_judge_owes(store):
    populate(store)
    assert store.unscored_videos("r1", 0, "physics", split="train") == [
        v for v in store.videos("r1", 0, split="train") if v["kind"] == "real"]
    assert len(store.unscored_videos("r1", 0, "vlm")) == 6


# ---------------------------------------------------------------- secrets


def test_redact_removes_keys_and_env_secret_values(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-123456789")
    monkeypatch.setenv("MY_SERVICE_PASS", "hunter2hunter2")
    cfg = {
        "judge": {"api_key": "sk-other-abc", "api_key_env": "OPENAI_API_KEY", "max_tokens": 512,
                  "base_url": "http://h/v1?key=sk-live-123456789", "apiKey": "x1", "hf_token": None},
        "list": ["hunter2hunter2", "plain"], "tuple": ("sk-live-123456789",), "seed": 3, "password": "pw",
    }
    out = redact(cfg, env_names=["MY_SERVICE_PASS"])
    assert out["judge"]["api_key"] == "<redacted>" and out["judge"]["apiKey"] == "<redacted>"
    assert out["judge"]["api_key_env"] == "OPENAI_API_KEY"  # naming the variable is fine
    assert out["judge"]["max_tokens"] == 512 and out["judge"]["hf_token"] is None
    assert out["judge"]["base_url"] == "http://h/v1?key=<redacted>"
    assert out["list"] == ["<redacted>", "plain"] and out["tuple"] == ("<redacted>",)
    assert out["password"] == "<redacted>" and out["seed"] == 3
    assert cfg["judge"]["api_key"] == "sk-other-abc"  # the input is not modified


def test_secrets_never_reach_the_database_file(tmp_path, monkeypatch):
    secret = "sk-test-SECRET-987654321"
    monkeypatch.setenv("GEMINI_API_KEY", secret)
    path = tmp_path / "p.db"
    with Store.open(path) as s:
        s.create_run("r1", {"vlm": {"key": secret, "openai_api_key": "sk-zzz-unrelated"}}, notes=f"used {secret}")
        s.start_round("r1", 0)
        s.record_event("r1", "judge_error", round=0, message=f"401 for key {secret}")
        assert "sk-zzz-unrelated" not in json.dumps(s.get_run("r1"))
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert secret.encode() not in raw and b"sk-zzz-unrelated" not in raw


def test_store_does_not_import_torch():
    code = (
        "import sys, numpy as np, tempfile, os\n"
        "import store\n"
        "from store import Store, write_video, read_video\n"
        "d = tempfile.mkdtemp()\n"
        "s = Store.open(os.path.join(d, 'x.db')); s.create_run('r', {}); s.round_metrics('r'); s.close()\n"
        "v = np.zeros((2, 8, 8, 3), np.uint8)\n"
        "for ext in ('.npy', '.gif', '.mp4'):\n"
        "    write_video(os.path.join(d, 'v' + ext), v); read_video(os.path.join(d, 'v' + ext))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'policy', 'reward', 'agent'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ---------------------------------------------------------------- artifacts


@pytest.mark.parametrize("name", ["run1", "toy-5rounds", "a.b_c-D9", "x" * 64])
def test_valid_run_names(name):
    assert validate_run_name(name) == name


@pytest.mark.parametrize("name, message", [
    ("", "non-empty"), ("a/b", "separator"), ("a\\b", "separator"), ("..", "'..'"), ("a..b", "'..'"),
    (".hidden", "dot"), ("x" * 65, "at most 64"), ("a b", "letters"), ("r:1", "letters"), ("ü", "letters"),
    (None, "non-empty"),
])
def test_invalid_run_names(name, message):
    with pytest.raises(ValueError, match=message) as info:
        validate_run_name(name)
    assert "\n" not in str(info.value)


def test_atomic_write_crash_leaves_no_file_and_no_temp(tmp_path):
    target = tmp_path / "sub" / "weights.bin"
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as f:
            f.write(b"half of it")
            raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []

    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("new but unfinished")
            raise RuntimeError("crash")
    assert target.read_text() == "old"  # readers still see the complete old file
    assert [p.name for p in target.parent.iterdir()] == ["weights.bin"]


def test_remove_stale_temps_after_a_hard_kill(tmp_path):
    """A SIGKILL skips the cleanup handler; the temp it leaves is found and removed later."""
    code = (
        "import os, sys\n"
        "from store.artifacts import atomic_open\n"
        f"with atomic_open({str(tmp_path / 'v' / 'clip.npy')!r}, 'wb') as f:\n"
        "    f.write(b'partial'); f.flush(); os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60)
    left = list((tmp_path / "v").iterdir())
    assert len(left) == 1 and left[0].name != "clip.npy"
    assert remove_stale_temps(tmp_path) == left
    assert list((tmp_path / "v").iterdir()) == []


def test_hashes_and_verify(tmp_path):
    f = tmp_path / "a.bin"
    atomic_write_bytes(f, b"hello")
    assert sha256_file(f) == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert verify(f, sha256_file(f)) and not verify(f, "0" * 64) and not verify(tmp_path / "missing", "0" * 64)

    a, b = tmp_path / "a", tmp_path / "b"
    for root, order in ((a, ["x.txt", "sub/y.txt"]), (b, ["sub/y.txt", "x.txt"])):
        for rel in order:
            atomic_write_text(root / rel, rel)
    assert sha256_dir(a) == sha256_dir(b)  # independent of write order
    assert verify(a, sha256_dir(b))
    atomic_write_text(b / "sub" / "y.txt", "changed")
    assert not verify(a, sha256_dir(b))
    before = sha256_dir(a)
    (a / "x.txt").rename(a / "z.txt")  # same bytes, different name
    assert sha256_dir(a) != before


def _moving_square(t=10, h=32, w=48) -> np.ndarray:
    v = np.full((t, h, w, 3), 30, np.uint8)
    for i in range(t):
        v[i, 8:16, 3 * i:3 * i + 8] = (240, 200, 20)
    return v


def test_video_npy_and_gif_round_trip_exactly(tmp_path):
    v = _moving_square()
    for name in ("clip.npy", "clip.gif"):
        sha = write_video(tmp_path / name, v, fps=8)
        assert verify(tmp_path / name, sha)
        np.testing.assert_array_equal(read_video(tmp_path / name), v)


def test_video_mp4_round_trip_approximately(tmp_path):
    v = _moving_square()
    write_video(tmp_path / "clip.mp4", v, fps=8)
    back = read_video(tmp_path / "clip.mp4")
    assert back.shape == v.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - v).mean() < 3.0
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.npy", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.npy", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 5, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="format"):
        write_video(tmp_path / "a.avi", np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "none.npy")
    assert list(tmp_path.iterdir()) == []


def test_run_layout_paths(tmp_path):
    lay = RunLayout(tmp_path, "r1")
    rel = lay.video_relpath(3, "train", 12, "generated", 1)
    assert rel == "videos/round_003/train/p012_generated_g1.npy"
    assert lay.path(rel) == (tmp_path / "r1" / rel).resolve()
    assert lay.adapter_relpath(3) == "adapters/round_003"
    with pytest.raises(ValueError, match="escapes"):
        lay.path("../other/x.npy")
    with pytest.raises(ValueError):
        RunLayout(tmp_path, "../x")
