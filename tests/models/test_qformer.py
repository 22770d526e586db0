"""Q-Former user tower: masking semantics, fast paths against references, both pre-training
tasks, and learning on the synthetic world."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from crbr.data.batching import history_batch, train_batch
from crbr.data.dataset import leave_one_out, train_item_counts
from crbr.data.synthetic import SyntheticConfig, generate
from crbr.eval.evaluator import Evaluator
from crbr.models import build_model
from crbr.models.qformer import MHA, QFormer, QFormerConfig, choose_cuts, cos_sin, future_targets, rotary_angles, rotate

torch.set_num_threads(1)


def model(**kw) -> QFormer:
    base = dict(n_items=50, n_actions=3, hidden=16, n_queries=4, n_layers=2, n_heads=2, dropout=0.0, n_negatives=8, max_len=64)
    base.update(kw)
    torch.manual_seed(0)
    return QFormer(QFormerConfig(**base)).eval()


def batch_of(seqs, L, actions=None):
    B = len(seqs)
    items = torch.zeros(B, L, dtype=torch.long)
    acts = torch.zeros(B, L, dtype=torch.long)
    for b, s in enumerate(seqs):
        if s:
            items[b, L - len(s):] = torch.tensor(s)
            acts[b, L - len(s):] = 1 if actions is None else torch.tensor(actions[b])
    return {"items": items, "actions": acts, "lengths": (items > 0).sum(1)}


@settings(max_examples=15, deadline=None)
@given(seq=st.lists(st.integers(1, 50), min_size=0, max_size=12), extra=st.integers(0, 9))
def test_left_padding_does_not_change_tokens_or_scores(seq, extra):
    m = model()
    a = batch_of([seq], len(seq) + 1)
    b = batch_of([seq], len(seq) + 1 + extra)
    with torch.no_grad():
        torch.testing.assert_close(m.encode(a).tokens, m.encode(b).tokens, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.score(a)[:, 1:], m.score(b)[:, 1:], atol=1e-5, rtol=1e-5)


def test_history_is_a_set_up_to_its_encodings():
    """Items never attend to each other: without recency/time encodings the tower is
    permutation invariant over the history (a self-attention encoder would not be)."""
    m = model(use_actions=False, use_time=False)
    from crbr.models import qformer as q

    orig = q.sinusoidal
    q.sinusoidal = lambda x, d: torch.zeros(*x.shape, d)
    try:
        with torch.no_grad():
            t1 = m.encode(batch_of([[3, 7, 9, 11]], 6)).tokens
            t2 = m.encode(batch_of([[11, 3, 9, 7]], 6)).tokens
    finally:
        q.sinusoidal = orig
    torch.testing.assert_close(t1, t2, atol=1e-5, rtol=1e-5)


def test_hidden_events_do_not_influence_the_tokens():
    m = model()
    full = batch_of([[3, 7, 9, 11, 13]], 5)
    vis = torch.tensor([[True, False, True, True, True]])
    other = dict(full, items=full["items"].clone())
    other["items"][0, 1] = 42  # change the hidden item
    with torch.no_grad():
        torch.testing.assert_close(m.encode(full, vis).tokens, m.encode(other, vis).tokens)
        assert not torch.allclose(m.encode(full).tokens, m.encode(other).tokens)


def test_empty_history_is_finite():
    m = model()
    with torch.no_grad():
        s = m.score(batch_of([[], [4, 5]], 4))
    assert torch.isfinite(s[:, 1:]).all() and (s[:, 0] == float("-inf")).all()


def test_sdpa_matches_explicit_attention():
    torch.manual_seed(1)
    att = MHA(16, 4, 0.0).eval()
    x, ctx = torch.randn(3, 5, 16), torch.randn(3, 9, 16)
    mask = torch.rand(3, 9) > 0.3
    mask[:, 0] = True
    a, _ = att(x, ctx, mask)
    b, w = att(x, ctx, mask, need_weights=True)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.all(w[~mask[:, None, :].expand_as(w)] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 5))


def test_item_repr_table_and_gather_paths_agree():
    m = model(feature_dim=8)
    m.set_item_data(item_feats=np.random.default_rng(0).normal(size=(51, 8)).astype(np.float32))
    ids = torch.tensor([[1, 2, 50], [0, 7, 7]])
    few = m.item_repr(ids)  # 6 ids < 51 rows: gather, then project
    table = m.item_repr()[ids]  # project the table, then gather
    torch.testing.assert_close(few, table, atol=1e-6, rtol=1e-6)


def test_score_is_max_over_tokens_of_dot_products():
    m = model()
    b = batch_of([[1, 2, 3], [9]], 4)
    with torch.no_grad():
        z = m.user_tokens(b)  # (B, M, d)
        V = m.item_vectors()
        ref = torch.stack([(z[i] @ V.T).max(0).values for i in range(2)])
        got = m.score(b, chunk=7)  # chunked over items
    torch.testing.assert_close(got[:, 1:], ref[:, 1:])
    b = batch_of([[1, 2, 3], [9], [4, 5], [6], [7, 8, 9]], 4)
    with torch.no_grad():
        z = m.user_tokens(b)
        ref = torch.stack([(z[i] @ V.T).max(0).values for i in range(5)])
        M = z.shape[1]
        got = m.score(b, chunk=(1 << 19) // (2 * M))  # tiles of 2 users x all items
    torch.testing.assert_close(got[:, 1:], ref[:, 1:])


def test_itc_logq_and_accidental_hits():
    """Hand-check of Task A's logits: logQ of the mixed sampler, hits of the positive masked."""
    m = model(n_negatives=3, n_items=5)
    m.set_item_data(item_counts=np.array([0, 10, 20, 30, 20, 20]))
    z = torch.randn(2, 4, 16)
    pos = torch.tensor([2, 4])
    torch.manual_seed(5)
    got = m._itc(z, pos)
    torch.manual_seed(5)
    rand = torch.randint(1, 6, (3,))
    cand = torch.cat([pos, rand])
    zz = F.normalize(m.user_head(z), dim=-1)
    V = m.item_vectors(cand)
    sim = torch.einsum("bmd,cd->bmc", zz, V).amax(1) * m.logit_scale.exp()
    p = torch.tensor([0, 10, 20, 30, 20, 20], dtype=torch.float64) / 100
    q = (2 * p[cand] + 3 / 5) / 5
    logits = sim - q.log().float()
    for b in range(2):
        for j in range(5):
            if j != b and cand[j] == pos[b]:
                logits[b, j] = float("-inf")
    torch.testing.assert_close(got, F.cross_entropy(logits, torch.arange(2)))


