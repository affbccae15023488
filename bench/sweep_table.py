"""One markdown row per sweep result of ``bench/loop_eval.py`` (the BENCHMARKS tables of issue 20).

    python bench/sweep_table.py bench/results/sweep/*.json

Per file: the overrides, the held-out joint success per round (mean of the seeds) under both
judges, the stratified paired gain of the last round over round 0 with its 95 % CI, and the
reward-hacking gap per seed (training-judge gain − synthesis-judge gain, last round).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def curve(over: dict, split: str, judge: str) -> tuple[str, str]:
    x = over.get(split, {}).get(judge)
    if not x:
        return "—", "—"
    pts = " ".join(f"{100 * r['mean']:.1f}" for r in x["per_round_mean"])
    g = x["stratified_gain"]
    lo, hi = g["ci"]
    return pts, f"{100 * g['estimate']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def row(path: Path, split: str = "heldout") -> str:
    d = json.loads(path.read_text())
    sets = ", ".join(f"`{o}`" for o in d.get("overrides") or []) or "default"
    phys, dphys = curve(d["over_seeds"], split, "physics")
    syn, dsyn = curve(d["over_seeds"], split, "synthesis")
    gaps = []  # loop_eval measures the reward-hacking gap on the held-out split only
    for run in (d["runs"].values() if split == "heldout" else ()):
        gap = (run.get("gap") or {}).get("synthesis", {}).get("gap")
        gaps.append(f"{100 * gap['estimate']:+.1f}" if gap else "—")
    return f"| {sets} ({d['rounds']} rounds) | {phys} | {dphys} | {syn} | {dsyn} | {' / '.join(gaps) or '—'} |"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--split", default="heldout", choices=("heldout", "seen", "paraphrase"))
    args = ap.parse_args(argv)
    rows = []
    for f in args.files:
        try:
            rows.append(row(f, args.split))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: {f} is not a result of bench/loop_eval.py ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
    print("| variant (`--set`) | physics per round (%) | Δ physics | synthesis per round (%) | Δ synthesis | gap per seed |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
