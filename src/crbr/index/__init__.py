"""Item indexes and retrieval: one interface, `search(queries, k, scope) -> SearchResult`, with an
exact brute-force reference and FAISS implementations (flat, HNSW, IVF-Flat, IVF-PQ)."""

from .base import IndexConfig, ItemIndex, Scope, SearchResult, exact_topk
from .build import build_index, load_index
from .exact import ExactIndex
from .faiss_index import FaissIndex
from .retrieval import Retriever, VectorRetriever, merge_results, recall_at_k, search_multi

__all__ = [
    "ExactIndex",
    "FaissIndex",
    "IndexConfig",
    "ItemIndex",
    "Retriever",
    "Scope",
    "SearchResult",
    "VectorRetriever",
    "build_index",
    "exact_topk",
    "load_index",
    "merge_results",
    "recall_at_k",
    "search_multi",
]
