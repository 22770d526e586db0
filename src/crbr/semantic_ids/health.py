"""How healthy a catalogue's semantic IDs are, before any generator is trained on them.

Four groups of numbers (`health_report` returns them as one dict; `format_report` prints them):

* item embeddings: anisotropy (mean cosine of random pairs; share of variance along the top
  singular direction; effective rank), hubness (skewness of the 10-occurrence distribution,
  share of items in nobody's 10 nearest neighbours), rank correlation of norm and popularity;
* codebooks, per level: usage entropy and perplexity, dead codes, Gini of code usage, and with
  the tokenizer's codebooks, inertia, residual-norm ratio and cumulative reconstruction error;
* IDs: collision rate before disambiguation, largest bucket, distinct IDs per item, share of
  items whose level-1 code is their category's most common level-1 code;
* a predictive check from the training sequences: how much more often than chance the next item
  shares the previous item's level-1 (level-2) prefix.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from .ids import SemanticIDs, collision_stats


# ---------------------------------------------------------------------------- item embeddings
def anisotropy(x: np.ndarray, n_pairs: int = 20000, seed: int = 0) -> dict[str, float]:
    """Mean cosine of random distinct pairs, top singular direction's variance share (of the
    uncentred matrix), effective rank exp(H(s / sum s)) of the singular values s."""
    n = len(x)
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    a, b = rng.integers(n, size=n_pairs), rng.integers(n, size=n_pairs)
    keep = a != b
    cos = float((u[a[keep]] * u[b[keep]]).sum(1).mean()) if keep.any() else 1.0
    s = np.linalg.svd(u.astype(np.float64), compute_uv=False)
    var = s ** 2
    p = s / s.sum() if s.sum() > 0 else np.ones(1)
    p = p[p > 0]
    return {"mean_cosine": cos, "top_direction_share": float(var[0] / var.sum()) if var.sum() else 1.0,
            "effective_rank": float(math.exp(-(p * np.log(p)).sum()))}


def k_occurrence(x: np.ndarray, k: int = 10) -> np.ndarray:
    """(N,) how many items have each item among their k nearest neighbours by cosine (self excluded)."""
    u = np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), dtype=np.float32)
    index = faiss.IndexFlatIP(u.shape[1])
    index.add(u)
    kk = min(k + 1, len(u))
    _, nn = index.search(u, kk)
    own = nn == np.arange(len(u))[:, None]
    # drop the item itself (or the last neighbour when a duplicate displaced it)
    drop = np.where(own.any(1), own.argmax(1), kk - 1)
    keep = np.ones_like(nn, dtype=bool)
    keep[np.arange(len(u)), drop] = False
    return np.bincount(nn[keep].reshape(-1), minlength=len(u))


def skewness(v: np.ndarray) -> float:
    v = np.asarray(v, dtype=np.float64)
    sd = v.std()
    return float(((v - v.mean()) ** 3).mean() / sd ** 3) if sd > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties)."""
    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        _, inv, cnt = np.unique(v, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return (sums / cnt)[inv]

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def embedding_health(x: np.ndarray, popularity: np.ndarray | None = None, k: int = 10) -> dict[str, float]:
    """Anisotropy, hubness and the norm-popularity correlation of item embeddings x (N, D)."""
    occ = k_occurrence(x, k)
    out = anisotropy(x)
    out.update({f"k{k}_occurrence_skew": skewness(occ), "antihub_share": float((occ == 0).mean()),
                "max_k_occurrence": int(occ.max())})
    if popularity is not None:
        out["norm_popularity_spearman"] = spearman(np.linalg.norm(x, axis=1), popularity)
    return out


# ---------------------------------------------------------------------------- codebooks
def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = even usage, -> 1 = all on one code)."""
    c = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(c)
    if n == 0 or c.sum() == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ c / (n * c.sum()))


def usage_stats(codes: np.ndarray, size: int) -> dict[str, float]:
    """One level's code usage: entropy (nats), perplexity, dead-code share, Gini."""
    cnt = np.bincount(codes, minlength=size).astype(np.float64)
    p = cnt[cnt > 0] / cnt.sum()
    h = float(-(p * np.log(p)).sum())
    return {"entropy": h, "perplexity": math.exp(h), "dead_share": float((cnt == 0).mean()),
            "dead_codes": int((cnt == 0).sum()), "gini": gini(cnt)}


