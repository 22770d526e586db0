"""The generative retriever: its trie against brute force, constrained beam search against
exhaustive enumeration, scopes that hold, teacher forcing against a step-by-step reference
without the cache, and learning items and actions on the synthetic world."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crbr.data.batching import history_batch
from crbr.data.dataset import leave_k_out, leave_one_out, train_item_counts
from crbr.data.synthetic import SyntheticConfig, generate
from crbr.eval import Evaluator
from crbr.eval.metrics import auc
from crbr.models import build_model, load_model
from crbr.models.generative import NO_CONTROL, Trie
from crbr.semantic_ids import RQKMeansConfig, build_semantic_ids

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    w = generate(SyntheticConfig.tiny(seed=3, n_users=150))
    ds = w.dataset
    sid = build_semantic_ids(ds, np.asarray(w.item_embeddings), RQKMeansConfig(levels=2, codebook_size=8), cache_dir=d)
    path = sid.save(d / "ids.parquet")
    return w, ds, str(path)


def tiny_model(ds, ids, split=None, **kw):
    torch.manual_seed(0)
    params = dict(semantic_ids=ids, item_features="random:8:1", window=4, hidden=16, n_layers=1, n_heads=2)
    params.update(kw)
    return build_model("generative", params, ds, split).eval()


def test_the_trie_holds_exactly_the_valid_continuations():
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 3, size=(40, 3)), axis=0)
    table = torch.from_numpy(np.vstack([np.zeros((1, 3), dtype=np.int64), codes]))
    trie = Trie(table, [3, 3, 3])
    for depth in range(3):
        for prefix in sorted({tuple(r[:depth]) for r in codes.tolist()}):
            node = trie.node_of_item[depth][1:][np.all(codes[:, :depth] == prefix, axis=1)][0]
            child = trie.child(depth, node.reshape(1))[0]
            want = {r[depth] for r in codes.tolist() if tuple(r[:depth]) == prefix}
            assert {int(c) for c in torch.nonzero(child >= 0).flatten()} == want
    leaves = trie.child(2, trie.node_of_item[2][1:])  # every item's own leaf is itself
    assert (leaves.gather(1, table[1:, 2:3])[:, 0] == torch.arange(1, len(codes) + 1)).all()


def test_a_full_width_beam_equals_exhaustive_enumeration(world):
    _, ds, ids = world
    m = tiny_model(ds, ids)
    split = leave_one_out(ds)
    users = np.arange(5)
    b = history_batch(ds, users, split.test.hist_len[users], m.max_len)
    every = torch.arange(1, ds.n_items + 1).expand(5, -1)
    ll, _ = m.candidate_scores(b, every)
    r = m.rank(b, ds.n_items, beam=ds.n_items)
    for u in range(5):
        order = sorted(range(ds.n_items), key=lambda i: (-float(ll[u, i]), i))
        assert r.items[u].tolist() == [i + 1 for i in order]
        torch.testing.assert_close(r.scores[u], ll[u][torch.tensor(order)], rtol=1e-4, atol=1e-4)
    assert (r.items > 0).all()  # every item valid, each once
    assert all(len(set(row)) == ds.n_items for row in r.items.tolist())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 30), beam=st.integers(1, 40))
def test_scoped_decoding_never_leaves_its_scope(world, seed, k, beam):
    _, ds, ids = world
    m = _cached_model(ds, ids)
    rng = np.random.default_rng(seed)
    split = leave_one_out(ds)
    users = rng.choice(ds.n_users, 3, replace=False)
    b = history_batch(ds, users, split.test.hist_len[users], m.max_len)
    scope = torch.from_numpy(rng.random((3, ds.n_items + 1)) < rng.uniform(0.02, 0.5))
    exclude = torch.from_numpy(rng.integers(0, ds.n_items + 1, size=(3, 7)))
    r = m.rank(b, k, exclude=exclude, scope=scope, beam=beam)
    for u in range(3):
        got = [i for i in r.items[u].tolist() if i > 0]
        allowed = set(torch.nonzero(scope[u]).flatten().tolist()) - set(exclude[u].tolist()) - {0}
        assert set(got) <= allowed and len(got) == len(set(got))
        if beam >= k:
            assert len(got) == min(k, len(allowed))  # a wide enough beam fills the list from the scope


_MODELS: dict = {}


def _cached_model(ds, ids):
    if ids not in _MODELS:
        _MODELS[ids] = tiny_model(ds, ids)
    return _MODELS[ids]


def reference_scores(m, batch, item: int) -> tuple[float, torch.Tensor]:
    """log p(item) and the action distribution by one uncached pass over history + the item's
    tokens, reading each level's probability at its position."""
    c = m.config
    W = min(c.window, batch["items"].shape[1])
    n_old = batch["items"].shape[1] - W
    events = torch.cat([batch["items"][:, n_old:], torch.tensor([[item]])], 1)
    actions = torch.cat([batch["actions"][:, n_old:], torch.tensor([[0]])], 1)
    prefix, user = m.profile(batch, n_old)
    e_final, _ = m.item_final(events, user)
    x = m.event_tokens(events, actions, torch.zeros_like(events), e_final)  # the new event at position `window`
    B, N, S, D = x.shape
    valid = (events > 0)[..., None].expand(B, N, S).reshape(B, N * S)
    h = m.run(prefix, x.reshape(B, N * S, D), valid).view(B, N, S, D)[0, -1]  # the new event's states
    codes = m.item_codes[item]
    ll = sum(float(F.log_softmax(head(h[l]), -1)[codes[l]].detach()) for l, head in enumerate(m.code_heads))
    e_item = e_final[0, -1]
    act = F.log_softmax(m.action_head(torch.cat([h[c.levels], e_item])), -1).detach()
    return ll, act


