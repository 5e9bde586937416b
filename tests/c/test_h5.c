/* test_h5.c - the HDF5 (.h5ad) container backend.
 *
 * usage: test_h5 [FIXTURE_DIR] [NAME_FILTER]
 * FIXTURE_DIR (or the environment variable ANS_H5_FIXTURES) holds what make_h5_fixtures.py writes
 * with h5py and anndata; tests that need it print "skip" when it is absent. Other tests write their
 * own files with libhdf5 into a temporary directory. */
#include "harness.h"

#include "common/error.h"
#include "common/json.h"
#include "common/mem.h"
#include "common/pool.h"
#include "container/container.h"

#include <hdf5.h>

#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *fx_dir; /* fixtures from make_h5_fixtures.py, or NULL */
static char tmp_dir[256];  /* files written by this test */
static ans_pool *pool4;    /* a 4-thread pool */
static ans_pool *cur_pool; /* the pool open_fx gives containers */

/* ---- helpers --------------------------------------------------------------------------------- */

static int is_dir(const char *p)
{
    struct stat st;
    return p && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int need_fixtures(const char *test)
{
    if (fx_dir) return 1;
    printf("skip %s: no fixtures (run tests/c/make_h5_fixtures.py DIR, pass DIR or set "
           "ANS_H5_FIXTURES)\n",
           test);
    return 0;
}

static void fx_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", fx_dir, name);
}

static void *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)(n > 0 ? n : 0);
    return buf;
}

static ans_container *open_fx(const char *name)
{
    char p[1024];
    fx_path(p, sizeof p, name);
    ans_container *c = NULL;
    CHECK_OK(ans_h5_open(&c, p, cur_pool));
    return c;
}

static const ans_json *attrs_of(ans_container *c, const char *path)
{
    const ans_json *j = NULL;
    CHECK_OK(c->ops->attrs(c, path, &j));
    return j;
}

static void check_str(const ans_json *v, const char *want)
{
    const char *s = ans_json_get_str(v);
    CHECK(s != NULL);
    if (s && strcmp(s, want) != 0) {
        fprintf(stderr, "  string \"%s\" != \"%s\"\n", s, want);
        CHECK(0);
    }
}

static void check_i64(const ans_json *v, int64_t want)
{
    int64_t x = 0;
    CHECK(ans_json_get_i64(v, &x) == 0);
    CHECK_EQ_U64(x, want);
}

static void check_double(const ans_json *v, double want)
{
    double x = -12345;
    CHECK(v && v->type == ANS_JSON_DOUBLE);
    CHECK(ans_json_get_double(v, &x) == 0 && x == want);
}

/* Expected strings file: per item u32le length + bytes. Fills offsets (n + 1) and returns data. */
static char *load_strings(const char *bin, uint64_t n, uint64_t **offsets)
{
    size_t len = 0;
    uint8_t *raw = slurp(bin, &len);
    *offsets = calloc(n + 1, sizeof **offsets);
    char *data = malloc(len + 1);
    size_t pos = 0, o = 0;
    for (uint64_t i = 0; raw && i < n && pos + 4 <= len; i++) {
        uint32_t l = (uint32_t)raw[pos] | (uint32_t)raw[pos + 1] << 8 |
                     (uint32_t)raw[pos + 2] << 16 | (uint32_t)raw[pos + 3] << 24;
        pos += 4;
        memcpy(data + o, raw + pos, l);
        pos += l;
        o += l;
        (*offsets)[i + 1] = o;
    }
    free(raw);
    return data;
}

/* ---- manifest: every dataset against the bytes numpy wrote ----------------------------------- */

