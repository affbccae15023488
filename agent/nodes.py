"""The loop's stages as LangGraph nodes.

Every node is idempotent: it reads what earlier stages stored, does only the work whose
results are not stored yet (videos whose files exist and match their hash are read back,
scores already given are kept), and writes with upserts keyed by natural keys. Re-running a
node after a crash therefore never duplicates rows, and a killed run resumes where it stopped.
The graph state itself stays tiny (run name, round counters): the store is the record.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TypedDict

import numpy as np

from agent.data import passes_filter
from agent.planner import difficulty_allocation, sample_prompts
from agent.refine import refine_prompt, states_what_it_shows
from agent.runtime import Runtime
from agent.stages import (Clip, derive_seed, evaluate_all, generate_clips, judge_clips, make_probe, resolve_args,
                          timed, train_pool)
from reward.base import HistoryItem, Score
from store import path_bytes, read_video, sha256_dir, verify


def _round_groups(rt: Runtime, k: int, dataset: dict, replayed: bool = False) -> tuple[list, Counter]:
    """Round ``k``'s training groups from the store: its clips (re-encoded where not cached), the
    training judge's scores, the winner policy's plan. Returns the groups and the skip reasons.

    A ``replayed`` (earlier) round's clip files are checked against their stored hashes first: the
    generate stage checked the current round's, nothing has checked an old round's since."""
    from policy.groups import Candidate, build_group_sample, plan_group

    cfg, name = rt.config, rt.judge_name()
    videos = defaultdict(list)
    for v in rt.store.videos(rt.run, k, split="train", kind="generated"):
        if replayed and not verify(rt.layout.path(v["path"]), v["sha256"]):
            raise RuntimeError(f"replaying round {k}: clip {v['path']} is missing or does not match its hash "
                               "(set train.replay_rounds = 0 to train on this round's groups only)")
        videos[v["prompt_idx"]].append(v)
    groups, skipped = [], Counter()
    for p in rt.store.round_prompts(rt.run, k, "train"):
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
                video = read_video(rt.runs_dir / real)
                conform = getattr(rt.generator, "conform", None)  # a real video of another geometry is resampled
                real_latent = rt.generator.encode_videos([conform(video) if conform else video])[0]
            text = rt.generator.encode_prompts([cond_text])[0]
        sample = build_group_sample(plan, text=text, generated=latents, candidates=cands, real=real_latent,
                                    prompt=cond_text)
        if cfg.train.objective == "flow-grpo":  # every judged generation is a rollout of the group
            import torch

            judged = [i for i, c in enumerate(cands) if c.judged]
            trajs = rt.rollouts_for([vs[i] for i in judged])
            sample.rollouts = {"latents": torch.stack([t["latents"] for t in trajs]),
                               "log_probs": torch.stack([t["log_probs"] for t in trajs]),
                               "sigmas": trajs[0]["sigmas"], "noise_level": trajs[0].get("noise_level"),
                               "reward": torch.tensor([cands[i].score for i in judged], dtype=torch.float32)}
        groups.append(sample)
    return groups, skipped


class EmptyRoundError(RuntimeError):
    """A round has no trainable group, even after its clips were judged once more."""


class LoopState(TypedDict, total=False):
    run: str
    rounds: int  # round budget
    round: int  # last finished round (0 = the base model's evaluation)
    current: int  # round in progress


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
        evaluate_all(rt, 0)
        rt.flush_profile(0)
        rt.store.finish_round(rt.run, 0)
        rt.log_round(0)
        rt.ui.round_done(rt.run)
        return {"round": 0}

    def plan(self, state: LoopState) -> LoopState:
        rt, cfg = self.rt, self.rt.config
        k = state["round"] + 1
        rt.store.start_round(rt.run, k)
        with timed(rt, k, "plan"):
            pool = [p for p in train_pool(rt) if passes_filter(p)]
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
        evals = [ev for ev in detail.get("evaluations", []) if ev["judge"] == rt.judge_name() and not ev["refine"]]
        # the seen split is made of training prompts; held-out scores only when there is none
        for ev in sorted(evals, key=lambda ev: ev.get("split") != "seen"):
            per = ev.get("per_category") or {}
            return {c: v["score"] for c, v in per.items() if v.get("score") is not None}
        return {}

    def refine(self, state: LoopState) -> LoopState:
        rt, cfg = self.rt, self.rt.config
        k = state["current"]
        prompts = rt.store.round_prompts(rt.run, k, "train")
        if not cfg.refine.enabled or (cfg.refine.max_steps == 0 and not (cfg.refine.resolve and cfg.refine.probe)):
            rt.store.record_stage_time(rt.run, k, "refine", 0.0)
            return {}
        real = {r["id"]: r.get("real_video") for r in train_pool(rt)}
        with timed(rt, k, "refine", len(prompts)):
            for n, p in enumerate(prompts):
                if p["refine_steps"] or p["critique"] is not None:
                    continue  # refined before a crash: keep it
                history, parent, bar = self._history(p, k)
                start = history[-1].prompt if history else p["original"]
                probe = make_probe(rt, k, p["idx"], original=p["original"]) if cfg.refine.probe else None
                res = refine_prompt(start, history, rt.critic, max_steps=cfg.refine.max_steps,
                                    min_change=cfg.refine.min_change, similarity=rt.similarity, probe=probe,
                                    baseline=bar, admissible=self._fits_real(p, real),
                                    **resolve_args(rt, k, p["idx"], p["original"]))
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

    def _fits_real(self, p: dict, real: dict):
        """Admissibility of a refined training text (a resolution or a rewrite): the group's winner
        is the prompt's real video, trained as a sample of the refined text, so a text the real video
        does not fit (the other direction, another start: a trained refiner's rewrite may choose one)
        would pair it with a contradicting winner. With no real video (winners are generated clips,
        judged against the original) or ``refine.distil`` (training uses the original) anything goes."""
        path = real.get(p["prompt_id"])
        if not path or self.rt.config.refine.distil:
            return None
        rt = self.rt
        video = read_video(rt.runs_dir / path)

        def fits(text: str) -> bool:
            return states_what_it_shows(rt.score_batch(rt.judge, [(text, video)])[0])

        return fits

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

    def generate(self, state: LoopState) -> LoopState:
        rt, cfg = self.rt, self.rt.config
        k = state["current"]
        prompts = rt.store.round_prompts(rt.run, k, "train")
        m = cfg.generate.group_size
        jobs = [(p["idx"], p["text"], derive_seed(cfg.seed, "train", k, p["idx"])) for p in prompts]
        with timed(rt, k, "generate", len(jobs) * m):
            generate_clips(rt, k, "train", "generated", jobs, m, rollouts=True)
        return {}

    def judge(self, state: LoopState) -> LoopState:
        rt = self.rt
        k = state["current"]
        prompts = {p["idx"]: p for p in rt.store.round_prompts(rt.run, k, "train")}
        rows = rt.store.videos(rt.run, k, split="train", kind="generated")
        with timed(rt, k, "judge", len(rows)):
            # made from the (refined) text, judged against the user's original prompt
            clips = [Clip(v["id"], v["prompt_idx"], v["group_index"], prompts[v["prompt_idx"]]["text"],
                          read_video(rt.layout.path(v["path"])), judge_text=prompts[v["prompt_idx"]]["original"])
                     for v in rows]
            judge_clips(rt, k, "judge", rt.judge, clips)
        return {}

    def train(self, state: LoopState) -> LoopState:
        rt, cfg = self.rt, self.rt.config
        k = state["current"]
        row = rt.store.adapter(rt.run, k)
        if row is not None and verify(rt.layout.path(row["path"]), row["sha256"]):
            return {}  # trained before a crash; the runtime loaded this adapter at start
        with timed(rt, k, "train", cfg.train.steps):
            rt.reset_adapter(k - 1)
            dataset = {p["id"]: p for p in train_pool(rt)}
            groups, skipped, replayed = [], Counter(), {}
            for j in range(max(1, k - cfg.train.replay_rounds), k):  # replayed rounds first, then this one
                g, s = _round_groups(rt, j, dataset, replayed=True)
                groups += g
                skipped.update(s)
                replayed[j] = len(g)
            current, s = _round_groups(rt, k, dataset)
            if not current:
                current, s = self._empty_round(state, dataset, s)
            groups += current
            skipped.update(s)
            self._log_grids(k, current)
            rt._train_round = k
            summary = rt.train_round(groups)
            rt._train_round = None
            rt.active_adapter = k
            rt.latents.clear()
            rt.rollouts.clear()
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
                                                    "stop_reason": summary.stop_reason,
                                                    "groups_replayed": replayed,
                                                    "empty_round": not current})
                if summary.skipped:
                    rt.store.record_event(rt.run, "nonfinite_loss", round=k, stage="train", count=summary.skipped,
                                          message=str(summary.skip_reasons))
                if summary.restored:
                    rt.store.record_event(rt.run, "diverged_restored", round=k, stage="train",
                                          message=summary.stop_reason or "")
        return {}

    def _log_grids(self, k: int, groups: list) -> None:
        """A few of the round's groups to the trackers: the winner's frames above its worst-scored loser's."""
        rt, n = self.rt, self.rt.config.log.grids
        if not rt.config.log.trackers or not n or not groups:
            return
        import torch

        pairs = []
        with rt.timing("model"):
            for g in groups[:n]:
                worst = int((g.loser_sa + g.loser_pc).argmin())
                w, l = rt.generator.decode_latents(torch.stack([g.winner, g.losers[worst]]))
                pairs.append((g.prompt, w, l))
        rt.tracking.grids(k, pairs)

    def _empty_round(self, state: LoopState, dataset: dict, skipped: Counter) -> tuple[list, Counter]:
        """No group of this round is trainable: say so, judge the round's clips once more (a judge
        that was down may be back), and stop the run unless ``train.allow_empty_round``."""
        rt, k = self.rt, state["current"]
        why = ", ".join(f"{n} × {r}" for r, n in skipped.most_common()) or "no training prompts"
        rt.store.record_event(rt.run, "empty_round", round=k, stage="train", key="found",
                              message=f"no trainable group ({why}); judging the round's clips again")
        rt.ui.note(f"round {k}: no trainable group ({why}); judging its clips again")
        self.judge(state)
        groups, skipped = _round_groups(rt, k, dataset)
        if groups:
            return groups, skipped
        why = ", ".join(f"{n} × {r}" for r, n in skipped.most_common()) or "no training prompts"
        if rt.config.train.allow_empty_round:
            rt.store.record_event(rt.run, "empty_round", round=k, stage="train", key="closed",
                                  message=f"closed without training (train.allow_empty_round): {why}")
            rt.ui.note(f"round {k}: closed without training ({why})")
            return [], skipped
        raise EmptyRoundError(
            f"round {k} has no trainable group after judging its clips again ({why}); see `agent show "
            f"{rt.run} --round {k}` and the judge's events, then resume the run, or set "
            "train.allow_empty_round = true to close such rounds without training")

    def evaluate(self, state: LoopState) -> LoopState:
        evaluate_all(self.rt, state["current"])
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
        rt.log_round(k)
        rt.ui.round_done(rt.run)
        return {"round": k}

    def more_rounds(self, state: LoopState) -> str:
        return "plan" if state["round"] < state["rounds"] else "done"
