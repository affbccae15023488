"""Judge throughput: concurrency 1 vs 16 against a loopback server with a fixed latency.

A real VLM server batches concurrent requests, so the judge's wall time is dominated by
how many requests it keeps in flight. This benchmark measures the VLM judge end to end —
frame sampling, JPEG encoding, the real ``openai`` client, JSON validation — against the
loopback OpenAI-compatible server answering every request after a fixed delay (200 ms by
default), at concurrency 1 and 16, and writes ``bench/results/judge_throughput.json``.
The ideal speed-up is 16×; the goal is ≥ 12×.

Run from the repository root: ``python -m bench.judge_throughput`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so `python bench/judge_throughput.py` finds tests.vlm_server
    sys.path.insert(0, str(ROOT))

from reward.vlm.config import VLMConfig  # noqa: E402
from reward.vlm.judge import VLMJudge  # noqa: E402
from tests.vlm_server import LoopbackVLM, closed_port, judgement  # noqa: E402


def bouncing_ball(t: int, h: int, w: int) -> np.ndarray:
    """A smooth synthetic clip (gradient backdrop, a disc falling and bouncing) that compresses
    like a rendered or generated video; random noise would inflate JPEGs tenfold."""
    yy, xx = np.mgrid[0:h, 0:w]
    backdrop = np.stack([40 + 80 * yy / h, 60 + 60 * xx / w, np.full((h, w), 120.0)], -1)
    frames = np.empty((t, h, w, 3), np.uint8)
    radius = max(2, h // 12)
    for i in range(t):
        phase = (2.0 * i / max(1, t - 1)) % 1.0  # two hops, on the floor at phase 0 and 1
        cy = (h - radius) - (h - 2 * radius) * 4 * phase * (1 - phase)
        cx = radius + (w - 2 * radius) * i / max(1, t - 1)
        frame = backdrop.copy()
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = (230, 40, 40)
        frames[i] = frame.astype(np.uint8)
    return frames


class ServerProcess:
    """The loopback server in its own process, like a real VLM server (no shared GIL)."""

    def __init__(self, latency: float) -> None:
        self.port = closed_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "vlm_server.py"), "--port",
                                         str(self.port), "--latency", str(latency)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not self._get("/v1/models"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError("the loopback server process did not start")
            time.sleep(0.05)

    def _get(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return json.load(response)
        except OSError:
            return None

    def reset_max_in_flight(self) -> None:
        self._get("/stats/reset")

    @property
    def max_in_flight(self) -> int:
        return self._get("/stats")["max_in_flight"]

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(10)


class ServerThread(LoopbackVLM):
    """The loopback server in this process (shares the GIL with the client)."""

    def __init__(self, latency: float) -> None:
        super().__init__(default=judgement(latency=latency))
        self.start()

    def reset_max_in_flight(self) -> None:
        self.max_in_flight = 0


def measure(concurrency: int, n_videos: int, latency: float, video: np.ndarray, n_frames: int,
            server_kind: str) -> dict:
    with (ServerProcess if server_kind == "process" else ServerThread)(latency) as server:
        judge = VLMJudge(VLMConfig(base_urls=[server.base_url], model="loopback", timeout_s=30,
                                   max_retries=0, concurrency=concurrency, n_frames=n_frames))
        judge.score("warm-up", video)  # imports, first connection
        server.reset_max_in_flight()
        start = time.perf_counter()
        scores = judge.score_batch([(f"prompt {i}", video) for i in range(n_videos)])
        elapsed = time.perf_counter() - start
        max_in_flight = server.max_in_flight
    judged = sum(s.judged for s in scores)
    if judged != n_videos:
        raise RuntimeError(f"only {judged}/{n_videos} videos judged at concurrency {concurrency}: "
                           f"{next(s.error for s in scores if not s.judged)}")
    return {"concurrency": concurrency, "videos": n_videos, "elapsed_s": round(elapsed, 4),
            "videos_per_s": round(n_videos / elapsed, 3),
            "server_max_in_flight": max_in_flight,
            "ideal_videos_per_s": round(min(concurrency, n_videos) / latency, 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="server delay per request (s)")
    parser.add_argument("--videos-serial", type=int, default=24, help="videos judged at concurrency 1")
    parser.add_argument("--videos-parallel", type=int, default=192, help="videos judged at concurrency 16")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--n-frames", type=int, default=8)
    parser.add_argument("--shape", default="33x256x256", help="TxHxW of the judged video")
    parser.add_argument("--server", choices=("process", "thread"), default="process",
                        help="loopback server in its own process (like a real server) or in-process")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "judge_throughput.json")
    args = parser.parse_args(argv)

    t, h, w = (int(x) for x in args.shape.split("x"))
    video = bouncing_ball(t, h, w)
    serial = measure(1, args.videos_serial, args.latency, video, args.n_frames, args.server)
    parallel = measure(args.concurrency, args.videos_parallel, args.latency, video, args.n_frames,
                       args.server)
    speedup = parallel["videos_per_s"] / serial["videos_per_s"]
    result = {
        "benchmark": "judge_throughput",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "setup": {"server": f"tests.vlm_server.LoopbackVLM ({args.server}, loopback HTTP)",
                  "server_latency_s": args.latency, "video_shape": [t, h, w, 3],
                  "n_frames": args.n_frames, "image_format": "jpeg", "frame_max_side": 512,
                  "client": "reward.vlm.judge.VLMJudge via openai.AsyncOpenAI"},
        "runs": [serial, parallel],
        "speedup": round(speedup, 2),
        "goal_speedup": 12.0,
        "goal_met": speedup >= 12.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for run in (serial, parallel):
        print(f"concurrency {run['concurrency']:>2}: {run['videos']} videos in {run['elapsed_s']:.2f} s "
              f"= {run['videos_per_s']:.2f} videos/s (server max in flight {run['server_max_in_flight']})")
    print(f"speed-up {speedup:.1f}x (goal ≥ 12x) -> {args.out}")
    return result


if __name__ == "__main__":
    main()
