"""The model contract: what every model declares to the training loop, the evaluator, retrieval
and serving. Nothing outside a model file names a model or looks for a method by name; what a
model offers is declared here, with defaults, and overridden in the model.

Training
  config                      a dataclass, saved inside every checkpoint
  max_len                     events of history the model reads (from its config)
  n_items                     real items of its catalogue: ids 1..n_items, 0 = padding (from its config)
  loss(batch) -> LossOutput   the objective on a batch from crbr.data.batching
  feature_specs(params)       (classmethod) frozen item features the model needs, by name
  derived_settings(data)      (classmethod) config values that come from the dataset
  attach_data(data)           receives the DataContext (features, counts, categories)
  lr_scales()                 learning-rate multipliers by parameter name
  parameter_groups()          parameter names by group (federated partial aggregation)
  diagnostics(batch, ...)     per-validation numbers for logs and plots, or None
  after_backward(step)        called after every backward pass (gradient statistics), or None

Ranking (one of two forms, declared by `ranking`)
  "score": score(batch) -> (B, I)     scores of the whole catalogue; rank() is derived from it
  "rank":  rank(batch, k, ...) -> RankedItems   for models that cannot score every item
           (beam search, generative decoding)

Vectors (what an ANN index and a service need), declared by `vector_scores`
  user_vectors(batch) -> (B, D) or (B, T, D);  item_vectors() -> (I, D)
  "dot": score == user_vectors @ item_vectors.T;  "max": score == max over the T user vectors;
  None: the model has no such vectors, or its scores add more than a dot product.
  query_vectors(batch) -> QueryVectors   what a vector index searches for each user: T vectors
  and per-vector score offsets (multi-path models return their paths here), merged by max.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..ranking import RankedItems, rank_scores

Batch = dict[str, torch.Tensor]


@dataclass
class LossOutput:
    """loss: scalar tensor to minimize; logs: detached scalars for progress bars and logs, as
    0-d tensors or floats (a tensor is read back only by whoever shows it, so a training step
    on a GPU never waits for its logs)."""

    loss: torch.Tensor
    logs: dict[str, "float | torch.Tensor"] = field(default_factory=dict)


@dataclass
class DataContext:
    """What a dataset tells a model before training (built by crbr.models.registry).

    n_items, n_actions: catalogue and action vocabulary sizes (item 0 is padding, I = n_items + 1)
    item_counts:        (I,) training interactions per item (from the split, else every event)
    categories:         item -> categories CSR: offsets (I + 1,), ids; None without categories
    category_names:     the name of each category id
    features:           name -> (I, F) float32 frozen item features, one per `feature_specs` entry
                        (a spec "ids:PATH" gives a semantic-ID table instead: (I, L + 1) int64)

    item_counts, categories and category_names may be given as functions that compute them; they
    are then computed when first read (a model that never reads them costs nothing).
    """

    n_items: int
    n_actions: int
    item_counts: Any = None
    categories: Any = None
    category_names: Any = ()
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name in ("item_counts", "categories", "category_names") and callable(value):
            value = value()
            object.__setattr__(self, name, value)
        return value

    @property
    def n_categories(self) -> int:
        return len(self.category_names) if self.categories is not None else 0

    @property
    def max_item_categories(self) -> int:
        """The most categories any one item has (0 without categories)."""
        if self.categories is None:
            return 0
        return int(np.diff(np.asarray(self.categories[0])).max(initial=0))


@dataclass
class QueryVectors:
    """What an index searches for a batch of users: the score of item i for user b is
    max_t (vectors[b, t] . item_vectors()[i] + offsets[b, t]).

    vectors: (B, T, D); offsets: (B, T) float32 (zeros when the vectors' scores are not shifted);
    details: model-specific explanation of each vector (e.g. "codes" (B, T, L) of a beam path).
    """

    vectors: torch.Tensor
    offsets: torch.Tensor
    details: dict[str, torch.Tensor] = field(default_factory=dict)


class Recommender(torch.nn.Module, abc.ABC):
    """Base class of every model; see the module docstring for the contract."""

    config: Any
    model_name: ClassVar[str]  # the registry name, stored in checkpoints (e.g. "sasrec")
    config_class: ClassVar[type]  # the config dataclass
    # "score": score(batch) ranks the whole catalogue; "rank": only rank(batch, k) (decoding models)
    ranking: ClassVar[str] = "score"
    # "dot" | "max" | None: how score relates to user_vectors / item_vectors (module docstring)
    vector_scores: ClassVar[str | None] = None
    # the inference options rank() (and score(), for scoring models) accept at call time
    rank_options: ClassVar[tuple[str, ...]] = ()
    # True for models whose loss may leave some trainable parameters unused in a batch (a branch
    # switched off or skipped); the training loop then builds DDP with find_unused_parameters
    ddp_find_unused_parameters: ClassVar[bool] = False

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, "float | torch.Tensor"]]:
        """(loss, logs): lets DistributedDataParallel wrap any model through its forward."""
        out = self.loss(batch)
        return out.loss, out.logs

    # ------------------------------------------------------------------ data
    @property
    def max_len(self) -> int:
        """Events of each user's history the model reads (the newest ones)."""
        return int(self.config.max_len)

    @property
    def n_items(self) -> int:
        """Real items of the catalogue the model was built for: item ids are 1..n_items and 0 is
        padding (item tables have n_items + 1 rows). Read from the config's `n_items`; a TypeError
        names the model when its config has none (a model of no item catalogue, e.g. a tokenizer)."""
        config = getattr(self, "config", None)
        if not hasattr(config, "n_items"):
            raise TypeError(f"{type(self).__name__} declares no item catalogue: its config "
                            f"({type(config).__name__}) has no n_items")
        return int(config.n_items)

    @classmethod
    def feature_specs(cls, params: dict[str, Any]) -> dict[str, str]:
        """Per-item data to load before the model is built: name -> crbr.features spec, or
        "ids:PATH" for a semantic-ID file. Default: the config's `item_features` spec, if it has
        one, under the name "item"."""
        spec = params.get("item_features", "")
        return {"item": spec} if spec else {}

    @classmethod
    def derived_settings(cls, data: DataContext, params: dict[str, Any]) -> dict[str, Any]:
        """Config values that come from the dataset, for the fields the config declares:
        n_items, n_actions, n_categories, max_item_categories, feature_dim (the width of the
        "item" features)."""
        sources = {"n_items": lambda: data.n_items, "n_actions": lambda: data.n_actions,
                   "n_categories": lambda: data.n_categories, "max_item_categories": lambda: data.max_item_categories}
        if "item" in data.features:
            sources["feature_dim"] = lambda: int(data.features["item"].shape[1])
        known = {f.name for f in dataclasses.fields(cls.config_class)}
        return {k: get() for k, get in sources.items() if k in known}

    def attach_data(self, data: DataContext) -> None:
        """Receive the dataset's features, item counts and categories (after construction,
        before training). Default: nothing to attach."""

    # ------------------------------------------------------------------ training hooks
    @abc.abstractmethod
    def loss(self, batch: Batch) -> LossOutput:
        """Training objective on a batch from `crbr.data.batching.train_batch`."""

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter name (from `named_parameters`); parameters not
        named here train at the run's learning rate. Default: none."""
        return {}

    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names by group, for federated partial aggregation. Default: one group."""
        return {"backbone": [n for n, _ in self.named_parameters()]}

    def diagnostics(self, batch: Batch, item_bucket: np.ndarray | None = None,
                    targets: torch.Tensor | None = None) -> dict[str, Any] | None:
        """Numbers logged at every validation (metrics.csv diag_*, diagnostics.jsonl) from a fixed
        sample of validation users: `batch` their histories, `targets` (B,) their next items,
        `item_bucket` (I,) each item's popularity bucket. Default: None (nothing to log)."""
        return None

    def after_backward(self, step: int) -> dict[str, float] | None:
        """Called by the training loop after every backward pass, before the optimizer step
        (gradients are in place). Returns numbers to log, or None. Default: None."""
        return None

    # ------------------------------------------------------------------ ranking
    def score(self, batch: Batch) -> torch.Tensor:
        """(B, I) scores of every item for each user's history in `batch` (ranking == "score")."""
        raise NotImplementedError(f"{type(self).__name__} ranks with rank(batch, k), it does not score the catalogue")

    def rank(self, batch: Batch, k: int, exclude: torch.Tensor | None = None,
             scope: torch.Tensor | None = None, **options: Any) -> RankedItems:
        """Each user's top-k items, ordered by (-score, item id), padded with item 0 / -inf.

        exclude: (B, H) item ids each user must not get (0 = padding), e.g. the whole visible
                 history when the protocol masks it; a decoding model applies it in its search
        scope:   (I,) or (B, I) bool, True where an item may be returned
        options: model-specific inference settings (beam width, control token, ...)
        Default (ranking == "score"): the exact top-k of `score`.
        """
        if options:
            raise TypeError(f"{type(self).__name__}.rank: unknown options {sorted(options)}")
        return rank_scores(self.score(batch), k, exclude, scope)

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        """(B, D) or (B, T, D) query vectors (vector_scores is not None)."""
        raise NotImplementedError(f"{type(self).__name__} has no user vectors (vector_scores is None)")

    def item_vectors(self) -> torch.Tensor:
        """(I, D) item vectors, row 0 = padding (vector_scores is not None)."""
        raise NotImplementedError(f"{type(self).__name__} has no item vectors (vector_scores is None)")

    def query_vectors(self, batch: Batch, **options: Any) -> QueryVectors:
        """The vectors an index searches for each user. Default: `user_vectors` as (B, T, D) with
        zero offsets, for models whose vector_scores is "dot" or "max"."""
        if self.vector_scores is None:
            raise NotImplementedError(f"{type(self).__name__}: scores are not max-of-dot-products of its vectors")
        if options:
            raise TypeError(f"{type(self).__name__}.query_vectors: unknown options {sorted(options)}")
        u = self.user_vectors(batch)
        u = u[:, None, :] if u.ndim == 2 else u  # (B, T, D)
        return QueryVectors(u, torch.zeros(u.shape[:2], dtype=torch.float32, device=u.device))


def init_normal(m: torch.nn.Module, std: float) -> None:
    """The reference initialization of SASRec-style models, for `module.apply`: Linear and
    Embedding weights N(0, std), Linear biases zero, the padding row of an Embedding zero."""
    if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
        torch.nn.init.normal_(m.weight, std=std)
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            torch.nn.init.zeros_(m.bias)
        if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
