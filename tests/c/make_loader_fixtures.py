#!/usr/bin/env python3
"""Write the AnnData stores of tests/c/test_loader.c with the real anndata (0.12) and zarr (3.x).

usage: make_loader_fixtures.py OUTDIR

Three stores hold consecutive stretches of one "global" matrix; the C test concatenates them in the
order a, b, c and checks every batch row against its global index g:
  a.zarr   zarr v3, sharded (anndata's auto_shard_zarr_v3), rows g in [0, 300)
  b.h5ad   HDF5, rows g in [300, 470)
  c.zarr   zarr v2, rows g in [470, 700)
  broken.zarr  a copy of c.zarr (zarr v2) whose X/data chunk 3 is truncated to 5 bytes
  othervar.zarr  10 rows, var name 17 is "other" (zarr v2)
  manifest.txt one line: "rows 300 170 230 vars 50"

Content (n_vars = 50, var names g0..g49 in every store):
  X        CSR float32; row g holds g % 5 values at the sorted columns (g + 11 j) % 50, j < g % 5,
           each value g * 1000 + column (exact in float32 for g < 16000)
  obsm/emb dense float64 (n, 2, 3); emb[g, a, b] = g * 100 + a * 3 + b
Small chunks (X/data: 64 values, rows: 32) so that loads touch many chunks.
"""

import os
import sys
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

import anndata as ad

warnings.filterwarnings("ignore")

N_VARS = 50
SIZES = (300, 170, 230)


def make(start, n):
    indptr = [0]
    indices = []
    data = []
    for g in range(start, start + n):
        cols = sorted((g + 11 * j) % N_VARS for j in range(g % 5))
        indices.extend(cols)
        data.extend(g * 1000 + c for c in cols)
        indptr.append(len(indices))
    x = sp.csr_matrix(
        (np.asarray(data, np.float32), np.asarray(indices, np.int32), np.asarray(indptr, np.int64)),
        shape=(n, N_VARS),
    )
    g = np.arange(start, start + n, dtype=np.float64)
    emb = g[:, None, None] * 100 + (np.arange(2)[None, :, None] * 3 + np.arange(3)[None, None, :])
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(start, start + n)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(N_VARS)])
    return ad.AnnData(X=x, obs=obs, var=var, obsm={"emb": emb})


def write_zarr(adata, path, sparse_kw, dense_kw):
    """Write with anndata, then rewrite X and obsm/emb with small chunks (and shards)."""
    import zarr

    adata.write_zarr(path)
    root = zarr.open_group(path, mode="r+", use_consolidated=False)
    del root["X"]
    ad.io.write_elem(root, "X", adata.X, dataset_kwargs=sparse_kw)
    del root["obsm"]["emb"]
    ad.io.write_elem(root["obsm"], "emb", adata.obsm["emb"], dataset_kwargs=dense_kw)
    zarr.consolidate_metadata(path)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    starts = np.concatenate([[0], np.cumsum(SIZES)[:-1]])
    a, b, c = (make(int(s), n) for s, n in zip(starts, SIZES))

    ad.settings.zarr_write_format = 3
    write_zarr(a, os.path.join(out, "a.zarr"), {"chunks": (64,), "shards": (256,)},
               {"chunks": (32, 2, 3), "shards": (128, 2, 3)})
    b.write_h5ad(os.path.join(out, "b.h5ad"))
    ad.settings.zarr_write_format = 2
    for name in ("c.zarr", "broken.zarr"):
        write_zarr(c, os.path.join(out, name), {"chunks": (64,)}, {"chunks": (32, 2, 3)})
    # Same n_vars, one var name changed.
    d = make(0, 10)
    d.var_names = [f"g{j}" if j != 17 else "other" for j in range(N_VARS)]
    d.write_zarr(os.path.join(out, "othervar.zarr"))
    # The X/data chunk files of broken.zarr: truncate the fourth one.
    ddir = os.path.join(out, "broken.zarr", "X", "data")
    names = sorted((f for f in os.listdir(ddir) if f[0].isdigit()), key=lambda s: int(s))
    victim = os.path.join(ddir, names[min(3, len(names) - 1)])
    with open(victim, "r+b") as f:
        f.truncate(5)
    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.write("rows %d %d %d vars %d\n" % (SIZES + (N_VARS,)))


if __name__ == "__main__":
    main()
