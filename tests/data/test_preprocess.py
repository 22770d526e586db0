"""build_dataset: ordering, actions, dedup, k-core, id remapping, item metadata."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crbr.data.dataset import SequenceDataset
from crbr.data.preprocess import PreprocessConfig, build_dataset, kcore_mask
from crbr.data.schema import DEFAULT_ACTIONS, RatingThresholds, RawEvents, action_vocabulary


def raw(users, items, ts=None, actions=None, ratings=None, rows=None, items_meta=None, name="t", file="events.txt"):
    d = {"user": [str(u) for u in users], "item": [str(i) for i in items]}
    if ts is not None:
        d["timestamp"] = ts
    if actions is not None:
        d["action"] = actions
    if ratings is not None:
        d["rating"] = [float(r) for r in ratings]
    if rows is not None:
        d["row"] = rows
    return RawEvents(pl.DataFrame(d), items_meta, [file], {}, name)


def seq(ds: SequenceDataset, user: str) -> list[str]:
    u = list(ds.user_ids).index(user)
    return [ds.item_ids[i] for i in ds.user_items(u)]


# ----------------------------------------------------------------------------- order
def test_stable_tie_order_on_equal_timestamps():
    # user 1: file order c(t=5) a(t=5) b(t=3) d(t=5)  -> time order b, then the t=5 ties in file order c, a, d
    r = raw(users=[1, 2, 1, 1, 2, 1], items=["c", "x", "a", "b", "y", "d"], ts=[5, 9, 5, 3, 1, 5])
    ds = build_dataset(r)
    assert seq(ds, "1") == ["b", "c", "a", "d"]
    assert seq(ds, "2") == ["y", "x"]
    assert ds.timestamps[ds.offsets[0] : ds.offsets[1]].tolist() == [3, 5, 5, 5]


def test_ties_follow_row_numbers_not_frame_position():
    # a frame concatenated out of file order: the row (line number) decides ties
    r = raw(users=[1, 1, 1], items=["late", "early", "mid"], ts=[7, 7, 7], rows=[30, 10, 20])
    assert seq(build_dataset(r), "1") == ["early", "mid", "late"]


def test_order_only_source_keeps_file_order():
    r = raw(users=[2, 1, 1, 2, 1], items=[5, 9, 3, 5, 9], rows=[1, 2, 2, 3, 3])
    ds = build_dataset(r)
    assert ds.timestamps is None
    assert seq(ds, "1") == ["9", "3", "9"]  # repeats kept: two positions are two events
    assert seq(ds, "2") == ["5", "5"]
    assert ds.info["drops"] == {}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 3)), min_size=1, max_size=40))
def test_sequences_are_time_sorted_and_lossless(events):
    users, items, ts = zip(*events)
    ds = build_dataset(raw(users, items, ts=list(ts)), PreprocessConfig(dedup="keep"))
    assert ds.n_events == len(events)
    for u in range(ds.n_users):
        s, e = ds.offsets[u], ds.offsets[u + 1]
        uid = int(ds.user_ids[u])
        expect = sorted(((t, k) for k, (uu, _, t) in enumerate(events) if uu == uid))  # (time, file position)
        assert ds.timestamps[s:e].tolist() == [t for t, _ in expect]
        assert [ds.item_ids[i] for i in ds.items[s:e]] == [str(events[k][1]) for _, k in expect]


# ----------------------------------------------------------------------------- actions
def test_rating_to_action_keeps_dislikes():
    r = raw(users=[1] * 6, items=range(6), ts=range(6), ratings=[1, 2, 2.5, 3.5, 4, 5])
    ds = build_dataset(r)
    assert ds.action_names == ["<pad>", "like", "neutral", "dislike"]
    names = [ds.action_names[a] for a in ds.actions]
    assert names == ["dislike", "dislike", "neutral", "neutral", "like", "like"]
    assert ds.info["action_counts"] == {"like": 2, "neutral": 2, "dislike": 2}
    strict = build_dataset(r, PreprocessConfig(rating_thresholds=RatingThresholds(like=5.0, dislike=1.0)))
    assert [strict.action_names[a] for a in strict.actions] == ["dislike"] + ["neutral"] * 4 + ["like"]


def test_action_vocabulary_rules():
    assert action_vocabulary(["pv", "buy", "like", "interact"]) == ["<pad>", "interact", "like", "buy", "pv"]
    assert action_vocabulary(["x"], ["a", "x"]) == ["<pad>", "a", "x"]
    assert DEFAULT_ACTIONS == ("interact", "like", "neutral", "dislike")
    with pytest.raises(ValueError, match="duplicate"):
        action_vocabulary([], ["a", "a"])
    with pytest.raises(ValueError, match="dislike"):
        RatingThresholds(like=2.0, dislike=3.0)


def test_configured_vocabulary_and_unknown_actions():
    r = raw(users=[1, 1, 1], items=[1, 2, 3], ts=[1, 2, 3], actions=["pv", "buy", "share"], rows=[4, 5, 6], file="log.csv")
    with pytest.raises(ValueError, match=r"log.csv, line 6: action 'share' is not in the configured vocabulary"):
        build_dataset(r, PreprocessConfig(actions=["pv", "cart", "fav", "buy"]))
    ds = build_dataset(r, PreprocessConfig(actions=["pv", "cart", "fav", "buy"], on_unknown_action="drop"))
    assert ds.action_names == ["<pad>", "pv", "cart", "fav", "buy"]  # absent actions keep their ids
    assert ds.actions.tolist() == [1, 4]
    assert ds.info["drops"]["unknown_action"] == 1


def test_event_without_action_or_rating_is_an_error():
    r = raw(users=[1, 1], items=[1, 2], ts=[1, 2], actions=["pv", None], rows=[1, 2], file="log.csv")
    with pytest.raises(ValueError, match=r"log.csv, line 2: event has neither an action nor a rating"):
        build_dataset(r)


# ----------------------------------------------------------------------------- dedup
def test_dedup_modes():
    # user 1: (a,1,like) twice, (a,2,like) a later repeat; user 2: (a,1,like) and (a,1,dislike)
    users, items, ts = [1, 1, 1, 2, 2], ["a", "a", "a", "a", "a"], [1, 1, 2, 1, 1]
    ratings = [5, 5, 4, 5, 1]
    exact = build_dataset(raw(users, items, ts=ts, ratings=ratings))
    assert exact.n_events == 4 and exact.info["drops"]["duplicate_events"] == 1
    first = build_dataset(raw(users, items, ts=ts, ratings=ratings), PreprocessConfig(dedup="first"))
    assert first.lengths().tolist() == [1, 1] and first.info["drops"]["repeat_interactions"] == 3
    assert [first.action_names[a] for a in first.actions] == ["like", "like"]  # the earliest of each pair
    keep = build_dataset(raw(users, items, ts=ts, ratings=ratings), PreprocessConfig(dedup="keep"))
    assert keep.n_events == 5


# ----------------------------------------------------------------------------- k-core
def test_iterative_kcore_hand_built():
    # 2-core. Users A, B, C form a dense block on items x, y; user D has x and z; E has only z.
    # Pass 1 removes E (1 event). Then z has 1 event (D) -> removed; then D has 1 event -> removed.
    ev = [("A", "x"), ("A", "y"), ("B", "x"), ("B", "y"), ("C", "x"), ("C", "y"), ("D", "x"), ("D", "z"), ("E", "z")]
    # E's single event keeps z at 2 events in pass 1, so the cascade needs several passes
    u, i = zip(*ev)
    ds = build_dataset(raw(u, i, ts=range(len(ev))), PreprocessConfig(kcore=2))
    assert list(ds.user_ids) == ["A", "B", "C"]
    assert list(ds.item_ids) == ["", "x", "y"]
    assert ds.n_events == 6
    c = ds.info["counts"]
    assert c["before_filter"] == {"users": 5, "items": 3, "events": 9}
    assert c["after_filter"] == {"users": 3, "items": 2, "events": 6}
    assert c["filter_passes"] >= 2
    # the numpy helper directly: every surviving user and item has >= k events
    uc = np.array([ord(x) for x in u]) - ord("A")
    ic = np.array(["xyz".index(x) for x in i])
    keep, passes = kcore_mask(uc, ic, 2, 2)
    assert keep.tolist() == [True] * 6 + [False] * 3 and passes >= 2


def test_min_user_events_and_empty_result():
    r = raw(users=[1, 1, 1, 2], items=[1, 2, 3, 1], ts=[1, 2, 3, 4])
    ds = build_dataset(r, PreprocessConfig(min_user_events=2))
    assert list(ds.user_ids) == ["1"] and ds.n_events == 3
    with pytest.raises(ValueError, match="no events left"):
        build_dataset(r, PreprocessConfig(kcore=5))


# ----------------------------------------------------------------------------- ids and metadata
def test_id_remapping_orders():
    ds = build_dataset(raw(users=[10, 9, 100], items=[20, 3, 100], ts=[1, 1, 1]))
    assert list(ds.user_ids) == ["9", "10", "100"]  # natural numeric order
    assert list(ds.item_ids) == ["", "3", "20", "100"]  # 0 = padding
    assert ds.info["id_order"] == {"users": "numeric", "items": "numeric"}
    assert ds.items.min() == 1 and ds.items.dtype == np.int32
    ds2 = build_dataset(raw(users=["b", "a", "10"], items=["i2", "i10", "i1"], ts=[1, 1, 1]))
    assert list(ds2.user_ids) == ["10", "a", "b"]
    assert list(ds2.item_ids) == ["", "i1", "i10", "i2"]
    assert ds2.info["id_order"]["items"] == "lexicographic"


def test_item_metadata_arrays():
    meta = pl.DataFrame(
        {
            "item": ["b", "a", "zz", "a"],  # "zz" is not in the log; the second "a" is a duplicate row
            "categories": [["Drama", "Comedy", "Drama"], ["Action"], ["Horror"], ["Ignored"]],
            "text": ["B text", None, "zz", "dup"],
        }
    )
    r = raw(users=[1, 1, 2], items=["a", "b", "c"], ts=[1, 2, 3], items_meta=meta)
    ds = build_dataset(r)
    assert ds.category_names == ["Action", "Comedy", "Drama"]
    assert ds.cat_offsets.shape == (ds.n_items + 2,)
    cats = {ds.item_ids[i]: [ds.category_names[c] for c in ds.item_categories(i)] for i in range(1, ds.n_items + 1)}
    assert cats == {"a": ["Action"], "b": ["Drama", "Comedy"], "c": []}
    assert ds.item_text == [None, None, "B text", None]
    assert ds.info["items_without_metadata"] == 1
    assert ds.info["metadata_items_unused"] == 1
    assert ds.info["metadata_duplicate_items"] == 1


def test_info_and_roundtrip(tmp_path):
    r = raw(users=[1, 1, 2], items=[1, 2, 1], ts=[3, 2, 1], ratings=[5, 1, 3])
    ds = build_dataset(r, PreprocessConfig(kcore=1))
    info = ds.info
    assert info["name"] == "t" and info["source_files"] == ["events.txt"]
    assert info["settings"]["kcore"] == 1 and info["settings"]["rating_thresholds"] == {"like": 4.0, "dislike": 2.0}
    assert info["counts"]["raw"] == {"users": 2, "items": 2, "events": 3}
    back = SequenceDataset.load(ds.save(tmp_path / "ds"))
    assert back.items.tolist() == ds.items.tolist() and back.action_names == ds.action_names
    assert back.timestamps.tolist() == [2, 3, 1]


def test_mixed_missing_timestamps_is_an_error():
    r = raw(users=[1, 1], items=[1, 2], ts=[1, None], rows=[1, 2], file="log.csv")
    with pytest.raises(ValueError, match=r"log.csv, line 2: timestamp missing"):
        build_dataset(r)


def test_config_validation():
    with pytest.raises(ValueError, match="dedup"):
        PreprocessConfig(dedup="all")
    with pytest.raises(ValueError, match="on_unknown_action"):
        PreprocessConfig(on_unknown_action="skip")
