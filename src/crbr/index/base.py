"""The one retrieval interface: an index over item vectors answering top-k inner-product queries.

Every retrieval head in crbr (docs/design.md, "The pipeline": "given a batch of users, return top-K
(scores, item_ids)") ends in an `ItemIndex`:

  index = build_index(vectors, IndexConfig(kind="hnsw"), item_categories=ds)
  res = index.search(queries, k=100)                              # SearchResult, (Q, k) arrays
  res = index.search(queries, k=100, scope=Scope(categories=[3, 5]))

Item ids. `vectors` is (I, d) float32 with row i = item id i and row 0 = padding, which is never
indexed nor returned (the crbr convention, crbr.data.dataset), or (n, d) with explicit `ids`
(n,) int64 >= 0. Inside an index, items sit at *positions* 0..n-1 in increasing id order, so
"lower position" and "lower id" are the same tie-break.

Results. `SearchResult.scores` (Q, k) float32 sorted descending, ties broken by the lower item
id; `ids` (Q, k) int64. When fewer than k items are eligible, the tail is id -1 / score -inf.

Scopes. A `Scope` restricts a query to the items of some categories (resolved through the
item -> categories CSR given at build time) and/or to an explicit array of item ids (both given:
an item must satisfy both). `scope` is one Scope shared by all queries or a list with one
Scope (or None) per query; queries with equal scopes are searched together. Whatever the
backend does, every result is checked against its scope afterwards and violators are dropped
(and logged), so a scoped search never returns an out-of-scope item. A category id outside
0..n_categories-1 (or an unknown name) is an error; a valid scope that selects no indexed item
(an empty category, an allow-list of ids not in the index) gives its queries empty results and
logs a warning naming the scope.

Bad numbers. Item vectors (at build time) and queries (at every search, any kind) holding NaN or
inf raise ValueError naming the rows: such a row has no meaningful inner product, and the
backends would silently return nothing (or garbage) for it.

Subclasses implement `_search_positions` (one chunk of queries against all items or a sorted
array of allowed positions) and their own storage; this module does ids, scopes, chunking and
the on-disk layout.
"""

from __future__ import annotations

import abc
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..fileio import atomic_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KINDS = ("exact", "flat", "hnsw", "ivf_flat", "ivf_pq")
# settings that change only how a built index is searched (may be changed with `ItemIndex.tune`)
SEARCH_PARAMS = ("ef_search", "nprobe", "refine", "exact_below", "query_batch", "chunk_bytes")


