"""Export a trained Wan LoRA for ComfyUI.

ComfyUI loads Wan LoRAs keyed by the ORIGINAL Wan module names under ``diffusion_model.``:
``diffusion_model.blocks.N.self_attn.{q,k,v,o}`` (``cross_attn`` for attn2), each with
``.lora_A.weight`` (rank × in), ``.lora_B.weight`` (out × rank) and ``.alpha`` (a scalar; ComfyUI
scales the update by alpha / rank). diffusers names the same layers
``blocks.N.attn1.{to_q,to_k,to_v,to_out.0}``; the feed-forward is Wan's ``ffn.{0,2}``, diffusers'
``ffn.net.{0.proj,2}``. This module renames, adds the alphas and writes
one ``.safetensors`` file. diffusers' own ``WanPipeline.load_lora_weights`` also reads this
format (its ComfyUI converter), which the tests use to check the round trip.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from policy.lora import read_adapter

_ATTENTION = {"attn1": "self_attn", "attn2": "cross_attn"}
_PROJECTION = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}
_KEY = re.compile(r"^blocks\.(\d+)\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)\.(lora_A|lora_B)\.weight$")
# the feed-forward (train.lora_targets = 'attention+ffn'): diffusers' ffn.net.0.proj / ffn.net.2 are Wan's ffn.0 / ffn.2
_FFN_KEY = re.compile(r"^blocks\.(\d+)\.ffn\.net\.(0\.proj|2)\.(lora_A|lora_B)\.weight$")


def comfyui_key(diffusers_key: str) -> str:
    """``blocks.0.attn1.to_out.0.lora_B.weight`` → ``diffusion_model.blocks.0.self_attn.o.lora_B.weight``."""
    key = diffusers_key.removeprefix("transformer.")
    ffn = _FFN_KEY.match(key)
    if ffn is not None:
        block, layer, which = ffn.groups()
        return f"diffusion_model.blocks.{block}.ffn.{layer[0]}.{which}.weight"
    match = _KEY.match(key)
    if match is None:
        raise ValueError(f"no ComfyUI name for LoRA key {diffusers_key!r} (only Wan attention "
                         "and feed-forward projections are exported)")
    block, attn, proj, which = match.groups()
    return f"diffusion_model.blocks.{block}.{_ATTENTION[attn]}.{_PROJECTION[proj]}.{which}.weight"


def to_comfyui(state: dict[str, torch.Tensor], lora_alpha: float) -> dict[str, torch.Tensor]:
    """Rename a diffusers/peft Wan LoRA state dict and add one ``.alpha`` per layer."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = comfyui_key(key)
        out[new] = value.detach().contiguous()
        out[new.rsplit(".", 2)[0] + ".alpha"] = torch.tensor(float(lora_alpha))
    return out


def export_comfyui(adapter: str | Path, out_path: str | Path) -> Path:
    """Convert an adapter saved by :func:`policy.lora.save_adapter` into a ComfyUI LoRA file."""
    state, config = read_adapter(adapter)
    if config is None:
        raise ValueError(f"{adapter} carries no LoRA config (alpha unknown); save it with policy.lora.save_adapter")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("per-layer rank/alpha patterns are not supported by this export")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_comfyui(state, float(config["lora_alpha"])), str(out_path), metadata={"format": "pt"})
    return out_path
