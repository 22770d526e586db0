"""Exact brute-force inner-product search: the reference every approximate index is tested against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import IndexConfig, ItemIndex, as_queries, exact_topk


class ExactIndex(ItemIndex):
    """Chunked brute force in torch: scores = queries @ vectors.T per chunk of queries, top-k with
    ties broken by the lower item id (`exact_topk`). Scopes: small ones are scored over their
    own items only, large ones (more than half the catalogue) by masking the full score rows.

    vectors: (n, d) float32, row j = item ids[j] (ids sorted ascending; see `build_index`).
    """

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, config: IndexConfig | None = None,
                 item_categories: Any = None) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        super().__init__(config or IndexConfig(kind="exact"), vectors.shape[1], ids, item_categories)
        if len(vectors) != self.ntotal:
            raise ValueError(f"vectors: {len(vectors)} rows for {self.ntotal} ids")
        self.vectors = torch.from_numpy(vectors)  # (n, d)
        self._subset: tuple[np.ndarray, torch.Tensor] | None = None  # (allowed, its vectors) of the last scope

    def nbytes(self) -> int:
        return self.vectors.numel() * self.vectors.element_size()

    def _search_positions(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        cb = self.config.chunk_bytes
        if allowed is None:
            return exact_topk(queries, self.vectors, k, cb)
        if 2 * len(allowed) > self.ntotal:
            mask = np.zeros(self.ntotal, dtype=bool)
            mask[allowed] = True
            return exact_topk(queries, self.vectors, k, cb, mask=mask)
        if self._subset is None or self._subset[0] is not allowed:
            self._subset = (allowed, self.vectors[torch.from_numpy(allowed)])
        s, r = exact_topk(queries, self._subset[1], k, cb)
        return s, np.where(r >= 0, allowed[r.clip(min=0)], -1)

    def _release(self) -> None:
        self._subset = None

    def score_items(self, queries: Any, item_ids: np.ndarray) -> np.ndarray:
        """(Q, k) exact scores of the given item ids per query (-inf for ids not in the index / -1)."""
        x = torch.from_numpy(as_queries(queries, self.d))
        item_ids = np.asarray(item_ids, dtype=np.int64)
        j = np.searchsorted(self.ids, item_ids).clip(max=max(self.ntotal - 1, 0))
        ok = (item_ids >= 0) & (self.ids[j] == item_ids) if self.ntotal else np.zeros(item_ids.shape, bool)
        out = np.full(item_ids.shape, -np.inf, np.float32)
        step = max(1, (64 << 20) // max(1, 4 * item_ids.shape[1] * self.d))
        for a in range(0, len(x), step):
            v = self.vectors[torch.from_numpy(j[a : a + step])]  # (c, k, d)
            s = torch.einsum("ckd,cd->ck", v, x[a : a + step]).numpy()
            out[a : a + step] = np.where(ok[a : a + step], s, -np.inf)
        return out

    def _save_payload(self, path: Path) -> None:
        np.save(path / "vectors.npy", self.vectors.numpy())

    @classmethod
    def _load_payload(cls, path: Path, config: IndexConfig, ids: np.ndarray, cats: Any) -> "ExactIndex":
        return cls(np.load(path / "vectors.npy"), ids, config, cats)
