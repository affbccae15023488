"""Run configuration: presets in ``runs/*.toml``, validated with pydantic, overridable from the CLI.

A preset is a TOML file whose tables mirror :class:`RunConfig`. Every model forbids unknown
keys, so a typo fails loudly with the key's name and the keys that are allowed. The whole
resolved config (after overrides) is stored with the run, so a run can always be replayed
and resumed with exactly the settings it started with.

Overrides use dotted keys: ``--set train.steps=40 --set plan.tau=0``; values are parsed as
TOML literals (``true``, ``3``, ``0.5``, ``"text"``, ``[1, 2]``), falling back to plain strings.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policy.trainer import TrainConfig
from policy.wan import WanConfig
from reward.vlm.config import VLMConfig

PRESET_DIR = Path(__file__).resolve().parent.parent / "runs"
DEFAULT_PRESET = "default"


class ConfigError(ValueError):
    """A preset or override that does not validate; the message is one readable line."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WorldDataConfig(_Model):
    """The built-in world's prompt pool: scenes per family for training and held-out evaluation.

    Held-out scenes are those of colour combinations no training scene has
    (``agent.world_data.HELDOUT_COMBOS``), so their texts are unseen at every level.
    """

    train_scenes_per_family: int = Field(12, ge=1)
    heldout_scenes_per_family: int = Field(8, ge=1)
    train_level: int = Field(0, ge=0, le=2, description="prompt detail used for training prompts (0 = short)")
    heldout_level: int | list[int] = Field(
        0, description="prompt detail level(s) of held-out prompts (0 = short, 1 = states the motion, "
        "2 = states the physics); a list gives every held-out scene one prompt per level")

    paraphrase_scenes_per_family: int = Field(
        0, ge=0, description="held-out scenes per family whose short prompt is also evaluated reworded "
        "with words the base never saw (the 'paraphrase' split); 0 = none")

    @field_validator("heldout_level", mode="before")
    @classmethod
    def _strict_levels(cls, v):
        items = v if isinstance(v, list) else [v]
        if any(isinstance(x, bool) or not isinstance(x, int) for x in items):
            raise ValueError("must be a level 0, 1 or 2, or a list of distinct levels")
        return v

    @field_validator("heldout_level")
    @classmethod
    def _levels(cls, v: int | list[int]) -> int | list[int]:
        levels = [v] if isinstance(v, int) else list(v)
        if not levels or any(lv not in (0, 1, 2) for lv in levels) or len(set(levels)) != len(levels):
            raise ValueError("must be a level 0, 1 or 2, or a list of distinct levels")
        return v

    @property
    def heldout_levels(self) -> tuple[int, ...]:
        return (self.heldout_level,) if isinstance(self.heldout_level, int) else tuple(self.heldout_level)


class DataConfig(_Model):
    source: Literal["world", "store"] = Field(
        "world", description="'world': the built-in world's prompts and real videos; "
        "'store': prompts imported with `agent data import` (with their real videos)")
    world: WorldDataConfig = WorldDataConfig()
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share of imported prompts held out (source=store)")


class PlanConfig(_Model):
    prompts_per_round: int = Field(8, ge=1)
    strategy: Literal["difficulty", "uniform"] = "difficulty"
    tau: float = Field(3.0, ge=0, description="temperature of r_k = exp(τ d_k); 0 = equal shares")


class RefineConfig(_Model):
    enabled: bool = True
    critic: Literal["rules", "vlm", "trained"] = Field(
        "rules", description="'rules': the built-in world's rule critic; 'vlm': the VLM of [judge.vlm]; 'trained': "
        "the trained refiner (PhyPrompt: a causal LM after SFT and GRPO, scripts/build_refiner.py)")
    refiner: str | None = Field(None, description="trained refiner directory (critic = 'trained'; default: the shipped "
                                "one, policy/checkpoints/refiner)")
    max_steps: int = Field(2, ge=0, description="critic rewrites per prompt per round")
    min_change: float = Field(0.02, ge=0, le=1, description="stop when 1 − cosine(similarity) of a rewrite is below")
    distil: bool = Field(False, description="train on the original prompt while generating with the refined one")
    probe: bool = Field(True, description="judge one probe clip per rewrite to decide whether it helped")
    resolve: bool = Field(True, description="first settle what the prompt leaves open (direction, start region): "
                          "probe each candidate the critic proposes and keep the best (needs probe = true)")
    resolve_probes: int = Field(4, ge=1, description="probe clips per candidate resolution (and for the prompt as written)")


