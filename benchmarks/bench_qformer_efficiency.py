#!/usr/bin/env python
"""Forward+backward time and peak memory: Q-Former encoder vs a SASRec-style self-attention encoder.

usage: python -m benchmarks qformer_efficiency [--quick] [--ns 256 1024 4096 16384] [--batch 4] [--position rotary]
           [--out runs/bench/qformer_efficiency]

Both encoders use the real modules at the same width D, depth, heads and FFN size, dropout 0:

  Q-Former:  crbr.models.qformer.QFormerEncoder(D, M, layers, heads, ffn, 0)  (M learnable queries
             cross-attend to the (B, N, D) history; all-True (B, N) key mask). With --position rotary
             the step also computes the rotary angles of the N events and the cut (as
             QFormer.encode does) and the cross-attention rotates queries and keys; its record is
             the variant "rotary", kept apart from the default one
  self-attn: layers x crbr.nn.CausalBlock(D, heads, ffn, 0, 0, 0, pre_norm=True) + a final
             LayerNorm (as SASRec.encode), causal (B, 1, N, N) bool mask materialized like SASRec.encode

Input: random (B, N, D) float32 history with requires_grad; loss = sum of the encoder's outputs
(cast to float32); one step = forward + backward. bf16 = torch.autocast("cpu", torch.bfloat16).

Every (model, N, dtype) case runs in a fresh subprocess, one at a time, with torch.set_num_threads(1)
and OMP_NUM_THREADS=MKL_NUM_THREADS=1. Time = median over the timed repetitions after warm-up.
Peak memory = peak RSS during warm-up + timed steps minus the RSS right before them: after imports,
model and input allocation the worker resets the kernel's high-water mark (echo 5 >
/proc/self/clear_refs), reads VmRSS as the baseline, and afterwards reads ru_maxrss (= VmHWM).
The self-attention case refuses to start when its peak, extrapolated quadratically from the
previous N, does not fit in MemAvailable minus a safety margin, and runs under an RLIMIT_AS cap,
so it can never push another job on the machine into the OOM killer.

Matmul peak: best of several single-thread (S x S) @ (S x S) products, fp32 and bf16, 2 S^3 FLOPs.
Q-Former FLOPs (analytic, matmuls only, N' = N + 1 with the null key, F = FFN width, L layers):
    forward per layer = 4 B N' D^2      (history K/V projection, D -> 2D)
                      + 4 B M N' D      (cross-attention scores + values)
                      + 4 B M D^2       (cross-attention Q and output projections)
                      + 8 B M D^2 + 4 B M^2 D   (query self-attention: QKV + output proj, scores + values)
                      + 4 B M D F       (FFN)
    fwd+bwd = 3 x L x forward per layer  (backward = 2 x forward).

Writes OUT/qformer_efficiency[_rotary].json (every step's time) and .md (the report) and the record
(suite "qformer_efficiency", dataset "random-tensors", model "qformer"); a --quick run writes no
record unless --records is given. --from-json re-renders the report and the record of an earlier
run's JSON without measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

from ._common import (RECORDS, ROOT, add_output_args, code_version, command_line, machine, machine_line, parser,  # noqa: E402
                      publish, relpath, with_tag, write_report)

LOAD_NOTE = ("on a 2-core machine while another 1-thread job (a SASRec training run) used the other core, so shared "
             "cache / memory bandwidth were contended")
MiB = 2**20


# ---------------------------------------------------------------------------------------- helpers
def proc_status() -> dict[str, int]:
    """VmRSS / VmHWM / VmSize of this process in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "VmSize"):
            out[k] = int(v.split()[0]) * 1024
    return out


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def qformer_flops(B: int, N: int, M: int, D: int, F: int, L: int) -> float:
    """Analytic fwd+bwd matmul FLOPs of QFormerEncoder (see the module docstring)."""
    Np = N + 1
    fwd = 4 * B * Np * D * D + 4 * B * M * Np * D + 4 * B * M * D * D + 8 * B * M * D * D + 4 * B * M * M * D + 4 * B * M * D * F
    return 3.0 * L * fwd


