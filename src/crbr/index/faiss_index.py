"""FAISS indexes behind the ItemIndex interface (Johnson, Douze & Jégou 2019, "Billion-scale
similarity search with GPUs"; the faiss-cpu package).

kinds (metric: inner product):
  flat      IndexFlatIP                    exact; ties at the k-th score resolved to the lower id
  hnsw      IndexHNSWFlat(d, M)            Malkov & Yashunin 2018; efConstruction, efSearch
  ivf_flat  IndexIVFFlat(nlist)            k-means coarse quantizer; nprobe lists scanned
  ivf_pq    IndexIVFPQ(nlist, pq_m, nbits) residual product quantization; with `refine` > 0 wrapped
                                           in IndexRefineFlat: refine * k candidates re-ranked with
                                           exact scores (searching with refine = 0 then uses the
                                           IVF-PQ part alone)

Scoped search passes a FAISS IDSelector in the search parameters (IDSelectorBatch for small
scopes, IDSelectorBitmap for large ones; for IndexRefineFlat the selector must sit in
base_index_params, FAISS ignores it at the top level). Scopes of at most `exact_below` items are
scored exactly over their reconstructed vectors instead, and a query for which the filtered
search found fewer than min(k, scope size) items is re-run that way: filtered HNSW / IVF search
finds nothing when the allowed items are rare near the query.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from .base import IndexConfig, ItemIndex, exact_topk, sort_rows

log = logging.getLogger(__name__)


def resolve_nlist(nlist: int, n: int) -> int:
    """nlist, or about 4 * sqrt(n) when 0; never more lists than n // 39 (FAISS's minimum of 39
    training points per centroid) nor less than 1."""
    if nlist <= 0:
        nlist = int(4 * math.sqrt(max(n, 1)))
    return int(max(1, min(nlist, n // 39 if n >= 39 else 1)))


def _ivf_part(index: faiss.Index) -> faiss.IndexIVF | None:
    if isinstance(index, faiss.IndexRefine):
        index = faiss.downcast_index(index.base_index)
    return faiss.downcast_index(faiss.extract_index_ivf(index)) if isinstance(index, faiss.IndexIVF) else None


def build_faiss(x: np.ndarray, config: IndexConfig) -> faiss.Index:
    """A trained and filled FAISS index over the rows of x (n, d) float32 (labels = row numbers)."""
    n, d = x.shape
    ip = faiss.METRIC_INNER_PRODUCT
    kind = config.kind
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.M, ip)
        index.hnsw.efConstruction = config.ef_construction
    elif kind in ("ivf_flat", "ivf_pq"):
        nlist = resolve_nlist(config.nlist, n)
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
        else:
            if d % config.pq_m:
                raise ValueError(f"ivf_pq: pq_m={config.pq_m} must divide the vector size d={d}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, config.pq_m, config.pq_nbits, ip)
            if config.refine > 0:
                index = faiss.IndexRefineFlat(index)
        train_n = config.train_size or max(64 * nlist, 64 * 2**config.pq_nbits if kind == "ivf_pq" else 0)
        train_n = min(n, train_n)
        rng = np.random.default_rng(config.seed)
        sample = np.sort(rng.choice(n, train_n, replace=False)) if train_n < n else slice(None)
        ivf = _ivf_part(index)
        ivf.cp.seed = config.seed
        if kind == "ivf_pq":
            ivf.pq.cp.seed = config.seed
        index.train(np.ascontiguousarray(x[sample]))
    else:
        raise ValueError(f"not a FAISS index kind: {kind!r}")
    if n:
        index.add(x)
    ivf = _ivf_part(index)
    if ivf is not None:
        ivf.make_direct_map()  # reconstruct() for the exact scoring of small scopes
    return index


class FaissIndex(ItemIndex):
    """An ItemIndex over a FAISS index whose labels are positions 0..n-1 (see crbr.index.base)."""

    def __init__(self, index: faiss.Index, ids: np.ndarray, config: IndexConfig, item_categories: Any = None) -> None:
        super().__init__(config, index.d, ids, item_categories)
        if index.ntotal != self.ntotal:
            raise ValueError(f"FAISS index holds {index.ntotal} vectors for {self.ntotal} ids")
        self.index = index
        self.build_seconds = 0.0
        self._cache: dict[str, tuple[np.ndarray, Any]] = {}  # last scope's selector / vectors

    @classmethod
    def build(cls, x: np.ndarray, ids: np.ndarray, config: IndexConfig, item_categories: Any = None) -> "FaissIndex":
        t0 = time.perf_counter()
        index = build_faiss(x, config)
        out = cls(index, ids, config, item_categories)
        out.build_seconds = time.perf_counter() - t0
        return out

    @property
    def refined(self) -> bool:
        """Whether the index keeps exact vectors to re-rank IVF-PQ candidates (IndexRefineFlat)."""
        return isinstance(self.index, faiss.IndexRefine)

    def nbytes(self) -> int:
        return int(faiss.serialize_index(self.index).nbytes)

    # ------------------------------------------------------------------ search
    def _selector(self, allowed: np.ndarray) -> faiss.IDSelector:
        hit = self._cache.get("sel")
        if hit is not None and hit[0] is allowed:
            return hit[1]
        if len(allowed) * 64 < self.ntotal:  # hash set: cheap for small scopes
            sel = faiss.IDSelectorBatch(allowed.astype(np.int64))
        else:  # one bit per item
            mask = np.zeros(self.ntotal, dtype=bool)
            mask[allowed] = True
            bits = np.packbits(mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bits))
            sel.referenced_bits = bits  # the selector reads this buffer: keep it alive
        self._cache["sel"] = (allowed, sel)
        return sel

    def _params(self, k: int, sel: faiss.IDSelector | None) -> tuple[faiss.Index, faiss.SearchParameters | None]:
        """(index to call, its search parameters) for the current settings."""
        cfg = self.config
        index = self.index
        if cfg.kind == "hnsw":
            p = faiss.SearchParametersHNSW()
            p.efSearch = max(cfg.ef_search, k)
        elif cfg.kind in ("ivf_flat", "ivf_pq"):
            p = faiss.SearchParametersIVF()
            p.nprobe = min(cfg.nprobe, _ivf_part(index).nlist)
        else:
            p = faiss.SearchParameters() if sel is not None else None
        if sel is not None:
            p.sel = sel
        if self.refined:
            if cfg.refine > 0:
                rp = faiss.IndexRefineSearchParameters()
                rp.k_factor = float(cfg.refine)
                rp.base_index_params = p  # the selector must go here: IndexRefine ignores rp.sel
                rp.referenced_params = p
                return index, rp
            return faiss.downcast_index(index.base_index), p
        if cfg.refine > 0 and cfg.kind == "ivf_pq":
            raise ValueError("refine > 0 needs an ivf_pq index built with refine > 0 (it keeps the exact vectors)")
        return index, p

    def _reconstruct(self, allowed: np.ndarray) -> torch.Tensor:
        hit = self._cache.get("vec")
        if hit is not None and hit[0] is allowed:
            return hit[1]
        vec = torch.from_numpy(np.ascontiguousarray(self.index.reconstruct_batch(allowed.astype(np.int64)), np.float32))
        self._cache["vec"] = (allowed, vec)
        return vec

    def _release(self) -> None:
        self._cache.clear()

    def _exact_subset(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the allowed items' stored vectors (PQ-decoded for ivf_pq without refine)."""
        s, r = exact_topk(queries, self._reconstruct(allowed), k, self.config.chunk_bytes)
        return s, np.where(r >= 0, allowed[r.clip(min=0)], -1)

    def _search_positions(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if allowed is not None and len(allowed) <= self.config.exact_below:
            return self._exact_subset(queries, k, allowed)
        flat = self.config.kind == "flat"
        w = k + 1 if flat else k  # flat: one more to see ties across the k-th score
        index, params = self._params(w, None if allowed is None else self._selector(allowed))
        D, I = index.search(queries, w, params=params)
        s, p = sort_rows(D, I, w)
        if flat:
            s, p = self._resolve_ties(queries, s, p, k, params)
        s, p = s[:, :k], p[:, :k]
        if allowed is not None:  # filtered search came back short: score those queries exactly
            short = np.nonzero((p >= 0).sum(1) < min(k, len(allowed)))[0]
            if len(short):
                s[short], p[short] = self._exact_subset(np.ascontiguousarray(queries[short]), k, allowed)
        return s, p

    def _resolve_ties(self, queries: np.ndarray, s: np.ndarray, p: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
        """Flat: FAISS keeps the higher ids among items tied at the k-th score; re-collect every item
        scoring >= that score (range search) for such queries and keep the lower ids."""
        if s.shape[1] <= k:
            return s, p
        amb = np.nonzero((p[:, k] >= 0) & (s[:, k - 1] == s[:, k]))[0]
        for q in amb:
            radius = float(np.nextafter(np.float32(s[q, k - 1]), np.float32(-np.inf)))
            lims, D, I = self.index.range_search(queries[q : q + 1], radius, params=params)
            rs, rp = sort_rows(D[None, :], I[None, :].astype(np.int64), k)
            s[q, :k], p[q, :k] = rs[0], rp[0]
        return s, p

    # ------------------------------------------------------------------ storage
    def _save_payload(self, path: Path) -> None:
        faiss.write_index(self.index, str(path / "index.faiss"))

    @classmethod
    def _load_payload(cls, path: Path, config: IndexConfig, ids: np.ndarray, cats: Any) -> "FaissIndex":
        index = faiss.read_index(str(path / "index.faiss"))
        ivf = _ivf_part(index)
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()
        return cls(index, ids, config, cats)
