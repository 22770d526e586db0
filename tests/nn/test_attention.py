"""crbr.nn.MHA against a query-by-query softmax reference and torch's MultiheadAttention."""

import math

import pytest
import torch

from crbr.nn import MHA, cos_sin, rotate


def reference(att: MHA, x, ctx, mask=None, sink_first=False, rope=None):
    """Loop over batch, heads and queries: softmax of the visible keys' scaled logits."""
    B, M, D = x.shape
    N, H = ctx.shape[1], att.h
    d = D // H
    q = att.q(x)  # (B, M, D)
    k, v = att.kv(ctx).split(D, -1)  # (B, N, D) each
    out = torch.zeros(B, M, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            qh, kh, vh = q[b, :, sl].double(), k[b, :, sl].double(), v[b, :, sl].double()
            if sink_first:
                kh = torch.cat([torch.zeros_like(kh[:1]), kh[1:]])
            if rope is not None:
                qh = rotate(qh[None, None], rope[0][b : b + 1].double())[0, 0]
                kh = rotate(kh[None, None], rope[1][b : b + 1].double())[0, 0]
            for m in range(M):
                vis = torch.ones(N, dtype=torch.bool) if mask is None else (mask[b] if mask.dim() == 2 else mask[b, m])
                logits = (kh[vis] @ qh[m]) / math.sqrt(d)
                out[b, m, sl] = torch.softmax(logits, 0) @ vh[vis]
    return att.o(out.float())


@pytest.fixture
def setup():
    torch.manual_seed(0)
    att = MHA(12, 3, 0.0).eval()
    x, ctx = torch.randn(2, 4, 12), torch.randn(2, 6, 12)
    mask = torch.rand(2, 6) > 0.4
    mask[:, 0] = True  # every query sees at least one key
    return att, x, ctx, mask


@pytest.mark.parametrize("need_weights", [False, True])
def test_key_mask_matches_the_reference(setup, need_weights):
    att, x, ctx, mask = setup
    with torch.no_grad():
        got, w = att(x, ctx, mask, need_weights=need_weights)
        torch.testing.assert_close(got, reference(att, x, ctx, mask), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(att(x, ctx)[0], reference(att, x, ctx), atol=1e-5, rtol=1e-5)
    if need_weights:
        assert w.shape == (2, 4, 6)
        assert (w[~mask[:, None, :].expand_as(w)] == 0).all()


def test_per_query_key_mask_matches_the_reference(setup):
    att, x, ctx, _ = setup
    mask = torch.rand(2, 4, 6) > 0.5
    mask[..., 2] = True
    with torch.no_grad():
        torch.testing.assert_close(att(x, ctx, mask)[0], reference(att, x, ctx, mask), atol=1e-5, rtol=1e-5)


def test_sink_and_rotary_match_the_reference(setup):
    att, x, ctx, mask = setup
    rope = (cos_sin(torch.randn(2, 4, 2)), cos_sin(torch.randn(2, 6, 2)))  # head width 4: 2 pairs
    with torch.no_grad():
        got = att(x, ctx, mask, rope=rope, sink_first=True)[0]
        torch.testing.assert_close(got, reference(att, x, ctx, mask, sink_first=True, rope=rope), atol=1e-5, rtol=1e-5)
        _, w = att(x, ctx, mask, need_weights=True, rope=rope, sink_first=True)
    # the sink's logit is 0 for every query: its weight is 1 / (1 + sum of exp of the others' logits)
    assert torch.all(w[..., 0] > 0)


def test_matches_torch_multihead_attention_with_a_key_padding_mask(setup):
    att, x, ctx, mask = setup
    ref = torch.nn.MultiheadAttention(12, 3, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([att.q.weight, att.kv.weight]))
        ref.in_proj_bias.copy_(torch.cat([att.q.bias, att.kv.bias]))
        ref.out_proj.weight.copy_(att.o.weight)
        ref.out_proj.bias.copy_(att.o.bias)
        want, want_w = ref(x, ctx, ctx, key_padding_mask=~mask, need_weights=True, average_attn_weights=True)
        got, w = att(x, ctx, mask, need_weights=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, want_w, atol=1e-5, rtol=1e-5)


def test_parameter_names_are_stable():
    """Checkpoints name these parameters (e.g. encoder.blocks.0.cross_attn.kv.weight)."""
    assert list(MHA(8, 2, 0.0).state_dict()) == ["q.weight", "q.bias", "kv.weight", "kv.bias", "o.weight", "o.bias"]
