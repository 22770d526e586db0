"""Write the ranked top-K lists of an evaluation in ORIGINAL ids, so anyone can recheck the numbers.

Long format, one row per (user, rank): columns user_id (str), rank (int32, 1-based), item_id (str),
score (float32). Rows are ordered by the EvalSet user order, then rank. Positions with no rankable
item (fewer rankable items than K, e.g. after history masking on a tiny catalogue) are omitted.
`benchmarks/verify_export.py` recomputes HR@10 / NDCG@10 from such a file and the raw dataset
without importing crbr.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..data.dataset import SequenceDataset
from ..fileio import write_table
from .evaluator import EvalResult


def topk_table(result: EvalResult, ds: SequenceDataset) -> pa.Table:
    """The export as an Arrow table (columns user_id, rank, item_id, score)."""
    if result.topk_items is None or result.users is None:
        raise ValueError("result has no top-K lists: run Evaluator.evaluate(..., export=True) (rank 0 under DDP)")
    items = np.asarray(result.topk_items)  # (U, K)
    scores = np.asarray(result.topk_scores, dtype=np.float32)  # (U, K)
    U, K = items.shape
    keep = (items > 0).reshape(-1)  # (U*K,)
    user_rows = np.repeat(np.asarray(result.users, dtype=np.int64), K)[keep]
    ranks = np.tile(np.arange(1, K + 1, dtype=np.int32), U)[keep]
    user_ids = np.asarray(ds.user_ids, dtype=object)[user_rows].astype(str)
    item_ids = np.asarray(ds.item_ids, dtype=object)[items.reshape(-1)[keep]].astype(str)
    table = pa.table(
        {
            "user_id": pa.array(user_ids, type=pa.string()),
            "rank": pa.array(ranks, type=pa.int32()),
            "item_id": pa.array(item_ids, type=pa.string()),
            "score": pa.array(scores.reshape(-1)[keep], type=pa.float32()),
        }
    )
    meta = {"crbr.protocol": result.protocol, "crbr.metrics": json.dumps(result.metrics)}
    return table.replace_schema_metadata(meta)


def export_topk(result: EvalResult, ds: SequenceDataset, path: str | os.PathLike) -> Path:
    """Write the top-K lists of `result` to `path`: Parquet if it ends with .parquet, else CSV.

    Atomic (`crbr.fileio.write_table`): written to a temporary file in the same directory, then
    os.replace'd over `path`; the file gets the permissions of a plain open() under the umask.
    The Parquet schema metadata also carries the protocol line and the reported metrics.
    """
    return write_table(topk_table(result, ds), path)
