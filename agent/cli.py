"""The ``agent`` command line.

    agent run --rounds 5                 run the loop on the built-in physics world
    agent run --preset smoke             a two-round check in about a minute
    agent run --resume RUN               continue a run that crashed or was stopped
    agent runs                           list runs
    agent show RUN --round K             one round: prompts, refinements, scores, training
    agent replay RUN                     re-render the dashboard round by round from the store
    agent compare RUN_A RUN_B            paired difference on the same held-out clips, with a 95 % CI
    agent world render|judge|sample      the built-in world's tools

Bad input gets a one-line ``error: …`` on stderr and exit code 2; nothing stored is touched.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from agent.cli_data import data_app

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="phyloop: post-train text-to-video models to obey physics (plan → refine → generate → "
                       "judge → PhyGDPO train → evaluate, round after round).")
world_app = typer.Typer(no_args_is_help=True, help="The built-in physics world: render, judge and sample videos.")
app.add_typer(world_app, name="world")
app.add_typer(data_app, name="data")

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """Raised for user errors; printed as one line, exit code 2."""


def fail(message: str) -> None:
    raise BadInput(message)


def _runs_dir_opt(default: str = "runs"):
    return typer.Option(default, "--runs-dir", help="folder holding the run database and run outputs")


# ------------------------------------------------------------------ run
@app.command()
def run(
    preset: str = typer.Option("default", "--preset", "-p", help="preset name in runs/ (default, smoke, "
                               "wan2.1-1.3b, wan2.1-14b-8xh100) or a path to a TOML file"),
    rounds: Optional[int] = typer.Option(None, "--rounds", "-r", help="number of training rounds (≥ 1)"),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="run name (letters, digits, . _ -); "
                                       "default: <preset>-<timestamp>"),
    resume: Optional[str] = typer.Option(None, "--resume", help="resume the named run where it stopped"),
    overrides: List[str] = typer.Option([], "--set", "-s", help="override a config value, e.g. "
                                        "--set train.steps=40 (repeatable)"),
    runs_dir: Optional[str] = typer.Option(None, "--runs-dir", help="where runs live (default: the preset's "
                                           "runs_dir, 'runs')"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate the preset and print the plan; load nothing"),
    plain: bool = typer.Option(False, "--plain", help="plain log lines instead of the live dashboard"),
    processes: Optional[int] = typer.Option(None, "--processes", help="processes (one per GPU); the run "
                                            "re-launches itself under torchrun/accelerate with this many"),
    log_with: List[str] = typer.Option([], "--log-with", help="experiment tracker: tensorboard or wandb "
                                       "(repeatable; files under runs/<name>/logs; wandb offline without "
                                       "WANDB_API_KEY); the same as --set log.trackers=[...]"),
):
    """Run the self-improvement loop (the built-in physics world unless the preset says otherwise)."""
    from agent import loop
    from agent.config import ConfigError, load_config
    from agent.distributed import launched, world_from_env

    if rounds is not None and rounds < 1:
        fail(f"--rounds must be at least 1, got {rounds}")
    if processes is not None and processes < 1:
        fail(f"--processes must be at least 1, got {processes}")
    if world_from_env() > 1 and not launched():
        fail("`agent run` launches its own processes (--processes N or the preset's `processes`); "
             "do not start it under torchrun or accelerate launch")
    if resume is not None:
        if overrides or dry_run or name or processes is not None or log_with:
            fail("--resume takes the run's stored config; do not combine it with --set, --name, --processes, "
                 "--log-with or --dry-run")
        rdir = runs_dir or "runs"
        try:
            cfg = loop.load_run_config(resume, rdir)
        except loop.RunError as e:
            fail(str(e))
        if rounds is not None and rounds != cfg.rounds:
            fail(f"run {resume!r} was started with {cfg.rounds} rounds; resume keeps that budget")
        if cfg.processes > 1 and not launched():
            _launch(resume, cfg, plain)
            return
        _execute(resume, cfg, plain, resume=True)
        return

    extra = list(overrides)
    if rounds is not None:
        extra.append(f"rounds={rounds}")
    if processes is not None:
        extra.append(f"processes={processes}")
    if runs_dir is not None:
        extra.append(f"runs_dir={json.dumps(runs_dir)}")
    if log_with:
        extra.append(f"log.trackers={json.dumps(list(dict.fromkeys(log_with)))}")
    try:
        cfg, _ = load_config(preset, extra)
    except ConfigError as e:
        fail(str(e))
    if dry_run:
        from agent.plan_print import print_plan

        print_plan(cfg, preset)
        return
    _check_backends(cfg)
    try:
        run_name = loop.prepare_run(cfg, preset=preset, name=name)
    except loop.RunError as e:
        fail(str(e))
    if cfg.processes > 1:
        _launch(run_name, cfg, plain)
        return
    _execute(run_name, cfg, plain, resume=False)


def _launch(name: str, cfg, plain: bool) -> None:
    """Start the run's processes (each runs `agent run --resume NAME`) and wait for them."""
    from agent.distributed import launch

    rc = launch(name, cfg, plain=plain)
    if rc != 0:
        print(f"error: the {cfg.processes}-process run stopped (launcher exit code {rc}); continue with: "
              f"agent run --resume {name}" + (f" --runs-dir {cfg.runs_dir}" if cfg.runs_dir != "runs" else ""),
              file=sys.stderr)
        raise typer.Exit(rc if rc > 0 else 1)


