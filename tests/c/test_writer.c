/* test_writer.c - the zarr v3 writer and the AnnData element writers (src/writer/).
 *
 * Stores are written with the writer and read back through annstream's public read API
 * (ans_store_open, ans_element_read_range, ans_store_read_frame), values compared exactly.
 * The collection test also runs tests/c/check_writer_output.py with the repository's .venv python
 * when it exists (anndata.read_zarr on every dataset); ANS_TEST_WRITER_OUT=<dir> keeps the
 * collection there for a manual run. The data are a pure function of (dataset, row, column), which
 * the Python script recomputes. */
#define _GNU_SOURCE
#include "harness.h"

#include "common/json.h"
#include "common/pool.h"
#include "writer/adw.h"
#include "writer/zarrw.h"

#include <dirent.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_tmp[256];

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void rm_rf(const char *p)
{
    nftw(p, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void t_setup(void)
{
    if (g_tmp[0]) return;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/ans_test_writer_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        exit(2);
    }
}

static void tmp_path(char *buf, size_t cap, const char *name)
{
    t_setup();
    if ((size_t)snprintf(buf, cap, "%s/%s", g_tmp, name) >= cap) buf[0] = '\0';
}

static int read_file(const char *path, uint8_t *buf, size_t cap, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    *len = fread(buf, 1, cap, f);
    fclose(f);
    return 0;
}

/* ---- the data: a pure function of (dataset d, row i, column j) --------------------------------
 */

#define N_VARS 50
static uint64_t ds_rows(int d)
{
    return 150 + 37 * (uint64_t)d;
}
static int x_nz(int d, uint64_t i, uint64_t j)
{
    return (i * 7 + j * 3 + (uint64_t)d) % 5 == 0 && i % 11 != 3;
}
static float x_val(int d, uint64_t i, uint64_t j)
{
    return (float)((double)(d * 100000 + i * 100 + j) * 0.5);
}
static float emb_val(int d, uint64_t i, uint64_t k)
{
    return (i >= 16 && i < 48) ? 0.0f : (float)(d * 10000 + i * 6 + k) + 0.25f;
}
static int16_t layer_val(int d, uint64_t i, uint64_t j)
{
    return (int16_t)((int64_t)((i + j + (uint64_t)d) % 7) - 3);
}
static int cat_code(uint64_t i)
{
    return i % 4 == 3 ? -1 : (int)(i % 3);
}

typedef struct strs {
    uint64_t *off;
    char *data;
    uint64_t n;
} strs;

/* item i: "<prefix><d><sep><i>", or "" when empty_every divides i */
static strs make_strs(uint64_t n, const char *prefix, const char *sep, int d, int empty_every)
{
    strs s = {calloc(n + 1, 8), calloc(n * 32 + 1, 1), n};
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (!(empty_every && i % (uint64_t)empty_every == 0))
            pos += (uint64_t)snprintf(s.data + pos, 32, "%s%d%s%llu", prefix, d, sep,
                                      (unsigned long long)i);
        s.off[i + 1] = pos;
    }
    return s;
}
static void free_strs(strs *s)
{
    free(s->off);
    free(s->data);
}

