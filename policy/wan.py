"""Generator backend ``wan``: Wan2.1-T2V (1.3B / 14B) through diffusers' ``WanPipeline``.

What the loop needs from Wan, and how it is kept cheap:

- **Loading.** ``WanPipeline.from_pretrained`` from a local diffusers directory or a hub id. A local
  directory never touches the network; with ``HF_HUB_OFFLINE=1`` a hub id is looked up in the local
  cache only (``local_files_only``). Anything missing raises :class:`ModelNotFound` with one line.
  Transformer and text encoder load in bf16 on CUDA (fp32 on CPU); the VAE stays fp32 by default
  (diffusers' advice for decoding quality; it is small).
- **Latent space.** The transformer works on *normalised* VAE latents ``ẑ = (μ − mean)·(1/std)``
  with the per-channel ``latents_mean``/``latents_std`` of the VAE config; ``WanPipeline``
  un-normalises with ``ẑ / (1/std) + mean`` before decoding. :meth:`WanGenerator.decode_latents`
  and :meth:`WanGenerator.encode_videos` use exactly these formulas, so generated and real videos
  live in the space the transformer sees.
- **Generation.** Each batch is one pipeline call with ``output_type="latent"``; the final denoised
  latents are decoded here. By default (``train_latents="reencode"``) the decoded video is encoded
  again for training, so generated losers go through the same VAE encoder as real winners (one VAE
  encode per clip): a preference between a winner and a loser then cannot be learnt from the
  encoder's statistics instead of the physics. ``"sampler"`` trains on the sampler's own latents
  (no extra VAE pass); it is not shown equivalent, so choosing it logs a warning.
  Clip ``j`` of prompt ``i`` starts from noise drawn by a CPU ``torch.Generator`` seeded
  ``seeds[i] + j`` (CPU generators give the same noise on any device and in any batch).
- **Text.** UMT5 embeddings ``(L, 4096)`` (zero-padded to ``max_sequence_length``) are cached per
  prompt string, so neither later rounds nor training re-encode; the pipeline receives
  ``prompt_embeds``/``negative_prompt_embeds``. With ``text_encoder_offload`` the 5.7 B-parameter
  encoder lives on the CPU and visits the GPU only to encode prompts not yet cached.
- **Velocity.** The transformer predicts ``v ≈ x1 − x0`` at flow time ``t`` (``x_t = (1−t)·x0 + t·x1``)
  and takes ``timestep = 1000·t`` — the convention of diffusers' flow-matching schedulers.
- **Memory.** VAE tiling/slicing, text-encoder offload; :mod:`policy.memory_plan` estimates GPU
  memory and time from the configuration alone for ``--dry-run`` (this module imports diffusers
  and peft only when a model is loaded, so validating a preset stays cheap).
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policy.base import AdapterIO, Generated, TrainingInputs, quiet_loading

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # diffusers/peft are imported lazily: `--dry-run` must not pay for them
    from diffusers import WanPipeline

Progress = Callable[[int, int], None]

# Wan2.1's recommended negative prompt (the English rendering used in diffusers' WanPipeline example).
DEFAULT_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TEXT_ENCODE_CHUNK = 16


class ModelNotFound(FileNotFoundError):
    """The model directory or hub id cannot be loaded (one-line message)."""


class WanConfig(BaseModel):
    """The ``[generator]`` section of a Wan preset."""

    model_config = ConfigDict(extra="forbid")

    model: str = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"  # local diffusers directory or hub id
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    vae_dtype: Literal["float32", "bfloat16"] = "float32"
    device: str | None = None  # None: cuda if available, else cpu
    height: int = Field(480, gt=0)
    width: int = Field(832, gt=0)
    num_frames: int = Field(81, gt=0)
    num_inference_steps: int = Field(50, ge=1)
    guidance_scale: float = Field(5.0, ge=0.0)  # ≤ 1: no classifier-free guidance
    flow_shift: float | None = Field(3.0, gt=0.0)  # 3.0 for 480p, 5.0 for 720p; None: the model's own
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    batch_size: int = Field(1, ge=1)  # clips per pipeline call
    vae_tiling: bool = False
    vae_slicing: bool = True
    text_encoder_offload: bool = False
    max_sequence_length: int = Field(512, ge=1)
    fps: int = Field(16, ge=1)
    train_latents: Literal["sampler", "reencode"] = Field(
        "reencode", description="'reencode': losers VAE-encoded from their decoded videos, like the real "
        "winners (same encoder); 'sampler': the sampler's raw latents (not shown equivalent; warns)")
    prompt_cache_size: int = Field(4096, ge=1)

    @field_validator("num_frames")
    @classmethod
    def _frames(cls, v: int) -> int:
        if (v - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1 for Wan's VAE (e.g. 49, 81), got {v}")
        return v

    @model_validator(mode="after")
    def _size(self) -> "WanConfig":
        if self.height % 16 or self.width % 16:
            raise ValueError(f"height and width must be multiples of 16, got {self.height}×{self.width}")
        return self

    def resolved_device(self) -> torch.device:
        """The configured device; by default this process's GPU (``LOCAL_RANK`` under accelerate), else CPU."""
        if self.device:
            return torch.device(self.device)
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    def torch_dtype(self, device: torch.device | None = None) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if (device or self.resolved_device()).type == "cuda" else torch.float32
        return getattr(torch, self.dtype)


