"""The "flow" judge: a metric reward from dense optical flow (OpenCV Farneback), no model needed.

It cannot read the prompt, so it scores only what motion statistics can show:

* ``sa`` — *dynamics*: the fraction of frame steps in which something visibly moves. Every
  phyloop prompt describes motion, so a frozen or nearly frozen video does not adhere to it
  (the commonest failure of open text-to-video models on dynamic prompts).
* ``pc`` — *smoothness* of the moving region's mean velocity over time. Under gravity,
  friction or a constant push, velocity changes linearly, so its second difference (jerk)
  is near zero; flicker, teleporting or morphing objects make it erratic. The median is
  used so the few legitimate spikes of a bounce or a collision do not dominate:
  ``pc = 1 / (1 + median_jerk / mean_speed)``.

``accept`` requires both to clear a threshold. Being prompt-blind, it is a cheap
sanity/regularising reward beside a VLM judge, not a replacement for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from reward.base import Score
from reward.video_io import check_video, resize_max_side


@dataclass
class FlowJudgeConfig:
    max_side: int = 128            # flow is computed on frames downscaled to this size
    motion_px: float = 0.5         # a step "moves" if the 99th-percentile |flow| exceeds this (px)
    moving_px: float = 0.25        # pixels with |flow| above this form the moving region
    accept_sa: float = 0.5
    accept_pc: float = 0.5


def farneback(video: np.ndarray, max_side: int = 128) -> np.ndarray:
    """Dense flow between consecutive frames: (T−1, H', W', 2) in pixels of the downscaled frames."""
    gray = [cv2.cvtColor(resize_max_side(f, max_side), cv2.COLOR_RGB2GRAY) for f in check_video(video)]
    flows = [cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=3, winsize=9, iterations=3,
                                          poly_n=5, poly_sigma=1.1, flags=0)
             for a, b in zip(gray[:-1], gray[1:])]
    if not flows:
        return np.zeros((0, *gray[0].shape, 2), np.float32)
    return np.stack(flows)


class FlowJudge:
    """``reward.base.Judge`` scoring dynamics and motion smoothness from optical flow."""

    name = "flow"

    def __init__(self, config: FlowJudgeConfig | None = None) -> None:
        self.config = config or FlowJudgeConfig()

    def score(self, prompt: str, video: np.ndarray) -> Score:
        cfg = self.config
        if len(check_video(video)) < 3:
            return Score.unjudged(f"flow judge needs at least 3 frames, got {len(video)}")
        flow = farneback(video, cfg.max_side)
        mag = np.linalg.norm(flow, axis=-1)                                   # (T−1, H, W)
        moving_steps = np.percentile(mag.reshape(len(mag), -1), 99, axis=1) > cfg.motion_px
        dynamics = float(moving_steps.mean())
        # mean velocity of the moving region per step (zero where nothing moves)
        velocity = np.zeros((len(flow), 2))
        for t in range(len(flow)):
            mask = mag[t] > cfg.moving_px
            if mask.any():
                velocity[t] = flow[t][mask].mean(axis=0)
        speed = float(np.linalg.norm(velocity, axis=1).mean())
        jerk = np.linalg.norm(velocity[2:] - 2 * velocity[1:-1] + velocity[:-2], axis=1)
        median_jerk = float(np.median(jerk)) if len(jerk) else 0.0
        smoothness = 1.0 / (1.0 + median_jerk / max(speed, 1e-6)) if dynamics > 0 else 0.0
        accept = dynamics >= cfg.accept_sa and smoothness >= cfg.accept_pc
        worst = int(np.argmax(jerk)) + 1 if len(jerk) else 0
        if dynamics == 0:
            rationale = "nothing moves in any frame step"
        else:
            rationale = (f"motion in {moving_steps.sum()}/{len(moving_steps)} frame steps; median jerk "
                         f"{median_jerk:.2f} px/frame² at mean speed {speed:.2f} px/frame "
                         f"(largest change of velocity around frame {worst + 1})")
        details = {"dynamics": dynamics, "smoothness": smoothness, "mean_speed_px": speed,
                   "median_jerk_px": median_jerk, "velocity_px": velocity.round(3).tolist()}
        return Score(sa=dynamics, pc=smoothness, accept=accept, rationale=rationale,
                     raw="", details=details)

    def score_batch(self, items: Sequence[tuple[str, np.ndarray]]) -> list[Score]:
        return [self.score(p, v) for p, v in items]
