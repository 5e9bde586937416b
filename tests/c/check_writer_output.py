"""Check a collection written by test_writer.c with anndata and zarr-python.

Usage: check_writer_output.py COLLECTION_DIR
(run by test_writer when the repository's .venv exists; ANS_TEST_WRITER_OUT=<dir> keeps the
collection for a manual run.)

Opens the root with zarr (attributes, consolidated metadata, children), then reads every dataset
with anndata.read_zarr and compares every value with the generator below, which mirrors
write_dataset() in test_writer.c. When annbatch is importable (Python >= 3.12), its
DatasetCollection + Loader also stream the collection (sequential and shuffled) and every batch
is compared. Exit status 0 when everything matches.
"""
import sys
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import zarr

N_VARS = 50


def ds_rows(d):
    return 150 + 37 * d


def expected(d):
    n = ds_rows(d)
    i = np.arange(n)[:, None]
    j = np.arange(N_VARS)[None, :]
    nz = ((i * 7 + j * 3 + d) % 5 == 0) & (i % 11 != 3)
    X = np.where(nz, ((d * 100000 + i * 100 + j) * 0.5).astype(np.float32), 0).astype(np.float32)
    q = np.arange(6)[None, :]
    emb = (d * 10000 + i * 6 + q).astype(np.float32) + np.float32(0.25)
    emb[16:48] = 0
    emb = emb.reshape(n, 3, 2)
    counts = (((i + j + d) % 7) - 3).astype(np.int16)
    r = np.arange(n)
    codes = np.where(r % 4 == 3, -1, r % 3)
    obs = pd.DataFrame(
        {
            "f": r * 0.25 + d,
            "cat": pd.Categorical.from_codes(codes, ["c00", "c01", "c02"]),
            "ni": pd.array([None if k % 5 == 0 else k - 70 for k in r], dtype="Int32"),
            "nb": pd.array([None if k % 7 == 0 else bool(k % 2) for k in r], dtype="boolean"),
            "s": np.array(["" if k % 9 == 0 else f"s{d}_{k}" for k in r], dtype=object),
            "src": pd.Categorical.from_codes(r // 100 % 2, [f"src{d}_0", f"src{d}_1"], ordered=True),
        },
        index=[f"cell_{d}_{k}" for k in r],
    )
    var_index = [f"gene_0_{k}" for k in range(N_VARS)]
    return X, emb, counts, obs, var_index


def check_dataset(path, d):
    a = ad.read_zarr(path)
    X, emb, counts, obs, var_index = expected(d)
    assert a.shape == X.shape, (a.shape, X.shape)
    import scipy.sparse as sp

    assert sp.issparse(a.X) and a.X.format == "csr", type(a.X)
    assert a.X.dtype == np.float32
    np.testing.assert_array_equal(a.X.toarray(), X)
    np.testing.assert_array_equal(a.obsm["emb"], emb)
    assert a.layers["counts"].dtype == np.int16
    np.testing.assert_array_equal(a.layers["counts"], counts)
    assert list(a.obs.columns) == list(obs.columns), list(a.obs.columns)
    assert list(a.obs.index) == list(obs.index)
    assert list(a.var.index) == var_index
    np.testing.assert_array_equal(a.obs["f"].to_numpy(), obs["f"].to_numpy())
    assert a.obs["cat"].dtype == obs["cat"].dtype, (a.obs["cat"].dtype, obs["cat"].dtype)
    assert a.obs["cat"].cat.codes.tolist() == obs["cat"].cat.codes.tolist()
    assert str(a.obs["ni"].dtype) == "Int32", a.obs["ni"].dtype
    assert a.obs["ni"].isna().tolist() == obs["ni"].isna().tolist()
    assert a.obs["ni"].dropna().tolist() == obs["ni"].dropna().tolist()
    assert str(a.obs["nb"].dtype) == "boolean", a.obs["nb"].dtype
    assert a.obs["nb"].isna().tolist() == obs["nb"].isna().tolist()
    assert a.obs["nb"].dropna().tolist() == obs["nb"].dropna().tolist()
    assert a.obs["s"].tolist() == obs["s"].tolist()
    assert a.obs["src"].dtype == obs["src"].dtype, (a.obs["src"].dtype, obs["src"].dtype)
    assert a.obs["src"].tolist() == obs["src"].tolist()
    return a


def main():
    root = sys.argv[1]
    warnings.simplefilter("ignore")
    g = zarr.open_group(root, mode="r")
    assert dict(g.attrs) == {
        "encoding-type": "annbatch-preshuffled",
        "encoding-version": "0.1.0",
    }, dict(g.attrs)
    assert g.metadata.consolidated_metadata is not None, "no consolidated metadata"
    names = sorted(k for k, _ in g.groups())
    n = len(names)
    assert names == sorted(f"dataset_{i}" for i in range(n)) and n > 0, names
    for d in range(n):
        a = check_dataset(f"{root}/dataset_{d}", d)
        # also through the root's consolidated metadata: the group object anndata's reader takes
        b = ad.io.read_elem(g[f"dataset_{d}"]) if hasattr(ad, "io") else None
        if b is not None:
            assert b.shape == a.shape
            np.testing.assert_array_equal(b.X.toarray(), a.X.toarray())
        print(f"dataset_{d}: {a.n_obs} x {a.n_vars} OK (anndata {ad.__version__})")
    try:
        import annbatch
    except ImportError:
        annbatch = None
    if annbatch is not None:
        import scipy.sparse as sp

        full = sp.vstack([sp.csr_matrix(expected(d)[0]) for d in range(n)]).toarray()
        for shuffle in (False, True):
            loader = annbatch.Loader(
                chunk_size=16, preload_nchunks=4, batch_size=16, shuffle=shuffle, to=None,
                return_index=True, **({"rng": np.random.default_rng(0)} if shuffle else {}),
            )
            loader.use_collection(annbatch.DatasetCollection(root))
            seen = 0
            for b in loader:
                np.testing.assert_array_equal(b["X"].toarray(), full[b["index"]])
                seen += len(b["index"])
            assert seen == full.shape[0], (seen, full.shape)
        print(f"annbatch {annbatch.__version__}: Loader over the collection matches")
    print(f"check_writer_output: {n} datasets match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
