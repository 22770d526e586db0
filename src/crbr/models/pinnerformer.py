"""PinnerFormer: a sequence model of long-term user interest (Pancha et al., KDD 2022,
"PinnerFormer: Sequence Modeling for User Representation at Pinterest").

A causal pre-norm transformer (learned positional embeddings, key-padding masks) reads the user's
history; the L2-normalized output projection at position t is the user embedding after event t,
and items live in the same unit sphere. Instead of predicting only the next event, the **dense
all-action loss** asks the embedding at (a sample of) every position t to retrieve one event drawn
uniformly at random from the next `future_window` events (the paper uses a 28-day window;
here the window is counted in events). It is a sampled softmax whose candidates are the other
positives of the batch (in-batch negatives) mixed with items drawn uniformly from the catalogue
(random negatives), with logQ correction of the sampling bias and accidental hits masked.

Item representation. `item_repr(i)` = ID embedding (when `use_id_embedding`) + Linear(feature_dim
-> hidden) of a frozen item-feature row (when `feature_dim > 0`; the paper uses PinSage
embeddings). The same `item_repr` feeds both sides:

  input side    event t  = item_repr(items[t]) (+ action embedding) + positional embedding
  output side   item i   = L2norm(item_mlp(item_repr(i)))   (item_mlp = x + Linear-GELU-Linear(x),
                           a small tower like the paper's MLP over item features; `item_mlp=False`
                           -> identity, i.e. a plain tied embedding)

so ID embeddings and the feature projection are shared between history and candidates, and only
the small output MLP is specific to the candidate side.

Sampling details (all per batch):
  positions   a position t is a training position when targets[t] > 0 and its future window
              holds at least one eligible event; `positions_per_seq > 0` keeps a uniform random
              subset of at most that many training positions per sequence.
  positives   uniform over the eligible events targets[t : t + future_window] (targets[t] is the
              event right after t); eligible = non-padding and, when `positive_actions` is set,
              an action in that list (target_actions).
  in-batch    the positives of the selected positions (a uniform subset of at most
              `in_batch_negatives` of them); an item appears there with probability q_i, its share
              of training events (`item_logq`, filled by the builder from train_item_counts).
  random      `n_random_negatives` items uniform over 1..n_items, shared by all positions.

  logQ        both pools together form one sample of M_b + R candidates in which item i is
              expected M_b q_i + R / n_items times; every candidate logit and the positive logit
              get -log(q_i + R / (M_b n_items)) (the sampled-softmax correction of
              tf.nn.sampled_softmax_loss / Yi et al. 2019, divided by the constant M_b). With no
              random negatives this is exactly -log q_i; with no in-batch negatives it is a
              constant and is dropped.
  accidental  candidates equal to the row's positive item get logit -inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nn import CausalBlock, padded_causal_mask
from .base import DataContext, LossOutput, Recommender, init_normal


@dataclass
class PinnerFormerConfig:
    """n_items / n_actions are derived from the dataset by `build_model`; the rest are settings."""

    n_items: int = 0  # real items 1..n_items; embedding rows = n_items + 1
    n_actions: int = 0  # action vocabulary size including padding
    max_len: int = 200
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: int = 4  # FFN inner size = ffn_mult * hidden
    dropout: float = 0.1  # on embeddings, residual branches, attention weights and the FFN
    ln_eps: float = 1e-6
    use_actions: bool = True  # add an action-type embedding to each history event (the paper does)
    # item representation: ID embedding and/or a projection of frozen item features
    feature_dim: int = 0  # > 0: buffer item_feats (n_items + 1, feature_dim), filled by the builder
    item_features: str = ""  # feature spec for crbr.features.item_features; sets feature_dim when built
    use_id_embedding: bool = True  # add a learned ID embedding (must be on when feature_dim == 0)
    item_mlp: bool = True  # candidate side: residual Linear-GELU-Linear over the item representation; False = tied
    # dense all-action loss
    future_window: int = 16  # positive drawn from the next K events (paper: a 28-day window)
    positive_actions: list[int] = field(default_factory=list)  # action ids that count as positives; [] = all
    positions_per_seq: int = 32  # training positions sampled per sequence; 0 = every position
    in_batch_negatives: int = 4096  # max in-batch negatives (other positions' positives); 0 = none
    n_random_negatives: int = 1024  # uniform random negatives shared by the batch; 0 = none
    logq_correction: bool = True  # subtract the log sampling probability (see the module docstring)
    temperature: float = 0.05  # softmax temperature on cosine similarities
    learn_temperature: bool = False  # paper: fixed; True = learned log-temperature, init `temperature`
    min_temperature: float = 1e-3  # floor of a learned temperature
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden % self.n_heads:
            raise ValueError(f"PinnerFormerConfig: hidden {self.hidden} not divisible by n_heads {self.n_heads}")
        if self.feature_dim < 0:
            raise ValueError(f"PinnerFormerConfig.feature_dim must be >= 0, got {self.feature_dim}")
        if not self.use_id_embedding and self.feature_dim == 0:
            raise ValueError("PinnerFormerConfig: use_id_embedding=False needs item features (feature_dim > 0)")
        if self.future_window < 1:
            raise ValueError(f"PinnerFormerConfig.future_window must be >= 1, got {self.future_window}")
        if self.in_batch_negatives < 0 or self.n_random_negatives < 0 or self.positions_per_seq < 0:
            raise ValueError("PinnerFormerConfig: in_batch_negatives, n_random_negatives, positions_per_seq must be >= 0")
        if self.in_batch_negatives == 0 and self.n_random_negatives == 0:
            raise ValueError("PinnerFormerConfig: needs in-batch or random negatives (both are 0)")
        if not self.temperature > 0:
            raise ValueError(f"PinnerFormerConfig.temperature must be > 0, got {self.temperature}")
        self.positive_actions = [int(a) for a in self.positive_actions]


# ---------------------------------------------------------------------- sampling
def sample_future_positives(
    targets: torch.Tensor,
    target_actions: torch.Tensor | None,
    window: int,
    positive_actions: list[int] | tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """For every position t, the index j of one event drawn uniformly from its future window.

    targets, target_actions: (B, L) from `train_batch` (targets[t] = the event after t, 0 = none).
    The window of t is j in [t, t + window) with targets[j] > 0 (and target_actions[j] in
    positive_actions when that is non-empty); positions with targets[t] == 0 get no positive.
    Returns (B, L) int64: the chosen column j, or -1 where t has no eligible future event.
    """
    B, L = targets.shape
    K = window
    win = F.pad(targets, (0, K - 1)).unfold(1, K, 1)  # (B, L, K): win[b, t, k] = targets[b, t + k]
    elig = win > 0
    if positive_actions:
        if target_actions is None:
            raise ValueError("positive_actions needs target_actions in the batch")
        acts = F.pad(target_actions, (0, K - 1)).unfold(1, K, 1)  # (B, L, K)
        pa = torch.as_tensor(list(positive_actions), dtype=acts.dtype, device=acts.device)
        elig = elig & torch.isin(acts, pa)
    elig = elig & (targets > 0).unsqueeze(-1)
    n = elig.sum(-1)  # (B, L) number of eligible future events
    u = torch.rand(B, L, device=targets.device, generator=generator)
    r = torch.minimum((u * n).long(), (n - 1).clamp(min=0))  # (B, L) rank among the eligible, uniform
    # offset of the (r+1)-th eligible event = number of offsets whose running count is still <= r
    k = (elig.cumsum(-1) <= r.unsqueeze(-1)).sum(-1)  # (B, L)
    t = torch.arange(L, device=targets.device)
    return torch.where(n > 0, t + k, torch.full_like(k, -1))


def sample_positions(valid: torch.Tensor, per_seq: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) bool: a uniform subset of at most `per_seq` True entries of each row of `valid`
    (all of them when per_seq <= 0 or the row has fewer)."""
    B, L = valid.shape
    if per_seq <= 0 or per_seq >= L:
        return valid
    key = torch.rand(B, L, device=valid.device, generator=generator).masked_fill(~valid, -1.0)
    top = key.topk(per_seq, dim=1).indices  # (B, per_seq)
    keep = torch.zeros_like(valid).scatter_(1, top, True)
    return keep & valid


