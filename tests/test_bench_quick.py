"""The objective-comparison benchmark's quick mode runs end to end and reports every variant."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def test_compare_objectives_quick(tmp_path):
    import compare_objectives

    out = tmp_path / "objectives.json"
    doc = compare_objectives.main(["--quick", "--variants", "base,refine-only,phygdpo,flow-dpo",
                                   "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
                                   "--plot", str(tmp_path / "curves.png"),
                                   "--set", "train.steps=2", "--set", "rounds=1"])
    saved = json.loads(out.read_text())
    assert saved["summary"].keys() == {"base", "refine-only", "phygdpo", "flow-dpo"}
    for name, s in saved["summary"].items():
        assert len(s["per_round"]) == saved["rounds"] + 1
        assert all(p["mean"] is not None and 0.0 <= p["mean"] <= 1.0 for p in s["per_round"])
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert doc["wall_seconds"] > 0
    # --keep reuses the finished runs (same config) instead of running them again ...
    again = compare_objectives.main(["--quick", "--variants", "base,refine-only,phygdpo,flow-dpo", "--keep",
                                     "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "again.json"),
                                     "--plot", str(tmp_path / "again.png"),
                                     "--set", "train.steps=2", "--set", "rounds=1"])
    assert [r["reused"] for r in again["runs"]] == ["done"] * 4
    assert [r["curve"] for r in again["runs"]] == [r["curve"] for r in doc["runs"]]
    # both judges' curves with Wilson bands, from the same result and store
    import peer_curves

    curves = peer_curves.main([str(out), "--runs-dir", str(tmp_path / "runs"), "--plot", str(tmp_path / "peer.png")])
    assert set(curves["variants"]) == {"base", "refine-only", "phygdpo", "flow-dpo"}
    for name, v in curves["variants"].items():
        assert set(v["judges"]) == {"physics", "synthesis"}, name
        for pts in v["judges"].values():
            assert len(pts) == 2 and all(p["n"] > 0 and p["ci"][0] <= p["rate"] <= p["ci"][1] for p in pts)
    assert curves["variants"]["phygdpo"]["steps_per_round"] == 2
    assert (tmp_path / "peer.png").stat().st_size > 1000
    # ... and refuses a stored run whose config differs, rather than mixing budgets in one table
    with pytest.raises(SystemExit, match="another config"):
        compare_objectives.main(["--quick", "--variants", "phygdpo", "--keep", "--runs-dir", str(tmp_path / "runs"),
                                 "--out", str(tmp_path / "other.json"), "--plot", str(tmp_path / "other.png"),
                                 "--set", "train.steps=3", "--set", "rounds=1"])


def test_cost_profile_on_a_smoke_run(tmp_path):
    import cost_profile

    out = tmp_path / "cost.json"
    # one judge, as the profile's workload was defined (the second, evaluation-only judge is off)
    doc = cost_profile.main(["--preset", "smoke", "--rounds", "1", "--runs-dir", str(tmp_path / "runs"),
                             "--set", "evaluate.judge=false", "--out", str(out)])
    assert json.loads(out.read_text())["runs"] == ["profile"]
    assert [r["round"] for r in doc["rounds"]] == [1]
    # every second of the round is model compute, judge calls or the loop's own overhead
    assert doc["model_share"] + doc["judge_share"] + doc["overhead_share"] == pytest.approx(1.0)
    assert doc["model_share"] > 0.5 and 0.0 <= doc["overhead_share"] < 0.5
    # the stages partition the round (up to the time between them)
    assert 0.9 < sum(doc["stage_share"].values()) <= 1.0 + 1e-9
    # pooling a run with itself leaves every share unchanged
    from agent.runtime import open_store

    store = open_store(tmp_path / "runs")
    try:
        pooled = cost_profile.profile(store, ["profile", "profile"])
    finally:
        store.close()
    assert pooled["overhead_share"] == pytest.approx(doc["overhead_share"])


def _threads_seen(k: int) -> tuple[int, int, str | None]:
    import os

    import torch

    return k, torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


def test_run_jobs_splits_the_cores_and_keeps_the_order(monkeypatch):
    import os

    from _jobs import run_jobs

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    got = run_jobs(_threads_seen, [(k,) for k in range(4)], jobs=2, label=lambda a: f"job {a[0]}")
    want = max(1, (os.cpu_count() or 1) // 2)
    assert got == [(k, want, str(want)) for k in range(4)]
    assert "OMP_NUM_THREADS" not in os.environ  # the caller's environment is left as it was


def test_text_probe_finds_the_swapped_token(tmp_path):
    import text_probe

    doc = text_probe.main(["--scenes", "3", "--out", str(tmp_path / "probe.json")])
    assert doc["summary"].keys() == {"horizontal position", "vertical position", "colour"}
    for s in doc["summary"].values():
        assert s["pairs"] == 3
        assert s["swapped_token"] > 2 * s["other_tokens"] > 0  # the change peaks at the swapped word


def test_position_following_probe_names_every_region_and_tracks_the_ball(tmp_path):
    import position_following as pf

    from reward.world.intent import parse_prompt

    for h in pf.HORIZ:
        for v in pf.VERT:
            prompt = pf.region_prompt("red", h, v)
            assert f"the {v} {h} of the frame" in prompt
            assert parse_prompt(prompt).start == (h, v)  # the judge reads the region the probe meant
    out = tmp_path / "pf.json"
    assert pf.main(["--clips", "1", "--colours", "red", "--threads", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["rows"]) == len(pf.HORIZ) * len(pf.VERT)
    assert all(r["found"] == 1 and r["mean_x"] is not None for r in doc["rows"])  # the shipped base draws a ball
    assert set(doc["summary"]["mean_x_by_horiz"]) == set(pf.HORIZ)


def test_direction_following_probe_pairs_each_scene_with_its_mirror(tmp_path):
    import direction_following as df
    import numpy as np

    from reward.world import physics as P
    from reward.world.judge import PhysicsJudge
    from reward.world import simulator as S
    from reward.world.intent import claimed_direction, parse_prompt

    for family in P.MIRRORED:
        scene = S.sample_scene(family, df.SEED_BASE + 1)
        twin = S.mirror_scene(scene)
        assert {S.direction(scene), S.direction(twin)} == {"left", "right"}
        # the judge reads the direction each prompt names, and the mirror's real video is the exact flip
        assert claimed_direction(parse_prompt(twin.prompts[1])) == S.direction(twin)
        assert (S.render(twin) == S.render(scene)[:, :, ::-1]).all()
    # a clip moving right follows "right", not "left"; an untracked object counts as lost
    judge = PhysicsJudge()
    scene = next(S.sample_scene("slide", s) for s in range(20) if S.direction(S.sample_scene("slide", s)) == "right")
    row = df.clip_row(judge, scene.prompts[1], scene.colours[0], S.render(scene), "right")
    assert row["moved"] == "right" and row["follows"] and not row["lost"] and row["accept"]
    blank = S.render_tracks(scene.bodies, np.full((P.FRAMES, 1, 2), np.nan))
    assert df.clip_row(judge, scene.prompts[1], scene.colours[0], blank, "right")["lost"]
    out = tmp_path / "d.json"
    assert df.main(["--scenes", "1", "--clips", "1", "--threads", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["rows"]) == 3 * len(P.MIRRORED)  # short, named, mirrored-named per scene
    assert doc["summary"]["all"]["named"]["clips"] == 2 * len(P.MIRRORED)


def test_sft_reference_pairs_base_and_trained_on_the_same_clips(tmp_path):
    import sft_reference

    small = ["--steps", "2", "--scenes", "1", "--heldout", "1", "--clips", "1", "--out-dir", str(tmp_path)]
    full = sft_reference.main([*small, "--name", "full"])
    lora = sft_reference.main([*small, "--name", "lora", "--lora-rank", "2", "--lora-targets", "all-linear"])
    assert full["clips"] == full["heldout_prompts"] == 8  # one scene per family, short + motion prompt
    for judge in ("physics", "synthesis"):
        # the same base, prompts and noise: the untrained side is identical whatever is trained
        assert full["result"][judge]["before"] == lora["result"][judge]["before"]
        d = full["result"][judge]["difference"]
        assert d["estimate"] == pytest.approx(full["result"][judge]["after"]["rate"]
                                              - full["result"][judge]["before"]["rate"])
    assert (tmp_path / "lora.json").is_file() and full["sample_steps"] == 2 * 16
    assert lora["result"] != full["result"] or lora["loss_first"] != full["loss_first"]  # a different model trained
    for bad in (["--lora-rank", "2", "--save", str(tmp_path / "x.safetensors")], ["--levels", "0,7"],
                ["--clips", "0"]):
        with pytest.raises(SystemExit) as e:
            sft_reference.main([*small, *bad])
        assert e.value.code == 2
    assert not (tmp_path / "x.safetensors").exists()


def test_random_adapter_keeps_each_modules_update_norm():
    import torch
    from perturb_control import random_like, update_norms

    g = torch.Generator().manual_seed(0)
    state = {"blocks.0.attn1.to_q.lora_A.weight": torch.randn(4, 16, generator=g),
             "blocks.0.attn1.to_q.lora_B.weight": torch.randn(16, 4, generator=g),
             "blocks.0.ffn.net.2.lora_A.weight": torch.randn(4, 32, generator=g),
             "blocks.0.ffn.net.2.lora_B.weight": 3 * torch.randn(16, 4, generator=g)}
    rand = random_like(state, 0.5, torch.Generator().manual_seed(1))
    assert rand.keys() == state.keys()
    assert update_norms(rand, 0.5) == pytest.approx(update_norms(state, 0.5), rel=1e-5)
    hand = float((0.5 * state["blocks.0.attn1.to_q.lora_B.weight"] @ state["blocks.0.attn1.to_q.lora_A.weight"]).norm())
    assert update_norms(state, 0.5)["blocks.0.attn1.to_q"] == pytest.approx(hand)
    assert not torch.allclose(rand["blocks.0.attn1.to_q.lora_A.weight"], state["blocks.0.attn1.to_q.lora_A.weight"])


def test_perturb_control_runs_on_a_saved_adapter(tmp_path):
    import torch
    import perturb_control
    from policy.lora import attach_lora, lora_parameters, save_adapter
    from policy.toy import ToyGenerator

    gen = ToyGenerator.from_checkpoint()
    attach_lora(gen.transformer, rank=2, alpha=2.0)
    with torch.no_grad():
        for p in lora_parameters(gen.transformer):
            p.normal_(0.0, 0.05)
    save_adapter(gen.transformer, tmp_path / "adapter")
    doc = perturb_control.main(["--adapter", str(tmp_path / "adapter"), "--draws", "1", "--heldout", "1",
                                "--clips", "1", "--out", str(tmp_path / "pc.json")])
    (entry,) = doc["results"]
    assert entry["modules"] == 8 and len(entry["random"]) == 1  # 2 blocks × q, k, v, out of self-attention
    assert set(entry["trained"]) == {"physics", "synthesis"}
    for bad in (tmp_path / "missing", tmp_path):  # no folder; a folder that holds no adapter
        assert perturb_control.main(["--adapter", str(bad), "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_sweep_table_rows_and_bad_files(tmp_path, capsys):
    import sweep_table

    results = sorted((ROOT / "bench" / "results" / "sweep").glob("*.json"))
    assert sweep_table.main([str(p) for p in results[:2]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and all(line.startswith("|") for line in out)
    (tmp_path / "other.json").write_text("{}")
    assert sweep_table.main([str(results[0]), str(tmp_path / "other.json")]) == 2
    assert "error:" in capsys.readouterr().err
