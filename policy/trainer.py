"""The PhyGDPO trainer: one round of LoRA preference training on a round's groups.

Each step draws ``groups_per_step`` groups and, per group, one loser ``j`` (uniform), one
timestep ``t`` and one noise ``x1`` shared by the winner and its loser(s) (Eq. 13: the
comparison is made at the same point of the same flow). One batched forward of the reference
(no grad; ψ is the LoRA-off base, or the round-start adapter) and one of the policy (LoRA on) give the per-sample errors, and
:mod:`policy.objectives` turns them into the loss. For ``gdpo-full`` all m losers enter the
step (Eq. 6), i.e. m + 1 samples per group instead of 2 — the cost PhyGDPO's bound removes.
The peer baseline ``diffusion-nft`` draws the same two samples per group (the real video at
r = 1 and one generated clip at its within-group optimality probability) and compares the
velocities of the policy and of ψ = the round-start policy (its v_old) instead of their errors.
``flow-grpo`` (the other peer baseline) trains on the SDE sampler's stored denoising steps instead
of the forward process: per group ``grpo_draws_per_group`` (clip, step) draws, the clipped ratio of
the step's likelihood under the policy to the sampler's, and a KL to ψ (the base by default).

Optimisation (paper defaults): AdamW (0.9, 0.999, wd 0.01) on the LoRA parameters only, lr
1e-5 with linear warm-up then cosine decay to 1e-6, gradient clipping, bf16 autocast on CUDA
(fp32 on CPU), optional gradient checkpointing. The schedule restarts every round (cosine with
warm restarts): each round brings new on-policy data, and the lr is a pure function of the step
within the round (:func:`cosine_lr`), so resuming needs only the optimizer state and counters.

Robustness: a step whose loss or gradient norm is not finite changes nothing (no optimizer
update) and is recorded as skipped. The divergence guard stops a round whose loss stays above a
threshold (or keeps rising) and restores the adapter and optimizer state of the round's start.

Distributed: everything runs under ``accelerate.Accelerator`` (one process by default). The
model and optimizer go through ``accelerator.prepare`` (DDP across processes); the reference pass
calls the UNWRAPPED model, since through DDP every forward would be a collective.
``groups_per_step`` is the GLOBAL batch: every process draws the same selection (groups, losers,
timesteps, noise) from a generator seeded without the process index, then keeps its own
contiguous slice of ``groups_per_step / N`` groups (:func:`global_batch`, :func:`rank_slice`).
DDP averages the per-process gradients, and with equal slices the mean of the per-process mean
losses is the global mean, so N processes take the same steps as one process with the same
global batch (to float rounding). The exception is ``rwr`` with ``softmax`` weighting, which
normalises over the batch each process sees. Logged metrics are averaged over processes so that
every process takes the same skip/stop decisions, and ``on_step`` gets the same record on every
process (a caller that writes shared state does it on the main process only).

FSDP (``fsdp = true``, more than one process): instead of DDP's full copy per process, the
trainer shards the transformer itself with FSDP2 (``torch.distributed.fsdp.fully_shard``: one
unit per transformer block, then the root), so base weights, LoRA weights, gradients and AdamW
state are split across processes, and per-parameter sharding lets the fp32 LoRA live beside a
bf16 base (FSDP1's flat parameters need one dtype per unit). The module stays the generator's
own: every forward, generation included, all-gathers the block it runs, so every process must
make the same number of forward calls (the distributed runtime keeps generation in lockstep).
Gradients are reduce-scattered as means, as DDP averages them. Saving gathers the LoRA and the
optimizer state to full tensors (a collective: every process calls :meth:`save`); loading
scatters them back. Sharding is done here rather than by ``accelerate launch``'s FSDP plugin
because accelerate refuses FSDP on CPUs, and this way the same code path runs in the CPU tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor
from torch.distributed.tensor import DTensor

from policy import objectives as obj
from policy.base import GroupSample, draw_times
from policy.lora import (ADAPTER_NAME, WEIGHT_NAME, LoraTargets, ReferenceMode, attach_lora, load_adapter, lora_config,
                         lora_named_parameters, lora_parameters, lora_state_dict, make_reference, read_adapter,
                         save_adapter)

log = logging.getLogger(__name__)

STATE_NAME = "trainer_state.pt"
CONFIG_NAME = "train_config.json"


class PGRConfig(BaseModel):
    """Physics-guided rewarding hyper-parameters (Eq. 9; paper defaults)."""

    model_config = ConfigDict(extra="forbid")
    alpha_min: float = Field(0.5, gt=0.0, le=1.0)
    k_alpha: float = 5.0
    b_alpha: float = 0.5
    lam: float = Field(0.6, ge=0.0)
    k_gamma: float = 2.0
    b_gamma: float = 0.4


class TrainConfig(BaseModel):
    """Everything the trainer needs; paper defaults unless noted (presets override)."""

    model_config = ConfigDict(extra="forbid")

    objective: obj.Objective = "phygdpo"
    beta: float = Field(obj.DEFAULT_BETA, gt=0.0)  # β·T = 2500 by default, see policy.objectives
    T: float = Field(obj.DEFAULT_T, gt=0.0)
    use_pgr: bool = True  # False: α = γ = 1 (PGR ablation)
    # preference objectives: + winner_weight · flow-matching error of the winners (objectives.winner_anchored)
    winner_weight: float = Field(0.0, ge=0.0)
    pgr: PGRConfig = PGRConfig()
    rwr_weighting: obj.RwrWeighting = "linear"
    rwr_tau: float = Field(1.0, gt=0.0)
    rwr_threshold: float = 0.5
    # diffusion-nft (objectives.diffusion_nft): β of the implicit policies, the advantage clip c of r,
    # DiffusionNFT's self-normalised clean-clip error, and whether the real video enters at r = 1
    nft_beta: float = Field(1.0, gt=0.0)
    nft_adv_clip: float = Field(5.0, gt=0.0)
    nft_adaptive: bool = True
    nft_real: bool = True
    # flow-grpo (objectives.flow_grpo): the SDE sampler's noise level a of the training rollouts, the
    # ratio clip ε, the KL weight to ψ, the advantage clip, and (clip, denoising step) draws per group and step
    grpo_noise_level: float = Field(0.7, gt=0.0)
    grpo_clip: float = Field(1e-4, gt=0.0)
    grpo_kl_beta: float = Field(0.04, ge=0.0)
    grpo_adv_clip: float = Field(5.0, gt=0.0)
    grpo_draws_per_group: int = Field(2, ge=1)

    lr: float = Field(1e-5, gt=0.0)
    lr_min: float = Field(1e-6, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    grad_clip: float | None = Field(1.0, gt=0.0)  # None: no clipping (the norm is still logged)
    steps: int = Field(100, ge=1)  # optimizer steps per round
    groups_per_step: int = Field(4, ge=1)

    lora_rank: int = Field(48, ge=1)
    lora_alpha: float = Field(48.0, gt=0.0)
    # which linears of each block carry the LoRA: the paper's self-attention, + FFN, or every block linear
    lora_targets: LoraTargets = "self-attention"
    # lora-switch: ψ = the base (LoRA off, the paper's LoRA-SR); round-start: ψ = the policy at the start
    # of the round (iterative DPO; one frozen copy of the adapter); full-copy: the ablation/benchmark only
    reference: ReferenceMode = "lora-switch"

    # the per-sample error the objectives compare: the flow-matching velocity error (the paper's), or the
    # implied clean clip's, t²× it (objectives.clean_clip_error), which no longer lets low-t draws dominate
    error_space: Literal["velocity", "x0"] = "velocity"
    timestep_sampling: Literal["uniform", "logit-normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0.0)
    timestep_shift: float = Field(1.0, gt=0.0)  # t ← s·t / (1 + (s − 1)·t), as Wan's sampler shift
    # a share of each batch drawn uniformly from [high_noise_min, 1): the base's layout times (its recipe: 0.3, 0.9)
    high_noise_fraction: float = Field(0.0, ge=0.0, le=1.0)
    high_noise_min: float = Field(0.9, ge=0.0, lt=1.0)

    gradient_checkpointing: bool = False
    fsdp: bool = False  # shard with FSDP2 across processes (see the module doc); one process: ignored
    mixed_precision: Literal["no", "bf16"] = "no"  # bf16 autocast applies on CUDA only
    seed: int = 0

    # divergence guard: stop and restore the round's starting adapter when, for `guard_patience`
    # consecutive steps, the loss is non-finite or above min(guard_max_loss, guard_loss_factor ×
    # baseline), baseline = mean of the round's first `guard_baseline_steps` losses, floored at
    # the objective's chance-level loss; or when it rose for `guard_rise_steps` steps in a row.
    guard_max_loss: float | None = Field(None, gt=0.0)
    guard_loss_factor: float | None = Field(10.0, gt=1.0)
    guard_baseline_steps: int = Field(5, ge=1)
    guard_patience: int = Field(3, ge=1)
    guard_rise_steps: int = Field(0, ge=0)  # 0: off (the per-step loss is noisy by design)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min ({self.lr_min}) must not exceed lr ({self.lr})")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"AdamW betas must be in [0, 1), got {self.betas}")
        if self.objective == "flow-grpo" and self.mixed_precision == "bf16":
            raise ValueError("train.objective = 'flow-grpo' compares log-probabilities with the fp32 sampler's to "
                             "1e-4; train it in fp32 (mixed_precision = 'no')")
        if self.objective == "diffusion-nft" and self.reference != "round-start":
            raise ValueError("train.objective = 'diffusion-nft' needs train.reference = 'round-start': its v_old "
                             f"is the policy that sampled the round, not {self.reference!r}")
        if self.fsdp and self.reference == "full-copy":
            raise ValueError("reference = 'full-copy' cannot be sharded with fsdp; use 'lora-switch'")
        return self


def cosine_lr(step: int, steps: int, lr: float, lr_min: float, warmup_steps: int = 0) -> float:
    """Learning rate at ``step`` (0-based) of a round: linear warm-up, then cosine lr → lr_min."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    span = max(1, steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def sample_timesteps(n: int, config: TrainConfig, generator: torch.Generator) -> Tensor:
    """Flow times t ∈ (0, 1) (t = 1 is pure noise) for a step, as :func:`policy.base.draw_times`."""
    return draw_times(n, generator, sampling=config.timestep_sampling, logit_mean=config.logit_mean,
                      logit_std=config.logit_std, shift=config.timestep_shift,
                      high_noise_fraction=config.high_noise_fraction, high_noise_min=config.high_noise_min)


