#!/usr/bin/env python3
"""Preshuffle the synthetic store into an annbatch DatasetCollection, with annbatch itself.

Runs inside the annbatch venv (bench/setup_annbatch.sh):

    .bench-annbatch-venv/bin/python bench/annbatch_prep.py                 # default 150k x 20k store
    .bench-annbatch-venv/bin/python bench/annbatch_prep.py --n-obs 5000    # small, for smoke tests
    .bench-annbatch-venv/bin/python bench/annbatch_prep.py --dataset-size 50000   # 3 datasets

The input is make_data.py's AnnData zarr store (``ensure_store(Spec(...))``, generated if missing).
The collection is written by ``annbatch.DatasetCollection(out).add_adatas([input], ...)`` with the
zarrs codec pipeline enabled, and cached as
``bench/data/annbatch_<input key>__ds<dataset_size>_oc<n_obs_per_chunk>_sh<shard_size>_sc<shuffle_chunk_size>_r<seed>.zarr``
(written to a temporary name and renamed; the record ``<collection>.prep.json`` beside it -- not
inside, where zarr warns about a foreign object -- is written last, so an interrupted collection is
rebuilt).

The preshuffle runs in a child process (this script with ``--child``), so its wall time and peak RSS
(``ru_maxrss``, plus a 50 ms psutil sampler for the RSS curve's peak and the time it was reached) are
the preshuffle's alone.  The input's files are evicted from the page cache first (``--input-cache
warm`` keeps them), so the time includes reading the input from disk.  The record is printed as one
JSON line and stored in ``<collection>.prep.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from annbatch_worker import dir_files, enable_zarrs, evict  # noqa: E402
from make_data import DEFAULT_DATA_DIR, Spec, add_spec_args, ensure_store, spec_from_args  # noqa: E402

PREP_META_SUFFIX = ".prep.json"


def prep_meta_path(collection: Path) -> Path:
    return collection.with_name(collection.name + PREP_META_SUFFIX)
PREP_VERSION = 1


def collection_key(spec: Spec, a: argparse.Namespace) -> str:
    stem = spec.key().removesuffix(".zarr")
    return (
        f"annbatch_{stem}__ds{a.dataset_size}_oc{a.n_obs_per_chunk}_sh{a.shard_size}"
        f"_sc{a.shuffle_chunk_size}_r{a.shuffle_seed}_v{PREP_VERSION}.zarr"
    )


def _size_arg(s: str) -> int | str:
    return int(s) if s.isdigit() else s


def child(a: argparse.Namespace) -> int:
    """Do the preshuffle in this (fresh) process and print one JSON line with time and memory."""
    import psutil

    proc = psutil.Process()
    peak = {"rss": 0, "t": 0.0}
    stop = threading.Event()
    t_start = time.perf_counter()

    def sample():
        while not stop.is_set():
            r = proc.memory_info().rss
            if r > peak["rss"]:
                peak["rss"], peak["t"] = r, time.perf_counter() - t_start
            stop.wait(0.05)

    pipeline = enable_zarrs()
    import warnings

    caught: list[str] = []
    warnings.showwarning = lambda m, c, *rest, **kw: caught.append(f"{c.__name__}: {m}")

    import annbatch
    import numpy as np
    import zarr

    rss_after_import = proc.memory_info().rss
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    coll = annbatch.DatasetCollection(a.tmp_out, mode="w")
    coll.add_adatas(
        [a.input],
        n_obs_per_chunk=a.n_obs_per_chunk,
        shard_size=_size_arg(a.shard_size),
        dataset_size=_size_arg(a.dataset_size),
        shuffle_chunk_size=a.shuffle_chunk_size,
        shuffle=True,
        rng=np.random.default_rng(a.shuffle_seed),
    )
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    keys = list(coll._dataset_keys)
    g = zarr.open_group(a.tmp_out, mode="r")
    n_obs = nnz = 0
    datasets = []
    for k in keys:
        X = g[k]["X"]
        ip = X["indptr"]
        last = int(ip[ip.shape[0] - 1])
        n = ip.shape[0] - 1
        datasets.append(
            {
                "key": k,
                "n_obs": n,
                "nnz": last,
                "data_chunks": list(X["data"].chunks),
                "data_shards": list(X["data"].shards) if X["data"].shards else None,
                "indices_dtype": str(X["indices"].dtype),
                "indptr_dtype": str(ip.dtype),
            }
        )
        n_obs += n
        nnz += last
    print(
        json.dumps(
            {
                "preshuffle_s": wall,
                "peak_rss_mib": ru.ru_maxrss / 1024.0,
                "sampled_peak_rss_mib": peak["rss"] / 2**20,
                "sampled_peak_at_s": peak["t"],
                "rss_after_import_mib": rss_after_import / 2**20,
                "cpu_user_s": ru.ru_utime,
                "cpu_sys_s": ru.ru_stime,
                "minor_faults": ru.ru_minflt,
                "major_faults": ru.ru_majflt,
                "n_datasets": len(keys),
                "n_obs": n_obs,
                "nnz": nnz,
                "datasets": datasets,
                "codec_pipeline": pipeline,
                "warnings": sorted(set(caught)),
            }
        ),
        flush=True,
    )
    return 0


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for p in ["annbatch", "zarr", "zarrs", "anndata", "numpy", "scipy", "pandas", "dask"]:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def ensure_collection(spec: Spec, a: argparse.Namespace, *, log=print) -> tuple[Path, dict]:
    data_dir = Path(a.data_dir)
    out = data_dir / collection_key(spec, a)
    meta_path = prep_meta_path(out)
    if meta_path.exists() and out.is_dir() and not a.force:
        return out, json.loads(meta_path.read_text())
    meta_path.unlink(missing_ok=True)
    inp, in_meta = ensure_store(spec, data_dir, log=log)
    if a.input_cache == "cold":
        evict(inp)
    tmp = data_dir / (out.name.removesuffix(".zarr") + f".tmp{os.getpid()}.zarr")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", "--input", str(inp), "--tmp-out", str(tmp),
        "--dataset-size", a.dataset_size, "--n-obs-per-chunk", str(a.n_obs_per_chunk), "--shard-size", a.shard_size,
        "--shuffle-chunk-size", str(a.shuffle_chunk_size), "--shuffle-seed", str(a.shuffle_seed),
    ]
    log(f"preshuffling {inp.name} -> {out.name} with annbatch ...")
    t0 = time.perf_counter()
    cp = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    total = time.perf_counter() - t0
    if cp.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"annbatch preshuffle failed (exit {cp.returncode})")
    rec = json.loads(cp.stdout.strip().splitlines()[-1])
    if rec["n_obs"] != in_meta["n_obs"] or rec["nnz"] != in_meta["nnz"]:
        raise SystemExit(f"collection has {rec['n_obs']} rows / {rec['nnz']} nnz, input {in_meta['n_obs']} / {in_meta['nnz']}")
    stored = sum(f.stat().st_size for f in dir_files(tmp))
    meta = {
        "prep_version": PREP_VERSION,
        "input": str(inp),
        "input_spec": in_meta.get("spec"),
        "input_x_uncompressed_bytes": in_meta.get("x_uncompressed_bytes"),
        "input_x_stored_bytes": in_meta.get("x_stored_bytes"),
        "input_cache": a.input_cache,
        "params": {
            "dataset_size": a.dataset_size, "n_obs_per_chunk": a.n_obs_per_chunk, "shard_size": a.shard_size,
            "shuffle_chunk_size": a.shuffle_chunk_size, "shuffle_seed": a.shuffle_seed,
        },
        **rec,
        "process_wall_s": total,
        "stored_bytes": stored,
        "versions": _versions(),
        "machine": {"nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return out, meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_spec_args(p)
    p.add_argument("--dataset-size", default="20GB",
                   help="rows (or size string) per dataset_i, annbatch's dataset_size (default %(default)s = annbatch's default)")
    p.add_argument("--n-obs-per-chunk", type=int, default=64, help="annbatch n_obs_per_chunk (default %(default)s)")
    p.add_argument("--shard-size", default="1GB", help="annbatch shard_size (default %(default)s)")
    p.add_argument("--shuffle-chunk-size", type=int, default=1000, help="annbatch shuffle_chunk_size (default %(default)s)")
    p.add_argument("--shuffle-seed", type=int, default=0)
    p.add_argument("--input-cache", choices=["cold", "warm"], default="cold")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--tmp-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a)
    spec = spec_from_args(a)
    log = lambda *m: print(*m, file=sys.stderr, flush=True)  # noqa: E731
    path, meta = ensure_collection(spec, a, log=log)
    print(json.dumps({"path": str(path), **{k: v for k, v in meta.items() if k != "datasets"}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