/* Write dataset d as the AnnData group `prefix`. */
static int write_dataset(ans_zw *w, const char *prefix, int d, const ans_adw_opts *o)
{
    uint64_t n = ds_rows(d);
    char p[512];
    int rc = ans_adw_anndata(w, prefix);
#define P(name) (snprintf(p, sizeof p, "%s%s%s", prefix, prefix[0] ? "/" : "", name), p)
    /* X: CSR streamed in pieces of 29 rows */
    uint64_t nnz = 0;
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t j = 0; j < N_VARS; j++)
            nnz += (uint64_t)x_nz(d, i, j);
    ans_adw_csr *c = NULL;
    if (rc == ANS_OK) rc = ans_adw_csr_begin(w, P("X"), n, N_VARS, nnz, ANS_DTYPE_FLOAT32, o, &c);
    int64_t *indptr = calloc(n + 1, 8);
    int32_t *ind = calloc(nnz + 1, 4);
    float *val = calloc(nnz + 1, 4);
    uint64_t k = 0;
    for (uint64_t i = 0; i < n; i++) {
        for (uint64_t j = 0; j < N_VARS; j++)
            if (x_nz(d, i, j)) {
                ind[k] = (int32_t)j;
                val[k++] = x_val(d, i, j);
            }
        indptr[i + 1] = (int64_t)k;
    }
    for (uint64_t r = 0; rc == ANS_OK && r < n; r += 29) {
        uint64_t m = n - r < 29 ? n - r : 29;
        rc =
            ans_adw_csr_append(c, m, indptr + r, ind + indptr[r], ANS_DTYPE_INT32, val + indptr[r]);
    }
    if (c) {
        if (rc == ANS_OK)
            rc = ans_adw_csr_close(c);
        else
            ans_adw_csr_abort(c);
    }
    free(indptr);
    free(ind);
    free(val);
    /* obsm/emb: 3-D float32, rows 16..47 zero (their inner chunks are omitted) */
    float *emb = calloc(n * 6, 4);
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t q = 0; q < 6; q++)
            emb[i * 6 + q] = emb_val(d, i, q);
    uint64_t eshape[3] = {n, 3, 2};
    if (rc == ANS_OK) rc = ans_adw_dense(w, P("obsm/emb"), ANS_DTYPE_FLOAT32, 3, eshape, emb, o);
    free(emb);
    /* layers/counts: 2-D int16, streamed */
    ans_zwa *a = NULL;
    uint64_t lshape[2] = {n, N_VARS};
    if (rc == ANS_OK)
        rc = ans_adw_dense_begin(w, P("layers/counts"), ANS_DTYPE_INT16, 2, lshape, o, &a);
    int16_t row[N_VARS];
    for (uint64_t i = 0; rc == ANS_OK && i < n; i++) {
        for (uint64_t j = 0; j < N_VARS; j++)
            row[j] = layer_val(d, i, j);
        rc = ans_zwa_append(a, row, 1);
    }
    if (a) {
        if (rc == ANS_OK)
            rc = ans_zwa_close(a);
        else
            ans_zwa_abort(a);
    }
    /* obs */
    static const char *const cols[] = {"f", "cat", "ni", "nb", "s", "src"};
    if (rc == ANS_OK) rc = ans_adw_frame(w, P("obs"), NULL, cols, 6);
    strs idx = make_strs(n, "cell_", "_", d, 0);
    strs s = make_strs(n, "s", "_", d, 9);
    strs cats = make_strs(3, "c", "", 0, 0);
    double *f = calloc(n, 8);
    int32_t *codes = calloc(n, 4), *ni = calloc(n, 4);
    uint8_t *nb = calloc(n, 1), *mi = calloc(n, 1), *mb = calloc(n, 1);
    for (uint64_t i = 0; i < n; i++) {
        f[i] = (double)i * 0.25 + d;
        codes[i] = cat_code(i);
        ni[i] = i % 5 == 0 ? 0 : (int32_t)i - 70;
        mi[i] = i % 5 == 0;
        nb[i] = i % 7 == 0 ? 0 : (uint8_t)(i % 2);
        mb[i] = i % 7 == 0;
    }
    if (rc == ANS_OK) rc = ans_adw_strings(w, P("obs/_index"), n, idx.off, idx.data, o);
    if (rc == ANS_OK) rc = ans_adw_column(w, P("obs/f"), ANS_DTYPE_FLOAT64, n, f, o);
    if (rc == ANS_OK)
        rc = ans_adw_categorical(w, P("obs/cat"), n, codes, ANS_DTYPE_INT32, 3, cats.off, cats.data,
                                 0, o);
    /* "src": a streamed categorical (ordered), one code per row, appended in pieces of 50 */
    ans_zwa *sc = NULL;
    strs srcs = make_strs(2, "src", "_", d, 0);
    if (rc == ANS_OK)
        rc = ans_adw_categorical_begin(w, P("obs/src"), n, 2, srcs.off, srcs.data, 1, o, &sc);
    if (rc == ANS_OK && ans_adw_codes_dtype(2) != ANS_DTYPE_INT8) rc = ANS_EGENERIC;
    for (uint64_t r = 0; rc == ANS_OK && r < n; r += 50) {
        int8_t piece[50];
        uint64_t m = n - r < 50 ? n - r : 50;
        for (uint64_t i = 0; i < m; i++)
            piece[i] = (int8_t)((r + i) / 100 % 2);
        rc = ans_zwa_append(sc, piece, m);
    }
    if (sc) {
        if (rc == ANS_OK)
            rc = ans_zwa_close(sc);
        else
            ans_zwa_abort(sc);
    }
    free_strs(&srcs);
    if (rc == ANS_OK) rc = ans_adw_nullable(w, P("obs/ni"), ANS_DTYPE_INT32, n, ni, mi, o);
    if (rc == ANS_OK) rc = ans_adw_nullable(w, P("obs/nb"), ANS_DTYPE_BOOL, n, nb, mb, o);
    if (rc == ANS_OK) rc = ans_adw_strings(w, P("obs/s"), n, s.off, s.data, o);
    free(f);
    free(codes);
    free(ni);
    free(nb);
    free(mi);
    free(mb);
    free_strs(&idx);
    free_strs(&s);
    free_strs(&cats);
    /* var */
    strs vidx = make_strs(N_VARS, "gene_", "_", 0, 0);
    if (rc == ANS_OK) rc = ans_adw_frame(w, P("var"), NULL, NULL, 0);
    if (rc == ANS_OK) rc = ans_adw_strings(w, P("var/_index"), N_VARS, vidx.off, vidx.data, o);
    free_strs(&vidx);
