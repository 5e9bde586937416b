/* zarr_meta.c - array metadata: .zarray (v2) and zarr.json (v3) -> ans_zarray.
 *
 * Data types (numpy typestrs in v2, names in v3), chunk grid, chunk key encoding and fill values. The
 * codec lists are handed to zarr_codecs.c. Every size derived from metadata is overflow-checked here
 * (ANS_ECORRUPT), so the read path can multiply freely. */
#include "zarr/zarr.h"

#include "common/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- data types ------------------------------------------------------------------------------- */

int ans_zmeta_parse_typestr(const char *s, ans_dtype *dtype, ans_zstr_kind *str, size_t *elsize,
                            int *big_endian, const char *where)
{
    *dtype = ANS_DTYPE_INVALID;
    *str = ANS_ZSTR_NONE;
    *elsize = 0;
    *big_endian = 0;
    size_t n = strlen(s);
    if (n < 2) goto bad;
    char bo = s[0], kind = s[1];
    if (bo != '<' && bo != '>' && bo != '|' && bo != '=') goto bad;
    *big_endian = bo == '>';
    unsigned long long size = 0;
    const char *p = s + 2;
    if (*p) {
        char *end;
        if (*p < '0' || *p > '9') goto bad;
        size = strtoull(p, &end, 10);
        if (*end) goto bad;
    } else if (kind != 'O') {
        goto bad;
    }
    switch (kind) {
    case 'b':
        if (size != 1) goto bad;
        *dtype = ANS_DTYPE_BOOL;
        break;
    case 'i':
        *dtype = size == 1   ? ANS_DTYPE_INT8
                 : size == 2 ? ANS_DTYPE_INT16
                 : size == 4 ? ANS_DTYPE_INT32
                 : size == 8 ? ANS_DTYPE_INT64
                             : ANS_DTYPE_INVALID;
        break;
    case 'u':
        *dtype = size == 1   ? ANS_DTYPE_UINT8
                 : size == 2 ? ANS_DTYPE_UINT16
                 : size == 4 ? ANS_DTYPE_UINT32
                 : size == 8 ? ANS_DTYPE_UINT64
                             : ANS_DTYPE_INVALID;
        break;
    case 'f':
        *dtype = size == 2   ? ANS_DTYPE_FLOAT16
                 : size == 4 ? ANS_DTYPE_FLOAT32
                 : size == 8 ? ANS_DTYPE_FLOAT64
                             : ANS_DTYPE_INVALID;
        break;
    case 'c':
        *dtype = size == 8 ? ANS_DTYPE_COMPLEX64 : size == 16 ? ANS_DTYPE_COMPLEX128
                                                              : ANS_DTYPE_INVALID;
        break;
    case 'U':
        if (size == 0 || size > (1u << 28)) goto bad;
        *dtype = ANS_DTYPE_STRING;
        *str = ANS_ZSTR_UTF32;
        *elsize = (size_t)size * 4;
        return ANS_OK;
    case 'S':
        if (size == 0 || size > (1u << 30)) goto bad;
        *dtype = ANS_DTYPE_STRING;
        *str = ANS_ZSTR_BYTES;
        *elsize = (size_t)size;
        return ANS_OK;
    case 'O':
        if (*p) goto bad;
        *dtype = ANS_DTYPE_STRING;
        *str = ANS_ZSTR_VLEN;
        return ANS_OK;
    default:
        return ans_err(ANS_EUNSUPPORTED, "%s: unsupported dtype '%s'", where, s);
    }
    if (*dtype == ANS_DTYPE_INVALID)
        return ans_err(ANS_EUNSUPPORTED, "%s: unsupported dtype '%s'", where, s);
    *elsize = ans_dtype_size(*dtype);
    if (*elsize == 1) *big_endian = 0;
    return ANS_OK;
bad:
    return ans_err(ANS_ECORRUPT, "%s: malformed dtype '%s'", where, s);
}

