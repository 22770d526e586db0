"""The ServerApp side: FedAvg (with the partial-aggregation warm-up) driven by Flower's
`Strategy.start`, server-side validation of the global model every `eval_every` rounds, the best
round's weights tested at the end. Validation, diagnostics and the run's files are the training
loop's (crbr.train.loop.validate_on_split, crbr.train.files.RunFiles).

Per run directory (the layout of `crbr train`, one row per round; `epoch` = round so that
`crbr report` plots it):
  config.yaml          experiment + federated config
  metrics.csv          round, aggregated client train loss, validation metrics, diag_* (the global
                       model's diagnostics), client_* (the clients' model diagnostics that need no
                       targets, mean over the round's clients), grad_* (their after_backward numbers)
  diagnostics.jsonl    model diagnostics per validated round
  checkpoints/best.safetensors, last.safetensors
  results.json         test metrics of the best round, protocol, timings, best_round_stats (the
                       best weights' diagnostics that need no targets)
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from ..data.dataset import SequenceDataset, Split
from ..eval.evaluator import EvalResult
from ..eval.setup import SplitEvaluation, numeric
from ..train.checkpoint import load_weights
from ..train.files import RunFiles
from ..train.loop import code_version, peak_rss_mb, validate_on_split
from .config import FederatedConfig
from .params import group_keys, load_record, to_record
from .strategy import PartialFedAvg

log = logging.getLogger("crbr.federated")


@dataclass
class FederatedResult:
    best_round: int
    valid: EvalResult | None
    test: EvalResult | None
    rounds_run: int
    train_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    final_stats: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


class ServerRecorder:
    """Evaluates the global model after each round (Strategy.start's evaluate_fn) and logs, with
    the training loop's validation (crbr.train.loop.validate_on_split) and run files."""

    def __init__(self, cfg, fed: FederatedConfig, ds: SequenceDataset, split: Split, model: torch.nn.Module,
                 strategy: "_RecordingFedAvg", run_dir: Path):
        self.cfg, self.fed, self.ds, self.split, self.model = cfg, fed, ds, split, model
        self.strategy, self.run_dir = strategy, run_dir
        self.code_version = code_version()  # the code this run starts with
        self.evaluation = SplitEvaluation(ds, split, cfg.eval, model.max_len)
        self.files = RunFiles(run_dir)
        self.history: list[dict[str, Any]] = []
        self.best, self.best_round = -float("inf"), 0
        self.t0 = time.perf_counter()

    def evaluate_split(self, which: str, export: bool = False) -> EvalResult:
        return self.evaluation.evaluate(self.model, which, export)

    def __call__(self, rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        load_record(self.model, arrays)
        row: dict[str, Any] = {"epoch": rnd, "round": rnd, **self._client_metrics(rnd)}
        row["partial"] = int(rnd > 0 and self.strategy.in_warmup(rnd))
        out = None
        if rnd == 0 or rnd % self.fed.eval_every == 0 or rnd == self.fed.num_rounds:
            metrics, columns = validate_on_split(self.evaluation, self.model, self.files, {"epoch": rnd, "round": rnd})
            row.update(columns)
            self._keep_best(rnd, metrics[self.cfg.train.monitor])
            out = MetricRecord({k: float(v) for k, v in metrics.items()})
            diag = "".join(f", {k[5:]} {v:.3g}" for k, v in columns.items() if k.startswith("diag_"))
            log.info("round %d: valid %s %.4f (best %.4f @ round %d)%s", rnd, self.cfg.train.monitor,
                     metrics[self.cfg.train.monitor], self.best, self.best_round, diag)
        row["elapsed_s"] = time.perf_counter() - self.t0
        self.history.append(row)
        self.files.log_row(self.history, row)
        if rnd > 0:
            self.files.save_weights("last", self.model, self.cfg.to_dict(), {"round": rnd, "federated": self.fed.to_dict()})
        return out

    def _client_metrics(self, rnd: int) -> dict[str, float]:
        """The round's client metrics, aggregated by the strategy (train_loss, train_s, client_*)."""
        tm = self.strategy.last_train_metrics
        if rnd == 0 or tm is None:
            return {}
        return {k: float(v) for k, v in tm.items() if k != "num-examples" and isinstance(v, (int, float))}

    def _keep_best(self, rnd: int, value: float) -> None:
        if rnd > 0 and value > self.best:
            self.best, self.best_round = value, rnd
            self.files.save_weights("best", self.model, self.cfg.to_dict(),
                                    {"round": rnd, self.cfg.train.monitor: value, "federated": self.fed.to_dict()})

    def finish(self) -> FederatedResult:
        if self.files.best_weights.exists():
            load_weights(self.files.best_weights, self.model)
        valid = self.evaluate_split("valid")
        test = self.evaluate_split("test", export=bool(self.cfg.eval.export_topk))
        if self.cfg.eval.export_topk:
            from ..eval.export import export_topk

            export_topk(test, self.ds, self.cfg.eval.export_topk)
        # the model's numbers that need no validation targets (e.g. a mixture's gate and router usage)
        final_stats = numeric(self.evaluation.diagnostics(self.model, with_targets=False))
        train_s = time.perf_counter() - self.t0
        res = {
            "name": self.cfg.name, "model": self.cfg.model_name, "dataset": self.ds.info.get("name"),
            "split": self.split.describe(), "protocol": test.protocol, "test": test.metrics,
            "test_bucket_hr10": test.bucket_hr10, "valid": valid.metrics, "best_round": self.best_round,
            "rounds_run": len(self.history) - 1, "train_seconds": train_s, "peak_rss_mb": peak_rss_mb(),
            "best_round_stats": final_stats, "federated": self.fed.to_dict(), "seed": self.cfg.train.seed,
            "n_params": sum(p.numel() for p in self.model.parameters()), "code_version": self.code_version,
            "config": self.cfg.to_dict(),
        }
        self.files.write_results(res)
        return FederatedResult(self.best_round, valid, test, len(self.history) - 1, train_s, self.history,
                               final_stats, res)


def server_main(grid: Grid, cfg, fed: FederatedConfig, ds: SequenceDataset, split: Split,
                model: torch.nn.Module, run_dir: Path) -> FederatedResult:
    """Run FedAvg for fed.num_rounds rounds on `grid`; returns the tested best round."""
    from ..config import dump_config

    seed = cfg.train.seed if fed.seed is None else fed.seed
    random.seed(seed)  # Flower samples clients with the `random` module
    k, n = fed.sampled_per_round, fed.num_clients
    shared = group_keys(model, fed.warmup_groups) if fed.warmup_rounds > 0 else []
    strategy = _RecordingFedAvg(warmup_rounds=fed.warmup_rounds, shared_keys=shared, fraction_train=k / n,
                                min_train_nodes=k, min_available_nodes=n, fraction_evaluate=0.0)
    rec = ServerRecorder(cfg, fed, ds, split, model, strategy, run_dir)
    rec.files.start(dump_config(cfg) + "\n" + _yaml({"federated": fed.to_dict()}), fresh=True, tensorboard=False)
    strategy.start(grid=grid, initial_arrays=to_record(model), num_rounds=fed.num_rounds, evaluate_fn=rec)
    return rec.finish()


class _RecordingFedAvg(PartialFedAvg):
    """PartialFedAvg that keeps the last round's aggregated client metrics for the recorder."""

    last_train_metrics: MetricRecord | None = None

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        failed = [m for m in replies if m.has_error()]
        if replies and len(failed) == len(replies):  # nothing to aggregate: stop instead of idling
            raise RuntimeError(f"round {server_round}: all {len(replies)} clients failed; first error: "
                               f"{failed[0].error.reason}")
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.last_train_metrics = metrics
        return arrays, metrics


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)
