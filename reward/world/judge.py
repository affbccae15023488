"""The built-in world's analytic judge: track the objects, test the tracks against the laws.

``PhysicsJudge().score(prompt, video)`` reads what the prompt asks from its text alone
(:mod:`.intent`: family, colours, shape, start position, claimed motion), finds and tracks
every palette-coloured object in the video (:mod:`.tracker`), fits the laws of motion to
the tracks (:mod:`.motion`) and runs a list of *checks*. Each check measures one thing,
divides it by the tolerance written in :mod:`.physics` (``excess ≤ 1`` passes) and is
either semantic (``sa``: the named objects, their motion, their start) or physical
(``pc``: permanence, gravity, restitution, friction, momentum, noise).

Scores: ``sa`` and ``pc`` start at 1 and lose a penalty per failed check — 0.3 for a
failure just past its tolerance, growing with the excess up to 0.6 — so any single clear
violation takes a score below 0.75 and rejects, the way a VideoPhy-2 "3 of 5" does, while
near-misses of the continuous laws cost a little (≤ 0.08) so scores stay graded among good
videos. ``accept = sa ≥ 0.75 and pc ≥ 0.75``, the same threshold as ``Score.joint()``.

The rationale names the frame and the law of the worst failures ("frame 9: the red ball
rebounds faster than it hit the floor (restitution 1.35 > 1: energy gained)"); every check
with its numbers is in ``Score.details["checks"]`` and the tracks and fits are in ``raw``.
Degrading gracefully: blur and ghosting leave colour mass and hue intact (see the tracker),
noise is measured and penalised, and a video with no recognisable object is still *judged*
(``judged=True``) with low scores and a rationale saying no object was found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from reward.base import Score
from reward.video_io import check_video

from . import physics as P
from .intent import Intent, claimed_direction, parse_prompt, region_interval
from .motion import BOUNCE_REACH, Flight, flight, line_fit, rate_changes, velocities
from .tracker import Observation, Track, observe

ACCEPT = 0.75  # sa and pc both at least this → accept (VideoPhy-2 "4 of 5")
NOISE_MAX = 20.0  # robust per-pixel noise std (grey levels) above which frames are "noisy"
NOISE_GIVEUP = 50.0  # above this, colour blobs are the noise's own: no object can be made out
REGION_TOL = 1.5  # px an object may start outside the region its prompt names
PRESENT_MIN = 0.5  # fraction of frames a named object must be seen in to count as present
EXTRA_MIN = 0.25  # fraction of frames an unnamed colour must be seen in to count as an object
STOP_FROM = 1.0  # px/frame: an object this fast cannot stop dead within one frame…
STOPPED = 0.1  # px/frame: … and be this still afterwards, unless something hits it
HOVER = 0.15  # px: an airborne object moving less than this in two frames running is held up by nothing
SHAPE_MIN_VOTES = 3  # frames whose blob is clear enough to tell a ball from a block
SHAPE_WRONG_MAX = 0.5  # fraction of those frames that may show the other shape
CONTACT_GAP = 2 * P.RADIUS + 2.5  # centre distance at which two balls can be touching (blur widens it), px
PENETRATION = 2 * P.RADIUS - 1.5  # centre distance below which two balls overlap, px


@dataclass
class Check:
    """One measured test. ``excess`` = measurement / tolerance; the check passes when ≤ 1."""

    name: str
    kind: str  # "sa" | "pc"
    subject: str  # colour or "" for the whole clip
    excess: float
    message: str  # what went wrong (used in the rationale when the check fails)
    frame: int | None = None
    value: float | None = None
    limit: float | None = None
    graded: bool = False  # continuous law: near-misses cost a little
    weight: float = 1.0

    @property
    def passed(self) -> bool:
        return self.excess <= 1.0

    @property
    def penalty(self) -> float:
        if self.excess > 1.0:
            return self.weight * min(0.6, 0.3 + 0.15 * (self.excess - 1.0))
        if self.graded and self.excess > 0.6:
            return 0.08 * (self.excess - 0.6) / 0.4
        return 0.0

    def text(self) -> str:
        return (f"frame {self.frame}: " if self.frame is not None else "") + self.message


class _Checks(list):
    def add(self, name: str, kind: str, subject: str, excess: float, message: str, **kw) -> Check:
        c = Check(name, kind, subject, float(excess) if np.isfinite(excess) else 99.0, message, **kw)
        self.append(c)
        return c


def _r(v: float | None, n: int = 2) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), n)


def _noun(intent: Intent, colour: str) -> str:
    shape = intent.shape or "object"
    return f"{colour} {shape}"


# ------------------------------------------------------------------ per-object motion facts
@dataclass
class _Obj:
    colour: str
    track: Track
    usable: np.ndarray  # seen and not cut by the frame border
    flight: Flight

    @property
    def pos(self) -> np.ndarray:
        return self.track.pos


def _prepare(track: Track) -> _Obj:
    seen = track.seen
    full = track.mass[seen & ~track.edge]
    ref = float(np.median(full)) if full.size else float(np.median(track.mass[seen])) if seen.any() else 0.0
    clipped = track.edge & (track.mass < 0.85 * ref)
    usable = seen & ~clipped
    return _Obj(track.colour, track, usable, flight(track.pos, usable))


def _present(tr: Track) -> bool:
    """Seen in most frames, or seen for a while and then gone through the frame's border."""
    if tr.seen_fraction >= PRESENT_MIN:
        return True
    idx = np.flatnonzero(tr.seen)
    return idx.size >= 3 and bool(tr.edge[idx[-1]] or tr.edge[idx[0]])


