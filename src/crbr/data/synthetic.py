"""A synthetic multi-interest world: the embedded default dataset (no network, deterministic).

It produces a `SequenceDataset` whose users have a small set of known latent interests, so that
multi-interest user towers (Q-Former, CRBR; docs/design.md) can be checked against ground
truth, and whose events carry negative feedback and long histories.

Generative process
------------------
Notation: C categories, N items (ids 1..N, 0 = padding), U users, D = `dim`.

Streams. `np.random.SeedSequence(seed)` is split into three independent streams: the catalogue
(items), the users (interests and lengths) and the events. The catalogue therefore depends only
on `seed` and the item parameters (n_items, n_categories, dim, zipf_exponent, ...): changing
`n_users` or the history parameters leaves the items, their embeddings and texts unchanged.

Catalogue.
 1. Category sizes: category c gets `2 + multinomial share` of the items with shares
    proportional to rank^-`category_size_exponent` (over a random order of categories), so
    category sizes are uneven but every category has at least two items.
 2. Each item i gets one primary category c(i) (a random assignment with those sizes) and, with
    probability `secondary_category_prob`, a secondary category c2(i) != c(i) drawn uniformly.
 3. Popularity: a random permutation gives each item a global rank r_i in 1..N and
    pop_i = r_i^-`zipf_exponent` (Zipf across the catalogue, hence also within each category).
 4. Embeddings: category centroids m_c are random unit vectors in R^D; each item has a random
    unit "style" direction s_i, and
        e_i = normalize(m_c(i) + `secondary_weight` * m_c2(i) + `item_spread` * s_i)
    (the secondary term only for items that have one). Items of one category therefore have a
    clearly higher cosine with each other (about 1 / (1 + item_spread^2)) than with items of
    other categories (about 0). `item_embeddings[0]` is the zero vector (padding).
 5. Text: every category has a name and a pool of `words_per_category` descriptive words; item
    i's text is "{primary name} item {k}: {w1} {w2} {w3}" (k = its ordinal inside the primary
    category, three distinct words drawn from the primary category's pool), with ", also {secondary name}"
    appended when it has a secondary category.

Users.
 6. Number of interests K_u ~ Uniform{`min_interests`..`max_interests`}.
 7. Interest categories: K_u distinct categories drawn without replacement with probability
    proportional to the category's popularity mass (sum of pop_i over its primary items), via
    the Gumbel-top-k trick (successive sampling).
 8. Interest weights w_u ~ Dirichlet(`interest_concentration` * 1_K), sorted in decreasing order
    (the first-drawn category gets the largest weight).
 9. Taste: each (user, interest) pair j has a random unit direction t_j; the affinity of item i
    in that interest's category is a_{j,i} = sqrt(D) * <s_i, t_j> (about N(0, 1) across items).
    `interest_vectors[j] = normalize(m_c + item_spread * t_j)` is the point of the embedding
    space the user is drawn to in that interest.
10. History length: L_u = round(exp(N(log `history_median`, `history_sigma`^2))) clipped to
    [`min_history`, `max_history`] (a log-normal, heavy right tail). In addition,
    round(`long_user_frac` * U) users (at least one when the fraction is positive) are "long"
    users with L_u log-uniform in [max_history / 4, max_history], and one of them has exactly
    `max_history` events.

Events (t = 0..L_u-1 for each user; everything below is vectorized over all events).
11. Latent interest chain: z_0 ~ w_u; for t > 0, z_t = z_{t-1} with probability `stickiness`,
    otherwise z_t is drawn afresh from w_u (so it may stay the same). The chain advances at
    every step, exploration steps included.
12. Kind: with probability `exploration` step t is an exploration step, otherwise an interest
    step.
      interest step: item i from z_t's category with P(i) ∝ pop_i * exp(`affinity_strength` *
                     a_{j,i}) (popularity x the user's taste in that interest);
      exploration step: a category drawn uniformly among the C - K_u categories outside the
                     user's interests, then an item from it with P(i) ∝ pop_i.
13. Repeats: with probability `repeat_prob` (and only when t >= k), the step instead re-consumes
    the item of step t - k, k ~ Uniform{1..`repeat_window`}; it inherits that step's item and
    kind (resolved transitively, so a repeat of a repeat copies the original).
14. Action: drawn from `interest_action_probs` for interest-kind steps and from
    `explore_action_probs` for exploration-kind steps (probabilities over `action_names`).
    With the defaults, positive actions (click, like, purchase) fall overwhelmingly on in-interest
    items and dislike / skip mostly on exploration items.
15. Time: each user starts at `start_time` + Uniform[0, `start_spread_days`) days; each later
    gap is 1 + Exp(`within_session_gap_s`) seconds, except with probability
    `session_break_prob` it is 1 + Exp(`session_gap_s`) seconds (a new session). Gaps are
    at least one second, so timestamps are strictly increasing per user.

Ground truth kept in `SyntheticWorld`: interest categories and weights per user (CSR), the
interest vectors, the latent state z_t and the kind (exploration / repeat) of every event, the
item popularity, primary / secondary categories and the category centroids.

Typical use::

    world = generate(SyntheticConfig())            # 2000 users, ~150k events, ~0.2 s
    ds = world.dataset                              # a validated SequenceDataset
    world.save_ground_truth("gt.parquet")
    long = generate(SyntheticConfig.long_history())  # histories of thousands of events
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..fileio import atomic_file
from .dataset import SequenceDataset

__all__ = ["SyntheticConfig", "SyntheticWorld", "generate", "read_ground_truth"]

# Names for the first categories; more categories reuse them with a numeric suffix.
_CATEGORY_NAMES = (
    "jazz", "rock", "hip hop", "classical", "electronic", "country", "sci-fi novels",
    "mystery novels", "cookbooks", "poetry", "running shoes", "hiking gear", "yoga",
    "board games", "video games", "anime", "documentaries", "horror films", "romantic comedies",
    "coffee", "tea", "craft beer", "wine", "skincare", "perfume", "watches", "sneakers",
    "denim", "outerwear", "furniture", "houseplants", "kitchenware", "photography", "drones",
    "headphones", "smartphones", "cycling", "camping", "pet supplies", "baby care",
)

# Pool of descriptive words; each category gets its own random subset.
_WORDS = (
    "vintage", "modern", "classic", "minimal", "bold", "soft", "bright", "dark", "organic",
    "handmade", "premium", "budget", "compact", "portable", "rugged", "elegant", "playful",
    "cozy", "sleek", "retro", "futuristic", "acoustic", "electric", "spicy", "sweet", "smoky",
    "floral", "earthy", "fresh", "crisp", "smooth", "rich", "light", "heavy", "warm", "cool",
    "colorful", "monochrome", "rustic", "urban", "tropical", "alpine", "coastal", "nordic",
    "italian", "japanese", "french", "mexican", "indie", "mainstream", "experimental",
    "family", "kids", "professional", "beginner", "advanced", "limited", "seasonal", "eco",
    "recycled", "waterproof", "lightweight", "durable", "wireless", "analog", "digital",
    "slow", "fast", "quiet", "loud", "dreamy", "gritty", "epic", "short", "long", "deluxe",
    "travel", "studio", "live", "remastered", "signature", "limited-edition", "artisan",
    "single-origin", "aged", "sparkling", "dry", "gentle", "intense", "layered", "geometric",
)


@dataclass
class SyntheticConfig:
    """Parameters of the synthetic multi-interest world (see the module docstring for the process).

    The defaults give ~2000 users x 2000 items in 20 categories, median history 50, a handful of
    users with 500-2000 events (~150k events in total), generated in well under a second; small
    enough that SASRec trains on it in well under a minute on 2 CPU cores.
    `SyntheticConfig.long_history()` gives histories of thousands of events (up to 10_000).
    """

    seed: int = 0
    n_users: int = 2000
    n_items: int = 2000
    n_categories: int = 20
    dim: int = 64  # item embedding dimension D
    # --- catalogue
    zipf_exponent: float = 0.9  # pop_i = rank_i^-zipf_exponent
    category_size_exponent: float = 0.5  # category share ∝ rank^-exponent (0 = equal sizes)
    secondary_category_prob: float = 0.15
    secondary_weight: float = 0.4  # weight of the secondary centroid in an item embedding
    item_spread: float = 0.8  # norm of the item-specific style term relative to the centroid
    words_per_category: int = 8  # >= 3
    # --- users
    min_interests: int = 1
    max_interests: int = 5
    interest_concentration: float = 1.0  # Dirichlet concentration of the interest weights
    affinity_strength: float = 1.5  # weight of the user's taste against popularity
    # --- history lengths
    history_median: float = 50.0
    history_sigma: float = 0.8  # log-normal sigma (heavy tail)
    min_history: int = 5
    max_history: int = 2000
    long_user_frac: float = 0.005  # users with log-uniform length in [max_history/4, max_history]
    # --- events
    stickiness: float = 0.85  # P(z_t = z_{t-1}) before the fresh redraw
    exploration: float = 0.15  # P(step is an exploration step outside the interests)
    repeat_prob: float = 0.05  # P(step re-consumes one of the last `repeat_window` items)
    repeat_window: int = 20
    action_names: tuple[str, ...] = ("click", "like", "dislike", "skip", "purchase")
    interest_action_probs: tuple[float, ...] = (0.62, 0.20, 0.01, 0.03, 0.14)
    explore_action_probs: tuple[float, ...] = (0.28, 0.04, 0.33, 0.33, 0.02)
    # --- time
    start_time: int = 1_672_531_200  # 2023-01-01 00:00:00 UTC
    start_spread_days: float = 365.0
    within_session_gap_s: float = 90.0
    session_gap_s: float = 86_400.0
    session_break_prob: float = 0.1

    def __post_init__(self) -> None:
        self.action_names = tuple(self.action_names)
        self.interest_action_probs = tuple(float(p) for p in self.interest_action_probs)
        self.explore_action_probs = tuple(float(p) for p in self.explore_action_probs)
        if self.n_users < 1:
            raise ValueError(f"n_users must be >= 1, got {self.n_users}")
        if self.n_categories < 2:
            raise ValueError(f"n_categories must be >= 2, got {self.n_categories}")
        if self.n_items < 2 * self.n_categories:
            raise ValueError(f"n_items ({self.n_items}) must be >= 2 * n_categories ({2 * self.n_categories})")
        if self.dim < 2:
            raise ValueError(f"dim must be >= 2, got {self.dim}")
        if not 1 <= self.min_interests <= self.max_interests:
            raise ValueError(f"need 1 <= min_interests <= max_interests, got {self.min_interests}, {self.max_interests}")
        if self.max_interests >= self.n_categories:
            raise ValueError(
                f"max_interests ({self.max_interests}) must be < n_categories ({self.n_categories}) "
                "so that exploration has categories outside the interests"
            )
        if not 1 <= self.min_history <= self.max_history:
            raise ValueError(f"need 1 <= min_history <= max_history, got {self.min_history}, {self.max_history}")
        for name in ("stickiness", "exploration", "repeat_prob", "secondary_category_prob",
                     "long_user_frac", "session_break_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
        if self.exploration >= 1.0:
            raise ValueError("exploration must be < 1 (some steps must follow the interests)")
        if self.history_median <= 0 or self.history_sigma < 0:
            raise ValueError("history_median must be > 0 and history_sigma >= 0")
        if not 3 <= self.words_per_category <= len(_WORDS):
            raise ValueError(f"words_per_category must lie in 3..{len(_WORDS)}, got {self.words_per_category}")
        if self.repeat_window < 1:
            raise ValueError(f"repeat_window must be >= 1, got {self.repeat_window}")
        if self.interest_concentration <= 0:
            raise ValueError("interest_concentration must be > 0")
        A = len(self.action_names)
        if A == 0 or len(set(self.action_names)) != A or "<pad>" in self.action_names:
            raise ValueError(f"action_names must be distinct, non-empty and exclude '<pad>': {self.action_names}")
        for name in ("interest_action_probs", "explore_action_probs"):
            p = np.asarray(getattr(self, name))
            if len(p) != A or np.any(p < 0) or not math.isclose(p.sum(), 1.0, abs_tol=1e-6):
                raise ValueError(f"{name} must be {A} non-negative probabilities summing to 1, got {tuple(p)}")

    # ------------------------------------------------------------- presets
    @classmethod
    def long_history(cls, **overrides) -> "SyntheticConfig":
        """Few users with very long histories: median ~1500 events, some up to 10_000 (~350k events)."""
        kw = dict(
            n_users=200, n_items=5000, n_categories=40, history_median=1500.0, history_sigma=0.6,
            min_history=200, max_history=10_000, long_user_frac=0.05,
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def tiny(cls, **overrides) -> "SyntheticConfig":
        """A few hundred users and items, for fast unit tests of downstream modules."""
        kw = dict(n_users=200, n_items=300, n_categories=10, dim=16, history_median=30.0, max_history=300)
        kw.update(overrides)
        return cls(**kw)


@dataclass
class SyntheticWorld:
    """A generated dataset together with the ground truth that produced it.

    Shapes: U users, E events, I = n_items + 1 (row 0 = padding), C categories, D = dim,
    P = total number of (user, interest) pairs.

    dataset:              SequenceDataset (user ids "u0".., item ids "i1"..; info["name"] = "synthetic")
    item_embeddings:      (I, D) float32   unit-norm item vectors, row 0 = zeros
    item_category:        (I,)   int32     primary category, -1 for padding
    item_secondary:       (I,)   int32     secondary category or -1
    item_popularity:      (I,)   float64   pop_i normalized to sum 1, 0 for padding
    category_centroids:   (C, D) float32   unit centroids m_c
    interest_offsets:     (U + 1,) int64   user u's interests are rows interest_offsets[u]:[u+1]
    interest_categories:  (P,)   int32     distinct per user, in decreasing weight order
    interest_weights:     (P,)   float64   sum to 1 per user
    interest_vectors:     (P, D) float32   unit vector each interest is drawn to
    event_state:          (E,)   int32     latent interest category z_t of the chain at each event
    event_explore:        (E,)   bool      the event's item came from an exploration step
    event_repeat:         (E,)   bool      the event re-consumes an earlier item
    interest_tastes:      (P, D) float32   unit taste direction t_j of each (user, interest) pair
    item_styles:          (I, D) float32   unit style direction s_i of each item, row 0 = zeros
    config:               the SyntheticConfig used

    `next_item_probs` gives the exact generative distribution of any event given the ground
    truth before it (a Bayes-optimal reference for every model trained on the world).
    """

    dataset: SequenceDataset
    item_embeddings: np.ndarray
    item_category: np.ndarray
    item_secondary: np.ndarray
    item_popularity: np.ndarray
    category_centroids: np.ndarray
    interest_offsets: np.ndarray
    interest_categories: np.ndarray
    interest_weights: np.ndarray
    interest_vectors: np.ndarray
    event_state: np.ndarray
    event_explore: np.ndarray
    event_repeat: np.ndarray
    interest_tastes: np.ndarray | None = None
    item_styles: np.ndarray | None = None
    config: SyntheticConfig = field(default_factory=SyntheticConfig)

    def interest_sets(self) -> list[np.ndarray]:
        """Per user, the array of interest category ids (decreasing weight)."""
        o = self.interest_offsets
        return [self.interest_categories[o[u] : o[u + 1]] for u in range(len(o) - 1)]

    def in_interest(self) -> np.ndarray:
        """(E,) bool: the event's item has its primary category among the user's interests."""
        ds = self.dataset
        U, C = ds.n_users, len(self.category_centroids)
        mask = np.zeros((U, C), dtype=bool)
        users = np.repeat(np.arange(U), np.diff(self.interest_offsets))
        mask[users, self.interest_categories] = True
        ev_user = np.repeat(np.arange(U), ds.lengths())
        return mask[ev_user, self.item_category[np.asarray(ds.items)]]

    def next_item_probs(self, users: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(n, I) P(item of event t[k] of user users[k] = i | everything before it), exactly as the
        generator draws it (steps 11-13), from the latent interest state of event t - 1 and the
        items of the last `repeat_window` events. Requires t >= 1. Column 0 (padding) is 0.

            P(i) = (1 - rho) [(1 - x) sum_j P(z_t = j) P(i | j) + x P_explore(i)] + rep(i)
            P(z_t = j) = s [j = z_{t-1}] + (1 - s) w_j
            P(i | j)  ∝ pop_i exp(affinity_strength sqrt(D) <s_i, t_j>) over j's category
            P_explore(i) = pop_i / mass(c(i)) / (C - K_u) for c(i) outside the interests
            rep(i) = repeat_prob / W * #{k in 1..min(t, W): item_{t-k} = i},  rho = repeat_prob min(t, W) / W

        with s = stickiness, x = exploration, W = repeat_window.
        """
        if self.interest_tastes is None or self.item_styles is None:
            raise ValueError("this SyntheticWorld carries no tastes / styles (generated by an older version)")
        cfg, ds = self.config, self.dataset
        users, t = np.asarray(users, dtype=np.int64), np.asarray(t, dtype=np.int64)
        off = np.asarray(ds.offsets)
        if np.any(t < 1) or np.any(t >= np.diff(off)[users]):
            raise ValueError("next_item_probs: every t must satisfy 1 <= t < the user's history length")
        I = len(self.item_category)
        scale = cfg.affinity_strength * math.sqrt(self.item_styles.shape[1])
        pop = self.item_popularity
        logpop = np.log(np.where(pop > 0, pop, 1.0))
        out = np.zeros((len(users), I), dtype=np.float64)
        io = self.interest_offsets
        for k, (u, tt) in enumerate(zip(users.tolist(), t.tolist())):
            rows = np.arange(io[u], io[u + 1])
            cats, w = self.interest_categories[rows], self.interest_weights[rows]
            prev = self.event_state[off[u] + tt - 1]
            pz = (1 - cfg.stickiness) * w + cfg.stickiness * (cats == prev)  # (K,)
            interest_mass = np.zeros(I)
            for j, c in enumerate(cats.tolist()):
                members = self.category_members[c]
                logit = logpop[members] + scale * (self.item_styles[members] @ self.interest_tastes[rows[j]])
                p = np.exp(logit - logit.max())
                interest_mass[members] += pz[j] * p / p.sum()
            out[k] = self.mixture_probs(u, tt, interest_mass, cats)
        return out

    @functools.cached_property
    def category_members(self) -> list[np.ndarray]:
        """Per category c, the ids of the items whose primary category is c, ascending."""
        cat = self.item_category
        order = np.argsort(cat[1:], kind="stable") + 1
        bounds = np.searchsorted(cat[order], np.arange(len(self.category_centroids) + 1))
        return [order[bounds[c]: bounds[c + 1]] for c in range(len(self.category_centroids))]

    @functools.cached_property
    def within_category_popularity(self) -> np.ndarray:
        """(I,) pop_i / mass(c(i)): the item distribution of an exploration step that lands in c(i)
        (also an interest step's distribution when tastes are ignored). 0 for padding."""
        cat, pop = self.item_category, self.item_popularity
        mass = np.bincount(cat[1:], weights=pop[1:], minlength=len(self.category_centroids))
        out = np.zeros(len(cat))
        out[1:] = pop[1:] / mass[cat[1:]]
        return out

    def mixture_probs(self, u: int, t: int, interest_mass: np.ndarray, interests: np.ndarray) -> np.ndarray:
        """(I,) the generator's P(item of event t of user u) from its parts (steps 12-13):

            (1 - rho) [(1 - x) interest_mass + x P_explore] + rep,

        with interest_mass (I,) the interest steps' distribution (sum_j P(z_t = j) P(i | j), summing
        to 1), P_explore spread over the categories outside `interests` (category ids) and rep, rho
        the repeats of the last `repeat_window` events before t. `next_item_probs` fills in the
        ground truth; a model of the user can fill in its own estimates."""
        cfg, ds = self.config, self.dataset
        outside = np.ones(len(self.category_centroids), dtype=bool)
        outside[np.asarray(interests, dtype=np.int64)] = False
        explore = np.where(outside[np.maximum(self.item_category, 0)], self.within_category_popularity, 0.0)
        n_back = min(t, cfg.repeat_window)
        out = (1 - cfg.repeat_prob * n_back / cfg.repeat_window) * (
            (1 - cfg.exploration) * interest_mass + cfg.exploration * explore / outside.sum())
        start = int(np.asarray(ds.offsets)[u]) + t
        np.add.at(out, np.asarray(ds.items)[start - n_back: start], cfg.repeat_prob / cfg.repeat_window)
        return out

    def save_ground_truth(self, path: str | os.PathLike) -> Path:
        """Write the interests as Parquet rows (user_id, category, category_name, weight), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds = self.dataset
        counts = np.diff(self.interest_offsets)
        names = np.asarray(ds.category_names, dtype=object)
        table = pa.table({
            "user_id": pa.array(np.repeat(np.asarray(ds.user_ids, dtype=object), counts).tolist(), type=pa.string()),
            "category": pa.array(self.interest_categories.astype(np.int32)),
            "category_name": pa.array(names[self.interest_categories].tolist(), type=pa.string()),
            "weight": pa.array(self.interest_weights.astype(np.float64)),
        })
        with atomic_file(path) as tmp:
            pq.write_table(table, tmp)
        return path

    def summary(self) -> str:
        k = np.diff(self.interest_offsets)
        return (
            f"{self.dataset.summary()}; interests per user mean {k.mean():.2f}, "
            f"exploration events {self.event_explore.mean():.1%}, repeats {self.event_repeat.mean():.1%}"
        )


def read_ground_truth(path: str | os.PathLike, user_ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a file written by `SyntheticWorld.save_ground_truth` back into CSR arrays.

    Returns (offsets (U + 1,) int64, categories (P,) int32, weights (P,) float64), with users in
    the order of `user_ids` (default: order of first appearance in the file); users absent from
    the file get no interests. Within a user the file's row order is kept.
    """
    t = pq.read_table(path, columns=["user_id", "category", "weight"])
    uid = np.asarray(t["user_id"].to_pylist(), dtype=object)
    if user_ids is None:
        _, first = np.unique(uid, return_index=True)
        user_ids = uid[np.sort(first)]
    index = {u: i for i, u in enumerate(np.asarray(user_ids, dtype=object).tolist())}
    row_user = np.fromiter((index.get(u, -1) for u in uid.tolist()), dtype=np.int64, count=len(uid))
    keep = row_user >= 0
    order = np.argsort(row_user[keep], kind="stable")
    cats = t["category"].to_numpy().astype(np.int32)[keep][order]
    weights = t["weight"].to_numpy().astype(np.float64)[keep][order]
    offsets = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_user[keep], minlength=len(index)), out=offsets[1:])
    return offsets, cats, weights


