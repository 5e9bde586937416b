"""Hostile stores through every entry point: annstream.open / read_rows / read_obs, the Loader
(construction and one full epoch) and the writer (annstream.convert), and allocations bounded by
what the file can back.

Every store is written by anndata (tests/python/stores.py, spec "main") and then damaged here:
truncated, bit-flipped, emptied or unreadable chunks and shards, shard offsets past the end, shapes
that claim more rows or columns than are stored, negative and zero sizes, unknown codecs and dtypes,
invalid and deeply nested JSON, inconsistent sparse arrays, missing elements, symlink loops. Each
must raise a Python exception (annstream.FormatError, or OSError / KeyError where that is the right
type) whose message names the file and the damaged element; never a crash, a hang or wrong data.
The writer must also leave nothing behind: neither the output nor a temporary sibling of it.

What cannot be detected, and is not tested: damage to the *values* inside a chunk that still
decodes (a bit flip in an uncompressed or compressed payload that the codec accepts). Only
structural damage is detectable: headers, sizes, offsets, checksums (sharding's CRC32C), metadata,
and the CSR invariants (indptr from 0, non-decreasing, ending at nnz; column indices in range),
which are checked on the rows a read touches.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import zarr
from test_errors import (
    H5AD,
    ZARR,
    M,
    N,
    _rewrite,
    chunk_path,
    crc32c,
    flip,
    is_v2,
    patch_zarr_metadata,
    shard_index,
    unconsolidate,
)

import annstream

ALL = ZARR + H5AD
LOADER_OPTS = dict(batch_size=8, chunk_size=8, preload_nchunks=2, seed=3, threads=2, prefetch=1)
HANG_SECONDS = 120  # a hang is reported as a failure (faulthandler kills the run) after this long


@pytest.fixture(autouse=True)
def _no_hang():
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# --------------------------------------------------------------------------------------------------
# damages: each takes a fresh copy of the store and damages it; `parts` must appear in the message


@dataclass(frozen=True)
class Damage:
    name: str
    containers: tuple[str, ...]
    fn: Callable[[Path, str], None]
    parts: tuple[str, ...] = ("X",)
    errors: tuple[type[BaseException], ...] = (annstream.FormatError,)
    needs_unprivileged: bool = False


def _array_doc(p: Path, array: str) -> Path:
    return p / array / (".zarray" if is_v2(p) else "zarr.json")


def patch_array_metadata(p: Path, array: str, fn) -> None:
    """Apply fn(meta) to the metadata document of `array` (.zarray or zarr.json) and to its copy
    in the consolidated metadata."""
    f = _array_doc(p, array)
    meta = json.loads(f.read_text())
    fn(meta)
    f.write_text(json.dumps(meta))
    if is_v2(p):
        cf = p / ".zmetadata"
        cons = json.loads(cf.read_text())
        fn(cons["metadata"][f"{array}/.zarray"])
        cf.write_text(json.dumps(cons))
    else:
        rf = p / "zarr.json"
        root = json.loads(rf.read_text())
        fn(root["consolidated_metadata"]["metadata"][array])
        rf.write_text(json.dumps(root))


def _set_shape0(n: int):
    def fn(meta):
        meta["shape"][0] = n

    return fn


def _chunk_files(p: Path, array: str) -> list[Path]:
    return sorted(
        f
        for f in (p / array).rglob("*")
        if f.is_file() and f.name not in (".zarray", ".zattrs", "zarr.json")
    )


def d_truncated_chunk(p, c):
    f = chunk_path(p, "X/data")
    b = f.read_bytes()
    f.write_bytes(b[: len(b) // 2])


def d_truncated_last_chunk(p, c):
    f = _chunk_files(p, "X/indices")[-1]
    b = f.read_bytes()
    f.write_bytes(b[: len(b) - 3])


def d_flipped_header(p, c):
    flip(chunk_path(p, "X/data"), 0)


def d_empty_chunk_file(p, c):
    chunk_path(p, "X/indices").write_bytes(b"")


def d_chunk_is_directory(p, c):
    f = chunk_path(p, "X/data")
    f.unlink()
    f.mkdir()
    (f / "x").write_bytes(b"1")


def d_unreadable_chunk(p, c):
    chunk_path(p, "X/data").chmod(0)


def d_unreadable_file(p, c):
    p.chmod(0)


def d_symlink_loop_chunk(p, c):
    f = chunk_path(p, "X/data")
    f.unlink()
    os.symlink(f.name, f)  # points at itself: ELOOP


def d_symlink_loop_store(p, c):
    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink()
    os.symlink(p.name + ".loop", p)
    os.symlink(p.name, p.parent / (p.name + ".loop"))


def d_empty_h5ad(p, c):
    p.write_bytes(b"")


def d_truncated_h5ad(p, c):
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.truncate(size * 6 // 10)


def d_h5_gzip_header(p, c):
    with h5py.File(p, "r") as f:
        offset = f["X/data"].id.get_chunk_info(0).byte_offset
    flip(p, offset, 2)


def d_h5_chunk_offset_past_end(p, c):
    """The first chunk of X/indices moved past the end of the file: its address rewritten where
    libhdf5 itself then finds it (checked with h5py)."""
    with h5py.File(p, "r") as f:
        info = f["X/indices"].id.get_chunk_info(0)
    orig = p.read_bytes()
    addr = struct.pack("<Q", info.byte_offset)
    moved = len(orig) + 4096
    at = orig.find(addr)
    while at >= 0:
        b = bytearray(orig)
        b[at : at + 8] = struct.pack("<Q", moved)
        p.write_bytes(bytes(b))
        try:
            with h5py.File(p, "r") as f:
                if f["X/indices"].id.get_chunk_info(0).byte_offset == moved:
                    return
        except Exception:  # noqa: BLE001 - this candidate broke something else
            pass
        at = orig.find(addr, at + 1)
    raise AssertionError("the chunk address of X/indices was not found in the file")


def _shard_rewrite(p, entry_fn):
    f, n = shard_index(p, "X/data")
    b = bytearray(f.read_bytes())
    index_at = len(b) - (16 * n + 4)
    entry_fn(b, index_at)
    struct.pack_into("<I", b, len(b) - 4, crc32c(bytes(b[index_at : len(b) - 4])))
    f.write_bytes(bytes(b))


def d_shard_offset_past_end(p, c):
    def fn(b, at):
        _, nbytes = struct.unpack_from("<QQ", b, at)
        struct.pack_into("<QQ", b, at, len(b) + 1000, nbytes)

    _shard_rewrite(p, fn)


def d_shard_offset_overflow(p, c):
    _shard_rewrite(p, lambda b, at: struct.pack_into("<QQ", b, at + 16, 2**64 - 8, 16))


def d_shard_nbytes_huge(p, c):
    _shard_rewrite(p, lambda b, at: struct.pack_into("<QQ", b, at, 0, 2**40))


def d_shard_crc(p, c):
    f, n = shard_index(p, "X/data")
    b = bytearray(f.read_bytes())
    b[len(b) - (16 * n + 4) + 9] ^= 0x01
    f.write_bytes(bytes(b))


def d_truncated_shard(p, c):
    f, _ = shard_index(p, "X/data")
    f.write_bytes(f.read_bytes()[:10])


def d_lying_shape_attr(p, c):
    if c in H5AD:
        with h5py.File(p, "r+") as f:
            f["X"].attrs["shape"] = np.array([N + 10, M], dtype=np.int64)
    else:
        patch_zarr_metadata(p, "X", lambda a: a.__setitem__("shape", [N + 10, M]))


def d_lying_columns(p, c):
    if c in H5AD:
        with h5py.File(p, "r+") as f:
            f["X"].attrs["shape"] = np.array([N, 10**9], dtype=np.int64)
    else:
        patch_zarr_metadata(p, "X", lambda a: a.__setitem__("shape", [N, 10**9]))


def _lie_rows(p: Path, n: int) -> None:
    """The whole store claims n rows: X's shape, X/indptr, and every obs array. Only metadata
    changes; the chunks past the stored ones are missing (zarr reads them as fill values)."""
    patch_zarr_metadata(p, "X", lambda a: a.__setitem__("shape", [n, M]))
    patch_array_metadata(p, "X/indptr", _set_shape0(n + 1))
    for doc in sorted((p / "obs").rglob(".zarray" if is_v2(p) else "zarr.json")):
        meta = json.loads(doc.read_text())
        if meta.get("node_type", "array") == "array" and "shape" in meta:
            patch_array_metadata(p, str(doc.parent.relative_to(p)), _set_shape0(n))


def d_lying_rows(p, c):
    _lie_rows(p, N + 1000)


def d_negative_shape_attr(p, c):
    if c in H5AD:
        with h5py.File(p, "r+") as f:
            f["X"].attrs["shape"] = np.array([-5, M], dtype=np.int64)
    else:
        patch_zarr_metadata(p, "X", lambda a: a.__setitem__("shape", [-5, M]))


def d_negative_array_shape(p, c):
    patch_array_metadata(p, "X/data", lambda m: m.__setitem__("shape", [-1]))


def d_zero_chunk_shape(p, c):
    def fn(meta):
        if "chunks" in meta:
            meta["chunks"] = [0]
        else:
            meta["chunk_grid"]["configuration"]["chunk_shape"] = [0]

    patch_array_metadata(p, "X/indices", fn)


def d_zero_indptr(p, c):
    patch_array_metadata(p, "X/indptr", _set_shape0(0))


def d_huge_chunk_shape(p, c):
    def fn(meta):
        if "chunks" in meta:
            meta["chunks"] = [2**62]
        else:
            meta["chunk_grid"]["configuration"]["chunk_shape"] = [2**62]

    patch_array_metadata(p, "X/data", fn)


def d_unknown_codec(p, c):
    def fn(meta):
        if "compressor" in meta:
            meta["compressor"] = {"id": "fancy-squash", "level": 3}
        else:
            meta["codecs"].append({"name": "fancy-squash", "configuration": {}})

    patch_array_metadata(p, "X/data", fn)


def d_unknown_dtype(p, c):
    def fn(meta):
        if "dtype" in meta:
            meta["dtype"] = "<c32"
        else:
            meta["data_type"] = "complex256"

    patch_array_metadata(p, "X/data", fn)


def d_indptr_float(p, c):
    def fn(meta):
        if "dtype" in meta:
            meta["dtype"] = "<f8"
        else:
            meta["data_type"] = "float64"

    patch_array_metadata(p, "X/indptr", fn)


def d_invalid_json(p, c):
    unconsolidate(p)
    _array_doc(p, "X/indices").write_text('{"zarr_format": 3, "shape": [1, oops')


def d_empty_json(p, c):
    unconsolidate(p)
    _array_doc(p, "X/indptr").write_text("")


def d_nested_json(p, c):
    unconsolidate(p)
    f = _array_doc(p, "X/data")
    text = f.read_text()
    nested = "[" * 200_000 + "]" * 200_000
    f.write_text(text[:1] + '"deep": ' + nested + ", " + text[1:])


def d_nested_consolidated(p, c):
    f = p / (".zmetadata" if is_v2(p) else "zarr.json")
    text = f.read_text()
    f.write_text(text[:1] + '"deep": ' + "{\"a\": " * 100_000 + "1" + "}" * 100_000 + ", " + text[1:])


def _sparse_damage(array, fn):
    def damage(p, c):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _rewrite(p, c, array, fn)

    return damage


def _non_monotonic(indptr):
    indptr[10] = indptr[11] + 5


def _index_out_of_range(indices):
    indices[3] = M + 100


def _index_negative(indices):
    indices[5] = -7


def _indptr_past_nnz(indptr):
    indptr[-1] = indptr[-1] + 50


def _indptr_not_zero(indptr):
    indptr[0] = 3


def d_missing_indices(p, c):
    if c in H5AD:
        with h5py.File(p, "r+") as f:
            del f["X/indices"]
    else:
        shutil.rmtree(p / "X" / "indices")  # the consolidated metadata still lists it


def d_missing_indices_unconsolidated(p, c):
    unconsolidate(p)
    shutil.rmtree(p / "X" / "indices")


def d_missing_x(p, c):
    if c in H5AD:
        with h5py.File(p, "r+") as f:
            del f["X"]
    else:
        unconsolidate(p)
        shutil.rmtree(p / "X")


def d_missing_obs_index(p, c):
    if c in H5AD:
        with h5py.File(p, "r+") as f:
            del f["obs/cell_id"]
    else:
        unconsolidate(p)
        shutil.rmtree(p / "obs" / "cell_id")


SHARDED = ("zarr3-sharded",)
H5_PLAIN = ("h5ad",)

DAMAGES = [
    Damage("truncated_chunk", ZARR, d_truncated_chunk),
    Damage("truncated_last_chunk", ZARR, d_truncated_last_chunk),
    Damage("flipped_chunk_header", ZARR, d_flipped_header),
    Damage("empty_chunk_file", ZARR, d_empty_chunk_file),
    Damage("chunk_is_directory", ZARR, d_chunk_is_directory, errors=(OSError, annstream.FormatError)),
    Damage("unreadable_chunk", ZARR, d_unreadable_chunk, errors=(OSError,), needs_unprivileged=True),
    Damage("unreadable_h5ad", H5AD, d_unreadable_file, parts=(), errors=(OSError,),
           needs_unprivileged=True),
    Damage("symlink_loop_chunk", ZARR, d_symlink_loop_chunk, errors=(OSError,)),
    Damage("symlink_loop_store", ALL, d_symlink_loop_store, parts=(), errors=(OSError,)),
    Damage("empty_h5ad", H5AD, d_empty_h5ad, parts=()),
    Damage("truncated_h5ad", H5AD, d_truncated_h5ad, parts=()),
    Damage("h5_gzip_chunk_header", ("h5ad-gzip",), d_h5_gzip_header),
    Damage("h5_chunk_offset_past_end", H5AD, d_h5_chunk_offset_past_end),
    Damage("shard_offset_past_end", SHARDED, d_shard_offset_past_end),
    Damage("shard_offset_overflow", SHARDED, d_shard_offset_overflow),
    Damage("shard_nbytes_huge", SHARDED, d_shard_nbytes_huge),
    Damage("shard_crc_mismatch", SHARDED, d_shard_crc),
    Damage("truncated_shard", SHARDED, d_truncated_shard),
    Damage("lying_shape_attr", ALL, d_lying_shape_attr),
    Damage("lying_columns", ALL, d_lying_columns),
    Damage("lying_rows", ZARR, d_lying_rows),
    Damage("negative_shape_attr", ALL, d_negative_shape_attr),
    Damage("negative_array_shape", ZARR, d_negative_array_shape),
    Damage("zero_chunk_shape", ZARR, d_zero_chunk_shape),
    Damage("zero_length_indptr", ZARR, d_zero_indptr),
    Damage("huge_chunk_shape", ZARR, d_huge_chunk_shape),
    Damage("unknown_codec", ZARR, d_unknown_codec),
    Damage("unknown_dtype", ZARR, d_unknown_dtype),
    Damage("float_indptr", ZARR, d_indptr_float),
    Damage("invalid_json", ZARR, d_invalid_json),
    Damage("empty_json", ZARR, d_empty_json),
    Damage("deeply_nested_json", ZARR, d_nested_json),
    Damage("deeply_nested_consolidated", ZARR, d_nested_consolidated, parts=()),
    Damage("non_monotonic_indptr", ALL, _sparse_damage("X/indptr", _non_monotonic)),
    Damage("indices_out_of_range", ALL, _sparse_damage("X/indices", _index_out_of_range)),
    Damage("negative_index", ALL, _sparse_damage("X/indices", _index_negative)),
    Damage("indptr_past_nnz", ALL, _sparse_damage("X/indptr", _indptr_past_nnz)),
    Damage("indptr_not_zero", ALL, _sparse_damage("X/indptr", _indptr_not_zero)),
    Damage("missing_indices", ALL, d_missing_indices),
    Damage("missing_indices_unconsolidated", ZARR, d_missing_indices_unconsolidated),
    Damage("missing_x", ALL, d_missing_x, errors=(KeyError, annstream.FormatError)),
    Damage("missing_obs_index", ALL, d_missing_obs_index, parts=("obs",)),
]

CASES = [
    pytest.param(d, c, id=f"{d.name}-{c}") for d in DAMAGES for c in d.containers
]


def damaged(stores, tmp_path: Path, damage: Damage, container: str) -> Path:
    if damage.needs_unprivileged and os.geteuid() == 0:
        pytest.skip("running as root: permission bits do not stop reads")
    src = tmp_path / "src"
    src.mkdir()
    p = stores.fresh_copy("main", container, src)
    damage.fn(p, container)
    return p


def check_message(exc: BaseException, path: Path, parts: tuple[str, ...]) -> None:
    msg = str(exc)
    assert path.name in msg, f"message does not name the file {path.name!r}: {msg!r}"
    for part in parts:
        assert part in msg, f"message does not name {part!r}: {msg!r}"


@pytest.fixture(autouse=True)
def _restore_permissions(tmp_path):
    yield
    for f in [tmp_path, *tmp_path.rglob("*")]:
        if not f.is_symlink():
            try:
                f.chmod(0o755 if f.is_dir() else 0o644)
            except OSError:
                pass


# --------------------------------------------------------------------------------------------------
# the read path: open, every element's rows, obs and var


@pytest.mark.parametrize("damage,container", CASES)
def test_read_path(stores, tmp_path, damage, container):
    p = damaged(stores, tmp_path, damage, container)
    with pytest.raises(damage.errors) as ei:
        with annstream.open(p, threads=2) as store:
            x = store["X"]
            x.read_rows(slice(None))
            x.read_rows(np.arange(store.n_obs)[::-1])
            store.read_obs()
            store.read_var()
    check_message(ei.value, p, damage.parts)


# --------------------------------------------------------------------------------------------------
# the loader: the error comes from Loader(...) or from next(), never a crash, hang or wrong data


def run_loader(p: Path) -> int:
    ld = annstream.Loader(p, **LOADER_OPTS)
    try:
        rows = 0
        for batch in ld:
            rows += batch["X"].shape[0]
        return rows
    finally:
        ld.close()


LOADER_CASES = [pytest.param(d, c, id=f"{d.name}-{c}") for d in DAMAGES for c in d.containers]


@pytest.mark.parametrize("damage,container", LOADER_CASES)
def test_loader(stores, tmp_path, damage, container):
    p = damaged(stores, tmp_path, damage, container)
    with pytest.raises(damage.errors) as ei:
        run_loader(p)
    check_message(ei.value, p, damage.parts)


@pytest.mark.parametrize("damage,container", [c for c in CASES if c.values[0].name in (
    "non_monotonic_indptr", "indices_out_of_range", "truncated_chunk", "flipped_chunk_header")])
def test_loader_obs_and_index(stores, tmp_path, damage, container):
    """With obs columns and indices requested, the same damage still surfaces from next()."""
    p = damaged(stores, tmp_path, damage, container)
    with pytest.raises(damage.errors) as ei:
        ld = annstream.Loader(p, obs=["cat", "i32"], return_index=True, **LOADER_OPTS)
        try:
            for _ in ld:
                pass
        finally:
            ld.close()
    check_message(ei.value, p, damage.parts)


def test_loader_undamaged_control(stores, tmp_path):
    """The loader options above do read a whole undamaged epoch (so the damage is what fails)."""
    for container in ALL:
        src = tmp_path / container
        src.mkdir()
        assert run_loader(stores.fresh_copy("main", container, src)) == N


# --------------------------------------------------------------------------------------------------
# the writer: the exception propagates and nothing is left at the output or beside it


def leftovers(out: Path) -> list[str]:
    return sorted(f.name for f in out.parent.iterdir() if f.name == out.name or f.name.startswith(out.name + "."))


def run_convert(inputs: list[Path], out: Path) -> None:
    annstream.convert(inputs, out, progress=False, threads=2, seed=5, memory="64MiB",
                      dataset_size=40)


@pytest.mark.parametrize("damage,container", CASES)
def test_convert(stores, tmp_path, damage, container):
    p = damaged(stores, tmp_path, damage, container)
    out = tmp_path / "out" / "collection.zarr"
    out.parent.mkdir()
    with pytest.raises(damage.errors) as ei:
        run_convert([p], out)
    check_message(ei.value, p, damage.parts)
    assert leftovers(out) == []


@pytest.mark.parametrize(
    "damage", [d for d in DAMAGES if d.name in ("non_monotonic_indptr", "indices_out_of_range",
                                                 "truncated_last_chunk")], ids=lambda d: d.name
)
def test_convert_damaged_second_input(stores, tmp_path, damage):
    """A good input first, the damaged one second (the writer has started), and an existing output
    that overwrite=True would replace: it must survive unchanged."""
    good_dir = tmp_path / "good"
    good_dir.mkdir()
    good = stores.fresh_copy("main", "zarr3", good_dir)
    p = damaged(stores, tmp_path, damage, "zarr2")
    out = tmp_path / "out" / "collection.zarr"
    out.parent.mkdir()
    run_convert([good], out)
    before = sorted(str(f.relative_to(out)) for f in out.rglob("*"))
    with pytest.raises(damage.errors) as ei:
        annstream.convert([good, p], out, progress=False, threads=2, seed=5, memory="64MiB",
                          dataset_size=40, overwrite=True)
    check_message(ei.value, p, damage.parts)
    assert leftovers(out) == [out.name]
    assert sorted(str(f.relative_to(out)) for f in out.rglob("*")) == before
    with annstream.open(out / "dataset_0") as store:
        assert store.n_obs == 40


def test_convert_undamaged_control(stores, tmp_path):
    for container in ALL:
        src = tmp_path / container
        src.mkdir()
        out = tmp_path / f"out-{container}"
        run_convert([stores.fresh_copy("main", container, src)], out)
        assert leftovers(out) == [out.name]


# --------------------------------------------------------------------------------------------------
# bounded allocation: shapes claiming far more rows than the file holds


def _lying_store(stores, tmp_path: Path, container: str, n: int) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    p = stores.fresh_copy("main", container, src)
    _lie_rows(p, n)
    return p


def _empty_store(tmp_path: Path, container: str, n: int) -> Path:
    """A valid AnnData whose X is an empty n x 5 CSR matrix and whose obs index has n names, none
    of which were ever written: zarr leaves out chunks equal to the fill value
    (write_empty_chunks=False), so the store holds only metadata. Written with zarr directly (anndata
    would materialise the n names)."""
    fmt = 2 if container == "zarr2" else 3
    p = tmp_path / f"empty-{container}.zarr"
    root = zarr.open_group(str(p), mode="w", zarr_format=fmt)
    root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    kw = dict(fill_value=0, config={"write_empty_chunks": False})
    if container == "zarr3-sharded":
        kw["shards"] = (1 << 16,)
    obs = root.create_group("obs")
    obs.attrs.update({"_index": "_index", "column-order": [], "encoding-type": "dataframe",
                      "encoding-version": "0.2.0"})
    idx = obs.create_array("_index", shape=(n,), chunks=(4096,), dtype="int64", **kw)
    idx.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    var = root.create_group("var")
    var.attrs.update({"_index": "_index", "column-order": [], "encoding-type": "dataframe",
                      "encoding-version": "0.2.0"})
    vi = var.create_array("_index", shape=(5,), chunks=(5,), dtype="int64", fill_value=0)
    vi[:] = np.arange(5)
    vi.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    x = root.create_group("X")
    x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n, 5]})
    x.create_array("data", shape=(0,), chunks=(4096,), dtype="float32", fill_value=0)
    x.create_array("indices", shape=(0,), chunks=(4096,), dtype="int32", fill_value=0)
    ptr = x.create_array("indptr", shape=(n + 1,), chunks=(4096,), dtype="int64", **kw)
    ptr[:8] = 0  # a written chunk of zeros: left out too
    zarr.consolidate_metadata(str(p), zarr_format=fmt)
    return p


_RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys, time, json
    import numpy as np
    import annstream
    path, mode = sys.argv[1], sys.argv[2]
    def peak_rss():
        # VmHWM: the peak of this process image (ru_maxrss would carry the forking parent's over)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/self/status")
    def current_rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    if mode == "loader":
        annstream.Loader  # imports torch when installed: not part of what is measured
    base = current_rss()  # peak - base: an upper bound of what the operation added
    t0 = time.monotonic()
    out = {"error": None}
    try:
        if mode == "read":
            with annstream.open(path, threads=2) as s:
                out["n_obs"] = s.n_obs
                n = s.n_obs
                m = s["X"].read_rows(np.array([0, n // 2, n - 1]))
                out["nnz"] = int(m.nnz)
                out["shape"] = list(m.shape)
                r = s["X"].read_rows(slice(n - 1000, n))
                out["range_nnz"] = int(r.nnz)
        elif mode == "loader":
            ld = annstream.Loader(path, batch_size=64, chunk_size=64, preload_nchunks=4, seed=1,
                                  threads=2, prefetch=1)
            out["n_obs"] = ld.n_obs
            it = iter(ld)
            b = next(it)
            out["nnz"] = int(b["X"].nnz)
            out["shape"] = list(b["X"].shape)
            ld.close()
        elif mode == "convert":
            annstream.convert([path], sys.argv[3], progress=False, threads=2, memory="64MiB")
    except Exception as e:  # noqa: BLE001
        out["error"] = type(e).__name__
        out["message"] = str(e)
    out["seconds"] = time.monotonic() - t0
    out["rss_growth"] = peak_rss() - base
    print(json.dumps(out))
    """
)


