"""RQ-KMeans semantic IDs: planted structure is recovered, residuals shrink level by level,
collisions are resolved, the balanced mode balances, files round-trip, the health metrics equal
hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crbr.data.dataset import leave_one_out
from crbr.data.synthetic import SyntheticConfig, generate
from crbr.semantic_ids import (RQKMeansConfig, SemanticIDs, build_semantic_ids, collision_stats, disambiguate,
                               health_report, reassign_collisions, tokenize)
from crbr.semantic_ids.health import (anisotropy, nmi, purity, category_agreement, gini, k_occurrence, prefix_lift, spearman,
                                      usage_stats)
from crbr.semantic_ids.rqkmeans import RQKMeans, all_distances, balanced_assign


def planted(n=3000, k=12, d=24, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    lab = rng.integers(k, size=n)
    return (centres[lab] * 3 + rng.standard_normal((n, d)) * 0.4).astype(np.float32), lab


def test_level_one_recovers_planted_clusters_and_residuals_shrink():
    x, lab = planted()
    codes, tok, _ = tokenize(x, RQKMeansConfig(levels=3, codebook_size=12, seed=1))
    assert nmi(lab, codes[:, 0]) > 0.95
    res = [s.residual_out for s in tok.stats]
    assert res[0] < tok.stats[0].residual_in and res[1] < res[0] and res[2] < res[1]
    recon = tok.decode(codes)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(((u - recon) ** 2).sum(1).mean(), res[-1], rtol=1e-4)


def test_tokenizing_is_deterministic_for_a_seed():
    x, _ = planted(n=1500)
    cfg = RQKMeansConfig(levels=2, codebook_size=16, seed=3, n_redo=2)
    a, b = tokenize(x, cfg)[0], tokenize(x, cfg)[0]
    np.testing.assert_array_equal(a, b)


def test_balanced_codes_differ_in_size_by_at_most_one():
    x, _ = planted(n=1003)
    codes, _, _ = tokenize(x, RQKMeansConfig(levels=2, codebook_size=10, balanced=True, balanced_iters=5))
    for level in range(2):
        sizes = np.bincount(codes[:, level], minlength=10)
        assert sizes.max() - sizes.min() <= 1, sizes
    # the assignment alone, against its definition on a tiny case: each code takes its nearest free items
    dist = np.array([[0.0, 5.0], [0.1, 4.0], [0.2, 0.3], [9.0, 0.0]])
    np.testing.assert_array_equal(balanced_assign(dist), [0, 0, 1, 1])


def test_disambiguation_makes_ids_unique_and_numbers_groups_in_item_order():
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    np.testing.assert_array_equal(disambiguate(codes), [0, 0, 1, 2, 0])
    st = collision_stats(codes)
    assert st == {"collision_rate": 0.6, "largest_bucket": 3, "unique_share": 0.6}
    sid = SemanticIDs.from_codes(codes, [2, 3], np.array(["a", "b", "c", "d", "e"], dtype=object))
    assert collision_stats(sid.tokens()[1:])["collision_rate"] == 0.0
    assert sid.n_disambiguation == 3


def test_reassignment_moves_all_but_the_nearest_to_free_codes():
    codes = np.array([[0, 1], [0, 1], [0, 1], [1, 1]])
    dist = np.array([[5.0, 0.1, 2.0, 3.0],    # the nearest to shared code 1: keeps it
                     [4.0, 0.5, 0.6, 3.0],    # moves to code 2
                     [0.2, 0.9, 0.7, 0.8],    # moves to code 0
                     [1.0, 1.0, 1.0, 1.0]])
    out = reassign_collisions(codes, dist)
    np.testing.assert_array_equal(out, [[0, 1], [0, 2], [0, 0], [1, 1]])
    x, _ = planted(n=1000, k=4)  # 2 levels of 32 codes: 1024 IDs for 1000 items
    cfg = RQKMeansConfig(levels=2, codebook_size=32)
    before = collision_stats(tokenize(x, cfg)[0])["collision_rate"]
    after = collision_stats(tokenize(x, cfg, reassign=True)[0])["collision_rate"]
    assert before > 0.1 and after < 0.5 * before


def test_synthetic_world_categories_and_file_round_trip(tmp_path):
    """The world's true item vectors: level 1 with K = number of categories recovers them."""
    world = generate(SyntheticConfig.tiny(seed=4, n_users=150))
    ds = world.dataset
    feats = np.asarray(world.item_embeddings, dtype=np.float32)  # (I, D), row 0 zeros
    k = len(ds.category_names)
    sid = build_semantic_ids(ds, feats, RQKMeansConfig(levels=2, codebook_size=k, n_redo=10), cache_dir=tmp_path)
    cats = np.asarray(world.item_category)[1:]
    assert nmi(cats, sid.codes[1:, 0]) > 0.9
    assert purity(cats, sid.codes[1:, 0]) > 0.9
    path = sid.save(tmp_path / "ids.parquet")
    back = SemanticIDs.load(path, ds.item_ids)
    np.testing.assert_array_equal(back.codes, sid.codes)
    np.testing.assert_array_equal(back.disambiguation, sid.disambiguation)
    assert len(back.codebooks) == 2 and back.sizes == sid.sizes
    again = build_semantic_ids(ds, feats, RQKMeansConfig(levels=2, codebook_size=k, n_redo=10), cache_dir=tmp_path)
    np.testing.assert_array_equal(again.codes, sid.codes)  # from the cache


