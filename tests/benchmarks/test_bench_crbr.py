import numpy as np
import pytest
import torch

from crbr.data.batching import history_batch
from crbr.data.dataset import leave_one_out
from crbr.data.synthetic import SyntheticConfig, generate
from crbr.models.crbr_model import CRBR, CRBRConfig

from crbr.analysis import code_usage


def test_code_usage_in_chunks_equals_the_models_diagnostics_on_one_batch():
    """bench_crbr.code_usage (dead-code share and perplexity per layer, over all test users'
    beams, computed in chunks) equals CRBR.diagnostics on all users in one batch."""
    ds = generate(SyntheticConfig.tiny(seed=2, n_users=50)).dataset
    es = leave_one_out(ds).test
    base = dict(n_items=ds.n_items, tower=dict(n_items=ds.n_items, hidden=8, n_queries=2, n_layers=1, n_heads=1, max_len=16),
                hidden=8, out_dim=8, n_heads=1, set_blocks=1)
    torch.manual_seed(0)
    m = CRBR(CRBRConfig(n_items=ds.n_items, n_actions=ds.n_actions, base=base, codebook_sizes=[6, 40], beam=3)).eval()
    for blk in m.blocks:
        blk.codebook.data.normal_(0, 1)
    dead, ppl = code_usage(m, ds, es, chunk=7)
    ref = m.diagnostics(history_batch(ds, es.users, es.hist_len, 16))
    assert dead == pytest.approx([ref["dead_share_l1"], ref["dead_share_l2"]])
    assert ppl == pytest.approx([ref["perplexity_l1"], ref["perplexity_l2"]])
    assert dead[1] > 0  # 40 codes for 150 paths: some unused, so the comparison is not of zeros
    assert np.isfinite(ppl).all() and 1 <= min(ppl) and ppl[0] <= 6 and ppl[1] <= 40
