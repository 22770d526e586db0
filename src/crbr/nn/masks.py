"""Attention masks over left-padded windows (padding = item id 0, the newest event last)."""

from __future__ import annotations

import torch


def causal_tril(L: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(L, L) bool, [t, s] True for s <= t: position t sees itself and the positions before it."""
    return torch.ones(L, L, dtype=torch.bool, device=device).tril()


def padded_causal_mask(keep: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool attention mask of a left-padded window, True = may attend.

    keep: (B, L) bool, True on real events. A query attends to the real events up to and
    including its own position; a padded query attends to itself only, so no row of the softmax
    is empty (no NaN) and its output, zeroed by the caller, stays finite."""
    L = keep.shape[1]
    eye = torch.eye(L, dtype=torch.bool, device=keep.device)
    return ((causal_tril(L, keep.device) & keep[:, None, :]) | eye).unsqueeze(1)
