"""What every model exposes to the generic training loop and the evaluator.

A model is an `nn.Module` with

  loss(batch)  -> LossOutput    training objective on a batch dict from crbr.data.batching
  score(batch) -> (B, I) tensor scores over the whole catalogue (column 0 = padding)
  config       a dataclass, saved inside every checkpoint

and is built from its config and the dataset by `crbr.models.build_model`. The training loop
never looks at a model's name or type.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    """loss: scalar tensor to minimize; logs: detached scalars for progress bars and logs, as
    0-d tensors or floats (a tensor is read back only by whoever shows it, so a training step
    on a GPU never waits for its logs)."""

    loss: torch.Tensor
    logs: dict[str, "float | torch.Tensor"] = field(default_factory=dict)


class Recommender(torch.nn.Module, abc.ABC):
    """Base class: subclasses set `self.config` and implement `loss` and `score`."""

    config: object
    # True for models whose loss may leave some trainable parameters unused in a batch (a branch
    # switched off or skipped); the training loop then builds DDP with find_unused_parameters
    ddp_find_unused_parameters: bool = False

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, "float | torch.Tensor"]]:
        """(loss, logs): lets DistributedDataParallel wrap any model through its forward."""
        out = self.loss(batch)
        return out.loss, out.logs

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter name (from `named_parameters`); parameters not
        named here train at the run's learning rate. Default: none."""
        return {}

    @abc.abstractmethod
    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Training objective on a batch from `crbr.data.batching.train_batch`."""

    @abc.abstractmethod
    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, I) scores of every item for each user's history in `batch`."""


def init_normal(m: torch.nn.Module, std: float) -> None:
    """The reference initialization of SASRec-style models, for `module.apply`: Linear and
    Embedding weights N(0, std), Linear biases zero, the padding row of an Embedding zero."""
    if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
        torch.nn.init.normal_(m.weight, std=std)
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            torch.nn.init.zeros_(m.bias)
        if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
