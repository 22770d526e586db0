"""The retrieval service under load: `crbr serve` in its own process on loopback, driven by a
closed-loop asyncio load generator (each of C connections sends its next request when the last
one is answered), bounded in requests and time.

  python -m benchmarks.bench_serve [--sasrec-checkpoint CKPT] [--set-transformer-checkpoint CKPT]
                                   [--soak-minutes 10] [--duration 8] [--concurrency 1,8,32,128]

Measured, per setup and with micro-batching on (--max-batch, --max-wait-ms) and off (batch of
one): QPS and p50 / p95 / p99 latency at each concurrency; the split of a request's time between
HTTP (the same body posted to /v1/noop, which validates it and answers without the model), the
model and the index (the server's own per-call timers); the server's peak RSS; and, for SASRec on
MovieLens-1M, the in-process time of the same requests beside the served p99.

Setups: MovieLens-1M (SASRec and the Set-Transformer retriever, exact; trained here for
--train-minutes each when no checkpoint is given) and a synthetic 1M-item catalogue (a SASRec with
random weights over 1M items: exact, HNSW and IVF-Flat indexes built by `crbr index build
--checkpoint`). Then a soak of mixed valid, malformed and oversized requests against the ML-1M
SASRec server: zero 5xx, every accepted request answered, RSS at the end against after warm-up.

Records: benchmarks/results/serve__*.json (crbr.results), the report in --out/bench_serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__:
    from . import _common as common
else:  # `python benchmarks/bench_serve.py`: its folder is on the path
    import _common as common  # type: ignore[no-redef]

SUITE = "serve"


# ------------------------------------------------------------------------------- the server process
class Server:
    """`python -m crbr.cli.serve ARGS --port 0` in a child process; the port is read from its log."""

    def __init__(self, args: list[str], log_path: Path, threads: int) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "w")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        env.pop("CRBR_API_KEY", None)
        self.p = subprocess.Popen([sys.executable, "-m", "crbr.cli.serve", *args, "--port", "0", "--log-level", "info",
                                   "--threads", str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=env)
        self.port = None
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in self.p.stderr:
                self.log.write(line)
                self.log.flush()
                if self.port is None and "running on http://" in line:
                    self.port = int(line.split("running on http://", 1)[1].split()[0].rsplit(":", 1)[1])
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 900
        while not ready.wait(0.5):
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log_path}")

    def status(self) -> dict[str, float]:
        """VmRSS / VmHWM of the server process in MiB."""
        out = {}
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
        return out

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


# ------------------------------------------------------------------------------- the load generator
def http_request(path: str, body: bytes, method: str = "POST") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


class Conn:
    """One keep-alive HTTP/1.1 connection (what a load generator needs and nothing more: cheap on
    the shared cores, so the server's cost is what is measured)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader = self.writer = None

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                self.writer.write(raw)
                await self.writer.drain()
                head = await self.reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                body = await self.reader.readexactly(int(m.group(1))) if m else b""
                if re.search(rb"(?i)connection:\s*close", head):
                    self.close()
                return status, body
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        raise ConnectionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


async def closed_loop(port: int, requests: list[bytes], concurrency: int, seconds: float, max_requests: int,
                      warmup_s: float = 1.0) -> dict[str, float]:
    """C workers, each sending its next request when the last is answered, for `seconds` (after
    `warmup_s`) or until `max_requests` were answered."""
    lat: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    state = {"measure": False, "stop": False, "n": 0}

    async def worker(w: int) -> None:
        nonlocal errors
        conn = Conn(port)
        i = w
        try:
            while not state["stop"]:
                raw = requests[i % len(requests)]
                i += concurrency
                t0 = time.perf_counter()
                try:
                    status, _ = await conn.send(raw)
                except (ConnectionError, asyncio.IncompleteReadError, OSError):
                    errors += 1
                    continue
                if state["measure"]:
                    lat.append(time.perf_counter() - t0)
                    statuses[status] = statuses.get(status, 0) + 1
                    state["n"] += 1
                    if state["n"] >= max_requests:
                        state["stop"] = True
        finally:
            conn.close()

    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    await asyncio.sleep(warmup_s)
    state["measure"] = True
    t0 = time.perf_counter()
    while not state["stop"] and time.perf_counter() - t0 < seconds:
        await asyncio.sleep(0.05)
    state["stop"], state["measure"] = True, False  # answers that come after the window are not counted
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    n = len(lat)
    return {"qps": n / elapsed, "p50_ms": 1e3 * pct(lat, 50), "p95_ms": 1e3 * pct(lat, 95),
            "p99_ms": 1e3 * pct(lat, 99), "n": n, "seconds": elapsed, "errors": errors,
            "non_200": sum(v for k, v in statuses.items() if k != 200)}


def scrape(port: int) -> dict[str, float]:
    """The server's counters that the split needs (sums and counts of its timers)."""
    async def get():
        conn = Conn(port)
        try:
            return (await conn.send(http_request("/metrics", b"", "GET")))[1].decode()
        finally:
            conn.close()

    text = asyncio.run(get())
    out = {}
    for name in ("crbr_model_seconds_sum", "crbr_model_seconds_count", "crbr_index_seconds_sum",
                 "crbr_batch_size_sum", "crbr_batch_size_count", "crbr_jobs_accepted_total"):
        m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    m = re.findall(r'^crbr_jobs_answered_total\{outcome="(\w+)"\} ([0-9.e+-]+)$', text, re.M)
    out["answered"] = sum(float(v) for _, v in m)
    out["five_xx"] = sum(float(v) for s, v in re.findall(r'^crbr_http_requests_total\{route="[^"]*",status="(\d+)"\} '
                                                          r'([0-9.e+-]+)$', text, re.M) if s.startswith("5"))
    return out


def measure_setup(name: str, server_args: list[str], bodies: list[dict], args, out: Path) -> dict:
    """Batching on and off at every concurrency, the HTTP / model / index split, peak RSS."""
    raw = [http_request("/v1/retrieve", json.dumps(b).encode()) for b in bodies]
    noop = [http_request("/v1/noop", json.dumps(b).encode()) for b in bodies]
    res: dict = {"points": {}, "split": {}}
    for mode, batch_args in (("batch", ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]),
                             ("single", ["--max-batch", "1"])):
        srv = Server(server_args + batch_args + ["--queue-size", "1024"], out / "logs" / f"{name}_{mode}.log",
                     args.server_threads)
        try:
            for c in args.concurrency:
                before = scrape(srv.port)
                p = asyncio.run(closed_loop(srv.port, raw, c, args.duration, args.max_requests))
                after = scrape(srv.port)
                calls = after["crbr_batch_size_count"] - before["crbr_batch_size_count"]
                reqs = after["crbr_batch_size_sum"] - before["crbr_batch_size_sum"]
                p["mean_batch"] = reqs / calls if calls else 0.0
                p["model_ms_per_request"] = 1e3 * (after["crbr_model_seconds_sum"] - before["crbr_model_seconds_sum"]) / max(reqs, 1)
                p["index_ms_per_request"] = 1e3 * (after["crbr_index_seconds_sum"] - before["crbr_index_seconds_sum"]) / max(reqs, 1)
                p["model_ms_per_call"] = 1e3 * (after["crbr_model_seconds_sum"] - before["crbr_model_seconds_sum"]) / max(calls, 1)
                p["index_ms_per_call"] = 1e3 * (after["crbr_index_seconds_sum"] - before["crbr_index_seconds_sum"]) / max(calls, 1)
                res["points"][f"{mode}_c{c}"] = p
                print(f"  {name} {mode:6s} c={c:<3d} {p['qps']:8.1f} q/s  p50 {p['p50_ms']:7.1f}  p95 {p['p95_ms']:7.1f}  "
                      f"p99 {p['p99_ms']:7.1f} ms  batch {p['mean_batch']:5.1f}  model {p['model_ms_per_call']:6.1f} "
                      f"index {p['index_ms_per_call']:6.1f} ms/call  non-200 {p['non_200']} errors {p['errors']}",
                      flush=True)
            if mode == "single":  # the split: HTTP alone (noop) at the same concurrencies as the model runs
                for c in (1, 32):
                    q = asyncio.run(closed_loop(srv.port, noop, c, min(args.duration, 5), args.max_requests))
                    res["split"][f"noop_c{c}"] = q
                    print(f"  {name} noop   c={c:<3d} {q['qps']:8.1f} q/s  p50 {q['p50_ms']:7.2f}  p99 {q['p99_ms']:7.2f} ms",
                          flush=True)
            res[f"rss_{mode}"] = srv.status()
        finally:
            srv.stop()
    return res


