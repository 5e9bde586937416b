#!/usr/bin/env python3
"""Write the HDF5 fixtures of tests/c/test_h5.c with h5py and anndata.

usage: make_h5_fixtures.py OUTDIR

OUTDIR receives
  fixtures.h5        every dtype, byte order, layout and filter the reader handles, plus attributes
  anndata.h5ad       written by anndata.write_h5ad(compression="gzip")
  userblock.h5       a file with a 512-byte user block (signature at offset 512)
  lzf.h5             a dataset with the LZF filter (32000), which libhdf5 lacks: must be refused
  hostile/...        truncated, random, signature + random, patched dataspace, corrupt chunk
  manifest.txt       one line per dataset to compare, see below
  *.bin              expected values in native byte order

manifest.txt lines (space separated; paths contain no spaces):
  array FILE PATH DTYPE NDIM DIM... BIN     dtype as ans_dtype_name ("int8", "bool", "complex64")
  strings FILE PATH COUNT BIN               BIN: per item a u32 little-endian length + UTF-8 bytes
"""

import os
import struct
import sys

import numpy as np

import h5py

OUT = None
MANIFEST = []


def _native(a):
    a = np.asarray(a)
    if a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _dtype_name(dt):
    dt = np.dtype(dt)
    if dt.kind == "b":
        return "bool"
    return dt.newbyteorder("=").name


def expect_array(fname, path, values, tag=None):
    values = _native(values)
    tag = tag or (fname + "_" + path).replace("/", "_").replace(".", "_")
    bin_name = tag + ".bin"
    with open(os.path.join(OUT, bin_name), "wb") as f:
        f.write(np.ascontiguousarray(values).tobytes())
    dims = " ".join(str(d) for d in values.shape)
    line = "array %s %s %s %d" % (fname, path, _dtype_name(values.dtype), values.ndim)
    if dims:
        line += " " + dims
    MANIFEST.append(line + " " + bin_name)


def expect_strings(fname, path, strings, tag=None):
    tag = tag or (fname + "_" + path).replace("/", "_").replace(".", "_")
    bin_name = tag + ".bin"
    with open(os.path.join(OUT, bin_name), "wb") as f:
        for s in strings:
            b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
            f.write(struct.pack("<I", len(b)))
            f.write(b)
    MANIFEST.append("strings %s %s %d %s" % (fname, path, len(strings), bin_name))


def dset(f, fname, path, values, **kw):
    f.create_dataset(path, data=values, **kw)
    expect_array(fname, path, np.asarray(values))


