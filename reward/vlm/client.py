"""One async client for OpenAI-compatible chat APIs (vLLM, OpenAI, Gemini's OpenAI endpoint).

Built on the real ``openai`` package (``AsyncOpenAI``) but with the SDK's own retries
switched off (``max_retries=0``): the retry loop lives here so that every fault is counted
by kind, ``Retry-After`` is honoured exactly, and a retry can move on to the next endpoint
(several base URLs are used round-robin). An ``asyncio.Semaphore`` bounds the requests in
flight across all endpoints, so a batch of hundreds of videos never floods the server.

The client also turns a video array into message content (sampled frames as ``image_url``
parts, or the whole clip as a ``video_url`` mp4) and refuses, before sending, a request
body larger than ``max_payload_bytes``.

The API key is read from the environment variable *named* in the config and handed only to
the HTTP client; it is never logged, stored, or included in an error message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import itertools
import json
import logging
import random
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import numpy as np
import openai
from openai.types.chat import ChatCompletion

from reward import video_io
from reward.vlm.config import VLMConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Every kind of fault a VLM call can hit. Transport kinds are counted per failed HTTP
#: attempt (so retries show up); answer kinds per unusable answer (so re-asks show up).
FAULT_KINDS = (
    "timeout", "rate_limited", "server_error", "connection", "client_error",   # transport
    "payload_too_large",                                                       # refused locally
    "malformed", "out_of_range", "refusal", "empty_choices",                   # answer
    "no_logprobs", "no_yes_no",                                                # logprob-mode answer
)
RETRYABLE = frozenset({"timeout", "rate_limited", "server_error", "connection"})


class FaultCounter:
    """Thread-safe counts of faults by kind; the loop reads :meth:`snapshot` and stores it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(FAULT_KINDS, 0)

    def add(self, kind: str, n: int = 1) -> None:
        if kind not in self._counts:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        with self._lock:
            self._counts[kind] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(FAULT_KINDS, 0)


class VLMRequestError(RuntimeError):
    """A request that failed for good (retries spent, or not retryable); ``kind`` ∈ FAULT_KINDS."""

    def __init__(self, kind: str, message: str, attempts: int = 0) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.attempts = attempts


