"""RQ-VAE item tokenizer (TIGER, Rajput et al. 2023): the comparison for RQ-KMeans.

An MLP encoder maps an item embedding to a small latent, a residual vector quantizer
(vector-quantize-pytorch's ResidualVQ: codebooks initialised by k-means on the first batch,
commitment loss) turns the latent into L codes, and an MLP decoder reconstructs the embedding
from the quantized latent. Loss = reconstruction MSE + the quantizer's commitment terms. It
trains through crbr's generic training loop (crbr.train.loop.TrainLoop) with the
reconstruction error of the whole catalogue as the validation metric.

    codes, model = train_rqvae(x, RQVAEConfig(levels=3, codebook_size=256), run_dir="runs/rqvae")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from vector_quantize_pytorch import ResidualVQ

from ..models.base import LossOutput, Recommender


@dataclass
class RQVAEConfig:
    """The TIGER tokenizer's settings: encoder widths in_dim -> hidden... -> latent, L levels of K
    codes, commitment weight, EMA decay of the codebooks (1.0 would freeze them; the library
    moves codes towards their assigned latents), dead-code replacement threshold (0 = off, as
    TIGER)."""

    in_dim: int = 0  # set from the data
    hidden: list[int] = field(default_factory=lambda: [512, 256, 128])
    latent: int = 32
    levels: int = 3
    codebook_size: int = 256
    commitment_weight: float = 0.25
    decay: float = 0.99
    dead_code_threshold: float = 0.0
    kmeans_iters: int = 10
    normalize: bool = True
    max_len: int = 0  # (the contract's history window; a tokenizer reads no history)


def mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # no activation on the output


class RQVAE(Recommender):
    """Encoder -> residual VQ -> decoder over item embeddings; batches are {"x": (B, in_dim)}."""

    model_name = "rqvae"
    config_class = RQVAEConfig
    ranking = "none"

    def __init__(self, config: RQVAEConfig):
        super().__init__()
        self.config = c = config
        if c.in_dim <= 0:
            raise ValueError("RQVAEConfig.in_dim must be set (the width of the item embeddings)")
        self.encoder = mlp([c.in_dim, *c.hidden, c.latent])
        self.decoder = mlp([c.latent, *reversed(c.hidden), c.in_dim])
        self.rvq = ResidualVQ(dim=c.latent, num_quantizers=c.levels, codebook_size=c.codebook_size,
                              kmeans_init=True, kmeans_iters=c.kmeans_iters, commitment_weight=c.commitment_weight,
                              decay=c.decay, threshold_ema_dead_code=c.dead_code_threshold)

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, in_dim) -> reconstruction (B, in_dim), codes (B, L), commitment loss (scalar)."""
        z = self.encoder(x)[:, None, :]  # (B, 1, latent): the library quantizes sequences
        q, codes, commit = self.rvq(z)
        return self.decoder(q[:, 0]), codes[:, 0], commit.sum()

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        x = batch["x"]
        recon, _, commit = self.forward_parts(x)
        rec = ((recon - x) ** 2).sum(-1).mean()
        return LossOutput(rec + commit, {"recon": rec.detach(), "commit": commit.detach()})

    @torch.no_grad()
    def encode_codes(self, x: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """(N, L) int64 codes of every row of x."""
        out = []
        for s in range(0, len(x), batch_size):
            out.append(self.forward_parts(x[s : s + batch_size])[1].cpu())
        return torch.cat(out).numpy().astype(np.int64)

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor) -> float:
        """Mean ||x - decode(quantize(encode(x)))||^2 / ||x||^2."""
        recon = self.forward_parts(x)[0]
        return float((((recon - x) ** 2).sum(-1) / (x ** 2).sum(-1).clamp(min=1e-12)).mean())

    def codebooks(self) -> list[np.ndarray]:
        """(K, latent) codebook of each level (in the latent space, not the input space)."""
        return [cb.detach().cpu().numpy() for cb in self.rvq.codebooks]


class _Rows(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i]}


def train_rqvae(x: np.ndarray, config: RQVAEConfig | None = None, run_dir: str | Path = "runs/rqvae",
                epochs: int = 200, batch_size: int = 1024, lr: float = 1e-3, patience: int = 10, seed: int = 0,
                progress: bool = False) -> tuple[np.ndarray, RQVAE]:
    """Train an RQ-VAE on item embeddings x (N, D) with the generic loop (early stopping on the
    catalogue's relative reconstruction error); returns the codes (N, L) and the model."""
    from ..config import ExperimentConfig, TrainConfig
    from ..train.loop import TrainLoop

    x = np.asarray(x, dtype=np.float32)
    if config is None:
        config = RQVAEConfig()
    if config.normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    config = dataclasses.replace(config, in_dim=int(x.shape[1]))
    torch.manual_seed(seed)
    model = RQVAE(config)
    xt = torch.from_numpy(x)
    exp = ExperimentConfig(name="rqvae", model={"name": "rqvae", **dataclasses.asdict(config)}, out_dir=str(run_dir),
                           train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, beta2=0.999, patience=patience,
                                             monitor="recon", seed=seed, progress=progress, threads=0))
    loop = TrainLoop(model, exp, data=_Rows(xt), validate=lambda m: {"recon": m.reconstruction_error(xt)},
                     run_dir=run_dir, maximize=False)
    loop.fit()
    model.eval()
    return model.encode_codes(xt), model
