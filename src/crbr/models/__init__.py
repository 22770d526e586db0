"""Models. Each model is one file; `build_model` derives dataset-dependent sizes in one place."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np

from ..data.dataset import SequenceDataset, Split, train_item_counts
from .base import LossOutput, Recommender
from .crbr_model import CRBR, CRBRConfig
from .pinnerformer import PinnerFormer, PinnerFormerConfig
from .qformer import QFormer, QFormerConfig, QFormerOutput
from .two_tower import TwoTower, TwoTowerConfig
from .sasrec import SASRec, SASRecConfig
from .residual_mixture import ResidualMixture, ResidualMixtureConfig

# name -> (model class, config class); used to rebuild a model from a checkpoint's config
MODELS: dict[str, tuple[type[Recommender], type]] = {
    "sasrec": (SASRec, SASRecConfig),
    "qformer": (QFormer, QFormerConfig),
    "pinnerformer": (PinnerFormer, PinnerFormerConfig),
    "two_tower": (TwoTower, TwoTowerConfig),
    "crbr": (CRBR, CRBRConfig),
    "residual_mixture": (ResidualMixture, ResidualMixtureConfig),
}


def model_config(name: str, params: dict | None, ds: SequenceDataset | None = None,
                 feature_dim: int | None = None):
    """The model's config dataclass from user params, with sizes derived from the dataset."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(MODELS)}")
    cls = MODELS[name][1]
    params = dict(params or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(params) - fields
    if unknown:
        raise ValueError(f"model {name!r}: unknown settings {sorted(unknown)}; known: {sorted(fields)}")
    if ds is not None:
        params["n_items"] = ds.n_items
        if "n_actions" in fields:
            params["n_actions"] = ds.n_actions
        if "n_categories" in fields:
            has = ds.cat_offsets is not None
            params["n_categories"] = len(ds.category_names) if has else 0
            params["max_item_categories"] = int(np.diff(np.asarray(ds.cat_offsets)).max(initial=0)) if has else 0
    if feature_dim is not None and "feature_dim" in fields:
        params["feature_dim"] = feature_dim
    from ..config import from_dict  # checks and coerces types (YAML reads "1e-12" as a string)

    return from_dict(cls, params, f"model ({name})")


def build_model(name: str, params: dict | None, ds: SequenceDataset | None = None,
                split: Split | None = None) -> Recommender:
    """A model from its settings; with a dataset, the sizes and the data-derived buffers are filled.

    Models whose config has `item_features` (a spec for `crbr.features.item_features`) get the
    frozen feature matrix; models with `attach_data(item_feats=, item_counts=)` receive it and
    the training-set item counts (from `split`, else from every event). Models with several
    feature inputs define a classmethod `load_features(ds, params) -> (matrices, derived
    settings)`: the settings (e.g. widths) go into the config, the matrices to attach_data.
    """
    feats, extra = None, {}
    if ds is not None and hasattr(MODELS.get(name, (None,))[0], "load_features"):
        extra, derived = MODELS[name][0].load_features(ds, params or {})
        params = {**(params or {}), **derived}
    spec = (params or {}).get("item_features", "")
    if ds is not None and spec and name in MODELS:
        from ..features import item_features

        feats = item_features(ds, spec)
    model = MODELS[name][0](model_config(name, params, ds, None if feats is None else int(feats.shape[1])))
    if ds is not None and hasattr(model, "attach_data"):
        counts = train_item_counts(ds, split) if split is not None else np.bincount(
            np.asarray(ds.items), minlength=ds.n_items + 1)
        kw = {"item_feats": feats, "item_counts": counts, **extra}
        if ds.cat_offsets is not None and "item_categories" in inspect.signature(model.attach_data).parameters:
            kw["item_categories"] = (np.asarray(ds.cat_offsets), np.asarray(ds.cat_ids))
        model.attach_data(**kw)
    return model


__all__ = ["LossOutput", "Recommender", "SASRec", "SASRecConfig", "QFormer", "QFormerConfig", "QFormerOutput",
           "PinnerFormer", "PinnerFormerConfig", "TwoTower", "TwoTowerConfig", "CRBR", "CRBRConfig", "ResidualMixture", "ResidualMixtureConfig", "MODELS", "build_model", "model_config"]
