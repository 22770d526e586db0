"""Top-k lists: the one result type of ranking, shared by models, the evaluator, retrieval and
serving.

A `RankedItems` holds, per user, the k best items and their scores:

    items:  (B, k) int64 internal item ids, ordered by (-score, item id)
    scores: (B, k) float32
    provenance: optional per-item details of the same shape (e.g. which beam path found an item)

Rows with fewer than k rankable items are padded at the end with item 0 (the padding id, never
a real item) and score -inf. Ties are broken by the lower item id everywhere, so a list cut from
a longer one, or recomputed from exported files, is the same list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class RankedItems:
    """Per user the top-k items, best first (see the module docstring for the conventions)."""

    items: torch.Tensor  # (B, k) int64, 0 = padding
    scores: torch.Tensor  # (B, k) float32, -inf on padding
    provenance: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, k)

    def __post_init__(self) -> None:
        if self.items.shape != self.scores.shape or self.items.ndim != 2:
            raise ValueError(f"RankedItems: items {tuple(self.items.shape)} and scores {tuple(self.scores.shape)} "
                             "must be the same (B, k) shape")
        for name, v in self.provenance.items():
            if v.shape[:2] != self.items.shape:
                raise ValueError(f"RankedItems.provenance[{name!r}]: shape {tuple(v.shape)} does not match {tuple(self.items.shape)}")

    @property
    def k(self) -> int:
        return int(self.items.shape[1])

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def head(self, k: int) -> "RankedItems":
        """The first k of every list (a top-k list's prefix is the top-k' list)."""
        return RankedItems(self.items[:, :k], self.scores[:, :k], {n: v[:, :k] for n, v in self.provenance.items()})

    def to(self, device: "torch.device | str") -> "RankedItems":
        return RankedItems(self.items.to(device), self.scores.to(device), {n: v.to(device) for n, v in self.provenance.items()})


def exclusion_mask(scores: torch.Tensor, exclude: torch.Tensor | None, scope: torch.Tensor | None) -> torch.Tensor:
    """In place on (B, I) float scores: -inf on column 0 (padding), on the ids in `exclude` (B, H)
    (0 entries are padding and ignored) and outside `scope` ((I,) or (B, I) bool, True = allowed)."""
    scores[:, 0] = -math.inf
    if exclude is not None and exclude.numel():
        exclude = exclude.to(scores.device, torch.long)
        scores.scatter_(1, exclude, -math.inf)  # id 0 is padding and already -inf
    if scope is not None:
        scope = scope.to(scores.device, torch.bool)
        scores.masked_fill_(~scope.expand_as(scores), -math.inf)
    return scores


def rank_scores(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
                scope: torch.Tensor | None = None) -> RankedItems:
    """The top-k of full-catalogue scores (B, I), after `exclusion_mask`, as RankedItems.

    k may exceed the number of rankable items: the rows are then padded (item 0, score -inf)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = exclusion_mask(scores.detach().float().clone(), exclude, scope)
    kk = min(k, s.shape[1])
    vals, idx = topk_ordered(s, kk)
    if kk < k:
        pad = k - kk
        vals = torch.cat([vals, vals.new_full((len(vals), pad), -math.inf)], 1)
        idx = torch.cat([idx, idx.new_zeros((len(idx), pad))], 1)
    return RankedItems(idx, vals)


def topk_ordered(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items per row ordered by (-score, item id), exactly.

    scores: (B, I) float32, masked (-inf on padding / masked items), no NaN; 1 <= k <= I.
    Returns values (B, k) float32 and ids (B, k) int64. Positions whose score is -inf (fewer than
    k rankable items) hold id 0 and value -inf.

    torch.topk picks an arbitrary subset among items tied at the k-th value. A tie straddles the
    k boundary exactly when the (k+1)-th largest value equals the k-th, so one topk of k + 1 items
    detects it without another pass over the scores; those rows are repaired one by one by taking
    the lowest ids among the tied items.
    """
    B, I = scores.shape
    vals, idx = torch.topk(scores, min(k + 1, I), dim=1, largest=True, sorted=False)  # (B, k+1)
    o = torch.argsort(idx, dim=1)
    idx, vals = idx.gather(1, o), vals.gather(1, o)
    o = torch.sort(vals, dim=1, descending=True, stable=True).indices  # stable: ids stay ascending
    idx, vals = idx.gather(1, o), vals.gather(1, o)
    if k < I:
        straddle = (vals[:, k] == vals[:, k - 1]) & ~torch.isneginf(vals[:, k - 1])  # (B,)
        idx, vals = idx[:, :k].contiguous(), vals[:, :k].contiguous()
    else:
        straddle = torch.zeros(B, dtype=torch.bool, device=scores.device)
    kth = vals[:, -1:]  # (B, 1)
    for b in torch.nonzero(straddle).flatten().tolist():
        v = kth[b, 0].item()  # a Python float: kth is a view of vals, which the next lines write
        n_gt = int((vals[b] > v).sum())
        tied = torch.nonzero(scores[b] == v).flatten()[: k - n_gt]  # ascending ids
        idx[b, n_gt:] = tied
        vals[b, n_gt:] = v
    idx = torch.where(torch.isneginf(vals), torch.zeros_like(idx), idx)
    return vals, idx