def test_itc_with_several_future_positives_matches_a_pair_by_pair_reference():
    """itc_future = k: one softmax term per (row, positive); the row's other positives are left
    out of its softmax, other rows' positives stay negatives; padding positives are skipped."""
    m = model(n_negatives=3, n_items=5)
    m.set_item_data(item_counts=np.array([0, 10, 20, 30, 20, 20]))
    z = torch.randn(2, 4, 16)
    pos = torch.tensor([[2, 4], [3, 0]])
    torch.manual_seed(5)
    got = m._itc(z, pos)
    torch.manual_seed(5)
    rand = torch.randint(1, 6, (3,))
    pairs = [(0, 2), (0, 4), (1, 3)]
    cand = torch.cat([torch.tensor([p for _, p in pairs]), rand])
    zz = F.normalize(m.user_head(z), dim=-1)
    sim = torch.einsum("bmd,cd->bmc", zz, m.item_vectors(cand)).amax(1) * m.logit_scale.exp()
    p = torch.tensor([0, 10, 20, 30, 20, 20], dtype=torch.float64) / 100
    q = (3 * p[cand] + 3 / 5) / 6
    terms = []
    for j, (b, item) in enumerate(pairs):
        row = sim[b] - q.log().float()
        mine = {int(x) for x in pos[b] if x > 0}
        for c in range(len(cand)):
            if c != j and int(cand[c]) in mine:
                row[c] = float("-inf")
        terms.append(-(row[j] - torch.logsumexp(row, 0)))
    torch.testing.assert_close(got, torch.stack(terms).mean())


def timed_batch(seqs, L, seed=0):
    b = batch_of(seqs, L)
    g = torch.Generator().manual_seed(seed)
    gaps = torch.randint(1, 5_000_000, (len(seqs), L), generator=g)
    b["timestamps"] = torch.where(b["items"] > 0, 1_000_000_000 + gaps.cumsum(1), torch.zeros_like(gaps))
    return b


