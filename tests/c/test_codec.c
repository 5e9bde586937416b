/* test_codec.c - codec layer: round trips through the real encoders, hand-written byte
 * fixtures, and hostile inputs that must fail with ANS_ECORRUPT (never crash: run it under
 * ASan/UBSan too). */
#include "codec/codec.h"
#include "common/error.h"
#include "common/stream.h"

#include "harness.h"

#include <blosc.h>
#include <lz4.h>
#include <pthread.h>
#include <zlib.h>
#include <zstd.h>

/* ---- helpers --------------------------------------------------------------------------------- */


/* kind 0: compressible (small counters, like sparse indices); 1: random (blosc stores it raw). */
static uint8_t *make_data(size_t n, int kind, uint64_t seed)
{
    uint8_t *p = malloc(n ? n : 1);
    uint64_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++)
        p[i] = kind ? (uint8_t)rng_next(&s) : (uint8_t)((i / 7) % 13);
    return p;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

/* A status a hostile input may produce: anything but a crash, a success claim on garbage is fine
 * (raw payload bytes carry no redundancy). */
static int benign(int rc)
{
    return rc == ANS_OK || rc == ANS_ECORRUPT || rc == ANS_EUNSUPPORTED;
}

/* ---- CRC-32C --------------------------------------------------------------------------------- */

static uint32_t crc_bitwise(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void test_crc32c_known(void)
{
    CHECK_EQ_U64(ans_crc32c(0, "123456789", 9), 0xE3069283u);
    CHECK_EQ_U64(ans_crc32c_portable(0, "123456789", 9), 0xE3069283u);
    CHECK_EQ_U64(ans_crc32c(0, NULL, 0), 0);
    CHECK_EQ_U64(ans_crc32c_portable(0, NULL, 0), 0);
    /* RFC 3720 B.4: 32 bytes of zeros, of 0xFF. */
    uint8_t z[32] = {0}, f[32];
    memset(f, 0xff, sizeof f);
    CHECK_EQ_U64(ans_crc32c(0, z, 32), 0x8A9136AAu);
    CHECK_EQ_U64(ans_crc32c(0, f, 32), 0x62A8AB43u);
    CHECK_EQ_U64(ans_crc32c_portable(0, f, 32), 0x62A8AB43u);
    /* Chaining at every split point. */
    const char *msg = "123456789";
    for (size_t k = 0; k <= 9; k++) {
        CHECK_EQ_U64(ans_crc32c(ans_crc32c(0, msg, k), msg + k, 9 - k), 0xE3069283u);
        CHECK_EQ_U64(ans_crc32c_portable(ans_crc32c_portable(0, msg, k), msg + k, 9 - k),
                     0xE3069283u);
    }
}

static void test_crc32c_random(void)
{
    uint8_t *buf = make_data(70000, 1, 7);
    /* Every alignment and the tails of the 8-byte loops. */
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n < 300; n++) {
            uint32_t want = crc_bitwise(0, buf + off, n);
            CHECK_EQ_U64(ans_crc32c(0, buf + off, n), want);
            CHECK_EQ_U64(ans_crc32c_portable(0, buf + off, n), want);
        }
    uint32_t want = crc_bitwise(0, buf + 3, 69997);
    CHECK_EQ_U64(ans_crc32c(0, buf + 3, 69997), want);
    CHECK_EQ_U64(ans_crc32c_portable(0, buf + 3, 69997), want);
    free(buf);
}

/* formats.md section 3 worked example: the CRC of a shard index [bytes little, crc32c]. */
static void test_crc32c_shard_example(void)
{
    uint8_t idx[32];
    put64(idx, 0);
    put64(idx + 8, 16);
    put64(idx + 16, 16);
    put64(idx + 24, 16);
    uint8_t le[4];
    put32(le, ans_crc32c(0, idx, 32));
    static const uint8_t want1[4] = {0xda, 0x13, 0x6a, 0x9d};
    CHECK(memcmp(le, want1, 4) == 0);

    put64(idx + 16, UINT64_MAX);
    put64(idx + 24, UINT64_MAX);
    put32(le, ans_crc32c(0, idx, 32));
    static const uint8_t want2[4] = {0x2b, 0xe4, 0x65, 0xa2};
    CHECK(memcmp(le, want2, 4) == 0);
}

/* ---- byteswap -------------------------------------------------------------------------------- */

static void test_byteswap(void)
{
    uint8_t b[1 + 3 * 8];
    uint8_t *p = b + 1; /* misaligned on purpose */
    for (int i = 0; i < 24; i++)
        p[i] = (uint8_t)i;
    ans_byteswap(p, 3, 2);
    static const uint8_t w2[6] = {1, 0, 3, 2, 5, 4};
    CHECK(memcmp(p, w2, 6) == 0);
    for (int i = 0; i < 24; i++)
        p[i] = (uint8_t)i;
    ans_byteswap(p, 2, 4);
    static const uint8_t w4[8] = {3, 2, 1, 0, 7, 6, 5, 4};
    CHECK(memcmp(p, w4, 8) == 0);
    for (int i = 0; i < 24; i++)
        p[i] = (uint8_t)i;
    ans_byteswap(p, 3, 8);
    static const uint8_t w8[24] = {7,  6,  5, 4, 3,  2,  1,  0,  15, 14, 13, 12,
                                   11, 10, 9, 8, 23, 22, 21, 20, 19, 18, 17, 16};
    CHECK(memcmp(p, w8, 24) == 0);
    for (int i = 0; i < 24; i++)
        p[i] = (uint8_t)i;
    ans_byteswap(p, 2, 3); /* generic path */
    static const uint8_t w3[6] = {2, 1, 0, 5, 4, 3};
    CHECK(memcmp(p, w3, 6) == 0);
    ans_byteswap(p, 24, 1);
    CHECK(memcmp(p, w3, 6) == 0);
    ans_byteswap(NULL, 0, 8);
}

/* ---- vlen-utf8 ------------------------------------------------------------------------------- */

/* ["a", "", "héllo"] as numcodecs writes it. */
static const uint8_t vlen_fixture[] = {0x03, 0x00, 0x00, 0x00,      /* n  */
                                       0x01, 0x00, 0x00, 0x00, 'a', /* a  */
                                       0x00, 0x00, 0x00, 0x00,      /* "" */
                                       0x06, 0x00, 0x00, 0x00, 'h', 0xc3, 0xa9, 'l', 'l', 'o'};

static void test_vlen_fixed(void)
{
    ans_buf data = {0};
    CHECK_OK(ans_buf_append(&data, "xyz", 3));
    uint64_t off[4] = {9, 9, 9, 9};
    CHECK_OK(ans_vlen_utf8_decode(vlen_fixture, sizeof vlen_fixture, 3, off, &data));
    CHECK_EQ_U64(off[0], 0);
    CHECK_EQ_U64(off[1], 1);
    CHECK_EQ_U64(off[2], 1);
    CHECK_EQ_U64(off[3], 7);
    CHECK_EQ_U64(data.len, 10);
    CHECK(memcmp(data.data, "xyzah\xc3\xa9llo", 10) == 0);

    /* Zero items. */
    static const uint8_t empty[4] = {0};
    uint64_t off0[1] = {5};
    CHECK_OK(ans_vlen_utf8_decode(empty, 4, 0, off0, &data));
    CHECK_EQ_U64(off0[0], 0);
    CHECK_EQ_U64(data.len, 10);
    ans_buf_free(&data);
}

static void test_vlen_corrupt(void)
{
    ans_buf data = {0};
    CHECK_OK(ans_buf_append(&data, "keep", 4));
    uint64_t off[8];
    uint8_t b[64];

    /* Count lies: more or fewer than expected. */
    CHECK_RC(ans_vlen_utf8_decode(vlen_fixture, sizeof vlen_fixture, 2, off, &data), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "vlen-utf8: ");
    CHECK_RC(ans_vlen_utf8_decode(vlen_fixture, sizeof vlen_fixture, 4, off, &data), ANS_ECORRUPT);
    /* A huge count that matches the caller's expectation but the input cannot back: rejected
     * before anything is sized from it (offsets has 8 entries only). */
    put32(b, 0xffffffffu);
    memset(b + 4, 0, 8);
    CHECK_RC(ans_vlen_utf8_decode(b, 12, 0xffffffffu, off, &data), ANS_ECORRUPT);
    /* Every truncation. */
    for (size_t n = 0; n < sizeof vlen_fixture; n++)
        CHECK_RC(ans_vlen_utf8_decode(vlen_fixture, n, 3, off, &data), ANS_ECORRUPT);
    /* Length overflow: an item claiming 4 GiB. */
    memcpy(b, vlen_fixture, sizeof vlen_fixture);
    put32(b + 13, 0xffffffffu);
    CHECK_RC(ans_vlen_utf8_decode(b, sizeof vlen_fixture, 3, off, &data), ANS_ECORRUPT);
    /* An item swallowing the next item's length field (inside the input, but not leaving room
     * for the remaining items' length fields). */
    put32(b, 2);
    put32(b + 4, 8);
    memcpy(b + 8, "abcd", 4);
    put32(b + 12, 0);
    CHECK_RC(ans_vlen_utf8_decode(b, 16, 2, off, &data), ANS_ECORRUPT);
    put32(b + 4, 4);
    CHECK_OK(ans_vlen_utf8_decode(b, 16, 2, off, &data)); /* the honest version */
    CHECK_EQ_U64(off[2], 4);
    data.len = 4;
    /* Trailing bytes. */
    memcpy(b, vlen_fixture, sizeof vlen_fixture);
    b[sizeof vlen_fixture] = 'z';
    CHECK_RC(ans_vlen_utf8_decode(b, sizeof vlen_fixture + 1, 3, off, &data), ANS_ECORRUPT);
    /* Failures leave the buffer as it was. */
    CHECK_EQ_U64(data.len, 4);
    CHECK(memcmp(data.data, "keep", 4) == 0);
    ans_buf_free(&data);
}

