"""The loop end to end on the built-in world (smoke preset), and resume after a failing node."""

from __future__ import annotations

import pytest

from agent import loop
from agent.config import load_config
from agent.graph import STAGES
from agent.nodes import Nodes
from agent.runtime import open_store
from agent.world_data import split_seeds
from store import REFINED_OFFSET
from reward.base import Score
from reward.world.physics import FAMILIES

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
    for v in train_videos:
        assert [x["judge"] for x in store.scores(v["id"])] == ["physics"]  # the training judge only
    for v in eval_videos:  # and the independent evaluation judge beside it
        assert [x["judge"] for x in store.scores(v["id"])] == ["physics", "synthesis"]
    for k in (1, 2):
        d = store.round_detail("r", k)
        assert d["training"]["summary"] is not None and len(d["training"]["steps"]) == cfg.train.steps
        assert d["evaluations"] and d["adapter"] is not None
        assert set(STAGES) <= set(d["stage_times"])
        assert {"profile:model", "profile:judge"} <= set(d["stage_times"])
    metrics = store.round_metrics("r")
    assert [r["round"] for r in metrics] == [0, 1, 2]
    assert all(r["heldout_joint_success"] is not None for r in metrics)


def test_no_text_is_both_trained_on_and_held_out(finished):
    """From the store: no held-out text was ever a training text (as planned or as refined)."""
    _, store, _ = finished
    rows = list(store.db.query("SELECT split, text, original FROM round_prompts WHERE run = 'r'"))
    train = {r[c] for r in rows if r["split"] == "train" for c in ("text", "original")}
    heldout = {r[c] for r in rows if r["split"] in ("heldout", "paraphrase") for c in ("text", "original")}
    seen = {r["original"] for r in rows if r["split"] == "seen"}
    assert train and heldout and seen
    assert not train & heldout
    assert seen <= {p["text"] for p in store.dataset_prompts(source="world-train")}


def test_evaluation_rows_count_every_clip(finished):
    cfg, store, _ = finished
    for k in store.completed_rounds("r"):
        evals = {(e["split"], e["judge"]): e for e in store.round_detail("r", k)["evaluations"]}
        assert {s for s, _ in evals} == {"heldout", "seen", "paraphrase"}
        for (split, judge), e in evals.items():
            clips = store.clip_outcomes("r", k, judge=judge, split=split)
            assert e["n"] == len(clips) and e["n_success"] == sum(c["success"] for c in clips)
            assert e["joint_success"] == pytest.approx(e["n_success"] / e["n"])
            assert sum(v["n"] for v in e["per_level"].values()) == e["n"]


def test_clips_are_judged_against_the_users_prompt(finished):
    """Training clips are made from the refined text and judged against the original prompt."""
    _, store, _ = finished
    rows = list(store.db.query(
        "SELECT rp.text, rp.original, s.judged_prompt FROM scores s JOIN videos v ON v.id = s.video_id "
        "JOIN round_prompts rp ON rp.id = v.round_prompt_id WHERE v.run = 'r' AND v.split = 'train'"))
    assert rows and all(r["judged_prompt"] == r["original"] for r in rows)
    assert any(r["text"] != r["original"] for r in rows)  # some were refined


