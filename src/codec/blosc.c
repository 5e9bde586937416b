/* blosc.c - Blosc1 frames (formats.md section 4) through c-blosc 1.x.
 *
 * blosc_decompress_ctx takes no source length: it trusts the cbytes field of the header and reads
 * the block-start table and split sizes relative to it. So everything it will read is validated
 * here against the real buffer first, mirroring c-blosc 1.21.3's own decoding rules (blosc.c,
 * blosc_d, blosc_run_decompression_with_context); only a frame that passes is handed over. */
#include "codec/codec.h"

#include "common/error.h"
#include "common/stream.h"

#include <blosc.h>
#include <lz4.h>
#include <inttypes.h>
#include <limits.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define HDR 16
/* c-blosc's decoding constants (blosc.c: MIN_BUFFERSIZE, MAX_SPLITS); they decide when a block was
 * split into typesize streams, which the frame does not record unless the 0x10 flag is set. */
#define MIN_BUFFERSIZE 128
#define MAX_SPLITS 16
#define FLAG_DONT_SPLIT 0x10
#define FLAG_RESERVED 0x08

typedef struct blosc_hdr {
    unsigned version, versionlz, flags, typesize;
    uint32_t nbytes, blocksize, cbytes;
} blosc_hdr;

/* Indexed by the codec id in bits 5-7 of the flags. lz4hc shares lz4's format. */
static const char *const codec_names[] = {"blosclz", "lz4", "snappy", "zlib", "zstd"};
#define N_CODECS (sizeof codec_names / sizeof codec_names[0])

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* How many streams block j of a frame was split into (blosc_d's rule, including its compatibility
 * case for frames without the 0x10 flag), and its size. */
static uint32_t block_splits(const blosc_hdr *h, uint32_t j, uint32_t nblocks, uint32_t *bsize)
{
    uint32_t leftover = h->nbytes % h->blocksize;
    int partial = j == nblocks - 1 && leftover > 0;
    *bsize = partial ? leftover : h->blocksize;
    int dont_split = (h->flags & FLAG_DONT_SPLIT) != 0;
    return !dont_split && !partial && h->typesize <= MAX_SPLITS &&
                   *bsize / h->typesize >= MIN_BUFFERSIZE
               ? h->typesize
               : 1;
}

/* The block-start table must lie inside the frame and every start inside its data. Only the frame's
 * head (header and table) is read. */
static int check_table(const uint8_t *s, const blosc_hdr *h, uint32_t nblocks)
{
    uint64_t table_end = HDR + 4 * (uint64_t)nblocks;
    if (table_end > h->cbytes)
        return ans_err(ANS_ECORRUPT,
                       "blosc: %" PRIu32 " block starts (nbytes %" PRIu32 ", blocksize %" PRIu32
                       ") do not fit in a %" PRIu32 "-byte frame",
                       nblocks, h->nbytes, h->blocksize, h->cbytes);
    for (uint32_t j = 0; j < nblocks; j++) {
        uint64_t pos = rd32(s + HDR + 4 * (size_t)j);
        if (pos < table_end || pos > h->cbytes)
            return ans_err(ANS_ECORRUPT,
                           "blosc: block %" PRIu32 " starts at offset %" PRIu64
                           ", outside the frame's data [%" PRIu64 ", %" PRIu32 ")",
                           j, pos, table_end, h->cbytes);
    }
    return ANS_OK;
}

/* Every split's size field and payload of blocks [j0, j1] must lie inside the frame's bytes
 * [w0, w1) (the whole frame, or the part of it that was read). */
static int check_streams(const uint8_t *s, const blosc_hdr *h, uint32_t nblocks, uint32_t j0,
                         uint32_t j1, uint64_t w0, uint64_t w1)
{
    for (uint32_t j = j0; j <= j1; j++) {
        uint32_t bsize;
        uint32_t nsplits = block_splits(h, j, nblocks, &bsize);
        /* Otherwise c-blosc decodes nsplits * (bsize / nsplits) bytes, leaves the rest of the
         * block unwritten and still reports success. c-blosc writers never produce this. */
        if (bsize % nsplits != 0)
            return ans_err(ANS_ECORRUPT,
                           "blosc: block size %" PRIu32 " is not a multiple of typesize %u", bsize,
                           h->typesize);
        uint64_t pos = rd32(s + HDR + 4 * (size_t)j);
        if (pos < w0)
            return ans_err(ANS_ECORRUPT,
                           "blosc: block %" PRIu32 " starts at offset %" PRIu64
                           ", before the bytes read for it (from %" PRIu64 ")",
                           j, pos, w0);
        for (uint32_t k = 0; k < nsplits; k++) {
            if (pos + 4 > w1)
                return ans_err(ANS_ECORRUPT,
                               "blosc: block %" PRIu32 " stream %" PRIu32
                               ": size field at offset %" PRIu64 " is past the end of the %" PRIu64
                               " bytes of the %" PRIu32 "-byte frame it may use",
                               j, k, pos, w1, h->cbytes);
            uint32_t csize = rd32(s + pos);
            pos += 4;
            if (csize > w1 - pos) /* also rejects "negative" int32 sizes */
                return ans_err(ANS_ECORRUPT,
                               "blosc: block %" PRIu32 " stream %" PRIu32 " claims %" PRIu32
                               " compressed bytes but only %" PRIu64 " remain in the frame",
                               j, k, csize, w1 - pos);
            pos += csize;
        }
    }
    return ANS_OK;
}

