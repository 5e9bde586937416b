"""Errors: missing paths, stores written by anndata and then damaged here, bad arguments, use after
close. Damaged stores must raise annstream.FormatError (a ValueError) with a message naming the
file and the element."""

from __future__ import annotations

import json
import re
import struct
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from stores import SPECS

import annstream
from annstream import _core

ZARR = ("zarr2", "zarr3", "zarr3-sharded")
H5AD = ("h5ad", "h5ad-gzip")
N, M = SPECS["main"].n_obs, 23


# --------------------------------------------------------------------------------------------------
# helpers


def read_everything(path: Path, key: str = "X") -> None:
    """Open the store and read all of `key` (whichever step detects the damage)."""
    with annstream.open(path) as store:
        el = store[key]
        el.read_rows(slice(None))
        el.read_rows(np.arange(store.n_obs)[::-1])


def check_message(excinfo, path: Path, *parts: str) -> None:
    msg = str(excinfo.value)
    assert path.name in msg, f"message does not name the file {path.name!r}: {msg!r}"
    for part in parts:
        assert part in msg, f"message does not name {part!r}: {msg!r}"


def is_v2(path: Path) -> bool:
    return (path / ".zgroup").exists()


def chunk_path(path: Path, array: str, index: int = 0) -> Path:
    """The key of chunk (or shard) `index` of a 1-D zarr array."""
    if is_v2(path):
        return path / array / str(index)
    return path / array / "c" / str(index)


def patch_zarr_metadata(path: Path, node: str, fn) -> None:
    """Apply fn(attrs) to the attributes of `node`, in the node's own metadata and in the
    consolidated metadata (both must agree, or the reader might see either)."""
    if is_v2(path):
        f = path / node / ".zattrs"
        attrs = json.loads(f.read_text())
        fn(attrs)
        f.write_text(json.dumps(attrs))
        cf = path / ".zmetadata"
        cons = json.loads(cf.read_text())
        fn(cons["metadata"][f"{node}/.zattrs"])
        cf.write_text(json.dumps(cons))
    else:
        f = path / node / "zarr.json"
        meta = json.loads(f.read_text())
        fn(meta["attributes"])
        f.write_text(json.dumps(meta))
        rf = path / "zarr.json"
        root = json.loads(rf.read_text())
        fn(root["consolidated_metadata"]["metadata"][node]["attributes"])
        rf.write_text(json.dumps(root))


def unconsolidate(path: Path) -> None:
    if is_v2(path):
        (path / ".zmetadata").unlink()
    else:
        rf = path / "zarr.json"
        root = json.loads(rf.read_text())
        root.pop("consolidated_metadata", None)
        rf.write_text(json.dumps(root))


def flip(f: Path, offset: int, n: int = 4) -> None:
    b = bytearray(f.read_bytes())
    for i in range(offset, offset + n):
        b[i] ^= 0xFF
    f.write_bytes(bytes(b))


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for byte in data:
        c = _CRC_TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def test_crc32c_helper():
    assert crc32c(b"123456789") == 0xE3069283


def shard_index(path: Path, array: str) -> tuple[Path, int]:
    """(shard file, number of inner chunks) of shard 0 of a sharded 1-D array."""
    meta = json.loads((path / array / "zarr.json").read_text())
    sharding = meta["codecs"][0]
    assert sharding["name"] == "sharding_indexed"
    shard = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    inner = sharding["configuration"]["chunk_shape"][0]
    assert shard // inner >= 2, "the test store must have several inner chunks per shard"
    return path / array / "c" / "0", shard // inner


# --------------------------------------------------------------------------------------------------
# not a store at all


def test_missing_path(tmp_path):
    for name in ("nothing.zarr", "nothing.h5ad", "nothing"):
        p = tmp_path / name
        with pytest.raises(FileNotFoundError) as ei:
            annstream.open(p)
        assert name in str(ei.value)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.h5ad"
    p.write_bytes(b"")
    with pytest.raises(annstream.FormatError) as ei:
        annstream.open(p)
    check_message(ei, p)


def test_random_bytes_h5ad(tmp_path):
    p = tmp_path / "random.h5ad"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(annstream.FormatError) as ei:
        annstream.open(p)
    check_message(ei, p)


def test_empty_directory(tmp_path):
    p = tmp_path / "empty.zarr"
    p.mkdir()
    with pytest.raises(annstream.FormatError) as ei:
        annstream.open(p)
    check_message(ei, p)


