/* codec_blosc: ans_blosc_nbytes + ans_blosc_decode on a Blosc1 frame (the input), into a buffer of
 * exactly the claimed size and into one byte less (must fail); its middle third by
 * ans_blosc_decode_range, ans_blosc_scatter, and from the frame's head and ans_blosc_span's bytes
 * alone (check_part);
 * then an encode / decode round trip of the input bytes with parameters derived from the input, and
 * a part of that valid frame, which must equal the input's bytes. */
#include "fuzz_common.h"

#include "codec/codec.h"

#define MAX_OUT ((size_t)16 << 20)

/* Bytes [lo, hi) of a frame decoding to nb bytes: ans_blosc_decode_range, and the same part from
 * the frame's head and the bytes ans_blosc_span gives alone (the rest junk), must agree. Each is
 * decoded twice, over buffers holding other bytes: for a hostile frame only the outcome must not
 * depend on them (an LZ4 match with offset 0 is invalid, but liblz4 1.9.4 accepts it and copies
 * whatever the output held; its partial and full decoders also disagree on some malformed streams,
 * so a hostile frame's part is not compared with its whole decode). `want` (a valid frame's
 * decoded bytes, or NULL) is what the part must equal. */
typedef struct fsink {
    uint8_t *out; /* decoded bytes [base, ...) */
    size_t base;
    const ans_bseg *segs;
} fsink;

static int fsink_put(void *ctx, size_t k, size_t at, const uint8_t *bytes, size_t len)
{
    fsink *f = ctx;
    FUZZ_CHECK(at + len <= f->segs[k].len);
    memcpy(f->out + (f->segs[k].off - f->base) + at, bytes, len);
    return ANS_OK;
}

/* ans_blosc_scatter of [lo, hi) cut on elements of `el` bytes, as two segments given last first:
 * must not fail for a valid frame it can decode (and then equal `want`), nor crash on any. */
static void check_scatter(const uint8_t *data, size_t size, size_t nb, size_t lo, size_t hi,
                          size_t el, const uint8_t *want)
{
    lo -= lo % el;
    hi -= hi % el;
    if (lo >= hi) return;
    size_t mid = lo + (hi - lo) / 2;
    mid -= (mid - lo) % el;
    ans_bseg segs[2] = {{mid, hi - mid}, {lo, mid - lo}};
    uint8_t *out = malloc(hi - lo);
    ans_buf scratch = {0};
    FUZZ_CHECK(out != NULL);
    memset(out, 0x5A, hi - lo);
    fsink f = {out, lo, segs};
    int rc = ans_blosc_scatter(data, size, nb, 0, size, segs, 2, el, fsink_put, &f, &scratch);
    if (rc == ANS_OK) fuzz_touch(out, hi - lo);
    if (want && rc != ANS_EUNSUPPORTED)
        FUZZ_CHECK(rc == ANS_OK && memcmp(out, want + lo, hi - lo) == 0);
    ans_buf_free(&scratch);
    free(out);
}