def _inside(p: np.ndarray) -> bool:
    """Whether a predicted centre would put most of an object in view."""
    lo, hi = P.RADIUS / 2, P.SIZE - P.RADIUS / 2
    return bool(lo <= p[0] <= hi and lo <= p[1] <= hi)


# ------------------------------------------------------------------ permanence
def _permanence(o: _Obj, noun: str, checks: _Checks) -> None:
    pos, seen, edge = o.pos, o.track.seen, o.track.edge
    t_len = len(pos)
    idx = np.flatnonzero(seen)
    if idx.size == 0:
        return
    vanished: list[int] = []
    for t in np.flatnonzero(~seen):
        before, after = idx[idx < t], idx[idx > t]
        if before.size and after.size:
            a, b = before[-1], after[0]
            pred = pos[a] + (pos[b] - pos[a]) * (t - a) / (b - a)
        elif before.size:
            a = before[-1]
            if edge[a]:
                continue  # it left through the border
            v = pos[a] - pos[before[-2]] if before.size >= 2 else np.zeros(2)
            pred = pos[a] + v * (t - a)
        else:
            b = after[0]
            if edge[b]:
                continue  # it came in through the border
            v = pos[after[1]] - pos[b] if after.size >= 2 else np.zeros(2)
            pred = pos[b] - v * (b - t)
        if _inside(pred):
            vanished.append(int(t))
    if vanished:
        appears = vanished[0] == 0 and idx[0] > 0
        what = f"the {noun} is missing until frame {idx[0]} (appears from nowhere)" if appears else \
            f"the {noun} vanishes in view ({len(vanished)} frame{'s' * (len(vanished) > 1)}: permanence broken)"
        checks.add("vanish", "pc", o.colour, 1.0 + len(vanished), what, frame=vanished[0],
                   value=len(vanished), limit=0)
    else:
        checks.add("vanish", "pc", o.colour, 0.0, f"the {noun} stays in view")
    dup = np.flatnonzero(o.track.duplicates > 0)
    if dup.size:
        checks.add("duplicate", "pc", o.colour, 1.0 + dup.size,
                   f"a second {noun} appears ({dup.size} frame{'s' * (dup.size > 1)}: duplication)",
                   frame=int(dup[0]), value=int(dup.size), limit=0)
    else:
        checks.add("duplicate", "pc", o.colour, 0.0, f"one {noun} only")
    # teleport: departure from a constant-acceleration step between consecutive frames
    u, y = o.usable, pos[:, 1]
    worst, worst_t = 0.0, None
    near = y >= P.REST_Y - BOUNCE_REACH
    air = y < P.REST_Y - P.FLOOR_MARGIN
    for t in range(2, t_len):
        if not (u[t] and u[t - 1] and u[t - 2]):
            continue
        in_air = bool(air[t] and air[t - 1] and air[t - 2])
        acc = np.array([0.0, P.GRAVITY if in_air else 0.0])
        err = pos[t] - 2 * pos[t - 1] + pos[t - 2] - acc
        if (near[t] or near[t - 1] or near[t - 2]) and err[1] < 0:
            # a bounce reverses the arriving downward speed (at most, restitution ≤ 1): only an
            # upward change beyond twice that is a jump
            # (the contact may lie in either interval: take the faster descent before it)
            falls = [pos[k + 1, 1] - pos[k, 1] for k in (t - 3, t - 2) if k >= 0 and u[k] and u[k + 1]]
            v_in = max([0.0] + falls) + P.GRAVITY  # speed at impact, at most
            err = np.array([err[0], min(0.0, err[1] + 2 * v_in)])
        e = float(np.hypot(*err))
        if e > worst:
            worst, worst_t = e, t
    ex = worst / P.TOL_TELEPORT
    checks.add("teleport", "pc", o.colour, ex,
               f"the {noun} jumps {worst:.1f} px away from its path (teleport)", frame=worst_t,
               value=_r(worst), limit=P.TOL_TELEPORT)
    kick, kick_t = _kick(o, u & air)
    if kick_t is not None and kick > P.TOL_KICK and ex <= 1.0:
        checks.add("kick", "pc", o.colour, kick / P.TOL_KICK,
                   f"the {noun}'s velocity changes by {kick:.1f} px/frame per frame beyond gravity around "
                   f"frame {kick_t} in mid-air (a kick no force explains)",
                   frame=kick_t, value=_r(kick), limit=P.TOL_KICK, graded=True)


def _kick(o: _Obj, airborne: np.ndarray) -> tuple[float, int | None]:
    """Largest mid-air change of velocity beyond gravity, over a four-frame baseline (see
    :func:`.motion.rate_changes`), leaving out the frames around each floor contact."""
    ax, tx = rate_changes(o.pos[:, 0], airborne)
    ay, _ = rate_changes(o.pos[:, 1], airborne)
    if tx.size == 0:
        return 0.0, None
    keep = np.array([bool(airborne[t - 2:t + 3].all()) and
                     not any(t - 2 <= c.after and t + 2 >= c.before for c in o.flight.contacts) for t in tx])
    if not keep.any():
        return 0.0, None
    dev = np.hypot(ax, ay - P.GRAVITY)[keep]
    k = int(np.argmax(dev))
    return float(dev[k]), int(tx[keep][k])


