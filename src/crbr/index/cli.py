"""`crbr index build` and `crbr retrieve` (parsers in crbr.cli.main).

  crbr index build --vectors items.npy --kind hnsw --param M=16 --param ef_search=128 \
      [--ids ids.npy] [--categories-from CONFIG.yaml | DATASET_DIR] --out idx/
  crbr retrieve --index idx/ --queries users.npy -k 100 [--categories 3,5] [--param ef_search=256] \
      --out top.parquet|csv

Vectors: .npy (I, d), row i = item id i, row 0 = padding (what `crbr features --out x.npy`
writes), or (n, d) with --ids. The retrieve output is long format, one row per (query, rank):
query (row of the queries file), rank (1-based), item_id, score; padding is omitted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def _params(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise ValueError(f"--param: expected name=value, got {p!r}")
        out[name.strip()] = value.strip()
    return out


def _threads(n: int) -> None:
    if n > 0:
        import faiss
        import torch

        faiss.omp_set_num_threads(n)
        torch.set_num_threads(n)


def _categories_from(path: str):
    """A SequenceDataset (carries cat_offsets / cat_ids / category_names) from a processed dataset
    directory or an experiment config (prepared / loaded from its cache as `crbr train` does)."""
    from ..data.dataset import SequenceDataset

    p = Path(path)
    if p.is_dir():
        ds = SequenceDataset.load(p)
    else:
        from ..config import load_config
        from ..data.prepare import prepare

        ds = prepare(load_config(p).data)
    if ds.cat_offsets is None:
        raise ValueError(f"{path}: the dataset has no item categories")
    return ds


def cmd_index_build(args) -> int:
    from . import IndexConfig, build_index

    _threads(args.threads)
    vectors = np.load(args.vectors, mmap_mode="r")
    ids = np.load(args.ids) if args.ids else None
    cats = _categories_from(args.categories_from) if args.categories_from else None
    cfg = IndexConfig.from_params(args.kind, _params(args.param))
    t0 = time.perf_counter()
    index = build_index(vectors, cfg, item_categories=cats, ids=ids)
    secs = time.perf_counter() - t0
    out = index.save(args.out)
    n_cat = 0 if index.cat_offsets is None else len(index._cat_pos_offsets) - 1
    print(f"{index!r}: built in {secs:.1f}s, {index.nbytes() / 2**20:.1f} MiB"
          + (f", {n_cat} categories" if n_cat else "") + f"; wrote {out}")
    return 0


def cmd_retrieve(args) -> int:
    import pyarrow as pa

    from . import Scope, load_index

    _threads(args.threads)
    index = load_index(args.index)
    if args.param:
        index.tune(**_params(args.param))
    queries = np.load(args.queries)
    scope = None
    if args.categories:
        scope = Scope(categories=[index.category_id(c.strip()) for c in args.categories.split(",") if c.strip()])
    t0 = time.perf_counter()
    res = index.search(queries, args.k, scope=scope)
    secs = time.perf_counter() - t0
    Q, k = res.ids.shape
    keep = (res.ids >= 0).reshape(-1)
    table = pa.table({
        "query": pa.array(np.repeat(np.arange(Q, dtype=np.int64), k)[keep]),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), Q)[keep]),
        "item_id": pa.array(res.ids.reshape(-1)[keep]),
        "score": pa.array(res.scores.reshape(-1)[keep]),
    })
    from ..fileio import write_table

    path = write_table(table, args.out)
    print(f"{index!r}: top-{k} of {Q:,} queries in {secs:.2f}s ({Q / max(secs, 1e-9):,.0f} queries/s)"
          + (f", scope categories {args.categories}" if scope else "") + f"; {int(keep.sum()):,} rows -> {path}")
    return 0


# ------------------------------------------------------------------------------ serving catalogue
CATALOGUE_FORMAT = 1
CATALOGUE_JSON = "catalogue.json"
CATALOGUE_ITEMS = "catalogue_items.parquet"
CATALOGUE_CATEGORIES = "catalogue_categories.npz"


class Catalogue:
    """What a service needs of a dataset to answer in original ids, without the dataset:

    item_ids:       (I,) original item id of each internal id (row 0 = padding, "")
    action_names:   the action vocabulary (action_names[0] = "<pad>")
    default_action: the action id of an event given without one (the dataset's most common)
    category_names: category id -> name ([] without categories)
    cat_offsets, cat_ids: item -> categories CSR (None without categories)
    has_timestamps: whether the dataset's events had timestamps (the model may read them)
    dataset:        the dataset's name
    checkpoint_sha256: the integrity hash of the checkpoint it was written for ("" = any)

    Written by `crbr index build --checkpoint` (next to the index) and `crbr index catalogue`:
    catalogue.json (sizes, names), catalogue_items.parquet (item_id by internal id),
    catalogue_categories.npz (the CSR, read without pickle).
    """

    def __init__(self, item_ids, action_names, default_action: int = 1, category_names=(),
                 cat_offsets=None, cat_ids=None, has_timestamps: bool = False, dataset: str = "",
                 checkpoint_sha256: str = "", model_name: str = "") -> None:
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.action_names = [str(a) for a in action_names]
        self.default_action = int(default_action)
        self.category_names = [str(c) for c in category_names]
        self.cat_offsets = None if cat_offsets is None else np.asarray(cat_offsets, dtype=np.int64)
        self.cat_ids = None if cat_ids is None else np.asarray(cat_ids, dtype=np.int32)
        self.has_timestamps = bool(has_timestamps)
        self.dataset = str(dataset)
        self.checkpoint_sha256 = str(checkpoint_sha256 or "")
        self.model_name = str(model_name or "")
        if len(self.item_ids) < 2:
            raise ValueError("catalogue: needs the padding row and at least one item")
        if len(self.action_names) < 2:
            raise ValueError("catalogue: needs the padding action and at least one action")
        if not 1 <= self.default_action < len(self.action_names):
            raise ValueError(f"catalogue: default_action {self.default_action} is not an action id")
        if (self.cat_offsets is None) != (self.cat_ids is None):
            raise ValueError("catalogue: cat_offsets and cat_ids go together")
        if self.cat_offsets is not None:
            off = self.cat_offsets
            if len(off) != len(self.item_ids) + 1 or off[0] != 0 or off[-1] != len(self.cat_ids) or np.any(np.diff(off) < 0):
                raise ValueError("catalogue: the category CSR does not match the items")
            if len(self.cat_ids) and (self.cat_ids.min() < 0 or self.cat_ids.max() >= max(len(self.category_names), 1)):
                raise ValueError("catalogue: category ids outside the category names")

    @property
    def n_items(self) -> int:
        """Real items (ids 1..n_items)."""
        return len(self.item_ids) - 1

    @property
    def has_categories(self) -> bool:
        return self.cat_offsets is not None

    def __repr__(self) -> str:
        return (f"Catalogue({self.dataset!r}, {self.n_items:,} items, {len(self.action_names) - 1} actions, "
                f"{len(self.category_names)} categories)")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dataset(cls, ds, checkpoint_sha256: str = "", model_name: str = "") -> "Catalogue":
        actions = np.asarray(ds.actions)
        counts = np.bincount(actions, minlength=ds.n_actions) if len(actions) else np.zeros(ds.n_actions, np.int64)
        counts[0] = -1  # never the padding action
        default = int(np.argmax(counts)) if ds.n_actions > 1 else 1
        return cls(ds.item_ids, ds.action_names, default, ds.category_names if ds.cat_offsets is not None else (),
                   ds.cat_offsets, ds.cat_ids, ds.timestamps is not None, ds.info.get("name", ""),
                   checkpoint_sha256, model_name)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path) -> "Catalogue":
        """The catalogue of the dataset named by the experiment config inside a checkpoint
        (prepared or read from crbr's data cache, as `crbr evaluate` does)."""
        from ..checkpoint import read_metadata
        from ..config import ExperimentConfig, from_dict
        from ..data.prepare import prepare

        meta = read_metadata(checkpoint)
        exp = meta.get("experiment")
        if not isinstance(exp, dict) or not exp:
            raise ValueError(f"{checkpoint}: the checkpoint carries no experiment config to find its dataset; "
                             "give a catalogue written with it (crbr index catalogue)")
        cfg = from_dict(ExperimentConfig, exp)
        ds = prepare(cfg.data)
        cat = cls.from_dataset(ds, meta.get("crbr_sha256", ""), meta.get("model_name", ""))
        cat.dataset = cat.dataset or cfg.data.name
        return cat

    # ------------------------------------------------------------------ files
    @staticmethod
    def exists(path: str | Path) -> bool:
        return (Path(path) / CATALOGUE_JSON).is_file()

    def save(self, path: str | Path) -> Path:
        """Write the catalogue files into folder `path` (each atomically; catalogue.json last)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..fileio import atomic_file, atomic_write_text

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_file(path / CATALOGUE_ITEMS) as tmp:
            pq.write_table(pa.table({"item_id": pa.array(self.item_ids.astype(str))}), tmp)
        if self.has_categories:
            with atomic_file(path / CATALOGUE_CATEGORIES) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, cat_offsets=self.cat_offsets, cat_ids=self.cat_ids)
        meta = {"format_version": CATALOGUE_FORMAT, "dataset": self.dataset, "n_items": self.n_items,
                "action_names": self.action_names, "default_action": self.default_action,
                "category_names": self.category_names, "has_categories": self.has_categories,
                "has_timestamps": self.has_timestamps, "checkpoint_sha256": self.checkpoint_sha256,
                "model_name": self.model_name}
        atomic_write_text(path / CATALOGUE_JSON, json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Catalogue":
        import pyarrow.parquet as pq

        path = Path(path)
        f = path / CATALOGUE_JSON
        if not f.is_file():
            raise FileNotFoundError(f"{path}: no {CATALOGUE_JSON} (write one with `crbr index catalogue` or "
                                    "`crbr index build --checkpoint`)")
        try:
            meta = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not valid JSON ({e})") from None
        if meta.get("format_version") != CATALOGUE_FORMAT:
            raise ValueError(f"{f}: catalogue format {meta.get('format_version')!r} is not {CATALOGUE_FORMAT}")
        ids = pq.read_table(path / CATALOGUE_ITEMS)["item_id"].to_pylist()
        off = cid = None
        if meta.get("has_categories"):
            with np.load(path / CATALOGUE_CATEGORIES, allow_pickle=False) as z:
                off, cid = z["cat_offsets"], z["cat_ids"]
        if len(ids) != int(meta["n_items"]) + 1:
            raise ValueError(f"{path}: {len(ids)} item ids for n_items {meta['n_items']} (+ padding)")
        return cls(ids, meta["action_names"], meta["default_action"], meta.get("category_names", []), off, cid,
                   meta.get("has_timestamps", False), meta.get("dataset", ""), meta.get("checkpoint_sha256", ""),
                   meta.get("model_name", ""))


# ------------------------------------------------------------------------------ from a checkpoint
def _load_checkpoint_model(path: str):
    from ..checkpoint import read_metadata
    from ..models import load_model

    model, meta = load_model(path)
    meta.setdefault("crbr_sha256", read_metadata(path).get("crbr_sha256", ""))
    return model, meta


def _need_vectors(model, path: str) -> None:
    if getattr(model, "ranking", "score") != "score" or model.vector_scores is None:
        raise ValueError(f"{path}: a {type(model).__name__} ranks without item vectors "
                         f"(vector_scores is None{', ranking = rank' if model.ranking != 'score' else ''}), so "
                         "it has no item index; serve or query it exactly (without --index)")


def _catalogue_for(args, meta) -> Catalogue:
    if getattr(args, "catalogue", None):
        return Catalogue.load(args.catalogue)
    return Catalogue.from_checkpoint(args.checkpoint)


def build_from_checkpoint(args) -> int:
    """`crbr index build --checkpoint CKPT --out DIR`: an index over the model's item vectors,
    with the item categories of its dataset, and the catalogue a service needs beside it."""
    import torch

    from . import IndexConfig, build_index

    model, meta = _load_checkpoint_model(args.checkpoint)
    _need_vectors(model, args.checkpoint)
    cat = _catalogue_for(args, meta)
    cat.checkpoint_sha256 = meta.get("crbr_sha256", "")
    cat.model_name = meta.get("model_name", "")
    with torch.no_grad():
        vectors = model.item_vectors().detach().to("cpu", torch.float32).numpy()
    if len(vectors) != cat.n_items + 1:
        raise ValueError(f"{args.checkpoint}: the model has {len(vectors) - 1:,} items, its dataset {cat.n_items:,}")
    cfg = IndexConfig.from_params(args.kind, _params(args.param))
    cats = (cat.cat_offsets, cat.cat_ids) if cat.has_categories else None
    t0 = time.perf_counter()
    index = build_index(vectors, cfg, item_categories=cats)
    index.category_names = list(cat.category_names) if cats is not None else []
    secs = time.perf_counter() - t0
    out = index.save(args.out)
    cat.save(out)
    print(f"{index!r} over the item vectors of {meta.get('model_name')} ({args.checkpoint}): built in {secs:.1f}s, "
          f"{index.nbytes() / 2**20:.1f} MiB; catalogue of {cat.n_items:,} items; wrote {out}")
    return 0


def cmd_catalogue(args) -> int:
    """`crbr index catalogue --checkpoint CKPT --out DIR`: the id maps a service needs (for a
    model served exactly, without an index)."""
    _, meta = _load_checkpoint_model(args.checkpoint)
    cat = Catalogue.from_checkpoint(args.checkpoint)
    out = cat.save(args.out)
    print(f"{cat!r} for {meta.get('model_name')} ({args.checkpoint}); wrote {out}")
    return 0


def _user_rows(ds, es, users: str | None, limit: int) -> np.ndarray:
    """Rows into the EvalSet `es` of the users to query: the named original ids, else the first `limit` (0 = all)."""
    if users:
        wanted = [u.strip() for u in users.split(",") if u.strip()]
        pos = {str(ds.user_ids[u]): i for i, u in enumerate(es.users)}
        missing = [u for u in wanted if u not in pos]
        if missing:
            raise ValueError(f"--users: {len(missing)} user id(s) not in the evaluated users: {', '.join(missing[:5])}")
        return np.asarray([pos[u] for u in wanted], dtype=np.int64)
    n = len(es) if limit <= 0 else min(limit, len(es))
    return np.arange(n, dtype=np.int64)


def retrieve_from_checkpoint(args) -> int:
    """`crbr retrieve --checkpoint CKPT [--index DIR]`: the top-k items of a dataset's users from
    the model's query vectors searched in the index (exact over its item vectors without one), or
    from the model's own ranking for models without vectors. Output in original ids: user_id,
    rank, item_id, score, path (which query vector found the item; 0 for one-vector models)."""
    import pyarrow as pa
    import torch

    from ..config import ExperimentConfig, from_dict
    from ..data.batching import history_batch, trim_padding
    from ..data.prepare import prepare_with_split
    from ..fileio import write_table
    from . import Scope, SearchResult, build_index, load_index, merge_results

    model, meta = _load_checkpoint_model(args.checkpoint)
    cfg = from_dict(ExperimentConfig, meta["experiment"])
    ds, split = prepare_with_split(cfg)
    es = split.test if args.split == "test" else split.valid
    rows = _user_rows(ds, es, args.users, args.limit)
    index = None
    if args.index:
        _need_vectors(model, args.checkpoint)
        index = load_index(args.index)
        if args.param:
            index.tune(**_params(args.param))
    in_scope = ds.category_scope(args.categories) if args.categories else None  # (I,) bool
    options = rank_options(model, args, ds)
    vectors = model.vector_scores is not None and model.ranking == "score"
    if vectors and options:
        raise ValueError(f"--control / --rank-option: model {model.model_name!r} is searched through its vectors "
                         "in an index; its rank() options do not apply")
    if vectors and index is None:
        with torch.no_grad():
            index = build_index(model.item_vectors(), "exact")
    scope = None
    if vectors and in_scope is not None:
        scope = Scope(items=np.nonzero(in_scope)[0])
    t0 = time.perf_counter()
    out_ids, out_scores, out_path = [], [], []
    for s in range(0, len(rows), args.batch_size):
        r = rows[s : s + args.batch_size]
        batch = trim_padding(history_batch(ds, es.users[r], es.hist_len[r], model.max_len))
        with torch.no_grad():
            if vectors:
                qv = model.query_vectors(batch)
                U, T, D = qv.vectors.shape
                flat = index.search(qv.vectors.reshape(U * T, D).cpu().numpy(), args.k, scope)
                sc = flat.scores.reshape(U, T, -1) + qv.offsets.float().cpu().numpy()[:, :, None]
                ids = flat.ids.reshape(U, T, -1)
                merged = merge_results([SearchResult(sc[:, t], ids[:, t]) for t in range(T)], args.k)
                out_ids.append(merged.ids)
                out_scores.append(merged.scores)
                out_path.append(merged.sources.astype(np.int64))
            else:
                mask = None if in_scope is None else torch.from_numpy(in_scope)
                ranked = model.rank(batch, args.k, scope=mask, **options)
                ids = ranked.items.numpy()
                out_ids.append(np.where(ids > 0, ids, -1))
                out_scores.append(ranked.scores.numpy())
                out_path.append(np.where(ids > 0, 0, -1))
    secs = time.perf_counter() - t0
    ids = np.concatenate(out_ids) if out_ids else np.zeros((0, args.k), np.int64)
    scores = np.concatenate(out_scores) if out_scores else np.zeros((0, args.k), np.float32)
    path = np.concatenate(out_path) if out_path else np.zeros((0, args.k), np.int64)
    Q, k = ids.shape
    keep = (ids >= 0).reshape(-1)
    users = np.asarray(ds.user_ids, dtype=object)[es.users[rows]].astype(str)
    table = pa.table({
        "user_id": pa.array(np.repeat(users, k)[keep]),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), Q)[keep]),
        "item_id": pa.array(np.asarray(ds.item_ids, dtype=object)[ids.reshape(-1)[keep]].astype(str)),
        "score": pa.array(scores.reshape(-1)[keep].astype(np.float32)),
        "path": pa.array(path.reshape(-1)[keep].astype(np.int32)),
    })
    written = write_table(table, args.out)
    how = repr(index) if vectors else f"{type(model).__name__}.rank (exact)"
    print(f"{meta.get('model_name')} ({args.checkpoint}) via {how}: top-{k} of {Q:,} {args.split} users in {secs:.2f}s"
          + (f", scope categories {args.categories}" if args.categories else "") + f"; {int(keep.sum()):,} rows -> {written}")
    return 0


def add_rank_option_args(p, prefix: str = "") -> None:
    """--control and --rank-option, for commands that call a model's rank()."""
    p.add_argument("--control", help=prefix + "a control token for models that take one (generative, dgi): explore, "
                                       "repeat, cat:ID or cat:NAME")
    p.add_argument("--rank-option", action="append", metavar="NAME=VALUE",
                   help=prefix + "an inference option the model declares (e.g. beam=100 for the generative models)")


def rank_options(model, args, ds=None) -> dict:
    """The inference options of `--control` and `--rank-option NAME=VALUE`, checked against the
    options the model declares (`rank_options`); `--control cat:NAME` takes a category name of
    the dataset `ds` as well as an id."""
    from ..settings import call_options

    pairs = list(args.rank_option or [])
    if args.control:
        pairs.append(f"control={args.control}")
    opts = call_options(pairs, model.rank_options, f"model {model.model_name!r}")
    if "control" in opts:
        ctrl = str(opts["control"])
        if ctrl.startswith("cat:") and ds is not None and ctrl[4:] in ds.category_names:
            ctrl = f"cat:{ds.category_names.index(ctrl[4:])}"
        opts["control"] = ctrl
    return opts


# ------------------------------------------------------------------------------ parsers
def extend_parsers(build, retrieve, index_subparsers=None) -> None:
    """Add the checkpoint options to the `crbr index build` and `crbr retrieve` parsers (built in
    crbr.cli.main) and, given the `crbr index` subparsers, the `crbr index catalogue` command.
    --vectors / --index --queries stay the other way to call them; the handlers check that one
    way is given."""
    for p, names in ((build, ("vectors",)), (retrieve, ("queries",))):
        for action in p._actions:
            if action.dest in names:
                action.required = False
    b_func, r_func = build.get_default("func"), retrieve.get_default("func")
    build.add_argument("--checkpoint", help="build from a trained model's item vectors (a .safetensors checkpoint); "
                                            "writes the service catalogue (item ids, actions, categories) beside the index")
    build.add_argument("--catalogue", help="with --checkpoint: a catalogue folder to use instead of preparing the dataset")

    def build_handler(args) -> int:
        if args.checkpoint and args.vectors:
            raise ValueError("give --vectors or --checkpoint, not both")
        if args.checkpoint:
            return build_from_checkpoint(args)
        if not args.vectors:
            raise ValueError("crbr index build: give --vectors FILE or --checkpoint CKPT")
        return b_func(args) if b_func is not None else cmd_index_build(args)

    build.set_defaults(func=build_handler)
    for action in retrieve._actions:
        if action.dest == "index":
            action.required = False
            action.help = "directory written by crbr index build (with --checkpoint: optional, default exact search)"
    retrieve.add_argument("--checkpoint", help="query with this model's user vectors for its dataset's users "
                                               "(the output is in original ids: user_id, rank, item_id, score, path)")
    retrieve.add_argument("--split", choices=["test", "valid"], default="test",
                          help="with --checkpoint: the users and visible histories of this held-out part (default test)")
    retrieve.add_argument("--users", help="with --checkpoint: comma-separated original user ids (default: every user)")
    retrieve.add_argument("--limit", type=int, default=0, help="with --checkpoint: the first N users only (0 = all)")
    retrieve.add_argument("--batch-size", type=int, default=256, help="with --checkpoint: users per model call")
    add_rank_option_args(retrieve, "with --checkpoint: ")

    def retrieve_handler(args) -> int:
        if args.checkpoint:
            if args.queries:
                raise ValueError("give --queries or --checkpoint, not both")
            return retrieve_from_checkpoint(args)
        if not args.index or not args.queries:
            raise ValueError("crbr retrieve: give --index DIR --queries FILE, or --checkpoint CKPT [--index DIR]")
        return r_func(args) if r_func is not None else cmd_retrieve(args)

    retrieve.set_defaults(func=retrieve_handler)
    if index_subparsers is not None and "catalogue" not in index_subparsers.choices:
        c = index_subparsers.add_parser("catalogue", help="write the id maps a service needs (item ids, actions, "
                                                          "categories) for a checkpoint, from its dataset")
        c.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by crbr train")
        c.add_argument("--out", required=True, help="folder to write the catalogue into")
        c.set_defaults(func=cmd_catalogue)
