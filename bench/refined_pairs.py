"""Refinement at inference on a trained round: refined vs as-written held-out clips of stored runs.

Runs evaluated with ``evaluate.refine = true`` store every held-out prompt twice each round: as written
and refined (``idx + REFINED_OFFSET``), with the same noise seeds, both judged against the prompt as
written. This pairs them clip for clip over every run in ``--runs-dir`` and reports, per round and
judge, joint success of both and the paired difference (cluster bootstrap over (run, prompt)), on all
held-out prompts and on the short ones (level 0).

    python bench/refined_pairs.py --runs-dir bench/out/sweep/resolve --rounds 0 5 \\
        --out bench/results/sweep/resolve_3seeds_5rounds_refined_pairs.json
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUERY = """SELECT v.run, v.round, v.prompt_idx, v.group_index, s.judge, s.judged, s.sa, s.pc, p.level
FROM videos v JOIN scores s ON s.video_id = v.id JOIN round_prompts rp ON rp.id = v.round_prompt_id
LEFT JOIN prompts p ON p.id = rp.prompt_id WHERE v.split = 'heldout'"""


def main(argv=None):
    from agent.stats import paired_bootstrap
    from store import JOINT_THRESHOLD, REFINED_OFFSET

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    db_path = args.runs_dir / "phyloop.db"
    if not db_path.is_file():
        print(f"error: no store at {db_path}", file=sys.stderr)
        return 2
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    clips = {}
    for run, k, idx, j, judge, judged, sa, pc, lv in db.execute(QUERY):
        ok = float(bool(judged) and sa >= JOINT_THRESHOLD and pc >= JOINT_THRESHOLD)
        clips[(run, k, idx % REFINED_OFFSET, j, judge, idx >= REFINED_OFFSET)] = (ok, lv)
    judges = sorted({key[4] for key in clips})
    out = {}
    for k in args.rounds:
        for judge in judges:
            for level in (None, 0):
                keys = [key for key in clips if key[1] == k and key[4] == judge and not key[5]
                        and (*key[:5], True) in clips and (level is None or clips[key][1] == level)]
                if not keys:
                    continue
                a = np.array([clips[key][0] for key in keys])
                b = np.array([clips[(*key[:5], True)][0] for key in keys])
                clusters = np.unique([f"{key[0]}/{key[2]}" for key in keys], return_inverse=True)[1]
                d = paired_bootstrap(a, b, clusters=clusters)
                name = f"round {k} {judge} {'short' if level == 0 else 'all'}"
                out[name] = {"clips": len(keys), "as_written": float(a.mean()), "refined": float(b.mean()),
                             "difference": d["estimate"], "ci": d["ci"]}
                print(f"{name:28s} {len(keys):5d} clips  {100 * a.mean():.1f} → {100 * b.mean():.1f} %  "
                      f"Δ {100 * d['estimate']:+.1f} pp [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]")
    if not out:
        print("error: no refined held-out evaluations in this store (run with evaluate.refine = true)",
              file=sys.stderr)
        return 2
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