def _stop_dead(o: _Obj, noun: str, checks: _Checks, contact_frames: set[int]) -> None:
    """An object that hangs still in mid-air (gravity allows no two still frames in a row), or
    that moves fast and is suddenly and permanently still, with nothing hitting it."""
    u = o.usable
    t_len = len(u)
    air = u & (o.pos[:, 1] < P.REST_Y - P.FLOOR_MARGIN)
    step = np.full(t_len - 1, np.inf)
    both = u[:-1] & u[1:]
    step[both] = np.hypot(*(o.pos[1:][both] - o.pos[:-1][both]).T)
    for t in range(2, t_len):
        if air[t] and air[t - 1] and air[t - 2] and step[t - 1] <= HOVER and step[t - 2] <= HOVER:
            checks.add("frozen", "pc", o.colour, 2.0,
                       f"the {noun} hangs motionless in mid-air (frozen: gravity cannot hold it still)",
                       frame=t - 2, value=_r(max(step[t - 1], step[t - 2])), limit=HOVER)
            return
    speed = np.full(t_len - 1, np.nan)
    ok = u[:-1] & u[1:]
    speed[ok] = np.hypot(*(o.pos[1:][ok] - o.pos[:-1][ok]).T)
    for t in range(1, t_len - 1):
        rest = speed[t:]
        rest = rest[~np.isnan(rest)]
        if np.isnan(speed[t - 1]) or speed[t - 1] < STOP_FROM or rest.size == 0 or np.isnan(speed[t]):
            continue
        if np.all(rest <= STOPPED) and not (contact_frames & {t - 1, t, t + 1}):
            checks.add("frozen", "pc", o.colour, 1.0 + speed[t - 1] / STOP_FROM,
                       f"the {noun} freezes while moving {speed[t - 1]:.1f} px/frame "
                       f"and stays frozen (motion stops without a cause)", frame=t,
                       value=_r(speed[t - 1]), limit=STOP_FROM)
            return
    checks.add("frozen", "pc", o.colour, 0.0, f"the {noun} never freezes mid-motion")


# ------------------------------------------------------------------ airborne laws
def _airborne(o: _Obj, noun: str, checks: _Checks) -> None:
    fl = o.flight
    if fl.a_y is None:
        return
    g = P.GRAVITY
    dev = abs(fl.a_y - g)
    first = int(fl.segments[0].frames[0])
    if fl.a_y < -P.TOL_ACCEL:
        what = f"the {noun} accelerates upward in the air (a = {fl.a_y:+.2f} px/frame², gravity reversed)"
    elif abs(fl.a_y) <= P.TOL_ACCEL:
        what = f"the {noun} is not pulled down in the air (a = {fl.a_y:+.2f}, gravity missing)"
    else:
        what = f"the {noun} falls with a = {fl.a_y:+.2f} px/frame² instead of g = {g:.2f}"
    checks.add("gravity", "pc", o.colour, dev / P.TOL_ACCEL, what, frame=first,
               value=_r(fl.a_y, 3), limit=P.TOL_ACCEL, graded=True)
    if fl.residual is not None:
        res = np.nan_to_num(fl.residual, nan=0.0)
        t = int(np.argmax(res))
        checks.add("smooth_flight", "pc", o.colour, res[t] / P.TOL_FIT,
                   f"the {noun} leaves its free-flight parabola by {res[t]:.1f} px (a jolt no force explains)",
                   frame=t, value=_r(res[t]), limit=P.TOL_FIT, graded=True)
    if fl.a_x is not None:
        checks.add("horizontal_flight", "pc", o.colour, abs(fl.a_x) / P.TOL_ACCEL,
                   f"the {noun} {'speeds up' if fl.a_x > 0 else 'slows down'} sideways in mid-air "
                   f"(a_x = {fl.a_x:+.2f} px/frame², nothing pushes it)", frame=first,
                   value=_r(fl.a_x, 3), limit=P.TOL_ACCEL, graded=True)
    e_hi = P.RESTITUTION_RANGE[1]
    for c in fl.contacts:
        if c.height > BOUNCE_REACH:
            checks.add("mid_air_turn", "pc", o.colour, 1.0 + c.height / BOUNCE_REACH,
                       f"the {noun} turns upward {c.height:.0f} px above the floor without touching anything",
                       frame=c.after, value=_r(c.height), limit=BOUNCE_REACH)
            continue
        e = c.restitution
        checks.add("bounce_energy", "pc", o.colour, max(0.0, e - e_hi) / (P.TOL_RESTITUTION_MAX - e_hi),
                   f"the {noun} rebounds at {c.v_out:.1f} px/frame after hitting the floor at {c.v_in:.1f} "
                   f"(restitution {e:.2f} > 1: energy gained)", frame=c.after,
                   value=_r(e), limit=P.TOL_RESTITUTION_MAX)
    for f in fl.lift_offs:
        checks.add("lift_off", "pc", o.colour, 2.0,
                   f"the {noun} rises off the floor with nothing pushing it (unsupported upward motion)",
                   frame=f, value=None, limit=None)


# ------------------------------------------------------------------ floor laws
def _on_floor(o: _Obj) -> np.ndarray:
    return o.usable & (o.pos[:, 1] >= P.REST_Y - P.FLOOR_MARGIN)


