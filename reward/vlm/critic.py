"""The VLM critic: multimodal chain-of-thought prompt refinement.

After the VLM-guided iterative self-refinement recipe: the model (1) predicts from the prompt
alone what should physically happen, (2) compares that prediction with the frames of the
last video made from the prompt and with the judge's rationale, and (3) rewrites the prompt
with the missing physical cues in plain, concrete words — the paper found that concise
"suitable expression" beat both bare prompts and long physics jargon. If the video already
matches, the model says so (``converged``) and the prompt is kept.

Guard rails, because a rewrite feeds straight into the generator:
- at most ``max_words`` words (an over-long rewrite is asked again once);
- no new entities: a rewrite that brings in an object the prompt never mentioned changes
  the task, so it is rejected by a noun heuristic (:func:`new_entities`) and the prompt
  is kept, with the reason in the critique;
- any failure (transport, two bad answers) returns the prompt unchanged with the error as
  the critique.

``resolutions(prompt)`` is the *propose* half of the refinement loop's "propose, probe, keep the
best" step (:func:`agent.refine.resolve_open_details`): the model names what the prompt leaves
open that every video of it must decide (the direction of a motion, where an object starts, which
object moves first, ...) and writes up to ``max_candidates`` rewrites, each settling those details
differently, never contradicting the prompt. The same guard rails apply to each candidate; one
that breaks them is dropped, and a failure proposes nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from reward.base import HistoryItem, Refinement
from reward.vlm.answers import AnswerProblem, AskFailure, ask_validated
from reward.vlm.client import FaultCounter, VLMClient
from reward.vlm.config import VLMConfig

SYSTEM_PROMPT = """\
You improve prompts for a text-to-video generator so that its videos obey physics. Work in \
three steps.
1. Predict: from the prompt alone, describe what should physically happen, in order: the \
objects and their starting state, the forces acting, the motion, every contact, and the \
final state.
2. Compare: look at the video made from the current prompt (frames in time order) and the \
judge's note, and list each place where the video departs from your prediction (an object \
vanishing or duplicating, wrong direction, no slowing down, passing through a surface, a \
bounce higher than the drop, ...). If no video is given, list the physical cues the \
prompt leaves unstated.
3. Rewrite: write a new prompt that keeps the same objects, scene and intent and states the \
missing physical cues: what starts the motion, its direction, how it speeds up or slows \
down, what happens at each contact, and how it ends. Prefer plain concrete words to \
physics jargon ("slows down and stops" rather than "kinetic friction dissipates its \
energy"). Never add an object, person, animal or place the prompt does not mention. Use at \
most {max_words} words.
If the video already shows the prompt with correct physics, set "converged" to true and \
return the current prompt unchanged as "refined_prompt".
Reply with exactly one JSON object and nothing else:
{{"expected_physics": "<step 1>", "observed": "<what the video shows, or empty>", \
"mismatches": ["<step 2 item>", ...], "converged": true or false, \
"refined_prompt": "<step 3>"}}"""

CORRECTION = ('Reply again with exactly one JSON object with the keys "expected_physics" (string), '
              '"observed" (string), "mismatches" (list of strings), "converged" (true/false) and '
              '"refined_prompt" (a non-empty prompt of at most {max_words} words), and no other text.')


RESOLVE_PROMPT = """\
A text-to-video generator must decide every detail a prompt leaves open; when the prompt does \
not say, it tends to mix the possibilities (an object drifting both ways, or fading between two \
start positions). Name the physically relevant details this prompt leaves open (the direction \
of a motion, where an object starts, which object moves, ...), then write up to {n} rewrites, \
each settling them in a different plausible way. Every rewrite keeps the same objects, colours \
and intent and everything the prompt states; it only adds what was open. Never add an object, \
person, animal or place. Use at most {max_words} words per rewrite. If nothing relevant is \
open, return an empty list.
Reply with exactly one JSON object and nothing else:
{{"open_details": ["<detail>", ...], "candidates": ["<rewrite>", ...]}}"""

RESOLVE_CORRECTION = ('Reply again with exactly one JSON object with the keys "open_details" (list of strings) '
                      'and "candidates" (a list of at most {n} prompts of at most {max_words} words each), and no '
                      'other text.')


class ResolveAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore", title="open_details")

    open_details: list[str] = Field(default_factory=list)
    candidates: list[str] = Field(default_factory=list)


class CriticAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore", title="prompt_refinement")

    expected_physics: str = Field(min_length=1)
    observed: str = ""
    mismatches: list[str] = Field(default_factory=list)
    converged: bool = False
    refined_prompt: str = Field(min_length=1)


# ------------------------------------------------------------------ entity heuristic
_DETERMINERS = frozenset(
    "a an the another this that these those its their his her our your my some each every both "
    "several many few one two three four five six seven eight nine ten other second third".split())
# Words that end a noun phrase: function words, prepositions, conjunctions, auxiliaries.
_STOP = frozenset(
    "and or but nor so then than as at by for from in into of off on onto out over under up down "
    "to toward towards with without within through across along around against after before "
    "behind below beneath beside between beyond during near past since until upon via while "
    "is are was were be been being has have had do does did will would can could should may might "
    "must it they them which who whom whose that this there here where when until again also "
    "not no only just still very too more most less each all".split())
# Irregular verb forms a suffix rule cannot spot.
_IRREGULAR_VERBS = frozenset(
    "thrown threw fallen fell hit hits struck strikes set sets held holds shown given gave went gone "
    "came come comes rose risen flew flown flies spun spins swung swings sank sunk sinks "
    "broke broken breaks began begun begins keeps kept lost loses stays stayed lies lay sits sat "
    "stands stood meets met leaves left ran runs".split())


def _stem(word: str) -> str:
    """A crude suffix stripper: balls/ball, bounces/bouncing/bounce, stopped/stop share a stem."""
    w = word.lower()
    for suffix in ("ing", "ed", "es", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and not (suffix == "s" and w.endswith("ss")):
            w = w[: -len(suffix)]
            if suffix in ("ing", "ed") and len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]  # stopp → stop
            break
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


def _stems(words: str) -> frozenset[str]:
    return frozenset(_stem(w) for w in words.split())


# Verbs of motion and contact, so "the ball accelerates" does not read as a noun.
_VERBS = _stems(
    "fall bounce roll slide drop hit strike collide stop rest accelerate decelerate slow speed rise "
    "move travel fly spin rotate tip topple tumble push pull swing land hang float sink flow pour "
    "splash break shatter crash reach continue start begin remain stay lose gain reverse rebound "
    "skid glide arc curve follow pass cross hover drift settle wobble slip knock kick throw toss "
    "launch release carry transfer become cause pivot sway oscillate bob deform compress stretch "
    "squash return touch meet approach descend ascend climb jump hop sit lie stand ricochet deflect "
    "recoil appear disappear vanish come go keep make take shift turn lift raise lower tilt slam "
    "change smash hold lean press squeeze spread spill fill empty drain leak melt freeze boil chase")
# Nouns that name quantities, parts of the scene or of the shot rather than new objects.
_GENERIC = _stems(
    "ground floor surface scene camera shot view video frame motion movement speed velocity height "
    "time times moment second seconds direction trajectory path arc impact contact collision bounce "
    "rest gravity momentum energy friction force air background foreground light lighting shadow "
    "way end start beginning top bottom side left right center centre middle edge distance point "
    "peak angle amount rate pace line sequence series chain reaction result loss rebound landing "
    "fall drop spin rotation shape size color colour position place axis weight mass pressure "
    "volume level layer acceleration deceleration slowdown stop halt pause rhythm pattern manner "
    "course degree inch meter metre centimeter half quarter bit lot instant one ones")
# Adjectives that qualify an entity without being one ("the small red ball").
_MODIFIERS = _stems(
    "red blue green yellow orange purple pink black white grey gray brown golden silver "
    "small large big tiny little huge tall short long wide narrow thin thick heavy light fast slow "
    "quick high low faster slower lighter heavier larger smaller higher lower bigger shorter longer "
    "closer farther further greater softer harder highest lowest fastest slowest "
    "wooden metal metallic glass plastic rubber steel stone paper cardboard ceramic bouncy soft "
    "hard rigid elastic smooth rough shiny wet dry solid hollow round flat square spherical "
    "first last next final same entire whole full initial steady constant gentle sudden brief "
    "single nearby opposite stationary still upward downward forward backward sideways vertical "
    "horizontal straight curved parabolic natural realistic slight gradual visible static")

_TOKEN = re.compile(r"[A-Za-z]+|[.,;:!?()\"]")


def _is_verbish(word: str, run_len: int) -> bool:
    w = word.lower()
    if _stem(w) in _MODIFIERS:
        return False  # "red" is a colour, not a past tense; "slow" here qualifies a noun
    if w in _IRREGULAR_VERBS or _stem(w) in _VERBS:
        return True
    # "-ly" adverbs always end a phrase; "-ing/-ed" forms end it once a word was seen
    # ("a rolling ball" keeps "ball", "the ball rolling" stops at "rolling").
    return w.endswith("ly") or (run_len > 0 and len(w) > 4 and (w.endswith("ing") or w.endswith("ed")))


def noun_phrase_words(text: str) -> list[str]:
    """Non-modifier words of the noun phrases opened by a determiner or a number.

    "the small red ball bounces" gives ["ball"]: the phrase runs from the determiner to the
    next function word, verb of motion or punctuation; colour/size/material adjectives drop.
    Every remaining word counts (not just the last), so "a dog chases ..." still yields "dog".
    """
    tokens = _TOKEN.findall(text)
    words: list[str] = []
    for i, tok in enumerate(tokens):
        if tok.lower() not in _DETERMINERS:
            continue
        run: list[str] = []
        for nxt in tokens[i + 1: i + 5]:
            low = nxt.lower()
            if not nxt.isalpha() or low in _STOP or low in _DETERMINERS or _is_verbish(low, len(run)):
                break
            run.append(low)
        words += [w for w in run if _stem(w) not in _MODIFIERS]
    return words


def new_entities(originals: Sequence[str], rewrite: str) -> set[str]:
    """Noun-phrase words of ``rewrite`` whose stem occurs in none of ``originals``.

    A heuristic without a tagger: it misses a bare plural ("cats") and may flag an unusual
    non-object noun; it errs towards rejecting, which only costs one round of refinement.
    """
    known = {_stem(t) for text in originals for t in _TOKEN.findall(text) if t.isalpha()}
    return {w for w in noun_phrase_words(rewrite)
            if _stem(w) not in known and _stem(w) not in _GENERIC and _stem(w) not in _VERBS}


def word_count(text: str) -> int:
    return len(text.split())


# ------------------------------------------------------------------ critic
def _history_text(prompt: str, history: Sequence[HistoryItem]) -> str:
    lines = [f'Current prompt: "{prompt}"']
    if history:
        lines.append("\nEarlier attempts, oldest first:")
        for n, item in enumerate(history, 1):
            s = item.score
            if s is None:
                verdict = "not judged"
            elif not s.judged:
                verdict = f"not judged ({s.error})"
            else:
                verdict = (f"semantic adherence {s.sa:.2f}, physical commonsense {s.pc:.2f}, "
                           f"{'Accept' if s.accept else 'Reject'}")
                if s.rationale:
                    verdict += f' - judge: "{s.rationale}"'
            lines.append(f'{n}. "{item.prompt}": {verdict}')
    return "\n".join(lines)


class VLMCritic:
    """``reward.base.Critic`` backed by an OpenAI-compatible VLM."""

    name = "vlm"

    def __init__(self, config: VLMConfig | None = None, *, client: VLMClient | None = None,
                 max_words: int = 120, max_candidates: int = 4) -> None:
        if max_words < 5:
            raise ValueError(f"max_words must be at least 5, got {max_words}")
        if max_candidates < 1:
            raise ValueError(f"max_candidates must be at least 1, got {max_candidates}")
        self.max_candidates = max_candidates
        if client is None:
            client = VLMClient(config or VLMConfig())
        self.client = client
        self.config = client.config
        self.max_words = max_words

    @property
    def faults(self) -> FaultCounter:
        return self.client.faults

    async def _messages(self, prompt: str, history: Sequence[HistoryItem]) -> list[dict]:
        content: list[dict] = [{"type": "text", "text": _history_text(prompt, history)}]
        last = next((h for h in reversed(history) if h.video is not None), None)
        if last is None:
            content.append({"type": "text", "text": "No video is available yet: do step 1, list the "
                                                    "unstated cues, then step 3."})
        else:
            parts, desc = await asyncio.to_thread(self.client.video_content, last.video)
            note = (last.score.rationale if last.score is not None and last.score.rationale
                    else "no note")
            content.append({"type": "text", "text": f'The latest video, made from "{last.prompt}". '
                                                    f"Judge's note: {note}"})
            if desc["mode"] == "frames":
                for i, part in zip(desc["frame_indices"], parts):
                    content += [{"type": "text", "text": f"Frame {i}:"}, part]
            else:
                content += parts
        content.append({"type": "text", "text": "Do the three steps. Answer with the JSON object only."})
        return [{"role": "system", "content": SYSTEM_PROMPT.format(max_words=self.max_words)},
                {"role": "user", "content": content}]

    def _check(self, answer: CriticAnswer) -> None:
        words = word_count(answer.refined_prompt)
        if words > self.max_words:
            raise AnswerProblem("out_of_range", f"refined_prompt has {words} words, the limit is "
                                                f"{self.max_words}")

    async def arefine(self, prompt: str, history: Sequence[HistoryItem]) -> Refinement:
        try:
            messages = await self._messages(prompt, history)
            asked = await ask_validated(self.client, messages, CriticAnswer, check=self._check,
                                        correction=CORRECTION.format(max_words=self.max_words))
        except AskFailure as fail:
            return Refinement(prompt=prompt, critique=f"refinement failed, prompt kept: {fail.kind}: "
                                                      f"{fail.message}", raw=_raw(fail.raws))
        a = asked.answer
        raw = _raw(asked.raws)
        critique = _critique(a)
        rewrite = " ".join(a.refined_prompt.split())
        if a.converged:
            return Refinement(prompt=prompt, critique=f"converged; {critique}", raw=raw)
        added = new_entities([prompt, *(h.prompt for h in history)], rewrite)
        if added:
            return Refinement(prompt=prompt, critique=(
                f"rewrite rejected, prompt kept: it adds {', '.join(sorted(added))} "
                f"(rejected rewrite: \"{rewrite}\"); {critique}"), raw=raw)
        return Refinement(prompt=rewrite, critique=critique, raw=raw)

    def refine(self, prompt: str, history: Sequence[HistoryItem]) -> Refinement:
        return self.client.run(lambda: self.arefine(prompt, history))

    async def aresolutions(self, prompt: str) -> list[Refinement]:
        messages = [{"role": "system", "content": RESOLVE_PROMPT.format(n=self.max_candidates,
                                                                         max_words=self.max_words)},
                    {"role": "user", "content": f'Prompt: "{prompt}"\nAnswer with the JSON object only.'}]

        def check(a: ResolveAnswer) -> None:
            if len(a.candidates) > self.max_candidates:
                raise AnswerProblem("out_of_range", f"{len(a.candidates)} candidates, the limit is "
                                                    f"{self.max_candidates}")

        try:
            asked = await ask_validated(self.client, messages, ResolveAnswer, check=check,
                                        correction=RESOLVE_CORRECTION.format(n=self.max_candidates,
                                                                             max_words=self.max_words))
        except AskFailure:
            return []  # nothing proposed: the refinement goes on with the prompt as written
        a, raw = asked.answer, _raw(asked.raws)
        open_ = "; ".join(d.strip() for d in a.open_details if d.strip()) or "unnamed"
        out: list[Refinement] = []
        plain = " ".join(prompt.split())
        for text in (" ".join(c.split()) for c in a.candidates):
            if (not text or text == plain or text in [r.prompt for r in out] or word_count(text) > self.max_words
                    or new_entities([prompt], text)):
                continue
            out.append(Refinement(prompt=text, critique=f"resolves what the prompt leaves open: {open_}", raw=raw))
        return out

    def resolutions(self, prompt: str) -> list[Refinement]:
        """Candidate rewrites settling what ``prompt`` leaves open (see the module docstring)."""
        return self.client.run(lambda: self.aresolutions(prompt))

    def refine_batch(self, jobs: Sequence[tuple[str, Sequence[HistoryItem]]]) -> list[Refinement]:
        """Refines many prompts concurrently (bounded by the client's concurrency)."""
        jobs = list(jobs)
        if not jobs:
            return []

        async def all_jobs() -> list[Refinement]:
            return list(await asyncio.gather(*(self.arefine(p, h) for p, h in jobs)))

        return self.client.run(all_jobs)


def _critique(a: CriticAnswer) -> str:
    parts = [f"expected: {a.expected_physics.strip()}"]
    if a.observed.strip():
        parts.append(f"observed: {a.observed.strip()}")
    if a.mismatches:
        parts.append("mismatches: " + "; ".join(m.strip() for m in a.mismatches if m.strip()))
    return " | ".join(parts)


def _raw(raws: list[str]) -> str:
    return json.dumps(raws, ensure_ascii=False) if raws else ""