@dataclass
class TrainSummary:
    round: int
    groups: int
    steps: int = 0  # steps run (including skipped ones)
    updates: int = 0  # optimizer updates applied
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    restored: bool = False  # the divergence guard restored the round's starting adapter
    stop_reason: str | None = None
    loss_mean: float | None = None
    loss_last: float | None = None
    margin_mean: float | None = None
    accuracy_mean: float | None = None
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)

    def to_dict(self, history: bool = False) -> dict:
        d = asdict(self)
        if not history:
            d.pop("history")
        return d


@dataclass
class _Batch:
    """One step's draw, on the training device. Pairwise objectives use the sampled loser
    (``losers`` is ``(B, …)``); gdpo-full uses all losers flattened (``losers`` is ``(N, …)``,
    ``owner[i]`` = group of loser i, ``slot[i]`` = its position in the group)."""

    text: Tensor
    winners: Tensor
    losers: Tensor
    sa: Tensor
    pc: Tensor
    m: Tensor
    t: Tensor
    noise: Tensor
    owner: Tensor
    slot: Tensor
    r: Tensor | None = None  # diffusion-nft: each drawn loser's optimality probability within its group
    r_winner: Tensor | None = None  # diffusion-nft: the winner's (1 for a real video)


@dataclass
class _RolloutBatch:
    """One flow-grpo step's draw: stored denoising steps x → x_next of the groups' rollouts."""

    text: Tensor
    x: Tensor
    x_next: Tensor
    t: Tensor  # σ of the step (t, as everywhere: 1 = noise)
    t_next: Tensor
    old_log_prob: Tensor
    advantage: Tensor
    sigma_cap: float