def _slide_laws(o: _Obj, noun: str, checks: _Checks, intent: Intent) -> dict:
    """Friction only slows: speed never rises, falls at about μg per frame, and the block stops."""
    floor = _on_floor(o)
    v, t = velocities(o.pos[:, 0], floor)
    facts: dict = {}
    if v.size < 2:
        return facts
    direction = 1.0 if v[0] >= 0 else -1.0
    s = direction * v
    a, at = rate_changes(o.pos[:, 0], floor)  # per-frame speed changes, four-frame baseline
    if a.size:
        rise = direction * a
        k = int(np.argmax(rise))
        checks.add("friction_speedup", "pc", o.colour, max(0.0, rise[k]) / P.TOL_SPEEDUP,
                   f"the {noun} speeds up by {rise[k]:.2f} px/frame per frame around frame {int(at[k])} while "
                   f"sliding (friction only slows)", frame=int(at[k]), value=_r(rise[k]), limit=P.TOL_SPEEDUP)
        max_dec = P.FRICTION_DECEL_RANGE[1] + P.TOL_SPEEDUP  # speed changes carry the same noise both ways
        k = int(np.argmax(-rise))
        checks.add("friction_jerk", "pc", o.colour, max(0.0, -rise[k]) / max_dec,
                   f"the {noun} loses {-rise[k]:.2f} px/frame of speed per frame around frame {int(at[k])} "
                   f"(more than friction can take)", frame=int(at[k]), value=_r(-rise[k]), limit=max_dec)
    moving = s > P.REST_SPEED
    mt, ms = t[moving], s[moving]
    if mt.size >= 4:
        mt, ms = mt[:-1], ms[:-1]  # the interval in which it stops is partly at rest
    if mt.size >= 3:
        slope, _, _ = line_fit(mt, ms)
        dec = -slope
        lo, hi = P.FRICTION_DECEL_RANGE
        dev = max(0.0, lo - dec, dec - hi)
        facts["deceleration"] = dec
        checks.add("friction_rate", "pc", o.colour, dev / P.TOL_ACCEL,
                   f"the {noun} decelerates at {dec:.2f} px/frame² while sliding, not at the friction "
                   f"rate {lo:.2f}–{hi:.2f}" + (" (no friction)" if dec < lo - P.TOL_ACCEL else ""),
                   frame=int(mt[0]), value=_r(dec, 3), limit=P.TOL_ACCEL, graded=True)
    facts["final_speed"] = float(s[-1])
    facts["direction"] = direction
    return facts


def _collision_laws(a: _Obj, b: _Obj, na: str, nb: str, checks: _Checks) -> dict:
    """Striker ``a`` hits target ``b`` on a frictionless floor: equal masses exchange momentum."""
    facts: dict = {"contact": None}
    both = a.usable & b.usable
    if not both.any():
        return facts
    xa, xb = a.pos[:, 0], b.pos[:, 0]
    gap = np.where(both, np.abs(xb - xa), np.nan)
    if np.any(gap < PENETRATION):
        f = int(np.nanargmin(gap))
        checks.add("penetration", "pc", a.colour, 1.0 + (PENETRATION - gap[f]) / P.RADIUS,
                   f"the {na} and the {nb} overlap ({gap[f]:.1f} px apart: they pass into each other)",
                   frame=f, value=_r(gap[f]), limit=PENETRATION)
    ib = np.flatnonzero(b.usable)
    x0b = xb[ib[0]]
    moved = ib[np.abs(xb[ib] - x0b) > P.TOL_STILL]  # beyond the wobble of a resting object
    if moved.size == 0:
        return facts
    f = int(moved[0])
    g = np.nanmin(gap[max(0, f - 1):f + 1]) if np.any(~np.isnan(gap[max(0, f - 1):f + 1])) else np.inf
    facts["contact"] = f
    facts["contact_gap"] = float(g)
    if g > CONTACT_GAP:
        checks.add("causality", "pc", b.colour, 1.0 + (g - CONTACT_GAP) / P.RADIUS,
                   f"the {nb} starts moving while the {na} is still {g:.1f} px away (moves before it is hit)",
                   frame=f, value=_r(g), limit=CONTACT_GAP)
        return facts
    pre = np.flatnonzero(a.usable[:f])
    post_a = np.flatnonzero(a.usable[f:]) + f
    post_b = np.flatnonzero(b.usable[f:]) + f
    # the frames right at the impact mix both motions when the video is blurred or ghosted:
    # leave them out of the velocity fits whenever two frames remain without them
    if np.sum(pre < f - 1) >= 2:
        pre = pre[pre < f - 1]
    if np.sum(post_a > f) >= 2:
        post_a = post_a[post_a > f]
    if np.sum(post_b > f) >= 2:
        post_b = post_b[post_b > f]
    if pre.size < 2 or post_a.size < 2 or post_b.size < 2:
        return facts
    va, _, ra = line_fit(pre, xa[pre])
    va2, _, ra2 = line_fit(post_a, xa[post_a])
    vb2, _, rb2 = line_fit(post_b, xb[post_b])
    facts.update(v_striker=va, v_striker_after=va2, v_target_after=vb2)
    if abs(va) < P.REST_SPEED:
        return facts
    p_in, p_out = va, va2 + vb2
    mdev = abs(p_out - p_in) / (P.TOL_MOMENTUM * abs(p_in))
    checks.add("momentum", "pc", a.colour, mdev,
               f"momentum changes at the impact: {p_in:+.2f} before, {p_out:+.2f} px/frame after "
               f"(equal masses must keep the sum of velocities)", frame=f,
               value=_r(p_out / p_in), limit=P.TOL_MOMENTUM, graded=True)
    ratio = (va2**2 + vb2**2) / va**2
    checks.add("collision_energy", "pc", a.colour, max(0.0, ratio - 1.0) / P.TOL_ENERGY,
               f"the balls leave the impact with {ratio:.2f}× the kinetic energy they brought (energy gained)",
               frame=f, value=_r(ratio), limit=1 + P.TOL_ENERGY)
    facts["energy_ratio"] = ratio
    # with equal masses the striker keeps v(1 − e)/2 ≥ 0: moving back means e > 1 (energy
    # gained). This reads the sign of one velocity, so it survives a biased speed estimate.
    back = -va2 * np.sign(va)
    checks.add("striker_rebound", "pc", a.colour, max(0.0, back) / P.TOL_REBOUND,
               f"the {na} bounces back at {back:.2f} px/frame after the impact (equal masses: only extra "
               f"energy could do that)", frame=f, value=_r(back), limit=P.TOL_REBOUND)
    return facts