static void check_array_line(char *line)
{
    char file[256], path[512], dtype[32], bin[512];
    int ndim = 0, used = 0;
    if (sscanf(line, "array %255s %511s %31s %d%n", file, path, dtype, &ndim, &used) != 4) {
        CHECK(0);
        return;
    }
    uint64_t shape[ANS_MAX_NDIM];
    char *p = line + used;
    for (int i = 0; i < ndim; i++)
        shape[i] = strtoull(p, &p, 10);
    if (sscanf(p, " %511s", bin) != 1) {
        CHECK(0);
        return;
    }
    ans_container *c = open_fx(file);
    if (!c) return;
    ans_array *a = NULL;
    CHECK_OK(c->ops->open_array(c, path, &a));
    if (!a) {
        fprintf(stderr, "  array %s:%s\n", file, path);
        ans_container_free(c);
        return;
    }
    if (strcmp(ans_dtype_name(a->dtype), dtype) != 0) {
        fprintf(stderr, "  %s:%s dtype %s, expected %s\n", file, path, ans_dtype_name(a->dtype),
                dtype);
        CHECK(0);
    }
    CHECK_EQ_U64(a->ndim, ndim);
    for (int i = 0; i < ndim && i < a->ndim; i++)
        CHECK_EQ_U64(a->shape[i], shape[i]);
    char bp[1024];
    fx_path(bp, sizeof bp, bin);
    size_t want_len = 0;
    uint8_t *want = slurp(bp, &want_len);
    CHECK(want != NULL);
    void *got = NULL;
    size_t got_len = 0;
    CHECK_OK(ans_array_read_all(a, &got, &got_len));
    CHECK_EQ_U64(got_len, want_len);
    if (got && want && got_len == want_len && memcmp(got, want, want_len) != 0) {
        fprintf(stderr, "  %s:%s: values differ\n", file, path);
        CHECK(0);
    }
    free(got);

    /* Ranges in any order, overlapping, repeated, empty. */
    uint64_t n = ndim ? shape[0] : 1;
    if (want && ndim >= 1 && n >= 3) {
        ans_range r[] = {{n - 1, 1}, {0, 2}, {1, n - 1}, {0, 0}, {n / 2, 1}, {n / 2, 1}};
        size_t nr = sizeof r / sizeof r[0];
        uint64_t rows = 0;
        for (size_t i = 0; i < nr; i++)
            rows += r[i].count;
        uint8_t *buf = malloc((size_t)(rows * a->row_bytes) + 1);
        uint8_t *exp = malloc((size_t)(rows * a->row_bytes) + 1);
        size_t o = 0;
        for (size_t i = 0; i < nr; i++) {
            memcpy(exp + o, want + r[i].start * a->row_bytes, (size_t)(r[i].count * a->row_bytes));
            o += (size_t)(r[i].count * a->row_bytes);
        }
        CHECK_OK(a->ops->read(a, r, nr, buf));
        CHECK(memcmp(buf, exp, o) == 0);
        /* Sorted and disjoint (read in place). */
        ans_range s[] = {{0, 1}, {2, 1}, {n - 1, 1}};
        o = 0;
        for (size_t i = 0; i < 3; i++) {
            memcpy(exp + o, want + s[i].start * a->row_bytes, (size_t)a->row_bytes);
            o += (size_t)a->row_bytes;
        }
        CHECK_OK(a->ops->read(a, s, 3, buf));
        CHECK(memcmp(buf, exp, o) == 0);
        free(buf);
        free(exp);
    } else if (want && ndim == 0) {
        ans_range r[] = {{0, 1}, {0, 1}};
        uint8_t buf[64];
        CHECK_OK(a->ops->read(a, r, 2, buf));
        CHECK(memcmp(buf, want, a->row_bytes) == 0);
        CHECK(memcmp(buf + a->row_bytes, want, a->row_bytes) == 0);
    }
    /* Out of range. */
    ans_range bad = {n, 1};
    CHECK_RC(a->ops->read(a, &bad, 1, &bad), ANS_EINVAL);
    free(want);
    ans_array_free(a);
    ans_container_free(c);
}

static void check_strings_line(char *line)
{
    char file[256], path[512], bin[512];
    unsigned long long count = 0;
    if (sscanf(line, "strings %255s %511s %llu %511s", file, path, &count, bin) != 4) {
        CHECK(0);
        return;
    }
    ans_container *c = open_fx(file);
    if (!c) return;
    ans_array *a = NULL;
    CHECK_OK(c->ops->open_array(c, path, &a));
    if (!a) {
        fprintf(stderr, "  array %s:%s\n", file, path);
        ans_container_free(c);
        return;
    }
    CHECK(a->dtype == ANS_DTYPE_STRING);
    uint64_t n = a->ndim ? a->shape[0] : 1;
    CHECK_EQ_U64(n, count);
    char bp[1024];
    fx_path(bp, sizeof bp, bin);
    uint64_t *woff = NULL;
    char *wdata = load_strings(bp, count, &woff);
    uint64_t *off = calloc(count + 1, sizeof *off);
    ans_buf data = {0};
    CHECK_OK(a->ops->read_strings(a, 0, count, off, &data));
    for (uint64_t i = 0; i <= count; i++)
        CHECK_EQ_U64(off[i], woff[i]);
    CHECK(data.len == woff[count] && (data.len == 0 || memcmp(data.data, wdata, data.len) == 0));
    /* Appending a partial read to a non-empty buffer. */
    if (count >= 2) {
        data.len = 0;
        CHECK_OK(ans_buf_append(&data, "XY", 2));
        CHECK_OK(a->ops->read_strings(a, 1, count - 1, off, &data));
        CHECK_EQ_U64(off[0], 2);
        for (uint64_t i = 1; i < count; i++)
            CHECK_EQ_U64(off[i] - 2, woff[i + 1] - woff[1]);
        CHECK(memcmp(data.data + 2, wdata + woff[1], (size_t)(woff[count] - woff[1])) == 0);
    }
    CHECK_RC(a->ops->read_strings(a, count, 1, off, &data), ANS_EINVAL);
    ans_range r = {0, 1};
    CHECK_RC(a->ops->read(a, &r, 1, off), ANS_EINVAL);
    ans_buf_free(&data);
    free(off);
    free(woff);
    free(wdata);
    ans_array_free(a);
    ans_container_free(c);
}

