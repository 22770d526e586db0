"""The snapshot's per-request lookups: original ids to internal ids (ids longer than every
catalogue id included), and the sorted-unique and membership helpers that replace np.unique and
np.isin on the request path."""

from __future__ import annotations

import numpy as np
import pytest

from crbr.serve import ModelHost
from crbr.serve.model_host import in_sorted, sorted_unique


@pytest.fixture(scope="module")
def snapshot(world):
    return ModelHost(str(world.sasrec), catalogue=str(world.sasrec_catalogue)).load()


def test_original_ids_map_to_internal_ids_and_longer_ids_match_nothing(world, snapshot):
    names = [str(x) for x in world.ds.item_ids[1:]]
    longest = max(names, key=len)  # cut to the catalogue's width, longest + "0" would be `longest`
    queries = [names[0], names[5], longest, longest + "0", longest + "x" * 300, "", "ghost"]
    rows = snapshot.lookup(queries)
    assert rows.tolist() == [1, 6, names.index(longest) + 1, 0, 0, 0, 0] and rows.dtype == np.int64
    assert snapshot.lookup([longest + "0"]).tolist() == [0]
    assert snapshot.lookup(names).tolist() == list(range(1, len(names) + 1))
    assert snapshot.original(snapshot.lookup(names[:4])) == names[:4]


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000])
def test_sorted_unique_and_in_sorted_equal_numpy(n):
    rng = np.random.default_rng(n)
    a = rng.integers(-1, max(n // 2, 1), n)
    u = sorted_unique(a)
    assert np.array_equal(u, np.unique(a)) and u.dtype == np.unique(a).dtype
    if len(u):
        v = rng.integers(-2, n + 2, 50)
        assert np.array_equal(in_sorted(v, u), np.isin(v, u))
