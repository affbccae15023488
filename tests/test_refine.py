"""The refinement loop's propose-probe-keep step, against hand-made probes."""

from __future__ import annotations

import numpy as np
import pytest

from agent.refine import refine_prompt, resolve_open_details
from reward.base import Refinement, Score

VIDEO = np.zeros((2, 4, 4, 3), np.uint8)


def probe_from(table: dict[str, list[float]], calls: list):
    """A probe whose r-th clip of ``text`` scores table[text][r] (sa = pc = that value)."""

    def probe(text, step):
        calls.append((text, step))
        vals = table[text]
        v = vals[len([c for c in calls if c[0] == text]) - 1]
        return VIDEO, Score(v, v, v >= 0.75) if v is not None else Score(None, None, None, error="down")

    return probe


def same(a, b):
    return 1.0 if a == b else 0.5


def test_keeps_the_best_candidate_by_its_mean_over_probes():
    calls = []
    table = {"x": [0.4, 0.4], "x left": [0.9, 0.1], "x right": [0.6, 0.6], "x up": [0.2, 0.3]}
    cands = [Refinement(t, f"choice {t}") for t in table if t != "x"]
    steps, kept, score = resolve_open_details("x", cands, probe_from(table, calls), probes=2, similarity=same)
    assert [s.score for s in steps] == pytest.approx([0.5, 0.6, 0.25])
    assert [s.accepted for s in steps] == [False, True, False] and kept.prompt == "x right"
    assert score == pytest.approx(0.6) and kept.score.mean == pytest.approx(0.6)
    assert [c[1] for c in calls] == list(range(8))  # the prompt first; distinct probe steps: distinct noise
    assert [c[0] for c in calls[:2]] == ["x", "x"]
    assert "probe mean 0.600 vs 0.400 as written (2 clips each)" in steps[1].critique


def test_nothing_is_kept_unless_it_beats_the_prompt_and_inadmissible_ones_are_not_probed():
    table = {"x": [0.7], "a": [0.5], "b": [0.7]}
    cands = [Refinement(t, "") for t in ("a", "b")]
    steps, kept, score = resolve_open_details("x", cands, probe_from(table, []), probes=1, similarity=same)
    assert kept is None and not any(s.accepted for s in steps) and score == 0.7  # 0.7 does not beat 0.7
    calls = []
    table["x"] = [0.1]
    steps, kept, _ = resolve_open_details("x", cands, probe_from(table, calls), probes=1, similarity=same,
                                          admissible=lambda t: t != "b")
    assert kept.prompt == "a" and calls == [("x", 0), ("a", 1)] and steps[1].stop.startswith("not admissible")
    table = {"x": [None, None], "a": [None, None]}
    steps, kept, score = resolve_open_details("x", [Refinement("a", "")], probe_from(table, []), probes=2,
                                              similarity=same)
    assert kept is None and score is None and steps[0].stop == "no probe clip was judged"
    with pytest.raises(ValueError):
        resolve_open_details("x", [], probe_from({}, []), probes=0, similarity=same)


class TwoWayCritic:
    name = "two-way"

    def resolutions(self, prompt):
        return [Refinement(f"{prompt} left", "l"), Refinement(f"{prompt} right", "r")] if prompt == "ball" else []

    def refine(self, prompt, history):
        assert history[-1].prompt == prompt  # it reads the kept candidate's probe clip
        return Refinement(prompt + " and gravity", "cue")


def test_refine_prompt_settles_first_then_rewrites_from_the_kept_candidate():
    table = {"ball": [0.3, 0.3, 0.3], "ball left": [0.4, 0.4], "ball right": [0.8, 0.7],
             "ball right and gravity": [0.9]}
    calls = []
    probe = probe_from(table, calls)
    res = refine_prompt("ball", [], TwoWayCritic(), max_steps=1, min_change=0.0, similarity=lambda a, b: 0.0,
                        probe=probe, resolve_probe=probe, resolve_probes=2)
    assert res.best == "ball right and gravity" and res.best_score == pytest.approx(0.9)
    assert [s.step for s in res.steps] == [1, 2, 3] and [s.accepted for s in res.steps] == [False, True, True]
    # without a resolution probe the step is skipped: only the rewrite is probed
    res = refine_prompt("ball", [], TwoWayCritic(), max_steps=0, min_change=0.0, similarity=lambda a, b: 0.0,
                        probe=probe_from(table, []))
    assert res.best == "ball" and res.steps == []


def test_a_real_video_admits_only_the_candidates_that_name_its_own_start():
    """The analytic judge tolerates a start near the named region; training texts must name the real one."""
    from agent.refine import states_what_it_shows
    from reward.world import physics as P
    from reward.world.critic import RuleCritic
    from reward.world.intent import parse_prompt
    from reward.world.judge import PhysicsJudge
    from reward.world.simulator import render, sample_scene

    judge, critic, tolerated = PhysicsJudge(), RuleCritic(), 0
    for seed in range(6):
        scene = sample_scene("drop", seed)
        video, real = render(scene), P.region_words(scene.bodies[0].x0, scene.bodies[0].y0)
        for c in critic.resolutions(scene.prompts[0]):
            s = judge.score(c.prompt, video)
            own = parse_prompt(c.prompt).start == real
            assert states_what_it_shows(s) == own, (c.prompt, real)
            tolerated += bool(s.accept and not own)
    assert tolerated > 0  # the judge alone would have admitted some
