"""The VLM judge: VideoPhy-2-style scores and an Accept/Reject verdict from a vision-language model.

For each (prompt, video) the model is shown the video (sampled frames or the whole clip) and
asked for a strict JSON object: semantic adherence and physical commonsense on integer 1–5
scales (normalised to [0, 1] by (s − 1)/4) plus a binary verdict in the spirit of the
accept/reject AI feedback of the RL-finetuning paper, and a short rationale that names the
evidence. The rubric spells out the physical checks so that different models agree on
what a "3" is.

A bad answer is asked again once; if it is still bad, or the server cannot be reached,
the video is returned *unjudged* with the reason — a guessed score would be a wrong
training signal. Every raw answer is kept in ``Score.raw`` (a JSON list of the answer
texts, in order; empty when no answer arrived).

``mode = "logprob"`` (as peer trainers' VLM rewards do): instead of parsed ratings, one yes/no
question per score — does the video show what the prompt describes; does its motion follow
everyday physics — each answered with a single token, and the score is P(yes) = p_yes / (p_yes +
p_no) summed over the spellings of "yes" and "no" among the first token's ``top_logprobs``. A
continuous reward from one short forward pass per question, less noisy than a 1–5 rating; the
verdict is Accept when both probabilities are at least ½. The raw answer stored is the returned
top tokens with their log-probabilities; a server that returns no logprobs, or no yes/no token
among them, leaves the clip unjudged with the reason.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Annotated, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from reward.base import Score
from reward.vlm.answers import AskFailure, ask_validated
from reward.vlm.client import FaultCounter, VLMClient, VLMRequestError
from reward.vlm.config import VLMConfig

Rating = Annotated[int, Field(ge=1, le=5, strict=True)]

SYSTEM_PROMPT = """\
You judge generated videos for physical realism. You receive a text prompt and a video \
(either frames in temporal order, first to last, or the clip itself). Rate the video on two \
integer scales from 1 to 5 and give a verdict.

semantic_adherence - does the video show what the prompt asks for: the named objects with \
their attributes, the action, and its outcome?
  5: everything the prompt describes is shown.
  4: all key objects and the main action are shown; a minor detail is missing or off.
  3: the main object is there but the action is incomplete or partly wrong.
  2: only loosely related: a key object is missing or the action is a different one.
  1: unrelated to the prompt.

physical_commonsense - judged on what is shown, whatever the prompt says: does the motion \
follow everyday physics? Check in order:
  - permanence: objects do not appear, vanish, duplicate or merge; rigid objects keep \
their shape and size;
  - gravity: unsupported objects fall and speed up downward; thrown objects follow one \
smooth arc; nothing floats without support;
  - contact: nothing passes through a solid object; a bounce rebounds lower than the drop; \
a sliding object slows down through friction and stops; in a collision both objects' \
motions change, the lighter one more;
  - causality: nothing starts, stops or turns without a visible cause; liquids flow \
downward and keep their volume.
  5: no violation. 4: one slight oddity seen only on close inspection. 3: one clear \
violation. 2: several clear violations or one severe one. 1: physically impossible \
throughout.

verdict - "Accept" only if the video completes what the prompt describes, with no clear \
physical violation and no visual glitch (flicker, morphing, objects popping in or out). \
Otherwise "Reject". A single clear error is enough to reject; image quality, style or low \
resolution alone are not.

rationale - at most 60 words naming the decisive evidence: which frames, which law or \
which part of the prompt.

