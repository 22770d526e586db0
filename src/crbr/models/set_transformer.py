"""The Set-Transformer retriever: a two-tower model over the (frozen) Q-Former user tokens
(docs/design.md, system design §3.2).

User side: the pre-trained Q-Former's M output tokens (B, M, Dq) -> linear map to D -> Set
Transformer blocks (SAB, or ISAB with inducing points for large M; Lee et al., ICML 2019) ->
attention pooling (PMA with one learnable seed) -> u, L2-normalized. `pooling="mean"` replaces
SAB + PMA by the mean of the mapped tokens: the ablation for the design's premise that a learned
aggregator beats averaging specialized tokens.

Item side: a trainable tower over the frozen item features (+ optional ID and category
embeddings) -> v, L2-normalized.

Loss: InfoNCE on u . v / tau against in-batch negatives (logQ-corrected) and uniformly sampled
negatives; tau learnable or fixed. Blocks are pre-norm (x + MHA(LN(x), LN(y)); x + FFN(LN(x))).

The tower is loaded from a Q-Former checkpoint (`tower_checkpoint`) and frozen unless
`finetune_tower`; its config is copied into this model's config so checkpoints are self-contained.
Without a checkpoint a fresh tower is trained jointly (end to end).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_weights
from ..settings import inner_config, nested_config
from ..nn import MAB, SetBlock, batch_candidates, choose_cut, logq_from_counts, mixed_negative_infonce
from .base import DataContext, LossOutput, Recommender
from .qformer import QFormer, QFormerConfig


@dataclass
class SetTransformerConfig:
    """n_items / n_actions / feature_dim / n_categories / max_item_categories are derived by `build_model`."""

    n_items: int = 0
    n_actions: int = 0
    feature_dim: int = 0
    item_features: str = ""  # frozen item features of the item tower ("" = ID/categories only)
    n_categories: int = 0
    max_item_categories: int = 0
    tower_checkpoint: str = ""  # Q-Former .safetensors; "" = train a fresh tower end to end
    tower: QFormerConfig | dict | None = None  # the Q-Former's config (copied from tower_checkpoint by the registry)
    finetune_tower: bool = False
    hidden: int = 64  # D of the adapter and the item tower
    out_dim: int = 64
    pooling: str = "pma"  # "pma": SAB/ISAB + PMA; "mean": mean of the tokens (ablation)
    set_blocks: int = 2
    n_heads: int = 2
    inducing_points: int = 0  # > 0: ISAB with this many inducing points instead of SAB
    ffn_mult: int = 4
    dropout: float = 0.1
    use_id_embedding: bool = True
    use_categories: bool = True
    n_negatives: int = 512
    logq_correction: bool = True
    temperature: float = 0.05
    learn_temperature: bool = True
    cut: str = "random"  # "random" cut point in the window or the "last" event (as the Q-Former)
    init_std: float = 0.02

    @property
    def max_len(self) -> int:
        return self.tower.max_len if self.tower is not None else 1024

    def __post_init__(self) -> None:
        if self.pooling not in ("pma", "mean"):
            raise ValueError(f"TwoTowerConfig.pooling: expected 'pma' or 'mean', got {self.pooling!r}")
        if self.hidden % self.n_heads:
            raise ValueError(f"TwoTowerConfig: hidden {self.hidden} not divisible by n_heads {self.n_heads}")
        if self.cut not in ("last", "random"):
            raise ValueError(f"TwoTowerConfig.cut: expected 'last' or 'random', got {self.cut!r}")
        self.tower = nested_config(QFormerConfig, self.tower, self, "set_transformer.tower")


class SetTransformerRetriever(Recommender):
    model_name = "set_transformer"
    config_class = SetTransformerConfig
    vector_scores = "dot"

    def __init__(self, config: SetTransformerConfig):
        super().__init__()
        self.config = c = config
        if c.n_items <= 0:
            raise ValueError("SetTransformerConfig.n_items must be set (build the model with crbr.models.build_model)")
        self.tower = QFormer(inner_config(QFormerConfig, c.tower, c, c.tower_checkpoint,
                                          "SetTransformerConfig.tower_checkpoint"))
        if c.tower_checkpoint and not c.finetune_tower:
            self.tower.requires_grad_(False)
        D, Dq = c.hidden, self.tower.config.hidden
        self.adapter_in = nn.Linear(Dq, D)
        if c.pooling == "pma":
            self.set_blocks = nn.ModuleList(SetBlock(D, c.n_heads, c.ffn_mult * D, c.dropout, c.inducing_points)
                                            for _ in range(c.set_blocks))
            self.pma_seed = nn.Parameter(torch.randn(1, D) * c.init_std)
            self.pma_ffn = nn.Sequential(nn.Linear(D, c.ffn_mult * D), nn.GELU(), nn.Linear(c.ffn_mult * D, D))
            self.pma = MAB(D, c.n_heads, c.ffn_mult * D, c.dropout)
        self.user_out = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, c.out_dim, bias=False))
        # item tower
        self.register_buffer("item_feats", torch.zeros(c.n_items + 1, c.feature_dim) if c.feature_dim > 0 else None)
        self.feat_proj = nn.Linear(c.feature_dim, D) if c.feature_dim > 0 else None
        self.id_emb = nn.Embedding(c.n_items + 1, D, padding_idx=0) if c.use_id_embedding or c.feature_dim <= 0 else None
        use_cat = c.use_categories and c.n_categories > 0 and c.max_item_categories > 0
        self.cat_emb = nn.Embedding(c.n_categories + 1, D, padding_idx=0) if use_cat else None
        # item -> its categories, shifted by one (0 = none), padded to max_item_categories
        self.register_buffer("item_cats", torch.zeros(c.n_items + 1, c.max_item_categories, dtype=torch.long) if use_cat else None)
        self.item_mlp = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, c.ffn_mult * D), nn.GELU(), nn.Linear(c.ffn_mult * D, c.out_dim, bias=False))
        self.log_inv_tau = nn.Parameter(torch.tensor(math.log(1.0 / c.temperature)), requires_grad=c.learn_temperature)
        self.register_buffer("item_logq", torch.full((c.n_items + 1,), -math.log(c.n_items)))
        for name, m in self.named_modules():
            if name.startswith("tower"):
                continue
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=c.init_std)
                with torch.no_grad():
                    m.weight[0].zero_()
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def tower_frozen(self) -> bool:
        return bool(self.config.tower_checkpoint) and not self.config.finetune_tower

    def train(self, mode: bool = True):
        super().train(mode)
        if self.tower_frozen:
            self.tower.eval()  # a frozen tower keeps its dropout off
        return self

    def attach_data(self, data: DataContext) -> None:
        """Load the pre-trained tower's weights and fill the data-derived buffers."""
        if self.config.tower_checkpoint:
            load_weights(self.config.tower_checkpoint, self.tower)
        self.set_item_data(data.features.get("item"), data.item_counts, data.categories)

    def set_item_data(self, item_feats: np.ndarray | None = None, item_counts: np.ndarray | None = None,
                      item_categories: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Fill the buffers derived from data: item features (I, F), training counts (I,), categories (CSR)."""
        c = self.config
        if item_feats is not None:
            if self.item_feats is None or tuple(item_feats.shape) != tuple(self.item_feats.shape):
                raise ValueError(f"item features of shape {tuple(item_feats.shape)} do not fit the item tower")
            self.item_feats.copy_(torch.as_tensor(item_feats, dtype=torch.float32))
        if item_counts is not None:
            self.item_logq.copy_(logq_from_counts(item_counts))
        if item_categories is not None and self.item_cats is not None:
            offsets, ids = (np.asarray(a) for a in item_categories)
            tab = np.zeros(tuple(self.item_cats.shape), dtype=np.int64)
            for i in range(1, min(len(offsets) - 1, tab.shape[0])):
                cats = ids[offsets[i] : offsets[i + 1]][: tab.shape[1]]
                tab[i, : len(cats)] = cats + 1
            self.item_cats.copy_(torch.from_numpy(tab))

    # ------------------------------------------------------------------ towers
    def item_vectors(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """(..., out) L2-normalized item vectors of `ids` (None = the whole catalogue (I, out))."""
        sel = (lambda t: t) if ids is None else (lambda t: t[ids])
        x = 0
        if self.feat_proj is not None:
            x = self.feat_proj(sel(self.item_feats))
        if self.id_emb is not None:
            x = x + sel(self.id_emb.weight)
        if self.cat_emb is not None:
            cats = sel(self.item_cats)  # (..., C)
            n = (cats > 0).sum(-1, keepdim=True).clamp(min=1)
            x = x + self.cat_emb(cats).sum(-2) / n  # mean over the item's categories
        return F.normalize(self.item_mlp(x), dim=-1)

    def tokens(self, batch: dict[str, torch.Tensor], visible: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M, Dq) Q-Former tokens (no gradient into a frozen tower)."""
        if self.tower_frozen:
            with torch.no_grad():
                return self.tower.encode(batch, visible).tokens
        return self.tower.encode(batch, visible).tokens

    def pool_memory(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, M, Dq) tokens -> (B, M, D) the set the pooling reads: the set blocks' outputs (PMA
        pooling) or the adapted tokens (mean pooling)."""
        x = self.adapter_in(tokens)  # (B, M, D)
        if self.config.pooling != "mean":
            for blk in self.set_blocks:
                x = blk(x)
        return x

    def pool(self, tokens: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M, Dq) tokens -> (B, out) L2-normalized user vector (`memory`: their `pool_memory`, if
        already computed)."""
        x = self.pool_memory(tokens) if memory is None else memory
        if self.config.pooling == "mean":
            u = x.mean(1)
        else:
            seed = self.pma_seed.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, 1, D)
            u = self.pma(seed, self.pma_ffn(x)).squeeze(1)  # PMA_1(X) = MAB(S, rFF(X))
        return F.normalize(self.user_out(u), dim=-1)

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pool(self.tokens(batch))

    # ------------------------------------------------------------------ API
    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.user_vectors(batch) @ self.item_vectors().T  # (B, I)
        s[:, 0] = float("-inf")
        return s

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        c = self.config
        batch, _ = self.tower.window(batch)
        items = batch["items"]
        cut, pos = choose_cut(batch["targets"], c.cut == "random" and self.training)
        visible = (items > 0) & (torch.arange(items.shape[1], device=items.device)[None, :] <= cut[:, None])
        keep = pos > 0
        u = self.pool(self.tokens(batch, visible))[keep]  # (B, d)
        pos = pos[keep]
        cand = batch_candidates(pos, c.n_negatives, c.n_items)
        logits = (u @ self.item_vectors(cand).T) * self.log_inv_tau.exp().clamp(max=100.0)
        loss = mixed_negative_infonce(logits, cand, pos, self.item_logq if c.logq_correction else None, c.n_items)
        return LossOutput(loss, {"loss": loss.detach(), "tau": 1.0 / self.log_inv_tau.detach().exp()})


# the names before the model was registered as "set_transformer"
TwoTower = SetTransformerRetriever
TwoTowerConfig = SetTransformerConfig

__all__ = ["SetTransformerRetriever", "SetTransformerConfig", "TwoTower", "TwoTowerConfig", "MAB", "SetBlock"]
