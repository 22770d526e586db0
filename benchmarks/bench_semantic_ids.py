"""Semantic-ID tokenizers side by side: RQ-KMeans (plain, balanced, with collision re-assignment)
and the RQ-VAE of TIGER on the same item embeddings, with the published LETTER IDs on Beauty,
judged by the health report before any generator is trained.

Inputs per dataset: item text (all-MiniLM-L6-v2 over title / brand / category path / price on
Beauty, title + genres on MovieLens-1M), collaborative embeddings (the item table of a SASRec
trained for --collab-minutes, or --collab CKPT), and on the synthetic world its true item vectors
(where level 1 with one code per category must recover the categories). Every tokenizer runs in
a fresh process so its build time and peak memory are its own.

    python -m benchmarks semantic_ids --datasets Beauty-text ml-1m synthetic
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (add_data_arg, add_output_args, code_version, command_line, data_root, parser, publish,
                                with_tag, write_report)

LEVELS, K = 3, 256
SYNTHETIC = {"seed": 0, "n_users": 4000, "n_items": 4000, "n_categories": 60, "min_interests": 1, "max_interests": 5}


def build_one(kind: str, x: np.ndarray, seed: int, run_dir: str, rqvae_epochs: int = 60) -> tuple[np.ndarray, float, float, dict]:
    """In a fresh process: codes (N, L), seconds, peak RSS (MiB), tokenizer details."""
    import torch

    torch.set_num_threads(1)
    from crbr.semantic_ids import RQKMeansConfig, tokenize
    from crbr.semantic_ids.rqvae import RQVAEConfig, train_rqvae

    t0 = time.perf_counter()
    info: dict = {}
    if kind == "rq-vae":
        codes, model = train_rqvae(x, RQVAEConfig(levels=LEVELS, codebook_size=K), run_dir=run_dir, seed=seed,
                                   epochs=rqvae_epochs, patience=5)
        u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        info["reconstruction_error_latent_model"] = model.reconstruction_error(torch.from_numpy(u.astype(np.float32)))
        codebooks = None
    else:
        k1 = int(kind.split(":", 1)[1]) if kind.startswith("rq-kmeans-k1:") else K
        cfg = RQKMeansConfig(levels=LEVELS if k1 == K else 2, codebook_size=K if k1 == K else [k1, K],
                             balanced=kind == "rq-kmeans-balanced", seed=seed)
        codes, tok, _ = tokenize(x, cfg, reassign=kind == "rq-kmeans-reassign")
        codebooks = tok.codebooks
    secs = time.perf_counter() - t0
    info["codebooks"] = codebooks
    return codes, secs, peak_rss_mib(), info


def peak_rss_mib() -> float:
    """This process's resident-memory high-water mark. VmHWM belongs to the process's own memory
    map; ru_maxrss would not do: Linux carries it over from the parent across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_isolated(kind: str, x: np.ndarray, seed: int, run_dir: str, rqvae_epochs: int):
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(build_one, kind, x, seed, run_dir, rqvae_epochs).result()


def collaborative(ds, split, name: str, a, out: Path) -> np.ndarray:
    """(I, D) item embeddings of a SASRec: --collab, else one trained for --collab-minutes."""
    import torch

    from crbr.config import load_config
    from crbr.models import build_model, load_model
    from crbr.train.loop import Trainer

    ckpt = Path(a.collab) if a.collab else out / f"sasrec_{name}" / "checkpoints" / "best.safetensors"
    if not ckpt.exists():
        stem = {"ml-1m": "ml1m", "Beauty-text": "beauty"}.get(name, "ml1m")
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"sasrec_{stem}.yaml",
                          [f"data.name={name}", f"train.max_minutes={a.collab_minutes}", "train.progress=false",
                           "train.bf16=false", "train.threads=1", f"out_dir={out / f'sasrec_{name}'}"])
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model_name, cfg.model_params, ds, split)
        Trainer(model, ds, split, cfg).fit()
    model, _ = load_model(ckpt)
    return model.item_vectors().detach().numpy().astype(np.float32)


def inputs(name: str, a, out: Path):
    """(dataset, split, {input name: (I, D) embeddings}, extra per-item truth or None)."""
    from crbr.data.dataset import leave_one_out
    from crbr.data.prepare import DataConfig, prepare
    from crbr.features import item_features

    if name == "synthetic":
        from crbr.data.synthetic import SyntheticConfig, generate

        world = generate(SyntheticConfig(**SYNTHETIC))
        ds = world.dataset
        split = leave_one_out(ds)
        return ds, split, {"truth": np.asarray(world.item_embeddings, np.float32), "text": item_features(ds, "text")}, world
    ds = prepare(DataConfig(name=name, root=str(data_root(a.data_root))))
    split = leave_one_out(ds)
    embs = {"text": item_features(ds, "text")} if "text" in a.inputs else {}
    if not a.no_collab and "collab" in a.inputs:
        embs["collab"] = collaborative(ds, split, name, a, out)
    return ds, split, embs, None


