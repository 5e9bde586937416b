/* zarrw.h - a zarr v3 writer (internal). Layer 2 (writer side): depends on common/, storage/,
 * codec/.
 *
 * Writes one zarr v3 hierarchy into a new local directory:
 * - groups with attributes (`ans_zw_group`);
 * - arrays (`ans_zw_array_new` / `ans_zwa_append` / `ans_zwa_close`), appended along axis 0 in C
 *   order, either in plain chunks of `chunk_rows` rows or sharded (`sharding_indexed`: inner chunks
 *   of `chunk_rows` rows, shards of `shard_rows` rows, index [bytes little, crc32c] at the end);
 *   inner codecs [bytes little, then blosc | zstd | nothing]; string arrays (vlen-utf8) in plain
 *   chunks only;
 * - consolidated metadata (every node's zarr.json, in creation order) inline in the root zarr.json,
 *   written by `ans_zw_finish`, which must be the last call.
 *
 * Streaming and memory. An array buffers at most one block (a shard, or a plain chunk) of rows plus
 * its encoded form (the block size + codec bound); when the block is full its units (inner chunks,
 * or the chunk) are compressed - in parallel on the writer's pool when it has one - and the block
 * is written as one value with ans_kv_set (temporary file + rename, so a key is never half
 * written; values of 1 MiB and more the same way but with O_DIRECT from aligned buffers, where
 * the file system allows it). Shards of 1 MiB and more are written by a writer thread, one at a
 * time, while the caller fills the next block; the thread is joined by ans_zw_finish and
 * ans_zw_free, and a failed write is reported by a later append or close, or by ans_zw_finish.
 * Block and encode buffers of closed arrays are kept (a few, the largest) for the next arrays that
 * need as much. Units whose bytes are all zero (the fill value: 0, 0.0, false, "") are omitted: their
 * index entry is (2^64-1, 2^64-1); a block without any unit is not written at all. An edge block is
 * encoded at full shape (the last unit padded with the fill value, units past the end omitted). An
 * array's zarr.json is written by ans_zwa_close, with the number of rows actually appended as
 * shape[0], so callers need not know the row count in advance.
 *
 * Threads: a writer and its arrays are driven by one thread at a time; several arrays may be open
 * at once (CSR data, indices and indptr are appended side by side). Errors name the output path and
 * the node: "<root>: <node path>: <reason>".
 *
 * Safety: everything is written into a temporary sibling directory "<root>.tmp-XXXXXX" that
 * ans_zw_finish renames to `root` once the root zarr.json is written, so `root` appears complete or
 * not at all. ans_zw_free of a writer that did not finish removes the temporary directory. */
#ifndef ANS_WRITER_ZARRW_H
#define ANS_WRITER_ZARRW_H

#include "annstream.h"
#include "common/json.h"
#include "common/pool.h"

#include <stddef.h>
#include <stdint.h>

#define ANS_ZW_MAX_NDIM 32

/* Compressor applied to every unit after the bytes codec. */
typedef enum ans_zw_comp {
    ANS_ZW_COMP_NONE = 0,
    ANS_ZW_COMP_BLOSC = 1, /* Blosc1 frame: cname, clevel, shuffle */
    ANS_ZW_COMP_ZSTD = 2   /* one zstd frame: clevel (0 = libzstd default), no checksum */
} ans_zw_comp;

typedef struct ans_zw_codec {
    ans_zw_comp comp;
    const char *cname; /* blosc compressor ("lz4", "zstd", "blosclz", ...); NULL = "lz4" */
    int clevel;        /* blosc 0..9; zstd level (0 = default 3) */
    int shuffle;       /* blosc: 0 none, 1 byte, 2 bit (1-byte types and strings: always none) */
} ans_zw_codec;

/* annbatch's default: Blosc(lz4, clevel 3, byte shuffle). */
#define ANS_ZW_CODEC_DEFAULT {ANS_ZW_COMP_BLOSC, "lz4", 3, 1}

typedef struct ans_zw ans_zw;
typedef struct ans_zwa ans_zwa;

/* A writer for a new store at `root`, which must not exist yet (ANS_EINVAL); its parents are
 * created, then the temporary sibling directory. `pool` (borrowed, may be NULL) compresses the
 * units of a block in parallel. */
int ans_zw_create(ans_zw **out, const char *root, ans_pool *pool);
/* Free the writer (arrays must be closed or aborted first). Unless ans_zw_finish succeeded, the
 * temporary directory and everything written into it are removed. */
void ans_zw_free(ans_zw *w);
const char *ans_zw_root(const ans_zw *w);

/* Create the group `path` ("" = the root group, whose zarr.json is written by ans_zw_finish) with
 * `attrs` (an object, taken over even on failure; NULL = {}). Parent groups are not implied: create
 * each level. A path may be created once. */
int ans_zw_group(ans_zw *w, const char *path, ans_json *attrs);

typedef struct ans_zw_array_opts {
    ans_dtype dtype;                 /* bool, (u)int8..64, float16/32/64, complex64/128, STRING */
    int ndim;                        /* 1..ANS_ZW_MAX_NDIM */
    uint64_t shape[ANS_ZW_MAX_NDIM]; /* shape[1..ndim) fixed; shape[0]: rows that must be appended
                                        (checked by close) unless `grow` */
    int grow;                        /* nonzero: shape[0] = whatever was appended */
    uint64_t chunk_rows;             /* rows per chunk (inner chunk when sharded), >= 1 */
    uint64_t shard_rows;             /* 0: not sharded; else a multiple of chunk_rows */
    ans_zw_codec codec;
    ans_json *attrs; /* array attributes (object, taken over even on failure);
                        NULL = {} */
} ans_zw_array_opts;

/* Start the array `path` (not ""). STRING arrays take strings (ans_zwa_append_strings) and cannot
 * be sharded. Memory: one block of rows (chunk_rows or shard_rows) and its encoded form. */
int ans_zw_array_new(ans_zw *w, const char *path, const ans_zw_array_opts *opts, ans_zwa **out);
/* Append `nrows` rows (C order, native little-endian values, each row the product of shape[1..)
 * elements; bools as bytes 0/1). Full blocks are encoded and written. */
int ans_zwa_append(ans_zwa *a, const void *rows, uint64_t nrows);
/* Append `n` strings: item i is data[offsets[i] .. offsets[i+1]) (UTF-8, not validated). */
int ans_zwa_append_strings(ans_zwa *a, const uint64_t *offsets, const char *data, uint64_t n);
/* Rows appended so far. */
uint64_t ans_zwa_rows(const ans_zwa *a);
/* Write the last partial block and the array's zarr.json, record it for consolidation and free the
 * array (also on failure). ANS_EINVAL when fewer or more than shape[0] rows came (unless grow). */
int ans_zwa_close(ans_zwa *a);
/* Free an array without finishing it (NULL-tolerant); blocks already written stay. */
void ans_zwa_abort(ans_zwa *a);

/* Write the root zarr.json (root attributes + consolidated metadata of every node) and rename the
 * temporary directory to `root` (ANS_EINVAL if `root` appeared meanwhile). Last call. */
int ans_zw_finish(ans_zw *w);

#endif
