"""Flow-GRPO, the peer baseline that trains on the sampler's own steps: the SDE sampler of the
built-in world's generator, its stored trajectories, and the trainer's clipped-ratio steps on them.

The equations are checked by hand in ``test_objectives.py``; here a tiny random generator shows
that the pieces fit: the log-probabilities the sampler stores are the ones the trainer recomputes
(ratio 1 at the start of a round), and training raises the likelihood of the steps of the
rollout the judge preferred relative to the other's.
"""

from __future__ import annotations

import pytest
import torch

from policy.base import GroupSample
from policy.objectives import gaussian_log_prob, sde_step
from policy.text import TextEncoder
from policy.toy import SampleConfig, ToyArch, ToyGenerator
from policy.trainer import TrainConfig, Trainer

TINY = ToyArch(frames=4, size=16, patch_size=(1, 4, 4), num_heads=2, head_dim=12, ffn_dim=32, num_layers=1,
               freq_dim=16, text_len=16)
LEVEL = 0.7


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    return TextEncoder(max_length=TINY.text_len)


@pytest.fixture()
def gen(text_encoder) -> ToyGenerator:
    torch.set_num_threads(1)
    return ToyGenerator.random(TINY, seed=0, sampling=SampleConfig(steps=4), text_encoder=text_encoder)


def sde(gen, prompts, seeds):
    text = gen.encode_prompts(prompts)
    noise = torch.stack([gen.noise(s) for s in seeds])
    return gen.sample_sde(noise, text, seeds, noise_level=LEVEL)


def test_sde_sampler_is_seeded_stores_its_trajectory_and_its_log_probs(gen):
    seeds = [3, 4]
    clean, traj = sde(gen, ["a red ball is dropped"] * 2, seeds)
    again, _ = sde(gen, ["a red ball is dropped"] * 2, seeds)
    assert torch.equal(clean, again)  # the step noise is the clip seed's own stream
    S = gen.sampling.steps
    assert traj["latents"].shape == (2, S + 1, 3, TINY.frames, TINY.size, TINY.size)
    assert traj["log_probs"].shape == (2, S) and traj["sigmas"].shape == (S + 1,)
    assert torch.equal(traj["latents"][:, 0], torch.stack([gen.noise(s) for s in seeds]))
    assert torch.equal(traj["latents"][:, -1], clean)
    ode = gen.sample(torch.stack([gen.noise(s) for s in seeds]), gen.encode_prompts(["a red ball is dropped"] * 2))
    assert not torch.allclose(clean, ode, atol=1e-3)  # stochastic steps, not the ODE's path
    # the stored log-probability of each stochastic step is the step's density under the sampler
    text = gen.encode_prompts(["a red ball is dropped"] * 2)
    sig = traj["sigmas"]
    for s in range(S - 1):
        x = traj["latents"][:, s]
        t = sig[s].expand(2)
        with torch.no_grad():
            mean, std = sde_step(x, gen.velocity(x, t, text), t, sig[s + 1].expand(2), noise_level=LEVEL,
                                 sigma_cap=float(sig[1]))
        assert torch.allclose(gaussian_log_prob(traj["latents"][:, s + 1], mean, std), traj["log_probs"][:, s],
                              atol=1e-5)
    assert torch.all(traj["log_probs"][:, -1] == 0)  # the last step is deterministic: no likelihood


def test_generate_attaches_trajectories_only_when_asked(gen):
    plain = gen.generate(["a red ball is dropped"], [0], 2)
    rollouts = gen.generate(["a red ball is dropped"], [0], 2, sde_noise_level=LEVEL)
    assert all(g.trajectory is None for g in plain[0])
    assert all(g.trajectory["latents"].shape[0] == gen.sampling.steps + 1 for g in rollouts[0])
    with pytest.raises(ValueError, match="guidance"):
        gen.generate(["a red ball is dropped"], [0], 1, sampling=SampleConfig(steps=2, guidance=2.0),
                     sde_noise_level=LEVEL)


def rollout_groups(gen, n: int = 3) -> list[GroupSample]:
    """Per prompt two SDE rollouts; the judge prefers the first (reward 1 against 0)."""
    prompts = ["a red ball is dropped", "a blue block slides to the left", "a green ball is thrown"][:n]
    groups = []
    for i, p in enumerate(prompts):
        _, traj = sde(gen, [p, p], [10 * i, 10 * i + 1])
        text = gen.encode_prompts([p])[0]
        groups.append(GroupSample(
            text=text, winner=traj["latents"][0, -1], losers=traj["latents"][:, -1],
            loser_sa=torch.tensor([1.0, 0.0]), loser_pc=torch.tensor([1.0, 0.0]), prompt=p,
            rollouts={**traj, "reward": torch.tensor([1.0, 0.0])}))
    return groups


def step_log_probs(gen, groups) -> torch.Tensor:
    """Mean log-probability under the current policy of each rollout's stochastic steps → (groups, 2)."""
    out = []
    for g in groups:
        r, S = g.rollouts, g.rollouts["log_probs"].shape[1]
        lps = []
        for s in range(S - 1):
            x, t = r["latents"][:, s], r["sigmas"][s].expand(2)
            with torch.no_grad():
                mean, std = sde_step(x, gen.velocity(x, t, g.text.expand(2, -1, -1)), t, r["sigmas"][s + 1].expand(2),
                                     noise_level=LEVEL, sigma_cap=float(r["sigmas"][1]))
            lps.append(gaussian_log_prob(r["latents"][:, s + 1], mean, std))
        out.append(torch.stack(lps).mean(0))
    return torch.stack(out)


def grpo_config(**kw) -> TrainConfig:
    base = dict(objective="flow-grpo", steps=30, groups_per_step=3, lr=3e-3, lr_min=3e-4, lora_rank=4, lora_alpha=4,
                grpo_noise_level=LEVEL, grpo_clip=0.2, grpo_kl_beta=0.0)
    return TrainConfig(**{**base, **kw})


def test_first_ratio_is_one_and_training_prefers_the_better_rollout(gen):
    trainer = Trainer(gen.transformer, grpo_config())
    groups = rollout_groups(gen)
    before = step_log_probs(gen, groups)
    summary = trainer.train_round(groups)
    first = summary.history[0]
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and first["clip_fraction"] == 0.0
    assert summary.updates == 30
    gain = step_log_probs(gen, groups) - before
    assert (gain[:, 0] - gain[:, 1]).mean() > 0  # the preferred rollout's steps became likelier


def test_the_kl_term_reads_the_reference_and_starts_at_zero(gen):
    trainer = Trainer(gen.transformer, grpo_config(steps=3, grpo_kl_beta=0.04))
    summary = trainer.train_round(rollout_groups(gen))
    assert summary.history[0]["kl"] == 0.0  # a fresh LoRA is the base
    assert summary.history[-1]["kl"] > 0.0


def test_a_group_without_rollouts_is_refused(gen):
    trainer = Trainer(gen.transformer, grpo_config(steps=1))
    g = rollout_groups(gen, n=1)[0]
    g.rollouts = None
    with pytest.raises(ValueError, match="SDE sampler"):
        trainer.train_round([g])


def test_flow_grpo_is_refused_on_wan_with_a_reason():
    from agent.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="SDE sampler"):
        load_config("wan2.1-1.3b", ["train.objective='flow-grpo'", "train.mixed_precision='no'"])


def test_rollouts_sampled_at_another_noise_level_are_refused(gen):
    trainer = Trainer(gen.transformer, grpo_config(steps=1, grpo_noise_level=0.5))
    with pytest.raises(ValueError, match="noise level"):
        trainer.train_round(rollout_groups(gen, n=1))
