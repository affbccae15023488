"""Does the generator move things the way the prompt says? Same noise, only the direction changes.

Projectile, slide and collision scenes of the built-in world go either way (``physics.MIRRORED``).
For ``--scenes`` held-out scenes of each of those families, the scene's motion-level prompt and the
prompt of its mirror image (the same scene going the other way: "thrown to the left from the right
side" for "thrown to the right from the left side") are sampled with the same ``--clips`` noise
seeds, and so is the short prompt, which names no direction. The analytic judge tracks the first
named object in every clip. Reported per family and prompt:

- ``follows``: share of clips whose object moves the named way (net sideways travel ≥ 1 px);
- ``right``: share of clips whose object moves right (for the short prompt: how the model splits);
- ``lost``: share of clips where the object is not tracked or vanishes (the vanish check fails);
- ``accept``: the judge's verdict against the prompt the clip was made from.

    python bench/direction_following.py                     # shipped base → bench/results/direction_following.json
    python bench/direction_following.py --checkpoint other.safetensors --scenes 4 --clips 2 --out /tmp/d.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED_BASE = 500_000  # held-out scenes (training uses seeds ≥ 1 000 000)


def clip_row(judge, prompt: str, colour: str, video, way: str | None) -> dict:
    j = judge.analyse(prompt, video)
    obj = j.objects.get(colour) or {}
    start, end = obj.get("start"), obj.get("end")
    dx = (end[0] - start[0]) if start and end else None
    lost = dx is None or any(c.name in ("vanish", "present") and not c.passed for c in j.checks)
    moved = None if dx is None or abs(dx) < 1.0 else ("right" if dx > 0 else "left")
    return {"dx": dx, "moved": moved, "lost": lost, "accept": j.accept,
            "follows": None if way is None else moved == way}


def share(rows: list[dict], key: str, value=True) -> float:
    return round(statistics.fmean(r[key] == value for r in rows), 4) if rows else float("nan")


def main(argv: list[str] | None = None) -> int:
    from policy.toy import DEFAULT_CHECKPOINT

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--scenes", type=int, default=16, help="held-out scenes per family")
    ap.add_argument("--clips", type=int, default=4, help="noise seeds per prompt (the same for every prompt of a scene)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "direction_following.json")
    args = ap.parse_args(argv)
    if args.scenes < 1 or args.clips < 1:
        ap.error("--scenes and --clips must be at least 1")

    import torch

    from policy.toy import ToyGenerator
    from reward.world import physics as P
    from reward.world.judge import PhysicsJudge
    from reward.world.simulator import direction, mirror_scene, sample_scene

    torch.set_num_threads(args.threads)
    gen = ToyGenerator.from_checkpoint(args.checkpoint)
    judge = PhysicsJudge()
    t0 = time.perf_counter()
    rows: list[dict] = []
    for family in P.MIRRORED:
        for i in range(args.scenes):
            scene = sample_scene(family, SEED_BASE + 4 * i + P.FAMILIES.index(family))
            noise = torch.stack([gen.noise(10 * scene.seed + k) for k in range(args.clips)])  # shared by the 3 prompts
            for kind, sc, level in (("short", scene, 0), ("named", scene, 1), ("named", mirror_scene(scene), 1)):
                prompt = sc.prompts[level]
                way = direction(sc) if kind == "named" else None
                videos = gen.decode_latents(gen.sample(noise, gen.encode_prompts([prompt] * args.clips), gen.sampling))
                for v in videos:
                    rows.append({"family": family, "scene": scene.seed, "prompt": kind, "way": way,
                                 **clip_row(judge, prompt, sc.colours[0], v, way)})

    summary: dict = {}
    for family in (*P.MIRRORED, "all"):
        fam = [r for r in rows if family in ("all", r["family"])]
        named = [r for r in fam if r["prompt"] == "named"]
        short = [r for r in fam if r["prompt"] == "short"]
        summary[family] = {
            "named": {"clips": len(named), "follows": share(named, "follows"), "lost": share(named, "lost"),
                      "accept": share(named, "accept")},
            "short": {"clips": len(short), "right": share(short, "moved", "right"),
                      "left": share(short, "moved", "left"), "lost": share(short, "lost"),
                      "accept": share(short, "accept")},
        }
        s = summary[family]
        print(f"{family:10s} named: follows {s['named']['follows']:.0%}  lost {s['named']['lost']:.0%}  "
              f"accept {s['named']['accept']:.0%}   short: right {s['short']['right']:.0%} / left "
              f"{s['short']['left']:.0%}  lost {s['short']['lost']:.0%}  accept {s['short']['accept']:.0%}", flush=True)
    ckpt = args.checkpoint.resolve()
    result = {"checkpoint": str(ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt),
              "scenes_per_family": args.scenes, "clips_per_prompt": args.clips,
              "scene_seeds": f"{SEED_BASE} + 4·i + family index", "summary": summary, "rows": rows,
              "seconds": round(time.perf_counter() - t0, 1), "threads": args.threads,
              "date": date.today().isoformat(), "machine": platform.machine(),
              "python": platform.python_version(), "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} in {result['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
