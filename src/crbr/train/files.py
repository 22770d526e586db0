"""`RunFiles`: what a training run writes to its directory, shared by the training loop and the
federated server. Only the process that writes (rank 0) enables it; elsewhere every method does
nothing.

  config.yaml               the full experiment config
  metrics.csv               one row per epoch (or round), the union of every row's columns
  tb/                       TensorBoard scalars of each row (optional)
  diagnostics.jsonl         the model's diagnostics at each validation, one JSON object a line
  checkpoints/best.safetensors, last.safetensors   weights + configs in their metadata
  checkpoints/last.pt       the resumable state (crbr.train.state.TrainState)
  results.json              the final record of the run

Every file but diagnostics.jsonl (appended) is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write_text, save_weights


class RunFiles:
    """The files of `run_dir`; `enabled=False` (ranks other than 0): nothing is written."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._tb = None

    def start(self, config_text: str, fresh: bool, tensorboard: bool = True) -> None:
        """Write config.yaml and open TensorBoard. fresh (not a resumed run): first remove what a
        previous run in this directory left that this one would mix with its own (its diagnostics,
        its best weights, its metrics)."""
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            for stale in (self.run_dir / "metrics.csv", self.run_dir / "diagnostics.jsonl", self.ckpt_dir / "best.safetensors"):
                stale.unlink(missing_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", config_text)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def log_row(self, history: list[dict[str, Any]], row: dict[str, Any]) -> None:
        """`row` (the newest of `history`) to TensorBoard at step row["epoch"]; metrics.csv rewritten."""
        if not self.enabled:
            return
        if self._tb is not None:
            for k, v in row.items():
                if k != "epoch":
                    self._tb.add_scalar(k, v, row["epoch"])
            self._tb.flush()
        _write_csv(self.run_dir / "metrics.csv", history)

    def append_diagnostics(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.run_dir / "diagnostics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=float) + "\n")

    def save_weights(self, which: str, model: torch.nn.Module, experiment: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> None:
        """checkpoints/<which>.safetensors ("best" or "last"), under the model's registry name."""
        if self.enabled:
            save_weights(self.ckpt_dir / f"{which}.safetensors", model, model.model_name, experiment, extra)

    @property
    def best_weights(self) -> Path:
        return self.ckpt_dir / "best.safetensors"

    def write_results(self, results: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=1, default=float))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