static void test_manifest(void)
{
    if (!need_fixtures("manifest")) return;
    char mp[1024];
    fx_path(mp, sizeof mp, "manifest.txt");
    FILE *f = fopen(mp, "r");
    CHECK(f != NULL);
    if (!f) return;
    char line[4096];
    int n = 0;
    /* Once with the pool (parallel chunk decoding), once without (inline). */
    for (int pass = 0; pass < 2; pass++) {
        cur_pool = pass == 0 ? pool4 : NULL;
        rewind(f);
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = '\0';
            if (strncmp(line, "array ", 6) == 0)
                check_array_line(line);
            else if (strncmp(line, "strings ", 8) == 0)
                check_strings_line(line);
            else
                continue;
            n++;
        }
    }
    cur_pool = pool4;
    fclose(f);
    CHECK(n > 100);
}

/* ---- attributes, nodes, children ------------------------------------------------------------- */

static void test_attrs(void)
{
    if (!need_fixtures("attrs")) return;
    ans_container *c = open_fx("fixtures.h5");
    if (!c) return;
    const ans_json *j = attrs_of(c, "attrs");
    CHECK(j && j->type == ANS_JSON_OBJECT);
    check_str(ans_json_get(j, "s_vlen"), "hello");
    check_str(ans_json_get(j, "s_utf8"), "\xc3\xa9\xe6\x97\xa5");
    check_str(ans_json_get(j, "s_fixed"), "fixed");
    check_i64(ans_json_get(j, "i"), 42);
    check_i64(ans_json_get(j, "neg"), -5);
    uint64_t u = 0;
    CHECK(ans_json_get_u64(ans_json_get(j, "u"), &u) == 0 && u == 9223372036854775813ULL);
    check_double(ans_json_get(j, "f"), 1.5);
    check_double(ans_json_get(j, "f16"), 0.5);
    int b = -1;
    CHECK(ans_json_get_bool(ans_json_get(j, "b"), &b) == 0 && b == 1);
    CHECK(ans_json_get_bool(ans_json_get(j, "bf"), &b) == 0 && b == 0);
    const ans_json *l = ans_json_get(j, "lst_str");
    CHECK(l && l->type == ANS_JSON_ARRAY && ans_json_len(l) == 3);
    check_str(ans_json_at(l, 2), "ccc");
    l = ans_json_get(j, "lst_num");
    CHECK(ans_json_len(l) == 3);
    check_i64(ans_json_at(l, 0), 1);
    check_i64(ans_json_at(l, 2), 3);
    l = ans_json_get(j, "lst_f");
    check_double(ans_json_at(l, 1), 1.5);
    l = ans_json_get(j, "lst_bool");
    CHECK(ans_json_get_bool(ans_json_at(l, 0), &b) == 0 && b == 1);
    CHECK(ans_json_get_bool(ans_json_at(l, 1), &b) == 0 && b == 0);
    l = ans_json_get(j, "empty");
    CHECK(l && l->type == ANS_JSON_ARRAY && ans_json_len(l) == 0);
    check_i64(ans_json_get(j, "zero_d"), 7);
    l = ans_json_get(j, "m2");
    CHECK(l && ans_json_len(l) == 2 && ans_json_len(ans_json_at(l, 1)) == 3);
    check_i64(ans_json_at(ans_json_at(l, 1), 2), 5);
    l = ans_json_get(j, "null");
    CHECK(l && l->type == ANS_JSON_NULL);
    l = ans_json_get(j, "cplx");
    CHECK(ans_json_len(l) == 2);
    check_double(ans_json_at(l, 1), 2.0);
    check_i64(ans_json_get(j, "be"), 513);
    l = ans_json_get(j, "fixed_list");
    CHECK(ans_json_len(l) == 2);
    check_str(ans_json_at(l, 1), "yz");

    /* Cached: the same borrowed object, whichever spelling of the path. */
    CHECK(attrs_of(c, "attrs") == j);
    CHECK(attrs_of(c, "/attrs/") == j);
    j = attrs_of(c, "int/i4");
    check_str(ans_json_get(j, "encoding-type"), "array");
    j = attrs_of(c, "");
    CHECK(j && j->type == ANS_JSON_OBJECT && ans_json_len(j) == 0);
    const ans_json *missing = NULL;
    CHECK_RC(c->ops->attrs(c, "nope/deeper", &missing), ANS_ENOTFOUND);
    CHECK_STR_CONTAINS(ans_error_last(), "nope/deeper");
    ans_container_free(c);

    c = open_fx("dense_attrs.h5");
    if (!c) return;
    j = attrs_of(c, "many_attrs");
    CHECK_EQ_U64(ans_json_len(j), 41);
    l = ans_json_get(j, "column-order");
    CHECK_EQ_U64(ans_json_len(l), 6000);
    check_str(ans_json_at(l, 5999), "c5999");
    check_i64(ans_json_get(j, "k39"), 39);
    char **names = NULL;
    size_t n = 0;
    CHECK_OK(c->ops->children(c, "many_attrs", &names, &n));
    CHECK_EQ_U64(n, 30);
    if (n == 30) {
        CHECK(strcmp(names[0], "col00") == 0);
        CHECK(strcmp(names[29], "col29") == 0);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    ans_container_free(c);
}

static void test_nodes(void)
{
    if (!need_fixtures("nodes")) return;
    ans_container *c = open_fx("fixtures.h5");
    if (!c) return;
    CHECK(strcmp(c->kind_name, "h5ad") == 0);
    struct {
        const char *path;
        ans_node_kind kind;
    } cases[] = {
        {"", ANS_NODE_GROUP},
        {"int", ANS_NODE_GROUP},
        {"/int/", ANS_NODE_GROUP},
        {"int/i4", ANS_NODE_ARRAY},
        {"int//i4", ANS_NODE_ARRAY},
        {"nope", ANS_NODE_NONE},
        {"int/nope", ANS_NODE_NONE},
        {"int/i4/deeper", ANS_NODE_NONE},
        {"nope/x/y", ANS_NODE_NONE},
        {"attrs/soft", ANS_NODE_ARRAY},
        {"attrs/dangling", ANS_NODE_NONE},
        {"scalar/f8", ANS_NODE_ARRAY},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ans_node_kind k = (ans_node_kind)-1;
        CHECK_OK(c->ops->node(c, cases[i].path, &k));
        if (k != cases[i].kind) {
            fprintf(stderr, "  node('%s') = %d, expected %d\n", cases[i].path, (int)k,
                    (int)cases[i].kind);
            CHECK(0);
        }
    }
    char **names = NULL;
    size_t n = 0;
    CHECK_OK(c->ops->children(c, "attrs", &names, &n));
    const char *want[] = {"aa", "dangling", "soft", "sub_a", "sub_b", "zz"};
    CHECK_EQ_U64(n, 6);
    for (size_t i = 0; i < n && i < 6; i++)
        CHECK(strcmp(names[i], want[i]) == 0);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    CHECK_OK(c->ops->children(c, "", &names, &n));
    CHECK(n >= 10 && strcmp(names[0], "attrs") == 0);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    CHECK_OK(c->ops->children(c, "attrs/sub_a", &names, &n));
    CHECK_EQ_U64(n, 0);
    free(names);
    CHECK_RC(c->ops->children(c, "nope", &names, &n), ANS_ENOTFOUND);
    CHECK_RC(c->ops->children(c, "int/i4", &names, &n), ANS_ENOTFOUND);
    ans_array *a = NULL;
    CHECK_RC(c->ops->open_array(c, "nope", &a), ANS_ENOTFOUND);
    CHECK_STR_CONTAINS(ans_error_last(), "fixtures.h5");
    CHECK_RC(c->ops->open_array(c, "int", &a), ANS_ENOTFOUND);
    CHECK_STR_CONTAINS(ans_error_last(), "group");
    CHECK_RC(c->ops->open_array(c, "attrs/dangling", &a), ANS_ENOTFOUND);
    CHECK(a == NULL);
    /* A null dataspace reads as shape [0]. */
    CHECK_OK(c->ops->open_array(c, "empty/null", &a));
    if (a) CHECK(a->ndim == 1 && a->shape[0] == 0);
    ans_array_free(a);
    ans_container_free(c);
}

static void test_describe(void)
{
    if (!need_fixtures("describe")) return;
    ans_container *c = open_fx("fixtures.h5");
    if (!c) return;
    ans_array *a = NULL;
    CHECK_OK(c->ops->open_array(c, "chunked/gz2d", &a));
    if (a) {
        ans_json *d = ans_json_new_object();
        CHECK_OK(a->ops->describe(a, d));
        const ans_json *ch = ans_json_get(d, "chunks");
        CHECK_EQ_U64(ans_json_len(ch), 2);
        check_i64(ans_json_at(ch, 0), 64);
        check_i64(ans_json_at(ch, 1), 16);
        const ans_json *co = ans_json_get(d, "codecs");
        CHECK_EQ_U64(ans_json_len(co), 2);
        check_str(ans_json_at(co, 0), "shuffle");
        check_str(ans_json_at(co, 1), "gzip(4)");
        uint64_t nb = 0, sb = 0;
        CHECK(ans_json_get_u64(ans_json_get(d, "nbytes"), &nb) == 0 && nb == 1000 * 37 * 4);
        CHECK(ans_json_get_u64(ans_json_get(d, "stored_bytes"), &sb) == 0 && sb > 0 && sb < nb);
        ans_json_free(d);
        ans_array_free(a);
    }
    CHECK_OK(c->ops->open_array(c, "contig/a2", &a));
    if (a) {
        ans_json *d = ans_json_new_object();
        CHECK_OK(a->ops->describe(a, d));
        const ans_json *ch = ans_json_get(d, "chunks");
        CHECK(ch && ch->type == ANS_JSON_NULL);
        CHECK_EQ_U64(ans_json_len(ans_json_get(d, "codecs")), 0);
        check_i64(ans_json_get(d, "stored_bytes"), 6 * 5 * 8);
        check_i64(ans_json_get(d, "nbytes"), 6 * 5 * 8);
        ans_json_free(d);
        ans_array_free(a);
    }
    CHECK_OK(c->ops->open_array(c, "chunked/fletcher", &a));
    if (a) {
        ans_json *d = ans_json_new_object();
        CHECK_OK(a->ops->describe(a, d));
        check_str(ans_json_at(ans_json_get(d, "codecs"), 0), "fletcher32");
        ans_json_free(d);
        ans_array_free(a);
    }
    ans_container_free(c);
}

static void test_lzf(void)
{
    if (!need_fixtures("lzf")) return;
    ans_container *c = open_fx("lzf.h5");
    if (!c) return;
    ans_array *a = NULL;
    CHECK_RC(c->ops->open_array(c, "x", &a), ANS_EUNSUPPORTED);
    CHECK_STR_CONTAINS(ans_error_last(), "unsupported HDF5 filter 'lzf' (id 32000)");
    CHECK_STR_CONTAINS(ans_error_last(), "lzf.h5");
    CHECK(a == NULL);
    ans_container_free(c);
}

static void test_anndata(void)
{
    if (!need_fixtures("anndata")) return;
    char p[1024];
    fx_path(p, sizeof p, "anndata.h5ad");
    CHECK(ans_h5_probe(p) == 1);
    ans_container *c = open_fx("anndata.h5ad");
    if (!c) return;
    check_str(ans_json_get(attrs_of(c, ""), "encoding-type"), "anndata");
    const ans_json *x = attrs_of(c, "X");
    check_str(ans_json_get(x, "encoding-type"), "csr_matrix");
    check_str(ans_json_get(x, "encoding-version"), "0.1.0");
    const ans_json *shape = ans_json_get(x, "shape");
    CHECK_EQ_U64(ans_json_len(shape), 2);
    check_i64(ans_json_at(shape, 0), 200);
    check_i64(ans_json_at(shape, 1), 50);
    const ans_json *obs = attrs_of(c, "obs");
    check_str(ans_json_get(obs, "encoding-type"), "dataframe");
    check_str(ans_json_get(obs, "_index"), "_index");
    const ans_json *order = ans_json_get(obs, "column-order");
    CHECK_EQ_U64(ans_json_len(order), 3);
    check_str(ans_json_at(order, 0), "cell_type");
    int b = -1;
    CHECK(ans_json_get_bool(ans_json_get(attrs_of(c, "obs/cell_type"), "ordered"), &b) == 0 &&
          b == 0);
    /* var has no columns: column-order is an empty (float64) array. */
    const ans_json *vorder = ans_json_get(attrs_of(c, "var"), "column-order");
    CHECK(vorder && vorder->type == ANS_JSON_ARRAY && ans_json_len(vorder) == 0);
    ans_array *a = NULL;
    CHECK_OK(c->ops->open_array(c, "X/data", &a));
    if (a) {
        ans_json *d = ans_json_new_object();
        CHECK_OK(a->ops->describe(a, d));
        CHECK_STR_CONTAINS(ans_json_get_str(ans_json_at(ans_json_get(d, "codecs"), 0)), "gzip");
        ans_json_free(d);
        ans_array_free(a);
    }
    ans_container_free(c);
}

/* ---- hostile inputs -------------------------------------------------------------------------- */

static void test_hostile(void)
{
    ans_container *c = NULL;
    CHECK_RC(ans_h5_open(&c, "/nonexistent/file.h5ad", NULL), ANS_ENOTFOUND);
    CHECK_STR_CONTAINS(ans_error_last(), "/nonexistent/file.h5ad");
    CHECK(ans_h5_probe("/nonexistent/file.h5ad") == 0);
    CHECK_RC(ans_h5_open(&c, tmp_dir, NULL), ANS_ECORRUPT);
    CHECK(ans_h5_probe(tmp_dir) == 0);
    CHECK(c == NULL);
    if (!need_fixtures("hostile")) return;
    char p[1024];

    fx_path(p, sizeof p, "hostile/truncated.h5");
    CHECK(ans_h5_probe(p) == 1);
    CHECK_RC(ans_h5_open(&c, p, NULL), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "truncated");
    CHECK_STR_CONTAINS(ans_error_last(), "truncated.h5");
    fx_path(p, sizeof p, "hostile/tiny.h5");
    CHECK_RC(ans_h5_open(&c, p, NULL), ANS_ECORRUPT);
    fx_path(p, sizeof p, "hostile/random.bin");
    CHECK(ans_h5_probe(p) == 0);
    CHECK_RC(ans_h5_open(&c, p, NULL), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "not an HDF5 file");
    fx_path(p, sizeof p, "hostile/text.h5ad");
    CHECK_RC(ans_h5_open(&c, p, NULL), ANS_ECORRUPT);
    fx_path(p, sizeof p, "hostile/sig_random.h5");
    CHECK(ans_h5_open(&c, p, NULL) < 0);
    CHECK(c == NULL);
    CHECK(ans_error_last()[0] != '\0');

    /* The dataspace claims 1000 times the rows the file holds. */
    fx_path(p, sizeof p, "hostile/bigdims.h5");
    CHECK_OK(ans_h5_open(&c, p, NULL));
    if (c) {
        ans_array *a = NULL;
        int rc = c->ops->open_array(c, "victim", &a);
        if (rc == ANS_OK) {
            ans_range r = {a->shape[0] - 10, 10};
            double buf[10];
            rc = a->ops->read(a, &r, 1, buf);
            ans_array_free(a);
        }
        CHECK(rc == ANS_ECORRUPT || rc == ANS_EIO);
        CHECK(ans_error_last()[0] != '\0');
        ans_container_free(c);
        c = NULL;
    }
    /* A corrupt gzip chunk: its rows fail, the other chunks read. */
    fx_path(p, sizeof p, "hostile/badchunk.h5");
    CHECK_OK(ans_h5_open(&c, p, NULL));
    if (c) {
        ans_array *a = NULL;
        CHECK_OK(c->ops->open_array(c, "x", &a));
        if (a) {
            double buf[1000];
            ans_range good = {2000, 1000}, bad = {1500, 10};
            CHECK_OK(a->ops->read(a, &good, 1, buf));
            CHECK(buf[0] == 2000.0 && buf[999] == 2999.0);
            CHECK_RC(a->ops->read(a, &bad, 1, buf), ANS_ECORRUPT);
            CHECK_STR_CONTAINS(ans_error_last(), "badchunk.h5");
            CHECK_STR_CONTAINS(ans_error_last(), "'x'");
            ans_array_free(a);
        }
        ans_container_free(c);
        c = NULL;
    }
    /* HDF5 2.0 native complex: unknown to libhdf5 1.10, refused with a message. */
    fx_path(p, sizeof p, "hostile/native_complex.h5");
    if (access(p, R_OK) == 0 && ans_h5_open(&c, p, NULL) == ANS_OK) {
        ans_array *a = NULL;
        int rc = c->ops->open_array(c, "c", &a);
        if (rc == ANS_OK) {
            CHECK(a->dtype == ANS_DTYPE_COMPLEX128); /* a libhdf5 that knows the type */
            ans_array_free(a);
        } else {
            CHECK(rc == ANS_EUNSUPPORTED || rc == ANS_ECORRUPT);
            CHECK(ans_error_last()[0] != '\0');
        }
        ans_container_free(c);
        c = NULL;
    }
}

static void test_userblock(void)
{
    if (!need_fixtures("userblock")) return;
    char p[1024];
    fx_path(p, sizeof p, "userblock.h5");
    CHECK(ans_h5_probe(p) == 1);
    /* Values are checked by the manifest; here only that the contiguous-extent check copes with
     * the user block offset. */
    ans_container *c = open_fx("userblock.h5");
    ans_array *a = NULL;
    if (c) CHECK_OK(c->ops->open_array(c, "a", &a));
    ans_array_free(a);
    ans_container_free(c);
    /* A writer's exclusive lock: refused as an I/O error, naming the lock. */
    int fd = open(p, O_RDONLY);
    if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0) {
        c = NULL;
        CHECK_RC(ans_h5_open(&c, p, NULL), ANS_EIO);
        CHECK_STR_CONTAINS(ans_error_last(), "lock");
        CHECK(c == NULL);
    }
    if (fd >= 0) close(fd);
}

