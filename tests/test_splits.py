"""The built-in world's evaluation splits: held-out texts are unseen at every detail level."""

from __future__ import annotations

from itertools import product

from agent.config import WorldDataConfig
from agent.stages import Clip, summarise
from agent.world_data import HELDOUT_COMBOS, is_heldout, split_seeds
from reward.base import Score
from reward.world import physics as P
from reward.world.simulator import LEVELS, sample_scene


def _texts(heldout: bool, n: int) -> set[str]:
    return {sample_scene(f, s).prompts[lv] for f in P.FAMILIES for s in split_seeds(f, heldout, n) for lv in LEVELS}


def test_heldout_texts_never_occur_in_training_at_any_level():
    train, held = _texts(False, 40), _texts(True, 40)
    assert train and held and not train & held


def test_every_colour_is_trained_on_and_held_out_somewhere():
    colours = set(P.PALETTE)
    for family in ("drop", "projectile", "slide"):
        held = {c for (c,) in HELDOUT_COMBOS[family]}
        assert len(held) == 2 and held < colours
    pairs = HELDOUT_COMBOS["collision"]
    assert {a for a, _ in pairs} == colours and {b for _, b in pairs} == colours
    assert all(a != b for a, b in pairs)
    trained = set(product(colours, colours)) - pairs
    assert all(any(p[0] == c for p in trained if p[0] != p[1]) for c in colours)


def test_split_seeds_are_disjoint_and_on_their_side():
    for family in P.FAMILIES:
        tr, ho = split_seeds(family, False, 12), split_seeds(family, True, 16)
        assert len(set(tr)) == 12 and len(set(ho)) == 16 and not set(tr) & set(ho)
        assert not any(is_heldout(sample_scene(family, s)) for s in tr)
        assert all(is_heldout(sample_scene(family, s)) for s in ho)


def test_heldout_levels_accept_an_int_or_a_list():
    assert WorldDataConfig().heldout_levels == (0,)
    assert WorldDataConfig(heldout_level=[0, 1]).heldout_levels == (0, 1)
    for bad in ([], [0, 0], [3], 5):
        try:
            WorldDataConfig(heldout_level=bad)
        except ValueError:
            continue
        raise AssertionError(f"heldout_level={bad!r} was accepted")


def test_unjudged_clips_count_as_failures():
    clips = [Clip(f"v{i}", i, 0, "p", None) for i in range(4)]
    scores = {"v0": Score(1.0, 1.0, True), "v1": Score(1.0, 1.0, True), "v2": Score(0.5, 1.0, False),
              "v3": Score.unjudged("timeout")}
    s = summarise(clips, scores, {i: "drop" for i in range(4)}, 0.75, level_of={i: 0 for i in range(4)})
    assert (s["n"], s["n_judged"], s["n_success"], s["n_accept"]) == (4, 3, 2, 2)
    assert s["joint_success"] == 0.5 and s["accept_rate"] == 0.5  # not 2/3: the unjudged clip failed
    assert s["mean_sa"] == (1.0 + 1.0 + 0.5) / 3  # means are over judged clips
    assert s["per_category"]["drop"]["n_success"] == 2 and s["per_level"]["L0"]["n"] == 4


def test_paraphrases_use_words_the_base_never_saw_and_both_judges_read_them():
    from agent.world_data import paraphrase
    from reward.world.judge import PhysicsJudge
    from reward.world.simulator import render

    captions = {w for f in P.FAMILIES for s in range(200) for w in sample_scene(f, 1_000_000 + s).prompts[0].split()}
    from reward.world.synthesis import SynthesisJudge

    judges = (PhysicsJudge(), SynthesisJudge())
    for family in P.FAMILIES:
        for seed in split_seeds(family, True, 4):
            scene = sample_scene(family, seed)
            text = paraphrase(scene)
            assert text not in scene.prompts
            verbs = set(text.split()) - captions - set(P.PALETTE)
            assert verbs, text  # words the pretraining captions never had
            for judge in judges:
                assert judge.score(text, render(scene)).accept, (judge.name, text)