static uint32_t nblocks_of(const blosc_hdr *h)
{
    return h->nbytes / h->blocksize + (h->nbytes % h->blocksize != 0);
}

/* The 16-byte header of a frame of srclen bytes (avail >= 16 of them at s), its codec and, for a
 * compressed frame, its block-start table (which must lie in the avail bytes). */
static int validate_head(const uint8_t *s, size_t avail, size_t srclen, blosc_hdr *h)
{
    if (srclen < HDR)
        return ans_err(ANS_ECORRUPT, "blosc: frame is %zu bytes, shorter than the 16-byte header",
                       srclen);
    if (avail < HDR)
        return ans_err(ANS_EINVAL, "blosc: only %zu bytes of the frame's header given", avail);
    h->version = s[0];
    h->versionlz = s[1];
    h->flags = s[2];
    h->typesize = s[3];
    h->nbytes = rd32(s + 4);
    h->blocksize = rd32(s + 8);
    h->cbytes = rd32(s + 12);

    if (h->version != BLOSC_VERSION_FORMAT) {
        if (h->version >= 3 && h->version <= 5)
            return ans_err(ANS_EUNSUPPORTED,
                           "blosc: format version %u is a Blosc2 chunk; only Blosc1 (version 2) "
                           "frames are supported",
                           h->version);
        return ans_err(ANS_ECORRUPT, "blosc: unknown format version %u (expected 2)", h->version);
    }
    if (h->flags & FLAG_RESERVED)
        return ans_err(ANS_ECORRUPT, "blosc: reserved flag bit 0x08 is set (flags 0x%02x)",
                       h->flags);
    if (h->typesize == 0) return ans_err(ANS_ECORRUPT, "blosc: typesize is 0");
    if (h->cbytes != srclen)
        return ans_err(ANS_ECORRUPT,
                       "blosc: frame is %zu bytes but its header claims %" PRIu32 " (cbytes)",
                       srclen, h->cbytes);
    /* c-blosc keeps sizes in int32: larger values would turn negative inside it. */
    if (h->nbytes > BLOSC_MAX_BUFFERSIZE)
        return ans_err(ANS_ECORRUPT,
                       "blosc: header claims %" PRIu32 " uncompressed bytes, over the Blosc1 "
                       "limit of %d",
                       h->nbytes, BLOSC_MAX_BUFFERSIZE);
    if (h->cbytes > INT32_MAX)
        return ans_err(ANS_ECORRUPT, "blosc: frame of %" PRIu32 " bytes is over the 2 GiB limit",
                       h->cbytes);
    if (h->nbytes == 0) {
        /* c-blosc writes an empty input as a bare header (with blocksize 1) and decodes it without
         * looking further. */
        if (h->cbytes != HDR)
            return ans_err(ANS_ECORRUPT,
                           "blosc: empty frame has %" PRIu32 " bytes after its header",
                           h->cbytes - HDR);
        return ANS_OK;
    }
    if (h->blocksize == 0 || h->blocksize > h->nbytes || h->blocksize > BLOSC_MAX_BLOCKSIZE)
        return ans_err(ANS_ECORRUPT,
                       "blosc: block size %" PRIu32 " is outside 1..%" PRIu32 " (nbytes)",
                       h->blocksize, h->nbytes);
    if (h->flags & BLOSC_MEMCPYED) {
        if ((uint64_t)h->nbytes + HDR != h->cbytes)
            return ans_err(ANS_ECORRUPT,
                           "blosc: uncompressed frame is %" PRIu32 " bytes but should be %" PRIu64
                           " (nbytes + 16)",
                           h->cbytes, (uint64_t)h->nbytes + HDR);
        return ANS_OK;
    }
    /* Only compressed frames go through a codec; c-blosc ignores the codec of raw frames too. */
    unsigned codec = h->flags >> 5;
    if (codec >= N_CODECS)
        return ans_err(ANS_ECORRUPT, "blosc: unknown codec id %u (flags 0x%02x)", codec, h->flags);
    if (h->versionlz != 1)
        return ans_err(ANS_ECORRUPT, "blosc: unknown %s format version %u (expected 1)",
                       codec_names[codec], h->versionlz);
    if (blosc_compname_to_compcode(codec_names[codec]) < 0)
        return ans_err(ANS_EUNSUPPORTED,
                       "blosc: frame uses the %s codec, which the linked c-blosc %s was built "
                       "without",
                       codec_names[codec], blosc_get_version_string());
    uint32_t nblocks = nblocks_of(h);
    if (HDR + 4 * (uint64_t)nblocks > avail && HDR + 4 * (uint64_t)nblocks <= h->cbytes)
        return ans_err(ANS_EINVAL, "blosc: the frame's head is %" PRIu64 " bytes, only %zu given",
                       HDR + 4 * (uint64_t)nblocks, avail);
    return check_table(s, h, nblocks);
}

