"""annstream: out-of-core reading of AnnData stores (zarr v2, zarr v3 with or without sharding, .h5ad).

>>> import annstream
>>> with annstream.open("pbmc.zarr") as store:
...     X = store["X"]
...     batch = X.read_rows([3, 1, 4, 1, 5])      # scipy.sparse.csr_matrix or numpy.ndarray
...     obs = store.read_obs(columns=["cell_type"])

Errors: :class:`FormatError` (a ValueError) for a corrupt, inconsistent or unsupported store;
FileNotFoundError for a missing path; KeyError for an unknown element or column; ValueError for a
bad argument or a closed store; IndexError for rows out of range; TypeError for rows that are not
integers; MemoryError and OSError as their names say.
"""

from __future__ import annotations

from ._core import FormatError
from ._core import version as _c_version
from ._store import Element, Store, open

__version__ = "0.1.0"

__all__ = ["Element", "FormatError", "Store", "__version__", "c_version", "open"]


def c_version() -> str:
    """Version of the linked annstream C library."""
    return _c_version()
