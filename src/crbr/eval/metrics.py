"""Full-ranking metric kernels (docs/design.md, "Evaluation protocol"): exact target ranks, ordered top-K lists, per-user metrics.

Conventions used everywhere in `crbr.eval`:

* Scores are a float32 matrix (B, I) over the whole catalogue, I = n_items + 1; column 0 is
  padding and is set to -inf before ranking.
* An item whose score is -inf (padding, a masked history item, or -inf from the model) is
  **not ranked**: it never precedes another item, a target with score -inf is unreachable
  (rank = +inf, a miss for every metric) and it never appears in a top-K list.
* **Ties are broken by lower item id first.** The rank of target t among real items j >= 1 is

      rank(t) = 1 + #{j : s_j > s_t} + #{j : s_j == s_t, j < t}

  and top-K lists are ordered by (-score, item id), so position p (0-based) in a top-K list holds
  exactly the item of rank p + 1, and metrics recomputed from exported lists equal reported ones.

Per-user metrics for a user with the set of distinct targets T (|T| >= 1) and ranks r_t:

* HR@K      = 1 if min_t r_t <= K else 0                              (hit rate)
* Recall@K  = #{t : r_t <= K} / |T|
* NDCG@K    = DCG@K / IDCG@K with binary relevance,
              DCG@K  = sum_{t : r_t <= K} 1 / log2(r_t + 1),
              IDCG@K = sum_{i=1}^{min(|T|, K)} 1 / log2(i + 1)
* MRR       = 1 / min_t r_t over the FULL catalogue (not truncated at any K; 0 if unreachable)

With exactly one target (leave-one-out) HR@K == Recall@K and NDCG@K = 1 / log2(rank + 1) if
rank <= K. Reported values are means over evaluated users.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ranking import topk_ordered  # noqa: F401  (re-exported: the tie rule lives with the ranking contract)


def _check_ks(ks) -> tuple[int, ...]:
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def _row_counts(mask: torch.Tensor) -> torch.Tensor:
    """(B, I) bool -> (B,) int64 number of True per row (numpy's count_nonzero is far faster on CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.count_nonzero(mask.numpy(), axis=1).astype(np.int64))
    return mask.sum(1)


def target_ranks(
    scores: torch.Tensor,
    rows: torch.Tensor,
    targets: torch.Tensor,
    max_elems: int,
    method: str | None = None,
) -> np.ndarray:
    """Exact 1-based rank of each (row, target) pair, ties broken by lower item id first.

    scores:  (B, I) float32, already masked (-inf on padding / masked items), no NaN
    rows:    (P,) int64 row of `scores` of each pair
    targets: (P,) int64 target item id of each pair
    max_elems: the vectorized method compares at most this many entries at once
    method:  "rows" (default on CPU): per pair, one pass over the row in numpy,
                 rank - 1 = #{j < t : s_j >= s_t} + #{j > t : s_j > s_t};
             "masks" (default on accelerators): the same count from (p, I) comparison masks
                 for groups of p = max(1, max_elems // I) pairs.

    Returns (P,) float64 ranks; +inf where the target's score is -inf (unreachable).
    """
    B, I = scores.shape
    P = rows.shape[0]
    if P == 0:
        return np.zeros(0, dtype=np.float64)
    if method is None:
        method = "rows" if scores.device.type == "cpu" else "masks"
    dev = scores.device
    if method == "rows":
        a = scores.cpu().numpy()  # (B, I), a view when scores is on the CPU
        r_np, t_np = rows.cpu().numpy(), targets.cpu().numpy()
        ranks = np.empty(P, dtype=np.float64)
        for p in range(P):
            row, t = a[r_np[p]], int(t_np[p])
            v = row[t]
            if v == -np.inf:
                ranks[p] = np.inf
            else:
                ranks[p] = 1 + np.count_nonzero(row[:t] >= v) + np.count_nonzero(row[t + 1 :] > v)
        return ranks
    if method != "masks":
        raise ValueError(f"method must be 'rows' or 'masks', got {method!r}")
    rows, targets = rows.to(dev), targets.to(dev)
    out = torch.empty(P, dtype=torch.int64, device=dev)
    st = scores[rows, targets]  # (P,)
    col = torch.arange(I, device=dev)  # (I,)
    identity = P == B and bool(torch.equal(rows, torch.arange(B, device=dev)))
    step = max(1, max_elems // I)
    for s in range(0, P, step):
        e = min(P, s + step)
        S = scores[s:e] if identity else scores.index_select(0, rows[s:e])  # (p, I)
        v = st[s:e, None]  # (p, 1)
        before = S > v
        before |= (S == v) & (col[None, :] < targets[s:e, None])
        out[s:e] = _row_counts(before)
    ranks = out.to(torch.float64).add_(1)
    ranks[torch.isneginf(st)] = float("inf")
    return ranks.cpu().numpy()


def idcg_table(k_max: int) -> np.ndarray:
    """(k_max + 1,) float64: entry n = sum_{i=1}^{n} 1 / log2(i + 1) (entry 0 = 0)."""
    out = np.zeros(k_max + 1, dtype=np.float64)
    np.cumsum(1.0 / np.log2(np.arange(2, k_max + 2, dtype=np.float64)), out=out[1:])
    return out


def user_metrics(ranks: np.ndarray, target_offsets: np.ndarray, ks) -> dict[str, np.ndarray]:
    """Per-user HR@K, NDCG@K, Recall@K for K in ks and MRR (definitions in the module docstring).

    ranks:          (P,) float64 rank of each (user, distinct target) pair, +inf = unreachable
    target_offsets: (U + 1,) user u's pairs are ranks[target_offsets[u]:target_offsets[u+1]];
                    every user has at least one target
    Returns {name: (U,) float64}.
    """
    ks = _check_ks(ks)
    n_t = np.diff(target_offsets).astype(np.int64)  # (U,)
    U = len(n_t)
    if U and n_t.min() < 1:
        raise ValueError("every evaluated user needs at least one target")
    user = np.repeat(np.arange(U), n_t)  # (P,)
    gain = 1.0 / np.log2(ranks + 1.0)  # (P,) 0 where unreachable
    idcg = idcg_table(ks[-1])
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks <= k  # (P,)
        n_hit = np.bincount(user, weights=hit, minlength=U)
        dcg = np.bincount(user, weights=np.where(hit, gain, 0.0), minlength=U)
        out[f"HR@{k}"] = (n_hit > 0).astype(np.float64)
        out[f"NDCG@{k}"] = dcg / idcg[np.minimum(n_t, k)]
        out[f"Recall@{k}"] = n_hit / n_t
    best = np.minimum.reduceat(ranks, target_offsets[:-1]) if U else np.zeros(0)
    out["MRR"] = 1.0 / best
    return out


def popularity_buckets(train_counts: np.ndarray, n_buckets: int) -> np.ndarray:
    """(I,) int64 popularity bucket of each item (0 = head ... n_buckets-1 = tail; -1 for padding).

    Items 1..n_items are sorted by training count descending, ties by lower item id first, and
    split into `n_buckets` consecutive groups of equal item count (np.array_split: when n_items is
    not divisible the first n_items % n_buckets groups hold one item more).
    """
    counts = np.asarray(train_counts)
    n_items = len(counts) - 1
    if n_buckets < 1 or n_buckets > max(n_items, 1):
        raise ValueError(f"n_buckets must be in 1..{n_items}, got {n_buckets}")
    ids = np.arange(1, n_items + 1)
    order = ids[np.lexsort((ids, -counts[1:].astype(np.int64)))]  # most popular first
    bucket = np.full(n_items + 1, -1, dtype=np.int64)
    for b, grp in enumerate(np.array_split(order, n_buckets)):
        bucket[grp] = b
    return bucket


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve of scores of positives against negatives: the share of
    (positive, negative) pairs the positive wins, ties counting one half (average ranks); NaN
    when either side is empty."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    s = np.r_[pos, neg]
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    _, inv, cnt = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inv, weights=ranks) / cnt)[inv]  # tied scores share their average rank
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def grouped_auc(groups: np.ndarray, score: np.ndarray, label: np.ndarray) -> float:
    """Mean of the per-group AUC over groups (e.g. users) that have both classes."""
    groups, score, label = np.asarray(groups), np.asarray(score), np.asarray(label, dtype=bool)
    vals = [auc(score[(groups == g) & label], score[(groups == g) & ~label]) for g in np.unique(groups)]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")
