"""The ServerApp side: FedAvg (with the partial-aggregation warm-up) driven by Flower's
`Strategy.start`, server-side validation of the global model every `eval_every` rounds, the best
round's weights tested at the end.

Per run directory (the layout of `crbr train`, one row per round; `epoch` = round so that
`crbr report` plots it):
  config.yaml          experiment + federated config
  metrics.csv          round, aggregated client train loss, validation metrics, diag_* (gate,
                       router usage of the global model), client_* (mean over the round's clients)
  diagnostics.jsonl    model diagnostics per validated round
  checkpoints/best.safetensors, last.safetensors
  results.json         test metrics of the best round, protocol, timings
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from ..data.batching import history_batch
from ..data.dataset import SequenceDataset, Split, train_item_counts
from ..eval.evaluator import EvalResult
from ..train.checkpoint import atomic_write_text, load_weights, save_weights
from ..train.loop import _append_jsonl, _write_csv, build_evaluator, code_version, peak_rss_mb
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
    """Evaluates the global model after each round (Strategy.start's evaluate_fn) and logs."""

    def __init__(self, cfg, fed: FederatedConfig, ds: SequenceDataset, split: Split, model: torch.nn.Module,
                 strategy: PartialFedAvg, run_dir: Path):
        self.cfg, self.fed, self.ds, self.split, self.model = cfg, fed, ds, split, model
        self.strategy, self.run_dir = strategy, run_dir
        self.code_version = code_version()  # the code this run starts with
        self.max_len = int(getattr(model.config, "max_len", 200))
        counts = train_item_counts(ds, split)
        self.valid_eval = build_evaluator(ds, split, "valid", cfg.eval, self.max_len, counts)
        self.test_eval = build_evaluator(ds, split, "test", cfg.eval, self.max_len, counts)
        self.history: list[dict[str, Any]] = []
        self.best, self.best_round = -float("inf"), 0
        self.t0 = time.perf_counter()
        self._diag_inputs = None

    def _score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.score(batch).float()

    def evaluate_split(self, which: str, export: bool = False) -> EvalResult:
        self.model.eval()
        ev = self.valid_eval if which == "valid" else self.test_eval
        with torch.no_grad():
            return ev.evaluate(self._score, export=export)

    def _diagnostics(self, n_users: int = 512) -> dict[str, Any] | None:
        fn = getattr(self.model, "diagnostics", None)
        ev = self.split.valid
        if fn is None or len(ev) == 0:
            return None
        if self._diag_inputs is None:
            idx = np.sort(np.random.default_rng(0).choice(len(ev), min(n_users, len(ev)), replace=False))
            batch = history_batch(self.ds, ev.users[idx], ev.hist_len[idx], self.max_len)
            self._diag_inputs = (batch, torch.as_tensor(ev.target_items[ev.target_offsets[idx]], dtype=torch.long))
        batch, targets = self._diag_inputs
        self.model.eval()
        with torch.no_grad():
            return fn(batch, item_bucket=self.valid_eval.bucket_of, targets=targets)

    def __call__(self, rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        load_record(self.model, arrays)
        fed, monitor = self.fed, self.cfg.train.monitor
        row: dict[str, Any] = {"epoch": rnd, "round": rnd}
        tm = getattr(self.strategy, "last_train_metrics", None)
        if rnd > 0 and tm is not None:
            row.update({("train_loss" if k == "train_loss" else k): float(v) for k, v in tm.items()
                        if k != "num-examples" and isinstance(v, (int, float))})
        row["partial"] = int(rnd > 0 and self.strategy.in_warmup(rnd))
        out = None
        if rnd == 0 or rnd % fed.eval_every == 0 or rnd == fed.num_rounds:
            t1 = time.perf_counter()
            res = self.evaluate_split("valid")
            row["eval_s"] = time.perf_counter() - t1
            row.update({f"valid_{k}": v for k, v in res.metrics.items()})
            diag = self._diagnostics()
            if diag is not None:
                _append_jsonl(self.run_dir / "diagnostics.jsonl", {"epoch": rnd, "round": rnd, **diag})
                row.update({f"diag_{k}": v for k, v in diag.items() if isinstance(v, (int, float))})
            cur = res.metrics[monitor]
            exp = self._experiment_dict()
            if rnd > 0 and cur > self.best:
                self.best, self.best_round = cur, rnd
                save_weights(self.run_dir / "checkpoints" / "best.safetensors", self.model, self.cfg.model_name, exp,
                             {"round": rnd, monitor: cur, "federated": self.fed.to_dict()})
            out = MetricRecord({k: float(v) for k, v in res.metrics.items()})
            log.info("round %d: valid %s %.4f (best %.4f @ round %d)%s", rnd, monitor, cur, self.best, self.best_round,
                     "".join(f", {k} {row[k]:.3f}" for k in ("diag_gate", "diag_w_vis", "diag_w_sem") if k in row))
        row["elapsed_s"] = time.perf_counter() - self.t0
        self.history.append(row)
        _write_csv(self.run_dir / "metrics.csv", self.history)
        if rnd > 0:
            save_weights(self.run_dir / "checkpoints" / "last.safetensors", self.model, self.cfg.model_name,
                         self._experiment_dict(), {"round": rnd, "federated": self.fed.to_dict()})
        return out

    def _experiment_dict(self) -> dict[str, Any]:
        """The experiment config as `crbr train` stores it (so `crbr evaluate` reads the checkpoint);
        the federated settings go into their own metadata key."""
        return self.cfg.to_dict()

    def finish(self) -> FederatedResult:
        best = self.run_dir / "checkpoints" / "best.safetensors"
        if best.exists():
            load_weights(best, self.model)
        valid = self.evaluate_split("valid")
        test = self.evaluate_split("test", export=bool(self.cfg.eval.export_topk))
        if self.cfg.eval.export_topk:
            from ..eval.export import export_topk

            export_topk(test, self.ds, self.cfg.eval.export_topk)
        stats = getattr(self.model, "mixture_stats", None)
        final_stats = stats() if stats is not None else {}
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
        atomic_write_text(self.run_dir / "results.json", json.dumps(res, indent=1, default=float))
        return FederatedResult(self.best_round, valid, test, len(self.history) - 1, train_s, self.history,
                               final_stats, res)


def server_main(grid: Grid, cfg, fed: FederatedConfig, ds: SequenceDataset, split: Split,
                model: torch.nn.Module, run_dir: Path) -> FederatedResult:
    """Run FedAvg for fed.num_rounds rounds on `grid`; returns the tested best round."""
    from ..config import dump_config

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg) + "\n" + _yaml({"federated": fed.to_dict()}))
    for f in ("metrics.csv", "diagnostics.jsonl"):
        (run_dir / f).unlink(missing_ok=True)
    seed = cfg.train.seed if fed.seed is None else fed.seed
    random.seed(seed)  # Flower samples clients with the `random` module
    k, n = fed.sampled_per_round, fed.num_clients
    shared = group_keys(model, fed.warmup_groups) if fed.warmup_rounds > 0 else []
    strategy = _RecordingFedAvg(warmup_rounds=fed.warmup_rounds, shared_keys=shared, fraction_train=k / n,
                                min_train_nodes=k, min_available_nodes=n, fraction_evaluate=0.0)
    rec = ServerRecorder(cfg, fed, ds, split, model, strategy, run_dir)
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
