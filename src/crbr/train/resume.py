"""What a resumed run may change (`crbr train --resume`, `Trainer.fit(resume=True)`).

A resumed run continues the run saved in checkpoints/last.pt. Before anything is loaded, the
settings of the new run are compared with the ones the checkpoint was written with: its run
record (the experiment config, the model's registry name and the model's full config, kept in
last.pt; for a last.pt written before the record was kept, the metadata of last.safetensors).

- Settings listed in RESUMABLE may differ. Each takes effect from the first resumed epoch: the
  loop reads them afresh, and train.lr is set on the optimizer (whose saved state would otherwise
  keep the checkpoint's rate). Each change is logged and recorded in results.json "resumes"
  (and in last.pt) with the epoch it took effect after.
- Any other difference (the model and its size, the data, the split, the seed, the batches, the
  optimizer's other settings, the moving average, the monitored metric, the evaluation protocol)
  is a ResumeConflict (a ValueError) naming every such setting with both values.
- A setting that only one side has (added to or removed from crbr since the checkpoint) is not
  compared.

So config.yaml and results.json, which hold the new run's settings, say what the resumed epochs
used; the epochs before the resume used the checkpoint's settings (see "resumes" and metrics.csv).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ..checkpoint import read_metadata
from ..models.registry import ALIASES

log = logging.getLogger("crbr.train")

# settings a resumed run may change -> what they are
RESUMABLE: dict[str, str] = {
    "name": "the run's label",
    "out_dir": "where the run's files are",
    "data.root": "where the data files are", "data.cache_dir": "where the data cache is",
    "data.use_cache": "whether the data cache is used",
    "train.epochs": "when to stop", "train.patience": "when to stop", "train.max_minutes": "when to stop",
    "train.eval_every": "when to validate",
    "train.lr": "the learning rate (set on the optimizer)", "train.lr_decay": "the plateau decay",
    "train.lr_patience": "the plateau decay", "train.lr_min": "the plateau decay",
    "train.grad_clip": "gradient clipping", "train.bf16": "bf16 autocast", "train.device": "the device",
    "train.threads": "torch threads", "train.progress": "the progress bar",
    "eval.batch_size": "users per scoring call", "eval.export_topk": "the test top-K export",
    "eval.export_k": "the test top-K export",
}

_ABSENT = object()


class ResumeConflict(ValueError):
    """A resumed run whose settings differ from its checkpoint's where they may not."""


def run_record(config, model) -> dict[str, Any]:
    """What last.pt records about the run (JSON text, so the state stays plain data)."""
    return {"experiment": json.dumps(config.to_dict(), default=str), "model_name": model.model_name,
            "model_config": json.dumps(_asdict(model.config), default=str)}


def stored_record(ckpt: dict[str, Any], ckpt_dir: Path) -> dict[str, Any] | None:
    """The run record of a checkpoint ({experiment, model_name, model_config} as dicts): from
    last.pt, else from last.safetensors; None when neither has one."""
    if "experiment" in ckpt and "model_config" in ckpt:
        return {"experiment": json.loads(ckpt["experiment"]), "model_name": ckpt.get("model_name"),
                "model_config": json.loads(ckpt["model_config"])}
    weights = ckpt_dir / "last.safetensors"
    if not weights.exists():
        return None
    meta = read_metadata(weights)
    return {"experiment": meta.get("experiment", {}), "model_name": meta.get("model_name"),
            "model_config": meta.get("model_config", {})}


def settings(config, model) -> dict[str, Any]:
    """Every setting of a run, by dotted name: the experiment's sections (dataclass fields; a
    mapping or list is one setting), `model.name` (the registry name) and `model.<field>` for
    every field of the model's config."""
    out: dict[str, Any] = {}
    if dataclasses.is_dataclass(config):
        _walk(config, "", out)
    else:  # any config with to_dict()
        _walk(config.to_dict(), "", out, into_dicts=True)
    out = {k: v for k, v in out.items() if k != "model" and not k.startswith("model.")}
    out["model.name"] = model.model_name
    _walk(model.config, "model.", out)
    return out


def changed_settings(stored: dict[str, Any], config, model) -> dict[str, tuple[Any, Any]]:
    """setting -> (checkpoint's value, new value) for every setting that differs."""
    out = {}
    for key, new in settings(config, model).items():
        old = _stored_value(stored, key)
        if old is not _ABSENT and old != new:
            out[key] = (old, new)
    return out


def check_resume(stored: dict[str, Any] | None, config, model, path: Path) -> dict[str, tuple[Any, Any]]:
    """The changed settings a resumed run may make (setting -> (old, new)); a ResumeConflict
    naming every other changed setting. Without a stored record nothing can be checked: a
    warning, and no change is reported."""
    if stored is None:
        log.warning("%s: no record of the settings it was written with; resuming unchecked", path)
        return {}
    changes = changed_settings(stored, config, model)
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE}
    if refused:
        lines = "\n".join(f"  {k}: {_show(old)} in the checkpoint, {_show(new)} now" for k, (old, new) in refused.items())
        raise ResumeConflict(
            f"cannot resume from {path}: these settings differ from the checkpoint's and cannot change on resume "
            f"(set them back, or start a new run in another out_dir):\n{lines}\n"
            f"settings a resumed run may change: {', '.join(RESUMABLE)}")
    return changes


def _walk(obj: Any, prefix: str, out: dict[str, Any], into_dicts: bool = False) -> None:
    """Settings by dotted name: dataclass fields (and, with into_dicts, mapping entries) are
    walked into; anything else is one setting."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _walk(getattr(obj, f.name), f"{prefix}{f.name}.", out)
    elif into_dicts and isinstance(obj, dict):
        for k, v in obj.items():
            _walk(v, f"{prefix}{k}.", out, into_dicts)
    else:
        out[prefix[:-1]] = _plain(obj)


def _stored_value(stored: dict[str, Any], key: str) -> Any:
    if key == "model.name":
        name = stored.get("model_name")
        return ALIASES.get(name, name) if name is not None else _ABSENT
    cur: Any = stored["model_config"] if key.startswith("model.") else stored["experiment"]
    for part in (key.split(".", 1)[1] if key.startswith("model.") else key).split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _ABSENT
        cur = cur[part]
    return _plain(cur)


def _plain(v: Any) -> Any:
    """The value as JSON would store it (tuples become lists), so stored and new values compare."""
    return json.loads(json.dumps(v, default=str))


def _show(v: Any) -> str:
    return json.dumps(v, default=str)


def _asdict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
