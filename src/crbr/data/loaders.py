"""Readers for interaction logs and item metadata; each returns a `RawEvents` (see schema.py).

Formats (one function each):

- `load_movielens_100k(dir)`  MovieLens 100K: `u.data` = `user \\t item \\t rating \\t unix_ts`;
  `u.item` = `id|title|release|video_release|url|19 genre flags` (latin-1); `u.genre` = `name|index`.
- `load_movielens(ratings, items_path)`  MovieLens 1M/10M `ratings.dat` (`UserID::MovieID::Rating::Timestamp`)
  or 20M/25M/latest `ratings.csv` (header `userId,movieId,rating,timestamp`); item metadata from
  `movies.dat` (`MovieID::Title::Genres`, genres `|`-joined; latin-1 in 1M, utf-8 in 10M) or
  `movies.csv` (`movieId,title,genres`, titles quoted when they contain commas).
- `load_sequences(path)`  one user per line: `user item item ...` (space separated, oldest first),
  as the S3-Rec / ICLRec Amazon files (Beauty.txt, Yelp.txt, LastFM.txt) and ml-1m_seq.txt. No
  timestamps: the order is the line order. Optional metadata: `*_item2attributes.json`
  (`{"item": [attribute ids]}` -> categories "attr:<id>", text "attributes <id> <id> ..."),
  an item text JSON (below), or a MovieLens movies.dat / movies.csv / u.item. Optional
  `ratings_path`: a parallel per-event ratings file (below).
- `load_item_text_json(path)`  item text JSON (Beauty_item_text.json): `{"item": {"title",
  "brand", "categories", "price", ...}}`; text from the template of `item_text_from_fields`,
  categories from the category path (see there). Read by `load_item_metadata` for a `.json`
  whose values are objects, or given as `item_text_path` beside another metadata file (then it
  supplies the text and the other file the categories).
- `load_attribute_names(path)`  names of S3-Rec attribute ids (Beauty_attribute_names.json:
  `{"attr id": [{"type": "category"|"brand", "name": ...}]}`), which turn the "attr:<id>"
  categories of an item2attributes file into those names (`attribute_names_path`).
- ratings file of the sequence format (ml-1m_seq_ratings.txt): one line per line of the sequence
  file, `user r1 r2 ...`, rk the rating of the k-th item of that line; 0 = unknown rating (the
  event is kept as "interact"). Ratings map to like / neutral / dislike in build_dataset.
- `load_pairs(path)`  SASRec's `user item` file, one event per line, order = file order.
- `load_table(path, ColumnMap)`  generic CSV / TSV / Parquet with a column mapping; item metadata
  from `load_item_table(path, ItemColumnMap)` or a per-event category column.
- `load_taobao(path)`  Taobao UserBehavior.csv (`user,item,category,behavior,timestamp`, no header):
  `load_table` with the `TAOBAO_COLUMNS` preset; behaviours pv/cart/fav/buy are the actions.

Encoding (`encoding`, default None = UTF-8; a leading BOM is dropped). A byte that is not valid
in the encoding is an error naming the file, line and byte offset: nothing is re-read in another
encoding behind the user's back. With an explicit `encoding` (e.g. "latin-1", "cp1252") every
text file of the call is decoded with it. One exception, for the MovieLens title files whose
original releases are latin-1 (u.item of 100K, movies.dat of 1M): with encoding None such a file
is read as latin-1 when it is not UTF-8 *and* holds no UTF-8 multi-byte character at all (logged
at INFO); a UTF-8 file with a broken byte is an error there too. Parquet files carry their own
encoding; one that cannot be read is an error naming the file.

Bad-input policy (`on_bad_line`, default "error"). A malformed line — wrong number of fields, an
empty id, an id that is a missing-value marker (`MISSING_ID_MARKERS`: NaN, None, null, <NA> in
any case, as pandas / Python / JSON write a missing value), a non-numeric rating, a non-integer
timestamp, a negative timestamp (before 1970: -1 is a common "unknown"; no interaction log goes
back that far), a user line without items, a metadata row that cannot be parsed — either raises
`ValueError("<file>, line <n>: <what> ...")` naming the file, the 1-based line number, the field
and the value found ("error"), or is dropped, counted in `RawEvents.drops["<file name>:<reason>"]`
and logged as a warning on the "crbr.data" logger ("drop"). Blank lines carry no data: they are
always skipped, counted (`...:blank_line`) and logged, in both modes. A missing column or file,
an undecodable byte and an unreadable Parquet file are always errors. Metadata for items that
are not in the log is kept here and counted (then ignored) by `build_dataset`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from .schema import RawEvents, conform_items

log = logging.getLogger("crbr.data")

OnBadLine = Literal["error", "drop"]

# id values that are how a missing value gets written (pandas / numpy "NaN", Python "None", JSON
# "null", pandas "<NA>"); compared case-insensitively after stripping
MISSING_ID_MARKERS = ("nan", "none", "null", "<na>")

# the encoding of the original MovieLens 100K u.item and 1M movies.dat (see read_text)
MOVIELENS_LEGACY_ENCODING = "latin-1"

# the 19 genres of MovieLens 100K, in u.genre / u.item flag order
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip


@dataclass
class ColumnMap:
    """Where the event fields are in a generic table (CSV / TSV / Parquet).

    user, item:        column names (required)
    timestamp:         integer unix time column, or a datetime string column with
                       `timestamp_format` (strptime syntax); Parquet datetimes are converted
    action:            action-name column (kept as is)
    rating:            numeric rating column (-> like/neutral/dislike when no action column)
    category:          per-event item category column (-> item metadata categories)
    separator:         field separator of text files
    has_header, names: a headerless file needs `names`, the column names in order
    """

    user: str = "user"
    item: str = "item"
    timestamp: str | None = None
    action: str | None = None
    rating: str | None = None
    category: str | None = None
    timestamp_format: str | None = None
    separator: str = ","
    has_header: bool = True
    names: list[str] | None = None


@dataclass
class ItemColumnMap:
    """Where the item fields are in a generic item-metadata table (CSV / TSV / Parquet).

    categories is one string column split on `category_separator` (a Parquet list column is
    used as is); text is a free-text column (title, description).
    """

    item: str = "item"
    categories: str | None = None
    category_separator: str = "|"
    text: str | None = None
    separator: str = ","
    has_header: bool = True
    names: list[str] | None = None


TAOBAO_COLUMNS = ColumnMap(
    user="user",
    item="item",
    category="category",
    action="behavior",
    timestamp="timestamp",
    has_header=False,
    names=["user", "item", "category", "behavior", "timestamp"],
)

TAOBAO_ACTIONS = ["pv", "cart", "fav", "buy"]


# ============================================================================ low-level text parsing
# one valid UTF-8 multi-byte character (RFC 3629: no overlongs, surrogates or code points > U+10FFFF)
_UTF8_MULTIBYTE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)


def read_text(path: str | Path, encoding: str | None = None, *, legacy: str | None = None) -> str:
    """File contents decoded with `encoding` (None = UTF-8), a leading BOM dropped.

    An undecodable byte raises ValueError naming the file, line and byte offset. `legacy` (only
    with encoding None): the encoding of a format's original release, used for a file that is
    not UTF-8 and has no UTF-8 multi-byte character in it (so nothing UTF-8 gets mis-decoded).
    """
    data = Path(path).read_bytes()
    enc = encoding or "utf-8"
    try:
        codecs.lookup(enc)
    except LookupError:
        raise ValueError(f"{path}: unknown encoding {enc!r}") from None
    try:
        text = data.decode(enc)
    except UnicodeDecodeError as e:
        if encoding is None and legacy and not _UTF8_MULTIBYTE.search(data):
            log.info("%s: not UTF-8 and no UTF-8 character in it: read as %s, the format's own encoding", path, legacy)
            text = data.decode(legacy)
        else:
            raise _decode_error(path, data, enc, e, explicit=encoding is not None) from None
    return text[1:] if text.startswith("\ufeff") else text


def _decode_error(path: str | Path, data: bytes, enc: str, e: UnicodeDecodeError, explicit: bool) -> ValueError:
    line = data[: e.start].decode(enc, errors="replace").count("\n") + 1
    if explicit:
        hint = f"the file is not {enc}"
    else:
        hint = "if the file is in another encoding, name it (encoding='latin-1', 'cp1252', ...; data.encoding in a config)"
    byte = data[e.start]
    return ValueError(f"{path}, line {line}: byte 0x{byte:02x} at byte offset {e.start} is not valid {enc} ({e.reason}); {hint}")


def _check_policy(on_bad_line: str) -> None:
    if on_bad_line not in ("error", "drop"):
        raise ValueError(f"on_bad_line must be 'error' or 'drop', got {on_bad_line!r}")


class _Reader:
    """Applies the bad-input policy for one file: raise naming the line, or count-and-drop."""

    def __init__(
        self, path: Path, on_bad_line: str, drops: dict[str, int], unit: str = "line",
        encoding: str | None = None, legacy: str | None = None,
    ):
        _check_policy(on_bad_line)
        self.path, self.policy, self.drops, self.unit = Path(path), on_bad_line, drops, unit
        self.encoding, self.legacy = encoding, legacy

    def text(self) -> str:
        """The file's contents (see `read_text`)."""
        return read_text(self.path, self.encoding, legacy=self.legacy)

    def where(self, row: int) -> str:
        return f"{self.path}, {self.unit} {row}"

    def count(self, reason: str, n: int, first_row: int | None = None, what: str = "") -> None:
        """Record `n` skipped lines; blank lines are logged at INFO, bad lines as warnings."""
        key = f"{self.path.name}:{reason}"
        self.drops[key] = self.drops.get(key, 0) + n
        at = f" (first: {self.unit} {first_row}{': ' + what if what else ''})" if first_row is not None else ""
        level = logging.INFO if reason == "blank_line" else logging.WARNING
        log.log(level, "%s: skipped %d %s(s): %s%s", self.path, n, self.unit, reason, at)

    def reject(self, df: pl.DataFrame, bad: pl.Series, reason: str, describe) -> pl.DataFrame:
        """Rows of `df` flagged by the boolean `bad` break the policy; describe(row_dict) -> str."""
        n_bad = int(bad.sum() or 0)
        if n_bad == 0:
            return df
        first = df.filter(bad).row(0, named=True)
        what = describe(first)
        if self.policy == "error":
            raise ValueError(f"{self.where(first['row'])}: {what} (on_bad_line='drop' skips such {self.unit}s)")
        self.count(reason, n_bad, first["row"], what)
        return df.filter(~bad)

    def fail(self, row: int | None, what: str, reason: str) -> bool:
        """Scalar version for Python-level parsing: raise, or count and return True (= skip it)."""
        if self.policy == "error":
            loc = self.where(row) if row is not None else str(self.path)
            raise ValueError(f"{loc}: {what} (on_bad_line='drop' skips such {self.unit}s)")
        self.count(reason, 1, row, what)
        return True


