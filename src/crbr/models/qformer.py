"""Q-Former user tower for long histories (docs/design.md, system design §3.1; BLIP-2, Li et al. 2023).

M learnable query tokens read a user's history through cross-attention; history items never
attend to each other, so one block costs O(N·M·D + N·D²) instead of self-attention's O(N²·D).
Each block (pre-norm):

    q <- q + SelfAttn(LN(q))                      queries talk to each other      (B, M, D)
    q <- q + CrossAttn(LN(q), LN(h), key mask)    queries read the history        (B, M, D) x (B, N, D)
    q <- q + FFN(LN(q))

History input per event = projected frozen item feature (+ optional learnable ID embedding)
+ action embedding + sinusoidal recency encoding (events counted back from the newest)
(+ a log-bucketed "time since" embedding when the dataset has timestamps). A learned null key
is always visible, so an empty history is well defined. The output is the M user tokens.

Pre-training (system design §3.1.2), a weighted sum of two tasks, either of which can be switched off:

  Task A (ITC): InfoNCE between the user tokens and the next item, similarity = max over tokens
      of token . item (BLIP-2's ITC), candidates = in-batch positives + uniformly sampled
      negatives, logQ-corrected by the mixed sampling distribution, accidental hits masked,
      learnable temperature.
  Task B (masked reconstruction): a fraction of the history is hidden from the encoder; a light
      decoder (each hidden slot's recency/time/action query cross-attends to the M tokens alone)
      predicts the hidden item by softmax over the whole catalogue.

Retrieval: score(user, item) = max_m token_m . item over the whole catalogue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nn import (MHA, batch_candidates, choose_cut, choose_cuts, cos_sin, full_softmax_ce, future_targets,
                  logq_from_counts, mixed_negative_logp, newest, other_positives, rotary_angles, sinusoidal,
                  time_buckets)
from ..nn import rotate  # noqa: F401  (its home before crbr.nn, where tests and scripts import it)
from .base import DataContext, LossOutput, Recommender


@dataclass
class QFormerConfig:
    """n_items / n_actions / feature_dim are derived by `build_model`; the rest are settings."""

    n_items: int = 0
    n_actions: int = 0
    feature_dim: int = 0  # width of the frozen item features; 0 = ID embeddings only
    item_features: str = ""  # feature spec for crbr.features.item_features ("" = none, "text", a file, ...)
    use_id_embedding: bool = True  # learnable ID embedding beside (or instead of) frozen features
    use_actions: bool = True
    use_time: bool = True  # log-bucketed "time since event" embedding when timestamps exist
    max_len: int = 1024  # history window fed to the tower (training and scoring)
    n_queries: int = 32  # M
    hidden: int = 64  # D
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: int = 4
    dropout: float = 0.1  # on the embedded history, residual branches and the FFN
    attn_dropout: float = 0.0  # on attention weights (> 0 makes CPU attention take its slow, materialized path)
    out_dim: int = 0  # retrieval space width; 0 = hidden
    # Task A
    itc_weight: float = 1.0  # 0 switches Task A off
    n_negatives: int = 512  # uniformly sampled negatives shared by the batch (besides in-batch)
    logq_correction: bool = True
    init_temperature: float = 0.2
    learn_temperature: bool = True
    cut: str = "random"  # which next item Task A predicts: "last" of the window or a "random" cut point
    itc_future: int = 1  # Task A positives per cut: the next k events (1 = the next item; k > 1 = dense future targets)
    # how the encoder knows when each event happened relative to the prediction point:
    #   "input":  recency and time-since embeddings are added to each event (relative to the cut)
    #   "rotary": they rotate the cross-attention's queries and keys (RoPE, Su et al. 2021), so
    #             query . key depends on the events' recency and time gap only and the history's
    #             keys and values do not depend on the cut; several cuts then share them
    position: str = "input"
    # Task A prediction points per training window ("rotary" only): the C cuts' queries read one
    # shared history, each with its own key mask, so one window yields C contexts for about the
    # cost of the C x M extra queries instead of C encoder passes
    n_cuts: int = 1
    # Task B
    recon_weight: float = 1.0  # 0 switches Task B off
    mask_ratio: float = 0.2
    max_masked: int = 64  # cap on hidden slots per user
    decoder_layers: int = 1
    init_std: float = 0.1  # embeddings and queries; small values (0.02) stall early training under Adam

    def __post_init__(self) -> None:
        if self.hidden % self.n_heads:
            raise ValueError(f"QFormerConfig: hidden {self.hidden} not divisible by n_heads {self.n_heads}")
        if self.itc_future < 1:
            raise ValueError(f"QFormerConfig.itc_future must be >= 1, got {self.itc_future}")
        if self.cut not in ("last", "random"):
            raise ValueError(f"QFormerConfig.cut: expected 'last' or 'random', got {self.cut!r}")
        if self.position not in ("input", "rotary"):
            raise ValueError(f"QFormerConfig.position: expected 'input' or 'rotary', got {self.position!r}")
        if self.n_cuts < 1:
            raise ValueError(f"QFormerConfig.n_cuts must be >= 1, got {self.n_cuts}")
        if self.n_cuts > 1 and self.position != "rotary":
            raise ValueError("QFormerConfig.n_cuts > 1 needs position='rotary' (with 'input' positions the "
                             "history's embedding depends on the cut, so cuts cannot share it)")
        if self.position == "rotary" and (self.hidden // self.n_heads) % (4 if self.use_time else 2):
            raise ValueError(f"QFormerConfig: position='rotary' needs a head width (hidden / n_heads = "
                             f"{self.hidden // self.n_heads}) divisible by {4 if self.use_time else 2}")
        if self.itc_weight <= 0 and self.recon_weight <= 0:
            raise ValueError("QFormerConfig: itc_weight and recon_weight are both 0; nothing to train")
        if not self.use_id_embedding and self.feature_dim <= 0 and not self.item_features:
            raise ValueError("QFormerConfig: no item representation (use_id_embedding=false and no item_features)")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"QFormerConfig.mask_ratio must be in [0, 1), got {self.mask_ratio}")


@dataclass
class QFormerOutput:
    """tokens: (B, M, D) user tokens, or (B, S, M, D) for S query sets (see QFormerEncoder);
    attn: (B, M, N+1) last block's head-averaged cross-attention over [null key, history] (only
    when requested, else None)."""

    tokens: torch.Tensor
    attn: torch.Tensor | None = None


class QFormerBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, ffn: int, dropout: float, attn_dropout: float = 0.0):
        super().__init__()
        # no LayerNorm on the keys/values: the history is normalized once when it is embedded and
        # never updated, and a per-block affine LN would be absorbed by the K/V projection anyway
        self.ln_self, self.ln_cross, self.ln_ffn = (nn.LayerNorm(d) for _ in range(3))
        self.self_attn = MHA(d, n_heads, attn_dropout)
        self.cross_attn = MHA(d, n_heads, attn_dropout)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, hist: torch.Tensor, key_mask: torch.Tensor,
                need_weights: bool = False, n_sets: int = 1,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        # q: (B, S*M, D), S = n_sets query sets (one per cut) that attend among themselves only;
        # hist: (B, N, D); key_mask: (B, N) or per query (B, S*M, N)
        B, SM, D = q.shape
        h = self.ln_self(q).view(B * n_sets, SM // n_sets, D)
        q = q + self.drop(self.self_attn(h, h)[0].view(B, SM, D))
        a, w = self.cross_attn(self.ln_cross(q), hist, key_mask, need_weights, rope, sink_first=rope is not None)
        q = q + self.drop(a)
        return q + self.drop(self.ffn(self.ln_ffn(q))), w


class QFormerEncoder(nn.Module):
    """M learnable queries x L blocks over a (B, N, D) history; returns (B, M, D) tokens."""

    def __init__(self, d: int, n_queries: int, n_layers: int, n_heads: int, ffn: int, dropout: float, init_std: float = 0.02,
                 attn_dropout: float = 0.0):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, d) * init_std)
        self.null_key = nn.Parameter(torch.randn(1, 1, d) * init_std)
        self.blocks = nn.ModuleList(QFormerBlock(d, n_heads, ffn, dropout, attn_dropout) for _ in range(n_layers))
        self.ln_out = nn.LayerNorm(d)

    def forward(self, hist: torch.Tensor, key_mask: torch.Tensor, need_weights: bool = False,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> QFormerOutput:
        """hist: (B, N, D) event embeddings. key_mask: (B, N) bool, True = real and visible; or
        (B, S, N) for S query sets (cuts) over the same history, each with its own mask: tokens
        are then (B, S, M, D).

        rope: rotation angles (B, S, P) of each query set and (B, N, P) of the events (position
        = "rotary"). The null key's key is then zero, so its logit is a constant 0 whatever the
        rotation (a learned attention sink whose value is still learned).
        """
        B = hist.shape[0]
        sets = key_mask.dim() == 3
        S = key_mask.shape[1] if sets else 1
        M = self.queries.shape[0]
        ctx = torch.cat([self.null_key.expand(B, 1, -1).to(hist.dtype), hist], 1)  # (B, N+1, D)
        mask = F.pad(key_mask, (1, 0), value=True)  # the null key is always visible
        if sets:
            mask = mask.repeat_interleave(M, dim=1)  # (B, S*M, N+1): each query set's mask
        q = self.queries.unsqueeze(0).expand(B * S, -1, -1).reshape(B, S * M, -1).to(hist.dtype)  # (B, S*M, D)
        rot = None
        if rope is not None:
            q_cs, k_cs = cos_sin(rope[0]), cos_sin(rope[1])
            k_cs = F.pad(k_cs, (0, 0, 0, 0, 1, 0))  # (B, N+1, P, 2); the null key becomes a zero-key sink
            rot = (q_cs.repeat_interleave(M, dim=1), k_cs)  # (B, S*M, P, 2), (B, N+1, P, 2)
        w = None
        for i, blk in enumerate(self.blocks):
            q, w = blk(q, ctx, mask, need_weights and i == len(self.blocks) - 1, S, rot)
        out = self.ln_out(q)
        return QFormerOutput(out.view(B, S, M, -1) if sets else out, w)


class QFormer(Recommender):
    model_name = "qformer"
    config_class = QFormerConfig
    vector_scores = "max"  # score = max over the user's tokens of token . item
    # a batch may leave parameters unused (Task A off: the ITC heads; no slot to hide: the decoder),
    # which DistributedDataParallel must be told about
    ddp_find_unused_parameters = True

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.config = c = config
        if c.n_items <= 0:
            raise ValueError("QFormerConfig.n_items must be set (build the model with crbr.models.build_model)")
        D = c.hidden
        out = c.out_dim or D
        # frozen item features: a persistent buffer (saved in checkpoints) filled by attach_data
        self.register_buffer("item_feats", torch.zeros(c.n_items + 1, c.feature_dim) if c.feature_dim > 0 else None)
        self.feat_proj = nn.Linear(c.feature_dim, D) if c.feature_dim > 0 else None
        self.id_emb = nn.Embedding(c.n_items + 1, D, padding_idx=0) if c.use_id_embedding or c.feature_dim <= 0 else None
        self.action_emb = nn.Embedding(max(c.n_actions, 1), D, padding_idx=0) if c.use_actions else None
        self.time_emb = nn.Embedding(64, D, padding_idx=0) if c.use_time else None
        # learned map of the sinusoidal recency code; starts as small as the embeddings so the
        # position signal does not drown the item identity
        self.recency_proj = nn.Linear(D, D, bias=False)
        self.in_ln = nn.LayerNorm(D)
        self.in_drop = nn.Dropout(c.dropout)
        self.encoder = QFormerEncoder(D, c.n_queries, c.n_layers, c.n_heads, c.ffn_mult * D, c.dropout, c.init_std, c.attn_dropout)
        self.user_head = nn.Linear(D, out, bias=False)  # tokens -> retrieval space
        self.item_head = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, out, bias=False))  # item tower
        t0 = math.log(1.0 / c.init_temperature)
        self.logit_scale = nn.Parameter(torch.tensor(t0), requires_grad=c.learn_temperature)
        self.recon_scale = nn.Parameter(torch.tensor(t0), requires_grad=c.learn_temperature)
        # sampling probability of in-batch positives (training frequency); uniform until attach_data
        self.register_buffer("item_logq", torch.full((c.n_items + 1,), -math.log(c.n_items)))
        if c.recon_weight > 0:
            self.mask_emb = nn.Parameter(torch.zeros(D))
            self.decoder = nn.ModuleList(QFormerBlock(D, c.n_heads, c.ffn_mult * D, c.dropout, c.attn_dropout) for _ in range(c.decoder_layers))
            self.dec_ln = nn.LayerNorm(D)
            self.dec_head = nn.Linear(D, out, bias=False)
        self.apply(self._init)
        # event context (recency, action, time) starts at zero: at initialization each user's history
        # is its items alone, so the tokens differ between users from the first step (constant
        # context terms would dominate an average of small item vectors and delay learning)
        nn.init.zeros_(self.recency_proj.weight)
        # the branches that do not read the history (query self-attention, FFN) start at zero, so
        # at initialization every token is the queries plus what they read from the history; a
        # user-independent signal from those branches would drown the history average
        for blk in [*self.encoder.blocks, *getattr(self, "decoder", [])]:
            nn.init.zeros_(blk.self_attn.o.weight)
            nn.init.zeros_(blk.ffn[-1].weight)
        for emb in (self.action_emb, self.time_emb):
            if emb is not None:
                nn.init.zeros_(emb.weight)

    def _init(self, m: nn.Module) -> None:
        # embeddings N(0, init_std) (0.1: large enough that Adam's first steps do not swamp them);
        # linear maps variance-preserving (Xavier) with zero biases, so the L2-normalized heads
        # start from well-spread directions rather than from their biases
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=self.config.init_std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def attach_data(self, data: DataContext) -> None:
        self.set_item_data(data.features.get("item"), data.item_counts)

    def set_item_data(self, item_feats: np.ndarray | None = None, item_counts: np.ndarray | None = None) -> None:
        """Fill the buffers derived from data: frozen item features (I, F) and training counts (I,)."""
        if item_feats is not None:
            if self.item_feats is None or tuple(item_feats.shape) != tuple(self.item_feats.shape):
                raise ValueError(f"item features of shape {tuple(item_feats.shape)} do not fit the model "
                                 f"(expects {None if self.item_feats is None else tuple(self.item_feats.shape)})")
            self.item_feats.copy_(torch.as_tensor(item_feats, dtype=torch.float32))
        if item_counts is not None:
            self.item_logq.copy_(logq_from_counts(item_counts))

    # ------------------------------------------------------------------ items
    def item_repr(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """(..., D) input-side item representation of `ids` (None = the whole table, (I, D))."""
        x = 0
        if self.feat_proj is not None:
            n_ids = self.item_feats.shape[0] if ids is None else ids.numel()
            if ids is None or n_ids >= self.item_feats.shape[0]:
                tab = self.feat_proj(self.item_feats)  # project the table once, then gather
                x = tab if ids is None else F.embedding(ids, tab)
            else:
                x = self.feat_proj(self.item_feats[ids])  # gather first (large catalogue, few ids)
        if self.id_emb is not None:
            x = x + (self.id_emb.weight if ids is None else self.id_emb(ids))
        return x

    def item_vectors(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """(..., out) L2-normalized candidate-side item vectors (the item tower)."""
        return F.normalize(self.item_head(self.item_repr(ids)), dim=-1)

    # ------------------------------------------------------------------ user tower
    def recency_table(self, n: int) -> torch.Tensor:
        """(n, D) learned map of the sinusoidal code of recency 0..n-1 (gathered per event)."""
        pos = torch.arange(n, device=self.recency_proj.weight.device)
        return self.recency_proj(sinusoidal(pos, self.config.hidden))

    def _history(self, batch: dict[str, torch.Tensor], visible: torch.Tensor | None) -> torch.Tensor:
        """(B, N, D) event embeddings. `visible` (B, N) = the user's events up to the prediction
        point; recency and time-since count from its newest event (hidden slots included, so the
        encoder and the reconstruction decoder agree on every event's recency). With
        position="rotary" they enter the attention instead (`_rope`) and `visible` is unused:
        the embedding is the same for every cut."""
        items = batch["items"]
        x = self.item_repr(items)
        if self.action_emb is not None:
            x = x + self.action_emb(batch["actions"])
        if self.config.position == "rotary":
            return self.in_drop(self.in_ln(x))
        # recency: how many visible events come after this one (0 = newest visible)
        rec = visible.flip(1).long().cumsum(1).flip(1) - 1  # (B, N)
        # F.embedding, not table[index]: its backward sums gradients in the same order at any
        # thread count, so a seeded run repeats bit for bit
        x = x + F.embedding(rec.clamp(min=0), self.recency_table(x.shape[1]))
        if self.time_emb is not None and "timestamps" in batch:
            ts = batch["timestamps"]
            last = torch.where(visible, ts, torch.zeros_like(ts)).amax(1, keepdim=True)  # newest visible time
            x = x + self.time_emb(torch.where(visible, time_buckets(last - ts), torch.zeros_like(ts)))
        return self.in_drop(self.in_ln(x))

    def _rope(self, batch: dict[str, torch.Tensor], cuts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation angles for position="rotary": (B, S, P) of the query sets at window positions
        `cuts` (B, S) and (B, N, P) of the events. Times count from each row's newest event."""
        c = self.config
        items = batch["items"]
        B, N = items.shape
        P = c.hidden // c.n_heads // 2
        ts_k = ts_q = None
        if c.use_time and "timestamps" in batch:
            ts = batch["timestamps"]
            ref = torch.where(items > 0, ts, torch.zeros_like(ts)).amax(1, keepdim=True)  # (B, 1)
            ts_k, ts_q = ts - ref, ts.gather(1, cuts) - ref
        ar = torch.arange(N, device=items.device).expand(B, N)
        return rotary_angles(cuts, ts_q, P, c.use_time), rotary_angles(ar, ts_k, P, c.use_time)

    def window(self, batch: dict[str, torch.Tensor], visible: torch.Tensor | None = None):
        """Keep the newest max_len events and drop columns that are padding in every row
        (windows are left-padded; attention here is order-free, so this changes no result)."""
        items = batch["items"]
        n = min(self.config.max_len, max(int((items > 0).sum(1).max()), 1) if items.numel() else 1)
        if n < items.shape[1]:
            batch = {k: (v[:, -n:] if v.dim() == 2 else v) for k, v in batch.items()}
            visible = None if visible is None else visible[:, -n:]
        return batch, visible

    def encode(self, batch: dict[str, torch.Tensor], visible: torch.Tensor | None = None,
               need_weights: bool = False) -> QFormerOutput:
        """User tokens (B, M, D) from the batch's history; `visible` (B, N) hides events."""
        batch, visible = self.window(batch, visible)
        items = batch["items"]
        vis = items > 0 if visible is None else visible & (items > 0)
        if self.config.position == "rotary":  # the prediction point is the newest event
            cut = newest(items > 0)[:, None]  # (B, 1)
            return self.encoder(self._history(batch, None), vis, need_weights, rope=self._rope(batch, cut))
        return self.encoder(self._history(batch, items > 0), vis, need_weights)

    def user_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, M, out) L2-normalized user tokens in the retrieval space."""
        return F.normalize(self.user_head(self.encode(batch).tokens), dim=-1)

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_tokens(batch)  # (B, M, out)

    # ------------------------------------------------------------------ API
    def score(self, batch: dict[str, torch.Tensor], chunk: int = 1024) -> torch.Tensor:
        """(B, I): max over the M tokens of token . item, computed in tiles of users x `chunk`
        items small enough (about 2 MB of similarities) to stay in cache before the max."""
        z = self.user_tokens(batch)  # (B, M, d)
        V = self.item_vectors()  # (I, d)
        B, M, d = z.shape
        ub = max(1, (1 << 19) // (M * chunk))  # users per tile
        zf = z.reshape(B * M, d)
        out = torch.empty(B, V.shape[0], dtype=z.dtype, device=z.device)
        for u in range(0, B, ub):
            zu = zf[u * M : (u + ub) * M]  # (ub*M, d)
            for s in range(0, V.shape[0], chunk):
                out[u : u + ub, s : s + chunk] = (zu @ V[s : s + chunk].T).view(-1, M, min(chunk, V.shape[0] - s)).amax(1)
        out[:, 0] = float("-inf")
        return out

    def _mask_slots(self, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose history slots to hide: (B, K) indices and (B, K) validity; never the newest."""
        c = self.config
        B, N = visible.shape
        n_vis = visible.sum(1)
        n_mask = torch.minimum((n_vis.float() * c.mask_ratio).ceil().long(), (n_vis - 1).clamp(min=0))
        n_mask = n_mask.clamp(max=c.max_masked)
        K = int(n_mask.max()) if B else 0
        if K == 0:
            return torch.zeros(B, 0, dtype=torch.long, device=visible.device), torch.zeros(B, 0, dtype=torch.bool, device=visible.device)
        last = newest(visible)  # index of the newest visible event
        cand = visible.clone()
        cand[torch.arange(B, device=visible.device), last] = False
        r = torch.rand(B, N, device=visible.device).masked_fill(~cand, 2.0)
        idx = r.topk(K, dim=1, largest=False).indices  # (B, K) random candidate slots first
        ok = torch.arange(K, device=visible.device)[None, :] < n_mask[:, None]
        return idx, ok

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Task A at one cut per window ("input" positions) or at n_cuts cuts sharing the history
        ("rotary"); Task B hides slots of the first cut's history (hidden from every cut)."""
        c = self.config
        batch, _ = self.window(batch)
        items = batch["items"]
        B, N = items.shape
        random_cut = c.cut == "random" and self.training
        ar = torch.arange(N, device=items.device)
        if c.position == "rotary":
            cuts = choose_cuts(batch["targets"], c.n_cuts, random_cut)  # (B, C)
            cut = cuts[:, 0]
        else:
            cut, pos = choose_cut(batch["targets"], random_cut)  # (B,), (B,)
        visible = (items > 0) & (ar[None, :] <= cut[:, None])
        logs: dict[str, float] = {}
        total = items.new_zeros((), dtype=torch.float32)
        m_idx = m_ok = None
        if c.recon_weight > 0 and c.mask_ratio > 0:
            m_idx, m_ok = self._mask_slots(visible)
            hide = torch.zeros_like(visible)
            hide.scatter_(1, m_idx, m_ok)
            enc_visible = visible & ~hide
        else:
            enc_visible = visible
            hide = None
        if c.position == "rotary":
            keys = (items > 0)[:, None, :] & (ar[None, None, :] <= cuts[..., None])  # (B, C, N)
            if hide is not None:
                keys = keys & ~hide[:, None, :]
            per_cut = self.encoder(self._history(batch, None), keys, rope=self._rope(batch, cuts)).tokens  # (B, C, M, D)
            tokens = per_cut[:, 0]  # (B, M, D) cut 0's tokens: Task B's
            itc_tokens = per_cut.flatten(0, 1)  # (B*C, M, D)
            valid = batch["targets"].gather(1, cuts) > 0  # (B, C) a cut on padding predicts nothing
            itc_pos = (future_targets(batch["targets"], cuts, c.itc_future) * valid[..., None]).flatten(0, 1)  # (B*C, k)
        else:
            tokens = self.encoder(self._history(batch, visible), enc_visible).tokens  # (B, M, D)
            itc_tokens = tokens
            itc_pos = future_targets(batch["targets"], cut, c.itc_future) if c.itc_future > 1 else pos
        if c.itc_weight > 0:
            la = self._itc(itc_tokens, itc_pos)
            total = total + c.itc_weight * la
            logs["itc"] = la.detach()
        if m_idx is not None and m_idx.shape[1] > 0 and bool(m_ok.any()):
            lb = self._recon(tokens, batch, visible, m_idx, m_ok)
            total = total + c.recon_weight * lb
            logs["recon"] = lb.detach()
        if not total.requires_grad:  # nothing to learn in this batch (e.g. Task B only, no slot to hide)
            total = total + 0.0 * tokens.sum()
        logs["loss"] = total.detach()
        logs["tau"] = 1.0 / self.logit_scale.detach().exp()
        return LossOutput(total, logs)

    def _itc(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """InfoNCE of max-over-tokens similarity against in-batch + sampled negatives.

        pos: (B,) one positive per row, or (B, k) several (0 = none): each (row, positive) pair is
        one softmax term in which the row's other positives are neither positives nor negatives."""
        c = self.config
        z = F.normalize(self.user_head(tokens), dim=-1)  # (B, M, d)
        pos2 = pos.reshape(pos.shape[0], -1)  # (B, k)
        row, slot = (pos2 > 0).nonzero(as_tuple=True)  # (P,) pairs
        p = pos2[row, slot]
        cand = batch_candidates(p, c.n_negatives, c.n_items)  # (C,) in-batch positives, then random ones
        V = self.item_vectors(cand)  # (C, d)
        used, inv = row.unique(return_inverse=True)
        sim = torch.einsum("bmd,cd->bmc", z[used], V).amax(1)  # (B', C) max over tokens, once per row
        logits = sim.float()[inv] * self.logit_scale.exp().clamp(max=100.0)  # (P, C)
        others = other_positives(pos2[row], cand) if pos2.shape[1] > 1 else None  # (P, C)
        logq = self.item_logq if c.logq_correction else None
        return -mixed_negative_logp(logits, cand, logq, c.n_items, extra_hits=others).mean()

    def _recon(self, tokens: torch.Tensor, batch: dict[str, torch.Tensor], visible: torch.Tensor,
               m_idx: torch.Tensor, m_ok: torch.Tensor) -> torch.Tensor:
        """Predict each hidden slot's item from the M tokens alone (softmax over the catalogue)."""
        B, K = m_idx.shape
        D = tokens.shape[-1]
        rec = visible.flip(1).long().cumsum(1).flip(1) - 1  # same recency as the encoder's input
        q = self.mask_emb.expand(B, K, D) + F.embedding(rec.gather(1, m_idx).clamp(min=0), self.recency_table(visible.shape[1]))
        if self.action_emb is not None:
            q = q + self.action_emb(batch["actions"].gather(1, m_idx))
        if self.time_emb is not None and "timestamps" in batch:
            ts = batch["timestamps"]
            last = torch.where(visible, ts, torch.zeros_like(ts)).amax(1, keepdim=True)
            q = q + self.time_emb(time_buckets(last - ts).gather(1, m_idx))
        no_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        for blk in self.decoder:
            q, _ = blk(q, tokens, no_mask)  # slots attend to each other and to the tokens only
        h = F.normalize(self.dec_head(self.dec_ln(q)), dim=-1)[m_ok]  # (P, d)
        t = batch["items"].gather(1, m_idx)[m_ok]  # (P,) hidden items
        W = self.item_vectors()[1:]  # (I-1, d) real items
        return full_softmax_ce(h * self.recon_scale.exp().clamp(max=100.0), W, t - 1)

    # ------------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def diagnostics(self, batch: dict[str, torch.Tensor], item_bucket: np.ndarray | None = None,
                    targets: torch.Tensor | None = None) -> dict[str, object]:
        """Token specialization on a batch of histories.

        token_cosine:   mean pairwise cosine between a user's M output tokens (1 = collapsed)
        attn_entropy:   (M,) mean entropy (nats) of each token's cross-attention over the history
        win_share:      per popularity bucket, (M,) share of targets for which each token wins the max
        """
        out = self.encode(batch, need_weights=True)
        z = F.normalize(self.user_head(out.tokens), dim=-1)  # (B, M, d)
        B, M, _ = z.shape
        cos = z @ z.transpose(1, 2)  # (B, M, M)
        off = ~torch.eye(M, dtype=torch.bool, device=z.device)
        res: dict[str, object] = {"token_cosine": float(cos[:, off].mean())}
        w = out.attn.clamp(min=1e-12)  # (B, M, N+1)
        ent = -(w * w.log()).sum(-1)  # (B, M)
        res["attn_entropy"] = ent.mean(0).tolist()
        res["attn_entropy_mean"] = float(ent.mean())
        res["attn_null_share"] = float(out.attn[..., 0].mean())  # weight on the null key
        if targets is not None:
            keep = targets > 0
            V = self.item_vectors(targets.clamp(min=0))  # (B, d)
            win = torch.einsum("bmd,bd->bm", z, V).argmax(1)  # (B,) winning token
            win, tg = win[keep].cpu().numpy(), targets[keep].cpu().numpy()
            buckets = item_bucket[tg] if item_bucket is not None else np.zeros_like(tg)
            share = {}
            for b in np.unique(buckets):
                cnt = np.bincount(win[buckets == b], minlength=M)
                share[int(b)] = (cnt / max(cnt.sum(), 1)).tolist()
            res["win_share"] = share
            all_cnt = np.bincount(win, minlength=M)
            p = all_cnt / max(all_cnt.sum(), 1)
            res["win_perplexity"] = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
        return res
