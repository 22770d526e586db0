"""Helpers over left-padded history windows (the newest event at the last column): where a
training window is cut into history and prediction point, the targets after a cut, and the
encodings of an event's recency (sinusoidal) and of the time since it happened (log buckets)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sinusoidal(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., ) float positions -> (..., dim) sin/cos encoding (Vaswani et al. 2017); any length."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / max(half, 1))
    ang = x.float().unsqueeze(-1) * freq  # (..., half)
    out = torch.cat([ang.sin(), ang.cos()], dim=-1)
    return F.pad(out, (0, dim - 2 * half))


def time_buckets(dt: torch.Tensor, n: int = 64) -> torch.Tensor:
    """Seconds since an event -> log2 bucket id in [1, n-1] (0 = padding / unknown)."""
    b = torch.floor(torch.log2(dt.clamp(min=0).float() + 1.0)).long() + 1
    return b.clamp(1, n - 1)


def choose_cut(targets: torch.Tensor, random: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row a cut index c and the item that follows it (history = window positions <= c).

    targets: (B, N) next-item targets of a left-padded training window (0 = none). The last
    position is the newest event (c = N - 1, predicting the window's final target); with
    `random` each row draws c uniformly among its positions that have a target.
    Returns c (B,) and targets[b, c_b] (B,).
    """
    B, N = targets.shape
    if not random:
        c = torch.full((B,), N - 1, device=targets.device)
    else:
        n_real = (targets > 0).sum(1)  # positions with a target are the newest n_real of the window
        u = torch.rand(B, device=targets.device)
        c = N - 1 - (u * n_real.clamp(min=1)).long().clamp(max=N - 1)
    return c, targets.gather(1, c[:, None]).squeeze(1)


def future_targets(targets: torch.Tensor, cut: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) the next k events after each row's cut: targets[b, c_b], targets[b, c_b + 1], ...
    (0 past the window's end or where the window has no target). cut may be (B, C): (B, C, k)."""
    N = targets.shape[1]
    j = cut[..., None] + torch.arange(k, device=targets.device)  # (B, [C,] k)
    flat = j.reshape(j.shape[0], -1)
    got = targets.gather(1, flat.clamp(max=N - 1)).view(j.shape)
    return torch.where(j < N, got, torch.zeros_like(j))


def newest(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last True column of a (B, N) mask (N - 1 for an all-False row)."""
    return mask.shape[1] - 1 - mask.flip(1).long().argmax(1)


def choose_cuts(targets: torch.Tensor, n: int, random: bool) -> torch.Tensor:
    """(B, n) distinct cut indices per row, among the positions that have a target.

    `random`: drawn uniformly without replacement (cut 0 is one uniform draw, as `choose_cut`'s);
    otherwise the newest n positions, newest first. A row with fewer than n targets repeats no
    position: its extra cuts land on positions without a target (targets[b, c] == 0).
    """
    B, N = targets.shape
    if not random:
        return (N - 1 - torch.arange(n, device=targets.device)).clamp(min=0).expand(B, n)
    r = torch.rand(B, N, device=targets.device).masked_fill(targets <= 0, -1.0)
    return r.topk(min(n, N), dim=1).indices  # valid positions (r >= 0) come first, in random order
