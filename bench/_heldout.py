"""The default preset's unseen held-out prompts, generated and judged by both judges, for benches
that compare one generator against another outside the loop (``sft_reference``, ``perturb_control``).

64 held-out scenes (16 per family, colour combinations no training prompt names) × the short and
the motion-level prompt × ``clips`` noise seeds: 512 clips by default, the same prompts and noise
for every model compared, so differences are paired.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.stats import paired_bootstrap, wilson  # noqa: E402
from agent.world_data import split_seeds  # noqa: E402
from reward.world import physics as P  # noqa: E402
from reward.world.judge import PhysicsJudge  # noqa: E402
from reward.world.simulator import sample_scene  # noqa: E402
from reward.world.synthesis import SynthesisJudge  # noqa: E402


class Heldout:
    def __init__(self, scenes_per_family: int = 16, clips: int = 4):
        held = [sample_scene(f, s) for f in P.FAMILIES for s in split_seeds(f, True, scenes_per_family)]
        self.prompts = [s.prompts[lv] for lv in (0, 1) for s in held]
        self.families = np.repeat([s.family for lv in (0, 1) for s in held], clips)
        self.levels = np.repeat([lv for lv in (0, 1) for s in held], clips)
        self.seeds = [7_000_000 + 100 * i for i in range(len(self.prompts))]
        self.clips = clips
        self.clusters = np.repeat(np.arange(len(self.prompts)), clips)
        self.judges = {"physics": PhysicsJudge(), "synthesis": SynthesisJudge()}

    def judge(self, gen, texts: list[str] | None = None) -> dict[str, np.ndarray]:
        """Joint success (0/1) of every clip under each judge, in a fixed clip order. With ``texts``
        (one per prompt, e.g. refined) the clips are made from them, with the same noise, and judged
        against the held-out prompts as written."""
        texts = self.prompts if texts is None else texts
        if len(texts) != len(self.prompts):
            raise ValueError(f"{len(texts)} texts for {len(self.prompts)} held-out prompts")
        groups = gen.generate(texts, self.seeds, self.clips)
        items = [(p, g.video) for p, grp in zip(self.prompts, groups) for g in grp]
        return {name: np.array([s.joint() for s in j.score_batch(items)], dtype=float)
                for name, j in self.judges.items()}

    def compare(self, before: dict[str, np.ndarray], after: dict[str, np.ndarray], label: str = "",
                level: int | None = None) -> dict:
        """Each side's rate with its Wilson CI and the paired difference after − before (bootstrap
        over prompts), per judge, over every clip or one prompt ``level``; prints one line per judge."""
        keep = np.ones(len(self.clusters), bool) if level is None else self.levels == level
        out = {}
        for name in self.judges:
            b, a = before[name][keep], after[name][keep]
            fam = self.families[keep]
            diff = paired_bootstrap(b, a, clusters=self.clusters[keep])  # mean(a) − mean(b)
            out[name] = {"before": {"rate": float(b.mean()), "ci": wilson(int(b.sum()), len(b))},
                         "after": {"rate": float(a.mean()), "ci": wilson(int(a.sum()), len(a))},
                         "difference": diff,
                         "per_family": {f: {"before": float(b[fam == f].mean()),
                                            "after": float(a[fam == f].mean())}
                                        for f in P.FAMILIES}}
            lo, hi = diff["ci"]
            print(f"{label}{name:9s} {100 * b.mean():5.1f} % → {100 * a.mean():5.1f} %  "
                  f"Δ {100 * diff['estimate']:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]", flush=True)
        return out
