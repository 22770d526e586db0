import pytest
import torch
import torch.nn.functional as F

from crbr.models.losses import full_softmax_ce, mixed_negative_infonce, mixed_negative_logp


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


@pytest.mark.parametrize("chunk", [0, 4, 64])
def test_ce_with_sparse_extra_logits_matches_a_dense_hand_built_reference(chunk):
    """extra_idx / extra_val add sparse terms to the logits (repeats add up, zero padding is a
    no-op); value and the gradients of h, W and the extra values equal those of plain
    cross-entropy on the dense logit matrix built by a loop."""
    g = torch.Generator().manual_seed(1)
    P, C, D, S = 13, 9, 4, 5
    h0 = torch.randn(P, D, generator=g, dtype=torch.float64)
    W0 = torch.randn(C, D, generator=g, dtype=torch.float64)
    t = torch.randint(0, C, (P,), generator=g)
    idx = torch.randint(0, C, (P, S), generator=g)
    idx[:, 0] = t  # every row has a term on its own target, some rows repeat a class
    idx[0, 1] = idx[0, 2]
    v0 = torch.randn(P, S, generator=g, dtype=torch.float64)
    v0[:, -1] = 0.0  # padding entries
    h, W, v = (x.clone().requires_grad_() for x in (h0, W0, v0))
    loss = full_softmax_ce(h, W, t, chunk=chunk, extra_idx=idx, extra_val=v)
    loss.backward()
    hr, Wr, vr = (x.clone().requires_grad_() for x in (h0, W0, v0))
    dense = hr @ Wr.T
    # the dense reference: logits + sum of the terms that land on each class, through vr
    add = torch.stack([torch.stack([(vr[p] * (idx[p] == c)).sum() for c in range(C)]) for p in range(P)])
    ref = F.cross_entropy(dense + add, t)
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), atol=1e-10, rtol=0)
    for a, b in ((h, hr), (W, Wr), (v, vr)):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="both"):
        full_softmax_ce(h0, W0, t, extra_idx=idx)


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


def test_mixed_negative_logp_with_shared_positives_matches_a_loop_reference():
    """P rows per positive (a user's P query paths): each row is scored against its user's
    positive with the logQ of the mixed sampler and accidental hits masked, hand-computed."""
    torch.manual_seed(0)
    B, P, n_rand, n_items = 3, 2, 4, 6
    pos = torch.tensor([2, 5, 2])
    cand = torch.cat([pos, torch.tensor([5, 1, 2, 6])])
    C = len(cand)
    logits = torch.randn(B * P, C)
    item_logq = torch.log(torch.tensor([1.0, 1, 2, 3, 4, 5, 6]) / 21)
    got = mixed_negative_logp(logits, cand, item_logq, n_items, rows_per_positive=P)
    q = (B * item_logq[cand].double().exp() + n_rand / n_items) / C
    for r in range(B * P):
        b = r // P
        row = [float(logits[r, j]) - float(q[j].log()) for j in range(C)]
        row = [x if (j == b or int(cand[j]) != int(pos[b])) else float("-inf") for j, x in enumerate(row)]
        ref = row[b] - float(torch.logsumexp(torch.tensor(row), 0))
        assert abs(float(got[r]) - ref) < 1e-5, (r, float(got[r]), ref)
    # one row per positive is the plain InfoNCE
    single = logits[::P]
    torch.testing.assert_close(mixed_negative_infonce(single, cand, pos, item_logq, n_items),
                               -mixed_negative_logp(single, cand, item_logq, n_items).mean())
    with pytest.raises(ValueError, match="rows_per_positive"):
        mixed_negative_logp(logits[:5], cand, item_logq, n_items, rows_per_positive=2)
