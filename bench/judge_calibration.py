"""Calibration of the built-in world's analytic judge against the simulator and its corruptions.

Over ≥ 200 seeded scenes (≥ 50 per family) this measures:

* **clean acceptance** — every simulator video judged against its own prompt at all three
  detail levels; goal ≥ 95 % accepted;
* **corruption rejection** — every applicable corruption of :mod:`reward.world.corrupt`
  (teleport, vanish, duplicate, reversed / missing gravity, energy gain, frozen frames,
  wrong colour, heavy noise) applied to every scene, judged against all three prompts;
  goal ≥ 95 % rejected per corruption type;
* **wrong prompts** — a clean video judged against a prompt naming another colour, or
  describing another scenario with the same colours: how often it is rejected, and how
  often on semantic adherence (``sa < 0.75``);
* **degraded videos** (information for the tiny generator, no goal) — clean videos blurred
  (Gaussian σ = 1 px), temporally ghosted (each frame mixed 20 % with each neighbour) and
  lightly noised (σ = 10 grey levels), and drawn with a wobbling centre (each object's position
  in each frame moved by Gaussian noise of σ = 0.3 and 0.5 px, the way a generator's outlines
  wobble; ``physics.POSITION_NOISE``): acceptance;
* **speed** — wall time of one ``score`` call;
* **held-out perturbations** — the failures of :mod:`reward.world.perturb` (time reversal, weak /
  strong gravity, a speed change on the floor, an object that grows or shrinks, swapped colours,
  two frames swapped, a slide that stops too early, sideways drift in a drop), which neither
  judge was designed or tuned around: rejection per perturbation, against all three prompts.

``--judges`` picks the judges (default both): ``physics`` (the analytic
:class:`~reward.world.judge.PhysicsJudge`) and ``synthesis`` (analysis by synthesis,
:class:`~reward.world.synthesis.SynthesisJudge`). The analytic judge's results keep the
top-level keys (``clean_accept``, ``corruption_reject``, …, ``goals``); every judge's full
results are also under ``judges.<name>``, and ``heldout_perturbations.<name>`` holds the
held-out rejections.

Run from the repository root: ``python -m bench.judge_calibration`` (``--help`` for
options); writes ``bench/results/judge_calibration.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so `python bench/judge_calibration.py` finds the packages
    sys.path.insert(0, str(ROOT))

from reward.world import corrupt as C  # noqa: E402
from reward.world import perturb as Q  # noqa: E402
from reward.world import physics as P  # noqa: E402
from reward.world.judge import PhysicsJudge  # noqa: E402
from reward.world.synthesis import SynthesisJudge  # noqa: E402
from reward.world.simulator import (  # noqa: E402
    LEVELS,
    Scene,
    iter_scenes,
    prompts_for,
    render,
    render_tracks,
    sample_scene,
    simulate,
)

GOAL = 0.95
JUDGES = {"physics": PhysicsJudge, "synthesis": SynthesisJudge}


def wrong_colour_prompt(scene: Scene, level: int) -> str:
    """The scene's prompt with its first object's colour replaced by one the scene does not use."""
    unused = [c for c in P.PALETTE if c not in scene.colours]
    other = unused[scene.seed % len(unused)]
    first = scene.bodies[0]
    bodies = (dataclasses.replace(first, colour=other),) + scene.bodies[1:]
    return prompts_for(dataclasses.replace(scene, bodies=bodies))[level]


def wrong_family_prompt(scene: Scene, level: int) -> str:
    """A prompt of the next family in :data:`FAMILIES` that names the scene's own colours."""
    other = P.FAMILIES[(P.FAMILIES.index(scene.family) + 1) % len(P.FAMILIES)]
    base = sample_scene(other, scene.seed)
    bodies = list(base.bodies)
    colours = list(scene.colours)
    if len(bodies) > len(colours):  # a collision prompt needs a second colour: any unused one
        colours.append([c for c in P.PALETTE if c not in colours][0])
    bodies = [dataclasses.replace(b, colour=c) for b, c in zip(bodies, colours)]
    return prompts_for(dataclasses.replace(base, bodies=tuple(bodies)))[level]


