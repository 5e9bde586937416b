#!/usr/bin/env python3
"""Write the zarr fixtures of tests/c/test_zarr.c with the real zarr-python (3.x) and numcodecs.

usage: make_zarr_fixtures.py OUTDIR

OUTDIR receives
  v2.zarr      zarr v2 (consolidated): every numeric dtype and bool in both byte orders, every
               compressor (blosc cname x shuffle, zstd, zlib, gzip, lz4), crc32c filter, order F,
               "/" separator, missing chunks + fill values, 0-d, vlen / fixed UTF-32 / bytes strings
  v2plain.zarr the same kind of store without .zmetadata (directory listing)
  v3.zarr      zarr v3 (consolidated): every dtype with bytes little/big, blosc (cname x shuffle
               names), zstd, gzip, crc32c, transpose, numcodecs.lz4 / numcodecs.zlib, chunk key
               encodings, sharding with the index at the end and at the start (1-D and 2-D, inner
               blosc-lz4, empty inner chunks), strings (plain and sharded), 0-d
  v3plain.zarr a v3 store without consolidated metadata
  manifest.txt one line per array to compare, see below
  *.bin        expected values in native byte order

manifest.txt lines (space separated; paths contain no spaces):
  array STORE PATH DTYPE NDIM DIM... BIN     dtype as ans_dtype_name ("int8", "bool", "complex64")
  strings STORE PATH COUNT BIN               BIN: per item a u32 little-endian length + UTF-8 bytes
  group STORE PATH CHILD,CHILD,...           the sorted children of a group ("-" for none)
"""

import os
import struct
import sys
import warnings

import numpy as np

import numcodecs
import zarr
from zarr.codecs import (
    BloscCodec,
    BytesCodec,
    Crc32cCodec,
    GzipCodec,
    ShardingCodec,
    TransposeCodec,
    ZstdCodec,
)

warnings.filterwarnings("ignore")

OUT = None
MANIFEST = []
COUNTER = [0]


def _native(a):
    a = np.asarray(a)
    if a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _dtype_name(dt):
    dt = np.dtype(dt)
    if dt.kind in "OUS":
        return "str"
    return dt.newbyteorder("=").name


def _bin(data):
    COUNTER[0] += 1
    name = "e%04d.bin" % COUNTER[0]
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    return name


def expect_array(store, path, values):
    a = _native(values)
    name = _bin(np.ascontiguousarray(a).tobytes())
    dims = " ".join(str(d) for d in a.shape)
    line = "array %s %s %s %d" % (store, path, _dtype_name(a.dtype), a.ndim)
    if dims:
        line += " " + dims
    MANIFEST.append(line + " " + name)


def _tostr(x):
    if isinstance(x, bytes):
        return x.rstrip(b"\0").decode("latin-1") if not _is_utf8(x) else x.rstrip(b"\0").decode()
    return str(x)


def _is_utf8(b):
    try:
        b.decode()
        return True
    except UnicodeDecodeError:
        return False


def expect_strings(store, path, values):
    vals = [_tostr(x) for x in np.asarray(values, dtype=object).reshape(-1)]
    out = bytearray()
    for s in vals:
        b = s.encode()
        out += struct.pack("<I", len(b)) + b
    MANIFEST.append("strings %s %s %d %s" % (store, path, len(vals), _bin(bytes(out))))


def expect_group(store, path, children):
    MANIFEST.append("group %s %s %s" % (store, path or "/", ",".join(sorted(children)) or "-"))


def values_for(dt, shape, rng):
    dt = np.dtype(dt)
    n = int(np.prod(shape)) if shape else 1
    if dt.kind == "b":
        v = rng.integers(0, 2, n).astype(bool)
    elif dt.kind in "iu":
        info = np.iinfo(dt)
        v = rng.integers(info.min, info.max, n, dtype=dt.newbyteorder("="), endpoint=True)
    elif dt.kind == "f":
        v = (rng.standard_normal(n) * 1000).astype(dt)
        if n > 3:
            v[1] = np.nan
            v[2] = np.inf
            v[3] = -np.inf
    elif dt.kind == "c":
        v = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dt)
    else:
        raise ValueError(dt)
    return v.astype(dt).reshape(shape)


