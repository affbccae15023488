"""Multi-process runs: one launch, rank 0 drives the loop, the other ranks lend it their compute.

``agent run --processes N`` (or ``processes = N`` in a preset) stores the run as usual, then
re-launches itself under ``torchrun`` (CPU) or ``accelerate launch`` (GPUs) as
``agent run --resume NAME`` with ``PHYLOOP_LAUNCHED=1`` so the launched
processes do not launch again (:func:`launch_command`, :func:`launch`).

Inside the launch every process builds a :class:`DistributedRuntime`:

* rank 0 runs the LangGraph graph exactly as a single process does: it alone opens the store,
  the graph checkpointer and the dashboard, calls the judge and the critic, and writes files;
* ranks > 0 never run the graph: :meth:`DistributedRuntime.serve` waits for rank 0's commands
  (``torch.distributed.broadcast_object_list``) and runs the distributed part of a stage:

  ``generate``  every rank generates its share of the clips (whole generator batches, the
                same batches one process would make, so the clips are bitwise those of a
                single-process run); the clips are gathered to rank 0, which stores and judges
                them;
  ``train``     rank 0 sends the round's groups (CPU tensors: pixels for the built-in world,
                VAE latents for Wan), every rank trains on its slice of each global batch, DDP
                (or FSDP2 with ``train.fsdp``) averages the gradients (see :mod:`policy.trainer`),
                so every rank ends the round with the same adapter;
  ``save``      rank 0 writes the adapter and optimizer state; the others join its barriers
                (and, under FSDP, the gathers of their shards);
  ``load``      every rank loads the same hash-verified adapter files (resume, round redo);
  ``stop``      the graph reached its end.

Object collectives go through a gloo group (CPU memory) even when the training group is NCCL,
so gathering videos never takes GPU memory. They are pickled whole: cheap for the built-in
world, but for Wan a round's clips (≈100 MB of uint8 frames each at 81×480×832, plus the
latent) all pass through rank 0's host memory, and the round's groups (latents) are sent to
every rank; writing each rank's videos from that rank would remove the first cost. The launch trap — a launcher that silently starts
fewer processes than asked (``accelerate launch --cpu --num_processes 2`` starts one) — is
caught in :meth:`DistributedRuntime.start`: a launch whose world size differs from the run's
``processes`` stops with a one-line :class:`LaunchError` before anything is stored. When any
rank dies the launcher tears the whole job down; ``agent run --resume NAME`` re-launches it and
the idempotent nodes finish the run without duplicating a row.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from agent.config import RunConfig
from agent.failpoints import failpoint
from agent.runtime import Runtime

ENV_LAUNCHED = "PHYLOOP_LAUNCHED"  # set by the launching `agent run`: do not launch again
ENV_RANK_ADAPTERS = "PHYLOOP_RANK_ADAPTERS"  # a folder: each rank writes its final LoRA there (tests)


class LaunchError(RuntimeError):
    """A multi-process launch that cannot work (wrong world size, accelerate's FSDP plugin); one line."""


def launched() -> bool:
    """True inside processes started by :func:`launch`."""
    return os.environ.get(ENV_LAUNCHED) == "1"


def rank_from_env() -> int:
    """This process's global rank as the launcher set it (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def world_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# ------------------------------------------------------------------ launching
def choose_launcher(cfg: RunConfig, cuda: bool) -> str:
    if cfg.launcher != "auto":
        return cfg.launcher
    return "accelerate" if cuda else "torchrun"


def launch_command(name: str, cfg: RunConfig, *, plain: bool = False,
                   cuda: bool | None = None) -> tuple[list[str], dict[str, str]]:
    """The command (argv) and extra environment that start run ``name`` on ``cfg.processes``
    processes: every process runs ``agent run --resume NAME`` inside the launch.

    CPU: ``torchrun --standalone --nproc_per_node N`` with ``ACCELERATE_USE_CPU=1`` (without it
    accelerate treats each process as a lone one) and ``OMP_NUM_THREADS`` = cores / N.
    GPUs: ``accelerate launch --multi_gpu --num_processes N``. Either way the trainer wraps the
    model itself: DDP, or FSDP2 with ``train.fsdp``.
    """
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    n = cfg.processes
    launcher = choose_launcher(cfg, cuda)
    tail = ["-m", "agent.cli", "run", "--resume", name, "--runs-dir", cfg.runs_dir] + (["--plain"] if plain else [])
    env = {ENV_LAUNCHED: "1"}
    if not cuda:
        env["ACCELERATE_USE_CPU"] = "1"
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n))
    if launcher == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", str(n), *tail]
    else:
        # --multi_gpu is also the form that really starts N gloo processes on a CPU (with
        # ACCELERATE_USE_CPU=1); `--cpu --num_processes N` silently starts one.
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *tail]
    return argv, env


def format_command(argv: list[str], env: dict[str, str]) -> str:
    """The command as a user would type it (``python`` for this interpreter)."""
    shown = ["python" if a == sys.executable else a for a in argv]
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(shown)


def launch(name: str, cfg: RunConfig, *, plain: bool = False) -> int:
    """Run the launch to its end and return its exit code.

    Ctrl-C reaches the launched processes too (same terminal); a second one terminates the
    launcher.
    """
    argv, env = launch_command(name, cfg, plain=plain)
    print(f"launching {cfg.processes} processes: {format_command(argv, env)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(argv, env={**os.environ, **env})
    interrupts = 0
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            interrupts += 1
            proc.send_signal(signal.SIGINT if interrupts == 1 else signal.SIGTERM)


# ------------------------------------------------------------------ sharding
def generation_batch(generator) -> int:
    """Clips per batched forward of a generator (the toy's ``max_batch``, Wan's ``batch_size``)."""
    sampling = getattr(generator, "sampling", None)
    if sampling is not None and hasattr(sampling, "max_batch"):
        return int(sampling.max_batch)
    config = getattr(generator, "config", None)
    return int(getattr(config, "batch_size", 1) or 1)


def shard_clips(n_clips: int, batch: int, world: int, rank: int) -> list[int]:
    """Flat clip indices that rank ``rank`` generates: whole batches ``rank, rank + world, …``.

    A single process cuts the flat clip list into batches of ``batch``; giving each rank whole
    batches of that same cut means every clip is computed in exactly the batch it would be in
    alone, so the result does not depend on the number of processes (CPU kernels are not
    batch-size invariant: re-batching changes the odd pixel by one).
    """
    starts = range(rank * batch, n_clips, world * batch)
    return [c for s in starts for c in range(s, min(s + batch, n_clips))]


# ------------------------------------------------------------------ the runtime
@dataclass
class DistributedRuntime(Runtime):
    """A :class:`Runtime` whose model compute is shared by all processes of one launch."""

    accelerator: Any = None
    _objects: Any = None  # process group for object collectives (gloo)

    # ------------------------------------------------------------------ setup
    def start(self) -> "DistributedRuntime":
        """Join the launch on every rank: check its size, create the process groups, attach
        and wrap the LoRA (DDP's construction is itself a collective)."""
        import torch
        import torch.distributed as dist
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, InitProcessGroupKwargs

        want, env_world = self.config.processes, world_from_env()
        hint = f"start it with `agent run --resume {self.run}`, which launches the processes itself"
        if env_world != want:
            raise LaunchError(f"run {self.run!r} needs {want} processes but this launch has {env_world} "
                              f"(WORLD_SIZE); {hint}")
        timeout = dt.timedelta(seconds=self.config.collective_timeout_s)
        acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no",
                          kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
        if acc.num_processes != want:
            raise LaunchError(f"run {self.run!r} needs {want} processes but accelerate sees {acc.num_processes} "
                              f"({acc.distributed_type.value}; on a CPU set ACCELERATE_USE_CPU=1); {hint}")
        if acc.distributed_type == DistributedType.FSDP:
            raise LaunchError("accelerate's FSDP plugin is on (an accelerate config file?); phyloop shards the "
                              "transformer itself: set train.fsdp = true and launch with `agent run`")
        self.accelerator = acc
        if want > 1 and dist.get_backend() != "gloo":
            self._objects = dist.new_group(backend="gloo", timeout=timeout)
        _ = self.trainer
        if self.rank == 0:
            g = self.config.train.groups_per_step
            self.ui.note(f"{want} processes ({acc.distributed_type.value}, "
                         f"{'FSDP2' if self.trainer.sharded else 'DDP'}): generation sharded by batch; "
                         f"global batch {g} groups/step = {g // want} per process")
        return self

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @cached_property
    def trainer(self):
        import torch

        from policy.trainer import Trainer

        if self.accelerator is None:
            raise RuntimeError("DistributedRuntime.start() must run before the trainer is built")
        generator = self.generator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.train.seed)  # the LoRA's initial weights are part of the run
            return Trainer(generator.transformer, self.config.train, on_step=self._on_train_step,
                           accelerator=self.accelerator)

    # ------------------------------------------------------------------ messaging
    def _broadcast(self, obj: Any = None) -> Any:
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._objects)
        return box[0]

    def _send(self, op: str, *args) -> None:
        if self.rank != 0:
            raise RuntimeError("only rank 0 sends commands")
        self._broadcast((op, args))

    def serve(self) -> None:
        """Ranks > 0: run rank 0's commands until it says ``stop``."""
        if self.rank == 0:
            raise RuntimeError("rank 0 drives the graph; serve() is for the other ranks")
        handlers = {"generate": self._generate_share, "train": self._train_share,
                    "save": self._save_share, "load": self._load_share}
        while True:
            op, args = self._broadcast()
            if op == "stop":
                self._dump_adapter()
                return
            handlers[op](*args)

    def stop(self) -> None:
        """Rank 0, at the end of the graph: release the other ranks."""
        self._send("stop")
        self._dump_adapter()

    # ------------------------------------------------------------------ generation
    def generate(self, prompts, seeds, group_size: int, progress=None, rollouts: bool = False):
        level = self.sde_noise_level(rollouts)
        with self.timing("model"):
            self._send("generate", list(prompts), [int(s) for s in seeds], int(group_size), level)
            return self._generate_share(list(prompts), [int(s) for s in seeds], int(group_size), level,
                                        progress=progress)

    def _generate_share(self, prompts: list[str], seeds: list[int], group_size: int,
                        sde_noise_level: float | None = None, progress=None):
        """Generate this rank's batches; on rank 0 return every clip in the single-process order."""
        import torch.distributed as dist

        clips = [(i, j) for i in range(len(prompts)) for j in range(group_size)]
        batch = generation_batch(self.generator)
        mine = shard_clips(len(clips), batch, self.world, self.rank)
        made = []
        if mine:
            local = None if progress is None else (lambda done, _total: progress(done, len(clips)))
            out = self.generator.generate([prompts[clips[c][0]] for c in mine],
                                          [seeds[clips[c][0]] + clips[c][1] for c in mine], 1, progress=local,
                                          **({} if sde_noise_level is None else {"sde_noise_level": sde_noise_level}))
            made = [(c, g[0]) for c, g in zip(mine, out)]
        if self.trainer.sharded:
            # FSDP all-gathers each block inside every forward, so every rank must run as many
            # batches as the busiest one: the short ranks generate a throw-away one-clip batch.
            most = -(-len(clips) // (batch * self.world))
            for _ in range(most - -(-len(mine) // batch)):
                self.generator.generate(prompts[:1], seeds[:1], 1)
        parts = [None] * self.world if self.rank == 0 else None
        dist.gather_object(made, parts, dst=0, group=self._objects)
        if self.rank != 0:
            return None
        by_clip = dict(pair for part in parts for pair in part)
        out = [[by_clip[n * group_size + j] for j in range(group_size)] for n in range(len(prompts))]
        if progress is not None:
            progress(len(clips), len(clips))
        return out

    # ------------------------------------------------------------------ training
    def train_round(self, groups):
        with self.timing("model"):
            self._send("train", list(groups), self._train_round)
            return self.trainer.train_round(groups)

    def _train_share(self, groups, round: int | None) -> None:
        self._train_round = round
        try:
            self.trainer.train_round(groups)
        finally:
            self._train_round = None

    def _on_train_step(self, rec: dict) -> None:
        if self.rank == 0:
            super()._on_train_step(rec)  # the store, the dashboard, the mid:train failpoint
        elif self._train_round is not None and rec["step"] + 1 == max(1, self.config.train.steps // 2):
            failpoint("mid:train", self._train_round)

    # ------------------------------------------------------------------ adapters
    def save_trainer(self, path: Path) -> None:
        self._send("save")
        super().save_trainer(path)

    def _save_share(self) -> None:
        self.trainer.save(self.layout.run_dir)  # joins rank 0's barriers; only the main process writes

    def _load_trainer(self, path: Path) -> None:
        """Every rank loads the same (already verified) adapter files."""
        self._send("load", str(path.resolve()))
        self.trainer.load(path)

    def _load_share(self, path: str) -> None:
        self.trainer.load(Path(path))

    def _dump_adapter(self) -> None:
        """With ``PHYLOOP_RANK_ADAPTERS=DIR``, write this rank's LoRA to ``DIR/rank<r>.safetensors``
        (tests check that every rank ends with the same adapter)."""
        folder = os.environ.get(ENV_RANK_ADAPTERS)
        if not folder:
            return
        from safetensors.torch import save_file

        state = {k: v.cpu().contiguous() for k, v in self.trainer.lora_state().items()}  # collective under FSDP
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file(state, str(Path(folder) / f"rank{self.rank}.safetensors"))
