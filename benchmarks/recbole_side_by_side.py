"""crbr SASRec vs RecBole 1.2.1 SASRec on MovieLens-100K, side by side in ONE run on this machine.

usage: python -m benchmarks recbole_side_by_side [--minutes 40] [--out runs/bench/recbole_side_by_side]
                                                 [--recbole-python runs/recbole-venv/bin/python]
                                                 [--peer-dir ../shared/peers/recbole] [--crbr-epochs N]

Both trainings run CONCURRENTLY as two subprocesses, each on one thread, with the same wall-clock
cap (crbr `train.max_minutes`, RecBole through benchmarks/recbole_sasrec_runner.py) and early
stopping on validation NDCG@10 (patience in each library's own epochs). Settings: leave-one-out (last event = test,
second-to-last = validation), full ranking over all 1682 items, all 100k ratings as interactions,
max length 50, hidden 64, 2 layers, 2 heads, FFN inner size 256, dropout 0.5 (hidden and
attention), batch 256, full-softmax CE loss, Adam lr 1e-3 (betas 0.9 / 0.999), no weight decay.

RecBole trains on every prefix of every training sequence (~97k rows per epoch) and crbr on one
window per user (943 per epoch), so seconds per epoch are not comparable. The script compares
time to quality: RecBole's best validation NDCG@10 and the cumulative time at which RecBole first
reached it, against the first crbr epoch whose validation NDCG@10 is at least that value.

It also checks the protocol: RecBole's actual split (dumped by the runner) is compared with
crbr's user by user, and timestamp ties at the split positions are counted.

Writes OUT/recbole_side_by_side.md (the report, also printed) and .json (raw numbers, both
curves), run directories and logs under --workdir (default OUT/work), and two records (suite
"recbole_side_by_side", dataset "ml-100k": model "sasrec" = crbr, "recbole_sasrec" = RecBole;
--tag names a crbr variant, e.g. `--tag seen_bias --crbr-set model.seen_bias=true`).

Needs the RecBole peer folder (--peer-dir, default ../shared/peers/recbole beside the repository:
base.yaml, sasrec_len50.yaml, convert_ml100k.py and the README on its virtual environment) and a
Python with RecBole 1.2.1 (--recbole-python, default $RECBOLE_PYTHON, else runs/recbole-venv/bin/python,
created on first use as that README prescribes; never crbr's own environment).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ._common import (ROOT, add_data_arg, add_output_args, code_version, command_line, data_env, data_root, machine,
                      parser, publish, relpath, with_tag, write_report)

PEER = ROOT.parent / "shared" / "peers" / "recbole"  # the default --peer-dir
RECBOLE_PYTHON = ROOT / "runs" / "recbole-venv" / "bin" / "python"  # the default --recbole-python
CRBR_CONFIG = ROOT / "configs" / "sasrec_ml100k.yaml"
RUNNER = ROOT / "benchmarks" / "recbole_sasrec_runner.py"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# RecBole SASRec defaults (recbole/properties/model/SASRec.yaml), written explicitly into the run
# config, and the crbr overrides that match them where crbr has the knob.
RECBOLE_EXTRA = {
    "epochs": 200,
    "stopping_step": 10,
    "train_batch_size": 256,
    "learning_rate": 0.001,
    "loss_type": "CE",
    "MAX_ITEM_LIST_LENGTH": 50,
    "hidden_size": 64,
    "n_layers": 2,
    "n_heads": 2,
    "inner_size": 256,
    "hidden_dropout_prob": 0.5,
    "attn_dropout_prob": 0.5,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "initializer_range": 0.02,
    "weight_decay": 0.0,
    # logging only: RecBole rounds every metric (and the early-stopping score) to 4 places by
    # default; 6 places make the time-to-quality threshold precise.
    "metric_decimal_place": 6,
}


def crbr_overrides(run_dir: Path, minutes: float, epochs: int | None) -> list[str]:
    ov = [
        f"out_dir={run_dir}",
        "train.threads=1",
        "train.progress=false",
        f"train.max_minutes={minutes:g}",
        # patience (in epochs) comes from the crbr config: crbr's epochs are ~10 optimizer steps
        # on ML-100K, RecBole's ~380, so the same count would stop crbr ~40x sooner in steps
        "train.monitor=NDCG@10",
        "train.batch_size=256",
        "train.lr=0.001",
        "train.beta2=0.999",  # RecBole: torch Adam default betas (0.9, 0.999); crbr default 0.98
        "train.weight_decay=0.0",
        "train.grad_clip=0.0",
        "model.max_len=50",
        "model.hidden=64",
        "model.n_layers=2",
        "model.n_heads=2",
        "model.ffn_mult=4",  # inner_size 256 = 4 * 64
        "model.dropout=0.5",  # hidden_dropout_prob
        "model.attn_dropout=0.5",  # attn_dropout_prob
        "model.init_std=0.02",  # initializer_range
        "model.norm=post",  # RecBole's layout: LN on the embedding sum, post-LN blocks
        "model.ffn_dropout=0.0",  # RecBole has no dropout inside the FFN
        "model.ln_eps=1e-12",  # layer_norm_eps
        "model.loss=ce",
        "eval.mask_history=false",  # RecBole does not mask history for sequential models (see report)
    ]
    if epochs:
        ov.append(f"train.epochs={epochs}")
    return ov


# ----------------------------------------------------------------------------- helpers
def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def other_cpu_jobs(own: set[int]) -> list[str]:
    """Other processes using CPU right now (ps), for the record of the machine conditions."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    except OSError:
        return []
    rows = []
    for line in out.splitlines()[1:]:
        parts = line.split(None, 2)
        if len(parts) < 3 or int(parts[0]) in own or int(parts[0]) == os.getpid():
            continue
        if float(parts[1]) >= 20:
            rows.append(f"{parts[1]}% CPU: {parts[2][:160]}")
    return rows[:3]


