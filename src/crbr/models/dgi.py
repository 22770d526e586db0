"""DGI: differentiable semantic IDs, learned end to end with the generative retriever
("Differentiable Geometric Indexing for End-to-End Generative Retrieval", arXiv 2603.10409;
docs/design.md, "Generative path"). The two-stage pipeline (RQ-KMeans IDs, then a decoder trained on the
frozen codes, crbr.models.generative) becomes one model:

    item features / ID table --encoder--> e (item's base embedding) --> z = e / |e|
    residual quantizer, level l = 1..L with codebook C_l (K_l, D):
        s_l = gamma_l cos(r_{l-1}, C_l)        assignment logits (r_0 = z)
        y_l = softmax((s_l + g) / tau)         Gumbel-softmax, g ~ Gumbel(0, gumbel_scale)
        r_l = r_{l-1} - y_l C_l                residuals from the soft code vectors
    hard codes k_l = argmax s_l along the hard chain r_l = r_{l-1} - C_l[k_l] (the item's ID)

Operational unification. Soft teacher forcing: in training the decoder reads, for every event
of its window, the soft code vectors y_l C^_l (C^ = unit rows) as the input embedding of level l,
while the hard codes k_l are the next-token targets, so the next-token loss reaches the encoder
and every codebook. Symmetric weight sharing: the decoder's output head for level l is
codebook l (`code_heads[l].weight is code_embeddings[l].weight`, one nn.Parameter).
Isotropic geometry: logits gamma cos(h, c_k) with a learnable gamma (init 30) in the quantizer
and in the decoder heads; decoder inputs and scored code vectors are unit rows. The raw rows of
C_l (their norms) only enter the quantizer's residuals and reconstruction.

The disambiguation level (size `disambiguation`, 0 = none) numbers the items that share all L
codes; it has its own input table and head. Everything else (event tokens [CTRL] c_1..c_L d
[ACTION], the decoder, the contextual residual, controls, the prefix trie, the vectorized
constrained beam search, teacher-forced candidate scores) is crbr.models.generative's.

IDs that move. The item -> code table (`item_codes`) is recomputed from the current encoder and
codebooks (hard argmax, collisions numbered by the disambiguation level) whenever the model is
switched to eval mode or asked to rank after its weights changed, every `refresh_every`
training steps (through the training loop's after_backward), or by `refresh_ids()`; the trie
follows the table. `export_ids()` gives (codes, disambiguation) for
crbr.semantic_ids.SemanticIDs.from_codes.

Losses (weights are settings): next-token cross-entropy over the code levels (the mean over levels,
as the generative model) + action_weight x action CE + recon_weight x (1 - cos(a linear decoding of
the sum of the soft codes, the item's frozen input features); with recon_target="encoder" 1 -
cos(sum of the soft codes, e), which an encoder that maps every item alike satisfies trivially, so
the IDs collapse) + codebook_weight x (|sg(r) - c_k|^2 + commitment |r - sg(c_k)|^2, per level) +
contrastive_weight x InfoNCE(decoder state before an event's codes, that item's e; the batch's other
items are the negatives) + diversity_weight x (1 - H(mean code usage)/log K, per level).

Ablations: soft=False: straight-through estimator (the decoder reads the hard code vector,
its gradient copied to the pre-quantization residual; residuals use the detached hard codes),
tie_heads=False: separate output heads, cosine=False: dot products everywhere (raw codebook rows,
no gamma).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..ranking import RankedItems
from .base import DataContext, LossOutput, Recommender
from .generative import GenerativeConfig, GenerativeRetriever

GAMMA_RANGE = (1.0, 100.0)  # gamma is clamped to this range


@dataclass
class DGIConfig(GenerativeConfig):
    """GenerativeConfig's decoder settings plus the learned tokenizer. `code_sizes` is derived
    here (codebook_sizes + the disambiguation level); `semantic_ids` is not used (the IDs are
    learned). Needs item_features (the encoder's input) or id_embedding."""

    codebook_sizes: list[int] = field(default_factory=lambda: [256, 256, 256])  # K per learned level
    disambiguation: int = 64  # size of the disambiguation level (0 = none: colliding items but one are unreachable)
    id_embedding: bool = False  # a learnable item table added to the encoder's output
    encoder_hidden: int = 256  # width of the encoder MLP's hidden layer (0 = one linear layer)
    soft: bool = True  # Gumbel-softmax soft teacher forcing; False = straight-through estimator
    tie_heads: bool = True  # the decoder's head of level l is codebook l
    cosine: bool = True  # scaled cosine logits; False = dot products
    gamma_init: float = 30.0
    learn_gamma: bool = True
    tau_start: float = 1.0  # Gumbel-softmax temperature, annealed exponentially ...
    tau_end: float = 0.1
    anneal_steps: int = 10_000  # ... over this many training steps (0 = tau_start throughout)
    gumbel_scale: float = 1.0  # scale of the Gumbel noise in training (0 = plain softmax)
    recon_weight: float = 1.0
    # what the summed soft codes reconstruct: "features" = the frozen input features, through a
    # linear decoder (anchors the IDs to the items' content); "encoder" = the encoder's own output
    # e, which the encoder can make trivially easy by mapping every item alike (IDs collapse)
    recon_target: str = "features"
    codebook_weight: float = 1.0
    commitment: float = 0.25  # the commitment term's weight inside the local (codebook) loss
    # both at 1: at 0.1 the level-1 codes of Beauty's items collapsed onto one code in training
    contrastive_weight: float = 1.0
    diversity_weight: float = 1.0
    kmeans_init_iters: int = 10  # k-means over the initial encoder's residuals initialises the codebooks (0 = random)
    refresh_every: int = 200  # training steps between recomputations of the ID table (0 = only on eval)

    def __post_init__(self) -> None:
        if self.semantic_ids:
            raise ValueError("dgi: semantic_ids is not used (the model learns its IDs); leave it empty")
        if not self.codebook_sizes or min(self.codebook_sizes) < 2 or self.disambiguation < 0:
            raise ValueError(f"dgi: codebook_sizes must be >= 2 each and disambiguation >= 0, got "
                             f"{self.codebook_sizes}, {self.disambiguation}")
        if not self.item_features and not self.id_embedding:
            raise ValueError("dgi: set item_features (the encoder's input) or id_embedding=true")
        if self.recon_target not in ("features", "encoder"):
            raise ValueError(f"dgi: recon_target must be 'features' or 'encoder', got {self.recon_target!r}")
        if not 0 < self.tau_end <= self.tau_start or self.gamma_init <= 0 or self.gumbel_scale < 0:
            raise ValueError("dgi: need 0 < tau_end <= tau_start, gamma_init > 0, gumbel_scale >= 0")
        weights = (self.recon_weight, self.codebook_weight, self.commitment, self.contrastive_weight,
                   self.diversity_weight)
        if min(weights) < 0 or self.anneal_steps < 0 or self.refresh_every < 0:
            raise ValueError("dgi: loss weights, anneal_steps and refresh_every must be >= 0")
        self.code_sizes = list(self.codebook_sizes) + ([self.disambiguation] if self.disambiguation else [])
        super().__post_init__()

    @property
    def code_levels(self) -> int:
        """The learned levels L (without the disambiguation level)."""
        return len(self.codebook_sizes)


def _gamma(log_gamma: torch.Tensor) -> torch.Tensor:
    return log_gamma.exp().clamp(*GAMMA_RANGE)


def scaled_logits(h: torch.Tensor, weight: torch.Tensor, log_gamma: torch.Tensor | None, cosine: bool) -> torch.Tensor:
    """(..., K) gamma * cos(h, w_k) (cosine) or h . w_k, for h (..., D), weight (K, D); in float32."""
    with torch.autocast(h.device.type, enabled=False):
        h, w = h.float(), weight.float()
        if not cosine:
            return h @ w.T
        return _gamma(log_gamma) * (F.normalize(h, dim=-1) @ F.normalize(w, dim=-1).T)


class Codebook(nn.Module):
    """K code vectors: `weight` (K, D) raw rows (the quantizer's residuals and reconstruction use
    them); calling it on codes gives what the decoder reads, unit rows (cosine) or raw rows.
    With `gamma_init` it also assigns residuals to codes: logits(r) = gamma cos(r, C)."""

    def __init__(self, K: int, D: int, cosine: bool, gamma_init: float | None = None, learn_gamma: bool = True):
        super().__init__()
        self.cosine = cosine
        self.weight = nn.Parameter(torch.randn(K, D) / math.sqrt(D))
        if cosine and gamma_init is not None:
            self.log_gamma = nn.Parameter(torch.tensor(math.log(gamma_init)), requires_grad=learn_gamma)
        else:
            self.register_parameter("log_gamma", None)

    def vectors(self) -> torch.Tensor:
        """(K, D) the code vectors the decoder reads: unit rows (cosine) or raw rows."""
        return F.normalize(self.weight, dim=-1) if self.cosine else self.weight

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.vectors())

    def logits(self, r: torch.Tensor) -> torch.Tensor:
        """(..., K) assignment logits of residuals r (..., D)."""
        return scaled_logits(r, self.weight, self.log_gamma, self.cosine)