# ------------------------------------------------------------------ helpers
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def _category_names(C: int) -> list[str]:
    base = len(_CATEGORY_NAMES)
    return [_CATEGORY_NAMES[c % base] + ("" if c < base else f" {c // base + 1}") for c in range(C)]


def _segment_sample(cdf_flat: np.ndarray, seg: np.ndarray, seg_start: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling from many discrete distributions stored back to back.

    cdf_flat: (T,) concatenated per-segment CDFs shifted by the segment index (segment s's values
              lie in (s, s + 1], last one exactly s + 1); seg: (n,) segment of each draw;
    seg_start: (S,) first flat index of each segment; u: (n,) uniforms in [0, 1).
    Returns (n,) the flat index drawn (within the segment).
    """
    j = np.searchsorted(cdf_flat, seg + u, side="right")
    last = np.r_[seg_start[1:], len(cdf_flat)] - 1
    return np.minimum(j, last[seg])


def _make_catalogue(cfg: SyntheticConfig, rng: np.random.Generator) -> dict:
    N, C, D = cfg.n_items, cfg.n_categories, cfg.dim
    # 1. category sizes: at least 2 each, the rest by a power-law share over a random order
    share = np.arange(1, C + 1, dtype=np.float64) ** -cfg.category_size_exponent
    share = share[rng.permutation(C)]
    sizes = 2 + rng.multinomial(N - 2 * C, share / share.sum())  # (C,)
    # 2. primary category of items 1..N (random assignment), optional secondary
    primary = np.repeat(np.arange(C, dtype=np.int32), sizes)[rng.permutation(N)]  # (N,)
    has_sec = rng.random(N) < cfg.secondary_category_prob
    shift = rng.integers(1, C, size=N)  # uniform over the other categories
    secondary = np.where(has_sec, (primary + shift) % C, -1).astype(np.int32)
    # 3. Zipf popularity over a random rank order
    rank = rng.permutation(N) + 1
    pop = rank.astype(np.float64) ** -cfg.zipf_exponent  # (N,)
    # 4. embeddings
    centroids = _unit(rng.standard_normal((C, D)))  # (C, D)
    style = _unit(rng.standard_normal((N, D)))  # (N, D)
    emb = centroids[primary] + cfg.item_spread * style
    emb += np.where(has_sec[:, None], cfg.secondary_weight * centroids[np.maximum(secondary, 0)], 0.0)
    emb = _unit(emb)
    # 5. text
    names = _category_names(C)
    n_words = cfg.words_per_category
    pools = np.stack([rng.choice(len(_WORDS), size=n_words, replace=False) for _ in range(C)])  # (C, W)
    picks = np.argsort(rng.random((N, n_words)), axis=1)[:, :3]  # 3 distinct words per item
    word_ids = pools[primary[:, None], picks]  # (N, 3)
    order = np.argsort(primary, kind="stable")
    ordinal = np.empty(N, dtype=np.int64)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    ordinal[order] = np.arange(N) - np.repeat(starts, sizes) + 1
    text = [
        f"{names[p]} item {k}: {_WORDS[a]} {_WORDS[b]} {_WORDS[c]}" + (f", also {names[s]}" if s >= 0 else "")
        for p, k, (a, b, c), s in zip(primary.tolist(), ordinal.tolist(), word_ids.tolist(), secondary.tolist())
    ]
    return dict(sizes=sizes, primary=primary, secondary=secondary, pop=pop, centroids=centroids,
                style=style, emb=emb, names=names, text=text)


def _history_lengths(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    U = cfg.n_users
    lens = np.exp(rng.normal(math.log(cfg.history_median), cfg.history_sigma, size=U))
    lens = np.clip(np.rint(lens), cfg.min_history, cfg.max_history).astype(np.int64)
    if cfg.long_user_frac > 0:
        n_long = min(U, max(1, int(round(cfg.long_user_frac * U))))
        who = rng.choice(U, size=n_long, replace=False)
        lo = max(cfg.min_history, cfg.max_history / 4)
        long = np.exp(rng.uniform(math.log(lo), math.log(cfg.max_history), size=n_long))
        lens[who] = np.clip(np.rint(long), cfg.min_history, cfg.max_history).astype(np.int64)
        lens[who[0]] = cfg.max_history
    return lens


# ------------------------------------------------------------------ generate
_CHUNK_ENTRIES = 1 << 22  # max (groups x items) logits held at once when sampling interest steps


@dataclass
class _CategoryIndex:
    """Items grouped by primary category (CSR over categories) and each category's popularity mass."""

    items: np.ndarray  # (N,) 0-based item indices sorted by primary category (stable)
    start: np.ndarray  # (C,) int64 first position of each category in `items`
    sizes: np.ndarray  # (C,) items per category
    mass: np.ndarray  # (C,) float64 sum of pop_i over the category's items


@dataclass
class _Users:
    """Per-user ground truth drawn from the users stream (steps 6-10)."""

    k: np.ndarray  # (U,) number of interests K_u
    slot_ok: np.ndarray  # (U, K) bool, slot s < K_u
    weights: np.ndarray  # (U, K) float64, decreasing, 0 in unused slots, rows sum to 1
    categories: np.ndarray  # (U, K) int32 interest category per slot (draw order), -1 in unused slots
    taste: np.ndarray  # (U, K, D) float32 unit taste directions t_j
    lens: np.ndarray  # (U,) int64 history lengths L_u


@dataclass
class _Events:
    """All events drawn from the events stream (steps 11-15), users' events back to back."""

    offsets: np.ndarray  # (U + 1,) int64 CSR offsets of each user's events
    item0: np.ndarray  # (E,) int64 0-based item index (after repeats)
    state: np.ndarray  # (E,) latent interest category z_t
    explore: np.ndarray  # (E,) bool exploration kind (after repeats)
    repeat: np.ndarray  # (E,) bool the event re-consumes an earlier one
    actions: np.ndarray  # (E,) int16 action ids 1..A
    timestamps: np.ndarray  # (E,) int64


def generate(cfg: SyntheticConfig | None = None) -> SyntheticWorld:
    """Generate the world described in the module docstring; deterministic given `cfg`."""
    cfg = cfg or SyntheticConfig()
    ss_items, ss_users, ss_events = np.random.SeedSequence(cfg.seed).spawn(3)
    rng_i, rng_u, rng_e = (np.random.default_rng(s) for s in (ss_items, ss_users, ss_events))
    cat = _make_catalogue(cfg, rng_i)  # steps 1-5
    index = _category_index(cat, cfg.n_categories)
    users = _draw_users(cfg, index.mass, rng_u)  # steps 6-10
    events = _draw_events(cfg, cat, index, users, rng_e)  # steps 11-15
    ds = _assemble_dataset(cfg, cat, events)
    return _assemble_world(cfg, cat, users, events, ds)


def _category_index(cat: dict, C: int) -> _CategoryIndex:
    """Items of each category (0-based item index, CSR over categories) and the category masses."""
    sizes = cat["sizes"]
    return _CategoryIndex(
        items=np.argsort(cat["primary"], kind="stable"),
        start=np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64),
        sizes=sizes,
        mass=np.bincount(cat["primary"], weights=cat["pop"], minlength=C),
    )


