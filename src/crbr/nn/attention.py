"""Attention shared by the models: multi-head attention with separate query and key/value
inputs and a boolean key mask (the Q-Former's self- and cross-attention, the Set Transformer's
MAB), optionally with rotary positions and an attention sink."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .rotary import rotate


class MHA(nn.Module):
    """Multi-head attention with separate query / key-value inputs and a boolean key mask."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.h = n_heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.o = nn.Linear(d, d)
        self.p = dropout

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, key_mask: torch.Tensor | None = None,
                need_weights: bool = False, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                sink_first: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x: (B, M, D) queries; ctx: (B, N, D) keys/values; key_mask: (B, N) or per query (B, M, N)
        # bool, True = visible. rope: `cos_sin` rotations (B, M, P, 2) of the queries and (B, N, P, 2)
        # of the keys (P = head width / 2). sink_first: ctx[:, 0] is an attention sink whose key is zero
        # after projection (logit 0 for every query, whatever the rotation) and whose value is kept
        B, M, D = x.shape
        N = ctx.shape[1]
        q = self.q(x).view(B, M, self.h, D // self.h).transpose(1, 2)  # (B, H, M, d)
        k, v = self.kv(ctx).view(B, N, 2, self.h, D // self.h).permute(2, 0, 3, 1, 4)  # 2 x (B, H, N, d)
        if sink_first:
            k = torch.cat([torch.zeros_like(k[:, :, :1]), k[:, :, 1:]], 2)
        if rope is not None:
            q, k = rotate(q, rope[0]), rotate(k, rope[1])
        if key_mask is None:
            mask = None
        else:
            mask = key_mask[:, None, None, :] if key_mask.dim() == 2 else key_mask[:, None]  # (B, 1, 1|M, N)
        if need_weights:  # explicit path (diagnostics): same math as SDPA, keeps the weights
            s = (q @ k.transpose(-1, -2)) / math.sqrt(D // self.h)
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            w = s.softmax(-1)  # (B, H, M, N)
            a = w @ v
            weights = w.mean(1)  # (B, M, N)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
            weights = None
        return self.o(a.transpose(1, 2).reshape(B, M, D)), weights