class CodeHead(nn.Module):
    """The decoder's output head of one level: gamma cos(h, w_k) (cosine) or h . w_k over the K
    rows of `weight`; tied to a codebook when given that codebook's Parameter."""

    def __init__(self, weight: nn.Parameter, cosine: bool, gamma_init: float, learn_gamma: bool):
        super().__init__()
        self.cosine = cosine
        self.weight = weight
        if cosine:
            self.log_gamma = nn.Parameter(torch.tensor(math.log(gamma_init)), requires_grad=learn_gamma)
        else:
            self.register_parameter("log_gamma", None)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return scaled_logits(h, self.weight, self.log_gamma, self.cosine)


def disambiguate(codes: torch.Tensor) -> torch.Tensor:
    """(N,) each row's index among the rows with the same codes (N, L), in row order (0 for the
    first); the same numbering as crbr.semantic_ids.disambiguate."""
    if len(codes) == 0:
        return codes.new_zeros(0)
    _, group = torch.unique(codes, dim=0, return_inverse=True)
    order = torch.sort(group.reshape(-1), stable=True).indices  # by group, then row
    g = group.reshape(-1)[order]
    new = torch.ones_like(g, dtype=torch.bool)
    new[1:] = g[1:] != g[:-1]
    pos = torch.arange(len(g), device=codes.device)
    start = torch.cummax(torch.where(new, pos, torch.zeros_like(pos)), 0).values  # first row of each run
    out = torch.empty_like(pos)
    out[order] = pos - start
    return out