# ------------------------------------------------------------------------------- setups
def train(config: str, name: str, overrides: list[str], args, out: Path) -> Path:
    """A model of `config`'s architecture trained on its dataset for --train-minutes (Adam on the
    newest window of random users, the clock checked every step), saved as a crbr checkpoint with
    its experiment config. The service's cost depends on the architecture, not on how well it
    was trained; `--sasrec-checkpoint` / `--set-transformer-checkpoint` serve fully trained ones."""
    ckpt = out / "runs" / name / "best.safetensors"
    if args.reuse and ckpt.is_file():
        print(f"reusing {common.relpath(ckpt)}", flush=True)
        return ckpt
    import numpy as np
    import torch

    from crbr.checkpoint import save_weights
    from crbr.config import load_config
    from crbr.data.batching import train_batch
    from crbr.data.prepare import prepare_with_split
    from crbr.models import build_model

    os.environ.setdefault("CRBR_DATA", str(common.data_root(args.data_root)))
    torch.set_num_threads(args.server_threads)
    cfg = load_config(common.ROOT / config, [f"name={name}", *overrides])
    ds, split = prepare_with_split(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model_name, cfg.model_params, ds, split)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    rng = np.random.default_rng(cfg.train.seed)
    eligible = np.nonzero(np.asarray(split.train_len) >= 2)[0]
    model.train()
    t0, steps, loss = time.perf_counter(), 0, float("nan")
    while time.perf_counter() - t0 < 60 * args.train_minutes:
        users = rng.choice(eligible, min(cfg.train.batch_size, len(eligible)), replace=False)
        out_ = model.loss(train_batch(ds, users, split.train_len[users], model.max_len))
        opt.zero_grad()
        out_.loss.backward()
        opt.step()
        steps, loss = steps + 1, float(out_.loss.detach())
    model.eval()
    save_weights(ckpt, model, cfg.model_name, cfg.to_dict(), {"steps": steps})
    print(f"trained {name} ({cfg.model_name}) for {steps} steps in {time.perf_counter() - t0:.0f} s, "
          f"last loss {loss:.3f}: {common.relpath(ckpt)}", flush=True)
    return ckpt


