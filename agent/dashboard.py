"""The rich console dashboard: live while a run works, and re-rendered from the store by replay.

Everything shown comes from the store (``round_metrics``, ``category_stats``,
``round_detail``), so the live view and ``agent replay`` show the same numbers. When stdout
is not a terminal, the live view is replaced by plain log lines.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text



from agent.stats import fmt_ci, wilson


def _f(x: Any, digits: int = 2, pct: bool = False) -> str:
    if x is None:
        return "–"
    if pct:
        return f"{100 * x:.0f}%"
    return f"{x:.{digits}f}"


def judge_label(cfg: dict) -> str:
    """The stored name of a run's training judge, from its stored config (``Runtime.judge_name``)."""
    j = (cfg or {}).get("judge") or {}
    backend = j.get("backend", "physics")
    model = (j.get("vlm") or {}).get("model") if backend == "vlm" else None
    return f"{backend}:{model}" if model else backend


def ci_text(row: dict, rate_key: str, count_key: str, *, short: bool = False, n_key: str = "n") -> str:
    """``34.2 % [30.1, 38.5]`` (``short``: ``34 [30–39]``): the rate with its Wilson 95 % interval when the
    row has counts, else the rate alone."""
    n, k = row.get(n_key), row.get(count_key)
    if n and k is not None:
        if not short:
            return fmt_ci(k, n)
        lo, hi = wilson(k, n)
        return f"{100 * k / n:.0f} [{100 * lo:.0f}–{100 * hi:.0f}]"
    return _f(row.get(rate_key), pct=True)


def unjudged_note(row: dict) -> str:
    """`` (3 unjudged, counted as failures)`` when some clips of an evaluation row were not judged."""
    n, nj = row.get("n"), row.get("n_judged")
    return "" if n is None or nj is None or nj == n else f" ({n - nj} unjudged, counted as failures)"


def _eval(row: dict, judge: str, split: str = "heldout", refine: bool = False) -> dict | None:
    return next((e for e in row.get("evaluations") or [] if e["judge"] == judge and e["split"] == split
                 and bool(e["refine"]) == refine), None)


def eval_judges(rows: list[dict], training: str) -> list[str]:
    """Judges with held-out evaluations in ``rows``: the training judge first."""
    names = {e["judge"] for r in rows for e in r.get("evaluations") or [] if e["split"] == "heldout"}
    return sorted(names, key=lambda j: (j != training, j))


def hacking_gap(rows: list[dict], k: int, training: str, other: str) -> float | None:
    """Gain of round ``k`` over round 0 under the training judge minus the gain under ``other`` (pp)."""
    by_round = {r["round"]: r for r in rows}
    if 0 not in by_round or k not in by_round or k == 0:
        return None
    vals = []
    for j in (training, other):
        a, b = _eval(by_round[0], j), _eval(by_round[k], j)
        if a is None or b is None or a["joint_success"] is None or b["joint_success"] is None:
            return None
        vals.append(b["joint_success"] - a["joint_success"])
    return 100 * (vals[0] - vals[1])


def metrics_table(rows: list[dict], training: str = "physics") -> Table:
    """One line per round: training clips, held-out joint success under each judge (Wilson 95 % CIs),
    the seen and paraphrase splits under the training judge, and the reward-hacking gap (gain over
    round 0 under the training judge − gain under the other, in pp)."""
    judges = eval_judges(rows, training)
    present = {e["split"] for r in rows for e in r.get("evaluations") or []}
    extra = [split for split in ("seen", "paraphrase") if split in present]
    t = Table(title=f"Rounds: joint success % [Wilson 95 % CI]; held-out = prompt texts never trained on; "
                    f"training judge {training}", title_justify="left", box=box.SIMPLE_HEAD)
    cols = [("round", "right"), ("train\njoint", "right")]
    cols += [(f"held-out\n{j}", "right") for j in judges]
    cols += [(f"{split}\n{training}", "right") for split in extra]
    if len(judges) > 1:
        cols.append(("gap\npp", "right"))
    cols += [("loss\nopen→close", "right"), ("margin", "right"), ("pref\nacc", "right"), ("satu-\nrated", "right"),
             ("groups", "right"), ("time s\ntrain/eval", "right")]
    for col, just in cols:
        t.add_column(col, justify=just, no_wrap=True)
    for r in rows:
        st = r.get("stage_times") or {}
        evaluate = sum(v for s, v in st.items() if s.startswith("evaluate"))
        times = "–" if r.get("seconds") is None else f"{r['seconds']:.0f} ({st.get('train', 0):.0f}/{evaluate:.0f})"
        groups = "–" if r.get("groups_used") is None else f"{r['groups_used']}/{r['groups_used'] + (r['groups_skipped'] or 0)}"
        restored = " ⟲" if r.get("restored") else ""
        cells = [str(r["round"]), ci_text(r, "joint_success", "n_joint", short=True, n_key="n_videos")]
        for j in judges:
            e = _eval(r, j)
            cells.append("–" if e is None else ci_text(e, "joint_success", "n_success", short=True))
        for split in extra:
            e = _eval(r, training, split)
            cells.append("–" if e is None else ci_text(e, "joint_success", "n_success", short=True))
        if len(judges) > 1:
            gap = hacking_gap(rows, r["round"], training, judges[1])
            cells.append("–" if gap is None else f"{gap:+.1f}")
        loss = "–" if r.get("loss_open") is None else f"{r['loss_open']:.2g}→{r['loss_close']:.2g}"
        cells += [loss, _f(r.get("margin"), 1), _f(r.get("accuracy"), pct=True), _f(r.get("saturated"), pct=True),
                  groups + restored, times]
        t.add_row(*cells)
    return t