static const struct {
    const char *name;
    ans_dtype dtype;
} v3_types[] = {
    {"bool", ANS_DTYPE_BOOL},         {"int8", ANS_DTYPE_INT8},
    {"int16", ANS_DTYPE_INT16},       {"int32", ANS_DTYPE_INT32},
    {"int64", ANS_DTYPE_INT64},       {"uint8", ANS_DTYPE_UINT8},
    {"uint16", ANS_DTYPE_UINT16},     {"uint32", ANS_DTYPE_UINT32},
    {"uint64", ANS_DTYPE_UINT64},     {"float16", ANS_DTYPE_FLOAT16},
    {"float32", ANS_DTYPE_FLOAT32},   {"float64", ANS_DTYPE_FLOAT64},
    {"complex64", ANS_DTYPE_COMPLEX64}, {"complex128", ANS_DTYPE_COMPLEX128},
};

static int parse_v3_dtype(const ans_json *dt, ans_dtype *dtype, ans_zstr_kind *str, size_t *elsize,
                          const char *where)
{
    *str = ANS_ZSTR_NONE;
    const char *name = ans_json_get_str(dt);
    const ans_json *conf = NULL;
    if (!name && dt && dt->type == ANS_JSON_OBJECT) {
        name = ans_json_get_str(ans_json_get(dt, "name"));
        conf = ans_json_get(dt, "configuration");
    }
    if (!name) return ans_err(ANS_ECORRUPT, "%s: data_type is missing or malformed", where);
    for (size_t i = 0; i < sizeof v3_types / sizeof v3_types[0]; i++) {
        if (!strcmp(name, v3_types[i].name)) {
            *dtype = v3_types[i].dtype;
            *elsize = ans_dtype_size(*dtype);
            return ANS_OK;
        }
    }
    if (!strcmp(name, "string") || !strcmp(name, "variable_length_utf8")) {
        *dtype = ANS_DTYPE_STRING;
        *str = ANS_ZSTR_VLEN;
        *elsize = 0;
        return ANS_OK;
    }
    if (!strcmp(name, "fixed_length_utf32") || !strcmp(name, "null_terminated_bytes")) {
        uint64_t lb;
        int utf32 = name[0] == 'f';
        if (ans_json_get_u64(ans_json_get(conf, "length_bytes"), &lb) != 0 || lb == 0 ||
            lb > (1u << 30) || (utf32 && lb % 4))
            return ans_err(ANS_ECORRUPT, "%s: data_type '%s' needs a valid length_bytes", where,
                           name);
        *dtype = ANS_DTYPE_STRING;
        *str = utf32 ? ANS_ZSTR_UTF32 : ANS_ZSTR_BYTES;
        *elsize = (size_t)lb;
        return ANS_OK;
    }
    return ans_err(ANS_EUNSUPPORTED, "%s: unsupported data_type '%s'", where, name);
}

/* ---- fill values ------------------------------------------------------------------------------ */

static uint16_t half_from_double(double d)
{
    uint64_t b;
    memcpy(&b, &d, 8);
    uint16_t sign = (uint16_t)((b >> 48) & 0x8000);
    int exp = (int)((b >> 52) & 0x7ff);
    uint64_t man = b & 0xFFFFFFFFFFFFFull;
    if (exp == 0x7ff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 | (man >> 42) : 0));
    int e = exp - 1023 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp == 0 || e < -10) return sign; /* zero, double subnormals, underflow */
    uint64_t h, rem, halfway;
    int shift;
    if (e <= 0) {
        man |= 1ull << 52;
        shift = 43 - e;
        h = man >> shift;
    } else {
        shift = 42;
        h = ((uint64_t)e << 10) | (man >> 42);
    }
    rem = man & ((1ull << shift) - 1);
    halfway = 1ull << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

