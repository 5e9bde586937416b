/* codec.h - byte codecs (internal). Layer 1: depends on common/ only.
 *
 * Pure byte-to-byte functions for the codecs zarr and numcodecs use. Every decoder validates its
 * input before trusting any size in it, never writes past `dstcap`, and never allocates from a
 * size read from the input beyond `dstcap`. On failure: ANS_ECORRUPT (or ANS_EUNSUPPORTED) with a
 * one-line message that starts with the codec name ("blosc: ...") and gives the reason; the caller
 * prefixes the file and element. `*outlen` is written on success only.
 *
 * Decoders take a per-thread context (ans_codec_ctx) holding reusable decompression state (a zstd
 * DCtx, a zlib stream); one context must not be used by two threads at once. */
#ifndef ANS_CODEC_CODEC_H
#define ANS_CODEC_CODEC_H

#include "common/mem.h"

#include <stddef.h>
#include <stdint.h>

typedef struct ans_codec_ctx ans_codec_ctx;

/* A context starts empty; the zstd and zlib states are created on first use and then reused.
 * @return ANS_OK or ANS_ENOMEM. */
int ans_codec_ctx_new(ans_codec_ctx **out);
/* NULL-tolerant. */
void ans_codec_ctx_free(ans_codec_ctx *ctx);

/* For the decoders in src/codec only: the context's zstd DCtx, and its inflate stream reset for
 * `window_bits` (15 zlib, 31 gzip). ANS_OK or ANS_ENOMEM. */
struct ZSTD_DCtx_s;
struct z_stream_s;
int ans_codec_ctx_zstd(ans_codec_ctx *ctx, struct ZSTD_DCtx_s **out);
int ans_codec_ctx_inflate(ans_codec_ctx *ctx, int window_bits, struct z_stream_s **out);

/* Decoders. `dst` has room for `dstcap` bytes; *outlen receives the number written.
 * If the decoded data would exceed dstcap, the function fails with ANS_ECORRUPT. */

/* Blosc1 frame (c-blosc 1.x format, version 2): full header, block-table and split validation, then
 * blosc_decompress_ctx. All codecs c-blosc was built with (blosclz, lz4, lz4hc, snappy, zlib, zstd)
 * and all shuffle modes. `ctx` is unused (c-blosc keeps its state on the stack) and may be NULL.
 * ANS_EUNSUPPORTED for a codec c-blosc was built without, or a Blosc2 chunk (versions 3-5). */
int ans_blosc_decode(ans_codec_ctx *ctx, const void *src, size_t srclen, void *dst, size_t dstcap,
                     size_t *outlen);
/* Bytes [lo, hi) of a frame that decodes to exactly `nbytes`, into `dst` (hi - lo bytes), decoding
 * only the blocks that hold them, after the same validation as ans_blosc_decode. LZ4 frames with
 * byte or no shuffle are decoded block by block here (scratch grows to two blocks, reused); other
 * codecs through blosc_getitem. ANS_EUNSUPPORTED without a message when decoding a part gains
 * nothing or is not possible (every block is needed, or, for getitem, lo/hi are not multiples of
 * the frame's typesize): decode the whole frame instead. */
int ans_blosc_decode_range(const void *src, size_t srclen, size_t nbytes, size_t lo, size_t hi,
                           void *dst, ans_buf *scratch);
/* ans_blosc_decode_range when only the frame's bytes [w0, w1) and its head (header and block-start
 * table, ans_blosc_head_len) hold what was read: the blocks decoded must lie in [w0, w1), which
 * ans_blosc_span gives. [0, srclen) is the whole frame. A part of a frame that is not an LZ4 frame
 * with byte or no shuffle, or an uncompressed one, is refused (ANS_EINVAL). */
int ans_blosc_decode_range_in(const void *src, size_t srclen, size_t nbytes, size_t lo, size_t hi,
                              size_t w0, size_t w1, void *dst, ans_buf *scratch);
/* The length of a frame's head (16-byte header and block-start table, validated) when its blocks
 * can be read apart from each other (LZ4 with byte or no shuffle, or an uncompressed frame); else
 * ANS_EUNSUPPORTED without a message (also for a frame that fails validation: its decoding will
 * say why). */
int ans_blosc_head_len(const void *src, size_t srclen, size_t *len);
/* The frame bytes [*c0, *c1) beyond its head that ans_blosc_decode_range_in needs to decode bytes
 * [lo, hi), from the head alone (`head`: its first headlen bytes, at least the head; srclen: the
 * whole frame's size; nbytes: its decoded size). ANS_EUNSUPPORTED without a message when the
 * frame's blocks cannot be read apart or every block is needed. */
int ans_blosc_span(const void *head, size_t headlen, size_t srclen, size_t nbytes, size_t lo,
                   size_t hi, size_t *c0, size_t *c1);
/* A part of a frame's decoded bytes, [off, off + len), and where it goes (for the sink). */
typedef struct ans_bseg {
    size_t off, len;
} ans_bseg;
/* Takes decoded bytes [at, at + len) of segment k (relative to its start) from `bytes`, which are
 * only valid during the call. Returns ANS_OK, or a status (with its message) that stops the
 * decoding. */
