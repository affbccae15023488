"""Does a round of PhyGDPO raise the judge's accept rate on the prompts it trained on?

One round of groups on the built-in world: for each training prompt (short, level 0) the base
generator makes a group of m clips, the analytic judge scores them, and the scene's real video
is the winner. Then ``--steps`` PhyGDPO steps, and the same prompts are generated again — with
the same seeds and with fresh ones — and judged. Writes ``bench/results/train_effect.json``.

    python bench/train_effect.py                       # 32 prompts, m = 4, 300 steps
    python bench/train_effect.py --objective flow-dpo --steps 300
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def accept_rates(gen, judge, prompts, seeds, m):
    groups = gen.generate(prompts, seeds, m)
    scores = judge.score_batch([(g.prompt, g.video) for grp in groups for g in grp])
    return groups, scores


def main(argv=None):
    from policy.base import GroupSample
    from policy.groups import Candidate, build_group_sample, plan_group
    from policy.toy import ToyGenerator
    from policy.trainer import Trainer, TrainConfig
    from reward.world import physics as P
    from reward.world.judge import PhysicsJudge
    from reward.world.simulator import render, sample_scene

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--objective", default="phygdpo")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=None)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--groups-per-step", type=int, default=4)
    ap.add_argument("--level", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", type=Path, default=None, help="base checkpoint (default: the shipped one)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_effect.json")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)

    scenes = [sample_scene(P.FAMILIES[i % 4], i // 4) for i in range(args.prompts)]
    prompts = [s.prompts[args.level] for s in scenes]
    seeds = [10_000 * args.seed + 10 * i for i in range(len(prompts))]
    fresh = [s + 7_777_777 for s in seeds]
    gen = ToyGenerator.from_checkpoint(args.checkpoint)
    judge = PhysicsJudge()
    m = args.group_size

    groups, scores = accept_rates(gen, judge, prompts, seeds, m)
    _, scores_fresh = accept_rates(gen, judge, prompts, fresh, m)
    samples: list[GroupSample] = []
    for i, grp in enumerate(groups):
        cands = [Candidate(s.sa, s.pc, s.accept) for s in scores[i * m:(i + 1) * m]]
        plan = plan_group(cands, has_real=True, policy="real")
        real = gen.encode_videos([render(scenes[i])])[0]
        samples.append(build_group_sample(plan, text=gen.encode_prompts([prompts[i]])[0],
                                          generated=torch.stack([g.latent for g in grp]), candidates=cands,
                                          real=real, prompt=prompts[i]))
    kw = {"beta": args.beta} if args.beta is not None else {}
    cfg = TrainConfig(objective=args.objective, steps=args.steps, lr=args.lr, lr_min=args.lr / 10, warmup_steps=10,
                      lora_rank=args.rank, lora_alpha=float(args.rank), groups_per_step=args.groups_per_step,
                      seed=args.seed, **kw)
    trainer = Trainer(gen.transformer, cfg)
    t0 = time.perf_counter()
    summary = trainer.train_round(samples)
    train_s = time.perf_counter() - t0
    _, after = accept_rates(gen, judge, prompts, seeds, m)
    _, after_fresh = accept_rates(gen, judge, prompts, fresh, m)

    def rate(ss, key):
        vals = [getattr(s, key) if key != "joint" else s.joint() for s in ss if s.judged]
        return float(np.mean([bool(v) if key in ("accept", "joint") else v for v in vals]))

    result = {}
    for name, ss in (("before_same_seeds", scores), ("after_same_seeds", after),
                     ("before_fresh_seeds", scores_fresh), ("after_fresh_seeds", after_fresh)):
        result[name] = {k: rate(ss, k) for k in ("accept", "sa", "pc")}
    doc = {"benchmark": "one round of training on the built-in world", "date": date.today().isoformat(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "command": "python bench/train_effect.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "config": cfg.model_dump(mode="json"), "prompts": len(prompts), "group_size": m,
           "train": {"seconds": train_s, "updates": summary.updates, "loss_mean": summary.loss_mean,
                     "margin_mean": getattr(summary, "margin_mean", None),
                     "accuracy_mean": getattr(summary, "accuracy_mean", None),
                     "restored": summary.restored},
           "result": result, "wall_seconds": time.perf_counter() - t_start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    for k, v in result.items():
        print(f"{k:20s} accept {100 * v['accept']:5.1f} %  sa {v['sa']:.3f}  pc {v['pc']:.3f}")
    print(f"train: {summary.updates} updates in {train_s:.0f}s, loss {summary.loss_mean:.4f}, "
          f"margin {getattr(summary, 'margin_mean', None)}, pref acc {getattr(summary, 'accuracy_mean', None)}")
    return doc


if __name__ == "__main__":
    main()
