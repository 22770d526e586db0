"""The model registry: builds models from settings and a dataset, and rebuilds them from
checkpoints, with the same validation on both paths.

    model = build_model("sasrec", {"hidden": 64}, ds, split)
    model, meta = load_model("runs/x/checkpoints/best.safetensors")

Models that build on another model's checkpoint (`tower_checkpoint`, `base_checkpoint`) get that
checkpoint's config copied into their own (`tower`, `base`) here, so their checkpoints are
self-contained; configs themselves never read files.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import CheckpointError, embedded_config, load_weights, read_metadata, verify_weights
from ..data.dataset import SequenceDataset, Split, train_item_counts
from ..data.item_codes import read_item_codes
from ..settings import from_dict
from .base import DataContext, Recommender
from .crbr_model import CRBR
from .dgi import DGI
from .generative import GenerativeRetriever
from .pinnerformer import PinnerFormer
from .qformer import QFormer
from .residual_mixture import ResidualMixture
from .sasrec import SASRec
from .set_transformer import SetTransformerRetriever

MODEL_CLASSES: tuple[type[Recommender], ...] = (SASRec, PinnerFormer, QFormer, SetTransformerRetriever, CRBR,
                                                ResidualMixture, GenerativeRetriever, DGI)
# name -> (model class, config class)
MODELS: dict[str, tuple[type[Recommender], type]] = {c.model_name: (c, c.config_class) for c in MODEL_CLASSES}
# old names that still work, with the name to use instead
ALIASES: dict[str, str] = {"two_tower": "set_transformer"}
# settings that name another model's checkpoint -> (the setting its config is copied into, that model's names)
NESTED_CHECKPOINTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tower_checkpoint": ("tower", ("qformer",)),
    "base_checkpoint": ("base", ("set_transformer", "two_tower")),
    "profile_checkpoint": ("profile", ("qformer",)),
}


def canonical_name(name: str) -> str:
    """The registry name of `name` (an old alias is accepted with a deprecation warning)."""
    if name in ALIASES:
        new = ALIASES[name]
        warnings.warn(f"model name {name!r} is deprecated; use {new!r} (the same model)", DeprecationWarning, stacklevel=3)
        return new
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(MODELS)}")
    return name


def model_class(name: str) -> type[Recommender]:
    """The model class registered as `name` (or an old alias of it)."""
    return MODELS[canonical_name(name)][0]


def resolve_nested(params: dict[str, Any], require: bool = True) -> dict[str, Any]:
    """Copy the config of every checkpoint the settings name into its setting (unless given).
    A checkpoint that does not exist is an error, or with require=False left unresolved (for
    checking settings before the earlier stage has run)."""
    out = dict(params)
    for key, (into, names) in NESTED_CHECKPOINTS.items():
        path = out.get(key)
        if not path or out.get(into):
            continue
        if not Path(path).exists():
            if not require:
                continue
            raise FileNotFoundError(f"model.{key}: {path} does not exist (train that model first)")
        out[into] = embedded_config(path, names)
    return out


def data_context(ds: SequenceDataset, split: Split | None, feature_specs: dict[str, str]) -> DataContext:
    """What `ds` tells a model: sizes, training item counts, categories and the named features."""
    from ..features import item_features

    def counts() -> np.ndarray:  # (I,)
        if split is not None:
            return train_item_counts(ds, split)
        return np.bincount(np.asarray(ds.items), minlength=ds.n_items + 1)

    def categories() -> tuple[np.ndarray, np.ndarray] | None:
        return None if ds.cat_offsets is None else (np.asarray(ds.cat_offsets), np.asarray(ds.cat_ids))

    def load(spec: str) -> np.ndarray:
        if spec.startswith("ids:"):  # a semantic-ID file: (I, L + 1) int64 codes
            return read_item_codes(spec[len("ids:"):], ds.item_ids)
        return item_features(ds, spec)

    return DataContext(n_items=ds.n_items, n_actions=ds.n_actions, item_counts=counts, categories=categories,
                       category_names=lambda: list(ds.category_names),
                       features={name: load(spec) for name, spec in feature_specs.items()})


def model_config(name: str, params: dict | None, ds: SequenceDataset | None = None,
                 feature_dim: int | None = None, data: DataContext | None = None):
    """The model's config dataclass from user settings (checked and coerced), with the sizes
    derived from the dataset (`ds` or an already built `data`)."""
    name = canonical_name(name)
    cls = MODELS[name][0]
    params = resolve_nested(dict(params or {}), require=False)
    if data is None and ds is not None:
        data = data_context(ds, None, {})
    if data is not None:
        params.update(cls.derived_settings(data, params))
    if feature_dim is not None and "feature_dim" in {f for f in cls.config_class.__dataclass_fields__}:
        params["feature_dim"] = feature_dim
    return from_dict(cls.config_class, params, f"model ({name})")


def build_model(name: str, params: dict | None, ds: SequenceDataset | None = None,
                split: Split | None = None) -> Recommender:
    """A model from its settings; with a dataset, the sizes and the data the model asks for
    (features, training item counts from `split`, else from every event, categories) are filled."""
    name = canonical_name(name)
    cls = MODELS[name][0]
    params = resolve_nested(dict(params or {}))
    data = data_context(ds, split, cls.feature_specs(params)) if ds is not None else None
    model = cls(model_config(name, params, data=data))
    if data is not None:
        model.attach_data(data)
    return model


def load_model(path: str | Path) -> tuple[Recommender, dict[str, Any]]:
    """Rebuild a model from a safetensors checkpoint alone (config read from its metadata and
    validated as `build_model` validates settings; weights checked against the file's recorded
    hash); returns (model in eval mode, metadata). A file that cannot be used is a CheckpointError
    naming it (a missing one a FileNotFoundError)."""
    meta = read_metadata(path)
    name = meta.get("model_name")
    if name not in MODELS and name not in ALIASES:
        verify_weights(path)  # a corrupted file is reported as corrupted, not as a bad setting
        raise CheckpointError(f"{path}: unknown model {name!r} in checkpoint metadata; known: {sorted(MODELS)}")
    with warnings.catch_warnings():  # checkpoints written under an old name load silently
        warnings.simplefilter("ignore", DeprecationWarning)
        cls = model_class(name)
    try:
        config = from_dict(cls.config_class, meta["model_config"], "model_config")
        model = cls(config)
    except (ValueError, TypeError, KeyError) as e:
        if isinstance(e, CheckpointError):
            raise
        verify_weights(path)  # as above
        raise CheckpointError(f"{path}: the {name!r} model config in its metadata is not valid for this crbr "
                              f"version: {e}") from e
    load_weights(path, model)
    model.eval()
    return model, meta


load_model_from_checkpoint = load_model  # the name before crbr.models.load_model