#undef P
    return rc;
}

static void check_strings(const ans_column *c, uint64_t n, const char *prefix, int d,
                          int empty_every)
{
    strs s = make_strs(n, prefix, "_", d, empty_every);
    CHECK_EQ_U64(c->length, n);
    CHECK(c->kind == ANS_COLUMN_STRING);
    int bad = 0;
    for (uint64_t i = 0; i < n && c->str_offsets; i++) {
        uint64_t l1 = c->str_offsets[i + 1] - c->str_offsets[i], l2 = s.off[i + 1] - s.off[i];
        if (l1 != l2 || memcmp(c->str_data + c->str_offsets[i], s.data + s.off[i], l1)) bad++;
    }
    CHECK(bad == 0);
    free_strs(&s);
}

/* Read dataset d at `path` back through the public API and compare every value. */
static void check_dataset(const char *path, int d)
{
    uint64_t n = ds_rows(d);
    ans_store *st = NULL;
    ans_store_options so = ANS_STORE_OPTIONS_INIT;
    so.threads = 3;
    CHECK_OK(ans_store_open(&st, path, &so));
    if (!st) return;
    CHECK(!strcmp(ans_store_container(st), "zarr-v3"));
    CHECK_EQ_U64(ans_store_n_obs(st), n);
    CHECK_EQ_U64(ans_store_n_vars(st), N_VARS);
    CHECK_EQ_U64(ans_store_n_keys(st), 3); /* X, layers/counts, obsm/emb */
    /* X */
    ans_element *e = NULL;
    ans_rows *r = NULL;
    CHECK_OK(ans_store_element(&e, st, "X"));
    if (e) {
        CHECK(ans_element_format(e) == ANS_FORMAT_CSR);
        CHECK(ans_element_dtype(e) == ANS_DTYPE_FLOAT32);
        CHECK_OK(ans_element_read_range(e, 0, n, &r));
    }
    if (r) {
        CHECK(ans_rows_index_dtype(r) == ANS_DTYPE_INT32);
        const int32_t *ip = ans_rows_indptr(r), *ix = ans_rows_indices(r);
        const float *v = ans_rows_data(r);
        int bad = 0;
        uint64_t k = 0;
        for (uint64_t i = 0; i < n; i++) {
            for (uint64_t j = 0; j < N_VARS; j++)
                if (x_nz(d, i, j)) {
                    if (k >= ans_rows_nnz(r) || ix[k] != (int32_t)j || v[k] != x_val(d, i, j))
                        bad++;
                    k++;
                }
            if ((uint64_t)ip[i + 1] != k) bad++;
        }
        CHECK(bad == 0);
        CHECK_EQ_U64(ans_rows_nnz(r), k);
        ans_rows_free(r);
        r = NULL;
    }
    ans_element_free(e);
    e = NULL;
    /* obsm/emb, read in a shuffled order of rows */
    CHECK_OK(ans_store_element(&e, st, "obsm/emb"));
    if (e) {
        CHECK_EQ_U64(ans_element_ndim(e), 3);
        int64_t *rows = malloc(n * 8);
        for (uint64_t i = 0; i < n; i++)
            rows[i] = (int64_t)((i * 37) % n);
        CHECK_OK(ans_element_read_rows(e, rows, n, &r));
        if (r) {
            const float *v = ans_rows_data(r);
            int bad = 0;
            for (uint64_t i = 0; i < n; i++)
                for (uint64_t q = 0; q < 6; q++)
                    if (v[i * 6 + q] != emb_val(d, (uint64_t)rows[i], q)) bad++;
            CHECK(bad == 0);
            ans_rows_free(r);
            r = NULL;
        }
        free(rows);
    }
    ans_element_free(e);
    e = NULL;
    CHECK_OK(ans_store_element(&e, st, "layers/counts"));
    if (e) {
        CHECK(ans_element_dtype(e) == ANS_DTYPE_INT16);
        CHECK_OK(ans_element_read_range(e, 3, n, &r));
        if (r) {
            const int16_t *v = ans_rows_data(r);
            int bad = 0;
            for (uint64_t i = 3; i < n; i++)
                for (uint64_t j = 0; j < N_VARS; j++)
                    if (v[(i - 3) * N_VARS + j] != layer_val(d, i, j)) bad++;
            CHECK(bad == 0);
            ans_rows_free(r);
            r = NULL;
        }
    }
    ans_element_free(e);
    /* obs */
    ans_frame *fr = NULL;
    CHECK_OK(ans_store_read_frame(st, "obs", NULL, 0, &fr));
    if (fr) {
        ans_column c;
        CHECK_EQ_U64(ans_frame_n_rows(fr), n);
        CHECK_EQ_U64(ans_frame_n_columns(fr), 6);
        CHECK_OK(ans_frame_index(fr, &c));
        check_strings(&c, n, "cell_", d, 0);
        CHECK_OK(ans_frame_column(fr, 0, &c));
        CHECK(!strcmp(c.name, "f") && c.kind == ANS_COLUMN_NUMERIC && c.dtype == ANS_DTYPE_FLOAT64);
        int bad = 0;
        for (uint64_t i = 0; i < n; i++)
            if (((const double *)c.values)[i] != (double)i * 0.25 + d) bad++;
        CHECK(bad == 0);
        CHECK_OK(ans_frame_column(fr, 1, &c));
        CHECK(!strcmp(c.name, "cat") && c.kind == ANS_COLUMN_CATEGORICAL &&
              c.dtype == ANS_DTYPE_INT8);
        CHECK(c.ordered == 0 && c.n_categories == 3 && c.cat_dtype == ANS_DTYPE_STRING);
        bad = 0;
        for (uint64_t i = 0; i < n && c.values; i++)
            if (((const int8_t *)c.values)[i] != cat_code(i)) bad++;
        CHECK(bad == 0);
        if (c.cat_offsets) CHECK(!memcmp(c.cat_data + c.cat_offsets[2], "c02", 3));
        CHECK_OK(ans_frame_column(fr, 2, &c));
        CHECK(!strcmp(c.name, "ni") && c.kind == ANS_COLUMN_NULLABLE_INT &&
              c.dtype == ANS_DTYPE_INT32);
        bad = 0;
        for (uint64_t i = 0; i < n && c.values && c.mask; i++)
            if (c.mask[i] != (i % 5 == 0) ||
                (i % 5 && ((const int32_t *)c.values)[i] != (int32_t)i - 70))
                bad++;
        CHECK(bad == 0);
        CHECK_OK(ans_frame_column(fr, 3, &c));
        CHECK(!strcmp(c.name, "nb") && c.kind == ANS_COLUMN_NULLABLE_BOOL);
        bad = 0;
        for (uint64_t i = 0; i < n && c.values && c.mask; i++)
            if (c.mask[i] != (i % 7 == 0) || (i % 7 && ((const uint8_t *)c.values)[i] != i % 2))
                bad++;
        CHECK(bad == 0);
        CHECK_OK(ans_frame_column(fr, 4, &c));
        CHECK(!strcmp(c.name, "s"));
        check_strings(&c, n, "s", d, 9);
        CHECK_OK(ans_frame_column(fr, 5, &c));
        CHECK(!strcmp(c.name, "src") && c.kind == ANS_COLUMN_CATEGORICAL && c.ordered == 1);
        CHECK(c.n_categories == 2 && c.cat_offsets && c.cat_offsets[2] - c.cat_offsets[1] == 6);
        bad = 0;
        for (uint64_t i = 0; i < n && c.values; i++)
            if (((const int8_t *)c.values)[i] != (int8_t)(i / 100 % 2)) bad++;
        CHECK(bad == 0);
        ans_frame_free(fr);
        fr = NULL;
    }
    CHECK_OK(ans_store_read_frame(st, "var", NULL, 0, &fr));
    if (fr) {
        ans_column c;
        CHECK_EQ_U64(ans_frame_n_columns(fr), 0);
        CHECK_OK(ans_frame_index(fr, &c));
        check_strings(&c, N_VARS, "gene_", 0, 0);
        ans_frame_free(fr);
    }
    ans_store_free(st);
}

