"""Turning a video array into what a vision-language model can read.

Every judge and critic receives a video as a uint8 array ``(T, H, W, 3)`` in RGB order.
A VLM behind an OpenAI-compatible API can be shown it in two ways:

* a handful of uniformly sampled frames, each a base64 ``data:`` URL of a JPEG/PNG image
  (every multimodal chat API accepts ``image_url`` parts), or
* the whole clip as a base64 H.264 mp4 ``data:`` URL in a ``video_url`` part (what vLLM
  decodes natively for Qwen2.5-VL / Qwen3-VL, keeping the real time axis).

This module does the sampling, resizing and encoding with OpenCV (images) and
imageio-ffmpeg's bundled ffmpeg (mp4); it knows nothing about HTTP.
"""

from __future__ import annotations

import base64
import os
import tempfile
from typing import Literal

import cv2
import imageio_ffmpeg
import numpy as np

ImageFormat = Literal["jpeg", "png"]

_MIME = {"jpeg": "image/jpeg", "png": "image/png"}


def check_video(video: np.ndarray) -> np.ndarray:
    """Returns ``video`` if it is a non-empty uint8 (T, H, W, 3) array, else raises ValueError."""
    if not isinstance(video, np.ndarray):
        raise ValueError(f"video must be a numpy array, got {type(video).__name__}")
    if video.dtype != np.uint8:
        raise ValueError(f"video must be uint8, got {video.dtype}")
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must have shape (T, H, W, 3), got {video.shape}")
    if min(video.shape[:3]) < 1:
        raise ValueError(f"video is empty: shape {video.shape}")
    return video


def sample_indices(num_frames: int, n: int) -> np.ndarray:
    """``n`` frame indices spread uniformly over ``num_frames``, first and last included.

    Asking for more frames than exist returns every frame once (no duplicates: a judge
    shown the same frame twice could read it as the object standing still).
    """
    if num_frames < 1 or n < 1:
        raise ValueError(f"need num_frames ≥ 1 and n ≥ 1, got {num_frames}, {n}")
    if n >= num_frames:
        return np.arange(num_frames)
    return np.unique(np.round(np.linspace(0, num_frames - 1, n)).astype(int))


def sample_frames(video: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly sampled frames and their indices (see :func:`sample_indices`)."""
    idx = sample_indices(check_video(video).shape[0], n)
    return video[idx], idx


def resize_max_side(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscales (never upscales) so the longer side is at most ``max_side`` pixels.

    Uses area interpolation, which averages instead of aliasing thin moving objects away.
    """
    if max_side is None:
        return frame
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return frame
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def encode_image(frame: np.ndarray, fmt: ImageFormat = "jpeg", quality: int = 90) -> bytes:
    """Encodes one RGB uint8 frame as JPEG or PNG bytes."""
    if fmt not in _MIME:
        raise ValueError(f"image format must be 'jpeg' or 'png', got {fmt!r}")
    bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a frame of shape {frame.shape} as {fmt}")
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """Decodes JPEG/PNG bytes to an RGB uint8 array (the inverse of :func:`encode_image`)."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError("bytes are not a decodable image")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def decode_data_url(url: str) -> tuple[str, bytes]:
    """Splits a base64 ``data:`` URL into (mime type, bytes)."""
    head, sep, payload = url.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64") or not sep:
        raise ValueError("not a base64 data URL")
    return head[5:-7], base64.b64decode(payload)


def frame_data_urls(video: np.ndarray, n: int, fmt: ImageFormat = "jpeg",
                    max_side: int | None = 512, quality: int = 90) -> tuple[list[str], np.ndarray]:
    """``n`` sampled frames as image ``data:`` URLs, plus the frame indices they came from."""
    frames, idx = sample_frames(video, n)
    urls = [data_url(encode_image(resize_max_side(f, max_side), fmt, quality), _MIME[fmt])
            for f in frames]
    return urls, idx


def encode_mp4(video: np.ndarray, fps: float = 8.0, max_side: int | None = 512) -> bytes:
    """Encodes the clip as H.264 mp4 bytes (yuv420p, so every decoder reads it).

    H.264 with 4:2:0 chroma needs even width and height; odd sizes are padded by one
    replicated edge pixel rather than rescaled, so object positions stay exact.
    """
    frames = np.stack([resize_max_side(f, max_side) for f in check_video(video)])
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        # macro_block_size=1: the size is already valid; don't let the writer rescale.
        writer = imageio_ffmpeg.write_frames(path, (frames.shape[2], frames.shape[1]), fps=fps,
                                             codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
                                             macro_block_size=1, output_params=["-movflags", "+faststart"])
        writer.send(None)  # start ffmpeg
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


def decode_mp4(data: bytes) -> np.ndarray:
    """Decodes mp4 bytes back to a uint8 (T, H, W, 3) array (tests and debugging)."""
    fd, path = tempfile.mkstemp(suffix=".mp4")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        capture = cv2.VideoCapture(path)
        frames = []
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()
        if not frames:
            raise ValueError("bytes are not a decodable mp4")
        return np.stack(frames)
    finally:
        os.unlink(path)


def mp4_data_url(video: np.ndarray, fps: float = 8.0, max_side: int | None = 512) -> str:
    return data_url(encode_mp4(video, fps, max_side), "video/mp4")
