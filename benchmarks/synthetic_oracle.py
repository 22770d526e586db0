"""The Bayes-optimal retriever on the synthetic world: what any model could reach at most.

On the world of `bench_crbr.py` (same generator settings) every user's leave-one-out test event
is scored by `SyntheticWorld.next_item_probs`, the exact distribution the generator draws it
from, given the ground truth before it: the latent interest state of the previous event, the
user's interest weights and tastes, and the last `repeat_window` items. Its top-K lists are the
best a retriever can do in expectation; a model sees only the history, so it sits below them.

Rows:
  oracle           top 50 by the exact probability
  oracle, no state the same without the previous event's latent interest (z_{t-1} marginalized
                   to the interest weights, so P(interest) = w_j): knows every interest and taste
                   but not which one is active
  oracle + cover   the oracle's list with the best item of every interest it misses swapped in
                   for its least likely items (coverage 1 by construction; the recall it costs)
  oracle, tastes inferred from the history
                   the oracle with each interest's taste replaced by its Bayes posterior given the
                   visible history (`inferred_taste_probs`); it still knows the interests, weights,
                   latent states and event kinds, so its expected Recall@50 is an upper bound for
                   any retriever that reads only the history
  catalogue known, user estimated from the history
                   knows the catalogue and the process but reads the user only through the
                   history's items and actions (`history_estimate_probs`: EM on the generator's
                   hidden Markov model, then the tastes' Bayes predictive): an achievable
                   retriever with a perfect item side

Metrics per row, over all test users and over those with >= 3 true interests (the CRBR bar's
group): Recall@50 realized (the actual test item in the top 50) and expected (the probability
mass of the top 50, the realized value's expectation), NDCG@10, interest coverage@50 (share of
the true interests among the categories of the top 50). With `--compare bench.json` (written by
bench_crbr.py) the models of that run are set beside the oracle.

    python benchmarks/synthetic_oracle.py --compare /work/bench/crbr/synthetic/bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, write_section  # noqa: E402
from bench_crbr import SYNTHETIC  # noqa: E402

K = 50


def with_coverage(p: np.ndarray, top: np.ndarray, interests: list[np.ndarray], item_cat: np.ndarray,
                  cat_offsets: np.ndarray, cat_ids: np.ndarray) -> np.ndarray:
    """Each row of `top` (U, K) with the most likely item of every interest it does not touch
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
        keep = row[: K - len(add)]
        row = sorted(set(keep) | set(add), key=lambda i: -p[u, i])
        out[u, : len(row)] = row
    return out