/* ---- files written here with libhdf5 (special strings) --------------------------------------- */

static void write_special(const char *path)
{
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t n = 4;
    hid_t sp = H5Screate_simple(1, &n, NULL);
    /* vlen UTF-8 with a NULL pointer. */
    hid_t vt = H5Tcopy(H5T_C_S1);
    H5Tset_size(vt, H5T_VARIABLE);
    H5Tset_cset(vt, H5T_CSET_UTF8);
    const char *vals[4] = {"a", NULL, "", "d"};
    hid_t d = H5Dcreate2(f, "vnull", vt, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, vt, H5S_ALL, H5S_ALL, H5P_DEFAULT, vals);
    H5Dclose(d);
    /* Fixed, null-terminated, 6 bytes (one item uses all 6). */
    hid_t ft = H5Tcopy(H5T_C_S1);
    H5Tset_size(ft, 6);
    H5Tset_strpad(ft, H5T_STR_NULLTERM);
    const char fixed[4][6] = {"abc", "abcdef", "", "x"};
    d = H5Dcreate2(f, "nullterm", ft, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, ft, H5S_ALL, H5S_ALL, H5P_DEFAULT, fixed);
    H5Dclose(d);
    /* Space-padded. */
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, 4);
    H5Tset_strpad(st, H5T_STR_SPACEPAD);
    const char spaced[4][4] = {
        {'a', 'b', ' ', ' '}, {' ', ' ', ' ', ' '}, {'a', ' ', 'b', ' '}, {'w', 'x', 'y', 'z'}};
    d = H5Dcreate2(f, "spacepad", st, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, st, H5S_ALL, H5S_ALL, H5P_DEFAULT, spaced);
    /* A fixed string attribute, null-terminated. */
    hid_t as = H5Screate(H5S_SCALAR);
    hid_t at = H5Acreate2(d, "note", ft, as, H5P_DEFAULT, H5P_DEFAULT);
    const char note[6] = "hi";
    H5Awrite(at, ft, note);
    H5Aclose(at);
    H5Sclose(as);
    H5Dclose(d);
    /* ASCII-tagged bytes that are Latin-1, not UTF-8. */
    hid_t lt = H5Tcopy(H5T_C_S1);
    H5Tset_size(lt, 3);
    H5Tset_strpad(lt, H5T_STR_NULLPAD);
    const char latin[4][3] = {"caf", "\xe9", "ok", "\xc3\xa9"};
    d = H5Dcreate2(f, "latin1", lt, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, lt, H5S_ALL, H5S_ALL, H5P_DEFAULT, latin);
    H5Dclose(d);
    /* The bool enum holding a stray 2 (read as true, i.e. 1). */
    hid_t bt = H5Tenum_create(H5T_NATIVE_INT8);
    int8_t v0 = 0, v1 = 1;
    H5Tenum_insert(bt, "FALSE", &v0);
    H5Tenum_insert(bt, "TRUE", &v1);
    const int8_t bools[4] = {0, 1, 2, 0};
    d = H5Dcreate2(f, "bool2", bt, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, bt, H5S_ALL, H5S_ALL, H5P_DEFAULT, bools);
    H5Dclose(d);
    H5Tclose(bt);
    /* A long double dataset: refused. */
    d = H5Dcreate2(f, "ldouble", H5T_NATIVE_LDOUBLE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d);
    H5Tclose(vt);
    H5Tclose(ft);
    H5Tclose(st);
    H5Tclose(lt);
    H5Sclose(sp);
    H5Fclose(f);
}

