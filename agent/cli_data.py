"""``agent data …``: import prompt data sets, curate them with the CoT physics filter, count categories.

    agent data import prompts.jsonl [--name NAME] [--categories general|world|FILE]
    agent data curate [--dataset NAME] [--curator auto|world|vlm] [--vlm-url URL --vlm-model M]
    agent data categories [--dataset NAME]

Bad input gets one ``error: …`` line (for a bad data set, followed by one line per bad row)
and exit code 2, with the database unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

data_app = typer.Typer(no_args_is_help=True, help="Prompt data sets: import (with real videos), curate with the "
                       "chain-of-thought physics filter, count prompts per action category.")

MAX_LISTED = 20  # failures listed by `curate` before "… and N more"


def _fail(message: str) -> None:
    from agent.cli import fail  # imported late: agent.cli registers this app

    fail(message)


def _runs_dir_opt():
    return typer.Option("runs", "--runs-dir", help="folder holding the database and the copied videos")


# ------------------------------------------------------------------ import
@data_app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="JSONL or CSV: one row per prompt with the fields prompt (required), "
                                "video, category, split (train|heldout), id"),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="data set name; prompt ids become NAME:ROW "
                                       "(default: the file name without suffix)"),
    heldout_fraction: float = typer.Option(0.2, "--heldout-fraction", help="share of rows without a 'split' that "
                                           "are held out (a deterministic hash of the prompt id decides)"),
    categories: str = typer.Option("general", "--categories", help="action categories for rows without one: "
                                   "'general', 'world' or a file of 'name: description' lines"),
    runs_dir: str = _runs_dir_opt(),
):
    """Validate every row, then copy the real videos and store the prompts (all or nothing)."""
    from agent.data import DatasetError, import_dataset

    try:
        report = import_dataset(file, runs_dir, name=name, heldout_fraction=heldout_fraction, categories=categories)
    except DatasetError as e:
        _fail(str(e))
    counts = report.counts
    print(f"imported {len(report.rows)} prompts as data set {report.name!r}: {counts['train']} train, "
          f"{counts['heldout']} heldout, {report.videos} with a real video")
    how = f" ({report.clustered} matched with the {categories!r} list)" if report.clustered else ""
    print("categories" + how + ": " + ", ".join(f"{c} {n}" for c, n in sorted(report.categories.items())))
    for line in report.low_similarity[:MAX_LISTED]:
        print(f"  uncertain category: {line}")
    for w in report.warnings:
        print(f"warning: {w}")
    print(f"next: agent data curate --dataset {report.name}" + (f" --runs-dir {runs_dir}" if runs_dir != "runs" else ""))


# ------------------------------------------------------------------ curate
def _vlm_config(preset: Optional[str], urls: List[str], model: Optional[str], api_key_env: Optional[str],
                n_frames: Optional[int]):
    """The VLM to curate with: a preset's [judge.vlm] table, overridden by the command-line options."""
    from pydantic import ValidationError

    from reward.vlm.config import VLMConfig

    base: dict = {}
    if preset is not None:
        from agent.config import ConfigError, load_config

        try:
            cfg, _ = load_config(preset, [])
        except ConfigError as e:
            _fail(str(e))
        if cfg.judge.vlm is None:
            _fail(f"preset {preset!r} has no [judge.vlm] table; pass --vlm-url and --vlm-model instead")
        base = cfg.judge.vlm.model_dump()
    elif not urls:
        return None
    for key, value in (("base_urls", urls or None), ("model", model), ("api_key_env", api_key_env),
                       ("n_frames", n_frames)):
        if value is not None:
            base[key] = value
    try:
        return VLMConfig(**base)
    except ValidationError as e:
        err = e.errors()[0]
        _fail(f"VLM setting {'.'.join(map(str, err['loc']))}: {err['msg']}")


