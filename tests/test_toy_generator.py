"""The built-in world's tiny generator: text encoder, sampler, checkpoint, pretraining.

Models here are tiny random ones built from configs (a few thousand parameters, 4×16×16 clips)
so the whole file runs in seconds; only ``test_shipped_checkpoint_*`` touches the shipped base.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from policy.base import Generator
from policy.pretrain import PretrainConfig, cosine_lr, flow_matching_loss, pretrain, sample_t
from policy.text import TEXT_DIM, TextEncoder, embed_sentences
from policy.toy import (
    DEFAULT_CHECKPOINT,
    SampleConfig,
    ToyArch,
    ToyGenerator,
    coordinate_grid,
    latents_to_videos,
    pixel_statistics,
    precondition_velocity,
    sigma_schedule,
    videos_to_latents,
)

ROOT = Path(__file__).resolve().parent.parent

TINY = ToyArch(frames=4, size=16, patch_size=(1, 4, 4), num_heads=2, head_dim=12, ffn_dim=32, num_layers=1,
               freq_dim=16, text_len=16, pixel_mean=(30.0, 28.0, 32.0), pixel_std=(35.0, 33.0, 34.0))


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    return TextEncoder(max_length=TINY.text_len)


@pytest.fixture()
def gen(text_encoder) -> ToyGenerator:
    torch.set_num_threads(1)
    return ToyGenerator.random(TINY, seed=0, sampling=SampleConfig(steps=3), text_encoder=text_encoder)


# ------------------------------------------------------------------ text
def test_text_encoder_pads_with_zeros_and_caches(text_encoder):
    short, long = "a red ball is dropped", " ".join(["a blue block slides on the floor"] * 10)
    emb = text_encoder.encode([short, long])
    assert emb.shape == (2, TINY.text_len, TEXT_DIM) and emb.dtype == torch.float32
    n_tokens = len(text_encoder.model.tokenizer(short)["input_ids"])  # incl. [CLS] and [SEP]
    assert emb[0, :n_tokens].abs().sum(-1).min() > 0
    assert torch.all(emb[0, n_tokens:] == 0)
    assert emb[1].abs().sum(-1).min() > 0  # truncated, not padded
    misses = text_encoder.misses
    again = text_encoder.encode([long, short])
    assert text_encoder.misses == misses and text_encoder.hits >= 2
    assert torch.equal(again[0], emb[1]) and torch.equal(again[1], emb[0])


def test_text_embedding_does_not_depend_on_batch(text_encoder):
    fresh = TextEncoder(max_length=TINY.text_len)
    solo = fresh.encode(["a green ball rolls into a red ball"])[0]
    mixed = TextEncoder(max_length=TINY.text_len).encode(
        ["x", "a green ball rolls into a red ball", "a much longer prompt with many more words in it"])[1]
    assert torch.equal(solo, mixed)


def test_embed_sentences_are_normalised():
    e = embed_sentences(["a red ball is dropped", "a red ball falls", "a block slides across the floor"])
    assert e.shape == (3, TEXT_DIM) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]  # paraphrases are closer than different scenes
    with pytest.raises(TypeError):
        embed_sentences("not a list")


# ------------------------------------------------------------------ latents
def test_encode_videos_round_trip_is_exact(gen):
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8) for _ in range(3)]
    videos[0][0, 0, 0] = [0, 255, 128]
    lat = gen.encode_videos(videos)
    assert lat.shape == (3, 3, 4, 16, 16) and lat.dtype == torch.float32
    torch.testing.assert_close(lat[0, :, 0, 0, 0], torch.tensor([(0 - 30) / 35, (255 - 28) / 33, (128 - 32) / 34]))
    np.testing.assert_array_equal(gen.decode_latents(lat), np.stack(videos))
    with pytest.raises(ValueError, match="4×16×16"):
        gen.encode_videos([np.zeros((4, 8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        videos_to_latents([np.zeros((4, 16, 16, 3), np.float32)])


def test_normalised_latents_round_trip_and_statistics():
    rng = np.random.default_rng(2)
    videos = rng.integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)
    mean, std = pixel_statistics(videos)
    assert len(mean) == 3 and all(60 < m < 200 for m in mean) and all(s > 0 for s in std)
    lat = videos_to_latents(videos, mean, std)
    assert abs(float(lat.mean())) < 0.05 and abs(float(lat.std()) - 1) < 0.05  # unit-normalised
    np.testing.assert_array_equal(latents_to_videos(lat, mean, std), videos)
    with pytest.raises(ValueError, match="pixel_std"):
        ToyArch(pixel_std=(1.0, 0.0, 1.0))


def test_precondition_velocity_hand_values_and_exactness():
    x = torch.tensor([0.5, -1.0]).view(2, 1, 1, 1, 1)
    f = torch.tensor([0.2, 0.3]).view(2, 1, 1, 1, 1)
    # t = 1: v = x_t − F (F is the clean clip); t = 0: v = −x_t − F; t = 1/2: D = 1/2, v = −F·√2
    torch.testing.assert_close(precondition_velocity(x, torch.tensor([1.0, 1.0]), f).flatten(), torch.tensor([0.3, -1.3]))
    torch.testing.assert_close(precondition_velocity(x, torch.tensor([0.0, 0.0]), f).flatten(), torch.tensor([-0.7, 0.7]))
    torch.testing.assert_close(precondition_velocity(x, torch.tensor([0.5, 0.5]), f).flatten(),
                               -f.flatten() * 2 ** 0.5)
    # the network output that encodes the true clean clip gives the true velocity ε − x0
    g = torch.Generator().manual_seed(0)
    x0, eps, t = torch.randn(5, 3, 2, 4, 4, generator=g), torch.randn(5, 3, 2, 4, 4, generator=g), torch.rand(5, generator=g)
    tb = t.view(-1, 1, 1, 1, 1)
    x_t = (1 - tb) * x0 + tb * eps
    d = (1 - tb) ** 2 + tb ** 2
    ideal = (x0 - (1 - tb) / d * x_t) / (tb / d.sqrt())
    torch.testing.assert_close(precondition_velocity(x_t, t, ideal), eps - x0, atol=1e-4, rtol=1e-4)


def test_preconditioned_transformer_outputs_velocity(text_encoder, tmp_path):
    arch = replace(TINY, prediction="x0-precond")
    plain, pre = ToyGenerator.random(TINY, seed=3), ToyGenerator.random(arch, seed=3, text_encoder=text_encoder)
    x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t, text = torch.tensor([0.9, 0.2]), text_encoder.encode(["a red ball is dropped", "a ball slides"])
    with torch.no_grad():
        raw = plain.velocity(x, t, text)
        torch.testing.assert_close(pre.velocity(x, t, text), precondition_velocity(x, t, raw))
    loaded = ToyGenerator.from_checkpoint(pre.save_checkpoint(tmp_path / "p.safetensors"), text_encoder=text_encoder)
    assert loaded.arch.prediction == "x0-precond"
    with torch.no_grad():
        torch.testing.assert_close(loaded.velocity(x, t, text), pre.velocity(x, t, text))
    with pytest.raises(ValueError, match="prediction"):
        replace(TINY, prediction="eps")


def test_coordinate_grid_hand_values():
    g = coordinate_grid(3, 2, 5)
    assert g.shape == (3, 3, 2, 5)
    assert g[0, :, 0, 0].tolist() == [-1.0, 0.0, 1.0]  # frame
    assert g[1, 0, :, 0].tolist() == [-1.0, 1.0]  # row
    assert g[2, 0, 0, :].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]  # column
    assert (g[1, 2] == g[1, 0]).all() and (g[2, :, 1] == g[2, :, 0]).all()  # each channel varies along one axis
    assert coordinate_grid(1, 4, 4)[0].eq(0).all()  # a single frame sits at 0


def test_coordinate_channels_keep_the_three_channel_interface(text_encoder, tmp_path):
    arch = replace(TINY, coords=True, prediction="x0-precond")
    gen = ToyGenerator.random(arch, seed=3, text_encoder=text_encoder)
    assert gen.transformer.config.in_channels == 6 and gen.transformer.config.out_channels == 3
    x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t, text = torch.tensor([1.0, 0.3]), text_encoder.encode(["a red ball is dropped", "a ball slides"])
    with torch.no_grad():
        v = gen.velocity(x, t, text)
        # what the hooks do, spelled out: the coordinates appended to the input, the velocity from x_t alone
        xc = torch.cat([x, coordinate_grid(4, 16, 16).expand(2, -1, -1, -1, -1)], 1)
        gen.transformer._forward_pre_hooks.clear()
        gen.transformer._forward_hooks.clear()
        f = gen.transformer(hidden_states=xc, timestep=t * 1000, encoder_hidden_states=text, return_dict=False)[0]
    torch.testing.assert_close(v, precondition_velocity(x, t, f))
    loaded = ToyGenerator.from_checkpoint(ToyGenerator.random(arch, seed=3, text_encoder=text_encoder)
                                          .save_checkpoint(tmp_path / "c.safetensors"), text_encoder=text_encoder)
    assert loaded.arch.coords
    with torch.no_grad():
        torch.testing.assert_close(loaded.velocity(x, t, text), v)
        clip = loaded.sample(torch.randn(1, 3, 4, 16, 16), text[:1], SampleConfig(steps=2))
    assert clip.shape == (1, 3, 4, 16, 16)


def test_latents_to_videos_clips_out_of_range():
    lat = torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0]).view(1, 1, 1, 1, 5).expand(1, 3, 1, 1, 5)
    assert latents_to_videos(lat)[0, 0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


# ------------------------------------------------------------------ denoiser and sampler
def test_satisfies_generator_protocol(gen):
    assert isinstance(gen, Generator) and gen.name == "toy"


def test_velocity_and_sample_shapes(gen):
    x = torch.randn(2, 3, 4, 16, 16)
    text = gen.encode_prompts(["a red ball is dropped", "a blue ball is thrown"])
    v = gen.velocity(x, torch.tensor([0.3, 0.9]), text)
    assert v.shape == x.shape and v.dtype == torch.float32
    out = gen.sample(x, text)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_sigma_schedule():
    s = sigma_schedule(8)
    assert s[0] == 1 and s[-1] == 0 and len(s) == 9 and torch.all(s[1:] < s[:-1])
    assert torch.all(sigma_schedule(8, shift=3.0)[1:-1] > s[1:-1])


def test_generate_shapes_seeds_and_determinism(gen):
    prompts = ["a red ball is dropped", "a blue block slides across the floor"]
    calls = []
    out = gen.generate(prompts, seeds=[10, 20], group_size=3, progress=lambda d, t: calls.append((d, t)))
    assert [len(g) for g in out] == [3, 3]
    assert [c.seed for c in out[1]] == [20, 21, 22]
    clip = out[0][1]
    assert clip.prompt == prompts[0] and clip.video.dtype == np.uint8 and clip.video.shape == (4, 16, 16, 3)
    assert clip.latent.shape == (3, 4, 16, 16) and clip.text.shape == (TINY.text_len, TEXT_DIM)
    np.testing.assert_array_equal(gen.decode_latents(clip.latent[None])[0], clip.video)
    assert calls[-1] == (6, 6)
    again = gen.generate(prompts, seeds=[10, 20], group_size=3)
    for g1, g2 in zip(out, again):
        for a, b in zip(g1, g2):
            np.testing.assert_array_equal(a.video, b.video)
    assert not np.array_equal(out[0][0].video, out[0][1].video)  # different seeds, different clips


def test_clip_depends_only_on_its_seed_not_on_batching(gen):
    prompts = ["a red ball is dropped", "a green ball is thrown"]
    batched = gen.generate(prompts, seeds=[0, 7], group_size=2)
    alone = gen.generate(prompts[1:], seeds=[8], group_size=1, sampling=SampleConfig(steps=3, max_batch=1))
    diff = np.abs(batched[1][1].video.astype(int) - alone[0][0].video.astype(int))
    assert diff.max() <= 1  # equal up to float rounding of a different batch size


def test_guidance(gen):
    torch.manual_seed(0)
    for p in gen.transformer.parameters():  # make the text path matter in a random model
        p.data.add_(0.05 * torch.randn_like(p))
    noise = torch.stack([gen.noise(1), gen.noise(2)])
    text = gen.encode_prompts(["a red ball is dropped", "a purple ball is thrown"])
    plain = gen.sample(noise, text, SampleConfig(steps=3, guidance=1.0))
    guided = gen.sample(noise, text, SampleConfig(steps=3, guidance=4.0))
    assert not torch.allclose(plain, guided, atol=1e-4)
    # g = 0 keeps only the unconditional branch: the same as sampling with the null prompt
    uncond = gen.sample(noise, text, SampleConfig(steps=3, guidance=0.0))
    null = gen.sample(noise, gen.text_encoder.null(2), SampleConfig(steps=3, guidance=1.0))
    torch.testing.assert_close(uncond, null, atol=1e-4, rtol=1e-4)


def test_input_validation(gen):
    with pytest.raises(ValueError, match="seeds"):
        gen.generate(["a", "b"], seeds=[1], group_size=1)
    with pytest.raises(TypeError):
        gen.generate("a red ball", seeds=[1], group_size=1)
    with pytest.raises(ValueError, match="steps"):
        SampleConfig(steps=0)
    with pytest.raises(ValueError, match="not divisible"):
        ToyArch(frames=5, patch_size=(2, 4, 4))


# ------------------------------------------------------------------ checkpoints and adapters
def test_checkpoint_round_trip(gen, text_encoder, tmp_path):
    path = gen.save_checkpoint(tmp_path / "base.safetensors", note="test")
    loaded = ToyGenerator.from_checkpoint(path, text_encoder=text_encoder)
    assert loaded.arch == TINY and loaded.sampling == gen.sampling and loaded.metadata["note"] == "test"
    a = gen.generate(["a red ball is dropped"], [3], 1)[0][0].video
    b = loaded.generate(["a red ball is dropped"], [3], 1)[0][0].video
    np.testing.assert_array_equal(a, b)
    assert ToyGenerator.from_checkpoint(path, text_encoder=text_encoder, steps=7).sampling.steps == 7
    with pytest.raises(FileNotFoundError, match="build_toy_base"):
        ToyGenerator.from_checkpoint(tmp_path / "missing.safetensors")


def test_adapter_save_load(gen, text_encoder, tmp_path):
    from policy.lora import attach_lora, lora_parameters

    attach_lora(gen.transformer, rank=4, alpha=4)
    for p in lora_parameters(gen.transformer):
        p.data.normal_(0, 0.1)
    gen.save_adapter(tmp_path / "adapter")
    with pytest.raises(ValueError, match="LoRA"):
        gen.save_checkpoint(tmp_path / "x.safetensors")
    other = ToyGenerator.random(TINY, seed=0, sampling=SampleConfig(steps=3), text_encoder=text_encoder)
    other.load_adapter(tmp_path / "adapter")
    a = gen.generate(["a red ball is dropped"], [5], 1)[0][0].video
    b = other.generate(["a red ball is dropped"], [5], 1)[0][0].video
    np.testing.assert_array_equal(a, b)


def test_shipped_checkpoint_loads_and_samples():
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("the shipped base checkpoint has not been built")
    assert DEFAULT_CHECKPOINT.stat().st_size <= 20 * 2**20
    base = ToyGenerator.from_checkpoint(steps=2)
    assert base.arch.frames == 12 and base.arch.size == 32
    out = base.generate(["a red ball is dropped"], [0], 2)
    assert out[0][0].video.shape == (12, 32, 32, 3)
    assert base.metadata["training"]["final_loss"] < base.metadata["training"]["first_loss"]


# ------------------------------------------------------------------ pretraining
def test_cosine_lr_schedule():
    cfg = PretrainConfig(steps=100, lr=1e-3, lr_min=1e-5, warmup=10)
    assert cosine_lr(0, cfg) == pytest.approx(1e-4)
    assert cosine_lr(9, cfg) == pytest.approx(1e-3)
    assert cosine_lr(99, cfg) == pytest.approx(1e-5, rel=0.05)


def test_training_times_shift_and_high_noise_share():
    """The shift maps t to s·t/(1+(s−1)·t) draw by draw; the high-noise share lands in [t_min, 1)."""
    n = 20000
    base = sample_t(n, PretrainConfig(logit_mean=0.3), torch.Generator().manual_seed(0))
    shifted = sample_t(n, PretrainConfig(logit_mean=0.3, timestep_shift=2.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, 2.0 * base / (1.0 + base))
    # the median moves from sigmoid(0.3) = 0.574 to 2·0.574/1.574 = 0.730
    assert float(base.median()) == pytest.approx(0.574, abs=0.01)
    assert float(shifted.median()) == pytest.approx(0.730, abs=0.01)

    mixed = sample_t(n, PretrainConfig(logit_mean=0.3, high_noise_fraction=0.2, high_noise_min=0.85),
                     torch.Generator().manual_seed(0))
    # logit-normal(0.3, 1) puts P(t ≥ 0.85) = P(z ≥ logit(0.85) − 0.3) = 7.6 % there; the mixture 0.2 + 0.8·7.6 %
    assert float((base >= 0.85).float().mean()) == pytest.approx(0.076, abs=0.01)
    assert float((mixed >= 0.85).float().mean()) == pytest.approx(0.2 + 0.8 * 0.076, abs=0.015)
    assert float(mixed.max()) < 1.0 and float(mixed.min()) > 0.0
    # without a fraction no extra random numbers are drawn: older configs reproduce their draws
    torch.testing.assert_close(sample_t(n, PretrainConfig(logit_mean=0.3, high_noise_min=0.5),
                                        torch.Generator().manual_seed(0)), base)
    with pytest.raises(ValueError, match="timestep_shift"):
        PretrainConfig(timestep_shift=0.0)
    with pytest.raises(ValueError, match="high_noise_fraction"):
        PretrainConfig(high_noise_fraction=1.5)


def test_x0_weight_adds_the_clean_clip_error():
    """w(t) = 1 + λ·t², normalised by the mean weight; λ = 0 is the plain velocity MSE."""
    class Const(torch.nn.Module):  # predicts velocity 0 whatever the input
        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
            return (torch.zeros_like(hidden_states),)

    x0 = torch.zeros(2, 1, 1, 1, 2)
    noise = torch.tensor([1.0, 1.0, 3.0, 3.0]).view(2, 1, 1, 1, 2)  # v target = noise: errors 1 and 9
    t = torch.tensor([0.5, 1.0])
    assert float(flow_matching_loss(Const(), x0, None, t, noise)) == pytest.approx(5.0)
    # λ = 4: weights 1 + 4·0.25 = 2 and 1 + 4 = 5 → (2·1 + 5·9) / 7
    assert float(flow_matching_loss(Const(), x0, None, t, noise, x0_weight=4.0)) == pytest.approx(47 / 7)
    with pytest.raises(ValueError, match="x0_weight"):
        PretrainConfig(x0_weight=-1.0)


def test_prompt_weights_choose_the_trained_prompt(gen):
    """With weights (0, 1) every step trains on each clip's second prompt, so the first is never encoded into a batch."""
    seen = []
    videos = np.zeros((2, 4, 16, 16, 3), np.uint8)
    real = gen.encode_prompts

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
            seen.append(encoder_hidden_states.detach().clone())
            return self.inner(hidden_states=hidden_states, timestep=timestep,
                              encoder_hidden_states=encoder_hidden_states, return_dict=return_dict)

    cfg = PretrainConfig(steps=3, batch=4, warmup=1, prompt_dropout=0.0, prompt_weights=(0.0, 1.0), log_every=1)
    pretrain(Spy(gen.transformer), videos, [("a", "b"), ("c", "d")], real, cfg, log=None)
    second = real(["b", "d"])
    for batch in seen:
        for row in batch:
            assert any(torch.equal(row, s) for s in second)
    with pytest.raises(ValueError, match="prompt_weights"):
        PretrainConfig(prompt_weights=(0.5, 0.6))
    with pytest.raises(ValueError, match="prompt_weights"):
        pretrain(gen.transformer, videos, [("a", "b", "e"), ("c", "d", "f")], real,
                 PretrainConfig(steps=1, prompt_weights=(0.5, 0.5)), log=None)