def kmeans(x: torch.Tensor, K: int, iters: int) -> torch.Tensor:
    """(K, D) Lloyd's k-means centroids of x (N, D), seeded with random rows (with repetition and
    a little noise when N < K); an empty cluster keeps its centroid."""
    N = len(x)
    idx = torch.randperm(N)[:K] if N >= K else torch.randint(N, (K,))
    c = x[idx].clone()
    if N < K:
        c += 1e-3 * x.std() * torch.randn_like(c)
    for _ in range(iters):
        assign = (2 * x @ c.T - (c * c).sum(1)).argmax(1)  # nearest centroid
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=K).to(x.dtype)[:, None]
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
    return c


@dataclass
class Quantized:
    """U items through the encoder and the quantizer.

    e:       (U, D) the item's base embedding (encoder output)
    codes:   (U, L) hard codes (argmax along the hard residual chain): the item's ID
    inputs:  (U, L, D) what the decoder reads for each level (soft / straight-through / hard vectors)
    probs:   L x (U, K_l) noise-free assignment distributions softmax(s_l / tau)
    recon:   (U, D) the sum of the code vectors (soft, or hard with mode "ste")
    local:   (U,) codebook + commitment loss summed over levels
    """

    e: torch.Tensor
    codes: torch.Tensor
    inputs: torch.Tensor
    probs: list[torch.Tensor]
    recon: torch.Tensor
    local: torch.Tensor


