"""The generative retriever against SASRec trained in the same run under the same time cap.

    python -m benchmarks generative retrieval --dataset Beauty-text --minutes 25
    python -m benchmarks generative actions --minutes 15            # MovieLens-1M ratings, leave-5-out
    python -m benchmarks generative control --minutes 10            # the synthetic world
    python -m benchmarks generative dgi --dataset Beauty-text --minutes 25
    python -m benchmarks generative popularity --dataset Beauty-text     # the popularity floor alone
    python -m benchmarks generative beams --dataset Beauty-text --out DIR  # the beam sweep of a retrieval run

retrieval: Recall / NDCG at 10 and 50, popularity buckets, unmasked (as generative papers report)
and masked, and beam width against recall and decoding time for 1024 test users beside SASRec's
full-catalogue scoring of the same users. actions: on every held-out event of a leave-5-out split,
the AUC of like against dislike (and per action) of p(action | history, item), against the item's
and the user's training like rate and a logistic model on both. control: with [EXPLORE] against
no control, the share of top-10 items from categories new to the user and Recall@10 on explore
and on repeat targets; the in-scope share under a hard category scope. dgi: DGI (learned IDs,
soft teacher forcing) against its straight-through ablation and the two-stage pipeline (RQ-KMeans
IDs + the generative model, reused from a retrieval run with the same --out and --set): Recall /
NDCG@10, HR@10 per popularity bucket (equal item counts, as the evaluator defines them, and equal
numbers of test targets), gradient-norm variance over steps, the final IDs' health.

--set KEY=VALUE overrides the generative configs of retrieval, actions and dgi (e.g. a smaller
decoder for a CPU budget); the records keep the whole config.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import (add_data_arg, add_output_args, code_version, command_line, data_root, parser, publish,
                                with_tag, write_report)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"Beauty-text": "generative_beauty.yaml", "ml-1m-ratings": "generative_ml1m.yaml"}
SASREC = {"Beauty-text": "sasrec_beauty.yaml", "ml-1m-ratings": "sasrec_ml1m.yaml", "synthetic": "quickstart.yaml"}


def experiment(name: str, a, out: Path, overrides: list[str]):
    from crbr.config import load_config

    over = [f"train.max_minutes={a.minutes}", "train.progress=false", f"train.threads={a.threads}", f"train.device={a.device}",
            f"data.root={data_root(a.data_root)}", *overrides]
    return load_config(ROOT / "configs" / name, over)


def generative_config(a, out: Path, run: str, extra: list[str] = ()):
    """The dataset's generative config with the run's --set overrides, writing into out / run; no
    validation while training (decoding every validation user is the expensive part): the final
    weights of the capped run are the result."""
    return experiment(CONFIGS[a.dataset], a, out, [f"out_dir={out / run}", "train.eval_every=100000", *a.set, *extra])


def semantic_ids(ds, out: Path, features: str, seed: int) -> str:
    from crbr.semantic_ids import RQKMeansConfig, build_semantic_ids

    path = out / f"ids_{ds.info.get('name', 'data')}_{features.replace(':', '_')}.parquet"
    if not path.exists():
        sid = build_semantic_ids(ds, features, RQKMeansConfig(levels=3, codebook_size=256, seed=seed))
        sid.save(path)
    return str(path)


def train(cfg, ds, split, run_dir: Path, reuse: bool = True):
    """A trained model (reused from run_dir when it finished) and its results.json."""
    import json

    from crbr.models import build_model, load_model
    from crbr.train.loop import Trainer

    # a run without validation keeps its final weights (last), one with validation its best
    ckpt = [run_dir / "checkpoints" / f"{w}.safetensors" for w in ("best", "last")]
    ckpt = [p for p in ckpt if p.exists()]
    if reuse and (run_dir / "results.json").exists() and ckpt:
        model, _ = load_model(ckpt[0])
    else:
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model_name, cfg.model_params, ds, split)
        Trainer(model, ds, split, cfg, run_dir=run_dir).fit()
    model.eval()
    return model, json.loads((run_dir / "results.json").read_text())


def record(a, argv, dataset, model, variant, res, timings, notes="", config=None):
    import json

    from crbr.results import Protocol, ResultRecord, machine_info, portable

    config = json.loads(portable(json.dumps(config or {}), ROOT))  # no machine paths (data.root)

    return ResultRecord(
        suite="generative", dataset=dataset, model=model, variant=with_tag(variant, a.tag),
        protocol=Protocol.from_line(res.protocol) if res is not None and hasattr(res, "protocol") else
        Protocol(line=notes or "see notes"),
        config=config, command=command_line("generative", argv), code_version=code_version(),
        machine=machine_info(a.threads), seeds=[a.seed],
        metrics=dict(res.metrics) if res is not None and hasattr(res, "metrics") else dict(res or {}),
        timings=timings, date=dt.date.today().isoformat(), notes=notes)


# ---------------------------------------------------------------------------------- retrieval
def run_retrieval(a, argv, out: Path) -> list:
    from crbr.data.prepare import prepare_with_split
    from crbr.eval import EvalResult
    from crbr.eval.setup import build_evaluator

    gcfg = generative_config(a, out, "generative")
    ds, split = prepare_with_split(gcfg)
    gcfg.model["semantic_ids"] = semantic_ids(ds, out, "text", a.seed)
    # fp32: bf16 matmuls are slower than fp32 on CPUs without bf16 units
    scfg = experiment(SASREC[a.dataset], a, out, [f"data.name={a.dataset}", f"out_dir={out / 'sasrec'}",
                                                 f"train.bf16={str(a.device == 'cuda').lower()}"])
    gen, gres = train(gcfg, ds, split, out / "generative")
    sas, sres = (None, None) if a.no_sasrec else train(scfg, ds, split, out / "sasrec")
    records, lines = popularity_records(a, argv, ds, split, gcfg.eval), []
    for mask in (False, True):
        tag = "masked" if mask else "unmasked"
        gcfg.eval.mask_history = mask
        if not mask:  # the trainer's own test of the final weights is the unmasked one
            g, g_s = EvalResult(gres["test"], gres["test_bucket_hr10"], [], 0, gres["protocol"]), gres.get("test_s", 0.0)
        else:
            ev = build_evaluator(ds, split, "test", gcfg.eval, gen.max_len)
            t0 = time.perf_counter()
            g = ev.evaluate_model(gen, beam=gen.config.beam)
            g_s = time.perf_counter() - t0
        records.append(record(a, argv, a.dataset, "generative", tag, g,
                              {"train_s": gres["train_seconds"], "epochs": gres["epochs_run"], "test_decode_s": g_s},
                              f"trained for at most {a.minutes} min (final weights, no validation during training); "
                              f"beam {gen.config.beam}", config=gcfg.to_dict()))
        pairs = [("generative", g)]
        if sas is not None:
            s = build_evaluator(ds, split, "test", gcfg.eval, sas.max_len).evaluate_model(sas)
            records.append(record(a, argv, a.dataset, "sasrec", f"same_run_{tag}", s,
                                  {"train_s": sres["train_seconds"], "epochs": sres["epochs_run"]},
                                  f"trained for at most {a.minutes} min in the same run as the generative model"))
            pairs.append(("sasrec", s))
        for name, r in pairs:
            lines.append(f"| {name} | {tag} | {r.metrics['Recall@10']:.4f} | {r.metrics['NDCG@10']:.4f} | "
                         f"{r.metrics['Recall@50']:.4f} | {' / '.join(f'{h:.3f}' for h in r.bucket_hr10)} |")
    records.append(beam_sweep(a, argv, ds, split, gen, sas, lines))
    write_report(out, f"generative_retrieval_{a.dataset}", "\n".join(lines))
    return records


def popularity_records(a, argv, ds, split, eval_config) -> list:
    """The most-popular-items baseline (training counts) under the retrieval protocol, unmasked
    and masked: the floor the generative model must clear."""
    from crbr.data.dataset import train_item_counts
    from crbr.eval.setup import build_evaluator

    pop = torch.as_tensor(train_item_counts(ds, split), dtype=torch.float32)
    out = []
    for mask in (False, True):
        eval_config.mask_history = mask
        ev = build_evaluator(ds, split, "test", eval_config, 1)
        r = ev.evaluate(lambda b: pop.expand(len(b["items"]), -1))
        out.append(record(a, argv, a.dataset, "popularity", "masked" if mask else "unmasked", r, {},
                          "items ranked by their training-event count"))
    return out


def run_popularity(a, argv, out: Path) -> list:
    from crbr.data.prepare import prepare_with_split

    cfg = generative_config(a, out, "generative")
    ds, split = prepare_with_split(cfg)
    return popularity_records(a, argv, ds, split, cfg.eval)


def beam_sweep(a, argv, ds, split, gen, sas, lines):
    """Recall and decoding time per user at several beam widths, 1024 test users, unmasked. A
    beam narrower than the list would be widened to it (rank decodes max(k, beam) paths), so
    beams under 50 give Recall@10 from top-10 lists and beams from 50 also Recall@50."""
    from crbr.data.batching import history_batch
    from crbr.data.dataset import train_item_counts
    from crbr.eval import Evaluator

    rng = np.random.default_rng(a.seed)
    pick = np.sort(rng.choice(len(split.test), min(1024, len(split.test)), replace=False))
    es = split.test.subset(pick)
    counts = train_item_counts(ds, split)
    evs = {ks: Evaluator(ds, es, counts, ks=ks, mask_history=False, max_len=gen.max_len, export_k=ks[-1])
           for ks in ((10,), (10, 50))}
    out: dict[str, float] = {}
    for beam in (10, 20, 50, 100):
        ks = (10,) if beam < 50 else (10, 50)
        t0 = time.perf_counter()
        r = evs[ks].evaluate_model(gen, beam=beam)
        ms = (time.perf_counter() - t0) * 1000 / len(es)
        out.update({f"beam{beam}_Recall@{k}": r.metrics[f"Recall@{k}"] for k in ks})
        out[f"beam{beam}_ms_per_user"] = ms
        lines.append(f"beam {beam} (top {ks[-1]}): " + ", ".join(f"Recall@{k} {r.metrics[f'Recall@{k}']:.4f}" for k in ks)
                     + f", {ms:.1f} ms/user")
    if sas is not None:
        b = history_batch(ds, es.users, es.hist_len, sas.max_len)
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(es), 256):
                sas.score({k: v[s : s + 256] for k, v in b.items()})
        out["sasrec_ms_per_user"] = (time.perf_counter() - t0) * 1000 / len(es)
        lines.append(f"SASRec full-catalogue scoring: {out['sasrec_ms_per_user']:.2f} ms/user")
    return record(a, argv, a.dataset, "generative", "beam_sweep", out, {"users": len(es)},
                  f"{len(es)} test users, unmasked, 1 process with {a.threads} thread(s); the time per user "
                  "includes the evaluator's list checks")


def run_beams(a, argv, out: Path) -> list:
    """The beam sweep alone, over the models of an earlier retrieval run with the same --out."""
    from crbr.data.prepare import prepare_with_split

    gcfg = generative_config(a, out, "generative")
    ds, split = prepare_with_split(gcfg)
    gcfg.model["semantic_ids"] = semantic_ids(ds, out, "text", a.seed)
    gen, _ = train(gcfg, ds, split, out / "generative")
    sas = None
    if not a.no_sasrec:
        scfg = experiment(SASREC[a.dataset], a, out, [f"data.name={a.dataset}", f"out_dir={out / 'sasrec'}"])
        sas, _ = train(scfg, ds, split, out / "sasrec")
    lines: list[str] = []
    rec = beam_sweep(a, argv, ds, split, gen, sas, lines)
    write_report(out, f"generative_beams_{a.dataset}", "\n".join(lines))
    return [rec]


# ---------------------------------------------------------------------------------- DGI
DGI_VARIANTS = {"dgi": [], "dgi_ste": ["model.soft=false"]}


def target_buckets(ds, split, topk: np.ndarray, n: int = 5) -> list[float]:
    """HR@10 in n buckets of equal numbers of test targets, head -> tail by training popularity
    (the evaluator's buckets hold equal numbers of items, so its tail bucket has few targets)."""
    from crbr.data.dataset import train_item_counts

    es = split.test
    pop = train_item_counts(ds, split)
    hits, tpop = [], []
    for u in range(len(es)):
        for t in np.unique(es.target_items[es.target_offsets[u] : es.target_offsets[u + 1]]):
            hits.append(t in topk[u, :10])
            tpop.append(pop[t])
    order = np.argsort(-np.asarray(tpop), kind="stable")
    return [float(np.mean(np.asarray(hits)[part])) for part in np.array_split(order, n)]


def ids_health_metrics(model, ds, split) -> dict[str, float]:
    from crbr.models.dgi import DGI
    from crbr.semantic_ids import SemanticIDs
    from crbr.semantic_ids.health import health_report

    if isinstance(model, DGI):
        codes, _ = model.export_ids()
        sid = SemanticIDs.from_codes(codes[1:], model.config.codebook_sizes, ds.item_ids)
    else:
        sid = SemanticIDs.load(model.config.semantic_ids)
    rep = health_report(sid, ds, split)
    out = {f"level{l + 1}_{k}": float(v) for l, lv in enumerate(rep["codebook"]) for k, v in lv.items()
           if k in ("perplexity", "dead_codes", "dead_share", "gini")}
    out.update({k: float(v) for k, v in rep["ids"].items() if isinstance(v, (int, float))})
    out.update({f"prefix_lift_{k}": float(v["lift"]) for k, v in rep.get("prefix_lift", {}).items()})
    return out


def run_dgi(a, argv, out: Path) -> list:
    """DGI and its straight-through ablation, trained here, against the two-stage pipeline."""
    from crbr.analysis import grad_variance
    from crbr.data.prepare import prepare_with_split
    from crbr.eval.setup import build_evaluator

    gcfg = generative_config(a, out, "generative")
    ds, split = prepare_with_split(gcfg)
    gcfg.model["semantic_ids"] = semantic_ids(ds, out, "text", a.seed)
    cfgs = {}
    for name, extra in ((n, DGI_VARIANTS[n]) for n in a.dgi_variants):
        cfg = generative_config(a, out, name, ["model.name=dgi", f"model.anneal_steps={a.anneal_steps}", *extra])
        cfg.model.pop("semantic_ids", None)
        cfgs[name] = cfg
    if not a.no_two_stage:
        cfgs["two_stage"] = gcfg
    records, lines = [], ["| model | Recall@10 | NDCG@10 | HR@10 by item bucket | HR@10 by target bucket | train s |",
                          "|---|---|---|---|---|---|"]
    for name, cfg in cfgs.items():
        model, res = train(cfg, ds, split, out / ("generative" if name == "two_stage" else name))
        ev = build_evaluator(ds, split, "test", cfg.eval, model.max_len)
        ev.export_k = 10
        t0 = time.perf_counter()
        r = ev.evaluate_model(model, export=True)
        metrics = dict(r.metrics)
        tb = target_buckets(ds, split, r.topk_items)
        metrics.update({f"HR@10_item_bucket{i + 1}": h for i, h in enumerate(r.bucket_hr10)})
        metrics.update({f"HR@10_target_bucket{i + 1}": h for i, h in enumerate(tb)})
        if name != "two_stage":
            metrics.update(grad_variance(out / name))
        metrics.update({f"ids_{k}": v for k, v in ids_health_metrics(model, ds, split).items()})
        records.append(record(a, argv, a.dataset, "dgi" if name != "two_stage" else "generative", name, r,
                              {"train_s": res["train_seconds"], "epochs": res["epochs_run"],
                               "test_decode_s": time.perf_counter() - t0},
                              f"trained for at most {a.minutes} min (final weights); beam {model.config.beam}; "
                              "HR@10 buckets head -> tail", config=cfg.to_dict()))
        records[-1].metrics = metrics
        lines.append(f"| {name} | {metrics['Recall@10']:.4f} | {metrics['NDCG@10']:.4f} | "
                     f"{' / '.join(f'{h:.3f}' for h in r.bucket_hr10)} | {' / '.join(f'{h:.3f}' for h in tb)} | "
                     f"{res['train_seconds']:.0f} |")
    write_report(out, f"generative_dgi_{a.dataset}", "\n".join(lines))
    return records


# ---------------------------------------------------------------------------------- actions
def held_out_events(ds, es):
    """(user row, item, action) of every held-out event, with the user's visible history length."""
    counts = np.diff(es.target_offsets)
    users = np.repeat(np.arange(len(es)), counts)
    items = np.asarray(es.target_items, dtype=np.int64)
    starts = np.asarray(ds.offsets)[es.users][users] + es.hist_len[users]
    # the held-out events follow the visible history in order; their actions are read from the data
    pos = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, int)
    actions = np.asarray(ds.actions)[starts + pos]
    return users, items, actions


