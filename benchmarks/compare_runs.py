#!/usr/bin/env python
"""Runs of `crbr train` side by side: the test metrics of each run's best epoch, and the
validation metric at equal wall-clock.

usage: python benchmarks/compare_runs.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--at-minutes 15 30]
           [--metric NDCG@10]

Reads each run's results.json (test metrics at the best validation epoch, HR@10 by item
popularity bucket, protocol, code version) and metrics.csv (the validation metric and the
elapsed seconds of every evaluated epoch). "valid @ T min" is the best validation value among
the epochs that finished within T minutes of the run's start (elapsed time includes the
evaluations), so runs whose epochs differ in length are compared at the same budget; "-" when
no evaluated epoch finished by then. Nothing is trained; the markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def valid_curve(run_dir: Path, metric: str) -> list[tuple[float, float]]:
    """[(elapsed minutes, validation metric)] of the evaluated epochs, in order."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    key = f"valid_{metric}"
    if rows and key not in rows[0]:
        raise SystemExit(f"{run_dir / 'metrics.csv'}: no column {key!r}")
    return [(float(r["elapsed_s"]) / 60, float(r[key])) for r in rows if r.get(key) not in (None, "")]


def best_within(curve: list[tuple[float, float]], minutes: float) -> float | None:
    vals = [v for t, v in curve if t <= minutes]
    return max(vals) if vals else None


def load(label: str, run_dir: Path, metric: str) -> dict:
    res_path = run_dir / "results.json"
    if not res_path.exists():
        raise SystemExit(f"{label}: {res_path} not found (has the run finished?)")
    res = json.loads(res_path.read_text())
    return {"label": label, "dir": str(run_dir), "res": res, "curve": valid_curve(run_dir, metric)}


def table(runs: list[dict], at_minutes: list[float], metric: str) -> str:
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


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    ap.add_argument("--at-minutes", type=float, nargs="*", default=[15.0, 30.0])
    ap.add_argument("--metric", default="NDCG@10")
    a = ap.parse_args(argv)
    runs = []
    for spec in a.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"expected LABEL=RUN_DIR, got {spec!r}")
        runs.append(load(label, Path(path), a.metric))
    protocols = {r["res"].get("protocol") for r in runs}
    out = [f"Protocol: {' / '.join(sorted(p for p in protocols if p))}"
           + ("" if len(protocols) == 1 else "  (the runs differ in protocol!)"),
           *[f"- {r['label']}: {r['dir']} (code {r['res'].get('code_version', '?')}, seed {r['res'].get('seed', '?')})"
             for r in runs],
           "", table(runs, a.at_minutes, a.metric)]
    text = "\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main()
