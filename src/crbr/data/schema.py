"""The raw-event schema every loader produces and `build_dataset` consumes (docs/design.md, "Events and negative feedback").

One event = `(user, item, timestamp, action)`; items may carry metadata (categories, text).

`RawEvents.events` (a Polars DataFrame, one row per event, in source-file order):

    user       Utf8     original user id (never null, never empty)
    item       Utf8     original item id (never null, never empty)
    timestamp  Int64    unix time; null for every row when the source has only an order
    action     Utf8     action name; null only where `rating` is set and the source names no action
                        (the rating is mapped to like / neutral / dislike by `RatingThresholds`)
    rating     Float64  explicit rating, null when the source has none
    row        Int64    1-based line number in the events file (record number for Parquet); used for
                        error messages and as the stable tie-break of equal timestamps. In the
                        per-user sequence format all events of one line share the line number and
                        their order is the frame order.

`RawEvents.items` (optional, one row per item id):

    item        Utf8        original item id
    categories  List(Utf8)  category / genre / attribute names (possibly empty)
    text        Utf8        free text for text encoders (title + genres, ...), nullable

Actions. Sources without actions map every event to "interact"; rated sources (MovieLens) map
ratings to "like" (>= like), "dislike" (<= dislike) or "neutral" — negative feedback is kept;
sources with explicit actions (Taobao `pv/cart/fav/buy`, a CSV action column)
keep their names. The processed dataset's `action_names` is `["<pad>"] + vocabulary`, see
`action_vocabulary`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl


PAD_ACTION = "<pad>"

DEFAULT_ACTIONS: tuple[str, ...] = ("interact", "like", "neutral", "dislike")

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "user": pl.Utf8,
    "item": pl.Utf8,
    "timestamp": pl.Int64,
    "action": pl.Utf8,
    "rating": pl.Float64,
    "row": pl.Int64,
}

ITEM_SCHEMA: dict[str, pl.DataType] = {
    "item": pl.Utf8,
    "categories": pl.List(pl.Utf8),
    "text": pl.Utf8,
}


@dataclass
class RatingThresholds:
    """Rating -> action: rating >= `like` is "like", rating <= `dislike` is "dislike", else "neutral".

    The defaults are the MovieLens convention of docs/design.md (>= 4 like, <= 2 dislike).
    """

    like: float = 4.0
    dislike: float = 2.0

    def __post_init__(self) -> None:
        if not self.dislike < self.like:
            raise ValueError(f"RatingThresholds: dislike ({self.dislike}) must be below like ({self.like})")

    def expr(self, rating: pl.Expr) -> pl.Expr:
        """Polars expression mapping a Float64 rating expression to the action name (Utf8); null stays null."""
        return (
            pl.when(rating.is_null())
            .then(pl.lit(None, dtype=pl.Utf8))
            .when(rating >= self.like)
            .then(pl.lit("like"))
            .when(rating <= self.dislike)
            .then(pl.lit("dislike"))
            .otherwise(pl.lit("neutral"))
        )

    def action(self, rating: float) -> str:
        """Scalar version of `expr` (for documentation and tests)."""
        if rating >= self.like:
            return "like"
        if rating <= self.dislike:
            return "dislike"
        return "neutral"


def action_vocabulary(present: Iterable[str], configured: Sequence[str] | None = None) -> list[str]:
    """The dataset's `action_names`: `["<pad>"] + vocabulary`.

    configured given: exactly that list, in that order (so action ids are stable across datasets,
    even for actions absent from this log); names in the data outside it are handled by
    `PreprocessConfig.on_unknown_action`.
    configured None: the distinct names present, `DEFAULT_ACTIONS` first in their order, then the
    others sorted (e.g. Taobao -> ["<pad>", "buy", "cart", "fav", "pv"]).
    """
    if configured is not None:
        names = list(configured)
        if len(set(names)) != len(names):
            raise ValueError(f"actions: duplicate names in the configured vocabulary {names}")
        if PAD_ACTION in names or "" in names:
            raise ValueError(f"actions: {PAD_ACTION!r} and '' are reserved, got {names}")
        if not names:
            raise ValueError("actions: the configured vocabulary is empty")
        return [PAD_ACTION] + names
    present = set(present)
    first = [a for a in DEFAULT_ACTIONS if a in present]
    rest = sorted(present - set(DEFAULT_ACTIONS))
    return [PAD_ACTION] + first + rest


def empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema=EVENT_SCHEMA)


def conform_events(df: pl.DataFrame) -> pl.DataFrame:
    """Cast an event frame to `EVENT_SCHEMA` (column order too); optional columns may be absent.

    `user` and `item` are required; missing `timestamp`/`rating` become null, a missing `action`
    becomes "interact" (or null where a rating is present), a missing `row` becomes 1..n.
    """
    missing = [c for c in ("user", "item") if c not in df.columns]
    if missing:
        raise ValueError(f"events: missing required column(s) {missing}; got {df.columns}")
    n = df.height
    cols = {}
    cols["user"] = df["user"].cast(pl.Utf8)
    cols["item"] = df["item"].cast(pl.Utf8)
    cols["timestamp"] = df["timestamp"].cast(pl.Int64) if "timestamp" in df.columns else pl.Series([None] * n, dtype=pl.Int64)
    cols["rating"] = df["rating"].cast(pl.Float64) if "rating" in df.columns else pl.Series([None] * n, dtype=pl.Float64)
    if "action" in df.columns:
        cols["action"] = df["action"].cast(pl.Utf8)
    else:
        cols["action"] = pl.Series(["interact"] * n, dtype=pl.Utf8).zip_with(cols["rating"].is_null(), pl.Series([None] * n, dtype=pl.Utf8))
    cols["row"] = df["row"].cast(pl.Int64) if "row" in df.columns else pl.Series(range(1, n + 1), dtype=pl.Int64)
    return pl.DataFrame({k: cols[k].alias(k) for k in EVENT_SCHEMA})


def conform_items(df: pl.DataFrame) -> pl.DataFrame:
    """Cast an item-metadata frame to `ITEM_SCHEMA`; `categories` and `text` may be absent."""
    if "item" not in df.columns:
        raise ValueError(f"items: missing required column 'item'; got {df.columns}")
    n = df.height
    cats = (
        df["categories"].cast(pl.List(pl.Utf8))
        if "categories" in df.columns
        else pl.Series([[] for _ in range(n)], dtype=pl.List(pl.Utf8))
    )
    text = df["text"].cast(pl.Utf8) if "text" in df.columns else pl.Series([None] * n, dtype=pl.Utf8)
    return pl.DataFrame({"item": df["item"].cast(pl.Utf8), "categories": cats, "text": text})


@dataclass
class RawEvents:
    """The output of every loader (see the module docstring for the column schema).

    events:       event frame (EVENT_SCHEMA), in source-file order
    items:        item metadata frame (ITEM_SCHEMA) or None
    source_files: files read; source_files[0] is the events file (named in error messages)
    drops:        counted drops by reason, keyed "<file name>:<reason>" (on_bad_line="drop", blank lines)
    name:         dataset name recorded in the processed dataset's info
    """

    events: pl.DataFrame
    items: pl.DataFrame | None = None
    source_files: list[Path] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)
    name: str = "dataset"

    def __post_init__(self) -> None:
        self.events = conform_events(self.events)
        if self.items is not None:
            self.items = conform_items(self.items)
        self.source_files = [Path(p) for p in self.source_files]

    @property
    def events_file(self) -> str:
        """The events file for messages ('<events>' when the frame was built in memory)."""
        return str(self.source_files[0]) if self.source_files else "<events>"

    @property
    def has_timestamps(self) -> bool:
        return self.events.height > 0 and self.events["timestamp"].null_count() == 0

    def __len__(self) -> int:
        return self.events.height

    def summary(self) -> str:
        ev = self.events
        return (
            f"{self.name}: {ev.height:,} raw events, {ev['user'].n_unique():,} users, "
            f"{ev['item'].n_unique():,} items, "
            f"{'no ' if self.items is None else ''}item metadata"
            f"{'' if self.items is None else f' ({self.items.height:,} items)'}, drops {self.drops or 'none'}"
        )
