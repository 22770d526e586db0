"""Losses shared by the models (candidate sampling, logQ correction, full-softmax CE).

`full_softmax_ce` is cross-entropy over the whole catalogue computed in row chunks: the
(P, I) logit matrix is never materialized, neither in the forward nor in the backward pass
(the backward recomputes each chunk's logits). With a small hidden size the logit matmul is
memory-bound, so keeping one chunk in cache is faster than the plain
`F.cross_entropy(h @ W.T, t)` and needs O(chunk x I) instead of O(P x I) memory. The plain form
is the reference it is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _ChunkedSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, W: torch.Tensor, t: torch.Tensor, chunk: int,
                idx: torch.Tensor | None = None, val: torch.Tensor | None = None) -> torch.Tensor:
        # h: (P, D) states, W: (C, D) class embeddings, t: (P,) class ids in [0, C)
        # idx, val: (P, S) optional sparse additive logit terms (logit[p, idx[p, s]] += val[p, s])
        dev = h.device.type
        # matmuls run in the autocast dtype when autocast is on (bf16 on CPU), in both passes
        mm = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
        with torch.autocast(dev, enabled=False):
            hm, Wm = h.to(mm), W.to(mm)
            P = h.shape[0]
            acc = torch.promote_types(mm, torch.float32)
            va = val.to(acc) if val is not None else None
            lse = torch.empty(P, dtype=acc, device=h.device)
            for s in range(0, P, chunk):
                z = (hm[s : s + chunk] @ Wm.T).to(acc)
                if idx is not None:
                    z.scatter_add_(1, idx[s : s + chunk], va[s : s + chunk])
                lse[s : s + chunk] = torch.logsumexp(z, dim=1)
            tgt = (h.to(acc) * W[t].to(acc)).sum(-1)  # (P,) target logits
            if idx is not None:
                tgt = tgt + (va * (idx == t[:, None])).sum(-1)
        ctx.save_for_backward(hm, Wm, t, lse, idx, va)
        ctx.chunk, ctx.dtypes = chunk, (h.dtype, W.dtype, None if val is None else val.dtype)
        return (lse - tgt).mean()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        hm, Wm, t, lse, idx, va = ctx.saved_tensors
        P, chunk = hm.shape[0], ctx.chunk
        acc = torch.promote_types(hm.dtype, torch.float32)  # accumulate in >= fp32
        gh = torch.empty(hm.shape, dtype=acc, device=hm.device)
        gW = torch.zeros(Wm.shape, dtype=acc, device=Wm.device)
        gval = torch.empty(idx.shape, dtype=acc, device=hm.device) if idx is not None else None
        scale = g.to(acc) / P
        for s in range(0, P, chunk):
            hc, tc = hm[s : s + chunk], t[s : s + chunk]
            z = (hc @ Wm.T).to(acc)
            if idx is not None:
                z.scatter_add_(1, idx[s : s + chunk], va[s : s + chunk])
            p = torch.exp(z - lse[s : s + chunk, None])  # (c, C) softmax
            p[torch.arange(len(tc), device=p.device), tc] -= 1.0
            p = p * scale
            if idx is not None:  # d loss / d val[p, s] = dlogit[p, idx[p, s]]
                gval[s : s + chunk] = p.gather(1, idx[s : s + chunk])
            p = p.to(hm.dtype)
            gh[s : s + chunk] = p @ Wm
            gW += (p.T @ hc).to(acc)
        gv = gval.to(ctx.dtypes[2]) if gval is not None and ctx.needs_input_grad[5] else None
        return gh.to(ctx.dtypes[0]), gW.to(ctx.dtypes[1]), None, None, None, gv


def full_softmax_ce(h: torch.Tensor, W: torch.Tensor, targets: torch.Tensor, chunk: int = 256,
                    extra_idx: torch.Tensor | None = None, extra_val: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of softmax(h @ W.T + E) against `targets`.

    h: (P, D), W: (C, D), targets: (P,) in [0, C). chunk <= 0 uses the plain reference form.
    extra_idx, extra_val: optional (P, S) sparse additive logit terms E: row p gets extra_val[p, s]
    added to class extra_idx[p, s] (repeated classes add up; a 0 value is a no-op, so rows can be
    padded with any class and 0). Gradients reach extra_val.
    """
    if (extra_idx is None) != (extra_val is None):
        raise ValueError("full_softmax_ce: pass both extra_idx and extra_val, or neither")
    if chunk <= 0:
        logits = h @ W.T
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if extra_idx is not None:
            logits = logits.scatter_add(1, extra_idx, extra_val.to(logits.dtype))
        return F.cross_entropy(logits, targets)
    return _ChunkedSoftmaxCE.apply(h, W, targets, chunk, extra_idx, extra_val)


