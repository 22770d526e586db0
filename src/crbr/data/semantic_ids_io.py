"""Published semantic IDs, read for a dataset's items (to compare them with the ones built here).

`load_letter_semantic_ids(path, item_ids)` reads LETTER's `<Dataset>.index.json`
(github.com/HonghuiBao2000/LETTER; shipped as ../shared/data/Beauty/Beauty_LETTER_semantic_ids.json):

    {"<LETTER item id>": ["<a_183>", "<b_70>", "<c_232>", "<d_6>"], ...}

one token `<level letter>_<code>` per level, the same letters in the same order for every item.
LETTER's item ids are the S3-Rec ids minus 1 (SOURCE.md: LETTER item i = Beauty.txt item i + 1),
so by default dataset item id = file id + 1 (`id_offset`).

The result, `PublishedSemanticIds`, uses the conventions of crbr.semantic_ids.SemanticIDs:
`codes` is (I, L) int64 with row i = the dataset's internal item i and row 0 (padding) = -1;
`SemanticIDs.from_codes(p.codes[1:], p.sizes, p.item_ids, meta=p.meta)` turns it into one, for
`crbr.semantic_ids.health_report`.

Errors name the file: a token that does not parse (and the item it belongs to), a level letter
that differs from the other items', an id that is not an integer, and dataset items the file has
no code for under the id convention (with how many and a few of them, and the id_offset under
which they would all be found, when there is one). File items that are not in the dataset (e.g.
removed by a k-core filter) are counted in `meta["file_items_unused"]` and logged.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .loaders import read_text

log = logging.getLogger("crbr.data")

_TOKEN = re.compile(r"^<([A-Za-z]+)_(\d+)>$")


@dataclass
class PublishedSemanticIds:
    """Semantic IDs from a published file, aligned with a dataset's items.

    codes:    (I, L) int64, row i = the dataset's item i, row 0 (padding) = -1
    sizes:    codes per level as seen in the file (largest code + 1)
    item_ids: (I,) the dataset's original item ids ("" for padding)
    meta:     source (file path), format, id_offset, level letters, n_items, distinct code tuples
              (n_unique), items sharing their tuple with another item (n_colliding_items),
              file_items, file_items_unused
    """

    codes: np.ndarray
    sizes: list[int]
    item_ids: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def n_levels(self) -> int:
        return int(self.codes.shape[1])


def _dataset_item_ids(item_ids) -> np.ndarray:
    """(I,) original item ids with row 0 = padding, from a SequenceDataset or such an array."""
    ids = getattr(item_ids, "item_ids", item_ids)
    return np.asarray(ids, dtype=object)


def _parse_entries(path: Path, obj: dict) -> tuple[dict[int, list[int]], list[str]]:
    """File id -> codes per level, and the level letters; raises naming the file and item."""
    letters: list[str] | None = None
    out: dict[int, list[int]] = {}
    for key, toks in obj.items():
        k = str(key).strip()
        if not k.lstrip("-").isdigit():
            raise ValueError(f"{path}, item {key!r}: item ids must be integers")
        if not isinstance(toks, list) or not toks:
            raise ValueError(f"{path}, item {key!r}: expected a list of tokens like \"<a_12>\", got {toks!r}")
        lv, codes = [], []
        for t in toks:
            m = _TOKEN.match(t.strip()) if isinstance(t, str) else None
            if m is None:
                raise ValueError(f"{path}, item {key!r}: token {t!r} is not of the form \"<letter_code>\" (e.g. \"<a_12>\")")
            lv.append(m.group(1))
            codes.append(int(m.group(2)))
        if letters is None:
            letters = lv
        elif lv != letters:
            raise ValueError(f"{path}, item {key!r}: levels {lv}, but the file's other items have {letters}")
        if int(k) in out:
            raise ValueError(f"{path}, item {key!r}: item id given twice")
        out[int(k)] = codes
    if letters is None:
        raise ValueError(f"{path}: no items")
    return out, letters


def load_letter_semantic_ids(path: str | Path, item_ids, *, id_offset: int = 1) -> PublishedSemanticIds:
    """LETTER's `index.json` semantic IDs for the items of a dataset.

    item_ids: a SequenceDataset or its `item_ids` ((I,) original ids, row 0 padding).
    id_offset: dataset item id = file item id + id_offset (LETTER's Beauty: 1).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: semantic ID file not found")
    try:
        obj = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError(f'{path}: expected a JSON object {{item id: ["<a_1>", "<b_2>", ...]}}, got {type(obj).__name__}')
    entries, letters = _parse_entries(path, obj)
    ids = _dataset_item_ids(item_ids)
    wanted = [str(x).strip() for x in ids[1:]]
    not_int = [x for x in wanted if not x.lstrip("-").isdigit()]
    if not_int:
        raise ValueError(
            f"{path}: the file's item ids are integers, but the dataset's are not (e.g. {not_int[:3]}); "
            "it is not the dataset these IDs were made for"
        )
    ds_int = np.array([int(x) for x in wanted], dtype=np.int64)
    file_int = np.array(sorted(entries), dtype=np.int64)
    missing = ds_int[~np.isin(ds_int - id_offset, file_int)]
    if len(missing):
        hint = ""
        if len(ds_int) and len(file_int):
            guess = int(ds_int.min() - file_int.min())
            if guess != id_offset and np.isin(ds_int - guess, file_int).all():
                hint = f"; with id_offset={guess} every item would be found"
        raise ValueError(
            f"{path}: {len(missing)} of the dataset's {len(ds_int)} items have no semantic ID under the id "
            f"convention dataset id = file id + {id_offset} (e.g. dataset items {missing[:5].tolist()}; the file "
            f"holds ids {file_int.min()}..{file_int.max()}, {len(file_int)} items){hint}"
        )
    L = len(letters)
    codes = np.full((len(ids), L), -1, dtype=np.int64)
    if len(ds_int):
        codes[1:] = np.array([entries[int(x) - id_offset] for x in ds_int], dtype=np.int64)
    n_unused = len(file_int) - len(np.unique(ds_int))
    if n_unused:
        log.info("%s: %d item(s) of the file are not in the dataset (ignored)", path, n_unused)
    body = codes[1:]
    n_unique = n_colliding = 0
    if len(body):
        _, inverse, counts = np.unique(body, axis=0, return_inverse=True, return_counts=True)
        n_unique, n_colliding = len(counts), int((counts[inverse.reshape(-1)] > 1).sum())
    sizes = [int(body[:, level].max()) + 1 if len(body) else 0 for level in range(L)]
    meta = {
        "source": str(path),
        "format": "LETTER index.json",
        "id_offset": id_offset,
        "levels": letters,
        "n_items": int(len(body)),
        "n_unique": int(n_unique),
        "n_colliding_items": n_colliding,
        "file_items": int(len(file_int)),
        "file_items_unused": int(n_unused),
    }
    return PublishedSemanticIds(codes, sizes, ids, meta)
