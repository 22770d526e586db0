"""The models' losses now live in `crbr.nn.losses`; these names stay importable from here."""

from ..nn.losses import (  # noqa: F401
    _ChunkedSoftmaxCE,
    batch_candidates,
    full_softmax_ce,
    logq_from_counts,
    mixed_negative_infonce,
    mixed_negative_logp,
    other_positives,
)

__all__ = ["full_softmax_ce", "batch_candidates", "mixed_negative_infonce", "mixed_negative_logp", "other_positives",
           "logq_from_counts"]