def degrade(video: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "blur":
        return np.stack([cv2.GaussianBlur(f, (5, 5), 1.0) for f in video])
    if kind == "ghost":
        v = video.astype(np.float64)
        prev = np.concatenate([v[:1], v[:-1]])
        nxt = np.concatenate([v[1:], v[-1:]])
        return np.clip(np.rint(0.6 * v + 0.2 * prev + 0.2 * nxt), 0, 255).astype(np.uint8)
    if kind == "noise":
        return np.clip(np.rint(video + rng.normal(0, 10.0, video.shape)), 0, 255).astype(np.uint8)
    raise ValueError(kind)


class Tally:
    """Counts of a yes/no outcome, overall and per key."""

    def __init__(self) -> None:
        self.n: dict[str, int] = defaultdict(int)
        self.k: dict[str, int] = defaultdict(int)

    def add(self, keys: list[str], hit: bool) -> None:
        for key in ["all"] + keys:
            self.n[key] += 1
            self.k[key] += int(hit)

    def rates(self) -> dict:
        return {key: {"rate": round(self.k[key] / self.n[key], 4), "n": self.n[key]} for key in sorted(self.n)}


def calibrate(judge, scenes: list[Scene], seed: int, n_examples: int) -> dict:
    """Every measurement of the module docstring for one judge."""
    times: list[float] = []

    def score(prompt: str, video: np.ndarray):
        t0 = time.perf_counter()
        s = judge.score(prompt, video)
        times.append(time.perf_counter() - t0)
        return s

    clean, wrong_rej, wrong_sa = Tally(), Tally(), Tally()
    corrupted: dict[str, Tally] = defaultdict(Tally)
    degraded: dict[str, Tally] = defaultdict(Tally)
    heldout: dict[str, Tally] = defaultdict(Tally)
    misses: list[dict] = []
    rng = np.random.default_rng(seed)
    t_start = time.perf_counter()
    for scene in scenes:
        video = render(scene)
        fam = scene.family
        for level in LEVELS:
            s = score(scene.prompts[level], video)
            clean.add([f"family:{fam}", f"level:{level}"], bool(s.accept))
            if not s.accept and len(misses) < n_examples:
                misses.append({"case": "clean", "scene": scene.id, "level": level, "prompt": scene.prompts[level],
                               "sa": s.sa, "pc": s.pc, "rationale": s.rationale})
            for tag, prompt in (("colour", wrong_colour_prompt(scene, level)),
                                ("family", wrong_family_prompt(scene, level))):
                w = score(prompt, video)
                wrong_rej.add([f"wrong:{tag}", f"family:{fam}"], not w.accept)
                wrong_sa.add([f"wrong:{tag}", f"family:{fam}"], w.sa < 0.75)
        for name in C.applicable(fam):
            bad = C.corrupt(scene, name, np.random.default_rng([scene.seed, list(C.CORRUPTIONS).index(name)]))
            for level in LEVELS:
                s = score(scene.prompts[level], bad)
                corrupted[name].add([f"family:{fam}", f"level:{level}"], not s.accept)
                if s.accept and len(misses) < n_examples:
                    misses.append({"case": name, "scene": scene.id, "level": level, "sa": s.sa, "pc": s.pc,
                                   "rationale": s.rationale})
        tracks = simulate(scene)
        for kind in ("blur", "ghost", "noise", "jitter0.3", "jitter0.5"):
            if kind.startswith("jitter"):
                sigma = float(kind.removeprefix("jitter"))
                vid = render_tracks(scene.bodies, tracks + rng.normal(0.0, sigma, tracks.shape))
            else:
                vid = degrade(video, kind, rng)
            for level in LEVELS:
                s = score(scene.prompts[level], vid)
                degraded[kind].add([f"family:{fam}"], bool(s.accept))
        for name in Q.applicable(fam):
            bad = Q.perturb(scene, name, np.random.default_rng([scene.seed, 7, list(Q.PERTURBATIONS).index(name)]))
            for level in LEVELS:
                s = score(scene.prompts[level], bad)
                heldout[name].add([f"family:{fam}", f"level:{level}"], not s.accept)
    elapsed = time.perf_counter() - t_start

    ms = np.array(times) * 1e3
    clean_rates = clean.rates()
    corr_rates = {name: t.rates() for name, t in sorted(corrupted.items())}
    goals = {
        "clean_accept": {"goal": GOAL, "value": clean_rates["all"]["rate"],
                         "met": clean_rates["all"]["rate"] >= GOAL},
        **{f"reject_{name}": {"goal": GOAL, "value": r["all"]["rate"], "met": r["all"]["rate"] >= GOAL}
           for name, r in corr_rates.items()},
    }
    return {
        "clean_accept": clean_rates,
        "corruption_reject": corr_rates,
        "wrong_prompt": {"reject": wrong_rej.rates(), "reject_on_sa": wrong_sa.rates()},
        "degraded_accept": {k: t.rates() for k, t in sorted(degraded.items())},
        "judge_ms": {"n": int(ms.size), "median": round(float(np.median(ms)), 3),
                     "mean": round(float(ms.mean()), 3), "p95": round(float(np.percentile(ms, 95)), 3),
                     "max": round(float(ms.max()), 3)},
        "elapsed_s": round(elapsed, 2),
        "goals": goals,
        "all_goals_met": all(g["met"] for g in goals.values()),
        "misses": misses,
        "heldout_perturbations": {name: t.rates() for name, t in sorted(heldout.items())},
    }


def summary(r: dict) -> dict:
    """The headline numbers of one judge's results."""
    return {"clean_accept": r["clean_accept"]["all"],
            "corruption_reject": {n: v["all"] for n, v in r["corruption_reject"].items()},
            "wrong_prompt_reject": r["wrong_prompt"]["reject"]["all"],
            "wrong_prompt_reject_on_sa": r["wrong_prompt"]["reject_on_sa"]["all"],
            "degraded_accept": {k: v["all"] for k, v in r["degraded_accept"].items()},
            "heldout_reject": {n: v["all"] for n, v in r["heldout_perturbations"].items()},
            "judge_ms": r["judge_ms"], "all_goals_met": r["all_goals_met"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=200, help="number of scenes (cycled over the families)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed base (see simulator.iter_scenes)")
    parser.add_argument("--examples", type=int, default=12, help="how many misses to keep with their rationale")
    parser.add_argument("--judges", nargs="+", choices=list(JUDGES), default=list(JUDGES),
                        help="which judges to calibrate (default: both)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "judge_calibration.json")
    args = parser.parse_args(argv)
    if args.scenes < len(P.FAMILIES):
        parser.error(f"--scenes must be at least {len(P.FAMILIES)}")

    scenes = list(iter_scenes(args.scenes, seed=args.seed))
    per_judge = {}
    for name in args.judges:
        per_judge[name] = calibrate(JUDGES[name](), scenes, args.seed, args.examples)
        print(name, json.dumps(summary(per_judge[name]), indent=1), flush=True)
    # the analytic judge keeps the file's original top-level keys (the first judge when it is not run)
    main_judge = per_judge.get("physics", next(iter(per_judge.values())))
    result = {
        "benchmark": "judge_calibration",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "numpy": np.__version__, "opencv": cv2.__version__,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "setup": {"scenes": len(scenes), "seed": args.seed,
                  "scenes_per_family": {f: sum(s.family == f for s in scenes) for f in P.FAMILIES},
                  "levels": list(LEVELS), "frames": P.FRAMES, "size": P.SIZE,
                  "corruptions_per_family": {f: C.applicable(f) for f in P.FAMILIES},
                  "perturbations_per_family": {f: Q.applicable(f) for f in P.FAMILIES},
                  "accept_rule": "sa >= 0.75 and pc >= 0.75",
                  "judges": list(per_judge), "top_level_judge": "physics" if "physics" in per_judge else args.judges[0],
                  "heldout_note": "reward.world.perturb was used for this report only; neither judge was tuned on it"},
        **{k: v for k, v in main_judge.items() if k != "heldout_perturbations"},
        "judges": per_judge,
        "heldout_perturbations": {name: r["heldout_perturbations"] for name, r in per_judge.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


if __name__ == "__main__":
    main()
