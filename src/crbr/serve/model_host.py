"""The served model: one loaded checkpoint (+ optional item index and the catalogue of original
ids), how a request becomes the model's batch, and one batched model call for many requests.

A `Snapshot` is immutable once loaded: requests are prepared against the snapshot that is current
when they arrive and run on that same snapshot, so a reload (a new snapshot swapped in by
`ModelHost.reload`) never mixes one model's ids with another's and never fails a request in
flight. Three ways to rank, chosen at load:

  "index"  vector models with an index: `crbr.retrieval.retrieve` searches the model's query
           vectors in the index (per-item path provenance and, for CRBR, the beam codes)
  "exact"  ranking == "score" without an index: `model.rank` (the exact top-k of the full
           scores); models with multi-path query vectors (CRBR) also get each item's best path
  "rank"   ranking == "rank" (decoding models): `model.rank(..., control=, **options)`
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import read_metadata
from ..index import ItemIndex, Scope, load_index
from ..index.cli import CATALOGUE_JSON, Catalogue
from ..models import load_model
from ..models.base import Recommender
from ..retrieval import retrieve

log = logging.getLogger(__name__)

SHOWN_UNKNOWN = 100  # unknown ids listed in a response (the count is exact)


class RequestError(Exception):
    """A request the service cannot answer as asked: `field` names what is wrong (dotted path
    into the request body, e.g. "events[3].action"), `status` the HTTP status (4xx)."""

    def __init__(self, field: str, message: str, status: int = 422, kind: str = "value_error") -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status, self.kind = field, message, status, kind


class LoadError(RuntimeError):
    """A checkpoint / index / catalogue that cannot be served; the message says why."""


# ------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    model_s: float = 0.0
    index_s: float = 0.0


class TimedModel:
    """The model as `crbr.retrieval.retrieve` sees it, timing its query-vector calls (the rest of
    a retrieve call is the index search and the merge). A delegating wrapper: every other
    attribute is the model's own, so it stands in for the model wherever the contract is read."""

    def __init__(self, model: Recommender, timing: Timing) -> None:
        self._model, self._timing = model, timing

    def query_vectors(self, batch, **options):
        t0 = time.perf_counter()
        try:
            return self._model.query_vectors(batch, **options)
        finally:
            self._timing.model_s += time.perf_counter() - t0

    def item_vectors(self):
        return self._model.item_vectors()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


# ------------------------------------------------------------------------------- prepared requests
@dataclass(eq=False)
class Prepared:
    """One user's request in internal ids, ready for a batched model call."""

    snapshot: "Snapshot"
    prefix: str  # field prefix of this user in the request ("" or "users[3].")
    items: np.ndarray  # (n,) int64, the newest known events (n <= max_len), oldest first
    actions: np.ndarray  # (n,) int64
    timestamps: np.ndarray | None  # (n,) int64 when given and the dataset had them
    seen: np.ndarray  # unique internal ids of the whole known history
    k: int
    categories: list[int] | None
    allow: np.ndarray | None  # allow-listed internal ids (sorted, unique)
    exclude_seen: bool
    control: Any
    options: dict[str, Any]
    unknown: list[str]
    n_unknown: int
    unknown_scope: list[str] | None = None
    n_unknown_scope: int = 0

    @property
    def scoped(self) -> bool:
        return self.categories is not None or self.allow is not None

    def group_key(self) -> tuple:
        """Requests with equal keys run in one model call. Exact ranking serves any k from the
        longest list (a top-k list's prefix is the top-k' list); an index or a decoder is asked
        for each request's own k (it changes ANN search widths and beam widths)."""
        snap = self.snapshot
        k = None if snap.mode == "exact" else self.k
        opts = tuple(sorted((n, repr(v)) for n, v in self.options.items()))
        # an approximate index searched wider for excluded history: the width must not depend on the neighbours
        wider = len(self.seen) if self.exclude_seen and snap.index is not None and snap.index.kind not in ("exact", "flat") else 0
        return (id(snap), self.timestamps is not None, k, repr(self.control), opts, wider)


