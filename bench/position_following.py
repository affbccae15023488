"""Does the generator put the ball where the prompt says? Same noise, only the position word changes.

For every palette colour and every start region a drop scene can have (top/middle × left/centre/right),
the world's own motion-level drop prompt ("a red ball falls from the top left of the frame and bounces
on the floor") is sampled with the same ``--clips`` noise seeds. The analytic judge tracks each clip and
reports where the ball first appears. A generator that reads the position words moves the mean start
with the word; one that ignores them starts every clip of a seed at the same place whatever the word
(then the start-region pass rate is the chance level ``bench/text_probe.py`` reports, about 38 %).

    python bench/position_following.py                      # the shipped base → bench/results/position_following.json
    python bench/position_following.py --checkpoint other.safetensors --shift 3 --out /tmp/pf.json
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

HORIZ = {"left": 8.0, "centre": 16.0, "right": 24.0}  # region centres (px) inside the drop family's x range
VERT = {"top": 9.0, "middle": 12.5}


def region_prompt(colour: str, horiz: str, vert: str) -> str:
    """The simulator's motion-level prompt for a drop scene starting in that region."""
    from reward.world import physics as P
    from reward.world.simulator import Body, Scene, prompts_for

    body = Body(colour, "ball", HORIZ[horiz], VERT[vert], 0.0, 0.0)
    scene = Scene("drop", 0, (body,), restitution=0.6)
    prompt = prompts_for(scene)[1]
    assert P.region_words(body.x0, body.y0) == (horiz, vert)
    return prompt


def measure(gen, judge, colour: str, prompt: str, seeds: list[int], sampling) -> dict:
    import torch

    noise = torch.stack([gen.noise(s) for s in seeds])
    videos = gen.decode_latents(gen.sample(noise, gen.encode_prompts([prompt] * len(seeds)), sampling))
    xs, ys, passed, found = [], [], 0, 0
    for v in videos:
        j = judge.analyse(prompt, v)
        start = (j.objects.get(colour) or {}).get("start")
        if start:
            found += 1
            xs.append(start[0])
            ys.append(start[1])
        # a clip without the ball has no start-region check, and it does not count as a pass
        passed += bool(start) and all(c.passed for c in j.checks if c.name == "start_region")
    return {"clips": len(seeds), "found": found, "start_region_pass": round(passed / len(seeds), 4),
            "mean_x": round(statistics.fmean(xs), 2) if xs else None,
            "sd_x": round(statistics.pstdev(xs), 2) if xs else None,
            "mean_y": round(statistics.fmean(ys), 2) if ys else None}


def main(argv: list[str] | None = None) -> int:
    from policy.toy import DEFAULT_CHECKPOINT

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--clips", type=int, default=16, help="noise seeds per prompt (the same for every word)")
    ap.add_argument("--colours", nargs="+", default=None, help="palette colours (default: the whole palette)")
    ap.add_argument("--shift", type=float, default=None, help="override the checkpoint's sampling shift")
    ap.add_argument("--steps", type=int, default=None, help="override the checkpoint's sampling steps")
    ap.add_argument("--guidance", type=float, default=None, help="override the checkpoint's guidance scale")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "position_following.json")
    args = ap.parse_args(argv)

    import torch

    from policy.toy import ToyGenerator
    from reward.world import physics as P
    from reward.world.judge import PhysicsJudge

    torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("shift", args.shift), ("steps", args.steps), ("guidance", args.guidance)) if v is not None}
    gen = ToyGenerator.from_checkpoint(args.checkpoint, **overrides)
    sampling = gen.sampling
    colours = args.colours or list(P.PALETTE)
    judge = PhysicsJudge()
    seeds = [7_000 + k for k in range(args.clips)]
    t0 = time.perf_counter()
    rows = []
    for colour in colours:
        for vert in VERT:
            for horiz in HORIZ:
                r = {"colour": colour, "horiz": horiz, "vert": vert, **measure(gen, judge, colour, region_prompt(colour, horiz, vert), seeds, sampling)}
                rows.append(r)
                print(f"{colour:7s} {vert:6s} {horiz:6s}  start x {r['mean_x']} (sd {r['sd_x']})  y {r['mean_y']}  "
                      f"start-region pass {r['start_region_pass']:.0%}", flush=True)

    def pooled(key: str, word: str, field: str) -> float | None:
        vals = [r[field] for r in rows if r[key] == word and r[field] is not None]
        return round(statistics.fmean(vals), 2) if vals else None

    summary = {
        "mean_x_by_horiz": {h: pooled("horiz", h, "mean_x") for h in HORIZ},
        "mean_y_by_vert": {v: pooled("vert", v, "mean_y") for v in VERT},
        "start_region_pass": round(statistics.fmean(r["start_region_pass"] for r in rows), 4),
    }
    lx, rx = summary["mean_x_by_horiz"]["left"], summary["mean_x_by_horiz"]["right"]
    summary["right_minus_left_x"] = round(rx - lx, 2) if lx is not None and rx is not None else None
    summary["right_minus_left_x_simulator"] = HORIZ["right"] - HORIZ["left"]
    ckpt = args.checkpoint.resolve()
    result = {"checkpoint": str(ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt), "sampling": {"steps": sampling.steps, "shift": sampling.shift,
                                                               "guidance": sampling.guidance},
              "clips_per_prompt": args.clips, "noise_seeds": [seeds[0], seeds[-1]], "colours": colours,
              "summary": summary, "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
              "threads": args.threads, "date": date.today().isoformat(), "machine": platform.machine(),
              "python": platform.python_version(), "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"mean start x by word: {summary['mean_x_by_horiz']} (right − left {summary['right_minus_left_x']} px; "
          f"the simulator's region centres differ by {summary['right_minus_left_x_simulator']:.0f}); "
          f"start-region pass {summary['start_region_pass']:.0%} → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
