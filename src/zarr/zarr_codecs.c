/* zarr_codecs.c - codec lists -> a flat decode pipeline (ans_zchain), and running it on one unit.
 *
 * v2: `filters` (in encode order; vlen-utf8 first for |O) then `compressor`; order "F" becomes a
 * transpose with the reversed axis order; a '>' typestr a byte swap. v3: array->array (transpose),
 * one array->bytes (bytes, vlen-utf8, sharding_indexed), then bytes->bytes (blosc, zstd, gzip,
 * crc32c, numcodecs.*). Decoding undoes the bytes->bytes stages in reverse. When the last stage's
 * output size is known (fixed-size elements), every compressor's claimed size is checked against it
 * BEFORE any buffer is sized from it. */
#include "zarr/zarr.h"

#include "common/error.h"

#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define HOST_BIG 1
#else
#define HOST_BIG 0
#endif

/* Upper bounds on decompression ratios, to refuse absurd claims before allocating. zstd: a block
 * (3-byte header + >= 1 byte) regenerates at most 128 KiB; deflate: 1032:1. */
#define ZSTD_MAX_RATIO 32768u
#define DEFLATE_MAX_RATIO 1032u

/* ---- workspaces ------------------------------------------------------------------------------- */

int ans_zws_new(ans_zws **out)
{
    ans_zws *ws = ans_calloc(1, sizeof *ws);
    if (!ws) return ANS_ENOMEM;
    int rc = ans_codec_ctx_new(&ws->cctx);
    if (rc < 0) {
        free(ws);
        return rc;
    }
    *out = ws;
    return ANS_OK;
}

void ans_zws_free(ans_zws *ws)
{
    if (!ws) return;
    ans_codec_ctx_free(ws->cctx);
    ans_buf_free(&ws->raw);
    ans_buf_free(&ws->tmp[0]);
    ans_buf_free(&ws->tmp[1]);
    ans_buf_free(&ws->chunk);
    ans_buf_free(&ws->offs);
    ans_buf_free(&ws->strs);
    ans_buf_free(&ws->segs);
    free(ws);
}

/* ---- parsing ---------------------------------------------------------------------------------- */

/* Name and configuration of a codec entry: a bare string, {"name", "configuration"} (v3) or
 * {"id", ...} (v2, the object itself is the configuration). */
static int codec_entry(const ans_json *c, int v2, const char **name, const ans_json **conf,
                       const char *where)
{
    *conf = NULL;
    if ((*name = ans_json_get_str(c)) != NULL) return ANS_OK;
    if (!c || c->type != ANS_JSON_OBJECT)
        return ans_err(ANS_ECORRUPT, "%s: malformed codec entry", where);
    *name = ans_json_get_str(ans_json_get(c, v2 ? "id" : "name"));
    if (!*name) return ans_err(ANS_ECORRUPT, "%s: codec entry without a %s", where, v2 ? "id" : "name");
    *conf = v2 ? c : ans_json_get(c, "configuration");
    return ANS_OK;
}

/* A bytes->bytes codec by name ("numcodecs." prefix accepted); 0 if not one. */
static int bb_kind(const char *name, ans_zbb_kind *k)
{
    if (!strncmp(name, "numcodecs.", 10)) name += 10;
    if (!strcmp(name, "blosc")) *k = ANS_ZBB_BLOSC;
    else if (!strcmp(name, "zstd")) *k = ANS_ZBB_ZSTD;
    else if (!strcmp(name, "zlib")) *k = ANS_ZBB_ZLIB;
    else if (!strcmp(name, "gzip")) *k = ANS_ZBB_GZIP;
    else if (!strcmp(name, "lz4")) *k = ANS_ZBB_LZ4;
    else if (!strcmp(name, "crc32c")) *k = ANS_ZBB_CRC32C;
    else return 0;
    return 1;
}

static int push_bb(ans_zchain *ch, ans_zbb_kind k, const ans_json *conf, const char *where)
{
    if (ch->nbb == ANS_ZBB_MAX)
        return ans_err(ANS_EUNSUPPORTED, "%s: more than %d bytes-to-bytes codecs", where,
                       ANS_ZBB_MAX);
    ans_zbb *bb = &ch->bb[ch->nbb++];
    bb->kind = k;
    bb->crc_at_start = 0;
    if (k == ANS_ZBB_CRC32C) {
        const char *loc = ans_json_get_str(ans_json_get(conf, "location"));
        if (loc && strcmp(loc, "start") && strcmp(loc, "end"))
            return ans_err(ANS_ECORRUPT, "%s: crc32c location '%s'", where, loc);
        bb->crc_at_start = loc && !strcmp(loc, "start");
    }
    return ANS_OK;
}