static void check_strings(ans_container *c, const char *path, const char *const *want, size_t n)
{
    ans_array *a = NULL;
    CHECK_OK(c->ops->open_array(c, path, &a));
    if (!a) return;
    uint64_t off[16];
    ans_buf data = {0};
    CHECK_OK(a->ops->read_strings(a, 0, n, off, &data));
    for (size_t i = 0; i < n; i++) {
        size_t len = (size_t)(off[i + 1] - off[i]);
        if (len != strlen(want[i]) || memcmp(data.data + off[i], want[i], len) != 0) {
            fprintf(stderr, "  %s[%zu] = '%.*s', expected '%s'\n", path, i, (int)len,
                    (const char *)data.data + off[i], want[i]);
            CHECK(0);
        }
    }
    ans_buf_free(&data);
    ans_array_free(a);
}

static void test_special_strings(void)
{
    char p[512];
    snprintf(p, sizeof p, "%s/special.h5", tmp_dir);
    write_special(p);
    ans_container *c = NULL;
    CHECK_OK(ans_h5_open(&c, p, NULL));
    if (!c) return;
    const char *vnull[] = {"a", "", "", "d"};
    check_strings(c, "vnull", vnull, 4);
    const char *nullterm[] = {"abc", "abcdef", "", "x"};
    check_strings(c, "nullterm", nullterm, 4);
    const char *spacepad[] = {"ab", "", "a b", "wxyz"};
    check_strings(c, "spacepad", spacepad, 4);
    const char *latin[] = {"caf", "\xc3\xa9", "ok", "\xc3\xa9"};
    check_strings(c, "latin1", latin, 4);
    check_str(ans_json_get(attrs_of(c, "spacepad"), "note"), "hi");
    ans_array *a = NULL;
    CHECK_OK(c->ops->open_array(c, "bool2", &a));
    if (a) {
        uint8_t b[4] = {9, 9, 9, 9};
        ans_range r = {0, 4};
        CHECK(a->dtype == ANS_DTYPE_BOOL);
        CHECK_OK(a->ops->read(a, &r, 1, b));
        CHECK(b[0] == 0 && b[1] == 1 && b[2] == 1 && b[3] == 0);
        ans_array_free(a);
        a = NULL;
    }
    CHECK_RC(c->ops->open_array(c, "ldouble", &a), ANS_EUNSUPPORTED);
    CHECK_STR_CONTAINS(ans_error_last(), "float");
    ans_container_free(c);
    unlink(p);
}

