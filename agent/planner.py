"""Difficulty-weighted prompt planning (PhyGDPO Sec. 2.1, PhyAugPipe step (e)).

Each action category ``k`` has a current score ``S(k)`` (the mean judge score of its videos
in the latest judged round). Harder categories get more prompts:

    d_k = 1 − S(k)                      difficulty
    r_k = exp(τ · d_k)                  weight (τ = 3 in the paper)
    H_r(k) = min(H_f(k), N · r_k / Σ_i r_i)   allocation, capped by what category k holds

The real-valued allocations are turned into integers by largest remainder, and whatever a
capped category cannot take is handed on to the others in proportion to their weights, so
the plan uses the whole budget ``N`` whenever the pool holds that many prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class CategoryPlan:
    category: str
    score: float | None  # S(k); None when the category has not been judged yet
    difficulty: float  # d_k
    weight: float  # r_k
    available: int  # H_f(k)
    share: float  # N · r_k / Σ r (before capping)
    allocation: int  # integer prompts planned


def difficulty_allocation(
    scores: Mapping[str, float | None],
    available: Mapping[str, int],
    n: int,
    tau: float = 3.0,
    default_score: float = 0.5,
) -> list[CategoryPlan]:
    """Allocate ``n`` prompts over categories by difficulty; see the module docstring.

    ``scores`` maps category → S(k) in [0, 1] (``None`` or missing → ``default_score``);
    ``available`` maps category → H_f(k), the prompts the category holds. Categories with
    no prompts get nothing. ``tau = 0`` gives every category an equal share N/K.
    """
    if n < 0:
        raise ValueError(f"number of prompts must be ≥ 0, got {n}")
    cats = [k for k in available if available[k] > 0]
    if not cats:
        return []
    s = {k: scores.get(k) for k in cats}
    d = {k: 1.0 - (default_score if s[k] is None else float(np.clip(s[k], 0.0, 1.0))) for k in cats}
    r = {k: math.exp(tau * d[k]) for k in cats}
    total_r = sum(r.values())
    share = {k: n * r[k] / total_r for k in cats}

    # H_r(k) = min(H_f(k), share); redistribute what capped categories cannot take.
    alloc = {k: 0.0 for k in cats}
    open_cats = set(cats)
    remaining = float(min(n, sum(available[k] for k in cats)))
    while remaining > 1e-9 and open_cats:
        w = sum(r[k] for k in open_cats)
        capped = set()
        for k in sorted(open_cats):
            want = remaining * r[k] / w
            room = available[k] - alloc[k]
            give = min(want, room)
            alloc[k] += give
            if room - give <= 1e-9:
                capped.add(k)
        remaining = float(min(n, sum(available[k] for k in cats))) - sum(alloc.values())
        if not capped:
            break
        open_cats -= capped

    ints = _largest_remainder(alloc, {k: available[k] for k in cats}, int(round(sum(alloc.values()))), r)
    return [
        CategoryPlan(k, s[k], d[k], r[k], available[k], share[k], ints[k])
        for k in cats
    ]


def _largest_remainder(
    values: Mapping[str, float], caps: Mapping[str, int], total: int, weights: Mapping[str, float]
) -> dict[str, int]:
    """Integers summing to ``total`` that floor/ceil ``values``, never above ``caps``.

    Ties between equal remainders go to the heavier (harder) category, then by name.
    """
    out = {k: min(int(math.floor(v + 1e-9)), caps[k]) for k, v in values.items()}
    left = total - sum(out.values())
    order = sorted(values, key=lambda k: (-round(values[k] - out[k], 9), -weights[k], k))
    for k in order:
        if left <= 0:
            break
        if out[k] < caps[k]:
            out[k] += 1
            left -= 1
    return out


def sample_prompts(
    plan: Sequence[CategoryPlan],
    pool: Mapping[str, Sequence[str]],
    rng: np.random.Generator,
    usage: Mapping[str, int] | None = None,
) -> list[tuple[str, str]]:
    """Draw each category's allocation from its pool (ids), least-used prompts first.

    Preferring prompts used least often spreads training over the pool; ties are broken by
    the seeded ``rng`` so a run is reproducible.
    """
    usage = usage or {}
    picked: list[tuple[str, str]] = []
    for cp in plan:
        ids = list(pool.get(cp.category, ()))
        if cp.allocation <= 0 or not ids:
            continue
        noise = rng.random(len(ids))
        order = sorted(range(len(ids)), key=lambda i: (usage.get(ids[i], 0), noise[i]))
        picked.extend((cp.category, ids[i]) for i in order[: cp.allocation])
    return picked