def ml1m_requests(ckpt: Path, n: int, k: int, seed: int = 0) -> tuple[list[dict], object, object]:
    """n test users' visible histories (the newest max_len events) as request bodies."""
    import numpy as np

    from crbr.checkpoint import read_metadata
    from crbr.config import ExperimentConfig
    from crbr.data.prepare import prepare_with_split
    from crbr.models import load_model
    from crbr.settings import from_dict

    meta = read_metadata(ckpt)
    ds, split = prepare_with_split(from_dict(ExperimentConfig, meta["experiment"]))
    model, _ = load_model(ckpt)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(split.test), size=min(n, len(split.test)), replace=False)
    bodies = []
    for r in rows:
        u, h = int(split.test.users[r]), int(split.test.hist_len[r])
        s = int(ds.offsets[u])
        lo = max(0, h - model.max_len)
        ev = [{"item": str(ds.item_ids[ds.items[s + i]]), "action": ds.action_names[ds.actions[s + i]]}
              for i in range(lo, h)]
        bodies.append({"events": ev, "k": k})
    return bodies, ds, model


def synthetic_1m(args, out: Path) -> tuple[Path, Path, list[dict]]:
    """A SASRec with random weights over a catalogue of --catalogue-items items, its catalogue, and
    random request histories."""
    import numpy as np
    import torch

    from crbr.checkpoint import save_weights
    from crbr.index.cli import Catalogue
    from crbr.models import build_model

    n = args.catalogue_items
    root = out / f"synthetic_{common.human(n)}"
    ckpt, cat = root / "sasrec.safetensors", root / "catalogue"
    if not (args.reuse and ckpt.is_file() and Catalogue.exists(cat)):
        torch.manual_seed(0)
        m = build_model("sasrec", {"n_items": n, "n_actions": 2, "hidden": 64, "n_layers": 2, "n_heads": 1,
                                   "max_len": 50, "dropout": 0.0}).eval()
        exp = {"name": f"synthetic_{common.human(n)}", "data": {"name": f"synthetic-{common.human(n)}"},
               "model": {"name": "sasrec"}}
        save_weights(ckpt, m, "sasrec", exp)
        Catalogue([""] + [f"i{i}" for i in range(1, n + 1)], ["<pad>", "click"], 1,
                  dataset=f"synthetic-{common.human(n)}", model_name="sasrec").save(cat)
    rng = np.random.default_rng(1)
    bodies = [{"events": [{"item": f"i{int(i)}"} for i in rng.integers(1, n + 1, size=50)], "k": args.k}
              for _ in range(256)]
    return ckpt, cat, bodies


