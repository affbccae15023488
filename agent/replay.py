"""``agent show`` and ``agent replay``: everything from the store, no model loaded."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from agent.dashboard import _f, ci_text, render_state, unjudged_note


def replay_run(store, run: str, console: Console, *, delay: float = 0.0, export: Path | None = None) -> None:
    """Print the dashboard as it stood after each finished round, oldest first."""
    rounds = store.completed_rounds(run)
    if not rounds:
        console.print(f"run {run!r} has no finished round yet")
    cfg = (store.get_run(run) or {}).get("config") or {}
    total = cfg.get("rounds", "?")
    for k in rounds:
        console.rule(f"{run} · after round {k}/{total}")
        console.print(render_state(store, run, upto=k))
        if delay:
            time.sleep(delay)
    if export is not None:
        export.parent.mkdir(parents=True, exist_ok=True)
        if export.suffix.lower() == ".svg":
            console.save_svg(str(export), title=f"phyloop · {run}")
        else:
            console.save_html(str(export))
        console.print(f"wrote {export}")


def step_table(steps: list[dict], rows: int = 20) -> Table:
    """The round's optimiser steps (every n-th of them, and the first and last, up to ``rows`` lines)."""
    every = max(1, -(-len(steps) // rows))
    shown = [s for i, s in enumerate(steps) if i % every == 0 or i == len(steps) - 1]
    t = Table(title=f"training steps ({'all' if every == 1 else f'every {every}th and the last'})",
              title_justify="left")
    for c in ("step", "loss", "margin", "pref acc", "saturated", "t mean", "grad norm", "lr", "skipped"):
        t.add_column(c, justify="right")
    for s in shown:
        extra = s.get("extra") or {}
        t.add_row(str(s["step"]), _f(s["loss"], 4), _f(s["margin"], 3), _f(s["accuracy"], pct=True),
                  _f(extra.get("saturated"), pct=True), _f(extra.get("t_mean"), 2), _f(s["grad_norm"], 2),
                  "–" if s["lr"] is None else f"{s['lr']:.2g}", s["reason"] or "" if s["skipped"] else "")
    return t


def print_round(store, run: str, k: int, console: Console) -> None:
    """One round in full: prompts, refinements, each clip's scores, training, evaluation, faults."""
    d = store.round_detail(run, k)
    if d is None:
        console.print(f"run {run!r} has no round {k}")
        return
    head = d["round"]
    console.rule(f"{run} · round {k} · {head['status']}" + (f" · {head['seconds']:.0f}s" if head.get("seconds") else ""))

    if d["category_stats"]:
        t = Table(title="Planner: difficulty and allocation per category", title_justify="left")
        for c in ("category", "S(k)", "d_k", "r_k", "allocated", "available"):
            t.add_column(c, justify="left" if c == "category" else "right")
        for c in d["category_stats"]:
            t.add_row(c["category"], _f(c["score"]), _f(c["difficulty"]), _f(c["weight"], 1), str(c["allocation"]),
                      str(c["available"]))
        console.print(t)

    scores_by_prompt: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for v in d["videos"]:
        scores_by_prompt[(v["split"], v["prompt_idx"])].append(v)
    for split in ("train", "heldout"):
        prompts = [p for p in d["prompts"] if p["split"] == split]
        if not prompts:
            continue
        t = Table(title=f"{split} prompts", title_justify="left", show_lines=True, expand=True)
        t.add_column("#", justify="right")
        t.add_column("category")
        t.add_column("prompt (refinements)", ratio=3)
        t.add_column("clips: sa/pc verdict", ratio=2)
        for p in prompts:
            text = Text(p["original"])
            for r in p["refinements"]:
                mark = "✓" if r["accepted"] else "✗"
                text.append(f"\n {mark} → {r['after']}", style="cyan" if r["accepted"] else "dim")
                if r["critique"]:
                    text.append(f"\n   critique: {r['critique']}", style="dim italic")
            clips = Text()
            for v in scores_by_prompt[(split, p["idx"])]:
                for s in v["scores"]:
                    if s["judged"]:
                        verdict = "Accept" if s["accept"] else "Reject"
                        clips.append(f"g{v['group_index']} [{s['judge']}] {s['sa']:.2f}/{s['pc']:.2f} {verdict}",
                                     style="green" if s["accept"] else "red")
                        if not s["accept"] and s["rationale"]:
                            clips.append(f" — {s['rationale'][:90]}", style="dim")
                    else:
                        clips.append(f"g{v['group_index']} [{s['judge']}] unjudged: {s['error']}", style="yellow")
                    clips.append("\n")
            t.add_row(str(p["idx"]), p["category"] or "", text, clips)
        console.print(t)

    summary = d["training"]["summary"]
    if summary:
        steps = [s for s in d["training"]["steps"] if not s["skipped"]]
        mean = lambda key: (sum(s[key] for s in steps if s[key] is not None) / max(1, sum(s[key] is not None for s in steps))) if steps else None  # noqa: E731
        console.print(
            f"[bold]training[/] {summary['objective']}: {summary['steps']} steps, groups used {summary['groups_used']}, "
            f"skipped {summary['groups_skipped']} {summary.get('skip_reasons') or ''}; mean loss {_f(mean('loss'), 4)}, "
            f"margin {_f(mean('margin'), 4)}, preference accuracy {_f(mean('accuracy'), pct=True)}"
            + ("; [red]diverged: adapter restored[/]" if summary["restored"] else ""))
        console.print(step_table(d["training"]["steps"]))
    for ev in d["evaluations"]:
        label = escape(f"[{ev['judge']}{' +refine' if ev['refine'] else ''}]")
        console.print(f"[bold]{ev.get('split', 'heldout')}[/] {label} "
                      f"n={ev['n']}{unjudged_note(ev)}: joint {ci_text(ev, 'joint_success', 'n_success')}, "
                      f"sa {_f(ev['mean_sa'])}, pc {_f(ev['mean_pc'])}, accept {ci_text(ev, 'accept_rate', 'n_accept')}")
        for key, title in (("per_category", "category"), ("per_level", "level")):
            per = ev.get(key) or {}
            if per:
                console.print(f"    per {title}: " + " · ".join(
                    f"{c} {ci_text(v, 'joint_success', 'n_success')}" for c, v in per.items()))
    if d["stage_times"]:
        console.print("[bold]stage times[/] " + ", ".join(f"{s} {v:.1f}s" for s, v in d["stage_times"].items()))
    faults = store.fault_counts(run, k)
    if faults:
        console.print("[bold yellow]faults[/] " + ", ".join(f"{kind}: {n}" for kind, n in faults.items()))
    else:
        console.print("[bold]faults[/] none")
