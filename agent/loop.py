"""Starting and resuming runs: the glue between the CLI, the store, the runtime and the graph."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver

from store import RunLayout, remove_stale_temps, validate_run_name

from .config import ConfigError, RunConfig, dump, validate
from .graph import build_graph, recursion_limit
from .nodes import Nodes
from .runtime import Runtime, open_store
from .world_data import ensure_world_prompts


class RunError(RuntimeError):
    """A run that cannot start or resume; the message is one readable line."""


def default_run_name(preset: str) -> str:
    stem = Path(preset).stem.replace(" ", "-")
    return f"{stem}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def prepare_run(cfg: RunConfig, *, preset: str, name: str | None) -> str:
    """Validate the name, refuse to overwrite an existing run, store the run and its data."""
    name = name or default_run_name(preset)
    try:
        validate_run_name(name)
    except ValueError as e:
        raise RunError(str(e)) from None
    runs_dir = Path(cfg.runs_dir)
    store = open_store(runs_dir)
    try:
        if store.get_run(name) is not None:
            raise RunError(f"run {name!r} already exists; use `agent run --resume {name}` or another --name")
        if cfg.data.source == "world":
            ensure_world_prompts(store, cfg.data.world, runs_dir)
        elif not store.dataset_prompts(source="train"):
            raise RunError("data.source = 'store' but no prompts were imported (`agent data import FILE`)")
        env = [cfg.judge.vlm.api_key_env] if cfg.judge.vlm and cfg.judge.vlm.api_key_env else []
        store.create_run(name, dump(cfg), preset=preset, seed=cfg.seed, status="created", secret_env=env)
    finally:
        store.close()
    return name


PRE_SPLIT = ("was evaluated by a phyloop from before 2026-12-03, whose held-out prompts could share texts with "
             "training prompts; continuing it would mix two held-out pools and judges in one curve. It can still be "
             "shown, replayed and compared; start a new run to continue")


def refuse_pre_split_run(name: str, runs_dir: str | Path) -> None:
    """Raise for a run evaluated before the unseen-text held-out split (schema v3)."""
    store = open_store(runs_dir)
    try:
        if store.has_pre_split_evaluations(name):
            raise RunError(f"run {name!r} {PRE_SPLIT}")
    finally:
        store.close()


def load_run_config(name: str, runs_dir: str | Path) -> RunConfig:
    store = open_store(runs_dir)
    try:
        row = store.get_run(name)
    finally:
        store.close()
    if row is None:
        raise RunError(f"no run named {name!r} under {runs_dir}")
    refuse_pre_split_run(name, runs_dir)
    try:
        return validate(row["config"])
    except ConfigError as e:
        raise RunError(f"stored config of run {name!r} no longer validates: {e}") from None


def execute(name: str, cfg: RunConfig, *, ui=None, resume: bool = False) -> dict:
    """Run (or resume) the graph to the end of the round budget; returns the final state.

    In a multi-process launch (``processes > 1``, see :mod:`agent.distributed`) rank 0 runs the
    graph with a :class:`~agent.distributed.DistributedRuntime` and the other ranks serve its
    compute until it stops them (they return ``{}``).
    """
    from .distributed import DistributedRuntime, launched, rank_from_env

    distributed = cfg.processes > 1 or launched()
    if distributed and rank_from_env() > 0:
        DistributedRuntime(run=name, config=cfg, store=None).start().serve()
        return {}
    runs_dir = Path(cfg.runs_dir)
    layout = RunLayout(runs_dir, name)
    store = open_store(runs_dir)
    kind = DistributedRuntime if distributed else Runtime
    rt = kind(run=name, config=cfg, store=store, **({"ui": ui} if ui is not None else {}))
    if distributed:
        try:
            rt.start()  # the launch-size guard, then the collectives every rank joins
        except BaseException:
            store.close()
            raise
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(layout.run_dir)
    conn = sqlite3.connect(layout.run_dir / "graph.sqlite", check_same_thread=False)
    try:
        saver = SqliteSaver(conn)
        graph = build_graph(Nodes(rt), saver)
        config = {"configurable": {"thread_id": name}, "recursion_limit": recursion_limit(cfg.rounds)}
        snapshot = graph.get_state(config)
        started = bool(snapshot.values)
        if resume and started:
            rt.sync_adapter()
            inputs = None
        else:
            _ = rt.trainer  # attach the LoRA with the run's seed before anything generates
            inputs = {"run": name, "rounds": cfg.rounds, "round": 0}
        store.set_run_status(name, "running")
        try:
            final = graph.invoke(inputs, config)
        except BaseException as e:
            status = "stopped" if isinstance(e, KeyboardInterrupt) else "failed"
            store.set_run_status(name, status)
            raise
        store.set_run_status(name, "done")
        if distributed:
            rt.stop()
        return final
    finally:
        if "tracking" in rt.__dict__:  # started: flush and close the trackers' files
            rt.tracking.finish()
        conn.close()
        store.close()


def delete_run_files(name: str, runs_dir: str | Path) -> None:
    shutil.rmtree(RunLayout(Path(runs_dir), name).run_dir, ignore_errors=True)