/* ---- tests --------------------------------------------------------------------------------------
 */

/* formats.md section 3 worked example: byte-exact shards. */
static void test_shard_worked_example(void)
{
    char root[PATH_MAX], f[PATH_MAX + 32];
    tmp_path(root, sizeof root, "worked.zarr");
    ans_zw *w = NULL;
    CHECK_OK(ans_zw_create(&w, root, NULL));
    if (!w) return;
    ans_zw_array_opts o = {0};
    o.dtype = ANS_DTYPE_INT32;
    o.ndim = 1;
    o.shape[0] = 16;
    o.chunk_rows = 4;
    o.shard_rows = 8;
    o.codec.comp = ANS_ZW_COMP_NONE;
    ans_zwa *a = NULL;
    CHECK_OK(ans_zw_array_new(w, "a", &o, &a));
    int32_t v[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 0, 0, 0};
    if (a) {
        CHECK_OK(ans_zwa_append(a, v, 5));
        CHECK_OK(ans_zwa_append(a, v + 5, 11));
        CHECK_OK(ans_zwa_close(a));
    }
    CHECK_OK(ans_zw_finish(w));
    ans_zw_free(w);
    uint8_t buf[256];
    size_t len = 0;
    snprintf(f, sizeof f, "%s/a/c/0", root);
    CHECK(read_file(f, buf, sizeof buf, &len) == 0);
    CHECK_EQ_U64(len, 68);
    static const uint8_t crc1[4] = {0xda, 0x13, 0x6a, 0x9d};
    CHECK(len == 68 && !memcmp(buf + 64, crc1, 4) && !memcmp(buf, v, 32));
    /* second shard: 8..11 then zeros: inner chunk 1 omitted */
    snprintf(f, sizeof f, "%s/a/c/1", root);
    CHECK(read_file(f, buf, sizeof buf, &len) == 0);
    CHECK_EQ_U64(len, 52);
    uint64_t ent[4];
    memcpy(ent, buf + 16, 32);
    CHECK(ent[0] == 0 && ent[1] == 16 && ent[2] == UINT64_MAX && ent[3] == UINT64_MAX);
    /* the reader agrees (through the zarr layer's consolidated metadata) */
    snprintf(f, sizeof f, "%s/zarr.json", root);
    CHECK(read_file(f, buf, sizeof buf, &len) == 0);
    CHECK(len > 0 && memmem(buf, len, "consolidated_metadata", 21) != NULL);
}