def test_rotation_depends_on_angle_differences_only():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8)  # (B, H, L, 2P)
    aq, ak = torch.randn(2, 5, 4), torch.randn(2, 7, 4)
    shift = torch.randn(2, 1, 4) * 100
    def dots(a, b):
        return rotate(q, cos_sin(a)) @ rotate(k, cos_sin(b)).transpose(-1, -2)

    ref = dots(aq, ak)
    torch.testing.assert_close(dots(aq + shift, ak + shift), ref, atol=1e-3, rtol=1e-4)
    assert not torch.allclose(dots(aq + 1.0, ak), ref, atol=1e-2)
    # angles: position pairs first, time pairs second; zero time = identity on the time pairs
    a = rotary_angles(torch.tensor([3.0]), torch.tensor([-120.0]), 4, use_time=True)
    assert a.shape == (1, 4) and a[0, 0] == 3.0 and a[0, 2] == pytest.approx(-2 * np.pi * 2)  # 120 s at a 60 s period
    torch.testing.assert_close(rotary_angles(torch.tensor([3.0]), None, 4, use_time=True)[0, 2:], torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("use_time", [False, True])
def test_rotary_tokens_depend_on_relative_positions_and_times(use_time):
    """Left padding and a common shift of all timestamps change nothing; the events' order does."""
    m = model(position="rotary", use_time=use_time)
    seq = [3, 7, 9, 11, 13]
    a, b = timed_batch([seq], 5), timed_batch([seq], 9)
    b["timestamps"][0, 4:] = a["timestamps"][0] + 777_000
    with torch.no_grad():
        torch.testing.assert_close(m.encode(a).tokens, m.encode(b).tokens, atol=1e-5, rtol=1e-5)
        rev = timed_batch([seq[::-1]], 5)
        assert not torch.allclose(m.encode(a).tokens, m.encode(rev).tokens, atol=1e-4)


@pytest.mark.parametrize("use_time", [False, True])
def test_cuts_sharing_the_history_equal_encoding_each_cut_alone(use_time):
    """The fast path (C query sets over one history, one key mask each) against its reference:
    encoding each cut's truncated history on its own."""
    m = model(position="rotary", use_time=use_time, n_cuts=3)
    b = timed_batch([[3, 7, 9, 11, 13, 2, 5], [4, 8, 15], [1, 2, 3, 4, 5, 6, 7, 8, 9]], 9)
    cuts = torch.tensor([[8, 4, 6], [8, 7, 6], [2, 5, 8]])  # window positions; row 1 starts at 6
    N = b["items"].shape[1]
    keys = (b["items"] > 0)[:, None, :] & (torch.arange(N)[None, None, :] <= cuts[..., None])
    with torch.no_grad():
        fast = m.encoder(m._history(b, None), keys, rope=m._rope(b, cuts)).tokens  # (B, C, M, D)
        assert fast.shape == (3, 3, 4, 16)
        for r in range(3):
            for j in range(3):
                c = int(cuts[r, j])
                alone = {k: v[r : r + 1, : c + 1] for k, v in b.items() if v.dim() == 2}
                torch.testing.assert_close(fast[r, j], m.encode(alone).tokens[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="needs position='rotary'"):
        QFormerConfig(n_items=5, n_cuts=2)


def test_choose_cuts_are_distinct_positions_with_targets():
    torch.manual_seed(0)
    tg = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [0, 0, 0, 0, 0, 4, 9], [1, 2, 3, 4, 5, 6, 7]])
    for _ in range(20):
        c = choose_cuts(tg, 3, random=True)
        for r in range(3):
            got = c[r].tolist()
            assert len(set(got)) == 3
            n_valid = int((tg[r] > 0).sum())
            assert sum(tg[r, i] > 0 for i in got) == min(3, n_valid)
            assert tg[r, got[0]] > 0  # cut 0 is always a real prediction point
    assert choose_cuts(tg, 2, random=False).tolist() == [[6, 5]] * 3
    fut = future_targets(tg, torch.tensor([[5, 6], [6, 5], [0, 6]]), 2)  # (B, C, k)
    assert fut.tolist() == [[[7, 8], [8, 0]], [[9, 0], [4, 9]], [[1, 2], [7, 0]]]


