"""The optical-flow metric judge (reward.flow): dynamics and motion smoothness."""

from __future__ import annotations

import numpy as np
import pytest

from reward.base import Judge
from reward.flow import FlowJudge


def disc_video(positions, h: int = 64, w: int = 64, r: int = 5) -> np.ndarray:
    """A bright disc at the given (y, x) centres over a smooth gradient backdrop."""
    yy, xx = np.mgrid[0:h, 0:w]
    backdrop = np.stack([40 + 60 * yy / h, 50 + 50 * xx / w, np.full((h, w), 90.0)], -1)
    frames = []
    for cy, cx in positions:
        frame = backdrop.copy()
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 250
        frames.append(frame.astype(np.uint8))
    return np.stack(frames)


T = 16
SLIDE = disc_video([(32, 6 + 3 * t) for t in range(T)])                 # constant velocity
FALL = disc_video([(6 + 0.18 * (t + 3) ** 2 - 1.6, 32) for t in range(T)])  # constant acceleration
TELEPORT = disc_video([tuple(p) for p in np.random.default_rng(0).uniform(8, 56, (T, 2))])
STILL = disc_video([(32, 32)] * T)


def test_is_a_judge():
    assert isinstance(FlowJudge(), Judge)


def test_smooth_motion_accepted_and_scores_high():
    judge = FlowJudge()
    for clip in (SLIDE, FALL):
        s = judge.score("a ball moves", clip)
        assert s.judged and s.accept
        assert s.sa > 0.8 and s.pc > 0.6


def test_erratic_motion_scores_low_physics():
    judge = FlowJudge()
    erratic = judge.score("a ball moves", TELEPORT)
    smooth = judge.score("a ball moves", SLIDE)
    assert erratic.pc < 0.5 < smooth.pc
    assert not erratic.accept


def test_static_video_has_no_dynamics():
    s = FlowJudge().score("a ball bounces", STILL)
    assert s.sa == 0.0 and not s.accept and "nothing moves" in s.rationale


def test_too_short_is_unjudged():
    assert not FlowJudge().score("p", STILL[:2]).judged
    with pytest.raises(ValueError):
        FlowJudge().score("p", STILL.astype(np.float32))


def test_batch():
    scores = FlowJudge().score_batch([("p", SLIDE), ("p", STILL)])
    assert [s.accept for s in scores] == [True, False]
