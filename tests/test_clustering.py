"""Action clustering: category lists, MiniLM matching accuracy on the world, representatives."""

from __future__ import annotations

import numpy as np
import pytest

from agent.clustering import (Category, accuracy, assign_categories, confusion, histogram, load_categories,
                              parse_categories, representatives)
from reward.world import physics as P
from reward.world.simulator import LEVELS, sample_scene

# ------------------------------------------------------------------ category lists


def test_parse_categories_merges_repeated_names_and_skips_comments():
    cats = parse_categories("# a comment\n\ndrop: a ball is dropped\nslide\ndrop: it falls\ndrop: it falls\n")
    assert [c.name for c in cats] == ["drop", "slide"]
    assert cats[0].descriptions == ("a ball is dropped", "it falls")
    assert cats[1].descriptions == ("slide",)


@pytest.mark.parametrize("text,expect", [
    ("", "no categories"),
    ("# only a comment\n", "no categories"),
    ("drop: ok\n: no name\n", "line 2"),
    ("drop:\n", "empty description"),
    ("!bad: x\n", "line 1"),
])
def test_parse_categories_rejects_bad_lines(text, expect):
    with pytest.raises(ValueError, match=expect):
        parse_categories(text)


def test_shipped_lists():
    world = load_categories("world")
    assert {c.name for c in world} == set(P.FAMILIES)
    general = load_categories("general")
    assert 15 <= len(general) <= 25
    assert all(c.descriptions for c in general)
    with pytest.raises(ValueError, match="no category list"):
        load_categories("no-such-list")


def test_list_from_file(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("spill: liquid spills from a tipped cup\n", encoding="utf-8")
    assert load_categories(f) == [Category("spill", ("liquid spills from a tipped cup",))]
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="UTF-8"):
        load_categories(f)


# ------------------------------------------------------------------ MiniLM matching


def test_world_prompts_land_in_their_family():
    """≥ 90 % of world prompts at every detail level go to their scenario family (seeds unseen when
    the list was written)."""
    prompts, labels, levels = [], [], []
    for family in P.FAMILIES:
        for seed in range(2000, 2015):
            scene = sample_scene(family, seed)
            for level in LEVELS:
                prompts.append(scene.prompts[level])
                labels.append(family)
                levels.append(level)
    got = assign_categories(prompts, load_categories("world"))
    for level in LEVELS:
        idx = [i for i, lv in enumerate(levels) if lv == level]
        acc = accuracy([got[i] for i in idx], [labels[i] for i in idx])
        assert acc >= 0.9, (level, acc, confusion(got, labels))
    assert all(-1.0 <= a.similarity <= 1.0 and a.margin >= 0 for a in got)


GENERAL = [
    ("an apple falls from a tree onto the grass", "falling"),
    ("a basketball bounces on the court", "bouncing"),
    ("a marble rolls down a wooden ramp", "rolling"),
    ("a hockey puck slides across the ice", "sliding"),
    ("two cars crash head-on", "collision"),
    ("a pitcher throws a baseball", "throwing"),
    ("a soccer player kicks the ball into the goal", "kicking"),
    ("a bartender pours beer into a glass", "pouring"),
    ("a coin sinks to the bottom of a glass of water", "floating and sinking"),
    ("a plate falls and shatters on the kitchen floor", "breaking"),
    ("a chef slices a tomato with a knife", "cutting"),
    ("an ice cube melts on a hot pan", "melting"),
    ("a campfire burns at night", "burning"),
    ("a pendulum swings in a clock", "swinging"),
    ("a stack of blocks topples over", "stacking and toppling"),
    ("a man pushes a shopping cart", "pushing and pulling"),
    ("a balloon is blown up until it pops", "inflating"),
    ("a weightlifter lifts a barbell over his head", "lifting"),
    ("a river flows over rocks", "flowing"),
    ("a gymnast does a backflip", "jumping"),
]


def test_general_list_sanity():
    got = assign_categories([p for p, _ in GENERAL], load_categories("general"))
    assert accuracy(got, [y for _, y in GENERAL]) >= 0.8, confusion(got, [y for _, y in GENERAL])


# ------------------------------------------------------------------ representatives (no model needed)
def _fake_embed(vectors: dict[str, list[float]]):
    def embed(texts):
        v = np.array([vectors[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    return embed


CATS = [Category("a", ("A",)), Category("b", ("B",))]
VECS = {"A": [1, 0], "B": [0, 1], "p0": [1, 0.5], "p1": [1, 0.1], "p2": [0.2, 1], "p3": [1, 0.3], "p4": [0.1, 1]}


def test_assignment_ranks_and_representatives():
    prompts = ["p0", "p1", "p2", "p3", "p4"]
    got = assign_categories(prompts, CATS, top_n=2, embed=_fake_embed(VECS))
    assert [a.category for a in got] == ["a", "a", "b", "a", "b"]
    # within "a": p1 (most aligned) > p3 > p0
    assert [got[i].rank for i in (1, 3, 0)] == [0, 1, 2]
    assert [a.representative for a in got] == [False, True, True, True, True]
    assert representatives(got, 2) == {"a": [1, 3], "b": [4, 2]}
    assert representatives(got, 1, keys=prompts) == {"a": ["p1"], "b": ["p4"]}
    assert histogram(got, CATS + [Category("c", ("C",))]) == {"a": 3, "b": 2, "c": 0}
    assert got[2].runner_up == "a" and got[2].margin > 0


def test_similarity_is_best_description_and_duplicates_embed_once():
    calls = []
    base = _fake_embed({**VECS, "A2": [0, 1]})

    def embed(texts):
        calls.append(list(texts))
        return base(texts)

    cats = [Category("a", ("A", "A2")), Category("b", ("B",))]
    got = assign_categories(["p2", "p2", "p0"], cats, embed=embed)
    # "A2" is the same direction as "B": the tie goes to the first listed category
    assert (got[0].category, got[0].runner_up) == ("a", "b") and got[0].margin == pytest.approx(0.0, abs=1e-6)
    assert got[2].category == "a" and got[2].similarity == pytest.approx(float(np.dot([1, 0.5], [1, 0]) / np.hypot(1, 0.5)))
    assert calls[0] == ["p2", "p0"]  # the repeated prompt was embedded once


def test_bad_arguments():
    with pytest.raises(TypeError):
        assign_categories("a prompt", CATS, embed=_fake_embed(VECS))
    with pytest.raises(ValueError, match="top_n"):
        assign_categories(["p0"], CATS, top_n=0, embed=_fake_embed(VECS))
    with pytest.raises(ValueError, match="n_c"):
        representatives([], 0)
    assert assign_categories([], CATS, embed=_fake_embed(VECS)) == []
