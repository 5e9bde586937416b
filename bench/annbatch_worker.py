#!/usr/bin/env python3
"""annbatch loader worker: runs inside the annbatch venv (.bench-annbatch-venv, see setup_annbatch.sh).

Streams full shuffled epochs over an annbatch DatasetCollection with ``annbatch.Loader(...)
.use_collection(...)`` (``to=None``: scipy CSR batches, no torch) and the zarrs codec pipeline, and
prints one JSON line per measured epoch plus one summary line (``{"kind": "summary", ...}``) to stdout.

    .bench-annbatch-venv/bin/python bench/annbatch_worker.py COLLECTION.zarr \
        --chunk-size 32 --preload-nchunks 256 --batch-size 4096 --epochs 1 --cache warm

``--cache warm``: one untimed warm-up epoch first (page cache hot), then ``--epochs`` timed epochs.
``--cache cold``: before every timed epoch all files of the collection are evicted from the page
cache with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (``evict``), no warm-up epoch.

Each epoch is timed from ``iter(loader)`` to the last batch; ``first_batch_s`` is the time to the
first batch of that epoch (includes the first load request: chunk_size * preload_nchunks rows).
The loader object and its use_collection() set-up (which reads obs and every indptr into memory) are
timed separately (``setup_s``).  ``peak_rss_mib`` is the process's ru_maxrss at the end.

This module's top level imports only the standard library, so ``evict`` / ``dir_files`` can be
imported by the orchestrator (loader_bench.py) from the main venv.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path


# --------------------------------------------------------------------------------------------------
# Page-cache helpers (stdlib only)


def dir_files(path: str | os.PathLike) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    return [f for f in p.rglob("*") if f.is_file()]


def evict(path: str | os.PathLike) -> dict:
    """Drop every file under `path` from the page cache (posix_fadvise DONTNEED on the whole file).

    Dirty pages are not dropped by DONTNEED, so each file is fdatasync'ed first (cheap when clean).
    Returns {"files": n, "bytes": total, "seconds": t}.
    """
    t0 = time.perf_counter()
    n = total = 0
    for f in dir_files(path):
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                os.fdatasync(fd)
            except OSError:
                pass
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
            n += 1
        finally:
            os.close(fd)
    return {"files": n, "bytes": total, "seconds": time.perf_counter() - t0}


def resident_fraction(path: str | os.PathLike) -> float | None:
    """Fraction of the bytes under `path` that are in the page cache (mincore via mmap), or None."""
    try:
        import ctypes
        import mmap

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        page = mmap.PAGESIZE
        res = tot = 0
        for f in dir_files(path):
            size = f.stat().st_size
            if size == 0:
                continue
            with open(f, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY)  # private map: from_buffer works
                try:
                    npages = (size + page - 1) // page
                    vec = (ctypes.c_ubyte * npages)()
                    cbuf = ctypes.c_char.from_buffer(mm)
                    rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(cbuf)), ctypes.c_size_t(size), vec)
                    del cbuf
                    if rc != 0:
                        return None
                    res += sum(1 for v in bytes(vec) if v & 1)
                    tot += npages
                finally:
                    mm.close()
        return res / tot if tot else None
    except Exception:
        return None


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def rss_mib() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None


def system_cpu() -> dict:
    """Machine-wide CPU seconds from /proc/stat: busy (user+nice+system+irq+softirq) and steal."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        tck = os.sysconf("SC_CLK_TCK")
        return {"busy": (v[0] + v[1] + v[2] + v[5] + v[6]) / tck, "steal": (v[7] if len(v) > 7 else 0) / tck}
    except (OSError, ValueError, IndexError):
        return {"busy": 0.0, "steal": 0.0}


def contention(sys0: dict, own_cpu_s: float, wall_s: float) -> dict:
    """CPU used by OTHER processes during an interval (cores, averaged) and VM steal (cores)."""
    s1 = system_cpu()
    return {
        "other_cores": max(0.0, (s1["busy"] - sys0["busy"] - own_cpu_s)) / wall_s if wall_s > 0 else None,
        "steal_cores": (s1["steal"] - sys0["steal"]) / wall_s if wall_s > 0 else None,
    }


