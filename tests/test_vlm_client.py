"""VLM client through the real openai package against a loopback server: request shape,
retries/backoff, Retry-After, timeouts, connection refused, concurrency bound, round-robin,
payload limit, API-key secrecy, and the video encoders behind it."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
import pytest
from pydantic import ValidationError

from reward import video_io
from reward.vlm.client import FaultCounter, PayloadTooLargeError, VLMClient, retry_after_seconds
from reward.vlm.config import VLMConfig
from reward.vlm.judge import VLMJudge
from tests.vlm_server import (LoopbackVLM, broken_body, closed_port, hang, judgement, status,
                              truncated)


def video(t: int = 16, h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def cfg(*urls: str, **kw) -> VLMConfig:
    base = dict(base_urls=list(urls), model="judge-model", timeout_s=2.0, max_retries=2,
                backoff_base_s=0.01, backoff_max_s=2.0)
    base.update(kw)
    return VLMConfig(**base)


def user_parts(body: dict) -> list[dict]:
    return [m for m in body["messages"] if m["role"] == "user"][0]["content"]


# ------------------------------------------------------------------ request shape
def test_frames_request_shape():
    with LoopbackVLM() as srv:
        judge = VLMJudge(cfg(srv.base_url, n_frames=5, frame_max_side=32, temperature=0.2, max_tokens=300))
        score = judge.score("a red ball bounces", video(t=16, h=40, w=48))
    assert score.judged
    body = srv.requests[0]
    assert body["model"] == "judge-model"
    assert body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0.2 and body["max_tokens"] == 300
    assert body["messages"][0]["role"] == "system" and "physical_commonsense" in body["messages"][0]["content"]
    parts = user_parts(body)
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 5
    assert "a red ball bounces" in parts[0]["text"]
    for img in images:
        mime, data = video_io.decode_data_url(img["image_url"]["url"])
        assert mime == "image/jpeg"
        assert video_io.decode_image(data).shape == (27, 32, 3)  # longer side scaled to 32
    assert "mm_processor_kwargs" not in body


def test_png_frames_and_json_schema_mode():
    with LoopbackVLM() as srv:
        judge = VLMJudge(cfg(srv.base_url, n_frames=3, image_format="png", frame_max_side=None,
                             response_format="json_schema"))
        clip = video(t=9, h=8, w=10)
        assert judge.score("p", clip).judged
    body = srv.requests[0]
    assert body["response_format"]["type"] == "json_schema"
    assert "semantic_adherence" in json.dumps(body["response_format"]["json_schema"]["schema"])
    images = [p for p in user_parts(body) if p["type"] == "image_url"]
    decoded = [video_io.decode_image(video_io.decode_data_url(p["image_url"]["url"])[1]) for p in images]
    # PNG is lossless: the sampled frames (0, 4, 8) come back bit for bit
    for frame, idx in zip(decoded, (0, 4, 8)):
        np.testing.assert_array_equal(frame, clip[idx])


def test_video_url_request_shape():
    with LoopbackVLM() as srv:
        judge = VLMJudge(cfg(srv.base_url, video_mode="video_url", video_fps=12.0, frame_max_side=None))
        assert judge.score("a ball rolls", video(t=10, h=16, w=16)).judged
    body = srv.requests[0]
    assert body["mm_processor_kwargs"] == {"fps": 12.0}
    parts = user_parts(body)
    assert not [p for p in parts if p["type"] == "image_url"]
    videos = [p for p in parts if p["type"] == "video_url"]
    assert len(videos) == 1
    mime, data = video_io.decode_data_url(videos[0]["video_url"]["url"])
    assert mime == "video/mp4"
    assert video_io.decode_mp4(data).shape == (10, 16, 16, 3)


# ------------------------------------------------------------------ retries and faults
def test_rate_limit_honours_retry_after():
    with LoopbackVLM([status(429, retry_after=0.6), judgement()]) as srv:
        judge = VLMJudge(cfg(srv.base_url))
        start = time.monotonic()
        score = judge.score("p", video())
        elapsed = time.monotonic() - start
    assert score.judged
    assert len(srv.requests) == 2
    assert srv.arrivals[1] - srv.arrivals[0] >= 0.55  # waited for Retry-After, not the 10 ms backoff
    assert elapsed >= 0.55
    assert judge.faults.snapshot()["rate_limited"] == 1


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after_seconds({"retry-after": http_date}) <= 31
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_server_errors_are_retried_then_succeed():
    with LoopbackVLM([status(500), status(503), judgement(sa=5)]) as srv:
        judge = VLMJudge(cfg(srv.base_url, max_retries=2))
        score = judge.score("p", video())
    assert score.judged and score.sa == 1.0
    assert len(srv.requests) == 3
    assert judge.faults.snapshot()["server_error"] == 2


def test_server_errors_exhaust_retries_unjudged():
    with LoopbackVLM(default=status(503)) as srv:
        judge = VLMJudge(cfg(srv.base_url, max_retries=1))
        score = judge.score("p", video())
    assert not score.judged and score.sa is None and score.accept is None
    assert score.error.startswith("server_error")
    assert len(srv.requests) == 2


def test_client_errors_are_not_retried():
    with LoopbackVLM(default=status(400)) as srv:
        judge = VLMJudge(cfg(srv.base_url, max_retries=3))
        score = judge.score("p", video())
    assert not score.judged and score.error.startswith("client_error")
    assert len(srv.requests) == 1 and judge.faults.snapshot()["client_error"] == 1


def test_timeout_is_retried():
    with LoopbackVLM([hang(1.5), judgement()]) as srv:
        judge = VLMJudge(cfg(srv.base_url, timeout_s=0.3, max_retries=1))
        start = time.monotonic()
        score = judge.score("p", video())
        assert time.monotonic() - start < 1.4  # did not wait for the hung request
    assert score.judged
    assert judge.faults.snapshot()["timeout"] == 1


def test_timeout_exhausted_unjudged():
    with LoopbackVLM(default=hang(1.5)) as srv:
        judge = VLMJudge(cfg(srv.base_url, timeout_s=0.25, max_retries=0))
        score = judge.score("p", video())
    assert not score.judged and score.error.startswith("timeout")
    assert judge.faults.snapshot()["timeout"] == 1


def test_connection_refused_unjudged():
    port = closed_port()
    judge = VLMJudge(cfg(f"http://127.0.0.1:{port}/v1", max_retries=1))
    score = judge.score("p", video())
    assert not score.judged and score.error.startswith("connection")
    assert score.raw == ""
    assert judge.faults.snapshot()["connection"] == 2


def test_broken_http_body_is_a_server_error():
    with LoopbackVLM([broken_body(), judgement()]) as srv:
        judge = VLMJudge(cfg(srv.base_url, max_retries=1))
        assert judge.score("p", video()).judged
    assert judge.faults.snapshot()["server_error"] == 1


def test_round_robin_and_failover():
    with LoopbackVLM() as a, LoopbackVLM() as b:
        judge = VLMJudge(cfg(a.base_url, b.base_url))
        for _ in range(4):
            assert judge.score("p", video()).judged
        assert len(a.requests) == 2 and len(b.requests) == 2
    with LoopbackVLM() as up:
        down = f"http://127.0.0.1:{closed_port()}/v1"
        judge = VLMJudge(cfg(down, up.base_url, max_retries=1))
        scores = judge.score_batch([("p", video())] * 4)
    assert all(s.judged for s in scores)  # every request that hit the dead endpoint moved on


def test_bounded_concurrency():
    with LoopbackVLM(default=judgement(latency=0.2)) as srv:
        judge = VLMJudge(cfg(srv.base_url, concurrency=3))
        start = time.monotonic()
        scores = judge.score_batch([(f"p{i}", video(t=4, h=8, w=8)) for i in range(9)])
        elapsed = time.monotonic() - start
    assert all(s.judged for s in scores)
    assert srv.max_in_flight == 3
    assert 0.55 <= elapsed < 1.6  # three waves of 0.2 s, not nine


def test_a_request_backing_off_gives_its_concurrency_slot_to_the_others():
    """One slot, the first answer a 429 with Retry-After 0.6 s: the other requests are served while it
    waits (they do not queue behind its sleep), and the slot still bounds what is in flight."""
    with LoopbackVLM([status(429, retry_after=0.6)], default=judgement(latency=0.1)) as srv:
        judge = VLMJudge(cfg(srv.base_url, concurrency=1))
        scores = judge.score_batch([(f"p{i}", video(t=4, h=8, w=8)) for i in range(3)])
        arrivals = [t - srv.arrivals[0] for t in srv.arrivals]
    assert all(s.judged for s in scores) and len(arrivals) == 4
    assert arrivals[1] < 0.3 and arrivals[2] < 0.4  # served during the first one's backoff
    assert arrivals[3] >= 0.55 and srv.max_in_flight == 1


def test_payload_limit_checked_before_sending():
    with LoopbackVLM() as srv:
        judge = VLMJudge(cfg(srv.base_url, max_payload_bytes=4000, image_format="png", frame_max_side=None))
        score = judge.score("p", video(t=8, h=64, w=64))
        assert not score.judged and score.error.startswith("payload_too_large")
        assert "max_payload_bytes=4000" in score.error
        assert srv.requests == []
        client = VLMClient(cfg(srv.base_url, max_payload_bytes=1024))
        with pytest.raises(PayloadTooLargeError, match="max_payload_bytes"):
            client.check_payload({"messages": [{"content": "x" * 2000}]})


def test_sync_wrapper_works_inside_a_running_loop():
    with LoopbackVLM() as srv:
        judge = VLMJudge(cfg(srv.base_url))

        async def inside() -> bool:
            return judge.score("p", video()).judged  # a sync call from async code

        assert asyncio.run(inside())
        assert judge.score("again", video()).judged  # and a fresh loop afterwards


# ------------------------------------------------------------------ secrets
def test_api_key_never_logged_or_stored(monkeypatch, caplog):
    key = "sk-phyloop-test-9f1c2a7e5b3d4c6e8a0b"
    monkeypatch.setenv("PHYLOOP_TEST_VLM_KEY", key)
    caplog.set_level(logging.DEBUG)
    with LoopbackVLM([status(429, retry_after=0.05), status(500), truncated(), judgement(),
                      hang(1.0), hang(1.0)]) as srv:
        config = cfg(srv.base_url, f"http://127.0.0.1:{closed_port()}/v1",
                     api_key_env="PHYLOOP_TEST_VLM_KEY", timeout_s=0.3, max_retries=3)
        judge = VLMJudge(config)
        scores = [judge.score("p", video()) for _ in range(3)]
    auth = [{k.lower(): v for k, v in h.items()}["authorization"] for h in srv.headers]
    assert auth and all(a == f"Bearer {key}" for a in auth)  # the key was really used
    assert caplog.records  # there was logging to leak into
    assert key not in caplog.text
    for s in scores:
        assert key not in repr(s) and key not in s.raw and key not in json.dumps(s.details)
    assert key not in repr(judge.client) and key not in config.model_dump_json()


def test_missing_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("PHYLOOP_ABSENT_KEY", raising=False)
    with pytest.raises(ValueError, match="PHYLOOP_ABSENT_KEY"):
        VLMClient(cfg("http://127.0.0.1:1/v1", api_key_env="PHYLOOP_ABSENT_KEY"))


def test_config_forbids_unknown_fields_and_bad_urls():
    with pytest.raises(ValidationError):
        VLMConfig(concurency=4)
    with pytest.raises(ValidationError):
        VLMConfig(base_urls=["localhost:8000"])
    with pytest.raises(ValidationError):
        VLMConfig(base_urls=[])
    assert VLMConfig(base_urls=["http://h:1/v1/"]).base_urls == ["http://h:1/v1"]


def test_fault_counter_rejects_unknown_kinds():
    faults = FaultCounter()
    faults.add("timeout", 2)
    assert faults.snapshot()["timeout"] == 2 and faults.total() == 2
    with pytest.raises(ValueError, match="unknown fault kind"):
        faults.add("gremlins")


# ------------------------------------------------------------------ video encoding
def test_sample_indices_uniform_and_unique():
    assert video_io.sample_indices(49, 8).tolist() == [0, 7, 14, 21, 27, 34, 41, 48]
    assert video_io.sample_indices(3, 8).tolist() == [0, 1, 2]
    assert video_io.sample_indices(1, 4).tolist() == [0]
    with pytest.raises(ValueError):
        video_io.check_video(np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError):
        video_io.check_video(np.zeros((4, 8, 8), np.uint8))


def test_mp4_round_trip_keeps_content_and_pads_odd_sizes():
    clip = np.zeros((6, 15, 21, 3), np.uint8)
    for t in range(6):
        clip[t, 5:10, 3 * t: 3 * t + 5] = 255  # a white square moving right
    back = video_io.decode_mp4(video_io.encode_mp4(clip, fps=6, max_side=None))
    assert back.shape == (6, 16, 22, 3)
    cols = [int(np.argmax(back[t, 7].mean(-1) > 128)) for t in range(6)]
    assert cols == [3 * t for t in range(6)]
