"""Loaders: every format on a tiny file written here, and the bad-input policy (error / drop)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import polars as pl
import pytest

from crbr.data.loaders import (
    ColumnMap,
    ItemColumnMap,
    load_item_metadata,
    load_movielens,
    load_movielens_100k,
    load_pairs,
    load_sequences,
    load_table,
    load_taobao,
)
from crbr.data.schema import EVENT_SCHEMA, ITEM_SCHEMA


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def ml100k_dir(tmp_path: Path, data: str | None = None, genre: bool = True) -> Path:
    d = tmp_path / "ml-100k"
    write(d / "u.data", data or "1\t10\t5\t881250949\n1\t20\t1\t881250950\n2\t10\t3\t881250951\n")
    flags_10 = "|".join(["0", "1", "0", "0", "0", "1"] + ["0"] * 13)  # Action, Comedy
    flags_20 = "|".join(["0"] * 18 + ["1"])  # Western
    write(
        d / "u.item",
        f"10|Les Misérables (1995)|01-Jan-1995||http://x|{flags_10}\n20|Western Movie (1990)|01-Jan-1990||http://y|{flags_20}\n",
        encoding="latin-1",
    )
    if genre:
        names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western"]  # fmt: skip
        write(d / "u.genre", "".join(f"{n}|{i}\n" for i, n in enumerate(names)) + "\n")
    return d


# ----------------------------------------------------------------------------- formats
def test_movielens_100k(tmp_path):
    raw = load_movielens_100k(ml100k_dir(tmp_path))
    ev = raw.events
    assert dict(ev.schema) == EVENT_SCHEMA
    assert ev["user"].to_list() == ["1", "1", "2"]
    assert ev["item"].to_list() == ["10", "20", "10"]
    assert ev["rating"].to_list() == [5.0, 1.0, 3.0]
    assert ev["timestamp"].to_list() == [881250949, 881250950, 881250951]
    assert ev["action"].null_count() == 3  # mapped from ratings by build_dataset
    assert ev["row"].to_list() == [1, 2, 3]
    items = raw.items.sort("item")
    assert dict(items.schema) == ITEM_SCHEMA
    assert items["categories"].to_list() == [["Action", "Comedy"], ["Western"]]
    assert items["text"][0] == "Les Misérables (1995). Genres: Action, Comedy"  # latin-1 decoded
    assert [p.name for p in raw.source_files] == ["u.data", "u.item", "u.genre"]
    assert raw.drops == {"u.genre:blank_line": 1}  # the trailing blank line, counted


def test_movielens_100k_without_genre_file_uses_fixed_names(tmp_path):
    raw = load_movielens_100k(ml100k_dir(tmp_path, genre=False))
    assert raw.items.sort("item")["categories"].to_list() == [["Action", "Comedy"], ["Western"]]


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_movielens_dat(tmp_path, encoding):
    r = write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::2::978302109\n2::1193::4::978298413\n")
    m = write(tmp_path / "movies.dat", "1193::Amélie (2001)::Comedy|Romance\n661::James (1996)::Animation\n", encoding)
    raw = load_movielens(r, m)
    assert raw.events["user"].to_list() == ["1", "1", "2"]
    assert raw.events["rating"].to_list() == [5.0, 2.0, 4.0]
    items = raw.items.sort("item")
    assert items["item"].to_list() == ["1193", "661"]
    assert items["categories"].to_list() == [["Comedy", "Romance"], ["Animation"]]
    assert items["text"][0] == "Amélie (2001). Genres: Comedy, Romance"


def test_movielens_csv_with_quoted_titles(tmp_path):
    r = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,0.5,964981247\n")
    m = write(
        tmp_path / "movies.csv",
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"American President, The (1995)",(no genres listed)\n',
    )
    raw = load_movielens(r, m)
    assert raw.events["rating"].to_list() == [4.0, 0.5]
    assert raw.events["row"].to_list() == [2, 3]  # line numbers (line 1 is the header)
    items = raw.items.sort("item")
    assert items["text"].to_list() == ["Toy Story (1995). Genres: Adventure, Animation", "American President, The (1995)"]
    assert items["categories"].to_list() == [["Adventure", "Animation"], []]


def test_sequences_with_item2attributes(tmp_path):
    seq = write(tmp_path / "Beauty.txt", "1 5 3 5\n2  7\t3 \n")
    attrs = write(tmp_path / "Beauty_item2attributes.json", json.dumps({"5": [12, 45, 12], "3": [7], "7": []}))
    raw = load_sequences(seq, items_path=attrs)
    ev = raw.events
    assert ev["user"].to_list() == ["1", "1", "1", "2", "2"]
    assert ev["item"].to_list() == ["5", "3", "5", "7", "3"]  # file order, repeats kept
    assert ev["row"].to_list() == [1, 1, 1, 2, 2]
    assert ev["timestamp"].null_count() == 5 and set(ev["action"]) == {"interact"}
    items = {r["item"]: r for r in raw.items.iter_rows(named=True)}
    assert items["5"]["categories"] == ["attr:12", "attr:45"]
    assert items["5"]["text"] == "attributes 12 45"
    assert items["7"]["categories"] == [] and items["7"]["text"] is None
    assert raw.name == "Beauty"


def test_sequences_with_movies_dat(tmp_path):
    seq = write(tmp_path / "ml-1m_seq.txt", "1 3186 1721\n")
    m = write(tmp_path / "movies.dat", "3186::Girl, Interrupted (1999)::Drama\n1721::Titanic (1997)::Drama|Romance\n", "latin-1")
    raw = load_sequences(seq, items_path=m)
    assert raw.events["item"].to_list() == ["3186", "1721"]
    assert set(raw.items["item"]) == {"3186", "1721"}


def test_pairs(tmp_path):
    raw = load_pairs(write(tmp_path / "ml.txt", "1 10\n2 11\n1 12\n"))
    assert raw.events["user"].to_list() == ["1", "2", "1"]
    assert raw.events["item"].to_list() == ["10", "11", "12"]
    assert raw.events["row"].to_list() == [1, 2, 3]


def test_pairs_with_item_text_json(tmp_path):
    text = {"10": {"title": "Ten", "brand": "B", "categories": ["Root", "A"], "price": 1}, "11": {"title": None}}
    meta = write(tmp_path / "item_text.json", json.dumps(text))
    raw = load_pairs(write(tmp_path / "ml.txt", "1 10\n2 11\n1 12\n"), item_text_path=meta)
    items = {r["item"]: r for r in raw.items.iter_rows(named=True)}
    assert items["10"]["text"] == "Title: Ten. Brand: B. Categories: Root > A. Price: $1.00"
    assert items["10"]["categories"] == ["A"]
    assert items["11"]["text"] is None and items["11"]["categories"] == []
    assert raw.drops == {"item_text.json:items_without_text": 1}  # item 12


def test_table_csv_with_item_table(tmp_path):
    ev = write(tmp_path / "log.csv", "uid,sku,when,kind\nu1,a,100,click\nu2,b,101,purchase\nu1,b,102,skip\n")
    it = write(tmp_path / "items.tsv", "sku\tcats\ttitle\na\tx; y\tItem A\nb\t\tItem B\n")
    raw = load_table(
        ev,
        ColumnMap(user="uid", item="sku", timestamp="when", action="kind"),
        items_path=it,
        item_columns=ItemColumnMap(item="sku", categories="cats", category_separator=";", text="title", separator="\t"),
    )
    assert raw.events["action"].to_list() == ["click", "purchase", "skip"]
    assert raw.events["timestamp"].to_list() == [100, 101, 102]
    items = raw.items.sort("item")
    assert items["categories"].to_list() == [["x", "y"], []]
    assert items["text"].to_list() == ["Item A", "Item B"]


def test_table_parquet_with_datetimes_and_rating(tmp_path):
    p = tmp_path / "log.parquet"
    pl.DataFrame(
        {
            "user": [1, 2],
            "item": [10, 20],
            "ts": [dt.datetime(2020, 1, 1, 0, 0, 1), dt.datetime(2020, 1, 1, 0, 0, 2)],
            "stars": [5, 1],
        }
    ).write_parquet(p)
    raw = load_table(p, ColumnMap(timestamp="ts", rating="stars"))
    assert raw.events["user"].to_list() == ["1", "2"]
    assert raw.events["timestamp"].to_list() == [1577836801, 1577836802]
    assert raw.events["rating"].to_list() == [5.0, 1.0]
    assert raw.events["action"].null_count() == 2


def test_table_timestamp_format(tmp_path):
    p = write(tmp_path / "log.csv", "user,item,time\n1,2,2020-01-01 00:00:05\n")
    raw = load_table(p, ColumnMap(timestamp="time", timestamp_format="%Y-%m-%d %H:%M:%S"))
    assert raw.events["timestamp"].to_list() == [1577836805]


def test_taobao(tmp_path):
    p = write(tmp_path / "UserBehavior.csv", "1,2268318,2520377,pv,1511544070\n1,2333346,2520771,buy,1511561733\n2,2268318,2520377,fav,1511572885\n")
    raw = load_taobao(p)
    assert raw.events["action"].to_list() == ["pv", "buy", "fav"]
    assert raw.events["timestamp"].to_list() == [1511544070, 1511561733, 1511572885]
    items = raw.items.sort("item")
    assert items["item"].to_list() == ["2268318", "2333346"]
    assert items["categories"].to_list() == [["2520377"], ["2520771"]]


# ----------------------------------------------------------------------------- bad input
BAD_CASES = [
    # (file name, content, loader, reason key, expected message pieces, good events left)
    ("u.data", "1\t10\t5\t881250949\n1\t20\t5\n2\t10\t3\t881250951\n", "ml100k", "bad_field_count", ["line 2", "expected 4 fields"], 2),
    ("u.data", "1\t10\t5\t881250949\n1\t20\t5\t88125x\n", "ml100k", "bad_timestamp", ["line 2", "'timestamp'", "88125x"], 1),
    ("u.data", "1\t10\tfive\t881250949\n1\t20\t5\t881250950\n", "ml100k", "bad_rating", ["line 1", "'rating'", "five"], 1),
    ("ratings.dat", "1::10::5::978300760\n::10::5::978300761\n", "dat", "empty_user", ["line 2", "'user'"], 1),
    ("Beauty.txt", "1 2 3\n7\n8 9\n", "seq", "empty_user", ["line 2", "user '7' has no items"], 3),
    ("pairs.txt", "1 2\n1 2 3\n", "pairs", "bad_field_count", ["line 2", "expected 2 fields"], 1),
    ("log.csv", 'user,item,timestamp\n1,"a\nb",5\n2,c,notatime\n', "csv", "bad_timestamp", ["line 4", "'timestamp'"], 1),
]


def _load(kind: str, path: Path, policy: str):
    if kind == "ml100k":
        return load_movielens_100k(path.parent, on_bad_line=policy)
    if kind == "dat":
        return load_movielens(path, on_bad_line=policy)
    if kind == "seq":
        return load_sequences(path, on_bad_line=policy)
    if kind == "pairs":
        return load_pairs(path, on_bad_line=policy)
    return load_table(path, ColumnMap(timestamp="timestamp"), on_bad_line=policy)


@pytest.mark.parametrize("fname,content,kind,reason,pieces,left", BAD_CASES)
def test_bad_line_error_names_file_and_line(tmp_path, fname, content, kind, reason, pieces, left):
    path = write(tmp_path / "d" / fname, content)
    with pytest.raises(ValueError) as e:
        _load(kind, path, "error")
    msg = str(e.value)
    assert str(path) in msg
    for p in pieces:
        assert p in msg, msg


@pytest.mark.parametrize("fname,content,kind,reason,pieces,left", BAD_CASES)
def test_bad_line_drop_counts_and_logs(tmp_path, caplog, fname, content, kind, reason, pieces, left):
    path = write(tmp_path / "d" / fname, content)
    with caplog.at_level(logging.WARNING, logger="crbr.data"):
        raw = _load(kind, path, "drop")
    assert raw.drops == {f"{fname}:{reason}": 1}
    assert raw.events.height == left
    assert any(fname in r.getMessage() and reason in r.getMessage() for r in caplog.records)


def test_quoted_multiline_field_keeps_line_numbers(tmp_path):
    path = write(tmp_path / "log.csv", 'user,item,note\n1,a,"two\nlines"\n2,b,x\n')
    raw = load_table(path, ColumnMap())
    assert raw.events["row"].to_list() == [2, 4]


def test_blank_lines_are_counted_in_both_modes(tmp_path):
    path = write(tmp_path / "pairs.txt", "1 2\n\n  \n1 3\n")
    for policy in ("error", "drop"):
        raw = load_pairs(path, on_bad_line=policy)
        assert raw.events["item"].to_list() == ["2", "3"]
        assert raw.events["row"].to_list() == [1, 4]
        assert raw.drops == {"pairs.txt:blank_line": 2}


def test_missing_column_and_header_errors(tmp_path):
    p = write(tmp_path / "log.csv", "user,product\n1,2\n")
    with pytest.raises(ValueError, match=r"log.csv: missing column\(s\) \['item'\]"):
        load_table(p, ColumnMap())
    p2 = write(tmp_path / "nohdr.csv", "1,2\n")
    with pytest.raises(ValueError, match="needs the column names"):
        load_table(p2, ColumnMap(has_header=False))
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        load_table(tmp_path / "nothere.csv", ColumnMap())
    with pytest.raises(ValueError, match="on_bad_line"):
        load_pairs(write(tmp_path / "p.txt", "1 2\n"), on_bad_line="ignore")


def test_item_metadata_bad_rows(tmp_path):
    bad_json = write(tmp_path / "x_item2attributes.json", json.dumps({"1": [1, 2], "2": "oops"}))
    with pytest.raises(ValueError, match=r"x_item2attributes.json: item '2': attributes must be a list of integers"):
        load_item_metadata(bad_json)
    drops: dict[str, int] = {}
    items, _ = load_item_metadata(bad_json, on_bad_line="drop", drops=drops)
    assert items["item"].to_list() == ["1"] and drops == {"x_item2attributes.json:bad_attributes": 1}
    broken = write(tmp_path / "y_item2attributes.json", '{"1": [1,\n 2')
    with pytest.raises(ValueError, match=r"y_item2attributes.json, line 2: invalid JSON"):
        load_item_metadata(broken)
    movies = write(tmp_path / "movies.dat", "1::Toy Story (1995)::Animation\n2::Broken\n")
    with pytest.raises(ValueError, match=r"movies.dat, line 2: expected 3 fields"):
        load_item_metadata(movies)
    d = ml100k_dir(tmp_path)
    write(d / "u.item", "10|T|d||u|" + "|".join(["0"] * 18 + ["2"]) + "\n", "latin-1")
    with pytest.raises(ValueError, match=r"u.item, line 1: genre flags must be 0/1"):
        load_movielens_100k(d)
