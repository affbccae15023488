"""Physically wrong versions of simulator videos: the judge's calibration negatives.

Each function takes a :class:`~.simulator.Scene` and a numpy ``Generator`` and returns a
uint8 video that breaks exactly one law (or one part of the prompt), mostly by editing the
simulated tracks and re-rendering them, so that everything else stays physically exact.
They imitate the failures of video generators: objects that jump, vanish, split, float,
gain energy, freeze, change colour, or drown in noise.

Applicability (:data:`APPLIES`): a corruption is only meaningful where the law it breaks
is visible in the clip.

==================  ====  ==========  =====  =========  ==================================
corruption          drop  projectile  slide  collision  what changes
==================  ====  ==========  =====  =========  ==================================
teleport            ✓     ✓           ✓      ✓          one object jumps 8–13 px (for good or one frame)
vanish              ✓     ✓           ✓      ✓          one object is missing for 1–3 frames in view
duplicate           ✓     ✓           ✓      ✓          a copy of one object appears 7+ px away
reverse_gravity     ✓     ✓           ✓      ✓          airborne: g → −g; on the floor: the objects float up
no_gravity          ✓     ✓           ✓      –          airborne: g → 0 (hangs / straight line); slide:
                                                        friction (μ·g) vanishes; collision: the floor is
                                                        already frictionless, nothing would change
energy_gain         ✓     ✓           ✓      ✓          drop: restitution 1.2–1.5; projectile: a mid-air
                                                        kick ×1.8–2.2; slide: friction pushes (speeds up);
                                                        collision: ball–ball restitution 1.25–1.6
frozen              ✓     ✓           ✓      ✓          frames freeze from a moment of fast motion on
wrong_colour        ✓     ✓           ✓      ✓          one object drawn in an unused palette colour
heavy_noise         ✓     ✓           ✓      ✓          Gaussian pixel noise, σ 50–80 grey levels
==================  ====  ==========  =====  =========  ==================================
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from . import physics as P
from .simulator import Body, Scene, render_tracks, simulate

T = P.FRAMES


def _velocity(track: np.ndarray, k: int) -> np.ndarray:
    """Velocity at frame ``k`` of one body's track ``(T, 2)`` (central difference: exact for
    constant acceleration between frames k−1 and k+1)."""
    if 0 < k < len(track) - 1:
        return (track[k + 1] - track[k - 1]) / 2.0
    return track[min(k + 1, len(track) - 1)] - track[max(k - 1, 0)]


def _continue(scene: Scene, body: int, k: int, pos: np.ndarray, vel: np.ndarray, **changes) -> np.ndarray:
    """Body ``body`` re-simulated from frame ``k`` with state ``(pos, vel)`` and changed
    parameters (``restitution``, ``friction``); positions for frames ``k..T-1``."""
    b = scene.bodies[body]
    sub = dataclasses.replace(scene, bodies=(Body(b.colour, b.shape, float(pos[0]), float(pos[1]),
                                                  float(vel[0]), float(vel[1])),), **changes)
    return simulate(sub)[: T - k, 0]


def _in_view(track: np.ndarray, margin: float = P.RADIUS) -> bool:
    x, y = track[..., 0], track[..., 1]
    return bool(np.all((x >= margin) & (x <= P.SIZE - margin) & (y >= margin) & (y <= P.REST_Y + 1e-6)))


# ------------------------------------------------------------------ permanence
def teleport(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One object jumps 8–13 px off its path at a random frame (for good, or for one frame)."""
    tracks = simulate(scene)
    for _ in range(200):
        i = int(rng.integers(len(scene.bodies)))
        k = int(rng.integers(1, T))
        one_frame = bool(rng.random() < 0.5) and k < T - 1
        d = rng.uniform(8.0, 13.0)
        ang = rng.uniform(0, 2 * np.pi)
        off = np.array([np.cos(ang), np.sin(ang)]) * d
        frames = slice(k, k + 1) if one_frame else slice(k, T)
        moved = tracks[frames, i] + off
        if _in_view(moved):
            out = tracks.copy()
            out[frames, i] = moved
            return render_tracks(scene.bodies, out)
    raise ValueError(f"no in-view teleport found for {scene.id}")