@dataclass
class IndexConfig:
    """How to build and search an item index. Only the settings of `kind` matter.

    kind: "exact" (chunked brute force, the reference) | "flat" (FAISS IndexFlatIP, exact) |
    "hnsw" (IndexHNSWFlat) | "ivf_flat" (IndexIVFFlat) | "ivf_pq" (IndexIVFPQ, optionally wrapped
    in IndexRefineFlat for an exact re-rank). Metric: inner product throughout.
    """

    kind: str = "flat"
    # HNSW (Malkov & Yashunin 2018): graph degree, build and search beam widths (search uses max(ef_search, k))
    M: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    # IVF: number of k-means lists (0 = about 4 * sqrt(n), at most n // 39) and lists scanned per query
    nlist: int = 0
    nprobe: int = 32
    train_size: int = 0  # k-means training sample (0 = min(n, 64 * nlist)); IVF and PQ
    # PQ (ivf_pq): sub-quantizers (must divide d) and bits per code
    pq_m: int = 16
    pq_nbits: int = 8
    refine: float = 0.0  # > 0: re-rank refine * k IVF-PQ candidates with exact scores (IndexRefineFlat)
    # scoped search: scopes of at most this many items are scored exactly over their items
    # (filtered graph / IVF search degrades on very selective scopes); 0 = always use the index
    exact_below: int = 10_000
    # batching
    query_batch: int = 4096  # queries per FAISS call
    chunk_bytes: int = 256 << 20  # exact scoring: at most this many bytes of (queries x items) scores at once
    seed: int = 0  # k-means / training sample

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"IndexConfig.kind: unknown {self.kind!r}; expected one of {', '.join(KINDS)}")
        for name in ("M", "ef_construction", "ef_search", "nprobe", "pq_m", "pq_nbits", "query_batch", "chunk_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("nlist", "train_size", "exact_below", "refine"):
            if getattr(self, name) < 0:
                raise ValueError(f"IndexConfig.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_params(cls, kind: str, params: dict[str, Any] | None = None) -> "IndexConfig":
        """Config from a kind and `name -> value` settings (values may be strings, as from a CLI)."""
        types = {f.name: f.type for f in fields(cls)}
        kw: dict[str, Any] = {}
        for name, value in (params or {}).items():
            if name not in types or name == "kind":
                raise ValueError(f"unknown index setting {name!r}; settings: {', '.join(t for t in types if t != 'kind')}")
            tp = {"int": int, "float": float}[types[name]]
            kw[name] = tp(float(value)) if tp is int and isinstance(value, str) and "e" in value.lower() else tp(value)
        return cls(kind=kind, **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """Top-k of a batch of queries.

    scores:  (Q, k) float32, descending per row; -inf where fewer than k items were eligible
    ids:     (Q, k) int64 item ids; -1 where fewer than k items were eligible
    sources: (Q, k) int16 which input result each item came from (set by `merge_results`;
             -1 on padding), else None
    """

    scores: np.ndarray
    ids: np.ndarray
    sources: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    def counts(self) -> np.ndarray:
        """(Q,) number of real (non-padding) results per query."""
        return (self.ids >= 0).sum(1)


@dataclass
class Scope:
    """The items one query may return.

    categories: category ids; an item qualifies when it has at least one of them
    items:      item ids; an item qualifies when it is listed
    Both given: an item must qualify for both. Neither: no restriction.
    """

    categories: Sequence[int] | None = None
    items: Sequence[int] | np.ndarray | None = None

    def describe(self) -> str:
        """Short text for messages (an allow-list by its size and first ids)."""
        parts = []
        if self.categories is not None:
            parts.append(f"categories {list(self.categories)}")
        if self.items is not None:
            items = np.asarray(self.items).reshape(-1)
            more = ", ..." if len(items) > 5 else ""
            parts.append(f"{len(items)} item id(s) [{', '.join(str(i) for i in items[:5])}{more}]")
        return "Scope(" + "; ".join(parts or ["everything"]) + ")"

    def key(self) -> tuple:
        # str: ids and names alike (equal scopes spelled differently are merely searched apart)
        cats = None if self.categories is None else tuple(sorted({str(c).strip() for c in self.categories}))
        items = None if self.items is None else np.unique(np.asarray(self.items, dtype=np.int64)).tobytes()
        return (cats, items)


ScopeArg = Scope | Sequence[Scope | None] | None


# ------------------------------------------------------------------------------------- helpers
def check_finite(x: np.ndarray, what: str, unit: str = "row", labels: np.ndarray | None = None) -> None:
    """Raise ValueError when rows of x (..., d) hold NaN or inf, naming them (at most 10) and what
    they hold. Rows are named by their index over the leading axes, or by `labels[row]` (1-D x)."""
    bad_rows = np.argwhere(~np.isfinite(x).all(axis=-1))
    if not len(bad_rows):
        return
    shown = []
    for idx in bad_rows[:10]:
        v = x[tuple(idx)]
        found = [name for name, hit in (("NaN", np.isnan(v)), ("inf", np.isposinf(v)), ("-inf", np.isneginf(v))) if hit.any()]
        at = labels[idx[0]] if labels is not None else (int(idx[0]) if len(idx) == 1 else tuple(int(i) for i in idx))
        shown.append(f"{unit} {at} ({', '.join(found)})")
    more = f", ... ({len(bad_rows) - 10} more)" if len(bad_rows) > 10 else ""
    raise ValueError(f"{what}: {len(bad_rows)} {unit}(s) hold non-finite values: {'; '.join(shown)}{more}")


def as_queries(x: Any, d: int) -> np.ndarray:
    """(Q, d) C-contiguous float32 numpy array from numpy / torch / lists; NaN / inf rows raise."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"queries: expected shape (Q, {d}), got {x.shape}")
    check_finite(x, "queries", "query row")
    return x


def row_order(scores: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """(Q, W) per-row order: real entries (pos >= 0) first, by score descending then pos ascending."""
    pad = pos < 0
    big = np.iinfo(np.int64).max
    return np.lexsort((np.where(pad, big, pos), np.where(pad, np.inf, -scores.astype(np.float64)), pad), axis=1)


def sort_rows(scores: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by `row_order`, cut (or padded) to k columns; padding = score -inf, pos -1."""
    Q = len(pos)
    order = row_order(scores, pos)
    s = np.take_along_axis(scores, order, 1)[:, :k].astype(np.float32)
    p = np.take_along_axis(pos, order, 1)[:, :k].astype(np.int64)
    pad = p < 0
    s[pad], p[pad] = -np.inf, -1
    if p.shape[1] < k:
        s = np.concatenate([s, np.full((Q, k - p.shape[1]), -np.inf, np.float32)], 1)
        p = np.concatenate([p, np.full((Q, k - p.shape[1]), -1, np.int64)], 1)
    return s, p


def exact_topk(
    queries: np.ndarray, vectors: torch.Tensor, k: int, chunk_bytes: int = 256 << 20, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k with ties broken by the lower row: the reference.

    queries (Q, d) float32; vectors (n, d) float32 tensor; mask (n,) bool or None (False rows are
    never returned). Returns scores (Q, k) float32 and rows (Q, k) int64 (-inf / -1 padding).
    Queries are scored in chunks of at most `chunk_bytes` of (chunk x n) float32 scores.
    """
    Q, n = len(queries), vectors.shape[0]
    n_ok = n if mask is None else int(mask.sum())
    kk = min(k, n_ok)
    out_s = np.full((Q, k), -np.inf, np.float32)
    out_p = np.full((Q, k), -1, np.int64)
    if kk == 0 or Q == 0:
        return out_s, out_p
    step = max(1, chunk_bytes // (4 * n))
    qt = torch.from_numpy(queries)
    block = None if mask is None else torch.from_numpy(~mask)  # (n,) True = not allowed
    for a in range(0, Q, step):
        S = qt[a : a + step] @ vectors.T  # (c, n)
        if block is not None:
            S.masked_fill_(block, -torch.inf)
        # one extra candidate tells whether the k-th score is tied with an item left out
        w = min(kk + 1, n)
        v, i = torch.topk(S, w, dim=1)  # (c, w) sorted descending, tie order unspecified
        if w > kk:
            amb = (v[:, kk - 1] == v[:, kk]).nonzero().squeeze(1)
            if len(amb):  # tie across the boundary: stable full sort keeps the lower rows
                sv, si = torch.sort(S[amb], dim=1, descending=True, stable=True)
                v[amb], i[amb] = sv[:, :w], si[:, :w]
        v, i = v[:, :kk], i[:, :kk]
        # order ties inside the top-k by row: sort by row, then stable sort by score
        i, o = torch.sort(i, dim=1)
        v = v.gather(1, o)
        v, o = torch.sort(v, dim=1, descending=True, stable=True)
        i = i.gather(1, o)
        out_s[a : a + step, :kk] = v.numpy()
        out_p[a : a + step, :kk] = i.numpy()
    if mask is not None:  # rows left when fewer than kk allowed rows had a finite score
        bad = out_p >= 0
        bad[bad] = ~mask[out_p[bad]]
        out_s[bad], out_p[bad] = -np.inf, -1
    return out_s, out_p


def enforce_allowed(scores: np.ndarray, pos: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop entries whose position is not in `allowed` (sorted); keep row order. Returns (s, p, n_dropped)."""
    real = pos >= 0
    ok = np.zeros_like(real)
    if len(allowed):
        j = np.searchsorted(allowed, pos[real]).clip(max=len(allowed) - 1)
        ok[real] = allowed[j] == pos[real]
    bad = real & ~ok
    n_bad = int(bad.sum())
    if n_bad:
        scores, pos = scores.copy(), pos.copy()
        scores[bad], pos[bad] = -np.inf, -1
        order = np.argsort(pos < 0, axis=1, kind="stable")  # keep the order of the survivors
        scores, pos = np.take_along_axis(scores, order, 1), np.take_along_axis(pos, order, 1)
    return scores, pos, n_bad


def category_csr(item_categories: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(cat_offsets, cat_ids, category_names) from a (offsets, ids) pair or an object with
    cat_offsets / cat_ids (/ category_names) attributes, e.g. a SequenceDataset."""
    names: list[str] = []
    if isinstance(item_categories, (tuple, list)) and len(item_categories) == 2:
        off, cat = item_categories
    else:
        off, cat = getattr(item_categories, "cat_offsets", None), getattr(item_categories, "cat_ids", None)
        names = list(getattr(item_categories, "category_names", []) or [])
        if off is None or cat is None:
            raise ValueError("item_categories: the object has no item categories (cat_offsets / cat_ids)")
    off = np.asarray(off, dtype=np.int64)
    cat = np.asarray(cat, dtype=np.int32)
    if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != len(cat) or np.any(np.diff(off) < 0):
        raise ValueError("item_categories: offsets must start at 0, end at len(cat_ids) and be non-decreasing")
    if len(cat) and cat.min() < 0:
        raise ValueError("item_categories: category ids must be >= 0")
    return off, cat, names


# ------------------------------------------------------------------------------------ the index
class ItemIndex(abc.ABC):
    """Top-k inner-product search over item vectors, optionally scoped (see the module docstring).

    Attributes: config (IndexConfig), d (vector size), ids (n,) int64 sorted item id of each
    position, cat_offsets / cat_ids (item id -> categories CSR) or None, category_names.
    """

    config: IndexConfig
    d: int
    ids: np.ndarray

    def __init__(self, config: IndexConfig, d: int, ids: np.ndarray, item_categories: Any = None) -> None:
        self.config = config
        self.d = int(d)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.cat_offsets = self.cat_ids = None
        self.category_names: list[str] = []
        self._cat_pos_offsets = self._cat_pos = None
        if item_categories is not None:
            self.cat_offsets, self.cat_ids, self.category_names = category_csr(item_categories)
            self._invert_categories()

    # ------------------------------------------------------------------ sizes
    @property
    def ntotal(self) -> int:
        """Number of indexed items."""
        return len(self.ids)

    @property
    def kind(self) -> str:
        return self.config.kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, n={self.ntotal:,}, d={self.d})"

    @abc.abstractmethod
    def nbytes(self) -> int:
        """Bytes the index structure takes (vectors, graph / lists / codes), without ids and categories."""

    # ------------------------------------------------------------------ scopes
    def _invert_categories(self) -> None:
        """category -> sorted positions CSR over the indexed items."""
        off, cat = self.cat_offsets, self.cat_ids
        n_rows = len(off) - 1
        if self.ntotal and self.ids[-1] >= n_rows:
            raise ValueError(f"item_categories: covers item ids 0..{n_rows - 1} but the index holds id {self.ids[-1]}")
        counts = np.diff(off)[self.ids]  # categories of each position
        starts = off[:-1][self.ids]
        pos = np.repeat(np.arange(self.ntotal, dtype=np.int64), counts)
        entry = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
        cats = cat[entry].astype(np.int64)
        order = np.lexsort((pos, cats))
        cats, pos = cats[order], pos[order]
        n_cat = int(cats.max()) + 1 if len(cats) else 0
        self._cat_pos_offsets = np.zeros(n_cat + 1, dtype=np.int64)
        np.cumsum(np.bincount(cats, minlength=n_cat), out=self._cat_pos_offsets[1:])
        self._cat_pos = pos

    def positions_of(self, item_ids: Any) -> np.ndarray:
        """Sorted unique positions of the given item ids (ids not in the index are ignored)."""
        x = np.unique(np.asarray(item_ids, dtype=np.int64).reshape(-1))
        j = np.searchsorted(self.ids, x).clip(max=max(self.ntotal - 1, 0))
        return j[(self.ntotal > 0) & (self.ids[j] == x)] if self.ntotal else np.zeros(0, np.int64)

    @property
    def n_categories(self) -> int:
        """Number of category ids (valid ids 0..n-1): the named ones, or up to the largest id used."""
        if self.cat_ids is None:
            return 0
        used = int(self.cat_ids.max()) + 1 if len(self.cat_ids) else 0
        return max(len(self.category_names), used)

    def _require_categories(self) -> None:
        if self.cat_offsets is None:
            raise ValueError("a category scope needs item categories: build the index with item_categories=")

    def category_id(self, c: int | str) -> int:
        """Category id from an id or (when the index knows them) a category name.

        An unknown name raises KeyError; an id outside 0..n_categories-1 raises ValueError.
        """
        self._require_categories()
        if isinstance(c, str) and not c.strip().lstrip("-").isdigit():
            try:
                return self.category_names.index(c)
            except ValueError:
                raise KeyError(f"unknown category {c!r}") from None
        cid, n = int(c), self.n_categories
        if not 0 <= cid < n:
            valid = f"ids are 0..{n - 1} ({n} categories)" if n else "the index has no categories"
            raise ValueError(f"category id {cid} is out of range: {valid}")
        return cid

    def resolve_scope(self, scope: Scope) -> np.ndarray | None:
        """Sorted positions a scope allows (None = everything)."""
        allowed = None
        if scope.categories is not None:
            self._require_categories()
            cats = np.unique([self.category_id(c) for c in scope.categories]).astype(np.int64)
            cats = cats[cats < len(self._cat_pos_offsets) - 1]  # valid ids no indexed item has
            parts = [self._cat_pos[self._cat_pos_offsets[c] : self._cat_pos_offsets[c + 1]] for c in cats]
            allowed = np.unique(np.concatenate(parts)) if len(parts) > 1 else (parts[0] if parts else np.zeros(0, np.int64))
        if scope.items is not None:
            pos = self.positions_of(scope.items)
            allowed = pos if allowed is None else np.intersect1d(allowed, pos, assume_unique=True)
        if allowed is not None and len(allowed) == 0:
            log.warning("%r: %s selects none of the indexed items; its queries get no results", self, scope.describe())
        return allowed

    def _scope_groups(self, scope: ScopeArg, Q: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """[(query rows, allowed positions or None)], one entry per distinct scope."""
        if scope is None:
            return [(np.arange(Q), None)]
        if isinstance(scope, Scope):
            return [(np.arange(Q), self.resolve_scope(scope))]
        if len(scope) != Q:
            raise ValueError(f"scope: a list needs one Scope (or None) per query: got {len(scope)} for {Q} queries")
        groups: dict[tuple, list[int]] = {}
        first: dict[tuple, Scope | None] = {}
        for q, s in enumerate(scope):
            key = ("all",) if s is None else s.key()
            groups.setdefault(key, []).append(q)
            first.setdefault(key, s)
        return [(np.asarray(rows), None if first[key] is None else self.resolve_scope(first[key]))
                for key, rows in groups.items()]

    # ------------------------------------------------------------------ search
    @abc.abstractmethod
    def _search_positions(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of one chunk of queries (q, d) over all positions or the sorted `allowed` ones.

        Returns scores (q, k) float32 and positions (q, k) int64 (-inf / -1 padding), sorted
        by score descending, ties by lower position.
        """

    def search(self, queries: Any, k: int, scope: ScopeArg = None) -> SearchResult:
        """Top-k items by inner product for each query (Q, d) (numpy or torch), batched.

        scope: None, one Scope for all queries, or a list of Scope / None, one per query.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        x = as_queries(queries, self.d)
        Q = len(x)
        scores = np.full((Q, k), -np.inf, np.float32)
        pos = np.full((Q, k), -1, np.int64)
        step = self._query_step()
        for rows, allowed in self._scope_groups(scope, Q):
            if allowed is not None and len(allowed) == 0:
                continue
            for a in range(0, len(rows), step):
                r = rows[a : a + step]
                s, p = self._search_positions(np.ascontiguousarray(x[r]), k, allowed)
                if allowed is not None:
                    s, p, n_bad = enforce_allowed(s, p, allowed)
                    if n_bad:
                        log.warning("%r returned %d out-of-scope items; dropped", self, n_bad)
                scores[r], pos[r] = s, p
        self._release()
        ids = np.where(pos >= 0, self.ids[pos.clip(min=0)] if self.ntotal else -1, -1)
        return SearchResult(scores=scores, ids=ids.astype(np.int64))

    def _release(self) -> None:
        """Drop per-scope caches (selectors, gathered vectors) at the end of a search."""

    def _query_step(self) -> int:
        return self.config.query_batch

    def tune(self, **params: Any) -> "ItemIndex":
        """Change search-time settings (ef_search, nprobe, refine, exact_below, query_batch, chunk_bytes)."""
        for name, value in params.items():
            if name not in SEARCH_PARAMS:
                raise ValueError(f"{name!r} is not a search-time setting; those are {', '.join(SEARCH_PARAMS)}")
        cfg = IndexConfig.from_params(self.config.kind, {**{n: getattr(self.config, n) for n in SEARCH_PARAMS}, **params})
        for name in params:
            setattr(self.config, name, getattr(cfg, name))
        return self

    # ------------------------------------------------------------------ storage
    @abc.abstractmethod
    def _save_payload(self, path: Path) -> None:
        """Write the backend's own files into the (temporary) index directory."""

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to directory `path` atomically (temporary sibling, then rename)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            self._save_payload(tmp)
            np.save(tmp / "ids.npy", self.ids)
            if self.cat_offsets is not None:
                np.save(tmp / "cat_offsets.npy", self.cat_offsets)
                np.save(tmp / "cat_ids.npy", self.cat_ids)
            meta = {
                "format_version": FORMAT_VERSION,
                "class": type(self).__name__,
                "config": self.config.to_dict(),
                "d": self.d,
                "ntotal": self.ntotal,
                "has_categories": self.cat_offsets is not None,
                "category_names": self.category_names,
            }
            (tmp / "index.json").write_text(json.dumps(meta, indent=1))
        return path


def read_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    f = path / "index.json"
    if not f.exists():
        raise FileNotFoundError(f"{path}: not a crbr index directory (no index.json)")
    meta = json.loads(f.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{f}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
    return meta


def load_categories(path: Path, meta: dict) -> Any:
    if not meta.get("has_categories"):
        return None

    class _Cats:  # the category_csr() duck type, carrying the names too
        cat_offsets = np.load(path / "cat_offsets.npy")
        cat_ids = np.load(path / "cat_ids.npy")
        category_names = meta.get("category_names", [])

    return _Cats