/* ---- threads --------------------------------------------------------------------------------- */

static const char *const thr_attr_paths[] = {"attrs", "int/i4", "", "chunked", "str/many"};
#define THR_NATTR (sizeof thr_attr_paths / sizeof thr_attr_paths[0])

typedef struct thr_ctx {
    ans_container *c;
    const ans_json *attrs[THR_NATTR];
    ans_array *num;
    ans_array *str;
    const float *want;
    const uint64_t *soff;
    const char *sdata;
    unsigned seed;
    int errors;
} thr_ctx;

static unsigned next_rand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xFFFFFF;
}

static void *thr_main(void *arg)
{
    thr_ctx *t = arg;
    /* Attributes first, all threads at once: the cache must hand out one object per path. */
    for (size_t i = 0; i < THR_NATTR; i++)
        if (t->c->ops->attrs(t->c, thr_attr_paths[i], &t->attrs[i]) != ANS_OK) t->errors++;
    float *buf = malloc(1000 * 37 * sizeof *buf);
    for (int it = 0; it < 60; it++) {
        ans_range r[8];
        size_t nr = 1 + next_rand(&t->seed) % 8, rows = 0;
        for (size_t i = 0; i < nr; i++) {
            r[i].start = next_rand(&t->seed) % 1000;
            r[i].count = next_rand(&t->seed) % (1000 - r[i].start < 40 ? 1000 - r[i].start : 40);
            rows += r[i].count;
        }
        if (t->num->ops->read(t->num, r, nr, buf) != ANS_OK) {
            t->errors++;
            continue;
        }
        size_t o = 0;
        for (size_t i = 0; i < nr; i++) {
            if (memcmp(buf + o, t->want + r[i].start * 37, r[i].count * 37 * sizeof(float)) != 0)
                t->errors++;
            o += r[i].count * 37;
        }
        (void)rows;
        uint64_t start = next_rand(&t->seed) % 49000, off[101];
        ans_buf data = {0};
        if (t->str->ops->read_strings(t->str, start, 100, off, &data) != ANS_OK ||
            data.len != t->soff[start + 100] - t->soff[start] ||
            memcmp(data.data, t->sdata + t->soff[start], data.len) != 0)
            t->errors++;
        ans_buf_free(&data);
    }
    free(buf);
    return NULL;
}

