"""Per-GPU memory and time estimate of a Wan2.1 round, without loading any weights.

``agent run --dry-run`` prints this plan so a user can see, before renting a GPU, whether a preset
fits and roughly how long generation and training take. Everything here is arithmetic on the
model's configuration (read from ``transformer/config.json`` etc. of a local model directory, or
the built-in Wan2.1-T2V 1.3B/14B specs for a hub id); nothing imports torch.

Notation: ``d`` transformer width, ``n_l`` layers, ``f`` FFN width, ``(p_t, p_h, p_w)`` patch,
``L`` text tokens (UMT5, 512), ``B_g`` clips per pipeline call, ``B_t`` samples in one policy
forward of training (2 per group for the pairwise objectives: winner + one loser), ``r`` LoRA rank.

Geometry (Wan VAE: 4× in time, 8× in space, ``z`` = 16 channels)::

    T' = (F − 1)/4 + 1,   H' = H/8,   W' = W/8
    N  = (T'/p_t)·(H'/p_h)·(W'/p_w)                       transformer tokens per clip

Parameters (exact for diffusers' ``WanTransformer3DModel``; tests check against the real class)::

    P_block = 8d² + 2df + 21d + f                         self/cross-attn q,k,v,o (+bias), FFN,
                                                           qk-norms, cross-attn norm, modulation
    P       = n_l·P_block + (c_in·p + 1)d + (c_freq + 2)d + d² + 6d² + 6d
              + (c_text + 2)d + d² + (d + 1)·c_out·p + 2d  embeddings, time projection, head
    P_LoRA  = n_l · 4 · 2rd                               rank-r A and B on attn1.{q,k,v,o}

Memory (bytes; bf16 = 2, fp32 = 4)::

    weights      = 2P                                     transformer in bf16
    LoRA         = 16·P_LoRA                              fp32 weights + grads + AdamW m, v
    text encoder = 2·P_UMT5 on the GPU, 0 when offloaded to CPU (embeddings are cached, so
                   training never needs it)
    VAE          = 4·P_VAE                                fp32 (decoding quality)
    train acts   = 2·B_t·N·(n_l·d + a_train)              with gradient checkpointing (block inputs
                                                           + one block recomputed), or
                   2·B_t·N·n_l·a_train                     without
                   a_train = 16d + 2f values/token: what autograd keeps for one block (norms,
                   modulated inputs, q/k/v, attention output, cross-attention, the FFN hidden
                   before and after GELU); attention itself is O(N) with SDPA flash/mem-efficient
                   kernels (a materialised N² score matrix would not fit at all)
    infer acts   = 2·B_g·N·(4d + 2f)                      one block's transient working set
    VAE decode   = 4·B_v·(8·c_vae·4·h·w + 3·F·H·W)        B_v = 1 with slicing else B_g; the
                   causal decoder works on ≤ 4 frames at a time with ~8 live full-resolution
                   maps of c_vae = 96 channels; tiling bounds h×w by a 256×256 tile
    overhead     = 1.5 GiB                                CUDA context, allocator slack

    generation peak = weights + LoRA + text encoder + VAE + overhead + max(infer acts, VAE decode)
    training peak   = weights + LoRA + text encoder + VAE + overhead + train acts

The activation coefficients (16d + 2f, 4d + 2f, 8 VAE maps) are modelling assumptions, stated
so that they can be checked against a measurement on a real GPU; treat the totals as ±30 %.

Time, from FLOPs at a stated model-FLOP utilisation (MFU) of a stated peak::

    F_lin  = n_l·[2N(6d² + 2df) + 4Ld²]                   projections (cross-attn k,v on text)
    F_attn = n_l·[4N²d + 4NLd]                            self- and cross-attention scores·values
    F      = F_lin + F_attn                               one forward of one clip
    generation  s/clip = S·(2 if CFG else 1)·F / (peak·MFU)     S sampling steps
    training    s/step = B_t·[F (reference, no grad) + F (policy) + F·ckpt (recompute)
                              + F_lin + 2.5·F_attn (backward: frozen weights need input grads
                              only; flash-attention backward ≈ 2.5× its forward)] / (peak·MFU)

VAE and text-encoder time are not included (small next to 50 guided steps of the transformer).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

GIB = 1024**3

# Modelling assumptions (see module docstring).
TRAIN_ACT_PER_D = 16
TRAIN_ACT_PER_FFN = 2
INFER_ACT_PER_D = 4
INFER_ACT_PER_FFN = 2
VAE_LIVE_MAPS = 8
VAE_CHUNK_FRAMES = 4
VAE_TILE = 256  # diffusers' AutoencoderKLWan tile_sample_min_height/width
ATTN_BACKWARD_FACTOR = 2.5


@dataclass(frozen=True)
class TransformerSpec:
    """The dimensions of a ``WanTransformer3DModel`` that memory and FLOPs depend on."""

    dim: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    text_dim: int = 4096
    freq_dim: int = 256
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch_size
        return pt * ph * pw

    def params(self) -> int:
        """Exact parameter count of diffusers' ``WanTransformer3DModel`` (Wan2.1 T2V layout)."""
        d, f, p = self.dim, self.ffn_dim, self.patch_volume
        block = 8 * d * d + 2 * d * f + 21 * d + f
        embed = ((self.in_channels * p + 1) * d  # patch embedding
                 + (self.freq_dim + 1) * d + d * d + d  # time embedder (2 linears)
                 + 6 * d * d + 6 * d  # time projection to the 6 modulation vectors
                 + (self.text_dim + 1) * d + d * d + d  # text embedder (2 linears)
                 + (d + 1) * self.out_channels * p  # head
                 + 2 * d)  # output scale/shift table
        return self.num_layers * block + embed

    def lora_params(self, rank: int, targets: str = "self-attention") -> int:
        """LoRA A (r×in) and B (out×r) per target linear of every block (``policy.lora`` targets):
        the four d×d self-attention projections; + the FFN's d→f and f→d ("attention+ffn"); + the
        four d×d cross-attention projections ("all-linear")."""
        if targets not in ("self-attention", "attention+ffn", "all-linear"):
            raise ValueError(f"unknown LoRA targets {targets!r}")
        per_block = 4 * 2 * rank * self.dim
        if targets != "self-attention":
            per_block += 2 * rank * (self.dim + self.ffn_dim)
        if targets == "all-linear":
            per_block += 4 * 2 * rank * self.dim
        return self.num_layers * per_block

    @classmethod
    def from_config(cls, cfg: dict) -> "TransformerSpec":
        """From diffusers' ``transformer/config.json``."""
        return cls(dim=int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"]),
                   num_layers=int(cfg["num_layers"]), num_heads=int(cfg["num_attention_heads"]),
                   ffn_dim=int(cfg["ffn_dim"]), text_dim=int(cfg.get("text_dim", 4096)),
                   freq_dim=int(cfg.get("freq_dim", 256)), in_channels=int(cfg.get("in_channels", 16)),
                   out_channels=int(cfg.get("out_channels", 16)),
                   patch_size=tuple(int(x) for x in cfg.get("patch_size", (1, 2, 2))))


