"""Model parameters <-> Flower ArrayRecords, by parameter group.

Only trainable parameters travel (frozen feature buffers and other buffers never leave a
client). The groups are the model's `parameter_groups()` (crbr.models.base: one group,
"backbone", unless the model declares more, e.g. backbone / experts / router / gate).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord


def parameter_groups(model) -> dict[str, list[str]]:
    """The model's parameter names by group (`model.parameter_groups()`)."""
    return model.parameter_groups()


def group_keys(model: torch.nn.Module, groups: list[str] | tuple[str, ...]) -> list[str]:
    """Parameter names in the given groups (in model order); unknown group names are errors."""
    pg = parameter_groups(model)
    unknown = set(groups) - set(pg)
    if unknown:
        raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; this model has {sorted(pg)}")
    wanted = {n for g in groups for n in pg[g]}
    return [n for n, _ in model.named_parameters() if n in wanted]


def to_record(model: torch.nn.Module, keys: list[str] | None = None) -> ArrayRecord:
    """The named parameters (all, or `keys`) as an ArrayRecord (copied to CPU)."""
    params = dict(model.named_parameters())
    keys = list(params) if keys is None else keys
    return ArrayRecord({k: params[k].detach().cpu().clone() for k in keys})


def load_record(model: torch.nn.Module, record: ArrayRecord, keys: list[str] | None = None) -> None:
    """Copy parameters from `record` into the model (all keys of the record, or only `keys`)."""
    sd = record.to_torch_state_dict()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k in (sd if keys is None else keys):
            if k not in params:
                raise KeyError(f"parameter {k!r} of the record is not in the model")
            params[k].copy_(sd[k].to(params[k].device, params[k].dtype))
