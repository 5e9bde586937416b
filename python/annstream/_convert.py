"""annstream.convert: AnnData stores -> a pre-shuffled annbatch collection (the C ans_convert).

The conversion runs in C with the GIL released; progress reports and Ctrl-C checks briefly take
the GIL back between blocks of rows. See ``include/annstream.h`` ("Collections") for the full
contract: var policies, obs handling, memory bound, safety.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Union

from . import _core

PathLike = Union[str, "os.PathLike[str]"]

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgtKMGT]?)(i?)([bB]?)\s*$")

_VAR = {"union": 0, "intersection": 1}
_COMPRESSORS = {"lz4": 0, "zstd": 1, "none": 2, None: 2}


def parse_size(value: int | str, what: str = "size") -> int:
    """Bytes of "512MiB", "1GB", "2.5G" or an int. Units are binary (annbatch: "1GB" = 1 GiB)."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int or a size string, not bool")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{what} must be positive, got {value}")
        return value
    if not isinstance(value, str):
        raise TypeError(f"{what} must be an int or a size string like '1GiB'")
    m = _SIZE_RE.match(value)
    if not m or (m.group(3) and not m.group(2)):
        raise ValueError(f"invalid {what} {value!r} (expected e.g. '512MiB', '1GB', 4096)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return n


class _Bar:
    """A plain stderr progress bar: rows done, rows/s, ETA (at most every 0.2 s)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.2:
            return
        self.last = now
        elapsed = now - self.start
        frac = done / total if total else 1.0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        fill = int(frac * 30)
        bar = "#" * fill + "-" * (30 - fill)
        eta_s = "--:--" if eta != eta else time.strftime("%H:%M:%S", time.gmtime(eta))
        self.stream.write(
            f"\r[{bar}] {frac * 100:3.0f}% {done}/{total} rows  {rate:.0f} rows/s  ETA {eta_s} "
        )
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _names(value, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise TypeError(f"{what} must be a sequence of str") from None
    for v in out:
        if not isinstance(v, str):
            raise TypeError(f"{what} must be a sequence of str, got {type(v).__name__}")
    return out


def convert(
    inputs: PathLike | Sequence[PathLike],
    output: PathLike,
    *,
    shuffle: bool = True,
    seed: int | None = None,
    dataset_size: int | str = "20GiB",
    var: str | Iterable[str] = "union",
    obs: Iterable[str] | None = None,
    groupby: str | Iterable[str] | None = None,
    layers: Iterable[str] = (),
    obsm: Iterable[str] = (),
    n_obs_per_chunk: int = 64,
    shard_size: int | str = "1GiB",
    compressor: str | None = "lz4",
    memory: int | str = "2GiB",
    threads: int | None = None,
    append: bool = False,
    overwrite: bool = False,
    progress: bool | Callable[[int, int], object] = True,
) -> None:
    """Write AnnData stores as a pre-shuffled annbatch collection (zarr v3, sharded).

    Parameters
    ----------
    inputs
        AnnData stores (zarr v2/v3 directories or .h5ad files); X may be CSR, CSC or dense.
    output
        The collection directory (``dataset_0`` ... ``dataset_{N-1}``, each an AnnData).
    shuffle, seed
        Rows of all inputs are put in a uniform random order determined by ``seed``
        (``None``: a fresh random seed). ``shuffle=False`` keeps the input order.
    dataset_size
        Rows per dataset (an int), or estimated uncompressed bytes per dataset (a size string
        such as ``"20GiB"``; units are binary as in annbatch).
    var
        ``"union"`` (every gene, in first-seen order), ``"intersection"`` (the genes all inputs
        share, in the first input's order) or a sequence of gene names (exactly those; genes an
        input lacks are zeros).
    obs
        obs columns to carry (``None``: those every input has with a compatible kind). A
        categorical ``src_path`` column naming each row's input is always added; categories
        are unified in first-seen order. Colliding obs names get ``-<input index>``.
    groupby
        obs column name(s) to group by: within each dataset the rows are stably sorted by these
        columns (categoricals in category order, numbers by value, strings bytewise, missing
        values last), so the shuffled order is kept within a group, as annbatch's
        ``add_adatas(groupby=...)`` does. The columns must be among those written (``obs``).
        Needs 16 bytes per row of ``memory`` while the order is computed.
    layers, obsm
        Names of layers / obsm entries to carry (each must exist in every input).
    n_obs_per_chunk, shard_size, compressor
        Layout: rows per inner chunk, target shard size (capped at ``memory / 8``), ``"lz4"`` (blosc lz4, annbatch's
        default), ``"zstd"`` or ``"none"``.
    memory
        Memory budget for the conversion (bytes or a size string); the input size does not
        matter: rows are scattered to temporary run files and gathered per dataset.
    threads
        Decode / encode threads (``None``: one per CPU).
    append
        Add the inputs to the existing collection ``output`` (all rows are reshuffled, new genes
        kept with ``var="union"``).
    overwrite
        Replace ``output`` when it exists (only once the new collection is complete).
    progress
        ``True``: a progress bar on stderr; ``False``: none; or a callable ``(done, total)``.

    Raises
    ------
    FileExistsError
        ``output`` exists and neither ``overwrite`` nor ``append`` is set.
    FileNotFoundError
        An input does not exist.
    KeyError
        An input lacks a requested element (layer, obsm) or obs column.
    ValueError, annstream.FormatError, OSError
        Inputs that cannot be combined, unreadable inputs, write failures; messages name the
        input and the element.
    KeyboardInterrupt
        Ctrl-C cancels the conversion; nothing is left at ``output``.
    """
    if isinstance(inputs, (str, bytes, os.PathLike)):
        inputs = [inputs]
    in_paths = [os.fsencode(p) for p in inputs]
    out_path = os.fsencode(output)
    if not in_paths and not append:
        raise ValueError("convert: no inputs")
    for p in in_paths:
        if not os.path.exists(p):
            raise FileNotFoundError(errno.ENOENT, "convert: no such input", os.fsdecode(p))
    if os.path.exists(out_path) and not overwrite and not append:
        raise FileExistsError(
            f"{os.fsdecode(out_path)}: the output exists (pass overwrite=True or append=True)"
        )
    if isinstance(dataset_size, bool):
        raise TypeError("dataset_size must be an int (rows) or a size string (bytes)")
    if isinstance(dataset_size, int):
        if dataset_size <= 0:
            raise ValueError("dataset_size must be positive")
        ds_rows, ds_bytes = dataset_size, 1
    else:
        ds_rows, ds_bytes = 0, parse_size(dataset_size, "dataset_size")
    var_names = None
    if isinstance(var, str):
        if var not in _VAR:
            raise ValueError(f"var must be 'union', 'intersection' or a list of names, got {var!r}")
        var_policy = _VAR[var]
    else:
        var_policy, var_names = 2, _names(var, "var")
    if compressor not in _COMPRESSORS:
        raise ValueError(f"compressor must be 'lz4', 'zstd' or 'none', got {compressor!r}")
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    if not isinstance(seed, int) or seed < 0 or seed >= 1 << 64:
        raise ValueError("seed must be an int in [0, 2**64)")
    if threads is None:
        threads = 0
    if n_obs_per_chunk <= 0:
        raise ValueError("n_obs_per_chunk must be positive")
    bar = None
    if progress is True:
        bar = _Bar()
        cb = bar
    elif progress is False or progress is None:
        cb = None
    elif callable(progress):
        cb = progress
    else:
        raise TypeError("progress must be a bool or a callable(done, total)")
    try:
        _core.convert(
            in_paths,
            out_path,
            shuffle=bool(shuffle),
            seed=seed,
            dataset_size_rows=ds_rows,
            dataset_size_bytes=ds_bytes,
            var=var_policy,
            var_names=var_names,
            obs=None if obs is None else _names(obs, "obs"),
            groupby=None if groupby is None else _names(groupby, "groupby"),
            layers=_names(layers, "layers"),
            obsm=_names(obsm, "obsm"),
            n_obs_per_chunk=int(n_obs_per_chunk),
            shard_size=parse_size(shard_size, "shard_size"),
            compressor=_COMPRESSORS[compressor],
            memory=parse_size(memory, "memory"),
            threads=int(threads),
            append=bool(append),
            overwrite=bool(overwrite),
            progress=cb,
        )
    finally:
        if bar is not None:
            bar.close()
