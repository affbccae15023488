"""The trained prompt refiner (PhyPrompt): its reward's equations, text format, both trainers on tiny
models, the guard that keeps its rewrites from contradicting a prompt, and its place in the loop."""

from __future__ import annotations

import pytest
import torch

from agent.trained_refiner import (DEFAULT_REFINER, TrainedCritic, is_refiner_dir, keeps_every_word, world_corpus,
                                   world_guard, world_sft_data)
from agent.world_data import PARAPHRASES, split_seeds
from policy.objectives import curriculum_weights, refiner_reward
from policy.refiner import (Delexicaliser, GRPOSettings, Rewrite, TrainedRefiner, build_gpt2, build_word_tokenizer,
                            grpo, parse_completion, sft)
from reward.world import physics as P
from reward.world.critic import contradiction, entails
from reward.world.intent import parse_prompt
from reward.world.simulator import sample_scene


# ------------------------------------------------------------------ the reward's equations
def test_curriculum_moves_from_semantics_to_physics():
    start, end = (1.0, 0.0), (0.5, 0.5)
    assert curriculum_weights(0.0, start, end) == (1.0, 0.0)
    assert curriculum_weights(1.0, start, end) == (0.5, 0.5)
    assert curriculum_weights(0.25, start, end) == pytest.approx((0.875, 0.125))
    assert curriculum_weights(-1.0, start, end) == (1.0, 0.0) and curriculum_weights(7.0, start, end) == (0.5, 0.5)


def test_refiner_reward_hand_computed():
    sa, pc, ok = torch.tensor([0.8, 0.2, 1.0]), torch.tensor([0.4, 1.0, 1.0]), torch.tensor([1.0, 1.0, 0.0])
    r = refiner_reward(sa, pc, ok, w_sa=0.75, w_pc=0.25, w_format=0.1)
    assert r.tolist() == pytest.approx([0.75 * 0.8 + 0.25 * 0.4 + 0.1, 0.75 * 0.2 + 0.25 * 1.0 + 0.1, 0.0])


# ------------------------------------------------------------------ text format
def test_delexicaliser_round_trip_and_missing_slot():
    d = Delexicaliser(list(P.PALETTE))
    text, filled = d.encode("a red ball rolls into a blue ball; the red ball stops")
    assert text == "a <c1> ball rolls into a <c2> ball; the <c1> ball stops" and filled == ["red", "blue"]
    assert d.decode(text, filled) == "a red ball rolls into a blue ball; the red ball stops"
    assert d.decode("a <c2> ball", ["red"]) is None  # a slot the prompt had no word for


def test_parse_completion():
    r = parse_completion(" gravity pulls it down ; it starts at the top left answer: a <c1> ball falls ; it bounces ")
    assert r.thought == "gravity pulls it down; it starts at the top left" and r.text == "a <c1> ball falls; it bounces"
    assert parse_completion(" gravity pulls it down").text is None
    assert parse_completion(" thought answer: ").text is None


def test_word_tokenizer_reproduces_world_prompts():
    tok = build_word_tokenizer(world_corpus(5))
    for scene in (sample_scene(f, 3) for f in P.FAMILIES):
        for text in scene.prompts:
            ids = tok(text)["input_ids"]
            assert tok.unk_token_id not in ids, text
            assert parse_completion(f"x answer: {tok.decode(ids)}").text == text


def test_sft_data_uses_training_scenes_only_and_is_consistent():
    prompts, thoughts, refined = world_sft_data(10)
    held = {(s.family, s.colours) for f in P.FAMILIES for s in (sample_scene(f, x) for x in split_seeds(f, True, 40))}
    for p, t, r in zip(prompts, thoughts, refined):
        i, o = parse_prompt(p), parse_prompt(r)
        assert (i.family, tuple(i.colours)) not in held
        assert entails(o, i), (p, r)  # every target refinement keeps what its prompt says
        assert contradiction(p, r) is None, (p, r)


# ------------------------------------------------------------------ both trainers on a tiny model
@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer(world_corpus(5))
    return TrainedRefiner(build_gpt2(tok, n_layer=1, n_embd=32, n_head=2, seed=0), tok, slot_words=list(P.PALETTE),
                          max_new_tokens=24)


def test_sft_lowers_the_loss(tiny):
    p, t, r = world_sft_data(5)
    hist = sft(tiny, p, t, r, steps=60, lr=1e-2, batch=16)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]


def test_grpo_calls_the_reward_with_the_prompts_and_moves_the_weights(tiny):
    prompts = ["a red ball is dropped", "a green block slides across the floor"]
    seen = []

    def score(originals, rewrites, step):
        seen.append((list(originals), step))
        return [(0.5, 0.25, r is not None) for r in rewrites]

    rows = grpo(tiny, prompts, score, GRPOSettings(steps=2, prompts_per_step=2, group=2, beta=0.0))
    assert [r["step"] for r in rows] == [1, 2]
    assert (rows[0]["w_sa"], rows[0]["w_pc"]) == (1.0, 0.0) and rows[1]["w_sa"] == pytest.approx(0.75)
    assert all(set(o) <= set(prompts) and len(o) == 4 for o, _ in seen) and [s for _, s in seen] == [0, 1]


