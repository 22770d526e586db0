"""Checkpoints written by earlier versions of crbr still load and score as they did.

tests/fixtures/checkpoints/ holds one tiny checkpoint per model type, written by the code of
commit 3cc807c (tests/fixtures/make_checkpoints.py), with a batch of user histories and the
scores that code gave for it. Each is rebuilt from the file alone and must give the same scores
and the same ranking.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from crbr.train.checkpoint import load_model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints"
MODELS = sorted(json.loads((ROOT / "index.json").read_text()))


@pytest.mark.parametrize("name", MODELS)
def test_pre_contract_checkpoint_loads_and_scores_identically(name):
    torch.set_num_threads(1)
    model, meta = load_model_from_checkpoint(ROOT / f"{name}.safetensors")
    assert meta["model_name"] == name
    batch = {k: torch.from_numpy(v) for k, v in load_file(str(ROOT / f"{name}.batch.safetensors")).items()}
    want = np.load(ROOT / f"{name}.scores.npy")
    with torch.no_grad():
        got = model.score(batch).float().numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    order = lambda s: np.lexsort((np.arange(s.shape[1])[None].repeat(len(s), 0), -s), axis=1)[:, :20]  # noqa: E731
    np.testing.assert_array_equal(order(got[:, 1:]), order(want[:, 1:]))
