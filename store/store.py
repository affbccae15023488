"""``Store``: the one door to phyloop's SQLite database (writes here, reads in ``queries``).

Concurrency model. The file is in WAL mode, so one writer and any number of readers
(the dashboard, ``agent show``, another process) work at once; ``busy_timeout`` makes a
second writer wait instead of failing with "database is locked". Every write
transaction starts with ``BEGIN IMMEDIATE`` — a deferred transaction that reads first
and then writes can hit SQLITE_BUSY *without* waiting, the classic source of "locked"
errors under WAL. Every read method runs in one read transaction, so it sees a single
committed snapshot even while a writer is busy.

Idempotency. Every write method is an upsert keyed by the row's natural key
(``schema.PRIMARY_KEYS``), so a loop node that crashes and runs again rewrites the same
rows. Wrap a whole stage in ``with store.transaction():`` to make it all-or-nothing,
and mark the round done last (``finish_round``): readers asking for finished rounds
then never see a half-written one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import sqlite_utils

from .artifacts import validate_run_name
from .queries import Queries
from .redact import redact, redact_text, secret_values
from .schema import PRIMARY_KEYS, SCHEMA_VERSION, migrate, user_version

SPLITS = ("train", "heldout", "seen", "paraphrase")
EVAL_SPLITS = ("heldout", "seen", "paraphrase")  # the evaluation splits, in report order
REFINED_OFFSET = 1_000_000  # evaluation prompt idx of the refined variant of prompt idx (same split, own rows)
KINDS = ("generated", "real", "eval")
ROUND_STATUSES = ("running", "done", "failed")
RUN_STATUSES = ("created", "running", "done", "failed", "stopped")


class StoreError(RuntimeError):
    """A write the schema refused (e.g. a row that refers to a round that was never started)."""


def now() -> str:
    """Current UTC time as the ISO-8601 text the schema uses."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def round_prompt_id(run: str, round: int, split: str, idx: int) -> str:
    """Deterministic id of a round prompt: ``"{run}:{round}:{split}:{idx}"``."""
    return f"{run}:{int(round)}:{split}:{int(idx)}"