def test_plain_zarr_group_is_not_anndata(tmp_path):
    p = tmp_path / "plain.zarr"
    g = zarr.open_group(str(p), mode="w", zarr_format=3)
    g.create_array("a", shape=(3,), dtype="int32")
    with pytest.raises(annstream.FormatError) as ei:
        annstream.open(p)
    check_message(ei, p)


@pytest.mark.parametrize("container", H5AD)
def test_truncated_h5ad(stores, tmp_path, container):
    p = stores.fresh_copy("main", container, tmp_path)
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.truncate(size * 6 // 10)
    with pytest.raises(annstream.FormatError) as ei:
        with annstream.open(p) as store:
            for key in store.keys():
                store[key].read_rows(slice(None))
            store.read_obs()
            store.read_var()
    check_message(ei, p)


# --------------------------------------------------------------------------------------------------
# damaged chunks


@pytest.mark.parametrize("container", ZARR)
def test_truncated_chunk(stores, tmp_path, container):
    p = stores.fresh_copy("main", container, tmp_path)
    f = chunk_path(p, "X/data")
    b = f.read_bytes()
    f.write_bytes(b[: len(b) // 2])
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p)
    check_message(ei, p, "X")


@pytest.mark.parametrize("container", ZARR)
def test_flipped_bytes_in_chunk(stores, tmp_path, container):
    p = stores.fresh_copy("main", container, tmp_path)
    flip(chunk_path(p, "X/data"), 0)  # the codec's header: blosc or zstd (inner chunk in a shard)
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p)
    check_message(ei, p, "X")


@pytest.mark.parametrize("container", ZARR)
def test_flipped_bytes_in_dense_chunk(stores, tmp_path, container):
    p = stores.fresh_copy("main", container, tmp_path)
    node = p / "layers" / "dense_f64"
    chunk = next(f for f in sorted(node.rglob("*")) if f.is_file() and not f.name.startswith((".", "zarr.json")))
    flip(chunk, 0)
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p, "layers/dense_f64")
    check_message(ei, p, "layers/dense_f64")


def test_flipped_bytes_in_h5ad_gzip_chunk(stores, tmp_path):
    p = stores.fresh_copy("main", "h5ad-gzip", tmp_path)
    with h5py.File(p, "r") as f:
        info = f["X/data"].id.get_chunk_info(0)
        offset = info.byte_offset
    flip(p, offset, 2)  # the zlib header of the deflate stream
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p)
    check_message(ei, p, "X")


# --------------------------------------------------------------------------------------------------
# damaged metadata


@pytest.mark.parametrize("container", ZARR)
def test_bad_consolidated_json(stores, tmp_path, container):
    p = stores.fresh_copy("main", container, tmp_path)
    f = p / (".zmetadata" if is_v2(p) else "zarr.json")
    f.write_text(f.read_text()[:-40] + "{{ not json")
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p)
    check_message(ei, p, f.name)


@pytest.mark.parametrize("container", ZARR)
def test_bad_array_json(stores, tmp_path, container):
    p = stores.fresh_copy("main", container, tmp_path)
    unconsolidate(p)
    f = p / "X" / "data" / (".zarray" if is_v2(p) else "zarr.json")
    f.write_text('{"zarr_format": ' + ("2" if is_v2(p) else "3") + ', "shape": [1, oops')
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p)
    check_message(ei, p, "X")


@pytest.mark.parametrize("container", ZARR)
def test_unconsolidated_store_reads(stores, tmp_path, container):
    """Not an error: consolidated metadata is optional."""
    p = stores.fresh_copy("main", container, tmp_path)
    _, adata = stores.get("main", container)
    unconsolidate(p)
    with annstream.open(p) as store:
        got = store["X"].read_rows([3, 0, 3])
        np.testing.assert_array_equal(got.toarray(), adata.X[[3, 0, 3]].toarray())


def _set_shape(attrs):
    attrs["shape"] = [N + 10, M]


@pytest.mark.parametrize("container", ZARR + H5AD)
def test_lying_shape(stores, tmp_path, container):
    p = stores.fresh_copy("main", container, tmp_path)
    if container in H5AD:
        with h5py.File(p, "r+") as f:
            f["X"].attrs["shape"] = np.array([N + 10, M], dtype=np.int64)
    else:
        patch_zarr_metadata(p, "X", _set_shape)
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p)
    check_message(ei, p, "X")


