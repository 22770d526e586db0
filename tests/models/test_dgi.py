"""DGI: gradients reach the encoder and every codebook through the soft path (and not through the
straight-through path's forward values), the output heads are the codebooks, scaled-cosine
logits ignore scale, tau -> 0 turns the soft path into the hard codes, the ID table and trie
follow the weights, decoding returns valid distinct items (a full-width beam equals exhaustive
enumeration), checkpoints keep the tie, and it trains through the training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crbr.data.batching import history_batch, train_batch
from crbr.data.dataset import leave_k_out, leave_one_out
from crbr.data.synthetic import SyntheticConfig, generate
from crbr.models import DGI, build_model, load_model
from crbr.models.dgi import disambiguate

torch.set_num_threads(1)

TINY = dict(item_features="random:8:1", codebook_sizes=[16, 16], disambiguation=32, window=4, hidden=16,
            n_layers=1, n_heads=2, encoder_hidden=16, beam=20)
NTP_ONLY = dict(recon_weight=0.0, codebook_weight=0.0, contrastive_weight=0.0, diversity_weight=0.0, action_weight=0.0)


@pytest.fixture(scope="module")
def world():
    w = generate(SyntheticConfig.tiny(seed=3, n_users=150))
    return w.dataset, leave_one_out(w.dataset)


def tiny_model(world, **kw) -> DGI:
    ds, split = world
    torch.manual_seed(0)
    return build_model("dgi", {**TINY, **kw}, ds, split)


def a_batch(world, model, n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    ds, split = world
    users = np.random.default_rng(seed).choice(ds.n_users, n, replace=False)
    return train_batch(ds, users, split.train_len[users], model.max_len)


def grads_after_loss(m: DGI, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    m.train()
    m.zero_grad()
    m.loss(batch).loss.backward()
    enc = torch.stack([p.grad.norm() for p in m.encoder.parameters()]).norm()
    books = [cb.weight.grad if cb.weight.grad is not None else torch.zeros_like(cb.weight) for cb in m.codebooks]
    return enc, books


def test_soft_forcing_sends_the_next_token_loss_into_the_encoder_and_every_codebook(world):
    # next-token loss only, untied heads: the codebooks' only way into the loss is the decoder's input
    m = tiny_model(world, tie_heads=False, **NTP_ONLY)
    enc, books = grads_after_loss(m, a_batch(world, m))
    assert enc > 0
    assert all(g.abs().sum() > 0 for g in books)


def test_straight_through_forward_values_carry_no_gradient_into_the_codebooks(world):
    m = tiny_model(world, tie_heads=False, soft=False, **NTP_ONLY)
    enc, books = grads_after_loss(m, a_batch(world, m))
    assert enc > 0  # the gradient is copied to the pre-quantization residual, i.e. the encoder
    assert all(float(g.abs().sum()) == 0.0 for g in books)
    items = torch.arange(1, 40)
    ste, hard = m.quantize(items, mode="ste"), m.quantize(items, mode="hard")
    torch.testing.assert_close(ste.inputs, hard.inputs, atol=1e-6, rtol=0)  # forward: the hard vectors (to rounding)
    assert torch.equal(ste.codes, hard.codes)


def test_the_output_head_is_the_codebook(world):
    m = tiny_model(world)
    for cb, head in zip(m.codebooks, m.code_heads):
        assert head.weight is cb.weight and head.weight.data_ptr() == cb.weight.data_ptr()
    before = [cb.weight.detach().clone() for cb in m.codebooks]
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.train()
    m.loss(a_batch(world, m)).loss.backward()
    opt.step()
    for b, cb, head in zip(before, m.codebooks, m.code_heads):
        assert not torch.equal(b, cb.weight) and torch.equal(head.weight, cb.weight)
    dis_head = m.code_heads[m.config.code_levels]  # the disambiguation level has its own head
    assert dis_head.weight is not m.code_embeddings[m.config.code_levels].weight
    untied = tiny_model(world, tie_heads=False)
    assert all(h.weight is not cb.weight for cb, h in zip(untied.codebooks, untied.code_heads))


def test_the_tie_survives_a_checkpoint(world, tmp_path):
    from crbr.checkpoint import save_weights

    ds, split = world
    m = tiny_model(world).eval()
    save_weights(tmp_path / "d.safetensors", m, m.model_name, {})
    back, _ = load_model(tmp_path / "d.safetensors")
    assert all(h.weight is cb.weight for cb, h in zip(back.codebooks, back.code_heads))
    assert torch.equal(back.item_codes, m.item_codes)
    b = history_batch(ds, np.arange(4), split.test.hist_len[:4], m.max_len)
    assert torch.equal(back.rank(b, 10).items, m.rank(b, 10).items)


def test_scaled_cosine_logits_ignore_the_scale_of_states_and_code_vectors(world):
    m = tiny_model(world).eval()
    h = torch.randn(5, 16)
    head, cb = m.code_heads[0], m.codebooks[0]
    with torch.no_grad():
        base_head, base_q = head(h), cb.logits(h)
        torch.testing.assert_close(head(3.7 * h), base_head)
        torch.testing.assert_close(cb.logits(0.2 * h), base_q)
        cb.weight[3] *= 5.0  # one code vector rescaled (the head is the same tensor)
        torch.testing.assert_close(head(h), base_head)
        torch.testing.assert_close(cb.logits(h), base_q)
        assert float(base_head.abs().max()) <= float(m.config.gamma_init) + 1e-3  # |gamma cos| <= gamma
    dot = tiny_model(world, cosine=False).eval()
    with torch.no_grad():
        assert not torch.allclose(dot.code_heads[0](3.7 * h), dot.code_heads[0](h))


def test_at_zero_temperature_with_fixed_gamma_the_soft_path_is_the_hard_codes(world):
    m = tiny_model(world, learn_gamma=False)
    assert not any(p.requires_grad for n, p in m.named_parameters() if "gamma" in n)
    m.eval()  # no Gumbel noise
    items = torch.arange(1, m.config.n_items + 1)
    with torch.no_grad():
        soft, hard = m.quantize(items, tau=1e-4, mode="soft"), m.quantize(items, tau=1e-4, mode="hard")
    torch.testing.assert_close(soft.inputs, hard.inputs, atol=1e-5, rtol=0)
    torch.testing.assert_close(soft.recon, hard.recon, atol=1e-5, rtol=1e-5)
    for l, p in enumerate(soft.probs):
        assert torch.equal(p.argmax(-1), hard.codes[:, l])
    assert torch.equal(hard.codes, m.item_codes[1:, :2])  # and they are the table's IDs


def test_the_id_table_and_the_trie_follow_the_weights(world):
    m = tiny_model(world).eval()
    old = m.item_codes.clone()
    assert not m.ids_stale()
    with torch.no_grad():
        for cb in m.codebooks:
            cb.weight.add_(0.5 * torch.randn_like(cb.weight))
    assert m.ids_stale()
    m.train()
    m.eval()  # the switch recomputes the table
    assert not m.ids_stale() and not torch.equal(old, m.item_codes)
    codes, d = m.export_ids()
    L, cap = m.config.code_levels, m.config.disambiguation
    assert torch.equal(m.item_codes[1:, :L], torch.from_numpy(codes[1:]))
    assert torch.equal(m.item_codes[1:, L], torch.from_numpy(np.minimum(d[1:], cap - 1)))
    trie = m.trie()
    table = m.item_codes[1:]
    leaf = trie.child(L, trie.node_of_item[L][1:]).gather(1, table[:, L:])[:, 0]  # walk each item's ID down
    reachable = torch.from_numpy(d[1:] < cap)
    assert (leaf[reachable] == torch.arange(1, m.config.n_items + 1)[reachable]).all()
    for j in range(L):  # each item's prefix node has a child for its next code
        assert (trie.child(j, trie.node_of_item[j][1:]).gather(1, table[:, j : j + 1]) >= 0).all()
    diag = m.diagnostics(history_batch(world[0], np.arange(3), world[1].test.hist_len[:3], m.max_len))
    for l, K in enumerate(m.config.codebook_sizes):
        used = len(np.unique(codes[1:, l])) / K
        assert abs(diag[f"level{l + 1}_usage"] - used) < 1e-9
        assert abs(diag[f"level{l + 1}_dead_share"] - (1 - used)) < 1e-9


def test_the_disambiguation_numbering_is_the_semantic_id_files(world):
    from crbr.semantic_ids import SemanticIDs
    from crbr.semantic_ids import disambiguate as reference

    codes = np.random.default_rng(0).integers(0, 3, size=(200, 2))
    assert np.array_equal(disambiguate(torch.from_numpy(codes)).numpy(), reference(codes))
    m = tiny_model(world).eval()
    c, d = m.export_ids()
    sid = SemanticIDs.from_codes(c[1:], m.config.codebook_sizes, world[0].item_ids)
    assert np.array_equal(sid.codes, c) and np.array_equal(sid.disambiguation, d)


def test_rank_returns_only_valid_distinct_items_in_scope(world):
    ds, split = world
    m = tiny_model(world).eval()
    rng = np.random.default_rng(1)
    users = rng.choice(ds.n_users, 4, replace=False)
    b = history_batch(ds, users, split.test.hist_len[users], m.max_len)
    scope = torch.from_numpy(rng.random((4, ds.n_items + 1)) < 0.3)
    exclude = torch.from_numpy(rng.integers(0, ds.n_items + 1, size=(4, 6)))
    r = m.rank(b, 15, exclude=exclude, scope=scope, beam=30)
    _, d = m.export_ids()
    unreachable = set(np.flatnonzero(d >= m.config.disambiguation).tolist())
    for u in range(4):
        got = [i for i in r.items[u].tolist() if i > 0]
        allowed = set(torch.nonzero(scope[u]).flatten().tolist()) - set(exclude[u].tolist()) - {0} - unreachable
        assert set(got) <= allowed and len(got) == len(set(got)) == min(15, len(allowed))


def test_a_full_width_beam_equals_exhaustive_enumeration(world):
    ds, split = world
    m = tiny_model(world, codebook_sizes=[4, 4]).eval()
    _, d = m.export_ids()
    assert (d < m.config.disambiguation).all()  # every item reachable
    b = history_batch(ds, np.arange(3), split.test.hist_len[:3], m.max_len)
    ll, _ = m.candidate_scores(b, torch.arange(1, ds.n_items + 1).expand(3, -1))
    r = m.rank(b, ds.n_items, beam=ds.n_items)
    for u in range(3):
        order = sorted(range(ds.n_items), key=lambda i: (-float(ll[u, i]), i))
        assert r.items[u].tolist() == [i + 1 for i in order]


@pytest.mark.parametrize("kw", [dict(soft=False), dict(tie_heads=False), dict(cosine=False),
                                dict(soft=False, tie_heads=False, cosine=False), dict(disambiguation=0)])
def test_every_ablation_trains_a_step_and_decodes(world, kw):
    ds, split = world
    m = tiny_model(world, **kw)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    m.train()
    out = m.loss(a_batch(world, m))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    stats = m.after_backward(1)
    for k in ("encoder", "codebooks", "codebook1", "decoder"):
        assert float(stats[f"{k}_norm"]) > 0
        torch.testing.assert_close(stats[f"{k}_norm_sq"], stats[f"{k}_norm"] ** 2)
    opt.step()
    m.eval()
    b = history_batch(ds, np.arange(2), split.test.hist_len[:2], m.max_len)
    items = m.rank(b, 5).items
    assert (items > 0).all() and all(len(set(row)) == 5 for row in items.tolist())


def test_the_temperature_anneals_from_tau_start_to_tau_end(world):
    m = tiny_model(world, tau_start=1.0, tau_end=0.1, anneal_steps=10)
    assert abs(float(m.temperature()) - 1.0) < 1e-6
    m.train_steps.fill_(5)
    assert abs(float(m.temperature()) - 0.1 ** 0.5) < 1e-6
    m.train_steps.fill_(50)
    assert abs(float(m.temperature()) - 0.1) < 1e-6


def test_it_trains_through_the_training_loop_with_the_loss_falling(tmp_path):
    from crbr.config import ExperimentConfig, TrainConfig
    from crbr.train.loop import Trainer

    w = generate(SyntheticConfig.tiny(seed=7, n_users=150))
    ds = w.dataset
    split = leave_k_out(ds, 2)
    torch.manual_seed(0)
    m = build_model("dgi", {**TINY, "refresh_every": 5}, ds, split)
    cfg = ExperimentConfig(name="dgi", train=TrainConfig(epochs=4, batch_size=32, lr=3e-3, patience=50,
                                                         progress=False, eval_every=100, threads=1),
                           out_dir=str(tmp_path / "run"))
    res = Trainer(m, ds, split, cfg).fit()
    losses = [row["train_loss"] for row in res.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all("grad_encoder_norm" in row and "grad_encoder_norm_sq" in row for row in res.history)
    assert not m.ids_stale()  # the final weights' IDs


def test_reconstruction_targets_the_frozen_features_so_a_collapsed_encoder_pays(world):
    """recon_target="features" decodes the summed soft codes back to the encoder's frozen input
    features: an encoder that maps every item to one vector leaves a positive reconstruction loss
    (with recon_target="encoder" that collapse is free); the gradient reaches the decoder and the
    encoder."""
    ds, split = world
    only_recon = {**NTP_ONLY, "recon_weight": 1.0, "codebook_weight": 0.0}
    for target in ("features", "encoder"):
        m = tiny_model((ds, split), recon_target=target, **only_recon)
        assert (m.recon_decoder is not None) == (target == "features")
        b = a_batch((ds, split), m)
        if target == "features":
            m.train()
            m.zero_grad()
            m.loss(b).loss.backward()
            assert m.recon_decoder.weight.grad.abs().sum() > 0
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())
    m = tiny_model((ds, split), recon_target="features", **only_recon).train()
    with torch.no_grad():  # collapse the encoder: every item's e is the last layer's bias
        m.encoder[-1].weight.zero_()
    logs = m.loss(a_batch((ds, split), m)).logs
    assert float(logs["recon"]) > 0.05
