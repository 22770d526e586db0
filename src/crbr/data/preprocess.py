"""RawEvents -> SequenceDataset: action mapping, ordering, de-duplication, k-core, id remapping.

Steps of `build_dataset`, in order (every count lands in `ds.info`):

1. Actions. Events without an explicit action get one from their rating (`RatingThresholds`:
   >= like -> "like", <= dislike -> "dislike", else "neutral"; dislikes are kept as input,
   docs/design.md, "Events and negative feedback"). The vocabulary is `action_vocabulary(present, cfg.actions)`; names outside a
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
    drops: dict[str, int] = dict(raw.drops)
    info: dict = {"name": raw.name, "source_files": [str(p) for p in raw.source_files]}
    if raw.events.height == 0:
        raise ValueError(f"{src}: no events")
    ev, names = _map_actions(raw.events, cfg, src, drops)  # 1.
    has_ts = _has_timestamps(ev, src)
    user_order, user_kind = id_order(ev["user"])
    item_order, item_kind = id_order(ev["item"])
    x = _encode_sorted(ev, names, user_order, item_order, has_ts)  # 2.
    counts = {"raw": {"users": len(user_order), "items": len(item_order), "events": x.height}}
    x = _deduplicate(x, cfg, has_ts, src, drops)  # 3.
    x, u, i = _filter_events(x, cfg, src, counts)  # 4.
    user_ids, item_ids, offsets, items = _final_ids(u, i, user_order, item_order)  # 5.
    actions = x["a"].to_numpy().astype(np.int16)  # (E,)
    metadata = _item_metadata(raw.items, item_ids, info)  # 6.
    info.update(
        {
            "settings": dataclasses.asdict(cfg),
            "drops": drops,
            "counts": counts,
            "action_counts": _action_counts(actions, names),
            "id_order": {"users": user_kind, "items": item_kind},
            "timestamps": has_ts,
            "build_seconds": round(time.perf_counter() - t0, 3),
        }
    )
    ds = SequenceDataset(
        offsets=offsets,
        items=items,
        actions=actions,
        timestamps=x["timestamp"].to_numpy().astype(np.int64) if has_ts else None,
        user_ids=user_ids,
        item_ids=item_ids,
        action_names=names,
        info=info,
        **metadata,
    )
    ds.validate()
    log.info("built %s", ds.summary())
    return ds


def _map_actions(
    ev: pl.DataFrame, cfg: PreprocessConfig, src: str, drops: dict[str, int]
) -> tuple[pl.DataFrame, list[str]]:
    """Step 1: fill missing actions from ratings, fix the vocabulary, drop or reject unknown names."""
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
    return ev, names


def _has_timestamps(ev: pl.DataFrame, src: str) -> bool:
    """Whether every event has a timestamp; an error when only some do."""
    n_null_ts = ev["timestamp"].null_count()
    if 0 < n_null_ts < ev.height:
        r = int(ev.filter(pl.col("timestamp").is_null())["row"][0])
        raise ValueError(f"{src}, line {r}: timestamp missing while other events have one")
    return n_null_ts == 0


def _encode_sorted(
    ev: pl.DataFrame, names: list[str], user_order: pl.Series, item_order: pl.Series, has_ts: bool
) -> pl.DataFrame:
    """Step 2: integer columns u, i (codes in the id order), a, timestamp, row, sorted per user by
    (timestamp, row); the sort is stable, so ties keep frame order (the position within a line)."""
    action_id = {a: k for k, a in enumerate(names)}
    x = ev.select(
        pl.col("user").replace_strict(user_order, pl.int_range(len(user_order), eager=True), return_dtype=pl.Int64).alias("u"),
        pl.col("item").replace_strict(item_order, pl.int_range(len(item_order), eager=True), return_dtype=pl.Int64).alias("i"),
        pl.col("action").replace_strict(action_id, return_dtype=pl.Int16).alias("a"),
        "timestamp",
        "row",
    )
    u_raw = x["u"].to_numpy()
    row = x["row"].to_numpy()
    order = np.lexsort((row, x["timestamp"].to_numpy(), u_raw) if has_ts else (row, u_raw))
    return x[order]


def _deduplicate(x: pl.DataFrame, cfg: PreprocessConfig, has_ts: bool, src: str, drops: dict[str, int]) -> pl.DataFrame:
    """Step 3: drop exact repeats ("drop_exact", timestamped sources only) or later (user, item)
    repeats ("first"), counting them in `drops`."""
    dedup_key = {"drop_exact": ["u", "i", "timestamp", "a"], "first": ["u", "i"]}.get(cfg.dedup)
    if dedup_key is None or not (has_ts or cfg.dedup == "first"):
        return x
    first = x.select(pl.struct(dedup_key).is_first_distinct()).to_series()
    reason = "duplicate_events" if cfg.dedup == "drop_exact" else "repeat_interactions"
    drops[reason] = int((~first).sum())
    if drops[reason]:
        x = x.filter(first)
        log.info("%s: dedup=%s dropped %d event(s)", src, cfg.dedup, drops[reason])
    return x


def _filter_events(
    x: pl.DataFrame, cfg: PreprocessConfig, src: str, counts: dict
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """Step 4: iterative k-core / minimum user length; the kept frame and its (E,) u, i codes.
    Records the counts before and after in `counts`; an error when nothing is left."""
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
    return x, u, i


def _final_ids(
    u: np.ndarray, i: np.ndarray, user_order: pl.Series, item_order: pl.Series
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step 5: compact the (E,) user / item codes of the kept events (keeping the id order) into
    user_ids (U,), item_ids (n_items + 1,) with "" for padding, offsets (U + 1,) and items (E,) int32."""
    kept_u, u_new = _compact(u, len(user_order))  # (U,), (E,)
    kept_i, i_new = _compact(i, len(item_order))  # (n_items,), (E,)
    user_ids = np.asarray(user_order.gather(kept_u).to_list(), dtype=object)
    item_ids = np.asarray([""] + item_order.gather(kept_i).to_list(), dtype=object)
    return user_ids, item_ids, _csr_offsets(u_new, len(kept_u)), (i_new + 1).astype(np.int32)


