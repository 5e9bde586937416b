"""Python layer of annstream: Store and Element over the C extension ``annstream._core``.

Results are zero-copy: numpy arrays are views (``np.frombuffer``) of buffers owned by the C
library; each buffer object holds a strong reference to the C result, which is freed when the last
array viewing it is gone.
"""

from __future__ import annotations

import json as _json
import operator
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import _core

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["Element", "Store", "open"]


def open(path: str | os.PathLike[str], *, threads: int | None = None) -> Store:  # noqa: A001
    """Open the AnnData store at ``path``: a zarr v2 or v3 directory, or an .h5ad file.

    ``threads`` is the number of decoding threads owned by the store (including the calling
    thread); ``None`` or 0 means one per CPU, 1 means no extra thread.

    Raises FileNotFoundError if the path does not exist, :class:`annstream.FormatError` if it is
    not a readable AnnData store.
    """
    if threads is None:
        threads = 0
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer):
        raise TypeError(f"threads must be an int or None, not {type(threads).__name__}")
    threads = int(threads)
    if threads < 0:
        raise ValueError(f"threads must be >= 0 or None, not {threads}")
    return Store(_core.open(os.fspath(path), threads))


# C handles a forked child inherited from its parent: kept referenced so that they are never
# closed or freed in the child (their memory stays mapped until it exits).
_FORK_ORPHANS: list[Any] = []


