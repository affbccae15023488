"""Start a vLLM OpenAI-compatible server for the VLM judge/critic and wait until it answers.

vLLM is never installed in phyloop's environment (it pins its own torch); it lives in a
separate virtual environment on the GPU host, and phyloop only speaks HTTP to it. So this
module takes the path of that environment's ``python`` (run as
``python -m vllm.entrypoints.cli.main serve …``) or of its ``vllm`` executable, builds the
command line, starts it in its own process group, and polls ``GET /v1/models`` until the
model is loaded. :func:`build_command` is separate so the argv can be checked without vLLM.

``--limit-mm-per-prompt`` takes a JSON object in current vLLM (``'{"image": 8, "video": 1}'``);
the frames mode sends ``n_frames`` images per request, the video_url mode one video.
An API key, if wanted, is handed to vLLM through ``VLLM_API_KEY`` in the child's environment
— never on the command line, where any user could read it with ``ps``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence


def build_command(python_or_vllm_path: str | os.PathLike, model: str, port: int = 8000,
                  tensor_parallel_size: int = 1, max_model_len: int = 32768, limit_images: int = 8,
                  extra_args: Sequence[str] = (), *, host: str = "127.0.0.1", limit_videos: int = 1,
                  served_model_name: str | None = None) -> list[str]:
    """The argv that starts ``vllm serve MODEL`` with the multimodal limits the judge needs."""
    exe = str(python_or_vllm_path)
    if not model:
        raise ValueError("model must be a model id or a local model directory")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port}")
    for name, value in (("tensor_parallel_size", tensor_parallel_size), ("max_model_len", max_model_len)):
        if value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")
    if limit_images < 0 or limit_videos < 0:
        raise ValueError("limit_images and limit_videos must be ≥ 0")
    if Path(exe).name.startswith("python"):
        argv = [exe, "-m", "vllm.entrypoints.cli.main", "serve", model]
    else:
        argv = [exe, "serve", model]
    argv += ["--host", host, "--port", str(port),
             "--tensor-parallel-size", str(tensor_parallel_size),
             "--max-model-len", str(max_model_len),
             "--limit-mm-per-prompt", json.dumps({"image": limit_images, "video": limit_videos},
                                                 separators=(",", ":"))]
    if served_model_name:
        argv += ["--served-model-name", served_model_name]
    return argv + [str(a) for a in extra_args]


@dataclass
class ServedVLM:
    """A running server: ``base_url`` for ``VLMConfig.base_urls``; ``stop()`` ends it."""

    base_url: str
    process: subprocess.Popen
    log_path: Path
    argv: list[str] = field(default_factory=list)

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the server's process group (vLLM spawns workers), SIGKILL if it lingers."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
            except ProcessLookupError:
                pass
        return self.process.returncode

    def __enter__(self) -> "ServedVLM":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def models_ready(base_url: str, api_key: str | None = None, timeout: float = 5.0) -> bool:
    """True when ``GET {base_url}/models`` answers 200 with a model list."""
    request = urllib.request.Request(f"{base_url}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200 and isinstance(json.load(response).get("data"), list)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serve_vlm(python_or_vllm_path: str | os.PathLike, model: str, port: int = 8000,
              tensor_parallel_size: int = 1, max_model_len: int = 32768, limit_images: int = 8,
              extra_args: Sequence[str] = (), wait_timeout: float = 1800.0, *,
              host: str = "127.0.0.1", limit_videos: int = 1, served_model_name: str | None = None,
              api_key_env: str | None = None, log_path: str | os.PathLike | None = None,
              poll_interval: float = 2.0) -> ServedVLM:
    """Starts vLLM, waits until ``GET /v1/models`` answers, and returns the running server.

    Raises RuntimeError (with the last log lines) if the process exits first, TimeoutError
    (after stopping it) if it is not ready within ``wait_timeout`` seconds. The server's
    output goes to ``log_path`` (default: a file in the working directory) so a full pipe
    can never stall it.
    """
    argv = build_command(python_or_vllm_path, model, port, tensor_parallel_size, max_model_len,
                         limit_images, extra_args, host=host, limit_videos=limit_videos,
                         served_model_name=served_model_name)
    env = dict(os.environ)
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(f"environment variable {api_key_env} (api_key_env) is not set or empty")
        env["VLLM_API_KEY"] = api_key
    log = Path(log_path) if log_path is not None else Path(f"vllm-{port}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    base_url = f"http://{connect_host}:{port}/v1"
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    served = ServedVLM(base_url, process, log, argv)
    deadline = time.monotonic() + wait_timeout
    while True:
        code = process.poll()
        if code is not None:
            raise RuntimeError(f"vLLM exited with code {code} before serving {model}; "
                               f"last lines of {log}:\n{_log_tail(log)}")
        if models_ready(base_url, api_key, timeout=min(5.0, poll_interval + 1.0)):
            return served
        if time.monotonic() > deadline:
            served.stop()
            raise TimeoutError(f"vLLM did not answer GET {base_url}/models within {wait_timeout:.0f} s; "
                               f"last lines of {log}:\n{_log_tail(log)}")
        time.sleep(poll_interval)
