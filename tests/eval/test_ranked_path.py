"""Models that rank instead of scoring the catalogue: the evaluator's top-K path gives the same
metrics as the full-ranking path for a model that can do both, and holds models to the list
contract (order, no duplicates, masked history never returned)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crbr.data.dataset import leave_k_out, leave_one_out, train_item_counts
from crbr.data.synthetic import SyntheticConfig, generate
from crbr.eval import Evaluator
from crbr.models import build_model
from crbr.ranking import RankedItems, rank_scores

KS = (1, 5, 10, 20)


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    ds = generate(SyntheticConfig.tiny(seed=5, n_users=80)).dataset
    model = build_model("sasrec", dict(hidden=16, n_heads=1, n_layers=1, max_len=16), ds).eval()
    return ds, model


def evaluators(ds, split, mask):
    counts = train_item_counts(ds, split)
    return [Evaluator(ds, es, counts, ks=KS, mask_history=mask, max_len=16, export_k=25, batch_size=7)
            for es in (split.valid, split.test)]


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_a_scoring_model_gets_identical_metrics_through_both_paths(world, mask, multi, ties):
    ds, model = world
    split = leave_k_out(ds, 3) if multi else leave_one_out(ds)

    def score(b):  # rounded scores: many exact ties, which both paths must break by lower id
        s = model.score(b).float()
        return torch.round(s * 2) / 2 if ties else s

    def rank(b, k, exclude):
        return rank_scores(score(b), k, exclude)

    for ev in evaluators(ds, split, mask):
        full = ev.evaluate(score, export=True)
        top = ev.evaluate_ranked(rank, export=True)
        for k in KS:
            for m in ("HR", "NDCG", "Recall", "coverage"):
                assert top.metrics[f"{m}@{k}"] == full.metrics[f"{m}@{k}"], (m, k)
        assert full.bucket_hr10 == top.bucket_hr10 or np.allclose(full.bucket_hr10, top.bucket_hr10, equal_nan=True)
        np.testing.assert_array_equal(top.topk_items, full.topk_items)
        assert "MRR" in full.metrics and "MRR@25" in top.metrics and "MRR" not in top.metrics
        assert top.metrics["MRR@25"] <= full.metrics["MRR"] + 1e-12  # truncated at 25: never larger
        assert top.protocol.startswith("ranked by the model's top-25 over") and full.protocol.startswith("full ranking")


def test_evaluate_model_follows_what_the_model_declares(world):
    ds, model = world
    split = leave_one_out(ds)
    ev = evaluators(ds, split, True)[1]

    class Decoder(type(model)):
        ranking = "rank"

        def score(self, batch):
            raise AssertionError("a rank-only model is never asked for catalogue scores")

        def rank(self, batch, k, exclude=None, scope=None, beam=4):
            return rank_scores(super().score(batch), k, exclude, scope)

    dec = Decoder(model.config)
    dec.load_state_dict(model.state_dict())
    dec.eval()
    a, b = ev.evaluate_model(model), ev.evaluate_model(dec, beam=8)
    assert b.protocol.startswith("ranked by the model's top-20, beam 8 over")
    for k in KS:
        assert a.metrics[f"NDCG@{k}"] == b.metrics[f"NDCG@{k}"]


def test_lists_that_break_the_contract_are_errors(world):
    ds, model = world
    split = leave_one_out(ds)
    ev = evaluators(ds, split, True)[1]

    def good(b, k, ex):
        return rank_scores(model.score(b), k, ex)

    def swap(r):  # worst first
        return RankedItems(r.items.flip(1), r.scores.flip(1))

    def dup(r):
        items = r.items.clone()
        items[:, 1] = items[:, 0]
        return RankedItems(items, r.scores)

    def with_history(b, k, ex):  # ignores the exclusion it was given
        return rank_scores(model.score(b), k, None)

    with pytest.raises(ValueError, match="ordered by score"):
        ev.evaluate_ranked(lambda b, k, ex: swap(good(b, k, ex)))
    with pytest.raises(ValueError, match="twice"):
        ev.evaluate_ranked(lambda b, k, ex: dup(good(b, k, ex)))
    with pytest.raises(ValueError, match="history"):
        ev.evaluate_ranked(with_history)
    with pytest.raises(ValueError, match=r"\(\d+, 20\) lists"):
        ev.evaluate_ranked(lambda b, k, ex: good(b, k - 1, ex))


def test_short_lists_are_padded_and_padding_is_never_a_hit(world):
    ds, model = world
    split = leave_one_out(ds)
    ev = evaluators(ds, split, False)[1]
    allowed = torch.zeros(ds.n_items + 1, dtype=torch.bool)
    allowed[1:4] = True  # a scope of three items: every list is 3 items, then padding

    res = ev.evaluate_ranked(lambda b, k, ex: rank_scores(model.score(b), k, ex, allowed), export=True)
    assert (res.topk_items[:, 3:] == 0).all() and np.isneginf(res.topk_scores[:, 3:]).all()
    assert res.metrics["coverage@20"] == pytest.approx(3 / ds.n_items)