typedef int (*ans_bsink)(void *ctx, size_t k, size_t at, const uint8_t *bytes, size_t len);
/* Decode the segments of a frame that decodes to exactly `nbytes` and hand them to `put` in pieces
 * of whole elements of `elsize` bytes (segments must start and end on elements; they may come in
 * any order, overlap and leave gaps). Each block holding a wanted byte is decoded once, only as far
 * as the segments need it, into scratch (grown to a block plus 32 KiB, reused); a shuffled block's
 * items are unshuffled in pieces of up to 32 KiB, which the sink reads from cache. Of the frame
 * only its head and [w0, w1) need hold its bytes, as for ans_blosc_decode_range_in; [0, srclen) is
 * the whole frame. Same validation as ans_blosc_decode_range_in. ANS_EUNSUPPORTED without a message
 * when the frame is not LZ4 with byte or no shuffle (nor uncompressed), its blocks do not hold
 * whole elements, or its shuffle typesize is not elsize: decode it another way. */
int ans_blosc_scatter(const void *src, size_t srclen, size_t nbytes, size_t w0, size_t w1,
                      const ans_bseg *segs, size_t nsegs, size_t elsize, ans_bsink put, void *ctx,
                      ans_buf *scratch);
/* Undo c-blosc's byte shuffle for the first m items of a block of n items of ts bytes (byte t of
 * item i is at src[t * n + i]) into dst, with instructions up to `isa` (common/stream.h: ANS_ISA_*;
 * more than the CPU has means its best). The decoders use the CPU's best; tests try them all. */
void ans_blosc_unshuffle_isa(int isa, size_t ts, size_t n, size_t m, const uint8_t *src,
                             uint8_t *dst);
/* Uncompressed size of a blosc frame, after the same validation as ans_blosc_decode. */
int ans_blosc_nbytes(const void *src, size_t srclen, size_t *nbytes);

/* One or more concatenated zstd frames (skippable frames allowed), with or without content size;
 * frame checksums are verified. */
int ans_zstd_decode(ans_codec_ctx *ctx, const void *src, size_t srclen, void *dst, size_t dstcap,
                    size_t *outlen);
/* Sum of the frames' declared content sizes; ANS_EUNSUPPORTED (no message set) when a frame
 * lacks it. */
int ans_zstd_content_size(const void *src, size_t srclen, uint64_t *size);

/* zlib (RFC 1950) when gzip == 0: exactly one stream, no trailing bytes. gzip (RFC 1952) when
 * gzip == 1: one or more members; NUL padding between or after members is skipped (as Python's
 * gzip.decompress does). */
int ans_zlib_decode(ans_codec_ctx *ctx, const void *src, size_t srclen, void *dst, size_t dstcap,
                    size_t *outlen, int gzip);

/* numcodecs LZ4: u32le uncompressed length followed by one raw LZ4 block. */
int ans_lz4_decode(const void *src, size_t srclen, void *dst, size_t dstcap, size_t *outlen);
/* The u32le length prefix. */
int ans_lz4_nbytes(const void *src, size_t srclen, size_t *nbytes);

/* CRC-32C (Castagnoli): ans_crc32c(0, data, n) is the checksum of data; chaining: pass the previous
 * result as `crc`. Uses the SSE4.2 instruction when the CPU has it. */
uint32_t ans_crc32c(uint32_t crc, const void *data, size_t n);
/* The same, always table-driven (slice-by-8); exposed so tests cover it on SSE4.2 machines. */
uint32_t ans_crc32c_portable(uint32_t crc, const void *data, size_t n);

/* vlen-utf8 (numcodecs VLenUTF8 and zarr v3 vlen-utf8): u32le item count, then per item u32le
 * length + bytes. Requires exactly `n_items` items and no trailing bytes. Appends the item bytes
 * to `data` and writes n_items + 1 offsets (relative to data->len at entry: offsets[0] = 0) into
 * `offsets`. Reserves at most srclen bytes, whatever the count says. The bytes are not checked to
 * be UTF-8. On failure data->len is unchanged (offsets may be partly written). */
int ans_vlen_utf8_decode(const void *src, size_t srclen, uint64_t n_items, uint64_t *offsets,
                         ans_buf *data);

/* Byte-swap `n` values of `size` bytes in place (any alignment). For complex types swap the halves
 * separately: complex128 is size 8 with twice the count. Sizes 0 and 1 are no-ops; other sizes are
 * reversed byte by byte. */
void ans_byteswap(void *data, size_t n, size_t size);

/* Blosc / numcodecs shuffle helpers are internal to c-blosc; none is exposed here. */

/* ---- Encoders (used by the collection writer). `dst` must hold ans_*_bound(srclen) bytes. ---- */
/* srclen + 16: with that room a Blosc1 frame always fits (incompressible input is stored raw). */
size_t ans_blosc_bound(size_t srclen);
/* cname: "lz4", "lz4hc", "blosclz", "zstd", "zlib", "snappy" (ANS_EUNSUPPORTED when c-blosc lacks
 * it); clevel 0..9; shuffle: 0 none, 1 byte, 2 bit, -1 auto (numcodecs: bit for typesize 1, else
 * byte); typesize 1..255; blocksize chosen by c-blosc; nthreads <= 1 runs on the calling thread.
 * Inputs over 2 GiB - 16 bytes cannot be one Blosc1 frame: ANS_EINVAL. */
int ans_blosc_encode(const void *src, size_t srclen, void *dst, size_t dstcap, size_t *outlen,
                     const char *cname, int clevel, int shuffle, size_t typesize, int nthreads);
/* ZSTD_compressBound; 0 when srclen is too large for zstd. */
size_t ans_zstd_bound(size_t srclen);
/* One zstd frame with the content size and no checksum; level 0 = libzstd's default (3). */
int ans_zstd_encode(const void *src, size_t srclen, void *dst, size_t dstcap, size_t *outlen,
                    int level);

#endif
