"""The one training loop. It knows no model by name: it needs `model.loss(batch)` (through
`forward`, so DistributedDataParallel can wrap it) and `model.score(batch)` for validation.

Runs on one process or under `torchrun --nproc_per_node N` (DDP; gloo on CPU, NCCL on GPU):
users are sharded per rank by a DistributedSampler, validation is sharded and all-reduced by
the evaluator, and only rank 0 writes files.

Per run directory:
  config.yaml               the full experiment config
  metrics.csv               one row per epoch: loss, timings, validation metrics
  tb/                       TensorBoard scalars
  checkpoints/last.pt       resumable state (model, optimizer, counters, RNG), atomic
  checkpoints/last.safetensors, best.safetensors   weights + config in metadata, atomic
                            (with train.ema_decay > 0: the moving-average weights, which are the
                            ones validated and tested)
  results.json              test metrics of the best checkpoint, protocol, timings
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import math
import random
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from ..data.batching import LengthBucketBatches, TrainUsers, history_batch
from ..data.dataset import SequenceDataset, Split, train_item_counts
from ..eval.evaluator import Evaluator, EvalResult
from .checkpoint import atomic_write_text, load_state, load_weights, save_state, save_weights
from .distributed import DistInfo, init_distributed

log = logging.getLogger("crbr.train")


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


def build_evaluator(ds: SequenceDataset, split: Split, which: str, eval_config, max_len: int,
                    train_counts: np.ndarray | None = None) -> Evaluator:
    """The evaluator of a split's "valid" or "test" part, set up from an EvalConfig."""
    ec = eval_config
    counts = train_item_counts(ds, split) if train_counts is None else train_counts
    return Evaluator(ds, split.valid if which == "valid" else split.test, counts, ks=tuple(ec.ks),
                     mask_history=ec.mask_history, max_len=max_len, batch_size=ec.batch_size,
                     export_k=ec.export_k, split_name=split.name)


