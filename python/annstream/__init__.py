"""annstream: out-of-core reading of AnnData stores (zarr v2, zarr v3 with or without sharding, .h5ad).

>>> import annstream
>>> with annstream.open("pbmc.zarr") as store:
...     X = store["X"]
...     batch = X.read_rows([3, 1, 4, 1, 5])      # scipy.sparse.csr_matrix or numpy.ndarray
...     obs = store.read_obs(columns=["cell_type"])

Mini-batches for training (see docs/loader.md):

>>> loader = annstream.Loader(["a.zarr", "b.h5ad"], batch_size=4096, obs=["cell_type"])
>>> for batch in loader:
...     batch["X"], batch["obs"]

Errors: :class:`FormatError` (a ValueError) for a corrupt, inconsistent or unsupported store;
FileNotFoundError for a missing path; KeyError for an unknown element or column; ValueError for a
bad argument or a closed store; IndexError for rows out of range; TypeError for rows that are not
integers; MemoryError and OSError as their names say.
"""

from __future__ import annotations

from ._core import FormatError
from ._convert import convert
from ._core import version as _c_version
from ._store import Element, Store, open

__version__ = "0.1.0"

__all__ = [
    "Element",
    "FormatError",
    "Loader",
    "StatefulDataLoader",
    "Store",
    "__version__",
    "c_version",
    "convert",
    "open",
]


def __getattr__(name: str):
    # Loader lives in _loader, which imports torch (when installed) to subclass its
    # IterableDataset: imported on first use so that `import annstream` stays light.
    if name == "Loader":
        from ._loader import Loader

        globals()["Loader"] = Loader
        return Loader
    if name == "StatefulDataLoader":
        from . import _loader

        if not hasattr(_loader, "StatefulDataLoader"):
            raise ImportError("annstream.StatefulDataLoader needs torch (pip install torch)")
        globals()["StatefulDataLoader"] = _loader.StatefulDataLoader
        return _loader.StatefulDataLoader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"Loader", "StatefulDataLoader"})


def c_version() -> str:
    """Version of the linked annstream C library."""
    return _c_version()
