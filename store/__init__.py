"""phyloop store: SQLite schema (sqlite-utils), artifacts and queries. Never imports torch."""

from .artifacts import (
    RunLayout,
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    default_db_path,
    path_bytes,
    read_video,
    remove_stale_temps,
    sha256_dir,
    sha256_file,
    sha256_path,
    validate_run_name,
    verify,
    write_video,
)
from .queries import JOINT_THRESHOLD
from .redact import REDACTED, redact, redact_text
from .schema import SCHEMA_VERSION, SchemaTooNew
from .store import EVAL_SPLITS, KINDS, REFINED_OFFSET, ROUND_STATUSES, RUN_STATUSES, SPLITS, Store, StoreError, round_prompt_id, video_id

__all__ = [
    "Store", "StoreError", "SchemaTooNew", "SCHEMA_VERSION", "JOINT_THRESHOLD", "SPLITS", "EVAL_SPLITS", "REFINED_OFFSET", "KINDS",
    "ROUND_STATUSES", "RUN_STATUSES", "round_prompt_id", "video_id",
    "RunLayout", "default_db_path", "validate_run_name", "atomic_open", "atomic_path", "atomic_write_bytes",
    "atomic_write_text", "remove_stale_temps", "sha256_file", "sha256_dir", "sha256_path", "path_bytes", "verify",
    "write_video", "read_video", "REDACTED", "redact", "redact_text",
]
