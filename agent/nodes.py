"""The loop's stages as LangGraph nodes.

Every node is idempotent: it reads what earlier stages stored, does only the work whose
results are not stored yet (videos whose files exist and match their hash are read back,
scores already given are kept), and writes with upserts keyed by natural keys. Re-running a
node after a crash therefore never duplicates rows, and a killed run resumes where it stopped.
The graph state itself stays tiny (run name, round counters): the store is the record.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TypedDict

import numpy as np

from agent.data import passes_filter
from agent.failpoints import failpoint
from agent.planner import difficulty_allocation, sample_prompts
from agent.refine import refine_prompt
from agent.runtime import Runtime
from agent.world_data import SOURCE_HELDOUT, SOURCE_TRAIN
from reward.base import HistoryItem, Score
from store import read_video, sha256_dir, verify, path_bytes

log = logging.getLogger("phyloop")


class LoopState(TypedDict, total=False):
    run: str
    rounds: int  # round budget
    round: int  # last finished round (0 = the base model's evaluation)
    current: int  # round in progress


# ------------------------------------------------------------------ seeds
def derive_seed(*parts: int | str) -> int:
    """A 31-bit seed from the run seed and a position (round, split, prompt, step)."""
    words = [p if isinstance(p, int) else int.from_bytes(p.encode()[:8].ljust(8, b"\0"), "little") for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0] >> 1)


# ------------------------------------------------------------------ shared stage helpers
@dataclass
class Clip:
    video_id: str
    idx: int
    group_index: int
    text: str
    video: np.ndarray


@contextmanager
def timed(rt: Runtime, k: int, stage: str, total: int | None = None) -> Iterator[None]:
    rt.ui.stage(k, stage, total)
    t0 = time.perf_counter()
    yield
    rt.store.record_stage_time(rt.run, k, stage, time.perf_counter() - t0)


def train_pool_source(rt: Runtime) -> str:
    return SOURCE_TRAIN if rt.config.data.source == "world" else "train"


def heldout_pool_source(rt: Runtime) -> str:
    return SOURCE_HELDOUT if rt.config.data.source == "world" else "heldout"


def generate_clips(rt: Runtime, k: int, split: str, kind: str, jobs: list[tuple[int, str, int]],
                   group_size: int) -> list[list[Clip]]:
    """Generate (or read back) ``group_size`` clips for each ``(prompt idx, text, seed)``.

    Clips whose video row exists and whose file matches its hash are read back; the others
    are generated in one batch with the generator's current adapter and stored atomically.
    """
    existing = {(v["prompt_idx"], v["group_index"]): v for v in rt.store.videos(rt.run, k, split=split, kind=kind)}
    out: list[list[Clip | None]] = [[None] * group_size for _ in jobs]
    missing = []
    for n, (idx, text, seed) in enumerate(jobs):
        for j in range(group_size):
            row = existing.get((idx, j))
            path = rt.layout.path(row["path"]) if row else None
            if row and row["prompt_text"] == text and row["sha256"] and verify(path, row["sha256"]):
                out[n][j] = Clip(row["id"], idx, j, text, read_video(path))
            elif n not in missing:
                missing.append(n)
    if missing:
        adapter_round = rt.active_adapter
        groups = rt.generate([jobs[n][1] for n in missing], [jobs[n][2] for n in missing], group_size,
                             progress=lambda done, total: rt.ui.advance(done, total))
        fps = getattr(getattr(rt.generator, "config", None), "fps", 8.0)
        suffix = ".npy" if rt.config.generate.backend == "toy" else ".mp4"
        with rt.store.transaction():
            for n, group in zip(missing, groups):
                idx, text, _ = jobs[n]
                for g in group:
                    j = g.seed - jobs[n][2]
                    rel = rt.layout.video_relpath(k, split, idx, kind, j, suffix=suffix)
                    from store import write_video

                    sha = write_video(rt.layout.path(rel), g.video, fps=fps)
                    vid = rt.store.record_video(
                        rt.run, k, split, idx, kind, j, path=rel, sha256=sha, seed=g.seed, prompt_text=text,
                        adapter_round=adapter_round, frames=g.video.shape[0], height=g.video.shape[1],
                        width=g.video.shape[2], fps=fps)
                    rt.latents[vid] = g.latent
                    out[n][j] = Clip(vid, idx, j, text, g.video)
                if kind == "generated":
                    failpoint("mid:generate", k)
    return [[c for c in group] for group in out]  # type: ignore[misc]


def judge_clips(rt: Runtime, k: int, stage: str, judge, clips: list[Clip], passes: int = 2) -> dict[str, Score]:
    """Scores clips not yet judged by ``judge``; stores every answer, judged or not.

    A clip the judge could not score (timeout, malformed answer, …) is stored as unjudged
    with the reason and asked again in a later pass (``passes`` in all; a resumed stage asks
    again too) — it is never given a guessed score.
    """
    name = rt.judge_name(judge)
    done: dict[str, Score] = {}
    todo = []
    for c in clips:
        row = next((s for s in rt.store.scores(c.video_id) if s["judge"] == name), None)
        if row is not None and row["judged"]:
            done[c.video_id] = Score(row["sa"], row["pc"], bool(row["accept"]), row["rationale"], row["raw"],
                                     details=row.get("details") or {})
        else:
            todo.append((c, 0 if row is None else int(row["attempts"])))
    faults = getattr(judge, "faults", None)
    before = dict(faults.snapshot()) if faults is not None else {}
    batch = max(1, getattr(getattr(judge, "config", None), "concurrency", 16))
    for _ in range(passes):
        if not todo:
            break
        retry = []
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            t0 = time.perf_counter()
            scores = rt.score_batch(judge, [(c.text, c.video) for c, _ in chunk])
            per = (time.perf_counter() - t0) / max(1, len(chunk))
            with rt.store.transaction():
                for (c, attempts), s in zip(chunk, scores):
                    rt.store.record_score(c.video_id, name, s, attempts=attempts + 1, seconds=per)
                    if not s.judged:
                        rt.store.record_event(rt.run, "unjudged", round=k, stage=stage, key=c.video_id,
                                              message=s.error or "")
                        retry.append((c, attempts + 1))
                    done[c.video_id] = s
            rt.ui.advance(min(start + batch, len(todo)), len(todo))
            if stage == "judge":
                failpoint("mid:judge", k)
        todo = retry
    if faults is not None:
        for kind, n in faults.snapshot().items():
            delta = n - before.get(kind, 0)
            if delta > 0:
                prev = sum(e["count"] for e in rt.store.events(rt.run, k)
                           if e["kind"] == f"vlm_{kind}" and e["stage"] == stage and e["key"] == name)
                rt.store.record_event(rt.run, f"vlm_{kind}", round=k, stage=stage, key=name, count=prev + delta)
    return done


REFINED_OFFSET = 1_000_000  # held-out prompt idx of the refined variant of prompt idx (same split, own rows)


def evaluate_round(rt: Runtime, k: int, *, refine: bool = False, stage: str = "evaluate",
                   judges: list | None = None) -> dict:
    """Held-out evaluation of the generator as it is now: generate, judge (every judge), store.

    Held-out prompts are never trained on; their seeds are the same every round, so changes
    between rounds come from the model, not from the noise. With ``refine`` each prompt is
    first refined by the critic (probing the current model), as a user would at inference;
    those prompts are stored as their own held-out rows (``idx + REFINED_OFFSET``).
    """
    cfg = rt.config
    pool = rt.store.dataset_prompts(source=heldout_pool_source(rt))
    if not pool:
        raise RuntimeError("no held-out prompts in the store")
    offset = REFINED_OFFSET if refine else 0
    with timed(rt, k, stage if not refine else f"{stage}+refine", len(pool) * cfg.evaluate.clips_per_prompt):
        texts = {}
        for idx, p in enumerate(pool):
            known = [r for r in rt.store.round_prompts(rt.run, k, "heldout") if r["idx"] == idx + offset]
            if known and (not refine or known[0]["refine_steps"] or known[0]["critique"] is not None):
                texts[idx] = known[0]["text"]
                continue
            text, steps, critique = p["text"], 0, None
            if refine:
                res = refine_prompt(p["text"], [], rt.critic, max_steps=max(1, cfg.refine.max_steps),
                                    min_change=cfg.refine.min_change, similarity=rt.similarity,
                                    probe=Nodes(rt)._probe(k, idx + offset))
                text, steps = res.best, len(res.steps)
                critique = res.steps[-1].critique if res.steps else ""
            rt.store.record_round_prompt(rt.run, k, "heldout", idx + offset, text=text, original=p["text"],
                                         prompt_id=p["id"], category=p["category"], refine_steps=steps,
                                         critique=critique)
            texts[idx] = text
        jobs = [(idx + offset, texts[idx], derive_seed(cfg.seed, "heldout", idx)) for idx in range(len(pool))]
        groups = generate_clips(rt, k, "heldout", "eval", jobs, cfg.evaluate.clips_per_prompt)
        clips = [c for g in groups for c in g]
        results = {}
        if judges is None:
            judges = [rt.judge] + ([rt.eval_judge] if rt.eval_judge is not None else [])
        category_of = {idx + offset: p["category"] for idx, p in enumerate(pool)}
        for judge in judges:
            scores = judge_clips(rt, k, stage, judge, clips)
            summary = summarise(clips, scores, category_of, cfg.judge.threshold)
            rt.store.record_evaluation(rt.run, k, rt.judge_name(judge), n=summary["n"],
                                       joint_success=summary["joint_success"], mean_sa=summary["mean_sa"],
                                       mean_pc=summary["mean_pc"], accept_rate=summary["accept_rate"],
                                       refine=refine, threshold=cfg.judge.threshold,
                                       per_category=summary["per_category"])
            results[rt.judge_name(judge)] = summary
    return results


def summarise(clips: list[Clip], scores: dict[str, Score], category_of: dict[int, str], threshold: float) -> dict:
    """Joint success (sa ≥ t and pc ≥ t), mean sa / pc, accept rate, overall and per category."""
    def agg(cs: list[Clip]) -> dict:
        ss = [scores[c.video_id] for c in cs if scores[c.video_id].judged]
        if not ss:
            return {"n": len(cs), "n_judged": 0, "joint_success": None, "mean_sa": None, "mean_pc": None,
                    "accept_rate": None, "score": None}
        return {"n": len(cs), "n_judged": len(ss),
                "joint_success": float(np.mean([s.joint(threshold) for s in ss])),
                "mean_sa": float(np.mean([s.sa for s in ss])), "mean_pc": float(np.mean([s.pc for s in ss])),
                "accept_rate": float(np.mean([bool(s.accept) for s in ss])),
                "score": float(np.mean([s.mean for s in ss]))}

    by_cat: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        by_cat[category_of.get(c.idx) or "?"].append(c)
    out = agg(clips)
    out["per_category"] = {cat: agg(cs) for cat, cs in sorted(by_cat.items())}
    return out


# ------------------------------------------------------------------ the nodes
class Nodes:
    """One method per stage; each takes and returns (part of) :class:`LoopState`."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    # -- round 0: the base model, before any training
    def baseline(self, state: LoopState) -> LoopState:
        rt = self.rt
        if rt.store.round_status(rt.run, 0) == "done":
            return {"round": max(state.get("round", 0), 0)}
        rt.store.start_round(rt.run, 0)
        rt.init_adapter()
        rt.active_adapter = 0
        evaluate_round(rt, 0, stage="evaluate")
        if rt.config.evaluate.refine:
            evaluate_round(rt, 0, refine=True)
        rt.flush_profile(0)
        rt.store.finish_round(rt.run, 0)
        rt.ui.round_done(rt.run)
        return {"round": 0}

    def plan(self, state: LoopState) -> LoopState:
        rt, cfg = self.rt, self.rt.config
        k = state["round"] + 1
        rt.store.start_round(rt.run, k)
        with timed(rt, k, "plan"):
            pool = [p for p in rt.store.dataset_prompts(source=train_pool_source(rt)) if passes_filter(p)]
            if not pool:
                raise RuntimeError("no training prompts in the store (or none passed the CoT physics filter)")
            by_cat: dict[str, list[str]] = defaultdict(list)
            for p in pool:
                by_cat[p["category"] or "uncategorised"].append(p["id"])
            scores = self._category_scores(k)
            tau = cfg.plan.tau if cfg.plan.strategy == "difficulty" else 0.0
            plan = difficulty_allocation(scores, {c: len(v) for c, v in by_cat.items()},
                                         cfg.plan.prompts_per_round, tau=tau)
            rng = np.random.default_rng(derive_seed(cfg.seed, "plan", k))
            picked = sample_prompts(plan, by_cat, rng, rt.store.prompt_usage(rt.run))
            text = {p["id"]: p for p in pool}
            with rt.store.transaction():
                rt.store.record_category_stats(rt.run, k, [
                    {"category": c.category, "score": c.score, "difficulty": c.difficulty, "weight": c.weight,
                     "allocation": c.allocation, "available": c.available} for c in plan])
                for idx, (cat, pid) in enumerate(picked):
                    rt.store.record_round_prompt(rt.run, k, "train", idx, text=text[pid]["text"], prompt_id=pid,
                                                 category=cat)
        return {"current": k}

    def _category_scores(self, k: int) -> dict[str, float]:
        """S(k): the latest judged round's mean score per category (the baseline's before round 1)."""
        rt = self.rt
        scores = rt.store.latest_category_scores(rt.run, before_round=k, judge=rt.judge_name())
        if scores:
            return scores
        detail = rt.store.round_detail(rt.run, 0) or {}
        for ev in detail.get("evaluations", []):
            if ev["judge"] == rt.judge_name() and not ev["refine"]:
                per = ev.get("per_category") or {}
                return {c: v["score"] for c, v in per.items() if v.get("score") is not None}
        return {}

    def refine(self, state: LoopState) -> LoopState:
        rt, cfg = self.rt, self.rt.config
        k = state["current"]
        prompts = rt.store.round_prompts(rt.run, k, "train")
        if not cfg.refine.enabled or cfg.refine.max_steps == 0:
            rt.store.record_stage_time(rt.run, k, "refine", 0.0)
            return {}
        with timed(rt, k, "refine", len(prompts)):
            for n, p in enumerate(prompts):
                if p["refine_steps"] or p["critique"] is not None:
                    continue  # refined before a crash: keep it
                history, parent, bar = self._history(p, k)
                start = history[-1].prompt if history else p["original"]
                probe = self._probe(k, p["idx"]) if cfg.refine.probe else None
                res = refine_prompt(start, history, rt.critic, max_steps=cfg.refine.max_steps,
                                    min_change=cfg.refine.min_change, similarity=rt.similarity, probe=probe,
                                    baseline=bar)
                with rt.store.transaction():
                    for s in res.steps:
                        rt.store.record_refinement(p["id"], s.step, before=s.before, after=s.after,
                                                   critique=s.critique, similarity=s.similarity, accepted=s.accepted)
                    last = res.steps[-1] if res.steps else None
                    rt.store.record_round_prompt(
                        rt.run, k, "train", p["idx"], text=res.best, original=p["original"],
                        prompt_id=p["prompt_id"], category=p["category"], parent_id=parent,
                        refine_steps=len(res.steps), critique=(last.critique if last else ""),
                        similarity=(last.similarity if last else None))
                if res.changed:
                    rt.ui.note(f"refined: {p['original']!r} → {res.best!r}")
                rt.ui.advance(n + 1, len(prompts))
        return {}

    def _history(self, p: dict, k: int) -> tuple[list[HistoryItem], str | None, float | None]:
        """The prompt's earlier rounds, oldest first: per round the text used and its worst clip.

        Returns the history, the round prompt this one continues refining, and that round's
        mean group score (the bar a rewrite's probe must beat).
        """
        rt = self.rt
        rows = rt.store.prompt_history(rt.run, p["prompt_id"], before_round=k, judge=rt.judge_name())
        by_round: dict[int, list[dict]] = defaultdict(list)
        for r in rows:
            if r["judged"]:
                by_round[r["round"]].append(r)
        items, parent, mean = [], None, None
        for rnd in sorted(by_round):
            worst = min(by_round[rnd], key=lambda r: (r["sa"] + r["pc"]) / 2)
            mean = float(np.mean([(r["sa"] + r["pc"]) / 2 for r in by_round[rnd]]))
            score = Score(worst["sa"], worst["pc"], bool(worst["accept"]), worst["rationale"] or "",
                          details=worst.get("details") or {})
            items.append(HistoryItem(prompt=worst["text"], score=score,
                                     video=read_video(rt.layout.path(worst["path"]))))
            parent = worst["round_prompt_id"]
        return items, parent, mean

    def _probe(self, k: int, idx: int):
        rt = self.rt

        def probe(text: str, step: int):
            seed = derive_seed(rt.config.seed, "probe", k, idx, step)
            g = rt.generate([text], [seed], 1)[0][0]
            s = rt.score_batch(rt.judge, [(text, g.video)])[0]
            return g.video, s

        return probe

    def generate(self, state: LoopState) -> LoopState:
        rt, cfg = self.rt, self.rt.config
        k = state["current"]
        prompts = rt.store.round_prompts(rt.run, k, "train")
        m = cfg.generate.group_size
        jobs = [(p["idx"], p["text"], derive_seed(cfg.seed, "train", k, p["idx"])) for p in prompts]
        with timed(rt, k, "generate", len(jobs) * m):
            generate_clips(rt, k, "train", "generated", jobs, m)
        return {}

    def judge(self, state: LoopState) -> LoopState:
        rt = self.rt
        k = state["current"]
        prompts = {p["idx"]: p for p in rt.store.round_prompts(rt.run, k, "train")}
        rows = rt.store.videos(rt.run, k, split="train", kind="generated")
        with timed(rt, k, "judge", len(rows)):
            clips = [Clip(v["id"], v["prompt_idx"], v["group_index"], prompts[v["prompt_idx"]]["text"],
                          read_video(rt.layout.path(v["path"]))) for v in rows]
            judge_clips(rt, k, "judge", rt.judge, clips)
        return {}

    def train(self, state: LoopState) -> LoopState:
        from policy.groups import Candidate, build_group_sample, plan_group

        rt, cfg = self.rt, self.rt.config
        k = state["current"]
        row = rt.store.adapter(rt.run, k)
        if row is not None and verify(rt.layout.path(row["path"]), row["sha256"]):
            return {}  # trained before a crash; the runtime loaded this adapter at start
        with timed(rt, k, "train", cfg.train.steps):
            rt.reset_adapter(k - 1)
            name = rt.judge_name()
            prompts = rt.store.round_prompts(rt.run, k, "train")
            dataset = {p["id"]: p for p in rt.store.dataset_prompts(source=train_pool_source(rt))}
            videos = defaultdict(list)
            for v in rt.store.videos(rt.run, k, split="train", kind="generated"):
                videos[v["prompt_idx"]].append(v)
            groups, skipped = [], Counter()
            for p in prompts:
                vs = sorted(videos[p["idx"]], key=lambda v: v["group_index"])
                cands = []
                for v in vs:
                    s = next((s for s in rt.store.scores(v["id"]) if s["judge"] == name), None)
                    ok = s is not None and s["judged"]
                    cands.append(Candidate(s["sa"] if ok else None, s["pc"] if ok else None,
                                           bool(s["accept"]) if ok else None))
                real = (dataset.get(p["prompt_id"]) or {}).get("real_video")
                plan = plan_group(cands, has_real=bool(real), policy=cfg.winner.policy)
                if not plan.trainable:
                    skipped[plan.skip_reason] += 1
                    continue
                latents = rt.latents_for(vs)
                real_latent = None
                cond_text = p["original"] if cfg.refine.distil else p["text"]
                with rt.timing("model"):
                    if plan.winner == "real":
                        real_latent = rt.generator.encode_videos([read_video(rt.runs_dir / real)])[0]
                    text = rt.generator.encode_prompts([cond_text])[0]
                groups.append(build_group_sample(plan, text=text, generated=latents, candidates=cands,
                                                 real=real_latent, prompt=cond_text))
            rt._train_round = k
            summary = rt.train_round(groups)
            rt._train_round = None
            rt.active_adapter = k
            rt.latents.clear()
            rel = rt.layout.adapter_relpath(k)
            path = rt.layout.path(rel)
            rt.save_trainer(path)
            with rt.store.transaction():
                rt.store.record_adapter(rt.run, k, path=rel, sha256=sha256_dir(path), bytes=path_bytes(path))
                rt.store.record_train_summary(
                    rt.run, k, objective=cfg.train.objective, steps=summary.steps, groups_used=len(groups),
                    groups_skipped=sum(skipped.values()), skip_reasons=dict(skipped), restored=summary.restored,
                    seconds=summary.seconds, extra={"updates": summary.updates, "skipped_steps": summary.skipped,
                                                    "step_skip_reasons": summary.skip_reasons,
                                                    "stop_reason": summary.stop_reason})
                if summary.skipped:
                    rt.store.record_event(rt.run, "nonfinite_loss", round=k, stage="train", count=summary.skipped,
                                          message=str(summary.skip_reasons))
                if summary.restored:
                    rt.store.record_event(rt.run, "diverged_restored", round=k, stage="train",
                                          message=summary.stop_reason or "")
        return {}

    def evaluate(self, state: LoopState) -> LoopState:
        evaluate_round(self.rt, state["current"])
        if self.rt.config.evaluate.refine:
            evaluate_round(self.rt, state["current"], refine=True)
        return {}

    def checkpoint(self, state: LoopState) -> LoopState:
        rt = self.rt
        k = state["current"]
        with timed(rt, k, "checkpoint"):
            row = rt.store.adapter(rt.run, k)
            if row is None or not verify(rt.layout.path(row["path"]), row["sha256"]):
                raise RuntimeError(f"round {k}: the adapter is missing or does not match its hash")
        rt.flush_profile(k)
        rt.store.finish_round(rt.run, k)
        rt.ui.round_done(rt.run)
        return {"round": k}

    def more_rounds(self, state: LoopState) -> str:
        return "plan" if state["round"] < state["rounds"] else "done"