/* A float fill: number, "NaN", "Infinity", "-Infinity" or "0x<hex bits>" of `size` bytes. */
static int parse_float_fill(const ans_json *v, size_t size, uint8_t *out, const char *where)
{
    double d;
    const char *s = ans_json_get_str(v);
    if (!v || v->type == ANS_JSON_NULL) {
        memset(out, 0, size);
        return ANS_OK;
    }
    if (s) {
        if (!strcmp(s, "NaN")) {
            d = NAN;
        } else if (!strcmp(s, "Infinity") || !strcmp(s, "+Infinity")) {
            d = INFINITY;
        } else if (!strcmp(s, "-Infinity")) {
            d = -INFINITY;
        } else if ((s[0] == '0') && (s[1] == 'x' || s[1] == 'X')) {
            size_t nhex = strlen(s + 2);
            if (nhex == 0 || nhex > size * 2) goto bad;
            uint64_t bits = 0;
            for (const char *p = s + 2; *p; p++) {
                int c = *p, x;
                if (c >= '0' && c <= '9') x = c - '0';
                else if (c >= 'a' && c <= 'f') x = c - 'a' + 10;
                else if (c >= 'A' && c <= 'F') x = c - 'A' + 10;
                else goto bad;
                bits = (bits << 4) | (uint64_t)x;
            }
            if (size == 2) {
                uint16_t h = (uint16_t)bits;
                memcpy(out, &h, 2);
            } else if (size == 4) {
                uint32_t w = (uint32_t)bits;
                memcpy(out, &w, 4);
            } else {
                memcpy(out, &bits, 8);
            }
            return ANS_OK;
        } else {
            goto bad;
        }
    } else if (ans_json_get_double(v, &d) != 0) {
        goto bad;
    }
    if (size == 2) {
        uint16_t h = half_from_double(d);
        memcpy(out, &h, 2);
    } else if (size == 4) {
        float f = (float)d;
        memcpy(out, &f, 4);
    } else {
        memcpy(out, &d, 8);
    }
    return ANS_OK;
bad:
    return ans_err(ANS_ECORRUPT, "%s: malformed floating-point fill_value", where);
}

int ans_zmeta_parse_fill(const ans_json *v, ans_dtype dtype, uint8_t out[16], const char *where)
{
    memset(out, 0, 16);
    if (!v || v->type == ANS_JSON_NULL) return ANS_OK; /* undefined: read as zero */
    switch (dtype) {
    case ANS_DTYPE_BOOL: {
        int b;
        int64_t i;
        if (ans_json_get_bool(v, &b) == 0) out[0] = (uint8_t)(b != 0);
        else if (ans_json_get_i64(v, &i) == 0) out[0] = (uint8_t)(i != 0);
        else return ans_err(ANS_ECORRUPT, "%s: malformed bool fill_value", where);
        return ANS_OK;
    }
    case ANS_DTYPE_INT8:
    case ANS_DTYPE_INT16:
    case ANS_DTYPE_INT32:
    case ANS_DTYPE_INT64: {
        int64_t i;
        int b;
        if (ans_json_get_i64(v, &i) != 0) {
            if (ans_json_get_bool(v, &b) != 0)
                return ans_err(ANS_ECORRUPT, "%s: malformed integer fill_value", where);
            i = b;
        }
        size_t sz = ans_dtype_size(dtype);
        int64_t lo = sz == 8 ? INT64_MIN : -((int64_t)1 << (sz * 8 - 1));
        int64_t hi = sz == 8 ? INT64_MAX : ((int64_t)1 << (sz * 8 - 1)) - 1;
        if (i < lo || i > hi)
            return ans_err(ANS_ECORRUPT, "%s: fill_value %lld out of range for %s", where,
                           (long long)i, ans_dtype_name(dtype));
        int8_t i8 = (int8_t)i;
        int16_t i16 = (int16_t)i;
        int32_t i32 = (int32_t)i;
        if (sz == 1) memcpy(out, &i8, 1);
        else if (sz == 2) memcpy(out, &i16, 2);
        else if (sz == 4) memcpy(out, &i32, 4);
        else memcpy(out, &i, 8);
        return ANS_OK;
    }
    case ANS_DTYPE_UINT8:
    case ANS_DTYPE_UINT16:
    case ANS_DTYPE_UINT32:
    case ANS_DTYPE_UINT64: {
        uint64_t u;
        int b;
        if (ans_json_get_u64(v, &u) != 0) {
            if (ans_json_get_bool(v, &b) != 0)
                return ans_err(ANS_ECORRUPT, "%s: malformed unsigned fill_value", where);
            u = (uint64_t)b;
        }
        size_t sz = ans_dtype_size(dtype);
        if (sz < 8 && u >> (sz * 8))
            return ans_err(ANS_ECORRUPT, "%s: fill_value %llu out of range for %s", where,
                           (unsigned long long)u, ans_dtype_name(dtype));
        uint8_t u8 = (uint8_t)u;
        uint16_t u16 = (uint16_t)u;
        uint32_t u32 = (uint32_t)u;
        if (sz == 1) memcpy(out, &u8, 1);
        else if (sz == 2) memcpy(out, &u16, 2);
        else if (sz == 4) memcpy(out, &u32, 4);
        else memcpy(out, &u, 8);
        return ANS_OK;
    }
    case ANS_DTYPE_FLOAT16: return parse_float_fill(v, 2, out, where);
    case ANS_DTYPE_FLOAT32: return parse_float_fill(v, 4, out, where);
    case ANS_DTYPE_FLOAT64: return parse_float_fill(v, 8, out, where);
    case ANS_DTYPE_COMPLEX64:
    case ANS_DTYPE_COMPLEX128: {
        size_t half = dtype == ANS_DTYPE_COMPLEX64 ? 4 : 8;
        if (v->type == ANS_JSON_ARRAY) {
            if (ans_json_len(v) != 2)
                return ans_err(ANS_ECORRUPT, "%s: complex fill_value needs 2 numbers", where);
            ANS_TRY(parse_float_fill(ans_json_at(v, 0), half, out, where));
            return parse_float_fill(ans_json_at(v, 1), half, out + half, where);
        }
        return parse_float_fill(v, half, out, where);
    }
    case ANS_DTYPE_STRING:
    case ANS_DTYPE_INVALID: break;
    }
    return ANS_OK;
}

