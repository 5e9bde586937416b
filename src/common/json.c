/* json.c - JSON reader and writer (see json.h).
 *
 * The parser is recursive descent; recursion depth is bounded by ANS_JSON_MAX_DEPTH. Nodes are
 * individually allocated so that builders and parsed trees mix freely. Objects with many members
 * get a hash index over their keys (consolidated metadata has one member per node of the store, and
 * the readers look up each of them). */
#include "common/json.h"

#include "common/error.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Objects with at least this many members get a hash index. */
#define JSON_INDEX_MIN 16

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* ---------------------------------------------------------------------------------------------- */
/* Nodes and builders                                                                              */

static ans_json *node_new(ans_json_type type)
{
    ans_json *j = ans_calloc(1, sizeof *j);
    if (j) j->type = type;
    return j;
}

void ans_json_free(ans_json *j)
{
    if (!j) return;
    switch (j->type) {
    case ANS_JSON_STRING:
        free(j->v.s.ptr);
        break;
    case ANS_JSON_ARRAY:
        for (size_t i = 0; i < j->v.a.n; i++) ans_json_free(j->v.a.items[i]);
        free(j->v.a.items);
        break;
    case ANS_JSON_OBJECT:
        for (size_t i = 0; i < j->v.o.n; i++) {
            free(j->v.o.keys[i]);
            ans_json_free(j->v.o.vals[i]);
        }
        free(j->v.o.keys);
        free(j->v.o.vals);
        free(j->v.o.index);
        break;
    default:
        break;
    }
    free(j);
}

ans_json *ans_json_new_null(void)
{
    return node_new(ANS_JSON_NULL);
}

ans_json *ans_json_new_bool(int b)
{
    ans_json *j = node_new(ANS_JSON_BOOL);
    if (j) j->v.b = b != 0;
    return j;
}

ans_json *ans_json_new_int(int64_t i)
{
    ans_json *j = node_new(ANS_JSON_INT);
    if (j) j->v.i = i;
    return j;
}

ans_json *ans_json_new_uint(uint64_t u)
{
    /* Keep the invariant the parser establishes: UINT only above INT64_MAX. */
    if (u <= (uint64_t)INT64_MAX) return ans_json_new_int((int64_t)u);
    ans_json *j = node_new(ANS_JSON_UINT);
    if (j) j->v.u = u;
    return j;
}

ans_json *ans_json_new_double(double d)
{
    ans_json *j = node_new(ANS_JSON_DOUBLE);
    if (j) j->v.d = d;
    return j;
}

ans_json *ans_json_new_strn(const char *s, size_t n)
{
    if (!s && n) {
        ans_err(ANS_EINVAL, "JSON: NULL string");
        return NULL;
    }
    ans_json *j = node_new(ANS_JSON_STRING);
    if (!j) return NULL;
    j->v.s.ptr = ans_strndup(s ? s : "", n);
    if (!j->v.s.ptr) {
        free(j);
        return NULL;
    }
    j->v.s.len = n;
    return j;
}

ans_json *ans_json_new_str(const char *s)
{
    return ans_json_new_strn(s, s ? strlen(s) : 0);
}

ans_json *ans_json_new_array(void)
{
    return node_new(ANS_JSON_ARRAY);
}

ans_json *ans_json_new_object(void)
{
    return node_new(ANS_JSON_OBJECT);
}

/* Grow a pointer array to hold at least n + 1 entries (amortised doubling). */
static int grow(void **items, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap) return ANS_OK;
    size_t ncap = *cap ? *cap * 2 : 4;
    if (ncap < *cap || ncap > SIZE_MAX / elem) return ans_err(ANS_ENOMEM, "JSON: too many items");
    void *p = ans_realloc(*items, ncap * elem);
    if (!p) return ANS_ENOMEM;
    *items = p;
    *cap = ncap;
    return ANS_OK;
}

