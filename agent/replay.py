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


def plot_curves(store, run: str, path: Path) -> Path:
    """The run's learning curves from the store alone (``agent replay RUN --plot FILE.png``): per
    evaluation split, every judge's joint success per round with its Wilson 95 % band (the training
    judge solid, others dashed); and the training loss of every step, rounds one after another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agent.dashboard import judge_label
    from agent.stats import wilson

    metrics = store.round_metrics(run)
    if not metrics:
        raise ValueError(f"run {run!r} has no finished round to plot")
    training = judge_label((store.get_run(run) or {}).get("config") or {})
    curves: dict[tuple[str, str], list[tuple[int, int, int]]] = defaultdict(list)
    for m in metrics:
        for e in m["evaluations"]:
            if not e["refine"] and e["n"]:
                curves[(e["split"], e["judge"])].append((m["round"], int(e["n_success"] or 0), int(e["n"])))
    splits = sorted({s for s, _ in curves}, key=lambda s: ("heldout", "seen", "paraphrase").index(s)
                    if s in ("heldout", "seen", "paraphrase") else 9)
    fig, axes = plt.subplots(1, len(splits) + 1, figsize=(4.5 * (len(splits) + 1), 4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for (s, judge), pts in sorted(curves.items()):
            if s != split:
                continue
            ks = [k for k, _, _ in pts]
            rate = [100 * x / n for _, x, n in pts]
            band = [wilson(x, n) for _, x, n in pts]
            line, = ax.plot(ks, rate, marker="o", ls="-" if judge == training else "--",
                            label=judge + (" (training)" if judge == training else ""))
            ax.fill_between(ks, [100 * lo for lo, _ in band], [100 * hi for _, hi in band],
                            color=line.get_color(), alpha=0.12)
        ax.set_title(f"{split}: joint success (%)")
        ax.set_xlabel("round")
        ax.set_xticks(sorted({k for (s, _), pts in curves.items() if s == split for k, _, _ in pts}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[0][-1]
    x = 0
    for m in metrics[1:]:
        steps = [s for s in store.train_steps(run, m["round"]) if s["loss"] is not None]
        if steps:
            ax.plot(range(x, x + len(steps)), [s["loss"] for s in steps], lw=0.8, color="tab:blue")
            ax.axvline(x, color="grey", lw=0.5, alpha=0.5)
            x += len(steps)
    ax.set_title("training loss per step (rounds in turn)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    fig.suptitle(f"run {run}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