class DGI(GenerativeRetriever):
    """Generative retrieval over semantic IDs learned end to end (module docstring)."""

    model_name = "dgi"
    config_class = DGIConfig
    ranking = "rank"
    ddp_find_unused_parameters = True  # the ablations leave some parameters without a gradient

    def __init__(self, config: DGIConfig):
        super().__init__(config)
        c = config
        D = c.hidden
        has_features = c.feature_dim > 0
        if not has_features and not c.id_embedding:
            raise ValueError("dgi: the encoder has no input: build the model with item_features from a dataset "
                             "(feature_dim > 0) or set id_embedding=true")
        # the encoder's input: the contextual residual's frozen features when it has them, else our own copy
        if has_features and self.residual is None:
            self.register_buffer("item_x", torch.zeros(c.n_items + 1, c.feature_dim))
        H = c.encoder_hidden
        self.encoder = None
        if has_features:
            self.encoder = (nn.Sequential(nn.Linear(c.feature_dim, H), nn.GELU(), nn.Linear(H, D)) if H > 0
                            else nn.Linear(c.feature_dim, D))
        self.recon_decoder = (nn.Linear(D, c.feature_dim) if has_features and c.recon_target == "features"
                              else None)
        self.id_table = nn.Embedding(c.n_items + 1, D) if c.id_embedding else None
        if self.id_table is not None:
            nn.init.normal_(self.id_table.weight, std=1 / math.sqrt(D))
        # the codebooks replace the generative model's code embeddings and heads
        books = [Codebook(K, D, c.cosine, c.gamma_init, c.learn_gamma) for K in c.codebook_sizes]
        heads = [CodeHead(b.weight if c.tie_heads else nn.Parameter(torch.randn_like(b.weight) / math.sqrt(D)),
                          c.cosine, c.gamma_init, c.learn_gamma) for b in books]
        if c.disambiguation:
            books.append(Codebook(c.disambiguation, D, c.cosine))
            heads.append(CodeHead(nn.Parameter(torch.randn(c.disambiguation, D) / math.sqrt(D)), c.cosine,
                                  c.gamma_init, c.learn_gamma))
        self.code_embeddings = nn.ModuleList(books)
        self.code_heads = nn.ModuleList(heads)
        self.log_gamma_user = (nn.Parameter(torch.tensor(math.log(c.gamma_init)), requires_grad=c.learn_gamma)
                               if c.cosine else None)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))  # drives the temperature
        self._ids_of: tuple | None = None  # the weights' fingerprint when the ID table was last computed
        self.unreachable = 0  # items whose full ID another item has (groups beyond the disambiguation level)

    @property
    def codebooks(self) -> list[Codebook]:
        """The L learned codebooks (without the disambiguation level)."""
        return list(self.code_embeddings)[: self.config.code_levels]

    # ------------------------------------------------------------------ data
    @classmethod
    def feature_specs(cls, params: dict) -> dict[str, str]:
        return {"item": params["item_features"]} if params.get("item_features") else {}

    @classmethod
    def derived_settings(cls, data: DataContext, params: dict) -> dict:
        return super(GenerativeRetriever, cls).derived_settings(data, params)  # sizes; no ID file to read

    def attach_data(self, data: DataContext) -> None:
        """The generative model's data (profile weights, categories, E_static), the encoder's
        features, then codebooks initialised by k-means and the first ID table."""
        feats = dict(data.features)
        feats["codes"] = self.item_codes.cpu().numpy()  # the table is ours: the generative model keeps it as it is
        super().attach_data(dataclasses.replace(data, features=feats))
        if "item" in data.features and self.residual is None:
            self.item_x.copy_(torch.as_tensor(data.features["item"], dtype=torch.float32))
        if self.config.kmeans_init_iters > 0:
            self.init_codebooks(self.config.kmeans_init_iters)
        self.refresh_ids()

    @property
    def item_inputs(self) -> torch.Tensor | None:
        """(I, F) the encoder's frozen input features (None without features)."""
        if self.encoder is None:
            return None
        return self.residual.static if self.residual is not None else self.item_x

    # ------------------------------------------------------------------ the tokenizer
    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """(..., D) the base embedding e of item ids (...)."""
        e = self.encoder(self.item_inputs[items]) if self.encoder is not None else 0
        return e + self.id_table(items) if self.id_table is not None else e

    def start(self, e: torch.Tensor) -> torch.Tensor:
        """r_0: the unit-normalized embedding (cosine) or e itself, in float32."""
        e = e.float()
        return F.normalize(e, dim=-1) if self.config.cosine else e

    @torch.no_grad()
    def assign(self, items: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """(N, L) hard codes of items (N,): argmax along the hard residual chain."""
        out = []
        for s in range(0, len(items), chunk):
            r = self.start(self.encode(items[s : s + chunk]))
            codes = []
            for cb in self.codebooks:
                k = cb.logits(r).argmax(-1)
                codes.append(k)
                r = r - cb.weight.float()[k]
            out.append(torch.stack(codes, -1))
        return torch.cat(out) if out else items.new_zeros(0, self.config.code_levels)

    def temperature(self) -> torch.Tensor:
        """The Gumbel-softmax temperature at the current training step (a 0-d tensor, no sync)."""
        c = self.config
        frac = (self.train_steps.float() / max(c.anneal_steps, 1)).clamp(max=1.0)
        if not c.anneal_steps:
            frac = torch.zeros_like(frac)
        return c.tau_start * (c.tau_end / c.tau_start) ** frac

    def quantize(self, items: torch.Tensor, tau: "torch.Tensor | float | None" = None,
                 mode: str | None = None) -> Quantized:
        """Items (U,) through the encoder and the quantizer. mode: "soft" (Gumbel-softmax, noise in
        training mode), "ste" (straight-through) or "hard" (the hard code vectors); default from
        the config's `soft`. tau: default the annealed temperature."""
        c = self.config
        mode = mode or ("soft" if c.soft else "ste")
        if mode not in ("soft", "ste", "hard"):
            raise ValueError(f"quantize: unknown mode {mode!r}")
        tau = self.temperature() if tau is None else tau
        e = self.encode(items)
        z = self.start(e)
        codes = self.assign(items) if mode != "soft" else None
        hard_codes: list[torch.Tensor] = []
        r, recon = z, torch.zeros_like(z)
        inputs, probs = [], []
        local = z.new_zeros(len(items))
        for l, cb in enumerate(self.codebooks):
            s = cb.logits(r)  # (U, K)
            w = cb.weight.float()
            probs.append(torch.softmax(s / tau, -1))
            k = s.argmax(-1) if codes is None else codes[:, l]  # this chain's hard code
            hard_codes.append(k)
            if mode == "soft":
                noisy = s
                if self.training and c.gumbel_scale > 0:
                    u = torch.rand_like(s).clamp(1e-10, 1 - 1e-10)
                    noisy = s - c.gumbel_scale * torch.log(-torch.log(u))
                y = torch.softmax(noisy / tau, -1)
                inputs.append(y @ cb.vectors().float())
                q = y @ w
                recon = recon + q
            else:
                vec = cb.vectors().float()[k]
                if mode == "ste":
                    pre = F.normalize(r, dim=-1) if c.cosine else r
                    vec = pre + (vec - pre).detach()  # forward: the code vector; backward: into the residual
                inputs.append(vec)
                recon = recon + w[k]
                q = w[k].detach()
            ck = w[k]
            local = local + ((r.detach() - ck) ** 2).sum(-1) + c.commitment * ((r - ck.detach()) ** 2).sum(-1)
            r = r - q
        if codes is None:  # the soft chain's residuals are not the hard chain's: the targets come from the latter
            codes = self.assign(items)
        return Quantized(e, codes, torch.stack(inputs, 1), probs, recon, local)

    # ------------------------------------------------------------------ IDs that move
    def _weights_fingerprint(self) -> tuple:
        ts = [p for m in (self.encoder, self.id_table) if m is not None for p in m.parameters()]
        ts += [cb.weight for cb in self.codebooks]
        if self.item_inputs is not None:
            ts.append(self.item_inputs)
        return tuple((t._version, t.data_ptr(), t.device.type) for t in ts)

    def ids_stale(self) -> bool:
        """Whether the weights that decide the IDs changed since the table was computed."""
        return self._ids_of != self._weights_fingerprint()

    @torch.no_grad()
    def refresh_ids(self) -> None:
        """Recompute the item -> code table from the current encoder and codebooks (hard argmax),
        number collisions on the disambiguation level (capped at its size; items past it are
        unreachable) and let the trie follow."""
        c = self.config
        items = torch.arange(1, c.n_items + 1, device=self.item_codes.device)
        codes = self.assign(items)
        table = codes
        if c.disambiguation:
            d = disambiguate(codes)
            self.unreachable = int((d >= c.disambiguation).sum())
            table = torch.cat([codes, d.clamp(max=c.disambiguation - 1)[:, None]], 1)
        else:
            self.unreachable = int(len(codes) - len(torch.unique(codes, dim=0)))
        self.item_codes[0] = 0
        self.item_codes[1:] = table
        self._ids_of = self._weights_fingerprint()

    def ensure_ids(self) -> None:
        if self.ids_stale():
            self.refresh_ids()

    @torch.no_grad()
    def export_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes (I, L) int64, disambiguation (I,) int64) of the current weights, row 0 (padding)
        -1; disambiguation uncapped (the numbering crbr.semantic_ids uses). Write them with
        SemanticIDs.from_codes(codes[1:], config.codebook_sizes, ds.item_ids, ...)."""
        items = torch.arange(1, self.config.n_items + 1, device=self.item_codes.device)
        codes = self.assign(items)
        d = disambiguate(codes)
        pad = np.full((1, codes.shape[1]), -1, dtype=np.int64)
        return np.vstack([pad, codes.cpu().numpy()]), np.r_[-1, d.cpu().numpy()].astype(np.int64)

    @torch.no_grad()
    def init_codebooks(self, iters: int) -> None:
        """Each codebook := k-means centroids of the current level's residuals over the catalogue
        (the initial encoder's), assigned with the model's own rule to form the next residuals."""
        items = torch.arange(1, self.config.n_items + 1, device=self.item_codes.device)
        r = self.start(self.encode(items))
        for cb in self.codebooks:
            cb.weight.copy_(kmeans(r, cb.weight.shape[0], iters))
            r = r - cb.weight.float()[cb.logits(r).argmax(-1)]

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode and hasattr(self, "_ids_of"):
            self.ensure_ids()  # evaluated with the IDs of the weights being evaluated
        return self

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        c = self.config
        W = min(c.window, batch["items"].shape[1])
        n_old = batch["items"].shape[1] - W
        events = torch.cat([batch["items"][:, n_old:], batch["targets"][:, -1:]], 1)  # (B, N = W + 1)
        actions = torch.cat([batch["actions"][:, n_old:], batch["target_actions"][:, -1:]], 1)
        if self.training and torch.is_grad_enabled():
            self.train_steps += 1
        prefix, user = self.profile(batch, n_old)
        e_final, gate = self.item_final(events, user)
        controls = self.training_controls(events, batch["items"][:, :n_old])
        uniq, inv = torch.unique(events, return_inverse=True)  # each item encoded once: (U,), (B, N)
        tau = self.temperature()
        q = self.quantize(uniq, tau)
        code_in, targets = q.inputs[inv], q.codes[inv]  # (B, N, L, D), (B, N, L)
        if c.disambiguation:
            d = self.item_codes[events, c.code_levels]  # from the current table
            code_in = torch.cat([code_in, self.code_embeddings[c.code_levels](d)[:, :, None].float()], 2)
            targets = torch.cat([targets, d[..., None]], -1)
        x = self.event_tokens(events, actions, controls, e_final, code_vectors=code_in)
        B, N, S, D = x.shape
        real = events > 0
        h = self.run(prefix, x.reshape(B, N * S, D), real[..., None].expand(B, N, S).reshape(B, N * S)).view(B, N, S, D)
        ntp = torch.stack([F.cross_entropy(head(h[:, :, l][real]), targets[..., l][real])
                           for l, head in enumerate(self.code_heads)]).mean()
        act_in = h[:, :, c.levels] if e_final is None else torch.cat([h[:, :, c.levels], e_final], -1)
        act_loss = F.cross_entropy(self.action_head(act_in[real]), actions[real])
        item = uniq > 0
        if self.recon_decoder is not None:  # the frozen features the encoder read
            target, got = self.item_inputs[uniq[item]].float(), self.recon_decoder(q.recon[item])
        else:
            target, got = q.e[item].float(), q.recon[item]
        recon = (1 - F.cosine_similarity(got, target, dim=-1)).mean()
        local = q.local[item].mean()
        contrastive = self.contrastive(h[:, :, 0][real], q.e, uniq, inv[real])
        diversity = torch.stack([1 - entropy(p[item].mean(0)) / math.log(p.shape[-1]) for p in q.probs]).mean()
        total = (ntp + c.action_weight * act_loss + c.recon_weight * recon + c.codebook_weight * local
                 + c.contrastive_weight * contrastive + c.diversity_weight * diversity)
        logs = {"code_ce": ntp.detach(), "action_ce": act_loss.detach(), "recon": recon.detach(),
                "local": local.detach(), "contrastive": contrastive.detach(), "diversity": diversity.detach(),
                "tau": torch.as_tensor(tau).detach()}
        if gate is not None:
            logs["gate"] = gate[real].mean().detach()
        return LossOutput(total, logs)

    def contrastive(self, states: torch.Tensor, e: torch.Tensor, uniq: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        """InfoNCE of decoder states (n, D) against the batch's item embeddings e (U, D) (padding
        excluded), the positive of state j being item target[j]."""
        with torch.autocast(states.device.type, enabled=False):
            if self.config.cosine:
                u, v = F.normalize(states.float(), dim=-1), F.normalize(e.float(), dim=-1)
                logits = _gamma(self.log_gamma_user) * u @ v.T
            else:
                logits = states.float() @ e.float().T
            logits = logits.masked_fill((uniq == 0)[None], -math.inf)
            return F.cross_entropy(logits, target)

    def after_backward(self, step: int) -> dict[str, torch.Tensor] | None:
        """Gradient norms of the encoder, each codebook, all codebooks and the decoder, with their
        squares (the epoch means of both give the variance over steps: mean(n^2) - mean(n)^2);
        every `refresh_every` steps the ID table is recomputed."""
        groups: dict[str, list[torch.Tensor]] = {
            "encoder": [p for m in (self.encoder, self.id_table) if m is not None for p in m.parameters()],
            "codebooks": [cb.weight for cb in self.codebooks],
            "decoder": [p for b in self.blocks for p in b.parameters()],
        }
        groups.update({f"codebook{l + 1}": [cb.weight] for l, cb in enumerate(self.codebooks)})
        out: dict[str, torch.Tensor] = {}
        for name, ps in groups.items():
            grads = [p.grad.detach().float().norm() for p in ps if p.grad is not None]
            n = torch.stack(grads).norm() if grads else torch.zeros(())
            out[f"{name}_norm"], out[f"{name}_norm_sq"] = n, n * n
        if self.config.refresh_every and step > 0 and step % self.config.refresh_every == 0:
            self.refresh_ids()
        return out

    # ------------------------------------------------------------------ inference
    def rank(self, batch: dict[str, torch.Tensor], k: int, exclude: torch.Tensor | None = None,
             scope: torch.Tensor | None = None, **options: Any) -> RankedItems:
        self.ensure_ids()
        return super().rank(batch, k, exclude, scope, **options)

    def candidate_scores(self, batch, candidates, control=None):
        self.ensure_ids()
        return super().candidate_scores(batch, candidates, control)

    @torch.no_grad()
    def diagnostics(self, batch, item_bucket=None, targets=None) -> dict[str, float] | None:
        """Per level of the ID table: share of codes in use, dead-code share, usage perplexity;
        collisions before disambiguation, unreachable items; the temperature and gammas; the
        contextual residual's gate."""
        self.ensure_ids()
        out: dict[str, float] = dict(super().diagnostics(batch, item_bucket, targets) or {})
        c = self.config
        codes = self.item_codes[1:, : c.code_levels]
        for l, K in enumerate(c.codebook_sizes):
            cnt = torch.bincount(codes[:, l], minlength=K).float()
            p = cnt / cnt.sum().clamp(min=1)
            out[f"level{l + 1}_usage"] = float((cnt > 0).float().mean())
            out[f"level{l + 1}_dead_share"] = 1.0 - out[f"level{l + 1}_usage"]
            out[f"level{l + 1}_perplexity"] = float(entropy(p).exp())
        _, counts = torch.unique(codes, dim=0, return_counts=True)
        out["collision_rate"] = float(counts[counts > 1].sum() / max(len(codes), 1))
        out["largest_bucket"] = float(counts.max()) if len(counts) else 0.0
        out["unreachable_share"] = self.unreachable / max(c.n_items, 1)
        out["tau"] = float(self.temperature())
        if c.cosine:
            out["gamma_quantizer"] = float(np.mean([float(_gamma(cb.log_gamma)) for cb in self.codebooks]))
            out["gamma_decoder"] = float(np.mean([float(_gamma(h.log_gamma)) for h in self.code_heads]))
        return out


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of distributions p (..., K) over the last axis."""
    return -(p * p.clamp(min=1e-12).log()).sum(-1)
