"""The built-in world's tiny generator: a pixel-space ``WanTransformer3DModel`` with rectified flow.

It is the same denoiser class as Wan2.1 (so LoRA targets, objectives and trainer are shared), at
a few million parameters (4.6 M shipped), working directly on pixels (no VAE): a clip's latent is its pixels,
normalised per channel, ``x0 = (video − pixel_mean) / pixel_std`` laid out ``(3, T, H, W)``. The
statistics are those of the training videos (stored in the checkpoint), the way Wan normalises
its VAE latents with ``latents_mean``/``latents_std``: the world's frames are mostly dark
background, so plain ``video / 127.5 − 1`` would leave the data with std ≈ 0.26 against unit
noise, and every error of the denoiser at high noise would show up ~4× larger in pixels. Text conditioning is per-token
all-MiniLM-L6-v2 embeddings (:mod:`policy.text`), zero-padded like Wan's UMT5 path; the all-zero
embedding is the unconditional input (prompt dropout in training, classifier-free guidance).

Sampling integrates the rectified-flow ODE ``dx/dt = v(x, t, c)`` with Euler steps from ``t = 1``
(noise) to ``t = 0`` on a shifted schedule ``σ' = s·σ / (1 + (s − 1)·σ)`` (``s > 1`` spends more
steps at high noise, as Wan's ``shift`` does). With guidance ``g ≠ 1`` the velocity is
``v_u + g·(v_c − v_u)``.

Each clip's starting noise comes from its own ``torch.Generator`` seeded with the clip's seed, so a
clip depends only on (weights, prompt, seed, sampling settings).

The shipped base checkpoint (``policy/checkpoints/toy_base.safetensors`` + ``toy_base.json``) is
built by ``scripts/build_toy_base.py``; the JSON holds the architecture, the sampling defaults and
how it was trained.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

from policy.base import AdapterIO, Generated, TrainingInputs, shift_times
from policy.text import TEXT_DIM, TextEncoder

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "toy_base.safetensors"
CHECKPOINT_FORMAT = "phyloop-toy-base/1"

Progress = Callable[[int, int], None]


PREDICTIONS = ("velocity", "x0-precond", "x0")
COORD_CHANNELS = 3
X0_T_MIN = 0.05  # "x0" prediction: v̂ = (x_t − F) / max(t, X0_T_MIN)
SDE_SEED_OFFSET = 1 << 40  # the SDE sampler's step noise: its own stream, apart from the starting noise


@dataclass(frozen=True)
class ToyArch:
    """Architecture of the tiny denoiser and the clip geometry it works on."""

    frames: int = 12
    size: int = 32
    patch_size: tuple[int, int, int] = (2, 4, 4)
    num_heads: int = 4
    head_dim: int = 32
    ffn_dim: int = 512
    num_layers: int = 4
    freq_dim: int = 64
    text_len: int = 64
    # latent = (pixel − pixel_mean) / pixel_std per RGB channel, pixels in 0..255 (127.5/127.5: [−1, 1])
    pixel_mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    pixel_std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    # what the network's raw output F means: "velocity" (plain Wan: v = F), "x0-precond"
    # (EDM-style preconditioning, see :func:`precondition_velocity`) or "x0" (the clean clip:
    # v̂ = (x_t − F)/t, see :func:`x0_velocity`)
    prediction: str = "velocity"
    # append fixed (t, y, x) coordinate channels to the network's input (see :func:`coordinate_grid`):
    # Wan has only rotary (relative) position codes, so from pure noise a token cannot tell where in
    # the frame it is, yet the world's floor and start regions sit at fixed places
    coords: bool = False

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError(f"pixel_mean/pixel_std must be 3 values (std > 0), got {self.pixel_mean}, {self.pixel_std}")
        pt, ph, pw = self.patch_size
        if self.frames % pt or self.size % ph or self.size % pw:
            raise ValueError(f"clip {self.frames}×{self.size}×{self.size} is not divisible by patch {self.patch_size}; "
                             "Wan's patch embedding would silently crop it")
        if self.head_dim < 6 or self.head_dim % 2:
            raise ValueError(f"head_dim must be even and ≥ 6 (3-axis rotary embedding), got {self.head_dim}")

    @property
    def tokens(self) -> int:
        pt, ph, pw = self.patch_size
        return (self.frames // pt) * (self.size // ph) * (self.size // pw)

    def transformer_config(self) -> dict:
        """Keyword arguments of :class:`WanTransformer3DModel` for this architecture."""
        return dict(
            patch_size=tuple(self.patch_size), num_attention_heads=self.num_heads, attention_head_dim=self.head_dim,
            in_channels=3 + (COORD_CHANNELS if self.coords else 0), out_channels=3, text_dim=TEXT_DIM, freq_dim=self.freq_dim, ffn_dim=self.ffn_dim,
            num_layers=self.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
            rope_max_seq_len=max(64, self.frames, self.size),
        )

    @classmethod
    def from_dict(cls, d: dict) -> "ToyArch":
        d = dict(d)
        for key in ("patch_size", "pixel_mean", "pixel_std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass(frozen=True)
class SampleConfig:
    """Sampler settings: Euler steps, timestep shift, classifier-free guidance scale (1 = off)."""

    steps: int = 16
    shift: float = 1.0
    guidance: float = 1.0
    max_batch: int = 16  # clips per batched forward

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"sampling steps must be ≥ 1, got {self.steps}")
        if self.shift <= 0:
            raise ValueError(f"timestep shift must be > 0, got {self.shift}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {self.max_batch}")


def precondition_velocity(x_t: torch.Tensor, t: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Velocity from the raw network output ``F`` under EDM-style preconditioning (unit-variance data).

    With ``x_t = (1 − t)·x0 + t·ε`` and ``D = (1 − t)² + t²`` (the variance of ``x_t``), the clean
    estimate is ``x̂0 = c_skip·x_t + c_out·F`` with ``c_skip = (1 − t)/D`` and ``c_out = t/√D``
    (Karras et al. 2022, Eq. 7 with σ_data = 1, written for rectified flow), and the velocity
    ``v̂ = (x_t − x̂0)/t`` simplifies to ``((2t − 1)/D)·x_t − F/√D``, finite at every t. The
    network's target then has unit variance at every noise level: at ``t = 1`` it predicts the
    clean clip (what a pixel-space model can do well, Li & He 2025), at ``t = 0`` the noise,
    instead of pushing the full-dimensional noise through its layers at high noise as plain
    velocity prediction must.
    """
    tb = t.to(torch.float32).reshape(-1, *([1] * (x_t.dim() - 1)))
    d = (1.0 - tb) ** 2 + tb ** 2
    v = (2.0 * tb - 1.0) / d * x_t.to(torch.float32) - raw.to(torch.float32) / d.sqrt()
    return v.to(raw.dtype)