/* Sizes of a chain's unit; overflow -> ANS_ECORRUPT. */
static int chain_sizes(ans_zchain *ch, const ans_zchain_ctx *cx, const uint64_t *shape)
{
    ch->nd = cx->nd;
    ch->elsize = cx->elsize;
    uint64_t n = 1;
    for (int d = 0; d < cx->nd; d++) {
        ch->shape[d] = shape[d];
        if (ans_mul_overflow(n, shape[d], &n))
            return ans_err(ANS_ECORRUPT, "%s: chunk shape overflows 64 bits", cx->where);
    }
    ch->nelems = n;
    if (ans_mul_overflow(n, cx->elsize, &ch->nbytes) || ch->nbytes > SIZE_MAX / 2)
        return ans_err(ANS_ECORRUPT, "%s: chunk size overflows", cx->where);
    for (int d = 0; d < cx->nd; d++) ch->perm[d] = d;
    return ANS_OK;
}

static int set_bytes_codec(ans_zchain *ch, const ans_json *conf, const ans_zchain_ctx *cx)
{
    if (cx->str == ANS_ZSTR_VLEN)
        return ans_err(ANS_ECORRUPT, "%s: a string array needs the vlen-utf8 codec, not bytes",
                       cx->where);
    const ans_json *e = ans_json_get(conf, "endian");
    const char *endian = ans_json_get_str(e);
    if (e && e->type != ANS_JSON_NULL && (!endian || (strcmp(endian, "little") && strcmp(endian, "big"))))
        return ans_err(ANS_ECORRUPT, "%s: bytes codec endian must be little or big", cx->where);
    int big = endian && !strcmp(endian, "big");
    ch->ab = ANS_ZAB_BYTES;
    ch->swap = (big != HOST_BIG) ? cx->swap_unit : 0;
    if (ch->swap == 1) ch->swap = 0;
    return ANS_OK;
}

static int parse_transpose(ans_zchain *ch, const ans_json *conf, const ans_zchain_ctx *cx)
{
    const ans_json *o = ans_json_get(conf, "order");
    int perm[ANS_MAX_NDIM];
    const char *s = ans_json_get_str(o);
    if (s && (!strcmp(s, "C") || !strcmp(s, "F"))) {
        for (int d = 0; d < cx->nd; d++) perm[d] = s[0] == 'C' ? d : cx->nd - 1 - d;
    } else {
        if (!o || o->type != ANS_JSON_ARRAY || ans_json_len(o) != (size_t)cx->nd)
            return ans_err(ANS_ECORRUPT, "%s: transpose order must list %d axes", cx->where,
                           cx->nd);
        int seen[ANS_MAX_NDIM] = {0};
        for (int d = 0; d < cx->nd; d++) {
            int64_t v;
            if (ans_json_get_i64(ans_json_at(o, (size_t)d), &v) != 0 || v < 0 || v >= cx->nd ||
                seen[v])
                return ans_err(ANS_ECORRUPT, "%s: transpose order is not a permutation",
                               cx->where);
            seen[v] = 1;
            perm[d] = (int)v;
        }
    }
    /* Compose with what came before: stored axis j = previous axis perm[j]. */
    int np[ANS_MAX_NDIM];
    for (int d = 0; d < cx->nd; d++) np[d] = ch->perm[perm[d]];
    ch->transpose = 0;
    for (int d = 0; d < cx->nd; d++) {
        ch->perm[d] = np[d];
        if (np[d] != d) ch->transpose = 1;
    }
    return ANS_OK;
}

static int parse_v3_list(ans_zchain *ch, ans_zshard **shard, const ans_json *codecs,
                         const ans_zchain_ctx *cx, int depth);

