"""crbr.index: every index kind against the exact reference, scopes, save/load, merging, CLI."""

from __future__ import annotations

import logging
from collections import defaultdict

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crbr.index import (
    ExactIndex,
    IndexConfig,
    Retriever,
    Scope,
    SearchResult,
    VectorRetriever,
    build_index,
    load_index,
    merge_results,
    recall_at_k,
    search_multi,
)

faiss.omp_set_num_threads(1)
torch.set_num_threads(1)

N_ITEMS, D, N_CATS = 2000, 16, 12
KINDS = {
    "exact": {},
    "flat": {},
    "hnsw": dict(M=16, ef_construction=80, ef_search=64),
    "ivf_flat": dict(nlist=16, nprobe=4),
    "ivf_pq": dict(nlist=16, nprobe=4, pq_m=8, pq_nbits=4),
    "ivf_pq_refine": dict(nlist=16, nprobe=4, pq_m=8, pq_nbits=4, refine=4),
}
HYP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def kind_of(name: str) -> str:
    return "ivf_pq" if name.startswith("ivf_pq") else name


def random_categories(rng, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Item id -> 1..3 categories CSR over rows 0..n_rows-1 (row 0 = padding, none)."""
    counts = rng.integers(1, 4, n_rows)
    counts[0] = 0
    off = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=off[1:])
    cats = np.concatenate([rng.choice(N_CATS, c, replace=False) for c in counts]).astype(np.int32)
    return off, cats


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, D))
    V = (centers[rng.integers(0, 20, N_ITEMS + 1)] + 0.5 * rng.normal(size=(N_ITEMS + 1, D))).astype(np.float32)
    Q = (centers[rng.integers(0, 20, 40)] + 0.5 * rng.normal(size=(40, D))).astype(np.float32)
    cats = random_categories(rng, N_ITEMS + 1)
    indexes = {name: build_index(V, IndexConfig.from_params(kind_of(name), kw), item_categories=cats)
               for name, kw in KINDS.items()}
    return {"V": V, "Q": Q, "cats": cats, "indexes": indexes}


def item_cats(cats, i: int) -> set[int]:
    off, ids = cats
    return set(ids[off[i] : off[i + 1]].tolist())


def slow_topk(V: np.ndarray, Q: np.ndarray, k: int, allowed: set[int] | None = None):
    """The definition: score items 1..I-1 of V, sort each row by (-score, id), keep k."""
    ids = np.arange(1, len(V))
    keep = np.array([allowed is None or int(i) in allowed for i in ids], dtype=bool)
    S = Q @ V[1:][keep].T
    out_s = np.full((len(Q), k), -np.inf, np.float32)
    out_i = np.full((len(Q), k), -1, np.int64)
    for q in range(len(Q)):
        order = np.lexsort((ids[keep], -S[q]))[:k]
        out_s[q, : len(order)] = S[q][order]
        out_i[q, : len(order)] = ids[keep][order]
    return out_s, out_i


# --------------------------------------------------------------------------- exact reference
def test_exact_index_is_the_definition_with_ties():
    rng = np.random.default_rng(1)
    V = rng.integers(-1, 2, (301, 4)).astype(np.float32)  # few distinct scores: ties everywhere
    Q = rng.integers(-1, 2, (25, 4)).astype(np.float32)
    for chunk in (256 << 20, 4 * 300 * 3):  # one chunk, and chunks of 3 queries
        ix = build_index(V, "exact", chunk_bytes=chunk)
        for k in (1, 7, 50, 300, 400):
            s, i = slow_topk(V, Q, k)
            r = ix.search(Q, k)
            np.testing.assert_array_equal(r.ids, i)
            np.testing.assert_array_equal(r.scores, s)


def test_exact_topk_matches_torch_brute_force_on_continuous_data(world):
    r = world["indexes"]["exact"].search(world["Q"], 25)
    S = torch.from_numpy(world["Q"]) @ torch.from_numpy(world["V"][1:]).T
    v, i = torch.topk(S, 25)
    np.testing.assert_array_equal(r.ids, i.numpy() + 1)
    np.testing.assert_allclose(r.scores, v.numpy(), rtol=0, atol=0)


def test_padding_row_never_returned_and_short_results_are_padded():
    V = np.ones((6, 3), np.float32)
    V[0] = 100.0  # padding row would win every query if it were indexed
    for kind in ("exact", "flat", "hnsw"):
        r = build_index(V, kind).search(np.ones((2, 3)), 8)
        assert r.ids.tolist() == [[1, 2, 3, 4, 5, -1, -1, -1]] * 2
        assert np.isneginf(r.scores[:, 5:]).all() and (r.scores[:, :5] == 3).all()
        assert r.counts().tolist() == [5, 5]


def test_explicit_ids_in_any_order():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 8)).astype(np.float32)
    ids = rng.permutation(np.arange(1000, 1100))[:50]
    Q = rng.normal(size=(5, 8)).astype(np.float32)
    ref = np.asarray(ids)[np.argsort(-(Q @ X.T), axis=1)[:, :10]]
    for kind in ("exact", "flat"):
        ix = build_index(X, kind, ids=ids)
        r = ix.search(Q, 10)
        np.testing.assert_array_equal(r.ids, ref)
        r = ix.search(Q, 10, scope=Scope(items=ids[:3].tolist() + [5, -1]))  # unknown ids are ignored
        assert set(r.ids[r.ids >= 0].tolist()) == set(ids[:3].tolist())
    with pytest.raises(ValueError, match="unique"):
        build_index(X, "flat", ids=np.zeros(50, dtype=np.int64))


# --------------------------------------------------------------------------- FAISS vs exact
def test_flat_equals_exact(world):
    exact, flat = world["indexes"]["exact"], world["indexes"]["flat"]
    for nq in (5, 40):  # FAISS scores < 20 queries without BLAS, >= 20 with it
        e, f = exact.search(world["Q"][:nq], 30), flat.search(world["Q"][:nq], 30)
        np.testing.assert_array_equal(f.ids, e.ids)
        np.testing.assert_allclose(f.scores, e.scores, rtol=1e-5, atol=1e-5)
    # exact ties: integer vectors; FAISS alone keeps the higher ids among equal scores
    rng = np.random.default_rng(3)
    V = rng.integers(-2, 3, (501, 4)).astype(np.float32)
    Q = rng.integers(-2, 3, (30, 4)).astype(np.float32)
    ex, fl = build_index(V, "exact"), build_index(V, "flat")
    for nq in (3, 30):
        for k in (1, 10, 100):
            e, f = ex.search(Q[:nq], k), fl.search(Q[:nq], k)
            np.testing.assert_array_equal(f.ids, e.ids)
            np.testing.assert_array_equal(f.scores, e.scores)
    sc = Scope(categories=None, items=np.arange(0, 501, 3))
    e, f = ex.search(Q, 20, scope=sc), fl.tune(exact_below=0).search(Q, 20, scope=sc)
    np.testing.assert_array_equal(f.ids, e.ids)


@pytest.mark.parametrize("name,low", [("hnsw", 0.95), ("ivf_flat", 0.7), ("ivf_pq", 0.3), ("ivf_pq_refine", 0.6)])
def test_ann_recall_against_exact(world, name, low):
    exact, ix = world["indexes"]["exact"], world["indexes"][name]
    Q, k = world["Q"], 20
    e = exact.search(Q, k)
    r = ix.search(Q, k)
    rec = recall_at_k(r, e, exact.score_items(Q, r.ids))
    assert low <= rec <= 1.0, (name, rec)
    # wider search settings never make recall worse here, and IVF-Flat scanning every list is exact
    if name == "hnsw":
        ix.tune(ef_search=400)
        r2 = ix.search(Q, k)
        ix.tune(ef_search=64)
        assert recall_at_k(r2, e, exact.score_items(Q, r2.ids)) >= max(rec, 0.99)
    if name == "ivf_flat":
        ix.tune(nprobe=16)
        r2 = ix.search(Q, k)
        ix.tune(nprobe=4)
        assert recall_at_k(r2, e, exact.score_items(Q, r2.ids)) == 1.0
        np.testing.assert_array_equal(r2.ids, e.ids)
    assert (np.diff(r.scores, axis=1) <= 0).all()  # sorted descending


def test_recall_counts_ties_with_the_kth_as_hits():
    exact = SearchResult(np.array([[3.0, 2.0, 1.0]], np.float32), np.array([[5, 6, 7]]))
    approx = SearchResult(np.array([[3.0, 2.0, 1.0]], np.float32), np.array([[5, 6, 9]]))
    assert recall_at_k(approx, exact, np.array([[3.0, 2.0, 1.0]])) == 1.0  # 9 ties with the 3rd
    assert recall_at_k(approx, exact, np.array([[3.0, 2.0, 0.5]])) == pytest.approx(2 / 3)
    short = SearchResult(np.array([[3.0, -np.inf, -np.inf]], np.float32), np.array([[5, -1, -1]]))
    assert recall_at_k(short, short, np.array([[3.0, -np.inf, -np.inf]])) == 1.0


# --------------------------------------------------------------------------- scopes
@st.composite
def scopes(draw, n_queries: int):
    def one():
        return st.one_of(
            st.none(),
            st.builds(Scope, categories=st.lists(st.integers(0, N_CATS - 1), max_size=4)),  # out of range: an error
            st.builds(Scope, items=st.lists(st.integers(-1, N_ITEMS + 3), max_size=40)),
            st.builds(Scope, categories=st.lists(st.integers(0, N_CATS - 1), min_size=1, max_size=6),
                      items=st.lists(st.integers(0, N_ITEMS), min_size=0, max_size=600)),
        )

    if draw(st.booleans()):
        return draw(one())
    return draw(st.lists(one(), min_size=n_queries, max_size=n_queries))


def allowed_set(scope: Scope | None, cats) -> set[int] | None:
    if scope is None or (scope.categories is None and scope.items is None):
        return None
    ok = set(range(1, N_ITEMS + 1))
    if scope.categories is not None:
        want = set(scope.categories)
        ok = {i for i in ok if item_cats(cats, i) & want}
    if scope.items is not None:
        ok &= set(int(i) for i in scope.items)
    return ok


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("exact_below", [10_000, 0])
def test_scoped_search_never_leaves_its_scope(world, name, exact_below):
    ix = world["indexes"][name]
    Q, cats = world["Q"][:6], world["cats"]
    ix.tune(exact_below=exact_below)

    @HYP
    @given(scope=scopes(len(Q)), k=st.sampled_from([1, 5, 40]))
    def check(scope, k):
        r = ix.search(Q, k, scope=scope)
        per_query = scope if isinstance(scope, list) else [scope] * len(Q)
        for q, s in enumerate(per_query):
            allowed = allowed_set(s, cats)
            got = r.ids[q][r.ids[q] >= 0]
            assert len(set(got.tolist())) == len(got)  # no duplicates
            assert 0 not in got
            if allowed is not None:
                assert set(got.tolist()) <= allowed, (name, s)
                # complete: short filtered searches are re-run exactly over the scope
                assert len(got) == min(k, len(allowed))
            assert (r.ids[q][len(got):] == -1).all() and np.isneginf(r.scores[q][len(got):]).all()

    try:
        check()
    finally:
        ix.tune(exact_below=10_000)


@pytest.mark.parametrize("name", ["exact", "flat"])
def test_scoped_exact_search_is_the_masked_definition(world, name):
    ix, V, Q, cats = world["indexes"][name], world["V"], world["Q"][:8], world["cats"]
    ix.tune(exact_below=0)
    try:
        for scope in (Scope(categories=[2]), Scope(categories=[0, 5, 7]), Scope(items=np.arange(1, 30))):
            allowed = allowed_set(scope, cats)
            s, i = slow_topk(V, Q, 50, allowed)
            r = ix.search(Q, 50, scope=scope)
            np.testing.assert_array_equal(r.ids, i)
            np.testing.assert_allclose(r.scores, s, rtol=1e-5, atol=1e-5)
        # a small scope and a large k: every in-scope item comes back
        r = ix.search(Q, 100, scope=Scope(items=[7, 3, 3, 11]))
        assert (np.sort(r.ids[:, :3], axis=1) == [3, 7, 11]).all() and (r.ids[:, 3:] == -1).all()
    finally:
        ix.tune(exact_below=10_000)


def test_category_scope_needs_categories_and_accepts_names():
    V = np.random.default_rng(4).normal(size=(11, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="item categories"):
        build_index(V, "flat").search(V[:2], 3, scope=Scope(categories=[1]))

    class Items:  # like a SequenceDataset
        cat_offsets = np.arange(12)
        cat_ids = np.array([0] + [1, 2] * 5, dtype=np.int32)
        category_names = ["none", "shoes", "hats"]

    ix = build_index(V, "exact", item_categories=Items)
    r = ix.search(V[:2], 10, scope=Scope(categories=["hats"]))
    assert set(r.ids[0][r.ids[0] >= 0].tolist()) == {2, 4, 6, 8, 10}
    with pytest.raises(KeyError, match="socks"):
        ix.search(V[:2], 3, scope=Scope(categories=["socks"]))
    with pytest.raises(ValueError, match="one Scope"):
        ix.search(V[:2], 3, scope=[None])


def test_violating_backend_results_are_dropped():
    class Leaky(ExactIndex):  # ignores the scope entirely
        def _search_positions(self, queries, k, allowed):
            return super()._search_positions(queries, k, None)

    V = np.random.default_rng(5).normal(size=(101, 4)).astype(np.float32)
    ix = Leaky(V[1:], np.arange(1, 101))
    r = ix.search(V[:3], 10, scope=Scope(items=np.arange(1, 101, 2)))
    got = r.ids[r.ids >= 0]
    assert len(got) and (got % 2 == 1).all()
    assert all((row[: (row >= 0).sum()] >= 0).all() for row in r.ids)  # survivors packed to the front


def test_out_of_range_category_id_is_an_error():
    V = np.random.default_rng(6).normal(size=(11, 4)).astype(np.float32)

    class Items:
        cat_offsets = np.arange(12)
        cat_ids = np.array([0] + [1, 2] * 5, dtype=np.int32)
        category_names = ["none", "shoes", "hats", "socks"]  # "socks" (3): valid, no item has it

    ix = build_index(V, "exact", item_categories=Items)
    for bad in (99, -1, "99", 4):
        with pytest.raises(ValueError, match=rf"category id {int(bad)} is out of range: ids are 0..3 \(4 categories\)"):
            ix.search(V[:2], 3, scope=Scope(categories=[1, bad]))
        with pytest.raises(ValueError, match="out of range"):
            ix.search(V[:2], 3, scope=[Scope(categories=[bad]), None])
    assert ix.category_id("3") == 3 and ix.category_id(" 2") == 2
    unnamed = build_index(V, "exact", item_categories=(Items.cat_offsets, Items.cat_ids))
    with pytest.raises(ValueError, match=r"category id 3 is out of range: ids are 0..2 \(3 categories\)"):
        unnamed.search(V[:2], 3, scope=Scope(categories=[3]))
    with pytest.raises(ValueError, match="item categories"):
        build_index(V, "exact").category_id(0)
    with pytest.raises(ValueError, match="item categories"):
        build_index(V, "exact").search(V[:2], 3, scope=Scope(categories=[]))
    r = ix.search(V[:3], 10, scope=[Scope(categories=["hats"]), Scope(categories=[2]), Scope(categories=["2", "shoes"])])
    assert set(r.ids[0][:5].tolist()) == set(r.ids[1][:5].tolist()) == {2, 4, 6, 8, 10}  # names in per-query scopes
    assert set(r.ids[2][r.ids[2] >= 0].tolist()) == set(range(1, 11))


def test_scope_selecting_nothing_is_empty_with_a_warning(caplog):
    V = np.random.default_rng(7).normal(size=(11, 4)).astype(np.float32)
    off, cat = np.arange(12), np.array([0] + [1, 2] * 5, dtype=np.int32)
    ix = build_index(V, "exact", item_categories=(off, cat), ids=None)
    for scope, shown in ((Scope(items=[50, 60]), "2 item id(s) [50, 60]"),
                         (Scope(categories=[0]), "categories [0]"),  # only the padding row has category 0
                         (Scope(categories=[1], items=[2, 4]), "categories [1]; 2 item id(s) [2, 4]")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="crbr.index"):
            r = ix.search(V[:3], 5, scope=scope)
        assert (r.ids == -1).all() and np.isneginf(r.scores).all()
        assert any("selects none of the indexed items" in m and shown in m for m in caplog.messages), caplog.messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="crbr.index"):
        assert (ix.search(V[:3], 5, scope=Scope(categories=[1])).ids >= 0).all()
    assert not caplog.messages


# --------------------------------------------------------------------------- NaN / inf
@pytest.mark.parametrize("name", list(KINDS))
def test_non_finite_queries_are_an_error_naming_the_rows(world, name):
    ix, Q = world["indexes"][name], world["Q"][:6].copy()
    Q[2, 3] = np.nan
    Q[4, 0], Q[4, 1] = np.inf, -np.inf
    with pytest.raises(ValueError, match=r"queries: 2 query row\(s\) hold non-finite values: "
                                         r"query row 2 \(NaN\); query row 4 \(inf, -inf\)"):
        ix.search(Q, 5)
    with pytest.raises(ValueError, match=r"query row 2 \(NaN\)"):
        ix.search(torch.from_numpy(Q), 5, scope=Scope(categories=[1]))
    assert (ix.search(Q[[0, 1, 3, 5]], 5).ids >= 0).all()  # the finite rows are fine


def test_non_finite_queries_elsewhere(world):
    Q = world["Q"][:3].copy()
    Q[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"query row 1 \(NaN\)"):
        world["indexes"]["exact"].score_items(Q, np.ones((3, 2), np.int64))
    multi = np.stack([world["Q"][:3], Q], 1)  # (3, 2, d): query 1, vector 1 is bad
    with pytest.raises(ValueError, match=r"vectors: 1 \(query, vector\)\(s\) hold non-finite values: \(query, vector\) \(1, 1\) \(NaN\)"):
        search_multi(world["indexes"]["flat"], multi, 5)


@pytest.mark.parametrize("name", list(KINDS))
def test_non_finite_item_vectors_are_an_error_naming_the_items(world, name):
    V = world["V"].copy()
    V[5, 2] = np.nan
    V[9] = np.inf
    V[0] = np.nan  # the padding row is not indexed
    with pytest.raises(ValueError, match=r"vectors: 2 item id\(s\) hold non-finite values: item id 5 \(NaN\); item id 9 \(inf\)"):
        build_index(V, IndexConfig.from_params(kind_of(name), KINDS[name]))
    with pytest.raises(ValueError, match=r"item id 42 \(NaN\)"):
        build_index(V[[1, 5]], kind_of(name), ids=[7, 42])


# --------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("name", list(KINDS))
def test_save_load_round_trip(world, name, tmp_path):
    ix, Q = world["indexes"][name], world["Q"]
    scope = [Scope(categories=[1, 4]), None, Scope(items=[5, 6, 7])] * 4 + [None] * (len(Q) - 12)
    before = ix.search(Q, 15), ix.search(Q, 15, scope=scope)
    path = ix.save(tmp_path / "idx")
    ix.save(path)  # overwrite in place
    back = load_index(path)
    assert type(back) is type(ix) and back.config == ix.config and back.ntotal == ix.ntotal
    for a, b in zip(before, (back.search(Q, 15), back.search(Q, 15, scope=scope))):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary leftovers


def test_config_validation_and_tuning(world):
    with pytest.raises(ValueError, match="kind"):
        IndexConfig(kind="annoy")
    with pytest.raises(ValueError, match="unknown index setting"):
        IndexConfig.from_params("hnsw", {"efSearch": "3"})
    assert IndexConfig.from_params("ivf_pq", {"nlist": "64", "refine": "2.5"}).refine == 2.5
    with pytest.raises(ValueError, match="search-time"):
        world["indexes"]["hnsw"].tune(M=8)
    plain = world["indexes"]["ivf_pq"]
    with pytest.raises(ValueError, match="refine"):
        plain.tune(refine=2).search(world["Q"], 5)
    plain.tune(refine=0)
    with pytest.raises(ValueError, match="divide"):
        build_index(world["V"], "ivf_pq", pq_m=5)


def test_refine_index_searched_without_refine_uses_the_pq_part(world):
    ref, plain, Q = world["indexes"]["ivf_pq_refine"], world["indexes"]["ivf_pq"], world["Q"]
    ref.tune(refine=0)
    try:
        a, b = ref.search(Q, 10), plain.search(Q, 10)
    finally:
        ref.tune(refine=4)
    np.testing.assert_array_equal(a.ids, b.ids)  # same seed, same training sample, same codes


# --------------------------------------------------------------------------- merging
def slow_merge(results, k, quotas):
    Q = len(results[0])
    out = []
    for q in range(Q):
        best: dict[int, tuple[float, int]] = {}
        for j, r in enumerate(results):
            for s, i in zip(r.scores[q].tolist(), r.ids[q].tolist()):
                if i >= 0 and (i not in best or s > best[i][0]):
                    best[i] = (s, j)
        count: dict[int, int] = defaultdict(int)
        row = []
        for i, (s, j) in sorted(best.items(), key=lambda t: (-t[1][0], t[0])):
            if quotas[j] is not None and count[j] >= quotas[j]:
                continue
            count[j] += 1
            row.append((i, s, j))
        out.append(row[:k])
    return out


@st.composite
def result_lists(draw):
    Q = draw(st.integers(1, 4))
    n = draw(st.integers(1, 4))
    out = []
    for _ in range(n):
        w = draw(st.integers(1, 7))
        ids = np.array(draw(st.lists(st.integers(-1, 12), min_size=Q * w, max_size=Q * w)), np.int64).reshape(Q, w)
        s = np.array(draw(st.lists(st.integers(-3, 3), min_size=Q * w, max_size=Q * w)), np.float32).reshape(Q, w)
        out.append(SearchResult(np.where(ids < 0, -np.inf, s).astype(np.float32), ids))
    return out


@HYP
@given(results=result_lists(), k=st.integers(1, 12), data=st.data())
def test_merge_results_matches_slow_reference(results, k, data):
    quota = data.draw(st.one_of(st.none(), st.integers(0, 5),
                                st.lists(st.one_of(st.none(), st.integers(0, 5)), min_size=len(results), max_size=len(results))))
    quotas = [quota] * len(results) if not isinstance(quota, list) else quota
    m = merge_results(results, k, quota)
    ref = slow_merge(results, k, quotas)
    assert m.ids.shape == m.scores.shape == m.sources.shape == (len(results[0]), k)
    for q, row in enumerate(ref):
        n = len(row)
        assert m.ids[q, :n].tolist() == [i for i, _, _ in row]
        assert m.scores[q, :n].tolist() == [s for _, s, _ in row]
        assert m.sources[q, :n].tolist() == [j for _, _, j in row]
        assert (m.ids[q, n:] == -1).all() and np.isneginf(m.scores[q, n:]).all() and (m.sources[q, n:] == -1).all()
        got = m.ids[q, :n]
        assert len(set(got.tolist())) == n  # no duplicates
        for j, qj in enumerate(quotas):
            assert qj is None or (m.sources[q, :n] == j).sum() <= qj


def test_multi_vector_search_is_exact_max_over_vectors(world):
    ix, V = world["indexes"]["exact"], world["V"]
    rng = np.random.default_rng(6)
    T = 3
    U = rng.normal(size=(7, T, D)).astype(np.float32)
    r = search_multi(ix, U, 25)
    S = np.einsum("qtd,nd->qtn", U, V[1:]).max(1)  # (Q, n) max over vectors
    for q in range(len(U)):
        order = np.lexsort((np.arange(1, N_ITEMS + 1), -S[q]))[:25]
        np.testing.assert_array_equal(r.ids[q], order + 1)
        np.testing.assert_allclose(r.scores[q], S[q][order], rtol=1e-5)
        assert ((r.sources[q] >= 0) & (r.sources[q] < T)).all()
    # scoped: one scope per user, repeated over its vectors
    scope = [Scope(categories=[c]) for c in range(7)]
    r = search_multi(ix, U, 10, scope=scope, per_vector_k=10)
    for q in range(7):
        assert all(q in item_cats(world["cats"], int(i)) for i in r.ids[q] if i >= 0)


def test_vector_retriever(world):
    ret = VectorRetriever(world["indexes"]["flat"], per_vector_k=20, quota=4)
    assert isinstance(ret, Retriever)
    Q = torch.from_numpy(world["Q"][:5])
    single = ret.retrieve(Q, 10)
    np.testing.assert_array_equal(single.ids, world["indexes"]["exact"].search(world["Q"][:5], 10).ids)
    multi = ret.retrieve(torch.stack([Q, -Q, Q], 1), 10)  # (5, 3, d)
    assert multi.ids.shape == (5, 10) and all(np.bincount(row[row >= 0], minlength=3).max() <= 4 for row in multi.sources)


# --------------------------------------------------------------------------- CLI
def test_cli_build_and_retrieve(world, tmp_path):
    from crbr.cli.main import main
    from crbr.data.dataset import SequenceDataset

    off, cat = world["cats"]
    ds = SequenceDataset(
        offsets=np.array([0, 1], np.int64), items=np.array([1], np.int32), actions=np.array([1], np.int16),
        timestamps=None, user_ids=np.array(["u"], dtype=object),
        item_ids=np.array([""] + [f"i{i}" for i in range(1, N_ITEMS + 1)], dtype=object), action_names=["<pad>", "click"],
        cat_offsets=off, cat_ids=cat, category_names=[f"c{c}" for c in range(N_CATS)],
    )
    ds.save(tmp_path / "ds")
    np.save(tmp_path / "v.npy", world["V"])
    np.save(tmp_path / "q.npy", world["Q"])
    assert main(["index", "build", "--vectors", str(tmp_path / "v.npy"), "--kind", "hnsw", "--param", "M=8",
                 "--param", "ef_search=32", "--categories-from", str(tmp_path / "ds"), "--threads", "1",
                 "--out", str(tmp_path / "idx")]) == 0
    ix = load_index(tmp_path / "idx")
    assert ix.config.M == 8 and ix.config.ef_search == 32 and ix.category_names[3] == "c3"
    assert main(["retrieve", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "-k", "7",
                 "--categories", "c3,5", "--param", "ef_search=64", "--out", str(tmp_path / "top.parquet")]) == 0
    t = pq.read_table(tmp_path / "top.parquet").to_pydict()
    ref = ix.tune(ef_search=64).search(world["Q"], 7, scope=Scope(categories=[3, 5]))
    assert t["item_id"] == ref.ids.reshape(-1).tolist() and t["rank"][:7] == list(range(1, 8))
    assert all(item_cats(world["cats"], i) & {3, 5} for i in t["item_id"])
    assert main(["retrieve", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "-k", "3",
                 "--out", str(tmp_path / "top.csv")]) == 0
    assert (tmp_path / "top.csv").read_text().splitlines()[0].replace('"', "") == "query,rank,item_id,score"
    assert main(["retrieve", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"),
                 "--param", "M=3", "--out", str(tmp_path / "x.csv")]) == 2


def test_cli_retrieve_rejects_an_out_of_range_category(world, tmp_path, capsys):
    from crbr.cli.main import main

    ix = build_index(world["V"][:50], "exact", item_categories=(world["cats"][0][:51], world["cats"][1][: world["cats"][0][50]]))
    ix.save(tmp_path / "idx")
    np.save(tmp_path / "q.npy", world["Q"][:3])
    n = ix.n_categories
    for bad in ("99", "-1", str(n)):
        args = ["retrieve", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "-k", "3",
                "--categories", f"1,{bad}", "--out", str(tmp_path / "x.csv")]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"category id {int(bad)} is out of range: ids are 0..{n - 1} ({n} categories)" in err, err
    assert not (tmp_path / "x.csv").exists()
