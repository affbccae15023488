"""The read side of ``Store``: what the dashboard, ``agent show``, replay and the planner ask.

Every method runs inside one read transaction (``Store._read``), so a method's several
SQL queries see the same committed snapshot. Metrics over "the round" only count the
policy's own generations on training prompts (``kind='generated'``, ``split='train'``);
held-out numbers come from ``evaluations``.
"""

from __future__ import annotations

import json

JOINT_THRESHOLD = 0.75  # VideoPhy-2 joint success: sa and pc both ≥ 4 of 5, i.e. ≥ 0.75 normalised
OPEN_CLOSE_STEPS = 10  # steps averaged for a round's opening and closing loss


def _loads(row: dict, *columns: str) -> dict:
    """Parses ``x_json`` columns into ``x`` (the JSON text column is dropped)."""
    for col in columns:
        text = row.pop(col, None)
        row[col[: -len("_json")]] = None if text is None else json.loads(text)
    return row


class Queries:
    """Read methods mixed into ``Store`` (needs ``self.db`` and ``self._read``)."""

    def _rows(self, sql: str, params: tuple | list = ()) -> list[dict]:
        return list(self.db.query(sql, tuple(params)))

    def _one(self, sql: str, params: tuple | list = ()) -> dict | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    # ------------------------------------------------------------ runs

    def list_runs(self) -> list[dict]:
        """All runs, oldest first: name, created_at, updated_at, preset, status, seed, notes,
        ``rounds_done`` (finished rounds) and ``last_round`` (highest started round or None)."""
        with self._read():
            return self._rows(
                "SELECT r.name, r.created_at, r.updated_at, r.preset, r.status, r.seed, r.notes, "
                "(SELECT COUNT(*) FROM rounds d WHERE d.run = r.name AND d.status = 'done') AS rounds_done, "
                "(SELECT MAX(round) FROM rounds d WHERE d.run = r.name) AS last_round "
                "FROM runs r ORDER BY r.created_at, r.name"
            )

    def get_run(self, name: str) -> dict | None:
        """One run with its ``config`` parsed from JSON, or None."""
        with self._read():
            row = self._one("SELECT * FROM runs WHERE name = ?", (name,))
        return None if row is None else _loads(row, "config_json")

    def completed_rounds(self, run: str) -> list[int]:
        """Rounds of ``run`` whose status is 'done', ascending."""
        with self._read():
            return [r["round"] for r in self._rows(
                "SELECT round FROM rounds WHERE run = ? AND status = 'done' ORDER BY round", (run,))]

    def round_status(self, run: str, round: int) -> str | None:
        """'running', 'done', 'failed', or None when the round was never started."""
        with self._read():
            row = self._one("SELECT status FROM rounds WHERE run = ? AND round = ?", (run, int(round)))
        return None if row is None else row["status"]

    # ------------------------------------------------------------ per-round metrics

    def round_metrics(self, run: str, *, done_only: bool = True, judge: str | None = None,
                      threshold: float = JOINT_THRESHOLD) -> list[dict]:
        """One dict per round, ascending (only finished rounds unless ``done_only=False``).

        Keys: ``round``, ``status``, ``seconds``; over the round's generated train videos
        (scores of ``judge``, or of every judge pooled when None): ``n_videos``,
        ``n_judged``, ``n_unjudged``, ``n_accept``, ``n_joint``, ``accept_rate`` and
        ``joint_success`` (shares of *all* videos, an unjudged one counting as a failure;
        joint: sa and pc ≥ ``threshold``), ``mean_sa``, ``mean_pc``, ``mean_score`` ((sa+pc)/2,
        over judged videos);
        held-out (split 'heldout'), from ``evaluations`` (averaged over judges when ``judge`` is
        None): ``heldout_joint_success``, ``heldout_mean_sa``, ``heldout_mean_pc``,
        ``heldout_accept_rate`` (unrefined prompts) and ``heldout_joint_success_refined``;
        ``evaluations``: every evaluation row of the round (each judge, split and refine, with
        its counts ``n``, ``n_judged``, ``n_success``, ``n_accept`` for intervals);
        training: ``n_steps``, ``n_skipped_steps``, ``loss``, ``margin``, ``accuracy``,
        ``saturated`` (share of pairs beyond the sigmoid's linear range; means over steps that were
        not skipped), ``loss_open`` / ``loss_close`` (mean loss of the round's first / last
        ``OPEN_CLOSE_STEPS`` steps), ``objective``, ``groups_used``,
        ``groups_skipped``, ``restored``; ``stage_times`` ({stage: seconds}).
        Absent data gives None (or 0 for counts).
        """
        status_filter = "AND status = 'done'" if done_only else ""
        judge_on = "AND s.judge = ?" if judge else ""
        judge_args = (judge,) if judge else ()
        eval_judge = "AND judge = ?" if judge else ""
        with self._read():
            rounds = self._rows(
                f"SELECT round, status, seconds FROM rounds WHERE run = ? {status_filter} ORDER BY round", (run,))
            videos = {r["round"]: r for r in self._rows(
                "SELECT v.round, COUNT(DISTINCT v.id) AS n_videos, "
                "COALESCE(SUM(s.judged = 1), 0) AS n_judged, COALESCE(SUM(s.judged = 0), 0) AS n_unjudged, "
                "COALESCE(SUM(s.judged = 1 AND s.accept = 1), 0) AS n_accept, "
                "COALESCE(SUM(s.judged = 1 AND s.sa >= ? AND s.pc >= ?), 0) AS n_joint, "
                "AVG(CASE WHEN s.judged THEN s.sa END) AS mean_sa, "
                "AVG(CASE WHEN s.judged THEN s.pc END) AS mean_pc, "
                "AVG(CASE WHEN s.judged THEN (s.sa + s.pc) / 2.0 END) AS mean_score "
                f"FROM videos v LEFT JOIN scores s ON s.video_id = v.id {judge_on} "
                "WHERE v.run = ? AND v.kind = 'generated' AND v.split = 'train' GROUP BY v.round",
                (threshold, threshold, *judge_args, run))}
            evals = {(r["round"], r["refine"]): r for r in self._rows(
                "SELECT round, refine, AVG(joint_success) AS joint_success, AVG(mean_sa) AS mean_sa, "
                f"AVG(mean_pc) AS mean_pc, AVG(accept_rate) AS accept_rate FROM evaluations WHERE run = ? {eval_judge} "
                "AND split = 'heldout' GROUP BY round, refine", (run, *judge_args))}
            eval_rows: dict[int, list[dict]] = {}
            for r in self._rows("SELECT round, judge, refine, split, n, n_judged, n_success, n_accept, joint_success, "
                                "accept_rate, mean_sa, mean_pc FROM evaluations WHERE run = ? "
                                "ORDER BY round, split, refine, judge", (run,)):
                eval_rows.setdefault(r.pop("round"), []).append(r)
            steps = {r["round"]: r for r in self._rows(
                "SELECT round, COUNT(*) AS n_steps, COALESCE(SUM(skipped), 0) AS n_skipped_steps, "
                "AVG(CASE WHEN NOT skipped THEN loss END) AS loss, AVG(CASE WHEN NOT skipped THEN margin END) AS margin, "
                "AVG(CASE WHEN NOT skipped THEN accuracy END) AS accuracy, "
                "AVG(CASE WHEN NOT skipped THEN json_extract(extra_json, '$.saturated') END) AS saturated "
                "FROM train_steps WHERE run = ? GROUP BY round", (run,))}
            # the round's opening and closing loss: means over its first / last OPEN_CLOSE_STEPS steps
            ends = {r["round"]: r for r in self._rows(
                "SELECT s.round, AVG(CASE WHEN s.step < ? THEN s.loss END) AS loss_open, "
                "AVG(CASE WHEN s.step >= m.last - ? THEN s.loss END) AS loss_close "
                "FROM train_steps s JOIN (SELECT round, MAX(step) + 1 AS last FROM train_steps WHERE run = ? "
                "GROUP BY round) m ON m.round = s.round WHERE s.run = ? AND NOT s.skipped GROUP BY s.round",
                (OPEN_CLOSE_STEPS, OPEN_CLOSE_STEPS, run, run))}
            summaries = {r["round"]: r for r in self._rows(
                "SELECT round, objective, groups_used, groups_skipped, restored FROM train_summaries WHERE run = ?",
                (run,))}
            stage_times: dict[int, dict[str, float]] = {}
            for r in self._rows("SELECT round, stage, seconds FROM stage_times WHERE run = ? ORDER BY finished_at",
                                (run,)):
                stage_times.setdefault(r["round"], {})[r["stage"]] = r["seconds"]

        out = []
        for r in rounds:
            k = r["round"]
            v = videos.get(k, {})
            ev, ev_ref = evals.get((k, 0), {}), evals.get((k, 1), {})
            st, sm = steps.get(k, {}), summaries.get(k, {})
            n = v.get("n_videos", 0)
            out.append({
                "round": k, "status": r["status"], "seconds": r["seconds"],
                "n_videos": n, "n_judged": v.get("n_judged", 0),
                "n_unjudged": v.get("n_unjudged", 0), "n_accept": v.get("n_accept", 0),
                "n_joint": v.get("n_joint", 0), "accept_rate": v["n_accept"] / n if n else None,
                "mean_sa": v.get("mean_sa"), "mean_pc": v.get("mean_pc"), "mean_score": v.get("mean_score"),
                "joint_success": v["n_joint"] / n if n else None,
                "heldout_joint_success": ev.get("joint_success"), "heldout_mean_sa": ev.get("mean_sa"),
                "heldout_mean_pc": ev.get("mean_pc"), "heldout_accept_rate": ev.get("accept_rate"),
                "heldout_joint_success_refined": ev_ref.get("joint_success"),
                "n_steps": st.get("n_steps", 0), "n_skipped_steps": st.get("n_skipped_steps", 0),
                "loss": st.get("loss"), "margin": st.get("margin"), "accuracy": st.get("accuracy"),
                "saturated": st.get("saturated"), "loss_open": ends.get(k, {}).get("loss_open"),
                "loss_close": ends.get(k, {}).get("loss_close"),
                "objective": sm.get("objective"), "groups_used": sm.get("groups_used"),
                "groups_skipped": sm.get("groups_skipped"),
                "restored": None if not sm else bool(sm["restored"]),
                "stage_times": stage_times.get(k, {}), "evaluations": eval_rows.get(k, []),
            })
        return out

    def round_detail(self, run: str, round: int) -> dict | None:
        """Everything about one round, or None if it was never started.

        Keys: ``round`` (the rounds row), ``prompts`` (round prompts, each with its
        ``refinements`` before → after with critique), ``videos`` (each with ``scores``),
        ``training`` ({``summary``, ``steps``}), ``evaluations``, ``category_stats``,
        ``stage_times``, ``adapter``, ``events``.
        """
        k = int(round)
        with self._read():
            head = self._one("SELECT * FROM rounds WHERE run = ? AND round = ?", (run, k))
            if head is None:
                return None
            prompts = self._rows("SELECT * FROM round_prompts WHERE run = ? AND round = ? ORDER BY split DESC, idx",
                                 (run, k))
            refinements: dict[str, list] = {}
            for r in self._rows(
                    "SELECT f.* FROM refinements f JOIN round_prompts p ON p.id = f.round_prompt_id "
                    "WHERE p.run = ? AND p.round = ? ORDER BY f.round_prompt_id, f.step", (run, k)):
                refinements.setdefault(r["round_prompt_id"], []).append(r)
            videos = self._rows(
                "SELECT * FROM videos WHERE run = ? AND round = ? ORDER BY split DESC, prompt_idx, kind, group_index",
                (run, k))
            scores: dict[str, list] = {}
            for r in self._rows(
                    "SELECT s.* FROM scores s JOIN videos v ON v.id = s.video_id WHERE v.run = ? AND v.round = ? "
                    "ORDER BY s.video_id, s.judge", (run, k)):
                scores.setdefault(r["video_id"], []).append(_loads(r, "details_json"))
            summary = self._one("SELECT * FROM train_summaries WHERE run = ? AND round = ?", (run, k))
            steps = [_loads(r, "extra_json") for r in self._rows(
                "SELECT * FROM train_steps WHERE run = ? AND round = ? ORDER BY step", (run, k))]
            evaluations = [_loads(r, "per_category_json", "per_level_json") for r in self._rows(
                "SELECT * FROM evaluations WHERE run = ? AND round = ? ORDER BY split, judge, refine", (run, k))]
            cats = self._rows("SELECT * FROM category_stats WHERE run = ? AND round = ? ORDER BY category", (run, k))
            times = {r["stage"]: r["seconds"] for r in self._rows(
                "SELECT stage, seconds FROM stage_times WHERE run = ? AND round = ? ORDER BY finished_at", (run, k))}
            adapter = self._one("SELECT * FROM adapters WHERE run = ? AND round = ?", (run, k))
            events = self._rows("SELECT * FROM events WHERE run = ? AND round = ? ORDER BY kind, stage, key", (run, k))
        for p in prompts:
            p["refinements"] = refinements.get(p["id"], [])
        for v in videos:
            v["scores"] = scores.get(v["id"], [])
        if summary is not None:
            _loads(summary, "skip_reasons_json", "extra_json")
        return {"round": head, "prompts": prompts, "videos": videos,
                "training": {"summary": summary, "steps": steps}, "evaluations": evaluations,
                "category_stats": cats, "stage_times": times, "adapter": adapter, "events": events}

    # ------------------------------------------------------------ planning

    def category_stats(self, run: str, round: int | None = None) -> list[dict]:
        """The planner's rows for ``round`` (default: the latest round that has any)."""
        with self._read():
            if round is None:
                latest = self._one("SELECT MAX(round) AS r FROM category_stats WHERE run = ?", (run,))
                if latest is None or latest["r"] is None:
                    return []
                round = latest["r"]
            return self._rows(
                "SELECT category, score, difficulty, weight, allocation, available, round "
                "FROM category_stats WHERE run = ? AND round = ? ORDER BY category", (run, int(round)))

    def latest_category_scores(self, run: str, *, before_round: int | None = None,
                               judge: str | None = None) -> dict[str, float]:
        """S(k) for the difficulty planner: mean (sa+pc)/2 per category in the latest judged round.

        "Latest judged round" is the highest round (below ``before_round`` when given, so
        a redone round never reads its own partial scores) with at least one judged
        generated train video. Categories come from the round prompts. Returns ``{}``
        before any round was judged.
        """
        judge_on = "AND s.judge = ?" if judge else ""
        judge_args = (judge,) if judge else ()
        below = "AND v.round < ?" if before_round is not None else ""
        below_args = (int(before_round),) if before_round is not None else ()
        base = (f"FROM videos v JOIN scores s ON s.video_id = v.id {judge_on} "
                "JOIN round_prompts p ON p.id = v.round_prompt_id "
                f"WHERE v.run = ? AND v.kind = 'generated' AND v.split = 'train' AND s.judged = 1 {below}")
        with self._read():
            latest = self._one(f"SELECT MAX(v.round) AS r {base}", (*judge_args, run, *below_args))
            if latest is None or latest["r"] is None:
                return {}
            rows = self._rows(
                f"SELECT p.category, AVG((s.sa + s.pc) / 2.0) AS score {base} AND v.round = ? "
                "AND p.category IS NOT NULL GROUP BY p.category ORDER BY p.category",
                (*judge_args, run, *below_args, latest["r"]))
        return {r["category"]: r["score"] for r in rows}

    # ------------------------------------------------------------ dataset prompts and their history

    def dataset_prompts(self, *, source: str | None = None, category: str | None = None) -> list[dict]:
        """Dataset prompts (of one ``source`` / ``category`` when given), ordered by id."""
        clauses, args = ["1 = 1"], []
        for col, val in (("source", source), ("category", category)):
            if val is not None:
                clauses.append(f"{col} = ?")
                args.append(val)
        with self._read():
            rows = self._rows(f"SELECT * FROM prompts WHERE {' AND '.join(clauses)} ORDER BY id", args)
        return [_loads(r, "curate_json") for r in rows]

    def prompt_usage(self, run: str, *, split: str = "train") -> dict[str, int]:
        """``{prompt_id: rounds it was planned in}`` for a run's split (the planner spreads use)."""
        with self._read():
            rows = self._rows("SELECT prompt_id, COUNT(*) AS n FROM round_prompts WHERE run = ? AND split = ? "
                              "AND prompt_id IS NOT NULL GROUP BY prompt_id", (run, split))
        return {r["prompt_id"]: r["n"] for r in rows}

    def prompt_history(self, run: str, prompt_id: str, *, before_round: int, judge: str | None = None,
                       split: str = "train") -> list[dict]:
        """Earlier rounds' uses of a dataset prompt, oldest first: what the critic looks back on.

        One dict per (round prompt, generated video) with ``round``, ``round_prompt_id``,
        ``text`` (what was generated from), ``original``, ``video_id``, ``path``, ``group_index``,
        and the score of ``judge`` (``sa``, ``pc``, ``accept``, ``judged``, ``rationale``,
        ``details``; None when unscored).
        """
        judge_on = "AND s.judge = ?" if judge else ""
        args = ((judge,) if judge else ()) + (run, prompt_id, split, int(before_round))
        with self._read():
            rows = self._rows(
                "SELECT p.round, p.id AS round_prompt_id, p.text, p.original, v.id AS video_id, v.path, "
                "v.group_index, s.sa, s.pc, s.accept, s.judged, s.rationale, s.details_json "
                f"FROM round_prompts p JOIN videos v ON v.round_prompt_id = p.id AND v.kind = 'generated' "
                f"LEFT JOIN scores s ON s.video_id = v.id {judge_on} "
                "WHERE p.run = ? AND p.prompt_id = ? AND p.split = ? AND p.round < ? "
                "ORDER BY p.round, v.group_index", args)
        return [_loads(r, "details_json") for r in rows]

    # ------------------------------------------------------------ faults, files, resumption

    def fault_counts(self, run: str, round: int | None = None) -> dict[str, int]:
        """``{kind: total count}`` of the run's events (of one round when given)."""
        where, args = ("AND round = ?", (run, int(round))) if round is not None else ("", (run,))
        with self._read():
            rows = self._rows(f"SELECT kind, SUM(count) AS n FROM events WHERE run = ? {where} "
                              "GROUP BY kind ORDER BY kind", args)
        return {r["kind"]: r["n"] for r in rows}

    def events(self, run: str, round: int | None = None) -> list[dict]:
        """The run's events (of one round when given; run-level events have round −1)."""
        where, args = ("AND round = ?", (run, int(round))) if round is not None else ("", (run,))
        with self._read():
            return self._rows(f"SELECT * FROM events WHERE run = ? {where} ORDER BY round, kind, stage, key", args)

    def round_prompts(self, run: str, round: int, split: str | None = None) -> list[dict]:
        """The round's prompts (of one split when given), ordered by split then index."""
        where, args = ("AND split = ?", (run, int(round), split)) if split else ("", (run, int(round)))
        with self._read():
            return self._rows(f"SELECT * FROM round_prompts WHERE run = ? AND round = ? {where} "
                              "ORDER BY split DESC, idx", args)

    def videos(self, run: str, round: int | None = None, *, split: str | None = None,
               kind: str | None = None) -> list[dict]:
        """Video rows of a run, filtered by round / split / kind when given."""
        clauses, args = ["run = ?"], [run]
        for col, val in (("round", round), ("split", split), ("kind", kind)):
            if val is not None:
                clauses.append(f"{col} = ?")
                args.append(val)
        with self._read():
            return self._rows(f"SELECT * FROM videos WHERE {' AND '.join(clauses)} "
                              "ORDER BY round, split DESC, prompt_idx, kind, group_index", args)

    def unscored_videos(self, run: str, round: int, judge: str, *, split: str | None = None) -> list[dict]:
        """Videos of a round that ``judge`` has no score row for: what a resumed judge stage still owes."""
        where, args = ("AND v.split = ?", (judge, run, int(round), split)) if split else ("", (judge, run, int(round)))
        with self._read():
            return self._rows(
                "SELECT v.* FROM videos v LEFT JOIN scores s ON s.video_id = v.id AND s.judge = ? "
                f"WHERE v.run = ? AND v.round = ? AND s.video_id IS NULL {where} "
                "ORDER BY v.split DESC, v.prompt_idx, v.kind, v.group_index", args)

    def scores(self, video_id: str) -> list[dict]:
        """Every judge's score row for one video (``details`` parsed)."""
        with self._read():
            rows = self._rows("SELECT * FROM scores WHERE video_id = ? ORDER BY judge", (video_id,))
        return [_loads(r, "details_json") for r in rows]

    def train_steps(self, run: str, round: int) -> list[dict]:
        """The round's optimiser steps, ascending (``extra`` parsed)."""
        with self._read():
            rows = self._rows("SELECT * FROM train_steps WHERE run = ? AND round = ? ORDER BY step", (run, int(round)))
        return [_loads(r, "extra_json") for r in rows]

    def adapter(self, run: str, round: int | None = None, *, done_only: bool = False) -> dict | None:
        """The adapter saved after ``round`` — or, when None, the latest one (of a finished
        round when ``done_only``): what a resumed run loads before generating."""
        with self._read():
            if round is not None:
                return self._one("SELECT * FROM adapters WHERE run = ? AND round = ?", (run, int(round)))
            join = "JOIN rounds r ON r.run = a.run AND r.round = a.round AND r.status = 'done'" if done_only else ""
            return self._one(f"SELECT a.* FROM adapters a {join} WHERE a.run = ? ORDER BY a.round DESC LIMIT 1",
                             (run,))

    def clip_outcomes(self, run: str, round: int, *, judge: str, split: str = "heldout",
                      refined: bool = False, threshold: float = JOINT_THRESHOLD) -> list[dict]:
        """Every evaluation clip of a round on ``split``, with ``judge``'s verdict: what paired comparisons use.

        One dict per clip (``kind = 'eval'``), ordered by prompt then clip: ``video_id``,
        ``prompt_idx``, ``group_index``, ``seed``, ``prompt_id``, ``category``, ``level`` (of
        the dataset prompt), ``original`` (the user's prompt), ``text`` (what was generated
        from), ``judged`` (0 when unjudged or not scored by ``judge``), ``sa``, ``pc``,
        ``success`` (1 when judged with sa and pc ≥ ``threshold``; an unjudged clip is 0) and
        ``accept``. ``refined`` picks the refined variants (``prompt_idx ≥ REFINED_OFFSET``).
        """
        from .store import REFINED_OFFSET

        cmp = ">=" if refined else "<"
        with self._read():
            rows = self._rows(
                "SELECT v.id AS video_id, v.prompt_idx, v.group_index, v.seed, rp.prompt_id, rp.category, "
                "p.level, rp.original, rp.text, COALESCE(s.judged, 0) AS judged, s.sa, s.pc, "
                "CASE WHEN s.judged AND s.sa >= ? AND s.pc >= ? THEN 1 ELSE 0 END AS success, "
                "CASE WHEN s.judged AND s.accept THEN 1 ELSE 0 END AS accept "
                "FROM videos v JOIN round_prompts rp ON rp.id = v.round_prompt_id "
                "LEFT JOIN prompts p ON p.id = rp.prompt_id "
                "LEFT JOIN scores s ON s.video_id = v.id AND s.judge = ? "
                f"WHERE v.run = ? AND v.round = ? AND v.split = ? AND v.kind = 'eval' AND v.prompt_idx {cmp} ? "
                "ORDER BY v.prompt_idx, v.group_index",
                (threshold, threshold, judge, run, int(round), split, REFINED_OFFSET))
        return rows

    def has_pre_split_evaluations(self, run: str) -> bool:
        """Whether the run was evaluated before schema v3 (evaluation rows without counts): its
        held-out prompts then came from a pool whose texts could also be training texts."""
        with self._read():
            return self._one("SELECT 1 AS x FROM evaluations WHERE run = ? AND n_success IS NULL LIMIT 1",
                             (run,)) is not None

    def table_counts(self) -> dict[str, int]:
        """Rows per table (diagnostics and idempotency tests)."""
        with self._read():
            names = [r["name"] for r in self._rows(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
            return {n: self._one(f'SELECT COUNT(*) AS n FROM "{n}"')["n"] for n in names}


__all__ = ["Queries", "JOINT_THRESHOLD"]
