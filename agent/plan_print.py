"""``agent run --dry-run``: validate a preset and print what the run would do, loading nothing."""

from __future__ import annotations

import shlex

from rich.console import Console

from agent.config import RunConfig


def print_plan(cfg: RunConfig, preset: str, console: Console | None = None) -> None:
    console = console or Console()
    g, j, t = cfg.generate, cfg.judge, cfg.train
    console.print(f"[bold]preset[/] {preset}: valid. {cfg.rounds} rounds × {cfg.plan.prompts_per_round} prompts × "
                  f"group of {g.group_size} = {cfg.rounds * cfg.plan.prompts_per_round * g.group_size} training clips")
    if g.backend == "toy":
        console.print("[bold]generator[/] built-in world: tiny pixel-space WanTransformer3DModel "
                      f"({g.toy.checkpoint or 'shipped base checkpoint'})")
    else:
        w = g.wan
        console.print(f"[bold]generator[/] Wan: {w.model}, {w.num_frames} frames at {w.height}×{w.width}, "
                      f"{w.num_inference_steps} steps, CFG {w.guidance_scale}")
    if j.backend == "physics":
        console.print("[bold]judge[/] analytic physics judge of the built-in world")
    else:
        console.print(f"[bold]judge[/] VLM {j.vlm.model} at {', '.join(j.vlm.base_urls)} "
                      f"(concurrency {j.vlm.concurrency}, video as {j.vlm.video_mode})")
    if cfg.evaluate.judge is not None:
        ej = cfg.evaluate.judge
        console.print(f"[bold]evaluation judge[/] {ej.backend}" + (f" {ej.vlm.model}" if ej.vlm else ""))
    console.print(f"[bold]training[/] {t.objective}: {t.steps} steps/round, {t.groups_per_step} groups/step, "
                  f"LoRA r={t.lora_rank} α={t.lora_alpha} on self-attention q/k/v/o, reference {t.reference}, "
                  f"lr {t.lr:g}→{t.lr_min:g}, {t.mixed_precision}, gradient checkpointing "
                  f"{'on' if t.gradient_checkpointing else 'off'}, {cfg.processes} process(es)")

    if g.backend == "wan":
        from policy.memory_plan import Workload, estimate, spec_for_model, train_samples_per_step

        w = g.wan
        try:
            spec = spec_for_model(w.model)
        except ValueError as e:
            console.print(f"[yellow]memory plan unavailable: {e}")
            spec = None
        if spec is not None:
            work = Workload(height=w.height, width=w.width, num_frames=w.num_frames,
                            num_inference_steps=w.num_inference_steps, guidance=w.guidance_scale > 1.0,
                            gen_batch=w.batch_size,
                            train_samples=train_samples_per_step(t.objective, t.groups_per_step, g.group_size),
                            reference=t.objective not in ("sft", "rwr"), lora_rank=t.lora_rank,
                            gradient_checkpointing=t.gradient_checkpointing,
                            text_encoder_offload=w.text_encoder_offload, vae_tiling=w.vae_tiling,
                            vae_slicing=w.vae_slicing, text_len=w.max_sequence_length)
            plan = estimate(spec, work)
            console.print("[bold]memory and time plan[/] (per GPU, estimates ±30 %, see policy/memory_plan.py)")
            for line in plan.lines():
                console.print("  " + line)

    console.print("[bold]commands[/]")
    if j.backend == "vlm":
        port = j.vlm.base_urls[0].rsplit(":", 1)[-1].split("/")[0]
        console.print(f"  agent serve-vlm --vllm /path/to/vllm-env/bin/vllm --model {shlex.quote(j.vlm.model)} "
                      f"--port {port}    # in its own environment, on the judge GPUs")
    launch = f"agent run --preset {shlex.quote(preset)}"
    if cfg.processes > 1:
        console.print(f"  {launch}    # re-launches itself under accelerate with {cfg.processes} processes")
    else:
        console.print(f"  {launch}")
