"""Semantic IDs of a catalogue: codes per level, collisions and their resolution, files.

Items that share all L codes collide. Two remedies, as TIGER and its successors use them:

* re-assignment (optional): a colliding item moves, on the last level, to its nearest code that
  no item with the same prefix uses; the item nearest to the shared code keeps it. This removes
  most collisions without a new level.
* disambiguation (always): an extra level d numbers the items of each remaining group 0, 1, ...
  in item-id order, so (c_1, ..., c_L, d) is unique; d = 0 for every item without a collision.

On disk: Parquet with the original item id, c1..cL and d, the settings and source in its
metadata, and the codebooks beside it (FILE.codebooks.npz) when the tokenizer has them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..fileio import atomic_file, write_table


def group_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row its group (rows with equal codes share one) and each group's size: (N,), (G,)."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def collision_stats(codes: np.ndarray) -> dict[str, float]:
    """codes (N, L): share of items that share their full ID with another item, the largest
    group, and distinct IDs / items."""
    n = len(codes)
    if n == 0:
        return {"collision_rate": 0.0, "largest_bucket": 0, "unique_share": 1.0}
    group, counts = group_ids(codes)
    return {"collision_rate": float((counts[group] > 1).mean()), "largest_bucket": int(counts.max()),
            "unique_share": float(len(counts) / n)}


def disambiguate(codes: np.ndarray) -> np.ndarray:
    """(N,) the extra level: the item's index within its group of equal codes, in row order."""
    group, _ = group_ids(codes)
    order = np.lexsort((np.arange(len(codes)), group))  # by group, then row
    first = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]
    starts = np.repeat(first, np.diff(np.r_[first, len(order)]))
    out = np.empty(len(codes), dtype=np.int64)
    out[order] = np.arange(len(order)) - starts
    return out


def reassign_collisions(codes: np.ndarray, last_dist: np.ndarray) -> np.ndarray:
    """Codes (N, L) with colliding items moved to free last-level codes.

    last_dist (N, K_L): each item's distance to every last-level code. In each group of equal
    codes the item nearest to their shared code keeps it; the others, nearest first, take their
    nearest last-level code whose full ID is still unused. An item with no free code stays."""
    codes = codes.copy()
    taken = {tuple(r) for r in codes.tolist()}
    group, counts = group_ids(codes)
    movers = []
    for g in np.flatnonzero(counts > 1):
        rows = np.flatnonzero(group == g)
        d = last_dist[rows, codes[rows[0], -1]]
        movers += rows[np.argsort(d, kind="stable")[1:]].tolist()  # all but the nearest
    for i in sorted(movers, key=lambda r: float(last_dist[r, codes[r, -1]])):
        prefix = tuple(codes[i, :-1].tolist())
        for c in np.argsort(last_dist[i], kind="stable"):
            if prefix + (int(c),) not in taken:
                taken.add(prefix + (int(c),))
                codes[i, -1] = c
                break
    return codes


@dataclass
class SemanticIDs:
    """Semantic IDs of a dataset's items (internal ids: row i = item i, row 0 = padding, -1).

    codes:          (I, L) int64 code per level
    disambiguation: (I,) int64 extra level (0 unless the item's codes collide)
    sizes:          K per level
    item_ids:       (I,) original item ids ("" for padding)
    stats:          collision statistics before re-assignment and before disambiguation
    meta:           how they were made (tokenizer settings, feature source)
    codebooks:      the tokenizer's codebooks ((K_l, D) per level), when it has them
    """

    codes: np.ndarray
    disambiguation: np.ndarray
    sizes: list[int]
    item_ids: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    codebooks: list[np.ndarray] | None = None

    @property
    def n_levels(self) -> int:
        return int(self.codes.shape[1])

    @property
    def n_disambiguation(self) -> int:
        """Size of the extra level: the largest group (1 when every ID is unique)."""
        return int(self.disambiguation[1:].max(initial=0)) + 1

    def tokens(self) -> np.ndarray:
        """(I, L + 1) codes followed by the disambiguation level; unique over items 1..n."""
        return np.concatenate([self.codes, self.disambiguation[:, None]], 1)

    @classmethod
    def from_codes(cls, codes: np.ndarray, sizes: list[int], item_ids: np.ndarray, meta: dict | None = None,
                   codebooks: list[np.ndarray] | None = None, stats: dict | None = None) -> "SemanticIDs":
        """From item codes (n_items, L) (no padding row): disambiguated, padding row added."""
        codes = np.asarray(codes, dtype=np.int64)
        st = dict(stats or {})
        st.update({f"{k}_before_disambiguation": v for k, v in collision_stats(codes).items()})
        pad = np.full((1, codes.shape[1]), -1, dtype=np.int64)
        d = np.r_[-1, disambiguate(codes)]
        return cls(np.vstack([pad, codes]), d, list(sizes), np.asarray(item_ids, dtype=object), st, dict(meta or {}),
                   codebooks)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Parquet (item_id, c1..cL, d) with settings in its metadata; codebooks beside it."""
        path = Path(path)
        cols = {"item_id": pa.array([str(x) for x in self.item_ids[1:]], pa.string())}
        for l in range(self.n_levels):
            cols[f"c{l + 1}"] = pa.array(self.codes[1:, l], pa.int32())
        cols["d"] = pa.array(self.disambiguation[1:], pa.int32())
        meta = {"sizes": self.sizes, "stats": self.stats, "meta": self.meta}
        table = pa.table(cols).replace_schema_metadata({"crbr_semantic_ids": json.dumps(meta, default=str)})
        write_table(table, path)
        if self.codebooks is not None:
            with atomic_file(codebook_path(path)) as tmp, open(tmp, "wb") as f:
                np.savez(f, *self.codebooks)
        return path

    @classmethod
    def load(cls, path: str | Path, item_ids: np.ndarray | None = None) -> "SemanticIDs":
        """Read a file written by `save`; with the dataset's `item_ids` (I,), rows are put in its
        internal order (items the file lacks are an error naming a few)."""
        path = Path(path)
        try:
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {})[b"crbr_semantic_ids"])
        except (OSError, KeyError, ValueError, pa.ArrowException) as e:
            raise ValueError(f"{path}: not a crbr semantic-ID file ({e})") from None
        L = len(meta["sizes"])
        codes = np.stack([table.column(f"c{l + 1}").to_numpy() for l in range(L)], 1).astype(np.int64)
        d = table.column("d").to_numpy().astype(np.int64)
        ids = np.array(table.column("item_id").to_pylist(), dtype=object)
        if item_ids is not None:
            pos = {x: i for i, x in enumerate(ids.tolist())}
            missing = [x for x in list(item_ids[1:]) if str(x) not in pos]
            if missing:
                raise ValueError(f"{path}: {len(missing)} dataset items have no semantic ID (e.g. {missing[:5]})")
            order = np.array([pos[str(x)] for x in item_ids[1:]], dtype=np.int64)
            codes, d, ids = codes[order], d[order], np.asarray(item_ids[1:], dtype=object)
        cb_file = codebook_path(path)
        codebooks = None
        if cb_file.exists():
            with np.load(cb_file) as z:
                codebooks = [z[f"arr_{l}"] for l in range(L)]
        pad = np.full((1, L), -1, dtype=np.int64)
        return cls(np.vstack([pad, codes]), np.r_[-1, d], list(meta["sizes"]), np.r_[[""], ids].astype(object),
                   dict(meta.get("stats", {})), dict(meta.get("meta", {})), codebooks)


def codebook_path(path: Path) -> Path:
    return path.with_name(path.name + ".codebooks.npz")
