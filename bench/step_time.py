"""Step time of PhyGDPO (Eq. 13, one loser per group) vs full groupwise DPO (Eq. 6, all m losers).

Per group, phygdpo runs the policy and the reference on 2 samples (winner + one loser);
gdpo-full on m + 1. At m = 4 the ideal ratio is 2/5 = 0.40; the goal is ≤ 0.45. Both run on
copies of the same model and the same groups, in alternating rounds so that load from other
jobs on the machine hits both alike; the per-step times are medians over all measured steps.
With one torch thread (``OMP_NUM_THREADS=1``) the process CPU time (``time.process_time``)
is the step's compute, which other jobs on a shared machine do not inflate; wall time is
reported too.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/step_time.py`` → ``bench/results/step_time.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from policy.base import GroupSample  # noqa: E402
from policy.trainer import TrainConfig, Trainer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "step_time.json"
CONFIGS = {
    # the built-in world's generator size
    "toy": dict(model=dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=3,
                           out_channels=3, text_dim=384, freq_dim=256, ffn_dim=256, num_layers=2),
                clip=(3, 8, 16, 16), text_len=16),
    # a larger model where compute, not per-call overhead, dominates
    "medium": dict(model=dict(patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=64, in_channels=16,
                              out_channels=16, text_dim=512, freq_dim=256, ffn_dim=2048, num_layers=6),
                   clip=(16, 4, 16, 16), text_len=32),
}


def make_groups(spec: dict, n: int, m: int) -> list[GroupSample]:
    g = torch.Generator().manual_seed(0)
    clip, text_dim = spec["clip"], spec["model"]["text_dim"]
    return [GroupSample(text=torch.randn(spec["text_len"], text_dim, generator=g), winner=torch.randn(clip, generator=g),
                        losers=torch.randn(m, *clip, generator=g), loser_sa=torch.rand(m, generator=g),
                        loser_pc=torch.rand(m, generator=g)) for _ in range(n)]


def measure(name: str, m: int, groups_per_step: int, rounds: int, steps: int, warmup: int) -> dict:
    spec = CONFIGS[name]
    torch.manual_seed(0)
    base = WanTransformer3DModel(**spec["model"])
    groups = make_groups(spec, n=4 * groups_per_step, m=m)
    cpu_marks: list[float] = []  # process CPU time at the end of each step (via on_step)
    trainers = {}
    for objective in ("phygdpo", "gdpo-full"):
        cfg = TrainConfig(objective=objective, steps=steps + warmup, groups_per_step=groups_per_step,
                          lora_rank=48, lora_alpha=48)
        trainers[objective] = Trainer(copy.deepcopy(base), cfg, on_step=lambda _: cpu_marks.append(time.process_time()))
    wall: dict[str, list[float]] = {k: [] for k in trainers}
    cpu: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(rounds):
        for objective, trainer in trainers.items():  # alternate, so background load hits both
            cpu_marks[:] = [time.process_time()]
            history = trainer.train_round(groups).history
            wall[objective] += [h["seconds"] for h in history[warmup:]]
            cpu[objective] += [b - a for a, b in zip(cpu_marks, cpu_marks[1:])][warmup:]
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"params": sum(p.numel() for p in base.parameters()), "m": m, "groups_per_step": groups_per_step,
            "samples_per_pass": {"phygdpo": 2 * groups_per_step, "gdpo-full": (m + 1) * groups_per_step},
            "steps_measured": {k: len(v) for k, v in wall.items()},
            "median_step_wall_s": med_wall, "iqr_step_wall_s": {k: statistics.quantiles(v, n=4)[::2] for k, v in wall.items()},
            "median_step_cpu_s": med_cpu, "iqr_step_cpu_s": {k: statistics.quantiles(v, n=4)[::2] for k, v in cpu.items()},
            "ratio_wall": med_wall["phygdpo"] / med_wall["gdpo-full"],
            "ratio_cpu": med_cpu["phygdpo"] / med_cpu["gdpo-full"], "ideal_ratio": 2 / (m + 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--m", type=int, default=4)
    parser.add_argument("--groups-per-step", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    results = {}
    for name in args.configs:
        t0 = time.perf_counter()
        results[name] = measure(name, args.m, args.groups_per_step, args.rounds, args.steps, args.warmup)
        r = results[name]
        print(f"{name:7s} {r['params'] / 1e6:6.1f} M params | CPU time/step: phygdpo {r['median_step_cpu_s']['phygdpo']:.3f} s, "
              f"gdpo-full {r['median_step_cpu_s']['gdpo-full']:.3f} s, ratio {r['ratio_cpu']:.3f} | wall ratio "
              f"{r['ratio_wall']:.3f} (ideal {r['ideal_ratio']:.2f}, goal ≤ 0.45)  [{time.perf_counter() - t0:.0f} s]",
              flush=True)
    out = {"benchmark": "step_time", "what": "median CPU and wall seconds per training step, phygdpo vs gdpo-full",
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "note": "CPU fp32; 2 cores shared with other jobs, so absolute times are noisy"},
           "args": vars(args), "results": results, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
