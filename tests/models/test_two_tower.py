"""Retrieval A: Set-Transformer two-tower over a frozen Q-Former."""

import numpy as np
import pytest
import torch

from crbr.data.batching import train_batch
from crbr.data.dataset import leave_one_out, train_item_counts
from crbr.data.synthetic import SyntheticConfig, generate
from crbr.eval.evaluator import Evaluator
from crbr.models import build_model
from crbr.train.checkpoint import load_model_from_checkpoint, save_weights

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world():
    w = generate(SyntheticConfig.tiny(seed=2, n_users=600))
    split = leave_one_out(w.dataset)
    return w.dataset, split


@pytest.fixture(scope="module")
def tower_ckpt(world, tmp_path_factory, fit_steps):
    """A briefly pre-trained Q-Former, saved as a checkpoint."""
    ds, split = world
    torch.manual_seed(0)
    q = build_model("qformer", dict(hidden=32, n_queries=4, n_layers=1, n_heads=2, dropout=0.0, max_len=64, n_negatives=64), ds, split)
    fit_steps(q, ds, split, 500)
    path = tmp_path_factory.mktemp("tower") / "q.safetensors"
    save_weights(path, q, "qformer", {})
    return path


def test_pma_pooling_is_a_set_function(world, tower_ckpt):
    ds, split = world
    for inducing in (0, 3):
        m = build_model("two_tower", dict(tower_checkpoint=str(tower_ckpt), hidden=32, out_dim=16, inducing_points=inducing), ds, split).eval()
        x = torch.randn(5, 4, 32)
        perm = x[:, torch.randperm(4)]
        with torch.no_grad():
            torch.testing.assert_close(m.pool(x), m.pool(perm), atol=1e-5, rtol=1e-5)
            assert m.pool(x).shape == (5, 16)
            torch.testing.assert_close(m.pool(x).norm(dim=-1), torch.ones(5))


def test_frozen_tower_gets_no_update_and_checkpoint_is_self_contained(world, tower_ckpt, tmp_path, fit_steps):
    ds, split = world
    m = build_model("two_tower", dict(tower_checkpoint=str(tower_ckpt), hidden=32, out_dim=32, n_negatives=32), ds, split)
    assert m.config.tower.n_queries == 4  # the tower's config was copied from the checkpoint
    before = {k: v.clone() for k, v in m.tower.state_dict().items()}
    fit_steps(m, ds, split, 5)
    assert all(torch.equal(before[k], v) for k, v in m.tower.state_dict().items())
    m.train()
    assert not m.tower.training  # the frozen tower's dropout stays off
    path = tmp_path / "tt.safetensors"
    save_weights(path, m, "two_tower", {})
    tower_ckpt_bytes = tower_ckpt.read_bytes()
    tower_ckpt.unlink()  # the saved model must not need the tower checkpoint any more
    try:
        m2, _ = load_model_from_checkpoint(path)
    finally:
        tower_ckpt.write_bytes(tower_ckpt_bytes)
    users = np.arange(8)
    b = train_batch(ds, users, split.train_len[users], 64)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m.score(b), m2.score(b))


def test_item_tower_uses_categories(world, tower_ckpt):
    ds, split = world
    m = build_model("two_tower", dict(tower_checkpoint=str(tower_ckpt), use_id_embedding=True), ds, split)
    assert m.item_cats is not None and m.config.n_categories == len(ds.category_names)
    i = 5
    want = sorted(np.asarray(ds.cat_ids)[ds.cat_offsets[i] : ds.cat_offsets[i + 1]] + 1)
    got = sorted(x for x in m.item_cats[i].tolist() if x > 0)
    assert got == list(want)


def test_two_tower_learns_far_above_random_and_popularity(world, tower_ckpt, fit_steps):
    ds, split = world
    counts = train_item_counts(ds, split)
    ev = Evaluator(ds, split.test, counts, max_len=64, batch_size=256)
    pop = torch.as_tensor(counts, dtype=torch.float32)
    pop_res = ev.evaluate(lambda b: pop.expand(len(b["items"]), -1)).metrics
    random_r50 = 50 / ds.n_items
    torch.manual_seed(0)
    m = fit_steps(build_model("two_tower", dict(tower_checkpoint=str(tower_ckpt), hidden=32, out_dim=32, n_negatives=64), ds, split), ds, split, 200)
    with torch.no_grad():
        res = ev.evaluate(m.score).metrics
    assert res["Recall@50"] > 3 * random_r50, res
    assert res["NDCG@10"] > 1.3 * pop_res["NDCG@10"] and res["Recall@50"] > pop_res["Recall@50"], (res, pop_res)


def test_a_rotary_tower_round_trips_through_retrieval_a(world, tmp_path, fit_steps):
    """A Q-Former with rotary positions keeps them as Retrieval A's frozen tower (the setting
    travels in the tower's saved config) and the two-tower trains and reloads over it."""
    ds, split = world
    torch.manual_seed(0)
    q = build_model("qformer", dict(hidden=32, n_queries=4, n_layers=1, n_heads=2, dropout=0.0, max_len=64,
                                    position="rotary", n_cuts=2), ds, split)
    tower = tmp_path / "q.safetensors"
    save_weights(tower, q, "qformer", {})
    m = build_model("two_tower", dict(tower_checkpoint=str(tower), hidden=32, out_dim=16, n_negatives=32), ds, split)
    assert m.tower.config.position == "rotary"
    fit_steps(m, ds, split, 3)
    path = tmp_path / "tt.safetensors"
    save_weights(path, m, "two_tower", {})
    m2, _ = load_model_from_checkpoint(path)
    users = np.arange(8)
    b = train_batch(ds, users, split.train_len[users], 64)
    m.eval()
    q.eval()
    with torch.no_grad():
        torch.testing.assert_close(m.score(b), m2.score(b))
        torch.testing.assert_close(m.tower.encode(b).tokens, q.encode(b).tokens)
