"""The chain-of-thought physics filter of PhyAugPipe (PhyGDPO Alg. 1, Fig. 2 (b)–(c)).

Every prompt (with its real video, when it has one) gets one JSON record:

1. parse — the entities (with their material), actions, forces and outcomes;
2. vision check — the parse compared with the frames: hallucinated items removed,
   visible but unnamed ones added;
3. reasoning — how the entities interact through the forces to give the outcomes;
4. scoring — ``physics_richness`` in [0, 1] (entities and their interactions, explicit
   forces and outcomes, causal clarity, penalties), ``physics_label = richness ≥ 0.6``;
5. extension — the prompt extended with causal physical detail (≤ 100 words, no new
   entities).

The record is stored in the prompt's ``curate`` column; the *original* prompt stays the
training condition (the paper studies the model's implicit physics, the extension is kept
for other uses). Two curators produce it:

- :class:`VLMCurator` asks a vision-language model (any OpenAI-compatible server) with the
  rule above and the video's frames, and validates its JSON answer;
- :class:`WorldCurator` derives the same fields analytically for the built-in world: the
  parse from the world's prompt grammar (``reward.world.intent``), the vision check and the
  outcomes from the analytic judge's tracks and law fits of the real video.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from store import Store, read_video, verify

RICH_THRESHOLD = 0.6  # Alg. 1 step 4: physics_label = 1 iff richness ≥ 0.60
MAX_EXTENDED_WORDS = 100  # Alg. 1 step 5


def word_count(text: str) -> int:
    return len(text.split())


def _max_words(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise ValueError("must not be empty")
    if word_count(text) > MAX_EXTENDED_WORDS:
        raise ValueError(f"has {word_count(text)} words; at most {MAX_EXTENDED_WORDS} allowed")
    return text


class CurateRecord(BaseModel):
    """The stored result of Alg. 1 for one prompt (``Store`` column ``curate``)."""

    model_config = ConfigDict(extra="forbid")

    original: str = Field(min_length=1)
    entities: list[str]
    actions: list[str]
    forces: list[str]
    outcomes: list[str]
    vision_check: str = ""  # what step 2 changed ("" when there were no frames to check)
    reasoning: str = Field(min_length=1)
    physics_richness: float = Field(ge=0.0, le=1.0)
    physics_label: int = Field(ge=0, le=1)
    extended_prompt: str
    curator: str = Field(min_length=1)
    details: dict[str, Any] = Field(default_factory=dict)  # curator-specific (score parts, model, …)

    @field_validator("extended_prompt")
    @classmethod
    def _extension_words(cls, value: str) -> str:
        return _max_words(value)

    @model_validator(mode="after")
    def _label_follows_richness(self) -> "CurateRecord":
        want = int(self.physics_richness >= RICH_THRESHOLD)
        if self.physics_label != want:
            raise ValueError(f"physics_label must be {want} for physics_richness {self.physics_richness:.3f} "
                             f"(label = richness ≥ {RICH_THRESHOLD})")
        return self

    @classmethod
    def build(cls, *, physics_richness: float, **fields: Any) -> "CurateRecord":
        """A record whose label is derived from the richness (never taken from a model)."""
        r = round(float(np.clip(physics_richness, 0.0, 1.0)), 4)
        return cls(physics_richness=r, physics_label=int(r >= RICH_THRESHOLD), **fields)


@dataclass
class CurateItem:
    """What a curator sees: the prompt, its real video (or None) and its category."""

    id: str
    prompt: str
    video: np.ndarray | None = None
    category: str | None = None


@dataclass
class CurateFailure:
    id: str
    reason: str


class Curator(Protocol):
    name: str

    def curate_batch(self, items: Sequence[CurateItem]) -> list[CurateRecord | CurateFailure]: ...


# ================================================================== the VLM curator
SYSTEM_PROMPT = """\
You curate text-video training data for physically realistic video generation. You receive \
a text prompt and, when available, frames of the video that goes with it (in temporal \
order). Follow these steps and then answer with one JSON object.