static int blosc_validate(const void *src, size_t srclen, blosc_hdr *h)
{
    ANS_TRY(validate_head(src, srclen, srclen, h));
    if (h->nbytes == 0 || (h->flags & BLOSC_MEMCPYED)) return ANS_OK;
    uint32_t nblocks = nblocks_of(h);
    return check_streams(src, h, nblocks, 0, nblocks - 1, 0, h->cbytes);
}

int ans_blosc_nbytes(const void *src, size_t srclen, size_t *nbytes)
{
    blosc_hdr h = {0};
    ANS_TRY(blosc_validate(src, srclen, &h));
    *nbytes = h.nbytes;
    return ANS_OK;
}

int ans_blosc_decode(ans_codec_ctx *ctx, const void *src, size_t srclen, void *dst, size_t dstcap,
                     size_t *outlen)
{
    (void)ctx;
    blosc_hdr h = {0};
    ANS_TRY(blosc_validate(src, srclen, &h));
    if (h.nbytes > dstcap)
        return ans_err(ANS_ECORRUPT,
                       "blosc: frame decodes to %" PRIu32 " bytes, more than the %zu expected",
                       h.nbytes, dstcap);
    if (h.nbytes == 0) {
        *outlen = 0;
        return ANS_OK;
    }
    if (h.flags & BLOSC_MEMCPYED) {
        /* What c-blosc would do, minus its per-call scratch allocation. */
        memcpy(dst, (const uint8_t *)src + HDR, h.nbytes);
        *outlen = h.nbytes;
        return ANS_OK;
    }
    /* destsize = nbytes: c-blosc then also rejects a blocksize above it (validated anyway). */
    int r = blosc_decompress_ctx(src, dst, h.nbytes, 1);
    if (r != (int)h.nbytes)
        return ans_err(ANS_ECORRUPT,
                       "blosc: %s data is corrupt (c-blosc returned %d, expected %" PRIu32 ")",
                       codec_names[h.flags >> 5], r, h.nbytes);
    *outlen = h.nbytes;
    return ANS_OK;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_UNSHUFFLE 1
/* unshuffle_items for typesize 4 and 2 with AVX2, 32 items a round; returns the items done. The
 * byte unpacks work within 128-bit lanes, so each round's results are put back in order with a
 * lane permute. */
__attribute__((target("avx2"))) static size_t
unshuffle_avx2(size_t ts, size_t n, size_t m, const uint8_t *restrict src, uint8_t *restrict dst)
{
    size_t i = 0;
    if (ts == 4) {
        const uint8_t *s0 = src, *s1 = src + n, *s2 = src + 2 * n, *s3 = src + 3 * n;
        for (; i + 32 <= m; i += 32) {
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(const void *)(s0 + i));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(const void *)(s1 + i));
            __m256i x2 = _mm256_loadu_si256((const __m256i *)(const void *)(s2 + i));
            __m256i x3 = _mm256_loadu_si256((const __m256i *)(const void *)(s3 + i));
            __m256i l01 = _mm256_unpacklo_epi8(x0, x1), h01 = _mm256_unpackhi_epi8(x0, x1);
            __m256i l23 = _mm256_unpacklo_epi8(x2, x3), h23 = _mm256_unpackhi_epi8(x2, x3);
            /* lanes: a = items 0-3 | 16-19, b = 4-7 | 20-23, c = 8-11 | 24-27, d = 12-15 | 28-31 */
            __m256i a = _mm256_unpacklo_epi16(l01, l23), b = _mm256_unpackhi_epi16(l01, l23);
            __m256i c = _mm256_unpacklo_epi16(h01, h23), d = _mm256_unpackhi_epi16(h01, h23);
            uint8_t *o = dst + 4 * i;
            _mm256_storeu_si256((__m256i *)(void *)o, _mm256_permute2x128_si256(a, b, 0x20));
            _mm256_storeu_si256((__m256i *)(void *)(o + 32), _mm256_permute2x128_si256(c, d, 0x20));
            _mm256_storeu_si256((__m256i *)(void *)(o + 64), _mm256_permute2x128_si256(a, b, 0x31));
            _mm256_storeu_si256((__m256i *)(void *)(o + 96), _mm256_permute2x128_si256(c, d, 0x31));
        }
    } else if (ts == 2) {
        const uint8_t *s0 = src, *s1 = src + n;
        for (; i + 32 <= m; i += 32) {
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(const void *)(s0 + i));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(const void *)(s1 + i));
            /* lanes: lo = items 0-7 | 16-23, hi = 8-15 | 24-31 */
            __m256i lo = _mm256_unpacklo_epi8(x0, x1), hi = _mm256_unpackhi_epi8(x0, x1);
            uint8_t *o = dst + 2 * i;
            _mm256_storeu_si256((__m256i *)(void *)o, _mm256_permute2x128_si256(lo, hi, 0x20));
            _mm256_storeu_si256((__m256i *)(void *)(o + 32),
                                _mm256_permute2x128_si256(lo, hi, 0x31));
        }
    }
    return i;
}
#else
#define HAVE_AVX2_UNSHUFFLE 0
#endif

