"""Difficulty sampling against the formula of PhyGDPO Sec. 2.1 on hand-made histograms."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.planner import difficulty_allocation, sample_prompts


def by_cat(plan):
    return {p.category: p for p in plan}


def test_matches_formula_when_nothing_is_capped():
    # S = 0.9, 0.5, 0.1 → d = 0.1, 0.5, 0.9; r = e^0.3, e^1.5, e^2.7; N = 20
    scores = {"a": 0.9, "b": 0.5, "c": 0.1}
    plan = by_cat(difficulty_allocation(scores, {"a": 100, "b": 100, "c": 100}, n=20, tau=3.0))
    r = [math.exp(0.3), math.exp(1.5), math.exp(2.7)]
    shares = [20 * x / sum(r) for x in r]  # 1.3036…, 4.3278…, 14.3686…
    assert [plan[k].share for k in "abc"] == pytest.approx(shares)
    assert plan["c"].difficulty == pytest.approx(0.9)
    assert plan["c"].weight == pytest.approx(math.exp(2.7))
    # floors (1, 4, 14) leave 1 to hand out; the largest remainder (0.369) is c's → (1, 4, 15)
    assert [plan[k].allocation for k in "abc"] == [1, 4, 15]


def test_tau_zero_gives_equal_shares():
    plan = by_cat(difficulty_allocation({"a": 0.0, "b": 1.0, "c": 0.3, "d": None}, {k: 50 for k in "abcd"}, n=12, tau=0))
    assert [plan[k].allocation for k in "abcd"] == [3, 3, 3, 3]
    assert all(p.share == pytest.approx(3.0) for p in plan.values())


def test_tau_zero_capped_by_what_category_holds():
    # equal share N/K = 4 each, but "a" holds only 1: it gets 1 and the rest go to b, c equally
    plan = by_cat(difficulty_allocation({}, {"a": 1, "b": 50, "c": 50}, n=12, tau=0))
    assert plan["a"].allocation == 1
    assert plan["b"].allocation + plan["c"].allocation == 11
    assert abs(plan["b"].allocation - plan["c"].allocation) <= 1


def test_hard_category_with_too_few_prompts_is_capped():
    plan = by_cat(difficulty_allocation({"easy": 0.9, "hard": 0.0}, {"easy": 30, "hard": 2}, n=10, tau=3))
    assert plan["hard"].allocation == 2  # H_r = min(H_f = 2, 10·e^3/(e^0.3+e^3) ≈ 9.4)
    assert plan["easy"].allocation == 8


def test_pool_smaller_than_budget_takes_everything():
    plan = by_cat(difficulty_allocation({"a": 0.2}, {"a": 3, "b": 2, "c": 0}, n=100))
    assert plan["a"].allocation == 3 and plan["b"].allocation == 2
    assert "c" not in plan


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(list("abcdef")), st.floats(0, 1), min_size=1),
    st.dictionaries(st.sampled_from(list("abcdef")), st.integers(0, 30), min_size=1),
    st.integers(0, 60),
    st.floats(0, 6),
)
def test_allocation_properties(scores, available, n, tau):
    plan = difficulty_allocation(scores, available, n=n, tau=tau)
    total_avail = sum(v for v in available.values() if v > 0)
    assert sum(p.allocation for p in plan) == min(n, total_avail)
    for p in plan:
        assert 0 <= p.allocation <= p.available
    # monotone: a harder category never gets fewer prompts than an easier one with room to spare
    for p in plan:
        for q in plan:
            if p.weight > q.weight + 1e-9 and p.available >= n and q.available >= n:
                assert p.allocation >= q.allocation


def test_sample_prompts_prefers_least_used_and_is_seeded():
    plan = difficulty_allocation({}, {"a": 4}, n=2, tau=0)
    pool = {"a": ["p1", "p2", "p3", "p4"]}
    usage = {"p1": 3, "p2": 0, "p3": 0, "p4": 5}
    got = sample_prompts(plan, pool, np.random.default_rng(0), usage)
    assert sorted(i for _, i in got) == ["p2", "p3"]
    again = sample_prompts(plan, pool, np.random.default_rng(0), usage)
    assert got == again
