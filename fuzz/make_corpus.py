#!/usr/bin/env python3
"""Write the seed corpus of the fuzz targets (fuzz/corpus/<target>/) from real writers.

usage: .venv/bin/python fuzz/make_corpus.py [OUTDIR]      (default: fuzz/corpus next to this file)

Seeds come from stores written by the real anndata / zarr-python / h5py / numcodecs (the same
writers as tests/python/stores.py and tests/c/make_zarr_fixtures.py) plus a few hand-written edge
cases. The output is deterministic for fixed package versions; seeds are named by the SHA-1 of
their content (duplicates collapse), so rerunning only adds what changed. Existing seeds are kept:
delete fuzz/corpus/<target> first to rebuild one from scratch. Total size is kept well under 2 MB
(large stores are left out).

  json           .zattrs / .zarray / .zgroup / zarr.json / .zmetadata documents + edge cases
  zarr_meta_v2   every distinct .zarray
  zarr_meta_v3   every distinct array zarr.json
  shard_index    the index of real shards (header: flags, n - 1, shard size; see the target)
  codec_*        frames written by numcodecs (blosc cname x shuffle, zstd, zlib, gzip, lz4,
                 vlen-utf8) and chunk files of real stores
  sparse         CSR / CSC matrices of several dtypes in the target's input layout
  store_zarr     whole AnnData zarr stores (v2, v2 without .zmetadata, v3, v3 sharded, v3 sharded
                 with several blosc blocks per inner chunk) as archives of files ("%%NAME\\n" +
                 bytes per file, see fuzz/targets/fuzz_common.h)
  h5             whole small .h5ad files (plain and gzip)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))

MAX_ARCHIVE_FILES = 256  # FUZZ_ARCHIVE_MAX_FILES
MAX_SEED = 160 * 1024  # largest seed kept
# per-target limits (bytes per seed, seeds per run) that keep the corpus small
LIMITS = {"json": (4096, 150), "zarr_meta_v2": (4096, 150), "zarr_meta_v3": (4096, 200),
          "shard_index": (4096, 100)}


def out_dir(base: Path, target: str) -> Path:
    d = base / target
    d.mkdir(parents=True, exist_ok=True)
    return d


COUNTS: dict[str, int] = {}


def save(base: Path, target: str, data: bytes) -> None:
    max_bytes, max_count = LIMITS.get(target, (MAX_SEED, 10**9))
    if len(data) > max_bytes or COUNTS.get(target, 0) >= max_count:
        return
    d = out_dir(base, target)
    name = hashlib.sha1(data).hexdigest()[:16]
    p = d / name
    if not p.exists():
        p.write_bytes(data)
        COUNTS[target] = COUNTS.get(target, 0) + 1


# ---- stores ------------------------------------------------------------------------------------


def tiny_rich():
    import anndata as ad
    import scipy.sparse as sp
    import stores

    rng = np.random.default_rng(7)
    n, m = 6, 5
    obs = stores._rich_obs(rng, n)
    var = stores._rich_var(rng, m, index_name="gene")
    X = sp.random(n, m, density=0.4, format="csr", dtype=np.float32, random_state=1)
    a = ad.AnnData(X=X, obs=obs, var=var)
    a.layers["dense"] = rng.normal(size=(n, m)).astype(np.float64)
    a.layers["csc"] = sp.random(n, m, density=0.5, format="csc", dtype=np.int32, random_state=2)
    a.obsm["emb"] = rng.normal(size=(n, 3)).astype(np.float32)
    a.raw = ad.AnnData(X=sp.random(n, m + 2, density=0.3, format="csr", random_state=3),
                       var=stores._rich_var(rng, m + 2))
    return a


def _write_blosc_blocks(path: Path) -> None:
    import anndata as ad
    import scipy.sparse as sp
    import zarr
    from zarr.codecs import BloscCodec

    X = sp.random(40, 30, density=0.5, format="csr", dtype=np.float32, random_state=5)
    a = ad.AnnData(X=X)
    a.obs_names = [f"c{i}" for i in range(40)]
    a.var_names = [f"g{i}" for i in range(30)]
    with ad.settings.override(zarr_write_format=3):
        a.write_zarr(path)
    root = zarr.open_group(path, mode="r+")
    for name in ("data", "indices"):
        values = root["X"][name][...]
        del root["X"][name]
        # 128-value inner chunks (512 bytes), blocks of 128 bytes: 4 per chunk, 4 chunks per shard
        root["X"].create_array(name, data=values, shards=(512,), chunks=(128,),
                               compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle",
                                                      blocksize=128))
    zarr.consolidate_metadata(path)


def write_all_stores(tmp: Path) -> tuple[list[Path], list[Path]]:
    """(zarr directories, h5ad files) written by anndata."""
    import anndata as ad
    import stores

    zarrs, h5s = [], []
    specs = {k: v.build for k, v in stores.SPECS.items() if k not in ("main", "min_index_u16")}
    specs["tiny_rich"] = tiny_rich
    for name, build in specs.items():
        adata = build()
        for container in ("zarr2", "zarr3", "zarr3-sharded"):
            path = tmp / f"{name}-{container}.zarr"
            fmt = 2 if container == "zarr2" else 3
            with ad.settings.override(zarr_write_format=fmt, auto_shard_zarr_v3=False,
                                      allow_write_nullable_strings=True):
                stores._write_zarr(adata, path, fmt, sharded=container == "zarr3-sharded")
            zarrs.append(path)
        for gz in (False, True):
            path = tmp / f"{name}{'-gzip' if gz else ''}.h5ad"
            with ad.settings.override(allow_write_nullable_strings=True):
                if gz:
                    adata.write_h5ad(path, compression="gzip",
                                     convert_strings_to_categoricals=False)
                else:
                    adata.write_h5ad(path, convert_strings_to_categoricals=False)
            h5s.append(path)
    # X sharded like annbatch writes it (blosc lz4, byte shuffle) in inner chunks of 4 small blosc
    # blocks each: reading rows in part, after a whole read, reads only the blocks they need
    path = tmp / "blosc_blocks-zarr3-sharded.zarr"
    _write_blosc_blocks(path)
    zarrs.append(path)
    # a v2 store without consolidated metadata, default anndata chunking and compressor
    adata = tiny_rich()
    path = tmp / "tiny_rich-plain.zarr"
    with ad.settings.override(zarr_write_format=2, allow_write_nullable_strings=True):
        adata.write_zarr(path)
    (path / ".zmetadata").unlink(missing_ok=True)
    zarrs.append(path)
    return zarrs, h5s


def archive(root: Path) -> bytes:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    out = bytearray()
    for f in files:
        rel = f.relative_to(root).as_posix()
        if out:
            out += b"\n"
        out += b"%%" + rel.encode() + b"\n" + f.read_bytes()
    return bytes(out), len(files)


# ---- seeds per target --------------------------------------------------------------------------


def json_docs(zarrs: list[Path]):
    for z in zarrs:
        for f in sorted(z.rglob("*")):
            if f.is_file() and f.name in (".zattrs", ".zarray", ".zgroup", "zarr.json", ".zmetadata"):
                yield f, f.read_bytes()


def seeds_json(base: Path, zarrs: list[Path]) -> None:
    edge = [
        b"{}", b"[]", b"null", b"true", b"0", b"-0", b"18446744073709551615", b"-9223372036854775808",
        b"9223372036854775808", b"1e308", b"-1e-308", b"5e-324", b"0.1", b"1.7976931348623157e308",
        b"[NaN, Infinity, -Infinity]", b'"\\ud800"', b'"\\udfff\\ud800"', b'"\\ud83d\\ude00"',
        b'"a\\u0000b"', b'{"a\\u0000": 1}', b'{"a": 1, "a": 2}', b'"\\"\\\\\\/\\b\\f\\n\\r\\t"',
        b"[" * 64 + b"]" * 64, b"[" * 65 + b"]" * 65, b'{"x": [1, 2.5, "s", null, {"y": false}]}',
        "\"\u00e9\u65e5\"".encode(), b"123456789012345678901234567890", b"1.0e+400", b"[1,]",
        b'{"fill_value": "NaN", "shape": [3], "dtype": "<f8"}',
    ]
    for e in edge:
        save(base, "json", e)
    for _, data in json_docs(zarrs):
        save(base, "json", data)


def seeds_meta(base: Path, zarrs: list[Path], fixtures: Path | None) -> None:
    roots = list(zarrs) + ([fixtures] if fixtures else [])
    for z in roots:
        for f in sorted(z.rglob(".zarray")):
            save(base, "zarr_meta_v2", f.read_bytes())
        for f in sorted(z.rglob("zarr.json")):
            data = f.read_bytes()
            try:
                doc = json.loads(data)
            except ValueError:
                continue
            if doc.get("node_type") == "array":
                save(base, "zarr_meta_v3", data)
            elif "consolidated_metadata" in doc and doc["consolidated_metadata"]:
                for meta in doc["consolidated_metadata"].get("metadata", {}).values():
                    if meta.get("node_type") == "array":
                        save(base, "zarr_meta_v3", json.dumps(meta).encode())


def seeds_shard_index(base: Path, zarrs: list[Path], fixtures: Path | None) -> None:
    roots = list(zarrs) + ([fixtures] if fixtures else [])
    for z in roots:
        for f in sorted(z.rglob("zarr.json")):
            try:
                doc = json.loads(f.read_bytes())
            except ValueError:
                continue
            if doc.get("node_type") != "array":
                continue
            shard = [c for c in doc.get("codecs", []) if c.get("name") == "sharding_indexed"]
            if not shard:
                continue
            conf = shard[0]["configuration"]
            outer = doc["chunk_grid"]["configuration"]["chunk_shape"]
            inner = conf["chunk_shape"]
            n = int(np.prod([o // i for o, i in zip(outer, inner)])) if outer else 1
            if n < 1 or n > 256:
                continue
            icodecs = conf.get("index_codecs", [])
            crc = any(c.get("name") == "crc32c" for c in icodecs)
            big = any(c.get("name") == "bytes" and
                      (c.get("configuration") or {}).get("endian") == "big" for c in icodecs)
            at_start = conf.get("index_location", "end") == "start"
            ib = 16 * n + (4 if crc else 0)
            for chunk in sorted(f.parent.rglob("*")):
                if not chunk.is_file() or chunk.name == "zarr.json":
                    continue
                data = chunk.read_bytes()
                if len(data) < ib:
                    continue
                idx = data[:ib] if at_start else data[-ib:]
                flags = (1 if crc else 0) | (2 if big else 0)
                hdr = bytes([flags, n - 1]) + struct.pack("<Q", len(data))
                save(base, "shard_index", hdr + idx)
                save(base, "shard_index", bytes([flags | 4, n - 1]) + struct.pack("<Q", len(data)) + idx)
    # synthetic: empty inner chunks, an entry ending exactly at the end
    n = 4
    ent = b"".join(struct.pack("<QQ", *e) for e in [(0, 10), (2**64 - 1, 2**64 - 1), (10, 0), (10, 6)])
    save(base, "shard_index", bytes([0, n - 1]) + struct.pack("<Q", 16 + 64) + ent)
    save(base, "shard_index", bytes([1 | 8, n - 1]) + struct.pack("<Q", 16 + 68) + ent + b"\0" * 4)


def seeds_codecs(base: Path) -> None:
    import numcodecs

    rng = np.random.default_rng(3)
    arrays = [
        np.arange(100, dtype=np.int32),
        rng.normal(size=64).astype(np.float32),
        rng.integers(0, 4, 300).astype(np.uint8),
        np.zeros(50, dtype=np.float64),
        np.frombuffer(b"hello hello hello hello world", dtype=np.uint8),
        np.array([], dtype=np.int16),
        rng.integers(-(2**60), 2**60, 33).astype(np.int64),
    ]
    for a in arrays:
        raw = a.tobytes()
        for cname in ("blosclz", "lz4", "lz4hc", "zstd", "zlib"):
            for shuffle in (0, 1, 2):
                try:
                    enc = numcodecs.Blosc(cname=cname, clevel=5, shuffle=shuffle,
                                          blocksize=0).encode(a)
                except Exception:
                    continue
                save(base, "codec_blosc", bytes(enc))
        for level in (1, 3, 19):
            save(base, "codec_zstd", bytes(numcodecs.Zstd(level=level).encode(raw)))
        try:
            save(base, "codec_zstd", bytes(numcodecs.Zstd(level=3, checksum=True).encode(raw)))
        except TypeError:
            pass
        for level in (1, 6, 9):
            save(base, "codec_zlib", bytes(numcodecs.Zlib(level=level).encode(raw)))
            save(base, "codec_zlib", bytes(numcodecs.GZip(level=level).encode(raw)))
        for accel in (1, 10):
            save(base, "codec_lz4", bytes(numcodecs.LZ4(acceleration=accel).encode(raw)))
    import gzip
    import zlib
    save(base, "codec_zlib", gzip.compress(b"member one ") + gzip.compress(b"member two"))
    save(base, "codec_zlib", gzip.compress(b"padded") + b"\0" * 8)
    save(base, "codec_zlib", zlib.compress(b""))
    save(base, "codec_zstd", b"\x50\x2a\x4d\x18\x04\x00\x00\x00skip" +
         bytes(numcodecs.Zstd(level=1).encode(b"after a skippable frame")))
    words = [["", "a", "hello", "日本語", "ünï"], [], ["x" * 300], ["tab\t", "nl\n", "\0nul"]]
    for w in words:
        save(base, "codec_vlen", bytes(numcodecs.VLenUTF8().encode(np.array(w, dtype=object))))


def seeds_codec_chunks(base: Path, zarrs: list[Path]) -> None:
    """Chunk files of real stores whose array has exactly one compressor and no filter."""
    for z in zarrs:
        for f in sorted(z.rglob(".zarray")):
            meta = json.loads(f.read_bytes())
            comp = meta.get("compressor")
            filters = meta.get("filters") or []
            target = None
            if comp and not filters:
                target = {"blosc": "codec_blosc", "zstd": "codec_zstd", "zlib": "codec_zlib",
                          "gzip": "codec_zlib", "lz4": "codec_lz4"}.get(comp.get("id"))
            if target is None:
                continue
            chunks = [c for c in sorted(f.parent.iterdir()) if c.is_file() and not c.name.startswith(".")]
            for c in chunks[:2]:
                save(base, target, c.read_bytes())


def seeds_sparse(base: Path) -> None:
    import scipy.sparse as sp

    ptr_codes = {"<i4": 0, "<i8": 1, "<u8": 2, ">i4": 3}
    idx_codes = {"<i4": 0, "<i8": 1, "|u1": 2, "<u2": 3}
    data_codes = {"<f4": 0, "<f8": 1, "<i4": 2, "|b1": 3, ">f8": 4, "<i2": 5}
    cases = [
        (5, 4, 0.4, "csr", "<i4", "<i4", "<f4", 0),
        (7, 6, 0.3, "csr", "<i8", "<i8", "<f8", 1),
        (9, 12, 0.2, "csc", "<i4", "|u1", "<i4", 0),
        (4, 15, 0.5, "csr", "<u8", "<u2", "|b1", 1),
        (15, 3, 0.5, "csc", ">i4", "<i4", ">f8", 1),
        (3, 3, 0.0, "csr", "<i4", "<i4", "<i2", 0),
        (1, 1, 1.0, "csr", "<i4", "<i4", "<f4", 0),
        (0, 4, 0.0, "csr", "<i4", "<i4", "<f4", 0),
        (6, 0, 0.0, "csc", "<i8", "<i4", "<f4", 1),
    ]
    for k, (n, m, dens, fmt, pt, it, dt, chunk3) in enumerate(cases):
        mat = sp.random(n, m, density=dens, format=fmt, random_state=k)
        nnz = mat.nnz
        if nnz >= 64:
            continue
        flags = (1 if fmt == "csc" else 0) | ptr_codes[pt] << 1 | idx_codes[it] << 3 | chunk3 << 5
        hdr = bytes([flags, n, m, nnz, data_codes[dt], 1])
        body = (mat.indptr.astype(np.dtype(pt)).tobytes() + mat.indices.astype(np.dtype(it)).tobytes()
                + mat.data.astype(np.dtype(dt)).tobytes())
        save(base, "sparse", hdr + body)
        # variants: no indptr chunk files, shape attribute wider than var, indptr one too long
        save(base, "sparse", bytes([flags | 64]) + hdr[1:] + body)
        save(base, "sparse", bytes([flags | 128]) + hdr[1:] + body)
        save(base, "sparse", hdr[:5] + bytes([2]) + body)


def seeds_stores(base: Path, zarrs: list[Path], h5s: list[Path]) -> None:
    for z in zarrs:
        data, nfiles = archive(z)
        if nfiles <= MAX_ARCHIVE_FILES:
            save(base, "store_zarr", data)
    for h in h5s:
        save(base, "h5", h.read_bytes())


def main() -> int:
    base = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "corpus"
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="annstream-corpus-"))
    try:
        zarrs, h5s = write_all_stores(tmp / "stores")
        fixtures = None
        try:
            import subprocess
            fx = tmp / "fixtures"
            subprocess.run([sys.executable, str(ROOT / "tests" / "c" / "make_zarr_fixtures.py"),
                            str(fx)], check=True, stdout=subprocess.DEVNULL)
            fixtures = fx
        except Exception as e:  # the fixtures only add variety
            print(f"make_corpus: zarr fixtures skipped ({e})", file=sys.stderr)
        seeds_json(base, zarrs)
        seeds_meta(base, zarrs, fixtures)
        seeds_shard_index(base, zarrs, fixtures)
        seeds_codecs(base)
        seeds_codec_chunks(base, zarrs + ([fixtures] if fixtures else []))
        seeds_sparse(base)
        seeds_stores(base, zarrs, h5s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = 0
    for d in sorted(base.iterdir()):
        if d.is_dir():
            files = [f for f in d.iterdir() if f.is_file()]
            size = sum(f.stat().st_size for f in files)
            total += size
            print(f"{d.name:14s} {len(files):5d} seeds {size / 1024:8.1f} KiB (+{COUNTS.get(d.name, 0)} new)")
    print(f"{'total':14s} {total / 1024:20.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
