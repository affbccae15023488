"""The built-in world's second judge: analysis by synthesis.

``SynthesisJudge().score(prompt, video)`` explains the video with the world's own model. It does
not track objects and test laws one by one (that is :mod:`.judge`); it asks which *scene* of
the world — family, body colours, start ``(x0, y0)``, velocity ``(vx0, vy0)``, floor or ball
restitution, friction, direction — would produce these pixels, and how well the best one does.

1. **Colour maps.** Every pixel is read as a blend of the stage behind it (background above the
   floor, the floor's grey below) and one palette colour: its projection on the line from the
   stage colour to the palette colour is the colour's share ``α`` of that pixel, its distance
   from that line says whether the pixel is that colour at all. Each pixel goes to its best
   colour; shares under :data:`ALPHA_CUT` (faint tints, mild noise) are dropped. The result is
   one map per palette colour and frame — what the renderer below draws, read back from pixels.
2. **Fit.** For each family whose bodies could be the colours seen, a coarse-to-fine grid search
   over that family's initial conditions (inside :data:`VALID`, the world's sampling ranges
   widened by a margin) minimises a capped squared distance between the colour maps' centroids
   and the family's kinematics. The kinematics are closed-form and vectorised over candidates
   (bounces as a sequence of parabolas, friction as a clipped quadratic, the collision as two
   straight pieces); they equal :func:`.simulator.simulate` to a few hundredths of a pixel.
3. **Synthesis residual.** The best scene of each family is rendered (analytic anti-aliased
   coverage), seen through a camera blur (a nuisance chosen from :data:`BLURS`) and a per-colour
   gain, and compared with the colour maps after both are smoothed by :data:`COMPARE_SIGMA`:
   ``r_t = Σ |observed − rendered| / object area`` per frame. An object that vanishes costs ≈ 1
   in that frame, a duplicate ≈ 1, a teleport ≈ 2, noise a lot everywhere; a clip that a valid
   scene explains stays near 0.1.
4. **pc** comes from the best family's residuals: the net colour mass a frame gains or loses
   against the render (appearing, vanishing, duplicated objects), the rest averaged over two
   frames (a path no valid scene follows: floating, gaining energy, freezing, jumping), and the
   worst single frame, each divided by its scale (:data:`NET_SCALE`, :data:`PATH_SCALE`,
   :data:`FRAME_SCALE`); the largest ratio ``R`` is mapped by ``1 / (1 + R² / 3)``, so ``R = 1``
   is the accept threshold 0.75.
5. **sa** compares the fitted scene with what the prompt asks (own reader, :func:`read_prompt`):
   the same search is run again *constrained* to the prompt (its family, its colours in order,
   its direction and start region); ``sa`` maps the extra residual that the constraints cost,
   ``Δ = mean_t r_t(prompt) − mean_t r_t(best)``, by the same curve with :data:`SA_SCALE`. The
   rationale names which constraint was expensive (a named colour missing, an unnamed one shown,
   another family explaining better, the other direction, another start).

The scales and the nuisance ranges were tuned on clean simulator clips, their degradations
(blur, ghosting, mild noise, wobble) and the corruptions of :mod:`.corrupt` only — never on
the held-out perturbations of :mod:`.perturb`, which exist to test both judges on failures
neither was designed around. It imports nothing of the analytic judge (:mod:`.judge`,
:mod:`.tracker`, :mod:`.motion`, :mod:`.intent`).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from reward.base import Score
from reward.video_io import check_video

from . import physics as P

ACCEPT = 0.75
COLOURS = tuple(P.PALETTE)
_PAL = np.array([P.PALETTE[c] for c in COLOURS], dtype=np.float32)
_FLOOR_ROW = int(np.ceil(P.FLOOR_Y))
AREA = {"ball": float(np.pi * P.RADIUS**2), "block": float((2 * P.RADIUS) ** 2)}
UNIT = AREA["ball"]  # colour mass of one sharp ball, px
SHAPE = {"drop": "ball", "projectile": "ball", "slide": "block", "collision": "ball"}
N_BODIES = {"drop": 1, "projectile": 1, "slide": 1, "collision": 2}

ALPHA_CUT = 0.12  # colour shares below this are dropped (in the video and in the render alike)
SEEN = 0.35  # a colour is seen in a frame when its map holds this fraction of a ball's area
PRESENT_FRAMES = 3  # … and is a body of the clip when seen in at least this many frames
FIT_CAP = 16.0  # px²: a frame's centroid error counts at most this much in the fit (robust)
BLURS = (0.0, 0.8, 1.3)  # camera blur (Gaussian σ, px) the synthesis may assume
GAIN = (0.6, 1.25)  # per-colour intensity gain the synthesis may assume
COMPARE_SIGMA = 1.0  # both maps are smoothed by this before the residual (px)
# the scales of Fit.excess, in bodies: net mass difference in a frame, mean of the rest over two
# frames, the whole of one frame (clean clips ≤ 0.2, 0.1, 0.3; 0.3 px of wobble ≤ 0.15, 0.35, 0.55)
NET_SCALE = 0.5
PATH_SCALE = 0.4
FRAME_SCALE = 0.65
SA_SCALE = 0.25  # extra mean per-frame residual of the prompt's constraints at which sa = 0.75
REGION_TOL = 1.5  # px a start may lie outside the region its prompt names
MAX_BOUNCES = 8


@dataclass(frozen=True)
class Box:
    lo: float
    hi: float


# The world's scenes (physics.RANGES and the laws' parameter ranges), widened by a margin so that
# a generator's slightly-off but lawful clips stay explainable. A start position may be anywhere.
VALID = {
    "restitution": Box(0.45, 0.90),
    "friction": Box(0.26, 0.50),
    "collision_e": Box(0.75, 1.0),
    "projectile_vx": Box(1.2, 2.4),
    "projectile_vy": Box(-3.0, -1.2),
    "slide_vx": Box(1.6, 3.2),
    "collision_vx": Box(0.9, 2.0),
    "x": Box(-1.0, P.SIZE + 1.0),
    "y": Box(1.0, P.REST_Y),
}


# ------------------------------------------------------------------ the prompt
@dataclass(frozen=True)
class Request:
    """What a prompt asks for, as scene constraints (``None``: left open)."""

    family: str | None
    colours: tuple[str, ...]
    direction: str | None  # "right" | "left"
    start: tuple[str | None, str | None]  # (horizontal, vertical) region words of the first body


_FAMILY_RE = {f: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in ws) + r")\b")
              for f, ws in P.FAMILY_WORDS.items()}
_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")
_DIR_RE = re.compile(r"\bto the (right|left)\b|\b(right|left)wards?\b")
# where the first body starts: "from the top left", "from the left side", "(starts | rest) at the middle centre"
_START_RE = re.compile(r"\b(?:from|(?:starts|rest) at) the (?:(top|middle|bottom) )?(left|centre|center|right)?\b")


def read_prompt(prompt: str) -> Request:
    """Reads the scene constraints of a prompt of the world's grammar.

    The family is the one whose verb comes *first* (the main clause names the motion; later
    clauses, the simulator's own and the critic's, describe parts of it: "hits the floor",
    "then falling faster"); a collision needs two named colours. The direction is the first
    "to the right/left"; the start is the first "from the …" / "starts at the …" phrase.
    """
    text = " ".join(str(prompt).lower().split())
    colours = tuple(dict.fromkeys(m.group(1) for m in _COLOUR_RE.finditer(text)))
    first = {f: m.start() for f, r in _FAMILY_RE.items() if (m := r.search(text))}
    if "collision" in first and len(colours) < 2:
        del first["collision"]
    family = min(first, key=first.get) if first else None
    d = _DIR_RE.search(text)
    direction = (d.group(1) or d.group(2)) if d else None
    start: tuple[str | None, str | None] = (None, None)
    if (s := _START_RE.search(text)) and (s.group(1) or s.group(2)):
        horiz = {"center": "centre"}.get(s.group(2), s.group(2))
        start = (horiz, s.group(1))
    return Request(family, colours, direction, start)


def _region_box(word: str | None, axis: str) -> Box | None:
    """Pixel interval a region word names, widened by :data:`REGION_TOL`."""
    if word is None:
        return None
    order = ("left", "centre", "right") if axis == "x" else ("top", "middle", "bottom")
    third = P.SIZE / 3
    i = order.index(word)
    return Box(i * third - REGION_TOL, (i + 1) * third + REGION_TOL)


# ------------------------------------------------------------------ colour maps
def _stage() -> np.ndarray:
    """Stage colour behind each row (H, 3): background above the floor, floor grey below."""
    rows = np.empty((P.SIZE, 3), dtype=np.float32)
    rows[:] = P.BACKGROUND
    rows[_FLOOR_ROW:] = P.FLOOR_COLOUR
    return rows


_STAGE = _stage()
_DIRS = _PAL[:, None, :] - _STAGE[None]  # (K, H, 3): stage → palette colour, per row
_DIR_NORM2 = (_DIRS**2).sum(-1)  # (K, H)


def cut(share: np.ndarray) -> np.ndarray:
    """Drops faint shares (< ALPHA_CUT) and rescales the rest to [0, 1], continuously."""
    return np.clip((share - ALPHA_CUT) / (1.0 - ALPHA_CUT), 0.0, 1.0)


def colour_maps(video: np.ndarray) -> np.ndarray:
    """Per palette colour, the share of each pixel that is that colour: ``(K, T, H, W)`` float32."""
    d = video.astype(np.float32) - _STAGE[None, :, None, :]  # (T, H, W, 3)
    alpha = np.einsum("thwc,khc->kthw", d, _DIRS) / _DIR_NORM2[:, None, :, None]
    a = np.clip(alpha, 0.0, 1.0)
    perp = np.sqrt(np.maximum((d**2).sum(-1)[None] - 2 * a * alpha * _DIR_NORM2[:, None, :, None]
                              + a**2 * _DIR_NORM2[:, None, :, None], 0.0))
    lo = 12.0 + 0.2 * a * np.sqrt(_DIR_NORM2)[:, None, :, None]
    w = a * np.clip((2 * lo - perp) / lo, 0.0, 1.0)
    best = w.argmax(0)
    w = np.where(np.arange(len(COLOURS))[:, None, None, None] == best[None], w, 0.0)
    return cut(w).astype(np.float32)


@dataclass
class Observed:
    """Colour maps of a clip and the per-frame centroid of each colour."""

    maps: np.ndarray  # (K, T, H, W)
    mass: np.ndarray  # (K, T), px
    centre: np.ndarray  # (K, T, 2), px (NaN where unseen)
    noise_maps: np.ndarray = field(repr=False, default=None)

    @property
    def seen(self) -> np.ndarray:
        return self.mass >= SEEN * UNIT

    def present(self) -> list[int]:
        """Colour indices seen in enough frames to be bodies, heaviest first."""
        idx = [k for k in range(len(COLOURS)) if self.seen[k].sum() >= PRESENT_FRAMES]
        return sorted(idx, key=lambda k: -self.mass[k].sum())


_PIX = np.arange(P.SIZE, dtype=np.float32) + 0.5


def observe(video: np.ndarray) -> Observed:
    maps = colour_maps(video)
    mass = maps.sum((2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (maps.sum(2) * _PIX).sum(-1) / mass
        cy = (maps.sum(3) * _PIX).sum(-1) / mass
    centre = np.stack([cx, cy], -1)
    centre[mass < SEEN * UNIT] = np.nan
    return Observed(maps, mass, centre)


# ------------------------------------------------------------------ kinematics (vectorised)
TIMES = np.arange(P.FRAMES, dtype=np.float64)


def bounce_y(y0: np.ndarray, vy0: np.ndarray, e: np.ndarray, t: np.ndarray = TIMES) -> np.ndarray:
    """Height ``(N, T)`` of balls thrown from ``y0`` with vertical speed ``vy0`` under gravity,
    bouncing on the floor with restitution ``e``: a sequence of parabolas joined at contacts."""
    g, ry = P.GRAVITY, P.REST_Y
    y0 = np.minimum(y0, ry)
    first = (-vy0 + np.sqrt(vy0**2 + 2 * g * (ry - y0))) / g  # time of the first contact
    hit = vy0 + g * first  # downward speed at it
    speeds = hit[:, None] * e[:, None] ** np.arange(1, MAX_BOUNCES + 1)  # upward speed after contact j
    flights = 2 * speeds / g
    contacts = first[:, None] + np.concatenate([np.zeros((len(y0), 1)), np.cumsum(flights[:, :-1], 1)], 1)
    n = (contacts[:, :, None] <= t[None, None, :]).sum(1)  # contacts so far, (N, T)
    j = np.clip(n - 1, 0, MAX_BOUNCES - 1)
    since = t[None, :] - np.take_along_axis(contacts, j, 1)
    u = np.take_along_axis(speeds, j, 1)
    after = np.minimum(ry - u * since + 0.5 * g * since**2, ry)
    free = y0[:, None] + vy0[:, None] * t + 0.5 * g * t**2
    return np.where(n == 0, free, after)


def slide_x(x0: np.ndarray, vx0: np.ndarray, mu: np.ndarray, t: np.ndarray = TIMES) -> np.ndarray:
    """Position ``(N, T)`` of blocks decelerated by friction ``mu`` until they rest."""
    stop = np.abs(vx0) / mu
    m = np.minimum(t[None, :], stop[:, None])
    return x0[:, None] + vx0[:, None] * m - 0.5 * np.sign(vx0)[:, None] * mu[:, None] * m**2


def collision_x(xa: np.ndarray, vx: np.ndarray, tc: np.ndarray, e: np.ndarray,
                xb: np.ndarray, t: np.ndarray = TIMES) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(N, T)`` of a striker (from ``xa`` at ``vx``) and a resting target at ``xb``,
    equal masses, impact at time ``tc`` with restitution ``e``."""
    after = np.maximum(t[None, :] - tc[:, None], 0.0)
    before = np.minimum(t[None, :], tc[:, None])
    va = (0.5 * vx * (1 - e))[:, None]
    vb = (0.5 * vx * (1 + e))[:, None]
    return xa[:, None] + vx[:, None] * before + va * after, xb[:, None] + vb * after