def test_resolved_training_prompts_fit_their_real_video(finished):
    """`refine.resolve`: a training prompt whose open details were settled names what its winner,
    the real video, does: the judge accepts the real video against the refined text."""
    from reward.world.judge import PhysicsJudge
    from store import read_video

    _, store, tmp = finished
    real = {p["id"]: p["real_video"] for p in store.dataset_prompts()}
    rows = list(store.db.query(
        "SELECT rp.id, rp.text, rp.original, rp.prompt_id FROM round_prompts rp WHERE rp.run = 'r' "
        "AND rp.split = 'train' AND rp.round >= 1"))
    resolved = [r for r in rows if any("resolves what the prompt leaves open" in f["critique"] and f["accepted"]
                                       for f in store.db.query("SELECT * FROM refinements WHERE round_prompt_id = ?",
                                                               [r["id"]]))]
    assert resolved, "no training prompt was resolved"
    from reward.world.intent import claimed_direction, parse_prompt
    from reward.world.physics import region_words
    from reward.world.simulator import direction, sample_scene

    judge = PhysicsJudge()
    for r in resolved:
        assert judge.score(r["text"], read_video(tmp / real[r["prompt_id"]])).accept, r["text"]
        # and it names the real scene's own direction and start region, not one the judge tolerates
        family, seed = r["prompt_id"].split(":")[1].rsplit("-", 1)
        scene = sample_scene(family, int(seed.split(":")[0]))
        intent = parse_prompt(r["text"])
        assert claimed_direction(intent) == direction(scene), r["text"]
        horiz, vert = region_words(scene.bodies[0].x0, scene.bodies[0].y0)
        assert all(w is None or w == m for w, m in zip(intent.start, (horiz, vert))), (r["text"], horiz, vert)


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
        assert len(heldout) == 8  # one scene per family at two levels, not the big run's two scenes
        first = {f: split_seeds(f, True, 1)[0] for f in FAMILIES}
        assert {p["prompt_id"] for p in heldout} == {f"world:{f}-{s}:L{lv}" for f, s in first.items() for lv in (0, 1)}
        train = {p["prompt_id"] for p in store.round_prompts("small", 1, "train")}
        assert train and train <= {f"world:{f}-{split_seeds(f, False, 1)[0]}:L0" for f in FAMILIES}
    finally:
        store.close()


def test_refined_evaluation_is_judged_against_the_original(tmp_path):
    """`evaluate.refine`: clips made from a refined held-out prompt are scored against the user's prompt."""
    cfg = start(tmp_path, "ref", ["rounds=1", "evaluate.refine=true"])
    loop.execute("ref", cfg)
    store = open_store(tmp_path)
    try:
        rows = list(store.db.query(
            "SELECT rp.text, rp.original, s.judged_prompt FROM scores s JOIN videos v ON v.id = s.video_id "
            "JOIN round_prompts rp ON rp.id = v.round_prompt_id WHERE v.run = 'ref' AND v.split = 'heldout' "
            "AND v.prompt_idx >= ?", (REFINED_OFFSET,)))
        assert rows and all(r["judged_prompt"] == r["original"] for r in rows)
        refined = [e for e in store.round_detail("ref", 1)["evaluations"] if e["refine"]]
        assert refined and all(e["split"] == "heldout" for e in refined)
    finally:
        store.close()