static int parse_sharding(ans_zchain *ch, ans_zshard **shard, const ans_json *conf,
                          const ans_zchain_ctx *cx, int depth)
{
    if (!shard || depth > 0)
        return ans_err(ANS_EUNSUPPORTED, "%s: nested sharding_indexed is not supported",
                       cx->where);
    if (ch->transpose)
        return ans_err(ANS_EUNSUPPORTED, "%s: transpose before sharding_indexed is not supported",
                       cx->where);
    ans_zshard *sh = ans_calloc(1, sizeof *sh);
    if (!sh) return ANS_ENOMEM;
    *shard = sh;
    sh->nd = cx->nd;
    const ans_json *cs = ans_json_get(conf, "chunk_shape");
    uint64_t inner[ANS_MAX_NDIM];
    if (!cs || cs->type != ANS_JSON_ARRAY)
        return ans_err(ANS_ECORRUPT, "%s: sharding_indexed needs chunk_shape", cx->where);
    size_t n = ans_json_len(cs);
    int zero_d = n == 0 && cx->nd == 1 && cx->shape[0] == 1;
    if (n != (size_t)cx->nd && !zero_d)
        return ans_err(ANS_ECORRUPT, "%s: sharding chunk_shape has %zu dimensions, the array %d",
                       cx->where, n, cx->nd);
    sh->n = 1;
    for (int d = 0; d < cx->nd; d++) {
        if (zero_d) {
            inner[d] = 1;
        } else if (ans_json_get_u64(ans_json_at(cs, (size_t)d), &inner[d]) != 0 || inner[d] == 0) {
            return ans_err(ANS_ECORRUPT, "%s: sharding chunk_shape is malformed", cx->where);
        }
        if (cx->shape[d] % inner[d])
            return ans_err(ANS_ECORRUPT,
                           "%s: inner chunk shape does not divide the shard shape (axis %d: %llu / "
                           "%llu)",
                           cx->where, d, (unsigned long long)cx->shape[d],
                           (unsigned long long)inner[d]);
        sh->cps[d] = cx->shape[d] / inner[d];
        if (ans_mul_overflow(sh->n, sh->cps[d], &sh->n))
            return ans_err(ANS_ECORRUPT, "%s: too many inner chunks per shard", cx->where);
    }
    if (sh->n > (UINT64_MAX - 4) / 16)
        return ans_err(ANS_ECORRUPT, "%s: too many inner chunks per shard", cx->where);
    /* Index codecs: bytes (any endian), then optionally crc32c. */
    const ans_json *ic = ans_json_get(conf, "index_codecs");
    size_t nic = ic && ic->type == ANS_JSON_ARRAY ? ans_json_len(ic) : 0;
    if (nic == 0 || nic > 2)
        return ans_err(ANS_EUNSUPPORTED, "%s: unsupported shard index_codecs", cx->where);
    for (size_t i = 0; i < nic; i++) {
        const char *name;
        const ans_json *c;
        ANS_TRY(codec_entry(ans_json_at(ic, i), 0, &name, &c, cx->where));
        if (i == 0 && !strcmp(name, "bytes")) {
            const char *e = ans_json_get_str(ans_json_get(c, "endian"));
            sh->index_big = e && !strcmp(e, "big");
        } else if (i == 1 && !strcmp(name, "crc32c")) {
            sh->index_crc = 1;
        } else {
            return ans_err(ANS_EUNSUPPORTED, "%s: unsupported shard index codec '%s'", cx->where,
                           name);
        }
    }
    sh->index_bytes = 16 * sh->n + (sh->index_crc ? 4 : 0);
    const char *loc = ans_json_get_str(ans_json_get(conf, "index_location"));
    if (loc && strcmp(loc, "start") && strcmp(loc, "end"))
        return ans_err(ANS_ECORRUPT, "%s: index_location '%s'", cx->where, loc);
    sh->index_at_start = loc && !strcmp(loc, "start");
    /* Inner chain. */
    ans_zchain_ctx icx = *cx;
    icx.shape = inner;
    const ans_json *codecs = ans_json_get(conf, "codecs");
    if (!codecs || codecs->type != ANS_JSON_ARRAY || ans_json_len(codecs) == 0)
        return ans_err(ANS_ECORRUPT, "%s: sharding_indexed needs codecs", cx->where);
    ANS_TRY(parse_v3_list(&sh->inner, NULL, codecs, &icx, depth + 1));
    ch->ab = ANS_ZAB_SHARDING;
    return ANS_OK;
}

