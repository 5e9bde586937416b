"""Shared fixtures: test stores written once per session by the real anndata / zarr / h5py."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from stores import CONTAINERS, SPECS, read_expected, write_store

import annstream


class StoreCache:
    """Writes each (spec, container) store on first use and keeps the path, anndata's own reading
    of it (the expected answer) and one shared open annstream.Store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._written: dict[tuple[str, str], tuple[Path, object]] = {}
        self._opened: dict[tuple[str, str], annstream.Store] = {}

    def get(self, spec: str, container: str):
        """(path, adata) for the store."""
        key = (spec, container)
        with self._lock:
            if key not in self._written:
                path = write_store(SPECS[spec], container, self.root)
                adata = read_expected(path)
                assert adata.n_obs == SPECS[spec].n_obs
                self._written[key] = (path, adata)
            return self._written[key]

    def open(self, spec: str, container: str) -> annstream.Store:
        """A shared open store (do not close it)."""
        path, _ = self.get(spec, container)
        key = (spec, container)
        with self._lock:
            if key not in self._opened:
                self._opened[key] = annstream.open(path, threads=2)
            return self._opened[key]

    def fresh_copy(self, spec: str, container: str, directory: Path) -> Path:
        """A private copy of the store, free to damage."""
        path, _ = self.get(spec, container)
        dest = directory / path.name
        if path.is_dir():
            shutil.copytree(path, dest)
        else:
            shutil.copy2(path, dest)
        return dest

    def close_all(self) -> None:
        for store in self._opened.values():
            store.close()
        self._opened.clear()


@pytest.fixture(scope="session")
def stores(tmp_path_factory) -> StoreCache:
    cache = StoreCache(tmp_path_factory.mktemp("stores"))
    yield cache
    cache.close_all()


def pytest_report_header(config):
    return f"annstream {annstream.__version__} (C library {annstream.c_version()}); containers: {', '.join(CONTAINERS)}"
