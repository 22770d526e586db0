import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crbr.data.batching import TrainUsers
from crbr.data.dataset import SequenceDataset, leave_one_out, train_item_counts
from crbr.eval.evaluator import Evaluator
from crbr.models.pinnerformer import PinnerFormer, PinnerFormerConfig, sample_future_positives, sample_positions

N_ITEMS, N_ACTIONS, FDIM = 30, 4, 6


def make(max_len=12, feats=False, **kw):
    torch.manual_seed(0)
    base = dict(n_items=N_ITEMS, n_actions=N_ACTIONS, max_len=max_len, hidden=16, n_layers=2, n_heads=2,
                ffn_mult=2, dropout=0.0, n_random_negatives=8, feature_dim=FDIM if feats else 0)
    base.update(kw)
    m = PinnerFormer(PinnerFormerConfig(**base))
    if feats:
        g = torch.Generator().manual_seed(1)
        m.set_item_data(torch.randn(N_ITEMS + 1, FDIM, generator=g).numpy(), None)
    return m.eval()


def window(seq, L, acts=None):
    x = torch.zeros(1, L, dtype=torch.long)
    a = torch.zeros(1, L, dtype=torch.long)
    if seq:
        x[0, L - len(seq):] = torch.tensor(seq)
        a[0, L - len(seq):] = torch.tensor(acts if acts is not None else [1] * len(seq))
    return {"items": x, "actions": a}


# ------------------------------------------------------------------ encoder / score
@settings(max_examples=25, deadline=None)
@given(seq=st.lists(st.integers(1, N_ITEMS), min_size=1, max_size=8), extra=st.integers(0, 4),
       feats=st.booleans(), use_actions=st.booleans(), data=st.data())
def test_left_padding_does_not_change_scores(seq, extra, feats, use_actions, data):
    """Same history in a longer, more padded window (and batched with another user) -> same scores."""
    acts = data.draw(st.lists(st.integers(1, N_ACTIONS - 1), min_size=len(seq), max_size=len(seq)))
    m = make(feats=feats, use_actions=use_actions)
    short = window(seq, 8, acts)
    long = window(seq, 8 + extra, acts)
    other = window([5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16][: 8 + extra], 8 + extra)
    both = {k: torch.cat([long[k], other[k]]) for k in long}
    with torch.no_grad():
        s1 = m.score(short)
        s2 = m.score(long)
        s3 = m.score(both)
    assert s1.shape == (1, N_ITEMS + 1) and s3.shape == (2, N_ITEMS + 1)
    assert torch.isneginf(s3[:, 0]).all() and torch.isfinite(s3[:, 1:]).all()
    assert torch.allclose(s1, s2, atol=1e-5)
    assert torch.allclose(s3[:1], s1, atol=1e-5)
    assert (s1[:, 1:].abs() <= 1 + 1e-5).all()  # cosine similarities


def test_causal_future_events_do_not_change_past_user_vectors():
    m = make(feats=True)
    a = window([3, 5, 7, 9, 11], 12)
    b = window([3, 5, 7, 9, 20], 12)
    with torch.no_grad():
        ua, ub = m.project_users(m.encode(a)), m.project_users(m.encode(b))
    assert torch.allclose(ua[:, :-1], ub[:, :-1], atol=1e-6)
    assert not torch.allclose(ua[:, -1], ub[:, -1], atol=1e-4)
    assert torch.allclose(ua[0, -5:].norm(dim=-1), torch.ones(5), atol=1e-5)


def test_eval_cache_follows_weight_changes():
    m = make()
    b = window([1, 2, 3], 6)
    with torch.no_grad():
        s1 = m.score(b)
        assert torch.equal(m.score(b), s1)
        m.item_emb.weight[4] += 1.0  # in place, as an optimizer step would
        s2 = m.score(b)
    assert not torch.allclose(s1[:, 4], s2[:, 4])
    m.train()
    s3 = m.score(b).detach()  # training / grad mode recomputes
    assert torch.allclose(s2, s3, atol=1e-6)


# ------------------------------------------------------------------ samplers
def ref_future(targets, actions, K, positive_actions):
    """Slow reference: eligible future columns of every position."""
    B, L = targets.shape
    out = {}
    for b in range(B):
        for t in range(L):
            if targets[b, t] == 0:
                out[b, t] = []
                continue
            out[b, t] = [j for j in range(t, min(t + K, L)) if targets[b, j] > 0
                         and (not positive_actions or int(actions[b, j]) in positive_actions)]
    return out


