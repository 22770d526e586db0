"""Contextual residual item embedding (the generative path's item input, design chapter 4.1):

    E_final = (1 - g) * E_static + g * E_learnable
    g       = sigmoid(MLP(concat(stopgrad(U), E_static)))

E_static is the frozen item embedding the semantic IDs were built from, projected to the model
width; E_learnable is a free table of the same width; U is the user profile (e.g. pooled
Q-Former tokens). The gate is per user and item, starts almost closed (the MLP's last bias is
-5, g = sigmoid(-5) = 0.0067), and never sends gradient into U: the profile is read, not shaped,
by what items the user meets.
"""

from __future__ import annotations

import torch
from torch import nn


class ContextualResidualEmbedding(nn.Module):
    """static: (I, F) frozen item features (row 0 = padding); d_model: output width;
    d_user: width of U; hidden: the gate MLP's width; gate_bias: its last bias at init."""

    def __init__(self, static: torch.Tensor, d_model: int, d_user: int, hidden: int = 64, gate_bias: float = -5.0):
        super().__init__()
        I, F = static.shape
        self.register_buffer("static", static.detach().float().clone())  # (I, F) frozen
        self.proj = nn.Linear(F, d_model)  # E_static = proj(static[i])
        self.learnable = nn.Embedding(I, d_model, padding_idx=0)
        nn.init.normal_(self.learnable.weight, std=0.02)
        with torch.no_grad():
            self.learnable.weight[0].zero_()
        self.gate = nn.Sequential(nn.Linear(d_user + d_model, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.constant_(self.gate[-1].bias, gate_bias)

    def static_embedding(self, items: torch.Tensor) -> torch.Tensor:
        """(..., d_model) E_static of item ids (...)."""
        return self.proj(self.static[items])

    def forward(self, items: torch.Tensor, user: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """items (B, N) ids, user (B, d_user) -> E_final (B, N, d_model) and the gate g (B, N)."""
        e_static = self.static_embedding(items)  # (B, N, D)
        u = user.detach()[:, None, :].expand(-1, items.shape[1], -1)  # (B, N, d_user), no gradient into U
        g = torch.sigmoid(self.gate(torch.cat([u, e_static], -1))).squeeze(-1)  # (B, N)
        e = (1 - g[..., None]) * e_static + g[..., None] * self.learnable(items)
        return e * (items > 0)[..., None], g


def gate_summary(g: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """The gate's distribution over real positions: mean, quantiles and share above 0.5."""
    v = (g[mask] if mask is not None else g.reshape(-1)).detach().float()
    if v.numel() == 0:
        return {}
    q = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9], device=v.device)).tolist()
    return {"gate_mean": float(v.mean()), "gate_p10": q[0], "gate_p50": q[1], "gate_p90": q[2],
            "gate_open_share": float((v > 0.5).float().mean())}
