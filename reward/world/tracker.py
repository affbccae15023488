"""Finding and following the objects of the built-in world in any video.

The judge must read videos from the simulator (sharp, anti-aliased), from the tiny generator
(blurry, ghosted, noisy) and from files (compressed, resized). Everything here is therefore
*soft*:

* **Colour membership by hue and chroma.** Every object is a saturated palette colour drawn
  over a neutral (grey) background or floor. Mixing a colour with grey — anti-aliasing,
  blur, ghosting, a half-covered floor pixel — scales its chroma (max − min channel) but
  keeps its hue. So a pixel's *hue* says which palette colour it belongs to and its chroma
  divided by the colour's full chroma says *how much* (an alpha in [0, 1]). The sum of these
  alphas over a blob is the object's area whatever the blur, and alpha-weighted centroids
  are sub-pixel accurate.
* **Blobs** are 8-connected components of the membership mask, kept if they carry enough
  colour (a fraction of an object's area) and are compact (noise merges into sprawling,
  hollow components, which are dropped).
* **Tracks** follow one colour through time: the blob nearest to the constant-velocity
  prediction is the object; any *other* substantial blob of that colour in the same frame
  is counted as a duplicate (a faint ghost is not substantial).
* **Noise level** is a robust per-pixel standard deviation from neighbouring-pixel
  differences (median absolute difference), blind to the few object edges in a frame.

Coordinates are pixels with ``(0, 0)`` the top-left corner of the top-left pixel, so a pixel
``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)`` — the simulator's convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from . import physics as P

COLOURS: tuple[str, ...] = tuple(P.PALETTE)
_PAL = np.array([P.PALETTE[c] for c in COLOURS], dtype=np.float32)

HUE_IN = 20.0  # degrees from a palette hue with full membership
HUE_OUT = 40.0  # degrees from a palette hue where membership reaches zero
ALPHA_MIN = 0.2  # a blob is seeded by pixels with at least this much of a colour …
ALPHA_FLOOR = 0.04  # … and collects its anti-aliased rim down to this much (the background's tint is less)
OBJECT_AREA = float(np.pi * P.RADIUS**2)  # colour mass of one ball, px (a block has 4/π of it)
BLOB_MIN = 0.3 * OBJECT_AREA  # least colour mass of a blob that counts as an object
DUPLICATE_MIN = 0.5 * OBJECT_AREA  # a second blob this heavy (and ≥ half the first) is a duplicate
BLOB_MIN_DENSITY = 0.15  # colour mass / area of the ellipse inscribed in the blob's bounding box
BLOB_MAX_MASS = 3.0 * OBJECT_AREA  # heavier components are smeared colour or noise, not one object
SHAPE_MIN_GAP = 0.12  # a blob votes on its shape only if a disc and a square would differ this much
SHAPE_MAX_ANISOTROPY = 0.12  # … and only if it is not stretched (motion smear, ghosting)


def hue_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360) and chroma (max − min channel) of RGB ``(..., 3)`` (0–255 scale)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.float32)
    flat = rgb.reshape(-1, 1, 3)
    hue = cv2.cvtColor(flat, cv2.COLOR_RGB2HSV)[:, 0, 0].reshape(rgb.shape[:-1])
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    return hue % 360.0, chroma


_PAL_HUE, _PAL_CHROMA = hue_chroma(_PAL)


def memberships(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel palette colour index ``(T, H, W)`` and membership weight in [0, 1].

    Each pixel belongs to at most one palette colour (the nearest hue); its weight is the
    fraction of that colour in the pixel (chroma ratio) times a hue match that fades from
    1 at :data:`HUE_IN` to 0 at :data:`HUE_OUT` degrees. Weights below :data:`ALPHA_FLOOR`
    (the background's own faint tint) are zero.
    """
    hue, chroma = hue_chroma(video.astype(np.float32))
    d = np.abs(hue[..., None] - _PAL_HUE)
    d = np.minimum(d, 360.0 - d)
    k = np.argmin(d, axis=-1)
    dk = np.take_along_axis(d, k[..., None], axis=-1)[..., 0]
    alpha = np.clip(chroma / _PAL_CHROMA[k], 0.0, 1.0)
    match = np.clip((HUE_OUT - dk) / (HUE_OUT - HUE_IN), 0.0, 1.0)
    w = alpha * match
    w[alpha < ALPHA_FLOOR] = 0.0
    return k, w.astype(np.float32)


def noise_level(video: np.ndarray) -> float:
    """Robust noise standard deviation (grey levels) of a uint8 video.

    Differences of horizontally adjacent pixels are ~0 on the world's flat background and
    floor and ``σ·√2`` under independent per-pixel noise of std σ; object edges are a small
    minority, so the median absolute difference ignores them (1.4826 · MAD ≈ std).
    """
    d = np.abs(np.diff(video.astype(np.int16), axis=2)).astype(np.float32)
    return float(1.4826 * np.median(d) / np.sqrt(2.0))


