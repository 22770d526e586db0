"""The processed, model-ready form of an event log.

`SequenceDataset` holds every user's events in time order as CSR arrays (one flat array per
column plus per-user offsets), item metadata indexed by the remapped item id, and the maps back
to the original ids. Item and action id 0 are reserved for padding; real items are 1..n_items.

It is written to / read from a directory of `.npy` files (memory-mapped on load) plus Parquet
id maps and a `meta.json`, so large logs load lazily and a processed dataset can be shared.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..fileio import atomic_dir

PAD = 0

FORMAT_VERSION = 1


@dataclass
class SequenceDataset:
    """Per-user event sequences in time order (CSR layout).

    Shapes: U = n_users, E = number of events, I = n_items + 1 (row 0 = padding).

    offsets:     (U + 1,) int64    user u's events are rows offsets[u]:offsets[u+1]
    items:       (E,)     int32    remapped item ids in 1..n_items
    actions:     (E,)     int16    action ids in 1..len(action_names)-1 (0 = padding)
    timestamps:  (E,)     int64 or None when the source has only an order
    user_ids:    (U,)     original user ids (str)
    item_ids:    (I,)     original item ids (str); item_ids[0] = "" (padding)
    action_names: list[str], action_names[0] = "<pad>"
    cat_offsets: (I + 1,) int64    item i's categories are cat_ids[cat_offsets[i]:cat_offsets[i+1]]
    cat_ids:     (C_total,) int32  category ids in 0..len(category_names)-1
    category_names: list[str]
    item_text:   list[str | None] of length I, or None when no text exists
    info:        free-form provenance (source files, settings, counted drops)
    """

    offsets: np.ndarray
    items: np.ndarray
    actions: np.ndarray
    timestamps: np.ndarray | None
    user_ids: np.ndarray
    item_ids: np.ndarray
    action_names: list[str]
    cat_offsets: np.ndarray | None = None
    cat_ids: np.ndarray | None = None
    category_names: list[str] = field(default_factory=list)
    item_text: list[str | None] | None = None
    info: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes
    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        """Number of real items (ids 1..n_items)."""
        return len(self.item_ids) - 1

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_actions(self) -> int:
        """Size of the action vocabulary including padding."""
        return len(self.action_names)

    @property
    def n_categories(self) -> int:
        return len(self.category_names)

    def lengths(self) -> np.ndarray:
        """(U,) number of events per user."""
        return np.diff(self.offsets)

    def user_items(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def user_actions(self, u: int) -> np.ndarray:
        return self.actions[self.offsets[u] : self.offsets[u + 1]]

    def item_categories(self, i: int) -> np.ndarray:
        if self.cat_offsets is None:
            return np.zeros(0, dtype=np.int32)
        return self.cat_ids[self.cat_offsets[i] : self.cat_offsets[i + 1]]

    def category_scope(self, spec: str, option: str = "--categories") -> np.ndarray:
        """(I,) bool: the items of the categories in `spec`, comma-separated names or ids (a name
        wins over an id that reads the same); an unknown category is an error naming it."""
        if self.cat_offsets is None:
            raise ValueError(f"{option}: the dataset has no item categories")
        known = {n: i for i, n in enumerate(self.category_names)}
        wanted = []
        for c in (c.strip() for c in spec.split(",") if c.strip()):
            if c in known:
                wanted.append(known[c])
            elif c.isdigit() and int(c) < len(self.category_names):
                wanted.append(int(c))
            else:
                raise ValueError(f"{option}: unknown category {c!r} (ids 0..{len(self.category_names) - 1} or names)")
        if not wanted:
            raise ValueError(f"{option}: no category given")
        item_of = np.repeat(np.arange(self.n_items + 1), np.diff(np.asarray(self.cat_offsets)))
        in_scope = np.zeros(self.n_items + 1, dtype=bool)
        in_scope[item_of[np.isin(np.asarray(self.cat_ids), wanted)]] = True
        return in_scope

    def action_id(self, name: str) -> int:
        try:
            return self.action_names.index(name)
        except ValueError:
            raise KeyError(f"unknown action {name!r}; vocabulary: {self.action_names[1:]}") from None

    def validate(self) -> None:
        """Check the structural invariants; raises ValueError naming the broken field."""
        U, E = self.n_users, len(self.items)
        if self.offsets[0] != 0 or self.offsets[-1] != E or np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets: must start at 0, end at len(items) and be non-decreasing")
        if len(self.actions) != E:
            raise ValueError(f"actions: length {len(self.actions)} != items length {E}")
        if self.timestamps is not None and len(self.timestamps) != E:
            raise ValueError(f"timestamps: length {len(self.timestamps)} != items length {E}")
        if E and (self.items.min() < 1 or self.items.max() > self.n_items):
            raise ValueError(f"items: ids must lie in 1..{self.n_items}")
        if E and (self.actions.min() < 1 or self.actions.max() >= self.n_actions):
            raise ValueError(f"actions: ids must lie in 1..{self.n_actions - 1}")
        if len(self.user_ids) != U:
            raise ValueError(f"user_ids: length {len(self.user_ids)} != n_users {U}")
        if self.cat_offsets is not None and len(self.cat_offsets) != self.n_items + 2:
            raise ValueError("cat_offsets: must have n_items + 2 entries (row 0 = padding)")
        if self.item_text is not None and len(self.item_text) != self.n_items + 1:
            raise ValueError("item_text: must have n_items + 1 entries (row 0 = padding)")

    def summary(self) -> str:
        lens = self.lengths()
        return (
            f"{self.info.get('name', 'dataset')}: {self.n_users:,} users, {self.n_items:,} items, "
            f"{self.n_events:,} events, length min/median/max {lens.min() if len(lens) else 0}/"
            f"{int(np.median(lens)) if len(lens) else 0}/{lens.max() if len(lens) else 0}, "
            f"actions {self.action_names[1:]}, {self.n_categories} categories, "
            f"timestamps {'yes' if self.timestamps is not None else 'no (order only)'}"
        )

    # --------------------------------------------------------------- storage
    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: into a temporary sibling directory, then rename over `path`."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            np.save(tmp / "offsets.npy", self.offsets)
            np.save(tmp / "items.npy", self.items)
            np.save(tmp / "actions.npy", self.actions)
            if self.timestamps is not None:
                np.save(tmp / "timestamps.npy", self.timestamps)
            if self.cat_offsets is not None:
                np.save(tmp / "cat_offsets.npy", self.cat_offsets)
                np.save(tmp / "cat_ids.npy", self.cat_ids)
            pq.write_table(pa.table({"user_id": pa.array(self.user_ids.astype(str))}), tmp / "users.parquet")
            cols = {"item_id": pa.array(self.item_ids.astype(str))}
            if self.item_text is not None:
                cols["text"] = pa.array(self.item_text, type=pa.string())
            pq.write_table(pa.table(cols), tmp / "items.parquet")
            meta = {
                "format_version": FORMAT_VERSION,
                "action_names": list(self.action_names),
                "category_names": list(self.category_names),
                "has_timestamps": self.timestamps is not None,
                "has_categories": self.cat_offsets is not None,
                "has_text": self.item_text is not None,
                "info": self.info,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> "SequenceDataset":
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{path}: not a processed crbr dataset (no meta.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_file}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
        mode = "r" if mmap else None

        def arr(name: str) -> np.ndarray:
            return np.load(path / name, mmap_mode=mode)

        items_tbl = pq.read_table(path / "items.parquet")
        ds = cls(
            offsets=arr("offsets.npy"),
            items=arr("items.npy"),
            actions=arr("actions.npy"),
            timestamps=arr("timestamps.npy") if meta["has_timestamps"] else None,
            user_ids=np.asarray(pq.read_table(path / "users.parquet")["user_id"].to_pylist(), dtype=object),
            item_ids=np.asarray(items_tbl["item_id"].to_pylist(), dtype=object),
            action_names=meta["action_names"],
            cat_offsets=arr("cat_offsets.npy") if meta["has_categories"] else None,
            cat_ids=arr("cat_ids.npy") if meta["has_categories"] else None,
            category_names=meta["category_names"],
            item_text=items_tbl["text"].to_pylist() if meta["has_text"] else None,
            info=meta["info"],
        )
        ds.validate()
        return ds


# ---------------------------------------------------------------------- splits
@dataclass
class EvalSet:
    """Users to evaluate, the prefix of their sequence the model may see, and their targets.

    users:          (U,)   user row indices into the dataset
    hist_len:       (U,)   the model sees events offsets[u] : offsets[u] + hist_len[i]
    target_offsets: (U + 1,)
    target_items:   (T,)   item ids; user i's targets are target_items[target_offsets[i]:target_offsets[i+1]]
    """

    users: np.ndarray
    hist_len: np.ndarray
    target_offsets: np.ndarray
    target_items: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def targets(self, i: int) -> np.ndarray:
        return self.target_items[self.target_offsets[i] : self.target_offsets[i + 1]]

    def subset(self, idx: np.ndarray) -> "EvalSet":
        idx = np.asarray(idx, dtype=np.int64)
        counts = np.diff(self.target_offsets)[idx]
        offs = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=offs[1:])
        tgt = (
            np.concatenate([self.targets(int(i)) for i in idx]) if len(idx) else np.zeros(0, dtype=np.int32)
        )
        return EvalSet(self.users[idx], self.hist_len[idx], offs, tgt.astype(np.int32))


@dataclass
class Split:
    """A train / validation / test split of a SequenceDataset.

    train_len: (U,) the first train_len[u] events of user u are training data.
    """

    name: str
    train_len: np.ndarray
    valid: EvalSet
    test: EvalSet
    info: dict = field(default_factory=dict)

    def describe(self) -> str:
        return (
            f"split={self.name} train_events={int(self.train_len.sum()):,} "
            f"valid_users={len(self.valid):,} test_users={len(self.test):,}"
            + (f" ({', '.join(f'{k}={v}' for k, v in self.info.items())})" if self.info else "")
        )


def leave_one_out(ds: SequenceDataset, min_train: int = 1) -> Split:
    """Last event = test target, second-to-last = validation target, the rest = training.

    Users with fewer than `min_train + 2` events are kept for training (all their events) but
    are not evaluated; how many is recorded in `Split.info`.
    """
    lens = ds.lengths().astype(np.int64)
    ok = lens >= min_train + 2
    users = np.nonzero(ok)[0]
    train_len = np.where(ok, lens - 2, lens)
    last = ds.offsets[1:][ok] - 1  # row of each evaluated user's last event

    def one_target(hist_len: np.ndarray, rows: np.ndarray) -> EvalSet:
        return EvalSet(
            users=users,
            hist_len=hist_len,
            target_offsets=np.arange(len(users) + 1, dtype=np.int64),
            target_items=np.asarray(ds.items[rows], dtype=np.int32),
        )

    valid = one_target(lens[ok] - 2, last - 1)
    test = one_target(lens[ok] - 1, last)
    return Split("leave_one_out", train_len, valid, test, {"not_evaluated_short_users": int((~ok).sum())})


def leave_k_out(ds: SequenceDataset, k: int, min_train: int = 1) -> Split:
    """Each user's last k events = test targets, the k before them = validation targets, the
    rest = training (k = 1 is leave_one_out).

    The multi-target protocol of multi-interest retrieval (ComiRec, MIND): a user's next k
    items often come from several interests, so Recall@K rewards covering them; metrics count
    each user's distinct targets. Test users see everything before their last k events
    (validation targets included), validation users everything before the 2k. Users with fewer
    than `min_train + 2k` events are kept for training (all their events) but not evaluated.
    """
    if k < 1:
        raise ValueError(f"leave_k_out: k must be >= 1, got {k}")
    lens = ds.lengths().astype(np.int64)
    ok = lens >= min_train + 2 * k
    users = np.nonzero(ok)[0]
    train_len = np.where(ok, lens - 2 * k, lens)
    starts = ds.offsets[:-1][ok]

    def block(hist_len: np.ndarray) -> EvalSet:
        rows = (starts + hist_len)[:, None] + np.arange(k)  # (U, k) the k events after the history
        return EvalSet(
            users=users,
            hist_len=hist_len,
            target_offsets=np.arange(len(users) + 1, dtype=np.int64) * k,
            target_items=np.asarray(ds.items[rows.reshape(-1)], dtype=np.int32),
        )

    name = "leave_one_out" if k == 1 else f"leave_{k}_out"
    return Split(name, train_len, block(lens[ok] - 2 * k), block(lens[ok] - k),
                 {"not_evaluated_short_users": int((~ok).sum())})


def temporal_split(ds: SequenceDataset, valid_frac: float = 0.1, test_frac: float = 0.1) -> Split:
    """Global temporal split: two cut times at the (1 - valid - test) and (1 - test) quantiles.

    Training = every event before the first cut. Validation users see their events before the
    first cut and must predict all their events in [cut1, cut2); test users see everything before
    cut2 and must predict all their events from cut2 on. Users with no history before a cut or no
    target after it are not evaluated on that part.
    """
    if ds.timestamps is None:
        raise ValueError(f"{ds.info.get('name', 'dataset')}: a temporal split needs timestamps; this source has only an order")
    if not (0 < valid_frac and 0 < test_frac and valid_frac + test_frac < 1):
        raise ValueError("valid_frac and test_frac must be positive and sum to less than 1")
    ts = np.asarray(ds.timestamps)
    cut1, cut2 = np.quantile(ts, [1 - valid_frac - test_frac, 1 - test_frac], method="lower")
    starts, ends = ds.offsets[:-1], ds.offsets[1:]
    # per-user counts of events strictly before each cut (sequences are time-sorted)
    before1 = np.array([np.searchsorted(ts[s:e], cut1, side="left") for s, e in zip(starts, ends)], dtype=np.int64)
    before2 = np.array([np.searchsorted(ts[s:e], cut2, side="left") for s, e in zip(starts, ends)], dtype=np.int64)
    lens = ends - starts

    def part(hist: np.ndarray, tgt_end: np.ndarray) -> EvalSet:
        keep = np.nonzero((hist > 0) & (tgt_end > hist))[0]
        counts = (tgt_end - hist)[keep]
        offs = np.zeros(len(keep) + 1, dtype=np.int64)
        np.cumsum(counts, out=offs[1:])
        tgt = [np.asarray(ds.items[starts[u] + hist[u] : starts[u] + tgt_end[u]]) for u in keep]
        return EvalSet(
            users=keep.astype(np.int64),
            hist_len=hist[keep],
            target_offsets=offs,
            target_items=np.concatenate(tgt).astype(np.int32) if tgt else np.zeros(0, np.int32),
        )

    return Split(
        "temporal",
        train_len=before1,
        valid=part(before1, before2),
        test=part(before2, lens),
        info={"cut_valid": int(cut1), "cut_test": int(cut2)},
    )


def make_split(ds: SequenceDataset, name: str, **kw) -> Split:
    if name in ("leave_one_out", "loo"):
        return leave_one_out(ds, **kw)
    if name == "leave_k_out":
        return leave_k_out(ds, **kw)
    if name == "temporal":
        return temporal_split(ds, **kw)
    raise ValueError(f"unknown split {name!r}: expected 'leave_one_out', 'leave_k_out' or 'temporal'")


def train_item_counts(ds: SequenceDataset, split: Split) -> np.ndarray:
    """(I,) training-set interaction count per item (index 0 = padding, always 0)."""
    idx = np.arange(ds.n_events) - np.repeat(ds.offsets[:-1], ds.lengths())
    mask = idx < np.repeat(split.train_len, ds.lengths())
    return np.bincount(np.asarray(ds.items)[mask], minlength=ds.n_items + 1).astype(np.int64)