def measure(path: Path, mode: str, *extra: str) -> dict:
    """Run one operation in a fresh interpreter: its result, error, time and peak RSS growth."""
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(path), mode, *extra],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, f"crashed ({proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


RSS_LIMIT = 200 << 20
HUGE = 10**11


@pytest.mark.parametrize("container", ZARR)
def test_lying_rows_fail_fast_small_memory(stores, tmp_path, container):
    """Metadata claims 10^11 rows (X shape, indptr, obs); nothing more is stored. Reading rows
    fails at once (the last indptr block is a fill value, not nnz) without allocating for 10^11
    rows, and so does the loader's first batch."""
    p = _lying_store(stores, tmp_path, container, HUGE)
    with annstream.open(p) as store:
        assert store.n_obs == HUGE  # metadata only: opening is cheap
    r = measure(p, "read")
    assert r["error"] == "FormatError", r
    assert "indptr" in r["message"] and p.name in r["message"], r
    assert r["seconds"] < 20 and r["rss_growth"] < RSS_LIMIT, r
    r = measure(p, "loader")
    assert r["error"] == "FormatError", r
    assert r["n_obs"] == HUGE
    assert "indptr" in r["message"] and p.name in r["message"], r
    assert r["seconds"] < 20 and r["rss_growth"] < RSS_LIMIT, r


