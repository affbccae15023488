"""Plain helpers behind the built-in world's commands: render a real video, judge a file.

The ``agent`` CLI wires these into commands; they hold no CLI code themselves. Video files:
``.npy`` is lossless (what the judge sees is exactly what was rendered); ``.mp4`` (H.264)
and ``.gif`` are for people, so they are upscaled by an integer factor with nearest-
neighbour sampling (8× by default: a 32-pixel clip is unreadably small on screen) and the
judge scales them back to the world's size with area averaging.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reward.base import Score
from reward.video_io import check_video, decode_mp4, encode_mp4

from . import physics as P
from .judge import PhysicsJudge
from .simulator import LEVELS, Scene, render, sample_scene

VIDEO_SUFFIXES = (".npy", ".mp4", ".gif")
VIEW_SCALE = 8  # default upscaling of .mp4 / .gif files


def render_scene(family: str, seed: int, level: int = 1) -> tuple[np.ndarray, str, Scene]:
    """The real (simulated) video of scene ``(family, seed)`` and its prompt at ``level`` (0–2)."""
    if level not in LEVELS:
        raise ValueError(f"prompt level must be one of {LEVELS}, got {level}")
    scene = sample_scene(family, seed)
    return render(scene), scene.prompts[level], scene


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"unknown video format {path.suffix!r}; use one of {', '.join(VIDEO_SUFFIXES)}")
    return suffix


def save_video(path: str | Path, video: np.ndarray, *, scale: int | None = None, fps: float = P.FPS) -> Path:
    """Writes a uint8 ``(T, H, W, 3)`` video; ``scale`` defaults to 1 for .npy, 8 otherwise."""
    path = Path(path)
    suffix = _suffix(path)
    video = check_video(video)
    scale = (1 if suffix == ".npy" else VIEW_SCALE) if scale is None else int(scale)
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if scale > 1:
        video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, video, allow_pickle=False)
    elif suffix == ".mp4":
        path.write_bytes(encode_mp4(video, fps=fps, max_side=None))
    else:
        import imageio.v3 as iio

        iio.imwrite(path, video, extension=".gif", duration=1000.0 / fps, loop=0)
    return path


def load_video(path: str | Path) -> np.ndarray:
    """Reads a .npy / .mp4 / .gif video as uint8 ``(T, H, W, 3)`` (any frame size)."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path}")
    if suffix == ".npy":
        video = np.load(path, allow_pickle=False)
    elif suffix == ".mp4":
        video = decode_mp4(path.read_bytes())
    else:
        import imageio.v3 as iio

        video = np.asarray(iio.imread(path, index=None, mode="RGB"))
        if video.ndim == 3:
            video = video[None]
        video = _expand_gif_holds(path, video)
    return check_video(np.ascontiguousarray(video))


def _expand_gif_holds(path: Path, video: np.ndarray) -> np.ndarray:
    """GIF writers merge identical consecutive frames into one longer-shown frame (a block
    at rest would lose its last frames); repeat each frame by its duration over the
    shortest one to get the clip's real frame count back."""
    import imageio.v3 as iio

    try:
        durations = [float(iio.immeta(path, index=i).get("duration") or 0) for i in range(len(video))]
    except Exception:  # metadata unreadable: keep the frames as they are
        return video
    base = min((d for d in durations if d > 0), default=0.0)
    if base <= 0:
        return video
    repeats = [max(1, int(round(d / base))) if d > 0 else 1 for d in durations]
    return np.repeat(video, repeats, axis=0)


def render_to_file(family: str, seed: int, path: str | Path, level: int = 1, scale: int | None = None) -> dict:
    """Renders scene ``(family, seed)`` to ``path``; returns what was written (for printing)."""
    video, prompt, scene = render_scene(family, seed, level)
    out = save_video(path, video, scale=scale)
    return {"path": str(out), "scene": scene.id, "prompt": prompt, "prompts": list(scene.prompts),
            "frames": int(video.shape[0]), "size": int(video.shape[1])}


def judge_video(prompt: str, video: np.ndarray, judge: PhysicsJudge | None = None) -> Score:
    """The analytic judge's score of ``video`` against ``prompt``."""
    return (judge or PhysicsJudge()).score(prompt, video)


def judge_file(path: str | Path, prompt: str, judge: PhysicsJudge | None = None) -> Score:
    """Loads a video file and judges it against ``prompt`` (any size: it is scaled to the world's)."""
    return judge_video(prompt, load_video(path), judge)
