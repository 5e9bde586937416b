/* codec_blosc: ans_blosc_nbytes + ans_blosc_decode on a Blosc1 frame (the input), into a buffer of
 * exactly the claimed size and into one byte less (must fail); ans_blosc_decode_range of its middle
 * third (must equal the whole decode's bytes); then an encode / decode round trip
 * of the input bytes with parameters derived from the input. */
#include "fuzz_common.h"

#include "codec/codec.h"

#define MAX_OUT ((size_t)16 << 20)

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
        if (nb > 1) {
            /* a part: the middle third; where the whole frame decodes, it must agree */
            size_t lo = nb / 3, hi = nb - nb / 3;
            uint8_t *part = malloc(hi - lo), *whole = malloc(nb);
            ans_buf scratch = {0};
            FUZZ_CHECK(part && whole);
            int prc = ans_blosc_decode_range(data, size, nb, lo, hi, part, &scratch);
            if (prc == ANS_OK) {
                fuzz_touch(part, hi - lo);
                if (ans_blosc_decode(NULL, data, size, whole, nb, &outlen) == ANS_OK)
                    FUZZ_CHECK(memcmp(part, whole + lo, hi - lo) == 0);
            }
            ans_buf_free(&scratch);
            free(part);
            free(whole);
        }
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
    } else {
        FUZZ_CHECK(rc == ANS_EUNSUPPORTED);
    }
    free(enc);
    free(dec);
    return 0;
}
