"""Precomputed item feature matrices: read .npy / .pt / .parquet, write .npy / .parquet.

Row rules (see also `crbr.features`):
- `.npy` / `.pt` hold one 2-D matrix (a plain array / tensor, no dict or npz). With n_items rows,
  row r belongs to item id r + 1 (the order of `ds.item_ids[1:]`); with n_items + 1 rows, row 0 is
  the padding row (overwritten with zeros; a non-zero one is logged) and row i is item id i. Any
  other shape is an error naming the file. A matrix written by `write_features(..., ".npy")`
  has n_items + 1 rows.
- `.parquet` holds an `item_id` column of ORIGINAL item ids (compared as strings, so 12 and "12"
  match) plus the vector: exactly one list / fixed-size-list column, or else every numeric column
  (one per dimension, in file order). Other columns are ignored. Ids the dataset does not know are
  ignored (counted in the log); dataset items the file lacks are an error naming how many and a few
  ids, or with missing="zeros" zero rows (counted in the log). Duplicate ids are an error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..data.dataset import SequenceDataset
from ..fileio import atomic_file

log = logging.getLogger("crbr.features")


def _examples(ids, k: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(repr(str(x)) for x in ids[:k])
    return shown + (f", ... ({len(ids) - k} more)" if len(ids) > k else "")


def _check_finite(mat: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(mat).all(axis=1)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} rows contain NaN or infinite values (first row {int(np.argmax(bad))})")


def _aligned_matrix(ds: SequenceDataset, mat: np.ndarray, path: Path) -> np.ndarray:
    """A row-ordered matrix (n_items or n_items + 1 rows) -> (n_items + 1, D) float32, row 0 zero."""
    n = ds.n_items
    if mat.ndim != 2 or mat.shape[0] not in (n, n + 1) or mat.shape[1] < 1:
        raise ValueError(
            f"{path}: feature matrix of shape {tuple(mat.shape)} does not fit a dataset of {n} items: "
            f"expected a 2-D matrix of {n} rows (item ids 1..{n} in dataset order) or {n + 1} rows "
            f"(row 0 = padding); use a .parquet file with an item_id column for any other order or subset"
        )
    if not (np.issubdtype(mat.dtype, np.number) or mat.dtype == np.bool_):
        raise ValueError(f"{path}: feature matrix has non-numeric dtype {mat.dtype}")
    out = np.zeros((n + 1, mat.shape[1]), dtype=np.float32)
    if mat.shape[0] == n:
        out[1:] = mat
    else:
        if np.any(mat[0] != 0):
            log.warning("%s: row 0 (padding) is not zero; it is set to zero", path)
        out[1:] = mat[1:]
    _check_finite(out, path)
    return out


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a plain .npy matrix ({e})") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: an .npz archive; save one matrix with np.save instead")
    return arr


def _read_pt(path: Path) -> np.ndarray:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / format errors come in many types
        raise ValueError(f"{path}: cannot read as a torch tensor file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, torch.Tensor):
        what = f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: expected one 2-D tensor saved with torch.save, got {what}")
    return obj.detach().to(torch.float32).numpy()


def _parquet_vectors(table: pa.Table, path: Path) -> np.ndarray:
    """(rows, D) float32 from the one list column or the numeric columns of `table` (item_id excluded)."""
    cols = [n for n in table.column_names if n != "item_id"]
    list_cols = [n for n in cols if pa.types.is_list(table.schema.field(n).type)
                 or pa.types.is_large_list(table.schema.field(n).type)
                 or pa.types.is_fixed_size_list(table.schema.field(n).type)]  # fmt: skip
    num_cols = [n for n in cols if pa.types.is_integer(table.schema.field(n).type)
                or pa.types.is_floating(table.schema.field(n).type)
                or pa.types.is_decimal(table.schema.field(n).type)]  # fmt: skip
    if len(list_cols) > 1:
        raise ValueError(f"{path}: {len(list_cols)} list columns {list_cols}; expected one vector column")
    if list_cols:
        name = list_cols[0]
        if num_cols:
            log.info("%s: using list column %r as the features; ignoring numeric columns %s", path, name, num_cols)
        col = table.column(name).combine_chunks()
        if col.null_count:
            raise ValueError(f"{path}: column {name!r} has {col.null_count} null vectors")
        lens = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if len(lens) and (lens.min() != lens.max() or lens.min() == 0):
            raise ValueError(f"{path}: column {name!r} holds vectors of lengths {int(lens.min())}..{int(lens.max())}; "
                             f"all must have the same non-zero length")
        values = pc.list_flatten(col)
        if values.null_count:
            raise ValueError(f"{path}: column {name!r} has {values.null_count} null values inside vectors")
        if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
            raise ValueError(f"{path}: column {name!r} holds {values.type} values, not numbers")
        D = int(lens[0]) if len(lens) else 1
        return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), D)
    if not num_cols:
        raise ValueError(f"{path}: no feature columns besides item_id (columns: {table.column_names}); "
                         f"expected one list column or numeric columns")
    parts = []
    for n in num_cols:
        c = table.column(n)
        if c.null_count:
            raise ValueError(f"{path}: column {n!r} has {c.null_count} nulls")
        parts.append(c.to_numpy().astype(np.float32))
    return np.column_stack(parts)


def _read_parquet(ds: SequenceDataset, path: Path, missing: str) -> np.ndarray:
    table = pq.read_table(path)
    if "item_id" not in table.column_names:
        raise ValueError(f"{path}: no item_id column (columns: {table.column_names})")
    ids_col = table.column("item_id")
    if ids_col.null_count:
        raise ValueError(f"{path}: item_id has {ids_col.null_count} nulls")
    ids = np.asarray(pc.cast(ids_col, pa.string()).to_pylist(), dtype=object)
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{path}: {int((counts > 1).sum())} item ids occur more than once, e.g. {_examples(uniq[counts > 1])}")
    vecs = _parquet_vectors(table, path)  # (rows, D)
    index = {str(x): i for i, x in enumerate(np.asarray(ds.item_ids, dtype=object)[1:].tolist(), start=1)}
    rows = np.fromiter((index.get(str(x), 0) for x in ids), dtype=np.int64, count=len(ids))
    unknown = int((rows == 0).sum())
    if unknown:
        log.info("%s: %d of %d rows name items not in the dataset; ignored", path, unknown, len(ids))
    out = np.zeros((ds.n_items + 1, vecs.shape[1]), dtype=np.float32)
    keep = rows > 0
    out[rows[keep]] = vecs[keep]
    have = np.zeros(ds.n_items + 1, dtype=bool)
    have[rows[keep]] = True
    lacking = np.nonzero(~have[1:])[0] + 1
    if len(lacking):
        examples = _examples(np.asarray(ds.item_ids, dtype=object)[lacking])
        if missing != "zeros":
            raise ValueError(
                f"{path}: {len(lacking)} of {ds.n_items} dataset items have no row, e.g. {examples}; "
                f"add them, or append ?missing=zeros to the spec to give them zero rows"
            )
        log.warning("%s: %d of %d dataset items have no row (e.g. %s); their features are zero",
                    path, len(lacking), ds.n_items, examples)
    _check_finite(out, path)
    return out


def read_features(ds: SequenceDataset, path: str | os.PathLike, missing: str = "error") -> np.ndarray:
    """(n_items + 1, D) float32 rows of a precomputed file aligned to the dataset (not normalized)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(ds, path, missing)
    if suffix == ".npy":
        return _aligned_matrix(ds, _read_npy(path), path)
    if suffix == ".pt":
        return _aligned_matrix(ds, _read_pt(path), path)
    raise ValueError(f"{path}: unsupported feature file type {suffix!r}; expected .npy, .pt or .parquet")


def write_features(ds: SequenceDataset, features: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a (n_items + 1, D) matrix atomically: .npy as is (row 0 = padding), or .parquet with
    columns item_id (original ids of items 1..n_items) and embedding (fixed-size list of float32).
    Both read back with `read_features` / as a feature spec."""
    path = Path(path).expanduser()
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != ds.n_items + 1:
        raise ValueError(f"features of shape {features.shape}: expected ({ds.n_items + 1}, D)")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".parquet"):
        raise ValueError(f"{path}: expected a .npy or .parquet output file")
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        if suffix == ".npy":
            np.save(f, features)
        else:
            D = features.shape[1]
            emb = pa.FixedSizeListArray.from_arrays(pa.array(features[1:].reshape(-1), type=pa.float32()), D)
            ids = pa.array(np.asarray(ds.item_ids, dtype=object)[1:].astype(str), type=pa.string())
            pq.write_table(pa.table({"item_id": ids, "embedding": emb}), f)
    return path
