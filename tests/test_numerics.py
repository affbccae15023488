"""Numerics inside the loop: non-finite losses are skipped and recorded; a diverging round is
stopped and its adapter restored to the previous round's."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

import policy.objectives as objectives
from agent import loop
from agent.config import load_config
from agent.runtime import open_store
from policy.lora import WEIGHT_NAME

SMALL = ["rounds=1", "data.world.train_scenes_per_family=1", "data.world.heldout_scenes_per_family=1",
         "plan.prompts_per_round=3", "refine.enabled=false"]


def run(tmp_path, steps: int, extra=()):
    cfg, _ = load_config("smoke", [*SMALL, f"train.steps={steps}", f"runs_dir='{tmp_path}'", *extra])
    loop.prepare_run(cfg, preset="smoke", name="n")
    loop.execute("n", cfg)
    return open_store(tmp_path)


def patch_loss(monkeypatch, transform):
    real = objectives.phygdpo
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        loss, diag = real(*args, **kwargs)
        calls["n"] += 1
        return transform(calls["n"], loss), diag

    monkeypatch.setattr(objectives, "phygdpo", wrapped)
    return calls


def test_non_finite_losses_are_skipped_and_recorded(tmp_path, monkeypatch):
    patch_loss(monkeypatch, lambda n, loss: loss * float("nan") if n in (2, 3) else loss)
    store = run(tmp_path, steps=5)
    try:
        steps = store.train_steps("n", 1)
        assert [s["skipped"] for s in steps] == [0, 1, 1, 0, 0]
        assert all("finite" in (s["reason"] or "") for s in steps if s["skipped"])
        assert store.fault_counts("n", 1).get("nonfinite_loss") == 2
        summary = store.round_detail("n", 1)["training"]["summary"]
        assert summary["extra"]["updates"] == 3 and not summary["restored"]
    finally:
        store.close()


def test_diverging_round_restores_the_previous_adapter(tmp_path, monkeypatch):
    # normal for the guard's baseline steps, then the loss explodes for good
    patch_loss(monkeypatch, lambda n, loss: loss * 1e6 if n > 6 else loss)
    store = run(tmp_path, steps=12)
    try:
        summary = store.round_detail("n", 1)["training"]["summary"]
        assert summary["restored"]
        assert store.fault_counts("n", 1).get("diverged_restored") == 1
        run_dir = tmp_path / "n"
        before = load_file(str(run_dir / store.adapter("n", 0)["path"] / WEIGHT_NAME))
        after = load_file(str(run_dir / store.adapter("n", 1)["path"] / WEIGHT_NAME))
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert store.completed_rounds("n") == [0, 1]  # the run goes on
    finally:
        store.close()
