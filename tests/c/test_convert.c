/* test_convert.c - ans_convert (src/writer/convert.c): inputs written with the element writers,
 * converted, and every output dataset read back through the public read API.
 *
 * Data: input `in` has rows r = 0..n-1 and genes named "g<k>" (k a global gene id); X(r, g<k>) is
 * nonzero when (r * 7 + k * 3 + in) % 4 == 0 and then equals key(in, r) + k, where key(in, r) =
 * in * 1e7 + r * 1000 is also stored in the numeric obs column "key". So every output row can be
 * traced back to its source and checked value by value. */
#define _GNU_SOURCE
#include "harness.h"

#include "writer/adw.h"
#include "writer/zarrw.h"

#include <ftw.h>
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

static const char *tmp(const char *name)
{
    static char buf[64][512];
    static int k;
    if (!g_tmp[0]) {
        snprintf(g_tmp, sizeof g_tmp, "/tmp/ans_test_convert_XXXXXX");
        if (!mkdtemp(g_tmp)) exit(2);
    }
    k = (k + 1) % 64;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_tmp, name);
    return buf[k];
}

static double key_of(int in, uint64_t r)
{
    return in * 1e7 + (double)r * 1000;
}
static int nz(int in, uint64_t r, int k)
{
    return ((int)(r % 1000) * 7 + k * 3 + in) % 4 == 0;
}

/* Input `in`: n rows, genes gene_ids[0..nv) in that order; X CSR (or dense) float64; obs: "key"
 * float64, "ct" categorical with categories cats (codes r % ncat), "s" strings; obsm "emb" float32
 * (n x 2: key, -key); layers "cnt" int32 dense (= nz ? k : 0). */
static int write_input(const char *path, int in, uint64_t n, const int *gene_ids, int nv,
                       const char *const *cats, int ncat, int dense_x)
{
    ans_zw *w = NULL;
    ans_adw_opts o = ANS_ADW_OPTS_INIT;
    o.n_obs_per_chunk = 16;
    int rc = ans_zw_create(&w, path, NULL);
    if (rc == ANS_OK) rc = ans_adw_anndata(w, "");
    uint64_t nnz = 0;
    for (uint64_t r = 0; r < n; r++)
        for (int j = 0; j < nv; j++)
            nnz += (uint64_t)nz(in, r, gene_ids[j]);
    int64_t *indptr = calloc(n + 1, 8);
    int32_t *ind = calloc(nnz + 1, 4);
    double *val = calloc(nnz + 1, 8), *dx = calloc(n * (uint64_t)nv + 1, 8);
    int32_t *cnt = calloc(n * (uint64_t)nv + 1, 4);
    uint64_t q = 0;
    for (uint64_t r = 0; r < n; r++) {
        for (int j = 0; j < nv; j++)
            if (nz(in, r, gene_ids[j])) {
                ind[q] = j;
                val[q++] = key_of(in, r) + gene_ids[j];
                dx[r * (uint64_t)nv + (uint64_t)j] = key_of(in, r) + gene_ids[j];
                cnt[r * (uint64_t)nv + (uint64_t)j] = gene_ids[j] + 1;
            }
        indptr[r + 1] = (int64_t)q;
    }
    uint64_t shape[2] = {n, (uint64_t)nv};
    if (rc == ANS_OK) {
        if (dense_x)
            rc = ans_adw_dense(w, "X", ANS_DTYPE_FLOAT64, 2, shape, dx, &o);
        else
            rc = ans_adw_csr_write(w, "X", n, (uint64_t)nv, indptr, ind, ANS_DTYPE_INT32, val,
                                   ANS_DTYPE_FLOAT64, &o);
    }
    if (rc == ANS_OK) rc = ans_adw_dense(w, "layers/cnt", ANS_DTYPE_INT32, 2, shape, cnt, &o);
    float *emb = calloc(n * 2 + 1, 4);
    for (uint64_t r = 0; r < n; r++) {
        emb[2 * r] = (float)key_of(in, r);
        emb[2 * r + 1] = -(float)key_of(in, r);
    }
    uint64_t eshape[2] = {n, 2};
    if (rc == ANS_OK) rc = ans_adw_dense(w, "obsm/emb", ANS_DTYPE_FLOAT32, 2, eshape, emb, &o);
    static const char *const cols[] = {"key", "ct", "s"};
    if (rc == ANS_OK) rc = ans_adw_frame(w, "obs", NULL, cols, 3);
    uint64_t *ioff = calloc(n + 1, 8), *soff = calloc(n + 1, 8);
    char *idata = calloc(n * 24 + 1, 1), *sdata = calloc(n * 24 + 1, 1);
    double *key = calloc(n + 1, 8);
    int32_t *codes = calloc(n + 1, 4);
    for (uint64_t r = 0; r < n; r++) {
        /* names collide across inputs on purpose: "cell<r>" */
        ioff[r + 1] =
            ioff[r] + (uint64_t)sprintf(idata + ioff[r], "cell%llu", (unsigned long long)r);
        soff[r + 1] =
            soff[r] + (uint64_t)sprintf(sdata + soff[r], "s%d_%llu", in, (unsigned long long)r);
        key[r] = key_of(in, r);
        codes[r] = (int32_t)(r % (uint64_t)ncat);
    }
    uint64_t coff[16] = {0};
    char cdata[256];
    for (int k = 0; k < ncat; k++)
        coff[k + 1] = coff[k] + (uint64_t)sprintf(cdata + coff[k], "%s", cats[k]);
    if (rc == ANS_OK) rc = ans_adw_strings(w, "obs/_index", n, ioff, idata, &o);
    if (rc == ANS_OK) rc = ans_adw_column(w, "obs/key", ANS_DTYPE_FLOAT64, n, key, &o);
    if (rc == ANS_OK)
        rc = ans_adw_categorical(w, "obs/ct", n, codes, ANS_DTYPE_INT32, (uint64_t)ncat, coff,
                                 cdata, 0, &o);
    if (rc == ANS_OK) rc = ans_adw_strings(w, "obs/s", n, soff, sdata, &o);
    uint64_t voff[64] = {0};
    char vdata[512];
    for (int j = 0; j < nv; j++)
        voff[j + 1] = voff[j] + (uint64_t)sprintf(vdata + voff[j], "g%d", gene_ids[j]);
    if (rc == ANS_OK) rc = ans_adw_frame(w, "var", NULL, NULL, 0);
    if (rc == ANS_OK) rc = ans_adw_strings(w, "var/_index", (uint64_t)nv, voff, vdata, &o);
    if (rc == ANS_OK) rc = ans_zw_finish(w);
    ans_zw_free(w);
    free(indptr);
    free(ind);
    free(val);
    free(dx);
    free(cnt);
    free(emb);
    free(ioff);
    free(soff);
    free(idata);
    free(sdata);
    free(key);
    free(codes);
    return rc;
}

