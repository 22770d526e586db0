"""Checkpoints: safetensors weights with the full config in their metadata, plus a resumable
training state; every file is written atomically (temporary file in the same folder, then
os.replace), so an interrupted run never leaves a half-written checkpoint behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return _atomic(Path(path), w)


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


def embedded_config(path: str | Path, model_name: str) -> dict | None:
    """The model config stored in a checkpoint of `model_name` (None when the file does not
    exist yet); models that build on another model's checkpoint copy it into their own config
    so their checkpoints are self-contained."""
    if not path or not Path(path).exists():
        return None
    meta = read_metadata(path)
    if meta.get("model_name") != model_name:
        raise ValueError(f"{path}: expected a {model_name!r} checkpoint, found model {meta.get('model_name')!r}")
    return dict(meta["model_config"])


def load_model_from_checkpoint(path: str | Path):
    """Rebuild a model from a safetensors checkpoint alone (config read from its metadata)."""
    from ..models import MODELS

    meta = read_metadata(path)
    name = meta.get("model_name")
    if name not in MODELS:
        raise ValueError(f"{path}: unknown model {name!r} in checkpoint metadata")
    model_cls, cfg_cls = MODELS[name]
    model = model_cls(cfg_cls(**meta["model_config"]))
    load_weights(path, model)
    model.eval()
    return model, meta


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Resumable training state (model + optimizer state dicts, counters, RNG states)."""
    return _atomic(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _asdict(cfg: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
