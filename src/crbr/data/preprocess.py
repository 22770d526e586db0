"""RawEvents -> SequenceDataset: action mapping, ordering, de-duplication, k-core, id remapping.

Steps of `build_dataset`, in order (every count lands in `ds.info`):

1. Actions. Events without an explicit action get one from their rating (`RatingThresholds`:
   >= like -> "like", <= dislike -> "dislike", else "neutral"; dislikes are kept as input,
   DESIGN.md §3). The vocabulary is `action_vocabulary(present, cfg.actions)`; names outside a
   configured vocabulary raise (naming the events file and line) or are dropped and counted
   (`on_unknown_action`).
2. Order. Each user's events are sorted by timestamp; equal timestamps keep file order (the
   `row` line number, then frame order), and sources without timestamps keep file order. The
   sort is stable, so the result is deterministic.
3. De-duplication (`dedup`): "drop_exact" (default) drops repeats of the same
   (user, item, timestamp, action) — only for timestamped sources, since in an order-only source
   two positions are two events; "first" keeps only the earliest event of each (user, item) pair;
   "keep" keeps everything. Dropped events are counted in `info["drops"]`.
4. Filtering: users with fewer than max(kcore, min_user_events) events and items with fewer
   than kcore events are removed, repeated until nothing changes (iterative k-core; kcore=0 off).
5. Ids: users -> 0..U-1 and items -> 1..n_items (0 = padding), in natural numeric order when
   every id is an integer, else lexicographic; original ids kept in `user_ids` / `item_ids`.
6. Item metadata -> `cat_offsets` / `cat_ids` / `category_names` (sorted) / `item_text`. Items in
   the log without metadata get no categories and None text; metadata rows for items not in the
   (filtered) log are ignored; both are counted.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl

from .dataset import SequenceDataset
from .schema import RatingThresholds, RawEvents, action_vocabulary

log = logging.getLogger("crbr.data")


@dataclass
class PreprocessConfig:
    """Settings of `build_dataset` (see the module docstring for the exact semantics).

    kcore:             iterative k-core on users and items (0 = off)
    min_user_events:   users with fewer events are removed (applied inside the k-core loop)
    dedup:             "drop_exact" | "first" | "keep"
    rating_thresholds: rating -> like / neutral / dislike
    actions:           fixed action vocabulary (order = action ids 1..); None = the names present
    on_unknown_action: "error" | "drop" for action names outside a configured vocabulary
    """

    kcore: int = 0
    min_user_events: int = 1
    dedup: Literal["keep", "drop_exact", "first"] = "drop_exact"
    rating_thresholds: RatingThresholds = field(default_factory=RatingThresholds)
    actions: list[str] | None = None
    on_unknown_action: Literal["error", "drop"] = "error"

    def __post_init__(self) -> None:
        if isinstance(self.rating_thresholds, dict):
            self.rating_thresholds = RatingThresholds(**self.rating_thresholds)
        if self.dedup not in ("keep", "drop_exact", "first"):
            raise ValueError(f"dedup must be 'keep', 'drop_exact' or 'first', got {self.dedup!r}")
        if self.on_unknown_action not in ("error", "drop"):
            raise ValueError(f"on_unknown_action must be 'error' or 'drop', got {self.on_unknown_action!r}")
        if self.kcore < 0 or self.min_user_events < 1:
            raise ValueError(f"kcore must be >= 0 and min_user_events >= 1, got {self.kcore}, {self.min_user_events}")
        if self.actions is not None:
            self.actions = list(self.actions)


def id_order(ids: pl.Series) -> tuple[pl.Series, str]:
    """Distinct ids in the deterministic remapping order, and which order was used.

    "numeric" when every id parses as an integer (ties such as "7" / "07" broken by the string),
    else "lexicographic".
    """
    u = ids.unique()
    as_int = u.str.to_integer(strict=False)
    if as_int.null_count() == 0:
        return pl.DataFrame({"id": u, "n": as_int}).sort(["n", "id"])["id"], "numeric"
    return u.sort(), "lexicographic"


def _counts(users: np.ndarray, items: np.ndarray) -> dict[str, int]:
    return {
        "users": int(np.count_nonzero(np.bincount(users))) if len(users) else 0,
        "items": int(np.count_nonzero(np.bincount(items))) if len(items) else 0,
        "events": int(len(users)),
    }


def _compact(codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense re-coding of non-negative codes < n that keeps their order (np.unique without a sort).

    Returns (kept, new): kept (K,) the distinct codes ascending, new (E,) codes in 0..K-1.
    """
    present = np.bincount(codes, minlength=n) > 0
    new_code = np.cumsum(present) - 1  # (n,)
    return np.nonzero(present)[0], new_code[codes]


