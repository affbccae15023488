"""Builds a run's live parts from its config: generator, judges, critic, trainer, store, UI.

The graph's nodes get everything through one :class:`Runtime`, so a node never decides
which backend it talks to. Models load lazily: ``agent replay`` / ``agent show`` open the
store alone and never touch torch.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from store import RunLayout, Store, default_db_path, verify

from .config import JudgeConfig, RunConfig

log = logging.getLogger("phyloop")


class NullUI:
    """The UI interface the nodes report to (the rich dashboard implements it)."""

    def stage(self, round: int, stage: str, total: int | None = None) -> None: ...

    def advance(self, done: int, total: int | None = None) -> None: ...

    def note(self, text: str) -> None: ...

    def round_done(self, run: str) -> None: ...


def make_judge(cfg: JudgeConfig):
    if cfg.backend == "physics":
        from reward.world.judge import PhysicsJudge

        return PhysicsJudge()
    if cfg.backend == "synthesis":
        from reward.world.synthesis import SynthesisJudge

        return SynthesisJudge()
    from reward.vlm.judge import VLMJudge

    return VLMJudge(cfg.vlm)


@dataclass
class Runtime:
    run: str
    config: RunConfig
    store: Store
    ui: Any = field(default_factory=NullUI)
    latents: dict = field(default_factory=dict)  # video id → latent made by this process (saves re-encoding)
    rollouts: dict = field(default_factory=dict)  # video id → SDE trajectory made by this process (flow-grpo)
    _train_round: int | None = None
    active_adapter: int | None = None  # the round whose adapter the generator carries (None: base)
    profile: dict = field(default_factory=lambda: {"model": 0.0, "judge": 0.0})  # seconds this round

    # ------------------------------------------------------------------ paths
    @property
    def runs_dir(self) -> Path:
        return Path(self.config.runs_dir)

    @cached_property
    def layout(self) -> RunLayout:
        return RunLayout(self.runs_dir, self.run)

    # ------------------------------------------------------------------ backends (lazy)
    @cached_property
    def generator(self):
        g = self.config.generate
        if g.backend == "toy":
            from policy.toy import ToyGenerator

            overrides = {k: v for k, v in (("steps", g.toy.steps), ("guidance", g.toy.guidance),
                                            ("shift", g.toy.shift), ("max_batch", g.toy.max_batch)) if v is not None}
            return ToyGenerator.from_checkpoint(g.toy.checkpoint, **overrides)
        from policy.wan import WanGenerator

        return WanGenerator(g.wan)

    @cached_property
    def trainer(self):
        from policy.trainer import Trainer

        import torch

        generator = self.generator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.train.seed)  # the LoRA's initial weights are part of the run
            return Trainer(generator.transformer, self.config.train, on_step=self._on_train_step)

    @cached_property
    def tracking(self):
        """The run's experiment trackers (``log.trackers``; none by default), started with its config."""
        from agent.config import dump
        from agent.tracking import Tracking

        t = Tracking(self.config.log, self.run, self.layout.run_dir)
        if t.active:
            t.config(dump(self.config))
        return t

    def log_round(self, k: int) -> None:
        """Send a finished round's evaluation (from the store) to the trackers."""
        if not self.config.log.trackers:
            return
        detail = self.store.round_detail(self.run, k) or {}
        metrics = next((m for m in self.store.round_metrics(self.run) if m["round"] == k), None)
        self.tracking.round(k, detail, metrics)

    @cached_property
    def judge(self):
        return make_judge(self.config.judge)

    @cached_property
    def eval_judge(self):
        ej = self.config.evaluate.judge
        return make_judge(ej) if ej else None

    @cached_property
    def critic(self):
        if self.config.refine.critic == "rules":
            from reward.world.critic import RuleCritic

            return RuleCritic()
        if self.config.refine.critic == "trained":
            from agent.trained_refiner import DEFAULT_REFINER, TrainedCritic, is_refiner_dir, keeps_every_word, world_guard
            from policy.refiner import TrainedRefiner

            path = Path(self.config.refine.refiner or DEFAULT_REFINER)
            if not is_refiner_dir(path):
                raise ValueError(f"refine.refiner: {path} holds no trained refiner (build one: scripts/build_refiner.py)")
            guard = world_guard if self.config.data.source == "world" else keeps_every_word
            return TrainedCritic(TrainedRefiner.from_pretrained(path), guard)
        from reward.vlm.critic import VLMCritic

        vlm = self.config.judge.vlm
        if vlm is None:
            raise ValueError("refine.critic = 'vlm' needs a [judge.vlm] table to reach the VLM")
        return VLMCritic(vlm)

    @cached_property
    def similarity(self):
        """Prompt similarity for refinement convergence (MiniLM sentence embeddings)."""
        from agent.refine import minilm_similarity

        return minilm_similarity()

    def judge_name(self, judge=None) -> str:
        j = judge or self.judge
        model = getattr(getattr(j, "config", None), "model", None)
        return j.name if not model else f"{j.name}:{model}"

    # ------------------------------------------------------------------ the compute the nodes ask for
    # (a multi-process runtime overrides these two to shard the work across ranks)
    def generate(self, prompts, seeds, group_size: int, progress=None, rollouts: bool = False):
        """Clips for each prompt from the generator as it is now (base + current adapter); with
        ``rollouts`` (training clips under flow-grpo) from its SDE sampler, with their trajectories."""
        level = self.sde_noise_level(rollouts)
        extra = {} if level is None else {"sde_noise_level": level}
        with self.timing("model"):
            return self.generator.generate(prompts, seeds, group_size, progress=progress, **extra)

    def sde_noise_level(self, rollouts: bool) -> float | None:
        """The SDE sampler's noise level when ``rollouts`` are asked for and the objective trains on them."""
        t = self.config.train
        return t.grpo_noise_level if rollouts and t.objective == "flow-grpo" else None

    def train_round(self, groups):
        """One round of the configured objective on ``groups``; returns the trainer's summary."""
        with self.timing("model"):
            return self.trainer.train_round(groups)

    def score_batch(self, judge, items):
        with self.timing("judge"):
            return judge.score_batch(items)

    @contextmanager
    def timing(self, what: str):
        """Adds the block's wall time to this round's profile (model compute / judge calls)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.profile[what] = self.profile.get(what, 0.0) + time.perf_counter() - t0

    def flush_profile(self, round: int) -> None:
        """Store the round's model-compute and judge-call seconds (the cost profile's denominators)."""
        for what, seconds in self.profile.items():
            self.store.record_stage_time(self.run, round, f"profile:{what}", seconds)
        self.profile = {"model": 0.0, "judge": 0.0}

    # ------------------------------------------------------------------ training bookkeeping
    def _on_train_step(self, rec: dict) -> None:
        k = self._train_round
        if k is None:
            return
        self.store.record_train_step(
            self.run, k, rec["step"], loss=_finite(rec.get("loss")), margin=_finite(rec.get("margin")),
            accuracy=_finite(rec.get("accuracy")), grad_norm=_finite(rec.get("grad_norm")), lr=rec.get("lr"),
            skipped=bool(rec.get("skipped")), reason=rec.get("reason"), alpha_mean=_finite(rec.get("alpha_mean")),
            gamma_mean=_finite(rec.get("gamma_mean")),
            extra={"t_mean": rec.get("t_mean"), "saturated": _finite(rec.get("saturated")),
                   "seconds": rec.get("seconds"), "loss_raw": repr(rec.get("loss")),
                   **{k: _finite(rec[k]) for k in PEER_DIAGNOSTICS if rec.get(k) is not None}})
        if self.config.log.trackers:
            self.tracking.step(rec)
        self.ui.advance(rec["step"] + 1, self.config.train.steps)
        if rec["step"] + 1 == max(1, self.config.train.steps // 2):
            from agent.failpoints import failpoint

            failpoint("mid:train", k)

    def save_trainer(self, path: Path) -> None:
        """Save adapter + optimizer state into ``path`` atomically (a temp folder, then rename)."""
        import shutil
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            self.trainer.save(tmp)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def init_adapter(self) -> None:
        """Save the untrained LoRA as round 0's adapter (its B = 0: the base model exactly)."""
        from store import path_bytes, sha256_dir

        if self.store.adapter(self.run, 0) is not None:
            return
        rel = self.layout.adapter_relpath(0)
        path = self.layout.path(rel)
        self.save_trainer(path)
        self.store.record_adapter(self.run, 0, path=rel, sha256=sha256_dir(path), bytes=path_bytes(path))

    def verified_adapter(self, round: int) -> Path:
        """The folder of round ``round``'s adapter, checked against its stored hash.

        A half-written or tampered adapter stops the run instead of silently training from
        the wrong weights.
        """
        row = self.store.adapter(self.run, round)
        if row is None:
            raise RuntimeError(f"run {self.run!r} has no adapter for round {round}")
        path = self.layout.path(row["path"])
        if not verify(path, row["sha256"]):
            raise RuntimeError(f"adapter of round {round} at {path} does not match its stored hash")
        return path

    def load_round_adapter(self, round: int) -> None:
        """Load round ``round``'s adapter and optimizer state (verified) into the generator."""
        self._load_trainer(self.verified_adapter(round))
        self.active_adapter = round

    def _load_trainer(self, path: Path) -> None:
        self.trainer.load(path)

    def reset_adapter(self, round: int) -> None:
        """Put the generator back to the adapter saved after ``round`` (before redoing a round)."""
        self.load_round_adapter(round)

    def sync_adapter(self) -> int | None:
        """After a restart: load the latest saved adapter; returns its round (None: none yet)."""
        row = self.store.adapter(self.run)
        if row is None:
            return None
        self.load_round_adapter(int(row["round"]))
        return int(row["round"])

    def rollouts_for(self, video_rows: list[dict]) -> list[dict]:
        """The SDE trajectories of stored training clips (flow-grpo): this process's cache, else the
        stored latent file (checked against its hash)."""
        from store import verify

        for v in video_rows:
            if v["id"] in self.rollouts:
                continue
            path = self.layout.path(v["latent_path"]) if v.get("latent_path") else None
            if path is None or not verify(path, v["latent_sha256"]):
                raise RuntimeError(f"clip {v['path']} has no stored SDE trajectory (or it fails its hash); "
                                   "flow-grpo trains on the SDE sampler's steps: delete the round's clips to "
                                   "regenerate them")
            traj = read_trajectory(path)
            if traj is None:
                raise RuntimeError(f"clip {v['path']} was generated without the SDE sampler; flow-grpo cannot "
                                   "train on it (delete the round's clips to regenerate them)")
            self.rollouts[v["id"]] = traj
        return [self.rollouts[v["id"]] for v in video_rows]

    def latents_for(self, video_rows: list[dict]):
        """Latents of stored videos: from this process's cache, else the stored latent file (kept
        where the video file is lossy; checked against its hash), else encoded from the video file."""
        import torch

        from store import read_video, verify

        for v in video_rows:
            if v["id"] not in self.latents and v.get("latent_path"):
                path = self.layout.path(v["latent_path"])
                if not verify(path, v["latent_sha256"]):
                    raise RuntimeError(f"training latent {v['latent_path']} is missing or does not match its hash; "
                                       "delete the round's clips to regenerate them")
                self.latents[v["id"]] = read_latent(path)
        missing = [v for v in video_rows if v["id"] not in self.latents]
        if missing:
            videos = [read_video(self.layout.path(v["path"])) for v in missing]
            with self.timing("model"):
                enc = self.generator.encode_videos(videos)
            for v, lat in zip(missing, enc):
                self.latents[v["id"]] = lat
        return torch.stack([self.latents[v["id"]] for v in video_rows])


