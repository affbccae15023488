"""Getting a *validated* JSON answer out of a VLM: parse, classify what went wrong, re-ask once.

A VLM answer is used only when it parses as one JSON object that passes a pydantic model
(and any extra check). Light formatting noise is tolerated — a ```json fence, prose around
the object — but a missing field, a wrong type or an out-of-range score is not: guessing a
score would feed noise into training. An unusable answer is classified (malformed,
out_of_range, refusal, empty_choices), counted, and asked again once with a short
correction; a second failure is reported, never patched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from reward.vlm.client import ChatReply, VLMClient, VLMRequestError

M = TypeVar("M", bound=BaseModel)

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.S)
_REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i can(?:no|')t|i cannot|i am unable|i'?m unable|"
                      r"unable to (?:help|assist|comply)|as an ai)\b", re.I)
_RANGE_ERRORS = {"greater_than_equal", "less_than_equal", "greater_than", "less_than", "literal_error",
                 "too_long", "too_short", "string_too_long", "string_too_short"}


class AnswerProblem(Exception):
    """An answer that arrived but cannot be used; ``kind`` is one of the answer fault kinds."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class AskFailure(Exception):
    """No usable answer: transport failure or two unusable answers. ``raws`` holds every answer."""

    def __init__(self, kind: str, message: str, raws: list[str]) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.raws = raws


@dataclass
class Asked(Generic[M]):
    answer: M
    raws: list[str] = field(default_factory=list)
    asks: int = 1
    replies: list[ChatReply] = field(default_factory=list)


def extract_json_object(text: str) -> dict:
    """The JSON object in ``text``: bare, in a ```json fence, or the first object amid prose."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        start = body.find("{")
        if start < 0:
            raise ValueError("no JSON object in the answer") from None
        try:
            obj, _ = json.JSONDecoder().raw_decode(body[start:])
        except json.JSONDecodeError as err:
            raise ValueError(f"invalid JSON: {err.msg} (char {err.pos})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def reply_text(reply: ChatReply) -> str:
    """The answer text of a reply, or AnswerProblem for empty choices / refusals / cut-offs."""
    if reply.n_choices == 0:
        raise AnswerProblem("empty_choices", "the response had no choices")
    if reply.refusal:
        raise AnswerProblem("refusal", f"the model refused: {reply.refusal[:120]}")
    if reply.finish_reason == "content_filter":
        raise AnswerProblem("refusal", "the answer was stopped by a content filter")
    text = reply.content or ""
    if not text.strip():
        raise AnswerProblem("malformed", "the answer was empty")
    return text


def parse_answer(text: str, model: type[M]) -> M:
    """Validates ``text`` against ``model``; raises AnswerProblem (malformed/out_of_range/refusal)."""
    try:
        obj = extract_json_object(text)
    except ValueError as err:
        if _REFUSAL.search(text):
            raise AnswerProblem("refusal", f"the model declined instead of answering: {text.strip()[:120]}")
        raise AnswerProblem("malformed", str(err)) from None
    try:
        return model.model_validate(obj)
    except ValidationError as err:
        errors = err.errors()
        kind = "out_of_range" if all(e["type"] in _RANGE_ERRORS for e in errors) else "malformed"
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in errors[:4])
        raise AnswerProblem(kind, detail) from None


async def ask_validated(client: VLMClient, messages: list[dict], model: type[M], *,
                        correction: str, check: Callable[[M], None] | None = None,
                        reasks: int = 1) -> Asked[M]:
    """Asks until an answer validates against ``model`` (and ``check``), re-asking ``reasks`` times.

    ``correction`` is appended to the problem description in the re-ask turn (what the
    answer must look like). Raises AskFailure with every raw answer on failure.
    """
    convo = list(messages)
    raws: list[str] = []
    replies: list[ChatReply] = []
    problem: AnswerProblem | None = None
    schema = model.model_json_schema()
    for ask in range(reasks + 1):
        try:
            reply = await client.chat(convo, json_schema=schema)
        except VLMRequestError as err:
            raise AskFailure(err.kind, str(err).split(": ", 1)[-1], raws) from None
        replies.append(reply)
        if reply.n_choices:
            raws.append(reply.content or reply.refusal or "")
        try:
            answer = parse_answer(reply_text(reply), model)
            if check is not None:
                check(answer)
            return Asked(answer, raws, ask + 1, replies)
        except AnswerProblem as err:
            problem = err
            client.faults.add(err.kind)
        if reply.content:  # show the model its own answer and what was wrong with it
            convo = convo + [{"role": "assistant", "content": reply.content},
                             {"role": "user", "content": f"Your reply could not be used ({problem}). "
                                                         f"{correction}"}]
    assert problem is not None
    raise AskFailure(problem.kind, f"{problem.message} (after {reasks + 1} asks)", raws)
