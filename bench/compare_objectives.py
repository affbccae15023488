"""Objective comparison on the built-in world: same prompts, same budget, several seeds each.

Variants (all on the default preset unless overridden):
  base            the base model, no training, no refinement (round 0 of every run)
  refine-only     the base model with prompt refinement at inference (round 0, refined prompts)
  sft / rwr / flow-dpo / phygdpo / gdpo-full    the objectives of policy/objectives.py
  diffusion-nft   the peer baseline DiffusionNFT (v_old = the round-start policy), same samples per step
  flow-grpo       the peer baseline Flow-GRPO (SDE rollouts, clipped ratio on stored steps), same samples per step
  phygdpo-no-pgr  PhyGDPO with α = γ = 1 (no physics-guided rewarding)
  phygdpo-full-copy   PhyGDPO with a full-copy reference instead of LoRA-SR
  phygdpo-distil  generate with refined prompts, train on the original prompts

For every trained variant and seed it runs the whole loop (`agent run`) and records held-out
joint success per round and wall time per round, then writes
``bench/results/objectives[_quick].json``, a learning-curve plot ``bench/objectives[_quick].png``
and prints two Markdown tables for BENCHMARKS.md: the learning curves (mean ± sd over seeds, with
the t-based 95 % CI of the mean in the JSON), and a paired table (``agent/compare.py``): each
variant's last round against the base model on the very same held-out clips (round 0 of the same
run: same prompts, same noise), and against PhyGDPO (paired by seed), with Wilson CIs, paired
differences with cluster-bootstrap CIs over prompts, and p-values; several seeds are strata.

    python bench/compare_objectives.py                 # full: 5 rounds × 3 seeds (hours on 2 cores)
    python bench/compare_objectives.py --quick         # minutes: tiny budget, 1 seed (used by a test)
    python bench/compare_objectives.py --jobs 2        # two runs at a time (one per core)
    python bench/compare_objectives.py --keep          # reuse finished runs in --runs-dir, resume the rest
    python bench/compare_objectives.py --preset wan2.1-1.3b --variants phygdpo,flow-dpo   # on GPUs
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _jobs import run_jobs, threads_per_job  # noqa: E402

from agent.stats import mean_ci_over_seeds  # noqa: E402

TRAINED = {
    "sft": ["train.objective='sft'"],
    "rwr": ["train.objective='rwr'"],
    "flow-dpo": ["train.objective='flow-dpo'"],
    "phygdpo": ["train.objective='phygdpo'"],
    "gdpo-full": ["train.objective='gdpo-full'"],
    "diffusion-nft": ["train.objective='diffusion-nft'", "train.reference='round-start'"],
    "flow-grpo": ["train.objective='flow-grpo'"],
    "phygdpo-no-pgr": ["train.objective='phygdpo'", "train.use_pgr=false"],
    "phygdpo-full-copy": ["train.objective='phygdpo'", "train.reference='full-copy'"],
    "phygdpo-distil": ["train.objective='phygdpo'", "refine.distil=true"],
}
ALL = ["base", "refine-only", *TRAINED]

QUICK = ["rounds=2", "train.steps=6", "plan.prompts_per_round=4", "generate.group_size=2",
         "data.world.train_scenes_per_family=2", "data.world.heldout_scenes_per_family=2",
         "data.world.paraphrase_scenes_per_family=1", "evaluate.seen_prompts=4",
         "evaluate.clips_per_prompt=1", "generate.toy.steps=6"]


def run_variant(name: str, seed: int, preset: str, extra: list[str], runs_dir: Path, quick: bool,
                keep: bool = False) -> dict:
    from agent import loop
    from agent.config import dump, load_config
    from agent.runtime import open_store

    overrides = [*(QUICK if quick else []), *extra, f"seed={seed}", f"train.seed={seed}",
                 f"runs_dir='{runs_dir}'"]
    if name in ("base", "refine-only"):
        overrides += ["evaluate.refine=true", "rounds=1"]  # round 0 is what these report
    else:
        overrides += TRAINED[name]
    cfg, _ = load_config(preset, overrides)
    run = f"{name}-s{seed}"
    reused = keep and _stored_state(runs_dir, run, dump(cfg), baseline_only=name in ("base", "refine-only"))
    if not reused:
        loop.prepare_run(cfg, preset=preset, name=run)
    t0 = time.perf_counter()
    if reused == "done":
        pass  # finished earlier with this exact config: read its metrics below
    elif reused == "partial" and name not in ("base", "refine-only"):
        loop.execute(run, cfg, resume=True)
    elif name in ("base", "refine-only"):
        # only the baseline node: evaluate the base model as written and refined
        from agent.nodes import Nodes
        from agent.runtime import Runtime

        store = open_store(runs_dir)
        rt = Runtime(run=run, config=cfg, store=store)
        _ = rt.trainer
        Nodes(rt).baseline({"round": 0, "rounds": 0, "run": run})
        store.close()
    else:
        loop.execute(run, cfg)
    wall = time.perf_counter() - t0
    store = open_store(runs_dir)
    try:
        from agent.dashboard import judge_label

        metrics = store.round_metrics(run, judge=judge_label(dump(cfg)))  # the training judge's curve
        key = "heldout_joint_success_refined" if name == "refine-only" else "heldout_joint_success"
        curve = [m[key] for m in metrics]
        seconds = [m["seconds"] for m in metrics[1:]]
    finally:
        store.close()
    if reused == "done":  # the stored rounds' own times, not this process's
        wall = sum(s for s in seconds if s is not None)
    return {"variant": name, "seed": seed, "run": run, "curve": curve, "round_seconds": seconds,
            "wall_seconds": wall, "reused": reused or None}


def _stored_state(runs_dir: Path, run: str, config: dict, baseline_only: bool) -> str | None:
    """'done' / 'partial' for a run stored under ``runs_dir`` with exactly ``config``, else None.

    ``baseline_only`` runs (base, refine-only) are done once their round 0 is.  A stored run with
    another config is an error: reusing it would mix budgets in one table.
    """
    from agent.runtime import open_store
    from store import default_db_path

    if not default_db_path(runs_dir).exists():
        return None
    store = open_store(runs_dir)
    try:
        row = store.get_run(run)
        if row is None:
            return None
        if row["config"] != config:
            raise SystemExit(f"--keep: stored run {run!r} under {runs_dir} has another config; "
                             "drop --keep to start afresh")
        done = 0 in store.completed_rounds(run) if baseline_only else row["status"] == "done"
        return "done" if done else "partial"
    finally:
        store.close()


def summarise(results: list[dict], rounds: int) -> dict:
    out = {}
    for name in dict.fromkeys(r["variant"] for r in results):
        rs = [r for r in results if r["variant"] == name]
        curves = [r["curve"] for r in rs]
        if name in ("base", "refine-only"):  # constant: the base model every round
            curves = [[c[0]] * (rounds + 1) for c in curves]
        per_round = []
        for k in range(rounds + 1):
            vals = [c[k] for c in curves if len(c) > k and c[k] is not None]
            ci = mean_ci_over_seeds(vals)["ci"] if len(vals) > 1 else [None, None]
            per_round.append({"mean": statistics.fmean(vals) if vals else None,
                              "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals),
                              "ci": ci})
        secs = [s for r in rs for s in r["round_seconds"] if s is not None]
        out[name] = {"per_round": per_round, "seconds_per_round": statistics.fmean(secs) if secs else None}
    return out


def table(summary: dict, rounds: int) -> str:
    head = "| variant | " + " | ".join(f"round {k}" for k in range(rounds + 1)) + " | s / round |"
    lines = [head, "|" + "---|" * (rounds + 3)]
    for name, s in summary.items():
        cells = [("–" if p["mean"] is None else f"{100 * p['mean']:.1f} ± {100 * p['sd']:.1f}") for p in s["per_round"]]
        secs = "–" if s["seconds_per_round"] is None else f"{s['seconds_per_round']:.0f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {secs} |")
    return "\n".join(lines)


BASELINES = ("base", "refine-only")
REFERENCE = "phygdpo"  # the variant every other one is also compared with


def _side(result: dict, last: int):
    """The evaluation a variant reports: round 0 (refined prompts for refine-only) or its last round."""
    from agent.compare import Side

    name = result["variant"]
    return Side(result["run"], 0 if name in BASELINES else last, refined=name == "refine-only")


def _compact(res: dict) -> dict:
    """What the JSON keeps of an ``agent.compare`` result: per judge, overall and per category."""
    keep = ("n_pairs", "n_clusters", "a", "b", "diff", "mcnemar", "per_stratum", "over_seeds")
    return {"a": res["a"]["sides"], "b": res["b"]["sides"], "split": res["split"], "threshold": res["threshold"],
            "judges": {j: {"overall": {k: d["overall"][k] for k in keep},
                           "per_category": {c: {k: b[k] for k in ("n_pairs", "a", "b", "diff")}
                                            for c, b in d["per_category"].items() if b is not None},
                           "unpaired": d["unpaired"]}
                       for j, d in res["judges"].items()}}


def paired(results: list[dict], runs_dir: Path, *, n_boot: int = 2000) -> dict:
    """``{variant: {"round", "vs_base", "vs_phygdpo"}}``: paired comparisons on the same held-out clips.

    ``vs_base``: the variant's reported evaluation (its last finished round; refine-only: round 0
    with refined prompts) against round 0 of the same run with the prompts as written, i.e. the
    base model on the same prompts and noise; one stratum per seed. ``vs_phygdpo``: against
    PhyGDPO's last round, runs paired by seed (B − A with A = PhyGDPO: negative is worse). A
    comparison that cannot be made is ``{"error": …}``; base has no ``vs_base``.
    """
    from agent.compare import Side, compare_sides, last_common_round
    from agent.runtime import open_store

    store = open_store(runs_dir)
    try:
        by_variant: dict[str, list[dict]] = {}
        for r in results:
            by_variant.setdefault(r["variant"], []).append(r)
        last = {}
        for name, rs in by_variant.items():
            try:
                last[name] = 0 if name in BASELINES else last_common_round(store, [r["run"] for r in rs])
            except ValueError:
                last[name] = None
        out = {}

        def attempt(pairs, seeds):
            try:
                return _compact(compare_sides(store, pairs, strata=seeds, n_boot=n_boot))
            except ValueError as e:
                return {"error": str(e)}

        ref = {r["seed"]: r for r in by_variant.get(REFERENCE, [])}
        for name, rs in by_variant.items():
            rs = sorted(rs, key=lambda r: r["seed"])
            entry = {"round": last[name], "vs_base": None, "vs_phygdpo": None}
            if last[name] is not None:
                if name != "base":
                    entry["vs_base"] = attempt([(Side(r["run"], 0), _side(r, last[name])) for r in rs],
                                               [r["seed"] for r in rs])
                both = [r for r in rs if r["seed"] in ref]
                if name != REFERENCE and both and last.get(REFERENCE) is not None:
                    entry["vs_phygdpo"] = attempt(
                        [(_side(ref[r["seed"]], last[REFERENCE]), _side(r, last[name])) for r in both],
                        [r["seed"] for r in both])
            out[name] = entry
        return out
    finally:
        store.close()


def paired_table(pairs: dict) -> str:
    """Markdown: per variant and judge, its reported success (Wilson 95 % CI, clips pooled over
    seeds) and the paired differences with the base model and with PhyGDPO (95 % CI, p)."""
    from agent.stats import fmt_diff, fmt_p

    lines = ["| variant | judge | round | joint success [95 % CI] | Δ vs base [95 % CI] | p | "
             f"Δ vs {REFERENCE} [95 % CI] | p | pairs |", "|---|---|---|---|---|---|---|---|---|"]
    for name, e in pairs.items():
        docs = [d for d in (e["vs_base"], e["vs_phygdpo"]) if d and "judges" in d]
        judges = list(dict.fromkeys(j for d in docs for j in d["judges"]))
        errors = [d["error"] for d in (e["vs_base"], e["vs_phygdpo"]) if d and "error" in d]
        if not judges:
            lines.append(f"| {name} | – | {e['round'] if e['round'] is not None else '–'} | – | – | – | – | – | "
                         f"{'; '.join(errors) or '–'} |")
            continue
        for j in judges:
            base = (e["vs_base"] or {}).get("judges", {}).get(j, {}).get("overall")
            vs_ref = (e["vs_phygdpo"] or {}).get("judges", {}).get(j, {}).get("overall")
            own = (base or vs_ref or {}).get("b")
            cells = [name, j, str(e["round"]), own["text"] if own else "–"]
            for o, base_column in ((base, True), (vs_ref, False)):
                if o:
                    cells += [fmt_diff(o["diff"]["estimate"], o["diff"]["ci"]), fmt_p(o["diff"]["p"])]
                else:
                    cells += ["(itself)" if base_column and name == "base" else "–", "–"]
            cells.append(str((base or vs_ref)["n_pairs"]))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


OBJECTIVES = ("sft", "rwr", "flow-dpo", "phygdpo", "gdpo-full", "diffusion-nft", "flow-grpo")
ABLATIONS = ("phygdpo", "phygdpo-no-pgr", "phygdpo-full-copy", "phygdpo-distil")
COLOURS = {"sft": "tab:blue", "rwr": "tab:orange", "flow-dpo": "tab:green", "phygdpo": "tab:red",
           "gdpo-full": "tab:purple", "phygdpo-no-pgr": "tab:olive", "phygdpo-full-copy": "black",
           "phygdpo-distil": "tab:cyan", "diffusion-nft": "tab:pink", "flow-grpo": "tab:brown"}


def plot(summary: dict, rounds: int, path: Path) -> None:
    """Two panels: the objectives, and PhyGDPO's ablations; the baselines as dashed lines in both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    xs = list(range(rounds + 1))
    panels = (("objectives", OBJECTIVES), ("PhyGDPO ablations", ABLATIONS))
    for ax, (title, names) in zip(axes, panels):
        shown = [n for n in names if n in summary] or [n for n in summary if n not in ("base", "refine-only")]
        for k, name in enumerate(["base", "refine-only", *shown]):
            if name not in summary:
                continue
            s = summary[name]
            mean = [None if p["mean"] is None else 100 * p["mean"] for p in s["per_round"]]
            sd = [100 * p["sd"] for p in s["per_round"]]
            if name in ("base", "refine-only"):
                ax.plot(xs, mean, "--", color="grey" if name == "base" else "tab:brown", lw=1, label=name)
                continue
            # identical curves (e.g. the full-copy reference) stay visible: thinner, dotted, on top
            style = dict(lw=1.2, ls=":", marker="x") if name == "phygdpo-full-copy" else dict(lw=2, marker="o")
            line, = ax.plot(xs, mean, label=name, zorder=3 + k, color=COLOURS.get(name), **style)
            if all(m is not None for m in mean):
                ax.fill_between(xs, [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)],
                                color=line.get_color(), alpha=0.10)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("held-out joint success (%), mean ± sd over seeds")
    fig.suptitle("built-in world: PhyGDPO and alternatives, same prompts and budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--quick", action="store_true", help="tiny budget and one seed: minutes")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per variant (default 3, quick 1)")
    ap.add_argument("--variants", default=",".join(ALL), help=f"comma list from {','.join(ALL)}")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at once, each in its own process (they share the run database)")
    ap.add_argument("--keep", action="store_true",
                    help="keep --runs-dir: reuse runs finished there with the same config, resume unfinished "
                         "ones (default: start afresh)")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "bench" / "out" / "objectives")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None, help="learning-curve PNG (default bench/objectives*.png)")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(ALL)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {ALL}")
    seeds = args.seeds or (1 if args.quick else 3)
    suffix = "_quick" if args.quick else ""
    out = args.out or ROOT / "bench" / "results" / f"objectives{suffix}.json"
    if args.runs_dir.exists() and not args.keep:
        shutil.rmtree(args.runs_dir)
    from agent.config import load_config

    cfg, _ = load_config(args.preset, [*(QUICK if args.quick else []), *args.overrides])
    t0 = time.perf_counter()
    todo = [(name, seed, args.preset, args.overrides, args.runs_dir, args.quick, args.keep)
            for seed in range(seeds) for name in variants]
    results = run_jobs(run_variant, todo, args.jobs, label=lambda a: f"{a[0]} seed {a[1]}")
    summary = summarise(results, cfg.rounds)
    pairs = paired(results, args.runs_dir)
    doc = {"benchmark": "objective comparison", "date": date.today().isoformat(),
           "machine": f"{platform.machine()}, {platform.processor() or platform.system()}, "
                      f"{__import__('os').cpu_count()} cores",
           "command": "python bench/compare_objectives.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "jobs": args.jobs, "threads_per_job": threads_per_job(args.jobs) if args.jobs > 1 else None,
           "preset": args.preset, "quick": args.quick, "seeds": seeds, "rounds": cfg.rounds,
           "wall_seconds": time.perf_counter() - t0, "summary": summary, "paired": pairs, "runs": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    from agent.compare import clean

    out.write_text(json.dumps(clean(doc), indent=2))
    plot(summary, cfg.rounds, args.plot or ROOT / "bench" / f"objectives{suffix}.png")
    print(table(summary, cfg.rounds))
    print()
    print(paired_table(pairs))
    print(f"wrote {out} in {doc['wall_seconds']:.0f}s")
    return doc


if __name__ == "__main__":
    main()
