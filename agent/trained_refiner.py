"""The trained refiner (``refine.critic = "trained"``) in the agent: its critic, the built-in world's
data for it and the reward it is trained on.

``policy.refiner`` holds the model and its two trainers and knows nothing of videos; here they meet
the generator and the judge:

- :class:`TrainedCritic` is a ``reward.base.Critic``: one greedy rewrite per call, passed through a
  guard (on the built-in world :func:`reward.world.critic.contradiction`: the rewrite must keep the
  scenario, colours, shape, claims, direction and start words of the prompt, and fit the text
  encoder), else the prompt is kept. So whatever the model writes, a rewrite never contradicts
  the prompt.
- :func:`world_sft_data`: the stage-1 pairs, from the simulator's own prompt levels of *training*
  scenes only (colour combinations the held-out split never uses): the short prompt → the law and
  the scene's choice of direction / start → its motion-level prompt; a motion-level prompt → itself
  or its physics-level prompt; a physics-level prompt → itself.
- :func:`world_score`: the stage-2 reward's measurement. Each valid rewrite is rendered by the
  *current* generator (``probes`` clips) and judged against the prompt *as written*; every rewrite of
  one prompt at one step gets the same noise (common random numbers), so the group's advantages
  compare texts, not noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from reward.base import HistoryItem, Refinement

Guard = Callable[[str, str | None], str | None]  # (original, rewrite) → why it is rejected, or None

DEFAULT_REFINER = Path(__file__).resolve().parent.parent / "policy" / "checkpoints" / "refiner"

#: the law each family's chain of thought names (the physics its physics-level prompt states)
LAWS = {
    "drop": "gravity pulls it straight down and each bounce loses energy",
    "projectile": "gravity bends the throw into a parabola at a constant horizontal speed",
    "slide": "friction slows the block steadily until it rests",
    "collision": "momentum passes from the moving ball to the resting one",
}


def is_refiner_dir(path: Path) -> bool:
    """Whether ``path`` holds a causal LM (or a LoRA of one) and its tokenizer."""
    path = Path(path)
    return ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()) and \
        (path / "tokenizer_config.json").is_file()


def keeps_every_word(original: str, rewrite: str | None) -> str | None:
    """The guard where no parser of the prompt exists (imported data, the GPU path): the rewrite
    keeps every word of the prompt, in order, and only adds."""
    if rewrite is None or not rewrite.strip():
        return "no rewrite"
    want, have = original.lower().split(), iter(rewrite.lower().split())
    return None if all(any(w.strip(".,;") == h.strip(".,;") for h in have) for w in want) else \
        "drops or reorders words of the prompt"


def world_guard(original: str, rewrite: str | None) -> str | None:
    from reward.world.critic import contradiction

    return contradiction(original, rewrite)


class TrainedCritic:
    """``reward.base.Critic`` around a :class:`policy.refiner.TrainedRefiner` (see the module docstring)."""

    name = "trained"

    def __init__(self, refiner, guard: Guard = world_guard):
        self.refiner, self.guard = refiner, guard

    def refine(self, prompt: str, history: Sequence[HistoryItem] = ()) -> Refinement:
        return self.rewrite_many([prompt])[0]

    def rewrite_many(self, prompts: Sequence[str]) -> list[Refinement]:
        """One greedy rewrite of each prompt (batched), each through the guard."""
        out = []
        for prompt, (r,) in zip(prompts, self.refiner.rewrite(list(prompts))):
            why = self.guard(prompt, r.text)
            if why is not None:
                out.append(Refinement(prompt, f"trained refiner: rewrite rejected ({why}); prompt kept", raw=r.raw))
            elif " ".join(r.text.split()) == " ".join(prompt.split()):
                out.append(Refinement(prompt, f"trained refiner: nothing to add ({r.thought})", raw=r.raw))
            else:
                out.append(Refinement(r.text, f"trained refiner: {r.thought}", raw=r.raw))
        return out


# ------------------------------------------------------------------ the built-in world's data
def _choice(scene) -> str:
    from reward.world import physics as P
    from reward.world.simulator import direction

    b = scene.bodies[0]
    horiz, vert = P.region_words(b.x0, b.y0)
    if scene.family == "drop":
        return f"it starts at the {vert} {horiz}"
    return f"it goes {direction(scene)} from the {horiz}"


def world_scenes(scenes_per_family: int):
    """The first ``scenes_per_family`` training-side scenes of each family (never a held-out combination)."""
    from agent.world_data import split_seeds
    from reward.world import physics as P
    from reward.world.simulator import sample_scene

    return [sample_scene(f, s) for f in P.FAMILIES for s in split_seeds(f, False, scenes_per_family)]


def world_sft_data(scenes_per_family: int = 300) -> tuple[list[str], list[str], list[str]]:
    """Stage-1 (prompt, thought, refined) triples from training scenes (see the module docstring)."""
    prompts, thoughts, refined = [], [], []
    for scene in world_scenes(scenes_per_family):
        short, motion, physics = scene.prompts
        law, choice = LAWS[scene.family], _choice(scene)
        rows = [(short, f"{law}; {choice}", motion),
                (motion, f"{law}; the prompt says where it goes", physics if scene.seed % 2 else motion),
                (physics, f"{law}; the prompt states it all", physics)]
        for p, t, r in rows:
            prompts.append(p), thoughts.append(t), refined.append(r)
    return prompts, thoughts, refined


def world_corpus(scenes_per_family: int = 300) -> list[str]:
    """Every text the world's refiner reads or writes (its tokenizer's vocabulary), delexicalised
    colours included as words: training scenes' prompts at every level and the thoughts."""
    from reward.world import physics as P

    p, t, r = world_sft_data(scenes_per_family)
    return p + t + r + list(P.PALETTE)


def world_score(gen, judge, *, probes: int = 2, seed: int = 0, guard: Guard = world_guard):
    """The refiner's reward measurement on ``gen`` and ``judge`` (``policy.refiner.Score``)."""
    from agent.stages import derive_seed

    def score(originals: Sequence[str], rewrites: Sequence[str | None], step: int) -> list[tuple[float, float, bool]]:
        out = [(0.0, 0.0, False)] * len(originals)
        todo = [i for i, (o, r) in enumerate(zip(originals, rewrites)) if guard(o, r) is None]
        if not todo:
            return out
        seeds = [derive_seed(seed, "refiner", step, originals[i]) for i in todo]  # same noise within a group
        groups = gen.generate([rewrites[i] for i in todo], seeds, probes)
        scores = judge.score_batch([(originals[i], c.video) for i, g in zip(todo, groups) for c in g])
        for n, i in enumerate(todo):
            judged = [s for s in scores[n * probes:(n + 1) * probes] if s.judged]
            if judged:
                out[i] = (float(np.mean([s.sa for s in judged])), float(np.mean([s.pc for s in judged])), True)
        return out

    return score
