"""Reading a semantic-ID file (written by `crbr semantic-ids build`) for a dataset's items.

    table = read_item_codes("beauty_ids.parquet", ds.item_ids)   # (I, L + 1) int64, row 0 = -1

Columns c1..cL are the codes, d the disambiguation level; rows are put in the dataset's internal
item order (row i = item i). A dataset item the file lacks is an error naming a few.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def read_item_codes(path: str | Path, item_ids: np.ndarray) -> np.ndarray:
    """(len(item_ids), L + 1) int64: codes then the disambiguation level; row 0 (padding) = -1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"semantic-ID file {path} does not exist (build it with crbr semantic-ids build)")
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[b"crbr_semantic_ids"])
        levels = len(meta["sizes"])
        cols = [table.column(f"c{l + 1}").to_numpy() for l in range(levels)] + [table.column("d").to_numpy()]
        ids = [str(x) for x in table.column("item_id").to_pylist()]
    except (OSError, KeyError, ValueError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a crbr semantic-ID file ({e})") from None
    codes = np.stack(cols, 1).astype(np.int64)
    pos = {x: i for i, x in enumerate(ids)}
    missing = [str(x) for x in list(item_ids[1:]) if str(x) not in pos]
    if missing:
        raise ValueError(f"{path}: {len(missing)} dataset items have no semantic ID (e.g. {missing[:5]}); "
                         "build the IDs from the same dataset")
    order = np.array([pos[str(x)] for x in item_ids[1:]], dtype=np.int64)
    out = np.full((len(item_ids), codes.shape[1]), -1, dtype=np.int64)
    out[1:] = codes[order]
    if len(np.unique(out[1:], axis=0)) != len(out) - 1:
        raise ValueError(f"{path}: two items share all their codes and the disambiguation level")
    return out
