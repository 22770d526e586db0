"""CRBR, Conditional Residual Beam Retrieval (docs/design.md: system design §3.3 and the CRBR
routing-block specification).

A stack of L routing blocks turns one user context Q into B query vectors, one per beam path.
Block l owns a codebook C(l) (M_l x D residual prototypes, shared by all paths and users) and a
routing MLP f(l) (Linear -> ReLU -> Linear):

    h = f(l)(concat(Q, v))          v = the path's accumulated vector (v(0) = 0)     (.., D)
    z = h . C(l)^T                  affinity to every code                          (.., M_l)

Training (one soft path per example): Gumbel-softmax pi = softmax((z + g) / tau), soft residual
r = pi . C(l), v <- v + r; q~ = v(L) / ||v(L)||. Loss (as the specification states it):

    L = L_NCE + alpha L_Align + beta L_Balance
    L_NCE      InfoNCE of q~ against the positive item (in-batch + uniform negatives, logQ-corrected)
    L_Align    ||v(l) - i+||^2, averaged over the layers l = 1..L (or only l = L: align="last")
    L_Balance  sum_l sum_j pibar_j log pibar_j, pibar = the batch-averaged pi of layer l

Inference (the specification's beam-search mode): Score = S + log softmax(z) over all B x M_l
candidates, top-B kept, hard residual c_j*, path score kept; q = v(L) / ||v(L)||; one ANN
search per path through the common index interface, then merge & sort (union, duplicates
removed keeping the best score, optional per-path quota); every item keeps the path that found
it. Everything is batched over users and beams (no Python loop over either).

`start="context"` (an option beyond the specification, whose v(0) = 0): every path starts at the
Set-Transformer retriever's own query, v(0) = Q, so the codes are residual corrections of that
query rather than its replacement. A path's query is then no longer confined to the lattice of
code sums (the specification's q = v(L) / ||v(L)|| is, so even its best path can stay well away
from Q), and with the codebooks at zero every path is exactly the retriever's query.

`route_on="tokens"` (also beyond the specification): each routing block also reads the token set
H that the Set-Transformer retriever's pooling reads (its set blocks' outputs, (U, M, D_h)): the
path's own [Q; v] asks a query of it, a = softmax(H W_k (W_q [Q; v]) / sqrt(D_h)) H, and the
routing MLP reads concat(Q, v, a). Paths in different states can then read different tokens
(interests) instead of one pooled Q.

Q and the item vectors come from a trained Set-Transformer retriever checkpoint
(`base_checkpoint`): Q is its pooled Q-Former user vector and the items are its item tower's
vectors. The item vectors always
stay frozen (the ANN index is built once). Q is frozen too by default (`train_context="frozen"`);
`train_context="pool"` fine-tunes the retriever's pooling head (adapter, set blocks, PMA, output
projection) with CRBR's loss, so the one context vector can learn to carry what the routing needs
(e.g. several interests) instead of the retriever's single-query summary; the Q-Former tokens under
it stay frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_weights
from ..ranking import RankedItems, rank_scores
from ..settings import inner_config, nested_config
from ..nn import batch_candidates, choose_cut, future_targets, logq_from_counts, mixed_negative_logp, other_positives
from .base import DataContext, LossOutput, QueryVectors, Recommender
from .set_transformer import SetTransformerConfig, SetTransformerRetriever


@dataclass
class CRBRConfig:
    """n_items is derived by `build_model`; `base` is copied from the Set-Transformer retriever checkpoint."""

    n_items: int = 0
    n_actions: int = 0
    base_checkpoint: str = ""  # Set-Transformer retriever .safetensors: user context Q and item vectors
    base: SetTransformerConfig | dict | None = None  # its config (copied from base_checkpoint by the registry)
    codebook_sizes: list[int] = field(default_factory=lambda: [64, 64, 64])  # M_l per layer; L = len
    router_hidden: int = 128
    # inference policy: the defaults of beam / branching / merge_quota / merge_score, each of which can
    # also be given at call time (`score(batch, beam=8)`, `rank(...)`, crbr.retrieval.path_retrieve)
    beam: int = 4  # B at inference
    branching: str = "global"  # "global": top-B over all B x M_l candidates at every layer (the specification's text);
    # "first": B distinct layer-1 codes, then each path refined by its own best code (the specification's diagram)
    tau_start: float = 1.0  # Gumbel temperature, annealed tau = max(tau_min, tau_start * exp(-tau_decay * step))
    tau_min: float = 0.3
    tau_decay: float = 1e-4
    gumbel_hard: bool = False  # ablation: straight-through (hard one-hot forward, soft gradient) instead of the soft residual
    train_paths: int = 1  # P paths per user in training; P > 1 trains the path mixture (see `loss`)
    path_sampling: str = "gumbel"  # P > 1: "gumbel" = P independent Gumbel-softmax paths; "beam" = Gumbel-perturbed beam of P hard paths
    train_future: int = 1  # positives per training cut: the next k events (k > 1: multi-target mixture, see `loss`)
    merge_quota: int = 0  # at most this many items per path at the top of the merged ranking (0 = plain max over paths)
    # what merge & sort ranks by: "similarity" = q_b . i (the specification); "path" = q_b . i + tau_nce * log w_b,
    # w = softmax over the beam of the path scores S_b, i.e. log w_b + q_b . i / tau_nce in similarity units:
    # a low-probability path's items no longer crowd out the best path's, so a wider beam cannot lower recall
    merge_score: str = "similarity"
    alpha: float = 0.1  # L_Align weight
    beta: float = 0.1  # L_Balance weight
    align: str = "all"  # "all": mean over layers of ||v(l) - i+||^2; "last": only v(L)
    nce_temperature: float = 0.05
    n_negatives: int = 512
    logq_correction: bool = True
    cut: str = "random"
    # "frozen": Q as the Set-Transformer retriever computes it; "pool": fine-tune its pooling head with CRBR's loss
    train_context: str = "frozen"
    # where every path starts: "zero" = v(0) = 0 (the specification: q is a sum of codes); "context" = v(0) = Q,
    # the codes are residual corrections of the Set-Transformer retriever's query (layer 1 starts at half item
    # vectors, deeper layers near zero)
    start: str = "zero"
    # what the routing MLPs read: "pooled" = concat(Q, v) (the specification); "tokens" = concat(Q, v, a), a = the
    # path's attention read of the token set the Set-Transformer retriever pools (different paths can read
    # different interests)
    route_on: str = "pooled"

    def __post_init__(self) -> None:
        if not self.codebook_sizes or min(self.codebook_sizes) < 1:
            raise ValueError(f"CRBRConfig.codebook_sizes must be a non-empty list of sizes >= 1, got {self.codebook_sizes}")
        if self.train_paths < 1 or self.merge_quota < 0 or self.train_future < 1:
            raise ValueError(f"CRBRConfig: train_paths and train_future must be >= 1 and merge_quota >= 0, got "
                             f"{self.train_paths}, {self.train_future}, {self.merge_quota}")
        if self.branching not in ("global", "first"):
            raise ValueError(f"CRBRConfig.branching: expected 'global' or 'first', got {self.branching!r}")
        if self.path_sampling not in ("gumbel", "beam"):
            raise ValueError(f"CRBRConfig.path_sampling: expected 'gumbel' or 'beam', got {self.path_sampling!r}")
        if self.train_context not in ("frozen", "pool"):
            raise ValueError(f"CRBRConfig.train_context: expected 'frozen' or 'pool', got {self.train_context!r}")
        if self.merge_score not in ("similarity", "path"):
            raise ValueError(f"CRBRConfig.merge_score: expected 'similarity' or 'path', got {self.merge_score!r}")
        if self.route_on not in ("pooled", "tokens"):
            raise ValueError(f"CRBRConfig.route_on: expected 'pooled' or 'tokens', got {self.route_on!r}")
        if self.start not in ("zero", "context"):
            raise ValueError(f"CRBRConfig.start: expected 'zero' or 'context', got {self.start!r}")
        if self.align not in ("all", "last"):
            raise ValueError(f"CRBRConfig.align: expected 'all' or 'last', got {self.align!r}")
        self.base = nested_config(SetTransformerConfig, self.base, self, "crbr.base")
        self.inference()  # the default inference policy is valid

    @property
    def max_len(self) -> int:
        return self.base.max_len if self.base is not None else 1024

    def inference(self, beam: int | None = None, branching: str | None = None, merge_quota: int | None = None,
                  merge_score: str | None = None) -> "PathOptions":
        """The inference policy: this config's defaults, with the given settings instead."""
        opts = PathOptions(beam=self.beam if beam is None else int(beam),
                           branching=self.branching if branching is None else branching,
                           merge_quota=self.merge_quota if merge_quota is None else int(merge_quota),
                           merge_score=self.merge_score if merge_score is None else merge_score)
        if opts.beam < 1 or opts.merge_quota < 0:
            raise ValueError(f"CRBR inference: beam must be >= 1 and merge_quota >= 0, got {opts.beam}, {opts.merge_quota}")
        if opts.branching not in ("global", "first"):
            raise ValueError(f"CRBR inference: branching must be 'global' or 'first', got {opts.branching!r}")
        if opts.merge_score not in ("similarity", "path"):
            raise ValueError(f"CRBR inference: merge_score must be 'similarity' or 'path', got {opts.merge_score!r}")
        return opts