def _line_records(path: Path, reader: _Reader, separator: str | None, text: str | None = None) -> pl.DataFrame:
    """Non-blank lines of an unquoted text file split into fields.

    Returns columns row (Int64, 1-based line number) and fields (List(Utf8)); separator None
    splits on runs of whitespace. Blank lines are counted and skipped.
    """
    text = reader.text() if text is None else text
    lines = pl.Series("text", [text], dtype=pl.Utf8).str.split("\n").explode()
    df = pl.DataFrame(lines).with_row_index("row", offset=1).with_columns(pl.col("row").cast(pl.Int64))
    if text.endswith("\n") or text == "":
        df = df.head(df.height - 1)  # the empty string after the final newline is not a line
    df = df.with_columns(pl.col("text").str.strip_chars_end("\r"))
    return _split_records(df, reader, separator)


def _split_records(df: pl.DataFrame, reader: _Reader, separator: str | None) -> pl.DataFrame:
    blank = df["text"].str.strip_chars() == ""
    if blank.any():
        reader.count("blank_line", int(blank.sum()), int(df.filter(blank)["row"][0]))
        df = df.filter(~blank)
    if separator is None:
        fields = pl.col("text").str.strip_chars().str.replace_all(r"\s+", " ").str.split(" ")
    else:
        fields = pl.col("text").str.split(separator)
    return df.select("row", fields.alias("fields"))


def _csv_records(path: Path, reader: _Reader, separator: str, text: str | None = None) -> pl.DataFrame:
    """Like `_line_records` for files with quoted fields (Python's csv module; exact line numbers)."""
    text = reader.text() if text is None else text
    rows, starts = [], []
    rd = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    prev = 0
    n_blank, first_blank = 0, None
    try:
        for rec in rd:
            start, prev = prev + 1, rd.line_num
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                n_blank += 1
                first_blank = first_blank or start
                continue
            rows.append(rec)
            starts.append(start)
    except csv.Error as e:
        raise ValueError(f"{reader.where(prev + 1)}: unreadable CSV: {e}") from None
    if n_blank:
        reader.count("blank_line", n_blank, first_blank)
    return pl.DataFrame(
        {"row": pl.Series(starts, dtype=pl.Int64), "fields": pl.Series(rows, dtype=pl.List(pl.Utf8))}
    )


