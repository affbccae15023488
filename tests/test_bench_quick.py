"""The objective-comparison benchmark's quick mode runs end to end and reports every variant."""

import json
import sys
from pathlib import Path

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
