"""Build the built-in world's trained prompt refiner (``policy/checkpoints/refiner``, PhyPrompt's two stages).

    python scripts/build_refiner.py                  # the shipped checkpoints (≈ 15 min on one core of two)
    python scripts/build_refiner.py --sft-steps 40 --grpo-steps 2 --out /tmp/refiner_smoke   # a quick smoke build

What it does:
1. a word-level tokenizer over the world's grammar (:func:`agent.trained_refiner.world_corpus`) and a
   fresh small GPT-2 (:func:`policy.refiner.build_gpt2`);
2. stage 1, SFT (trl's ``SFTTrainer``) on (prompt → law and choice → refined prompt) triples of
   ``--scenes`` *training* scenes per family (:func:`agent.trained_refiner.world_sft_data`); written to
   ``<out>_sft``;
3. stage 2, GRPO (trl's ``GRPOTrainer``) on the short and motion-level prompts of ``--grpo-scenes``
   training scenes per family: ``--group`` sampled rewrites per prompt, each rendered by the generator
   (``--checkpoint``, default the shipped base) with ``--probes`` clips and judged by the analytic
   judge against the prompt as written; reward w_sa·sa + w_pc·pc + w_fmt·valid, the weights moving
   from (1, 0) to (0.5, 0.5) over training, KL ``--beta`` to the SFT model; written to ``<out>``.

Each directory holds the model, its tokenizer and ``refiner.json`` (arguments, both stages' curves,
wall times, machine). No held-out scene is read: the held-out split's colour combinations never
occur in the training scenes (``agent.world_data``), and colours are delexicalised anyway.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from agent.trained_refiner import DEFAULT_REFINER, world_corpus, world_scenes, world_score, world_sft_data  # noqa: E402
from policy.refiner import GRPOSettings, TrainedRefiner, build_gpt2, build_word_tokenizer, grpo, sft  # noqa: E402
from policy.toy import ToyGenerator  # noqa: E402
from reward.world import physics as P  # noqa: E402
from reward.world.judge import PhysicsJudge  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_REFINER, help="stage-2 output directory (stage 1: <out>_sft)")
    ap.add_argument("--scenes", type=int, default=300, help="training scenes per family for the SFT pairs")
    ap.add_argument("--sft-steps", type=int, default=600)
    ap.add_argument("--sft-lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-layer", type=int, default=3)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--grpo-steps", type=int, default=100)
    ap.add_argument("--grpo-scenes", type=int, default=50, help="training scenes per family whose prompts GRPO refines")
    ap.add_argument("--grpo-prompts", type=int, default=8, help="prompts per GRPO step")
    ap.add_argument("--group", type=int, default=8, help="sampled rewrites per prompt")
    ap.add_argument("--probes", type=int, default=2, help="clips rendered per rewrite")
    ap.add_argument("--grpo-lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.04, help="KL coefficient to the SFT model")
    ap.add_argument("--checkpoint", type=Path, default=None, help="generator the rewards are rendered by (default: the shipped base)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    machine = f"{platform.machine()} · {platform.processor() or platform.system()} · torch {torch.__version__}"
    meta = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "date": date.today().isoformat(), "machine": machine}

    tokenizer = build_word_tokenizer(world_corpus(args.scenes))
    model = build_gpt2(tokenizer, n_layer=args.n_layer, n_embd=args.n_embd, seed=args.seed)
    refiner = TrainedRefiner(model, tokenizer, slot_words=list(P.PALETTE), meta=meta)
    meta.update(vocab=len(tokenizer), parameters=sum(p.numel() for p in model.parameters()))
    print(f"refiner: GPT-2 {args.n_layer}×{args.n_embd}, {meta['parameters']:,} parameters, vocabulary {len(tokenizer)}", flush=True)

    t0 = time.perf_counter()
    prompts, thoughts, refined = world_sft_data(args.scenes)
    history = sft(refiner, prompts, thoughts, refined, steps=args.sft_steps, lr=args.sft_lr, batch=args.batch, seed=args.seed)
    meta["sft"] = {"pairs": len(prompts), "steps": args.sft_steps, "wall_s": round(time.perf_counter() - t0, 1),
                   "loss": [[h["step"], round(h["loss"], 4)] for h in history]}
    refiner.meta = {**meta, "stage": "sft"}
    sft_dir = args.out.with_name(args.out.name + "_sft")
    refiner.save(sft_dir)
    print(f"stage 1 (SFT): {len(prompts)} pairs, {args.sft_steps} steps, final loss {history[-1]['loss']:.4f}, "
          f"{meta['sft']['wall_s']:.0f} s → {sft_dir}", flush=True)

    gen = ToyGenerator.from_checkpoint(args.checkpoint) if args.checkpoint else ToyGenerator.from_checkpoint()
    scenes = world_scenes(args.grpo_scenes)
    grpo_prompts = [s.prompts[level] for level in (0, 1) for s in scenes]
    t1 = time.perf_counter()

    def report(row: dict) -> None:
        sa = "-" if row["sa"] is None else f"{row['sa']:.3f}"
        pc = "-" if row["pc"] is None else f"{row['pc']:.3f}"
        print(f"  GRPO step {row['step']:3d}/{args.grpo_steps}: reward {row['reward']:.3f}  sa {sa}  pc {pc}  "
              f"valid {row['valid']:.2f}  w=({row['w_sa']:.2f}, {row['w_pc']:.2f})  kl {row['kl']:.3f}  "
              f"[{time.perf_counter() - t1:.0f} s]", flush=True)

    settings = GRPOSettings(steps=args.grpo_steps, prompts_per_step=args.grpo_prompts, group=args.group,
                            lr=args.grpo_lr, beta=args.beta, seed=args.seed)
    rows = grpo(refiner, grpo_prompts, world_score(gen, PhysicsJudge(), probes=args.probes, seed=args.seed),
                settings, on_step=report)
    meta["grpo"] = {"prompts": len(grpo_prompts), "steps": args.grpo_steps, "wall_s": round(time.perf_counter() - t1, 1),
                    "curriculum": [list(w) for w in settings.curriculum], "w_format": settings.w_format,
                    "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}
    refiner.meta = {**meta, "stage": "grpo"}
    refiner.save(args.out)
    print(f"stage 2 (GRPO): {args.grpo_steps} steps, {meta['grpo']['wall_s']:.0f} s → {args.out}", flush=True)


if __name__ == "__main__":
    main()
