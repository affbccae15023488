"""Paired comparisons of evaluation clips: ``agent compare``, and the bench scripts' tables.

Evaluation seeds are the same in every round of a run and across runs with the same config
seed, so two evaluations pair exactly clip by clip on (prompt_id, group_index, seed). This module
pairs them and tests the difference; rendering is separate (``render``), and every result is a
plain JSON-able dict (no numpy values, ``nan`` written as None).

Core (used by everything else):

* ``Side(run, round, refined)`` — one evaluation of one run;
* ``paired_clips(store, a, b, judge=…)`` — the clips of two sides paired on their key;
* ``compare_sides(store, [(Side_a, Side_b), …])`` — per judge: joint success of each side with a
  Wilson CI, the paired difference with a cluster-bootstrap CI and a sign-flip p (prompts are
  the clusters; several pairs of sides are strata, averaged equally), McNemar for a single pair,
  overall, per category and per level.

Front ends: ``compare_runs`` (A_i vs B_i paired by config seed), ``compare_rounds`` (two rounds of
the same run(s)), ``reward_hacking_gap`` (gain under the training judge − gain under an
evaluation judge) and ``render``.

Differences are B − A, as fractions (× 100 for percentage points).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from agent import stats

DEFAULT_THRESHOLD = 0.75
N_BOOT = 2000


@dataclass(frozen=True)
class Side:
    """One evaluation: round ``round`` of ``run`` on its unrefined (or ``refined``) prompts."""

    run: str
    round: int
    refined: bool = False

    def label(self) -> str:
        return f"{self.run}@{self.round}" + ("+refined" if self.refined else "")


# ---------------------------------------------------------------- JSON hygiene

def clean(obj: Any) -> Any:
    """A JSON-able copy: numpy scalars → Python, tuples → lists, nan / inf → None, keys → str."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [clean(v) for v in obj.tolist()]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(result: dict, path: str | Path) -> Path:
    """Writes a result (any of this module's) as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(result), indent=2))
    return path


# ---------------------------------------------------------------- runs, rounds, judges

def run_seed(store, run: str) -> int:
    """The config seed of ``run`` (``config["seed"]``, else the runs row's ``seed``)."""
    row = store.get_run(run)
    if row is None:
        raise ValueError(f"no run named {run!r} in the store")
    seed = (row.get("config") or {}).get("seed", row.get("seed"))
    if seed is None:
        raise ValueError(f"run {run!r} has no config seed: cannot pair it with another run")
    return int(seed)


def pair_runs_by_seed(store, runs_a: Sequence[str], runs_b: Sequence[str]) -> list[tuple[int, str, str]]:
    """``[(seed, run_a, run_b)]``: each A run with the B run of the same config seed, ordered by seed.

    Raises ValueError when a run is missing, the sides have different sizes, a side has two runs
    with one seed, or the seeds of the two sides differ.
    """
    runs_a, runs_b = list(runs_a), list(runs_b)
    if not runs_a or not runs_b:
        raise ValueError("each side needs at least one run")
    if len(runs_a) != len(runs_b):
        raise ValueError(f"cannot pair {len(runs_a)} run(s) with {len(runs_b)}: give one B run per A run "
                         "(paired by config seed)")
    sides = []
    for name, runs in (("A", runs_a), ("B", runs_b)):
        by_seed: dict[int, str] = {}
        for r in runs:
            s = run_seed(store, r)
            if s in by_seed:
                raise ValueError(f"side {name} has two runs with seed {s} ({by_seed[s]!r}, {r!r})")
            by_seed[s] = r
        sides.append(by_seed)
    a, b = sides
    if set(a) != set(b):
        raise ValueError("cannot pair runs by seed: side A has seeds "
                         f"{ {s: r for s, r in sorted(a.items())} }, side B { {s: r for s, r in sorted(b.items())} }; "
                         "evaluation clips only pair between runs with the same config seed")
    return [(s, a[s], b[s]) for s in sorted(a)]


def _check_round(store, run: str, k: int) -> None:
    status = store.round_status(run, k)
    if status is None:
        raise ValueError(f"run {run!r} has no round {k}")
    if status != "done":
        raise ValueError(f"round {k} of run {run!r} is {status}, not done")


def last_common_round(store, runs: Iterable[str]) -> int:
    """The highest round finished in every one of ``runs``."""
    common = None
    for r in runs:
        if store.get_run(r) is None:
            raise ValueError(f"no run named {r!r} in the store")
        done = set(store.completed_rounds(r))
        common = done if common is None else common & done
    if not common:
        raise ValueError(f"no round is finished in all of {sorted(set(runs))}")
    return max(common)


def judges_of(store, side: Side, split: str = "heldout") -> list[str]:
    """Judges with an evaluation row or a score on ``side``'s evaluation clips of ``split``."""
    from store import REFINED_OFFSET

    detail = store.round_detail(side.run, side.round)
    if detail is None:
        return []
    names = [e["judge"] for e in detail["evaluations"]
             if e.get("split", "heldout") == split and bool(e.get("refine")) == side.refined]
    for v in detail["videos"]:
        if v["kind"] == "eval" and v["split"] == split and (v["prompt_idx"] >= REFINED_OFFSET) == side.refined:
            names.extend(s["judge"] for s in v["scores"])
    return list(dict.fromkeys(names))


def _resolve_judges(wanted: Sequence[str] | None, available: list[str]) -> list[str]:
    if not available:
        raise ValueError("no judge evaluated both sides")
    if wanted is None:
        return available
    out = []
    for w in wanted:
        hits = [j for j in available if j == w] or [j for j in available if j.split(":")[0] == w]
        if not hits:
            raise ValueError(f"judge {w!r} did not evaluate both sides; available: {available}")
        out.extend(h for h in hits if h not in out)
    return out


def _threshold(store, run: str, threshold: float | None) -> float:
    if threshold is not None:
        return float(threshold)
    cfg = (store.get_run(run) or {}).get("config") or {}
    t = (cfg.get("judge") or {}).get("threshold") if isinstance(cfg.get("judge"), dict) else None
    return DEFAULT_THRESHOLD if t is None else float(t)


# ---------------------------------------------------------------- pairing clips

def clip_key(row: dict) -> tuple:
    """What pairs two evaluation clips: (prompt, group_index, seed); the prompt is its dataset id
    (its index when it has none)."""
    prompt = row["prompt_id"] if row.get("prompt_id") is not None else f"#{row['prompt_idx']}"
    return (prompt, row["group_index"], row["seed"])


def _cluster(row: dict):
    """The resampling unit: the prompt *text* the user gave. The generator and the judges see only
    the text, so clips of two scenes that share a text are draws of the same thing, not independent
    prompts (the built-in world's 128 held-out prompt rows have 34 distinct texts)."""
    return row.get("original") if row.get("original") is not None else clip_key(row)[0]


def _keyed(rows: list[dict], side: Side) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for r in rows:
        k = clip_key(r)
        if k in out:
            raise ValueError(f"{side.label()} has two evaluation clips with key {k}: cannot pair")
        out[k] = r
    return out


def paired_clips(store, a: Side, b: Side, *, judge: str, split: str = "heldout",
                 threshold: float = DEFAULT_THRESHOLD) -> dict:
    """``{"pairs": [(row_a, row_b)], "unpaired_a": n, "unpaired_b": n}`` for one judge.

    Rows are ``Store.clip_outcomes`` rows (``success`` 0/1, an unjudged clip a failure), paired
    on ``clip_key`` and ordered by side A's clip order.
    """
    ra = _keyed(store.clip_outcomes(a.run, a.round, judge=judge, split=split, refined=a.refined,
                                    threshold=threshold), a)
    rb = _keyed(store.clip_outcomes(b.run, b.round, judge=judge, split=split, refined=b.refined,
                                    threshold=threshold), b)
    pairs = [(ra[k], rb[k]) for k in ra if k in rb]
    return {"pairs": pairs, "unpaired_a": len(ra) - len(pairs), "unpaired_b": len(rb) - len(pairs)}


# ---------------------------------------------------------------- statistics of one group

def rate(outcomes: Sequence[int], n_unjudged: int | None = None) -> dict:
    """``{"k", "n", "rate", "ci", "text"}`` (Wilson 95 %) of 0/1 outcomes, plus ``n_unjudged``."""
    k, n = int(sum(outcomes)), len(outcomes)
    out = {"k": k, "n": n, "rate": k / n if n else None, "ci": list(stats.wilson(k, n)),
           "text": stats.fmt_ci(k, n)}
    if n_unjudged is not None:
        out["n_unjudged"] = int(n_unjudged)
    return out


def block(strata: dict[Any, list[tuple[dict, dict]]], *, n_boot: int = N_BOOT, seed: int = 0) -> dict | None:
    """Both sides' success and their paired difference over ``{stratum: [(row_a, row_b)]}``.

    Strata without pairs are dropped (None when none is left). One stratum: ``paired_bootstrap``
    and ``mcnemar_exact``; several: ``stratified_bootstrap`` (each stratum weighted equally) and
    ``over_seeds``, the t-based CI of the per-stratum differences.
    """
    strata = {s: ps for s, ps in strata.items() if ps}
    if not strata:
        return None
    rows = [p for ps in strata.values() for p in ps]
    a = [int(ra["success"]) for ra, _ in rows]
    b = [int(rb["success"]) for _, rb in rows]
    arrays = {s: ([ra["success"] for ra, _ in ps], [rb["success"] for _, rb in ps], [_cluster(ra) for ra, _ in ps])
              for s, ps in strata.items()}
    if len(strata) == 1:
        (sa, sb, sc), = arrays.values()
        diff = stats.paired_bootstrap(sa, sb, sc, n_boot=n_boot, seed=seed)
        mcn = stats.mcnemar_exact(sa, sb)
        over = None
    else:
        diff = stats.stratified_bootstrap(arrays, n_boot=n_boot, seed=seed)
        mcn = None
        over = stats.mean_ci_over_seeds(diff["per_stratum"].values())
    return {
        "n_pairs": len(rows), "n_clusters": diff["n_clusters"],
        "a": rate(a, sum(1 for ra, _ in rows if not ra["judged"])),
        "b": rate(b, sum(1 for _, rb in rows if not rb["judged"])),
        "diff": {"estimate": diff["estimate"], "ci": diff["ci"], "p": diff["p"], "p_method": diff["p_method"],
                 "text": stats.fmt_diff(diff["estimate"], diff["ci"])},
        "mcnemar": mcn,
        "per_stratum": diff.get("per_stratum"),
        "over_seeds": over,
    }


def _groups(strata: dict[Any, list[tuple[dict, dict]]], field: str) -> dict[str, dict[Any, list]]:
    """``{value of field: {stratum: pairs}}`` (value from side A's row, else B's; None → "?")."""
    out: dict[str, dict[Any, list]] = {}
    for s, pairs in strata.items():
        for ra, rb in pairs:
            v = ra.get(field) if ra.get(field) is not None else rb.get(field)
            out.setdefault("?" if v is None else str(v), {}).setdefault(s, []).append((ra, rb))
    return dict(sorted(out.items()))


# ---------------------------------------------------------------- the core

def compare_sides(store, pairs: Sequence[tuple[Side, Side]], *, split: str = "heldout",
                  judges: Sequence[str] | None = None, threshold: float | None = None,
                  strata: Sequence[Any] | None = None, n_boot: int = N_BOOT, seed: int = 0,
                  labels: tuple[str, str] = ("A", "B")) -> dict:
    """Paired comparison of side A against side B over one or more (A_i, B_i) evaluation pairs.

    ``pairs``: the (Side A_i, Side B_i) to pair clip by clip; ``strata`` names them (default the
    index; ``compare_runs`` uses the seed). Every side's round must be done. ``judges``: names (or
    name prefixes before ':') to report, default every judge that evaluated all sides. Raises
    ValueError when a round is missing, no judge is common, or a pair has no clip in common.

    Returns ``{"kind": "compare", "a", "b", "split", "threshold", "pairs", "judges": {judge: {
    "overall": block, "per_category": {cat: block}, "per_level": {level: block},
    "unpaired": {"a", "b"}}}}`` with ``block`` as ``block()`` returns.
    """
    pairs = [(a, b) for a, b in pairs]
    if not pairs:
        raise ValueError("nothing to compare")
    names = list(strata) if strata is not None else list(range(len(pairs)))
    if len(names) != len(pairs):
        raise ValueError(f"{len(names)} strata for {len(pairs)} pairs")
    for a, b in pairs:
        for s in (a, b):
            if store.get_run(s.run) is None:
                raise ValueError(f"no run named {s.run!r} in the store")
            _check_round(store, s.run, s.round)
    thr = _threshold(store, pairs[0][0].run, threshold)
    common = None
    for a, b in pairs:
        for s in (a, b):
            js = judges_of(store, s, split)
            common = js if common is None else [j for j in common if j in js]
    chosen = _resolve_judges(judges, common or [])

    per_judge = {}
    for j in chosen:
        by_stratum, unpaired = {}, {"a": 0, "b": 0}
        for name, (a, b) in zip(names, pairs):
            got = paired_clips(store, a, b, judge=j, split=split, threshold=thr)
            if not got["pairs"]:
                raise ValueError(f"no evaluation clips of split {split!r} pair between {a.label()} and {b.label()} "
                                 f"(judge {j!r}): were they evaluated with the same seed and prompts?")
            by_stratum[name] = got["pairs"]
            unpaired["a"] += got["unpaired_a"]
            unpaired["b"] += got["unpaired_b"]
        levels = _groups(by_stratum, "level")
        per_judge[j] = {
            "overall": block(by_stratum, n_boot=n_boot, seed=seed),
            "per_category": {c: block(g, n_boot=n_boot, seed=seed) for c, g in _groups(by_stratum, "category").items()},
            "per_level": {} if list(levels) == ["?"] else {lv: block(g, n_boot=n_boot, seed=seed)
                                                            for lv, g in levels.items()},
            "unpaired": unpaired,
        }
    return clean({
        "kind": "compare",
        "a": {"label": labels[0], "sides": [a.label() for a, _ in pairs]},
        "b": {"label": labels[1], "sides": [b.label() for _, b in pairs]},
        "split": split, "threshold": thr, "n_boot": n_boot,
        "pairs": [{"stratum": n, "a": a.label(), "b": b.label()} for n, (a, b) in zip(names, pairs)],
        "judges": per_judge,
    })


# ---------------------------------------------------------------- front ends

def compare_runs(store, runs_a: Sequence[str] | str, runs_b: Sequence[str] | str, *, round: int | None = None,
                 round_a: int | None = None, split: str = "heldout", judges: Sequence[str] | None = None,
                 refined: bool = False, threshold: float | None = None, n_boot: int = N_BOOT,
                 seed: int = 0) -> dict:
    """Runs A_i against runs B_i (paired by config seed) at ``round`` on ``split``.

    ``round`` None: the last round finished in every run. ``round_a``: side A's round when it
    differs (default ``round``), e.g. B at round 5 against A's base model at round 0. Several runs
    per side are strata: each seed's difference counts equally (stratified bootstrap). See
    ``compare_sides`` for the result; it also has ``round``, ``round_a``, ``refined`` and
    ``seeds``.
    """
    runs_a = [runs_a] if isinstance(runs_a, str) else list(runs_a)
    runs_b = [runs_b] if isinstance(runs_b, str) else list(runs_b)
    paired = pair_runs_by_seed(store, runs_a, runs_b)
    k = last_common_round(store, [*runs_a, *runs_b]) if round is None else int(round)
    ka = k if round_a is None else int(round_a)
    sides = [(Side(a, ka, refined), Side(b, k, refined)) for _, a, b in paired]
    out = compare_sides(store, sides, split=split, judges=judges, threshold=threshold,
                        strata=[s for s, _, _ in paired], n_boot=n_boot, seed=seed,
                        labels=(",".join(runs_a) + (f"@{ka}" if ka != k else ""), ",".join(runs_b)))
    out.update({"round": k, "round_a": ka, "refined": refined, "seeds": [s for s, _, _ in paired]})
    return out


def compare_rounds(store, run: str | Sequence[str], round_a: int, round_b: int, *, split: str = "heldout",
                   judges: Sequence[str] | None = None, refined: bool = False, threshold: float | None = None,
                   n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Round ``round_b`` against round ``round_a`` of the same run (or of each of several runs,
    one stratum per run), e.g. ``compare_rounds(store, "r", 0, 5)``: the gain of round 5."""
    runs = [run] if isinstance(run, str) else list(run)
    out = compare_runs(store, runs, runs, round=round_b, round_a=round_a, split=split, judges=judges,
                       refined=refined, threshold=threshold, n_boot=n_boot, seed=seed)
    out["a"]["label"] = f"round {round_a}"
    out["b"]["label"] = f"round {round_b}"
    return out


def reward_hacking_gap(store, run: str, k: int, *, train_judge: str, eval_judge: str, split: str = "heldout",
                       base_round: int = 0, refined: bool = False, threshold: float | None = None,
                       n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Gain of round ``k`` over ``base_round`` under the training judge and under an evaluation judge,
    and their gap (train gain − eval gain), each with a cluster-bootstrap CI over prompts.

    A policy that games the judge it was trained against gains more under that judge than under
    an independent one: a gap whose CI excludes 0 is evidence of reward hacking. Clips pair on
    ``clip_key`` between the two rounds; both judges score the same clips (an unjudged clip is a
    failure). Returns ``{"kind": "reward_hacking", "run", "round", "base_round", "split",
    "train_judge", "eval_judge", "n_pairs", "n_clusters", "train": {"base", "round", "gain"},
    "eval": {…}, "gap", "per_category": {cat: {"train_gain", "eval_gain", "gap"}}}``.
    """
    base, now = Side(run, base_round, refined), Side(run, k, refined)
    for s in (base, now):
        if store.get_run(run) is None:
            raise ValueError(f"no run named {run!r} in the store")
        _check_round(store, run, s.round)
    thr = _threshold(store, run, threshold)
    available = [j for j in judges_of(store, base, split) if j in judges_of(store, now, split)]
    tj, = _resolve_judges([train_judge], available)[:1]
    ej, = _resolve_judges([eval_judge], available)[:1]
    if tj == ej:
        raise ValueError(f"the training and the evaluation judge are the same ({tj!r})")
    pt = {clip_key(ra): (ra, rb) for ra, rb in paired_clips(store, base, now, judge=tj, split=split,
                                                            threshold=thr)["pairs"]}
    pe = {clip_key(ra): (ra, rb) for ra, rb in paired_clips(store, base, now, judge=ej, split=split,
                                                            threshold=thr)["pairs"]}
    keys = [key for key in pt if key in pe]
    if not keys:
        raise ValueError(f"no evaluation clips of split {split!r} pair between rounds {base_round} and {k} of {run!r}")

    def one(ks: list[tuple]) -> dict:
        t0 = [pt[x][0]["success"] for x in ks]
        tk = [pt[x][1]["success"] for x in ks]
        e0 = [pe[x][0]["success"] for x in ks]
        ek = [pe[x][1]["success"] for x in ks]
        cl = [_cluster(pt[x][0]) for x in ks]
        dd = stats.difference_of_differences(t0, tk, e0, ek, cl, n_boot=n_boot, seed=seed)
        part = lambda d: {"estimate": d["estimate"], "ci": d["ci"], "p": d["p"],  # noqa: E731
                          "text": stats.fmt_diff(d["estimate"], d["ci"])}
        return {"n_pairs": len(ks), "n_clusters": dd["gap"]["n_clusters"],
                "train": {"base": rate(t0, sum(1 for x in ks if not pt[x][0]["judged"])),
                          "round": rate(tk, sum(1 for x in ks if not pt[x][1]["judged"])),
                          "gain": part(dd["train_gain"])},
                "eval": {"base": rate(e0, sum(1 for x in ks if not pe[x][0]["judged"])),
                         "round": rate(ek, sum(1 for x in ks if not pe[x][1]["judged"])),
                         "gain": part(dd["eval_gain"])},
                "gap": {**part(dd["gap"]), "p_method": dd["gap"]["p_method"]}}

    overall = one(keys)
    cats: dict[str, list] = {}
    for x in keys:
        c = pt[x][0].get("category")
        cats.setdefault("?" if c is None else str(c), []).append(x)
    return clean({"kind": "reward_hacking", "run": run, "round": int(k), "base_round": int(base_round),
                  "split": split, "refined": refined, "threshold": thr, "train_judge": tj, "eval_judge": ej,
                  **overall,
                  "per_category": {c: {kk: v for kk, v in one(ks).items() if kk in ("n_pairs", "train", "eval", "gap")}
                                   for c, ks in sorted(cats.items())}})


# ---------------------------------------------------------------- rendering

def _ci_text(r: dict | None) -> str:
    if r is None:
        return "–"
    return r.get("text") or stats.fmt_ci(r["k"], r["n"])


def _compare_table(title: str, res: dict, j: str, data: dict):
    from rich.table import Table

    single = len(res["pairs"]) == 1
    t = Table(title=title, title_justify="left")
    for col in ("group", "pairs", f"A: {res['a']['label']}", f"B: {res['b']['label']}", "Δ B − A [95 % CI]", "p"):
        t.add_column(col, justify="left" if col == "group" else "right", no_wrap=col == "group")
    if single:
        t.add_column("McNemar p", justify="right")
    t.add_column("unjudged A / B", justify="right")

    def row(name: str, b: dict | None, style: str | None = None) -> None:
        if b is None:
            return
        cells = [name, str(b["n_pairs"]), _ci_text(b["a"]), _ci_text(b["b"]), b["diff"]["text"],
                 stats.fmt_p(b["diff"]["p"])]
        if single:
            cells.append(stats.fmt_p((b.get("mcnemar") or {}).get("p")))
        cells.append(f"{b['a'].get('n_unjudged', 0)} / {b['b'].get('n_unjudged', 0)}")
        t.add_row(*cells, style=style)

    row("overall", data["overall"], style="bold")
    for c, b in data["per_category"].items():
        row(f"  {c}", b)
    for lv, b in data["per_level"].items():
        row(f"  level {lv}", b)
    return t


def render(result: dict, console=None) -> None:
    """Prints a ``compare_*`` or ``reward_hacking_gap`` result as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if result.get("kind") == "reward_hacking":
        r = result
        t = Table(title=f"reward hacking: {r['run']} round {r['round']} vs {r['base_round']} ({r['split']}"
                        + (", refined" if r.get("refined") else "") + f", {r['n_pairs']} paired clips, "
                        f"{r['n_clusters']} prompt texts)", title_justify="left")
        for col in ("group", "judge", f"round {r['base_round']}", f"round {r['round']}", "gain [95 % CI]", "p"):
            t.add_column(col, justify="left" if col in ("group", "judge") else "right",
                         no_wrap=col in ("group", "judge"))
        groups = [("overall", r)] + [(f"  {c}", v) for c, v in r["per_category"].items()]
        for name, g in groups:
            for role, judge in (("train", r["train_judge"]), ("eval", r["eval_judge"])):
                s = g[role]
                t.add_row(name if role == "train" else "", f"{judge} ({role})", _ci_text(s["base"]),
                          _ci_text(s["round"]), s["gain"]["text"], stats.fmt_p(s["gain"]["p"]),
                          style="bold" if name == "overall" else None)
            t.add_row("", "gap (train − eval)", "", "", g["gap"]["text"], stats.fmt_p(g["gap"]["p"]),
                      style="bold" if name == "overall" else None, end_section=True)
        console.print(t)
        gap = r["gap"]
        lo = (gap.get("ci") or [None])[0]
        if lo is not None and lo > 0:
            console.print(f"[yellow]the training judge's gain exceeds {r['eval_judge']}'s by {gap['text']}: "
                          "possible reward hacking[/yellow]")
        else:
            console.print(f"gap {gap['text']}: no evidence that the gains are specific to the training judge")
        return
    res = result
    if res.get("round") is None:  # a compare_sides result: the sides say which rounds
        where = "; ".join(f"{p['a']} → {p['b']}" for p in res["pairs"])
    elif res.get("round_a", res["round"]) == res["round"]:
        where = f"round {res['round']}"
    else:
        where = f"rounds {res['round_a']} → {res['round']}"
    head = (f"A: {res['a']['label']}  vs  B: {res['b']['label']} ({where}, split {res['split']}"
            + (", refined prompts" if res.get("refined") else "") + f", {len(res['pairs'])} pair(s) of runs)")
    console.print(head)
    for j, data in res["judges"].items():
        console.print(_compare_table(f"judge {j}: joint success (sa, pc ≥ {res['threshold']:g}), Wilson 95 % CI",
                                     res, j, data))
        o = data["overall"]
        if o.get("over_seeds"):
            s = o["over_seeds"]
            console.print(f"  per-seed differences: {', '.join(f'{k}: {stats.fmt_diff(v, None)}' for k, v in o['per_stratum'].items())}"
                          f"; mean {stats.fmt_diff(s['mean'], s['ci'])} (t, {s['n']} seeds)")
        if data["unpaired"]["a"] or data["unpaired"]["b"]:
            console.print(f"  [yellow]unpaired clips left out: A {data['unpaired']['a']}, "
                          f"B {data['unpaired']['b']}[/yellow]")
    p_method = next((d["overall"]["diff"]["p_method"] for d in res["judges"].values()), "")
    console.print(f"[dim]Δ: paired, prompt texts resampled ({res['n_boot']} bootstrap draws); p: {p_method}[/dim]")


__all__ = ["Side", "clean", "write_json", "run_seed", "pair_runs_by_seed", "last_common_round", "judges_of",
           "clip_key", "paired_clips", "rate", "block", "compare_sides", "compare_runs", "compare_rounds",
           "reward_hacking_gap", "render"]