@pytest.mark.parametrize("K,positive_actions", [(1, []), (3, []), (3, [1, 3]), (20, [2])])
def test_future_sampler_draws_uniformly_among_real_future_events_within_k(K, positive_actions):
    # left padding; row 1 has stride-masked older targets; row 2 has no positive action at the end
    targets = torch.tensor([
        [0, 0, 0, 4, 5, 6, 7, 8],
        [0, 0, 0, 0, 0, 3, 9, 2],
        [1, 2, 3, 4, 5, 6, 7, 8],
    ])
    actions = torch.tensor([
        [0, 0, 0, 1, 2, 3, 1, 2],
        [0, 0, 0, 0, 0, 1, 1, 3],
        [1, 3, 2, 1, 3, 2, 2, 2],
    ])
    ref = ref_future(targets, actions, K, positive_actions)
    R = 3000  # draws per position, in one call on a tiled batch
    g = torch.Generator().manual_seed(0)
    j = sample_future_positives(targets.repeat(R, 1), actions.repeat(R, 1), K, positive_actions, generator=g)
    j = j.view(R, *targets.shape)
    for (b, t), elig in ref.items():
        draws = j[:, b, t]
        if not elig:
            assert (draws == -1).all(), (b, t)
            continue
        assert set(draws.tolist()) <= set(elig), (b, t, elig)
        freq = torch.bincount(draws, minlength=targets.shape[1])[elig].double() / R
        assert (freq - 1 / len(elig)).abs().max() < 0.04, (b, t, freq)


def test_position_subsample_is_a_subset_of_at_most_m_per_row():
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(50, 10, generator=g) < 0.6
    keep = sample_positions(valid, 3, generator=g)
    assert not (keep & ~valid).any()
    assert torch.equal(keep.sum(1), valid.sum(1).clamp(max=3))
    assert torch.equal(sample_positions(valid, 0), valid)
    # uniform: every valid position of a full row is kept about 3/10 of the time
    full = torch.ones(20000, 10, dtype=torch.bool)
    rate = sample_positions(full, 3, generator=g).double().mean(0)
    assert (rate - 0.3).abs().max() < 0.02


# ------------------------------------------------------------------ sampled softmax
def counts_and_q():
    counts = np.zeros(N_ITEMS + 1, dtype=np.int64)
    counts[1:] = np.arange(1, N_ITEMS + 1)  # item i seen i times
    return counts, counts / counts[1:].sum()


@pytest.mark.parametrize("n_random", [0, 5])
def test_logq_correction_is_minus_log_expected_sampling_count(n_random):
    m = make()
    counts, q = counts_and_q()
    m.set_item_data(None, counts)
    assert np.allclose(m.item_logq[1:].exp().numpy(), q[1:], rtol=1e-6)
    g = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(4, 16, generator=g), dim=-1)
    pos = torch.tensor([3, 7, 7, 30])
    in_batch = torch.tensor([3, 7, 7, 30])  # the batch's positives
    rnd = torch.tensor([1, 2, 9, 7, 11])[:n_random]
    with torch.no_grad():
        corrected = m.sampled_logits(u, pos, in_batch, rnd)
        m.config.logq_correction = False
        plain = m.sampled_logits(u, pos, in_batch, rnd)
        # uncorrected logits = cosine / temperature, by hand
        v = m.item_vectors(torch.cat([pos, in_batch, rnd]))
    cos_pos = (u * v[:4]).sum(-1)
    cos_neg = u @ v[4:].T
    want_plain = torch.cat([cos_pos[:, None], cos_neg], 1) / m.config.temperature
    hit = torch.cat([in_batch, rnd])[None, :] == pos[:, None]
    want_plain[:, 1:][hit] = -math.inf
    assert torch.allclose(plain, want_plain, atol=1e-5)
    # correction by hand: -log q_i with only in-batch negatives, -log(q_i + R / (M_b N)) when mixed
    ids = torch.cat([pos, in_batch, rnd]).numpy()
    c = -np.log(q[ids] + n_random / (len(in_batch) * N_ITEMS))
    want = torch.cat([plain[:, :1] + torch.tensor(c[:4], dtype=torch.float32)[:, None],
                      plain[:, 1:] + torch.tensor(c[4:], dtype=torch.float32)[None, :]], 1)
    fin = torch.isfinite(want)
    assert torch.equal(fin, torch.isfinite(corrected))
    assert torch.allclose(corrected[fin], want[fin], atol=1e-4)
    if n_random == 0:  # in-batch columns moved by exactly -log q
        d = (corrected - plain)[:, 1:5]
        assert torch.allclose(d[torch.isfinite(d)], torch.tensor(-np.log(q[in_batch.numpy()]), dtype=torch.float32).expand(4, 4)[torch.isfinite(d)], atol=1e-5)


