"""`item_features(ds, spec)`: dispatch a feature spec to its builder; normalize; report."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import SequenceDataset
from ..data.prepare import default_cache_dir
from .files import read_features
from .spec import FeatureSpec
from .text import text_features

log = logging.getLogger("crbr.features")


@dataclass
class ItemFeatures:
    """The result of `build_item_features`.

    matrix:     (n_items + 1, D) float32; row 0 (padding) zero, other rows unit L2 norm (or zero
                when an item has nothing to describe it: counted in `zero_rows`)
    spec:       the parsed spec
    cache_path: the cache file (text specs), else None
    cache_hit:  whether `matrix` came from the cache
    zero_rows:  non-padding rows that are all zero
    seconds:    wall time
    """

    matrix: np.ndarray
    spec: FeatureSpec
    cache_path: Path | None = None
    cache_hit: bool = False
    zero_rows: int = 0
    seconds: float = 0.0

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def l2_normalize_rows(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows scaled to unit L2 norm in place (float32); all-zero rows stay zero. Returns (x, #zero rows)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (I, 1)
    zero = (norms[:, 0] == 0)
    np.divide(x, norms, out=x, where=~zero[:, None])
    return x, int(zero.sum())


def category_features(ds: SequenceDataset) -> np.ndarray:
    """(n_items + 1, n_categories) multi-hot of each item's categories (not normalized)."""
    if ds.cat_offsets is None or ds.n_categories == 0:
        raise ValueError(f"feature spec 'categories': dataset {ds.info.get('name', '')!r} has no item categories")
    I, C = ds.n_items + 1, ds.n_categories
    gib = I * C * 4 / 2**30
    if gib > 2:
        log.warning("categories: a dense %d x %d float32 matrix takes %.1f GiB", I, C, gib)
    out = np.zeros((I, C), dtype=np.float32)
    counts = np.diff(np.asarray(ds.cat_offsets))  # (I,)
    rows = np.repeat(np.arange(I), counts)
    out[rows, np.asarray(ds.cat_ids, dtype=np.int64)] = 1.0
    out[0] = 0.0
    return out


def random_features(ds: SequenceDataset, dim: int, seed: int = 0) -> np.ndarray:
    """(n_items + 1, dim) standard Gaussian rows from np.random.default_rng(seed); row 0 zero."""
    rng = np.random.default_rng(seed)
    out = np.zeros((ds.n_items + 1, dim), dtype=np.float32)
    out[1:] = rng.standard_normal((ds.n_items, dim), dtype=np.float32)
    return out


def build_item_features(
    ds: SequenceDataset,
    spec: str | FeatureSpec,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> ItemFeatures:
    """`item_features` with its provenance (cache path, cache hit, zero rows, time)."""
    t0 = time.perf_counter()
    fs = FeatureSpec.parse(spec)
    cache_path, hit = None, False
    if fs.kind == "text":
        base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        mat, cache_path, hit = text_features(ds, fs.model, base, batch_size=batch_size, progress=progress)
        mat = np.array(mat, dtype=np.float32, copy=True)
    elif fs.kind == "file":
        mat = read_features(ds, fs.path, missing=fs.missing)
    elif fs.kind == "categories":
        mat = category_features(ds)
    elif fs.kind == "random":
        mat = random_features(ds, fs.dim, fs.seed)
    else:  # pragma: no cover - FeatureSpec.parse admits no other kind
        raise ValueError(f"unknown feature kind {fs.kind!r}")
    mat[0] = 0.0
    mat, zero = l2_normalize_rows(mat)
    zero_items = zero - 1  # row 0 is always zero
    if zero_items:
        log.warning("features %s: %d of %d items have an all-zero row (left zero, not normalized)",
                    fs, zero_items, ds.n_items)
    return ItemFeatures(mat, fs, cache_path, hit, zero_items, time.perf_counter() - t0)


def item_features(
    ds: SequenceDataset,
    spec: str | FeatureSpec,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """(ds.n_items + 1, D) float32 item features for `spec` (grammar in `crbr.features`).

    Row 0 (padding) is all zeros; row i belongs to the dataset's internal item id i; every other
    row has unit L2 norm (an item with nothing to describe it, e.g. no categories under
    `categories`, keeps a zero row and is counted in the log). `text` specs are cached under
    `cache_dir` (default $CRBR_CACHE or ~/.cache/crbr) in `features/`; `batch_size` is the encoder
    batch; `progress` shows a tqdm bar while encoding.
    """
    return build_item_features(ds, spec, cache_dir=cache_dir, batch_size=batch_size, progress=progress).matrix
