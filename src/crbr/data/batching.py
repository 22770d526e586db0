"""Vectorized construction of left-padded sequence windows from a SequenceDataset.

Every model reads the same batch dictionary; a model uses the fields it needs:

  items       (B, L) int64   history item ids, left-padded with 0, oldest -> newest
  actions     (B, L) int64   action ids of those events (0 on padding)
  timestamps  (B, L) int64   event times (0 on padding), present when the dataset has them
  positions   (B, L) int64   index of each event in the user's full sequence (0 on padding)
  lengths     (B,)   int64   number of real events in the window
  users       (B,)   int64   user row indices
  full_len    (B,)   int64   number of events the user had up to the window end

Training windows add the next-event targets, aligned with `items`:

  targets        (B, L) int64  item at t+1 for each position t (0 = no target / padding)
  target_actions (B, L) int64
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .dataset import EvalSet, SequenceDataset, Split


def _gather(ds: SequenceDataset, users: np.ndarray, end_len: np.ndarray, max_len: int) -> dict[str, np.ndarray]:
    """Windows of the last `max_len` events before position end_len[b] of user users[b]."""
    users = np.asarray(users, dtype=np.int64)
    end_len = np.asarray(end_len, dtype=np.int64)
    starts = np.asarray(ds.offsets[users], dtype=np.int64)
    ends = starts + end_len  # (B,) exclusive row end
    ar = np.arange(max_len, dtype=np.int64)
    rows = ends[:, None] - max_len + ar[None, :]  # (B, L)
    valid = rows >= starts[:, None]
    safe = np.where(valid, rows, 0)
    out = {
        "items": np.where(valid, np.asarray(ds.items)[safe], 0).astype(np.int64),
        "actions": np.where(valid, np.asarray(ds.actions)[safe], 0).astype(np.int64),
        "positions": np.where(valid, rows - starts[:, None], 0),
        "lengths": valid.sum(1).astype(np.int64),
        "users": users,
        "full_len": end_len,
    }
    if ds.timestamps is not None:
        out["timestamps"] = np.where(valid, np.asarray(ds.timestamps)[safe], 0).astype(np.int64)
    return out


def history_batch(ds: SequenceDataset, users: np.ndarray, hist_len: np.ndarray, max_len: int) -> dict[str, torch.Tensor]:
    """The last `max_len` events of each user's visible history (for scoring)."""
    return {k: torch.from_numpy(v) for k, v in _gather(ds, users, hist_len, max_len).items()}


def train_batch(ds: SequenceDataset, users: np.ndarray, train_len: np.ndarray, max_len: int) -> dict[str, torch.Tensor]:
    """Inputs = the last `max_len` training events but the final one; targets = shifted by one.

    For a user with training events e_1..e_n the window holds inputs e_{n-L}..e_{n-1} and targets
    e_{n-L+1}..e_n (L = min(max_len, n - 1)); users need n >= 2.
    """
    train_len = np.asarray(train_len, dtype=np.int64)
    inp = _gather(ds, users, train_len - 1, max_len)
    tgt = _gather(ds, users, train_len, max_len)
    has = inp["items"] > 0
    inp["targets"] = np.where(has, tgt["items"], 0)
    inp["target_actions"] = np.where(has, tgt["actions"], 0)
    return {k: torch.from_numpy(v) for k, v in inp.items()}


class TrainUsers(Dataset):
    """Map-style dataset of training windows.

    stride = 0:  one window per user with train_len >= 2: the newest `max_len` training events
                 (the SASRec paper's sampling); every position of the window is a target.
    stride = k:  windows ending at train_len, train_len - k, train_len - 2k, ... (while at least
                 2 events remain); each window's targets are only its newest k events, so every
                 training event is a target exactly once per epoch, and with k < max_len each
                 target sees at least max_len - k events of context when the user has them.
                 k = max_len gives non-overlapping windows (the cheapest full pass).

    A DataLoader passes lists of indices to `collate`, which builds the whole batch in one
    vectorized gather.
    """

    def __init__(self, ds: SequenceDataset, split: Split, max_len: int, stride: int = 0):
        if stride < 0:
            raise ValueError(f"window stride must be >= 0, got {stride}")
        self.ds, self.max_len, self.stride = ds, max_len, stride
        train_len = np.asarray(split.train_len, dtype=np.int64)
        users = np.nonzero(train_len >= 2)[0]
        if stride == 0:
            self.users, self.ends = users, train_len[users]
        else:
            # windows per user: ends train_len, train_len - stride, ... >= 2
            n_win = (train_len[users] - 2) // stride + 1  # (U',)
            self.users = np.repeat(users, n_win)
            first = np.repeat(np.cumsum(n_win) - n_win, n_win)
            k = np.arange(len(self.users)) - first  # window index within its user
            self.ends = train_len[self.users] - k * stride

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> int:
        return int(i)

    def collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        b = train_batch(self.ds, self.users[idx], self.ends[idx], self.max_len)
        if 0 < self.stride < self.max_len:  # only the newest `stride` positions are targets
            older = torch.arange(self.max_len) < self.max_len - self.stride  # (L,)
            b["targets"] = b["targets"].masked_fill(older, 0)
            b["target_actions"] = b["target_actions"].masked_fill(older, 0)
        return trim_padding(b)

    def window_lengths(self) -> np.ndarray:
        """(len(self),) number of real input events in each window."""
        return np.minimum(self.ends - 1, self.max_len)


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the leading columns that are padding in every row of a left-padded batch.

    Models align positions from the newest event (the last column), so a shorter window changes
    no result; it only saves the work on padding (a batch is as long as its longest history).
    """
    items = batch["items"]
    n = max(int((items > 0).sum(1).max()) if items.numel() else 0, 1)
    if n >= items.shape[1]:
        return batch
    return {k: (v[:, -n:] if v.dim() == 2 else v) for k, v in batch.items()}


class LengthBucketBatches:
    """Batch sampler that groups windows of similar length (less padding, same data per epoch).

    Each epoch: shuffle all windows, cut the order into pools of `pool` batches, sort each pool
    by length, cut it into batches, shuffle the batches. With `world_size` > 1 each rank takes
    every world_size-th batch; ranks get the same number of batches (the last ones wrap around).
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, pool: int = 50,
                 rank: int = 0, world_size: int = 1):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.pool = batch_size, seed, pool
        self.rank, self.world = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        size = self.batch_size * self.pool
        batches = []
        for s in range(0, len(order), size):
            chunk = order[s : s + size]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
        if self.world > 1:
            per_rank = -(-len(batches) // self.world)
            batches = [batches[(self.rank + k * self.world) % len(batches)] for k in range(per_rank)]
        return batches

    def __iter__(self):
        for b in self._batches():
            yield b.tolist()

    def __len__(self) -> int:
        return len(self._batches())


def eval_batches(ds: SequenceDataset, es: EvalSet, max_len: int, batch_size: int):
    """Yield (slice into es, history batch) for consecutive chunks of an EvalSet."""
    for s in range(0, len(es), batch_size):
        sl = slice(s, min(s + batch_size, len(es)))
        yield sl, trim_padding(history_batch(ds, es.users[sl], es.hist_len[sl], max_len))
