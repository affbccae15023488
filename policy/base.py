"""The Generator interface: the seam between the loop and any video model.

Every backend (the built-in world's tiny pixel-space generator, Wan2.1 through diffusers)
exposes a `WanTransformer3DModel`-style denoiser that predicts the rectified-flow velocity
`v(x_t, t, c) ≈ x1 − x0` for `x_t = (1 − t)·x0 + t·x1`, `x1 ~ N(0, I)`, `t ∈ [0, 1]`.
The trainer and the objectives only ever see this interface, so they cannot depend on
which backend they train.

Conventions
- videos: ``np.uint8`` arrays shaped ``(T, H, W, 3)``.
- latents: ``torch.float32`` tensors shaped ``(C, T', H', W')`` (one clip) or
  ``(B, C, T', H', W')`` (a batch) in the model's own space (pixels in [−1, 1] for the
  tiny generator, VAE latents for Wan).
- text conditioning: ``(L, D)`` per prompt (``(B, L, D)`` batched), already padded.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch


def shift_times(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan/SD3 timestep shift ``t' = s·t / (1 + (s − 1)·t)``: ``s > 1`` moves flow times towards noise (t = 1).

    One formula for the sampler's schedule, pretraining's and the trainer's training times.
    """
    return t if shift == 1.0 else shift * t / (1.0 + (shift - 1.0) * t)


def draw_times(n: int, generator: torch.Generator, *, sampling: str = "uniform", logit_mean: float = 0.0,
               logit_std: float = 1.0, shift: float = 1.0, high_noise_fraction: float = 0.0,
               high_noise_min: float = 0.9) -> torch.Tensor:
    """Training flow times t ∈ (0, 1) (t = 1 is pure noise), one formula for pretraining and the trainer.

    ``uniform`` or ``logit-normal`` (σ(mean + std·z)), then :func:`shift_times`; finally a share
    ``high_noise_fraction`` of the draws is replaced by uniform draws from [high_noise_min, 1), where
    the noisy clip shows nothing and only the prompt can place the objects (the base's layout times).
    """
    if sampling == "uniform":
        t = torch.rand(n, generator=generator)
    elif sampling == "logit-normal":
        t = torch.sigmoid(logit_mean + logit_std * torch.randn(n, generator=generator))
    else:
        raise ValueError(f"timestep sampling must be 'uniform' or 'logit-normal', got {sampling!r}")
    t = shift_times(t, shift)
    if high_noise_fraction > 0.0:
        pick = torch.rand(n, generator=generator) < high_noise_fraction
        high = high_noise_min + (1.0 - high_noise_min) * torch.rand(n, generator=generator)
        t = torch.where(pick, high, t)
    return t


@dataclass
class Generated:
    """One generated clip and what training needs to use it without re-encoding."""

    prompt: str
    seed: int
    video: np.ndarray  # uint8 (T, H, W, 3)
    latent: torch.Tensor  # (C, T', H', W') float32, CPU
    text: torch.Tensor  # (L, D) float32, CPU: the conditioning it was generated with
    # Flow-GRPO rollouts (the SDE sampler): latents (S + 1, C, T', H', W'), log_probs (S,), sigmas (S + 1,)
    trajectory: dict[str, torch.Tensor] | None = None


@dataclass
class TrainingInputs:
    """Latents and conditioning for a list of videos under a list of prompts."""

    latents: torch.Tensor  # (B, C, T', H', W')
    text: torch.Tensor  # (B, L, D)


@runtime_checkable
class Generator(Protocol):
    """What the loop needs from a video model."""

    name: str
    transformer: torch.nn.Module  # the LoRA-carrying denoiser (WanTransformer3DModel)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], group_size: int) -> list[list[Generated]]:
        """For each prompt, ``group_size`` clips; clip ``j`` of prompt ``i`` uses ``seeds[i] + j``."""

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text conditioning ``(B, L, D)``."""

    def encode_videos(self, videos: Sequence[np.ndarray]) -> torch.Tensor:
        """Latents ``(B, C, T', H', W')`` of uint8 videos (real videos use the same encoder)."""

    def training_inputs(self, videos: Sequence[np.ndarray], prompts: Sequence[str]) -> TrainingInputs: ...

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Predicted velocity for a batch; ``t`` in [0, 1] shaped ``(B,)``."""

    def save_adapter(self, path: Path) -> None: ...

    def load_adapter(self, path: Path) -> None: ...


class AdapterIO:
    """``save_adapter`` / ``load_adapter`` for a generator whose denoiser is ``self.transformer``.

    The LoRA code (peft) is imported on first use, so importing a backend stays light.
    """

    transformer: torch.nn.Module

    def save_adapter(self, path: Path) -> None:
        """Save the transformer's LoRA in diffusers' format (``WanPipeline.load_lora_weights`` reads it)."""
        from policy.lora import save_adapter

        save_adapter(self.transformer, path)

    def load_adapter(self, path: Path) -> None:
        """Load a LoRA saved by :meth:`save_adapter` (attaching one if the transformer has none)."""
        from policy.lora import load_adapter

        load_adapter(self.transformer, path)


@dataclass
class GroupSample:
    """One training group: a winner and m losers under the same prompt conditioning.

    ``loser_sa``/``loser_pc`` are the judge's normalised scores in [0, 1] of each loser,
    used by physics-guided rewarding (PGR).
    """

    text: torch.Tensor  # (L, D)
    winner: torch.Tensor  # (C, T', H', W')
    losers: torch.Tensor  # (m, C, T', H', W')
    loser_sa: torch.Tensor  # (m,)
    loser_pc: torch.Tensor  # (m,)
    prompt: str = ""
    meta: dict = field(default_factory=dict)
    # flow-grpo: the group's judged generations as rollouts, {"latents": (n, S + 1, …), "log_probs": (n, S),
    # "sigmas": (S + 1,), "reward": (n,)}; None for the other objectives
    rollouts: dict[str, torch.Tensor] | None = None


@contextmanager
def quiet_loading():
    """Model loading without transformers' / diffusers' "Loading weights" progress bars, which
    print over the dashboard; the libraries' own settings are restored afterwards."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    was = tlog.is_progress_bar_enabled(), dlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            tlog.enable_progress_bar()
        if was[1]:
            dlog.enable_progress_bar()
