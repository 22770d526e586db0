"""crbr.nn.blocks: set blocks are permutation equivariant, the causal block against a reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from crbr.nn import MAB, CausalBlock, SetBlock, padded_causal_mask


@pytest.mark.parametrize("inducing", [0, 3])
def test_set_block_is_permutation_equivariant(inducing):
    torch.manual_seed(0)
    blk = SetBlock(8, 2, 16, 0.0, inducing).eval()
    x = torch.randn(3, 5, 8)
    perm = torch.randperm(5)
    with torch.no_grad():
        torch.testing.assert_close(blk(x[:, perm]), blk(x)[:, perm], atol=1e-5, rtol=1e-5)


def test_mab_is_equivariant_in_its_queries_and_invariant_in_the_set():
    torch.manual_seed(1)
    mab = MAB(8, 2, 16, 0.0).eval()
    x, y = torch.randn(2, 3, 8), torch.randn(2, 6, 8)
    px, py = torch.randperm(3), torch.randperm(6)
    with torch.no_grad():
        ref = mab(x, y)
        torch.testing.assert_close(mab(x[:, px], y), ref[:, px], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mab(x, y[:, py]), ref, atol=1e-5, rtol=1e-5)


def reference_causal_block(blk: CausalBlock, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The block's formula, attention written out with an explicit masked softmax."""
    B, L, D = x.shape
    H = blk.n_heads
    d = D // H

    def attn(h):
        q, k, v = blk.qkv(h).split(D, -1)
        heads = []
        for i in range(H):
            sl = slice(i * d, (i + 1) * d)
            s = (q[..., sl] @ k[..., sl].transpose(1, 2)) / math.sqrt(d)
            heads.append(s.masked_fill(~mask[:, 0], float("-inf")).softmax(-1) @ v[..., sl])
        return blk.out(torch.cat(heads, -1))

    def ffn(h):
        return blk.ffn[3](F.gelu(blk.ffn[0](h)))

    if blk.pre_norm:
        x = x + attn(blk.ln1(x))
        return x + ffn(blk.ln2(x))
    x = blk.ln1(x + attn(x))
    return blk.ln2(x + ffn(x))


@pytest.mark.parametrize("pre_norm", [True, False])
def test_causal_block_matches_the_reference(pre_norm):
    torch.manual_seed(2)
    blk = CausalBlock(8, 2, 16, 0.0, 0.0, 0.0, pre_norm=pre_norm).eval()
    x = torch.randn(3, 5, 8)
    keep = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    mask = padded_causal_mask(keep)
    with torch.no_grad():
        torch.testing.assert_close(blk(x, mask), reference_causal_block(blk, x, mask), atol=1e-5, rtol=1e-5)


def test_parameter_names_are_stable():
    """Checkpoints name these parameters (blocks.0.qkv.weight, set_blocks.0.mab.attn.q.weight, ...)."""
    assert list(CausalBlock(4, 1, 8, 0.0, 0.0, 0.0).state_dict()) == [
        "ln1.weight", "ln1.bias", "qkv.weight", "qkv.bias", "out.weight", "out.bias", "ln2.weight", "ln2.bias",
        "ffn.0.weight", "ffn.0.bias", "ffn.3.weight", "ffn.3.bias"]
    mab = ["ln_q.weight", "ln_q.bias", "ln_kv.weight", "ln_kv.bias", "ln_f.weight", "ln_f.bias", "attn.q.weight",
           "attn.q.bias", "attn.kv.weight", "attn.kv.bias", "attn.o.weight", "attn.o.bias", "ffn.0.weight", "ffn.0.bias",
           "ffn.2.weight", "ffn.2.bias"]
    assert list(MAB(4, 1, 8, 0.0).state_dict()) == mab
    assert list(SetBlock(4, 1, 8, 0.0).state_dict()) == [f"mab.{k}" for k in mab]
    assert list(SetBlock(4, 1, 8, 0.0, 2).state_dict()) == (["inducing"] + [f"mab.{k}" for k in mab]
                                                           + [f"mab_ind.{k}" for k in mab])
