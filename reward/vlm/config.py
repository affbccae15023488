"""Configuration of the VLM backends (judge and critic), embeddable in run presets.

``extra='forbid'`` makes a typo in a preset (``concurency = 8``) a load-time error
instead of a silently ignored setting. The API key itself is never part of the
configuration: only the *name* of the environment variable that holds it, so presets,
the database and logs can be shared without leaking it.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Sent when no key variable is configured: local vLLM servers accept any key.
DUMMY_API_KEY = "EMPTY"


class VLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8000/v1"], min_length=1,
                                 description="OpenAI-compatible endpoints; several are used round-robin")
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", min_length=1)
    api_key_env: str | None = Field(None, description="NAME of the env var holding the API key; "
                                    "None sends a dummy key (local vLLM)")
    timeout_s: float = Field(120.0, gt=0, description="per HTTP request")
    max_retries: int = Field(3, ge=0, description="retries after the first attempt (timeouts, 429, 5xx, "
                             "connection errors)")
    backoff_base_s: float = Field(0.5, ge=0, description="first retry delay; doubles each retry")
    backoff_max_s: float = Field(30.0, ge=0, description="cap on one backoff delay, Retry-After included")
    concurrency: int = Field(8, ge=1, description="max requests in flight (all endpoints together)")
    video_mode: Literal["frames", "video_url"] = Field(
        "frames", description="'frames': n sampled image_url parts (any API); 'video_url': the clip as a "
        "base64 mp4 (vLLM Qwen-VL)")
    n_frames: int = Field(8, ge=1, le=64)
    frame_max_side: int | None = Field(512, ge=16, description="downscale frames so the longer side fits")
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = Field(90, ge=10, le=100)
    video_fps: float = Field(8.0, gt=0, description="fps written into the mp4 and sent as "
                             "mm_processor_kwargs.fps in video_url mode")
    max_payload_bytes: int = Field(16_000_000, ge=1024, description="refuse to send bigger request bodies")
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(512, ge=16)
    response_format: Literal["json_object", "json_schema", "none"] = Field(
        "json_object", description="how to ask for JSON: json_object works on OpenAI and vLLM; "
        "json_schema constrains decoding to the answer schema; none for servers that reject both")

    mode: Literal["scores", "logprob"] = Field(
        "scores", description="judge answers: 'scores' parses 1-5 ratings and a verdict from a JSON answer; "
        "'logprob' asks yes/no questions and reads P(yes) from the first answer token's top_logprobs "
        "(one token per question; vLLM and OpenAI return them)")
    top_logprobs: int = Field(20, ge=2, le=20, description="alternatives per token read in logprob mode")

    @field_validator("base_urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"base URL must start with http:// or https://, got {url!r}")
        return [u.rstrip("/") for u in urls]

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and (not name or not name.replace("_", "").isalnum()):
            raise ValueError(f"api_key_env must be an environment variable NAME, got {name!r}")
        return name

    def resolve_api_key(self) -> str:
        """Reads the key from the configured variable (never stored on the config)."""
        if self.api_key_env is None:
            return DUMMY_API_KEY
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(f"environment variable {self.api_key_env} (api_key_env) is not set or empty")
        return key
