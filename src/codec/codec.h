/* codec.h - byte codecs (internal). Layer 1: depends on common/ only.
 *
 * Pure byte-to-byte functions for the codecs zarr and numcodecs use. Every decoder validates its
 * input before trusting any size in it, never writes past `dstcap`, and never allocates from a size
 * read from the input beyond `dstcap`. On failure: ANS_ECORRUPT (or ANS_EUNSUPPORTED) with a message
 * naming the codec and the reason; the caller prefixes the file and element.
 *
 * Decoders take a per-thread context (ans_codec_ctx) holding reusable decompression state (a zstd
 * DCtx, a zlib stream); one context must not be used by two threads at once. */
#ifndef ANS_CODEC_CODEC_H
#define ANS_CODEC_CODEC_H

#include "common/mem.h"

#include <stddef.h>
#include <stdint.h>

typedef struct ans_codec_ctx ans_codec_ctx;

int ans_codec_ctx_new(ans_codec_ctx **out);
void ans_codec_ctx_free(ans_codec_ctx *ctx);

/* Decoders. `dst` has room for `dstcap` bytes; *outlen receives the number written.
 * If the decoded data would exceed dstcap, the function fails with ANS_ECORRUPT. */

/* Blosc1 frame (c-blosc 1.x format, version 2): full header and block-table validation, then
 * blosc_decompress_ctx. All codecs c-blosc was built with (blosclz, lz4, lz4hc, snappy, zlib, zstd)
 * and all shuffle modes. */
int ans_blosc_decode(ans_codec_ctx *ctx, const void *src, size_t srclen, void *dst, size_t dstcap,
                     size_t *outlen);
/* Uncompressed size claimed by a validated blosc frame header. */
int ans_blosc_nbytes(const void *src, size_t srclen, size_t *nbytes);

/* One or more concatenated zstd frames, with or without content size. */
int ans_zstd_decode(ans_codec_ctx *ctx, const void *src, size_t srclen, void *dst, size_t dstcap,
                    size_t *outlen);
/* Sum of the frames' declared content sizes; ANS_EUNSUPPORTED (no message) when a frame lacks it. */
int ans_zstd_content_size(const void *src, size_t srclen, uint64_t *size);

/* zlib (RFC 1950) when gzip == 0; gzip (RFC 1952, possibly several members) when gzip == 1. */
int ans_zlib_decode(ans_codec_ctx *ctx, const void *src, size_t srclen, void *dst, size_t dstcap,
                    size_t *outlen, int gzip);

/* numcodecs LZ4: u32le uncompressed length followed by one raw LZ4 block. */
int ans_lz4_decode(const void *src, size_t srclen, void *dst, size_t dstcap, size_t *outlen);
/* The u32le length prefix. */
int ans_lz4_nbytes(const void *src, size_t srclen, size_t *nbytes);

/* CRC-32C (Castagnoli): ans_crc32c(0, data, n) is the checksum of data; chaining: pass the previous
 * result as `crc`. */
uint32_t ans_crc32c(uint32_t crc, const void *data, size_t n);

/* vlen-utf8 (numcodecs VLenUTF8 and zarr v3 vlen-utf8): u32le item count, then per item u32le length
 * + bytes. Requires exactly `n_items` items. Appends the item bytes to `data` and writes n_items + 1
 * offsets (relative to data->len at entry: offsets[0] = 0) into `offsets`. */
int ans_vlen_utf8_decode(const void *src, size_t srclen, uint64_t n_items, uint64_t *offsets,
                         ans_buf *data);

/* Byte-swap `n` values of `size` bytes (2, 4, 8, or 16 for complex128 as two 8-byte halves: pass
 * size 8 with twice the count) in place. */
void ans_byteswap(void *data, size_t n, size_t size);

/* Blosc / numcodecs shuffle helpers are internal to c-blosc; none is exposed here. */

/* ---- Encoders (used by the collection writer). `dst` must hold ans_*_bound(srclen) bytes. ---- */
size_t ans_blosc_bound(size_t srclen);
/* cname: "lz4", "lz4hc", "blosclz", "zstd", "zlib", "snappy"; shuffle: 0 none, 1 byte, 2 bit. */
int ans_blosc_encode(const void *src, size_t srclen, void *dst, size_t dstcap, size_t *outlen,
                     const char *cname, int clevel, int shuffle, size_t typesize, int nthreads);
size_t ans_zstd_bound(size_t srclen);
int ans_zstd_encode(const void *src, size_t srclen, void *dst, size_t dstcap, size_t *outlen,
                    int level);

#endif
