"""Tests of the synthetic multi-interest world (crbr.data.synthetic)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from crbr.data.dataset import SequenceDataset, leave_one_out
from crbr.data.synthetic import SyntheticConfig, SyntheticWorld, generate, read_ground_truth


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return generate(SyntheticConfig())


@pytest.fixture(scope="module")
def tiny() -> SyntheticWorld:
    return generate(SyntheticConfig.tiny())


def _event_users(ds: SequenceDataset) -> np.ndarray:
    return np.repeat(np.arange(ds.n_users), ds.lengths())


def _arrays(w: SyntheticWorld) -> dict[str, np.ndarray]:
    ds = w.dataset
    return {
        "offsets": ds.offsets, "items": ds.items, "actions": ds.actions, "timestamps": ds.timestamps,
        "cat_offsets": ds.cat_offsets, "cat_ids": ds.cat_ids, "emb": w.item_embeddings,
        "item_category": w.item_category, "interest_offsets": w.interest_offsets,
        "interest_categories": w.interest_categories, "interest_weights": w.interest_weights,
        "interest_vectors": w.interest_vectors, "event_state": w.event_state,
    }


# ------------------------------------------------------------------ determinism
def test_same_seed_identical(tiny):
    again = generate(SyntheticConfig.tiny())
    a, b = _arrays(tiny), _arrays(again)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert tiny.dataset.item_text == again.dataset.item_text


def test_different_seed_differs(tiny):
    other = generate(SyntheticConfig.tiny(seed=1))
    assert not np.array_equal(tiny.dataset.items[:500], other.dataset.items[:500])
    assert not np.allclose(tiny.item_embeddings, other.item_embeddings)
    assert not np.array_equal(tiny.interest_categories[:50], other.interest_categories[:50])


def test_catalogue_independent_of_users(tiny):
    other = generate(SyntheticConfig.tiny(n_users=50, history_median=10.0))
    np.testing.assert_array_equal(tiny.item_embeddings, other.item_embeddings)
    np.testing.assert_array_equal(tiny.item_category, other.item_category)
    assert tiny.dataset.item_text == other.dataset.item_text


# ------------------------------------------------------------------ structure
def test_default_dataset_valid_shapes_ranges(world):
    cfg, ds = world.config, world.dataset
    ds.validate()
    U, N, C, D, I = cfg.n_users, cfg.n_items, cfg.n_categories, cfg.dim, cfg.n_items + 1
    assert (ds.n_users, ds.n_items, ds.n_categories) == (U, N, C)
    assert ds.info["name"] == "synthetic" and ds.info["config"]["seed"] == cfg.seed
    assert ds.user_ids[0] == "u0" and ds.user_ids[-1] == f"u{U - 1}"
    assert ds.item_ids[0] == "" and ds.item_ids[1] == "i1" and ds.item_ids[-1] == f"i{N}"
    assert ds.action_names == ["<pad>", "click", "like", "dislike", "skip", "purchase"]
    assert ds.items.dtype == np.int32 and ds.actions.dtype == np.int16 and ds.timestamps.dtype == np.int64
    # default size: small enough for fast training, with a heavy tail of lengths
    lens = ds.lengths()
    assert lens.min() >= cfg.min_history and lens.max() == cfg.max_history
    assert 35 <= np.median(lens) <= 70
    assert 50_000 < ds.n_events < 400_000
    # timestamps strictly increasing within each user
    d = np.diff(ds.timestamps)
    within = np.ones(len(d), dtype=bool)
    within[ds.offsets[1:-1] - 1] = False
    assert (d[within] > 0).all()
    # item metadata
    assert world.item_embeddings.shape == (I, D) and world.item_embeddings.dtype == np.float32
    assert not world.item_embeddings[0].any()
    np.testing.assert_allclose(np.linalg.norm(world.item_embeddings[1:], axis=1), 1.0, atol=1e-5)
    assert world.item_category.shape == (I,) and world.item_category[0] == -1
    assert world.item_category[1:].min() >= 0 and world.item_category[1:].max() < C
    assert np.bincount(world.item_category[1:], minlength=C).min() >= 2
    first_cat = ds.cat_ids[ds.cat_offsets[1:-1]]  # first listed category of items 1..N
    np.testing.assert_array_equal(first_cat, world.item_category[1:])
    has_sec = world.item_secondary[1:] >= 0
    np.testing.assert_array_equal(np.diff(ds.cat_offsets)[1:], 1 + has_sec)
    assert (world.item_secondary[1:][has_sec] != world.item_category[1:][has_sec]).all()
    assert len(ds.item_text) == I and ds.item_text[0] is None
    name = ds.category_names[world.item_category[1]]
    assert ds.item_text[1].startswith(f"{name} item ")
    assert len(set(ds.category_names)) == C
    np.testing.assert_allclose(world.item_popularity.sum(), 1.0)
    assert world.event_state.shape == world.event_explore.shape == world.event_repeat.shape == (ds.n_events,)


def test_dataset_save_load_roundtrip(tiny, tmp_path):
    ds = tiny.dataset
    back = SequenceDataset.load(ds.save(tmp_path / "syn"))
    np.testing.assert_array_equal(back.items, ds.items)
    np.testing.assert_array_equal(back.timestamps, ds.timestamps)
    np.testing.assert_array_equal(back.cat_ids, ds.cat_ids)
    assert back.item_text == ds.item_text and back.category_names == ds.category_names
    assert back.info["name"] == "synthetic"
    split = leave_one_out(back)
    assert len(split.test) == ds.n_users


# ------------------------------------------------------------------ interests
def test_interests_ground_truth(world):
    cfg, C = world.config, world.config.n_categories
    k = np.diff(world.interest_offsets)
    assert k.min() >= cfg.min_interests == 1 and k.max() <= cfg.max_interests == 5
    assert set(np.unique(k)) == {1, 2, 3, 4, 5}
    sets = world.interest_sets()
    assert len(sets) == cfg.n_users
    for u, s in enumerate(sets):
        assert len(np.unique(s)) == len(s) and s.min() >= 0 and s.max() < C
        wts = world.interest_weights[world.interest_offsets[u] : world.interest_offsets[u + 1]]
        assert np.isclose(wts.sum(), 1.0) and (wts > 0).all() and (np.diff(wts) <= 0).all()
    assert world.interest_vectors.shape == (len(world.interest_categories), cfg.dim)
    # each interest vector lies closer to its own category centroid than to any other
    sims = world.interest_vectors @ world.category_centroids.T  # (P, C)
    assert (sims.argmax(1) == world.interest_categories).mean() > 0.99


def test_event_kinds_match_ground_truth(world):
    ds = world.dataset
    ii = world.in_interest()
    users = _event_users(ds)
    assert (~ii[world.event_explore]).all()  # exploration items are outside the interests
    assert ii[~world.event_explore].all()  # interest items are inside
    # the latent state is always one of the user's interests
    mask = np.zeros((ds.n_users, ds.n_categories), dtype=bool)
    mask[np.repeat(np.arange(ds.n_users), np.diff(world.interest_offsets)), world.interest_categories] = True
    assert mask[users, world.event_state].all()
    assert 0.10 < world.event_explore.mean() < 0.20
    assert 0.02 < world.event_repeat.mean() < 0.08


def test_positive_in_interest_negative_outside(world):
    ds = world.dataset
    ii = world.in_interest()
    a = np.asarray(ds.actions)
    pos = np.isin(a, [ds.action_id(n) for n in ("click", "like", "purchase")])
    for name in ("click", "like", "purchase"):
        assert ii[a == ds.action_id(name)].mean() > 0.85, name
    assert ii[pos].mean() > 0.9
    assert (~ii[a == ds.action_id("dislike")]).mean() > 0.75
    assert (~ii[a == ds.action_id("skip")]).mean() > 0.55
    # per user: the majority of every user's positive events are in-interest
    users = _event_users(ds)
    n_pos = np.bincount(users, weights=pos, minlength=ds.n_users)
    n_in = np.bincount(users, weights=pos & ii, minlength=ds.n_users)
    assert (n_in / np.maximum(n_pos, 1) > 0.5).mean() > 0.99


# ------------------------------------------------------------------ items
def test_popularity_heavy_tailed(world):
    cnt = np.sort(np.bincount(world.dataset.items, minlength=world.dataset.n_items + 1)[1:])[::-1]
    top10 = cnt[: len(cnt) // 10].sum() / cnt.sum()
    assert top10 > 0.45  # top 10% of items get almost half of the events or more
    assert cnt[: len(cnt) // 2].sum() / cnt.sum() > 0.85


def test_category_cosine_structure(world):
    e = world.item_embeddings[1:]
    c = world.item_category[1:]
    sims = e @ e.T
    same = c[:, None] == c[None, :]
    np.fill_diagonal(same, False)
    other = c[:, None] != c[None, :]
    within, across = sims[same].mean(), sims[other].mean()
    assert within > 0.45 and abs(across) < 0.1 and within - across > 0.4
    # the nearest centroid of each item is its primary category's
    assert ((e @ world.category_centroids.T).argmax(1) == c).mean() > 0.95


def test_text_has_category_words(tiny):
    ds = tiny.dataset
    for i in range(1, ds.n_items + 1):
        head, words = ds.item_text[i].split(": ")
        assert head.startswith(ds.category_names[tiny.item_category[i]])
        w3 = words.split(",")[0].split(" ")
        assert len(w3) == 3 and len(set(w3)) == 3


# ------------------------------------------------------------------ learnability
def test_learnable_next_category_and_beats_popularity(world):
    ds = world.dataset
    items = np.asarray(ds.items)
    cats = world.item_category[items]
    nxt_same = cats[1:] == cats[:-1]
    within = np.ones(len(nxt_same), dtype=bool)
    within[ds.offsets[1:-1] - 1] = False
    acc = nxt_same[within].mean()
    assert acc > 0.5 and acc > 8 / ds.n_categories
    # a sequential heuristic (most popular items of the last item's category) clearly beats
    # global popularity at predicting each user's last event (HR@10, full catalogue)
    last = ds.offsets[1:] - 1
    tgt, prev = items[last], items[last - 1]
    train = np.ones(len(items), dtype=bool)
    train[last] = False
    cnt = np.bincount(items[train], minlength=ds.n_items + 1)
    cnt[0] = -1
    hr_pop = np.isin(tgt, np.argsort(-cnt)[:10]).mean()
    top_by_cat = np.full((ds.n_categories, 10), -1)  # (C, 10) item ids, -1 = none
    for c in range(ds.n_categories):
        members = np.nonzero(world.item_category == c)[0]
        best = members[np.argsort(-cnt[members])[:10]]
        top_by_cat[c, : len(best)] = best
    hr_seq = (top_by_cat[world.item_category[prev]] == tgt[:, None]).any(1).mean()
    assert hr_seq > 1.5 * hr_pop, (hr_seq, hr_pop)


# ------------------------------------------------------------------ long histories
def test_long_history_preset_reaches_max():
    cfg = SyntheticConfig.long_history(n_users=20, n_items=1000, n_categories=20, history_median=300.0, min_history=50)
    w = generate(cfg)
    lens = w.dataset.lengths()
    assert cfg.max_history == 10_000 and lens.max() == 10_000 and lens.min() >= 50
    assert np.median(lens) > 150
    w.dataset.validate()
    # the preset itself targets histories of thousands
    full = SyntheticConfig.long_history()
    assert full.history_median >= 1000 and full.max_history == 10_000


def test_long_users_heavy_tail(world):
    lens = world.dataset.lengths()
    n_long = (lens >= world.config.max_history // 4).sum()
    assert 1 <= n_long <= 0.02 * len(lens)


def test_default_generation_fast():
    t = time.perf_counter()
    generate(SyntheticConfig(seed=3))
    assert time.perf_counter() - t < 2.0


# ------------------------------------------------------------------ ground truth file
def test_ground_truth_parquet_roundtrip(world, tmp_path):
    path = world.save_ground_truth(tmp_path / "gt" / "interests.parquet")
    path = world.save_ground_truth(path)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["interests.parquet"]  # no temp leftovers
    t = pq.read_table(path)
    assert t.column_names[:2] == ["user_id", "category"] and "weight" in t.column_names
    assert t.num_rows == len(world.interest_categories)
    offs, cats, wts = read_ground_truth(path, world.dataset.user_ids)
    np.testing.assert_array_equal(offs, world.interest_offsets)
    np.testing.assert_array_equal(cats, world.interest_categories)
    np.testing.assert_allclose(wts, world.interest_weights)
    offs2, cats2, _ = read_ground_truth(path)  # default user order = file order
    np.testing.assert_array_equal(offs2, world.interest_offsets)
    np.testing.assert_array_equal(cats2, world.interest_categories)


# ------------------------------------------------------------------ config checks
@pytest.mark.parametrize(
    "kw",
    [
        dict(max_interests=20),
        dict(min_interests=0),
        dict(n_categories=5, max_interests=5),
        dict(n_items=10, n_categories=20),
        dict(stickiness=1.5),
        dict(exploration=1.0),
        dict(min_history=10, max_history=5),
        dict(interest_action_probs=(0.5, 0.5, 0.0, 0.0, 0.1)),
        dict(action_names=("click", "click", "a", "b", "c")),
    ],
)
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        SyntheticConfig(**kw)


def test_next_item_probs_is_the_generative_distribution(tiny):
    """The oracle distribution sums to one, and over thousands of generated events the number that
    land in its top-k sets matches its own prediction (sum of the top-k masses) within 4 standard
    deviations; the same check fails for the distribution without the users' tastes."""
    ds = tiny.dataset
    lens = np.diff(np.asarray(ds.offsets))
    users = np.repeat(np.arange(ds.n_users), lens - 1)
    t = np.concatenate([np.arange(1, n) for n in lens])
    pick = np.random.default_rng(0).choice(len(users), 4000, replace=False)
    users, t = users[pick], t[pick]
    p = tiny.next_item_probs(users, t)
    assert np.allclose(p.sum(1), 1.0) and np.all(p[:, 0] == 0)
    actual = np.asarray(ds.items)[np.asarray(ds.offsets)[users] + t]

    def z_score(probs, k):
        top = np.argsort(-probs, axis=1)[:, :k]
        mass = np.take_along_axis(probs, top, 1).sum(1)
        hits = (top == actual[:, None]).any(1)
        return (hits.sum() - mass.sum()) / np.sqrt((mass * (1 - mass)).sum())

    for k in (1, 10):
        assert abs(z_score(p, k)) < 4, k
    tasteless = dataclasses.replace(tiny, interest_tastes=np.zeros_like(tiny.interest_tastes))
    assert abs(z_score(tasteless.next_item_probs(users, t), 10)) > 4
    with pytest.raises(ValueError, match="1 <= t"):
        tiny.next_item_probs([0], [0])