def write_fixtures():
    fname = "fixtures.h5"
    rng = np.random.default_rng(42)
    with h5py.File(os.path.join(OUT, fname), "w") as f:
        # Integers of every width, both signs, little endian.
        for dt in ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"]:
            info = np.iinfo(dt)
            v = np.array([info.min, info.max, 0, 1, 2, 3, 100, info.max // 3, info.min // 5, 7, 9],
                         dtype=dt)
            dset(f, fname, "int/" + dt, v)
        # Big endian.
        for dt in [">i2", ">i4", ">i8", ">u2", ">u4", ">u8", ">f4", ">f8", ">c8", ">c16", ">f2"]:
            v = (np.arange(13) * 37 - 100).astype(dt.replace(">u", ">i") if dt[1] == "u" else dt)
            if dt[1] == "u":
                v = (np.arange(13, dtype=np.uint64) * 4099).astype(dt)
            if dt[1] == "c":
                v = v + 1j * np.arange(13)
                v = v.astype(dt)
            dset(f, fname, "be/" + dt[1:], v)
        # Floats (NaN, infinities, -0.0 kept bit for bit) and complex.
        for dt in ["f2", "f4", "f8"]:
            v = np.array([0.0, -0.0, 1.5, -2.25, np.inf, -np.inf, np.nan, 65504.0, 1e-3],
                         dtype=dt)
            dset(f, fname, "float/" + dt, v)
        dset(f, fname, "complex/c8", (rng.standard_normal(10) + 1j * rng.standard_normal(10))
             .astype("c8"))
        dset(f, fname, "complex/c16", (rng.standard_normal((4, 3)) + 1j).astype("c16"))
        # Bool enum.
        dset(f, fname, "bool/b1", np.array([True, False, True, True, False]))
        dset(f, fname, "bool/b2", rng.random((6, 7)) > 0.5)
        # Other enums: read as their base integer.
        e16 = h5py.enum_dtype({"A": 0, "B": 5, "C": -3}, basetype="i2")
        f.create_dataset("enum/i2", data=np.array([0, 5, -3, 5], dtype="i2"), dtype=e16)
        expect_array(fname, "enum/i2", np.array([0, 5, -3, 5], dtype="i2"))
        ebe = h5py.enum_dtype({"A": 1, "B": 258}, basetype=">i2")
        f.create_dataset("enum/be", data=np.array([1, 258, 258], dtype=">i2"), dtype=ebe)
        expect_array(fname, "enum/be", np.array([1, 258, 258], dtype="i2"))
        # Chunked with filters.
        gz2d = rng.standard_normal((1000, 37)).astype("f4")
        dset(f, fname, "chunked/gz2d", gz2d, chunks=(64, 16), compression="gzip",
             compression_opts=4, shuffle=True)
        dset(f, fname, "chunked/gz1d", np.arange(10000, dtype="i8") * 3 - 7, chunks=(1000,),
             compression="gzip")
        dset(f, fname, "chunked/plain3d", np.arange(240, dtype="u2").reshape(20, 3, 4),
             chunks=(7, 2, 3))
        dset(f, fname, "chunked/fletcher", np.linspace(0, 1, 333), chunks=(50,), fletcher32=True)
        dset(f, fname, "chunked/be_gz", (np.arange(500) * 1.25).astype(">f8"), chunks=(64,),
             compression="gzip", shuffle=True)
        # Every value layout through the chunk decoder (gzip, shuffle, byte order, edge chunks).
        dset(f, fname, "chunked/c8_gz", (rng.standard_normal((50, 3)) + 1j).astype(">c8"),
             chunks=(16, 2), compression="gzip", shuffle=True)
        dset(f, fname, "chunked/c16_gz", (rng.standard_normal(70) - 2j).astype("c16"),
             chunks=(32,), compression="gzip")
        dset(f, fname, "chunked/bool_gz", rng.random((90, 5)) > 0.3, chunks=(40, 5),
             compression="gzip")
        dset(f, fname, "chunked/f2_shuf", (rng.standard_normal(100) * 10).astype("<f2"),
             chunks=(30,), shuffle=True, compression="gzip")
        dset(f, fname, "chunked/u8_be", (np.arange(300, dtype="u8") * 2**40).astype(">u8")
             .reshape(60, 5), chunks=(7, 3), compression="gzip", shuffle=True)
        dset(f, fname, "chunked/i1_shuf", np.arange(-100, 100, dtype="i1"), chunks=(64,),
             shuffle=True)
        ev = np.where(np.arange(300) % 3, 258, 1).astype(">i2")
        f.create_dataset("chunked/enum_be", data=ev, dtype=ebe, chunks=(64,), compression="gzip")
        expect_array(fname, "chunked/enum_be", ev.astype("i2"))
        ds = f.create_dataset("chunked/bigchunk2d", shape=(10, 3), maxshape=(None, None),
                              chunks=(64, 8), dtype="i4", compression="gzip")
        ds[...] = np.arange(30, dtype="i4").reshape(10, 3)
        expect_array(fname, "chunked/bigchunk2d", np.arange(30, dtype="i4").reshape(10, 3))
        dset(f, fname, "chunked/r4", np.arange(2 * 5 * 6 * 7, dtype="f8").reshape(2, 5, 6, 7),
             chunks=(1, 2, 4, 3), compression="gzip")
        # More chunks than the decoded-chunk cache holds (evictions while reading).
        dset(f, fname, "chunked/tiny", np.arange(20000, dtype="i2") * 3, chunks=(1,),
             compression="gzip")
        # Resizable (unlimited maxshape), as anndata writes sparse arrays.
        ds = f.create_dataset("chunked/unlimited", shape=(0,), maxshape=(None,), dtype="i4",
                              chunks=(100,), compression="gzip")
        ds.resize((777,))
        ds[:] = np.arange(777, dtype="i4")
        expect_array(fname, "chunked/unlimited", np.arange(777, dtype="i4"))
        # Partly written chunked dataset: unwritten chunks read as the fill value.
        ds = f.create_dataset("chunked/sparse_fill", shape=(300,), dtype="f4", chunks=(50,),
                              fillvalue=-1.0)
        ds[100:150] = 3.0
        sf = np.full(300, -1.0, dtype="f4")
        sf[100:150] = 3.0
        expect_array(fname, "chunked/sparse_fill", sf)
        # Contiguous, any rank.
        dset(f, fname, "contig/a1", np.arange(17, dtype="i4"))
        dset(f, fname, "contig/a2", rng.standard_normal((6, 5)))
        dset(f, fname, "contig/a3", np.arange(60, dtype="i2").reshape(5, 4, 3))
        dset(f, fname, "contig/a4", np.arange(120, dtype="u1").reshape(2, 3, 4, 5))
        # Compact layout.
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        sp = h5py.h5s.create_simple((8,))
        did = h5py.h5d.create(f.id, b"contig/compact", h5py.h5t.STD_I32LE, sp, dcpl=dcpl)
        h5py.Dataset(did)[...] = np.arange(8, dtype="i4") * 11
        expect_array(fname, "contig/compact", np.arange(8, dtype="i4") * 11)
        # Scalars (0-d).
        dset(f, fname, "scalar/f8", np.float64(3.25))
        dset(f, fname, "scalar/i4", np.int32(-12345))
        dset(f, fname, "scalar/u8", np.uint64(2**64 - 1))
        dset(f, fname, "scalar/bool", np.bool_(True))
        dset(f, fname, "scalar/c16", np.complex128(1.5 - 2.5j))
        dset(f, fname, "scalar/f2", np.float16(0.333))
        # Empty arrays.
        dset(f, fname, "empty/e0", np.zeros((0,), dtype="f4"))
        dset(f, fname, "empty/e2", np.zeros((0, 5), dtype="i8"))
        dset(f, fname, "empty/ez", np.zeros((4, 0), dtype="i8"))
        f.create_dataset("empty/null", data=h5py.Empty("f8"))
        # Strings.
        utf8 = ["", "a", "é", "日本語", "x" * 300, "tab\tnl\n", "emoji \U0001F600", "z"]
        f.create_dataset("str/vlen_utf8", data=utf8, dtype=h5py.string_dtype("utf-8"))
        expect_strings(fname, "str/vlen_utf8", utf8)
        ascii = [b"abc", b"", b"hello world", b"q"]
        f.create_dataset("str/vlen_ascii", data=ascii, dtype=h5py.string_dtype("ascii"))
        expect_strings(fname, "str/vlen_ascii", ascii)
        fixed = np.array([b"one", b"two", b"", b"eightchr"], dtype="S8")
        f.create_dataset("str/fixed_ascii", data=fixed)
        expect_strings(fname, "str/fixed_ascii", [bytes(x) for x in fixed])
        fu = ["ü", "ab", "日本", ""]
        ds = f.create_dataset("str/fixed_utf8", shape=(len(fu),),
                              dtype=h5py.string_dtype("utf-8", 12))
        ds.id.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array([s.encode() for s in fu], dtype="S12"),
                    mtype=ds.id.get_type())
        expect_strings(fname, "str/fixed_utf8", fu)
        f.create_dataset("str/scalar_vlen", data="scalar text", dtype=h5py.string_dtype())
        expect_strings(fname, "str/scalar_vlen", ["scalar text"])
        f.create_dataset("str/scalar_fixed", data=np.bytes_(b"fx"))
        expect_strings(fname, "str/scalar_fixed", [b"fx"])
        many = ["cell_%d_%s" % (i, "é" * (i % 4)) for i in range(50000)]
        f.create_dataset("str/many", data=many, dtype=h5py.string_dtype(), chunks=(4096,),
                         compression="gzip")
        expect_strings(fname, "str/many", many)
        # Attributes.
        g = f.create_group("attrs")
        g.attrs["s_vlen"] = "hello"
        g.attrs["s_utf8"] = "é日"
        g.attrs["s_fixed"] = np.bytes_(b"fixed")
        g.attrs["i"] = 42
        g.attrs["neg"] = np.int8(-5)
        g.attrs["u"] = np.uint64(2**63 + 5)
        g.attrs["f"] = 1.5
        g.attrs["f16"] = np.float16(0.5)
        g.attrs["b"] = np.bool_(True)
        g.attrs["bf"] = np.bool_(False)
        g.attrs["lst_str"] = ["a", "bb", "ccc"]
        g.attrs["lst_num"] = [1, 2, 3]
        g.attrs["lst_f"] = np.array([0.5, 1.5])
        g.attrs["lst_bool"] = np.array([True, False])
        g.attrs["empty"] = np.array([], dtype="f8")
        g.attrs["zero_d"] = np.array(7, dtype="i2")
        g.attrs["m2"] = np.arange(6).reshape(2, 3)
        g.attrs["null"] = h5py.Empty("f8")
        g.attrs["cplx"] = np.complex128(1 + 2j)
        g.attrs["be"] = np.array(513, dtype=">i4")
        g.attrs["fixed_list"] = np.array([b"x", b"yz"], dtype="S2")
        g.create_group("sub_b")
        g.create_group("sub_a")
        g.create_dataset("zz", data=np.arange(3))
        g.create_dataset("aa", data=np.arange(3))
        f["attrs/soft"] = h5py.SoftLink("/attrs/aa")
        f["attrs/dangling"] = h5py.SoftLink("/nowhere")
        f["int/i4"].attrs["encoding-type"] = "array"
        f["int/i4"].attrs["encoding-version"] = "0.2.0"

    # Many and large attributes need dense attribute storage (file format >= 1.8), as anndata's
    # dataframes above 5,000 columns; bounded to 1.10 so that libhdf5 1.10 reads it.
    with h5py.File(os.path.join(OUT, "dense_attrs.h5"), "w", libver=("v108", "v110")) as f:
        g = f.create_group("many_attrs")
        for i in range(40):
            g.attrs["k%02d" % i] = i
        g.attrs["column-order"] = ["c%04d" % i for i in range(6000)]
        for i in range(30):
            g.create_dataset("col%02d" % (29 - i), data=np.arange(i + 1, dtype="i4"))


