"""Model parameters <-> Flower ArrayRecords, by parameter group.

Only trainable parameters travel (frozen feature buffers and other buffers never leave a
client). A model may define `parameter_groups() -> {group: [parameter names]}` (e.g.
ResidualMixture: backbone / experts / router / gate); any other model is one group, "backbone".
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord


def parameter_groups(model: torch.nn.Module) -> dict[str, list[str]]:
    fn = getattr(model, "parameter_groups", None)
    if fn is not None:
        return fn()
    return {"backbone": [n for n, _ in model.named_parameters()]}


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
