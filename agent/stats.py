"""Small, dependency-light statistics for comparing evaluation outcomes (numpy only, no torch).

Everything here works on plain arrays of per-clip outcomes (0/1 joint success, or real scores)
and returns plain JSON-able values, so the CLI, the dashboard and the bench scripts share one
implementation:

* ``wilson`` / ``fmt_ci`` — a binomial proportion with its Wilson score interval, and the one
  formatter every display uses ("34.2 % [30.1, 38.5]");
* ``paired_bootstrap`` / ``stratified_bootstrap`` — the difference of two paired sides, with a
  percentile CI from a *cluster* bootstrap (clips of one prompt are correlated, so prompts, not
  clips, are resampled) and a two-sided p-value from a cluster sign-flip permutation test;
* ``mcnemar_exact`` — the exact McNemar test on the discordant pairs of two paired 0/1 sides;
* ``mean_ci_over_seeds`` — mean, sd and t-based CI of a handful of per-seed numbers;
* ``difference_of_differences`` — the reward-hacking gap: (gain under judge T) − (gain under judge E).

Conventions: a difference is always ``b − a`` (side B minus side A) as a fraction (× 100 for
percentage points); a CI is a two-element list ``[lo, hi]``; an undefined number is ``nan``
(``wilson`` with n = 0, a CI from a single seed).
"""

from __future__ import annotations

import itertools
import math
from typing import Iterable, Mapping, Sequence

import numpy as np

Z95 = 1.96  # two-sided 95 % normal quantile (1.95996…, rounded as usually reported)
EXACT_FLIP_MAX = 14  # clusters up to which the sign-flip test enumerates all 2^C flips (exact p)

# two-sided 95 % Student t quantiles t_{0.975, df}, df = 1..30
_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
         2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
         2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
         2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
         2.045229642, 2.042272456)


# ---------------------------------------------------------------- proportions

def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials (default 95 %).

    ``(center ± half)`` with ``center = (p + z²/2n) / (1 + z²/n)`` and
    ``half = z / (1 + z²/n) · sqrt(p(1−p)/n + z²/4n²)``, clipped to [0, 1]. Unlike the normal
    ("Wald") interval it stays inside [0, 1] and is not degenerate at k = 0 or k = n.
    ``n = 0`` gives ``(nan, nan)``.
    """
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def fmt_pct(x: float | None, digits: int = 1) -> str:
    """``0.342`` → ``"34.2"``; None / nan → ``"–"``."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def fmt_ci(k: int, n: int, digits: int = 1) -> str:
    """``k`` of ``n`` as ``"34.2 % [30.1, 38.5]"`` (Wilson 95 %); ``n = 0`` gives ``"– (n = 0)"``."""
    if int(n) == 0:
        return "– (n = 0)"
    lo, hi = wilson(k, n)
    return f"{fmt_pct(k / n, digits)} % [{fmt_pct(lo, digits)}, {fmt_pct(hi, digits)}]"


def fmt_diff(estimate: float | None, ci: Sequence[float | None] | None, digits: int = 1) -> str:
    """A difference in percentage points: ``"+20.0 pp [12.0, 28.0]"`` (estimate and CI are fractions)."""
    if estimate is None or (isinstance(estimate, float) and math.isnan(estimate)):
        return "–"
    out = f"{100 * estimate:+.{digits}f} pp"
    if ci is not None and all(c is not None and not math.isnan(c) for c in ci):
        out += f" [{100 * ci[0]:+.{digits}f}, {100 * ci[1]:+.{digits}f}]"
    return out


def fmt_p(p: float | None) -> str:
    """A p-value for tables: ``"0.032"``, ``"<0.001"``, ``"1"``; None → ``"–"``."""
    if p is None or math.isnan(p):
        return "–"
    if p < 0.001:
        return "<0.001"
    return "1" if p >= 0.9995 else f"{p:.3f}"


# ---------------------------------------------------------------- paired differences

def _as_arrays(a, b, clusters) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired sides differ in length: {a.size} vs {b.size}")
    if clusters is None:
        c = np.arange(a.size)
    else:
        c = np.asarray(list(clusters), dtype=object).ravel()
        if c.size != a.size:
            raise ValueError(f"{c.size} cluster labels for {a.size} pairs")
    if a.size == 0:
        raise ValueError("no pairs to compare")
    return a, b, c


