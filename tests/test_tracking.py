"""Experiment tracking: a smoke run with `log.trackers = ["tensorboard"]` leaves an event file that
holds the per-step training scalars, both judges' per-round held-out success with its bounds, and
the winner-vs-loser grids; a tracker whose library is missing is one clear error."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from agent import loop
from agent.config import load_config
from agent.tracking import frame_grid

SMALL = ["train.steps=3", "data.world.train_scenes_per_family=1", "data.world.heldout_scenes_per_family=1",
         "plan.prompts_per_round=3", "rounds=1"]


def events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = {}, {}
    for f in log_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend(acc.Images(tag))
    return scalars, images


def test_a_tensorboard_run_holds_the_listed_scalars(tmp_path):
    cfg, _ = load_config("smoke", [*SMALL, f"runs_dir='{tmp_path}'", 'log.trackers=["tensorboard"]'])
    loop.prepare_run(cfg, preset="smoke", name="tb")
    loop.execute("tb", cfg)
    scalars, images = events(tmp_path / "tb" / "logs")
    for key in ("loss", "margin", "accuracy", "grad_norm", "lr", "saturated", "t_mean"):
        steps = sorted(s for s, _ in scalars[f"train/{key}"])
        assert steps == [0, 1, 2], key  # one point per optimizer step, x = the global step
    for judge in ("physics", "synthesis"):
        tag = f"eval/heldout/{judge}"
        rounds = dict(scalars[f"{tag}/joint_success"])
        assert sorted(rounds) == [0, 1]
        lo, hi = dict(scalars[f"{tag}/joint_success_ci_low"]), dict(scalars[f"{tag}/joint_success_ci_high"])
        assert all(lo[k] <= rounds[k] <= hi[k] for k in rounds)
        assert any(t.startswith(f"{tag}/category/") for t in scalars)
    assert "round/seconds" in scalars and "round/train_accept_rate" in scalars
    grid = images["train/winner_vs_loser"]
    assert grid and grid[0].step == 1 and grid[0].height > grid[0].width / 16
    # the same curves from the store alone: `agent replay tb --plot`
    res = subprocess.run([sys.executable, "-m", "agent.cli", "replay", "tb", "--runs-dir", str(tmp_path),
                          "--plot", str(tmp_path / "curves.png")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-1000:]
    assert (tmp_path / "curves.png").stat().st_size > 5000


def test_frame_grid_puts_the_winner_above_the_loser():
    w = np.zeros((12, 8, 10, 3), np.uint8)
    l = np.full((12, 8, 10, 3), 200, np.uint8)
    g = frame_grid(w, l, max_frames=4)
    assert g.shape == (8 + 2 + 8, 4 * 10 + 3 * 2, 3)
    assert g[:8, :10].max() == 0 and g[10:, :10].min() == 200


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_missing_tracker_library_is_one_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--preset", "smoke", "--runs-dir", str(tmp_path),
                          "--log-with", "wandb"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: log.trackers has 'wandb'")
    assert not (tmp_path / "phyloop.db").exists()
