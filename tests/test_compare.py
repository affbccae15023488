"""agent/compare.py on hand-built stores whose answers are known (fast, no model)."""

import io
import json

import pytest
from rich.console import Console

from agent import compare
from store import REFINED_OFFSET, Store

N_PROMPTS, CLIPS = 50, 2  # 100 evaluation clips per round
CATEGORIES = ("drop", "throw")


def _make_store(tmp_path):
    store = Store.open(tmp_path / "x.db")
    store.upsert_prompts([{"id": f"h{i}", "text": f"prompt {i}", "category": CATEGORIES[i % 2],
                           "level": ("short", "physics")[i // 25]} for i in range(N_PROMPTS)])
    return store


def _run(store, name, seed, rounds, *, refined=None):
    """``rounds``: {k: {judge: [outcome per clip]}}, outcome 1 / 0 / None (unjudged)."""
    store.create_run(name, {"seed": seed, "judge": {"threshold": 0.75}}, seed=seed)
    for k, per_judge in rounds.items():
        store.start_round(name, k)
        for offset, outcomes in ((0, per_judge), (REFINED_OFFSET, refined or {})):
            if not outcomes:
                continue
            for i in range(N_PROMPTS):
                store.record_round_prompt(name, k, "heldout", i + offset, text=f"prompt {i}", prompt_id=f"h{i}",
                                          category=CATEGORIES[i % 2])
                for g in range(CLIPS):
                    vid = store.record_video(name, k, "heldout", i + offset, "eval", g, path=f"v/{k}/{i}_{g}.npy",
                                             seed=1000 * seed + 10 * i + g)
                    for judge, outs in outcomes.items():
                        o = outs[i * CLIPS + g]
                        if o is None:
                            store.record_score(vid, judge, {"sa": None, "pc": None, "accept": None, "judged": False,
                                                            "error": "timeout"})
                        else:
                            store.record_score(vid, judge, {"sa": 0.9 if o else 0.3, "pc": 0.9, "accept": bool(o)})
        store.finish_round(name, k)


def _outcomes(ones):
    out = [0] * (N_PROMPTS * CLIPS)
    for i in ones:
        out[i] = 1
    return out


BASE_ONES = set(range(0, 100, 10)) | set(range(2, 100, 10))  # 20 first clips (group 0) of 20 prompts
BASE = _outcomes(BASE_ONES)  # 20 %
PLUS20 = _outcomes(BASE_ONES | set(range(1, 41, 2)))  # + the second clip of prompts 0..19: +20 clips


def test_plus_twenty_points(tmp_path):
    store = _make_store(tmp_path)
    _run(store, "a", 0, {0: {"physics": BASE}, 1: {"physics": BASE}})
    _run(store, "b", 0, {0: {"physics": BASE}, 1: {"physics": PLUS20}})
    res = compare.compare_runs(store, ["a"], ["b"], round=None)
    assert res["round"] == 1 and res["seeds"] == [0]
    o = res["judges"]["physics"]["overall"]
    assert o["n_pairs"] == 100 and o["n_clusters"] == 50
    assert (o["a"]["k"], o["b"]["k"]) == (20, 40)
    assert o["a"]["text"] == "20.0 % [13.3, 28.9]"
    assert o["diff"]["estimate"] == pytest.approx(0.20)
    assert o["diff"]["ci"][0] > 0 and o["diff"]["p"] < 0.01
    assert o["mcnemar"] == {"p": pytest.approx(2 / 2 ** 20), "a_only": 0, "b_only": 20}
    # per category: the +20 clips are all odd clip indices of prompts 0..19, 10 drops and 10 throws
    cats = res["judges"]["physics"]["per_category"]
    assert set(cats) == set(CATEGORIES)
    assert sum(c["n_pairs"] for c in cats.values()) == 100
    assert cats["drop"]["diff"]["estimate"] == pytest.approx(0.2)
    # per level: prompts 0..24 are "short", where all the gain is
    levels = res["judges"]["physics"]["per_level"]
    assert levels["short"]["diff"]["estimate"] == pytest.approx(0.4)
    assert levels["physics"]["diff"]["estimate"] == 0.0
    json.dumps(res, allow_nan=False)  # a plain, strict-JSON result
    buf = io.StringIO()
    compare.render(res, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "+20.0 pp" in text and "judge physics" in text and "McNemar" in text


def test_identical_runs_give_zero_and_p_one(tmp_path):
    store = _make_store(tmp_path)
    _run(store, "a", 3, {0: {"physics": BASE}})
    _run(store, "b", 3, {0: {"physics": BASE}})
    o = compare.compare_runs(store, "a", "b", round=0)["judges"]["physics"]["overall"]
    assert o["diff"]["estimate"] == 0.0 and o["diff"]["ci"] == [0.0, 0.0]
    assert o["diff"]["p"] == 1.0 and o["mcnemar"]["p"] == 1.0


def test_unjudged_clips_count_as_failures(tmp_path):
    store = _make_store(tmp_path)
    _run(store, "a", 0, {0: {"physics": BASE}})
    # B: the same successes, but 10 of A's successful clips unjudged on B's side
    b = list(BASE)
    for i in [i for i in range(50) if BASE[i]]:
        b[i] = None
    _run(store, "b", 0, {0: {"physics": b}})
    o = compare.compare_runs(store, "a", "b", round=0)["judges"]["physics"]["overall"]
    assert o["b"]["k"] == 10 and o["b"]["n"] == 100 and o["b"]["n_unjudged"] == 10 and o["a"]["n_unjudged"] == 0
    assert o["diff"]["estimate"] == pytest.approx(-0.10)


def test_mismatched_seeds_and_missing_things_raise(tmp_path):
    store = _make_store(tmp_path)
    _run(store, "a", 0, {0: {"physics": BASE}})
    _run(store, "b", 1, {0: {"physics": BASE}})
    _run(store, "c", 0, {0: {"physics": BASE}})
    with pytest.raises(ValueError, match="seed"):
        compare.compare_runs(store, ["a"], ["b"], round=0)
    with pytest.raises(ValueError, match="cannot pair 2 run"):
        compare.compare_runs(store, ["a", "b"], ["c"], round=0)
    with pytest.raises(ValueError, match="two runs with seed 0"):
        compare.compare_runs(store, ["a", "c"], ["c", "b"], round=0)
    with pytest.raises(ValueError, match="no run named 'zz'"):
        compare.compare_runs(store, ["zz"], ["a"], round=0)
    with pytest.raises(ValueError, match="has no round 4"):
        compare.compare_runs(store, ["a"], ["c"], round=4)
    with pytest.raises(ValueError, match="judge 'synthesis'"):
        compare.compare_runs(store, ["a"], ["c"], round=0, judges=["synthesis"])


def test_no_pairing_clips_raise(tmp_path):
    store = _make_store(tmp_path)
    _run(store, "a", 0, {0: {"physics": BASE}})
    store.create_run("b", {"seed": 0}, seed=0)
    store.start_round("b", 0)
    store.record_round_prompt("b", 0, "heldout", 0, text="x", prompt_id="h0")
    vid = store.record_video("b", 0, "heldout", 0, "eval", 0, path="v.npy", seed=999_999)  # another noise seed
    store.record_score(vid, "physics", {"sa": 0.9, "pc": 0.9, "accept": True})
    store.finish_round("b", 0)
    with pytest.raises(ValueError, match="no evaluation clips"):
        compare.compare_runs(store, "a", "b", round=0)


def test_several_seeds_are_strata(tmp_path):
    store = _make_store(tmp_path)
    plus10 = _outcomes(BASE_ONES | set(range(1, 21, 2)))
    for seed, gain in ((0, PLUS20), (1, plus10)):
        _run(store, f"a{seed}", seed, {0: {"physics": BASE, "synthesis": BASE}})
        _run(store, f"b{seed}", seed, {0: {"physics": gain, "synthesis": BASE}})
    res = compare.compare_runs(store, ["a1", "a0"], ["b0", "b1"], round=0)  # paired by seed, not by position
    assert res["seeds"] == [0, 1] and [p["b"] for p in res["pairs"]] == ["b0@0", "b1@0"]
    o = res["judges"]["physics"]["overall"]
    assert o["diff"]["estimate"] == pytest.approx(0.15)
    assert o["per_stratum"] == {"0": pytest.approx(0.2), "1": pytest.approx(0.1)}
    assert o["over_seeds"]["n"] == 2 and o["mcnemar"] is None
    assert o["diff"]["ci"][0] > 0
    assert res["judges"]["synthesis"]["overall"]["diff"]["estimate"] == 0.0
    only = compare.compare_runs(store, ["a0", "a1"], ["b0", "b1"], round=0, judges=["synthesis"])
    assert list(only["judges"]) == ["synthesis"]
    buf = io.StringIO()
    compare.render(res, Console(file=buf, width=200))
    assert "per-seed differences" in buf.getvalue()


def test_compare_rounds_and_refined(tmp_path):
    store = _make_store(tmp_path)
    _run(store, "r", 0, {0: {"physics": BASE}, 1: {"physics": BASE}, 2: {"physics": PLUS20}},
         refined={"physics": PLUS20})
    res = compare.compare_rounds(store, "r", 0, 2)
    o = res["judges"]["physics"]["overall"]
    assert o["diff"]["estimate"] == pytest.approx(0.2)
    assert res["a"]["label"] == "round 0" and res["round_a"] == 0 and res["round"] == 2
    # refined prompts of round 2 are as good as the unrefined ones (PLUS20): no gain over round 0 refined
    ref = compare.compare_rounds(store, "r", 0, 2, refined=True)["judges"]["physics"]["overall"]
    assert ref["diff"]["estimate"] == 0.0 and ref["b"]["k"] == 40
    # refined vs unrefined at round 0, through the core
    core = compare.compare_sides(store, [(compare.Side("r", 0), compare.Side("r", 0, refined=True))])
    assert core["judges"]["physics"]["overall"]["diff"]["estimate"] == pytest.approx(0.2)


def test_reward_hacking_gap(tmp_path):
    store = _make_store(tmp_path)
    # the training judge sees +20 pp at round 1; the independent judge sees nothing
    _run(store, "r", 0, {0: {"physics": BASE, "synthesis:gpt": BASE},
                         1: {"physics": PLUS20, "synthesis:gpt": BASE}})
    res = compare.reward_hacking_gap(store, "r", 1, train_judge="physics", eval_judge="synthesis")
    assert res["eval_judge"] == "synthesis:gpt" and res["n_pairs"] == 100
    assert res["train"]["gain"]["estimate"] == pytest.approx(0.2) and res["train"]["gain"]["ci"][0] > 0
    assert res["eval"]["gain"]["estimate"] == 0.0 and res["eval"]["gain"]["p"] == 1.0
    assert res["gap"]["estimate"] == pytest.approx(0.2)
    assert res["gap"]["ci"][0] > 0 and res["gap"]["p"] < 0.01
    assert res["train"]["base"]["k"] == 20 and res["train"]["round"]["k"] == 40
    assert set(res["per_category"]) == set(CATEGORIES)
    json.dumps(res, allow_nan=False)
    buf = io.StringIO()
    compare.render(res, Console(file=buf, width=200))
    assert "possible reward hacking" in buf.getvalue()
    with pytest.raises(ValueError, match="same"):
        compare.reward_hacking_gap(store, "r", 1, train_judge="physics", eval_judge="physics")


def test_bench_paired_table(tmp_path):
    """bench/compare_objectives.py's paired comparisons on a hand-built runs folder (no loop)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import compare_objectives

    from store import default_db_path

    store = Store.open(default_db_path(tmp_path))
    store.upsert_prompts([{"id": f"h{i}", "text": f"prompt {i}", "category": CATEGORIES[i % 2]}
                          for i in range(N_PROMPTS)])
    _run(store, "base-s0", 0, {0: {"physics": BASE}}, refined={"physics": PLUS20})
    _run(store, "phygdpo-s0", 0, {0: {"physics": BASE}, 1: {"physics": PLUS20}})
    _run(store, "sft-s0", 0, {0: {"physics": BASE}, 1: {"physics": BASE}})
    _run(store, "refine-only-s0", 0, {0: {"physics": BASE}}, refined={"physics": PLUS20})
    store.close()
    results = [{"variant": v, "seed": 0, "run": f"{v}-s0"} for v in ("base", "refine-only", "phygdpo", "sft")]
    pairs = compare_objectives.paired(results, tmp_path, n_boot=200)
    assert pairs["base"]["vs_base"] is None and pairs["base"]["round"] == 0
    assert pairs["phygdpo"]["round"] == 1 and pairs["phygdpo"]["vs_phygdpo"] is None
    g = pairs["phygdpo"]["vs_base"]["judges"]["physics"]["overall"]
    assert g["diff"]["estimate"] == pytest.approx(0.2) and g["n_pairs"] == 100
    assert pairs["sft"]["vs_base"]["judges"]["physics"]["overall"]["diff"]["estimate"] == 0.0
    assert pairs["sft"]["vs_phygdpo"]["judges"]["physics"]["overall"]["diff"]["estimate"] == pytest.approx(-0.2)
    assert pairs["base"]["vs_phygdpo"]["judges"]["physics"]["overall"]["diff"]["estimate"] == pytest.approx(-0.2)
    # refine-only reports round 0 with refined prompts, against the same clips as written
    assert pairs["refine-only"]["vs_base"]["judges"]["physics"]["overall"]["diff"]["estimate"] == pytest.approx(0.2)
    json.dumps(pairs, allow_nan=False)
    text = compare_objectives.paired_table(pairs)
    assert "| phygdpo | physics | 1 | 40.0 % [30.9, 49.8] | +20.0 pp" in text
    assert "| base | physics | 0 | 20.0 % [13.3, 28.9] | (itself) |" in text


def test_render_core_result(tmp_path):
    store = _make_store(tmp_path)
    _run(store, "r", 0, {0: {"physics": BASE}}, refined={"physics": PLUS20})
    res = compare.compare_sides(store, [(compare.Side("r", 0), compare.Side("r", 0, refined=True))])
    buf = io.StringIO()
    compare.render(res, Console(file=buf, width=200))
    assert "r@0 → r@0+refined" in buf.getvalue() and "+20.0 pp" in buf.getvalue()
    path = compare.write_json(res, tmp_path / "out" / "c.json")
    assert json.loads(path.read_text())["judges"]["physics"]["overall"]["b"]["k"] == 40
