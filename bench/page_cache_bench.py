"""What a page-cache hit costs, by the way the cached pages were first read.

A warm epoch of a loader copies every byte it needs out of the page cache with pread. On this
kernel (6.x, ext4 with large folios) that copy costs about twice as much when the pages sit in 4 KiB
folios as when they sit in large ones, and which one a file gets depends only on how it was first
read: readahead builds large folios while it streams a file sequentially, every other way of
reading leaves small ones. This script measures it on one file:

1. evict the file (posix_fadvise DONTNEED);
2. read a set of disjoint ranges at random offsets (the fill), one of several ways;
3. read the same ranges again from the cache, best of --reps passes: microseconds per MiB.

It also prints how many bytes the fill read from disk per byte asked (`/proc/self/io` read_bytes):
a fill that streams the whole file reads everything.

    .venv/bin/python bench/page_cache_bench.py                    # 256 KiB ranges
    .venv/bin/python bench/page_cache_bench.py --range-kib 1200   # about one 256-row chunk

stdlib only; Linux only. Results go to BENCHMARKS.md (loader section).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import sys
import time
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parent / "data"


def largest_file(root: Path) -> Path:
    """The largest file under the first annbatch collection in root (a data shard of X)."""
    best = None
    for coll in sorted(root.glob("annbatch_*.zarr")):
        for p in coll.rglob("*"):
            if p.is_file() and (best is None or p.stat().st_size > best.stat().st_size):
                best = p
        if best is not None:
            return best
    raise SystemExit(f"no annbatch collection under {root}: run bench/annbatch_prep.py first, "
                     "or pass --file")


def disk_read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes")


def pick_ranges(size: int, length: int, count: int, seed: int) -> list[tuple[int, int]]:
    """count disjoint ranges of `length` bytes, at page-unaligned random offsets."""
    slots = size // (3 * length) - 1
    if slots < 1:
        raise SystemExit(f"the file ({size} bytes) is too small for {length}-byte ranges")
    rng = random.Random(seed)
    starts = sorted(rng.sample(range(slots), min(count, slots)))
    return [(s * 3 * length + rng.randrange(4096), length) for s in starts]


def fill(method: str, fd: int, ranges: list[tuple[int, int]], size: int) -> None:
    if method == "pread":  # what a chunked-random loader's cold epoch does
        for off, n in ranges:
            os.pread(fd, n, off)
    elif method == "willneed":  # annstream's cold path: advise the load's ranges, then read them
        for off, n in ranges:
            os.posix_fadvise(fd, off, n, os.POSIX_FADV_WILLNEED)
        for off, n in ranges:
            os.pread(fd, n, off)
    elif method in ("sequential-advice", "random-advice"):
        advice = os.POSIX_FADV_SEQUENTIAL if method == "sequential-advice" else os.POSIX_FADV_RANDOM
        os.posix_fadvise(fd, 0, 0, advice)
        for off, n in ranges:
            os.pread(fd, n, off)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_NORMAL)
    elif method == "mmap-populate":  # fault the ranges in through a mapping
        for off, n in ranges:
            base = off & ~(mmap.PAGESIZE - 1)
            m = mmap.mmap(fd, off + n - base, prot=mmap.PROT_READ, offset=base)
            try:
                m.madvise(mmap.MADV_POPULATE_READ)
            except (AttributeError, OSError):
                m[:]  # older Python or kernel: touch it
            m.close()
    elif method == "whole-file":  # stream the file in 1 MiB reads (a copy or fresh write is alike)
        off = 0
        while off < size:
            os.pread(fd, 1 << 20, off)
            off += 1 << 20
    else:
        raise ValueError(method)


def warm_cost(fd: int, ranges: list[tuple[int, int]], reps: int) -> float:
    """Microseconds per MiB to pread the ranges from the cache (best of reps passes)."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for off, n in ranges:
            os.pread(fd, n, off)
        best = min(best, time.perf_counter() - t0)
    return best / (sum(n for _, n in ranges) / 2**20) * 1e6


METHODS = ["pread", "willneed", "sequential-advice", "random-advice", "mmap-populate",
           "whole-file"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", type=Path, help="file to read (default: the largest file of the "
                    "first annbatch collection in bench/data)")
    ap.add_argument("--range-kib", type=int, default=256, help="bytes per range, KiB (256)")
    ap.add_argument("--ranges", type=int, default=100, help="number of ranges (100)")
    ap.add_argument("--reps", type=int, default=3, help="warm passes, best taken (3)")
    ap.add_argument("--rounds", type=int, default=2, help="passes over all methods (2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS))
    a = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("Linux only (posix_fadvise, /proc/self/io)")
    path = a.file or largest_file(DEFAULT_ROOT)
    size = path.stat().st_size
    ranges = pick_ranges(size, a.range_kib * 1024, a.ranges, a.seed)
    asked = sum(n for _, n in ranges)
    methods = a.methods.split(",")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    print(f"{path} ({size / 2**20:.0f} MiB): {len(ranges)} ranges of {a.range_kib} KiB, "
          f"{os.uname().release}", flush=True)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    fd = os.open(path, os.O_RDONLY)
    try:
        for r in range(a.rounds):
            for m in methods:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                time.sleep(0.2)
                d0 = disk_read_bytes()
                t0 = time.perf_counter()
                fill(m, fd, ranges, size)
                fill_s = time.perf_counter() - t0
                rec = {"fill_ms": fill_s * 1e3, "disk_per_asked": (disk_read_bytes() - d0) / asked,
                       "warm_us_per_mib": warm_cost(fd, ranges, a.reps)}
                results[m].append(rec)
                print(f"  round {r} {m:18s} fill {rec['fill_ms']:6.0f} ms, disk/asked "
                      f"{rec['disk_per_asked']:5.2f}, warm {rec['warm_us_per_mib']:5.0f} us/MiB",
                      flush=True)
    finally:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    print()
    print("| fill | disk bytes / bytes asked | warm pread, us per MiB (best round) |")
    print("|---|---:|---:|")
    for m in methods:
        recs = results[m]
        print(f"| {m} | {min(x['disk_per_asked'] for x in recs):.2f} | "
              f"{min(x['warm_us_per_mib'] for x in recs):.0f} |")
    print("JSON " + json.dumps({"file": str(path), "size": size, "range_bytes": a.range_kib * 1024,
                                "ranges": len(ranges), "kernel": os.uname().release,
                                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
