"""The one training loop. It knows no model by name: it needs `model.loss(batch)` (through
`forward`, so DistributedDataParallel can wrap it) and the hooks the model contract declares
(crbr.models.base: lr_scales, after_backward, diagnostics, ddp_find_unused_parameters, max_len).

  TrainLoop   any model with a loss over batches from a data source it is given (a torch
              Dataset, an iterable of batches, or a function of the epoch), validated by an
              optional function of the model (e.g. an item tokenizer trained on item embeddings)
  Trainer     a sequence model on a split: training windows of the split's users, validation and
              test by full ranking (crbr.eval.setup.SplitEvaluation), the model's diagnostics
  train_epoch one pass of an optimizer over batches; the federated clients train with it too

`fit` is: start (seed, data, optimizer, DDP, EMA, resume), then per epoch train, validate,
record, checkpoint and vote on stopping; then test the best weights. Its state is one
`TrainState` (crbr.train.state), saved to checkpoints/last.pt after every epoch; `fit(resume=True)`
continues from it bit for bit, after checking the new settings against the checkpoint's
(crbr.train.resume: which settings may change on resume and how they take effect).

Runs on one process or under `torchrun --nproc_per_node N` (DDP; gloo on CPU, NCCL on GPU):
users are sharded per rank by a DistributedSampler, validation is sharded and all-reduced by
the evaluator, and only rank 0 writes files.

Per run directory (crbr.train.files.RunFiles):
  config.yaml               the full experiment config
  metrics.csv               one row per epoch: loss, timings, validation metrics, diag_* (the model's
                            diagnostics), grad_* (epoch means of what model.after_backward returns)
  tb/                       TensorBoard scalars
  diagnostics.jsonl         the model's diagnostics at each validation
  checkpoints/last.pt       resumable state (model, optimizer, counters, RNG), atomic
  checkpoints/last.safetensors, best.safetensors   weights + config in metadata, atomic
                            (with train.ema_decay > 0: the moving-average weights, which are the
                            ones validated and tested)
  results.json              test metrics of the best checkpoint, protocol, timings, resumes
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler

from ..checkpoint import load_weights
from ..data.batching import LengthBucketBatches, TrainUsers
from ..data.dataset import SequenceDataset, Split
from ..eval.evaluator import EvalResult
from ..eval.setup import SplitEvaluation, build_evaluator, eval_mode, numeric  # noqa: F401  (build_evaluator: re-exported)
from .distributed import DistInfo, init_distributed
from .files import RunFiles
from .resume import check_resume, run_record, stored_record
from .state import TrainState

log = logging.getLogger("crbr.train")

Batch = dict[str, torch.Tensor]


@dataclass
class FitResult:
    best_epoch: int
    best_valid: dict[str, float]
    test: EvalResult | None
    valid: EvalResult | None
    epochs_run: int
    seconds_per_epoch: float
    train_seconds: float
    peak_rss_mb: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)  # epoch and changed settings of each resume


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.cache
def code_version() -> str:
    """`git describe --always --dirty` of the crbr source, taken once per process at the first call.
    Runs call it when they start, so a commit made while one trains is not recorded as its code."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_optimizer(model: torch.nn.Module, lr: float, beta2: float = 0.999, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam over the model's parameters (frozen ones get no gradient, so Adam leaves them be); a
    model's `lr_scales()` (parameter name -> multiplier) puts those parameters in groups of their
    own at lr x multiplier. Each group keeps its multiplier as `lr_scale`, so a schedule that
    changes the rate keeps the ratio. Without multipliers: one group, as `Adam(model.parameters())`."""
    scales = model.lr_scales()
    named = list(model.named_parameters())
    unknown = sorted(set(scales) - {n for n, _ in named})
    if unknown:
        raise KeyError(f"lr_scales names parameters the model does not have: {unknown}")
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for n, p in named:
        groups.setdefault(float(scales.get(n, 1.0)), []).append(p)
    return torch.optim.Adam([{"params": ps, "lr": lr * s, "lr_scale": s} for s, ps in groups.items()],
                            lr=lr, betas=(0.9, beta2), weight_decay=weight_decay)


def finite_loss(loss: "torch.Tensor | float", where: str) -> float:
    """`loss` (a tensor is read back to the host) as a float; raises, naming `where`, if it is
    not finite."""
    v = float(loss)
    if not math.isfinite(v):
        raise FloatingPointError(f"{where}: loss is {v} (lower train.lr or enable train.grad_clip)")
    return v


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on `device` when asked for, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


# ----------------------------------------------------------------------------- one epoch
@dataclass
class EpochStats:
    loss_sum: float  # the sum of the steps' losses
    steps: int
    step: int  # the run's backward passes after this epoch
    hooks: dict[str, float]  # epoch means of the numbers model.after_backward returned

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)


def train_epoch(model: torch.nn.Module, batches: Iterable[Batch], optimizer: torch.optim.Optimizer, *,
                net: torch.nn.Module | None = None, bf16: bool = False, grad_clip: float = 0.0,
                ema: AveragedModel | None = None, step: int = 0, where: str = "epoch",
                progress: str | None = None) -> EpochStats:
    """One pass of `optimizer` over `batches` (moved to the model's device): loss through `net`
    (the model, or its DDP wrapper) under bf16 autocast if asked, backward,
    `model.after_backward(step)`, gradient clipping, optimizer step, moving-average update.

    The loss is summed on the device and read back every 50 steps on a GPU (every step on the CPU,
    where reading it costs nothing); a non-finite one raises FloatingPointError naming `where`.
    step: backward passes of the run so far; progress: a tqdm bar with this title."""
    net = model if net is None else net
    device = next(model.parameters()).device
    sync_every = 50 if device.type == "cuda" else 1
    bar = batches
    if progress is not None:
        from tqdm import tqdm

        bar = tqdm(batches, desc=progress, leave=False, dynamic_ncols=True)
    loss_acc, loss_sum, n, hooks = None, 0.0, 0, _Means()
    for batch in bar:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, bf16):
            loss, _ = net(batch)
        ld = loss.detach().double()
        loss_acc = ld if loss_acc is None else loss_acc + ld
        n += 1
        if n % sync_every == 0:
            loss_sum = finite_loss(loss_acc, where)
            if bar is not batches:
                bar.set_postfix(loss=f"{loss_sum / n:.4f}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        hooks.add(model.after_backward(step))
        step += 1
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
    if loss_acc is not None:
        loss_sum = finite_loss(loss_acc, where)
    return EpochStats(loss_sum, n, step, hooks.means())


class _Means:
    """Running sums of named numbers (tensors stay on their device until `means`)."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, Any] | None) -> None:
        for k, v in (values or {}).items():
            v = v.detach() if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: float(s) / self.counts[k] for k, s in self.sums.items()}


