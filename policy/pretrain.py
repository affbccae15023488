"""Pretraining the tiny generator with the plain rectified-flow objective.

Given clean clips ``x0`` and their prompts, every step draws a batch of clips, one of each clip's
prompts (so the model sees the same video described at several levels of detail: short
user-style prompts as well as prompts that state the motion and the physics), noise
``x1 ~ N(0, I)`` and a time ``t``, and regresses the velocity:

    x_t = (1 − t)·x0 + t·x1,        L = ‖v(x_t, t, c) − (x1 − x0)‖²

With probability ``prompt_dropout`` the conditioning is replaced by zeros, which teaches the
unconditional velocity that classifier-free guidance needs. ``t`` is uniform or logit-normal
(SD3's choice, which spends the budget on mid-range noise where the velocity is hardest), optionally
shifted towards high noise, and the loss can be weighted towards high noise (``x0_weight``).
AdamW with linear warm-up and cosine decay. Everything is seeded: the same inputs and config
give the same weights on the same machine.

This module is data-agnostic (arrays and strings in, loss history out); the built-in world's
dataset is assembled by ``scripts/build_toy_base.py``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from policy.base import draw_times

Log = Callable[[str], None]


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 3000
    batch: int = 16
    lr: float = 1e-3
    lr_min: float = 1e-5
    warmup: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    prompt_dropout: float = 0.1
    timesteps: Literal["uniform", "logit-normal"] = "logit-normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # SD3/Wan timestep shift applied to every drawn t: t' = s·t / (1 + (s − 1)·t); s > 1 moves mass to high noise
    timestep_shift: float = 1.0
    # fraction of each batch whose t is drawn uniformly from [high_noise_min, 1) instead
    high_noise_fraction: float = 0.0
    high_noise_min: float = 0.9
    # per-sample loss weight w(t) = 1 + x0_weight·t²: the velocity error at time t is the x0 error over t,
    # so the plain loss (0) weighs a high-noise x0 error ~1/t² less than a low-noise one; large values
    # approach an x0 loss, which is where the text decides the layout (where the object starts)
    x0_weight: float = 0.0
    # probability of each prompt position (e.g. short, motion, physics) per clip; None: uniform. Real
    # text-to-video pretraining is mostly on dense captions, so short user prompts are rarer
    prompt_weights: tuple[float, ...] | None = None
    seed: int = 0
    log_every: int = 50
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (fp32 master weights), ~3× faster on AMX CPUs

    def __post_init__(self):
        if self.steps < 1 or self.batch < 1:
            raise ValueError(f"steps and batch must be ≥ 1, got steps={self.steps}, batch={self.batch}")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.timesteps not in ("uniform", "logit-normal"):
            raise ValueError(f"timesteps must be 'uniform' or 'logit-normal', got {self.timesteps!r}")
        if self.timestep_shift <= 0:
            raise ValueError(f"timestep_shift must be > 0, got {self.timestep_shift}")
        if not 0.0 <= self.high_noise_fraction <= 1.0 or not 0.0 <= self.high_noise_min < 1.0:
            raise ValueError(f"high_noise_fraction must be in [0, 1] and high_noise_min in [0, 1), got "
                             f"{self.high_noise_fraction}, {self.high_noise_min}")
        if self.prompt_weights is not None and (any(w < 0 for w in self.prompt_weights)
                                                or not math.isclose(sum(self.prompt_weights), 1.0, abs_tol=1e-6)):
            raise ValueError(f"prompt_weights must be non-negative and sum to 1, got {self.prompt_weights}")
        if self.x0_weight < 0:
            raise ValueError(f"x0_weight must be ≥ 0, got {self.x0_weight}")


def cosine_lr(step: int, cfg: PretrainConfig) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine from ``lr`` to ``lr_min``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def sample_t(n: int, cfg: PretrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Training times (:func:`policy.base.draw_times`). The high-noise draws happen only when a
    fraction is set, so configs without one reproduce older builds."""
    return draw_times(n, generator, sampling=cfg.timesteps, logit_mean=cfg.logit_mean, logit_std=cfg.logit_std,
                      shift=cfg.timestep_shift, high_noise_fraction=cfg.high_noise_fraction,
                      high_noise_min=cfg.high_noise_min)


