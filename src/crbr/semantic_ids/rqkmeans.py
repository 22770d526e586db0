"""Residual k-means (RQ-KMeans): L levels of K codes over item embeddings.

Level 1 clusters the L2-normalized item embeddings; level l clusters what level l-1 left over
(the residuals x - c1 - ... - c_{l-1}). An item's semantic ID is its code at every level. FAISS
does the k-means (seeded; k-means++ seeding by default, several restarts optional); an optional
balanced mode (OneRec's balanced k-means) gives every code of a level the same number of items,
to within one.

    tok = RQKMeans(RQKMeansConfig(levels=3, codebook_size=256)).fit(X)   # X (N, D) float32
    codes = tok.encode(X)                                                 # (N, 3) int64
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import faiss
import numpy as np


@dataclass
class RQKMeansConfig:
    """levels: L; codebook_size: K (one for every level, or a list of L sizes);
    init: "kmeans++" (seeding by D^2 sampling) or "random" (FAISS's sampled points);
    n_redo: k-means restarts per level (the best inertia is kept); balanced: equal-size codes;
    balanced_iters: assignment / update rounds of the balanced mode; normalize: L2-normalize
    the inputs first (level 1 then clusters directions)."""

    levels: int = 3
    codebook_size: int | list[int] = 256
    n_iter: int = 25
    n_redo: int = 3
    init: str = "kmeans++"
    balanced: bool = False
    balanced_iters: int = 10
    normalize: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise ValueError(f"RQKMeansConfig.levels must be >= 1, got {self.levels}")
        if self.init not in ("kmeans++", "random"):
            raise ValueError(f"RQKMeansConfig.init: expected 'kmeans++' or 'random', got {self.init!r}")
        if min(self.sizes) < 1:
            raise ValueError(f"RQKMeansConfig.codebook_size must be >= 1, got {self.codebook_size}")

    @property
    def sizes(self) -> list[int]:
        """K per level."""
        if isinstance(self.codebook_size, int):
            return [int(self.codebook_size)] * self.levels
        if len(self.codebook_size) != self.levels:
            raise ValueError(f"RQKMeansConfig: {len(self.codebook_size)} codebook sizes for {self.levels} levels")
        return [int(k) for k in self.codebook_size]


def kmeanspp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(k, D) initial centroids by k-means++ (Arthur & Vassilvitskii 2007): each next centroid is
    a point drawn with probability proportional to its squared distance to the nearest chosen one."""
    n = len(x)
    first = int(rng.integers(n))
    cent = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1).astype(np.float64)  # (N,)
    for _ in range(1, k):
        total = d2.sum()
        i = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        cent.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return np.stack(cent).astype(np.float32)