def test_cuts_on_padding_predict_nothing_and_every_cut_trains():
    """A row with fewer targets than cuts adds no Task A pair for its extra cuts (they would read
    an empty history); every valid cut's pairs reach the loss."""
    m = model(position="rotary", n_cuts=4, recon_weight=0.0, n_negatives=4).train()
    b = timed_batch([[3, 7], [4, 8, 15, 16, 23, 42]], 6)
    b["targets"] = torch.zeros_like(b["items"])
    b["targets"][0, 5] = 9  # one prediction point in row 0
    b["targets"][1, 2:] = torch.tensor([20, 21, 22, 24])  # four in row 1
    seen = {}
    orig = m._itc

    def spy(tokens, pos):  # record the Task A positives the loss builds
        seen["pos"] = pos
        return orig(tokens, pos)

    m._itc = spy
    m.loss(b)
    pos = seen["pos"]  # (B*C, 1)
    assert pos.shape == (8, 1)
    assert sorted(pos[:4, 0].tolist()) == [0, 0, 0, 9] and sorted(pos[4:, 0].tolist()) == [20, 21, 22, 24]


def test_mask_slots_never_hide_the_newest_or_padding():
    m = model(mask_ratio=0.5, max_masked=3)
    vis = torch.tensor([[False, True, True, True, True, True], [False, False, False, False, True, True],
                        [False, False, False, False, False, True]])
    for _ in range(20):
        idx, ok = m._mask_slots(vis)
        assert ok.sum(1).tolist() == [3, 1, 0]
        for b in range(3):
            chosen = idx[b][ok[b]].tolist()
            assert len(set(chosen)) == len(chosen)
            assert all(vis[b, i] for i in chosen) and 5 not in chosen


def test_both_tasks_train_and_can_be_switched_off():
    ds = generate(SyntheticConfig.tiny(seed=1)).dataset
    split = leave_one_out(ds)
    users = np.arange(16)
    b = train_batch(ds, users, split.train_len[users], 32)
    for kw, keys in [({}, {"itc", "recon"}), ({"recon_weight": 0.0}, {"itc"}), ({"itc_weight": 0.0}, {"recon"}),
                     ({"itc_future": 4}, {"itc", "recon"}),
                     ({"position": "rotary", "n_cuts": 3, "itc_future": 2}, {"itc", "recon"})]:
        m = model(n_items=ds.n_items, n_actions=ds.n_actions, **kw).train()
        out = m.loss(b)
        assert keys <= set(out.logs) and not ({"itc", "recon"} - keys) & set(out.logs)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert m.encoder.queries.grad is not None and m.encoder.queries.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="nothing to train"):
        QFormerConfig(n_items=5, itc_weight=0, recon_weight=0)
    # Task B alone on histories of one event has no slot to hide: a zero loss the step can still take
    m = model(n_items=ds.n_items, n_actions=ds.n_actions, itc_weight=0.0).train()
    short = train_batch(ds, users, np.full(len(users), 2), 32)
    out = m.loss(short)
    assert float(out.loss.detach()) == 0.0 and "recon" not in out.logs
    out.loss.backward()


def test_long_histories_run():
    m = model(max_len=16384, n_items=1000)
    L = 16384
    items = torch.randint(1, 1001, (1, L))
    with torch.no_grad():
        z = m.encode({"items": items, "actions": torch.ones_like(items)}).tokens
    assert z.shape == (1, 4, 16) and torch.isfinite(z).all()