def test_pretrain_reduces_loss(gen):
    rng = np.random.default_rng(0)
    videos = np.zeros((6, 4, 16, 16, 3), np.uint8)
    for i in range(6):  # a bright square moving right: easy structure to learn
        for f in range(4):
            x = 2 + 2 * f + i
            videos[i, f, 6:10, x:x + 4] = rng.integers(150, 256, 3)
    prompts = [("a square moves right", f"a square moves right from column {i}") for i in range(6)]
    cfg = PretrainConfig(steps=40, batch=6, lr=3e-3, warmup=5, log_every=10, seed=1)
    logged, stepped = [], []
    losses = pretrain(gen.transformer, videos, prompts, gen.encode_prompts, cfg, log=logged.append,
                      on_step=stepped.append, to_latents=gen.encode_videos)
    assert len(losses) == 40 and len(logged) == 4 and stepped == list(range(1, 41))
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])
    with pytest.raises(ValueError, match="prompt lists"):
        pretrain(gen.transformer, videos, prompts[:2], gen.encode_prompts, cfg)


def test_pretrain_bf16_autocast_runs_and_keeps_fp32_weights(gen):
    videos = np.random.default_rng(1).integers(0, 256, (3, 4, 16, 16, 3), dtype=np.uint8)
    cfg = PretrainConfig(steps=3, batch=2, warmup=1, precision="bf16", log_every=100)
    losses = pretrain(gen.transformer, videos, [("a",), ("b",), ("c",)], gen.encode_prompts, cfg, log=None)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert all(p.dtype == torch.float32 for p in gen.transformer.parameters())
    with pytest.raises(ValueError, match="precision"):
        PretrainConfig(precision="fp16")