static void test_collection_roundtrip(void)
{
    const char *keep = getenv("ANS_TEST_WRITER_OUT");
    char root[PATH_MAX];
    if (keep && keep[0])
        snprintf(root, sizeof root, "%s", keep);
    else
        tmp_path(root, sizeof root, "collection.zarr");
    ans_pool *pool = NULL;
    CHECK_OK(ans_pool_new(&pool, 4));
    ans_zw *w = NULL;
    CHECK_OK(ans_zw_create(&w, root, pool));
    if (!w) {
        ans_pool_free(pool);
        return;
    }
    CHECK_OK(ans_adw_collection(w));
    /* small chunks and shards so that every array has several shards and inner chunks */
    ans_adw_opts o = ANS_ADW_OPTS_INIT;
    o.n_obs_per_chunk = 16;
    o.shard_size = 2000;
    o.frame_chunk = 64;
    for (int d = 0; d < 3; d++) {
        char name[32];
        snprintf(name, sizeof name, "dataset_%d", d);
        /* dataset 0: blosc everywhere; 1: zstd; 2: uncompressed */
        if (d == 0) o.frame_codec = o.codec;
        if (d == 1) {
            o.codec.comp = o.frame_codec.comp = ANS_ZW_COMP_ZSTD;
            o.codec.clevel = o.frame_codec.clevel = 0;
        }
        if (d == 2) o.codec.comp = o.frame_codec.comp = ANS_ZW_COMP_NONE;
        CHECK_OK(write_dataset(w, name, d, &o));
    }
    CHECK_OK(ans_zw_finish(w));
    ans_zw_free(w);
    ans_pool_free(pool);
    for (int d = 0; d < 3; d++) {
        char p[PATH_MAX + 32];
        snprintf(p, sizeof p, "%s/dataset_%d", root, d);
        check_dataset(p, d);
    }
    /* anndata itself, when the repository's venv exists */
    char src[PATH_MAX], py[PATH_MAX + 32], script[PATH_MAX + 64], cmd[3 * PATH_MAX + 256];
    snprintf(src, sizeof src, "%s", __FILE__);
    char real[PATH_MAX];
    if (realpath(dirname(src), real)) {
        snprintf(py, sizeof py, "%s/../../.venv/bin/python", real);
        snprintf(script, sizeof script, "%s/check_writer_output.py", real);
        if (access(py, X_OK) == 0 && access(script, R_OK) == 0) {
            snprintf(cmd, sizeof cmd, "'%s' '%s' '%s'", py, script, root);
            int st = system(cmd);
            CHECK(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
        } else {
            printf("skip anndata read-back (no %s)\n", py);
        }
    }
}

/* One AnnData at the root of its store: opened through the consolidated metadata. */
static void test_anndata_at_root(void)
{
    char root[PATH_MAX];
    tmp_path(root, sizeof root, "single.zarr");
    ans_zw *w = NULL;
    CHECK_OK(ans_zw_create(&w, root, NULL));
    if (!w) return;
    ans_adw_opts o = ANS_ADW_OPTS_INIT; /* defaults: one shard per array */
    CHECK_OK(write_dataset(w, "", 4, &o));
    CHECK_OK(ans_zw_finish(w));
    ans_zw_free(w);
    check_dataset(root, 4);
}

/* chunk_shape of the chunk grid (`outer`) or of the sharding codec's inner chunks, axis 0. */
static uint64_t meta_chunk(const char *root, const char *arr, int inner)
{
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s/zarr.json", root, arr);
    static uint8_t buf[1 << 16];
    size_t len = 0;
    uint64_t v = 0;
    ans_json *j = NULL;
    if (read_file(p, buf, sizeof buf, &len) < 0 || ans_json_parse((const char *)buf, len, &j) < 0)
        return 0;
    const ans_json *cs;
    if (inner) {
        const ans_json *c0 = ans_json_at(ans_json_get(j, "codecs"), 0);
        cs = ans_json_get(ans_json_get(c0, "configuration"), "chunk_shape");
    } else {
        cs = ans_json_get(ans_json_get(ans_json_get(j, "chunk_grid"), "configuration"),
                          "chunk_shape");
    }
    if (ans_json_get_u64(ans_json_at(cs, 0), &v) < 0) v = 0;
    ans_json_free(j);
    return v;
}

/* annbatch's chunk / shard rules (adw.h), numbers worked out by hand from its formulas. */
static void test_shard_plan(void)
{
    char root[PATH_MAX];
    tmp_path(root, sizeof root, "plan.zarr");
    ans_zw *w = NULL;
    CHECK_OK(ans_zw_create(&w, root, NULL));
    if (!w) return;
    ans_adw_opts o = ANS_ADW_OPTS_INIT;
    o.n_obs_per_chunk = 16;
    o.shard_size = 4096;
    /* dense 200 x 40 float32: 160 bytes a row -> 25 rows -> rounded down to 16 */
    uint64_t shape[2] = {200, 40};
    float *z = calloc(200 * 40, 4);
    CHECK_OK(ans_adw_dense(w, "d1", ANS_DTYPE_FLOAT32, 2, shape, z, &o));
    /* 200 x 4 float32: 16 bytes a row -> 256 rows -> clamped to 200 -> 192 */
    shape[1] = 4;
    CHECK_OK(ans_adw_dense(w, "d2", ANS_DTYPE_FLOAT32, 2, shape, z, &o));
    /* 10 rows: chunk clamped to 10, shard 10 */
    shape[0] = 10;
    CHECK_OK(ans_adw_dense(w, "d3", ANS_DTYPE_FLOAT32, 2, shape, z, &o));
    /* CSR 200 x 40, nnz 1609 float32 (uint8 indices): 1609 * 5 + 201 * 8 = 9653 bytes,
     * 48.265 a row -> 84 rows a shard; avg 8.045: chunk int(128.72) = 128,
     * shard int(675.78) = 675 -> 640 */
    int64_t *ip = calloc(201, 8);
    for (int i = 0; i <= 200; i++)
        ip[i] = i * 1609 / 200;
    int32_t *ix = calloc(1609, 4);
    for (int k = 0; k < 1609; k++)
        ix[k] = k % 40;
    CHECK_OK(ans_adw_csr_write(w, "X", 200, 40, ip, ix, ANS_DTYPE_INT32, z, ANS_DTYPE_FLOAT32, &o));
    free(ip);
    free(ix);
    free(z);
    CHECK_OK(ans_zw_finish(w));
    ans_zw_free(w);
    CHECK_EQ_U64(meta_chunk(root, "d1", 1), 16);
    CHECK_EQ_U64(meta_chunk(root, "d1", 0), 16);
    CHECK_EQ_U64(meta_chunk(root, "d2", 1), 16);
    CHECK_EQ_U64(meta_chunk(root, "d2", 0), 192);
    CHECK_EQ_U64(meta_chunk(root, "d3", 1), 10);
    CHECK_EQ_U64(meta_chunk(root, "d3", 0), 10);
    CHECK_EQ_U64(meta_chunk(root, "X/data", 1), 128);
    CHECK_EQ_U64(meta_chunk(root, "X/data", 0), 640);
    CHECK_EQ_U64(meta_chunk(root, "X/indices", 0), 640);
    CHECK_EQ_U64(meta_chunk(root, "X/indptr", 1), 128);
    CHECK_EQ_U64(meta_chunk(root, "X/indptr", 0), 640);
}

/* Zero rows, zero values, zero-width rows: metadata only, no chunk keys. */
static void test_empty(void)
{
    for (int n = 0; n < 2; n++) {
        char root[PATH_MAX];
        tmp_path(root, sizeof root, n ? "empty1.zarr" : "empty0.zarr");
        ans_zw *w = NULL;
        CHECK_OK(ans_zw_create(&w, root, NULL));
        if (!w) return;
        uint64_t rows = (uint64_t)n * 3;
        int64_t ip[4] = {0, 0, 0, 0};
        uint64_t eshape[2] = {rows, 0}, offs[4] = {0, 1, 2, 3};
        CHECK_OK(ans_adw_anndata(w, ""));
        CHECK_OK(ans_adw_csr_write(w, "X", rows, 5, ip, NULL, ANS_DTYPE_INT32, NULL,
                                   ANS_DTYPE_FLOAT64, NULL));
        CHECK_OK(ans_adw_dense(w, "obsm/none", ANS_DTYPE_FLOAT32, 2, eshape, NULL, NULL));
        CHECK_OK(ans_adw_frame(w, "obs", NULL, NULL, 0));
        CHECK_OK(ans_adw_strings(w, "obs/_index", rows, offs, "abc", NULL));
        CHECK_OK(ans_adw_frame(w, "var", NULL, NULL, 0));
        CHECK_OK(
            ans_adw_strings(w, "var/_index", 5, (uint64_t[]){0, 1, 2, 3, 4, 5}, "vwxyz", NULL));
        CHECK_OK(ans_zw_finish(w));
        ans_zw_free(w);
        char key[PATH_MAX + 32];
        snprintf(key, sizeof key, "%s/X/data/c", root);
        CHECK(access(key, F_OK) != 0); /* no chunk written */
        ans_store *st = NULL;
        CHECK_OK(ans_store_open(&st, root, NULL));
        if (!st) continue;
        CHECK_EQ_U64(ans_store_n_obs(st), rows);
        CHECK_EQ_U64(ans_store_n_vars(st), 5);
        ans_element *e = NULL;
        ans_rows *r = NULL;
        CHECK_OK(ans_store_element(&e, st, "X"));
        if (e) CHECK_OK(ans_element_read_range(e, 0, rows, &r));
        if (r) {
            CHECK_EQ_U64(ans_rows_nnz(r), 0);
            CHECK_EQ_U64(ans_rows_shape(r)[0], rows);
            const int32_t *rp = ans_rows_indptr(r);
            CHECK(rp[rows] == 0);
        }
        ans_rows_free(r);
        ans_element_free(e);
        ans_store_free(st);
    }
}

/* Entries of `dir` that start with "<name>.tmp-". */
static int count_tmp_in(const char *dir, const char *name)
{
    char pat[300];
    snprintf(pat, sizeof pat, "%s.tmp-", name);
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (!strncmp(e->d_name, pat, strlen(pat))) n++;
    if (d) closedir(d);
    return n;
}

static int count_tmp_siblings(const char *name)
{
    return count_tmp_in(g_tmp, name);
}

/* The output appears complete at ans_zw_finish, or not at all. */
static void test_atomic_output(void)
{
    char root[PATH_MAX];
    tmp_path(root, sizeof root, "sub/dir/atomic.zarr"); /* parents are created */
    ans_zw *w = NULL;
    CHECK_OK(ans_zw_create(&w, root, NULL));
    if (!w) return;
    CHECK_OK(ans_adw_anndata(w, ""));
    CHECK(access(root, F_OK) != 0);
    char parent[PATH_MAX];
    tmp_path(parent, sizeof parent, "sub/dir");
    CHECK(count_tmp_in(parent, "atomic.zarr") == 1);
    ans_zw_free(w); /* not finished: everything goes */
    CHECK(count_tmp_in(parent, "atomic.zarr") == 0);
    CHECK(access(root, F_OK) != 0);
    w = NULL;
    CHECK_OK(ans_zw_create(&w, root, NULL));
    if (w) {
        CHECK_OK(ans_adw_collection(w));
        CHECK_OK(ans_zw_finish(w));
        ans_zw_free(w);
    }
    CHECK(access(root, F_OK) == 0);
    CHECK(count_tmp_in(parent, "atomic.zarr") == 0);
    char key[PATH_MAX + 16];
    snprintf(key, sizeof key, "%s/zarr.json", root);
    CHECK(access(key, F_OK) == 0);
}

static void test_errors(void)
{
    char root[PATH_MAX];
    tmp_path(root, sizeof root, "errors.zarr");
    ans_zw *w = NULL;
    CHECK_OK(ans_zw_create(&w, root, NULL));
    if (!w) return;
    CHECK_OK(ans_adw_anndata(w, ""));
    CHECK_RC(ans_adw_dict(w, "obsm"), ANS_EINVAL);
    CHECK_STR_CONTAINS(ans_error_last(), "obsm: node written twice");
    CHECK_RC(ans_adw_dict(w, "a//b"), ANS_EINVAL);
    /* a column index out of range names the file and the element */
    ans_adw_csr *c = NULL;
    CHECK_OK(ans_adw_csr_begin(w, "X", 2, 4, 3, ANS_DTYPE_FLOAT32, NULL, &c));
    int64_t ip[3] = {0, 2, 3};
    int32_t ix[3] = {0, 4, 1};
    float v[3] = {1, 2, 3};
    if (c) {
        CHECK_RC(ans_adw_csr_append(c, 2, ip, ix, ANS_DTYPE_INT32, v), ANS_EINVAL);
        CHECK_STR_CONTAINS(ans_error_last(),
                           "errors.zarr: element 'X': column index 1 is out of range");
        ix[1] = 3;
        CHECK_OK(ans_adw_csr_append(c, 1, ip, ix, ANS_DTYPE_INT32, v));
        CHECK_RC(ans_adw_csr_close(c), ANS_EINVAL); /* one row missing */
        CHECK_STR_CONTAINS(ans_error_last(), "1 rows / 2 values written, 2 / 3 announced");
    }
    /* a path is taken while its array is open */
    ans_zwa *open1 = NULL, *open2 = NULL;
    uint64_t one[1] = {1};
    CHECK_OK(ans_adw_dense_begin(w, "obsm/x", ANS_DTYPE_INT8, 1, one, NULL, &open1));
    CHECK_RC(ans_adw_dense_begin(w, "obsm/x", ANS_DTYPE_INT8, 1, one, NULL, &open2), ANS_EINVAL);
    CHECK(open2 == NULL);
    CHECK_RC(ans_zw_finish(w), ANS_EINVAL);
    CHECK_STR_CONTAINS(ans_error_last(), "1 arrays still open");
    ans_zwa_abort(open1);
    /* wrong row count for a dense array */
    uint64_t shape[2] = {4, 2};
    ans_zwa *a = NULL;
    CHECK_OK(ans_adw_dense_begin(w, "layers/d", ANS_DTYPE_FLOAT64, 2, shape, NULL, &a));
    double rows[4] = {1, 2, 3, 4};
    if (a) {
        CHECK_OK(ans_zwa_append(a, rows, 2));
        CHECK_RC(ans_zwa_close(a), ANS_EINVAL);
        CHECK_STR_CONTAINS(ans_error_last(), "layers/d: 2 rows written, the shape says 4");
    }
    CHECK_RC(ans_adw_categorical(w, "obs_cat", 1, (int32_t[]){3}, ANS_DTYPE_INT32, 3,
                                 (uint64_t[]){0, 1, 2, 3}, "abc", 0, NULL),
             ANS_EINVAL);
    CHECK_STR_CONTAINS(ans_error_last(), "element 'obs_cat/codes': code 0 is out of range [-1, 2]");
    /* a second writer to the same output loses the race at finish */
    ans_zw *w2 = NULL;
    CHECK_OK(ans_zw_create(&w2, root, NULL));
    CHECK_OK(ans_zw_finish(w));
    CHECK_RC(ans_zw_finish(w), ANS_EINVAL);
    ans_zw_free(w);
    if (w2) {
        CHECK_OK(ans_adw_collection(w2));
        CHECK_RC(ans_zw_finish(w2), ANS_EINVAL);
        CHECK_STR_CONTAINS(ans_error_last(), "errors.zarr: cannot move the finished store");
        ans_zw_free(w2);
    }
    CHECK_RC(ans_zw_create(&w2, root, NULL), ANS_EINVAL);
    CHECK_STR_CONTAINS(ans_error_last(), "errors.zarr: output already exists");
    CHECK(count_tmp_siblings("errors.zarr") == 0);
}

static void t_teardown(void)
{
    if (g_tmp[0]) rm_rf(g_tmp);
}

ANS_TEST_MAIN({"shard_worked_example", test_shard_worked_example},
              {"collection_roundtrip", test_collection_roundtrip},
              {"anndata_at_root", test_anndata_at_root}, {"shard_plan", test_shard_plan},
              {"empty", test_empty}, {"atomic_output", test_atomic_output}, {"errors", test_errors},
              {"teardown", t_teardown})
