"""VLM critic: multimodal request, rewrite accepted, new entities rejected, word limit re-ask,
failures keep the prompt, and the entity heuristic itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reward.base import Critic, HistoryItem, Score
from reward.vlm.config import VLMConfig
from reward.vlm.critic import VLMCritic, new_entities, noun_phrase_words
from tests.vlm_server import LoopbackVLM, answer, status, truncated

PROMPT = "A red ball bounces on the ground."
CLIP = np.random.default_rng(2).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
REWRITE = ("A red ball falls from rest, speeds up as it drops, hits the ground and bounces lower "
           "each time until it comes to rest.")


def critic_answer(refined: str = REWRITE, converged: bool = False, **kw):
    body = {"expected_physics": "The ball accelerates down, rebounds lower after each impact, then rests.",
            "observed": "The ball rebounds higher than it was dropped from (frames 6-8).",
            "mismatches": ["bounce gains height"], "converged": converged, "refined_prompt": refined}
    body.update(kw)
    return answer(body)


def history(with_video: bool = True) -> list[HistoryItem]:
    judged = Score(sa=0.75, pc=0.25, accept=False, rationale="frame 7: the bounce is higher than the drop")
    return [HistoryItem(prompt=PROMPT, score=judged, video=CLIP if with_video else None)]


def make(srv: LoopbackVLM, **kw) -> VLMCritic:
    config = VLMConfig(base_urls=[srv.base_url], model="m", timeout_s=2.0, max_retries=0, n_frames=4)
    return VLMCritic(config, **kw)


def test_is_a_critic():
    assert isinstance(VLMCritic(VLMConfig()), Critic)


def test_rewrite_uses_frames_history_and_rationale():
    with LoopbackVLM(default=critic_answer()) as srv:
        critic = make(srv)
        out = critic.refine(PROMPT, history())
    assert out.prompt == REWRITE
    assert "expected:" in out.critique and "bounce gains height" in out.critique
    assert json.loads(out.raw) == [critic_answer().content]
    body = srv.requests[0]
    assert body["response_format"] == {"type": "json_object"}
    system = body["messages"][0]["content"]
    assert "Predict" in system and "Compare" in system and "Rewrite" in system and "120 words" in system
    parts = body["messages"][1]["content"]
    assert len([p for p in parts if p["type"] == "image_url"]) == 4
    text = " ".join(p["text"] for p in parts if p["type"] == "text")
    assert PROMPT in text and "the bounce is higher than the drop" in text and "physical commonsense 0.25" in text


def test_text_only_when_no_video():
    with LoopbackVLM(default=critic_answer()) as srv:
        out = make(srv).refine(PROMPT, history(with_video=False))
    assert out.prompt == REWRITE
    assert not [p for p in srv.requests[0]["messages"][1]["content"] if p["type"] != "text"]
    with LoopbackVLM(default=critic_answer()) as srv:
        assert make(srv).refine(PROMPT, []).prompt == REWRITE


def test_rewrite_adding_an_entity_is_rejected():
    sneaky = "A red ball bounces on the ground while a dog chases it."
    with LoopbackVLM(default=critic_answer(refined=sneaky)) as srv:
        out = make(srv).refine(PROMPT, history())
    assert out.prompt == PROMPT
    assert "rejected" in out.critique and "dog" in out.critique


def test_too_long_rewrite_is_asked_again():
    long = " ".join(["the ball falls"] * 50)  # 150 words
    with LoopbackVLM([critic_answer(refined=long), critic_answer()]) as srv:
        critic = make(srv)
        out = critic.refine(PROMPT, history())
    assert out.prompt == REWRITE
    assert len(srv.requests) == 2 and "150 words" in srv.requests[1]["messages"][-1]["content"]
    assert critic.faults.snapshot()["out_of_range"] == 1
    with LoopbackVLM(default=critic_answer(refined=long)) as srv:
        out = make(srv, max_words=20).refine(PROMPT, history())
    assert out.prompt == PROMPT and out.critique.startswith("refinement failed")


def test_converged_keeps_prompt():
    with LoopbackVLM(default=critic_answer(refined=PROMPT + " Extra.", converged=True)) as srv:
        out = make(srv).refine(PROMPT, history())
    assert out.prompt == PROMPT and out.critique.startswith("converged")


@pytest.mark.parametrize("reply,kind", [(status(503), "server_error"), (truncated(), "malformed")])
def test_failure_keeps_prompt_with_error(reply, kind):
    with LoopbackVLM(default=reply) as srv:
        out = make(srv).refine(PROMPT, history())
    assert out.prompt == PROMPT
    assert out.critique.startswith("refinement failed") and kind in out.critique


def test_refine_batch():
    with LoopbackVLM(default=critic_answer()) as srv:
        outs = make(srv).refine_batch([(PROMPT, history()), (PROMPT, [])])
    assert [o.prompt for o in outs] == [REWRITE, REWRITE]


@pytest.mark.parametrize("rewrite,added", [
    (REWRITE, set()),
    ("The red ball is dropped from a height, accelerates downward and rebounds lower after each "
     "impact with the ground, finally rolling to a stop.", set()),
    ("A red ball and a blue cube fall to the ground.", {"cube"}),
    ("The ball is thrown upward by a man and falls back down.", {"man"}),
    ("A small red ball bounces on the wet ground near the edge of the scene.", set()),
])
def test_entity_heuristic(rewrite, added):
    assert new_entities([PROMPT], rewrite) == added


def test_entity_heuristic_uses_every_earlier_prompt():
    assert new_entities(["A block slides on a table."], "The block slides across the table and stops.") == set()
    assert new_entities([PROMPT, "A red ball bounces next to a wall."], "The ball bounces off the wall.") == set()
    assert "wall" in new_entities([PROMPT], "The ball bounces off the wall.")
    assert noun_phrase_words("the small red ball rolling") == ["ball"]


def test_resolutions_propose_rewrites_that_settle_open_details_and_drop_bad_ones():
    body = {"open_details": ["which way it is thrown"],
            "candidates": ["A red ball is thrown to the left.", "A red ball is thrown to the right.",
                           "A red ball is thrown to the right by a dog.", "A red ball is thrown."]}
    with LoopbackVLM(default=answer(body)) as srv:
        out = make(srv).resolutions("A red ball is thrown.")
        system = srv.requests[0]["messages"][0]["content"]
    assert [r.prompt for r in out] == ["A red ball is thrown to the left.", "A red ball is thrown to the right."]
    assert all("which way it is thrown" in r.critique for r in out)  # the dog is a new entity; the copy adds nothing
    assert "up to 4 rewrites" in system and "Never add an object" in system


def test_resolutions_reask_when_too_many_and_propose_nothing_on_failure():
    many = answer({"open_details": ["x"], "candidates": [f"A red ball is thrown {w}." for w in
                                                           ("left", "right", "high", "low", "far")]})
    ok = answer({"open_details": ["x"], "candidates": ["A red ball is thrown left."]})
    with LoopbackVLM([many, ok]) as srv:
        out = make(srv).resolutions("A red ball is thrown.")
        assert len(srv.requests) == 2 and "at most 4 prompts" in srv.requests[1]["messages"][-1]["content"]
    assert [r.prompt for r in out] == ["A red ball is thrown left."]
    with LoopbackVLM(default=status(500)) as srv:
        assert make(srv).resolutions("A red ball is thrown.") == []
    with pytest.raises(ValueError):
        VLMCritic(VLMConfig(), max_candidates=0)
