"""The contextual residual item embedding: starts almost closed, mixes as written, no gradient
into the user profile, gradients into the learnable table and the gate MLP."""

import math

import torch

from crbr.nn import ContextualResidualEmbedding, gate_summary


def make():
    torch.manual_seed(0)
    return ContextualResidualEmbedding(torch.randn(11, 6), d_model=8, d_user=5, hidden=16)


def test_the_gate_starts_at_sigmoid_of_minus_five_and_the_mix_is_as_written():
    m = make()
    items = torch.tensor([[1, 2, 0], [3, 4, 5]])
    user = torch.randn(2, 5)
    e, g = m(items, user)
    assert torch.allclose(g, torch.full_like(g, 1 / (1 + math.exp(5))), atol=2e-3)  # the MLP's last weights are small
    ref = (1 - g[..., None]) * m.static_embedding(items) + g[..., None] * m.learnable(items)
    torch.testing.assert_close(e, ref * (items > 0)[..., None])
    assert (e[0, 2] == 0).all()  # padding stays zero
    s = gate_summary(g, items > 0)
    assert 0.005 < s["gate_mean"] < 0.009 and s["gate_open_share"] == 0.0


def test_no_gradient_reaches_the_user_profile_but_the_table_and_gate_learn():
    m = make()
    items = torch.tensor([[1, 2, 3]])
    user = torch.randn(1, 5, requires_grad=True)
    e, g = m(items, user)
    (e.sum() + g.sum()).backward()
    assert user.grad is None
    assert m.learnable.weight.grad is not None and m.learnable.weight.grad[1:4].abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.gate.parameters())
    assert m.proj.weight.grad is not None
    assert not m.static.requires_grad
