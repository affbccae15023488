"""The Wan2.1 backend on a tiny random WanPipeline (real diffusers/transformers classes, CPU),
and the memory plan used by ``--dry-run``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from policy import memory_plan as mp
from policy.base import Generator, GroupSample
from policy.wan import ModelNotFound, WanConfig, WanGenerator, conform_video, load_pipeline, write_mp4
from tests.tiny_wan import TINY_GEOMETRY, TINY_TEXT_LEN, TINY_Z_DIM, build_tiny_wan, tiny_config

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red ball falls and bounces twice", "a ball rolls off a table"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("tiny_wan") / "model")


@pytest.fixture
def gen(tiny_dir) -> WanGenerator:
    return WanGenerator(tiny_config(tiny_dir))


def falling_square(frames=9, size=32) -> np.ndarray:
    """A 'real' clip: a white square accelerating downwards on grey."""
    video = np.full((frames, size, size, 3), 60, np.uint8)
    for k in range(frames):
        y = min(size - 6, int(0.4 * k * k))
        video[k, y:y + 6, 13:19] = 255
    return video


# ---------------------------------------------------------------------- config and loading


def test_default_device_is_this_process_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    cfg = WanConfig()
    assert cfg.resolved_device() == torch.device("cuda", 3) and cfg.torch_dtype() == torch.bfloat16
    assert WanConfig(device="cpu").resolved_device() == torch.device("cpu")


def test_config_validates_geometry_with_clear_messages():
    with pytest.raises(ValidationError, match="4k\\+1"):
        WanConfig(num_frames=80)
    with pytest.raises(ValidationError, match="multiples of 16"):
        WanConfig(height=100)
    with pytest.raises(ValidationError, match="extra"):
        WanConfig(num_frame=81)
    cfg = WanConfig(device="cpu")
    assert cfg.torch_dtype() == torch.float32 and cfg.torch_dtype(torch.device("cuda")) == torch.bfloat16


def test_missing_directory_raises_one_line_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound) as err:
        WanGenerator(tiny_config(tmp_path / "no_such_model"))
    assert "not found" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelNotFound, match="model_index.json"):
        load_pipeline(str(tmp_path), torch.float32)  # exists, but is not a pipeline


def test_hub_id_offline_fails_without_touching_the_network(monkeypatch, tmp_path):
    attempts = []

    def no_network(self, address):
        attempts.append(address)
        raise OSError("network disabled by test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFound) as err:
        load_pipeline("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", torch.float32)
    assert "HF_HUB_OFFLINE" in str(err.value) and "\n" not in str(err.value)
    assert attempts == []


# ---------------------------------------------------------------------- generation


def test_generates_groups_with_distinct_seeds_deterministically(tiny_dir, gen):
    assert isinstance(gen, Generator)
    calls = []
    groups = gen.generate(PROMPTS, seeds=[10, 500], group_size=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 6), (4, 6), (6, 6)]  # batch_size 2: one batch straddles the two prompts
    assert [[g.seed for g in grp] for grp in groups] == [[10, 11, 12], [500, 501, 502]]
    text = gen.encode_prompts(PROMPTS)
    for i, grp in enumerate(groups):
        for g in grp:
            assert g.prompt == PROMPTS[i]
            assert g.video.shape == (9, 32, 32, 3) and g.video.dtype == np.uint8
            assert g.latent.shape == (TINY_Z_DIM, 3, 4, 4) and g.latent.dtype == torch.float32
            assert torch.equal(g.text, text[i])
        videos = [g.video for g in grp]
        assert all(not np.array_equal(a, b) for k, a in enumerate(videos) for b in videos[k + 1:])

    again = gen.generate(PROMPTS, seeds=[10, 500], group_size=3)
    one_by_one = WanGenerator(tiny_config(tiny_dir, batch_size=1)).generate(PROMPTS, [10, 500], 3)
    for grp, same, single in zip(groups, again, one_by_one):
        for g, s, o in zip(grp, same, single):
            assert np.array_equal(g.video, s.video) and torch.equal(g.latent, s.latent)
            # a clip depends on its seed, not on which clips shared its batch
            torch.testing.assert_close(g.latent, o.latent, atol=1e-5, rtol=1e-5)
            assert np.abs(g.video.astype(int) - o.video.astype(int)).max() <= 1


def test_decoding_matches_wanpipeline_own_output(gen):
    """Our decode of the sampler latents equals WanPipeline(output_type='np'): same normalisation."""
    cfg = gen.config
    ours = gen.generate(PROMPTS, seeds=[3, 4], group_size=1)
    cond = gen.encode_prompts(PROMPTS)
    neg = gen.encode_prompts([cfg.negative_prompt]).expand(2, -1, -1)
    frames = gen.pipe(prompt_embeds=cond, negative_prompt_embeds=neg, height=cfg.height, width=cfg.width,
                      num_frames=cfg.num_frames, num_inference_steps=cfg.num_inference_steps,
                      guidance_scale=cfg.guidance_scale, output_type="np",
                      generator=[torch.Generator().manual_seed(s) for s in (3, 4)]).frames
    theirs = np.round(np.asarray(frames) * 255).astype(np.uint8)
    assert np.array_equal(theirs[0], ours[0][0].video) and np.array_equal(theirs[1], ours[1][0].video)


def test_velocity_uses_the_pipeline_flow_convention(tiny_dir):
    """One Euler step from pure noise (t = 1 → 0) is x0 = x1 − v(x1, 1, c): sign and 1000·t scale."""
    g = WanGenerator(tiny_config(tiny_dir, guidance_scale=1.0, num_inference_steps=1, batch_size=1,
                                 train_latents="sampler"))  # the sampler's own x0
    clip = g.generate(PROMPTS[:1], seeds=[7], group_size=1)[0][0]
    noise = torch.randn((1, *clip.latent.shape), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        v = g.velocity(noise, torch.ones(1), clip.text[None])
    torch.testing.assert_close(clip.latent[None], noise - v, atol=1e-5, rtol=1e-5)


def test_training_latents_come_from_the_winners_encoder_by_default(tiny_dir, gen, caplog):
    assert gen.config.train_latents == "reencode"
    clips = gen.generate(PROMPTS[:1], seeds=[1], group_size=2)[0]
    torch.testing.assert_close(torch.stack([c.latent for c in clips]), gen.encode_videos([c.video for c in clips]))
    with caplog.at_level("WARNING", logger="policy.wan"):
        raw = WanGenerator(tiny_config(tiny_dir, train_latents="sampler"))
    assert "not shown equivalent" in caplog.text
    clips = raw.generate(PROMPTS[:1], seeds=[1], group_size=2)[0]
    decoded = raw.decode_latents(torch.stack([c.latent for c in clips]))
    assert all(np.array_equal(d, c.video) for d, c in zip(decoded, clips))  # the sampler's own latents


def test_encode_videos_shares_the_decoder_latent_space(gen):
    real = [falling_square(), falling_square()[::-1].copy()]
    z = gen.encode_videos(real)
    assert z.shape == (2, TINY_Z_DIM, 3, 4, 4) and z.dtype == torch.float32
    # decode(encode(v)) through our normalisation == the raw VAE round trip without any normalisation
    vae = gen.pipe.vae
    with torch.no_grad():
        x = torch.from_numpy(np.stack(real)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        raw = vae.decode(vae.encode(x).latent_dist.mode()).sample
    expected = ((raw / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    diff = np.abs(gen.decode_latents(z).astype(int) - expected.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # float round trip of (z − mean)/std, then uint8 rounding
    inputs = gen.training_inputs(real, PROMPTS)
    assert torch.equal(inputs.latents, z) and inputs.text.shape == (2, TINY_TEXT_LEN, 32)

    with pytest.raises(ValueError, match="conform_video"):
        gen.encode_videos([np.zeros((8, 32, 32, 3), np.uint8)])
    fitted = conform_video(np.zeros((30, 48, 64, 3), np.uint8), **TINY_GEOMETRY)
    assert fitted.shape == (9, 32, 32, 3) and gen.encode_videos([fitted]).shape[0] == 1


def test_prompt_embeddings_are_cached_and_zero_padded(gen):
    calls = []
    hook = gen.pipe.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = gen.encode_prompts(["a ball", "a ball", "a cube"])
        second = gen.encode_prompts(["a cube", "a ball"])
    finally:
        hook.remove()
    assert len(calls) == 1 and first.shape == (3, TINY_TEXT_LEN, 32)
    assert torch.equal(second[0], first[2]) and torch.equal(first[0], first[1])
    n_tokens = len(gen.pipe.tokenizer("a ball").input_ids)
    assert first[0, n_tokens:].abs().sum() == 0 and first[0, :n_tokens].abs().sum() > 0


def test_write_mp4_round_trips_frame_count(tmp_path):
    import imageio.v2 as imageio

    path = write_mp4(tmp_path / "clip.mp4", falling_square(), fps=8)
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        assert len([f for f in reader]) == 9
    finally:
        reader.close()


# ---------------------------------------------------------------------- training and adapters


def test_trainer_runs_steps_on_generated_latents(gen):
    trainer_mod = pytest.importorskip("policy.trainer")
    groups_out = gen.generate(PROMPTS, seeds=[0, 50], group_size=3)
    winner = gen.encode_videos([falling_square()])[0]
    groups = [GroupSample(text=grp[0].text, winner=winner, losers=torch.stack([g.latent for g in grp]),
                          loser_sa=torch.tensor([0.9, 0.5, 0.2]), loser_pc=torch.tensor([0.1, 0.6, 0.3]),
                          prompt=grp[0].prompt) for grp in groups_out]
    trainer = trainer_mod.Trainer(gen.transformer, trainer_mod.TrainConfig(
        steps=2, groups_per_step=2, lora_rank=4, lora_alpha=4.0, lr=1e-3, lr_min=1e-4))
    from policy.lora import lora_named_parameters

    before = {n: p.detach().clone() for n, p in lora_named_parameters(gen.transformer)}
    summary = trainer.train_round(groups)
    assert summary.steps == 2 and summary.updates == 2 and np.isfinite(summary.loss_mean)
    after = dict(lora_named_parameters(gen.transformer))
    assert any(not torch.equal(before[n], after[n]) for n in before)
    # the next round samples from the trained policy
    regen = gen.generate(PROMPTS[:1], seeds=[0], group_size=1)[0][0]
    assert not torch.equal(regen.latent, groups_out[0][0].latent)


def test_adapter_saves_and_reloads_into_a_fresh_pipeline(tiny_dir, gen, tmp_path):
    from policy.lora import attach_lora, lora_parameters

    attach_lora(gen.transformer, rank=4, alpha=8.0)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in lora_parameters(gen.transformer):
            p.normal_(0.0, 0.3)
    gen.save_adapter(tmp_path / "adapter")

    fresh = WanGenerator(tiny_config(tiny_dir))
    base = WanGenerator(tiny_config(tiny_dir))
    fresh.load_adapter(tmp_path / "adapter")
    x = torch.randn(2, TINY_Z_DIM, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.3, 0.8])
    text = gen.encode_prompts(PROMPTS)
    with torch.no_grad():
        v_trained, v_fresh, v_base = (g.velocity(x, t, text) for g in (gen, fresh, base))
    torch.testing.assert_close(v_fresh, v_trained, atol=1e-6, rtol=1e-6)
    assert (v_base - v_trained).abs().max() > 1e-3
    a = gen.generate(PROMPTS[:1], [9], 2)[0]
    b = fresh.generate(PROMPTS[:1], [9], 2)[0]
    assert all(np.array_equal(x.video, y.video) for x, y in zip(a, b))


# ---------------------------------------------------------------------- memory plan


def test_parameter_formulas_match_the_real_classes(tiny_dir):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    def count(m):
        return sum(p.numel() for p in m.parameters())

    spec = mp.spec_for_model(str(tiny_dir))  # read from the saved JSON configs
    assert (spec.transformer.dim, spec.transformer.num_layers, spec.vae.z_dim) == (16, 2, TINY_Z_DIM)
    gen = WanGenerator(tiny_config(tiny_dir))
    assert spec.transformer.params() == count(gen.transformer)
    assert spec.text_encoder.params() == count(gen.pipe.text_encoder)
    with torch.device("meta"):
        for s in (mp.WAN21_T2V_1_3B, mp.WAN21_T2V_14B):
            t = s.transformer
            model = WanTransformer3DModel(
                patch_size=t.patch_size, num_attention_heads=t.num_heads, attention_head_dim=t.dim // t.num_heads,
                in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=t.ffn_dim,
                num_layers=t.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads")
            assert t.params() == count(model)
        te = mp.TextEncoderSpec()
        assert te.params() == count(UMT5EncoderModel(UMT5Config(
            vocab_size=te.vocab_size, d_model=te.d_model, d_kv=te.d_kv, num_heads=te.num_heads, d_ff=te.d_ff,
            num_layers=te.num_layers, feed_forward_proj="gated-gelu")))
        assert mp.VaeSpec().params() == count(AutoencoderKLWan())
    from policy.lora import attach_lora, lora_parameters

    attach_lora(gen.transformer, rank=3, alpha=3.0)
    assert spec.transformer.lora_params(3) == sum(p.numel() for p in lora_parameters(gen.transformer))
    for targets in ("attention+ffn", "all-linear"):  # the wider targets, on fresh copies of the model
        model = type(gen.transformer).from_config(gen.transformer.config)
        attach_lora(model, rank=3, alpha=3.0, targets=targets)
        assert spec.transformer.lora_params(3, targets) == sum(p.numel() for p in lora_parameters(model))


def test_memory_plan_is_sane_and_monotone():
    base = mp.Workload(train_samples=2)
    p = mp.estimate(mp.WAN21_T2V_1_3B, base)
    assert p.tokens == 21 * 30 * 52 and p.latent_shape == (16, 21, 60, 104)
    assert 1.3e9 < p.transformer_params < 1.5e9
    assert all(v >= 0 for v in {**p.generation_gib, **p.training_gib}.values())
    assert 5 < p.generation_peak_gib < p.training_peak_gib < 80 and p.fits

    def train(**kw):
        return mp.estimate(mp.WAN21_T2V_1_3B, mp.Workload(**{**base.__dict__, **kw})).training_peak_gib

    for key, small, large in (("num_frames", 49, 81), ("height", 480, 720), ("train_samples", 2, 8),
                              ("lora_rank", 16, 128)):
        assert train(**{key: small}) < train(**{key: large}), key
    assert train(gradient_checkpointing=True) < train(gradient_checkpointing=False)
    off = mp.estimate(mp.WAN21_T2V_1_3B, mp.Workload(train_samples=2, text_encoder_offload=True))
    te_gib = 2 * mp.TextEncoderSpec().params() / mp.GIB
    assert p.training_peak_gib - off.training_peak_gib == pytest.approx(te_gib)
    assert p.generation_peak_gib - off.generation_peak_gib == pytest.approx(te_gib)
    big = mp.estimate(mp.WAN21_T2V_14B, base)
    assert big.training_peak_gib > p.training_peak_gib and big.generate_seconds_per_clip > p.generate_seconds_per_clip

    tiled = mp.estimate(mp.WAN21_T2V_1_3B, mp.Workload(vae_tiling=True))
    assert tiled.generation_gib["vae decode"] < p.generation_gib["vae decode"]
    batched = mp.Workload(gen_batch=4, vae_slicing=False)
    sliced = mp.Workload(gen_batch=4, vae_slicing=True)
    assert (mp.estimate(mp.WAN21_T2V_1_3B, sliced).generation_gib["vae decode"]
            < mp.estimate(mp.WAN21_T2V_1_3B, batched).generation_gib["vae decode"])

    long = mp.estimate(mp.WAN21_T2V_1_3B, mp.Workload(num_frames=161, train_samples=2))
    ratio = long.tokens / p.tokens
    assert long.generate_seconds_per_clip / p.generate_seconds_per_clip > ratio  # attention is quadratic
    no_cfg = mp.estimate(mp.WAN21_T2V_1_3B, mp.Workload(guidance=False, train_samples=2))
    assert no_cfg.generate_seconds_per_clip == pytest.approx(p.generate_seconds_per_clip / 2)
    assert not mp.estimate(mp.WAN21_T2V_14B, mp.Workload(train_samples=16)).fits
    assert mp.train_samples_per_step("phygdpo", 4, 8) == 8 and mp.train_samples_per_step("gdpo-full", 4, 8) == 36

    with pytest.raises(ValueError, match="4k\\+1"):
        mp.Workload(num_frames=80)
    with pytest.raises(ValueError, match="cannot tell"):
        mp.spec_for_model("someone/other-video-model")
    assert mp.spec_for_model("Wan-AI/Wan2.1-T2V-14B-Diffusers") is mp.WAN21_T2V_14B


def test_validating_a_wan_config_and_planning_loads_no_model_libraries():
    """The dry-run path (policy.wan.WanConfig + policy.memory_plan) imports no diffusers, peft or transformers."""
    code = ("import sys, json\n"
            "from policy.wan import WanConfig\n"
            "from policy import memory_plan as mp\n"
            "w = WanConfig(model='Wan-AI/Wan2.1-T2V-1.3B-Diffusers')\n"
            "p = mp.estimate(mp.spec_for_model(w.model), mp.Workload(height=w.height, width=w.width, "
            "num_frames=w.num_frames, train_samples=2))\n"
            "print(json.dumps({'lines': p.lines(), 'heavy': [m for m in ('diffusers', 'peft', 'transformers')"
            " if m in sys.modules]}))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["lines"][0].startswith("model Wan2.1-T2V-1.3B") and "GiB" in result["lines"][2]
