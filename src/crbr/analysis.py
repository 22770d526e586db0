"""Analysis helpers for trained models and finished runs, used by the benchmark suites
(`python -m benchmarks`) and the investigations under research/.

- runs side by side: a run's validation curve over wall-clock time and the table of
  `python -m benchmarks compare_runs` (`valid_curve`, `best_within`, `compare_runs_main`); the
  variance over training steps of a model's logged gradient norms (`grad_variance`);
- CRBR: code usage over all users' beams, per-user hits, the path-mixture merge rule and greedy
  residual quantization (`code_usage`, `user_hits`, `recall_multi`, `mixture_scores`, `greedy_rq`);
- item sides: how well P softmax queries over given item vectors fit a distribution
  (`fit_mixture`, `initial_queries`);
- the residual mixture: its score split into the backbone term and the expert branch, and the
  branch split into an item bias and a user-specific rest (`score_parts`, `branch_stats`);
- the synthetic world: Bayes-optimal and history-only reference retrievers built from the
  generator's own process (`inferred_taste_probs`, `history_estimate_probs`, `oracle_metrics`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# ------------------------------------------------------------------------- runs side by side
COMPARE_RUNS_DOC = """Runs of `crbr train` side by side: the test metrics of each run's best epoch, and the
validation metric at equal wall-clock.

Reads each run's results.json (test metrics at the best validation epoch, HR@10 by item
popularity bucket, protocol, code version) and metrics.csv (the validation metric and the
elapsed seconds of every evaluated epoch). "valid @ T min" is the best validation value among
the epochs that finished within T minutes of the run's start (elapsed time includes the
evaluations), so runs whose epochs differ in length are compared at the same budget; "-" when
no evaluated epoch finished by then. Nothing is trained; the markdown table goes to stdout.
"""


def valid_curve(run_dir: Path, metric: str) -> list[tuple[float, float]]:
    """[(elapsed minutes, validation metric)] of the evaluated epochs of a run, in order."""
    run_dir = Path(run_dir)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    key = f"valid_{metric}"
    if rows and key not in rows[0]:
        raise ValueError(f"{run_dir / 'metrics.csv'}: no column {key!r}")
    return [(float(r["elapsed_s"]) / 60, float(r[key])) for r in rows if r.get(key) not in (None, "")]


def best_within(curve: list[tuple[float, float]], minutes: float) -> float | None:
    """The best value of `curve` among the points at or before `minutes` (None if none)."""
    vals = [v for t, v in curve if t <= minutes]
    return max(vals) if vals else None


def load_run(label: str, run_dir: Path, metric: str) -> dict:
    """{label, dir, res (results.json), curve (`valid_curve`)} of a finished run."""
    run_dir = Path(run_dir)
    res_path = run_dir / "results.json"
    if not res_path.exists():
        raise FileNotFoundError(f"{label}: {res_path} not found (has the run finished?)")
    res = json.loads(res_path.read_text())
    return {"label": label, "dir": str(run_dir), "res": res, "curve": valid_curve(run_dir, metric)}


def compare_table(runs: list[dict], at_minutes: list[float], metric: str) -> str:
    """The markdown table of `load_run` results: epochs, training time, the validation metric at
    each budget of `at_minutes`, test HR@10 / NDCG@10 / HR@50 and HR@10 by popularity bucket."""
    head = (["run", "epochs (best)", "train min", "s/epoch"] + [f"valid {metric} @ {t:g} min" for t in at_minutes]
            + ["test HR@10", "test NDCG@10", "test HR@50", "HR@10 by bucket (head -> tail)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        x = r["res"]
        at = [best_within(r["curve"], t) for t in at_minutes]
        t = x["test"]
        buckets = ", ".join(f"{v:.3f}" for v in x.get("test_bucket_hr10", [])) or "-"
        cells = [r["label"], f"{x['epochs_run']} ({x['best_epoch']})", f"{x['train_seconds'] / 60:.1f}",
                 f"{x['seconds_per_epoch']:.0f}", *[f"{v:.4f}" if v is not None else "-" for v in at],
                 f"{t['HR@10']:.4f}", f"{t['NDCG@10']:.4f}", f"{t['HR@50']:.4f}", buckets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_runs_main(argv: list[str] | None = None, prog: str = "python -m benchmarks compare_runs") -> str:
    """The compare_runs command: `LABEL=RUN_DIR ... [--at-minutes 15 30] [--metric NDCG@10]`;
    prints the protocol line, one line per run and the table, and returns that text."""
    ap = argparse.ArgumentParser(prog=prog, description=COMPARE_RUNS_DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    ap.add_argument("--at-minutes", type=float, nargs="*", default=[15.0, 30.0])
    ap.add_argument("--metric", default="NDCG@10")
    a = ap.parse_args(argv)
    runs = []
    for spec in a.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"expected LABEL=RUN_DIR, got {spec!r}")
        try:
            runs.append(load_run(label, Path(path), a.metric))
        except (OSError, ValueError) as e:
            raise SystemExit(str(e)) from None
    protocols = {r["res"].get("protocol") for r in runs}
    out = [f"Protocol: {' / '.join(sorted(p for p in protocols if p))}"
           + ("" if len(protocols) == 1 else "  (the runs differ in protocol!)"),
           *[f"- {r['label']}: {r['dir']} (code {r['res'].get('code_version', '?')}, seed {r['res'].get('seed', '?')})"
             for r in runs],
           "", compare_table(runs, a.at_minutes, a.metric)]
    text = "\n".join(out)
    print(text)
    return text


# ------------------------------------------------------------------------------------ CRBR
def code_usage(m, ds, es, chunk: int = 1024) -> tuple[list[float], list[float]]:
    """Per routing layer of a CRBR model, over the beams of every user of the eval set `es` (in
    chunks of users): the share of codes no beam uses and the perplexity of the code
    distribution (`CRBR.code_usage`)."""
    from .data.batching import history_batch

    codes = []
    with torch.no_grad():
        for s in range(0, len(es), chunk):
            sl = slice(s, s + chunk)
            codes.append(m.beams(history_batch(ds, es.users[sl], es.hist_len[sl], m.config.max_len)).codes)
    return m.code_usage(torch.cat(codes))  # codes (U, B, L)


def user_hits(res, es, k: int) -> np.ndarray:
    """(users,) bool: whether one of the user's targets is in the exported top k of an
    evaluation result `res` (evaluated with export=True) on the eval set `es`."""
    return np.array([bool(set(es.targets(r).tolist()) & set(res.topk_items[r, :k].tolist())) for r in range(len(es))])


def recall_multi(res, es, multi: np.ndarray, k: int) -> np.ndarray:
    """For each user selected by the bool mask `multi`, Recall@k of the exported top list over
    the user's distinct targets."""
    hits = []
    for row in np.nonzero(multi)[0]:
        t = set(es.targets(row).tolist())
        top = set(res.topk_items[row, :k].tolist())
        hits.append(len(t & top) / max(len(t), 1))
    return np.asarray(hits)


