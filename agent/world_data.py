"""The built-in world's prompt pool: training and held-out scenes, their prompts and real videos.

Scene seeds are split so that nothing leaks: training scenes use seeds ``0 … n−1`` of each
family, held-out scenes ``HELDOUT_SEED0 + i``, and the base generator was pretrained on seeds
from ``1_000_000`` on (see ``scripts/build_toy_base.py``). The action category of a world
prompt is its scenario family. Real videos are rendered once into
``<runs_dir>/datasets/world/`` and referenced by path and content hash, like the real videos
of an imported dataset.
"""

from __future__ import annotations

from pathlib import Path

from reward.world import physics as P
from reward.world.simulator import render, sample_scene
from store import Store, sha256_file, verify, write_video

from .config import WorldDataConfig

HELDOUT_SEED0 = 500_000
SOURCE_TRAIN = "world-train"
SOURCE_HELDOUT = "world-heldout"
REAL_DIR = "datasets/world"


def prompt_id(family: str, seed: int, level: int) -> str:
    return f"world:{family}-{seed}:L{level}"


def _splits(cfg: WorldDataConfig):
    return ((SOURCE_TRAIN, 0, cfg.train_scenes_per_family, cfg.train_level),
            (SOURCE_HELDOUT, HELDOUT_SEED0, cfg.heldout_scenes_per_family, cfg.heldout_level))


def pool_ids(cfg: WorldDataConfig, source: str) -> set[str]:
    """Ids of the prompts a run with this config uses from ``source`` (no rendering).

    Runs with other pool sizes or prompt levels share one store, so a run must pick its own pool
    out of what the store holds rather than take every world prompt there.
    """
    return {prompt_id(family, seed0 + i, level) for src, seed0, n, level in _splits(cfg) if src == source
            for family in P.FAMILIES for i in range(n)}


def world_prompts(cfg: WorldDataConfig, runs_dir: Path) -> list[dict]:
    """Dataset prompt rows (see ``Store.upsert_prompts``) of the configured scene pool.

    Writes each scene's real video on first use and reuses it afterwards (rendering is
    deterministic; :func:`ensure_world_prompts` checks the stored hashes).
    """
    rows = []
    for source, seed0, n, level in _splits(cfg):
        for family in P.FAMILIES:
            for i in range(n):
                scene = sample_scene(family, seed0 + i)
                rel = f"{REAL_DIR}/{scene.id}.npy"
                path = Path(runs_dir) / rel
                if not path.is_file():
                    write_video(path, render(scene))  # atomic: temp file, then rename
                rows.append({
                    "id": prompt_id(family, scene.seed, level), "text": scene.prompts[level], "category": family,
                    "level": level, "source": source, "real_video": rel, "real_sha256": sha256_file(path),
                })
    return rows


def ensure_world_prompts(store: Store, cfg: WorldDataConfig, runs_dir: Path) -> None:
    """Put the world's prompt pool into the store (idempotent)."""
    rows = world_prompts(cfg, runs_dir)
    for r in rows:
        if not verify(Path(runs_dir) / r["real_video"], r["real_sha256"]):
            raise RuntimeError(f"real video {r['real_video']} does not match its hash")
    with store.transaction():
        store.upsert_prompts(rows)