def build_optimizer(model: torch.nn.Module, lr: float, beta2: float = 0.999, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam over the model's parameters (frozen ones get no gradient, so Adam leaves them be); a
    model's `lr_scales()` (parameter name -> multiplier) puts those parameters in groups of their
    own at lr x multiplier. Each group keeps its multiplier as `lr_scale`, so a schedule that
    changes the rate keeps the ratio. Without multipliers: one group, as `Adam(model.parameters())`."""
    scales = getattr(model, "lr_scales", dict)()
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
    not finite. Shared by this loop and the federated clients' local loop."""
    v = float(loss)
    if not math.isfinite(v):
        raise FloatingPointError(f"{where}: loss is {v} (lower train.lr or enable train.grad_clip)")
    return v


class Trainer:
    """Fit a model on a split: train, validate every `eval_every` epochs, early-stop on
    `monitor`, keep the best weights, test them.

    model:   a crbr Recommender (anything with loss/score and a dataclass `config`)
    max_len: history window length fed to the model
    config:  the ExperimentConfig (its `train` and `eval` sections drive the loop)
    """

    def __init__(self, model: torch.nn.Module, ds: SequenceDataset, split: Split, config, max_len: int, run_dir: str | Path | None = None):
        self.cfg = config
        self.tc = config.train
        self.ec = config.eval
        self.ds, self.split, self.max_len = ds, split, max_len
        self.code_version = code_version()  # the code this run starts with
        self.dist: DistInfo = init_distributed(self.tc.device)
        self.device = self.dist.device
        if self.tc.threads > 0:
            torch.set_num_threads(self.tc.threads)
        self.model = model.to(self.device)
        self.run_dir = Path(run_dir) if run_dir is not None else config.run_dir
        self.is_main = self.dist.rank == 0
        counts = train_item_counts(ds, split)
        self.valid_eval = build_evaluator(ds, split, "valid", self.ec, max_len, counts)
        self.test_eval = build_evaluator(ds, split, "test", self.ec, max_len, counts)
        # train.ema_decay > 0: a moving average of the weights, updated after every optimizer
        # step; validation, the best/last checkpoints and the test use it instead of the raw weights
        self.ema: AveragedModel | None = None

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated, checkpointed and tested."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ helpers
    def _diagnostics(self, n_users: int = 512) -> dict[str, Any] | None:
        """Model-specific diagnostics on a fixed sample of validation users, for models that
        define `diagnostics(batch, item_bucket=, targets=)` (e.g. token specialization)."""
        model = self.eval_model
        fn = getattr(model, "diagnostics", None)
        if fn is None or not self.is_main:
            return None
        ev = self.split.valid
        if len(ev) == 0:
            return None
        if getattr(self, "_diag_inputs", None) is None:
            idx = np.sort(np.random.default_rng(0).choice(len(ev), min(n_users, len(ev)), replace=False))
            users, hist = ev.users[idx], ev.hist_len[idx]
            first = ev.target_items[ev.target_offsets[idx]]  # each user's first target
            batch = history_batch(self.ds, users, hist, self.max_len)
            self._diag_inputs = (batch, torch.as_tensor(first, dtype=torch.long))
        batch, targets = self._diag_inputs
        model.eval()
        with torch.no_grad():
            out = fn({k: v.to(self.device) for k, v in batch.items()}, item_bucket=self.valid_eval.bucket_of,
                     targets=targets.to(self.device))
        model.train()
        return out

    def _autocast(self):
        if not self.tc.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _score_fn(self) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        model = self.eval_model

        def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            # always fp32: bf16 scores would create ties that the ranking then breaks by item id
            return model.score({k: v.to(self.device) for k, v in batch.items()}).float()

        return score

    def evaluate(self, which: str = "valid", export: bool = False) -> EvalResult:
        model = self.eval_model
        model.eval()
        ev = self.valid_eval if which == "valid" else self.test_eval
        with torch.no_grad():
            res = ev.evaluate(self._score_fn(), export=export)
        model.train()
        return res

    def _loader(self, users: TrainUsers, epoch: int) -> DataLoader:
        pin = self.device.type == "cuda"  # page-locked batches copy to the GPU asynchronously
        if self.tc.length_bucketing:
            bs = LengthBucketBatches(users.window_lengths(), self.tc.batch_size, self.tc.seed,
                                     rank=self.dist.rank, world_size=self.dist.world_size)
            bs.set_epoch(epoch)
            return DataLoader(users, batch_sampler=bs, collate_fn=users.collate, pin_memory=pin)
        if self.dist.world_size > 1:
            sampler = DistributedSampler(users, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                         shuffle=True, seed=self.tc.seed, drop_last=False)
            sampler.set_epoch(epoch)
        else:
            g = torch.Generator().manual_seed(self.tc.seed * 100_003 + epoch)
            sampler = RandomSampler(users, generator=g)
        return DataLoader(users, batch_size=self.tc.batch_size, sampler=sampler, collate_fn=users.collate, pin_memory=pin)

    # ------------------------------------------------------------------ fit
    def fit(self, resume: bool = False) -> FitResult:
        tc, run_dir = self.tc, self.run_dir
        ckpt_dir = run_dir / "checkpoints"
        seed_everything(tc.seed + self.dist.rank)
        stride = 0 if tc.windows == "last" else min(tc.window_stride or self.max_len, self.max_len)
        users = TrainUsers(self.ds, self.split, self.max_len, stride=stride)
        if len(users) == 0:
            raise ValueError("no user has at least 2 training events: nothing to train on")
        opt = build_optimizer(self.model, tc.lr, tc.beta2, tc.weight_decay)
        net = self.model
        if self.dist.world_size > 1:
            net = DistributedDataParallel(
                self.model, find_unused_parameters=bool(getattr(self.model, "ddp_find_unused_parameters", False)))
        if tc.ema_decay > 0:  # parameters are averaged, buffers copied; every rank averages the same synchronized weights
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay))

        start_epoch, best, best_epoch, bad, bad_lr, history, elapsed0 = 1, -math.inf, 0, 0, 0, [], 0.0
        if resume and (ckpt_dir / "last.pt").exists():
            st = load_state(ckpt_dir / "last.pt")
            self.model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            if self.ema is not None:
                if "ema" not in st:
                    raise ValueError(f"{ckpt_dir / 'last.pt'}: written without train.ema_decay; resume with train.ema_decay=0")
                self.ema.load_state_dict(st["ema"])
            start_epoch, best, best_epoch, bad = st["epoch"] + 1, st["best"], st["best_epoch"], st["bad"]
            bad_lr = int(st.get("bad_lr", bad))
            history, elapsed0 = json.loads(st["history"]), st["elapsed"]
            torch.set_rng_state(st["torch_rng"])
            if self.device.type == "cuda" and "cuda_rng" in st:  # dropout, sampled negatives and noise on the GPU
                torch.cuda.set_rng_state(st["cuda_rng"], self.device)
            np.random.set_state(_np_state_from(st["numpy_rng"]))
            if self.is_main:
                log.info("resumed from %s at epoch %d (best %s=%.5f at epoch %d)", ckpt_dir / "last.pt",
                         st["epoch"], tc.monitor, best, best_epoch)
        elif resume and self.is_main:
            log.warning("--resume: no checkpoint in %s, starting from scratch", ckpt_dir)

        writer = None
        if self.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            from ..config import dump_config

            atomic_write_text(run_dir / "config.yaml", dump_config(self.cfg))
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tb"))

        t_start = time.perf_counter() - elapsed0
        train_s_total = sum(h["train_s"] for h in history)
        self.model.train()
        for epoch in range(start_epoch, tc.epochs + 1):
            t0 = time.perf_counter()
            # the loss is summed on the device and read back every `sync_every` steps (every step on
            # the CPU, where reading it costs nothing): a per-step read would stall a GPU each step
            loss_acc, n_steps, loss_sum, sync_every = None, 0, 0.0, (50 if self.device.type == "cuda" else 1)
            loader = self._loader(users, epoch)
            bar = loader
            if self.is_main and tc.progress:
                from tqdm import tqdm

                bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
            for batch in bar:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                with self._autocast():
                    loss, logs = net(batch)
                ld = loss.detach().double()
                loss_acc = ld if loss_acc is None else loss_acc + ld
                n_steps += 1
                if n_steps % sync_every == 0:
                    loss_sum = finite_loss(loss_acc, f"epoch {epoch}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                opt.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                if bar is not loader and n_steps % sync_every == 0:
                    bar.set_postfix(loss=f"{loss_sum / n_steps:.4f}")
            if loss_acc is not None:
                loss_sum = finite_loss(loss_acc, f"epoch {epoch}")
            train_s = time.perf_counter() - t0
            train_s_total += train_s
            row: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / max(n_steps, 1), "train_s": train_s}
            if self.dist.world_size > 1:
                t = torch.tensor([row["train_loss"]], dtype=torch.float64, device=self.device)  # NCCL needs device tensors
                dist.all_reduce(t)
                row["train_loss"] = float(t) / self.dist.world_size

            improved = False
            if epoch % tc.eval_every == 0 or epoch == tc.epochs:
                t1 = time.perf_counter()
                res = self.evaluate("valid")
                row["eval_s"] = time.perf_counter() - t1
                row.update({f"valid_{k}": v for k, v in res.metrics.items()})
                diag = self._diagnostics()
                if diag is not None and self.is_main:
                    _append_jsonl(run_dir / "diagnostics.jsonl", {"epoch": epoch, **diag})
                    row.update({f"diag_{k}": v for k, v in diag.items() if isinstance(v, (int, float))})
                if tc.monitor not in res.metrics:
                    raise KeyError(f"train.monitor={tc.monitor!r} is not a metric; available: {sorted(res.metrics)}")
                cur = res.metrics[tc.monitor]
                if cur > best:
                    best, best_epoch, bad, bad_lr, improved = cur, epoch, 0, 0, True
                else:
                    bad, bad_lr = bad + 1, bad_lr + 1
                if tc.lr_decay < 1.0 and bad_lr >= tc.lr_patience:  # decay on a validation plateau
                    for g in opt.param_groups:
                        g["lr"] = max(g["lr"] * tc.lr_decay, tc.lr_min * g.get("lr_scale", 1.0))
                    bad_lr = 0
            row["lr"] = opt.param_groups[0]["lr"] / opt.param_groups[0].get("lr_scale", 1.0)  # the run's rate
            row["elapsed_s"] = time.perf_counter() - t_start
            history.append(row)

            if self.is_main:
                for k, v in row.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch)
                writer.flush()
                _write_csv(run_dir / "metrics.csv", history)
                msg = f"epoch {epoch}: loss {row['train_loss']:.4f} ({train_s:.1f}s)"
                if "eval_s" in row:
                    msg += f"  valid {tc.monitor} {row['valid_' + tc.monitor]:.4f} (best {best:.4f} @ {best_epoch})"
                log.info(msg)
                exp = self.cfg.to_dict()
                if improved:
                    save_weights(ckpt_dir / "best.safetensors", self.eval_model, self.cfg.model_name, exp,
                                 {"epoch": epoch, tc.monitor: best})
                save_weights(ckpt_dir / "last.safetensors", self.eval_model, self.cfg.model_name, exp, {"epoch": epoch})
                save_state(ckpt_dir / "last.pt", {
                    "model": self.model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                    **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
                    "best": best, "best_epoch": best_epoch, "bad": bad, "bad_lr": bad_lr, "history": json.dumps(history),
                    "elapsed": row["elapsed_s"], "torch_rng": torch.get_rng_state(),
                    **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
                    "numpy_rng": _np_state_to(np.random.get_state()),
                })

            stop = bad >= tc.patience
            if tc.max_minutes > 0 and row["elapsed_s"] > tc.max_minutes * 60:
                stop = True
            if self.dist.world_size > 1:  # every rank must agree to stop
                flag = torch.tensor([int(stop)], device=self.device)
                dist.broadcast(flag, 0)
                stop = bool(flag.item())
                dist.barrier()
            if stop:
                if self.is_main:
                    log.info("stopping after epoch %d (best %s=%.5f at epoch %d)", epoch, tc.monitor, best, best_epoch)
                break

        if writer is not None:
            writer.close()
        # ----- test the best weights
        if self.dist.world_size > 1:
            dist.barrier()
        best_path = ckpt_dir / "best.safetensors"
        if best_path.exists():
            load_weights(best_path, self.model)
            self.ema = None  # the best weights (moving average or not) are now the model's own
        valid_res = self.evaluate("valid")
        test_res = self.evaluate("test", export=bool(self.ec.export_topk))
        epochs_run = len(history)
        result = FitResult(
            best_epoch=best_epoch,
            best_valid={k: v for k, v in valid_res.metrics.items()},
            test=test_res,
            valid=valid_res,
            epochs_run=epochs_run,
            seconds_per_epoch=train_s_total / max(epochs_run, 1),
            train_seconds=history[-1]["elapsed_s"] if history else 0.0,
            peak_rss_mb=peak_rss_mb(),
            history=history,
        )
        if self.is_main:
            if self.ec.export_topk:
                from ..eval.export import export_topk

                export_topk(test_res, self.ds, self.ec.export_topk)
                log.info("wrote test top-%d lists to %s", self.ec.export_k, self.ec.export_topk)
            atomic_write_text(run_dir / "results.json", json.dumps(self.results_dict(result), indent=1, default=float))
        return result

    def results_dict(self, r: FitResult) -> dict[str, Any]:
        return {
            "name": self.cfg.name,
            "model": self.cfg.model_name,
            "dataset": self.ds.info.get("name"),
            "split": self.split.describe(),
            "protocol": r.test.protocol if r.test else None,
            "test": r.test.metrics if r.test else None,
            "test_bucket_hr10": r.test.bucket_hr10 if r.test else None,
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
        }


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """One JSON object per line (appended; a resumed run continues the file)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=float) + "\n")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _np_state_to(st: tuple) -> dict[str, Any]:
    return {"name": st[0], "keys": torch.from_numpy(st[1].astype(np.int64)), "pos": st[2], "has_gauss": st[3], "gauss": st[4]}


def _np_state_from(d: dict[str, Any]) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"])