def build_index(ckpt: Path, cat: Path, kind: str, params: list[str], out_dir: Path, args) -> tuple[Path, float]:
    """`crbr index build --checkpoint CKPT --catalogue CAT --kind KIND --param ... --out DIR` (in
    this process: the index is freed when it returns)."""
    if args.reuse and (out_dir / "index.json").is_file():
        return out_dir, float("nan")
    from crbr.index.cli import _threads, build_from_checkpoint

    _threads(args.server_threads)
    print(f"building {kind} index over {common.human(args.catalogue_items)} items ...", flush=True)
    t0 = time.perf_counter()
    build_from_checkpoint(argparse.Namespace(checkpoint=str(ckpt), catalogue=str(cat), kind=kind, param=params,
                                             out=str(out_dir)))
    return out_dir, time.perf_counter() - t0


def in_process_times(ckpt: Path, bodies: list[dict], threads: int, batch: int = 32) -> dict[str, float]:
    """The same requests answered in this process (the service's own code path: prepare + one
    model call), one at a time and in batches of `batch`."""
    import torch

    from crbr.serve.model_host import load_snapshot
    from crbr.serve.schemas import Limits, request_models

    torch.set_num_threads(threads)
    snap = load_snapshot(str(ckpt))
    Req = request_models(Limits())["RetrieveRequest"]
    prepared = [snap.prepare(Req.model_validate(b)) for b in bodies]
    for p in prepared[:5]:
        snap.run([p])
    one = []
    for p in prepared:
        t0 = time.perf_counter()
        snap.run([p])
        one.append(time.perf_counter() - t0)
    per = []
    for s in range(0, len(prepared) - batch + 1, batch):
        t0 = time.perf_counter()
        snap.run(prepared[s:s + batch])
        per.append((time.perf_counter() - t0) / batch)
    return {"one_p50_ms": 1e3 * pct(one, 50), "one_p99_ms": 1e3 * pct(one, 99),
            "batch32_per_request_ms": 1e3 * statistics.mean(per) if per else float("nan")}