def _draw_users(cfg: SyntheticConfig, cat_mass: np.ndarray, rng: np.random.Generator) -> _Users:
    """Interests, weights and tastes (steps 6-9), then history lengths (step 10), in that draw order."""
    U, C, D, K = cfg.n_users, cfg.n_categories, cfg.dim, cfg.max_interests
    k_u = rng.integers(cfg.min_interests, cfg.max_interests + 1, size=U)  # (U,)
    keys = np.log(cat_mass)[None, :] + rng.gumbel(size=(U, C))  # (U, C) Gumbel-top-k keys
    top = np.argsort(-keys, axis=1)[:, :K].astype(np.int32)  # (U, K) categories in draw order
    slot_ok = np.arange(K)[None, :] < k_u[:, None]  # (U, K)
    w = np.where(slot_ok, rng.gamma(cfg.interest_concentration, size=(U, K)), 0.0)
    w = -np.sort(-w, axis=1)  # decreasing; padded slots stay 0 at the end
    w /= w.sum(1, keepdims=True)
    taste = _unit(rng.standard_normal((U, K, D)).astype(np.float32))  # (U, K, D)
    lens = _history_lengths(cfg, rng)  # (U,)
    return _Users(k=k_u, slot_ok=slot_ok, weights=w, categories=np.where(slot_ok, top, -1), taste=taste, lens=lens)


