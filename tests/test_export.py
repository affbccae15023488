"""ComfyUI export: Wan's original key names, shapes, alphas, and a round trip through diffusers'
own ComfyUI-format converter that gives back the same model."""

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file

from policy.export import comfyui_key, export_comfyui
from policy.lora import attach_lora, load_adapter, lora_parameters, save_adapter

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=3,
            out_channels=3, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2)


def tiny_transformer() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(**TINY).eval()


@pytest.fixture
def trained(tmp_path):
    model = tiny_transformer()
    attach_lora(model, rank=4, alpha=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    save_adapter(model, tmp_path / "adapter")
    return model, tmp_path


def test_comfyui_keys_shapes_and_alpha(trained):
    model, tmp = trained
    out = export_comfyui(tmp / "adapter", tmp / "phyloop_comfy.safetensors")
    sd = load_file(str(out))
    expected = {f"diffusion_model.blocks.{b}.self_attn.{p}.{s}"
                for b in range(2) for p in "qkvo" for s in ("lora_A.weight", "lora_B.weight", "alpha")}
    assert set(sd) == expected
    assert not any(".default" in k or "attn1" in k or "to_" in k for k in sd)
    assert sd["diffusion_model.blocks.0.self_attn.q.lora_A.weight"].shape == (4, 32)  # rank × in
    assert sd["diffusion_model.blocks.1.self_attn.o.lora_B.weight"].shape == (32, 4)  # out × rank
    assert sd["diffusion_model.blocks.0.self_attn.k.alpha"].item() == 8.0
    assert torch.equal(sd["diffusion_model.blocks.1.self_attn.o.lora_B.weight"],
                       model.blocks[1].attn1.to_out[0].lora_B["phyloop"].weight)


def test_comfyui_file_round_trips_through_diffusers_converter(trained):
    model, tmp = trained
    out = export_comfyui(tmp / "adapter", tmp / "comfy.safetensors")
    fresh = tiny_transformer()
    load_adapter(fresh, out)  # diffusers' _convert_non_diffusers_wan_lora_to_diffusers folds alpha/rank in
    g = torch.Generator().manual_seed(2)
    kw = dict(hidden_states=torch.randn(2, 3, 4, 8, 8, generator=g), timestep=torch.tensor([100.0, 900.0]),
              encoder_hidden_states=torch.randn(2, 6, 32, generator=g), return_dict=False)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**kw)[0], model(**kw)[0], rtol=1e-5, atol=1e-6)


def test_key_mapping():
    assert comfyui_key("transformer.blocks.12.attn1.to_out.0.lora_A.weight") == \
        "diffusion_model.blocks.12.self_attn.o.lora_A.weight"
    assert comfyui_key("blocks.3.attn2.to_v.lora_B.weight") == "diffusion_model.blocks.3.cross_attn.v.lora_B.weight"
    assert comfyui_key("blocks.0.ffn.net.0.proj.lora_A.weight") == "diffusion_model.blocks.0.ffn.0.lora_A.weight"
    assert comfyui_key("blocks.1.ffn.net.2.lora_B.weight") == "diffusion_model.blocks.1.ffn.2.lora_B.weight"
    with pytest.raises(ValueError, match="no ComfyUI name"):
        comfyui_key("blocks.0.norm2.lora_A.weight")


@pytest.mark.parametrize("targets", ["attention+ffn", "all-linear"])
def test_wider_lora_targets_round_trip_through_diffusers_converter(tmp_path, targets):
    model = tiny_transformer()
    attach_lora(model, rank=4, alpha=8, targets=targets)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    save_adapter(model, tmp_path / "adapter")
    sd = load_file(str(export_comfyui(tmp_path / "adapter", tmp_path / "comfy.safetensors")))
    assert "diffusion_model.blocks.1.ffn.2.lora_B.weight" in sd
    assert ("diffusion_model.blocks.0.cross_attn.k.lora_A.weight" in sd) == (targets == "all-linear")
    kw = dict(hidden_states=torch.randn(2, 3, 4, 8, 8, generator=g), timestep=torch.tensor([100.0, 900.0]),
              encoder_hidden_states=torch.randn(2, 6, 32, generator=g), return_dict=False)
    for path in (tmp_path / "adapter", tmp_path / "comfy.safetensors"):  # phyloop's own file, then ComfyUI's
        fresh = tiny_transformer()
        load_adapter(fresh, path)  # attaches the LoRA on the same targets
        with torch.no_grad():
            torch.testing.assert_close(fresh(**kw)[0], model(**kw)[0], rtol=1e-5, atol=1e-6)
