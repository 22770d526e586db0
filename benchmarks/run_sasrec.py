"""Train and evaluate SASRec on the real datasets and write the table to benchmarks/RESULTS.md.

usage: python benchmarks/run_sasrec.py [--datasets ml-100k ml-1m Beauty] [--threads N] [override ...]

Each dataset runs `crbr train -c configs/sasrec_<dataset>.yaml` in its own process (so peak
RSS is per run), exports the test top-100 lists, and re-computes HR@10 / NDCG@10 from the raw
files alone with benchmarks/verify_export.py (which does not import crbr). Protocol: leave-one-
out, full ranking over the whole catalogue, history not masked.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CONFIGS = {"ml-100k": "sasrec_ml100k.yaml", "ml-1m": "sasrec_ml1m.yaml", "Beauty": "sasrec_beauty.yaml"}
RAW = {  # how verify_export.py reads the raw files
    "ml-100k": ("udata", SHARED / "ml-100k" / "u.data"),
    "ml-1m": ("seq", SHARED / "ml-1m" / "ml-1m_seq.txt"),
    "Beauty": ("seq", SHARED / "Beauty" / "Beauty.txt"),
}


def run(dataset: str, out: Path, threads: int, overrides: list[str]) -> dict:
    run_dir = out / f"sasrec_{dataset}"
    export = run_dir / "test_top100.parquet"
    cmd = [sys.executable, "-m", "crbr.cli.main", "train", "-c", str(ROOT / "configs" / CONFIGS[dataset]),
           f"out_dir={run_dir}", f"train.threads={threads}", "train.progress=false",
           "--export-topk", str(export), *overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    res = json.loads((run_dir / "results.json").read_text())
    fmt, raw = RAW[dataset]
    chk = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "verify_export.py"), fmt, str(raw), str(export)],
                         check=True, capture_output=True, text=True).stdout
    print(chk, flush=True)
    m = dict(re.findall(r"(HR@10|NDCG@10)\s*[=:]\s*([0-9.]+)", chk))
    res["verify"] = {k: float(v) for k, v in m.items()}
    res["wall_s"] = wall
    res["command"] = " ".join(["crbr", "train", "-c", f"configs/{CONFIGS[dataset]}", f"train.threads={threads}",
                               "--export-topk", "FILE", *overrides])
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    ap.add_argument("--results-md", default=str(ROOT / "benchmarks" / "RESULTS.md"),
                    help="replace the section between the run_sasrec markers of this file ('' = do not write)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: the benchmark needs ../shared/data")
    results = {ds: run(ds, Path(args.out), args.threads, args.overrides) for ds in args.datasets}
    print()
    for ds, r in results.items():
        print(f"## {ds}: {r['protocol']}\n   split: {r['split']}\n   command: {r['command']}")
    section = "\n".join([
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, `python benchmarks/run_sasrec.py {' '.join(sys.argv[1:])}`; "
        f"machine: {machine_line()}; code {next(iter(results.values()))['code_version']}.",
        "",
        *[f"- {ds}: {r['protocol']}; {r['split']}; seed {r['seed']}; `{r['command']}`" for ds, r in results.items()],
        "",
        table(results),
    ])
    print(section)
    if args.results_md:
        write_section(Path(args.results_md), "run_sasrec", section, "SASRec benchmark table (benchmarks/run_sasrec.py)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