def x0_velocity(x_t: torch.Tensor, t: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Velocity from a network that predicts the clean clip ``F = x̂0``: ``v̂ = (x_t − F)/t``.

    Pixel-space models whose tokens are wide (a patch of many pixels) do better predicting the
    clean clip, which lies near a low-dimensional set, than the noise or the velocity, which do
    not (Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise"). ``t`` is clipped
    at ``X0_T_MIN`` in the division, as there, so the last steps stay finite.
    """
    tb = t.to(torch.float32).reshape(-1, *([1] * (x_t.dim() - 1))).clamp_min(X0_T_MIN)
    return ((x_t.to(torch.float32) - raw.to(torch.float32)) / tb).to(raw.dtype)


_OUTPUT_TO_VELOCITY = {"x0-precond": precondition_velocity, "x0": x0_velocity}


def coordinate_grid(frames: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(3, T, H, W)`` channels holding each pixel's frame, row and column, each scaled to [−1, 1].

    Concatenated to the noisy clip as extra input channels (the way Wan's image-to-video model
    concatenates its conditioning latents), they give the denoiser the absolute position that
    rotary attention alone cannot: at ``t = 1`` the input is pure noise and otherwise carries none.
    """
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) if n > 1 else torch.zeros(1, device=device, dtype=dtype)
            for n in (frames, height, width)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def _coords_pre_hook(module, args, kwargs):
    key = "hidden_states" in kwargs
    x = kwargs["hidden_states"] if key else args[0]
    b, _, t, h, w = x.shape
    x = torch.cat([x, coordinate_grid(t, h, w, x.device, x.dtype).expand(b, -1, -1, -1, -1)], dim=1)
    if key:
        kwargs = {**kwargs, "hidden_states": x}
    else:
        args = (x, *args[1:])
    return args, kwargs


def _velocity_hook(to_velocity, module, args, kwargs, output):
    x_t = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    x_t = x_t[:, :3]  # without the coordinate channels, if any
    timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
    t = timestep.to(torch.float32) / 1000.0
    if isinstance(output, tuple):
        return (to_velocity(x_t, t, output[0]), *output[1:])
    output.sample = to_velocity(x_t, t, output.sample)
    return output


def build_transformer(arch: ToyArch, seed: int | None = 0) -> WanTransformer3DModel:
    """A randomly initialised denoiser (deterministic for a given ``seed``).

    With ``arch.prediction`` other than ``"velocity"`` a forward hook turns the network's raw
    output into the velocity (:func:`precondition_velocity`, :func:`x0_velocity`), so every caller — sampler, pretraining, the
    LoRA trainer's policy and its adapter-off reference — sees a velocity, as from plain Wan.
    With ``arch.coords`` a forward pre-hook appends :func:`coordinate_grid` to the input, so callers
    still pass the 3-channel noisy clip.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = WanTransformer3DModel(**arch.transformer_config())
    else:
        model = WanTransformer3DModel(**arch.transformer_config())
    if arch.coords:
        model.register_forward_pre_hook(_coords_pre_hook, with_kwargs=True)
    if arch.prediction != "velocity":
        model.register_forward_hook(functools.partial(_velocity_hook, _OUTPUT_TO_VELOCITY[arch.prediction]),
                                    with_kwargs=True)
    return model


def sigma_schedule(steps: int, shift: float = 1.0) -> torch.Tensor:
    """``steps + 1`` noise levels from 1 to 0, shifted towards high noise when ``shift > 1``."""
    return shift_times(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).to(torch.float32)


_UNIT = (127.5, 127.5, 127.5)


def _channel(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1, 1)


def videos_to_latents(videos: Sequence[np.ndarray] | np.ndarray, mean: Sequence[float] = _UNIT,
                      std: Sequence[float] = _UNIT) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` clips → float32 ``(B, 3, T, H, W)``, ``(pixel − mean) / std`` per channel.

    Exactly invertible by :func:`latents_to_videos` with the same statistics.
    """
    arr = np.stack([np.asarray(v) for v in videos]) if not isinstance(videos, np.ndarray) else videos
    if arr.ndim == 4:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 5 or arr.shape[-1] != 3:
        raise ValueError(f"videos must be uint8 (T, H, W, 3) arrays, got {arr.dtype} {arr.shape[1:]}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32)
    if tuple(mean) == _UNIT and tuple(std) == _UNIT:  # bit for bit what the shipped checkpoint was trained on
        x = x / 127.5 - 1.0
    else:
        x = (x - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(std, dtype=torch.float32)
    return x.permute(0, 4, 1, 2, 3).contiguous()


def latents_to_videos(latents: torch.Tensor, mean: Sequence[float] = _UNIT, std: Sequence[float] = _UNIT) -> np.ndarray:
    """float ``(B, 3, T, H, W)`` → uint8 ``(B, T, H, W, 3)`` (clipped, rounded to nearest)."""
    if latents.ndim != 5 or latents.shape[1] != 3:
        raise ValueError(f"latents must be (B, 3, T, H, W), got {tuple(latents.shape)}")
    std_ = _channel(std)
    x = ((latents.detach().to(torch.float32).cpu() + _channel(mean) / std_) * std_).round().clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous().numpy()


def pixel_statistics(videos: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..255 units, rounded to 0.01) of uint8 videos ``(N, T, H, W, 3)``."""
    x = np.asarray(videos, dtype=np.float64).reshape(-1, 3)
    return tuple(round(float(v), 2) for v in x.mean(0)), tuple(round(float(v), 2) for v in x.std(0))


class ToyGenerator(AdapterIO):
    """Generator backend ``toy``: the built-in world's pixel-space Wan transformer (see module doc)."""

    name = "toy"

    def __init__(self, transformer: WanTransformer3DModel, arch: ToyArch, sampling: SampleConfig | None = None,
                 text_encoder: TextEncoder | None = None, metadata: dict | None = None):
        self.transformer = transformer
        self.arch = arch
        self.sampling = sampling or SampleConfig()
        self.text_encoder = text_encoder or TextEncoder(max_length=arch.text_len)
        if self.text_encoder.max_length != arch.text_len:
            raise ValueError(f"text encoder pads to {self.text_encoder.max_length} tokens, the model expects "
                             f"{arch.text_len}")
        self.metadata = metadata or {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(cls, arch: ToyArch | None = None, seed: int = 0, **kwargs) -> "ToyGenerator":
        """An untrained generator (tests, and the start of pretraining)."""
        arch = arch or ToyArch()
        return cls(build_transformer(arch, seed), arch, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, sampling: SampleConfig | None = None,
                        text_encoder: TextEncoder | None = None, **sampling_overrides) -> "ToyGenerator":
        """Load a base checkpoint (default: the shipped ``policy/checkpoints/toy_base.safetensors``).

        Sampling defaults come from the checkpoint's JSON; ``sampling`` or keyword overrides
        (``steps=…``, ``guidance=…``) replace them.
        """
        weights = Path(path) if path is not None else DEFAULT_CHECKPOINT
        meta_path = weights.with_suffix(".json")
        if not weights.is_file() or not meta_path.is_file():
            raise FileNotFoundError(
                f"toy generator checkpoint not found: need {weights} and {meta_path.name} "
                "(rebuild it with `python scripts/build_toy_base.py`)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{meta_path} is not a toy generator checkpoint (format {meta.get('format')!r}, "
                             f"expected {CHECKPOINT_FORMAT!r})")
        arch = ToyArch.from_dict(meta["arch"])
        transformer = build_transformer(arch, seed=None)
        state = load_file(str(weights))
        missing, unexpected = transformer.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {weights} does not match its architecture "
                             f"(missing: {missing[:3]}, unexpected: {unexpected[:3]})")
        transformer.eval()
        if sampling is None:
            sampling = SampleConfig(**meta.get("sampling", {}))
        if sampling_overrides:
            sampling = replace(sampling, **sampling_overrides)
        return cls(transformer, arch, sampling, text_encoder=text_encoder, metadata=meta)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    # ------------------------------------------------------------------ encoders
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.text_encoder.encode(prompts)

    def encode_videos(self, videos: Sequence[np.ndarray]) -> torch.Tensor:
        latents = videos_to_latents(videos, self.arch.pixel_mean, self.arch.pixel_std)
        expected = (3, self.arch.frames, self.arch.size, self.arch.size)
        if tuple(latents.shape[1:]) != expected:
            raise ValueError(f"videos must be {self.arch.frames}×{self.arch.size}×{self.arch.size}×3, "
                             f"got {tuple(latents.shape[2:])}")
        return latents

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Latents ``(B, 3, T, H, W)`` → uint8 videos ``(B, T, H, W, 3)``."""
        return latents_to_videos(latents, self.arch.pixel_mean, self.arch.pixel_std)

    def training_inputs(self, videos: Sequence[np.ndarray], prompts: Sequence[str]) -> TrainingInputs:
        if len(videos) != len(prompts):
            raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
        return TrainingInputs(latents=self.encode_videos(videos), text=self.encode_prompts(prompts))

    # ------------------------------------------------------------------ denoiser
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Predicted velocity ``v(x_t, t, c)`` for a batch; ``t`` in [0, 1] shaped ``(B,)``."""
        dev = self.device
        t = torch.as_tensor(t, dtype=torch.float32, device=dev).reshape(-1).expand(x_t.shape[0])
        return self.transformer(hidden_states=x_t.to(dev), timestep=t * 1000.0,
                                encoder_hidden_states=text.to(dev), return_dict=False)[0]

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, text: torch.Tensor, sampling: SampleConfig | None = None) -> torch.Tensor:
        """Integrate the flow from ``noise`` (t = 1) to a clean latent (t = 0): ``(B, 3, T, H, W)``."""
        cfg = sampling or self.sampling
        if noise.shape[0] != text.shape[0]:
            raise ValueError(f"{noise.shape[0]} noise tensors but {text.shape[0]} text conditionings")
        dev = self.device
        x = noise.to(dev, torch.float32)
        text = text.to(dev)
        guided = cfg.guidance != 1.0
        if guided:
            text = torch.cat([text, torch.zeros_like(text)])
        sigmas = sigma_schedule(cfg.steps, cfg.shift).tolist()
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            t = torch.full((x.shape[0],), s, device=dev)
            if guided:
                v_c, v_u = self.velocity(torch.cat([x, x]), torch.cat([t, t]), text).chunk(2)
                v = v_u + cfg.guidance * (v_c - v_u)
            else:
                v = self.velocity(x, t, text)
            x = x + (s_next - s) * v
        return x.cpu()

    @torch.no_grad()
    def sample_sde(self, noise: torch.Tensor, text: torch.Tensor, seeds: Sequence[int], *, noise_level: float,
                   sampling: SampleConfig | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Flow-GRPO's stochastic sampler (:func:`policy.objectives.sde_step`): the same noise levels
        as :meth:`sample`, each step drawn from its Gaussian with fresh noise seeded by the clip's
        seed. Returns the clean latents and the trajectory the trainer needs: ``latents``
        ``(B, S + 1, …)`` (x at every level, noise first), ``log_probs`` ``(B, S)`` of each step under
        the policy that sampled it, and the ``sigmas`` ``(S + 1,)``."""
        from policy.objectives import gaussian_log_prob, sde_step

        cfg = sampling or self.sampling
        if cfg.guidance != 1.0:
            raise ValueError("the SDE sampler trains the conditional velocity: it needs guidance = 1")
        if not noise.shape[0] == text.shape[0] == len(seeds):
            raise ValueError(f"{noise.shape[0]} noise tensors, {text.shape[0]} conditionings, {len(seeds)} seeds")
        dev = self.device
        sigmas = sigma_schedule(cfg.steps, cfg.shift)
        cap = float(sigmas[1]) if cfg.steps > 1 else 0.5
        gens = [torch.Generator().manual_seed(int(s) + SDE_SEED_OFFSET) for s in seeds]
        x = noise.to(dev, torch.float32)
        text = text.to(dev)
        xs, lps = [x.cpu()], []
        for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
            t = torch.full((x.shape[0],), s, device=dev)
            mean, std = sde_step(x, self.velocity(x, t, text), t, torch.full_like(t, s_next),
                                 noise_level=noise_level, sigma_cap=cap)
            eps = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(dev)
            x = mean + std * eps if s_next > 0 else mean  # the last step lands on the clean clip
            lps.append(gaussian_log_prob(x, mean, std).cpu() if s_next > 0 else torch.zeros(x.shape[0]))
            xs.append(x.cpu())
        return x.cpu(), {"latents": torch.stack(xs, dim=1), "log_probs": torch.stack(lps, dim=1), "sigmas": sigmas,
                         "noise_level": torch.tensor(float(noise_level))}

    def noise(self, seed: int) -> torch.Tensor:
        """The starting noise of the clip with this seed, ``(3, T, H, W)``."""
        g = torch.Generator().manual_seed(int(seed))
        a = self.arch
        return torch.randn((3, a.frames, a.size, a.size), generator=g, dtype=torch.float32)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], group_size: int,
                 progress: Progress | None = None, sampling: SampleConfig | None = None,
                 sde_noise_level: float | None = None) -> list[list[Generated]]:
        """For each prompt, ``group_size`` clips; clip ``j`` of prompt ``i`` uses seed ``seeds[i] + j``.

        ``progress(done, total)`` is called with the number of clips finished after each batch.
        Each clip's ``latent`` is the encoding of its uint8 video (what the judge sees is exactly
        what training uses); ``text`` is its conditional embedding. With ``sde_noise_level`` the
        clips come from the SDE sampler (:meth:`sample_sde`, Flow-GRPO's rollouts) and each carries
        its ``trajectory``.
        """
        if isinstance(prompts, str):
            raise TypeError("generate() takes a sequence of prompts, not a single string")
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if group_size < 1:
            raise ValueError(f"group_size must be ≥ 1, got {group_size}")
        cfg = sampling or self.sampling
        text = self.encode_prompts(prompts)
        jobs = [(i, j, int(seeds[i]) + j) for i in range(len(prompts)) for j in range(group_size)]
        out: list[list[Generated]] = [[] for _ in prompts]
        was_training = self.transformer.training
        self.transformer.eval()
        try:
            for start in range(0, len(jobs), cfg.max_batch):
                chunk = jobs[start:start + cfg.max_batch]
                noise = torch.stack([self.noise(seed) for _, _, seed in chunk])
                cond = torch.stack([text[i] for i, _, _ in chunk])
                traj = None
                if sde_noise_level is None:
                    clean = self.sample(noise, cond, cfg)
                else:
                    clean, traj = self.sample_sde(noise, cond, [seed for _, _, seed in chunk],
                                                  noise_level=sde_noise_level, sampling=cfg)
                videos = self.decode_latents(clean)
                latents = self.encode_videos(videos)
                for k, (i, j, seed) in enumerate(chunk):
                    out[i].append(Generated(
                        prompt=prompts[i], seed=seed, video=videos[k], latent=latents[k], text=text[i].clone(),
                        trajectory=None if traj is None else {"latents": traj["latents"][k].clone(),
                                                              "log_probs": traj["log_probs"][k].clone(),
                                                              "sigmas": traj["sigmas"].clone(),
                                                              "noise_level": traj["noise_level"].clone()}))
                if progress is not None:
                    progress(start + len(chunk), len(jobs))
        finally:
            self.transformer.train(was_training)
        return out


    # ------------------------------------------------------------------ checkpoint
    def checkpoint_metadata(self, **extra) -> dict:
        """The JSON written beside a base checkpoint: architecture, sampling defaults, extras."""
        return {"format": CHECKPOINT_FORMAT, "arch": asdict(self.arch), "sampling": asdict(self.sampling),
                "params": sum(p.numel() for p in self.transformer.parameters()), **extra}

    def save_checkpoint(self, path: str | Path, **extra) -> Path:
        """Write the base weights to ``path`` (``.safetensors``) and metadata beside it (``.json``).

        Both files are written atomically (temporary file, then rename). A LoRA, if attached, is
        not part of a base checkpoint: save it with :meth:`save_adapter`.
        """
        from policy.lora import has_lora

        if has_lora(self.transformer):
            raise ValueError("the transformer carries a LoRA; a base checkpoint holds base weights only")
        weights = Path(path).with_suffix(".safetensors")
        state = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in self.transformer.state_dict().items()}
        meta = json.dumps(self.checkpoint_metadata(**extra), indent=2) + "\n"
        _write_atomic(weights, lambda tmp: save_file(state, tmp, metadata={"format": CHECKPOINT_FORMAT}))
        _write_atomic(weights.with_suffix(".json"), lambda tmp: Path(tmp).write_text(meta))
        return weights


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
