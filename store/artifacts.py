"""Run folders and the files in them: videos and adapters, written atomically, with hashes.

Layout of one run (paths stored in the database are relative to the run folder)::

    <runs_root>/<name>/
        videos/round_003/train/p012_generated_g1.npy
        videos/round_003/train/p012_real_g0.npy
        videos/round_003/heldout/p004_eval_g0.npy
        adapters/round_003/            (whatever the generator's save_adapter writes)

Every file is written to a temporary name in the destination folder, flushed and
fsynced, then renamed over the final name (``os.replace`` is atomic on POSIX), so a
crash leaves either the old file or the new one, never half of one. A hard kill can
leave a ``.<name>.tmp-…`` file behind; ``remove_stale_temps`` clears them.

Videos are ``uint8`` arrays ``(T, H, W, 3)``. ``.npy`` is lossless (the built-in world
uses it so the judge sees exactly what the generator made); ``.mp4`` (H.264 through
imageio-ffmpeg) and ``.gif`` are for people and real-world models.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import numpy as np

_RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_RUN_NAME = 64
VIDEO_SUFFIXES = (".npy", ".mp4", ".gif")
_TEMP_MARK = ".tmp-"


# ---------------------------------------------------------------- names and layout


def validate_run_name(name: str) -> str:
    """Returns ``name`` if it is a safe folder name, else raises a one-line ValueError.

    Allowed: 1–64 characters from ``[A-Za-z0-9._-]``, not starting with a dot (no hidden
    folders, no ``.``/``..``) and not containing ``..``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("run name must be a non-empty string")
    if len(name) > MAX_RUN_NAME:
        raise ValueError(f"run name is {len(name)} characters; at most {MAX_RUN_NAME} allowed")
    if "/" in name or "\\" in name or os.sep in name:
        raise ValueError(f"run name {name!r} must not contain a path separator")
    if ".." in name:
        raise ValueError(f"run name {name!r} must not contain '..'")
    if name.startswith("."):
        raise ValueError(f"run name {name!r} must not start with a dot")
    if not _RUN_NAME.fullmatch(name):
        raise ValueError(f"run name {name!r} may only use letters, digits, '.', '_' and '-'")
    return name


@dataclass(frozen=True)
class RunLayout:
    """Where a run's files go. ``RunLayout(root, name).run_dir == root / name``."""

    root: Path
    name: str

    def __post_init__(self) -> None:
        validate_run_name(self.name)
        object.__setattr__(self, "root", Path(self.root))

    @property
    def run_dir(self) -> Path:
        return self.root / self.name

    @property
    def videos_dir(self) -> Path:
        return self.run_dir / "videos"

    @property
    def adapters_dir(self) -> Path:
        return self.run_dir / "adapters"

    def video_relpath(self, round: int, split: str, prompt_idx: int, kind: str, group_index: int,
                      suffix: str = ".npy") -> str:
        """Relative path (to ``run_dir``) of one video; the same arguments always give the same path."""
        if suffix not in VIDEO_SUFFIXES:
            raise ValueError(f"video suffix must be one of {VIDEO_SUFFIXES}, got {suffix!r}")
        return f"videos/round_{round:03d}/{split}/p{prompt_idx:03d}_{kind}_g{group_index}{suffix}"

    def adapter_relpath(self, round: int) -> str:
        """Relative path (to ``run_dir``) of the folder holding round ``round``'s adapter."""
        return f"adapters/round_{round:03d}"

    def path(self, relpath: str) -> Path:
        """Absolute path of a stored relative path; refuses paths that escape the run folder."""
        full = (self.run_dir / relpath).resolve()
        base = self.run_dir.resolve()
        if full != base and base not in full.parents:
            raise ValueError(f"path {relpath!r} escapes the run folder {self.run_dir}")
        return full


def default_db_path(runs_root: str | Path) -> Path:
    """The database shared by all runs under ``runs_root`` (so ``list_runs`` sees them all)."""
    return Path(runs_root) / "phyloop.db"


