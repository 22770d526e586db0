"""Building blocks shared by the models: attention, masks, rotary positions, transformer and
set blocks, window helpers and losses.

This layer sits under `crbr.models` and imports nothing else from crbr: models import from
here, never the other way, and nothing here knows about data loading, training or indexes.

    attention   MHA: multi-head attention with a boolean key mask (Q-Former, Set Transformer)
    masks       causal_tril, padded_causal_mask: the causal mask of a left-padded window
    rotary      rotary_angles, cos_sin, rotate: rotary positions over window positions and times
    blocks      CausalBlock (SASRec-style causal block), MAB and SetBlock (SAB / ISAB)
    windows     choose_cut, choose_cuts, future_targets, newest, sinusoidal, time_buckets
    residual_embedding  ContextualResidualEmbedding: E = (1 - g) E_static + g E_learnable, gated per user
    losses      full_softmax_ce, mixed_negative_logp / _infonce, batch_candidates, ...
"""

from .attention import MHA
from .blocks import MAB, CausalBlock, SetBlock
from .losses import (batch_candidates, full_softmax_ce, logq_from_counts, mixed_negative_infonce, mixed_negative_logp,
                     other_positives)
from .masks import causal_tril, padded_causal_mask
from .residual_embedding import ContextualResidualEmbedding, gate_summary
from .rotary import TIME_PERIODS_S, cos_sin, rotary_angles, rotate
from .windows import choose_cut, choose_cuts, future_targets, newest, sinusoidal, time_buckets

__all__ = ["MHA", "CausalBlock", "MAB", "SetBlock", "causal_tril", "padded_causal_mask", "TIME_PERIODS_S", "cos_sin",
           "rotary_angles", "rotate", "choose_cut", "choose_cuts", "future_targets", "newest", "sinusoidal",
           "time_buckets", "full_softmax_ce", "batch_candidates", "mixed_negative_infonce", "mixed_negative_logp",
           "other_positives", "logq_from_counts", "ContextualResidualEmbedding", "gate_summary"]
