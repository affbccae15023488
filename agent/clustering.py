"""Action clustering by semantic matching (PhyGDPO Sec. 2.1, PhyAugPipe step (d)).

A list of action categories is matched to prompts with sentence-transformer similarity:
every prompt and every category description is embedded with the packaged
all-MiniLM-L6-v2 (``policy.text.embed_sentences``: L2-normalised, so cosine = dot product),
and a prompt belongs to the category whose best-matching description is most similar.
A category may have several descriptions ("a ball is dropped", "an object released from
rest falls and bounces"): one short and one detailed wording cover prompts of every detail
level better than a single averaged sentence.

The most similar ``n_c`` prompts of each category are its *representatives*: the paper
scores those to estimate how hard the category is for the model.

Category lists are text files, one description per line::

    # comment
    drop: a ball is dropped
    drop: an object released from rest falls and bounces lower each time
    collision                      (a bare name is its own description)

Two lists ship with phyloop: ``world`` (the built-in world's scenario families) and
``general`` (everyday physics actions for real video data).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

CATEGORY_DIR = Path(__file__).resolve().parent / "categories"
BUILTIN_LISTS = ("world", "general")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _./-]{0,63}")

Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Category:
    """One action category: its name and the sentences that describe it."""

    name: str
    descriptions: tuple[str, ...]


@dataclass(frozen=True)
class Assignment:
    """The category a prompt was matched to.

    ``similarity`` is the cosine to the category's best description, ``margin`` how much
    it beats the next best category (small margins are ambiguous prompts), ``rank`` the
    prompt's place within its category (0 = most similar) and ``representative`` whether
    that rank is inside the top ``n_c``.
    """

    category: str
    similarity: float
    runner_up: str | None
    margin: float
    rank: int = 0
    representative: bool = True


# ------------------------------------------------------------------ category lists
def parse_categories(text: str, origin: str = "category list") -> list[Category]:
    """Parses a category list (see the module docstring); raises ValueError naming the line."""
    descs: dict[str, list[str]] = defaultdict(list)
    order: list[str] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, desc = line.partition(":")
        name, desc = name.strip(), desc.strip()
        if not sep:
            desc = name.replace("_", " ").replace("-", " ")
        if not _NAME.fullmatch(name):
            raise ValueError(f"{origin} line {n}: category name {name!r} must be 1–64 letters, digits, "
                             "spaces or . _ / - (starting with a letter or digit)")
        if not desc:
            raise ValueError(f"{origin} line {n}: category {name!r} has an empty description")
        if name not in descs:
            order.append(name)
        if desc not in descs[name]:
            descs[name].append(desc)
    if not order:
        raise ValueError(f"{origin} holds no categories")
    return [Category(name, tuple(descs[name])) for name in order]


def load_categories(spec: str | Path) -> list[Category]:
    """A category list by name (``world``, ``general``) or from a file path."""
    if isinstance(spec, str) and spec in BUILTIN_LISTS:
        path = CATEGORY_DIR / f"{spec}.txt"
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"no category list {str(spec)!r}: use one of {', '.join(BUILTIN_LISTS)} or a file path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"category list {path} is not UTF-8 text") from None
    return parse_categories(text, origin=str(path))


# ------------------------------------------------------------------ matching
def _default_embed(texts: Sequence[str]) -> np.ndarray:
    from policy.text import embed_sentences

    return embed_sentences(texts)


def _embed_unique(texts: Sequence[str], embed: Embed) -> np.ndarray:
    """Embeds each distinct text once (short prompts repeat a lot in real data sets)."""
    uniq = list(dict.fromkeys(texts))
    emb = np.asarray(embed(uniq), dtype=np.float32)
    where = {t: i for i, t in enumerate(uniq)}
    return emb[[where[t] for t in texts]]


def similarity_matrix(prompts: Sequence[str], categories: Sequence[Category],
                      embed: Embed | None = None) -> np.ndarray:
    """``(n_prompts, n_categories)`` cosine of each prompt to each category's best description."""
    if not categories:
        raise ValueError("need at least one category")
    embed = embed or _default_embed
    descs = [d for c in categories for d in c.descriptions]
    owner = np.array([i for i, c in enumerate(categories) for _ in c.descriptions])
    if len(prompts) == 0:
        return np.zeros((0, len(categories)), dtype=np.float32)
    sims = _embed_unique(list(prompts), embed) @ _embed_unique(descs, embed).T
    return np.stack([sims[:, owner == k].max(axis=1) for k in range(len(categories))], axis=1)