def _csr_offsets(rows: np.ndarray, n: int) -> np.ndarray:
    """(n + 1,) int64 CSR offsets of `rows` (E,) codes in 0..n-1 sorted ascending."""
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    return offsets


def _item_metadata(meta: pl.DataFrame | None, item_ids: np.ndarray, info: dict) -> dict:
    """Step 6: cat_offsets (I + 1,), cat_ids, category_names and item_text of the items
    `item_ids` (I,) (row 0 padding) from the metadata frame; coverage counts go to `info`."""
    out: dict = {"cat_offsets": None, "cat_ids": None, "category_names": [], "item_text": None}
    if meta is None:
        return out
    n_items = len(item_ids) - 1
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
    out["category_names"] = sorted(pairs["categories"].unique().to_list())
    cat_index = {c: k for k, c in enumerate(out["category_names"])}
    out["cat_ids"] = pairs["categories"].replace_strict(cat_index, return_dtype=pl.Int32).to_numpy().astype(np.int32)
    out["cat_offsets"] = _csr_offsets(pairs["code"].to_numpy(), n_items + 1)  # (n_items + 2,)
    if m["text"].null_count() < m.height:
        text = [None] * (n_items + 1)
        for c, t in zip(m["code"].to_list(), m["text"].to_list()):
            text[c] = t
        out["item_text"] = text
    return out


def _action_counts(actions: np.ndarray, names: list[str]) -> dict[str, int]:
    """Events per action name, for the names that occur (padding excluded)."""
    act_counts = dict(zip(names, np.bincount(actions, minlength=len(names)).tolist()))
    return {a: int(act_counts[a]) for a in names[1:] if act_counts[a]}
