"""agent/stats.py against hand-computed values and known truths (fast, numpy only)."""

import math

import numpy as np
import pytest

from agent import stats


def _wilson_by_hand(k, n, z=1.96):
    # the formula's terms written out: centre (p + z²/2n)/(1 + z²/n), half z/(1 + z²/n)·√(p(1−p)/n + z²/4n²)
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return centre - half, centre + half


def test_wilson_zero_of_ten():
    # p = 0: centre = half = (z²/20)/(1 + z²/10) and hi = 2·centre = (3.8416/10)/(1.38416) = 0.27754
    lo, hi = stats.wilson(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx((3.8416 / 10) / 1.38416, abs=1e-9)
    assert hi == pytest.approx(0.277540, abs=1e-6)


def test_wilson_five_of_ten():
    # p = ½: centre ½, half = (1.96/1.38416)·√(0.025 + 3.8416/400) = 1.41602·0.18604 = 0.26341
    lo, hi = stats.wilson(5, 10)
    half = (1.96 / 1.38416) * math.sqrt(0.025 + 3.8416 / 400)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-9)
    assert (lo, hi) == pytest.approx((0.236590, 0.763410), abs=1e-6)


def test_wilson_thirty_of_hundred():
    # centre (0.3 + 0.019208)/1.038416 = 0.307399; half (1.96/1.038416)·√(0.0021 + 0.000096040) = 0.088452
    lo, hi = stats.wilson(30, 100)
    centre = (0.3 + 3.8416 / 200) / 1.038416
    half = (1.96 / 1.038416) * math.sqrt(0.21 / 100 + 3.8416 / 40000)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert (lo, hi) == pytest.approx((0.218948, 0.395850), abs=1e-5)
    assert (lo, hi) == pytest.approx(_wilson_by_hand(30, 100), abs=1e-12)


def test_wilson_edges_and_format():
    assert stats.wilson(10, 10)[1] == 1.0 and stats.wilson(10, 10)[0] == pytest.approx(1 - 0.277540, abs=1e-6)
    assert all(math.isnan(x) for x in stats.wilson(0, 0))
    with pytest.raises(ValueError):
        stats.wilson(3, 2)
    assert stats.fmt_ci(30, 100) == "30.0 % [21.9, 39.6]"
    assert stats.fmt_ci(0, 0) == "– (n = 0)"
    assert stats.fmt_diff(0.2, [0.12, 0.28]) == "+20.0 pp [+12.0, +28.0]"
    assert stats.fmt_p(0.0001) == "<0.001" and stats.fmt_p(1.0) == "1" and stats.fmt_p(0.0321) == "0.032"


def test_paired_bootstrap_known_difference():
    # 50 prompts × 2 clips; B succeeds on one extra clip in each of 20 prompts: +20 pp exactly
    a = np.zeros(100)
    b = np.zeros(100)
    b[0:40:2] = 1
    clusters = np.repeat(np.arange(50), 2)
    r = stats.paired_bootstrap(a, b, clusters)
    assert r["estimate"] == pytest.approx(0.20)
    assert r["ci"][0] > 0 and r["ci"][1] < 0.4
    assert r["ci"][0] < 0.2 < r["ci"][1]
    assert r["p"] < 0.01
    assert r["n_pairs"] == 100 and r["n_clusters"] == 50


def test_paired_bootstrap_identical_is_zero_with_p_one():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, 60)
    r = stats.paired_bootstrap(a, a.copy(), np.repeat(np.arange(20), 3))
    assert r["estimate"] == 0.0 and r["ci"] == [0.0, 0.0] and r["p"] == 1.0


def test_paired_bootstrap_exact_flips_for_few_clusters():
    # 3 prompts, B better on all three: of the 8 sign flips, only all-+ and all-− reach |T_obs| → p = 2/8
    r = stats.paired_bootstrap([0, 0, 0], [1, 1, 1], [0, 1, 2])
    assert r["p"] == pytest.approx(0.25)
    assert "exact" in r["p_method"]


def test_bootstrap_ci_covers_truth_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    truth = 0.15
    widths, covered = [], 0
    for n_prompts in (20, 80, 320):
        clusters = np.repeat(np.arange(n_prompts), 4)
        a = (rng.random(clusters.size) < 0.30).astype(float)
        b = (rng.random(clusters.size) < 0.30 + truth).astype(float)
        r = stats.paired_bootstrap(a, b, clusters, n_boot=1000, seed=1)
        widths.append(r["ci"][1] - r["ci"][0])
        covered += r["ci"][0] <= truth <= r["ci"][1]
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.5 * widths[0]  # ~ 1/√n: 16× the data, ~¼ the width
    assert covered >= 2
    # coverage over repetitions at one size: a 95 % interval misses rarely
    hits = 0
    for rep in range(40):
        clusters = np.repeat(np.arange(60), 3)
        a = (rng.random(clusters.size) < 0.4).astype(float)
        b = (rng.random(clusters.size) < 0.4 + truth).astype(float)
        lo, hi = stats.paired_bootstrap(a, b, clusters, n_boot=500, seed=rep)["ci"]
        hits += lo <= truth <= hi
    assert hits >= 34  # expected ~38 of 40