def read_udata(path: Path) -> np.ndarray:
    a = np.loadtxt(path, dtype=np.int64)  # user, item, rating, ts  (file order)
    assert a.shape == (100000, 4), a.shape
    return a


def tie_analysis(a: np.ndarray) -> dict:
    """Timestamp ties at the leave-one-out positions, and what RecBole's float32 timestamps do.

    crbr: per user, events sorted stably by the integer timestamp (ties keep file order).
    RecBole: timestamp is a `float` field, min-max normalised (normalize_all: True in its
    ml-100k.yaml), stored as float32, then sorted stably (ties keep file order). Distinct
    timestamps less than ~1 s apart can become equal in float32, so its order can differ.
    """
    u, i, ts = a[:, 0], a[:, 1], a[:, 3]
    row = np.arange(len(a))
    order_int = np.lexsort((row, ts, u))
    tsn = ((ts - ts.min()) / (ts.max() - ts.min())).astype(np.float32)
    order_f32 = np.lexsort((row, tsn, u))
    users = np.unique(u)
    starts = np.searchsorted(u[order_int], users, side="left")
    ends = np.searchsorted(u[order_int], users, side="right")
    res = {"users": int(len(users)), "test_tied": 0, "valid_tied": 0, "test_or_valid_tied": 0,
           "test_valid_same_ts": 0, "f32_test_differs": 0, "f32_valid_differs": 0, "f32_window_differs": 0,
           "f32_collisions_events": int(0)}
    su_i, su_f = u[order_int], u[order_f32]
    assert (su_i == su_f).all()
    for s, e in zip(starts, ends):
        t_int = ts[order_int[s:e]]
        last, prev = t_int[-1], t_int[-2]
        tt = int((t_int == last).sum() > 1)
        vt = int((t_int == prev).sum() > 1)
        res["test_tied"] += tt
        res["valid_tied"] += vt
        res["test_or_valid_tied"] += int(tt or vt)
        res["test_valid_same_ts"] += int(last == prev)
        it_i, it_f = i[order_int[s:e]], i[order_f32[s:e]]
        res["f32_test_differs"] += int(it_i[-1] != it_f[-1])
        res["f32_valid_differs"] += int(it_i[-2] != it_f[-2])
        res["f32_window_differs"] += int((it_i[-52:] != it_f[-52:]).any())
        tf = tsn[order_int[s:e]]
        res["f32_collisions_events"] += int(((tf[1:] == tf[:-1]) & (t_int[1:] != t_int[:-1])).sum())
    # how many events share (user, timestamp) with another event at all
    key = u * (ts.max() + 1) + ts
    _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    res["events_in_user_ts_ties"] = int((cnt[inv] > 1).sum())
    return res


def crbr_split_tokens(overrides: list[str] | None = None, root: Path | None = None) -> dict:
    """crbr's leave-one-out split in original ids: valid/test targets, test history window;
    `overrides` (the run's --crbr-set) can change the training windows counted below."""
    from crbr.config import load_config
    from crbr.data.dataset import make_split
    from crbr.data.prepare import prepare

    cfg = load_config(CRBR_CONFIG, (overrides or []) + ([f"data.root={root}"] if root else []))
    ds = prepare(cfg.data)
    sp = make_split(ds, "leave_one_out")
    out = {}
    for name, es in (("valid", sp.valid), ("test", sp.test)):
        users = [str(ds.user_ids[x]) for x in es.users]
        targets = [str(ds.item_ids[t]) for t in es.target_items]
        rec = {"users": users, "targets": targets}
        if name == "test":
            hist = []
            for uu, hl in zip(es.users, es.hist_len):
                s = int(ds.offsets[uu])
                hist.append([str(ds.item_ids[x]) for x in ds.items[s + max(0, hl - 50): s + hl]])
            rec["history"] = hist
        out[name] = rec
    tl = sp.train_len.astype(np.int64)
    out["train_targets_all_prefixes"] = int(np.clip(tl - 1, 0, None).sum())  # = RecBole's rows per epoch
    # what crbr's loop draws per epoch with the config's windows (same code path as the trainer)
    from crbr.data.batching import TrainUsers

    max_len = cfg.model["max_len"]
    stride = 0 if cfg.train.windows == "last" else min(cfg.train.window_stride or max_len, max_len)
    win = TrainUsers(ds, sp, max_len, stride=stride)
    out["train_windows"] = len(win)
    out["train_targets_crbr_window"] = int((win.collate(list(range(len(win))))["targets"] > 0).sum())
    out["train_users"] = int((tl >= 2).sum())
    out["n_items"] = int(ds.n_items)
    return out


def compare_splits(rb: dict, cr: dict) -> dict:
    def as_map(d, key):
        return dict(zip(d["users"], d[key]))

    res = {}
    for name in ("valid", "test"):
        a, b = as_map(rb[name], "targets"), as_map(cr[name], "targets")
        res[f"{name}_users_recbole"] = len(a)
        res[f"{name}_users_crbr"] = len(b)
        res[f"{name}_target_differs"] = sum(1 for k in set(a) | set(b) if a.get(k) != b.get(k))
    a, b = as_map(rb["test"], "history"), as_map(cr["test"], "history")
    res["test_history_window_differs"] = sum(1 for k in set(a) | set(b) if a.get(k) != b.get(k))
    res["test_history_window_differs_as_set"] = sum(
        1 for k in set(a) | set(b) if set(a.get(k) or []) != set(b.get(k) or []))
    return res


