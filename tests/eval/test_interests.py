import numpy as np

from crbr.eval.interests import interest_coverage


def test_interest_coverage_by_hand():
    # items 1..4; item 1: {0}, item 2: {1, 2}, item 3: {2}, item 4: {} (no category)
    off = np.array([0, 0, 1, 3, 4, 4])
    ids = np.array([0, 1, 2, 2])
    topk = np.array([[1, 4, 0], [3, 2, 1], [4, 4, 4]])
    cov = interest_coverage(topk, [{0, 1, 5}, {2}, {0}], off, ids, k=2)
    # user 0: top-2 {1, 4} -> categories {0}: 1 of 3; user 1: {3, 2} -> {1, 2} covers {2}: 1; user 2: none
    np.testing.assert_allclose(cov, [1 / 3, 1.0, 0.0])
    assert np.isnan(interest_coverage(topk, [set(), {2}, {0}], off, ids, k=2)[0])
