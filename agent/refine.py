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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from reward.base import HistoryItem, Score

Probe = Callable[[str, int], tuple[np.ndarray, Score]]  # (prompt, step) → (video, score)
Similarity = Callable[[str, str], float]


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


def refine_prompt(prompt: str, history: Sequence[HistoryItem], critic, *, max_steps: int, min_change: float,
                  similarity: Similarity, probe: Probe | None = None,
                  baseline: float | None = None) -> RefineResult:
    """Refine ``prompt`` given what earlier prompts produced (``history``, oldest first).

    ``baseline`` is the score ``prompt`` is known to reach (e.g. its last group's mean);
    without it, the last history item's score, or a probe of ``prompt`` itself, sets the bar.
    """
    history = list(history)
    current = prompt
    best_score = baseline if baseline is not None else (_mean(history[-1].score) if history else None)
    if probe is not None and not history and max_steps > 0:
        video, score = probe(prompt, 0)
        history.append(HistoryItem(prompt=prompt, score=score, video=video))
        best_score = _mean(score)
    result = RefineResult(original=prompt, best=prompt, best_score=best_score)
    for k in range(1, max_steps + 1):
        r = critic.refine(current, history)
        after = " ".join(r.prompt.split())
        sim = similarity(current, after)
        step = Step(k, current, after, r.critique, sim, accepted=False)
        result.steps.append(step)
        if after == current or 1.0 - sim < min_change:
            step.stop = "converged: the rewrite barely changes the prompt"
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