def test_teacher_forcing_equals_the_product_of_stepwise_probabilities(world):
    _, ds, ids = world
    m = tiny_model(ds, ids)
    split = leave_one_out(ds)
    users = np.array([4])
    b = history_batch(ds, users, split.test.hist_len[users], m.max_len)
    cands = torch.tensor([[1, 17, 250, 99]])
    ll, act = m.candidate_scores(b, cands)
    for j, item in enumerate(cands[0].tolist()):
        ref_ll, ref_act = reference_scores(m, b, item)
        assert abs(float(ll[0, j]) - ref_ll) < 1e-4
        torch.testing.assert_close(act[0, j], ref_act, rtol=1e-4, atol=1e-5)
    probs = m.action_propensity(b, cands)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4))


def test_a_control_changes_the_ranking_and_unknown_controls_are_errors(world):
    _, ds, ids = world
    m = tiny_model(ds, ids)
    split = leave_one_out(ds)
    b = history_batch(ds, np.arange(3), split.test.hist_len[:3], m.max_len)
    plain = m.rank(b, 10)
    with torch.no_grad():
        m.control_emb.weight[1].normal_(0, 1.0)  # make [EXPLORE] matter
    assert not torch.equal(m.rank(b, 10, control="explore").scores, plain.scores)
    assert torch.equal(m.rank(b, 10, control=None).scores, plain.scores)
    with pytest.raises(ValueError, match="out of range"):
        m.rank(b, 10, control=f"cat:{len(ds.category_names) + 3}")


def test_the_checkpoint_carries_the_item_codes(world, tmp_path):
    from crbr.checkpoint import save_weights

    _, ds, ids = world
    m = tiny_model(ds, ids)
    save_weights(tmp_path / "g.safetensors", m, m.model_name, {})
    back, _ = load_model(tmp_path / "g.safetensors")
    assert torch.equal(back.item_codes, m.item_codes)
    split = leave_one_out(ds)
    b = history_batch(ds, np.arange(4), split.test.hist_len[:4], m.max_len)
    assert torch.equal(back.rank(b, 10).items, m.rank(b, 10).items)


