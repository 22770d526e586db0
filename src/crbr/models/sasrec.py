"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Causal self-attention over the last `max_len` items of a user's history; the hidden state at
position t scores every item through the (shared) item embedding table. Trained either with
full-softmax cross-entropy over the whole catalogue (default; "SASRec+" / CE-SASRec of
Klenitskiy & Vasilev 2023, Petrov & Macdonald 2023) or with the original sampled binary
cross-entropy (one uniformly sampled negative per position). The loss is computed only on
non-padded positions.

`seen_bias` (off by default) adds a learned logit offset, one per action type, to every item
that occurs in the model's window, in training (for each position, the items up to it) and in
scoring alike: the model learns from the data whether users re-consume (positive offsets) or
never do (negative ones, e.g. MovieLens, where each movie is rated once), in the spirit of the
repeat / explore split of RepeatNet (Ren et al., AAAI 2019). It is a model component, not
evaluation masking: the evaluator still ranks every item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import CausalBlock, causal_tril, full_softmax_ce, padded_causal_mask
from .base import LossOutput, Recommender, init_normal


@dataclass
class SASRecConfig:
    """n_items / n_actions are derived from the dataset by `build_model`; the rest are settings."""

    n_items: int = 0  # real items 1..n_items; embedding rows = n_items + 1
    n_actions: int = 0  # action vocabulary size including padding
    max_len: int = 200
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 1
    ffn_mult: int = 1  # FFN inner size = ffn_mult * hidden (the paper uses hidden)
    dropout: float = 0.2  # on embeddings, residual branches and the FFN
    attn_dropout: float | None = None  # on attention weights; None = same as dropout
    ffn_dropout: float | None = None  # inside the FFN, after the activation (reference code); None = same as dropout
    ln_eps: float = 1e-8  # LayerNorm epsilon (SASRec reference 1e-8, RecBole 1e-12)
    loss: str = "ce"  # "ce" (full softmax) | "bce" (one sampled negative per position)
    ce_chunk: int = 256  # rows per chunk of the full-softmax CE; 0 = plain F.cross_entropy (reference)
    use_actions: bool = False  # add an action-type embedding to each history event
    seen_bias: bool = False  # learn a logit offset per action type for items already in the window
    # offset = seen_bias_scale x its parameter, so Adam moves it scale x lr per step: it has to
    # travel several logits (MovieLens: about -4) while the embeddings move by lr
    seen_bias_scale: float = 10.0
    init_std: float = 0.02
    # "pre": the SASRec reference code (embeddings x sqrt(hidden), x + f(LN(x)), final LN);
    # "post": RecBole / BERT style (LN + dropout on the embeddings, LN(x + f(x)), no final LN)
    norm: str = "pre"

    def __post_init__(self) -> None:
        if self.norm not in ("pre", "post"):
            raise ValueError(f"SASRecConfig.norm: expected 'pre' or 'post', got {self.norm!r}")
        if self.loss not in ("ce", "bce"):
            raise ValueError(f"SASRecConfig.loss: expected 'ce' or 'bce', got {self.loss!r}")
        if self.hidden % self.n_heads:
            raise ValueError(f"SASRecConfig: hidden {self.hidden} not divisible by n_heads {self.n_heads}")