def write_lzf():
    with h5py.File(os.path.join(OUT, "lzf.h5"), "w") as f:
        f.create_dataset("x", data=np.arange(1000, dtype="f4"), compression="lzf")


def write_userblock():
    fname = "userblock.h5"
    with h5py.File(os.path.join(OUT, fname), "w", userblock_size=512) as f:
        dset(f, fname, "a", np.arange(100, dtype="f8") * 0.5)
        dset(f, fname, "c", np.arange(1000, dtype="i4"), chunks=(128,), compression="gzip")


def write_anndata():
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    fname = "anndata.h5ad"
    rng = np.random.default_rng(7)
    n_obs, n_vars = 200, 50
    X = sp.random(n_obs, n_vars, density=0.1, format="csr", dtype=np.float32, random_state=3)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], n_obs)),
            "n_genes": rng.integers(0, 1000, n_obs),
            "flag": rng.random(n_obs) > 0.5,
        },
        index=["cell%d" % i for i in range(n_obs)],
    )
    var = pd.DataFrame(index=["gene%d" % i for i in range(n_vars)])
    a = ad.AnnData(X=X, obs=obs, var=var)
    a.obsm["X_pca"] = rng.standard_normal((n_obs, 10)).astype("f4")
    a.layers["dense"] = X.toarray()
    a.uns["empty_list"] = []
    a.write_h5ad(os.path.join(OUT, fname), compression="gzip")
    expect_array(fname, "X/data", X.data)
    expect_array(fname, "X/indices", X.indices)
    expect_array(fname, "X/indptr", X.indptr)
    expect_array(fname, "obsm/X_pca", a.obsm["X_pca"])
    expect_array(fname, "layers/dense", a.layers["dense"])
    expect_array(fname, "obs/flag", obs["flag"].to_numpy())
    expect_array(fname, "obs/n_genes", obs["n_genes"].to_numpy())
    expect_array(fname, "obs/cell_type/codes", obs["cell_type"].cat.codes.to_numpy())
    expect_strings(fname, "obs/cell_type/categories", list(obs["cell_type"].cat.categories))
    expect_strings(fname, "obs/_index", list(obs.index))
    expect_strings(fname, "var/_index", list(var.index))


