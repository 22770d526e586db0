"""Honest full-ranking evaluation (docs/design.md, "Evaluation protocol"): every target is ranked against the whole catalogue.

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
from ..ranking import RankedItems
from .metrics import _check_ks, popularity_buckets, target_ranks, topk_ordered, user_metrics

ScoreFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]
# rank_fn(batch, k, exclude (B, H) or None) -> RankedItems (crbr.ranking)
RankFn = Callable[[dict[str, torch.Tensor], int, "torch.Tensor | None"], RankedItems]

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
        mrr = next(n for n in self.metrics if n.startswith("MRR"))  # "MRR", or "MRR@K" on top-K lists
        lines.append(f"{mrr:>5} {self.metrics[mrr]:>8.4f}")
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
    """Full-ranking evaluation of a scoring function on an EvalSet (docs/design.md, "Evaluation protocol").

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
    def protocol(self, ranking: str | None = None, scope: torch.Tensor | None = None) -> str:
        """One line saying how the numbers were obtained; `ranking` describes a model's own top-K
        lists when they replace the full ranking (evaluate_ranked); `scope` the items ranked."""
        es = self.eval_set
        n_u, n_t = len(es), len(es.target_items)
        per = "1 per user" if n_t == n_u else f"{n_t / max(n_u, 1):.2f} per user"
        parts = [f"ranked by {ranking} over {self.n_items} items" if ranking else f"full ranking over {self.n_items} items"]
        if scope is not None:
            parts.append(f"scope: {int(scope[1:].sum())} of {self.n_items} items (targets outside it are misses)")
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
    def evaluate(self, score_fn: ScoreFn, export: bool = False, scope: torch.Tensor | None = None) -> EvalResult:
        """Rank every target of every user against the full catalogue and average the metrics.

        score_fn(batch) -> (B, I) float scores (any float dtype, any device); called under
        torch.no_grad() on batches from `eval_batches`. Under torch.distributed every rank must
        call this; each evaluates users rank, rank + world, ... and all ranks return the global
        metrics; exported top-K lists are gathered on rank 0 only. `scope` (I,) bool ranks only
        those items (the others get -inf, so a target outside the scope is a miss).
        """
        scope = self._check_scope(scope)
        depth = min(self.n_items, max(self.ks[-1], self.export_k if export else 0))
        acc = _Sums(self, depth, export)
        buf: torch.Tensor | None = None  # (chunk_users, I) float32, reused by every chunk
        with torch.no_grad():
            for sl, batch, local in self._chunks():
                B = sl.stop - sl.start
                buf = self._scores_buffer(buf, score_fn(batch), B)
                scores = self._masked_scores(buf[:B], local.users[sl], local.hist_len[sl])  # (B, I) float32
                if scope is not None:
                    scores[:, ~scope.to(scores.device)] = -math.inf
                rows, tgt, offs = self._targets(local, sl)
                ranks = target_ranks(scores, torch.from_numpy(rows), torch.from_numpy(tgt), self.chunk_bytes // 4)
                vals, idx = topk_ordered(scores, depth)  # (B, depth)
                acc.add(ranks, tgt, offs, vals, idx)
                del scores, batch
        return acc.result(self.protocol(scope=scope))

    def _check_scope(self, scope: torch.Tensor | None) -> torch.Tensor | None:
        if scope is None:
            return None
        scope = torch.as_tensor(scope, dtype=torch.bool).cpu()
        if scope.shape != (self.I,):
            raise ValueError(f"scope must be an ({self.I},) bool mask over item ids 0..{self.n_items}, "
                             f"got shape {tuple(scope.shape)}")
        if not scope[1:].any():
            raise ValueError("scope selects no item")
        return scope

    def evaluate_ranked(self, rank_fn: RankFn, export: bool = False, ranking: str = "the model's top-K",
                        scope: torch.Tensor | None = None) -> EvalResult:
        """The same metrics from a model's own top-K lists, for models that rank instead of
        scoring the whole catalogue (beam search, generative decoding).

        rank_fn(batch, k, exclude) -> RankedItems with k = max(ks) (or export_k when larger),
        ordered by (-score, id), padded with item 0; `exclude` (B, H) holds each user's whole
        visible history when the protocol masks it (else None), and no list may contain an
        excluded item. A target outside the list is a miss; MRR is computed on the list and named
        MRR@K. For a model that can score the catalogue this gives the same HR / NDCG / Recall /
        coverage as `evaluate`. `ranking` describes the lists in the protocol line; `scope` (I,)
        bool, when the lists were ranked within a scope, is checked (no item outside it) and named.
        """
        scope = self._check_scope(scope)
        depth = max(self.ks[-1], self.export_k if export else 0)
        acc = _Sums(self, depth, export, mrr_name=f"MRR@{depth}")
        with torch.no_grad():
            for sl, batch, local in self._chunks():
                users, hist = local.users[sl], local.hist_len[sl]
                exclude = self._history_ids(users, hist) if self.mask_history else None
                res = rank_fn(batch, depth, exclude)
                items, vals = self._check_ranked(res, len(users), depth, exclude)
                if scope is not None and (~scope[items] & (items > 0)).any():
                    raise ValueError("rank() returned an item outside the scope")
                rows, tgt, offs = self._targets(local, sl)
                hit = items[torch.from_numpy(rows)] == torch.from_numpy(tgt)[:, None]  # (P, depth)
                ranks = np.where(hit.any(1).numpy(), hit.float().argmax(1).numpy() + 1.0, np.inf)
                acc.add(ranks, tgt, offs, vals, items)
        return acc.result(self.protocol(ranking.replace("top-K", f"top-{depth}"), scope))

    def evaluate_model(self, model, export: bool = False, device: "torch.device | str | None" = None,
                       scope: torch.Tensor | None = None, **options) -> EvalResult:
        """Evaluate a crbr model through the form it declares (`model.ranking`): full-catalogue
        scores, or its own top-K lists. `scope` (I,) bool ranks only those items (named in the
        protocol line); `options` are the model's inference settings."""
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        scope = self._check_scope(scope)

        def on_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.to(dev) for k, v in batch.items()}

        if model.ranking == "score":
            # always fp32: bf16 scores would create ties that the ranking then breaks by item id
            return self.evaluate(lambda b: model.score(on_device(b), **options).float(), export=export, scope=scope)
        desc = "the model's top-K" + "".join(f", {k} {v}" for k, v in sorted(options.items()))
        within = None if scope is None else scope.to(dev)
        return self.evaluate_ranked(lambda b, k, ex: model.rank(on_device(b), k, exclude=ex, scope=within,
                                                                **options).to("cpu"),
                                    export=export, ranking=desc, scope=scope)

    def _chunks(self):
        """(slice, batch, local EvalSet) per chunk of this rank's users (strided under DDP)."""
        rank, world = _dist()
        es = self.eval_set
        local = es if world == 1 else es.subset(np.arange(rank, len(es), world))
        for sl, batch in eval_batches(self.ds, local, self.max_len, self.chunk_users):
            yield sl, batch, local

    @staticmethod
    def _targets(local: EvalSet, sl: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The chunk's (row (P,), target (P,)) pairs and its per-user offsets (B + 1,) into them."""
        offs = local.target_offsets[sl.start : sl.stop + 1]
        tgt = np.asarray(local.target_items[offs[0] : offs[-1]], dtype=np.int64)  # (P,)
        offs = offs - offs[0]
        rows = np.repeat(np.arange(len(offs) - 1, dtype=np.int64), np.diff(offs))  # (P,)
        return rows, tgt, offs

    def _history_ids(self, users: np.ndarray, hist_len: np.ndarray) -> torch.Tensor:
        """(B, H) each user's whole visible history (item ids), right-padded with 0."""
        lens = np.asarray(hist_len, dtype=np.int64)
        starts = np.asarray(self.ds.offsets, dtype=np.int64)[np.asarray(users)]
        H = int(lens.max(initial=0))
        pos = starts[:, None] + np.arange(H)[None, :]  # (B, H)
        valid = np.arange(H)[None, :] < lens[:, None]
        items = np.asarray(self.ds.items)[np.where(valid, pos, 0)].astype(np.int64)
        return torch.from_numpy(np.where(valid, items, 0))

    def _check_ranked(self, res, B: int, depth: int, exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A model's lists as CPU (items, scores), after checking they keep the contract."""
        items, vals = res.items.detach().cpu().long(), res.scores.detach().cpu().float()
        if items.shape != (B, depth):
            raise ValueError(f"rank() must return ({B}, {depth}) lists, got {tuple(items.shape)}")
        if torch.isnan(vals).any():
            raise ValueError("rank() returned NaN scores")
        if ((items < 0) | (items > self.n_items)).any():
            raise ValueError(f"rank() returned item ids outside 0..{self.n_items}")
        if (vals[:, 1:] > vals[:, :-1]).any():
            raise ValueError("rank() lists must be ordered by score, best first")
        real = items > 0
        srt = torch.sort(torch.where(real, items, -torch.arange(depth).expand(B, depth) - 1), 1).values
        if (srt[:, 1:] == srt[:, :-1]).any():
            raise ValueError("rank() returned an item twice in one list")
        if exclude is not None and real.any():
            banned = torch.zeros(B, self.I, dtype=torch.bool)
            banned.scatter_(1, exclude, True)
            banned[:, 0] = False
            if banned.gather(1, items)[real].any():
                raise ValueError("rank() returned an item of the user's history while the protocol masks it")
        return items, torch.where(real, vals, torch.full_like(vals, -math.inf))

    # ------------------------------------------------------------------ helpers
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


class _Sums:
    """Running sums of one evaluation on this rank (per-user metrics, popularity buckets, each
    item's best list position, exported lists), reduced across ranks into an EvalResult."""

    def __init__(self, ev: Evaluator, depth: int, export: bool, mrr_name: str = "MRR"):
        self.ev, self.depth, self.export, self.mrr_name = ev, depth, export, mrr_name
        self.k_exp = min(ev.n_items, ev.export_k) if mrr_name == "MRR" else ev.export_k
        self.names = [f"{m}@{k}" for k in ev.ks for m in ("HR", "NDCG", "Recall")] + ["MRR"]
        self.sums = dict.fromkeys(self.names, 0.0)
        self.b_hits = np.zeros(ev.n_buckets, dtype=np.float64)
        self.b_cnt = np.zeros(ev.n_buckets, dtype=np.float64)
        self.best_pos = torch.full((ev.I,), depth, dtype=torch.int64)  # best list position per item
        self.tk_items: list[np.ndarray] = []
        self.tk_scores: list[np.ndarray] = []
        self.n_users = 0.0
        self.n_targets = 0.0

    def add(self, ranks: np.ndarray, tgt: np.ndarray, offs: np.ndarray, vals: torch.Tensor, idx: torch.Tensor) -> None:
        """One chunk: target ranks (P,), targets (P,), user offsets (B + 1,), top lists (B, depth)."""
        ev = self.ev
        for name, v in user_metrics(ranks, offs, ev.ks).items():
            self.sums[name] += float(v.sum())
        bk = ev.bucket_of[tgt]  # (P,)
        self.b_hits += np.bincount(bk, weights=(ranks <= HR_BUCKET_K).astype(np.float64), minlength=ev.n_buckets)
        self.b_cnt += np.bincount(bk, minlength=ev.n_buckets)
        idx = idx.cpu()
        B, depth = idx.shape
        pos = torch.arange(depth).expand(B, depth)
        real = (idx > 0).reshape(-1)  # padding (item 0) never counts as covered
        self.best_pos.scatter_reduce_(0, idx.reshape(-1)[real], pos.reshape(-1)[real], reduce="amin")
        if self.export:
            self.tk_items.append(idx[:, : self.k_exp].numpy())
            self.tk_scores.append(vals[:, : self.k_exp].cpu().numpy())
        self.n_users += B
        self.n_targets += len(tgt)

    def result(self, protocol: str) -> EvalResult:
        ev = self.ev
        rank, world = _dist()
        if world > 1:
            self._all_reduce()
        metrics = {n: (self.sums[n] / self.n_users if self.n_users else math.nan) for n in self.names}
        covered = self.best_pos[1:].numpy()  # (n_items,)
        for k in ev.ks:
            metrics[f"coverage@{k}"] = float((covered < k).sum()) / ev.n_items
        metrics[self.mrr_name] = metrics.pop("MRR")
        order = [f"{m}@{k}" for m in ("HR", "NDCG", "Recall") for k in ev.ks] + [self.mrr_name]
        metrics = {n: metrics[n] for n in order + [f"coverage@{k}" for k in ev.ks]}
        topk_items = topk_scores = None
        if self.export:
            topk_items, topk_scores = ev._collect_export(self.tk_items, self.tk_scores, self.k_exp, rank, world)
        return EvalResult(
            metrics=metrics,
            bucket_hr10=[float(h / c) if c else math.nan for h, c in zip(self.b_hits, self.b_cnt)],
            bucket_counts=[int(c) for c in self.b_cnt],
            n_users=int(self.n_users),
            protocol=protocol,
            topk_items=topk_items,
            topk_scores=topk_scores,
            users=np.asarray(ev.eval_set.users, dtype=np.int64),
            n_targets=int(self.n_targets),
            ks=ev.ks,
        )

    def _all_reduce(self) -> None:
        """Sum the counters and take the minimum best positions over all ranks."""
        nb = self.ev.n_buckets
        packed = np.concatenate([[self.n_users, self.n_targets], [self.sums[n] for n in self.names], self.b_hits, self.b_cnt])
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.from_numpy(packed).to(dev)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        bp = self.best_pos.to(dev)
        dist.all_reduce(bp, op=dist.ReduceOp.MIN)
        packed, self.best_pos = t.cpu().numpy(), bp.cpu()
        self.n_users, self.n_targets = packed[0], packed[1]
        n = len(self.names)
        self.sums = dict(zip(self.names, packed[2 : 2 + n].tolist()))
        self.b_hits, self.b_cnt = packed[2 + n : 2 + n + nb], packed[2 + n + nb :]
