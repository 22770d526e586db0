"""Flower App components for the Deployment Engine (SuperLink + SuperNodes across machines).

The same ServerApp / ClientApp logic as `crbr federated` (crbr.federated.engine), configured from
the Flower run config instead of function arguments:

    [tool.flwr.app.config]          (pyproject.toml of the Flower App; deploy/crbr-flower/)
    experiment = "/path/to/configs/federated/residual_ml100k.yaml"   # read by every process
    overrides  = "federated.num_rounds=30 train.threads=1"          # space-separated key=value

Each SuperNode is started with `--node-config "partition-id=<i> num-partitions=<n>"`, n equal to
federated.num_clients; client i trains on user partition i of the experiment's dataset, which
must therefore be readable on every SuperNode (and on the SuperLink's ServerApp, which validates
the global model every round and writes the run directory there). See docs/federated.md.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .client import ClientRuntime, client_train
from .config import load_federated_config
from .server import server_main

log = logging.getLogger("crbr.federated")

_CACHE: dict[tuple, ClientRuntime] = {}


def configs_from_run_config(run_config: dict):
    """(ExperimentConfig, FederatedConfig) from the Flower run config keys `experiment`, `overrides`."""
    path = run_config.get("experiment")
    if not path:
        raise ValueError("Flower run config: set `experiment` to an experiment YAML (see docs/federated.md)")
    overrides = str(run_config.get("overrides", "") or "").split()
    return load_federated_config(str(path), overrides)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    import torch

    from ..data.prepare import prepare_with_split
    from ..models import build_model

    cfg, fed = configs_from_run_config(context.run_config)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    ds, split = prepare_with_split(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model_name, cfg.model_params, ds, split)
    res = server_main(grid, cfg, fed, ds, split, model, cfg.run_dir)
    log.info("best round %d: test %s", res.best_round, res.test.metrics if res.test else None)


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    key = (str(context.run_config.get("experiment")), str(context.run_config.get("overrides", "")))
    rt = _CACHE.get(key)
    if rt is None:
        cfg, fed = configs_from_run_config(context.run_config)
        n = int(context.node_config.get("num-partitions", fed.num_clients))
        if n != fed.num_clients:
            raise ValueError(f"SuperNode num-partitions={n} but federated.num_clients={fed.num_clients}")
        rt = _CACHE[key] = ClientRuntime.build(cfg, fed)
    return client_train(rt, msg, context)