void ans_blosc_unshuffle_isa(int isa, size_t ts, size_t n, size_t m, const uint8_t *restrict src,
                             uint8_t *restrict dst)
{
    size_t i = 0;
    if (isa > ans_stream_isa()) isa = ans_stream_isa();
#if HAVE_AVX2_UNSHUFFLE
    if (isa >= ANS_ISA_AVX2 && (ts == 4 || ts == 2)) i = unshuffle_avx2(ts, n, m, src, dst);
#endif
#if defined(__SSE2__)
    if (isa >= ANS_ISA_SSE2 && ts == 4) {
        const uint8_t *s0 = src, *s1 = src + n, *s2 = src + 2 * n, *s3 = src + 3 * n;
        for (; i + 16 <= m; i += 16) {
            __m128i x0 = _mm_loadu_si128((const __m128i *)(s0 + i));
            __m128i x1 = _mm_loadu_si128((const __m128i *)(s1 + i));
            __m128i x2 = _mm_loadu_si128((const __m128i *)(s2 + i));
            __m128i x3 = _mm_loadu_si128((const __m128i *)(s3 + i));
            __m128i l01 = _mm_unpacklo_epi8(x0, x1), h01 = _mm_unpackhi_epi8(x0, x1);
            __m128i l23 = _mm_unpacklo_epi8(x2, x3), h23 = _mm_unpackhi_epi8(x2, x3);
            uint8_t *o = dst + 4 * i;
            _mm_storeu_si128((__m128i *)o, _mm_unpacklo_epi16(l01, l23));
            _mm_storeu_si128((__m128i *)(o + 16), _mm_unpackhi_epi16(l01, l23));
            _mm_storeu_si128((__m128i *)(o + 32), _mm_unpacklo_epi16(h01, h23));
            _mm_storeu_si128((__m128i *)(o + 48), _mm_unpackhi_epi16(h01, h23));
        }
    } else if (isa >= ANS_ISA_SSE2 && ts == 2) {
        const uint8_t *s0 = src, *s1 = src + n;
        for (; i + 16 <= m; i += 16) {
            __m128i x0 = _mm_loadu_si128((const __m128i *)(s0 + i));
            __m128i x1 = _mm_loadu_si128((const __m128i *)(s1 + i));
            _mm_storeu_si128((__m128i *)(dst + 2 * i), _mm_unpacklo_epi8(x0, x1));
            _mm_storeu_si128((__m128i *)(dst + 2 * i + 16), _mm_unpackhi_epi8(x0, x1));
        }
    }
#endif
    for (; i < m; i++)
        for (size_t t = 0; t < ts; t++) dst[i * ts + t] = src[t * n + i];
}

static void unshuffle_items(size_t ts, size_t n, size_t m, const uint8_t *restrict src,
                            uint8_t *restrict dst)
{
    ans_blosc_unshuffle_isa(ans_stream_isa(), ts, n, m, src, dst);
}

/* The streams of block j of a validated LZ4 frame (byte shuffle or none) that bytes [0, need) of
 * the block come from (need >= the block's size: all of it), decoded into out in the block's
 * stored layout: with byte shuffle, plane t (byte t of every item) at t * n for the n whole items,
 * then the bytes after the last whole item as stored; else the bytes themselves. Each stream (one,
 * or typesize when split) is raw when its compressed size equals its decoded size, else an LZ4
 * block, of which only the prefix needed is decompressed (LZ4_decompress_safe_partial stops
 * there): with byte shuffle every stream holds one byte of each item, so the first m items need
 * the first m bytes of every stream. */