# ------------------------------------------------------------------------------- the soak
def soak(server_args: list[str], bodies: list[dict], args, out: Path) -> dict:
    """Mixed traffic for --soak-minutes at --soak-concurrency: valid requests, malformed ones
    (broken JSON, wrong types, NaN, bad k, unknown items / actions / categories) and oversized
    bodies; counts by status, 5xx, accepted vs answered, RSS after warm-up and at the end."""
    rng = random.Random(0)
    valid = [json.dumps(b).encode() for b in bodies]
    too_big = b'{"events": [' + b'{"item": "1"},' * ((args.max_body_bytes // 14) + 1000) + b'{"item": "1"}], "k": 10}'

    def malformed() -> bytes:
        b = dict(rng.choice(bodies))
        kind = rng.randrange(9)
        if kind == 0:
            raw = json.dumps(b).encode()
            return raw[: rng.randrange(1, len(raw))]  # truncated JSON
        if kind == 1:
            return json.dumps({**b, "k": rng.choice([-1, 0, 10**9, "ten", None, 2.5])}).encode()
        if kind == 2:
            return json.dumps(b).encode()[:-1] + b', "k": NaN}'
        if kind == 3:
            return json.dumps({**b, "events": []}).encode()
        if kind == 4:
            return json.dumps({"events": [{"item": f"ghost-{rng.random()}"}], "k": 5}).encode()
        if kind == 5:
            return json.dumps({**b, "scope": {"categories": ["no-such-category"]}}).encode()
        if kind == 6:
            return json.dumps({**b, "events": [{"item": True}]}).encode()
        if kind == 7:
            return json.dumps({**b, "events": b["events"][:1] * (args.max_events + 1)}).encode()
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))  # noise

    srv = Server(server_args + ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                                "--max-body-bytes", str(args.max_body_bytes), "--max-events", str(args.max_events)],
                 out / "logs" / "soak.log", args.server_threads)
    counts: dict[str, int] = {}
    bad_valid = 0
    errors = 0
    rss_warm = None
    samples = []
    try:
        async def run() -> None:
            nonlocal bad_valid, errors, rss_warm
            end = time.monotonic() + 60 * args.soak_minutes
            warm_at = time.monotonic() + args.soak_warmup_s

            async def worker(w: int) -> None:
                nonlocal bad_valid, errors
                conn = Conn(srv.port)
                r = random.Random(w)
                try:
                    while time.monotonic() < end:
                        x = r.random()
                        if x < 0.70:
                            kind, raw = "valid", r.choice(valid)
                        elif x < 0.97:
                            kind, raw = "malformed", malformed()
                        else:
                            kind, raw = "oversized", too_big
                        try:
                            status, _ = await conn.send(http_request("/v1/retrieve", raw))
                        except (ConnectionError, asyncio.IncompleteReadError, OSError):
                            errors += 1
                            continue
                        key = f"{kind}_{status}"
                        counts[key] = counts.get(key, 0) + 1
                        if kind == "valid" and status != 200:
                            bad_valid += 1
                finally:
                    conn.close()

            async def sampler() -> None:
                nonlocal rss_warm
                while time.monotonic() < end:
                    await asyncio.sleep(2)
                    s = srv.status()
                    samples.append((round(time.monotonic() - (end - 60 * args.soak_minutes)), s["VmRSS"]))
                    if rss_warm is None and time.monotonic() >= warm_at:
                        rss_warm = s["VmRSS"]

            await asyncio.gather(sampler(), *[worker(w) for w in range(args.soak_concurrency)])

        asyncio.run(run())
        time.sleep(0.5)
        m = scrape(srv.port)
        rss_end = srv.status()["VmRSS"]
        peak = srv.status()["VmHWM"]
    finally:
        srv.stop()
    total = sum(counts.values())
    # the heap is trimmed every few seconds, so RSS saw-tooths: compare medians over 30 s windows
    # (the first one after the warm-up, the last one) rather than two single readings
    after = [r for t, r in samples if args.soak_warmup_s <= t < args.soak_warmup_s + 30]
    last = [r for t, r in samples if t >= 60 * args.soak_minutes - 30]
    if after and last:
        rss_warm, rss_end = statistics.median(after), statistics.median(last)
    five = sum(v for k, v in counts.items() if k.rsplit("_", 1)[1].startswith("5"))
    return {"minutes": args.soak_minutes, "requests": total, "by_kind_status": counts, "five_xx": five,
            "server_five_xx": m["five_xx"], "valid_not_200": bad_valid, "connection_errors": errors,
            "accepted": m["crbr_jobs_accepted_total"], "answered": m["answered"],
            "rss_after_warmup_mb": rss_warm, "rss_end_mb": rss_end, "rss_peak_mb": peak,
            "rss_growth": (rss_end / rss_warm - 1) if rss_warm else float("nan"), "rss_samples": samples}


# ------------------------------------------------------------------------------- report and records
def record(dataset: str, model: str, variant: str, metrics: dict, timings: dict, notes: str, args, argv) -> object:
    from crbr.results import Protocol, ResultRecord, machine_info

    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return ResultRecord(
        suite=SUITE, dataset=dataset, model=model, variant=common.with_tag(variant, args.tag),
        protocol=Protocol(line="closed-loop HTTP load on loopback against `crbr serve` in its own process; "
                               f"concurrency {','.join(map(str, args.concurrency))}, {args.duration:g} s per point "
                               f"(at most {args.max_requests} requests), k={args.k}"),
        config={"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "server_threads": args.server_threads,
                "duration_s": args.duration, "k": args.k},
        command=common.command_line("bench_serve", argv), code_version=common.code_version(),
        machine=machine_info(args.server_threads), metrics=clean, timings={k: float(v) for k, v in timings.items()
                                                                          if math.isfinite(v)},
        date=time.strftime("%Y-%m-%d"), notes=notes)


