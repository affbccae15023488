"""The loop on the tiny random Wan stack: real videos of another geometry are resampled, training
latents of lossy (H.264) clips are stored and hash-checked, and a round killed with kill -9 in
train resumes to a bit-identical adapter."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from store import Store, default_db_path, verify
from tests.test_crash_resume import agent  # `agent run` in a subprocess, failpoint optional
from tests.tiny_wan import TINY_TEXT_LEN, build_tiny_wan

PRESET = """
rounds = 1
seed = 0
[data.world]
train_scenes_per_family = 1
heldout_scenes_per_family = 1
heldout_level = [0]
paraphrase_scenes_per_family = 0
[plan]
prompts_per_round = 2
[refine]
enabled = false
[generate]
backend = "wan"
group_size = 2
[generate.wan]
model = "{model}"
device = "cpu"
dtype = "float32"
height = 32
width = 32
num_frames = 9
num_inference_steps = 2
guidance_scale = 3.0
negative_prompt = ""
max_sequence_length = {text_len}
fps = 8
batch_size = 2
[train]
steps = 4
groups_per_step = 2
lora_rank = 4
lora_alpha = 4.0
[evaluate]
clips_per_prompt = 1
seen_prompts = 0
"""


@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wanloop")
    model = build_tiny_wan(root / "tiny")
    path = root / "wan_tiny.toml"
    path.write_text(PRESET.format(model=model, text_len=TINY_TEXT_LEN))
    return path


def adapter_content(directory: Path) -> str:
    """A digest of what an adapter holds: every tensor's bytes by name, the parsed metadata and the
    other files. (The safetensors header's metadata map is written in hash order, which differs
    between processes, so the file bytes alone are not comparable across runs.)"""
    import hashlib
    import json

    from safetensors import safe_open

    h = hashlib.sha256()
    for f in sorted(directory.iterdir()):
        if f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as st:
                h.update(json.dumps(st.metadata(), sort_keys=True).encode())
                for key in sorted(st.keys()):
                    t = st.get_tensor(key)
                    h.update(key.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
                    h.update(t.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
        else:
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def outcome(runs_dir: Path) -> dict:
    with Store.open(default_db_path(runs_dir)) as s:
        a = s.adapter("w", 1)
        assert a is not None and verify(runs_dir / "w" / a["path"], a["sha256"])
        return {"adapter": adapter_content(runs_dir / "w" / a["path"]),
                "losses": [t["loss"] for t in s.train_steps("w", 1)],
                "latents": sorted((v["id"], v["latent_sha256"]) for v in s.videos("w", 1, split="train"))}


def test_wan_loop_stores_exact_training_latents_for_its_lossy_clips(preset, tmp_path):
    import torch

    from agent import loop
    from agent.config import load_config
    from agent.runtime import read_latent
    from policy.wan import WanGenerator
    from store import read_video

    cfg, _ = load_config(str(preset), [f"runs_dir='{tmp_path}'"])
    loop.prepare_run(cfg, preset=str(preset), name="w")
    loop.execute("w", cfg)  # the world's 12-frame real winners are resampled to the preset's 9 frames
    with Store.open(default_db_path(tmp_path)) as s:
        rows = s.videos("w", 1, split="train", kind="generated")
        assert rows and all(v["path"].endswith(".mp4") and v["latent_path"] for v in rows)
        assert all(verify(tmp_path / "w" / v["latent_path"], v["latent_sha256"]) for v in rows)
        assert s.round_detail("w", 1)["training"]["summary"]["groups_used"] == cfg.plan.prompts_per_round
        gen = WanGenerator(cfg.generate.wan)
        v = rows[0]
        stored = read_latent(tmp_path / "w" / v["latent_path"])
        from_mp4 = gen.encode_videos([read_video(tmp_path / "w" / v["path"])])[0]
        assert stored.shape == from_mp4.shape and not torch.equal(stored, from_mp4)  # why it is kept
        evals = s.videos("w", 1, split="heldout")
        assert evals and all(e["latent_path"] is None for e in evals)  # only training clips need one


def test_kill_9_in_train_resumes_to_a_bit_identical_adapter(preset, tmp_path):
    args = ["--preset", str(preset), "--name", "w", "--plain"]
    ref = agent(tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr[-2000:]
    res = agent(tmp_path / "crash", *args, failpoint="mid:train@1")
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    res = agent(tmp_path / "crash", "--resume", "w", "--plain")
    assert res.returncode == 0, res.stderr[-2000:]
    assert outcome(tmp_path / "crash") == outcome(tmp_path / "ref")
