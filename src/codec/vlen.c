/* vlen.c - vlen-utf8: u32le n_items, then per item u32le nbytes + the bytes (formats.md 2). */
#include "codec/codec.h"

#include "common/error.h"

#include <inttypes.h>
#include <stdint.h>
#include <string.h>

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int ans_vlen_utf8_decode(const void *src, size_t srclen, uint64_t n_items, uint64_t *offsets,
                         ans_buf *data)
{
    const uint8_t *s = src;
    if (srclen < 4)
        return ans_err(ANS_ECORRUPT, "vlen-utf8: input is %zu bytes, shorter than the item count",
                       srclen);
    uint32_t count = rd32(s);
    if (count != n_items)
        return ans_err(ANS_ECORRUPT, "vlen-utf8: header says %" PRIu32 " items, expected %" PRIu64,
                       count, n_items);
    /* Each item needs at least its 4-byte length: a count the input cannot back is a lie, caught
     * before anything is sized from it. */
    size_t body = srclen - 4;
    if (n_items > body / 4)
        return ans_err(ANS_ECORRUPT,
                       "vlen-utf8: %" PRIu64 " items cannot fit in %zu bytes (4 per item at least)",
                       n_items, body);
    /* The text is at most what remains after the length fields: one reservation, never more than
     * srclen bytes. */
    size_t start = data->len, text_max = body - 4 * (size_t)n_items;
    if (text_max > SIZE_MAX - start) return ans_err(ANS_ENOMEM, "vlen-utf8: buffer size overflow");
    ANS_TRY(ans_buf_reserve(data, start + text_max));

    /* Invariant: the input still holds the length fields of the items not read yet, so an item may
     * only take what they leave. That keeps every length field in bounds and the text within the
     * reservation. */
    size_t pos = 4;
    offsets[0] = 0;
    for (uint64_t i = 0; i < n_items; i++) {
        uint32_t len = rd32(s + pos);
        pos += 4;
        size_t avail = srclen - pos - 4 * (size_t)(n_items - 1 - i);
        if (len > avail) {
            data->len = start;
            return ans_err(ANS_ECORRUPT,
                           "vlen-utf8: item %" PRIu64 " of %" PRIu64 " claims %" PRIu32
                           " bytes but only %zu remain for it",
                           i, n_items, len, avail);
        }
        if (len) memcpy(data->data + data->len, s + pos, len);
        pos += len;
        data->len += len;
        offsets[i + 1] = data->len - start;
    }
    if (pos != srclen) {
        data->len = start;
        return ans_err(ANS_ECORRUPT, "vlen-utf8: %zu trailing bytes after the last item",
                       srclen - pos);
    }
    return ANS_OK;
}
