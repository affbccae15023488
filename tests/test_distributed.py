"""Multi-process runs on the CPU: `agent run --processes 2` launches 2 gloo processes (torchrun)
on the built-in world. Both ranks must end with the same adapter, the run must match a
1-process run with the same global batch (the same clips bit for bit until training; the adapter, and
so the clips it makes, to float rounding; scores are compared on the clips that are identical),
the store must hold no duplicate row, a run whose rank 1 is killed mid-training must resume,
and a launch with fewer processes than the run asks for must stop with a one-line error.

A tiny random base checkpoint keeps each run to seconds; the properties checked do not depend
on the weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from agent.config import load_config
from agent.distributed import ENV_RANK_ADAPTERS, launch_command, shard_clips
from policy.lora import WEIGHT_NAME
from policy.trainer import global_batch, rank_slice
from store import Store, default_db_path, verify
from store.artifacts import read_video

SMALL = ["rounds=1", "train.steps=4", "train.groups_per_step=2", "data.world.train_scenes_per_family=1",
         "data.world.heldout_scenes_per_family=1", "plan.prompts_per_round=3",
         "generate.toy.max_batch=2",  # batches of 2 clips, so both ranks generate in every stage
         "collective_timeout_s=120"]  # a deadlock fails the test instead of hanging for hours


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from policy.toy import ToyArch, ToyGenerator

    gen = ToyGenerator.random(ToyArch(num_layers=1, ffn_dim=128, num_heads=2, head_dim=16), seed=0)
    return gen.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def agent(runs_dir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for k in ("PHYLOOP_FAILPOINT", "PHYLOOP_LAUNCHED", "RANK", "WORLD_SIZE"):
        if k not in (env or {}):
            e.pop(k, None)
    return subprocess.run([sys.executable, "-m", "agent.cli", "run", "--runs-dir", str(runs_dir), *args],
                          env=e, capture_output=True, text=True, timeout=600)


def new_run(runs_dir: Path, checkpoint: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    sets = [a for s in [*SMALL, f"generate.toy.checkpoint='{checkpoint}'"] for a in ("--set", s)]
    return agent(runs_dir, "--preset", "smoke", "--name", "r", "--plain", *sets, *extra, env=env)


def store_rows(runs_dir: Path) -> dict:
    """Everything a run must reproduce, and the natural keys that must be unique."""
    with Store.open(default_db_path(runs_dir)) as s:
        videos = s.videos("r")
        keys = [(v["round"], v["split"], v["prompt_idx"], v["kind"], v["group_index"]) for v in videos]
        assert len(keys) == len(set(keys)), "duplicate video rows"
        for v in videos:
            assert verify(runs_dir / "r" / v["path"], v["sha256"]), v["path"]
        adapters = {k: s.adapter("r", k)["path"] for k in s.completed_rounds("r")}
        return {
            "counts": {k: v for k, v in s.table_counts().items() if k not in ("events", "stage_times")},
            "rounds": s.completed_rounds("r"),
            "status": s.get_run("r")["status"],
            "videos": [(v["id"], v["sha256"], v["adapter_round"], v["path"]) for v in videos],
            "scores": [(v["id"], x["judge"], x["sa"], x["pc"], x["accept"]) for v in videos
                       for x in s.scores(v["id"])],
            "steps": len(s.train_steps("r", 1)),
            "adapters": adapters,
        }


def adapter(runs_dir: Path, rel: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix("transformer."): v for k, v in load_file(runs_dir / "r" / rel / WEIGHT_NAME).items()}


def norm(d: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in d.values())))


def minus(a: dict, b: dict) -> dict:
    assert a.keys() == b.keys()
    return {k: a[k] - b[k] for k in a}


@pytest.fixture(scope="module")
def single(tmp_path_factory, checkpoint):
    runs = tmp_path_factory.mktemp("one")
    res = new_run(runs, checkpoint)
    assert res.returncode == 0, res.stderr[-3000:]
    return runs, store_rows(runs)


def two_processes(runs: Path, checkpoint: Path, *extra: str) -> tuple[Path, dict]:
    res = new_run(runs, checkpoint, "--processes", "2", *extra, env={ENV_RANK_ADAPTERS: str(runs / "ranks")})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "launching 2 processes" in res.stderr and "torch.distributed.run" in res.stderr
    return runs, store_rows(runs)


@pytest.fixture(scope="module")
def double(tmp_path_factory, checkpoint):
    """2 processes, DDP."""
    return two_processes(tmp_path_factory.mktemp("two"), checkpoint)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, checkpoint):
    """2 processes, the transformer sharded with FSDP2 (generation in lockstep)."""
    return two_processes(tmp_path_factory.mktemp("fsdp"), checkpoint, "--set", "train.fsdp=true")


# ------------------------------------------------------------------ pure helpers
def test_clips_are_shared_in_whole_batches_of_the_single_process_cut():
    for n, batch, world in [(7, 2, 2), (6, 4, 3), (1, 16, 2), (33, 4, 8)]:
        parts = [shard_clips(n, batch, world, r) for r in range(world)]
        assert sorted(c for p in parts for c in p) == list(range(n))
        for r, p in enumerate(parts):
            cut = [p[i:i + batch] for i in range(0, len(p), batch)]  # how the rank's generator batches them
            assert all(b[0] % batch == 0 and b == list(range(b[0], b[0] + len(b))) for b in cut)
            assert all((b[0] // batch) % world == r for b in cut)


def test_global_batch_is_split_evenly():
    assert global_batch(4, 10, 2) == 4 and global_batch(4, 3, 2) == 2 and global_batch(4, 1, 2) == 2
    assert global_batch(4, 3, 1) == 3  # one process: as before, every group once
    assert [rank_slice(4, 2, r) for r in (0, 1)] == [slice(0, 2), slice(2, 4)]
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        global_batch(3, 10, 2)


def test_launch_commands(tmp_path):
    cfg, _ = load_config("smoke", ["processes=2", f"runs_dir='{tmp_path}'"])
    argv, env = launch_command("r", cfg, plain=True, cuda=False)
    assert argv[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc_per_node" in argv
    assert argv[argv.index("agent.cli"):] == ["agent.cli", "run", "--resume", "r", "--runs-dir", str(tmp_path),
                                               "--plain"]
    assert env["PHYLOOP_LAUNCHED"] == "1" and env["ACCELERATE_USE_CPU"] == "1" and "OMP_NUM_THREADS" in env
    argv, env = launch_command("r", cfg, cuda=True)
    assert "accelerate.commands.launch" in argv and "--multi_gpu" in argv and "ACCELERATE_USE_CPU" not in env
    big, _ = load_config("wan2.1-14b-8xh100")
    argv, _ = launch_command("r", big, cuda=True)
    assert argv[argv.index("--num_processes") + 1] == "8" and big.train.fsdp


def test_dry_run_of_the_8_gpu_preset_prints_launch_fsdp_and_memory(capsys):
    from agent.cli import main

    assert main(["run", "--preset", "wan2.1-14b-8xh100", "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "accelerate.commands.launch --multi_gpu --num_processes 8" in out and "--resume NAME" in out
    assert "FSDP2" in out and "WanTransformerBlock" in out and "reshard after forward" in out
    assert "global batch 8 groups/step = 1 per process" in out
    assert "training peak" in out and "with FSDP over 8 GPUs" in out


def test_config_rejects_a_global_batch_that_does_not_split():
    from agent.config import ConfigError

    with pytest.raises(ConfigError, match="multiple of processes"):
        load_config("smoke", ["processes=4", "train.groups_per_step=2"])


# ------------------------------------------------------------------ real launches
@pytest.mark.parametrize("run", ["double", "sharded"])
def test_both_ranks_end_with_the_same_adapter(run, request):
    runs, rows = request.getfixturevalue(run)
    r0, r1 = load_file(runs / "ranks" / "rank0.safetensors"), load_file(runs / "ranks" / "rank1.safetensors")
    assert r0.keys() == r1.keys() and r0
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks disagree"
    stored = adapter(runs, rows["adapters"][1])  # what rank 0 wrote
    assert all(torch.equal(stored[k], r0[k]) for k in r0)


@pytest.mark.parametrize("run", ["double", "sharded"])
def test_two_processes_reproduce_one_process(single, run, request):
    (one, a), (two, b) = single, request.getfixturevalue(run)
    assert b["status"] == "done" and b["rounds"] == [0, 1]
    assert b["counts"] == a["counts"]  # no duplicate rows, none missing
    assert [(v[0], v[2]) for v in b["videos"]] == [(v[0], v[2]) for v in a["videos"]]  # same clips, same makers
    # sharded generation from the same weights: the same clips, bit for bit
    before = [(x, y) for x, y in zip(a["videos"], b["videos"]) if x[2] in (None, 0)]
    assert before and all(x[1] == y[1] for x, y in before)
    assert b["steps"] == a["steps"] == 4
    w0 = adapter(one, a["adapters"][0])
    w1, w2 = adapter(one, a["adapters"][1]), adapter(two, b["adapters"][1])
    update, gap = norm(minus(w1, w0)), norm(minus(w2, w1))
    assert update > 1e-4  # training moved the adapter…
    assert gap <= 1e-6 * norm(w1) and gap <= 1e-3 * update, (gap, update)  # …and N processes moved it alike
    # clips from the trained adapter: the two adapters differ by float rounding (the gradient all-reduce
    # sums in another order), which may flip a pixel's uint8 rounding but never more than one grey level
    after = [(x, y) for x, y in zip(a["videos"], b["videos"]) if x[2] not in (None, 0)]
    assert after
    flipped = 0
    for x, y in after:
        va, vb = read_video(one / "r" / x[3]).astype(int), read_video(two / "r" / y[3]).astype(int)
        assert np.abs(va - vb).max() <= 1, x[0]
        flipped += int((va != vb).sum())
    assert flipped <= 1e-3 * sum(read_video(one / "r" / x[3]).size for x, _ in after), flipped
    same = {x[0] for x, y in zip(a["videos"], b["videos"]) if x[1] == y[1]}  # every identical clip, judged alike
    assert [r for r in b["scores"] if r[0] in same] == [r for r in a["scores"] if r[0] in same]


def test_an_fsdp_checkpoint_loads_in_one_process(sharded, checkpoint):
    """FSDP saves gathered tensors in the single-process formats: adapter and AdamW state."""
    from policy.toy import ToyGenerator
    from policy.trainer import Trainer

    runs, rows = sharded
    cfg, _ = load_config("smoke", [*SMALL, "train.fsdp=true"])
    trainer = Trainer(ToyGenerator.from_checkpoint(checkpoint).transformer, cfg.train)
    assert not trainer.sharded  # one process: fsdp does not apply
    trainer.load(runs / "r" / rows["adapters"][1])
    saved = adapter(runs, rows["adapters"][1])
    assert all(torch.equal(trainer.lora_state()[k], saved[k]) for k in saved)
    state = trainer.optimizer.state_dict()["state"]
    assert len(state) == len(trainer.params) and all(int(s["step"]) == 4 for s in state.values())


def test_resume_after_one_rank_is_killed(tmp_path, checkpoint, double):
    res = new_run(tmp_path, checkpoint, "--processes", "2", env={"PHYLOOP_FAILPOINT": "mid:train@1#rank1"})
    assert res.returncode != 0
    assert "continue with: agent run --resume r" in res.stderr
    with Store.open(default_db_path(tmp_path)) as s:
        assert s.adapter("r", 1) is None  # it died before the round's adapter was saved
    res = agent(tmp_path, "--resume", "r", "--plain", env={ENV_RANK_ADAPTERS: str(tmp_path / "ranks")})
    assert res.returncode == 0, res.stderr[-3000:]
    rows, (two, ref) = store_rows(tmp_path), double
    assert rows == ref
    resumed, uninterrupted = adapter(tmp_path, rows["adapters"][1]), adapter(two, ref["adapters"][1])
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_a_launch_with_fewer_processes_than_the_run_needs_stops(tmp_path, checkpoint):
    """The launch trap (e.g. `accelerate launch --cpu --num_processes 2` starts ONE process):
    the lone process must refuse to train alone, with one line and exit code 2."""
    from agent import loop

    cfg, _ = load_config("smoke", [*SMALL, "processes=2", f"runs_dir='{tmp_path}'",
                                   f"generate.toy.checkpoint='{checkpoint}'"])
    loop.prepare_run(cfg, preset="smoke", name="r")
    before = default_db_path(tmp_path).read_bytes()
    res = agent(tmp_path, "--resume", "r", "--plain", env={"PHYLOOP_LAUNCHED": "1"})
    assert res.returncode == 2, res.stderr[-3000:]
    err = res.stderr.strip()
    assert err.startswith("error: run 'r' needs 2 processes but this launch has 1") and len(err.splitlines()) == 1
    assert default_db_path(tmp_path).read_bytes() == before
    assert not (tmp_path / "r" / "graph.sqlite").exists()


def test_agent_run_refuses_to_run_under_a_foreign_launcher(tmp_path, monkeypatch, capsys):
    from agent.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("PHYLOOP_LAUNCHED", raising=False)
    assert main(["run", "--preset", "smoke", "--runs-dir", str(tmp_path)]) == 2
    assert "launches its own processes" in capsys.readouterr().err
    assert not default_db_path(tmp_path).exists()