def selfattn_flops(B: int, N: int, D: int, F: int, L: int) -> float:
    """Analytic fwd+bwd matmul FLOPs of the self-attention stack, full N x N score matrices
    (what a masked SDPA computes; a causal-aware kernel could skip half)."""
    fwd = 6 * B * N * D * D + 4 * B * N * N * D + 2 * B * N * D * D + 4 * B * N * D * F
    return 3.0 * L * fwd


# ---------------------------------------------------------------------------------------- workers
def worker_case(a: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    from torch import nn

    import hashlib

    import crbr.models.qformer as qf_mod
    import crbr.nn.attention as attn_mod
    import crbr.nn.blocks as blocks_mod
    import crbr.nn.rotary as rotary_mod
    from crbr.models.qformer import QFormerEncoder
    from crbr.nn import CausalBlock, rotary_angles

    code = {Path(m.__file__).name: hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest()[:12]
            for m in (qf_mod, attn_mod, blocks_mod, rotary_mod)}

    torch.manual_seed(0)
    B, N, D, L, H, M = a.batch, a.n, a.d, a.layers, a.heads, a.queries
    F = a.ffn_mult * D
    bf16 = a.dtype == "bf16"
    x = torch.randn(B, N, D, requires_grad=True)
    mask_bytes = 0
    if a.model == "qformer":
        enc = QFormerEncoder(D, M, L, H, F, 0.0)
        key_mask = torch.ones(B, N, dtype=torch.bool)
        pos = torch.arange(N).expand(B, N)
        cut = torch.full((B, 1), N - 1)

        def fwd() -> torch.Tensor:
            if a.position == "rotary":  # angles are part of the step, as in QFormer.encode
                rope = (rotary_angles(cut, None, D // H // 2, False), rotary_angles(pos, None, D // H // 2, False))
                return enc(x, key_mask, rope=rope).tokens
            return enc(x, key_mask).tokens
    else:
        blocks = nn.ModuleList(CausalBlock(D, H, F, 0.0, 0.0, 0.0, pre_norm=True) for _ in range(L))
        final_ln = nn.LayerNorm(D, eps=1e-8)
        enc = nn.ModuleList([blocks, final_ln])
        causal = torch.ones(N, N, dtype=torch.bool).tril_()
        mask = causal.unsqueeze(0).expand(B, N, N).unsqueeze(1).contiguous()  # (B, 1, N, N), as SASRec.encode
        del causal
        mask_bytes = mask.numel()

        def fwd() -> torch.Tensor:
            h = x
            for blk in blocks:
                h = blk(h, mask)
            return final_ln(h)

    enc.train()
    n_params = sum(p.numel() for p in enc.parameters())

    def step() -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fwd()
        loss = out.float().sum()
        loss.backward()
        x.grad = None
        for p in enc.parameters():
            p.grad = None
        dt = time.perf_counter() - t
        if not torch.isfinite(loss):
            raise RuntimeError("non-finite loss")
        return dt

    # hard memory cap: address space may grow by at most `a.mem_cap_mb` beyond what exists now
    if a.mem_cap_mb > 0:
        cap = proc_status()["VmSize"] + a.mem_cap_mb * MiB
        resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark to the current RSS
    base = proc_status()["VmRSS"]
    t_start = time.perf_counter()
    warm = [step()]
    if warm[0] < a.slow_s:  # a second warm-up for the fast cases
        warm.append(step())
    times: list[float] = []
    t0 = time.perf_counter()
    while len(times) < a.min_reps or (len(times) < a.max_reps and (time.perf_counter() - t0) + times[-1] <= a.budget_s):
        times.append(step())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "model": a.model, "n": N, "dtype": a.dtype, "batch": B, "d": D, "layers": L, "heads": H, "ffn": F,
        "queries": M if a.model == "qformer" else None, "params": n_params,
        "warmup_s": warm, "times_s": times, "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3, "reps": len(times),
        "rss_base_mb": base / MiB, "peak_rss_mb": peak / MiB, "peak_mb": (peak - base) / MiB,
        "mask_input_mb": mask_bytes / MiB, "input_mb": x.numel() * 4 / MiB,
        "wall_s": time.perf_counter() - t_start, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "code_sha256": code,
    }


def worker_matmul(a: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    S = a.size
    res = {"size": S, "threads": torch.get_num_threads(), "torch": torch.__version__}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        A = torch.randn(S, S).to(dt)
        Bm = torch.randn(S, S).to(dt)
        torch.mm(A, Bm)  # warm-up
        ts = []
        for _ in range(a.max_reps):
            t = time.perf_counter()
            torch.mm(A, Bm)
            ts.append(time.perf_counter() - t)
        fl = 2.0 * S**3
        res[name] = {"best_gflops": fl / min(ts) / 1e9, "median_gflops": fl / statistics.median(ts) / 1e9,
                     "times_s": ts}
    return res


# ---------------------------------------------------------------------------------------- driver
def spawn(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_qformer_efficiency", *args]
    print("$", " ".join(cmd[1:]), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        err = (p.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return {"error": f"exit {p.returncode}: {err}"}
    return json.loads(lines[-1])


def fmt_ms(r: dict | None) -> str:
    if r is None or "median_ms" not in r:
        return "not run"
    return f"{r['median_ms']:.1f}" if r["median_ms"] >= 10 else f"{r['median_ms']:.2f}"


def fmt_mb(r: dict | None) -> str:
    if r is None or "peak_mb" not in r:
        return "not run"
    return f"{r['peak_mb']:.0f}" if r["peak_mb"] >= 10 else f"{r['peak_mb']:.1f}"


def report_name(res: dict) -> str:
    """The report's and the JSON's file name: the default (input positions) run, or the rotary one."""
    return "qformer_efficiency" + ("_rotary" if res["config"].get("position", "input") == "rotary" else "")


def record(res: dict, tag: str = ""):
    """The run's record: at the middle N the speed-up and memory ratio, the time growth from the
    low to the high N, and every case's time and peak memory among the timings."""
    from crbr.results import Machine, Protocol, ResultRecord

    cfg, cases, v = res["config"], res["cases"], res["verdicts"]
    n_lo, n_hi, n_mid = v["linear"]["n_lo"], v["linear"]["n_hi"], v["speed_memory"]["n"]
    metrics, timings = {}, {}
    for dt in cfg["dtypes"]:
        q, s = cases.get(f"qformer/{n_mid}/{dt}", {}), cases.get(f"selfattn/{n_mid}/{dt}", {})
        if "median_ms" in q and "median_ms" in s:
            metrics[f"speedup_n{n_mid}_{dt}"] = round(s["median_ms"] / q["median_ms"], 2)
            metrics[f"memory_ratio_n{n_mid}_{dt}"] = round(q["peak_mb"] / s["peak_mb"], 3)
    for dt, x in v["linear"]["ratios"].items():
        metrics[f"time_{n_hi}_over_{n_lo}_{dt}"] = round(x, 2)
    for n in cfg["ns"]:
        for dt in cfg["dtypes"]:
            for model in ("qformer", "selfattn"):
                c = cases.get(f"{model}/{n}/{dt}", {})
                if "median_ms" in c:
                    timings[f"{model}_ms_n{n}_{dt}"] = round(c["median_ms"], 1)
                    timings[f"{model}_peak_mb_n{n}_{dt}"] = round(c["peak_mb"], 1)
    m = res["machine"]
    not_run = [f"self-attention N = {k.split('/')[1]} {k.split('/')[2]} ({r['reason'].split(':')[0]})"
               for k, r in cases.items() if "reason" in r]
    notes = (f"Bar 1 (time({n_hi:,}) / time({n_lo:,}) <= 20): {v['linear']['verdict']}; bar 2 (at N = {n_mid:,} >= 8x "
             f"faster with <= 1/4 of the peak memory): {v['speed_memory']['verdict']}. "
             + (f"Not run: {'; '.join(not_run)}. " if not_run else "")
             + f"Load: {res.get('load_note', LOAD_NOTE)}. {res['code']['note']}.")
    rotary = cfg.get("position", "input") == "rotary"
    return ResultRecord(
        suite="qformer_efficiency", dataset="random-tensors", model="qformer",
        variant=with_tag("rotary" if rotary else "", tag),
        protocol=Protocol(line=(f"one forward + backward step of a {cfg['layers']}-layer encoder (batch {cfg['batch']}, "
                                f"width {cfg['d']}, {cfg['heads']} heads, FFN {cfg['ffn_mult'] * cfg['d']}, dropout 0, "
                                f"Q-Former {cfg['queries']} queries) on a random ({cfg['batch']}, N, {cfg['d']}) history; "
                                "time = median of the timed steps; peak MB = peak RSS during the steps minus the RSS "
                                f"before them; self-attention = {cfg['layers']} causal SASRec blocks with the (B, 1, N, N) "
                                "mask as input")),
        config=cfg, command=res["command"], code_version=res["code"].get("describe", res["code"]["head"]),
        machine=Machine(cpu=m["cpu"], cores=m["cores"], threads=1, software=f"Python {m['python']}, torch {res['torch']}"),
        metrics=metrics, timings=timings, date=res["date"].replace(" ", "T"), notes=notes)


def build_section(res: dict, cmdline: str) -> str:
    cfg = res["config"]
    rotary = cfg.get("position", "input") == "rotary"
    mm = res["matmul"]
    rows = []
    for n in cfg["ns"]:
        for dt in cfg["dtypes"]:
            q, s = res["cases"].get(f"qformer/{n}/{dt}"), res["cases"].get(f"selfattn/{n}/{dt}")
            ok_q, ok_s = q is not None and "median_ms" in q, s is not None and "median_ms" in s
            tr = f"{s['median_ms'] / q['median_ms']:.1f}x" if ok_q and ok_s else "-"
            mr = f"{q['peak_mb'] / s['peak_mb']:.3f}" if ok_q and ok_s and s["peak_mb"] > 0 else "-"
            gf = q["gflops"] if ok_q else None
            peak = res["matmul_peak"][dt]
            srow = fmt_ms(s) if ok_s else "not run (see below)"
            rows.append(
                f"| {n:,} | {dt} | {fmt_ms(q)} | {srow} | {tr} | {fmt_mb(q)} | {fmt_mb(s) if ok_s else 'not run'} | {mr} | "
                + (f"{gf:.1f} ({100 * gf / peak:.1f}% of {peak:.0f})" if gf is not None else "-")
                + f" | {q.get('reps', '-') if q else '-'} / {s.get('reps', '-') if ok_s else '-'} |"
            )
    v = res["verdicts"]
    n_lo, n_hi, n_mid = v["linear"]["n_lo"], v["linear"]["n_hi"], v["speed_memory"]["n"]
    lines = [
        "## Q-Former vs self-attention encoder: time and memory (benchmarks/bench_qformer_efficiency.py)"
        + (", rotary positions" if rotary else ""),
        "",
        f"Run {res['date']} ({res['wall_s'] / 60:.1f} min), `{cmdline}`; dataset: synthetic random tensors (no real data).",
        f"Machine: {machine_line()}; torch {res['torch']}. **Threads: 1** (torch.set_num_threads(1), "
        f"OMP_NUM_THREADS=MKL_NUM_THREADS=1) {res.get('load_note', LOAD_NOTE)}. Each "
        "(model, N, dtype) case ran in its own fresh subprocess, one at a time.",
        f"Code: {res['code']['note']}.",
        "",
        f"Setup: batch B = {cfg['batch']}, width D = {cfg['d']}, depth {cfg['layers']} layers, {cfg['heads']} heads, "
        f"FFN {cfg['ffn_mult']}D = {cfg['ffn_mult'] * cfg['d']}, dropout 0, Q-Former M = {cfg['queries']} queries. "
        "Q-Former = `crbr.models.qformer.QFormerEncoder` with an all-True (B, N) key mask"
        + ("; rotary positions (`model.position=rotary`): each step also computes the events' and the cut's "
           "rotation angles, and the cross-attention rotates queries and keys" if rotary else "")
        + "; self-attention = "
        f"{cfg['layers']} x `crbr.nn.CausalBlock(pre_norm=True)` + final LayerNorm with a causal (B, 1, N, N) "
        "bool mask materialized as `SASRec.encode` does (the mask is input: its size, B*N^2 bytes, is in the "
        "baseline, not in the peak). Input: random (B, N, D) fp32 history with requires_grad; loss = sum of the "
        "outputs; one step = forward + backward; bf16 = `torch.autocast('cpu', torch.bfloat16)`.",
        "",
        f"Time = median of the timed steps after 1-2 warm-up steps (reps column: Q-Former / self-attention; "
        f"up to {cfg['max_reps']} reps or a {cfg['budget_s']:.0f} s budget per case, at least {cfg['min_reps']}). "
        "Peak MB = peak RSS during warm-up + timed steps minus the RSS right before them (the worker resets the "
        "kernel's RSS high-water mark with `echo 5 > /proc/self/clear_refs` after imports, model and input "
        "allocation, then reads `ru_maxrss`). Memory ratio = Q-Former peak / self-attention peak.",
        "",
        f"Matmul peak (1 thread, torch.mm {mm['size']}^3, best of {len(mm['fp32']['times_s'])}, 2 S^3 FLOPs), measured "
        f"before the cases: fp32 {mm['fp32']['best_gflops']:.0f} GFLOPS, bf16 {mm['bf16']['best_gflops']:.0f} GFLOPS"
        + (f"; after them: fp32 {res['matmul_after']['fp32']['best_gflops']:.0f}, "
           f"bf16 {res['matmul_after']['bf16']['best_gflops']:.0f}" if res.get("matmul_after") else "")
        + f"; peak used below = the higher of the two: fp32 {res['matmul_peak']['fp32']:.0f}, bf16 "
        f"{res['matmul_peak']['bf16']:.0f} GFLOPS. Q-Former GFLOPS = analytic fwd+bwd FLOPs / median time, with FLOPs = 3 L [4 B N' D^2 + 4 B M N' D "
        "+ 12 B M D^2 + 4 B M^2 D + 4 B M D F], N' = N + 1 (null key), F = FFN width (K/V projection of the "
        "history, cross-attention scores and values, Q/output projections, query self-attention, FFN; "
        "backward = 2 x forward); the percentage is against the matmul peak of the same dtype.",
        "",
        "| N | dtype | Q-Former ms | self-attn ms | speed-up (SA / QF) | Q-Former peak MB | self-attn peak MB | "
        "memory ratio (QF / SA) | Q-Former GFLOPS (% of matmul peak) | reps |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *[f"- not run: self-attention N = {k.split('/')[1]} {k.split('/')[2]}: {r['reason']}"
          for k, r in res["cases"].items() if "reason" in r],
        f"- Q-Former time({n_hi:,}) / time({n_lo:,}): "
        + ", ".join(f"{dt} {x:.2f}" for dt, x in v["linear"]["ratios"].items())
        + f" (data grows {n_hi // n_lo}x); with the fastest step instead of the median: "
        + ", ".join(f"{dt} {x:.2f}" for dt, x in v["linear"].get("min_ratios", {}).items()) + ".",
        *[f"- Self-attention N = {k.split('/')[1]} {k.split('/')[2]}: {r['median_ms'] / 1e3:.0f} s per step, so only "
          f"{len(r['warmup_s'])} warm-up + {r['reps']} timed steps." for k, r in res["cases"].items()
          if "median_ms" in r and r["reps"] <= 3],
        f"- Timings carry noise from the shared machine: per-step times are in the JSON ({res.get('json', 'not kept')})"
        + (f"; the fp32 matmul peak was {mm['fp32']['best_gflops']:.0f} GFLOPS before the cases and "
           f"{res['matmul_after']['fp32']['best_gflops']:.0f} after." if res.get("matmul_after") else "."),
        "",
        f"**Bar 1, Q-Former time({n_hi:,}) / time({n_lo:,}) <= 20: {v['linear']['verdict']}** "
        f"({v['linear']['detail']}).",
        "",
        f"**Bar 2, at N = {n_mid:,} Q-Former >= 8x faster than self-attention with <= 1/4 of its peak memory: "
        f"{v['speed_memory']['verdict']}** ({v['speed_memory']['detail']}).",
    ]
    return "\n".join(lines)


def verdicts(res: dict) -> dict:
    cfg, cases = res["config"], res["cases"]
    ns = cfg["ns"]
    n_lo = 1024 if 1024 in ns and 1024 < ns[-1] else ns[0]
    n_hi = ns[-1]
    n_mid = 4096 if 4096 in ns else ns[-1]
    ratios, min_ratios, lin_ok = {}, {}, True
    for dt in cfg["dtypes"]:
        lo, hi = cases.get(f"qformer/{n_lo}/{dt}", {}), cases.get(f"qformer/{n_hi}/{dt}", {})
        if "median_ms" in lo and "median_ms" in hi:
            ratios[dt] = hi["median_ms"] / lo["median_ms"]
            min_ratios[dt] = hi["min_ms"] / lo["min_ms"]
            lin_ok &= ratios[dt] <= 20
        else:
            lin_ok = False
    lin = {"n_lo": n_lo, "n_hi": n_hi, "ratios": ratios, "min_ratios": min_ratios, "verdict": "met" if lin_ok and ratios else "missed",
           "detail": ", ".join(f"{dt}: {r:.2f}" for dt, r in ratios.items()) or "no data"}
    sm_ok, parts = True, []
    for dt in cfg["dtypes"]:
        q, s = cases.get(f"qformer/{n_mid}/{dt}", {}), cases.get(f"selfattn/{n_mid}/{dt}", {})
        if "median_ms" in q and "median_ms" in s:
            sp, mr = s["median_ms"] / q["median_ms"], q["peak_mb"] / s["peak_mb"]
            ok = sp >= 8 and mr <= 0.25
            sm_ok &= ok
            parts.append(f"{dt}: {sp:.1f}x faster ({q['median_ms']:.1f} vs {s['median_ms']:.1f} ms), memory "
                         f"{q['peak_mb']:.0f} / {s['peak_mb']:.0f} MB = {mr:.3f}, {'met' if ok else 'missed'}")
        else:
            sm_ok = False
            parts.append(f"{dt}: no data")
    return {"linear": lin, "speed_memory": {"n": n_mid, "verdict": "met" if sm_ok else "missed", "detail": "; ".join(parts)}}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser("qformer_efficiency", __doc__)
    ap.add_argument("--quick", action="store_true", help="smoke run: N in {256, 1024}, few reps, small matmul, "
                    "files OUT/*_quick.*, no record unless --records")
    ap.add_argument("--ns", type=int, nargs="+", default=None)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--ffn-mult", type=int, default=4)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--load-note", default=LOAD_NOTE, help="what else ran on the machine (printed with the results)")
    ap.add_argument("--position", choices=["input", "rotary"], default="input",
                    help="the Q-Former's position mode (rotary: the cross-attention rotates queries and keys)")
    ap.add_argument("--max-reps", type=int, default=None)
    ap.add_argument("--min-reps", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=None, help="timed-step budget per case (seconds)")
    ap.add_argument("--matmul-size", type=int, default=None)
    ap.add_argument("--total-budget-s", type=float, default=900, help="skip self-attention cases whose "
                    "extrapolated time would overrun this budget for the whole run")
    ap.add_argument("--mem-margin-mb", type=float, default=3072, help="leave this much of MemAvailable free")
    ap.add_argument("--json", default=None, help="the raw numbers (default OUT/qformer_efficiency[_rotary][_quick].json)")
    ap.add_argument("--from-json", default=None, help="re-render the report and the record from this JSON of an "
                    "earlier run (no measuring)")
    add_output_args(ap, "qformer_efficiency")
    ap.set_defaults(records=None)
    # worker mode (internal)
    ap.add_argument("--worker", choices=["case", "matmul"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=["qformer", "selfattn"], default="qformer", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=1024, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=2048, help=argparse.SUPPRESS)
    ap.add_argument("--slow-s", type=float, default=3.0, help=argparse.SUPPRESS)
    ap.add_argument("--mem-cap-mb", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        a.max_reps = a.max_reps or 10
        a.budget_s = a.budget_s if a.budget_s is not None else 10.0
        out = worker_case(a) if a.worker == "case" else worker_matmul(a)
        print(json.dumps(out), flush=True)
        return 0

    if a.records is None:
        a.records = "" if a.quick else str(RECORDS)
    if a.from_json:
        res = json.loads(Path(a.from_json).read_text())
        res["verdicts"] = verdicts(res)
        section = build_section(res, res["command"])
        print(section)
        write_report(a.out, report_name(res), section)
        publish([record(res, a.tag)], a)
        return 0

    ns = a.ns or ([256, 1024] if a.quick else [256, 1024, 4096, 16384])
    max_reps = a.max_reps or (5 if a.quick else 20)
    budget = a.budget_s if a.budget_s is not None else (3.0 if a.quick else 15.0)
    mm_size = a.matmul_size or (1024 if a.quick else 2048)
    name = "qformer_efficiency" + ("_rotary" if a.position == "rotary" else "") + ("_quick" if a.quick else "")
    json_path = Path(a.json or Path(a.out) / f"{name}.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    cmdline = command_line("qformer_efficiency", argv)
    describe = code_version()

    t_run = time.perf_counter()
    date = time.strftime("%Y-%m-%d %H:%M")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src/crbr/models/qformer.py", "src/crbr/nn"],
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    common = ["--batch", str(a.batch), "--d", str(a.d), "--layers", str(a.layers), "--heads", str(a.heads),
              "--ffn-mult", str(a.ffn_mult), "--queries", str(a.queries), "--position", a.position]
    mm = spawn(["--worker", "matmul", "--size", str(mm_size), "--max-reps", "5" if a.quick else "10"], 600)
    if "error" in mm:
        sys.exit(f"matmul worker failed: {mm['error']}")
    print(f"matmul {mm_size}^3: fp32 {mm['fp32']['best_gflops']:.1f} GFLOPS, bf16 {mm['bf16']['best_gflops']:.1f} GFLOPS", flush=True)
    F = a.ffn_mult * a.d
    cases: dict[str, dict] = {}
    for n in ns:
        for dt in a.dtypes:
            for model in ("qformer", "selfattn"):
                key = f"{model}/{n}/{dt}"
                cap_mb = 0
                if model == "selfattn":
                    prev = [m for m in ns if m < n and "median_ms" in cases.get(f"selfattn/{m}/{dt}", {})]
                    avail = mem_available()
                    cap_mb = int((avail / MiB) - a.mem_margin_mb)
                    if prev:
                        p = cases[f"selfattn/{prev[-1]}/{dt}"]
                        f2 = (n / prev[-1]) ** 2
                        est_mb = p["peak_mb"] * f2 + a.batch * n * n / MiB  # + the (B, 1, N, N) bool mask
                        est_step = p["median_ms"] / 1e3 * f2
                        est_case = est_step * (1 + a.min_reps) + 5
                        left = a.total_budget_s - (time.perf_counter() - t_run)
                        why = None
                        if est_mb > cap_mb:
                            why = (f"memory: estimated peak {est_mb / 1024:.1f} GiB (quadratic from {p['peak_mb']:.0f} MB at "
                                   f"N = {prev[-1]:,}) > MemAvailable {avail / 2**30:.1f} GiB - {a.mem_margin_mb / 1024:.0f} GiB margin")
                        elif est_case > left:
                            why = (f"time: estimated {est_step:.1f} s per step, {est_case:.0f} s for the case (quadratic "
                                   f"from {p['median_ms'] / 1e3:.2f} s at N = {prev[-1]:,}) > {left:.0f} s left of the "
                                   f"{a.total_budget_s:.0f} s budget")
                        if why:
                            print(f"skip {key}: {why}", flush=True)
                            cases[key] = {"reason": why, "est_step_s": est_step, "est_peak_mb": est_mb}
                            continue
                r = spawn(["--worker", "case", "--model", model, "--n", str(n), "--dtype", dt, *common,
                           "--max-reps", str(max_reps), "--min-reps", str(a.min_reps), "--budget-s", str(budget),
                           "--mem-cap-mb", str(cap_mb)], 600)
                if "error" in r:
                    r["reason"] = f"failed ({r['error']})"
                elif model == "qformer":
                    r["flops"] = qformer_flops(a.batch, n, a.queries, a.d, F, a.layers)
                    r["gflops"] = r["flops"] / (r["median_ms"] / 1e3) / 1e9
                else:
                    r["flops"] = selfattn_flops(a.batch, n, a.d, F, a.layers)
                    r["gflops"] = r["flops"] / (r["median_ms"] / 1e3) / 1e9
                cases[key] = r
                print(f"  {key}: " + (f"{r['median_ms']:.2f} ms (reps {r['reps']}), peak {r['peak_mb']:.1f} MB, "
                                      f"{r['gflops']:.1f} GFLOPS" if "median_ms" in r else r["reason"]), flush=True)
    mm_after = spawn(["--worker", "matmul", "--size", str(mm_size), "--max-reps", "5" if a.quick else "10"], 600)
    res = {
        "benchmark": "bench_qformer_efficiency", "date": date, "command": cmdline,
        "dataset": "synthetic random tensors", "machine": machine(),
        "threads_note": "1 thread", "load_note": a.load_note,
        "torch": mm.get("torch"),
        "config": {"ns": ns, "dtypes": a.dtypes, "batch": a.batch, "d": a.d, "layers": a.layers, "heads": a.heads,
                   "ffn_mult": a.ffn_mult, "queries": a.queries, "position": a.position, "max_reps": max_reps, "min_reps": a.min_reps,
                   "budget_s": budget, "threads": 1},
        "matmul": mm, "matmul_after": mm_after if "error" not in mm_after else None,
        "cases": cases, "wall_s": time.perf_counter() - t_run,
    }
    hashes = {json.dumps(c.get("code_sha256"), sort_keys=True) for c in cases.values() if c.get("code_sha256")}
    res["code"] = {"head": head, "describe": describe, "dirty_at_start": bool(dirty), "sha256": sorted(hashes),
                   "note": f"git HEAD {head} at the start" + (" (qformer.py / crbr.nn modified in the working tree)" if dirty else "")
                   + ("; the model files changed during the run (sha256 differ between cases: see the JSON)" if len(hashes) > 1
                      else f"; model files sha256 {', '.join(f'{k} {v}' for k, v in json.loads(next(iter(hashes))).items())}" if hashes else "")}
    res["matmul_peak"] = {dt: max(m[dt]["best_gflops"] for m in (mm, mm_after) if "error" not in m)
                          for dt in ("fp32", "bf16")}
    res["verdicts"] = verdicts(res)
    res["json"] = relpath(json_path)
    json_path.write_text(json.dumps(res, indent=1))
    section = build_section(res, cmdline)
    print("\n" + section, flush=True)
    print(f"\nJSON: {relpath(json_path)}; total {res['wall_s']:.0f} s", flush=True)
    write_report(a.out, name, section)
    publish([record(res, a.tag)], a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