def test_learns_on_the_synthetic_world_with_and_without_features(fit_steps):
    world = generate(SyntheticConfig.tiny(seed=2))
    ds = world.dataset
    split = leave_one_out(ds)
    counts = train_item_counts(ds, split)
    ev = Evaluator(ds, split.test, counts, max_len=64, batch_size=256)
    pop = torch.as_tensor(counts, dtype=torch.float32)
    pop_ndcg = ev.evaluate(lambda b: pop.expand(len(b["items"]), -1)).metrics["NDCG@10"]
    feats = world.item_embeddings  # (I, 16) ground-truth item vectors as "frozen features"
    settings = dict(hidden=32, n_queries=4, n_layers=1, n_heads=2, dropout=0.0, max_len=64, n_negatives=64)
    for frozen, extra in ((False, {}), (True, {}), (False, {"position": "rotary", "n_cuts": 4})):
        torch.manual_seed(0)
        if not frozen:  # learnable ID embeddings only (input or rotary positions, one or 4 cuts per window)
            m = build_model("qformer", {**settings, **extra}, ds, split)
        else:  # frozen features only: the ground-truth item vectors
            m = QFormer(QFormerConfig(n_items=ds.n_items, n_actions=ds.n_actions, feature_dim=feats.shape[1],
                                      use_id_embedding=False, **settings))
            m.set_item_data(item_feats=feats, item_counts=counts)
        fit_steps(m, ds, split, 250)
        with torch.no_grad():
            ndcg = ev.evaluate(m.score).metrics["NDCG@10"]
        assert ndcg > 1.5 * pop_ndcg, (frozen, extra, ndcg, pop_ndcg)


def test_diagnostics_report_specialization():
    ds = generate(SyntheticConfig.tiny(seed=1)).dataset
    m = model(n_items=ds.n_items, n_actions=ds.n_actions)
    users = np.arange(32)
    b = history_batch(ds, users, np.asarray(ds.lengths())[users] - 1, 32)
    tg = torch.as_tensor(np.asarray(ds.items)[ds.offsets[users] + np.asarray(ds.lengths())[users] - 1])
    d = m.diagnostics(b, item_bucket=np.arange(ds.n_items + 1) % 5, targets=tg)
    assert -1 <= d["token_cosine"] <= 1 and len(d["attn_entropy"]) == 4
    assert all(0 <= e <= np.log(33) + 1e-5 for e in d["attn_entropy"])
    assert sum(sum(v) for v in d["win_share"].values()) == pytest.approx(len(d["win_share"]))
    assert 1 <= d["win_perplexity"] <= 4


def test_trainer_writes_diagnostics_and_report_plots_them(tmp_path):
    from crbr.cli.main import main
    from crbr.config import ExperimentConfig, from_dict
    from crbr.eval.report import read_diagnostics
    from crbr.train.loop import Trainer

    cfg = from_dict(ExperimentConfig, {
        "name": "q", "data": {"name": "synthetic", "synthetic": {"seed": 3}},
        "model": {"name": "qformer", "max_len": 32, "hidden": 16, "n_queries": 4, "n_layers": 1, "n_negatives": 16},
        "train": {"epochs": 2, "batch_size": 64, "progress": False, "threads": 1}, "eval": {"batch_size": 128},
        "out_dir": str(tmp_path)})
    world = generate(SyntheticConfig.tiny(seed=3))
    ds = world.dataset
    split = leave_one_out(ds)
    m = build_model("qformer", cfg.model_params, ds, split)
    Trainer(m, ds, split, cfg, max_len=32).fit()
    rows = read_diagnostics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2] and len(rows[0]["attn_entropy"]) == 4
    assert "diag_token_cosine" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "plots" / "curves.png").stat().st_size > 0
    assert (tmp_path / "plots" / "diagnostics.png").stat().st_size > 0
    assert (tmp_path / "plots" / "diagnostics_scalars.png").stat().st_size > 0  # token_cosine etc. per epoch


def test_gradients_repeat_bit_for_bit_with_two_threads():
    """A seeded training step gives the same gradients on every run at the default two threads:
    every gather of a learned table goes through F.embedding, whose backward sums in a fixed
    order (tensor indexing's CPU backward does not once torch uses more than one thread)."""
    ds = generate(SyntheticConfig.tiny(seed=2)).dataset
    split = leave_one_out(ds)
    users = np.arange(min(64, ds.n_users))
    b = train_batch(ds, users, split.train_len[users], 48)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            m = model(n_items=ds.n_items, n_actions=ds.n_actions, hidden=32, max_len=48, dropout=0.0).train()
            torch.manual_seed(1)
            m.loss(b).loss.backward()
            grads.append([p.grad.clone() for p in m.parameters() if p.grad is not None])
    finally:
        torch.set_num_threads(before)
    for g in grads[1:]:
        assert all(torch.equal(x, y) for x, y in zip(grads[0], g))
