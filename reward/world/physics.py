"""The one description of the built-in world's physics, shared by the simulator and the judge.

The world is a 2-D side view in pixel units, ``y`` pointing down, time in frames. Every clip
has :data:`FRAMES` frames of :data:`SIZE` × :data:`SIZE` RGB pixels on a dark background with a
grey floor. Objects are discs ("balls") or squares ("blocks") in the colours of
:data:`PALETTE`. Four scenario families exercise four different laws:

========== =============================================================================
family     law the judge tests
========== =============================================================================
drop       constant downward acceleration ``g``; bounces lose energy (restitution < 1)
projectile constant horizontal velocity, constant downward acceleration ``g`` (parabola)
slide      friction only decelerates: speed decreases linearly until the block rests
collision  equal masses on a frictionless floor: momentum is conserved, the struck ball
           takes over the striker's velocity (restitution ``e``)
========== =============================================================================

Every law the judge checks is written here once, as a number or a tolerance, so that the
simulator (which must obey it) and the judge (which must detect breaking it) cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------- clip geometry
FRAMES = 12  # frames per clip
SIZE = 32  # square frame, pixels; even so the Wan patch embedding never crops it
FPS = 8  # playback rate of written files (the physics is in frames, not seconds)
FLOOR_Y = 28.0  # y (pixels) of the floor's top surface; floor pixels are rows ≥ FLOOR_Y
BACKGROUND = (12, 12, 16)
FLOOR_COLOUR = (90, 90, 90)

# ---------------------------------------------------------------- objects
RADIUS = 2.5  # ball radius / half side of a block, pixels
REST_Y = FLOOR_Y - RADIUS  # centre height of an object resting on the floor
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (235, 45, 45),
    "green": (45, 205, 70),
    "blue": (60, 110, 250),
    "yellow": (240, 220, 40),
    "purple": (190, 70, 230),
}
SHAPES = ("ball", "block")

# ---------------------------------------------------------------- laws (per frame units)
GRAVITY = 0.50  # px / frame², downward (+y)
RESTITUTION_RANGE = (0.55, 0.80)  # bounce speed ratio of the floor, < 1: energy is lost
FRICTION_DECEL_RANGE = (0.32, 0.44)  # px / frame², sliding block deceleration μ·g
COLLISION_RESTITUTION_RANGE = (0.85, 1.0)  # ball–ball restitution in collisions

# tolerances the judge uses (pixels, frames); the simulator must sit well inside them
TOL_ACCEL = 0.22  # |fitted a − expected a| allowed, px/frame²
TOL_RESTITUTION_MAX = 1.0  # a bounce may not return faster than it arrived (× this ratio)
TOL_TELEPORT = 6.5  # largest plausible jump between frames beyond the predicted motion, px
MIN_MOTION = 1.0  # px a "moving" object must travel over the clip at least
# The tracked centre of a drawn object wobbles: a generator draws its outline a little differently
# in every frame. Checks built on per-frame differences read motion over a four-frame baseline and
# set their tolerance near three standard deviations of that measurement's noise for a centre
# wobble of POSITION_NOISE px, so that the wobble is not read as a force. Measured by
# bench/judge_calibration.py (2026-11-22): correct clips drawn with 0.3 px of wobble are accepted
# 88 % of the time, with 0.5 px 62 %; every corruption type is still rejected ≥ 98 %.
POSITION_NOISE = 0.5
# change of an airborne object's velocity beyond g, px/frame per frame, over a four-frame
# baseline (motion.rate_changes; noise 0.61·POSITION_NOISE): a kick of Δ px/frame reads Δ/2
TOL_KICK = 0.9
TOL_FIT = 1.5  # largest residual of a track from its fitted law of motion (smooth arc, line), px
# a sliding block's speed may not rise (a rolling ball's not change) by more than this, px/frame
# per frame, over a four-frame baseline
TOL_SPEEDUP = 1.0
TOL_STILL = 1.5  # px a resting object may seem to drift before it counts as moving
TOL_MOMENTUM = 0.2  # |Σv_after − Σv_before| / |Σv_before| allowed in a collision
TOL_ENERGY = 0.3  # kinetic energy may seem to grow by this fraction in a collision (blur and ghosting bias speeds)
TOL_REBOUND = 0.1  # px/frame an equal-mass striker may seem to move back after impact (e ≤ 1: it cannot)
REST_SPEED = 0.3  # px/frame below which an object counts as at rest
FLOOR_MARGIN = 0.75  # an object whose centre is within this of REST_Y touches the floor, px

FAMILIES = ("drop", "projectile", "slide", "collision")

# verbs and nouns that name each family's motion in prompts (the judge's semantic check and
# the critic's scenario recogniser use the same words)
FAMILY_WORDS: dict[str, tuple[str, ...]] = {
    "drop": ("drop", "dropped", "falls", "fall", "falling", "released", "bounce", "bounces", "bouncing"),
    "projectile": ("thrown", "throw", "tossed", "launched", "arc", "projectile", "flies", "lobbed"),
    "slide": ("slide", "slides", "sliding", "pushed", "skids", "glides"),
    "collision": ("collide", "collides", "collision", "hits", "strikes", "rolls into", "crashes into", "knocks"),
}


@dataclass(frozen=True)
class FamilyRanges:
    """Seeded sampling ranges of one family's initial conditions (pixels, px/frame)."""

    x0: tuple[float, float]
    y0: tuple[float, float]
    vx: tuple[float, float]
    vy: tuple[float, float]