static void check_part(const uint8_t *data, size_t size, size_t nb, size_t lo, size_t hi,
                       const uint8_t *want)
{
    check_scatter(data, size, nb, lo, hi, 1, want);
    if (size > 3 && data[3] >= 1 && data[3] <= 16)
        check_scatter(data, size, nb, lo, hi, data[3], want);
    uint8_t *part = malloc(hi - lo), *part2 = malloc(hi - lo), *cut = malloc(size);
    ans_buf scratch = {0};
    FUZZ_CHECK(part && part2 && cut);
    FUZZ_CHECK(ans_buf_reserve(&scratch, 2 * nb) == ANS_OK);
    memset(scratch.data, 0x00, scratch.cap);
    memset(part, 0x00, hi - lo);
    int prc = ans_blosc_decode_range(data, size, nb, lo, hi, part, &scratch);
    memset(scratch.data, 0xFF, scratch.cap);
    memset(part2, 0xFF, hi - lo);
    int prc2 = ans_blosc_decode_range(data, size, nb, lo, hi, part2, &scratch);
    FUZZ_CHECK(prc == prc2);
    int defined = prc == ANS_OK && memcmp(part, part2, hi - lo) == 0;
    if (prc == ANS_OK) fuzz_touch(part, hi - lo);
    if (want && prc == ANS_OK) FUZZ_CHECK(memcmp(part, want + lo, hi - lo) == 0);
    size_t hl = 0, c0 = 0, c1 = 0;
    if (ans_blosc_head_len(data, size, &hl) == ANS_OK &&
        ans_blosc_span(data, hl, size, nb, lo, hi, &c0, &c1) == ANS_OK) {
        FUZZ_CHECK(hl <= c0 && c0 <= c1 && c1 <= size);
        memset(cut, 0xA5, size);
        memcpy(cut, data, hl);
        memcpy(cut + c0, data + c0, c1 - c0);
        memset(scratch.data, 0x00, scratch.cap);
        memset(part2, 0x00, hi - lo);
        int crc = ans_blosc_decode_range_in(cut, size, nb, lo, hi, c0, c1, part2, &scratch);
        if (want) FUZZ_CHECK(crc == ANS_OK && memcmp(part2, want + lo, hi - lo) == 0);
        if (crc == ANS_OK) {
            fuzz_touch(part2, hi - lo);
            if (defined) FUZZ_CHECK(memcmp(part, part2, hi - lo) == 0);
        }
    }
    ans_buf_free(&scratch);
    free(part);
    free(part2);
    free(cut);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t nb = 0, outlen = 0;
    if (ans_blosc_nbytes(data, size, &nb) == ANS_OK && nb <= MAX_OUT) {
        uint8_t *dst = malloc(nb ? nb : 1);
        FUZZ_CHECK(dst != NULL);
        if (ans_blosc_decode(NULL, data, size, dst, nb, &outlen) == ANS_OK) {
            FUZZ_CHECK(outlen == nb);
            fuzz_touch(dst, outlen);
        }
        if (nb > 0) FUZZ_CHECK(ans_blosc_decode(NULL, data, size, dst, nb - 1, &outlen) != ANS_OK);
        if (nb > 1) check_part(data, size, nb, nb / 3, nb - nb / 3, NULL);
        free(dst);
    } else {
        uint8_t *dst = malloc(4096);
        FUZZ_CHECK(dst != NULL);
        if (ans_blosc_decode(NULL, data, size, dst, 4096, &outlen) == ANS_OK)
            FUZZ_CHECK(outlen <= 4096);
        free(dst);
    }

    /* round trip */
    static const char *const cnames[] = {"blosclz", "lz4", "lz4hc", "zstd", "zlib", "snappy"};
    if (size < 1 || size > ((size_t)1 << 20)) return 0;
    uint8_t h = data[0];
    const char *cname = cnames[h % 6];
    int shuffle = (int)((h >> 3) % 4) - 1; /* -1..2 */
    size_t typesize = (size_t)1 << ((h >> 5) % 4);
    int clevel = (int)(size % 10);
    size_t cap = ans_blosc_bound(size);
    uint8_t *enc = malloc(cap), *dec = malloc(size);
    FUZZ_CHECK(enc && dec);
    size_t elen = 0, dlen = 0;
    int rc = ans_blosc_encode(data, size, enc, cap, &elen, cname, clevel, shuffle, typesize, 1);
    if (rc == ANS_OK) {
        FUZZ_CHECK(elen <= cap);
        size_t n2 = 0;
        FUZZ_CHECK(ans_blosc_nbytes(enc, elen, &n2) == ANS_OK && n2 == size);
        rc = ans_blosc_decode(NULL, enc, elen, dec, size, &dlen);
        if (rc != ANS_OK) {
            fprintf(stderr, "blosc round trip (%s, shuffle %d, typesize %zu): %s\n", cname, shuffle,
                    typesize, ans_error_last());
            abort();
        }
        FUZZ_CHECK(dlen == size && memcmp(dec, data, size) == 0);
        /* a valid frame: any part, also read apart, is the input's bytes */
        if (size > 1) {
            size_t lo = (size_t)data[size - 1] * size / 256, hi = size - (size - lo) / 3;
            if (hi > lo) check_part(enc, elen, size, lo, hi, data);
        }
    } else {
        FUZZ_CHECK(rc == ANS_EUNSUPPORTED);
    }
    free(enc);
    free(dec);
    return 0;
}
