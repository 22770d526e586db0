"""Clients = disjoint partitions of the users; each client trains only on its users' windows."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..data.dataset import Split


def partition_users(train_len: np.ndarray, num_clients: int, how: str = "random", seed: int = 0) -> list[np.ndarray]:
    """Disjoint user-row partitions covering every user with >= 2 training events (those that
    give a training window), as sorted arrays; sizes differ by at most one.

    random:     a seeded permutation cut into num_clients blocks (IID)
    contiguous: user rows in order, cut into blocks
    activity:   users sorted by number of training events (stable), cut into blocks (non-IID)
    """
    train_len = np.asarray(train_len)
    users = np.nonzero(train_len >= 2)[0]
    if len(users) < num_clients:
        raise ValueError(f"{num_clients} clients but only {len(users)} users with training windows")
    if how == "random":
        users = np.random.default_rng(seed).permutation(users)
    elif how == "activity":
        users = users[np.argsort(train_len[users], kind="stable")]
    elif how != "contiguous":
        raise ValueError(f"unknown partitioning {how!r}")
    return [np.sort(p) for p in np.array_split(users, num_clients)]


def client_split(split: Split, users: np.ndarray) -> Split:
    """The split seen by one client: training events only for `users` (everyone else's
    train_len is 0, so crbr.data.batching.TrainUsers yields no window for them)."""
    tl = np.zeros_like(np.asarray(split.train_len))
    tl[users] = np.asarray(split.train_len)[users]
    return dataclasses.replace(split, train_len=tl, info={**split.info, "client_users": int(len(users))})
