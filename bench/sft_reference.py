"""The supervised reference point of issue 20: continue the base's own pretraining on real videos.

Loads the shipped base, continues its pretraining recipe (``policy.pretrain``: full weights, the
recipe's timestep sampling, prompt dropout, AdamW with warm-up and cosine decay) on the real
videos of the world's *training* scenes for ``--steps`` steps, then generates the unseen held-out
prompts of the default preset (64 held-out scenes × short and motion-level prompts, 4 clips each:
512 clips, the same prompts and noise for base and trained) and judges them with both judges.
Reports each model's joint success (Wilson 95 % CI) and the paired difference (bootstrap over
prompt texts, 95 % CI). Writes ``bench/results/sft_reference/NAME.json``.

The default budget matches the loop's: the default preset trains 5 rounds × 200 steps × 4 groups,
i.e. 4000 winner samples, which is 250 pretraining steps at batch 16.

    python bench/sft_reference.py                               # the loop's 48 training scenes, lr 1e-4
    python bench/sft_reference.py --lr 1e-3 --name recipe-lr    # the recipe's own peak lr
    python bench/sft_reference.py --scenes 500 --name more-data # 500 training scenes per family
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",")]
    except ValueError:
        levels = []
    if not levels or any(lv not in (0, 1, 2) for lv in levels):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of prompt levels 0, 1, 2")
    return levels


def main(argv=None):
    from _heldout import Heldout
    from agent.world_data import split_seeds
    from policy.lora import attach_lora
    from policy.pretrain import PretrainConfig, pretrain
    from policy.toy import ToyGenerator
    from reward.world import physics as P
    from reward.world.simulator import render, sample_scene

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=250, help="pretraining steps (default: the loop's 5-round budget)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--scenes", type=int, default=12, help="training scenes per family (the default preset: 12)")
    ap.add_argument("--levels", default=[0], type=_levels, help="prompt levels trained on, comma-separated (the loop: 0)")
    ap.add_argument("--heldout", type=int, default=16, help="held-out scenes per family (default preset: 16)")
    ap.add_argument("--clips", type=int, default=4, help="clips per held-out prompt")
    ap.add_argument("--lora-rank", type=int, default=0, help="train a LoRA of this rank instead of the full "
                    "weights (0: full weights, the recipe's own way)")
    ap.add_argument("--lora-targets", default="self-attention", choices=("self-attention", "attention+ffn", "all-linear"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="default")
    ap.add_argument("--save", type=Path, default=None, help="also write the trained model as a base checkpoint "
                    "(.safetensors; usable as generate.checkpoint)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results" / "sft_reference")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    levels = args.levels
    if min(args.steps, args.batch, args.scenes, args.heldout, args.clips) < 1 or args.lora_rank < 0:
        ap.error("--steps, --batch, --scenes, --heldout and --clips must be ≥ 1 and --lora-rank ≥ 0")
    if args.save is not None and args.lora_rank:
        ap.error("--save writes a base checkpoint (full weights); it cannot be used with --lora-rank")

    gen = ToyGenerator.from_checkpoint()
    meta = gen.metadata["training"]  # the recipe the shipped base was built with
    recipe = {k: meta[k] for k in ("batch", "lr_min", "warmup", "weight_decay", "grad_clip", "prompt_dropout",
                                   "timesteps", "logit_mean", "logit_std", "timestep_shift", "high_noise_fraction",
                                   "high_noise_min", "x0_weight")}
    recipe["betas"] = tuple(meta["betas"])
    cfg = replace(PretrainConfig(**recipe), steps=args.steps, batch=args.batch, lr=args.lr,
                  lr_min=min(recipe["lr_min"], args.lr / 10), warmup=min(recipe["warmup"], args.steps // 10),
                  seed=args.seed, log_every=max(1, args.steps // 5))

    train = [sample_scene(f, s) for f in P.FAMILIES for s in split_seeds(f, False, args.scenes)]
    videos = np.stack([render(s) for s in train])
    prompts = [[s.prompts[lv] for lv in levels] for s in train]
    held = Heldout(args.heldout, args.clips)

    torch.manual_seed(args.seed)
    before = held.judge(gen)
    if args.lora_rank:
        attach_lora(gen.transformer, rank=args.lora_rank, alpha=float(args.lora_rank), targets=args.lora_targets)
    t0 = time.perf_counter()
    losses = pretrain(gen.transformer, videos, prompts, gen.encode_prompts, cfg, log=print,
                      to_latents=gen.encode_videos)
    train_s = time.perf_counter() - t0
    after = held.judge(gen)
    if args.save is not None:
        gen.save_checkpoint(args.save, training={"continued_from": "toy_base", "sft_reference": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}})

    result = held.compare(before, after)
    doc = {"benchmark": "supervised reference: the base's pretraining continued on the training scenes' real videos",
           "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
           f"{torch.get_num_threads()} threads",
           "command": "python bench/sft_reference.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
           "train_scenes": len(train), "levels": levels, "sample_steps": args.steps * args.batch,
           "heldout_prompts": len(held.prompts), "clips": len(held.clusters),
           "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:])),
           "train_seconds": train_s, "result": result, "wall_seconds": time.perf_counter() - t_start}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{args.name}.json"
    out.write_text(json.dumps(doc, indent=2, default=float))
    print(f"wrote {out} ({doc['wall_seconds']:.0f} s)")
    return doc


if __name__ == "__main__":
    main()