RANGES: dict[str, FamilyRanges] = {
    # released from rest high up: hits the floor around frame 6–8, then bounces lower
    "drop": FamilyRanges(x0=(6.0, 26.0), y0=(8.0, 14.0), vx=(0.0, 0.0), vy=(0.0, 0.0)),
    # thrown rightwards and slightly up from the left: a parabola that stays in frame
    # (projectile, slide and collision scenes are mirrored left ↔ right half the time: MIRRORED)
    "projectile": FamilyRanges(x0=(3.0, 6.0), y0=(10.0, 14.0), vx=(1.5, 2.1), vy=(-2.6, -1.6)),
    # pushed rightwards along the floor (or mirrored): decelerates to rest by frame 9 (vx / μg ≤ 8.75 frames),
    # so every clip shows the block coming to rest, as the prompts say
    "slide": FamilyRanges(x0=(3.0, 6.0), y0=(REST_Y, REST_Y), vx=(2.0, 2.8), vy=(0.0, 0.0)),
    # striker from the left (or mirrored, the right) at speed vx, target at rest in the centre: contact between frames
    # 2 and 5.5, so both the approach and the aftermath span several frames, and the struck
    # ball stays in frame to the end
    "collision": FamilyRanges(x0=(2.5, 3.5), y0=(REST_Y, REST_Y), vx=(1.2, 1.7), vy=(0.0, 0.0)),
}
COLLISION_TARGET_X = (12.0, 14.0)  # where the struck ball rests before impact
# Families whose scenes are mirrored left ↔ right (x → SIZE − x, vx → −vx) with probability 1/2:
# the motion is the same law either way, and a detailed prompt then carries information a short
# one lacks (which way the object goes), as real detailed prompts do. A drop falls straight down.
MIRRORED = ("projectile", "slide", "collision")


def expected_vertical_accel(family: str) -> float | None:
    """Vertical acceleration of a free (airborne) object of the family; ``None`` if not airborne."""
    return GRAVITY if family in ("drop", "projectile") else None


def region_words(x: float, y: float) -> tuple[str, str]:
    """Coarse position words (horizontal, vertical) used by detailed prompts and by the judge."""
    horiz = "left" if x < SIZE / 3 else ("right" if x > 2 * SIZE / 3 else "centre")
    vert = "top" if y < SIZE / 3 else ("bottom" if y > 2 * SIZE / 3 else "middle")
    return horiz, vert