def _records(path: Path, reader: _Reader, separator: str | None) -> pl.DataFrame:
    """Records of a delimited text file; the csv engine only when the file contains quotes."""
    text = reader.text()
    if separator is not None and len(separator) == 1 and '"' in text:
        return _csv_records(path, reader, separator, text)
    return _line_records(path, reader, separator, text)


def _check_field_count(recs: pl.DataFrame, reader: _Reader, n: int, layout: str) -> pl.DataFrame:
    bad = recs["fields"].list.len() != n
    return reader.reject(
        recs, bad, "bad_field_count", lambda r: f"expected {n} fields ({layout}), got {len(r['fields'])}"
    )


def _columns_from_fields(recs: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """(row, fields) -> row + one Utf8 column per name (fields by position)."""
    return recs.select(
        "row", *[pl.col("fields").list.get(i, null_on_oob=True).alias(nm) for i, nm in enumerate(names)]
    )


# ============================================================================ typed field checks
def _typed(df: pl.DataFrame, reader: _Reader, spec: dict[str, str], timestamp_format: str | None = None) -> pl.DataFrame:
    """Check and cast Utf8 columns in place. spec: column -> kind.

    kinds: "id" (non-empty string, stripped, not a missing-value marker), "int" / "float"
    (required number), "opt_str" (stripped, empty -> null), "ts" (required unix time >= 0, or a
    datetime with `timestamp_format` not before 1970).
    """
    for col, kind in spec.items():
        s = df[col].cast(pl.Utf8).str.strip_chars()
        empty = s.is_null() | (s == "")
        if kind == "opt_str":
            df = df.with_columns(pl.when(empty).then(None).otherwise(s).alias(col))
            continue
        df = reader.reject(df.with_columns(s.alias(col)), empty, f"empty_{col}", lambda r: f"field '{col}' is empty")
        if kind == "id":
            df = _check_id(df, reader, col)
        else:
            df = _check_number(df, reader, col, kind, timestamp_format)
    return df


def _check_id(df: pl.DataFrame, reader: _Reader, col: str) -> pl.DataFrame:
    """Reject ids that are how a missing value gets written (`MISSING_ID_MARKERS`)."""
    marker = df[col].str.to_lowercase().is_in(MISSING_ID_MARKERS)
    return reader.reject(
        df, marker, f"bad_{col}", lambda r: f"field '{col}' is {r[col]!r}, a missing-value marker, not an id"
    )


def _parse_number(s: pl.Series, kind: str, timestamp_format: str | None) -> tuple[pl.Series, pl.Series, str]:
    """(parsed values, unparsable flags, what was expected) of a stripped Utf8 column."""
    if kind == "float":
        v = s.cast(pl.Float64, strict=False)
        return v, v.is_null() | v.is_nan(), "a number"
    if kind == "ts" and timestamp_format:
        v = s.str.strptime(pl.Datetime("us"), timestamp_format, strict=False).dt.epoch("s")
        return v, v.is_null(), f"a datetime in format {timestamp_format!r}"
    if kind in ("int", "ts"):
        v = s.str.to_integer(strict=False)
        return v, v.is_null(), "an integer"
    raise ValueError(f"internal: unknown field kind {kind!r}")


def _check_number(df: pl.DataFrame, reader: _Reader, col: str, kind: str, timestamp_format: str | None) -> pl.DataFrame:
    """Cast a numeric / timestamp column; reject unparsable values and negative timestamps."""
    v, bad, expect = _parse_number(df[col], kind, timestamp_format)
    df = df.with_columns(v.alias(col), df[col].alias("__raw"))
    df = reader.reject(df, bad, f"bad_{col}", lambda r: f"field '{col}' is not {expect}: {r['__raw']!r}")
    if kind == "ts":
        df = reader.reject(
            df, df[col] < 0, f"negative_{col}",
            lambda r: f"field '{col}' is {r['__raw']!r}: unix time {r[col]} is negative "
            "(before 1970-01-01; -1 often marks an unknown time)",
        )
    return df.drop("__raw")


def _events(df: pl.DataFrame, *, timestamps: bool, action: bool, rating: bool) -> pl.DataFrame:
    """Assemble the EVENT_SCHEMA frame from checked columns named user/item/timestamp/action/rating."""
    cols = [pl.col("user"), pl.col("item")]
    cols.append(pl.col("timestamp").cast(pl.Int64) if timestamps else pl.lit(None, dtype=pl.Int64).alias("timestamp"))
    if action:
        cols.append(pl.col("action"))
    elif rating:
        cols.append(pl.lit(None, dtype=pl.Utf8).alias("action"))  # mapped from the rating by build_dataset
    else:
        cols.append(pl.lit("interact").alias("action"))
    cols.append(pl.col("rating").cast(pl.Float64) if rating else pl.lit(None, dtype=pl.Float64).alias("rating"))
    cols.append(pl.col("row").cast(pl.Int64))
    return df.select(cols)


# ============================================================================ MovieLens
def load_movielens_100k(
    directory: str | Path, *, on_bad_line: OnBadLine = "error", name: str = "ml-100k", encoding: str | None = None
) -> RawEvents:
    """MovieLens 100K directory: u.data (events), u.item + u.genre (titles, 19 genres) when present."""
    d = Path(directory)
    data = d / "u.data"
    if not data.is_file():
        raise FileNotFoundError(f"{data}: MovieLens 100K ratings file not found")
    drops: dict[str, int] = {}
    rd = _Reader(data, on_bad_line, drops, encoding=encoding)
    recs = _check_field_count(_records(data, rd, "\t"), rd, 4, "user, item, rating, timestamp")
    df = _columns_from_fields(recs, ["user", "item", "rating", "timestamp"])
    df = _typed(df, rd, {"user": "id", "item": "id", "rating": "float", "timestamp": "ts"})
    events = _events(df, timestamps=True, action=False, rating=True)
    files = [data]
    items = None
    if (d / "u.item").is_file():
        items, meta_files = _ml100k_items(d / "u.item", on_bad_line, drops, encoding)
        files += meta_files
    return RawEvents(events, items, files, drops, name)


def _movie_text(title: str, genres: list[str]) -> str:
    return f"{title}. Genres: {', '.join(genres)}" if genres else title


def _ml100k_items(
    path: Path, on_bad_line: str, drops: dict[str, int], encoding: str | None = None
) -> tuple[pl.DataFrame, list[Path]]:
    """u.item (`id|title|release|video|url|19 flags`); genre names from the sibling u.genre if any."""
    files = [path]
    genres = list(ML100K_GENRES)
    gpath = path.parent / "u.genre"
    if gpath.is_file():
        files.append(gpath)
        grd = _Reader(gpath, "error", drops, encoding=encoding)
        g = _check_field_count(_line_records(gpath, grd, "|"), grd, 2, "name|index")
        g = _typed(_columns_from_fields(g, ["name", "index"]), grd, {"name": "id", "index": "int"}).sort("index")
        genres = g["name"].to_list()
    n_fields = 5 + len(genres)
    rd = _Reader(path, on_bad_line, drops, encoding=encoding, legacy=MOVIELENS_LEGACY_ENCODING)
    recs = _check_field_count(_records(path, rd, "|"), rd, n_fields, f"id|title|release|video release|url|{len(genres)} genre flags")
    flags = pl.col("fields").list.slice(5)
    recs = recs.with_columns(flags.alias("flags"))
    bad = recs["flags"].list.eval(~pl.element().str.strip_chars().is_in(["0", "1"])).list.any()
    recs = rd.reject(recs, bad, "bad_genre_flags", lambda r: f"genre flags must be 0/1, got {r['flags']}")
    df = _typed(_columns_from_fields(recs, ["item", "title"]).with_columns(recs["flags"]), rd, {"item": "id", "title": "opt_str"})
    cats, texts = [], []
    for title, fl in zip(df["title"].to_list(), df["flags"].to_list()):
        g = [genres[j] for j, f in enumerate(fl) if f.strip() == "1"]
        cats.append(g)
        texts.append(_movie_text(title, g) if title else None)
    items = pl.DataFrame({"item": df["item"], "categories": pl.Series(cats, dtype=pl.List(pl.Utf8)), "text": pl.Series(texts, dtype=pl.Utf8)})
    return items, files


def load_movielens(
    ratings_path: str | Path,
    items_path: str | Path | None = None,
    *,
    on_bad_line: OnBadLine = "error",
    name: str | None = None,
    encoding: str | None = None,
) -> RawEvents:
    """MovieLens ratings.dat (1M / 10M, `::`-separated) or ratings.csv (20M / 25M / latest).

    items_path: movies.dat or movies.csv (titles and genres), optional.
    """
    path = Path(ratings_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MovieLens ratings file not found")
    drops: dict[str, int] = {}
    if path.suffix.lower() == ".csv":
        cols = ColumnMap(user="userId", item="movieId", rating="rating", timestamp="timestamp")
        raw = load_table(path, cols, on_bad_line=on_bad_line, name=name or path.parent.name, encoding=encoding)
        events, drops = raw.events, raw.drops
    else:
        rd = _Reader(path, on_bad_line, drops, encoding=encoding)
        recs = _check_field_count(_records(path, rd, "::"), rd, 4, "UserID::MovieID::Rating::Timestamp")
        df = _columns_from_fields(recs, ["user", "item", "rating", "timestamp"])
        df = _typed(df, rd, {"user": "id", "item": "id", "rating": "float", "timestamp": "ts"})
        events = _events(df, timestamps=True, action=False, rating=True)
    files = [path]
    items = None
    if items_path is not None:
        items, meta_files = load_item_metadata(items_path, on_bad_line=on_bad_line, drops=drops, encoding=encoding)
        files += meta_files
    return RawEvents(events, items, files, drops, name or path.parent.name)


def _movies_items(path: Path, on_bad_line: str, drops: dict[str, int], encoding: str | None = None) -> pl.DataFrame:
    """movies.dat (`MovieID::Title::Genres`, latin-1 in 1M) or movies.csv (`movieId,title,genres`, with header)."""
    csv_file = path.suffix.lower() == ".csv"
    rd = _Reader(path, on_bad_line, drops, encoding=encoding, legacy=None if csv_file else MOVIELENS_LEGACY_ENCODING)
    if csv_file:
        recs = _records(path, rd, ",")
        header = [h.strip() for h in recs["fields"][0]] if recs.height else []
        if header[:3] != ["movieId", "title", "genres"]:
            raise ValueError(f"{path}, line 1: expected the header movieId,title,genres, got {header}")
        recs = recs.slice(1)
        layout = "movieId,title,genres"
    else:
        recs = _records(path, rd, "::")
        layout = "MovieID::Title::Genres"
    recs = _check_field_count(recs, rd, 3, layout)
    df = _typed(_columns_from_fields(recs, ["item", "title", "genres"]), rd, {"item": "id", "title": "opt_str", "genres": "opt_str"})
    cats = (
        pl.when(pl.col("genres").is_null() | (pl.col("genres") == "(no genres listed)"))
        .then(pl.lit([], dtype=pl.List(pl.Utf8)))
        .otherwise(pl.col("genres").str.split("|"))
    )
    df = df.with_columns(cats.alias("categories"))
    texts = [_movie_text(t, g) if t else None for t, g in zip(df["title"].to_list(), df["categories"].to_list())]
    return df.select("item", "categories").with_columns(pl.Series("text", texts, dtype=pl.Utf8))


# ============================================================================ sequences and pairs
def load_sequences(
    path: str | Path,
    *,
    items_path: str | Path | None = None,
    item_text_path: str | Path | None = None,
    attribute_names_path: str | Path | None = None,
    ratings_path: str | Path | None = None,
    on_bad_line: OnBadLine = "error",
    name: str | None = None,
    encoding: str | None = None,
) -> RawEvents:
    """One user per line, `user item item ...` oldest first (S3-Rec/ICLRec, ml-1m_seq.txt).

    No timestamps: the order within a line is the event order. A user id appearing on several
    lines gets the lines' events concatenated in file order. A line with a user and no items is
    a bad line ("user ... has no items").
    items_path: `*_item2attributes.json`, an item text JSON, movies.dat, movies.csv or u.item
    (see load_item_metadata). item_text_path, attribute_names_path: see `_with_items`.
    ratings_path: the parallel ratings file (`user r1 r2 ...`, one line per non-blank line of
    this file, the same user and as many values as items; blank lines are skipped in both). A
    different number of lines, another user or another length on a line is always an error
    naming the ratings file, its line and both values. A rating that is not a number is a bad
    line of the ratings file (on_bad_line: error, or drop that event); 0 means unknown: the
    event is kept with action "interact" (counted as "<ratings file>:unknown_rating", logged).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sequence file not found")
    drops: dict[str, int] = {}
    rd = _Reader(path, on_bad_line, drops, encoding=encoding)
    recs = _records(path, rd, None)
    if ratings_path is not None:
        recs = _attach_ratings(recs, path, Path(ratings_path), on_bad_line, drops, encoding)
    recs = rd.reject(
        recs, recs["fields"].list.len() < 2, "empty_user", lambda r: f"user {r['fields'][0]!r} has no items"
    )
    cols = [pl.col("fields").list.first().alias("user"), pl.col("fields").list.slice(1).alias("item")]
    if ratings_path is None:
        df = recs.select("row", *cols).explode("item")
        df = _typed(df, rd, {"user": "id", "item": "id"})
        events = _events(df, timestamps=False, action=False, rating=False)
    else:
        df = recs.select("row", "rrow", *cols, pl.col("rvals").alias("rating")).explode(["item", "rating"])
        df = _typed(df, rd, {"user": "id", "item": "id"})
        events = _rated_events(df, Path(ratings_path), on_bad_line, drops)
    raw = _with_items(events, path, items_path, on_bad_line, drops, name, encoding, item_text_path, attribute_names_path)
    if ratings_path is not None:
        raw.source_files.insert(1, Path(ratings_path))
    return raw


def _attach_ratings(
    recs: pl.DataFrame, path: Path, rpath: Path, on_bad_line: str, drops: dict[str, int], encoding: str | None
) -> pl.DataFrame:
    """The sequence records with the ratings file's line number (rrow) and values (rvals)
    alongside; a mismatch in line count, user or line length raises, naming both files."""
    if not rpath.is_file():
        raise FileNotFoundError(f"{rpath}: ratings file not found")
    rrd = _Reader(rpath, on_bad_line, drops, encoding=encoding)
    rrecs = _records(rpath, rrd, None)
    n, m = recs.height, rrecs.height
    if n != m:
        k = min(n, m)
        where = (
            f"line {recs['row'][k]} of {path} has no ratings line" if n > m
            else f"its line {rrecs['row'][k]} has no line in {path}"
        )
        raise ValueError(
            f"{rpath}: {m} non-blank line(s), but the sequence file {path} has {n}; {where} "
            "(the ratings file needs one line `user r1 r2 ...` per sequence line)"
        )
    both = pl.DataFrame({
        "row": recs["row"], "rrow": rrecs["row"],
        "su": recs["fields"].list.first(), "ru": rrecs["fields"].list.first(),
        "sn": recs["fields"].list.len() - 1, "rn": rrecs["fields"].list.len() - 1,
    })
    other_user = both.filter(pl.col("su") != pl.col("ru"))
    if other_user.height:
        r = other_user.row(0, named=True)
        raise ValueError(
            f"{rpath}, line {r['rrow']}: user {r['ru']!r}, but line {r['row']} of {path} is user {r['su']!r} "
            f"({other_user.height} line(s) differ)"
        )
    other_len = both.filter(pl.col("sn") != pl.col("rn"))
    if other_len.height:
        r = other_len.row(0, named=True)
        raise ValueError(
            f"{rpath}, line {r['rrow']}: {r['rn']} rating(s) for user {r['ru']!r}, but line {r['row']} of {path} "
            f"has {r['sn']} item(s) ({other_len.height} line(s) differ in length)"
        )
    return recs.with_columns(rrecs["row"].alias("rrow"), rrecs["fields"].list.slice(1).alias("rvals"))


def _rated_events(df: pl.DataFrame, rpath: Path, on_bad_line: str, drops: dict[str, int]) -> pl.DataFrame:
    """Events of a sequence file with ratings: a non-number is a bad line of the ratings file;
    0 (unknown) -> action "interact" without a rating; other values -> mapped by build_dataset."""
    rrd = _Reader(rpath, on_bad_line, drops)
    df = df.rename({"row": "seq_row", "rrow": "row"})  # errors name the ratings file's line
    df = _typed(df, rrd, {"rating": "float"}).rename({"row": "rrow", "seq_row": "row"})
    unknown = pl.col("rating") == 0
    n_unknown = int(df.select(unknown.sum()).item() or 0)
    if n_unknown:
        key = f"{rpath.name}:unknown_rating"
        drops[key] = drops.get(key, 0) + n_unknown
        first = int(df.filter(unknown)["rrow"][0])
        log.warning("%s: %d rating(s) are 0 = unknown; those events are kept with action 'interact' (first: line %d)",
                    rpath, n_unknown, first)
    df = df.with_columns(
        pl.when(unknown).then(pl.lit("interact")).otherwise(pl.lit(None, dtype=pl.Utf8)).alias("action"),
        pl.when(unknown).then(pl.lit(None, dtype=pl.Float64)).otherwise(pl.col("rating")).alias("rating"),
    )
    return _events(df, timestamps=False, action=True, rating=True)


def load_pairs(
    path: str | Path,
    *,
    items_path: str | Path | None = None,
    item_text_path: str | Path | None = None,
    attribute_names_path: str | Path | None = None,
    on_bad_line: OnBadLine = "error",
    name: str | None = None,
    encoding: str | None = None,
) -> RawEvents:
    """SASRec's `user item` file (whitespace separated), one event per line; order = file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pairs file not found")
    drops: dict[str, int] = {}
    rd = _Reader(path, on_bad_line, drops, encoding=encoding)
    recs = _check_field_count(_records(path, rd, None), rd, 2, "user item")
    df = _typed(_columns_from_fields(recs, ["user", "item"]), rd, {"user": "id", "item": "id"})
    events = _events(df, timestamps=False, action=False, rating=False)
    return _with_items(events, path, items_path, on_bad_line, drops, name, encoding, item_text_path, attribute_names_path)


def _with_items(
    events: pl.DataFrame, path: Path, items_path: str | Path | None, on_bad_line: OnBadLine,
    drops: dict[str, int], name: str | None, encoding: str | None,
    item_text_path: str | Path | None = None, attribute_names_path: str | Path | None = None,
) -> RawEvents:
    """RawEvents of an order-only file, with item metadata when given.

    items_path: categories and text (load_item_metadata). attribute_names_path: names for the
    "attr:<id>" categories of an item2attributes items_path (`name_attributes`).
    item_text_path: an item text JSON (`load_item_text_json`) giving the text; its categories
    are used only without items_path (with one, items_path's categories are kept and items only
    in the JSON get none). Items of the log missing from the JSON get no text (None), counted as
    "<json file>:items_without_text" and logged.
    """
    files, items = [path], None
    if items_path is not None:
        items, meta_files = load_item_metadata(items_path, on_bad_line=on_bad_line, drops=drops, encoding=encoding)
        files += meta_files
    if attribute_names_path is not None:
        if items is None or not items["categories"].explode().drop_nulls().str.starts_with("attr:").any():
            raise ValueError(
                f"{attribute_names_path}: attribute names need an item2attributes file (\"attr:<id>\" categories) "
                f"as items_path, got {items_path}"
            )
        items = name_attributes(items, load_attribute_names(attribute_names_path, encoding=encoding), attribute_names_path)
        files.append(Path(attribute_names_path))
    if item_text_path is not None:
        tpath = Path(item_text_path)
        text = load_item_text_json(tpath, on_bad_line=on_bad_line, drops=drops, encoding=encoding)
        if items is None:
            items = text
        else:
            items = (
                items.select("item", "categories")
                .join(text.select("item", "text"), on="item", how="full", coalesce=True, maintain_order="left_right")
                .with_columns(pl.col("categories").fill_null(pl.lit([], dtype=pl.List(pl.Utf8))))
            )
        files.append(tpath)
        _count_items_without_text(events, text, tpath, drops)
    return RawEvents(events, items, files, drops, name or path.stem)


def _count_items_without_text(events: pl.DataFrame, text: pl.DataFrame, tpath: Path, drops: dict[str, int]) -> None:
    """Count and log the log's items that the item text JSON lacks (they get no text)."""
    missing = events.select(pl.col("item").unique(maintain_order=True)).join(text.select("item"), on="item", how="anti")
    if missing.height:
        key = f"{tpath.name}:items_without_text"
        drops[key] = drops.get(key, 0) + missing.height
        log.warning(
            "%s: %d item(s) of the log are not in the file and get no text (first: %s)",
            tpath, missing.height, missing["item"].head(5).to_list(),
        )


# ============================================================================ item metadata
def load_item_metadata(
    path: str | Path,
    *,
    columns: ItemColumnMap | None = None,
    on_bad_line: OnBadLine = "error",
    drops: dict[str, int] | None = None,
    encoding: str | None = None,
) -> tuple[pl.DataFrame, list[Path]]:
    """Item metadata (ITEM_SCHEMA frame) and the files read, by file type.

    `*.json` -> item2attributes (`{item: [ids]}`) or item text (`{item: {title, ...}}`, by the
    first value); `u.item` -> MovieLens 100K; `*.dat` -> movies.dat; `movies.csv` (without
    `columns`) -> MovieLens movies.csv; any other CSV/TSV/Parquet -> `load_item_table`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: item metadata file not found")
    drops = {} if drops is None else drops
    if path.suffix.lower() == ".json":
        obj = _read_json_object(path, encoding, "{item id: [attribute ids]} or {item id: {title, ...}}")
        if obj and isinstance(next(iter(obj.values())), dict):
            return load_item_text_json(path, on_bad_line=on_bad_line, drops=drops, obj=obj), [path]
        return _item2attributes(path, on_bad_line, drops, encoding, obj=obj), [path]
    if path.name == "u.item":
        return _ml100k_items(path, on_bad_line, drops, encoding)
    if path.suffix.lower() == ".dat" or (path.name.lower() == "movies.csv" and columns is None):
        return _movies_items(path, on_bad_line, drops, encoding), [path]
    table = load_item_table(path, columns or ItemColumnMap(), on_bad_line=on_bad_line, drops=drops, encoding=encoding)
    return table, [path]


def _read_json_object(path: Path, encoding: str | None, layout: str) -> dict:
    """A JSON file whose top level is an object; invalid JSON names the line."""
    try:
        obj = json.loads(read_text(path, encoding))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object {layout}, got {type(obj).__name__}")
    return obj


def _bad_item_key(rd: _Reader, key: str) -> bool:
    """An empty item id or a missing-value marker: raise, or count it and return True (skip)."""
    if not str(key).strip():
        return rd.fail(None, "an empty item id", "bad_item")
    if str(key).strip().lower() in MISSING_ID_MARKERS:
        return rd.fail(None, f"item id {key!r} is a missing-value marker, not an id", "bad_item")
    return False


def _item2attributes(
    path: Path, on_bad_line: str, drops: dict[str, int], encoding: str | None = None, obj: dict | None = None
) -> pl.DataFrame:
    """`{"item_id": [attribute_id, ...]}` -> categories "attr:<id>", text "attributes <id> <id> ..."."""
    if obj is None:
        obj = _read_json_object(path, encoding, "{item id: [attribute ids]}")
    rd = _Reader(path, on_bad_line, drops, unit="item")
    ids, cats, texts = [], [], []
    for key, attrs in obj.items():
        ok = isinstance(attrs, list) and all(
            (isinstance(a, int) and not isinstance(a, bool)) or (isinstance(a, str) and a.strip().lstrip("-").isdigit())
            for a in attrs
        )
        if _bad_item_key(rd, key):
            continue
        if not ok:
            rd.fail(None, f"item {key!r}: attributes must be a list of integers, got {attrs!r}", "bad_attributes")
            continue
        a = list(dict.fromkeys(str(int(x)) for x in attrs))  # distinct, first-seen order
        ids.append(str(key).strip())
        cats.append([f"attr:{x}" for x in a])
        texts.append("attributes " + " ".join(a) if a else None)
    return pl.DataFrame(
        {"item": pl.Series(ids, dtype=pl.Utf8), "categories": pl.Series(cats, dtype=pl.List(pl.Utf8)), "text": pl.Series(texts, dtype=pl.Utf8)}
    )


# item text JSON (Beauty_item_text.json): the fields read, and the template that renders them
ITEM_TEXT_FIELDS = ("title", "brand", "categories", "price")


def item_text_from_fields(
    title: str | None, brand: str | None, paths: list[list[str]], price: float | None
) -> str | None:
    """The item text of an item text JSON entry, fields in a fixed order, absent ones left out:

        "Title: <title>. Brand: <brand>. Categories: <a > b > c>. Price: $<price, 2 decimals>"

    Several category paths are joined with "; ". A value that already ends in ".", "!" or "?" gets
    no extra ".". None when every field is missing. E.g. "Title: OPI Nail Lacquer, Simmer and
    Shimmer, 0.5-Fluid Ounce. Brand: OPI. Categories: Beauty > Makeup > Nails > Nail Polish.
    Price: $12.00".
    """
    parts = []
    if title:
        parts.append(f"Title: {title}")
    if brand:
        parts.append(f"Brand: {brand}")
    if any(paths):
        parts.append("Categories: " + "; ".join(" > ".join(p) for p in paths if p))
    if price is not None:
        parts.append(f"Price: ${price:.2f}")
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out += (" " if out.endswith((".", "!", "?")) else ". ") + part
    return out


def item_text_categories(paths: list[list[str]]) -> list[str]:
    """The categories of an item text JSON entry: every level of its category path(s) below the
    root (the first name, e.g. "Beauty", which every item of an Amazon category file shares), in
    path order, distinct; a path that is only a root keeps it. For Beauty these are the
    category attributes of S3-Rec's Beauty_item2attributes.json (equal for 11,983 of the 12,101
    items; S3-Rec left out 33 rare names and adds the brand, which is not a category here)."""
    out: list[str] = []
    for p in paths:
        out += p[1:] if len(p) > 1 else p
    return list(dict.fromkeys(out))


def load_item_text_json(
    path: str | Path,
    *,
    on_bad_line: OnBadLine = "error",
    drops: dict[str, int] | None = None,
    encoding: str | None = None,
    obj: dict | None = None,
) -> pl.DataFrame:
    """Item text JSON -> ITEM_SCHEMA frame (text by `item_text_from_fields`, categories by
    `item_text_categories`).

    Layout: `{"<item id>": {"title": str|null, "brand": str|null, "categories": [names] (one
    path) | [[names], ...] (several) | null, "price": number|null, ...}}`; other keys (asin,
    sales_rank, ...) are ignored, empty strings count as missing. An entry that is not an
    object or a field of the wrong type is a bad item (on_bad_line), named with its id.
    """
    path = Path(path)
    drops = {} if drops is None else drops
    if obj is None:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: item text file not found")
        obj = _read_json_object(path, encoding, "{item id: {title, brand, categories, price}}")
    rd = _Reader(path, on_bad_line, drops, unit="item")
    ids, cats, texts = [], [], []
    n_no_title = 0
    for key, entry in obj.items():
        if _bad_item_key(rd, key):
            continue
        parsed = _item_text_entry(entry)
        if isinstance(parsed, str):
            rd.fail(None, f"item {key!r}: {parsed}", "bad_item_text")
            continue
        title, brand, paths, price = parsed
        n_no_title += title is None
        ids.append(str(key).strip())
        cats.append(item_text_categories(paths))
        texts.append(item_text_from_fields(title, brand, paths, price))
    if n_no_title:
        log.info("%s: %d of %d item(s) have no title", path, n_no_title, len(ids))
    return pl.DataFrame(
        {"item": pl.Series(ids, dtype=pl.Utf8), "categories": pl.Series(cats, dtype=pl.List(pl.Utf8)), "text": pl.Series(texts, dtype=pl.Utf8)}
    )


def _item_text_entry(entry) -> tuple[str | None, str | None, list[list[str]], float | None] | str:
    """(title, brand, category paths, price) of one entry, or what is wrong with it."""
    if not isinstance(entry, dict):
        return f"expected an object {{title, brand, categories, price}}, got {type(entry).__name__} {entry!r}"[:300]
    strs = {}
    for f in ("title", "brand"):
        v = entry.get(f)
        if v is not None and not isinstance(v, str):
            return f"field '{f}' must be a string or null, got {v!r}"
        strs[f] = v.strip() if isinstance(v, str) and v.strip() else None
    c = entry.get("categories")
    if c is None:
        paths = []
    elif isinstance(c, list) and all(isinstance(x, str) for x in c):
        paths = [c]
    elif isinstance(c, list) and all(isinstance(p, list) and all(isinstance(x, str) for x in p) for p in c):
        paths = c
    else:
        return f"field 'categories' must be a list of names or a list of such lists, got {c!r}"
    paths = [[x.strip() for x in p if x.strip()] for p in paths]
    price = entry.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price < 0:
            return f"field 'price' must be a non-negative number or null, got {price!r}"
        price = float(price)
    return strs["title"], strs["brand"], paths, price


def load_attribute_names(path: str | Path, *, encoding: str | None = None) -> dict[str, str]:
    """Attribute id -> name from `{"<attr id>": [{"type": ..., "name": ...}, ...] | "name"}`
    (Beauty_attribute_names.json); several names of one id are joined with " / ". A value of
    another shape is an error naming the file and the id."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: attribute names file not found")
    obj = _read_json_object(path, encoding, '{attribute id: [{"type", "name"}]}')
    names: dict[str, str] = {}
    for key, v in obj.items():
        if isinstance(v, str):
            got = [v]
        elif isinstance(v, list) and all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in v):
            got = [e["name"] for e in v]
        else:
            raise ValueError(f"{path}, attribute {key!r}: expected a name or a list of {{\"type\", \"name\"}}, got {v!r}")
        got = [g.strip() for g in got if g.strip()]
        if not str(key).strip().lstrip("-").isdigit():
            raise ValueError(f"{path}, attribute {key!r}: attribute ids are integers")
        if got:
            names[str(int(key))] = " / ".join(dict.fromkeys(got))
    return names