# ---------------------------------------------------------------- atomic writes


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` that keeps its suffix (encoders look at it)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}{_TEMP_MARK}", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp's 0600 would make published files private
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write ``path``'s content to; publishes it on success.

    For writers that insist on opening the file themselves (video encoders). On any
    exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """``open`` for writing, atomically: readers see the old file or the complete new one."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_open writes whole files; mode must be 'w', 'wt' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Deletes temporary files a killed writer left under ``directory``; returns them."""
    removed = []
    for p in Path(directory).rglob(f".*{_TEMP_MARK}*"):
        if p.is_file():
            p.unlink()
            removed.append(p)
    return removed


# ---------------------------------------------------------------- hashes


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: str | Path) -> str:
    """Hash of a folder's content: every file's relative path and bytes, in sorted order.

    Independent of timestamps and of the order the filesystem lists files in; temporary
    files of unfinished atomic writes are ignored.
    """
    root = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and _TEMP_MARK not in p.name)
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """``sha256_dir`` for folders, ``sha256_file`` for files."""
    path = Path(path)
    if path.is_dir():
        return sha256_dir(path)
    if path.is_file():
        return sha256_file(path)
    raise FileNotFoundError(f"no file or folder at {path}")


def path_bytes(path: str | Path) -> int:
    """Size of a file, or the total size of the files in a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def verify(path: str | Path, sha256: str) -> bool:
    """True when the file or folder at ``path`` exists and hashes to ``sha256``."""
    try:
        return sha256_path(path) == sha256
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- videos


def _check_video(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 1:
        raise ValueError(f"video must be uint8 (T, H, W, 3) with T ≥ 1, got {video.dtype} {video.shape}")
    return np.ascontiguousarray(video)


def write_video(path: str | Path, video: np.ndarray, fps: float = 8.0) -> str:
    """Writes a ``uint8 (T, H, W, 3)`` video atomically; returns the file's sha256.

    The suffix picks the format: ``.npy`` (lossless), ``.mp4`` (H.264, yuv420p, so height
    and width must be even) or ``.gif``.
    """
    path = Path(path)
    video = _check_video(video)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with atomic_open(path, "wb") as f:
            np.save(f, video, allow_pickle=False)
    elif suffix == ".mp4":
        if video.shape[1] % 2 or video.shape[2] % 2:
            raise ValueError(f"mp4 (yuv420p) needs even height and width, got {video.shape[1]}×{video.shape[2]}")
        import imageio.v2 as imageio

        with atomic_path(path) as tmp:
            # macro_block_size=1: keep the exact size (imageio would otherwise pad to 16).
            writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                        quality=10, pixelformat="yuv420p", macro_block_size=1)
            try:
                for frame in video:
                    writer.append_data(frame)
            finally:
                writer.close()
    elif suffix == ".gif":
        import imageio.v3 as iio

        with atomic_path(path) as tmp:
            iio.imwrite(tmp, video, extension=".gif", duration=1000.0 / fps, loop=0)
    else:
        raise ValueError(f"unknown video format {path.suffix!r}; use one of {VIDEO_SUFFIXES}")
    return sha256_file(path)


def read_video(path: str | Path) -> np.ndarray:
    """Reads a video written by ``write_video`` (or any mp4/gif) as ``uint8 (T, H, W, 3)``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"no video at {path}")
    if suffix == ".npy":
        video = np.load(path, allow_pickle=False)
    elif suffix == ".mp4":
        import imageio.v2 as imageio

        reader = imageio.get_reader(path, format="FFMPEG")
        try:
            video = np.stack([np.asarray(frame) for frame in reader])
        finally:
            reader.close()
    elif suffix == ".gif":
        import imageio.v3 as iio

        video = np.asarray(iio.imread(path, index=None, mode="RGB"))
        if video.ndim == 3:  # a single-frame gif
            video = video[None]
    else:
        raise ValueError(f"unknown video format {path.suffix!r}; use one of {VIDEO_SUFFIXES}")
    return _check_video(video)