def rate_baselines(ds, split, like: int, dislike: int, users_ds: np.ndarray, items: np.ndarray):
    """Each event's item and user like rate over training events (smoothed towards the global rate)."""
    offsets = np.asarray(ds.offsets)
    uid = np.repeat(np.arange(ds.n_users), split.train_len)
    rows = np.concatenate([np.arange(offsets[u], offsets[u] + split.train_len[u]) for u in range(ds.n_users)])
    it, act = np.asarray(ds.items)[rows], np.asarray(ds.actions)[rows]
    keep = (act == like) | (act == dislike)
    g = float((act[keep] == like).mean())

    def rate(key, n):
        pos = np.bincount(key[keep], weights=(act[keep] == like), minlength=n)
        tot = np.bincount(key[keep], minlength=n)
        return (pos + 5 * g) / (tot + 5)

    return rate(it, ds.n_items + 1)[items], rate(uid, ds.n_users)[users_ds]


def logistic(x_train, y_train, x_test) -> np.ndarray:
    xt = torch.tensor(x_train, dtype=torch.float64)
    yt = torch.tensor(y_train, dtype=torch.float64)
    w = torch.zeros(xt.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure():
        opt.zero_grad()
        z = xt @ w[1:] + w[0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (torch.tensor(x_test, dtype=torch.float64) @ w[1:] + w[0]).numpy()


ACTION_VARIANTS = {"full": [], "no_action_input": ["model.action_input=false"], "no_residual": ["model.residual=false"],
                   "no_action_input_no_residual": ["model.action_input=false", "model.residual=false"]}


def propensities(gen, ds, es, users: np.ndarray) -> np.ndarray:
    """(P, A) p(action | visible history, item) of every held-out event of `es`, by teacher forcing."""
    from crbr.data.batching import history_batch

    counts = np.diff(es.target_offsets)
    probs = np.zeros((len(users), gen.config.n_actions))
    for s in range(0, len(es), 256):
        rows = np.arange(s, min(s + 256, len(es)))
        b = history_batch(ds, es.users[rows], es.hist_len[rows], gen.max_len)
        cand = np.zeros((len(rows), int(counts[rows].max())), dtype=np.int64)
        for j, r in enumerate(rows):
            cand[j, : counts[r]] = es.target_items[es.target_offsets[r] : es.target_offsets[r + 1]]
        with torch.no_grad():
            p = gen.action_propensity(b, torch.from_numpy(np.maximum(cand, 1))).numpy()
        probs[np.isin(users, rows)] = np.concatenate([p[j, : counts[r]] for j, r in enumerate(rows)])
    return probs


def run_actions(a, argv, out: Path) -> list:
    """Like vs dislike AUC of the model's action propensity on every held-out test event, for the
    full model and its ablations (same budget each), against rate baselines."""
    from crbr.data.prepare import prepare_with_split
    from crbr.eval.metrics import auc, grouped_auc

    a.dataset = "ml-1m-ratings"
    base = generative_config(a, out, "generative_actions")
    ds, split = prepare_with_split(base)
    ids = semantic_ids(ds, out, "text", a.seed)
    names = list(ds.action_names)
    like, dislike = names.index("like"), names.index("dislike")
    # baselines: item / user like rates over training events; a logistic model on both, fitted on
    # the validation events
    vu, vi, va = held_out_events(ds, split.valid)
    v_keep = (va == like) | (va == dislike)
    v_item, v_user = rate_baselines(ds, split, like, dislike, split.valid.users[vu], vi)
    users, items, actions = held_out_events(ds, split.test)
    lab, keep = actions == like, (actions == like) | (actions == dislike)
    item_rate, user_rate = rate_baselines(ds, split, like, dislike, split.test.users[users], items)
    lr = logistic(np.c_[v_item, v_user][v_keep], (va == like)[v_keep].astype(float), np.c_[item_rate, user_rate])
    metrics: dict[str, float] = {
        "held_out_events": float(len(items)), "like_dislike_events": float(keep.sum()),
        "item_rate_auc": auc(item_rate[keep & lab], item_rate[keep & ~lab]),
        "user_rate_auc": auc(user_rate[keep & lab], user_rate[keep & ~lab]),
        "logistic_auc": auc(lr[keep & lab], lr[keep & ~lab]),
        "logistic_auc_user_grouped": grouped_auc(users[keep], lr[keep], lab[keep]),
    }
    timings: dict[str, float] = {}
    for variant in a.variants:
        run = "generative_actions" if variant == "full" else f"generative_actions_{variant}"
        cfg = generative_config(a, out, run, ACTION_VARIANTS[variant])
        cfg.model["semantic_ids"] = ids
        gen, gres = train(cfg, ds, split, out / run)
        probs = propensities(gen, ds, split.test, users)
        score = probs[:, like] / np.maximum(probs[:, like] + probs[:, dislike], 1e-12)
        pre = "" if variant == "full" else f"{variant}_"
        metrics[f"{pre}like_vs_dislike_auc"] = auc(score[keep & lab], score[keep & ~lab])
        metrics[f"{pre}like_vs_dislike_auc_user_grouped"] = grouped_auc(users[keep], score[keep], lab[keep])
        for ai, n in enumerate(names[1:], 1):
            y = actions == ai
            if y.any() and (~y).any():  # an action no held-out event has gets no AUC
                metrics[f"{pre}auc_{n}"] = auc(probs[y, ai], probs[~y, ai])
        for key in ("Recall@10", "NDCG@10"):
            if gres.get("test") and key in gres["test"]:
                metrics[f"{pre}{key}"] = float(gres["test"][key])
        timings.update({f"{pre}train_s": gres["train_seconds"], f"{pre}epochs": gres["epochs_run"]})
    notes = (f"leave-5-out on ml-1m-ratings; every held-out test event scored from the visible history; each model "
             f"trained for at most {a.minutes} min; variants {', '.join(a.variants)}; rates are smoothed training "
             "like rates; the logistic model on both is fitted on the validation events; user-grouped AUC over "
             "users with both classes")
    lines = [f"{k}: {v:.4f}" for k, v in metrics.items()]
    write_report(out, "generative_actions", "\n".join(lines))
    return [record(a, argv, "ml-1m-ratings", "generative", "actions", metrics, timings, notes, config=base.to_dict())]


# ---------------------------------------------------------------------------------- control
def run_control(a, argv, out: Path) -> list:
    from crbr.config import ExperimentConfig, TrainConfig
    from crbr.data.batching import history_batch
    from crbr.data.dataset import leave_one_out
    from crbr.data.synthetic import SyntheticConfig, generate
    from crbr.semantic_ids import RQKMeansConfig, build_semantic_ids

    world = generate(SyntheticConfig(seed=0, n_users=3000, n_items=3000, n_categories=40))
    ds = world.dataset
    split = leave_one_out(ds)
    ids = out / "ids_synthetic.parquet"
    if not ids.exists():
        build_semantic_ids(ds, np.asarray(world.item_embeddings), RQKMeansConfig(levels=3, codebook_size=64)).save(ids)
    cfg = ExperimentConfig(name="generative_synthetic", out_dir=str(out / "generative_control"),
                           model={"name": "generative", "semantic_ids": str(ids), "window": 20, "hidden": 64,
                                  "n_layers": 2, "n_heads": 2, "control_prob": 0.3, "action_weight": 0.5, "beam": 50},
                           train=TrainConfig(epochs=100, batch_size=128, lr=2e-3, windows="all", window_stride=20,
                                             patience=3, eval_every=100000, max_minutes=a.minutes, progress=False,
                                             threads=a.threads, seed=a.seed))
    gen, gres = train(cfg, ds, split, out / "generative_control")
    es = split.test.subset(np.arange(min(a.users, len(split.test))))
    cat = np.asarray(world.item_category)
    offsets = np.asarray(ds.offsets)
    seen = [set(cat[np.asarray(ds.items)[offsets[u] : offsets[u] + es.hist_len[i]]].tolist()) for i, u in enumerate(es.users)]
    tgt = es.target_items[es.target_offsets[:-1]]
    explore = np.array([cat[t] not in s for t, s in zip(tgt, seen)])
    metrics: dict[str, float] = {"explore_targets": float(explore.sum()), "repeat_targets": float((~explore).sum())}
    tops = {}
    for ctrl in (None, "explore", "repeat"):
        got = []
        for s in range(0, len(es), 256):
            b = history_batch(ds, es.users[s : s + 256], es.hist_len[s : s + 256], gen.max_len)
            got.append(gen.rank(b, 10, control=ctrl).items.numpy())
        tops[ctrl] = np.concatenate(got)
        new = np.array([np.mean([cat[i] not in seen[u] for i in row if i > 0]) for u, row in enumerate(tops[ctrl])])
        hit = (tops[ctrl] == tgt[:, None]).any(1)
        key = ctrl or "none"
        metrics[f"{key}_new_category_share@10"] = float(new.mean())
        metrics[f"{key}_Recall@10_explore_targets"] = float(hit[explore].mean())
        metrics[f"{key}_Recall@10_repeat_targets"] = float(hit[~explore].mean())
    # hard scope: one random category per user
    rng = np.random.default_rng(a.seed)
    inscope = []
    for s in range(0, len(es), 256):
        n = len(es.users[s : s + 256])
        b = history_batch(ds, es.users[s : s + 256], es.hist_len[s : s + 256], gen.max_len)
        want = rng.integers(0, len(ds.category_names), n)
        scope = torch.from_numpy(cat[None, :] == want[:, None])
        r = gen.rank(b, 10, scope=scope).items.numpy()
        inscope += [cat[i] == w for row, w in zip(r, want) for i in row if i > 0]
    metrics["hard_scope_in_scope_share"] = float(np.mean(inscope))
    lines = [f"{k}: {v:.4f}" for k, v in metrics.items()]
    write_report(out, "generative_control", "\n".join(lines))
    return [record(a, argv, "synthetic-3k", "generative", "control", metrics,
                   {"train_s": gres["train_seconds"], "epochs": gres["epochs_run"]},
                   f"leave-one-out on a 3,000-user synthetic world; control_prob 0.3 in training; trained for at "
                   f"most {a.minutes} min")]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser("generative", __doc__)
    ap.add_argument("mode", choices=["retrieval", "actions", "control", "dgi", "popularity", "beams"])
    ap.add_argument("--dataset", default="Beauty-text", choices=sorted(CONFIGS))
    ap.add_argument("--minutes", type=float, default=25.0, help="training cap of every model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="train.device of every model (cpu, cuda)")
    ap.add_argument("--users", type=int, default=1000, help="test users of the control measurements")
    ap.add_argument("--no-sasrec", action="store_true", help="retrieval: do not train SASRec beside the model")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides of the generative configs (retrieval, actions, dgi), e.g. model.n_layers=2")
    ap.add_argument("--variants", nargs="+", default=["full", "no_action_input_no_residual"], choices=list(ACTION_VARIANTS),
                    help="actions: the model and its ablations, each trained with the same cap")
    ap.add_argument("--dgi-variants", nargs="+", default=list(DGI_VARIANTS), choices=list(DGI_VARIANTS),
                    help="dgi: which learned-ID models to train (run them in parallel processes, then once more "
                         "with all of them to compare them with --no-two-stage left off)")
    ap.add_argument("--no-two-stage", action="store_true", help="dgi: do not evaluate the two-stage run")
    ap.add_argument("--anneal-steps", type=int, default=2000, help="dgi: Gumbel temperature annealing steps")
    add_output_args(ap, "generative")
    add_data_arg(ap)
    a: argparse.Namespace = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    modes = {"retrieval": run_retrieval, "actions": run_actions, "control": run_control, "dgi": run_dgi,
             "popularity": run_popularity, "beams": run_beams}
    records = modes[a.mode](a, argv, out)
    publish(records, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