@dataclass(frozen=True)
class TextEncoderSpec:
    """UMT5 encoder dimensions (defaults: google/umt5-xxl, Wan's text encoder)."""

    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    num_heads: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    relative_attention_num_buckets: int = 32
    gated: bool = True

    def params(self) -> int:
        """Exact parameter count of transformers' ``UMT5EncoderModel`` (tied embedding counted once)."""
        d, inner = self.d_model, self.d_kv * self.num_heads
        attn = 4 * d * inner + self.relative_attention_num_buckets * self.num_heads  # UMT5: bias per layer
        ffn = (3 if self.gated else 2) * d * self.d_ff
        return self.vocab_size * d + self.num_layers * (attn + ffn + 2 * d) + d

    @classmethod
    def from_config(cls, cfg: dict) -> "TextEncoderSpec":
        return cls(vocab_size=int(cfg["vocab_size"]), d_model=int(cfg["d_model"]), d_kv=int(cfg["d_kv"]),
                   num_heads=int(cfg["num_heads"]), d_ff=int(cfg["d_ff"]), num_layers=int(cfg["num_layers"]),
                   relative_attention_num_buckets=int(cfg.get("relative_attention_num_buckets", 32)),
                   gated=str(cfg.get("feed_forward_proj", "gated-gelu")).startswith("gated"))