/* ---- reading a collection back -------------------------------------------------------------- */

typedef struct expect {
    int n_in;
    const char *paths[4];
    uint64_t n[4];
    const char *const *cats[4];
    int ncat[4];
    int has_emb, has_cnt;
    int sfx[4];   /* obs-name suffix of input s's colliding names (its input index) */
    int fallback; /* every name of inputs 1.. suffixed (large inputs for the budget) */
    /* output */
    int var_ids[64]; /* gene id per output column */
    int nv;
    uint64_t n_ds;
    uint64_t *seen[4]; /* output position of each source row + 1 */
    int *src_order;    /* input of each output position */
    uint64_t total;
} expect;

static int gene_id(const char *s, size_t len)
{
    char b[32];
    if (len < 2 || len > 30 || s[0] != 'g') return -1;
    memcpy(b, s + 1, len - 1);
    b[len - 1] = '\0';
    return atoi(b);
}

static int input_has_gene(const int *ids, int nv, int k)
{
    for (int j = 0; j < nv; j++)
        if (ids[j] == k) return 1;
    return 0;
}

/* Check the collection at `coll` against the inputs; fills e->var_ids and the positions. */
static void check_collection(const char *coll, expect *e, const int *const *in_genes,
                             const int *in_nv)
{
    for (int s = 0; s < e->n_in; s++) {
        free(e->seen[s]);
        e->seen[s] = calloc(e->n[s] + 1, 8);
        e->total += 0;
    }
    uint64_t total = 0;
    for (int s = 0; s < e->n_in; s++)
        total += e->n[s];
    free(e->src_order);
    e->src_order = calloc(total + 1, sizeof(int));
    uint64_t pos = 0;
    e->n_ds = 0;
    for (uint64_t d = 0;; d++) {
        char p[600];
        snprintf(p, sizeof p, "%s/dataset_%llu", coll, (unsigned long long)d);
        struct stat stt;
        if (stat(p, &stt) != 0) break;
        e->n_ds++;
        ans_store *st = NULL;
        CHECK_OK(ans_store_open(&st, p, NULL));
        if (!st) return;
        /* var */
        static const char *const none[1] = {NULL};
        ans_frame *vf = NULL;
        ans_column vi;
        CHECK_OK(ans_store_read_frame(st, "var", none, 0, &vf));
        CHECK_OK(ans_frame_index(vf, &vi));
        e->nv = (int)vi.length;
        for (uint64_t j = 0; j < vi.length && j < 64; j++)
            e->var_ids[j] = gene_id(vi.str_data + vi.str_offsets[j],
                                    (size_t)(vi.str_offsets[j + 1] - vi.str_offsets[j]));
        ans_frame_free(vf);
        uint64_t n = ans_store_n_obs(st);
        /* obs */
        ans_frame *of = NULL;
        CHECK_OK(ans_store_read_frame(st, "obs", NULL, 0, &of));
        ans_column key = {0}, ct = {0}, src = {0}, sc = {0}, idx = {0};
        for (size_t i = 0; of && i < ans_frame_n_columns(of); i++) {
            ans_column c;
            ans_frame_column(of, i, &c);
            if (!strcmp(c.name, "key")) key = c;
            if (!strcmp(c.name, "ct")) ct = c;
            if (!strcmp(c.name, "src_path")) src = c;
            if (!strcmp(c.name, "s")) sc = c;
        }
        if (of) ans_frame_index(of, &idx);
        CHECK(key.name && ct.name && src.name && sc.name && idx.length == n);
        CHECK(ct.kind == ANS_COLUMN_CATEGORICAL && src.kind == ANS_COLUMN_CATEGORICAL);
        /* X */
        ans_element *x = NULL;
        ans_rows *rows = NULL;
        CHECK_OK(ans_store_element(&x, st, "X"));
        if (x) CHECK_OK(ans_element_read_range(x, 0, n, &rows));
        ans_element *emb = NULL, *cnt = NULL;
        ans_rows *erows = NULL, *crows = NULL;
        if (e->has_emb) {
            CHECK_OK(ans_store_element(&emb, st, "obsm/emb"));
            if (emb) CHECK_OK(ans_element_read_range(emb, 0, n, &erows));
        }
        if (e->has_cnt) {
            CHECK_OK(ans_store_element(&cnt, st, "layers/cnt"));
            if (cnt) CHECK_OK(ans_element_read_range(cnt, 0, n, &crows));
        }
        for (uint64_t r = 0; rows && key.name && ct.name && src.name && r < n; r++, pos++) {
            double kv = ((const double *)key.values)[r];
            int s = (int)(kv / 1e7);
            uint64_t sr = (uint64_t)((kv - s * 1e7) / 1000 + 0.5);
            CHECK(s >= 0 && s < e->n_in && sr < e->n[s]);
            if (!(s >= 0 && s < e->n_in && sr < e->n[s])) continue;
            CHECK(e->seen[s][sr] == 0);
            e->seen[s][sr] = pos + 1;
            e->src_order[pos] = s;
            /* src_path */
            int64_t sc_code = ((const int8_t *)src.values)[r];
            CHECK(sc_code >= 0 && (uint64_t)sc_code < src.n_categories);
            if (sc_code >= 0 && (uint64_t)sc_code < src.n_categories) {
                size_t l = (size_t)(src.cat_offsets[sc_code + 1] - src.cat_offsets[sc_code]);
                CHECK(l == strlen(e->paths[s]) &&
                      !memcmp(src.cat_data + src.cat_offsets[sc_code], e->paths[s], l));
            }
            /* ct decoded equals the input's category */
            int64_t cc = ((const int8_t *)ct.values)[r];
            const char *want = e->cats[s][sr % (uint64_t)e->ncat[s]];
            if (cc >= 0 && (uint64_t)cc < ct.n_categories) {
                size_t l = (size_t)(ct.cat_offsets[cc + 1] - ct.cat_offsets[cc]);
                CHECK(l == strlen(want) && !memcmp(ct.cat_data + ct.cat_offsets[cc], want, l));
            } else {
                CHECK(0);
            }
            /* strings */
            char sw[64];
            snprintf(sw, sizeof sw, "s%d_%llu", s, (unsigned long long)sr);
            CHECK(sc.str_offsets[r + 1] - sc.str_offsets[r] == strlen(sw) &&
                  !memcmp(sc.str_data + sc.str_offsets[r], sw, strlen(sw)));
            /* obs name: "cell<sr>" with "-<s>" for inputs after the first (names collide) */
            char nw[64];
            if (e->sfx[s] == 0 || (!e->fallback && sr >= e->n[0])) /* no collision */
                snprintf(nw, sizeof nw, "cell%llu", (unsigned long long)sr);
            else
                snprintf(nw, sizeof nw, "cell%llu-%d", (unsigned long long)sr, e->sfx[s]);
            CHECK(idx.str_offsets[r + 1] - idx.str_offsets[r] == strlen(nw) &&
                  !memcmp(idx.str_data + idx.str_offsets[r], nw, strlen(nw)));
            /* X: exactly the input's nonzeros restricted to the output var, in column order */
            const int32_t *ip = ans_rows_indptr(rows);
            const int32_t *ii = ans_rows_indices(rows);
            const double *vv = ans_rows_data(rows);
            int expect_n = 0;
            for (int j = 0; j < e->nv; j++)
                if (e->var_ids[j] >= 0 && input_has_gene(in_genes[s], in_nv[s], e->var_ids[j]) &&
                    nz(s, sr, e->var_ids[j]))
                    expect_n++;
            CHECK(ip[r + 1] - ip[r] == expect_n);
            for (int32_t q = ip[r]; q < ip[r + 1]; q++) {
                if (q > ip[r]) CHECK(ii[q] > ii[q - 1]);
                int k = e->var_ids[ii[q]];
                CHECK(input_has_gene(in_genes[s], in_nv[s], k) && nz(s, sr, k));
                CHECK(vv[q] == kv + k);
            }
            if (erows) {
                const float *ev = ans_rows_data(erows);
                CHECK(ev[2 * r] == (float)kv && ev[2 * r + 1] == -(float)kv);
            }
            if (crows) {
                const int32_t *cp = ans_rows_indptr(crows);
                const int32_t *ci = ans_rows_indices(crows);
                const int32_t *cv = ans_rows_data(crows);
                if (ans_rows_format(crows) == ANS_FORMAT_DENSE) {
                    for (int j = 0; j < e->nv; j++) {
                        int k = e->var_ids[j];
                        int want2 =
                            input_has_gene(in_genes[s], in_nv[s], k) && nz(s, sr, k) ? k + 1 : 0;
                        CHECK(cv[r * (uint64_t)e->nv + (uint64_t)j] == want2);
                    }
                } else {
                    for (int32_t q = cp[r]; q < cp[r + 1]; q++)
                        CHECK(cv[q] == e->var_ids[ci[q]] + 1);
                }
            }
        }
        ans_rows_free(rows);
        ans_rows_free(erows);
        ans_rows_free(crows);
        ans_element_free(x);
        ans_element_free(emb);
        ans_element_free(cnt);
        ans_frame_free(of);
        ans_store_free(st);
    }
    CHECK_EQ_U64(pos, total);
    for (int s = 0; s < e->n_in; s++)
        for (uint64_t r = 0; r < e->n[s]; r++)
            CHECK(e->seen[s][r] != 0);
    e->total = total;
}

