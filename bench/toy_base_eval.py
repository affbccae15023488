"""Held-out evaluation of the built-in world's base generator, per prompt detail level.

    python bench/toy_base_eval.py                      # shipped checkpoint, 64 scenes × 2 clips × 3 levels
    python bench/toy_base_eval.py --checkpoint /tmp/x.safetensors --scenes 32 --out /tmp/x.json

For ``--scenes`` held-out simulator scenes (families cycled, seeds ``EVAL_SEED_BASE + i``,
disjoint from the training seeds ≥ 1 000 000 of ``scripts/build_toy_base.py``), it generates
``--clips`` clips from each of the scene's three prompts (0 short, 1 motion, 2 physics) with the
SAME noise seeds at every level (a paired comparison: only the prompt changes), scores each
clip with the analytic judge (:class:`reward.world.judge.PhysicsJudge`, no refinement) and
reports per level and per family: judge accept rate, joint success (sa ≥ 0.75 and pc ≥ 0.75),
mean sa and pc, the most frequent failed checks, and generation time per clip. The simulator's
own videos are scored too (the ceiling the judge allows). Writes
``bench/results/toy_base_eval.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from policy.toy import DEFAULT_CHECKPOINT, ToyGenerator  # noqa: E402
from reward.world import physics as P  # noqa: E402
from reward.world.judge import PhysicsJudge  # noqa: E402
from reward.world.simulator import LEVELS, render, sample_scene  # noqa: E402

EVAL_SEED_BASE = 500_000  # held-out scenes; training uses seeds ≥ 1 000 000
TUNE_SEED_BASE = 600_000  # validation scenes the sampling defaults were chosen on (never reported)
LEVEL_NAMES = {0: "short", 1: "motion", 2: "physics"}


def summarise(rows: list[dict]) -> dict:
    if not rows:
        return {}
    fails = Counter(name for r in rows for name in set(r["failed"]))
    return {
        "n": len(rows),
        "accept": round(float(np.mean([r["accept"] for r in rows])), 4),
        "joint": round(float(np.mean([r["joint"] for r in rows])), 4),
        "sa": round(float(np.mean([r["sa"] for r in rows])), 4),
        "pc": round(float(np.mean([r["pc"] for r in rows])), 4),
        "top_failures": dict(fails.most_common(6)),
    }


def by_family(rows: list[dict]) -> dict:
    return {f: summarise([r for r in rows if r["family"] == f]) for f in P.FAMILIES}


@torch.no_grad()
def sdedit_rows(gen: ToyGenerator, judge: PhysicsJudge, scenes: list, noise_seeds: list[int], t0: float) -> list[dict]:
    """Short-prompt clips sampled from each scene's real clip noised to ``t0`` (Euler, the
    checkpoint's schedule below ``t0``)."""
    from policy.toy import sigma_schedule

    x0 = gen.encode_videos([render(s) for s in scenes])
    text = gen.encode_prompts([s.prompts[0] for s in scenes])
    eps = torch.stack([gen.noise(n) for n in noise_seeds])
    x = (1.0 - t0) * x0 + t0 * eps
    sigmas = [t0] + [s for s in sigma_schedule(gen.sampling.steps, gen.sampling.shift).tolist() if s < t0 - 1e-9]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s_next - s) * gen.velocity(x, torch.full((x.shape[0],), s), text)
    rows = []
    for scene, video in zip(scenes, gen.decode_latents(x)):
        sc = judge.score(scene.prompts[0], video)
        rows.append({"family": scene.family, "level": 0, "sa": sc.sa, "pc": sc.pc, "accept": bool(sc.accept),
                     "joint": sc.joint(), "failed": sc.details.get("failed", [])})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--scenes", type=int, default=64)
    ap.add_argument("--clips", type=int, default=2, help="clips per prompt")
    ap.add_argument("--steps", type=int, default=None, help="override the checkpoint's sampling steps")
    ap.add_argument("--guidance", type=float, default=None, help="override the checkpoint's guidance scale")
    ap.add_argument("--shift", type=float, default=None, help="override the checkpoint's timestep shift")
    ap.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    ap.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE,
                    help="first scene seed (default: the held-out set; sampling defaults were chosen "
                         "on TUNE_SEED_BASE = 600000+)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sdedit", type=float, nargs="*", default=[],
                    help="diagnostic: also start the sampler from each scene's real clip noised to these t "
                         "(x_t = (1 − t)·x0 + t·ε) and judge the result on short prompts — where between "
                         "t = 1 and 0 the generator stops being able to finish a clip")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "toy_base_eval.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    overrides = {k: v for k, v in (("steps", args.steps), ("guidance", args.guidance), ("shift", args.shift))
                 if v is not None}
    gen = ToyGenerator.from_checkpoint(args.checkpoint, **overrides)
    judge = PhysicsJudge()
    scenes = [sample_scene(P.FAMILIES[i % len(P.FAMILIES)], args.seed_base + i) for i in range(args.scenes)]
    noise_seeds = [10 * s.seed for s in scenes]  # the same noise at every level

    real_rows = []
    for s in scenes:
        video = render(s)
        for level in args.levels:
            sc = judge.score(s.prompts[level], video)
            real_rows.append({"family": s.family, "level": level, "sa": sc.sa, "pc": sc.pc, "accept": bool(sc.accept),
                              "joint": sc.joint(), "failed": sc.details.get("failed", [])})

    results: dict = {"levels": {}, "by_family": {}}
    gen_seconds, n_clips = 0.0, 0
    for level in args.levels:
        prompts = [s.prompts[level] for s in scenes]
        t0 = time.perf_counter()
        groups = gen.generate(prompts, noise_seeds, args.clips)
        gen_seconds += time.perf_counter() - t0
        n_clips += len(prompts) * args.clips
        rows = []
        for s, group in zip(scenes, groups):
            for clip in group:
                sc = judge.score(clip.prompt, clip.video)
                rows.append({"family": s.family, "level": level, "sa": sc.sa, "pc": sc.pc,
                             "accept": bool(sc.accept), "joint": sc.joint(),
                             "failed": sc.details.get("failed", [])})
        name = f"{level}_{LEVEL_NAMES[level]}"
        results["levels"][name] = summarise(rows)
        results["by_family"][name] = by_family(rows)
        lv = results["levels"][name]
        print(f"level {name:10s} accept {lv['accept']:.3f}  joint {lv['joint']:.3f}  sa {lv['sa']:.3f}  "
              f"pc {lv['pc']:.3f}  fails {lv['top_failures']}", flush=True)

    sdedit = {}
    for t0 in args.sdedit:
        rows = sdedit_rows(gen, judge, scenes, noise_seeds, t0)
        sdedit[f"{t0:g}"] = summarise(rows)
        print(f"from the real clip at t = {t0:g}: joint {sdedit[f'{t0:g}']['joint']:.3f}  "
              f"pc {sdedit[f'{t0:g}']['pc']:.3f}", flush=True)

    real = {f"{lv}_{LEVEL_NAMES[lv]}": summarise([r for r in real_rows if r["level"] == lv]) for lv in args.levels}
    print("simulator videos:", {k: v["accept"] for k, v in real.items()}, flush=True)
    meta = gen.metadata
    report = {
        "checkpoint": str(args.checkpoint.relative_to(REPO) if args.checkpoint.is_relative_to(REPO) else args.checkpoint),
        "checkpoint_bytes": args.checkpoint.stat().st_size,
        "params": meta.get("params"),
        "arch": meta.get("arch"),
        "tokens_per_clip": gen.arch.tokens,
        "sampling": {"steps": gen.sampling.steps, "shift": gen.sampling.shift, "guidance": gen.sampling.guidance},
        "training": {k: meta.get("training", {}).get(k) for k in
                     ("steps", "batch", "lr", "final_loss", "train_seconds", "build_seconds", "threads")},
        "eval": {"scenes": args.scenes, "clips_per_prompt": args.clips,
                 "scene_seeds": [args.seed_base, args.seed_base + args.scenes - 1],
                 "noise_seeds": "10 × scene seed + j, identical across levels", "judge": "physics (PhysicsJudge)",
                 "refinement": False},
        **results,
        "simulator_videos": real,
        "sdedit_short_prompts": sdedit,
        "seconds_per_clip": round(gen_seconds / max(1, n_clips), 4),
        "threads": args.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}; {report['seconds_per_clip']:.3f} s per clip", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