static int parse_v3_list(ans_zchain *ch, ans_zshard **shard, const ans_json *codecs,
                         const ans_zchain_ctx *cx, int depth)
{
    memset(ch, 0, sizeof *ch);
    ANS_TRY(chain_sizes(ch, cx, cx->shape));
    size_t n = ans_json_len(codecs);
    for (size_t i = 0; i < n; i++) {
        const char *name;
        const ans_json *conf;
        ANS_TRY(codec_entry(ans_json_at(codecs, i), 0, &name, &conf, cx->where));
        ans_zbb_kind k;
        if (!strcmp(name, "transpose")) {
            if (ch->ab)
                return ans_err(ANS_ECORRUPT, "%s: transpose after an array-to-bytes codec",
                               cx->where);
            ANS_TRY(parse_transpose(ch, conf, cx));
        } else if (!strcmp(name, "bytes") || !strcmp(name, "vlen-utf8") ||
                   !strcmp(name, "sharding_indexed")) {
            if (ch->ab)
                return ans_err(ANS_ECORRUPT, "%s: more than one array-to-bytes codec", cx->where);
            if (name[0] == 'b') {
                ANS_TRY(set_bytes_codec(ch, conf, cx));
            } else if (name[0] == 'v') {
                if (cx->str != ANS_ZSTR_VLEN)
                    return ans_err(ANS_ECORRUPT, "%s: vlen-utf8 codec on a non-string data type",
                                   cx->where);
                ch->ab = ANS_ZAB_VLEN_UTF8;
            } else {
                ANS_TRY(parse_sharding(ch, shard, conf, cx, depth));
            }
        } else if (bb_kind(name, &k)) {
            if (!ch->ab)
                return ans_err(ANS_ECORRUPT, "%s: codec '%s' before the array-to-bytes codec",
                               cx->where, name);
            if (ch->ab == ANS_ZAB_SHARDING)
                return ans_err(ANS_EUNSUPPORTED,
                               "%s: codec '%s' after sharding_indexed is not supported",
                               cx->where, name);
            ANS_TRY(push_bb(ch, k, conf, cx->where));
        } else {
            return ans_err(ANS_EUNSUPPORTED, "%s: unsupported codec '%s'", cx->where, name);
        }
    }
    if (!ch->ab) return ans_err(ANS_ECORRUPT, "%s: no array-to-bytes codec", cx->where);
    if (cx->str == ANS_ZSTR_VLEN && ch->ab == ANS_ZAB_BYTES)
        return ans_err(ANS_ECORRUPT, "%s: a string array needs the vlen-utf8 codec", cx->where);
    if (ch->transpose && ch->ab == ANS_ZAB_VLEN_UTF8)
        return ans_err(ANS_EUNSUPPORTED, "%s: transpose of strings is not supported", cx->where);
    return ANS_OK;
}

int ans_zchain_parse_v3(ans_zchain *ch, ans_zshard **shard, const ans_json *codecs,
                        const ans_zchain_ctx *cx)
{
    *shard = NULL;
    return parse_v3_list(ch, shard, codecs, cx, 0);
}

int ans_zchain_parse_v2(ans_zchain *ch, const ans_json *compressor, const ans_json *filters,
                        int order_f, int big_endian, const ans_zchain_ctx *cx)
{
    memset(ch, 0, sizeof *ch);
    ANS_TRY(chain_sizes(ch, cx, cx->shape));
    ch->ab = cx->str == ANS_ZSTR_VLEN ? ANS_ZAB_VLEN_UTF8 : ANS_ZAB_BYTES;
    ch->swap = (big_endian != HOST_BIG) ? cx->swap_unit : 0;
    if (ch->swap == 1) ch->swap = 0;
    if (order_f) {
        for (int d = 0; d < cx->nd; d++) ch->perm[d] = cx->nd - 1 - d;
        ch->transpose = cx->nd > 1;
    }
    int seen_vlen = 0;
    size_t nf = filters && filters->type == ANS_JSON_ARRAY ? ans_json_len(filters) : 0;
    if (filters && filters->type != ANS_JSON_ARRAY && filters->type != ANS_JSON_NULL)
        return ans_err(ANS_ECORRUPT, "%s: 'filters' is not a list", cx->where);
    for (size_t i = 0; i < nf; i++) {
        const char *name;
        const ans_json *conf;
        ANS_TRY(codec_entry(ans_json_at(filters, i), 1, &name, &conf, cx->where));
        ans_zbb_kind k;
        if (!strcmp(name, "vlen-utf8")) {
            if (cx->str != ANS_ZSTR_VLEN || i != 0)
                return ans_err(ANS_ECORRUPT, "%s: vlen-utf8 filter on a non-object dtype",
                               cx->where);
            seen_vlen = 1;
        } else if (bb_kind(name, &k)) {
            ANS_TRY(push_bb(ch, k, conf, cx->where));
        } else {
            return ans_err(ANS_EUNSUPPORTED, "%s: unsupported filter '%s'", cx->where, name);
        }
    }
    if (cx->str == ANS_ZSTR_VLEN && !seen_vlen)
        return ans_err(ANS_EUNSUPPORTED,
                       "%s: object dtype without the vlen-utf8 filter is not supported",
                       cx->where);
    if (ch->transpose && ch->ab == ANS_ZAB_VLEN_UTF8) {
        ch->transpose = 0; /* order of a 1-D string array is irrelevant */
        for (int d = 0; d < cx->nd; d++) ch->perm[d] = d;
    }
    if (compressor && compressor->type != ANS_JSON_NULL) {
        const char *name;
        const ans_json *conf;
        ANS_TRY(codec_entry(compressor, 1, &name, &conf, cx->where));
        ans_zbb_kind k;
        if (!bb_kind(name, &k))
            return ans_err(ANS_EUNSUPPORTED, "%s: unsupported compressor '%s'", cx->where, name);
        ANS_TRY(push_bb(ch, k, conf, cx->where));
    }
    return ANS_OK;
}