/* ---- blosc ----------------------------------------------------------------------------------- */

static size_t blosc_names(const char *names[8])
{
    static char list[128];
    snprintf(list, sizeof list, "%s", blosc_list_compressors());
    size_t n = 0;
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t && n < 8;
         t = strtok_r(NULL, ",", &save))
        names[n++] = t;
    return n;
}

static void test_blosc_roundtrip(void)
{
    ans_codec_ctx *ctx = NULL;
    CHECK_OK(ans_codec_ctx_new(&ctx));
    const char *names[8];
    size_t nnames = blosc_names(names);
    CHECK(nnames >= 5);
    static const size_t sizes[] = {0, 1, 7, 255, 4099, 200000};
    static const size_t typesizes[] = {1, 2, 3, 4, 8};
    uint8_t *in = make_data(200000, 0, 1), *rnd = make_data(200000, 1, 2);
    uint8_t *enc = malloc(ans_blosc_bound(200000)), *dec = malloc(200000);
    int split_frames = 0, raw_frames = 0;
    for (size_t c = 0; c < nnames; c++)
        for (int shuffle = 0; shuffle <= 2; shuffle++)
            for (size_t t = 0; t < sizeof typesizes / sizeof *typesizes; t++)
                for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
                    for (int kind = 0; kind < 2; kind++) {
                        const uint8_t *src = kind ? rnd : in;
                        size_t n = sizes[s], elen = 0, dlen = 0, nb = 0;
                        CHECK_OK(ans_blosc_encode(src, n, enc, ans_blosc_bound(n), &elen, names[c],
                                                  5, shuffle, typesizes[t], 1));
                        if (enc[2] & BLOSC_MEMCPYED)
                            raw_frames++;
                        else if (!(enc[2] & 0x10))
                            split_frames++;
                        CHECK_OK(ans_blosc_nbytes(enc, elen, &nb));
                        CHECK_EQ_U64(nb, n);
                        CHECK_OK(ans_blosc_decode(ctx, enc, elen, dec, n, &dlen));
                        CHECK_EQ_U64(dlen, n);
                        CHECK(memcmp(dec, src, n) == 0);
                        if (n > 0) {
                            CHECK_RC(ans_blosc_decode(ctx, enc, elen, dec, n - 1, &dlen),
                                     ANS_ECORRUPT);
                            CHECK_RC(ans_blosc_decode(ctx, enc, elen - 1, dec, n, &dlen),
                                     ANS_ECORRUPT);
                        }
                    }
    /* Both of the less common layouts were exercised. */
    CHECK(split_frames > 0);
    CHECK(raw_frames > 0);
    /* clevel 0 (raw), 9, auto shuffle, several internal threads. */
    for (int clevel = 0; clevel <= 9; clevel += 9) {
        size_t elen = 0, dlen = 0;
        CHECK_OK(ans_blosc_encode(in, 200000, enc, ans_blosc_bound(200000), &elen, "zstd", clevel,
                                  -1, 4, 2));
        CHECK_OK(ans_blosc_decode(NULL, enc, elen, dec, 200000, &dlen));
        CHECK(dlen == 200000 && memcmp(dec, in, 200000) == 0);
    }
    free(in);
    free(rnd);
    free(enc);
    free(dec);
    ans_codec_ctx_free(ctx);
}

/* Part of a frame: only the blocks holding [lo, hi) are decoded (LZ4 with byte or no shuffle by
 * annstream, each block only up to hi; other codecs and bit shuffle by blosc_getitem); a part
 * needing every block, all of the last, is left to the whole-frame decoder (ANS_EUNSUPPORTED).
 * Every part must equal the same bytes of the input. */
