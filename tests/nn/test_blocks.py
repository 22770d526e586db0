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


def test_decoder_extend_one_token_at_a_time_equals_all_at_once():
    """A continuation extended token by token with its returned keys / values gives the states of
    running all its tokens in one call, and both equal a plain causal pass over past + new."""
    from crbr.nn.decoder import DecoderBlock

    torch.manual_seed(0)
    blk = DecoderBlock(16, 2, 32, 0.0).eval()
    B, T, G, j = 2, 5, 3, 4
    past_x = torch.randn(B, T, 16)
    new_x = torch.randn(B, G, j, 16)
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None].expand(B, 1, T, T)
    cache: list = []
    with torch.no_grad():
        blk(past_x, mask, cache)
        keys = torch.ones(B, T, dtype=torch.bool)
        whole, (k_all, v_all) = blk.extend(new_x, cache[0], keys)
        own, steps = None, []
        for t in range(j):
            h, own = blk.extend(new_x[:, :, t : t + 1], cache[0], keys, own)
            steps.append(h)
        torch.testing.assert_close(torch.cat(steps, 2), whole, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(own[0], k_all) and torch.testing.assert_close(own[1], v_all)
        for g in range(G):  # the reference: one causal pass over the past and continuation g
            seq = torch.cat([past_x, new_x[:, g]], 1)
            n = T + j
            ref = blk(seq, torch.ones(n, n, dtype=torch.bool).tril()[None, None].expand(B, 1, n, n))
            torch.testing.assert_close(whole[:, g], ref[:, T:], rtol=1e-5, atol=1e-5)