static void test_threads(void)
{
    if (!need_fixtures("threads")) return;
    ans_container *c = open_fx("fixtures.h5");
    if (!c) return;
    ans_array *num = NULL, *str = NULL;
    CHECK_OK(c->ops->open_array(c, "chunked/gz2d", &num));
    CHECK_OK(c->ops->open_array(c, "str/many", &str));
    char p[1024];
    fx_path(p, sizeof p, "fixtures_h5_chunked_gz2d.bin");
    size_t len = 0;
    float *want = slurp(p, &len);
    fx_path(p, sizeof p, "fixtures_h5_str_many.bin");
    uint64_t *soff = NULL;
    char *sdata = load_strings(p, 50000, &soff);
    if (num && str && want && len == 1000 * 37 * 4) {
        enum { NT = 8 };
        pthread_t th[NT];
        thr_ctx ctx[NT];
        for (int i = 0; i < NT; i++) {
            ctx[i] = (thr_ctx){c, {NULL}, num, str, want, soff, sdata, 1234u + (unsigned)i, 0};
            pthread_create(&th[i], NULL, thr_main, &ctx[i]);
        }
        for (int i = 0; i < NT; i++) {
            pthread_join(th[i], NULL);
            CHECK_EQ_U64(ctx[i].errors, 0);
        }
        for (size_t k = 0; k < THR_NATTR; k++) {
            const ans_json *j = attrs_of(c, thr_attr_paths[k]);
            for (int i = 0; i < NT; i++)
                CHECK(ctx[i].attrs[k] == j);
        }
    } else {
        CHECK(0);
    }
    free(want);
    free(soff);
    free(sdata);
    ans_array_free(num);
    ans_array_free(str);
    ans_container_free(c);
}