def batch_candidates(pos: torch.Tensor, n_random: int, n_items: int) -> torch.Tensor:
    """(B + n_random,) candidate ids: the batch's positives (in-batch negatives for the other
    rows), then `n_random` items drawn uniformly from 1..n_items."""
    rand = torch.randint(1, n_items + 1, (n_random,), device=pos.device)
    return torch.cat([pos, rand])


def mixed_negative_infonce(logits: torch.Tensor, cand: torch.Tensor, pos: torch.Tensor, item_logq: torch.Tensor | None,
                           n_items: int) -> torch.Tensor:
    """InfoNCE where row b's positive is candidate b (see `batch_candidates`).

    logits:    (B, C) scaled similarities of each row to each candidate
    cand:      (C,) candidate ids, the first B are the rows' positives
    item_logq: (I,) log training frequency of each item, or None for no correction. The
               candidates are one draw of B items from the training frequency (the batch's
               positives) plus C - B uniform draws, so each logit is corrected by the log of the
               mixed sampling probability q_i = (B p_i + (C - B) / n_items) / C (logQ correction,
               Yi et al. 2019; mixed negative sampling, Yang et al. 2020).
    Candidates equal to a row's positive (other than its own column) are masked: accidental hits.
    """
    return -mixed_negative_logp(logits, cand, item_logq, n_items).mean()


def mixed_negative_logp(logits: torch.Tensor, cand: torch.Tensor, item_logq: torch.Tensor | None, n_items: int,
                        rows_per_positive: int = 1, extra_hits: torch.Tensor | None = None) -> torch.Tensor:
    """(R,) log-probability of each row's positive under the corrected softmax over candidates.

    Like `mixed_negative_infonce`, but several consecutive rows may share one positive: with
    rows_per_positive = P, rows b*P .. b*P + P - 1 all have candidate b as their positive (e.g. P
    query vectors of one user). logits: (B*P, C); cand: (C,) whose first B entries are the positives.
    extra_hits: optional (R, C) bool, more candidates to leave out of a row's softmax (e.g. the
    user's other positives); the row's own positive column is always kept.
    """
    R, C = logits.shape
    P = rows_per_positive
    if R % P:
        raise ValueError(f"mixed_negative_logp: {R} rows is not a multiple of rows_per_positive={P}")
    B = R // P
    col = torch.arange(B, device=logits.device).repeat_interleave(P)  # (R,) each row's positive column
    logits = logits.float()
    if item_logq is not None:
        q = (B * item_logq[cand].double().exp() + (C - B) / n_items) / C
        logits = logits - q.log().float()
    hit = cand[None, :] == cand[col][:, None]  # (R, C) candidates equal to the row's positive
    if extra_hits is not None:
        hit = hit | extra_hits
    hit[torch.arange(R, device=logits.device), col] = False
    logits = logits.masked_fill(hit, float("-inf"))
    return logits.gather(1, col[:, None])[:, 0] - torch.logsumexp(logits, 1)


def other_positives(mine: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """(R, C) bool: candidate c is one of row r's positives `mine` (R, k) (0 = none); the
    `extra_hits` of `mixed_negative_logp` when a row has several positives."""
    return ((mine[:, :, None] == cand[None, None, :]) & (mine[:, :, None] > 0)).any(1)


def logq_from_counts(item_counts) -> torch.Tensor:
    """(I,) log of each item's share of the training events (the in-batch sampling probability
    for logQ correction). Items never seen count once so the log stays finite; row 0 (padding)
    gets the smallest value."""
    import numpy as np

    cnt = torch.as_tensor(np.asarray(item_counts), dtype=torch.float64).clamp(min=1.0)
    logq = torch.log(cnt / cnt[1:].sum())
    logq[0] = logq[1:].min() if len(logq) > 1 else 0.0
    return logq.float()