WAN21_VAE_PARAMS = 126_892_531  # diffusers AutoencoderKLWan() defaults; checked by tests/test_wan.py


@dataclass(frozen=True)
class VaeSpec:
    """Wan VAE geometry; ``params`` is the Wan2.1 VAE's, scaled by (base_dim/96)² for other widths."""

    z_dim: int = 16
    scale_temporal: int = 4
    scale_spatial: int = 8
    base_dim: int = 96

    def params(self) -> int:
        return round(WAN21_VAE_PARAMS * (self.base_dim / 96) ** 2)

    @classmethod
    def from_config(cls, cfg: dict) -> "VaeSpec":
        return cls(z_dim=int(cfg.get("z_dim", 16)), scale_temporal=int(cfg.get("scale_factor_temporal") or 4),
                   scale_spatial=int(cfg.get("scale_factor_spatial") or 8), base_dim=int(cfg.get("base_dim", 96)))


@dataclass(frozen=True)
class WanSpec:
    name: str
    transformer: TransformerSpec
    text_encoder: TextEncoderSpec = TextEncoderSpec()
    vae: VaeSpec = VaeSpec()


# Dimensions from the released diffusers configs (Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers).
WAN21_T2V_1_3B = WanSpec("Wan2.1-T2V-1.3B", TransformerSpec(dim=1536, num_layers=30, num_heads=12, ffn_dim=8960))
WAN21_T2V_14B = WanSpec("Wan2.1-T2V-14B", TransformerSpec(dim=5120, num_layers=40, num_heads=40, ffn_dim=13824))


def spec_for_model(model: str) -> WanSpec:
    """The spec of a local diffusers model directory (read from its JSON configs, no weights) or of
    a hub id naming Wan2.1 1.3B or 14B."""
    path = Path(model).expanduser()
    if path.is_dir():
        cfg_path = path / "transformer" / "config.json"
        if not cfg_path.is_file():
            raise ValueError(f"{path} has no transformer/config.json; is it a diffusers Wan model directory?")
        spec = WanSpec(path.name, TransformerSpec.from_config(json.loads(cfg_path.read_text())))
        te, vae = path / "text_encoder" / "config.json", path / "vae" / "config.json"
        if te.is_file():
            spec = replace(spec, text_encoder=TextEncoderSpec.from_config(json.loads(te.read_text())))
        if vae.is_file():
            spec = replace(spec, vae=VaeSpec.from_config(json.loads(vae.read_text())))
        return spec
    name = model.lower()
    if re.search(r"1[._-]?3b", name):
        return WAN21_T2V_1_3B
    if "14b" in name:
        return WAN21_T2V_14B
    raise ValueError(f"cannot tell the Wan architecture of {model!r}: name a Wan2.1 1.3B/14B hub id or a local "
                     "directory with transformer/config.json")