static int lz4_streams(const uint8_t *s, const blosc_hdr *h, uint32_t j, uint32_t nblocks,
                       uint8_t *out, size_t need)
{
    uint32_t bsize;
    uint32_t nsplits = block_splits(h, j, nblocks, &bsize);
    size_t ts = h->typesize;
    int shuffled = (h->flags & BLOSC_DOSHUFFLE) && ts > 1;
    size_t n = bsize / ts; /* whole items of the block */
    if (need > bsize || (shuffled && need > n * ts)) need = bsize; /* the tail is stored as is */
    size_t m = shuffled ? (need + ts - 1) / ts : 0;                /* items needed */
    uint32_t neblock = bsize / nsplits;
    uint64_t pos = rd32(s + HDR + 4 * (size_t)j); /* check_streams: they lie in the frame */
    for (uint32_t k = 0; k < nsplits; k++) {
        uint32_t csize = rd32(s + pos);
        pos += 4;
        /* bytes of this stream that the wanted ones come from */
        size_t base = (size_t)k * neblock, want = neblock;
        if (need < bsize) {
            if (shuffled && nsplits > 1)
                want = m; /* stream k is byte k of every item */
            else if (shuffled) /* one stream holding the ts byte planes one after the other */
                want = (ts - 1) * n + m;
            else
                want = need <= base ? 0 : need - base < neblock ? need - base : neblock;
        }
        if (want > 0 && csize == neblock) {
            memcpy(out + base, s + pos, want);
        } else if (want == neblock) {
            int r = LZ4_decompress_safe((const char *)s + pos, (char *)out + base, (int)csize,
                                        (int)neblock);
            if (r != (int)neblock)
                return ans_err(ANS_ECORRUPT,
                               "blosc: lz4 data of block %" PRIu32 " is corrupt (decoded %d of "
                               "%" PRIu32 " bytes)",
                               j, r, neblock);
        } else if (want > 0) {
            int r = LZ4_decompress_safe_partial((const char *)s + pos, (char *)out + base,
                                                (int)csize, (int)want, (int)neblock);
            if (r != (int)want)
                return ans_err(ANS_ECORRUPT,
                               "blosc: lz4 data of block %" PRIu32 " is corrupt (decoded %d of "
                               "the first %zu bytes)",
                               j, r, want);
        }
        pos += csize;
    }
    return ANS_OK;
}

/* Bytes [from, need) of block j of a validated LZ4 frame (byte shuffle or none) into dst (where
 * byte `from` goes; need >= the block's size: to its end), as c-blosc decodes the block: its
 * streams (lz4_streams), then unshuffled, only the wanted items and straight into dst. A shuffled
 * frame writes whole items: `from` must then be a multiple of the typesize and `need` one too or
 * the block's end (callers decode other ranges from 0 into a block-sized buffer). `tmp` holds a
 * block. */
static int lz4_block(const uint8_t *s, const blosc_hdr *h, uint32_t j, uint32_t nblocks,
                     uint8_t *dst, uint8_t *tmp, size_t from, size_t need)
{
    uint32_t bsize;
    (void)block_splits(h, j, nblocks, &bsize);
    size_t ts = h->typesize;
    int shuffled = (h->flags & BLOSC_DOSHUFFLE) && ts > 1;
    size_t n = bsize / ts;
    if (need > bsize || (shuffled && need > n * ts)) need = bsize;
    size_t m = shuffled ? (need + ts - 1) / ts : 0;
    ANS_TRY(lz4_streams(s, h, j, nblocks, shuffled || from > 0 ? tmp : dst, need));
    if (shuffled) {
        size_t i0 = from / ts, i1 = need == bsize ? n : m;
        if (i1 > i0) unshuffle_items(ts, n, i1 - i0, tmp + i0, dst);
        if (need == bsize && bsize > n * ts) /* the bytes after the last whole item, as stored */
            memcpy(dst + (n * ts - from), tmp + n * ts, bsize - n * ts);
    } else if (from > 0) {
        memcpy(dst, tmp + from, need - from);
    }
    return ANS_OK;
}

/* Can blocks of this (validated, compressed) frame be decoded apart by lz4_block? */
static int blocks_apart(const blosc_hdr *h)
{
    return (h->flags >> 5) == 1 && !(h->flags & BLOSC_DOBITSHUFFLE);
}

int ans_blosc_head_len(const void *src, size_t srclen, size_t *len)
{
    blosc_hdr h = {0};
    *len = 0;
    if (validate_head(src, srclen, srclen, &h) < 0) return ANS_EUNSUPPORTED;
    if (h.nbytes == 0) return ANS_EUNSUPPORTED;
    if (h.flags & BLOSC_MEMCPYED) {
        *len = HDR;
        return ANS_OK;
    }
    if (!blocks_apart(&h)) return ANS_EUNSUPPORTED;
    *len = HDR + 4 * (size_t)nblocks_of(&h);
    return ANS_OK;
}

