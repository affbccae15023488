"""What a prompt asks of the built-in world, read from its text alone.

A generated video has no scene object behind it: the judge and the critic only have the
prompt. This module turns any prompt of the world (every detail level of the simulator, the
critic's rewrites, a user's own words) into an :class:`Intent`: the scenario family, the
named colours (in order: in a collision the first is the striker), the shape, the start
position words and the motion the prompt claims ("bounces", "comes to rest", ...).

Family words overlap ("it hits the floor" in a drop, "then falling faster" in a throw), so
the family is chosen by rules, not by counting words: a collision needs two named objects;
otherwise throw words beat slide words beat drop words, because drop words ("falls",
"bounces") describe parts of every airborne motion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import physics as P

_HORIZ = {"left": "left", "centre": "centre", "center": "centre", "middle": "centre", "right": "right"}
_VERT = {"top": "top", "upper": "top", "middle": "middle", "bottom": "bottom", "lower": "bottom"}

# "from the top left", "at the middle centre", "from the left side", "from the left", "at the top"
_POSITION = re.compile(
    r"\b(?:from|at|in)\s+the\s+(?:(top|upper|middle|bottom|lower)\s*)?(left|centre|center|right)?\b")

# motion claims: name -> phrases that state it (word-boundary regexes)
_CLAIMS: dict[str, tuple[str, ...]] = {
    "bounce": (r"bounc\w*", r"rebound\w*"),
    "lower_bounce": (r"lower", r"losing energy", r"loses energy"),
    "from_rest": (r"from rest", r"released"),
    "straight_down": (r"straight down", r"vertically"),
    "rightwards": (r"to the right", r"rightwards?"),
    "leftwards": (r"to the left", r"leftwards?"),
    "upwards": (r"(?:thrown|tossed|launched|lobbed) up", r"up and to", r"upwards?"),
    "arc": (r"arc", r"parabol\w*"),
    "constant_horizontal": (r"constant horizontal", r"steady horizontal", r"same horizontal"),
    "stops": (r"stops?", r"comes? to rest", r"at rest at the end", r"until it stops", r"halts?"),
    "decelerates": (r"decelerat\w*", r"slows?", r"slowing", r"friction"),
    "target_rest": (r"resting", r"at rest in", r"standing still"),
    "striker_stops": (r"nearly stops", r"almost stops", r"stops dead"),
    "target_moves": (r"moves off", r"moves away", r"rolls away", r"sets? (?:it|the \w+ ball) moving"),
    "momentum": (r"momentum",),
}
_CLAIM_RES = {k: re.compile("|".join(rf"\b{p}" for p in v)) for k, v in _CLAIMS.items()}
_FAMILY_RES = {f: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in ws) + r")\b")
               for f, ws in P.FAMILY_WORDS.items()}
_COLOUR_RE = re.compile(r"\b(" + "|".join(P.PALETTE) + r")\b")
_SHAPE_WORDS = {"ball": ("ball", "balls", "sphere", "disc", "disk"),
                "block": ("block", "blocks", "box", "boxes", "cube", "square", "brick")}
_APEX = re.compile(r"\b(?:slow(?:s|ing)?(?:\s+(?:down|up))?|peaks?|peaking|turns?(?:\s+(?:around|back))?)\s+$")
_TWO = re.compile(r"\b(two|2|both|pair of)\b")


@dataclass(frozen=True)
class Intent:
    """What a prompt asks for. ``family`` is ``None`` when no family word was recognised."""

    prompt: str
    family: str | None
    colours: tuple[str, ...]  # named palette colours, first mention first
    shape: str | None  # "ball" | "block" | None (not named)
    start: tuple[str | None, str | None] = (None, None)  # (horizontal, vertical) words of the first object
    claims: frozenset[str] = field(default_factory=frozenset)
    n_objects: int = 1  # how many objects the prompt implies

    def claims_(self, name: str) -> bool:
        return name in self.claims

    @property
    def striker(self) -> str | None:
        return self.colours[0] if self.colours else None

    @property
    def target(self) -> str | None:
        return self.colours[1] if len(self.colours) > 1 else None


def parse_prompt(prompt: str) -> Intent:
    """Reads family, colours, shape, start position and motion claims from ``prompt``."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    text = " ".join(prompt.lower().split())
    colours: list[str] = []
    for m in _COLOUR_RE.finditer(text):
        if m.group(1) not in colours:
            colours.append(m.group(1))
    hits = {f: bool(r.search(text)) for f, r in _FAMILY_RES.items()}
    two = len(colours) >= 2 or bool(_TWO.search(text))
    if hits["collision"] and two:
        family = "collision"
    elif hits["projectile"]:
        family = "projectile"
    elif hits["slide"]:
        family = "slide"
    elif hits["drop"]:
        family = "drop"
    else:
        family = None
    shape = None
    first_shape_at = len(text) + 1
    for name, words in _SHAPE_WORDS.items():
        m = re.search(r"\b(?:" + "|".join(words) + r")\b", text)
        if m and m.start() < first_shape_at:
            shape, first_shape_at = name, m.start()
    claims = frozenset(k for k, r in _CLAIM_RES.items() if r.search(text))
    n_objects = max(len(colours), 2 if family == "collision" else 1)
    return Intent(prompt=prompt, family=family, colours=tuple(colours), shape=shape,
                  start=_start_words(text), claims=claims, n_objects=n_objects)


def claimed_direction(intent: Intent) -> str | None:
    """``"right"`` or ``"left"`` when the prompt says which way the object moves, else ``None``
    (no direction, or both named)."""
    right, left = intent.claims_("rightwards"), intent.claims_("leftwards")
    return "right" if right and not left else ("left" if left and not right else None)


def _start_words(text: str) -> tuple[str | None, str | None]:
    """Position words of where the (first) object starts: the first "from/at/in the ..." phrase.

    Direction phrases ("to the right") and the apex of a throw ("slowing at the top") are not
    positions; a collision's "resting in the centre" describes the second ball and comes after
    the striker's own words, so only the first position phrase before any "resting" is used.
    """
    cut = text.find("resting")
    scope = text if cut < 0 else text[:cut]
    for m in _POSITION.finditer(scope):
        vert, horiz = m.group(1), m.group(2)
        if _APEX.search(scope[:m.start()]):  # "slowing at the top" is the top of the arc, not a start
            continue
        if vert or horiz:
            if vert == "middle" and horiz is None:  # "from the middle" alone is horizontal-agnostic
                return None, "middle"
            return (_HORIZ[horiz] if horiz else None), (_VERT[vert] if vert else None)
    return None, None


def region_interval(word: str, axis: str) -> tuple[float, float]:
    """Pixel interval of a region word on an axis ("x": left/centre/right, "y": top/middle/bottom)."""
    third = P.SIZE / 3
    order = ("left", "centre", "right") if axis == "x" else ("top", "middle", "bottom")
    i = order.index(word)
    return i * third, (i + 1) * third
