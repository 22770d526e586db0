"""crbr.nn.windows against loop references."""

import math

import pytest
import torch

from crbr.nn import choose_cut, choose_cuts, future_targets, newest, sinusoidal, time_buckets

TARGETS = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [0, 0, 0, 0, 0, 4, 9], [1, 2, 3, 4, 5, 6, 7], [0] * 7])


def test_newest_is_the_last_true_column():
    torch.manual_seed(0)
    m = torch.rand(20, 6) > 0.6
    for b in range(20):
        want = max((j for j in range(6) if m[b, j]), default=5)  # all-False row: N - 1
        assert newest(m)[b].item() == want


def test_future_targets_match_the_loop():
    torch.manual_seed(1)
    B, N, k = 4, 7, 3
    cut = torch.randint(0, N, (B, 2))
    got = future_targets(TARGETS, cut, k)
    assert got.shape == (B, 2, k)
    for b in range(B):
        for c in range(2):
            for i in range(k):
                j = int(cut[b, c]) + i
                assert got[b, c, i].item() == (int(TARGETS[b, j]) if j < N else 0)
    assert torch.equal(future_targets(TARGETS, cut[:, 0], k), got[:, 0])


def test_choose_cut_last_and_random():
    c, nxt = choose_cut(TARGETS, random=False)
    assert c.tolist() == [6] * 4 and nxt.tolist() == [8, 9, 7, 0]
    torch.manual_seed(2)
    seen = [set() for _ in range(4)]
    for _ in range(300):
        c, nxt = choose_cut(TARGETS, random=True)
        assert torch.equal(nxt, TARGETS.gather(1, c[:, None])[:, 0])
        for b in range(4):
            seen[b].add(int(c[b]))
    # every position with a target is drawn, and only those (a row without targets: the last one)
    assert seen == [{3, 4, 5, 6}, {5, 6}, set(range(7)), {6}]


def test_choose_cuts_newest_first_without_random():
    for n in (1, 3, 9):
        got = choose_cuts(TARGETS, n, random=False)
        assert got.tolist() == [[max(6 - i, 0) for i in range(n)]] * 4


def test_sinusoidal_matches_the_formula_and_pads_odd_widths():
    x = torch.tensor([0.0, 1.0, 17.0])
    for dim in (1, 6, 7):
        got = sinusoidal(x, dim)
        assert got.shape == (3, dim)
        half = dim // 2
        for p in range(3):
            for i in range(half):
                a = float(x[p]) * math.exp(-math.log(10000.0) * i / max(half, 1))
                assert got[p, i].item() == pytest.approx(math.sin(a), abs=1e-5)
                assert got[p, half + i].item() == pytest.approx(math.cos(a), abs=1e-5)
            assert (got[p, 2 * half :] == 0).all()


def test_time_buckets_are_clamped_log2_buckets():
    dt = torch.tensor([-5, 0, 1, 2, 3, 59, 3600, 86400 * 365, 2 ** 62])
    got = time_buckets(dt, n=16)
    for d, b in zip(dt.tolist(), got.tolist()):
        assert b == min(max(math.floor(math.log2(max(d, 0) + 1.0)) + 1, 1), 15)