# ------------------------------------------------------------------ health metrics by hand
def test_identical_vectors_are_fully_anisotropic_and_a_planted_hub_has_the_largest_k_occurrence():
    same = np.tile(np.array([[1.0, 2.0, 3.0]], np.float32), (50, 1))
    a = anisotropy(same)
    assert a["mean_cosine"] == pytest.approx(1.0) and a["top_direction_share"] == pytest.approx(1.0)
    assert a["effective_rank"] == pytest.approx(1.0, abs=1e-3)
    rng = np.random.default_rng(0)
    r = rng.standard_normal((200, 64))
    r[:, 0] = 0
    x = (np.eye(64)[0] + 0.9 * r / np.linalg.norm(r, axis=1, keepdims=True)).astype(np.float32)
    x[7] = np.eye(64)[0]  # a star: every item has cosine 0.74 with e_0 but about 0.55 with each other
    occ = k_occurrence(x, k=10)
    assert occ.argmax() == 7 and occ.sum() == 200 * 10


def test_usage_gini_agreement_spearman_and_prefix_lift_by_hand():
    st = usage_stats(np.array([0, 0, 1, 1]), 4)
    assert st["dead_codes"] == 2 and st["perplexity"] == pytest.approx(2.0) and st["entropy"] == pytest.approx(math.log(2))
    assert gini(np.array([1, 1, 1, 1])) == 0.0 and gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)
    # categories 0, 0, 0, 1, 1 with level-1 codes 5, 5, 3, 2, 2: majority codes 5 and 2 -> 4 of 5 agree
    assert category_agreement(np.array([5, 5, 3, 2, 2]), np.array([0, 0, 0, 1, 1])) == pytest.approx(0.8)
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    codes = np.array([[-1, -1], [0, 0], [0, 1], [1, 0], [1, 1]])  # items 1..4
    sid = SemanticIDs(codes, np.array([-1, 0, 0, 0, 0]), [2, 2], np.array(["", "a", "b", "c", "d"], dtype=object))
    prev, nxt = np.array([1, 3, 1, 2]), np.array([2, 4, 3, 1])  # 3 of 4 share the level-1 prefix
    lift = prefix_lift(sid, prev, nxt, 1)
    # next items 2, 4, 3, 1: prefixes 0, 1, 1, 0 -> chance 0.5^2 + 0.5^2 = 0.5
    assert lift["rate"] == 0.75 and lift["chance"] == pytest.approx(0.5) and lift["lift"] == pytest.approx(1.5)


def test_health_report_runs_end_to_end(tmp_path):
    ds = generate(SyntheticConfig.tiny(seed=2, n_users=120)).dataset
    split = leave_one_out(ds)
    from crbr.features import item_features

    X = item_features(ds, "random:16:3")
    sid = build_semantic_ids(ds, X, RQKMeansConfig(levels=2, codebook_size=8), cache_dir=tmp_path)
    rep = health_report(sid, ds, split, embeddings=X)
    assert set(rep) >= {"embedding", "codebook", "ids", "prefix_lift"}
    assert rep["ids"]["collision_rate_after_disambiguation"] == 0.0
    assert len(rep["codebook"]) == 2 and "inertia" in rep["codebook"][0]


def test_rqvae_trains_through_the_generic_loop_and_finds_planted_clusters(tmp_path):
    import torch

    from crbr.semantic_ids.rqvae import RQVAEConfig

    torch.set_num_threads(1)
    x, lab = planted(n=2000, k=8, d=24)
    ds = generate(SyntheticConfig.tiny(seed=2, n_users=60)).dataset
    feats = np.zeros((ds.n_items + 1, 24), np.float32)
    feats[1:] = x[: ds.n_items]
    cfg = RQVAEConfig(levels=2, codebook_size=8, hidden=[32], latent=8)
    sid = build_semantic_ids(ds, feats, cfg, cache_dir=tmp_path)
    assert sid.meta["tokenizer"] == "rq-vae" and sid.meta["reconstruction_error"] < 0.5
    assert nmi(lab[: ds.n_items], sid.codes[1:, 0]) > 0.8
    runs = list(tmp_path.glob("*.rqvae/checkpoints/best.safetensors"))
    assert runs, "the loop wrote its checkpoints"
    assert collision_stats(sid.tokens()[1:])["collision_rate"] == 0.0


def test_fit_shows_a_bar_over_the_levels_only_when_asked(capsys):
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    cfg = RQKMeansConfig(levels=2, codebook_size=4, seed=0)
    quiet = RQKMeans(cfg).fit(x).codebooks
    assert "RQ-KMeans levels" not in capsys.readouterr().err
    loud = RQKMeans(cfg).fit(x, progress=True).codebooks
    assert "RQ-KMeans levels" in capsys.readouterr().err
    assert all(np.array_equal(a, b) for a, b in zip(quiet, loud))
