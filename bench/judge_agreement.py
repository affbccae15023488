"""Agreement of the built-in world's two judges on clips of the shipped base generator.

    python -m bench.judge_agreement                 # 192 short + 64 motion + 64 physics prompts
    python -m bench.judge_agreement --short 64 --detailed 16 --out /tmp/a.json

The analytic judge (:class:`reward.world.judge.PhysicsJudge`: tracks objects, tests laws) and the
synthesis judge (:class:`reward.world.synthesis.SynthesisJudge`: fits the world's scenes to the
pixels) are built differently so that they fail in different places. On generated clips — the
clips the loop actually judges — this measures how far they agree: each judge's accept and joint
success rates with Wilson 95 % intervals, the 2×2 table of verdicts, Cohen's kappa, Spearman
correlations of ``sa``, ``pc`` and ``(sa + pc) / 2``, and, where they disagree, which failure
kinds (the analytic judge's failed checks, the synthesis judge's failed parts) come up most,
with examples.

Clips: held-out scenes (seeds from ``EVAL_SEED_BASE`` = 500 000, families cycled, disjoint from
the generator's training seeds), one clip per prompt with noise seed ``10 × scene seed`` (as in
``bench/toy_base_eval.py``); ``--short`` scenes with their short prompt, and the first
``--detailed`` of them also with their motion-level and physics-level prompts. Writes
``bench/results/judge_agreement.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from policy.toy import DEFAULT_CHECKPOINT, ToyGenerator  # noqa: E402
from reward.world import physics as P  # noqa: E402
from reward.world.judge import PhysicsJudge  # noqa: E402
from reward.world.simulator import sample_scene  # noqa: E402
from reward.world.synthesis import SynthesisJudge  # noqa: E402

EVAL_SEED_BASE = 500_000
LEVEL_NAMES = {0: "short", 1: "motion", 2: "physics"}


def wilson(k: int, n: int, z: float = 1.96) -> dict:
    """Rate ``k / n`` with its Wilson score 95 % interval."""
    if n == 0:
        return {"rate": None, "lo": None, "hi": None, "k": 0, "n": 0}
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return {"rate": round(p, 4), "lo": round(c - h, 4), "hi": round(c + h, 4), "k": k, "n": n}


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cohen's kappa of two boolean verdict vectors."""
    po = float(np.mean(a == b))
    pe = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return None if pe >= 1 else round((po - pe) / (1 - pe), 4)


def spearman(x: list[float], y: list[float]) -> float | None:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return round(float(spearmanr(x, y).statistic), 4)


def clips(gen: ToyGenerator, n_short: int, n_detailed: int) -> list[dict]:
    """Generated clips with their scene, level and prompt."""
    scenes = [sample_scene(P.FAMILIES[i % len(P.FAMILIES)], EVAL_SEED_BASE + i) for i in range(n_short)]
    jobs = [(s, 0) for s in scenes] + [(s, lv) for lv in (1, 2) for s in scenes[:n_detailed]]
    out = []
    for level in sorted({lv for _, lv in jobs}):
        batch = [s for s, lv in jobs if lv == level]
        groups = gen.generate([s.prompts[level] for s in batch], [10 * s.seed for s in batch], 1)
        out += [{"scene": s, "level": level, "prompt": s.prompts[level], "video": g[0].video}
                for s, g in zip(batch, groups)]
    return out


def judge_all(judges: dict, items: list[dict]) -> dict[str, list]:
    """Each judge's scores of every clip, and its milliseconds per clip (median, mean, p95)."""
    out = {}
    for name, judge in judges.items():
        scores, ms = [], []
        for c in items:
            t0 = time.perf_counter()
            scores.append(judge.score(c["prompt"], c["video"]))
            ms.append((time.perf_counter() - t0) * 1e3)
        out[name] = scores
        out[f"{name}_ms"] = {"median": round(float(np.median(ms)), 2), "mean": round(float(np.mean(ms)), 2),
                             "p95": round(float(np.percentile(ms, 95)), 2)}
    return out


def _fails(score) -> list[str]:
    return list(dict.fromkeys(score.details.get("failed", []))) if not score.accept else []