def name_attributes(items: pl.DataFrame, names: dict[str, str], source: str | Path = "attribute names") -> pl.DataFrame:
    """Replace the "attr:<id>" categories of `items` by `names[id]`; ids without a name keep
    "attr:<id>" (logged), and a name shared by several ids becomes "<name> (attr <id>)"
    for each of them, so the category sets stay exactly those of the attribute file."""
    by_name: dict[str, list[str]] = {}
    for k, v in names.items():
        by_name.setdefault(v, []).append(k)
    shared = {v for v, ks in by_name.items() if len(ks) > 1}
    if shared:
        log.warning("%s: %d name(s) belong to several attribute ids; those become '<name> (attr <id>)'", source, len(shared))
    used = {c for cs in items["categories"].to_list() for c in cs if c.startswith("attr:")}
    unnamed = sorted((c for c in used if c[len("attr:"):] not in names), key=lambda c: (len(c), c))
    if unnamed:
        log.warning("%s: %d attribute id(s) have no name and stay 'attr:<id>': %s", source, len(unnamed), unnamed[:10])
    mapping = {}
    for c in used:
        n = names.get(c[len("attr:"):])
        if n is not None:
            mapping[c] = f"{n} (attr {c[len('attr:'):]})" if n in shared else n
    return items.with_columns(pl.col("categories").list.eval(pl.element().replace(mapping)))


