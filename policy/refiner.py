"""The trained prompt refiner (PhyPrompt, ``papers/phyprompt.txt``): a causal LM that rewrites a
user's prompt into one the generator renders physically, trained in two stages.

Stage 1, SFT (:func:`sft`, trl's ``SFTTrainer``, loss on the completion only): pairs
``prompt → chain of thought naming the law → refined prompt`` teach the format and what a
refinement may add.

Stage 2, GRPO (:func:`grpo`, trl's ``GRPOTrainer``): for each prompt a group of sampled rewrites,
each rendered by the *current* generator and judged against the prompt as written; the reward is
``w_sa(p)·sa + w_pc(p)·pc + w_fmt·valid`` with the weights moving from semantic adherence to
physics as training progresses (``p`` = step / steps, the dynamic reward curriculum:
:func:`policy.objectives.curriculum_weights`), and a KL term to the SFT model (trl's ``beta``;
with a LoRA the reference is the adapter switched off, as in the generator's trainer).

What a rewrite is worth is not this module's business: the reward arrives as a callable
``score(originals, rewrites, step) -> [(sa, pc, valid)]`` composed by the agent (generator, judge
and the guard that a rewrite never contradicts its prompt), so ``policy`` never imports ``reward``.

Any Hugging Face causal LM can be the refiner (:meth:`TrainedRefiner.from_pretrained`, with
``lora=`` for a Qwen-class instruct model on GPUs). The built-in world ships a small GPT-2 with a
word-level tokenizer trained on the world's grammar (``scripts/build_refiner.py``,
``policy/checkpoints/refiner``). There the colour words are *delexicalised*: replaced by the slots
``<c1>``, ``<c2>`` before the model reads a prompt and put back afterwards, so what the model learns
is what to add for a kind of scene, and the objects are copied exactly.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from policy.objectives import curriculum_weights, refiner_reward

#: the query the model completes, and the marker between its thought and its answer
QUERY = "refine: {prompt} think:"
ANSWER = "answer:"
SLOTS = ("<c1>", "<c2>", "<c3>")
SPECIALS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
META_FILE = "refiner.json"

#: ``score(originals, rewrites, step)`` → one ``(sa, pc, valid)`` per rewrite (``None``: no answer)
Score = Callable[[Sequence[str], Sequence[str | None], int], list[tuple[float, float, bool]]]


@dataclass
class Rewrite:
    text: str | None  # the refined prompt; None when the completion has no answer
    thought: str
    raw: str  # the completion as decoded


# ------------------------------------------------------------------ text format
def _tidy(text: str) -> str:
    """Word-level decoding puts spaces around punctuation; the world's prompts have none before it."""
    return re.sub(r"\s+([;:,.])", r"\1", " ".join(text.split())).strip()


def parse_completion(completion: str) -> Rewrite:
    """The thought and the answer of a completion (``thought answer: refined``)."""
    raw = _tidy(completion)
    head, sep, tail = raw.partition(ANSWER)
    answer = tail.strip().rstrip(";, ")
    return Rewrite(text=answer if sep and answer else None, thought=head.strip(), raw=raw)


def completion_text(thought: str, refined: str) -> str:
    return f" {thought} {ANSWER} {refined}"


class Delexicaliser:
    """Replaces each distinct word of ``words`` (colours) by a slot, in order of appearance."""

    def __init__(self, words: Sequence[str] = ()):
        self.words = tuple(words)
        self._re = re.compile(r"\b(" + "|".join(map(re.escape, self.words)) + r")\b") if self.words else None

    def encode(self, text: str) -> tuple[str, list[str]]:
        if self._re is None:
            return text, []
        seen: list[str] = []

        def slot(m: re.Match) -> str:
            if m.group(1) not in seen:
                seen.append(m.group(1))
            i = seen.index(m.group(1))
            return SLOTS[i] if i < len(SLOTS) else m.group(1)

        return self._re.sub(slot, text), seen

    @staticmethod
    def decode(text: str, filled: Sequence[str]) -> str | None:
        """``text`` with its slots filled; None when it uses a slot the prompt had no word for."""
        for i, s in enumerate(SLOTS):
            if s in text:
                if i >= len(filled):
                    return None
                text = text.replace(s, filled[i])
        return text


