"""Generative retrieval with actions: a causal transformer that writes the next item's semantic
ID, code by code, and the action that will follow it (design chapter 4.3-4.4).

Tokens. Items are semantic IDs (`crbr semantic-ids build`): L code levels plus a disambiguation
level, each level with its own embedding table (`code_embeddings[l]`) and output head
(`code_heads[l]`). A history event is S = levels + 2 tokens, newest last:

    [CTRL] c_1 .. c_L d [ACTION]

[CTRL] is a control token describing the event before its codes are written: none, [EXPLORE]
(its category is new to the user), [REPEAT] (its item or category was seen before) or [CAT=c];
in training a share `control_prob` of the events get one, at inference the caller chooses.

Conditioning. The user profile is a frozen Q-Former's tokens over the events *before* the
decoder's window (so no target of the window leaks into it), projected to prefix tokens every
position sees; without `profile_checkpoint` the model is a plain decoder.

Contextual residual (design 4.1): E_final = (1 - g) E_static + g E_learnable, g gated by the
pooled profile (crbr.nn.ContextualResidualEmbedding; E_static = the item features the IDs were
built from). E_final is added to an event's [ACTION] token, its last token, so it is history for
every later event but never reveals an event's own later code levels to their predictions
(adding it to the code tokens would); the action head also reads the candidate's E_final. The IDs
are built from the static features because the contextual embedding depends on the user.

Training: cross-entropy on every code level of every event of the window (the first event is
predicted from the profile alone), plus `action_weight` times the cross-entropy of each event's
action. Retrieval: `rank` runs a beam search over codes restricted to a prefix trie of valid IDs,
vectorized over users and beams; excluded items (the masked history, "exclude seen") and the
scope are removed inside the trie, so every returned item is valid, in scope and distinct. Its
scores are item log-likelihoods under the full softmax of every level.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_weights
from ..nn import ContextualResidualEmbedding, gate_summary
from ..nn.decoder import DecoderBlock
from ..ranking import RankedItems
from ..settings import nested_config
from .base import DataContext, LossOutput, Recommender
from .qformer import QFormer, QFormerConfig

NO_CONTROL, EXPLORE, REPEAT, FIRST_CATEGORY = 0, 1, 2, 3


@dataclass
class GenerativeConfig:
    """n_items / n_actions / n_categories / code_sizes / feature_dim are derived from the data."""

    n_items: int = 0
    n_actions: int = 0
    n_categories: int = 0
    semantic_ids: str = ""  # the semantic-ID file (crbr semantic-ids build)
    code_sizes: list[int] = field(default_factory=list)  # derived: K per level, the disambiguation level last
    item_features: str = ""  # the features the IDs were built from: E_static of the contextual residual
    feature_dim: int = 0
    residual: bool = True  # the contextual residual embedding (needs item_features); False = the ablation
    action_input: bool = True  # history events carry their action; False = the ablation (actions only as targets)
    profile_checkpoint: str = ""  # a frozen Q-Former; "" = no profile (a plain decoder)
    profile: QFormerConfig | dict | None = None  # its config (copied from profile_checkpoint by the registry)
    profile_len: int = 200  # events before the decoder's window the profile reads
    window: int = 20  # events the decoder reads
    hidden: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ffn_mult: int = 4
    dropout: float = 0.1
    action_weight: float = 0.5  # loss = code cross-entropy + action_weight x action cross-entropy
    control_prob: float = 0.0  # share of training events preceded by a control token describing them
    beam: int = 50  # beam width at inference (at least k)
    decode_chunk: int = 256  # users decoded together

    def __post_init__(self) -> None:
        self.profile = nested_config(QFormerConfig, self.profile, self, "generative.profile")
        if self.window < 1 or self.beam < 1 or not 0.0 <= self.control_prob <= 1.0 or self.action_weight < 0:
            raise ValueError("GenerativeConfig: window and beam must be >= 1, control_prob in [0, 1], action_weight >= 0")
        if self.hidden % self.n_heads:
            raise ValueError(f"GenerativeConfig: hidden {self.hidden} not divisible by n_heads {self.n_heads}")

    @property
    def max_len(self) -> int:
        return self.window + (self.profile_len if self.profile_checkpoint or self.profile is not None else 0)

    @property
    def levels(self) -> int:
        return len(self.code_sizes)


@dataclass
class Context:
    """A batch's history run through the decoder once: the per-layer keys / values, which keys
    may be attended to (B, T), the hidden state of the last token (B, D) and the profile U."""

    cache: list[tuple[torch.Tensor, torch.Tensor]]
    key_mask: torch.Tensor
    last: torch.Tensor
    user: torch.Tensor


class Trie:
    """The valid semantic IDs as a prefix tree: at depth j every distinct prefix of j codes is a
    node; `child(j, nodes, K)` gives each node's child for every code of level j (-1 if none),
    by binary search over the sorted (parent, code) edges; the leaves (depth = levels) are items."""

    def __init__(self, codes: torch.Tensor, sizes: list[int]):
        c = codes[1:].cpu().numpy()  # (n_items, levels): real items only
        n = len(c)
        self.sizes = sizes
        self.node_of_item: list[torch.Tensor] = []  # depth j: (I,) node of each item's j-prefix (item 0: -1)
        self.edge_keys: list[torch.Tensor] = []
        self.edge_child: list[torch.Tensor] = []
        parent = np.zeros(n, dtype=np.int64)
        for j, K in enumerate(sizes):
            self.node_of_item.append(torch.from_numpy(np.r_[-1, parent]))
            if j + 1 < len(sizes):
                _, child = np.unique(c[:, : j + 1], axis=0, return_inverse=True)
                child = child.reshape(-1).astype(np.int64)
            else:
                child = np.arange(1, n + 1, dtype=np.int64)  # leaves are the items themselves
            keys, first = np.unique(parent * K + c[:, j], return_index=True)
            self.edge_keys.append(torch.from_numpy(keys))
            self.edge_child.append(torch.from_numpy(child[first]))
            parent = child
        self.node_of_item.append(torch.from_numpy(np.r_[-1, parent]))

    def n_nodes(self, depth: int) -> int:
        return int(self.node_of_item[depth].max()) + 1

    def child(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """nodes (...,) at `depth` -> (..., K) child node per code of level `depth`, -1 if none."""
        K = self.sizes[depth]
        keys = nodes[..., None] * K + torch.arange(K, device=nodes.device)  # (..., K)
        ek, ec = self.edge_keys[depth].to(nodes.device), self.edge_child[depth].to(nodes.device)
        pos = torch.searchsorted(ek, keys).clamp(max=len(ek) - 1)
        return torch.where((ek[pos] == keys) & (nodes[..., None] >= 0), ec[pos], torch.full_like(keys, -1))

    def allowed_counts(self, allowed: torch.Tensor) -> list[torch.Tensor]:
        """Per depth 1..levels, (B, n_nodes) how many allowed items lie under each node."""
        out = []
        for d in range(1, len(self.sizes) + 1):
            node = self.node_of_item[d].to(allowed.device)
            cnt = torch.zeros(allowed.shape[0], self.n_nodes(d), device=allowed.device)
            real = node >= 0
            cnt.index_add_(1, node[real], allowed[:, real].float())
            out.append(cnt)
        return out


class GenerativeRetriever(Recommender):
    model_name = "generative"
    config_class = GenerativeConfig
    ranking = "rank"
    rank_options = ("beam", "control")

    def __init__(self, config: GenerativeConfig):
        super().__init__()
        self.config = c = config
        if c.n_items <= 0 or not c.code_sizes:
            raise ValueError("GenerativeConfig: n_items and code_sizes must be set (build the model with "
                             "crbr.models.build_model and a semantic-ID file)")
        D, L = c.hidden, c.levels
        self.register_buffer("item_codes", torch.zeros(c.n_items + 1, L, dtype=torch.long))  # (I, levels)
        self.register_buffer("item_category", torch.full((c.n_items + 1,), -1, dtype=torch.long))
        self.code_embeddings = nn.ModuleList(nn.Embedding(K, D) for K in c.code_sizes)
        self.code_heads = nn.ModuleList(nn.Linear(D, K) for K in c.code_sizes)
        self.action_emb = nn.Embedding(max(c.n_actions, 1), D, padding_idx=0)
        self.control_emb = nn.Embedding(FIRST_CATEGORY + c.n_categories, D)
        self.slot_emb = nn.Embedding(L + 2, D)  # [CTRL], the code levels, [ACTION]
        self.event_pos = nn.Embedding(c.window + 1, D)  # event index in the window (newest = window)
        self.profile_tower = QFormer(dataclasses.replace(c.profile, n_items=c.n_items)) if c.profile is not None else None
        d_user = 1
        if self.profile_tower is not None:
            self.profile_tower.requires_grad_(False)
            d_user = self.profile_tower.config.hidden
            self.profile_proj = nn.Linear(d_user, D)
        use_res = c.residual and c.feature_dim > 0
        self.residual = ContextualResidualEmbedding(torch.zeros(c.n_items + 1, c.feature_dim), D, d_user) if use_res else None
        self.action_head = nn.Linear(D * (2 if use_res else 1), max(c.n_actions, 1))
        self.blocks = nn.ModuleList(DecoderBlock(D, c.n_heads, c.ffn_mult * D, c.dropout) for _ in range(c.n_layers))
        self.final_ln = nn.LayerNorm(D)
        self._trie: tuple[int, Trie] | None = None
        for m in self.modules():
            if isinstance(m, nn.Embedding) and m is not getattr(self.residual, "learnable", None):
                nn.init.normal_(m.weight, std=0.02)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.profile_tower is not None:
            self.profile_tower.eval()  # frozen
        return self

    # ------------------------------------------------------------------ data
    @classmethod
    def feature_specs(cls, params: dict) -> dict[str, str]:
        if not params.get("semantic_ids"):
            raise ValueError("generative: model.semantic_ids must name a semantic-ID file (crbr semantic-ids build)")
        specs = {"codes": f"ids:{params['semantic_ids']}"}
        if params.get("residual", True) and params.get("item_features"):
            specs["item"] = params["item_features"]
        return specs

    @classmethod
    def derived_settings(cls, data: DataContext, params: dict) -> dict:
        out = super().derived_settings(data, params)
        out["code_sizes"] = (data.features["codes"][1:].max(0) + 1).astype(int).tolist()
        return out

    def attach_data(self, data: DataContext) -> None:
        """The item-to-code table, primary categories (controls), E_static, the profile's weights."""
        if self.config.profile_checkpoint and self.profile_tower is not None:
            load_weights(self.config.profile_checkpoint, self.profile_tower)
        codes = torch.as_tensor(data.features["codes"], dtype=torch.long).clamp(min=0)
        if codes.shape != self.item_codes.shape:
            raise ValueError(f"semantic IDs of shape {tuple(codes.shape)} do not fit the model {tuple(self.item_codes.shape)}")
        self.item_codes.copy_(codes)
        if data.categories is not None:
            off, ids = (np.asarray(a) for a in data.categories)
            has = np.diff(off) > 0
            first = np.where(has, ids[np.minimum(off[:-1], max(len(ids) - 1, 0))], -1)
            self.item_category.copy_(torch.as_tensor(first, dtype=torch.long))
        if self.residual is not None and "item" in data.features:
            self.residual.static.copy_(torch.as_tensor(data.features["item"], dtype=torch.float32))
        self._trie = None

    def trie(self) -> Trie:
        """The prefix trie of the current item-to-code table (rebuilt when the table changes)."""
        key = self.item_codes._version
        if self._trie is None or self._trie[0] != key:
            self._trie = (key, Trie(self.item_codes, self.config.code_sizes))
        return self._trie[1]

    # ------------------------------------------------------------------ inputs
    def profile(self, batch: dict[str, torch.Tensor], n_old: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Prefix tokens (B, M, D) from the frozen profile over the batch's oldest `n_old` events
        (None without a profile) and the pooled profile U (B, d_user) (zeros without)."""
        B = batch["items"].shape[0]
        if self.profile_tower is None or n_old <= 0:
            d_user = 1 if self.profile_tower is None else self.profile_tower.config.hidden
            return None, batch["items"].new_zeros(B, d_user, dtype=torch.float32)
        old = {k: v[:, :n_old] for k, v in batch.items() if v.ndim == 2 and v.shape[1] == batch["items"].shape[1]}
        with torch.no_grad():
            tokens = self.profile_tower.encode(old).tokens  # (B, M, Dq)
        return self.profile_proj(tokens), tokens.mean(1)

    def item_final(self, items: torch.Tensor, user: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """E_final of items (B, N) for users U (B, d_user) and the gate (B, N); None without the residual."""
        if self.residual is None:
            return None, None
        return self.residual(items, user)

    def event_tokens(self, items: torch.Tensor, actions: torch.Tensor, controls: torch.Tensor,
                     e_final: torch.Tensor | None, newest: int | None = None,
                     code_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, S, D) the tokens of N events: [CTRL] c_1 .. d [ACTION], slot and position added;
        the newest event is at position `newest` (default: window, the predicted event's place).
        code_vectors (B, N, levels, D) replace the code embeddings (models whose codes are soft)."""
        N = items.shape[1]
        if code_vectors is None:
            codes = self.item_codes[items]  # (B, N, L)
            code_vectors = torch.stack([emb(codes[..., l]) for l, emb in enumerate(self.code_embeddings)], 2)
        # without action input every event's [ACTION] slot holds the padding action (a zero vector)
        act = self.action_emb(actions if self.config.action_input else torch.zeros_like(actions))
        act = act if e_final is None else act + e_final
        x = torch.cat([self.control_emb(controls)[:, :, None], code_vectors.to(act.dtype), act[:, :, None]], 2)
        x = x + self.slot_emb.weight[None, None]  # (B, N, S, D)
        end = self.config.window if newest is None else newest
        pos = torch.arange(end + 1 - N, end + 1, device=items.device)
        return x + self.event_pos(pos)[None, :, None, :]

    def run(self, prefix: torch.Tensor | None, x: torch.Tensor, valid: torch.Tensor,
            cache: list | None = None) -> torch.Tensor:
        """Decoder over [prefix; tokens x (B, T, D)] with valid (B, T) real tokens: the prefix is
        seen by every position, the tokens causally; returns the tokens' states (B, T, D)."""
        B, T, _ = x.shape
        M = 0 if prefix is None else prefix.shape[1]
        seq = x if prefix is None else torch.cat([prefix, x], 1)
        keys = torch.cat([valid.new_ones(B, M), valid], 1)  # (B, M + T)
        idx = torch.arange(M + T, device=x.device)
        allowed = (idx[None, :] <= idx[:, None]) | (idx[None, :] < M)  # (M+T, M+T): causal, prefix visible
        mask = allowed[None] & keys[:, None, :]
        mask = mask | torch.eye(M + T, dtype=torch.bool, device=x.device)[None]  # padding rows see themselves
        for blk in self.blocks:
            seq = blk(seq, mask[:, None], cache)
        if cache is not None:
            cache.append((keys, M))
        return self.final_ln(seq[:, M:])

    # ------------------------------------------------------------------ training
    def training_controls(self, events: torch.Tensor, seen_items: torch.Tensor) -> torch.Tensor:
        """(B, N) a control for each event with probability control_prob: [EXPLORE] when its
        category is new (not among the categories of `seen_items` and the earlier events),
        [REPEAT] when it is not, or [CAT=c], each of the two kinds half the time."""
        c = self.config
        B, N = events.shape
        if c.control_prob <= 0 or c.n_categories <= 0 or not self.training:
            return torch.zeros_like(events)
        cat = self.item_category[events]  # (B, N), -1 = none
        hot = F.one_hot(cat.clamp(min=0), c.n_categories) * (cat >= 0)[..., None]  # (B, N, C)
        old_cat = self.item_category[seen_items]
        old = (F.one_hot(old_cat.clamp(min=0), c.n_categories) * (old_cat >= 0)[..., None]).sum(1)  # (B, C)
        before = old[:, None, :] + hot.cumsum(1) - hot  # categories seen before each event
        new = before.gather(2, cat.clamp(min=0)[..., None])[..., 0] == 0
        kind = torch.where(new, torch.full_like(cat, EXPLORE), torch.full_like(cat, REPEAT))
        by_cat = torch.rand(B, N, device=events.device) < 0.5
        ctrl = torch.where(by_cat, FIRST_CATEGORY + cat.clamp(min=0), kind)
        use = (torch.rand(B, N, device=events.device) < c.control_prob) & (cat >= 0) & (events > 0)
        return torch.where(use, ctrl, torch.zeros_like(ctrl))

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        c = self.config
        W = min(c.window, batch["items"].shape[1])
        n_old = batch["items"].shape[1] - W
        events = torch.cat([batch["items"][:, n_old:], batch["targets"][:, -1:]], 1)  # (B, W + 1)
        actions = torch.cat([batch["actions"][:, n_old:], batch["target_actions"][:, -1:]], 1)
        prefix, user = self.profile(batch, n_old)
        e_final, gate = self.item_final(events, user)
        controls = self.training_controls(events, batch["items"][:, :n_old])
        x = self.event_tokens(events, actions, controls, e_final)  # (B, N, S, D)
        B, N, S, D = x.shape
        real = events > 0
        h = self.run(prefix, x.reshape(B, N * S, D), real[..., None].expand(B, N, S).reshape(B, N * S)).view(B, N, S, D)
        codes = self.item_codes[events]  # (B, N, L)
        code_loss = torch.stack([F.cross_entropy(head(h[:, :, l][real]), codes[..., l][real])
                                 for l, head in enumerate(self.code_heads)]).mean()
        act_in = h[:, :, c.levels] if e_final is None else torch.cat([h[:, :, c.levels], e_final], -1)
        act_loss = F.cross_entropy(self.action_head(act_in[real]), actions[real])
        logs = {"code_ce": code_loss.detach(), "action_ce": act_loss.detach()}
        if gate is not None:
            logs["gate"] = gate[real].mean().detach()
        return LossOutput(code_loss + c.action_weight * act_loss, logs)

    # ------------------------------------------------------------------ inference
    def context(self, batch: dict[str, torch.Tensor], control: int = NO_CONTROL) -> Context:
        """The history's last `window` events plus the next event's [CTRL] token, run once."""
        c = self.config
        W = min(c.window, batch["items"].shape[1])
        n_old = batch["items"].shape[1] - W
        events, actions = batch["items"][:, n_old:], batch["actions"][:, n_old:]
        prefix, user = self.profile(batch, n_old)
        e_final, _ = self.item_final(events, user)
        B = events.shape[0]
        # the history ends one place before the event to be written (position `window`)
        x = self.event_tokens(events, actions, torch.zeros_like(events), e_final, c.window - 1).reshape(B, -1, c.hidden)
        ctrl = torch.full((B,), int(control), dtype=torch.long, device=events.device)
        nxt = self.control_emb(ctrl) + self.slot_emb.weight[0] + self.event_pos.weight[c.window]  # (B, D)
        x = torch.cat([x, nxt[:, None]], 1)
        valid = torch.cat([(events > 0)[..., None].expand(-1, -1, c.levels + 2).reshape(B, -1),
                           events.new_ones(B, 1, dtype=torch.bool)], 1)
        cache: list = []
        h = self.run(prefix, x, valid, cache)
        keys, _ = cache.pop()
        return Context(cache, keys, h[:, -1], user)

    def extend(self, ctx: Context, codes: torch.Tensor, start: int = 0, own: list | None = None
               ) -> tuple[torch.Tensor, list]:
        """States (B, G, j, D) of the new event's code tokens codes (B, G, j) of levels start ..
        start + j - 1: G continuations (beams, candidates) of each user's history, after the
        per-layer keys / values `own` of their levels before `start` (None when start = 0).
        Returns the states and the per-layer keys / values of levels up to start + j - 1."""
        j = codes.shape[-1]
        x = torch.stack([self.code_embeddings[start + l](codes[..., l]) for l in range(j)], -2)
        x = x + self.slot_emb.weight[1 + start : 1 + start + j] + self.event_pos.weight[self.config.window]
        kv = []
        for i, (blk, past) in enumerate(zip(self.blocks, ctx.cache)):
            x, layer_kv = blk.extend(x, past, ctx.key_mask, None if own is None else own[i])
            kv.append(layer_kv)
        return self.final_ln(x), kv

    def control_id(self, control: "str | int | None") -> int:
        """None -> no control; "explore" / "repeat"; "cat:<id>" or an int category id."""
        if control is None or control == "none":
            return NO_CONTROL
        if control == "explore":
            return EXPLORE
        if control == "repeat":
            return REPEAT
        text = str(control).removeprefix("cat:")
        if not text.lstrip("-").isdigit():
            raise ValueError(f"control {control!r}: expected none, explore, repeat or cat:<category id>")
        cat = int(text)
        if not 0 <= cat < self.config.n_categories:
            raise ValueError(f"control: category {cat} is out of range 0..{self.config.n_categories - 1}")
        return FIRST_CATEGORY + cat

    @torch.no_grad()
    def rank(self, batch: dict[str, torch.Tensor], k: int, exclude: torch.Tensor | None = None,
             scope: torch.Tensor | None = None, beam: int | None = None, control: "str | int | None" = None) -> RankedItems:
        """Top-k items by constrained beam search (width max(k, beam)); scores are item
        log-likelihoods. exclude (B, H) ids and scope ((I,) or (B, I) bool) are applied in the trie."""
        B = batch["items"].shape[0]
        allowed = self.allowed(B, exclude, scope, batch["items"].device)
        width, ctrl = max(k, beam or self.config.beam), self.control_id(control)
        out_i, out_s = [], []
        for s in range(0, B, self.config.decode_chunk):
            sl = slice(s, s + self.config.decode_chunk)
            part = {key: v[sl] for key, v in batch.items()}
            items, scores = self.beam_search(self.context(part, ctrl), width, None if allowed is None else allowed[sl])
            out_i.append(items)
            out_s.append(scores)
        return finish_lists(torch.cat(out_i), torch.cat(out_s), k)

    def allowed(self, B: int, exclude: torch.Tensor | None, scope: torch.Tensor | None, device) -> torch.Tensor | None:
        """(B, I) items a user may get, or None when every item may be returned."""
        if exclude is None and scope is None:
            return None
        I = self.config.n_items + 1
        ok = torch.ones(B, I, dtype=torch.bool, device=device)
        if scope is not None:
            ok &= scope.to(device, torch.bool).expand(B, I)
        if exclude is not None and exclude.numel():
            ok.scatter_(1, exclude.to(device, torch.long), False)
        ok[:, 0] = False
        return ok

    def beam_search(self, ctx: Context, width: int, allowed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(items (n, w), log-likelihoods (n, w)) of the best `width` valid paths per user."""
        trie, n = self.trie(), ctx.last.shape[0]
        counts = trie.allowed_counts(allowed) if allowed is not None else None
        nodes = ctx.last.new_zeros(n, 1, dtype=torch.long)  # the root
        scores = ctx.last.new_zeros(n, 1)
        code = nodes  # (n, b) each beam's newest code
        own = None  # per layer, the beams' keys / values of their codes so far
        last = len(self.code_heads) - 1
        for j, head in enumerate(self.code_heads):
            if j == 0:
                h = ctx.last[:, None]  # (n, 1, D)
            else:
                h, own = self.extend(ctx, code[..., None], j - 1, own)  # only the newest code runs
                h = h[:, :, -1]  # (n, b, D)
            logp = F.log_softmax(head(h).float(), -1)  # (n, b, K)
            child = trie.child(j, nodes)  # (n, b, K)
            ok = child >= 0
            if counts is not None:
                ok &= counts[j].gather(1, child.clamp(min=0).reshape(n, -1)).view_as(child) > 0
            cand = torch.where(ok, scores[..., None] + logp, torch.full_like(logp, -math.inf)).reshape(n, -1)
            top = cand.topk(min(width, cand.shape[1]), dim=1)
            parent, code = top.indices // logp.shape[-1], top.indices % logp.shape[-1]
            scores, nodes = top.values, child.reshape(n, -1).gather(1, top.indices)
            if own is not None and j < last:  # each kept beam takes its parent's cache
                idx = parent[:, :, None, None, None]
                own = [tuple(t.gather(1, idx.expand(-1, -1, *t.shape[2:])) for t in kv) for kv in own]
        return torch.where(torch.isneginf(scores), torch.zeros_like(nodes), nodes), scores

    # ------------------------------------------------------------------ teacher forcing
    @torch.no_grad()
    def candidate_scores(self, batch: dict[str, torch.Tensor], candidates: torch.Tensor,
                         control: "str | int | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
        """For candidates (B, C): each item's log-likelihood (B, C) and the log-distribution of
        the action that would follow it (B, C, A), by teacher-forcing its codes."""
        ctx = self.context(batch, self.control_id(control))
        B, C = candidates.shape
        codes3 = self.item_codes[candidates]  # (B, C, levels)
        h = self.extend(ctx, codes3)[0].reshape(B * C, codes3.shape[-1], -1)  # token l predicts level l + 1
        codes = codes3.reshape(B * C, -1)
        last = ctx.last[:, None].expand(B, C, -1).reshape(B * C, 1, -1)
        states = torch.cat([last, h[:, :-1]], 1)  # the state predicting each level
        ll = sum(F.log_softmax(head(states[:, l]).float(), -1).gather(1, codes[:, l:l + 1])[:, 0]
                 for l, head in enumerate(self.code_heads))
        e_final, _ = self.item_final(candidates, ctx.user)
        act_in = h[:, -1] if e_final is None else torch.cat([h[:, -1], e_final.reshape(B * C, -1)], -1)
        act = F.log_softmax(self.action_head(act_in).float(), -1)
        return ll.view(B, C), act.view(B, C, -1)

    def action_propensity(self, batch: dict[str, torch.Tensor], candidates: torch.Tensor) -> torch.Tensor:
        """(B, C, A) p(action | history, item) for candidate items (B, C)."""
        return self.candidate_scores(batch, candidates)[1].exp()

    @torch.no_grad()
    def diagnostics(self, batch, item_bucket=None, targets=None) -> dict[str, float] | None:
        """The contextual residual's gate over the batch's history events."""
        if self.residual is None:
            return None
        items = batch["items"]
        _, user = self.profile(batch, max(items.shape[1] - self.config.window, 0))
        _, g = self.item_final(items, user)
        return gate_summary(g, items > 0)


def finish_lists(items: torch.Tensor, scores: torch.Tensor, k: int) -> RankedItems:
    """(n, w) decoded items / scores -> RankedItems of k, ordered by (-score, id), padded."""
    n, w = items.shape
    if w < k:
        items = torch.cat([items, items.new_zeros(n, k - w)], 1)
        scores = torch.cat([scores, scores.new_full((n, k - w), -math.inf)], 1)
    key = torch.where(items > 0, items, torch.full_like(items, 1 << 40))
    o = torch.sort(key, dim=1, stable=True).indices  # by id first; the stable sort by score then keeps ids ascending on ties
    items, scores = items.gather(1, o), scores.gather(1, o)
    o = torch.sort(scores, dim=1, descending=True, stable=True).indices
    items, scores = items.gather(1, o)[:, :k], scores.gather(1, o)[:, :k]
    return RankedItems(torch.where(torch.isneginf(scores), torch.zeros_like(items), items), scores.float())