def _draw_events(
    cfg: SyntheticConfig, cat: dict, index: _CategoryIndex, users: _Users, rng: np.random.Generator
) -> _Events:
    """Steps 11-15 for all events at once; the draws from `rng` happen in a fixed order."""
    lens = users.lens
    E = int(lens.sum())
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    user = np.repeat(np.arange(len(lens), dtype=np.int64), lens)  # (E,)
    pos = np.arange(E, dtype=np.int64) - offsets[user]  # (E,) position in the user's history
    slot = _interest_chain(cfg, users, user, pos, rng)  # (E,) step 11
    state = users.categories[user, slot]  # (E,) latent category z_t
    explore = rng.random(E) < cfg.exploration  # (E,) step 12
    item0 = np.empty(E, dtype=np.int64)  # 0-based item index
    ex = np.nonzero(explore)[0]
    item0[ex] = _exploration_items(cfg, cat["pop"], index, users, user[ex], rng)
    it = np.nonzero(~explore)[0]
    item0[it] = _interest_items(cfg, cat, index, users.taste, user[it], slot[it], state[it], rng)
    rep, src = _repeat_sources(cfg, pos, rng)  # step 13
    item0, explore = item0[src], explore[src]
    actions = _draw_actions(cfg, explore, rng)  # step 14
    timestamps = _draw_timestamps(cfg, offsets, lens, rng)  # step 15
    return _Events(offsets=offsets, item0=item0, state=state, explore=explore, repeat=rep,
                   actions=actions, timestamps=timestamps)


