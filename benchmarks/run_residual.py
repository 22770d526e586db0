"""Residual-enhancement mixture on MovieLens-100K: SASRec alone, residual enhancement, the
competitive mixture it replaces, residual with noise experts, and federated residual on Flower.

usage:
  python -m benchmarks residual                      # the full benchmark (3 seeds, the configs as checked in)
  python -m benchmarks residual --reduced            # 1 seed, newest-50 windows, batch 64, <= 40 epochs
  python -m benchmarks residual --seeds 42 --runs sasrec residual  [override ...]

Each run is its own `crbr train` / `crbr federated` process (configs/sasrec_ml100k.yaml,
configs/residual_ml100k{,_competitive,_noise,_noise_resampled}.yaml, configs/federated/residual_ml100k.yaml). The
federated run of a seed gets as many rounds as the centralized residual run of that seed trained
epochs (1 local epoch per round, all clients every round: the same total epochs of data). Protocol: leave-one-out, full ranking
over the whole catalogue, history not masked, best-validation checkpoint tested. The
`residual_warm` row is the residual mixture whose backbone starts from the SASRec-alone run of the
same seed (`model.backbone_checkpoint`), so it needs that run (in OUT) first; `residual_fixed`
keeps the gate at its initial value (`model.learn_gate=false`, g = 0.1). `residual_frozen` trains the
mixture on top of that SASRec-alone run with the backbone frozen (`model.freeze_backbone=true`);
`residual_sg` lets only the backbone's own term train the item table (`model.branch_stop_grad=true`).

Bars (issue): residual >= SASRec alone and >= competitive on test NDCG@10 (mean over seeds);
residual with noise experts within 2% of SASRec alone; federated within 10% of centralized
residual at the same total epochs.

Writes one record per row over all its seeds (suite "residual"; mean, standard deviation and
per-seed values; a --reduced run's variants end in "reduced") and the report OUT/residual.md.
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ._common import (ROOT, add_data_arg, add_output_args, combine_seeds, command_line, data_env, data_root,
                      machine_line, parser, publish, with_tag, write_report)

RUNS = {  # name -> (command, config, label)
    "sasrec": ("train", "sasrec_ml100k.yaml", "SASRec alone"),  # + ROW_OVERRIDES: the residual configs' optimizer
    "residual": ("train", "residual_ml100k.yaml", "residual enhancement (genres + MiniLM text)"),
    "residual_warm": ("train", "residual_ml100k.yaml",  # + the SASRec-alone run of the same seed as backbone
                      "residual enhancement, backbone warm-started from SASRec alone"),
    "residual_frozen": ("train", "residual_ml100k.yaml",  # + that SASRec as backbone, frozen (ROW_OVERRIDES)
                        "residual enhancement on the frozen SASRec-alone backbone"),
    "residual_sg": ("train", "residual_ml100k.yaml",  # + ROW_OVERRIDES: expert terms score with stopgrad(e_i)
                    "residual enhancement, expert terms send no gradient into the item table"),
    "residual_fixed": ("train", "residual_ml100k.yaml",  # + ROW_OVERRIDES: g stays at gating_init
                       "residual enhancement, gate fixed at gating_init 0.1 (not learned)"),
    "competitive": ("train", "residual_ml100k_competitive.yaml", "competitive mixture (3-way router)"),
    "noise": ("train", "residual_ml100k_noise.yaml", "residual, noise experts (random:384 x 2)"),
    "noise_resampled": ("train", "residual_ml100k_noise_resampled.yaml",
                        "residual, noise experts resampled every pass (no item information)"),
    "federated": ("federated", "federated/residual_ml100k.yaml", "federated residual (Flower, 10 clients)"),
}
# sasrec_ml100k.yaml trains at lr 2e-3 with bf16 autocast (its side-by-side settings); the mixture
# configs at lr 1e-3 in fp32. The SASRec row takes the mixtures' settings, so rows differ only in the model.
ROW_OVERRIDES = {"sasrec": ["train.lr=0.001", "train.bf16=false"], "residual_fixed": ["model.learn_gate=false"],
                 "residual_frozen": ["model.freeze_backbone=true"], "residual_sg": ["model.branch_stop_grad=true"]}
WARM = ("residual_warm", "residual_frozen")  # rows whose backbone starts from the same seed's SASRec-alone run
REDUCED = ["train.windows=last", "train.batch_size=64", "train.epochs=40", "train.patience=10"]
REDUCED_FED = ["federated.local_batch_size=8"]  # ~94 users per client: batch 8 = ~12 local steps per round
# row -> the record's variant ("" = the residual mixture as configured; SASRec alone is model sasrec)
VARIANT = {"residual_warm": "warm_start", "residual_frozen": "frozen_backbone", "residual_sg": "branch_stop_grad",
           "residual_fixed": "gate_fixed", "competitive": "competitive", "noise": "noise",
           "noise_resampled": "noise_resampled", "federated": "federated"}


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_one(name: str, seed: int, out: Path, threads: int, overrides: list[str], rounds: int | None,
            reuse: bool = False, root: Path | None = None) -> dict:
    cmd_name, config, _ = RUNS[name]
    run_dir = out / f"{name}_s{seed}"
    ov = [f"out_dir={run_dir}", f"train.threads={threads}", "train.progress=false", f"train.seed={seed}",
          *ROW_OVERRIDES.get(name, []), *overrides]
    if cmd_name == "federated" and rounds is not None:
        ov.append(f"federated.num_rounds={rounds}")
    cmd = [sys.executable, "-m", "crbr.cli.main", cmd_name, "-c", str(ROOT / "configs" / config), *ov]
    print("$", " ".join(cmd), flush=True)
    env = data_env(root or data_root(None), threads)
    done = run_dir / "bench.json"  # written after a completed run: its command and wall time
    if reuse and done.exists() and json.loads(done.read_text())["cmd"] == cmd[1:]:
        print(f"(reusing {run_dir})", flush=True)
        wall = json.loads(done.read_text())["wall_s"]
    else:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        wall = time.perf_counter() - t0
        done.write_text(json.dumps({"cmd": cmd[1:], "wall_s": wall}))
    res = json.loads((run_dir / "results.json").read_text())
    res["wall_s"] = wall
    res["run_dir"] = str(run_dir)
    res["command"] = " ".join(["crbr", cmd_name, "-c", f"configs/{config}", *ov[1:]])
    # the mixture at the tested (best) epoch / round: gate and catalogue-wide router weights
    best = res.get("best_epoch", res.get("best_round"))
    diag = {int(r["epoch"]): r for r in _rows(run_dir / "diagnostics.jsonl")}
    mix = {k: v for k, v in diag.get(best, {}).items() if k in ("gate", "w_seq", "w_vis", "w_sem", "aux_ratio",
                                                                 "target_w_vis", "target_w_sem")}
    if cmd_name == "federated":
        mix.update(res.get("best_round_stats") or {})
        res["epochs"] = res["rounds_run"]
    else:
        res["epochs"] = res["epochs_run"]
    res["mixture"] = mix
    if (run_dir / "metrics.csv").exists():  # gate trajectory, for the record
        with open(run_dir / "metrics.csv") as f:
            res["gate_curve"] = [float(r["diag_gate"]) for r in csv.DictReader(f) if r.get("diag_gate")]
    return res


def fmt_mean(vals: list[float]) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f} (min {min(vals):.4f}, max {max(vals):.4f})"


def mix_str(m: dict) -> str:
    if not m:
        return "–"
    parts = []
    if "gate" in m:
        parts.append(f"g {m['gate']:.3f}")
    ws = [f"{k[2:]} {m[k]:.2f}" for k in ("w_seq", "w_vis", "w_sem") if k in m]
    if ws:
        parts.append("w " + " / ".join(ws))
    if "aux_ratio" in m:
        parts.append(f"aux/seq {m['aux_ratio']:.3f}")
    return "; ".join(parts)


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| run | test NDCG@10 | test HR@10 | per seed NDCG@10 | gate / router at the tested epoch (last seed) | "
             "epochs (best) | s/epoch or s/round | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rs in results.items():
        nd = [r["test"]["NDCG@10"] for r in rs]
        hr = [r["test"]["HR@10"] for r in rs]
        ep = ", ".join(f"{r['epochs']} ({r.get('best_epoch', r.get('best_round'))})" for r in rs)
        spe = statistics.mean(r["train_seconds"] / max(r["epochs"], 1) for r in rs)
        wall = statistics.mean(r["wall_s"] for r in rs)
        lines.append(f"| {RUNS[name][2]} | {fmt_mean(nd)} | {fmt_mean(hr)} | {', '.join(f'{v:.4f}' for v in nd)} | "
                     f"{mix_str(rs[-1]['mixture'])} | {ep} | {spe:.1f} | {wall:.0f} |")
    return "\n".join(lines)


def verdicts(results: dict[str, list[dict]]) -> list[str]:
    def mean(n: str) -> float | None:
        return statistics.mean(r["test"]["NDCG@10"] for r in results[n]) if n in results else None

    s, res, comp, fed = (mean(n) for n in ("sasrec", "residual", "competitive", "federated"))
    out = []

    def line(text: str, ok: bool | None, detail: str) -> None:
        out.append(f"- {text}: **{'not run' if ok is None else ('met' if ok else 'missed')}**{detail}")

    line("residual >= SASRec alone (NDCG@10)", None if res is None or s is None else res >= s,
         "" if res is None or s is None else f" ({res:.4f} vs {s:.4f}, {100 * (res / s - 1):+.1f}%)")
    for key, what, note in (("residual_fixed", "residual with the gate fixed at 0.1", ""),
                            ("residual_warm", "residual warm-started from SASRec alone",
                             "; its training starts where SASRec's ended"),
                            ("residual_frozen", "residual on the frozen SASRec-alone backbone", ""),
                            ("residual_sg", "residual, no expert gradient into the item table", "")):
        v = mean(key)
        if v is not None and s is not None:
            line(f"{what} >= SASRec alone (NDCG@10)", v >= s, f" ({v:.4f} vs {s:.4f}, {100 * (v / s - 1):+.1f}%{note})")
    line("residual >= competitive (NDCG@10)", None if res is None or comp is None else res >= comp,
         "" if res is None or comp is None else f" ({res:.4f} vs {comp:.4f}, {100 * (res / comp - 1):+.1f}%)")
    for key, what in (("noise", "noise experts (fixed random features)"),
                      ("noise_resampled", "noise experts resampled every pass")):
        nz = mean(key)
        line(f"{what} within 2% of SASRec alone (|difference| <= 2%)",
             None if nz is None or s is None else abs(nz / s - 1) <= 0.02,
             "" if nz is None or s is None else f" ({nz:.4f} vs {s:.4f}, {100 * (nz / s - 1):+.1f}%)")
    line("federated within 10% of centralized residual, same total epochs",
         None if fed is None or res is None else fed >= 0.9 * res,
         "" if fed is None or res is None else f" ({fed:.4f} vs {res:.4f}, {100 * (fed / res - 1):+.1f}%)")
    return out


def records(results: dict[str, list[dict]], args, invocation: str) -> list:
    """One record per row: its seeds combined (`combine_seeds`)."""
    from crbr.results import portable, record_from_results_json

    out = []
    for name, rs in results.items():
        variant = with_tag(with_tag(VARIANT.get(name, ""), "reduced" if args.reduced else ""), args.tag)
        per_seed = []
        for r in rs:
            rec = record_from_results_json(Path(r["run_dir"]) / "results.json", "residual", portable(r["command"], ROOT),
                                           variant=variant, root=ROOT)
            rec.metrics.update({f"mixture/{k}": float(v) for k, v in r["mixture"].items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
            rec.timings["wall_s"] = round(r["wall_s"], 1)
            if "rounds_run" in r:
                rec.timings.update(rounds_run=r["rounds_run"], best_round=r.get("best_round", 0))
            per_seed.append(rec)
        out.append(combine_seeds(per_seed, notes=f"{RUNS[name][2]}. Run by `{invocation}`."))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser("residual", __doc__)
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default 42 43 44 (--reduced: 42)")
    ap.add_argument("--reduced", action="store_true", help="1 seed, " + " ".join(REDUCED + REDUCED_FED))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse", action="store_true",
                    help="reuse finished runs in OUT whose command is the same (e.g. add seeds to an earlier run)")
    ap.add_argument("--fed-rounds", type=int, default=None,
                    help="federated rounds (default: the epochs the centralized residual run of the same seed trained)")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file (default OUT/results.json)")
    add_data_arg(ap)
    add_output_args(ap, "residual")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run (section.key=value)")
    args = ap.parse_args(argv)
    root = data_root(args.data_root)
    if not (root / "ml-100k").is_dir():
        sys.exit(f"{root / 'ml-100k'} not found (set --data-root or $CRBR_DATA)")
    invocation = command_line("residual", argv)
    seeds = args.seeds or ([42] if args.reduced else [42, 43, 44])
    overrides = (REDUCED if args.reduced else []) + list(args.overrides)
    out = Path(args.out)
    t_start = time.perf_counter()
    results: dict[str, list[dict]] = {}
    order = [n for n in RUNS if n in args.runs]
    for seed in seeds:
        for name in order:
            rounds = args.fed_rounds
            if name == "federated" and rounds is None and "residual" in results:
                rounds = next((r["epochs"] for r in results["residual"] if r["seed"] == seed), None)
            ov = overrides + (REDUCED_FED if args.reduced and name == "federated" else [])
            if name in WARM:  # the backbone starts from this seed's SASRec-alone run
                sasrec = out / f"sasrec_s{seed}" / "checkpoints" / "best.safetensors"
                if not sasrec.exists():
                    sys.exit(f"{name} needs the SASRec-alone run of seed {seed} ({sasrec}): run it first "
                             f"(--runs sasrec {name} ...)")
                ov = ov + [f"model.backbone_checkpoint={sasrec}"]
            results.setdefault(name, []).append(run_one(name, seed, out, args.threads, ov, rounds, args.reuse, root))
    total = time.perf_counter() - t_start
    r0 = next(iter(results.values()))[0]
    mode = ("**Reduced run** (not the full benchmark): " + ", ".join(f"`{o}`" for o in REDUCED + REDUCED_FED)
            + f", seed(s) {', '.join(map(str, seeds))}. Full run: `python -m benchmarks residual` "
              "(3 seeds, every training event a target with >= 40 events of context, patience 20)."
            if args.reduced else f"Full run: seeds {', '.join(map(str, seeds))}, configs as checked in.")
    section = "\n".join([
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, `{invocation}` "
        f"({total / 60:.0f} min); machine: {machine_line()}, {args.threads} thread(s) per run; code {r0['code_version']}.",
        "",
        mode,
        "",
        f"- Dataset and protocol: {r0['protocol']}; {r0['split']}.",
        "- Features: the semantic expert reads all-MiniLM-L6-v2 embeddings of \"title (year). Genres: ...\" "
        "(`text`); no poster images exist offline, so the \"visual\" expert slot reads a second, metadata view: "
        "the 19 genres as an L2-normalized multi-hot vector (`categories`). Noise run: `random:384:1` and "
        "`random:384:2`.",
        "- Federated: Flower 1.41 FedAvg (message API, in-process Grid), 10 clients = random user partitions, all "
        "clients every round, 1 local epoch per round, rounds = the epochs of the centralized residual run of "
        "the same seed, partial-aggregation warm-up 10 rounds (backbone only), client Adam lr 3e-3 kept across "
        "rounds; validation of the global model on the server every round.",
        "- Gate / router: `g` = the learned residual gate, `w` = router weights averaged over the catalogue, "
        "`aux/seq` = mean norm of the expert term `g (w_vis LN(vis) + w_sem LN(sem))` over the norm of `LN(seq)` "
        "at the validation users' next items (diagnostics.jsonl, tested epoch).",
        "",
        table(results),
        "",
        "Bars:",
        *verdicts(results),
        "",
        "Commands: " + "; ".join(f"`{rs[0]['command']}`" for rs in results.values()),
    ])
    print(section)
    (Path(args.json) if args.json else out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    write_report(args.out, "residual", section)
    publish(records(results, args, invocation), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