static void free_expect(expect *e)
{
    for (int s = 0; s < 4; s++)
        free(e->seen[s]);
    free(e->src_order);
}

/* ---- fixtures ---------------------------------------------------------------------------------
 */

static const int genes_a[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
static const int genes_b[10] = {14, 13, 12, 11, 10, 9, 8, 7, 6, 5};
static const char *const cats_a[3] = {"T", "B", "NK"};
static const char *const cats_b[2] = {"Mono", "B"};

static void make_ab(uint64_t na, uint64_t nb, int dense_b)
{
    rm_rf(tmp("a.zarr"));
    rm_rf(tmp("b.zarr"));
    CHECK_OK(write_input(tmp("a.zarr"), 0, na, genes_a, 10, cats_a, 3, 0));
    CHECK_OK(write_input(tmp("b.zarr"), 1, nb, genes_b, 10, cats_b, 2, dense_b));
}

static void setup_expect(expect *e, uint64_t na, uint64_t nb)
{
    memset(e, 0, sizeof *e);
    e->n_in = 2;
    e->paths[0] = tmp("a.zarr");
    e->paths[1] = tmp("b.zarr");
    e->n[0] = na;
    e->n[1] = nb;
    e->cats[0] = cats_a;
    e->cats[1] = cats_b;
    e->ncat[0] = 3;
    e->ncat[1] = 2;
    e->sfx[1] = 1;
}

static const int *const k_in_genes[2] = {genes_a, genes_b};
static const int k_in_nv[2] = {10, 10};

/* ---- tests ------------------------------------------------------------------------------------
 */

static void test_union(void)
{
    make_ab(300, 200, 0);
    const char *in[2] = {tmp("a.zarr"), tmp("b.zarr")};
    const char *out = tmp("union.coll");
    rm_rf(out);
    ans_convert_options o = ANS_CONVERT_OPTIONS_INIT;
    o.dataset_size_rows = 128;
    o.seed = 7;
    o.threads = 2;
    CHECK_OK(ans_convert(in, 2, out, &o));
    expect e;
    setup_expect(&e, 300, 200);
    check_collection(out, &e, k_in_genes, k_in_nv);
    CHECK_EQ_U64(e.n_ds, 4);
    /* union var: a's genes, then b's new ones in b's order */
    static const int want[15] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 13, 12, 11, 10};
    CHECK_EQ_U64(e.nv, 15);
    for (int j = 0; j < 15 && j < e.nv; j++)
        CHECK(e.var_ids[j] == want[j]);
    /* categories unified in first-seen order: T, B, NK, Mono */
    ans_store *st = NULL;
    char p[600];
    snprintf(p, sizeof p, "%s/dataset_0", out);
    CHECK_OK(ans_store_open(&st, p, NULL));
    static const char *const ctc[1] = {"ct"};
    ans_frame *f = NULL;
    if (st) CHECK_OK(ans_store_read_frame(st, "obs", ctc, 1, &f));
    ans_column c;
    if (f && ans_frame_column(f, 0, &c) == ANS_OK) {
        CHECK_EQ_U64(c.n_categories, 4);
        CHECK(c.cat_offsets[4] == 8 && !memcmp(c.cat_data, "TBNKMono", 8));
    }
    ans_frame_free(f);
    ans_store_free(st);
    /* shuffle sanity: the order is not the identity, and adjacent rows come from the same input
     * about as often as independence predicts (p^2 + q^2 = 0.52) */
    uint64_t same = 0, ident = 0;
    for (uint64_t i = 0; i + 1 < e.total; i++)
        same += e.src_order[i] == e.src_order[i + 1];
    for (uint64_t r = 0; r < 300; r++)
        ident += e.seen[0][r] == r + 1;
    double frac = (double)same / (double)(e.total - 1);
    CHECK(frac > 0.40 && frac < 0.64);
    CHECK(ident < 20);
    free_expect(&e);
    /* the same seed gives the same collection order; no-shuffle keeps the input order */
    const char *out2 = tmp("noshuffle.coll");
    rm_rf(out2);
    o.shuffle = 0;
    CHECK_OK(ans_convert(in, 2, out2, &o));
    setup_expect(&e, 300, 200);
    check_collection(out2, &e, k_in_genes, k_in_nv);
    for (uint64_t r = 0; r < 300; r++)
        CHECK(e.seen[0][r] == r + 1);
    for (uint64_t r = 0; r < 200; r++)
        CHECK(e.seen[1][r] == 301 + r);
    free_expect(&e);
    rm_rf(out2);
}