def kcore_mask(users: np.ndarray, items: np.ndarray, user_min: int, item_min: int) -> tuple[np.ndarray, int]:
    """(E,) bool mask of events kept by iterative filtering, and the number of passes that removed any.

    users, items: (E,) dense non-negative integer codes. A user survives with >= user_min kept
    events and an item with >= item_min, at the fixed point.
    """
    keep = np.ones(len(users), dtype=bool)
    nu, ni = (int(users.max()) + 1, int(items.max()) + 1) if len(users) else (0, 0)
    passes = 0
    while True:
        uc = np.bincount(users[keep], minlength=nu)
        ic = np.bincount(items[keep], minlength=ni)
        new = keep & (uc[users] >= user_min) & (ic[items] >= item_min)
        if new.sum() == keep.sum():
            return keep, passes
        keep, passes = new, passes + 1


def build_dataset(raw: RawEvents, cfg: PreprocessConfig | None = None) -> SequenceDataset:
    """Process `raw` into a validated `SequenceDataset` (steps in the module docstring)."""
    cfg = cfg or PreprocessConfig()
    t0 = time.perf_counter()
    src = raw.events_file
    ev = raw.events
    drops: dict[str, int] = dict(raw.drops)
    info: dict = {"name": raw.name, "source_files": [str(p) for p in raw.source_files]}
    if ev.height == 0:
        raise ValueError(f"{src}: no events")

    # ---- 1. actions
    ev = ev.with_columns(
        pl.when(pl.col("action").is_null())
        .then(cfg.rating_thresholds.expr(pl.col("rating")))
        .otherwise(pl.col("action"))
        .alias("action")
    )
    none = ev["action"].is_null() | (ev["action"] == "")
    if none.any():
        r = int(ev.filter(none)["row"][0])
        raise ValueError(f"{src}, line {r}: event has neither an action nor a rating")
    names = action_vocabulary(ev["action"].unique().to_list(), cfg.actions)
    unknown = ~ev["action"].is_in(names[1:])
    if unknown.any():
        first = ev.filter(unknown).row(0, named=True)
        bad_names = sorted(ev.filter(unknown)["action"].unique().to_list())
        if cfg.on_unknown_action == "error":
            raise ValueError(
                f"{src}, line {first['row']}: action {first['action']!r} is not in the configured vocabulary "
                f"{names[1:]} (unknown: {bad_names}; on_unknown_action='drop' skips them)"
            )
        n = int(unknown.sum())
        drops["unknown_action"] = drops.get("unknown_action", 0) + n
        log.warning("%s: dropped %d event(s) with actions outside the vocabulary: %s", src, n, bad_names)
        ev = ev.filter(~unknown)

    # ---- 2. timestamps and order
    n_null_ts = ev["timestamp"].null_count()
    if 0 < n_null_ts < ev.height:
        r = int(ev.filter(pl.col("timestamp").is_null())["row"][0])
        raise ValueError(f"{src}, line {r}: timestamp missing while other events have one")
    has_ts = n_null_ts == 0
    user_order, user_kind = id_order(ev["user"])
    item_order, item_kind = id_order(ev["item"])
    action_id = {a: k for k, a in enumerate(names)}
    # from here on only integer columns: u, i (codes in the deterministic id order), a, timestamp, row
    x = ev.select(
        pl.col("user").replace_strict(user_order, pl.int_range(len(user_order), eager=True), return_dtype=pl.Int64).alias("u"),
        pl.col("item").replace_strict(item_order, pl.int_range(len(item_order), eager=True), return_dtype=pl.Int64).alias("i"),
        pl.col("action").replace_strict(action_id, return_dtype=pl.Int16).alias("a"),
        "timestamp",
        "row",
    )
    u_raw = x["u"].to_numpy()
    row = x["row"].to_numpy()
    # stable: ties in (user, timestamp, row) keep frame order (the position within a sequence line)
    order = np.lexsort((row, x["timestamp"].to_numpy(), u_raw) if has_ts else (row, u_raw))
    x = x[order]
    counts = {"raw": {"users": len(user_order), "items": len(item_order), "events": x.height}}

    # ---- 3. de-duplication
    dedup_key = {"drop_exact": ["u", "i", "timestamp", "a"], "first": ["u", "i"]}.get(cfg.dedup)
    if dedup_key is not None and (has_ts or cfg.dedup == "first"):
        first = x.select(pl.struct(dedup_key).is_first_distinct()).to_series()
        reason = "duplicate_events" if cfg.dedup == "drop_exact" else "repeat_interactions"
        drops[reason] = int((~first).sum())
        if drops[reason]:
            x = x.filter(first)
            log.info("%s: dedup=%s dropped %d event(s)", src, cfg.dedup, drops[reason])

    # ---- 4. k-core / minimum lengths
    u = x["u"].to_numpy()
    i = x["i"].to_numpy()
    counts["before_filter"] = _counts(u, i)
    user_min = max(cfg.kcore, cfg.min_user_events)
    keep, passes = kcore_mask(u, i, user_min, cfg.kcore)
    if not keep.all():
        x = x.filter(pl.Series(keep))
        u, i = u[keep], i[keep]
    counts["after_filter"] = _counts(u, i)
    counts["filter_passes"] = passes
    if len(u) == 0:
        raise ValueError(
            f"{src}: no events left after filtering (kcore={cfg.kcore}, min_user_events={cfg.min_user_events})"
        )

    # ---- 5. final ids (compacting keeps the deterministic order)
    kept_u, u_new = _compact(u, len(user_order))  # (U,), (E,)
    kept_i, i_new = _compact(i, len(item_order))
    user_ids = np.asarray(user_order.gather(kept_u).to_list(), dtype=object)  # (U,)
    item_ids = np.asarray([""] + item_order.gather(kept_i).to_list(), dtype=object)  # (n_items + 1,)
    n_users, n_items = len(kept_u), len(kept_i)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(u_new, minlength=n_users), out=offsets[1:])
    items = (i_new + 1).astype(np.int32)  # (E,)
    actions = x["a"].to_numpy().astype(np.int16)
    timestamps = x["timestamp"].to_numpy().astype(np.int64) if has_ts else None

    # ---- 6. item metadata
    cat_offsets = cat_ids = item_text = None
    category_names: list[str] = []
    if raw.items is not None:
        meta = raw.items
        meta_u = meta.unique(subset="item", keep="first", maintain_order=True)
        if meta_u.height < meta.height:
            info["metadata_duplicate_items"] = meta.height - meta_u.height
            log.warning("item metadata: %d duplicate item row(s); the first of each is used", meta.height - meta_u.height)
        codes = pl.DataFrame({"item": item_ids[1:].tolist(), "code": np.arange(1, n_items + 1, dtype=np.int64)})
        m = meta_u.join(codes, on="item", how="inner").sort("code")
        info["items_without_metadata"] = n_items - m.height
        info["metadata_items_unused"] = meta_u.height - m.height
        pairs = (
            m.select("code", "categories")
            .explode("categories")
            .filter(pl.col("categories").is_not_null() & (pl.col("categories") != ""))
            .unique(maintain_order=True)
        )
        category_names = sorted(pairs["categories"].unique().to_list())
        cat_index = {c: k for k, c in enumerate(category_names)}
        cat_ids = pairs["categories"].replace_strict(cat_index, return_dtype=pl.Int32).to_numpy().astype(np.int32)
        per_item = np.bincount(pairs["code"].to_numpy(), minlength=n_items + 1)  # (n_items + 1,)
        cat_offsets = np.zeros(n_items + 2, dtype=np.int64)
        np.cumsum(per_item, out=cat_offsets[1:])
        if m["text"].null_count() < m.height:
            text = [None] * (n_items + 1)
            for c, t in zip(m["code"].to_list(), m["text"].to_list()):
                text[c] = t
            item_text = text

    act_counts = dict(zip(names, np.bincount(actions, minlength=len(names)).tolist()))
    info.update(
        {
            "settings": dataclasses.asdict(cfg),
            "drops": drops,
            "counts": counts,
            "action_counts": {a: int(act_counts[a]) for a in names[1:] if act_counts[a]},
            "id_order": {"users": user_kind, "items": item_kind},
            "timestamps": has_ts,
            "build_seconds": round(time.perf_counter() - t0, 3),
        }
    )
    ds = SequenceDataset(
        offsets=offsets,
        items=items,
        actions=actions,
        timestamps=timestamps,
        user_ids=user_ids,
        item_ids=item_ids,
        action_names=names,
        cat_offsets=cat_offsets,
        cat_ids=cat_ids,
        category_names=category_names,
        item_text=item_text,
        info=info,
    )
    ds.validate()
    log.info("built %s", ds.summary())
    return ds