def _cluster_sums(d: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sum of ``d`` and number of pairs (clusters in first-seen order)."""
    index: dict = {}
    inverse = np.array([index.setdefault(x, len(index)) for x in clusters], dtype=int)
    sums = np.bincount(inverse, weights=d)
    counts = np.bincount(inverse).astype(float)
    return sums, counts


def _strata_test(strata: list[tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int,
                 level: float = 0.95) -> dict:
    """Core of every paired test: ``strata`` is a list of (per-cluster sums of d, per-cluster counts).

    Statistic: the mean over strata of (Σ d / Σ n) in each stratum (for one stratum, the mean
    per-pair difference). CI: percentile cluster bootstrap (clusters resampled with replacement
    within each stratum). p: two-sided sign-flip permutation (each cluster's differences flip sign
    together; exact enumeration when there are at most ``EXACT_FLIP_MAX`` clusters in all).
    """
    rng = np.random.default_rng(seed)
    per = [float(s.sum() / n.sum()) for s, n in strata]
    est = float(np.mean(per))
    reps = np.zeros(n_boot)
    for s, n in strata:
        c = s.size
        w = rng.multinomial(c, np.full(c, 1.0 / c), size=n_boot)  # how often each cluster is drawn
        reps += (w @ s) / (w @ n)
    reps /= len(strata)
    alpha = (1 - level) / 2
    lo, hi = (float(x) for x in np.quantile(reps, [alpha, 1 - alpha]))
    # sign-flip permutation
    total = sum(s.size for s, _ in strata)
    if total <= EXACT_FLIP_MAX:
        grid = np.array(list(itertools.product((-1.0, 1.0), repeat=total)))
        method = "exact sign-flip permutation over clusters"
    else:
        grid = rng.choice([-1.0, 1.0], size=(n_boot, total))
        method = f"sign-flip permutation over clusters ({n_boot} random flips)"
    stat = np.zeros(grid.shape[0])
    col = 0
    for s, n in strata:
        stat += grid[:, col:col + s.size] @ s / n.sum()
        col += s.size
    stat /= len(strata)
    tol = 1e-12 * max(1.0, abs(est))
    hits = int(np.sum(np.abs(stat) >= abs(est) - tol))
    p = hits / grid.shape[0] if total <= EXACT_FLIP_MAX else (1 + hits) / (1 + grid.shape[0])
    return {"estimate": est, "ci": [lo, hi], "p": float(min(1.0, p)),
            "per_stratum": per, "n_clusters": [int(s.size) for s, _ in strata],
            "n_pairs": [int(n.sum()) for _, n in strata], "p_method": method, "n_boot": int(n_boot)}


def paired_bootstrap(a, b, clusters=None, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired difference ``mean(b) − mean(a)`` with a cluster-bootstrap CI and a sign-flip p-value.

    ``a[i]`` and ``b[i]`` are the two sides' outcomes on the same item (0/1 or real), and
    ``clusters[i]`` its cluster (the prompt: clips of one prompt are correlated; None: every pair
    is its own cluster). The CI is the ``level`` percentile interval of ``n_boot`` bootstrap
    replicates that resample clusters with replacement (the replicate's statistic is Σd / Σn over
    the drawn clusters). The two-sided p-value is a sign-flip permutation test of "no difference"
    (under H0 the two sides of a cluster are exchangeable, so each cluster's summed difference
    flips sign with probability ½): exact over all 2^C flips when C ≤ ``EXACT_FLIP_MAX``, else
    ``n_boot`` random flips with p = (1 + hits) / (1 + n_boot). Identical sides give estimate 0,
    CI [0, 0] and p = 1.

    Returns ``{"estimate", "ci": [lo, hi], "p", "n_pairs", "n_clusters", "p_method", "n_boot"}``.
    """
    a, b, c = _as_arrays(a, b, clusters)
    s, n = _cluster_sums(b - a, c)
    out = _strata_test([(s, n)], n_boot, seed, level)
    out["n_pairs"], out["n_clusters"] = out["n_pairs"][0], out["n_clusters"][0]
    del out["per_stratum"]
    return out


def stratified_bootstrap(pairs_by_stratum: Mapping[object, tuple] | Sequence[tuple], n_boot: int = 2000,
                         seed: int = 0, level: float = 0.95) -> dict:
    """Paired difference over several strata (e.g. seeds: run A_i vs run B_i), each weighted equally.

    ``pairs_by_stratum``: ``{stratum: (a, b, clusters)}`` or a list of such triples; within a
    stratum the pairs are as in ``paired_bootstrap``. The estimate is the mean over strata of
    each stratum's ``mean(b) − mean(a)``; bootstrap replicates resample clusters within each
    stratum independently and average the same way; the p-value flips the sign of every cluster
    of every stratum independently (same test as ``paired_bootstrap``).

    Returns ``paired_bootstrap``'s keys with ``n_pairs`` / ``n_clusters`` summed, plus
    ``per_stratum`` ({stratum: difference}) and ``n_strata``.
    """
    items = list(pairs_by_stratum.items()) if isinstance(pairs_by_stratum, Mapping) \
        else list(enumerate(pairs_by_stratum))
    if not items:
        raise ValueError("no strata to compare")
    strata = []
    for _, (a, b, c) in items:
        a, b, c = _as_arrays(a, b, c)
        strata.append(_cluster_sums(b - a, c))
    out = _strata_test(strata, n_boot, seed, level)
    out["per_stratum"] = {str(k): v for (k, _), v in zip(items, out["per_stratum"])}
    out["n_pairs"], out["n_clusters"] = sum(out["n_pairs"]), sum(out["n_clusters"])
    out["n_strata"] = len(items)
    return out


def mcnemar_exact(a, b) -> dict:
    """Exact (binomial) McNemar test of paired 0/1 outcomes.

    Only discordant pairs count: ``a_only`` (a = 1, b = 0) and ``b_only`` (a = 0, b = 1); under H0
    each discordant pair goes either way with probability ½, so with m = a_only + b_only,
    p = min(1, 2 · Σ_{i ≤ min(a_only, b_only)} C(m, i) / 2^m). No discordant pairs gives p = 1.
    Ignores clustering (use ``paired_bootstrap``'s p when clips of a prompt are correlated).

    Returns ``{"p", "a_only", "b_only"}``.
    """
    a = np.asarray(a).ravel().astype(int)
    b = np.asarray(b).ravel().astype(int)
    if a.shape != b.shape:
        raise ValueError(f"paired sides differ in length: {a.size} vs {b.size}")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("mcnemar_exact needs 0/1 outcomes")
    a_only = int(np.sum((a == 1) & (b == 0)))
    b_only = int(np.sum((a == 0) & (b == 1)))
    m = a_only + b_only
    if m == 0:
        return {"p": 1.0, "a_only": 0, "b_only": 0}
    tail = sum(math.comb(m, i) for i in range(min(a_only, b_only) + 1))
    return {"p": min(1.0, 2 * tail / 2 ** m), "a_only": a_only, "b_only": b_only}


# ---------------------------------------------------------------- over seeds

def t975(df: int) -> float:
    """Two-sided 95 % Student t quantile for ``df`` degrees of freedom (table up to 30, then
    scipy when installed, else the Cornish–Fisher expansion around the normal quantile)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    try:
        from scipy.stats import t as student_t

        return float(student_t.ppf(0.975, df))
    except ImportError:  # accurate to ~1e-4 for df > 30
        z = 1.959963984540054
        return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_ci_over_seeds(values: Iterable[float | None]) -> dict:
    """Mean, sd (n − 1) and t-based 95 % CI of a small sample of per-seed numbers (None dropped).

    Returns ``{"mean", "sd", "n", "ci": [lo, hi]}``; one value gives sd and CI nan, none gives all nan.
    """
    x = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return {"mean": math.nan, "sd": math.nan, "n": 0, "ci": [math.nan, math.nan]}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "sd": math.nan, "n": 1, "ci": [math.nan, math.nan]}
    sd = float(x.std(ddof=1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci": [mean - half, mean + half]}


# ---------------------------------------------------------------- reward hacking

def difference_of_differences(t0, tk, e0, ek, clusters=None, n_boot: int = 2000, seed: int = 0,
                              level: float = 0.95) -> dict:
    """The reward-hacking gap of one run: (gain under the training judge T) − (gain under judge E).

    All four arrays are aligned on the same clips (paired round 0 ↔ round k clips, each scored
    by both judges): ``t0``/``tk`` judge T's outcomes at round 0 / k, ``e0``/``ek`` judge E's.
    Per clip d = (tk − t0) − (ek − e0); the gap is mean(d), with the same cluster bootstrap and
    sign-flip p as ``paired_bootstrap`` (H0: d's cluster sums are symmetric about 0). The two
    gains use the same seed, so their replicates come from the same resampled clusters.

    Returns ``{"train_gain": …, "eval_gain": …, "gap": …}``, each as ``paired_bootstrap`` returns.
    """
    t0, tk, c = _as_arrays(t0, tk, clusters)
    e0, ek, _ = _as_arrays(e0, ek, clusters)
    if e0.size != t0.size:
        raise ValueError(f"the two judges scored different clips: {t0.size} vs {e0.size}")
    return {"train_gain": paired_bootstrap(t0, tk, c, n_boot, seed, level),
            "eval_gain": paired_bootstrap(e0, ek, c, n_boot, seed, level),
            "gap": paired_bootstrap(ek - e0, tk - t0, c, n_boot, seed, level)}


__all__ = ["wilson", "fmt_ci", "fmt_pct", "fmt_diff", "fmt_p", "paired_bootstrap", "stratified_bootstrap",
           "mcnemar_exact", "t975", "mean_ci_over_seeds", "difference_of_differences", "Z95"]