/* The head of a frame (validate_head) of which bytes [lo, hi) of the nbytes it decodes to are
 * wanted. */
static int part_head(const uint8_t *s, size_t avail, size_t srclen, size_t nbytes, size_t lo,
                     size_t hi, blosc_hdr *h)
{
    ANS_TRY(validate_head(s, avail, srclen, h));
    if (h->nbytes != nbytes)
        return ans_err(ANS_ECORRUPT, "blosc: frame decodes to %" PRIu32 " bytes, expected %zu",
                       h->nbytes, nbytes);
    if (lo >= hi || hi > nbytes)
        return ans_err(ANS_EINVAL, "blosc: bytes [%zu, %zu) are not inside the %zu decoded", lo,
                       hi, nbytes);
    return ANS_OK;
}

/* part_head for a frame of which only the head and bytes [w0, *w1) were read ([0, >= srclen): all
 * of it; *w1 then becomes srclen): the window must lie in the frame, and a raw frame's wanted bytes
 * [lo, hi) in the window. */
static int window_head(const uint8_t *s, size_t srclen, size_t nbytes, size_t lo, size_t hi,
                       size_t w0, size_t *w1, blosc_hdr *h)
{
    /* the head is read in any case: from the frame, or put back in front of the bytes read */
    ANS_TRY(part_head(s, srclen, srclen, nbytes, lo, hi, h));
    if (w0 == 0 && *w1 >= srclen)
        *w1 = srclen;
    else if (w0 > *w1 || *w1 > srclen)
        return ans_err(ANS_EINVAL, "blosc: bytes [%zu, %zu) are not inside the %zu-byte frame", w0,
                       *w1, srclen);
    if ((h->flags & BLOSC_MEMCPYED) && (HDR + lo < w0 || HDR + hi > *w1))
        return ans_err(ANS_ECORRUPT,
                       "blosc: bytes [%zu, %zu) of an uncompressed frame lie outside the bytes "
                       "read [%zu, %zu)",
                       HDR + lo, HDR + hi, w0, *w1);
    return ANS_OK;
}

int ans_blosc_span(const void *head, size_t headlen, size_t srclen, size_t nbytes, size_t lo,
                   size_t hi, size_t *c0, size_t *c1)
{
    blosc_hdr h = {0};
    const uint8_t *s = head;
    ANS_TRY(part_head(s, headlen, srclen, nbytes, lo, hi, &h));
    if (h.flags & BLOSC_MEMCPYED) {
        *c0 = HDR + lo;
        *c1 = HDR + hi;
        return ANS_OK;
    }
    uint32_t bs = h.blocksize, nblocks = nblocks_of(&h);
    uint32_t first = (uint32_t)(lo / bs), last = (uint32_t)((hi - 1) / bs);
    if ((first == 0 && hi == nbytes) || !blocks_apart(&h)) return ANS_EUNSUPPORTED;
    /* A block's bytes run from its start to the next start above it (c-blosc's threads may store
     * blocks out of order), or to the frame's end. */
    uint64_t a = UINT64_MAX, e = 0;
    for (uint32_t j = first; j <= last; j++) {
        uint64_t p = rd32(s + HDR + 4 * (size_t)j), q = h.cbytes;
        for (uint32_t k = 0; k < nblocks; k++) {
            uint64_t o = rd32(s + HDR + 4 * (size_t)k);
            if (o > p && o < q) q = o;
        }
        if (p < a) a = p;
        if (q > e) e = q;
    }
    *c0 = (size_t)a;
    *c1 = (size_t)e;
    return ANS_OK;
}

int ans_blosc_decode_range(const void *src, size_t srclen, size_t nbytes, size_t lo, size_t hi,
                           void *dst, ans_buf *scratch)
{
    return ans_blosc_decode_range_in(src, srclen, nbytes, lo, hi, 0, srclen, dst, scratch);
}

