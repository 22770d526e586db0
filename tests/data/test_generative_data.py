"""The data the generative path needs: item text JSON, attribute names, LETTER semantic IDs, the
parallel ratings file of the sequence format, the presets that read them; the shared real files
when present."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from crbr.data.loaders import (item_text_from_fields, load_attribute_names, load_item_metadata, load_item_text_json,
                               load_sequences, name_attributes)
from crbr.data.prepare import DataConfig, cache_key, load_raw, prepare
from crbr.data.preprocess import build_dataset
from crbr.data.semantic_ids_io import load_letter_semantic_ids

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


ITEM_TEXT = {
    "1": {"asin": "A1", "title": "OPI Nail Lacquer", "brand": "OPI", "categories": ["Beauty", "Makeup", "Nails"],
          "price": 12.0, "sales_rank": 5.0},
    "2": {"asin": "A2", "title": "Shampoo No. 5.", "brand": None, "categories": ["Beauty", "Hair Care"], "price": None},
    "3": {"asin": "A3", "title": None, "brand": "Acme", "categories": [["Beauty", "Skin Care"], ["Beauty", "Bath & Body"]],
          "price": 3.5},
}


def beauty_files(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "Beauty"
    return {
        "seq": write(d / "Beauty.txt", "1 1 2 4\n2 3 1\n"),
        "text": write(d / "Beauty_item_text.json", json.dumps(ITEM_TEXT)),
        "attrs": write(d / "Beauty_item2attributes.json", json.dumps({"1": [1, 2, 7], "2": [4], "3": [9], "4": [2]})),
        "names": write(d / "Beauty_attribute_names.json", json.dumps(
            {"1": [{"type": "category", "name": "Makeup"}], "2": [{"type": "category", "name": "Nails"}],
             "4": [{"type": "category", "name": "Hair Care"}], "7": [{"type": "brand", "name": "OPI"}]})),
    }


# ----------------------------------------------------------------------------- item text JSON
def test_item_text_template():
    assert item_text_from_fields("A", "B", [["x", "y", "z"]], 3.0) == "Title: A. Brand: B. Categories: x > y > z. Price: $3.00"
    assert item_text_from_fields("Ends here.", None, [], 12.345) == "Title: Ends here. Price: $12.35"
    assert item_text_from_fields(None, None, [["a"], ["b", "c"]], None) == "Categories: a; b > c"
    assert item_text_from_fields(None, None, [], None) is None


def test_item_text_json_gives_text_and_categories(tmp_path, caplog):
    f = beauty_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="crbr.data"):
        raw = load_sequences(f["seq"], item_text_path=f["text"])
    items = {r["item"]: r for r in raw.items.iter_rows(named=True)}
    assert items["1"]["text"] == "Title: OPI Nail Lacquer. Brand: OPI. Categories: Beauty > Makeup > Nails. Price: $12.00"
    assert items["2"]["text"] == "Title: Shampoo No. 5. Categories: Beauty > Hair Care"
    assert items["3"]["text"] == "Brand: Acme. Categories: Beauty > Skin Care; Beauty > Bath & Body. Price: $3.50"
    # every level below the shared root, in path order, distinct
    assert items["1"]["categories"] == ["Makeup", "Nails"]
    assert items["3"]["categories"] == ["Skin Care", "Bath & Body"]
    assert "4" not in items  # not in the JSON: no text, counted and logged
    assert raw.drops == {"Beauty_item_text.json:items_without_text": 1}
    assert any("Beauty_item_text.json" in r.getMessage() and "no text" in r.getMessage() for r in caplog.records)
    assert raw.source_files == [f["seq"], f["text"]]
    ds = build_dataset(raw)
    assert ds.item_text[list(ds.item_ids).index("4")] is None
    # the same file as items_path is recognised by its layout
    meta, files = load_item_metadata(f["text"])
    assert meta.sort("item").equals(load_item_text_json(f["text"]).sort("item")) and files == [f["text"]]


def test_item_text_with_named_attribute_categories(tmp_path):
    f = beauty_files(tmp_path)
    raw = load_sequences(f["seq"], items_path=f["attrs"], item_text_path=f["text"], attribute_names_path=f["names"])
    items = {r["item"]: r for r in raw.items.iter_rows(named=True)}
    # categories: the attribute file's sets, named where a name exists; text: the JSON's
    assert items["1"]["categories"] == ["Makeup", "Nails", "OPI"]
    assert items["3"]["categories"] == ["attr:9"]
    assert items["4"]["categories"] == ["Nails"] and items["4"]["text"] is None
    assert items["1"]["text"].startswith("Title: OPI Nail Lacquer")
    assert raw.drops == {"Beauty_item_text.json:items_without_text": 1}
    plain = load_sequences(f["seq"], items_path=f["attrs"], item_text_path=f["text"])
    assert {r["item"]: r["categories"] for r in plain.items.iter_rows(named=True)}["1"] == ["attr:1", "attr:2", "attr:7"]
    with pytest.raises(ValueError, match="Beauty_attribute_names.json: attribute names need an item2attributes"):
        load_sequences(f["seq"], item_text_path=f["text"], attribute_names_path=f["names"])


def test_attribute_names_shared_and_missing(tmp_path):
    names = load_attribute_names(write(tmp_path / "n.json", json.dumps(
        {"1": [{"type": "brand", "name": "Acme"}], "2": [{"type": "category", "name": "Acme"}], "3": "Soap", "4": []})))
    assert names == {"1": "Acme", "2": "Acme", "3": "Soap"}
    items = pl.DataFrame({"item": ["a", "b"], "categories": [["attr:1", "attr:3"], ["attr:2", "attr:9"]]})
    named = name_attributes(items, names)
    assert named["categories"].to_list() == [["Acme (attr 1)", "Soap"], ["Acme (attr 2)", "attr:9"]]
    with pytest.raises(ValueError, match=r"bad.json, attribute '1': expected a name"):
        load_attribute_names(write(tmp_path / "bad.json", json.dumps({"1": 5})))


def test_item_text_bad_entries(tmp_path):
    bad = write(tmp_path / "t.json", json.dumps({"1": {"title": "ok"}, "2": {"title": 5}, "3": ["x"], "4": {"price": "cheap"}}))
    with pytest.raises(ValueError, match=r"t.json: item '2': field 'title' must be a string or null"):
        load_item_text_json(bad)
    drops: dict[str, int] = {}
    items = load_item_text_json(bad, on_bad_line="drop", drops=drops)
    assert items["item"].to_list() == ["1"] and drops == {"t.json:bad_item_text": 3}
    with pytest.raises(ValueError, match=r"t2.json: item '1': field 'categories' must be a list"):
        load_item_text_json(write(tmp_path / "t2.json", json.dumps({"1": {"categories": "a > b"}})))


# ----------------------------------------------------------------------------- LETTER semantic IDs
def test_letter_semantic_ids_align_with_dataset_items(tmp_path):
    f = beauty_files(tmp_path)
    ds = build_dataset(load_sequences(f["seq"]))  # items "1".."4" -> internal 1..4
    sid = write(tmp_path / "Beauty.index.json", json.dumps(
        {"0": ["<a_3>", "<b_1>"], "1": ["<a_3>", "<b_2>"], "2": ["<a_0>", "<b_9>"], "3": ["<a_3>", "<b_1>"], "7": ["<a_1>", "<b_1>"]}))
    p = load_letter_semantic_ids(sid, ds)
    assert p.codes.dtype == np.int64 and p.codes.shape == (5, 2)
    assert p.codes.tolist() == [[-1, -1], [3, 1], [3, 2], [0, 9], [3, 1]]  # row 0 = padding; file id + 1 = dataset id
    assert p.sizes == [4, 10] and p.n_levels == 2
    assert list(p.item_ids) == list(ds.item_ids)
    assert p.meta["levels"] == ["a", "b"] and p.meta["n_unique"] == 3 and p.meta["n_colliding_items"] == 2
    assert p.meta["file_items_unused"] == 1 and p.meta["id_offset"] == 1
    assert load_letter_semantic_ids(sid, ds.item_ids).codes.tolist() == p.codes.tolist()
    # the other id convention finds item "4" nowhere (file id 4 is absent): an error naming the file
    with pytest.raises(ValueError, match=r"Beauty.index.json: 1 of the dataset's 4 items have no semantic ID.*\[4\]"):
        load_letter_semantic_ids(sid, ds, id_offset=0)


def test_letter_semantic_ids_errors(tmp_path):
    ids = np.array(["", "1", "2"], dtype=object)
    shifted = write(tmp_path / "s.json", json.dumps({"5": ["<a_1>"], "6": ["<a_2>"]}))
    with pytest.raises(ValueError, match=r"s.json: 2 of the dataset's 2 items .*with id_offset=-4 every item would be found"):
        load_letter_semantic_ids(shifted, ids)
    with pytest.raises(ValueError, match=r"b.json, item '1': token 'a_1' is not of the form"):
        load_letter_semantic_ids(write(tmp_path / "b.json", json.dumps({"0": ["<a_1>"], "1": ["a_1"]})), ids)
    with pytest.raises(ValueError, match=r"l.json, item '1': levels \['b'\], but the file's other items have \['a'\]"):
        load_letter_semantic_ids(write(tmp_path / "l.json", json.dumps({"0": ["<a_1>"], "1": ["<b_1>"]})), ids)
    with pytest.raises(ValueError, match="the dataset's are not"):
        load_letter_semantic_ids(write(tmp_path / "n.json", json.dumps({"0": ["<a_1>"]})), np.array(["", "x"], dtype=object))


# ----------------------------------------------------------------------------- ratings of a sequence file
def test_sequence_ratings_give_actions_and_keep_the_sequences(tmp_path, caplog):
    seq = write(tmp_path / "ml-1m_seq.txt", "1 10 20 30\n\n2 20 40\n")
    rat = write(tmp_path / "ml-1m_seq_ratings.txt", "1 5 3 1\n2 0 4\n")  # no blank line here: aligned by non-blank lines
    with caplog.at_level(logging.WARNING, logger="crbr.data"):
        raw = load_sequences(seq, ratings_path=rat)
    assert raw.events["rating"].to_list() == [5.0, 3.0, 1.0, None, 4.0]
    assert raw.events["action"].to_list() == [None, None, None, "interact", None]
    assert raw.events["row"].to_list() == [1, 1, 1, 3, 3]  # the sequence file's lines
    assert raw.drops == {"ml-1m_seq.txt:blank_line": 1, "ml-1m_seq_ratings.txt:unknown_rating": 1}
    assert any("unknown" in r.getMessage() for r in caplog.records)
    assert raw.source_files == [seq, rat]
    ds = build_dataset(raw)
    assert ds.action_names == ["<pad>", "interact", "like", "neutral", "dislike"]
    assert [ds.action_names[a] for a in ds.user_actions(0)] == ["like", "neutral", "dislike"]
    assert [ds.action_names[a] for a in ds.user_actions(1)] == ["interact", "like"]
    plain = build_dataset(load_sequences(seq))
    assert np.array_equal(plain.items, ds.items) and np.array_equal(plain.offsets, ds.offsets)


@pytest.mark.parametrize(
    "ratings,pieces",
    [
        ("1 5 3 1\n", ["ml-1m_seq_ratings.txt: 1 non-blank line(s)", "sequence file", "has 2", "line 2 of"]),
        ("1 5 3 1\n2 4 4\n3 1\n", ["3 non-blank line(s)", "has 2", "its line 3 has no line in"]),
        ("1 5 3\n2 4 4\n", ["ml-1m_seq_ratings.txt, line 1: 2 rating(s) for user '1'", "line 1 of", "has 3 item(s)"]),
        ("1 5 3 1\n\n7 4 4\n", ["ml-1m_seq_ratings.txt, line 3: user '7'", "line 2 of", "is user '2'"]),
    ],
)
def test_sequence_ratings_mismatch_names_file_line_and_lengths(tmp_path, ratings, pieces):
    seq = write(tmp_path / "ml-1m_seq.txt", "1 10 20 30\n2 20 40\n")
    rat = write(tmp_path / "ml-1m_seq_ratings.txt", ratings)
    for policy in ("error", "drop"):  # a misaligned file is an error in both modes
        with pytest.raises(ValueError) as e:
            load_sequences(seq, ratings_path=rat, on_bad_line=policy)
        for p in pieces:
            assert p in str(e.value), str(e.value)


def test_sequence_ratings_bad_value(tmp_path):
    seq = write(tmp_path / "s.txt", "1 10 20\n2 20\n")
    rat = write(tmp_path / "r.txt", "1 4 x\n2 2\n")
    with pytest.raises(ValueError, match=r"r.txt, line 1: field 'rating' is not a number: 'x'"):
        load_sequences(seq, ratings_path=rat)
    raw = load_sequences(seq, ratings_path=rat, on_bad_line="drop")
    assert raw.events["item"].to_list() == ["10", "20"] and raw.drops == {"r.txt:bad_rating": 1}


# ----------------------------------------------------------------------------- DataConfig, presets, cache key
def test_config_settings_change_the_cache_key(tmp_path):
    f = beauty_files(tmp_path)
    rat = write(tmp_path / "Beauty" / "r.txt", "1 5 4 1\n2 3 3\n")
    base = DataConfig(name="b", format="sequences", path=str(f["seq"]), items_path=str(f["attrs"]), cache_dir=str(tmp_path / "c"))
    keys = {
        cache_key(base),
        cache_key(dataclasses.replace(base, item_text_path=str(f["text"]))),
        cache_key(dataclasses.replace(base, item_text_path=str(f["text"]), attribute_names_path=str(f["names"]))),
        cache_key(dataclasses.replace(base, ratings_path=str(rat))),
        # the same file in another role is another dataset
        cache_key(dataclasses.replace(base, items_path=str(f["text"]))),
        cache_key(dataclasses.replace(base, items_path=None, item_text_path=str(f["text"]))),
    }
    assert len(keys) == 6
    ds = prepare(dataclasses.replace(base, item_text_path=str(f["text"]), ratings_path=str(rat)))
    assert ds.action_names == ["<pad>", "like", "neutral", "dislike"]
    assert ds.item_text[1].startswith("Title: OPI")
    assert "item_text_path" not in ds.info["data_config"]  # paths are not settings; the files are hashed
    with pytest.raises(ValueError, match="data.ratings_path: format 'pairs' does not read it"):
        load_raw(DataConfig(name="p", format="pairs", path=str(f["seq"]), ratings_path=str(rat)))
    with pytest.raises(ValueError, match="data.item_text_path: format 'taobao' does not read it"):
        load_raw(DataConfig(name="t", format="taobao", path=str(f["seq"]), item_text_path=str(f["text"])))


def test_presets_name_the_new_files(tmp_path):
    b = DataConfig.preset("Beauty-text", root=tmp_path)
    assert b.item_text_path == str(tmp_path / "Beauty" / "Beauty_item_text.json")
    assert b.attribute_names_path == str(tmp_path / "Beauty" / "Beauty_attribute_names.json")
    assert DataConfig.preset("Beauty", root=tmp_path).item_text_path is None
    m = DataConfig(name="ml-1m-ratings", root=str(tmp_path)).resolved()
    assert m.ratings_path == str(tmp_path / "ml-1m" / "ml-1m_seq_ratings.txt") and m.format == "sequences"
    assert DataConfig.preset("ml-1m", root=tmp_path).ratings_path is None
    own = DataConfig(name="Beauty-text", root=str(tmp_path), item_text_path="mine.json").resolved()
    assert own.item_text_path == "mine.json" and own.attribute_names_path == b.attribute_names_path
    t = DataConfig.preset("taobao-userbehavior-head84k", root=tmp_path)
    assert t.format == "taobao" and t.preprocess.actions == ["pv", "cart", "fav", "buy"]
    with pytest.raises(FileNotFoundError, match="Beauty_item_text.json"):
        prepare(dataclasses.replace(b, path=str(beauty_files(tmp_path / "x")["seq"]), items_path=None, attribute_names_path=None))


# ----------------------------------------------------------------------------- shared real data
@needs_shared
@pytest.mark.shared
def test_shared_beauty_text_names_and_letter_ids(tmp_path):
    ds = prepare(DataConfig.preset("Beauty-text", root=SHARED, cache_dir=str(tmp_path)))
    old = prepare(DataConfig.preset("Beauty", root=SHARED, cache_dir=str(tmp_path)))
    assert (ds.n_users, ds.n_items, ds.n_events, ds.n_categories) == (22363, 12101, 198502, 637)
    assert np.array_equal(ds.items, old.items) and list(ds.item_ids) == list(old.item_ids)
    i = list(ds.item_ids).index("1")
    assert ds.item_text[i] == ("Title: OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce. Brand: OPI. "
                               "Categories: Beauty > Makeup > Nails > Nail Polish. Price: $12.00")
    assert sum(t is not None and t.startswith("Title: ") for t in ds.item_text) == 12094
    assert {"Makeup", "Prada", "attr:188"} <= set(ds.category_names)
    assert old.category_names[0].startswith("attr:")
    p = load_letter_semantic_ids(SHARED / "Beauty" / "Beauty_LETTER_semantic_ids.json", ds)
    assert p.codes.shape == (12102, 4) and p.codes[0].tolist() == [-1, -1, -1, -1]
    assert p.codes[i].tolist() == [183, 70, 232, 6]  # LETTER item 0 = Beauty.txt item 1
    assert p.meta["n_unique"] == 12088 and p.meta["file_items_unused"] == 0
    with pytest.raises(ValueError, match="Beauty_LETTER_semantic_ids.json.*with id_offset=1"):
        load_letter_semantic_ids(SHARED / "Beauty" / "Beauty_LETTER_semantic_ids.json", ds, id_offset=0)


@needs_shared
@pytest.mark.shared
def test_shared_ml1m_ratings_and_taobao_head84k(tmp_path):
    plain = prepare(DataConfig.preset("ml-1m", root=SHARED, cache_dir=str(tmp_path)))
    rated = prepare(DataConfig.preset("ml-1m-ratings", root=SHARED, cache_dir=str(tmp_path)))
    assert plain.action_names == ["<pad>", "interact"]  # the measured preset is unchanged
    assert np.array_equal(plain.items, rated.items) and np.array_equal(plain.offsets, rated.offsets)
    assert list(plain.user_ids) == list(rated.user_ids) and list(plain.item_ids) == list(rated.item_ids)
    assert rated.info["action_counts"] == {"interact": 6, "like": 348970 + 226309, "neutral": 261196, "dislike": 56172 + 107556}
    tb = prepare(DataConfig.preset("taobao-userbehavior-head84k", root=SHARED, cache_dir=str(tmp_path)))
    assert (tb.n_users, tb.n_items, tb.n_events, tb.n_categories) == (815, 55368, 84475, 2914)
    assert tb.info["action_counts"] == {"pv": 75872, "cart": 4497, "fav": 2356, "buy": 1750}