class ToyGenConfig(_Model):
    checkpoint: str | None = Field(None, description="base checkpoint (.safetensors); default: the shipped one")
    steps: int | None = Field(None, ge=1, description="sampling steps (default: the checkpoint's)")
    guidance: float | None = Field(None, ge=1.0, description="classifier-free guidance (default: the checkpoint's)")
    shift: float | None = Field(None, gt=0)
    max_batch: int = Field(16, ge=1)


class GenerateConfig(_Model):
    backend: Literal["toy", "wan"] = "toy"
    group_size: int = Field(4, ge=2, description="generated clips per prompt (the m losers)")
    toy: ToyGenConfig = ToyGenConfig()
    wan: WanConfig | None = None

    @model_validator(mode="after")
    def _backend_section(self) -> "GenerateConfig":
        if self.backend == "wan" and self.wan is None:
            raise ValueError("generate.backend = 'wan' needs a [generate.wan] table (model, height, width, …)")
        return self


class JudgeConfig(_Model):
    backend: Literal["physics", "synthesis", "vlm"] = Field(
        "physics", description="'physics': the built-in world's analytic law checks; 'synthesis': its "
        "analysis-by-synthesis judge (fits the simulator's scenes to the pixels); 'vlm': a VLM over the OpenAI API")
    vlm: VLMConfig | None = None
    threshold: float = Field(0.75, ge=0, le=1, description="joint success: sa ≥ t and pc ≥ t (4 of 5 → 0.75)")

    @model_validator(mode="after")
    def _backend_section(self) -> "JudgeConfig":
        if self.backend == "vlm" and self.vlm is None:
            raise ValueError("judge backend 'vlm' needs a [judge.vlm] table (base_urls, model, …)")
        return self


class EvaluateConfig(_Model):
    clips_per_prompt: int = Field(2, ge=1, description="clips per evaluation prompt (same seeds every round)")
    seen_prompts: int = Field(0, ge=0, description="training prompts also evaluated with evaluation-only noise "
                              "(the 'seen' split: memorisation, not generalisation); 0 = none")
    refine: bool = Field(False, description="also evaluate with prompt refinement at inference")
    judge: JudgeConfig | Literal[False] | None = Field(
        None, description="a second, independent judge for evaluation (the reward-hacking check). Unset: on the "
        "built-in world, its other judge (analysis by synthesis beside the analytic law checks); false: none")

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_or_false(cls, v):
        if v is None or v is False or isinstance(v, (dict, JudgeConfig)):
            return v
        raise ValueError("must be a [evaluate.judge] table (backend = …) or false (no second judge)")


class WinnerConfig(_Model):
    policy: Literal["real", "best-accepted", "real-else-best"] = "real-else-best"


class LoopTrainConfig(TrainConfig):
    """:class:`~policy.trainer.TrainConfig` plus what the loop decides about the data it trains on."""

    replay_rounds: int = Field(
        0, ge=0, description="also train on the groups of the previous N rounds (their stored clips and "
        "scores, re-encoded); 0 = strictly on-policy, only this round's groups")
    allow_empty_round: bool = Field(
        False, description="close a round with no trainable group (e.g. the judge was down) without training; "
        "by default the run stops with an error after judging the round's clips once more")


class LogConfig(_Model):
    trackers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="experiment trackers (through accelerate's): per step the training "
        "diagnostics, per round both judges' held-out joint success with CIs and winner/loser frame grids. "
        "wandb runs offline unless WANDB_API_KEY is set (and needs `pip install wandb`)")
    logging_dir: str | None = Field(None, description="where tracker files go (default: <runs_dir>/<run>/logs)")
    grids: int = Field(2, ge=0, description="winner-vs-loser frame grids logged per round")
    wandb_project: str = Field("phyloop", description="the Weights & Biases project")