def category_table(rows: list[dict]) -> Table:
    t = Table(title="Difficulty per category (planner)", title_justify="left")
    for col in ("category", "S(k)", "d_k", "r_k", "allocated", "available"):
        t.add_column(col, justify="left" if col == "category" else "right")
    for r in rows:
        t.add_row(r["category"], _f(r.get("score")), _f(r.get("difficulty")), _f(r.get("weight"), 1),
                  str(r.get("allocation")), str(r.get("available")))
    return t


def refinement_panel(refinements: list[dict], limit: int = 4) -> Panel:
    lines = Text()
    shown = [r for r in refinements if r.get("accepted")][-limit:]
    for r in shown:
        lines.append("• ", style="bold")
        lines.append(r["before"], style="dim")
        lines.append("  →  ", style="bold cyan")
        lines.append(r["after"] + "\n")
    if not shown:
        lines.append("no accepted rewrites yet", style="dim")
    return Panel(lines, title="Latest prompt refinements (before → after)", title_align="left")


def latest_refinements(store, run: str, upto: int | None = None) -> list[dict]:
    out: list[dict] = []
    for rnd in sorted(r for r in _rounds(store, run) if upto is None or r <= upto):
        detail = store.round_detail(run, rnd) or {}
        for p in detail.get("prompts", []):
            out.extend(p.get("refinements") or [])
    return out


def _rounds(store, run: str) -> list[int]:
    return [r["round"] for r in store.round_metrics(run, done_only=False)]


def render_state(store, run: str, *, upto: int | None = None, header: str = "") -> Group:
    """The dashboard's tables as of round ``upto`` (all rounds when None)."""
    rows = [r for r in store.round_metrics(run, done_only=upto is not None) if upto is None or r["round"] <= upto]
    last_planned = max((r["round"] for r in rows if r["round"] > 0), default=None)
    parts: list[Any] = []
    if header:
        parts.append(Text(header, style="bold"))
    training = judge_label((store.get_run(run) or {}).get("config") or {})
    parts.append(metrics_table(rows, training))
    if last_planned is not None:
        parts.append(category_table(store.category_stats(run, last_planned)))
    parts.append(refinement_panel(latest_refinements(store, run, upto)))
    faults = store.fault_counts(run)
    if faults:
        parts.append(Text("faults: " + ", ".join(f"{k} {v}" for k, v in faults.items()), style="yellow"))
    return Group(*parts)


class Dashboard:
    """Live view of a running loop (implements the runtime's UI interface)."""

    def __init__(self, store, run: str, rounds: int, console: Console | None = None, live: bool | None = None):
        self.store, self.run, self.rounds = store, run, rounds
        self.console = console or Console()
        self.live_mode = self.console.is_terminal if live is None else live
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, expand=True)
        self.task = None
        self.round = 0
        self.stage_name = "starting"
        self.t0 = time.perf_counter()
        self._live: Live | None = None
        self._last_plain = 0.0
        self._state = None  # store-backed tables, re-queried only when a stage or round changes

    # -- context
    def __enter__(self) -> "Dashboard":
        if self.live_mode:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)
            self._live = None

    def _render(self):
        head = f"phyloop · run {self.run} · round {self.round}/{self.rounds} · stage {self.stage_name} · " \
               f"{time.perf_counter() - self.t0:.0f}s"
        if self._state is None:
            self._state = render_state(self.store, self.run)
        return Group(Panel(Group(Text(head, style="bold"), self.progress), title="phyloop", title_align="left"),
                     self._state)

    def _refresh(self, requery: bool = False) -> None:
        if requery:
            self._state = None
        if self._live is not None:
            self._live.update(self._render())

    # -- UI interface
    def stage(self, round: int, stage: str, total: int | None = None) -> None:
        self.round, self.stage_name = round, stage
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"round {round} · {stage}", total=total)
        if not self.live_mode:
            self._plain(f"round {round} · {stage}" + (f" ({total} items)" if total else ""))
        self._refresh(requery=self.live_mode)

    def advance(self, done: int, total: int | None = None) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=done, **({"total": total} if total else {}))
        if not self.live_mode and total and (done == total or time.perf_counter() - self._last_plain > 10):
            self._plain(f"  {self.stage_name}: {done}/{total}")
        self._refresh()

    def note(self, text: str) -> None:
        if not self.live_mode:
            self._plain("  " + text)

    def round_done(self, run: str) -> None:
        rows = self.store.round_metrics(run)
        if rows and not self.live_mode:
            r = rows[-1]
            training = judge_label((self.store.get_run(run) or {}).get("config") or {})
            held = " · ".join(f"{j} {ci_text(e, 'joint_success', 'n_success')}{unjudged_note(e)}"
                              for j in eval_judges([r], training) if (e := _eval(r, j)) is not None)
            others = " · ".join(f"{split} {ci_text(e, 'joint_success', 'n_success')}" for split in ("seen", "paraphrase")
                                if (e := _eval(r, training, split)) is not None)
            judges = eval_judges(rows, training)
            gap = hacking_gap(rows, r["round"], training, judges[1]) if len(judges) > 1 else None
            self._plain(
                f"round {r['round']} done in {_f(r['seconds'], 0)}s: held-out joint {held or '–'}"
                + (f" · {others}" if others else "")
                + (f" · gap {gap:+.1f} pp" if gap is not None else "")
                + f" · train accept {ci_text(r, 'accept_rate', 'n_accept', n_key='n_videos')}"
                f" · sa {_f(r['mean_sa'])} · pc {_f(r['mean_pc'])}"
                f" · loss {_f(r['loss'], 3)} · margin {_f(r['margin'], 4)} · pref acc {_f(r['accuracy'], pct=True)}")
        self._refresh(requery=self.live_mode)

    def _plain(self, line: str) -> None:
        self._last_plain = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stdout, flush=True)