def assign_categories(prompts: Sequence[str], categories: Sequence[Category], top_n: int | None = None,
                      embed: Embed | None = None) -> list[Assignment]:
    """Matches every prompt to its most similar category (one :class:`Assignment` per prompt).

    ``top_n`` marks the ``top_n`` most similar prompts of each category as representatives
    (``None``: every prompt is one). ``embed`` replaces the MiniLM encoder (it must return
    L2-normalised rows).
    """
    if isinstance(prompts, str):
        raise TypeError("assign_categories() takes a sequence of prompts, not a single string")
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    sims = similarity_matrix(prompts, categories, embed)
    names = [c.name for c in categories]
    out: list[Assignment] = []
    for row in sims:
        order = np.argsort(-row, kind="stable")
        best = int(order[0])
        second = int(order[1]) if len(order) > 1 else None
        out.append(Assignment(names[best], float(row[best]), None if second is None else names[second],
                              float(row[best] - row[second]) if second is not None else float("inf")))
    ranks = _ranks(out)
    return [Assignment(a.category, a.similarity, a.runner_up, a.margin, ranks[i],
                       top_n is None or ranks[i] < top_n) for i, a in enumerate(out)]


def _ranks(assignments: Sequence[Assignment]) -> list[int]:
    """Rank of each prompt within its category by similarity (ties: earlier prompt first)."""
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(assignments):
        by_cat[a.category].append(i)
    ranks = [0] * len(assignments)
    for idx in by_cat.values():
        for r, i in enumerate(sorted(idx, key=lambda i: (-assignments[i].similarity, i))):
            ranks[i] = r
    return ranks


def representatives(assignments: Sequence[Assignment], n_c: int,
                    keys: Sequence[str] | None = None) -> dict[str, list]:
    """The top-``n_c`` prompts of each category by similarity, most similar first.

    Returns ``{category: [index, …]}``, or the matching ``keys`` (e.g. prompt ids) when given.
    """
    if n_c < 1:
        raise ValueError(f"n_c must be at least 1, got {n_c}")
    if keys is not None and len(keys) != len(assignments):
        raise ValueError(f"{len(keys)} keys for {len(assignments)} assignments")
    ranks = _ranks(assignments)
    out: dict[str, list] = defaultdict(list)
    for i in sorted(range(len(assignments)), key=lambda i: (assignments[i].category, ranks[i])):
        if ranks[i] < n_c:
            out[assignments[i].category].append(i if keys is None else keys[i])
    return dict(out)


def histogram(assignments: Sequence[Assignment], categories: Sequence[Category] | None = None) -> dict[str, int]:
    """H_f: prompts per category (every listed category appears, with 0 when empty)."""
    counts: dict[str, int] = {c.name: 0 for c in categories or ()}
    for a in assignments:
        counts[a.category] = counts.get(a.category, 0) + 1
    return counts


def accuracy(assignments: Sequence[Assignment], labels: Sequence[str]) -> float:
    """Share of prompts assigned to their labelled category."""
    if len(labels) != len(assignments):
        raise ValueError(f"{len(labels)} labels for {len(assignments)} assignments")
    if not labels:
        raise ValueError("no prompts to score")
    return sum(a.category == y for a, y in zip(assignments, labels)) / len(labels)


def confusion(assignments: Sequence[Assignment], labels: Sequence[str]) -> Mapping[tuple[str, str], int]:
    """``{(label, assigned): count}`` for the mistakes (empty when all are right)."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    for a, y in zip(assignments, labels):
        if a.category != y:
            out[(y, a.category)] += 1
    return dict(out)
