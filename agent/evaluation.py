"""``agent eval``: evaluation of a stored round, optionally refined and by an independent second judge.

The round's adapter is loaded (verified by hash), the evaluation clips are generated — or read
back when the loop already made them with the same seeds — and judged by the training judge
and by the evaluation judge (``evaluate.judge``; the built-in world's analysis-by-synthesis
judge by default). Every rate comes with its Wilson 95 % interval, and the gain over round 0 is
a paired difference on the same clips (prompt texts resampled by a cluster bootstrap). The gain under
the training judge minus the gain under the independent one is the reward-hacking gap: a policy
that games the judge it was trained against gains more under that judge than under the other.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from agent import stats
from agent.compare import compare_rounds, render, reward_hacking_gap
from agent.config import RunConfig
from agent.dashboard import _f, ci_text
from agent.runtime import Runtime
from agent.stages import evaluate_round
from store import EVAL_SPLITS

def evaluate_stored_round(rt: Runtime, k: int, *, refine: bool = False, baseline: bool = True) -> dict:
    """Evaluate round ``k`` (and round 0 for the gain, unless ``baseline`` is off).

    Returns ``{round: {(split, refined): {judge: summary}}}``.
    """
    out: dict = {}
    rounds = ([0] if baseline and k != 0 else []) + [k]
    world = rt.config.data.world if rt.config.data.source == "world" else None
    splits = ["heldout"] + (["seen"] if rt.config.evaluate.seen_prompts else []) \
        + (["paraphrase"] if world is not None and world.paraphrase_scenes_per_family else [])
    for r in rounds:
        rt.load_round_adapter(r)
        out[r] = {}
        for split in splits:
            out[r][(split, False)] = evaluate_round(rt, r, split=split)
        if refine:
            out[r][("heldout", True)] = evaluate_round(rt, r, split="heldout", refine=True)
    return out


def report(store, run: str, results: dict, k: int, console: Console, training_judge: str) -> dict:
    """Print the evaluation tables; returns the paired gains and gaps that were printed."""
    out: dict = {"gains": {}, "gaps": {}}
    evals = {(e["split"], bool(e["refine"]), e["judge"]): e for e in (store.round_detail(run, k) or {})
             .get("evaluations", [])}
    t = Table(title=f"evaluation, round {k} (Wilson 95 % CIs; Δ: paired on the same clips, cluster bootstrap)",
              title_justify="left")
    for col in ("split", "prompts", "judge", "n", "unjudged", "joint success", "Δ joint vs round 0", "p",
                "mean sa", "mean pc", "accept"):
        t.add_column(col, justify="left" if col in ("split", "prompts", "judge") else "right")
    for split, refine in sorted(results[k], key=lambda sr: (EVAL_SPLITS.index(sr[0]), sr[1])):
        judges = list(results[k][(split, refine)])
        paired = None
        if k != 0 and 0 in results and judges:
            paired = compare_rounds(store, run, 0, k, split=split, judges=judges, refined=refine)["judges"]
        for judge in judges:
            e = evals.get((split, refine, judge)) or {}
            gain = paired[judge]["overall"]["diff"] if paired and judge in paired else None
            out["gains"][f"{split}{'+refine' if refine else ''}:{judge}"] = gain
            unjudged = (e.get("n") or 0) - (e.get("n_judged") or 0)
            t.add_row(split, "refined" if refine else "as written",
                      judge + (" (training judge)" if judge == training_judge else ""), str(e.get("n", "–")),
                      str(unjudged), ci_text(e, "joint_success", "n_success"),
                      "–" if gain is None else gain["text"], "–" if gain is None else stats.fmt_p(gain["p"]),
                      _f(e.get("mean_sa")), _f(e.get("mean_pc")), ci_text(e, "accept_rate", "n_accept"))
    console.print(t)
    judges = [j for (split, refine, j) in evals if split == "heldout" and not refine]
    for key in ("per_category", "per_level"):
        cats = Table(title=f"held-out, {key.replace('_', ' ')} (as written)", title_justify="left")
        cats.add_column(key.split("_")[1])
        for j in judges:
            cats.add_column(f"{j} joint", justify="right")
        names = sorted({c for j in judges for c in (evals[("heldout", False, j)].get(key) or {})})
        for c in names:
            cats.add_row(c, *[ci_text((evals[("heldout", False, j)].get(key) or {}).get(c, {}), "joint_success",
                                      "n_success") for j in judges])
        if names:
            console.print(cats)
    if k != 0 and 0 in results:
        for other in (j for j in judges if j != training_judge):
            gap = reward_hacking_gap(store, run, k, train_judge=training_judge, eval_judge=other)
            out["gaps"][other] = gap
            render(gap, console)
    return out


def run_eval(name: str, cfg: RunConfig, store, k: int, *, refine: bool, baseline: bool,
             console: Console | None = None) -> dict:
    console = console or Console()
    rt = Runtime(run=name, config=cfg, store=store)
    results = evaluate_stored_round(rt, k, refine=refine, baseline=baseline)
    report(store, name, results, k, console, rt.judge_name())
    return results
