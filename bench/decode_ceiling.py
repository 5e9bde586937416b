#!/usr/bin/env python3
"""Decode ceiling: how many rows per second this machine can decompress when every core does nothing
but decompress the bytes a loader epoch needs (issue 3's "decode ceiling").

The X/data and X/indices inner chunks of a sharded zarr v3 CSR store or annbatch collection are read
into memory once (shard index parsed, empty chunks skipped), split across one process per core, and
decompressed repeatedly with c-blosc (numcodecs, one thread per process, the library annstream and
zarrs link too) or zstd. No I/O, no gathering, no Python objects per row: the figure is an upper
bound on any loader's samples/s on these files.

    .venv/bin/python bench/decode_ceiling.py COLLECTION_OR_STORE [--procs N] [--repeats 3]
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--procs", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    root = Path(a.path)
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


if __name__ == "__main__":
    sys.exit(main())
