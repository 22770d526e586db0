"""SASRec trained by `crbr train` on the real datasets; exports checked against the raw files.

usage: python -m benchmarks sasrec [--datasets ml-100k ml-1m Beauty] [--threads N] [override ...]

Each dataset runs `crbr train -c configs/sasrec_<dataset>.yaml` in its own process (so peak
RSS is per run), exports the test top-100 lists, and re-computes HR@10 / NDCG@10 from the raw
files alone with benchmarks/verify_export.py (which does not import crbr). Protocol: leave-one-
out, full ranking over the whole catalogue, history masked as the config says (not masked in the
checked-in configs). Writes one record per dataset (suite "sasrec"; --tag names a variant, e.g.
`--tag masked eval.mask_history=true`) and the report OUT/sasrec.md.
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

CONFIGS = {"ml-100k": "sasrec_ml100k.yaml", "ml-1m": "sasrec_ml1m.yaml", "Beauty": "sasrec_beauty.yaml"}
RAW = {  # how verify_export.py reads the raw files, relative to the data root
    "ml-100k": ("udata", "ml-100k/u.data"),
    "ml-1m": ("seq", "ml-1m/ml-1m_seq.txt"),
    "Beauty": ("seq", "Beauty/Beauty.txt"),
}


def run(dataset: str, out: Path, threads: int, overrides: list[str], root: Path) -> dict:
    run_dir = out / f"sasrec_{dataset}"
    export = run_dir / "test_top100.parquet"
    cmd = [sys.executable, "-m", "crbr.cli.main", "train", "-c", str(ROOT / "configs" / CONFIGS[dataset]),
           f"out_dir={run_dir}", f"train.threads={threads}", "train.progress=false",
           "--export-topk", str(export), *overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=data_env(root))
    wall = time.perf_counter() - t0
    res = json.loads((run_dir / "results.json").read_text())
    fmt, raw = RAW[dataset]
    chk = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "verify_export.py"), fmt, str(root / raw), str(export)],
                         check=True, capture_output=True, text=True).stdout
    print(chk, flush=True)
    m = dict(re.findall(r"(HR@10|NDCG@10)\s*[=:]\s*([0-9.]+)", chk))
    res["verify"] = {k: float(v) for k, v in m.items()}
    res["wall_s"] = wall
    res["run_dir"] = str(run_dir)
    res["command"] = " ".join(["crbr", "train", "-c", f"configs/{CONFIGS[dataset]}", f"train.threads={threads}",
                               "train.progress=false", "--export-topk", "FILE", *overrides])
    return res


def table(results: dict[str, dict]) -> str:
    lines = [
        "| dataset | HR@10 | NDCG@10 | Recall@10 | HR@50 | MRR | tail HR@10 | verified HR@10 / NDCG@10 | epochs (best) | s/epoch | train s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds, r in results.items():
        t = r["test"]
        v = r.get("verify", {})
        lines.append(
            f"| {ds} | {t['HR@10']:.4f} | {t['NDCG@10']:.4f} | {t['Recall@10']:.4f} | {t['HR@50']:.4f} | {t['MRR']:.4f} | "
            f"{r['test_bucket_hr10'][-1]:.4f} | {v.get('HR@10', float('nan')):.4f} / {v.get('NDCG@10', float('nan')):.4f} | "
            f"{r['epochs_run']} ({r['best_epoch']}) | {r['seconds_per_epoch']:.1f} | {r['train_seconds']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def records(results: dict[str, dict], args, invocation: str) -> list:
    from crbr.results import record_from_results_json

    out = []
    for ds, r in results.items():
        v = r.get("verify", {})
        notes = (f"Exported top-100 lists recomputed from the raw files by benchmarks/verify_export.py: "
                 f"HR@10 {v.get('HR@10', float('nan')):.5f} / NDCG@10 {v.get('NDCG@10', float('nan')):.5f}. "
                 f"HR@10 by popularity bucket (head -> tail): {', '.join(f'{x:.3f}' for x in r['test_bucket_hr10'])}. "
                 f"Run by `{invocation}`.")
        rec = record_from_results_json(Path(r["run_dir"]) / "results.json", "sasrec", r["command"],
                                       variant=with_tag("", args.tag), notes=notes, root=ROOT)
        rec.timings["wall_s"] = round(r["wall_s"], 1)
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser("sasrec", __doc__)
    ap.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    add_data_arg(ap)
    add_output_args(ap, "sasrec")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run (section.key=value)")
    args = ap.parse_args(argv)
    root = data_root(args.data_root)
    missing = [ds for ds in args.datasets if not (root / RAW[ds][1]).is_file()]
    if missing:
        sys.exit(f"{root}: no {', '.join(RAW[ds][1] for ds in missing)} (set --data-root or $CRBR_DATA)")
    invocation = command_line("sasrec", argv)
    results = {ds: run(ds, Path(args.out), args.threads, args.overrides, root) for ds in args.datasets}
    print()
    for ds, r in results.items():
        print(f"## {ds}: {r['protocol']}\n   split: {r['split']}\n   command: {r['command']}")
    section = "\n".join([
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, `{invocation}`; "
        f"machine: {machine_line()}; code {next(iter(results.values()))['code_version']}.",
        "",
        *[f"- {ds}: {r['protocol']}; {r['split']}; seed {r['seed']}; `{r['command']}`; run {relpath(r['run_dir'])}"
          for ds, r in results.items()],
        "",
        table(results),
    ])
    print(section)
    write_report(args.out, "sasrec", section)
    publish(records(results, args, invocation), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
