"""Benchmark: the memory an SFT worker spends on the job's tokenized rows, Python lists per example (what the
workers built before: every row's ids and labels as Python ints) against :class:`lib.sft.TokenizedRows` (the
Arrow columns from the object store, read one example at a time).

Puts ``--rows`` synthetic rows of ``--tokens`` token ids (``lib.schemas.TOKENIZED_SCHEMA``, ``--blocks`` blocks
in shuffled ``idx`` order, as the Ray Data stage leaves them) into a local Ray's object store, then starts
``--workers`` actors per kind at once, as Ray Train's workers on one node read the same blocks. Each actor
reports its private memory (Private_Clean + Private_Dirty of ``/proc/self/smaps_rollup``: what it alone
holds) and its resident memory (shared object-store pages included) before and after building the rows and
reading ``--reads`` examples, and the seconds that took. Prints the means and the ratios arrow / lists.

Run: python -m jobs.bench_sft_rows [--rows 100000 --tokens 400 --blocks 64 --workers 2 --reads 512]
"""

from __future__ import annotations

import argparse
import statistics
import time

KINDS = ("lists", "arrow")


def memory_mib() -> tuple[float, float]:
    """(private, resident) MiB of this process, from /proc/self/smaps_rollup."""
    fields = {}
    for line in open("/proc/self/smaps_rollup"):
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1])
    return (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024, fields["Rss"] / 1024


def load(kind: str, blocks: list, reads: int) -> dict:
    """In a fresh actor: build the rows of ``kind`` from the blocks, read ``reads`` examples, report figures."""
    import random

    import pyarrow as pa
    import ray

    from lib.sft import Example, TokenizedRows

    before = memory_mib()
    start = time.monotonic()
    table = pa.concat_tables(ray.get(blocks))
    if kind == "lists":  # the workers' former path: sorted by idx, every row as Python lists
        table = table.sort_by("idx")
        rows = [Example(ids, labels) for ids, labels in zip(table.column("input_ids").to_pylist(),
                                                              table.column("labels").to_pylist())]
        del table
    else:
        rows = TokenizedRows(table)
    rng = random.Random(0)
    tokens = sum(len(rows[rng.randrange(len(rows))]) for _ in range(reads))
    seconds = time.monotonic() - start
    after = memory_mib()
    return {"kind": kind, "seconds": seconds, "private_mib": after[0] - before[0], "resident_mib": after[1] - before[1],
            "rows": len(rows), "tokens_read": tokens}


def table_of(rows: int, tokens: int, blocks: int, seed: int = 0) -> list:
    """``blocks`` TOKENIZED_SCHEMA tables covering idx 0..rows-1 in a shuffled order."""
    import numpy as np
    import pyarrow as pa

    from lib.schemas import TOKENIZED_SCHEMA

    rng = np.random.default_rng(seed)
    order = rng.permutation(rows)
    ids = rng.integers(0, 49152, size=rows * tokens, dtype=np.int32)
    labels = ids.copy()
    labels[::4] = -100
    offsets = np.arange(0, rows * tokens + 1, tokens, dtype=np.int32)
    table = pa.table({"idx": pa.array(order, pa.int64()),
                      "input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids)),
                      "labels": pa.ListArray.from_arrays(offsets, pa.array(labels))}, schema=TOKENIZED_SCHEMA)
    size = -(-rows // blocks)
    return [table.slice(i, size) for i in range(0, rows, size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--blocks", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reads", type=int, default=512)
    args = parser.parse_args()

    import ray

    from lib.ray_runtime import init_ray

    init_ray()
    blocks = [ray.put(t) for t in table_of(args.rows, args.tokens, args.blocks)]
    print(f"{args.rows:,} rows x {args.tokens} tokens in {len(blocks)} blocks "
          f"({args.rows * args.tokens * 8 / 2**20:,.0f} MiB of int32 ids and labels), {args.workers} workers per kind")
    worker = ray.remote(num_cpus=0, max_calls=1)(load)  # a fresh process per call
    means = {}
    for kind in KINDS:
        results = ray.get([worker.remote(kind, blocks, args.reads) for _ in range(args.workers)])
        assert all(r["rows"] == args.rows for r in results)
        means[kind] = {k: statistics.mean(r[k] for r in results) for k in ("seconds", "private_mib", "resident_mib")}
        for r in results:
            print(f"{kind:5s} {r['seconds']:7.2f} s  private +{r['private_mib']:9,.0f} MiB  resident +{r['resident_mib']:9,.0f} MiB")
    for kind in KINDS:
        m = means[kind]
        print(f"mean {kind:5s} {m['seconds']:7.2f} s  private +{m['private_mib']:9,.0f} MiB  resident +{m['resident_mib']:9,.0f} MiB")
    a, b = means["arrow"], means["lists"]
    print(f"arrow / lists: seconds x{a['seconds'] / b['seconds']:.3f}, private memory x{a['private_mib'] / b['private_mib']:.4f}, "
          f"resident memory x{a['resident_mib'] / b['resident_mib']:.3f}")


if __name__ == "__main__":
    main()