static void test_intersection_and_list(void)
{
    make_ab(100, 150, 0); /* b's rows 100.. have names a lacks: kept without suffix */
    const char *in[2] = {tmp("a.zarr"), tmp("b.zarr")};
    const char *out = tmp("inter.coll");
    rm_rf(out);
    ans_convert_options o = ANS_CONVERT_OPTIONS_INIT;
    o.dataset_size_rows = 1000;
    o.var = ANS_CONVERT_VAR_INTERSECTION;
    CHECK_OK(ans_convert(in, 2, out, &o));
    expect e;
    setup_expect(&e, 100, 150);
    check_collection(out, &e, k_in_genes, k_in_nv);
    CHECK_EQ_U64(e.n_ds, 1);
    CHECK_EQ_U64(e.nv, 5);
    for (int j = 0; j < 5 && j < e.nv; j++)
        CHECK(e.var_ids[j] == 5 + j);
    free_expect(&e);
    rm_rf(out);
    static const char *const list[4] = {"g12", "g3", "g99", "g7"};
    o.var = ANS_CONVERT_VAR_LIST;
    o.var_names = list;
    o.n_var_names = 4;
    CHECK_OK(ans_convert(in, 2, out, &o));
    setup_expect(&e, 100, 150);
    check_collection(out, &e, k_in_genes, k_in_nv);
    CHECK_EQ_U64(e.nv, 4);
    static const int want[4] = {12, 3, 99, 7};
    for (int j = 0; j < 4 && j < e.nv; j++)
        CHECK(e.var_ids[j] == want[j]);
    free_expect(&e);
    rm_rf(out);
}