@pytest.mark.parametrize("container", ZARR)
def test_lying_rows_convert(stores, tmp_path, container):
    p = _lying_store(stores, tmp_path, container, HUGE)
    out = tmp_path / "out" / "c.zarr"
    out.parent.mkdir()
    r = measure(p, "convert", str(out))
    # The writer reads each input's last X row before its obs and var (which it would read at the
    # claimed length): the read path's FormatError names the indptr.
    assert r["error"] == "FormatError", r
    assert "indptr" in r["message"] and p.name in r["message"], r
    assert r["seconds"] < 20 and r["rss_growth"] < RSS_LIMIT, r
    assert leftovers(out) == []


@pytest.mark.parametrize("container", ZARR)
def test_huge_empty_matrix_reads_with_small_memory(tmp_path, container):
    """A valid 10^11 x 5 empty matrix whose indptr chunks were never written reads correctly (all
    zeros) in small memory: the indptr cache grows with the rows read, not the rows claimed."""
    p = _empty_store(tmp_path, container, HUGE)
    r = measure(p, "read")
    assert r["error"] is None, r
    assert r["n_obs"] == HUGE and r["shape"] == [3, 5] and r["nnz"] == 0 and r["range_nnz"] == 0, r
    assert r["seconds"] < 30 and r["rss_growth"] < RSS_LIMIT, r