def _check_backends(cfg) -> None:
    """Fail fast, before anything is stored, on settings that cannot work on this machine."""
    if cfg.generate.backend == "toy" and cfg.generate.toy.checkpoint:
        if not Path(cfg.generate.toy.checkpoint).is_file():
            fail(f"generate.toy.checkpoint {cfg.generate.toy.checkpoint!r} does not exist")
    if cfg.refine.enabled and cfg.refine.critic == "trained":
        from agent.trained_refiner import DEFAULT_REFINER, is_refiner_dir

        path = Path(cfg.refine.refiner or DEFAULT_REFINER)
        if not is_refiner_dir(path):
            fail(f"refine.refiner {str(path)!r} holds no trained refiner (build one with scripts/build_refiner.py)")
    import importlib.util

    for tracker in cfg.log.trackers:
        if importlib.util.find_spec(tracker) is None:
            fail(f"log.trackers has {tracker!r} but the {tracker} package is not installed (pip install {tracker})")
    if cfg.generate.backend == "wan":
        from policy.wan import ModelNotFound, resolve_model

        try:
            resolve_model(cfg.generate.wan.model)
        except ModelNotFound as e:
            fail(str(e))


def _execute(name: str, cfg, plain: bool, *, resume: bool) -> None:
    from agent import loop
    from agent.dashboard import Dashboard
    from agent.distributed import LaunchError, rank_from_env
    from agent.nodes import EmptyRoundError
    from agent.runtime import open_store

    if rank_from_env() > 0:  # a worker of a multi-process run: no dashboard, rank 0 reports
        try:
            loop.execute(name, cfg, resume=resume)
        except LaunchError as e:
            fail(str(e))
        return
    console = Console()
    store = open_store(cfg.runs_dir)
    t0 = time.perf_counter()
    try:
        with Dashboard(store, name, cfg.rounds, console=console, live=False if plain else None) as ui:
            loop.execute(name, cfg, ui=ui, resume=resume)
    except LaunchError as e:
        fail(str(e))
    except EmptyRoundError as e:
        console.print(f"[red]error:[/] {e}; continue with: agent run --resume {name}"
                      + (f" --runs-dir {cfg.runs_dir}" if cfg.runs_dir != "runs" else ""), highlight=False)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print(f"[yellow]stopped; continue with: agent run --resume {name}"
                      + (f" --runs-dir {cfg.runs_dir}" if cfg.runs_dir != "runs" else ""))
        raise typer.Exit(130)
    finally:
        store.close()
    console.print(f"run [bold]{name}[/] finished in {time.perf_counter() - t0:.0f}s — "
                  f"inspect with `agent show {name}` or `agent replay {name}`")