def codebook_health(sid: SemanticIDs, x: np.ndarray | None = None) -> list[dict[str, float]]:
    """Per level: usage stats, and with the codebooks and the embeddings x (N, D) the tokenizer
    read (L2-normalized as it read them): inertia (mean squared distance to the chosen code),
    residual-norm ratio (after / before the level) and cumulative reconstruction error
    (||x - sum of codes so far||^2 / ||x||^2, averaged)."""
    codes = sid.codes[1:]
    levels = [usage_stats(codes[:, l], sid.sizes[l]) for l in range(sid.n_levels)]
    if sid.codebooks is None or x is None:
        return levels
    r = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    total = (r ** 2).sum(1)
    recon = np.zeros_like(r)
    for l, cb in enumerate(sid.codebooks):
        chosen = cb[codes[:, l]]
        before = (r ** 2).sum(1)
        r = r - chosen
        recon = recon + chosen
        after = (r ** 2).sum(1)
        levels[l].update({"inertia": float(after.mean()),
                          "residual_norm_ratio": float(np.sqrt(after).mean() / max(np.sqrt(before).mean(), 1e-12)),
                          "reconstruction_error": float((after / np.maximum(total, 1e-12)).mean())})
    return levels


# ---------------------------------------------------------------------------- IDs
def category_agreement(level1: np.ndarray, primary_category: np.ndarray) -> float:
    """Share of items (with a category) whose level-1 code is the most common level-1 code of
    their category."""
    has = primary_category >= 0
    if not has.any():
        return float("nan")
    cat, code = primary_category[has], level1[has]
    n_codes = int(code.max()) + 1
    table = np.zeros((int(cat.max()) + 1, n_codes), dtype=np.int64)
    np.add.at(table, (cat, code), 1)
    majority = table.argmax(1)
    return float((majority[cat] == code).mean())


def primary_categories(ds) -> np.ndarray:
    """(n_items,) each item's first category, -1 without one."""
    if ds.cat_offsets is None:
        return np.full(ds.n_items, -1, dtype=np.int64)
    off = np.asarray(ds.cat_offsets)[1:]
    ids = np.asarray(ds.cat_ids)
    has = np.diff(off) > 0
    first = np.where(has, ids[np.minimum(off[:-1], max(len(ids) - 1, 0))], -1)
    return first.astype(np.int64)


def id_health(sid: SemanticIDs, primary_category: np.ndarray | None = None) -> dict[str, float]:
    out = dict(collision_stats(sid.codes[1:]))
    full = collision_stats(sid.tokens()[1:])
    out["collision_rate_after_disambiguation"] = full["collision_rate"]
    out["disambiguation_size"] = sid.n_disambiguation
    if primary_category is not None:
        out["category_majority_agreement"] = category_agreement(sid.codes[1:, 0], primary_category)
    return out


# ---------------------------------------------------------------------------- predictive check
def prefix_lift(sid: SemanticIDs, prev: np.ndarray, nxt: np.ndarray, depth: int) -> dict[str, float]:
    """Over consecutive training events (prev -> next item ids), P(next shares prev's first
    `depth` codes) against chance: the same probability for two independent draws from the
    events' item distribution. Returns the rate, the chance rate and their ratio (lift)."""
    key = group_prefix(sid.codes, depth)
    same = float((key[prev] == key[nxt]).mean()) if len(prev) else float("nan")
    q = np.bincount(key[nxt], minlength=int(key.max()) + 1).astype(np.float64)
    q = q / max(q.sum(), 1.0)
    chance = float((q ** 2).sum())
    return {"rate": same, "chance": chance, "lift": same / chance if chance > 0 else float("nan")}


def group_prefix(codes: np.ndarray, depth: int) -> np.ndarray:
    """(I,) one integer per distinct prefix of `depth` codes (padding row -> its own value)."""
    _, inv = np.unique(codes[:, :depth], axis=0, return_inverse=True)
    return inv.reshape(-1)