def evaluate(p: np.ndarray, top: np.ndarray, target: np.ndarray, interests, ds, multi: np.ndarray) -> dict:
    from crbr.eval.interests import interest_coverage

    hit = top[:, :K] == target[:, None]
    recall = hit.any(1).astype(float)
    mass = np.take_along_axis(p, top[:, :K], 1).sum(1)
    rank = np.where(hit[:, :10].any(1), hit[:, :10].argmax(1), -1)
    ndcg = np.where(rank >= 0, 1.0 / np.log2(np.maximum(rank, 0) + 2.0), 0.0)
    cov = interest_coverage(top, [set(i.tolist()) for i in interests], np.asarray(ds.cat_offsets),
                            np.asarray(ds.cat_ids), K)
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
    from crbr.data.dataset import leave_one_out

    ds = world.dataset
    es = leave_one_out(ds).test
    users, t = np.asarray(es.users), np.asarray(es.hist_len)
    target = np.asarray(ds.items)[np.asarray(ds.offsets)[users] + t]
    assert np.array_equal(target, es.target_items[es.target_offsets[:-1]]), "test targets do not match"
    o = world.interest_offsets
    return users, t, target, [world.interest_categories[o[u]:o[u + 1]] for u in users]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", default=None, help="bench.json of a bench_crbr.py run on the synthetic world")
    ap.add_argument("--results-md", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--skip-inferred", action="store_true",
                    help="leave out the row with inferred tastes (its Metropolis sampling takes minutes)")
    ap.add_argument("--skip-estimate", action="store_true",
                    help="leave out the row that estimates the user from the history (EM + Metropolis, minutes)")
    args = ap.parse_args()
    import dataclasses

    from crbr.data.synthetic import SyntheticConfig, generate

    t0 = time.perf_counter()
    world = generate(SyntheticConfig(**SYNTHETIC))
    ds = world.dataset
    users, t, target, interests = heldout_events(world)
    multi = np.array([len(i) >= 3 for i in interests])

    rows = {}
    p = world.next_item_probs(users, t)  # (U, I)
    top = np.argsort(-p, axis=1, kind="stable")[:, :K]
    rows["oracle"] = evaluate(p, top, target, interests, ds, multi)
    covered = with_coverage(p, top, interests, world.item_category, np.asarray(ds.cat_offsets), np.asarray(ds.cat_ids))
    rows["oracle + cover"] = evaluate(p, covered, target, interests, ds, multi)
    # no state: stickiness 0 makes P(z_t = j) = w_j
    stateless = dataclasses.replace(world, config=dataclasses.replace(world.config, stickiness=0.0))
    p0 = stateless.next_item_probs(users, t)
    rows["oracle, no state"] = evaluate(p0, np.argsort(-p0, axis=1, kind="stable")[:, :K], target, interests, ds, multi)
    if not args.skip_inferred:
        pt = inferred_taste_probs(world, users, t, seed=0)
        # expected recall is the mass of its list under the exact p, like every other row's
        rows["oracle, tastes inferred from the history"] = evaluate(
            p, np.argsort(-pt, axis=1, kind="stable")[:, :K], target, interests, ds, multi)
    if not args.skip_estimate:
        pe = history_estimate_probs(world, users, t, seed=0)
        rows["catalogue known, user estimated from the history"] = evaluate(
            p, np.argsort(-pe, axis=1, kind="stable")[:, :K], target, interests, ds, multi)
    wall = time.perf_counter() - t0
    for n, r in rows.items():
        print(n, {k: round(v, 4) for k, v in r.items()}, flush=True)

    models = {}
    if args.compare:
        names = {"sasrec": "SASRec", "qformer": "Q-Former max-sim", "two_tower": "Retrieval A (SAB+PMA)",
                 "crbr": "CRBR (B=4)", "crbr_quota": "CRBR (B=4), at most 13 per path"}
        table = json.loads(Path(args.compare).read_text())["table"]
        models = {names.get(k, k): v for k, v in table.items()}

    def f(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    lines = [
        f"Run {datetime.now():%Y-%m-%d %H:%M}, `python benchmarks/synthetic_oracle.py"
        + (f" --compare {args.compare}" if args.compare else "") + f"` ({wall:.0f} s); machine: {machine_line()}.",
        f"Dataset: synthetic ({SYNTHETIC}), the world of bench_crbr.py; protocol: leave-one-out, each of the "
        f"{len(users)} users' last event is the target, top {K} over all {ds.n_items} items, nothing masked; "
        f"{int(multi.sum())} users have >= 3 true interests.",
        "",
        "| retriever | Recall@50 | Recall@50 (>=3) | expected Recall@50 (>=3) | NDCG@10 | cov@50 | cov@50 (>=3) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in rows.items():
        lines.append(f"| {n} | {f(r['Recall@50'])} | {f(r['Recall@50_multi'])} | {f(r['expected_Recall@50_multi'])} | "
                     f"{f(r['NDCG@10'])} | {f(r['cov@50'])} | {f(r['cov@50_multi'])} |")
    for n, r in models.items():
        lines.append(f"| {n} (trained, {Path(args.compare).parent.name}) | {f(r['Recall@50'])} | {f(r['Recall@50_multi'])} | - | "
                     f"{f(r['NDCG@10'])} | {f(r['cov@50'])} | {f(r['cov@50_multi'])} |")
    if "Retrieval A (SAB+PMA)" in models:
        ra = models["Retrieval A (SAB+PMA)"]["Recall@50_multi"]
        o = rows["oracle"]
        lines += ["", f"CRBR bar on >= 3-interest users: Recall@50 >= 1.2 x Retrieval A = {1.2 * ra:.4f}; the oracle "
                      f"reaches {o['Recall@50_multi']:.4f} realized ({o['expected_Recall@50_multi']:.4f} expected) = "
                      f"{o['Recall@50_multi'] / ra:.2f}x Retrieval A."]
        for name, what in (("oracle, tastes inferred from the history", "With the tastes inferred from the history it"),
                           ("catalogue known, user estimated from the history",
                            "Knowing only the catalogue and estimating the user from the history, one")):
            if name in rows:
                v = rows[name]["expected_Recall@50_multi"]
                lines[-1] += f" {what} expects {v:.4f} = {v / ra:.2f}x Retrieval A."
    section = "\n".join(lines)
    print(section)
    write_section(Path(args.results_md), "synthetic_oracle", section, "The Bayes-optimal retriever on the synthetic world (benchmarks/synthetic_oracle.py)")


if __name__ == "__main__":
    main()
