"""`crbr index build` and `crbr retrieve` (parsers in crbr.cli.main).

  crbr index build --vectors items.npy --kind hnsw --param M=16 --param ef_search=128 \
      [--ids ids.npy] [--categories-from CONFIG.yaml | DATASET_DIR] --out idx/
  crbr retrieve --index idx/ --queries users.npy -k 100 [--categories 3,5] [--param ef_search=256] \
      --out top.parquet|csv

Vectors: .npy (I, d), row i = item id i, row 0 = padding (what `crbr features --out x.npy`
writes), or (n, d) with --ids. The retrieve output is long format, one row per (query, rank):
query (row of the queries file), rank (1-based), item_id, score; padding is omitted.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _params(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise ValueError(f"--param: expected name=value, got {p!r}")
        out[name.strip()] = value.strip()
    return out


def _threads(n: int) -> None:
    if n > 0:
        import faiss
        import torch

        faiss.omp_set_num_threads(n)
        torch.set_num_threads(n)


def _categories_from(path: str):
    """A SequenceDataset (carries cat_offsets / cat_ids / category_names) from a processed dataset
    directory or an experiment config (prepared / loaded from its cache as `crbr train` does)."""
    from ..data.dataset import SequenceDataset

    p = Path(path)
    if p.is_dir():
        ds = SequenceDataset.load(p)
    else:
        from ..config import load_config
        from ..data.prepare import prepare

        ds = prepare(load_config(p).data)
    if ds.cat_offsets is None:
        raise ValueError(f"{path}: the dataset has no item categories")
    return ds


def cmd_index_build(args) -> int:
    from . import IndexConfig, build_index

    _threads(args.threads)
    vectors = np.load(args.vectors, mmap_mode="r")
    ids = np.load(args.ids) if args.ids else None
    cats = _categories_from(args.categories_from) if args.categories_from else None
    cfg = IndexConfig.from_params(args.kind, _params(args.param))
    t0 = time.perf_counter()
    index = build_index(vectors, cfg, item_categories=cats, ids=ids)
    secs = time.perf_counter() - t0
    out = index.save(args.out)
    n_cat = 0 if index.cat_offsets is None else len(index._cat_pos_offsets) - 1
    print(f"{index!r}: built in {secs:.1f}s, {index.nbytes() / 2**20:.1f} MiB"
          + (f", {n_cat} categories" if n_cat else "") + f"; wrote {out}")
    return 0


def cmd_retrieve(args) -> int:
    import pyarrow as pa

    from . import Scope, load_index

    _threads(args.threads)
    index = load_index(args.index)
    if args.param:
        index.tune(**_params(args.param))
    queries = np.load(args.queries)
    scope = None
    if args.categories:
        scope = Scope(categories=[index.category_id(c.strip()) for c in args.categories.split(",") if c.strip()])
    t0 = time.perf_counter()
    res = index.search(queries, args.k, scope=scope)
    secs = time.perf_counter() - t0
    Q, k = res.ids.shape
    keep = (res.ids >= 0).reshape(-1)
    table = pa.table({
        "query": pa.array(np.repeat(np.arange(Q, dtype=np.int64), k)[keep]),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), Q)[keep]),
        "item_id": pa.array(res.ids.reshape(-1)[keep]),
        "score": pa.array(res.scores.reshape(-1)[keep]),
    })
    from ..fileio import write_table

    path = write_table(table, args.out)
    print(f"{index!r}: top-{k} of {Q:,} queries in {secs:.2f}s ({Q / max(secs, 1e-9):,.0f} queries/s)"
          + (f", scope categories {args.categories}" if scope else "") + f"; {int(keep.sum()):,} rows -> {path}")
    return 0
