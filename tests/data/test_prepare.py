"""prepare(): cache keys, cache hits, presets; the shared real datasets when present."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from crbr.data.loaders import ColumnMap
from crbr.data.prepare import KNOWN_DATASETS, DataConfig, cache_key, prepare
from crbr.data.preprocess import PreprocessConfig

prep = importlib.import_module("crbr.data.prepare")  # the module (crbr.data.prepare is also the function)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


def seq_cfg(tmp_path: Path, **kw) -> DataConfig:
    d = tmp_path / "src"
    d.mkdir(exist_ok=True)
    (d / "Toy.txt").write_text("1 3 4 5\n2 4 5 3\n3 5 3\n")
    (d / "Toy_item2attributes.json").write_text(json.dumps({"3": [1], "4": [2, 1], "5": []}))
    return DataConfig(
        name="toy",
        format="sequences",
        path=str(d / "Toy.txt"),
        items_path=str(d / "Toy_item2attributes.json"),
        cache_dir=str(tmp_path / "cache"),
        **kw,
    )


def test_cache_key_tracks_settings_and_bytes(tmp_path):
    cfg = seq_cfg(tmp_path)
    k0 = cache_key(cfg)
    assert k0 == cache_key(cfg) and len(k0) == 64
    assert cache_key(dataclasses.replace(cfg, preprocess=PreprocessConfig(kcore=2))) != k0
    assert cache_key(dataclasses.replace(cfg, on_bad_line="drop")) != k0
    # cache location is not a setting
    assert cache_key(dataclasses.replace(cfg, cache_dir=str(tmp_path / "elsewhere"))) == k0
    # one byte of one file
    p = Path(cfg.path)
    p.write_bytes(p.read_bytes().replace(b"3 5 3", b"3 5 4"))
    k1 = cache_key(cfg)
    assert k1 != k0
    meta = Path(cfg.items_path)
    meta.write_bytes(meta.read_bytes().replace(b"[1]", b"[7]"))
    assert cache_key(cfg) != k1
    # moving the files does not change the key (content-addressed)
    moved = tmp_path / "moved"
    shutil.copytree(p.parent, moved)
    assert cache_key(dataclasses.replace(cfg, path=str(moved / p.name), items_path=str(moved / meta.name))) == cache_key(cfg)


def test_second_prepare_is_a_cache_hit(tmp_path, monkeypatch, caplog):
    cfg = seq_cfg(tmp_path)
    calls = []
    real = prep.load_raw
    monkeypatch.setattr(prep, "load_raw", lambda c: calls.append(c) or real(c))
    ds1 = prepare(cfg)
    assert len(calls) == 1
    with caplog.at_level(logging.INFO, logger="crbr.data"):
        ds2 = prepare(cfg)
    assert len(calls) == 1, "the loader ran again on a cache hit"
    assert any("cache hit" in r.getMessage() for r in caplog.records)
    assert ds2.items.tolist() == ds1.items.tolist()
    assert list(ds2.item_ids) == list(ds1.item_ids) == ["", "3", "4", "5"]
    assert ds2.category_names == ["attr:1", "attr:2"]
    assert ds2.info["cache_key"] == cache_key(cfg)
    prepare(cfg, rebuild=True)
    assert len(calls) == 2
    prepare(dataclasses.replace(cfg, preprocess=PreprocessConfig(kcore=2)))
    assert len(calls) == 3
    # a changed file rebuilds
    Path(cfg.path).write_text("1 3 4\n")
    assert prepare(cfg).n_events == 2 and len(calls) == 4


def test_cache_dir_from_env_and_disabled_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CRBR_CACHE", str(tmp_path / "envcache"))
    cfg = dataclasses.replace(seq_cfg(tmp_path), cache_dir=None)
    prepare(cfg)
    assert len(list((tmp_path / "envcache").glob("toy-*/meta.json"))) == 1
    off = dataclasses.replace(cfg, name="nocache", use_cache=False)
    prepare(off)
    assert not list((tmp_path / "envcache").glob("nocache-*"))


def test_table_format_through_prepare(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("uid,sku,ts,r\n1,a,10,5\n1,b,5,1\n2,a,7,3\n")
    cfg = DataConfig(
        name="tbl",
        format="table",
        path=str(log),
        columns=ColumnMap(user="uid", item="sku", timestamp="ts", rating="r"),
        cache_dir=str(tmp_path / "c"),
    )
    ds = prepare(cfg)
    assert [ds.item_ids[i] for i in ds.user_items(0)] == ["b", "a"]
    assert [ds.action_names[a] for a in ds.user_actions(0)] == ["dislike", "like"]
    assert ds.info["data_config"]["columns"]["user"] == "uid"


def test_presets_resolve_paths(tmp_path):
    cfg = DataConfig.preset("beauty", root=tmp_path)
    assert cfg.name == "Beauty" and cfg.format == "sequences"
    assert cfg.path == str(tmp_path / "Beauty" / "Beauty.txt")
    assert cfg.items_path == str(tmp_path / "Beauty" / "Beauty_item2attributes.json")
    by_name = DataConfig(name="Beauty", root=str(tmp_path)).resolved()
    assert (by_name.format, by_name.path, by_name.items_path) == (cfg.format, cfg.path, cfg.items_path)
    tb = DataConfig(name="taobao-userbehavior-sample", root=str(tmp_path), preprocess=PreprocessConfig(kcore=2)).resolved()
    assert tb.preprocess.actions == ["pv", "cart", "fav", "buy"] and tb.preprocess.kcore == 2
    assert DataConfig().resolved().format == "synthetic"
    with pytest.raises(KeyError, match="unknown dataset"):
        DataConfig.preset("nope")
    with pytest.raises(ValueError, match="not a known preset"):
        DataConfig(name="nope").resolved()
    with pytest.raises(FileNotFoundError, match="Beauty.txt"):
        prepare(dataclasses.replace(cfg, cache_dir=str(tmp_path / "c")))
    assert set(KNOWN_DATASETS) >= {"ml-100k", "ml-1m", "Beauty", "Yelp", "LastFM", "ml-latest-small"}


# ----------------------------------------------------------------------------- shared real data
@needs_shared
@pytest.mark.shared
@pytest.mark.parametrize(
    "name,users,items,events,categories",
    [
        ("ml-100k", 943, 1682, 100000, 19),
        ("Beauty", 22363, 12101, 198502, 637),
        ("ml-1m", 6040, 3706, 1000209, 18),
        ("taobao-userbehavior-sample", 43, 3276, 4321, 567),
        ("ml-latest-small", 610, 9724, 100836, 0),
    ],
)
def test_shared_dataset_counts(tmp_path, name, users, items, events, categories):
    ds = prepare(DataConfig.preset(name, root=SHARED, cache_dir=str(tmp_path)))
    assert (ds.n_users, ds.n_items, ds.n_events) == (users, items, events)
    assert ds.n_categories == categories
    if name == "ml-1m":
        assert ds.timestamps is None and ds.action_names == ["<pad>", "interact"]
        u1 = list(ds.user_ids).index("1")
        assert [ds.item_ids[i] for i in ds.user_items(u1)[:4]] == ["3186", "1721", "1022", "1270"]
        toy = list(ds.item_ids).index("1")
        assert ds.item_text[toy] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
        assert ds.info["metadata_items_unused"] == 3883 - 3706
    if name == "ml-100k":
        assert ds.info["action_counts"] == {"like": 34174 + 21201, "neutral": 27145, "dislike": 6110 + 11370}
        assert (ds.lengths() >= 20).all()
    if name == "taobao-userbehavior-sample":
        assert ds.action_names == ["<pad>", "pv", "cart", "fav", "buy"]
        assert ds.info["action_counts"] == {"pv": 3926, "cart": 190, "fav": 128, "buy": 77}


def test_prepare_with_split_builds_the_split_the_experiment_names():
    """The config's split section reaches make_split: a temporal split with its own settings."""
    from crbr.config import ExperimentConfig, from_dict
    from crbr.data.dataset import make_split
    from crbr.data.prepare import prepare_with_split

    cfg = from_dict(ExperimentConfig, {"data": {"name": "synthetic", "synthetic": {"seed": 3, "n_users": 60, "n_items": 40}},
                                       "split": {"name": "temporal", "test_frac": 0.3}})
    ds, split = prepare_with_split(cfg)
    ref = make_split(ds, "temporal", valid_frac=0.1, test_frac=0.3)
    assert split.name == "temporal"
    assert np.array_equal(split.train_len, ref.train_len) and np.array_equal(split.test.users, ref.test.users)
    assert not np.array_equal(split.train_len, make_split(ds, "temporal").train_len)  # test_frac was used
