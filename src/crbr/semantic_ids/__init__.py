"""Semantic IDs: items as short sequences of discrete codes, for generative retrieval.

    from crbr.semantic_ids import RQKMeansConfig, build_semantic_ids, health_report
    sid = build_semantic_ids(ds, "text", RQKMeansConfig(levels=3, codebook_size=256))
    print(format_report(health_report(sid, ds, split, embeddings=item_features(ds, "text"))))

RQ-KMeans (residual k-means) is the tokenizer; collisions are resolved by an optional last-level
re-assignment and an extra disambiguation level; the health report judges the IDs before any
generator is trained on them.
"""

from .build import build_semantic_ids, tokenize
from .health import embedding_health, format_report, health_report
from .ids import SemanticIDs, collision_stats, disambiguate, reassign_collisions
from .rqkmeans import RQKMeans, RQKMeansConfig

__all__ = ["RQKMeans", "RQKMeansConfig", "SemanticIDs", "build_semantic_ids", "tokenize", "collision_stats",
           "disambiguate", "reassign_collisions", "embedding_health", "health_report", "format_report"]
