"""Store under concurrency: writers and a reader in separate processes on one WAL database.

Two writer processes each run a fake loop (every stage its own transaction, the round
marked done last) while a reader process polls ``round_metrics`` and ``round_detail``.
Nobody may see "database is locked", and every finished round the reader sees must be
complete and carry exactly the numbers the writer wrote.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback

import pytest

from store import Store

ROUNDS = 12
PROMPTS, GROUP = 4, 2
STEPS = 5
STAGES = ("plan", "refine", "generate", "judge", "train", "evaluate")


def scores(k: int, i: int, g: int) -> tuple[float, float]:
    """The (sa, pc) the fake judge gives video g of prompt i in round k (multiples of 0.25)."""
    return ((k + i + g) % 5) / 4, ((k + 2 * i + g) % 5) / 4


def expected(k: int) -> dict:
    pairs = [scores(k, i, g) for i in range(PROMPTS) for g in range(GROUP)]
    n = len(pairs)
    return {
        "n_videos": n, "n_judged": n, "n_unjudged": 0,
        "mean_sa": sum(sa for sa, _ in pairs) / n, "mean_pc": sum(pc for _, pc in pairs) / n,
        "joint_success": sum(sa >= 0.75 and pc >= 0.75 for sa, pc in pairs) / n,
        "loss": sum(k + s / 10 for s in range(STEPS)) / STEPS,
        "heldout_joint_success": k / 100, "n_steps": STEPS,
        "stages": set(STAGES),
    }


def write_round(store: Store, run: str, k: int) -> None:
    store.start_round(run, k)
    with store.transaction():
        for i in range(PROMPTS):
            store.record_round_prompt(run, k, "train", i, text=f"prompt {i}", category=f"c{i % 2}")
        store.record_stage_time(run, k, "plan", 0.01)
        store.record_stage_time(run, k, "refine", 0.01)
    with store.transaction():
        for i in range(PROMPTS):
            for g in range(GROUP):
                store.record_video(run, k, "train", i, "generated", g, path=f"v/{k}/{i}_{g}.npy", seed=g)
        store.record_stage_time(run, k, "generate", 0.02)
    with store.transaction():
        for i in range(PROMPTS):
            for g in range(GROUP):
                sa, pc = scores(k, i, g)
                store.record_score(f"{run}:{k}:train:{i}:generated:{g}", "physics",
                                   {"sa": sa, "pc": pc, "accept": sa >= 0.75 and pc >= 0.75, "raw": "x" * 200})
        store.record_stage_time(run, k, "judge", 0.02)
    with store.transaction():
        for s in range(STEPS):
            store.record_train_step(run, k, s, loss=k + s / 10, margin=0.1, accuracy=0.5)
        store.record_train_summary(run, k, objective="phygdpo", steps=STEPS, groups_used=PROMPTS)
        store.record_stage_time(run, k, "train", 0.05)
    with store.transaction():
        store.record_evaluation(run, k, "physics", n=4, joint_success=k / 100, mean_sa=0.5, mean_pc=0.5,
                                accept_rate=0.5)
        store.record_stage_time(run, k, "evaluate", 0.01)
    store.finish_round(run, k)


def writer(path: str, run: str, start, out, partial=None) -> None:
    try:
        start.wait()
        with Store.open(path) as store:
            store.create_run(run, {"rounds": ROUNDS})
            for k in range(ROUNDS):
                write_round(store, run, k)
                if partial is not None and k == 0:  # let the reader see a run mid-way, however the OS schedules us
                    partial.wait(timeout=60)
                time.sleep(0.01)  # a real loop spends its time outside the database
                if k == ROUNDS // 2:  # hold the write lock a while: the other writer must wait, not fail
                    with store.transaction():
                        store.record_event(run, "slow_stage", round=k)
                        time.sleep(0.3)
        out.put(("writer", run, None))
    except BaseException:
        out.put(("writer", run, traceback.format_exc()))


def reader(path: str, runs: list[str], start, stop, out, partial) -> None:
    try:
        start.wait()
        seen: dict[str, int] = {r: -1 for r in runs}
        states: set[tuple[str, int]] = set()  # distinct (run, finished rounds) views observed
        reads = 0
        deadline = time.monotonic() + 90
        with Store.open(path) as store:
            final = False
            while time.monotonic() < deadline and not final:
                final = stop.is_set()  # the writers have ended: one last pass, then report
                for run in runs:
                    metrics = store.round_metrics(run)
                    reads += 1
                    for m in metrics:
                        want = expected(m["round"])
                        got = {key: m[key] for key in want if key != "stages"}
                        got["stages"] = set(m["stage_times"])
                        assert m["status"] == "done", m
                        for key, value in want.items():
                            if isinstance(value, float):
                                assert abs(got[key] - value) < 1e-9, (run, m["round"], key, got[key], value)
                            else:
                                assert got[key] == value, (run, m["round"], key, got[key], value)
                    if metrics:
                        last = metrics[-1]["round"]
                        assert [m["round"] for m in metrics] == list(range(last + 1))
                        detail = store.round_detail(run, last)
                        assert len(detail["videos"]) == PROMPTS * GROUP
                        assert all(len(v["scores"]) == 1 for v in detail["videos"])
                        assert len(detail["training"]["steps"]) == STEPS
                        seen[run] = last
                    states.add((run, len(metrics)))
                    if 0 < len(metrics) < ROUNDS:
                        partial.set()
        done = all(v == ROUNDS - 1 for v in seen.values())
        out.put(("reader", len(states), None if done else f"only saw {seen} after {reads} reads"))
    except BaseException:
        out.put(("reader", 0, traceback.format_exc()))


@pytest.mark.timeout(180)
def test_writers_and_reader_in_parallel_processes(tmp_path):
    path = str(tmp_path / "runs" / "phyloop.db")  # does not exist yet: all three open (and migrate) at once
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(3), ctx.Queue()  # released once all three interpreters have started
    stop, partial = ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=writer, args=(path, "a", start, out, partial)),
             ctx.Process(target=writer, args=(path, "b", start, out)),
             ctx.Process(target=reader, args=(path, ["a", "b"], start, stop, out, partial))]
    for p in procs:
        p.start()
    results = []
    while len(results) < len(procs):
        results.append(out.get(timeout=150))
        if sum(r[0] == "writer" for r in results) == 2:
            stop.set()
    for p in procs:
        p.join(timeout=30)
    errors = [r[2] for r in results if r[2]]
    assert not errors, "\n".join(errors)
    views = next(r[1] for r in results if r[0] == "reader")
    # it really read while the writers wrote: a run seen part-way (writer a waits for that after its
    # first round, so this does not depend on scheduling), plus both runs' final states
    assert partial.is_set() and views >= 3, views

    with Store.open(path) as store:
        for run in ("a", "b"):
            assert store.completed_rounds(run) == list(range(ROUNDS))
        counts = store.table_counts()
        assert counts["videos"] == 2 * ROUNDS * PROMPTS * GROUP
        assert counts["scores"] == counts["videos"]


def test_reader_sees_a_round_only_once_it_is_done(tmp_path):
    """In one process: between the stages of a round the finished-rounds view does not move."""
    path = tmp_path / "p.db"
    with Store.open(path) as w, Store.open(path) as r:
        w.create_run("a", {})
        write_round(w, "a", 0)
        w.start_round("a", 1)
        with w.transaction():
            w.record_round_prompt("a", 1, "train", 0, text="p")
            w.record_video("a", 1, "train", 0, "generated", 0, path="x.npy")
            # uncommitted: the other connection sees nothing of it, not even with done_only=False
            assert [m["round"] for m in r.round_metrics("a", done_only=False)] == [0, 1]
            assert r.round_detail("a", 1)["videos"] == []
        assert [m["round"] for m in r.round_metrics("a")] == [0]
        assert r.round_metrics("a", done_only=False)[1]["n_videos"] == 1
