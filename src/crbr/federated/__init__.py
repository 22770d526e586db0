"""Federated training on Flower (docs/federated.md; partial aggregation as the residual-enhancement
mixture describes it, "Combined with Partial Aggregation").

Clients are disjoint partitions of the users (`partition_users`); the server runs Flower's
message-API FedAvg (`flwr.serverapp.strategy.FedAvg`) extended with a partial-aggregation warm-up
(`PartialFedAvg`): for the first R rounds only the configured parameter groups (default: the
backbone) are averaged while the others (experts, router, gate) stay client-local in each
client's Flower Context state; afterwards everything is averaged. The global model is validated
server-side after every round; the best round is tested.

    from crbr.federated import FederatedConfig, load_federated_config, run_federated
    cfg, fed = load_federated_config("configs/federated/residual_ml100k.yaml", ["federated.num_rounds=5"])
    result = run_federated(cfg, fed)

Command line: `crbr federated -c CONFIG --num-rounds 30 --gating-init 0.1
--partial-aggregation-warmup-rounds 10`. Engines: see `crbr.federated.engine`; deployment across
machines: `crbr.federated.app` and docs/federated.md.
"""

from .config import ENGINES, PARTITIONINGS, FederatedConfig, load_federated_config
from .engine import InProcessGrid, make_apps, run_federated
from .params import group_keys, load_record, parameter_groups, to_record
from .partition import client_split, partition_users
from .server import FederatedResult
from .strategy import PartialFedAvg

__all__ = [
    "ENGINES", "PARTITIONINGS", "FederatedConfig", "FederatedResult", "InProcessGrid", "PartialFedAvg",
    "client_split", "group_keys", "load_federated_config", "load_record", "make_apps", "parameter_groups",
    "partition_users", "run_federated", "to_record",
]
