"""Load + preprocess + cache: `prepare(DataConfig) -> SequenceDataset`.

    ds = prepare(DataConfig.preset("ml-1m", root="../shared/data"))
    ds = prepare(DataConfig(name="Beauty"))                 # preset looked up by name, default root
    ds = prepare(DataConfig(name="mylog", format="table", path="log.parquet",
                            columns=ColumnMap(user="uid", item="sku", timestamp="ts", action="event")))

Processed datasets are cached under `cache_dir` (default `$CRBR_CACHE`, else `~/.cache/crbr`) in
`<name>-<key>/`, written atomically by `SequenceDataset.save`. The key is a sha256 of the
dataset FORMAT_VERSION, this module's PREPARE_VERSION, the JSON of every setting that changes
the result (format, columns, on_bad_line, preprocess; not the paths, cache settings or root),
and the name and full contents of every source file (hashed in 1 MiB chunks; the optional
item text, attribute names and ratings files also with their role) — so editing one byte of a
file, one setting or adding one of those files rebuilds, and moving the files does not.

Presets with the files the generative path needs (../shared/data, see each SOURCE.md):
"Beauty-text" reads the item text JSON (titles, brands, category paths, prices; the item text is
`loaders.item_text_from_fields`) and names the S3-Rec attribute categories
(Beauty_attribute_names.json), so its categories are the item sets of Beauty_item2attributes.json
under their names; "Beauty" stays as it was (categories "attr:<id>", text "attributes <id> ..."),
so checkpoints trained on it keep the inputs they were trained on. "ml-1m-ratings" is "ml-1m" with the parallel ratings
file (like / neutral / dislike actions; the same item sequences, "ml-1m" keeps its single
"interact" action). "taobao-userbehavior-head84k" is the 84,475-row head of Taobao UserBehavior.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .dataset import FORMAT_VERSION, SequenceDataset, Split, make_split
from .loaders import (
    TAOBAO_ACTIONS,
    ColumnMap,
    ItemColumnMap,
    load_movielens,
    load_movielens_100k,
    load_pairs,
    load_sequences,
    load_table,
    load_taobao,
)
from .preprocess import PreprocessConfig, build_dataset
from .schema import RawEvents

log = logging.getLogger("crbr.data")

PREPARE_VERSION = 2  # bump when loading / preprocessing semantics change (invalidates caches)

FORMATS = ("ml-100k", "movielens", "sequences", "pairs", "table", "taobao", "synthetic")


@dataclass(frozen=True)
class DatasetPreset:
    """A known dataset: format and file paths relative to the data root (see /work/shared/data)."""

    format: str
    path: str
    items_path: str | None = None
    actions: list[str] | None = None
    description: str = ""
    item_text_path: str | None = None
    attribute_names_path: str | None = None
    ratings_path: str | None = None


# the optional file settings of DataConfig / DatasetPreset beside path and items_path
EXTRA_FILES = ("item_text_path", "attribute_names_path", "ratings_path")
EXTRA_FILE_FORMATS = {"sequences": EXTRA_FILES, "pairs": ("item_text_path", "attribute_names_path")}


KNOWN_DATASETS: dict[str, DatasetPreset] = {
    "ml-100k": DatasetPreset("ml-100k", "ml-100k", None, None, "MovieLens 100K: ratings + timestamps, titles + 19 genres"),
    "ml-1m": DatasetPreset(
        "sequences", "ml-1m/ml-1m_seq.txt", "ml-1m/movies.dat", None,
        "MovieLens 1M per-user sequences (order only), titles + genres from movies.dat",
    ),
    "ml-1m-ratings": DatasetPreset(
        "sequences", "ml-1m/ml-1m_seq.txt", "ml-1m/movies.dat", None,
        "ml-1m with ratings (ml-1m_seq_ratings.txt): like / neutral / dislike, 6 unknown as interact",
        ratings_path="ml-1m/ml-1m_seq_ratings.txt",
    ),
    "Beauty": DatasetPreset(
        "sequences", "Beauty/Beauty.txt", "Beauty/Beauty_item2attributes.json", None,
        "Amazon Beauty 5-core (S3-Rec), attribute ids only (categories attr:<id>, text 'attributes <id> ...')",
    ),
    "Beauty-text": DatasetPreset(
        "sequences", "Beauty/Beauty.txt", "Beauty/Beauty_item2attributes.json", None,
        "Amazon Beauty 5-core (S3-Rec): text = title, brand, category path, price; named attribute categories",
        item_text_path="Beauty/Beauty_item_text.json", attribute_names_path="Beauty/Beauty_attribute_names.json",
    ),
    "Yelp": DatasetPreset("sequences", "Yelp/Yelp.txt", "Yelp/Yelp_item2attributes.json", None, "Yelp (S3-Rec)"),
    "LastFM": DatasetPreset("sequences", "LastFM/LastFM.txt", "LastFM/LastFM_item2attributes.json", None, "LastFM hetrec-2k (S3-Rec)"),
    "ml-latest-small": DatasetPreset("movielens", "ml-latest-small/ratings.csv", None, None, "MovieLens latest-small ratings"),
    "taobao-userbehavior-sample": DatasetPreset(
        "taobao", "taobao-userbehavior-sample/UserBehavior_head.csv", None, list(TAOBAO_ACTIONS),
        "first 4,321 rows of Taobao UserBehavior (pv/cart/fav/buy)",
    ),
    "taobao-userbehavior-head84k": DatasetPreset(
        "taobao", "taobao-userbehavior-head84k/UserBehavior_head84k.csv", None, list(TAOBAO_ACTIONS),
        "first 84,475 rows of Taobao UserBehavior (pv/cart/fav/buy; the last user, 100370, is cut off)",
    ),
}  # fmt: skip


def find_preset(name: str) -> tuple[str, DatasetPreset] | None:
    """Case-insensitive lookup in KNOWN_DATASETS; returns (canonical name, preset) or None."""
    for key, p in KNOWN_DATASETS.items():
        if key.lower() == name.lower():
            return key, p
    return None


def default_data_root() -> Path:
    """$CRBR_DATA, else ../shared/data from the working directory, else next to this checkout."""
    if os.environ.get("CRBR_DATA"):
        return Path(os.environ["CRBR_DATA"]).expanduser()
    cwd = Path("../shared/data")
    if cwd.is_dir():
        return cwd
    repo = Path(__file__).resolve().parents[3]  # src/crbr/data/prepare.py -> repository root
    beside = repo.parent / "shared" / "data"
    return beside if beside.is_dir() else cwd


def default_cache_dir() -> Path:
    return Path(os.environ.get("CRBR_CACHE") or "~/.cache/crbr").expanduser()


@dataclass
class DataConfig:
    """Which events to load and how to process them.

    name:         dataset name (recorded in ds.info; selects a KNOWN_DATASETS preset when format is None)
    format:       one of FORMATS, or None = the preset of `name` ("synthetic" when name == "synthetic")
    path:         events file (or the MovieLens 100K directory); relative to `root` for presets
    items_path:   item metadata: item2attributes .json, item text .json, movies.dat/.csv, u.item
                  or an item table
    item_text_path:       formats sequences / pairs: an item text JSON (`{item: {title, brand,
                  categories, price}}`) giving the item text; its category paths are the
                  categories only without items_path (loaders.load_item_text_json)
    attribute_names_path: formats sequences / pairs: names of the "attr:<id>" categories of an
                  item2attributes items_path (loaders.load_attribute_names)
    ratings_path: format sequences: per-event ratings parallel to the sequence file (`user r1 r2
                  ...` per line; ratings -> like / neutral / dislike by preprocess.rating_thresholds)
    root:         folder of the known datasets (default: default_data_root())
    columns:      ColumnMap for format "table"
    item_columns: ItemColumnMap for a generic item table
    on_bad_line:  "error" | "drop" (loaders.py describes the policy)
    encoding:     the text files' encoding (e.g. latin-1); None = UTF-8, where an invalid byte is
                  an error naming the file, line and byte offset
    preprocess:   PreprocessConfig
    synthetic:    keyword arguments of crbr.data.synthetic.SyntheticConfig (format "synthetic")
    cache_dir:    None = $CRBR_CACHE or ~/.cache/crbr
    use_cache:    False = always rebuild and write nothing
    """

    name: str = "synthetic"
    format: str | None = None
    path: str | None = None
    items_path: str | None = None
    item_text_path: str | None = None
    attribute_names_path: str | None = None
    ratings_path: str | None = None
    root: str | None = None
    columns: ColumnMap = field(default_factory=ColumnMap)
    item_columns: ItemColumnMap | None = None
    on_bad_line: Literal["error", "drop"] = "error"
    encoding: str | None = None  # text files' encoding; None = UTF-8 (an invalid byte is an error naming it)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    synthetic: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    use_cache: bool = True

    @classmethod
    def preset(cls, name: str, root: str | os.PathLike | None = None, **overrides: Any) -> "DataConfig":
        """A fully resolved config for a KNOWN_DATASETS entry under `root`; `overrides` set fields."""
        found = find_preset(name)
        if found is None:
            raise KeyError(f"unknown dataset {name!r}; known: {sorted(KNOWN_DATASETS)}")
        key, p = found
        base = Path(root).expanduser() if root is not None else default_data_root()
        pre = overrides.pop("preprocess", None) or PreprocessConfig()
        if pre.actions is None and p.actions is not None:
            pre = dataclasses.replace(pre, actions=list(p.actions))
        extra = {k: overrides.pop(k, None) or (str(base / getattr(p, k)) if getattr(p, k) else None) for k in EXTRA_FILES}
        return cls(
            name=key,
            format=p.format,
            path=str(base / p.path),
            items_path=str(base / p.items_path) if p.items_path else None,
            root=str(base),
            preprocess=pre,
            **extra,
            **overrides,
        )

    def resolved(self) -> "DataConfig":
        """Fill format / paths from the preset when `format` is None; check the format."""
        cfg = self
        if cfg.format is None:
            if cfg.name == "synthetic":
                cfg = dataclasses.replace(cfg, format="synthetic")
            elif find_preset(cfg.name) is not None:
                fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
                for k in ("name", "root", "format", "path", "items_path", *EXTRA_FILES):
                    fields.pop(k)
                p = DataConfig.preset(cfg.name, cfg.root, **fields)
                cfg = dataclasses.replace(
                    p, path=cfg.path or p.path, items_path=cfg.items_path or p.items_path,
                    **{k: getattr(cfg, k) or getattr(p, k) for k in EXTRA_FILES},
                )
            else:
                raise ValueError(
                    f"data: dataset {cfg.name!r} is not a known preset ({sorted(KNOWN_DATASETS)}); "
                    f"set format to one of {FORMATS}"
                )
        if cfg.format not in FORMATS:
            raise ValueError(f"data.format: unknown format {cfg.format!r}; expected one of {FORMATS}")
        if cfg.format != "synthetic" and not cfg.path:
            raise ValueError(f"data.path: format {cfg.format!r} needs a path")
        unread = [k for k in EXTRA_FILES if getattr(cfg, k) and k not in EXTRA_FILE_FORMATS.get(cfg.format, ())]
        if unread:
            takers = [f for f, ks in EXTRA_FILE_FORMATS.items() if unread[0] in ks]
            raise ValueError(f"data.{unread[0]}: format {cfg.format!r} does not read it (format {' / '.join(takers)} does)")
        return cfg

    def settings(self) -> dict[str, Any]:
        """The settings that determine the processed result (for the cache key and ds.info)."""
        d = dataclasses.asdict(self)
        for k in ("path", "items_path", *EXTRA_FILES, "root", "cache_dir", "use_cache"):
            d.pop(k)
        return d


def source_files(cfg: DataConfig) -> list[Path]:
    """The files `load_raw(cfg)` reads (events file first); raises if a required one is missing."""
    return [f for _, f in _source_roles(cfg)]


def _source_roles(cfg: DataConfig) -> list[tuple[str, Path]]:
    """(role, file) of every file `load_raw(cfg)` reads; role "" for the events and metadata
    files (hashed as before), else the DataConfig field of the file."""
    cfg = cfg.resolved()
    if cfg.format == "synthetic":
        return []
    path = Path(cfg.path).expanduser()
    if cfg.format == "ml-100k":
        files = [("", path / "u.data")] + [("", path / n) for n in ("u.item", "u.genre") if (path / n).is_file()]
    else:
        files = [("", path)]
        if cfg.items_path:
            ip = Path(cfg.items_path).expanduser()
            files.append(("", ip))
            if ip.name == "u.item" and (ip.parent / "u.genre").is_file():
                files.append(("", ip.parent / "u.genre"))
    files += [(k, Path(getattr(cfg, k)).expanduser()) for k in EXTRA_FILES if getattr(cfg, k)]
    for _, f in files:
        if not f.is_file():
            hint = ""
            if find_preset(cfg.name) is not None:
                hint = f" (dataset {cfg.name!r}: set data.root or $CRBR_DATA to the folder that holds it)"
            raise FileNotFoundError(f"{f}: file not found{hint}")
    return files


def _hash_file(h: "hashlib._Hash", path: Path, chunk: int = 1 << 20) -> None:
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)


def cache_key(cfg: DataConfig) -> str:
    """sha256 hex digest of versions + settings JSON + source file names and contents."""
    cfg = cfg.resolved()
    h = hashlib.sha256()
    h.update(f"crbr-dataset format={FORMAT_VERSION} prepare={PREPARE_VERSION}\n".encode())
    h.update(json.dumps(cfg.settings(), sort_keys=True, default=str).encode())
    for role, f in _source_roles(cfg):
        h.update(f"\nfile {role + ' ' if role else ''}{f.name} {f.stat().st_size}\n".encode())
        _hash_file(h, f)
    return h.hexdigest()


def cache_path(cfg: DataConfig, key: str | None = None) -> Path:
    cfg = cfg.resolved()
    key = key or cache_key(cfg)
    base = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.name) or "dataset"
    return base / f"{safe}-{key[:24]}"


def load_raw(cfg: DataConfig) -> RawEvents:
    """Run the loader of `cfg.format` (no preprocessing, no cache)."""
    cfg = cfg.resolved()
    kw = {"on_bad_line": cfg.on_bad_line, "name": cfg.name, "encoding": cfg.encoding}
    path = Path(cfg.path).expanduser()
    items = Path(cfg.items_path).expanduser() if cfg.items_path else None
    extra = {k: Path(getattr(cfg, k)).expanduser() for k in EXTRA_FILES if getattr(cfg, k)}
    if cfg.format == "ml-100k":
        if items is not None:
            raise ValueError("data.items_path: format 'ml-100k' reads u.item from its directory")
        return load_movielens_100k(path, **kw)
    if cfg.format == "movielens":
        return load_movielens(path, items, **kw)
    if cfg.format == "sequences":
        return load_sequences(path, items_path=items, **extra, **kw)
    if cfg.format == "pairs":
        return load_pairs(path, items_path=items, **extra, **kw)
    if cfg.format == "table":
        return load_table(path, cfg.columns, items_path=items, item_columns=cfg.item_columns, **kw)
    if cfg.format == "taobao":
        if items is not None:
            raise ValueError("data.items_path: format 'taobao' takes categories from its category column")
        return load_taobao(path, **kw)
    raise ValueError(f"data.format: {cfg.format!r} has no file loader")


def prepare(cfg: DataConfig | None = None, *, rebuild: bool = False) -> SequenceDataset:
    """The processed dataset for `cfg`: from the cache when present, else loaded, built and cached.

    Format "synthetic" is generated by crbr.data.synthetic (not cached). `rebuild=True` ignores
    an existing cache entry and overwrites it.
    """
    cfg = (cfg or DataConfig()).resolved()
    if cfg.format == "synthetic":
        from .synthetic import SyntheticConfig, generate

        return generate(SyntheticConfig(**cfg.synthetic)).dataset
    files = source_files(cfg)
    key = cache_key(cfg)
    target = cache_path(cfg, key)
    if cfg.use_cache and not rebuild and (target / "meta.json").is_file():
        try:
            ds = SequenceDataset.load(target)
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s: unreadable cache entry (%s); rebuilding", target, e)
        else:
            log.info("cache hit: %s (%s)", cfg.name, target)
            ds.info["source_files"] = [str(f) for f in files]
            return ds
    raw = load_raw(cfg)
    ds = build_dataset(raw, cfg.preprocess)
    ds.info["data_config"] = cfg.settings()
    ds.info["cache_key"] = key
    if cfg.use_cache:
        ds.save(target)
        log.info("cached %s at %s", cfg.name, target)
    return ds


def prepare_with_split(experiment) -> tuple[SequenceDataset, Split]:
    """The dataset and split an experiment config names (its `data` and `split` sections), e.g. the
    config embedded in a checkpoint: what `crbr train` and `crbr evaluate` run on."""
    ds = prepare(experiment.data)
    return ds, make_split(ds, experiment.split.name, **experiment.split.kwargs())

