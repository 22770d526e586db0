"""Transformer blocks shared by the models: the causal self-attention block of the sequential
encoders (SASRec, PinnerFormer, the residual mixture's experts) and the Set Transformer's
blocks (Lee et al., ICML 2019): MAB, and SAB / ISAB as `SetBlock`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MHA


class CausalBlock(nn.Module):
    """Pre-norm (SASRec reference code): x + MHA(LN(x)), then x + FFN(LN(x)).
    Post-norm (RecBole, BERT): LN(x + MHA(x)), then LN(x + FFN(x))."""

    def __init__(self, d: int, n_heads: int, ffn: int, dropout: float, attn_dropout: float, ffn_dropout: float,
                 pre_norm: bool = True, eps: float = 1e-8):
        super().__init__()
        self.n_heads, self.pre_norm = n_heads, pre_norm
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(ffn_dropout), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)
        self.p_attn = attn_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, L, D); mask: (B, 1, L, L) bool, True = may attend
        B, L, D = x.shape
        h = self.ln1(x) if self.pre_norm else x
        q, k, v = self.qkv(h).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p_attn if self.training else 0.0)
        a = self.drop(self.out(a.transpose(1, 2).reshape(B, L, D)))
        if self.pre_norm:
            x = x + a
            return x + self.drop(self.ffn(self.ln2(x)))
        x = self.ln1(x + a)
        return self.ln2(x + self.drop(self.ffn(x)))


class MAB(nn.Module):
    """Multihead attention block MAB(X, Y) (Set Transformer), pre-norm."""

    def __init__(self, d: int, n_heads: int, ffn: int, dropout: float):
        super().__init__()
        self.ln_q, self.ln_kv, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = MHA(d, n_heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # x: (B, n, D) queries; y: (B, m, D) the set attended to
        x = x + self.drop(self.attn(self.ln_q(x), self.ln_kv(y))[0])
        return x + self.drop(self.ffn(self.ln_f(x)))


class SetBlock(nn.Module):
    """SAB(X) = MAB(X, X), or ISAB(X) = MAB(X, MAB(I, X)) with k learnable inducing points."""

    def __init__(self, d: int, n_heads: int, ffn: int, dropout: float, inducing: int = 0):
        super().__init__()
        self.mab = MAB(d, n_heads, ffn, dropout)
        self.inducing = nn.Parameter(torch.randn(inducing, d) * 0.02) if inducing > 0 else None
        self.mab_ind = MAB(d, n_heads, ffn, dropout) if inducing > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inducing is None:
            return self.mab(x, x)
        h = self.mab_ind(self.inducing.unsqueeze(0).expand(x.shape[0], -1, -1), x)  # (B, k, D)
        return self.mab(x, h)