# ------------------------------------------------------------------ inspection
@app.command()
def runs(runs_dir: str = _runs_dir_opt()):
    """List the runs stored under --runs-dir."""
    from rich.table import Table

    from agent.runtime import open_store

    _require_db(runs_dir)
    store = open_store(runs_dir)
    try:
        rows = store.list_runs()
    finally:
        store.close()
    t = Table(title=f"runs in {runs_dir}")
    for col in ("name", "preset", "status", "rounds done", "created"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["preset"] or "", r["status"], str(max(0, (r["rounds_done"] or 0) - 1)),
                  r["created_at"] or "")
    Console().print(t)


def _require_db(runs_dir: str) -> None:
    from store import default_db_path

    if not default_db_path(runs_dir).is_file():
        fail(f"no runs under {runs_dir!r} (no database at {default_db_path(runs_dir)})")


def _open_run(run: str, runs_dir: str):
    from agent.runtime import open_store

    _require_db(runs_dir)
    store = open_store(runs_dir)
    if store.get_run(run) is None:
        store.close()
        fail(f"no run named {run!r} under {runs_dir!r}")
    return store


@app.command()
def show(run: str = typer.Argument(..., help="run name"),
         round: Optional[int] = typer.Option(None, "--round", "-k", help="round to show (default: the last)"),
         runs_dir: str = _runs_dir_opt()):
    """Print one round: prompts and refinements, every video's scores, training and evaluation."""
    from agent.replay import print_round

    store = _open_run(run, runs_dir)
    try:
        rounds = [r["round"] for r in store.round_metrics(run, done_only=False)]
        if not rounds:
            fail(f"run {run!r} has no rounds yet")
        k = rounds[-1] if round is None else round
        if k not in rounds:
            fail(f"run {run!r} has no round {k}; it has rounds {rounds[0]}–{rounds[-1]}")
        print_round(store, run, k, Console())
    finally:
        store.close()


@app.command()
def replay(run: str = typer.Argument(..., help="run name"),
           delay: float = typer.Option(0.0, "--delay", help="seconds to pause between rounds"),
           export: Optional[Path] = typer.Option(None, "--export", help="also write the final dashboard to "
                                                 "FILE.svg or FILE.html"),
           plot: Optional[Path] = typer.Option(None, "--plot", help="write the learning curves (every judge, "
                                               "Wilson bands; the training loss) to FILE.png instead"),
           runs_dir: str = _runs_dir_opt()):
    """Re-render the dashboard round by round from the store alone (no model is loaded)."""
    from agent.replay import plot_curves, replay_run

    if export is not None and export.suffix.lower() not in (".svg", ".html"):
        fail(f"--export must end in .svg or .html, got {export.name!r}")
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        fail(f"--plot must end in .png, .svg or .pdf, got {plot.name!r}")
    store = _open_run(run, runs_dir)
    try:
        if plot is not None:
            try:
                print(f"wrote {plot_curves(store, run, plot)}")
            except ValueError as e:
                fail(str(e))
            return
        replay_run(store, run, Console(record=export is not None), delay=delay, export=export)
    finally:
        store.close()


