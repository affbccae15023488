"""The work inside the loop's stages, shared by the graph's nodes and by `agent eval`.

Generation and judging are idempotent: what is already stored (video files that match their
hash, judged scores) is read back instead of recomputed, and every write is an upsert.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from agent.failpoints import failpoint
from agent.refine import refine_prompt
from agent.runtime import Runtime, write_latent
from agent.world_data import SOURCE_HELDOUT, SOURCE_PARAPHRASE, SOURCE_TRAIN, pool_ids
from reward.base import Score
from store import REFINED_OFFSET, read_video, verify, write_video

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
    text: str  # what the clip was generated from
    video: np.ndarray
    judge_text: str | None = None  # what it is judged against (the user's prompt); None: ``text``

    @property
    def judged_against(self) -> str:
        return self.text if self.judge_text is None else self.judge_text


@contextmanager
def timed(rt: Runtime, k: int, stage: str, total: int | None = None) -> Iterator[None]:
    rt.ui.stage(k, stage, total)
    t0 = time.perf_counter()
    yield
    rt.store.record_stage_time(rt.run, k, stage, time.perf_counter() - t0)


def _pool(rt: Runtime, world_source: str, store_source: str) -> list[dict]:
    if rt.config.data.source != "world":
        return rt.store.dataset_prompts(source=store_source)
    ids = pool_ids(rt.config.data.world, world_source)  # this run's scenes and level, not every world prompt stored
    return [p for p in rt.store.dataset_prompts(source=world_source) if p["id"] in ids]


def train_pool(rt: Runtime) -> list[dict]:
    """The run's training prompts (dataset rows)."""
    return _pool(rt, SOURCE_TRAIN, "train")


def heldout_pool(rt: Runtime) -> list[dict]:
    """The run's held-out prompts (dataset rows): texts that never occur in its training pool.

    The built-in world's split guarantees it by construction (``agent.world_data``); an
    imported prompt whose text is also a training prompt's is dropped here all the same.
    """
    train_texts = {p["text"] for p in train_pool(rt)}
    return [p for p in _pool(rt, SOURCE_HELDOUT, "heldout") if p["text"] not in train_texts]


def seen_pool(rt: Runtime) -> list[dict]:
    """``evaluate.seen_prompts`` training prompts, taken in turn from each category: the 'seen' split."""
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for p in train_pool(rt):
        by_cat[p["category"] or "uncategorised"].append(p)
    queues = [by_cat[c] for c in sorted(by_cat)]
    out: list[dict] = []
    while len(out) < rt.config.evaluate.seen_prompts and any(queues):
        for q in queues:
            if q and len(out) < rt.config.evaluate.seen_prompts:
                out.append(q.pop(0))
    return out


def paraphrase_pool(rt: Runtime) -> list[dict]:
    """Held-out scenes' short prompts reworded (the built-in world only; imported data has none)."""
    if rt.config.data.source != "world":
        return []
    train_texts = {p["text"] for p in train_pool(rt)}
    return [p for p in _pool(rt, SOURCE_PARAPHRASE, "paraphrase") if p["text"] not in train_texts]


def eval_pool(rt: Runtime, split: str) -> list[dict]:
    """The dataset rows evaluated on ``split`` ('heldout', 'seen' or 'paraphrase')."""
    if split == "heldout":
        return heldout_pool(rt)
    if split == "seen":
        return seen_pool(rt)
    if split == "paraphrase":
        return paraphrase_pool(rt)
    raise ValueError(f"unknown evaluation split {split!r}")


