"""The `crbr` command line.

  crbr data prepare --config configs/sasrec_ml1m.yaml        process + cache a dataset, print its summary
  crbr train --config configs/sasrec_ml1m.yaml train.lr=5e-4 train a model (also under torchrun)
  crbr evaluate --checkpoint runs/x/checkpoints/best.safetensors --export-topk top.parquet
  crbr features --config configs/sasrec_ml1m.yaml --spec text --out items.parquet   item features (cached)
  crbr quickstart                                            the whole job on the embedded synthetic world
  crbr pipeline -c configs/pipelines/crbr_ml1m.yaml          a multi-stage chain (Q-Former -> Set Transformer -> CRBR)
  crbr federated -c configs/federated/residual_ml100k.yaml --num-rounds 30   federated training on Flower
  crbr index build --vectors items.npy --kind hnsw --out idx/  an item index (exact, flat, hnsw, ivf_flat, ivf_pq)
  crbr retrieve --index idx/ --queries users.npy -k 100 --out top.parquet   top-k items per query vector
  crbr serve --checkpoint CKPT [--index DIR]                 the retrieval service over HTTP (FastAPI)

Every run is driven by a YAML config (see configs/) plus `section.key=value` overrides.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

log = logging.getLogger("crbr")

OVERRIDE_HELP = (
    "config overrides as section.key=value, values parsed as YAML "
    "(e.g. train.lr=5e-4 model.hidden=128 eval.mask_history=true data.preprocess.kcore=5)"
)


def _setup_logging(verbose: bool) -> None:
    """crbr's own loggers at INFO (DEBUG with -v; WARNING on ranks other than 0); other libraries'
    at WARNING, so their loader chatter (e.g. faiss's INFO lines) stays out of the output."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("crbr").setLevel(level)


def _load(args):
    from ..config import load_config

    return load_config(args.config, args.overrides)


def config_reference() -> str:
    """Every setting with its default, for `--help` (models: per model name)."""
    import dataclasses

    from ..config import ExperimentConfig
    from ..models import MODELS
    from ..settings import json_default

    lines: list[str] = []

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
            elif f.name != "model" or prefix:
                lines.append(f"  {prefix}{f.name}={json_default(v)}")

    walk(ExperimentConfig(), "")
    for name, (_, cls) in sorted(MODELS.items()):
        lines.append(f"  model.name={name}:")
        for f in dataclasses.fields(cls):
            if f.name not in ("n_items", "n_actions"):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                lines.append(f"    model.{f.name}={json_default(default)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands
def cmd_data_prepare(args) -> int:
    from ..data.prepare import prepare_with_split

    cfg = _load(args)
    t0 = time.perf_counter()
    ds, split = prepare_with_split(cfg)
    print(ds.summary())
    print(split.describe())
    drops = {k: v for k, v in ds.info.items() if "drop" in k and v}
    if drops:
        print("counted drops:", json.dumps(drops, default=str))
    print(f"ready in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_train(args) -> int:
    import torch

    from ..data.prepare import prepare_with_split
    from ..models import build_model
    from ..train.loop import Trainer

    cfg = _load(args)
    if args.export_topk:
        cfg.eval.export_topk = args.export_topk
    ds, split = prepare_with_split(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model_name, cfg.model_params, ds, split)
    trainer = Trainer(model, ds, split, cfg, max_len=model.max_len)
    if trainer.is_main:
        log.info("%s", ds.summary())
        log.info("%s", split.describe())
        n_params = sum(p.numel() for p in model.parameters())
        log.info("model %s: %s parameters; run dir %s", cfg.model_name, f"{n_params:,}", trainer.run_dir)
    res = trainer.fit(resume=args.resume)
    if trainer.is_main:
        print(f"\n== {cfg.name}: best epoch {res.best_epoch} of {res.epochs_run}, "
              f"{res.seconds_per_epoch:.1f} s/epoch, peak RSS {res.peak_rss_mb:.0f} MB ==")
        print("validation:\n" + res.valid.format())
        print("test:\n" + res.test.format())
        print(f"results: {trainer.run_dir / 'results.json'}")
    return 0


def cmd_evaluate(args) -> int:
    from ..config import ExperimentConfig, apply_overrides, from_dict
    from ..data.prepare import prepare_with_split
    import torch

    from ..eval.export import export_topk
    from ..index.cli import rank_options
    from ..models import load_model
    from ..train.loop import build_evaluator

    model, meta = load_model(args.checkpoint)
    cfg = from_dict(ExperimentConfig, meta["experiment"])
    if args.overrides:
        d = apply_overrides(cfg.to_dict(), args.overrides)
        cfg = from_dict(ExperimentConfig, d)
    if args.mask_history is not None:
        cfg.eval.mask_history = args.mask_history
    ds, split = prepare_with_split(cfg)
    options = rank_options(model, args, ds)
    if args.categories:
        options["scope"] = torch.from_numpy(ds.category_scope(args.categories))
    ev = build_evaluator(ds, split, args.split, cfg.eval, model.max_len)
    res = ev.evaluate_model(model, export=bool(args.export_topk), **options)
    print(f"{cfg.name} ({meta.get('model_name')}, {args.checkpoint}) on {args.split}:")
    print(res.format())
    if args.export_topk:
        export_topk(res, ds, args.export_topk)
        print(f"wrote top-{cfg.eval.export_k} lists of {res.n_users} users to {args.export_topk}")
    return 0


def cmd_features(args) -> int:
    from ..data.prepare import prepare
    from ..features import build_item_features, write_features

    cfg = _load(args)
    if cfg.train.threads > 0:
        import torch

        torch.set_num_threads(cfg.train.threads)
    ds = prepare(cfg.data)
    log.info("%s", ds.summary())
    try:
        res = build_item_features(ds, args.spec, cache_dir=cfg.data.cache_dir, batch_size=args.batch_size,
                                  progress=args.progress)
    except ImportError as e:  # the default text model's package is not installed
        print(f"crbr: error: {e}", file=sys.stderr)
        return 2
    X = res.matrix
    print(f"features {res.spec} for {ds.info.get('name', cfg.data.name)}: shape {X.shape[0]} x {X.shape[1]} "
          f"({ds.n_items:,} items + padding row 0), {X.dtype}, {res.seconds:.1f}s")
    if res.zero_rows:
        print(f"items with an all-zero row: {res.zero_rows:,}")
    if res.cache_path is not None:
        print(f"cache: {res.cache_path} ({'hit' if res.cache_hit else 'written'})")
    else:
        print("cache: none (only text specs are cached)")
    if args.out:
        out = write_features(ds, X, args.out)
        print(f"wrote {out}" + (" (item_id = original ids, embedding)" if out.suffix.lower() == ".parquet" else
                                " (row 0 = padding, row i = item id i)"))
    return 0


def cmd_report(args) -> int:
    from ..eval.report import plot_run

    for path in plot_run(args.run, args.out):
        print(f"wrote {path}")
    return 0


def cmd_federated(args) -> int:
    from ..federated import load_federated_config, run_federated

    ov = list(args.overrides or [])
    for value, key in ((args.num_rounds, "federated.num_rounds"), (args.num_clients, "federated.num_clients"),
                       (args.clients_per_round, "federated.clients_per_round"),
                       (args.local_epochs, "federated.local_epochs"), (args.partitioning, "federated.partitioning"),
                       (args.warmup_rounds, "federated.warmup_rounds"), (args.engine, "federated.engine"),
                       (args.gating_init, "model.gating_init")):
        if value is not None:
            ov.append(f"{key}={value}")
    cfg, fed = load_federated_config(args.config, ov)
    if args.export_topk:
        cfg.eval.export_topk = args.export_topk
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    res = run_federated(cfg, fed)
    print(f"\n== {cfg.name} (federated, {fed.num_clients} clients, {fed.sampled_per_round} per round, "
          f"{fed.local_epochs} local epoch(s), warm-up {fed.warmup_rounds} rounds): best round {res.best_round} "
          f"of {res.rounds_run}, {res.train_seconds:.0f} s ==")
    if res.final_stats:
        print("mixture at the best round: " + ", ".join(f"{k} {v:.4f}" for k, v in res.final_stats.items()))
    print("validation:\n" + res.valid.format())
    print("test:\n" + res.test.format())
    print(f"results: {cfg.run_dir / 'results.json'}  (plots: crbr report {cfg.run_dir})")
    return 0


def cmd_pipeline(args) -> int:
    from ..pipeline import Pipeline

    pipe = Pipeline.from_yaml(args.config, args.overrides)
    out = args.out or f"runs/{pipe.name}"
    done = pipe.run(out, reuse=args.reuse, on_start=lambda st: print(f"\n== stage {st.name}", flush=True))
    print(f"\n== {pipe.name}: {len(done)} stages under {out}")
    for name, res in done.items():
        test = res.results.get("test") or {}
        kept = " (reused)" if res.fit is None else ""
        print(f"{name:<20} HR@10 {test.get('HR@10', float('nan')):.4f}  NDCG@10 {test.get('NDCG@10', float('nan')):.4f}"
              f"  {res.run_dir}{kept}")
    protocol = next(iter(done.values())).results.get("protocol") if done else None
    if protocol:
        print(f"protocol: {protocol}")
    return 0


def cmd_quickstart(args) -> int:
    from .quickstart import run_quickstart

    return run_quickstart(args)


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crbr", description="User modeling and candidate retrieval for recommender systems.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser, required: bool = True) -> None:
        sp.add_argument("--config", "-c", required=required, help="experiment YAML (see configs/)")
        sp.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)


    settings_help = "settings (section.key=default):\n" + config_reference()
    fmt = argparse.RawDescriptionHelpFormatter
    data = sub.add_parser("data", help="dataset commands")
    dsub = data.add_subparsers(dest="data_command", required=True)
    prep = dsub.add_parser("prepare", help="load, validate, process and cache the dataset of a config; print its summary",
                           epilog=settings_help, formatter_class=fmt)
    with_config(prep)
    prep.set_defaults(func=cmd_data_prepare)

    tr = sub.add_parser("train", help="train and test a model (runs under torchrun for DDP)", epilog=settings_help,
                        formatter_class=fmt,
                        description="Train a model with early stopping on validation, then test the best checkpoint. "
                                    "Distributed: torchrun --nproc_per_node N -m crbr.cli.main train -c CONFIG")
    with_config(tr)
    tr.add_argument("--resume", action="store_true", help="continue from <run dir>/checkpoints/last.pt")
    tr.add_argument("--export-topk", metavar="FILE", help="write the test top-K lists (original ids) to FILE (.parquet or .csv)")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint with full ranking over the whole catalogue")
    ev.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by crbr train")
    ev.add_argument("--split", choices=["test", "valid"], default="test", help="which held-out part to score (default test)")
    ev.add_argument("--export-topk", metavar="FILE", help="write per user the original user id and ranked top-K original item ids")
    ev.add_argument("--mask-history", dest="mask_history", action="store_true", default=None,
                    help="exclude items in the user's history from the ranking")
    ev.add_argument("--no-mask-history", dest="mask_history", action="store_false", help="rank history items too")
    ev.add_argument("--categories", help="rank only items of these categories (comma-separated ids or names); "
                                         "the protocol line names the scope")
    from ..index.cli import add_rank_option_args

    add_rank_option_args(ev)
    ev.add_argument("overrides", nargs="*", help=OVERRIDE_HELP + "; applied to the config stored in the checkpoint")
    ev.set_defaults(func=cmd_evaluate)

    _add_tool_commands(sub, settings_help)
    _add_index_commands(sub)
    from .semantic_ids import add_commands as add_semantic_id_commands
    from .serve import add_commands as add_serve_commands

    add_semantic_id_commands(sub)
    add_serve_commands(sub)
    return p


def _add_tool_commands(sub, settings_help: str) -> None:
    """features, report, pipeline, quickstart, federated."""
    fmt = argparse.RawDescriptionHelpFormatter

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", "-c", required=True, help="experiment YAML (see configs/)")
        sp.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)

    from ..features import SPEC_GRAMMAR

    ft = sub.add_parser("features", help="compute (and cache) frozen item features of a config's dataset",
                        formatter_class=fmt, epilog=settings_help,
                        description="Compute item features for the dataset of a config's data section "
                                    "(loaded as crbr train loads it), print their shape and cache path, "
                                    "optionally write them.\n\n" + SPEC_GRAMMAR)
    with_config(ft)
    ft.add_argument("--spec", required=True, help="feature spec, e.g. text, text:MODEL, items.parquet, categories, random:64")
    ft.add_argument("--out", metavar="FILE", help="write the features: .npy (n_items + 1 rows, row 0 = padding) or "
                                                 ".parquet (item_id = original ids, embedding)")
    ft.add_argument("--batch-size", type=int, default=256, help="text encoder batch size (default 256)")
    ft.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    ft.set_defaults(func=cmd_features)

    rp = sub.add_parser("report", help="plot a run's learning curves and model diagnostics (PNG)")
    rp.add_argument("run", help="run directory written by crbr train (holds metrics.csv)")
    rp.add_argument("--out", help="folder for the PNG files (default RUN/plots)")
    rp.set_defaults(func=cmd_report)

    pl = sub.add_parser("pipeline", help="train a multi-stage chain (e.g. Q-Former -> Set Transformer -> CRBR)",
                        description="Run the stages of a pipeline YAML (configs/pipelines/) in order; each stage "
                                    "trains as crbr train does and reads earlier stages' best checkpoints.")
    pl.add_argument("--config", "-c", required=True, help="pipeline YAML (see configs/pipelines/)")
    pl.add_argument("--out", default=None, help="output folder (default runs/<pipeline name>)")
    pl.add_argument("--reuse", action="store_true", help="keep stages whose run already finished")
    pl.add_argument("overrides", nargs="*", help="stage.section.key=value, e.g. crbr.train.lr=5e-4")
    pl.set_defaults(func=cmd_pipeline)

    qs = sub.add_parser("quickstart", help="generate the synthetic world, train and evaluate, print the metrics table",
                        epilog=settings_help, formatter_class=fmt)
    qs.add_argument("--config", "-c", default=None, help="quickstart YAML (default: the packaged synthetic setup)")
    qs.add_argument("--out", default="runs/quickstart", help="output directory")
    qs.add_argument("--epochs", type=int, default=None, help="cap every stage at this many epochs (smoke runs)")
    qs.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    qs.set_defaults(func=cmd_quickstart)
    fd = sub.add_parser("federated", help="federated training on Flower (clients = partitions of the users)",
                        epilog=settings_help, formatter_class=fmt,
                        description="FedAvg on Flower with a partial-aggregation warm-up; the experiment YAML may "
                                    "carry a `federated:` section (crbr.federated.FederatedConfig), overridable as "
                                    "federated.key=value. See docs/federated.md.")
    with_config(fd)
    fd.add_argument("--num-rounds", type=int, help="FedAvg rounds (federated.num_rounds)")
    fd.add_argument("--num-clients", type=int, help="clients = user partitions (federated.num_clients)")
    fd.add_argument("--clients-per-round", type=int, help="clients sampled per round, 0 = all")
    fd.add_argument("--local-epochs", type=int, help="local epochs per round")
    fd.add_argument("--partitioning", choices=["random", "contiguous", "activity"], help="how users are split")
    fd.add_argument("--partial-aggregation-warmup-rounds", dest="warmup_rounds", type=int,
                    help="rounds in which only federated.warmup_groups (default: backbone) are aggregated")
    fd.add_argument("--gating-init", type=float, help="initial residual gate g (model.gating_init)")
    fd.add_argument("--engine", choices=["inprocess", "ray"], help="local Flower engine (default inprocess)")
    fd.add_argument("--export-topk", metavar="FILE", help="write the test top-K lists (original ids) to FILE")
    fd.set_defaults(func=cmd_federated)


