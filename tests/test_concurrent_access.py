"""`agent replay` / `agent show` / `agent runs` while a run writes: no lock errors, only committed rounds."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from agent.cli import main
from store import Store, default_db_path


def test_readers_while_a_run_writes(tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--preset", "smoke", "--name", "w", "--plain",
         "--runs-dir", str(tmp_path), "--set", "data.world.train_scenes_per_family=1",
         "--set", "data.world.heldout_scenes_per_family=1", "--set", "plan.prompts_per_round=3"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reads = 0
    seen_partial = False
    try:
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            if not default_db_path(tmp_path).exists():
                time.sleep(0.2)
                continue
            with Store.open(default_db_path(tmp_path)) as s:
                if s.get_run("w") is None:
                    time.sleep(0.2)
                    continue
                done = s.completed_rounds("w")
                metrics = s.round_metrics("w")  # finished rounds only
                assert [m["round"] for m in metrics] == done
                started = [m["round"] for m in s.round_metrics("w", done_only=False)]
                seen_partial |= len(started) > len(done)
            assert main(["replay", "w", "--runs-dir", str(tmp_path)]) == 0
            out = capsys.readouterr().out
            for k in done:
                assert f"after round {k}/" in out
            assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
            if done:
                assert main(["show", "w", "--round", str(done[-1]), "--runs-dir", str(tmp_path)]) == 0
            capsys.readouterr()
            reads += 1
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert reads >= 3
    assert seen_partial, "never observed a round in progress; the test did not overlap the writer"
