"""The loop against a VLM server that misbehaves on purpose: it never crashes, every clip is
judged or stored unjudged with its reason, faults are counted, and the API key stays secret."""

from __future__ import annotations

import json
import os

import pytest

from agent import loop
from agent.config import load_config
from agent.runtime import open_store
from tests.vlm_server import (LoopbackVLM, answer, closed_port, empty_choices, hang, judgement, refusal_text, status,
                              truncated)

SECRET = "sk-phyloop-test-5f0c1d2e3b4a"
BASE = ["rounds=1", "train.steps=2", "data.world.train_scenes_per_family=1", "data.world.heldout_scenes_per_family=1",
        "plan.prompts_per_round=2", "refine.enabled=false", "judge.backend='vlm'",
        "judge.vlm.timeout_s=0.5", "judge.vlm.max_retries=1", "judge.vlm.backoff_base_s=0.01",
        "judge.vlm.backoff_max_s=0.2", "judge.vlm.concurrency=4", "judge.vlm.api_key_env='PHYLOOP_TEST_KEY'"]

FAULTS = [hang(1.5), status(429, retry_after=0.05), status(500), status(503), truncated(),
          answer({"semantic_adherence": 9, "physical_commonsense": 3, "verdict": "Accept", "rationale": "x"}),
          answer({"semantic_adherence": 4, "verdict": "Accept"}), refusal_text(), empty_choices()]


def run_against(tmp_path, base_url: str, extra=()):
    cfg, _ = load_config("smoke", [*BASE, f"runs_dir='{tmp_path}'", f"judge.vlm.base_urls=['{base_url}']", *extra])
    loop.prepare_run(cfg, preset="smoke", name="v")
    loop.execute("v", cfg)
    return cfg


def test_faulty_server_run_completes_and_counts_faults(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PHYLOOP_TEST_KEY", SECRET)
    with LoopbackVLM(FAULTS, default=judgement(sa=4, pc=4)) as server:
        run_against(tmp_path, server.base_url)
        assert all(h.get("authorization") == f"Bearer {SECRET}" for h in server.headers)
    store = open_store(tmp_path)
    try:
        assert store.completed_rounds("v") == [0, 1]
        for v in store.videos("v"):
            rows = store.scores(v["id"])
            assert len(rows) == 1
            assert rows[0]["judged"] or rows[0]["error"]
        faults = store.fault_counts("v")
        for kind in ("vlm_timeout", "vlm_rate_limited", "vlm_server_error"):
            assert faults.get(kind, 0) >= 1, faults
        assert any(k in faults for k in ("vlm_malformed", "vlm_out_of_range", "vlm_refusal", "vlm_empty_choices"))
    finally:
        store.close()
    from agent.cli import main

    assert main(["show", "v", "--round", "0", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vlm_timeout" in out and "faults" in out
    # the key never reaches the database, the logs or any file of the run
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_unreachable_server_leaves_everything_unjudged(tmp_path, monkeypatch):
    """Nothing is guessed: every clip stays unjudged; the round with nothing to train on stops the
    run (by default) after its clips were asked again, or closes untrained when allowed."""
    from agent.nodes import EmptyRoundError

    monkeypatch.setenv("PHYLOOP_TEST_KEY", SECRET)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(EmptyRoundError, match="round 1 has no trainable group"):
        run_against(tmp_path / "stop", url)
    store = open_store(tmp_path / "stop")
    try:
        assert store.adapter("v", 1) is None and any(e["kind"] == "empty_round" for e in store.events("v", 1))
        train = {v["id"] for v in store.videos("v", 1, split="train")}
        for v in store.videos("v"):
            (row,) = store.scores(v["id"])
            assert not row["judged"] and "connection" in row["error"]
            assert row["attempts"] == (4 if v["id"] in train else 2)  # two passes (two more in train), no guess
    finally:
        store.close()
    run_against(tmp_path / "allowed", url, ["train.allow_empty_round=true"])
    store = open_store(tmp_path / "allowed")
    try:
        videos = store.videos("v")
        assert videos and all(not store.scores(v["id"])[0]["judged"] for v in videos)
        assert store.fault_counts("v")["vlm_connection"] >= len(videos)
        d = store.round_detail("v", 1)
        assert d["training"]["summary"]["groups_used"] == 0  # no judged losers: nothing trained on
    finally:
        store.close()
