"""Test stores written by the real anndata / zarr / h5py, and the expected answers read back by anndata.

Every store is built from a deterministic AnnData (see ``SPECS``) and written into each of the
containers in ``CONTAINERS``:

- ``zarr2``          zarr v2 (anndata ``zarr_write_format=2``), small chunks (several per array)
- ``zarr3``          zarr v3 without sharding, small chunks
- ``zarr3-sharded``  zarr v3 with ``sharding_indexed``: shards of several small inner chunks
- ``h5ad``           plain .h5ad (contiguous dense datasets, chunked sparse datasets)
- ``h5ad-gzip``      .h5ad with ``compression="gzip"``

The element keys and the frame columns of every spec are known before anything is written, so that
the tests can be parametrised at collection time.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

CONTAINERS = ("zarr2", "zarr3", "zarr3-sharded", "h5ad", "h5ad-gzip")

# chunking used for the zarr containers: rows per (inner) chunk, and inner chunks per shard
ROW_CHUNK = 8
ONE_D_CHUNK = 16
SHARD_FACTOR = 4


@dataclass(frozen=True)
class Spec:
    name: str
    build: Callable[[], ad.AnnData]
    keys: tuple[str, ...]  # row-aligned elements, as annstream lists them
    n_obs: int
    min_index_dtype: bool = False
    has_raw: bool = False
    obs_columns: tuple[str, ...] = field(default=())
    var_columns: tuple[str, ...] = field(default=())


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _sparse(rng, n, m, density, dtype, fmt="csr", explicit_zero=True):
    mat = sp.random(n, m, density=density, format="csr", random_state=rng, dtype=np.float64)
    mat.data = np.round(mat.data * 100) - 20  # small integers, some negative
    if np.dtype(dtype).kind == "u":
        mat.data = np.abs(mat.data)
    if explicit_zero and mat.nnz > 3:
        mat.data[3] = 0  # an explicitly stored zero must survive the round trip
    mat = mat.astype(dtype)
    mat = sp.csr_matrix(mat) if fmt == "csr" else sp.csc_matrix(mat)
    mat.sort_indices()
    return mat


def _with_int64_index(mat):
    mat = mat.copy()
    mat.indices = mat.indices.astype(np.int64)
    mat.indptr = mat.indptr.astype(np.int64)
    return mat


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def _rich_obs(rng, n: int) -> pd.DataFrame:
    cats = np.array(["alpha", "beta", "gamma", "δέλτα"], dtype=object)
    obs = pd.DataFrame(index=pd.Index(_names("cell-", n), name="cell_id"))
    obs["cat"] = pd.Categorical(cats[rng.integers(0, 4, n)])
    obs["cat_ord"] = pd.Categorical(
        np.array(["lo", "mid", "hi"], dtype=object)[rng.integers(0, 3, n)],
        categories=["lo", "mid", "hi"],
        ordered=True,
    )
    obs["cat_num"] = pd.Categorical(rng.choice([10, 20, 30, 45], n))
    obs["cat_float"] = pd.Categorical(rng.choice([0.5, 1.5, 2.25], n), ordered=True)
    cna = pd.Categorical(cats[rng.integers(0, 3, n)])
    cna[rng.random(n) < 0.3] = np.nan  # codes -1
    obs["cat_na"] = cna
    words = np.array(["", "x", "hello", "日本語", "ünïcödé", "a b c", "tab\tsep"], dtype=object)
    obs["str"] = words[rng.integers(0, len(words), n)]
    obs["i8"] = rng.integers(-100, 100, n).astype(np.int8)
    obs["i32"] = rng.integers(-1000, 1000, n).astype(np.int32)
    obs["i64"] = rng.integers(-(2**40), 2**40, n).astype(np.int64)
    obs["u16"] = rng.integers(0, 60000, n).astype(np.uint16)
    obs["u64"] = np.full(n, 2**64 - 1, dtype=np.uint64) - rng.integers(0, 5, n).astype(np.uint64)
    obs["f32"] = rng.normal(size=n).astype(np.float32)
    f64 = rng.normal(size=n)
    f64[rng.random(n) < 0.2] = np.nan
    f64[0] = np.inf
    obs["f64"] = f64
    obs["flag"] = rng.random(n) < 0.5
    nint = pd.array(rng.integers(-50, 50, n), dtype="Int32")
    nint[rng.random(n) < 0.25] = pd.NA
    obs["nint"] = nint
    nuint = pd.array(rng.integers(0, 200, n), dtype="UInt8")
    nuint[rng.random(n) < 0.25] = pd.NA
    obs["nuint"] = nuint
    nbool = pd.array(rng.random(n) < 0.5, dtype="boolean")
    nbool[rng.random(n) < 0.25] = pd.NA
    obs["nbool"] = nbool
    nstr = pd.array(words[rng.integers(0, len(words), n)].tolist(), dtype="string")
    nstr[rng.random(n) < 0.25] = pd.NA
    obs["nstr"] = nstr
    return obs


def _rich_var(rng, m: int, index_name: str | None = None) -> pd.DataFrame:
    var = pd.DataFrame(index=pd.Index(_names("gene-", m), name=index_name))
    var["gene_type"] = pd.Categorical(rng.choice(["coding", "lncRNA", "pseudo"], m))
    var["gene_ids"] = np.array([f"ENSG{i:011d}" for i in range(m)], dtype=object)
    var["means"] = rng.random(m)
    var["highly_variable"] = rng.random(m) < 0.3
    var["n_cells"] = rng.integers(0, 1000, m).astype(np.int64)
    return var


# --------------------------------------------------------------------------------------------------
# specs

N_MAIN, M_MAIN, M_RAW = 61, 23, 29


def _build_main() -> ad.AnnData:
    rng = _rng(1)
    n, m = N_MAIN, M_MAIN
    X = _sparse(rng, n, m, 0.3, np.float32)
    # a few empty rows
    X = X.tolil()
    X[5, :] = 0
    X[6, :] = 0
    X[n - 1, :] = 0
    X = sp.csr_matrix(X)
    layers = {
        "csr_f64": _sparse(rng, n, m, 0.25, np.float64),
        "csr_i32": _sparse(rng, n, m, 0.4, np.int32),
        "csr_i64_idx64": _with_int64_index(_sparse(rng, n, m, 0.2, np.int64)),
        "csr_u16": _sparse(rng, n, m, 0.2, np.uint16),
        "csr_empty": sp.csr_matrix((n, m), dtype=np.float32),
        "csc_f32": _sparse(rng, n, m, 0.3, np.float32, fmt="csc"),
        "csc_i64": _sparse(rng, n, m, 0.1, np.int64, fmt="csc"),
        "dense_f64": rng.normal(size=(n, m)),
        "dense_f32_nan": np.where(rng.random((n, m)) < 0.1, np.nan, rng.normal(size=(n, m))).astype(
            np.float32
        ),
        "dense_i64": rng.integers(-(2**50), 2**50, (n, m)).astype(np.int64),
        "dense_u8": rng.integers(0, 255, (n, m)).astype(np.uint8),
        "dense_bool": rng.random((n, m)) < 0.5,
    }
    obsm = {
        "X_pca": rng.normal(size=(n, 5)),
        "X_umap": rng.normal(size=(n, 2)).astype(np.float32),
        "cube": rng.integers(-300, 300, (n, 3, 2)).astype(np.int16),
        "images": rng.random((n, 2, 3, 4)).astype(np.float32),
        "sparse_obsm": _sparse(rng, n, 7, 0.3, np.float32),
    }
    adata = ad.AnnData(
        X=X, obs=_rich_obs(rng, n), var=_rich_var(rng, m), layers=layers, obsm=obsm
    )
    raw = ad.AnnData(
        X=_sparse(rng, n, M_RAW, 0.3, np.float32),
        obs=adata.obs[[]],
        var=_rich_var(rng, M_RAW, index_name="gene_symbol"),
    )
    adata.raw = raw
    return adata


MAIN_LAYERS = (
    "csr_f64",
    "csr_i32",
    "csr_i64_idx64",
    "csr_u16",
    "csr_empty",
    "csc_f32",
    "csc_i64",
    "dense_f64",
    "dense_f32_nan",
    "dense_i64",
    "dense_u8",
    "dense_bool",
)
MAIN_OBSM = ("X_pca", "X_umap", "cube", "images", "sparse_obsm")


def _build_dense_x() -> ad.AnnData:
    rng = _rng(2)
    n, m = 45, 13
    obs = pd.DataFrame(index=_names("c", n))  # unnamed index
    obs["batch"] = pd.Categorical(rng.choice(["b1", "b2"], n))
    obs["depth"] = rng.integers(0, 10_000, n)
    var = pd.DataFrame(index=_names("g", m))
    var["score"] = rng.random(m).astype(np.float32)
    return ad.AnnData(
        X=rng.normal(size=(n, m)).astype(np.float32),
        obs=obs,
        var=var,
        layers={
            "counts": rng.integers(0, 2**40, (n, m)).astype(np.int64),
            "mask": rng.random((n, m)) < 0.3,
        },
        obsm={"emb": rng.normal(size=(n, 3))},
    )


def _build_csc_x() -> ad.AnnData:
    rng = _rng(3)
    n, m = 37, 19
    X = _sparse(rng, n, m, 0.35, np.float64, fmt="csc")
    obs = pd.DataFrame(index=_names("obs", n))
    obs["label"] = np.array([f"L{i % 5}" for i in range(n)], dtype=object)
    var = pd.DataFrame(index=_names("var", m))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    raw_var = pd.DataFrame(index=_names("rawvar", m + 4))
    raw_var["kind"] = pd.Categorical(rng.choice(["u", "v"], m + 4))
    adata.raw = ad.AnnData(
        X=rng.normal(size=(n, m + 4)).astype(np.float32), obs=obs[[]], var=raw_var
    )  # dense raw X
    return adata


def _build_min_index(m: int) -> Callable[[], ad.AnnData]:
    def build() -> ad.AnnData:
        rng = _rng(4 + m)
        n = 53
        obs = pd.DataFrame(index=_names("o", n))
        var = pd.DataFrame(index=_names("v", m))
        return ad.AnnData(
            X=_sparse(rng, n, m, 0.2, np.float32),
            obs=obs,
            var=var,
            layers={
                "csc": _sparse(rng, n, m, 0.2, np.int32, fmt="csc"),
                "sparse_low": _sparse(rng, n, m, 0.02, np.float64),
            },
        )

    return build


def _build_no_x() -> ad.AnnData:
    rng = _rng(5)
    n, m = 20, 6
    obs = pd.DataFrame(index=pd.Index(_names("n", n), name="name"))  # no columns, named index
    var = pd.DataFrame(index=_names("v", m))
    return ad.AnnData(
        X=None, obs=obs, var=var, layers={"only": rng.normal(size=(n, m)).astype(np.float32)}
    )


def _build_empty() -> ad.AnnData:
    n, m = 0, 4
    obs = pd.DataFrame(index=pd.Index([], dtype=object))
    obs["cat"] = pd.Categorical([], categories=["a", "b"])
    obs["num"] = np.array([], dtype=np.int64)
    obs["s"] = np.array([], dtype=object)
    var = pd.DataFrame(index=_names("v", m))
    return ad.AnnData(
        X=sp.csr_matrix((n, m), dtype=np.float32),
        obs=obs,
        var=var,
        layers={"dense": np.zeros((n, m), dtype=np.float64)},
    )


RICH_OBS = (
    "cat",
    "cat_ord",
    "cat_num",
    "cat_float",
    "cat_na",
    "str",
    "i8",
    "i32",
    "i64",
    "u16",
    "u64",
    "f32",
    "f64",
    "flag",
    "nint",
    "nuint",
    "nbool",
    "nstr",
)
RICH_VAR = ("gene_type", "gene_ids", "means", "highly_variable", "n_cells")

SPECS: dict[str, Spec] = {
    s.name: s
    for s in [
        Spec(
            "main",
            _build_main,
            ("X", *(f"layers/{k}" for k in MAIN_LAYERS), *(f"obsm/{k}" for k in MAIN_OBSM), "raw/X"),
            N_MAIN,
            has_raw=True,
            obs_columns=RICH_OBS,
            var_columns=RICH_VAR,
        ),
        Spec(
            "dense_x",
            _build_dense_x,
            ("X", "layers/counts", "layers/mask", "obsm/emb"),
            45,
            obs_columns=("batch", "depth"),
            var_columns=("score",),
        ),
        Spec("csc_x", _build_csc_x, ("X", "raw/X"), 37, has_raw=True, obs_columns=("label",)),
        Spec(
            "min_index_u8",
            _build_min_index(23),
            ("X", "layers/csc", "layers/sparse_low"),
            53,
            min_index_dtype=True,
        ),
        Spec(
            "min_index_u16",
            _build_min_index(300),
            ("X", "layers/csc", "layers/sparse_low"),
            53,
            min_index_dtype=True,
        ),
        Spec("no_x", _build_no_x, ("layers/only",), 20),
        Spec("empty", _build_empty, ("X", "layers/dense"), 0, obs_columns=("cat", "num", "s")),
    ]
}


# --------------------------------------------------------------------------------------------------
# writing


def _zarr_kwargs(elem, sharded: bool) -> dict:
    """Small chunks (several per array, edge chunks overhanging) and, if sharded, shards of several
    inner chunks; one set of kwargs per written array-like element."""
    if isinstance(elem, np.ndarray) and elem.ndim >= 1:
        if elem.ndim == 1:
            chunks = (ONE_D_CHUNK,)
        else:
            chunks = (ROW_CHUNK,) + tuple(max(1, (s + 1) // 2) for s in elem.shape[1:])
    elif sp.issparse(elem):
        chunks = (ONE_D_CHUNK,)
    else:
        return {}
    kw = {"chunks": chunks}
    if sharded:
        kw["shards"] = (chunks[0] * SHARD_FACTOR,) + tuple(2 * c for c in chunks[1:])
    return kw


def _write_zarr(adata: ad.AnnData, path: Path, fmt: int, sharded: bool) -> None:
    import zarr
    from anndata.experimental import write_dispatched

    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    group.attrs["encoding-type"] = "anndata"
    group.attrs["encoding-version"] = "0.1.0"

    def callback(write_func, store, elem_name, elem, *, dataset_kwargs, iospec):
        kw = dict(dataset_kwargs)
        kw.update(_zarr_kwargs(elem, sharded))
        write_func(store, elem_name, elem, dataset_kwargs=kw)

    write_dispatched(group, "/", adata, callback=callback)
    zarr.consolidate_metadata(str(path))


def write_store(spec: Spec, container: str, directory: Path) -> Path:
    adata = spec.build()
    suffix = ".h5ad" if container.startswith("h5ad") else ".zarr"
    path = directory / f"{spec.name}-{container}{suffix}"
    settings = {
        "allow_write_nullable_strings": True,
        "write_csr_csc_indices_with_min_possible_dtype": spec.min_index_dtype,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if container == "zarr2":
            with ad.settings.override(zarr_write_format=2, **settings):
                _write_zarr(adata, path, 2, sharded=False)
        elif container in ("zarr3", "zarr3-sharded"):
            with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False, **settings):
                _write_zarr(adata, path, 3, sharded=container == "zarr3-sharded")
        elif container == "h5ad":
            with ad.settings.override(**settings):
                adata.write_h5ad(path, convert_strings_to_categoricals=False)
        elif container == "h5ad-gzip":
            with ad.settings.override(**settings):
                adata.write_h5ad(path, compression="gzip", convert_strings_to_categoricals=False)
        else:
            raise ValueError(container)
    return path


def read_expected(path: Path) -> ad.AnnData:
    """What anndata itself reads from the store: the expected answer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if str(path).endswith(".h5ad"):
            return ad.read_h5ad(path)
        return ad.read_zarr(path)


def expected_element(adata: ad.AnnData, key: str):
    if key == "X":
        return adata.X
    if key == "raw/X":
        return adata.raw.X
    group, _, name = key.partition("/")
    if group == "layers":
        return adata.layers[name]
    if group == "obsm":
        return adata.obsm[name]
    raise KeyError(key)