# ---------------------------------------------------------------------- loading


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_model(model: str) -> tuple[str, bool]:
    """``(source, is_local)``: an existing diffusers directory, or something shaped like a hub id."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelNotFound(f"{path} is not a diffusers WanPipeline directory (no model_index.json)")
        return str(path), True
    if model.startswith(("/", ".", "~")) or not _HUB_ID.match(model):
        raise ModelNotFound(f"model directory not found: {path}")
    return model, False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_pipeline(model: str, dtype: torch.dtype, vae_dtype: torch.dtype = torch.float32) -> "WanPipeline":
    """``WanPipeline.from_pretrained`` that never downloads when offline and fails in one line."""
    from diffusers import WanPipeline

    source, local = resolve_model(model)
    offline = _hub_offline()
    try:
        with quiet_loading():
            return WanPipeline.from_pretrained(source, dtype={"default": dtype, "vae": vae_dtype},
                                               local_files_only=local or offline)
    except OSError as exc:  # huggingface_hub's not-found / HTTP errors are OSErrors
        if local:
            raise ModelNotFound(f"cannot load a WanPipeline from {source}: {_first_line(exc)}") from exc
        if offline:
            raise ModelNotFound(f"{source} is neither a local directory nor in the local Hugging Face cache, and "
                                "HF_HUB_OFFLINE=1 forbids downloading it") from exc
        raise ModelNotFound(f"cannot load {source} from the Hugging Face hub: {_first_line(exc)}") from exc


def _set_flow_shift(scheduler, shift: float):
    """The same scheduler with another timestep shift (UniPC calls it ``flow_shift``, Euler ``shift``)."""
    cfg = scheduler.config
    key = "flow_shift" if "flow_shift" in cfg else "shift" if "shift" in cfg else None
    if key is None:
        raise ValueError(f"{type(scheduler).__name__} has no timestep shift; cannot apply flow_shift={shift}")
    return type(scheduler).from_config(cfg, **{key: shift})


# ---------------------------------------------------------------------- videos


def _check_videos(videos: Sequence[np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
    arr = [np.asarray(v) for v in videos]
    for k, v in enumerate(arr):
        if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3:
            raise ValueError(f"video {k} must be uint8 (T, H, W, 3), got {v.dtype} {v.shape}")
        if v.shape[:3] != shape:
            raise ValueError(f"video {k} is {v.shape[0]}×{v.shape[1]}×{v.shape[2]} (T×H×W), the preset generates "
                             f"{shape[0]}×{shape[1]}×{shape[2]}; resample it first (policy.wan.conform_video)")
    return np.stack(arr) if arr else np.zeros((0, *shape, 3), np.uint8)


def conform_video(video: np.ndarray, num_frames: int, height: int, width: int) -> np.ndarray:
    """Fit a real video to the preset's geometry: ``num_frames`` frames picked uniformly over the
    clip, each resized so it covers ``height×width`` (aspect kept) and centre-cropped."""
    import cv2

    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 1:
        raise ValueError(f"video must be uint8 (T, H, W, 3), got {video.dtype} {video.shape}")
    idx = np.round(np.linspace(0, video.shape[0] - 1, num_frames)).astype(int)
    _, h, w, _ = video.shape
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    top, left = (rh - height) // 2, (rw - width) // 2
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for k, i in enumerate(idx):
        frame = cv2.resize(video[i], (rw, rh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        out[k] = frame[top:top + height, left:left + width]
    return out


def write_mp4(path: str | Path, video: np.ndarray, fps: int = 16) -> Path:
    """Write a uint8 ``(T, H, W, 3)`` clip as H.264 mp4 (for scripts; the loop stores videos via ``store``)."""
    import imageio.v2 as imageio

    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be uint8 (T, H, W, 3), got {video.dtype} {video.shape}")
    if video.shape[1] % 2 or video.shape[2] % 2:
        raise ValueError(f"mp4 (yuv420p) needs even height and width, got {video.shape[1]}×{video.shape[2]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                pixelformat="yuv420p", macro_block_size=1)
    try:
        for frame in video:
            writer.append_data(frame)
    finally:
        writer.close()
    return path


# ---------------------------------------------------------------------- the generator


class WanGenerator(AdapterIO):
    """Generator backend ``wan`` (see the module docstring)."""

    name = "wan"

    def __init__(self, config: WanConfig, pipe: "WanPipeline | None" = None):
        """Load ``config.model`` (or wrap an already loaded ``pipe``) and place it on the device."""
        self.config = config
        if config.train_latents == "sampler":
            log.warning("generate.wan.train_latents = 'sampler': losers are trained on raw sampler latents while "
                        "real winners are VAE-encoded, so the preference can be learnt from encoder statistics; "
                        "this is not shown equivalent to 'reencode' (the default)")
        self.device = config.resolved_device()
        self.dtype = config.torch_dtype(self.device)
        if pipe is None:
            pipe = load_pipeline(config.model, self.dtype, getattr(torch, config.vae_dtype))
        self.pipe = pipe
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

        pipe.transformer.to(self.device)
        pipe.vae.to(self.device)
        pipe.text_encoder.to("cpu" if config.text_encoder_offload else self.device)
        if config.vae_tiling:
            pipe.vae.enable_tiling()
        if config.vae_slicing:
            pipe.vae.enable_slicing()
        if config.flow_shift is not None:
            pipe.scheduler = _set_flow_shift(pipe.scheduler, config.flow_shift)
        pipe.set_progress_bar_config(disable=True)
        vae = pipe.vae
        self._z_dim = int(vae.config.z_dim)
        self._latents_mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._latents_inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def video_shape(self) -> tuple[int, int, int]:
        c = self.config
        return c.num_frames, c.height, c.width

    # ------------------------------------------------------------------ text
    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        te = self.pipe.text_encoder
        visit = self.config.text_encoder_offload and self.device.type != "cpu"
        if visit:
            te.to(self.device)
        try:
            out = []
            with torch.no_grad():
                for k in range(0, len(prompts), _TEXT_ENCODE_CHUNK):
                    emb, _ = self.pipe.encode_prompt(
                        prompt=prompts[k:k + _TEXT_ENCODE_CHUNK], do_classifier_free_guidance=False,
                        max_sequence_length=self.config.max_sequence_length, device=self.device,
                        dtype=torch.float32)
                    out.append(emb.cpu())
            return torch.cat(out)
        finally:
            if visit:
                te.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """UMT5 embeddings ``(B, L, D)`` float32 on CPU, zero past each prompt's end; cached per prompt."""
        if isinstance(prompts, str):
            raise TypeError("encode_prompts() takes a sequence of prompts, not a single string")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if missing:
            for p, emb in zip(missing, self._encode_text(missing)):
                self._text_cache[p] = emb
        for p in prompts:
            self._text_cache.move_to_end(p)
        out = torch.stack([self._text_cache[p] for p in prompts]) if prompts else torch.zeros(0)
        while len(self._text_cache) > self.config.prompt_cache_size:
            self._text_cache.popitem(last=False)
        return out

    # ------------------------------------------------------------------ VAE
    def _vae_stats(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self._latents_mean.to(device, dtype), self._latents_inv_std.to(device, dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents ``(B, C, T', H', W')`` → uint8 videos ``(B, T, H, W, 3)``, as WanPipeline
        decodes them (``ẑ / (1/std) + mean``, VAE decode, ``(x/2 + 0.5)`` clamped to [0, 1])."""
        if latents.ndim != 5 or latents.shape[1] != self._z_dim:
            raise ValueError(f"latents must be (B, {self._z_dim}, T', H', W'), got {tuple(latents.shape)}")
        vae = self.pipe.vae
        z = latents.to(self.device, vae.dtype)
        mean, inv_std = self._vae_stats(z.device, z.dtype)
        x = vae.decode(z / inv_std + mean, return_dict=False)[0]
        frames = (x / 2 + 0.5).clamp(0, 1).float()
        return (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()

    def conform(self, video: np.ndarray) -> np.ndarray:
        """A real video fitted to the preset's geometry (:func:`conform_video`; unchanged when it fits)."""
        video = np.asarray(video)
        if video.shape[:3] == self.video_shape:
            return video
        return conform_video(video, *self.video_shape)

    @torch.no_grad()
    def encode_videos(self, videos: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 ``(T, H, W, 3)`` clips of the preset's geometry → normalised latents ``(B, C, T', H', W')``.

        Uses the mean (mode) of the VAE's latent distribution, not a sample: a real winner must
        have one fixed latent across rounds, and the mean is what decodes back to the video.
        """
        arr = _check_videos(videos, self.video_shape)
        vae = self.pipe.vae
        out = []
        for k in range(0, len(arr), self.config.batch_size):
            x = torch.from_numpy(arr[k:k + self.config.batch_size]).to(self.device)
            x = (x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0).to(vae.dtype)
            mu = vae.encode(x).latent_dist.mode()
            mean, inv_std = self._vae_stats(mu.device, mu.dtype)
            out.append(((mu - mean) * inv_std).float().cpu())
        if not out:
            return torch.zeros(0)
        return torch.cat(out)

    def training_inputs(self, videos: Sequence[np.ndarray], prompts: Sequence[str]) -> TrainingInputs:
        if len(videos) != len(prompts):
            raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
        return TrainingInputs(latents=self.encode_videos(videos), text=self.encode_prompts(prompts))

    # ------------------------------------------------------------------ denoiser
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Predicted velocity ``v(x_t, t, c)`` (float32) for a batch; ``t`` in [0, 1] shaped ``(B,)``."""
        dev = self.device
        t = torch.as_tensor(t, dtype=torch.float32, device=dev).reshape(-1).expand(x_t.shape[0])
        v = self.transformer(hidden_states=x_t.to(dev, self.dtype), timestep=t * 1000.0,
                             encoder_hidden_states=text.to(dev, self.dtype), return_dict=False)[0]
        return v.float()

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[str], seeds: Sequence[int], group_size: int,
                 progress: Progress | None = None) -> list[list[Generated]]:
        """For each prompt, ``group_size`` clips; clip ``j`` of prompt ``i`` uses seed ``seeds[i] + j``.

        Clips are generated ``config.batch_size`` per pipeline call (a call may mix prompts);
        ``progress(done, total)`` is called with the number of clips finished after each call.
        """
        if isinstance(prompts, str):
            raise TypeError("generate() takes a sequence of prompts, not a single string")
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if group_size < 1:
            raise ValueError(f"group_size must be ≥ 1, got {group_size}")
        cfg = self.config
        text = self.encode_prompts(prompts)
        guided = cfg.guidance_scale > 1.0
        negative = self.encode_prompts([cfg.negative_prompt])[0] if guided else None
        jobs = [(i, j, int(seeds[i]) + j) for i in range(len(prompts)) for j in range(group_size)]
        out: list[list[Generated]] = [[] for _ in prompts]
        was_training = self.transformer.training
        self.transformer.eval()
        try:
            for start in range(0, len(jobs), cfg.batch_size):
                chunk = jobs[start:start + cfg.batch_size]
                cond = torch.stack([text[i] for i, _, _ in chunk]).to(self.device, self.dtype)
                neg = None
                if negative is not None:
                    neg = negative.expand(len(chunk), -1, -1).to(self.device, self.dtype)
                latents = self.pipe(
                    prompt_embeds=cond, negative_prompt_embeds=neg, height=cfg.height, width=cfg.width,
                    num_frames=cfg.num_frames, num_inference_steps=cfg.num_inference_steps,
                    guidance_scale=cfg.guidance_scale, generator=[torch.Generator().manual_seed(s) for *_, s in chunk],
                    output_type="latent", return_dict=False)[0]
                videos = self.decode_latents(latents)
                train = latents.float().cpu() if cfg.train_latents == "sampler" else self.encode_videos(videos)
                for k, (i, j, seed) in enumerate(chunk):
                    out[i].append(Generated(prompt=prompts[i], seed=seed, video=videos[k],
                                            latent=train[k].clone(), text=text[i]))
                if progress is not None:
                    progress(start + len(chunk), len(jobs))
        finally:
            self.transformer.train(was_training)
        return out