def idle_load(seconds: float = 0.3) -> float:
    """Cores busy (machine-wide, this process idle) over a short sleep: background load from others."""
    s0 = system_cpu()
    time.sleep(seconds)
    s1 = system_cpu()
    return max(0.0, s1["busy"] - s0["busy"]) / seconds


def median_or_none(values: list) -> float | None:
    """The median of the values that are not None (the upper one of an even count), or None."""
    v = sorted(x for x in values if x is not None)
    return v[len(v) // 2] if v else None


def read_bytes() -> int | None:
    """Bytes this process has read through read/pread so far (/proc/self/io rchar: page-cache hits
    included, so a warm epoch counts too); None where /proc has no io file."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------------------------------
# Worker


def time_epoch(loader, args, base: dict, timed: bool, index: int) -> dict:
    """One pass over `loader`, measured the same way for every system (both workers call this):
    wall time, first-batch latency, rows/nnz/batches, own CPU, machine contention, RSS; with
    args.check the sum of X.data; with args.cache == "cold" the collection is evicted first."""
    import scipy.sparse as sp  # numpy/scipy only here: the module's top level stays stdlib-only

    ev = None
    if timed and args.cache == "cold":
        ev = evict(args.collection)
        ev["resident_after"] = resident_fraction(args.collection)
    bg = idle_load() if timed else None
    cpu0 = cpu_seconds()
    rd0 = read_bytes()
    sys0 = system_cpu()
    t_start = time.perf_counter()
    first = None
    rows = nnz = batches = 0
    xsum = 0.0
    for batch in loader:
        X = batch["X"]
        if first is None:
            first = time.perf_counter() - t_start
            assert sp.issparse(X) and X.format == "csr", type(X)
        rows += X.shape[0]
        nnz += X.nnz
        batches += 1
        if args.check:
            xsum += float(X.data.sum(dtype="float64"))
        if args.max_batches and batches >= args.max_batches:
            break
    wall = time.perf_counter() - t_start
    own = cpu_seconds() - cpu0
    rd1 = read_bytes()
    cont = contention(sys0, own, wall)
    rec = {
        **base,
        "kind": "epoch" if timed else "warmup",
        "epoch": index,
        "seconds": wall,
        "first_batch_s": first,
        "rows": rows,
        "nnz": nnz,
        "batches": batches,
        "samples_per_s": rows / wall,
        "batches_per_s": batches / wall,
        "cpu_s": own, **cont, "idle_load_before": bg,
        "read_mb": (rd1 - rd0) / 1e6 if rd0 is not None and rd1 is not None else None,
        "rss_mib": rss_mib(),
        "peak_rss_mib": peak_rss_mib(),
    }
    if args.check:
        rec["data_sum"] = xsum
    if ev is not None:
        rec["evict"] = ev
    return rec


def serve(emit, epoch, results: list, base: dict) -> None:
    """Round-robin mode (--serve): say "ready", then run one timed epoch per "epoch" line on stdin
    until "quit" / EOF.  Lets the orchestrator interleave the systems' epochs, so that both see the
    same background load on a shared machine."""
    emit({**base, "kind": "ready"})
    e = 0
    while True:
        line = sys.stdin.readline()
        cmd = line.strip()
        if cmd == "epoch":
            r = epoch(True, e)
            e += 1
            results.append(r)
            emit(r)
        else:
            return


def enable_zarrs(threads: int | None = None) -> str:
    import zarr

    # Not codec_pipeline.strict: obs/var string arrays are not supported by zarrs and must fall back to
    # zarr-python's pipeline (strict raises UnsupportedDataTypeError on them); X is numeric and is
    # decoded by zarrs.
    cfg = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}
    if threads:
        cfg["threading.max_workers"] = threads
    zarr.config.set(cfg)
    import zarrs  # noqa: F401  (fails loudly if the pipeline is not installed)

    return zarr.config.get("codec_pipeline.path")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for p in ["annbatch", "zarr", "zarrs", "anndata", "numpy", "scipy", "pandas"]:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def _x_only(g):
    """load_adata for use_collection that skips obs (X + var only), for the --no-obs variant."""
    import anndata as ad
    import pandas as pd
    from annbatch.utils import _read_backed  # noqa: PLC2701 (same reader annbatch's default uses)

    var = g["var"]
    return ad.AnnData(X=_read_backed(g["X"]), var=pd.DataFrame(index=pd.Index(ad.io.read_elem(var[var.attrs.get("_index")]))))


def run(args) -> int:
    import warnings

    caught: list[str] = []

    def showwarning(message, category, filename, lineno, file=None, line=None):
        caught.append(f"{category.__name__}: {message}")

    warnings.showwarning = showwarning

    pipeline = enable_zarrs(args.zarr_threads)
    import annbatch
    import numpy as np

    def emit(obj):
        print(json.dumps(obj), flush=True)

    base = {
        "system": "annbatch",
        "collection": str(args.collection),
        "chunk_size": args.chunk_size,
        "preload_nchunks": args.preload_nchunks,
        "batch_size": args.batch_size,
        "cache": args.cache,
        "obs": not args.no_obs,
        "pid": os.getpid(),
    }
    rss0 = peak_rss_mib()
    if args.cache == "cold":
        evict(args.collection)
    t0 = time.perf_counter()
    coll = annbatch.DatasetCollection(args.collection, mode="r")
    loader = annbatch.Loader(
        chunk_size=args.chunk_size,
        preload_nchunks=args.preload_nchunks,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=False,
        to=None,
        preload_to_gpu=False,
        rng=np.random.default_rng(args.seed),
    )
    if args.no_obs:
        loader.use_collection(coll, load_adata=_x_only)
    else:
        loader.use_collection(coll)
    setup_s = time.perf_counter() - t0
    n_obs, n_var, n_batches = loader.n_obs, loader.n_var, len(loader)

    def epoch(timed: bool, index: int) -> dict:
        return time_epoch(loader, args, base, timed, index)

    results = []
    if args.cache == "warm":
        w = epoch(False, -1)
        emit(w)
    if args.serve:
        serve(emit, epoch, results, base)
    else:
        for e in range(args.epochs):
            r = epoch(True, e)
            results.append(r)
            emit(r)
    if not results:
        emit({**base, "kind": "summary", "error": "no timed epoch"})
        return 0
    med = sorted(r["samples_per_s"] for r in results)[len(results) // 2]
    best = max(results, key=lambda r: r["samples_per_s"])
    emit(
        {
            **base,
            "kind": "summary",
            "n_obs": n_obs,
            "n_var": n_var,
            "n_batches": n_batches,
            "n_datasets": len(list(coll._dataset_keys)),
            "setup_s": setup_s,
            "samples_per_s": med,
            "batches_per_s": sorted(r["batches_per_s"] for r in results)[len(results) // 2],
            "first_batch_s": sorted(r["first_batch_s"] for r in results)[len(results) // 2],
            "best_samples_per_s": best["samples_per_s"],
            "epochs": len(results),
            "rows_per_epoch": results[0]["rows"],
            "nnz_per_epoch": results[0]["nnz"],
            "cpu_s_per_epoch": sorted(r["cpu_s"] for r in results)[len(results) // 2],
            "read_mb_per_epoch": median_or_none([r.get("read_mb") for r in results]),
            "other_cores": sorted(r["other_cores"] or 0 for r in results)[len(results) // 2],
            "steal_cores": sorted(r["steal_cores"] or 0 for r in results)[len(results) // 2],
            "idle_load": sorted(r["idle_load_before"] for r in results)[len(results) // 2],
            "rss_before_mib": rss0,
            "peak_rss_mib": peak_rss_mib(),
            "codec_pipeline": pipeline,
            "versions": _versions(),
            "warnings": sorted(set(caught)),
        }
    )
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("collection", help="annbatch DatasetCollection (.zarr directory)")
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--preload-nchunks", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=1, help="timed epochs (default %(default)s)")
    p.add_argument("--cache", choices=["warm", "cold"], default="warm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batches", type=int, default=0, help="stop an epoch after this many batches (0: full epoch)")
    p.add_argument("--zarr-threads", type=int, default=0, help="zarr threading.max_workers (0: zarr's default)")
    p.add_argument("--no-obs", action="store_true", help="use_collection with X only (skip obs, which annbatch yields by default)")
    p.add_argument("--check", action="store_true", help="also sum X.data of every batch (costs time)")
    p.add_argument("--serve", action="store_true", help="after set-up/warm-up, run one epoch per 'epoch' line on stdin")
    args = p.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