@dataclass(frozen=True)
class PathOptions:
    """How beam paths are searched and merged at inference (see CRBRConfig for each setting)."""

    beam: int
    branching: str
    merge_quota: int
    merge_score: str


@dataclass
class BeamOutput:
    """Result of the beam search for a batch of U users with B beams and L layers.

    queries:  (U, B, D) L2-normalized query vector of each path
    codes:    (U, B, L) code chosen at each layer
    scores:   (U, B) path score (sum of log-probabilities), best first
    """

    queries: torch.Tensor
    codes: torch.Tensor
    scores: torch.Tensor


class RoutingBlock(nn.Module):
    """One layer: codebook C (M, D) and routing MLP f: concat(Q, v) (2D) -> h (D); z = h . C^T.
    With `d_mem` > 0 the MLP also reads a = attention of the query W_q [Q; v] over a token set."""

    def __init__(self, d_ctx: int, d: int, m: int, hidden: int, d_mem: int = 0):
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(m, d) * 0.05)
        self.read = nn.Linear(d_ctx + d, d_mem) if d_mem else None  # the path's query of the token set
        self.mlp = nn.Sequential(nn.Linear(d_ctx + d + d_mem, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def logits(self, ctx: torch.Tensor, v: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        # ctx: (U, Dq) or (U, 1, Dq), broadcast to v's leading shape; v: (U, D) or (U, b, D);
        # memory: (U, T, Dm) token set (route_on="tokens") -> z: v's leading shape x M
        ctx = ctx.expand(*v.shape[:-1], ctx.shape[-1])
        x = torch.cat([ctx, v], -1)
        if self.read is not None:
            U, T, Dm = memory.shape
            q = self.read(x).reshape(U, -1, Dm)  # (U, n, Dm), n = paths per user
            att = torch.softmax(q @ memory.transpose(1, 2) / math.sqrt(Dm), -1)  # (U, n, T)
            x = torch.cat([x, (att @ memory).reshape(*x.shape[:-1], Dm)], -1)
        return self.mlp(x) @ self.codebook.T


class CRBR(Recommender):
    model_name = "crbr"
    config_class = CRBRConfig
    vector_scores = "max"  # score = max over the beam paths' queries (plus path offsets: query_vectors)
    rank_options = ("beam", "branching", "merge_quota", "merge_score")

    def __init__(self, config: CRBRConfig):
        super().__init__()
        self.config = c = config
        if c.n_items <= 0:
            raise ValueError("CRBRConfig.n_items must be set (build the model with crbr.models.build_model)")
        self.base = SetTransformerRetriever(inner_config(SetTransformerConfig, c.base, c, c.base_checkpoint,
                                                         "CRBRConfig.base_checkpoint"))
        self.base.requires_grad_(False)
        if c.train_context == "pool":
            for p in self.context_head_parameters():
                p.requires_grad_(True)
        D = self.base.config.out_dim
        d_mem = self.base.config.hidden if c.route_on == "tokens" else 0
        self.blocks = nn.ModuleList(RoutingBlock(D, D, m, c.router_hidden, d_mem) for m in c.codebook_sizes)
        if c.start == "context":  # small residuals (norm ~0.1 per code; layer 1 gets item anchors in attach_data)
            for blk in self.blocks:
                blk.codebook.data.mul_(0.25)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("item_logq", torch.full((c.n_items + 1,), -math.log(c.n_items)))
        self._item_category: np.ndarray | None = None  # (I,) primary category, for diagnostics

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()  # frozen
        return self

    def attach_data(self, data: DataContext) -> None:
        """Load the base retriever's weights, the training counts (logQ); start layer 1 at items."""
        if self.config.base_checkpoint:
            load_weights(self.config.base_checkpoint, self.base)
        self.set_item_data(data.item_counts, data.categories)

    def set_item_data(self, item_counts: np.ndarray | None = None,
                      item_categories: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Training counts (logQ), primary categories (diagnostics); layer-1 codes start at items."""
        c = self.config
        if item_counts is not None:
            self.item_logq.copy_(logq_from_counts(item_counts))
        if item_categories is not None:
            off, ids = (np.asarray(a) for a in item_categories)
            has = np.diff(off) > 0
            self._item_category = np.where(has, np.asarray(ids)[np.minimum(off[:-1], max(len(ids) - 1, 0))], -1)
        with torch.no_grad():  # coarse anchors: layer-1 codes start at random item vectors
            V = self.item_vectors()[1:]
            g = torch.Generator().manual_seed(0)
            pick = torch.randperm(V.shape[0], generator=g)[: self.blocks[0].codebook.shape[0]]
            # start="context": half an item vector, a step from Q towards an item region, not a jump onto it
            self.blocks[0].codebook[: len(pick)] = V[pick] * (0.5 if c.start == "context" else 1.0)

    # ------------------------------------------------------------------ frozen base
    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(U, B, D) the query of each beam path (the default inference policy)."""
        return self.beams(batch).queries

    def item_vectors(self) -> torch.Tensor:
        """(I, D) the frozen item tower's vectors (cached per set of base weights)."""
        with torch.no_grad():
            return self.base.item_vectors()

    def context_head_parameters(self) -> list[nn.Parameter]:
        """The Set-Transformer retriever's pooling head: adapter, set blocks, PMA, output projection (what
        `train_context="pool"` fine-tunes); not the Q-Former tower, not the item tower."""
        head = ("adapter_in.", "set_blocks.", "pma_seed", "pma_ffn.", "pma.", "user_out.")
        return [p for n, p in self.base.named_parameters() if n.startswith(head)]

    def context(self, batch: dict[str, torch.Tensor], visible: torch.Tensor | None = None) -> torch.Tensor:
        """(U, D) user context Q: the base's pooled Q-Former user vector."""
        return self.routing_inputs(batch, visible)[0]

    def routing_inputs(self, batch: dict[str, torch.Tensor],
                       visible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Q (U, D) and, with route_on="tokens", the token set H (U, M, D_h) the retriever pools Q from."""
        with torch.no_grad():
            tokens = self.base.tokens(batch, visible)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.train_context == "pool"):
            memory = self.base.pool_memory(tokens)
            return self.base.pool(tokens, memory), (memory if self.config.route_on == "tokens" else None)

    def start_vector(self, ctx: torch.Tensor) -> torch.Tensor:
        """(U, D) v(0): zeros (the specification) or the context Q itself (`start="context"`)."""
        return ctx if self.config.start == "context" else torch.zeros_like(ctx)

    def tau(self) -> float:
        c = self.config
        return max(c.tau_min, c.tau_start * math.exp(-c.tau_decay * float(self.step)))

    # ------------------------------------------------------------------ training mode
    def soft_path(self, ctx: torch.Tensor, tau: float, hard: bool = False,
                  memory: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Gumbel-softmax path: q~ (U, D), the states v(l) (U, D) and the selections pi(l) (U, M_l)."""
        v = self.start_vector(ctx)
        states, pis = [], []
        for blk in self.blocks:
            z = blk.logits(ctx, v, memory)  # (U, M)
            pi = F.gumbel_softmax(z, tau=tau, hard=hard, dim=-1)  # softmax((z + g) / tau)
            v = v + pi @ blk.codebook  # soft residual r = sum_j pi_j c_j
            states.append(v)
            pis.append(pi)
        return F.normalize(v, dim=-1), states, pis

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        c = self.config
        batch, _ = self.base.tower.window(batch)
        items = batch["items"]
        cut, pos = choose_cut(batch["targets"], c.cut == "random" and self.training)
        visible = (items > 0) & (torch.arange(items.shape[1], device=items.device)[None, :] <= cut[:, None])
        keep = pos > 0
        if c.train_future > 1:
            pos = future_targets(batch["targets"], cut, c.train_future)  # (B, k)
        ctx, memory = self.routing_inputs(batch, visible)
        ctx, memory = ctx[keep], (memory[keep] if memory is not None else None)
        pos = pos[keep].reshape(int(keep.sum()), -1)  # (U, k), 0 = none
        tau = self.tau()
        U, P = ctx.shape[0], c.train_paths
        if c.path_sampling == "beam" and P > 1:
            # P hard paths from a Gumbel-perturbed beam search; mixture weights = the routing's
            # path probabilities renormalized over the beam
            q, _, S, states, pis = self._beam(ctx, P, noise=True, memory=memory)  # (U, P, D), S (U, P)
            q, states = q.reshape(U * P, -1), [v.reshape(U * P, -1) for v in states]
            log_w = torch.log_softmax(S, 1)
        else:
            mem = memory.repeat_interleave(P, 0) if memory is not None else None
            q, states, pis = self.soft_path(ctx.repeat_interleave(P, 0), tau, hard=c.gumbel_hard, memory=mem)  # (U*P, D)
            log_w = torch.full((U, P), -math.log(P), device=ctx.device)
        l_nce, l_align = self.mixture_terms(q, states, log_w, pos)
        l_bal = torch.stack([(p.mean(0) * torch.log(p.mean(0).clamp(min=1e-12))).sum() for p in pis]).sum()
        loss = l_nce + c.alpha * l_align + c.beta * l_bal
        if self.training:
            self.step += 1
        return LossOutput(loss, {"loss": loss.detach(), "nce": l_nce.detach(), "align": l_align.detach(),
                                 "balance": l_bal.detach(), "tau": tau})

    def mixture_terms(self, q: torch.Tensor, states: list[torch.Tensor], log_w: torch.Tensor,
                      pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L_NCE and L_Align of U users with P paths each and up to k positives per user.

        q: (U*P, D) path queries (user-major); states: the v(l), each (U*P, D); log_w: (U, P) path
        weights; pos: (U, k) positive item ids (0 = none).

        Each (user, positive) pair j contributes -log sum_p w_p p(j | path p), the mixture
        likelihood of the positive, with p(j | path p) the logQ-corrected softmax over in-batch +
        sampled candidates in which the user's other positives are left out. P = 1, k = 1 is the
        specification's plain InfoNCE. With k > 1 one set of paths must explain positives from several
        interests, which rewards paths that cover different ones; each path is credited by its
        posterior responsibility for the pair, in L_NCE's gradient and as the weight of
        ||v(l) - i+||^2 in L_Align.
        """
        c = self.config
        U, P = log_w.shape
        user, slot = (pos > 0).nonzero(as_tuple=True)  # (J,) pairs
        pj = pos[user, slot]  # (J,)
        J = pj.shape[0]
        V = self.item_vectors()
        cand = batch_candidates(pj, c.n_negatives, c.n_items)  # (C,), the first J are the positives
        rows = (user[:, None] * P + torch.arange(P, device=q.device)[None, :]).reshape(-1)  # (J*P,) pair-major
        logits = (q @ V[cand].T)[rows] / c.nce_temperature  # (J*P, C)
        others = other_positives(pos[user], cand).repeat_interleave(P, 0) if pos.shape[1] > 1 else None  # (J*P, C)
        logp = mixed_negative_logp(logits, cand, self.item_logq if c.logq_correction else None, c.n_items,
                                   rows_per_positive=P, extra_hits=others).view(J, P)
        joint = log_w[user] + logp  # (J, P)
        l_nce = -torch.logsumexp(joint, 1).mean()
        resp = torch.softmax(joint.detach(), 1).reshape(-1, 1)  # (J*P, 1) responsibilities (1 when P = 1)
        target = V[pj].repeat_interleave(P, 0)  # (J*P, D) i+
        used = states if c.align == "all" else states[-1:]
        l_align = torch.stack([(resp * (v[rows] - target) ** 2).sum(-1).view(J, P).sum(1).mean() for v in used]).mean()
        return l_nce, l_align

    # ------------------------------------------------------------------ inference mode
    def _beam(self, ctx: torch.Tensor, B: int, noise: bool = False, memory: torch.Tensor | None = None,
              branching: str | None = None):
        """Beam search by Score = S + log softmax(z), vectorized over users and beams; with `noise`,
        the top-B choice at each layer is made on Gumbel-perturbed scores (stochastic paths for
        training) while S stays the paths' true log-probability. Differentiable in S and v.

        Returns queries (U, B, D), codes (U, B, L), S (U, B), the states v(l) (U, B, D) and the
        routing distributions of each layer (U * b, M_l)."""
        U, D = ctx.shape
        v = self.start_vector(ctx)[:, None, :]  # (U, 1, D) one path per user, v(0)
        S = ctx.new_zeros(U, 1)
        codes = torch.zeros(U, 1, 0, dtype=torch.long, device=ctx.device)
        states, probs = [], []
        per_path = False  # "first" branching: after layer 1 every path keeps its own best continuation
        for blk in self.blocks:
            M = blk.codebook.shape[0]
            logp = F.log_softmax(blk.logits(ctx[:, None, :], v, memory), dim=-1)  # (U, b, M)
            probs.append(logp.exp().reshape(-1, M))
            cand = S[:, :, None] + logp  # (U, b, M)
            key = cand.detach()
            if noise:
                key = key - torch.log(-torch.log(torch.rand_like(key).clamp(1e-10, 1.0 - 1e-7)))  # + Gumbel(0, 1)
            b = cand.shape[1]
            if per_path:
                idx = key.argmax(-1) + torch.arange(b, device=ctx.device)[None, :] * M  # (U, b) flat ids
            else:
                idx = key.reshape(U, -1).topk(min(B, b * M), dim=1).indices  # (U, k), best first
            per_path = (branching or self.config.branching) == "first"
            cand = cand.reshape(U, -1)
            S = cand.gather(1, idx)
            parent, code = idx // M, idx % M
            v = v.gather(1, parent[:, :, None].expand(-1, -1, D)) + blk.codebook[code]  # hard residual c_j*
            states = [x.gather(1, parent[:, :, None].expand(-1, -1, D)) for x in states] + [v]
            codes = torch.cat([codes.gather(1, parent[:, :, None].expand(-1, -1, codes.shape[2])), code[:, :, None]], 2)
        if noise or per_path:  # report the paths best first by their true score
            S, o = S.sort(dim=1, descending=True, stable=True)
            v, codes = v.gather(1, o[:, :, None].expand_as(v)), codes.gather(1, o[:, :, None].expand_as(codes))
            states = [x.gather(1, o[:, :, None].expand_as(x)) for x in states]
        return F.normalize(v, dim=-1), codes, S, states, probs

    @torch.no_grad()
    def beam_search(self, ctx: torch.Tensor, beam: int | None = None, memory: torch.Tensor | None = None,
                    branching: str | None = None) -> BeamOutput:
        """Top-`beam` paths per user by Score = S + log softmax(z), vectorized over users and beams
        (`memory`: the token set, route_on="tokens")."""
        q, codes, S, _, _ = self._beam(ctx, beam or self.config.beam, memory=memory, branching=branching)
        return BeamOutput(q, codes, S)

    def beams(self, batch: dict[str, torch.Tensor], beam: int | None = None, branching: str | None = None) -> BeamOutput:
        ctx, memory = self.routing_inputs(batch)
        return self.beam_search(ctx, beam, memory, branching)

    def query_vectors(self, batch: dict[str, torch.Tensor], **options) -> QueryVectors:
        """One query per beam path, (U, B, D), with what merge & sort adds to each path's
        similarities (`path_offsets`); details: the paths' "codes" (U, B, L) and "path_scores"
        (U, B). `options`: the inference policy (`CRBRConfig.inference`); a per-path quota is
        applied by the retrieval layer (crbr.retrieval.retrieve_paths)."""
        opts = self.config.inference(**options)
        out = self.beams(batch, opts.beam, opts.branching)
        return QueryVectors(out.queries, self.path_offsets(out, opts.merge_score),
                            {"codes": out.codes, "path_scores": out.scores})

    def path_offsets(self, out: BeamOutput, merge_score: str | None = None) -> torch.Tensor:
        """(U, B) what merge & sort adds to path b's similarities: 0 (merge_score="similarity") or
        tau_nce * log w_b with w = softmax of the path scores over the beam ("path")."""
        if (merge_score or self.config.merge_score) == "path":
            return self.config.nce_temperature * torch.log_softmax(out.scores.float(), 1)
        return torch.zeros_like(out.scores, dtype=torch.float32)

    def score(self, batch: dict[str, torch.Tensor], **options) -> torch.Tensor:
        """(U, I) exact reference of path retrieval: each item scored by its best beam,
        max_b q_b . item + offset_b (merge & sort over full per-path lists; offset: `path_offsets`).
        With `merge_quota` = m, only the best m items attributed to each beam keep their score; the
        others rank after them (score - 1e4), so the top B*m of this ranking equal
        `crbr.retrieval.path_retrieve(..., quota=m)` with exact search. `options`: the inference
        policy for this call (`CRBRConfig.inference`)."""
        opts = self.config.inference(**options)
        out = self.beams(batch, opts.beam, opts.branching)
        V = self.item_vectors()
        s_all = torch.einsum("ubd,id->ubi", out.queries, V)  # (U, B, I)
        if opts.merge_score == "path":  # (the similarity merge's offsets are zeros: skip the add)
            s_all = s_all + self.path_offsets(out, "path")[:, :, None]
        s_all[:, :, 0] = float("-inf")
        s, src = s_all.max(1)  # (U, I) best score, attributed beam (ties: the earlier beam)
        m = opts.merge_quota
        if m:
            mine = torch.where(src[:, None, :] == torch.arange(s_all.shape[1], device=s.device)[None, :, None], s[:, None, :],
                               torch.full_like(s_all, float("-inf")))  # (U, B, I) each beam's own items
            # rank of every item among its beam's items: score descending, then lower id
            order = torch.sort(mine, dim=2, descending=True, stable=True).indices
            rank = torch.empty_like(order).scatter_(2, order, torch.arange(order.shape[2], device=s.device).expand_as(order))
            keep = rank.gather(1, src[:, None, :])[:, 0] < m  # (U, I)
            s = torch.where(keep, s, s - 1e4)
        return s

    def rank(self, batch: dict[str, torch.Tensor], k: int, exclude: torch.Tensor | None = None,
             scope: torch.Tensor | None = None, **options) -> RankedItems:
        """The exact top-k of `score` under the inference policy `options` (beam, branching,
        merge_quota, merge_score). Path provenance comes with crbr.retrieval.path_retrieve."""
        return rank_scores(self.score(batch, **options), k, exclude, scope)

    # ------------------------------------------------------------------ diagnostics
    def code_usage(self, codes: torch.Tensor) -> tuple[list[float], list[float]]:
        """Per layer, over paths' codes (..., L): the share of codes no path uses and the perplexity
        of the code distribution."""
        dead, ppl = [], []
        for l, blk in enumerate(self.blocks):
            cnt = torch.bincount(codes[..., l].reshape(-1), minlength=blk.codebook.shape[0]).double()
            p = cnt[cnt > 0] / cnt.sum()
            dead.append(float((cnt == 0).double().mean()))
            ppl.append(float(torch.exp(-(p * p.log()).sum())))
        return dead, ppl

    @torch.no_grad()
    def diagnostics(self, batch: dict[str, torch.Tensor], item_bucket: np.ndarray | None = None,
                    targets: torch.Tensor | None = None, item_category: np.ndarray | None = None,
                    k: int = 50) -> dict[str, object]:
        """Per-layer code usage (perplexity, dead codes) of the top beam and of all beams, distinct
        first-layer codes among a user's beams, and per-path category purity of retrieved items."""
        out = self.beams(batch)
        U, B, L = out.codes.shape
        res: dict[str, object] = {"tau": self.tau()}
        for l, (dead, ppl) in enumerate(zip(*self.code_usage(out.codes))):
            res[f"perplexity_l{l + 1}"] = ppl
            res[f"dead_share_l{l + 1}"] = dead
        res["distinct_first_codes"] = float(torch.tensor([len(set(r)) for r in out.codes[:, :, 0].tolist()]).float().mean())
        cats = item_category if item_category is not None else self._item_category
        if cats is not None:
            V = self.item_vectors()
            top = torch.einsum("ubd,id->ubi", out.queries, V[1:]).topk(min(k, V.shape[0] - 1), dim=-1).indices + 1  # (U, B, k)
            c = torch.as_tensor(np.asarray(cats))[top.cpu()]  # (U, B, k) primary category
            c = c.clamp(min=0).long()
            n_cat = int(c.max()) + 1
            counts = F.one_hot(c, n_cat).sum(2)  # (U, B, C)
            res["path_purity"] = float((counts.amax(-1).float() / c.shape[-1]).mean())
        return res