def evaluate(name, ds, split, input_name, X, kind, codes, secs, peak, info, a, argv, world):
    """The health report of one tokenizer's IDs as a result record."""
    from crbr.results import Protocol, ResultRecord, machine_info
    from crbr.semantic_ids import SemanticIDs, health_report
    from crbr.semantic_ids.health import nmi, purity

    sizes = [int(codes[:, l].max()) + 1 for l in range(codes.shape[1])]
    sid = SemanticIDs.from_codes(codes, sizes, ds.item_ids, codebooks=info.pop("codebooks", None))
    t0 = time.perf_counter()
    rep = health_report(sid, ds, split, embeddings=None if X is None else X)
    report_s = time.perf_counter() - t0
    m = flatten(rep)
    if world is not None and kind.startswith("rq-kmeans-k1"):
        cats = np.asarray(world.item_category)[1:]
        m["category_nmi"], m["category_purity"] = nmi(cats, codes[:, 0]), purity(cats, codes[:, 0])
    m.update({k: v for k, v in info.items() if isinstance(v, float)})
    return ResultRecord(
        suite="semantic_ids", dataset=name, model=kind, variant=with_tag(input_name, a.tag),
        protocol=Protocol(line=f"semantic-ID health of {ds.n_items:,} items from {input_name} embeddings "
                               f"({len(sizes)} levels; no ranking)", split="leave_one_out"),
        config={"levels": codes.shape[1], "codebook_size": K, "input": input_name, "seed": a.seed},
        command=command_line("semantic_ids", argv), code_version=code_version(), machine=machine_info(1),
        seeds=[a.seed], metrics=m,
        timings={"build_s": round(secs, 1), "peak_rss_mib": round(peak), "health_report_s": round(report_s, 1)},
        date=dt.date.today().isoformat(),
        notes="prefix lift from the training sequences; codebook inertia / reconstruction only where the "
              "tokenizer's codebooks live in the input space (RQ-KMeans)")


def flatten(rep: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in rep.get("embedding", {}).items():
        out[f"emb_{k}"] = float(v)
    for l, row in enumerate(rep["codebook"]):
        for k, v in row.items():
            out[f"l{l + 1}_{k}"] = float(v)
    for k, v in rep["ids"].items():
        out[k] = float(v)
    for lvl, v in rep.get("prefix_lift", {}).items():
        out[f"prefix_lift_{lvl}"] = float(v["lift"])
    return out


def letter_record(ds, split, a, argv):
    from crbr.data.semantic_ids_io import load_letter_semantic_ids

    p = load_letter_semantic_ids(data_root(a.data_root) / "Beauty" / "Beauty_LETTER_semantic_ids.json", ds)
    return evaluate("Beauty-text", ds, split, "published", None, "letter", p.codes[1:], 0.0, 0.0, {}, a, argv, None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser("semantic_ids", __doc__)
    ap.add_argument("--datasets", nargs="+", default=["Beauty-text", "ml-1m", "synthetic"])
    ap.add_argument("--tokenizers", nargs="+", default=["rq-kmeans", "rq-kmeans-balanced", "rq-kmeans-reassign", "rq-vae"])
    ap.add_argument("--collab", default="", help="a SASRec checkpoint for the collaborative input (one dataset)")
    ap.add_argument("--collab-minutes", type=float, default=10.0, help="training cap of the SASRec trained otherwise")
    ap.add_argument("--no-collab", action="store_true")
    ap.add_argument("--inputs", nargs="+", default=["text", "collab", "truth"], choices=["text", "collab", "truth"],
                    help="which item embeddings to tokenize (truth: the synthetic world's true vectors)")
    ap.add_argument("--rqvae-epochs", type=int, default=60, help="RQ-VAE training epochs (early stopping, patience 5)")
    ap.add_argument("--seed", type=int, default=0)
    add_output_args(ap, "semantic_ids")
    add_data_arg(ap)
    a: argparse.Namespace = ap.parse_args(argv)
    out = Path(a.out)
    records, lines = [], []
    for name in a.datasets:
        ds, split, embs, world = inputs(name, a, out)
        kinds = list(a.tokenizers) + ([f"rq-kmeans-k1:{len(ds.category_names)}"] if world is not None else [])
        for input_name, X in ((k, v) for k, v in embs.items() if k in a.inputs):
            x = np.asarray(X[1:], np.float32)
            for kind in kinds:
                if kind.startswith("rq-kmeans-k1") and input_name != "truth":
                    continue
                codes, secs, peak, info = run_isolated(kind, x, a.seed, str(out / f"rqvae_{name}_{input_name}"),
                                                       a.rqvae_epochs)
                r = evaluate(name, ds, split, input_name, X, kind, codes, secs, peak, info, a, argv, world)
                records.append(r)
                lines.append(summary(r))
                print(lines[-1], flush=True)
        if name == "Beauty-text" and "text" in a.inputs:
            records.append(letter_record(ds, split, a, argv))
            lines.append(summary(records[-1]))
            print(lines[-1], flush=True)
        publish(records, a)  # after every dataset, so a long run keeps what it finished
        records = []
    write_report(out, "semantic_ids", f"`{command_line('semantic_ids', argv)}`\n\n" + "\n".join(lines))
    return 0


def summary(r) -> str:
    m = r.metrics
    ppl = " / ".join(f"{m.get(f'l{l}_perplexity', float('nan')):.0f}" for l in (1, 2, 3) if f"l{l}_perplexity" in m)
    dead = sum(int(m.get(f"l{l}_dead_codes", 0)) for l in (1, 2, 3, 4))
    return (f"| {r.dataset} | {r.variant} | {r.model} | {ppl} | {dead} | {m['collision_rate']:.4f} | "
            f"{int(m['largest_bucket'])} | {m.get('category_majority_agreement', float('nan')):.3f} | "
            f"{m.get('prefix_lift_level1', float('nan')):.2f} / {m.get('prefix_lift_level2', float('nan')):.2f} | "
            f"{r.timings['build_s']:.0f} s | {r.timings['peak_rss_mib']:.0f} MiB |")


if __name__ == "__main__":
    sys.exit(main())