/* ---- decoding --------------------------------------------------------------------------------- */

static uint32_t rd32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static const char *bb_name(ans_zbb_kind k)
{
    switch (k) {
    case ANS_ZBB_BLOSC: return "blosc";
    case ANS_ZBB_ZSTD: return "zstd";
    case ANS_ZBB_ZLIB: return "zlib";
    case ANS_ZBB_GZIP: return "gzip";
    case ANS_ZBB_LZ4: return "lz4";
    case ANS_ZBB_CRC32C: return "crc32c";
    }
    return "?";
}

/* The size a compressed stage claims, checked against `want` (exact, when want_known) or a ratio
 * bound. *declared = 1 when the stream states its size exactly. */
static int stage_size(const ans_zbb *bb, const uint8_t *src, size_t len, int want_known,
                      uint64_t want, uint64_t *size, int *declared)
{
    *declared = 0;
    uint64_t claim = 0;
    int rc;
    switch (bb->kind) {
    case ANS_ZBB_BLOSC: {
        size_t n;
        ANS_TRY(ans_blosc_nbytes(src, len, &n));
        claim = n;
        *declared = 1;
        break;
    }
    case ANS_ZBB_LZ4: {
        size_t n;
        ANS_TRY(ans_lz4_nbytes(src, len, &n));
        claim = n;
        *declared = 1;
        break;
    }
    case ANS_ZBB_ZSTD:
        rc = ans_zstd_content_size(src, len, &claim);
        if (rc == ANS_OK) {
            *declared = 1;
        } else if (rc == ANS_EUNSUPPORTED) {
            uint64_t bound = ((uint64_t)len / 4 + 1) * 131072u;
            if (want_known && want > bound)
                return ans_err(ANS_ECORRUPT, "zstd: %zu compressed bytes cannot hold %llu", len,
                               (unsigned long long)want);
            *size = want_known ? want : bound;
            return ANS_OK;
        } else {
            return rc;
        }
        break;
    case ANS_ZBB_ZLIB:
    case ANS_ZBB_GZIP: {
        uint64_t bound = (uint64_t)len * DEFLATE_MAX_RATIO + 64;
        if (want_known && want > bound)
            return ans_err(ANS_ECORRUPT, "%s: %zu compressed bytes cannot hold %llu",
                           bb_name(bb->kind), len, (unsigned long long)want);
        *size = want_known ? want : bound;
        return ANS_OK;
    }
    case ANS_ZBB_CRC32C: break;
    }
    if (want_known && claim != want)
        return ans_err(ANS_ECORRUPT, "%s: stream holds %llu bytes, expected %llu",
                       bb_name(bb->kind), (unsigned long long)claim, (unsigned long long)want);
    if (!want_known && claim > (uint64_t)len * ZSTD_MAX_RATIO + 4096)
        return ans_err(ANS_ECORRUPT, "%s: %zu compressed bytes claim to hold %llu",
                       bb_name(bb->kind), len, (unsigned long long)claim);
    *size = claim;
    return ANS_OK;
}

static int run_stage(const ans_zbb *bb, ans_codec_ctx *cctx, const uint8_t *src, size_t len,
                     uint8_t *dst, size_t cap, size_t *outlen)
{
    switch (bb->kind) {
    case ANS_ZBB_BLOSC: return ans_blosc_decode(cctx, src, len, dst, cap, outlen);
    case ANS_ZBB_ZSTD: return ans_zstd_decode(cctx, src, len, dst, cap, outlen);
    case ANS_ZBB_ZLIB: return ans_zlib_decode(cctx, src, len, dst, cap, outlen, 0);
    case ANS_ZBB_GZIP: return ans_zlib_decode(cctx, src, len, dst, cap, outlen, 1);
    case ANS_ZBB_LZ4: return ans_lz4_decode(src, len, dst, cap, outlen);
    case ANS_ZBB_CRC32C: break;
    }
    return ans_err(ANS_EGENERIC, "internal: not a compressor");
}