@pytest.mark.slow
def test_it_learns_items_and_actions_on_the_synthetic_world(tmp_path):
    from crbr.config import ExperimentConfig, TrainConfig
    from crbr.train.loop import Trainer

    w = generate(SyntheticConfig.tiny(seed=7, n_users=400))
    ds = w.dataset
    split = leave_k_out(ds, 3)
    sid = build_semantic_ids(ds, np.asarray(w.item_embeddings), RQKMeansConfig(levels=2, codebook_size=8),
                             cache_dir=tmp_path)
    ids = str(sid.save(tmp_path / "ids.parquet"))
    torch.manual_seed(0)
    m = build_model("generative", dict(semantic_ids=ids, window=8, hidden=32, n_layers=2, n_heads=2, beam=20,
                                       action_weight=1.0), ds, split)
    cfg = ExperimentConfig(name="gen", train=TrainConfig(epochs=12, batch_size=32, lr=3e-3, windows="all",
                                                         window_stride=8, patience=50, progress=False, eval_every=100),
                           out_dir=str(tmp_path / "run"))
    Trainer(m, ds, split, cfg).fit()
    m.eval()
    counts = train_item_counts(ds, split)
    ev = Evaluator(ds, split.test, counts, ks=(10,), max_len=m.max_len, export_k=20)
    gen = ev.evaluate_model(m, beam=20).metrics["Recall@10"]
    pop = ev.evaluate(lambda b: torch.as_tensor(counts, dtype=torch.float32).expand(b["items"].shape[0], -1)).metrics
    assert gen > 1.5 * pop["Recall@10"], (gen, pop)
    # actions: p(dislike or skip) on the held-out events is higher for the events that were negative
    es = split.test
    b = history_batch(ds, es.users, es.hist_len, m.max_len)
    first = torch.from_numpy(es.target_items[es.target_offsets[:-1]].astype(np.int64))[:, None]
    p = m.action_propensity(b, first)[:, 0]  # (U, A)
    names = ds.action_names
    neg_ids = [names.index("dislike"), names.index("skip")]
    truth = np.asarray(ds.actions)[np.asarray(ds.offsets)[es.users] + es.hist_len]
    neg = np.isin(truth, neg_ids)
    score = p[:, neg_ids].sum(1).numpy()
    assert auc(score[neg], score[~neg]) > 0.6


def test_models_declare_the_options_their_rank_takes():
    import inspect

    from crbr.models import MODELS

    for name, (cls, _) in MODELS.items():
        params = inspect.signature(cls.rank).parameters
        for opt in cls.rank_options:
            assert opt in params or any(p.kind is p.VAR_KEYWORD for p in params.values()), (name, opt)
    assert "control" in MODELS["generative"][0].rank_options


def test_without_action_input_the_history_actions_change_nothing(world):
    """action_input=False (the ablation): the history's actions never reach the decoder, so
    predictions are the same whatever they were; with it they matter."""
    _, ds, ids = world
    split = leave_one_out(ds)
    users = np.arange(6)
    b = history_batch(ds, users, split.test.hist_len[users], 8)
    other = dict(b, actions=torch.where(b["items"] > 0, (b["actions"] % (ds.n_actions - 1)) + 1, b["actions"]))
    assert not torch.equal(other["actions"], b["actions"])
    cand = torch.arange(1, 11).expand(6, -1)
    for action_input, same in ((False, True), (True, False)):
        m = tiny_model(ds, ids, action_input=action_input)
        with torch.no_grad():
            m.action_emb.weight.normal_(0, 1.0)
            m.action_emb.weight[0].zero_()
        ll_a, act_a = m.candidate_scores(b, cand)
        ll_b, act_b = m.candidate_scores(other, cand)
        assert torch.equal(ll_a, ll_b) == same and torch.equal(act_a, act_b) == same