class _GroupStream:
    """Groups in shuffled epochs, so each is seen once before any is seen twice."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.gen, self.queue = n, generator, []

    def take(self, k: int) -> list[int]:
        while len(self.queue) < k:
            self.queue += torch.randperm(self.n, generator=self.gen).tolist()
        out, self.queue = self.queue[:k], self.queue[k:]
        return out


class _DivergenceGuard:
    """The stop rule of a round (see the ``guard_*`` fields of :class:`TrainConfig`)."""

    def __init__(self, config: TrainConfig):
        self.c = config
        self.losses: list[float] = []
        self.chance: list[float] = []
        self.over = 0
        self.rises = 0
        self.prev: float | None = None

    def threshold(self) -> float:
        limits = [self.c.guard_max_loss] if self.c.guard_max_loss is not None else []
        if self.c.guard_loss_factor is not None and len(self.losses) >= self.c.guard_baseline_steps:
            base = float(np.mean(self.losses))
            if self.chance:
                base = max(base, float(np.mean(self.chance)))
            # a multiple of a loss centred on 0 (flow-grpo: −A·ρ with group-centred advantages) means nothing:
            # its early mean is as likely ±0.1 as anything, and any later batch can be 10× that
            if base > 0 and self.c.objective != "flow-grpo":
                limits.append(self.c.guard_loss_factor * base)
        return min(limits) if limits else math.inf

    def update(self, loss: float, chance: float | None) -> str | None:
        """Feed one step's loss; returns why to stop, or None."""
        if not math.isfinite(loss):
            self.over += 1
            if self.over >= self.c.guard_patience:
                return f"non-finite loss for {self.over} consecutive steps"
            return None
        limit = self.threshold()
        if len(self.losses) < self.c.guard_baseline_steps:
            self.losses.append(loss)
            if chance is not None:
                self.chance.append(chance)
        self.over = self.over + 1 if loss > limit else 0
        if self.over >= self.c.guard_patience:
            return f"loss above {limit:.4g} for {self.over} consecutive steps"
        if self.c.guard_rise_steps:
            self.rises = self.rises + 1 if self.prev is not None and loss > self.prev else 0
            self.prev = loss
            if self.rises >= self.c.guard_rise_steps:
                return f"loss rose for {self.rises} consecutive steps"
        return None


def global_batch(groups_per_step: int, n_groups: int, processes: int = 1) -> int:
    """Groups drawn per optimizer step, summed over all processes.

    ``groups_per_step`` when the round has that many groups; otherwise every group once
    (``n_groups``), rounded down to a multiple of ``processes`` so every process gets an equal
    slice (at least one group each, repeating groups when a round has fewer than ``processes``).
    """
    if groups_per_step % processes:
        raise ValueError(f"train.groups_per_step ({groups_per_step}) is the global batch and must be a "
                         f"multiple of the number of processes ({processes})")
    b = min(groups_per_step, n_groups)
    return max(processes, b - b % processes)


def rank_slice(batch: int, processes: int, rank: int) -> slice:
    """The contiguous part of a global batch that process ``rank`` trains on."""
    per = batch // processes
    return slice(rank * per, (rank + 1) * per)