Step 1, parse: list the physical entities (each with its material, e.g. "glass cup \
(glass)"), the actions, the forces acting between the entities (gravity, contact and \
impact forces, friction, tension, buoyancy, pressure, heat, ...) and the outcomes \
(what changes as a result). Include every agent that acts; do not add anything the prompt \
and the frames do not support.
Step 2, vision check: compare your parse with the frames. Remove anything not visible \
(hallucinated), add visible entities or interactions the prompt leaves out. Summarise \
what you changed in "vision_check" ("no frames" when none were given).
Step 3, reasoning: in at most 80 words, explain how the entities interact through the \
forces and lead to the outcomes.
Step 4, physics_richness: a number from 0 to 1. Higher for several interacting entities, \
explicit forces with visible outcomes and a clear cause-and-effect chain; lower for \
camera motion without object motion, stylised or animated footage, static scenes or \
aftermath shots where nothing happens. 0.6 or more means the pair is worth training on.
Step 5, extended_prompt: the original prompt extended with the causal physical details \
of your reasoning, without new entities, forces or sensory descriptions; at most 100 \
words.

Reply with exactly one JSON object and nothing else:
{"entities": [<text>], "actions": [<text>], "forces": [<text>], "outcomes": [<text>], \
"vision_check": "<text>", "reasoning": "<text>", "physics_richness": <number 0-1>, \
"extended_prompt": "<text>"}"""

CORRECTION = ('Reply again with exactly one JSON object with the keys "entities", "actions", "forces", '
              '"outcomes" (lists of strings), "vision_check", "reasoning" (strings), "physics_richness" '
              '(a number from 0 to 1) and "extended_prompt" (at most 100 words), and no other text.')


class CoTAnswer(BaseModel):
    """The VLM's answer schema. Alg. 1's own key names (``parse``, ``reason``, ``extended``) are
    accepted too; a missing list, a richness outside [0, 1] or an over-long extension is not."""

    model_config = ConfigDict(extra="ignore", title="physics_cot")

    entities: list[str]
    actions: list[str]
    forces: list[str]
    outcomes: list[str]
    vision_check: str = ""
    reasoning: str = Field(min_length=1, max_length=4000)
    physics_richness: float = Field(ge=0.0, le=1.0)
    extended_prompt: str

    @field_validator("extended_prompt")
    @classmethod
    def _extension_words(cls, value: str) -> str:
        return _max_words(value)

    @model_validator(mode="before")
    @classmethod
    def _alg1_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        parse = data.pop("parse", None)
        if isinstance(parse, dict):
            for k in ("entities", "actions", "forces", "outcomes"):
                data.setdefault(k, parse.get(k))
        for alias, name in (("reason", "reasoning"), ("extended", "extended_prompt")):
            if alias in data:
                data.setdefault(name, data.pop(alias))
        return data


def _user_content(prompt: str, parts: list[dict], desc: dict | None) -> list[dict]:
    content: list[dict] = [{"type": "text", "text": f'Prompt: "{prompt}"'}]
    if desc is None:
        content.append({"type": "text", "text": "No video frames are available: skip the vision check "
                                                "and judge from the prompt alone."})
    elif desc["mode"] == "frames":
        idx = desc["frame_indices"]
        content.append({"type": "text", "text": f"The video has {desc['num_frames']} frames; here are "
                                                f"{len(idx)} of them, evenly spaced, first to last."})
        for i, part in zip(idx, parts):
            content.append({"type": "text", "text": f"Frame {i}:"})
            content.append(part)
    else:
        content.append({"type": "text", "text": f"The video ({desc['num_frames']} frames):"})
        content.extend(parts)
    content.append({"type": "text", "text": "Apply the five steps. Answer with the JSON object only."})
    return content


class VLMCurator:
    """Alg. 1 through an OpenAI-compatible VLM (``reward.vlm``): one validated answer per prompt."""

    name = "vlm"

    def __init__(self, config=None, *, client=None) -> None:
        from reward.vlm.client import VLMClient
        from reward.vlm.config import VLMConfig

        self.client = client if client is not None else VLMClient(config or VLMConfig())
        self.config = self.client.config

    async def acurate(self, item: CurateItem) -> CurateRecord | CurateFailure:
        from reward.vlm.answers import AskFailure, ask_validated

        parts, desc = [], None
        if item.video is not None:
            parts, desc = await asyncio.to_thread(self.client.video_content, item.video)
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": _user_content(item.prompt, parts, desc)}]
        try:
            asked = await ask_validated(self.client, messages, CoTAnswer, correction=CORRECTION)
        except AskFailure as fail:
            return CurateFailure(item.id, f"{fail.kind}: {fail.message}")
        a = asked.answer
        last = asked.replies[-1]
        return CurateRecord.build(
            original=item.prompt, entities=a.entities, actions=a.actions, forces=a.forces, outcomes=a.outcomes,
            vision_check=a.vision_check if desc is not None else "no frames",
            reasoning=a.reasoning.strip(), physics_richness=a.physics_richness,
            extended_prompt=a.extended_prompt, curator=f"vlm:{last.model or self.config.model}",
            details={"asks": asked.asks, "frames": None if desc is None else desc.get("frame_indices"),
                     "raw": asked.raws[-1] if asked.raws else ""})

    def curate_batch(self, items: Sequence[CurateItem]) -> list[CurateRecord | CurateFailure]:
        items = list(items)
        if not items:
            return []

        async def all_items():
            return list(await asyncio.gather(*(self.acurate(i) for i in items)))

        return self.client.run(all_items)


# ================================================================== the built-in world's curator
STATIC_FREE = 1.0 / 3.0  # share of the clip that may be still at the end before it counts as aftermath
PC_PENALTY = 0.15  # per failed physics check of the real video (implausible data), …
PC_PENALTY_MAX = 0.45  # … at most this much


@dataclass
class _Facts:
    """What the world curator gathered about one (prompt, video) pair."""

    family: str | None
    entities: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    forces: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    interactions: int = 0
    vision: str = ""
    confirmed: float = 0.0  # causal clarity: does the video show the prompt's scenario


class WorldCurator:
    """Alg. 1 for the built-in world, analytically (deterministic; no model needed).

    Step 1 reads the prompt with the world's prompt grammar; step 2 runs the analytic judge
    on the real video and keeps what it found (objects, bounces, fitted accelerations,
    friction, the collision's velocities); step 3 writes the causal chain with the measured
    numbers; step 4 scores richness as the mean of three criteria of Alg. 1 —
    ``(entities + interactions)/2``, ``(forces + outcomes)/2`` (each saturating at 3, 2, 3, 3
    items) and causal clarity (1: the video confirms the scenario, 0.5: no video to check,
    0.25: the video contradicts the prompt, 0: scenario unknown) — minus penalties for
    physics violations in the video and for a static aftermath; step 5 extends the prompt with
    the rule critic's physics expander (which never adds entities).
    """

    name = "world-analytic"

    def __init__(self) -> None:
        from reward.world.critic import RuleCritic
        from reward.world.judge import PhysicsJudge

        self.judge = PhysicsJudge()
        self.expander = RuleCritic(max_tokens=200)

    def curate_batch(self, items: Sequence[CurateItem]) -> list[CurateRecord | CurateFailure]:
        out: list[CurateRecord | CurateFailure] = []
        for item in items:
            try:
                out.append(self.curate(item.prompt, item.video, item.category))
            except ValueError as e:
                out.append(CurateFailure(item.id, str(e)))
        return out

    def curate(self, prompt: str, video: np.ndarray | None = None, category: str | None = None) -> CurateRecord:
        from reward.world import physics as P
        from reward.world.intent import parse_prompt

        intent = parse_prompt(prompt)
        family = intent.family or (category if category in P.FAMILIES else None)
        shape = intent.shape or ("block" if family == "slide" else "ball")
        colours = list(intent.colours)
        judgement = self.judge.analyse(prompt, video) if video is not None else None
        penalties: dict[str, float] = {}
        vision = "no frames"
        if judgement is not None:
            colours, vision = self._vision_check(judgement, colours)
            failed_pc = [c for c in judgement.failed if c.kind == "pc"]
            if failed_pc:
                penalties["physics_violations"] = min(PC_PENALTY_MAX, PC_PENALTY * len(failed_pc))
            still = _static_tail(judgement)
            if still > STATIC_FREE:
                penalties["static_aftermath"] = 0.5 * (still - STATIC_FREE)
        facts = _describe(family, shape, colours, judgement)
        facts.vision = vision
        if judgement is not None and family is not None:
            motion_failed = [c for c in judgement.failed if c.kind == "sa" and c.name not in ("start_region", "shape")]
            facts.confirmed = 0.25 if motion_failed else 1.0
        elif family is not None:
            facts.confirmed = 0.5
        parts = {
            "entities_interactions": 0.5 * (min(1.0, len(facts.entities) / 3) + min(1.0, facts.interactions / 2)),
            "forces_outcomes": 0.5 * (min(1.0, len(facts.forces) / 3) + min(1.0, len(facts.outcomes) / 3)),
            "causal_clarity": facts.confirmed,
        }
        richness = sum(parts.values()) / 3 - sum(penalties.values())
        reasoning = " ".join(facts.reasons) or "The prompt names no recognisable physical interaction."
        return CurateRecord.build(
            original=prompt, entities=facts.entities, actions=facts.actions, forces=facts.forces,
            outcomes=facts.outcomes, vision_check=facts.vision, reasoning=reasoning, physics_richness=richness,
            extended_prompt=self._extend(prompt), curator=self.name,
            details={"family": family, "parts": {k: round(v, 4) for k, v in parts.items()},
                     "penalties": {k: round(v, 4) for k, v in penalties.items()},
                     "judge": None if judgement is None else {"sa": judgement.sa, "pc": judgement.pc,
                                                              "failed": [c.name for c in judgement.failed]}})

    # -------------------------------------------------------------- steps
    @staticmethod
    def _vision_check(judgement, named: list[str]) -> tuple[list[str], str]:
        """Step 2: keep the named colours the judge saw, add the ones it saw unnamed."""
        present = {c.subject for c in judgement.checks if c.name == "present" and c.passed}
        seen = [c for c in judgement.objects if c != "collision"]
        kept = [c for c in named if c in present] if named else list(seen)
        removed = [c for c in named if c not in kept]
        added = [c for c in seen if c not in kept]
        notes = [f"removed {', '.join(removed)} (not in the video)"] if removed else []
        notes += [f"added {', '.join(added)} (visible, not in the prompt)"] if added else []
        return kept + added, "; ".join(notes) or "the frames match the prompt"

    def _extend(self, prompt: str) -> str:
        text = self.expander.refine(prompt, []).prompt
        clauses = text.split("; ")
        while len(clauses) > 1 and word_count("; ".join(clauses)) > MAX_EXTENDED_WORDS:
            clauses.pop()
        text = "; ".join(clauses)
        return text if word_count(text) <= MAX_EXTENDED_WORDS else " ".join(text.split()[:MAX_EXTENDED_WORDS])


def _static_tail(judgement) -> float:
    """Share of the clip's frame steps at its end in which no object moves (a static aftermath)."""
    from reward.world import physics as P

    tracks = [t.pos for t in judgement.observation.tracks.values()]
    if not tracks:
        return 1.0
    steps = len(tracks[0]) - 1
    if steps <= 0:
        return 1.0
    moving = np.zeros(steps, dtype=bool)
    for pos in tracks:
        v = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        moving |= np.nan_to_num(v, nan=0.0) >= P.REST_SPEED
    idx = np.flatnonzero(moving)
    return 1.0 if idx.size == 0 else (steps - 1 - int(idx[-1])) / steps


def _describe(family: str | None, shape: str, colours: list[str], judgement) -> _Facts:
    """Steps 1 and 3: entities, actions, forces, outcomes and the causal chain of one scene."""
    from reward.world import physics as P

    f = _Facts(family)
    objs = (judgement.objects if judgement is not None else {}) or {}
    noun = lambda c: f"{c} {shape}" if c else shape  # noqa: E731
    first = colours[0] if colours else ""
    f.entities = [f"{noun(c)} (rigid)" for c in colours] or ([f"{shape} (rigid)"] if family else [])
    o = objs.get(first, {}) if first else {}
    g = P.GRAVITY
    if family in ("drop", "projectile"):
        rest = [e for e in (o.get("restitution") or []) if e is not None]
        measured = o.get("a_y")
        if family == "drop":
            f.actions = ["is released and falls"]
            f.forces = [f"gravity pulls the {noun(first)} down"]
            f.reasons.append(f"Gravity accelerates the {noun(first)} straight down"
                             + (f" at {measured:.2f} px/frame² (g = {g:.2f})." if measured is not None else "."))
        else:
            f.actions = ["is thrown", "flies in an arc"]
            start, end = o.get("start"), o.get("end")
            dx = end[0] - start[0] if start and end else 0.0
            side = "side" if abs(dx) < 1.0 else ("right" if dx > 0 else "left")  # as tracked, beyond a wobble
            f.forces = [f"the throw gives it an initial velocity up and to the {side}",
                        f"gravity pulls the {noun(first)} down"]
            f.reasons.append("The throw sets it moving; with no horizontal force its horizontal speed stays "
                             "constant while gravity bends its path into a parabola.")
        if measured is not None:
            f.outcomes.append(f"it accelerates downward at {measured:.2f} px/frame²")
            if family == "projectile" and o.get("a_x") is not None:
                f.outcomes.append(f"its horizontal speed stays constant (a_x = {o['a_x']:.2f})")
        elif judgement is None:
            f.outcomes.append("it speeds up downward under gravity")
            if family == "projectile":
                f.outcomes.append("its path is a parabola")
        bounces = len(rest) if judgement is not None else (1 if family == "drop" else 0)
        if bounces:
            f.entities.append("floor (rigid ground)")
            f.actions.append("bounces on the floor")
            f.forces.append("the floor's normal impulse reverses its fall at each bounce")
            f.interactions = bounces
            if rest:
                f.outcomes.append(f"it bounces {bounces} time(s), rebounding at "
                                  + ", ".join(f"{e:.2f}" for e in rest) + " of its impact speed")
            f.outcomes.append("each bounce is lower than the drop: energy is lost")
            f.reasons.append("At the floor the normal impulse reverses its motion, but the rebound is slower "
                             "than the impact (restitution < 1), so each bounce is lower as energy is lost.")
    elif family == "slide":
        f.entities.append("floor (rough ground)")
        f.actions = ["is pushed", "slides along the floor"]
        f.forces = ["the push gives it an initial velocity", "kinetic friction from the floor opposes its motion",
                    "gravity presses it onto the floor, balanced by the normal force"]
        dec, final = o.get("deceleration"), o.get("final_speed")
        stops = final is not None and final < P.REST_SPEED
        if judgement is None or dec is not None:
            f.interactions = 1
            f.outcomes.append(f"it decelerates steadily at {dec:.2f} px/frame²" if dec is not None
                              else "friction slows it down steadily")
        if judgement is None or stops:
            f.actions.append("comes to rest")
            f.outcomes.append("it comes to rest")
        f.reasons.append("After the push no force drives the block; kinetic friction (μ·g) decelerates it at a "
                         "constant rate" + (f" of {dec:.2f} px/frame²" if dec is not None else "")
                         + " until its speed reaches zero and it stops.")
    elif family == "collision":
        second = colours[1] if len(colours) > 1 else ""
        if len(f.entities) < 2:
            f.entities.append(f"second {shape} (rigid)")
        f.entities.append("floor (frictionless ground)")
        f.actions = ["rolls along the floor", "strikes the other ball", "the struck ball moves off"]
        f.forces = [f"on contact the {noun(first)} pushes the {noun(second)} forward (impact force)",
                    f"the {noun(second)} pushes back with an equal and opposite force"]
        coll = objs.get("collision") or {}
        if coll.get("contact") is not None:
            f.interactions = 1
            f.outcomes.append(f"at frame {coll['contact']} the {noun(first)} strikes the {noun(second)}")
            if coll.get("v_striker") is not None and coll.get("v_striker_after") is not None:
                f.outcomes.append(f"the {noun(first)} slows from {abs(coll['v_striker']):.2f} to "
                                  f"{abs(coll['v_striker_after']):.2f} px/frame")
            if coll.get("v_target_after") is not None:
                f.outcomes.append(f"the {noun(second)} moves off at {abs(coll['v_target_after']):.2f} px/frame")
            if coll.get("energy_ratio") is not None:
                f.outcomes.append(f"momentum is conserved (kinetic energy ratio {coll['energy_ratio']:.2f})")
        elif judgement is None:
            f.interactions = 1
            f.outcomes += ["the striker nearly stops", "the struck ball moves off with its speed",
                           "momentum is conserved"]
        f.reasons.append("The impact forces are equal and opposite, so the two equal masses exchange momentum: "
                         "the striker nearly stops and the struck ball carries its speed away.")
    return f


# ================================================================== the curate loop
@dataclass
class CurateReport:
    curated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already curated
    failed: list[CurateFailure] = field(default_factory=list)
    rich: int = 0  # curated prompts with physics_label = 1


PROMPT_COLUMNS = ("id", "text", "category", "level", "source", "real_video", "real_sha256")


def select(prompts: Sequence[dict], *, dataset: str | None = None, force: bool = False) -> tuple[list[dict], list[str]]:
    """(prompts to curate, ids skipped because already curated) among stored prompt rows."""
    chosen = [p for p in prompts if dataset is None or p["id"].startswith(f"{dataset}:")]
    todo = [p for p in chosen if force or not p.get("curate")]
    skipped = [p["id"] for p in chosen if not force and p.get("curate")]
    return todo, skipped


def curate_prompts(store: Store, runs_dir: str | Path, prompts: Sequence[dict],
                   pick: Callable[[dict], Curator], *, batch_size: int = 32,
                   progress: Callable[[int, int], None] | None = None) -> CurateReport:
    """Runs the curator ``pick(prompt)`` over ``prompts`` and stores each record with its prompt.

    A prompt's real video is loaded and checked against its stored sha256 first; a missing
    or altered video, or a curator failure, is reported for that prompt and leaves it
    uncurated. Records are written one batch per transaction, so an interrupted run keeps
    what it finished (and ``--force``-less reruns skip it).
    """
    runs_dir = Path(runs_dir)
    report = CurateReport()
    done = 0
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        groups: dict[int, tuple[Curator, list[CurateItem]]] = {}
        for p in batch:
            try:
                video = _load_real(runs_dir, p)
            except ValueError as e:
                report.failed.append(CurateFailure(p["id"], str(e)))
                continue
            cur = pick(p)
            groups.setdefault(id(cur), (cur, []))[1].append(CurateItem(p["id"], p["text"], video, p.get("category")))
        by_id = {p["id"]: p for p in batch}
        rows = []
        for cur, items in groups.values():
            for item, res in zip(items, cur.curate_batch(items)):
                if isinstance(res, CurateFailure):
                    report.failed.append(res)
                    continue
                rows.append({**{k: by_id[item.id].get(k) for k in PROMPT_COLUMNS}, "curate": res.model_dump()})
                report.curated.append(item.id)
                report.rich += res.physics_label
        if rows:
            with store.transaction():
                store.upsert_prompts(rows)
        done += len(batch)
        if progress is not None:
            progress(done, len(prompts))
    return report


def _load_real(runs_dir: Path, prompt: dict) -> np.ndarray | None:
    rel = prompt.get("real_video")
    if not rel:
        return None
    path = runs_dir / rel
    if prompt.get("real_sha256") and not verify(path, prompt["real_sha256"]):
        raise ValueError(f"real video {rel} is missing or does not match its stored sha256")
    try:
        return read_video(path)
    except Exception as e:  # noqa: BLE001 — report, do not crash the whole run
        raise ValueError(f"cannot read real video {rel}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