def _rolling_laws(o: _Obj, noun: str, checks: _Checks, contact: int | None) -> None:
    """A ball rolling on the frictionless floor keeps its velocity between contacts."""
    floor = _on_floor(o)
    v, t = velocities(o.pos[:, 0], floor)
    if v.size < 2:
        return
    a, at = rate_changes(o.pos[:, 0], floor)  # per-frame speed changes, four-frame baseline
    if contact is not None:
        keep = (at < contact - 3) | (at > contact + 2)
        a, at = a[keep], at[keep]
    if a.size == 0:
        return
    k = int(np.argmax(np.abs(a)))
    checks.add("rolling_speed", "pc", o.colour, abs(a[k]) / P.TOL_SPEEDUP,
               f"the {noun} changes speed by {abs(a[k]):.2f} px/frame per frame around frame {int(at[k])} with "
               f"nothing touching it (a rolling ball keeps its speed)", frame=int(at[k]), value=_r(abs(a[k])),
               limit=P.TOL_SPEEDUP, graded=True)


# ------------------------------------------------------------------ semantic checks
def _start_region(o: _Obj, intent: Intent, noun: str, checks: _Checks) -> None:
    horiz, vert = intent.start
    idx = np.flatnonzero(o.usable)
    if idx.size == 0 or (horiz is None and vert is None):
        return
    x, y = o.pos[idx[0]]
    dist = 0.0
    for word, axis, val in ((horiz, "x", x), (vert, "y", y)):
        if word is None:
            continue
        lo, hi = region_interval(word, axis)
        dist = max(dist, lo - val, val - hi)
    seen_h, seen_v = P.region_words(x, y)
    want = " ".join(w for w in (vert, horiz) if w)
    checks.add("start_region", "sa", o.colour, max(0.0, dist) / REGION_TOL,
               f"the {noun} starts at the {seen_v} {seen_h} ({x:.0f}, {y:.0f}), not the {want} the prompt names",
               frame=int(idx[0]), value=_r(dist), limit=REGION_TOL)


def _shape(o: _Obj, intent: Intent, checks: _Checks) -> None:
    votes = o.track.shape_votes
    n = sum(votes.values())
    if intent.shape is None or n < SHAPE_MIN_VOTES:
        return
    other = "block" if intent.shape == "ball" else "ball"
    wrong = votes.get(other, 0) / n
    checks.add("shape", "sa", o.colour, wrong / SHAPE_WRONG_MAX,
               f"the {o.colour} object looks like a {other}, not a {intent.shape} (in {wrong:.0%} of the clear frames)",
               value=_r(wrong), limit=SHAPE_WRONG_MAX)


def _moves(o: _Obj, noun: str, checks: _Checks, verb: str) -> float:
    idx = np.flatnonzero(o.usable)
    path = float(np.sum(np.hypot(*np.diff(o.pos[idx], axis=0).T))) if idx.size >= 2 else 0.0
    checks.add("moves", "sa", o.colour, 2.0 if path < P.MIN_MOTION else 0.0,
               f"the {noun} never moves (it should {verb})", frame=int(idx[0]) if idx.size else None,
               value=_r(path), limit=P.MIN_MOTION)
    return path


