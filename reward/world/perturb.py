"""Held-out perturbations: physically wrong clips that neither judge was designed or tuned around.

:mod:`.corrupt` holds the failures both built-in judges were built and calibrated against. The
perturbations here are a second, *held-out* set: they are only ever used to report how often
each judge rejects them (``bench/judge_calibration.py``, section ``heldout_perturbations``);
no threshold, scale or range of either judge was chosen by looking at them. Each takes a
:class:`~.simulator.Scene` and a numpy ``Generator`` and returns a uint8 video that breaks one
law in a way a generator plausibly might.

Applicability (:data:`APPLIES`): only where the change is visible and physically wrong.

====================  ====  ==========  =====  =========  ==========================================
perturbation          drop  projectile  slide  collision  what changes
====================  ====  ==========  =====  =========  ==========================================
time_reversal         ✓     –           ✓      –          the clip played backwards: a ball rises from
                                                          bounce to rest in the air, a block speeds up
                                                          from rest (a reversed throw is a valid throw)
weak_gravity          ✓     ✓           –      –          g × 0.6 (falls too slowly)
strong_gravity        ✓     ✓           –      –          g × 1.6 (falls too fast)
floor_speed_change    –     –           ✓      ✓          from a mid-clip frame the moving object on
                                                          the floor suddenly keeps only 40 % of its speed
size_change           ✓     ✓           ✓      ✓          one object grows or shrinks steadily to
                                                          ×0.55 or ×1.6 of its size by the last frame
colour_swap           –     –           –      ✓          from a mid-clip frame the two balls swap colours
local_shuffle         ✓     ✓           ✓      ✓          two adjacent frames where something moves are
                                                          swapped
early_stop            –     –           ✓      –          from a mid-slide frame friction is ×3: the block
                                                          stops far too early
sideways_drift        ✓     –           –      –          a dropped ball drifts sideways at 0.5–0.8 px/frame
====================  ====  ==========  =====  =========  ==========================================
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from . import corrupt
from . import physics as P
from .simulator import Body, Scene, render, render_tracks, simulate

T = P.FRAMES


def _moving_frames(tracks: np.ndarray, least: float = 0.8) -> np.ndarray:
    """Frames k (1 ≤ k ≤ T−3) after which the fastest body moves at least ``least`` px."""
    step = np.linalg.norm(np.diff(tracks, axis=0), axis=-1).max(axis=1)
    ks = np.flatnonzero(step >= least)
    return ks[(ks >= 1) & (ks <= T - 3)]


def _pick(rng: np.random.Generator, frames: np.ndarray, default: int) -> int:
    return int(rng.choice(frames)) if frames.size else default


def time_reversal(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The real clip, last frame first."""
    return render(scene)[::-1].copy()


def _gravity(scale: float) -> Callable[[Scene, np.random.Generator], np.ndarray]:
    def perturbation(scene: Scene, rng: np.random.Generator) -> np.ndarray:
        return render_tracks(scene.bodies, simulate(scene, gravity=P.GRAVITY * scale))

    perturbation.__doc__ = f"The scene simulated with gravity × {scale}."
    return perturbation


