/* json.h - a small JSON reader and writer (internal).
 *
 * Why our own: zarr metadata needs 64-bit integers kept exact (uint64 fill values up to 2^64-1) and
 * the non-standard bare NaN, Infinity and -Infinity that zarr-python writes in attributes. Debian's
 * packaged parsers (jansson: int64 only, rejects NaN; cJSON: doubles only) do neither.
 *
 * Parsing is strict RFC 8259 plus NaN / Infinity / -Infinity; nesting depth is limited
 * (ANS_JSON_MAX_DEPTH) and every size is checked, so hostile input yields ANS_ECORRUPT, never a crash.
 * Objects keep member order; duplicate keys: the last one wins on lookup. Object keys are C strings:
 * a key containing U+0000 is rejected. String values may hold any bytes (embedded NULs included);
 * bytes >= 0x80 are not validated as UTF-8, and an escaped lone surrogate becomes its 3-byte
 * (WTF-8) form, written back as the same escape.
 *
 * Trees are plain data: read them freely, change them only through the builders below (objects
 * carry a private lookup index). A tree may be read by several threads at once. Parsed trees are at
 * most ANS_JSON_MAX_DEPTH deep; free, clone and write recurse, so keep built trees shallow too. */
#ifndef ANS_COMMON_JSON_H
#define ANS_COMMON_JSON_H

#include "common/mem.h"

#include <stddef.h>
#include <stdint.h>

#define ANS_JSON_MAX_DEPTH 64

typedef enum ans_json_type {
    ANS_JSON_NULL = 0,
    ANS_JSON_BOOL,
    ANS_JSON_INT,    /* fits int64: v.i */
    ANS_JSON_UINT,   /* > INT64_MAX, fits uint64: v.u */
    ANS_JSON_DOUBLE, /* any other number, NaN and +-Infinity: v.d */
    ANS_JSON_STRING, /* v.s.ptr (NUL-terminated, may contain embedded NULs), v.s.len */
    ANS_JSON_ARRAY,  /* v.a.items[0..v.a.n) */
    ANS_JSON_OBJECT  /* v.o.keys[i] -> v.o.vals[i], i < v.o.n */
} ans_json_type;

typedef struct ans_json ans_json;
struct ans_json {
    ans_json_type type;
    union {
        int b;
        int64_t i;
        uint64_t u;
        double d;
        struct {
            char *ptr;
            size_t len;
        } s;
        struct {
            ans_json **items;
            size_t n, cap;
        } a;
        struct {
            char **keys;
            ans_json **vals;
            size_t n, cap;
            uint32_t *index;  /* private: hash index over keys (large objects), NULL = scan */
            size_t index_cap; /* private */
        } o;
    } v;
};

/* Parse `len` bytes. On failure returns ANS_ECORRUPT with a message giving the byte offset and
 * reason (the caller prefixes the file name). */
int ans_json_parse(const char *text, size_t len, ans_json **out);
void ans_json_free(ans_json *j);

/* Lookups (NULL-tolerant: a NULL or non-object `obj` gives NULL). */
const ans_json *ans_json_get(const ans_json *obj, const char *key);
/* Typed getters: return 0 and set *out when the value has the right type (ints: in range), else -1.
 * ans_json_get_i64 and ans_json_get_u64 also accept DOUBLE values that are exact integers in range
 * (1.0, 1e3). */
int ans_json_get_i64(const ans_json *v, int64_t *out);
int ans_json_get_u64(const ans_json *v, uint64_t *out);
int ans_json_get_double(const ans_json *v, double *out); /* any number */
int ans_json_get_bool(const ans_json *v, int *out);
const char *ans_json_get_str(const ans_json *v); /* NULL if not a string */
size_t ans_json_len(const ans_json *v);           /* items of an array / members of an object */
const ans_json *ans_json_at(const ans_json *arr, size_t i);

/* Builders (for HDF5 attributes, describe output and the writer). Each returns NULL on ENOMEM.
 * ans_json_new_uint gives an INT node for values <= INT64_MAX, as the parser does. */
ans_json *ans_json_new_null(void);
ans_json *ans_json_new_bool(int b);
ans_json *ans_json_new_int(int64_t i);
ans_json *ans_json_new_uint(uint64_t u);
ans_json *ans_json_new_double(double d);
ans_json *ans_json_new_str(const char *s);
ans_json *ans_json_new_strn(const char *s, size_t n);
ans_json *ans_json_new_array(void);
ans_json *ans_json_new_object(void);
/* Take ownership of `item` (freed on failure too). ANS_OK or ANS_ENOMEM. */
int ans_json_push(ans_json *arr, ans_json *item);
int ans_json_set(ans_json *obj, const char *key, ans_json *val); /* replaces an existing key */
ans_json *ans_json_clone(const ans_json *j);

/* Serialise into `out` (appended). indent < 0: compact; else pretty with that many spaces.
 * Integers are exact; doubles use the shortest of 15-17 significant digits that reads back exactly
 * and always look like floats (1.0, 1e+300); non-finite doubles are written as NaN / Infinity /
 * -Infinity (as zarr-python does). A NUL is kept after the text (not counted in out->len), so
 * (char *)out->data is a C string. */
int ans_json_write(const ans_json *j, int indent, ans_buf *out);

#endif