Look at the frames in order before you decide. Reply with exactly one JSON object and \
nothing else:
{"semantic_adherence": <integer 1-5>, "physical_commonsense": <integer 1-5>, \
"verdict": "Accept" or "Reject", "rationale": "<text>"}"""

CORRECTION = ('Reply again with exactly one JSON object with the keys "semantic_adherence" and '
              '"physical_commonsense" (integers from 1 to 5), "verdict" ("Accept" or "Reject") and '
              '"rationale" (a short string), and no other text.')


LOGPROB_SYSTEM = """\
You judge generated videos for physical realism. You receive a text prompt, a video (either \
frames in temporal order, first to last, or the clip itself) and one yes/no question about it. \
Look at the frames in order, then answer with exactly one word: Yes or No."""

#: logprob mode: the question behind each score
QUESTIONS: dict[str, str] = {
    "semantic_adherence": "Does the video show what the prompt describes: the named objects with their "
                          "attributes, the action, and its outcome?",
    "physical_commonsense": "Judged on what is shown, whatever the prompt says: does the motion follow everyday "
                            "physics? Objects persist and keep their shape and size, unsupported objects fall "
                            "and speed up, a bounce rebounds lower than the drop, sliding objects slow down and "
                            "stop, and nothing changes its motion without a visible cause.",
}


def p_yes(top: list[tuple[str, float]]) -> tuple[float, float] | None:
    """P(yes) among the yes/no answers of one token's alternatives, and the probability mass they
    hold; None when no spelling of "yes" or "no" is among them."""
    yes = no = 0.0
    for token, logprob in top:
        word = token.strip().strip(".!,:").lower()
        if word == "yes":
            yes += math.exp(logprob)
        elif word == "no":
            no += math.exp(logprob)
    if yes + no <= 0.0:
        return None
    return yes / (yes + no), yes + no


class Judgement(BaseModel):
    """The judge's answer schema (extra keys are ignored, missing or out-of-range ones are not)."""

    model_config = ConfigDict(extra="ignore", title="physics_judgement")

    semantic_adherence: Rating
    physical_commonsense: Rating
    verdict: Literal["Accept", "Reject"]
    rationale: str = Field(min_length=1, max_length=2000)

    @field_validator("verdict", mode="before")
    @classmethod
    def _verdict_case(cls, value: object) -> object:
        return value.strip().capitalize() if isinstance(value, str) else value


def normalise(rating: int) -> float:
    """VideoPhy-2 1–5 rating → [0, 1]."""
    return (rating - 1) / 4.0


def user_content(prompt: str, parts: list[dict], video_desc: dict) -> list[dict]:
    """The user turn: the prompt, then the video parts (each frame labelled with its index)."""
    content: list[dict] = []
    if video_desc["mode"] == "frames":
        idx = video_desc["frame_indices"]
        content.append({"type": "text", "text": (
            f'Prompt: "{prompt}"\n\nThe video has {video_desc["num_frames"]} frames; here are '
            f"{len(idx)} of them, evenly spaced in time, first to last.")})
        for i, part in zip(idx, parts):
            content.append({"type": "text", "text": f"Frame {i}:"})
            content.append(part)
    else:
        content.append({"type": "text", "text": (
            f'Prompt: "{prompt}"\n\nThe video ({video_desc["num_frames"]} frames at '
            f'{video_desc["fps"]:g} fps):')})
        content.extend(parts)
    content.append({"type": "text", "text": "Judge this video. Answer with the JSON object only."})
    return content