@dataclass
class Answer:
    """One user's answer: the JSON-ready response body (without the model version)."""

    body: dict[str, Any]


# ------------------------------------------------------------------------------- the snapshot
@dataclass(eq=False)
class Snapshot:
    """A loaded model with everything it needs to answer; never changed after loading."""

    model: Recommender
    meta: dict[str, Any]
    catalogue: Catalogue
    index: ItemIndex | None
    version: int
    checkpoint: str
    index_path: str | None
    mode: str
    loaded_at: float = field(default_factory=time.time)
    takes_control: bool = False
    explains: bool = False
    # lookups
    _sorted_ids: np.ndarray = field(default=None, repr=False)
    _sorted_rows: np.ndarray = field(default=None, repr=False)
    _item_ids: np.ndarray = field(default=None, repr=False)
    _actions: dict[str, int] = field(default_factory=dict, repr=False)
    _action_ids: dict[Any, int] = field(default_factory=dict, repr=False)
    _categories: dict[str, int] = field(default_factory=dict, repr=False)
    _cat_items: list[np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        ids = np.asarray(self.catalogue.item_ids[1:]).astype(str)
        order = np.argsort(ids, kind="stable")
        self._sorted_ids, self._sorted_rows = ids[order], (order + 1).astype(np.int64)
        self._item_ids = np.concatenate([[""], ids]).astype(str)
        self.catalogue.item_ids = self._item_ids  # one copy (fixed-width strings, not 1M Python objects)
        self._actions = {name: i for i, name in enumerate(self.catalogue.action_names) if i > 0}
        # every valid value of an event's action (none, a name, an id) -> its id, for one lookup per event
        self._action_ids = {None: self.catalogue.default_action, **self._actions,
                            **{i: i for i in range(1, len(self.catalogue.action_names))}}
        self._categories = {name: i for i, name in enumerate(self.catalogue.category_names)}

    # ------------------------------------------------------------------ facts
    @property
    def model_name(self) -> str:
        return str(self.meta.get("model_name", type(self.model).__name__))

    @property
    def n_items(self) -> int:
        return self.catalogue.n_items

    @property
    def max_len(self) -> int:
        return int(self.model.max_len)

    def info(self) -> dict[str, Any]:
        idx = None
        if self.index is not None:
            idx = {"path": self.index_path, "kind": self.index.kind, "ntotal": self.index.ntotal, "d": self.index.d,
                   "config": self.index.config.to_dict()}
        exp = self.meta.get("experiment") or {}
        data = exp.get("data") if isinstance(exp, dict) else None
        return {
            "model": self.model_name,
            "config": self.meta.get("model_config", {}),
            "dataset": self.catalogue.dataset or (data.get("name", "") if isinstance(data, dict) else ""),
            "catalogue_size": self.n_items,
            "categories": len(self.catalogue.category_names),
            "actions": self.catalogue.action_names[1:],
            "timestamps": self.catalogue.has_timestamps,
            "mode": self.mode,
            "index": idx,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": str(self.meta.get("crbr_sha256", "")),
            "model_version": self.version,
            "loaded_at": self.loaded_at,
        }

    # ------------------------------------------------------------------ lookups
    def lookup(self, ids: list[str]) -> np.ndarray:
        """Internal ids of original ids (0 = unknown)."""
        if not ids:
            return np.zeros(0, np.int64)
        q = np.asarray(ids, dtype=str)
        fits = None
        if q.dtype.itemsize > self._sorted_ids.dtype.itemsize:
            # an id longer than every catalogue id is unknown; searched at its own width, numpy would
            # first copy the whole sorted catalogue to that width (on every such request)
            fits = np.strings.str_len(q) <= self._sorted_ids.dtype.itemsize // 4
            q = np.where(fits, q, "").astype(self._sorted_ids.dtype)
        pos = np.searchsorted(self._sorted_ids, q).clip(max=len(self._sorted_ids) - 1)
        hit = self._sorted_ids[pos] == q
        if fits is not None:
            hit &= fits
        return np.where(hit, self._sorted_rows[pos], 0)

    def original(self, internal: np.ndarray) -> list[str]:
        return self._item_ids[np.asarray(internal, dtype=np.int64)].tolist()

    def category_id(self, c: str | int, where: str) -> int:
        if not self.catalogue.has_categories:
            raise RequestError(where, "this catalogue has no item categories")
        if isinstance(c, str):
            if c in self._categories:
                return self._categories[c]
            raise RequestError(where, f"unknown category {c!r}")
        if 0 <= c < len(self.catalogue.category_names):
            return int(c)
        raise RequestError(where, f"category id {c} is out of range 0..{len(self.catalogue.category_names) - 1}")

    def category_items(self) -> list[np.ndarray]:
        """Each category's items (sorted internal ids), built on first use."""
        if self._cat_items is None:
            off, cid = self.catalogue.cat_offsets, self.catalogue.cat_ids
            item = np.repeat(np.arange(len(off) - 1, dtype=np.int64), np.diff(off))
            order = np.argsort(cid, kind="stable")
            bounds = np.searchsorted(cid[order], np.arange(len(self.catalogue.category_names) + 1))
            items = item[order]
            self._cat_items = [np.sort(items[bounds[c]:bounds[c + 1]]) for c in range(len(bounds) - 1)]
        return self._cat_items

    def items_of_categories(self, cats: list[int]) -> np.ndarray:
        """Sorted internal ids of the items in any of `cats`."""
        parts = [self.category_items()[c] for c in cats]
        return sorted_unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    # ------------------------------------------------------------------ requests
    def prepare(self, q: Any, prefix: str = "") -> Prepared:
        """A validated request body (schemas.Query) in internal ids; RequestError naming the
        field for what the catalogue or the model cannot take."""
        events = q.events
        raw = [str(e.item) for e in events]
        rows = self.lookup(raw)
        known = rows > 0
        unknown = [] if known.all() else [raw[i] for i in np.flatnonzero(~known)]
        if not known.any():
            shown = ", ".join(repr(u) for u in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise RequestError(f"{prefix}events", f"no usable history: none of the {len(events)} event item(s) is in "
                                                  f"the catalogue ({shown})", kind="empty_history")
        actions = self._event_actions(events, prefix)
        stamps = [e.timestamp for e in events]
        n_missing = stamps.count(None)
        if 0 < n_missing < len(events):
            raise RequestError(f"{prefix}events[{stamps.index(None)}].timestamp",
                               "give a timestamp on every event or on none")
        ts = None
        if n_missing < len(events) and self.catalogue.has_timestamps:
            ts = np.asarray(stamps, dtype=np.int64)[known]
        L = self.max_len
        items, acts = rows[known].astype(np.int64)[-L:], actions[known][-L:]
        ts = None if ts is None else ts[-L:]
        seen = sorted_unique(rows[known])
        categories, allow, unknown_scope, n_unknown_scope, exclude_seen = self._scope(q.scope, prefix)
        control = self._control(q.control, prefix)
        options = dict(q.options or {})
        if "control" in options:
            raise RequestError(f"{prefix}options.control", "give the control token in the `control` field")
        return Prepared(self, prefix, items, acts, ts, seen, q.k, categories, allow, exclude_seen, control, options,
                        unknown[:SHOWN_UNKNOWN], len(unknown), unknown_scope, n_unknown_scope)

    def _event_actions(self, events: list[Any], prefix: str) -> np.ndarray:
        """(n,) int64 action ids of the events (the default action where none is given)."""
        given = [e.action for e in events]
        try:
            return np.array([self._action_ids[a] for a in given], dtype=np.int64)
        except (KeyError, TypeError):  # one is not an action: say which
            pass
        actions = np.empty(len(given), np.int64)
        for i, a in enumerate(given):
            if a is None:
                actions[i] = self.catalogue.default_action
            elif isinstance(a, str):
                if a not in self._actions:
                    raise RequestError(f"{prefix}events[{i}].action",
                                       f"unknown action {a!r}; actions: {', '.join(self._actions)}")
                actions[i] = self._actions[a]
            else:
                if not 1 <= a < len(self.catalogue.action_names):
                    raise RequestError(f"{prefix}events[{i}].action",
                                       f"action id {a} is out of range 1..{len(self.catalogue.action_names) - 1}")
                actions[i] = a
        return actions

    def _scope(self, s: Any, prefix: str) -> tuple:
        """(categories, allow, unknown_scope, n_unknown_scope, exclude_seen) of a request's scope."""
        if s is None:
            return None, None, None, 0, False
        categories = allow = unknown_scope = None
        n_unknown_scope = 0
        if s.categories is not None:
            categories = sorted({self.category_id(c, f"{prefix}scope.categories[{i}]")
                                 for i, c in enumerate(s.categories)})
        if s.items is not None:
            raw_s = [str(x) for x in s.items]
            r = self.lookup(raw_s)
            allow = sorted_unique(r[r > 0])
            unknown_scope = [raw_s[i] for i in np.flatnonzero(r == 0)]
            n_unknown_scope = len(unknown_scope)
            unknown_scope = unknown_scope[:SHOWN_UNKNOWN]
        return categories, allow, unknown_scope, n_unknown_scope, bool(s.exclude_seen)

    def _control(self, control: Any, prefix: str) -> Any:
        """A request's control token, with a category named in "cat:NAME" as its id."""
        if control is None:
            return None
        if not self.takes_control:
            raise RequestError(f"{prefix}control", f"the served model ({self.model_name}) takes no control token")
        if isinstance(control, str) and control.startswith("cat:"):
            name = control[4:]
            if name in self._categories:
                return f"cat:{self._categories[name]}"
            if not name.lstrip("-").isdigit():
                raise RequestError(f"{prefix}control", f"unknown category {name!r}")
        return control

    # ------------------------------------------------------------------ batched model calls
    def batch_of(self, group: list[Prepared]) -> dict[str, torch.Tensor]:
        """The model input of a group of requests: histories left-padded to the longest (the
        layout of crbr.data.batching.history_batch after trim_padding)."""
        B = len(group)
        L = max(len(p.items) for p in group)
        items = np.zeros((B, L), np.int64)
        actions = np.zeros((B, L), np.int64)
        ts = np.zeros((B, L), np.int64) if group[0].timestamps is not None else None
        for b, p in enumerate(group):
            n = len(p.items)
            items[b, L - n:] = p.items
            actions[b, L - n:] = p.actions
            if ts is not None:
                ts[b, L - n:] = p.timestamps
        batch = {"items": torch.from_numpy(items), "actions": torch.from_numpy(actions),
                 "lengths": torch.from_numpy((items > 0).sum(1).astype(np.int64))}
        if ts is not None:
            batch["timestamps"] = torch.from_numpy(ts)
        return batch

    def run(self, group: list[Prepared], timing: Timing | None = None) -> list[Answer]:
        """Answer a group of requests with equal `group_key` in one model call."""
        timing = timing if timing is not None else Timing()
        first = group[0]
        options = dict(first.options)
        try:
            with torch.no_grad():
                if self.mode == "index":
                    return self._run_index(group, options, timing)
                return self._run_rank(group, options, timing)
        except (TypeError, ValueError) as e:
            if first.control is None and not first.options:
                raise
            where = "control" if first.control is not None and not first.options else "options"
            raise RequestError(f"{first.prefix}{where}", f"the model does not take these settings: {e}") from None

    def _run_index(self, group: list[Prepared], options: dict[str, Any], timing: Timing) -> list[Answer]:
        batch = self.batch_of(group)
        k = max(p.k for p in group)
        extra = max((len(p.seen) for p in group if p.exclude_seen), default=0)
        per_vector_k = max(int(options.pop("per_vector_k", 0) or 0), k + extra)
        scopes = None
        if any(p.scoped for p in group):
            scopes = [self._index_scope(p) for p in group]
        t0 = time.perf_counter()
        model_before = timing.model_s
        res = retrieve(TimedModel(self.model, timing), batch, k + extra, index=self.index,
                       per_vector_k=per_vector_k, scope=scopes, **options)
        timing.index_s += time.perf_counter() - t0 - (timing.model_s - model_before)
        codes = res.queries.details.get("codes")
        path_scores = res.queries.details.get("path_scores")
        out = []
        for b, p in enumerate(group):
            ids, scores, path = res.ids[b], res.scores[b], res.path[b]
            keep = ids >= 0
            if p.exclude_seen and len(p.seen):
                keep &= ~in_sorted(ids, p.seen)
            ids, scores, path = ids[keep][: p.k], scores[keep][: p.k], path[keep][: p.k]
            out.append(self._answer(p, ids, scores, path, None if codes is None else codes[b],
                                    None if path_scores is None else path_scores[b]))
        return out

    def _index_scope(self, p: Prepared) -> Scope | None:
        if not p.scoped:
            return None
        if p.categories is not None and self.index.cat_offsets is not None:
            return Scope(categories=p.categories, items=p.allow)
        return Scope(items=self.scope_items(p))

    def scope_items(self, p: Prepared) -> np.ndarray:
        """Sorted internal ids a scoped request may get: its categories' items, its allow-list,
        or those on both."""
        if p.categories is None:
            return p.allow
        in_cats = self.items_of_categories(p.categories)
        return in_cats if p.allow is None else np.intersect1d(p.allow, in_cats, assume_unique=True)

    def _scope_row(self, row: np.ndarray, p: Prepared) -> None:
        """Set `row` ((I,) bool) True on exactly the items a scoped request may get (as
        `scope_items`, without building the sorted union of its categories)."""
        row[:] = False
        if p.categories is None:
            row[p.allow] = True
            return
        for c in p.categories:
            row[self.category_items()[c]] = True
        if p.allow is not None:
            listed = p.allow[row[p.allow]]
            row[:] = False
            row[listed] = True

    def _run_rank(self, group: list[Prepared], options: dict[str, Any], timing: Timing) -> list[Answer]:
        batch = self.batch_of(group)
        B, I = len(group), self.n_items + 1
        k = max(p.k for p in group)
        exclude = None
        if any(p.exclude_seen for p in group):
            H = max(len(p.seen) if p.exclude_seen else 0 for p in group)
            ex = np.zeros((B, max(H, 1)), np.int64)
            for b, p in enumerate(group):
                if p.exclude_seen:
                    ex[b, : len(p.seen)] = p.seen
            exclude = torch.from_numpy(ex)
        scope = None
        if any(p.scoped for p in group):
            mask = np.ones((B, I), dtype=bool)
            for b, p in enumerate(group):
                if p.scoped:
                    self._scope_row(mask[b], p)
            scope = torch.from_numpy(mask)
        kwargs = dict(options)
        if first_control(group) is not None:
            kwargs["control"] = first_control(group)
        t0 = time.perf_counter()
        ranked = self.model.rank(batch, k, exclude=exclude, scope=scope, **kwargs)
        path = codes = path_scores = None
        if self.explains:
            qv = self.model.query_vectors(batch, **options)
            V = self.model.item_vectors()
            it = ranked.items
            s = torch.einsum("btd,bkd->btk", qv.vectors.float(), V[it].float()) + qv.offsets.float()[:, :, None]
            path = s.argmax(1).numpy()
            codes = qv.details.get("codes")
            path_scores = qv.details.get("path_scores")
        timing.model_s += time.perf_counter() - t0
        items, scores = ranked.items.numpy(), ranked.scores.numpy()
        out = []
        for b, p in enumerate(group):
            keep = (items[b] > 0) & np.isfinite(scores[b])
            ids, sc = items[b][keep][: p.k], scores[b][keep][: p.k]
            pa = None if path is None else path[b][keep][: p.k]
            out.append(self._answer(p, ids, sc, pa, None if codes is None else codes[b],
                                    None if path_scores is None else path_scores[b]))
        return out

    def _answer(self, p: Prepared, ids: np.ndarray, scores: np.ndarray, path: np.ndarray | None,
                codes: torch.Tensor | None, path_scores: torch.Tensor | None) -> Answer:
        finite = np.isfinite(scores)
        if not finite.all():
            ids, scores, path = ids[finite], scores[finite], None if path is None else path[finite]
        names, values = self.original(ids), scores.tolist()
        code_rows = None if codes is None else codes.tolist()
        if path is None:
            items = [{"item": n, "score": v} for n, v in zip(names, values)]
        elif code_rows is None:
            items = [{"item": n, "score": v, "path": t} for n, v, t in zip(names, values, path.tolist())]
        else:
            items = [{"item": n, "score": v, "path": t, "codes": code_rows[t]}
                     for n, v, t in zip(names, values, path.tolist())]
        body: dict[str, Any] = {
            "items": items,
            "k": p.k,
            "unknown_items": {"count": p.n_unknown, "items": p.unknown},
            "model_version": self.version,
        }
        if p.unknown_scope is not None:
            body["unknown_scope_items"] = {"count": p.n_unknown_scope, "items": p.unknown_scope}
        if code_rows is not None:
            ps = None if path_scores is None else path_scores.float().tolist()
            body["paths"] = [{"path": t, "score": None if ps is None else ps[t], "codes": c}
                             for t, c in enumerate(code_rows)]
        return Answer(body)


def first_control(group: list[Prepared]) -> Any:
    return group[0].control


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique of a 1-d array, by sorting: numpy's hash-based unique is many times slower on
    the tens of thousands of ids of a large category or allow-list."""
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


def in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """np.isin(values, sorted_set) for a sorted, non-empty `sorted_set`, by binary search."""
    pos = np.searchsorted(sorted_set, values).clip(max=len(sorted_set) - 1)
    return sorted_set[pos] == values


# ------------------------------------------------------------------------------- loading
def load_snapshot(checkpoint: str, index_path: str | None = None, catalogue_path: str | None = None,
                  version: int = 1, index_params: dict[str, Any] | None = None,
                  allow_index_mismatch: bool = False) -> Snapshot:
    """Load and check everything a service needs; a LoadError says what is wrong. Files are read
    only from the given paths: safetensors weights (integrity-checked), a saved item index, and a
    catalogue (JSON, Parquet and a pickle-free .npz)."""
    try:
        model, meta = load_model(checkpoint)
        meta["crbr_sha256"] = read_metadata(checkpoint).get("crbr_sha256", "")
    except (OSError, ValueError) as e:
        raise LoadError(f"checkpoint {checkpoint}: {e}") from e
    model.eval()
    try:
        if catalogue_path:
            catalogue = Catalogue.load(catalogue_path)
        elif index_path and Catalogue.exists(index_path):
            catalogue = Catalogue.load(index_path)
        else:
            catalogue = Catalogue.from_checkpoint(checkpoint)
    except (OSError, ValueError, KeyError) as e:
        raise LoadError(f"catalogue: {e}") from e
    sha = meta.get("crbr_sha256", "")
    try:
        n = model.n_items
    except TypeError as e:
        raise LoadError(f"checkpoint {checkpoint}: {e}") from e
    if n != catalogue.n_items:
        raise LoadError(f"the catalogue has {catalogue.n_items:,} items, the model {n:,}: they are not of one dataset")
    index = None
    if index_path:
        if model.ranking != "score" or model.vector_scores is None:
            raise LoadError(f"a {type(model).__name__} ranks without item vectors (vector_scores is None"
                            f"{', ranking = rank' if model.ranking != 'score' else ''}): serve it without an index")
        try:
            index = load_index(index_path)
            if index_params:
                index.tune(**index_params)
        except (OSError, ValueError, RuntimeError) as e:
            raise LoadError(f"index {index_path}: {e}") from e
        built_for = ""
        if Catalogue.exists(index_path):  # the checkpoint the index's vectors came from
            built_for = json.loads((Path(index_path) / CATALOGUE_JSON).read_text()).get("checkpoint_sha256", "")
        if built_for and sha and built_for != sha and not allow_index_mismatch:
            raise LoadError(f"the index at {index_path} was built from another checkpoint (sha256 {built_for[:12]}..., "
                            f"this one {sha[:12]}...): its item vectors are not this model's; rebuild it with "
                            "`crbr index build --checkpoint` (or allow the mismatch explicitly)")
        with torch.no_grad():
            d = int(model.item_vectors().shape[1])
        if index.d != d:
            raise LoadError(f"index {index_path}: vectors of size {index.d}, the model's are {d}")
        if index.ntotal and int(index.ids[-1]) > catalogue.n_items:
            raise LoadError(f"index {index_path}: holds item id {int(index.ids[-1])}, the catalogue has "
                            f"{catalogue.n_items:,} items")
    mode = "index" if index is not None else ("exact" if model.ranking == "score" else "rank")
    takes_control = "control" in model.rank_options
    snap = Snapshot(model, meta, catalogue, index, version, str(checkpoint), str(index_path) if index_path else None,
                    mode, takes_control=takes_control)
    # CRBR-like models: query vectors with details (beam codes) explain each returned item
    if mode == "exact" and model.vector_scores is not None:
        try:
            with torch.no_grad():
                qv = model.query_vectors(snap.batch_of([_probe(snap)]))
            snap.explains = bool(qv.details) and "codes" in qv.details
        except (NotImplementedError, TypeError, ValueError):
            snap.explains = False
    try:  # one request end to end before the snapshot may serve
        snap.run([_probe(snap)])
    except Exception as e:  # noqa: BLE001  (any failure means: do not serve this snapshot)
        raise LoadError(f"a test request failed on the loaded model: {type(e).__name__}: {e}") from e
    return snap


def _probe(snap: Snapshot) -> Prepared:
    ts = np.zeros(1, np.int64) if snap.catalogue.has_timestamps else None
    return Prepared(snap, "", np.ones(1, np.int64), np.full(1, snap.catalogue.default_action, np.int64), ts,
                    np.ones(1, np.int64), 1, None, None, False, None, {}, [], 0)


# ------------------------------------------------------------------------------- the host
@dataclass
class ReloadStatus:
    ok: bool
    at: float
    seconds: float
    version: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ModelHost:
    """Holds the current snapshot; `reload()` loads the configured files anew and swaps them in
    only when everything loaded and answered a test request (else the old one keeps serving)."""

    def __init__(self, checkpoint: str, index: str | None = None, catalogue: str | None = None,
                 index_params: dict[str, Any] | None = None, allow_index_mismatch: bool = False) -> None:
        self.checkpoint = str(Path(checkpoint))
        self.index = str(Path(index)) if index else None
        self.catalogue = str(Path(catalogue)) if catalogue else None
        self.index_params = dict(index_params or {})
        self.allow_index_mismatch = allow_index_mismatch
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()  # one load at a time
        self._version = 0
        self.last_reload: ReloadStatus | None = None

    @property
    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is None:
            raise RuntimeError("no model loaded yet")
        return snap

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    def load(self) -> Snapshot:
        """Load the configured files (the first load: errors propagate)."""
        with self._lock:
            snap = load_snapshot(self.checkpoint, self.index, self.catalogue, self._version + 1, self.index_params,
                                 self.allow_index_mismatch)
            self._version += 1
            self._snapshot = snap
            log.info("serving %s (%s, mode %s, %s) as version %d", self.checkpoint, snap.model_name, snap.mode,
                     snap.catalogue, snap.version)
            return snap

    def reload(self) -> ReloadStatus:
        """Load the configured files again and swap them in; on failure keep the current model
        and report why. Requests already prepared keep running on the snapshot they were
        prepared with."""
        t0 = time.perf_counter()
        try:
            snap = self.load()
            status = ReloadStatus(True, time.time(), time.perf_counter() - t0, snap.version)
        except Exception as e:  # noqa: BLE001  (a failed reload must never stop the service)
            log.error("reload failed, still serving version %d: %s", self._version, e)
            status = ReloadStatus(False, time.time(), time.perf_counter() - t0, self._version,
                                  f"{type(e).__name__}: {e}")
        self.last_reload = status
        return status
