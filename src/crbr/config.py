"""Experiment configuration: nested dataclasses, loaded from YAML with command-line overrides.

    cfg = load_config("configs/sasrec_ml1m.yaml", ["train.lr=5e-4", "model.hidden=128"])

Overrides are `dotted.path=value` with the value parsed as YAML (so `true`, `1e-3`, `[5, 10]`
work). Unknown keys are errors that name the key and list the known ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.prepare import DataConfig
from .settings import apply_overrides, from_dict, json_default  # noqa: F401  (the config API)


@dataclass
class SplitConfig:
    """How events are split: 'leave_one_out' (last = test, second-to-last = validation),
    'leave_k_out' (last k = test targets, the k before = validation targets) or 'temporal'."""

    name: str = "leave_one_out"
    k: int = 5  # leave_k_out only
    valid_frac: float = 0.1  # temporal only
    test_frac: float = 0.1  # temporal only

    def kwargs(self) -> dict:
        """The keyword arguments of crbr.data.dataset.make_split for this split."""
        if self.name == "temporal":
            return {"valid_frac": self.valid_frac, "test_frac": self.test_frac}
        if self.name == "leave_k_out":
            return {"k": self.k}
        return {}


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128  # training windows per step (per process under DDP)
    windows: str = "last"  # "last": each user's newest max_len events; "all": every event is a target once per epoch
    window_stride: int = 0  # windows=all: events between window ends (0 = max_len); each window's newest stride events are its targets
    length_bucketing: bool = False  # batch windows of similar length together (less padding; same data per epoch)
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta2: float = 0.98
    grad_clip: float = 0.0  # max grad norm; 0 = off
    ema_decay: float = 0.0  # validate, keep and test an exponential moving average of the weights (per-step decay, e.g. 0.99); 0 = off
    patience: int = 10  # early stopping: validations without improvement of `monitor`
    lr_decay: float = 1.0  # multiply the learning rate by this after lr_patience validations without improvement (1 = off)
    lr_patience: int = 5
    lr_min: float = 1e-5  # the decay stops here
    monitor: str = "NDCG@10"  # validation metric that selects the best checkpoint
    eval_every: int = 1  # epochs between validations
    seed: int = 42
    bf16: bool = False  # bf16 autocast (CPU with AVX-512 bf16, or CUDA)
    threads: int = 0  # torch intra-op threads; 0 = torch default
    max_minutes: float = 0.0  # wall-clock cap on training; 0 = none
    progress: bool = True  # tqdm progress bar
    device: str = "auto"  # "auto" | "cpu" | "cuda"

    def __post_init__(self) -> None:
        if self.windows not in ("last", "all"):
            raise ValueError(f"train.windows: expected 'last' or 'all', got {self.windows!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 < self.lr_decay <= 1.0 or self.lr_patience < 1:
            raise ValueError(f"train.lr_decay must be in (0, 1] and train.lr_patience >= 1, got {self.lr_decay}, {self.lr_patience}")


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    mask_history: bool = False  # score -inf for items already in the user's visible history
    batch_size: int = 256
    export_topk: str | None = None  # write the test top-K lists (original ids) to this .parquet/.csv
    export_k: int = 100


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "sasrec"})  # name + model settings
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out_dir: str = "runs/{name}"

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def model_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir.format(name=self.name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    d: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            d = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
    apply_overrides(d, list(overrides or []))
    model = d.get("model", {"name": "sasrec"})
    if not isinstance(model, dict) or "name" not in model:
        raise ValueError(f"{path or 'config'}: model must be a mapping with a 'name' (e.g. model: {{name: sasrec}})")
    cfg = from_dict(ExperimentConfig, d)
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