static void test_threadsafe_flag(void)
{
    /* Informational: which locking mode this libhdf5 needs. */
    hbool_t ts = 0;
    H5is_library_threadsafe(&ts);
    printf("info libhdf5 %d.%d.%d, thread-safe build: %s\n", H5_VERS_MAJOR, H5_VERS_MINOR,
           H5_VERS_RELEASE, ts ? "yes" : "no (calls serialised by the global lock)");
}

int main(int argc, char **argv)
{
    static const ans_t_case cases[] = {
        {"threadsafe_flag", test_threadsafe_flag},
        {"manifest", test_manifest},
        {"attrs", test_attrs},
        {"nodes", test_nodes},
        {"describe", test_describe},
        {"lzf", test_lzf},
        {"anndata", test_anndata},
        {"hostile", test_hostile},
        {"userblock", test_userblock},
        {"special_strings", test_special_strings},
        {"threads", test_threads},
    };
    const char *dir = getenv("ANS_H5_FIXTURES");
    if (argc > 1 && is_dir(argv[1])) {
        dir = argv[1];
        argv[1] = argv[0];
        argc--;
        argv++;
    }
    char mp[1024];
    snprintf(mp, sizeof mp, "%s/manifest.txt", dir ? dir : "");
    fx_dir = dir && access(mp, R_OK) == 0 ? dir : NULL;
    const char *tmp = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/ans_test_h5_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    if (ans_pool_new(&pool4, 4) != ANS_OK) {
        fprintf(stderr, "pool: %s\n", ans_error_last());
        return 1;
    }
    cur_pool = pool4;
    int rc = ans_t_run(cases, sizeof cases / sizeof cases[0], argc, argv);
    ans_pool_free(pool4);
    rmdir(tmp_dir);
    return rc;
}
