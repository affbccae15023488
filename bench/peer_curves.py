"""Learning curves of an objective comparison under BOTH judges, with 95 % bands, and what each costs.

Reads a result of ``bench/compare_objectives.py`` (its run names per variant and seed) and the run
store beside it, and for every variant, round and judge pools the held-out evaluation clips of all
seeds (prompts as written): joint success with a Wilson 95 % interval. A gain that shows under the
training judge and not under the other one is reward hacking, so both are drawn side by side.
It also reports, per variant, the training budget actually spent (optimizer steps and samples per
round) and the seconds per round, so "the same budget" can be checked rather than assumed.

    python bench/peer_curves.py bench/results/peer_baselines.json --runs-dir bench/out/peer \\
        --plot bench/peer_baselines.png

Prints a Markdown table for BENCHMARKS.md and writes ``<result>_curves.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.stats import wilson  # noqa: E402

BASELINES = ("base", "refine-only")
COLOURS = {"base": "grey", "refine-only": "tab:cyan", "phygdpo": "tab:red", "diffusion-nft": "tab:pink", "flow-grpo": "tab:brown",
           "flow-dpo": "tab:green", "sft": "tab:blue", "rwr": "tab:orange", "gdpo-full": "tab:purple"}


def curves(result: dict, runs_dir: Path) -> dict:
    """``{variant: {"judges": {judge: [per round {k, n, rate, ci}]}, "steps", "seconds_per_round"}}``."""
    from agent.runtime import open_store

    store = open_store(runs_dir)
    try:
        out: dict = {}
        by_variant: dict[str, list[dict]] = {}
        for r in result["runs"]:
            by_variant.setdefault(r["variant"], []).append(r)
        rounds = result["rounds"]
        for name, rs in by_variant.items():
            refined = name == "refine-only"  # the base with refined prompts (compare_objectives' baseline)
            pooled: dict[str, dict[int, list[int]]] = {}
            steps, seconds = [], []
            for r in rs:
                for m in store.round_metrics(r["run"]):
                    k = m["round"]
                    for e in m["evaluations"]:
                        if e["split"] != "heldout" or bool(e["refine"]) != refined:
                            continue
                        cell = pooled.setdefault(e["judge"], {}).setdefault(k, [0, 0])
                        cell[0] += int(e["n_success"] or 0)
                        cell[1] += int(e["n"])
                    if k > 0:
                        steps.append(m["n_steps"])
                        if m["seconds"] is not None:
                            seconds.append(m["seconds"])
            judges = {}
            for judge, per in pooled.items():
                # the baseline runs evaluate round 0 only: the base at every round
                ks = [0] * (rounds + 1) if name in BASELINES else range(rounds + 1)
                pts = []
                for k in ks:
                    if k not in per:
                        pts.append(None)
                        continue
                    s, n = per[k]
                    lo, hi = wilson(s, n)
                    pts.append({"k": s, "n": n, "rate": s / n, "ci": [lo, hi]})
                judges[judge] = pts
            out[name] = {"judges": judges, "seeds": len(rs),
                         "steps_per_round": statistics.fmean(steps) if steps else None,
                         "seconds_per_round": statistics.fmean(seconds) if seconds else None}
        return out
    finally:
        store.close()


def table(data: dict, training_judge: str, rounds: int) -> str:
    lines = ["| variant | judge | " + " | ".join(f"round {k}" for k in range(rounds + 1))
             + " | steps / round | s / round |", "|---|---|" + "---|" * (rounds + 3)]
    for name, d in data.items():
        for judge in sorted(d["judges"], key=lambda j: (j != training_judge, j)):
            cells = ["–" if p is None else f"{100 * p['rate']:.1f} [{100 * p['ci'][0]:.1f}, {100 * p['ci'][1]:.1f}]"
                     for p in d["judges"][judge]]
            tag = f"{judge} (training)" if judge == training_judge else judge
            steps = "–" if d["steps_per_round"] is None else f"{d['steps_per_round']:.0f}"
            secs = "–" if d["seconds_per_round"] is None else f"{d['seconds_per_round']:.0f}"
            lines.append(f"| {name} | {tag} | " + " | ".join(cells) + f" | {steps} | {secs} |")
    return "\n".join(lines)


def plot(data: dict, training_judge: str, rounds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = sorted({j for d in data.values() for j in d["judges"]}, key=lambda j: (j != training_judge, j))
    fig, axes = plt.subplots(1, len(judges), figsize=(5.5 * len(judges), 4.5), sharey=True, squeeze=False)
    xs = list(range(rounds + 1))
    for ax, judge in zip(axes[0], judges):
        for name, d in data.items():
            pts = d["judges"].get(judge)
            if not pts or any(p is None for p in pts):
                continue
            mean = [100 * p["rate"] for p in pts]
            lo, hi = [100 * p["ci"][0] for p in pts], [100 * p["ci"][1] for p in pts]
            colour = COLOURS.get(name)
            if name in BASELINES:
                ax.plot(xs, mean, "--", color=colour, lw=1, label=name)
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.08)
                continue
            line, = ax.plot(xs, mean, marker="o", lw=2, label=name, color=colour)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12)
        ax.set_title(f"judge: {judge}" + (" (training)" if judge == training_judge else " (independent)"))
        ax.set_xlabel("round")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("held-out joint success (%), clips of all seeds, Wilson 95 %")
    fig.suptitle("built-in world: PhyGDPO and the peer baselines, same rollouts, judge and samples per step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", type=Path, help="a JSON written by bench/compare_objectives.py")
    ap.add_argument("--runs-dir", type=Path, required=True, help="the --runs-dir that comparison ran in")
    ap.add_argument("--plot", type=Path, default=None, help="PNG with one panel per judge")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.result.is_file():
        ap.error(f"no result file at {args.result}")
    result = json.loads(args.result.read_text())
    from agent.config import dump, load_config
    from agent.dashboard import judge_label

    cfg, _ = load_config(result.get("preset") or "default")
    training = judge_label(dump(cfg))
    data = curves(result, args.runs_dir)
    doc = {"source": str(args.result), "training_judge": training, "rounds": result["rounds"], "variants": data}
    out = args.out or args.result.with_name(args.result.stem + "_curves.json")
    out.write_text(json.dumps(doc, indent=2))
    if args.plot:
        plot(data, training, result["rounds"], args.plot)
    print(table(data, training, result["rounds"]))
    print(f"wrote {out}")
    return doc


if __name__ == "__main__":
    main()
