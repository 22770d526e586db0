"""`TrainState`: everything a run carries from one epoch to the next, saved to and restored from
checkpoints/last.pt.

last.pt is a dict (crbr.checkpoint.save_state) with the keys

  model, optimizer, ema (train.ema_decay > 0)   state dicts
  epoch, best, best_epoch, bad, bad_lr          counters of the last finished epoch
  history (JSON text), elapsed                  metrics.csv rows so far, wall-clock seconds
  torch_rng, cuda_rng (CUDA), numpy_rng         random number generator states
  step                                          backward passes so far (model.after_backward's step)
  resumes (JSON text)                           each resume: epoch and the settings it changed
  experiment (JSON text), model_name, model_config (JSON text)   what was trained (the resume check)

A last.pt written before `step`, `resumes` and the run record existed loads too (step 0, no
resumes; the run record is then read from last.safetensors, see crbr.train.resume).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from ..checkpoint import load_state, save_state

REQUIRED_KEYS = ("model", "optimizer", "epoch", "best", "best_epoch", "bad", "history", "elapsed", "torch_rng",
                 "numpy_rng")


@dataclass
class TrainState:
    """The optimizer, the moving average of the weights (or None), the early-stopping counters,
    the history and the timings of a run. `epoch` is the last finished epoch (0 before the first)."""

    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None = None
    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    best_epoch: int = 0
    bad: int = 0  # validations without improvement (early stopping)
    bad_lr: int = 0  # the same, reset when the learning rate decays
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    resumes: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ early stopping
    def observe(self, value: float, epoch: int, maximize: bool = True) -> bool:
        """Count a validation of the monitored value; True when it is the best so far."""
        if (value > self.best) if maximize else (value < self.best):
            self.best, self.best_epoch, self.bad, self.bad_lr = value, epoch, 0, 0
            return True
        self.bad, self.bad_lr = self.bad + 1, self.bad_lr + 1
        return False

    def decay_lr_on_plateau(self, factor: float, patience: int, lr_min: float) -> bool:
        """Multiply every group's rate by `factor` (not below lr_min x its lr_scale) after
        `patience` validations without improvement; True when it did."""
        if factor >= 1.0 or self.bad_lr < patience:
            return False
        for g in self.optimizer.param_groups:
            g["lr"] = max(g["lr"] * factor, lr_min * g.get("lr_scale", 1.0))
        self.bad_lr = 0
        return True

    @property
    def lr(self) -> float:
        """The run's learning rate (the first group's, without its lr_scale)."""
        g = self.optimizer.param_groups[0]
        return g["lr"] / g.get("lr_scale", 1.0)

    def set_lr(self, lr: float) -> None:
        """Set the run's learning rate: every group to lr x its lr_scale."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    # ------------------------------------------------------------------ last.pt
    def to_checkpoint(self, model: torch.nn.Module, device: torch.device, record: dict[str, Any]) -> dict[str, Any]:
        """The last.pt dict: this state, `model`'s weights, the RNG states now, and `record` (the
        run record: experiment, model_name, model_config)."""
        return {
            "model": model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            "best": self.best, "best_epoch": self.best_epoch, "bad": self.bad, "bad_lr": self.bad_lr,
            "history": json.dumps(self.history), "elapsed": self.elapsed, "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            "numpy_rng": _np_state_to(np.random.get_state()),
            "step": self.step, "resumes": json.dumps(self.resumes), **record,
        }

    def save(self, path: Path, model: torch.nn.Module, device: torch.device, record: dict[str, Any]) -> None:
        save_state(path, self.to_checkpoint(model, device, record))

    @staticmethod
    def read(path: Path) -> dict[str, Any]:
        """The last.pt dict; errors (crbr.checkpoint.CheckpointError, a ValueError) name the file."""
        ckpt = load_state(path)
        missing = [k for k in REQUIRED_KEYS if k not in ckpt]
        if missing:
            raise ValueError(f"{path}: not a crbr training state (no {', '.join(missing)})")
        return ckpt

    def restore(self, ckpt: dict[str, Any], model: torch.nn.Module, device: torch.device, path: Path) -> None:
        """Load a last.pt dict into the model, the optimizer, the moving average, the counters and
        the random number generators (so the run continues as if it had not stopped)."""
        _load(path, "model", lambda: model.load_state_dict(ckpt["model"]))
        _load(path, "optimizer", lambda: self.optimizer.load_state_dict(ckpt["optimizer"]))
        if self.ema is not None:
            if "ema" not in ckpt:
                raise ValueError(f"{path}: written without train.ema_decay; resume with train.ema_decay=0")
            _load(path, "moving average", lambda: self.ema.load_state_dict(ckpt["ema"]))
        self.epoch, self.best, self.best_epoch, self.bad = int(ckpt["epoch"]), ckpt["best"], ckpt["best_epoch"], ckpt["bad"]
        self.bad_lr = int(ckpt.get("bad_lr", self.bad))
        self.history, self.elapsed = json.loads(ckpt["history"]), ckpt["elapsed"]
        self.step = int(ckpt.get("step", 0))
        self.resumes = json.loads(ckpt.get("resumes", "[]"))
        torch.set_rng_state(ckpt["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in ckpt:  # dropout, sampled negatives and noise on the GPU
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        np.random.set_state(_np_state_from(ckpt["numpy_rng"]))


def _load(path: Path, what: str, load) -> None:
    """Run a load_state_dict; a mismatch is a ValueError naming the file (the cause chained)."""
    try:
        load()
    except (RuntimeError, ValueError, KeyError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        detail = "; ".join(lines[:3]) + ("; ..." if len(lines) > 3 else "")
        raise ValueError(f"{path}: the saved {what} state does not fit this run ({detail[:500]})") from e


def _np_state_to(st: tuple) -> dict[str, Any]:
    return {"name": st[0], "keys": torch.from_numpy(st[1].astype(np.int64)), "pos": st[2], "has_gauss": st[3], "gauss": st[4]}


def _np_state_from(d: dict[str, Any]) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"])