@pytest.mark.parametrize("container", ZARR)
def test_empty_matrix_with_unwritten_indptr(tmp_path, container):
    """The same at a size anndata handles: every row read, the loader's whole epoch."""
    n = 5000
    p = _empty_store(tmp_path, container, n)
    with annstream.open(p) as store:
        m = store["X"].read_rows(slice(None))
        assert m.shape == (n, 5) and m.nnz == 0
        assert np.array_equal(m.indptr, np.zeros(n + 1))
    ld = annstream.Loader(p, batch_size=500, chunk_size=500, preload_nchunks=2, seed=1, threads=2)
    assert sum(b["X"].shape[0] for b in ld) == n
    ld.close()


def test_big_indptr_blocks_read_correctly(tmp_path):
    """More than 2^20 rows: indptr is cached in blocks. Rows across block boundaries, reversed and
    repeated, agree with scipy; a decrease inside a block far from the rows read is not touched,
    one at a block boundary is found when the rows next to it are read."""
    import scipy.sparse as sp

    n, m = (1 << 20) + 4099, 7
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 3, n)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    nnz = int(indptr[-1])
    indices = rng.integers(0, m, nnz).astype(np.int32)
    data = rng.random(nnz).astype(np.float32)
    mat = sp.csr_matrix((data, indices, indptr), shape=(n, m))
    p = tmp_path / "big.zarr"
    root = zarr.open_group(str(p), mode="w", zarr_format=3)
    root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    for name, size in (("obs", n), ("var", m)):
        g = root.create_group(name)
        g.attrs.update({"_index": "_index", "column-order": [], "encoding-type": "dataframe",
                        "encoding-version": "0.2.0"})
        a = g.create_array("_index", shape=(size,), chunks=(1 << 16,), dtype="int64")
        a[:] = np.arange(size)
        a.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    x = root.create_group("X")
    x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n, m]})
    for name, arr in (("data", data), ("indices", indices), ("indptr", indptr)):
        a = x.create_array(name, shape=arr.shape, chunks=(1 << 15,), dtype=arr.dtype)
        a[:] = arr
    zarr.consolidate_metadata(str(p), zarr_format=3)
    block = 1 << 16  # the block size annstream picks for this many rows
    rows = np.array([0, block - 1, block, 3 * block - 1, n - 1, n // 2, block, 5])
    with annstream.open(p) as store:
        got = store["X"].read_rows(rows)
        assert (got != mat[rows]).nnz == 0
        got = store["X"].read_rows(slice(2 * block - 3, 4 * block + 2))
        assert (got != mat[2 * block - 3 : 4 * block + 2]).nnz == 0
    # a decrease exactly at a block boundary (value 3 * block is the first of block 3)
    bad = indptr.copy()
    bad[3 * block] = bad[3 * block - 1] - 1 if bad[3 * block - 1] > 0 else 0
    assert bad[3 * block] < bad[3 * block - 1]
    zarr.open_array(store=str(p), path="X/indptr", mode="r+")[:] = bad
    with annstream.open(p) as store:
        x = store["X"]
        ok = x.read_rows([5, block + 7, n - 2])  # blocks 0, 1 and the last: fine
        assert (ok != mat[[5, block + 7, n - 2]]).nnz == 0
        with pytest.raises(annstream.FormatError, match="decreases at position"):
            x.read_rows([3 * block - 1])  # needs values 3*block-1 and 3*block: blocks 2 and 3
    with annstream.open(p) as store:
        with pytest.raises(annstream.FormatError, match="decreases at position"):
            store["X"].read_rows(slice(None))


def test_too_many_rows_refused(stores, tmp_path):
    """2^43 rows or more: a sparse matrix is refused at once with a clear message."""
    p = _lying_store(stores, tmp_path, "zarr3", 2**43)
    with pytest.raises(annstream.FormatError, match="2\\^43 rows or more") as ei:
        annstream.open(p)
    check_message(ei.value, p, ("X",))


def test_hdf5_errors_in_worker_threads_let_libhdf5_close(stores, tmp_path):
    """A libhdf5 failure inside a decoding thread (gzip chunks are decoded on the pool) must not
    leave that thread's HDF5 error stack behind: libhdf5 then cannot shut down at exit and prints
    "HDF5: infinite loop closing library"."""
    damage = next(d for d in DAMAGES if d.name == "h5_chunk_offset_past_end")
    p = damaged(stores, tmp_path, damage, "h5ad-gzip")
    script = textwrap.dedent(
        """
        import sys, annstream
        ld = annstream.Loader(sys.argv[1], batch_size=8, chunk_size=8, preload_nchunks=2, seed=3,
                              threads=2, prefetch=1)
        try:
            for _ in ld:
                pass
        except annstream.FormatError as e:
            print("FormatError", e)
        ld.close()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(p)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("FormatError") and "X/indices" in proc.stdout, proc.stdout
    assert "infinite loop" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("container", ZARR)
def test_empty_chunk_file_is_not_a_missing_chunk(stores, tmp_path, container):
    """A 0-byte chunk file is stored (and corrupt), not missing: it must never read as fill values.
    It once did whenever the decoding thread's workspace had not allocated its buffer yet (about a
    quarter of loader epochs), silently giving column index 0; repeated to catch that."""
    damage = next(d for d in DAMAGES if d.name == "empty_chunk_file")
    p = damaged(stores, tmp_path, damage, container)
    for _ in range(8):
        with pytest.raises(annstream.FormatError) as ei:
            run_loader(p)
        check_message(ei.value, p, ("X/indices",))
        with pytest.raises(annstream.FormatError):
            with annstream.open(p, threads=2) as store:
                store["X"].read_rows(slice(None))
