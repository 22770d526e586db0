"""`crbr semantic-ids build` and `crbr semantic-ids report`.

  crbr semantic-ids build -c configs/sasrec_beauty.yaml --features text --out beauty_ids.parquet
  crbr semantic-ids report beauty_ids.parquet -c configs/sasrec_beauty.yaml --features text --out beauty_ids_health
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def add_commands(sub) -> None:
    sp = sub.add_parser("semantic-ids", help="semantic IDs of a dataset's items (RQ-KMeans) and their health report")
    ssub = sp.add_subparsers(dest="semantic_ids_command", required=True)
    b = ssub.add_parser("build", help="tokenize every item of a config's dataset into L codes (cached)")
    b.add_argument("--config", "-c", required=True, help="experiment YAML: its data section names the dataset")
    b.add_argument("--features", required=True, help="item feature spec (crbr.features), e.g. text, items.npy, categories")
    b.add_argument("--out", required=True, help="Parquet file: item_id, c1..cL, d (codebooks beside it)")
    b.add_argument("--tokenizer", choices=["rq-kmeans", "rq-vae"], default="rq-kmeans",
                   help="residual k-means (default) or an RQ-VAE trained with the generic loop (TIGER)")
    b.add_argument("--levels", type=int, default=3)
    b.add_argument("--codebook-size", type=int, nargs="+", default=[256], help="K, or one K per level")
    b.add_argument("--balanced", action="store_true", help="equal-size codes (balanced k-means)")
    b.add_argument("--reassign", action="store_true", help="move colliding items to free last-level codes")
    b.add_argument("--restarts", type=int, default=3, help="k-means runs per level (the best is kept)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("overrides", nargs="*", help="config overrides (section.key=value)")
    b.set_defaults(func=cmd_build)
    r = ssub.add_parser("report", help="health of semantic IDs: embeddings, codebooks, collisions, prefix lift")
    r.add_argument("ids", help="a file written by `crbr semantic-ids build`")
    r.add_argument("--config", "-c", required=True, help="experiment YAML of the same dataset (sequences, categories)")
    r.add_argument("--features", default=None, help="the feature spec the IDs were built from (embedding and "
                                                    "codebook health need it; default: the one recorded in the file)")
    r.add_argument("--out", default=None, help="folder for report.json and usage.png (default: IDS without suffix + _health)")
    r.add_argument("overrides", nargs="*", help="config overrides (section.key=value)")
    r.set_defaults(func=cmd_report)


def _dataset(args):
    from ..config import load_config
    from ..data.prepare import prepare_with_split

    cfg = load_config(args.config, args.overrides)
    return prepare_with_split(cfg)


def cmd_build(args) -> int:
    from ..semantic_ids import RQKMeansConfig, build_semantic_ids
    from ..semantic_ids.health import id_health
    from ..semantic_ids.rqvae import RQVAEConfig

    ds, _ = _dataset(args)
    sizes = args.codebook_size[0] if len(args.codebook_size) == 1 else list(args.codebook_size)
    if args.tokenizer == "rq-vae":
        if not isinstance(sizes, int):
            raise ValueError("--tokenizer rq-vae takes one --codebook-size for every level")
        cfg = RQVAEConfig(levels=args.levels, codebook_size=sizes)
    else:
        cfg = RQKMeansConfig(levels=args.levels, codebook_size=sizes, balanced=args.balanced, n_redo=args.restarts,
                             seed=args.seed)
    t0 = time.perf_counter()
    sid = build_semantic_ids(ds, args.features, cfg, reassign=args.reassign, seed=args.seed,
                             progress=sys.stderr.isatty())  # bars on a terminal only
    sid.save(args.out)
    ids = id_health(sid)
    print(f"semantic IDs of {ds.n_items:,} items ({args.features}): {sid.n_levels} levels of {sid.sizes}, "
          f"disambiguation level of {sid.n_disambiguation}; {time.perf_counter() - t0:.1f}s")
    print(f"collisions before disambiguation: {ids['collision_rate']:.4f} of items "
          f"(largest bucket {ids['largest_bucket']}); after: {ids['collision_rate_after_disambiguation']:.4f}")
    print(f"wrote {args.out}")
    return 0


def cmd_report(args) -> int:
    from ..features import item_features
    from ..semantic_ids import SemanticIDs, format_report, health_report

    ds, split = _dataset(args)
    sid = SemanticIDs.load(args.ids, ds.item_ids)
    spec = args.features or sid.meta.get("features")
    X = item_features(ds, spec) if spec and spec != "matrix" else None
    t0 = time.perf_counter()
    rep = health_report(sid, ds, split, embeddings=X)
    rep["seconds"] = time.perf_counter() - t0
    out = Path(args.out) if args.out else Path(args.ids).with_suffix("").with_name(Path(args.ids).stem + "_health")
    out.mkdir(parents=True, exist_ok=True)
    from ..fileio import atomic_write_text

    atomic_write_text(out / "report.json", json.dumps(rep, indent=1, default=float))
    plot_usage(sid, out / "usage.png")
    print(format_report(rep, Path(args.ids).name))
    print(f"report: {out / 'report.json'}, {out / 'usage.png'} ({rep['seconds']:.1f}s)")
    return 0


def plot_usage(sid, path: Path) -> None:
    """Per level, the items per code sorted from the most used (log scale): flat = healthy,
    a steep head with a long zero tail = collapse."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for l in range(sid.n_levels):
        cnt = np.sort(np.bincount(sid.codes[1:, l], minlength=sid.sizes[l]))[::-1]
        ax.plot(np.arange(1, len(cnt) + 1), np.maximum(cnt, 0.5), label=f"level {l + 1}")
    ax.set_yscale("log")
    ax.set_xlabel("code rank")
    ax.set_ylabel("items (0 drawn at 0.5)")
    ax.set_title("code usage per level")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