int ans_blosc_decode_range_in(const void *src, size_t srclen, size_t nbytes, size_t lo, size_t hi,
                              size_t w0, size_t w1, void *dst, ans_buf *scratch)
{
    blosc_hdr h = {0};
    const uint8_t *s = src;
    ANS_TRY(window_head(s, srclen, nbytes, lo, hi, w0, &w1, &h));
    int whole = w0 == 0 && w1 == srclen;
    if (h.flags & BLOSC_MEMCPYED) {
        memcpy(dst, s + HDR + lo, hi - lo);
        return ANS_OK;
    }
    uint32_t bs = h.blocksize;
    uint32_t nblocks = nblocks_of(&h);
    uint32_t first = (uint32_t)(lo / bs), last = (uint32_t)((hi - 1) / bs);
    if (!blocks_apart(&h)) {
        if (!whole)
            return ans_err(ANS_EINVAL, "blosc: %s frames are decoded from all of their bytes",
                           codec_names[h.flags >> 5]);
        /* Other codecs and bit shuffle: c-blosc's own partial decoder (it allocates per call). */
        size_t ts = h.typesize;
        if (lo % ts != 0 || hi % ts != 0 || (first == 0 && hi == nbytes)) return ANS_EUNSUPPORTED;
        ANS_TRY(check_streams(s, &h, nblocks, 0, nblocks - 1, 0, h.cbytes));
        /* Sizes fit an int: nbytes <= BLOSC_MAX_BUFFERSIZE (validated). */
        int r = blosc_getitem(src, (int)(lo / ts), (int)((hi - lo) / ts), dst);
        if (r < 0 || (size_t)r != hi - lo)
            return ans_err(ANS_ECORRUPT,
                           "blosc: %s data is corrupt (c-blosc returned %d, expected %zu)",
                           codec_names[h.flags >> 5], r, hi - lo);
        return ANS_OK;
    }
    /* Every block, and all of the last: c-blosc's own decoder is as good. */
    if (whole && first == 0 && hi == nbytes) return ANS_EUNSUPPORTED;
    /* only the blocks decoded are read: only their streams must lie in the frame (in the bytes
     * read) */
    ANS_TRY(check_streams(s, &h, nblocks, first, last, w0, w1));
    ANS_TRY(ans_buf_reserve(scratch, 2 * (size_t)bs));
    uint8_t *tmp = scratch->data, *whole_blk = scratch->data + bs;
    uint8_t *out = dst;
    for (uint32_t j = first; j <= last; j++) {
        size_t b0 = (size_t)j * bs, b1 = b0 + bs < h.nbytes ? b0 + bs : h.nbytes;
        size_t a = b0 > lo ? b0 : lo, e = b1 < hi ? b1 : hi;
        size_t ts = h.typesize, whole_items = (b1 - b0) / ts * ts;
        int shuffled = (h.flags & BLOSC_DOSHUFFLE) && ts > 1;
        if (!shuffled || ((a - b0) % ts == 0 &&
                          (e == b1 || ((e - b0) % ts == 0 && e - b0 <= whole_items)))) {
            /* straight into place (a shuffled block writes whole items only) */
            ANS_TRY(lz4_block(s, &h, j, nblocks, out + (a - lo), tmp, a - b0, e - b0));
        } else { /* items cut at an end: the block from its start up to e, then the part */
            ANS_TRY(lz4_block(s, &h, j, nblocks, whole_blk, tmp, 0, e - b0));
            memcpy(out + (a - lo), whole_blk + (a - b0), e - a);
        }
    }
    return ANS_OK;
}

/* Unshuffled items go through a buffer of this size on their way to the sink: small enough to stay
 * in cache, large enough that a row of a batch mostly arrives in one piece. Pieces of 2 KiB made
 * the loader 14% slower than 32 KiB (more destination cache lines split between a sink's streaming
 * and plain stores); 8 KiB was in between, 128 KiB the same. */
#define BOUNCE 32768

