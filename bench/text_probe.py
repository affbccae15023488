"""How much of a prompt's MiniLM token sequence changes when one word changes: position vs colour.

The built-in world's generator reads per-token all-MiniLM-L6-v2 embeddings through cross-attention.
A diagnostic for why it follows colour words but not start-position words: take the world's own
motion-level drop prompts ("a red ball falls from the top left of the frame ..."), swap one word
(a position word for another, or the colour for another palette colour) and measure, token by token,
the relative change ``||e_i - e'_i|| / ||e_i||`` of the contextual embeddings. A change confined to
the swapped token can only reach the generator if cross-attention has learned to look at that
token; a change spread over every token reaches it whatever it attends to.

It also reports how often a drop start drawn independently of the prompt would pass the judge's
start-region check: the chance level for a generator that ignores position words.

    python bench/text_probe.py            # 64 drop scenes → bench/results/text_probe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SWAPS = {
    "horizontal position": {"left": "right", "right": "left", "centre": "left"},
    "vertical position": {"top": "middle", "middle": "top"},
}


def token_changes(encoder, a: str, b: str) -> tuple[float, float] | None:
    """(change at the one differing token, mean change at the others); None if they do not align."""
    ea, eb = encoder.encode([a, b])
    n = int((ea.abs().sum(1) > 0).sum())
    if n != int((eb.abs().sum(1) > 0).sum()):
        return None  # the swapped words tokenise to different lengths
    rel = ((ea[:n] - eb[:n]).norm(dim=1) / ea[:n].norm(dim=1)).tolist()
    k = max(range(n), key=rel.__getitem__)
    others = [r for i, r in enumerate(rel) if i != k]
    return rel[k], statistics.fmean(others)


def chance_start_pass(n: int = 20_000, seed: int = 0) -> float:
    """How often a drop start drawn independently of the prompt passes the judge's start-region check
    for the region another random drop scene's prompt names (within ``REGION_TOL``)."""
    import numpy as np

    from reward.world import physics as P
    from reward.world.intent import region_interval
    from reward.world.judge import REGION_TOL

    rng = np.random.default_rng(seed)
    r = P.RANGES["drop"]
    named_x, named_y, x, y = (rng.uniform(*rng_, n) for rng_ in (r.x0, r.y0, r.x0, r.y0))
    hits = 0
    for nx, ny, px, py in zip(named_x, named_y, x, y):
        h, v = P.region_words(nx, ny)
        (xlo, xhi), (ylo, yhi) = region_interval(h, "x"), region_interval(v, "y")
        hits += max(xlo - px, px - xhi, ylo - py, py - yhi, 0.0) <= REGION_TOL
    return hits / n


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=64)
    ap.add_argument("--seed-base", type=int, default=500_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "text_probe.json")
    args = ap.parse_args(argv)

    from policy.text import TextEncoder
    from reward.world import physics as P
    from reward.world.simulator import prompts_for, sample_scene

    enc = TextEncoder()
    rows: dict[str, list[tuple[float, float]]] = {"horizontal position": [], "vertical position": [], "colour": []}
    skipped = 0
    for i in range(args.scenes):
        scene = sample_scene("drop", args.seed_base + i)
        prompt = prompts_for(scene)[1]
        horiz, vert = P.region_words(scene.bodies[0].x0, scene.bodies[0].y0)
        colour = scene.bodies[0].colour
        other = next(c for c in P.PALETTE if c != colour)
        swaps = {"horizontal position": (f"{vert} {horiz}", f"{vert} {SWAPS['horizontal position'][horiz]}"),
                 "vertical position": (f"{vert} {horiz}", f"{SWAPS['vertical position'][vert]} {horiz}"),
                 "colour": (f"a {colour} ball", f"a {other} ball")}
        for kind, (old, new) in swaps.items():
            got = token_changes(enc, prompt, prompt.replace(old, new, 1))
            if got is None:
                skipped += 1
            else:
                rows[kind].append(got)
    summary = {kind: {"pairs": len(v), "swapped_token": statistics.fmean(a for a, _ in v),
                      "other_tokens": statistics.fmean(b for _, b in v)} for kind, v in rows.items() if v}
    doc = {"benchmark": "text probe", "date": date.today().isoformat(), "machine": platform.machine(),
           "command": "python bench/text_probe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "encoder": "all-MiniLM-L6-v2 per-token (policy.text.TextEncoder)", "prompt_level": 1,
           "scenes": args.scenes, "skipped_unaligned": skipped, "summary": summary,
           "chance_start_region_pass": chance_start_pass()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print("| swap | pairs | relative change at the swapped token | mean at the other tokens |\n|---|---|---|---|")
    for kind, s in summary.items():
        print(f"| {kind} | {s['pairs']} | {s['swapped_token']:.2f} | {s['other_tokens']:.3f} |")
    print(f"a drop start drawn independently of the prompt passes the start-region check "
          f"{100 * doc['chance_start_region_pass']:.0f} % of the time")
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