class PayloadTooLargeError(VLMRequestError, ValueError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__("payload_too_large",
                         f"request body is {size} bytes, above max_payload_bytes={limit}; "
                         "lower n_frames / frame_max_side / jpeg_quality or raise the limit")
        self.size, self.limit = size, limit


@dataclass
class ChatReply:
    """What came back from one successful HTTP exchange (the answer may still be unusable)."""

    content: str | None
    finish_reason: str | None
    refusal: str | None
    n_choices: int
    model: str
    base_url: str
    attempts: int
    latency_s: float
    top_logprobs: list[tuple[str, float]] | None = None  # first answer token's alternatives, when asked


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (delta-seconds or HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _classify(err: Exception) -> tuple[str, float | None]:
    """Maps an openai exception to (fault kind, server-requested delay or None)."""
    if isinstance(err, openai.APITimeoutError):  # subclass of APIConnectionError: test first
        return "timeout", None
    if isinstance(err, openai.APIConnectionError):
        return "connection", None
    if isinstance(err, openai.APIStatusError):
        delay = retry_after_seconds(getattr(err.response, "headers", None))
        if err.status_code == 429:
            return "rate_limited", delay
        if err.status_code >= 500 or err.status_code == 408:
            return "server_error", delay
        return "client_error", None
    return "server_error", None  # e.g. a 200 whose body is not JSON / not a chat completion


def _short(err: Exception, limit: int = 200) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"the server sent a body that is not valid JSON ({err.msg})"
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _LoopState:
    """Per-event-loop resources: asyncio primitives and httpx pools are bound to one loop."""

    def __init__(self, config: VLMConfig, api_key: str) -> None:
        self.semaphore = asyncio.Semaphore(config.concurrency)
        self.clients = [openai.AsyncOpenAI(base_url=url, api_key=api_key, timeout=config.timeout_s,
                                           max_retries=0) for url in config.base_urls]


class VLMClient:
    """Async chat client with retries, backoff, round-robin endpoints and bounded concurrency.

    Use :meth:`chat` from async code, or :meth:`run` to drive a coroutine from sync code.
    Several judges/critics may share one client (and thus one concurrency bound).
    """

    def __init__(self, config: VLMConfig, faults: FaultCounter | None = None) -> None:
        self.config = config
        self.faults = faults if faults is not None else FaultCounter()
        self._api_key = config.resolve_api_key()  # fails early, naming the variable only
        self._rr = itertools.count()
        self._states: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState]" = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"VLMClient(model={self.config.model!r}, base_urls={self.config.base_urls!r})"

    # ---------------------------------------------------------------- content building
    def video_content(self, video: np.ndarray) -> tuple[list[dict], dict]:
        """Message parts showing ``video`` per ``config.video_mode``, plus a description dict.

        'frames': ``n_frames`` uniformly sampled frames as ``image_url`` data URLs.
        'video_url': the whole clip as a base64 mp4 ``video_url`` part.
        """
        cfg = self.config
        video_io.check_video(video)
        if cfg.video_mode == "frames":
            urls, idx = video_io.frame_data_urls(video, cfg.n_frames, cfg.image_format,
                                                 cfg.frame_max_side, cfg.jpeg_quality)
            parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
            return parts, {"mode": "frames", "frame_indices": idx.tolist(), "num_frames": int(len(video))}
        url = video_io.mp4_data_url(video, cfg.video_fps, cfg.frame_max_side)
        return ([{"type": "video_url", "video_url": {"url": url}}],
                {"mode": "video_url", "num_frames": int(len(video)), "fps": cfg.video_fps})

    def request_body(self, messages: list[dict], json_schema: dict | None = None,
                     top_logprobs: int | None = None) -> dict:
        """The exact JSON body POSTed to ``/chat/completions``. With ``top_logprobs`` the answer is
        one token and its ``top_logprobs`` most likely alternatives come back with their log-probabilities
        (no JSON format is asked for)."""
        cfg = self.config
        body: dict[str, Any] = {"model": cfg.model, "messages": messages,
                                "temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
        if top_logprobs is not None:
            body.update(max_tokens=1, logprobs=True, top_logprobs=int(top_logprobs))
        elif cfg.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif cfg.response_format == "json_schema" and json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": json_schema.get("title", "answer"), "schema": json_schema}}
        if cfg.video_mode == "video_url" and _has_video(messages):
            # vLLM reads this per request (Qwen-VL); it tells the processor the clip's real rate.
            body["mm_processor_kwargs"] = {"fps": cfg.video_fps}
        return body

    def check_payload(self, body: dict) -> int:
        """Size in bytes of the serialised body; raises PayloadTooLargeError above the limit."""
        size = len(json.dumps(body, separators=(",", ":")).encode())
        if size > self.config.max_payload_bytes:
            self.faults.add("payload_too_large")
            raise PayloadTooLargeError(size, self.config.max_payload_bytes)
        return size

    # ---------------------------------------------------------------- requests
    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._states.get(loop)
            if state is None:
                state = self._states[loop] = _LoopState(self.config, self._api_key)
            return state

    def _backoff(self, attempt: int, server_delay: float | None) -> float:
        cfg = self.config
        if server_delay is not None:  # the server knows best; honour it (capped)
            return min(server_delay, cfg.backoff_max_s)
        base = cfg.backoff_base_s * (2 ** attempt)
        return min(base * (1.0 + 0.25 * random.random()), cfg.backoff_max_s)

    async def chat(self, messages: list[dict], json_schema: dict | None = None,
                   top_logprobs: int | None = None) -> ChatReply:
        """Sends one chat completion, retrying transport faults; raises VLMRequestError."""
        cfg = self.config
        body = self.request_body(messages, json_schema, top_logprobs)
        self.check_payload(body)
        state = self._state()
        n_urls = len(cfg.base_urls)
        first = next(self._rr)  # round-robin start; each retry moves on to the next endpoint
        # the concurrency slot is held for each attempt only: a request backing off sleeps outside it,
        # so the other requests keep the endpoint busy meanwhile
        for attempt in range(cfg.max_retries + 1):
            i = (first + attempt) % n_urls
            client, url = state.clients[i], cfg.base_urls[i]
            async with state.semaphore:
                start = time.perf_counter()
                try:
                    # The documented raw-request path of the SDK (same auth, timeout, error types
                    # and ChatCompletion parsing as chat.completions.create) without create()'s
                    # TypedDict transform, which walks every image part on the event loop
                    # (~3 ms per 8-frame request) and is a no-op for a plain JSON body.
                    completion = await client.post("/chat/completions", cast_to=ChatCompletion, body=body)
                    return _reply(completion, url, attempt + 1, time.perf_counter() - start)
                except (openai.OpenAIError, json.JSONDecodeError) as err:
                    kind, server_delay = _classify(err)
                    self.faults.add(kind)
                    message = _short(err)
            if kind not in RETRYABLE or attempt == cfg.max_retries:
                log.warning("VLM request to %s failed for good after %d attempt(s): %s (%s)",
                            url, attempt + 1, kind, message)
                raise VLMRequestError(kind, f"{message} (after {attempt + 1} attempt(s))", attempt + 1) from None
            delay = self._backoff(attempt, server_delay)
            log.info("VLM request to %s: %s, retry %d/%d in %.2f s", url, kind, attempt + 1,
                     cfg.max_retries, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---------------------------------------------------------------- sync bridge
    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Runs ``make()`` to completion from sync code and closes this loop's connections.

        Uses a fresh event loop; when called from inside a running loop (a notebook, an async
        graph node) it runs that loop in a worker thread instead of failing.
        """
        async def main() -> T:
            try:
                return await make()
            finally:
                await self.aclose()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(lambda: asyncio.run(main())).result()

    async def aclose(self) -> None:
        """Closes the HTTP connections opened on the current loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._states.pop(loop, None)
        if state is not None:
            for client in state.clients:
                await client.close()


def _has_video(messages: list[dict]) -> bool:
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(p.get("type") == "video_url" for p in content):
            return True
    return False


def _reply(completion: Any, url: str, attempts: int, latency: float) -> ChatReply:
    choices = list(getattr(completion, "choices", None) or [])
    if not choices:
        return ChatReply(None, None, None, 0, getattr(completion, "model", "") or "", url, attempts, latency)
    first = choices[0]
    message = first.message
    top = None
    content_lp = getattr(getattr(first, "logprobs", None), "content", None)
    if content_lp:
        top = [(str(t.token), float(t.logprob)) for t in (content_lp[0].top_logprobs or [])]
    return ChatReply(content=message.content, finish_reason=first.finish_reason,
                     refusal=getattr(message, "refusal", None), n_choices=len(choices),
                     model=getattr(completion, "model", "") or "", base_url=url, attempts=attempts,
                     latency_s=latency, top_logprobs=top)
