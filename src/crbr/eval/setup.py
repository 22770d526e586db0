"""Evaluation of a model on a split, as the training loop and the federated server run it: the
evaluators of the split's validation and test parts (one set of training counts), and a model's
`diagnostics` on a fixed sample of validation users.

    ev = SplitEvaluation(ds, split, config.eval, model.max_len)
    ev.evaluate(model, "valid")          # EvalResult, through the form the model declares
    ev.diagnostics(model)                # model.diagnostics(...) on the fixed sample, or None
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch

from ..data.batching import history_batch
from ..data.dataset import SequenceDataset, Split, train_item_counts
from .evaluator import EvalResult, Evaluator


def build_evaluator(ds: SequenceDataset, split: Split, which: str, eval_config, max_len: int,
                    train_counts: np.ndarray | None = None) -> Evaluator:
    """The evaluator of a split's "valid" or "test" part, set up from an EvalConfig."""
    ec = eval_config
    counts = train_item_counts(ds, split) if train_counts is None else train_counts
    return Evaluator(ds, split.valid if which == "valid" else split.test, counts, ks=tuple(ec.ks),
                     mask_history=ec.mask_history, max_len=max_len, batch_size=ec.batch_size,
                     export_k=ec.export_k, split_name=split.name)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` in eval mode without gradients; its train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def run_diagnostics(model, batch: dict[str, torch.Tensor], item_bucket: np.ndarray | None = None,
                    targets: torch.Tensor | None = None, device: torch.device | None = None) -> dict[str, Any] | None:
    """`model.diagnostics` on `batch` (moved to `device`, default the model's), in eval mode."""
    dev = device if device is not None else next(model.parameters()).device
    with eval_mode(model):
        return model.diagnostics({k: v.to(dev) for k, v in batch.items()}, item_bucket=item_bucket,
                                 targets=None if targets is None else targets.to(dev))


def numeric(values: dict[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """The plain numbers among `values` (what fits a metrics.csv column), keys prefixed."""
    return {f"{prefix}{k}": v for k, v in (values or {}).items() if isinstance(v, (int, float))}


class SplitEvaluation:
    """The validation and test evaluators of a split and the diagnostics sample.

    n_diag_users: validation users (a fixed seeded sample) whose histories and first targets
                  `diagnostics` passes to the model
    """

    def __init__(self, ds: SequenceDataset, split: Split, eval_config, max_len: int, n_diag_users: int = 512):
        self.ds, self.split, self.max_len, self.n_diag_users = ds, split, int(max_len), n_diag_users
        counts = train_item_counts(ds, split)
        self.valid = build_evaluator(ds, split, "valid", eval_config, self.max_len, counts)
        self.test = build_evaluator(ds, split, "test", eval_config, self.max_len, counts)
        self._sample: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None

    def evaluate(self, model, which: str = "valid", export: bool = False,
                 device: torch.device | None = None) -> EvalResult:
        """Metrics of `model` on the "valid" or "test" part (scores in fp32; eval mode, no grad)."""
        ev = self.valid if which == "valid" else self.test
        with eval_mode(model):
            return ev.evaluate_model(model, export=export, device=device)

    def diagnostics_sample(self) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """(histories, first targets) of the fixed validation sample; None without validation users."""
        ev = self.split.valid
        if len(ev) == 0:
            return None
        if self._sample is None:
            idx = np.sort(np.random.default_rng(0).choice(len(ev), min(self.n_diag_users, len(ev)), replace=False))
            batch = history_batch(self.ds, ev.users[idx], ev.hist_len[idx], self.max_len)
            first = ev.target_items[ev.target_offsets[idx]]  # each user's first target
            self._sample = (batch, torch.as_tensor(first, dtype=torch.long))
        return self._sample

    def diagnostics(self, model, device: torch.device | None = None, with_targets: bool = True) -> dict[str, Any] | None:
        """`model.diagnostics` on the sample (popularity buckets of the validation evaluator);
        with_targets=False: without the targets (the numbers that need no next items)."""
        sample = self.diagnostics_sample()
        if sample is None:
            return None
        batch, targets = sample
        return run_diagnostics(model, batch, self.valid.bucket_of, targets if with_targets else None, device)
