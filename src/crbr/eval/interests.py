"""Interest coverage: how many of a user's interests a retrieved list touches (docs/design.md, CRBR).

coverage@K(u) = |interests(u) ∩ categories(top-K(u))| / |interests(u)|

Interests are the user's true latent interests on the synthetic world (ground truth) or, on real
data, the categories of the user's history. An item counts for every category it has.
"""

from __future__ import annotations

import numpy as np


def categories_of(items: np.ndarray, cat_offsets: np.ndarray, cat_ids: np.ndarray) -> list[set[int]]:
    """Per row of `items` (U, K) the set of categories of its items (ids <= 0 ignored)."""
    out = []
    for row in np.asarray(items):
        row = row[row > 0]
        starts, ends = cat_offsets[row], cat_offsets[row + 1]
        idx = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if len(row) else np.zeros(0, np.int64)
        out.append(set(np.asarray(cat_ids)[idx].tolist()))
    return out


def interest_coverage(topk: np.ndarray, interests: list[set[int]] | list[np.ndarray], cat_offsets: np.ndarray,
                      cat_ids: np.ndarray, k: int = 50) -> np.ndarray:
    """(U,) coverage@k of each user's interests by the categories of their top-k items.

    topk:      (U, >=k) retrieved item ids, best first (<= 0 = padding)
    interests: per user, the set of interest category ids (users with none get NaN)
    """
    got = categories_of(np.asarray(topk)[:, :k], np.asarray(cat_offsets), np.asarray(cat_ids))
    cov = np.full(len(got), np.nan)
    for u, (g, want) in enumerate(zip(got, interests)):
        want = set(np.asarray(list(want)).tolist())
        if want:
            cov[u] = len(want & g) / len(want)
    return cov


def history_categories(ds, users: np.ndarray, hist_len: np.ndarray) -> list[set[int]]:
    """Per user, the categories of the items in the visible history (real data's 'interests')."""
    out = []
    items = np.asarray(ds.items)
    for u, n in zip(users, hist_len):
        s = ds.offsets[u]
        out.append(categories_of(items[s : s + n][None, :], np.asarray(ds.cat_offsets), np.asarray(ds.cat_ids))[0])
    return out
