"""VLM judge: parsing and normalisation, one re-ask then unjudged, fault kinds, batch order."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from reward.base import Judge
from reward.vlm.answers import AnswerProblem, extract_json_object, parse_answer
from reward.vlm.config import VLMConfig
from reward.vlm.judge import Judgement, VLMJudge, normalise
from tests.vlm_server import (LoopbackVLM, answer, empty_choices, judgement, refusal_field,
                              refusal_text, truncated)

CLIP = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)


def make_judge(srv: LoopbackVLM, **kw) -> VLMJudge:
    return VLMJudge(VLMConfig(base_urls=[srv.base_url], model="m", timeout_s=2.0, max_retries=1,
                              backoff_base_s=0.01, n_frames=4, **kw))


def test_is_a_judge():
    assert isinstance(VLMJudge(VLMConfig()), Judge)


@pytest.mark.parametrize("sa,pc,verdict", [(1, 5, "Reject"), (4, 3, "Accept"), (5, 2, "reject")])
def test_valid_answer_is_normalised(sa, pc, verdict):
    reply = judgement(sa=sa, pc=pc, verdict=verdict, rationale="frame 5: ball sinks into floor")
    with LoopbackVLM([reply]) as srv:
        judge = make_judge(srv)
        score = judge.score("a ball drops", CLIP)
    assert score.judged and score.error is None
    assert score.sa == pytest.approx((sa - 1) / 4) and score.pc == pytest.approx((pc - 1) / 4)
    assert score.accept is (verdict.lower() == "accept")
    assert score.rationale == "frame 5: ball sinks into floor"
    assert json.loads(score.raw) == [reply.content]
    assert score.details["semantic_adherence_1to5"] == sa and score.details["asks"] == 1
    assert sum(judge.faults.snapshot().values()) == 0


def test_fenced_json_and_prose_are_tolerated():
    fenced = judgement(sa=3, pc=3, fenced=True)
    prose = answer('Here is my judgement: {"semantic_adherence": 2, "physical_commonsense": 4, '
                   '"verdict": "Reject", "rationale": "no bounce"} Hope this helps.')
    with LoopbackVLM([fenced, prose]) as srv:
        judge = make_judge(srv)
        a, b = judge.score("p", CLIP), judge.score("p", CLIP)
    assert a.judged and a.sa == 0.5
    assert b.judged and (b.sa, b.pc, b.accept) == (0.25, 0.75, False)


def test_malformed_twice_is_unjudged_after_one_reask():
    with LoopbackVLM([truncated(), truncated(), judgement()]) as srv:
        judge = make_judge(srv)
        score = judge.score("p", CLIP)
    assert not score.judged and score.sa is None and score.pc is None and score.accept is None
    assert score.error.startswith("malformed")
    assert len(srv.requests) == 2  # exactly one re-ask, the third scripted answer is never asked for
    raws = json.loads(score.raw)
    assert len(raws) == 2 and all(r == truncated().content for r in raws)
    reask = srv.requests[1]["messages"]
    assert reask[-2] == {"role": "assistant", "content": truncated().content}
    assert reask[-1]["role"] == "user" and "could not be used" in reask[-1]["content"]
    assert judge.faults.snapshot()["malformed"] == 2


def test_reask_recovers():
    with LoopbackVLM([truncated(), judgement(sa=5, pc=5)]) as srv:
        judge = make_judge(srv)
        score = judge.score("p", CLIP)
    assert score.judged and score.sa == 1.0 and score.details["asks"] == 2
    assert len(json.loads(score.raw)) == 2  # both answers kept


def ans(**fields) -> dict:
    base = {"semantic_adherence": 4, "physical_commonsense": 3, "verdict": "Accept", "rationale": "x"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize("bad,kind", [
    (ans(semantic_adherence=7), "out_of_range"),
    (ans(semantic_adherence=0), "out_of_range"),
    (ans(verdict="Maybe"), "out_of_range"),
    (ans(rationale=""), "out_of_range"),
    (ans(physical_commonsense=None), "malformed"),  # missing
    (ans(physical_commonsense="good"), "malformed"),
    (ans(semantic_adherence=4.5), "malformed"),
])
def test_bad_fields_are_never_guessed(bad, kind):
    with LoopbackVLM(default=answer(bad)) as srv:
        judge = make_judge(srv)
        score = judge.score("p", CLIP)
    assert not score.judged and score.error.startswith(kind)
    assert judge.faults.snapshot()[kind] == 2
    assert json.loads(score.raw) == [json.dumps(bad)] * 2


@pytest.mark.parametrize("reply,kind", [(refusal_text(), "refusal"), (refusal_field(), "refusal"),
                                        (empty_choices(), "empty_choices")])
def test_refusals_and_empty_choices(reply, kind):
    with LoopbackVLM(default=reply) as srv:
        judge = make_judge(srv)
        score = judge.score("p", CLIP)
    assert not score.judged and score.error.startswith(kind)
    assert judge.faults.snapshot()[kind] == 2
    assert len(srv.requests) == 2


def test_batch_keeps_order_under_out_of_order_completion():
    def by_prompt(body: dict):
        text = " ".join(p["text"] for p in body["messages"][1]["content"] if p["type"] == "text")
        i = int(re.search(r"prompt number (\d)", text).group(1))
        return judgement(sa=1 + i % 5, pc=5 - i % 5, latency=0.05 * (5 - i))  # later ones finish first

    with LoopbackVLM(default=by_prompt) as srv:
        judge = make_judge(srv, concurrency=5)
        scores = judge.score_batch([(f"prompt number {i}", CLIP) for i in range(5)])
    assert [s.sa for s in scores] == [normalise(1 + i % 5) for i in range(5)]
    assert [s.pc for s in scores] == [normalise(5 - i % 5) for i in range(5)]
    assert judge.score_batch([]) == []


def test_parse_helpers():
    assert extract_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json_object('```\n{"a": 1}\n```') == {"a": 1}
    with pytest.raises(ValueError, match="JSON object"):
        extract_json_object("[1, 2]")
    with pytest.raises(ValueError):
        extract_json_object('{"a": ')
    ok = parse_answer('{"semantic_adherence": 2, "physical_commonsense": 1, "verdict": "ACCEPT", '
                      '"rationale": "r", "extra": 1}', Judgement)
    assert ok.verdict == "Accept"
    with pytest.raises(AnswerProblem) as info:
        parse_answer("nothing here", Judgement)
    assert info.value.kind == "malformed"


# ------------------------------------------------------------------ logprob mode
from reward.vlm.judge import QUESTIONS, p_yes  # noqa: E402
from tests.vlm_server import yes_no  # noqa: E402


def by_question(sa: float, pc: float, **kw):
    """A server answering each yes/no question with its own P(yes)."""
    def reply(body):
        text = body["messages"][1]["content"][-1]["text"]
        return yes_no(sa if text.startswith(QUESTIONS["semantic_adherence"]) else pc, **kw)
    return reply


def test_p_yes_sums_the_spellings_and_renormalises_over_yes_and_no():
    top = [("Yes", math.log(0.48)), (" yes", math.log(0.12)), ("No", math.log(0.18)), ("no.", math.log(0.02)),
           ("Maybe", math.log(0.2))]
    p, mass = p_yes(top)
    assert p == pytest.approx(0.6 / 0.8) and mass == pytest.approx(0.8)
    assert p_yes([("Maybe", 0.0)]) is None and p_yes([]) is None


def test_logprob_mode_reads_p_yes_from_one_token_answers():
    with LoopbackVLM(default=by_question(0.9, 0.3)) as srv:
        judge = make_judge(srv, mode="logprob")
        score = judge.score("a ball drops", CLIP)
        bodies = list(srv.requests)
    assert score.judged and score.sa == pytest.approx(0.9) and score.pc == pytest.approx(0.3)
    assert score.accept is False and "physical commonsense 0.300" in score.rationale
    assert len(bodies) == 2 and all(b["logprobs"] is True and b["top_logprobs"] == 20 and b["max_tokens"] == 1
                                    and "response_format" not in b for b in bodies)
    questions = {b["messages"][1]["content"][-1]["text"] for b in bodies}
    assert questions == {q + " Answer Yes or No." for q in QUESTIONS.values()}
    assert any(p.get("type") == "image_url" for p in bodies[0]["messages"][1]["content"])
    raw = json.loads(score.raw)
    assert [r["question"] for r in raw] == list(QUESTIONS) and raw[0]["top_logprobs"][0][0] == "Yes"
    assert score.details["mode"] == "logprob" and score.details["yes_no_mass"]["semantic_adherence"] == \
        pytest.approx(1.0)
    with LoopbackVLM(default=by_question(0.8, 0.6, other=0.2)) as srv:
        s = make_judge(srv, mode="logprob").score("a ball drops", CLIP)
    assert s.accept is True and s.sa == pytest.approx(1.0) and s.pc == pytest.approx(0.6 / 0.8)


def test_logprob_mode_without_logprobs_or_yes_no_is_unjudged_with_the_reason():
    with LoopbackVLM(default=judgement()) as srv:  # a server that ignores logprobs
        judge = make_judge(srv, mode="logprob")
        s = judge.score("a ball drops", CLIP)
    assert not s.judged and s.error.startswith("no_logprobs") and judge.faults.snapshot()["no_logprobs"] == 1
    with LoopbackVLM(default=yes_no(0.0, other=1.0)) as srv:  # only "Maybe"
        s = make_judge(srv, mode="logprob").score("a ball drops", CLIP)
    assert not s.judged and s.error.startswith("no_yes_no") and "Maybe" in s.raw
    with pytest.raises(ValueError):
        VLMConfig(mode="probabilities")