def test_bootstrap_accounts_for_clustering():
    # the same clip-level difference is far less certain when all of it sits in few prompts
    a = np.zeros(100)
    spread = np.zeros(100)
    spread[0:40:2] = 1  # 20 prompts gain one clip each
    lumped = np.zeros(100)
    lumped[:20] = 1  # 10 prompts gain both clips
    clusters = np.repeat(np.arange(50), 2)
    r_spread = stats.paired_bootstrap(a, spread, clusters)
    r_lumped = stats.paired_bootstrap(a, lumped, clusters)
    assert r_spread["estimate"] == r_lumped["estimate"] == pytest.approx(0.2)
    assert r_lumped["ci"][1] - r_lumped["ci"][0] > r_spread["ci"][1] - r_spread["ci"][0]


def test_mcnemar_hand_table():
    # discordant: a-only 2, b-only 8 (m = 10): p = 2·(C(10,0)+C(10,1)+C(10,2))/2^10 = 2·56/1024
    a = [1] * 2 + [0] * 8 + [1] * 30 + [0] * 60
    b = [0] * 2 + [1] * 8 + [1] * 30 + [0] * 60
    r = stats.mcnemar_exact(a, b)
    assert (r["a_only"], r["b_only"]) == (2, 8)
    assert r["p"] == pytest.approx(112 / 1024)
    assert stats.mcnemar_exact([0, 1], [0, 1])["p"] == 1.0
    # balanced discordance: p capped at 1
    assert stats.mcnemar_exact([1, 0], [0, 1])["p"] == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar_exact([0, 2], [0, 1])


def test_stratified_bootstrap_averages_strata_equally():
    c = np.repeat(np.arange(25), 4)
    z = np.zeros(100)
    b1 = z.copy()
    b1[0:100:5] = 1  # +20 pp in seed 0
    b2 = z.copy()
    b2[0:100:10] = 1  # +10 pp in seed 1 (its own, twice as many pairs would not change the weight)
    r = stats.stratified_bootstrap({0: (z, b1, c), 1: (z, b2, c)})
    assert r["estimate"] == pytest.approx(0.15)
    assert r["per_stratum"] == {"0": pytest.approx(0.2), "1": pytest.approx(0.1)}
    assert r["ci"][0] > 0 and r["p"] < 0.01 and r["n_strata"] == 2 and r["n_pairs"] == 200
    same = stats.stratified_bootstrap([(z, z, c), (b1, b1, c)])
    assert same["estimate"] == 0 and same["p"] == 1.0


def test_mean_ci_over_seeds_uses_t():
    r = stats.mean_ci_over_seeds([0.1, 0.2, 0.3])
    # mean 0.2, sd 0.1, t_{0.975,2} = 4.3027 → half width 4.3027·0.1/√3 = 0.248414
    assert r["mean"] == pytest.approx(0.2) and r["sd"] == pytest.approx(0.1) and r["n"] == 3
    assert r["ci"] == pytest.approx([0.2 - 0.248414, 0.2 + 0.248414], abs=1e-5)
    one = stats.mean_ci_over_seeds([0.4, None])
    assert one["mean"] == 0.4 and math.isnan(one["sd"]) and one["n"] == 1
    assert stats.t975(1) == pytest.approx(12.7062, abs=1e-4)
    assert stats.t975(60) == pytest.approx(2.0003, abs=1e-3)


def test_difference_of_differences():
    clusters = np.repeat(np.arange(40), 2)
    t0 = np.zeros(80)
    tk = np.zeros(80)
    tk[0:60:2] = 1  # training judge: +30 of 80 (37.5 pp), one clip in each of 30 prompts
    e0 = np.zeros(80)
    ek = np.zeros(80)
    ek[0:8:2] = 1  # evaluation judge: +4 of 80 (5 pp)
    r = stats.difference_of_differences(t0, tk, e0, ek, clusters)
    assert r["train_gain"]["estimate"] == pytest.approx(0.375)
    assert r["eval_gain"]["estimate"] == pytest.approx(0.05)
    assert r["gap"]["estimate"] == pytest.approx(0.325)
    assert r["gap"]["ci"][0] > 0 and r["gap"]["p"] < 0.01
