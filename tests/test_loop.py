"""The loop end to end on the built-in world (smoke preset), and resume after a failing node."""

from __future__ import annotations

import pytest

from agent import loop
from agent.config import load_config
from agent.graph import STAGES
from agent.nodes import Nodes
from agent.runtime import open_store

SMALL = ["train.steps=2", "data.world.train_scenes_per_family=1", "data.world.heldout_scenes_per_family=1",
         "plan.prompts_per_round=3"]


def start(tmp_path, name="r", extra=()):
    cfg, _ = load_config("smoke", [*SMALL, f"runs_dir='{tmp_path}'", *extra])
    loop.prepare_run(cfg, preset="smoke", name=name)
    return cfg


def counts(store, run):
    rows = {
        "videos": len(store.videos(run)),
        "scores": sum(len(store.scores(v["id"])) for v in store.videos(run)),
        "steps": sum(len(store.train_steps(run, k)) for k in range(0, 10)),
        "rounds": store.completed_rounds(run),
    }
    return rows


def fingerprint(store, run):
    """Everything a rerun must reproduce: prompts used, video hashes, scores."""
    out = []
    for v in store.videos(run):
        s = [(x["judge"], x["sa"], x["pc"], x["accept"]) for x in store.scores(v["id"])]
        out.append((v["id"], v["prompt_text"], v["sha256"], tuple(s)))
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    cfg = start(tmp)
    loop.execute("r", cfg)
    store = open_store(tmp)
    yield cfg, store, tmp
    store.close()


def test_smoke_run_is_consistent(finished):
    cfg, store, _ = finished
    assert store.completed_rounds("r") == [0, 1, 2]
    assert store.get_run("r")["status"] == "done"
    m = cfg.generate.group_size
    n_train = cfg.plan.prompts_per_round
    heldout = len(store.round_prompts("r", 0, "heldout"))
    train_videos = store.videos("r", split="train", kind="generated")
    assert len(train_videos) == cfg.rounds * n_train * m
    eval_videos = store.videos("r", split="heldout", kind="eval")
    assert len(eval_videos) == (cfg.rounds + 1) * heldout * cfg.evaluate.clips_per_prompt
    for v in train_videos + eval_videos:
        assert len(store.scores(v["id"])) == 1
    for k in (1, 2):
        d = store.round_detail("r", k)
        assert d["training"]["summary"] is not None and len(d["training"]["steps"]) == cfg.train.steps
        assert d["evaluations"] and d["adapter"] is not None
        assert set(STAGES) <= set(d["stage_times"])
        assert {"profile:model", "profile:judge"} <= set(d["stage_times"])
    metrics = store.round_metrics("r")
    assert [r["round"] for r in metrics] == [0, 1, 2]
    assert all(r["heldout_joint_success"] is not None for r in metrics)


def test_rerunning_a_finished_run_adds_nothing(finished):
    cfg, store, tmp = finished
    before = counts(store, "r"), fingerprint(store, "r")
    loop.execute("r", cfg, resume=True)
    assert (counts(store, "r"), fingerprint(store, "r")) == before


@pytest.mark.parametrize("stage", ["baseline", *STAGES])
def test_resume_after_a_node_fails(tmp_path, monkeypatch, finished, stage):
    """An exception inside any node, then `--resume`: same rows, same prompts, same scores."""
    _, ref_store, _ = finished
    cfg = start(tmp_path)
    original = getattr(Nodes, stage)
    calls = {"n": 0}
    fail_on_round = 0 if stage == "baseline" else 2

    def flaky(self, state):
        k = state.get("current", state.get("round", 0))
        if stage == "plan":
            k = state["round"] + 1
        if k == fail_on_round and calls["n"] == 0:
            calls["n"] += 1
            original(self, state)  # do the work, then crash before the checkpoint records it
            raise RuntimeError(f"injected failure in {stage}")
        return original(self, state)

    monkeypatch.setattr(Nodes, stage, flaky)
    with pytest.raises(RuntimeError, match="injected"):
        loop.execute("r", cfg)
    store = open_store(tmp_path)
    try:
        assert store.get_run("r")["status"] == "failed"
        loop.execute("r", cfg, resume=True)
        assert counts(store, "r") == counts(ref_store, "r")
        assert [x[1:] for x in fingerprint(store, "r")] == [x[1:] for x in fingerprint(ref_store, "r")]
    finally:
        store.close()


def test_runs_sharing_a_store_keep_their_own_prompt_pools(tmp_path):
    """A second run with a smaller world pool uses its pool, not every world prompt already stored."""
    big = start(tmp_path, "big", ["data.world.heldout_scenes_per_family=2", "data.world.train_scenes_per_family=2",
                                  "rounds=1"])
    small = start(tmp_path, "small", ["rounds=1"])
    assert big.data.world.heldout_scenes_per_family == 2 and small.data.world.heldout_scenes_per_family == 1
    loop.execute("small", small)
    store = open_store(tmp_path)
    try:
        heldout = store.round_prompts("small", 0, "heldout")
        assert len(heldout) == 4  # one scene per family, not the big run's two
        assert all(p["prompt_id"].endswith("-500000:L0") for p in heldout)
        train = {p["prompt_id"] for p in store.round_prompts("small", 1, "train")}
        assert train and all("-0:L0" in pid for pid in train)
    finally:
        store.close()
