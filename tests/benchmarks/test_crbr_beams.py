import math

import torch

from crbr.analysis import greedy_rq, mixture_scores


def test_mixture_merge_against_hand_computed_scores():
    V = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # row 0 = padding
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1 user, 2 paths, 2)
    S = torch.tensor([[math.log(0.75), math.log(0.25)]])
    out = mixture_scores(q, S, V, 0.5)
    sims = torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]])  # (path, item 1..3)
    p = torch.softmax(sims / 0.5, dim=1)  # each path's distribution over items 1..3
    assert torch.allclose(out[0, 1:], (torch.tensor([0.75, 0.25])[:, None] * p).sum(0).log(), atol=1e-6)
    assert torch.isneginf(out[0, 0])  # padding never ranked
    one = mixture_scores(q[:, :1], S[:, :1], V, 0.5)  # one path: its own ranking
    assert torch.equal(one[0, 1:].argsort(), sims[0].argsort())


def test_greedy_rq_recovers_a_sum_of_codes():
    C1, C2 = 10 * torch.eye(4, 8), torch.eye(8)[4:]  # coarse codes far apart, fine codes small
    x = C1[[2, 0]] + C2[[1, 3]]
    assert torch.allclose(greedy_rq(x, [C1, C2]), x)
