"""``agent eval``: held-out evaluation of a stored round, optionally refined and by another judge.

The round's adapter is loaded (verified by hash), held-out clips are generated — or read
back when the loop already made them with the same seeds — and judged by the training judge
and, when configured, by a second evaluation judge. Reporting the gain over round 0 by each
judge exposes reward hacking: a policy that games the judge it was trained against gains
more under that judge than under an independent one.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from agent.config import RunConfig
from agent.dashboard import _f
from agent.stages import evaluate_round
from agent.runtime import Runtime


def evaluate_stored_round(rt: Runtime, k: int, *, refine: bool = False, baseline: bool = True) -> dict:
    """Evaluate round ``k`` (and round 0 for the gain, unless ``baseline`` is off)."""
    out = {}
    rounds = ([0] if baseline and k != 0 else []) + [k]
    for r in rounds:
        rt.load_round_adapter(r)
        out[r] = {False: evaluate_round(rt, r)}
        if refine:
            out[r][True] = evaluate_round(rt, r, refine=True)
    return out


def report(results: dict, k: int, console: Console, training_judge: str) -> None:
    t = Table(title=f"held-out evaluation, round {k}", title_justify="left")
    for col in ("judge", "prompts", "n", "joint success", "Δ joint vs round 0", "mean sa", "mean pc", "accept"):
        t.add_column(col, justify="left" if col in ("judge", "prompts") else "right")
    gains = {}
    for refine, per_judge in sorted(results[k].items()):
        for judge, s in per_judge.items():
            base = results.get(0, {}).get(refine, {}).get(judge) if k != 0 else None
            gain = None if base is None or s["joint_success"] is None or base["joint_success"] is None \
                else s["joint_success"] - base["joint_success"]
            gains[(judge, refine)] = gain
            t.add_row(judge + (" (training judge)" if judge == training_judge else ""),
                      "refined" if refine else "as written", str(s["n"]), _f(s["joint_success"], pct=True),
                      "–" if gain is None else f"{100 * gain:+.0f} pts", _f(s["mean_sa"]), _f(s["mean_pc"]),
                      _f(s["accept_rate"], pct=True))
    console.print(t)
    for refine, per_judge in sorted(results[k].items()):
        cats = Table(title=f"per category ({'refined' if refine else 'as written'})", title_justify="left")
        cats.add_column("category")
        judges = list(per_judge)
        for j in judges:
            cats.add_column(f"{j} joint", justify="right")
        names = sorted({c for s in per_judge.values() for c in s["per_category"]})
        for c in names:
            cats.add_row(c, *[_f(per_judge[j]["per_category"].get(c, {}).get("joint_success"), pct=True)
                              for j in judges])
        console.print(cats)
    train_gain = gains.get((training_judge, False))
    others = [(j, g) for (j, r), g in gains.items() if j != training_judge and not r and g is not None]
    for j, g in others:
        if train_gain is not None:
            gap = train_gain - g
            note = "possible reward hacking of the training judge" if gap > 0.1 else "consistent"
            console.print(f"gain gap (training judge − {j}): {100 * gap:+.0f} pts — {note}")


def run_eval(name: str, cfg: RunConfig, store, k: int, *, refine: bool, baseline: bool,
             console: Console | None = None) -> dict:
    console = console or Console()
    rt = Runtime(run=name, config=cfg, store=store)
    results = evaluate_stored_round(rt, k, refine=refine, baseline=baseline)
    report(results, k, console, rt.judge_name())
    return results