def _family_semantics(family: str, o: _Obj, noun: str, intent: Intent, checks: _Checks,
                      floor_facts: dict) -> None:
    idx = np.flatnonzero(o.usable)
    if idx.size < 3:
        return
    x, y = o.pos[:, 0], o.pos[:, 1]
    first, last = idx[0], idx[-1]
    fl = o.flight
    if family == "drop":
        if _moves(o, noun, checks, "fall") < P.MIN_MOTION:
            return
        k = idx[min(2, idx.size - 1)]
        dy = y[k] - y[first]
        checks.add("falls", "sa", o.colour, 0.0 if dy > 0.4 else 2.0,
                   f"the {noun} {'rises' if dy < -0.4 else 'does not fall'} at the start instead of falling",
                   frame=int(first), value=_r(dy), limit=0.4)
        drift = abs(x[last] - x[first])
        checks.add("straight_down", "sa", o.colour, drift / 2.0,
                   f"the {noun} drifts {drift:.1f} px sideways instead of falling straight down",
                   frame=int(last), value=_r(drift), limit=2.0)
        seg0 = fl.segments[0] if fl.segments else None
        if intent.claims_("from_rest") and seg0 is not None and seg0.t0 == first and not np.isnan(seg0.by):
            v0 = abs(seg0.by)
            checks.add("from_rest", "sa", o.colour, v0 / 0.6,
                       f"the {noun} is already moving at {v0:.1f} px/frame instead of starting from rest",
                       frame=int(first), value=_r(v0), limit=0.6)
        if intent.claims_("bounce"):
            touched = bool(np.any(y[idx] >= P.REST_Y - P.FLOOR_MARGIN))
            bounced = bool(fl.contacts) or (touched and y[last] < P.REST_Y - 1.0)
            checks.add("bounces", "sa", o.colour, 0.0 if bounced else 2.0,
                       f"the {noun} never bounces off the floor", frame=int(last))
    elif family == "projectile":
        if _moves(o, noun, checks, "fly") < P.MIN_MOTION:
            return
        dx = x[last] - x[first]
        way = claimed_direction(intent)
        if way == "left":
            dx = -dx
        want = f"to the {way}"
        need = 3.0
        if way is not None:
            checks.add("direction", "sa", o.colour, 0.0 if dx >= need else 1.0 + (need - dx) / need,
                       f"the {noun} travels {dx:+.1f} px sideways instead of flying {want}", frame=int(last),
                       value=_r(dx), limit=need)
        else:
            checks.add("direction", "sa", o.colour, 0.0 if abs(dx) >= need else 1.0 + (need - abs(dx)) / need,
                       f"the {noun} barely travels sideways ({dx:+.1f} px) for a throw", frame=int(last),
                       value=_r(dx), limit=need)
        airborne = int(np.sum(o.usable & (y < P.REST_Y - P.FLOOR_MARGIN)))
        checks.add("airborne", "sa", o.colour, 0.0 if airborne >= 3 else 2.0,
                   f"the {noun} never flies (in the air in only {airborne} frames)", frame=int(first),
                   value=airborne, limit=3)
        if intent.claims_("upwards") and fl.segments and fl.segments[0].t0 == first and not np.isnan(fl.segments[0].by):
            vy0 = fl.segments[0].by
            checks.add("thrown_up", "sa", o.colour, 0.0 if vy0 < -0.3 else 2.0,
                       f"the {noun} does not rise first (initial vertical speed {vy0:+.1f} px/frame)",
                       frame=int(first), value=_r(vy0), limit=-0.3)
    elif family == "slide":
        if _moves(o, noun, checks, "slide") < P.MIN_MOTION:
            return
        floor = _on_floor(o)
        frac = float(floor[idx].mean())
        checks.add("on_floor", "sa", o.colour, 0.0 if frac >= 0.75 else 1.0 + (0.75 - frac) * 4,
                   f"the {noun} is off the floor in {np.sum(~floor[idx])} frames instead of sliding on it",
                   frame=int(idx[~floor[idx]][0]) if frac < 1 else None, value=_r(frac), limit=0.75)
        way = claimed_direction(intent)
        if way is not None:
            dx = (x[last] - x[first]) * (1.0 if way == "right" else -1.0)
            checks.add("direction", "sa", o.colour, 0.0 if dx >= 2.0 else 2.0,
                       f"the {noun} moves {dx:+.1f} px {way}wards instead of sliding to the {way}", frame=int(last),
                       value=_r(dx), limit=2.0)
        if intent.claims_("stops") and "final_speed" in floor_facts:
            fs = abs(floor_facts["final_speed"])
            checks.add("comes_to_rest", "sa", o.colour, fs / (2 * P.REST_SPEED),
                       f"the {noun} is still sliding at {fs:.1f} px/frame at the end instead of stopping",
                       frame=int(last), value=_r(fs), limit=2 * P.REST_SPEED)


def _collision_semantics(a: _Obj, b: _Obj, na: str, nb: str, intent: Intent, checks: _Checks,
                         facts: dict) -> None:
    ia = np.flatnonzero(a.usable)
    if ia.size < 2:
        return
    xa = a.pos[:, 0]
    xb0 = b.pos[np.flatnonzero(b.usable)[0], 0] if b.usable.any() else np.nan
    toward = np.sign(xb0 - xa[ia[0]]) if np.isfinite(xb0) else 1.0
    early = ia[ia <= (facts["contact"] if facts.get("contact") is not None else ia[-1])]
    dx = (xa[early[-1]] - xa[early[0]]) * toward if early.size >= 2 else 0.0
    checks.add("striker_moves", "sa", a.colour, 0.0 if dx >= 1.0 else 2.0,
               f"the {na} does not roll towards the {nb}", frame=int(ia[0]), value=_r(dx), limit=1.0)
    way = claimed_direction(intent)
    if way is not None and early.size >= 2:
        along = (xa[early[-1]] - xa[early[0]]) * (1.0 if way == "right" else -1.0)
        checks.add("direction", "sa", a.colour, 0.0 if along >= 1.0 else 2.0,
                   f"the {na} rolls {along:+.1f} px {way}wards instead of rolling to the {way}",
                   frame=int(early[-1]), value=_r(along), limit=1.0)
    f = facts.get("contact")
    hit = f is not None and facts.get("contact_gap", np.inf) <= CONTACT_GAP
    checks.add("impact", "sa", a.colour, 0.0 if hit else 2.0,
               f"the {na} never hits the {nb}", frame=f if f is not None else int(ia[-1]))
    if hit and "v_target_after" in facts:
        vb = facts["v_target_after"] * toward
        checks.add("target_moves", "sa", b.colour, 0.0 if vb > P.REST_SPEED else 2.0,
                   f"the {nb} does not move off after the impact", frame=f, value=_r(vb), limit=P.REST_SPEED)
        if intent.claims_("striker_stops") and abs(facts.get("v_striker", 0)) > P.REST_SPEED:
            r = abs(facts["v_striker_after"]) / abs(facts["v_striker"])
            checks.add("striker_stops", "sa", a.colour, r / 0.35,
                       f"the {na} keeps {r:.0%} of its speed after the impact instead of nearly stopping",
                       frame=f, value=_r(r), limit=0.35)


