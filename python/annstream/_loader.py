"""annstream.Loader: shuffled mini-batches streamed out of core by the C loader engine.

The heavy lifting (sampling, reading, decoding, gathering each batch into its own buffers,
prefetching) happens in C on a background thread (``ans_loader_*`` in annstream.h). This module
turns sources into open stores, resolves the partition (DDP rank, DataLoader worker), keeps the
epoch / resume state and wraps each C batch as numpy / scipy / torch objects without copying.

See docs/loader.md for the guide.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import json
import os
import re
import secrets
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import _core
from ._store import Store
from ._store import open as _open_store

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

try:  # a torch IterableDataset when torch is there, so that torch's DataLoader takes it as such
    from torch.utils.data import IterableDataset as _Base

    _HAVE_TORCH = True
except Exception:  # noqa: BLE001 - a missing or broken torch: work without it
    _Base = object
    _HAVE_TORCH = False

__all__ = ["Loader"]

_OUT_DTYPES = {
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64",
}
_COLLECTION_ENCODING = "annbatch-preshuffled"
_STATE_KEYS = ("seed", "epoch", "batches_yielded", "n_partitions", "partition", "fingerprint")


def _check_int(name: str, value: Any, minimum: int, *, none_ok: bool = False) -> int | None:
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    return value


def _collection_children(path: Path) -> list[Path] | None:
    """The dataset_i children (numeric order) of an annbatch collection directory, else None."""
    meta = path / "zarr.json"
    if not (path.is_dir() and meta.is_file()):
        return None
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    if not isinstance(attrs, dict) or attrs.get("encoding-type") != _COLLECTION_ENCODING:
        return None
    found = []
    for child in path.iterdir():
        m = re.fullmatch(r"dataset_(\d+)", child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    found.sort()
    if not found:
        raise ValueError(f"{path}: the annbatch collection has no dataset_<i> children")
    if [i for i, _ in found] != list(range(len(found))):
        last = len(found) - 1
        raise _core.FormatError(
            f"{path}: the annbatch collection's children are not dataset_0 .. dataset_{last}"
        )
    return [c for _, c in found]


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else torch.distributed when initialised, else the RANK
    / WORLD_SIZE environment variables, else (0, 1)."""
    auto_rank, auto_world = 0, 1
    if rank is None or world_size is None:
        found = False
        # Only when torch.distributed is already imported (it is, if a process group was set
        # up): importing it here would be slow, and a fork() while another thread is importing
        # leaves the child waiting for good on the module's import lock.
        dist = sys.modules.get("torch.distributed") if _HAVE_TORCH else None
        if dist is not None:
            try:
                if dist.is_available() and dist.is_initialized():
                    auto_rank, auto_world = dist.get_rank(), dist.get_world_size()
                    found = True
            except Exception:  # noqa: BLE001
                pass
        if not found and "WORLD_SIZE" in os.environ:
            try:
                auto_world = int(os.environ["WORLD_SIZE"])
                auto_rank = int(os.environ.get("RANK", "0"))
            except ValueError:
                raise ValueError(
                    f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ['WORLD_SIZE']!r} "
                    "are not integers"
                ) from None
    r = auto_rank if rank is None else _check_int("rank", rank, 0)
    w = auto_world if world_size is None else _check_int("world_size", world_size, 1)
    if w < 1:
        raise ValueError(f"world_size must be >= 1, not {w}")
    if not 0 <= r < w:
        raise ValueError(f"rank {r} is outside [0, world_size={w})")
    return r, w


def _worker() -> tuple[int, int] | None:
    """(worker_id, num_workers) inside a torch DataLoader worker, else None."""
    data = sys.modules.get("torch.utils.data") if _HAVE_TORCH else None
    info = data.get_worker_info() if data is not None else None
    return None if info is None else (int(info.id), int(info.num_workers))