static int b64val(int c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

/* Decode base64 `s` into a new string; NULL (no error set) if `s` is not base64. */
static char *b64_decode(const char *s, size_t n, size_t *outlen)
{
    while (n && s[n - 1] == '=') n--;
    char *o = malloc(n * 3 / 4 + 2);
    if (!o) return NULL;
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64val((unsigned char)s[i]);
        if (v < 0) {
            free(o);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[k++] = (char)((acc >> bits) & 0xff);
        }
    }
    o[k] = '\0';
    *outlen = k;
    return o;
}

static int parse_string_fill(ans_zarray *za, const ans_json *v, const char *where)
{
    const char *s = ans_json_get_str(v);
    size_t n = s ? v->v.s.len : 0;
    char *copy = NULL;
    if (s && za->zarr_format == 2 && za->str == ANS_ZSTR_BYTES && n) {
        size_t k;
        copy = b64_decode(s, n, &k);
        if (copy) n = k;
    }
    if (!copy) copy = ans_strndup(s ? s : "", n);
    if (!copy) return ANS_ENOMEM;
    (void)where;
    /* A fixed-width fill is cut to the width, trailing NULs dropped like numpy does. */
    if (za->str == ANS_ZSTR_BYTES && n > za->elsize) n = za->elsize;
    while (n && copy[n - 1] == '\0') n--;
    copy[n] = '\0';
    za->fill_str = copy;
    za->fill_str_len = n;
    return ANS_OK;
}

/* ---- chunk keys ------------------------------------------------------------------------------- */

static size_t put_u64(char *p, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++) p[i] = tmp[n - 1 - i];
    return n;
}