static void test_blosc_range(void)
{
    const size_t n = 1 << 20;
    uint8_t *in = make_data(n, 0, 3), *rnd = make_data(n, 1, 4);
    uint8_t *enc = malloc(ans_blosc_bound(n)), *dec = malloc(n + 1);
    ans_buf scratch = {0};
    static const char *const codecs[] = {"lz4", "lz4hc", "blosclz", "zstd"};
    static const size_t typesizes[] = {1, 2, 4, 8, 3};
    size_t partial = 0, whole = 0;
    uint64_t rs = 99;
    for (size_t c = 0; c < sizeof codecs / sizeof *codecs; c++)
        for (int shuffle = 0; shuffle <= 2; shuffle++)
            for (size_t t = 0; t < sizeof typesizes / sizeof *typesizes; t++) {
                size_t ts = typesizes[t], elen = 0;
                /* clevel 3: lz4 blocks of 256 KiB, so a 1 MiB input has several */
                CHECK_OK(ans_blosc_encode(in, n, enc, ans_blosc_bound(n), &elen, codecs[c], 3,
                                          shuffle, ts, 1));
                uint32_t bs = (uint32_t)enc[8] | (uint32_t)enc[9] << 8 |
                              (uint32_t)enc[10] << 16 | (uint32_t)enc[11] << 24;
                for (int k = 0; k < 12; k++) {
                    size_t lo, hi;
                    if (k == 0) {
                        lo = 0, hi = ts;
                    } else if (k == 1) {
                        hi = n - n % ts, lo = hi - ts; /* in the last (maybe partial) block */
                    } else if (k == 2 && bs < n) {
                        lo = bs - ts, hi = bs + ts; /* across a block boundary */
                    } else {
                        lo = (size_t)(rng_next(&rs) % (n / ts)) * ts;
                        hi = lo + ts + (size_t)(rng_next(&rs) % ((n - lo) / ts)) * ts;
                    }
                    memset(dec, 0xAB, n + 1);
                    int rc = ans_blosc_decode_range(enc, elen, n, lo, hi, dec, &scratch);
                    if (rc == ANS_EUNSUPPORTED) {
                        CHECK(lo / bs == 0 && hi == n);
                        whole++;
                        continue;
                    }
                    CHECK_OK(rc);
                    CHECK(memcmp(dec, in + lo, hi - lo) == 0);
                    CHECK(dec[hi - lo] == 0xAB); /* nothing written past hi - lo */
                    partial++;
                }
            }
    CHECK(partial > 200);
    CHECK(whole > 0);
    /* LZ4, byte or no shuffle: any byte range, also ending inside a block (only the prefix of each
     * stream up to it is decoded) and in a last, partial block (one unsplit stream), and ranges
     * that do not start or end on an item. */
    static const size_t sizes[] = {1 << 20, (1 << 20) - 1000};
    for (size_t z = 0; z < 2; z++)
        for (int shuffle = 0; shuffle <= 1; shuffle++)
            for (size_t t = 0; t < sizeof typesizes / sizeof *typesizes; t++) {
                size_t m = sizes[z] - sizes[z] % typesizes[t], elen = 0;
                CHECK_OK(ans_blosc_encode(in, m, enc, ans_blosc_bound(m), &elen, "lz4", 3,
                                          shuffle, typesizes[t], 1));
                uint32_t bs = (uint32_t)enc[8] | (uint32_t)enc[9] << 8 |
                              (uint32_t)enc[10] << 16 | (uint32_t)enc[11] << 24;
                for (int k = 0; k < 40; k++) {
                    size_t lo, hi;
                    if (k == 0) {
                        lo = 0, hi = 1; /* the first byte of block 0 */
                    } else if (k == 1) {
                        lo = bs - 5, hi = bs + 7; /* a few bytes on both sides of a boundary */
                    } else if (k == 2) {
                        lo = m - bs / 2, hi = m - 1; /* inside the last block, short of its end */
                    } else if (k == 3) {
                        lo = 1, hi = m; /* every block, all of the last */
                    } else {
                        lo = (size_t)(rng_next(&rs) % (m - 1));
                        hi = lo + 1 + (size_t)(rng_next(&rs) % (k < 20 ? 5000 : m - lo - 1));
                    }
                    memset(dec, 0xAB, n + 1);
                    int rc = ans_blosc_decode_range(enc, elen, m, lo, hi, dec, &scratch);
                    if (rc == ANS_EUNSUPPORTED) {
                        CHECK(lo < bs && hi == m);
                        continue;
                    }
                    CHECK_OK(rc);
                    CHECK(memcmp(dec, in + lo, hi - lo) == 0);
                    CHECK(dec[hi - lo] == 0xAB);
                }
            }
    size_t elen = 0;
    CHECK_OK(ans_blosc_encode(in, n, enc, ans_blosc_bound(n), &elen, "lz4", 3, 1, 4, 1));
    CHECK_RC(ans_blosc_decode_range(enc, elen, n - 4, 0, 4, dec, &scratch), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "blosc: ");
    CHECK_RC(ans_blosc_decode_range(enc, elen, n, 8, 8, dec, &scratch), ANS_EINVAL);
    CHECK_RC(ans_blosc_decode_range(enc, elen, n, 8, n + 4, dec, &scratch), ANS_EINVAL);
    CHECK_RC(ans_blosc_decode_range(enc, elen - 1, n, 0, 4, dec, &scratch), ANS_ECORRUPT);
    /* block 1's first LZ4 stream is garbage (sizes intact): only a part needing block 1 fails */
    uint8_t *bad = malloc(elen);
    memcpy(bad, enc, elen);
    uint32_t b1 = (uint32_t)bad[20] | (uint32_t)bad[21] << 8 | (uint32_t)bad[22] << 16 |
                  (uint32_t)bad[23] << 24; /* start of block 1 */
    uint32_t cs = (uint32_t)bad[b1] | (uint32_t)bad[b1 + 1] << 8 | (uint32_t)bad[b1 + 2] << 16 |
                  (uint32_t)bad[b1 + 3] << 24;
    CHECK(cs > 0 && b1 + 4 + (size_t)cs <= elen);
    memset(bad + b1 + 4, 0xFF, cs);
    CHECK_RC(ans_blosc_decode_range(bad, elen, n, 300000, 300004, dec, &scratch), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "lz4 data of block 1");
    CHECK_OK(ans_blosc_decode_range(bad, elen, n, 0, 4, dec, &scratch)); /* block 0 is intact */
    CHECK(memcmp(dec, in, 4) == 0);
    free(bad);
    /* A raw (memcpyed) frame: any part is a plain copy. */
    CHECK_OK(ans_blosc_encode(rnd, n, enc, ans_blosc_bound(n), &elen, "lz4", 5, 0, 1, 1));
    CHECK(enc[2] & BLOSC_MEMCPYED);
    CHECK_OK(ans_blosc_decode_range(enc, elen, n, 3, 1001, dec, &scratch));
    CHECK(memcmp(dec, rnd + 3, 998) == 0);
    ans_buf_free(&scratch);
    free(in);
    free(rnd);
    free(enc);
    free(dec);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Decode [lo, hi) of frame `enc` (elen bytes, decoding to m) from a copy in which only its head and
 * the span ans_blosc_span gives hold the frame's bytes (the rest is junk); 1 when it matched `want`,
 * 0 when the part needed every block (no span), -1 on a failure. */
static int span_roundtrip(const uint8_t *enc, size_t elen, size_t m, size_t lo, size_t hi,
                          const uint8_t *want, uint8_t *junk, uint8_t *dec, ans_buf *scratch)
{
    size_t hl = 0, c0 = 0, c1 = 0;
    if (ans_blosc_head_len(enc, elen, &hl) != ANS_OK) return -1;
    int rc = ans_blosc_span(enc, hl, elen, m, lo, hi, &c0, &c1);
    if (rc == ANS_EUNSUPPORTED) return 0;
    if (rc != ANS_OK || c0 < hl || c1 > elen || c0 >= c1) return -1;
    memset(junk, 0xEE, elen);
    memcpy(junk, enc, hl);
    memcpy(junk + c0, enc + c0, c1 - c0);
    if (ans_blosc_decode_range_in(junk, elen, m, lo, hi, c0, c1, dec, scratch) != ANS_OK) return -1;
    return memcmp(dec, want + lo, hi - lo) == 0 ? 1 : -1;
}

/* Reading a frame in part: the head alone gives the bytes a part needs (ans_blosc_span), and the
 * part decodes from them whatever the other bytes hold; also when the blocks are stored out of
 * order (c-blosc's threads may write them so) and for uncompressed frames. */
static void test_blosc_span(void)
{
    const size_t n = 1 << 20;
    uint8_t *in = make_data(n, 0, 3), *rnd = make_data(n, 1, 4);
    uint8_t *enc = malloc(ans_blosc_bound(n)), *dec = malloc(n), *junk = malloc(ans_blosc_bound(n));
    uint8_t *perm = malloc(ans_blosc_bound(n));
    ans_buf scratch = {0};
    uint64_t rs = 7;
    size_t parts = 0, shorter = 0;
    static const size_t typesizes[] = {1, 2, 4, 3};
    for (int shuffle = 0; shuffle <= 1; shuffle++)
        for (size_t t = 0; t < sizeof typesizes / sizeof *typesizes; t++)
            for (int reorder = 0; reorder <= 1; reorder++) {
                size_t m = n - 1000 - (n - 1000) % typesizes[t], elen = 0;
                CHECK_OK(ans_blosc_encode(in, m, enc, ans_blosc_bound(m), &elen, "lz4", 3, shuffle,
                                          typesizes[t], 1));
                uint32_t bs = get32(enc + 8), nbl = (uint32_t)((m + bs - 1) / bs);
                CHECK(nbl >= 4);
                const uint8_t *fr = enc;
                if (reorder) { /* the same blocks stored last to first */
                    size_t hl = 16 + 4 * (size_t)nbl, pos = hl;
                    memcpy(perm, enc, hl);
                    for (uint32_t j = nbl; j-- > 0;) {
                        size_t a = get32(enc + 16 + 4 * j), e = j + 1 < nbl ? get32(enc + 20 + 4 * j)
                                                                            : elen;
                        memcpy(perm + pos, enc + a, e - a);
                        for (int b = 0; b < 4; b++) perm[16 + 4 * j + b] = (uint8_t)(pos >> (8 * b));
                        pos += e - a;
                    }
                    CHECK(pos == elen);
                    size_t dl = 0; /* still a valid frame */
                    CHECK_OK(ans_blosc_decode(NULL, perm, elen, dec, m, &dl));
                    CHECK(dl == m && memcmp(dec, in, m) == 0);
                    fr = perm;
                }
                for (int k = 0; k < 40; k++) {
                    size_t lo, hi;
                    if (k == 0) {
                        lo = 0, hi = 1;
                    } else if (k == 1) {
                        lo = bs - 5, hi = bs + 7;
                    } else if (k == 2) {
                        lo = m - 10, hi = m; /* the last, partial block */
                    } else if (k == 3) {
                        lo = 0, hi = m; /* every block: no span */
                    } else {
                        lo = (size_t)(rng_next(&rs) % (m - 1));
                        hi = lo + 1 + (size_t)(rng_next(&rs) % (k < 25 ? 5000 : m - lo - 1));
                        if (hi > m) hi = m;
                    }
                    int r = span_roundtrip(fr, elen, m, lo, hi, in, junk, dec, &scratch);
                    CHECK(r >= 0);
                    if (r == 0) {
                        CHECK(lo < bs && hi == m);
                        continue;
                    }
                    parts++;
                    size_t hl = 0, c0 = 0, c1 = 0;
                    CHECK_OK(ans_blosc_head_len(fr, elen, &hl));
                    CHECK_OK(ans_blosc_span(fr, hl, elen, m, lo, hi, &c0, &c1));
                    if (lo / bs == (hi - 1) / bs) shorter += c1 - c0 <= elen / 2;
                }
            }
    CHECK(parts > 250);
    CHECK(shorter > 50); /* one block of four or more: at most half of the frame */
    /* a window that misses part of a needed block is refused, not read past */
    size_t elen = 0, hl = 0, c0 = 0, c1 = 0;
    CHECK_OK(ans_blosc_encode(in, n, enc, ans_blosc_bound(n), &elen, "lz4", 3, 1, 4, 1));
    CHECK_OK(ans_blosc_head_len(enc, elen, &hl));
    CHECK(hl == 16 + 4 * 4);
    CHECK_OK(ans_blosc_span(enc, hl, elen, n, 300000, 300004, &c0, &c1));
    CHECK(c0 == get32(enc + 20) && c1 == get32(enc + 24));
    CHECK_RC(ans_blosc_decode_range_in(enc, elen, n, 300000, 300004, c0 + 1, c1, dec, &scratch),
             ANS_ECORRUPT);
    CHECK_RC(ans_blosc_decode_range_in(enc, elen, n, 300000, 300004, c0, c1 - 1, dec, &scratch),
             ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "block 1");
    CHECK_RC(ans_blosc_span(enc, hl - 1, elen, n, 300000, 300004, &c0, &c1), ANS_EINVAL);
    CHECK_RC(ans_blosc_span(enc, hl, elen, n - 4, 0, 4, &c0, &c1), ANS_ECORRUPT);
    /* other codecs and bit shuffle have no head to read apart, and no part of them is decoded */
    CHECK_OK(ans_blosc_encode(in, n, enc, ans_blosc_bound(n), &elen, "zstd", 3, 1, 4, 1));
    CHECK_RC(ans_blosc_head_len(enc, elen, &hl), ANS_EUNSUPPORTED);
    CHECK_RC(ans_blosc_span(enc, elen, elen, n, 0, 4, &c0, &c1), ANS_EUNSUPPORTED);
    CHECK_RC(ans_blosc_decode_range_in(enc, elen, n, 0, 4, 0, elen - 1, dec, &scratch), ANS_EINVAL);
    CHECK_OK(ans_blosc_encode(in, n, enc, ans_blosc_bound(n), &elen, "lz4", 3, 2, 4, 1));
    CHECK_RC(ans_blosc_head_len(enc, elen, &hl), ANS_EUNSUPPORTED);
    /* an uncompressed frame: the head is its header, a part is the bytes themselves */
    CHECK_OK(ans_blosc_encode(rnd, n, enc, ans_blosc_bound(n), &elen, "lz4", 5, 0, 1, 1));
    CHECK(enc[2] & BLOSC_MEMCPYED);
    CHECK_OK(ans_blosc_head_len(enc, elen, &hl));
    CHECK(hl == 16);
    CHECK_OK(ans_blosc_span(enc, hl, elen, n, 3, 1001, &c0, &c1));
    CHECK(c0 == 19 && c1 == 1017);
    CHECK(span_roundtrip(enc, elen, n, 3, 1001, rnd, junk, dec, &scratch) == 1);
    CHECK_RC(ans_blosc_decode_range_in(enc, elen, n, 3, 1001, 20, 1017, dec, &scratch),
             ANS_ECORRUPT);
    ans_buf_free(&scratch);
    free(in);
    free(rnd);
    free(enc);
    free(dec);
    free(junk);
    free(perm);
}

/* A sink that keeps what ans_blosc_scatter hands it in one buffer per segment, and counts calls
 * that break its contract (not whole elements, outside the segment). */
typedef struct scat {
    const ans_bseg *segs;
    uint8_t **out;
    size_t elsize, calls, broken;
    long fail_at; /* the call that returns an error (-1: none) */
} scat;

static int scat_put(void *ctx, size_t k, size_t at, const uint8_t *bytes, size_t len)
{
    scat *sc = ctx;
    if (len == 0 || at % sc->elsize || len % sc->elsize || at + len > sc->segs[k].len)
        sc->broken++;
    else
        memcpy(sc->out[k] + at, bytes, len);
    if ((long)sc->calls++ == sc->fail_at)
        return ans_err(ANS_EIO, "sink refused call %zu", sc->calls);
    return ANS_OK;
}

/* Scattering parts of a frame: every segment (any order, overlapping, empty, across blocks, in the
 * last partial block) gets exactly its decoded bytes, from the whole frame and from its head plus
 * the span alone; what cannot be scattered says ANS_EUNSUPPORTED; bad segments, a failing sink and
 * a corrupt block are errors. */
static void test_blosc_scatter(void)
{
    const size_t n = (1 << 20) - 1000;
    uint8_t *in = make_data(n, 0, 5), *rnd = make_data(n, 1, 6);
    uint8_t *enc = malloc(ans_blosc_bound(n)), *junk = malloc(ans_blosc_bound(n));
    enum { NSEG = 12 };
    uint8_t *out[NSEG];
    for (int k = 0; k < NSEG; k++)
        out[k] = malloc(n);
    ans_bseg segs[NSEG];
    ans_buf scratch = {0};
    uint64_t rs = 11;
    size_t done = 0, unsupported = 0, windowed = 0, multi = 0;
    static const char *const codecs[] = {"lz4", "zstd"};
    static const size_t typesizes[] = {1, 2, 4, 8, 3};
    for (size_t c = 0; c < 2; c++)
        for (int shuffle = 0; shuffle <= 2; shuffle++)
            for (size_t t = 0; t < sizeof typesizes / sizeof *typesizes; t++) {
                size_t ts = typesizes[t], m = n - n % 24, elen = 0; /* whole items of 1..8 bytes */
                CHECK_OK(ans_blosc_encode(in, m, enc, ans_blosc_bound(m), &elen, codecs[c], 3,
                                          shuffle, ts, 1));
                uint32_t bs = get32(enc + 8);
                multi += m / bs >= 3;
                for (int trial = 0; trial < 24; trial++) {
                    size_t el = trial % 3 == 0 ? 1 : ts; /* elements of 1 byte, or of an item */
                    size_t nseg = 1 + (size_t)(rng_next(&rs) % NSEG), lo = m, hi = 0;
                    /* odd trials: short segments near one place, so a window can hold them */
                    size_t room = m > 3 * (size_t)bs / 2 ? m - 3 * (size_t)bs / 2 : el;
                    size_t base = el * (size_t)(rng_next(&rs) % (room / el));
                    for (size_t k = 0; k < nseg; k++) {
                        size_t len, off;
                        if (trial % 2) {
                            off = base + el * (size_t)(rng_next(&rs) % (bs / el));
                            len = el * (size_t)(rng_next(&rs) % (bs / 2 / el));
                        } else if (trial == 0 && k == 0) {
                            off = 0, len = m; /* all of it */
                        } else if (k == 1) {
                            off = bs - 2 * el, len = 4 * el; /* across a boundary */
                        } else if (k == 2) {
                            off = m - 3 * el, len = 3 * el; /* in the last block */
                        } else if (k == 3) {
                            off = el * (size_t)(rng_next(&rs) % (m / el)), len = 0;
                        } else {
                            off = el * (size_t)(rng_next(&rs) % (m / el));
                            size_t most = trial < 12 ? 3000 : m - off;
                            len = el * (1 + (size_t)(rng_next(&rs) % (most / el + 1)));
                            if (len > m - off) len = m - off;
                        }
                        segs[k].off = off;
                        segs[k].len = len;
                        memset(out[k], 0xAB, len);
                        if (len && off < lo) lo = off;
                        if (len && off + len > hi) hi = off + len;
                    }
                    int shuffled = shuffle == 1 && ts > 1;
                    int can = c == 0 && shuffle != 2 && bs % el == 0 && (!shuffled || el == ts);
                    scat sc = {segs, out, el, 0, 0, -1};
                    int rc = ans_blosc_scatter(enc, elen, m, 0, elen, segs, nseg, el, scat_put, &sc,
                                               &scratch);
                    if (!can) {
                        CHECK_RC(rc, ANS_EUNSUPPORTED);
                        CHECK(sc.calls == 0);
                        unsupported++;
                        continue;
                    }
                    CHECK_OK(rc);
                    CHECK(sc.broken == 0);
                    for (size_t k = 0; k < nseg; k++)
                        CHECK(memcmp(out[k], in + segs[k].off, segs[k].len) == 0);
                    done++;
                    /* again from the head and the span of [lo, hi) alone, the rest junk */
                    size_t hl = 0, c0 = 0, c1 = 0;
                    CHECK_OK(ans_blosc_head_len(enc, elen, &hl));
                    if (ans_blosc_span(enc, hl, elen, m, lo, hi, &c0, &c1) != ANS_OK) continue;
                    memset(junk, 0xEE, elen);
                    memcpy(junk, enc, hl);
                    memcpy(junk + c0, enc + c0, c1 - c0);
                    for (size_t k = 0; k < nseg; k++)
                        memset(out[k], 0xAB, segs[k].len);
                    CHECK_OK(ans_blosc_scatter(junk, elen, m, c0, c1, segs, nseg, el, scat_put, &sc,
                                               &scratch));
                    CHECK(sc.broken == 0);
                    for (size_t k = 0; k < nseg; k++)
                        CHECK(memcmp(out[k], in + segs[k].off, segs[k].len) == 0);
                    windowed++;
                }
            }
    CHECK(done > 150);
    CHECK(unsupported > 100);
    CHECK(windowed > 50);
    CHECK(multi >= 10); /* frames of three blocks or more */

    size_t elen = 0;
    CHECK_OK(ans_blosc_encode(in, n, enc, ans_blosc_bound(n), &elen, "lz4", 3, 1, 4, 1));
    scat sc = {segs, out, 4, 0, 0, -1};
    /* nothing wanted: no call, not even a look at the frame */
    segs[0] = (ans_bseg){8, 0};
    CHECK_OK(ans_blosc_scatter(enc, 3, n, 0, 3, segs, 1, 4, scat_put, &sc, &scratch));
    CHECK(sc.calls == 0);
    /* segments outside the decoded bytes, or not on elements */
    segs[0] = (ans_bseg){n - 4, 8};
    CHECK_RC(ans_blosc_scatter(enc, elen, n, 0, elen, segs, 1, 4, scat_put, &sc, &scratch),
             ANS_EINVAL);
    CHECK_STR_CONTAINS(ans_error_last(), "segment 0");
    segs[0] = (ans_bseg){SIZE_MAX - 3, 8};
    CHECK_RC(ans_blosc_scatter(enc, elen, n, 0, elen, segs, 1, 4, scat_put, &sc, &scratch),
             ANS_EINVAL);
    segs[0] = (ans_bseg){2, 8};
    CHECK_RC(ans_blosc_scatter(enc, elen, n, 0, elen, segs, 1, 4, scat_put, &sc, &scratch),
             ANS_EINVAL);
    CHECK_RC(ans_blosc_scatter(enc, elen, n, 0, elen, segs, 1, 0, scat_put, &sc, &scratch),
             ANS_EINVAL);
    /* a frame that decodes to another size; a window outside the frame */
    segs[0] = (ans_bseg){0, 8};
    CHECK_RC(ans_blosc_scatter(enc, elen, n - 4, 0, elen, segs, 1, 4, scat_put, &sc, &scratch),
             ANS_ECORRUPT);
    CHECK_RC(ans_blosc_scatter(enc, elen, n, 40, 20, segs, 1, 4, scat_put, &sc, &scratch),
             ANS_EINVAL);
    CHECK_RC(ans_blosc_scatter(enc, elen, n, 40, elen + 1, segs, 1, 4, scat_put, &sc, &scratch),
             ANS_EINVAL);
    /* the sink's error stops the decoding and comes back as it is */
    segs[0] = (ans_bseg){0, 400000};
    segs[1] = (ans_bseg){500000, 400000};
    sc.fail_at = 1;
    CHECK_RC(ans_blosc_scatter(enc, elen, n, 0, elen, segs, 2, 4, scat_put, &sc, &scratch),
             ANS_EIO);
    CHECK_STR_CONTAINS(ans_error_last(), "sink refused call 2");
    CHECK(sc.calls == 2);
    /* block 1's first stream is garbage: a segment in block 0 still decodes, one in block 1 not */
    uint8_t *bad = malloc(elen);
    memcpy(bad, enc, elen);
    uint32_t b1 = get32(bad + 20), cs = get32(bad + b1);
    CHECK(cs > 0 && b1 + 4 + (size_t)cs <= elen);
    memset(bad + b1 + 4, 0xFF, cs);
    sc.fail_at = -1;
    segs[0] = (ans_bseg){4, 4000};
    CHECK_OK(ans_blosc_scatter(bad, elen, n, 0, elen, segs, 1, 4, scat_put, &sc, &scratch));
    CHECK(memcmp(out[0], in + 4, 4000) == 0);
    segs[1] = (ans_bseg){300000, 8};
    CHECK_RC(ans_blosc_scatter(bad, elen, n, 0, elen, segs, 2, 4, scat_put, &sc, &scratch),
             ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "lz4 data of block 1");
    free(bad);
    /* an uncompressed frame: the segments are its bytes, within the window read */
    CHECK_OK(ans_blosc_encode(rnd, n, enc, ans_blosc_bound(n), &elen, "lz4", 5, 0, 1, 1));
    CHECK(enc[2] & BLOSC_MEMCPYED);
    segs[0] = (ans_bseg){3, 998};
    segs[1] = (ans_bseg){n - 10, 10};
    sc.elsize = 1;
    CHECK_OK(ans_blosc_scatter(enc, elen, n, 0, elen, segs, 2, 1, scat_put, &sc, &scratch));
    CHECK(memcmp(out[0], rnd + 3, 998) == 0 && memcmp(out[1], rnd + n - 10, 10) == 0);
    CHECK_RC(ans_blosc_scatter(enc, elen, n, 20, elen, segs, 2, 1, scat_put, &sc, &scratch),
             ANS_ECORRUPT);
    ans_buf_free(&scratch);
    for (int k = 0; k < NSEG; k++)
        free(out[k]);
    free(in);
    free(rnd);
    free(enc);
    free(junk);
}

/* Every instruction set's unshuffle gives the plain loop's bytes: typesizes with and without a
 * vector path, item counts around the vector widths, a prefix of the block (m < n). */
static void test_blosc_unshuffle(void)
{
    enum { MAXN = 300 };
    static const size_t typesizes[] = {1, 2, 3, 4, 8};
    uint8_t src[8 * MAXN], want[8 * MAXN + 1], got[8 * MAXN + 1];
    uint64_t rs = 3;
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (uint8_t)rng_next(&rs);
    size_t compared = 0;
    for (size_t t = 0; t < sizeof typesizes / sizeof *typesizes; t++)
        for (size_t n = 1; n <= MAXN; n += n < 70 ? 1 : 37)
            for (size_t m = n > 40 ? n - 40 : 0; m <= n; m += 3) {
                size_t ts = typesizes[t];
                memset(want, 0xCD, sizeof want);
                ans_blosc_unshuffle_isa(ANS_ISA_PLAIN, ts, n, m, src, want);
                for (size_t i = 0; i < m; i++)
                    for (size_t b = 0; b < ts; b++)
                        CHECK(want[i * ts + b] == src[b * n + i]);
                CHECK(want[m * ts] == 0xCD);
                for (int isa = ANS_ISA_SSE2; isa <= ANS_ISA_AVX512; isa++) {
                    memset(got, 0xCD, sizeof got);
                    ans_blosc_unshuffle_isa(isa, ts, n, m, src, got);
                    CHECK(memcmp(got, want, m * ts + 1) == 0);
                    compared++;
                }
            }
    CHECK(compared > 1000);
}

static void test_blosc_encode_args(void)
{
    uint8_t src[64] = {0}, dst[128];
    size_t len = 0;
    CHECK_RC(ans_blosc_encode(src, 64, dst, 128, &len, "nope", 5, 1, 4, 1), ANS_EUNSUPPORTED);
    CHECK_STR_CONTAINS(ans_error_last(), "blosc: ");
    CHECK_RC(ans_blosc_encode(src, 64, dst, 128, &len, NULL, 5, 1, 4, 1), ANS_EUNSUPPORTED);
    CHECK_RC(ans_blosc_encode(src, 64, dst, 128, &len, "lz4", 10, 1, 4, 1), ANS_EINVAL);
    CHECK_RC(ans_blosc_encode(src, 64, dst, 128, &len, "lz4", 5, 3, 4, 1), ANS_EINVAL);
    CHECK_RC(ans_blosc_encode(src, 64, dst, 128, &len, "lz4", 5, 1, 0, 1), ANS_EINVAL);
    CHECK_RC(ans_blosc_encode(src, 64, dst, 128, &len, "lz4", 5, 1, 256, 1), ANS_EINVAL);
    CHECK_RC(ans_blosc_encode(src, 64, dst, 79, &len, "lz4", 5, 1, 4, 1), ANS_EINVAL);
    CHECK_OK(ans_blosc_encode(src, 64, dst, 80, &len, "lz4", 5, 1, 4, 1));
}

/* Hand-written frames. F_RAW: memcpyed. F_SHUF: one block, one stored stream, byte shuffle with
 * typesize 2. F_SPLIT: one 256-byte block split into 2 stored streams (typesize 2, 256/2 >= 128).
 * Header: version, versionlz, flags, typesize, nbytes, blocksize, cbytes. */
/* clang-format off */
static const uint8_t F_RAW[] = {
    2, 1, 0x02, 1, 4, 0, 0, 0, 4, 0, 0, 0, 20, 0, 0, 0,
    'a', 'b', 'c', 'd'};
static const uint8_t F_SHUF[] = {
    2, 1, 0x11, 2, 8, 0, 0, 0, 8, 0, 0, 0, 32, 0, 0, 0,
    20, 0, 0, 0,                                         /* block start */
    8, 0, 0, 0, 'a', 'c', 'e', 'g', 'b', 'd', 'f', 'h'}; /* stream size == block size: stored */
/* clang-format on */
static const uint8_t F_EMPTY[] = {2, 1, 0x33, 4, 0, 0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0};
#define F_SPLIT_LEN (16 + 4 + 2 * (4 + 128))

static void make_split(uint8_t *f)
{
    static const uint8_t hdr[16] = {2, 1, 0x00, 2, 0, 1, 0, 0, 0, 1, 0, 0, 0x1c, 0x01, 0, 0};
    memcpy(f, hdr, 16);
    put32(f + 16, 20);
    put32(f + 20, 128);
    for (int i = 0; i < 128; i++)
        f[24 + i] = (uint8_t)i;
    put32(f + 152, 128);
    for (int i = 0; i < 128; i++)
        f[156 + i] = (uint8_t)(200 - i);
}

static void test_blosc_fixed(void)
{
    uint8_t out[256];
    size_t len = 0, nb = 0;
    CHECK_OK(ans_blosc_decode(NULL, F_RAW, sizeof F_RAW, out, sizeof out, &len));
    CHECK(len == 4 && memcmp(out, "abcd", 4) == 0);
    CHECK_OK(ans_blosc_decode(NULL, F_SHUF, sizeof F_SHUF, out, 8, &len));
    CHECK(len == 8 && memcmp(out, "abcdefgh", 8) == 0);
    CHECK_OK(ans_blosc_decode(NULL, F_EMPTY, sizeof F_EMPTY, NULL, 0, &len));
    CHECK_EQ_U64(len, 0);
    CHECK_OK(ans_blosc_nbytes(F_EMPTY, sizeof F_EMPTY, &nb));
    CHECK_EQ_U64(nb, 0);
    uint8_t f[F_SPLIT_LEN];
    CHECK_EQ_U64(F_SPLIT_LEN, 284);
    make_split(f);
    CHECK_OK(ans_blosc_decode(NULL, f, sizeof f, out, 256, &len));
    CHECK_EQ_U64(len, 256);
    int same = 1;
    for (int i = 0; i < 128; i++)
        same &= out[i] == i && out[128 + i] == (uint8_t)(200 - i);
    CHECK(same);
}

/* Patch a little-endian u32 at `at` in a copy of `frame`, expect `want`. */
static void blosc_lie(const uint8_t *frame, size_t len, size_t at, uint32_t v, int want,
                      const char *needle)
{
    uint8_t buf[512], out[512];
    size_t olen = 0;
    memcpy(buf, frame, len);
    put32(buf + at, v);
    CHECK_RC(ans_blosc_decode(NULL, buf, len, out, sizeof out, &olen), want);
    if (needle) CHECK_STR_CONTAINS(ans_error_last(), needle);
}

static void blosc_byte(const uint8_t *frame, size_t len, size_t at, uint8_t v, int want)
{
    uint8_t buf[512], out[512];
    size_t olen = 0;
    memcpy(buf, frame, len);
    buf[at] = v;
    CHECK_RC(ans_blosc_decode(NULL, buf, len, out, sizeof out, &olen), want);
    CHECK_STR_CONTAINS(ans_error_last(), "blosc: ");
}

static void test_blosc_corrupt_header(void)
{
    uint8_t out[512];
    size_t len = 0;
    /* Truncations (cbytes no longer matches) and a too-short buffer. */
    for (size_t n = 0; n < sizeof F_SHUF; n++)
        CHECK_RC(ans_blosc_decode(NULL, F_SHUF, n, out, sizeof out, &len), ANS_ECORRUPT);
    CHECK_RC(ans_blosc_nbytes(F_SHUF, 15, &len), ANS_ECORRUPT);
    CHECK_RC(ans_blosc_decode(NULL, F_EMPTY, 15, out, sizeof out, &len), ANS_ECORRUPT);

    blosc_byte(F_SHUF, sizeof F_SHUF, 0, 1, ANS_ECORRUPT);     /* version 1 */
    blosc_byte(F_SHUF, sizeof F_SHUF, 0, 3, ANS_EUNSUPPORTED); /* a Blosc2 chunk */
    blosc_byte(F_SHUF, sizeof F_SHUF, 0, 0xff, ANS_ECORRUPT);
    blosc_byte(F_SHUF, sizeof F_SHUF, 1, 2, ANS_ECORRUPT);             /* codec format version */
    blosc_byte(F_SHUF, sizeof F_SHUF, 2, 0x11 | 0x08, ANS_ECORRUPT);   /* reserved flag */
    blosc_byte(F_SHUF, sizeof F_SHUF, 2, 0x11 | 5 << 5, ANS_ECORRUPT); /* codec ids 5..7 */
    blosc_byte(F_SHUF, sizeof F_SHUF, 2, 0x11 | 6 << 5, ANS_ECORRUPT);
    blosc_byte(F_SHUF, sizeof F_SHUF, 2, 0x11 | 7 << 5, ANS_ECORRUPT);
    blosc_byte(F_SHUF, sizeof F_SHUF, 3, 0, ANS_ECORRUPT); /* typesize 0 */

    /* cbytes lies. */
    blosc_lie(F_SHUF, sizeof F_SHUF, 12, 33, ANS_ECORRUPT, "(cbytes)");
    blosc_lie(F_SHUF, sizeof F_SHUF, 12, 31, ANS_ECORRUPT, "(cbytes)");
    blosc_lie(F_SHUF, sizeof F_SHUF, 12, 0xffffffffu, ANS_ECORRUPT, "(cbytes)");
    blosc_lie(F_EMPTY, sizeof F_EMPTY, 12, 17, ANS_ECORRUPT, NULL);
    /* nbytes lies: more blocks than the table holds, blocksize above nbytes, over 2 GiB, zero
     * (an empty frame must be a bare header), and above the caller's capacity. */
    blosc_lie(F_SHUF, sizeof F_SHUF, 4, 16, ANS_ECORRUPT, "blosc: ");
    blosc_lie(F_SHUF, sizeof F_SHUF, 4, 9, ANS_ECORRUPT, "blosc: ");
    blosc_lie(F_SHUF, sizeof F_SHUF, 4, 4, ANS_ECORRUPT, "block size");
    blosc_lie(F_SHUF, sizeof F_SHUF, 4, 0x7fffffffu, ANS_ECORRUPT, "limit");
    blosc_lie(F_SHUF, sizeof F_SHUF, 4, 0, ANS_ECORRUPT, "empty");
    CHECK_RC(ans_blosc_decode(NULL, F_SHUF, sizeof F_SHUF, out, 7, &len), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "more than the 7 expected");
    CHECK_RC(ans_blosc_decode(NULL, F_RAW, sizeof F_RAW, out, 3, &len), ANS_ECORRUPT);
    /* blocksize lies. */
    blosc_lie(F_SHUF, sizeof F_SHUF, 8, 0, ANS_ECORRUPT, "block size");
    blosc_lie(F_SHUF, sizeof F_SHUF, 8, 9, ANS_ECORRUPT, "block size");
    blosc_lie(F_SHUF, sizeof F_SHUF, 8, 4, ANS_ECORRUPT, "blosc: "); /* 2 blocks, table overlaps */
    blosc_lie(F_SHUF, sizeof F_SHUF, 8, 1, ANS_ECORRUPT, "block starts");
    /* Memcpyed frames must be exactly nbytes + 16. */
    blosc_lie(F_RAW, sizeof F_RAW, 4, 5, ANS_ECORRUPT, "nbytes + 16");
    blosc_lie(F_RAW, sizeof F_RAW, 4, 100, ANS_ECORRUPT, "nbytes + 16");
    blosc_lie(F_RAW, sizeof F_RAW, 4, 3, ANS_ECORRUPT, "block size");
    /* Split block whose size is not a multiple of typesize: 385 / 3 >= 128 so 3 streams. */
    uint8_t h[512] = {2, 1, 0x00, 3};
    put32(h + 4, 385);
    put32(h + 8, 385);
    put32(h + 12, 400);
    put32(h + 16, 20);
    blosc_lie(h, 400, 20, 0, ANS_ECORRUPT, "multiple of typesize");
}

static void test_blosc_corrupt_blocks(void)
{
    /* Block start out of range: past the end, inside the header or table, too close to the end. */
    blosc_lie(F_SHUF, sizeof F_SHUF, 16, 0xffffff00u, ANS_ECORRUPT, "starts at offset");
    blosc_lie(F_SHUF, sizeof F_SHUF, 16, 0x80000000u, ANS_ECORRUPT, "starts at offset");
    blosc_lie(F_SHUF, sizeof F_SHUF, 16, 0, ANS_ECORRUPT, "starts at offset");
    blosc_lie(F_SHUF, sizeof F_SHUF, 16, 19, ANS_ECORRUPT, "starts at offset");
    blosc_lie(F_SHUF, sizeof F_SHUF, 16, 33, ANS_ECORRUPT, "starts at offset");
    blosc_lie(F_SHUF, sizeof F_SHUF, 16, 29, ANS_ECORRUPT, "size field");
    blosc_lie(F_SHUF, sizeof F_SHUF, 16, 28, ANS_ECORRUPT, "remain"); /* reads 'bdfh' as a size */
    /* Stream sizes: past the end, "negative", zero, short (c-blosc's codec then fails). */
    blosc_lie(F_SHUF, sizeof F_SHUF, 20, 9, ANS_ECORRUPT, "claims 9 compressed bytes");
    blosc_lie(F_SHUF, sizeof F_SHUF, 20, 0x80000000u, ANS_ECORRUPT, "remain");
    blosc_lie(F_SHUF, sizeof F_SHUF, 20, 0xffffffffu, ANS_ECORRUPT, "remain");
    blosc_lie(F_SHUF, sizeof F_SHUF, 20, 0, ANS_ECORRUPT, "c-blosc returned");
    blosc_lie(F_SHUF, sizeof F_SHUF, 20, 7, ANS_ECORRUPT, "blosc: ");
    /* The second stream of a split block. */
    uint8_t f[F_SPLIT_LEN];
    make_split(f);
    blosc_lie(f, sizeof f, 152, 129, ANS_ECORRUPT, "stream 1 claims 129");
    blosc_lie(f, sizeof f, 20, 257, ANS_ECORRUPT, "stream 1: size field");
    blosc_lie(f, sizeof f, 20, 0x7fffffffu, ANS_ECORRUPT, "stream 0 claims");
    /* A split frame read as two 128-byte blocks (nbytes doubled) has no room for its table. */
    blosc_lie(f, sizeof f, 4, 512, ANS_ECORRUPT, "blosc: ");
}

/* Mutate real frames everywhere; every outcome must be a status (ASan/UBSan watch the rest). */
static void test_blosc_fuzz(void)
{
    const char *names[8];
    size_t nnames = blosc_names(names);
    uint8_t *in = make_data(20000, 0, 3), *out = malloc(20000);
    size_t cap = ans_blosc_bound(20000);
    uint8_t *enc = malloc(cap), *mut = malloc(cap);
    uint64_t s = 12345;
    for (size_t c = 0; c < nnames; c++)
        for (int shuffle = 0; shuffle <= 2; shuffle++) {
            size_t elen = 0, olen = 0;
            CHECK_OK(ans_blosc_encode(in, 20000, enc, cap, &elen, names[c], 5, shuffle, 4, 1));
            /* Header and table bytes: every position, a few values. */
            static const uint8_t vals[] = {0x00, 0x01, 0x7f, 0x80, 0xff};
            for (size_t at = 0; at < elen && at < 96; at++)
                for (size_t v = 0; v < sizeof vals; v++) {
                    memcpy(mut, enc, elen);
                    mut[at] = vals[v];
                    CHECK(benign(ans_blosc_decode(NULL, mut, elen, out, 20000, &olen)));
                }
            /* Random mutations anywhere. */
            for (int it = 0; it < 300; it++) {
                memcpy(mut, enc, elen);
                for (int k = 0; k < 3; k++)
                    mut[rng_next(&s) % elen] ^= (uint8_t)(1 + rng_next(&s) % 255);
                CHECK(benign(ans_blosc_decode(NULL, mut, elen, out, 20000, &olen)));
            }
        }
    free(in);
    free(out);
    free(enc);
    free(mut);
}

/* ---- zstd ------------------------------------------------------------------------------------ */

static size_t zstd_frame(const void *src, size_t n, uint8_t *dst, size_t cap, int content_size,
                         int checksum)
{
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, 3);
    ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, content_size);
    ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, checksum);
    size_t r = ZSTD_compress2(cc, dst, cap, src, n);
    ZSTD_freeCCtx(cc);
    CHECK(!ZSTD_isError(r));
    return ZSTD_isError(r) ? 0 : r;
}

