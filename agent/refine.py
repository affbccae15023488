"""Prompt refinement: iterate a critic until its rewrites converge, keep the best prompt.

After the multimodal self-refinement recipe: a critic looks at what the current prompt made
(video, judge scores and rationale), predicts what should physically happen, and rewrites
the prompt. The loop stops when

- the rewrite barely changes the prompt (``1 − cosine similarity < min_change`` of the
  packaged MiniLM sentence embeddings), or
- a probe clip generated from the rewrite scores no better than the best prompt so far
  (the judge's mean of sa and pc), or
- ``max_steps`` rewrites were made,

and returns the best prompt of all steps (the original when no rewrite helped).

Before the first rewrite, a critic that can (``critic.resolutions(prompt)``) settles what the
prompt leaves open — which way the object goes, where it starts — by *propose, probe, keep the
best*: the prompt and each candidate are probed alike with ``resolve_probes`` clips of the current
generator, judged against the user's prompt, and the best candidate is kept when its mean score
beats the prompt's own (:func:`resolve_open_details`). A short prompt lets the generator mix two motions; naming one
removes the mix, and the probes pick the choice the current generator renders best.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from reward.base import HistoryItem, Refinement, Score

Probe = Callable[[str, int], tuple[np.ndarray, Score]]  # (prompt, step) → (video, score)
Similarity = Callable[[str, str], float]
Admissible = Callable[[str], bool]  # may the loop use this candidate text? (e.g. its real video fits it)


@dataclass
class Step:
    step: int
    before: str
    after: str
    critique: str
    similarity: float
    accepted: bool
    score: float | None = None  # the probe's mean score, when probed
    stop: str | None = None  # why the loop ended at this step


@dataclass
class RefineResult:
    original: str
    best: str
    best_score: float | None
    steps: list[Step] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.best != self.original


def minilm_similarity() -> Similarity:
    """Cosine similarity of the packaged all-MiniLM-L6-v2 sentence embeddings."""
    from policy.text import embed_sentences

    def sim(a: str, b: str) -> float:
        if a == b:
            return 1.0
        e = embed_sentences([a, b])
        return float(np.dot(e[0], e[1]) / (np.linalg.norm(e[0]) * np.linalg.norm(e[1]) + 1e-12))

    return sim


def states_what_it_shows(score: Score) -> bool:
    """Whether a (real) video's score says it fits the text it was judged against, start included.

    The judge accepts a start near the named region; a training text must name the real one, so where
    the judge reports the measured start region of the first named object (the built-in world's
    analytic judge does), every start word the text states must equal it."""
    if not score.accept:
        return False
    d = score.details if isinstance(score.details, dict) else {}
    intent = d.get("intent") or {}
    colours, stated = intent.get("colours") or [], intent.get("start") or []
    seen = ((d.get("objects") or {}).get(colours[0]) or {}).get("start_region") if colours else None
    return seen is None or all(w is None or w == m for w, m in zip(stated, seen))


def resolve_open_details(prompt: str, candidates: Sequence[Refinement], probe: Probe, *, probes: int,
                         similarity: Similarity, admissible: Admissible | None = None,
                         first_step: int = 1) -> tuple[list[Step], HistoryItem | None, float | None]:
    """Probe ``prompt`` and every candidate resolution of it alike; keep the best candidate if it
    scores above the prompt as written.

    Every text gets ``probes`` clips (the prompt ``probe(prompt, r)``, candidate j
    ``probe(text, (j + 1) * probes + r)``: distinct noise, the same for every run); its score is
    the mean of the clips' judge means (unjudged clips do not count; a candidate with none is not
    eligible). The prompt competes on equal terms, so a choice is kept only when the current
    generator renders it better than the prompt's own mix. Candidates ``admissible`` rejects are
    recorded, not probed. Returns one :class:`Step` per candidate (at most one accepted), the
    accepted candidate's worst probe clip (for the critic's next rewrite to read) and the kept
    text's score (the prompt's when none was kept).
    """
    if probes < 1:
        raise ValueError(f"probes must be at least 1, got {probes}")

    def probed(text: str, j: int) -> tuple[float | None, HistoryItem | None]:
        clips = [probe(text, j * probes + r) for r in range(probes)]
        judged = [(v, s) for v, s in clips if _mean(s) is not None]
        if not judged:
            return None, None
        worst = min(judged, key=lambda c: _mean(c[1]))
        return float(np.mean([_mean(s) for _, s in judged])), HistoryItem(prompt=text, score=worst[1], video=worst[0])

    bar, _ = probed(prompt, 0)
    steps: list[Step] = []
    best: tuple[float, int, HistoryItem] | None = None
    for j, cand in enumerate(candidates):
        text = " ".join(cand.prompt.split())
        step = Step(first_step + j, prompt, text, cand.critique, similarity(prompt, text), accepted=False)
        steps.append(step)
        if admissible is not None and not admissible(text):
            step.stop = "not admissible: the round's real video does not fit it"
            continue
        step.score, item = probed(text, j + 1)
        if step.score is None:
            step.stop = "no probe clip was judged"
            continue
        versus = "unjudged" if bar is None else f"{bar:.3f}"
        step.critique = f"{cand.critique}; probe mean {step.score:.3f} vs {versus} as written ({probes} clips each)"
        if best is None or step.score > best[0]:
            best = (step.score, len(steps) - 1, item)
    if best is None or (bar is not None and best[0] <= bar):
        return steps, None, bar
    steps[best[1]].accepted = True
    return steps, best[2], best[0]


def refine_prompt(prompt: str, history: Sequence[HistoryItem], critic, *, max_steps: int, min_change: float,
                  similarity: Similarity, probe: Probe | None = None,
                  baseline: float | None = None, resolve_probe: Probe | None = None, resolve_probes: int = 4,
                  admissible: Admissible | None = None) -> RefineResult:
    """Refine ``prompt`` given what earlier prompts produced (``history``, oldest first).

    ``baseline`` is the score ``prompt`` is known to reach (e.g. its last group's mean);
    without it, the last history item's score, or a probe of ``prompt`` itself, sets the bar.
    With ``resolve_probe`` (its own noise stream) and a critic that has ``resolutions``, open
    details are settled first (:func:`resolve_open_details`); ``admissible`` filters the candidates
    and the rewrites (a rewrite it rejects ends the loop, unused).
    """
    history = list(history)
    current = prompt
    best_score = baseline if baseline is not None else (_mean(history[-1].score) if history else None)
    candidates = (critic.resolutions(prompt) if resolve_probe is not None and hasattr(critic, "resolutions")
                  else [])
    if probe is not None and not history and (max_steps > 0 or candidates):
        video, score = probe(prompt, 0)
        history.append(HistoryItem(prompt=prompt, score=score, video=video))
        best_score = _mean(score)
    result = RefineResult(original=prompt, best=prompt, best_score=best_score)
    if candidates:
        steps, kept, score = resolve_open_details(prompt, candidates, resolve_probe, probes=resolve_probes,
                                                  similarity=similarity, admissible=admissible)
        result.steps += steps
        if score is not None:
            result.best_score = score  # the better-measured bar for the rewrites that follow
        if kept is not None:
            current = result.best = kept.prompt
            history.append(kept)
    first = len(result.steps)
    for k in range(first + 1, first + max_steps + 1):
        r = critic.refine(current, history)
        after = " ".join(r.prompt.split())
        sim = similarity(current, after)
        step = Step(k, current, after, r.critique, sim, accepted=False)
        result.steps.append(step)
        if after == current or 1.0 - sim < min_change:
            step.stop = "converged: the rewrite barely changes the prompt"
            break
        if admissible is not None and not admissible(after):
            step.stop = "not admissible: the round's real video does not fit it"
            break
        if probe is None:
            step.accepted = True
            current = result.best = after
            continue
        video, score = probe(after, k)
        history.append(HistoryItem(prompt=after, score=score, video=video))
        step.score = _mean(score)
        if step.score is not None and (result.best_score is None or step.score > result.best_score):
            step.accepted = True
            current = result.best = after
            result.best_score = step.score
        else:
            step.stop = "converged: the rewrite did not improve the judge's score"
            break
    return result


def _mean(score: Score | None) -> float | None:
    return None if score is None else score.mean
