"""The paper's equations, checked against numbers worked out by hand.

σ(z) = 1/(1 + e^{−z}); softplus(z) = log(1 + e^z) = −log σ(−z). Errors are given in float64 so
the small differences DPO relies on are exact.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.objectives import (diffusion_nft, flow_dpo, flow_grpo, flow_matching_error, gaussian_log_prob, gdpo_full,
                               group_advantages, optimality_probability, pgr_weights, phygdpo, rwr, rwr_weights,
                               sde_kl, sde_step, sft)

f64 = lambda *x: torch.tensor(x, dtype=torch.float64)  # noqa: E731


@pytest.mark.parametrize("sa, pc, alpha, gamma", [
    # v = 1 − (1+1)/2 = 0: α = 0.5 + 0.5·σ(5·(0−0.5)) = 0.5 + 0.5·σ(−2.5) = 0.5 + 0.5·0.0758582 = 0.5379291
    #                      γ = (1 + 0.6·σ(2·(0−0.4)))/0.5 = 2·(1 + 0.6·σ(−0.8)) = 2·(1 + 0.6·0.3100255) = 2.3720306
    (1.0, 1.0, 0.5379290900, 2.3720306226),
    # v = 0.5: α = 0.5 + 0.5·σ(0) = 0.75;  γ = 2·(1 + 0.6·σ(0.2)) = 2·(1 + 0.6·0.5498340) = 2.6598008
    (0.5, 0.5, 0.75, 2.6598007968),
    # v = 1: α = 0.5 + 0.5·σ(2.5) = 0.5 + 0.5·0.9241418 = 0.9620709;  γ = 2·(1 + 0.6·σ(1.2)) = 2.9222297
    (0.0, 0.0, 0.9620709100, 2.9222297402),
])
def test_pgr_weights_at_paper_defaults(sa, pc, alpha, gamma):
    a, g = pgr_weights(f64(sa), f64(pc))
    assert a.item() == pytest.approx(alpha, rel=1e-9)
    assert g.item() == pytest.approx(gamma, rel=1e-9)


def test_pgr_worse_losers_weigh_more_and_bound_condition_holds():
    sa = torch.linspace(0, 1, 11, dtype=torch.float64)
    a, g = pgr_weights(sa, sa)
    assert torch.all(a[:-1] > a[1:]) and torch.all(g[:-1] > g[1:])  # lower scores → larger α, γ
    assert torch.all((a > 0.5) & (a <= 1)) and torch.all(g >= 1 / a)  # Ineq. 7's conditions


def test_pgr_rejects_bad_alpha_min():
    with pytest.raises(ValueError, match="alpha_min"):
        pgr_weights(0.5, 0.5, alpha_min=0.0)


# One group: ℓθ^w = 0.1000, ℓψ^w = 0.1002, ℓθ^l = 0.2003, ℓψ^l = 0.2000
# d = (0.1000 − 0.1002) − (0.2003 − 0.2000) = −0.0002 − 0.0003 = −0.0005; β·T = 2.5·1000 = 2500
# β·T·d = −1.25, so the implicit reward margin is +1.25 (the policy already prefers the winner).
PW, RW, PL, RL = f64(0.1000), f64(0.1002), f64(0.2003), f64(0.2000)


def test_phygdpo_hand_example():
    # loser with sa = pc = 0.5 → α = 0.75, γ = 2.6598008; m = 4 losers in the group
    # loss = m·γ·softplus(α·β·T·d) = 4 · 2.6598008 · softplus(−0.9375) = 10.639203 · 0.3304582 = 3.5158120
    alpha, gamma = pgr_weights(f64(0.5), f64(0.5))
    loss, diag = phygdpo(PW, PL, RW, RL, m=4, alpha=alpha, gamma=gamma, beta=2.5, T=1000)
    assert loss.item() == pytest.approx(3.5158120155, rel=1e-8)
    assert diag["margin"].item() == pytest.approx(1.25, rel=1e-8)
    assert diag["accuracy"].item() == 1.0
    assert diag["alpha_mean"].item() == 0.75
    assert diag["gamma_mean"].item() == pytest.approx(2.6598008, rel=1e-7)


def test_flow_dpo_hand_example():
    # −log σ(−β·T·d) = softplus(β·T·d) = softplus(−1.25) = log(1 + 0.2865048) = 0.2519291
    loss, diag = flow_dpo(PW, PL, RW, RL, beta=2.5, T=1000)
    assert loss.item() == pytest.approx(0.2519290813, rel=1e-8)
    assert diag["margin"].item() == pytest.approx(1.25) and diag["accuracy"].item() == 1.0


def test_gdpo_full_hand_example():
    # two losers with d = −0.0005 and +0.0002 → x = β·T·d = (−1.25, +0.5)
    # loss = log(1 + e^{−1.25} + e^{0.5}) = log(1 + 0.2865048 + 1.6487213) = log(2.9352261) = 1.0767845
    pw, rw = f64(0.1000), f64(0.1002)
    pl = torch.tensor([[0.2003, 0.2004]], dtype=torch.float64)
    rl = torch.tensor([[0.2000, 0.2008]], dtype=torch.float64)  # d_2 = −0.0002 − (−0.0004) = 0.0002
    loss, diag = gdpo_full(pw, pl, rw, rl, beta=2.5, T=1000)
    assert loss.item() == pytest.approx(1.0767844750, rel=1e-8)
    assert diag["margin"].item() == pytest.approx((1.25 - 0.5) / 2)  # margins +1.25 and −0.5
    assert diag["accuracy"].item() == 0.5


def test_gdpo_full_mask_excludes_padding_and_is_overflow_safe():
    pw, rw = f64(0.0, 0.0), f64(0.0, 0.0)
    pl = torch.tensor([[0.0, 0.0], [-1.0, 123.0]], dtype=torch.float64)  # group 2 has one real loser
    rl = torch.zeros(2, 2, dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    loss, diag = gdpo_full(pw, pl, rw, rl, beta=2.5, T=1000, loser_mask=mask)
    # group 1: x = (0, 0) → log 3; group 2: x = 2500 → logsumexp(0, 2500) = 2500 + log(1 + e^{−2500})
    assert loss.item() == pytest.approx((math.log(3) + 2500.0) / 2, rel=1e-12)
    assert diag["accuracy"].item() == pytest.approx(0.0)  # margins 0, 0, −2500: none positive
    assert diag["saturated"].item() == pytest.approx(1 / 3)  # only |−2500| > 4 (the padding is masked out)


def test_saturated_share_counts_margins_beyond_the_linear_range():
    from policy.objectives import SATURATED_MARGIN, saturated_share

    margins = torch.tensor([0.0, 3.9, -3.9, 4.1, -10.0, SATURATED_MARGIN])
    assert saturated_share(margins).item() == pytest.approx(2 / 6)  # 4.1 and −10; exactly 4 is not beyond


def test_phygdpo_without_pgr_is_m_times_flow_dpo():
    g = torch.Generator().manual_seed(0)
    pw, rw, pl, rl = (0.1 + 1e-3 * torch.randn(8, generator=g, dtype=torch.float64) for _ in range(4))
    m = torch.tensor([4.0] * 8, dtype=torch.float64)
    loss_phy, _ = phygdpo(pw, pl, rw, rl, m=m)
    loss_dpo, _ = flow_dpo(pw, pl, rw, rl)
    assert loss_phy.item() == pytest.approx(4 * loss_dpo.item(), rel=1e-12)


def test_phygdpo_gradient_direction():
    # lowering the policy's winner error / raising its loser error must lower the loss
    pw, pl = PW.clone().requires_grad_(), PL.clone().requires_grad_()
    loss, _ = phygdpo(pw, pl, RW, RL, m=4)
    loss.backward()
    assert pw.grad.item() > 0 and pl.grad.item() < 0


def test_phygdpo_upper_bounds_gdpo_full_over_all_losers():
    # Eq. 8: Σ_j γ_j·softplus(α_j·x_j) ≥ log(1 + Σ_j e^{x_j}); Σ_j = m·E_j of the sampled form
    g = torch.Generator().manual_seed(1)
    pw, rw = (0.1 + 1e-3 * torch.randn(5, generator=g, dtype=torch.float64) for _ in range(2))
    pl, rl = (0.1 + 1e-3 * torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(2))
    sa, pc = torch.rand(5, 4, generator=g, dtype=torch.float64), torch.rand(5, 4, generator=g, dtype=torch.float64)
    alpha, gamma = pgr_weights(sa, pc)
    full, _ = gdpo_full(pw, pl, rw, rl)
    per_j = [phygdpo(pw, pl[:, j], rw, rl[:, j], m=4, alpha=alpha[:, j], gamma=gamma[:, j])[0] for j in range(4)]
    assert torch.stack(per_j).mean().item() >= full.item()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(-60, 60), st.floats(1e-3, 1.0), st.floats(0.0, 5.0)), min_size=1, max_size=8))
def test_inequality_7_in_log_space(terms):
    """1 + Σ e^{x_j} ≤ Π (1 + e^{α_j x_j})^{γ_j} for 0 < α_j ≤ 1, γ_j ≥ 1/α_j."""
    x = torch.tensor([t[0] for t in terms], dtype=torch.float64)
    a = torch.tensor([t[1] for t in terms], dtype=torch.float64)
    gamma = 1.0 / a + torch.tensor([t[2] for t in terms], dtype=torch.float64)
    lhs = torch.logsumexp(torch.cat([torch.zeros(1, dtype=torch.float64), x]), 0)
    rhs = (gamma * torch.nn.functional.softplus(a * x)).sum()
    assert lhs.item() <= rhs.item() * (1 + 1e-12) + 1e-12


def test_rwr_weightings():
    err = f64(0.5, 1.0, 2.0)
    reward = f64(1.0, 0.5, 0.0)  # a winner and two losers with (sa + pc)/2 = 0.5 and 0
    # linear (AI-feedback Eq. 6): mean(r·ℓ) = (1·0.5 + 0.5·1 + 0·2)/3 = 1/3
    assert rwr(err, reward)[0].item() == pytest.approx(1 / 3)
    # exp, τ = 1: e^r = (2.7182818, 1.6487213, 1), mean 1.7890010 → w = (1.5194412, 0.9215877, 0.5589712)
    # mean(w·ℓ) = (0.7597206 + 0.9215877 + 1.1179423)/3 = 0.9330835
    loss, diag = rwr(err, reward, weighting="exp", tau=1.0)
    assert loss.item() == pytest.approx(0.9330835277, rel=1e-8)
    assert diag["weight_mean"].item() == pytest.approx(1.0)
    # threshold 0.5: w = (1, 1, 0) → (0.5 + 1.0)/3 = 0.5
    assert rwr(err, reward, weighting="threshold", threshold=0.5)[0].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="weighting"):
        rwr_weights(reward, "softmax")


def test_sft_and_flow_matching_error():
    x0 = torch.zeros(2, 3, 4, 8, 8)
    x1 = torch.ones(2, 3, 4, 8, 8)
    v = torch.zeros(2, 3, 4, 8, 8)
    v[1] = 1.0  # the exact velocity x1 − x0 for sample 2
    err = flow_matching_error(v.bfloat16(), x0, x1)
    assert err.dtype == torch.float32 and err.tolist() == [1.0, 0.0]
    loss, diag = sft(err)
    assert loss.item() == 0.5 and diag["margin"] is None


def test_winner_anchor_adds_the_winners_flow_matching_error():
    from policy.objectives import winner_anchored

    loss = torch.tensor(0.7, dtype=torch.float64)
    pw = f64(0.2, 0.4)
    assert winner_anchored(loss, pw, 0.0) is loss
    assert winner_anchored(loss, pw, 0.5).item() == pytest.approx(0.7 + 0.5 * 0.3)


def test_clean_clip_error_is_t_squared_times_the_velocity_error():
    """x̂0 = x_t − t·v: a velocity error Δ is a clip error t·Δ, so the squared error scales by t²."""
    from policy.objectives import clean_clip_error

    x0, x1 = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    t = torch.tensor([0.1, 0.5, 1.0])
    v = torch.full((3, 2, 2), 3.0)  # velocity error 2 everywhere: ℓ = 4
    ell = flow_matching_error(v, x0, x1)
    x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * x1
    x0_hat = x_t - t.view(-1, 1, 1) * v
    direct = (x0_hat - x0).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(clean_clip_error(ell, t), direct)
    assert clean_clip_error(ell, t).tolist() == pytest.approx([0.04, 1.0, 4.0])


# ------------------------------------------------------------------ DiffusionNFT
def test_optimality_probability_by_hand():
    # rewards (0, 1): mean ½, population std ½ → A = (−1, 1); c = 5 → r = ½ ± ½·(1/5) = (0.4, 0.6)
    assert torch.allclose(optimality_probability(f64(0.0, 1.0), adv_clip=5.0), torch.tensor([0.4, 0.6]))
    assert torch.allclose(optimality_probability(f64(0.0, 1.0), adv_clip=1.0), torch.tensor([0.0, 1.0]))
    # (0, 0, 0, 1): mean ¼, std √0.1875 = 0.4330127 → A = (−0.5773503, …, 1.7320508); c = 1 clips the 1.73
    r = optimality_probability(f64(0.0, 0.0, 0.0, 1.0), adv_clip=1.0)
    assert torch.allclose(r, torch.tensor([0.2113249, 0.2113249, 0.2113249, 1.0]), atol=1e-6)
    # equal rewards and a lone sample carry no signal
    assert torch.equal(optimality_probability(f64(0.7, 0.7, 0.7)), torch.full((3,), 0.5))
    assert torch.equal(optimality_probability(f64(0.3)), torch.tensor([0.5]))
    with pytest.raises(ValueError):
        optimality_probability(f64(0.0, 1.0), adv_clip=0.0)


def one(x: float) -> torch.Tensor:
    return torch.full((1, 1), x, dtype=torch.float64)


@pytest.mark.parametrize("beta, c, r, expected", [
    # β = 1: v⁺ = v_θ = 1, v⁻ = 2·v_old − v_θ = −1; u = 0.5 → e⁺ = 0.25, e⁻ = 2.25
    (1.0, 1.0, 1.0, 0.25),
    (1.0, 1.0, 0.0, 2.25),
    (1.0, 1.0, 0.5, 1.25),
    # β = ½: v⁺ = ½·0 + ½·1 = 0.5 → e⁺ = 0;  v⁻ = 1.5·0 − 0.5 = −0.5 → e⁻ = 1;  (c/β)·(0.3·0 + 0.7·1) = 2.8
    (0.5, 2.0, 0.3, 2.8),
])
def test_diffusion_nft_by_hand(beta, c, r, expected):
    loss, diag = diffusion_nft(one(1.0), one(0.0), one(0.5), f64(0.5), f64(r), beta=beta, adv_clip=c,
                               adaptive=False)
    assert loss.item() == pytest.approx(expected)
    assert diag["margin"] is None and diag["r_mean"].item() == pytest.approx(r)


def test_diffusion_nft_adaptive_error_by_hand():
    # t = ½, v = 1, u = 0: x̂0 − x0 = −t·(v − u) = −0.5 → ‖·‖² = 0.25 over sg(|·|) = 0.5 → 0.5
    loss, diag = diffusion_nft(one(1.0), one(1.0), one(0.0), f64(0.5), f64(1.0), beta=1.0, adv_clip=1.0)
    assert loss.item() == pytest.approx(0.5) and diag["positive_error"].item() == pytest.approx(0.5)


def test_diffusion_nft_gradients_push_towards_good_and_away_from_bad():
    """At v_θ = v_old: r = 1 descends the flow-matching loss, r = 0 ascends it by the same step,
    r = ½ leaves v_θ where it is; v_old gets no gradient."""
    torch.manual_seed(0)
    v_old, u, t = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(3, 2, 4, dtype=torch.float64), torch.rand(3)
    grads = {}
    for r in (1.0, 0.0, 0.5):
        v = v_old.clone().requires_grad_(True)
        old = v_old.clone().requires_grad_(True)
        diffusion_nft(v, old, u, t, torch.full((3,), r), adaptive=False)[0].backward()
        assert old.grad is None or torch.count_nonzero(old.grad) == 0
        grads[r] = v.grad
    v = v_old.clone().requires_grad_(True)
    flow_matching_error(v, torch.zeros_like(u), u).mean().backward()
    assert torch.allclose(grads[1.0] / grads[1.0].norm(), v.grad / v.grad.norm())
    assert torch.allclose(grads[0.0], -grads[1.0])
    assert torch.allclose(grads[0.5], torch.zeros_like(grads[0.5]))


# ------------------------------------------------------------------ Flow-GRPO
def test_sde_step_by_hand():
    # x = 1, v = 0.5, σ = 0.5 → σ' = 0.25, a = 0.5: s = 0.5·√(0.5/0.5) = 0.5, Δ = −0.25
    # mean = 1 + (0.5 + 0.25/(2·0.5)·(1 + 0.5·0.5))·(−0.25) = 1 − 0.8125·0.25 = 0.796875; std = 0.5·√0.25 = 0.25
    mean, std = sde_step(one(1.0), one(0.5), f64(0.5), f64(0.25), noise_level=0.5, sigma_cap=0.9)
    assert mean.item() == pytest.approx(0.796875) and std.item() == pytest.approx(0.25)
    # σ = 1 is capped inside the root: s = 0.5·√(1/(1 − 0.9)) = 1.5811388, std = s·√0.1 = 0.5
    _, std = sde_step(one(0.0), one(0.0), f64(1.0), f64(0.9), noise_level=0.5, sigma_cap=0.9)
    assert std.item() == pytest.approx(0.5)
    # no noise: the Euler step of the ODE, x + v·Δ
    mean, std = sde_step(one(1.0), one(0.5), f64(0.5), f64(0.25), noise_level=0.0, sigma_cap=0.9)
    assert mean.item() == pytest.approx(1.0 - 0.125) and std.item() == 0.0


def test_sde_sampler_keeps_the_odes_marginals():
    """Gaussian data x0 ~ N(0, 1) has the exact velocity v = (2σ − 1)/D·x, D = (1 − σ)² + σ²; from
    pure noise both the ODE and the SDE (a = 0.7) must land on unit variance."""
    g = torch.Generator().manual_seed(0)
    sig = torch.linspace(1.0, 0.0, 201, dtype=torch.float64)
    for a in (0.0, 0.7):
        x = torch.randn(20000, 1, generator=g, dtype=torch.float64)
        for s, s2 in zip(sig[:-1], sig[1:]):
            v = (2 * s - 1) / ((1 - s) ** 2 + s ** 2) * x
            mean, std = sde_step(x, v, s.expand(x.shape[0]), s2.expand(x.shape[0]), noise_level=a,
                                 sigma_cap=float(sig[1]))
            x = (mean + std * torch.randn(x.shape, generator=g, dtype=torch.float64)).double()
        assert x.std().item() == pytest.approx(1.0, abs=0.05), a
        assert abs(x.mean().item()) < 0.03


def test_gaussian_log_prob_and_kl_by_hand():
    # at the mean: −log σ − ½·log 2π; one σ away: −½ more
    lp = gaussian_log_prob(torch.tensor([[0.0, 0.1]]), torch.zeros(1, 2), torch.tensor([[0.1, 0.1]]))
    assert lp.item() == pytest.approx(-math.log(0.1) - 0.5 * math.log(2 * math.pi) - 0.25)
    # means 0.2 apart, std 0.1: 0.04 / (2·0.01) = 2
    assert sde_kl(torch.full((1, 3), 0.2), torch.zeros(1, 3), torch.full((1, 3), 0.1)).item() == pytest.approx(2.0)


def test_group_advantages_by_hand():
    a = group_advantages(f64(0.0, 1.0), eps=0.0)
    assert torch.allclose(a, torch.tensor([-1.0, 1.0]))
    # (0, 0, 0, 1): (1 − ¼)/0.4330127 = 1.7320508 clipped to 1.5; (0 − ¼)/0.4330127 = −0.5773503
    a = group_advantages(f64(0.0, 0.0, 0.0, 1.0), adv_clip=1.5, eps=0.0)
    assert torch.allclose(a, torch.tensor([-0.5773503, -0.5773503, -0.5773503, 1.5]), atol=1e-6)
    assert torch.equal(group_advantages(f64(0.4, 0.4)), torch.zeros(2))


def test_flow_grpo_clipped_ratio_by_hand():
    lp, old = f64(math.log(1.5), math.log(1.5), 0.0), f64(0.0, 0.0, 0.0)
    # A = 1: max(−1.5, −1.2) = −1.2;  A = −1: max(1.5, 1.2) = 1.5;  ρ = 1, A = 2: −2 → mean (−1.2 + 1.5 − 2)/3
    loss, diag = flow_grpo(lp, old, f64(1.0, -1.0, 2.0), clip_range=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 2.0) / 3)
    assert diag["clip_fraction"].item() == pytest.approx(2 / 3) and diag["kl"] is None
    # the clipped sample (A > 0, ρ > 1 + ε) gets no gradient; the others do
    lp = lp.clone().requires_grad_(True)
    flow_grpo(lp, old, f64(1.0, -1.0, 2.0), clip_range=0.2)[0].backward()
    assert lp.grad[0] == 0 and lp.grad[1] != 0 and lp.grad[2] != 0
    loss, diag = flow_grpo(f64(0.0), f64(0.0), f64(1.0), clip_range=0.2, kl=f64(2.0), kl_beta=0.5)
    assert loss.item() == pytest.approx(-1.0 + 1.0) and diag["kl"].item() == 2.0