def test_accidental_hits_are_masked_and_the_loss_ignores_them():
    m = make()
    g = torch.Generator().manual_seed(1)
    u = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    pos = torch.tensor([4, 5, 4])
    in_batch = pos
    rnd = torch.tensor([4, 6, 5, 8])
    with torch.no_grad():
        logits = m.sampled_logits(u, pos, in_batch, rnd)
    cand = torch.cat([in_batch, rnd])
    hits = cand[None, :] == pos[:, None]  # (3, 7)
    assert torch.isneginf(logits[:, 1:][hits]).all()
    assert torch.isfinite(logits[:, 1:][~hits]).all() and torch.isfinite(logits[:, 0]).all()
    # the row's loss equals the CE over the non-hit candidates only
    for i in range(3):
        keep = torch.cat([logits[i, :1], logits[i, 1:][~hits[i]]])
        ce = F.cross_entropy(logits[i : i + 1], torch.zeros(1, dtype=torch.long))
        assert torch.allclose(ce, -torch.log_softmax(keep, 0)[0])


def train_batch_like(B=4, L=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, N_ITEMS + 1, (B, L), generator=g)
    lens = torch.tensor([L, 7, 3, 1])[:B]
    pad = torch.arange(L)[None, :] < (L - lens)[:, None]
    items = items.masked_fill(pad, 0)
    acts = torch.randint(1, N_ACTIONS, (B, L), generator=g).masked_fill(pad, 0)
    nxt = torch.randint(1, N_ITEMS + 1, (B, 1), generator=g)
    targets = torch.cat([items[:, 1:], nxt], 1).masked_fill(pad, 0)
    tacts = torch.cat([acts[:, 1:], torch.ones(B, 1, dtype=torch.long)], 1).masked_fill(pad, 0)
    return {"items": items, "actions": acts, "targets": targets, "target_actions": tacts}


def test_loss_finite_and_gradients_reach_all_parameters():
    m = make(feats=True, use_actions=True, learn_temperature=True, max_len=12, positions_per_seq=0).train()
    m.set_item_data(None, counts_and_q()[0])
    out = m.loss(train_batch_like())
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    assert out.logs["positions"] == 12 + 7 + 3 + 1 and "temperature" in out.logs
    out.loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert m.item_emb.weight.grad[0].abs().sum() == 0  # padding row untouched
    names = dict(m.named_parameters())
    assert "feat_proj.weight" in names and "item_emb.weight" in names and "log_temperature" in names


def test_positions_per_seq_and_positive_actions_limit_the_trained_positions():
    m = make(positions_per_seq=2, future_window=1).train()
    assert m.loss(train_batch_like()).logs["positions"] == 2 + 2 + 2 + 1
    m = make(positions_per_seq=0, future_window=1, positive_actions=[2]).train()
    b = train_batch_like()
    assert m.loss(b).logs["positions"] == float(((b["targets"] > 0) & (b["target_actions"] == 2)).sum())
    # nothing eligible: zero loss that still backpropagates
    b["target_actions"] = b["target_actions"].clamp(max=1)
    out = m.loss(b)
    assert out.loss.item() == 0.0 and out.logs["positions"] == 0
    out.loss.backward()


def test_loss_under_bf16_autocast_is_finite():
    m = make(feats=True).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.loss(train_batch_like())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()