static void test_zstd_fixed(void)
{
    ans_codec_ctx *ctx = NULL;
    CHECK_OK(ans_codec_ctx_new(&ctx));
    /* A raw block with a 1-byte content size; the same without (as the zstd CLI writes from a
     * pipe); then both after a skippable frame. */
    static const uint8_t with_size[] = {0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x05, 0x29,
                                        0x00, 0x00, 'h',  'e',  'l',  'l',  'o'};
    static const uint8_t no_size[] = {0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58, 0x29,
                                      0x00, 0x00, 'h',  'e',  'l',  'l',  'o'};
    uint8_t out[16], buf[64];
    size_t len = 0;
    uint64_t cs = 0;
    CHECK_OK(ans_zstd_decode(ctx, with_size, sizeof with_size, out, 5, &len));
    CHECK(len == 5 && memcmp(out, "hello", 5) == 0);
    CHECK_OK(ans_zstd_content_size(with_size, sizeof with_size, &cs));
    CHECK_EQ_U64(cs, 5);
    CHECK_OK(ans_zstd_decode(ctx, no_size, sizeof no_size, out, 5, &len));
    CHECK(len == 5 && memcmp(out, "hello", 5) == 0);
    CHECK_RC(ans_zstd_content_size(no_size, sizeof no_size, &cs), ANS_EUNSUPPORTED);
    CHECK_RC(ans_zstd_decode(ctx, no_size, sizeof no_size, out, 4, &len), ANS_ECORRUPT);
    CHECK_RC(ans_zstd_decode(ctx, with_size, sizeof with_size, out, 4, &len), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "zstd: frame 0 declares 5 bytes");

    static const uint8_t skip[] = {0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 'x', 'y', 'z'};
    size_t n = 0;
    memcpy(buf + n, skip, sizeof skip), n += sizeof skip;
    memcpy(buf + n, with_size, sizeof with_size), n += sizeof with_size;
    memcpy(buf + n, no_size, sizeof no_size), n += sizeof no_size;
    CHECK_OK(ans_zstd_decode(ctx, buf, n, out, 10, &len));
    CHECK(len == 10 && memcmp(out, "hellohello", 10) == 0);
    CHECK_RC(ans_zstd_decode(ctx, buf, n, out, 9, &len), ANS_ECORRUPT);
    CHECK_RC(ans_zstd_decode(ctx, buf, sizeof skip, out, 0, &len), ANS_OK);
    CHECK_EQ_U64(len, 0);
    /* Trailing garbage, empty input, a lying content size (6 for 5 bytes of raw block). */
    memcpy(buf, with_size, sizeof with_size);
    memcpy(buf + sizeof with_size, "xyz", 3);
    CHECK_RC(ans_zstd_decode(ctx, buf, sizeof with_size + 3, out, 16, &len), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "zstd: frame 1 at offset 14");
    CHECK_RC(ans_zstd_decode(ctx, buf, 0, out, 16, &len), ANS_ECORRUPT);
    CHECK_RC(ans_zstd_content_size(buf, 0, &cs), ANS_ECORRUPT);
    buf[5] = 6;
    CHECK_RC(ans_zstd_decode(ctx, buf, sizeof with_size, out, 16, &len), ANS_ECORRUPT);
    for (size_t k = 0; k < sizeof with_size; k++)
        CHECK_RC(ans_zstd_decode(ctx, with_size, k, out, 16, &len), ANS_ECORRUPT);
    ans_codec_ctx_free(ctx);
}

