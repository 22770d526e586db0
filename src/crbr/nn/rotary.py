"""Rotary positions (RoPE, Su et al. 2021) over window positions and event times: the
angles of each event, their cos / sin, and the rotation of attention queries and keys, after
which query . key depends on the position and time differences only."""

from __future__ import annotations

import math

import torch

TIME_PERIODS_S = (60.0, 2.0 ** 27)  # rotary time frequencies span periods of a minute to ~4 years


def rotary_angles(pos: torch.Tensor, ts: torch.Tensor | None, n_pairs: int, use_time: bool) -> torch.Tensor:
    """(..., n_pairs) rotation angles of events at window positions `pos` (...) and times `ts` (...).

    With use_time the first half of the pairs encode the position (geometric frequencies from 1 to
    1/10000 per step, as RoPE) and the second half the time in seconds (periods from a minute to
    ~4 years); without, all pairs encode the position. Query . key after rotation depends on the
    position and time differences only. `ts` must be relative to a per-row reference (e.g. the
    row's newest event) so the angles stay small enough for float32; None = no time signal.
    """
    n_pos = n_pairs // 2 if use_time else n_pairs
    dev = pos.device
    f_pos = torch.exp(-math.log(10000.0) * torch.arange(n_pos, device=dev, dtype=torch.float64) / max(n_pos, 1))
    ang = [pos.double().unsqueeze(-1) * f_pos]
    if use_time:
        n_t = n_pairs - n_pos
        lo, hi = (math.log(p) for p in TIME_PERIODS_S)
        periods = torch.exp(torch.linspace(lo, hi, n_t, device=dev, dtype=torch.float64))
        t = ts.double() if ts is not None else torch.zeros(pos.shape, dtype=torch.float64, device=dev)
        ang.append(t.unsqueeze(-1) * (2 * math.pi / periods))
    return torch.cat(ang, -1)  # float64: an event years back turns a minute-period pair ~1e6 rad


def cos_sin(ang: torch.Tensor) -> torch.Tensor:
    """(..., P) angles -> (..., P, 2) float32 [cos, sin], reduced in the angles' own precision."""
    return torch.stack([ang.cos(), ang.sin()], -1).float()


def rotate(x: torch.Tensor, cs: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + P]) of x (B, H, L, 2P) by `cos_sin` values cs (B, L, P, 2),
    the same for every head."""
    P = cs.shape[-2]
    cos, sin = cs[:, None, ..., 0].to(x.dtype), cs[:, None, ..., 1].to(x.dtype)  # (B, 1, L, P)
    x1, x2 = x[..., :P], x[..., P:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
