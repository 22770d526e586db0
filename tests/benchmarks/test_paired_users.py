import math

import pytest

from crbr.stats import mcnemar_exact


def test_exact_mcnemar_against_hand_computed_binomial_tails():
    # 1 vs 4 discordant users: 2 * P(X <= 1), X ~ Bin(5, 1/2) = 2 * (1 + 5) / 32
    assert mcnemar_exact(1, 4) == pytest.approx(12 / 32)
    assert mcnemar_exact(4, 1) == mcnemar_exact(1, 4)
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # large counts: close to the continuity-corrected normal approximation of the sign test
    z = (abs(259 - 254) - 1) / math.sqrt(259 + 254)
    assert mcnemar_exact(259, 254) == pytest.approx(math.erfc(z / math.sqrt(2)), abs=0.005)