/* A tiny budget: the run files of each dataset exceed budget/4 and are split into several runs. */
static void test_small_budget(void)
{
    make_ab(1500, 1300, 1);
    const char *in[2] = {tmp("a.zarr"), tmp("b.zarr")};
    const char *out = tmp("small.coll");
    rm_rf(out);
    ans_convert_options o = ANS_CONVERT_OPTIONS_INIT;
    o.dataset_size_rows = 1000;
    o.memory = 65536; /* 16 KiB slices; a dataset's run is ~60 KiB */
    static const char *const layers[1] = {"cnt"};
    static const char *const obsm[1] = {"emb"};
    o.layers = layers;
    o.n_layers = 1;
    o.obsm = obsm;
    o.n_obsm = 1;
    o.compressor = ANS_CONVERT_ZSTD;
    CHECK_OK(ans_convert(in, 2, out, &o));
    expect e;
    setup_expect(&e, 1500, 1300);
    e.fallback = 1; /* 2800 rows x 32 bytes > budget / 8 */
    e.has_emb = e.has_cnt = 1;
    check_collection(out, &e, k_in_genes, k_in_nv);
    CHECK_EQ_U64(e.n_ds, 3);
    free_expect(&e);
    /* nothing left beside the output */
    char p[600];
    snprintf(p, sizeof p, "ls -d %s.* 2>/dev/null | grep -q .", out);
    CHECK(system(p) != 0);
    if (!getenv("ANS_TEST_KEEP")) rm_rf(out);
}

/* ---- count-like values: every compact form of the run records -----------------------------------
 *
 * Input `in` holds genes g<20 in> .. g<20 in + 39> (40, half shared with the next input); X(r, k)
 * is nonzero when (r * 7 + k * 3 + in) % 3 != 0 and then counts_val(in, r, k): small integers
 * 1..23 (about one in ten >= 15: the nibble form's exceptions), only 1..14 on some rows, integers
 * >= 300 on others, and non-integers on others (stored as they are). */
static double counts_val(int in, uint64_t r, int k)
{
    double v = 1 + (double)((r * 31 + (uint64_t)k * 17 + (uint64_t)in * 5) % 23);
    if (v > 14 && (r + (uint64_t)k) % 4 != 0) v -= 14; /* about 1 in 10 stays >= 15 */
    if (r % 11 == 0) v = 1 + (double)((r + (uint64_t)k) % 14);
    if (r % 13 == 5) v += 300;
    if (r % 17 == 3) v += 0.25;
    return v;
}
static int counts_nz(int in, uint64_t r, int k)
{
    return (r * 7 + (uint64_t)k * 3 + (uint64_t)in) % 3 != 0;
}

/* X as CSR of `dtype` (float32 / float64, int32 indices) or dense float32; layers/cnt dense int32
 * with the same values truncated (non-integers rounded down). */