# ------------------------------------------------------------------ buffers
def test_attach_data_checks_shapes_and_buffers_travel_with_the_state_dict():
    m = make(feats=True)
    feats = np.random.default_rng(0).standard_normal((N_ITEMS + 1, FDIM)).astype(np.float32)
    m.set_item_data(feats, counts_and_q()[0])
    assert torch.all(m.item_feats[0] == 0) and torch.allclose(m.item_feats[1:], torch.from_numpy(feats[1:]))
    with pytest.raises(ValueError, match="shape"):
        m.set_item_data(feats[1:], None)
    with pytest.raises(ValueError, match="shape"):
        m.set_item_data(None, np.ones(N_ITEMS))
    with pytest.raises(ValueError, match="feature_dim"):
        make().set_item_data(feats, None)
    sd = m.state_dict()
    assert "item_feats" in sd and "item_logq" in sd
    fresh = make(feats=False, feature_dim=FDIM)  # buffers still zero / uniform
    assert not torch.equal(fresh.item_logq, m.item_logq)
    fresh.load_state_dict(sd)
    b = window([1, 2, 3], 6)
    with torch.no_grad():
        assert torch.allclose(fresh.score(b), m.score(b))
    # a feature-only model (no ID embedding) has no embedding table
    fo = make(feats=True, use_id_embedding=False)
    assert fo.item_emb is None and torch.isfinite(fo.score(b)[:, 1:]).all()
    with pytest.raises(ValueError, match="use_id_embedding"):
        PinnerFormerConfig(n_items=5, use_id_embedding=False)


# ------------------------------------------------------------------ learning
def clustered_dataset(n_users=300, n_clusters=20, per=10, noise=0.1, seed=0) -> SequenceDataset:
    """Each user stays in one cluster of `per` items (Zipf inside it), 10% random noise events:
    the next item is (almost) always one of 10 items of the user's cluster."""
    rng = np.random.default_rng(seed)
    N = n_clusters * per
    lens = rng.integers(15, 31, n_users)
    cluster = rng.integers(0, n_clusters, n_users)
    w = 1.0 / np.arange(1, per + 1)
    seqs = []
    for u in range(n_users):
        it = 1 + cluster[u] * per + rng.choice(per, size=lens[u], p=w / w.sum())
        noisy = rng.random(lens[u]) < noise
        it[noisy] = rng.integers(1, N + 1, noisy.sum())
        seqs.append(it)
    items = np.concatenate(seqs).astype(np.int32)
    ds = SequenceDataset(
        offsets=np.r_[0, np.cumsum(lens)].astype(np.int64), items=items,
        actions=np.ones(len(items), dtype=np.int16), timestamps=None,
        user_ids=np.array([f"u{u}" for u in range(n_users)], dtype=object),
        item_ids=np.array([""] + [f"i{i}" for i in range(1, N + 1)], dtype=object),
        action_names=["<pad>", "click"],
    )
    ds.validate()
    return ds


@pytest.mark.parametrize("feats", [False, True])
def test_learns_far_above_popularity(feats):
    ds = clustered_dataset()
    split = leave_one_out(ds)
    counts = train_item_counts(ds, split)
    torch.manual_seed(0)
    cfg = PinnerFormerConfig(n_items=ds.n_items, n_actions=ds.n_actions, max_len=20, hidden=32, n_layers=1,
                             n_heads=1, ffn_mult=2, dropout=0.0, temperature=0.1, positions_per_seq=8,
                             n_random_negatives=64, feature_dim=4 if feats else 0, use_id_embedding=not feats)
    m = PinnerFormer(cfg)
    item_feats = None
    if feats:  # weak item features: a noisy code of the item's cluster, no ID embedding at all
        rng = np.random.default_rng(1)
        cluster_code = rng.standard_normal((20, 4))
        item_feats = np.zeros((ds.n_items + 1, 4), dtype=np.float32)
        item_feats[1:] = np.repeat(cluster_code, 10, axis=0) + 0.3 * rng.standard_normal((ds.n_items, 4))
    m.set_item_data(item_feats, counts)
    users = TrainUsers(ds, split, cfg.max_len)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        out = m.loss(users.collate(rng.choice(len(users), 64, replace=False).tolist()))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    m.eval()
    ev = Evaluator(ds, split.test, counts, max_len=cfg.max_len)
    pop = torch.as_tensor(counts, dtype=torch.float32)
    pop_hr = ev.evaluate(lambda b: pop.expand(len(b["items"]), -1)).metrics["HR@10"]
    hr = ev.evaluate(m.score).metrics["HR@10"]
    assert pop_hr < 0.3
    assert hr > 0.6 and hr > 3 * pop_hr, (hr, pop_hr)
