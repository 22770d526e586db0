"""Build an item index from vectors, and load a saved one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import IndexConfig, ItemIndex, check_finite, load_categories, read_meta
from .exact import ExactIndex
from .faiss_index import FaissIndex


def build_index(
    vectors: Any,
    config: IndexConfig | str = "flat",
    item_categories: Any = None,
    ids: Any = None,
    **params: Any,
) -> ItemIndex:
    """An ItemIndex over item vectors.

    vectors:  (I, d) float32 (numpy or torch), row i = item id i, row 0 = padding (not indexed);
              or (n, d) with explicit `ids` (n,) int64 >= 0, unique
    config:   an IndexConfig, or a kind name with settings as keyword arguments
              (`build_index(V, "hnsw", M=16, ef_search=64)`)
    item_categories: item id -> categories CSR for category scopes: a (cat_offsets, cat_ids) pair
              (item i has cat_ids[cat_offsets[i]:cat_offsets[i+1]]) or any object with cat_offsets /
              cat_ids attributes such as a crbr SequenceDataset (its category_names come along)
    """
    import torch

    cfg = config if isinstance(config, IndexConfig) else IndexConfig.from_params(config, params)
    if isinstance(config, IndexConfig) and params:
        raise ValueError("pass settings either in the IndexConfig or as keyword arguments, not both")
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu", torch.float32).numpy()
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors: expected a 2-D (items, d) array, got shape {x.shape}")
    if ids is None:
        if len(x) < 1:
            raise ValueError("vectors: need at least the padding row 0")
        x = x[1:]
        ids = np.arange(1, len(x) + 1, dtype=np.int64)
    else:
        ids = np.asarray(ids).reshape(-1)
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids: must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64)
        if len(ids) != len(x):
            raise ValueError(f"ids: {len(ids)} ids for {len(x)} vectors")
        if len(ids) and ids.min() < 0:
            raise ValueError("ids: must be >= 0 (-1 marks padding in results)")
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        if np.any(ids[1:] == ids[:-1]):
            raise ValueError("ids: must be unique")
        x = x[order]
    x = np.ascontiguousarray(x)
    check_finite(x, "vectors", "item id", labels=ids)
    if cfg.kind == "exact":
        return ExactIndex(x, ids, cfg, item_categories)
    return FaissIndex.build(x, ids, cfg, item_categories)


def load_index(path: str | os.PathLike) -> ItemIndex:
    """Load an index written by `ItemIndex.save`."""
    path = Path(path)
    meta = read_meta(path)
    cfg = IndexConfig(**meta["config"])
    ids = np.load(path / "ids.npy")
    cls = {"ExactIndex": ExactIndex, "FaissIndex": FaissIndex}.get(meta["class"])
    if cls is None:
        raise ValueError(f"{path}: unknown index class {meta['class']!r}")
    return cls._load_payload(path, cfg, ids, load_categories(path, meta))