static int write_counts_input(const char *path, int in, uint64_t n, ans_dtype dtype, int dense)
{
    ans_zw *w = NULL;
    ans_adw_opts o = ANS_ADW_OPTS_INIT;
    o.n_obs_per_chunk = 16;
    int nv = 40, rc = ans_zw_create(&w, path, NULL);
    if (rc == ANS_OK) rc = ans_adw_anndata(w, "");
    int64_t *indptr = calloc(n + 1, 8);
    int32_t *ind = calloc(n * 40 + 1, 4), *cnt = calloc(n * 40 + 1, 4);
    double *v64 = calloc(n * 40 + 1, 8);
    float *v32 = calloc(n * 40 + 1, 4), *d32 = calloc(n * 40 + 1, 4);
    uint64_t q = 0;
    for (uint64_t r = 0; r < n; r++) {
        for (int j = 0; j < nv; j++) {
            int k = 20 * in + j;
            if (!counts_nz(in, r, k)) continue;
            double v = counts_val(in, r, k);
            ind[q] = j;
            v64[q] = v;
            v32[q++] = (float)v;
            d32[r * 40 + (uint64_t)j] = (float)v;
            cnt[r * 40 + (uint64_t)j] = (int32_t)v;
        }
        indptr[r + 1] = (int64_t)q;
    }
    uint64_t shape[2] = {n, (uint64_t)nv};
    if (rc == ANS_OK) {
        if (dense)
            rc = ans_adw_dense(w, "X", ANS_DTYPE_FLOAT32, 2, shape, d32, &o);
        else
            rc = ans_adw_csr_write(w, "X", n, (uint64_t)nv, indptr, ind, ANS_DTYPE_INT32,
                                   dtype == ANS_DTYPE_FLOAT32 ? (const void *)v32 : v64, dtype,
                                   &o);
    }
    if (rc == ANS_OK) rc = ans_adw_dense(w, "layers/cnt", ANS_DTYPE_INT32, 2, shape, cnt, &o);
    static const char *const cols[] = {"key"};
    if (rc == ANS_OK) rc = ans_adw_frame(w, "obs", NULL, cols, 1);
    uint64_t *ioff = calloc(n + 1, 8);
    char *idata = calloc(n * 24 + 1, 1);
    double *key = calloc(n + 1, 8);
    for (uint64_t r = 0; r < n; r++) {
        ioff[r + 1] = ioff[r] + (uint64_t)sprintf(idata + ioff[r], "c%d_%llu", in,
                                                  (unsigned long long)r);
        key[r] = key_of(in, r);
    }
    if (rc == ANS_OK) rc = ans_adw_strings(w, "obs/_index", n, ioff, idata, &o);
    if (rc == ANS_OK) rc = ans_adw_column(w, "obs/key", ANS_DTYPE_FLOAT64, n, key, &o);
    uint64_t voff[41] = {0};
    char vdata[512];
    for (int j = 0; j < nv; j++)
        voff[j + 1] = voff[j] + (uint64_t)sprintf(vdata + voff[j], "g%d", 20 * in + j);
    if (rc == ANS_OK) rc = ans_adw_frame(w, "var", NULL, NULL, 0);
    if (rc == ANS_OK) rc = ans_adw_strings(w, "var/_index", (uint64_t)nv, voff, vdata, &o);
    if (rc == ANS_OK) rc = ans_zw_finish(w);
    ans_zw_free(w);
    free(indptr);
    free(ind);
    free(cnt);
    free(v64);
    free(v32);
    free(d32);
    free(ioff);
    free(idata);
    free(key);
    return rc;
}

static double rows_value(const ans_rows *rw, uint64_t r, uint64_t j, uint64_t nv)
{
    ans_dtype t = ans_rows_dtype(rw);
    const void *d = ans_rows_data(rw);
    if (ans_rows_format(rw) == ANS_FORMAT_DENSE) {
        uint64_t i = r * nv + j;
        if (t == ANS_DTYPE_FLOAT32) return ((const float *)d)[i];
        if (t == ANS_DTYPE_FLOAT64) return ((const double *)d)[i];
        return ((const int32_t *)d)[i];
    }
    const int32_t *ip = ans_rows_indptr(rw), *ii = ans_rows_indices(rw);
    for (int32_t q = ip[r]; q < ip[r + 1]; q++) {
        if (q > ip[r]) CHECK(ii[q] > ii[q - 1]);
        if ((uint64_t)ii[q] != j) continue;
        if (t == ANS_DTYPE_FLOAT32) return ((const float *)d)[q];
        if (t == ANS_DTYPE_FLOAT64) return ((const double *)d)[q];
        return ((const int32_t *)d)[q];
    }
    return 0;
}

/* Convert 3 count-like inputs (X float32 CSR in all, or mixed with float64 / dense; `big`: all
 * dense, 10x the rows, datasets of 4000 rows, so that their shards (> 1 MiB) go through the zarr
 * writer's writer thread) and compare every value of X and layers/cnt with the input's. */