def generate_clips(rt: Runtime, k: int, split: str, kind: str, jobs: list[tuple[int, str, int]],
                   group_size: int, rollouts: bool = False) -> list[list[Clip]]:
    """Generate (or read back) ``group_size`` clips for each ``(prompt idx, text, seed)``.

    Clips whose video row exists and whose file matches its hash are read back; the others
    are generated in one batch with the generator's current adapter and stored atomically.
    With ``rollouts`` and an objective that trains on them (flow-grpo) the clips come from the SDE
    sampler and their trajectories are stored in the clip's latent file; a stored clip without one
    is generated again.
    """
    need_traj = rt.sde_noise_level(rollouts) is not None
    existing = {(v["prompt_idx"], v["group_index"]): v for v in rt.store.videos(rt.run, k, split=split, kind=kind)}
    out: list[list[Clip | None]] = [[None] * group_size for _ in jobs]
    missing = []
    for n, (idx, text, seed) in enumerate(jobs):
        for j in range(group_size):
            row = existing.get((idx, j))
            path = rt.layout.path(row["path"]) if row else None
            latent_ok = not (row and row.get("latent_path")) or verify(rt.layout.path(row["latent_path"]),
                                                                        row["latent_sha256"])
            traj_ok = not need_traj or bool(row and row.get("latent_path"))
            if (row and row["prompt_text"] == text and row["sha256"] and verify(path, row["sha256"]) and latent_ok
                    and traj_ok):
                out[n][j] = Clip(row["id"], idx, j, text, read_video(path))
            elif n not in missing:
                missing.append(n)
    if missing:
        adapter_round = rt.active_adapter
        groups = rt.generate([jobs[n][1] for n in missing], [jobs[n][2] for n in missing], group_size,
                             progress=lambda done, total: rt.ui.advance(done, total), rollouts=rollouts)
        fps = getattr(getattr(rt.generator, "config", None), "fps", 8.0)
        suffix = ".npy" if rt.config.generate.backend == "toy" else ".mp4"
        with rt.store.transaction():
            for n, group in zip(missing, groups):
                idx, text, _ = jobs[n]
                for g in group:
                    j = g.seed - jobs[n][2]
                    rel = rt.layout.video_relpath(k, split, idx, kind, j, suffix=suffix)
                    sha = write_video(rt.layout.path(rel), g.video, fps=fps)
                    lat_rel = lat_sha = None
                    traj = getattr(g, "trajectory", None)
                    if kind == "generated" and g.latent is not None and (suffix != ".npy" or traj is not None):
                        # the video file is lossy: keep the exact latent the trainer will use (and the
                        # SDE trajectory flow-grpo trains on)
                        lat_rel = rel.rsplit(".", 1)[0] + ".latent.safetensors"
                        lat_sha = write_latent(rt.layout.path(lat_rel), g.latent, traj)
                    vid = rt.store.record_video(
                        rt.run, k, split, idx, kind, j, path=rel, sha256=sha, seed=g.seed, prompt_text=text,
                        adapter_round=adapter_round, frames=g.video.shape[0], height=g.video.shape[1],
                        width=g.video.shape[2], fps=fps, latent_path=lat_rel, latent_sha256=lat_sha)
                    rt.latents[vid] = g.latent
                    if traj is not None:
                        rt.rollouts[vid] = traj
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
        # a score without judged_prompt (written before it was stored) was judged against the text the
        # clip was made from; judged against another text than the one asked for now, judge it again
        if row is not None and (row.get("judged_prompt") or c.text) != c.judged_against:
            row = None
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
            scores = rt.score_batch(judge, [(c.judged_against, c.video) for c, _ in chunk])
            per = (time.perf_counter() - t0) / max(1, len(chunk))
            with rt.store.transaction():
                for (c, attempts), s in zip(chunk, scores):
                    rt.store.record_score(c.video_id, name, s, attempts=attempts + 1, seconds=per,
                                          judged_prompt=c.judged_against)
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


EVAL_STAGES = {"heldout": "evaluate", "seen": "evaluate-seen", "paraphrase": "evaluate-paraphrase"}


def evaluate_round(rt: Runtime, k: int, *, refine: bool = False, split: str = "heldout",
                   judges: list | None = None) -> dict:
    """Evaluation of the generator as it is now on ``split``: generate, judge (every judge), store.

    'heldout' prompts have texts never trained on; 'seen' ones are training prompts with
    evaluation-only noise seeds. Seeds are the same every round, so changes between rounds come
    from the model, not from the noise, and rounds (and runs with the same seed) pair clip for
    clip. With ``refine`` each prompt is first refined by the critic (probing the current
    model), as a user would at inference; those prompts are stored as their own rows
    (``idx + REFINED_OFFSET``), and their clips are judged against the user's original prompt.
    Joint success counts every clip: an unjudged clip is a failure (``n_judged`` says how many
    were judged). Returns ``{judge name: summary}``.
    """
    cfg = rt.config
    pool = eval_pool(rt, split)
    if not pool:
        if split == "heldout":
            raise RuntimeError("no held-out prompts in the store")
        return {}
    offset = REFINED_OFFSET if refine else 0
    stage = EVAL_STAGES[split] + ("+refine" if refine else "")
    with timed(rt, k, stage, len(pool) * cfg.evaluate.clips_per_prompt):
        known = {r["idx"]: r for r in rt.store.round_prompts(rt.run, k, split)}
        texts = {}
        for idx, p in enumerate(pool):
            row = known.get(idx + offset)
            if row and (row["prompt_id"] != p["id"] or row["original"] != p["text"]):
                raise RuntimeError(
                    f"round {k} stored {split} prompt {idx + offset} as {row['prompt_id']!r} ({row['original']!r}) "
                    f"but the configured pool has {p['id']!r} there: the run's data config changed after it "
                    "evaluated this round")
            if row and (not refine or row["refine_steps"] or row["critique"] is not None):
                texts[idx] = row["text"]
                continue
            text, steps, critique = p["text"], 0, None
            if refine:
                res = refine_prompt(p["text"], [], rt.critic, max_steps=max(1, cfg.refine.max_steps),
                                    min_change=cfg.refine.min_change, similarity=rt.similarity,
                                    probe=make_probe(rt, k, idx + offset, original=p["text"]),
                                    **resolve_args(rt, k, idx + offset, p["text"]))
                text, steps = res.best, len(res.steps)
                critique = res.steps[-1].critique if res.steps else ""
            rt.store.record_round_prompt(rt.run, k, split, idx + offset, text=text, original=p["text"],
                                         prompt_id=p["id"], category=p["category"], refine_steps=steps,
                                         critique=critique)
            texts[idx] = text
        jobs = [(idx + offset, texts[idx], derive_seed(cfg.seed, split, idx)) for idx in range(len(pool))]
        groups = generate_clips(rt, k, split, "eval", jobs, cfg.evaluate.clips_per_prompt)
        original = {idx + offset: p["text"] for idx, p in enumerate(pool)}
        clips = [replace(c, judge_text=original[c.idx]) for g in groups for c in g]
        results = {}
        if judges is None:
            judges = [rt.judge] + ([rt.eval_judge] if rt.eval_judge is not None else [])
        category_of = {idx + offset: p["category"] for idx, p in enumerate(pool)}
        level_of = {idx + offset: p.get("level") for idx, p in enumerate(pool)}
        for judge in judges:
            scores = judge_clips(rt, k, stage, judge, clips)
            summary = summarise(clips, scores, category_of, cfg.judge.threshold, level_of=level_of)
            rt.store.record_evaluation(rt.run, k, rt.judge_name(judge), split=split, n=summary["n"],
                                       n_judged=summary["n_judged"], n_success=summary["n_success"],
                                       n_accept=summary["n_accept"], joint_success=summary["joint_success"],
                                       mean_sa=summary["mean_sa"], mean_pc=summary["mean_pc"],
                                       accept_rate=summary["accept_rate"], refine=refine,
                                       threshold=cfg.judge.threshold, per_category=summary["per_category"],
                                       per_level=summary["per_level"])
            results[rt.judge_name(judge)] = summary
    return results