static void test_zstd_roundtrip(void)
{
    ans_codec_ctx *ctx = NULL;
    CHECK_OK(ans_codec_ctx_new(&ctx));
    size_t n = 100000;
    uint8_t *a = make_data(n, 0, 4), *b = make_data(n, 1, 5);
    size_t cap = 3 * ans_zstd_bound(n) + 64;
    uint8_t *enc = malloc(cap), *dec = malloc(3 * n + 1);
    size_t len = 0, dlen = 0;
    uint64_t cs = 0;

    /* ans_zstd_encode, every level that matters, and the empty input. */
    for (int level = 0; level <= 19; level += 19) {
        CHECK_OK(ans_zstd_encode(a, n, enc, ans_zstd_bound(n), &len, level));
        CHECK_OK(ans_zstd_content_size(enc, len, &cs));
        CHECK_EQ_U64(cs, n);
        CHECK_OK(ans_zstd_decode(ctx, enc, len, dec, n, &dlen));
        CHECK(dlen == n && memcmp(dec, a, n) == 0);
        CHECK_RC(ans_zstd_decode(ctx, enc, len, dec, n - 1, &dlen), ANS_ECORRUPT);
    }
    CHECK_OK(ans_zstd_encode(a, 0, enc, ans_zstd_bound(0), &len, 0));
    CHECK_OK(ans_zstd_decode(ctx, enc, len, NULL, 0, &dlen));
    CHECK_EQ_U64(dlen, 0);
    CHECK_RC(ans_zstd_encode(a, n, enc, 10, &len, 3), ANS_EINVAL);

    /* Three frames: with content size, without, with a checksum. */
    size_t l1 = zstd_frame(a, n, enc, cap, 1, 0);
    size_t l2 = zstd_frame(b, n, enc + l1, cap - l1, 0, 0);
    size_t l3 = zstd_frame(a, n / 2, enc + l1 + l2, cap - l1 - l2, 1, 1);
    size_t total = l1 + l2 + l3;
    CHECK_OK(ans_zstd_decode(ctx, enc, total, dec, 3 * n, &dlen));
    CHECK_EQ_U64(dlen, n + n + n / 2);
    CHECK(memcmp(dec, a, n) == 0 && memcmp(dec + n, b, n) == 0 &&
          memcmp(dec + 2 * n, a, n / 2) == 0);
    CHECK_RC(ans_zstd_content_size(enc, total, &cs), ANS_EUNSUPPORTED);
    /* Too little room: the unsized frame overflows, then the sized one declares too much. */
    CHECK_RC(ans_zstd_decode(ctx, enc, total, dec, n + n - 1, &dlen), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "frame 1 decodes past");
    CHECK_RC(ans_zstd_decode(ctx, enc, total, dec, 2 * n + n / 2 - 1, &dlen), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "frame 2 declares");
    /* A bad checksum, a truncated last frame, a flipped byte in the middle. */
    enc[total - 1] ^= 0x55;
    CHECK_RC(ans_zstd_decode(ctx, enc, total, dec, 3 * n, &dlen), ANS_ECORRUPT);
    enc[total - 1] ^= 0x55;
    CHECK_RC(ans_zstd_decode(ctx, enc, total - 1, dec, 3 * n, &dlen), ANS_ECORRUPT);
    CHECK_OK(ans_zstd_decode(ctx, enc, total, dec, 3 * n, &dlen)); /* the ctx recovered */
    uint64_t s = 99;
    for (int it = 0; it < 200; it++) {
        size_t at = rng_next(&s) % l1;
        uint8_t old = enc[at];
        enc[at] ^= (uint8_t)(1 + rng_next(&s) % 255);
        CHECK(benign(ans_zstd_decode(ctx, enc, l1, dec, n, &dlen)));
        enc[at] = old;
    }
    free(a);
    free(b);
    free(enc);
    free(dec);
    ans_codec_ctx_free(ctx);
}

