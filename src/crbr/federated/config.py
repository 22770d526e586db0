"""`FederatedConfig`: the federated settings of an experiment, and loading them with the
experiment config.

A federated experiment is an ordinary experiment YAML (data / split / model / train / eval) plus
an optional top-level `federated:` section; `crbr train` rejects that section, `crbr federated`
reads it. Overrides `federated.key=value` work like any other override.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PARTITIONINGS = ("random", "contiguous", "activity")
ENGINES = ("inprocess", "ray")


@dataclass
class FederatedConfig:
    """Flower FedAvg over clients that each hold a partition of the users.

    num_clients:      number of clients (virtual SuperNodes); each holds a disjoint set of users
    partitioning:     "random" (IID, seeded), "contiguous" (blocks of user rows, i.e. id order), or
                      "activity" (users sorted by number of training events, then cut into blocks:
                      light users on some clients, heavy users on others; non-IID)
    clients_per_round: clients sampled for training each round; 0 = all
    num_rounds:       FedAvg rounds
    local_epochs:     passes over its own training windows per client per round
    local_batch_size: 0 = train.batch_size
    local_lr:         clients' Adam learning rate; None = train.lr. FedAvg of many short, noisy
                      local runs shrinks the averaged step, so clients usually want a larger lr
                      than centralized training
    warmup_rounds:    partial-aggregation warm-up R: in rounds 1..R only `warmup_groups` are
                      aggregated, every other group stays client-local; from round R + 1 all are
                      aggregated (round R + 1 starts from each client's local copy)
    warmup_groups:    parameter groups aggregated during warm-up (model.parameter_groups();
                      residual_mixture: backbone, experts, router, gate)
    engine:           "inprocess" (Flower ServerApp/ClientApp/FedAvg with an in-process Grid that
                      runs each ClientApp call synchronously; no Ray) or "ray" (Flower's
                      Simulation Engine, flwr.simulation.run_simulation; needs flwr[simulation])
    keep_optimizer_state: each client keeps its Adam moments across rounds (in its Flower Context
                      state; they never leave the client); False = a fresh Adam every round
    eval_every:       rounds between server-side validations of the global model (and the last)
    seed:             client sampling and partitioning seed; None = train.seed
    ray_cpus_per_client: Ray backend: CPUs reserved per ClientApp
    """

    num_clients: int = 10
    partitioning: str = "random"
    clients_per_round: int = 0
    num_rounds: int = 20
    local_epochs: int = 1
    local_batch_size: int = 0
    local_lr: float | None = None
    warmup_rounds: int = 0
    warmup_groups: list[str] = field(default_factory=lambda: ["backbone"])
    engine: str = "inprocess"
    keep_optimizer_state: bool = True
    eval_every: int = 1
    seed: int | None = None
    ray_cpus_per_client: float = 1.0

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ValueError(f"federated.num_clients must be >= 1, got {self.num_clients}")
        if self.partitioning not in PARTITIONINGS:
            raise ValueError(f"federated.partitioning: expected one of {PARTITIONINGS}, got {self.partitioning!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"federated.engine: expected one of {ENGINES}, got {self.engine!r}")
        if not 0 <= self.clients_per_round <= self.num_clients:
            raise ValueError(f"federated.clients_per_round must be in [0, num_clients={self.num_clients}], "
                             f"got {self.clients_per_round}")
        for k in ("num_rounds", "local_epochs", "eval_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"federated.{k} must be >= 1, got {getattr(self, k)}")
        if self.warmup_rounds < 0 or self.local_batch_size < 0:
            raise ValueError("federated.warmup_rounds and federated.local_batch_size must be >= 0")

    @property
    def sampled_per_round(self) -> int:
        return self.clients_per_round or self.num_clients

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_federated_config(path: str | Path | None, overrides: list[str] | None = None):
    """(ExperimentConfig, FederatedConfig) from a YAML file and `section.key=value` overrides;
    the `federated` section and `federated.*` overrides go to FederatedConfig."""
    from ..config import ExperimentConfig, apply_overrides, from_dict

    d: dict[str, Any] = {}
    if path is not None:
        try:
            d = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
    apply_overrides(d, list(overrides or []))
    fed = d.pop("federated", None) or {}
    model = d.get("model", {"name": "sasrec"})
    if not isinstance(model, dict) or "name" not in model:
        raise ValueError(f"{path or 'config'}: model must be a mapping with a 'name'")
    return from_dict(ExperimentConfig, d), from_dict(FederatedConfig, fed, "federated")
