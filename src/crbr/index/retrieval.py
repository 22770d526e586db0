"""Retrieval on top of an ItemIndex: the `Retriever` protocol, single- and multi-vector retrieval,
merging several result lists, and recall against the exact reference.

Single-vector models (SASRec, PinnerFormer, the Set-Transformer retriever) search once per user vector. A
multi-vector model (Q-Former tokens: score = max over tokens) or a multi-path one (CRBR beam
paths, docs/design.md, "ANN per path -> merge & sort") searches each vector and merges: the union of
the per-vector lists, duplicates removed keeping the best score, sorted by score. With an exact
index and per_vector_k >= k this *is* the exact top-k of max-over-vectors scores: an item in
that top-k reaches its max at some vector t, and fewer than k items beat it at t.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from .base import ItemIndex, Scope, ScopeArg, SearchResult, check_finite, row_order


@runtime_checkable
class Retriever(Protocol):
    """Anything that answers top-k retrieval for a batch of users."""

    def retrieve(self, users: Any, k: int, scope: ScopeArg = None) -> SearchResult:
        ...


def merge_results(results: Sequence[SearchResult], k: int, quota: int | Sequence[int | None] | None = None) -> SearchResult:
    """Per query, the union of several result lists (same queries, any widths): one entry per item
    id with its best score, sorted by score descending then id ascending, the first k kept.

    An item found by several sources is attributed to the one that scored it highest (ties: the
    earlier source); `sources` in the output says which. quota: at most quota[j] output items
    per query are attributed to source j (an int applies to every source; None = no cap), taken
    in score order: items beyond a source's quota are skipped and lower-ranked items of other
    sources fill their places. Vectorized over queries; loops only over the sources.
    """
    if not results:
        raise ValueError("merge_results: no results to merge")
    Q = len(results[0])
    if any(len(r) != Q for r in results):
        raise ValueError(f"merge_results: all results must have the same number of queries ({[len(r) for r in results]})")
    n_src = len(results)
    quotas = [quota] * n_src if quota is None or isinstance(quota, (int, np.integer)) else list(quota)
    if len(quotas) != n_src:
        raise ValueError(f"merge_results: {len(quotas)} quotas for {n_src} sources")
    s = np.concatenate([np.asarray(r.scores, np.float32) for r in results], 1)  # (Q, W)
    ids = np.concatenate([np.asarray(r.ids, np.int64) for r in results], 1)
    src = np.concatenate([np.full(r.ids.shape, j, np.int16) for j, r in enumerate(results)], 1)
    pad = ids < 0
    s = np.where(pad, -np.inf, s)
    # dedupe: group equal ids, best score first (then earlier source); drop all but the first
    big = np.iinfo(np.int64).max
    o = np.lexsort((src, -s.astype(np.float64), np.where(pad, big, ids)), axis=1)
    s, ids, src = (np.take_along_axis(a, o, 1) for a in (s, ids, src))
    dup = np.zeros_like(pad)
    dup[:, 1:] = (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] >= 0)
    ids = np.where(dup, -1, ids)
    # score order, ties by lower id; padding last
    o = row_order(s, ids)
    s, ids, src = (np.take_along_axis(a, o, 1) for a in (s, ids, src))
    if any(q is not None for q in quotas):
        keep = ids >= 0
        for j, qj in enumerate(quotas):
            if qj is None:
                continue
            mine = keep & (src == j)
            keep &= ~(mine & (np.cumsum(mine, 1) > int(qj)))
        ids = np.where(keep, ids, -1)
        o = np.argsort(ids < 0, axis=1, kind="stable")  # survivors first, order kept
        s, ids, src = (np.take_along_axis(a, o, 1) for a in (s, ids, src))
    W = ids.shape[1]
    if W < k:
        fill = ((0, 0), (0, k - W))
        s, ids, src = np.pad(s, fill, constant_values=-np.inf), np.pad(ids, fill, constant_values=-1), np.pad(src, fill, constant_values=-1)
    s, ids, src = s[:, :k].copy(), ids[:, :k].copy(), src[:, :k].astype(np.int16)
    pad = ids < 0
    s[pad], src[pad] = -np.inf, -1
    return SearchResult(scores=s.astype(np.float32), ids=ids, sources=src)


def search_multi(index: ItemIndex, vectors: Any, k: int, scope: ScopeArg = None,
                 per_vector_k: int | None = None, quota: int | Sequence[int | None] | None = None) -> SearchResult:
    """Top-k by max over T vectors per query: vectors (Q, T, d) -> one batched search of Q*T
    vectors (per_vector_k each, default k), merged with `merge_results` (sources = vector t)."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu", torch.float32).numpy()
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"vectors: expected (Q, T, d), got shape {v.shape}")
    check_finite(v, "vectors", "(query, vector)")  # named before the flattening in index.search
    Q, T, d = v.shape
    kk = per_vector_k or k
    if scope is not None and not isinstance(scope, Scope):
        if len(scope) != Q:
            raise ValueError(f"scope: one per query needed, got {len(scope)} for {Q} queries")
        scope = [s for s in scope for _ in range(T)]
    r = index.search(v.reshape(Q * T, d), kk, scope)
    rs, ri = r.scores.reshape(Q, T, kk), r.ids.reshape(Q, T, kk)
    return merge_results([SearchResult(rs[:, t], ri[:, t]) for t in range(T)], k, quota)