def vanish(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One object is not drawn for 1–3 consecutive frames while it is in view."""
    tracks = simulate(scene).copy()
    i = int(rng.integers(len(scene.bodies)))
    k = int(rng.integers(1, T))
    n = int(rng.integers(1, min(3, T - k) + 1))
    tracks[k:k + n, i] = np.nan
    return render_tracks(scene.bodies, tracks)


def duplicate(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A second copy of one object (same colour and shape, moving alike) appears 7+ px away."""
    tracks = simulate(scene)
    for attempt in range(500):
        i = int(rng.integers(len(scene.bodies)))
        k = int(rng.integers(0, T - 2))
        # on the floor the copy slides beside the original, unless there is no room there
        on_floor = scene.family in ("slide", "collision") and attempt < 100
        ang = 0.0 if on_floor else rng.uniform(0, 2 * np.pi)
        off = np.array([np.cos(ang), np.sin(ang)]) * rng.uniform(7.0, 12.0) * (rng.choice([-1, 1]) if on_floor else 1)
        copy = tracks[k:, i] + off
        if not _in_view(copy):
            continue
        gaps = np.linalg.norm(tracks[k:] - copy[:, None, :], axis=-1)
        if np.all(gaps >= 2 * P.RADIUS + 2.0):
            full = np.full((T, 1, 2), np.nan)
            full[k:, 0] = copy
            return render_tracks(scene.bodies + (scene.bodies[i],), np.concatenate([tracks, full], axis=1))
    raise ValueError(f"no free place for a duplicate in {scene.id}")


# ------------------------------------------------------------------ gravity
def reverse_gravity(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Airborne families fall upward (g → −g); objects on the floor float up from a random frame."""
    if scene.family in ("drop", "projectile"):
        return render_tracks(scene.bodies, simulate(scene, gravity=-P.GRAVITY))
    tracks = simulate(scene).copy()
    k = int(rng.integers(1, T - 4))
    s = np.arange(T - k, dtype=np.float64)
    tracks[k:, :, 1] = P.REST_Y - 0.5 * P.GRAVITY * s[:, None] ** 2
    return render_tracks(scene.bodies, tracks)


def no_gravity(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Airborne families ignore gravity (g → 0); a sliding block loses its friction (μ·g → 0)."""
    if scene.family in ("drop", "projectile"):
        return render_tracks(scene.bodies, simulate(scene, gravity=0.0))
    if scene.family == "slide":
        return render_tracks(scene.bodies, simulate(dataclasses.replace(scene, friction=0.0)))
    raise ValueError(f"no_gravity does not apply to {scene.family}: its floor is frictionless already")


# ------------------------------------------------------------------ energy
def energy_gain(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Energy from nowhere: a bounce or impact returns faster than it came, a mid-air kick,
    or friction that pushes."""
    fam = scene.family
    if fam in ("drop", "collision"):
        e = float(rng.uniform(1.2, 1.5) if fam == "drop" else rng.uniform(1.25, 1.6))
        return render_tracks(scene.bodies, simulate(dataclasses.replace(scene, restitution=e)))
    tracks = simulate(scene)
    if fam == "projectile":
        k = int(rng.integers(2, T - 4))
        v = _velocity(tracks[:, 0], k) * rng.uniform(1.8, 2.2)
        out = tracks.copy()
        out[k:, 0] = _continue(scene, 0, k, tracks[k, 0], v)
        return render_tracks(scene.bodies, out)
    if fam == "slide":
        speed = np.abs(np.diff(tracks[:, 0, 0]))
        moving = np.flatnonzero(speed[1:] >= 0.8) + 1  # frames k with speed ≥ 0.8 just after
        k = int(rng.choice(moving[moving <= T - 4])) if np.any(moving <= T - 4) else 1
        v = _velocity(tracks[:, 0], k)
        out = tracks.copy()
        out[k:, 0] = _continue(scene, 0, k, tracks[k, 0], v, friction=-float(rng.uniform(0.3, 0.5)))
        return render_tracks(scene.bodies, out)
    raise ValueError(f"energy_gain does not apply to {fam}")


# ------------------------------------------------------------------ pixels
def frozen(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The clip freezes: from a frame where something moves ≥ 1.2 px/frame on, every frame repeats it."""
    video = render_tracks(scene.bodies, tracks := simulate(scene))
    step = np.linalg.norm(np.diff(tracks, axis=0), axis=-1).max(axis=1)  # fastest body, interval k→k+1
    ks = np.flatnonzero(step[: T - 2] >= 1.2)
    k = int(rng.choice(ks)) if ks.size else 0
    out = video.copy()
    out[k + 1:] = video[k]
    return out


def wrong_colour(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One object is drawn in a palette colour the scene (and its prompt) does not use."""
    i = int(rng.integers(len(scene.bodies)))
    unused = [c for c in P.PALETTE if c not in scene.colours]
    new = unused[int(rng.integers(len(unused)))]
    bodies = list(scene.bodies)
    bodies[i] = dataclasses.replace(bodies[i], colour=new)
    return render_tracks(tuple(bodies), simulate(scene))


def heavy_noise(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of σ 50–80 grey levels on every pixel and channel."""
    video = render_tracks(scene.bodies, simulate(scene)).astype(np.float64)
    video += rng.normal(0.0, rng.uniform(50.0, 80.0), video.shape)
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


ALL_FAMILIES = P.FAMILIES
CORRUPTIONS: dict[str, Callable[[Scene, np.random.Generator], np.ndarray]] = {
    "teleport": teleport,
    "vanish": vanish,
    "duplicate": duplicate,
    "reverse_gravity": reverse_gravity,
    "no_gravity": no_gravity,
    "energy_gain": energy_gain,
    "frozen": frozen,
    "wrong_colour": wrong_colour,
    "heavy_noise": heavy_noise,
}
APPLIES: dict[str, tuple[str, ...]] = {name: ALL_FAMILIES for name in CORRUPTIONS}
APPLIES["no_gravity"] = ("drop", "projectile", "slide")


def applicable(family: str, applies: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """Corruption names (or the names of another ``applies`` table) meaningful for ``family``."""
    return [name for name, fams in (APPLIES if applies is None else applies).items() if family in fams]


def apply_edit(kind: str, edits: dict[str, Callable], applies: dict[str, tuple[str, ...]], scene: Scene,
               name: str, rng: np.random.Generator | int) -> np.ndarray:
    """``edits[name](scene, rng)`` after checking the name and that it applies to the scene's family
    (``kind`` names the edit in errors: corruption, perturbation)."""
    if name not in edits:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {', '.join(edits)}")
    if scene.family not in applies[name]:
        raise ValueError(f"{kind} {name!r} does not apply to family {scene.family!r}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return edits[name](scene, rng)


def corrupt(scene: Scene, name: str, rng: np.random.Generator | int) -> np.ndarray:
    """The video of ``scene`` with corruption ``name`` applied (see the module table)."""
    return apply_edit("corruption", CORRUPTIONS, APPLIES, scene, name, rng)