def flow_matching_loss(transformer: torch.nn.Module, x0: torch.Tensor, text: torch.Tensor, t: torch.Tensor,
                       noise: torch.Tensor, precision: str = "fp32", x0_weight: float = 0.0) -> torch.Tensor:
    """Mean squared velocity error of a batch at times ``t`` with the given noise (always in fp32).

    With ``x0_weight`` λ > 0 each clip's error is weighted by ``1 + λ·t²`` (``λ·t²·‖Δv‖² = λ·‖Δx0‖²``:
    the added term is the clean-clip error), and the batch mean is divided by the mean weight so the
    loss keeps its scale.
    """
    tt = t.view(-1, 1, 1, 1, 1)
    x_t = (1.0 - tt) * x0 + tt * noise
    with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"), \
            warnings.catch_warnings():
        # Wan's fp32 RMSNorm weights on bf16 activations: torch falls back to the unfused kernel
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        v = transformer(hidden_states=x_t, timestep=t * 1000.0, encoder_hidden_states=text, return_dict=False)[0]
    err = (v.float() - (noise - x0)) ** 2
    if x0_weight == 0.0:
        return torch.mean(err)
    w = 1.0 + x0_weight * t.float() ** 2
    return torch.sum(err.flatten(1).mean(1) * w) / torch.sum(w)


def pretrain(transformer: torch.nn.Module, videos: np.ndarray, prompts: Sequence[Sequence[str]],
             encode: Callable[[list[str]], torch.Tensor], config: PretrainConfig = PretrainConfig(),
             log: Log | None = print, on_step: Callable[[int], None] | None = None,
             to_latents: Callable[[np.ndarray], torch.Tensor] | None = None) -> list[float]:
    """Train ``transformer`` in place on ``videos`` (uint8 ``(N, T, H, W, 3)``); returns per-step losses.

    ``prompts[i]`` lists the prompts of clip ``i`` (any number ≥ 1, e.g. the three detail levels);
    each step uses one of them, uniformly or by ``config.prompt_weights``. ``encode`` maps a list of
    prompts to ``(B, L, D)`` token embeddings; it is called once on the distinct prompts. ``on_step(step)`` (1-based) runs
    after every optimizer step (snapshots, custom stopping checks in experiments). ``to_latents``
    maps a uint8 batch ``(B, T, H, W, 3)`` to ``(B, C, T, H, W)`` (default: ``video / 127.5 − 1``;
    the tiny generator passes its own normalisation, ``ToyGenerator.encode_videos``).
    """
    videos = np.asarray(videos)
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be uint8 (N, T, H, W, 3), got {videos.dtype} {videos.shape}")
    if len(prompts) != len(videos):
        raise ValueError(f"{len(videos)} videos but {len(prompts)} prompt lists")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every clip needs at least one prompt")

    # Distinct prompts are few (hundreds) even for thousands of clips: encode each once.
    vocab = sorted({p for ps in prompts for p in ps})
    index = {p: k for k, p in enumerate(vocab)}
    bank = encode(vocab).to(torch.float32)
    bank = torch.cat([bank, torch.zeros_like(bank[:1])])  # last row: the unconditional (dropped) prompt
    null_id = len(vocab)
    ids = [[index[p] for p in ps] for ps in prompts]

    if to_latents is None:
        def to_latents(batch: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(batch).to(torch.float32).div_(127.5).sub_(1.0).permute(0, 4, 1, 2, 3)

    if config.prompt_weights is not None and any(len(p) != len(config.prompt_weights) for p in ids):
        raise ValueError(f"prompt_weights has {len(config.prompt_weights)} entries; every clip needs that many prompts")
    weights = None if config.prompt_weights is None else np.asarray(config.prompt_weights) / sum(config.prompt_weights)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    params = [p for p in transformer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    transformer.train()
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(config.steps):
        lr = cosine_lr(step, config)
        for group in opt.param_groups:
            group["lr"] = lr
        rows = rng.integers(0, len(videos), size=config.batch)
        if weights is None:
            text_ids = [ids[r][int(rng.integers(len(ids[r])))] for r in rows]
        else:
            text_ids = [ids[r][int(rng.choice(len(ids[r]), p=weights))] for r in rows]
        drop = rng.random(config.batch) < config.prompt_dropout
        text_ids = [null_id if d else k for k, d in zip(text_ids, drop)]
        x0 = to_latents(videos[rows])
        text = bank[text_ids]
        t = sample_t(config.batch, config, gen)
        noise = torch.randn(x0.shape, generator=gen)

        loss = flow_matching_loss(transformer, x0, text, t, noise, config.precision, config.x0_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1)
        if log is not None and ((step + 1) % config.log_every == 0 or step + 1 == config.steps):
            recent = losses[-config.log_every:]
            elapsed = time.perf_counter() - start
            log(f"step {step + 1}/{config.steps}  loss {np.mean(recent):.4f}  lr {lr:.2e}  "
                f"{elapsed:.0f}s elapsed, {elapsed / (step + 1) * (config.steps - step - 1):.0f}s left")
    transformer.eval()
    return losses