# ------------------------------------------------------------------ evaluation and artifacts
@app.command("compare")
def compare_cmd(run_a: str = typer.Argument(..., help="side A: a run, or comma-separated runs (one per seed)"),
                run_b: str = typer.Argument(..., help="side B: a run, or comma-separated runs paired with A's by "
                                            "their config seed"),
                round: Optional[int] = typer.Option(None, "--round", "-k", help="round to compare (default: the "
                                                    "last round finished in every run)"),
                base_round: Optional[int] = typer.Option(None, "--base-round", help="side A's round when it differs, "
                                                         "e.g. `agent compare R R --round 5 --base-round 0`"),
                split: str = typer.Option("heldout", "--split", help="heldout (unseen prompt texts), seen or "
                                          "paraphrase"),
                judge: List[str] = typer.Option([], "--judge", "-j", help="judge to compare (repeatable; default: "
                                                "every judge both sides have)"),
                refined: bool = typer.Option(False, "--refined", help="compare the refined-prompt evaluations"),
                gap: bool = typer.Option(False, "--gap", help="instead: the reward-hacking gap of RUN_B (gain over "
                                         "--base-round, default 0, under the training judge − under the other)"),
                json_path: Optional[Path] = typer.Option(None, "--json", help="also write the result as JSON"),
                runs_dir: str = _runs_dir_opt()):
    """Paired comparison of two runs (or two rounds) on the same evaluation clips.

    Clips pair on (prompt, clip index, noise seed): runs with the same seed evaluate the same held-out
    clips every round. Prints joint success of each side with Wilson 95 % CIs, the paired difference in
    pp with a 95 % cluster-bootstrap CI (prompt texts resampled) and its p-value, per category and per
    prompt level; several runs per side are paired by seed and averaged (stratified bootstrap).
    """
    from agent.compare import compare_runs, render, reward_hacking_gap, write_json
    from agent.dashboard import judge_label
    from store import EVAL_SPLITS

    if split not in EVAL_SPLITS:
        fail(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    side_a = [r.strip() for r in run_a.split(",") if r.strip()]
    side_b = [r.strip() for r in run_b.split(",") if r.strip()]
    if not side_a or not side_b:
        fail("RUN_A and RUN_B each need at least one run name")
    for r in side_a + side_b:
        _open_run(r, runs_dir).close()
    store = _open_run(side_b[0], runs_dir)
    try:
        try:
            if gap:
                if len(side_b) != 1:
                    fail("--gap takes one run (RUN_B)")
                run = side_b[0]
                training = judge_label(store.get_run(run)["config"])
                done = store.completed_rounds(run)
                if not done:
                    fail(f"run {run!r} has no finished round to compare")
                k = done[-1] if round is None else round
                if k not in done:
                    fail(f"run {run!r} has no finished round {k}; finished rounds: {done}")
                if k == (base_round or 0):
                    fail(f"--gap compares round {k} with round {base_round or 0}: pick two different rounds")
                others = [j for j in judge or [] if j != training]
                if not others:
                    evals = (store.round_detail(run, k) or {}).get("evaluations", [])
                    others = sorted({e["judge"] for e in evals if e["judge"] != training and e["split"] == split})
                if not others:
                    fail(f"run {run!r} has no second judge's evaluation in round {k}")
                res = reward_hacking_gap(store, run, k, train_judge=training, eval_judge=others[0], split=split,
                                         base_round=base_round or 0, refined=refined)
            else:
                res = compare_runs(store, side_a, side_b, round=round, round_a=base_round, split=split,
                                   judges=judge or None, refined=refined)
        except ValueError as e:
            fail(str(e))
        render(res, Console())
        if json_path is not None:
            try:
                write_json(res, json_path)
            except OSError as e:
                fail(f"cannot write {json_path}: {e.strerror or e}")
    finally:
        store.close()


@app.command("eval")
def eval_cmd(run: str = typer.Argument(..., help="run name"),
             round: Optional[int] = typer.Option(None, "--round", "-k", help="round to evaluate (default: last)"),
             refine: bool = typer.Option(False, "--refine", help="also evaluate with prompt refinement at inference"),
             baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="also evaluate round 0 for gains"),
             overrides: List[str] = typer.Option([], "--set", "-s", help="override the stored config for this "
                                                 "evaluation, e.g. a second judge: --set evaluate.judge.backend="
                                                 "'vlm' --set evaluate.judge.vlm.model='…'"),
             runs_dir: str = _runs_dir_opt()):
    """Held-out evaluation of a round (joint success, sa, pc, accept rate, per category), by every judge."""
    from agent.config import ConfigError, apply_overrides, dump, validate
    from agent.evaluation import run_eval

    bad = [o for o in overrides if o.split("=", 1)[0].strip().startswith(("data.", "seed", "evaluate.clips",
                                                                          "evaluate.seen"))]
    if bad:
        fail(f"--set {bad[0]!r}: the evaluation prompts, clips and seeds are the run's own; only judges and "
             "generation settings may be overridden")
    store = _open_run(run, runs_dir)
    try:
        if store.has_pre_split_evaluations(run):
            from agent.loop import PRE_SPLIT

            fail(f"run {run!r} {PRE_SPLIT}")
        try:
            cfg = validate(apply_overrides(dump(validate(store.get_run(run)["config"])), list(overrides)))
        except ConfigError as e:
            fail(str(e))
        done = store.completed_rounds(run)
        if not done:
            fail(f"run {run!r} has no finished round to evaluate")
        k = done[-1] if round is None else round
        if store.adapter(run, k) is None:
            fail(f"run {run!r} has no adapter for round {k}; finished rounds: {done}")
        run_eval(run, cfg, store, k, refine=refine, baseline=baseline)
    finally:
        store.close()