def epoch_loader(dataset: Dataset, epoch: int, tc, dist_info: DistInfo, collate_fn: Callable | None = None,
                 lengths: np.ndarray | None = None) -> DataLoader:
    """The batches of one epoch over a map-style dataset: shuffled with train.seed and the epoch
    (sharded per rank under DDP), train.batch_size each; with `lengths`, length-bucketed."""
    pin = dist_info.device.type == "cuda"  # page-locked batches copy to the GPU asynchronously
    if lengths is not None:
        bs = LengthBucketBatches(lengths, tc.batch_size, tc.seed, rank=dist_info.rank, world_size=dist_info.world_size)
        bs.set_epoch(epoch)
        return DataLoader(dataset, batch_sampler=bs, collate_fn=collate_fn, pin_memory=pin)
    if dist_info.world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=True, seed=tc.seed, drop_last=False)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(tc.seed * 100_003 + epoch))
    return DataLoader(dataset, batch_size=tc.batch_size, sampler=sampler, collate_fn=collate_fn, pin_memory=pin)


def validate_on_split(evaluation: SplitEvaluation, model: torch.nn.Module, files: RunFiles, index: dict[str, Any],
                      device: torch.device | None = None, diagnostics: bool = True) -> tuple[dict[str, float], dict[str, Any]]:
    """Validation metrics of `model` (every rank takes part), and with `diagnostics` the model's
    diagnostics on the fixed validation sample, appended to diagnostics.jsonl under `index`
    (e.g. {"epoch": 3}). Returns (metrics, the metrics.csv columns: eval_s, valid_*, diag_*)."""
    t1 = time.perf_counter()
    res = evaluation.evaluate(model, "valid", device=device)
    columns: dict[str, Any] = {"eval_s": time.perf_counter() - t1, **{f"valid_{k}": v for k, v in res.metrics.items()}}
    diag = evaluation.diagnostics(model, device) if diagnostics else None
    if diag is not None:
        files.append_diagnostics({**index, **diag})
        columns.update(numeric(diag, "diag_"))
    return res.metrics, columns