static void check_counts(ans_dtype dt1, int dense2, ans_dtype want, int big)
{
    uint64_t n[3] = {230, 177, 301};
    if (big)
        for (int s = 0; s < 3; s++)
            n[s] *= 10;
    const char *paths[3] = {tmp("c0.zarr"), tmp("c1.zarr"), tmp("c2.zarr")};
    for (int s = 0; s < 3; s++) {
        rm_rf(paths[s]);
        CHECK_OK(write_counts_input(paths[s], s, n[s], s == 1 ? dt1 : ANS_DTYPE_FLOAT32,
                                    big || (s == 2 && dense2)));
    }
    const char *out = tmp("counts.coll");
    rm_rf(out);
    ans_convert_options o = ANS_CONVERT_OPTIONS_INIT;
    o.dataset_size_rows = big ? 4000 : 200;
    o.seed = 3;
    o.threads = 2;
    static const char *const layers[1] = {"cnt"};
    o.layers = layers;
    o.n_layers = 1;
    CHECK_OK(ans_convert(paths, 3, out, &o));
    uint64_t seen = 0;
    for (uint64_t d = 0;; d++) {
        char p[600];
        snprintf(p, sizeof p, "%s/dataset_%llu", out, (unsigned long long)d);
        struct stat stt;
        if (stat(p, &stt) != 0) break;
        ans_store *st = NULL;
        CHECK_OK(ans_store_open(&st, p, NULL));
        if (!st) break;
        static const char *const none[1] = {NULL}, *const keyc[1] = {"key"};
        ans_frame *vf = NULL, *of = NULL;
        ans_column vi, key;
        CHECK_OK(ans_store_read_frame(st, "var", none, 0, &vf));
        CHECK_OK(ans_frame_index(vf, &vi));
        CHECK_OK(ans_store_read_frame(st, "obs", keyc, 1, &of));
        CHECK_OK(ans_frame_column(of, 0, &key));
        uint64_t nv = vi.length, nr = ans_store_n_obs(st);
        CHECK_EQ_U64(nv, 80);
        int gid[80];
        for (uint64_t j = 0; j < nv && j < 80; j++)
            gid[j] = gene_id(vi.str_data + vi.str_offsets[j],
                             (size_t)(vi.str_offsets[j + 1] - vi.str_offsets[j]));
        ans_element *x = NULL, *c = NULL;
        ans_rows *xr = NULL, *cr = NULL;
        CHECK_OK(ans_store_element(&x, st, "X"));
        CHECK_OK(ans_store_element(&c, st, "layers/cnt"));
        if (x) CHECK_OK(ans_element_read_range(x, 0, nr, &xr));
        if (c) CHECK_OK(ans_element_read_range(c, 0, nr, &cr));
        if (xr) CHECK(ans_rows_dtype(xr) == want);
        for (uint64_t r = 0; xr && cr && r < nr && nv == 80; r++, seen++) {
            double kv = ((const double *)key.values)[r];
            int s = (int)(kv / 1e7);
            uint64_t sr = (uint64_t)((kv - s * 1e7) / 1000 + 0.5);
            CHECK(s >= 0 && s < 3 && sr < n[s]);
            if (!(s >= 0 && s < 3 && sr < n[s])) continue;
            for (uint64_t j = 0; j < nv; j++) {
                int k = gid[j];
                int has = k >= 20 * s && k < 20 * s + 40 && counts_nz(s, sr, k);
                double v = has ? counts_val(s, sr, k) : 0;
                double xv = rows_value(xr, r, j, nv), cv = rows_value(cr, r, j, nv);
                if (want == ANS_DTYPE_FLOAT32) v = (float)v;
                CHECK(xv == v);
                CHECK(cv == (double)(int32_t)v);
                if (xv != v || cv != (double)(int32_t)v) {
                    fprintf(stderr, "row %d/%llu gene %d: X %g layer %g want %g\n", s,
                            (unsigned long long)sr, k, xv, cv, v);
                    r = nr;
                    break;
                }
            }
        }
        ans_rows_free(xr);
        ans_rows_free(cr);
        ans_element_free(x);
        ans_element_free(c);
        ans_frame_free(vf);
        ans_frame_free(of);
        ans_store_free(st);
    }
    CHECK_EQ_U64(seen, n[0] + n[1] + n[2]);
    rm_rf(out);
}

static void test_counts(void)
{
    check_counts(ANS_DTYPE_FLOAT32, 0, ANS_DTYPE_FLOAT32, 0); /* the float32 CSR fast path */
    check_counts(ANS_DTYPE_FLOAT64, 0, ANS_DTYPE_FLOAT64, 0); /* the general path, float64 out */
    check_counts(ANS_DTYPE_FLOAT32, 1, ANS_DTYPE_FLOAT32, 0); /* a dense input among CSR */
    check_counts(ANS_DTYPE_FLOAT32, 0, ANS_DTYPE_FLOAT32, 1); /* dense X, large shards */
}

static int cancel_cb(void *user, uint64_t done, uint64_t total)
{
    uint64_t *calls = user;
    (*calls)++;
    (void)total;
    return done > 50;
}

static void test_overwrite_and_cancel(void)
{
    make_ab(120, 80, 0);
    const char *in[2] = {tmp("a.zarr"), tmp("b.zarr")};
    const char *out = tmp("ow.coll");
    rm_rf(out);
    ans_convert_options o = ANS_CONVERT_OPTIONS_INIT;
    o.dataset_size_rows = 64;
    CHECK_OK(ans_convert(in, 2, out, &o));
    CHECK_RC(ans_convert(in, 2, out, &o), ANS_EINVAL);
    CHECK_STR_CONTAINS(ans_error_last(), "exists");
    o.overwrite = 1;
    o.seed = 3;
    CHECK_OK(ans_convert(in, 2, out, &o));
    expect e;
    setup_expect(&e, 120, 80);
    check_collection(out, &e, k_in_genes, k_in_nv);
    free_expect(&e);
    /* cancelled: ANS_ECANCELLED, the old output untouched, no temporary left */
    uint64_t calls = 0;
    o.progress = cancel_cb;
    o.progress_user = &calls;
    o.memory = 65536;
    o.seed = 4;
    CHECK_RC(ans_convert(in, 2, out, &o), ANS_ECANCELLED);
    CHECK(calls > 0);
    setup_expect(&e, 120, 80);
    check_collection(out, &e, k_in_genes, k_in_nv);
    free_expect(&e);
    char p[600];
    snprintf(p, sizeof p, "ls -d %s.* 2>/dev/null | grep -q .", out);
    CHECK(system(p) != 0);
    const char *out2 = tmp("cancelled.coll");
    CHECK_RC(ans_convert(in, 2, out2, &o), ANS_ECANCELLED);
    struct stat stt;
    CHECK(stat(out2, &stt) != 0);
    /* errors name the input */
    const char *bad[1] = {tmp("missing.zarr")};
    o.progress = NULL;
    CHECK(ans_convert(bad, 1, tmp("x.coll"), &o) != ANS_OK);
    CHECK_STR_CONTAINS(ans_error_last(), "missing.zarr");
    rm_rf(out);
}

