"""Benchmark results as records: one JSON file per result, and RESULTS.md generated from them.

A `ResultRecord` says what was measured (suite, dataset, model, variant), how (protocol, config,
command, seeds), where (machine, code version, date) and what came out (metrics, timings). The
records of a project live one per file in a folder (benchmarks/results/); `write_record` names
the file after suite, dataset, model and variant, so a rerun replaces its own record.

    python -m crbr.results render --records benchmarks/results --out RESULTS.md
    python -m crbr.results render --records benchmarks/results --check RESULTS.md

The module needs only the standard library (torch is asked for its version and devices only when
it is already imported).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1

# Suites in the order RESULTS.md shows them, with their section titles; other suites follow,
# alphabetically, under their own names.
SUITES = {
    "sasrec": "SASRec (`crbr train`, `python -m benchmarks sasrec`)",
    "recbole_side_by_side": "SASRec against RecBole 1.2.1 (`python -m benchmarks recbole_side_by_side`)",
    "towers": "User towers: Q-Former, PinnerFormer, Set-Transformer retriever (`python -m benchmarks towers`)",
    "crbr": "CRBR against the Set-Transformer retriever and SASRec (`python -m benchmarks crbr`)",
    "residual": "Residual-enhancement mixture (`python -m benchmarks residual`)",
    "quickstart": "Quickstart pipeline (`crbr quickstart`)",
    "ann": "ANN indexes against exact search (`python -m benchmarks ann`)",
    "eval_memory": "Evaluation memory (`python -m benchmarks eval_memory`)",
    "qformer_efficiency": "Q-Former against self-attention: time and memory (`python -m benchmarks qformer_efficiency`)",
    "semantic_ids": "Semantic-ID tokenizers and their health (`python -m benchmarks semantic_ids`)",
    "generative": "Generative retrieval with actions and controls (`python -m benchmarks generative`)",
    "serve": "The retrieval service under load (`python -m benchmarks serve`)",
}

# Readable names of models in the rendered tables, for records whose model name needs one (a record
# keeps the name the run measured under; names with the same label share a headline row).
MODEL_LABELS = {
    "set_transformer": "Set-Transformer retriever",
    "two_tower": "Set-Transformer retriever",  # the registry's old name of set_transformer
}


def model_label(name: str) -> str:
    """The name a rendered table shows for the model `name` (MODEL_LABELS, else the name itself)."""
    return MODEL_LABELS.get(name, name)

HEADLINE_METRICS = ("HR@10", "NDCG@10", "Recall@50")


class RecordError(ValueError):
    """A record that does not follow the schema; the message names the file and the field."""


# ----------------------------------------------------------------------------------- schema
@dataclass(kw_only=True)
class Protocol:
    """How the numbers were obtained.

    line:           the evaluator's protocol line (`EvalResult.protocol`), or for a benchmark
                    that ranks nothing per user its own one-line description
    split:          "leave_one_out", "leave_10_out", "temporal", ...; None when no split applies
    full_ranking:   every target ranked against the whole catalogue (never sampled negatives)
    history_masked: the user's visible history items were excluded from the ranking
    n_users:        evaluated users
    """

    line: str
    split: str | None = None
    full_ranking: bool | None = None
    history_masked: bool | None = None
    n_users: int | None = None

    @classmethod
    def from_line(cls, line: str) -> Protocol:
        """Parse the evaluator's line ("full ranking over N items, SPLIT, targets: ..., history
        masked: yes, ..., users: N") into the structured fields."""
        parts = [p.strip() for p in line.split(", ")]
        full = parts[0].startswith("full ranking")
        split = next((p for p in parts[1:] if ":" not in p and " " not in p), None)
        masked = re.search(r"history masked: (yes|no)", line)
        users = re.search(r"(?:^|, )users: ([\d,]+)", line)
        return cls(line=line, split=split, full_ranking=full,
                   history_masked=None if masked is None else masked.group(1) == "yes",
                   n_users=None if users is None else int(users.group(1).replace(",", "")))


