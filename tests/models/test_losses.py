import pytest
import torch
import torch.nn.functional as F

from crbr.models.losses import full_softmax_ce


@pytest.mark.parametrize("P,C,D,chunk", [(37, 11, 5, 8), (64, 300, 16, 256), (5, 7, 3, 1)])
def test_chunked_ce_equals_reference_value_and_gradients(P, C, D, chunk):
    g = torch.Generator().manual_seed(P)
    h0 = torch.randn(P, D, generator=g, dtype=torch.float64)
    W0 = torch.randn(C, D, generator=g, dtype=torch.float64)
    t = torch.randint(0, C, (P,), generator=g)
    out = []
    for ch in (0, chunk):
        h, W = h0.clone().requires_grad_(), W0.clone().requires_grad_()
        loss = full_softmax_ce(h, W, t, chunk=ch)
        loss.backward()
        out.append((loss.detach(), h.grad, W.grad))
    (l_ref, gh_ref, gW_ref), (l, gh, gW) = out
    assert torch.allclose(l, l_ref, atol=1e-10)
    assert torch.allclose(gh, gh_ref, atol=1e-10)
    assert torch.allclose(gW, gW_ref, atol=1e-10)
    assert torch.allclose(l_ref, F.cross_entropy(h0 @ W0.T, t))


def test_chunked_ce_under_bf16_autocast_is_close_to_fp32():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 16, generator=g, requires_grad=True)
    W = torch.randn(200, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 200, (50,), generator=g)
    ref = F.cross_entropy(h @ W.T, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = full_softmax_ce(h, W, t, chunk=16)
    loss.backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == torch.float32 and W.grad.dtype == torch.float32
    assert abs(loss.item() - ref.item()) < 0.05 * ref.item()