class Store:
    """An open AnnData store. Also a context manager (closes on exit).

    A read-only mapping from the row-aligned element paths ("X", "layers/<k>", "obsm/<k>",
    "raw/X") to :class:`Element`, plus the obs / var data frames.

    Safe to use from several threads at once. ``close()`` waits for the reads in flight; any use
    after it raises ValueError.
    """

    __slots__ = ("__weakref__", "_c", "_elements", "_lock", "_obs_names", "_pid", "_var_names")

    def __init__(self, core: _core.Store) -> None:
        self._c = core
        self._pid = os.getpid()
        self._elements: dict[str, Element] = {}
        self._lock = threading.Lock()
        self._obs_names: np.ndarray | None = None
        self._var_names: np.ndarray | None = None

    @property
    def _core(self) -> _core.Store:
        """The C store of this process. In a forked child (a DataLoader worker) the parent's handle
        is left alone - a parent thread may have held one of its locks at the fork - and the path
        is opened again, once, on first use."""
        if self._pid != os.getpid():
            self._reopen()
        return self._c

    def _reopen(self) -> None:
        old = self._c
        # Locks copied from the parent may be held by threads that do not exist here.
        self._lock = threading.Lock()
        self._elements = {}
        self._pid = os.getpid()
        _FORK_ORPHANS.append(old)  # never closed or freed in this process
        if old.closed:
            return  # stays closed
        self._c = _core.open(old.path, old.threads)

    # ---- basic properties ----
    @property
    def path(self) -> str:
        """The path given to :func:`annstream.open`."""
        return self._core.path

    @property
    def container(self) -> str:
        """'zarr-v2', 'zarr-v3' or 'h5ad'."""
        return self._core.container

    @property
    def n_obs(self) -> int:
        return self._core.n_obs

    @property
    def n_vars(self) -> int:
        return self._core.n_vars

    @property
    def shape(self) -> tuple[int, int]:
        return (self._core.n_obs, self._core.n_vars)

    @property
    def threads(self) -> int:
        """Decoding threads of the store (including the calling thread)."""
        return self._core.threads

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def obs_names(self) -> np.ndarray:
        """The obs index as a numpy array (dtype object for strings), like
        ``adata.obs_names.to_numpy()``."""
        self._check_open()
        if self._obs_names is None:
            self._obs_names = self._read_frame("obs", []).index.to_numpy()
        return self._obs_names

    @property
    def var_names(self) -> np.ndarray:
        """The var index as a numpy array, like ``adata.var_names.to_numpy()``."""
        self._check_open()
        if self._var_names is None:
            self._var_names = self._read_frame("var", []).index.to_numpy()
        return self._var_names

    def _check_open(self) -> None:
        if self._core.closed:
            raise ValueError("I/O operation on a closed annstream store")

    # ---- mapping of elements ----
    def keys(self) -> list[str]:
        """The row-aligned elements as paths: "X", "layers/<k>", "obsm/<k>", "raw/X"."""
        return list(self._core.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._core.keys())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._core.keys()

    def __getitem__(self, key: str) -> Element:
        """The row-aligned element ``key``; KeyError if the store has none."""
        if not isinstance(key, str):
            raise KeyError(key)
        with self._lock:
            element = self._elements.get(key)
        if element is not None and not element.closed:
            return element
        element = Element(self._core.element(key), self)
        with self._lock:
            cached = self._elements.get(key)
            if cached is not None and not cached.closed:
                element.close()  # another thread opened it meanwhile: use that one
                return cached
            self._elements[key] = element
            return element

    def get(self, key: str, default: Any = None) -> Element | Any:
        return self[key] if key in self else default

    # ---- data frames ----
    def read_obs(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Read obs as a pandas DataFrame indexed by the obs names, as anndata reads it.

        ``columns``: the columns to read, in that order (default: all, in the stored order).
        KeyError names the first missing column.
        """
        return self._read_frame("obs", columns)

    def read_var(self, columns: Sequence[str] | None = None, *, raw: bool = False) -> pd.DataFrame:
        """Read var (or, with ``raw=True``, raw/var) as a pandas DataFrame, as anndata reads it.

        ``columns`` as for :meth:`read_obs`. KeyError if ``raw=True`` and the store has no raw.
        """
        return self._read_frame("raw/var" if raw else "var", columns)

    def _read_frame(self, which: str, columns: Sequence[str] | None) -> pd.DataFrame:
        if columns is not None:
            if isinstance(columns, str):
                columns = [columns]
            columns = list(columns)
        n_rows, index_col, cols = self._core.read_frame(which, columns)
        index = pd.Index(_column_array(index_col, which, self.path), copy=False)
        index_name = index_col["name"]
        names = [c["name"] for c in cols]
        data = {c["name"]: _column_array(c, which, self.path) for c in cols}
        for name, values in data.items():
            if len(values) != n_rows:
                raise _core.FormatError(
                    f"{self.path}: {which}/{name}: {len(values)} values for {n_rows} rows"
                )
        if len(index) != n_rows:
            raise _core.FormatError(
                f"{self.path}: {which}/{index_name}: index of {len(index)} names for {n_rows} rows"
            )
        # as anndata builds it (anndata/_io/specs/methods.py: read_dataframe); AnnData then makes an
        # empty column index an object Index (not a RangeIndex)
        df = pd.DataFrame(data, index=index, columns=names if names else pd.Index([], dtype=object))
        if index_name != "_index":
            df.index.name = index_name
        return df

    # ---- misc ----
    def describe(self, *, json: bool = False) -> str | dict:
        """Describe the store: elements, encodings, arrays, chunking, sharding, codecs and sizes.
        Readable text, or with ``json=True`` the parsed JSON document."""
        text = self._core.describe(json=json)
        return _json.loads(text) if json else text

    def close(self) -> None:
        """Close the store and its elements. Waits for the reads in flight; idempotent."""
        self._core.close()
        with self._lock:
            elements = list(self._elements.values())
            self._elements.clear()
        for element in elements:
            element.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<annstream.Store {self.path!r} (closed)>"
        return (
            f"<annstream.Store {self.path!r} {self.container} n_obs={self.n_obs} "
            f"n_vars={self.n_vars} keys={self.keys()}>"
        )


class Element:
    """A row-aligned element of a store: X, a layer, an obsm entry or raw/X.

    ``read_rows(rows)`` (also ``element[rows]``) returns a ``scipy.sparse.csr_matrix`` for sparse
    elements (CSR or CSC on disk) and a ``numpy.ndarray`` for dense ones, like anndata's
    ``adata.X[rows]``.
    """

    __slots__ = ("_c", "_dtype", "_format", "_key", "_pid", "_shape", "_store")

    def __init__(self, core: _core.Element, store: Store) -> None:
        self._c = core
        self._pid = os.getpid()
        self._store = weakref.ref(store)  # no reference cycle with the store's element cache
        self._key = core.key
        self._shape = tuple(core.shape)
        self._dtype = np.dtype(core.dtype)
        self._format = core.format

    @property
    def _core(self) -> _core.Element:
        """The C element of this process (reopened through its store in a forked child)."""
        if self._pid != os.getpid():
            old = self._c
            self._pid = os.getpid()
            _FORK_ORPHANS.append(old)
            store = self._store()
            if store is None or store.closed:
                raise ValueError(f"element {self._key!r}: its store is closed")
            self._c = store._core.element(self._key)
        return self._c

    @property
    def key(self) -> str:
        return self._key

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of the values."""
        return self._dtype

    @property
    def format(self) -> str:
        """Storage format on disk: 'csr', 'csc' or 'dense'."""
        return self._format

    @property
    def store(self) -> Store | None:
        """The Store this element came from (None once that object is gone)."""
        return self._store()

    @property
    def closed(self) -> bool:
        if self._pid != os.getpid():
            store = self._store()
            if store is None or store.closed:
                return True
        return self._core.closed

    def __len__(self) -> int:
        return self._shape[0]

    def read_rows(self, rows: Any) -> sp.csr_matrix | np.ndarray:
        """Read the rows ``rows`` of the element.

        ``rows``: a slice (any step), a 1-D array or list of integers (any order, repeats allowed,
        negative values count from the end), a boolean mask of length n_obs, or one integer (then
        a dense result loses its first axis, like numpy; a sparse one is a 1-row matrix, like
        scipy). Raises IndexError for rows out of range, TypeError for non-integer rows.
        """
        n = self._shape[0]
        if isinstance(rows, slice):
            start, stop, step = rows.indices(n)
            if step == 1:
                return _to_python(self._core.read_range(start, max(start, stop)))
            return _to_python(self._core.read_rows(np.arange(start, stop, step, dtype=np.int64)))
        if _is_integer_scalar(rows):
            i = operator.index(rows)
            if not -n <= i < n:
                raise IndexError(f"row {i} is out of range for {self._key} with {n} rows")
            result = _to_python(self._core.read_rows(np.array([i % n], dtype=np.int64)))
            return result if sp.issparse(result) else result[0]
        return _to_python(self._core.read_rows(_normalize_rows(rows, n, self._key)))

    __getitem__ = read_rows

    def close(self) -> None:
        """Release the element; waits for its reads in flight. Idempotent."""
        self._core.close()

    def __repr__(self) -> str:
        return (
            f"<annstream.Element {self._key!r} {self._format} shape={self._shape} "
            f"dtype={self._dtype}>"
        )


# --------------------------------------------------------------------------------------------------
# helpers


def _is_integer_scalar(obj: object) -> bool:
    if isinstance(obj, bool | np.bool_):
        return False
    return isinstance(obj, int | np.integer)


def _normalize_rows(rows: Any, n: int, key: str) -> np.ndarray:
    """A fresh C-contiguous int64 array of rows in [0, n) (the C call then reads it without the
    GIL: it must be private, so that no other thread can change it meanwhile)."""
    if isinstance(rows, bool | np.bool_):
        raise TypeError("rows must be integers, a slice or a boolean mask, not a bool")
    arr = np.asarray(rows)
    if arr.ndim == 0:
        raise TypeError(
            f"rows must be a slice, an integer, or a 1-D sequence of integers, not {type(rows).__name__}"
        )
    if arr.ndim != 1:
        raise IndexError(f"rows must be 1-D, not {arr.ndim}-D")
    if arr.dtype == np.bool_:
        if arr.shape[0] != n:
            raise IndexError(
                f"boolean mask of length {arr.shape[0]} does not match {key} with {n} rows"
            )
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0:
        if arr.dtype.kind not in "iufO":  # an empty list gives float64
            raise TypeError(f"rows must be integers, not {arr.dtype}")
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind == "O":
        # Python ints too large for int64, an object array of ints, or something else
        if not all(_is_integer_scalar(x) for x in arr):
            raise TypeError("rows must be integers")
        for x in arr:
            if not -n <= int(x) < n:
                raise IndexError(f"row {int(x)} is out of range for {key} with {n} rows")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"rows must be integers, not {arr.dtype}")
    if arr.dtype.kind == "u":
        too_big = arr >= n
        if too_big.any():
            raise IndexError(f"row {arr[too_big][0]} is out of range for {key} with {n} rows")
        return np.array(arr, dtype=np.int64, order="C", copy=True)
    out = np.array(arr, dtype=np.int64, order="C", copy=True)
    negative = out < 0
    if negative.any():
        out[negative] += n
    bad = (out < 0) | (out >= n)
    if bad.any():
        raise IndexError(f"row {arr[bad][0]} is out of range for {key} with {n} rows")
    return out


