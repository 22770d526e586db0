"""The chunked / distributed evaluator against a naive per-user reference; top-K export round trip."""

from __future__ import annotations

import math
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crbr.data.dataset import EvalSet, SequenceDataset, leave_one_out, train_item_counts
from crbr.eval import Evaluator, export_topk

ROOT = Path(__file__).resolve().parents[2]
KS = (1, 3, 5, 10)


def random_dataset(rng, lens, n_items: int, user_ids: list[str], item_ids: list[str]) -> SequenceDataset:
    """Random item sequences of the given lengths (no timestamps, one action)."""
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    E = int(offsets[-1])
    return SequenceDataset(
        offsets=offsets,
        items=rng.integers(1, n_items + 1, E).astype(np.int32),
        actions=np.ones(E, dtype=np.int16),
        timestamps=None,
        user_ids=np.array(user_ids, dtype=object),
        item_ids=np.array([""] + item_ids, dtype=object),
        action_names=["<pad>", "click"],
    )


def random_problem(seed: int, n_users: int = 23, n_items: int = 17):
    """A dataset, a multi-target EvalSet (duplicates, repeats of the history), train counts and a
    score matrix (n_users, I) with many ties and a few -inf entries from the "model"."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(2, 12, n_users)
    ds = random_dataset(rng, lens, n_items, [f"u{u}" for u in range(n_users)], [f"i{i}" for i in range(1, n_items + 1)])
    users = np.sort(rng.choice(n_users, size=n_users - 3, replace=False))
    hist = np.array([rng.integers(1, lens[u]) for u in users], dtype=np.int64)
    n_t = rng.integers(1, 5, len(users))
    offs = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(n_t, out=offs[1:])
    # targets: half from the user's own sequence (so repeats of the history occur), half random
    tgt = []
    for u, k in zip(users, n_t):
        own = ds.user_items(u)
        tgt += [int(own[rng.integers(len(own))]) if rng.random() < 0.5 else int(rng.integers(1, n_items + 1)) for _ in range(k)]
    es = EvalSet(users.astype(np.int64), hist, offs, np.array(tgt, dtype=np.int32))
    counts = np.concatenate([[0], rng.integers(0, 4, n_items)])
    S = rng.integers(0, 4, (n_users, n_items + 1)).astype(np.float32)
    S[rng.random(S.shape) < 0.05] = -np.inf
    return ds, es, counts, S


def naive(ds, es, counts, S, ks, mask, n_buckets, k_list):
    """Reference: per-user loop, full argsort by (-score, id), set-based metrics."""
    I = S.shape[1]
    n_items = I - 1
    ids = np.arange(I)
    sums, lists = {}, []
    covered = {k: set() for k in ks}
    order_items = sorted(range(1, I), key=lambda i: (-counts[i], i))
    sizes = [n_items // n_buckets + (1 if b < n_items % n_buckets else 0) for b in range(n_buckets)]
    bucket, start = {}, 0
    for b, sz in enumerate(sizes):
        for i in order_items[start : start + sz]:
            bucket[i] = b
        start += sz
    b_hit, b_cnt = [0] * n_buckets, [0] * n_buckets
    for n in range(len(es)):
        u = es.users[n]
        s = S[u].astype(np.float32).copy()
        s[0] = -np.inf
        if mask:
            s[ds.user_items(u)[: es.hist_len[n]]] = -np.inf
        order = np.lexsort((ids, -s))
        order = [int(i) for i in order if s[i] > -np.inf]
        pos = {item: p + 1 for p, item in enumerate(order)}
        targets = sorted(set(int(t) for t in es.targets(n)))
        ranks = [pos.get(t, math.inf) for t in targets]
        m = {"MRR": 1 / min(ranks)}
        for k in ks:
            hits = [r for r in ranks if r <= k]
            m[f"HR@{k}"] = float(len(hits) > 0)
            m[f"Recall@{k}"] = len(hits) / len(targets)
            ideal = sum(1 / math.log2(i + 1) for i in range(1, min(len(targets), k) + 1))
            m[f"NDCG@{k}"] = sum(1 / math.log2(r + 1) for r in hits) / ideal
            covered[k].update(order[:k])
        for key, v in m.items():
            sums[key] = sums.get(key, 0.0) + v
        for t, r in zip(targets, ranks):
            b_cnt[bucket[t]] += 1
            b_hit[bucket[t]] += r <= 10
        lists.append((order + [0] * k_list)[:k_list])
    metrics = {k: v / len(es) for k, v in sums.items()}
    for k in ks:
        metrics[f"coverage@{k}"] = len(covered[k]) / n_items
    hr = [h / c if c else math.nan for h, c in zip(b_hit, b_cnt)]
    return metrics, np.array(lists), hr, b_cnt


def fn_for(S):
    return lambda batch: torch.from_numpy(S[batch["users"].numpy()])


def assert_same(r, metrics, lists=None, hr=None, cnt=None):
    assert set(r.metrics) == set(metrics)
    for k, v in metrics.items():
        assert r.metrics[k] == pytest.approx(v, abs=1e-12), k
    if lists is not None:
        np.testing.assert_array_equal(r.topk_items, lists)
    if hr is not None:
        np.testing.assert_allclose(r.bucket_hr10, hr, equal_nan=True)
        assert r.bucket_counts == cnt


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mask", [False, True])
def test_chunked_evaluator_equals_naive_reference(seed, mask):
    ds, es, counts, S = random_problem(seed)
    I = S.shape[1]
    # seeds differ in chunking: 1, 3 or 256 users per chunk; pair groups of 1..3 rows
    chunk_bytes = [4 * I, 4 * I * 3, 256 * 2**20][seed % 3]
    ev = Evaluator(ds, es, counts, ks=KS, mask_history=mask, max_len=4, batch_size=7, export_k=8, n_buckets=3, chunk_bytes=chunk_bytes)
    r = ev.evaluate(fn_for(S), export=True)
    metrics, lists, hr, cnt = naive(ds, es, counts, S, KS, mask, 3, 8)
    assert_same(r, metrics, lists, hr, cnt)
    assert r.n_users == len(es)
    np.testing.assert_array_equal(r.users, es.users)


def test_metrics_recomputed_from_topk_lists_equal_reported():
    ds, es, counts, S = random_problem(11, n_users=40, n_items=30)
    ev = Evaluator(ds, es, counts, ks=(5, 10), mask_history=True, export_k=30, chunk_bytes=4 * 31 * 4)
    r = ev.evaluate(fn_for(S), export=True)
    hr = ndcg = 0.0
    for n in range(len(es)):
        lst = list(r.topk_items[n])
        targets = set(int(t) for t in es.targets(n))
        ranks = [lst.index(t) + 1 for t in targets if t in lst]
        hr += any(rk <= 10 for rk in ranks)
        ideal = sum(1 / math.log2(i + 1) for i in range(1, min(len(targets), 10) + 1))
        ndcg += sum(1 / math.log2(rk + 1) for rk in ranks if rk <= 10) / ideal
    assert r.metrics["HR@10"] == pytest.approx(hr / len(es), abs=1e-12)
    assert r.metrics["NDCG@10"] == pytest.approx(ndcg / len(es), abs=1e-12)


# --------------------------------------------------------------------- export
def loo_problem(seed: int, n_users: int = 30, n_items: int = 25):
    rng = np.random.default_rng(seed)
    lens = rng.integers(3, 15, n_users)
    ds = random_dataset(rng, lens, n_items, [str(1000 + 7 * u) for u in range(n_users)],
                        [f"m{3 * i}" for i in range(1, n_items + 1)])
    split = leave_one_out(ds)
    S = rng.integers(0, 5, (n_users, n_items + 1)).astype(np.float32)
    return ds, split, train_item_counts(ds, split), S


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_export_round_trip(tmp_path, suffix):
    ds, split, counts, S = loo_problem(0)
    r = Evaluator(ds, split.test, counts, ks=(10,), export_k=12).evaluate(fn_for(S), export=True)
    path = export_topk(r, ds, tmp_path / f"top{suffix}")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    t = pq.read_table(path) if suffix == ".parquet" else pacsv.read_csv(
        path, convert_options=pacsv.ConvertOptions(column_types={"user_id": "string", "item_id": "string"})
    )
    assert t.column_names == ["user_id", "rank", "item_id", "score"]
    d = t.to_pydict()
    lists: dict[str, list[tuple[int, str]]] = {}
    for u, k, i in zip(d["user_id"], d["rank"], d["item_id"]):
        lists.setdefault(u, []).append((k, i))
    assert len(lists) == len(split.test) and all(len(v) == 12 for v in lists.values())
    hr = ndcg = 0.0
    for n, u in enumerate(split.test.users):
        target = ds.item_ids[split.test.targets(n)[0]]
        rank = next((k for k, i in lists[ds.user_ids[u]] if i == target), None)
        if rank is not None and rank <= 10:
            hr += 1
            ndcg += 1 / math.log2(rank + 1)
    assert r.metrics["HR@10"] == pytest.approx(hr / len(lists), abs=1e-12)
    assert r.metrics["NDCG@10"] == pytest.approx(ndcg / len(lists), abs=1e-12)
    if suffix == ".parquet":
        assert t.schema.metadata[b"crbr.protocol"].decode() == r.protocol


def test_verify_export_script_matches_reported_numbers(tmp_path):
    """Raw u.data and `user item ...` files -> dataset built here -> evaluate -> export -> checker."""
    rng = np.random.default_rng(5)
    n_users, n_items = 25, 40
    raw_rows = []  # (user, item, rating, ts) in file order, timestamps with many ties
    for u in rng.permutation(n_users):
        for _ in range(rng.integers(3, 12)):
            raw_rows.append((str(100 + u), str(500 + rng.integers(n_items)), int(rng.integers(1, 6)), int(rng.integers(0, 4))))
    order = rng.permutation(len(raw_rows))
    raw_rows = [raw_rows[i] for i in order]
    udata = tmp_path / "u.data"
    udata.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in raw_rows))
    # per-user stable time sort, then the same sequences in the `user item item ...` format
    seqs: dict[str, list[str]] = {}
    for u, i, _, t in sorted(raw_rows, key=lambda x: x[3]):  # sorted() is stable: file order on ties
        seqs.setdefault(u, []).append(i)
    seq_file = tmp_path / "seq.txt"
    seq_file.write_text("".join(f"{u} {' '.join(v)}\n" for u, v in seqs.items()))

    user_ids = sorted(seqs)
    item_ids = sorted({i for v in seqs.values() for i in v})
    item_row = {i: n + 1 for n, i in enumerate(item_ids)}
    lens = np.array([len(seqs[u]) for u in user_ids])
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    items = np.array([item_row[i] for u in user_ids for i in seqs[u]], dtype=np.int32)
    ds = SequenceDataset(
        offsets, items, np.ones(len(items), np.int16), None,
        np.array(user_ids, dtype=object), np.array([""] + item_ids, dtype=object), ["<pad>", "rating"],
    )
    split = leave_one_out(ds)
    S = rng.integers(0, 3, (ds.n_users, ds.n_items + 1)).astype(np.float32)
    r = Evaluator(ds, split.test, train_item_counts(ds, split), ks=(10,), mask_history=True, export_k=20).evaluate(
        fn_for(S), export=True
    )
    script = ROOT / "benchmarks" / "verify_export.py"
    # run the checker with crbr made unimportable: it must stand on its own
    blocked = "import runpy, sys; sys.modules['crbr'] = None; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    for fmt, raw in (("udata", udata), ("seq", seq_file)):
        for suffix in (".csv", ".parquet"):
            exp = export_topk(r, ds, tmp_path / f"export{suffix}")
            out = subprocess.run(
                [sys.executable, "-c", blocked, str(script), fmt, str(raw), str(exp)], capture_output=True, text=True, check=True
            ).stdout
            got = {k: float(v) for k, v in re.findall(r"^(HR@10|NDCG@10): (\S+)$", out, re.M)}
            assert got["HR@10"] == pytest.approx(r.metrics["HR@10"], abs=1e-12), out
            assert got["NDCG@10"] == pytest.approx(r.metrics["NDCG@10"], abs=1e-12), out


# ---------------------------------------------------------------- distributed
def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ds, es, counts, S = random_problem(3)
        ev = Evaluator(ds, es, counts, ks=KS, mask_history=True, export_k=8, n_buckets=3, chunk_bytes=4 * 18 * 2)
        r = ev.evaluate(fn_for(S), export=True)
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
            pickle.dump(r, f)
    finally:
        dist.destroy_process_group()


def test_distributed_equals_single_process(tmp_path):
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ds, es, counts, S = random_problem(3)
    single = Evaluator(ds, es, counts, ks=KS, mask_history=True, export_k=8, n_buckets=3).evaluate(fn_for(S), export=True)
    for rank in (0, 1):
        r = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        assert_same(r, single.metrics, hr=single.bucket_hr10, cnt=single.bucket_counts)
        assert r.n_users == single.n_users and r.n_targets == single.n_targets
        assert r.protocol == single.protocol
    r0 = pickle.loads((tmp_path / "rank0.pkl").read_bytes())
    np.testing.assert_array_equal(r0.topk_items, single.topk_items)
    np.testing.assert_array_equal(r0.topk_scores, single.topk_scores)
    np.testing.assert_array_equal(r0.users, single.users)
    assert pickle.loads((tmp_path / "rank1.pkl").read_bytes()).topk_items is None