def test_grpo_raises_a_reward_the_sft_model_can_reach():
    """GRPO's sign and plumbing: starting from the shipped SFT stage, a reward for throws to the left
    only raises the share of left throws among sampled rewrites."""
    sft_dir = DEFAULT_REFINER.with_name(DEFAULT_REFINER.name + "_sft")
    ref = TrainedRefiner.from_pretrained(sft_dir)
    prompts = [f"a {c} ball is thrown" for c in P.PALETTE]

    def left_share() -> float:
        outs = ref.rewrite(prompts, n=16, sample=True, seed=1)
        return sum("to the left" in (r.text or "") for rs in outs for r in rs) / (16 * len(prompts))

    before = left_share()
    rows = grpo(ref, prompts, lambda o, rs, step: [(float("to the left" in (r or "")), 0.0, True) for r in rs],
                GRPOSettings(steps=12, prompts_per_step=5, group=8, lr=1e-3, beta=0.0, seed=0))
    # The policy after training, sampled afresh (128 rewrites), not the per-step rewards of training:
    # one step's reward is a mean of 40 samples (sd ≈ 0.08), too noisy to compare two steps (CI saw
    # the last below the first). Measured here: 0.50 → 0.93.
    assert len(rows) == 12 and all(0.0 <= r["reward"] <= 1.0 for r in rows)
    assert left_share() > before + 0.2


def test_lora_refiner_saves_an_adapter_and_loads_back(tmp_path, tiny):
    """The path of a Hugging Face causal LM with a LoRA (a Qwen-class model on GPUs): trained with a
    KL to the adapter switched off, saved as a peft adapter, loaded back with the same outputs."""
    base = tmp_path / "base"
    tiny.save(base)
    ref = TrainedRefiner.from_pretrained(base, lora={"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]})
    grpo(ref, ["a red ball is dropped"], lambda o, rs, s: [(1.0, 1.0, True)] * len(rs),
         GRPOSettings(steps=1, prompts_per_step=1, group=2, beta=0.04))
    ref.save(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_config.json").is_file() and is_refiner_dir(tmp_path / "lora")
    again = TrainedRefiner.from_pretrained(tmp_path / "lora")
    a = ref.rewrite(["a red ball is dropped"])[0][0].raw
    assert again.rewrite(["a red ball is dropped"])[0][0].raw == a


# ------------------------------------------------------------------ never contradicts a prompt
def every_world_prompt() -> list[str]:
    """Every prompt form the world produces: all levels of training and held-out scenes (mirrored ones
    among them) of every family, and the paraphrases."""
    out = []
    for f in P.FAMILIES:
        for held in (False, True):
            for seed in split_seeds(f, held, 6):
                out += sample_scene(f, seed).prompts
        c2 = "blue"
        out += [t.format(c="red", c2=c2) for t in PARAPHRASES[f]]
    return out


@pytest.fixture(scope="module")
def shipped():
    return TrainedCritic(TrainedRefiner.from_pretrained(DEFAULT_REFINER))


def test_shipped_refiner_never_contradicts_a_world_prompt(shipped):
    prompts = every_world_prompt()
    assert any(parse_prompt(p).family == "projectile" and "to the left" in p for p in prompts)  # mirrored forms
    changed = 0
    for p, r in zip(prompts, shipped.rewrite_many(prompts)):
        assert entails(parse_prompt(r.prompt), parse_prompt(p)), (p, r)
        changed += r.prompt != p
    assert changed >= len(prompts) // 4  # it does refine (short prompts at least)


class _Fixed:
    """A stand-in model whose every rewrite is the given completion."""

    def __init__(self, completion: str):
        self.completion = completion

    def rewrite(self, prompts, **kw):
        return [[parse_completion(self.completion)] for _ in prompts]


@pytest.mark.parametrize("completion", [
    " law answer: a red ball is thrown to the left from the right side and flies in an arc",  # the other way
    " law answer: a blue ball is thrown to the right from the left side and flies in an arc",  # another colour
    " law answer: a red ball falls from the top left of the frame and bounces on the floor",  # another scenario
    " law answer: a red ball is thrown to the right near the left wall",  # a place word no parser reads
    " law, and no answer",
])
def test_guard_keeps_the_prompt_when_a_rewrite_contradicts_it(completion):
    prompt = "a red ball is thrown to the right from the left side and flies in an arc"
    r = TrainedCritic(_Fixed(completion)).refine(prompt)
    assert r.prompt == prompt and "rejected" in r.critique


def test_guard_lets_a_rewrite_that_only_adds_through():
    r = TrainedCritic(_Fixed(" law answer: a red ball is thrown to the right from the left side and flies in an arc"))
    assert r.refine("a red ball is thrown").prompt.startswith("a red ball is thrown to the right")
    assert world_guard("a red ball is thrown", None) == "no rewrite"


def test_keeps_every_word_guard():
    assert keeps_every_word("a cat jumps", "a grey cat jumps high") is None
    assert keeps_every_word("a cat jumps", "a dog jumps") is not None
    assert keeps_every_word("a cat jumps", "jumps a cat") is not None


# ------------------------------------------------------------------ in the loop
def test_runtime_builds_the_trained_critic(tmp_path):
    from agent.config import load_config
    from agent.runtime import Runtime

    cfg, _ = load_config("smoke", [f"runs_dir='{tmp_path}'", "refine.critic='trained'"])
    assert Runtime.critic.func(type("R", (), {"config": cfg})()).name == "trained"


def test_cli_rejects_a_missing_refiner(tmp_path, capsys):
    from agent.cli import main

    rc = main(["run", "--preset", "smoke", "--runs-dir", str(tmp_path), "--rounds", "1",
               "--set", "refine.critic='trained'", "--set", f"refine.refiner='{tmp_path / 'nope'}'"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: refine.refiner")
    assert not (tmp_path / "phyloop.db").exists()