def flatten(res: dict) -> dict[str, float]:
    out = {}
    for key, p in res["points"].items():
        for m in ("qps", "p50_ms", "p99_ms"):
            out[f"{key}/{m}"] = p[m]
    for c in (8, 32, 128):
        b, s = res["points"].get(f"batch_c{c}"), res["points"].get(f"single_c{c}")
        if b and s and s["qps"]:
            out[f"gain_c{c}"] = b["qps"] / s["qps"]
    one = res["points"].get("single_c1")
    if one:
        out["c1/model_ms"] = one["model_ms_per_request"]
        out["c1/index_ms"] = one["index_ms_per_request"]
    for key, q in res["split"].items():
        out[f"{key}/p50_ms"] = q["p50_ms"]
        out[f"{key}/qps"] = q["qps"]
    return out


def table(name: str, res: dict, args) -> list[str]:
    lines = [f"### {name}", "", "| batching | C | QPS | p50 ms | p95 ms | p99 ms | mean batch | model ms/call | "
             "index ms/call | non-200 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in ("batch", "single"):
        for c in args.concurrency:
            p = res["points"].get(f"{mode}_c{c}")
            if p:
                lines.append(f"| {'on' if mode == 'batch' else 'off'} | {c} | {p['qps']:.1f} | {p['p50_ms']:.1f} | "
                             f"{p['p95_ms']:.1f} | {p['p99_ms']:.1f} | {p['mean_batch']:.1f} | "
                             f"{p['model_ms_per_call']:.1f} | {p['index_ms_per_call']:.1f} | {p['non_200']} |")
    f = flatten(res)
    gains = ", ".join(f"C={c}: {f[f'gain_c{c}']:.2f}x" for c in (8, 32, 128) if f"gain_c{c}" in f)
    lines += ["", f"Micro-batching QPS gain over batch-of-one: {gains}."]
    one = res["points"].get("single_c1")
    if one and "noop_c1" in res["split"]:
        lines.append(f"Split at C=1 (batching off): request p50 {one['p50_ms']:.2f} ms = HTTP + validation "
                     f"(/v1/noop p50 {res['split']['noop_c1']['p50_ms']:.2f} ms) + model {one['model_ms_per_request']:.2f} ms"
                     f" + index {one['index_ms_per_request']:.2f} ms (+ queueing / scheduling).")
    for mode in ("batch", "single"):
        r = res.get(f"rss_{mode}")
        if r:
            lines.append(f"Server peak RSS (batching {'on' if mode == 'batch' else 'off'}): {r['VmHWM']:.0f} MiB.")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = common.parser("bench_serve", __doc__)
    common.add_output_args(ap, SUITE)
    common.add_data_arg(ap)
    ap.add_argument("--sasrec-checkpoint", help="ML-1M SASRec checkpoint (default: train one for --train-minutes)")
    ap.add_argument("--set-transformer-checkpoint", help="ML-1M Set-Transformer retriever checkpoint (default: train one)")
    ap.add_argument("--train-minutes", type=float, default=3.0, help="training cap of each ML-1M model (default 3)")
    ap.add_argument("--reuse", action="store_true", help="reuse checkpoints and indexes an earlier run left in --out")
    ap.add_argument("--concurrency", default="1,8,32,128", help="comma-separated connection counts")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds measured per point (after 1 s warm-up)")
    ap.add_argument("--max-requests", type=int, default=20000, help="requests measured per point at most")
    ap.add_argument("-k", type=int, default=100, help="items per request (default 100)")
    ap.add_argument("--max-batch", type=int, default=64, help="server --max-batch with batching on")
    ap.add_argument("--max-wait-ms", type=float, default=2.0, help="server --max-wait-ms with batching on")
    ap.add_argument("--server-threads", type=int, default=2, help="torch / FAISS threads of the server")
    ap.add_argument("--catalogue-items", type=int, default=1_000_000, help="items of the synthetic catalogue")
    ap.add_argument("--index-kinds", default="exact,flat,hnsw,ivf_flat",
                    help="on the synthetic catalogue: exact (no index: the model's own ranking), flat (FAISS exact "
                         "search), hnsw, ivf_flat")
    ap.add_argument("--soak-minutes", type=float, default=10.0, help="soak duration (0 = no soak)")
    ap.add_argument("--soak-concurrency", type=int, default=16)
    ap.add_argument("--soak-warmup-s", type=float, default=30.0, help="the RSS reference is taken after this")
    ap.add_argument("--max-body-bytes", type=int, default=1 << 20, help="server body limit in the soak")
    ap.add_argument("--max-events", type=int, default=1000, help="server history cap in the soak")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: ml1m (all of it), ml1m_load (the load "
                                               "points; the soak still runs), set_transformer, synthetic, soak")
    args = ap.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common.code_version()
    t_start = time.time()
    report = [f"# crbr serve under load ({time.strftime('%Y-%m-%d %H:%M')})", "",
              f"Machine: {common.machine_line()}; server threads {args.server_threads}; the load generator runs on "
              "the same cores (and other jobs may share them).", f"Command: `{common.command_line('bench_serve', argv)}`",
              ""]
    records = []
    results: dict = {}
    notes = (f"{os.cpu_count()} cores shared by the server, the load generator and other jobs; numbers are noisy. "
             "QPS gain = batching-on QPS / batching-off QPS at the same concurrency, same run.")
    sas_bodies = None
    if "ml1m" not in skip:
        sas = Path(args.sasrec_checkpoint) if args.sasrec_checkpoint else train(
            "configs/sasrec_ml1m.yaml", "sasrec_ml1m_serve", [], args, out)
        sas_bodies, _, _ = ml1m_requests(sas, 256, args.k)
    if "ml1m" not in skip and "ml1m_load" not in skip:
        print("MovieLens-1M, SASRec (exact):", flush=True)
        res = measure_setup("ml1m_sasrec", ["--checkpoint", str(sas)], sas_bodies, args, out)
        res["in_process"] = in_process_times(sas, sas_bodies, args.server_threads)
        results["ml1m_sasrec"] = res
        m = flatten(res)
        m.update({f"in_process/{k}": v for k, v in res["in_process"].items()})
        report += table("MovieLens-1M, SASRec (exact, seen-item offsets)", res, args)
        ip = res["in_process"]
        b32 = res["points"].get("batch_c32")
        if b32:
            report.append(f"p99 at C=32 (batching on) {b32['p99_ms']:.1f} ms against the in-process time of the same "
                          f"requests: {ip['one_p50_ms']:.2f} ms p50 / {ip['one_p99_ms']:.2f} ms p99 one at a time, "
                          f"{ip['batch32_per_request_ms']:.2f} ms per request in batches of 32.")
            if "noop_c32" in res["split"]:
                report.append(f"HTTP overhead at C=32: /v1/noop p50 {res['split']['noop_c32']['p50_ms']:.2f} ms against "
                              f"request p50 {b32['p50_ms']:.2f} ms (a third: {b32['p50_ms'] / 3:.2f} ms).")
            report.append("")
        records.append(record("ml-1m", "sasrec", "exact", m, {"peak_rss_mb": res["rss_batch"]["VmHWM"]}, notes, args,
                              argv))
        if "set_transformer" not in skip:
            st = Path(args.set_transformer_checkpoint) if args.set_transformer_checkpoint else train(
                "configs/set_transformer_ml1m.yaml", "set_transformer_ml1m_serve",
                ["model.tower_checkpoint=", "model.item_features=", "model.n_negatives=256",
                 "model.tower={max_len: 200, n_queries: 16, hidden: 64, n_layers: 2, n_heads: 2}"], args, out)
            st_bodies, _, _ = ml1m_requests(st, 256, args.k)
            print("MovieLens-1M, Set-Transformer retriever (exact):", flush=True)
            res = measure_setup("ml1m_set_transformer", ["--checkpoint", str(st)], st_bodies, args, out)
            results["ml1m_set_transformer"] = res
            report += table("MovieLens-1M, Set-Transformer retriever (exact)", res, args)
            records.append(record("ml-1m", "set_transformer", "exact", flatten(res),
                                  {"peak_rss_mb": res["rss_batch"]["VmHWM"]}, notes, args, argv))
    if "synthetic" not in skip:
        ckpt, cat, bodies = synthetic_1m(args, out)
        ds_name = f"synthetic-{common.human(args.catalogue_items)}"
        for kind in [k.strip() for k in args.index_kinds.split(",") if k.strip()]:
            extra, build_s = [], float("nan")
            if kind == "flat":
                idx, build_s = build_index(ckpt, cat, "flat", [], ckpt.parent / "flat", args)
                extra = ["--index", str(idx)]
            elif kind == "hnsw":
                idx, build_s = build_index(ckpt, cat, "hnsw", ["M=16", "ef_construction=100", "ef_search=128"],
                                           ckpt.parent / "hnsw", args)
                extra = ["--index", str(idx)]
            elif kind == "ivf_flat":
                idx, build_s = build_index(ckpt, cat, "ivf_flat", ["nlist=2048", "nprobe=16"], ckpt.parent / "ivf_flat",
                                           args)
                extra = ["--index", str(idx)]
            print(f"{ds_name}, SASRec with random weights ({kind}):", flush=True)
            res = measure_setup(f"{ds_name}_{kind}", ["--checkpoint", str(ckpt), "--catalogue", str(cat), *extra],
                                bodies, args, out)
            res["build_s"] = build_s
            results[f"{ds_name}_{kind}"] = res
            report += table(f"{ds_name} catalogue, SASRec with random weights, {kind}"
                            + (f" (built in {build_s:.0f} s)" if math.isfinite(build_s) else ""), res, args)
            records.append(record(ds_name, "sasrec", kind, flatten(res),
                                  {"peak_rss_mb": res["rss_batch"]["VmHWM"], "index_build_s": build_s}, notes, args,
                                  argv))
    if args.soak_minutes > 0 and "soak" not in skip and "ml1m" not in skip:
        print(f"soak: {args.soak_minutes:g} min of mixed traffic at C={args.soak_concurrency} ...", flush=True)
        s = soak(["--checkpoint", str(sas)], sas_bodies, args, out)
        results["soak"] = s
        ok = s["five_xx"] == 0 and s["server_five_xx"] == 0 and s["accepted"] == s["answered"] and s["valid_not_200"] == 0
        report += ["### Soak (MovieLens-1M SASRec, batching on)", "",
                   f"{s['minutes']:g} min, {s['requests']:,} requests at C={args.soak_concurrency} (70% valid, 27% "
                   "malformed, 3% oversized): " + ", ".join(f"{k}: {v:,}" for k, v in sorted(s["by_kind_status"].items())),
                   f"5xx: {s['five_xx']} (server count {s['server_five_xx']:.0f}); valid requests not answered 200: "
                   f"{s['valid_not_200']}; accepted {s['accepted']:.0f} = answered {s['answered']:.0f}; connection "
                   f"errors {s['connection_errors']}.",
                   f"RSS (median over 30 s) after the {args.soak_warmup_s:g} s warm-up {s['rss_after_warmup_mb']:.0f} MiB, "
                   f"over the last 30 s {s['rss_end_mb']:.0f} MiB ({100 * s['rss_growth']:+.1f}%), peak "
                   f"{s['rss_peak_mb']:.0f} MiB. "
                   f"Bars met: {'yes' if ok and abs(s['rss_growth']) <= 0.10 else 'NO'}.", ""]
        records.append(record("ml-1m", "sasrec", "soak",
                              {"minutes": s["minutes"], "requests": s["requests"], "five_xx": s["five_xx"],
                               "valid_not_200": s["valid_not_200"], "accepted": s["accepted"], "answered": s["answered"],
                               "rss_growth": s["rss_growth"], "connection_errors": s["connection_errors"]},
                              {"rss_after_warmup_mb": s["rss_after_warmup_mb"], "rss_end_mb": s["rss_end_mb"],
                               "peak_rss_mb": s["rss_peak_mb"]}, notes, args, argv))
    report.append(f"Total time {(time.time() - t_start) / 60:.1f} min.")
    (out / "bench_serve.json").write_text(json.dumps(results, indent=1, default=str))
    common.write_report(out, "bench_serve", "\n".join(report))
    print("\n".join(report))
    common.publish(records, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
