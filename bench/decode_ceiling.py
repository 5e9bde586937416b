#!/usr/bin/env python3
"""Decode ceiling: how many rows per second this machine can decompress when every core does nothing
but decompress the bytes a loader epoch needs (issue 3's "decode ceiling").

The X/data and X/indices inner chunks of a sharded zarr v3 CSR store or annbatch collection are read
into memory once (shard index parsed, empty chunks skipped), split across one process per core, and
decompressed repeatedly with c-blosc (numcodecs, one thread per process, the library annstream and
zarrs link too) or zstd. No I/O, no gathering, no Python objects per row: the figure is an upper
bound on any loader's samples/s on these files.

    .venv/bin/python bench/decode_ceiling.py COLLECTION_OR_STORE [--procs N] [--repeats 3]
    .venv/bin/python bench/decode_ceiling.py COLLECTION --chunk-size 32 --preload-nchunks 256

With --chunk-size/--preload-nchunks (the "access" ceiling) the bytes are those a shuffled epoch of
that configuration has to decompress at the least: chunks of chunk_size rows (aligned at multiples of
chunk_size within a dataset, as both loaders sample them) are dealt into loads of preload_nchunks;
for each load, every blosc block that holds a value of its rows is decompressed once (a block
shared by two chunks of one load once; a block needed by two loads twice) with the system c-blosc
(the library annstream links): wholly needed inner chunks with blosc_decompress_ctx, the needed
blocks of the others with blosc_getitem (which allocates per call, so this ceiling is a little low
where most chunks are partly needed). A chunk of 32 rows usually straddles two blocks, so
this is more work per row than the once-over-every-byte ceiling; no loader that decodes whole blosc
blocks can do less.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import struct
import sys
import time
from pathlib import Path


def _datasets(root: Path) -> list[Path]:
    meta = json.loads((root / "zarr.json").read_text())
    if meta.get("attributes", {}).get("encoding-type") == "annbatch-preshuffled":
        ds = sorted((p for p in root.iterdir() if p.name.startswith("dataset_")),
                    key=lambda p: int(p.name.split("_")[1]))
        return ds
    return [root]


def _inner_chunks(arr: Path) -> tuple[list[bytes], str, int]:
    """Encoded inner chunks of a sharded 1-D array, the codec name, and the decoded chunk size."""
    meta = json.loads((arr / "zarr.json").read_text())
    (shard,) = meta["chunk_grid"]["configuration"]["chunk_shape"]
    sh = next(c for c in meta["codecs"] if c["name"] == "sharding_indexed")["configuration"]
    (inner,) = sh["chunk_shape"]
    names = [c["name"] for c in sh["codecs"]]
    codec = "blosc" if "blosc" in names else "zstd" if "zstd" in names else "none"
    n = shard // inner
    crc = any(c["name"] == "crc32c" for c in sh["index_codecs"])
    index_bytes = 16 * n + (4 if crc else 0)
    at_start = sh.get("index_location", "end") == "start"
    chunks = []
    for f in sorted((arr / "c").iterdir(), key=lambda p: int(p.name)):
        raw = f.read_bytes()
        idx = raw[:index_bytes] if at_start else raw[len(raw) - index_bytes:]
        for i in range(n):
            off, nb = struct.unpack_from("<QQ", idx, 16 * i)
            if off != 0xFFFFFFFFFFFFFFFF:
                chunks.append(raw[off:off + nb])
    itemsize = {"float32": 4, "int32": 4, "uint16": 2, "uint8": 1, "int64": 8, "float64": 8,
                "uint32": 4}[meta["data_type"]]
    return chunks, codec, inner * itemsize


def _work(args):
    chunks, codec, nbytes, repeats, barrier = args
    import numcodecs
    import numpy as np
    numcodecs.blosc.use_threads = False
    dec = numcodecs.Blosc() if codec == "blosc" else numcodecs.Zstd() if codec == "zstd" else None
    # One reused output buffer: a fresh allocation per chunk would measure page faults, not decoding.
    out = np.empty(nbytes, dtype=np.uint8)
    views = [out[:nb] for _, nb in chunks]
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(repeats):
        for (c, _), view in zip(chunks, views):
            if dec:
                dec.decode(c, out=view)
            else:
                view[:len(c)] = np.frombuffer(c, np.uint8)
    return time.perf_counter() - t0


def _blosc_lib():
    import ctypes
    import ctypes.util
    lib = ctypes.CDLL(ctypes.util.find_library("blosc") or "libblosc.so.1")
    lib.blosc_getitem.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.blosc_getitem.restype = ctypes.c_int
    lib.blosc_decompress_ctx.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                         ctypes.c_int]
    lib.blosc_decompress_ctx.restype = ctypes.c_int
    return lib


def _prepare_access(jobs, nbytes: int):
    """jobs: (encoded chunk, first item, n items, typesize, whole) -> what _decode_access runs."""
    import ctypes
    lib = _blosc_lib()
    out = ctypes.create_string_buffer(nbytes)
    prepared = []
    for c, start, n, ts, whole in jobs:
        buf = ctypes.create_string_buffer(c, len(c))
        prepared.append((buf, start, n, n * ts if whole else 0))
    return lib, out, prepared


def _decode_access(lib, out, prepared) -> None:
    """Each job once: a whole chunk with blosc_decompress_ctx (one thread), a run of its blocks
    with blosc_getitem."""
    for buf, start, n, whole_bytes in prepared:
        if whole_bytes:
            if lib.blosc_decompress_ctx(buf, out, whole_bytes, 1) != whole_bytes:
                raise RuntimeError("blosc_decompress_ctx failed")
        elif lib.blosc_getitem(buf, start, n, out) < 0:
            raise RuntimeError("blosc_getitem failed")


def _work_access(args):
    jobs, nbytes, repeats, barrier = args
    lib, out, prepared = _prepare_access(jobs, nbytes)
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(repeats):
        _decode_access(lib, out, prepared)
    return time.perf_counter() - t0


def _serve_access_proc(conn, jobs, nbytes, barrier) -> None:
    """A persistent decoding process of --serve: one pass over its jobs per "epoch" message."""
    lib, out, prepared = _prepare_access(jobs, nbytes)
    conn.send("ready")
    while conn.recv() == "epoch":
        barrier.wait()
        t0 = time.perf_counter()
        _decode_access(lib, out, prepared)
        conn.send(time.perf_counter() - t0)


def _access_jobs(datasets, chunk_size: int, preload: int, seed: int):
    """The blosc block runs one shuffled epoch must decode: [(chunk bytes, item0, nitems, typesize)]."""
    import numpy as np
    import zarr
    rng = np.random.default_rng(seed)
    chunks_rows, parts = [], []
    for d, ds in enumerate(datasets):
        indptr = np.asarray(zarr.open_array(str(ds / "X" / "indptr"), mode="r")[:], dtype=np.int64)
        n = len(indptr) - 1
        for part in ("data", "indices"):
            enc, codec, nb = _inner_chunks(ds / "X" / part)
            if codec != "blosc":
                raise SystemExit("--chunk-size needs a blosc-compressed collection")
            meta = json.loads((ds / "X" / part / "zarr.json").read_text())
            sh = next(c for c in meta["codecs"] if c["name"] == "sharding_indexed")["configuration"]
            (inner,) = sh["chunk_shape"]
            # every inner chunk is stored here (annbatch writes no empty ones); header: typesize, blocksize
            hdr = [(c[3], struct.unpack_from("<I", c, 8)[0]) for c in enc]
            parts.append((d, enc, inner, hdr))
        for k in range(0, n, chunk_size):
            chunks_rows.append((d, int(indptr[k]), int(indptr[min(k + chunk_size, n)])))
    order = rng.permutation(len(chunks_rows))
    jobs = []
    for l0 in range(0, len(order), preload):
        need = {}  # (part, unit) -> set of blocks
        for ci in order[l0:l0 + preload]:
            d, e0, e1 = chunks_rows[ci]
            if e1 <= e0:
                continue
            for pi, (pd, enc, inner, hdr) in enumerate(parts):
                if pd != d:
                    continue
                for u in range(e0 // inner, (e1 - 1) // inner + 1):
                    ts, bs = hdr[u]
                    lo = max(e0, u * inner) - u * inner
                    hi = min(e1, (u + 1) * inner) - u * inner
                    need.setdefault((pi, u), set()).update(range(lo * ts // bs, (hi * ts - 1) // bs + 1))
        for (pi, u), blocks in need.items():
            _, enc, inner, hdr = parts[pi]
            ts, bs = hdr[u]
            blocks = sorted(blocks)
            run0 = prev = blocks[0]
            for b in blocks[1:] + [None]:
                if b is not None and b == prev + 1:
                    prev = b
                    continue
                item0 = run0 * bs // ts
                item1 = min((prev + 1) * bs // ts, inner)
                jobs.append((enc[u], item0, item1 - item0, ts, item0 == 0 and item1 == inner))
                if b is not None:
                    run0 = prev = b
    return jobs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--procs", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=0,
                    help="access ceiling: the blocks a shuffled epoch of this chunk size decodes")
    ap.add_argument("--preload-nchunks", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--serve", action="store_true",
                    help="with --chunk-size: run one epoch per 'epoch' line on stdin, JSON lines out "
                         "(a system of bench/loader_bench.py: --systems annbatch,annstream,ceiling)")
    a = ap.parse_args(argv)
    if a.serve and a.chunk_size <= 0:
        ap.error("--serve needs --chunk-size")
    root = Path(a.path)
    if a.chunk_size > 0:
        return access_main(a, root)
    work, n_obs, codecs, enc, sizes = [], 0, set(), 0, set()
    for ds in _datasets(root):
        x = ds / "X"
        n_obs += json.loads((x / "zarr.json").read_text())["attributes"]["shape"][0]
        for part in ("data", "indices"):
            chunks, codec, nbytes = _inner_chunks(x / part)
            codecs.add(codec)
            sizes.add(nbytes)
            work += [(c, codec, nbytes) for c in chunks]
            enc += sum(len(c) for c in chunks)
    # Deal the chunks round-robin to the processes (equal work), all starting together.
    per = [[] for _ in range(a.procs)]
    for i, (c, codec, nb) in enumerate(work):
        per[i % a.procs].append((c, nb))
    (codec,) = codecs
    nbytes = max(sizes)
    with mp.Manager() as m:
        barrier = m.Barrier(a.procs)
        with mp.get_context("fork").Pool(a.procs) as pool:
            t0 = time.perf_counter()
            times = pool.map(_work, [(p, codec, nbytes, a.repeats, barrier) for p in per])
            wall = time.perf_counter() - t0
    slowest = max(times)
    rows_per_s = n_obs * a.repeats / slowest
    res = {"bench": "decode_ceiling", "path": str(root), "n_obs": n_obs, "chunks": len(work),
           "encoded_bytes": enc, "codec": codec, "procs": a.procs, "repeats": a.repeats,
           "seconds_per_pass": slowest / a.repeats, "rows_per_s": rows_per_s,
           "wall_incl_start_s": wall}
    print(f"decode ceiling: {rows_per_s:,.0f} rows/s ({a.procs} processes, {codec}, "
          f"{enc / 1e6:.0f} MB encoded, {slowest / a.repeats:.3f} s per pass over {n_obs} rows)")
    print("JSON " + json.dumps(res))
    return 0


def access_main(a, root: Path) -> int:
    datasets = _datasets(root)
    n_obs = sum(json.loads((ds / "X" / "zarr.json").read_text())["attributes"]["shape"][0]
                for ds in datasets)
    jobs = _access_jobs(datasets, a.chunk_size, a.preload_nchunks, a.seed)
    decoded = sum(n * ts for _, _, n, ts, _ in jobs)
    per = [[] for _ in range(a.procs)]
    for i, j in enumerate(jobs):
        per[i % a.procs].append(j)
    nbytes = max(n * ts for _, _, n, ts, _ in jobs)
    if a.serve:
        return serve_access(a, root, n_obs, per, nbytes, decoded)
    with mp.Manager() as m:
        barrier = m.Barrier(a.procs)
        with mp.get_context("fork").Pool(a.procs) as pool:
            times = pool.map(_work_access, [(p, nbytes, a.repeats, barrier) for p in per])
    slowest = max(times)
    rows_per_s = n_obs * a.repeats / slowest
    res = {"bench": "decode_ceiling_access", "path": str(root), "n_obs": n_obs,
           "chunk_size": a.chunk_size, "preload_nchunks": a.preload_nchunks, "jobs": len(jobs),
           "decoded_bytes": decoded, "procs": a.procs, "repeats": a.repeats,
           "seconds_per_epoch": slowest / a.repeats, "rows_per_s": rows_per_s}
    print(f"access decode ceiling {a.chunk_size}x{a.preload_nchunks}: {rows_per_s:,.0f} rows/s "
          f"({a.procs} processes, {len(jobs)} block runs, {decoded / 1e6:.0f} MB decoded per epoch, "
          f"{slowest / a.repeats:.3f} s per epoch of {n_obs} rows)")
    print("JSON " + json.dumps(res))
    return 0


def _hwm_mib(pid: int) -> float:
    """Peak RSS of a running process (VmHWM), MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def serve_access(a, root: Path, n_obs: int, per, nbytes: int, decoded: int) -> int:
    """The access ceiling as a system of bench/loader_bench.py's interleaved rounds: JSON lines on
    stdout ("ready", then one "epoch" record per "epoch" line on stdin, a "summary" at "quit"), so
    that its epochs run in the same rounds, under the same background load, as the loaders'."""
    def emit(obj):
        print(json.dumps(obj), flush=True)

    base = {"system": "ceiling", "collection": str(root), "chunk_size": a.chunk_size,
            "preload_nchunks": a.preload_nchunks, "cache": "warm", "procs": a.procs,
            "decoded_bytes": decoded, "pid": os.getpid()}
    t0 = time.perf_counter()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(a.procs)
    conns, procs = [], []
    for part in per:
        here, there = ctx.Pipe()
        pr = ctx.Process(target=_serve_access_proc, args=(there, part, nbytes, barrier), daemon=True)
        pr.start()
        conns.append(here)
        procs.append(pr)
    for c in conns:
        if c.recv() != "ready":
            raise SystemExit("a decoding process failed to start")
    setup_s = time.perf_counter() - t0
    emit({**base, "kind": "ready"})
    results = []
    for line in sys.stdin:
        if line.strip() != "epoch":
            break
        for c in conns:
            c.send("epoch")
        slowest = max(c.recv() for c in conns)
        r = {**base, "kind": "epoch", "epoch": len(results), "seconds": slowest,
             "samples_per_s": n_obs / slowest, "rows": n_obs, "first_batch_s": 0.0,
             "batches_per_s": None, "peak_rss_mib": sum(_hwm_mib(pr.pid) for pr in procs)}
        results.append(r)
        emit(r)
    for c in conns:
        c.send("quit")
    for pr in procs:
        pr.join(10)
    if not results:
        emit({**base, "kind": "summary", "error": "no epoch"})
        return 0
    v = sorted(r["samples_per_s"] for r in results)
    emit({**base, "kind": "summary", "samples_per_s": v[len(v) // 2], "best_samples_per_s": v[-1],
          "epochs": len(results), "first_batch_s": 0.0, "batches_per_s": None,
          "peak_rss_mib": max(r["peak_rss_mib"] for r in results), "setup_s": setup_s,
          "rows_per_epoch": n_obs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
