"""Row reads: every container x every element type x many row selections, against anndata's own
reading of the same store."""

from __future__ import annotations

import gc
import os
import threading
import zlib

import numpy as np
import pytest
import scipy.sparse as sp
from stores import CONTAINERS, SPECS, expected_element

import annstream
from annstream import _core

CONTAINER_NAMES = {
    "zarr2": "zarr-v2",
    "zarr3": "zarr-v3",
    "zarr3-sharded": "zarr-v3",
    "h5ad": "h5ad",
    "h5ad-gzip": "h5ad",
}

STORE_CASES = [(c, s) for c in CONTAINERS for s in SPECS]
ELEMENT_CASES = [(c, s, k) for c in CONTAINERS for s, spec in SPECS.items() for k in spec.keys]


def _case_id(case) -> str:
    return "/".join(str(x) for x in case)


# --------------------------------------------------------------------------------------------------
# row selections: name -> f(n, rng) giving the selection, or None where it needs n > 0


def _selections():
    return {
        "all": lambda n, rng: slice(None),
        "range": lambda n, rng: slice(n // 5, n - n // 4),
        "head": lambda n, rng: slice(0, 3),
        "past_end": lambda n, rng: slice(n - 2, n + 100),
        "step3": lambda n, rng: slice(2, None, 3),
        "step7_bounded": lambda n, rng: slice(1, n - 5, 7),
        "reverse": lambda n, rng: slice(None, None, -1),
        "neg_step2": lambda n, rng: slice(-2, 1, -2),
        "neg_bounds": lambda n, rng: slice(-n + 3, -3, 2),
        "empty_slice": lambda n, rng: slice(4, 4),
        "empty_reversed_slice": lambda n, rng: slice(2, 8, -1),
        "empty_array": lambda n, rng: np.array([], dtype=np.int64),
        "empty_list": lambda n, rng: [],
        "single_list": lambda n, rng: [n // 2] if n else None,
        "single_slice": lambda n, rng: slice(n - 1, n) if n else None,
        "first_row": lambda n, rng: np.array([0]) if n else None,
        "int": lambda n, rng: n // 3 if n else None,
        "neg_int": lambda n, rng: -1 if n else None,
        "np_int": lambda n, rng: np.int32(n - 1) if n else None,
        "scatter": lambda n, rng: rng.integers(0, n, 3 * n) if n else None,
        "scatter_int32": lambda n, rng: rng.integers(0, n, n).astype(np.int32) if n else None,
        "scatter_uint16": lambda n, rng: rng.integers(0, n, n).astype(np.uint16) if n else None,
        "sorted_unique": lambda n, rng: np.sort(rng.choice(n, n // 2, replace=False)) if n else None,
        "all_same": lambda n, rng: np.full(9, n - 2) if n > 1 else None,
        "negative": lambda n, rng: np.array([-1, 0, -n, n - 1, -2, -n]) if n else None,
        "list": lambda n, rng: [5 % n, 3 % n, 5 % n, 0, n - 1] if n else None,
        "mask": lambda n, rng: rng.random(n) < 0.4,
        "mask_list": lambda n, rng: [bool(v) for v in rng.random(n) < 0.5],
        "object_ints": lambda n, rng: np.array([n - 1, 0, -1], dtype=object) if n else None,
        "non_contiguous": lambda n, rng: np.arange(n, dtype=np.int64)[::-2] if n else None,
    }


SELECTIONS = _selections()


def _make_selection(name: str, n: int, key: str):
    rng = np.random.default_rng(zlib.crc32(f"{name}/{n}/{key}".encode()))
    return SELECTIONS[name](n, rng)


READ_CASES = [
    (c, s, k, sel)
    for c in CONTAINERS
    for s, spec in SPECS.items()
    for k in spec.keys
    for sel in SELECTIONS
    if SELECTIONS[sel](spec.n_obs, np.random.default_rng(0)) is not None
]


def expected_rows(ref, sel, n: int):
    if sp.issparse(ref) and ref.indices.dtype.kind == "u":
        # anndata keeps the unsigned index arrays written with
        # write_csr_csc_indices_with_min_possible_dtype, which some scipy row indexing rejects
        ref = ref.__class__(
            (ref.data, ref.indices.astype(np.int64), ref.indptr.astype(np.int64)), shape=ref.shape
        )
    if isinstance(sel, slice) or isinstance(sel, int | np.integer):
        return ref[sel]
    idx = np.asarray(sel) if len(sel) else np.array([], dtype=np.int64)
    if idx.dtype == object:
        idx = idx.astype(np.int64)
    rows = np.arange(n)[idx]
    return ref[rows]


def assert_same_rows(got, exp):
    if sp.issparse(exp):
        assert type(got) is sp.csr_matrix, type(got)
        exp = sp.csr_matrix(exp)
        assert got.shape == exp.shape
        assert got.dtype == exp.dtype
        assert got.nnz == exp.nnz
        g = got.copy()
        g.sort_indices()
        e = exp.copy()
        e.sort_indices()
        np.testing.assert_array_equal(g.indptr, e.indptr)
        np.testing.assert_array_equal(g.indices, e.indices)
        np.testing.assert_array_equal(g.data, e.data)
    else:
        assert type(got) is np.ndarray, type(got)
        assert got.shape == exp.shape
        assert got.dtype == exp.dtype
        np.testing.assert_array_equal(got, exp)


def _find_buffer(arr) -> bool:
    """True if `arr` is a view whose base chain reaches an annstream buffer (zero-copy)."""
    obj = arr
    for _ in range(10):
        if isinstance(obj, _core.Buffer):
            return True
        if isinstance(obj, memoryview):
            obj = obj.obj
            continue
        base = getattr(obj, "base", None)
        if base is None:
            return False
        obj = base
    return False


# --------------------------------------------------------------------------------------------------
# store and element metadata


@pytest.mark.parametrize("case", STORE_CASES, ids=_case_id)
def test_store_metadata(stores, case):
    container, spec_name = case
    spec = SPECS[spec_name]
    path, adata = stores.get(spec_name, container)
    with annstream.open(path) as store:
        assert store.path == str(path)
        assert store.container == CONTAINER_NAMES[container]
        assert store.n_obs == adata.n_obs
        assert store.n_vars == adata.n_vars
        assert store.shape == adata.shape
        assert store.threads >= 1
        assert sorted(store.keys()) == sorted(spec.keys)
        assert len(store) == len(spec.keys)
        assert sorted(store) == sorted(spec.keys)
        for key in spec.keys:
            assert key in store
        assert "nope" not in store
        assert "layers/nope" not in store
        assert 3 not in store
        assert not store.closed
        np.testing.assert_array_equal(store.obs_names, adata.obs_names.to_numpy())
        np.testing.assert_array_equal(store.var_names, adata.var_names.to_numpy())
        assert store.obs_names.dtype == adata.obs_names.to_numpy().dtype
        assert isinstance(store.describe(), str)
        assert isinstance(store.describe(json=True), dict)
        assert repr(store).startswith("<annstream.Store")
    assert store.closed
    assert "closed" in repr(store)


@pytest.mark.parametrize("case", ELEMENT_CASES, ids=_case_id)
def test_element_metadata(stores, case):
    container, spec_name, key = case
    _, adata = stores.get(spec_name, container)
    ref = expected_element(adata, key)
    el = stores.open(spec_name, container)[key]
    assert el.key == key
    assert el.shape == ref.shape
    assert el.ndim == ref.ndim
    assert len(el) == ref.shape[0]
    assert el.dtype == ref.dtype
    assert isinstance(el.dtype, np.dtype)
    if isinstance(ref, sp.csr_matrix):
        assert el.format == "csr"
    elif isinstance(ref, sp.csc_matrix):
        assert el.format == "csc"
    else:
        assert isinstance(ref, np.ndarray)
        assert el.format == "dense"
    assert stores.open(spec_name, container)[key] is el  # elements are cached by the store


def test_open_threads_option(stores):
    path, _ = stores.get("main", "zarr3")
    for threads, expected in [(1, 1), (3, 3)]:
        with annstream.open(path, threads=threads) as store:
            assert store.threads == expected
    with annstream.open(path, threads=None) as store:
        assert store.threads >= 1
    with annstream.open(os.fspath(path)) as store:  # str as well as PathLike
        assert store.n_obs == SPECS["main"].n_obs
        assert store.path == os.fspath(path)


# --------------------------------------------------------------------------------------------------
# row reads


@pytest.mark.parametrize("case", READ_CASES, ids=_case_id)
def test_read_rows(stores, case):
    container, spec_name, key, sel_name = case
    spec = SPECS[spec_name]
    _, adata = stores.get(spec_name, container)
    ref = expected_element(adata, key)
    sel = _make_selection(sel_name, spec.n_obs, key)
    el = stores.open(spec_name, container)[key]
    got = el.read_rows(sel)
    exp = expected_rows(ref, sel, spec.n_obs)
    assert_same_rows(got, exp)


@pytest.mark.parametrize("container", CONTAINERS)
def test_getitem_is_read_rows(stores, container):
    el = stores.open("main", container)["X"]
    assert_same_rows(el[3:9], el.read_rows(slice(3, 9)))
    assert_same_rows(el[[4, 1]], el.read_rows([4, 1]))


@pytest.mark.parametrize("container", CONTAINERS)
def test_range_chunks_cover_everything(stores, container):
    """Consecutive range reads of every size concatenate to the whole element."""
    _, adata = stores.get("main", container)
    store = stores.open("main", container)
    n = store.n_obs
    for key in ("X", "layers/csc_f32", "layers/dense_i64", "obsm/images"):
        ref = expected_element(adata, key)
        el = store[key]
        for size in (1, 7, 8, 9, 32, 33, n):
            parts = [el.read_rows(slice(i, i + size)) for i in range(0, n, size)]
            got = sp.vstack(parts, format="csr") if sp.issparse(ref) else np.concatenate(parts)
            assert_same_rows(got.astype(ref.dtype, copy=False), ref)


# --------------------------------------------------------------------------------------------------
# zero copy and lifetime


@pytest.mark.parametrize("container", ["zarr3-sharded", "h5ad"])
def test_zero_copy_sparse(stores, container):
    el = stores.open("main", container)["X"]
    for sel in (slice(0, 20), [3, 1, 3]):
        m = el.read_rows(sel)
        assert _find_buffer(m.data), "data was copied"
        assert _find_buffer(m.indices), "indices were copied"
        assert _find_buffer(m.indptr), "indptr were copied"
        assert m.data.flags.writeable


@pytest.mark.parametrize("container", ["zarr2", "h5ad-gzip"])
def test_zero_copy_dense(stores, container):
    store = stores.open("main", container)
    for key in ("layers/dense_f64", "obsm/images"):
        a = store[key].read_rows([5, 2, 5])
        assert _find_buffer(a), f"{key} was copied"
        assert a.flags.c_contiguous
        assert a.flags.writeable
        a[0] = 0  # the result is the caller's


def test_results_outlive_store(stores, tmp_path):
    path = stores.fresh_copy("main", "zarr3", tmp_path)
    _, adata = stores.get("main", "zarr3")
    store = annstream.open(path)
    x = store["X"].read_rows(slice(10, 30))
    d = store["layers/dense_f64"].read_rows([1, 2, 3])
    data_only = store["X"].read_rows([4, 5]).data  # the matrix dies, its data stays
    store.close()
    del store
    gc.collect()
    assert_same_rows(x, adata.X[10:30])
    assert_same_rows(d, adata.layers["dense_f64"][[1, 2, 3]])
    np.testing.assert_array_equal(data_only, adata.X[[4, 5]].data)


def test_core_types_cannot_be_instantiated():
    with pytest.raises(TypeError):
        _core.Buffer()
    with pytest.raises(TypeError):
        _core.Store()
    with pytest.raises(TypeError):
        _core.Element()


# --------------------------------------------------------------------------------------------------
# threads


@pytest.mark.parametrize("container", CONTAINERS)
def test_concurrent_reads(stores, container):
    _, adata = stores.get("main", container)
    store = stores.open("main", container)
    keys = ["X", "layers/csc_f32", "layers/dense_f64", "obsm/images", "raw/X"]
    rng = np.random.default_rng(7)
    selections = [rng.integers(0, store.n_obs, 25) for _ in range(6)] + [slice(3, 50), slice(None, None, -3)]
    expected = {
        (k, i): expected_rows(expected_element(adata, k), s, store.n_obs)
        for k in keys
        for i, s in enumerate(selections)
    }
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(seed: int) -> None:
        try:
            barrier.wait()
            order = np.random.default_rng(seed).permutation(len(keys) * len(selections))
            for _ in range(3):
                for j in order:
                    k, i = keys[j // len(selections)], j % len(selections)
                    assert_same_rows(store[k].read_rows(selections[i]), expected[(k, i)])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("container", CONTAINERS)
def test_concurrent_frames(stores, container):
    _, adata = stores.get("main", container)
    store = stores.open("main", container)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                df = store.read_obs()
                assert df.shape == adata.obs.shape
                assert list(df.index) == list(adata.obs_names)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("what", ["store", "element"])
def test_close_while_reading(stores, container, tmp_path, what):
    """Closing while other threads read never frees under a read: every read either completes with
    the right answer or raises ValueError (closed)."""
    path = stores.fresh_copy("main", container, tmp_path)
    _, adata = stores.get("main", container)
    store = annstream.open(path, threads=2)
    elements = {k: store[k] for k in ("X", "layers/dense_f64", "layers/csc_f32")}
    expected = {k: expected_element(adata, k) for k in elements}
    rows = np.arange(store.n_obs)[::-1].copy()
    started = threading.Barrier(5)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def worker(k: str) -> None:
        started.wait()
        try:
            for _ in range(200):
                try:
                    got = elements[k].read_rows(rows)
                except ValueError as e:
                    assert "closed" in str(e)
                    outcomes.append("closed")
                    return
                assert_same_rows(got, expected[k][rows])
                outcomes.append("ok")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in list(elements) + ["X"]]
    for t in threads:
        t.start()
    started.wait()
    if what == "store":
        store.close()
    else:
        for el in elements.values():
            el.close()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    assert "closed" in outcomes or len(outcomes) == 4 * 200
    store.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        elements["X"].read_rows([0])