def write(store, path, data, fmt, **kw):
    """Create an array, write `data` (None: leave empty), record the expectation."""
    root = os.path.join(OUT, store)
    arr = zarr.create_array(
        store=root, name=path, shape=data.shape, dtype=data.dtype, zarr_format=fmt, **kw
    )
    arr[...] = data
    back = arr[...]
    if data.dtype.kind in "OUS":
        expect_strings(store, path, back)
    else:
        expect_array(store, path, back)
    return arr


# ---------------------------------------------------------------------------------------------
DTYPES = ["b1", "i1", "u1", "i2", "i4", "i8", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"]


def make_v2(store):
    rng = np.random.default_rng(2)
    root = os.path.join(OUT, store)
    g = zarr.open_group(root, mode="w", zarr_format=2)
    g.attrs["encoding-type"] = "dict"
    g.attrs["nan"] = float("nan")
    g.create_group("grp").attrs["k"] = [1, 2]
    children = ["grp"]
    # every dtype, both byte orders, 2-D chunked along both axes with edge chunks
    for dt in DTYPES:
        for bo in "<>":
            d = np.dtype(bo + dt) if dt not in ("b1", "i1", "u1") else np.dtype(dt)
            name = "dt_%s_%s" % ("le" if bo == "<" else "be", dt)
            if dt in ("b1", "i1", "u1") and bo == ">":
                continue
            write(store, name, values_for(d, (23, 7), rng), 2, chunks=(5, 3))
            children.append(name)
    # compressors on a 1-D float32 array
    base = values_for("f4", (1000,), rng)
    comps = {}
    for cname in numcodecs.blosc.list_compressors():
        for sh in (0, 1, 2):
            comps["blosc_%s_%d" % (cname, sh)] = numcodecs.Blosc(cname=cname, clevel=5, shuffle=sh)
    comps["zstd"] = numcodecs.Zstd(level=0)
    comps["zstd_cksum"] = numcodecs.Zstd(level=3, checksum=True)
    comps["zlib"] = numcodecs.Zlib(level=1)
    comps["gzip"] = numcodecs.GZip(level=1)
    comps["lz4"] = numcodecs.LZ4()
    comps["none"] = None
    for k, c in comps.items():
        write(store, "c_" + k, base, 2, chunks=(128,), compressors=c)
        children.append("c_" + k)
    write(store, "crc", base, 2, chunks=(100,), compressors=numcodecs.Zstd(), filters=[numcodecs.CRC32C()])
    children.append("crc")
    # order F, 3-D
    write(store, "order_f", values_for("<i4", (9, 8, 5), rng), 2, chunks=(4, 3, 5), order="F")
    write(store, "order_f_be", values_for(">f8", (9, 6), rng), 2, chunks=(4, 4), order="F")
    children += ["order_f", "order_f_be"]
    # '/' separator
    write(store, "slash", values_for("<i8", (10, 4), rng), 2, chunks=(3, 2),
          chunk_key_encoding={"name": "v2", "separator": "/"})
    children.append("slash")
    # missing chunks: zeros written with write_empty_chunks False -> chunk keys absent
    for dt, fill in (("f4", float("nan")), ("f8", float("-inf")), ("i4", -7), ("u8", 2**64 - 1),
                     ("f2", 1.5), ("b1", True)):
        v = np.full((40,), fill, dtype=dt)
        v[5:9] = values_for(dt, (4,), rng)
        v[33] = values_for(dt, (1,), rng)[0]
        name = "fill_" + dt
        write(store, name, v, 2, chunks=(8,), fill_value=fill,
              config={"write_empty_chunks": False})
        children.append(name)
    # 0-d and empty
    write(store, "scalar", np.array(3.25, dtype="f8"), 2, chunks=())
    write(store, "empty", np.zeros((0,), dtype="i4"), 2, chunks=(1,))
    children += ["scalar", "empty"]
    # strings
    s = np.array(["", "a", "héllo", "wörld ✓", "x" * 300] * 9, dtype=object)
    arr = zarr.create_array(store=root, name="str_vlen", shape=s.shape, dtype=str, chunks=(7,),
                            zarr_format=2)
    arr[:] = s
    expect_strings(store, "str_vlen", arr[:])
    u = np.array(["ab", "héllo", "", "z✓"] * 5, dtype="<U5")
    write(store, "str_u", u, 2, chunks=(3,))
    ub = np.array(["ab", "héllo", "", "z✓"] * 5, dtype=">U5")
    write(store, "str_u_be", ub, 2, chunks=(6,))
    sb = np.array([b"ab", b"cde", b"", b"fghi"] * 5, dtype="S4")
    write(store, "str_s", sb, 2, chunks=(6,))
    sc = zarr.create_array(store=root, name="str_scalar", shape=(), dtype=str, zarr_format=2)
    sc[()] = "only"
    expect_strings(store, "str_scalar", ["only"])
    children += ["str_vlen", "str_u", "str_u_be", "str_s", "str_scalar"]
    zarr.consolidate_metadata(root)
    expect_group(store, "", children)
    expect_group(store, "grp", [])


def make_v2plain(store):
    rng = np.random.default_rng(3)
    root = os.path.join(OUT, store)
    g = zarr.open_group(root, mode="w", zarr_format=2)
    g.create_group("sub")
    write(store, "sub/a", values_for("<u2", (50, 3), rng), 2, chunks=(7, 3))
    write(store, "b", values_for(">i8", (30,), rng), 2, chunks=(4,), compressors=numcodecs.Zlib())
    expect_group(store, "", ["b", "sub"])
    expect_group(store, "sub", ["a"])


def make_v3(store, consolidated=True):
    rng = np.random.default_rng(4)
    root = os.path.join(OUT, store)
    g = zarr.open_group(root, mode="w", zarr_format=3)
    g.attrs["encoding-type"] = "anndata"
    children = []
    for dt in DTYPES:
        for endian in ("little", "big"):
            if dt in ("b1", "i1", "u1") and endian == "big":
                continue
            name = "dt_%s_%s" % (endian, dt)
            write(store, name, values_for(dt, (23, 7), rng), 3, chunks=(5, 3),
                  serializer=BytesCodec(endian=endian), compressors=[ZstdCodec(level=1)])
            children.append(name)
    base = values_for("f8", (1000,), rng)
    comps = {}
    for cname in ("lz4", "lz4hc", "blosclz", "zstd", "zlib"):
        for sh in ("noshuffle", "shuffle", "bitshuffle"):
            comps["blosc_%s_%s" % (cname, sh)] = [BloscCodec(cname=cname, clevel=5, shuffle=sh,
                                                             typesize=8)]
    comps["zstd"] = [ZstdCodec(level=0)]
    comps["zstd_cksum"] = [ZstdCodec(level=5, checksum=True)]
    comps["gzip"] = [GzipCodec(level=1)]
    comps["crc32c"] = [Crc32cCodec()]
    comps["zstd_crc32c"] = [ZstdCodec(level=0), Crc32cCodec()]
    comps["none"] = []
    from zarr.codecs import numcodecs as zn
    comps["nc_lz4"] = [zn.LZ4()]
    comps["nc_zlib"] = [zn.Zlib(level=1)]
    for k, c in comps.items():
        write(store, "c_" + k, base, 3, chunks=(96,), compressors=c)
        children.append("c_" + k)
    # transpose (3-D) and transpose with big endian
    write(store, "transpose", values_for("i2", (9, 8, 5), rng), 3, chunks=(4, 3, 5),
          filters=[TransposeCodec(order=(2, 0, 1))])
    write(store, "transpose_be", values_for("f4", (9, 6), rng), 3, chunks=(4, 4),
          filters=[TransposeCodec(order=(1, 0))], serializer=BytesCodec(endian="big"))
    children += ["transpose", "transpose_be"]
    # chunk key encodings
    write(store, "key_dot", values_for("u4", (10, 4), rng), 3, chunks=(3, 2),
          chunk_key_encoding={"name": "default", "separator": "."})
    write(store, "key_v2", values_for("u4", (10, 4), rng), 3, chunks=(3, 2),
          chunk_key_encoding={"name": "v2", "separator": "."})
    write(store, "key_v2_slash", values_for("u4", (10, 4), rng), 3, chunks=(3, 2),
          chunk_key_encoding={"name": "v2", "separator": "/"})
    children += ["key_dot", "key_v2", "key_v2_slash"]
    # fill values (missing chunks)
    for dt, fill in (("f4", float("nan")), ("f8", float("inf")), ("i8", -3), ("u8", 2**64 - 1),
                     ("f2", -2.5), ("b1", True), ("c8", 1 + 2j)):
        v = np.full((40,), fill, dtype=dt)
        v[5:9] = values_for(dt, (4,), rng)
        name = "fill_" + dt
        write(store, name, v, 3, chunks=(8,), fill_value=fill,
              config={"write_empty_chunks": False})
        children.append(name)
    # sharding: 1-D blosc-lz4 like annbatch, index at end and start, with empty inner chunks
    x = values_for("f4", (10000,), rng)
    x[2000:2600] = 0
    for loc in ("end", "start"):
        name = "shard_" + loc
        sh = ShardingCodec(chunk_shape=(100,),
                           codecs=[BytesCodec(), BloscCodec(cname="lz4", clevel=3, shuffle="shuffle")],
                           index_location=loc)
        arr = zarr.create_array(store=root, name=name, shape=x.shape, dtype=x.dtype, zarr_format=3,
                                chunks=(1000,), serializer=sh, compressors=None,
                                config={"write_empty_chunks": False})
        arr[:] = x
        expect_array(store, name, arr[:])
        children.append(name)
    # the usual zarr-python path: shards= with the default zstd inner codec, edge shard
    write(store, "shard_auto", values_for("i8", (2345,), rng), 3, chunks=(50,), shards=(500,))
    # 2-D sharded, inner chunks along both axes, edge shards, a missing shard
    y = values_for("f8", (37, 26), rng)
    y[0:10, :] = 0
    write(store, "shard_2d", y, 3, chunks=(5, 4), shards=(10, 8), fill_value=0.0,
          config={"write_empty_chunks": False})
    # sharded with crc32c inner codec
    write(store, "shard_crc", values_for("u2", (777,), rng), 3, chunks=(25,), shards=(100,),
          compressors=[ZstdCodec(level=0), Crc32cCodec()])
    children += ["shard_auto", "shard_2d", "shard_crc"]
    # 0-d
    write(store, "scalar", np.array(-17, dtype="i8"), 3, chunks=())
    write(store, "empty", np.zeros((0,), dtype="f4"), 3, chunks=(1,))
    children += ["scalar", "empty"]
    # strings
    s = np.array(["", "a", "héllo", "wörld ✓", "x" * 300] * 9, dtype=object)
    arr = zarr.create_array(store=root, name="str_vlen", shape=s.shape, dtype=str, chunks=(7,),
                            zarr_format=3)
    arr[:] = s
    expect_strings(store, "str_vlen", arr[:])
    arr = zarr.create_array(store=root, name="str_shard", shape=s.shape, dtype=str, chunks=(4,),
                            shards=(12,), zarr_format=3)
    arr[:] = s
    expect_strings(store, "str_shard", arr[:])
    arr = zarr.create_array(store=root, name="str_u", shape=(20,), dtype="<U5", chunks=(3,),
                            zarr_format=3)
    arr[:] = np.array(["ab", "héllo", "", "z✓"] * 5, dtype="<U5")
    expect_strings(store, "str_u", arr[:])
    arr = zarr.create_array(store=root, name="str_s", shape=(20,), dtype="S4", chunks=(6,),
                            zarr_format=3)
    arr[:] = np.array([b"ab", b"cde", b"", b"fghi"] * 5, dtype="S4")
    expect_strings(store, "str_s", arr[:])
    children += ["str_vlen", "str_shard", "str_u", "str_s"]
    # nested group
    sub = g.create_group("X")
    sub.attrs["encoding-type"] = "csr_matrix"
    sub.attrs["shape"] = [10, 20]
    write(store, "X/data", values_for("f4", (55,), rng), 3, chunks=(10,), shards=(20,))
    children.append("X")
    if consolidated:
        zarr.consolidate_metadata(root)
    expect_group(store, "", children)
    expect_group(store, "X", ["data"])


def main():
    global OUT
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    OUT = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)
    make_v2("v2.zarr")
    make_v2plain("v2plain.zarr")
    make_v3("v3.zarr")
    make_v3("v3plain.zarr", consolidated=False)
    with open(os.path.join(OUT, "manifest.txt"), "w") as f:
        f.write("\n".join(MANIFEST) + "\n")


if __name__ == "__main__":
    main()