def parse_recbole_log(text: str) -> tuple[list[dict], dict | None, list[dict]]:
    text = ANSI.sub("", text)
    rows: dict[int, dict] = {}
    for m in re.finditer(r"epoch (\d+) training \[time: ([0-9.]+)s, train loss: ([0-9.naninf]+)\]", text):
        rows.setdefault(int(m.group(1)), {})["train_s"] = float(m.group(2))
        rows[int(m.group(1))]["train_loss"] = float(m.group(3))
    for m in re.finditer(r"epoch (\d+) evaluating \[time: ([0-9.]+)s, valid_score: ([0-9.]+)\]", text):
        rows.setdefault(int(m.group(1)), {})["eval_s"] = float(m.group(2))
        rows[int(m.group(1))]["valid_score_logged"] = float(m.group(3))
    hooks = [json.loads(m.group(1)) for m in re.finditer(r"^EPOCH_JSON (.*)$", text, re.M)]
    hk = {h["epoch"]: h for h in hooks}
    out, cum = [], 0.0
    for ep in sorted(rows):
        r = rows[ep]
        if "eval_s" not in r:
            continue
        cum += r.get("train_s", 0.0) + r["eval_s"]
        h = hk.get(ep, {})
        out.append({"epoch": ep, "train_s": r.get("train_s"), "eval_s": r["eval_s"], "cum_train_eval_s": cum,
                    "wall_elapsed_s": h.get("wall_elapsed_s"), "valid_NDCG@10": h.get("valid_score", r["valid_score_logged"]),
                    "train_loss": r.get("train_loss")})
    m = re.search(r"^RESULT_JSON (.*)$", text, re.M)
    return out, (json.loads(m.group(1)) if m else None), hooks


def read_crbr_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in r.items()} for r in csv.DictReader(f)]