def _collision_pair(intent: Intent, objs: dict[str, _Obj], extras: dict[str, _Obj]) -> tuple[_Obj, _Obj] | None:
    """Striker and target: the prompt's two balls, or else the two objects the video shows
    (physics is judged on what is shown), the one moving first being the striker."""
    if intent.striker in objs and intent.target in objs:
        return objs[intent.striker], objs[intent.target]
    shown = sorted({**objs, **extras}.values(), key=lambda o: -int(o.usable.sum()))[:2]
    if len(shown) < 2:
        return None

    def early_motion(o: _Obj) -> float:
        idx = np.flatnonzero(o.usable)[:3]
        return float(np.ptp(o.pos[idx, 0])) if idx.size >= 2 else 0.0

    a, b = sorted(shown, key=early_motion, reverse=True)
    return a, b


# ------------------------------------------------------------------ the judge
@dataclass
class Judgement:
    """The full analysis of one video (what ``PhysicsJudge.analyse`` returns)."""

    intent: Intent
    observation: Observation
    checks: list[Check]
    sa: float
    pc: float
    objects: dict

    @property
    def accept(self) -> bool:
        return self.sa >= ACCEPT and self.pc >= ACCEPT

    @property
    def failed(self) -> list[Check]:
        # root causes first: when nothing can be made out, or the frames drown in noise, the
        # failed laws that follow are symptoms
        root = ("objects", "noise")
        return sorted((c for c in self.checks if not c.passed),
                      key=lambda c: (c.name not in root, -c.penalty))


class PhysicsJudge:
    """``reward.base.Judge`` of the built-in world: tracks objects and tests the world's laws."""

    name = "physics"

    def __init__(self, max_reasons: int = 3):
        self.max_reasons = max_reasons

    def analyse(self, prompt: str, video: np.ndarray) -> Judgement:
        intent = parse_prompt(prompt)
        video = check_video(video)
        obs = observe(video)
        drowned = obs.noise > NOISE_GIVEUP
        if drowned:
            obs.tracks = {}
        checks = _Checks()
        family = intent.family
        # which colours are the prompt's objects
        if intent.colours:
            named = list(intent.colours)
        else:
            present = sorted((t for t in obs.tracks.values() if t.seen_fraction >= EXTRA_MIN),
                             key=lambda t: -t.mean_mass)
            named = [t.colour for t in present[:intent.n_objects]]
            checks.add("count", "sa", "", abs(len(present) - intent.n_objects) * 2.0,
                       f"{len(present)} objects instead of {intent.n_objects}")
        objs: dict[str, _Obj] = {}
        for colour in named:
            tr = obs.tracks.get(colour)
            noun = _noun(intent, colour)
            if tr is None or not _present(tr):
                n = 0 if tr is None else int(tr.seen.sum())
                # a missing object costs 0.5 of sa (excess 3 → 0.6, weighted by 5/6)
                checks.add("present", "sa", colour, 3.0, f"the {noun} is missing from the video"
                           + (f" (seen in {n} of {obs.frames} frames)" if n else ""), value=n, weight=5 / 6)
            else:
                checks.add("present", "sa", colour, 0.0, f"the {noun} is present")
            if tr is not None and tr.seen.sum() >= 1:
                objs[colour] = _prepare(tr)
        # objects the prompt did not ask for: wrong for sa, but still bound by physics (pc is
        # judged on what is shown, whatever the prompt says)
        extras: dict[str, _Obj] = {}
        for colour, tr in obs.tracks.items():
            if colour not in named and tr.seen_fraction >= EXTRA_MIN:
                extras[colour] = _prepare(tr)
                if intent.colours:
                    checks.add("extra_object", "sa", colour, 2.0, f"an unrequested {colour} object is in the video",
                               frame=int(np.flatnonzero(tr.seen)[0]))
        # noise: the frames themselves
        checks.add("noise", "pc", "", obs.noise / NOISE_MAX,
                   f"the frames are covered in noise (σ ≈ {obs.noise:.0f} grey levels)", value=_r(obs.noise),
                   limit=NOISE_MAX)
        if obs.noise > NOISE_MAX:
            checks.add("noise", "sa", "", obs.noise / NOISE_MAX,
                       f"the objects are not cleanly shown (noise σ ≈ {obs.noise:.0f})", value=_r(obs.noise),
                       limit=NOISE_MAX)
        # physics per object
        contact_frames: set[int] = set()
        coll_facts: dict = {}
        pair = _collision_pair(intent, objs, extras) if family == "collision" else None
        if pair is not None:
            a, b = pair
            na = _noun(intent, a.colour) if a.colour in objs else f"{a.colour} object"
            nb = _noun(intent, b.colour) if b.colour in objs else f"{b.colour} object"
            coll_facts = _collision_laws(a, b, na, nb, checks)
            if coll_facts.get("contact") is not None:
                f = coll_facts["contact"]
                contact_frames = {f - 1, f, f + 1}
            if a.colour == intent.striker and b.colour == intent.target:
                _collision_semantics(a, b, na, nb, intent, checks, coll_facts)
        facts: dict[str, dict] = {}
        for colour, o in {**objs, **extras}.items():
            noun = _noun(intent, colour) if colour in objs else f"{colour} object"
            _permanence(o, noun, checks)
            _stop_dead(o, noun, checks, contact_frames)
            _airborne(o, noun, checks)
            if family == "slide":
                facts[colour] = _slide_laws(o, noun, checks, intent)
            elif family == "collision":
                _rolling_laws(o, noun, checks, coll_facts.get("contact"))
            if colour not in objs:
                continue
            if family in ("drop", "projectile", "slide"):
                _family_semantics(family, o, noun, intent, checks, facts.get(colour, {}))
            if colour == named[0]:
                _start_region(o, intent, noun, checks)
            _shape(o, intent, checks)
        objs.update(extras)
        if not objs:
            why = f" (the frames are noise, σ ≈ {obs.noise:.0f})" if drowned else ""
            checks.add("objects", "pc", "", 99.0, "no objects found in the video" + why, weight=2.0)
            checks.add("objects", "sa", "", 99.0, "no objects found in the video" + why, weight=2.0)
        sa = max(0.0, 1.0 - sum(c.penalty for c in checks if c.kind == "sa"))
        pc = max(0.0, 1.0 - sum(c.penalty for c in checks if c.kind == "pc"))
        objects = {c: _object_summary(o, facts.get(c)) for c, o in objs.items()}
        if coll_facts:
            objects["collision"] = {k: _r(v, 3) if isinstance(v, float) else v for k, v in coll_facts.items()}
        return Judgement(intent, obs, list(checks), round(sa, 4), round(pc, 4), objects)

    def score(self, prompt: str, video: np.ndarray) -> Score:
        j = self.analyse(prompt, video)
        return Score(sa=j.sa, pc=j.pc, accept=j.accept, rationale=self._rationale(j),
                     raw=_raw(j), judged=True, details=_details(j))

    def score_batch(self, items: Sequence[tuple[str, np.ndarray]]) -> list[Score]:
        return [self.score(p, v) for p, v in items]

    def _rationale(self, j: Judgement) -> str:
        fam = j.intent.family
        head = "" if fam else "scenario not recognised from the prompt; judged generic physics. "
        failed = j.failed
        if failed:
            texts: list[str] = []
            for c in failed:
                if c.text() not in texts:
                    texts.append(c.text())
            return head + "; ".join(texts[: self.max_reasons]) + "."
        parts = []
        for colour, summary in j.objects.items():
            if colour == "collision":
                continue
            bits = [f"{_noun(j.intent, colour)} seen in {summary['seen']}/{j.observation.frames} frames"]
            if summary.get("a_y") is not None:
                bits.append(f"a = {summary['a_y']:.2f} px/frame² (g = {P.GRAVITY:.2f})")
            if summary.get("restitution"):
                bits.append("bounce restitution " + ", ".join(f"{e:.2f}" for e in summary["restitution"]))
            if summary.get("deceleration") is not None:
                bits.append(f"friction deceleration {summary['deceleration']:.2f}")
            parts.append(", ".join(bits))
        coll = j.objects.get("collision")
        if coll and coll.get("energy_ratio") is not None:
            parts.append(f"impact at frame {coll['contact']}, momentum kept, energy ratio {coll['energy_ratio']:.2f}")
        summary = "; ".join(parts) + ": " if parts else ""
        return head + summary + f"all {len(j.checks)} checks pass ({fam or 'generic'})."


