"""LoRA-Switch Reference (LoRA-SR, PhyGDPO Sec. 2.2, Eq. 14).

The policy θ is the frozen backbone plus a LoRA on the query/key/value/output projections of
every *self*-attention (``blocks.N.attn1.to_q/to_k/to_v/to_out.0``; cross-attention ``attn2`` is
left alone). The reference ψ is the same network with the LoRA switched off, so DPO needs no
second copy of the model: ``Y = X(W + 1_action·(α/r)·BA)ᵀ``. The iterative variant
(``round-start``) takes ψ = the policy at the start of the round, at the cost of one frozen copy
of the adapter (not of the backbone).

Works for any diffusers ``WanTransformer3DModel`` (the built-in world's tiny one and Wan2.1
1.3B/14B) through diffusers' PEFT integration. Adapters are saved in diffusers' LoRA format
(``pytorch_lora_weights.safetensors``, keys ``transformer.blocks.N.attn1.to_q.lora_A.weight``,
the LoRA config in the safetensors metadata), which ``WanPipeline.load_lora_weights`` loads.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from torch.distributed.tensor import DTensor

ADAPTER_NAME = "phyloop"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
SELF_ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
_PREFIX = "transformer."  # the pipeline component the keys belong to

ReferenceMode = Literal["lora-switch", "round-start", "full-copy"]


FFN_PROJECTIONS = ("ffn.net.0.proj", "ffn.net.2")
CROSS_ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
#: which linears of each Wan block carry the LoRA: the paper's self-attention; + the feed-forward;
#: or every block linear (self- and cross-attention, feed-forward)
LoraTargets = Literal["self-attention", "attention+ffn", "all-linear"]
LORA_TARGETS: tuple[str, ...] = ("self-attention", "attention+ffn", "all-linear")


def self_attention_targets(model: nn.Module) -> list[str]:
    """Names of the self-attention projections of every block: ``blocks.N.attn1.{to_q,…}``."""
    return lora_targets(model, "self-attention")


def lora_targets(model: nn.Module, targets: str = "self-attention", check: bool = True) -> list[str]:
    """Module names of every block's LoRA-carrying linears for a :data:`LoraTargets` choice
    (``check``: each must be a plain ``nn.Linear``, i.e. the model carries no LoRA there yet)."""
    if targets not in LORA_TARGETS:
        raise ValueError(f"LoRA targets must be one of {', '.join(LORA_TARGETS)}, got {targets!r}")
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise ValueError(f"{type(model).__name__} has no `blocks`; expected a WanTransformer3DModel")
    per_block = [f"attn1.{p}" for p in SELF_ATTENTION_PROJECTIONS]
    if targets == "all-linear":
        per_block += [f"attn2.{p}" for p in CROSS_ATTENTION_PROJECTIONS]
    if targets != "self-attention":
        per_block += list(FFN_PROJECTIONS)
    names = [f"blocks.{i}.{p}" for i in range(len(blocks)) for p in per_block]
    if not check:
        return names
    modules = dict(model.named_modules())
    missing = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if missing:
        raise ValueError(f"not a Wan self-attention layout: no nn.Linear at {missing[0]}")
    return names


def has_lora(model: nn.Module) -> bool:
    return ADAPTER_NAME in getattr(model, "peft_config", {})


def lora_config(model: nn.Module) -> LoraConfig:
    if not has_lora(model):
        raise ValueError("the model carries no phyloop LoRA; call attach_lora first")
    return model.peft_config[ADAPTER_NAME]


def attach_lora(model: nn.Module, rank: int = 48, alpha: float = 48.0, targets: str = "self-attention") -> None:
    """Attach the LoRA (B = 0, so the policy starts equal to the reference) and freeze the base.

    Only the LoRA parameters require grad afterwards. Attaching twice with the same rank, alpha and
    targets is a no-op; with different ones it is an error (a silent mismatch would change the
    scale α/r or which layers train).
    """
    wanted = lora_targets(model, targets, check=not has_lora(model))
    if has_lora(model):
        cfg = lora_config(model)
        if cfg.r != rank or float(cfg.lora_alpha) != float(alpha):
            raise ValueError(f"model already has a LoRA with rank {cfg.r}, alpha {cfg.lora_alpha}; "
                             f"asked for rank {rank}, alpha {alpha}")
        if set(cfg.target_modules) != set(wanted):
            raise ValueError(f"model already has a LoRA on {len(cfg.target_modules)} other modules; "
                             f"asked for targets {targets!r}")
        return
    if rank < 1 or alpha <= 0:
        raise ValueError(f"LoRA rank must be ≥ 1 and alpha > 0, got rank {rank}, alpha {alpha}")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=wanted,
                        lora_dropout=0.0, init_lora_weights=True)
    model.requires_grad_(False)
    model.add_adapter(config, adapter_name=ADAPTER_NAME)  # diffusers' PeftAdapterMixin
    for p in lora_parameters(model):
        # LoRA weights train in fp32 even on a bf16 base (as diffusers' cast_training_params):
        # in bf16 most lr≈1e-5 updates would round away.
        p.data = p.data.float()
        p.requires_grad_(True)


def lora_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if f".{ADAPTER_NAME}." in n and "lora_" in n]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for _, p in lora_named_parameters(model)]


def _tuner_layers(model: nn.Module) -> list[BaseTunerLayer]:
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def reference_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Switch the LoRA off inside the block (1_action = 0 in Eq. 14): the model *is* ψ.

    The LoRA layers then call their base layer only, so outputs equal the base model bit for
    bit. Use it under ``torch.no_grad()``; the previous on/off state is restored on exit (and
    peft's re-enable marks the active adapter trainable again, as it was).
    """
    layers = _tuner_layers(model)
    if not layers:
        raise ValueError("reference_mode needs a model with a LoRA attached")
    was_disabled = [layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer, disabled in zip(layers, was_disabled):
            layer.enable_adapters(not disabled)


def frozen_base_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the backbone without any LoRA, frozen — the vanilla-DPO reference.

    Only for the LoRA-SR ablation/benchmark: it doubles the weight memory, which is exactly what
    LoRA-SR avoids.
    """
    ref = copy.deepcopy(model)
    if _tuner_layers(ref):
        ref.unload_lora()
    ref.requires_grad_(False)
    return ref.eval()


class LoraSwitchReference:
    """ψ = the policy network with its LoRA switched off (LoRA-SR)."""

    mode: ReferenceMode = "lora-switch"

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, **forward_kwargs) -> torch.Tensor:
        with torch.no_grad(), reference_mode(self.model):
            return self.model(**forward_kwargs, return_dict=False)[0]


class FullCopyReference:
    """ψ = a separate frozen copy of the backbone (vanilla DPO; the ablation of LoRA-SR)."""

    mode: ReferenceMode = "full-copy"

    def __init__(self, model: nn.Module):
        self.model = frozen_base_copy(model)

    def __call__(self, **forward_kwargs) -> torch.Tensor:
        with torch.no_grad():
            return self.model(**forward_kwargs, return_dict=False)[0]


class RoundStartReference:
    """ψ = the policy as it was at the start of the round (iterative / online DPO).

    Keeps a frozen copy of the *adapter* weights only, taken by :meth:`refresh` when a round
    starts, and swaps it into the LoRA parameters under ``no_grad`` for a reference forward, then
    swaps the trained weights back (the optimizer's parameters and their autograd state are
    untouched). Plain parameters swap their storage; sharded ones (FSDP's DTensors, whose storage
    the sharding owns) swap values in place, one parameter at a time. Either way the extra memory
    is the snapshot, one adapter (plus, sharded, one parameter's shard in flight), never a copy of
    the backbone. Before the first :meth:`refresh` the snapshot is the adapter as attached (B = 0:
    the base model).
    """

    mode: ReferenceMode = "round-start"

    def __init__(self, model: nn.Module):
        self.model = model
        self.params = [p for _, p in lora_named_parameters(model)]
        if not self.params:
            raise ValueError("a round-start reference needs a model with a LoRA attached")
        self.in_place = any(isinstance(p, DTensor) for p in self.params)
        self.refresh()

    def refresh(self) -> None:
        """Take the adapter as it is now as the reference (call at the start of every round)."""
        with torch.no_grad():
            self.snapshot = [p.detach().clone() for p in self.params]

    def extra_bytes(self) -> int:
        """Memory this reference adds: the snapshot (and, sharded, the largest shard in flight)."""
        sizes = [p.numel() * p.element_size() for p in self.params]
        return sum(sizes) + (max(sizes) if self.in_place else 0)

    def _swap(self) -> None:
        if self.in_place:
            for p, s in zip(self.params, self.snapshot):
                parked = p.detach().clone()
                p.copy_(s)
                s.copy_(parked)
        else:
            for i, p in enumerate(self.params):
                p.data, self.snapshot[i] = self.snapshot[i], p.data

    def __call__(self, **forward_kwargs) -> torch.Tensor:
        with torch.no_grad():
            self._swap()
            try:
                return self.model(**forward_kwargs, return_dict=False)[0]
            finally:
                self._swap()


def make_reference(model: nn.Module, mode: ReferenceMode = "lora-switch"):
    if mode == "lora-switch":
        return LoraSwitchReference(model)
    if mode == "round-start":
        return RoundStartReference(model)
    if mode == "full-copy":
        return FullCopyReference(model)
    raise ValueError(f"unknown reference mode {mode!r}; expected 'lora-switch', 'round-start' or 'full-copy'")


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights keyed like ``blocks.0.attn1.to_q.lora_A.weight`` (no adapter name)."""
    return get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Save the adapter in diffusers' LoRA format; returns the ``.safetensors`` path.

    Same call as diffusers' own LoRA training scripts: ``get_peft_model_state_dict`` +
    ``WanPipeline.save_lora_weights`` with the adapter config as metadata, so that
    ``WanPipeline.load_lora_weights(directory)`` restores rank and alpha exactly.
    """
    from diffusers.loaders import WanLoraLoaderMixin  # WanPipeline's LoRA mixin, without the pipeline

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = lora_config(model).to_dict()
    for key in ("target_modules", "exclude_modules"):  # peft keeps these as sets, whose order varies by
        if isinstance(metadata.get(key), (set, frozenset, list, tuple)):  # process: sorted, the metadata is the same
            metadata[key] = sorted(metadata[key])
    WanLoraLoaderMixin.save_lora_weights(
        directory,
        transformer_lora_layers={k: v.detach().contiguous() for k, v in lora_state_dict(model).items()},
        transformer_lora_adapter_metadata=metadata,
        weight_name=WEIGHT_NAME,
        safe_serialization=True,
    )
    return directory / WEIGHT_NAME


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read a Wan LoRA file or directory (diffusers or ComfyUI format) → (state dict, config).

    Keys come back unprefixed (``blocks.0.attn1.to_q.lora_A.weight``); ComfyUI files are
    converted by diffusers' own converter, with their ``.alpha`` folded into the weights.
    """
    from diffusers.loaders import WanLoraLoaderMixin

    path = Path(path)
    if path.is_dir():
        directory, weight_name = path, WEIGHT_NAME
    elif path.is_file():
        directory, weight_name = path.parent, path.name
    else:
        raise FileNotFoundError(f"no LoRA adapter at {path}")
    state, metadata = WanLoraLoaderMixin.lora_state_dict(
        str(directory), weight_name=weight_name, return_lora_metadata=True)
    state = {k.removeprefix(_PREFIX): v for k, v in state.items()}
    config = None
    if metadata:
        config = {k.removeprefix(_PREFIX): v for k, v in metadata.items() if k.startswith(_PREFIX)} or None
    return state, config


def targets_of(state: dict[str, torch.Tensor]) -> str:
    """The :data:`LoraTargets` choice a saved adapter was trained with, read from its keys (a saved
    config keeps only the modules' last names, ``to_q``, ``proj``, which do not tell attn1 from attn2)."""
    if any(".attn2." in k for k in state):
        return "all-linear"
    return "attention+ffn" if any(".ffn." in k for k in state) else "self-attention"


def load_adapter(model: nn.Module, path: str | Path) -> None:
    """Load a saved adapter into ``model`` (attaching the LoRA first if it has none).

    Every key must land on a LoRA weight of the model, and every LoRA weight must be set: a
    partial load would silently train from a mix of old and new weights.
    """
    state, config = read_adapter(path)
    if not has_lora(model):
        rank = int(config["r"]) if config else next(v.shape[0] for k, v in state.items() if "lora_A" in k)
        alpha = float(config["lora_alpha"]) if config else float(rank)
        attach_lora(model, rank=rank, alpha=alpha, targets=targets_of(state))
    elif config and (int(config["r"]) != lora_config(model).r
                     or float(config["lora_alpha"]) != float(lora_config(model).lora_alpha)):
        raise ValueError(f"adapter at {path} has rank {config['r']}, alpha {config['lora_alpha']}; the model's "
                         f"LoRA has rank {lora_config(model).r}, alpha {lora_config(model).lora_alpha}")
    elif config is None:
        # A file without a config (e.g. ComfyUI format, alpha already folded in by diffusers'
        # converter) means an effective scale of 1; undo the model's α/r on B to match.
        scale = float(lora_config(model).lora_alpha) / lora_config(model).r
        state = {k: (v / scale if ".lora_B." in k else v) for k, v in state.items()}
    expected = set(lora_state_dict(model))
    if set(state) != expected:
        extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
        raise ValueError(f"adapter at {path} does not match the model's LoRA "
                         f"(unexpected: {extra[:3]}, missing: {missing[:3]})")
    result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER_NAME)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ValueError(f"adapter keys not loaded: {unexpected[:3]}")

