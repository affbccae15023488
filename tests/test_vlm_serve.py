"""agent.serve_vlm: the vLLM command line, and start/wait/stop against a fake ``vllm`` executable
(the loopback server behind a vLLM-style argv), including early exit and never-ready servers."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.serve_vlm import build_command, models_ready, serve_vlm
from reward.vlm.config import VLMConfig
from reward.vlm.judge import VLMJudge
from tests.vlm_server import closed_port

ROOT = Path(__file__).resolve().parents[1]


def test_command_for_vllm_executable():
    argv = build_command("/opt/vllm-env/bin/vllm", "Qwen/Qwen2.5-VL-7B-Instruct", port=8123,
                         tensor_parallel_size=2, max_model_len=16384, limit_images=12,
                         extra_args=["--gpu-memory-utilization", "0.85"])
    assert argv[:3] == ["/opt/vllm-env/bin/vllm", "serve", "Qwen/Qwen2.5-VL-7B-Instruct"]
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert flags["--port"] == "8123" and flags["--tensor-parallel-size"] == "2"
    assert flags["--max-model-len"] == "16384" and flags["--host"] == "127.0.0.1"
    assert json.loads(flags["--limit-mm-per-prompt"]) == {"image": 12, "video": 1}
    assert argv[-2:] == ["--gpu-memory-utilization", "0.85"]


def test_command_for_python_interpreter():
    argv = build_command("/opt/vllm-env/bin/python3.12", "m", served_model_name="judge")
    assert argv[:5] == ["/opt/vllm-env/bin/python3.12", "-m", "vllm.entrypoints.cli.main", "serve", "m"]
    assert argv[argv.index("--served-model-name") + 1] == "judge"


@pytest.mark.parametrize("kw", [{"port": 0}, {"port": 70000}, {"tensor_parallel_size": 0},
                                {"max_model_len": 0}, {"limit_images": -1}])
def test_command_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        build_command("vllm", "m", **kw)


def fake_vllm(tmp_path: Path, body: str | None = None) -> Path:
    """An executable named ``vllm`` that runs the loopback server with the argv it is given."""
    exe = tmp_path / "vllm"
    env_file = tmp_path / "child_key"
    body = body or (f"import os\nopen({str(env_file)!r}, 'w').write(os.environ.get('VLLM_API_KEY', ''))\n"
                    f"sys.path.insert(0, {str(ROOT)!r})\n"
                    "from tests.vlm_server import main\nmain(sys.argv[1:])\n")
    exe.write_text(f"#!{sys.executable}\nimport sys\n{body}")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_serve_waits_until_models_answer_then_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("PHYLOOP_SERVE_KEY", "k-serve-test")
    port = closed_port()
    served = serve_vlm(fake_vllm(tmp_path), "fake-vl-model", port=port, wait_timeout=20,
                       api_key_env="PHYLOOP_SERVE_KEY", log_path=tmp_path / "vllm.log", poll_interval=0.05)
    try:
        assert served.base_url == f"http://127.0.0.1:{port}/v1"
        assert models_ready(served.base_url)
        assert "k-serve-test" not in " ".join(served.argv)  # the key goes through the env only
        assert (tmp_path / "child_key").read_text() == "k-serve-test"
        judge = VLMJudge(VLMConfig(base_urls=[served.base_url], model="fake-vl-model", n_frames=2))
        assert judge.score("p", np.zeros((4, 8, 8, 3), np.uint8)).judged
    finally:
        served.stop(timeout=5)
    assert not served.running()
    assert not models_ready(served.base_url, timeout=0.5)


def test_serve_reports_early_exit_with_log_tail(tmp_path):
    with pytest.raises(RuntimeError, match=r"exited with code 3(.|\n)*failing on purpose"):
        serve_vlm(fake_vllm(tmp_path), "m", port=closed_port(), extra_args=["--exit-code", "3"],
                  wait_timeout=20, log_path=tmp_path / "vllm.log", poll_interval=0.05)


def test_serve_times_out_and_stops_the_process(tmp_path):
    pid_file = tmp_path / "pid"
    exe = fake_vllm(tmp_path, body=f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                                   "time.sleep(60)\n")
    with pytest.raises(TimeoutError, match="did not answer"):
        serve_vlm(exe, "m", port=closed_port(), wait_timeout=1.5, log_path=tmp_path / "vllm.log",
                  poll_interval=0.05)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the never-ready server was stopped (and reaped)