def _object_summary(o: _Obj, facts: dict | None) -> dict:
    idx = np.flatnonzero(o.track.seen)
    s = {"seen": int(idx.size),
         "start": [_r(v) for v in o.pos[idx[0]]] if idx.size else None,
         "end": [_r(v) for v in o.pos[idx[-1]]] if idx.size else None,
         "start_region": list(P.region_words(*o.pos[idx[0]])) if idx.size else None,
         "a_y": _r(o.flight.a_y, 3), "a_x": _r(o.flight.a_x, 3),
         "restitution": [_r(c.restitution, 3) for c in o.flight.contacts],
         "squareness": _r(o.track.squareness, 3)}
    if facts:
        s["deceleration"] = _r(facts.get("deceleration"), 3)
        s["final_speed"] = _r(facts.get("final_speed"), 3)
    return s


def _details(j: Judgement) -> dict:
    i = j.intent
    return {
        "family": i.family, "family_recognised": i.family is not None,
        "intent": {"colours": list(i.colours), "shape": i.shape, "start": list(i.start),
                   "claims": sorted(i.claims)},
        "checks": [_check_dict(c) for c in j.checks],
        "failed": [c.name for c in j.failed],
        "objects": j.objects,
        "noise": round(j.observation.noise, 2),
        "frames": j.observation.frames,
        "resized_from": j.observation.resized_from,
    }


def _check_dict(c: Check) -> dict:
    return {"name": c.name, "kind": c.kind, "subject": c.subject, "excess": round(c.excess, 4),
            "passed": c.passed, "penalty": round(c.penalty, 4), "frame": c.frame, "message": c.message,
            "value": c.value, "limit": c.limit}


def _raw(j: Judgement) -> str:
    tracks = {c: [[_r(x), _r(y)] for x, y in t.pos] for c, t in j.observation.tracks.items()}
    return json.dumps({"tracks": tracks, "objects": j.objects, "noise": round(j.observation.noise, 2),
                       "checks": [(c.name, c.kind, c.subject, round(c.excess, 3)) for c in j.checks]},
                      ensure_ascii=False)