static int strip_crc(const ans_zbb *bb, const uint8_t **cur, size_t *curlen)
{
    if (*curlen < 4) return ans_err(ANS_ECORRUPT, "crc32c: %zu bytes, too short", *curlen);
    const uint8_t *data = *cur + (bb->crc_at_start ? 4 : 0);
    const uint8_t *cp = bb->crc_at_start ? *cur : *cur + *curlen - 4;
    size_t n = *curlen - 4;
    uint32_t want = rd32le(cp), got = ans_crc32c(0, data, n);
    if (want != got)
        return ans_err(ANS_ECORRUPT, "crc32c: checksum mismatch (stored 0x%08x, computed 0x%08x)",
                       want, got);
    *cur = data;
    *curlen = n;
    return ANS_OK;
}

/* Decode a stage whose output size is unknown (and not declared): grow the output up to `bound`. */
static int run_stage_grow(const ans_zbb *bb, ans_codec_ctx *cctx, const uint8_t *src, size_t len,
                          ans_buf *out, uint64_t bound, size_t *outlen)
{
    uint64_t cap = (uint64_t)len * 4 + 4096;
    for (;;) {
        if (cap > bound) cap = bound;
        if (cap > SIZE_MAX / 2) return ans_err(ANS_ENOMEM, "%s: output too large", bb_name(bb->kind));
        ANS_TRY(ans_buf_reserve(out, (size_t)cap));
        int rc = run_stage(bb, cctx, src, len, out->data, (size_t)cap, outlen);
        if (rc != ANS_ECORRUPT || cap >= bound) return rc;
        cap *= 4;
    }
}

/* Undo bytes->bytes stages [0, nbb) in reverse. When `want_known`, the final output must be exactly
 * `want` bytes and goes to `final` if not NULL (else a tmp buffer). */
static int undo_bb(const ans_zchain *ch, ans_zws *ws, const uint8_t *src, size_t len,
                   int want_known, uint64_t want, uint8_t *final, ans_buf *final_buf,
                   const uint8_t **out, size_t *outlen)
{
    const uint8_t *cur = src;
    size_t curlen = len;
    int flip = 0;
    for (int i = ch->nbb - 1; i >= 0; i--) {
        const ans_zbb *bb = &ch->bb[i];
        if (bb->kind == ANS_ZBB_CRC32C) {
            ANS_TRY(strip_crc(bb, &cur, &curlen));
            continue;
        }
        /* Output size known when only crc32c stages remain below. */
        int known = want_known;
        uint64_t w = want;
        for (int j = i - 1; j >= 0 && known; j--) {
            if (ch->bb[j].kind != ANS_ZBB_CRC32C) known = 0;
            else if (ans_add_overflow(w, 4, &w)) known = 0;
        }
        uint64_t size = 0;
        int declared = 0;
        ANS_TRY(stage_size(bb, cur, curlen, known, w, &size, &declared));
        uint8_t *dst;
        ans_buf *tb = &ws->tmp[flip];
        int direct = known && w == want && (final || final_buf);
        if (size > SIZE_MAX / 2) return ans_err(ANS_ENOMEM, "%s: output too large", bb_name(bb->kind));
        size_t got;
        if (!known && !declared) {
            ANS_TRY(run_stage_grow(bb, ws->cctx, cur, curlen, tb, size, &got));
            dst = tb->data;
        } else {
            if (direct && final) {
                dst = final;
            } else if (direct) {
                ANS_TRY(ans_buf_reserve(final_buf, (size_t)size));
                dst = final_buf->data;
            } else {
                ANS_TRY(ans_buf_reserve(tb, (size_t)size));
                dst = tb->data;
            }
            ANS_TRY(run_stage(bb, ws->cctx, cur, curlen, dst, (size_t)size, &got));
            if (got != size)
                return ans_err(ANS_ECORRUPT, "%s: decoded %zu bytes, expected %llu",
                               bb_name(bb->kind), got, (unsigned long long)size);
        }
        if (dst == tb->data) flip ^= 1;
        cur = dst;
        curlen = got;
    }
    *out = cur;
    *outlen = curlen;
    return ANS_OK;
}