class RunConfig(_Model):
    rounds: int = Field(5, ge=1)
    seed: int = 0
    runs_dir: str = "runs"
    processes: int = Field(1, ge=1, description="processes (one per GPU): `agent run` re-launches itself with "
                           "this many; generation is sharded and train.groups_per_step is split across them")
    launcher: Literal["auto", "torchrun", "accelerate"] = Field(
        "auto", description="how processes > 1 are started: 'auto' = accelerate on CUDA, torchrun on CPU "
        "(FSDP is train.fsdp, applied by the trainer, not an accelerate config)")
    collective_timeout_s: float = Field(
        6 * 3600.0, gt=0, description="how long a process waits in a collective: workers idle while rank 0 "
        "judges and refines, so this must outlast the longest judge stage")
    data: DataConfig = DataConfig()
    plan: PlanConfig = PlanConfig()
    refine: RefineConfig = RefineConfig()
    generate: GenerateConfig = GenerateConfig()
    judge: JudgeConfig = JudgeConfig()
    winner: WinnerConfig = WinnerConfig()
    train: LoopTrainConfig = LoopTrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _coherent(self) -> "RunConfig":
        if self.generate.backend == "toy" and self.data.source != "world":
            raise ValueError("the toy generator only knows the built-in world: set data.source = 'world'")
        if self.train.objective == "flow-grpo" and self.generate.backend != "toy":
            raise ValueError("train.objective = 'flow-grpo' needs the SDE sampler with per-step log-probabilities, "
                             "which only the built-in world's generator has (generate.backend = 'toy'); see the "
                             "README, 'Peer baselines', for what Wan's pipeline would need")
        if self.train.objective == "flow-grpo" and self.refine.distil:
            raise ValueError("train.objective = 'flow-grpo' trains the likelihood of the steps it sampled under the "
                             "prompt it sampled with; refine.distil (train on the original prompt) cannot apply")
        if self.train.objective == "flow-grpo" and self.train.replay_rounds:
            raise ValueError("train.objective = 'flow-grpo' compares with the log-probabilities of the policy that "
                             "sampled the round; earlier rounds' rollouts (train.replay_rounds) were sampled by "
                             "another one")
        if self.evaluate.judge is None and self.data.source == "world" and self.judge.backend != "vlm":
            # two judges built differently fail in different places: the other one evaluates
            other = "synthesis" if self.judge.backend == "physics" else "physics"
            self.evaluate.judge = JudgeConfig(backend=other)
        if self.train.groups_per_step % self.processes:
            raise ValueError(f"train.groups_per_step ({self.train.groups_per_step}) is the global batch and must be "
                             f"a multiple of processes ({self.processes})")
        return self


# ------------------------------------------------------------------ loading
def preset_path(preset: str) -> Path:
    """A preset name (``runs/<name>.toml``) or a path to a TOML file."""
    p = Path(preset)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ConfigError(f"preset file {p} does not exist")
        return p
    cand = PRESET_DIR / f"{preset}.toml"
    if not cand.is_file():
        names = ", ".join(sorted(x.stem for x in PRESET_DIR.glob("*.toml")))
        raise ConfigError(f"unknown preset {preset!r}; available: {names}")
    return cand


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides to a nested dict (copying what it changes)."""
    data = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        node = data
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a table")
            node = nxt
        node[parts[-1]] = _parse_value(value.strip())
    return data


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def _one_line(err: ValidationError) -> str:
    """The first validation problem as one line that names the key and what is allowed."""
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        model = _model_at(RunConfig, list(e["loc"])[:-1])
        allowed = ", ".join(model.model_fields) if model else "?"
        return f"unknown config key {loc!r}; allowed here: {allowed}"
    msg = e["msg"]
    extra = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"config key {loc!r}: {msg}{extra}"


def _model_at(model: type[BaseModel], loc: list) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def validate(data: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from None


def load_config(preset: str = DEFAULT_PRESET, overrides: list[str] | None = None) -> tuple[RunConfig, dict]:
    """Read a preset, apply overrides, validate. Returns the config and the raw (merged) dict."""
    path = preset_path(preset)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"preset {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"preset {path} is not valid TOML: {e}") from None
    data = apply_overrides(data, overrides or [])
    return validate(data), data


def dump(cfg: RunConfig) -> dict:
    """Every value of the config (defaults included), JSON-able, for the store."""
    return cfg.model_dump(mode="json")
