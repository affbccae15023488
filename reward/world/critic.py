"""The built-in world's rule-based critic: add to a prompt the physics its last video missed.

``RuleCritic().refine(prompt, history)`` recognises the scenario and the named objects of
the prompt (:mod:`.intent`), reads what the judge found wrong with the latest video made
from it (the failed checks in ``HistoryItem.score.details``, or key words of the rationale
when another judge wrote it), and appends the matching *cues*: short clauses in the words of
the simulator's most detailed prompts ("gravity accelerates it straight down", "each bounce
is lower than the last, losing energy", "friction decelerates it steadily and it never
speeds up", ...). With no judged video yet it adds the scenario's core cues the prompt
leaves unstated — the physics expander.

Rules that keep refinement a safe lever:
- never a new object or colour: cues only restate the colours the prompt already names;
  a start position or a direction is only ever the prompt's own words;
- a cue already stated (found by its marker words) is not repeated;
- the result fits the text encoder: at most ``max_tokens`` word/punctuation tokens
  (all-MiniLM-L6-v2 reads 64 with [CLS]/[SEP]); cues for the worst failures go first;
- converges: when the latest video passed every check, or every cue it needs is already
  there, the prompt is returned unchanged;
- deterministic: the same prompt and history give the same rewrite.

``RuleCritic().resolutions(prompt)`` is the other half: where a prompt leaves open what its
video must decide anyway (which way a throw, a push or a roll goes; where a drop starts), it
proposes every choice the world's scenes allow, one candidate prompt each, for the refinement
loop to probe on the current generator (:func:`agent.refine.resolve_open_details`). A
candidate is the world's own motion-level sentence when the prompt is the world's short prompt
of that scene, else the prompt, every word kept, with the choice appended; either way it keeps
the prompt's family, colours, shape, claims, direction and start words (:func:`entails`), so
a resolution may narrow what a prompt allows but never contradicts it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from reward.base import HistoryItem, Refinement, Score

from . import physics as P
from .intent import _POSITION, Intent, claimed_direction, parse_prompt
from .simulator import Body, Scene, prompts_for


@dataclass(frozen=True)
class Cue:
    id: str
    text: str  # template: {c} first colour, {c2} second colour, {shape}, {where}, and the prompt's own
    # direction: {side} ("right"/"left", else "side"), {to_way} (" to the right"/" to the left", else "")
    markers: str  # regex: the cue is already stated when this matches the prompt
    triggers: tuple[str, ...]  # judge check names whose failure calls for this cue


_OBJECTS = Cue("objects", "there is exactly one {c} {shape}", r"exactly one|only one",
               ("present", "extra_object", "count", "objects", "shape"))
_SINGLE = Cue("single", "the {c} {shape} stays whole and in view the whole time", r"whole time|stays whole",
              ("vanish", "duplicate", "teleport"))
_CLEAN = Cue("clean", "shown sharply on a plain dark background", r"plain dark background", ("noise",))

CUES: dict[str | None, tuple[Cue, ...]] = {
    "drop": (
        _OBJECTS,
        Cue("start", "it starts at rest at the {where} of the frame", r"starts at rest|released from rest",
            ("start_region", "from_rest")),
        Cue("gravity", "gravity accelerates it straight down", r"gravity|accelerat",
            ("gravity", "smooth_flight", "falls", "straight_down", "frozen", "kick", "moves", "horizontal_flight")),
        Cue("bounce", "it hits the floor and bounces back up", r"bounc", ("bounces", "lift_off")),
        Cue("lower", "each bounce is lower than the last, losing energy", r"lower|losing energy",
            ("bounce_energy", "mid_air_turn")),
        _SINGLE, _CLEAN,
    ),
    "projectile": (
        _OBJECTS,
        Cue("start", "it starts at the {where}", r"starts at the", ("start_region",)),
        Cue("throw", "it is thrown up and to the {side}", r"up and to the",
            ("direction", "thrown_up", "airborne", "moves")),
        Cue("horizontal", "it keeps a constant horizontal speed", r"constant horizontal",
            ("horizontal_flight", "kick")),
        Cue("gravity", "gravity bends its path into a parabola, rising, slowing at the top, then falling faster",
            r"gravity|parabola", ("gravity", "smooth_flight", "frozen", "kick", "lift_off")),
        Cue("lower", "it bounces back lower than it fell, losing energy", r"lower|losing energy",
            ("bounce_energy", "mid_air_turn")),
        _SINGLE, _CLEAN,
    ),
    "slide": (
        _OBJECTS,
        Cue("start", "it starts at the {where} on the floor", r"starts at the", ("start_region",)),
        Cue("push", "it is pushed{to_way} along the floor", r"pushed|to the (?:right|left)", ("direction", "moves")),
        Cue("floor", "it stays on the floor", r"stays on the floor", ("on_floor", "lift_off", "gravity")),
        Cue("friction", "friction decelerates it steadily and it never speeds up", r"friction|decelerat",
            ("friction_speedup", "friction_rate", "friction_jerk", "frozen")),
        Cue("rest", "it comes to rest", r"comes to rest|until it stops|stops", ("comes_to_rest",)),
        _SINGLE, _CLEAN,
    ),
    "collision": (
        Cue("objects", "there are exactly two balls, one {c} and one {c2}", r"exactly two",
            ("present", "extra_object", "count", "objects", "shape")),
        Cue("approach", "the {c} ball rolls{to_way} towards the resting {c2} ball",
            r"rolls to the (?:right|left)|towards the", ("striker_moves", "direction", "start_region")),
        Cue("impact", "it strikes the {c2} ball", r"strikes|hits", ("impact", "causality", "penetration")),
        Cue("momentum", "on impact the {c} ball nearly stops and the {c2} ball moves off{to_way} "
            "with its speed, conserving momentum", r"momentum|nearly stops",
            ("momentum", "collision_energy", "target_moves", "striker_stops")),
        Cue("steady", "both balls roll at a steady speed between impacts", r"steady speed",
            ("rolling_speed", "frozen")),
        Cue("single", "both balls stay whole and in view the whole time", r"whole time|stays whole",
            ("vanish", "duplicate", "teleport")),
        _CLEAN,
    ),
    None: (
        # worded without any family's words, so the rewrite stays an unrecognised (generic) prompt
        Cue("gravity", "anything in the air is pulled down by gravity, speeding up", r"gravity",
            ("gravity", "smooth_flight", "lift_off", "mid_air_turn", "kick")),
        Cue("single", "every object stays whole and in view the whole time", r"whole time|stays whole",
            ("vanish", "duplicate", "teleport")),
        _CLEAN,
    ),
}

# cues added before any video was judged: the core physics of each scenario
EXPAND: dict[str | None, tuple[str, ...]] = {
    "drop": ("gravity", "bounce", "lower"),
    "projectile": ("throw", "horizontal", "gravity"),
    "slide": ("push", "friction", "rest"),
    "collision": ("impact", "momentum"),
    None: (),
}

# another judge's free-text rationale (e.g. the VLM's) → the check it describes
_RATIONALE_WORDS: tuple[tuple[str, str], ...] = (
    (r"vanish|disappear", "vanish"), (r"duplicat|second copy|splits", "duplicate"),
    (r"teleport|jumps", "teleport"), (r"gravity|float|does not fall|hover", "gravity"),
    (r"bounce[sd]? (?:higher|too high)|energy gain|gains energy", "bounce_energy"),
    (r"speeds up|accelerat\w* while sliding|friction", "friction_speedup"),
    (r"momentum|does not move off|passes through", "momentum"), (r"frozen|freez|stops dead", "frozen"),
    (r"missing|not present|wrong colou?r", "present"), (r"noise|noisy", "noise"),
)

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Word and punctuation tokens (what a BERT-style tokenizer splits before word pieces)."""
    return len(_TOKEN.findall(text))


