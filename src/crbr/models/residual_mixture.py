"""Residual-enhancement mixture: a SASRec backbone plus two feature experts (docs/design.md,
"Residual-enhancement mixture").

    final(u, i) = LN(seq_u) + g * (w_vis(i) * LN(vis_u) + w_sem(i) * LN(sem_u))      (mixture="residual")
    final(u, i) = w_seq(i) * seq_u + w_vis(i) * vis_u + w_sem(i) * sem_u             (mixture="competitive")
    score(u, i) = final(u, i) . e_i

seq_u   (B, D)  the SASRec hidden state at the newest history position (the backbone, always kept)
vis_u   (B, D)  the visual expert: a light causal attention encoder over the history's per-item
                vectors of the `vis_features` spec (crbr.features grammar)
sem_u   (B, D)  the semantic expert: the same over the `sem_features` spec
g               a learnable scalar, initialised to `gating_init` (default 0.1)
w(i)            the item-centric router (the mixture's "ItemCentricRouter"): an MLP over the
                *candidate item's* ID embedding e_i (stop-gradient by default), softmax over the
                2 experts (residual) or over the 3 sources seq / vis / sem (competitive, the design
                the residual mixture replaces; kept for the ablation)
e_i     (D,)    the backbone's item ID embedding (the output table, as in SASRec)

Load balance: usage = mean router weights over the training targets of a batch;
L_bal = K * sum_k (usage_k - 1/K)^2, 0 exactly at uniform usage (K = 2 residual, 3 competitive);
loss = CE + balance_weight * L_bal.

Full-catalogue scoring stays one matmul. Because the router depends only on the candidate item,
each score is an inner product of two augmented vectors of size 3D:

    residual:     u' = [LN(seq), g LN(vis), g LN(sem)]      v'_i = [e_i, w_vis(i) e_i, w_sem(i) e_i]
    competitive:  u' = [seq, vis, sem]                        v'_i = [w_seq(i) e_i, w_vis(i) e_i, w_sem(i) e_i]

so score(u, i) = u' . v'_i exactly: the user side is encoded once per user (never once per
(user, item) pair), training uses the chunked full-softmax CE on (u', v'), and an ANN index
over v' serves retrieval unchanged. The router costs one small MLP over the (I, D) item table per
step.

Warm start (`backbone_checkpoint`): the backbone can start from a trained SASRec of the same
architecture, so the experts enhance a converged backbone (the centralized analogue of the
federated warm-up that aggregates the backbone first); experts, router and gate start fresh.

Parameter groups (`parameter_groups()`, used by federated partial aggregation):
backbone = SASRec + LN(seq); experts = both experts and their output LayerNorms; router; gate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import embedded_config, load_weights
from ..nn import CausalBlock, padded_causal_mask
from .base import DataContext, LossOutput, Recommender
from .sasrec import SASRec, SASRecConfig

MIXTURES = ("residual", "competitive")
EXPERT_INPUTS = ("features", "noise")


@dataclass
class ResidualMixtureConfig(SASRecConfig):
    """SASRec settings (the backbone; see SASRecConfig) plus the mixture's own.

    vis_features / sem_features: crbr.features specs of the two experts' per-item vectors
    (e.g. "categories", "text", "random:384", "items.npy"); vis_dim / sem_dim are derived from
    them by build_model.
    """

    mixture: str = "residual"  # "residual" (residual enhancement) | "competitive" (3-way router, the ablation)
    vis_features: str = "categories"
    sem_features: str = "text"
    vis_dim: int = 0  # derived: width of the vis_features matrix
    sem_dim: int = 0  # derived: width of the sem_features matrix
    expert_inputs: str = "features"  # "features" | "noise": fresh Gaussian inputs every forward pass (control)
    expert_layers: int = 1  # causal attention blocks per expert
    expert_heads: int = 1
    gating_init: float = 0.1  # initial g (residual only)
    learn_gate: bool = True  # False keeps g fixed at gating_init
    # the learned gate's learning rate = train.lr x gate_lr_scale. Adam moves a scalar by about its
    # rate per step whatever the gradient's size, so at the shared rate g can travel ~lr per step,
    # far from gating_init over one run; a smaller scale is the Adam form of the residual-enhancement
    # mixture's "gradient clipping for gating_weight": g still learns, but slowly
    gate_lr_scale: float = 1.0
    router_hidden: int = 64
    router_stop_grad: bool = True  # the router reads e_i without sending gradients into it
    # two ways to keep the experts from reshaping the backbone (ablations; off = the mixture as specified):
    # branch_stop_grad: the expert terms score with stopgrad(e_i), so only the backbone's own term
    #   trains the item table (the experts still move the backbone through the shared softmax)
    # freeze_backbone: the backbone (SASRec, started from `backbone_checkpoint`) is not trained at all
    #   and runs in eval mode; LN(seq), experts, router and gate learn on top of it
    branch_stop_grad: bool = False
    freeze_backbone: bool = False
    balance_weight: float = 0.01  # weight of the load-balance loss
    # warm start: a trained SASRec .safetensors whose weights initialise the backbone (its
    # architecture must match); experts, router and gate start fresh. "" = train from scratch
    backbone_checkpoint: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mixture not in MIXTURES:
            raise ValueError(f"ResidualMixtureConfig.mixture: expected one of {MIXTURES}, got {self.mixture!r}")
        if self.expert_inputs not in EXPERT_INPUTS:
            raise ValueError(f"ResidualMixtureConfig.expert_inputs: expected one of {EXPERT_INPUTS}, "
                             f"got {self.expert_inputs!r}")
        if self.gate_lr_scale <= 0:
            raise ValueError(f"ResidualMixtureConfig.gate_lr_scale must be > 0, got {self.gate_lr_scale}")
        if self.freeze_backbone and not self.backbone_checkpoint:
            raise ValueError("ResidualMixtureConfig.freeze_backbone needs backbone_checkpoint (a trained SASRec): "
                             "freezing a randomly initialised backbone is never wanted")
        if self.hidden % self.expert_heads:
            raise ValueError(f"ResidualMixtureConfig: hidden {self.hidden} not divisible by expert_heads {self.expert_heads}")

    # the SASRec settings a backbone checkpoint must share (the others only affect training)
    BACKBONE_ARCH = ("n_items", "n_actions", "max_len", "hidden", "n_layers", "n_heads", "ffn_mult", "ln_eps",
                     "use_actions", "seen_bias", "seen_bias_scale", "norm")

    def backbone_config(self) -> SASRecConfig:
        return SASRecConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SASRecConfig)})


@dataclass
class MixtureOutput:
    """The user side of a batch.

    seq, vis, sem: (B, L, D) per-position outputs (raw, before the fusion LayerNorms)
    user:          (B, L, 3D) the augmented user vectors u' (see the module docstring)
    """

    seq: torch.Tensor
    vis: torch.Tensor
    sem: torch.Tensor
    user: torch.Tensor


class FeatureExpert(nn.Module):
    """Light causal attention encoder over the history's frozen per-item vectors.

    x_t = W f(item_t) + p_t  ->  `layers` causal blocks  ->  (B, L, D) hidden state per position.
    The expert never sees item IDs: its only evidence is the feature matrix.
    """

    def __init__(self, feat_dim: int, c: ResidualMixtureConfig):
        super().__init__()
        self.proj = nn.Linear(max(feat_dim, 1), c.hidden)
        self.pos_emb = nn.Embedding(c.max_len, c.hidden)
        self.drop = nn.Dropout(c.dropout)
        attn_p = c.dropout if c.attn_dropout is None else c.attn_dropout
        ffn_p = c.dropout if c.ffn_dropout is None else c.ffn_dropout
        self.blocks = nn.ModuleList(
            CausalBlock(c.hidden, c.expert_heads, c.ffn_mult * c.hidden, c.dropout, attn_p, ffn_p, True, c.ln_eps)
            for _ in range(c.expert_layers)
        )
        self.out_ln = nn.LayerNorm(c.hidden, eps=c.ln_eps)  # LN(vis) / LN(sem) of the fusion formula

    def forward(self, feats: torch.Tensor, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # feats: (B, L, F) frozen vectors of the history items; items: (B, L); mask: (B, 1, L, L)
        L = items.shape[1]
        keep = (items > 0).unsqueeze(-1)
        x = self.drop(self.proj(feats) + self.pos_emb.weight[-L:]) * keep
        for blk in self.blocks:
            x = blk(x, mask) * keep
        return x  # (B, L, D), before out_ln


class ItemCentricRouter(nn.Module):
    """Weights over K sources from the candidate item's ID embedding: softmax(MLP(e_i)), (I, K)."""

    def __init__(self, d: int, hidden: int, k: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, k))
        nn.init.zeros_(self.net[-1].weight)  # uniform routing at initialisation
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, item_emb: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(item_emb).float(), dim=-1).to(item_emb.dtype)