@data_app.command("curate")
def curate_cmd(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="curate this data set only ('world': the "
                                          "built-in world's prompts); default: every stored prompt"),
    curator: str = typer.Option("auto", "--curator", help="'auto' (the analytic world curator for the built-in "
                                "world's prompts, the VLM for the rest), 'world' or 'vlm'"),
    force: bool = typer.Option(False, "--force", help="curate again prompts that already have a record"),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="take the VLM from this preset's [judge.vlm]"),
    vlm_url: List[str] = typer.Option([], "--vlm-url", help="OpenAI-compatible base URL (repeatable)"),
    vlm_model: Optional[str] = typer.Option(None, "--vlm-model", help="model name on that server"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="NAME of the env var holding the API key"),
    n_frames: Optional[int] = typer.Option(None, "--n-frames", help="frames shown to the VLM per video"),
    runs_dir: str = _runs_dir_opt(),
):
    """Run the chain-of-thought physics filter (PhyGDPO Alg. 1) and store its JSON per prompt."""
    from agent.curate import WorldCurator, curate_prompts, select
    from store import Store, default_db_path

    if curator not in ("auto", "world", "vlm"):
        _fail(f"--curator must be auto, world or vlm, got {curator!r}")
    db = default_db_path(runs_dir)
    if not db.is_file() and dataset != "world":
        _fail(f"no database at {db}; import a data set first (agent data import FILE) or use --dataset world")
    vlm_cfg = _vlm_config(preset, vlm_url, vlm_model, api_key_env, n_frames)
    with Store.open(db) as store:
        if dataset == "world" and not any(p["id"].startswith("world:") for p in store.dataset_prompts()):
            from agent.config import WorldDataConfig
            from agent.world_data import ensure_world_prompts

            print("storing the built-in world's default prompt pool (with its real videos) first")
            ensure_world_prompts(store, WorldDataConfig(), Path(runs_dir))
        prompts = store.dataset_prompts()
        if dataset is not None and not any(p["id"].startswith(f"{dataset}:") for p in prompts):
            _fail(f"no data set {dataset!r} in {db}")
        if not prompts:
            _fail(f"no prompts stored in {db}; import a data set first (agent data import FILE)")
        todo, skipped = select(prompts, dataset=dataset, force=force)
        needs_vlm = curator == "vlm" or (curator == "auto" and any(not _is_world(p) for p in todo))
        vlm = None
        if needs_vlm:
            if vlm_cfg is None:
                _fail("curating imported prompts needs a VLM: pass --vlm-url URL --vlm-model NAME, or --preset "
                      "with a [judge.vlm] table (or use --curator world for the analytic curator)")
            from agent.curate import VLMCurator

            try:
                vlm = VLMCurator(vlm_cfg)
            except ValueError as e:  # e.g. the API key variable is not set
                _fail(str(e))
        world = WorldCurator() if curator != "vlm" else None

        def pick(p: dict):
            if curator == "world" or (curator == "auto" and _is_world(p)):
                return world
            return vlm

        def progress(done: int, total: int) -> None:
            print(f"  curated {done}/{total}", flush=True)

        if skipped:
            print(f"skipping {len(skipped)} prompts that are already curated (--force to redo them)")
        report = curate_prompts(store, runs_dir, todo, pick, progress=progress if len(todo) > 32 else None)
    print(f"curated {len(report.curated)} prompts: {report.rich} physics-rich (richness ≥ 0.6), "
          f"{len(report.curated) - report.rich} below; {len(report.failed)} failed")
    for f in report.failed[:MAX_LISTED]:
        print(f"  failed {f.id}: {f.reason}")
    if len(report.failed) > MAX_LISTED:
        print(f"  … and {len(report.failed) - MAX_LISTED} more")
    if report.failed:
        # SystemExit, not typer.Exit: with standalone_mode=False click turns typer.Exit into a
        # return value that agent.cli.main does not pass on
        raise SystemExit(1)


def _is_world(prompt: dict) -> bool:
    return prompt["id"].startswith("world:")


# ------------------------------------------------------------------ categories
@data_app.command("categories")
def categories_cmd(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="count this data set only"),
    runs_dir: str = _runs_dir_opt(),
):
    """Print how many stored prompts each action category holds (per split, curated, physics-rich)."""
    from collections import Counter, defaultdict

    from rich.console import Console
    from rich.table import Table

    from store import Store, default_db_path

    db = default_db_path(runs_dir)
    if not db.is_file():
        _fail(f"no database at {db}; import a data set first (agent data import FILE)")
    with Store.open(db) as store:
        prompts = [p for p in store.dataset_prompts() if dataset is None or p["id"].startswith(f"{dataset}:")]
    if not prompts:
        _fail(f"no prompts stored{'' if dataset is None else f' for data set {dataset!r}'} in {db}")
    counts: dict[str, Counter] = defaultdict(Counter)
    for p in prompts:
        c = counts[p["category"] or "(none)"]
        c[_split_of_source(p["source"])] += 1
        c["total"] += 1
        cur = p.get("curate") or {}
        if cur:
            c["curated"] += 1
            c["rich"] += int(cur.get("physics_label", 0))
        c["video"] += int(bool(p.get("real_video")))
    sources = [s for s in ("train", "heldout", "other") if any(c[s] for c in counts.values())]
    t = Table(title=f"prompts per category in {db}" + ("" if dataset is None else f" (data set {dataset})"))
    for col in ["category", *sources, "total", "real video", "curated", "rich"]:
        t.add_column(col, justify="left" if col == "category" else "right")
    for cat in sorted(counts, key=lambda k: (-counts[k]["total"], k)):
        c = counts[cat]
        t.add_row(cat, *(str(c[s]) for s in sources), str(c["total"]), str(c["video"]), str(c["curated"]),
                  str(c["rich"]))
    Console().print(t)


def _split_of_source(source: str | None) -> str:
    """Imported prompts are sources train/heldout, the built-in world's world-train/world-heldout."""
    for split in ("train", "heldout"):
        if source in (split, f"world-{split}"):
            return split
    return "other"