def failed_checks(score: Score) -> list[str]:
    """Names of the checks the judge failed, worst first (from ``details`` or the rationale)."""
    failed = score.details.get("failed") if isinstance(score.details, dict) else None
    if isinstance(failed, list):
        return [str(f) for f in failed]
    if score.accept:
        return []
    text = (score.rationale or "").lower()
    return [name for pattern, name in _RATIONALE_WORDS if re.search(pattern, text)]


def _latest_judged(history: Sequence[HistoryItem]) -> HistoryItem | None:
    for item in reversed(history):
        if item.score is not None and item.score.judged:
            return item
    return None


class RuleCritic:
    """``reward.base.Critic`` of the built-in world (see the module docstring)."""

    name = "rules"

    def __init__(self, max_tokens: int = 60):
        if max_tokens < 8:
            raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
        self.max_tokens = max_tokens

    def refine(self, prompt: str, history: Sequence[HistoryItem]) -> Refinement:
        intent = parse_prompt(prompt)
        cues = CUES.get(intent.family, CUES[None])
        last = _latest_judged(history)
        if last is None:
            wanted = [c for c in cues if c.id in EXPAND.get(intent.family, ())]
            why = "no judged video yet: stating the scenario's core physics"
        else:
            failed = failed_checks(last.score)
            if not failed:
                return Refinement(prompt, "converged: the last video passed every check; prompt kept")
            wanted = []
            for name in failed:  # worst first
                for c in cues:
                    if name in c.triggers and c not in wanted:
                        wanted.append(c)
            why = "the judge found: " + (last.score.rationale or ", ".join(failed))
        added, skipped = self._compose(prompt, intent, wanted)
        scenario = intent.family or "unrecognised scenario"
        if not added:
            note = "nothing to add: every cue it needs is already stated" if wanted else "no cue applies"
            return Refinement(prompt, f"{scenario}: {note}; prompt kept. {why}".strip())
        new = self._join(prompt, [t for _, t in added])
        critique = f"{scenario}: added {', '.join(i for i, _ in added)}"
        if skipped:
            critique += f" (left out for length: {', '.join(skipped)})"
        return Refinement(new, f"{critique}. {why}".strip())

    def resolutions(self, prompt: str) -> list[Refinement]:
        """Candidate prompts, one per way the world's scenes settle what ``prompt`` leaves open
        (direction, start region); empty when nothing is open (see the module docstring)."""
        return _resolutions(self, prompt)

    # -------------------------------------------------------------- helpers
    def _compose(self, prompt: str, intent: Intent, wanted: list[Cue]) -> tuple[list[tuple[str, str]], list[str]]:
        text = prompt.lower()
        added: list[tuple[str, str]] = []
        skipped: list[str] = []
        for cue in wanted:
            if re.search(cue.markers, text):
                continue
            phrase = self._fill(cue, intent)
            if phrase is None:
                continue
            if count_tokens(self._join(prompt, [t for _, t in added] + [phrase])) > self.max_tokens:
                skipped.append(cue.id)
                continue
            added.append((cue.id, phrase))
        return added, skipped

    @staticmethod
    def _fill(cue: Cue, intent: Intent) -> str | None:
        colours = intent.colours
        if "{c2}" in cue.text and len(colours) < 2:
            return None
        if "{where}" in cue.text:
            horiz, vert = intent.start
            if horiz is None and vert is None:
                return None  # never invent a position: the real video starts where it starts
            where = " ".join(w for w in (vert, horiz) if w)
        else:
            where = ""
        c = colours[0] if colours else ""
        # a direction is only ever the prompt's own: the real video the loop trains the rewrite
        # against goes whichever way it goes (projectile, slide and collision scenes are mirrored)
        way = claimed_direction(intent)
        text = cue.text.format(c=c, c2=colours[1] if len(colours) > 1 else "", shape=intent.shape or "object",
                               where=where, side=way or "side", to_way=f" to the {way}" if way else "")
        return " ".join(text.split())

    @staticmethod
    def _join(prompt: str, phrases: list[str]) -> str:
        base = prompt.strip().rstrip(".;, ")
        return "; ".join([base] + phrases) if phrases else base


