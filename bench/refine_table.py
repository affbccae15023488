"""Refinement at inference, with and without: the PhyPrompt table shape on the built-in world.

The default preset's unseen held-out prompts (64 held-out scenes × the short and the motion-level
prompt, 4 clips each, the same noise for every row) are generated as written and after refinement
by the rule critic, and every clip is judged by both judges against the prompt *as written*:

- ``as written``: the prompt itself;
- ``cues``: the critic's one rewrite (the cues of the scenario's core physics), kept when its probe
  clip beats the prompt's own (``refine.resolve = false``);
- ``resolve``: the critic first settles what the prompt leaves open (direction, start region),
  probing each candidate with ``--probes`` clips and keeping the best; then its rewrite
  (``refine.resolve = true``, the default);
- ``resolve only``: the settling step without the rewrite (``refine.max_steps = 0``);
- ``trained``: the trained refiner (``refine.critic = "trained"``, PhyPrompt's SFT + GRPO,
  ``scripts/build_refiner.py``): one greedy rewrite per prompt through its guard, no probe clip;
- ``trained sft``: its stage 1 alone (``<refiner>_sft``).

Probes use their own noise seeds (never an evaluation clip's) and the training judge (the analytic
one), as in the loop. Reports joint success per row and level with Wilson 95 % CIs and the paired
difference to ``as written`` (bootstrap over prompt texts). ``--adapter DIR`` evaluates a trained
round's adapter instead of the base.

    python bench/refine_table.py                                  # the shipped base
    python bench/refine_table.py --adapter runs/x/adapters/round_005 --out bench/results/refine_table_r5.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ROWS = {"cues": {"resolve": False, "max_steps": 1}, "resolve": {"resolve": True, "max_steps": 1},
        "resolve only": {"resolve": True, "max_steps": 0}}
#: the trained refiner (PhyPrompt): one greedy rewrite per prompt, no probe clip; its SFT stage alone
TRAINED = {"trained": "", "trained sft": "_sft"}


def trained_texts(held, refiner_dir: Path, suffix: str) -> tuple[list[str], list[dict]]:
    from agent.trained_refiner import TrainedCritic
    from policy.refiner import TrainedRefiner

    path = refiner_dir.with_name(refiner_dir.name + suffix)
    refs = TrainedCritic(TrainedRefiner.from_pretrained(path)).rewrite_many(held.prompts)
    return [r.prompt for r in refs], [{"prompt": p, "refined": r.prompt, "critique": r.critique}
                                      for p, r in zip(held.prompts, refs)]


def refined_texts(held, gen, judge, *, resolve: bool, max_steps: int, probes: int) -> tuple[list[str], list[dict]]:
    """Each held-out prompt refined by the rule critic, probing ``gen``, the probes judged by ``judge``."""
    from agent.refine import minilm_similarity, refine_prompt
    from reward.world.critic import RuleCritic

    critic, sim = RuleCritic(), minilm_similarity()
    texts, log = [], []
    for i, prompt in enumerate(held.prompts):
        def probe(text, step, stream=0, i=i, prompt=prompt):
            g = gen.generate([text], [8_000_000 + 1000 * i + 500 * stream + step], 1)[0][0]
            return g.video, judge.score_batch([(prompt, g.video)])[0]

        res = refine_prompt(prompt, [], critic, max_steps=max_steps, min_change=0.02, similarity=sim, probe=probe,
                            resolve_probe=(lambda t, s: probe(t, s, 1)) if resolve else None, resolve_probes=probes)
        texts.append(res.best)
        log.append({"prompt": prompt, "refined": res.best, "steps": len(res.steps)})
    return texts, log


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", type=Path, help="a saved adapter directory (default: the shipped base alone)")
    ap.add_argument("--probes", type=int, default=4, help="probe clips per candidate resolution (refine.resolve_probes)")
    ap.add_argument("--heldout", type=int, default=16, help="held-out scenes per family")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--rows", nargs="+", choices=list(ROWS) + list(TRAINED), default=list(ROWS) + list(TRAINED))
    ap.add_argument("--refiner", type=Path, default=None, help="trained refiner directory for the 'trained' rows "
                    "(its SFT stage: <dir>_sft; default: the shipped one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "refine_table.json")
    args = ap.parse_args(argv)
    if args.probes < 1 or args.heldout < 1 or args.clips < 1 or args.threads < 1:
        print("error: --probes, --heldout, --clips and --threads must be at least 1", file=sys.stderr)
        return 2
    if args.adapter is not None and not args.adapter.exists():
        print(f"error: no adapter at {args.adapter}", file=sys.stderr)
        return 2

    import torch
    torch.set_num_threads(args.threads)
    from _heldout import Heldout
    from policy.lora import load_adapter
    from policy.toy import ToyGenerator

    t0 = time.perf_counter()
    held = Heldout(args.heldout, args.clips)
    gen = ToyGenerator.from_checkpoint()
    if args.adapter is not None:
        load_adapter(gen.transformer, args.adapter)
    written = held.judge(gen)
    out = {"bench": "refine_table", "date": date.today().isoformat(), "machine": platform.processor() or
           platform.machine(), "cpus": os.cpu_count(), "threads": args.threads, "adapter": str(args.adapter or ""),
           "probes": args.probes, "clips": len(written["physics"]), "probe_judge": "physics",
           "as_written": {j: float(v.mean()) for j, v in written.items()}, "rows": {}}
    for row in args.rows:
        t = time.perf_counter()
        if row in TRAINED:
            from agent.trained_refiner import DEFAULT_REFINER

            texts, log = trained_texts(held, args.refiner or DEFAULT_REFINER, TRAINED[row])
        else:
            texts, log = refined_texts(held, gen, held.judges["physics"], probes=args.probes, **ROWS[row])
        t_refine = time.perf_counter() - t
        after = held.judge(gen, texts)
        entry = {"refine_seconds": t_refine, "changed": sum(r["refined"] != r["prompt"] for r in log),
                 "all": held.compare(written, after, label=f"{row:12s} all    ")}
        for lv, name in ((0, "short"), (1, "motion")):
            entry[name] = held.compare(written, after, label=f"{row:12s} {name:6s} ", level=lv)
        entry["examples"] = log[:: max(1, len(log) // 12)]
        out["rows"][row] = entry
    out["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
