"""Shared helpers for the model tests."""

import numpy as np
import pytest
import torch

from crbr.data.batching import train_batch


def _fit_steps(model, ds, split, steps: int, batch_users: int = 64, max_len: int = 64, lr: float = 3e-3, seed: int = 0):
    """`steps` Adam steps on newest-window batches of random users; returns the model in eval mode."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        users = rng.choice(ds.n_users, batch_users, replace=False)
        out = model.loss(train_batch(ds, users, split.train_len[users], max_len))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def fit_steps():
    return _fit_steps