# ------------------------------------------------------------------ open details
@dataclass(frozen=True)
class Choice:
    """One way to settle what a prompt leaves open: the sideways direction and the start region."""

    direction: str | None  # "right" | "left" | None (a drop goes straight down)
    horiz: str
    vert: str

    def label(self, family: str) -> str:
        where = f"{self.vert} {self.horiz}" if family == "drop" else f"the {self.horiz}"
        return f"starts at the {where}" if self.direction is None else f"goes {self.direction} from {where}"


def world_choices(family: str) -> list[Choice]:
    """Every (direction, start region) the world's scenes of ``family`` take, in a fixed order:
    the family's sampling ranges (and their mirror image for mirrored families) on a grid."""
    r = P.RANGES[family]
    seen: list[Choice] = []
    for mirrored in ((False, True) if family in P.MIRRORED else (False,)):
        for x in np.linspace(*r.x0, 9):
            for y in np.linspace(*r.y0, 5):
                vx = float(np.mean(r.vx))
                x0, vx = (P.SIZE - x, -vx) if mirrored else (x, vx)
                horiz, vert = P.region_words(float(x0), float(y))
                c = Choice(None if vx == 0 else ("right" if vx > 0 else "left"), horiz, vert)
                if c not in seen:
                    seen.append(c)
    return seen


def entails(candidate: Intent, original: Intent) -> bool:
    """Whether ``candidate`` asks for everything ``original`` does and contradicts none of it:
    same family, colours and shape (a shape only where the original names none), every claim,
    the original's direction and each start word it gives."""
    if candidate.family != original.family or candidate.colours != original.colours:
        return False
    if original.shape is not None and candidate.shape != original.shape:
        return False
    if not original.claims <= candidate.claims:
        return False
    if claimed_direction(original) is not None and claimed_direction(candidate) != claimed_direction(original):
        return False
    return all(o is None or o == c for o, c in zip(original.start, candidate.start))


def _settles(intent: Intent, choice: Choice) -> bool:
    """Whether ``choice`` agrees with everything the prompt already says about direction and start."""
    way = claimed_direction(intent)
    if way is not None and choice.direction != way:
        return False
    horiz, vert = intent.start
    return (horiz is None or horiz == choice.horiz) and (vert is None or vert == choice.vert)


