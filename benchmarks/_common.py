"""What the benchmark suites share: paths and defaults, the command-line options every suite
has, the machine line of the reports, and writing result records (`publish`)."""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import statistics
import subprocess
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]  # the repository
RECORDS = ROOT / "benchmarks" / "results"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
RUNS = ROOT / "runs" / "bench"  # default parent of every suite's --out folder


# ------------------------------------------------------------------------------- machine
def machine() -> dict:
    """CPU model, core count, Python and kernel version of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def machine_line() -> str:
    m = machine()
    return f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, Linux {m['kernel']}"


_CODE: list[str] = []


def code_version() -> str:
    """`git describe --always --dirty` of the repository, taken once per process at the first call
    (call it when a run starts); "unknown" outside a git checkout."""
    if not _CODE:
        try:
            out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=10)
            _CODE.append(out.stdout.strip() or "unknown")
        except (OSError, subprocess.SubprocessError):
            _CODE.append("unknown")
    return _CODE[0]


def human(n: int) -> str:
    """A count as a dataset name part: 1000000 -> "1M", 100000 -> "100k", 1234 -> "1234"."""
    for div, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


# ------------------------------------------------------------------------------- options
def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of `python -m benchmarks NAME`, its help text = the module docstring."""
    return argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_output_args(ap: argparse.ArgumentParser, suite: str, records: bool = True) -> None:
    """--out (run folders and the report, default runs/bench/SUITE), and for suites that write
    records --records, --results-md and --tag."""
    ap.add_argument("--out", default=str(RUNS / suite), help="run folders and the markdown report (default: %(default)s)")
    if records:
        ap.add_argument("--records", default=str(RECORDS),
                        help="write this run's result records into this folder ('' = do not; default: %(default)s)")
        ap.add_argument("--results-md", default=str(RESULTS_MD),
                        help="then regenerate this file from the records folder ('' = do not; default: %(default)s)")
        ap.add_argument("--tag", default="", help="appended to the variant of every record of this run (a setting "
                                                  "other than the suite's default, e.g. cpu_15min), so the run gets "
                                                  "records of its own instead of replacing the default ones")


def add_data_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data-root", default=None,
                    help="folder of the real datasets (default: $CRBR_DATA, else ../shared/data)")


def data_root(value: str | None) -> Path:
    """The datasets folder: `value`, else crbr's default ($CRBR_DATA, else ../shared/data)."""
    if value:
        return Path(value).expanduser().resolve()
    from crbr.data.prepare import default_data_root

    return default_data_root().resolve()


def data_env(root: Path, threads: int | None = None) -> dict[str, str]:
    """The environment of a `crbr` subprocess: the data root as $CRBR_DATA and, with `threads`,
    the BLAS / OpenMP thread counts."""
    env = {**os.environ, "CRBR_DATA": str(root)}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def with_tag(variant: str, tag: str) -> str:
    """`variant` with the run's --tag appended ("_" between them)."""
    return "_".join(p for p in (variant, tag) if p)


def command_line(name: str, argv: list[str]) -> str:
    """`python -m benchmarks NAME ARGS` with absolute paths made relative to the repository (or
    shortened, `crbr.results.portable`), for reports and records."""
    from crbr.results import portable

    return portable(shlex.join(["python", "-m", "benchmarks", name, *argv]), ROOT)


def relpath(path: str | Path) -> str:
    """`path` relative to the repository when under it, else shortened (`crbr.results.portable`)."""
    from crbr.results import portable

    return portable(str(Path(path).resolve()), ROOT)


def write_report(out: str | Path, name: str, text: str) -> Path:
    """Write the human-readable report `text` to OUT/NAME.md (the folder is made) and return the path."""
    path = Path(out) / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
    print(f"report: {relpath(path)}", flush=True)
    return path


def write_section(path: Path, name: str, section: str, title: str | None = None) -> None:
    """Replace the text between `<!-- name:begin -->` and `<!-- name:end -->` in a markdown file
    (or append the block, under `title`, at the end), atomically; the file is re-read first so
    sections written by other scripts are kept."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    path = Path(path)
    text = path.read_text() if path.exists() else "# Results\n"
    block = f"{begin}\n{section}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + (f"## {title}\n\n" if title else "") + block + "\n"
    tmp = path.with_name(f"{path.name}.{name.replace(':', '_')}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------- records
def publish(records: Iterable, args: argparse.Namespace,
            replaces: Callable[[object], bool] | None = None) -> list[Path]:
    """Write `records` (crbr.results.ResultRecord) into args.records and regenerate
    args.results_md from that folder (either '' = skip). A record replaces the file of the same
    suite / dataset / model / variant and keeps its `headline` mark; `replaces(old)` = True also
    removes an existing record (e.g. one of the same index measured at other settings)."""
    from crbr.results import load_records, main as results_main, record_filename, write_record

    records = list(records)
    if not getattr(args, "records", "") or not records:
        return []
    folder = Path(args.records)
    old = {record_filename(r): r for r in (load_records(folder) if folder.is_dir() else [])}
    new_names = {record_filename(r) for r in records}
    if replaces is not None:
        for name, r in old.items():
            if name not in new_names and replaces(r):
                (folder / name).unlink()
                print(f"removed record {name} (replaced by this run)", flush=True)
    paths = []
    for r in records:
        prev = old.get(record_filename(r))
        if prev is not None and prev.headline:
            r.headline = True
        paths.append(write_record(r, folder))
        print(f"record: {relpath(paths[-1])}", flush=True)
    if getattr(args, "results_md", ""):
        results_main(["render", "--records", str(folder), "--out", str(args.results_md)])
    return paths


def combine_seeds(records: list, notes: str = ""):
    """One record from the single-seed records of the same run over several seeds: seeds in
    order, the mean of every metric all of them have (with the sample standard deviation and the
    per-seed values when there are several), mean timings, the latest date."""
    import copy

    if len(records) == 1:
        r = copy.deepcopy(records[0])
        r.notes = " ".join(p for p in (r.notes, notes) if p)
        return r
    records = sorted(records, key=lambda r: r.seeds[0] if r.seeds else 0)
    out = copy.deepcopy(records[0])
    out.seeds = [s for r in records for s in r.seeds]
    names = [k for k in records[0].metrics if all(k in r.metrics for r in records)]
    out.metrics = {k: statistics.mean(r.metrics[k] for r in records) for k in names}
    out.metrics_std = {k: statistics.stdev(r.metrics[k] for r in records) for k in names}
    out.metrics_per_seed = ({k: [r.metrics[k] for r in records] for k in names}
                            if len(out.seeds) == len(records) else {})
    tnames = [k for k in records[0].timings if all(k in r.timings for r in records)]
    out.timings = {k: statistics.mean(r.timings[k] for r in records) for k in tnames}
    out.date = max(r.date for r in records)
    out.command = re.sub(r"(train\.seed=)\d+", r"\1{seed}", records[0].command)
    out.notes = " ".join(p for p in (records[0].notes, notes) if p)
    return out
