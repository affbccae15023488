"""The rich console dashboard: live while a run works, and re-rendered from the store by replay.

Everything shown comes from the store (``round_metrics``, ``category_stats``,
``round_detail``), so the live view and ``agent replay`` show the same numbers. When stdout
is not a terminal, the live view is replaced by plain log lines.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

STAGE_ORDER = ("plan", "refine", "generate", "judge", "train", "evaluate", "checkpoint")


def _f(x: Any, digits: int = 2, pct: bool = False) -> str:
    if x is None:
        return "–"
    if pct:
        return f"{100 * x:.0f}%"
    return f"{x:.{digits}f}"


def metrics_table(rows: list[dict]) -> Table:
    t = Table(title="Rounds", expand=True, title_justify="left")
    for col, just in (("round", "right"), ("accept", "right"), ("sa", "right"), ("pc", "right"),
                      ("train joint", "right"), ("held-out joint", "right"), ("loss", "right"),
                      ("margin", "right"), ("pref acc", "right"), ("groups", "right"), ("time / stage (s)", "left")):
        t.add_column(col, justify=just, no_wrap=col != "time / stage (s)")
    for r in rows:
        st = r.get("stage_times") or {}
        times = " · ".join(f"{s[:3]} {st[s]:.0f}" for s in STAGE_ORDER if s in st)
        groups = "–" if r.get("groups_used") is None else f"{r['groups_used']}/{r['groups_used'] + (r['groups_skipped'] or 0)}"
        restored = " ⟲" if r.get("restored") else ""
        t.add_row(str(r["round"]), _f(r.get("accept_rate"), pct=True), _f(r.get("mean_sa")), _f(r.get("mean_pc")),
                  _f(r.get("joint_success"), pct=True), _f(r.get("heldout_joint_success"), pct=True),
                  _f(r.get("loss"), 3), _f(r.get("margin"), 4), _f(r.get("accuracy"), pct=True),
                  groups + restored, times)
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
    parts.append(metrics_table(rows))
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
            self._plain(
                f"round {r['round']} done in {_f(r['seconds'], 0)}s: held-out joint {_f(r['heldout_joint_success'], pct=True)}"
                f" · train accept {_f(r['accept_rate'], pct=True)} · sa {_f(r['mean_sa'])} · pc {_f(r['mean_pc'])}"
                f" · loss {_f(r['loss'], 3)} · margin {_f(r['margin'], 4)} · pref acc {_f(r['accuracy'], pct=True)}")
        self._refresh(requery=self.live_mode)

    def _plain(self, line: str) -> None:
        self._last_plain = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stdout, flush=True)
