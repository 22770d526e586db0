"""The ClientApp side: a client = one user partition; it trains the global model locally.

Per process, `ClientRuntime` caches what does not change between rounds (dataset, split, the
client's users, one model instance with its frozen features); every round the model's parameters
are overwritten from the message (and from the client's Context state for the client-local
groups during the partial-aggregation warm-up).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from torch.utils.data import DataLoader, RandomSampler

from ..data.batching import TrainUsers, history_batch
from ..data.dataset import SequenceDataset, Split
from ..eval.setup import numeric, run_diagnostics
from ..train.loop import build_optimizer, train_epoch
from .config import FederatedConfig
from .params import group_keys, load_record, to_record
from .partition import client_split, partition_users

log = logging.getLogger("crbr.federated")

LOCAL_STATE_KEY = "crbr-local"  # ArrayRecord in Context.state: this client's copy of the local groups
OPTIM_STATE_KEY = "crbr-adam"  # ArrayRecord in Context.state: this client's Adam moments and step counts


@dataclass
class ClientRuntime:
    """What one process needs to run any client of one experiment."""

    cfg: object  # ExperimentConfig
    fed: FederatedConfig
    ds: SequenceDataset
    split: Split
    parts: list[np.ndarray]
    model: torch.nn.Module
    shared_keys: list[str]
    all_keys: list[str]

    @classmethod
    def build(cls, cfg, fed: FederatedConfig, ds: SequenceDataset | None = None, split: Split | None = None,
              model: torch.nn.Module | None = None) -> "ClientRuntime":
        from ..models import build_model

        if ds is None or split is None:
            from ..data.prepare import prepare_with_split

            ds, split = prepare_with_split(cfg)
        seed = cfg.train.seed if fed.seed is None else fed.seed
        parts = partition_users(split.train_len, fed.num_clients, fed.partitioning, seed)
        if model is None:
            torch.manual_seed(cfg.train.seed)
            model = build_model(cfg.model_name, cfg.model_params, ds, split)
        shared = group_keys(model, fed.warmup_groups)
        return cls(cfg, fed, ds, split, parts, model, shared, [n for n, _ in model.named_parameters()])

    @property
    def local_keys(self) -> list[str]:
        s = set(self.shared_keys)
        return [k for k in self.all_keys if k not in s]

    @property
    def max_len(self) -> int:
        return self.model.max_len


_RUNTIMES: dict[int, ClientRuntime] = {}


def register_runtime(rt: ClientRuntime) -> int:
    """Make a runtime findable by ClientApps of this process (in-process engine); returns its key."""
    key = id(rt)
    _RUNTIMES[key] = rt
    return key


def adam_state_to_record(opt: torch.optim.Adam, model: torch.nn.Module) -> ArrayRecord:
    """Adam's per-parameter state (exp_avg, exp_avg_sq, step) keyed `<param name>::<field>`."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for p, st in opt.state.items():
        for k, v in st.items():
            out[f"{names[id(p)]}::{k}"] = torch.as_tensor(v).detach().cpu().clone().reshape(torch.as_tensor(v).shape)
    return ArrayRecord(out)


def adam_state_from_record(opt: torch.optim.Adam, model: torch.nn.Module, rec: ArrayRecord) -> None:
    params = dict(model.named_parameters())
    by_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in rec.to_torch_state_dict().items():
        name, field = key.rsplit("::", 1)
        by_param.setdefault(name, {})[field] = v
    for name, st in by_param.items():
        p = params[name]
        opt.state[p] = {k: (v.to(p.device) if k != "step" else v) for k, v in st.items()}