def _build_script():
    """``scripts/build_toy_base.py`` loaded as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_toy_base", ROOT / "scripts" / "build_toy_base.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def test_build_script_quick_build_with_experiment_options(tmp_path):
    build = _build_script()
    out = tmp_path / "base"
    assert build.main(["--scenes", "8", "--steps", "2", "--batch", "2", "--threads", "1", "--out", str(out),
                       "--layout-steps", "0", "--normalise", "--prediction", "x0-precond"]) == 0
    gen = ToyGenerator.from_checkpoint(out.with_suffix(".safetensors"))
    assert gen.arch.prediction == "x0-precond" and gen.arch.pixel_std != (127.5, 127.5, 127.5)
    assert gen.metadata["training"]["steps"] == 2 and gen.metadata["training"]["data"]["scenes"] == 8
    assert gen.metadata["training"]["layout_phase"] is None
    assert gen.generate(["a red ball is dropped"], [1], 1)[0][0].video.shape == (12, 32, 32, 3)


def test_build_script_layout_phase_and_snapshots(tmp_path):
    """--layout-steps trains first at high noise only, then the main phase with the next batch seed."""
    build = _build_script()
    out = tmp_path / "base"
    assert build.main(["--scenes", "8", "--steps", "2", "--batch", "2", "--threads", "1", "--out", str(out),
                       "--layers", "1", "--layout-steps", "3", "--layout-min", "0.8", "--snapshot-every", "1"]) == 0
    t = ToyGenerator.from_checkpoint(out.with_suffix(".safetensors")).metadata["training"]
    assert t["layout_phase"]["steps"] == 3 and t["layout_phase"]["high_noise_fraction"] == 1.0
    assert t["layout_phase"]["high_noise_min"] == 0.8 and t["layout_phase"]["seed"] == 0
    assert t["steps"] == 2 and t["seed"] == 1
    # snapshots come from the main phase, before its last step
    assert sorted(f.name for f in tmp_path.glob("base_step*.safetensors")) == ["base_step1.safetensors"]
    with pytest.raises(SystemExit):
        build.main(["--layout-min", "1.0", "--scenes", "8", "--steps", "1", "--batch", "2", "--out", str(out)])
    with pytest.raises(SystemExit):  # PretrainConfig's own checks reach the command line as usage errors
        build.main(["--prompt-weights", "0.5", "0.6", "0.1", "--scenes", "8", "--steps", "1", "--out", str(out)])


def test_build_script_defaults_describe_the_shipped_checkpoint():
    """The script's defaults rebuild what is shipped: same architecture, sampler and training budget."""
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("the shipped base checkpoint has not been built")
    build = _build_script()
    shipped = ToyGenerator.from_checkpoint(steps=2).metadata
    arch = ToyArch.from_dict(shipped["arch"])
    assert replace(arch, pixel_mean=build.DEFAULT_ARCH.pixel_mean, pixel_std=build.DEFAULT_ARCH.pixel_std) == build.DEFAULT_ARCH
    assert (arch.pixel_std != build.DEFAULT_ARCH.pixel_std) == build.DEFAULT_NORMALISE
    t = shipped["training"]
    assert (t["steps"], t["batch"], t["lr"], t["logit_mean"], t["precision"], t["data"]["scenes"]) == (
        build.DEFAULT_STEPS, build.DEFAULT_BATCH, build.DEFAULT_LR, build.DEFAULT_LOGIT_MEAN,
        build.DEFAULT_PRECISION, build.DEFAULT_SCENES)
    # older checkpoints predate the timestep shift and the high-noise share: their absence means off
    assert t.get("timestep_shift", 1.0) == build.DEFAULT_T_SHIFT
    assert (t.get("high_noise_fraction", 0.0), t.get("high_noise_min", 0.9)) == tuple(build.DEFAULT_HIGH_NOISE)
    assert t.get("x0_weight", 0.0) == build.DEFAULT_X0_WEIGHT
    layout = t.get("layout_phase")
    assert (layout["steps"], layout["high_noise_min"]) == tuple(build.DEFAULT_LAYOUT) if layout else \
        build.DEFAULT_LAYOUT[0] == 0
    assert shipped["sampling"]["shift"] == build.DEFAULT_SAMPLING.shift
    assert shipped["sampling"]["steps"] == build.DEFAULT_SAMPLING.steps
    assert shipped["sampling"]["guidance"] == build.DEFAULT_SAMPLING.guidance


def test_loading_prints_no_progress_bar_over_the_dashboard():
    """transformers' "Loading weights" bar would print over the rich dashboard: loading is quiet, and the
    libraries' own progress-bar setting is restored afterwards."""
    import subprocess
    import sys

    code = ("from policy.toy import ToyGenerator; ToyGenerator.from_checkpoint().generate(['a red ball is dropped'], "
            "[1], 1); import transformers.utils.logging as t; assert t.is_progress_bar_enabled()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Loading weights" not in res.stderr + res.stdout
