"""crbr.nn.masks against loop references."""

import pytest
import torch

from crbr.nn import CausalBlock, causal_tril, padded_causal_mask


def reference_mask(keep: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L): query t sees key s if s <= t and s is a real event, and always itself."""
    B, L = keep.shape
    out = torch.zeros(B, 1, L, L, dtype=torch.bool)
    for b in range(B):
        for t in range(L):
            for s in range(L):
                out[b, 0, t, s] = (s <= t and bool(keep[b, s])) or s == t
    return out


def test_causal_tril_is_s_le_t():
    for L in (1, 2, 7):
        want = torch.tensor([[s <= t for s in range(L)] for t in range(L)])
        assert causal_tril(L).dtype == torch.bool
        assert torch.equal(causal_tril(L), want)


@pytest.mark.parametrize("L", [1, 3, 8])
def test_padded_causal_mask_matches_the_loop(L):
    g = torch.Generator().manual_seed(L)
    keep = torch.rand(6, L, generator=g) > 0.4
    keep[0] = False  # all padding
    keep[1] = True  # no padding
    lengths = torch.randint(0, L + 1, (1,), generator=g)
    keep[2] = torch.arange(L) >= L - lengths  # left-padded, as the models' windows are
    got = padded_causal_mask(keep)
    assert got.shape == (6, 1, L, L) and got.dtype == torch.bool
    assert torch.equal(got, reference_mask(keep))


def test_every_query_sees_at_least_itself_so_padded_rows_stay_finite():
    keep = torch.tensor([[False, False, True, True], [False, False, False, False]])
    mask = padded_causal_mask(keep)
    assert mask.any(-1).all()
    torch.manual_seed(0)
    blk = CausalBlock(8, 2, 16, 0.0, 0.0, 0.0).eval()
    with torch.no_grad():
        out = blk(torch.randn(2, 4, 8), mask)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("pre_norm", [True, False])
def test_a_causal_block_under_the_mask_ignores_later_events_and_padding(pre_norm):
    torch.manual_seed(0)
    blk = CausalBlock(8, 2, 16, 0.0, 0.0, 0.0, pre_norm=pre_norm).eval()
    keep = torch.tensor([[False, False, True, True, True, True]])
    x = torch.randn(1, 6, 8)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, 8)  # later events change
    y[:, :2] = torch.randn(1, 2, 8)  # padding changes
    with torch.no_grad():
        a, b = blk(x, padded_causal_mask(keep)), blk(y, padded_causal_mask(keep))
    torch.testing.assert_close(a[:, 2:4], b[:, 2:4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])
