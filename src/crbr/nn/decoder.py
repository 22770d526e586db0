"""A causal decoder block that can continue many sequences from one shared context.

`forward(x, mask)` runs a (B, T) sequence and can keep each layer's keys and values; `extend`
then runs new tokens for N continuations (e.g. beams, or candidate items) of those sequences,
each attending to its own sequence's cached keys / values and causally to its new tokens, without
recomputing or copying the context per continuation more than one chunk at a time. A
continuation's own keys / values come back too, so the next token (the next beam-search level)
runs alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DecoderBlock(nn.Module):
    """Pre-norm: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, d: int, n_heads: int, ffn: int, dropout: float):
        super().__init__()
        if d % n_heads:
            raise ValueError(f"width {d} not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)
        self.p = dropout

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (B, H, T, dh)

    def _finish(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        B, H, T, dh = a.shape
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(B, T, H * dh)))
        return x + self.drop(self.ffn(self.ln2(x)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """x (B, T, D), mask (B, 1, T, T) bool (True = may attend); appends (k, v) to `cache`."""
        q, k, v = self._qkv(x)
        if cache is not None:
            cache.append((k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        return self._finish(x, a)

    def extend(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor], past_mask: torch.Tensor,
               own: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """New tokens x (B, G, j, D): G continuations of each of the B cached sequences (past keys
        and values (B, H, T, dh), attendable keys past_mask (B, T)), each continuation after its
        own earlier new tokens, whose keys / values `own` ((B, G, H, j0, dh) each, or None) an
        earlier call returned. Each new token sees its sequence's past, its continuation's earlier
        tokens and, causally, the new ones. Returns (B, G, j, D) and the continuation's keys /
        values (B, G, H, j0 + j, dh), to pass as `own` with the next tokens. The past is read once
        per sequence, never copied per continuation."""
        B, G, j, D = x.shape
        q, k, v = self._qkv(x.reshape(B * G, j, D))  # (B*G, H, j, dh)
        H, dh = q.shape[1], q.shape[3]
        q, k, v = (t.view(B, G, H, j, dh) for t in (q, k, v))
        if own is not None:
            k, v = torch.cat([own[0], k], 3), torch.cat([own[1], v], 3)  # (B, G, H, j0 + j, dh)
        j0 = k.shape[3] - j
        pk, pv = past
        scale = dh ** -0.5
        s_past = torch.einsum("bghjd,bhtd->bghjt", q, pk) * scale  # (B, G, H, j, T)
        s_past = s_past.masked_fill(~past_mask[:, None, None, None, :], float("-inf"))
        s_new = torch.einsum("bghjd,bghkd->bghjk", q, k) * scale  # (B, G, H, j, j0 + j)
        causal = torch.ones(j, j0 + j, dtype=torch.bool, device=x.device).tril(j0)
        s_new = s_new.masked_fill(~causal, float("-inf"))
        p = torch.softmax(torch.cat([s_past, s_new], -1), -1)
        T = pk.shape[2]
        a = torch.einsum("bghjt,bhtd->bghjd", p[..., :T], pv) + torch.einsum("bghjk,bghkd->bghjd", p[..., T:], v)
        out = self._finish(x.reshape(B * G, j, D), a.reshape(B * G, H, j, dh))
        return out.view(B, G, j, D), (k, v)