#: the peer baselines' own step diagnostics (objectives.diffusion_nft / flow_grpo), kept with each step
PEER_DIAGNOSTICS = ("r_mean", "positive_error", "negative_error", "ratio_mean", "clip_fraction", "kl")


def write_latent(path, latent, trajectory: dict | None = None) -> str:
    """Write one training latent (safetensors, atomically), with its SDE ``trajectory`` tensors when
    it has one (flow-grpo: ``trajectory.latents``, ``trajectory.log_probs``, ``trajectory.sigmas``);
    returns the file's sha256."""
    from safetensors.torch import save

    from store import atomic_write_bytes, sha256_file

    tensors = {"latent": latent.detach().cpu().contiguous()}
    for k, v in (trajectory or {}).items():
        tensors[f"trajectory.{k}"] = v.detach().cpu().contiguous()
    atomic_write_bytes(path, save(tensors))
    return sha256_file(path)


def read_trajectory(path) -> dict | None:
    """The SDE trajectory stored beside a clip by :func:`write_latent`, or None if it has none."""
    from safetensors.torch import load

    tensors = load(Path(path).read_bytes())
    out = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("trajectory.")}
    return out or None


def read_latent(path):
    from safetensors.torch import load

    return load(Path(path).read_bytes())["latent"]


def _finite(x):
    import math

    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def open_store(runs_dir: str | os.PathLike) -> Store:
    return Store.open(default_db_path(runs_dir))