def agreement(items: list[dict], phys: list, synth: list, n_examples: int) -> dict:
    """Rates, 2×2 table, kappa, correlations and the failure kinds of the disagreements."""
    a = np.array([bool(s.accept) for s in phys])
    b = np.array([bool(s.accept) for s in synth])
    n = len(items)
    table = {"both_accept": int((a & b).sum()), "physics_only": int((a & ~b).sum()),
             "synthesis_only": int((~a & b).sum()), "both_reject": int((~a & ~b).sum())}
    kinds = {"physics_only": Counter(), "synthesis_only": Counter()}
    by_family = {f: Counter() for f in P.FAMILIES}
    examples = []
    for c, p, s in zip(items, phys, synth):
        if p.accept == s.accept:
            continue
        key = "physics_only" if p.accept else "synthesis_only"
        rejecter = s if p.accept else p
        kinds[key].update(_fails(rejecter))
        by_family[c["scene"].family][key] += 1
        if len(examples) < n_examples:
            examples.append({"scene": c["scene"].id, "level": c["level"], "prompt": c["prompt"], "accepted_by": key[:-5],
                             "physics": {"sa": p.sa, "pc": p.pc, "rationale": p.rationale},
                             "synthesis": {"sa": s.sa, "pc": s.pc, "rationale": s.rationale}})
    mean = lambda scores: [(x.sa + x.pc) / 2 for x in scores]  # noqa: E731
    return {
        "n": n,
        "accept": {"physics": wilson(int(a.sum()), n), "synthesis": wilson(int(b.sum()), n)},
        "joint": {"physics": wilson(sum(x.joint() for x in phys), n),
                  "synthesis": wilson(sum(x.joint() for x in synth), n),
                  "both": wilson(int((a & b).sum()), n)},
        "table": table,
        "agreement": round(float(np.mean(a == b)), 4),
        "cohen_kappa": cohen_kappa(a, b),
        "spearman": {"sa": spearman([x.sa for x in phys], [x.sa for x in synth]),
                     "pc": spearman([x.pc for x in phys], [x.pc for x in synth]),
                     "mean": spearman(mean(phys), mean(synth))},
        "disagreement_kinds": {"rejected_by_synthesis_only": dict(kinds["physics_only"].most_common(8)),
                               "rejected_by_physics_only": dict(kinds["synthesis_only"].most_common(8))},
        "disagreement_by_family": {f: dict(c) for f, c in by_family.items()},
        "examples": examples,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--short", type=int, default=192, help="held-out scenes judged on their short prompt")
    ap.add_argument("--detailed", type=int, default=64, help="of those, how many also on levels 1 and 2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--examples", type=int, default=12)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "judge_agreement.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    gen = ToyGenerator.from_checkpoint(args.checkpoint)
    t0 = time.perf_counter()
    items = clips(gen, args.short, min(args.detailed, args.short))
    gen_s = time.perf_counter() - t0
    scores = judge_all({"physics": PhysicsJudge(), "synthesis": SynthesisJudge()}, items)
    report = {"benchmark": "judge_agreement",
              "setup": {"checkpoint": args.checkpoint.name, "scene_seeds_from": EVAL_SEED_BASE,
                        "short": args.short, "detailed": min(args.detailed, args.short),
                        "noise_seed": "10 × scene seed", "threads": args.threads,
                        "python": platform.python_version(), "torch": torch.__version__},
              "all": agreement(items, scores["physics"], scores["synthesis"], args.examples),
              "by_level": {}}
    for level, name in LEVEL_NAMES.items():
        idx = [i for i, c in enumerate(items) if c["level"] == level]
        if idx:
            report["by_level"][f"{level}_{name}"] = agreement(
                [items[i] for i in idx], [scores["physics"][i] for i in idx], [scores["synthesis"][i] for i in idx], 0)
    report["judge_ms_per_clip"] = {"physics": scores["physics_ms"], "synthesis": scores["synthesis_ms"]}
    report["generate_s"] = round(gen_s, 1)
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    al = report["all"]
    print(json.dumps({k: al[k] for k in ("n", "accept", "joint", "table", "agreement", "cohen_kappa", "spearman",
                                         "disagreement_kinds")}, indent=1))
    print({k: {m: v["rate"] for m, v in r["accept"].items()} for k, r in report["by_level"].items()})
    print("judge ms/clip", report["judge_ms_per_clip"], "elapsed", report["elapsed_s"], "s")
    return report


if __name__ == "__main__":
    main()