def mixture_scores(q: torch.Tensor, S: torch.Tensor, V: torch.Tensor, tau: float) -> torch.Tensor:
    """(U, I) log sum_b w_b softmax_i(q_b . i / tau) for B paths: q (U, B, D) unit queries, S (U, B)
    path scores, V (I, D) item vectors (row 0 = padding: -inf, never returned)."""
    logit = torch.einsum("ubd,id->ubi", q, V) / tau  # (U, B, I)
    logit[:, :, 0] = float("-inf")
    log_p = logit - torch.logsumexp(logit[:, :, 1:], -1, keepdim=True)  # per-path softmax over the catalogue
    return torch.logsumexp(torch.log_softmax(S, 1)[:, :, None] + log_p, 1)


def greedy_rq(x: torch.Tensor, codebooks: list[torch.Tensor]) -> torch.Tensor:
    """(U, D) x quantized layer by layer: at each layer the code nearest the remaining residual."""
    v = torch.zeros_like(x)
    for C in codebooks:
        j = torch.cdist(x - v, C).argmin(1)
        v = v + C[j]
    return v


# ------------------------------------------------------------------------------ item sides
def fit_mixture(p: torch.Tensor, V: torch.Tensor, init: torch.Tensor, steps: int, lr: float = 0.05) -> torch.Tensor:
    """Fit m = sum_k w_k softmax(V q_k) to each row of p by Adam on KL(p || m).

    p: (U, I) target distributions (column 0 = padding, 0); V: (I, d) item side; init: (U, P, d)
    starting queries. Returns (U, I) log m, column 0 = -inf."""
    Q = init.clone().requires_grad_(True)
    a = torch.zeros(init.shape[:2], requires_grad=True)  # (U, P) mixture logits
    opt = torch.optim.Adam([Q, a], lr=lr)
    Vr = V[1:]  # (I-1, d) real items
    pr = p[:, 1:]

    def log_m() -> torch.Tensor:
        logits = torch.einsum("upd,id->upi", Q, Vr)  # (U, P, I-1)
        return torch.logsumexp(torch.log_softmax(a, 1)[..., None] + torch.log_softmax(logits, -1), 1)  # (U, I-1)

    for _ in range(steps):
        opt.zero_grad()
        loss = -(pr * log_m()).sum(1).mean()  # cross-entropy = KL + H(p)
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = torch.full(p.shape, float("-inf"))
        out[:, 1:] = log_m()
    return out