def _interest_chain(
    cfg: SyntheticConfig, users: _Users, user: np.ndarray, pos: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(E,) interest slot of every event (step 11): redraw points from w_u, forward filled."""
    E = len(user)
    redraw = rng.random(E) >= cfg.stickiness
    redraw[pos == 0] = True
    r_idx = np.nonzero(redraw)[0]
    cum_w = np.cumsum(users.weights, axis=1)  # (U, K)
    drawn = (rng.random(len(r_idx))[:, None] >= cum_w[user[r_idx]]).sum(1)
    slot_at = np.zeros(E, dtype=np.int64)
    slot_at[r_idx] = np.minimum(drawn, users.k[user[r_idx]] - 1)
    src = np.maximum.accumulate(np.where(redraw, np.arange(E, dtype=np.int64), 0))  # first event is a redraw
    return slot_at[src]


def _exploration_items(
    cfg: SyntheticConfig, pop: np.ndarray, index: _CategoryIndex, users: _Users, user_ex: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n,) items of the n exploration steps of users `user_ex`: a uniform category outside the
    user's interests, then an item of it with P(i) ∝ pop_i."""
    U, C, N = cfg.n_users, cfg.n_categories, cfg.n_items
    in_mask = np.zeros((U, C), dtype=bool)
    in_mask[np.repeat(np.arange(U), users.k), users.categories[users.slot_ok]] = True
    outside = np.argsort(in_mask, axis=1, kind="stable")  # (U, C): non-interest categories first
    r = np.floor(rng.random(len(user_ex)) * (C - users.k[user_ex])).astype(np.int64)
    ex_cat = outside[user_ex, r]  # (n,)
    seg = np.repeat(np.arange(C), index.sizes)  # (N,) category of each position in index.items
    cdf = np.cumsum(pop[index.items])
    cdf_before = np.r_[0.0, cdf][index.start]
    cdf_pop = (cdf - cdf_before[seg]) / index.mass[seg]  # (N,) per-category CDFs back to back
    cdf_pop[np.r_[index.start[1:], N] - 1] = 1.0
    j = _segment_sample(cdf_pop + seg, ex_cat, index.start, rng.random(len(user_ex)))
    return index.items[j]


def _interest_items(
    cfg: SyntheticConfig, cat: dict, index: _CategoryIndex, taste: np.ndarray, user_it: np.ndarray,
    slot_it: np.ndarray, cat_it: np.ndarray, rng: np.random.Generator,
) -> np.ndarray:
    """(n,) items of the n interest steps (users `user_it`, slots `slot_it`, categories `cat_it`):
    per category, P(i | interest j) ∝ pop_i * exp(strength * sqrt(D) <s_i, t_j>)."""
    C, D, K = cfg.n_categories, cfg.dim, cfg.max_interests
    u_it = rng.random(len(user_it))
    group = user_it * K + slot_it  # (n,) index into taste.reshape(U*K, D)
    by_cat = np.argsort(cat_it, kind="stable")
    bounds = np.searchsorted(cat_it[by_cat], np.arange(C + 1))
    taste_flat = taste.reshape(-1, D)  # (U*K, D)
    style = cat["style"].astype(np.float32)  # (N, D)
    logpop = np.log(cat["pop"])  # (N,)
    scale = cfg.affinity_strength * math.sqrt(D)
    out = np.empty(len(user_it), dtype=np.int64)
    for c in range(C):
        ev = by_cat[bounds[c] : bounds[c + 1]]  # positions of this category's steps
        if len(ev) == 0:
            continue
        members = index.items[index.start[c] : index.start[c] + index.sizes[c]]  # (n_c,)
        out[ev] = _sample_in_category(members, logpop[members], style[members], taste_flat, scale, group[ev], u_it[ev])
    return out


def _sample_in_category(
    members: np.ndarray, logpop_m: np.ndarray, style_m: np.ndarray, taste_flat: np.ndarray, scale: float,
    groups: np.ndarray, u: np.ndarray,
) -> np.ndarray:
    """(n,) items among `members` (n_c,) for n steps of (user, interest) `groups` (n,) with
    uniforms `u` (n,); the per-group CDFs are built in chunks of at most _CHUNK_ENTRIES entries."""
    n_c = len(members)
    uniq, inv = np.unique(groups, return_inverse=True)
    order = np.argsort(inv, kind="stable")  # steps grouped by group
    inv = np.sort(inv)
    out = np.empty(len(groups), dtype=np.int64)
    step = max(1, _CHUNK_ENTRIES // n_c)
    for g0 in range(0, len(uniq), step):
        g1 = min(g0 + step, len(uniq))
        a, b = np.searchsorted(inv, [g0, g1])
        logits = logpop_m[None, :] + scale * (taste_flat[uniq[g0:g1]] @ style_m.T)  # (G, n_c)
        logits -= logits.max(1, keepdims=True)
        cdf = np.cumsum(np.exp(logits), axis=1)
        cdf /= cdf[:, -1:]
        cdf[:, -1] = 1.0
        G = g1 - g0
        flat = (cdf + np.arange(G)[:, None]).ravel()
        local = inv[a:b] - g0
        jj = _segment_sample(flat, local, np.arange(G) * n_c, u[order[a:b]])
        out[order[a:b]] = members[jj - local * n_c]
    return out


def _repeat_sources(cfg: SyntheticConfig, pos: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Step 13: (E,) bool repeat flags and (E,) the event each one copies, resolved transitively
    by pointer jumping (itself for non-repeats)."""
    E = len(pos)
    rep = (rng.random(E) < cfg.repeat_prob) & (pos > 0)
    k_back = rng.integers(1, cfg.repeat_window + 1, size=E)
    rep &= pos >= k_back
    ar = np.arange(E, dtype=np.int64)
    ptr = np.where(rep, ar - k_back, ar)
    while True:
        nxt = ptr[ptr]
        if np.array_equal(nxt, ptr):
            return rep, ptr
        ptr = nxt


def _draw_actions(cfg: SyntheticConfig, explore: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Step 14: (E,) int16 action ids 1..A drawn by event kind (interest / exploration)."""
    probs = np.cumsum(np.array([cfg.interest_action_probs, cfg.explore_action_probs]), axis=1)  # (2, A)
    probs[:, -1] = 1.0
    A = len(cfg.action_names)
    actions = (rng.random(len(explore))[:, None] >= probs[explore.astype(np.int64)]).sum(1)
    return (np.minimum(actions, A - 1) + 1).astype(np.int16)


def _draw_timestamps(
    cfg: SyntheticConfig, offsets: np.ndarray, lens: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Step 15: (E,) int64 timestamps, per-user start + cumulative gaps of >= 1 s."""
    E, U = int(lens.sum()), len(lens)
    brk = rng.random(E) < cfg.session_break_prob
    gap_mean = np.where(brk, cfg.session_gap_s, cfg.within_session_gap_s)
    gaps = 1 + np.floor(rng.exponential(1.0, size=E) * gap_mean).astype(np.int64)
    start = cfg.start_time + np.floor(rng.random(U) * cfg.start_spread_days * 86_400).astype(np.int64)
    first = offsets[:-1]  # every user has >= min_history >= 1 events
    gaps[first] = start
    csum = np.cumsum(gaps)
    return (csum - np.repeat(csum[first] - start, lens)).astype(np.int64)


def _item_category_csr(cat: dict, I: int) -> tuple[np.ndarray, np.ndarray]:
    """(cat_offsets (I + 1,) int64, cat_ids int32): primary then secondary category of each item."""
    cat_counts = np.zeros(I, dtype=np.int64)
    cat_counts[1:] = 1 + (cat["secondary"] >= 0)
    cat_offsets = np.zeros(I + 1, dtype=np.int64)
    np.cumsum(cat_counts, out=cat_offsets[1:])
    both = np.stack([cat["primary"], cat["secondary"]], axis=1).ravel()  # (2N,) primary, secondary per item
    return cat_offsets, both[both >= 0].astype(np.int32)


def _assemble_dataset(cfg: SyntheticConfig, cat: dict, events: _Events) -> SequenceDataset:
    """The validated SequenceDataset of the events (ids "u0".. / "i1"..; item 0 = padding)."""
    U, I = cfg.n_users, cfg.n_items + 1
    cat_offsets, cat_ids = _item_category_csr(cat, I)
    ds = SequenceDataset(
        offsets=events.offsets,
        items=(events.item0 + 1).astype(np.int32),
        actions=events.actions,
        timestamps=events.timestamps,
        user_ids=np.array([f"u{u}" for u in range(U)], dtype=object),
        item_ids=np.array([""] + [f"i{i}" for i in range(1, I)], dtype=object),
        action_names=["<pad>", *cfg.action_names],
        cat_offsets=cat_offsets,
        cat_ids=cat_ids,
        category_names=list(cat["names"]),
        item_text=[None, *cat["text"]],
        info={"name": "synthetic", "generator": "crbr.data.synthetic", "config": asdict(cfg)},
    )
    ds.validate()
    return ds


def _assemble_world(
    cfg: SyntheticConfig, cat: dict, users: _Users, events: _Events, ds: SequenceDataset
) -> SyntheticWorld:
    """The SyntheticWorld: `ds` plus the ground truth, item arrays with row 0 = padding."""
    U, I, D = cfg.n_users, cfg.n_items + 1, cfg.dim
    item_emb = np.zeros((I, D), dtype=np.float32)
    item_emb[1:] = cat["emb"]
    interest_offsets = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(users.k, out=interest_offsets[1:])
    interest_categories = users.categories[users.slot_ok].astype(np.int32)  # (P,) row-major: per user, by slot
    interest_vectors = _unit(
        cat["centroids"][interest_categories] + cfg.item_spread * users.taste[users.slot_ok].astype(np.float64)
    ).astype(np.float32)  # (P, D)
    pop = cat["pop"]
    return SyntheticWorld(
        dataset=ds,
        item_embeddings=item_emb,
        item_category=np.r_[-1, cat["primary"]].astype(np.int32),
        item_secondary=np.r_[-1, cat["secondary"]].astype(np.int32),
        item_popularity=np.r_[0.0, pop / pop.sum()],
        category_centroids=cat["centroids"].astype(np.float32),
        interest_offsets=interest_offsets,
        interest_categories=interest_categories,
        interest_weights=users.weights[users.slot_ok].astype(np.float64),
        interest_vectors=interest_vectors,
        event_state=events.state.astype(np.int32),
        event_explore=events.explore,
        event_repeat=events.repeat,
        interest_tastes=users.taste[users.slot_ok].astype(np.float32),
        item_styles=np.r_[np.zeros((1, D)), cat["style"]].astype(np.float32),
        config=cfg,
    )