static int arr_append(ans_json *a, ans_json *item)
{
    void *items = a->v.a.items;
    ANS_TRY(grow(&items, &a->v.a.cap, a->v.a.n, sizeof *a->v.a.items));
    a->v.a.items = items;
    a->v.a.items[a->v.a.n++] = item;
    return ANS_OK;
}

/* FNV-1a: keys are short and the index is only a lookup accelerator. */
static uint64_t key_hash(const char *s)
{
    uint64_t h = 14695981039346656037u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

/* Insert member i into the index; a later duplicate key replaces an earlier one (last one wins). */
static void index_insert(ans_json *o, size_t i)
{
    uint32_t *t = o->v.o.index;
    size_t mask = o->v.o.index_cap - 1;
    size_t h = (size_t)key_hash(o->v.o.keys[i]) & mask;
    while (t[h]) {
        if (strcmp(o->v.o.keys[t[h] - 1], o->v.o.keys[i]) == 0) break;
        h = (h + 1) & mask;
    }
    t[h] = (uint32_t)(i + 1);
}

/* (Re)build the index, load factor <= 1/2. If memory is short, lookups fall back to linear scans:
 * the index is an accelerator, not state, so its failure is silent. */
static void index_build(ans_json *o)
{
    free(o->v.o.index);
    o->v.o.index = NULL;
    o->v.o.index_cap = 0;
    size_t n = o->v.o.n;
    if (n < JSON_INDEX_MIN || n >= UINT32_MAX / 4) return;
    size_t cap = 64;
    while (cap < 2 * n) cap *= 2;
    o->v.o.index = calloc(cap, sizeof *o->v.o.index);
    if (!o->v.o.index) return;
    o->v.o.index_cap = cap;
    for (size_t i = 0; i < n; i++) index_insert(o, i);
}

/* Position of the last member named `key`, or SIZE_MAX. */
static size_t obj_find(const ans_json *o, const char *key)
{
    if (o->v.o.index) {
        const uint32_t *t = o->v.o.index;
        size_t mask = o->v.o.index_cap - 1;
        for (size_t h = (size_t)key_hash(key) & mask; t[h]; h = (h + 1) & mask)
            if (strcmp(o->v.o.keys[t[h] - 1], key) == 0) return t[h] - 1;
        return SIZE_MAX;
    }
    for (size_t i = o->v.o.n; i-- > 0;)
        if (strcmp(o->v.o.keys[i], key) == 0) return i;
    return SIZE_MAX;
}

/* Append a member, taking ownership of key and val only on success. The index is not updated. */
static int obj_append(ans_json *o, char *key, ans_json *val)
{
    size_t kcap = o->v.o.cap, vcap = o->v.o.cap;
    void *keys = o->v.o.keys, *vals = o->v.o.vals;
    ANS_TRY(grow(&keys, &kcap, o->v.o.n, sizeof *o->v.o.keys));
    o->v.o.keys = keys;
    ANS_TRY(grow(&vals, &vcap, o->v.o.n, sizeof *o->v.o.vals));
    o->v.o.vals = vals;
    o->v.o.cap = kcap; /* both arrays have at least this capacity now */
    o->v.o.keys[o->v.o.n] = key;
    o->v.o.vals[o->v.o.n] = val;
    o->v.o.n++;
    return ANS_OK;
}

int ans_json_push(ans_json *arr, ans_json *item)
{
    if (!arr || arr->type != ANS_JSON_ARRAY || !item) {
        ans_json_free(item);
        return ans_err(ANS_EINVAL, "JSON: push onto a non-array or of NULL");
    }
    int rc = arr_append(arr, item);
    if (rc < 0) ans_json_free(item);
    return rc;
}

int ans_json_set(ans_json *obj, const char *key, ans_json *val)
{
    if (!obj || obj->type != ANS_JSON_OBJECT || !key || !val) {
        ans_json_free(val);
        return ans_err(ANS_EINVAL, "JSON: set on a non-object or with NULL key/value");
    }
    size_t pos = obj_find(obj, key);
    if (pos != SIZE_MAX) {
        ans_json_free(obj->v.o.vals[pos]);
        obj->v.o.vals[pos] = val;
        return ANS_OK;
    }
    char *k = ans_strdup(key);
    int rc = k ? obj_append(obj, k, val) : ANS_ENOMEM;
    if (rc < 0) {
        free(k);
        ans_json_free(val);
        return rc;
    }
    size_t n = obj->v.o.n;
    if (obj->v.o.index && 2 * n <= obj->v.o.index_cap) index_insert(obj, n - 1);
    else if (n >= JSON_INDEX_MIN) index_build(obj);
    return ANS_OK;
}

ans_json *ans_json_clone(const ans_json *j)
{
    if (!j) return NULL;
    ans_json *c;
    switch (j->type) {
    case ANS_JSON_STRING:
        return ans_json_new_strn(j->v.s.ptr, j->v.s.len);
    case ANS_JSON_ARRAY:
        if (!(c = node_new(ANS_JSON_ARRAY))) return NULL;
        for (size_t i = 0; i < j->v.a.n; i++) {
            ans_json *item = ans_json_clone(j->v.a.items[i]);
            if (!item || arr_append(c, item) < 0) {
                ans_json_free(item);
                ans_json_free(c);
                return NULL;
            }
        }
        return c;
    case ANS_JSON_OBJECT:
        /* Member by member (not ans_json_set): duplicate keys are kept as they are. */
        if (!(c = node_new(ANS_JSON_OBJECT))) return NULL;
        for (size_t i = 0; i < j->v.o.n; i++) {
            char *k = ans_strdup(j->v.o.keys[i]);
            ans_json *val = k ? ans_json_clone(j->v.o.vals[i]) : NULL;
            if (!val || obj_append(c, k, val) < 0) {
                free(k);
                ans_json_free(val);
                ans_json_free(c);
                return NULL;
            }
        }
        index_build(c);
        return c;
    default:
        if (!(c = node_new(j->type))) return NULL;
        c->v = j->v;
        return c;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Accessors                                                                                       */

const ans_json *ans_json_get(const ans_json *obj, const char *key)
{
    if (!obj || obj->type != ANS_JSON_OBJECT || !key) return NULL;
    size_t pos = obj_find(obj, key);
    return pos == SIZE_MAX ? NULL : obj->v.o.vals[pos];
}

int ans_json_get_i64(const ans_json *v, int64_t *out)
{
    if (!v) return -1;
    if (v->type == ANS_JSON_INT) {
        *out = v->v.i;
        return 0;
    }
    /* -2^63 <= d < 2^63 and integral (NaN fails every comparison). */
    if (v->type == ANS_JSON_DOUBLE && v->v.d >= -9223372036854775808.0 &&
        v->v.d < 9223372036854775808.0 && v->v.d == floor(v->v.d)) {
        *out = (int64_t)v->v.d;
        return 0;
    }
    return -1;
}

int ans_json_get_u64(const ans_json *v, uint64_t *out)
{
    if (!v) return -1;
    if (v->type == ANS_JSON_INT && v->v.i >= 0) {
        *out = (uint64_t)v->v.i;
        return 0;
    }
    if (v->type == ANS_JSON_UINT) {
        *out = v->v.u;
        return 0;
    }
    if (v->type == ANS_JSON_DOUBLE && v->v.d >= 0.0 && v->v.d < 18446744073709551616.0 &&
        v->v.d == floor(v->v.d)) {
        *out = (uint64_t)v->v.d;
        return 0;
    }
    return -1;
}

int ans_json_get_double(const ans_json *v, double *out)
{
    if (!v) return -1;
    switch (v->type) {
    case ANS_JSON_INT:
        *out = (double)v->v.i;
        return 0;
    case ANS_JSON_UINT:
        *out = (double)v->v.u;
        return 0;
    case ANS_JSON_DOUBLE:
        *out = v->v.d;
        return 0;
    default:
        return -1;
    }
}

int ans_json_get_bool(const ans_json *v, int *out)
{
    if (!v || v->type != ANS_JSON_BOOL) return -1;
    *out = v->v.b;
    return 0;
}

const char *ans_json_get_str(const ans_json *v)
{
    return v && v->type == ANS_JSON_STRING ? v->v.s.ptr : NULL;
}

size_t ans_json_len(const ans_json *v)
{
    if (!v) return 0;
    if (v->type == ANS_JSON_ARRAY) return v->v.a.n;
    if (v->type == ANS_JSON_OBJECT) return v->v.o.n;
    return 0;
}

const ans_json *ans_json_at(const ans_json *arr, size_t i)
{
    if (!arr || arr->type != ANS_JSON_ARRAY || i >= arr->v.a.n) return NULL;
    return arr->v.a.items[i];
}

/* ---------------------------------------------------------------------------------------------- */
/* Numbers                                                                                         */

/* Convert the text of a number that matches the JSON grammar (optional '-', digits, optional
 * fraction, optional exponent) to the nearest double. strtod reads the decimal point of the current
 * locale, so the fraction is folded into the exponent ("12.5e3" -> "125e2"): digits and 'e' mean the
 * same in every locale, and strtod still rounds correctly from the full digit string. */
static int number_to_double(const char *s, size_t len, double *out)
{
    char stack[128], *buf = stack;
    size_t need = len + 32; /* sign, digits, 'e', a 64-bit exponent, NUL */
    if (need > sizeof stack && !(buf = ans_malloc(need))) return ANS_ENOMEM;
    const char *c = s, *end = s + len;
    size_t k = 0;
    int64_t nfrac = 0, exp10 = 0;
    if (c < end && *c == '-') buf[k++] = *c++;
    while (c < end && is_digit(*c)) buf[k++] = *c++;
    if (c < end && *c == '.')
        for (c++; c < end && is_digit(*c); nfrac++) buf[k++] = *c++;
    if (c < end && (*c == 'e' || *c == 'E')) {
        int eneg = 0;
        c++;
        if (c < end && (*c == '+' || *c == '-')) eneg = *c++ == '-';
        /* Saturate: any exponent this large already means 0 or infinity. */
        for (; c < end && is_digit(*c); c++)
            if (exp10 < INT64_C(100000000000000000)) exp10 = exp10 * 10 + (*c - '0');
        if (eneg) exp10 = -exp10;
    }
    snprintf(buf + k, need - k, "e%" PRId64, exp10 - nfrac);
    *out = strtod(buf, NULL); /* out of range: +-HUGE_VAL or 0, as Python's json does */
    if (buf != stack) free(buf);
    return ANS_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Parser                                                                                          */

typedef struct jparser {
    const char *start, *p, *end;
    int depth;
} jparser;

static int jerr(const jparser *ps, const char *at, const char *reason)
{
    return ans_err(ANS_ECORRUPT, "JSON: %s at byte %zu", reason, (size_t)(at - ps->start));
}

static int jerr_end(const jparser *ps)
{
    return jerr(ps, ps->end, "unexpected end of input");
}

static void skip_ws(jparser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t'))
        ps->p++;
}

/* Match the keyword `lit` at ps->p. */
static int match_literal(jparser *ps, const char *lit)
{
    size_t n = strlen(lit), avail = (size_t)(ps->end - ps->p);
    if (avail < n) {
        if (memcmp(ps->p, lit, avail) == 0) return jerr_end(ps);
        return jerr(ps, ps->p, "invalid literal");
    }
    if (memcmp(ps->p, lit, n) != 0) return jerr(ps, ps->p, "invalid literal");
    ps->p += n;
    return ANS_OK;
}

static int parse_number(jparser *ps, ans_json **out)
{
    const char *s = ps->p, *q = s, *e = ps->end;
    int neg = 0, integral = 1;
    if (*q == '-') {
        neg = 1;
        q++;
        if (q < e && *q == 'I') {
            ps->p = q;
            ANS_TRY(match_literal(ps, "Infinity"));
            return (*out = ans_json_new_double(-INFINITY)) ? ANS_OK : ANS_ENOMEM;
        }
    }
    if (q == e) return jerr_end(ps);
    if (*q == '0') {
        q++;
        if (q < e && is_digit(*q)) return jerr(ps, q, "leading zero in number");
    } else if (is_digit(*q)) {
        while (q < e && is_digit(*q)) q++;
    } else {
        return jerr(ps, q, "invalid number");
    }
    if (q < e && *q == '.') {
        integral = 0;
        if (++q == e) return jerr_end(ps);
        if (!is_digit(*q)) return jerr(ps, q, "invalid number");
        while (q < e && is_digit(*q)) q++;
    }
    if (q < e && (*q == 'e' || *q == 'E')) {
        integral = 0;
        if (++q < e && (*q == '+' || *q == '-')) q++;
        if (q == e) return jerr_end(ps);
        if (!is_digit(*q)) return jerr(ps, q, "invalid number");
        while (q < e && is_digit(*q)) q++;
    }
    ps->p = q;

    if (integral) {
        uint64_t m = 0;
        const char *c = s + neg;
        for (; c < q; c++) {
            unsigned d = (unsigned)(*c - '0');
            if (m > (UINT64_MAX - d) / 10) break;
            m = m * 10 + d;
        }
        if (c == q) { /* no overflow */
            if (!neg && m > (uint64_t)INT64_MAX) *out = ans_json_new_uint(m);
            else if (!neg) *out = ans_json_new_int((int64_t)m);
            else if (m <= (uint64_t)INT64_MAX) *out = ans_json_new_int(-(int64_t)m);
            else if (m == (uint64_t)INT64_MAX + 1) *out = ans_json_new_int(INT64_MIN);
            else goto as_double;
            return *out ? ANS_OK : ANS_ENOMEM;
        }
    }
as_double:;
    double d;
    ANS_TRY(number_to_double(s, (size_t)(q - s), &d));
    return (*out = ans_json_new_double(d)) ? ANS_OK : ANS_ENOMEM;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static char *put_utf8(char *d, unsigned cp)
{
    if (cp < 0x80) {
        *d++ = (char)cp;
    } else if (cp < 0x800) {
        *d++ = (char)(0xC0 | (cp >> 6));
        *d++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *d++ = (char)(0xE0 | (cp >> 12));
        *d++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *d++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *d++ = (char)(0xF0 | (cp >> 18));
        *d++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *d++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *d++ = (char)(0x80 | (cp & 0x3F));
    }
    return d;
}

/* Parse the string at ps->p (on the opening quote) into a new NUL-terminated buffer.
 * Bytes >= 0x80 are passed through unchecked: strings are data here, and the Python side reports
 * invalid UTF-8 when it decodes them. Escaped lone surrogates (which Python's json.dumps writes for
 * str values holding them) become their 3-byte generalised UTF-8 form rather than an error. */
static int parse_string(jparser *ps, char **out, size_t *outlen)
{
    const char *q = ps->p + 1, *r = q, *e = ps->end;
    int escaped = 0;
    for (;;) {
        if (r >= e) return jerr_end(ps);
        unsigned char c = (unsigned char)*r;
        if (c == '"') break;
        if (c < 0x20) return jerr(ps, r, "control character in string");
        if (c == '\\') {
            escaped = 1;
            if (e - r < 2) return jerr_end(ps);
            r += 2;
        } else {
            r++;
        }
    }
    /* Decoding never lengthens: \uXXXX (6) -> <= 3 bytes, a surrogate pair (12) -> 4. */
    char *buf = ans_malloc((size_t)(r - q) + 1), *d = buf;
    if (!buf) return ANS_ENOMEM;
    if (!escaped) {
        memcpy(d, q, (size_t)(r - q));
        d += r - q;
    }
    for (const char *c = q; escaped && c < r;) {
        if (*c != '\\') {
            *d++ = *c++;
            continue;
        }
        const char *esc = c++;
        switch (*c++) {
        case '"': *d++ = '"'; break;
        case '\\': *d++ = '\\'; break;
        case '/': *d++ = '/'; break;
        case 'b': *d++ = '\b'; break;
        case 'f': *d++ = '\f'; break;
        case 'n': *d++ = '\n'; break;
        case 'r': *d++ = '\r'; break;
        case 't': *d++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (r - c < 4 || hex4(c, &cp) < 0) {
                free(buf);
                return jerr(ps, esc, "invalid \\u escape");
            }
            c += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF && r - c >= 6 && c[0] == '\\' && c[1] == 'u' &&
                hex4(c + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                c += 6;
            }
            d = put_utf8(d, cp);
            break;
        }
        default:
            free(buf);
            return jerr(ps, esc, "invalid escape in string");
        }
    }
    *d = '\0';
    ps->p = r + 1;
    *out = buf;
    *outlen = (size_t)(d - buf);
    return ANS_OK;
}

static int parse_value(jparser *ps, ans_json **out);

static int parse_array(jparser *ps, ans_json **out)
{
    if (++ps->depth > ANS_JSON_MAX_DEPTH) return jerr(ps, ps->p, "nesting too deep");
    ans_json *a = node_new(ANS_JSON_ARRAY);
    if (!a) return ANS_ENOMEM;
    int rc;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
    } else {
        for (;;) {
            ans_json *item;
            if ((rc = parse_value(ps, &item)) < 0) goto fail;
            if ((rc = arr_append(a, item)) < 0) {
                ans_json_free(item);
                goto fail;
            }
            skip_ws(ps);
            if (ps->p == ps->end) {
                rc = jerr_end(ps);
                goto fail;
            }
            char c = *ps->p++;
            if (c == ']') break;
            if (c != ',') {
                rc = jerr(ps, ps->p - 1, "expected ',' or ']'");
                goto fail;
            }
        }
    }
    ps->depth--;
    *out = a;
    return ANS_OK;
fail:
    ans_json_free(a);
    return rc;
}

static int parse_object(jparser *ps, ans_json **out)
{
    if (++ps->depth > ANS_JSON_MAX_DEPTH) return jerr(ps, ps->p, "nesting too deep");
    ans_json *o = node_new(ANS_JSON_OBJECT);
    if (!o) return ANS_ENOMEM;
    int rc;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
    } else {
        for (;;) {
            skip_ws(ps);
            if (ps->p == ps->end) {
                rc = jerr_end(ps);
                goto fail;
            }
            if (*ps->p != '"') {
                rc = jerr(ps, ps->p, "expected a string key");
                goto fail;
            }
            const char *kpos = ps->p;
            char *key;
            size_t klen;
            if ((rc = parse_string(ps, &key, &klen)) < 0) goto fail;
            /* Keys are C strings (lookups, ans_json_set): a NUL inside one cannot be represented. */
            if (strlen(key) != klen) {
                free(key);
                rc = jerr(ps, kpos, "NUL character in object key");
                goto fail;
            }
            skip_ws(ps);
            if (ps->p == ps->end || *ps->p != ':') {
                free(key);
                rc = ps->p == ps->end ? jerr_end(ps) : jerr(ps, ps->p, "expected ':'");
                goto fail;
            }
            ps->p++;
            ans_json *val;
            if ((rc = parse_value(ps, &val)) < 0) {
                free(key);
                goto fail;
            }
            if ((rc = obj_append(o, key, val)) < 0) {
                free(key);
                ans_json_free(val);
                goto fail;
            }
            skip_ws(ps);
            if (ps->p == ps->end) {
                rc = jerr_end(ps);
                goto fail;
            }
            char c = *ps->p++;
            if (c == '}') break;
            if (c != ',') {
                rc = jerr(ps, ps->p - 1, "expected ',' or '}'");
                goto fail;
            }
        }
    }
    index_build(o);
    ps->depth--;
    *out = o;
    return ANS_OK;
fail:
    ans_json_free(o);
    return rc;
}

static int parse_value(jparser *ps, ans_json **out)
{
    skip_ws(ps);
    if (ps->p == ps->end) return jerr_end(ps);
    ans_json *j = NULL;
    switch (*ps->p) {
    case '{':
        return parse_object(ps, out);
    case '[':
        return parse_array(ps, out);
    case '"': {
        char *s;
        size_t n;
        ANS_TRY(parse_string(ps, &s, &n));
        if (!(j = node_new(ANS_JSON_STRING))) {
            free(s);
            return ANS_ENOMEM;
        }
        j->v.s.ptr = s;
        j->v.s.len = n;
        break;
    }
    case 't':
        ANS_TRY(match_literal(ps, "true"));
        j = ans_json_new_bool(1);
        break;
    case 'f':
        ANS_TRY(match_literal(ps, "false"));
        j = ans_json_new_bool(0);
        break;
    case 'n':
        ANS_TRY(match_literal(ps, "null"));
        j = ans_json_new_null();
        break;
    case 'N':
        ANS_TRY(match_literal(ps, "NaN"));
        j = ans_json_new_double(NAN);
        break;
    case 'I':
        ANS_TRY(match_literal(ps, "Infinity"));
        j = ans_json_new_double(INFINITY);
        break;
    default:
        if (*ps->p == '-' || is_digit(*ps->p)) return parse_number(ps, out);
        return jerr(ps, ps->p, "unexpected character");
    }
    if (!j) return ANS_ENOMEM;
    *out = j;
    return ANS_OK;
}

int ans_json_parse(const char *text, size_t len, ans_json **out)
{
    *out = NULL;
    if (!text && len) return ans_err(ANS_EINVAL, "JSON: NULL text");
    jparser ps = {text, text, text + len, 0};
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) ps.p += 3; /* RFC 8259 8.1: may ignore */
    ans_json *j;
    ANS_TRY(parse_value(&ps, &j));
    skip_ws(&ps);
    if (ps.p != ps.end) {
        ans_json_free(j);
        return jerr(&ps, ps.p, "unexpected data after the value");
    }
    *out = j;
    return ANS_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Writer                                                                                          */

static int put(ans_buf *b, const char *s, size_t n)
{
    return ans_buf_append(b, s, n);
}

static int put_str(ans_buf *b, const char *s)
{
    return ans_buf_append(b, s, strlen(s));
}

static int write_string(ans_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t run = 0; /* start of the pending run of bytes copied as they are */
    ANS_TRY(put(b, "\"", 1));
    for (size_t i = 0; i < n; i++) {
        char esc[8];
        size_t elen = 0, skip = 1;
        unsigned char c = u[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            elen = 2;
        } else if (c < 0x20) {
            const char *named = c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r"
                              : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
            if (named) {
                memcpy(esc, named, 2);
                elen = 2;
            } else {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                elen = 6;
            }
        } else if (c == 0xED && n - i >= 3 && u[i + 1] >= 0xA0 && u[i + 1] <= 0xBF &&
                   (u[i + 2] & 0xC0) == 0x80) {
            /* A lone surrogate kept by the parser: write it escaped, as Python does, so that the
             * output stays valid UTF-8. */
            unsigned cp = 0xD000u | ((unsigned)(u[i + 1] & 0x3F) << 6) | (u[i + 2] & 0x3F);
            snprintf(esc, sizeof esc, "\\u%04x", cp);
            elen = 6;
            skip = 3;
        } else {
            continue;
        }
        ANS_TRY(put(b, s + run, i - run));
        ANS_TRY(put(b, esc, elen));
        i += skip - 1;
        run = i + 1;
    }
    ANS_TRY(put(b, s + run, n - run));
    return put(b, "\"", 1);
}

/* Shortest of %.15g, %.16g, %.17g that reads back exactly; always recognisable as a float. */
static int write_double(ans_buf *b, double d)
{
    if (isnan(d)) return put_str(b, "NaN");
    if (isinf(d)) return put_str(b, d > 0 ? "Infinity" : "-Infinity");
    char tmp[48], txt[48];
    size_t n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        /* The decimal point is the locale's (possibly several bytes): normalise it to '.'. */
        n = 0;
        for (const char *c = tmp; *c;) {
            if (is_digit(*c) || *c == '-' || *c == '+' || *c == 'e') {
                txt[n++] = *c++;
            } else {
                txt[n++] = '.';
                while (*c && !is_digit(*c) && *c != '-' && *c != '+' && *c != 'e') c++;
            }
        }
        double back;
        ANS_TRY(number_to_double(txt, n, &back));
        if (back == d) break;
    }
    if (!memchr(txt, '.', n) && !memchr(txt, 'e', n)) {
        memcpy(txt + n, ".0", 2);
        n += 2;
    }
    return put(b, txt, n);
}

static int newline(ans_buf *b, int indent, int level)
{
    static const char spaces[] = "                                ";
    ANS_TRY(put(b, "\n", 1));
    size_t todo = (size_t)indent * (size_t)level;
    while (todo > 0) {
        size_t k = todo < sizeof spaces - 1 ? todo : sizeof spaces - 1;
        ANS_TRY(put(b, spaces, k));
        todo -= k;
    }
    return ANS_OK;
}

static int write_value(const ans_json *j, int indent, int level, ans_buf *b)
{
    char num[32];
    switch (j->type) {
    case ANS_JSON_NULL:
        return put_str(b, "null");
    case ANS_JSON_BOOL:
        return put_str(b, j->v.b ? "true" : "false");
    case ANS_JSON_INT:
        snprintf(num, sizeof num, "%" PRId64, j->v.i);
        return put_str(b, num);
    case ANS_JSON_UINT:
        snprintf(num, sizeof num, "%" PRIu64, j->v.u);
        return put_str(b, num);
    case ANS_JSON_DOUBLE:
        return write_double(b, j->v.d);
    case ANS_JSON_STRING:
        return write_string(b, j->v.s.ptr, j->v.s.len);
    case ANS_JSON_ARRAY:
    case ANS_JSON_OBJECT: {
        int obj = j->type == ANS_JSON_OBJECT;
        size_t n = obj ? j->v.o.n : j->v.a.n;
        ANS_TRY(put(b, obj ? "{" : "[", 1));
        for (size_t i = 0; i < n; i++) {
            if (i) ANS_TRY(put(b, ",", 1));
            if (indent >= 0) ANS_TRY(newline(b, indent, level + 1));
            if (obj) {
                ANS_TRY(write_string(b, j->v.o.keys[i], strlen(j->v.o.keys[i])));
                ANS_TRY(indent >= 0 ? put(b, ": ", 2) : put(b, ":", 1));
            }
            ANS_TRY(write_value(obj ? j->v.o.vals[i] : j->v.a.items[i], indent, level + 1, b));
        }
        if (n && indent >= 0) ANS_TRY(newline(b, indent, level));
        return put(b, obj ? "}" : "]", 1);
    }
    }
    return ans_err(ANS_EINVAL, "JSON: invalid node type %d", (int)j->type);
}

int ans_json_write(const ans_json *j, int indent, ans_buf *out)
{
    if (!j || !out) return ans_err(ANS_EINVAL, "JSON: NULL value or buffer");
    ANS_TRY(write_value(j, indent, 0, out));
    /* Keep a NUL after the text (not counted in len) so out->data can be used as a C string. */
    ANS_TRY(ans_buf_reserve(out, out->len + 1));
    out->data[out->len] = '\0';
    return ANS_OK;
}