def contact_time(xa: float, vx: float, xb: float) -> float:
    """When the striker first touches the target, on the simulator's 1/40-frame sub-step grid."""
    gap = abs(xb - xa) - 2 * P.RADIUS
    return max(1, int(np.ceil(gap / abs(vx) * 40 - 1e-9))) / 40 if vx else np.inf


def scene_tracks(family: str, bodies: Sequence[tuple[float, float, float, float]], restitution: float,
                 friction: float) -> np.ndarray:
    """Centres ``(T, n, 2)`` of a scene given as ``(x0, y0, vx0, vy0)`` per body — the closed-form
    counterpart of :func:`.simulator.simulate`."""
    a = np.array(bodies[0], dtype=np.float64)
    one = lambda v: np.array([v], dtype=np.float64)  # noqa: E731
    out = np.zeros((P.FRAMES, len(bodies), 2))
    if family in ("drop", "projectile"):
        out[:, 0, 0] = a[0] + a[2] * TIMES
        out[:, 0, 1] = bounce_y(one(a[1]), one(a[3]), one(restitution))[0]
    elif family == "slide":
        out[:, 0, 0] = slide_x(one(a[0]), one(a[2]), one(friction))[0] if a[2] else a[0]
        out[:, 0, 1] = a[1]
    else:
        b = np.array(bodies[1], dtype=np.float64)
        tc = contact_time(a[0], a[2], b[0])
        xa, xb = collision_x(one(a[0]), one(a[2]), one(tc), one(restitution), one(b[0]))
        out[:, 0, 0], out[:, 1, 0] = xa[0], xb[0]
        out[:, 0, 1], out[:, 1, 1] = a[1], b[1]
    return out


