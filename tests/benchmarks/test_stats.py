"""crbr.stats: the sign test and the paired bootstrap beside the t-interval."""

import pytest

from crbr.stats import binomial_two_sided, mcnemar_exact, paired, paired_bootstrap, sign_test


def test_sign_test_counts_wins_and_leaves_ties_out():
    base = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    other = [0.2, 0.3, 0.4, 0.5, 0.5, 0.7]  # 5 wins, 1 tie, 0 losses
    assert sign_test(base, other) == pytest.approx(2 / 32)
    assert sign_test(other, base) == sign_test(base, other)
    assert sign_test(base, base) == 1.0
    assert binomial_two_sided(0, 5) == mcnemar_exact(0, 5) == pytest.approx(2 / 32)


def test_bootstrap_interval_holds_the_mean_and_is_reproducible():
    base = [0.10, 0.20, 0.30, 0.25, 0.15]
    other = [0.11, 0.23, 0.32, 0.25, 0.18]
    b = paired_bootstrap(base, other, n_resamples=2000, seed=1)
    assert b["n"] == 5 and b["mean"] == pytest.approx(paired(base, other)["mean"])
    assert 0.0 <= b["lo"] <= b["mean"] <= b["hi"] <= 0.03  # differences 0.01, 0.03, 0.02, 0, 0.03
    assert paired_bootstrap(base, other, n_resamples=2000, seed=1) == b
    same = paired_bootstrap(base, base, n_resamples=100)
    assert same["lo"] == same["hi"] == 0.0
    with pytest.raises(ValueError):
        paired_bootstrap([], [])