def _concat_obs(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """Concatenate per-store obs frames; categoricals keep categorical dtype (union of the
    categories, in order of first appearance)."""
    if len(frames) == 1:
        return frames[0]
    data = {}
    for col in columns:
        parts = [f[col] for f in frames]
        if all(isinstance(p.dtype, pd.CategoricalDtype) for p in parts):
            try:
                data[col] = pd.api.types.union_categoricals([p.array for p in parts])
            except TypeError:  # ordered with different categories
                data[col] = pd.api.types.union_categoricals(
                    [p.array for p in parts], ignore_order=True
                )
        else:
            data[col] = pd.concat(parts, ignore_index=True).array
    index = frames[0].index.append([f.index for f in frames[1:]])
    return pd.DataFrame(data, index=index, columns=columns)


def _as_u64(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"sampler plan: {name} must be integers, not {arr.dtype}")
    if arr.dtype.kind == "i" and (arr < 0).any():
        raise ValueError(f"sampler plan: {name} has negative entries")
    return np.ascontiguousarray(arr.reshape(-1), dtype=np.uint64)


class Loader(_Base):
    """Shuffled mini-batches of one row-aligned element of one or more AnnData stores.

    ``sources``: a path (zarr v2/v3 directory, .h5ad file, or an annbatch collection directory whose
    ``dataset_<i>`` children are opened in numeric order), an open :class:`annstream.Store`, or a
    list of these; global row ``g`` is row ``g`` of their concatenation. ``x``: the element
    ("X", "layers/<k>", "obsm/<k>").

    Iterating yields dicts ``{"X": ..., "obs": ..., "index": ...}``: ``X`` is a
    ``scipy.sparse.csr_matrix`` (sparse element) or ``numpy.ndarray`` (dense, N-D for obsm), or
    with ``output="torch"`` a sparse CSR / dense ``torch.Tensor``, all zero-copy views of the
    batch's C buffers; ``obs`` is a pandas DataFrame of the requested obs columns for the batch's
    rows (None without ``obs``); ``index`` holds the global row numbers (int64; None without
    ``return_index``).

    GPU: ``device="cuda"`` (or ``"cuda:1"``, a ``torch.device``; needs ``output="torch"``) yields
    ``X`` and ``index`` as tensors on that device. The C loader's batch buffers are then pinned
    once (cudaHostRegister) and each batch is copied straight out of them, asynchronously and one
    batch ahead of the loop, on a stream of the loader's; the consumer's current stream waits for
    the copy, so the tensors are ready for kernels queued on it. With ``densify=True`` a sparse
    element travels as CSR and is made dense on the device. Not in DataLoader workers.
    ``pin_memory=True`` (without ``device``) instead copies each CPU ``X`` into page-locked memory,
    for ``X.cuda(non_blocking=True)`` in the loop.

    Sampling (annbatch's chunked shuffle): rows are cut into chunks of ``chunk_size``; the chunk
    order is shuffled; ``preload_nchunks`` chunks are read together and their rows permuted and cut
    into batches of ``batch_size`` (which must divide ``chunk_size * preload_nchunks``). The order
    is a pure function of (seed, epoch, partition). ``seed=None`` draws a fresh seed once, at
    construction (kept in :meth:`state_dict`).

    Epochs: each ``iter()`` runs the current epoch; after a full pass the epoch advances by one, so
    every pass gives a new permutation. Once :meth:`set_epoch` has been called the epoch changes
    only through it (the DDP convention). DataLoader workers are fresh processes each epoch
    (unless ``persistent_workers=True``): call ``set_epoch`` before each epoch there.

    Partitions: ``rank`` / ``world_size`` (default: torch.distributed when initialised, else the
    RANK / WORLD_SIZE environment variables, else 0 / 1); inside a torch DataLoader worker the
    partition is ``rank * num_workers + worker_id`` of ``world_size * num_workers``. Each partition
    gets an equal, disjoint share of an epoch; the last ``n_obs % n_partitions`` rows of the
    epoch's sequence are skipped, and with ``drop_last`` so are the rows of a short last batch.

    ``len(loader)``: batches per epoch of this rank (without DataLoader workers).
    """

    def __init__(
        self,
        sources: Any,
        *,
        x: str = "X",
        obs: str | Sequence[str] | None = None,
        batch_size: int = 4096,
        chunk_size: int = 32,
        preload_nchunks: int = 256,
        shuffle: bool = True,
        seed: int | None = None,
        drop_last: bool = False,
        replacement: bool = False,
        num_samples: int | None = None,
        output: str = "numpy",
        densify: bool = False,
        dtype: Any = None,
        return_index: bool = False,
        threads: int | None = None,
        prefetch: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
        sampler: Any = None,
        device: Any = None,
    ) -> None:
        self._c = None
        self._closed = False
        self._creator_pid = os.getpid()
        self._stores: list[Store] = []
        self._owned: list[Store] = []
        # ---- parameters: checked before anything is opened ----
        if not isinstance(x, str):
            raise TypeError(f"x must be a str, not {type(x).__name__}")
        self._x = x
        self._batch_size = _check_int("batch_size", batch_size, 1)
        self._chunk_size = _check_int("chunk_size", chunk_size, 1)
        self._preload_nchunks = _check_int("preload_nchunks", preload_nchunks, 1)
        self._prefetch = _check_int("prefetch", prefetch, 1)
        if self._prefetch > 1024:
            raise ValueError(f"prefetch must be <= 1024, not {self._prefetch}")
        self._threads = _check_int("threads", 0 if threads is None else threads, 0)
        if self._threads > 4096:
            raise ValueError(f"threads must be <= 4096, not {self._threads}")
        self._shuffle = bool(shuffle)
        self._drop_last = bool(drop_last)
        self._replacement = bool(replacement)
        self._num_samples = _check_int("num_samples", num_samples, 1, none_ok=True)
        self._sampler = sampler
        if sampler is None:
            load_rows = self._chunk_size * self._preload_nchunks
            if load_rows % self._batch_size != 0:
                raise ValueError(
                    f"batch_size {self._batch_size} must divide chunk_size * preload_nchunks "
                    f"({self._chunk_size} * {self._preload_nchunks} = {load_rows})"
                )
            if self._replacement and not self._shuffle:
                raise ValueError("replacement=True needs shuffle=True")
            if self._num_samples is not None and not self._replacement:
                raise ValueError("num_samples is only meaningful with replacement=True")
        elif not callable(getattr(sampler, "plans", None)):
            raise TypeError("sampler must have a plans(epoch) method (see docs/loader.md)")
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', not {output!r}")
        if output == "torch" and not _HAVE_TORCH:
            raise ImportError("output='torch' needs torch, which cannot be imported")
        self._output = output
        if pin_memory and output != "torch":
            raise ValueError("pin_memory=True needs output='torch'")
        # device: None (CPU) or a torch.device("cuda", i): batches arrive there (_cuda.DeviceFeed)
        self._device = None
        if device is not None:
            if output != "torch":
                raise ValueError(f"device={device!r} needs output='torch'")
            import torch

            from ._cuda import resolve_device

            self._device = resolve_device(torch, device)
        self._densify = bool(densify)
        if dtype is None:
            self._dtype = None
        else:
            try:
                name = np.dtype(dtype).name
            except TypeError:
                raise ValueError(f"dtype {dtype!r} is not a numpy dtype") from None
            if name not in _OUT_DTYPES:
                raise ValueError(
                    f"dtype {name} is not supported (one of {', '.join(sorted(_OUT_DTYPES))})"
                )
            self._dtype = name
        self._return_index = bool(return_index)
        self._pin_memory = bool(pin_memory)
        if obs is None:
            self._obs_columns = None
        else:
            cols = [obs] if isinstance(obs, str) else list(obs)
            if not all(isinstance(c, str) for c in cols):
                raise TypeError("obs must be a column name or a list of column names")
            self._obs_columns = cols
        if seed is None:
            seed = secrets.randbits(64)
        elif isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an int or None, not {type(seed).__name__}")
        elif not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), not {seed}")
        self._seed = int(seed)
        self._rank, self._world_size = _distributed(rank, world_size)
        self._rank_arg, self._world_arg = rank, world_size
        self._epoch = 0
        self._pinned = False
        self._batches_yielded = 0
        self._resume = 0
        # (num_workers, batches consumed) for the DataLoader workers of the next pass, set by
        # StatefulDataLoader.load_state_dict; each worker's copy takes its share and drops it
        self._worker_resume: tuple[int, int] | None = None
        self._token = 0
        self._c_key: tuple | None = None

        # ---- sources: metadata only ----
        try:
            self._open_sources(sources)
            self._validate_stores()
            # the C loader checks everything else (shapes, dtypes, var names, options) reading
            # metadata only; it starts no thread and is reused when this process iterates
            self._c = self._make_c(self._rank, self._world_size)
            self._c_key = (os.getpid(), self._rank, self._world_size, self._seed)
            self._n_obs = self._c.n_obs
            if self._sampler is None and self._c.n_batches != self._n_batches(self._world_size):
                raise AssertionError("annstream: Loader batch count disagrees with the C sampler")
            self._var_names = self._stores[0].var_names
            self._x_sparse = self._stores[0][self._x].format == "csr"
            self._obs = self._read_obs() if self._obs_columns is not None else None
        except BaseException:
            self.close()
            raise
        self._fingerprint_params = self._params()
        text = json.dumps(self._fingerprint_params, sort_keys=True)
        self._fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]

    # ---------------------------------------------------------------------------------------------
    # construction helpers

    def _open_sources(self, sources: Any) -> None:
        if isinstance(sources, str | os.PathLike | Store):
            items = [sources]
        else:
            try:
                items = list(sources)
            except TypeError:
                raise TypeError(
                    "sources must be a path, an annstream.Store or a list of these, not "
                    f"{type(sources).__name__}"
                ) from None
        if not items:
            raise ValueError("no sources")
        self._paths: list[str] | None = []
        for item in items:
            if isinstance(item, Store):
                if item.closed:
                    raise ValueError(f"source {item.path!r} is a closed store")
                self._stores.append(item)
                self._paths.append(item.path)
            elif isinstance(item, str | os.PathLike):
                path = Path(os.fspath(item))
                children = _collection_children(path)
                for p in children if children is not None else [path]:
                    store = _open_store(p)
                    self._owned.append(store)
                    self._stores.append(store)
                    self._paths.append(os.fspath(p))
            else:
                raise TypeError(
                    f"a source must be a path or an annstream.Store, not {type(item).__name__}"
                )

    def _validate_stores(self) -> None:
        for store in self._stores:
            if self._x not in store:
                raise KeyError(
                    f"{store.path}: no element {self._x!r} (it has: {', '.join(store.keys())})"
                )

    def _make_c(self, partition: int, n_partitions: int):
        # A C loader keeps its own references to what it reads, so closing a Store under a running
        # Loader is harmless; but a new C loader (new seed, partition or process) needs them open.
        for store in self._stores:
            if store.closed:
                raise ValueError(
                    f"{store.path}: the annstream store was closed; the Loader needs it open to "
                    "start again here (a new seed, partition or process). Keep the store open "
                    "while the Loader is used, or give the Loader the path"
                )
        pin = None
        if self._device is not None and _worker() is None:
            import torch

            from ._cuda import cudart_pinning

            pin = cudart_pinning(torch, self._device)
        return _core.loader(
            [s._core for s in self._stores],
            key=self._x,
            batch_size=self._batch_size,
            chunk_size=self._chunk_size,
            preload_nchunks=self._preload_nchunks,
            shuffle=self._shuffle,
            drop_last=self._drop_last,
            replacement=self._replacement,
            num_samples=self._num_samples or 0,
            seed=self._seed,
            epoch=self._epoch,
            partition=partition,
            n_partitions=n_partitions,
            prefetch=self._prefetch,
            threads=self._threads,
            # with a CUDA device, sparse rows are densified there (fewer bytes over PCIe)
            densify=self._densify and self._device is None,
            out_dtype=self._dtype,
            return_index=self._return_index or self._obs_columns is not None,
            custom_plans=self._sampler is not None,
            pin=pin,
        )

    def _read_obs(self) -> pd.DataFrame:
        frames = [store.read_obs(self._obs_columns) for store in self._stores]
        return _concat_obs(frames, self._obs_columns)

    def _params(self) -> dict:
        return {
            "x": self._x,
            "n_obs": [s.n_obs for s in self._stores],
            "n_vars": self._stores[0].n_vars,
            "batch_size": self._batch_size,
            "chunk_size": self._chunk_size,
            "preload_nchunks": self._preload_nchunks,
            "shuffle": self._shuffle,
            "drop_last": self._drop_last,
            "replacement": self._replacement,
            "num_samples": self._num_samples,
            "custom_sampler": self._sampler is not None,
        }

    # ---------------------------------------------------------------------------------------------
    # properties

    @property
    def n_obs(self) -> int:
        """Rows of all sources together."""
        return self._n_obs

    @property
    def n_vars(self) -> int:
        return self._stores[0].n_vars if self._stores else 0

    @property
    def var_names(self) -> np.ndarray:
        """The var names (identical in every source)."""
        return self._var_names

    @property
    def obs(self) -> pd.DataFrame | None:
        """The requested obs columns of all sources, concatenated (None without ``obs``)."""
        return self._obs

    @property
    def stores(self) -> list[Store]:
        """The open stores, in global row order."""
        return list(self._stores)

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` runs (or the one running)."""
        return self._epoch

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        """Batches per epoch for this rank (equal on every rank)."""
        if self._sampler is not None:
            try:
                return len(self._sampler)
            except TypeError:
                raise TypeError("len(): the custom sampler has no __len__") from None
        self._check_open()
        return self._n_batches(self._world_size)

    def _n_batches(self, n_partitions: int) -> int:
        # the sampler's arithmetic (src/loader/sampler.h, semantics 2-5), checked against the C
        # loader at construction
        n = (self._num_samples or self._n_obs) if self._replacement else self._n_obs
        per = n // n_partitions
        rows = per - per % self._batch_size if self._drop_last else per
        return -(-rows // self._batch_size)

    # ---------------------------------------------------------------------------------------------
    # epochs and state

    def set_epoch(self, epoch: int) -> None:
        """Run epoch ``epoch`` on the next ``iter()``, from its first batch. From then on the epoch
        changes only through set_epoch (no automatic advance after a pass)."""
        self._epoch = _check_int("epoch", epoch, 0)
        self._pinned = True
        self._batches_yielded = 0
        self._resume = 0

    def state_dict(self) -> dict:
        """The position in the stream, for checkpoints: ``seed``, ``epoch``, ``batches_yielded``
        (batches of the current epoch already handed out), ``partition``, ``n_partitions``,
        ``epoch_pinned`` and a ``fingerprint`` of the parameters and sources. Taken inside a
        running ``for`` loop it counts the batch being processed."""
        return {
            "seed": self._seed,
            "epoch": self._epoch,
            "batches_yielded": self._batches_yielded,
            "partition": self._rank,
            "n_partitions": self._world_size,
            "epoch_pinned": self._pinned,
            "fingerprint": self._fingerprint,
            "params": dict(self._fingerprint_params),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_dict` of a Loader over the same sources with
        the same parameters): the next ``iter()`` yields exactly the batches that were left."""
        if not isinstance(state, dict):
            raise TypeError("state must be a dict from Loader.state_dict()")
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"state lacks {', '.join(missing)}")
        if state["fingerprint"] != self._fingerprint:
            theirs = state.get("params", {})
            diff = sorted(
                k
                for k in set(theirs) | set(self._fingerprint_params)
                if theirs.get(k) != self._fingerprint_params.get(k)
            )
            raise ValueError(
                "state was taken from a loader with other parameters or sources"
                + (f" (differing: {', '.join(diff)})" if diff else "")
            )
        if (state["partition"], state["n_partitions"]) != (self._rank, self._world_size):
            raise ValueError(
                f"state is for partition {state['partition']} of {state['n_partitions']}, this "
                f"loader is rank {self._rank} of {self._world_size}"
            )
        seed = int(state["seed"])
        epoch = _check_int("epoch", state["epoch"], 0)
        done = _check_int("batches_yielded", state["batches_yielded"], 0)
        if self._sampler is None and done > len(self):
            raise ValueError(f"batches_yielded {done} exceeds the {len(self)} batches of an epoch")
        if seed != self._seed:
            self._seed = seed
            self._drop_c()
        self._epoch = epoch
        self._pinned = bool(state.get("epoch_pinned", False))
        self._batches_yielded = done
        self._resume = done

    # ---------------------------------------------------------------------------------------------
    # iteration

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on a closed annstream Loader")

    def _drop_c(self) -> None:
        c, self._c, self._c_key = self._c, None, None
        if c is not None and c.pid == os.getpid():
            c.close()
        # in a forked child: just drop it (its dealloc only releases memory there)

    def _acquire(self, partition: int, n_partitions: int):
        key = (os.getpid(), partition, n_partitions, self._seed)
        if self._c is None or self._c_key != key or self._c.closed:
            self._drop_c()
            self._c = self._make_c(partition, n_partitions)
            self._c_key = key
        return self._c

    def __iter__(self) -> Iterator[dict]:
        self._check_open()
        return self._generate()

    def _generate(self) -> Iterator[dict]:
        self._check_open()
        worker = _worker()
        worker_id, num_workers = worker or (0, 1)
        if worker is not None and self._device is not None:
            raise RuntimeError(
                f"annstream Loader(device={str(self._device)!r}) cannot run in a DataLoader "
                "worker (CUDA is not usable there): iterate it in the main process, or leave "
                "device unset and use DataLoader(pin_memory=True)"
            )
        start = self._resume
        self._resume = 0
        resume = self._worker_resume
        if resume is not None and worker is not None and resume[0] == num_workers:
            # A resumed DataLoader pass (StatefulDataLoader): batch i of the original pass came
            # from worker i % W, and the DataLoader polls its workers round-robin from worker 0,
            # so worker w now serves the share ("logical worker") that comes next in that order,
            # from the batch that share had reached.
            self._worker_resume = None
            done = resume[1]
            worker_id = (worker_id + done) % num_workers
            start = done // num_workers + (1 if worker_id < done % num_workers else 0)
        partition = self._rank * num_workers + worker_id
        n_partitions = self._world_size * num_workers
        c = self._acquire(partition, n_partitions)
        self._token += 1
        token = self._token
        epoch = self._epoch
        # the stream's generation: the C loader refuses next() / push_plan() of an older one, so an
        # iteration restarted from another thread cannot lose a batch (or get a plan) to this one
        gen = c.set_epoch(epoch)
        if self._sampler is None and start:
            gen = c.seek(start)
        self._batches_yielded = start
        convert = self._convert
        feed = staged = None
        if self._device is not None:
            import torch

            from ._cuda import DeviceFeed

            feed = DeviceFeed(torch, self._device,
                              densify_on_device=self._densify and self._x_sparse,
                              return_index=self._return_index, obs_frame=self._obs)
        feeder = None
        if self._sampler is not None:
            feeder = _PlanFeeder(self._sampler, c, epoch, partition, n_partitions, start,
                                 self._prefetch, gen)
        finished = False
        try:
            while True:
                if token != self._token or self._c is not c:
                    raise RuntimeError(
                        "annstream Loader: another iteration started (or the loader was closed "
                        "or reset) while this one was running"
                    )
                if feeder is not None:
                    feeder.fill()
                try:
                    b = c.next(gen)
                except Exception:
                    if staged is None:
                        raise
                    # a read error of the batch after it: hand out the staged batch first, as the
                    # CPU path would, and raise on the next step
                    out, staged = feed.finish(staged), None
                    self._batches_yielded += 1
                    yield out
                    raise
                if b is None:
                    break
                if feeder is not None:
                    feeder.consumed(1)
                if feed is not None:
                    # one batch ahead: its copy to the device runs while the consumer has this one
                    nxt = feed.stage(b)
                    del b
                    if staged is not None:
                        out, staged = feed.finish(staged), nxt
                        self._batches_yielded += 1
                        yield out
                    else:
                        staged = nxt
                    continue
                self._batches_yielded += 1
                yield convert(b)
            if staged is not None:
                out, staged = feed.finish(staged), None
                self._batches_yielded += 1
                yield out
            finished = True
        finally:
            if feed is not None:
                feed.drain(staged)
            if token == self._token:
                if finished:
                    if not self._pinned:
                        self._epoch = epoch + 1
                    self._batches_yielded = 0
                # Stop (join) the producer thread - at the end of a pass, or when the loop was
                # left early - so that this process holds no running C loader, e.g. when it forks
                # DataLoader workers next. Queued batches are dropped; held ones stay valid.
                if self._c is c and not c.closed and c.pid == os.getpid():
                    try:
                        c.set_epoch(self._epoch)
                    except Exception:  # noqa: BLE001 - e.g. interpreter shutdown
                        pass

    def _convert(self, batch) -> dict:
        fmt, shape, dtype, index_dtype, data, indices, indptr, rows = batch.parts()
        values = np.frombuffer(data, dtype=dtype)
        index = np.frombuffer(rows, dtype=np.int64) if rows is not None else None
        if self._output == "torch":
            import torch

            if fmt == "dense":
                X = torch.from_numpy(values.reshape(shape))
            else:
                X = _csr_tensor(
                    torch,
                    torch.from_numpy(np.frombuffer(indptr, dtype=index_dtype)),
                    torch.from_numpy(np.frombuffer(indices, dtype=index_dtype)),
                    torch.from_numpy(values),
                    shape,
                )
            if self._pin_memory and torch.cuda.is_available():
                X = X.pin_memory()
            out_index = torch.from_numpy(index) if self._return_index else None
        else:
            if fmt == "dense":
                X = values.reshape(shape)
            else:
                X = sp.csr_matrix(
                    (
                        values,
                        np.frombuffer(indices, dtype=index_dtype),
                        np.frombuffer(indptr, dtype=index_dtype),
                    ),
                    shape=shape,
                    copy=False,
                )
            out_index = index if self._return_index else None
        obs = self._obs.iloc[index] if self._obs is not None else None
        return {"X": X, "obs": obs, "index": out_index}

    # ---------------------------------------------------------------------------------------------
    # lifetime, pickling

    def close(self) -> None:
        """Stop the background thread and free the C loader; close the stores this loader opened.
        Batches already handed out stay valid. Idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._token = getattr(self, "_token", 0) + 1
        self._drop_c()
        if os.getpid() == getattr(self, "_creator_pid", os.getpid()):
            for store in self._owned:
                store.close()
        self._owned = []

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            c = self.__dict__.get("_c")
            if c is not None and c.pid == os.getpid():
                c.close()
        except Exception:  # noqa: BLE001
            pass

    def __getstate__(self) -> dict:
        """Pickled as its sources' paths and its parameters (for spawn / forkserver workers): the
        unpickled loader reopens the paths."""
        if self._closed:
            raise ValueError("cannot pickle a closed annstream Loader")
        state = {k: v for k, v in self.__dict__.items() if k not in ("_c", "_stores", "_owned")}
        state["_c_key"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._c = None
        self._stores = []
        self._owned = []
        self._closed = False
        self._creator_pid = os.getpid()
        for p in self._paths:
            store = _open_store(p)
            self._owned.append(store)
            self._stores.append(store)

    def __repr__(self) -> str:
        if self._closed:
            return "<annstream.Loader (closed)>"
        return (
            f"<annstream.Loader {self._x!r} n_obs={self._n_obs} n_vars={self.n_vars} "
            f"sources={len(self._stores)} batch_size={self._batch_size} "
            f"shuffle={self._shuffle} epoch={self._epoch} rank={self._rank}/{self._world_size}>"
        )


_csr_first = True


def _csr_tensor(torch, crow, col, values, shape):
    """torch.sparse_csr_tensor over the given tensors (no copy). Built by the C loader, so valid by
    construction: no invariant checks. torch warns once per process that sparse CSR is "beta";
    that warning says nothing about this data, so it is silenced (only the first call pays for
    the catch_warnings, which is not thread-safe but runs once)."""
    global _csr_first
    if _csr_first:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            t = torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)
        _csr_first = False
        return t
    return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


