"""Runs of `crbr train` side by side: the test metrics of each run's best epoch, and the
validation metric at equal wall-clock.

usage: python -m benchmarks compare_runs LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--at-minutes 15 30]
           [--metric NDCG@10]

The logic is `crbr.analysis.compare_runs_main` (see there); nothing is trained and no record is
written, the markdown table goes to stdout.
"""

from __future__ import annotations

import sys

from crbr.analysis import compare_runs_main


def main(argv: list[str] | None = None) -> int:
    compare_runs_main(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
