"""Importing a prompt data set (with optional real videos) into the store: ``agent data import``.

A data set is a JSONL or CSV file; each row is one prompt::

    {"prompt": "a glass falls off a table and shatters", "video": "clips/glass.mp4",
     "category": "breaking", "split": "train", "id": "glass-01"}

Only ``prompt`` is required. ``video`` is a path (relative to the file's folder, or
absolute) to a physically correct real video (.mp4, .gif or .npy) — PhyGDPO's winner for
that prompt. ``category`` is its action category (rows without one are matched to a
category list by sentence similarity, :mod:`agent.clustering`). ``split`` is ``train`` or
``heldout``; rows without one are split deterministically by a hash of their id, so the
same file always gives the same split. ``id`` names the row (default: its row number).

All-or-nothing: every row is validated first — missing or over-long prompt, unknown
column, unreadable video, duplicate prompt or id, bad split — and a file with any problem
is refused as a whole, with one line per problem naming the row, before anything is
copied or stored. A valid file's videos are copied (atomically) into
``<runs_dir>/datasets/<name>/`` and referenced relative to ``runs_dir`` with their sha256;
its prompts are stored in one transaction as sources ``train`` and ``heldout`` (the
loop's pool when ``data.source = "store"``), with ids ``<name>:<row id>``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from store import Store, atomic_path, default_db_path, read_video, sha256_file, validate_run_name
from store.artifacts import VIDEO_SUFFIXES

COLUMNS = ("prompt", "id", "video", "category", "split")
SPLITS = ("train", "heldout")
MAX_PROMPT_CHARS = 2000
MAX_CATEGORY_CHARS = 64
MAX_PROBLEMS = 20  # report at most this many problem lines (and say how many more there were)
DATASET_DIR = "datasets"
RESERVED_NAMES = ("world",)  # the built-in world's own pool uses ids "world:…"
_ROW_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


class DatasetError(ValueError):
    """A data set that cannot be imported; ``problems`` holds one line per problem."""

    def __init__(self, summary: str, problems: Sequence[str] = (), limit: int = MAX_PROBLEMS) -> None:
        self.summary = summary
        self.problems = list(problems)
        lines = [summary] + [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  … and {len(self.problems) - limit} more")
        super().__init__("\n".join(lines))


@dataclass
class Row:
    """One validated row, ready to store."""

    number: int  # 1-based data row
    id: str  # full prompt id "<name>:<row id>"
    text: str
    video: Path | None = None  # source file
    video_sha256: str | None = None
    category: str | None = None
    split: str | None = None  # given in the file; None → hash split


@dataclass
class ImportReport:
    name: str
    rows: list[dict]  # the stored prompt rows
    clustered: int = 0  # rows whose category came from clustering
    low_similarity: list[str] = field(default_factory=list)  # ids matched with little confidence
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> Counter:
        return Counter(r["source"] for r in self.rows)

    @property
    def categories(self) -> Counter:
        return Counter(r["category"] for r in self.rows)

    @property
    def videos(self) -> int:
        return sum(1 for r in self.rows if r.get("real_video"))


# ------------------------------------------------------------------ the deterministic split
def split_of(prompt_id: str, heldout_fraction: float) -> str:
    """``heldout`` for a ``heldout_fraction`` share of ids, ``train`` for the rest.

    The first 8 bytes of sha256(id) as a number in [0, 1): the same id always lands in the
    same split, on every machine, and the share converges to the fraction.
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout fraction must be in [0, 1], got {heldout_fraction}")
    u = int.from_bytes(hashlib.sha256(prompt_id.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "heldout" if u < heldout_fraction else "train"


def normalise_text(text: str) -> str:
    """What counts as "the same prompt": case and whitespace do not matter."""
    return " ".join(text.split()).casefold()


# ------------------------------------------------------------------ reading the file
def read_records(path: Path) -> tuple[list[tuple[int, int, Any]], list[str]]:
    """``([(row number, line number, record)], problems)`` of a JSONL or CSV file.

    Records are dicts (JSONL objects, CSV rows by header); a line that is not a JSON
    object becomes a problem. File-level faults (missing, empty, not UTF-8, unknown
    format) raise DatasetError at once.
    """
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(f"{path.name}: unknown format {path.suffix or '(no suffix)'!r}; "
                           f"use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"no data set file at {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(f"{path.name} is not UTF-8 text (line {line}, byte 0x{data[e.start]:02x}); "
                           "save it as UTF-8") from None
    if not text.strip():
        raise DatasetError(f"{path.name} is empty")
    return _read_jsonl(text) if fmt == "jsonl" else _read_csv(text, path.name)


def _read_jsonl(text: str) -> tuple[list[tuple[int, int, Any]], list[str]]:
    records, problems = [], []
    row = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"row {row} (line {line_no}): not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"row {row} (line {line_no}): expected a JSON object, got {type(obj).__name__}")
            continue
        records.append((row, line_no, obj))
    return records, problems


def _read_csv(text: str, name: str) -> tuple[list[tuple[int, int, Any]], list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as e:
        raise DatasetError(f"{name}: cannot read the CSV header ({e})") from None
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise DatasetError(f"{name}: unknown column(s) {', '.join(repr(h) for h in unknown)} in the header; "
                           f"allowed: {', '.join(COLUMNS)}")
    if "prompt" not in header:
        raise DatasetError(f"{name}: the header has no 'prompt' column (columns: {', '.join(header)})")
    dupes = [h for h, n in Counter(header).items() if n > 1]
    if dupes:
        raise DatasetError(f"{name}: column(s) {', '.join(repr(h) for h in dupes)} appear twice in the header")
    records, problems = [], []
    row = 0
    while True:
        line_no = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            problems.append(f"row {row + 1} (line {line_no}): malformed CSV ({e})")
            break
        if not any(v.strip() for v in values):
            continue  # blank line
        row += 1
        if len(values) > len(header):
            problems.append(f"row {row} (line {line_no}): {len(values)} fields but the header has {len(header)}")
            continue
        rec = {h: v for h, v in zip(header, values) if v.strip() != ""}
        records.append((row, line_no, rec))
    if row == 0 and not problems:
        raise DatasetError(f"{name} has a header but no rows")
    return records, problems


# ------------------------------------------------------------------ validation
def _text_field(rec: dict, key: str, where: str, problems: list[str]) -> str | None:
    value = rec.get(key)
    if value is None:
        return None
    if key == "id" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        problems.append(f"{where}: '{key}' must be a string, got {type(value).__name__}")
        return None
    value = value.strip()
    return value or None


def _check_video(value: str, base: Path, where: str, problems: list[str]) -> tuple[Path | None, str | None]:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        problems.append(f"{where}: video {value!r} must end in {', '.join(VIDEO_SUFFIXES)}")
        return None, None
    if not path.is_file():
        problems.append(f"{where}: video {value!r} does not exist")
        return None, None
    try:
        read_video(path)  # decode it fully: a truncated or corrupt file is caught here, not mid-training
    except Exception as e:  # noqa: BLE001 — any decoder failure makes the row bad
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        problems.append(f"{where}: cannot decode video {value!r} ({msg[:160]})")
        return None, None
    return path, sha256_file(path)


def validate_file(path: str | Path, name: str, *, stored_texts: dict[str, str] | None = None) -> list[Row]:
    """Reads and validates every row; returns them or raises DatasetError listing every problem.

    ``stored_texts`` maps normalised text → id of prompts already in the store, so a prompt
    imported twice (under two data set names) is caught too.
    """
    path = Path(path)
    records, problems = read_records(path)
    base = path.parent
    rows: list[Row] = []
    seen_text: dict[str, int] = {}
    seen_id: dict[str, int] = {}
    stored_texts = stored_texts or {}
    for number, line_no, rec in records:
        where = f"row {number} (line {line_no})"
        before = len(problems)
        unknown = sorted(k for k in rec if k not in COLUMNS)
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(repr(k) for k in unknown)}; "
                            f"allowed: {', '.join(COLUMNS)}")
        prompt = rec.get("prompt")
        text = _text_field(rec, "prompt", where, problems)
        if text is None and (prompt is None or isinstance(prompt, str)):
            problems.append(f"{where}: the prompt is missing or empty")
        elif text is not None and len(text) > MAX_PROMPT_CHARS:
            problems.append(f"{where}: the prompt has {len(text)} characters; at most {MAX_PROMPT_CHARS} allowed")
        row_id = _text_field(rec, "id", where, problems) or str(number)
        if not _ROW_ID.fullmatch(row_id):
            problems.append(f"{where}: id {row_id!r} must be 1–64 letters, digits, '.', '_' or '-' "
                            "(starting with a letter or digit)")
        elif row_id in seen_id:
            problems.append(f"{where}: duplicate id {row_id!r} (also row {seen_id[row_id]})")
        else:
            seen_id[row_id] = number
        category = _text_field(rec, "category", where, problems)
        if category is not None and len(category) > MAX_CATEGORY_CHARS:
            problems.append(f"{where}: category has {len(category)} characters; at most {MAX_CATEGORY_CHARS}")
        split = _text_field(rec, "split", where, problems)
        if split is not None:
            split = split.lower()
            if split not in SPLITS:
                problems.append(f"{where}: split {rec.get('split')!r} must be one of {', '.join(SPLITS)} "
                                "(or empty for the hash split)")
        if text is not None:
            key = normalise_text(text)
            if key in seen_text:
                problems.append(f"{where}: duplicate prompt (same text as row {seen_text[key]})")
            elif key in stored_texts:
                problems.append(f"{where}: duplicate prompt (already stored as {stored_texts[key]!r})")
            else:
                seen_text[key] = number
        video, digest = None, None
        value = _text_field(rec, "video", where, problems)
        if value is not None:
            video, digest = _check_video(value, base, where, problems)
        if len(problems) == before and text is not None:
            rows.append(Row(number, f"{name}:{row_id}", text, video, digest, category, split))
    if problems:
        n = len(problems)
        raise DatasetError(f"{path.name}: {n} problem{'s' if n != 1 else ''}; nothing was imported", problems)
    return rows


# ------------------------------------------------------------------ import
def dataset_name(path: Path, name: str | None) -> str:
    """The data set's name (default: the file name without suffix); it names ids and folders."""
    name = name if name is not None else path.stem
    try:
        validate_run_name(name)
    except ValueError as e:
        raise DatasetError(f"data set name: {str(e).replace('run name', 'name')}"
                           + ("" if name != path.stem else " (choose one with --name)")) from None
    if name in RESERVED_NAMES:
        raise DatasetError(f"data set name {name!r} is reserved for the built-in world; choose another --name")
    return name


def _existing(runs_dir: Path, name: str) -> tuple[dict[str, str], int]:
    """(normalised text → id of stored train/heldout prompts, prompts already under ``name``)."""
    db = default_db_path(runs_dir)
    if not db.is_file():  # do not create a database just to look into it
        return {}, 0
    with Store.open(db) as store:
        stored = store.dataset_prompts()
    texts = {normalise_text(p["text"]): p["id"] for p in stored if p.get("source") in SPLITS}
    mine = sum(1 for p in stored if p["id"].startswith(f"{name}:"))
    return texts, mine


def import_dataset(path: str | Path, runs_dir: str | Path, *, name: str | None = None,
                   heldout_fraction: float = 0.2, categories: str | Path = "general",
                   embed: Callable[[Sequence[str]], Any] | None = None,
                   min_similarity: float = 0.3) -> ImportReport:
    """Validates ``path`` fully, then copies its videos and stores its prompts (all or nothing).

    Raises DatasetError (nothing written) for any bad row, an existing data set of the
    same name, or a bad category list. ``categories`` (``general``, ``world`` or a file)
    is only used for rows without a category; matches below ``min_similarity`` are
    reported as uncertain.
    """
    from .clustering import assign_categories, load_categories

    path, runs_dir = Path(path), Path(runs_dir)
    if not 0.0 <= heldout_fraction < 1.0:
        raise DatasetError(f"--heldout-fraction must be in [0, 1), got {heldout_fraction}")
    name = dataset_name(path, name)
    try:
        cats = load_categories(categories)  # checked up front, even when every row has a category
    except ValueError as e:
        raise DatasetError(str(e)) from None
    stored_texts, mine = _existing(runs_dir, name)
    if mine:
        raise DatasetError(f"data set {name!r} already holds {mine} stored prompts; choose another --name")
    rows = validate_file(path, name, stored_texts=stored_texts)

    report = ImportReport(name, [])
    todo = [r for r in rows if r.category is None]
    if todo:
        for r, a in zip(todo, assign_categories([r.text for r in todo], cats, embed=embed)):
            r.category = a.category
            if a.similarity < min_similarity:
                report.low_similarity.append(f"{r.id} → {a.category} (similarity {a.similarity:.2f})")
        report.clustered = len(todo)

    folder = runs_dir / DATASET_DIR / name
    copied: list[Path] = []
    try:
        for r in rows:
            rel = None
            if r.video is not None:
                rel = f"{DATASET_DIR}/{name}/{r.id.split(':', 1)[1]}{r.video.suffix.lower()}"
                dest = runs_dir / rel
                with atomic_path(dest) as tmp:
                    shutil.copyfile(r.video, tmp)
                copied.append(dest)
                if sha256_file(dest) != r.video_sha256:
                    raise DatasetError(f"row {r.number}: video {r.video} changed while it was being imported")
            report.rows.append({
                "id": r.id, "text": r.text, "category": r.category, "level": None,
                "source": r.split or split_of(r.id, heldout_fraction),
                "real_video": rel, "real_sha256": r.video_sha256 if rel else None,
            })
        with Store.open(default_db_path(runs_dir)) as store:
            with store.transaction():
                if any(p["id"].startswith(f"{name}:") for p in store.dataset_prompts()):
                    raise DatasetError(f"data set {name!r} was imported by someone else meanwhile")
                store.upsert_prompts(report.rows)
    except BaseException:
        for p in copied:  # nothing refers to them: leave no orphans
            with contextlib.suppress(OSError):
                p.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()
        raise
    for split in SPLITS:
        if report.counts[split] == 0:
            report.warnings.append(f"no {split} prompts; a loop with data.source = 'store' needs both splits "
                                   "(change --heldout-fraction or add a 'split' column)")
    return report


def passes_filter(prompt: dict, threshold: float = 0.6) -> bool:
    """Whether a stored prompt row passed the CoT physics filter (uncurated rows pass).

    PhyAugPipe keeps only physics-rich data (Fig. 2 (c)); the planner can drop the rest
    with ``[p for p in pool if passes_filter(p)]``.
    """
    cur = prompt.get("curate")
    if not isinstance(cur, dict) or cur.get("physics_richness") is None:
        return True
    return float(cur["physics_richness"]) >= threshold