int ans_zkey(const ans_zarray *za, const uint64_t *coord, char *buf, size_t cap)
{
    size_t plen = strlen(za->prefix);
    /* prefix + "c" + nd * (sep + 20 digits) + NUL */
    if (plen + 2 + (size_t)za->nd * 21 + 1 > cap)
        return ans_err(ANS_EINVAL, "chunk key of '%s' too long", za->base.path);
    memcpy(buf, za->prefix, plen);
    char *p = buf + plen;
    if (za->key_default) {
        *p++ = 'c';
        if (za->base.ndim > 0)
            for (int d = 0; d < za->nd; d++) {
                *p++ = za->sep;
                p += put_u64(p, coord[d]);
            }
    } else if (za->base.ndim == 0) {
        *p++ = '0';
    } else {
        for (int d = 0; d < za->nd; d++) {
            if (d) *p++ = za->sep;
            p += put_u64(p, coord[d]);
        }
    }
    *p = '\0';
    return ANS_OK;
}

/* ---- arrays ----------------------------------------------------------------------------------- */

static int parse_shape(const ans_json *v, uint64_t *out, int *nd, const char *what,
                       const char *where)
{
    if (!v || v->type != ANS_JSON_ARRAY)
        return ans_err(ANS_ECORRUPT, "%s: '%s' is missing or not a list", where, what);
    size_t n = ans_json_len(v);
    if (n > ANS_MAX_NDIM)
        return ans_err(ANS_EUNSUPPORTED, "%s: %zu dimensions (at most %d supported)", where, n,
                       ANS_MAX_NDIM);
    for (size_t i = 0; i < n; i++)
        if (ans_json_get_u64(ans_json_at(v, i), &out[i]) != 0)
            return ans_err(ANS_ECORRUPT, "%s: '%s' holds a non-integer or negative value", where,
                           what);
    *nd = (int)n;
    return ANS_OK;
}

static const char *const v3_array_keys[] = {
    "zarr_format", "node_type",      "shape",           "data_type",
    "chunk_grid",  "chunk_key_encoding", "fill_value",  "codecs",
    "attributes",  "storage_transformers", "dimension_names",
};

static int check_must_understand(const ans_json *meta, const char *where)
{
    for (size_t i = 0; i < meta->v.o.n; i++) {
        const char *k = meta->v.o.keys[i];
        int known = 0;
        for (size_t j = 0; j < sizeof v3_array_keys / sizeof v3_array_keys[0]; j++)
            if (!strcmp(k, v3_array_keys[j])) known = 1;
        if (known) continue;
        const ans_json *v = meta->v.o.vals[i];
        int mu = 1;
        if (v && v->type == ANS_JSON_OBJECT) {
            int b;
            if (ans_json_get_bool(ans_json_get(v, "must_understand"), &b) == 0) mu = b;
        }
        if (mu)
            return ans_err(ANS_EUNSUPPORTED,
                           "%s: unknown metadata field '%s' that must be understood", where, k);
    }
    return ANS_OK;
}

