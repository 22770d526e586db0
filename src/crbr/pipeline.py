"""Multi-stage chains as data: each stage is an experiment, and a stage can read an earlier
stage's best checkpoint into one of its model settings.

    # configs/pipelines/crbr_ml1m.yaml
    name: crbr_ml1m
    stages:
      - {name: qformer, config: configs/qformer_ml1m.yaml}
      - {name: set_transformer, config: configs/set_transformer_ml1m.yaml, reads: {tower_checkpoint: qformer}}
      - {name: crbr, config: configs/crbr_ml1m.yaml, reads: {base_checkpoint: set_transformer}}

    crbr pipeline -c configs/pipelines/crbr_ml1m.yaml              # runs/crbr_ml1m/<stage>/
    crbr pipeline -c configs/pipelines/crbr_ml1m.yaml --reuse      # skip stages already finished

Every stage trains exactly as `crbr train` does (same data preparation, model registry and
training loop), into its own run directory under the pipeline's output folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from .config import ExperimentConfig, load_config
from .data.dataset import SequenceDataset, Split
from .data.prepare import prepare_with_split
from .models import Recommender, build_model, load_model
from .settings import apply_overrides, from_dict
from .train.loop import FitResult, Trainer

log = logging.getLogger("crbr.pipeline")

BEST = Path("checkpoints") / "best.safetensors"


@dataclass
class Stage:
    """One experiment of a chain.

    name:       its run folder under the pipeline's output folder
    experiment: the experiment settings (a config file's contents; `config:` in YAML loads one)
    reads:      model setting -> earlier stage whose best checkpoint it names
    label:      how results tables call it (default: name)
    """

    name: str
    experiment: dict[str, Any]
    reads: dict[str, str] = field(default_factory=dict)
    label: str = ""


@dataclass
class StageResult:
    stage: Stage
    model: Recommender
    run_dir: Path
    fit: FitResult | None  # None when a finished run was reused
    results: dict[str, Any]  # its results.json


@dataclass
class Pipeline:
    name: str
    stages: list[Stage]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for st in self.stages:
            if st.name in seen:
                raise ValueError(f"pipeline {self.name!r}: stage name {st.name!r} used twice")
            for setting, src in st.reads.items():
                if src not in seen:
                    raise ValueError(f"pipeline {self.name!r}: stage {st.name!r} reads {setting} from {src!r}, "
                                     f"which is not an earlier stage (earlier: {sorted(seen)})")
            seen.add(st.name)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "Pipeline":
        """A pipeline file; `overrides` are `stage.section.key=value` (e.g. crbr.train.lr=1e-3)."""
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(d, dict) or not isinstance(d.get("stages"), list) or not d["stages"]:
            raise ValueError(f"{path}: expected a mapping with a non-empty list `stages`")
        stages = [_stage_from_dict(s, path, i) for i, s in enumerate(d["stages"])]
        by_name = {s.name: s for s in stages}
        for ov in overrides or []:
            name, _, rest = ov.partition(".")
            if name not in by_name or not rest:
                raise ValueError(f"override {ov!r}: expected STAGE.section.key=value with STAGE one of {sorted(by_name)}")
            apply_overrides(by_name[name].experiment, [rest])
        return cls(name=str(d.get("name") or path.stem), stages=stages)

    def run(self, out: str | Path, data: tuple[SequenceDataset, Split] | None = None, reuse: bool = False,
            on_stage: Callable[[StageResult], None] | None = None,
            on_start: Callable[[Stage], None] | None = None) -> dict[str, StageResult]:
        """Train every stage in order into out/<stage>; `data`: one (dataset, split) for every
        stage instead of preparing each stage's own; `reuse`: keep stages that already finished;
        `on_start` / `on_stage` are called before and after each stage."""
        out = Path(out)
        done: dict[str, StageResult] = {}
        for st in self.stages:
            if on_start is not None:
                on_start(st)
            res = run_stage(st, out, done, data, reuse)
            done[st.name] = res
            if on_stage is not None:
                on_stage(res)
        return done


def _stage_from_dict(s: Any, path: Path, i: int) -> Stage:
    if not isinstance(s, dict) or "name" not in s:
        raise ValueError(f"{path}: stages[{i}] must be a mapping with a name")
    unknown = set(s) - {"name", "config", "experiment", "reads", "label"}
    if unknown:
        raise ValueError(f"{path}: stages[{i}] ({s['name']}): unknown keys {sorted(unknown)}")
    exp = dict(s.get("experiment") or {})
    if s.get("config"):
        exp = {**load_config(s["config"]).to_dict(), **exp}
    return Stage(name=str(s["name"]), experiment=exp, reads=dict(s.get("reads") or {}), label=str(s.get("label", "")))


def stage_config(st: Stage, out: Path) -> ExperimentConfig:
    """The stage's experiment config, its run folder and the checkpoints it reads filled in."""
    d = json.loads(json.dumps(st.experiment))
    d["out_dir"] = str(out / st.name)
    d.setdefault("name", st.name)
    model = d.setdefault("model", {})
    for setting, src in st.reads.items():
        model[setting] = str(out / src / BEST)
    return from_dict(ExperimentConfig, d)


def run_stage(st: Stage, out: Path, done: dict[str, StageResult], data: tuple[SequenceDataset, Split] | None,
              reuse: bool) -> StageResult:
    """Train one stage (or reuse its finished run)."""
    cfg = stage_config(st, out)
    run_dir = cfg.run_dir
    if reuse and (run_dir / "results.json").exists() and (run_dir / BEST).exists():
        log.info("stage %s: reusing %s", st.name, run_dir)
        model, _ = load_model(run_dir / BEST)
        return StageResult(st, model, run_dir, None, json.loads((run_dir / "results.json").read_text()))
    ds, split = data if data is not None else prepare_with_split(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model_name, cfg.model_params, ds, split)
    fit = Trainer(model, ds, split, cfg, max_len=model.max_len, run_dir=run_dir).fit()
    model.eval()
    return StageResult(st, model, run_dir, fit, json.loads((run_dir / "results.json").read_text()))
