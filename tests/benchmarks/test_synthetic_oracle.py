import math

import numpy as np

from crbr.analysis import history_estimate_probs, inferred_taste_probs, taste_predictive


def test_taste_predictive_matches_quadrature_on_the_circle():
    """On the unit circle (D = 2) the posterior of a taste is a 1-D density: integrate it on a fine
    grid and compare with the Metropolis estimate."""
    rng = np.random.default_rng(1)
    m, kappa = 6, 3.0
    ang = rng.uniform(0, 2 * np.pi, m)
    styles = np.stack([np.cos(ang), np.sin(ang)], 1)
    logpop = np.log(rng.dirichlet(np.ones(m)))
    consumed = [[0, 0, 3], [], [5] * 12]  # three histories: a few items, none, many of one item
    S = np.stack([styles[c].sum(0) if c else np.zeros(2) for c in consumed])
    n = np.array([len(c) for c in consumed])
    got = taste_predictive(S, n, logpop, styles, kappa, rng, chains=64, steps=1500, burn=300)

    theta = np.linspace(0, 2 * np.pi, 20000, endpoint=False)
    t = np.stack([np.cos(theta), np.sin(theta)], 1)  # (G, 2)
    logit = logpop + kappa * t @ styles.T  # (G, m)
    logz = np.logaddexp.reduce(logit, axis=1)
    for h in range(len(consumed)):
        lw = kappa * t @ S[h] - n[h] * logz
        w = np.exp(lw - lw.max())
        want = (w[:, None] * np.exp(logit - logz[:, None])).sum(0) / w.sum()
        assert np.allclose(got[h], want, atol=0.02), (h, got[h], want)
        assert math.isclose(got[h].sum(), 1.0, rel_tol=1e-9)
    # the many-events history concentrates on item 5's neighbourhood: not the prior predictive
    assert got[2, 5] > got[1, 5] + 0.1


def test_inferred_tastes_equal_the_oracle_when_tastes_do_not_matter():
    """With affinity_strength = 0 every taste gives the same item distribution, so the row with
    inferred tastes must reproduce the exact next-item distribution (states, weights, exploration
    and repeats assembled as the generator does)."""
    from crbr.data.synthetic import SyntheticConfig, generate

    world = generate(SyntheticConfig.tiny(affinity_strength=0.0, n_users=60))
    lengths = np.diff(np.asarray(world.dataset.offsets))
    users = np.arange(60)
    t = lengths - 1
    got = inferred_taste_probs(world, users, t, steps=20, burn=10, chains=2)
    want = world.next_item_probs(users, t)
    assert np.allclose(got, want, atol=1e-10)
    assert np.allclose(got.sum(1), 1.0)


def test_inferred_tastes_sit_between_a_taste_blind_oracle_and_the_oracle():
    from crbr.data.synthetic import SyntheticConfig, generate

    world = generate(SyntheticConfig.tiny(n_users=120, affinity_strength=3.0))
    lengths = np.diff(np.asarray(world.dataset.offsets))
    users = np.arange(120)
    t = lengths - 1
    p = world.next_item_probs(users, t)
    pt = inferred_taste_probs(world, users, t, steps=200, burn=100, chains=8)

    def expected_recall(q, k=10):
        top = np.argsort(-q, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(p, top, 1).sum(1).mean()

    import dataclasses

    blind = dataclasses.replace(world, item_styles=np.zeros_like(world.item_styles))  # taste-blind oracle
    oracle, inferred, taste_blind = expected_recall(p), expected_recall(pt), expected_recall(blind.next_item_probs(users, t))
    assert inferred <= oracle + 1e-9  # the oracle's list is the best under p
    assert inferred > taste_blind + 0.02, (inferred, taste_blind, oracle)  # the history tells the tastes apart


def test_history_estimate_equals_the_inferred_taste_oracle_when_nothing_else_is_hidden():
    """One interest, no exploration, no repeats: the state, the weights and every event's kind
    are determined by the history, so the EM fit must hand the taste sampler exactly what the
    oracle with inferred tastes hands it."""
    from crbr.data.synthetic import SyntheticConfig, generate

    world = generate(SyntheticConfig.tiny(n_users=40, min_interests=1, max_interests=1, exploration=0.0,
                                          repeat_prob=0.0))
    users = np.arange(40)
    t = np.diff(np.asarray(world.dataset.offsets)) - 1
    kw = dict(steps=30, burn=10, chains=4)
    est = history_estimate_probs(world, users, t, em_iters=3, **kw)
    assert np.allclose(est, inferred_taste_probs(world, users, t, **kw), atol=1e-12)


def test_history_estimate_is_a_distribution_that_beats_popularity():
    from crbr.data.synthetic import SyntheticConfig, generate

    world = generate(SyntheticConfig.tiny(n_users=120))
    users = np.arange(120)
    t = np.diff(np.asarray(world.dataset.offsets)) - 1
    p = world.next_item_probs(users, t)
    est = history_estimate_probs(world, users, t, steps=100, burn=50, chains=4)
    assert np.allclose(est.sum(1), 1.0) and est[:, 0].max() == 0.0

    def expected_recall(q, k=10):
        return np.take_along_axis(p, np.argsort(-q, axis=1, kind="stable")[:, :k], 1).sum(1).mean()

    pop = np.tile(world.item_popularity, (len(users), 1))
    assert expected_recall(pop) + 0.1 < expected_recall(est) <= expected_recall(p) + 1e-9
