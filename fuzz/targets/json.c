/* json: ans_json_parse on arbitrary bytes; for a valid document, the writer round trip:
 * write(parse(write(x))) == write(x) in compact and pretty form, clone == original, and the typed
 * getters on every node. */
#include "fuzz_common.h"

#include "common/json.h"

static void walk(const ans_json *j, int depth)
{
    FUZZ_CHECK(depth <= ANS_JSON_MAX_DEPTH + 1);
    int64_t i;
    uint64_t u;
    double d;
    int b;
    (void)ans_json_get_i64(j, &i);
    (void)ans_json_get_u64(j, &u);
    (void)ans_json_get_double(j, &d);
    (void)ans_json_get_bool(j, &b);
    const char *s = ans_json_get_str(j);
    if (s) {
        FUZZ_CHECK(s[j->v.s.len] == 0);
        fuzz_touch(s, j->v.s.len + 1);
    }
    size_t n = ans_json_len(j);
    if (j->type == ANS_JSON_ARRAY) {
        for (size_t k = 0; k < n; k++) walk(ans_json_at(j, k), depth + 1);
        FUZZ_CHECK(ans_json_at(j, n) == NULL);
    } else if (j->type == ANS_JSON_OBJECT) {
        for (size_t k = 0; k < n; k++) {
            const char *key = j->v.o.keys[k];
            /* lookup finds a member with that key (the last duplicate) */
            const ans_json *v = ans_json_get(j, key);
            FUZZ_CHECK(v != NULL);
            walk(j->v.o.vals[k], depth + 1);
        }
        FUZZ_CHECK(ans_json_get(j, "\x01no such key\x02") == NULL || n > 0);
    }
}

static void write_twice(const ans_json *j, int indent)
{
    ans_buf a = {0}, b = {0};
    FUZZ_CHECK(ans_json_write(j, indent, &a) == ANS_OK);
    FUZZ_CHECK(a.data[a.len] == 0);
    ans_json *k = NULL;
    int rc = ans_json_parse((const char *)a.data, a.len, &k);
    if (rc != ANS_OK) {
        fprintf(stderr, "written JSON does not parse back: %s\n%s\n", ans_error_last(),
                (const char *)a.data);
        abort();
    }
    FUZZ_CHECK(ans_json_write(k, indent, &b) == ANS_OK);
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) {
        fprintf(stderr, "JSON round trip differs:\n%s\n%s\n", (const char *)a.data,
                (const char *)b.data);
        abort();
    }
    ans_json_free(k);
    ans_buf_free(&a);
    ans_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ans_json *j = NULL;
    int rc = ans_json_parse((const char *)data, size, &j);
    if (rc != ANS_OK) {
        FUZZ_CHECK(j == NULL);
        FUZZ_CHECK(rc == ANS_ECORRUPT || rc == ANS_ENOMEM);
        FUZZ_CHECK(ans_error_last()[0] != 0);
        return 0;
    }
    walk(j, 0);
    write_twice(j, -1);
    write_twice(j, 2);
    ans_json *c = ans_json_clone(j);
    FUZZ_CHECK(c != NULL);
    ans_buf a = {0}, b = {0};
    FUZZ_CHECK(ans_json_write(j, -1, &a) == ANS_OK && ans_json_write(c, -1, &b) == ANS_OK);
    FUZZ_CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
    ans_buf_free(&a);
    ans_buf_free(&b);
    ans_json_free(c);
    ans_json_free(j);
    return 0;
}