/* ---- zlib / gzip ----------------------------------------------------------------------------- */

static size_t deflate_to(const void *src, size_t n, uint8_t *dst, size_t cap, int window_bits)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    CHECK(deflateInit2(&zs, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    zs.next_in = (Bytef *)src;
    zs.avail_in = (uInt)n;
    zs.next_out = dst;
    zs.avail_out = (uInt)cap;
    CHECK(deflate(&zs, Z_FINISH) == Z_STREAM_END);
    size_t out = zs.total_out;
    deflateEnd(&zs);
    return out;
}

static void test_zlib_fixed(void)
{
    ans_codec_ctx *ctx = NULL;
    CHECK_OK(ans_codec_ctx_new(&ctx));
    /* Python: zlib.compress(b"hello"), gzip.compress(b"hello", mtime=0). */
    static const uint8_t z[] = {0x78, 0x9c, 0xcb, 0x48, 0xcd, 0xc9, 0xc9,
                                0x07, 0x00, 0x06, 0x2c, 0x02, 0x15};
    static const uint8_t g[] = {0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
                                0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x86,
                                0xa6, 0x10, 0x36, 0x05, 0x00, 0x00, 0x00};
    uint8_t out[16], buf[128];
    size_t len = 0;
    CHECK_OK(ans_zlib_decode(ctx, z, sizeof z, out, 5, &len, 0));
    CHECK(len == 5 && memcmp(out, "hello", 5) == 0);
    CHECK_OK(ans_zlib_decode(ctx, g, sizeof g, out, 5, &len, 1));
    CHECK(len == 5 && memcmp(out, "hello", 5) == 0);
    /* The wrong wrapper. */
    CHECK_RC(ans_zlib_decode(ctx, z, sizeof z, out, 16, &len, 1), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "gzip: ");
    CHECK_RC(ans_zlib_decode(ctx, g, sizeof g, out, 16, &len, 0), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "zlib: ");
    /* Output bound, every truncation, empty input, bad checks, trailing bytes. */
    CHECK_RC(ans_zlib_decode(ctx, z, sizeof z, out, 4, &len, 0), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "past the expected 4 bytes");
    CHECK_RC(ans_zlib_decode(ctx, g, sizeof g, out, 4, &len, 1), ANS_ECORRUPT);
    for (size_t k = 0; k < sizeof z; k++)
        CHECK_RC(ans_zlib_decode(ctx, z, k, out, 16, &len, 0), ANS_ECORRUPT);
    for (size_t k = 0; k < sizeof g; k++)
        CHECK_RC(ans_zlib_decode(ctx, g, k, out, 16, &len, 1), ANS_ECORRUPT);
    memcpy(buf, z, sizeof z);
    buf[sizeof z - 1] ^= 1; /* adler32 */
    CHECK_RC(ans_zlib_decode(ctx, buf, sizeof z, out, 16, &len, 0), ANS_ECORRUPT);
    memcpy(buf, g, sizeof g);
    buf[sizeof g - 5] ^= 1; /* isize */
    CHECK_RC(ans_zlib_decode(ctx, buf, sizeof g, out, 16, &len, 1), ANS_ECORRUPT);
    memcpy(buf, z, sizeof z);
    buf[sizeof z] = 0;
    CHECK_RC(ans_zlib_decode(ctx, buf, sizeof z + 1, out, 16, &len, 0), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "1 bytes of trailing data");
    /* gzip: members back to back, NUL padding, then garbage. */
    size_t n = 0;
    memcpy(buf + n, g, sizeof g), n += sizeof g;
    memcpy(buf + n, g, sizeof g), n += sizeof g;
    memset(buf + n, 0, 3), n += 3;
    memcpy(buf + n, g, sizeof g), n += sizeof g;
    buf[n++] = 0;
    CHECK_OK(ans_zlib_decode(ctx, buf, n, out, 16, &len, 1));
    CHECK(len == 15 && memcmp(out, "hellohellohello", 15) == 0);
    CHECK_RC(ans_zlib_decode(ctx, buf, n, out, 14, &len, 1), ANS_ECORRUPT);
    buf[n++] = 'x';
    CHECK_RC(ans_zlib_decode(ctx, buf, n, out, 16, &len, 1), ANS_ECORRUPT);
    CHECK_RC(ans_zlib_decode(ctx, buf, sizeof g + 1, out, 16, &len, 1), ANS_ECORRUPT);
    CHECK_RC(ans_zlib_decode(ctx, buf, 0, out, 16, &len, 1), ANS_ECORRUPT);
    /* The stream was left mid-member above; the next call starts clean. */
    CHECK_OK(ans_zlib_decode(ctx, z, sizeof z, out, 5, &len, 0));
    ans_codec_ctx_free(ctx);
}

static void test_zlib_roundtrip(void)
{
    ans_codec_ctx *ctx = NULL;
    CHECK_OK(ans_codec_ctx_new(&ctx));
    size_t n = 150000;
    uint8_t *a = make_data(n, 0, 6), *b = make_data(n, 1, 7);
    size_t cap = 2 * compressBound(n) + 64;
    uint8_t *enc = malloc(cap), *dec = malloc(2 * n);
    size_t len = 0;
    for (int pass = 0; pass < 2; pass++) { /* the second pass reuses the inflate state */
        for (int kind = 0; kind < 2; kind++) {
            const uint8_t *src = kind ? b : a;
            size_t zl = deflate_to(src, n, enc, cap, 15);
            CHECK_OK(ans_zlib_decode(ctx, enc, zl, dec, n, &len, 0));
            CHECK(len == n && memcmp(dec, src, n) == 0);
            CHECK_RC(ans_zlib_decode(ctx, enc, zl, dec, n - 1, &len, 0), ANS_ECORRUPT);
            CHECK_RC(ans_zlib_decode(ctx, enc, zl - 1, dec, n, &len, 0), ANS_ECORRUPT);
            CHECK_RC(ans_zlib_decode(ctx, enc, zl / 2, dec, n, &len, 0), ANS_ECORRUPT);
            /* Two gzip members of different data. */
            size_t g1 = deflate_to(a, n, enc, cap, 31);
            size_t g2 = deflate_to(src, n, enc + g1, cap - g1, 31);
            CHECK_OK(ans_zlib_decode(ctx, enc, g1 + g2, dec, 2 * n, &len, 1));
            CHECK(len == 2 * n && memcmp(dec, a, n) == 0 && memcmp(dec + n, src, n) == 0);
            CHECK_RC(ans_zlib_decode(ctx, enc, g1 + g2, dec, 2 * n - 1, &len, 1), ANS_ECORRUPT);
            CHECK_RC(ans_zlib_decode(ctx, enc, g1 + g2 - 1, dec, 2 * n, &len, 1), ANS_ECORRUPT);
            CHECK_RC(ans_zlib_decode(ctx, enc, g1 + 5, dec, 2 * n, &len, 1), ANS_ECORRUPT);
        }
    }
    size_t zl = deflate_to(a, 0, enc, cap, 15);
    CHECK_OK(ans_zlib_decode(ctx, enc, zl, NULL, 0, &len, 0));
    CHECK_EQ_U64(len, 0);
    /* Mutations. */
    zl = deflate_to(a, 5000, enc, cap, 15);
    uint64_t s = 5;
    for (int it = 0; it < 300; it++) {
        size_t at = rng_next(&s) % zl;
        uint8_t old = enc[at];
        enc[at] ^= (uint8_t)(1 + rng_next(&s) % 255);
        CHECK(benign(ans_zlib_decode(ctx, enc, zl, dec, 5000, &len, (int)(it & 1))));
        enc[at] = old;
    }
    free(a);
    free(b);
    free(enc);
    free(dec);
    ans_codec_ctx_free(ctx);
}

/* ---- lz4 ------------------------------------------------------------------------------------- */

static void test_lz4(void)
{
    /* numcodecs.LZ4().encode(b"hello"): length 5, then a block of 5 literals. */
    static const uint8_t fixed[] = {0x05, 0x00, 0x00, 0x00, 0x50, 'h', 'e', 'l', 'l', 'o'};
    uint8_t out[16], buf[32];
    size_t len = 0, nb = 0;
    CHECK_OK(ans_lz4_decode(fixed, sizeof fixed, out, 5, &len));
    CHECK(len == 5 && memcmp(out, "hello", 5) == 0);
    CHECK_OK(ans_lz4_nbytes(fixed, sizeof fixed, &nb));
    CHECK_EQ_U64(nb, 5);
    CHECK_RC(ans_lz4_decode(fixed, sizeof fixed, out, 4, &len), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "lz4: ");
    for (size_t k = 0; k < sizeof fixed; k++)
        CHECK_RC(ans_lz4_decode(fixed, k, out, 16, &len), ANS_ECORRUPT);
    CHECK_RC(ans_lz4_nbytes(fixed, 3, &nb), ANS_ECORRUPT);
    /* The length says 6, the block holds 5; a huge length; trailing bytes after the block. */
    memcpy(buf, fixed, sizeof fixed);
    buf[0] = 6;
    CHECK_RC(ans_lz4_decode(buf, sizeof fixed, out, 16, &len), ANS_ECORRUPT);
    put32(buf, 0xffffffffu);
    CHECK_RC(ans_lz4_decode(buf, sizeof fixed, out, 16, &len), ANS_ECORRUPT);
    memcpy(buf, fixed, sizeof fixed);
    buf[sizeof fixed] = 0;
    CHECK_RC(ans_lz4_decode(buf, sizeof fixed + 1, out, 16, &len), ANS_ECORRUPT);
    /* Empty. */
    static const uint8_t empty[] = {0, 0, 0, 0, 0};
    CHECK_OK(ans_lz4_decode(empty, sizeof empty, out, 0, &len));
    CHECK_EQ_U64(len, 0);

    /* Round trip through liblz4 in numcodecs' layout, plus mutations. */
    int n = 100000;
    uint8_t *a = make_data((size_t)n, 0, 8), *dec = malloc((size_t)n);
    int bound = LZ4_compressBound(n);
    uint8_t *enc = malloc((size_t)bound + 4);
    put32(enc, (uint32_t)n);
    int cl = LZ4_compress_default((const char *)a, (char *)enc + 4, n, bound);
    CHECK(cl > 0);
    CHECK_OK(ans_lz4_decode(enc, (size_t)cl + 4, dec, (size_t)n, &len));
    CHECK(len == (size_t)n && memcmp(dec, a, (size_t)n) == 0);
    CHECK_RC(ans_lz4_decode(enc, (size_t)cl + 3, dec, (size_t)n, &len), ANS_ECORRUPT);
    uint64_t s = 17;
    for (int it = 0; it < 300; it++) {
        size_t at = 4 + rng_next(&s) % (size_t)cl;
        uint8_t old = enc[at];
        enc[at] ^= (uint8_t)(1 + rng_next(&s) % 255);
        CHECK(benign(ans_lz4_decode(enc, (size_t)cl + 4, dec, (size_t)n, &len)));
        enc[at] = old;
    }
    free(a);
    free(dec);
    free(enc);
}

/* ---- contexts and threads -------------------------------------------------------------------- */

typedef struct job {
    const uint8_t *blosc, *zst, *zl, *want;
    size_t blosc_len, zst_len, zl_len, n;
    int failures;
} job;

static void *worker(void *arg)
{
    job *j = arg;
    ans_codec_ctx *ctx = NULL;
    if (ans_codec_ctx_new(&ctx) != ANS_OK) {
        j->failures++;
        return NULL;
    }
    uint8_t *out = malloc(j->n);
    size_t len = 0;
    for (int it = 0; it < 40; it++) {
        if (ans_blosc_decode(ctx, j->blosc, j->blosc_len, out, j->n, &len) != ANS_OK ||
            len != j->n || memcmp(out, j->want, j->n) != 0)
            j->failures++;
        if (ans_zstd_decode(ctx, j->zst, j->zst_len, out, j->n, &len) != ANS_OK || len != j->n ||
            memcmp(out, j->want, j->n) != 0)
            j->failures++;
        if (ans_zlib_decode(ctx, j->zl, j->zl_len, out, j->n, &len, 0) != ANS_OK || len != j->n ||
            memcmp(out, j->want, j->n) != 0)
            j->failures++;
        /* A failure on one thread leaves the others' messages alone. */
        if (ans_blosc_decode(ctx, j->blosc, 3, out, j->n, &len) != ANS_ECORRUPT ||
            !strstr(ans_error_last(), "blosc: frame is 3 bytes"))
            j->failures++;
    }
    free(out);
    ans_codec_ctx_free(ctx);
    return NULL;
}

static void test_ctx_threads(void)
{
    ans_codec_ctx_free(NULL);
    size_t n = 50000;
    uint8_t *a = make_data(n, 0, 9);
    uint8_t *b = malloc(ans_blosc_bound(n)), *z = malloc(ans_zstd_bound(n)),
            *zl = malloc(compressBound(n));
    job proto = {.want = a, .n = n, .blosc = b, .zst = z, .zl = zl};
    CHECK_OK(ans_blosc_encode(a, n, b, ans_blosc_bound(n), &proto.blosc_len, "lz4", 5, 1, 4, 1));
    CHECK_OK(ans_zstd_encode(a, n, z, ans_zstd_bound(n), &proto.zst_len, 3));
    proto.zl_len = deflate_to(a, n, zl, compressBound(n), 15);
    enum { NT = 4 };
    pthread_t th[NT];
    job jobs[NT];
    for (int i = 0; i < NT; i++) {
        jobs[i] = proto;
        CHECK(pthread_create(&th[i], NULL, worker, &jobs[i]) == 0);
    }
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_U64(jobs[i].failures, 0);
    }
    free(a);
    free(b);
    free(z);
    free(zl);
}

ANS_TEST_MAIN({"crc32c_known", test_crc32c_known}, {"crc32c_random", test_crc32c_random},
              {"crc32c_shard_example", test_crc32c_shard_example}, {"byteswap", test_byteswap},
              {"vlen_fixed", test_vlen_fixed}, {"vlen_corrupt", test_vlen_corrupt},
              {"blosc_roundtrip", test_blosc_roundtrip}, {"blosc_range", test_blosc_range},
              {"blosc_span", test_blosc_span}, {"blosc_scatter", test_blosc_scatter},
              {"blosc_unshuffle", test_blosc_unshuffle},
              {"blosc_encode_args", test_blosc_encode_args}, {"blosc_fixed", test_blosc_fixed},
              {"blosc_corrupt_header", test_blosc_corrupt_header},
              {"blosc_corrupt_blocks", test_blosc_corrupt_blocks}, {"blosc_fuzz", test_blosc_fuzz},
              {"zstd_fixed", test_zstd_fixed}, {"zstd_roundtrip", test_zstd_roundtrip},
              {"zlib_fixed", test_zlib_fixed}, {"zlib_roundtrip", test_zlib_roundtrip},
              {"lz4", test_lz4}, {"ctx_threads", test_ctx_threads})
