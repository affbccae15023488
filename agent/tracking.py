"""Experiment tracking: a run's curves in TensorBoard or Weights & Biases (`agent run --log-with`).

The store stays the record; trackers get a copy of what users of peer trainers expect to watch,
through accelerate's trackers (``accelerate.tracking``):

* every optimizer step (x = the trainer's global step): ``train/loss``, ``margin``, ``accuracy``,
  ``grad_norm``, ``lr``, ``saturated``, ``t_mean`` and the peer baselines' own diagnostics;
* every finished round (x = the round): per judge and evaluation split, held-out joint success
  with its Wilson 95 % bounds and per category; the round's training-clip accept rate, seconds;
* a few winner-vs-loser frame grids per round (``log.grids``): the winner's frames over time on
  the top row, its worst-scored loser's below.

Trackers write from the process that drives the loop (rank 0). wandb runs offline unless
``WANDB_API_KEY`` is set, so nothing leaves the machine by default.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from agent.stats import wilson

log = logging.getLogger(__name__)

#: the per-step record keys sent to the trackers (when present and finite)
STEP_KEYS = ("loss", "margin", "accuracy", "grad_norm", "lr", "saturated", "t_mean", "alpha_mean", "gamma_mean",
             "r_mean", "ratio_mean", "clip_fraction", "kl")


class TrackerError(RuntimeError):
    """A tracker that cannot start (its library is missing)."""


def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


class Tracking:
    """The run's trackers; a no-op when ``log.trackers`` is empty."""

    def __init__(self, cfg, run: str, run_dir: Path):
        self.cfg = cfg
        self.trackers = []
        self.logging_dir = Path(cfg.logging_dir) if cfg.logging_dir else Path(run_dir) / "logs"
        for name in cfg.trackers:
            self.trackers.append(self._start(name, run))

    def _start(self, name: str, run: str):
        from accelerate.tracking import TensorBoardTracker, WandBTracker

        if name == "tensorboard":
            try:
                import tensorboard  # noqa: F401
            except ImportError as e:
                raise TrackerError("log.trackers has 'tensorboard' but the tensorboard package is not installed "
                                   "(pip install tensorboard)") from e
            tracker = TensorBoardTracker(run, self.logging_dir)
        elif name == "wandb":
            try:
                import wandb  # noqa: F401
            except ImportError as e:
                raise TrackerError("log.trackers has 'wandb' but wandb is not installed (pip install wandb)") from e
            if not os.environ.get("WANDB_API_KEY"):
                os.environ.setdefault("WANDB_MODE", "offline")
            self.logging_dir.mkdir(parents=True, exist_ok=True)
            tracker = WandBTracker(self.cfg.wandb_project, name=run, dir=str(self.logging_dir), resume="allow",
                                   id=run)
        else:
            raise TrackerError(f"unknown tracker {name!r}; expected tensorboard or wandb")
        tracker.start()
        return tracker

    @property
    def active(self) -> bool:
        return bool(self.trackers)

    def _log(self, values: dict, step: int) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            for t in self.trackers:
                t.log(values, step=step)

    def config(self, dumped: dict) -> None:
        """The run's config, flattened to scalars and strings (TensorBoard's hparams, wandb's config)."""
        flat = {}

        def walk(prefix: str, d: dict) -> None:
            for k, v in d.items():
                key = f"{prefix}{k}"
                if isinstance(v, dict):
                    walk(key + ".", v)
                elif isinstance(v, (bool, int, float, str)) or v is None:
                    flat[key] = v if v is not None else "none"
                else:
                    flat[key] = str(v)

        walk("", dumped)
        for t in self.trackers:
            try:
                t.store_init_configuration(flat)
            except Exception as e:  # a tracker that cannot take some value must not stop the run
                log.warning("tracker %s did not store the config: %s", t.name, e)

    def step(self, rec: dict) -> None:
        if not self.trackers:
            return
        self._log({f"train/{k}": _finite(rec.get(k)) for k in STEP_KEYS}, step=int(rec["global_step"]))

    def round(self, k: int, detail: dict, metrics: dict | None) -> None:
        """A finished round from the store: ``detail`` = ``store.round_detail``, ``metrics`` = its
        ``store.round_metrics`` entry."""
        if not self.trackers:
            return
        values: dict = {}
        for e in detail.get("evaluations") or []:
            tag = f"eval/{e['split']}{'_refined' if e['refine'] else ''}/{e['judge']}"
            n, s = int(e["n"] or 0), int(e["n_success"] or 0)
            if n:
                lo, hi = wilson(s, n)
                values[f"{tag}/joint_success"] = s / n
                values[f"{tag}/joint_success_ci_low"] = lo
                values[f"{tag}/joint_success_ci_high"] = hi
            for cat, c in (e.get("per_category") or {}).items():
                values[f"{tag}/category/{cat}"] = _finite(c.get("joint_success"))
        if metrics:
            values["round/train_accept_rate"] = _finite(metrics.get("accept_rate"))
            values["round/seconds"] = _finite(metrics.get("seconds"))
            values["round/loss_open"] = _finite(metrics.get("loss_open"))
            values["round/loss_close"] = _finite(metrics.get("loss_close"))
        self._log(values, step=k)

    def grids(self, k: int, pairs: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> None:
        """``(prompt, winner video, loser video)`` uint8 ``(T, H, W, 3)`` each → one image per pair."""
        if not self.trackers or not pairs:
            return
        images = [frame_grid(w, l) for _, w, l in pairs[: self.cfg.grids]]
        for t in self.trackers:
            if t.name == "tensorboard":
                t.log_images({"train/winner_vs_loser": np.stack(images)}, step=k, dataformats="NHWC")
            else:
                t.log_images({"train/winner_vs_loser": images}, step=k)

    def finish(self) -> None:
        for t in self.trackers:
            try:
                t.finish()
            except Exception as e:
                log.warning("tracker %s did not finish cleanly: %s", t.name, e)
        self.trackers = []


def frame_grid(winner: np.ndarray, loser: np.ndarray, max_frames: int = 8) -> np.ndarray:
    """Two rows of frames, evenly spaced in time: the winner above, the loser below, 2-px gaps."""
    def row(video: np.ndarray) -> np.ndarray:
        idx = np.linspace(0, video.shape[0] - 1, min(max_frames, video.shape[0])).round().astype(int)
        frames = [video[i] for i in idx]
        gap = np.full((video.shape[1], 2, 3), 255, dtype=np.uint8)
        return np.concatenate([x for f in frames for x in (f, gap)][:-1], axis=1)

    a, b = row(np.asarray(winner, dtype=np.uint8)), row(np.asarray(loser, dtype=np.uint8))
    width = max(a.shape[1], b.shape[1])
    pad = lambda r: np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
    return np.concatenate([pad(a), np.full((2, width, 3), 255, dtype=np.uint8), pad(b)], axis=0)