def write_hostile():
    hd = os.path.join(OUT, "hostile")
    os.makedirs(hd, exist_ok=True)
    rng = np.random.default_rng(99)
    with open(os.path.join(OUT, "fixtures.h5"), "rb") as f:
        good = f.read()
    with open(os.path.join(hd, "truncated.h5"), "wb") as f:
        f.write(good[: len(good) * 6 // 10])
    with open(os.path.join(hd, "tiny.h5"), "wb") as f:
        f.write(good[:100])
    with open(os.path.join(hd, "random.bin"), "wb") as f:
        f.write(rng.bytes(4096))
    with open(os.path.join(hd, "sig_random.h5"), "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n" + rng.bytes(4096))
    with open(os.path.join(hd, "text.h5ad"), "wb") as f:
        f.write(b"this is not an HDF5 file\n")
    # A contiguous dataset whose dataspace claims far more rows than the file holds: patch the
    # (distinctive) dimension in the dataspace message. libver earliest: no header checksums.
    path = os.path.join(hd, "bigdims.h5")
    n = 123457
    with h5py.File(path, "w", libver="earliest") as f:
        f.create_dataset("victim", data=np.arange(n, dtype="f8"))
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    pat = struct.pack("<Q", n)
    new = struct.pack("<Q", n * 1000)
    count = raw.count(pat)
    assert count >= 1, "dimension not found"
    raw = raw.replace(pat, new)
    with open(path, "wb") as f:
        f.write(raw)
    # A gzip chunk with garbage in the middle.
    path = os.path.join(hd, "badchunk.h5")
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", data=np.arange(4000, dtype="f8"), chunks=(1000,),
                              compression="gzip")
        info = ds.id.get_chunk_info(1)
        off, size = info.byte_offset, info.size
    with open(path, "r+b") as f:
        f.seek(off + size // 3)
        f.write(b"\xff\x00\x13\x37" * 16)
    # A dataset of HDF5 2.0's native complex type (unknown to libhdf5 1.10): refused cleanly.
    if hasattr(h5py.h5t, "COMPLEX_IEEE_F64LE"):
        with h5py.File(os.path.join(hd, "native_complex.h5"), "w") as f:
            sp = h5py.h5s.create_simple((4,))
            h5py.h5d.create(f.id, b"c", h5py.h5t.COMPLEX_IEEE_F64LE, sp)


def main():
    global OUT
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    OUT = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)
    write_fixtures()
    write_lzf()
    write_userblock()
    write_anndata()
    write_hostile()
    with open(os.path.join(OUT, "manifest.txt"), "w") as f:
        f.write("\n".join(MANIFEST) + "\n")


if __name__ == "__main__":
    main()