@dataclass(kw_only=True)
class Machine:
    """Where it ran: CPU model, the machine's cores, the threads the run used, the GPU (None =
    none) and the software that matters for the numbers (Python, torch)."""

    cpu: str | None
    cores: int | None = None
    threads: int | None = None
    gpu: str | None = None
    software: str = ""

    def describe(self) -> str:
        parts = [self.cpu or "CPU not recorded"]
        if self.cores:
            parts.append(f"{self.cores} cores")
        if self.threads:
            parts.append(f"{self.threads} thread{'s' if self.threads != 1 else ''}")
        parts.append(self.gpu or "no GPU")
        return ", ".join(parts) + (f"; {self.software}" if self.software else "")


@dataclass(kw_only=True)
class ResultRecord:
    """One benchmark result (schema version 1).

    suite, dataset, model, variant: what was measured; variant names a setting other than the
                    suite's main one of that model ("" = the main one). These four name the file.
    protocol:       `Protocol`
    config:         the run's settings (a full experiment config where one exists)
    command:        the command line that produced the result; `{seed}` stands for each seed
    code_version:   `git describe` of the code that ran ("unknown" if not recorded)
    machine:        `Machine`
    seeds:          the seeds run
    metrics:        name -> value; test metrics unless a prefix names another evaluation ("valid/"
                    = validation, "unmasked/" = the same checkpoint with history items ranked);
                    with several seeds, the mean over them (a metric may have per-seed values only)
    metrics_std:    name -> sample standard deviation over the seeds (names in metrics)
    metrics_per_seed: name -> one value per seed, in the order of `seeds`
    timings:        name -> value: seconds, epochs, peak memory of the run
    date:           ISO date (or date and time) of the run
    headline:       this record is its (dataset, model) row of the headline table
    notes:          anything a reader needs to read the numbers right
    backfilled:     reconstructed from the research log rather than written by the run
    source:         where a backfilled record's numbers are written (the log's section heading)
    """

    suite: str
    dataset: str
    model: str
    variant: str = ""
    protocol: Protocol
    config: dict[str, Any] = field(default_factory=dict)
    command: str
    code_version: str = "unknown"
    machine: Machine
    seeds: list[int] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_std: dict[str, float] = field(default_factory=dict)
    metrics_per_seed: dict[str, list[float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    date: str
    headline: bool = False
    notes: str = ""
    backfilled: bool = False
    source: str = ""
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def record_filename(record: ResultRecord) -> str:
    """`suite__dataset__model[__variant].json`, each part lower-cased with characters other than
    letters, digits, '.', '_', '+' and '-' replaced by '-'."""
    parts = (record.suite, record.dataset, record.model, record.variant)
    return "__".join(_slug(p) for p in parts if p) + ".json"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._+-]+", "-", text.lower()).strip("-") or "-"


# ------------------------------------------------------------------------------- validation
def record_from_dict(d: Any, where: str = "record") -> ResultRecord:
    """Build a record from its JSON form, checking every field; errors name `where` and the field."""
    _check_fields(d, ResultRecord, where, "")
    schema = d.get("schema", SCHEMA_VERSION)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema > SCHEMA_VERSION:
        _fail(where, "schema", f"version {schema!r} is not one this crbr reads (<= {SCHEMA_VERSION})")
    for name in ("suite", "dataset", "model", "command", "date", "code_version"):
        _text(d, name, where, required=True)
    for name in ("variant", "notes", "source"):
        _text(d, name, where)
    _date(d.get("date"), where)
    protocol = _protocol(d.get("protocol"), where)
    machine = _machine(d.get("machine"), where)
    seeds = _int_list(d.get("seeds", []), where, "seeds")
    metrics = _numbers(d.get("metrics", {}), where, "metrics")
    std = _numbers(d.get("metrics_std", {}), where, "metrics_std")
    for k in std:
        if k not in metrics:
            _fail(where, f"metrics_std.{k}", "has no mean in metrics")
    per_seed = _per_seed(d.get("metrics_per_seed", {}), len(seeds), where)
    for name in ("headline", "backfilled"):
        if not isinstance(d.get(name, False), bool):
            _fail(where, name, "must be true or false")
    if d.get("backfilled") and not d.get("source"):
        _fail(where, "source", "a backfilled record must name its source")
    if not isinstance(d.get("config", {}), dict):
        _fail(where, "config", "must be an object")
    return ResultRecord(
        suite=d["suite"], dataset=d["dataset"], model=d["model"], variant=d.get("variant", ""),
        protocol=protocol, config=d.get("config", {}), command=d["command"],
        code_version=d["code_version"], machine=machine, seeds=seeds, metrics=metrics,
        metrics_std=std, metrics_per_seed=per_seed, timings=_numbers(d.get("timings", {}), where, "timings"),
        date=d["date"], headline=d.get("headline", False), notes=d.get("notes", ""),
        backfilled=d.get("backfilled", False), source=d.get("source", ""), schema=schema)


def _fail(where: str, field_name: str, problem: str):
    raise RecordError(f"{where}: field '{field_name}': {problem}")


def _check_fields(d: Any, cls: type, where: str, prefix: str) -> None:
    """`d` is an object with every required field of `cls` and no unknown one."""
    if not isinstance(d, dict):
        _fail(where, prefix.rstrip(".") or "(record)", "must be an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in d:
        if k not in fields:
            _fail(where, prefix + k, f"unknown field (known: {', '.join(fields)})")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in d:
            _fail(where, prefix + name, "missing")


def _text(d: dict, name: str, where: str, required: bool = False) -> None:
    v = d.get(name, "")
    if not isinstance(v, str) or (required and not v.strip()):
        _fail(where, name, "must be a non-empty string" if required else "must be a string")


def _date(v: str, where: str) -> None:
    try:
        dt.datetime.fromisoformat(v)
    except ValueError:
        _fail(where, "date", f"{v!r} is not an ISO date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)")


def _optional(v: Any, types: tuple[type, ...], where: str, name: str) -> Any:
    if v is not None and (not isinstance(v, types) or isinstance(v, bool) and bool not in types):
        _fail(where, name, f"must be {' or '.join(t.__name__ for t in types)} or null")
    return v


def _protocol(d: Any, where: str) -> Protocol:
    _check_fields(d, Protocol, where, "protocol.")
    if not isinstance(d["line"], str) or not d["line"].strip():
        _fail(where, "protocol.line", "must be a non-empty string")
    return Protocol(
        line=d["line"], split=_optional(d.get("split"), (str,), where, "protocol.split"),
        full_ranking=_optional(d.get("full_ranking"), (bool,), where, "protocol.full_ranking"),
        history_masked=_optional(d.get("history_masked"), (bool,), where, "protocol.history_masked"),
        n_users=_optional(d.get("n_users"), (int,), where, "protocol.n_users"))


def _machine(d: Any, where: str) -> Machine:
    _check_fields(d, Machine, where, "machine.")
    software = d.get("software", "")
    if not isinstance(software, str):
        _fail(where, "machine.software", "must be a string")
    return Machine(cpu=_optional(d.get("cpu"), (str,), where, "machine.cpu"),
                   cores=_optional(d.get("cores"), (int,), where, "machine.cores"),
                   threads=_optional(d.get("threads"), (int,), where, "machine.threads"),
                   gpu=_optional(d.get("gpu"), (str,), where, "machine.gpu"), software=software)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(d: Any, where: str, name: str) -> dict[str, float]:
    if not isinstance(d, dict):
        _fail(where, name, "must be an object of name -> number")
    for k, v in d.items():
        if not _is_number(v):
            _fail(where, f"{name}.{k}", f"{v!r} is not a finite number")
    return dict(d)


def _int_list(v: Any, where: str, name: str) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        _fail(where, name, "must be a list of integers")
    return list(v)


def _per_seed(d: Any, n_seeds: int, where: str) -> dict[str, list[float]]:
    if not isinstance(d, dict):
        _fail(where, "metrics_per_seed", "must be an object of name -> list of numbers")
    for k, v in d.items():
        if not isinstance(v, list) or not all(_is_number(x) for x in v):
            _fail(where, f"metrics_per_seed.{k}", "must be a list of finite numbers")
        if len(v) != n_seeds:
            _fail(where, f"metrics_per_seed.{k}", f"has {len(v)} values for {n_seeds} seeds")
    return {k: list(v) for k, v in d.items()}


# ------------------------------------------------------------------------------ files
def write_record(record: ResultRecord, directory: str | os.PathLike) -> Path:
    """Write `record` to `directory/record_filename(record)` atomically (a temporary file in the
    same folder, then os.replace), after checking it against the schema. Returns the path."""
    directory = Path(directory)
    path = directory / record_filename(record)
    text = json.dumps(record.to_dict(), indent=1, ensure_ascii=False) + "\n"
    record_from_dict(json.loads(text), str(path))
    _atomic_write(path, text)
    return path


def _atomic_write(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_records(directory: str | os.PathLike) -> list[ResultRecord]:
    """Every `*.json` record of `directory`, checked, in file-name order. A file that is not valid
    JSON, breaks the schema or is not named after its record is a RecordError naming it."""
    records = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        record = record_from_dict(data, str(path))
        if path.name != record_filename(record):
            raise RecordError(f"{path}: file name does not match the record's suite/dataset/model/variant "
                              f"(expected {record_filename(record)})")
        records.append(record)
    return records


# ----------------------------------------------------------------------- from a training run
def machine_info(threads: int | None = None) -> Machine:
    """This machine: CPU model (/proc/cpuinfo), core count, GPU (torch's device name when torch
    is imported and sees CUDA, else the first `nvidia-smi` name, else None), Python and torch
    versions. `threads` = the threads the run used (default: torch's setting when imported)."""
    torch = sys.modules.get("torch")
    if threads is None and torch is not None:
        threads = torch.get_num_threads()
    try:
        torch_version = f", torch {metadata.version('torch')}"
    except metadata.PackageNotFoundError:
        torch_version = ""
    return Machine(cpu=_cpu_model(), cores=os.cpu_count(), threads=threads, gpu=_gpu_name(torch),
                   software=f"Python {platform.python_version()}{torch_version}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name(torch: Any) -> str | None:
    if torch is not None:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None


def portable(value: Any, root: str | os.PathLike | None = None) -> Any:
    """`value` (a string, or lists / dicts of them) with absolute paths made machine-independent:
    relative to `root` (default: the current directory) when under it, else "…/" + their last
    two components."""
    root = Path(root or os.getcwd()).resolve()
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, root) for v in value]
    if not isinstance(value, str):
        return value

    def fix(m: re.Match) -> str:
        p = Path(m.group(0))
        if p.is_relative_to(root):
            return str(p.relative_to(root)) or "."
        return "…/" + "/".join(p.parts[-2:])

    return re.sub(r"(?<![\w.~/:-])/[^\s'\"=,;:]+", fix, value)


def record_from_results_json(path: str | os.PathLike, suite: str, command: str, *, variant: str = "",
                             notes: str = "", root: str | os.PathLike | None = None) -> ResultRecord:
    """The record of one training run from its `results.json` (`Trainer.results_dict`): test
    metrics (+ tail HR@10 and the validation value of the monitored metric), protocol, seed,
    timings, config and code version; machine = this machine (call it where the run ran); date =
    when results.json was written. Absolute paths in the config and the command are made
    portable (`portable`, relative to `root`)."""
    path = Path(path)
    res = json.loads(path.read_text(encoding="utf-8"))
    if not res.get("test") or not res.get("protocol"):
        raise RecordError(f"{path}: field 'test': the run has no test result")
    config = res.get("config") or {}
    train = config.get("train", {})
    monitor = train.get("monitor", "NDCG@10")
    metrics = dict(res["test"])
    if res.get("test_bucket_hr10"):
        metrics["tail_HR@10"] = res["test_bucket_hr10"][-1]
    if isinstance(res.get("valid"), dict) and monitor in res["valid"]:
        metrics[f"valid/{monitor}"] = res["valid"][monitor]
    metrics = {k: float(v) for k, v in metrics.items() if _is_number(v)}
    timings = {k: res[k] for k in ("seconds_per_epoch", "train_seconds", "peak_rss_mb", "epochs_run", "best_epoch")
               if _is_number(res.get(k))}
    threads = train.get("threads") if isinstance(train.get("threads"), int) else None
    if threads and res.get("world_size", 1) > 1:
        threads *= res["world_size"]
    written = dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="minutes")
    return ResultRecord(
        suite=suite, dataset=str(res.get("dataset") or config.get("data", {}).get("name") or "unknown"),
        model=str(res.get("model") or "unknown"), variant=variant, protocol=Protocol.from_line(res["protocol"]),
        config=portable(config, root), command=portable(command, root),
        code_version=str(res.get("code_version") or "unknown"), machine=machine_info(threads),
        seeds=[int(res["seed"])] if isinstance(res.get("seed"), int) else [], metrics=metrics,
        timings=timings, date=written, notes=notes)


# ------------------------------------------------------------------------------- rendering
def headline_records(records: Iterable[ResultRecord]) -> list[ResultRecord]:
    """One record per (dataset, model) among those with a ranking metric (HR@10, NDCG@10,
    Recall@50 or HR@50): the one marked `headline` (two marked for one pair is an error), else
    the most recent (then the one with more seeds, then the first by file name). Models with the
    same label (`model_label`, e.g. a model's old and new registry names) count as one. Sorted by
    dataset, then model."""
    by_pair: dict[tuple[str, str], list[ResultRecord]] = {}
    for r in sorted(records, key=record_filename):
        if any(m in r.metrics or m in r.metrics_per_seed for m in (*HEADLINE_METRICS, "HR@50")):
            by_pair.setdefault((r.dataset, model_label(r.model)), []).append(r)
    rows = []
    for (dataset, model), rs in by_pair.items():
        marked = [r for r in rs if r.headline]
        if len(marked) > 1:
            names = ", ".join(record_filename(r) for r in marked)
            raise RecordError(f"{names}: field 'headline': {len(marked)} records marked for ({dataset}, {model})")
        rows.append(marked[0] if marked else max(rs, key=lambda r: (r.date, len(r.seeds), -rs.index(r))))
    return sorted(rows, key=lambda r: (r.dataset.lower(), model_label(r.model).lower()))


def render_results_md(records: Iterable[ResultRecord], records_link: str = "results") -> str:
    """RESULTS.md from the records: a headline table (one row per dataset and model), then one
    section per suite with its records in a table and, for each, protocol, command, machine and
    source. Deterministic: the same records give the same text. `records_link` is the records
    folder relative to the file's location (for links to the JSON files)."""
    records = sorted(records, key=record_filename)
    order = {s: i for i, s in enumerate(SUITES)}
    suites = sorted({r.suite for r in records}, key=lambda s: (order.get(s, len(order)), s))
    out = [
        "# Benchmark results",
        "",
        f"Generated by `python -m crbr.results render` from the {len(records)} records in "
        f"[`{records_link}/`]({records_link}/); edit the records, not this file.",
        "Ranking metrics are test metrics of the best-validation checkpoint under full ranking over the whole "
        "catalogue (no sampled negatives), ties broken by lower item id; a value with ± is the mean ± sample "
        "standard deviation over the seeds. Records marked *backfilled* were reconstructed from the research log "
        "(docs/research-log.md, the section named as their source).",
        "",
        "## Headline",
        "",
        *_headline_table(records),
    ]
    for suite in suites:
        section = _suite_section([r for r in records if r.suite == suite], records_link)
        out += ["", f"## {SUITES.get(suite, suite)}", "", *section]
    return "\n".join(out) + "\n"


def _headline_table(records: list[ResultRecord]) -> list[str]:
    rows = headline_records(records)
    if not rows:
        return ["No records with ranking metrics yet."]
    lines = [
        "What each model reaches on each dataset: one row per (dataset, model), the record marked as its "
        "headline, else the most recent. Recall@50 shows HR@50 where only that was recorded and each user has "
        "one target (then they are equal). The record link gives the command, protocol and machine.",
        "",
        "| dataset | model | HR@10 | NDCG@10 | Recall@50 | history | seeds | record |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        masked = {True: "masked", False: "not masked", None: "–"}[r.protocol.history_masked]
        variant = f" ({r.variant})" if r.variant else ""
        lines.append(f"| {r.dataset} | {model_label(r.model)}{variant} | {_metric(r, 'HR@10')} | {_metric(r, 'NDCG@10')} | "
                     f"{_recall50(r)} | {masked} | {_seeds(r.seeds)} | [{r.suite}](#{_anchor(r)}) |")
    return lines


def _recall50(r: ResultRecord) -> str:
    if "Recall@50" in r.metrics or "Recall@50" in r.metrics_per_seed or r.protocol.split != "leave_one_out":
        return _metric(r, "Recall@50")
    return _metric(r, "HR@50")


def _suite_section(records: list[ResultRecord], records_link: str) -> list[str]:
    names = [m for m in HEADLINE_METRICS if any(m in r.metrics or m in r.metrics_per_seed for r in records)]
    for r in records:
        names += [m for m in (*r.metrics, *r.metrics_per_seed) if m not in names]
    lines = [
        "| dataset | model | variant | " + " | ".join(names) + " | seeds | date |",
        "|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for r in records:
        cells = [r.dataset, f"[{model_label(r.model)}](#{_anchor(r)})", r.variant or "–", *(_metric(r, m) for m in names),
                 _seeds(r.seeds), r.date]
        lines.append("| " + " | ".join(cells) + " |")
    for r in records:
        lines += ["", *_details(r, records_link)]
    return lines


def _details(r: ResultRecord, records_link: str) -> list[str]:
    tags = [t for t in ("headline" if r.headline else "", "backfilled" if r.backfilled else "") if t]
    lines = [
        f'<a id="{_anchor(r)}"></a>**{r.dataset} / {model_label(r.model)}' + (f" ({r.variant})" if r.variant else "") + "**"
        + (f" ({', '.join(tags)})" if tags else "")
        + f" · [{record_filename(r)}]({records_link}/{record_filename(r)})",
        "",
        *([f"- model: `{r.model}`"] if model_label(r.model) != r.model else []),
        f"- protocol: {r.protocol.line}",
        f"- command: `{r.command}`",
        f"- machine: {r.machine.describe()}; code {r.code_version}; {r.date}",
    ]
    if r.timings:
        lines.append("- timings: " + ", ".join(f"{k} {_plain(v)}" for k, v in r.timings.items()))
    if r.notes:
        lines.append(f"- notes: {r.notes}")
    if r.source:
        lines.append(f"- source: {r.source}")
    return lines


def _anchor(r: ResultRecord) -> str:
    return record_filename(r).removesuffix(".json").replace("+", "-")


def _metric(r: ResultRecord, name: str) -> str:
    if name in r.metrics:
        text = _number(r.metrics[name])
        return text + (f" ± {_number(r.metrics_std[name])}" if name in r.metrics_std else "")
    if name in r.metrics_per_seed:
        return " / ".join(_number(v) for v in r.metrics_per_seed[name]) + " (per seed)"
    return "–"


def _number(v: float) -> str:
    """A metric: four decimals up to 1 (rates, ratios), else as few digits as it needs."""
    return f"{v:.4f}" if abs(v) <= 1 else _plain(v)


def _plain(v: float) -> str:
    if float(v).is_integer():
        return f"{int(v):,}" if abs(v) >= 10_000 else str(int(v))
    return f"{v:.6g}"


def _seeds(seeds: list[int]) -> str:
    if not seeds:
        return "–"
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


# ------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m crbr.results", description="Benchmark result records.")
    sub = ap.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("render", help="write RESULTS.md from the records, or check that a file is up to date")
    rp.add_argument("--records", default="benchmarks/results", help="folder of *.json records")
    target = rp.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="write the generated file here")
    target.add_argument("--check", help="exit 1 if this file differs from what would be generated")
    args = ap.parse_args(argv)
    try:
        records = load_records(args.records)
    except RecordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dest = Path(args.out or args.check)
    link = Path(os.path.relpath(Path(args.records).resolve(), dest.resolve().parent)).as_posix()
    text = render_results_md(records, records_link=link)
    if args.check:
        if not dest.exists() or dest.read_text(encoding="utf-8") != text:
            print(f"{dest} is stale: run python -m crbr.results render --records {args.records} --out {dest}",
                  file=sys.stderr)
            return 1
        print(f"{dest} is up to date ({len(records)} records)")
        return 0
    _atomic_write(dest, text)
    print(f"wrote {dest} ({len(records)} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
