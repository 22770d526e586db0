import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crbr.models import SASRec, SASRecConfig, build_model


def make(max_len=12, **kw):
    torch.manual_seed(0)
    cfg = SASRecConfig(n_items=30, n_actions=3, max_len=max_len, hidden=16, n_layers=2, n_heads=2, dropout=0.0, **kw)
    return SASRec(cfg).eval()


def window(seq, L):
    x = torch.zeros(1, L, dtype=torch.long)
    x[0, L - len(seq):] = torch.tensor(seq)
    return x


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_causal_future_items_do_not_change_past_states(norm):
    m = make(norm=norm)
    a = window([3, 5, 7, 9, 11], 12)
    b = a.clone()
    b[0, -1] = 20  # change only the newest item
    with torch.no_grad():
        ha = m.encode({"items": a, "actions": (a > 0).long()})
        hb = m.encode({"items": b, "actions": (b > 0).long()})
    assert torch.allclose(ha[:, :-1], hb[:, :-1], atol=1e-6)
    assert not torch.allclose(ha[:, -1], hb[:, -1], atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(seq=st.lists(st.integers(1, 30), min_size=1, max_size=8), extra=st.integers(0, 4), norm=st.sampled_from(["pre", "post"]))
def test_left_padding_does_not_change_scores(seq, extra, norm):
    """The same history in a longer, more padded window gives the same scores."""
    m = make(norm=norm)
    short = window(seq, 8)
    long = window(seq, 8 + extra)
    with torch.no_grad():
        s1 = m.score({"items": short, "actions": (short > 0).long()})
        s2 = m.score({"items": long, "actions": (long > 0).long()})
    assert torch.isfinite(s1).all()
    assert torch.allclose(s1, s2, atol=1e-5)


def test_ce_loss_counts_only_real_positions():
    m = make()
    items = torch.tensor([[0, 0, 0, 4, 5, 6], [0, 1, 2, 3, 4, 5]])
    targets = torch.tensor([[0, 0, 0, 5, 6, 7], [0, 2, 3, 4, 5, 6]])
    batch = {"items": items, "actions": (items > 0).long(), "targets": targets}
    with torch.no_grad():
        got = m.loss(batch).loss
        h = m.encode(batch)
        logits = h @ m.item_emb.weight.T
        logits[..., 0] = float("-inf")
        sel = targets > 0
        want = F.cross_entropy(logits[sel], targets[sel])
    assert torch.allclose(got, want, atol=1e-5)
    assert m.loss(batch).logs["positions"] == 8


def test_bce_loss_and_actions_option_train():
    torch.manual_seed(0)
    m = SASRec(SASRecConfig(n_items=10, n_actions=3, max_len=6, hidden=16, n_layers=1, loss="bce", use_actions=True))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    # deterministic successor: next item = current + 1
    items = torch.tensor([[1, 2, 3, 4, 5, 6], [3, 4, 5, 6, 7, 8], [0, 0, 2, 3, 4, 5]])
    targets = torch.where(items > 0, items + 1, 0)
    batch = {"items": items, "actions": (items > 0).long() * 2, "targets": targets}
    for _ in range(150):
        out = m.loss(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        s = m.score(batch)
    s[:, 0] = float("-inf")
    assert s.argmax(1)[[0, 2]].tolist() == [7, 6]
    assert 9 in s[1].topk(2).indices.tolist()


def test_build_model_derives_sizes_and_rejects_unknown_settings():
    class DS:
        n_items, n_actions = 42, 5

    m = build_model("sasrec", {"hidden": 8, "n_heads": 1}, DS())
    assert m.config.n_items == 42 and m.config.n_actions == 5
    assert m.item_emb.weight.shape == (43, 8)
    try:
        build_model("sasrec", {"hiden": 8}, DS())
    except ValueError as e:
        assert "hiden" in str(e)
    else:
        raise AssertionError("unknown setting accepted")


def test_model_settings_are_coerced_from_yaml_strings():
    class DS:
        n_items, n_actions = 5, 2

    m = build_model("sasrec", {"ln_eps": "1e-12", "dropout": "0.3", "hidden": 8, "n_heads": 1}, DS())
    assert m.config.ln_eps == 1e-12 and m.config.dropout == 0.3
    with pytest.raises(TypeError, match="hidden"):
        build_model("sasrec", {"hidden": "wide"}, DS())


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_seen_bias_adds_each_window_events_offset_in_scoring_and_to_the_prefix_in_training(loss):
    """seen_bias: an item gets the offsets of the window events that hold it (by action), in
    `score` for the whole window and in the loss for the positions up to each row's own."""
    m = make(max_len=6, seen_bias=True, loss=loss)
    with torch.no_grad():
        m.seen_bias.copy_(torch.tensor([0.0, -1.5, 0.7]) / m.config.seen_bias_scale)
    assert torch.allclose(m.seen_offsets(), torch.tensor([0.0, -1.5, 0.7]))
    items = torch.tensor([[0, 0, 4, 9, 4, 6], [0, 1, 2, 3, 4, 5]])
    actions = torch.tensor([[0, 0, 1, 2, 2, 1], [0, 1, 1, 1, 1, 2]])
    targets = torch.tensor([[0, 0, 9, 4, 6, 7], [0, 2, 3, 4, 5, 1]])
    batch = {"items": items, "actions": actions, "targets": targets}
    with torch.no_grad():
        h = m.encode(batch)
        plain = h[:, -1] @ m.item_emb.weight.T
        s = m.score(batch)
        want = plain.clone()
        want[0, 4] += -1.5 + 0.7  # item 4 twice: actions 1 and 2
        want[0, 9] += 0.7
        want[0, 6] += -1.5
        want[1, 1:5] += -1.5
        want[1, 5] += 0.7
        assert torch.allclose(s, want, atol=1e-5)
        if loss == "ce":
            logits = h @ m.item_emb.weight.T  # (B, L, I+1)
            for b in range(2):
                for t in range(6):
                    for u in range(t + 1):
                        if items[b, u] > 0:
                            logits[b, t, items[b, u]] += m.seen_offsets()[actions[b, u]]
            logits[..., 0] = float("-inf")
            sel = targets > 0
            assert torch.allclose(m.loss(batch).loss, F.cross_entropy(logits[sel], targets[sel]), atol=1e-5)


@pytest.mark.parametrize("repeats", [False, True])
def test_seen_bias_learns_whether_users_repeat(repeats):
    """Histories that never repeat an item teach a negative offset; histories whose next item is
    always one from the window teach a positive one."""
    torch.manual_seed(0)
    m = SASRec(SASRecConfig(n_items=30, n_actions=2, max_len=8, hidden=16, n_layers=1, dropout=0.0, seen_bias=True))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        if repeats:  # cycles of 3 items: a b c a b c ...
            abc = torch.stack([torch.randperm(30, generator=g)[:3] + 1 for _ in range(32)])
            seq = abc.repeat(1, 3)[:, :9]
        else:  # 9 distinct items
            seq = torch.stack([torch.randperm(30, generator=g)[:9] + 1 for _ in range(32)])
        batch = {"items": seq[:, :8], "actions": torch.ones(32, 8, dtype=torch.long), "targets": seq[:, 1:]}
        out = m.loss(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    off = m.seen_offsets()[1].item()
    assert (off > 1.0) if repeats else (off < -1.0)