@app.command("export")
def export_cmd(run: str = typer.Argument(..., help="run name"),
               round: Optional[int] = typer.Option(None, "--round", "-k", help="round (default: last finished)"),
               format: str = typer.Option("diffusers", "--format", "-f", help="diffusers | comfyui"),
               out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (diffusers) or "
                                                  ".safetensors file (comfyui)"),
               runs_dir: str = _runs_dir_opt()):
    """Export a round's LoRA for other tools: diffusers (`WanPipeline.load_lora_weights`) or ComfyUI."""
    import shutil

    from store import RunLayout, verify

    if format not in ("diffusers", "comfyui"):
        fail(f"--format must be 'diffusers' or 'comfyui', got {format!r}")
    store = _open_run(run, runs_dir)
    try:
        done = store.completed_rounds(run)
        k = (done[-1] if done else None) if round is None else round
        row = None if k is None else store.adapter(run, k)
        if row is None:
            fail(f"run {run!r} has no adapter for round {k}")
        src = RunLayout(Path(runs_dir), run).path(row["path"])
        if not verify(src, row["sha256"]):
            fail(f"the adapter of round {k} does not match its stored hash; not exporting it")
    finally:
        store.close()
    if format == "comfyui":
        from policy.export import export_comfyui

        dest = out or Path(f"{run}-round{k}-comfyui.safetensors")
        if dest.suffix != ".safetensors":
            fail(f"a ComfyUI LoRA is one .safetensors file; got {dest.name!r}")
        export_comfyui(src, dest)
    else:
        from policy.lora import WEIGHT_NAME

        dest = out or Path(f"{run}-round{k}-lora")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / WEIGHT_NAME, dest / WEIGHT_NAME)
    print(f"wrote {dest}")


@app.command("grid")
def grid_cmd(run: str = typer.Argument(..., help="run name"),
             round: int = typer.Option(..., "--round", "-k", help="round"),
             out: Path = typer.Option(Path("groups.mp4"), "--out", "-o", help=".mp4, .gif or .npy"),
             runs_dir: str = _runs_dir_opt()):
    """Write a round's groups as one video: each row a prompt, the winner beside its losers."""
    from agent.grid import write_round_grid
    from store import RunLayout

    _check_video_suffix(out)
    store = _open_run(run, runs_dir)
    try:
        write_round_grid(store, RunLayout(Path(runs_dir), run), run, round, Path(runs_dir), out)
    except ValueError as e:
        fail(str(e))
    finally:
        store.close()
    print(f"wrote {out}")


