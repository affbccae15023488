"""The built-in world's prompt pool: training and held-out scenes, their prompts and real videos.

Held out means unseen *text*: the generator sees only the prompt, so a held-out prompt whose
text is also a training prompt measures new noise, not generalisation. A short prompt names
only the colours and the family ("a red ball is dropped"), so the split holds out whole colour
combinations (:data:`HELDOUT_COMBOS`): two of the five colours per single-object family (a
different two in each, so every colour is still trained on somewhere) and five of the twenty
striker/target pairs of collisions. Training scenes are those of the other combinations, held-out
scenes those of these; every prompt of a held-out scene, at any detail level (directions,
start regions), therefore names a combination no training prompt names, and no training text
can equal a held-out one. The critic never changes a colour, so refined training prompts
cannot either.

Scene seeds do not overlap either: training scenes are the first ``n`` training-combination
scenes from seed 0 of each family, held-out scenes the first ``n`` held-out-combination scenes
from ``HELDOUT_SEED0``, and the base generator was pretrained on seeds from ``1_000_000`` on
(every combination; see ``scripts/build_toy_base.py``). The action category of a world prompt
is its scenario family. Real videos are rendered once into ``<runs_dir>/datasets/world/`` and
referenced by path and content hash, like the real videos of an imported dataset.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from reward.world import physics as P
from reward.world.simulator import Scene, render, sample_scene
from store import Store, sha256_file, verify, write_video

from .config import WorldDataConfig

HELDOUT_SEED0 = 500_000
SOURCE_TRAIN = "world-train"
SOURCE_HELDOUT = "world-heldout"
SOURCE_PARAPHRASE = "world-paraphrase"
REAL_DIR = "datasets/world"

#: Colour combinations (the first object's colour; striker then target for collisions) whose
#: scenes are held out. Each colour is held out in one or two single-object families and is the
#: striker of one held-out collision pair and the target of another.
HELDOUT_COMBOS: dict[str, frozenset[tuple[str, ...]]] = {
    "drop": frozenset({("blue",), ("purple",)}),
    "projectile": frozenset({("red",), ("green",)}),
    "slide": frozenset({("yellow",), ("blue",)}),
    "collision": frozenset({("red", "blue"), ("green", "purple"), ("blue", "yellow"), ("yellow", "green"),
                            ("purple", "red")}),
}


#: Short prompts reworded with verbs and nouns no caption of the base generator's pretraining uses
#: (``simulator.prompts_for`` says "dropped", "thrown", "slides", "rolls into"); every one still
#: carries a family word of ``physics.FAMILY_WORDS``, so both judges can tell what it asks. The
#: 'paraphrase' split asks whether a gain carries over to words the model was never conditioned on.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "drop": ("someone lets go of a {c} ball and it goes falling to the ground",
             "a {c} ball, let go of, comes down bouncing"),
    "projectile": ("a {c} ball gets tossed through the air", "a {c} ball is lobbed across the room"),
    "slide": ("a {c} block skids over the ground", "a {c} block glides along the ground"),
    "collision": ("a {c} ball crashes into a {c2} ball", "a {c} ball collides with a {c2} ball"),
}


def prompt_id(family: str, seed: int, level: int) -> str:
    return f"world:{family}-{seed}:L{level}"


def paraphrase_id(family: str, seed: int) -> str:
    return f"world:{family}-{seed}:P"


def paraphrase(scene: Scene) -> str:
    """The scene's short prompt in other words (one of :data:`PARAPHRASES`, chosen by the seed)."""
    templates = PARAPHRASES[scene.family]
    c2 = scene.colours[1] if len(scene.colours) > 1 else ""
    return templates[scene.seed % len(templates)].format(c=scene.colours[0], c2=c2)


def is_heldout(scene: Scene) -> bool:
    """Whether the scene's colour combination is one of the held-out ones."""
    return scene.colours in HELDOUT_COMBOS[scene.family]


@lru_cache(maxsize=256)
def split_seeds(family: str, heldout: bool, n: int) -> tuple[int, ...]:
    """Seeds of the first ``n`` scenes of ``family`` on the training (or held-out) side of the split."""
    seed, out = (HELDOUT_SEED0 if heldout else 0), []
    while len(out) < n:
        if is_heldout(sample_scene(family, seed)) == heldout:
            out.append(seed)
        seed += 1
    return tuple(out)


def _splits(cfg: WorldDataConfig):
    """(source, held out?, scenes per family, prompt levels) of the run's two pools."""
    return ((SOURCE_TRAIN, False, cfg.train_scenes_per_family, (cfg.train_level,)),
            (SOURCE_HELDOUT, True, cfg.heldout_scenes_per_family, cfg.heldout_levels))


def pool_ids(cfg: WorldDataConfig, source: str) -> set[str]:
    """Ids of the prompts a run with this config uses from ``source`` (no rendering).

    Runs with other pool sizes or prompt levels share one store, so a run must pick its own pool
    out of what the store holds rather than take every world prompt there.
    """
    if source == SOURCE_PARAPHRASE:
        return {paraphrase_id(family, seed) for family in P.FAMILIES
                for seed in split_seeds(family, True, cfg.paraphrase_scenes_per_family)}
    return {prompt_id(family, seed, level) for src, held, n, levels in _splits(cfg) if src == source
            for family in P.FAMILIES for seed in split_seeds(family, held, n) for level in levels}


def world_prompts(cfg: WorldDataConfig, runs_dir: Path) -> list[dict]:
    """Dataset prompt rows (see ``Store.upsert_prompts``) of the configured scene pool.

    Writes each scene's real video on first use and reuses it afterwards (rendering is
    deterministic; :func:`ensure_world_prompts` checks the stored hashes). A held-out scene gives
    one prompt per configured held-out level, in level order.
    """
    rows = []
    for source, held, n, levels in _splits(cfg):
        for level in levels:
            for family in P.FAMILIES:
                for seed in split_seeds(family, held, n):
                    scene = sample_scene(family, seed)
                    rel = f"{REAL_DIR}/{scene.id}.npy"
                    path = Path(runs_dir) / rel
                    if not path.is_file():
                        write_video(path, render(scene))  # atomic: temp file, then rename
                    rows.append({
                        "id": prompt_id(family, scene.seed, level), "text": scene.prompts[level],
                        "category": family, "level": level, "source": source, "real_video": rel,
                        "real_sha256": sha256_file(path),
                    })
    for family in P.FAMILIES:  # the first held-out scenes, reworded (their real videos are already written)
        for seed in split_seeds(family, True, cfg.paraphrase_scenes_per_family):
            scene = sample_scene(family, seed)
            rel = f"{REAL_DIR}/{scene.id}.npy"
            path = Path(runs_dir) / rel
            if not path.is_file():
                write_video(path, render(scene))
            rows.append({"id": paraphrase_id(family, seed), "text": paraphrase(scene), "category": family,
                         "level": 0, "source": SOURCE_PARAPHRASE, "real_video": rel,
                         "real_sha256": sha256_file(path)})
    return rows


def ensure_world_prompts(store: Store, cfg: WorldDataConfig, runs_dir: Path) -> None:
    """Put the world's prompt pool into the store (idempotent)."""
    rows = world_prompts(cfg, runs_dir)
    for r in rows:
        if not verify(Path(runs_dir) / r["real_video"], r["real_sha256"]):
            raise RuntimeError(f"real video {r['real_video']} does not match its hash")
    with store.transaction():
        store.upsert_prompts(rows)