# ---------------------------------------------------------------------- model
class ItemMLP(nn.Module):
    """Candidate-side item tower on the shared item representation: x + Linear(GELU(Linear(x))).
    The residual keeps the initial output at the scale of the representation, so the L2
    normalization after it is well conditioned from the first step."""

    def __init__(self, d: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(x)))


class PinnerFormer(Recommender):
    model_name = "pinnerformer"
    config_class = PinnerFormerConfig
    vector_scores = "dot"
    ddp_find_unused_parameters = True  # a batch without a sampled position uses no head (see `loss`)

    def __init__(self, config: PinnerFormerConfig):
        super().__init__()
        self.config = c = config
        if c.n_items <= 0:
            raise ValueError("PinnerFormerConfig.n_items must be set (build the model with crbr.models.build_model)")
        I, D = c.n_items + 1, c.hidden
        self.item_emb = nn.Embedding(I, D, padding_idx=0) if c.use_id_embedding else None
        if c.feature_dim > 0:
            self.register_buffer("item_feats", torch.zeros(I, c.feature_dim), persistent=True)
            self.feat_proj = nn.Linear(c.feature_dim, D)
        else:
            self.item_feats = None
            self.feat_proj = None
        # log of each item's share of training events (in-batch sampling probability); uniform until filled
        logq = torch.full((I,), -math.log(c.n_items))
        self.register_buffer("item_logq", logq, persistent=True)
        self.pos_emb = nn.Embedding(c.max_len, D)
        self.action_emb = nn.Embedding(max(c.n_actions, 1), D, padding_idx=0) if c.use_actions else None
        self.emb_drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            CausalBlock(D, c.n_heads, c.ffn_mult * D, c.dropout, c.dropout, c.dropout, True, c.ln_eps)
            for _ in range(c.n_layers)
        )
        self.final_ln = nn.LayerNorm(D, eps=c.ln_eps)
        self.user_proj = nn.Linear(D, D)  # user embedding = L2norm(user_proj(h_t))
        self.item_head = ItemMLP(D) if c.item_mlp else nn.Identity()
        if c.learn_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(c.temperature)))
        else:
            self.log_temperature = None
        self.apply(self._init)
        self._cache: tuple[tuple, torch.Tensor] | None = None  # catalogue embeddings for eval scoring

    def _init(self, m: nn.Module) -> None:
        init_normal(m, self.config.init_std)

    # ------------------------------------------------------------------ builder hook
    @torch.no_grad()
    def attach_data(self, data: DataContext) -> None:
        """The frozen item features (`item_features`) and the in-batch sampling distribution."""
        self.set_item_data(data.features.get("item"), data.item_counts)

    @torch.no_grad()
    def set_item_data(self, item_feats: np.ndarray | None = None, item_counts: np.ndarray | None = None) -> None:
        """Set the frozen item features and the in-batch sampling distribution.

        item_feats:  (n_items + 1, feature_dim) rows indexed by item id (row 0 = padding, zeroed);
                     only when config.feature_dim > 0.
        item_counts: (n_items + 1,) training events per item id (`crbr.data.dataset.train_item_counts`);
                     q_i = count_i / sum(counts[1:]); items without training events get a count of 1
                     (they can only be drawn as random negatives, so this only keeps log q finite).
        """
        I = self.config.n_items + 1
        if item_feats is not None:
            if self.item_feats is None:
                raise ValueError("attach_data: item_feats given but PinnerFormerConfig.feature_dim == 0")
            f = torch.as_tensor(np.asarray(item_feats), dtype=torch.float32)
            if tuple(f.shape) != tuple(self.item_feats.shape):
                raise ValueError(f"attach_data: item_feats must have shape {tuple(self.item_feats.shape)}, got {tuple(f.shape)}")
            if not torch.isfinite(f).all():
                raise ValueError("attach_data: item_feats has NaN or infinite values")
            f[0] = 0.0
            self.item_feats.copy_(f)
        if item_counts is not None:
            cnt = torch.as_tensor(np.asarray(item_counts), dtype=torch.float64)
            if tuple(cnt.shape) != (I,):
                raise ValueError(f"attach_data: item_counts must have shape ({I},), got {tuple(cnt.shape)}")
            if (cnt < 0).any():
                raise ValueError("attach_data: item_counts must be non-negative")
            cnt = cnt.clamp(min=1.0)
            cnt[0] = 0.0
            logq = torch.log(cnt / cnt[1:].sum())
            logq[0] = logq[1:].min()  # padding is never a candidate; keep the buffer finite
            self.item_logq.copy_(logq.to(self.item_logq.dtype))
        self._cache = None

    # ------------------------------------------------------------------ item side
    def item_repr(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., D) shared item representation: ID embedding + projected frozen features."""
        x = self.item_emb(ids) if self.item_emb is not None else None
        if self.feat_proj is not None:
            f = self.feat_proj(self.item_feats[ids])
            x = f if x is None else x + f
        return x

    def item_vectors(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """(..., D) unit-norm candidate embeddings of `ids` (None: the whole catalogue, (I, D))."""
        if ids is None:
            return self.catalogue()
        return F.normalize(self.item_head(self.item_repr(ids)), dim=-1)

    def catalogue(self) -> torch.Tensor:
        """(I, D) unit-norm embeddings of every item id (row 0 = padding, never scored).

        Cached between calls while no parameter or buffer changes and autograd is off (evaluation)."""
        dev = self.item_logq.device
        if torch.is_grad_enabled() or self.training:
            self._cache = None
            return self.item_vectors(torch.arange(self.config.n_items + 1, device=dev))  # (I, D)
        key = tuple((id(t), t._version, t.device) for t in (*self.parameters(), *self.buffers()))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.item_vectors(torch.arange(self.config.n_items + 1, device=dev)))
        return self._cache[1]

    # ------------------------------------------------------------------ user side
    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Transformer output after each history position: (B, L, D); windows are left-padded."""
        items = batch["items"]  # (B, L)
        B, L = items.shape
        if L > self.config.max_len:
            raise ValueError(f"window length {L} exceeds PinnerFormerConfig.max_len {self.config.max_len}")
        keep = items > 0  # (B, L)
        x = self.item_repr(items) + self.pos_emb.weight[-L:]  # newest event always at the last position
        if self.action_emb is not None:
            x = x + self.action_emb(batch["actions"])
        x = self.emb_drop(x) * keep.unsqueeze(-1)
        mask = padded_causal_mask(keep)  # (B, 1, L, L) earlier real events; padded queries see themselves
        for blk in self.blocks:
            x = blk(x, mask) * keep.unsqueeze(-1)
        return self.final_ln(x)

    def project_users(self, h: torch.Tensor) -> torch.Tensor:
        """(..., D) unit-norm user embeddings from encoder states."""
        return F.normalize(self.user_proj(h), dim=-1)

    def user_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D): unit-norm user embedding after the newest history event."""
        return self.project_users(self.encode(batch)[:, -1])

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_embedding(batch)  # (B, D)

    # ------------------------------------------------------------------ API
    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, I) cosine similarities (the temperature does not change the ranking); column 0 = -inf."""
        s = self.user_embedding(batch) @ self.catalogue().T
        s = s.float()
        s[:, 0] = -math.inf
        return s

    def temperature(self) -> torch.Tensor | float:
        if self.log_temperature is None:
            return self.config.temperature
        return self.log_temperature.exp().clamp(min=self.config.min_temperature)

    def logq_correction(self, ids: torch.Tensor, n_in_batch: int, n_random: int) -> torch.Tensor:
        """-log(expected count of each id in the candidate sample) up to a constant (module docstring)."""
        if not self.config.logq_correction or n_in_batch == 0:
            return torch.zeros(ids.shape, device=ids.device)
        logq = self.item_logq[ids].float()
        if n_random == 0:
            return -logq
        return -torch.logaddexp(logq, torch.full_like(logq, math.log(n_random / (n_in_batch * self.config.n_items))))

    def sampled_logits(self, u: torch.Tensor, pos: torch.Tensor, in_batch: torch.Tensor,
                       random: torch.Tensor) -> torch.Tensor:
        """(P, 1 + M) corrected logits: column 0 = the positive, then M = M_b + R candidates.

        u: (P, D) unit user vectors; pos: (P,) positive ids; in_batch: (M_b,) and random: (R,)
        candidate ids. Candidates equal to the row's positive are -inf (accidental hits).
        """
        cand = torch.cat([in_batch, random])  # (M,)
        ids = torch.cat([pos, cand])
        v = self.item_vectors(ids)  # (P + M, D)
        vp, vc = v[: len(pos)], v[len(pos) :]
        tau = self.temperature()
        corr = self.logq_correction(ids, len(in_batch), len(random))  # (P + M,)
        pos_l = (u * vp).sum(-1).float() / tau + corr[: len(pos)]  # (P,)
        neg_l = (u @ vc.T).float() / tau + corr[len(pos) :]  # (P, M)
        neg_l = neg_l.masked_fill(cand[None, :] == pos[:, None], -math.inf)
        return torch.cat([pos_l[:, None], neg_l], dim=1)

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        c = self.config
        tgt = batch["targets"]  # (B, L)
        dev = tgt.device
        j = sample_future_positives(tgt, batch.get("target_actions"), c.future_window, c.positive_actions)  # (B, L)
        sel = sample_positions(j >= 0, c.positions_per_seq)  # (B, L)
        h = self.encode(batch)  # (B, L, D)
        u = self.project_users(h[sel])  # (P, D)
        pos = tgt.gather(1, j.clamp(min=0))[sel]  # (P,) positive item ids
        P = len(pos)
        if P == 0:  # nothing to learn from; keep the graph so DDP / backward still work
            zero = h.sum() * 0.0
            return LossOutput(zero, {"loss": 0.0, "positions": 0.0})
        in_batch = pos
        if c.in_batch_negatives == 0:
            in_batch = pos[:0]
        elif P > c.in_batch_negatives:
            in_batch = pos[torch.randperm(P, device=dev)[: c.in_batch_negatives]]
        random = torch.randint(1, c.n_items + 1, (c.n_random_negatives,), device=dev)
        logits = self.sampled_logits(u, pos, in_batch, random)  # (P, 1 + M)
        loss = F.cross_entropy(logits, torch.zeros(P, dtype=torch.long, device=dev))
        logs = {"loss": loss.detach(), "positions": float(P)}
        if self.log_temperature is not None:
            logs["temperature"] = self.temperature().detach()
        return LossOutput(loss, logs)