# ------------------------------------------------------------------ tokenizer and model
def build_word_tokenizer(corpus: Sequence[str]):
    """A word-level tokenizer over every word and punctuation mark of ``corpus`` (plus the query
    words, slots and special tokens), as a ``PreTrainedTokenizerFast`` saved with the model."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
    words: set[str] = set()
    for text in list(corpus) + [QUERY.format(prompt=""), ANSWER]:
        words.update(w for w, _ in pre.pre_tokenize_str(text))
    vocab = {t: i for i, t in enumerate(list(SPECIALS.values()) + list(SLOTS) + sorted(words - set(SLOTS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre
    tok.add_tokens([AddedToken(s, normalized=False) for s in SLOTS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)
    fast.padding_side = "left"  # generation appends to the right
    return fast


def build_gpt2(tokenizer, *, n_layer: int = 3, n_embd: int = 128, n_head: int = 4, n_positions: int = 160,
               seed: int = 0):
    """A small randomly initialised GPT-2 for ``tokenizer`` (fits a CPU; no dropout, so GRPO's
    policy and its KL reference agree exactly at the start)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(cfg)


# ------------------------------------------------------------------ the refiner
class TrainedRefiner:
    """A causal LM that completes :data:`QUERY` with ``thought answer: refined prompt``."""

    def __init__(self, model, tokenizer, *, slot_words: Sequence[str] = (), max_new_tokens: int = 72,
                 meta: dict | None = None):
        self.model, self.tokenizer = model, tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.delex = Delexicaliser(slot_words)
        self.max_new_tokens = max_new_tokens
        self.meta = dict(meta or {})

    # -- persistence
    @classmethod
    def from_pretrained(cls, path: str | Path, *, lora: dict | None = None, **kwargs) -> "TrainedRefiner":
        """A refiner from a directory with a causal LM and its tokenizer (and ``refiner.json`` when
        phyloop wrote it). ``lora`` (peft ``LoraConfig`` fields) wraps the model in a fresh LoRA."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).is_file() else {}
        from policy.base import quiet_loading

        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(path)
            if (path / "adapter_config.json").is_file():  # a saved LoRA refiner: its base and the adapter
                from peft import AutoPeftModelForCausalLM

                model = AutoPeftModelForCausalLM.from_pretrained(path, is_trainable=True)
            else:
                model = AutoModelForCausalLM.from_pretrained(path)
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
        kwargs.setdefault("slot_words", meta.get("slot_words", ()))
        return cls(model, tokenizer, meta=meta, **kwargs)

    def save(self, path: str | Path) -> None:
        """Writes the model (its adapter only, when it carries a LoRA), tokenizer and
        ``refiner.json`` atomically: a temporary directory, renamed into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        from policy.base import quiet_loading

        with quiet_loading():  # a LoRA is saved as a peft adapter (its base named in adapter_config.json)
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        meta = {**self.meta, "slot_words": list(self.delex.words)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            _rmtree(old)
        else:
            os.replace(tmp, path)

    # -- inference
    def query(self, prompt: str) -> tuple[str, list[str]]:
        text, filled = self.delex.encode(" ".join(prompt.split()))
        return QUERY.format(prompt=text), filled

    @torch.no_grad()
    def rewrite(self, prompts: Sequence[str], *, n: int = 1, sample: bool = False, temperature: float = 1.0,
                seed: int | None = None) -> list[list[Rewrite]]:
        """``n`` rewrites of each prompt (greedy unless ``sample``)."""
        queries = [self.query(p) for p in prompts]
        enc = self.tokenizer([q for q, _ in queries], return_tensors="pt", padding=True)
        if seed is not None:
            torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=sample,
                                  temperature=temperature if sample else None, top_k=0 if sample else None,
                                  num_return_sequences=n, eos_token_id=self.tokenizer.eos_token_id,
                                  pad_token_id=self.tokenizer.pad_token_id)
        self.model.train(was_training)
        done = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        rewrites: list[list[Rewrite]] = []
        for i, (_, filled) in enumerate(queries):
            rewrites.append([self.lexicalise(done[i * n + j], filled) for j in range(n)])
        return rewrites

    def lexicalise(self, completion: str, filled: Sequence[str]) -> Rewrite:
        r = parse_completion(completion)
        if r.text is not None:
            r.text = self.delex.decode(r.text, filled)
        return r


# ------------------------------------------------------------------ stage 1: SFT
def sft(refiner: TrainedRefiner, prompts: Sequence[str], thoughts: Sequence[str], refined: Sequence[str], *,
        steps: int, lr: float = 1e-3, batch: int = 32, seed: int = 0, use_cpu: bool = True) -> list[dict]:
    """Supervised fine-tuning on (prompt → thought → refined) triples with trl's ``SFTTrainer``.
    Returns the logged history (loss per logging step)."""
    import datasets.utils.logging as dlog
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dlog.disable_progress_bar()

    rows = {"prompt": [], "completion": []}
    for p, t, r in zip(prompts, thoughts, refined, strict=True):
        q, filled = refiner.query(p)
        rows["prompt"].append(q)
        rows["completion"].append(completion_text(t, refiner.delex.encode(r)[0] if filled else r))
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_steps=steps, learning_rate=lr, per_device_train_batch_size=batch,
                         lr_scheduler_type="cosine", warmup_steps=min(50, steps // 10), logging_steps=max(1, steps // 20),
                         save_strategy="no", report_to="none", seed=seed, use_cpu=use_cpu, max_length=256,
                         disable_tqdm=True, dataloader_num_workers=0)
        trainer = SFTTrainer(model=refiner.model, args=args, train_dataset=Dataset.from_dict(rows),
                             processing_class=refiner.tokenizer)
        refiner.model = _train(trainer)
        return [h for h in trainer.state.log_history if "loss" in h]


