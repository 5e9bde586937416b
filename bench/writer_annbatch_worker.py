#!/usr/bin/env python3
"""annbatch side of the writer benchmark (bench/writer_bench.py); runs in .bench-annbatch-venv.

    .bench-annbatch-venv/bin/python bench/writer_annbatch_worker.py write OUT.zarr IN.h5ad... \
        --dataset-size 2GB --seed 0
        annbatch.DatasetCollection(OUT, mode="w").add_adatas(INPUTS, dataset_size=..., shuffle=True,
        rng=default_rng(seed)) with the zarrs codec pipeline; prints one JSON line (wall s, ru_maxrss,
        the rows per dataset annbatch derived from a size string).
    .bench-annbatch-venv/bin/python bench/writer_annbatch_worker.py check COLLECTION.zarr [--read-one] [--loader]
        rows / nnz / var of every dataset (from indptr and var/_index), optionally anndata.read_zarr
        of the last dataset and one annbatch Loader batch; prints one JSON line.

Each mode is meant to run in its own fresh process (the orchestrator measures peak RSS with wait4).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from annbatch_worker import enable_zarrs  # noqa: E402  (stdlib-only module of the loader benchmark)


def _size(s: str):
    return int(s) if s.isdigit() else s


def write(a) -> int:
    pipeline = enable_zarrs()
    import annbatch
    import numpy as np

    rows_for_size = None
    if isinstance(_size(a.dataset_size), str):
        # the same estimate annbatch makes internally (reported only)
        from annbatch import io as abio
        from humanfriendly import parse_size

        bpr = abio._validate_anndatas_and_maybe_get_bytes_per_row(
            a.inputs, load_adata=abio._default_load_adata, estimate_bytes_per_obs_row=True
        )
        rows_for_size = {"bytes_per_row": bpr, "rows": max(1, int(parse_size(a.dataset_size, binary=True) / bpr))}
    t0 = time.perf_counter()
    coll = annbatch.DatasetCollection(a.out, mode="w")
    coll.add_adatas(
        a.inputs,
        dataset_size=_size(a.dataset_size),
        shuffle=True,
        rng=np.random.default_rng(a.seed),
    )
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "wall_s": wall, "peak_rss_mib": ru.ru_maxrss / 1024, "cpu_user_s": ru.ru_utime, "cpu_sys_s": ru.ru_stime,
        "codec_pipeline": pipeline, "dataset_size_arg": a.dataset_size, "rows_for_size": rows_for_size,
    }), flush=True)
    return 0


def check(a) -> int:
    enable_zarrs()
    import anndata as ad
    import numpy as np
    import zarr

    g = zarr.open_group(a.collection, mode="r")
    keys = sorted((k for k in g.group_keys() if k.startswith("dataset_")), key=lambda k: int(k.split("_")[1]))
    out = {"root_attrs": dict(g.attrs), "datasets": []}
    var0 = None
    rows = nnz = 0
    for k in keys:
        X = g[k]["X"]
        ip = X["indptr"]
        n = ip.shape[0] - 1
        last = int(ip[n])
        var = ad.io.read_elem(g[k]["var"])
        if var0 is None:
            var0 = var
        out["datasets"].append({"key": k, "n_obs": n, "nnz": last, "n_var": len(var),
                                "var_same_as_first": bool(var.index.equals(var0.index)),
                                "indices_dtype": str(X["indices"].dtype), "X_attrs_shape": X.attrs.get("shape")})
        rows += n
        nnz += last
    out.update(n_datasets=len(keys), n_obs=rows, nnz=nnz, n_var=len(var0) if var0 is not None else None)
    if var0 is not None:
        names = var0.index.astype(str)
        nums = np.array([int(s.split("_")[1]) for s in names if s.startswith("gene_")])
        out["var_gene_range"] = [int(nums.min()), int(nums.max())] if nums.size else None
        out["var_unique"] = bool(names.is_unique)
        out["var_sorted_numeric"] = bool(np.all(np.diff(nums) > 0)) if nums.size == len(names) else None
    if a.read_one and keys:
        t0 = time.perf_counter()
        adata = ad.read_zarr(Path(a.collection) / keys[-1])
        out["read_one"] = {"key": keys[-1], "shape": list(adata.shape), "X_type": type(adata.X).__name__,
                           "nnz": int(adata.X.nnz), "obs_columns": list(adata.obs.columns),
                           "obs_dtypes": {c: str(t) for c, t in adata.obs.dtypes.items()},
                           "x_sum": float(adata.X.data.sum(dtype=np.float64)), "indices_dtype": str(adata.X.indices.dtype), "seconds": time.perf_counter() - t0}
        del adata
    if a.deep and keys:
        out["deep"] = deep_check(g, keys, a.deep)
    if a.loader:
        import annbatch

        t0 = time.perf_counter()
        coll = annbatch.DatasetCollection(a.collection, mode="r")
        loader = annbatch.Loader(chunk_size=32, preload_nchunks=32, batch_size=1024, shuffle=True, to=None,
                                 preload_to_gpu=False, rng=np.random.default_rng(0))
        loader.use_collection(coll)
        b = next(iter(loader))
        X = b["X"]
        out["loader"] = {"n_obs": loader.n_obs, "n_var": loader.n_var, "first_batch_shape": list(X.shape),
                         "first_batch_nnz": int(X.nnz), "seconds": time.perf_counter() - t0}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out), flush=True)
    return 0


def deep_check(g, keys, inputs: list[str], n_sample: int = 300) -> dict:
    """Sum of X/data over all datasets, and n_sample random rows of every dataset compared, gene by
    gene (by name), with the input row named by obs_names (inputs named in<i>_cell_<r> by writer_bench)."""
    import anndata as ad
    import h5py
    import numpy as np

    t0 = time.perf_counter()
    files = [h5py.File(p, "r") for p in inputs]
    in_var = [np.asarray(ad.io.read_elem(f["var"]).index.astype(str)) for f in files]
    in_ip = [f["X"]["indptr"][:] for f in files]
    rng = np.random.default_rng(1)
    total = 0.0
    checked = bad = 0
    for k in keys:
        X = g[k]["X"]
        data = X["data"][:]
        total += float(data.sum(dtype=np.float64))
        ip = X["indptr"][:]
        ind = X["indices"][:]
        names = np.asarray(ad.io.read_elem(g[k]["var"]).index.astype(str))
        obs_names = np.asarray(ad.io.read_elem(g[k]["obs"]).index.astype(str))
        for r in rng.choice(ip.size - 1, size=min(n_sample, ip.size - 1), replace=False):
            nm = obs_names[r]
            i = int(nm.split("_")[0].removeprefix("in").split("-")[0])
            row = int(nm.split("_cell_")[1].split("-")[0])
            a0, a1 = ip[r], ip[r + 1]
            got = dict(zip(names[ind[a0:a1]], data[a0:a1]))
            b0, b1 = in_ip[i][row], in_ip[i][row + 1]
            xi = files[i]["X"]
            want = dict(zip(in_var[i][xi["indices"][b0:b1]], xi["data"][b0:b1]))
            checked += 1
            bad += got != want
        del data, ind
    for f in files:
        f.close()
    return {"x_sum": total, "rows_checked": checked, "rows_mismatched": bad, "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    w = sub.add_parser("write")
    w.add_argument("out")
    w.add_argument("inputs", nargs="+")
    w.add_argument("--dataset-size", default="2GB")
    w.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("check")
    c.add_argument("collection")
    c.add_argument("--read-one", action="store_true")
    c.add_argument("--loader", action="store_true")
    c.add_argument("--deep", nargs="+", metavar="INPUT", help="the inputs (in order): sum of X and 300 rows per dataset compared")
    a = p.parse_args(argv)
    return write(a) if a.mode == "write" else check(a)


if __name__ == "__main__":
    sys.exit(main())
