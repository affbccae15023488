"""The Judge and Critic interfaces: everything that looks at a video.

A judge returns, per (prompt, video), semantic adherence ``sa`` and physical commonsense
``pc`` in [0, 1] (VideoPhy-2 style 1–5 scores are normalised by (s − 1)/4), an
Accept/Reject verdict, a short rationale and the raw answer it was derived from. A judge
that could not produce a valid answer returns ``judged=False`` with the reason in
``error`` — it never guesses.

A critic rewrites a prompt given the history of earlier prompts and what the judge said
about their videos.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class Score:
    sa: float | None
    pc: float | None
    accept: bool | None
    rationale: str = ""
    raw: str = ""
    judged: bool = True
    error: str | None = None  # why it is unjudged (timeout, malformed answer, …)
    details: dict = field(default_factory=dict)  # judge-specific extras (per-law checks, …)

    @property
    def mean(self) -> float | None:
        if self.sa is None or self.pc is None:
            return None
        return (self.sa + self.pc) / 2.0

    def joint(self, threshold: float = 0.75) -> bool:
        """VideoPhy-2 joint success: both scores ≥ threshold (4 of 5 → 0.75)."""
        return bool(self.judged and self.sa is not None and self.pc is not None
                    and self.sa >= threshold and self.pc >= threshold)

    @classmethod
    def unjudged(cls, error: str, raw: str = "") -> "Score":
        return cls(sa=None, pc=None, accept=None, rationale="", raw=raw, judged=False, error=error)


@runtime_checkable
class Judge(Protocol):
    name: str

    def score(self, prompt: str, video: np.ndarray) -> Score: ...

    def score_batch(self, items: Sequence[tuple[str, np.ndarray]]) -> list[Score]:
        """Scores many (prompt, video) pairs; concurrent where the backend allows."""


@dataclass
class HistoryItem:
    """One earlier refinement step of a prompt: the prompt, a video made from it and its score."""

    prompt: str
    score: Score | None = None
    video: np.ndarray | None = None


@dataclass
class Refinement:
    prompt: str
    critique: str
    raw: str = ""


@runtime_checkable
class Critic(Protocol):
    name: str

    def refine(self, prompt: str, history: Sequence[HistoryItem]) -> Refinement: ...
