"""User towers side by side on a real dataset: Q-Former (Task A + B, A only, B only; max-sim
retrieval), PinnerFormer-style, the Set-Transformer retriever ("Retrieval A": SAB + PMA over the
frozen A+B Q-Former) and its mean-pooling ablation, plus any SASRec run given with --sasrec-run.

usage: python -m benchmarks towers --dataset ml-1m [--threads 1] [--minutes 15] [--only NAME ...]

Every model trains through `crbr train` in its own process with the same split and evaluation
(leave-one-out, full ranking over the whole catalogue, early stopping on validation NDCG@10,
capped at --minutes of training each); the test metrics of the best validation epoch are
reported with history masked (the setting of the published SASRec numbers) and, from the same
checkpoint, with history not masked. Writes one record per model (suite "towers"; the unmasked
metrics with the prefix "unmasked/") and the report OUT/towers_<dataset>.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from ._common import (ROOT, add_data_arg, add_output_args, command_line, data_env, data_root, machine_line,
                      parser, publish, relpath, with_tag, write_report)

TAG = {"ml-1m": "ml1m", "Beauty": "beauty"}
RAW_DIR = {"ml-1m": "ml-1m", "Beauty": "Beauty"}  # the dataset's folder under the data root

# name -> (config stem, overrides); the two-tower runs get their tower checkpoint at run time
RUNS = {
    "qformer_ab": ("qformer", []),
    "qformer_a": ("qformer", ["model.recon_weight=0.0"]),
    "qformer_b": ("qformer", ["model.itc_weight=0.0"]),
    "qformer_ab_next1": ("qformer", ["model.itc_future=1"]),
    "qformer_ab_input": ("qformer", ["model.position=input"]),
    "pinnerformer": ("pinnerformer", []),
    "two_tower_pma": ("set_transformer", ["model.pooling=pma"]),
    "two_tower_mean": ("set_transformer", ["model.pooling=mean"]),
}
LABEL = {
    "qformer_ab": "Q-Former A+B (max-sim)", "qformer_a": "Q-Former A only (max-sim)",
    "qformer_b": "Q-Former B only (max-sim)", "qformer_ab_next1": "Q-Former A+B, Task A on the next item only (max-sim)",
    "qformer_ab_input": "Q-Former A+B, recency added to the input (max-sim)",
    "pinnerformer": "PinnerFormer-style",
    "two_tower_pma": "Retrieval A: SAB + PMA", "two_tower_mean": "Retrieval A: mean pooling (ablation)",
    "sasrec": "SASRec (foundation)",
}
# name -> the record's variant ("" = the model's main setting in this suite)
VARIANT = {"qformer_a": "task_a_only", "qformer_b": "task_b_only", "qformer_ab_next1": "next_item_only",
           "qformer_ab_input": "input_positions", "two_tower_mean": "mean_pooling"}


ENV: dict[str, str] = {}  # the crbr subprocesses' environment (set in main: the data root)


def crbr(*args: str) -> str:
    cmd = [sys.executable, "-m", "crbr.cli.main", *args]
    print("$", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV or None)
    sys.stderr.write(out.stderr[-3000:])
    if out.returncode:
        sys.stderr.write(out.stdout[-3000:])
        raise subprocess.CalledProcessError(out.returncode, cmd)
    return out.stdout


def parse_table(text: str) -> dict[str, float]:
    """Metrics from EvalResult.format(): the K rows, MRR and the tail bucket."""
    m: dict[str, float] = {}
    for k, hr, ndcg, rec, _cov in re.findall(r"^\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)$", text, re.M):
        m[f"HR@{k}"], m[f"NDCG@{k}"], m[f"Recall@{k}"] = float(hr), float(ndcg), float(rec)
    tail = re.findall(r"\(tail\) HR@10 ([0-9.]+)", text)
    if tail:
        m["tail_HR@10"] = float(tail[-1])
    return m


def train(name: str, dataset: str, out: Path, threads: int, minutes: float, extra: list[str]) -> dict:
    stem, overrides = RUNS[name]
    run_dir = out / f"{name}_{TAG[dataset]}"
    cfg = ROOT / "configs" / f"{stem}_{TAG[dataset]}.yaml"
    args = ["train", "-c", str(cfg), f"out_dir={run_dir}", f"train.threads={threads}", "train.progress=false",
            f"train.max_minutes={minutes}", *overrides, *extra]
    t0 = time.perf_counter()
    crbr(*args)
    res = json.loads((run_dir / "results.json").read_text())
    res["wall_s"] = time.perf_counter() - t0
    res["run_dir"] = str(run_dir)
    from crbr.results import portable

    res["command"] = portable("crbr " + " ".join(a for a in args if not a.startswith("out_dir=")), ROOT)
    ck = run_dir / "checkpoints" / "best.safetensors"
    res["unmasked"] = parse_table(crbr("evaluate", "--checkpoint", str(ck), "--no-mask-history"))
    return res


def from_run(run_dir: Path) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    cfg = res.get("config", {})
    res["run_dir"] = str(run_dir)
    res["command"] = f"(existing run {relpath(run_dir)}; config {cfg.get('name', '?')}, overrides as in its config.yaml)"
    ck = run_dir / "checkpoints" / "best.safetensors"
    res["masked"] = parse_table(crbr("evaluate", "--checkpoint", str(ck), "--mask-history"))
    res["unmasked"] = parse_table(crbr("evaluate", "--checkpoint", str(ck), "--no-mask-history"))
    return res


def table(results: dict[str, dict]) -> str:
    lines = [
        "| model | HR@10 | NDCG@10 | Recall@50 | tail HR@10 | HR@10 / NDCG@10 unmasked | epochs (best) | train min | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        t = r.get("masked") or {**r["test"], "tail_HR@10": r["test_bucket_hr10"][-1]}
        u = r["unmasked"]
        lines.append(
            f"| {LABEL.get(name, name)} | {t['HR@10']:.4f} | {t['NDCG@10']:.4f} | {t['Recall@50']:.4f} | "
            f"{t['tail_HR@10']:.4f} | {u['HR@10']:.4f} / {u['NDCG@10']:.4f} | {r['epochs_run']} ({r['best_epoch']}) | "
            f"{r['train_seconds'] / 60:.1f} | {r.get('n_params', '')} |")
    return "\n".join(lines)


def records(results: dict[str, dict], args, invocation: str) -> list:
    """One record per model: the masked test metrics of its best checkpoint (re-evaluated for runs
    given with --sasrec-run / --existing), the unmasked ones with the prefix "unmasked/"."""
    from crbr.results import record_from_results_json

    out = []
    for name, r in results.items():
        # a run given with --existing under a name of its own gets that name as its variant
        variant = VARIANT.get(name, "" if name in RUNS or name == "sasrec" else name)
        rec = record_from_results_json(Path(r["run_dir"]) / "results.json", "towers", r["command"],
                                       variant=with_tag(variant, args.tag), root=ROOT,
                                       notes=f"{LABEL.get(name, name)}. Run by `{invocation}`; training capped at "
                                             f"{args.minutes:g} min.")
        if r.get("masked"):  # re-evaluated with history masked
            rec.metrics = {k: v for k, v in rec.metrics.items() if k.startswith("valid/")} | r["masked"]
            rec.protocol.history_masked = True
            rec.protocol.line += " (re-evaluated from the best checkpoint with history masked)"
        rec.metrics.update({f"unmasked/{k}": v for k, v in r["unmasked"].items() if k in ("HR@10", "NDCG@10", "Recall@50")})
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser("towers", __doc__)
    ap.add_argument("--dataset", default="ml-1m", choices=list(TAG))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=15.0, help="training wall-clock cap per model")
    ap.add_argument("--only", nargs="*", choices=list(RUNS), default=list(RUNS),
                    help="models to (re)train; none = only rewrite the report from stored results")
    ap.add_argument("--sasrec-run", help="an existing SASRec run directory to report beside the towers")
    ap.add_argument("--existing", nargs="*", default=[], metavar="NAME=RUN_DIR",
                    help="report runs trained elsewhere (e.g. by `crbr train` with the same config and overrides) "
                         "under NAME, re-evaluated from their best checkpoint")
    add_data_arg(ap)
    add_output_args(ap, "towers")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = ap.parse_args(argv)
    root = data_root(args.data_root)
    if not (root / RAW_DIR[args.dataset]).is_dir():
        sys.exit(f"{root / RAW_DIR[args.dataset]} not found (set --data-root or $CRBR_DATA)")
    ENV.update(data_env(root))
    invocation = command_line("towers", argv)
    out = Path(args.out)
    store = out / f"results_{TAG[args.dataset]}.json"
    results: dict[str, dict] = json.loads(store.read_text()) if store.exists() else {}
    for name in args.only:
        extra = list(args.overrides)
        if name.startswith("two_tower"):
            tower = Path(results.get("qformer_ab", {}).get("run_dir", out / f"qformer_ab_{TAG[args.dataset]}"))
            extra.append(f"model.tower_checkpoint={tower / 'checkpoints' / 'best.safetensors'}")
        results[name] = train(name, args.dataset, out, args.threads, args.minutes, extra)
        out.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(results, indent=1, default=float))  # keep finished runs
    existing = [("sasrec", args.sasrec_run)] if args.sasrec_run else []
    existing += [tuple(e.split("=", 1)) for e in args.existing]
    for name, run in existing:
        results[name] = from_run(Path(run))
        store.write_text(json.dumps(results, indent=1, default=float))
    if not results:
        sys.exit(f"no results in {store}: train some models first (--only)")
    any_r = next(iter(results.values()))
    section = "\n".join([
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, `{invocation}`; "
        f"machine: {machine_line()}; {args.threads} thread(s) per run; code {any_r['code_version']}.",
        f"Protocol: {any_r['protocol']}; {any_r['split']}; seed {any_r['seed']}. Columns HR@10 .. tail HR@10 with "
        "history masked; the unmasked column re-scores the same checkpoint with history items ranked too. "
        f"Training capped at {args.minutes:g} min per model (early stopping on validation NDCG@10 otherwise).",
        "",
        *[f"- {LABEL.get(n, n)}: `{r['command']}`" for n, r in results.items()],
        "",
        table(results),
    ])
    print(section)
    write_report(args.out, f"towers_{TAG[args.dataset]}", section)
    publish(records({n: results[n] for n in [*args.only, *(n for n, _ in existing)]}, args, invocation), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