def _to_python(rows: _core.Rows) -> sp.csr_matrix | np.ndarray:
    """numpy / scipy views of a Rows result, without copying."""
    dtype = np.dtype(rows.dtype)
    shape = tuple(rows.shape)
    if rows.format == "dense":
        return np.frombuffer(rows.data, dtype=dtype).reshape(shape)
    index_dtype = np.dtype(rows.index_dtype)
    data = np.frombuffer(rows.data, dtype=dtype)
    indices = np.frombuffer(rows.indices, dtype=index_dtype)
    indptr = np.frombuffer(rows.indptr, dtype=index_dtype)
    return sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)


def _strings(values: list[str]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _column_array(col: dict, which: str, path: str):
    """One column dict from the C extension as the array anndata would give."""
    kind = col["kind"]
    name = col["name"]
    if kind == "numeric":
        return np.frombuffer(col["values"], dtype=np.dtype(col["dtype"]))
    if kind == "string":
        return _strings(col["strings"])
    if kind == "categorical":
        codes = np.frombuffer(col["values"], dtype=np.dtype(col["dtype"]))
        if col["cat_dtype"] == "str":
            categories = _strings(col["categories"])
        else:
            categories = np.frombuffer(col["categories"], dtype=np.dtype(col["cat_dtype"]))
        try:
            return pd.Categorical.from_codes(codes, categories=categories, ordered=col["ordered"])
        except (ValueError, TypeError) as e:
            raise _core.FormatError(f"{path}: {which}/{name}: bad categorical: {e}") from None
    mask = np.frombuffer(col["mask"], dtype=np.uint8).astype(bool)
    if kind == "nullable-integer":
        values = np.frombuffer(col["values"], dtype=np.dtype(col["dtype"]))
        return pd.arrays.IntegerArray(values, mask=mask)
    if kind == "nullable-boolean":
        values = np.frombuffer(col["values"], dtype=np.dtype(col["dtype"])).astype(bool)
        return pd.arrays.BooleanArray(values, mask=mask)
    if kind == "nullable-string":
        # as anndata reads nullable-string-array (whatever the na-value attribute says)
        arr = pd.array(_strings(col["strings"]), dtype=pd.StringDtype())
        arr[mask] = pd.NA
        return arr
    raise _core.FormatError(f"{path}: {which}/{name}: unknown column kind {kind!r}")