class SASRec(Recommender):
    model_name = "sasrec"
    config_class = SASRecConfig

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.config = c = config
        if c.n_items <= 0:
            raise ValueError("SASRecConfig.n_items must be set (build the model with crbr.models.build_model)")
        self.item_emb = nn.Embedding(c.n_items + 1, c.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(c.max_len, c.hidden)
        self.action_emb = nn.Embedding(max(c.n_actions, 1), c.hidden, padding_idx=0) if c.use_actions else None
        self.emb_drop = nn.Dropout(c.dropout)
        attn_p = c.dropout if c.attn_dropout is None else c.attn_dropout
        ffn_p = c.dropout if c.ffn_dropout is None else c.ffn_dropout
        self.blocks = nn.ModuleList(
            CausalBlock(c.hidden, c.n_heads, c.ffn_mult * c.hidden, c.dropout, attn_p, ffn_p, c.norm == "pre", c.ln_eps)
            for _ in range(c.n_layers)
        )
        # pre-norm: final LN on the outputs; post-norm: LN on the summed input embeddings
        self.final_ln = nn.LayerNorm(c.hidden, eps=c.ln_eps)
        self.apply(self._init)
        # (A,) offset / seen_bias_scale for an item the window holds, by the action of that event
        # (0 = padding, unused); `seen_offsets()` gives the offsets themselves
        self.seen_bias = nn.Parameter(torch.zeros(max(c.n_actions, 1))) if c.seen_bias else None

    def _init(self, m: nn.Module) -> None:
        init_normal(m, self.config.init_std)

    # ------------------------------------------------------------------ encoder
    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden state after each history position: (B, L, D); L = max_len (windows left-padded)."""
        items = batch["items"]  # (B, L)
        B, L = items.shape
        if L > self.config.max_len:
            raise ValueError(f"window length {L} exceeds SASRecConfig.max_len {self.config.max_len}")
        keep = items > 0  # (B, L)
        pre = self.config.norm == "pre"
        x = self.item_emb(items) * (math.sqrt(self.config.hidden) if pre else 1.0)
        x = x + self.pos_emb.weight[-L:]  # left-padded: the newest event always has the last position
        if self.action_emb is not None:
            x = x + self.action_emb(batch["actions"])
        if not pre:
            x = self.final_ln(x)
        x = self.emb_drop(x) * keep.unsqueeze(-1)
        mask = padded_causal_mask(keep)  # (B, 1, L, L) earlier real items; padded queries see themselves
        for blk in self.blocks:
            x = blk(x, mask) * keep.unsqueeze(-1)
        return self.final_ln(x) if pre else x

    def user_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D): the hidden state at the newest history position."""
        return self.encode(batch)[:, -1]

    # ------------------------------------------------------------------ API
    def seen_offsets(self) -> torch.Tensor:
        """(A,) the learned logit offset of a window item, per action of its event."""
        return self.seen_bias * self.config.seen_bias_scale

    def _window_offsets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L) the seen-item offset each window event contributes (0 on padding)."""
        items = batch["items"]
        return self.seen_offsets()[batch["actions"]] * (items > 0)

    def add_seen_offsets(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, I) scores plus the seen-item offsets of the batch's windows (unchanged without seen_bias);
        every window item gets its events' offsets (repeats add up)."""
        if self.seen_bias is None:
            return scores
        return scores.scatter_add(1, batch["items"], self._window_offsets(batch).to(scores.dtype))

    def seen_logit_terms(self, batch: dict[str, torch.Tensor],
                         sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """Sparse logit offsets of the training positions `sel` ((B, L) bool): row (b, t) gets the
        offsets of the window items at positions s <= t. Returns (idx, val), both (P, L): item ids
        (0 = padding, offset 0) and offsets; (None, None) without seen_bias."""
        if self.seen_bias is None:
            return None, None
        items = batch["items"]
        L = items.shape[1]
        causal = causal_tril(L, items.device)  # [t, s]: s <= t
        val = (self._window_offsets(batch)[:, None, :] * causal)[sel]  # (P, L)
        idx = items[:, None, :].expand(-1, L, -1)[sel]  # (P, L)
        return idx, val

    @staticmethod
    def pair_offsets(idx: torch.Tensor, val: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(P,) the offset of item `ids` (P,) in each row of seen_logit_terms' (idx, val)."""
        return (val * (idx == ids[:, None])).sum(-1).float()

    def seen_offset_logs(self) -> dict[str, torch.Tensor]:
        """The learned offsets by action, for the training log (empty without seen_bias)."""
        if self.seen_bias is None:
            return {}
        off = self.seen_offsets().detach()
        return {f"seen_offset_{a}": off[a] for a in range(1, len(off))}

    @property
    def vector_scores(self) -> str | None:
        """Scores are user . item, unless seen_bias adds per-user offsets to window items."""
        return None if self.config.seen_bias else "dot"

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_embedding(batch)  # (B, D)

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight  # (I, D)

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.add_seen_offsets(self.user_embedding(batch) @ self.item_emb.weight.T, batch)  # (B, I)

    def next_item_loss(self, h: torch.Tensor, W: torch.Tensor, tgt: torch.Tensor, batch: dict[str, torch.Tensor],
                       sel: torch.Tensor) -> torch.Tensor:
        """The configured loss (full-softmax CE or sampled BCE) of user vectors h (P, d) against the
        item table W (I, d) for targets tgt (P,) at the positions `sel` (B, L) of the batch, with the
        seen-item offsets of each position's prefix when seen_bias is on (shared by the mixtures
        built on this backbone)."""
        idx, val = self.seen_logit_terms(batch, sel)  # (P, L) each, or None
        if self.config.loss == "ce":
            # real items only (padding is never a class); chunked so (P, I) logits never exist
            cls = None if idx is None else (idx - 1).clamp_min(0)  # class ids; padding: class 0, offset 0
            return full_softmax_ce(h, W[1:], tgt - 1, chunk=self.config.ce_chunk, extra_idx=cls, extra_val=val)
        neg = torch.randint(1, self.config.n_items + 1, tgt.shape, device=tgt.device)
        pos_l = (h * W[tgt]).sum(-1).float()
        neg_l = (h * W[neg]).sum(-1).float()
        if idx is not None:
            pos_l, neg_l = pos_l + self.pair_offsets(idx, val, tgt), neg_l + self.pair_offsets(idx, val, neg)
        return F.binary_cross_entropy_with_logits(
            torch.cat([pos_l, neg_l]), torch.cat([torch.ones_like(pos_l), torch.zeros_like(neg_l)]))

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        h = self.encode(batch)  # (B, L, D)
        tgt = batch["targets"]  # (B, L)
        sel = tgt > 0
        h, tgt = h[sel], tgt[sel]  # (P, D), (P,) only real positions
        loss = self.next_item_loss(h, self.item_emb.weight, tgt, batch, sel)
        logs = {"loss": loss.detach(), "positions": sel.sum(), **self.seen_offset_logs()}
        return LossOutput(loss, logs)
