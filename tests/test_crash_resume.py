"""kill -9 of a real `agent run` subprocess at node boundaries and mid-stage, then `--resume`.

After the resume the store must match an uninterrupted run of the same seed: same row
counts, same prompts, same video bytes, same scores; no half-written file is left, and every
stored file matches its hash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from store import Store, default_db_path, verify

ARGS = ["--preset", "smoke", "--name", "r", "--plain",
        "--set", "rounds=1", "--set", "train.steps=4",
        "--set", "data.world.train_scenes_per_family=1", "--set", "data.world.heldout_scenes_per_family=1",
        "--set", "plan.prompts_per_round=3"]

# Node boundaries (just after a node's work, before LangGraph checkpoints it; and just after the
# checkpoint, before the next node starts) and the middle of the long stages.
FAST = ["exit:judge@1", "mid:generate@1", "mid:train@1", "enter:checkpoint@1"]
SLOW = ["exit:baseline@0", "enter:plan@1", "exit:plan@1", "exit:refine@1", "exit:generate@1", "mid:judge@1",
        "exit:train@1", "exit:evaluate@1", "exit:checkpoint@1"]


# Flow-GRPO trains on the SDE trajectories stored beside its clips: killed after generating or while
# training, the resumed run must read them back exactly (the reference kept them in memory)
GRPO_ARGS = [*ARGS, "--set", "train.objective=flow-grpo"]
GRPO_POINTS = ["exit:generate@1", "mid:train@1"]


def agent(runs_dir: Path, *args: str, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PHYLOOP_FAILPOINT", None)
    if failpoint:
        env["PHYLOOP_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-m", "agent.cli", "run", "--runs-dir", str(runs_dir), *args],
                          env=env, capture_output=True, text=True, timeout=600)


def snapshot(runs_dir: Path) -> dict:
    with Store.open(default_db_path(runs_dir)) as s:
        videos = s.videos("r")
        out = {
            "counts": {k: v for k, v in s.table_counts().items() if k not in ("events", "stage_times")},
            "rounds": s.completed_rounds("r"),
            "prompts": [(p["split"], p["idx"], p["text"]) for k in s.completed_rounds("r")
                        for p in s.round_prompts("r", k)],
            "videos": [(v["id"], v["sha256"]) for v in videos],
            "scores": [(v["id"], x["judge"], x["sa"], x["pc"], x["accept"]) for v in videos for x in s.scores(v["id"])],
            "steps": [(t["step"], round(t["loss"], 6) if t["loss"] is not None else None)
                      for t in s.train_steps("r", 1)],
        }
        # every stored file exists, matches its hash, and no temp file was left behind
        run_dir = runs_dir / "r"
        for v in videos:
            assert verify(run_dir / v["path"], v["sha256"]), v["path"]
        for k in s.completed_rounds("r"):
            a = s.adapter("r", k)
            assert a is not None and verify(run_dir / a["path"], a["sha256"])
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name], "temporary files left behind"
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    runs = tmp_path_factory.mktemp("ref")
    res = agent(runs, *ARGS)
    assert res.returncode == 0, res.stderr[-2000:]
    return snapshot(runs)


def crash_and_resume(tmp_path: Path, point: str, reference: dict, args: list[str] = ARGS) -> None:
    res = agent(tmp_path, *args, failpoint=point)
    assert res.returncode == -signal.SIGKILL, f"{point}: expected SIGKILL, got {res.returncode}\n{res.stderr[-2000:]}"
    res = agent(tmp_path, "--resume", "r", "--plain")
    assert res.returncode == 0, res.stderr[-2000:]
    assert snapshot(tmp_path) == reference


@pytest.mark.parametrize("point", FAST)
def test_kill_and_resume(tmp_path, reference, point):
    crash_and_resume(tmp_path, point, reference)


@pytest.mark.slow
@pytest.mark.parametrize("point", SLOW)
def test_kill_and_resume_everywhere(tmp_path, reference, point):
    crash_and_resume(tmp_path, point, reference)


@pytest.fixture(scope="module")
def grpo_reference(tmp_path_factory):
    runs = tmp_path_factory.mktemp("grpo-ref")
    res = agent(runs, *GRPO_ARGS)
    assert res.returncode == 0, res.stderr[-2000:]
    return snapshot(runs)


@pytest.mark.parametrize("point", GRPO_POINTS)
def test_flow_grpo_kill_and_resume(tmp_path, grpo_reference, point):
    crash_and_resume(tmp_path, point, grpo_reference, GRPO_ARGS)
