"""The analysis-by-synthesis judge of the built-in world (reward/world/synthesis.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reward.base import HistoryItem
from reward.world import corrupt as C
from reward.world import physics as P
from reward.world.critic import RuleCritic
from reward.world.simulator import iter_scenes, mirror_scene, prompts_for, render, sample_scene, simulate
from reward.world.synthesis import SynthesisJudge, read_prompt, scene_tracks

JUDGE = SynthesisJudge()
SCENES = list(iter_scenes(20, seed=3))


@pytest.mark.parametrize("family", P.FAMILIES)
def test_kinematics_match_the_simulator(family):
    worst = 0.0
    for seed in range(30):
        scene = sample_scene(family, seed)
        bodies = [(b.x0, b.y0, b.vx0, b.vy0) for b in scene.bodies]
        ours = scene_tracks(family, bodies, scene.restitution, scene.friction)
        worst = max(worst, float(np.abs(ours - simulate(scene)).max()))
    assert worst < 0.1, f"closed-form kinematics differ from simulate() by {worst:.3f} px"


@pytest.mark.parametrize("level", [0, 1, 2])
def test_clean_videos_accepted_at_every_level(level):
    accepted = [JUDGE.score(s.prompts[level], render(s)).accept for s in SCENES]
    assert np.mean(accepted) >= 0.9


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_corruptions_rejected(name):
    scenes = [s for s in SCENES[:12] if s.family in C.APPLIES[name]]
    rejected = [not JUDGE.score(s.prompts[1], C.corrupt(s, name, s.seed)).accept for s in scenes]
    assert np.mean(rejected) >= 0.6, f"{name}: rejected {np.mean(rejected):.2f}"


def test_wrong_prompts_lower_sa():
    for scene in SCENES[:8]:
        video = render(scene)
        unused = [c for c in P.PALETTE if c not in scene.colours][0]
        recoloured = dataclasses.replace(scene, bodies=(dataclasses.replace(scene.bodies[0], colour=unused),)
                                         + scene.bodies[1:])
        assert JUDGE.score(prompts_for(recoloured)[1], video).sa < 0.75, "wrong colour"
        other = P.FAMILIES[(P.FAMILIES.index(scene.family) + 1) % 4]
        base = sample_scene(other, scene.seed)
        colours = list(scene.colours) + [c for c in P.PALETTE if c not in scene.colours]
        bodies = tuple(dataclasses.replace(b, colour=c) for b, c in zip(base.bodies, colours))
        assert JUDGE.score(prompts_for(dataclasses.replace(base, bodies=bodies))[1], video).sa < 0.75, "wrong family"
        if scene.family in P.MIRRORED:
            assert JUDGE.score(mirror_scene(scene).prompts[1], video).sa < 0.75, "wrong direction"


def test_refined_prompts_are_read_like_the_originals():
    critic = RuleCritic()
    for scene in SCENES[:8]:
        refined = critic.refine(scene.prompts[1], []).prompt
        assert read_prompt(refined).family == scene.family
        assert read_prompt(refined).colours[: len(scene.colours)] == scene.colours
        assert JUDGE.score(refined, render(scene)).accept
    hist = [HistoryItem(SCENES[0].prompts[2], JUDGE.score(SCENES[0].prompts[2], render(SCENES[0])))]
    assert critic.refine(SCENES[0].prompts[2], hist).prompt  # the judge's details are readable by the critic


def test_empty_and_malformed_videos():
    empty = np.broadcast_to(render(SCENES[0])[:, :1, :1], (P.FRAMES, P.SIZE, P.SIZE, 3)).copy()
    empty[:] = P.BACKGROUND
    s = JUDGE.score("a red ball is dropped", empty)
    assert s.judged and not s.accept and s.sa < 0.5 and s.pc < 0.5 and "no object" in s.rationale
    for bad in (np.zeros((12, 32, 32), np.uint8), np.zeros((12, 32, 32, 3), np.float32), [[1, 2]]):
        u = JUDGE.score("a red ball is dropped", bad)
        assert not u.judged and u.sa is None and u.error


def test_deterministic_and_batch_equals_single():
    items = [(s.prompts[0], C.corrupt(s, "teleport", 1)) for s in SCENES[:4]]
    a = JUDGE.score_batch(items)
    b = [JUDGE.score(p, v) for p, v in items]
    assert [(x.sa, x.pc, x.raw) for x in a] == [(x.sa, x.pc, x.raw) for x in b]