# ------------------------------------------------------------------ stage 2: GRPO with the curriculum
@dataclass
class GRPOSettings:
    steps: int = 60
    prompts_per_step: int = 8
    group: int = 8  # sampled rewrites per prompt (trl's num_generations)
    lr: float = 1e-4
    beta: float = 0.04  # KL to the SFT model
    temperature: float = 1.0
    curriculum: tuple[tuple[float, float], tuple[float, float]] = ((1.0, 0.0), (0.5, 0.5))  # (w_sa, w_pc) start, end
    w_format: float = 0.1
    seed: int = 0
    use_cpu: bool = True


def grpo(refiner: TrainedRefiner, prompts: Sequence[str], score: Score, settings: GRPOSettings,
         on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """GRPO of the refiner on ``prompts`` under the curriculum reward; returns one row per
    optimisation step (mean reward, sa, pc, share of valid rewrites, the weights used, trl's KL)."""
    import datasets.utils.logging as dlog
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    dlog.disable_progress_bar()

    s = settings
    history: list[dict] = []
    pending: dict = {}
    queries = [refiner.query(p) for p in prompts]
    rows = {"prompt": [q for q, _ in queries], "original": list(prompts), "filled": [json.dumps(f) for _, f in queries]}

    def reward(prompts, completions, original, filled, trainer_state=None, **_):
        step = trainer_state.global_step if trainer_state is not None else 0
        w_sa, w_pc = curriculum_weights(step / max(1, s.steps), s.curriculum[0], s.curriculum[1])
        rewrites = [refiner.lexicalise(c, json.loads(f)) for c, f in zip(completions, filled)]
        scored = score(original, [r.text for r in rewrites], step)
        sa = torch.tensor([x[0] for x in scored], dtype=torch.float32)
        pc = torch.tensor([x[1] for x in scored], dtype=torch.float32)
        ok = torch.tensor([float(x[2]) for x in scored])
        r = refiner_reward(sa, pc, ok, w_sa=w_sa, w_pc=w_pc, w_format=s.w_format)
        pending.update(step=step + 1, reward=float(r.mean()), sa=float(sa[ok > 0].mean()) if ok.any() else None,
                       pc=float(pc[ok > 0].mean()) if ok.any() else None, valid=float(ok.mean()), w_sa=w_sa,
                       w_pc=w_pc, example=next((w.text for w in rewrites if w.text), None))
        return r.tolist()

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if pending and logs is not None and "loss" in logs:
                row = {**pending, "kl": logs.get("kl"), "loss": logs.get("loss")}
                history.append(row)
                if on_step is not None:
                    on_step(row)
                pending.clear()

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, max_steps=s.steps, learning_rate=s.lr,
                          per_device_train_batch_size=s.prompts_per_step * s.group, num_generations=s.group,
                          max_completion_length=refiner.max_new_tokens, temperature=s.temperature, beta=s.beta,
                          logging_steps=1, save_strategy="no", report_to="none", seed=s.seed, use_cpu=s.use_cpu,
                          disable_tqdm=True, dataloader_num_workers=0, top_k=0, disable_dropout=True)
        model = refiner.model
        if s.beta > 0 and not hasattr(model, "disable_adapter"):
            # trl builds the KL reference from the model's path: start both from a saved copy
            model.save_pretrained(Path(out) / "start")
            refiner.tokenizer.save_pretrained(Path(out) / "start")
            model = str(Path(out) / "start")
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args,
                              train_dataset=Dataset.from_dict(rows), processing_class=refiner.tokenizer,
                              callbacks=[Record()])
        refiner.model = _train(trainer)
    return history


def _train(trainer):
    """Run a trl trainer quietly and release the accelerate state it set up; returns its model."""
    _quiet(trainer)
    try:
        trainer.train()
    finally:
        _release_accelerator()
    return trainer.model


def _quiet(trainer) -> None:
    """No log lines printed by the Trainer: the caller reports progress (``on_step``, the history)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def _release_accelerator() -> None:
    """Forget the process-wide accelerate state trl's Trainer set up, so the generator's own
    ``Accelerator`` (``policy.trainer``) can be created afterwards in the same process."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