def floor_speed_change(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """From a frame where the fastest object on the floor moves, it keeps 40 % of its speed."""
    tracks = simulate(scene)
    k = _pick(rng, _moving_frames(tracks), 3)
    step = np.linalg.norm(np.diff(tracks, axis=0), axis=-1)  # (T−1, n)
    i = int(step[k].argmax())
    out = tracks.copy()
    deltas = np.diff(tracks[k:, i], axis=0) * 0.4
    out[k + 1:, i] = tracks[k, i] + np.cumsum(deltas, axis=0)
    return render_tracks(scene.bodies, out)


def _coverage(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Supersampled coverage of a disc or square of half-size ``r`` centred at ``(cx, cy)``."""
    s = 4
    u = (np.arange(P.SIZE * s) + 0.5) / s
    if shape == "ball":
        inside = (u[None, :] - cx) ** 2 + (u[:, None] - cy) ** 2 <= r * r
    else:
        inside = (np.abs(u[None, :] - cx) <= r) & (np.abs(u[:, None] - cy) <= r)
    return inside.reshape(P.SIZE, s, P.SIZE, s).mean(axis=(1, 3))


def size_change(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One object's size changes steadily from 1 to ×0.55 or ×1.6 over the clip (it stays on the
    floor where it rolls or slides: its centre is raised or lowered with its size)."""
    tracks = simulate(scene)
    i = int(rng.integers(len(scene.bodies)))
    end = 0.55 if rng.random() < 0.5 else 1.6
    bg = render_tracks((), np.zeros((T, 0, 2)))[0].astype(np.float64)
    frames = np.empty((T, P.SIZE, P.SIZE, 3), dtype=np.uint8)
    for f in range(T):
        img = bg.copy()
        for j, b in enumerate(scene.bodies):
            r = P.RADIUS * (1 + (end - 1) * f / (T - 1)) if j == i else P.RADIUS
            x, y = tracks[f, j]
            y = min(y, P.FLOOR_Y - r) if y >= P.REST_Y - 1e-6 else y
            cov = _coverage(b.shape, x, y, r)[..., None]
            img = img * (1 - cov) + np.array(P.PALETTE[b.colour], dtype=np.float64) * cov
        frames[f] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return frames


def colour_swap(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """From a frame in the middle third, the two balls trade colours."""
    tracks = simulate(scene)
    k = int(rng.integers(T // 3, 2 * T // 3 + 1))
    a, b = scene.bodies
    swapped = (dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour))
    out = render_tracks(scene.bodies, tracks)
    out[k:] = render_tracks(swapped, tracks[k:])
    return out


def local_shuffle(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Two adjacent frames swapped, at a place where something moves."""
    video = render(scene)
    k = _pick(rng, _moving_frames(simulate(scene), 1.0), T // 2)
    out = video.copy()
    out[k], out[k + 1] = video[k + 1], video[k]
    return out


def early_stop(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """From a frame where the block still moves fast, friction triples: it stops too early."""
    tracks = simulate(scene)
    speed = np.abs(np.diff(tracks[:, 0, 0]))
    ks = np.flatnonzero(speed >= 1.2)
    k = _pick(rng, ks[(ks >= 1) & (ks <= T - 4)], 1)
    v = tracks[k + 1, 0, 0] - tracks[k, 0, 0] + 0.5 * np.sign(scene.bodies[0].vx0) * scene.friction
    b = scene.bodies[0]
    rest = dataclasses.replace(scene, bodies=(Body(b.colour, b.shape, float(tracks[k, 0, 0]), b.y0, float(v), 0.0),),
                               friction=3 * scene.friction)
    out = tracks.copy()
    out[k:, 0] = simulate(rest)[: T - k, 0]
    return render_tracks(scene.bodies, out)


def sideways_drift(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A dropped ball also moves sideways at 0.5–0.8 px/frame (towards the frame's centre)."""
    b = scene.bodies[0]
    vx = float(rng.uniform(0.5, 0.8)) * (1.0 if b.x0 < P.SIZE / 2 else -1.0)
    tracks = simulate(scene).copy()
    tracks[:, 0, 0] += vx * np.arange(T)
    return render_tracks(scene.bodies, tracks)


PERTURBATIONS: dict[str, Callable[[Scene, np.random.Generator], np.ndarray]] = {
    "time_reversal": time_reversal,
    "weak_gravity": _gravity(0.6),
    "strong_gravity": _gravity(1.6),
    "floor_speed_change": floor_speed_change,
    "size_change": size_change,
    "colour_swap": colour_swap,
    "local_shuffle": local_shuffle,
    "early_stop": early_stop,
    "sideways_drift": sideways_drift,
}
APPLIES: dict[str, tuple[str, ...]] = {
    "time_reversal": ("drop", "slide"),
    "weak_gravity": ("drop", "projectile"),
    "strong_gravity": ("drop", "projectile"),
    "floor_speed_change": ("slide", "collision"),
    "size_change": P.FAMILIES,
    "colour_swap": ("collision",),
    "local_shuffle": P.FAMILIES,
    "early_stop": ("slide",),
    "sideways_drift": ("drop",),
}


def applicable(family: str) -> list[str]:
    """Perturbation names that are meaningful for ``family``."""
    return corrupt.applicable(family, APPLIES)


def perturb(scene: Scene, name: str, rng: np.random.Generator | int) -> np.ndarray:
    """The video of ``scene`` with held-out perturbation ``name`` applied (see the module table)."""
    return corrupt.apply_edit("perturbation", PERTURBATIONS, APPLIES, scene, name, rng)