int ans_zmeta_parse_array(ans_zarray *za, const ans_json *meta, int zarr_format, const char *where)
{
    if (!meta || meta->type != ANS_JSON_OBJECT)
        return ans_err(ANS_ECORRUPT, "%s: array metadata is not a JSON object", where);
    za->zarr_format = zarr_format;
    uint64_t shape[ANS_MAX_NDIM], chunks[ANS_MAX_NDIM];
    int nd = 0, ndc = 0;
    ans_dtype dtype;
    size_t elsize;
    int big = 0, order_f = 0;
    const ans_json *codecs = NULL, *compressor = NULL, *filters = NULL;
    ANS_TRY(parse_shape(ans_json_get(meta, "shape"), shape, &nd, "shape", where));

    if (zarr_format == 2) {
        ANS_TRY(parse_shape(ans_json_get(meta, "chunks"), chunks, &ndc, "chunks", where));
        const char *ts = ans_json_get_str(ans_json_get(meta, "dtype"));
        if (!ts) {
            if (ans_json_get(meta, "dtype"))
                return ans_err(ANS_EUNSUPPORTED, "%s: structured dtypes are not supported", where);
            return ans_err(ANS_ECORRUPT, "%s: 'dtype' is missing", where);
        }
        ANS_TRY(ans_zmeta_parse_typestr(ts, &dtype, &za->str, &elsize, &big, where));
        za->dtype_name = ans_strdup(ts);
        if (!za->dtype_name) return ANS_ENOMEM;
        const char *order = ans_json_get_str(ans_json_get(meta, "order"));
        if (order && strcmp(order, "C") && strcmp(order, "F"))
            return ans_err(ANS_ECORRUPT, "%s: order '%s' is neither C nor F", where, order);
        order_f = order && !strcmp(order, "F");
        const ans_json *sepj = ans_json_get(meta, "dimension_separator");
        const char *sep = ans_json_get_str(sepj);
        if (sepj && sepj->type != ANS_JSON_NULL &&
            (!sep || (strcmp(sep, ".") && strcmp(sep, "/"))))
            return ans_err(ANS_ECORRUPT, "%s: dimension_separator must be '.' or '/'", where);
        za->sep = sep ? sep[0] : '.';
        za->key_default = 0;
        compressor = ans_json_get(meta, "compressor");
        filters = ans_json_get(meta, "filters");
        /* describe: [filters..., compressor] */
        za->codecs_json = ans_json_new_array();
        if (!za->codecs_json) return ANS_ENOMEM;
        for (size_t i = 0; filters && filters->type == ANS_JSON_ARRAY && i < ans_json_len(filters);
             i++) {
            ans_json *c = ans_json_clone(ans_json_at(filters, i));
            if (!c || ans_json_push(za->codecs_json, c) < 0) return ANS_ENOMEM;
        }
        if (compressor && compressor->type == ANS_JSON_OBJECT) {
            ans_json *c = ans_json_clone(compressor);
            if (!c || ans_json_push(za->codecs_json, c) < 0) return ANS_ENOMEM;
        }
    } else {
        ANS_TRY(check_must_understand(meta, where));
        const char *nt = ans_json_get_str(ans_json_get(meta, "node_type"));
        if (!nt || strcmp(nt, "array"))
            return ans_err(ANS_ECORRUPT, "%s: node_type is not \"array\"", where);
        const ans_json *st = ans_json_get(meta, "storage_transformers");
        if (st && st->type != ANS_JSON_NULL && ans_json_len(st) > 0)
            return ans_err(ANS_EUNSUPPORTED, "%s: storage transformers are not supported", where);
        const ans_json *dt = ans_json_get(meta, "data_type");
        ANS_TRY(parse_v3_dtype(dt, &dtype, &za->str, &elsize, where));
        const char *dn = ans_json_get_str(dt);
        if (!dn) dn = ans_json_get_str(ans_json_get(dt, "name"));
        za->dtype_name = ans_strdup(dn ? dn : "?");
        if (!za->dtype_name) return ANS_ENOMEM;
        const ans_json *grid = ans_json_get(meta, "chunk_grid");
        const char *gname = ans_json_get_str(ans_json_get(grid, "name"));
        if (!gname) return ans_err(ANS_ECORRUPT, "%s: chunk_grid is missing", where);
        if (strcmp(gname, "regular"))
            return ans_err(ANS_EUNSUPPORTED, "%s: unsupported chunk grid '%s'", where, gname);
        ANS_TRY(parse_shape(ans_json_get(ans_json_get(grid, "configuration"), "chunk_shape"),
                            chunks, &ndc, "chunk_shape", where));
        const ans_json *cke = ans_json_get(meta, "chunk_key_encoding");
        const char *kname = ans_json_get_str(ans_json_get(cke, "name"));
        const ans_json *ksepj = ans_json_get(ans_json_get(cke, "configuration"), "separator");
        const char *ksep = ans_json_get_str(ksepj);
        if (!kname) return ans_err(ANS_ECORRUPT, "%s: chunk_key_encoding is missing", where);
        if (!strcmp(kname, "default")) {
            za->key_default = 1;
            za->sep = '/';
        } else if (!strcmp(kname, "v2")) {
            za->key_default = 0;
            za->sep = '.';
        } else {
            return ans_err(ANS_EUNSUPPORTED, "%s: unsupported chunk key encoding '%s'", where,
                           kname);
        }
        if (ksepj) {
            if (!ksep || (strcmp(ksep, ".") && strcmp(ksep, "/")))
                return ans_err(ANS_ECORRUPT, "%s: chunk key separator must be '.' or '/'", where);
            za->sep = ksep[0];
        }
        codecs = ans_json_get(meta, "codecs");
        if (!codecs || codecs->type != ANS_JSON_ARRAY || ans_json_len(codecs) == 0)
            return ans_err(ANS_ECORRUPT, "%s: 'codecs' is missing or empty", where);
        za->codecs_json = ans_json_clone(codecs);
        if (!za->codecs_json) return ANS_ENOMEM;
    }
    if (ndc != nd)
        return ans_err(ANS_ECORRUPT, "%s: chunk shape has %d dimensions, the array %d", where, ndc,
                       nd);
    for (int d = 0; d < nd; d++)
        if (chunks[d] == 0) return ans_err(ANS_ECORRUPT, "%s: chunk shape has a zero", where);

    ANS_TRY(ans_array_init_shape(&za->base, nd, shape, dtype));
    za->elsize = elsize;
    za->nd = nd ? nd : 1;
    for (int d = 0; d < za->nd; d++) {
        za->shp[d] = nd ? shape[d] : 1;
        za->chunk[d] = nd ? chunks[d] : 1;
    }

    /* Fill value. */
    const ans_json *fv = ans_json_get(meta, "fill_value");
    if (dtype == ANS_DTYPE_STRING) {
        ANS_TRY(parse_string_fill(za, fv, where));
        za->fill_zero = 1;
    } else {
        ANS_TRY(ans_zmeta_parse_fill(fv, dtype, za->fill, where));
        za->fill_zero = 1;
        for (size_t i = 0; i < elsize; i++)
            if (za->fill[i]) za->fill_zero = 0;
    }

    /* Codec chain. */
    size_t swap_unit = 0;
    if (dtype == ANS_DTYPE_STRING) swap_unit = za->str == ANS_ZSTR_UTF32 ? 4 : 0;
    else if (dtype == ANS_DTYPE_COMPLEX64 || dtype == ANS_DTYPE_COMPLEX128) swap_unit = elsize / 2;
    else if (elsize > 1) swap_unit = elsize;
    ans_zchain_ctx cx = {where, za->nd, za->chunk, elsize, swap_unit, za->str};
    if (zarr_format == 2)
        ANS_TRY(ans_zchain_parse_v2(&za->chain, compressor, filters, order_f && nd > 1, big, &cx));
    else
        ANS_TRY(ans_zchain_parse_v3(&za->chain, &za->shard, codecs, &cx));

    if (za->shard) {
        za->uchain = &za->shard->inner;
        for (int d = 0; d < za->nd; d++) za->unit[d] = za->shard->inner.shape[d];
    } else {
        za->uchain = &za->chain;
        for (int d = 0; d < za->nd; d++) za->unit[d] = za->chunk[d];
    }
    if (dtype == ANS_DTYPE_STRING && nd > 1)
        return ans_err(ANS_EUNSUPPORTED, "%s: string arrays with %d dimensions are not supported",
                       where, nd);
    /* Grid sizes; the shard grid must be linearly indexable for the index cache. */
    uint64_t nshards = 1;
    for (int d = 0; d < za->nd; d++) {
        za->ugrid[d] = za->shp[d] / za->unit[d] + (za->shp[d] % za->unit[d] != 0);
        uint64_t sg = za->shp[d] / za->chunk[d] + (za->shp[d] % za->chunk[d] != 0);
        if (ans_mul_overflow(nshards, sg ? sg : 1, &nshards))
            return ans_err(ANS_EUNSUPPORTED, "%s: too many chunks", where);
    }
    return ANS_OK;
}
