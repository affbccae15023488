"""Is a trained adapter better than a random one of the same size? The null control of issue 20.

Takes adapters the loop trained (``--adapter``, any number) and, for each, ``--draws`` random
adapters with the same targets, rank and, module by module, the same Frobenius norm of the
weight update ΔW = (α/r)·B·A (Gaussian A and B, then B rescaled). Every model generates the
default preset's unseen held-out prompts (512 clips, the same prompts and noise) and is judged by
both judges, paired against the base.

If the random updates cost as much under the synthesis judge as the trained one, the drop the
loop shows there is what any update of that size does to the base, not something the preference
signal taught; if the trained adapter gains under the training judge where the random ones do
not, that gain is learnt. Writes ``bench/results/perturb_control.json``.

    python bench/perturb_control.py --adapter runs/loop-s0/adapters/round_003 --draws 3
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

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def update_norms(state: dict[str, torch.Tensor], scale: float) -> dict[str, float]:
    """‖ΔW‖_F per LoRA module (keyed by the module's prefix) of a peft state dict."""
    out = {}
    for key, a in state.items():
        if ".lora_A." in key:
            b = state[key.replace(".lora_A.", ".lora_B.")]
            out[key.split(".lora_A.")[0]] = float((scale * b @ a).norm())
    return out


def random_like(state: dict[str, torch.Tensor], scale: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A random adapter with ``state``'s shapes and, per module, the same ‖ΔW‖_F."""
    norms = update_norms(state, scale)
    out = {}
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        kb = key.replace(".lora_A.", ".lora_B.")
        ra = torch.randn(a.shape, generator=gen)
        rb = torch.randn(state[kb].shape, generator=gen)
        n = float((scale * rb @ ra).norm())
        target = norms[key.split(".lora_A.")[0]]
        out[key], out[kb] = ra, rb * (target / n if n > 0 else 0.0)
    return out


def main(argv=None):
    from _heldout import Heldout
    from peft import set_peft_model_state_dict
    from policy.lora import ADAPTER_NAME, load_adapter, lora_config, lora_state_dict, read_adapter
    from policy.toy import ToyGenerator

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", type=Path, action="append", required=True, help="a saved adapter directory")
    ap.add_argument("--draws", type=int, default=3, help="random adapters per trained one")
    ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "perturb_control.json")
    args = ap.parse_args(argv)
    if min(args.draws, args.heldout, args.clips) < 1:
        ap.error("--draws, --heldout and --clips must be ≥ 1")
    for path in args.adapter:  # all of them readable before any clip is made
        try:
            if not path.is_dir():
                raise ValueError("not a directory")
            state, _ = read_adapter(path)
            if not any(".lora_A." in k for k in state):
                raise ValueError("no LoRA weights in it")
        except (OSError, ValueError) as e:
            print(f"error: no adapter at {path} ({e})", file=sys.stderr)
            return 2
    t_start = time.perf_counter()
    held = Heldout(args.heldout, args.clips)
    base = ToyGenerator.from_checkpoint()
    base_scores = held.judge(base)
    gen = torch.Generator().manual_seed(args.seed)
    results = []
    for path in args.adapter:
        model = ToyGenerator.from_checkpoint()
        load_adapter(model.transformer, path)
        cfg = lora_config(model.transformer)
        scale = float(cfg.lora_alpha) / cfg.r
        state, _ = read_adapter(path)
        norms = update_norms(state, scale)
        entry = {"adapter": str(path), "rank": cfg.r, "modules": len(norms),
                 "update_norm_total": float(sum(v * v for v in norms.values()) ** 0.5)}
        entry["trained"] = held.compare(base_scores, held.judge(model), label=f"{path.name} trained  ")
        entry["random"] = []
        for d in range(args.draws):
            rand = random_like(state, scale, gen)
            loaded = set_peft_model_state_dict(model.transformer, rand, adapter_name=ADAPTER_NAME)
            stray = [k for k in getattr(loaded, "unexpected_keys", []) if "lora_" in k]
            now = update_norms(lora_state_dict(model.transformer), scale)
            if stray or now.keys() != norms.keys() or any(abs(now[k] - norms[k]) > 1e-4 * (1 + norms[k]) for k in now):
                raise RuntimeError(f"the random adapter did not load in place of {path} ({stray[:3]})")
            entry["random"].append(held.compare(base_scores, held.judge(model), label=f"{path.name} random {d}  "))
        results.append(entry)
    doc = {"benchmark": "trained adapters against random adapters of the same per-module update norm",
           "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
           f"{torch.get_num_threads()} threads",
           "command": "python bench/perturb_control.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "clips": len(held.clusters), "base": {k: float(v.mean()) for k, v in base_scores.items()},
           "results": results, "wall_seconds": time.perf_counter() - t_start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=float))
    print(f"wrote {args.out} ({doc['wall_seconds']:.0f} s)")
    return doc


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
