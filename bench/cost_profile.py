"""Cost profile of the loop: share of round time per stage, and the loop's own overhead.

Overhead = round wall time − model compute (generation, encoding, training) − judge calls,
i.e. everything the loop itself adds: planning, SQLite writes, file hashing and I/O, the
dashboard, LangGraph checkpointing. Goal: ≤ 2 % of a round.

    python bench/cost_profile.py                      # runs `agent run --rounds 2` on the built-in world
    python bench/cost_profile.py --run NAME --runs-dir runs   # profile an existing run
    python bench/cost_profile.py --run A --run B --runs-dir DIR   # several runs, pooled
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("plan", "refine", "generate", "judge", "train", "evaluate", "checkpoint")


def stage_seconds(st: dict, stage: str) -> float:
    """A stage's seconds; ``evaluate`` adds its other splits (``evaluate-seen``, ``evaluate+refine``, …)."""
    if stage == "evaluate":
        return sum(v for s, v in st.items() if s == "evaluate" or s.startswith(("evaluate-", "evaluate+")))
    return st.get(stage, 0.0)


def profile(store, runs: list[str]) -> dict:
    """Round time split by stage and by model / judge / overhead, pooled over the rounds of ``runs``."""
    rounds = []
    for run, m in [(r, m) for r in runs for m in store.round_metrics(r)]:
        if m["round"] == 0 or not m["seconds"]:
            continue
        st = m["stage_times"]
        wall = m["seconds"]
        model, judge = st.get("profile:model", 0.0), st.get("profile:judge", 0.0)
        rounds.append({
            "run": run, "round": m["round"], "seconds": wall,
            "stage_share": {s: stage_seconds(st, s) / wall for s in STAGES},
            "model_seconds": model, "judge_seconds": judge,
            "overhead_seconds": wall - model - judge, "overhead_share": (wall - model - judge) / wall,
        })
    total = sum(r["seconds"] for r in rounds)
    over = sum(r["overhead_seconds"] for r in rounds)
    return {"rounds": rounds, "total_seconds": total,
            "stage_share": {s: sum(r["stage_share"][s] * r["seconds"] for r in rounds) / total for s in STAGES},
            "model_share": sum(r["model_seconds"] for r in rounds) / total,
            "judge_share": sum(r["judge_seconds"] for r in rounds) / total,
            "overhead_share": over / total}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", default=None,
                    help="profile this existing run instead of starting one (repeat to pool several)")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "bench" / "out" / "cost")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cost_profile.json")
    args = ap.parse_args(argv)

    from agent import loop
    from agent.config import load_config
    from agent.runtime import open_store

    run = args.run
    if run is None:
        if args.runs_dir.exists():
            shutil.rmtree(args.runs_dir)
        cfg, _ = load_config(args.preset, [f"rounds={args.rounds}", f"runs_dir='{args.runs_dir}'", *args.overrides])
        run = ["profile"]
        loop.prepare_run(cfg, preset=args.preset, name=run[0])
        t0 = time.perf_counter()
        loop.execute(run[0], cfg)
        print(f"run took {time.perf_counter() - t0:.0f}s")
    store = open_store(args.runs_dir)
    try:
        doc = profile(store, run)
    finally:
        store.close()
    doc.update({"benchmark": "cost profile", "date": date.today().isoformat(),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
                           f"{os.environ.get('OMP_NUM_THREADS', 'unset')}",
                "command": "python bench/cost_profile.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "preset": args.preset, "runs": run})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print("| stage | share of round time |\n|---|---|")
    for s, v in doc["stage_share"].items():
        print(f"| {s} | {100 * v:.1f} % |")
    print(f"model compute {100 * doc['model_share']:.1f} %, judge calls {100 * doc['judge_share']:.1f} %, "
          f"loop overhead {100 * doc['overhead_share']:.2f} %")
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