def _add_index_commands(sub) -> None:
    """`crbr index build` and `crbr retrieve` (handlers in crbr.index.cli)."""

    def run(name: str):
        def handler(args) -> int:
            from ..index import cli

            return getattr(cli, name)(args)

        return handler

    param_help = ("index setting name=value, repeatable (M, ef_construction, ef_search, nlist, nprobe, pq_m, "
                  "pq_nbits, refine, exact_below, train_size, seed; see crbr.index.IndexConfig)")
    ix = sub.add_parser("index", help="item index commands")
    isub = ix.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="build an item index from a vector file and save it to a directory")
    b.add_argument("--vectors", required=True, help=".npy (I, d): row i = item id i, row 0 = padding (or with --ids: any rows)")
    b.add_argument("--kind", default="flat", choices=["exact", "flat", "hnsw", "ivf_flat", "ivf_pq"])
    b.add_argument("--param", action="append", metavar="NAME=VALUE", help=param_help)
    b.add_argument("--ids", help=".npy (n,) explicit item id of each vector row")
    b.add_argument("--categories-from", metavar="CONFIG|DATASET_DIR",
                   help="item categories for scoped search, from an experiment config's dataset or a processed dataset dir")
    b.add_argument("--threads", type=int, default=0, help="FAISS / torch threads (default: library default)")
    b.add_argument("--out", required=True, help="index directory (written atomically)")
    b.set_defaults(func=run("cmd_index_build"))
    rt = sub.add_parser("retrieve", help="top-k items for query vectors from a saved index")
    rt.add_argument("--index", required=True, help="directory written by crbr index build")
    rt.add_argument("--queries", required=True, help=".npy (Q, d) query (user) vectors")
    rt.add_argument("-k", type=int, default=100, help="items per query (default 100)")
    rt.add_argument("--categories", help="only items of these categories: comma-separated ids (or names)")
    rt.add_argument("--param", action="append", metavar="NAME=VALUE", help="search-time setting (ef_search, nprobe, refine, exact_below)")
    rt.add_argument("--threads", type=int, default=0, help="FAISS / torch threads (default: library default)")
    rt.add_argument("--out", required=True, help="output .parquet or .csv: query, rank, item_id, score")
    rt.set_defaults(func=run("cmd_retrieve"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may also come after options (`crbr train -c x.yaml --resume train.lr=1e-3`)
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    _setup_logging(args.verbose)
    ok = False
    try:
        rc = args.func(args)
        ok = rc == 0
        return rc
    except (ValueError, KeyError, FileNotFoundError, TypeError) as e:
        if args.verbose:
            raise
        print(f"crbr: error: {e}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group(ok)


def _leave_process_group(ok: bool) -> None:
    """Under torchrun, tear the process group down before the interpreter exits (see `shutdown_distributed`).

    After a successful command a rank that was in a group then ends at once (`os._exit(0)`, after
    flushing the logs and streams): even with the group destroyed, gloo's transport threads can
    abort the interpreter's C++ teardown ("terminate called without an active exception", about 1
    run in 30 of the loaded two-process test), turning a finished run into a failed one. Every file a
    run writes is written atomically before this point. A failed command exits normally, so its
    traceback is printed.
    """
    if "torch.distributed" not in sys.modules:  # never import torch just to find there is nothing to do
        return
    import torch.distributed as dist

    from ..train.distributed import shutdown_distributed

    in_group = dist.is_available() and dist.is_initialized()
    shutdown_distributed(ok)
    if in_group and ok:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