class VectorRetriever:
    """A Retriever over an ItemIndex for models that give vectors: (Q, d) -> one search per user;
    (Q, T, d) -> `search_multi` (max over the T vectors: tokens, interests or beam paths)."""

    def __init__(self, index: ItemIndex, per_vector_k: int | None = None,
                 quota: int | Sequence[int | None] | None = None) -> None:
        self.index = index
        self.per_vector_k = per_vector_k
        self.quota = quota

    def retrieve(self, users: Any, k: int, scope: ScopeArg = None) -> SearchResult:
        ndim = users.dim() if isinstance(users, torch.Tensor) else np.ndim(users)
        if ndim == 3:
            return search_multi(self.index, users, k, scope, self.per_vector_k, self.quota)
        return self.index.search(users, k, scope)


def recall_at_k(approx: SearchResult, exact: SearchResult, approx_true_scores: np.ndarray, k: int | None = None) -> float:
    """Mean recall@k of `approx` against the exact top-k, ties counted as hits.

    approx_true_scores (Q, k'): exact scores of approx.ids (e.g. ExactIndex.score_items). A
    returned item is a hit when it is in the exact top-k or its exact score is >= the exact k-th
    score (an item tied with the k-th is as correct as the one the reference kept). Per query
    recall = hits / min(k, number of eligible items); queries with nothing eligible are skipped.
    """
    k = k or exact.k
    ex_ids, ex_s = exact.ids[:, :k], exact.scores[:, :k]
    ap_ids, ap_true = approx.ids[:, :k], approx_true_scores[:, :k]
    n_ok = (ex_ids >= 0).sum(1)
    rows = np.nonzero(n_ok > 0)[0]
    if not len(rows):
        return float("nan")
    kth = ex_s[rows, n_ok[rows] - 1][:, None]
    tol = 1e-6 * np.maximum(1.0, np.abs(kth))
    hits = np.zeros(len(rows))
    for a in range(0, len(rows), 1024):  # (chunk, k, k) membership test
        r = rows[a : a + 1024]
        ai = ap_ids[r]
        member = (ai[:, :, None] == ex_ids[r][:, None, :]).any(-1)
        hit = (ai >= 0) & (member | (ap_true[r] >= kth[a : a + 1024] - tol[a : a + 1024]))
        hits[a : a + 1024] = hit.sum(1)
    return float(np.mean(np.minimum(hits, n_ok[rows]) / n_ok[rows]))