# ------------------------------------------------------------------ the VLM server
@app.command("serve-vlm")
def serve_vlm_cmd(
    vllm: Path = typer.Option(..., "--vllm", help="the `vllm` executable or the Python of vLLM's own environment "
                              "(vLLM pins its own torch; never install it beside phyloop)"),
    model: str = typer.Option("Qwen/Qwen2.5-VL-7B-Instruct", "--model", help="VLM to serve"),
    port: int = typer.Option(8000, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", "--tp"),
    max_model_len: int = typer.Option(32768, "--max-model-len"),
    limit_images: int = typer.Option(8, "--limit-images", help="images per prompt (frames per video)"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="NAME of an env var holding the key "
                                              "clients must send"),
    wait_timeout: float = typer.Option(1800.0, "--wait-timeout", help="seconds to wait for the server to answer"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the vLLM command and exit"),
):
    """Start `vllm serve MODEL` for the judge, wait until it answers, print the base URL for a preset."""
    from agent.serve_vlm import build_command, serve_vlm

    argv = build_command(vllm, model, port, tensor_parallel_size, max_model_len, limit_images, host=host)
    if dry_run:
        import shlex

        print(" ".join(shlex.quote(a) for a in argv))
        return
    if not vllm.exists():
        fail(f"no vLLM executable at {vllm} (create its environment first; see README 'Running on GPUs')")
    try:
        server = serve_vlm(vllm, model, port, tensor_parallel_size, max_model_len, limit_images,
                           wait_timeout=wait_timeout, host=host, api_key_env=api_key_env)
    except ValueError as e:
        fail(str(e))
    print(f"vLLM is serving {model}; put this in your preset's [judge.vlm]:")
    print(f'  base_urls = ["{server.base_url}"]')
    print(f'  model = "{model}"')
    print("Ctrl-C stops the server.")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()


# ------------------------------------------------------------------ the built-in world
@world_app.command("render")
def world_render(family: str = typer.Argument(..., help="drop, projectile, slide or collision"),
                 seed: int = typer.Argument(0, help="scene seed"),
                 out: Path = typer.Option(Path("scene.mp4"), "--out", "-o", help="output .mp4, .gif (8× larger "
                                          "for viewing) or .npy (exact pixels)")):
    """Render a scene's physically correct (real) video to a file and print its prompts."""
    from reward.world.tools import render_scene, save_video

    try:
        video, _, scene = render_scene(family, seed)
        save_video(out, video)
    except ValueError as e:
        fail(str(e))
    print(f"wrote {out}")
    for level, p in enumerate(scene.prompts):
        print(f"  level {level}: {p}")


@world_app.command("judge")
def world_judge(video: Path = typer.Argument(..., help="video file (.npy, .mp4, .gif; any size)"),
                prompt: str = typer.Argument(..., help="the prompt the video should show")):
    """Judge a video file against a prompt with the analytic physics judge."""
    from reward.world.tools import judge_video, load_video

    _check_prompt(prompt)
    try:
        v = load_video(video)
    except FileNotFoundError:
        fail(f"no video at {video}")
    except Exception as e:  # noqa: BLE001 — any decoder failure is bad input here
        fail(f"cannot read video {video}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    s = judge_video(prompt, v)
    print(f"sa {s.sa:.2f}  pc {s.pc:.2f}  verdict {'Accept' if s.accept else 'Reject'}")
    print(f"rationale: {s.rationale}")


@world_app.command("sample")
def world_sample(prompt: str = typer.Argument(..., help="prompt"),
                 out: Path = typer.Option(Path("sample.mp4"), "--out", "-o", help="output .mp4, .gif or .npy"),
                 seed: int = typer.Option(0, "--seed"),
                 adapter: Optional[Path] = typer.Option(None, "--adapter", help="a round's adapter folder"),
                 judge: bool = typer.Option(True, "--judge/--no-judge", help="also judge the sample")):
    """Sample a clip from the built-in world's generator (optionally with a trained adapter)."""
    from policy.toy import ToyGenerator
    from reward.world.tools import judge_video, save_video

    _check_prompt(prompt)
    _check_video_suffix(out)
    if adapter is not None and not adapter.is_dir():
        fail(f"no adapter folder at {adapter}")
    gen = ToyGenerator.from_checkpoint()
    if adapter is not None:
        gen.load_adapter(adapter)
    clip = gen.generate([prompt], [seed], 1)[0][0]
    save_video(out, clip.video)
    print(f"wrote {out}")
    if judge:
        s = judge_video(prompt, clip.video)
        print(f"sa {s.sa:.2f}  pc {s.pc:.2f}  verdict {'Accept' if s.accept else 'Reject'} — {s.rationale}")


MAX_PROMPT_CHARS = 2000  # the same bound `agent data import` applies


def _check_prompt(prompt: str) -> None:
    if not prompt.strip():
        fail("the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        fail(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed")


def _check_video_suffix(out: Path) -> None:
    if out.suffix.lower() not in (".mp4", ".gif", ".npy"):
        fail(f"output must end in .mp4, .gif or .npy, got {out.name!r}")


# ------------------------------------------------------------------ entry point
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("PHYLOOP_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Measured on 2-core machines: the tiny generator runs ~3× faster with one OpenMP thread than
    # with two (small matmuls). Users with bigger CPUs or GPUs set OMP_NUM_THREADS themselves.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        rc = app(args=argv, standalone_mode=False)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except typer.Exit as e:
        return e.exit_code
    except SystemExit as e:  # click's own usage errors already printed their message
        return int(e.code or 0)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            print(f"error: {e.format_message()}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if isinstance(e, click.exceptions.Abort):
            return 130
        raise
    return rc if isinstance(rc, int) else 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
