"""Semantic IDs for a dataset's items from any item-feature spec, cached.

    sid = build_semantic_ids(ds, "text", RQKMeansConfig(levels=3, codebook_size=256))
    sid.save("beauty_ids.parquet")

The features are any `crbr.features` spec (item text as TIGER tokenizes it, a trained model's
item embeddings saved as .npy / .parquet, category multi-hot, ...) or a matrix. Results are cached
under $CRBR_CACHE/semantic_ids/, keyed by the features' bytes and every setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..data.dataset import SequenceDataset
from .ids import SemanticIDs, reassign_collisions
from .rqkmeans import RQKMeans, RQKMeansConfig, all_distances

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def fill_empty_rows(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, int]:
    """Items whose feature row is all zeros (nothing to describe them) get a random unit
    direction, deterministic by item row, so they spread over codes instead of failing."""
    zero = ~np.any(x != 0, axis=1)
    if zero.any():
        rng = np.random.default_rng(seed)
        fill = rng.standard_normal((int(zero.sum()), x.shape[1])).astype(np.float32)
        x = x.copy()
        x[zero] = fill / np.linalg.norm(fill, axis=1, keepdims=True)
    return x, int(zero.sum())


def tokenize(x: np.ndarray, config: RQKMeansConfig, reassign: bool = False,
             progress: bool = False) -> tuple[np.ndarray, RQKMeans, dict]:
    """Codes (N, L) of the rows of x, the fitted tokenizer, and collision statistics (before and
    after the optional last-level re-assignment)."""
    from .ids import collision_stats

    tok = RQKMeans(config).fit(x, progress=progress)
    codes, residuals = tok.encode_with_residuals(x)
    stats = {f"{k}_tokenizer": v for k, v in collision_stats(codes).items()}
    if reassign:
        codes = reassign_collisions(codes, all_distances(residuals[-1], tok.codebooks[-1]))
    return codes, tok, stats


def cache_key(x: np.ndarray, config, reassign: bool, seed: int = 0) -> str:
    h = hashlib.sha256(f"crbr-semantic-ids v{CACHE_VERSION}\n".encode())
    h.update(json.dumps({"kind": type(config).__name__, "config": dataclasses.asdict(config), "reassign": reassign,
                         "seed": seed}, sort_keys=True).encode())
    h.update(str(x.shape).encode())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return h.hexdigest()[:24]


def tokenize_rqvae(x: np.ndarray, config: "RQVAEConfig", run_dir: Path, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Codes (N, L) from an RQ-VAE trained on x, and what to record about it."""
    import torch

    from .ids import collision_stats
    from .rqvae import train_rqvae

    codes, model = train_rqvae(x, config, run_dir=run_dir, seed=seed)
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) if config.normalize else x
    info = {"reconstruction_error": model.reconstruction_error(torch.from_numpy(np.asarray(u, np.float32))),
            **{f"{k}_tokenizer": v for k, v in collision_stats(codes).items()}}
    return codes, info


def build_semantic_ids(ds: SequenceDataset, features: str | np.ndarray, config: "RQKMeansConfig | RQVAEConfig | None" = None,
                       reassign: bool = False, cache_dir: str | Path | None = None, seed: int = 0,
                       progress: bool = False) -> SemanticIDs:
    """Semantic IDs of every item of `ds` from `features` (a crbr.features spec or an
    (n_items + 1, D) matrix with padding row 0), by RQ-KMeans (an RQKMeansConfig, the default)
    or an RQ-VAE (an RQVAEConfig; `reassign` applies to RQ-KMeans only). `progress` shows bars
    while the features are encoded and the levels are clustered."""
    from .rqvae import RQVAEConfig

    from ..data.prepare import default_cache_dir
    from ..features import item_features

    config = config or RQKMeansConfig()
    source = features if isinstance(features, str) else "matrix"
    X = (item_features(ds, features, progress=progress) if isinstance(features, str)
         else np.asarray(features, dtype=np.float32))
    if X.shape[0] != ds.n_items + 1:
        raise ValueError(f"features: expected {ds.n_items + 1} rows (padding row 0 + one per item), got {X.shape[0]}")
    x, n_empty = fill_empty_rows(X[1:], seed)
    if n_empty:
        log.warning("%d items have all-zero features (%s); each gets a random direction", n_empty, source)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir() / "semantic_ids"
    path = cache / f"{ds.info.get('name', 'dataset')}-{cache_key(x, config, reassign, seed)}.parquet"
    if path.exists():
        log.info("semantic IDs from the cache: %s", path)
        return SemanticIDs.load(path, ds.item_ids)
    t0 = time.perf_counter()
    meta = {"config": dataclasses.asdict(config), "features": source, "empty_items": n_empty}
    if isinstance(config, RQVAEConfig):
        codes, stats = tokenize_rqvae(x, config, path.with_suffix(".rqvae"), seed)
        sizes, codebooks = [config.codebook_size] * config.levels, None
        meta.update(tokenizer="rq-vae", reconstruction_error=stats.pop("reconstruction_error"))
    else:
        codes, tok, stats = tokenize(x, config, reassign, progress=progress)
        sizes, codebooks = config.sizes, tok.codebooks
        meta.update(tokenizer="rq-kmeans", reassign=reassign,
                    residual_per_level=[dataclasses.asdict(s) for s in tok.stats])
    meta["seconds"] = time.perf_counter() - t0
    sid = SemanticIDs.from_codes(codes, sizes, ds.item_ids, meta, codebooks, stats)
    sid.save(path)
    return sid