@dataclass
class Blob:
    colour: str
    x: float
    y: float
    mass: float  # Σ membership ≈ area in px of full colour
    peak: float  # largest membership in the blob (≈1 when sharp)
    width: int
    height: int
    touches_edge: bool
    squareness: float  # E[dx²dy²] / (E[dx²]E[dy²]): ≈0.67 for a sharp disc, ≈1 for a square
    spread: float = 0.0  # (E[dx²] + E[dy²]) / 2, px²: 1.6 for a sharp ball, 2.2 for a sharp block
    anisotropy: float = 0.0  # (λ_max − λ_min) / (λ_max + λ_min) of the 2×2 second moments: 0 = round/square

    def shape_vote(self) -> str | None:
        """"ball", "block" or ``None`` (undecided) from the blob's squareness.

        A square's squareness is 1 under any blur; a disc's rises from 0.67 towards 1 as blur
        widens it. The blob's spread tells how much blur a disc would need to look this wide,
        hence what squareness a blurred disc would show; the blob votes for whichever shape
        it is closer to, and abstains when the two predictions are too close to tell apart
        (heavy blur) or the blob is faint.
        """
        if self.peak < 0.9 or self.touches_edge or self.anisotropy > SHAPE_MAX_ANISOTROPY:
            return None  # faint, cut, or smeared by motion: its outline says nothing reliable
        a = P.RADIUS**2 / 4  # E[u²] of a uniform disc
        s2 = max(0.0, self.spread - a)  # blur variance a disc would need (pixel size included)
        q_disc = (P.RADIUS**4 / 24 + 2 * s2 * a + s2 * s2) / (a + s2) ** 2
        if 1.0 - q_disc < SHAPE_MIN_GAP:
            return None
        return "ball" if self.squareness < (q_disc + 1.0) / 2 else "block"


_KERNEL = np.ones((3, 3), np.uint8)