def fmt(x, nd=4):
    return "n/a" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def ensure_recbole_venv(venv: Path) -> None:
    """Create the throwaway RecBole venv as the peer folder's README.md prescribes."""
    print(f"creating the RecBole venv at {venv} (never part of crbr's own environment)", flush=True)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet"]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(pip + ["torch==2.13.0", "recbole==1.2.1"], check=True)
    # RecBole 1.2.1 does not import with today's numpy / pandas / setuptools
    subprocess.run(pip + ["numpy<2", "pandas<3", "setuptools<81"], check=True)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser("recbole_side_by_side", __doc__)
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-clock cap of each training (default 40)")
    ap.add_argument("--recbole-python", default=os.environ.get("RECBOLE_PYTHON") or str(RECBOLE_PYTHON),
                    help="a Python with RecBole 1.2.1 (created there when missing; default: %(default)s)")
    ap.add_argument("--peer-dir", default=str(PEER), help="the RecBole peer folder (default: %(default)s)")
    ap.add_argument("--workdir", default=None, help="run directories and logs (default OUT/work)")
    ap.add_argument("--crbr-epochs", type=int, default=None, help="crbr train.epochs (default: the config's)")
    ap.add_argument("--poll", type=float, default=60.0, help="seconds between progress lines")
    ap.add_argument("--crbr-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra crbr override outside the shared settings, e.g. train.bf16=true (repeatable)")
    add_data_arg(ap)
    add_output_args(ap, "recbole_side_by_side")
    args = ap.parse_args(argv)
    invocation = command_line("recbole_side_by_side", argv)
    code_version()  # the code that runs, taken at the start
    peer = Path(args.peer_dir).resolve()
    shared_data = data_root(args.data_root)
    if not (peer / "base.yaml").is_file():
        sys.exit(f"{peer}: not the RecBole peer folder (no base.yaml); set --peer-dir")
    if not (shared_data / "ml-100k" / "u.data").is_file():
        sys.exit(f"{shared_data / 'ml-100k' / 'u.data'} not found (set --data-root or $CRBR_DATA)")

    out_base = Path(args.out) / "recbole_side_by_side"
    out_base.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir) if args.workdir else Path(args.out) / "work"
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()  # RecBole runs in it
    rb_py = args.recbole_python
    if not Path(rb_py).exists():
        ensure_recbole_venv(Path(rb_py).parent.parent)
    chk = subprocess.run([rb_py, "-c", "import recbole, torch; print(recbole.__version__, torch.__version__)"],
                         capture_output=True, text=True)
    if chk.returncode:
        sys.exit(f"RecBole venv not usable ({rb_py}): {chk.stderr[-500:]}\n"
                 f"install it as {peer / 'README.md'} says")
    rb_version, rb_torch = chk.stdout.split()
    import torch  # crbr's venv

    # ---- data: RecBole atomic file (and what RecBole really reads for dataset "ml-100k")
    rb_data = work / "recbole-data"
    inter = rb_data / "ml-100k" / "ml-100k.inter"
    if not inter.is_file():
        subprocess.run([sys.executable, str(peer / "convert_ml100k.py"), str(shared_data), str(rb_data)], check=True)
    site = subprocess.run([rb_py, "-c", "import recbole, os; print(os.path.dirname(recbole.__file__))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    bundled = Path(site) / "dataset_example" / "ml-100k" / "ml-100k.inter"
    same_as_bundled = bundled.is_file() and bundled.read_text().splitlines()[1:] == inter.read_text().splitlines()[1:]

    udata = read_udata(shared_data / "ml-100k" / "u.data")
    ties = tie_analysis(udata)
    crsplit = crbr_split_tokens(args.crbr_set, shared_data)

    # ---- configs and commands
    rb_extra = work / "recbole_extra.yaml"
    rb_extra.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in
                                {**RECBOLE_EXTRA, "checkpoint_dir": str(work / "recbole_saved")}.items()))
    rb_cfgs = [str(peer / "base.yaml"), str(peer / "sasrec_len50.yaml"), str(rb_extra)]
    split_dump = work / "recbole_split.json"
    rb_cmd = [rb_py, str(RUNNER), f"{args.minutes:g}", str(split_dump), *rb_cfgs]
    crbr_dir = work / "crbr_sasrec_ml100k"
    cr_ov = crbr_overrides(crbr_dir, args.minutes, args.crbr_epochs) + list(args.crbr_set)
    cr_cmd = [sys.executable, "-m", "crbr.cli.main", "train", "-c", str(CRBR_CONFIG), *cr_ov]
    for p in (crbr_dir / "metrics.csv", crbr_dir / "results.json", split_dump):
        p.unlink(missing_ok=True)
    env1 = {**data_env(shared_data), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    rb_env = {**env1, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    rb_log, cr_log = work / "recbole.log", work / "crbr.log"
    print("$", shlex.join(rb_cmd), flush=True)
    print("$", shlex.join(cr_cmd), flush=True)
    load_start = loadavg()

    # ---- run both concurrently; os.wait4 gives each child's own peak RSS
    t_launch = time.time()
    with open(rb_log, "w") as frb, open(cr_log, "w") as fcr:
        p_rb = subprocess.Popen(rb_cmd, stdout=frb, stderr=subprocess.STDOUT, env=rb_env, cwd=work)
        p_cr = subprocess.Popen(cr_cmd, stdout=fcr, stderr=subprocess.STDOUT, env=env1, cwd=ROOT)
        others = other_cpu_jobs({p_rb.pid, p_cr.pid})
        procs = {p_rb.pid: "recbole", p_cr.pid: "crbr"}
        done: dict[str, dict] = {}
        last_poll = time.time()
        while len(done) < 2:
            pid, status, ru = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(2)
                if time.time() - last_poll >= args.poll:
                    last_poll = time.time()
                    rb_ep = re.findall(r"epoch (\d+) evaluating \[time: [0-9.]+s, valid_score: ([0-9.]+)",
                                       ANSI.sub("", rb_log.read_text(errors="replace")))
                    cr_ep = re.findall(r"epoch (\d+): loss .*valid NDCG@10 ([0-9.]+)", cr_log.read_text(errors="replace"))
                    print(f"[{time.time() - t_launch:6.0f}s] load {loadavg()}  recbole: "
                          f"{'epoch %s valid %s' % rb_ep[-1] if rb_ep else '-'}{' (done)' if 'recbole' in done else ''}  "
                          f"crbr: {'epoch %s valid %s' % cr_ep[-1] if cr_ep else '-'}{' (done)' if 'crbr' in done else ''}",
                          flush=True)
                continue
            if pid not in procs:
                continue
            name = procs[pid]
            code = os.waitstatus_to_exitcode(status)
            (p_rb if name == "recbole" else p_cr).returncode = code
            done[name] = {"rc": code, "wall_s": time.time() - t_launch, "peak_rss_mb": ru.ru_maxrss / 1024,
                          "cpu_s": ru.ru_utime + ru.ru_stime}
            print(f"{name} finished rc={code} after {done[name]['wall_s']:.0f}s", flush=True)
    load_end = loadavg()
    for name, log in (("recbole", rb_log), ("crbr", cr_log)):
        if done[name]["rc"] != 0:
            print(log.read_text()[-4000:], file=sys.stderr)
            sys.exit(f"{name} failed (rc {done[name]['rc']}); log: {log}")

    # ---- parse
    rb_text = rb_log.read_text(errors="replace")
    rb_rows, rb_res, _ = parse_recbole_log(rb_text)
    m = re.search(r"torch threads=(\d+)", rb_text)
    rb_threads = int(m.group(1)) if m else None
    m = re.search(r"FIT_START ([0-9.]+)s", rb_text)
    rb_fit_start = float(m.group(1)) if m else None
    cr_rows = read_crbr_metrics(crbr_dir / "metrics.csv")
    cr_res = json.loads((crbr_dir / "results.json").read_text())

    rb_split = json.loads(split_dump.read_text())
    split_cmp = compare_splits(rb_split, crsplit)

    # ---- time to quality
    rb_best = max(r["valid_NDCG@10"] for r in rb_rows)
    rb_first = next(r for r in rb_rows if r["valid_NDCG@10"] >= rb_best)
    cr_first = next((r for r in cr_rows if r.get("valid_NDCG@10") is not None and r["valid_NDCG@10"] >= rb_best), None)
    cr_best_row = max(cr_rows, key=lambda r: r.get("valid_NDCG@10") or -1)
    t_rb_log, t_rb_wall = rb_first["cum_train_eval_s"], rb_first["wall_elapsed_s"]
    t_cr = cr_first["elapsed_s"] if cr_first else None
    ratio_log = t_cr / t_rb_log if t_cr is not None else None
    ratio_wall = t_cr / t_rb_wall if (t_cr is not None and t_rb_wall) else None
    # crbr's own best, and the time RecBole needed for the same validation value (if it got there)
    rb_for_cr_best = next((r for r in rb_rows if r["valid_NDCG@10"] >= cr_best_row["valid_NDCG@10"]), None)

    rt = rb_res["test_result"]
    ct = cr_res["test"]
    tests = {
        "crbr": {"HR@10": ct["HR@10"], "NDCG@10": ct["NDCG@10"], "HR@20": ct["HR@20"], "NDCG@20": ct["NDCG@20"],
                 "MRR": ct["MRR"], "HR@5": ct["HR@5"], "NDCG@5": ct["NDCG@5"]},
        "recbole": {"HR@10": rt["hit@10"], "NDCG@10": rt["ndcg@10"], "HR@20": rt["hit@20"], "NDCG@20": rt["ndcg@20"],
                    "MRR@20": rt["mrr@20"], "HR@5": rt["hit@5"], "NDCG@5": rt["ndcg@5"]},
    }
    bar_quality = tests["crbr"]["HR@10"] >= tests["recbole"]["HR@10"] and tests["crbr"]["NDCG@10"] >= tests["recbole"]["NDCG@10"]
    bar_time = ratio_log is not None and ratio_log <= 0.5
    bar_time_wall = ratio_wall is not None and ratio_wall <= 0.5
    rb_stop = "wall-clock cap" if rb_res.get("deadline_hit") else "early stopping (patience 10)"
    if len(rb_rows) >= RECBOLE_EXTRA["epochs"]:
        rb_stop = "epoch limit"
    cr_stop = f"early stopping (patience {cr_res['config']['train']['patience']})"
    if cr_rows and cr_rows[-1]["elapsed_s"] > args.minutes * 60:
        cr_stop = "wall-clock cap"
    elif len(cr_rows) >= (args.crbr_epochs or cr_res["config"]["train"]["epochs"]):
        cr_stop = "epoch limit"
    mach = machine()
    rb_s_epoch = float(np.mean([r["train_s"] for r in rb_rows if r["train_s"] is not None]))
    cr_s_epoch = float(np.mean([r["train_s"] for r in cr_rows]))
    crbr_cmd_show = "crbr train -c configs/sasrec_ml100k.yaml " + " ".join(
        o for o in cr_ov if not o.startswith("out_dir="))
    rb_cmd_show = (f"OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "
                   f"RECBOLE_PYTHON benchmarks/recbole_sasrec_runner.py {args.minutes:g} SPLIT.json "
                   f"../shared/peers/recbole/base.yaml ../shared/peers/recbole/sasrec_len50.yaml EXTRA.yaml")

    # ---- markdown
    L = []
    L.append("## SASRec: crbr vs RecBole 1.2.1 on MovieLens-100K, side by side (one run, same machine)\n")
    L.append(f"Run {time.strftime('%Y-%m-%d %H:%M', time.localtime(t_launch))}, produced by "
             f"`{invocation}`.\n")
    L.append(f"- **Dataset**: MovieLens-100K `u.data`, all 100,000 ratings as interactions (no rating filter, no "
             f"k-core), 943 users, {crsplit['n_items']} items. RecBole reads its bundled copy "
             f"`recbole/dataset_example/ml-100k/ml-100k.inter` (for the dataset name `ml-100k` RecBole 1.2.1 ignores "
             f"`data_path`, `config/configurator.py` `_set_default_parameters`); that file is "
             f"{'byte-for-byte the same rows, in the same order, as' if same_as_bundled else 'NOT identical to'} "
             f"the `convert_ml100k.py` output of `../shared/data/ml-100k/u.data`.")
    L.append("- **Protocol**: leave-one-out (per user, events ordered by timestamp: last = test, second-to-last = "
             "validation, the rest = training), full ranking over the whole catalogue, history items **not masked** "
             "on either side (RecBole never masks for sequential models, see below; crbr `eval.mask_history=false`), "
             "one target per user, 943 evaluated users. Metrics HR@10 (= Recall@10 with one target) and NDCG@10.")
    L.append(f"- **Split check**: RecBole's actual validation/test rows (dumped after its `data_preparation`) vs crbr's "
             f"split: validation targets differ for {split_cmp['valid_target_differs']} users, test targets for "
             f"{split_cmp['test_target_differs']}, the 50-item test history window for "
             f"{split_cmp['test_history_window_differs']} (as a set: {split_cmp['test_history_window_differs_as_set']}). "
             f"Timestamp ties: {ties['test_tied']} users' test event and {ties['valid_tied']} users' validation event "
             f"share their timestamp with another event of the same user ({ties['test_or_valid_tied']} users either; "
             f"{ties['test_valid_same_ts']} have test and validation at the same second); both libraries break such "
             f"ties by file order (stable sorts), so the exact ties do not separate the splits. RecBole stores the "
             f"min-max-normalised timestamp as float32 (about 1 s resolution here): {ties['f32_collisions_events']} "
             f"adjacent event pairs with different seconds collide, which changes the test target of "
             f"{ties['f32_test_differs']} users, the validation target of {ties['f32_valid_differs']} and the last-52 "
             f"window of {ties['f32_window_differs']} (predicted from u.data; the dump above is the ground truth).")
    L.append(f"- **Settings (both)**: max length 50, hidden 64, 2 layers, 2 heads, FFN inner 256, GELU, dropout 0.5 "
             f"(hidden) / 0.5 (attention), N(0, 0.02) init, full-softmax CE loss, Adam lr 1e-3 betas (0.9, 0.999), no "
             f"weight decay, batch 256, early stopping on validation NDCG@10 (patience: RecBole 10, crbr "
             f"{cr_res['config']['train']['patience']} of its epochs), wall-clock cap "
             f"{args.minutes:g} min each. Seeds: crbr {cr_res['seed']}, RecBole {2020} (one seed each). "
             f"Precision: RecBole fp32; crbr {'bf16 autocast' if cr_res['config']['train'].get('bf16') else 'fp32'}"
             + (f" (crbr-only settings: {', '.join('`' + o + '`' for o in args.crbr_set)})" if args.crbr_set else "")
             + ".")
    L.append(f"- **Commands**: `{crbr_cmd_show}` and `{rb_cmd_show}` (RECBOLE_PYTHON = a Python with RecBole "
             f"{rb_version}; EXTRA.yaml = the RecBole SASRec defaults written "
             f"out, `stopping_step: 10`, `metric_decimal_place: 6`; `recbole_sasrec_runner.py` = "
             f"`../shared/peers/recbole/run_one.py` plus one-thread setup, per-epoch timing hook and split dump).")
    L.append(f"- **Machine**: {mach['cpu']}, {mach['cores']} cores, Linux {mach['kernel']}; crbr: Python "
             f"{mach['python']}, torch {torch.__version__}; RecBole {rb_version}, torch {rb_torch}. Both processes "
             f"started together and ran concurrently, 1 thread each (crbr `train.threads=1`; RecBole "
             f"`torch.set_num_threads(1)`, printed torch threads = {rb_threads}; OMP/MKL_NUM_THREADS=1 for both). "
             f"Load average at start {load_start}, at end {load_end}."
             + (f" Other jobs on the machine at launch: {'; '.join('`' + o + '`' for o in others)}." if others else "")
             + " Timings are noisy: after crbr finished, RecBole ran with one competitor fewer.")
    L.append("")
    L.append("| | crbr | RecBole 1.2.1 |")
    L.append("|---|---|---|")
    L.append(f"| test HR@10 | **{tests['crbr']['HR@10']:.4f}** | **{tests['recbole']['HR@10']:.4f}** |")
    L.append(f"| test NDCG@10 | **{tests['crbr']['NDCG@10']:.4f}** | **{tests['recbole']['NDCG@10']:.4f}** |")
    L.append(f"| test HR@20 / NDCG@20 | {tests['crbr']['HR@20']:.4f} / {tests['crbr']['NDCG@20']:.4f} | "
             f"{tests['recbole']['HR@20']:.4f} / {tests['recbole']['NDCG@20']:.4f} |")
    L.append(f"| best valid NDCG@10 (epoch) | {cr_best_row['valid_NDCG@10']:.4f} ({int(cr_best_row['epoch'])}) | "
             f"{rb_best:.4f} ({rb_first['epoch'] + 1}) |")
    L.append(f"| epochs run, stopped by | {len(cr_rows)}, {cr_stop} | {len(rb_rows)}, {rb_stop} |")
    L.append(f"| training examples per epoch | {crsplit['train_windows']:,} windows "
             f"({crsplit['train_targets_crbr_window']:,} next-item targets) | {rb_split['n_train_rows']:,} prefixes "
             f"(1 target each) |")
    L.append(f"| mean train s / epoch | {cr_s_epoch:.1f} | {rb_s_epoch:.1f} |")
    L.append(f"| training wall incl. validation (s) | {cr_rows[-1]['elapsed_s']:.0f} | "
             f"{rb_rows[-1]['wall_elapsed_s']:.0f} (log train+eval sum {rb_rows[-1]['cum_train_eval_s']:.0f}) |")
    L.append(f"| process wall (s), incl. data prep + test | {done['crbr']['wall_s']:.0f} | {done['recbole']['wall_s']:.0f} |")
    L.append(f"| peak RSS (MB, per process) | {done['crbr']['peak_rss_mb']:.0f} | {done['recbole']['peak_rss_mb']:.0f} |")
    L.append("")
    L.append("**Time to quality** (epoch numbers 1-based; times from the start of training, validation included):\n")
    L.append(f"- RecBole's best validation NDCG@10 = **{rb_best:.4f}**, first reached at epoch {rb_first['epoch'] + 1} "
             f"after **{t_rb_log:.0f} s** (sum of its logged per-epoch training + evaluation times; wall clock since "
             f"`fit()` started: {'n/a' if t_rb_wall is None else f'{t_rb_wall:.0f}'} s).")
    if cr_first:
        L.append(f"- crbr first reached validation NDCG@10 >= {rb_best:.4f} at epoch {int(cr_first['epoch'])} "
                 f"({cr_first['valid_NDCG@10']:.4f}) after **{t_cr:.0f} s** (`elapsed_s`, wall clock incl. validation).")
        L.append(f"- Ratio crbr / RecBole = **{ratio_log:.3f}** against RecBole's logged train+eval time "
                 f"({ratio_wall:.3f} against its wall clock). Bar: <= 0.5 -> "
                 f"**{'met' if bar_time else 'NOT met'}**.")
    else:
        L.append(f"- crbr never reached validation NDCG@10 >= {rb_best:.4f} (its best: "
                 f"{cr_best_row['valid_NDCG@10']:.4f} at epoch {int(cr_best_row['epoch'])}, "
                 f"{cr_best_row['elapsed_s']:.0f} s). Time bar **NOT met**.")
    if rb_for_cr_best is not None:
        L.append(f"- Conversely, crbr's best validation NDCG@10 ({cr_best_row['valid_NDCG@10']:.4f}, at "
                 f"{cr_best_row['elapsed_s']:.0f} s) was first matched by RecBole at epoch {rb_for_cr_best['epoch'] + 1} "
                 f"after {rb_for_cr_best['cum_train_eval_s']:.0f} s.")
    L.append(f"- Test bar (crbr HR@10 and NDCG@10 >= RecBole's on the same split): **{'met' if bar_quality else 'NOT met'}** "
             f"(HR@10 {tests['crbr']['HR@10']:.4f} vs {tests['recbole']['HR@10']:.4f}, NDCG@10 "
             f"{tests['crbr']['NDCG@10']:.4f} vs {tests['recbole']['NDCG@10']:.4f}).")
    L.append("")
    L.append("RecBole validation curve (epoch: cumulative train+eval s, valid NDCG@10): " + ", ".join(
        f"{r['epoch'] + 1}: {r['cum_train_eval_s']:.0f} s {r['valid_NDCG@10']:.4f}" for r in rb_rows) + ".")
    marks = sorted({int(x) for x in np.linspace(0, len(cr_rows) - 1, min(len(cr_rows), 12))})
    L.append("crbr validation curve (sampled; epoch: elapsed s, valid NDCG@10): " + ", ".join(
        f"{int(cr_rows[k]['epoch'])}: {cr_rows[k]['elapsed_s']:.0f} s {cr_rows[k]['valid_NDCG@10']:.4f}" for k in marks)
        + ". Full curves in the JSON.")
    L.append("")
    L.append("**Protocol facts (RecBole 1.2.1 source)**:\n")
    L.append("- History masking: for sequential models `FullSortEvalDataLoader` builds no history index "
             "(`recbole/data/dataloader/general_dataloader.py`: `is_sequential` branch of `__init__` and `collate_fn`, "
             "which returns `None` as `history_index`), and `Trainer._full_sort_batch_eval` "
             "(`recbole/trainer/trainer.py`) only sets `scores[:, 0] = -inf` (padding) and masks history only `if "
             "history_index is not None`. So SASRec is evaluated **without** masking already-seen items; crbr ran with "
             "`eval.mask_history=false` to match. (ML-100K has no repeated user-item pairs, so an unmasked model can "
             "only lose rank positions to already-seen items.)")
    L.append("- Tie order: `Interaction.sort` uses `np.argsort(key, kind=\"stable\")` per key "
             "(`recbole/data/interaction.py`), `SequentialDataset.data_augmentation` sorts by `[user_id, timestamp]` "
             "and `Dataset.build` sorts by `timestamp` for `order: TO`; `leave_one_out` then takes each user's last "
             "two rows. Equal timestamps therefore keep file order, as in crbr (stable sort on timestamp then line "
             "number). But the timestamp is a `float` field, min-max normalised (`normalize_all: True` in "
             "`recbole/properties/dataset/ml-100k.yaml`) and converted to float32 (`_dataframe_to_interaction`, "
             "`torch.FloatTensor`) before those sorts, so events under ~1 s apart can tie too (counted above).")
    L.append("")
    L.append("**Remaining differences**:\n")
    for d in DIFFERENCES:
        L.append(f"- {d}")
    md = "\n".join(L) + "\n"

    raw = {
        "args": vars(args), "machine": mach, "load_start": load_start, "load_end": load_end, "other_jobs": others,
        "recbole": {"version": rb_version, "torch": rb_torch, "threads": rb_threads, "fit_start_after_launch_s": rb_fit_start,
                    "process": done["recbole"], "result": rb_res, "epochs": rb_rows, "command": rb_cmd,
                    "extra_config": {**RECBOLE_EXTRA}, "train_rows": rb_split["n_train_rows"]},
        "crbr": {"torch": torch.__version__, "process": done["crbr"], "results": cr_res, "epochs": cr_rows, "command": cr_cmd},
        "tests": tests,
        "time_to_quality": {"recbole_best_valid_ndcg10": rb_best, "recbole_first_epoch": rb_first["epoch"] + 1,
                            "recbole_time_log_s": t_rb_log, "recbole_time_wall_s": t_rb_wall,
                            "crbr_first_epoch": int(cr_first["epoch"]) if cr_first else None, "crbr_time_s": t_cr,
                            "ratio_vs_log": ratio_log, "ratio_vs_wall": ratio_wall, "bar_time_met": bar_time,
                            "bar_time_met_vs_wall": bar_time_wall, "bar_quality_met": bar_quality},
        "protocol": {"recbole_masks_history_for_sequential": False, "crbr_mask_history": False,
                     "recbole_tie_order": "stable (file order), on float32 min-max-normalised timestamps",
                     "crbr_tie_order": "stable (file order), on integer timestamps",
                     "ties": ties, "split_comparison": split_cmp, "recbole_reads_bundled_copy": True,
                     "bundled_copy_identical": same_as_bundled,
                     "train_targets_all_prefixes": crsplit["train_targets_all_prefixes"],
                     "train_targets_crbr_window": crsplit["train_targets_crbr_window"]},
        "differences": DIFFERENCES,
        "markdown": md,
    }
    Path(str(out_base) + ".json").write_text(json.dumps(raw, indent=1, default=float))
    print("\n" + md)
    write_report(out_base.parent, out_base.name, md)
    print(f"raw numbers: {relpath(str(out_base) + '.json')}; logs in {relpath(work)}")
    publish(records(raw, args, invocation, crbr_cmd_show, rb_cmd_show, crbr_dir), args)
    return 0


def records(raw: dict, args, invocation: str, crbr_cmd: str, rb_cmd: str, crbr_dir: Path) -> list:
    """The crbr record (from its results.json) and the RecBole record, with time to quality."""
    from crbr.results import Machine, Protocol, ResultRecord, record_from_results_json

    ttq, tests, rb = raw["time_to_quality"], raw["tests"], raw["recbole"]
    n_users = raw["protocol"]["split_comparison"]["test_users_crbr"]
    protocol = Protocol(
        line="leave-one-out (events ordered by timestamp, stable ties), full ranking over the whole catalogue, history "
             f"not masked (RecBole never masks for sequential models), one target per user, {n_users} users",
        split="leave_one_out", full_ranking=True, history_masked=False, n_users=n_users)
    cr = record_from_results_json(crbr_dir / "results.json", "recbole_side_by_side", crbr_cmd,
                                  variant=with_tag("", args.tag), root=ROOT)
    cr.protocol = protocol
    cr.metrics = {k: float(v) for k, v in tests["crbr"].items()} | {
        k: v for k, v in cr.metrics.items() if k.startswith("valid/")}
    cr.timings = {"seconds_per_epoch": round(float(np.mean([r["train_s"] for r in raw["crbr"]["epochs"]])), 1),
                  "process_wall_s": round(raw["crbr"]["process"]["wall_s"]),
                  "peak_rss_mb": round(raw["crbr"]["process"]["peak_rss_mb"])}
    if ttq["crbr_time_s"] is not None:
        cr.timings["time_to_recbole_best_valid_s"] = round(ttq["crbr_time_s"])
        cr.timings["recbole_time_to_best_valid_s"] = round(ttq["recbole_time_log_s"])
        cr.timings["time_ratio_to_recbole"] = round(ttq["ratio_vs_log"], 3)
    cr.notes = (f"Run by `{invocation}` beside RecBole {rb['version']} (both 1 thread, concurrently, "
                f"{args.minutes:g}-minute cap). Time bar (crbr reaches RecBole's best validation NDCG@10 in <= 0.5 of "
                f"its time): {'met' if ttq['bar_time_met'] else 'not met'}; test bar (crbr HR@10 and NDCG@10 >= "
                f"RecBole's): {'met' if ttq['bar_quality_met'] else 'not met'}.")
    rb_rows = rb["epochs"]
    rec = ResultRecord(
        suite="recbole_side_by_side", dataset="ml-100k", model="recbole_sasrec", protocol=protocol,
        config={"extra_config": rb["extra_config"], "configs": ["base.yaml", "sasrec_len50.yaml", "EXTRA.yaml"]},
        command=rb_cmd, code_version=code_version(),
        machine=Machine(cpu=raw["machine"]["cpu"], cores=raw["machine"]["cores"], threads=rb["threads"],
                        software=f"Python {raw['machine']['python']}, torch {rb['torch']}, RecBole {rb['version']}"),
        seeds=[int(RECBOLE_EXTRA.get("seed", 2020))],  # RecBole's default seed unless EXTRA.yaml sets one
        metrics={k: float(v) for k, v in tests["recbole"].items()} | {"valid/NDCG@10": ttq["recbole_best_valid_ndcg10"]},
        timings={"seconds_per_epoch": round(float(np.mean([r["train_s"] for r in rb_rows if r["train_s"] is not None])), 1),
                 "time_to_best_valid_s": round(ttq["recbole_time_log_s"]), "epochs_run": len(rb_rows),
                 "process_wall_s": round(rb["process"]["wall_s"]), "peak_rss_mb": round(rb["process"]["peak_rss_mb"])},
        date=cr.date, notes=(f"Run by `{invocation}` beside crbr. RECBOLE_PYTHON = a Python with RecBole "
                             f"{rb['version']}; EXTRA.yaml = RecBole's SASRec defaults written out (stopping_step: 10, "
                             "metric_decimal_place: 6)."))
    return [cr, rec]


DIFFERENCES = [
    "Training examples: RecBole trains on every prefix of every training sequence (one next-item target per "
    "row, ~97k rows = ~380 steps per epoch); crbr uses the windows of its config (`train.windows`, "
    "`train.window_stride`): with `all` / stride 10 every training event is a target once per epoch with at "
    "least 40 events of context (~10 steps per epoch), with `last` only each user's newest 50 events.",
    "Early stopping: both count patience in their own epochs (RecBole 10; crbr `train.patience` of the config), "
    "which are not the same amount of training.",
    "Layout: both post-LN with LayerNorm + dropout on the item+position embedding sum, no dropout inside the "
    "FFN, LayerNorm eps 1e-12 (crbr `model.norm=post model.ffn_dropout=0 model.ln_eps=1e-12`).",
    "Positions: RecBole right-pads and counts positions from the oldest event in the window; crbr left-pads "
    "and the newest event always gets the last position embedding.",
    "CE loss: RecBole's softmax includes the padding item 0 as a class (logits over all 1683 rows); crbr's "
    "excludes it (1682 real items). RecBole's init also overwrites the zero padding embedding with N(0, 0.02); "
    "crbr keeps it zero.",
    "Attention masking: RecBole adds -10000 to masked logits; crbr uses a boolean mask (-inf). Q/K/V are "
    "separate linears in RecBole and one fused linear in crbr (same parameter count and init).",
    "Ranking ties: crbr breaks equal scores by lower item id; RecBole uses torch.topk order. Immaterial for "
    "float scores.",
    "Seeds differ (crbr 42, RecBole 2020); one run each, so part of any gap is seed noise.",
]


if __name__ == "__main__":
    sys.exit(main())