def local_train(model: torch.nn.Module, users: TrainUsers, epochs: int, tc, batch_size: int, seed: int,
                opt_state: ArrayRecord | None = None, lr: float | None = None) -> tuple[float, int, torch.optim.Adam, dict[str, float]]:
    """`epochs` passes of Adam over `users` with the training loop's epoch (crbr.train.loop.train_epoch:
    bf16 autocast with train.bf16, train.grad_clip, model.after_backward), the optimizer restored
    from `opt_state` if given (else fresh); (mean loss, #targets per epoch, optimizer, means of
    what after_backward returned)."""
    opt = build_optimizer(model, tc.lr if lr is None else lr, tc.beta2, tc.weight_decay)
    if opt_state is not None:
        adam_state_from_record(opt, model, opt_state)
    model.train()
    loss_sum, steps, n_targets, hooks = 0.0, 0, [0], {}
    for ep in range(epochs):
        g = torch.Generator().manual_seed(seed * 1009 + ep)
        loader = DataLoader(users, batch_size=batch_size, sampler=RandomSampler(users, generator=g),
                            collate_fn=users.collate)
        st = train_epoch(model, _counting_targets(loader, n_targets), opt, bf16=tc.bf16, grad_clip=tc.grad_clip,
                         step=steps, where="client")
        loss_sum, steps = loss_sum + st.loss_sum, st.step
        for k, v in st.hooks.items():  # summed by steps, then divided: the mean over all local epochs
            hooks[k] = hooks.get(k, 0.0) + v * st.steps
    model.eval()
    return loss_sum / max(steps, 1), n_targets[0] // max(epochs, 1), opt, {k: v / max(steps, 1) for k, v in hooks.items()}


def _counting_targets(batches, count: list[int]):
    """The batches, adding each one's number of targets (FedAvg's example count) to count[0]."""
    for batch in batches:
        count[0] += int((batch["targets"] > 0).sum())
        yield batch


def client_diagnostics(rt: ClientRuntime, split: Split, users: np.ndarray, n_users: int = 64) -> dict[str, float]:
    """The model's diagnostics that need no targets (`model.diagnostics` with targets=None), on
    the training histories of up to `n_users` of the client's users, as client_* numbers."""
    users = np.asarray(users)[:n_users]
    if len(users) == 0:
        return {}
    batch = history_batch(rt.ds, users, np.asarray(split.train_len)[users], rt.max_len)
    return numeric(run_diagnostics(rt.model, batch), "client_")


def client_train(rt: ClientRuntime, msg: Message, context: Context) -> Message:
    """One round of local training on this client's users; replies with its parameters."""
    t0 = time.perf_counter()
    if rt.cfg.train.threads > 0:
        torch.set_num_threads(rt.cfg.train.threads)
    pid = int(context.node_config["partition-id"])
    conf = msg.content["config"]
    rnd = int(conf["server-round"])
    warm = int(conf.get("warmup-rounds", 0))
    partial = bool(conf.get("partial", False))
    model = rt.model
    load_record(model, msg.content["arrays"])  # the global model
    local = context.state[LOCAL_STATE_KEY] if LOCAL_STATE_KEY in context.state else None
    if local is not None and rnd <= warm + 1:
        load_record(model, local)  # client-local groups: this client's own copy (warm-up, and R + 1)
    split = client_split(rt.split, rt.parts[pid])
    fed, tc = rt.fed, rt.cfg.train
    stride = 0 if tc.windows == "last" else min(tc.window_stride or rt.max_len, rt.max_len)
    users = TrainUsers(rt.ds, split, rt.max_len, stride=stride)
    torch.manual_seed(tc.seed * 100_003 + rnd * 1000 + pid)
    opt_state = context.state[OPTIM_STATE_KEY] if fed.keep_optimizer_state and OPTIM_STATE_KEY in context.state else None
    loss, n, opt, hooks = local_train(model, users, fed.local_epochs, tc, fed.local_batch_size or tc.batch_size,
                                      seed=tc.seed * 100_003 + rnd * 1000 + pid, opt_state=opt_state,
                                      lr=fed.local_lr)
    if rt.local_keys:
        context.state[LOCAL_STATE_KEY] = to_record(model, rt.local_keys)
    if fed.keep_optimizer_state:
        context.state[OPTIM_STATE_KEY] = adam_state_to_record(opt, model)
    arrays = to_record(model, rt.shared_keys if partial else None)
    metrics = {"num-examples": max(n, 1), "train_loss": loss, "train_s": time.perf_counter() - t0,
               **{f"grad_{k}": v for k, v in hooks.items()}, **client_diagnostics(rt, split, rt.parts[pid])}
    return Message(content=RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)
