"""``agent run --dry-run``: validate a preset and print what the run would do, loading nothing."""

from __future__ import annotations

import shlex

from rich.console import Console

from agent.config import RunConfig
from policy.objectives import NEEDS_REFERENCE

_TARGETS = {"self-attention": "self-attention q/k/v/o", "attention+ffn": "self-attention q/k/v/o + FFN",
            "all-linear": "self- and cross-attention q/k/v/o + FFN"}


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
    elif j.backend == "synthesis":
        console.print("[bold]judge[/] analysis-by-synthesis judge of the built-in world")
    else:
        console.print(f"[bold]judge[/] VLM {j.vlm.model} at {', '.join(j.vlm.base_urls)} "
                      f"(concurrency {j.vlm.concurrency}, video as {j.vlm.video_mode})")
    if cfg.evaluate.judge:
        ej = cfg.evaluate.judge
        console.print(f"[bold]evaluation judge[/] {ej.backend}" + (f" {ej.vlm.model}" if ej.vlm else ""))
    console.print(f"[bold]training[/] {t.objective}: {t.steps} steps/round, {t.groups_per_step} groups/step, "
                  f"LoRA r={t.lora_rank} α={t.lora_alpha} on {_TARGETS[t.lora_targets]}, reference {t.reference}, "
                  f"lr {t.lr:g}→{t.lr_min:g}, {t.mixed_precision}, gradient checkpointing "
                  f"{'on' if t.gradient_checkpointing else 'off'}, {cfg.processes} process(es)")
    if cfg.processes > 1:
        _print_processes(cfg, console)

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
                            train_samples=train_samples_per_step(t.objective, t.groups_per_step // cfg.processes,
                                                                 g.group_size),
                            reference=t.objective in NEEDS_REFERENCE, lora_rank=t.lora_rank,
                            lora_targets=t.lora_targets,
                            gradient_checkpointing=t.gradient_checkpointing,
                            text_encoder_offload=w.text_encoder_offload, vae_tiling=w.vae_tiling,
                            vae_slicing=w.vae_slicing, text_len=w.max_sequence_length)
            plan = estimate(spec, work)
            console.print("[bold]memory and time plan[/] (per GPU, estimates ±30 %, see policy/memory_plan.py"
                          + (f"; {t.groups_per_step // cfg.processes} group(s) per process and step"
                             if cfg.processes > 1 else "") + ")")
            for line in plan.lines():
                console.print("  " + line)
            if t.fsdp and cfg.processes > 1:
                _print_fsdp_memory(plan, spec.transformer.num_layers, cfg.processes, console)

    console.print("[bold]commands[/]")
    if j.backend == "vlm":
        port = j.vlm.base_urls[0].rsplit(":", 1)[-1].split("/")[0]
        console.print(f"  agent serve-vlm --vllm /path/to/vllm-env/bin/vllm --model {shlex.quote(j.vlm.model)} "
                      f"--port {port}    # in its own environment, on the judge GPUs")
    launch = f"agent run --preset {shlex.quote(preset)}"
    if cfg.processes > 1:
        console.print(f"  {launch}    # stores the run, then launches {cfg.processes} processes itself:")
        from agent.distributed import format_command, launch_command

        argv, env = launch_command("NAME", cfg, cuda=g.backend == "wan")
        console.print("    " + format_command(argv, env), soft_wrap=True)
    else:
        console.print(f"  {launch}")


def _print_processes(cfg: RunConfig, console: Console) -> None:
    """How a multi-process run splits its work and how the model is distributed."""
    from agent.distributed import choose_launcher

    n, t, g = cfg.processes, cfg.train, cfg.generate
    launcher = choose_launcher(cfg, cuda=g.backend == "wan")
    console.print(f"[bold]processes[/] {n} ({launcher}{' on GPUs' if g.backend == 'wan' else ''}): rank 0 runs the "
                  f"graph, the store and the judge; every rank generates whole batches of each stage's clips; "
                  f"global batch {t.groups_per_step} groups/step = {t.groups_per_step // n} per process, gradients "
                  f"averaged by {'FSDP2' if t.fsdp else 'DDP'}")
    if cfg.judge.backend == "vlm":
        v = cfg.judge.vlm
        console.print(f"[bold]judge concurrency[/] {v.concurrency} requests in flight from rank 0, round-robin over "
                      f"{len(v.base_urls)} URL(s): size it to the vLLM replicas × their batch")
    if t.fsdp:
        console.print(f"[bold]FSDP[/] FSDP2 (torch fully_shard, applied by the trainer) over {n} processes: one unit "
                      "per WanTransformerBlock, then the root; reshard after forward (FULL_SHARD); per-parameter "
                      "shards, so the fp32 LoRA sits beside the bf16 base; gradients reduce-scattered as means; "
                      f"{'gradient checkpointing per block; ' if t.gradient_checkpointing else ''}"
                      "LoRA and AdamW state gathered whole for saving; generation runs the sharded model in "
                      "lockstep on every rank")


def _print_fsdp_memory(plan, layers: int, processes: int, console: Console) -> None:
    """The plan's weight terms divided over the processes, plus the two blocks FSDP holds whole
    (the one running and the one prefetched)."""
    def sharded(parts: dict, peak: float) -> tuple[float, float, float]:
        w, lora = parts.get("transformer", 0.0), parts.get("lora+adam", 0.0)
        w_fsdp = w / processes + 2 * w / layers
        return w, w_fsdp, peak - w - lora + w_fsdp + lora / processes

    w, w_fsdp, train = sharded(plan.training_gib, plan.training_peak_gib)
    _, _, gen = sharded(plan.generation_gib, plan.generation_peak_gib)
    console.print(f"  with FSDP over {processes} GPUs: transformer weights {w:.1f} → {w_fsdp:.1f} GiB per GPU "
                  f"(1/{processes} + 2 gathered blocks of {layers}), LoRA+AdamW /{processes}: generation peak ≈ "
                  f"{gen:.1f} GiB, training peak ≈ {train:.1f} GiB per GPU")
