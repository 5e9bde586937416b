"""The demo: write a small single-cell-like AnnData store with anndata, show it with `annstream info`,
and read rows with annstream, checking them against anndata's own reading."""

import os
import shutil
import subprocess
import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import annstream


def make_demo(n_obs=20_000, n_vars=2_000, seed=0):
    rng = np.random.default_rng(seed)
    # Skewed gene usage: a few genes are common, most are rare (like real counts).
    p = 1.0 / np.arange(1, n_vars + 1) ** 0.8
    p /= p.sum()
    nnz_per_row = rng.integers(50, 300, n_obs)
    indptr = np.concatenate([[0], np.cumsum(nnz_per_row)])
    indices = np.empty(indptr[-1], dtype=np.int32)
    for i in range(n_obs):
        cols = rng.choice(n_vars, nnz_per_row[i], replace=False, p=p)
        indices[indptr[i]:indptr[i + 1]] = np.sort(cols)
    data = rng.poisson(2.0, indptr[-1]).astype(np.float32) + 1
    X = sp.csr_matrix((data, indices, indptr), shape=(n_obs, n_vars))
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["T cell", "B cell", "NK", "monocyte"], n_obs)),
            "n_counts": np.asarray(X.sum(axis=1)).ravel(),
            "batch": pd.array(rng.integers(0, 4, n_obs), dtype="Int64"),
        },
        index=[f"cell_{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame(index=[f"gene_{j}" for j in range(n_vars)])
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["X_pca"] = rng.standard_normal((n_obs, 16)).astype(np.float32)
    return adata


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "demo.zarr")
    shutil.rmtree(path, ignore_errors=True)
    adata = make_demo()
    adata.write_zarr(path)
    print(f"wrote {path}: {adata.n_obs} cells x {adata.n_vars} genes, nnz {adata.X.nnz}\n")

    cli = shutil.which("annstream") or os.path.join(os.path.dirname(sys.executable), "annstream")
    subprocess.run([cli, "info", path], check=True)

    with annstream.open(path) as store:
        print(f"\nannstream.open: {store.n_obs} obs x {store.n_vars} vars, elements {store.keys()}")
        rows = np.random.default_rng(1).choice(store.n_obs, 4096, replace=False)
        t0 = time.perf_counter()
        got = store["X"].read_rows(rows)
        dt = time.perf_counter() - t0
        ref = adata.X[rows]
        assert (got != ref).nnz == 0, "annstream and anndata disagree"
        print(f"read 4096 scattered rows of X in {dt * 1e3:.1f} ms: {got.shape} {got.dtype}, "
              f"nnz {got.nnz}, equal to anndata's")
        obs = store.read_obs(["cell_type", "batch"])
        print(obs.head())

    # One shuffled training epoch with the loader: exactly once per row, checked by index.
    loader = annstream.Loader(path, batch_size=1024, chunk_size=32, preload_nchunks=64,
                              obs=["cell_type"], return_index=True, seed=0)
    seen = np.zeros(loader.n_obs, dtype=np.int64)
    t0 = time.perf_counter()
    for batch in loader:
        seen[batch["index"]] += 1
        labels = batch["obs"]["cell_type"]
    dt = time.perf_counter() - t0
    assert (seen == 1).all(), "every row exactly once per epoch"
    print(f"\nLoader: one shuffled epoch of {loader.n_obs} cells in {len(loader)} batches, "
          f"{loader.n_obs / dt:,.0f} cells/s; last batch {batch['X'].shape}, "
          f"labels {labels.cat.categories.tolist()}")
    loader.close()
    print("\ndemo ok")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/demo")