def initial_queries(p: np.ndarray, item_cat: np.ndarray, V: np.ndarray, P: int, scale: float = 5.0) -> np.ndarray:
    """(U, P, d): per user, the p-weighted mean item vector of each of the P categories holding the
    most of p (P = 1: of all of p), normalized and scaled."""
    C = int(item_cat.max()) + 1
    cat = np.where(np.arange(len(item_cat)) > 0, item_cat, C)  # padding in its own, empty, column
    onehot = np.zeros((len(item_cat), C + 1))
    onehot[np.arange(len(item_cat)), cat] = 1.0
    top = np.argsort(-(p @ onehot[:, :C]), axis=1, kind="stable")[:, :P]  # (U, P)
    out = np.zeros((len(p), P, V.shape[1]), dtype=np.float32)
    for k in range(P):
        w = p if P == 1 else p * onehot[:, top[:, k]].T  # (U, I) the mass of the k-th category
        v = w @ V
        out[:, k] = scale * v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return out


# ------------------------------------------------------------------------ residual mixture
@torch.no_grad()
def score_parts(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backbone term (B, I), the branch term (B, I) and the branch's user-side vectors (B, 2D)
    of a residual mixture, before seen-item offsets; the two terms sum to the model's u'.v'."""
    D = model.config.hidden
    u = model.user_embedding(batch)  # (B, 3D)
    V = model.item_vectors()  # (I, 3D)
    return u[:, :D] @ V[:, :D].T, u[:, D:] @ V[:, D:].T, u[:, D:]


@dataclass
class BranchStats:
    gate: float
    mean_share: float  # share of the branch's user-side squared norm in its all-user mean
    bias_std: float  # std over items of m(i)
    rest_std: float  # std of r(u, i)
    backbone_std: float  # std of the backbone term
    item_bias: torch.Tensor  # (I,) m(i)


@torch.no_grad()
def branch_stats(model, batches) -> BranchStats:
    """Decompose a residual mixture's branch term b(u, i) = m(i) + r(u, i) over every user of
    `batches` (an iterable of history batches): m = the mean over users (an item bias)."""
    seqs, branches, users = [], [], []
    for batch in batches:
        s, b, u = score_parts(model, batch)
        seqs.append(s), branches.append(b), users.append(u)
    S, Bt, U = torch.cat(seqs), torch.cat(branches), torch.cat(users)  # (n, I), (n, I), (n, 2D)
    m = Bt.mean(0)  # (I,)
    um = U.mean(0)
    return BranchStats(
        gate=float(model.gate_value()),
        mean_share=float((um ** 2).sum() / (U ** 2).sum(1).mean().clamp(min=1e-30)),
        bias_std=float(m[1:].std()),
        rest_std=float((Bt - m)[:, 1:].std()),
        backbone_std=float(S[:, 1:].std()),
        item_bias=m,
    )


# ------------------------------------------------------------------------- synthetic world
ORACLE_K = 50  # list length of the synthetic-world reference retrievers


def with_coverage(p: np.ndarray, top: np.ndarray, interests: list[np.ndarray], item_cat: np.ndarray,
                  cat_offsets: np.ndarray, cat_ids: np.ndarray) -> np.ndarray:
    """Each row of `top` (U, ORACLE_K) with the most likely item of every interest it does not touch
    swapped in for its least likely items; rows stay sorted by probability."""
    out = top.copy()
    for u, want in enumerate(interests):
        row = list(out[u])
        have = {int(c) for i in row for c in cat_ids[cat_offsets[i]:cat_offsets[i + 1]]}
        missing = [c for c in want.tolist() if c not in have]
        if not missing:
            continue
        add = []
        for c in missing:
            members = np.nonzero(item_cat == c)[0]
            add.append(int(members[np.argmax(p[u, members])]))
        keep = row[: ORACLE_K - len(add)]
        row = sorted(set(keep) | set(add), key=lambda i: -p[u, i])
        out[u, : len(row)] = row
    return out


def oracle_metrics(p: np.ndarray, top: np.ndarray, target: np.ndarray, interests, ds, multi: np.ndarray) -> dict:
    """Metrics of top lists (U, >= ORACLE_K) against the exact next-item distributions p (U, I)
    and the realized targets (U,): Recall@50 realized and expected (the mass of p the list holds),
    NDCG@10, interest coverage@50 of the true `interests`, each over all users and ("_multi")
    over the users selected by the bool mask `multi`."""
    from .eval.interests import interest_coverage

    hit = top[:, :ORACLE_K] == target[:, None]
    recall = hit.any(1).astype(float)
    mass = np.take_along_axis(p, top[:, :ORACLE_K], 1).sum(1)
    rank = np.where(hit[:, :10].any(1), hit[:, :10].argmax(1), -1)
    ndcg = np.where(rank >= 0, 1.0 / np.log2(np.maximum(rank, 0) + 2.0), 0.0)
    cov = interest_coverage(top, [set(i.tolist()) for i in interests], np.asarray(ds.cat_offsets),
                            np.asarray(ds.cat_ids), ORACLE_K)
    return {"Recall@50": recall.mean(), "Recall@50_multi": recall[multi].mean(),
            "expected_Recall@50": mass.mean(), "expected_Recall@50_multi": mass[multi].mean(),
            "NDCG@10": ndcg.mean(), "cov@50": float(np.nanmean(cov)), "cov@50_multi": float(np.nanmean(cov[multi]))}


def taste_predictive(S: np.ndarray, n: np.ndarray, logpop: np.ndarray, styles: np.ndarray, kappa: float,
                     rng: np.random.Generator, chains: int = 16, steps: int = 300, burn: int = 150) -> np.ndarray:
    """(P, m) Bayes posterior predictive P(i | a taste t drawn from its posterior) for P histories of
    one category, by Metropolis on the sphere.

    The generator draws t uniformly on the unit sphere and each interest-step item of the category
    with P(i | t) = pop_i exp(kappa <s_i, t>) / Z(t), Z(t) = sum over the category's m items, so after
    n such items with style sum S the posterior is exp(kappa <S, t> - n log Z(t)) (uniform prior).
    Random-walk Metropolis (t' = normalize(t + sigma eps), a symmetric proposal), `chains` chains per
    history, sigma tuned per history during `burn` steps towards 25% acceptance, P(i | t) averaged
    over the chains' states after it. S: (P, D); n: (P,); logpop: (m,); styles: (m, D)."""
    S = np.asarray(S, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    st = np.asarray(styles, dtype=np.float64)
    P, D = S.shape

    def log_post(t):  # (P, CH, D) -> (P, CH), (P, CH, m)
        logit = logpop + kappa * (t @ st.T)
        logz = np.logaddexp.reduce(logit, axis=-1)
        return kappa * np.einsum("pcd,pd->pc", t, S) - n[:, None] * logz, np.exp(logit - logz[..., None])

    t = rng.standard_normal((P, chains, D))
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    lp, probs = log_post(t)
    sigma = np.full((P, 1, 1), 0.3)
    out = np.zeros((P, st.shape[0]))
    for step in range(steps):
        prop = t + sigma * rng.standard_normal(t.shape)
        prop /= np.linalg.norm(prop, axis=-1, keepdims=True)
        lp_prop, probs_prop = log_post(prop)
        acc = np.log(rng.random(lp.shape)) < lp_prop - lp  # (P, CH)
        t = np.where(acc[..., None], prop, t)
        lp = np.where(acc, lp_prop, lp)
        probs = np.where(acc[..., None], probs_prop, probs)
        if step < burn:
            sigma *= np.exp(0.1 * (acc.mean(1) - 0.25))[:, None, None]
        else:
            out += probs.mean(1)
    return out / (steps - burn)


def _add_tastes(world, out: np.ndarray, by_cat: dict, seed: int, **mcmc) -> None:
    """out[k, members of c] += weight x the taste posterior predictive, for every
    (k, style sum, n, weight) of by_cat[c]; one batched Metropolis run per category."""
    kappa = world.config.affinity_strength * math.sqrt(world.item_styles.shape[1])
    rng = np.random.default_rng(seed)
    for c, group in sorted(by_cat.items()):
        m = world.category_members[c]
        pred = taste_predictive(np.stack([g[1] for g in group]), np.array([g[2] for g in group]),
                                np.log(world.item_popularity[m]), world.item_styles[m], kappa, rng, **mcmc)
        for (k, _, _, weight), row in zip(group, pred):
            out[k, m] += weight * row


def inferred_taste_probs(world, users: np.ndarray, t: np.ndarray, seed: int = 0, **mcmc) -> np.ndarray:
    """(n, I) `SyntheticWorld.next_item_probs` with every interest's taste replaced by its Bayes
    posterior given the visible history (`taste_predictive`): the user's interests, weights,
    latent states and the kinds of the past events (interest step, exploration, repeat) stay known.
    With less information than the oracle and more than the history, its expected Recall@K bounds
    that of any retriever that reads only the history (a list's expected recall is at most the
    mass of the best list under the predictive given what it conditions on, and conditioning on
    more can only raise the expected best mass)."""
    cfg, ds = world.config, world.dataset
    off, items = np.asarray(ds.offsets), np.asarray(ds.items)
    users, t = np.asarray(users).tolist(), np.asarray(t).tolist()
    io = world.interest_offsets
    mass = np.zeros((len(users), len(world.item_category)))  # each row: the interest steps' distribution
    by_cat: dict[int, list] = {}  # category -> [(row k, style sum, n, P(z_t = j))]
    for k, (u, tt) in enumerate(zip(users, t)):
        rows = np.arange(io[u], io[u + 1])
        cats, w = world.interest_categories[rows], world.interest_weights[rows]
        pz = (1 - cfg.stickiness) * w + cfg.stickiness * (cats == world.event_state[off[u] + tt - 1])
        sl = slice(off[u], off[u] + tt)
        step = ~world.event_explore[sl] & ~world.event_repeat[sl]  # interest steps: item drawn by a taste
        for j, c in enumerate(cats.tolist()):
            sel = step & (world.event_state[sl] == c)
            by_cat.setdefault(c, []).append((k, world.item_styles[items[sl][sel]].sum(0), int(sel.sum()), pz[j]))
    _add_tastes(world, mass, by_cat, seed, **mcmc)
    return np.stack([world.mixture_probs(u, tt, mass[k], world.interest_categories[io[u]: io[u + 1]])
                     for k, (u, tt) in enumerate(zip(users, t))])


def history_estimate_probs(world, users: np.ndarray, t: np.ndarray, seed: int = 0, em_iters: int = 10,
                           interest_min_weight: float = 0.05, **mcmc) -> np.ndarray:
    """(n, I) predictive of a retriever that knows the world's catalogue and process (categories,
    popularity, styles, the stickiness / exploration / repeat rates, the action probabilities of
    each kind of step) and reads the user only through the visible history's items and actions:
    an achievable reference with a perfect item side.

    The user is fitted by EM on the generator's own hidden Markov model, one state per category
    seen in the history: P(z_e = c | z_{e-1}) = s [c = z_{e-1}] + (1 - s) w_c, and event e emits
    (1 - rho_e) [(1 - x) [c(i) = c] P(i | c) P_interest(a) + x P_explore(i) P_explore(a)] + rep_e(i) P(a)
    with the taste-blind P(i | c) = pop_i / mass(c) (the tastes matter little for telling interest
    steps from exploration). Forward-backward gives the state posteriors, w and each event's
    responsibility r_e of being an interest step of its category; the categories with
    w_c >= `interest_min_weight` count as the interests (the exploration term's support). The
    prediction is the generator's formula with P(z_t) = s alpha_{t-1} + (1 - s) w and each taste's
    Bayes predictive (`taste_predictive`) given the r-weighted styles of its category's events.
    An interest the history never shows is reachable only through the exploration term."""
    cfg, ds = world.config, world.dataset
    off, items, acts = np.asarray(ds.offsets), np.asarray(ds.items), np.asarray(ds.actions)
    cat, styles, within = world.item_category, world.item_styles, world.within_category_popularity
    C = len(world.category_centroids)
    s, x, W, rp = cfg.stickiness, cfg.exploration, cfg.repeat_window, cfg.repeat_prob
    p_int, p_exp = np.array(cfg.interest_action_probs), np.array(cfg.explore_action_probs)
    p_any = (1 - x) * p_int + x * p_exp  # a repeat inherits its original's kind
    users, t = np.asarray(users).tolist(), np.asarray(t).tolist()
    mass = np.zeros((len(users), len(cat)))  # each row: the interest steps' distribution
    interests: list[np.ndarray] = []  # per row, the categories counted as interests
    by_cat: dict[int, list] = {}
    for k, (u, T) in enumerate(zip(users, t)):
        h = items[off[u]: off[u] + T]
        a = acts[off[u]: off[u] + T].astype(np.int64) - 1  # action ids 1.. -> rows of the action probabilities
        cands, col = np.unique(cat[h], return_inverse=True)  # (M,) states; col: (T,) each event's own state
        M = len(cands)
        rho = rp * np.minimum(np.arange(T), W) / W
        rep = np.array([rp / W * np.count_nonzero(h[max(0, e - W): e] == h[e]) for e in range(T)])
        e_int = (1 - rho) * (1 - x) * within[h] * p_int[a]  # interest emission by the event's own state
        w = np.bincount(col, minlength=M) / T
        for _ in range(em_iters):
            n_int = int(np.clip((w >= interest_min_weight).sum(), 1, cfg.max_interests))
            rest = (1 - rho) * x * within[h] / (C - n_int) * p_exp[a] + rep * p_any[a]  # (T,) any state
            em = np.repeat(rest[:, None], M, 1)
            em[np.arange(T), col] += e_int  # (T, M)
            alpha = np.empty((T, M))
            prev = w
            for e in range(T):  # scaled forward pass
                f = (s * prev + (1 - s) * w if e else w) * em[e]
                alpha[e] = prev = f / f.sum()
            beta = np.ones((T, M))
            for e in range(T - 2, -1, -1):
                b = em[e + 1] * beta[e + 1]
                beta[e] = s * b + (1 - s) * (w * b).sum()
                beta[e] /= beta[e].sum()
            gamma = alpha * beta
            gamma /= gamma.sum(1, keepdims=True)
            w = gamma.sum(0) / T
        resp = gamma[np.arange(T), col] * e_int / em[np.arange(T), col]  # P(event e is an interest step)
        pz = s * alpha[-1] + (1 - s) * w
        for m, c in enumerate(cands.tolist()):
            ev = col == m
            by_cat.setdefault(c, []).append((k, (resp[ev, None] * styles[h[ev]]).sum(0), float(resp[ev].sum()), pz[m]))
        interests.append(cands[w >= interest_min_weight])
    _add_tastes(world, mass, by_cat, seed, **mcmc)
    return np.stack([world.mixture_probs(u, tt, mass[k], interests[k]) for k, (u, tt) in enumerate(zip(users, t))])


def heldout_events(world) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """The leave-one-out test events of the world: users (n,), each event's index t (n,) (= the
    visible history's length), the target items (n,) and each user's true interest categories."""
    from .data.dataset import leave_one_out

    ds = world.dataset
    es = leave_one_out(ds).test
    users, t = np.asarray(es.users), np.asarray(es.hist_len)
    target = np.asarray(ds.items)[np.asarray(ds.offsets)[users] + t]
    assert np.array_equal(target, es.target_items[es.target_offsets[:-1]]), "test targets do not match"
    o = world.interest_offsets
    return users, t, target, [world.interest_categories[o[u]:o[u + 1]] for u in users]


def grad_variance(run_dir: "str | Path") -> dict[str, float]:
    """Per gradient group, the mean over epochs of the variance over steps of its norm
    (mean(n^2) - mean(n)^2 from metrics.csv), and of the coefficient of variation."""
    rows = list(csv.DictReader((Path(run_dir) / "metrics.csv").read_text().splitlines()))
    out: dict[str, float] = {}
    for g in ("encoder", "codebooks", "decoder"):
        m = np.array([float(r[f"grad_{g}_norm"]) for r in rows if r.get(f"grad_{g}_norm")])
        sq = np.array([float(r[f"grad_{g}_norm_sq"]) for r in rows if r.get(f"grad_{g}_norm_sq")])
        if len(m):
            var = np.maximum(sq - m * m, 0)
            out[f"grad_{g}_norm_mean"] = float(m.mean())
            out[f"grad_{g}_norm_var"] = float(var.mean())
            out[f"grad_{g}_norm_cv"] = float(np.mean(np.sqrt(var) / np.maximum(m, 1e-12)))
    return out
