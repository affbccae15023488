"""Every training objective of phyloop, as pure functions of per-sample flow-matching errors
(or, for DiffusionNFT, of the velocities themselves).

This module is the one place where the paper's equations live (PhyGDPO, `papers/phygdpo.txt`
Sec. 2.2; RWR from `papers/ai-feedback-rl-finetuning.txt` Eq. 6; the peer baselines DiffusionNFT,
arXiv 2509.16117, and Flow-GRPO, arXiv 2505.05470). Nothing here touches a model: the trainer
computes errors (velocities, SDE step means), these functions turn them into a loss and diagnostics.

Notation (rectified flow, Eq. 10–12)
    x_t = (1 − t)·x0 + t·x1,  x1 ~ N(0, I),  target velocity u = x1 − x0
    ℓ(x_t, t) = mean over elements of (v(x_t, t, c) − u)²        → :func:`flow_matching_error`
    t²·ℓ, the implied clean clip's error (optional, per-t scale) → :func:`clean_clip_error`
    ℓθ: policy (LoRA on), ℓψ: reference (LoRA off, no grad); w: winner, l_j: j-th loser.
    d_j = (ℓθ^w − ℓψ^w) − (ℓθ^{l_j} − ℓψ^{l_j})

The log-likelihood ratio of one reverse step is −(h²/2ε)·(ℓθ − ℓψ) (Eq. 12), so the paper's
Δ^w − Δ^{l_j} is −d_j up to a positive constant that is absorbed into β. The implicit DPO reward
margin of a (winner, loser) pair is therefore ``margin_j = −β·T·d_j``: positive when the policy
has moved towards the winner relative to the loser, more than the reference did.

How β·T is parameterised
    The paper's sum over T reverse steps becomes the factor T when one timestep is sampled
    (Eq. 6). ``beta`` and ``T`` are kept separate to mirror the equations, but only their product
    matters. Because ℓ is a MEAN over elements (so that the scale does not depend on the clip
    size), its differences between policy and reference are small (1e-4 … 1e-3), and β·T must be
    large for the sigmoid to leave its linear regime. Defaults: T = 1000 (the paper's step count)
    and β = 2.5, i.e. β·T = 2500 — the effective value Diffusion-DPO uses with mean-squared errors
    (β = 5000 times its 0.5 factor).

Diagnostics
    Every objective returns ``(loss, diag)`` where ``diag`` maps names to detached 0-d tensors
    (or ``None`` where a quantity does not exist for the objective, e.g. no reference for SFT):
    ``margin`` (mean implicit reward margin), ``accuracy`` (fraction of pairs with margin > 0),
    ``saturated`` (fraction of pairs whose margin is beyond the sigmoid's linear range,
    ``|margin| > SATURATED_MARGIN``: there −log σ either no longer moves or is a straight line, so
    the pair's gradient no longer depends on how far it is), ``alpha_mean`` and ``gamma_mean``
    (the PGR weights used; 1 where unweighted).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Objective = Literal["phygdpo", "gdpo-full", "flow-dpo", "rwr", "sft", "diffusion-nft", "flow-grpo"]
OBJECTIVES: tuple[str, ...] = ("phygdpo", "gdpo-full", "flow-dpo", "rwr", "sft", "diffusion-nft", "flow-grpo")
#: objectives that compare against the reference ψ (and so need the LoRA-off pass); for
#: diffusion-nft ψ is the old policy v_old, the policy that sampled the round; flow-grpo's KL term
NEEDS_REFERENCE: frozenset[str] = frozenset({"phygdpo", "gdpo-full", "flow-dpo", "diffusion-nft", "flow-grpo"})

DEFAULT_BETA = 2.5
DEFAULT_T = 1000.0

Diagnostics = dict[str, Tensor | None]
#: |implicit reward margin| beyond which a pair counts as saturated: σ(−4) = 0.018, so the logistic
#: loss's gradient weight σ(−z) is within 2 % of 0 (z > 4) or of 1 (z < −4)
SATURATED_MARGIN = 4.0


def flow_matching_error(v_pred: Tensor, x0: Tensor, x1: Tensor) -> Tensor:
    """Per-sample mean squared velocity error ``mean((v − (x1 − x0))²)`` → shape ``(B,)``.

    Computed in float32 whatever the prediction's dtype (bf16 under autocast), since DPO losses
    depend on small differences between these errors.
    """
    target = (x1 - x0).float()
    return (v_pred.float() - target).pow(2).flatten(1).mean(dim=1)


def clean_clip_error(velocity_error: Tensor, t: Tensor) -> Tensor:
    """The error of the implied clean clip, ``mean((x̂0 − x0)²) = t²·ℓ``: ``x0 = x_t − t·u`` and
    ``x̂0 = x_t − t·v``, so ``x̂0 − x0 = −t·(v − u)``.

    A per-t normalisation of :func:`flow_matching_error`: the velocity error of a clean-clip
    predictor is its clip error over t², so near t = 0 it explodes (≈ 33 at t = 0.02 against 0.3 at
    t = 0.5–0.9 on the built-in base) and the few low-t draws of a batch decide every step. On the
    clip scale each t counts by how wrong the clip is, and the layout times (t → 1), where the
    prompt decides what appears, keep their full weight.
    """
    return t.to(velocity_error).pow(2) * velocity_error


def pgr_weights(
    sa: Tensor | float,
    pc: Tensor | float,
    alpha_min: float = 0.5,
    k_alpha: float = 5.0,
    b_alpha: float = 0.5,
    lam: float = 0.6,
    k_gamma: float = 2.0,
    b_gamma: float = 0.4,
) -> tuple[Tensor, Tensor]:
    """Physics-guided rewarding (Eq. 9): per-loser sharpness α_j and weight γ_j.

    ``v_j = 1 − (sa_j + pc_j)/2`` is how badly loser j does (0 = perfect, 1 = worst).
    ``α_j = α_min + (1 − α_min)·σ(k_α(v_j − b_α))`` ∈ (α_min, 1): worse losers get a sharper
    comparison. ``γ_j = (1 + λ·σ(k_γ(v_j − b_γ)))/α_min``: worse losers weigh more. Since
    ``γ_j ≥ 1/α_min ≥ 1/α_j``, Ineq. 7 holds and Eq. 13 upper-bounds the groupwise loss (Eq. 6).
    """
    if not 0.0 < alpha_min <= 1.0:
        raise ValueError(f"alpha_min must be in (0, 1], got {alpha_min}")
    sa = torch.as_tensor(sa)
    sa = sa if sa.is_floating_point() else sa.float()
    pc = torch.as_tensor(pc, dtype=sa.dtype, device=sa.device)
    v = 1.0 - (sa + pc) / 2.0
    alpha = alpha_min + (1.0 - alpha_min) * torch.sigmoid(k_alpha * (v - b_alpha))
    gamma = (1.0 + lam * torch.sigmoid(k_gamma * (v - b_gamma))) / alpha_min
    return alpha, gamma


def _pair_difference(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor) -> Tensor:
    """d = (ℓθ^w − ℓψ^w) − (ℓθ^l − ℓψ^l); broadcasts a ``(B,)`` winner against ``(B, m)`` losers."""
    if policy_l.dim() == policy_w.dim() + 1:
        policy_w, ref_w = policy_w.unsqueeze(-1), ref_w.unsqueeze(-1)
    return (policy_w - ref_w) - (policy_l - ref_l)


def saturated_share(margin: Tensor) -> Tensor:
    """Fraction of pairs with ``|margin| > SATURATED_MARGIN`` (see the module's Diagnostics)."""
    return (margin.abs() > SATURATED_MARGIN).float().mean()


def phygdpo(
    policy_w: Tensor,
    policy_l: Tensor,
    ref_w: Tensor,
    ref_l: Tensor,
    *,
    m: Tensor | int,
    alpha: Tensor | None = None,
    gamma: Tensor | None = None,
    beta: float = DEFAULT_BETA,
    T: float = DEFAULT_T,
) -> tuple[Tensor, Diagnostics]:
    """PhyGDPO, Eq. 13: ``E[ −m·γ_j·log σ(−α_j·β·T·d_j) ]`` with one sampled loser j per group.

    Inputs are ``(B,)`` errors of each group's winner and of its one sampled loser (same noise and
    timestep). ``m`` is the group's number of losers (int or ``(B,)``): sampling j uniformly and
    multiplying by m makes the expectation equal the sum over all m losers of Eq. 8.
    ``alpha``/``gamma`` are the sampled loser's PGR weights (:func:`pgr_weights`); ``None``
    means α = γ = 1 — PGR switched off (the ablation), which is m × :func:`flow_dpo`.
    """
    d = _pair_difference(policy_w, policy_l, ref_w, ref_l)
    a = torch.ones_like(d) if alpha is None else alpha.to(d)
    g = torch.ones_like(d) if gamma is None else gamma.to(d)
    m = torch.as_tensor(m, dtype=d.dtype, device=d.device)
    # −log σ(z) = softplus(−z), computed without overflow for large |z|
    loss = (m * g * F.softplus(a * beta * T * d)).mean()
    margin = -beta * T * d.detach()
    diag: Diagnostics = {
        "margin": margin.mean(),
        "accuracy": (margin > 0).float().mean(),
        "saturated": saturated_share(margin),
        "alpha_mean": a.detach().mean(),
        "gamma_mean": g.detach().mean(),
    }
    return loss, diag


def gdpo_full(
    policy_w: Tensor,
    policy_l: Tensor,
    ref_w: Tensor,
    ref_l: Tensor,
    *,
    beta: float = DEFAULT_BETA,
    T: float = DEFAULT_T,
    loser_mask: Tensor | None = None,
) -> tuple[Tensor, Diagnostics]:
    """Groupwise Plackett–Luce DPO at one timestep, Eq. 6: ``log(1 + Σ_j exp(β·T·d_j))``.

    ``policy_w``/``ref_w`` are ``(B,)``; ``policy_l``/``ref_l`` are ``(B, m)`` — all m losers of
    each group, sharing the winner's noise and timestep. The exponent ``β·T·(Δ^{l_j} − Δ^w)`` of
    Eq. 6 equals ``β·T·d_j`` in flow terms (see module docstring). Computed as a logsumexp over
    ``[0, x_1, …, x_m]`` so large exponents cannot overflow. ``loser_mask`` (bool ``(B, m)``)
    marks real entries when groups have different m (padding is excluded from the sum).
    """
    d = _pair_difference(policy_w, policy_l, ref_w, ref_l)
    x = beta * T * d
    if loser_mask is not None:
        x = x.masked_fill(~loser_mask, float("-inf"))
    logits = torch.cat([torch.zeros_like(x[:, :1]), x], dim=1)
    loss = torch.logsumexp(logits, dim=1).mean()
    margin = -beta * T * d.detach()
    if loser_mask is not None:
        margin = margin[loser_mask]
    diag: Diagnostics = {
        "margin": margin.mean(),
        "accuracy": (margin > 0).float().mean(),
        "saturated": saturated_share(margin),
        "alpha_mean": torch.ones((), device=d.device),
        "gamma_mean": torch.ones((), device=d.device),
    }
    return loss, diag


def flow_dpo(
    policy_w: Tensor,
    policy_l: Tensor,
    ref_w: Tensor,
    ref_l: Tensor,
    *,
    beta: float = DEFAULT_BETA,
    T: float = DEFAULT_T,
) -> tuple[Tensor, Diagnostics]:
    """Pairwise Bradley–Terry Diffusion-DPO on velocities: ``−log σ(−β·T·d)`` (winner vs one loser)."""
    d = _pair_difference(policy_w, policy_l, ref_w, ref_l)
    loss = F.softplus(beta * T * d).mean()
    margin = -beta * T * d.detach()
    diag: Diagnostics = {
        "margin": margin.mean(),
        "accuracy": (margin > 0).float().mean(),
        "saturated": saturated_share(margin),
        "alpha_mean": torch.ones((), device=d.device),
        "gamma_mean": torch.ones((), device=d.device),
    }
    return loss, diag


RwrWeighting = Literal["linear", "exp", "threshold"]


def rwr_weights(reward: Tensor, weighting: RwrWeighting = "linear", tau: float = 1.0,
                threshold: float = 0.5) -> Tensor:
    """Per-sample weights of reward-weighted regression from rewards in [0, 1].

    - ``linear``: w = r — the practical RWR objective, AI-feedback paper Eq. 6, which replaces the
      exponential transform of the E-step by the identity and drops the partition function.
    - ``exp``: w = exp(r/τ) / mean_batch(exp(r/τ)) — the E-step's exp(β⁻¹r)/Z(c) of its Eq. 5,
      with Z estimated by the batch mean (self-normalised, mean weight 1).
    - ``threshold``: w = 1[r ≥ threshold] — the binary accept/reject feedback of that paper
      (train on acceptable videos only), unnormalised like Eq. 6.
    """
    reward = reward.float()
    if weighting == "linear":
        return reward
    if weighting == "exp":
        if tau <= 0:
            raise ValueError(f"rwr tau must be > 0, got {tau}")
        return torch.softmax(reward / tau, dim=0) * reward.numel()
    if weighting == "threshold":
        return (reward >= threshold).float()
    raise ValueError(f"unknown RWR weighting {weighting!r}; expected 'linear', 'exp' or 'threshold'")


def rwr(
    policy_err: Tensor,
    reward: Tensor,
    *,
    weighting: RwrWeighting = "linear",
    tau: float = 1.0,
    threshold: float = 0.5,
) -> tuple[Tensor, Diagnostics]:
    """Reward-weighted flow matching (forward-EM projection, AI-feedback paper Eq. 6).

    ``E[w(r)·ℓθ]`` over every sample in the batch: the winners (reward 1) and the generated
    losers (reward (sa + pc)/2 from the judge); see :func:`rwr_weights` for ``w``. No reference.
    """
    w = rwr_weights(reward, weighting, tau, threshold).to(policy_err)
    loss = (w * policy_err).mean()
    diag: Diagnostics = {"margin": None, "accuracy": None, "alpha_mean": None, "gamma_mean": None,
                         "weight_mean": w.detach().mean()}
    return loss, diag


def winner_anchored(loss: Tensor, policy_w: Tensor, weight: float) -> Tensor:
    """A preference loss plus ``weight · E[ℓθ^w]``: flow matching on the winners beside it.

    DPO-type losses only rank the winner above the loser relative to ψ; both likelihoods may fall
    together (the policy's errors on the winners grow too), which on a video model shows as blurred,
    smeared objects. The anchor keeps the winners' own likelihood up, as iterative RPO adds the
    winner's negative log-likelihood to DPO (Pang et al., 2024). ``weight = 0`` is the plain loss.
    """
    return loss if weight == 0 else loss + weight * policy_w.mean()


def sft(policy_w: Tensor) -> tuple[Tensor, Diagnostics]:
    """Plain flow matching on the winners: ``E[ℓθ^w]``. No reference, no losers."""
    loss = policy_w.mean()
    return loss, {"margin": None, "accuracy": None, "alpha_mean": None, "gamma_mean": None}


# ------------------------------------------------------------------ DiffusionNFT (a peer baseline)
def optimality_probability(reward: Tensor, *, adv_clip: float = 5.0, eps: float = 1e-6) -> Tensor:
    """DiffusionNFT's r ∈ [0, 1] for the samples of ONE group (Zheng et al., 2025, arXiv 2509.16117).

    The group-relative advantage ``A = (R − mean R) / max(std R, eps)`` (population std over the
    group), clipped to ``±adv_clip`` and mapped linearly onto [0, 1]: ``r = ½ + ½·clip(A, ±c)/c``.
    A group whose rewards are all equal gives r = ½ everywhere (no signal), as it should.
    """
    if adv_clip <= 0:
        raise ValueError(f"adv_clip must be positive, got {adv_clip}")
    reward = torch.as_tensor(reward, dtype=torch.float32)
    std = reward.std(unbiased=False) if reward.numel() > 1 else reward.new_zeros(())
    adv = (reward - reward.mean()) / std.clamp(min=eps)
    return 0.5 + 0.5 * adv.clamp(-adv_clip, adv_clip) / adv_clip


def _nft_error(v: Tensor, target: Tensor, t: Tensor, adaptive: bool) -> Tensor:
    """Per-sample error of an implicit policy: the velocity MSE, or (``adaptive``) DiffusionNFT's
    self-normalised clean-clip error ``‖x̂0 − x0‖² / sg(mean|x̂0 − x0|)`` with ``x̂0 − x0 = −t·(v − u)``."""
    diff = (v.float() - target.float()).flatten(1)
    if not adaptive:
        return diff.pow(2).mean(dim=1)
    tt = t.to(diff).view(-1, 1)
    x0_err = tt * diff
    scale = x0_err.detach().abs().mean(dim=1).clamp(min=1e-5)
    return x0_err.pow(2).mean(dim=1) / scale


def diffusion_nft(
    v_theta: Tensor,
    v_old: Tensor,
    target: Tensor,
    t: Tensor,
    r: Tensor,
    *,
    beta: float = 1.0,
    adv_clip: float = 5.0,
    adaptive: bool = True,
) -> tuple[Tensor, Diagnostics]:
    """DiffusionNFT: negative-aware fine-tuning on the forward process.

    With the trained velocity ``v_θ`` and the frozen old policy's ``v_old`` at the same noised
    clip x_t (target velocity ``u = x1 − x0``), the implicit positive and negative policies are

        v⁺ = (1 − β)·v_old + β·v_θ,        v⁻ = (1 + β)·v_old − β·v_θ,

    and the loss is ``(c/β)·E[ r·e(v⁺) + (1 − r)·e(v⁻) ]`` with ``e`` the per-sample error of
    :func:`_nft_error` and ``r`` the optimality probability (:func:`optimality_probability`; 1 for a
    real video). A good sample (r → 1) pulls v⁺ towards it, a bad one (r → 0) pulls v⁻ towards it,
    i.e. pushes v_θ away from it (v⁻ is v_θ mirrored about v_old). At r = ½ the two gradients
    cancel where v_θ = v_old and otherwise pull v_θ back to v_old: an implicit trust region. The factor c/β (c = ``adv_clip``) undoes the 1/c
    of r's mapping and the β of the parameterisation, so the gradient's scale does not depend on them.
    No likelihood, no sampler trajectory: only clean clips, any sampler.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    v_old = v_old.detach().float()
    v_theta = v_theta.float()
    r = r.to(v_theta)
    pos = _nft_error((1.0 - beta) * v_old + beta * v_theta, target, t, adaptive)
    neg = _nft_error((1.0 + beta) * v_old - beta * v_theta, target, t, adaptive)
    loss = adv_clip / beta * (r * pos + (1.0 - r) * neg).mean()
    diag: Diagnostics = {"margin": None, "accuracy": None, "alpha_mean": None, "gamma_mean": None,
                         "r_mean": r.detach().mean(), "positive_error": pos.detach().mean(),
                         "negative_error": neg.detach().mean()}
    return loss, diag


# ------------------------------------------------------------------ Flow-GRPO (a peer baseline)
def sde_step(x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, *, noise_level: float,
             sigma_cap: float) -> tuple[Tensor, Tensor]:
    """Flow-GRPO's ODE-to-SDE conversion (Liu et al., 2025, arXiv 2505.05470, Eq. 8–9): the mean and
    std of ``x_{σ'} | x_σ`` for one Euler–Maruyama step from noise level σ down to σ' < σ.

    With x_σ = (1 − σ)·x0 + σ·ε the score is −(x + (1 − σ)·v)/σ, and the reverse-time SDE with
    diffusion s_σ = a·√(σ/(1 − σ)) has the same marginals as the ODE dx = v dσ:

        mean = x + [v + s²/(2σ)·(x + (1 − σ)·v)]·Δ,   std = s·√(−Δ),   Δ = σ' − σ < 0.

    ``a`` is ``noise_level``; s is infinite at σ = 1, so σ is capped at ``sigma_cap`` (the largest
    level below 1 of the schedule) inside the square root, as the authors do. Tensors broadcast
    over the batch: ``sigma`` and ``sigma_next`` are ``(B,)``.
    """
    shape = (-1, *([1] * (x.dim() - 1)))
    sig = sigma.to(torch.float32).reshape(shape)
    nxt = sigma_next.to(torch.float32).reshape(shape)
    dt = nxt - sig
    s = noise_level * torch.sqrt(sig / (1.0 - sig.clamp(max=sigma_cap)))
    x, v = x.float(), v.float()
    mean = x + (v + s.pow(2) / (2.0 * sig) * (x + (1.0 - sig) * v)) * dt
    return mean, s * torch.sqrt(-dt)


def gaussian_log_prob(x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Per-sample log N(x_next; mean, std²), averaged over elements (as Flow-GRPO does: the ratio's
    scale then does not depend on the clip size) → ``(B,)``."""
    z = (x_next.float() - mean) / std
    lp = -0.5 * z.pow(2) - torch.log(std) - 0.5 * math.log(2.0 * math.pi)
    return lp.flatten(1).mean(dim=1)


def group_advantages(reward: Tensor, *, adv_clip: float = 5.0, eps: float = 1e-4) -> Tensor:
    """GRPO's group-relative advantage of ONE group, ``(R − mean R)/(std R + eps)`` (population std),
    clipped to ``±adv_clip``."""
    reward = torch.as_tensor(reward, dtype=torch.float32)
    std = reward.std(unbiased=False) if reward.numel() > 1 else reward.new_zeros(())
    return ((reward - reward.mean()) / (std + eps)).clamp(-adv_clip, adv_clip)


def sde_kl(mean: Tensor, mean_ref: Tensor, std: Tensor) -> Tensor:
    """KL between the policy's and the reference's Gaussian steps (same std), averaged over elements:
    ``mean((μθ − μψ)²) / (2·std²)`` → ``(B,)``. This is the exact KL of the step; flow_grpo's code
    divides by the diffusion's s² without the step's |Δ|, so its β equals this β·|Δ|."""
    return ((mean.float() - mean_ref.float()).pow(2).flatten(1).mean(dim=1)
            / (2.0 * std.float().flatten(1).mean(dim=1).pow(2)))


def flow_grpo(log_prob: Tensor, old_log_prob: Tensor, advantage: Tensor, *, clip_range: float,
              kl: Tensor | None = None, kl_beta: float = 0.0) -> tuple[Tensor, Diagnostics]:
    """The clipped policy-ratio loss of GRPO on denoising steps, ``E[max(−A·ρ, −A·clip(ρ, 1 ± ε))]``
    with ``ρ = exp(log πθ − log π_old)`` of the stored step, plus ``kl_beta·E[KL(πθ‖πψ)]``."""
    ratio = torch.exp(log_prob - old_log_prob.to(log_prob))
    advantage = advantage.to(log_prob)
    unclipped = -advantage * ratio
    clipped = -advantage * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    diag: Diagnostics = {"margin": None, "accuracy": None, "alpha_mean": None, "gamma_mean": None,
                         "ratio_mean": ratio.detach().mean(),
                         "clip_fraction": ((ratio.detach() - 1.0).abs() > clip_range).float().mean(),
                         "kl": None}
    if kl is not None:
        diag["kl"] = kl.detach().mean()
        if kl_beta:
            loss = loss + kl_beta * kl.mean()
    return loss, diag


# ------------------------------------------------------------------ PhyPrompt: the refiner's reward
def curriculum_weights(progress: float, start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    """PhyPrompt's dynamic reward curriculum (``papers/phyprompt.txt``): the weights (w_sa, w_pc)
    of semantic adherence and physical commonsense, moved linearly from ``start`` to ``end`` as
    training ``progress`` goes from 0 to 1 (clamped): semantic fidelity first, physics progressively."""
    p = min(1.0, max(0.0, float(progress)))
    return (start[0] + p * (end[0] - start[0]), start[1] + p * (end[1] - start[1]))


def refiner_reward(sa: Tensor, pc: Tensor, valid: Tensor, *, w_sa: float, w_pc: float, w_format: float) -> Tensor:
    """A rewrite's GRPO reward: ``valid·(w_sa·sa + w_pc·pc + w_format)``, where ``sa`` and ``pc``
    score the clip rendered from the rewrite against the prompt *as written* and ``valid`` (0/1) says
    the completion has an answer that does not contradict the prompt (an invalid one earns 0)."""
    return valid * (w_sa * sa + w_pc * pc + w_format)
