"""Checkpoint files: safetensors weights with the full config in their metadata, plus a resumable
training state. This layer reads and writes files only; rebuilding a model from a checkpoint is
`crbr.models.load_model` (it needs the model registry). Every file is written atomically
(temporary file in the same folder, then os.replace), so an interrupted run never leaves a
half-written checkpoint behind."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from .fileio import atomic_file, atomic_write_text  # noqa: F401  (atomic_write_text: re-exported)


def _atomic(path: Path, write) -> Path:
    """Write through `write(temporary path)`, then rename over `path` (crbr.fileio.atomic_file)."""
    with atomic_file(path) as tmp:
        write(str(tmp))
    return path


def save_weights(path: str | Path, model: torch.nn.Module, model_name: str, experiment: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Weights as safetensors; metadata holds the model name, its config and the experiment config."""
    meta = {
        "model_name": model_name,
        "model_config": json.dumps(_asdict(model.config)),
        "experiment": json.dumps(experiment, default=str),
        **{k: json.dumps(v, default=str) for k, v in (extra or {}).items()},
    }
    return _atomic(Path(path), lambda tmp: save_model(model, tmp, metadata=meta))


def read_metadata(path: str | Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    missing, unexpected = load_model(model, str(path), strict=True)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model (missing {missing}, unexpected {unexpected})")


def embedded_config(path: str | Path, model_name: str | tuple[str, ...]) -> dict:
    """The model config stored in a checkpoint of `model_name` (one name or several accepted
    names); models that build on another model's checkpoint copy it into their own config so
    their checkpoints are self-contained."""
    names = (model_name,) if isinstance(model_name, str) else tuple(model_name)
    meta = read_metadata(path)
    if meta.get("model_name") not in names:
        raise ValueError(f"{path}: expected a {names[0]!r} checkpoint, found model {meta.get('model_name')!r}")
    return dict(meta["model_config"])


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Resumable training state (model + optimizer state dicts, counters, RNG states)."""
    return _atomic(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _asdict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
