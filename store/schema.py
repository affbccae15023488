"""The phyloop SQLite schema: one table per kind of fact the loop produces.

Every row written by a loop node is keyed by a *natural key* (the columns marked PK
below), and every write is an upsert on that key, so re-running a node after a crash
rewrites the same rows instead of adding new ones. Text ids are built from the natural
key (run names may not contain ``:``, see ``artifacts.validate_run_name``)::

    round_prompts.id = "{run}:{round}:{split}:{idx}"
    videos.id        = "{round_prompts.id}:{kind}:{group_index}"

Times are ISO-8601 UTC strings. ``*_json`` columns hold JSON text. Booleans are 0/1.

================ ============================================================================
table            columns (PK = natural key; FK → parent, deleting the parent cascades)
================ ============================================================================
runs             name PK · created_at · updated_at · preset (preset file or name) ·
                 config_json (every config value, secrets redacted) · status
                 ('created'|'running'|'done'|'failed'|'stopped') · seed · notes
rounds           (run FK runs, round) PK · status ('running'|'done'|'failed') · started_at ·
                 finished_at · seconds (wall time of the round) · notes.
                 A round's rows are complete once its status is 'done' (marked last).
stage_times      (run, round FK rounds, stage) PK · seconds · finished_at
prompts          id PK · text · category · level (detail level of the text) · source ·
                 real_video (path of the physically correct video, if any) · real_sha256 ·
                 curate_json (why/how it was curated) · created_at.  The prompt *dataset*;
                 shared by all runs.
round_prompts    id PK · (run, round FK rounds, split 'train'|'heldout'|'seen'|'paraphrase', idx) unique ·
                 prompt_id FK prompts (nullable) · category · original (text before
                 refinement) · text (the text actually generated from) · parent_id FK
                 round_prompts (the earlier prompt this one continues refining; nullable) ·
                 refine_steps · critique (last critique) · similarity (text vs original)
refinements      (round_prompt_id FK round_prompts, step ≥ 1) PK · before · after ·
                 critique · similarity · accepted (1 if the rewrite was kept)
videos           id PK · run · round (FK rounds) · split · prompt_idx · round_prompt_id FK
                 round_prompts · kind ('generated'|'real'|'eval') · group_index · seed ·
                 prompt_text (exact conditioning text) · path (relative to the run folder)
                 · sha256 · adapter_round (round whose LoRA made it; NULL = base model) ·
                 frames · height · width · fps · created_at · latent_path · latent_sha256 (the
                 exact training latent of a clip whose video file is lossy, e.g. H.264; NULL
                 when the stored video itself is what training encodes)
scores           (video_id FK videos, judge) PK · sa · pc (both in [0, 1]) · accept ·
                 judged (0 when the judge gave no valid answer) · rationale · raw (the
                 judge's raw answer) · error (why unjudged) · attempts · seconds (latency)
                 · details_json · judged_prompt (the text the clip was judged against: the
                 user's original prompt, also for a clip made from a refined one) · created_at
train_steps      (run, round FK rounds, step) PK · loss · margin (implicit reward margin) ·
                 accuracy (preference accuracy) · grad_norm · lr · skipped · reason (why
                 skipped) · alpha_mean · gamma_mean (PGR weights) · extra_json
train_summaries  (run, round FK rounds) PK · objective · steps · groups_used ·
                 groups_skipped · skip_reasons_json ({reason: count}) · restored (1 when
                 the adapter was rolled back) · seconds · extra_json
evaluations      (run, round FK rounds, judge, refine 0|1, split) PK · n (clips) ·
                 n_judged · n_success (clips with sa ≥ t and pc ≥ t; an unjudged clip is a
                 failure) · n_accept · threshold (default 0.75) · joint_success =
                 n_success / n · mean_sa · mean_pc (over judged clips) · accept_rate =
                 n_accept / n · per_category_json and per_level_json ({category: {n,
                 n_success, joint_success, …}}) · created_at.  ``split`` is 'heldout'
                 (prompt texts never in the run's training pool), 'seen' (training
                 prompts, evaluation-only noise) or 'paraphrase'.
category_stats   (run, round FK rounds, category) PK · score S(k) · difficulty d_k = 1 − S(k)
                 · weight r_k = exp(τ·d_k) · allocation H_r(k) · available H_f(k)
adapters         (run, round FK rounds) PK · path (relative to the run folder) · sha256 ·
                 bytes · created_at
events           (run FK runs, round (−1 = not tied to a round), stage, kind, key) PK ·
                 count · message · created_at.  Faults and notable events (judge
                 timeouts, malformed answers, skipped groups, …); ``key`` names the
                 thing it happened to (e.g. a video id) so a retry overwrites, not adds.
================ ============================================================================

Versions (``PRAGMA user_version``): 0 = empty file; 1 = the tables above; 2 = indexes
for the dashboard's per-round queries; 3 = evaluation splits and counts (``evaluations``
rebuilt with ``split`` in its key, rows of older runs become split 'heldout' — measured on
the pre-v3 held-out pool, whose texts could also be training texts), ``scores.judged_prompt``; 4 = ``videos.latent_path``/``latent_sha256``. ``migrate`` applies the missing steps in order,
each in its own transaction, so opening an old database brings it up to date.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

_NOW = "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"

_V1 = f"""
CREATE TABLE runs (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL DEFAULT {_NOW},
    updated_at TEXT,
    preset TEXT,
    config_json TEXT NOT NULL DEFAULT '{{}}',
    status TEXT NOT NULL DEFAULT 'created',
    seed INTEGER,
    notes TEXT NOT NULL DEFAULT ''
);
CREATE TABLE rounds (
    run TEXT NOT NULL REFERENCES runs(name) ON DELETE CASCADE,
    round INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'running',
    started_at TEXT NOT NULL DEFAULT {_NOW},
    finished_at TEXT,
    seconds REAL,
    notes TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run, round)
);
CREATE TABLE stage_times (
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    stage TEXT NOT NULL,
    seconds REAL NOT NULL,
    finished_at TEXT NOT NULL DEFAULT {_NOW},
    PRIMARY KEY (run, round, stage),
    FOREIGN KEY (run, round) REFERENCES rounds(run, round) ON DELETE CASCADE
);
CREATE TABLE prompts (
    id TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    category TEXT,
    level INTEGER,
    source TEXT,
    real_video TEXT,
    real_sha256 TEXT,
    curate_json TEXT,
    created_at TEXT NOT NULL DEFAULT {_NOW}
);
CREATE TABLE round_prompts (
    id TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    split TEXT NOT NULL,
    idx INTEGER NOT NULL,
    prompt_id TEXT REFERENCES prompts(id),
    category TEXT,
    original TEXT NOT NULL,
    text TEXT NOT NULL,
    parent_id TEXT REFERENCES round_prompts(id) ON DELETE SET NULL,
    refine_steps INTEGER NOT NULL DEFAULT 0,
    critique TEXT,
    similarity REAL,
    UNIQUE (run, round, split, idx),
    FOREIGN KEY (run, round) REFERENCES rounds(run, round) ON DELETE CASCADE
);
CREATE TABLE refinements (
    round_prompt_id TEXT NOT NULL REFERENCES round_prompts(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    critique TEXT NOT NULL DEFAULT '',
    similarity REAL,
    accepted INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (round_prompt_id, step)
);
CREATE TABLE videos (
    id TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    split TEXT NOT NULL,
    prompt_idx INTEGER NOT NULL,
    round_prompt_id TEXT NOT NULL REFERENCES round_prompts(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    group_index INTEGER NOT NULL,
    seed INTEGER,
    prompt_text TEXT,
    path TEXT NOT NULL,
    sha256 TEXT,
    adapter_round INTEGER,
    frames INTEGER,
    height INTEGER,
    width INTEGER,
    fps REAL,
    created_at TEXT NOT NULL DEFAULT {_NOW},
    FOREIGN KEY (run, round) REFERENCES rounds(run, round) ON DELETE CASCADE
);
CREATE TABLE scores (
    video_id TEXT NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
    judge TEXT NOT NULL,
    sa REAL,
    pc REAL,
    accept INTEGER,
    judged INTEGER NOT NULL DEFAULT 1,
    rationale TEXT NOT NULL DEFAULT '',
    raw TEXT NOT NULL DEFAULT '',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    seconds REAL,
    details_json TEXT,
    created_at TEXT NOT NULL DEFAULT {_NOW},
    PRIMARY KEY (video_id, judge)
);
CREATE TABLE train_steps (
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    step INTEGER NOT NULL,
    loss REAL,
    margin REAL,
    accuracy REAL,
    grad_norm REAL,
    lr REAL,
    skipped INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    alpha_mean REAL,
    gamma_mean REAL,
    extra_json TEXT,
    PRIMARY KEY (run, round, step),
    FOREIGN KEY (run, round) REFERENCES rounds(run, round) ON DELETE CASCADE
);
CREATE TABLE train_summaries (
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    objective TEXT NOT NULL,
    steps INTEGER NOT NULL DEFAULT 0,
    groups_used INTEGER NOT NULL DEFAULT 0,
    groups_skipped INTEGER NOT NULL DEFAULT 0,
    skip_reasons_json TEXT NOT NULL DEFAULT '{{}}',
    restored INTEGER NOT NULL DEFAULT 0,
    seconds REAL,
    extra_json TEXT,
    PRIMARY KEY (run, round),
    FOREIGN KEY (run, round) REFERENCES rounds(run, round) ON DELETE CASCADE
);
CREATE TABLE evaluations (
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    judge TEXT NOT NULL,
    refine INTEGER NOT NULL DEFAULT 0,
    n INTEGER NOT NULL,
    threshold REAL NOT NULL DEFAULT 0.75,
    joint_success REAL,
    mean_sa REAL,
    mean_pc REAL,
    accept_rate REAL,
    per_category_json TEXT,
    created_at TEXT NOT NULL DEFAULT {_NOW},
    PRIMARY KEY (run, round, judge, refine),
    FOREIGN KEY (run, round) REFERENCES rounds(run, round) ON DELETE CASCADE
);
CREATE TABLE category_stats (
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    category TEXT NOT NULL,
    score REAL,
    difficulty REAL,
    weight REAL,
    allocation INTEGER,
    available INTEGER,
    PRIMARY KEY (run, round, category),
    FOREIGN KEY (run, round) REFERENCES rounds(run, round) ON DELETE CASCADE
);
CREATE TABLE adapters (
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL DEFAULT {_NOW},
    PRIMARY KEY (run, round),
    FOREIGN KEY (run, round) REFERENCES rounds(run, round) ON DELETE CASCADE
);
CREATE TABLE events (
    run TEXT NOT NULL REFERENCES runs(name) ON DELETE CASCADE,
    round INTEGER NOT NULL DEFAULT -1,
    stage TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    key TEXT NOT NULL DEFAULT '',
    count INTEGER NOT NULL DEFAULT 1,
    message TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL DEFAULT {_NOW},
    PRIMARY KEY (run, round, stage, kind, key)
);
"""

_V2 = """
CREATE INDEX videos_by_round ON videos (run, round, split, kind);
CREATE INDEX round_prompts_by_round ON round_prompts (run, round, split);
CREATE INDEX scores_by_judge ON scores (judge);
CREATE INDEX events_by_kind ON events (run, kind);
"""

_V3 = """
CREATE TABLE evaluations_v3 (
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    judge TEXT NOT NULL,
    refine INTEGER NOT NULL DEFAULT 0,
    split TEXT NOT NULL DEFAULT 'heldout',
    n INTEGER NOT NULL,
    n_judged INTEGER,
    n_success INTEGER,
    n_accept INTEGER,
    threshold REAL NOT NULL DEFAULT 0.75,
    joint_success REAL,
    mean_sa REAL,
    mean_pc REAL,
    accept_rate REAL,
    per_category_json TEXT,
    per_level_json TEXT,
    created_at TEXT NOT NULL DEFAULT {now},
    PRIMARY KEY (run, round, judge, refine, split),
    FOREIGN KEY (run, round) REFERENCES rounds(run, round) ON DELETE CASCADE
);
INSERT INTO evaluations_v3 (run, round, judge, refine, split, n, threshold, joint_success, mean_sa, mean_pc,
                            accept_rate, per_category_json, created_at)
    SELECT run, round, judge, refine, 'heldout', n, threshold, joint_success, mean_sa, mean_pc, accept_rate,
           per_category_json, created_at FROM evaluations;
DROP TABLE evaluations;
ALTER TABLE evaluations_v3 RENAME TO evaluations;
ALTER TABLE scores ADD COLUMN judged_prompt TEXT
""".replace("{now}", _NOW)


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    """A migration that runs ``sql`` statement by statement (inside the caller's transaction)."""

    def apply(conn: sqlite3.Connection) -> None:
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)

    return apply


#: ``MIGRATIONS[i]`` takes a database at version ``i`` to version ``i + 1``.
_V4 = """
ALTER TABLE videos ADD COLUMN latent_path TEXT;
ALTER TABLE videos ADD COLUMN latent_sha256 TEXT
"""

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_script(_V1), _script(_V2), _script(_V3), _script(_V4)]
SCHEMA_VERSION = len(MIGRATIONS)

#: The natural key of every table (what upserts match on).
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "runs": ("name",),
    "rounds": ("run", "round"),
    "stage_times": ("run", "round", "stage"),
    "prompts": ("id",),
    "round_prompts": ("id",),
    "refinements": ("round_prompt_id", "step"),
    "videos": ("id",),
    "scores": ("video_id", "judge"),
    "train_steps": ("run", "round", "step"),
    "train_summaries": ("run", "round"),
    "evaluations": ("run", "round", "judge", "refine", "split"),
    "category_stats": ("run", "round", "category"),
    "adapters": ("run", "round"),
    "events": ("run", "round", "stage", "kind", "key"),
}


class SchemaTooNew(RuntimeError):
    """The database was written by a newer phyloop than this one."""


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: list | None = None) -> int:
    """Bring the database up to ``len(migrations)``; returns the version it ended at.

    Each step runs under ``BEGIN IMMEDIATE`` and re-reads ``user_version`` inside the
    transaction, so two processes opening the same old file at once apply each step
    exactly once (the second waits on the busy timeout, then sees the new version).
    """
    migrations = MIGRATIONS if migrations is None else migrations
    target = len(migrations)
    if user_version(conn) > target:
        raise SchemaTooNew(
            f"database schema version {user_version(conn)} is newer than this phyloop's {target}; upgrade phyloop"
        )
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = user_version(conn)
            if version >= target:
                conn.execute("COMMIT")
                return version
            migrations[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