static void byteswap_n(uint8_t *p, uint64_t nbytes, size_t unit)
{
    ans_byteswap(p, (size_t)(nbytes / unit), unit);
}

/* Stored layout (shape B[i] = U[perm[i]], C order) -> C order of U. */
static void untranspose(const ans_zchain *ch, const uint8_t *src, uint8_t *dst)
{
    int nd = ch->nd;
    size_t es = ch->elsize;
    uint64_t astride[ANS_MAX_NDIM], bshape[ANS_MAX_NDIM], bstride_dst[ANS_MAX_NDIM];
    uint64_t s = 1;
    for (int d = nd - 1; d >= 0; d--) {
        astride[d] = s;
        s *= ch->shape[d];
    }
    for (int i = 0; i < nd; i++) {
        bshape[i] = ch->shape[ch->perm[i]];
        bstride_dst[i] = astride[ch->perm[i]];
    }
    if (ch->nelems == 0) return;
    uint64_t idx[ANS_MAX_NDIM] = {0};
    uint64_t inner = bshape[nd - 1], istride = bstride_dst[nd - 1] * es;
    uint64_t off = 0; /* dst element offset of idx with idx[nd-1] = 0 */
    const uint8_t *sp = src;
    for (;;) {
        uint8_t *dp = dst + off * es;
        switch (es) {
        case 1:
            for (uint64_t k = 0; k < inner; k++) dp[k * istride] = sp[k];
            break;
        case 2:
            for (uint64_t k = 0; k < inner; k++) memcpy(dp + k * istride, sp + k * 2, 2);
            break;
        case 4:
            for (uint64_t k = 0; k < inner; k++) memcpy(dp + k * istride, sp + k * 4, 4);
            break;
        case 8:
            for (uint64_t k = 0; k < inner; k++) memcpy(dp + k * istride, sp + k * 8, 8);
            break;
        default:
            for (uint64_t k = 0; k < inner; k++) memcpy(dp + k * istride, sp + k * es, es);
            break;
        }
        sp += inner * es;
        int d = nd - 2;
        for (; d >= 0; d--) {
            idx[d]++;
            off += bstride_dst[d];
            if (idx[d] < bshape[d]) break;
            off -= bstride_dst[d] * bshape[d];
            idx[d] = 0;
        }
        if (d < 0) break;
    }
}

int ans_zchain_decode(const ans_zchain *ch, ans_zws *ws, const uint8_t *src, size_t len,
                      uint8_t *dst, const uint8_t **result)
{
    const uint8_t *cur;
    size_t curlen;
    uint64_t want = ch->nbytes;
    /* Without a transpose the last stage can write straight into the destination. */
    uint8_t *final = ch->transpose ? NULL : dst;
    ans_buf *final_buf = ch->transpose || dst ? NULL : &ws->chunk;
    ANS_TRY(undo_bb(ch, ws, src, len, 1, want, final, final_buf, &cur, &curlen));
    if (curlen != want)
        return ans_err(ANS_ECORRUPT, "decoded %zu bytes, expected %llu", curlen,
                       (unsigned long long)want);
    if (!dst && !ch->transpose && !ch->swap) {
        *result = cur; /* already C order, native: use it where it lies (no copy) */
        return ANS_OK;
    }
    uint8_t *target = dst;
    if (!target) {
        if (cur != ws->chunk.data) ANS_TRY(ans_buf_reserve(&ws->chunk, (size_t)want));
        target = ws->chunk.data;
    }
    if (ch->transpose) {
        untranspose(ch, cur, target); /* cur is never ws->chunk here */
    } else if (cur != target && want) {
        memcpy(target, cur, (size_t)want);
    }
    if (ch->swap) byteswap_n(target, want, ch->swap);
    *result = target;
    return ANS_OK;
}

/* The unit is a bare blosc frame of the decoded unit's bytes. */
static int blosc_only(const ans_zchain *ch)
{
    return !ch->transpose && !ch->swap && ch->nbb == 1 && ch->bb[0].kind == ANS_ZBB_BLOSC &&
           ch->nbytes <= SIZE_MAX;
}

int ans_zchain_head_len(const ans_zchain *ch, const uint8_t *src, size_t len, size_t *hlen)
{
    *hlen = 0;
    if (!blosc_only(ch)) return ANS_EUNSUPPORTED;
    return ans_blosc_head_len(src, len, hlen);
}