static void test_append(void)
{
    make_ab(100, 90, 0);
    const char *a[1] = {tmp("a.zarr")};
    const char *b[1] = {tmp("b.zarr")};
    const char *out = tmp("app.coll");
    rm_rf(out);
    ans_convert_options o = ANS_CONVERT_OPTIONS_INIT;
    o.dataset_size_rows = 64;
    CHECK_OK(ans_convert(a, 1, out, &o));
    o.append = 1;
    o.seed = 11;
    CHECK_OK(ans_convert(b, 1, out, &o));
    expect e;
    setup_expect(&e, 100, 90);
    e.sfx[1] = 2; /* inputs: dataset_0, dataset_1 of the collection, then b.zarr */
    /* the appended rows keep their src_path (a.zarr), the new ones get b.zarr */
    check_collection(out, &e, k_in_genes, k_in_nv);
    CHECK_EQ_U64(e.total, 190);
    CHECK_EQ_U64(e.nv, 15); /* new genes kept */
    CHECK_EQ_U64(e.n_ds, 3);
    free_expect(&e);
    rm_rf(out);
}

/* The CLI (ANS_CLI = path of the annstream tool; run by the 'convert_cli' meson test). */
static int run_cli(const char *args)
{
    const char *cli = getenv("ANS_CLI");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' %s >/dev/null 2>&1", cli, args);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli(void)
{
    if (!getenv("ANS_CLI")) {
        printf("(skipped: ANS_CLI not set)\n");
        return;
    }
    make_ab(150, 120, 1);
    const char *out = tmp("cli.coll");
    rm_rf(out);
    char args[3000];
    snprintf(args, sizeof args,
             "convert '%s' '%s' -o '%s' --dataset-size 100 --seed 9 --layers cnt --obsm emb "
             "--memory 64KiB --threads 2 --compressor zstd",
             tmp("a.zarr"), tmp("b.zarr"), out);
    CHECK(run_cli(args) == 0);
    expect e;
    setup_expect(&e, 150, 120);
    e.has_emb = e.has_cnt = 1;
    check_collection(out, &e, k_in_genes, k_in_nv);
    CHECK_EQ_U64(e.n_ds, 3);
    CHECK_EQ_U64(e.nv, 15);
    free_expect(&e);
    CHECK(run_cli(args) == 1); /* exists */
    /* --var FILE, --overwrite, rows by bytes */
    FILE *f = fopen(tmp("vars.txt"), "w");
    if (f) {
        fputs("g12\n\n g3 \ng7\n", f);
        fclose(f);
    }
    snprintf(args, sizeof args,
             "convert '%s' '%s' -o '%s' --var '%s' --overwrite --dataset-size 4KiB --no-shuffle",
             tmp("a.zarr"), tmp("b.zarr"), out, tmp("vars.txt"));
    CHECK(run_cli(args) == 0);
    setup_expect(&e, 150, 120);
    check_collection(out, &e, k_in_genes, k_in_nv);
    CHECK_EQ_U64(e.nv, 3);
    CHECK(e.var_ids[0] == 12 && e.var_ids[1] == 3 && e.var_ids[2] == 7);
    CHECK(e.n_ds > 1);
    for (uint64_t r = 0; r < 150; r++)
        CHECK(e.seen[0][r] == r + 1);
    free_expect(&e);
    /* --groupby: a complete collection (the order itself is checked in test_convert.py) */
    snprintf(args, sizeof args,
             "convert '%s' '%s' -o '%s' --overwrite --dataset-size 100 --groupby src_path",
             tmp("a.zarr"), tmp("b.zarr"), out);
    CHECK(run_cli(args) == 0);
    setup_expect(&e, 150, 120);
    check_collection(out, &e, k_in_genes, k_in_nv);
    CHECK_EQ_U64(e.n_ds, 3);
    free_expect(&e);
    snprintf(args, sizeof args, "convert '%s' -o '%s' --overwrite --groupby nope", tmp("a.zarr"),
             out);
    CHECK(run_cli(args) == 1);
    CHECK(run_cli("convert a.zarr -o x --bogus") == 2);
    CHECK(run_cli("convert a.zarr") == 2);
    CHECK(run_cli("convert a.zarr -o x --compressor gzip") == 2);
    rm_rf(out);
}

static void t_teardown(void)
{
    if (g_tmp[0] && !getenv("ANS_TEST_KEEP")) rm_rf(g_tmp);
}

int main(int argc, char **argv)
{
    static const ans_t_case cases[] = {
        {"union", test_union},
        {"intersection_and_list", test_intersection_and_list},
        {"small_budget", test_small_budget},
        {"counts", test_counts},
        {"overwrite_and_cancel", test_overwrite_and_cancel},
        {"append", test_append},
        {"cli", test_cli},
    };
    int rc = ans_t_run(cases, sizeof cases / sizeof cases[0], argc, argv);
    t_teardown();
    return rc;
}
