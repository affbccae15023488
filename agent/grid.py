"""A round's preference groups as one video: each row a prompt, its winner beside its losers.

The winner (the real video, green frame) comes first, then the generated clips in group
order, framed green when the judge accepted them and red when it rejected them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from store import read_video, write_video

GREEN, RED, GREY = (40, 200, 60), (220, 40, 40), (90, 90, 90)


def _framed(video: np.ndarray, colour, pad: int) -> np.ndarray:
    t, h, w, _ = video.shape
    out = np.empty((t, h + 2 * pad, w + 2 * pad, 3), dtype=np.uint8)
    out[:] = colour
    out[:, pad:pad + h, pad:pad + w] = video
    return out


def _fit(video: np.ndarray, frames: int, h: int, w: int) -> np.ndarray:
    """Same frame count (repeat the last) and size (nearest neighbour) for tiling."""
    if video.shape[0] < frames:
        video = np.concatenate([video, np.repeat(video[-1:], frames - video.shape[0], axis=0)])
    video = video[:frames]
    if video.shape[1:3] != (h, w):
        ys = (np.arange(h) * video.shape[1] / h).astype(int)
        xs = (np.arange(w) * video.shape[2] / w).astype(int)
        video = video[:, ys][:, :, xs]
    return video


def round_grid(store, layout, run: str, k: int, runs_dir: Path, judge: str | None = None,
               scale: int = 1) -> np.ndarray:
    """uint8 (T, H, W, 3) grid of round ``k``'s training groups."""
    detail = store.round_detail(run, k)
    if detail is None:
        raise ValueError(f"run {run!r} has no round {k}")
    prompts = [p for p in detail["prompts"] if p["split"] == "train"]
    if not prompts:
        raise ValueError(f"round {k} of run {run!r} has no training groups")
    real_paths = {p["id"]: p.get("real_video") for p in store.dataset_prompts()}
    rows = []
    for p in prompts:
        row = []
        real = real_paths.get(p["prompt_id"])
        if real:
            row.append((read_video(Path(runs_dir) / real), GREEN))
        for v in sorted((v for v in detail["videos"] if v["split"] == "train" and v["prompt_idx"] == p["idx"]
                         and v["kind"] == "generated"), key=lambda v: v["group_index"]):
            s = next((s for s in v["scores"] if judge is None or s["judge"] == judge), None)
            colour = GREY if s is None or not s["judged"] else (GREEN if s["accept"] else RED)
            row.append((read_video(layout.path(v["path"])), colour))
        rows.append(row)
    frames = max(v.shape[0] for row in rows for v, _ in row)
    h = max(v.shape[1] for row in rows for v, _ in row) * scale
    w = max(v.shape[2] for row in rows for v, _ in row) * scale
    width = max(len(r) for r in rows)
    pad = max(1, h // 32)
    tiles = []
    for row in rows:
        cells = [_framed(_fit(v, frames, h, w), c, pad) for v, c in row]
        while len(cells) < width:
            cells.append(np.zeros_like(cells[0]))
        tiles.append(np.concatenate(cells, axis=2))
    return np.concatenate(tiles, axis=1)


def write_round_grid(store, layout, run: str, k: int, runs_dir: Path, out: Path, fps: float = 8.0) -> Path:
    scale = 1 if out.suffix == ".npy" else 4
    grid = round_grid(store, layout, run, k, runs_dir, scale=scale)
    if grid.shape[1] % 2 or grid.shape[2] % 2:
        grid = np.pad(grid, ((0, 0), (0, grid.shape[1] % 2), (0, grid.shape[2] % 2), (0, 0)))
    write_video(out, grid, fps=fps)
    return out
