"""One-off investigations: questions a benchmark raised, answered once on trained checkpoints or
on the synthetic world's ground truth. Each runs from the repository root as

    python -m research.NAME --help

and prints its table, writes it to runs/research/NAME.md (--report) and, with --log FILE,
replaces its own marked section of that file (the research log is docs/research-log.md). They
write no benchmark records: the reproducible measurements are the suites of `python -m benchmarks`.

  crbr_beams          where CRBR's recall goes: beam width, merge rule, quantized query
  crbr_variants       CRBR inference variants: beam branching x per-path quota
  item_side_ceiling   how far P linear queries over a given item side can get on the synthetic world
  synthetic_oracle    the Bayes-optimal retriever on the synthetic world, and history-only references
  residual_branch     what the expert branch of a trained residual mixture adds to its scores
  window_offsets      how much of history masking lies in the model's input window
"""

from __future__ import annotations

from pathlib import Path

REPORTS = Path(__file__).resolve().parents[1] / "runs" / "research"


def add_report_args(ap, name: str) -> None:
    """--report (default runs/research/NAME.md; '' = none) and --log (a markdown file whose
    NAME section this run replaces, e.g. docs/research-log.md; default none)."""
    ap.add_argument("--report", default=str(REPORTS / f"{name}.md"),
                    help="write the report here ('' = do not; default: %(default)s)")
    ap.add_argument("--log", default="", help="also replace this run's marked section of this markdown file "
                                              "(e.g. docs/research-log.md)")


def publish_report(args, name: str, text: str, title: str, section: str | None = None) -> None:
    """Write `text` to args.report and, with args.log, into its `section` (default: `name`) there."""
    from benchmarks._common import relpath, write_section

    if args.report:
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.rstrip("\n") + "\n")
        print(f"report: {relpath(path)}", flush=True)
    if args.log:
        write_section(Path(args.log), section or name, text, title)
        print(f"section {section or name} of {args.log} replaced", flush=True)