# ------------------------------------------------------------------ search
def grid_search(cost: Callable[[np.ndarray], np.ndarray], boxes: Sequence[Box], n0: Sequence[int],
                n1: int = 7, levels: int = 3) -> tuple[np.ndarray, float]:
    """Coarse-to-fine search of the box ``boxes`` (one per parameter): an ``n0`` grid first, then
    ``n1`` points per axis spanning ±1 step of the previous level around its best point."""
    lo = np.array([b.lo for b in boxes])
    hi = np.array([b.hi for b in boxes])
    axes = [np.linspace(l, h, n) if h > l else np.array([l]) for l, h, n in zip(lo, hi, n0)]
    best, best_cost = None, np.inf
    for level in range(levels):
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(boxes))
        c = cost(grid)
        i = int(np.argmin(c))
        if c[i] < best_cost:
            best, best_cost = grid[i], float(c[i])
        steps = [(a[1] - a[0]) if len(a) > 1 else 0.0 for a in axes]
        axes = [np.unique(np.clip(np.linspace(b - s, b + s, n1), l, h)) if s else np.array([b])
                for b, s, l, h in zip(best, steps, lo, hi)]
    return best, best_cost


def _fit_cost(pred: np.ndarray, obs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Capped squared distance ``(N,)`` of predicted coordinates ``(N, T)`` from observed ``(T,)``."""
    return (w * np.minimum((pred - obs) ** 2, FIT_CAP)).sum(-1)


def _wmean(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (v * w).sum(-1) / np.maximum(w.sum(-1), 1e-9)


@dataclass
class Constraint:
    """Limits the prompt puts on a fit: direction of motion and the first body's start box."""

    sign: float | None = None  # +1 right, −1 left
    x0: Box | None = None
    y0: Box | None = None

    def clip_x(self, x: np.ndarray) -> np.ndarray:
        return x if self.x0 is None else np.clip(x, self.x0.lo, self.x0.hi)

    def box_y(self, box: Box) -> Box:
        if self.y0 is None:
            return box
        return Box(max(box.lo, self.y0.lo), max(min(box.hi, self.y0.hi), max(box.lo, self.y0.lo)))

    def signs(self) -> tuple[float, ...]:
        return (self.sign,) if self.sign else (1.0, -1.0)


@dataclass
class Fit:
    """The best scene of one family for given body colours."""

    family: str
    colours: tuple[str, ...]
    tracks: np.ndarray  # (T, n, 2)
    params: dict
    cost: float
    residual: np.ndarray | None = None  # (T,) per-frame synthesis residual Σ|observed − rendered|, bodies
    net: np.ndarray | None = None  # (T,) per-frame net colour-mass difference, bodies
    blur: float = 0.0

    @property
    def excess(self) -> float:
        """How far the best render misses, in units of what a lawful clip may show (1 = the pc
        threshold): the worst net mass difference (something appears or vanishes), the worst
        two-frame mean of the rest (a path no valid scene follows), or the worst single frame."""
        return max(self.parts())

    def parts(self) -> tuple[float, float, float]:
        """The three terms of :attr:`excess`: net, path, frame (each over its scale)."""
        shift = np.clip(self.residual - self.net, 0.0, None)
        pair = float((shift[1:] + shift[:-1]).max() / 2)
        return float(self.net.max()) / NET_SCALE, pair / PATH_SCALE, float(self.residual.max()) / FRAME_SCALE

    @property
    def worst(self) -> float:
        return float(self.residual.max())

    @property
    def mean(self) -> float:
        return float(self.residual.mean())

    def direction(self) -> str | None:
        vx = self.params.get("vx0", 0.0)
        return None if not vx else ("right" if vx > 0 else "left")

    def start(self) -> tuple[float, float]:
        return float(self.tracks[0, 0, 0]), float(self.tracks[0, 0, 1])


def _obs_xyw(obs: Observed, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = obs.centre[k]
    w = obs.seen[k].astype(np.float64)
    return np.nan_to_num(c[:, 0]), np.nan_to_num(c[:, 1]), w


def fit_drop(obs: Observed, k: int, con: Constraint) -> Fit:
    x, y, w = _obs_xyw(obs, k)
    x0 = float(con.clip_x(np.array(np.median(x[w > 0]) if w.any() else P.SIZE / 2)))
    cost_x = float(_fit_cost(np.full((1, P.FRAMES), x0), x, w)[0])
    cost = lambda p: _fit_cost(bounce_y(p[:, 0], np.zeros(len(p)), p[:, 1]), y, w)  # noqa: E731
    (y0, e), c = grid_search(cost, [con.box_y(VALID["y"]), VALID["restitution"]], (13, 4))
    tracks = scene_tracks("drop", [(x0, y0, 0.0, 0.0)], e, 0.0)
    return Fit("drop", (COLOURS[k],), tracks, {"x0": x0, "y0": y0, "vx0": 0.0, "vy0": 0.0, "restitution": e},
               c + cost_x)


def _line_fit(x: np.ndarray, w: np.ndarray, speed: Box, con: Constraint) -> tuple[float, float]:
    """Weighted least-squares start and velocity of ``x(t) = x0 + vx·t``, the speed kept inside
    ``speed`` and the direction and start inside the constraint (one robust re-weighting)."""
    best = None
    for sign in con.signs():
        ww = w.copy()
        for _ in range(2):
            tm, xm = _wmean(TIMES, ww), _wmean(x, ww)
            var = (ww * (TIMES - tm) ** 2).sum()
            vx = (ww * (TIMES - tm) * (x - xm)).sum() / var if var > 0 else 0.0
            vx = sign * float(np.clip(sign * vx, speed.lo, speed.hi))
            x0 = float(con.clip_x(np.array(xm - vx * tm)))
            err = (x - x0 - vx * TIMES) ** 2
            ww = w / (1.0 + err / 4.0)
        c = float(_fit_cost((x0 + vx * TIMES)[None], x, w)[0])
        if best is None or c < best[0]:
            best = (c, x0, vx)
    return best[1], best[2]


def fit_projectile(obs: Observed, k: int, con: Constraint) -> Fit:
    x, y, w = _obs_xyw(obs, k)
    x0, vx = _line_fit(x, w, VALID["projectile_vx"], con)
    cost_x = float(_fit_cost((x0 + vx * TIMES)[None], x, w)[0])
    cost = lambda p: _fit_cost(bounce_y(p[:, 0], p[:, 1], p[:, 2]), y, w)  # noqa: E731
    (y0, vy, e), c = grid_search(cost, [con.box_y(VALID["y"]), VALID["projectile_vy"], VALID["restitution"]],
                                 (13, 5, 3))
    tracks = scene_tracks("projectile", [(x0, y0, vx, vy)], e, 0.0)
    return Fit("projectile", (COLOURS[k],), tracks,
               {"x0": x0, "y0": y0, "vx0": vx, "vy0": vy, "restitution": e}, c + cost_x)


def fit_slide(obs: Observed, k: int, con: Constraint) -> Fit:
    x, y, w = _obs_xyw(obs, k)
    cost_y = float(_fit_cost(np.full((1, P.FRAMES), P.REST_Y), y, w)[0])
    best = None
    for sign in con.signs():
        def shape(p: np.ndarray) -> np.ndarray:  # displacement from x0, (N, T)
            return slide_x(np.zeros(len(p)), sign * np.clip(p[:, 0], 1e-6, None), p[:, 1])

        def cost(p: np.ndarray) -> np.ndarray:
            d = shape(p)
            x0 = con.clip_x(_wmean(x[None] - d, w[None]))
            return _fit_cost(x0[:, None] + d, x, w)

        (speed, mu), c = grid_search(cost, [VALID["slide_vx"], VALID["friction"]], (9, 7))
        if best is None or c < best[0]:
            d = shape(np.array([[speed, mu]]))
            x0 = float(con.clip_x(_wmean(x[None] - d, w[None]))[0])
            best = (c, x0, sign * speed, mu)
    c, x0, vx, mu = best
    tracks = scene_tracks("slide", [(x0, P.REST_Y, vx, 0.0)], 0.0, mu)
    return Fit("slide", (COLOURS[k],), tracks, {"x0": x0, "y0": P.REST_Y, "vx0": vx, "vy0": 0.0, "friction": mu},
               c + cost_y)


def fit_collision(obs: Observed, ka: int, kb: int, con: Constraint) -> Fit:
    xa, ya, wa = _obs_xyw(obs, ka)
    xb, yb, wb = _obs_xyw(obs, kb)
    cost_y = float(_fit_cost(np.full((1, P.FRAMES), P.REST_Y), ya, wa)[0]
                   + _fit_cost(np.full((1, P.FRAMES), P.REST_Y), yb, wb)[0])
    if con.sign:
        sign = con.sign
    else:  # the striker comes from the side away from the target
        sign = 1.0 if (not wa.any() or not wb.any() or _wmean(xa, wa) <= _wmean(xb, wb)) else -1.0
    both_x, both_w = np.concatenate([xa, xb]), np.concatenate([wa, wb])

    def pieces(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # displacements from the striker's x0
        vx = sign * p[:, 0]
        zero = np.zeros(len(p))
        return collision_x(zero, vx, p[:, 1], p[:, 2], vx * p[:, 1] + sign * 2 * P.RADIUS)

    def cost(p: np.ndarray) -> np.ndarray:
        da, db = pieces(p)
        x0 = _wmean(both_x[None] - np.concatenate([da, db], 1), both_w[None])
        return _fit_cost(x0[:, None] + da, xa, wa) + _fit_cost(x0[:, None] + db, xb, wb)

    (speed, tc, e), c = grid_search(cost, [VALID["collision_vx"], Box(0.0, P.FRAMES + 1.0), VALID["collision_e"]],
                                    (7, 13, 3))
    p = np.array([[speed, tc, e]])
    da, db = pieces(p)
    x0 = float(_wmean(both_x[None] - np.concatenate([da, db], 1), both_w[None])[0])
    vx = sign * speed
    target = x0 + vx * tc + sign * 2 * P.RADIUS
    tracks = np.zeros((P.FRAMES, 2, 2))
    tracks[:, 0, 0], tracks[:, 1, 0] = x0 + da[0], x0 + db[0]
    tracks[:, :, 1] = P.REST_Y
    return Fit("collision", (COLOURS[ka], COLOURS[kb]), tracks,
               {"x0": x0, "y0": P.REST_Y, "vx0": vx, "vy0": 0.0, "target_x0": target, "contact_frame": tc,
                "restitution": e}, c + cost_y)


# ------------------------------------------------------------------ rendering and residual
def coverage(shape: str, centres: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage ``(T, H, W)`` of one body at per-frame centres ``(T, 2)``: exact for a
    block (product of overlaps), a one-pixel ramp across the rim for a ball."""
    cx, cy = centres[:, 0, None], centres[:, 1, None]
    if shape == "block":
        edges = _PIX[None] - 0.5
        ox = np.clip(np.minimum(edges + 1, cx + P.RADIUS) - np.maximum(edges, cx - P.RADIUS), 0, 1)
        oy = np.clip(np.minimum(edges + 1, cy + P.RADIUS) - np.maximum(edges, cy - P.RADIUS), 0, 1)
        return oy[:, :, None] * ox[:, None, :]
    dist = np.sqrt((_PIX[None, None, :] - cx[:, :, None]) ** 2 + (_PIX[None, :, None] - cy[:, :, None]) ** 2)
    return np.clip(P.RADIUS + 0.5 - dist, 0.0, 1.0)


def _smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of every (H, W) plane of ``(..., H, W)`` maps, in one OpenCV call."""
    if sigma <= 0:
        return maps
    lead = maps.shape[:-2]
    planes = np.ascontiguousarray(maps.reshape(-1, P.SIZE, P.SIZE).transpose(1, 2, 0), dtype=np.float32)
    out = cv2.GaussianBlur(planes, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    out = out.reshape(P.SIZE, P.SIZE, -1) if out.ndim == 3 else out[..., None]
    return out.transpose(2, 0, 1).reshape(*lead, P.SIZE, P.SIZE)


def _robust_gain(drawn: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Per-body intensity gain ``(n,)``: the median, over frames where the body is both drawn and
    seen, of observed / drawn colour mass, so that frames where it is missing or doubled do not
    dim or brighten the others."""
    drawn_mass = drawn.sum((2, 3))
    both = (drawn_mass > SEEN * UNIT) & (mass > SEEN * UNIT)
    ratio = np.where(both, mass / np.maximum(drawn_mass, 1e-9), np.nan)
    gain = np.nanmedian(np.where(np.isnan(ratio).all(1, keepdims=True), 1.0, ratio), axis=1)
    return np.clip(gain, *GAIN)


@functools.lru_cache(maxsize=None)
def body_mass(shape: str, blur: float) -> float:
    """Colour mass of one whole body as the synthesis draws it (blurred, then :func:`cut`), px."""
    drawn = _smooth(coverage(shape, np.array([[P.SIZE / 2, P.SIZE / 2]]))[None].astype(np.float32), blur)
    return float(cut(drawn).sum())


def synthesis_residual(obs: Observed, smooth_obs: np.ndarray, fit: Fit) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-frame residuals of the fit's render against the video's colour maps, in bodies (one
    whole body's colour mass): the total ``Σ|observed − rendered|`` and the net mass difference
    ``|Σ(observed − rendered)|`` summed over colours, both ``(T,)``, and the camera blur of
    :data:`BLURS` used — the one that best explains the frames where every body is seen."""
    shape = SHAPE[fit.family]
    raw = np.zeros((len(COLOURS), P.FRAMES, P.SIZE, P.SIZE), dtype=np.float32)
    for i, colour in enumerate(fit.colours):
        raw[COLOURS.index(colour)] += coverage(shape, fit.tracks[:, i])
    ks = [COLOURS.index(c) for c in fit.colours]
    seen = obs.seen[ks].all(0)
    judged = seen if seen.any() else np.ones(P.FRAMES, bool)
    best = None
    for blur in BLURS:
        drawn = _smooth(raw[ks], blur)
        rendered = raw.copy()
        rendered[ks] = cut(drawn * _robust_gain(drawn, obs.mass[ks])[:, None, None, None])
        diff = smooth_obs - _smooth(rendered, COMPARE_SIGMA)
        unit = body_mass(shape, blur)
        total = np.abs(diff).sum((2, 3)).sum(0) / unit
        net = np.abs(diff.sum((2, 3))).sum(0) / unit
        if best is None or total[judged].mean() < best[0][judged].mean():
            best = (total, net, blur)
    return best


# ------------------------------------------------------------------ the judge
def _pc_curve(r: float, scale: float) -> float:
    """1 at r = 0, 0.75 at r = scale, falling like 1 / (1 + x²/3)."""
    return float(1.0 / (1.0 + (max(r, 0.0) / scale) ** 2 / 3.0))


FITTERS = {"drop": fit_drop, "projectile": fit_projectile, "slide": fit_slide}


def _fits(obs: Observed, smooth_obs: np.ndarray, family: str, colours: Sequence[int], con: Constraint,
          ordered: bool = False) -> Fit | None:
    """The best fit of ``family`` with bodies of the given colour indices (for a collision the
    first two, as striker and target — both ways round unless ``ordered``), with its residual."""
    if len(colours) < N_BODIES[family]:
        return None
    if family == "collision":
        a, b = colours[0], colours[1]
        cands = [fit_collision(obs, a, b, con)] + ([] if ordered else [fit_collision(obs, b, a, con)])
    else:
        cands = [FITTERS[family](obs, colours[0], con)]
    for f in cands:
        f.residual, f.net, f.blur = synthesis_residual(obs, smooth_obs, f)
    return min(cands, key=lambda f: f.mean)


class SynthesisJudge:
    """``reward.base.Judge`` of the built-in world by analysis by synthesis (module docstring)."""

    name = "synthesis"

    def __init__(self, sa_scale: float = SA_SCALE):
        self.sa_scale = sa_scale

    def score(self, prompt: str, video: np.ndarray) -> Score:
        try:
            video = check_video(video)
        except ValueError as e:
            return Score.unjudged(str(e))
        if video.shape[1:3] != (P.SIZE, P.SIZE):
            video = np.stack([cv2.resize(f, (P.SIZE, P.SIZE), interpolation=cv2.INTER_AREA) for f in video])
        if video.shape[0] != P.FRAMES:
            return Score.unjudged(f"the world's clips have {P.FRAMES} frames, got {video.shape[0]}")
        return self._judge(read_prompt(prompt), video)

    def score_batch(self, items: Sequence[tuple[str, np.ndarray]]) -> list[Score]:
        return [self.score(p, v) for p, v in items]

    # -------------------------------------------------------------- steps
    def _judge(self, req: Request, video: np.ndarray) -> Score:
        obs = observe(video)
        smooth_obs = _smooth(obs.maps, COMPARE_SIGMA)
        present = obs.present()
        if not present:
            return self._empty(req, obs, smooth_obs)
        free = Constraint()
        fits: dict[str, Fit] = {}
        for family in P.FAMILIES:
            if (f := _fits(obs, smooth_obs, family, present, free)) is not None:
                fits[family] = f
        best = min(fits.values(), key=lambda f: f.excess)
        asked = self._asked_fit(obs, smooth_obs, req, fits)
        delta = max(asked.mean - best.mean, 0.0) if asked is not None else 1.0
        pc = _pc_curve(best.excess, 1.0)
        sa = _pc_curve(delta, self.sa_scale)
        reasons = self._pc_reasons(best, pc) + self._sa_reasons(req, obs, fits, best, present, sa)
        accept = sa >= ACCEPT and pc >= ACCEPT
        rationale = "; ".join(reasons) + "." if reasons else self._summary(best)
        raw = {"best": _fit_json(best), "asked": _fit_json(asked) if asked else None,
               "families": {f: {"excess": round(x.excess, 3), "mean": round(x.mean, 3)} for f, x in fits.items()},
               "present": [COLOURS[k] for k in present], "request": req.__dict__}
        details = {"family": best.family, "colours": list(best.colours), "excess": round(best.excess, 4),
                   "residual_mean": round(best.mean, 4), "prompt_cost": round(delta, 4),
                   "request": {"family": req.family, "colours": list(req.colours), "direction": req.direction,
                               "start": list(req.start)},
                   "failed": [r.split(":")[0] for r in reasons]}
        return Score(sa=round(sa, 4), pc=round(pc, 4), accept=accept, rationale=rationale,
                     raw=json.dumps(raw, ensure_ascii=False), details=details)

    def _asked_fit(self, obs: Observed, smooth_obs: np.ndarray, req: Request, fits: dict[str, Fit]) -> Fit | None:
        """The best scene that is what the prompt says: its family, its colours in order (else the
        colours seen), its direction and start region. The unconstrained fit of that family is
        reused when it already is such a scene."""
        family = req.family or None
        colours = [COLOURS.index(c) for c in req.colours] or obs.present()
        sign = {"right": 1.0, "left": -1.0}.get(req.direction) if (family or "") in P.MIRRORED else None
        con = Constraint(sign, _region_box(req.start[0], "x"), _region_box(req.start[1], "y"))
        families = [family] if family else list(P.FAMILIES)
        done = [fits[f] for f in families if f in fits and _satisfies(fits[f], colours, con)]
        if len(done) == len(families):
            return min(done, key=lambda f: f.mean)
        ordered = bool(req.colours)
        cands = [f for fam in families
                 if (f := _fits(obs, smooth_obs, fam, colours, con, ordered)) is not None]
        return min(cands, key=lambda f: f.mean) if cands else None

    def _empty(self, req: Request, obs: Observed, smooth_obs: np.ndarray) -> Score:
        """No colour is seen: every scene of the world draws at least one body, so none explains it."""
        r = float(np.abs(smooth_obs).sum((0, 2, 3)).max() / UNIT) + 1.0  # the missing body, and any faint colour
        pc = _pc_curve(r / NET_SCALE, 1.0)
        why = "no object found in the video: no scene of the world explains an empty stage"
        return Score(sa=0.0, pc=round(pc, 4), accept=False, rationale=why + ".",
                     raw=json.dumps({"present": [], "request": req.__dict__}),
                     details={"family": None, "colours": [], "excess": round(r / NET_SCALE, 4), "failed": ["objects"]})

    @staticmethod
    def _pc_reasons(best: Fit, pc: float) -> list[str]:
        """What the best valid scene could not reproduce, and from which frame."""
        if pc >= ACCEPT:
            return []
        net, path, frame = best.parts()
        noun = f"{best.family} scene"
        if net >= max(path, frame):
            f = int(best.net.argmax())
            return [f"appearance: at frame {f} colour mass appears or vanishes that no valid {noun} draws "
                    f"({best.net[f]:.2f} of an object: an object vanishes, duplicates, or the frame is noise)"]
        if path >= frame:
            shift = np.clip(best.residual - best.net, 0.0, None)
            f = int((shift[1:] + shift[:-1]).argmax())
            return [f"motion: from frame {f} the objects leave every path a valid {noun} allows "
                    f"(they jump, float, freeze or gain energy; residual {shift[f]:.2f} objects)"]
        f = int(best.residual.argmax())
        return [f"frame: frame {f} differs from the best valid {noun} by {best.residual[f]:.2f} objects"]

    @staticmethod
    def _sa_reasons(req: Request, obs: Observed, fits: dict[str, Fit], best: Fit, present: list[int],
                    sa: float) -> list[str]:
        if sa >= ACCEPT:
            return []
        shown = [COLOURS[k] for k in present]
        out = [f"missing: the {c} object is not in the video" for c in req.colours if c not in shown]
        out += [f"extra: an unrequested {c} object is shown" for c in shown if req.colours and c not in req.colours]
        if req.family and req.family != best.family and req.family in fits:
            named = fits[req.family]
            out.append(f"family: a {best.family} explains the video better than a {req.family} "
                       f"(residual {best.mean:.2f} vs {named.mean:.2f})")
        if req.family == "collision" and len(req.colours) >= 2 and best.family == "collision" \
                and best.colours[:2] != req.colours[:2] and set(best.colours) == set(req.colours[:2]):
            out.append(f"order: the {best.colours[0]} ball strikes, not the {req.colours[0]} one")
        if req.direction and best.direction() and best.direction() != req.direction:
            out.append(f"direction: it moves to the {best.direction()}, not the {req.direction}")
        if any(req.start):
            x, y = best.start()
            horiz, vert = P.region_words(x, y)
            bx, by = _region_box(req.start[0], "x"), _region_box(req.start[1], "y")
            if (bx and not bx.lo <= x <= bx.hi) or (by and not by.lo <= y <= by.hi):
                out.append(f"start: it starts at the {vert} {horiz}, not the "
                           + " ".join(w for w in (req.start[1], req.start[0]) if w))
        return out or ["prompt: the scene the prompt describes explains the video worse than another"]

    @staticmethod
    def _summary(best: Fit) -> str:
        p = best.params
        bits = [f"{best.family} of the {' and '.join(best.colours)} {SHAPE[best.family]}"
                f"{'s' if len(best.colours) > 1 else ''} explains the video",
                f"start ({p['x0']:.1f}, {p['y0']:.1f})"]
        if p.get("vx0"):
            bits.append(f"vx {p['vx0']:.2f}")
        for key in ("restitution", "friction"):
            if key in p:
                bits.append(f"{key} {p[key]:.2f}")
        return ", ".join(bits) + f"; residual ≤ {best.worst:.2f} of an object per frame."


def _satisfies(fit: Fit, colours: Sequence[int], con: Constraint) -> bool:
    """Whether ``fit`` already has the given body colours (in order) and meets the constraint."""
    if [COLOURS.index(c) for c in fit.colours] != list(colours[:len(fit.colours)]):
        return False
    if con.sign is not None and np.sign(fit.params.get("vx0", 0.0)) != con.sign:
        return False
    x, y = fit.start()
    return all(box is None or box.lo <= v <= box.hi for box, v in ((con.x0, x), (con.y0, y)))


def _fit_json(f: Fit) -> dict:
    return {"family": f.family, "colours": list(f.colours), "blur": f.blur,
            "params": {k: round(float(v), 3) for k, v in f.params.items()},
            "residual": [round(float(v), 3) for v in f.residual], "net": [round(float(v), 3) for v in f.net]}
