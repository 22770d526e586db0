#!/usr/bin/env python
"""Independent check of an exported top-K file against the RAW dataset (does not import crbr).

usage: python benchmarks/verify_export.py RAW_FORMAT RAW_PATH EXPORT_FILE [--ks 10[,20,...]]
   or: python -m benchmarks verify_export RAW_FORMAT RAW_PATH EXPORT_FILE [--ks 10[,20,...]]

RAW_FORMAT is one of
  udata        MovieLens-100K u.data: "user<TAB>item<TAB>rating<TAB>timestamp", no header
  ratings-dat  MovieLens-1M/10M ratings.dat: "user::item::rating::timestamp"
  ratings-csv  MovieLens latest ratings.csv: header "userId,movieId,rating,timestamp"
  seq          one line per user, "user item item ...", oldest first (ml-1m_seq.txt, Beauty.txt, ...)

For the rating formats each user's events are sorted by timestamp with a STABLE sort, so events
with equal timestamps keep their file order. The leave-one-out test target of a user is the user's
last event. EXPORT_FILE is what `crbr.eval.export_topk` writes (Parquet if it ends with .parquet,
else CSV) with columns user_id, rank (1-based), item_id, score, in original ids.

For every user in the export: rank = position of the target in the user's list (miss if absent),
HR@K = mean [rank <= K], NDCG@K = mean [rank <= K] / log2(rank + 1). Prints the numbers so they can
be compared with the ones crbr reported for a leave-one-out evaluation.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict


def read_events(fmt: str, path: str) -> dict[str, list[str]]:
    """user id -> item ids in time order (stable on timestamp ties)."""
    if fmt == "seq":
        seqs: dict[str, list[str]] = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if not parts:
                    continue
                if parts[0] in seqs:
                    seqs[parts[0]].extend(parts[1:])
                else:
                    seqs[parts[0]] = parts[1:]
        return seqs
    rows: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    with open(path, encoding="latin-1") as f:
        if fmt == "udata":
            lines = (line.rstrip("\r\n").split("\t") for line in f)
        elif fmt == "ratings-dat":
            lines = (line.rstrip("\r\n").split("::") for line in f)
        elif fmt == "ratings-csv":
            reader = csv.reader(f)
            next(reader)  # header
            lines = reader
        else:
            raise SystemExit(f"unknown RAW_FORMAT {fmt!r}: expected udata, ratings-dat, ratings-csv or seq")
        for n, parts in enumerate(lines):
            if len(parts) < 4:
                continue
            user, item, ts = parts[0].strip(), parts[1].strip(), float(parts[3])
            rows[user].append((ts, n, item))
    # sort by (timestamp, file position): identical to a stable sort on timestamp
    return {u: [it for _, _, it in sorted(ev)] for u, ev in rows.items()}


def read_export(path: str) -> dict[str, list[tuple[int, str]]]:
    """user id -> [(rank, item id)] from the export file."""
    lists: dict[str, list[tuple[int, str]]] = defaultdict(list)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["user_id", "rank", "item_id"]).to_pydict()
        for u, r, i in zip(t["user_id"], t["rank"], t["item_id"]):
            lists[str(u)].append((int(r), str(i)))
    else:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                lists[row["user_id"]].append((int(row["rank"]), row["item_id"]))
    return lists


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw_format", choices=["udata", "ratings-dat", "ratings-csv", "seq"])
    ap.add_argument("raw_path")
    ap.add_argument("export_file")
    ap.add_argument("--ks", default="10", help="comma-separated cut-offs (default 10)")
    a = ap.parse_args(argv)
    ks = [int(k) for k in a.ks.split(",")]

    seqs = read_events(a.raw_format, a.raw_path)
    lists = read_export(a.export_file)
    unknown = [u for u in lists if u not in seqs or not seqs[u]]
    if unknown:
        print(f"ERROR: {len(unknown)} exported users have no events in the raw file, e.g. {unknown[:5]}")
        return 1
    bad = [u for u, lst in lists.items() if sorted(r for r, _ in lst) != list(range(1, len(lst) + 1))]
    if bad:
        print(f"ERROR: {len(bad)} users have ranks that are not 1..n, e.g. {bad[:5]}")
        return 1
    list_len = max((len(v) for v in lists.values()), default=0)
    hits = dict.fromkeys(ks, 0)
    gains = dict.fromkeys(ks, 0.0)
    for u, lst in lists.items():
        target = seqs[u][-1]
        rank = next((r for r, i in lst if i == target), None)
        for k in ks:
            if rank is not None and rank <= k:
                hits[k] += 1
                gains[k] += 1.0 / math.log2(rank + 1)
    n = len(lists)
    print(f"raw: {len(seqs)} users ({a.raw_format}); export: {n} users, lists of up to {list_len} items")
    print("protocol: leave-one-out, target = last event per user (stable time order)")
    for k in ks:
        if k > list_len:
            print(f"warning: K={k} exceeds the exported list length {list_len}")
        print(f"HR@{k}: {hits[k] / n if n else float('nan')!r}")
        print(f"NDCG@{k}: {gains[k] / n if n else float('nan')!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