@pytest.mark.parametrize("container", ZARR + H5AD)
def test_unknown_encoding_type(stores, tmp_path, container):
    key = "layers/csr_f64"
    p = stores.fresh_copy("main", container, tmp_path)
    if container in H5AD:
        with h5py.File(p, "r+") as f:
            f[key].attrs["encoding-type"] = "fancy_matrix"
    else:
        patch_zarr_metadata(p, key, lambda a: a.__setitem__("encoding-type", "fancy_matrix"))
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p, key)
    check_message(ei, p, "csr_f64", "fancy_matrix")


# --------------------------------------------------------------------------------------------------
# shards


def test_broken_shard_index(stores, tmp_path):
    p = stores.fresh_copy("main", "zarr3-sharded", tmp_path)
    f, n = shard_index(p, "X/data")
    b = bytearray(f.read_bytes())
    index_at = len(b) - (16 * n + 4)
    offset, nbytes = struct.unpack_from("<QQ", b, index_at)
    assert offset != 2**64 - 1
    struct.pack_into("<QQ", b, index_at, len(b) + 1000, nbytes)  # offset past the end
    struct.pack_into("<I", b, len(b) - 4, crc32c(bytes(b[index_at : len(b) - 4])))  # a valid CRC
    f.write_bytes(bytes(b))
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p)
    check_message(ei, p, "X")


def test_shard_index_overflow(stores, tmp_path):
    p = stores.fresh_copy("main", "zarr3-sharded", tmp_path)
    f, n = shard_index(p, "X/data")
    b = bytearray(f.read_bytes())
    index_at = len(b) - (16 * n + 4)
    struct.pack_into("<QQ", b, index_at + 16, 2**64 - 8, 16)  # offset + nbytes overflows
    struct.pack_into("<I", b, len(b) - 4, crc32c(bytes(b[index_at : len(b) - 4])))
    f.write_bytes(bytes(b))
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p)
    check_message(ei, p, "X")


def test_shard_crc_mismatch(stores, tmp_path):
    p = stores.fresh_copy("main", "zarr3-sharded", tmp_path)
    f, n = shard_index(p, "X/data")
    b = bytearray(f.read_bytes())
    index_at = len(b) - (16 * n + 4)
    b[index_at + 9] ^= 0x01  # a bit of the first nbytes; the CRC no longer matches
    f.write_bytes(bytes(b))
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p)
    check_message(ei, p, "X")


def test_truncated_shard_index(stores, tmp_path):
    p = stores.fresh_copy("main", "zarr3-sharded", tmp_path)
    f, n = shard_index(p, "X/data")
    assert n >= 2
    f.write_bytes(f.read_bytes()[:10])  # shorter than the index and its CRC
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p)
    check_message(ei, p, "X")


# --------------------------------------------------------------------------------------------------
# inconsistent sparse arrays (values rewritten with zarr / h5py)


def _rewrite(p: Path, container: str, array: str, fn) -> None:
    if container in H5AD:
        with h5py.File(p, "r+") as f:
            values = f[array][()]
            fn(values)
            f[array][...] = values
    else:
        z = zarr.open_array(store=str(p), path=array, mode="r+")
        values = z[...]
        fn(values)
        z[...] = values


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


@pytest.mark.parametrize("container", ZARR + H5AD)
@pytest.mark.parametrize(
    "damage",
    [
        ("X/indptr", _non_monotonic),
        ("X/indices", _index_out_of_range),
        ("X/indices", _index_negative),
        ("X/indptr", _indptr_past_nnz),
        ("X/indptr", _indptr_not_zero),
    ],
    ids=["non_monotonic_indptr", "indices_out_of_range", "negative_index", "indptr_past_nnz", "indptr_not_zero"],
)
def test_inconsistent_sparse(stores, tmp_path, container, damage):
    array, fn = damage
    p = stores.fresh_copy("main", container, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _rewrite(p, container, array, fn)
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p)
    check_message(ei, p, "X")