def nearest(x: np.ndarray, centroids: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances (N, k) and ids (N, k) of each row's k nearest centroids (exact)."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(x, dtype=np.float32), k)


def all_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N, K) squared L2 distance of every row to every centroid, in centroid order."""
    d = (x ** 2).sum(1)[:, None] - 2.0 * (x @ centroids.T) + (centroids ** 2).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans(x: np.ndarray, k: int, cfg: RQKMeansConfig, seed: int) -> np.ndarray:
    """(k, D) centroids of FAISS k-means on x (N, D); the best of cfg.n_redo seeded runs."""
    n, d = x.shape
    if k > n:
        raise ValueError(f"codebook of {k} codes for {n} items: a code needs at least one item")
    best, best_inertia = None, np.inf
    for r in range(cfg.n_redo):
        km = faiss.Kmeans(d, k, niter=cfg.n_iter, seed=seed + r, min_points_per_centroid=1,
                          max_points_per_centroid=max(n, 256), verbose=False)
        init = kmeanspp_init(x, k, np.random.default_rng(seed + r)) if cfg.init == "kmeans++" else None
        km.train(x, init_centroids=init)
        inertia = float(nearest(x, km.centroids)[0].sum())
        if inertia < best_inertia:
            best, best_inertia = km.centroids.copy(), inertia
    return best


def balanced_assign(dist: np.ndarray) -> np.ndarray:
    """(N,) code per item with every code taking floor(N/K) or ceil(N/K) items: code by code,
    each takes its nearest still unassigned items (OneRec's balanced k-means). dist: (N, K)."""
    n, k = dist.shape
    sizes = np.full(k, n // k) + (np.arange(k) < n % k)
    out = np.full(n, -1, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    for c in np.argsort(dist.min(0), kind="stable"):  # codes with a close item first
        cand = np.flatnonzero(free)
        take = cand[np.argsort(dist[cand, c], kind="stable")[: sizes[c]]]
        out[take] = c
        free[take] = False
    return out


def balanced_kmeans(x: np.ndarray, k: int, cfg: RQKMeansConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (k, D) and equal-size assignments (N,), starting from plain k-means."""
    cent = kmeans(x, k, cfg, seed)
    codes = np.zeros(len(x), dtype=np.int64)
    for _ in range(cfg.balanced_iters):
        new = balanced_assign(all_distances(x, cent))
        cent = np.stack([x[new == c].mean(0) for c in range(k)]).astype(np.float32)
        if np.array_equal(new, codes):
            break
        codes = new
    return cent, codes


@dataclass
class LevelStats:
    """What one level did: mean squared residual before and after it (per item)."""

    residual_in: float
    residual_out: float


@dataclass
class RQKMeans:
    """A fitted residual k-means tokenizer: codebooks[l] is (K_l, D)."""

    config: RQKMeansConfig = field(default_factory=RQKMeansConfig)
    codebooks: list[np.ndarray] = field(default_factory=list)
    stats: list[LevelStats] = field(default_factory=list)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """(N, D) float32 inputs as the codebooks see them (L2-normalized when configured)."""
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if x.ndim != 2:
            raise ValueError(f"item embeddings must be (N, D), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("item embeddings hold NaN or infinite values")
        if self.config.normalize:
            norm = np.linalg.norm(x, axis=1, keepdims=True)
            if (norm == 0).any():
                raise ValueError(f"{int((norm == 0).sum())} item embeddings are all zeros: they have no direction "
                                 "to cluster (drop those items or use normalize=False)")
            x = x / norm
        return x

    def fit(self, x: np.ndarray, progress: bool = False) -> "RQKMeans":
        """Learn the L codebooks on x (N, D); returns self. `progress`: a bar over the levels."""
        from tqdm.auto import tqdm

        r = self.prepare(x)
        self.codebooks, self.stats = [], []
        sizes = list(enumerate(self.config.sizes))
        for level, k in tqdm(sizes, desc="RQ-KMeans levels", unit="level", disable=not progress):
            seed = self.config.seed + 1000 * level
            if self.config.balanced:
                cent, codes = balanced_kmeans(r, k, self.config, seed)
            else:
                cent = kmeans(r, k, self.config, seed)
                codes = nearest(r, cent)[1][:, 0]
            before = float((r ** 2).sum(1).mean())
            r = r - cent[codes]
            self.codebooks.append(cent)
            self.stats.append(LevelStats(before, float((r ** 2).sum(1).mean())))
        return self

    def encode(self, x: np.ndarray, balanced: bool | None = None) -> np.ndarray:
        """(N, L) int64 codes: the nearest code of each level's residual (balanced mode: the
        equal-size assignment, for the items the tokenizer was fitted on)."""
        return self.encode_with_residuals(x, balanced)[0]

    def encode_with_residuals(self, x: np.ndarray, balanced: bool | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Codes (N, L) and the residual entering each level (L arrays of (N, D))."""
        if not self.codebooks:
            raise RuntimeError("RQKMeans.encode before fit")
        balanced = self.config.balanced if balanced is None else balanced
        r = self.prepare(x)
        codes, residuals = [], []
        for cent in self.codebooks:
            residuals.append(r)
            if balanced:
                c = balanced_assign(all_distances(r, cent))
            else:
                c = nearest(r, cent)[1][:, 0]
            codes.append(c)
            r = r - cent[c]
        return np.stack(codes, 1).astype(np.int64), residuals

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(N, D) the sum of each item's codes (its reconstruction)."""
        return sum(cb[codes[:, l]] for l, cb in enumerate(self.codebooks))

    def to_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.config)}
