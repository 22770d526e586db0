"""crbr.nn.rotary: rotations against a complex-number reference and their invariants."""

import math

import pytest
import torch

from crbr.nn import TIME_PERIODS_S, cos_sin, rotary_angles, rotate


def reference_rotate(x: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, 2P), ang (B, L, P): pair (x_i, x_{i+P}) as x_i + j x_{i+P}, times e^{j ang_i}."""
    P = ang.shape[-1]
    z = torch.complex(x[..., :P].double(), x[..., P:].double()) * torch.polar(torch.ones_like(ang.double()), ang.double())[:, None]
    return torch.cat([z.real, z.imag], -1)


def test_rotate_matches_complex_multiplication():
    torch.manual_seed(0)
    x, ang = torch.randn(2, 3, 5, 8), torch.randn(2, 5, 4) * 3
    torch.testing.assert_close(rotate(x, cos_sin(ang)).double(), reference_rotate(x, ang), atol=1e-5, rtol=1e-5)


def test_rotate_preserves_norms_pair_by_pair():
    torch.manual_seed(1)
    x, ang = torch.randn(2, 3, 5, 8), torch.randn(2, 5, 4) * 10
    y = rotate(x, cos_sin(ang))
    pair = lambda t: t[..., :4] ** 2 + t[..., 4:] ** 2  # noqa: E731
    torch.testing.assert_close(pair(y), pair(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_rotating_q_and_k_by_the_same_angle_leaves_their_dot_product_unchanged():
    torch.manual_seed(2)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    ang = torch.randn(2, 5, 4) * 50
    cs = cos_sin(ang)
    torch.testing.assert_close((rotate(q, cs) * rotate(k, cs)).sum(-1), (q * k).sum(-1), atol=1e-4, rtol=1e-4)


def test_zero_angles_are_the_identity():
    x = torch.randn(1, 2, 3, 6)
    assert torch.equal(rotate(x, cos_sin(torch.zeros(1, 3, 3))), x)


def test_cos_sin_is_float32_reduced_in_the_angles_precision():
    ang = torch.tensor([1e6 + 0.5], dtype=torch.float64)
    cs = cos_sin(ang)
    assert cs.shape == (1, 2) and cs.dtype == torch.float32
    assert cs[0, 0].item() == pytest.approx(math.cos(1e6 + 0.5), abs=1e-6)
    assert cs[0, 1].item() == pytest.approx(math.sin(1e6 + 0.5), abs=1e-6)


@pytest.mark.parametrize("use_time", [False, True])
def test_rotary_angles_match_the_loop(use_time):
    n_pairs = 6
    pos = torch.tensor([[0, 3, 9]])
    ts = torch.tensor([[-86400, -60, 0]])
    got = rotary_angles(pos, ts, n_pairs, use_time)
    assert got.shape == (1, 3, n_pairs) and got.dtype == torch.float64
    n_pos = n_pairs // 2 if use_time else n_pairs
    lo, hi = (math.log(p) for p in TIME_PERIODS_S)
    for e in range(3):
        for i in range(n_pairs):
            if i < n_pos:
                want = float(pos[0, e]) * 10000.0 ** (-i / n_pos)
            else:
                j, n_t = i - n_pos, n_pairs - n_pos
                period = math.exp(lo + (hi - lo) * j / (n_t - 1))
                want = float(ts[0, e]) * 2 * math.pi / period
            assert got[0, e, i].item() == pytest.approx(want, rel=1e-9, abs=1e-9)