def _cpu_clone(obj):
    """Deep copy with every tensor cloned to CPU (snapshots must not hold device memory).

    FSDP shards (DTensors) are cloned where they are: a shard is 1/N of the LoRA state, and a
    DTensor moved off its mesh's device could not be copied back.
    """
    if isinstance(obj, DTensor):
        return obj.detach().clone()
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_clone(v) for v in obj)
    return obj


class Trainer:
    """Trains the LoRA of a ``WanTransformer3DModel`` round after round.

    ``transformer`` is the generator's own denoiser (trained in place: the next round generates
    with it); a LoRA is attached if it has none. ``on_step`` receives each step's log dict:
    round, step, global_step, loss, margin, accuracy, grad_norm, lr, alpha_mean, gamma_mean,
    skipped, reason, t_mean, seconds — on every process, reduced over processes.
    """

    def __init__(self, transformer: torch.nn.Module, config: TrainConfig | None = None, *,
                 on_step: Callable[[dict], None] | None = None, accelerator=None):
        from accelerate import Accelerator

        self.config = config or TrainConfig()
        self.on_step = on_step
        # Autocast is done explicitly (see _autocast) rather than through accelerate's
        # mixed_precision, which would patch the shared transformer's forward for generation too.
        self.accelerator = accelerator or Accelerator(mixed_precision="no")
        cfg = self.config

        attach_lora(transformer, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets)
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        elif getattr(transformer, "gradient_checkpointing", False):
            transformer.disable_gradient_checkpointing()
        global_batch(cfg.groups_per_step, cfg.groups_per_step, self.accelerator.num_processes)  # divisibility
        self.sharded = cfg.fsdp and self.accelerator.num_processes > 1
        if self.sharded:
            _shard(transformer)
        params = lora_parameters(transformer)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                      weight_decay=cfg.weight_decay)
        if self.sharded:  # the module is already distributed; accelerate wraps only the optimizer
            self.model, self.optimizer = transformer, self.accelerator.prepare(optimizer)
        else:
            self.model, self.optimizer = self.accelerator.prepare(transformer, optimizer)
        self.transformer = self.accelerator.unwrap_model(self.model)
        self.params = lora_parameters(self.transformer)
        self.reference = make_reference(self.transformer, cfg.reference)
        self.device = self.accelerator.device
        self.bf16 = cfg.mixed_precision == "bf16" and self.device.type == "cuda"
        if cfg.mixed_precision == "bf16" and not self.bf16:
            log.warning("bf16 autocast is used on CUDA only; training in fp32 on %s", self.device.type)
        self.round = 0
        self.global_step = 0

    # ------------------------------------------------------------------ sampling
    def _generator(self) -> torch.Generator:
        """The round's sampling generator: the same on every process (no process index in the
        seed), so all processes draw the same global batch and each keeps its slice."""
        seq = np.random.SeedSequence([self.config.seed, self.round])
        return torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> 1))

    def _sample(self, groups: Sequence[GroupSample], stream: _GroupStream,
                gen: torch.Generator) -> _Batch | _RolloutBatch:
        acc = self.accelerator
        G = global_batch(self.config.groups_per_step, len(groups), acc.num_processes)
        chosen = [groups[i] for i in stream.take(G)]
        if self.config.objective == "flow-grpo":
            return self._sample_rollouts(chosen, gen)
        pairwise = self.config.objective != "gdpo-full"
        # The global draw, in the order one process makes it; then this process's slice.
        js = [int(torch.randint(g.losers.shape[0], (1,), generator=gen)) for g in chosen] if pairwise else None
        t = sample_timesteps(G, self.config, gen)
        noise = torch.randn((G, *chosen[0].winner.shape), generator=gen)
        part = rank_slice(G, acc.num_processes, acc.process_index)
        chosen, t, noise = chosen[part], t[part], noise[part]
        B = len(chosen)
        ms = [g.losers.shape[0] for g in chosen]
        if not pairwise:
            losers = torch.cat([g.losers for g in chosen])
            sa = torch.cat([g.loser_sa.float() for g in chosen])
            pc = torch.cat([g.loser_pc.float() for g in chosen])
            owner = torch.repeat_interleave(torch.arange(B), torch.tensor(ms))
            slot = torch.cat([torch.arange(m) for m in ms])
        else:
            js = js[part]
            losers = torch.stack([g.losers[j] for g, j in zip(chosen, js)])
            sa = torch.stack([g.loser_sa[j].float() for g, j in zip(chosen, js)])
            pc = torch.stack([g.loser_pc[j].float() for g, j in zip(chosen, js)])
            owner = slot = torch.arange(B)
        r = r_winner = None
        if self.config.objective == "diffusion-nft":
            rs = [self._nft_r(g) for g in chosen]
            r = torch.stack([x[j] for x, j in zip(rs, js)]).to(self.device)
            r_winner = torch.stack([x[-1] if g.meta.get("winner_score") is not None else x.new_tensor(1.0)
                                    for x, g in zip(rs, chosen)]).to(self.device)
        winners = torch.stack([g.winner for g in chosen])
        dev = self.device
        return _Batch(
            text=torch.stack([g.text for g in chosen]).to(dev, non_blocking=True),
            winners=winners.to(dev, torch.float32, non_blocking=True),
            losers=losers.to(dev, torch.float32, non_blocking=True),
            sa=sa.to(dev), pc=pc.to(dev), m=torch.tensor(ms, dtype=torch.float32, device=dev),
            t=t.to(dev), noise=noise.to(dev, non_blocking=True), owner=owner.to(dev), slot=slot.to(dev), r=r, r_winner=r_winner)

    def _nft_r(self, g: GroupSample) -> Tensor:
        """Optimality probabilities of a group's judged clips: its losers in order, then a generated
        winner's (when the winner is generated, it is one of the group's clips too)."""
        reward = (g.loser_sa + g.loser_pc).float() / 2.0
        if g.meta.get("winner_score") is not None:
            reward = torch.cat([reward, reward.new_tensor([float(g.meta["winner_score"])])])
        return obj.optimality_probability(reward, adv_clip=self.config.nft_adv_clip)

    def _sample_rollouts(self, chosen: list[GroupSample], gen: torch.Generator) -> _RolloutBatch:
        """Per group ``grpo_draws_per_group`` (clip, step) draws, uniform over the group's rollouts and
        over the stochastic steps (the last, deterministic step has no likelihood); the advantage of
        a clip is its reward's standing within ALL of its group's rollouts."""
        acc, k = self.accelerator, self.config.grpo_draws_per_group
        draws = []
        for g in chosen:
            r = g.rollouts
            n, steps = r["log_probs"].shape
            if steps < 2:
                raise ValueError("flow-grpo needs at least 2 sampling steps: the last one is deterministic")
            level = r.get("noise_level")
            if level is not None and abs(float(level) - self.config.grpo_noise_level) > 1e-6:
                raise ValueError(f"rollouts were sampled at SDE noise level {float(level)} but "
                                 f"train.grpo_noise_level is {self.config.grpo_noise_level}")
            adv = obj.group_advantages(r["reward"], adv_clip=self.config.grpo_adv_clip)
            for _ in range(k):
                j = int(torch.randint(n, (1,), generator=gen))
                s = int(torch.randint(steps - 1, (1,), generator=gen))
                draws.append((g, j, s, adv[j]))
        part = rank_slice(len(chosen), acc.num_processes, acc.process_index)
        draws = draws[part.start * k:part.stop * k]
        dev = self.device
        sig = [g.rollouts["sigmas"] for g, *_ in draws]
        return _RolloutBatch(
            text=torch.stack([g.text for g, *_ in draws]).to(dev),
            x=torch.stack([g.rollouts["latents"][j, s] for g, j, s, _ in draws]).to(dev, torch.float32),
            x_next=torch.stack([g.rollouts["latents"][j, s + 1] for g, j, s, _ in draws]).to(dev, torch.float32),
            t=torch.stack([sg[s] for sg, (_, _, s, _) in zip(sig, draws)]).float().to(dev),
            t_next=torch.stack([sg[s + 1] for sg, (_, _, s, _) in zip(sig, draws)]).float().to(dev),
            old_log_prob=torch.stack([g.rollouts["log_probs"][j, s] for g, j, s, _ in draws]).float().to(dev),
            advantage=torch.stack([a for *_, a in draws]).float().to(dev),
            sigma_cap=float(sig[0][1]) if len(sig[0]) > 2 else 0.5)

    # ------------------------------------------------------------------ forward
    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def _net(self, net: Callable[..., Tensor], x_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        dtype = self.transformer.dtype
        with self._autocast():
            return net(hidden_states=x_t.to(dtype), timestep=t * 1000.0, encoder_hidden_states=text.to(dtype))

    def _velocity(self, net: Callable[..., Tensor], x0: Tensor, x1: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """``net``'s velocity at x_t = (1 − t)·x0 + t·x1."""
        tb = t.view(-1, *([1] * (x0.dim() - 1)))
        return self._net(net, (1.0 - tb) * x0 + tb * x1, t, text)

    def _errors(self, net: Callable[..., Tensor], x0: Tensor, x1: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """Per-sample flow-matching error of ``net`` at x_t = (1 − t)·x0 + t·x1."""
        err = obj.flow_matching_error(self._velocity(net, x0, x1, t, text), x0, x1)
        return obj.clean_clip_error(err, t) if self.config.error_space == "x0" else err

    def _policy(self, **kw) -> Tensor:
        return self.model(**kw, return_dict=False)[0]

    def _loss(self, b: _Batch | _RolloutBatch) -> tuple[Tensor, obj.Diagnostics]:
        if isinstance(b, _RolloutBatch):
            return self._grpo(b)
        cfg, B = self.config, b.winners.shape[0]
        if cfg.objective == "sft":
            return obj.sft(self._errors(self._policy, b.winners, b.noise, b.t, b.text))
        # winners first, then their loser(s); each loser shares its group's noise, t and text
        idx = torch.cat([torch.arange(B, device=self.device), b.owner])
        x0, x1, t, text = torch.cat([b.winners, b.losers]), b.noise[idx], b.t[idx], b.text[idx]
        if cfg.objective == "diffusion-nft":
            return self._nft(b)
        if cfg.objective == "rwr":  # winners have reward 1, losers the judge's (sa + pc)/2
            reward = torch.cat([torch.ones(B, device=self.device), (b.sa + b.pc) / 2.0])
            return obj.rwr(self._errors(self._policy, x0, x1, t, text), reward,
                           weighting=cfg.rwr_weighting, tau=cfg.rwr_tau, threshold=cfg.rwr_threshold)
        ref = self._errors(self.reference, x0, x1, t, text)  # ψ (LoRA off, or the round-start adapter), no grad
        pol = self._errors(self._policy, x0, x1, t, text)
        loss, diag = self._preference(b, pol[:B], pol[B:], ref[:B], ref[B:])
        return obj.winner_anchored(loss, pol[:B], cfg.winner_weight), diag

    def _nft(self, b: _Batch) -> tuple[Tensor, obj.Diagnostics]:
        """DiffusionNFT on the drawn generated clips (r within their group) and, with ``nft_real``, the
        winners (a real video at r = 1, a generated winner at its own r); v_old is ψ, the round-start policy. Same samples per step as phygdpo."""
        cfg, B = self.config, b.winners.shape[0]
        if cfg.nft_real:
            idx = torch.cat([torch.arange(B, device=self.device), b.owner])
            x0, r = torch.cat([b.winners, b.losers]), torch.cat([b.r_winner, b.r])
        else:
            idx, x0, r = b.owner, b.losers, b.r
        x1, t, text = b.noise[idx], b.t[idx], b.text[idx]
        v_old = self._velocity(self.reference, x0, x1, t, text)
        v_theta = self._velocity(self._policy, x0, x1, t, text)
        return obj.diffusion_nft(v_theta, v_old, x1 - x0, t, r, beta=cfg.nft_beta, adv_clip=cfg.nft_adv_clip,
                                 adaptive=cfg.nft_adaptive)

    def _grpo(self, b: _RolloutBatch) -> tuple[Tensor, obj.Diagnostics]:
        """Flow-GRPO on stored denoising steps: the policy's (and ψ's) Gaussian step from x, the log
        probability of the step the sampler took, the clipped ratio against the sampler's."""
        cfg = self.config
        step = dict(noise_level=cfg.grpo_noise_level, sigma_cap=b.sigma_cap)
        mean, std = obj.sde_step(b.x, self._net(self._policy, b.x, b.t, b.text), b.t, b.t_next, **step)
        log_prob = obj.gaussian_log_prob(b.x_next, mean, std)
        kl = None
        if cfg.grpo_kl_beta > 0:
            ref_mean, _ = obj.sde_step(b.x, self._net(self.reference, b.x, b.t, b.text), b.t, b.t_next, **step)
            kl = obj.sde_kl(mean, ref_mean, std)
        return obj.flow_grpo(log_prob, b.old_log_prob, b.advantage, clip_range=cfg.grpo_clip, kl=kl,
                             kl_beta=cfg.grpo_kl_beta)

    def _preference(self, b: _Batch, pw: Tensor, pl: Tensor, rw: Tensor, rl: Tensor) -> tuple[Tensor, obj.Diagnostics]:
        """The DPO-type objective on the winners' / losers' errors under the policy and under ψ."""
        cfg, B = self.config, b.winners.shape[0]
        if cfg.objective == "gdpo-full":
            M = int(b.m.max())
            def grid(v: Tensor) -> Tensor:
                return v.new_zeros(B, M).index_put((b.owner, b.slot), v)
            mask = torch.zeros(B, M, dtype=torch.bool, device=self.device).index_put(
                (b.owner, b.slot), torch.tensor(True, device=self.device))
            loss, diag = obj.gdpo_full(pw, grid(pl), rw, grid(rl), beta=cfg.beta, T=cfg.T,
                                       loser_mask=None if bool(mask.all()) else mask)
            diag["chance_loss"] = torch.log1p(b.m).mean()
            return loss, diag
        if cfg.objective == "flow-dpo":
            loss, diag = obj.flow_dpo(pw, pl, rw, rl, beta=cfg.beta, T=cfg.T)
            diag["chance_loss"] = torch.tensor(math.log(2.0), device=self.device)
            return loss, diag
        alpha = gamma = None
        if cfg.use_pgr:
            alpha, gamma = obj.pgr_weights(b.sa, b.pc, **cfg.pgr.model_dump())
        loss, diag = obj.phygdpo(pw, pl, rw, rl, m=b.m, alpha=alpha, gamma=gamma, beta=cfg.beta, T=cfg.T)
        g = torch.ones_like(b.m) if gamma is None else gamma
        diag["chance_loss"] = (b.m * g).mean() * math.log(2.0)  # the loss at zero margin
        return loss, diag

    # ------------------------------------------------------------------ one step
    def _step(self, batch: _Batch, lr: float) -> dict:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, diag = self._loss(batch)
        self.accelerator.backward(loss)
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grad_norm = self.accelerator.clip_grad_norm_(self.params, max_norm)
        if isinstance(grad_norm, DTensor):  # FSDP: the norm over all shards
            grad_norm = grad_norm.full_tensor()
        grad_norm = torch.as_tensor(grad_norm)
        keys = [k for k, v in diag.items() if v is not None]
        values = torch.stack([loss.detach().float(), grad_norm.float().to(loss.device),
                              batch.t.mean().float()] + [diag[k].float() for k in keys])
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, "mean")
        loss_v, norm_v, t_mean, *rest = values.tolist()  # the step's one host sync
        reason = None
        if not math.isfinite(loss_v):
            reason = "non-finite loss"
        elif not math.isfinite(norm_v):
            reason = "non-finite gradient"
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        rec = {"loss": loss_v, "grad_norm": norm_v, "lr": lr, "t_mean": t_mean,
               "margin": None, "accuracy": None, "alpha_mean": None, "gamma_mean": None}
        rec.update(zip(keys, rest))
        rec.update(skipped=reason is not None, reason=reason)
        return rec

    # ------------------------------------------------------------------ a round
    def train_round(self, groups: Sequence[GroupSample]) -> TrainSummary:
        """Run ``config.steps`` steps on this round's groups; returns what happened."""
        cfg = self.config
        summary = TrainSummary(round=self.round, groups=len(groups))
        if not groups:
            summary.stop_reason = "no trainable groups"
            self.round += 1
            return summary
        for i, g in enumerate(groups):
            if g.losers.dim() != g.winner.dim() + 1 or g.losers.shape[0] < 1:
                raise ValueError(f"group {i} needs losers shaped (m ≥ 1, *winner.shape)")
            if g.loser_sa.shape[0] != g.losers.shape[0] or g.loser_pc.shape[0] != g.losers.shape[0]:
                raise ValueError(f"group {i} has {g.losers.shape[0]} losers but "
                                 f"{g.loser_sa.shape[0]}/{g.loser_pc.shape[0]} sa/pc scores")
        if cfg.objective == "flow-grpo" and any(g.rollouts is None for g in groups):
            raise ValueError("flow-grpo trains on rollouts of the SDE sampler; a group came without them "
                             "(were its clips generated with the ODE sampler?)")
        if len({(tuple(g.winner.shape), tuple(g.text.shape)) for g in groups}) > 1:
            raise ValueError("all groups of a round must share latent and text shapes")

        gen = self._generator()
        stream = _GroupStream(len(groups), gen)
        if hasattr(self.reference, "refresh"):  # round-start: ψ = the policy as this round begins
            self.reference.refresh()
        snapshot = ([_cpu_clone(p) for p in self.params], _cpu_clone(self.optimizer.state_dict()))
        guard = _DivergenceGuard(cfg)
        was_training = self.transformer.training
        self.model.train()
        start = time.perf_counter()
        try:
            for k in range(cfg.steps):
                t0 = time.perf_counter()
                lr = cosine_lr(k, cfg.steps, cfg.lr, cfg.lr_min, cfg.warmup_steps)
                rec = self._step(self._sample(groups, stream, gen), lr)
                rec = {"round": self.round, "step": k, "global_step": self.global_step, **rec,
                       "seconds": time.perf_counter() - t0}
                chance = rec.pop("chance_loss", None)
                self.global_step += 1
                summary.steps += 1
                summary.history.append(rec)
                if rec["skipped"]:
                    summary.skipped += 1
                    summary.skip_reasons[rec["reason"]] = summary.skip_reasons.get(rec["reason"], 0) + 1
                else:
                    summary.updates += 1
                if self.on_step is not None:
                    self.on_step(rec)
                stop = guard.update(rec["loss"], chance)
                if stop is not None:
                    self._restore(snapshot)
                    summary.restored, summary.stop_reason = True, stop
                    log.warning("round %d: %s; adapter restored to the round's start", self.round, stop)
                    break
        finally:
            self.transformer.train(was_training)
        self.round += 1
        summary.seconds = time.perf_counter() - start
        finite = [h for h in summary.history if math.isfinite(h["loss"])]
        if finite:
            summary.loss_mean = float(np.mean([h["loss"] for h in finite]))
            summary.loss_last = finite[-1]["loss"]
            for key in ("margin", "accuracy"):
                vals = [h[key] for h in finite if h[key] is not None]
                setattr(summary, f"{key}_mean", float(np.mean(vals)) if vals else None)
        return summary

    def _restore(self, snapshot) -> None:
        params, opt_state = snapshot
        with torch.no_grad():
            for p, saved in zip(self.params, params):
                p.copy_(saved)
        self.optimizer.load_state_dict(opt_state)

    # ------------------------------------------------------------------ persistence
    def lora_state(self) -> dict[str, Tensor]:
        """The LoRA weights as full tensors (keys ``blocks.0.attn1.to_q.lora_A.weight``).

        Under FSDP this gathers every shard: a collective that all processes must call.
        """
        if self.sharded:
            _reshard(self.transformer)
        return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach()
                for k, v in lora_state_dict(self.transformer).items()}

    def save(self, directory: str | Path) -> Path:
        """Adapter (diffusers LoRA format) + optimizer state and counters, for resuming.

        Every process calls it (a collective under FSDP); the main process writes.
        """
        directory = Path(directory)
        self.accelerator.wait_for_everyone()
        if self.sharded:
            lora = self.lora_state()
        opt = _gather_optimizer_state(self.optimizer)
        if self.accelerator.is_main_process:
            if self.sharded:
                _write_lora(directory, lora, lora_config(self.transformer).to_dict())
            else:
                save_adapter(self.transformer, directory)
            torch.save({"optimizer": opt, "round": self.round, "global_step": self.global_step},
                       directory / STATE_NAME)
            (directory / CONFIG_NAME).write_text(json.dumps(self.config.model_dump(), indent=2))
        self.accelerator.wait_for_everyone()
        return directory

    def load(self, directory: str | Path) -> None:
        """Resume from :meth:`save`: adapter weights, optimizer state, round and step counters.

        Every process reads the same files (under FSDP each keeps its shard of them).
        """
        directory = Path(directory)
        state_path = directory / STATE_NAME
        if not state_path.exists():
            raise FileNotFoundError(f"no trainer state at {state_path} (was it saved by Trainer.save?)")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if self.sharded:
            _reshard(self.transformer)
            _load_sharded_lora(self.transformer, directory)
        else:
            load_adapter(self.transformer, directory)
        _scatter_optimizer_state(self.optimizer, state["optimizer"])
        self.round, self.global_step = int(state["round"]), int(state["global_step"])


# ------------------------------------------------------------------ FSDP helpers
def _shard(transformer: torch.nn.Module) -> None:
    """FSDP2 on a Wan transformer: one unit per block, then the root (embeddings, head).

    ``fully_shard`` keeps each process's slice of the weights it is given, so every process must
    hold the same weights first: the base comes from the same checkpoint everywhere, and the
    freshly initialised LoRA is broadcast from process 0 to make sure.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    with torch.no_grad():
        for p in lora_parameters(transformer):
            dist.broadcast(p.data, src=0)
    for block in transformer.blocks:
        fully_shard(block)
    # FSDP2 leaves the root unsharded after its forward by default (it expects a backward next);
    # generation never runs one, so ask for the reshard explicitly.
    fully_shard(transformer, reshard_after_forward=True)


def _reshard(model: torch.nn.Module) -> None:
    """Put every FSDP unit back into its sharded state (state-dict work expects shards)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def _gather_optimizer_state(optimizer) -> dict:
    """``optimizer.state_dict()`` with every FSDP shard gathered into a full CPU tensor.

    The format is torch's own (state keyed by parameter position), so a state saved with FSDP
    loads without it and the other way round. (torch.distributed.checkpoint's optimizer helpers
    are not used: on an optimizer that has not stepped yet they take a zero-lr step to create
    its state, which advances Adam's step count and changes the first real update.)
    """
    sd = optimizer.state_dict()
    sd["state"] = {i: {k: (v.full_tensor() if isinstance(v, DTensor) else v) for k, v in st.items()}
                   for i, st in sorted(sd["state"].items())}
    return _cpu_clone(sd)


def _scatter_optimizer_state(optimizer, sd: dict) -> None:
    """Load a state from :func:`_gather_optimizer_state`, cutting each tensor to its parameter's
    FSDP shard when the parameter is sharded."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for i, st in sorted(sd["state"].items()):
        p = params[int(i)]
        if isinstance(p, DTensor):
            st = {k: (distribute_tensor(v.to(p.to_local().device), p.device_mesh, p.placements)
                      if torch.is_tensor(v) and v.shape == p.shape and v.dim() > 0 else v) for k, v in st.items()}
        state[i] = st
    optimizer.load_state_dict({**sd, "state": state})


def _write_lora(directory: Path, state: dict[str, Tensor], config: dict) -> None:
    """Write gathered LoRA weights in the same diffusers format as :func:`policy.lora.save_adapter`."""
    from diffusers.loaders import WanLoraLoaderMixin

    directory.mkdir(parents=True, exist_ok=True)
    WanLoraLoaderMixin.save_lora_weights(
        directory, transformer_lora_layers={k: v.cpu().contiguous() for k, v in state.items()},
        transformer_lora_adapter_metadata=config, weight_name=WEIGHT_NAME, safe_serialization=True)


def _load_sharded_lora(model: torch.nn.Module, directory: Path) -> None:
    """Load a saved adapter into a sharded model: each process keeps its shard of every tensor."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state, config = read_adapter(directory)
    own = lora_config(model)
    if config is None or int(config["r"]) != own.r or float(config["lora_alpha"]) != float(own.lora_alpha):
        raise ValueError(f"adapter at {directory} does not match the model's LoRA (rank {own.r}, "
                         f"alpha {own.lora_alpha})")
    names = {n.replace(f".{ADAPTER_NAME}.", "."): n for n, _ in lora_named_parameters(model)}
    if set(names) != set(state):
        extra, missing = sorted(set(state) - set(names)), sorted(set(names) - set(state))
        raise ValueError(f"adapter at {directory} does not match the model's LoRA "
                         f"(unexpected: {extra[:3]}, missing: {missing[:3]})")
    set_model_state_dict(model, {names[k]: v for k, v in state.items()},
                         options=StateDictOptions(full_state_dict=True, strict=False))
