"""Models. Each model is one file; `build_model` derives dataset-dependent sizes in one place."""

from __future__ import annotations

import dataclasses

from ..data.dataset import SequenceDataset
from .base import LossOutput, Recommender
from .sasrec import SASRec, SASRecConfig

# name -> (model class, config class); used to rebuild a model from a checkpoint's config
MODELS: dict[str, tuple[type[Recommender], type]] = {
    "sasrec": (SASRec, SASRecConfig),
}


def model_config(name: str, params: dict | None, ds: SequenceDataset | None = None):
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
    from ..config import from_dict  # checks and coerces types (YAML reads "1e-12" as a string)

    return from_dict(cls, params, f"model ({name})")


def build_model(name: str, params: dict | None, ds: SequenceDataset | None = None) -> Recommender:
    return MODELS[name][0](model_config(name, params, ds))


__all__ = ["LossOutput", "Recommender", "SASRec", "SASRecConfig", "MODELS", "build_model", "model_config"]
