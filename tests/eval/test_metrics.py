"""Hand-computed full-ranking metrics: ties, masked history, multi-target users, coverage, buckets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crbr.data.dataset import EvalSet, SequenceDataset
from crbr.eval import Evaluator, idcg_table, popularity_buckets, target_ranks, topk_ordered, user_metrics

L2 = math.log2


def make_ds(seqs: list[list[int]], n_items: int) -> SequenceDataset:
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    items = np.array([i for s in seqs for i in s], dtype=np.int32)
    ds = SequenceDataset(
        offsets=offsets,
        items=items,
        actions=np.ones(len(items), dtype=np.int16),
        timestamps=None,
        user_ids=np.array([f"user{u}" for u in range(len(seqs))], dtype=object),
        item_ids=np.array([""] + [f"item{i}" for i in range(1, n_items + 1)], dtype=object),
        action_names=["<pad>", "click"],
    )
    ds.validate()
    return ds


def make_es(users, hist_len, targets: list[list[int]]) -> EvalSet:
    offs = np.zeros(len(targets) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in targets], out=offs[1:])
    return EvalSet(
        users=np.asarray(users, dtype=np.int64),
        hist_len=np.asarray(hist_len, dtype=np.int64),
        target_offsets=offs,
        target_items=np.array([i for t in targets for i in t], dtype=np.int32),
    )


# 3 users, 6 items (I = 7). Column 0 gets the highest score on purpose: padding must be ignored.
#   user0: history [1, 2], target 3            (item 4 ties with the target but has a higher id)
#   user1: history [4],    target 5            (items 2, 3, 5, 6 tie at 0.6: target ranked 3rd)
#   user2: history [6, 1], targets {1, 3, 2}   (multi-target; item 1 is a repeat of the history)
SCORES = torch.tensor(
    [
        [100.0, 0.9, 0.8, 0.5, 0.5, 0.7, 0.1],
        [100.0, 0.3, 0.6, 0.6, 0.2, 0.6, 0.6],
        [100.0, 0.95, 0.1, 0.4, 0.9, 0.0, 0.5],
    ]
)
KS = (1, 2, 3, 5)


def hand_problem(mask: bool, n_buckets: int = 3, dtype=torch.float32, **kw) -> Evaluator:
    ds = make_ds([[1, 2, 3], [4, 5], [6, 1, 3, 2]], n_items=6)
    es = make_es([0, 1, 2], [2, 1, 2], [[3], [5], [1, 3, 2]])
    counts = np.array([0, 10, 5, 5, 1, 7, 0])  # buckets by popularity: {1, 5}, {2, 3}, {4, 6}
    return Evaluator(ds, es, counts, ks=KS, mask_history=mask, n_buckets=n_buckets, export_k=5, **kw)


def score_fn(batch):
    return SCORES[batch["users"]]


def test_hand_example_unmasked():
    # ranks: user0 t3 -> 4 (1, 2, 5 score higher; 4 ties but id 4 > 3); user1 t5 -> 3 (2, 3 tie, lower id);
    # user2 t1 -> 1, t3 -> 4, t2 -> 5 (order 1, 4, 6, 3, 2, 5)
    r = hand_problem(mask=False).evaluate(score_fn, export=True)
    idcg3 = 1 + 1 / L2(3) + 1 / L2(4)
    expected = {
        "HR@1": 1 / 3,
        "HR@2": 1 / 3,
        "HR@3": 2 / 3,
        "HR@5": 1.0,
        "Recall@1": (1 / 3) / 3,
        "Recall@2": (1 / 3) / 3,
        "Recall@3": (0 + 1 + 1 / 3) / 3,
        "Recall@5": 1.0,
        "NDCG@1": 1 / 3,
        "NDCG@2": (0 + 0 + 1 / (1 + 1 / L2(3))) / 3,
        "NDCG@3": (0 + 1 / L2(4) + 1 / idcg3) / 3,
        "NDCG@5": (1 / L2(5) + 1 / L2(4) + (1 + 1 / L2(5) + 1 / L2(6)) / idcg3) / 3,
        "MRR": (1 / 4 + 1 / 3 + 1 / 1) / 3,
        "coverage@1": 2 / 6,  # {1, 2}
        "coverage@2": 4 / 6,  # {1, 2} u {2, 3} u {1, 4}
        "coverage@3": 6 / 6,
        "coverage@5": 6 / 6,
    }
    assert r.metrics.keys() == expected.keys()
    for k, v in expected.items():
        assert r.metrics[k] == pytest.approx(v, abs=1e-12), k
    assert r.n_users == 3 and r.n_targets == 5
    np.testing.assert_array_equal(r.topk_items, [[1, 2, 5, 3, 4], [2, 3, 5, 6, 1], [1, 4, 6, 3, 2]])
    np.testing.assert_array_equal(r.users, [0, 1, 2])
    # the catalogue has 6 items: every reachable target is in the top 10
    assert r.bucket_counts == [2, 3, 0]
    assert r.bucket_hr10[:2] == [1.0, 1.0] and math.isnan(r.bucket_hr10[2])
    assert "history masked: no" in r.protocol and "full ranking over 6 items" in r.protocol
    assert "ties: lower item id first" in str(r) and "users: 3" in str(r)


def test_hand_example_masked_history():
    # masked: user0 {1, 2} -> order 5, 3, 4, 6: t3 rank 2; user1 {4} -> t5 rank 3;
    # user2 {6, 1} -> order 4, 3, 2, 5: t1 unreachable (repeat), t3 rank 2, t2 rank 3
    r = hand_problem(mask=True).evaluate(score_fn, export=True)
    idcg2, idcg3 = 1 + 1 / L2(3), 1 + 1 / L2(3) + 1 / L2(4)
    expected = {
        "HR@1": 0.0,
        "HR@2": 2 / 3,
        "HR@3": 1.0,
        "HR@5": 1.0,
        "Recall@1": 0.0,
        "Recall@2": (1 + 0 + 1 / 3) / 3,
        "Recall@3": (1 + 1 + 2 / 3) / 3,
        "Recall@5": (1 + 1 + 2 / 3) / 3,
        "NDCG@1": 0.0,
        "NDCG@2": (1 / L2(3) + 0 + (1 / L2(3)) / idcg2) / 3,
        "NDCG@3": (1 / L2(3) + 1 / L2(4) + (1 / L2(3) + 1 / L2(4)) / idcg3) / 3,
        "NDCG@5": (1 / L2(3) + 1 / L2(4) + (1 / L2(3) + 1 / L2(4)) / idcg3) / 3,
        "MRR": (1 / 2 + 1 / 3 + 1 / 2) / 3,
        "coverage@1": 3 / 6,  # {5, 2, 4}
        "coverage@2": 4 / 6,  # {5, 3, 2, 4}
        "coverage@3": 4 / 6,  # top-3 lists [5, 3, 4], [2, 3, 5], [4, 3, 2]
        "coverage@5": 6 / 6,  # adds 6 (4th for user0) and 1 (5th for user1)
    }
    for k, v in expected.items():
        assert r.metrics[k] == pytest.approx(v, abs=1e-12), k
    # only 4 rankable items remain for user0 and user2: the 5th position is empty (id 0)
    np.testing.assert_array_equal(r.topk_items, [[5, 3, 4, 6, 0], [2, 3, 5, 6, 1], [4, 3, 2, 5, 0]])
    assert np.isneginf(r.topk_scores[0, 4]) and np.isneginf(r.topk_scores[2, 4])
    # buckets {1, 5}, {2, 3}, {4, 6}: pairs (t5 hit, t1 miss) | (t3, t3, t2 all hit) | none
    assert r.bucket_counts == [2, 3, 0]
    assert r.bucket_hr10[:2] == [0.5, 1.0] and math.isnan(r.bucket_hr10[2])
    assert "history masked: yes" in r.protocol


def test_any_float_dtype_and_small_chunks_give_the_same_result():
    ref = hand_problem(mask=True).evaluate(score_fn, export=True)
    # one user per chunk, one pair per comparison group; bf16 keeps these ties and orders exactly
    ev = hand_problem(mask=True, chunk_bytes=1)
    assert ev.chunk_users == 1
    r = ev.evaluate(lambda b: SCORES[b["users"]].to(torch.bfloat16), export=True)
    assert r.metrics.keys() == ref.metrics.keys()
    for k in ref.metrics:
        assert r.metrics[k] == pytest.approx(ref.metrics[k], abs=1e-12), k
    np.testing.assert_array_equal(r.topk_items, ref.topk_items)


def test_duplicate_targets_count_once():
    ds = make_ds([[1, 2, 3], [4, 5]], n_items=6)
    counts = np.zeros(7, dtype=np.int64)
    one = Evaluator(ds, make_es([0, 1], [2, 1], [[3, 1], [5]]), counts, ks=KS, n_buckets=2)
    dup = Evaluator(ds, make_es([0, 1], [2, 1], [[3, 1, 3, 1], [5, 5]]), counts, ks=KS, n_buckets=2)
    a, b = one.evaluate(score_fn), dup.evaluate(score_fn)
    assert a.metrics == b.metrics and a.n_targets == b.n_targets == 3


def test_score_fn_contract_is_checked():
    ev = hand_problem(mask=False)
    with pytest.raises(ValueError, match="scores"):
        ev.evaluate(lambda b: SCORES[b["users"]][:, :5])
    with pytest.raises(ValueError, match="NaN"):
        ev.evaluate(lambda b: torch.full((len(b["users"]), 7), float("nan")))
    with pytest.raises(TypeError):
        ev.evaluate(lambda b: torch.ones((len(b["users"]), 7), dtype=torch.int64))


def test_popularity_buckets_by_hand():
    # items 1..12 by count desc, ties by id: 5(9) 11(8) 1(5) 3(5) 8(3) 9(3) 4(2) 12(2) 7(1) 2 6 10(0)
    counts = np.array([0, 5, 0, 5, 2, 9, 0, 1, 3, 3, 0, 8, 2])
    b4 = popularity_buckets(counts, 4)
    assert b4[0] == -1
    assert [sorted(np.nonzero(b4 == b)[0].tolist()) for b in range(4)] == [[1, 5, 11], [3, 8, 9], [4, 7, 12], [2, 6, 10]]
    b5 = popularity_buckets(counts, 5)  # 12 items in 5 groups: sizes 3, 3, 2, 2, 2
    assert [sorted(np.nonzero(b5 == b)[0].tolist()) for b in range(5)] == [[1, 5, 11], [3, 8, 9], [4, 12], [2, 7], [6, 10]]
    with pytest.raises(ValueError):
        popularity_buckets(counts, 13)


def test_bucket_hr10_and_coverage_by_hand():
    counts = np.array([0, 5, 0, 5, 2, 9, 0, 1, 3, 3, 0, 8, 2])
    ds = make_ds([[1, 3], [2, 11], [4, 12], [5, 7]], n_items=12)
    es = make_es([0, 1, 2, 3], [1, 1, 1, 1], [[3], [11], [12], [7]])
    ev = Evaluator(ds, es, counts, ks=(10,), n_buckets=4)
    # score = -id: every user ranks items by id, so rank(t) = t and every top-10 is items 1..10
    r = ev.evaluate(lambda b: -torch.arange(13, dtype=torch.float32).expand(len(b["users"]), 13))
    # targets 3 -> bucket 1 (hit), 11 -> bucket 0 (miss), 12 -> bucket 2 (miss), 7 -> bucket 2 (hit)
    assert r.bucket_counts == [1, 1, 2, 0]
    assert r.bucket_hr10[:3] == [0.0, 1.0, 0.5] and math.isnan(r.bucket_hr10[3])
    assert r.metrics["HR@10"] == 0.5
    assert r.metrics["MRR"] == pytest.approx((1 / 3 + 1 / 11 + 1 / 12 + 1 / 7) / 4)
    assert r.metrics["coverage@10"] == pytest.approx(10 / 12)


def test_user_metrics_and_idcg_kernel():
    np.testing.assert_allclose(idcg_table(3), [0, 1, 1 + 1 / L2(3), 1 + 1 / L2(3) + 0.5])
    # user0: ranks {2}; user1: ranks {1, inf (unreachable), 7}
    m = user_metrics(np.array([2.0, 1.0, np.inf, 7.0]), np.array([0, 1, 4]), ks=(1, 5, 10))
    np.testing.assert_allclose(m["HR@1"], [0, 1])
    np.testing.assert_allclose(m["Recall@5"], [1, 1 / 3])
    np.testing.assert_allclose(m["Recall@10"], [1, 2 / 3])
    np.testing.assert_allclose(m["NDCG@10"], [1 / L2(3), (1 + 1 / L2(8)) / (1 + 1 / L2(3) + 0.5)])
    np.testing.assert_allclose(m["MRR"], [0.5, 1.0])


def test_target_ranks_ties_and_grouping():
    s = torch.tensor([[-math.inf, 1.0, 2.0, 1.0, 1.0, -math.inf], [-math.inf, 0.0, 0.0, 0.0, 0.0, 0.0]])
    rows, tgt = torch.tensor([0, 0, 0, 0, 1, 1]), torch.tensor([1, 2, 4, 5, 1, 5])
    expected = [2, 1, 4, np.inf, 1, 5]
    np.testing.assert_array_equal(target_ranks(s, rows, tgt, 0, method="rows"), expected)
    for max_elems in (1, 6, 10_000):  # the vectorized (accelerator) path, in groups of 1, 1 and all rows
        np.testing.assert_array_equal(target_ranks(s, rows, tgt, max_elems, method="masks"), expected)


@pytest.mark.parametrize("seed", range(3))
def test_target_rank_methods_agree_with_a_sort(seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 4, (9, 30), generator=g).float()
    s[torch.rand(9, 30, generator=g) < 0.1] = -math.inf
    s[:, 0] = -math.inf
    rows = torch.randint(0, 9, (40,), generator=g)
    tgt = torch.randint(1, 30, (40,), generator=g)
    want = []
    for r, t in zip(rows.tolist(), tgt.tolist()):
        row = s[r].numpy()
        order = [int(i) for i in np.lexsort((np.arange(30), -row)) if row[i] > -np.inf]
        want.append(order.index(t) + 1 if t in order else np.inf)
    np.testing.assert_array_equal(target_ranks(s, rows, tgt, 0, method="rows"), want)
    np.testing.assert_array_equal(target_ranks(s, rows, tgt, 60, method="masks"), want)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # CUDA rejects in-place writes from an aliasing view


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_topk_ordered_repairs_ties_across_the_boundary(seed, device):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 3, (16, 40), generator=g).float()
    s[:, 0] = -math.inf
    s[3, 5:] = -math.inf  # a row with fewer rankable items than k
    for k in (1, 7, 20, 39, 40):
        vals, idx = topk_ordered(s.to(device), k)
        vals, idx = vals.cpu(), idx.cpu()
        for b in range(16):
            row = s[b].numpy()
            order = np.lexsort((np.arange(40), -row))
            order = order[np.isfinite(row[order])][:k]
            want = np.zeros(k, dtype=np.int64)
            want[: len(order)] = order
            np.testing.assert_array_equal(idx[b].numpy(), want)
            np.testing.assert_array_equal(vals[b].numpy(), np.where(want > 0, row[want], -np.inf))
