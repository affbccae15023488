"""Difficulty-weighted planning vs uniform sampling on the built-in world, same budget.

For each seed, two runs differ only in ``plan.strategy`` (``difficulty`` with τ = 3 vs
``uniform``). Reported: the allocation per category per round (does it shift toward the
category with the lowest score?), and the held-out score of the hardest category (lowest
base score at round 0) at the last round minus round 0, for both strategies.

    python bench/difficulty_sampling.py                # 5 rounds × 2 seeds
    python bench/difficulty_sampling.py --quick        # minutes
    python bench/difficulty_sampling.py --jobs 2       # two runs at a time (one per core)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _jobs import run_jobs  # noqa: E402

QUICK = ["rounds=2", "train.steps=6", "plan.prompts_per_round=4", "generate.group_size=2",
         "data.world.train_scenes_per_family=2", "data.world.heldout_scenes_per_family=2",
         "data.world.paraphrase_scenes_per_family=1", "evaluate.seen_prompts=4",
         "evaluate.clips_per_prompt=1", "generate.toy.steps=6"]


def one(strategy: str, seed: int, args) -> dict:
    from agent import loop
    from agent.config import load_config
    from agent.runtime import open_store

    overrides = [*(QUICK if args.quick else []), *args.overrides, f"plan.strategy='{strategy}'", f"seed={seed}",
                 f"train.seed={seed}", f"runs_dir='{args.runs_dir}'"]
    cfg, _ = load_config(args.preset, overrides)
    name = f"{strategy}-s{seed}"
    loop.prepare_run(cfg, preset=args.preset, name=name)
    t0 = time.perf_counter()
    loop.execute(name, cfg)
    store = open_store(args.runs_dir)
    try:
        rounds = store.completed_rounds(name)
        per_cat = {}
        for k in rounds:
            ev = [e for e in store.round_detail(name, k)["evaluations"]
                  if not e["refine"] and e.get("split", "heldout") == "heldout" and e["judge"] == "physics"][0]
            per_cat[k] = {c: v["score"] for c, v in (ev["per_category"] or {}).items()}
        alloc = {k: {c["category"]: c["allocation"] for c in store.category_stats(name, k)} for k in rounds if k > 0}
    finally:
        store.close()
    return {"strategy": strategy, "seed": seed, "heldout_score": per_cat, "allocation": alloc,
            "seconds": time.perf_counter() - t0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "bench" / "out" / "difficulty")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at once, each in its own process (they share the run database)")
    args = ap.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 2)
    out = args.out or ROOT / "bench" / "results" / f"difficulty_sampling{'_quick' if args.quick else ''}.json"
    if args.runs_dir.exists():
        shutil.rmtree(args.runs_dir)
    t0 = time.perf_counter()
    todo = [(strategy, seed, args) for seed in range(seeds) for strategy in ("difficulty", "uniform")]
    runs = run_jobs(one, todo, args.jobs, label=lambda a: f"{a[0]} seed {a[1]}")

    summary = {}
    for strategy in ("difficulty", "uniform"):
        rs = [r for r in runs if r["strategy"] == strategy]
        gains, shares = [], []
        for r in rs:
            base = r["heldout_score"][0]
            hardest = min(base, key=lambda c: base[c])
            last = max(r["heldout_score"])
            gains.append(r["heldout_score"][last][hardest] - base[hardest])
            total = sum(sum(a.values()) for a in r["allocation"].values())
            shares.append(sum(a.get(hardest, 0) for a in r["allocation"].values()) / total)
        summary[strategy] = {"hardest_gain_mean": statistics.fmean(gains), "hardest_gain": gains,
                             "hardest_share_of_prompts": statistics.fmean(shares)}
    doc = {"benchmark": "difficulty sampling vs uniform", "date": date.today().isoformat(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "command": "python bench/difficulty_sampling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "wall_seconds": time.perf_counter() - t0, "summary": summary, "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print("| strategy | share of prompts on the hardest category | hardest category's held-out score gain |")
    print("|---|---|---|")
    for s, v in summary.items():
        print(f"| {s} | {100 * v['hardest_share_of_prompts']:.0f} % | {v['hardest_gain_mean']:+.3f} |")
    print(f"wrote {out} in {doc['wall_seconds']:.0f}s")
    return doc


if __name__ == "__main__":
    main()
