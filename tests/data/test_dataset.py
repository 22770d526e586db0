"""SequenceDataset container, splits and batch windows against hand-written expectations."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crbr.data.batching import TrainUsers, history_batch, train_batch
from crbr.data.dataset import SequenceDataset, leave_k_out, leave_one_out, make_split, temporal_split, train_item_counts


def toy(lengths=(3, 5, 1), with_ts=True):
    offs = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    E = int(offs[-1])
    items = (np.arange(E) % 9 + 1).astype(np.int32)
    return SequenceDataset(
        offsets=offs, items=items, actions=np.ones(E, np.int16),
        timestamps=(np.arange(E) * 10).astype(np.int64) if with_ts else None,
        user_ids=np.array([f"u{i}" for i in range(len(lengths))], dtype=object),
        item_ids=np.array([""] + [f"i{i}" for i in range(1, 10)], dtype=object),
        action_names=["<pad>", "interact"],
    )


def test_leave_one_out_targets_and_short_users():
    ds = toy()  # items: u0 = 1 2 3, u1 = 4 5 6 7 8, u2 = 9
    sp = leave_one_out(ds)
    assert sp.train_len.tolist() == [1, 3, 1]  # short user keeps its single event for training
    assert sp.test.users.tolist() == [0, 1] and sp.test.target_items.tolist() == [3, 8]
    assert sp.valid.target_items.tolist() == [2, 7]
    assert sp.test.hist_len.tolist() == [2, 4] and sp.valid.hist_len.tolist() == [1, 3]
    assert sp.info["not_evaluated_short_users"] == 1
    assert train_item_counts(ds, sp).tolist() == [0, 1, 0, 0, 1, 1, 1, 0, 0, 1]


def test_leave_k_out_targets_histories_and_short_users():
    ds = toy((7, 4, 9))  # items: u0 = 1..7, u1 = 8 9 1 2, u2 = 3..9 1 2
    sp = leave_k_out(ds, k=2)
    assert sp.name == "leave_2_out" and sp.info["not_evaluated_short_users"] == 1  # u1: 4 < 1 + 2 * 2
    assert sp.train_len.tolist() == [3, 4, 5]
    assert sp.test.users.tolist() == [0, 2] and sp.valid.users.tolist() == [0, 2]
    assert [sp.test.targets(i).tolist() for i in range(2)] == [[6, 7], [1, 2]]
    assert [sp.valid.targets(i).tolist() for i in range(2)] == [[4, 5], [8, 9]]
    assert sp.test.hist_len.tolist() == [5, 7] and sp.valid.hist_len.tolist() == [3, 5]
    # k = 1 is leave-one-out, field by field
    a, b = leave_k_out(ds, k=1), leave_one_out(ds)
    assert a.name == b.name and a.info == b.info and np.array_equal(a.train_len, b.train_len)
    for x, y in ((a.valid, b.valid), (a.test, b.test)):
        for f in ("users", "hist_len", "target_offsets", "target_items"):
            assert np.array_equal(getattr(x, f), getattr(y, f)), f
    assert make_split(ds, "leave_k_out", k=3).test.targets(0).tolist() == [5, 6, 7]
    with pytest.raises(ValueError, match="k must be"):
        leave_k_out(ds, k=0)


def test_temporal_split_uses_global_cuts():
    ds = toy((4, 4))  # timestamps 0..70, u0 has 0-30, u1 has 40-70
    sp = temporal_split(ds, valid_frac=0.25, test_frac=0.25)
    # cuts at the 0.5 and 0.75 quantiles (lower): 30 and 50
    assert (sp.info["cut_valid"], sp.info["cut_test"]) == (30, 50)
    assert sp.train_len.tolist() == [3, 0]
    assert sp.valid.users.tolist() == [0] and sp.valid.targets(0).tolist() == [4]
    assert sp.test.users.tolist() == [1] and sp.test.hist_len.tolist() == [1]
    assert sp.test.targets(0).tolist() == [6, 7, 8]
    with pytest.raises(ValueError, match="timestamps"):
        temporal_split(toy(with_ts=False))


def test_windows_are_left_padded_and_shifted():
    ds = toy()
    b = train_batch(ds, np.array([1]), np.array([5]), max_len=3)
    assert b["items"].tolist() == [[5, 6, 7]] and b["targets"].tolist() == [[6, 7, 8]]
    assert b["positions"].tolist() == [[1, 2, 3]] and b["timestamps"].tolist() == [[40, 50, 60]]
    b = train_batch(ds, np.array([0]), np.array([3]), max_len=4)
    assert b["items"].tolist() == [[0, 0, 1, 2]] and b["targets"].tolist() == [[0, 0, 2, 3]]
    assert b["lengths"].tolist() == [2]
    h = history_batch(ds, np.array([1, 0]), np.array([4, 2]), max_len=3)
    assert h["items"].tolist() == [[5, 6, 7], [0, 1, 2]]


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6), L=st.integers(1, 8))
def test_train_windows_match_a_python_reference(lengths, L):
    ds = toy(tuple(lengths))
    sp = leave_one_out(ds)
    users = TrainUsers(ds, sp, L)
    b = users.collate(list(range(len(users))))
    W = b["items"].shape[1]  # columns that are padding in every row are trimmed
    assert W == min(L, max(sp.train_len[users.users] - 1, default=1))
    for row, u in enumerate(users.users):
        seq = ds.user_items(u)[: sp.train_len[u]].tolist()
        inp, tgt = seq[:-1][-L:], seq[1:][-L:]
        pad = [0] * (W - len(inp))
        assert b["items"][row].tolist() == pad + inp
        assert b["targets"][row].tolist() == pad + tgt


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(2, 40), min_size=1, max_size=40), bs=st.integers(1, 7), world=st.integers(1, 3))
def test_length_buckets_cover_every_window_once(lengths, bs, world):
    from crbr.data.batching import LengthBucketBatches

    lens = np.asarray(lengths)
    per_rank = [list(LengthBucketBatches(lens, bs, seed=1, pool=2, rank=r, world_size=world)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1  # every rank steps the same number of times
    seen = [i for p in per_rank for b in p for i in b]
    assert set(seen) == set(range(len(lens)))
    if world == 1:
        assert sorted(seen) == list(range(len(lens)))  # exactly once
    for p in per_rank:
        assert all(1 <= len(b) <= bs for b in p)


def test_save_load_roundtrip(tmp_path):
    ds = toy()
    ds.info = {"name": "toy"}
    ds.save(tmp_path / "d")
    ds.save(tmp_path / "d")  # overwrite in place
    back = SequenceDataset.load(tmp_path / "d")
    assert np.array_equal(back.items, ds.items) and np.array_equal(back.offsets, ds.offsets)
    assert back.user_ids.tolist() == ds.user_ids.tolist() and back.item_ids.tolist() == ds.item_ids.tolist()
    assert back.info["name"] == "toy" and back.timestamps is not None
    assert not any(p.name.startswith("d.") for p in tmp_path.iterdir())  # no temporary leftovers


def test_validate_names_the_broken_field():
    ds = toy()
    ds.items = ds.items.copy()
    ds.items[0] = 99
    with pytest.raises(ValueError, match="items"):
        ds.validate()


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=6), L=st.integers(1, 8), data=st.data())
def test_all_windows_make_every_training_event_a_target_once(lengths, L, data):
    ds = toy(tuple(lengths))
    sp = leave_one_out(ds)
    stride = data.draw(st.integers(1, L))
    win = TrainUsers(ds, sp, L, stride=stride)
    b = win.collate(list(range(len(win))))
    for u in range(ds.n_users):
        n = int(sp.train_len[u])
        rows = np.nonzero(b["users"].numpy() == u)[0]
        got = sorted(int(p) for r in rows for p, t in zip(b["positions"][r], b["targets"][r]) if t > 0)
        # targets are events 1..n-1 (event 0 has no predecessor) -> their input positions 0..n-2
        assert got == list(range(max(n - 1, 0))), (u, n, got)


def test_overlapping_windows_give_each_target_its_full_context():
    ds = toy((12,))  # items 1..9, 1, 2, 3; train_len = 10
    sp = leave_one_out(ds)
    win = TrainUsers(ds, sp, max_len=6, stride=2)
    b = win.collate(list(range(len(win))))
    # windows end at 10, 8, 6, 4, 2 events; only the newest 2 positions carry targets
    assert b["targets"][0].tolist() == [0, 0, 0, 0, 9, 1] and b["items"][0].tolist() == [4, 5, 6, 7, 8, 9]
    assert b["targets"][1].tolist() == [0, 0, 0, 0, 7, 8] and b["items"][1].tolist() == [2, 3, 4, 5, 6, 7]