def fuse_residual(seq_n: torch.Tensor, vis_n: torch.Tensor, sem_n: torch.Tensor, w: torch.Tensor,
                  g: torch.Tensor) -> torch.Tensor:
    """Reference form of the residual-enhancement fusion for explicit (user, item) pairs:
    seq_n + g * (w[..., 0:1] * vis_n + w[..., 1:2] * sem_n); inputs already LayerNorm-ed, (..., D)."""
    return seq_n + g * (w[..., 0:1] * vis_n + w[..., 1:2] * sem_n)


def fuse_competitive(seq: torch.Tensor, vis: torch.Tensor, sem: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Reference form of the competitive mixture: w_seq * seq + w_vis * vis + w_sem * sem, (..., D)."""
    return w[..., 0:1] * seq + w[..., 1:2] * vis + w[..., 2:3] * sem


def balance_loss(usage: torch.Tensor) -> torch.Tensor:
    """K * sum_k (usage_k - 1/K)^2 for a (K,) usage vector summing to 1; 0 at uniform usage."""
    k = usage.shape[-1]
    return k * ((usage - 1.0 / k) ** 2).sum(-1)


class ResidualMixture(Recommender):
    """SASRec backbone + visual and semantic feature experts fused by residual enhancement
    or, as the ablation, by the competitive 3-way mixture it replaces."""

    model_name = "residual_mixture"
    config_class = ResidualMixtureConfig

    EXPERTS = ("vis", "sem")

    def __init__(self, config: ResidualMixtureConfig):
        super().__init__()
        self.config = c = config
        if c.n_items <= 0:
            raise ValueError("ResidualMixtureConfig.n_items must be set (build the model with crbr.models.build_model)")
        self.backbone = SASRec(c.backbone_config())
        I = c.n_items + 1
        # frozen expert inputs: persistent buffers (saved in checkpoints), filled by attach_data
        self.register_buffer("vis_feats", torch.zeros(I, max(c.vis_dim, 1)))
        self.register_buffer("sem_feats", torch.zeros(I, max(c.sem_dim, 1)))
        self.vis_expert = FeatureExpert(c.vis_dim, c)
        self.sem_expert = FeatureExpert(c.sem_dim, c)
        residual = c.mixture == "residual"
        self.seq_ln = nn.LayerNorm(c.hidden, eps=c.ln_eps) if residual else None
        self.router = ItemCentricRouter(c.hidden, c.router_hidden, 2 if residual else 3)
        if residual:
            g = torch.tensor(float(c.gating_init))
            self.gate = nn.Parameter(g) if c.learn_gate else None
            if not c.learn_gate:
                self.register_buffer("fixed_gate", g)
        else:
            self.gate = None
        for m in (self.vis_expert, self.sem_expert):
            m.apply(self.backbone._init)
        if c.freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResidualMixture":
        """As nn.Module.train, except that a frozen backbone always runs in eval mode (no dropout)."""
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------ data
    @classmethod
    def feature_specs(cls, params: dict) -> dict[str, str]:
        """The two experts' feature specs, under the names "vis" and "sem"."""
        defaults = {f.name: f.default for f in dataclasses.fields(ResidualMixtureConfig)}
        specs = {name: params.get(f"{name}_features", defaults[f"{name}_features"]) for name in cls.EXPERTS}
        for name, spec in specs.items():
            if not spec:
                raise ValueError(f"residual_mixture: {name}_features must be a feature spec (crbr.features)")
        return specs

    @classmethod
    def derived_settings(cls, data: DataContext, params: dict) -> dict:
        """SASRec's sizes plus the experts' input widths (vis_dim, sem_dim)."""
        out = super().derived_settings(data, params)
        out.update({f"{name}_dim": int(data.features[name].shape[1]) for name in cls.EXPERTS if name in data.features})
        return out

    def attach_data(self, data: DataContext) -> None:
        """With `backbone_checkpoint`, load the trained SASRec into the backbone; copy the experts' inputs."""
        if self.config.backbone_checkpoint:
            self.load_backbone(self.config.backbone_checkpoint)
        self.set_expert_features(data.features.get("vis"), data.features.get("sem"))

    def set_expert_features(self, vis_feats: np.ndarray | None = None, sem_feats: np.ndarray | None = None) -> None:
        """Copy the frozen expert inputs ((n_items + 1, vis_dim) and (n_items + 1, sem_dim))."""
        for name, X in (("vis_feats", vis_feats), ("sem_feats", sem_feats)):
            if X is None:
                continue
            buf = getattr(self, name)
            t = torch.as_tensor(np.asarray(X), dtype=buf.dtype)
            if t.shape != buf.shape:
                raise ValueError(f"attach_data: {name} must have shape {tuple(buf.shape)}, got {tuple(t.shape)}")
            if not torch.isfinite(t).all():
                raise ValueError(f"attach_data: {name} has NaN or infinite values")
            buf.copy_(t)

    def load_backbone(self, path: str) -> None:
        """Initialise the backbone from a SASRec checkpoint of the same architecture."""
        if not Path(path).exists():
            raise FileNotFoundError(f"ResidualMixtureConfig.backbone_checkpoint: {path} does not exist")
        theirs = embedded_config(path, "sasrec")
        ours = dataclasses.asdict(self.config)
        defaults = {f.name: f.default for f in dataclasses.fields(SASRecConfig)}
        diff = [f"{k}: checkpoint {theirs.get(k, defaults[k])!r}, model {ours[k]!r}" for k in self.config.BACKBONE_ARCH
                if theirs.get(k, defaults[k]) != ours[k]]
        if diff:
            raise ValueError(f"{path}: the SASRec checkpoint does not fit the backbone ({'; '.join(diff)})")
        load_weights(path, self.backbone)

    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names per group: backbone, experts, router, gate (for partial aggregation)."""
        groups: dict[str, list[str]] = {"backbone": [], "experts": [], "router": [], "gate": []}
        for n, _ in self.named_parameters():
            top = n.split(".", 1)[0]
            key = {"backbone": "backbone", "seq_ln": "backbone", "vis_expert": "experts", "sem_expert": "experts",
                   "router": "router", "gate": "gate"}[top]
            groups[key].append(n)
        return groups

    def lr_scales(self) -> dict[str, float]:
        """The learned gate's learning-rate multiplier (`gate_lr_scale`), for the optimizer."""
        return {"gate": self.config.gate_lr_scale} if self.gate is not None and self.config.gate_lr_scale != 1.0 else {}

    # ------------------------------------------------------------------ encoder
    def gate_value(self) -> torch.Tensor:
        return self.gate if self.gate is not None else self.fixed_gate

    def route(self) -> torch.Tensor:
        """(I, K) router weights of every item (row 0 = padding, unused)."""
        E = self.backbone.item_emb.weight
        return self.router(E.detach() if self.config.router_stop_grad else E)

    def expert_inputs(self, name: str, items: torch.Tensor) -> torch.Tensor:
        """(B, L, F) the history's vectors for expert `name` ("vis" | "sem").

        expert_inputs="noise" replaces them by fresh L2-normalized Gaussian rows on every forward
        pass (training and scoring): unlike fixed random features, which identify items, these
        carry no information at all: the control for "the experts are useless".
        """
        table = getattr(self, f"{name}_feats")  # (I, F)
        if self.config.expert_inputs == "noise":
            z = torch.randn(*items.shape, table.shape[1], device=items.device, dtype=table.dtype)
            return F.normalize(z, dim=-1) * (items > 0).unsqueeze(-1)
        return table[items]

    def encode(self, batch: dict[str, torch.Tensor]) -> MixtureOutput:
        items = batch["items"]  # (B, L)
        mask = padded_causal_mask(items > 0)  # (B, 1, L, L), shared by both experts
        seq = self.backbone.encode(batch)  # (B, L, D)
        vis = self.vis_expert(self.expert_inputs("vis", items), items, mask)
        sem = self.sem_expert(self.expert_inputs("sem", items), items, mask)
        if self.config.mixture == "residual":
            g = self.gate_value().to(seq.dtype)
            user = torch.cat([self.seq_ln(seq), g * self.vis_expert.out_ln(vis), g * self.sem_expert.out_ln(sem)], -1)
        else:
            user = torch.cat([seq, vis, sem], -1)
        return MixtureOutput(seq, vis, sem, user)

    def item_vectors(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """(I, 3D) augmented item vectors v' (see the module docstring)."""
        E = self.backbone.item_emb.weight  # (I, D)
        w = self.route() if w is None else w  # (I, K)
        if self.config.mixture == "residual":
            Eb = E.detach() if self.config.branch_stop_grad else E  # what the expert terms score with
            return torch.cat([E, w[:, 0:1] * Eb, w[:, 1:2] * Eb], -1)
        return torch.cat([w[:, 0:1] * E, w[:, 1:2] * E, w[:, 2:3] * E], -1)

    def user_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 3D): u' at the newest history position."""
        return self.encode(batch).user[:, -1]

    # ------------------------------------------------------------------ API
    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # (B, I); the backbone's seen-item offsets (model.seen_bias) apply to the mixture's scores too
        return self.backbone.add_seen_offsets(self.user_embedding(batch) @ self.item_vectors().T, batch)

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        c = self.config
        out = self.encode(batch)
        tgt = batch["targets"]  # (B, L)
        sel = tgt > 0
        h, tgt = out.user[sel], tgt[sel]  # (P, 3D), (P,)
        w = self.route()  # (I, K)
        V = self.item_vectors(w)  # (I, 3D)
        ce = self.backbone.next_item_loss(h, V, tgt, batch, sel)  # CE or BCE against u'.v', seen offsets included
        usage = w[tgt].float().mean(0)  # (K,) mean routing weight over this batch's targets
        bal = balance_loss(usage)
        loss = ce + c.balance_weight * bal
        logs = {"loss": loss.detach(), "ce": ce.detach(), "balance": bal.detach(), "positions": sel.sum(),
                **self.backbone.seen_offset_logs()}
        if self.gate is not None or c.mixture == "residual":
            logs["gate"] = self.gate_value().detach()
        return LossOutput(loss, logs)

    # ------------------------------------------------------------------ diagnostics
    def source_names(self) -> tuple[str, ...]:
        return ("vis", "sem") if self.config.mixture == "residual" else ("seq", "vis", "sem")

    @torch.no_grad()
    def mixture_stats(self) -> dict[str, float]:
        """Gate and catalogue-wide mean router weight per source (no data needed)."""
        w = self.route()[1:].float().mean(0)
        res = {f"w_{n}": float(v) for n, v in zip(self.source_names(), w)}
        if self.config.mixture == "residual":
            res["gate"] = float(self.gate_value())
        return res

    @torch.no_grad()
    def diagnostics(self, batch: dict[str, torch.Tensor], item_bucket: np.ndarray | None = None,
                    targets: torch.Tensor | None = None) -> dict[str, object]:
        """Logged by the trainer per evaluation (metrics.csv diag_*, diagnostics.jsonl).

        gate:               g (residual)
        w_<source>:         mean router weight over the whole catalogue
        target_w_<source>:  mean router weight over the batch users' next items (expert usage)
        aux_ratio:          mean ||g (w_vis LN(vis) + w_sem LN(sem))|| / ||LN(seq)|| at the users'
                            next items (residual): how much the experts move the backbone
        bucket_w_<source>:  per popularity bucket (0 = head), mean router weight of the targets
        """
        res: dict[str, object] = dict(self.mixture_stats())
        if targets is None:
            return res
        keep = targets > 0
        tg = targets[keep]
        w = self.route()  # (I, K)
        wt = w[tg].float()  # (T, K)
        for n, v in zip(self.source_names(), wt.mean(0)):
            res[f"target_w_{n}"] = float(v)
        if self.config.mixture == "residual":
            out = self.encode(batch)
            seq_n = self.seq_ln(out.seq[:, -1][keep])
            vis_n = self.vis_expert.out_ln(out.vis[:, -1][keep])
            sem_n = self.sem_expert.out_ln(out.sem[:, -1][keep])
            aux = fuse_residual(seq_n, vis_n, sem_n, wt.to(seq_n.dtype), self.gate_value()) - seq_n
            res["aux_ratio"] = float((aux.norm(dim=-1) / seq_n.norm(dim=-1).clamp(min=1e-12)).mean())
        if item_bucket is not None:
            buckets = np.asarray(item_bucket)[tg.cpu().numpy()]
            share = {}
            for b in np.unique(buckets):
                share[int(b)] = wt[torch.as_tensor(buckets == b, device=wt.device)].mean(0).tolist()
            res["bucket_w"] = share
        return res


__all__ = ["ResidualMixture", "ResidualMixtureConfig", "ItemCentricRouter", "FeatureExpert", "MixtureOutput",
           "fuse_residual", "fuse_competitive", "balance_loss", "MIXTURES", "EXPERT_INPUTS"]
