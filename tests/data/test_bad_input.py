"""Loaders on input that used to pass silently with wrong results: undecodable bytes, ids that are
missing-value markers, negative timestamps, unreadable Parquet files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import pytest

from crbr.data.loaders import (
    ColumnMap,
    ItemColumnMap,
    load_item_metadata,
    load_item_table,
    load_movielens,
    load_movielens_100k,
    load_pairs,
    load_sequences,
    load_table,
    load_taobao,
)


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))


# ----------------------------------------------------------------------------- encoding
BROKEN_UTF8 = "u1 café\nu2 naïve\n".encode() + b"u3 caf\xe9\n"  # one latin-1 byte in a UTF-8 file
BAD_OFFSET = len("u1 café\nu2 naïve\nu3 caf".encode())


@pytest.mark.parametrize("loader", ["pairs", "sequences", "table"])
def test_invalid_utf8_byte_is_an_error_naming_file_line_and_offset(tmp_path, loader):
    data = BROKEN_UTF8 if loader != "table" else b"user,item\n" + BROKEN_UTF8.replace(b" ", b",")
    offset = BAD_OFFSET + (len(b"user,item\n") if loader == "table" else 0)
    line = 3 + (loader == "table")
    path = write_bytes(tmp_path / "log.txt", data)
    load = {"pairs": load_pairs, "sequences": load_sequences, "table": lambda p: load_table(p, ColumnMap())}[loader]
    with pytest.raises(ValueError) as e:
        load(path)
    msg = str(e.value)
    assert str(path) in msg and f"line {line}" in msg and f"byte offset {offset}" in msg and "0xe9" in msg, msg
    assert "encoding" in msg  # says how to read a file in another encoding


def test_valid_utf8_ids_are_kept(tmp_path):
    raw = load_pairs(write(tmp_path / "p.txt", "u1 café\nu2 naïve\n"))
    assert raw.events["item"].to_list() == ["café", "naïve"]


def test_explicit_encoding_is_used(tmp_path):
    latin = write(tmp_path / "latin.txt", "u1 café\nu2 Straße\n", "latin-1")
    assert load_pairs(latin, encoding="latin-1").events["item"].to_list() == ["café", "Straße"]
    cp = write(tmp_path / "cp.csv", "user,item\nu1,“quoted”\n", "cp1252")
    assert load_table(cp, ColumnMap(), encoding="cp1252").events["item"].to_list() == ["“quoted”"]
    with pytest.raises(ValueError, match=r"latin.txt, line 1: byte 0xe9 at byte offset 6 is not valid ascii"):
        load_pairs(latin, encoding="ascii")
    with pytest.raises(ValueError, match="unknown encoding 'klingon'"):
        load_pairs(latin, encoding="klingon")


def test_explicit_encoding_reaches_the_item_metadata(tmp_path):
    seq = write(tmp_path / "s.txt", "1 5\n")
    attrs = write(tmp_path / "s_item2attributes.json", json.dumps({"5": [1]}))
    items = write(tmp_path / "items.csv", "item,title\n5,Crème\n", "latin-1")
    assert load_sequences(seq, items_path=attrs, encoding="latin-1").items["item"].to_list() == ["5"]
    events = write(tmp_path / "e.csv", "user,item\n1,5\n")
    raw = load_table(events, items_path=items, item_columns=ItemColumnMap(text="title"), encoding="latin-1")
    assert raw.items["text"].to_list() == ["Crème"]
    with pytest.raises(ValueError, match=r"items.csv, line 2: byte 0xe8"):
        load_item_table(items, ItemColumnMap(text="title"))


def test_movielens_title_files_read_as_latin1_only_without_any_utf8(tmp_path):
    r = write(tmp_path / "ratings.dat", "1::1::5::978300760\n")
    mixed = write_bytes(tmp_path / "movies.dat", "1::Amélie (2001)::Comedy\n".encode() + b"2::Caf\xe9 (1990)::Drama\n")
    with pytest.raises(ValueError, match=r"movies.dat, line 2: byte 0xe9 at byte offset"):
        load_movielens(r, mixed)
    assert load_movielens(r, mixed, encoding="latin-1").items.sort("item")["text"][0] == "AmÃ©lie (2001). Genres: Comedy"
    d = tmp_path / "ml-100k"
    write(d / "u.data", "1\t10\t5\t881250949\n")
    write(d / "u.item", "10|Café (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 18 + ["1"]) + "\n")  # UTF-8
    assert load_movielens_100k(d).items["text"].to_list() == ["Café (1995). Genres: Western"]  # not CafÃ©


def test_explicit_utf8_forbids_the_movielens_latin1_reading(tmp_path):
    d = tmp_path / "ml-100k"
    write(d / "u.data", "1\t10\t5\t881250949\n")
    write(d / "u.item", "10|Café|d||u|" + "|".join(["0"] * 19) + "\n", "latin-1")
    assert load_movielens_100k(d).items["text"].to_list() == ["Café"]  # the release's own encoding
    with pytest.raises(ValueError, match=r"u.item, line 1: byte 0xe9 at byte offset 6 is not valid utf-8"):
        load_movielens_100k(d, encoding="utf-8")


# ----------------------------------------------------------------------------- missing-value ids
NAN_CASES = [
    # (file name, content, loader, where, left after a drop)
    ("pairs.txt", "1 10\n2 NaN\n3 11\n", "pairs", "line 2", 2),
    ("Beauty.txt", "1 5 nan 3\n2 4\n", "seq", "line 1", 3),
    ("log.csv", "user,item\nu1,a\nu2,NaN\n", "csv", "line 3", 1),
    ("log.csv", "user,item\nu1,a\nu2,<NA>\n", "csv", "line 3", 1),
    ("log.csv", "user,item\nu1,a\nu2,None\n", "csv", "line 3", 1),
    ("ratings.dat", "1::10::5::978300760\n1::NAN::4::978300761\n", "dat", "line 2", 1),
    ("u.data", "1\t10\t5\t881250949\n2\tnull\t3\t881250951\n", "ml100k", "line 2", 1),
    ("UserBehavior.csv", "1,2268318,2520377,pv,1511544070\n1,NaN,2520377,pv,1511544071\n", "taobao", "line 2", 1),
]


def _load(kind: str, path: Path, policy: str):
    if kind == "pairs":
        return load_pairs(path, on_bad_line=policy)
    if kind == "seq":
        return load_sequences(path, on_bad_line=policy)
    if kind == "dat":
        return load_movielens(path, on_bad_line=policy)
    if kind == "ml100k":
        return load_movielens_100k(path.parent, on_bad_line=policy)
    if kind == "taobao":
        return load_taobao(path, on_bad_line=policy)
    return load_table(path, ColumnMap(), on_bad_line=policy)


@pytest.mark.parametrize("fname,content,kind,where,left", NAN_CASES)
def test_missing_value_item_id_is_a_bad_line(tmp_path, caplog, fname, content, kind, where, left):
    path = write(tmp_path / "d" / fname, content)
    with pytest.raises(ValueError) as e:
        _load(kind, path, "error")
    msg = str(e.value)
    assert str(path) in msg and where in msg and "field 'item'" in msg and "missing-value marker" in msg, msg
    with caplog.at_level(logging.WARNING, logger="crbr.data"):
        raw = _load(kind, path, "drop")
    assert raw.drops == {f"{fname}:bad_item": 1}
    assert raw.events.height == left
    assert any("bad_item" in r.getMessage() for r in caplog.records)


def test_ids_that_only_contain_nan_are_kept(tmp_path):
    raw = load_pairs(write(tmp_path / "p.txt", "nano NaNa\nNone1 0nan\n"))
    assert raw.events["item"].to_list() == ["NaNa", "0nan"] and raw.events["user"].to_list() == ["nano", "None1"]


def test_parquet_float_nan_and_null_ids_are_bad_rows(tmp_path):
    p = tmp_path / "log.parquet"
    pl.DataFrame({"user": ["a", "b", "c"], "item": [1.5, float("nan"), 2.0]}).write_parquet(p)
    with pytest.raises(ValueError, match=r"log.parquet, row 2: field 'item' is 'NaN', a missing-value marker"):
        load_table(p, ColumnMap())
    pl.DataFrame({"user": ["a", None], "item": ["x", "y"]}).write_parquet(p)
    with pytest.raises(ValueError, match=r"log.parquet, row 2: field 'user' is empty"):
        load_table(p, ColumnMap())


def test_missing_value_item_in_item_metadata(tmp_path):
    attrs = write(tmp_path / "x_item2attributes.json", json.dumps({"1": [1], "NaN": [2]}))
    with pytest.raises(ValueError, match=r"x_item2attributes.json: item id 'NaN' is a missing-value marker"):
        load_item_metadata(attrs)
    table = write(tmp_path / "items.csv", "item,title\n1,A\nnan,B\n")
    with pytest.raises(ValueError, match=r"items.csv, line 3: field 'item' is 'nan'"):
        load_item_metadata(table, columns=ItemColumnMap(text="title"))


# ----------------------------------------------------------------------------- negative timestamps
NEG_TS = [
    ("u.data", "1\t10\t5\t881250949\n1\t20\t5\t-1\n", "ml100k", "line 2", "'-1'"),
    ("ratings.dat", "1::10::5::-978300760\n1::11::5::978300761\n", "dat", "line 1", "'-978300760'"),
    ("log.csv", "user,item,timestamp\n1,a,5\n2,b,-5\n", "csv_ts", "line 3", "'-5'"),
]


@pytest.mark.parametrize("fname,content,kind,where,value", NEG_TS)
def test_negative_timestamp_is_a_bad_line(tmp_path, fname, content, kind, where, value):
    path = write(tmp_path / "d" / fname, content)

    def load(policy):
        if kind == "csv_ts":
            return load_table(path, ColumnMap(timestamp="timestamp"), on_bad_line=policy)
        return _load(kind, path, policy)

    with pytest.raises(ValueError) as e:
        load("error")
    msg = str(e.value)
    assert str(path) in msg and where in msg and "field 'timestamp'" in msg and value in msg and "negative" in msg, msg
    raw = load("drop")
    assert raw.drops == {f"{fname}:negative_timestamp": 1} and raw.events.height == 1
    assert (raw.events["timestamp"] >= 0).all()


def test_datetime_before_1970_and_parquet_negative_timestamps(tmp_path):
    p = write(tmp_path / "log.csv", "user,item,time\n1,2,2020-01-01 00:00:05\n1,3,1969-12-31 23:59:59\n")
    with pytest.raises(ValueError, match=r"log.csv, line 3: field 'timestamp' is '1969-12-31 23:59:59': unix time -1 is negative"):
        load_table(p, ColumnMap(timestamp="time", timestamp_format="%Y-%m-%d %H:%M:%S"))
    q = tmp_path / "log.parquet"
    pl.DataFrame({"user": [1, 2], "item": [3, 4], "ts": [10, -1]}).write_parquet(q)
    with pytest.raises(ValueError, match=r"log.parquet, row 2: field 'timestamp' is '-1': unix time -1 is negative"):
        load_table(q, ColumnMap(timestamp="ts"))
    assert load_table(q, ColumnMap(timestamp="ts"), on_bad_line="drop").events["timestamp"].to_list() == [10]


# ----------------------------------------------------------------------------- unreadable files
@pytest.mark.parametrize("content", [b"", b"PAR1 not really parquet", b"user,item\n1,2\n"])
def test_corrupt_parquet_names_the_file(tmp_path, content):
    p = write_bytes(tmp_path / "events.parquet", content)
    with pytest.raises(ValueError, match=r"events.parquet: not a readable Parquet file"):
        load_table(p, ColumnMap())
    with pytest.raises(ValueError, match=r"events.parquet: not a readable Parquet file"):
        load_item_metadata(p)


def test_truncated_parquet_names_the_file(tmp_path):
    good = tmp_path / "good.parquet"
    pl.DataFrame({"user": [str(i) for i in range(500)], "item": list(range(500))}).write_parquet(good)
    data = good.read_bytes()
    p = write_bytes(tmp_path / "cut.parquet", data[: len(data) // 2] + data[-8:])
    with pytest.raises(ValueError, match=r"cut.parquet: not a readable Parquet file"):
        load_table(p, ColumnMap())


def test_wrong_columns_are_named(tmp_path):
    c = write(tmp_path / "log.csv", "uid,sku\n1,2\n")
    with pytest.raises(ValueError, match=r"log.csv: missing column\(s\) \['user', 'item'\]; columns are \['uid', 'sku'\]"):
        load_table(c, ColumnMap())
    q = tmp_path / "log.parquet"
    pl.DataFrame({"uid": [1], "sku": [2]}).write_parquet(q)
    with pytest.raises(ValueError, match=r"log.parquet: missing column\(s\) \['item'\]; columns are \['uid', 'sku'\]"):
        load_table(q, ColumnMap(user="uid"))