def test_compare_and_gap_from_the_command_line(finished, capsys, tmp_path):
    """`agent compare` on a stored run: rounds paired on the same clips, under both judges, and the gap."""
    import json

    from agent.cli import main

    _, _, runs_dir = finished
    out = tmp_path / "cmp.json"
    assert main(["compare", "r", "r", "--round", "2", "--base-round", "0", "--runs-dir", str(runs_dir),
                 "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["judges"]) == {"physics", "synthesis"}
    o = doc["judges"]["physics"]["overall"]
    assert o["n_pairs"] > 0 and len(o["diff"]["ci"]) == 2 and "pp" in capsys.readouterr().out
    assert main(["compare", "r", "r", "--gap", "--runs-dir", str(runs_dir)]) == 0
    assert "gap" in capsys.readouterr().out
    for args, expect in ((["--gap", "--round", "9"], "no finished round 9"), (["--gap", "--round", "0"], "two different"),
                         (["--json", str(out / "x.json")], "cannot write")):
        assert main(["compare", "r", "r", *args, "--runs-dir", str(runs_dir)]) == 2
        assert expect in capsys.readouterr().err


def test_scores_from_before_judged_prompt_are_kept_only_if_judged_against_the_same_text(tmp_path):
    """A stored score without judged_prompt was judged against the text the clip was made from: it is
    kept when that is the text asked for, and judged again when the clip must be judged against the
    user's original prompt instead."""
    from agent.runtime import Runtime
    from agent.stages import Clip, judge_clips
    from store import read_video

    cfg = start(tmp_path, "old", ["rounds=1", "refine.resolve=false"])  # some prompts stay unrefined
    loop.execute("old", cfg)
    store = open_store(tmp_path)
    try:
        rt = Runtime(run="old", config=cfg, store=store)
        prompts = {p["idx"]: p for p in store.round_prompts("old", 1, "train")}
        clips = [Clip(v["id"], v["prompt_idx"], v["group_index"], prompts[v["prompt_idx"]]["text"],
                      read_video(rt.layout.path(v["path"])), judge_text=prompts[v["prompt_idx"]]["original"])
                 for v in store.videos("old", 1, split="train", kind="generated")]
        refined = [c for c in clips if c.text != c.judge_text]
        plain = [c for c in clips if c.text == c.judge_text]
        assert refined and plain
        with store.transaction():  # as a pre-v3 store left them
            store.db.execute("UPDATE scores SET judged_prompt = NULL, rationale = 'old' WHERE video_id IN "
                             f"({','.join('?' * len(clips))})", [c.video_id for c in clips])
        judge_clips(rt, 1, "judge", rt.judge, clips)
        rows = {c.video_id: store.scores(c.video_id)[0] for c in clips}
        assert all(rows[c.video_id]["judged_prompt"] == c.judge_text for c in refined)  # judged again
        assert all(rows[c.video_id]["rationale"] == "old" for c in plain)  # kept
        # a stored evaluation is never re-judged against another pool's prompts
        from agent.stages import evaluate_round
        from agent.world_data import ensure_world_prompts

        other = cfg.model_copy(update={"data": cfg.data.model_copy(update={"world": cfg.data.world.model_copy(
            update={"heldout_scenes_per_family": 2})})})
        ensure_world_prompts(store, other.data.world, tmp_path)
        with pytest.raises(RuntimeError, match="data config changed"):
            evaluate_round(Runtime(run="old", config=other, store=store), 1)
    finally:
        store.close()


def test_replay_trains_on_the_previous_rounds_groups_too(tmp_path):
    """`train.replay_rounds = 1`: each round trains on the round before it as well as its own, no
    further back; a replayed round whose clip file changed is an error, not silent training on it."""
    import json

    from agent.nodes import _round_groups
    from agent.runtime import Runtime

    cfg = start(tmp_path, "replay", ["rounds=3", "train.replay_rounds=1"])
    loop.execute("replay", cfg)
    store = open_store(tmp_path)
    try:
        rows = {r["round"]: r for r in store.db["train_summaries"].rows_where("run = ?", ["replay"])}
        used = {k: rows[k]["groups_used"] + rows[k]["groups_skipped"] for k in (1, 2, 3)}
        p = cfg.plan.prompts_per_round
        assert used == {1: p, 2: 2 * p, 3: 2 * p}  # round 3: rounds 2 and 3, not round 1
        assert set(json.loads(rows[3]["extra_json"])["groups_replayed"]) == {"2"}
        rt = Runtime(run="replay", config=cfg, store=store)
        clip = next(v for v in store.videos("replay", 1, split="train", kind="generated"))
        assert len(_round_groups(rt, 1, {}, replayed=True)[0]) + sum(_round_groups(rt, 1, {})[1].values()) == p
        rt.layout.path(clip["path"]).write_bytes(b"not the clip")
        with pytest.raises(RuntimeError, match="replaying round 1"):
            _round_groups(rt, 1, {}, replayed=True)
    finally:
        store.close()


def _judge_down_for_training_texts(monkeypatch, tmp_path, failing: dict):
    """The analytic judge answers nothing for the round's training clips (in the judge and train
    stages) while ``failing['n']`` calls remain (-1: for good); evaluation is unaffected."""
    from reward.world.judge import PhysicsJudge

    store = open_store(tmp_path)
    train_texts = {p["text"] for p in store.dataset_prompts(source="world-train")}
    store.close()
    assert train_texts
    original = PhysicsJudge.score_batch
    active = {"on": False}

    def score_batch(self, items):
        if active["on"] and any(p in train_texts for p, _ in items) and failing["n"] != 0:
            failing["n"] -= 1
            return [Score.unjudged("judge down") for _ in items]
        return original(self, items)

    def scoped(node):
        def wrapped(self, state):
            active["on"] = True
            try:
                return node(self, state)
            finally:
                active["on"] = False
        return wrapped

    monkeypatch.setattr(PhysicsJudge, "score_batch", score_batch)
    for stage in ("judge", "train"):
        monkeypatch.setattr(Nodes, stage, scoped(getattr(Nodes, stage)))


def test_a_round_with_nothing_to_train_on_stops_the_run_loudly_and_resumes(tmp_path, monkeypatch):
    from agent.nodes import EmptyRoundError

    cfg = start(tmp_path, "empty", ["rounds=1", "refine.enabled=false"])
    failing = {"n": -1}  # down for good
    _judge_down_for_training_texts(monkeypatch, tmp_path, failing)
    with pytest.raises(EmptyRoundError, match="no trainable group after judging its clips again"):
        loop.execute("empty", cfg)
    store = open_store(tmp_path)
    try:
        events = [e for e in store.events("empty", 1) if e["kind"] == "empty_round"]
        assert events and "judging the round's clips again" in events[0]["message"]
        assert store.adapter("empty", 1) is None and store.get_run("empty")["status"] == "failed"
        failing["n"] = 0  # the judge is back: resuming trains the round
        loop.execute("empty", cfg, resume=True)
        used = store.db.execute("SELECT groups_used FROM train_summaries WHERE run = 'empty' AND round = 1").fetchone()
        assert used[0] == cfg.plan.prompts_per_round and store.get_run("empty")["status"] == "done"
    finally:
        store.close()


def test_a_judge_that_comes_back_is_asked_again_and_allow_empty_round_closes_it(tmp_path, monkeypatch):
    cfg = start(tmp_path, "back", ["rounds=1", "refine.enabled=false"])
    failing = {"n": 2}  # both passes of the judge stage fail; the train stage's retry succeeds
    _judge_down_for_training_texts(monkeypatch, tmp_path, failing)
    loop.execute("back", cfg)
    store = open_store(tmp_path)
    try:
        assert [e["kind"] for e in store.events("back", 1)].count("empty_round") == 1
        used = store.db.execute("SELECT groups_used FROM train_summaries WHERE run = 'back' AND round = 1").fetchone()
        assert used[0] == cfg.plan.prompts_per_round
    finally:
        store.close()
    cfg = start(tmp_path, "allowed", ["rounds=1", "refine.enabled=false", "train.allow_empty_round=true"])
    failing["n"] = -1
    loop.execute("allowed", cfg)
    store = open_store(tmp_path)
    try:
        msgs = [e["message"] for e in store.events("allowed", 1) if e["kind"] == "empty_round"]
        assert len(msgs) == 2 and any(m.startswith("closed without training") for m in msgs)
        row = store.db.execute("SELECT groups_used, extra_json FROM train_summaries WHERE run = 'allowed' AND round = 1"
                               ).fetchone()
        assert row[0] == 0 and '"empty_round": true' in row[1]
    finally:
        store.close()


@pytest.mark.parametrize("objective, extra", [("diffusion-nft", ["train.reference='round-start'"]),
                                              ("flow-grpo", [])])
def test_the_peer_baselines_run_in_the_same_loop(tmp_path, objective, extra):
    """DiffusionNFT and Flow-GRPO train in the loop on the same rounds; Flow-GRPO's training clips
    come from the SDE sampler (each with its stored trajectory), the evaluation clips never do."""
    from agent.runtime import read_trajectory

    cfg = start(tmp_path, "peer", ["rounds=1", f"train.objective='{objective}'", *extra])
    loop.execute("peer", cfg)
    store = open_store(tmp_path)
    try:
        summary = next(store.db["train_summaries"].rows_where("run = ?", ["peer"]))
        assert summary["objective"] == objective and summary["groups_used"] > 0
        steps = store.train_steps("peer", 1)
        assert len(steps) == cfg.train.steps and all(s["loss"] is not None for s in steps)
        run_dir = tmp_path / "peer"
        train = store.videos("peer", 1, split="train", kind="generated")
        held = store.videos("peer", 1, split="heldout")
        with_traj = [v for v in train if v["latent_path"] and read_trajectory(run_dir / v["latent_path"])]
        assert len(with_traj) == (len(train) if objective == "flow-grpo" else 0)
        assert not [v for v in held if v["latent_path"]]
    finally:
        store.close()
