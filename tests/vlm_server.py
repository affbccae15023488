"""A loopback OpenAI-compatible chat server for tests and benchmarks (no VLM behind it).

``LoopbackVLM`` serves ``POST /v1/chat/completions`` and ``GET /v1/models`` on 127.0.0.1 at a
free port, answering each chat request with the next :class:`Reply` of a script (then with
the default reply). Replies cover what real servers do: valid answers, latency, hanging past
the client's timeout, 429 with ``Retry-After``, 500/503, truncated or out-of-range JSON,
refusals, empty ``choices``, and a broken (non-JSON) HTTP body. It records every request
body and header set and the largest number of requests in flight at once (also readable,
and resettable, over HTTP at ``GET /stats`` and ``GET /stats/reset`` when it runs in another
process).

Run standalone (also what the fake ``vllm`` executable in the tests calls):
``python tests/vlm_server.py [serve MODEL] --port 8000 [--latency 0.2]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable


@dataclass
class Reply:
    """One scripted server behaviour.

    kind: "ok" (``content`` as the assistant message), "status" (HTTP ``status`` with an
    error body and optional ``retry_after`` header), "empty_choices", "broken_body"
    (200 with a non-JSON body). ``latency`` is slept before answering; ``refusal`` fills
    the message's ``refusal`` field.
    """

    kind: str = "ok"
    content: str | None = None
    latency: float = 0.0
    status: int = 200
    retry_after: str | None = None
    refusal: str | None = None
    finish_reason: str = "stop"
    top_logprobs: list[tuple[str, float]] | None = None  # the first token's alternatives (logprobs requests)


# ------------------------------------------------------------------ reply builders
def answer(obj: dict | str, latency: float = 0.0, **kw) -> Reply:
    """A 200 whose assistant content is ``obj`` (dumped to JSON unless already a string)."""
    return Reply("ok", obj if isinstance(obj, str) else json.dumps(obj), latency, **kw)


def judgement(sa: int = 4, pc: int = 3, verdict: str = "Accept",
              rationale: str = "The ball falls and bounces lower each time.", latency: float = 0.0,
              fenced: bool = False) -> Reply:
    text = json.dumps({"semantic_adherence": sa, "physical_commonsense": pc, "verdict": verdict,
                       "rationale": rationale})
    return answer(f"```json\n{text}\n```" if fenced else text, latency)


def yes_no(p_yes: float, latency: float = 0.0, other: float = 0.0) -> Reply:
    """A one-token answer whose first token's top logprobs give P(Yes) = ``p_yes`` (spread over the
    spellings " Yes"/"yes" as a real tokenizer would), P(No) = 1 − p_yes − ``other``."""
    import math

    p_no = 1.0 - p_yes - other
    alts = [("Yes", 0.8 * p_yes), (" yes", 0.2 * p_yes), ("No", 0.9 * p_no), ("no", 0.1 * p_no), ("Maybe", other)]
    alts = sorted(((t, math.log(p)) for t, p in alts if p > 0), key=lambda a: -a[1])
    return Reply("ok", alts[0][0] if alts else "", latency, top_logprobs=alts)


def status(code: int, retry_after: float | str | None = None, latency: float = 0.0) -> Reply:
    return Reply("status", latency=latency, status=code,
                 retry_after=None if retry_after is None else str(retry_after))


def hang(seconds: float) -> Reply:
    """Sleeps ``seconds`` (past the client's timeout) before a valid answer nobody reads."""
    return Reply("ok", judgement().content, latency=seconds)


def truncated() -> Reply:
    text = judgement().content
    return answer(text[: len(text) // 2])


def refusal_text() -> Reply:
    return answer("I'm sorry, but I can't help with evaluating this video.")


def refusal_field() -> Reply:
    return Reply("ok", None, refusal="I can't assist with that request.")


def empty_choices() -> Reply:
    return Reply("empty_choices")


def broken_body() -> Reply:
    return Reply("broken_body")


# ------------------------------------------------------------------ server
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # don't join handlers still sleeping in hang()
    request_queue_size = 128  # the default listen backlog of 5 drops bursts of new connections


class LoopbackVLM:
    """Threaded loopback server; use as a context manager or call start()/stop()."""

    def __init__(self, script: Iterable[Reply] = (),
                 default: Reply | Callable[[dict], Reply] | None = None,
                 model: str = "test-vlm", port: int = 0) -> None:
        self.model = model
        self.default = default if default is not None else judgement()
        self._script: deque[Reply] = deque(script)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = _Server(("127.0.0.1", port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def start(self) -> "LoopbackVLM":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "LoopbackVLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -------------------------------------------------------------- internals
    def _next(self, body: dict) -> Reply:
        with self._lock:
            if self._script:
                return self._script.popleft()
        return self.default(body) if callable(self.default) else self.default

    def _completion(self, reply: Reply) -> dict:
        logprobs = None
        if reply.top_logprobs is not None:  # the OpenAI / vLLM chat logprobs shape
            top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in reply.top_logprobs]
            first = top[0] if top else {"token": reply.content or "", "logprob": 0.0, "bytes": []}
            logprobs = {"content": [{**first, "top_logprobs": top}], "refusal": None}
        choices = [] if reply.kind == "empty_choices" else [{
            "index": 0, "finish_reason": reply.finish_reason, "logprobs": logprobs,
            "message": {"role": "assistant", "content": reply.content, "refusal": reply.refusal}}]
        return {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
                "created": int(time.time()), "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}

    def _handler_class(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out as two writes; with Nagle on, the client's delayed ACK
            # would add ~40 ms to every response (and distort latency measurements)
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout); nothing to do

            def do_GET(self) -> None:
                if self.path.rstrip("/") in ("/stats", "/stats/reset"):  # for out-of-process use
                    with srv._lock:
                        stats = {"requests": len(srv.requests), "max_in_flight": srv.max_in_flight}
                        if self.path.rstrip("/") == "/stats/reset":
                            srv.max_in_flight = srv.in_flight
                    return self._send(200, json.dumps(stats).encode())
                if self.path.rstrip("/") != "/v1/models":
                    return self._send(404, b'{"error": {"message": "not found"}}')
                body = {"object": "list", "data": [{"id": srv.model, "object": "model",
                                                    "created": 0, "owned_by": "loopback"}]}
                self._send(200, json.dumps(body).encode())

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, b'{"error": {"message": "not found"}}')
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    return self._send(400, b'{"error": {"message": "body is not JSON"}}')
                with srv._lock:
                    srv.requests.append(body)
                    srv.headers.append(dict(self.headers.items()))
                    srv.arrivals.append(time.monotonic())
                    srv.in_flight += 1
                    srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
                try:
                    reply = srv._next(body)
                    if reply.latency > 0 and srv._stop.wait(reply.latency):
                        return  # server stopping
                    if reply.kind == "status":
                        err = {"error": {"message": f"scripted status {reply.status}",
                                         "type": "server_error", "code": reply.status}}
                        headers = {"Retry-After": reply.retry_after} if reply.retry_after else {}
                        return self._send(reply.status, json.dumps(err).encode(), headers)
                    if reply.kind == "broken_body":
                        return self._send(200, b'{"id": "chatcmpl-x", "choices": [{"mess')
                    self._send(200, json.dumps(srv._completion(reply)).encode())
                finally:
                    with srv._lock:
                        srv.in_flight -= 1

        return Handler


def closed_port() -> int:
    """A loopback port with nothing listening on it (for connection-refused tests)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    """Serves forever; accepts vLLM-style ``serve MODEL --port P`` and ignores other flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="*", help="optional: serve MODEL")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--exit-code", type=int, default=None,
                        help="exit at once with this code (a server that fails to start)")
    args, _unknown = parser.parse_known_args(argv)
    if args.exit_code is not None:
        print("loopback: failing on purpose", flush=True)
        sys.exit(args.exit_code)
    words = [w for w in args.words if w != "serve"]
    server = LoopbackVLM(default=judgement(latency=args.latency), model=words[0] if words else "test-vlm",
                         port=args.port)
    print(f"loopback VLM serving on {server.base_url}", flush=True)
    server._server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()

