"""Who wins a group: the winner policy of PhyGDPO's preference groups.

PhyGDPO's winner is a real video, which follows physics by construction (Sec. 2.2). When a
prompt has no real video (refined prompts, Wan prompts without footage), the best *accepted*
generation of the group can stand in — but only one the judge accepted: a group without an
acceptable winner is skipped and counted with its reason, never trained on a made-up winner.

Policies
    ``real``            the real video or nothing;
    ``best-accepted``   the best accepted generation (real videos ignored);
    ``real-else-best``  the real video when there is one, else the best accepted generation.

Losers
    With a real winner every judged generation is a loser (the real video always wins, as in
    the paper). With a generated winner the losers are the judged generations scoring strictly
    below it: a tie carries no preference, and training on it would only add noise.
    Generations the judge could not score (``sa``/``pc`` None) are never used.

Everything here is a pure function of plain floats and bools, except :func:`build_group_sample`,
which packs a plan's tensors into the trainer's :class:`~policy.base.GroupSample`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal, NamedTuple, Sequence

import torch

from policy.base import GroupSample

WinnerPolicy = Literal["real", "best-accepted", "real-else-best"]
WINNER_POLICIES: tuple[str, ...] = ("real", "best-accepted", "real-else-best")


class Candidate(NamedTuple):
    """A generated video's judgement: scores in [0, 1] (None if unjudged) and the verdict."""

    sa: float | None
    pc: float | None
    accept: bool | None

    @property
    def judged(self) -> bool:
        return self.sa is not None and self.pc is not None

    @property
    def score(self) -> float:
        """Mean of sa and pc, rounded so that equal judge scores tie exactly ((0.9+0.8)/2 and
        (1.0+0.7)/2 differ in the last float bit)."""
        return round((self.sa + self.pc) / 2.0, 9)


@dataclass(frozen=True)
class GroupPlan:
    """The outcome for one group: who wins, who loses, or why it is skipped."""

    winner: Literal["real", "generated"] | None
    winner_index: int | None = None  # index into the candidates when the winner is generated
    losers: tuple[int, ...] = ()
    skip_reason: str | None = None

    @property
    def trainable(self) -> bool:
        return self.skip_reason is None


def _skip(reason: str) -> GroupPlan:
    return GroupPlan(winner=None, skip_reason=reason)


def plan_group(candidates: Sequence[Candidate | tuple], *, has_real: bool,
               policy: WinnerPolicy = "real-else-best") -> GroupPlan:
    """Pick the winner and losers of one group (see the module docstring for the rules)."""
    if policy not in WINNER_POLICIES:
        raise ValueError(f"unknown winner policy {policy!r}; expected one of {WINNER_POLICIES}")
    cands = [Candidate(*c) for c in candidates]
    judged = [i for i, c in enumerate(cands) if c.judged]

    if has_real and policy in ("real", "real-else-best"):
        if not judged:
            return _skip("no judged generations to use as losers")
        return GroupPlan(winner="real", losers=tuple(judged))
    if policy == "real":
        return _skip("no real video")

    accepted = [i for i in judged if cands[i].accept is True]
    if not accepted:
        return _skip("no accepted generation to use as winner")
    # best score; ties broken by physics (pc), then by the earlier index
    best = min(accepted, key=lambda i: (-cands[i].score, -cands[i].pc, i))
    losers = tuple(i for i in judged if i != best and cands[i].score < cands[best].score)
    if not losers:
        return _skip("no generation scored below the winner")
    return GroupPlan(winner="generated", winner_index=best, losers=losers)


def plan_groups(groups: Sequence[tuple[bool, Sequence[Candidate | tuple]]], *,
                policy: WinnerPolicy = "real-else-best") -> tuple[list[GroupPlan], Counter]:
    """Plan many groups given ``(has_real, candidates)`` each → (plans, counts of skip reasons)."""
    plans = [plan_group(c, has_real=r, policy=policy) for r, c in groups]
    skipped = Counter(p.skip_reason for p in plans if not p.trainable)
    return plans, skipped


def build_group_sample(plan: GroupPlan, *, text: torch.Tensor, generated: torch.Tensor,
                       candidates: Sequence[Candidate | tuple], real: torch.Tensor | None = None,
                       prompt: str = "") -> GroupSample:
    """Pack a trainable plan into a :class:`GroupSample`.

    ``generated`` holds the latents of all candidates ``(n, C, T', H', W')`` in candidate order;
    ``real`` the real video's latent when the winner is real.
    """
    if not plan.trainable:
        raise ValueError(f"group is not trainable: {plan.skip_reason}")
    cands = [Candidate(*c) for c in candidates]
    if len(cands) != generated.shape[0]:
        raise ValueError(f"{len(cands)} candidates but {generated.shape[0]} generated latents")
    if plan.winner == "real":
        if real is None:
            raise ValueError("the plan's winner is the real video but no real latent was given")
        winner = real
    else:
        winner = generated[plan.winner_index]
    idx = list(plan.losers)
    return GroupSample(
        text=text,
        winner=winner,
        losers=generated[idx],
        loser_sa=torch.tensor([cands[i].sa for i in idx], dtype=torch.float32),
        loser_pc=torch.tensor([cands[i].pc for i in idx], dtype=torch.float32),
        prompt=prompt,
        meta={"winner": plan.winner, "winner_index": plan.winner_index, "losers": idx,
              # a generated winner's own judge score (DiffusionNFT weighs it among its group's clips)
              "winner_score": None if plan.winner == "real" else cands[plan.winner_index].score},
    )