class _PlanFeeder:
    """Pushes the plans of a custom sampler into the C loader, inline before each ``next``: at most
    ``prefetch + 1`` plans ahead of the consumer, and ``end_plans`` once the sampler is done. Skips
    the first ``start`` batches (resume)."""

    def __init__(self, sampler, c, epoch, partition, n_partitions, start, prefetch,
                 gen=None) -> None:
        plans = sampler.plans
        try:
            params = inspect.signature(plans).parameters
            partition_aware = "partition" in params or any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
            )
        except (TypeError, ValueError):
            partition_aware = False
        if partition_aware:
            it = plans(epoch, partition=partition, n_partitions=n_partitions)
        elif n_partitions > 1:
            raise ValueError(
                "the custom sampler's plans() takes no partition / n_partitions arguments, but "
                f"this loader runs as partition {partition} of {n_partitions} (DDP rank or "
                "DataLoader worker): accept them to split the epoch"
            )
        else:
            it = plans(epoch)
        self._it = iter(it)
        self._c = c
        self._gen = gen
        self._skip = start
        self._pending: collections.deque[int] = collections.deque()  # batches left per plan
        self._ended = False
        self._ahead = prefetch + 1

    def _push_next(self) -> None:
        try:
            plan = next(self._it)
        except StopIteration:
            self._c.end_plans(self._gen)
            self._ended = True
            return
        try:
            ranges, order, bounds = plan
        except (TypeError, ValueError):
            raise TypeError(
                "a sampler plan must be a (ranges, order, batch_bounds) tuple of arrays"
            ) from None
        ranges = _as_u64("ranges", ranges)
        order = _as_u64("order", order)
        bounds = _as_u64("batch_bounds", bounds)
        n_batches = len(bounds) - 1
        if n_batches <= 0:
            return  # an empty plan: nothing to read
        if self._skip >= n_batches:
            self._skip -= n_batches
            return
        if self._skip:
            k = self._skip
            self._skip = 0
            first = int(bounds[k])
            order = order[first:]
            bounds = bounds[k:] - np.uint64(first)
            n_batches -= k
        self._c.push_plan(ranges, order, np.ascontiguousarray(bounds), self._gen)
        self._pending.append(n_batches)

    def fill(self) -> None:
        while not self._ended and (not self._pending or len(self._pending) < self._ahead):
            self._push_next()

    def consumed(self, n: int) -> None:
        while n and self._pending:
            take = min(n, self._pending[0])
            self._pending[0] -= take
            n -= take
            if self._pending[0] == 0:
                self._pending.popleft()