def load_item_table(
    path: str | Path,
    columns: ItemColumnMap | None = None,
    *,
    on_bad_line: OnBadLine = "error",
    drops: dict[str, int] | None = None,
    encoding: str | None = None,
) -> pl.DataFrame:
    """Generic item metadata table (CSV / TSV / Parquet) -> ITEM_SCHEMA frame."""
    path = Path(path)
    cm = columns or ItemColumnMap()
    drops = {} if drops is None else drops
    wanted = {"item": cm.item}
    if cm.categories:
        wanted["categories"] = cm.categories
    if cm.text:
        wanted["text"] = cm.text
    df, rd = _read_table(path, wanted, cm.separator, cm.has_header, cm.names, on_bad_line, drops, encoding)
    spec = {"item": "id"}
    if cm.text:
        spec["text"] = "opt_str"
    if "categories" in df.columns and df.schema["categories"] == pl.List(pl.Utf8):
        cats = pl.col("categories")
    elif cm.categories:
        spec["categories"] = "opt_str"
        cats = pl.col("categories").str.split(cm.category_separator)
    else:
        cats = pl.lit([], dtype=pl.List(pl.Utf8))
    df = _typed(df, rd, spec)
    cats = cats.list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != ""))
    out = df.select("item", pl.coalesce(cats, pl.lit([], dtype=pl.List(pl.Utf8))).alias("categories"))
    if cm.text:
        out = out.with_columns(df["text"])
    return conform_items(out)