class VLMJudge:
    """``reward.base.Judge`` backed by an OpenAI-compatible VLM (vLLM, OpenAI, Gemini)."""

    name = "vlm"

    def __init__(self, config: VLMConfig | None = None, *, client: VLMClient | None = None) -> None:
        if client is None:
            client = VLMClient(config or VLMConfig())
        self.client = client
        self.config = client.config

    @property
    def faults(self) -> FaultCounter:
        return self.client.faults

    async def ascore(self, prompt: str, video: np.ndarray) -> Score:
        # Encoding in a worker thread (OpenCV releases the GIL) overlaps it with other requests.
        parts, desc = await asyncio.to_thread(self.client.video_content, video)
        if self.config.mode == "logprob":
            return await self._ascore_logprob(prompt, parts, desc)
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": user_content(prompt, parts, desc)}]
        try:
            asked = await ask_validated(self.client, messages, Judgement, correction=CORRECTION)
        except AskFailure as fail:
            return Score.unjudged(f"{fail.kind}: {fail.message}", raw=_raw(fail.raws))
        j = asked.answer
        last = asked.replies[-1]
        details = {"semantic_adherence_1to5": j.semantic_adherence,
                   "physical_commonsense_1to5": j.physical_commonsense,
                   "asks": asked.asks, "model": last.model or self.config.model,
                   "base_url": last.base_url, "video": {k: v for k, v in desc.items()},
                   "latency_s": round(sum(r.latency_s for r in asked.replies), 4)}
        return Score(sa=normalise(j.semantic_adherence), pc=normalise(j.physical_commonsense),
                     accept=j.verdict == "Accept", rationale=j.rationale.strip(),
                     raw=_raw(asked.raws), details=details)

    async def _ascore_logprob(self, prompt: str, parts: list[dict], desc: dict) -> Score:
        content = user_content(prompt, parts, desc)[:-1]  # the video, without the JSON instruction

        async def ask(key: str):
            messages = [{"role": "system", "content": LOGPROB_SYSTEM},
                        {"role": "user", "content": content + [{"type": "text", "text": QUESTIONS[key] +
                                                                " Answer Yes or No."}]}]
            return await self.client.chat(messages, top_logprobs=self.config.top_logprobs)

        keys = list(QUESTIONS)
        try:
            replies = await asyncio.gather(*(ask(k) for k in keys))
        except VLMRequestError as err:
            return Score.unjudged(f"{err.kind}: {str(err).split(': ', 1)[-1]}")
        raw = json.dumps([{"question": k, "content": r.content, "top_logprobs": r.top_logprobs}
                          for k, r in zip(keys, replies)], ensure_ascii=False)
        probs, mass = {}, {}
        for k, r in zip(keys, replies):
            if not r.top_logprobs:
                self.faults.add("no_logprobs")
                return Score.unjudged("no_logprobs: the server returned no top_logprobs (does it support "
                                      "logprobs? vLLM and OpenAI do)", raw=raw)
            got = p_yes(r.top_logprobs)
            if got is None:
                self.faults.add("no_yes_no")
                return Score.unjudged(f"no_yes_no: neither yes nor no among the top {len(r.top_logprobs)} "
                                      f"tokens of the {k} answer", raw=raw)
            probs[k], mass[k] = got
        sa, pc = probs["semantic_adherence"], probs["physical_commonsense"]
        details = {"mode": "logprob", "p_yes": {k: round(v, 6) for k, v in probs.items()},
                   "yes_no_mass": {k: round(v, 6) for k, v in mass.items()},
                   "model": replies[-1].model or self.config.model, "base_url": replies[-1].base_url,
                   "video": dict(desc), "latency_s": round(sum(r.latency_s for r in replies), 4)}
        return Score(sa=sa, pc=pc, accept=sa >= 0.5 and pc >= 0.5,
                     rationale=f"P(yes): semantic adherence {sa:.3f}, physical commonsense {pc:.3f}",
                     raw=raw, details=details)

    async def ascore_batch(self, items: Sequence[tuple[str, np.ndarray]]) -> list[Score]:
        """Scores concurrently; the client's semaphore bounds requests in flight."""
        return list(await asyncio.gather(*(self.ascore(p, v) for p, v in items)))

    def score(self, prompt: str, video: np.ndarray) -> Score:
        return self.client.run(lambda: self.ascore(prompt, video))

    def score_batch(self, items: Sequence[tuple[str, np.ndarray]]) -> list[Score]:
        items = list(items)
        if not items:
            return []
        return self.client.run(lambda: self.ascore_batch(items))


def _raw(raws: list[str]) -> str:
    return json.dumps(raws, ensure_ascii=False) if raws else ""