def evaluate_all(rt: Runtime, k: int) -> None:
    """The round's whole evaluation: held-out prompts, the seen and paraphrase splits and refined held-out
    prompts where configured."""
    evaluate_round(rt, k, split="heldout")
    if rt.config.evaluate.seen_prompts:
        evaluate_round(rt, k, split="seen")
    evaluate_round(rt, k, split="paraphrase")  # nothing to do (and nothing recorded) when the pool is empty
    if rt.config.evaluate.refine:
        evaluate_round(rt, k, split="heldout", refine=True)


def summarise(clips: list[Clip], scores: dict[str, Score], category_of: dict[int, str], threshold: float,
              level_of: dict[int, int | None] | None = None) -> dict:
    """Joint success (sa ≥ t and pc ≥ t), mean sa / pc, accept rate, overall, per category and per level.

    Rates are over *every* clip (``n``): a clip the judge could not score counts as a failure, so
    a judge that fails on the hard clips cannot raise the number. Means of sa / pc are over the
    ``n_judged`` judged clips. Counts (``n_success``, ``n_accept``) are kept for intervals.
    """
    def agg(cs: list[Clip]) -> dict:
        all_scores = [scores.get(c.video_id) for c in cs]
        ss = [s for s in all_scores if s is not None and s.judged]
        n = len(cs)
        n_success = sum(1 for s in ss if s.joint(threshold))
        n_accept = sum(1 for s in ss if s.accept)
        return {"n": n, "n_judged": len(ss), "n_success": n_success, "n_accept": n_accept,
                "joint_success": n_success / n if n else None,
                "accept_rate": n_accept / n if n else None,
                "mean_sa": float(np.mean([s.sa for s in ss])) if ss else None,
                "mean_pc": float(np.mean([s.pc for s in ss])) if ss else None,
                "score": float(np.mean([s.mean for s in ss])) if ss else None}

    by_cat: dict[str, list[Clip]] = defaultdict(list)
    by_level: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        by_cat[category_of.get(c.idx) or "?"].append(c)
        level = (level_of or {}).get(c.idx)
        if level is not None:
            by_level[f"L{level}"].append(c)
    out = agg(clips)
    out["per_category"] = {cat: agg(cs) for cat, cs in sorted(by_cat.items())}
    out["per_level"] = {lv: agg(cs) for lv, cs in sorted(by_level.items())}
    return out


def resolve_args(rt: Runtime, k: int, idx: int, original: str) -> dict:
    """``refine_prompt``'s resolution arguments under the run's config (none when it is off)."""
    r = rt.config.refine
    if not (r.resolve and r.probe):
        return {}
    return {"resolve_probe": make_probe(rt, k, idx, original=original, stream="resolve"),
            "resolve_probes": r.resolve_probes}


def make_probe(rt: Runtime, k: int, idx: int, *, original: str | None = None, stream: str = "probe"):
    """A probe for refinement: one clip of a candidate prompt from the current model, judged.

    The clip is judged against the user's ``original`` prompt when given (a rewrite that adds
    requirements is not penalised for them, and one that drops them gains nothing), else
    against the candidate itself. ``stream`` names the noise seeds' stream (the resolution step
    probes with its own, so its clips never repeat a rewrite probe's noise).
    """

    def probe(text: str, step: int):
        seed = derive_seed(rt.config.seed, stream, k, idx, step)
        g = rt.generate([text], [seed], 1)[0][0]
        s = rt.score_batch(rt.judge, [(original or text, g.video)])[0]
        return g.video, s

    return probe