# ----------------------------------------------------------------------------- the loop
class TrainLoop:
    """Fit a model on batches from `data`: train, validate every `eval_every` epochs, early-stop
    on train.monitor, keep the best weights, resume from last.pt.

    model:    a crbr Recommender (loss through forward; the hooks of crbr.models.base)
    config:   the experiment config (its `train` section drives the loop; recorded in config.yaml,
              the checkpoints and results.json)
    data:     the training batches of every epoch: a map-style torch Dataset (train.batch_size
              items a batch, default collation, shuffled with train.seed and the epoch, sharded
              per rank under DDP), an iterable of batches (iterated once per epoch, as it is), or a
              function epoch -> iterable of batches. A batch is a dict of tensors.
    validate: function model -> {metric: value}, called in eval mode without gradients on the
              weights being validated (the moving average with train.ema_decay > 0); train.monitor
              names the metric that selects the best weights. None: no validation, so no best
              weights and no early stopping; the final weights are the result
    maximize: whether a larger monitored value is better (False for a loss)
    run_dir:  where the files go (default config.run_dir)
    """

    def __init__(self, model: torch.nn.Module, config, data: Any = None,
                 validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
                 run_dir: str | Path | None = None, maximize: bool = True):
        self.cfg, self.tc = config, config.train
        self.data, self.validate_fn, self.maximize = data, validate, maximize
        self.code_version = code_version()  # the code this run starts with
        self.dist: DistInfo = init_distributed(self.tc.device)
        self.device = self.dist.device
        if self.tc.threads > 0:
            torch.set_num_threads(self.tc.threads)
        self.model = model.to(self.device)
        self.net: torch.nn.Module = self.model  # what computes the loss (DDP wraps the model)
        self.run_dir = Path(run_dir) if run_dir is not None else config.run_dir
        self.is_main = self.dist.rank == 0
        self.files = RunFiles(self.run_dir, enabled=self.is_main)
        # train.ema_decay > 0: a moving average of the weights, updated after every optimizer
        # step; validation, the best/last checkpoints and the test use it instead of the raw weights
        self.ema: AveragedModel | None = None

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated, checkpointed and tested."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ fit
    def fit(self, resume: bool = False) -> FitResult:
        """Train until train.epochs, early stopping or train.max_minutes; then evaluate the best
        weights (which the model keeps, in eval mode). resume: continue from checkpoints/last.pt
        if there is one."""
        state = self.start(resume)
        for epoch in range(state.epoch + 1, self.tc.epochs + 1):
            row = self.train_one_epoch(state, epoch)
            improved = self.validate_epoch(state, epoch, row)
            self.record_epoch(state, row)
            self.checkpoint(state, improved)
            if self.stop_vote(state, row):
                break
        self.files.close()
        result = self.finish(state)
        self.model.eval()
        return result

    def start(self, resume: bool) -> TrainState:
        """Seed, prepare the data, build the optimizer (DDP, moving average); continue from last.pt
        on resume; write config.yaml."""
        tc = self.tc
        seed_everything(tc.seed + self.dist.rank)
        self.prepare_data()
        opt = build_optimizer(self.model, tc.lr, tc.beta2, tc.weight_decay)
        if self.dist.world_size > 1:
            self.net = DistributedDataParallel(self.model, find_unused_parameters=self.model.ddp_find_unused_parameters)
        if tc.ema_decay > 0:  # parameters are averaged, buffers copied; every rank averages the same synchronized weights
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay))
        state = TrainState(opt, self.ema, best=-math.inf if self.maximize else math.inf)
        resumed = resume and self.resume(state)
        from ..config import dump_config

        self.files.start(dump_config(self.cfg), fresh=not resumed)
        self._t_start = time.perf_counter() - state.elapsed
        self.model.train()
        return state

    def resume(self, state: TrainState) -> bool:
        """Continue from checkpoints/last.pt, after checking the settings against the checkpoint's
        (crbr.train.resume); False when there is no checkpoint. Unreadable files and refused
        changes are errors naming the file."""
        path = self.files.ckpt_dir / "last.pt"
        if not path.exists():
            if self.is_main:
                log.warning("--resume: no checkpoint in %s, starting from scratch", path.parent)
            return False
        ckpt = TrainState.read(path)
        changes = check_resume(stored_record(ckpt, path.parent), self.cfg, self.model, path)
        state.restore(ckpt, self.model, self.device, path)
        was = state.lr
        if "train.lr" in changes:  # the optimizer's saved rate would win otherwise
            state.set_lr(self.tc.lr)
        state.resumes.append({"epoch": state.epoch, "changed": {k: list(v) for k, v in changes.items()}})
        if self.is_main:
            log.info("resumed from %s at epoch %d (best %s=%.5f at epoch %d)", path, state.epoch, self.tc.monitor,
                     state.best, state.best_epoch)
            for k, (old, new) in changes.items():
                log.info("resume: %s changed from %s to %s%s", k, old, new,
                         f" (the optimizer's rate was {was:g})" if k == "train.lr" else "")
        return True

    def train_one_epoch(self, state: TrainState, epoch: int) -> dict[str, Any]:
        """Train one epoch; the start of its metrics.csv row (loss averaged over ranks, grad_*)."""
        t0 = time.perf_counter()
        st = train_epoch(self.model, self.epoch_batches(epoch), state.optimizer, net=self.net, bf16=self.tc.bf16,
                         grad_clip=self.tc.grad_clip, ema=self.ema, step=state.step, where=f"epoch {epoch}",
                         progress=f"epoch {epoch}" if self.is_main and self.tc.progress else None)
        state.epoch, state.step = epoch, st.step
        row: dict[str, Any] = {"epoch": epoch, "train_loss": st.loss, "train_s": time.perf_counter() - t0}
        if self.dist.world_size > 1:
            t = torch.tensor([row["train_loss"]], dtype=torch.float64, device=self.device)  # NCCL needs device tensors
            dist.all_reduce(t)
            row["train_loss"] = float(t) / self.dist.world_size
        row.update({f"grad_{k}": v for k, v in st.hooks.items()})
        return row

    def validate_epoch(self, state: TrainState, epoch: int, row: dict[str, Any]) -> bool:
        """Validate when due (every eval_every epochs, and the last); count the monitored value for
        early stopping and decay the rate on a plateau. True when the weights are the best so far."""
        if not (epoch % self.tc.eval_every == 0 or epoch == self.tc.epochs):
            return False
        out = self.validation(epoch)
        if out is None:
            return False
        metrics, columns = out
        row.update(columns)
        if self.tc.monitor not in metrics:
            raise KeyError(f"train.monitor={self.tc.monitor!r} is not a metric; available: {sorted(metrics)}")
        improved = state.observe(metrics[self.tc.monitor], epoch, self.maximize)
        state.decay_lr_on_plateau(self.tc.lr_decay, self.tc.lr_patience, self.tc.lr_min)
        return improved

    def record_epoch(self, state: TrainState, row: dict[str, Any]) -> None:
        """Finish the row (rate, elapsed time), add it to the history, metrics.csv and TensorBoard."""
        row["lr"] = state.lr  # the run's rate
        row["elapsed_s"] = state.elapsed = time.perf_counter() - self._t_start
        state.history.append(row)
        self.files.log_row(state.history, row)
        if self.is_main:
            msg = f"epoch {row['epoch']}: loss {row['train_loss']:.4f} ({row['train_s']:.1f}s)"
            if "eval_s" in row:
                msg += (f"  valid {self.tc.monitor} {row['valid_' + self.tc.monitor]:.4f} "
                        f"(best {state.best:.4f} @ {state.best_epoch})")
            log.info(msg)

    def checkpoint(self, state: TrainState, improved: bool) -> None:
        """best.safetensors when the weights improved, last.safetensors and last.pt (rank 0)."""
        if not self.is_main:
            return
        exp = self.cfg.to_dict()
        if improved:
            self.files.save_weights("best", self.eval_model, exp, {"epoch": state.epoch, self.tc.monitor: state.best})
        self.files.save_weights("last", self.eval_model, exp, {"epoch": state.epoch})
        state.save(self.files.ckpt_dir / "last.pt", self.model, self.device, run_record(self.cfg, self.model))

    def stop_vote(self, state: TrainState, row: dict[str, Any]) -> bool:
        """Stop after train.patience validations without improvement or past train.max_minutes;
        under DDP rank 0 decides for every rank."""
        tc = self.tc
        stop = state.bad >= tc.patience or (tc.max_minutes > 0 and row["elapsed_s"] > tc.max_minutes * 60)
        if self.dist.world_size > 1:  # every rank must agree to stop
            flag = torch.tensor([int(stop)], device=self.device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
            dist.barrier()
        if stop and self.is_main:
            log.info("stopping after epoch %d (best %s=%.5f at epoch %d)", state.epoch, tc.monitor, state.best, state.best_epoch)
        return stop

    def finish(self, state: TrainState) -> FitResult:
        """Make the best weights the model's (else the final ones: the moving average if kept),
        evaluate them, write results.json."""
        if self.dist.world_size > 1:
            dist.barrier()
        if self.files.best_weights.exists():
            load_weights(self.files.best_weights, self.model)
        elif self.ema is not None:
            self.model.load_state_dict(self.ema.module.state_dict())
        self.ema = None  # the kept weights (moving average or not) are now the model's own
        metrics, valid, test = self.final_evaluation()
        history = state.history
        result = FitResult(
            best_epoch=state.best_epoch, best_valid=dict(metrics), test=test, valid=valid, epochs_run=len(history),
            seconds_per_epoch=sum(h["train_s"] for h in history) / max(len(history), 1),
            train_seconds=history[-1]["elapsed_s"] if history else 0.0, peak_rss_mb=peak_rss_mb(),
            history=history, resumes=state.resumes)
        self.files.write_results(self.results_dict(result))
        return result

    # ------------------------------------------------------------------ what a data source defines
    def prepare_data(self) -> None:
        """Called once per fit, after seeding and before the first epoch."""

    def epoch_batches(self, epoch: int) -> Iterable[Batch]:
        data = self.data
        if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
            return epoch_loader(data, epoch, self.tc, self.dist)
        if callable(data):
            return data(epoch)
        if data is None:
            raise ValueError("TrainLoop: no training data (pass data=)")
        return data

    def validation(self, epoch: int) -> tuple[dict[str, float], dict[str, Any]] | None:
        """(metrics, metrics.csv columns) of the weights being validated; None: no validation."""
        if self.validate_fn is None:
            return None
        t1 = time.perf_counter()
        with eval_mode(self.eval_model) as m:
            metrics = {k: float(v) for k, v in self.validate_fn(m).items()}
        return metrics, {"eval_s": time.perf_counter() - t1, **{f"valid_{k}": v for k, v in metrics.items()}}

    def final_evaluation(self) -> tuple[dict[str, float], EvalResult | None, EvalResult | None]:
        """(validation metrics, validation result, test result) of the kept weights."""
        if self.validate_fn is None:
            return {}, None, None
        with eval_mode(self.model) as m:
            return {k: float(v) for k, v in self.validate_fn(m).items()}, None, None

    def results_dict(self, r: FitResult) -> dict[str, Any]:
        return {
            "name": self.cfg.name,
            "model": self.cfg.model_name,
            "valid": r.best_valid,
            "best_epoch": r.best_epoch,
            "epochs_run": r.epochs_run,
            "seconds_per_epoch": r.seconds_per_epoch,
            "train_seconds": r.train_seconds,
            "peak_rss_mb": r.peak_rss_mb,
            "n_params": sum(p.numel() for p in self.model.parameters()),
            "n_trainable_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "world_size": self.dist.world_size,
            "seed": self.tc.seed,
            "code_version": self.code_version,
            "config": self.cfg.to_dict(),
            **({"resumes": r.resumes} if r.resumes else {}),
        }


class Trainer(TrainLoop):
    """Fit a sequence model on a split: train on the split's training windows, validate every
    `eval_every` epochs by full ranking, early-stop on `monitor`, keep the best weights, test them.

    model:   a crbr Recommender
    max_len: history window fed to the model (None: model.max_len)
    config:  the ExperimentConfig (its `train` and `eval` sections drive the loop)
    """

    def __init__(self, model: torch.nn.Module, ds: SequenceDataset, split: Split, config, max_len: int | None = None,
                 run_dir: str | Path | None = None):
        super().__init__(model, config, run_dir=run_dir)
        self.ec = config.eval
        self.ds, self.split = ds, split
        self.max_len = model.max_len if max_len is None else int(max_len)
        self.evaluation = SplitEvaluation(ds, split, self.ec, self.max_len)
        self.users: TrainUsers | None = None

    @property
    def valid_eval(self):
        return self.evaluation.valid

    @property
    def test_eval(self):
        return self.evaluation.test

    def evaluate(self, which: str = "valid", export: bool = False) -> EvalResult:
        return self.evaluation.evaluate(self.eval_model, which, export, self.device)

    def prepare_data(self) -> None:
        tc = self.tc
        stride = 0 if tc.windows == "last" else min(tc.window_stride or self.max_len, self.max_len)
        self.users = TrainUsers(self.ds, self.split, self.max_len, stride=stride)
        if len(self.users) == 0:
            raise ValueError("no user has at least 2 training events: nothing to train on")

    def epoch_batches(self, epoch: int) -> Iterable[Batch]:
        users = self.users
        lengths = users.window_lengths() if self.tc.length_bucketing else None
        return epoch_loader(users, epoch, self.tc, self.dist, users.collate, lengths)

    def validation(self, epoch: int) -> tuple[dict[str, float], dict[str, Any]]:
        return validate_on_split(self.evaluation, self.eval_model, self.files, {"epoch": epoch}, self.device,
                                 diagnostics=self.is_main)

    def final_evaluation(self) -> tuple[dict[str, float], EvalResult, EvalResult]:
        valid = self.evaluate("valid")
        test = self.evaluate("test", export=bool(self.ec.export_topk))
        if self.is_main and self.ec.export_topk:
            from ..eval.export import export_topk

            export_topk(test, self.ds, self.ec.export_topk)
            log.info("wrote test top-%d lists to %s", self.ec.export_k, self.ec.export_topk)
        return valid.metrics, valid, test

    def results_dict(self, r: FitResult) -> dict[str, Any]:
        rest = super().results_dict(r)
        head = {"name": rest.pop("name"), "model": rest.pop("model"), "dataset": self.ds.info.get("name"),
                "split": self.split.describe(), "protocol": r.test.protocol if r.test else None,
                "test": r.test.metrics if r.test else None, "test_bucket_hr10": r.test.bucket_hr10 if r.test else None}
        return {**head, **rest}
