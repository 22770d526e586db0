import numpy as np
import torch

from crbr.analysis import fit_mixture, initial_queries


def kl(p: torch.Tensor, logm: torch.Tensor) -> torch.Tensor:
    """(U,) KL(p || m) over the real items (column 0 = padding)."""
    pr = p[:, 1:]
    return (pr * (torch.log(pr.clamp(min=1e-30)) - logm[:, 1:])).sum(1)


def test_fit_recovers_a_representable_mixture_and_more_queries_fit_better():
    """p built as 0.3 softmax(V q1) + 0.7 softmax(V q2) over a random item side: two fitted
    queries reproduce it (KL ~ 0), one query cannot (KL measurably larger)."""
    g = torch.Generator().manual_seed(0)
    I, d, U = 60, 6, 3
    V = torch.randn(I, d, generator=g)
    V[0] = 0
    q = 3 * torch.randn(U, 2, d, generator=g)
    logits = torch.einsum("upd,id->upi", q, V[1:])
    p = torch.zeros(U, I)
    p[:, 1:] = 0.3 * torch.softmax(logits[:, 0], -1) + 0.7 * torch.softmax(logits[:, 1], -1)
    init = torch.zeros(U, 2, d)
    init[:, 0], init[:, 1] = q[:, 0] + 0.5, q[:, 1] - 0.5  # near, not at, the truth
    two = fit_mixture(p, V, init, steps=1500, lr=0.05)
    one = fit_mixture(p, V, init[:, :1], steps=1500, lr=0.05)
    assert torch.isinf(two[:, 0]).all() and torch.isinf(one[:, 0]).all()  # padding never ranked
    assert torch.allclose(torch.logsumexp(two[:, 1:], 1), torch.zeros(U), atol=1e-5)  # a distribution
    assert kl(p, two).max() < 1e-4  # from 0.08-0.27 at the start
    assert kl(p, one).mean() > 0.01


def test_initial_queries_follow_the_heaviest_categories():
    item_cat = np.array([-1, 0, 0, 1, 2])  # item 0 = padding
    V = np.array([[0, 0], [1, 0], [3, 0], [0, 2], [-1, -1]], dtype=np.float64)
    p = np.array([[0, 0.1, 0.1, 0.5, 0.3]])  # category masses: 0 -> 0.2, 1 -> 0.5, 2 -> 0.3
    one = initial_queries(p, item_cat, V, 1, scale=2.0)
    v = p[0] @ V
    assert np.allclose(one[0, 0], 2.0 * v / np.linalg.norm(v))
    two = initial_queries(p, item_cat, V, 2, scale=1.0)
    assert np.allclose(two[0, 0], [0, 1])  # category 1: item 3 alone
    assert np.allclose(two[0, 1], [-1 / np.sqrt(2), -1 / np.sqrt(2)])  # category 2: item 4