# ============================================================================ generic tables
def _read_parquet(path: Path) -> pl.DataFrame:
    """pl.read_parquet, with a failure reported as the file not being a readable Parquet file."""
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e


def _read_table(
    path: Path,
    wanted: dict[str, str],
    separator: str,
    has_header: bool,
    names: list[str] | None,
    on_bad_line: str,
    drops: dict[str, int],
    encoding: str | None = None,
) -> tuple[pl.DataFrame, _Reader]:
    """Read the `wanted` columns (target name -> source column) as row + Utf8 columns.

    Parquet columns keep list types (categories); datetime columns become unix seconds.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: table not found")
    if path.suffix.lower() in (".parquet", ".pq"):
        rd = _Reader(path, on_bad_line, drops, unit="row")
        tbl = _read_parquet(path)
        missing = [src for src in wanted.values() if src not in tbl.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; columns are {tbl.columns}")
        cols = [pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("row")]
        for dst, src in wanted.items():
            dt = tbl.schema[src]
            if dt.is_temporal():
                cols.append(pl.col(src).cast(pl.Datetime("us")).dt.epoch("s").cast(pl.Utf8).alias(dst))
            elif isinstance(dt, pl.List):
                cols.append(pl.col(src).cast(pl.List(pl.Utf8)).alias(dst))
            elif dt.is_float() and dst == "timestamp":
                cols.append(
                    pl.when(pl.col(src) == pl.col(src).round()).then(pl.col(src).cast(pl.Int64, strict=False)).cast(pl.Utf8).alias(dst)
                )
            else:
                cols.append(pl.col(src).cast(pl.Utf8).alias(dst))
        return tbl.select(cols), rd
    rd = _Reader(path, on_bad_line, drops, encoding=encoding)
    recs = _records(path, rd, separator)
    if has_header:
        if recs.height == 0 or recs["row"][0] != 1:
            raise ValueError(f"{path}, line 1: expected a header line")
        header = [h.strip() for h in recs["fields"][0]]
        recs = recs.slice(1)
    else:
        if not names:
            raise ValueError(f"{path}: a file without a header needs the column names (names=[...])")
        header = list(names)
    missing = [src for src in wanted.values() if src not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns are {header}")
    recs = _check_field_count(recs, rd, len(header), separator.join(header))
    pos = {h: i for i, h in enumerate(header)}
    df = recs.select(
        "row", *[pl.col("fields").list.get(pos[src], null_on_oob=True).alias(dst) for dst, src in wanted.items()]
    )
    return df, rd


def load_table(
    path: str | Path,
    columns: ColumnMap | None = None,
    *,
    items_path: str | Path | None = None,
    item_columns: ItemColumnMap | None = None,
    on_bad_line: OnBadLine = "error",
    name: str | None = None,
    encoding: str | None = None,
) -> RawEvents:
    """Generic event table (CSV / TSV / Parquet) with a column mapping.

    Without an action column every event is "interact", or is mapped from the rating column by
    `RatingThresholds` in build_dataset. Item categories come either from a per-event
    `columns.category` (the distinct values per item, first-seen order) or from `items_path`
    (read by `load_item_metadata` with `item_columns`), not both.
    """
    path = Path(path)
    cm = columns or ColumnMap()
    if cm.category and items_path is not None:
        raise ValueError(f"{path}: give item categories either per event (columns.category) or in items_path, not both")
    drops: dict[str, int] = {}
    wanted = {"user": cm.user, "item": cm.item}
    spec = {"user": "id", "item": "id"}
    for dst, kind in (("timestamp", "ts"), ("action", "id"), ("rating", "float"), ("category", "opt_str")):
        src = getattr(cm, dst)
        if src:
            wanted[dst] = src
            spec[dst] = kind
    df, rd = _read_table(path, wanted, cm.separator, cm.has_header, cm.names, on_bad_line, drops, encoding)
    df = _typed(df, rd, spec, cm.timestamp_format)
    events = _events(df, timestamps=bool(cm.timestamp), action=bool(cm.action), rating=bool(cm.rating))
    files = [path]
    items = None
    if cm.category:
        items = (
            df.filter(pl.col("category").is_not_null())
            .group_by("item", maintain_order=True)
            .agg(pl.col("category").unique(maintain_order=True).alias("categories"))
        )
        items = conform_items(items)
    elif items_path is not None:
        items, meta_files = load_item_metadata(
            items_path, columns=item_columns, on_bad_line=on_bad_line, drops=drops, encoding=encoding
        )
        files += meta_files
    return RawEvents(events, items, files, drops, name or path.stem)


def load_taobao(
    path: str | Path, *, on_bad_line: OnBadLine = "error", name: str | None = None, encoding: str | None = None
) -> RawEvents:
    """Taobao UserBehavior.csv: `user,item,category,behavior,timestamp`, no header (Tianchi 649).

    Actions are the behaviours (pv, cart, fav, buy); categories come from the category column.
    """
    return load_table(path, TAOBAO_COLUMNS, on_bad_line=on_bad_line, name=name or "taobao", encoding=encoding)
