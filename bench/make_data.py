#!/usr/bin/env python3
"""Synthetic single-cell-like AnnData stores for the annstream benchmarks.

The store is an AnnData zarr v3 store whose X is a CSR matrix written the way annbatch's
``write_sharded`` writes one: ``X/data``, ``X/indices`` and ``X/indptr`` are 1-d sharded arrays,
compressed with Blosc(cname="lz4", clevel=3, shuffle="shuffle").  obs and var are written by anndata.

The matrix mimics UMI counts: every cell draws a library size (log-normal), then samples that many
UMIs from a Zipf-like gene profile of one of a few "cell types" (multinomial sampling, so most counts
are 1 and highly expressed genes get large counts).  Per-row indices are sorted and unique; data are
float32 small positive integers; indices int32; indptr int64.  With the defaults a cell has ~1.5-1.8k
non-zeros (the exact numbers are recorded in the store's ``bench_meta.json``).

Generation runs in blocks of rows, so memory stays bounded by about one shard of data + indices.
Each block has its own seeded generator, so a store is a pure function of its parameters.  Stores
are cached under ``bench/data/`` in a directory named after the parameters and reused if present.

Library use (the loader and writer benchmarks reuse this):

    from make_data import Spec, ensure_store
    path, meta = ensure_store(Spec(n_obs=150_000))

CLI:

    python bench/make_data.py                      # default 1.8 GB (uncompressed) store, cached
    python bench/make_data.py --n-obs 2000 --verify  # small store, checked with anndata.read_zarr
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = BENCH_DIR / "data"
META_NAME = "bench_meta.json"
FORMAT_VERSION = 1  # bump when the generator's output changes, so cached stores are not reused

# Nominal non-zeros per cell, used to turn "rows per inner chunk" into a chunk size in elements.
NOMINAL_NNZ_PER_ROW = 1536
N_CELL_TYPES = 8


@dataclasses.dataclass(frozen=True)
class Spec:
    """Parameters of a synthetic store. Everything that changes the bytes on disk is in here."""

    n_obs: int = 150_000
    n_vars: int = 20_000
    seed: int = 0
    zipf_a: float = 1.0  # gene popularity ~ rank**-zipf_a
    mean_umis: float = 4000.0  # median library size (log-normal, sigma 0.5)
    chunk_rows: int = 64  # inner chunk = chunk_rows * NOMINAL_NNZ_PER_ROW elements (annbatch style)
    shard_mib: int = 256  # shard size of data (float32) in MiB; indices have the same element count
    cname: str = "lz4"
    clevel: int = 3
    shuffle: str = "shuffle"
    block_rows: int = 4096  # generation block; part of the spec because blocks are seeded separately

    @property
    def chunk_elems(self) -> int:
        return self.chunk_rows * NOMINAL_NNZ_PER_ROW

    @property
    def shard_elems(self) -> int:
        per_shard = max(1, (self.shard_mib * 2**20 // 4) // self.chunk_elems)
        return per_shard * self.chunk_elems

    def key(self) -> str:
        """Directory name of the cached store."""
        parts = [
            f"csr_v{FORMAT_VERSION}",
            f"n{self.n_obs}",
            f"g{self.n_vars}",
            f"s{self.seed}",
            f"z{self.zipf_a:g}",
            f"u{self.mean_umis:g}",
            f"c{self.chunk_rows}",
            f"sh{self.shard_mib}",
            f"{self.cname}{self.clevel}{self.shuffle[:3]}",
            f"b{self.block_rows}",
        ]
        return "_".join(parts) + ".zarr"


# --------------------------------------------------------------------------------------------------
# Generation


def _profiles(spec: Spec) -> np.ndarray:
    """Cumulative gene distributions, one row per cell type (float64, shape (types, n_vars))."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0xC0FFEE]))
    base = np.arange(1, spec.n_vars + 1, dtype=np.float64) ** -spec.zipf_a
    base = base[rng.permutation(spec.n_vars)]
    cdfs = np.empty((N_CELL_TYPES, spec.n_vars))
    for t in range(N_CELL_TYPES):
        p = base * rng.lognormal(0.0, 1.0, spec.n_vars)
        cdfs[t] = np.cumsum(p / p.sum())
        cdfs[t, -1] = 1.0
    return cdfs


