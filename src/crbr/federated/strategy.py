"""`PartialFedAvg`: Flower's FedAvg with a partial-aggregation warm-up (the residual-enhancement
mixture's "Combined with Partial Aggregation").

Rounds 1..R (R = warmup_rounds): clients send back only the parameters of the warm-up groups
(default: the backbone); the server averages those (FedAvg, weighted by num-examples) and keeps
its own copy of every other parameter unchanged. Experts, router and gate are thus trained
client-locally (each client keeps them in its Flower Context state). From round R + 1 on, clients
send everything and everything is averaged (round R + 1 starts from each client's local copy of
the local groups, so the first full average merges what the clients learned locally).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


class PartialFedAvg(FedAvg):
    """FedAvg whose first `warmup_rounds` rounds aggregate only `shared_keys`."""

    def __init__(self, *, warmup_rounds: int = 0, shared_keys: list[str] | None = None, **fedavg_kw):
        super().__init__(**fedavg_kw)
        self.warmup_rounds = int(warmup_rounds)
        self.shared_keys = list(shared_keys or [])
        if self.warmup_rounds > 0 and not self.shared_keys:
            raise ValueError("PartialFedAvg: warm-up rounds need at least one shared parameter")
        self._global: ArrayRecord | None = None

    def in_warmup(self, server_round: int) -> bool:
        return server_round <= self.warmup_rounds

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = arrays  # the global model this round starts from
        config["warmup-rounds"] = self.warmup_rounds
        config["partial"] = self.in_warmup(server_round)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or not self.in_warmup(server_round):
            return arrays, metrics
        got = set(arrays.keys())
        if got != set(self.shared_keys):
            raise ValueError(f"round {server_round} (warm-up): clients sent {sorted(got)[:5]}..., expected only "
                             f"the {len(self.shared_keys)} shared parameters")
        assert self._global is not None
        merged = ArrayRecord()
        for k in self._global.keys():  # keep the global order; local groups keep the server's copy
            merged[k] = arrays[k] if k in got else self._global[k]
        return merged, metrics
