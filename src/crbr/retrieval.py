"""Retrieval: a trained model's query vectors searched in an item index, merged into one list.

This layer sits above the models and the indexes and is the only place that joins them:

    res = retrieve(model, batch, k=100)                        # exact search over item_vectors()
    res = retrieve(model, batch, k=100, index=hnsw, quota=30)  # an ANN index, at most 30 per path
    res = retrieve(model, batch, k=100, beam=8)                # inference options go to the model

Every model whose scores are a max of dot products (`vector_scores`) gives `query_vectors`:
T vectors per user (one for SASRec-style models, the tokens of the Q-Former, one per beam path of
CRBR) with per-vector score offsets. Each vector is searched (one batched index call for all
users and vectors) and the lists are merged: union, duplicates removed keeping the best score,
sorted by (-score, item id), optionally at most `quota` items per vector. With an exact index and
per_vector_k >= k (and no quota) this is exactly the model's own top-k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .index import ItemIndex, SearchResult, build_index, merge_results
from .index.base import ScopeArg
from .models.base import QueryVectors, Recommender
from .ranking import RankedItems


@dataclass
class PathRetrieval:
    """Merged retrieval of U users: ids / scores (U, k) best first (id -1 and -inf where fewer
    than k items were found), `path` (U, k) which query vector found each item (-1 on padding),
    and the query vectors themselves (with the model's details, e.g. beam codes) for explanation."""

    ids: np.ndarray
    scores: np.ndarray
    path: np.ndarray
    queries: QueryVectors

    @property
    def beams(self) -> "Paths":
        """The query vectors as paths: queries (U, T, D), path scores (U, T) and codes (U, T, L)
        where the model gives them (multi-path models), else None."""
        d = self.queries.details
        return Paths(self.queries.vectors, d.get("path_scores"), d.get("codes"))

    def ranked(self) -> RankedItems:
        """As the common result type (padding: item 0, score -inf), with provenance "path"."""
        pad = self.ids < 0
        items = torch.from_numpy(np.where(pad, 0, self.ids).astype(np.int64))
        scores = torch.from_numpy(np.where(pad, -np.inf, self.scores).astype(np.float32))
        return RankedItems(items, scores, {"path": torch.from_numpy(self.path.astype(np.int64))})


@dataclass
class Paths:
    queries: torch.Tensor  # (U, T, D)
    scores: torch.Tensor | None  # (U, T) path scores, best first
    codes: torch.Tensor | None  # (U, T, L)


def retrieve(model: Recommender, batch: dict[str, torch.Tensor], k: int, index: ItemIndex | None = None,
             per_vector_k: int | None = None, quota: int | None = None, scope: ScopeArg = None,
             **options: Any) -> PathRetrieval:
    """Top-k items per user by searching each of the model's query vectors in `index` (default:
    an exact index over `model.item_vectors()`) and merging; `options` go to `query_vectors`."""
    with torch.no_grad():
        qv = model.query_vectors(batch, **options)
        if index is None:
            index = build_index(model.item_vectors(), "exact")
    U, T, D = qv.vectors.shape
    kk = per_vector_k or k
    if scope is not None and not isinstance(scope, (list, tuple)):
        flat_scope = scope
    else:
        flat_scope = None if scope is None else [s for s in scope for _ in range(T)]
    flat = index.search(qv.vectors.reshape(U * T, D).cpu().numpy(), kk, flat_scope)  # one call for all vectors
    scores = flat.scores.reshape(U, T, -1) + qv.offsets.float().cpu().numpy()[:, :, None]
    ids = flat.ids.reshape(U, T, -1)
    merged = merge_results([SearchResult(scores[:, t], ids[:, t]) for t in range(T)], k, quota)
    return PathRetrieval(merged.ids, merged.scores, merged.sources.astype(np.int64), qv)


retrieve_paths = retrieve  # the multi-path name used in CRBR's documentation