def consecutive_pairs(ds, train_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prev, next) item ids of consecutive events inside each user's training part."""
    offsets = np.asarray(ds.offsets, dtype=np.int64)
    items = np.asarray(ds.items, dtype=np.int64)
    lens = np.asarray(train_len, dtype=np.int64)
    starts = offsets[:-1]
    n_pairs = np.maximum(lens - 1, 0)
    first = np.repeat(starts, n_pairs) + (np.arange(int(n_pairs.sum())) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs))
    return items[first], items[first + 1]


# ---------------------------------------------------------------------------- against known labels
def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized mutual information of two labelings (arithmetic mean of their entropies)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a.reshape(-1), b.reshape(-1)), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum()
    h = lambda q: -(q[q > 0] * np.log(q[q > 0])).sum()  # noqa: E731
    denom = h(pa) + h(pb)
    return float(2 * mi / denom) if denom > 0 else 1.0


def purity(truth: np.ndarray, codes: np.ndarray) -> float:
    """Share of items whose code's most common true label is their own."""
    _, truth = np.unique(truth, return_inverse=True)
    table = np.zeros((int(codes.max()) + 1, int(truth.max()) + 1), dtype=np.int64)
    np.add.at(table, (codes.reshape(-1), truth.reshape(-1)), 1)
    return float(table.max(1).sum() / len(truth))


# ---------------------------------------------------------------------------- the report
def health_report(sid: SemanticIDs, ds=None, split=None, embeddings: np.ndarray | None = None) -> dict[str, Any]:
    """Every number of the module docstring that the given inputs allow: `ds` (categories,
    sequences), `split` (training part; else every event), `embeddings` (n_items + 1, D)."""
    from ..data.dataset import train_item_counts

    report: dict[str, Any] = {"n_items": int(len(sid.codes) - 1), "levels": sid.n_levels, "sizes": sid.sizes,
                              "meta": sid.meta}
    x = None if embeddings is None else np.asarray(embeddings, dtype=np.float32)[1:]
    pop = None
    if ds is not None:
        pop = (train_item_counts(ds, split) if split is not None else np.bincount(np.asarray(ds.items),
                                                                                  minlength=ds.n_items + 1))[1:]
    if x is not None:
        report["embedding"] = embedding_health(x, pop)
    report["codebook"] = codebook_health(sid, x)
    report["ids"] = id_health(sid, primary_categories(ds) if ds is not None else None)
    if ds is not None:
        train_len = split.train_len if split is not None else np.diff(np.asarray(ds.offsets))
        prev, nxt = consecutive_pairs(ds, train_len)
        report["prefix_lift"] = {f"level{d}": prefix_lift(sid, prev, nxt, d) for d in range(1, min(2, sid.n_levels) + 1)}
    return report


def format_report(report: dict[str, Any], name: str = "") -> str:
    """A readable table of `health_report`'s numbers."""
    lines = [f"semantic-ID health{': ' + name if name else ''} ({report['n_items']} items, "
             f"{report['levels']} levels of {report['sizes']})"]
    if "embedding" in report:
        lines.append("item embeddings: " + ", ".join(f"{k} {_fmt(v)}" for k, v in report["embedding"].items()))
    keys = [k for k in ("perplexity", "dead_codes", "gini", "inertia", "residual_norm_ratio", "reconstruction_error")
            if k in report["codebook"][0]]
    lines.append(f"{'level':>6}" + "".join(f"{k:>22}" for k in keys))
    for l, row in enumerate(report["codebook"]):
        lines.append(f"{l + 1:>6}" + "".join(f"{_fmt(row[k]):>22}" for k in keys))
    lines.append("ids: " + ", ".join(f"{k} {_fmt(v)}" for k, v in report["ids"].items()))
    for lvl, v in report.get("prefix_lift", {}).items():
        lines.append(f"next item shares the {lvl} prefix: {v['rate']:.4f} vs chance {v['chance']:.4f} "
                     f"(lift {v['lift']:.2f})")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)