def generate_block(spec: Spec, block: int, cdfs: np.ndarray | None = None):
    """Rows [block*block_rows, ...) of the matrix.

    Returns (row_nnz int64[rows], indices int32[nnz], data float32[nnz], cell_type int8[rows],
    total_counts int64[rows]).  Deterministic in (spec, block).
    """
    if cdfs is None:
        cdfs = _profiles(spec)
    start = block * spec.block_rows
    rows = min(spec.block_rows, spec.n_obs - start)
    if rows <= 0:
        raise IndexError(block)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 1, block]))
    cell_type = rng.integers(0, N_CELL_TYPES, rows).astype(np.int8)
    lib = np.maximum(200, rng.lognormal(np.log(spec.mean_umis), 0.5, rows)).astype(np.int64)
    row_of = np.repeat(np.arange(rows, dtype=np.int64), lib)
    u = rng.random(row_of.size)
    genes = np.empty(row_of.size, dtype=np.int64)
    type_of = np.repeat(cell_type, lib)
    for t in range(N_CELL_TYPES):
        m = type_of == t
        genes[m] = np.searchsorted(cdfs[t], u[m], side="right")
    np.minimum(genes, spec.n_vars - 1, out=genes)
    keys = row_of * spec.n_vars + genes
    keys.sort()
    first = np.empty(keys.size, dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    uniq = keys[starts]
    counts = np.diff(np.append(starts, keys.size))
    r = uniq // spec.n_vars
    indices = (uniq - r * spec.n_vars).astype(np.int32)
    data = counts.astype(np.float32)
    row_nnz = np.bincount(r, minlength=rows).astype(np.int64)
    return row_nnz, indices, data, cell_type, lib


def n_blocks(spec: Spec) -> int:
    return -(-spec.n_obs // spec.block_rows)


def generate_csr(spec: Spec):
    """The whole matrix in memory as a scipy csr_matrix (for small specs and verification)."""
    import scipy.sparse as sp

    cdfs = _profiles(spec)
    nnz, ind, dat = [], [], []
    for b in range(n_blocks(spec)):
        row_nnz, indices, data, _, _ = generate_block(spec, b, cdfs)
        nnz.append(row_nnz)
        ind.append(indices)
        dat.append(data)
    indptr = np.zeros(spec.n_obs + 1, dtype=np.int64)
    np.cumsum(np.concatenate(nnz), out=indptr[1:])
    return sp.csr_matrix((np.concatenate(dat), np.concatenate(ind), indptr), shape=(spec.n_obs, spec.n_vars))


# --------------------------------------------------------------------------------------------------
# Writing


def _compressors(spec: Spec):
    import zarr

    return (zarr.codecs.BloscCodec(cname=spec.cname, clevel=spec.clevel, shuffle=spec.shuffle),)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_store(path: str | os.PathLike, spec: Spec, *, log=None) -> dict:
    """Write the store for `spec` at `path` (replacing it). Returns the metadata dict."""
    import anndata as ad
    import pandas as pd
    import zarr

    log = log or (lambda *a: None)
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    t0 = time.perf_counter()
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    X = root.create_group("X")
    comp = _compressors(spec)
    S, C = spec.shard_elems, spec.chunk_elems
    data_arr = X.create_array("data", shape=(0,), dtype="float32", chunks=(C,), shards=(S,), compressors=comp, fill_value=0)
    ind_arr = X.create_array("indices", shape=(0,), dtype="int32", chunks=(C,), shards=(S,), compressors=comp, fill_value=0)

    buf_data = np.empty(S, dtype=np.float32)
    buf_ind = np.empty(S, dtype=np.int32)
    fill = 0  # elements in the buffers
    written = 0  # elements written to the arrays (always a multiple of S until the tail)
    row_nnz_all = np.empty(spec.n_obs, dtype=np.int64)
    cell_type_all = np.empty(spec.n_obs, dtype=np.int8)
    counts_all = np.empty(spec.n_obs, dtype=np.int64)
    data_sum = 0.0

    def flush(n: int) -> None:
        nonlocal written
        end = written + n
        data_arr.resize((end,))
        ind_arr.resize((end,))
        data_arr[written:end] = buf_data[:n]
        ind_arr[written:end] = buf_ind[:n]
        written = end

    cdfs = _profiles(spec)
    nb = n_blocks(spec)
    for b in range(nb):
        row_nnz, indices, data, cell_type, lib = generate_block(spec, b, cdfs)
        r0 = b * spec.block_rows
        row_nnz_all[r0 : r0 + row_nnz.size] = row_nnz
        cell_type_all[r0 : r0 + row_nnz.size] = cell_type
        counts_all[r0 : r0 + row_nnz.size] = lib
        data_sum += float(data.sum(dtype=np.float64))
        pos = 0
        while pos < indices.size:
            take = min(S - fill, indices.size - pos)
            buf_data[fill : fill + take] = data[pos : pos + take]
            buf_ind[fill : fill + take] = indices[pos : pos + take]
            fill += take
            pos += take
            if fill == S:
                flush(S)
                fill = 0
        if b % 8 == 7 or b == nb - 1:
            log(f"  generated {r0 + row_nnz.size}/{spec.n_obs} rows, {written + fill} nnz ({time.perf_counter() - t0:.0f} s)")
    if fill:
        flush(fill)
    del buf_data, buf_ind

    indptr = np.zeros(spec.n_obs + 1, dtype=np.int64)
    np.cumsum(row_nnz_all, out=indptr[1:])
    nnz = int(indptr[-1])
    assert nnz == written
    ic = min(C, spec.n_obs + 1)
    ip = X.create_array(
        "indptr", shape=(spec.n_obs + 1,), dtype="int64", chunks=(ic,), shards=(-(-(spec.n_obs + 1) // ic) * ic,),
        compressors=comp, fill_value=0,
    )
    ip[:] = indptr
    X.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [spec.n_obs, spec.n_vars]})

    types = np.array([f"type_{t}" for t in range(N_CELL_TYPES)])
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(cell_type_all, categories=types),
            "total_counts": counts_all,
            "n_genes": row_nnz_all,
        },
        index=pd.Index([f"cell_{i:07d}" for i in range(spec.n_obs)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene_{j:05d}" for j in range(spec.n_vars)]))
    with ad.settings.override(zarr_write_format=3):
        ad.io.write_elem(root, "obs", obs)
        ad.io.write_elem(root, "var", var)
        for k in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            ad.io.write_elem(root, k, {})
    root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec"
        zarr.consolidate_metadata(str(path))

    meta = {
        "format_version": FORMAT_VERSION,
        "spec": dataclasses.asdict(spec),
        "chunk_elems": C,
        "shard_elems": S,
        "n_obs": spec.n_obs,
        "n_vars": spec.n_vars,
        "nnz": nnz,
        "nnz_per_row_mean": nnz / spec.n_obs,
        "data_sum": data_sum,
        "x_uncompressed_bytes": nnz * (4 + 4) + (spec.n_obs + 1) * 8,
        "x_stored_bytes": _dir_bytes(path / "X"),
        "n_shards_data": -(-nnz // S),
        "write_seconds": time.perf_counter() - t0,
    }
    (path / META_NAME).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def read_meta(path: str | os.PathLike) -> dict | None:
    p = Path(path) / META_NAME
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return None


def ensure_store(spec: Spec, data_dir: str | os.PathLike | None = None, *, log=None) -> tuple[Path, dict]:
    """Path and metadata of the cached store for `spec`, writing it first if it is missing.

    The metadata file is written last, so a store without it (an interrupted run) is rebuilt.
    """
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / spec.key()
    meta = read_meta(path)
    if meta is not None and meta.get("spec") == dataclasses.asdict(spec) and meta.get("format_version") == FORMAT_VERSION:
        return path, meta
    tmp = data_dir / (spec.key() + f".tmp{os.getpid()}")
    (log or (lambda *a: None))(f"writing {path} ...")
    meta = write_store(tmp, spec, log=log)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path, meta


def verify_store(path: str | os.PathLike, spec: Spec) -> None:
    """Check with anndata.read_zarr that the store reads back as the generated matrix (small specs)."""
    import anndata as ad

    a = ad.read_zarr(str(path))
    expected = generate_csr(spec)
    assert a.shape == (spec.n_obs, spec.n_vars), a.shape
    X = a.X
    assert X.format == "csr", type(X)
    assert X.dtype == np.float32, X.dtype
    assert np.array_equal(X.indptr, expected.indptr)
    assert np.array_equal(X.indices, expected.indices)
    assert np.array_equal(X.data, expected.data)
    assert a.obs["n_genes"].to_numpy().tolist() == np.diff(expected.indptr).tolist()
    assert a.obs_names[0] == "cell_0000000" and a.var_names[-1] == f"gene_{spec.n_vars - 1:05d}"
    assert all(np.all(np.diff(expected.indices[expected.indptr[i] : expected.indptr[i + 1]]) > 0) for i in range(min(50, spec.n_obs)))


# --------------------------------------------------------------------------------------------------
# CLI


def add_spec_args(p: argparse.ArgumentParser) -> None:
    d = Spec()
    p.add_argument("--n-obs", type=int, default=d.n_obs, help="cells (default %(default)s)")
    p.add_argument("--n-vars", type=int, default=d.n_vars, help="genes (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--mean-umis", type=float, default=d.mean_umis, help="median UMIs per cell (default %(default)s)")
    p.add_argument("--chunk-rows", type=int, default=d.chunk_rows,
                   help=f"inner chunk size in rows' worth of non-zeros ({NOMINAL_NNZ_PER_ROW} per row; default %(default)s)")
    p.add_argument("--shard-mib", type=int, default=d.shard_mib, help="shard size of X/data in MiB (default %(default)s)")
    p.add_argument("--clevel", type=int, default=d.clevel, help="blosc lz4 level (default %(default)s)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="cache directory (default bench/data)")


def spec_from_args(a: argparse.Namespace) -> Spec:
    return Spec(n_obs=a.n_obs, n_vars=a.n_vars, seed=a.seed, mean_umis=a.mean_umis, chunk_rows=a.chunk_rows,
                shard_mib=a.shard_mib, clevel=a.clevel)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_spec_args(p)
    p.add_argument("--verify", action="store_true", help="read the store back with anndata.read_zarr and compare")
    p.add_argument("--force", action="store_true", help="rewrite even if cached")
    a = p.parse_args(argv)
    spec = spec_from_args(a)
    log = lambda *m: print(*m, file=sys.stderr, flush=True)  # noqa: E731
    if a.force:
        shutil.rmtree(Path(a.data_dir) / spec.key(), ignore_errors=True)
    path, meta = ensure_store(spec, a.data_dir, log=log)
    if a.verify:
        verify_store(path, spec)
        log("verified with anndata.read_zarr")
    print(json.dumps({"path": str(path), **meta}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