def _world_prompts(intent: Intent, choice: Choice) -> list[str] | None:
    """The simulator's prompts (every level) of a scene that makes ``choice`` (None without the colours)."""
    need = 2 if intent.family == "collision" else 1
    if len(intent.colours) < need:
        return None
    third = P.SIZE / 3
    x = {"left": 0.5, "centre": 1.5, "right": 2.5}[choice.horiz] * third
    y = {"top": 0.5, "middle": 1.5, "bottom": 2.5}[choice.vert] * third
    vx = {None: 0.0, "right": 1.0, "left": -1.0}[choice.direction]
    shape = "block" if intent.family == "slide" else "ball"
    bodies = [Body(intent.colours[0], shape, x, y, vx, 0.0)]
    if intent.family == "collision":
        bodies.append(Body(intent.colours[1], "ball", P.SIZE / 2, P.REST_Y, 0.0, 0.0))
    return prompts_for(Scene(intent.family, 0, tuple(bodies)))


def _appended(prompt: str, intent: Intent, choice: Choice) -> str:
    """``prompt`` with the choice stated as a clause in the world's words."""
    where = f"{choice.vert} {choice.horiz}"
    c = intent.colours[0] if intent.colours else ""
    clause = {
        "drop": f"it starts at rest at the {where} of the frame",
        "projectile": f"it is thrown up and to the {choice.direction} from the {choice.horiz} side",
        "slide": f"it is pushed to the {choice.direction} from the {choice.horiz} along the floor",
        "collision": f"the {c} ball rolls to the {choice.direction} towards the resting ball",
    }[intent.family]
    return "; ".join([prompt.strip().rstrip(".;, "), " ".join(clause.split())])


# position and direction words; where the prompt has one the parser does not read ("towards the left
# wall", "near the right edge"), nothing is proposed: a choice could contradict what it says
_PLACE_WORDS = re.compile(r"\b(?:left|right|top|bottom|middle|centre|center|edge|corner|side|upper|lower|"
                          r"leftwards?|rightwards?|wall)\b")
_READ_DIRECTION = re.compile(r"\b(?:up and )?to the (?:left|right)\b|\b(?:left|right)wards?\b|\bup and to the\b")


def _unread_place_words(prompt: str) -> bool:
    text = " ".join(prompt.lower().split())
    text = re.sub(r"\b(left|right) side\b", r"\1", text)  # the world's "from the left side"
    text = re.sub(r"\blower than\b", " ", text)  # "bounces back up lower than it started": not a place
    rest = _READ_DIRECTION.sub(" ", _POSITION.sub(" ", text))
    return bool(_PLACE_WORDS.search(rest))


def _resolutions(critic: "RuleCritic", prompt: str) -> list[Refinement]:
    intent = parse_prompt(prompt)
    if intent.family is None or _unread_place_words(prompt):
        return []
    out: list[Refinement] = []
    texts: set[str] = set()
    for choice in world_choices(intent.family):
        if not _settles(intent, choice):
            continue
        levels = _world_prompts(intent, choice)
        # the world's own short prompt becomes its motion-level sentence (the same scene, the choice
        # made); any other wording keeps every word and gets the choice appended
        plain = " ".join(prompt.lower().split()).rstrip(". ")
        text = levels[1] if levels is not None and levels[0] == plain else None
        if text is None or not entails(parse_prompt(text), intent):
            text = _appended(prompt, intent, choice)
            if count_tokens(text) > critic.max_tokens or not entails(parse_prompt(text), intent):
                continue
        cand = parse_prompt(text)
        if text == " ".join(prompt.split()) or text in texts or (
                claimed_direction(cand) == claimed_direction(intent) and cand.start == intent.start):
            continue  # nothing settled that the prompt did not already say
        texts.add(text)
        out.append(Refinement(text, f"{intent.family}: resolves what the prompt leaves open: "
                                    f"{choice.label(intent.family)}"))
    return out


def contradiction(original: str, rewrite: str | None, max_tokens: int = 60) -> str | None:
    """Why ``rewrite`` may not replace the world prompt ``original`` (None: it may).

    The guard every learnt rewrite passes (the trained refiner's, whatever its model wrote): the
    rewrite names a scenario of the world, asks for everything the original does and contradicts
    none of it (:func:`entails`), has no place word the parser cannot read (it could say what
    ``entails`` cannot check) and fits the text encoder (``max_tokens``)."""
    if rewrite is None or not rewrite.strip():
        return "no rewrite"
    intent = parse_prompt(original)
    if intent.family is None:
        return "the prompt names no scenario of the world"
    if _unread_place_words(original) or _unread_place_words(rewrite):
        return "place words the parser cannot read"
    if count_tokens(rewrite) > max_tokens:
        return f"longer than {max_tokens} tokens"
    if not entails(parse_prompt(rewrite), intent):
        return "contradicts or drops what the prompt says"
    return None