@dataclass(frozen=True)
class Workload:
    """What one round does on one GPU."""

    height: int = 480
    width: int = 832
    num_frames: int = 81
    num_inference_steps: int = 50
    guidance: bool = True  # classifier-free guidance: two transformer calls per step
    gen_batch: int = 1  # clips per pipeline call
    train_samples: int = 8  # samples in one policy forward (2 × groups per step for pairwise objectives)
    reference: bool = True  # DPO-style objectives also run the LoRA-off reference (no grad)
    lora_rank: int = 48
    lora_targets: str = "self-attention"  # policy.lora targets: "self-attention" | "attention+ffn" | "all-linear"
    gradient_checkpointing: bool = True
    text_encoder_offload: bool = False
    vae_tiling: bool = False
    vae_slicing: bool = True
    text_len: int = 512

    def __post_init__(self):
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1 (e.g. 49, 81), got {self.num_frames}")
        if self.height % 16 or self.width % 16 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive multiples of 16, got {self.height}×{self.width}")
        for name in ("num_inference_steps", "gen_batch", "train_samples", "lora_rank", "text_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Hardware:
    """Stated assumptions for the time estimate (not measurements)."""

    name: str = "H100-SXM"
    peak_tflops: float = 989.0  # dense BF16 tensor-core peak
    mfu: float = 0.4
    overhead_gib: float = 1.5
    memory_gib: float = 79.6  # usable memory of an 80 GB card

    def __post_init__(self):
        if not 0.0 < self.mfu <= 1.0 or self.peak_tflops <= 0 or self.memory_gib <= 0:
            raise ValueError(f"hardware needs 0 < mfu ≤ 1, peak_tflops > 0 and memory_gib > 0, got {self}")


def train_samples_per_step(objective: str, groups_per_step: int, group_size: int) -> int:
    """Samples in one policy forward of the trainer for an objective."""
    if objective == "sft":
        return groups_per_step
    if objective == "gdpo-full":
        return groups_per_step * (group_size + 1)
    # phygdpo, flow-dpo, rwr, diffusion-nft: winner + one loser per group; flow-grpo: two (clip, step) draws
    return 2 * groups_per_step


@dataclass
class MemoryPlan:
    model: str
    tokens: int
    latent_shape: tuple[int, int, int, int]
    transformer_params: int
    lora_params: int
    text_encoder_params: int
    generation_gib: dict[str, float]
    training_gib: dict[str, float]
    generation_peak_gib: float
    training_peak_gib: float
    generate_seconds_per_clip: float
    train_seconds_per_step: float
    forward_tflops: float
    assumptions: dict = field(default_factory=dict)

    @property
    def peak_gib(self) -> float:
        return max(self.generation_peak_gib, self.training_peak_gib)

    @property
    def fits(self) -> bool:
        return self.peak_gib <= self.assumptions["memory_gib"]

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_gib": self.peak_gib, "fits": self.fits}

    def lines(self) -> list[str]:
        """A short human-readable summary (what ``--dry-run`` prints)."""
        c, t, h, w = self.latent_shape
        out = [f"model {self.model}: transformer {self.transformer_params / 1e9:.2f} B params, "
               f"LoRA {self.lora_params / 1e6:.1f} M, text encoder {self.text_encoder_params / 1e9:.2f} B",
               f"latent {c}×{t}×{h}×{w} → {self.tokens} tokens per clip"]
        for label, parts, peak in (("generation", self.generation_gib, self.generation_peak_gib),
                                   ("training", self.training_gib, self.training_peak_gib)):
            detail = ", ".join(f"{k} {v:.1f}" for k, v in parts.items() if v >= 0.05)
            out.append(f"{label} peak ≈ {peak:.1f} GiB per GPU ({detail})")
        a = self.assumptions
        out.append(f"time at {a['mfu']:.0%} MFU of {a['peak_tflops']:.0f} TFLOP/s ({a['hardware']}): "
                   f"≈ {self.generate_seconds_per_clip:.0f} s per clip, ≈ {self.train_seconds_per_step:.1f} s "
                   f"per training step ({self.forward_tflops:.0f} TFLOP per clip forward)")
        if not self.fits:
            out.append(f"WARNING: peak {self.peak_gib:.1f} GiB exceeds {a['memory_gib']:.0f} GiB per GPU; lower "
                       "groups per step, enable text_encoder_offload / gradient checkpointing, or use a larger GPU")
        return out


def estimate(spec: WanSpec, work: Workload, hw: Hardware = Hardware()) -> MemoryPlan:
    """Per-GPU memory by component and time per clip / per step (formulas in the module docstring)."""
    tr, vae = spec.transformer, spec.vae
    pt, ph, pw = tr.patch_size
    t_lat = (work.num_frames - 1) // vae.scale_temporal + 1
    h_lat, w_lat = work.height // vae.scale_spatial, work.width // vae.scale_spatial
    n = (t_lat // pt) * (h_lat // ph) * (w_lat // pw)
    d, f, nl, L = tr.dim, tr.ffn_dim, tr.num_layers, work.text_len

    p_tr, p_lora, p_te = tr.params(), tr.lora_params(work.lora_rank, work.lora_targets), spec.text_encoder.params()
    common = {
        "transformer": 2 * p_tr / GIB,
        "lora+adam": 16 * p_lora / GIB,
        "text encoder": 0.0 if work.text_encoder_offload else 2 * p_te / GIB,
        "vae": 4 * vae.params() / GIB,
        "overhead": hw.overhead_gib,
    }
    infer_acts = 2 * work.gen_batch * n * (INFER_ACT_PER_D * d + INFER_ACT_PER_FFN * f) / GIB
    tile_h = min(work.height, VAE_TILE) if work.vae_tiling else work.height
    tile_w = min(work.width, VAE_TILE) if work.vae_tiling else work.width
    clips_in_vae = 1 if work.vae_slicing else work.gen_batch
    vae_decode = 4 * clips_in_vae * (VAE_LIVE_MAPS * vae.base_dim * VAE_CHUNK_FRAMES * tile_h * tile_w
                                     + 3 * work.num_frames * work.height * work.width) / GIB
    a_train = TRAIN_ACT_PER_D * d + TRAIN_ACT_PER_FFN * f
    per_token = (nl * d + a_train) if work.gradient_checkpointing else nl * a_train
    train_acts = 2 * work.train_samples * n * per_token / GIB

    generation = {**common, "activations": infer_acts, "vae decode": vae_decode}
    training = {**common, "activations": train_acts}
    gen_peak = sum(common.values()) + max(infer_acts, vae_decode)
    train_peak = sum(common.values()) + train_acts

    f_lin = nl * (2 * n * (6 * d * d + 2 * d * f) + 4 * L * d * d)
    f_attn = nl * (4 * n * n * d + 4 * n * L * d)
    fwd = f_lin + f_attn
    rate = hw.peak_tflops * 1e12 * hw.mfu
    gen_s = work.num_inference_steps * (2 if work.guidance else 1) * fwd / rate
    per_sample = (fwd * (1 + int(work.reference) + int(work.gradient_checkpointing))
                  + f_lin + ATTN_BACKWARD_FACTOR * f_attn)
    train_s = work.train_samples * per_sample / rate

    return MemoryPlan(
        model=spec.name, tokens=n, latent_shape=(vae.z_dim, t_lat, h_lat, w_lat), transformer_params=p_tr,
        lora_params=p_lora, text_encoder_params=p_te, generation_gib=generation, training_gib=training,
        generation_peak_gib=gen_peak, training_peak_gib=train_peak, generate_seconds_per_clip=gen_s,
        train_seconds_per_step=train_s, forward_tflops=fwd / 1e12,
        assumptions={"hardware": hw.name, "peak_tflops": hw.peak_tflops, "mfu": hw.mfu,
                     "overhead_gib": hw.overhead_gib, "memory_gib": hw.memory_gib, "weights": "bf16", "vae": "fp32",
                     "attention": "SDPA flash/memory-efficient (O(N) memory)",
                     "train_act_values_per_token_per_block": f"{TRAIN_ACT_PER_D}d + {TRAIN_ACT_PER_FFN}f",
                     "accuracy": "±30 % (activation coefficients are modelled, not measured)"},
    )