int ans_zchain_span(const ans_zchain *ch, const uint8_t *head, size_t hlen, size_t len,
                    uint64_t lo, uint64_t hi, uint64_t *c0, uint64_t *c1)
{
    if (!blosc_only(ch)) return ANS_EUNSUPPORTED;
    size_t a, e;
    ANS_TRY(ans_blosc_span(head, hlen, len, (size_t)ch->nbytes, (size_t)lo, (size_t)hi, &a, &e));
    *c0 = a;
    *c1 = e;
    return ANS_OK;
}

int ans_zchain_decode_range(const ans_zchain *ch, ans_zws *ws, const uint8_t *src, size_t len,
                            uint64_t lo, uint64_t hi, const uint8_t **result)
{
    return ans_zchain_decode_range_in(ch, ws, src, len, lo, hi, 0, len, result);
}

int ans_zchain_decode_range_in(const ans_zchain *ch, ans_zws *ws, const uint8_t *src, size_t len,
                               uint64_t lo, uint64_t hi, uint64_t w0, uint64_t w1,
                               const uint8_t **result)
{
    int part = w0 > 0 || w1 < len;
    if (lo < hi && hi <= ch->nbytes && blosc_only(ch)) {
        ANS_TRY(ans_buf_reserve(&ws->chunk, (size_t)(hi - lo)));
        int rc = ans_blosc_decode_range_in(src, len, (size_t)ch->nbytes, (size_t)lo, (size_t)hi,
                                           (size_t)w0, (size_t)w1, ws->chunk.data, &ws->tmp[0]);
        if (rc == ANS_OK) {
            *result = ws->chunk.data;
            return ANS_OK;
        }
        if (rc != ANS_EUNSUPPORTED || part) return rc;
    } else if (part) {
        return ans_err(ANS_EINVAL, "internal: a part of a unit that is not one blosc frame");
    }
    const uint8_t *res = NULL;
    ANS_TRY(ans_zchain_decode(ch, ws, src, len, NULL, &res));
    *result = res + lo;
    return ANS_OK;
}

int ans_zchain_can_scatter(const ans_zchain *ch)
{
    return blosc_only(ch);
}

int ans_zchain_scatter(const ans_zchain *ch, ans_zws *ws, const uint8_t *src, size_t len,
                       uint64_t w0, uint64_t w1, const ans_bseg *segs, size_t nsegs, size_t elsize,
                       ans_bsink put, void *ctx)
{
    if (!blosc_only(ch) || w1 > SIZE_MAX) return ANS_EUNSUPPORTED;
    return ans_blosc_scatter(src, len, (size_t)ch->nbytes, (size_t)w0, (size_t)w1, segs, nsegs,
                             elsize, put, ctx, &ws->tmp[0]);
}

int ans_zchain_decode_bytes(const ans_zchain *ch, ans_zws *ws, const uint8_t *src, size_t len,
                            const uint8_t **out, size_t *outlen)
{
    return undo_bb(ch, ws, src, len, 0, 0, NULL, NULL, out, outlen);
}

/* ---- shard index ------------------------------------------------------------------------------ */

static uint64_t rd64(const uint8_t *p, int big)
{
    uint64_t v = 0;
    if (big)
        for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    else
        for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

int ans_zshard_parse_index(const ans_zshard *sh, const uint8_t *raw, uint64_t total,
                           uint64_t *ent)
{
    uint64_t n = sh->n;
    if (sh->index_crc) {
        uint32_t want = rd32le(raw + 16 * n), got = ans_crc32c(0, raw, (size_t)(16 * n));
        if (want != got)
            return ans_err(ANS_ECORRUPT,
                           "shard index checksum mismatch (stored 0x%08x, computed 0x%08x)", want,
                           got);
    }
    for (uint64_t i = 0; i < 2 * n; i++) {
        uint64_t v = rd64(raw + 8 * i, sh->index_big);
        ent[i] = v; /* same position: safe when ent aliases raw */
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t off = ent[2 * i], nb = ent[2 * i + 1], end;
        if (off == UINT64_MAX && nb == UINT64_MAX) continue;
        if (ans_add_overflow(off, nb, &end) || end > total)
            return ans_err(ANS_ECORRUPT,
                           "shard index entry %llu (offset %llu, %llu bytes) lies outside the "
                           "%llu-byte shard",
                           (unsigned long long)i, (unsigned long long)off,
                           (unsigned long long)nb, (unsigned long long)total);
    }
    return ANS_OK;
}