if _HAVE_TORCH:
    from torch.utils.data import DataLoader as _TorchDataLoader

    class StatefulDataLoader(_TorchDataLoader):
        """A ``torch.utils.data.DataLoader`` over an annstream :class:`Loader` whose position can
        be saved and restored exactly, also with ``num_workers > 0``.

        >>> dl = annstream.StatefulDataLoader(loader, num_workers=4)
        >>> for i, batch in enumerate(dl):
        ...     if i % 1000 == 0:
        ...         torch.save({"model": model.state_dict(), "data": dl.state_dict()}, "ckpt.pt")
        >>> dl = annstream.StatefulDataLoader(annstream.Loader(...same...), num_workers=4)
        >>> dl.load_state_dict(torch.load("ckpt.pt")["data"])   # the rest of that pass, then on

        The Loader makes the batches, so ``batch_size`` is None (the default here); every other
        DataLoader argument passes through. The state records the epoch of the running pass and
        how many batches the training loop took from it. Batch ``i`` of a pass comes from worker
        ``i % num_workers`` (the DataLoader's round-robin, ``in_order=True``), and every worker's
        share has the same number of batches, so that count fixes each worker's position; the
        resumed pass yields exactly the batches that were left, in the original order. Restoring
        needs the same ``num_workers`` (another count splits the rows differently).

        Unlike a plain DataLoader over the Loader, the epoch advances after every completed pass
        (unless ``loader.set_epoch`` pinned it), in the main process's copy as in persistent
        workers' copies. With ``persistent_workers=True``, ``set_epoch`` does not reach workers
        that are already running, and ``load_state_dict`` must come before the first pass.
        """

        def __init__(self, dataset: Loader, **kwargs: Any) -> None:
            if not isinstance(dataset, Loader):
                raise TypeError(
                    f"StatefulDataLoader takes an annstream.Loader, not {type(dataset).__name__}"
                )
            if kwargs.setdefault("batch_size", None) is not None:
                raise ValueError("batch_size must be None: the annstream Loader makes the batches")
            if kwargs.get("in_order", True) is not True:
                raise ValueError(
                    "in_order=False hands batches over in the order the workers finish them, "
                    "which cannot be resumed exactly"
                )
            super().__init__(dataset, **kwargs)
            self._run_epoch: int | None = None  # epoch of the pass running, None between passes
            self._run_done = 0  # batches of that pass taken by the loop
            self._pending = 0  # batches of the next pass already taken (from load_state_dict)
            self._started = False

        def __iter__(self):
            if self.num_workers == 0:  # the Loader runs in this process and keeps its own state
                return super().__iter__()
            return self._pass()

        def _pass(self):
            loader: Loader = self.dataset
            epoch, done = loader._epoch, self._pending
            self._pending = 0
            loader._worker_resume = (self.num_workers, done) if done else None
            try:
                it = super().__iter__()  # the workers start here, with a copy of the loader
            finally:
                loader._worker_resume = None
            self._started = True
            self._run_epoch, self._run_done = epoch, done
            finished = False
            try:
                for batch in it:
                    self._run_done += 1
                    yield batch
                finished = True
            finally:
                if finished:
                    self._run_epoch, self._run_done = None, 0
                    if not loader._pinned:
                        loader._epoch = epoch + 1  # as every worker's copy did

        def state_dict(self) -> dict:
            """The Loader's state plus ``num_workers`` and the pass's ``batches_yielded`` (batches
            the loop took; taken inside the loop it counts the batch in hand). JSON-able."""
            loader: Loader = self.dataset
            state = loader.state_dict()
            if self.num_workers == 0:
                return {"num_workers": 0, "loader": state}
            if self._run_epoch is not None:
                state["epoch"], done = self._run_epoch, self._run_done
            else:
                done = self._pending
            state["batches_yielded"] = 0
            return {"num_workers": self.num_workers, "batches_yielded": done, "loader": state}

        def load_state_dict(self, state: dict) -> None:
            """Continue from ``state`` (from :meth:`state_dict` of a StatefulDataLoader with the
            same ``num_workers`` over a Loader with the same sources and parameters)."""
            if not isinstance(state, dict) or "loader" not in state or "num_workers" not in state:
                raise TypeError("state must be a dict from StatefulDataLoader.state_dict()")
            if state["num_workers"] != self.num_workers:
                raise ValueError(
                    f"state was taken with num_workers={state['num_workers']}, this DataLoader "
                    f"has {self.num_workers}: the workers' shares of the rows would differ"
                )
            loader: Loader = self.dataset
            if self.num_workers == 0:
                loader.load_state_dict(state["loader"])
                return
            if self.persistent_workers and self._started:
                raise ValueError(
                    "load_state_dict must come before the first pass with persistent_workers=True "
                    "(running workers keep their own copy of the loader)"
                )
            done = _check_int("batches_yielded", state.get("batches_yielded"), 0)
            if done and loader._sampler is not None:
                raise ValueError(
                    "resuming a pass inside DataLoader workers needs the built-in samplers "
                    "(a custom sampler's worker shares need not have equal lengths)"
                )
            per_worker = loader._n_batches(loader._world_size * self.num_workers)
            if done > per_worker * self.num_workers:
                raise ValueError(
                    f"batches_yielded {done} exceeds the {per_worker * self.num_workers} batches "
                    f"of a pass with {self.num_workers} workers"
                )
            loader.load_state_dict(state["loader"])
            self._pending = done

    __all__.append("StatefulDataLoader")
