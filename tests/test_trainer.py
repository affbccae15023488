"""The trainer on a tiny random WanTransformer3DModel: it learns in the right direction, wires
the objectives exactly, skips non-finite steps, restores on divergence and resumes."""

import copy
import math

import pytest
import torch
from diffusers import WanTransformer3DModel
from pydantic import ValidationError

from policy.base import GroupSample
from policy.lora import lora_named_parameters, reference_mode
from policy.objectives import flow_matching_error
from policy.trainer import (TrainConfig, Trainer, _DivergenceGuard, cosine_lr,
                            sample_timesteps)

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=3,
            out_channels=3, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=1)
SHAPE = (3, 4, 8, 8)


def tiny_transformer(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(**TINY)


def make_groups(n: int = 4, m: int = 3, seed: int = 0, ms: list[int] | None = None) -> list[GroupSample]:
    """Winners: smooth moving blobs; losers: noise — an easy preference to learn."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-1, 1, 8)
    groups = []
    for i, k in enumerate(ms or [m] * n):
        frames = [torch.exp(-((grid[None] - 0.2 * f + 0.3) ** 2 + grid[:, None] ** 2) * 4) for f in range(4)]
        winner = torch.stack(frames)[None].repeat(3, 1, 1, 1) * 2 - 1
        groups.append(GroupSample(text=torch.randn(6, 32, generator=g), winner=winner,
                                  losers=torch.randn(k, *SHAPE, generator=g).clamp(-1, 1),
                                  loser_sa=torch.rand(k, generator=g), loser_pc=torch.rand(k, generator=g)))
    return groups


def config(**kw) -> TrainConfig:
    base = dict(steps=4, groups_per_step=2, lr=1e-3, lr_min=1e-4, lora_rank=4, lora_alpha=4)
    return TrainConfig(**{**base, **kw})


def lora_snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in lora_named_parameters(model)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def mean_pair_difference(model, groups, draws: int = 16, seed: int = 5) -> float:
    """E[(ℓθ^w − ℓψ^w) − (ℓθ^l − ℓψ^l)] over fresh noise and timesteps (negative = learned)."""
    g = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for grp in groups:
        x0 = torch.cat([grp.winner[None].expand(draws, *SHAPE), grp.losers[torch.arange(draws) % len(grp.losers)]])
        noise = torch.randn(draws, *SHAPE, generator=g)
        t = torch.rand(draws, generator=g)
        x1, tt = torch.cat([noise, noise]), torch.cat([t, t])
        x_t = (1 - tt.view(-1, 1, 1, 1, 1)) * x0 + tt.view(-1, 1, 1, 1, 1) * x1
        kw = dict(hidden_states=x_t, timestep=tt * 1000, encoder_hidden_states=grp.text[None].expand(2 * draws, -1, -1),
                  return_dict=False)
        with torch.no_grad():
            pol = flow_matching_error(model(**kw)[0], x0, x1)
            with reference_mode(model):
                ref = flow_matching_error(model(**kw)[0], x0, x1)
        diff = pol - ref
        total += (diff[:draws] - diff[draws:]).sum().item()
        count += draws
    return total / count


def test_phygdpo_moves_the_policy_towards_winners():
    model = tiny_transformer()
    groups = make_groups()
    trainer = Trainer(model, config(steps=25, groups_per_step=4))
    assert mean_pair_difference(model, groups) == 0.0  # B = 0: policy ≡ reference
    base = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    summary = trainer.train_round(groups)
    assert summary.updates == 25 and not summary.restored
    assert mean_pair_difference(model, groups) < 0  # winners' error fell relative to losers'
    assert summary.history[-1]["margin"] > 0 and summary.history[-1]["accuracy"] > 0.5
    assert summary.history[-1]["loss"] < summary.history[0]["loss"]
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if "lora_" not in n)


def test_first_step_losses_are_the_chance_levels():
    """At the start of round 0 the policy equals the reference exactly (d = 0), so each DPO loss
    sits at its zero-margin value: flow-dpo log 2, gdpo-full mean log(1 + m), phygdpo-without-PGR
    mean m·log 2 — this checks the batching/masking of variable-size groups."""
    groups = make_groups(ms=[3, 2])
    first = {}
    for objective, extra in [("flow-dpo", {}), ("gdpo-full", {}), ("phygdpo", {"use_pgr": False})]:
        trainer = Trainer(tiny_transformer(), config(objective=objective, steps=1, **extra))
        first[objective] = trainer.train_round(groups).history[0]
    assert first["flow-dpo"]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert first["gdpo-full"]["loss"] == pytest.approx((math.log(4) + math.log(3)) / 2, rel=1e-6)
    assert first["phygdpo"]["loss"] == pytest.approx((3 + 2) / 2 * math.log(2), rel=1e-6)
    assert first["phygdpo"]["margin"] == 0.0 and first["phygdpo"]["accuracy"] == 0.0


def test_round_start_reference_reopens_every_round_at_chance():
    """With ψ = the round-start policy every round opens at zero margin (the chance-level loss);
    with the LoRA-off base as ψ, a round after training opens away from it."""
    groups = make_groups(ms=[3, 2])
    opening = {}
    for reference in ("lora-switch", "round-start"):
        trainer = Trainer(tiny_transformer(), config(objective="flow-dpo", steps=6, reference=reference))
        trainer.train_round(groups)
        opening[reference] = trainer.train_round(groups).history[0]
    assert opening["round-start"]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert opening["round-start"]["margin"] == 0.0
    assert abs(opening["lora-switch"]["loss"] - math.log(2)) > 1e-3


def test_phygdpo_without_pgr_is_m_times_flow_dpo_on_the_same_draws():
    groups = make_groups(m=4)
    model = tiny_transformer()
    # one warm-up round of flow-dpo makes d ≠ 0; both copies then start round 1 from that adapter
    Trainer(model, config(objective="flow-dpo", steps=3)).train_round(groups)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ta = Trainer(a, config(objective="phygdpo", use_pgr=False, steps=1))
    tb = Trainer(b, config(objective="flow-dpo", steps=1))
    for t in (ta, tb):
        t.round = 1
    ha, hb = ta.train_round(groups).history[0], tb.train_round(groups).history[0]
    assert hb["margin"] != 0.0
    assert ha["loss"] == pytest.approx(4 * hb["loss"], rel=1e-6)
    assert ha["margin"] == pytest.approx(hb["margin"], rel=1e-6)


def test_winner_and_loser_share_noise_and_timestep():
    # with losers identical to the winner, a shared (noise, t) gives identical errors: d = 0 always
    groups = make_groups()
    for g in groups:
        g.losers = g.winner[None].repeat(3, 1, 1, 1, 1)
    summary = Trainer(tiny_transformer(), config(objective="flow-dpo", steps=3)).train_round(groups)
    assert all(h["margin"] == 0.0 for h in summary.history)


def test_non_finite_loss_skips_the_update():
    model = tiny_transformer()
    calls = {"n": 0}

    def poison(module, args, output):  # step 2's policy pass (calls: ref, policy per step)
        calls["n"] += 1
        if calls["n"] == 6:
            return (output[0] * float("nan"),)

    model.register_forward_hook(poison)
    snapshots = []
    trainer = Trainer(model, config(steps=4), on_step=lambda rec: snapshots.append(lora_snapshot(model)))
    summary = trainer.train_round(make_groups())
    skipped = [h for h in summary.history if h["skipped"]]
    assert [h["step"] for h in skipped] == [2] and skipped[0]["reason"] == "non-finite loss"
    assert summary.skipped == 1 and summary.updates == 3 and summary.skip_reasons == {"non-finite loss": 1}
    assert same(snapshots[2], snapshots[1])  # the adapter did not move on the skipped step
    assert not same(snapshots[3], snapshots[2])  # and training went on afterwards
    assert all(torch.isfinite(p).all() for p in snapshots[3].values())


def test_divergence_restores_the_rounds_starting_adapter_and_optimizer():
    model = tiny_transformer()
    trainer = Trainer(model, config(steps=3))
    trainer.train_round(make_groups())
    start = lora_snapshot(model)
    opt_state = copy.deepcopy(trainer.optimizer.state_dict())
    trainer.config = trainer.config.model_copy(update={"guard_max_loss": 1e-9, "guard_patience": 2, "steps": 5})
    summary = trainer.train_round(make_groups(seed=1))
    assert summary.restored and summary.steps == 2 and "loss above" in summary.stop_reason
    assert summary.updates == 2  # it did train …
    assert same(lora_snapshot(model), start)  # … and was put back exactly
    restored = trainer.optimizer.state_dict()["state"]
    assert all(torch.equal(restored[i]["exp_avg"], opt_state["state"][i]["exp_avg"]) for i in restored)


def test_divergence_guard_rules():
    cfg = config(guard_loss_factor=10.0, guard_baseline_steps=2, guard_patience=2, guard_rise_steps=3)
    guard = _DivergenceGuard(cfg)
    # baseline = max(mean(1, 1), chance 2) = 2 → threshold 20; one spike is tolerated
    assert [guard.update(x, chance=2.0) for x in (1.0, 1.0, 25.0, 1.0)] == [None] * 4
    assert guard.update(30.0, 2.0) is None and "above 20" in guard.update(30.0, 2.0)
    guard = _DivergenceGuard(cfg)
    assert [guard.update(x, None) for x in (1.0, 1.1, 1.2)] == [None] * 3
    assert "rose for 3" in guard.update(1.3, None)
    guard = _DivergenceGuard(cfg)
    assert guard.update(math.nan, None) is None and "non-finite" in guard.update(math.inf, None)
    # a loss centred on 0 (flow-grpo) has no scale to be a factor of: only the other rules apply
    guard = _DivergenceGuard(config(guard_loss_factor=10.0, guard_baseline_steps=2, guard_patience=2))
    assert [guard.update(x, None) for x in (-0.5, 0.3, 0.2, 0.4, 0.1)] == [None] * 5
    guard = _DivergenceGuard(config(objective="flow-grpo", guard_loss_factor=10.0, guard_baseline_steps=2,
                                    guard_patience=2))  # even when its first steps happen to average > 0
    assert [guard.update(x, None) for x in (0.01, 0.02, 0.9, 1.2, 0.8)] == [None] * 5


def test_save_and_resume_continue_identically(tmp_path):
    groups = make_groups()
    a = Trainer(tiny_transformer(), config())
    a.train_round(groups)
    a.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"pytorch_lora_weights.safetensors", "trainer_state.pt",
                                                    "train_config.json"}
    b = Trainer(tiny_transformer(), config())
    b.load(tmp_path)
    assert (b.round, b.global_step) == (1, 4) and same(lora_snapshot(b.transformer), lora_snapshot(a.transformer))
    ha, hb = a.train_round(groups).history, b.train_round(groups).history
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    assert same(lora_snapshot(a.transformer), lora_snapshot(b.transformer))


def test_gradient_checkpointing_gives_the_same_step():
    groups = make_groups()
    plain = Trainer(tiny_transformer(), config(steps=2)).train_round(groups).history
    ckpt = Trainer(tiny_transformer(), config(steps=2, gradient_checkpointing=True)).train_round(groups).history
    for p, c in zip(plain, ckpt):
        assert c["loss"] == pytest.approx(p["loss"], rel=1e-5)
        assert c["grad_norm"] == pytest.approx(p["grad_norm"], rel=1e-4)


@pytest.mark.parametrize("objective", ["rwr", "sft", "gdpo-full"])
def test_other_objectives_train(objective):
    model = tiny_transformer()
    trainer = Trainer(model, config(objective=objective, steps=2, reference="full-copy"))
    before = lora_snapshot(model)
    summary = trainer.train_round(make_groups(ms=[3, 2, 4]))
    assert summary.updates == 2 and all(math.isfinite(h["loss"]) for h in summary.history)
    assert not same(lora_snapshot(model), before)


def test_lr_schedule_and_timesteps():
    assert cosine_lr(0, 10, 1e-5, 1e-6) == pytest.approx(1e-5)
    assert cosine_lr(5, 10, 1e-5, 1e-6) == pytest.approx(5.5e-6)  # half-way: (lr + lr_min)/2
    assert cosine_lr(10, 10, 1e-5, 1e-6) == pytest.approx(1e-6)
    assert cosine_lr(0, 10, 1e-5, 1e-6, warmup_steps=4) == pytest.approx(2e-6)  # (0+1)/(4+1)·lr
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(4000, config(timestep_sampling="logit-normal"), g)
    shifted = sample_timesteps(4000, config(timestep_sampling="logit-normal", timestep_shift=3.0), g)
    assert 0 < t.min() and t.max() < 1 and abs(t.mean().item() - 0.5) < 0.02
    assert shifted.mean() > t.mean() + 0.1  # shift > 1 moves training towards noise, as Wan's sampler


def test_config_is_strict_and_empty_rounds_are_reported():
    with pytest.raises(ValidationError):
        TrainConfig(objective="phygdpo", learning_rate=1e-5)
    with pytest.raises(ValidationError, match="lr_min"):
        TrainConfig(lr=1e-6, lr_min=1e-5)
    summary = Trainer(tiny_transformer(), config()).train_round([])
    assert summary.steps == 0 and summary.stop_reason == "no trainable groups"


# ---------------------------------------------------------------- winner policy (policy/groups.py)
from policy.groups import build_group_sample, plan_group, plan_groups  # noqa: E402

# (sa, pc, accept) per generation; scores (sa+pc)/2 = 0.45, 0.85, 0.70, unjudged, 0.85 (pc lower)
CANDS = [(0.4, 0.5, False), (0.9, 0.8, True), (0.7, 0.7, True), (None, None, None), (1.0, 0.7, True)]


def test_real_video_wins_and_all_judged_generations_lose():
    plan = plan_group(CANDS, has_real=True, policy="real-else-best")
    assert plan.winner == "real" and plan.losers == (0, 1, 2, 4)  # the unjudged one is never used


def test_best_accepted_generation_wins_only_over_lower_scores():
    plan = plan_group(CANDS, has_real=False, policy="real-else-best")
    # 1 and 4 tie at 0.85; the tie goes to the better physics score (pc 0.8 > 0.7); 4 is a tie, not a loser
    assert (plan.winner, plan.winner_index, plan.losers) == ("generated", 1, (0, 2))
    assert plan_group(CANDS, has_real=True, policy="best-accepted").winner == "generated"


def test_groups_without_an_acceptable_winner_are_skipped_with_a_reason():
    rejected = [(0.9, 0.9, False), (0.2, 0.1, False)]
    plans, skipped = plan_groups([(False, rejected), (False, CANDS), (False, [(0.5, 0.5, True)] * 2),
                                  (False, CANDS)], policy="real")
    assert not any(p.trainable for p in plans) and skipped == {"no real video": 4}
    plans, skipped = plan_groups([(False, rejected), (False, [(0.5, 0.5, True)] * 2), (False, CANDS)])
    assert [p.trainable for p in plans] == [False, False, True]
    assert skipped == {"no accepted generation to use as winner": 1, "no generation scored below the winner": 1}
    with pytest.raises(ValueError, match="winner policy"):
        plan_group(CANDS, has_real=False, policy="best")


def test_build_group_sample_packs_the_plan():
    generated = torch.arange(5.0).view(5, 1, 1, 1, 1).expand(5, *SHAPE)
    plan = plan_group(CANDS, has_real=False)
    sample = build_group_sample(plan, text=torch.zeros(6, 32), generated=generated, candidates=CANDS)
    assert torch.equal(sample.winner, generated[1]) and torch.equal(sample.losers, generated[[0, 2]])
    assert sample.loser_sa.tolist() == pytest.approx([0.4, 0.7]) and sample.loser_pc.tolist() == pytest.approx([0.5, 0.7])
    real_plan = plan_group(CANDS, has_real=True)
    with pytest.raises(ValueError, match="real latent"):
        build_group_sample(real_plan, text=torch.zeros(6, 32), generated=generated, candidates=CANDS)
    real = build_group_sample(real_plan, text=torch.zeros(6, 32), generated=generated, candidates=CANDS,
                              real=torch.full(SHAPE, -1.0))
    assert real.winner.min() == -1 and real.losers.shape[0] == 4


def test_winner_weight_anchors_the_preference_loss_at_round_start():
    """At round 0 the policy equals ψ, so the anchored loss is the chance level + w · the winners' error."""
    groups = make_groups(ms=[3, 2])
    plain = Trainer(tiny_transformer(), config(objective="flow-dpo", steps=1)).train_round(groups).history[0]
    anchored = Trainer(tiny_transformer(), config(objective="flow-dpo", steps=1, winner_weight=2.0)
                       ).train_round(groups).history[0]
    assert plain["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert anchored["loss"] > plain["loss"] and anchored["margin"] == plain["margin"] == 0.0


def test_high_noise_share_replaces_draws_with_layout_times():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(20000, config(timestep_sampling="logit-normal", logit_mean=0.3, timestep_shift=2.0,
                                       high_noise_fraction=0.3, high_noise_min=0.9), g)
    plain = sample_timesteps(20000, config(timestep_sampling="logit-normal", logit_mean=0.3, timestep_shift=2.0),
                             torch.Generator().manual_seed(0))
    share, base = (t >= 0.9).float().mean().item(), (plain >= 0.9).float().mean().item()
    assert share == pytest.approx(0.3 + 0.7 * base, abs=0.015) and base < 0.2
    with pytest.raises(ValidationError):
        config(high_noise_fraction=1.5)


def test_x0_error_space_scales_the_errors_by_t_squared():
    """The first step's SFT loss is the mean winner error: t²-weighted in the clip space."""
    groups = make_groups(ms=[3, 2])
    cfg = dict(objective="sft", steps=1, timestep_sampling="logit-normal")
    vel = Trainer(tiny_transformer(), config(**cfg)).train_round(groups).history[0]
    x0 = Trainer(tiny_transformer(), config(**cfg, error_space="x0")).train_round(groups).history[0]
    assert vel["t_mean"] == x0["t_mean"]  # the same draws
    assert 0 < x0["loss"] < vel["loss"]  # every t² < 1


def test_diffusion_nft_needs_the_round_start_policy_as_v_old():
    with pytest.raises(ValidationError, match="round-start"):
        config(objective="diffusion-nft")
    assert config(objective="diffusion-nft", reference="round-start").nft_real


def test_diffusion_nft_learns_from_the_judges_rewards_alone():
    """No real video (nft_real off): each group holds a smooth clip the judge liked and a noise clip
    it did not; NFT must lower the policy's error on the liked clip relative to the other."""
    groups = []
    for g in make_groups(n=4, m=1):
        liked, disliked = g.winner, g.losers[0]
        groups.append(GroupSample(text=g.text, winner=liked, losers=torch.stack([liked, disliked]),
                                  loser_sa=torch.tensor([1.0, 0.1]), loser_pc=torch.tensor([0.9, 0.0])))
    model = tiny_transformer()
    trainer = Trainer(model, config(objective="diffusion-nft", reference="round-start", nft_real=False,
                                    steps=25, groups_per_step=4))
    first = trainer.train_round(groups)
    assert first.updates == 25 and first.history[0]["r_mean"] == pytest.approx(0.5, abs=0.11)
    pairs = [GroupSample(text=g.text, winner=g.winner, losers=g.losers[1:], loser_sa=g.loser_sa[1:],
                         loser_pc=g.loser_pc[1:]) for g in groups]
    assert mean_pair_difference(model, pairs) < 0  # the liked clip's error fell relative to the other's


def test_diffusion_nft_step_uses_as_many_samples_as_phygdpo():
    """Real video at r = 1 plus one drawn clip per group: the same policy forward size as phygdpo."""
    sizes = {}
    for objective, extra in [("phygdpo", {}), ("diffusion-nft", {"reference": "round-start"})]:
        model = tiny_transformer()
        seen = []
        model.register_forward_hook(lambda m, a, kw, out: seen.append(kw["hidden_states"].shape[0]),
                                    with_kwargs=True)
        Trainer(model, config(objective=objective, steps=1, **extra)).train_round(make_groups())
        sizes[objective] = seen
    assert sizes["phygdpo"] == sizes["diffusion-nft"] == [4, 4]  # ψ then θ, 2 groups × (winner + loser)


def test_diffusion_nft_weighs_a_generated_winner_among_its_groups_clips():
    """Without a real video the winner is the group's best clip: r is computed over all judged clips,
    the winner included (it gets its own r, not 1), so the best loser is not taken for the best."""
    trainer = Trainer(tiny_transformer(), config(objective="diffusion-nft", reference="round-start", nft_adv_clip=1.0))
    g = make_groups(n=1, m=2)[0]
    g.loser_sa, g.loser_pc = torch.tensor([0.5, 0.0]), torch.tensor([0.5, 0.0])
    assert torch.allclose(trainer._nft_r(g), torch.tensor([1.0, 0.0]))  # losers alone: (0.5, 0) looks like (best, worst)
    g.meta = {"winner": "generated", "winner_score": 1.0}
    # rewards (0.5, 0, 1): mean ½, std 0.4082483 → A = (0, −1.2247449, 1.2247449), clipped at 1
    assert torch.allclose(trainer._nft_r(g), torch.tensor([0.5, 0.0, 1.0]))


def test_flow_grpo_settings_that_cannot_hold_are_refused():
    from agent.config import ConfigError, load_config

    with pytest.raises(ValidationError, match="fp32"):
        config(objective="flow-grpo", mixed_precision="bf16")
    for extra, why in (("refine.distil=true", "distil"), ("train.replay_rounds=1", "replay_rounds")):
        with pytest.raises(ConfigError, match=why):
            load_config("smoke", ["train.objective='flow-grpo'", extra])