def video_id(run: str, round: int, split: str, prompt_idx: int, kind: str, group_index: int) -> str:
    """Deterministic id of a video: ``"{run}:{round}:{split}:{prompt_idx}:{kind}:{group_index}"``."""
    return f"{round_prompt_id(run, round, split, prompt_idx)}:{kind}:{int(group_index)}"


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def _check(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
    return value


def _relative(path: str | Path) -> str:
    """Artifact paths are stored relative to the run folder, so a run folder can move."""
    p = Path(path)
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(f"store paths relative to the run folder, without '..'; got {str(path)!r}")
    return p.as_posix()


def _fields(score: Any) -> dict:
    """A judge's Score (dataclass), a mapping, or any object with the same attributes → dict."""
    if dataclasses.is_dataclass(score) and not isinstance(score, type):
        return dataclasses.asdict(score)
    if isinstance(score, Mapping):
        return dict(score)
    return dict(vars(score))


def _enable_wal(conn: sqlite3.Connection) -> None:
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        conn.execute("PRAGMA journal_mode = WAL")


def _retry_locked(fn, timeout: float) -> None:
    """Run ``fn``, retrying while SQLite says "locked": switching the journal mode needs the
    database to itself and SQLite reports that at once instead of using the busy timeout
    (two processes opening a fresh file together hit it)."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class Store(Queries):
    """phyloop's database. Open with ``Store.open(path)``; use as a context manager to close."""

    def __init__(self, db: sqlite_utils.Database, path: Path | None) -> None:
        self.db = db
        self.conn: sqlite3.Connection = db.conn
        self.path = path
        self._lock = threading.RLock()  # one connection, shared safely by threads

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: str | Path, *, timeout: float = 30.0) -> "Store":
        """Opens (creating folders and file if needed) and migrates the database at ``path``.

        ``":memory:"`` gives a private in-memory database (tests). ``timeout`` is the
        busy timeout in seconds: how long a write waits for another writer.
        """
        memory = str(path) == ":memory:"
        if not memory:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            db = sqlite_utils.Database(conn)
            if not memory:
                _retry_locked(lambda: _enable_wal(conn), timeout)
                conn.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes in WAL
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return cls(db, None if memory else path)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return user_version(self.conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Store"]:
        """All writes inside commit together or not at all (nested blocks are savepoints)."""
        with self._lock:
            if self.conn.in_transaction:
                with self.db.atomic():  # a savepoint inside the open transaction
                    yield self
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[None]:
        """One read transaction: all queries inside see the same committed snapshot."""
        with self._lock:
            if self.conn.in_transaction:
                yield
                return
            self.conn.execute("BEGIN")
            try:
                yield
            finally:
                self.conn.execute("COMMIT")

    def _upsert(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        rows = [dict(r) for r in rows]
        if not rows:
            return
        with self.transaction():
            try:
                self.db[table].upsert_all(rows, pk=PRIMARY_KEYS[table], alter=False)
            except sqlite3.IntegrityError as e:
                raise StoreError(
                    f"cannot write {table}: {e} (the run, round, prompt or video it refers to must exist first)"
                ) from e

    def _exec(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        with self.transaction():
            try:
                return self.conn.execute(sql, tuple(params))
            except sqlite3.IntegrityError as e:
                raise StoreError(f"{e} (the run it refers to must exist first)") from e

    # ------------------------------------------------------------ runs and rounds

    def create_run(self, name: str, config: Mapping[str, Any] | None = None, *, preset: str | None = None,
                   seed: int | None = None, notes: str = "", status: str = "created",
                   secret_env: Iterable[str] = ()) -> None:
        """Creates or updates run ``name``; ``config`` is stored as JSON after ``redact``.

        ``secret_env`` names extra environment variables whose values must never be
        stored (the usual API-key variables are always covered). ``created_at`` is kept
        when the run already exists.
        """
        validate_run_name(name)
        _check(status, RUN_STATUSES, "run status")
        safe = redact(dict(config or {}), secret_env)
        self._upsert("runs", [{
            "name": name, "preset": preset, "config_json": _json(safe), "status": status,
            "seed": seed, "notes": redact_text(notes, secret_values(secret_env)), "updated_at": now(),
        }])

    def set_run_status(self, name: str, status: str) -> None:
        """Sets a run's status: one of ``RUN_STATUSES``."""
        _check(status, RUN_STATUSES, "run status")
        if self._exec("UPDATE runs SET status = ?, updated_at = ? WHERE name = ?", (status, now(), name)).rowcount == 0:
            raise KeyError(f"no run named {name!r}")

    def delete_run(self, name: str) -> None:
        """Deletes a run and every row that belongs to it (files on disk are left alone)."""
        self._exec("DELETE FROM runs WHERE name = ?", (name,))

    def start_round(self, run: str, round: int) -> None:
        """Marks round ``round`` as running (again, if it is being redone). Call before its rows."""
        self._exec(
            "INSERT INTO rounds (run, round, status, started_at) VALUES (?, ?, 'running', ?) "
            "ON CONFLICT (run, round) DO UPDATE SET status = 'running', started_at = excluded.started_at, "
            "finished_at = NULL, seconds = NULL",
            (run, int(round), now()),
        )

    def finish_round(self, run: str, round: int, status: str = "done", notes: str | None = None) -> None:
        """Marks a round done (or failed): call last, after all of the round's rows are written."""
        _check(status, ROUND_STATUSES, "round status")
        t = now()
        cur = self._exec(
            "UPDATE rounds SET status = ?, finished_at = ?, notes = COALESCE(?, notes), "
            "seconds = (julianday(?) - julianday(started_at)) * 86400.0 WHERE run = ? AND round = ?",
            (status, t, notes, t, run, int(round)),
        )
        if cur.rowcount == 0:
            raise KeyError(f"run {run!r} has no round {round}; call start_round first")

    def record_stage_time(self, run: str, round: int, stage: str, seconds: float) -> None:
        """Wall time of one stage (plan, refine, generate, judge, train, evaluate, checkpoint)."""
        self._upsert("stage_times", [{"run": run, "round": int(round), "stage": stage,
                                      "seconds": float(seconds), "finished_at": now()}])

    # ------------------------------------------------------------ prompts

    def upsert_prompts(self, prompts: Iterable[Mapping[str, Any]]) -> int:
        """Adds or updates dataset prompts; returns how many were written.

        Each mapping has ``id`` and ``text`` and optionally ``category``, ``level``,
        ``source``, ``real_video``, ``real_sha256`` and ``curate`` (any JSON-able value).
        """
        rows = []
        for p in prompts:
            p = dict(p)
            if not p.get("id") or not p.get("text"):
                raise ValueError(f"a dataset prompt needs an 'id' and a 'text', got keys {sorted(p)}")
            has_curate = "curate" in p
            curate = p.pop("curate", None)
            unknown = set(p) - {"id", "text", "category", "level", "source", "real_video", "real_sha256"}
            if unknown:
                raise ValueError(f"unknown dataset prompt fields: {sorted(unknown)}")
            if has_curate:  # a row without the key keeps the curation already stored
                p["curate_json"] = _json(curate)
            rows.append(p)
        self._upsert("prompts", rows)
        return len(rows)

    def record_round_prompt(self, run: str, round: int, split: str, idx: int, *, text: str,
                            original: str | None = None, prompt_id: str | None = None,
                            category: str | None = None, parent_id: str | None = None,
                            refine_steps: int = 0, critique: str | None = None,
                            similarity: float | None = None) -> str:
        """The ``idx``-th prompt planned for ``split`` in this round; returns its id.

        ``text`` is what the generator is conditioned on, ``original`` what the planner
        picked (defaults to ``text``), ``prompt_id`` the dataset prompt, ``parent_id`` an
        earlier round prompt this one continues refining.
        """
        _check(split, SPLITS, "split")
        rid = round_prompt_id(run, round, split, idx)
        self._upsert("round_prompts", [{
            "id": rid, "run": run, "round": int(round), "split": split, "idx": int(idx),
            "prompt_id": prompt_id, "category": category, "original": text if original is None else original,
            "text": text, "parent_id": parent_id, "refine_steps": int(refine_steps), "critique": critique,
            "similarity": similarity,
        }])
        return rid

    def record_refinement(self, round_prompt_id: str, step: int, *, before: str, after: str,
                          critique: str = "", similarity: float | None = None, accepted: bool = True) -> None:
        """Refinement step ``step`` (1, 2, …) of a round prompt: ``before`` → ``after`` and why."""
        self._upsert("refinements", [{
            "round_prompt_id": round_prompt_id, "step": int(step), "before": before, "after": after,
            "critique": critique, "similarity": similarity, "accepted": bool(accepted),
        }])

    # ------------------------------------------------------------ videos and scores

    def record_video(self, run: str, round: int, split: str, prompt_idx: int, kind: str, group_index: int, *,
                     path: str, sha256: str | None = None, seed: int | None = None,
                     prompt_text: str | None = None, adapter_round: int | None = None,
                     frames: int | None = None, height: int | None = None, width: int | None = None,
                     fps: float | None = None, latent_path: str | None = None,
                     latent_sha256: str | None = None) -> str:
        """A video file of the round (``path`` relative to the run folder); returns its id.

        The round prompt ``(run, round, split, prompt_idx)`` must already be recorded.
        ``adapter_round`` is the round whose LoRA generated it (None: the base model).
        ``latent_path``/``latent_sha256``: the file holding the clip's exact training latent, kept
        when the video file is lossy so a resumed round trains on the same data.
        """
        _check(split, SPLITS, "split")
        _check(kind, KINDS, "video kind")
        vid = video_id(run, round, split, prompt_idx, kind, group_index)
        self._upsert("videos", [{
            "id": vid, "run": run, "round": int(round), "split": split, "prompt_idx": int(prompt_idx),
            "round_prompt_id": round_prompt_id(run, round, split, prompt_idx), "kind": kind,
            "group_index": int(group_index), "seed": seed, "prompt_text": prompt_text, "path": _relative(path),
            "sha256": sha256, "adapter_round": adapter_round, "frames": frames, "height": height,
            "width": width, "fps": fps, "latent_path": None if latent_path is None else _relative(latent_path),
            "latent_sha256": latent_sha256,
        }])
        return vid

    def record_score(self, video_id: str, judge: str, score: Any, *, attempts: int = 1,
                     seconds: float | None = None, judged_prompt: str | None = None) -> None:
        """A judge's verdict on a video (one row per (video, judge); re-judging overwrites).

        ``judged_prompt`` is the text the clip was judged against (the user's original prompt,
        also when the clip was generated from a refined one).

        ``score`` is a ``reward.base.Score`` or anything with its fields (``sa``, ``pc``,
        ``accept``, ``rationale``, ``raw``, ``judged``, ``error``, ``details``).
        """
        s = _fields(score)
        judged = bool(s.get("judged", True))
        error = s.get("error")
        self._upsert("scores", [{
            "video_id": video_id, "judge": judge,
            "sa": None if s.get("sa") is None else float(s["sa"]),
            "pc": None if s.get("pc") is None else float(s["pc"]),
            "accept": None if s.get("accept") is None else bool(s["accept"]),
            "judged": judged, "rationale": s.get("rationale") or "", "raw": s.get("raw") or "",
            "error": None if error is None else redact_text(str(error), secret_values()),
            "attempts": int(attempts), "seconds": seconds, "details_json": _json(s.get("details") or None),
            "judged_prompt": judged_prompt,
        }])

    # ------------------------------------------------------------ training

    def record_train_step(self, run: str, round: int, step: int, *, loss: float | None = None,
                          margin: float | None = None, accuracy: float | None = None,
                          grad_norm: float | None = None, lr: float | None = None, skipped: bool = False,
                          reason: str | None = None, alpha_mean: float | None = None,
                          gamma_mean: float | None = None, extra: Mapping[str, Any] | None = None) -> None:
        """One optimiser step's diagnostics (``skipped`` steps keep their ``reason``)."""
        self._upsert("train_steps", [{
            "run": run, "round": int(round), "step": int(step), "loss": loss, "margin": margin,
            "accuracy": accuracy, "grad_norm": grad_norm, "lr": lr, "skipped": bool(skipped), "reason": reason,
            "alpha_mean": alpha_mean, "gamma_mean": gamma_mean, "extra_json": _json(extra),
        }])

    def record_train_summary(self, run: str, round: int, *, objective: str, steps: int = 0,
                             groups_used: int = 0, groups_skipped: int = 0,
                             skip_reasons: Mapping[str, int] | None = None, restored: bool = False,
                             seconds: float | None = None, extra: Mapping[str, Any] | None = None) -> None:
        """The train stage of a round: objective, groups used/skipped (``{reason: count}``),
        and whether the adapter was restored to the previous round's."""
        self._upsert("train_summaries", [{
            "run": run, "round": int(round), "objective": objective, "steps": int(steps),
            "groups_used": int(groups_used), "groups_skipped": int(groups_skipped),
            "skip_reasons_json": _json(dict(skip_reasons or {})), "restored": bool(restored),
            "seconds": seconds, "extra_json": _json(extra),
        }])

    def record_adapter(self, run: str, round: int, *, path: str, sha256: str, bytes: int) -> None:
        """The LoRA adapter saved after round ``round`` (``path`` relative to the run folder)."""
        self._upsert("adapters", [{"run": run, "round": int(round), "path": _relative(path), "sha256": sha256,
                                   "bytes": int(bytes)}])

    # ------------------------------------------------------------ evaluation and planning

    def record_evaluation(self, run: str, round: int, judge: str, *, n: int, joint_success: float | None,
                          mean_sa: float | None, mean_pc: float | None, accept_rate: float | None,
                          refine: bool = False, threshold: float = 0.75, split: str = "heldout",
                          n_judged: int | None = None, n_success: int | None = None, n_accept: int | None = None,
                          per_category: Mapping[str, Any] | None = None,
                          per_level: Mapping[str, Any] | None = None) -> None:
        """Evaluation of the round's model on ``split`` by ``judge`` (``refine``: prompts were refined).

        ``n`` counts every clip, judged or not; ``n_success`` / ``n_accept`` count the clips that
        passed (an unjudged clip is a failure), so intervals can be computed from the row alone.
        """
        _check(split, EVAL_SPLITS, "evaluation split")
        self._upsert("evaluations", [{
            "run": run, "round": int(round), "judge": judge, "refine": bool(refine), "split": split, "n": int(n),
            "n_judged": n_judged, "n_success": n_success, "n_accept": n_accept,
            "threshold": float(threshold), "joint_success": joint_success, "mean_sa": mean_sa,
            "mean_pc": mean_pc, "accept_rate": accept_rate, "per_category_json": _json(per_category),
            "per_level_json": _json(per_level),
        }])

    def record_category_stats(self, run: str, round: int, rows: Iterable[Mapping[str, Any]]) -> None:
        """The planner's per-category numbers for a round; replaces the round's previous set.

        Each row: ``category``, ``score`` S(k), ``difficulty`` d_k, ``weight`` r_k,
        ``allocation`` H_r(k), ``available`` H_f(k).
        """
        keys = ("category", "score", "difficulty", "weight", "allocation", "available")
        records = []
        for r in rows:
            unknown = set(r) - set(keys)
            if unknown or "category" not in r:
                raise ValueError(f"category stats rows need 'category' and only {keys}; got {sorted(r)}")
            records.append({"run": run, "round": int(round), **{k: r.get(k) for k in keys}})
        with self.transaction():
            self.conn.execute("DELETE FROM category_stats WHERE run = ? AND round = ?", (run, int(round)))
            self._upsert("category_stats", records)

    # ------------------------------------------------------------ events

    def record_event(self, run: str, kind: str, *, round: int | None = None, stage: str = "", key: str = "",
                     count: int = 1, message: str = "") -> None:
        """A fault or notable event (e.g. ``kind="judge_timeout"``, ``key=video_id``).

        Keyed by (run, round, stage, kind, key): recording the same event again
        overwrites its count and message, so retries do not inflate ``fault_counts``.
        """
        self._upsert("events", [{
            "run": run, "round": -1 if round is None else int(round), "stage": stage, "kind": kind, "key": key,
            "count": int(count), "message": redact_text(str(message), secret_values()),
        }])


__all__ = ["Store", "StoreError", "SPLITS", "EVAL_SPLITS", "REFINED_OFFSET", "KINDS", "ROUND_STATUSES", "RUN_STATUSES", "SCHEMA_VERSION",
           "round_prompt_id", "video_id", "now"]
