"""The loop's learning curves under both judges, with intervals: `agent run --rounds R` over several seeds.

For each seed it runs (or, with ``--keep``, reuses) a whole run of a preset (default: the default
preset), then reads from the store, for every round and evaluation split (heldout = texts never
trained on, seen, paraphrase) and judge (the training judge and the independent evaluation judge):

* joint success with its Wilson 95 % interval (every clip counts; unjudged clips fail);
* the paired gain over round 0 on the same clips, with a cluster-bootstrap CI over prompts;
* at the last round, the reward-hacking gap (gain under the training judge − gain under the other);
* over seeds, the stratified paired gain (each seed's run against its own round 0) and the mean,
  sd and t-interval of the per-seed numbers;
* stage times per round (what the evaluation costs).

    python bench/loop_eval.py --seeds 2 --jobs 2                     # the default preset, 5 rounds
    python bench/loop_eval.py --seeds 2 --keep --runs-dir bench/out/loop   # reuse finished runs

Writes ``bench/results/loop_eval.json`` (``--out``) and prints Markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _jobs import run_jobs  # noqa: E402

SPLITS = ("heldout", "seen", "paraphrase")


def run_seed(seed: int, preset: str, rounds: int, runs_dir: Path, extra: list[str], keep: bool) -> dict:
    """One whole run (``loop-s{seed}``); returns its name and wall time."""
    from agent import loop
    from agent.config import dump, load_config
    from agent.runtime import open_store

    cfg, _ = load_config(preset, [*extra, f"rounds={rounds}", f"seed={seed}", f"train.seed={seed}",
                                  f"runs_dir='{runs_dir}'"])
    name = f"loop-s{seed}"
    store = open_store(runs_dir)
    try:
        row = store.get_run(name)
        if row is not None and not keep:
            raise SystemExit(f"run {name!r} already exists under {runs_dir}; pass --keep to reuse it or another "
                             "--runs-dir")
        if row is not None and row["config"] != dump(cfg):
            raise SystemExit(f"--keep: stored run {name!r} has another config")
        state = None if row is None else row["status"]
    finally:
        store.close()
    t0 = time.perf_counter()
    if state is None:
        loop.prepare_run(cfg, preset=preset, name=name)
        loop.execute(name, cfg)
    elif state != "done":
        loop.execute(name, cfg, resume=True)
    return {"seed": seed, "run": name, "wall_seconds": time.perf_counter() - t0 if state != "done" else None}


def lost_clips(store, run: str, k: int, judge: str, training: str) -> dict:
    """Held-out clips ``judge`` accepted at round 0 and rejects at round ``k`` (same prompt and noise):
    how many, per family, how many of them the training judge accepts at round ``k``, and the kind of
    failure ``judge`` names first (the head of its rationale, e.g. 'appearance', 'motion')."""
    def by_key(rnd: int, j: str) -> dict:
        return {(r["prompt_idx"], r["group_index"], r["seed"]): r for r in store.clip_outcomes(run, rnd, judge=j)}

    before, after, trained = by_key(0, judge), by_key(k, judge), by_key(k, training)
    keys = [x for x in before if before[x]["success"] and x in after and not after[x]["success"]]
    kinds: dict[str, int] = {}
    families: dict[str, int] = {}
    for x in keys:
        row = next((s for s in store.scores(after[x]["video_id"]) if s["judge"] == judge), None)
        kind = (row["rationale"] if row else "").split(":", 1)[0].strip() or "?"
        kinds[kind] = kinds.get(kind, 0) + 1
        families[after[x]["category"]] = families.get(after[x]["category"], 0) + 1
    return {"round": k, "n": len(keys), "per_family": families, "failure_kinds": kinds,
            "accepted_by_training_judge": sum(trained[x]["success"] for x in keys if x in trained)}


def collect(runs_dir: Path, runs: list[str]) -> dict:
    """Curves, paired gains and gaps of stored runs (see the module docstring)."""
    from agent.compare import compare_rounds, reward_hacking_gap
    from agent.dashboard import judge_label
    from agent.runtime import open_store
    from agent.stats import mean_ci_over_seeds, wilson

    store = open_store(runs_dir)
    try:
        out: dict = {"runs": {}, "over_seeds": {}}
        training = judge_label(store.get_run(runs[0])["config"])
        last = min(store.completed_rounds(r)[-1] for r in runs)
        for run in runs:
            metrics = store.round_metrics(run)
            curves: dict = {}
            for m in metrics:
                for e in m["evaluations"]:
                    if e["refine"]:
                        continue
                    lo, hi = wilson(e["n_success"], e["n"])
                    curves.setdefault(e["split"], {}).setdefault(e["judge"], []).append(
                        {"round": m["round"], "k": e["n_success"], "n": e["n"], "n_judged": e["n_judged"],
                         "rate": e["joint_success"], "ci": [lo, hi]})
            gains: dict = {}
            for split in curves:
                for k in range(1, last + 1):
                    res = compare_rounds(store, run, 0, k, split=split)
                    for j, d in res["judges"].items():
                        gains.setdefault(split, {}).setdefault(j, []).append(
                            {"round": k, **{key: d["overall"]["diff"][key] for key in ("estimate", "ci", "p")}})
            judges = sorted({j for c in curves.values() for j in c})
            gaps = {j: reward_hacking_gap(store, run, last, train_judge=training, eval_judge=j)
                    for j in judges if j != training}
            lost = {j: lost_clips(store, run, last, j, training) for j in judges if j != training}
            out["runs"][run] = {
                "curves": curves, "gains_vs_round0": gains,
                "gap": {j: {"train_gain": g["train"]["gain"], "eval_gain": g["eval"]["gain"], "gap": g["gap"],
                            "per_category": {c: v["gap"] for c, v in g["per_category"].items()}}
                        for j, g in gaps.items()},
                "lost_by_eval_judge": lost,
                "stage_seconds": {m["round"]: m["stage_times"] for m in metrics},
                "round_seconds": {m["round"]: m["seconds"] for m in metrics},
            }
        for split in SPLITS:
            judges = sorted({j for r in out["runs"].values() for j in r["curves"].get(split, {})})
            for j in judges:
                res = compare_rounds(store, runs, 0, last, split=split, judges=[j])
                o = res["judges"][j]["overall"]
                per_seed = [out["runs"][r]["curves"][split][j] for r in runs]
                out["over_seeds"].setdefault(split, {})[j] = {
                    "stratified_gain": {key: o["diff"][key] for key in ("estimate", "ci", "p", "text")},
                    "per_round_mean": [mean_ci_over_seeds([c[k]["rate"] for c in per_seed])
                                       for k in range(last + 1)],
                }
        out.update({"training_judge": training, "rounds": last})
        return out
    finally:
        store.close()


def tables(doc: dict) -> str:
    from agent.stats import fmt_ci, fmt_diff, fmt_p

    lines = []
    for split in SPLITS:
        judges = sorted({j for r in doc["runs"].values() for j in r["curves"].get(split, {})},
                        key=lambda j: (j != doc["training_judge"], j))
        if not judges:
            continue
        lines += [f"\n**{split}** — joint success per round, Wilson 95 % CI; last column: round {doc['rounds']} − "
                  "round 0, paired on the same clips (cluster bootstrap over prompt texts)\n",
                  "| run | judge | " + " | ".join(f"round {k}" for k in range(doc["rounds"] + 1)) + " | Δ [95 % CI], p |",
                  "|---|---|" + "---|" * (doc["rounds"] + 2)]
        for run, r in doc["runs"].items():
            for j in judges:
                c = r["curves"][split][j]
                g = r["gains_vs_round0"][split][j][-1]
                lines.append(f"| {run} | {j} | " + " | ".join(fmt_ci(x["k"], x["n"]) for x in c[:doc["rounds"] + 1])
                             + f" | {fmt_diff(g['estimate'], g['ci'])}, p {fmt_p(g['p'])} |")
        for j in judges:
            s = doc["over_seeds"][split][j]
            means = " | ".join(f"{100 * m['mean']:.1f} ± {100 * m['sd']:.1f} [{100 * m['ci'][0]:.1f}, "
                               f"{100 * m['ci'][1]:.1f}]" if m["n"] > 1 else "–" for m in s["per_round_mean"])
            lines.append(f"| mean ± sd [t 95 % CI] of seeds | {j} | {means} | {s['stratified_gain']['text']}, "
                         f"p {fmt_p(s['stratified_gain']['p'])} (stratified) |")
    for run, r in doc["runs"].items():
        for j, g in r["gap"].items():
            lines.append(f"\n{run}: gain under {doc['training_judge']} {fmt_diff(g['train_gain']['estimate'], g['train_gain']['ci'])}, "
                         f"under {j} {fmt_diff(g['eval_gain']['estimate'], g['eval_gain']['ci'])}; "
                         f"reward-hacking gap {fmt_diff(g['gap']['estimate'], g['gap']['ci'])}, p {fmt_p(g['gap']['p'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=2, help="runs with seeds 0 … N−1 (default 2)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="config override for every run")
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (the cores are split between them)")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "bench" / "out" / "loop")
    ap.add_argument("--keep", action="store_true", help="reuse (or resume) runs stored under --runs-dir")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "loop_eval.json")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.rounds < 1:
        ap.error("--seeds and --rounds must be ≥ 1")
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    calls = [(s, args.preset, args.rounds, args.runs_dir, args.extra, args.keep) for s in range(args.seeds)]
    done = run_jobs(run_seed, calls, args.jobs, label=lambda c: f"seed {c[0]}")
    doc = collect(args.runs_dir, [d["run"] for d in done])
    doc.update({"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                "date": dt.date.today().isoformat(), "machine": f"{platform.machine()}, {platform.processor()}",
                "preset": args.preset, "overrides": args.extra, "jobs": args.jobs,
                "wall_seconds": {d["run"]: d["wall_seconds"] for d in done}})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=float))
    print(tables(doc))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
