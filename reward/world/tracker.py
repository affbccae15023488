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
ALPHA_MIN = 0.2  # pixels with less of a colour than this are background (noise, grey)
OBJECT_AREA = float(np.pi * P.RADIUS**2)  # colour mass of one ball, px (a block has 4/π of it)
BLOB_MIN = 0.3 * OBJECT_AREA  # least colour mass of a blob that counts as an object
DUPLICATE_MIN = 0.5 * OBJECT_AREA  # a second blob this heavy (and ≥ half the first) is a duplicate
BLOB_MIN_DENSITY = 0.3  # colour mass / area of the ellipse inscribed in the blob's bounding box
BLOB_MAX_MASS = 3.0 * OBJECT_AREA  # heavier components are smeared colour or noise, not one object


def hue_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360) and chroma (max − min channel) of float RGB ``(..., 3)``."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    c = mx - mn
    safe = np.where(c > 0, c, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6.0,
                 np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return (60.0 * h) % 360.0, c


_PAL_HUE, _PAL_CHROMA = hue_chroma(_PAL)


def memberships(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel palette colour index ``(T, H, W)`` and membership weight in [0, 1].

    Each pixel belongs to at most one palette colour (the nearest hue); its weight is the
    fraction of that colour in the pixel (chroma ratio) times a hue match that fades from
    1 at :data:`HUE_IN` to 0 at :data:`HUE_OUT` degrees.
    """
    hue, chroma = hue_chroma(video.astype(np.float32))
    d = np.abs(hue[..., None] - _PAL_HUE)
    d = np.minimum(d, 360.0 - d)
    k = np.argmin(d, axis=-1)
    dk = np.take_along_axis(d, k[..., None], axis=-1)[..., 0]
    alpha = np.clip(chroma / _PAL_CHROMA[k], 0.0, 1.0)
    match = np.clip((HUE_OUT - dk) / (HUE_OUT - HUE_IN), 0.0, 1.0)
    w = alpha * match
    w[alpha < ALPHA_MIN] = 0.0
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


def _blob_stats(colour: str, w: np.ndarray, labels: np.ndarray, stats: np.ndarray, n: int) -> list[Blob]:
    """Mass-weighted centroids and shape moments of every labelled component (one frame)."""
    h, wd = w.shape
    ys, xs = np.mgrid[0:h, 0:wd]
    xs = xs + 0.5
    ys = ys + 0.5
    lab = labels.ravel()
    wf = w.ravel()
    mass = np.bincount(lab, wf, minlength=n)
    mx = np.bincount(lab, wf * xs.ravel(), minlength=n)
    my = np.bincount(lab, wf * ys.ravel(), minlength=n)
    blobs = []
    for i in range(1, n):
        m = mass[i]
        if m < BLOB_MIN or m > BLOB_MAX_MASS:
            continue
        x0, y0, bw, bh = (int(v) for v in stats[i, :4])
        if m / (np.pi / 4 * bw * bh) < BLOB_MIN_DENSITY:
            continue
        cx, cy = mx[i] / m, my[i] / m
        sel = lab == i
        ww, dx, dy = wf[sel], xs.ravel()[sel] - cx, ys.ravel()[sel] - cy
        vx, vy = float(ww @ dx**2) / m, float(ww @ dy**2) / m
        sq = float(ww @ (dx**2 * dy**2)) / m / max(vx * vy, 1e-6)
        edge = x0 == 0 or y0 == 0 or x0 + bw >= wd or y0 + bh >= h
        blobs.append(Blob(colour, float(cx), float(cy), float(m), float(wf[sel].max()), bw, bh, edge, sq))
    return blobs


def detect(video: np.ndarray) -> list[dict[str, list[Blob]]]:
    """Object blobs per frame and colour: ``frames[t][colour] -> [Blob, ...]`` (heaviest first)."""
    k, w = memberships(video)
    out: list[dict[str, list[Blob]]] = []
    for t in range(video.shape[0]):
        per: dict[str, list[Blob]] = {}
        for ci, colour in enumerate(COLOURS):
            wc = np.where(k[t] == ci, w[t], 0.0)
            mask = (wc > 0).astype(np.uint8)
            if not mask.any():
                continue
            n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            blobs = _blob_stats(colour, wc, labels, stats, n)
            if blobs:
                per[colour] = sorted(blobs, key=lambda b: -b.mass)
        out.append(per)
    return out


@dataclass
class Track:
    """One colour followed through the clip. ``pos[t]`` is NaN where the object was not seen."""

    colour: str
    pos: np.ndarray  # (T, 2) x, y
    mass: np.ndarray  # (T,) colour mass of the chosen blob (0 when unseen)
    duplicates: np.ndarray  # (T,) number of other substantial blobs of this colour
    edge: np.ndarray  # (T,) chosen blob touches the frame border (partly out of view)
    squareness: float | None  # median over sharp frames; None when never sharp
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
        if chosen.peak > 0.8 and not chosen.touches_edge:
            squares.append(chosen.squareness)
        history.append((t, pos[t].copy()))
    sq = float(np.median(squares)) if squares else None
    return Track(colour, pos, mass, dups, edge, sq, per_frame)


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
