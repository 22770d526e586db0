"""AUC (ties counted one half), grouped AUC and the gradient-norm variance of a run, against
hand-computed values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from crbr.analysis import grad_variance
from crbr.eval.metrics import auc, grouped_auc


def brute_auc(pos, neg):
    pairs = list(itertools.product(pos, neg))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_auc_equals_the_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos = rng.integers(0, 5, rng.integers(1, 12)).astype(float)
        neg = rng.integers(0, 5, rng.integers(1, 12)).astype(float)
        assert auc(pos, neg) == pytest.approx(brute_auc(pos, neg), abs=1e-12)
    assert np.isnan(auc(np.array([]), np.array([1.0])))


def test_grouped_auc_averages_users_with_both_classes():
    users = np.array([0, 0, 0, 1, 1, 2])
    score = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.3])
    label = np.array([True, False, False, True, False, True])  # user 2 has one class: skipped
    assert grouped_auc(users, score, label) == pytest.approx((1.0 + 0.0) / 2)


def test_grad_variance_from_epoch_means(tmp_path):
    # epoch 1: norms 1 and 3 (mean 2, mean square 5 -> variance 1); epoch 2: 2 and 2 (variance 0)
    (tmp_path / "metrics.csv").write_text(
        "epoch,grad_encoder_norm,grad_encoder_norm_sq\n1,2.0,5.0\n2,2.0,4.0\n")
    got = grad_variance(tmp_path)
    assert got["grad_encoder_norm_var"] == pytest.approx(0.5)
    assert got["grad_encoder_norm_cv"] == pytest.approx((0.5 + 0.0) / 2)
    assert "grad_codebooks_norm_var" not in got
