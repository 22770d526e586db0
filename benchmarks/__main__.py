"""python -m benchmarks [--list] SUITE [options]: run one benchmark suite or tool."""

from __future__ import annotations

import importlib
import sys

from . import ENTRIES, HEADLINE, SUITES


def listing() -> str:
    width = max(len(e.name) for e in ENTRIES)
    out = ["Suites (each writes its records into benchmarks/results/ and regenerates benchmarks/RESULTS.md):"]
    out += [f"  {e.name:<{width}}  {e.description}" for e in ENTRIES if e.kind == "suite"]
    out += ["", "Tools (analyse finished runs; no records):"]
    out += [f"  {e.name:<{width}}  {e.description}" for e in ENTRIES if e.kind == "tool"]
    out += ["", f"`make bench` runs: {' '.join(HEADLINE)}.",
            "Options of one: python -m benchmarks SUITE --help. Investigations: research/ (python -m research.NAME)."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m benchmarks [--list] SUITE [options]\n")
        print(listing())
        return 0 if argv else 2
    if argv[0] == "--list":
        print(listing())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUITES:
        print(f"unknown suite {name!r}\n\n{listing()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{SUITES[name].module}")
    rc = module.main(rest)
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
