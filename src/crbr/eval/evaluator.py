"""Honest full-ranking evaluation (DESIGN.md §4): every target is ranked against the whole catalogue.

No sampled negatives. The metric definitions and the tie rule (lower item id first) are in
`crbr.eval.metrics`. The evaluator streams users in chunks whose score matrix stays around
`chunk_bytes` (256 MiB by default), so a 1M-item catalogue is evaluated in bounded memory, and
under torch.distributed each rank evaluates a strided share of the users and the sums are
all-reduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from ..data.batching import eval_batches
from ..data.dataset import EvalSet, SequenceDataset
from .metrics import _check_ks, popularity_buckets, target_ranks, topk_ordered, user_metrics

ScoreFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]

HR_BUCKET_K = 10  # popularity buckets report HR@10


@dataclass
class EvalResult:
    """Result of one full-ranking evaluation.

    metrics:       {"HR@K", "NDCG@K", "Recall@K", "coverage@K" for K in ks, "MRR"} -> mean over users
                   (coverage@K = fraction of the n_items catalogue in at least one user's top K)
    bucket_hr10:   (n_buckets,) HR@10 per item-popularity bucket, head -> tail: each (user, distinct
                   target) pair is one trial, hit if that target ranks <= 10; NaN for an empty bucket
    bucket_counts: (n_buckets,) number of (user, target) pairs whose target is in the bucket
    n_users:       number of evaluated users
    protocol:      one line describing how the numbers were obtained (printed with every result)
    topk_items:    (U, export_k) int64 internal item ids ordered by (-score, id), or None when not
                   exported (and on ranks != 0 in distributed mode); 0 = no rankable item left
    topk_scores:   (U, export_k) float32 scores of those items (-inf where the id is 0)
    users:         (U,) int64 internal user rows, in the order of topk_items (the EvalSet order)
    n_targets:     number of (user, distinct target) pairs
    """

    metrics: dict[str, float]
    bucket_hr10: list[float]
    bucket_counts: list[int]
    n_users: int
    protocol: str
    topk_items: np.ndarray | None = None
    topk_scores: np.ndarray | None = None
    users: np.ndarray | None = None
    n_targets: int = 0
    ks: tuple[int, ...] = field(default=(5, 10, 20, 50))

    def to_dict(self) -> dict:
        """JSON-serialisable summary (no top-K arrays)."""
        return {
            "protocol": self.protocol,
            "n_users": self.n_users,
            "n_targets": self.n_targets,
            "metrics": dict(self.metrics),
            "bucket_hr10": list(self.bucket_hr10),
            "bucket_counts": list(self.bucket_counts),
        }

    def format(self) -> str:
        """Readable table: protocol line, one row per K, MRR, HR@10 per popularity bucket."""
        lines = [f"protocol: {self.protocol}", f"{'K':>5} {'HR':>8} {'NDCG':>8} {'Recall':>8} {'coverage':>9}"]
        for k in self.ks:
            m = self.metrics
            lines.append(
                f"{k:>5} {m[f'HR@{k}']:>8.4f} {m[f'NDCG@{k}']:>8.4f} {m[f'Recall@{k}']:>8.4f} {m[f'coverage@{k}']:>9.4f}"
            )
        lines.append(f"{'MRR':>5} {self.metrics['MRR']:>8.4f}")
        nb = len(self.bucket_hr10)
        lines.append(f"HR@10 by item popularity ({nb} buckets of equal item count, head -> tail):")
        for b, (hr, n) in enumerate(zip(self.bucket_hr10, self.bucket_counts)):
            tag = " (head)" if b == 0 else " (tail)" if b == nb - 1 else ""
            lines.append(f"  bucket {b + 1}{tag:<7} HR@10 {hr:.4f}  targets {n}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _dedup_targets(es: EvalSet, n_items: int) -> EvalSet:
    """The same EvalSet with each user's targets made distinct (binary relevance); checks ids."""
    counts = np.diff(es.target_offsets).astype(np.int64)
    if len(counts) and counts.min() < 1:
        raise ValueError("every evaluated user needs at least one target")
    t = np.asarray(es.target_items, dtype=np.int64)
    if len(t) and (t.min() < 1 or t.max() > n_items):
        raise ValueError(f"target items must lie in 1..{n_items}")
    u = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    key = np.unique(u * (n_items + 1) + t)  # sorted: grouped by user, ids ascending
    if len(key) == len(t):
        return es
    nu = np.bincount(key // (n_items + 1), minlength=len(counts))
    offs = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(nu, out=offs[1:])
    return EvalSet(es.users, es.hist_len, offs, (key % (n_items + 1)).astype(np.int32))


class Evaluator:
    """Full-ranking evaluation of a scoring function on an EvalSet (DESIGN.md §4).

    ds:           the processed dataset (histories are read from it)
    eval_set:     users, visible history lengths and targets (leave-one-out or temporal split);
                  duplicate targets of one user are counted once (binary relevance)
    train_counts: (I,) training interactions per item (`train_item_counts`), for popularity buckets
    ks:           cut-offs for HR / NDCG / Recall / coverage
    mask_history: give every item of the user's visible history (all hist_len events, not only the
                  last max_len the model sees) score -inf before ranking. A target that also occurs
                  in the visible history (a repeat) then cannot be retrieved and counts as a miss.
    max_len:      history window passed to score_fn
    batch_size:   users per score_fn call, lowered so a chunk's (B, I) float32 matrix stays
                  within chunk_bytes
    export_k:     length of the exported top-K lists (`evaluate(export=True)`)
    n_buckets:    number of item-popularity buckets for HR@10
    split_name:   named in the protocol line (e.g. "leave_one_out", "temporal")
    chunk_bytes:  memory budget of one chunk's score matrix (and of the comparison temporaries)
    """

    def __init__(
        self,
        ds: SequenceDataset,
        eval_set: EvalSet,
        train_counts: np.ndarray,
        ks=(5, 10, 20, 50),
        mask_history: bool = False,
        max_len: int = 200,
        batch_size: int = 256,
        export_k: int = 100,
        n_buckets: int = 5,
        split_name: str | None = None,
        chunk_bytes: int = 256 * 2**20,
    ):
        self.ds = ds
        self.n_items = ds.n_items
        self.I = ds.n_items + 1
        self.eval_set = _dedup_targets(eval_set, self.n_items)
        train_counts = np.asarray(train_counts)
        if train_counts.shape != (self.I,):
            raise ValueError(f"train_counts must have shape ({self.I},), got {train_counts.shape}")
        self.ks = _check_ks(ks)
        self.mask_history = bool(mask_history)
        self.max_len = int(max_len)
        self.batch_size = int(batch_size)
        self.export_k = int(export_k)
        if self.export_k < 1:
            raise ValueError("export_k must be >= 1")
        self.n_buckets = int(n_buckets)
        self.bucket_of = popularity_buckets(train_counts, self.n_buckets)  # (I,)
        self.split_name = split_name
        self.chunk_bytes = int(chunk_bytes)
        self.chunk_users = max(1, min(self.batch_size, self.chunk_bytes // (4 * self.I)))

    # ----------------------------------------------------------------- protocol
    def protocol(self) -> str:
        es = self.eval_set
        n_u, n_t = len(es), len(es.target_items)
        per = "1 per user" if n_t == n_u else f"{n_t / max(n_u, 1):.2f} per user"
        parts = [f"full ranking over {self.n_items} items"]
        if self.split_name:
            parts.append(self.split_name)
        parts += [
            f"targets: {n_t} ({per})",
            f"history masked: {'yes' if self.mask_history else 'no'}",
            "ties: lower item id first",
            f"model input: last {self.max_len} events",
            f"users: {n_u}",
        ]
        return ", ".join(parts)

    # --------------------------------------------------------------- evaluation
    def evaluate(self, score_fn: ScoreFn, export: bool = False) -> EvalResult:
        """Rank every target of every user against the full catalogue and average the metrics.

        score_fn(batch) -> (B, I) float scores (any float dtype, any device); called under
        torch.no_grad() on batches from `eval_batches`. Under torch.distributed every rank must
        call this; each evaluates users rank, rank + world, ... and all ranks return the global
        metrics; exported top-K lists are gathered on rank 0 only.
        """
        rank, world = _dist()
        es = self.eval_set
        local = es if world == 1 else es.subset(np.arange(rank, len(es), world))
        ks = self.ks
        k_list = min(self.n_items, max(ks[-1], self.export_k if export else 0))
        k_exp = min(self.n_items, self.export_k)
        names = [f"{m}@{k}" for k in ks for m in ("HR", "NDCG", "Recall")] + ["MRR"]
        sums = dict.fromkeys(names, 0.0)
        b_hits = np.zeros(self.n_buckets, dtype=np.float64)
        b_cnt = np.zeros(self.n_buckets, dtype=np.float64)
        best_pos = torch.full((self.I,), k_list, dtype=torch.int64)  # best list position per item
        tk_items: list[np.ndarray] = []
        tk_scores: list[np.ndarray] = []
        buf: torch.Tensor | None = None  # (chunk_users, I) float32, reused by every chunk

        with torch.no_grad():
            for sl, batch in eval_batches(self.ds, local, self.max_len, self.chunk_users):
                users = local.users[sl]
                B = len(users)
                buf = self._scores_buffer(buf, score_fn(batch), B)
                scores = self._masked_scores(buf[:B], users, local.hist_len[sl])  # (B, I) float32
                offs = local.target_offsets[sl.start : sl.stop + 1]
                tgt = np.asarray(local.target_items[offs[0] : offs[-1]], dtype=np.int64)  # (P,)
                offs = offs - offs[0]
                rows = np.repeat(np.arange(B, dtype=np.int64), np.diff(offs))  # (P,)
                ranks = target_ranks(scores, torch.from_numpy(rows), torch.from_numpy(tgt), self.chunk_bytes // 4)
                for name, v in user_metrics(ranks, offs, ks).items():
                    sums[name] += float(v.sum())
                bk = self.bucket_of[tgt]  # (P,)
                b_hits += np.bincount(bk, weights=(ranks <= HR_BUCKET_K).astype(np.float64), minlength=self.n_buckets)
                b_cnt += np.bincount(bk, minlength=self.n_buckets)

                vals, idx = topk_ordered(scores, k_list)  # (B, k_list)
                idx = idx.cpu()
                pos = torch.arange(k_list).expand(B, k_list)
                best_pos.scatter_reduce_(0, idx.reshape(-1), pos.reshape(-1), reduce="amin")
                if export:
                    tk_items.append(idx[:, :k_exp].numpy())
                    tk_scores.append(vals[:, :k_exp].cpu().numpy())
                del scores, batch

        n_users, n_targets = float(len(local)), float(len(local.target_items))
        if world > 1:
            packed = np.concatenate([[n_users, n_targets], [sums[n] for n in names], b_hits, b_cnt])
            dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
            t = torch.from_numpy(packed).to(dev)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            bp = best_pos.to(dev)
            dist.all_reduce(bp, op=dist.ReduceOp.MIN)
            packed, best_pos = t.cpu().numpy(), bp.cpu()
            n_users, n_targets = packed[0], packed[1]
            sums = dict(zip(names, packed[2 : 2 + len(names)].tolist()))
            b_hits = packed[2 + len(names) : 2 + len(names) + self.n_buckets]
            b_cnt = packed[2 + len(names) + self.n_buckets :]

        metrics = {n: (sums[n] / n_users if n_users else math.nan) for n in names}
        covered = best_pos[1:].numpy()  # (n_items,)
        for k in ks:
            metrics[f"coverage@{k}"] = float((covered < k).sum()) / self.n_items
        metrics = {n: metrics[n] for n in self._key_order()}

        topk_items = topk_scores = None
        if export:
            topk_items, topk_scores = self._collect_export(tk_items, tk_scores, k_exp, rank, world)
        return EvalResult(
            metrics=metrics,
            bucket_hr10=[float(h / c) if c else math.nan for h, c in zip(b_hits, b_cnt)],
            bucket_counts=[int(c) for c in b_cnt],
            n_users=int(n_users),
            protocol=self.protocol(),
            topk_items=topk_items,
            topk_scores=topk_scores,
            users=np.asarray(es.users, dtype=np.int64),
            n_targets=int(n_targets),
            ks=ks,
        )

    # ------------------------------------------------------------------ helpers
    def _key_order(self) -> list[str]:
        keys = [f"{m}@{k}" for m in ("HR", "NDCG", "Recall") for k in self.ks] + ["MRR"]
        return keys + [f"coverage@{k}" for k in self.ks]

    def _scores_buffer(self, buf: torch.Tensor | None, scores: torch.Tensor, B: int) -> torch.Tensor:
        """Check score_fn's output and copy it as float32 into the reused chunk buffer.

        The copy leaves the caller's tensor untouched (it may be a view of a cached matrix) and
        reusing one buffer avoids faulting in a fresh chunk-sized allocation for every chunk.
        """
        if scores.ndim != 2 or scores.shape != (B, self.I):
            raise ValueError(f"score_fn must return ({B}, {self.I}) scores, got {tuple(scores.shape)}")
        if not scores.is_floating_point():
            raise TypeError(f"score_fn must return float scores, got {scores.dtype}")
        if buf is None or buf.device != scores.device or buf.shape[0] < B:
            buf = None  # free the old buffer first
            buf = torch.empty((max(B, self.chunk_users), self.I), dtype=torch.float32, device=scores.device)
        buf[:B].copy_(scores.detach())
        return buf

    def _masked_scores(self, scores: torch.Tensor, users: np.ndarray, hist_len: np.ndarray) -> torch.Tensor:
        """In place on float32 (B, I) scores: reject NaN, set padding (and history items if masked) to -inf."""
        B = len(users)
        if B and torch.isnan(scores.amax()):  # amax propagates NaN; one fast reduction
            raise ValueError("score_fn returned NaN scores")
        scores[:, 0] = -math.inf
        if self.mask_history:
            lens = np.asarray(hist_len, dtype=np.int64)  # (B,)
            starts = np.asarray(self.ds.offsets, dtype=np.int64)[np.asarray(users)]  # (B,)
            r = np.repeat(np.arange(B, dtype=np.int64), lens)  # (H,)
            first = np.repeat(np.cumsum(lens) - lens, lens)
            ev = np.arange(int(lens.sum()), dtype=np.int64) - first + np.repeat(starts, lens)
            items = np.asarray(self.ds.items[ev], dtype=np.int64)  # (H,)
            dev = scores.device
            scores[torch.from_numpy(r).to(dev), torch.from_numpy(items).to(dev)] = -math.inf
        return scores

    def _collect_export(self, items, scores, k, rank, world):
        """Concatenate local top-K lists; in distributed mode gather them on rank 0 in EvalSet order."""
        loc_i = np.concatenate(items) if items else np.zeros((0, k), dtype=np.int64)
        loc_s = np.concatenate(scores) if scores else np.zeros((0, k), dtype=np.float32)
        if world == 1:
            return loc_i, loc_s
        parts = [None] * world if rank == 0 else None
        dist.gather_object((loc_i, loc_s), parts, dst=0)
        if rank != 0:
            return None, None
        U = len(self.eval_set)
        out_i = np.zeros((U, k), dtype=np.int64)
        out_s = np.full((U, k), -np.inf, dtype=np.float32)
        for r, (pi, ps) in enumerate(parts):
            out_i[r::world], out_s[r::world] = pi, ps  # rank r evaluated users r, r + world, ...
        return out_i, out_s