def _colour_blobs(colour: str, wc: np.ndarray) -> list[list[Blob]]:
    """Blobs of one colour in every frame, from its membership weights ``(T, H, W)``.

    The frames are laid side by side with a blank column between them, so one connected-
    components pass and one set of ``bincount`` moments serve the whole clip.
    """
    t_len, h, w = wc.shape
    out: list[list[Blob]] = [[] for _ in range(t_len)]
    seeds = wc >= ALPHA_MIN
    if not seeds.any():
        return out
    stride = w + 1
    mosaic = np.zeros((h, t_len, stride), np.float32)
    mosaic[:, :, :w] = wc.transpose(1, 0, 2)
    mosaic = mosaic.reshape(h, t_len * stride)
    seed_img = (mosaic >= ALPHA_MIN).astype(np.uint8)
    # grow the seeds by one pixel so each blob keeps its faint anti-aliased rim (dropping it
    # would bias the centroid towards the core); the blank columns stop growth across frames
    grown = cv2.dilate(seed_img, _KERNEL) & (mosaic > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
    lab_all = labels.ravel()
    on = np.flatnonzero(lab_all)  # only labelled pixels carry moments
    lab = lab_all[on]
    wf = mosaic.ravel()[on].astype(np.float64)
    xs = on % (t_len * stride) % stride + 0.5
    ys = on // (t_len * stride) + 0.5
    mom = {key: np.bincount(lab, wf * val, minlength=n) for key, val in (
        ("1", 1.0), ("x", xs), ("y", ys), ("xx", xs * xs), ("yy", ys * ys), ("xy", xs * ys),
        ("xxy", xs * xs * ys), ("xyy", xs * ys * ys), ("xxyy", xs * xs * ys * ys))}
    peak = np.zeros(n)
    np.maximum.at(peak, lab, wf)
    for i in range(1, n):
        m = mom["1"][i]
        if m < BLOB_MIN or m > BLOB_MAX_MASS:
            continue
        left, top, bw, bh = (int(v) for v in stats[i, :4])
        if m / (np.pi / 4 * bw * bh) < BLOB_MIN_DENSITY:
            continue
        cx, cy = mom["x"][i] / m, mom["y"][i] / m
        e = {k: v[i] / m for k, v in mom.items()}
        vx = e["xx"] - cx * cx
        vy = e["yy"] - cy * cy
        # E[(x−cx)²(y−cy)²] from raw moments
        m22 = (e["xxyy"] - 2 * cy * e["xxy"] - 2 * cx * e["xyy"] + cy * cy * e["xx"] + cx * cx * e["yy"]
               + 4 * cx * cy * e["xy"] - 3 * cx * cx * cy * cy)
        cxy = e["xy"] - cx * cy
        aniso = float(np.hypot(vx - vy, 2 * cxy) / max(vx + vy, 1e-6))
        frame, x0 = divmod(left, stride)
        edge = x0 == 0 or top == 0 or x0 + bw >= w or top + bh >= h
        out[frame].append(Blob(colour, float(cx), float(cy), float(m), float(peak[i]), bw, bh, edge,
                               float(m22 / max(vx * vy, 1e-6)), float((vx + vy) / 2), aniso))
    for blobs in out:
        blobs.sort(key=lambda b: -b.mass)
    return out


def detect(video: np.ndarray) -> list[dict[str, list[Blob]]]:
    """Object blobs per frame and colour: ``frames[t][colour] -> [Blob, ...]`` (heaviest first)."""
    k, w = memberships(video)
    out: list[dict[str, list[Blob]]] = [{} for _ in range(video.shape[0])]
    for ci, colour in enumerate(COLOURS):
        for t, blobs in enumerate(_colour_blobs(colour, np.where(k == ci, w, 0.0))):
            if blobs:
                out[t][colour] = blobs
    return out


@dataclass
class Track:
    """One colour followed through the clip. ``pos[t]`` is NaN where the object was not seen."""

    colour: str
    pos: np.ndarray  # (T, 2) x, y
    mass: np.ndarray  # (T,) colour mass of the chosen blob (0 when unseen)
    duplicates: np.ndarray  # (T,) number of other substantial blobs of this colour
    edge: np.ndarray  # (T,) chosen blob touches the frame border (partly out of view)
    squareness: float | None  # median over frames that voted on the shape; None when none did
    shape_votes: dict[str, int] = field(default_factory=dict)  # "ball"/"block" -> frames voting so
    blobs: list[list[Blob]] = field(default_factory=list, repr=False)

    @property
    def seen(self) -> np.ndarray:
        return ~np.isnan(self.pos[:, 0])

    @property
    def seen_fraction(self) -> float:
        return float(self.seen.mean())

    @property
    def mean_mass(self) -> float:
        return float(self.mass[self.seen].mean()) if self.seen.any() else 0.0


def follow(colour: str, frames: list[dict[str, list[Blob]]]) -> Track:
    """Tracks one colour: the object is the blob nearest the constant-velocity prediction."""
    t_len = len(frames)
    pos = np.full((t_len, 2), np.nan)
    mass = np.zeros(t_len)
    dups = np.zeros(t_len, dtype=int)
    edge = np.zeros(t_len, dtype=bool)
    squares: list[float] = []
    votes: dict[str, int] = {}
    history: list[tuple[int, np.ndarray]] = []
    per_frame: list[list[Blob]] = []
    for t, per in enumerate(frames):
        blobs = per.get(colour, [])
        per_frame.append(blobs)
        if not blobs:
            continue
        heaviest = blobs[0].mass
        candidates = [b for b in blobs if b.mass >= 0.5 * heaviest]
        if history:
            (t1, p1) = history[-1]
            if len(history) >= 2:
                t0, p0 = history[-2]
                pred = p1 + (p1 - p0) / (t1 - t0) * (t - t1)
            else:
                pred = p1
            chosen = min(candidates, key=lambda b: float(np.hypot(b.x - pred[0], b.y - pred[1])))
        else:
            chosen = blobs[0]
        pos[t] = (chosen.x, chosen.y)
        mass[t] = chosen.mass
        edge[t] = chosen.touches_edge
        dups[t] = sum(1 for b in blobs if b is not chosen and b.mass >= DUPLICATE_MIN
                      and b.mass >= 0.5 * chosen.mass)
        vote = chosen.shape_vote()
        if vote is not None:
            squares.append(chosen.squareness)
            votes[vote] = votes.get(vote, 0) + 1
        history.append((t, pos[t].copy()))
    sq = float(np.median(squares)) if squares else None
    return Track(colour, pos, mass, dups, edge, sq, votes, per_frame)


@dataclass
class Observation:
    """Everything the judge measures from the pixels of one video."""

    tracks: dict[str, Track]  # every colour seen as an object somewhere in the clip
    noise: float
    frames: int
    resized_from: tuple[int, int] | None = None


def to_world_size(video: np.ndarray) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Brings a video of any frame size to the world's ``SIZE × SIZE`` (area averaging)."""
    h, w = video.shape[1:3]
    if (h, w) == (P.SIZE, P.SIZE):
        return video, None
    interp = cv2.INTER_AREA if min(h, w) >= P.SIZE else cv2.INTER_LINEAR
    out = np.stack([cv2.resize(f, (P.SIZE, P.SIZE), interpolation=interp) for f in video])
    return out, (h, w)


def observe(video: np.ndarray) -> Observation:
    """Detects and tracks every palette colour in a uint8 ``(T, H, W, 3)`` video."""
    video, resized = to_world_size(video)
    frames = detect(video)
    tracks = {}
    for colour in COLOURS:
        if any(colour in f for f in frames):
            tracks[colour] = follow(colour, frames)
    return Observation(tracks=tracks, noise=noise_level(video), frames=video.shape[0], resized_from=resized)