@pytest.mark.parametrize("container", ZARR + H5AD)
def test_csc_index_out_of_range(stores, tmp_path, container):
    p = stores.fresh_copy("main", container, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _rewrite(p, container, "layers/csc_f32/indices", lambda ind: ind.__setitem__(3, N + 100))
    with pytest.raises(annstream.FormatError) as ei:
        read_everything(p, "layers/csc_f32")
    check_message(ei, p, "csc_f32")


# --------------------------------------------------------------------------------------------------
# arguments


@pytest.fixture
def x(stores):
    return stores.open("main", "zarr3")["X"]


@pytest.mark.parametrize(
    "rows",
    [
        [N],
        [-N - 1],
        [0, N + 5],
        np.array([N], dtype=np.uint32),
        N,
        -N - 1,
        np.array([2**40]),
        [2**70],
        np.array([1, N], dtype=object),
        np.array([2**64 - 1], dtype=np.uint64),
    ],
    ids=["past_end", "before_start", "mixed", "uint", "scalar", "neg_scalar", "huge", "python_huge",
         "object_ints", "uint64_max"],
)
def test_rows_out_of_range(x, rows):
    with pytest.raises(IndexError):
        x.read_rows(rows)


@pytest.mark.parametrize(
    "rows",
    [[1.0, 2.0], np.array([0.5]), ["a"], [None], True, 2.0, "3", {1, 2}],
    ids=["floats", "float_array", "strings", "none", "bool", "float_scalar", "str", "set"],
)
def test_rows_not_integers(x, rows):
    with pytest.raises(TypeError):
        x.read_rows(rows)


def test_rows_bad_shape(x):
    with pytest.raises(IndexError):
        x.read_rows(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(IndexError):
        x.read_rows(np.zeros(N + 1, dtype=bool))  # mask of the wrong length


def test_core_checks_rows(x):
    """The C layer checks again (ANS_EINVAL -> ValueError) and takes only int64 buffers."""
    core = x._core
    with pytest.raises(ValueError, match="X"):
        core.read_rows(np.array([N], dtype=np.int64))
    with pytest.raises(ValueError):
        core.read_rows(np.array([-1], dtype=np.int64))
    with pytest.raises(ValueError):
        core.read_range(5, 2)
    with pytest.raises(ValueError):
        core.read_range(0, N + 1)
    with pytest.raises(TypeError):
        core.read_rows(np.array([1.0]))
    with pytest.raises(TypeError):
        core.read_rows(np.array([1], dtype=np.int32))
    with pytest.raises(TypeError):
        core.read_rows(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError):
        core.read_rows(np.arange(10, dtype=np.int64)[::2])  # not contiguous
    with pytest.raises(TypeError):
        core.read_rows([1, 2])


@pytest.mark.parametrize("container", ["zarr2", "h5ad"])
def test_unknown_keys(stores, container):
    store = stores.open("main", container)
    for key in ("nope", "layers/nope", "obsm/nope", "obs", "var", "layers", "X/data", "raw/var", ""):
        with pytest.raises(KeyError):
            store[key]
    with pytest.raises(KeyError):
        store[3]
    assert store.get("nope") is None


def test_open_arguments(stores):
    path, _ = stores.get("main", "zarr3")
    with pytest.raises(ValueError):
        annstream.open(path, threads=-1)
    with pytest.raises(TypeError):
        annstream.open(path, threads="2")
    with pytest.raises(TypeError):
        annstream.open(123)
    with pytest.raises(TypeError):
        annstream.open(path, 2)  # threads is keyword-only


def test_use_after_close(stores, tmp_path):
    p = stores.fresh_copy("main", "zarr2", tmp_path)
    store = annstream.open(p)
    el = store["X"]
    core_el = el._core
    store.close()
    store.close()  # idempotent
    assert store.closed and el.closed
    for call in (
        lambda: store["X"],
        lambda: store.keys(),
        lambda: store.n_obs,
        lambda: store.obs_names,
        lambda: store.var_names,
        lambda: store.container,
        lambda: store.read_obs(),
        lambda: store.read_var(),
        lambda: store.describe(),
        lambda: el.read_rows([0]),
        lambda: el[0:3],
        lambda: core_el.read_range(0, 1),
    ):
        with pytest.raises(ValueError, match="closed"):
            call()
    with annstream.open(p) as s2:
        pass
    assert s2.closed


def test_element_survives_only_while_store_open(stores, tmp_path):
    """An Element closed on its own does not close the store, and vice versa is checked above."""
    p = stores.fresh_copy("main", "h5ad", tmp_path)
    with annstream.open(p) as store:
        el = store["layers/dense_f64"]
        el.close()
        with pytest.raises(ValueError, match="closed"):
            el.read_rows([0])
        fresh = store["layers/dense_f64"]  # reopened
        assert fresh is not el
        assert fresh.read_rows([0]).shape == (1, M)


def test_exception_types():
    assert issubclass(annstream.FormatError, ValueError)
    assert annstream.FormatError is _core.FormatError
    assert annstream.FormatError.__module__ == "annstream"
    assert re.match(r"\d+\.\d+\.\d+", annstream.c_version())