int ans_blosc_scatter(const void *src, size_t srclen, size_t nbytes, size_t w0, size_t w1,
                      const ans_bseg *segs, size_t nsegs, size_t elsize, ans_bsink put, void *ctx,
                      ans_buf *scratch)
{
    const uint8_t *s = src;
    size_t lo = SIZE_MAX, hi = 0;
    if (elsize == 0 || elsize > BOUNCE)
        return ans_err(ANS_EINVAL, "blosc: element size %zu is outside 1..%d", elsize, BOUNCE);
    for (size_t k = 0; k < nsegs; k++) {
        const ans_bseg *g = &segs[k];
        if (g->len == 0) continue;
        if (g->off > nbytes || g->len > nbytes - g->off || g->off % elsize || g->len % elsize)
            return ans_err(ANS_EINVAL,
                           "blosc: segment %zu, bytes [%zu, +%zu), is not whole %zu-byte elements "
                           "inside the %zu decoded",
                           k, g->off, g->len, elsize, nbytes);
        if (g->off < lo) lo = g->off;
        if (g->off + g->len > hi) hi = g->off + g->len;
    }
    if (lo >= hi) return ANS_OK; /* nothing wanted */
    blosc_hdr h = {0};
    ANS_TRY(window_head(s, srclen, nbytes, lo, hi, w0, &w1, &h));
    if (h.flags & BLOSC_MEMCPYED) {
        for (size_t k = 0; k < nsegs; k++)
            if (segs[k].len) ANS_TRY(put(ctx, k, 0, s + HDR + segs[k].off, segs[k].len));
        return ANS_OK;
    }
    size_t ts = h.typesize;
    int shuffled = (h.flags & BLOSC_DOSHUFFLE) && ts > 1;
    /* Blocks must hold whole elements, and a shuffled item must be one element. */
    if (!blocks_apart(&h) || h.blocksize % elsize != 0 || (shuffled && ts != elsize))
        return ANS_EUNSUPPORTED;
    uint32_t bs = h.blocksize, nblocks = nblocks_of(&h);
    uint32_t first = (uint32_t)(lo / bs), last = (uint32_t)((hi - 1) / bs);
    ANS_TRY(check_streams(s, &h, nblocks, first, last, w0, w1));
    ANS_TRY(ans_buf_reserve(scratch, (size_t)bs + BOUNCE));
    uint8_t *tmp = scratch->data, *bounce = scratch->data + bs;
    size_t per = BOUNCE / ts; /* items per trip through the bounce buffer */
    for (uint32_t j = first; j <= last; j++) {
        size_t b0 = (size_t)j * bs, b1 = b0 + bs < nbytes ? b0 + bs : nbytes;
        size_t need = 0;
        for (size_t k = 0; k < nsegs; k++) {
            size_t a = segs[k].off, e = a + segs[k].len, upto = (e < b1 ? e : b1) - b0;
            if (segs[k].len && a < b1 && e > b0 && upto > need) need = upto;
        }
        if (need == 0) continue; /* a gap between the segments */
        ANS_TRY(lz4_streams(s, &h, j, nblocks, tmp, need));
        size_t n = (b1 - b0) / ts; /* items of the block (it holds whole elements) */
        for (size_t k = 0; k < nsegs; k++) {
            size_t off = segs[k].off, end = off + segs[k].len;
            if (off == end || off >= b1 || end <= b0) continue;
            size_t a = off > b0 ? off : b0, e = end < b1 ? end : b1;
            if (!shuffled) {
                ANS_TRY(put(ctx, k, a - off, tmp + (a - b0), e - a));
                continue;
            }
            for (size_t i = (a - b0) / ts, i1 = (e - b0) / ts; i < i1;) {
                size_t c = i1 - i < per ? i1 - i : per;
                unshuffle_items(ts, n, c, tmp + i, bounce);
                ANS_TRY(put(ctx, k, b0 + i * ts - off, bounce, c * ts));
                i += c;
            }
        }
    }
    return ANS_OK;
}

size_t ans_blosc_bound(size_t srclen)
{
    return srclen + BLOSC_MAX_OVERHEAD;
}

int ans_blosc_encode(const void *src, size_t srclen, void *dst, size_t dstcap, size_t *outlen,
                     const char *cname, int clevel, int shuffle, size_t typesize, int nthreads)
{
    /* c-blosc prints to stderr on an unknown compressor, level or shuffle: catch them first. */
    if (!cname || blosc_compname_to_compcode(cname) < 0)
        return ans_err(ANS_EUNSUPPORTED,
                       "blosc: compressor '%s' is not available (this c-blosc has %s)",
                       cname ? cname : "(null)", blosc_list_compressors());
    if (clevel < 0 || clevel > 9)
        return ans_err(ANS_EINVAL, "blosc: clevel %d is outside 0..9", clevel);
    if (typesize < 1 || typesize > BLOSC_MAX_TYPESIZE)
        return ans_err(ANS_EINVAL, "blosc: typesize %zu is outside 1..%d", typesize,
                       BLOSC_MAX_TYPESIZE);
    if (shuffle == -1) shuffle = typesize == 1 ? BLOSC_BITSHUFFLE : BLOSC_SHUFFLE;
    if (shuffle < BLOSC_NOSHUFFLE || shuffle > BLOSC_BITSHUFFLE)
        return ans_err(ANS_EINVAL, "blosc: shuffle %d is not -1, 0, 1 or 2", shuffle);
    if (srclen > BLOSC_MAX_BUFFERSIZE)
        return ans_err(ANS_EINVAL, "blosc: %zu bytes exceed the %d-byte limit of one Blosc1 frame",
                       srclen, BLOSC_MAX_BUFFERSIZE);
    if (dstcap < ans_blosc_bound(srclen))
        return ans_err(ANS_EINVAL, "blosc: output buffer of %zu bytes is under the bound %zu",
                       dstcap, ans_blosc_bound(srclen));
    /* With srclen + 16 bytes of room c-blosc falls back to a raw copy instead of failing. Passing
     * the bound, not dstcap, also keeps the size inside the int32 c-blosc stores it in. */
    int r = blosc_compress_ctx(clevel, shuffle, typesize, srclen, src, dst, ans_blosc_bound(srclen),
                               cname, 0, nthreads < 1 ? 1 : nthreads);
    if (r <= 0) return ans_err(ANS_EGENERIC, "blosc: %s compression failed (%d)", cname, r);
    *outlen = (size_t)r;
    return ANS_OK;
}
