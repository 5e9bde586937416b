/* convert.c - AnnData stores -> a pre-shuffled annbatch collection (ans_convert, annstream.h).
 *
 * Plan (see annstream.h, "Collections", for the contract):
 * 1. prepare: open the inputs, build the output var (union / intersection / list) and each
 *    input's column map, the obs schema (columns, categories unified in first-seen order, the
 *    src_path categorical), the elements to carry (X, layers, obsm), the row permutation and the
 *    dataset size S.
 * 2. pass 1 (scatter): each input is read in blocks of rows into reused buffers, by a reader
 *    thread one block ahead of the encoding (an .h5ad input is first handed to the kernel's
 *    readahead whole, and dropped from the page cache when done). The rows of a block are encoded
 *    in parallel on the pool, each into one record
 *        [u64 pos][u64 record bytes][obs values][per element: compact row (encode_elem) | row]
 *    and appended to the buffer of its run slice (output dataset pos / S, then R positions per
 *    slice), written to "<runs>/d<d>.<j>" (O_DIRECT where possible) in whole blocks.
 * 3. pass 2 (write): per dataset, each slice's run file is loaded whole (the next one is read
 *    on a thread meanwhile; a file over budget is first split by position into smaller runs,
 *    recursively), its records placed by position and appended in bounded batches to the
 *    dataset's streaming writers. A batch is decoded in parallel on the pool, each row straight
 *    into its place (CSR indices already in the stored type); zarrw.c compresses shards on the
 *    pool and hands them to a writer thread (O_DIRECT) while the next block fills.
 *
 * Where the time went (1.02M cells, 8.4 GB of uncompressed .h5ad, 2-CPU VM): the kernel's copies
 * through the page cache and the zeroing of fresh pages, more than the encoding itself. Hence the
 * compact run records (1/5 of the raw size: counts as 4-bit nibbles), direct I/O for run files
 * and shards, and buffers reused rather than reallocated. bench/WRITER.md has the measurements.
 */
#define _GNU_SOURCE /* O_DIRECT; nftw, mkdtemp */
#include "annstream.h"
#include "common/error.h"
#include "common/mem.h"
#include "anndata/anndata.h"
#include "common/pool.h"
#include "loader/sampler.h"
#include "writer/adw.h"
#include "writer/zarrw.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <pthread.h>
#include <inttypes.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NONE32 UINT32_MAX


/* ---- small helpers ----------------------------------------------------------------------------
 */

static uint64_t fnv64(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* A string -> index map (open addressing); keys live in an arena. */
typedef struct strmap {
    ans_buf arena;  /* key bytes */
    uint64_t *koff; /* per entry: offset, length in the arena */
    uint32_t *klen;
    uint32_t *slots; /* entry index + 1, 0 = empty */
    size_t n, cap_entries, nslots;
} strmap;

static void strmap_free(strmap *m)
{
    ans_buf_free(&m->arena);
    free(m->koff);
    free(m->klen);
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static const char *strmap_key(const strmap *m, size_t i, size_t *len)
{
    *len = m->klen[i];
    return (const char *)m->arena.data + m->koff[i];
}

static uint32_t strmap_find(const strmap *m, const char *s, size_t n)
{
    if (!m->nslots) return NONE32;
    size_t mask = m->nslots - 1, i = (size_t)fnv64(s, n) & mask;
    while (m->slots[i]) {
        uint32_t e = m->slots[i] - 1;
        if (m->klen[e] == n && memcmp(m->arena.data + m->koff[e], s, n) == 0) return e;
        i = (i + 1) & mask;
    }
    return NONE32;
}

/* Index of s, added when new (*added = 1). */
static int strmap_add(strmap *m, const char *s, size_t n, uint32_t *idx, int *added)
{
    if (added) *added = 0;
    uint32_t f = strmap_find(m, s, n);
    if (f != NONE32) {
        *idx = f;
        return ANS_OK;
    }
    if (n > UINT32_MAX || m->n >= NONE32 - 1) return ans_err(ANS_ENOMEM, "too many names");
    if (m->n == m->cap_entries) {
        size_t nc = m->cap_entries ? m->cap_entries * 2 : 64;
        uint64_t *ko = ans_realloc(m->koff, nc * sizeof *ko);
        if (!ko) return ANS_ENOMEM;
        m->koff = ko;
        uint32_t *kl = ans_realloc(m->klen, nc * sizeof *kl);
        if (!kl) return ANS_ENOMEM;
        m->klen = kl;
        m->cap_entries = nc;
    }
    if ((m->n + 1) * 2 > m->nslots) {
        size_t ns = m->nslots ? m->nslots * 2 : 128;
        uint32_t *sl = ans_calloc(ns, sizeof *sl);
        if (!sl) return ANS_ENOMEM;
        for (size_t e = 0; e < m->n; e++) {
            size_t i =
                (size_t)fnv64((const char *)m->arena.data + m->koff[e], m->klen[e]) & (ns - 1);
            while (sl[i])
                i = (i + 1) & (ns - 1);
            sl[i] = (uint32_t)e + 1;
        }
        free(m->slots);
        m->slots = sl;
        m->nslots = ns;
    }
    m->koff[m->n] = m->arena.len;
    m->klen[m->n] = (uint32_t)n;
    if (ans_buf_append(&m->arena, s, n) != ANS_OK) return ANS_ENOMEM;
    size_t mask = m->nslots - 1, i = (size_t)fnv64(s, n) & mask;
    while (m->slots[i])
        i = (i + 1) & mask;
    m->slots[i] = (uint32_t)m->n + 1;
    *idx = (uint32_t)m->n++;
    if (added) *added = 1;
    return ANS_OK;
}

/* offsets + data of the map's keys in order (for the string writers). */
static int strmap_strings(const strmap *m, uint64_t **off, char **data)
{
    *off = ans_calloc(m->n + 1, sizeof **off);
    *data = ans_malloc(m->arena.len + 1);
    if (!*off || !*data) {
        free(*off);
        free(*data);
        *off = NULL;
        *data = NULL;
        return ANS_ENOMEM;
    }
    uint64_t pos = 0;
    for (size_t i = 0; i < m->n; i++) {
        memcpy(*data + pos, m->arena.data + m->koff[i], m->klen[i]);
        pos += m->klen[i];
        (*off)[i + 1] = pos;
    }
    return ANS_OK;
}

/* A set of 64-bit hashes (0 is mapped to 1). */
typedef struct hset {
    uint64_t *slots;
    size_t n, nslots;
} hset;

static int hset_insert(hset *h, uint64_t v, int *present)
{
    if (!v) v = 1;
    if ((h->n + 1) * 2 > h->nslots) {
        size_t ns = h->nslots ? h->nslots * 2 : 1024;
        uint64_t *sl = ans_calloc(ns, sizeof *sl);
        if (!sl) return ANS_ENOMEM;
        for (size_t i = 0; i < h->nslots; i++) {
            if (!h->slots[i]) continue;
            size_t j = (size_t)ans_mix64(h->slots[i]) & (ns - 1);
            while (sl[j])
                j = (j + 1) & (ns - 1);
            sl[j] = h->slots[i];
        }
        free(h->slots);
        h->slots = sl;
        h->nslots = ns;
    }
    size_t mask = h->nslots - 1, j = (size_t)ans_mix64(v) & mask;
    while (h->slots[j]) {
        if (h->slots[j] == v) {
            *present = 1;
            return ANS_OK;
        }
        j = (j + 1) & mask;
    }
    h->slots[j] = v;
    h->n++;
    *present = 0;
    return ANS_OK;
}

static int64_t rd_i64(ans_dtype t, const void *p, uint64_t i)
{
    switch (t) {
    case ANS_DTYPE_BOOL:
    case ANS_DTYPE_UINT8:
        return ((const uint8_t *)p)[i];
    case ANS_DTYPE_INT8:
        return ((const int8_t *)p)[i];
    case ANS_DTYPE_INT16:
        return ((const int16_t *)p)[i];
    case ANS_DTYPE_UINT16:
        return ((const uint16_t *)p)[i];
    case ANS_DTYPE_INT32:
        return ((const int32_t *)p)[i];
    case ANS_DTYPE_UINT32:
        return ((const uint32_t *)p)[i];
    case ANS_DTYPE_INT64:
        return ((const int64_t *)p)[i];
    case ANS_DTYPE_UINT64:
        return (int64_t)((const uint64_t *)p)[i];
    case ANS_DTYPE_FLOAT32:
        return (int64_t)((const float *)p)[i];
    case ANS_DTYPE_FLOAT64:
        return (int64_t)((const double *)p)[i];
    default:
        return 0;
    }
}

static double rd_f64(ans_dtype t, const void *p, uint64_t i)
{
    switch (t) {
    case ANS_DTYPE_FLOAT32:
        return ((const float *)p)[i];
    case ANS_DTYPE_FLOAT64:
        return ((const double *)p)[i];
    case ANS_DTYPE_UINT64:
        return (double)((const uint64_t *)p)[i];
    default:
        return (double)rd_i64(t, p, i);
    }
}

static int is_plain_numeric(ans_dtype t)
{
    return t >= ANS_DTYPE_BOOL && t <= ANS_DTYPE_FLOAT64 && t != ANS_DTYPE_FLOAT16;
}

/* Value i of `in` (type it) written as type ot at dst. */
static void cast_one(void *dst, ans_dtype ot, const void *in, ans_dtype it, uint64_t i)
{
    size_t sz = ans_dtype_size(ot);
    if (ot == it) {
        memcpy(dst, (const uint8_t *)in + i * sz, sz);
    } else if (ot == ANS_DTYPE_FLOAT64) {
        double v = rd_f64(it, in, i);
        memcpy(dst, &v, 8);
    } else { /* INT64 */
        int64_t v = rd_i64(it, in, i);
        memcpy(dst, &v, 8);
    }
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void rm_rf(const char *p)
{
    (void)nftw(p, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Add "<path>: " to the current error unless it already names `path`. */
static void err_name(const char *path)
{
    if (!strstr(ans_error_last(), path)) ans_err_prefix("%s", path);
}

/* ---- the model --------------------------------------------------------------------------------
 */

typedef enum oc_kind { OC_NUM, OC_STR, OC_CAT, OC_NINT, OC_NBOOL } oc_kind;

typedef struct cv_col {
    char *name; /* output name; "src_path" for the source column */
    int is_src;
    oc_kind kind;
    ans_dtype dtype; /* output values (NUM, NINT, NBOOL) */
    int ordered;
    strmap cats;     /* CAT: unified categories */
    uint32_t **cmap; /* CAT: per input, input code -> output code */
    uint64_t *ncmap; /* CAT: per input, number of input categories */
    /* pass 2. NUM and STR columns are streamed (zwa; vals / sdata hold one slice, STR vals as
     * u64 offsets into sdata); CAT (int32 codes) and nullable columns (vals + mask) are kept for
     * the whole dataset and written when it is complete */
    ans_zwa *zwa;
    ans_buf vals, mask;
    ans_buf sdata;
} cv_col;

typedef struct cv_elem {
    char key[256];
    int var_aligned; /* X, layers: columns remapped to the output var */
    int out_dense;   /* var-aligned: all inputs dense */
    ans_dtype dtype;
    int ndim;
    uint64_t tail[ANS_ZW_MAX_NDIM]; /* obsm shape[1:] */
    size_t row_bytes;               /* obsm: bytes per row */
    uint64_t *ds_nnz;               /* var-aligned: values per dataset */
    /* pass 2 */
    ans_adw_csr *csr;
    ans_zwa *zwa;
    ans_buf indptr, ind, data; /* slice buffers */
    ans_dtype idx_t;           /* CSR: the stored type of the column indices */
    size_t isz;                /* its size */
} cv_elem;

typedef struct cv_input {
    char *path;
    ans_store *st;
    uint64_t n_obs, offset;
    uint64_t n_vars;
    uint32_t *vmap; /* input column -> output column (NONE32 = dropped) */
    int suffix_all; /* obs names fallback */
} cv_input;

typedef struct cv {
    const ans_convert_options *o;
    const char *output;
    cv_input *in;
    size_t n_in;
    uint64_t n_total;
    strmap var;
    cv_col *cols;
    size_t n_cols;
    cv_elem *el;
    size_t n_el;
    /* permutation: table (pos of global row) or keyed bijection */
    uint64_t *table;
    ans_perm perm;
    uint64_t S, n_ds;
    uint64_t R, kpd;     /* run slices: rows per slice, slices per dataset */
    uint64_t emit_rows;  /* pass 2: records decoded per emit call */
    ans_buf epb;         /* pass 2: where each element row of a batch starts */
    ans_buf *dsc;        /* pass 2: per pool slot, a dense row's decoded columns and values */
    int n_dsc;
    uint64_t *slen;      /* per slice: bytes of records in its run file (the rest is padding) */
    char *runs; /* run-file directory */
    hset names;
    int names_fallback;
    /* progress */
    uint64_t done1, done2;
    ans_adw_opts aopts;
    ans_pool *pool;
    uint64_t budget;
} cv;

static int cv_progress(cv *c)
{
    if (!c->o->progress) return ANS_OK;
    if (c->o->progress(c->o->progress_user, (c->done1 + c->done2) / 2, c->n_total))
        return ans_err(ANS_ECANCELLED, "%s: conversion cancelled", c->output);
    return ANS_OK;
}

/* ---- prepare: var -----------------------------------------------------------------------------
 */

static int read_index(cv_input *in, const char *which, ans_frame **f, ans_column *idx)
{
    static const char *const none[1] = {NULL};
    int rc = ans_store_read_frame(in->st, which, none, 0, f);
    if (rc == ANS_OK) rc = ans_frame_index(*f, idx);
    if (rc == ANS_OK && idx->kind != ANS_COLUMN_STRING && idx->kind != ANS_COLUMN_NULLABLE_STRING)
        rc = ans_err(ANS_EUNSUPPORTED, "%s: %s index is not strings", in->path, which);
    return rc;
}

static int build_var(cv *c)
{
    const ans_convert_options *o = c->o;
    int rc = ANS_OK;
    strmap first = {0};
    uint32_t *count = NULL, *seen = NULL;
    if (o->var == ANS_CONVERT_VAR_LIST) {
        for (size_t i = 0; i < o->n_var_names; i++) {
            if (!o->var_names || !o->var_names[i])
                return ans_err(ANS_EINVAL, "ans_convert: var name %zu is NULL", i);
            uint32_t k;
            int added;
            if ((rc = strmap_add(&c->var, o->var_names[i], strlen(o->var_names[i]), &k, &added)))
                return rc;
            if (!added)
                return ans_err(ANS_EINVAL, "ans_convert: var name '%s' listed twice",
                               o->var_names[i]);
        }
    } else if (o->var != ANS_CONVERT_VAR_UNION && o->var != ANS_CONVERT_VAR_INTERSECTION) {
        return ans_err(ANS_EINVAL, "ans_convert: unknown var policy %d", (int)o->var);
    }
    for (size_t s = 0; s < c->n_in && rc == ANS_OK; s++) {
        cv_input *in = &c->in[s];
        ans_frame *f = NULL;
        ans_column idx;
        rc = read_index(in, "var", &f, &idx);
        if (rc == ANS_OK && idx.length != in->n_vars)
            rc = ans_err(ANS_ECORRUPT, "%s: var has %llu names for %llu columns", in->path,
                         (unsigned long long)idx.length, (unsigned long long)in->n_vars);
        if (rc == ANS_OK && !(in->vmap = ans_malloc((in->n_vars + 1) * sizeof *in->vmap)))
            rc = ANS_ENOMEM;
        if (rc == ANS_OK && o->var == ANS_CONVERT_VAR_INTERSECTION && s > 0 && !seen) {
            seen = ans_calloc(first.n + 1, sizeof *seen);
            count = ans_calloc(first.n + 1, sizeof *count);
            if (!seen || !count) rc = ANS_ENOMEM;
        }
        strmap local = {0};
        for (uint64_t j = 0; rc == ANS_OK && j < idx.length; j++) {
            const char *nm = idx.str_data + idx.str_offsets[j];
            size_t len = (size_t)(idx.str_offsets[j + 1] - idx.str_offsets[j]);
            uint32_t k;
            int added;
            if ((rc = strmap_add(&local, nm, len, &k, &added))) break;
            if (!added) {
                rc =
                    ans_err(ANS_EINVAL, "%s: var name '%.*s' occurs twice", in->path, (int)len, nm);
                break;
            }
            if (o->var == ANS_CONVERT_VAR_UNION) {
                rc = strmap_add(&c->var, nm, len, &in->vmap[j], NULL);
            } else if (o->var == ANS_CONVERT_VAR_LIST) {
                in->vmap[j] = strmap_find(&c->var, nm, len);
            } else if (s == 0) {
                rc = strmap_add(&first, nm, len, &in->vmap[j], NULL);
            } else {
                uint32_t e = strmap_find(&first, nm, len);
                in->vmap[j] = e;
                if (e != NONE32 && seen[e] != s) {
                    seen[e] = (uint32_t)s;
                    count[e]++;
                }
            }
        }
        strmap_free(&local);
        ans_frame_free(f);
        if (rc != ANS_OK) err_name(in->path);
    }
    if (rc == ANS_OK && o->var == ANS_CONVERT_VAR_INTERSECTION) {
        /* keep the names of the first input present in all; remap every input */
        uint32_t *to_out = ans_malloc((first.n + 1) * sizeof *to_out);
        if (!to_out) rc = ANS_ENOMEM;
        for (size_t e = 0; rc == ANS_OK && e < first.n; e++) {
            to_out[e] = NONE32;
            if (c->n_in == 1 || count[e] == c->n_in - 1) {
                size_t len;
                const char *nm = strmap_key(&first, e, &len);
                rc = strmap_add(&c->var, nm, len, &to_out[e], NULL);
            }
        }
        for (size_t s = 0; rc == ANS_OK && s < c->n_in; s++)
            for (uint64_t j = 0; j < c->in[s].n_vars; j++)
                if (c->in[s].vmap[j] != NONE32) c->in[s].vmap[j] = to_out[c->in[s].vmap[j]];
        free(to_out);
    }
    strmap_free(&first);
    free(seen);
    free(count);
    return rc;
}

/* ---- prepare: obs schema ----------------------------------------------------------------------
 */

static oc_kind kind_of(const ans_column *col, int *ok)
{
    *ok = 1;
    switch (col->kind) {
    case ANS_COLUMN_NUMERIC:
        *ok = is_plain_numeric(col->dtype);
        return OC_NUM;
    case ANS_COLUMN_STRING:
        return OC_STR;
    case ANS_COLUMN_CATEGORICAL:
        return OC_CAT;
    case ANS_COLUMN_NULLABLE_INT:
        return OC_NINT;
    case ANS_COLUMN_NULLABLE_BOOL:
        return OC_NBOOL;
    default:
        *ok = 0;
        return OC_STR;
    }
}

/* Category k of a categorical column as text into buf (numeric categories as decimal text). */
static const char *cat_text(const ans_column *col, uint64_t k, char *buf, size_t cap, size_t *len)
{
    if (col->cat_dtype == ANS_DTYPE_STRING) {
        *len = (size_t)(col->cat_offsets[k + 1] - col->cat_offsets[k]);
        return col->cat_data + col->cat_offsets[k];
    }
    int n;
    if (col->cat_dtype == ANS_DTYPE_FLOAT32 || col->cat_dtype == ANS_DTYPE_FLOAT64)
        n = snprintf(buf, cap, "%.17g", rd_f64(col->cat_dtype, col->cat_values, k));
    else if (col->cat_dtype == ANS_DTYPE_UINT64)
        n = snprintf(buf, cap, "%llu", (unsigned long long)((const uint64_t *)col->cat_values)[k]);
    else
        n = snprintf(buf, cap, "%lld", (long long)rd_i64(col->cat_dtype, col->cat_values, k));
    *len = n < 0 ? 0 : (size_t)n;
    return buf;
}

static int add_col(cv *c, const char *name, int is_src)
{
    cv_col *nc = ans_realloc(c->cols, (c->n_cols + 1) * sizeof *nc);
    if (!nc) return ANS_ENOMEM;
    c->cols = nc;
    cv_col *col = &c->cols[c->n_cols];
    memset(col, 0, sizeof *col);
    col->is_src = is_src;
    col->name = ans_strdup(name);
    col->cmap = ans_calloc(c->n_in, sizeof *col->cmap);
    col->ncmap = ans_calloc(c->n_in, sizeof *col->ncmap);
    c->n_cols++;
    if (!col->name || !col->cmap || !col->ncmap) return ANS_ENOMEM;
    return ANS_OK;
}

/* Unify column `col` (not src) across inputs; *keep = 0 when it cannot be (obs = all). */
static int unify_col(cv *c, cv_col *col, int explicit_, int *keep)
{
    *keep = 1;
    int rc = ANS_OK;
    for (size_t s = 0; s < c->n_in && rc == ANS_OK && *keep; s++) {
        const char *one[1] = {col->name};
        ans_frame *f = NULL;
        rc = ans_store_read_frame(c->in[s].st, "obs", one, 1, &f);
        if (rc == ANS_ENOTFOUND && !explicit_) {
            ans_error_clear();
            *keep = 0;
            rc = ANS_OK;
            break;
        }
        if (rc != ANS_OK) break;
        ans_column a;
        rc = ans_frame_column(f, 0, &a);
        int ok = 0;
        oc_kind k = OC_STR;
        if (rc == ANS_OK) k = kind_of(&a, &ok);
        if (rc == ANS_OK && (!ok || (s > 0 && k != col->kind))) {
            if (explicit_)
                rc = ans_err(ANS_EUNSUPPORTED,
                             "%s: obs column '%s' cannot be carried (its kind is unsupported or "
                             "differs from the first input's)",
                             c->in[s].path, col->name);
            *keep = 0;
        }
        if (rc == ANS_OK && *keep) {
            if (s == 0) {
                col->kind = k;
                col->dtype = a.dtype;
                col->ordered = a.ordered;
            } else if ((k == OC_NUM || k == OC_NINT) && a.dtype != col->dtype) {
                col->dtype = k == OC_NUM ? ANS_DTYPE_FLOAT64 : ANS_DTYPE_INT64;
            }
            if (k == OC_CAT) {
                col->ncmap[s] = a.n_categories;
                col->cmap[s] = ans_malloc((a.n_categories + 1) * sizeof **col->cmap);
                if (!col->cmap[s]) rc = ANS_ENOMEM;
                for (uint64_t q = 0; rc == ANS_OK && q < a.n_categories; q++) {
                    char buf[64];
                    size_t len;
                    const char *t = cat_text(&a, q, buf, sizeof buf, &len);
                    rc = strmap_add(&col->cats, t, len, &col->cmap[s][q], NULL);
                }
            }
        }
        ans_frame_free(f);
    }
    return rc;
}

static int build_obs(cv *c)
{
    const ans_convert_options *o = c->o;
    int rc = ANS_OK;
    if (o->obs_columns) {
        for (size_t i = 0; i < o->n_obs_columns && rc == ANS_OK; i++) {
            if (!o->obs_columns[i])
                return ans_err(ANS_EINVAL, "ans_convert: obs column %zu is NULL", i);
            if (strcmp(o->obs_columns[i], "src_path") == 0) continue;
            for (size_t j = 0; j < c->n_cols; j++)
                if (strcmp(c->cols[j].name, o->obs_columns[i]) == 0)
                    return ans_err(ANS_EINVAL, "ans_convert: obs column '%s' listed twice",
                                   o->obs_columns[i]);
            int keep;
            if ((rc = add_col(c, o->obs_columns[i], 0))) return rc;
            rc = unify_col(c, &c->cols[c->n_cols - 1], 1, &keep);
        }
    } else {
        ans_frame *f = NULL;
        rc = ans_store_read_frame(c->in[0].st, "obs", NULL, 0, &f);
        if (rc == ANS_ENOTFOUND) {
            ans_error_clear();
            rc = ANS_OK;
        }
        for (size_t i = 0; f && rc == ANS_OK && i < ans_frame_n_columns(f); i++) {
            ans_column a;
            if ((rc = ans_frame_column(f, i, &a))) break;
            if (strcmp(a.name, "src_path") == 0) continue;
            int keep;
            if ((rc = add_col(c, a.name, 0))) break;
            rc = unify_col(c, &c->cols[c->n_cols - 1], 0, &keep);
            if (rc == ANS_OK && !keep) {
                cv_col *col = &c->cols[--c->n_cols];
                free(col->name);
                for (size_t s = 0; s < c->n_in; s++)
                    free(col->cmap[s]);
                free(col->cmap);
                free(col->ncmap);
                strmap_free(&col->cats);
            }
        }
        ans_frame_free(f);
    }
    if (rc != ANS_OK) return rc;
    /* src_path: an input's own src_path categorical (an appended collection's dataset), else its
     * path */
    if ((rc = add_col(c, "src_path", 1))) return rc;
    cv_col *src = &c->cols[c->n_cols - 1];
    src->kind = OC_CAT;
    for (size_t s = 0; s < c->n_in && rc == ANS_OK; s++) {
        static const char *const one[1] = {"src_path"};
        ans_frame *f = NULL;
        int has = 0;
        if (ans_store_read_frame(c->in[s].st, "obs", one, 1, &f) == ANS_OK) {
            ans_column a;
            if (ans_frame_column(f, 0, &a) == ANS_OK && a.kind == ANS_COLUMN_CATEGORICAL) {
                has = 1;
                src->ncmap[s] = a.n_categories;
                src->cmap[s] = ans_malloc((a.n_categories + 1) * sizeof **src->cmap);
                if (!src->cmap[s]) rc = ANS_ENOMEM;
                for (uint64_t q = 0; rc == ANS_OK && q < a.n_categories; q++) {
                    char buf[64];
                    size_t len;
                    const char *t = cat_text(&a, q, buf, sizeof buf, &len);
                    rc = strmap_add(&src->cats, t, len, &src->cmap[s][q], NULL);
                }
            }
        }
        ans_error_clear();
        ans_frame_free(f);
        if (!has && rc == ANS_OK) {
            src->ncmap[s] = UINT64_MAX; /* marker: the input's path */
            src->cmap[s] = ans_malloc(sizeof **src->cmap);
            if (!src->cmap[s]) rc = ANS_ENOMEM;
            if (rc == ANS_OK)
                rc = strmap_add(&src->cats, c->in[s].path, strlen(c->in[s].path), src->cmap[s],
                                NULL);
        }
    }
    return rc;
}

/* ---- prepare: elements ------------------------------------------------------------------------
 */

static int add_elem(cv *c, const char *key, int var_aligned)
{
    cv_elem *ne = ans_realloc(c->el, (c->n_el + 1) * sizeof *ne);
    if (!ne) return ANS_ENOMEM;
    c->el = ne;
    cv_elem *e = &c->el[c->n_el++];
    memset(e, 0, sizeof *e);
    if ((size_t)snprintf(e->key, sizeof e->key, "%s", key) >= sizeof e->key)
        return ans_err(ANS_EINVAL, "ans_convert: element name '%s' is too long", key);
    e->var_aligned = var_aligned;
    e->out_dense = 1;
    int rc = ANS_OK;
    for (size_t s = 0; s < c->n_in && rc == ANS_OK; s++) {
        ans_element *h = NULL;
        if ((rc = ans_store_element(&h, c->in[s].st, key))) {
            err_name(c->in[s].path);
            break;
        }
        ans_dtype dt = ans_element_dtype(h);
        int nd = ans_element_ndim(h);
        const uint64_t *sh = ans_element_shape(h);
        if (!is_plain_numeric(dt)) {
            rc =
                ans_err(ANS_EUNSUPPORTED, "%s: element '%s': values of type %s cannot be converted",
                        c->in[s].path, key, ans_dtype_name(dt));
        } else if (var_aligned) {
            if (nd != 2 || sh[1] != c->in[s].n_vars)
                rc = ans_err(ANS_ECORRUPT, "%s: element '%s' is not n_obs x n_vars", c->in[s].path,
                             key);
            if (ans_element_format(h) != ANS_FORMAT_DENSE) e->out_dense = 0;
            if (s == 0)
                e->dtype = dt;
            else if (dt != e->dtype)
                e->dtype = ANS_DTYPE_FLOAT64;
        } else {
            if (ans_element_format(h) != ANS_FORMAT_DENSE)
                rc = ans_err(ANS_EUNSUPPORTED, "%s: element '%s': sparse obsm is not supported",
                             c->in[s].path, key);
            else if (s == 0) {
                e->dtype = dt;
                e->ndim = nd;
                e->row_bytes = ans_dtype_size(dt);
                for (int q = 1; q < nd; q++) {
                    e->tail[q] = sh[q];
                    e->row_bytes *= (size_t)sh[q];
                }
            } else {
                int same = nd == e->ndim && dt == e->dtype;
                for (int q = 1; same && q < nd; q++)
                    same = sh[q] == e->tail[q];
                if (!same)
                    rc = ans_err(ANS_EINVAL,
                                 "%s: element '%s': type or shape differs from the first input's",
                                 c->in[s].path, key);
            }
        }
        ans_element_free(h);
    }
    if (rc == ANS_OK && var_aligned && !(e->ds_nnz = ans_calloc(c->n_ds + 1, 8))) rc = ANS_ENOMEM;
    return rc;
}

/* ---- record encoding --------------------------------------------------------------------------
 *
 * A var-aligned element's row is stored in the run files as
 *     [u32 nk][u8 width][u32 ibytes][ibytes: LEB128 deltas of the output columns][nk values]
 * where width 1 / 2 means every value is a small non-negative integer stored as u8 / u16 (exactly
 * representable: decoding gives the same bits), width 3 the same integers as 4-bit nibbles,
 *     [u32 nexc][(nk + 1) / 2 bytes: value q in the low (q even) or high nibble][nexc u16]
 * (a nibble 15 stands for the next of the nexc u16 values: UMI counts are mostly 1-3, so this is
 * the usual choice and takes a third off the records), and 0 means the values as they are (output
 * dtype).
 * The smallest of the possible forms is chosen per row.
 * Counts are mostly small integers and the columns of a row are sorted, so a typical record is a
 * third of its raw size: less to write and read back.
 */

#define PUT(buf, ptr, n)                                                                           \
    do {                                                                                           \
        if ((rc = ans_buf_append((buf), (ptr), (n))) != ANS_OK) goto out;                          \
    } while (0)

typedef struct pairsort {
    uint32_t idx;
    uint32_t k;
} pairsort;

/* by output column, then input position (qsort is not stable; duplicates keep their order) */
static int cmp_pair(const void *a, const void *b)
{
    const pairsort *x = a, *y = b;
    if (x->idx != y->idx) return x->idx < y->idx ? -1 : 1;
    return x->k < y->k ? -1 : x->k > y->k;
}

/* Rows of one element as read: dense (rows x n_vars values) or CSR. */
typedef struct rowview {
    int dense;
    ans_dtype dtype;
    int idx64, ptr64; /* indices / indptr int64 (else int32) */
    const uint8_t *data;
    const void *indices, *indptr;
} rowview;

static rowview rowview_of(const ans_rows *r)
{
    rowview v;
    v.dense = ans_rows_format(r) == ANS_FORMAT_DENSE;
    v.dtype = ans_rows_dtype(r);
    v.idx64 = v.ptr64 = !v.dense && ans_rows_index_dtype(r) == ANS_DTYPE_INT64;
    v.data = ans_rows_data(r);
    v.indices = v.dense ? NULL : ans_rows_indices(r);
    v.indptr = v.dense ? NULL : ans_rows_indptr(r);
    return v;
}

typedef struct enc_scratch {
    pairsort *ps;
    size_t ps_cap;
    ans_buf vals; /* the row's kept values in the output dtype */
    ans_buf small;
} enc_scratch;

static void enc_scratch_free(enc_scratch *x)
{
    free(x->ps);
    ans_buf_free(&x->vals);
    ans_buf_free(&x->small);
    memset(x, 0, sizeof *x);
}

/* The value at p (type t) as an integer in [0, 65535] that converts back to the same bytes. */
static int small_of(const uint8_t *p, ans_dtype t, uint32_t *u)
{
    switch (t) {
    case ANS_DTYPE_FLOAT32: {
        float f, b;
        memcpy(&f, p, 4);
        if (!(f >= 0.0f && f <= 65535.0f)) return 0;
        *u = (uint32_t)f;
        b = (float)*u;
        return memcmp(&b, &f, 4) == 0;
    }
    case ANS_DTYPE_FLOAT64: {
        double f, b;
        memcpy(&f, p, 8);
        if (!(f >= 0.0 && f <= 65535.0)) return 0;
        *u = (uint32_t)f;
        b = (double)*u;
        return memcmp(&b, &f, 8) == 0;
    }
    case ANS_DTYPE_INT16:
    case ANS_DTYPE_UINT16:
    case ANS_DTYPE_INT32:
    case ANS_DTYPE_UINT32:
    case ANS_DTYPE_INT64:
    case ANS_DTYPE_UINT64: {
        int64_t v = rd_i64(t, p, 0);
        if (t == ANS_DTYPE_UINT64 && v < 0) return 0; /* >= 2^63 */
        if (v < 0 || v > 65535) return 0;
        *u = (uint32_t)v;
        return 1;
    }
    default: /* 1-byte types: stored as they are */
        return 0;
    }
}

/* n small integers (width 1 or 2 bytes at src) written as type t at dst. */
static void small_to(uint8_t *dst, ans_dtype t, const uint8_t *src, int width, uint32_t n)
{
#define SMALL_LOOP(T)                                                                              \
    for (uint32_t q = 0; q < n; q++) {                                                             \
        uint32_t u = width == 1 ? src[q] : (uint32_t)src[2 * q] | (uint32_t)src[2 * q + 1] << 8;   \
        T v = (T)u;                                                                                \
        memcpy(dst + (size_t)q * sizeof(T), &v, sizeof(T));                                        \
    }
    switch (t) {
    case ANS_DTYPE_FLOAT32:
        SMALL_LOOP(float);
        break;
    case ANS_DTYPE_FLOAT64:
        SMALL_LOOP(double);
        break;
    case ANS_DTYPE_INT16:
        SMALL_LOOP(int16_t);
        break;
    case ANS_DTYPE_UINT16:
        SMALL_LOOP(uint16_t);
        break;
    case ANS_DTYPE_INT32:
        SMALL_LOOP(int32_t);
        break;
    case ANS_DTYPE_UINT32:
        SMALL_LOOP(uint32_t);
        break;
    case ANS_DTYPE_INT64:
        SMALL_LOOP(int64_t);
        break;
    case ANS_DTYPE_UINT64:
        SMALL_LOOP(uint64_t);
        break;
    default:
        break;
    }
#undef SMALL_LOOP
}

#define NIB_ESC 15 /* width 3: this nibble takes its value from the exceptions */

/* The cheapest form of nk values (0: as they are, osz bytes each; else as small integers, see
 * above) given whether all are small, their bits or'ed, and how many are >= NIB_ESC. */
static int pick_width(int small, uint32_t umax, uint32_t nk, uint32_t nexc, size_t osz)
{
    size_t best = (size_t)nk * osz;
    int w = 0;
    if (!small) return 0;
    if (umax < 256 && (size_t)nk < best) {
        best = nk;
        w = 1;
    }
    if (2 * (size_t)nk < best) {
        best = 2 * (size_t)nk;
        w = 2;
    }
    if (4 + ((size_t)nk + 1) / 2 + 2 * (size_t)nexc < best) w = 3;
    return w;
}

/* Bytes of the values of a row of nk values of size osz stored with `width`. */
static size_t vals_bytes(int width, uint32_t nk, uint32_t nexc, size_t osz)
{
    return width == 3 ? 4 + ((size_t)nk + 1) / 2 + 2 * (size_t)nexc
                      : (size_t)nk * (width ? (size_t)width : osz);
}

/* Width 3: the nk small integers u[q] as nibbles + exceptions at p (nexc of them are >= NIB_ESC);
 * returns the end. */
static uint8_t *put_nibbles(uint8_t *p, const uint32_t *u, uint32_t nk, uint32_t nexc)
{
    memcpy(p, &nexc, 4);
    uint8_t *nb = p + 4, *ex = nb + ((size_t)nk + 1) / 2;
    for (uint32_t q = 0; q + 1 < nk; q += 2) {
        uint32_t a = u[q], b = u[q + 1];
        uint32_t na = a < NIB_ESC ? a : NIB_ESC, nb1 = b < NIB_ESC ? b : NIB_ESC;
        nb[q >> 1] = (uint8_t)(na | nb1 << 4);
        if (a >= NIB_ESC) {
            ex[0] = (uint8_t)a;
            ex[1] = (uint8_t)(a >> 8);
            ex += 2;
        }
        if (b >= NIB_ESC) {
            ex[0] = (uint8_t)b;
            ex[1] = (uint8_t)(b >> 8);
            ex += 2;
        }
    }
    if (nk & 1) {
        uint32_t a = u[nk - 1];
        nb[nk >> 1] = (uint8_t)(a < NIB_ESC ? a : NIB_ESC);
        if (a >= NIB_ESC) {
            ex[0] = (uint8_t)a;
            ex[1] = (uint8_t)(a >> 8);
            ex += 2;
        }
    }
    return ex;
}

/* Width 3 decoded: nk values (vals: the value bytes, vbytes long, checked by elem_header) written
 * as type t at dst. */
static int nib_to(uint8_t *dst, ans_dtype t, const uint8_t *vals, uint32_t nk)
{
    uint32_t nexc;
    memcpy(&nexc, vals, 4);
    const uint8_t *nb = vals + 4, *ex = nb + ((size_t)nk + 1) / 2;
    uint32_t left = nexc;
#define NIB_ONE(T, u, q)                                                                           \
    do {                                                                                           \
        uint32_t u_ = (u);                                                                         \
        if (u_ == NIB_ESC) {                                                                       \
            if (!left) goto bad;                                                                   \
            left--;                                                                                \
            u_ = (uint32_t)ex[0] | (uint32_t)ex[1] << 8;                                           \
            ex += 2;                                                                               \
        }                                                                                          \
        T v_ = (T)u_;                                                                              \
        memcpy(dst + (size_t)(q) * sizeof(T), &v_, sizeof(T));                                     \
    } while (0)
    /* two values per byte; a byte with an escape in either half is the rare case */
#define NIB_LOOP(T)                                                                                \
    for (uint32_t q = 0; q + 1 < nk; q += 2) {                                                     \
        uint32_t b = nb[q >> 1];                                                                   \
        if ((b & 0x0f) != NIB_ESC && (b >> 4) != NIB_ESC) {                                        \
            T v0 = (T)(b & 0x0f), v1 = (T)(b >> 4);                                                \
            memcpy(dst + (size_t)q * sizeof(T), &v0, sizeof(T));                                   \
            memcpy(dst + (size_t)(q + 1) * sizeof(T), &v1, sizeof(T));                             \
        } else {                                                                                   \
            NIB_ONE(T, b & 0x0f, q);                                                               \
            NIB_ONE(T, b >> 4, q + 1);                                                             \
        }                                                                                          \
    }                                                                                              \
    if (nk & 1) NIB_ONE(T, nb[nk >> 1] & 0x0fu, nk - 1);
    switch (t) {
    case ANS_DTYPE_FLOAT32:
        NIB_LOOP(float);
        break;
    case ANS_DTYPE_FLOAT64:
        NIB_LOOP(double);
        break;
    case ANS_DTYPE_INT16:
        NIB_LOOP(int16_t);
        break;
    case ANS_DTYPE_UINT16:
        NIB_LOOP(uint16_t);
        break;
    case ANS_DTYPE_INT32:
        NIB_LOOP(int32_t);
        break;
    case ANS_DTYPE_UINT32:
        NIB_LOOP(uint32_t);
        break;
    case ANS_DTYPE_INT64:
        NIB_LOOP(int64_t);
        break;
    case ANS_DTYPE_UINT64:
        NIB_LOOP(uint64_t);
        break;
    default:
        goto bad;
    }
#undef NIB_LOOP
#undef NIB_ONE
    if (left) goto bad;
    return ANS_OK;
bad:
    return ans_err(ANS_ECORRUPT, "a run file record is damaged");
}

/* A row's values (width 0-3, see above) written as type t (size osz) at dst. */
static int vals_to(uint8_t *dst, ans_dtype t, size_t osz, const uint8_t *vals, int width,
                   uint32_t nk)
{
    if (width == 0)
        memcpy(dst, vals, (size_t)nk * osz);
    else if (width == 3)
        return nib_to(dst, t, vals, nk);
    else
        small_to(dst, t, vals, width, nk);
    return ANS_OK;
}

#define ENC_FALLBACK 1 /* encode_csr_f32: use the general path */

/* encode_elem for a CSR row of n float32 values with int32 columns, when the remapped columns
 * come out in order (else ENC_FALLBACK, nothing appended: the general path sorts them). */
static int encode_csr_f32(const cv_input *in, const int32_t *ind, const float *val, uint32_t n,
                          ans_buf *out, enc_scratch *x, uint32_t *nk_out)
{
    size_t at = out->len;
    int rc;
    if ((rc = ans_buf_resize(out, at + 9 + (size_t)n * 9))) return rc;
    if ((rc = ans_buf_resize(&x->vals, (size_t)n * 4 + 8))) return rc;
    if ((rc = ans_buf_resize(&x->small, (size_t)n * 4 + 8))) return rc;
    float *tv = (float *)(void *)x->vals.data;
    uint32_t *sv = (uint32_t *)(void *)x->small.data;
    uint8_t *p0 = out->data + at + 9, *p = p0;
    uint32_t prev = 0, nk = 0, umax = 0, nexc = 0;
    int small = 1;
    for (uint32_t q = 0; q < n; q++) {
        uint32_t col = (uint32_t)ind[q];
        uint32_t oc = col < in->n_vars ? in->vmap[col] : NONE32;
        if (oc == NONE32) continue;
        if (oc < prev) {
            out->len = at;
            return ENC_FALLBACK;
        }
        uint32_t dlt = oc - prev;
        prev = oc;
        while (dlt >= 0x80) {
            *p++ = (uint8_t)(dlt | 0x80);
            dlt >>= 7;
        }
        *p++ = (uint8_t)dlt;
        float f = val[q];
        if (small) {
            if (f >= 0.0f && f <= 65535.0f) {
                uint32_t u = (uint32_t)f;
                float b = (float)u;
                small = memcmp(&b, &f, 4) == 0;
                umax |= u;
                nexc += u >= NIB_ESC;
                sv[nk] = u;
            } else {
                small = 0;
            }
        }
        tv[nk++] = f;
    }
    uint32_t ibytes = (uint32_t)(p - p0);
    int width = pick_width(small, umax, nk, nexc, 4);
    uint8_t *h = out->data + at;
    memcpy(h, &nk, 4);
    h[4] = (uint8_t)width;
    memcpy(h + 5, &ibytes, 4);
    if (width == 0) {
        memcpy(p, tv, (size_t)nk * 4);
        p += (size_t)nk * 4;
    } else if (width == 3) {
        p = put_nibbles(p, sv, nk, nexc);
    } else if (width == 1) {
        for (uint32_t q = 0; q < nk; q++)
            p[q] = (uint8_t)sv[q];
        p += nk;
    } else {
        for (uint32_t q = 0; q < nk; q++) {
            uint32_t u = sv[q];
            p[2 * q] = (uint8_t)u;
            p[2 * q + 1] = (uint8_t)(u >> 8);
        }
        p += 2 * (size_t)nk;
    }
    out->len = (size_t)(p - out->data);
    *nk_out = nk;
    return ANS_OK;
}

/* Append row lr of `rw` (input `in`) for the var-aligned element e to `out`; *nk_out = values
 * kept. */
static int encode_elem(const cv_elem *e, const cv_input *in, const rowview *rw, uint64_t lr,
                       ans_buf *out, enc_scratch *x, uint32_t *nk_out)
{
    ans_dtype it = rw->dtype, ot = e->dtype;
    size_t isz = ans_dtype_size(it), osz = ans_dtype_size(ot);
    uint64_t a0, a1;
    const uint8_t *vals = rw->data;
    int dense = rw->dense;
    int i32 = !dense && !rw->idx64;
    if (dense) {
        a0 = lr * in->n_vars;
        a1 = a0 + in->n_vars;
    } else if (!rw->ptr64) {
        a0 = (uint64_t)((const int32_t *)rw->indptr)[lr];
        a1 = (uint64_t)((const int32_t *)rw->indptr)[lr + 1];
    } else {
        a0 = (uint64_t)((const int64_t *)rw->indptr)[lr];
        a1 = (uint64_t)((const int64_t *)rw->indptr)[lr + 1];
    }
    if (a1 - a0 > UINT32_MAX - 16)
        return ans_err(ANS_EINVAL, "a row has more than 2^32 values");
    int rc;
    if (!dense && i32 && it == ANS_DTYPE_FLOAT32 && ot == ANS_DTYPE_FLOAT32) {
        /* the common case in one pass: columns remapped in order, float32 values */
        rc = encode_csr_f32(in, (const int32_t *)rw->indices + a0, (const float *)rw->data + a0,
                            (uint32_t)(a1 - a0), out, x, nk_out);
        if (rc != ENC_FALLBACK) return rc;
    }
    if (a1 - a0 > x->ps_cap) {
        size_t ncap = (size_t)(a1 - a0) + 16;
        pairsort *np = ans_realloc(x->ps, ncap * sizeof *np);
        if (!np) return ANS_ENOMEM;
        x->ps = np;
        x->ps_cap = ncap;
    }
    pairsort *ps = x->ps;
    uint32_t nk = 0;
    int sorted = 1;
    const int32_t *ind32 = i32 ? (const int32_t *)rw->indices : NULL;
    const int64_t *ind64 = !dense && !i32 ? (const int64_t *)rw->indices : NULL;
    for (uint64_t q = a0; q < a1; q++) {
        uint64_t col;
        if (dense) {
            col = q - a0;
            const uint8_t *vp = vals + q * isz;
            int zero = 1;
            for (size_t b = 0; b < isz; b++)
                zero &= vp[b] == 0;
            if (zero) continue;
        } else if (ind32) {
            col = (uint64_t)(uint32_t)ind32[q];
        } else {
            col = (uint64_t)ind64[q];
        }
        uint32_t oc2 = col < in->n_vars ? in->vmap[col] : NONE32;
        if (oc2 == NONE32) continue;
        if (nk && ps[nk - 1].idx > oc2) sorted = 0;
        ps[nk].idx = oc2;
        ps[nk++].k = (uint32_t)(q - a0);
    }
    if (!sorted) qsort(ps, nk, sizeof *ps, cmp_pair);
    /* the kept values in the output dtype, and whether they are all small integers */
    if ((rc = ans_buf_resize(&x->vals, (size_t)nk * osz + 8))) return rc;
    if ((rc = ans_buf_resize(&x->small, (size_t)nk * 4 + 8))) return rc;
    uint8_t *ov = x->vals.data;
    uint32_t *sv = (uint32_t *)(void *)x->small.data, umax = 0;
    int small = osz > 1;
    if (it == ot) {
        for (uint32_t q = 0; q < nk; q++)
            memcpy(ov + (size_t)q * osz, vals + (a0 + ps[q].k) * osz, osz);
    } else {
        for (uint32_t q = 0; q < nk; q++)
            cast_one(ov + (size_t)q * osz, ot, vals, it, a0 + ps[q].k);
    }
    if (ot == ANS_DTYPE_FLOAT32) { /* the common case, without the switch per value */
        for (uint32_t q = 0; q < nk && small; q++) {
            float f, b;
            memcpy(&f, ov + (size_t)q * 4, 4);
            if (!(f >= 0.0f && f <= 65535.0f)) {
                small = 0;
                break;
            }
            sv[q] = (uint32_t)f;
            b = (float)sv[q];
            small = memcmp(&b, &f, 4) == 0;
            umax |= sv[q];
        }
    } else {
        for (uint32_t q = 0; q < nk && small; q++) {
            small = small_of(ov + (size_t)q * osz, ot, &sv[q]);
            if (small) umax |= sv[q];
        }
    }
    uint32_t nexc = 0;
    for (uint32_t q = 0; q < nk && small; q++)
        nexc += sv[q] >= NIB_ESC;
    int width = pick_width(small, umax, nk, nexc, osz);
    size_t vbytes = vals_bytes(width, nk, nexc, osz);
    size_t at = out->len;
    if ((rc = ans_buf_resize(out, at + 9 + (size_t)nk * 5 + vbytes))) return rc;
    uint8_t *p = out->data + at;
    memcpy(p, &nk, 4);
    p[4] = (uint8_t)width;
    uint8_t *ib = p + 5;
    p += 9;
    uint8_t *p0 = p;
    uint32_t prev = 0;
    for (uint32_t q = 0; q < nk; q++) {
        uint32_t dlt = ps[q].idx - prev;
        prev = ps[q].idx;
        while (dlt >= 0x80) {
            *p++ = (uint8_t)(dlt | 0x80);
            dlt >>= 7;
        }
        *p++ = (uint8_t)dlt;
    }
    uint32_t ibytes = (uint32_t)(p - p0);
    memcpy(ib, &ibytes, 4);
    if (width == 0) {
        memcpy(p, ov, vbytes);
    } else if (width == 3) {
        (void)put_nibbles(p, sv, nk, nexc);
    } else if (width == 1) {
        for (uint32_t q = 0; q < nk; q++)
            p[q] = (uint8_t)sv[q];
    } else {
        for (uint32_t q = 0; q < nk; q++) {
            p[2 * q] = (uint8_t)sv[q];
            p[2 * q + 1] = (uint8_t)(sv[q] >> 8);
        }
    }
    p += vbytes;
    out->len = (size_t)(p - out->data);
    *nk_out = nk;
    return ANS_OK;
}

/* Estimated bytes per row: *out as the rows are in memory (values + 4-byte indices; the dataset
 * size in bytes and the read blocks use it), *compact as the run files store them (sampling up to
 * 256 rows of each input). */
static int estimate_row_bytes(cv *c, double *out, double *compact)
{
    double total = 0, ctotal = 0;
    enc_scratch x = {0};
    ans_buf tmp = {0};
    int rc = ANS_OK;
    for (size_t s = 0; s < c->n_in && rc == ANS_OK; s++) {
        double per = 16 + 8.0 * (double)c->n_cols + 24, cper = per;
        uint64_t n = c->in[s].n_obs < 256 ? c->in[s].n_obs : 256;
        for (size_t k = 0; k < c->n_el && rc == ANS_OK; k++) {
            cv_elem *e = &c->el[k];
            if (!e->var_aligned) {
                per += (double)e->row_bytes;
                cper += (double)e->row_bytes;
                continue;
            }
            ans_element *h = NULL;
            if ((rc = ans_store_element(&h, c->in[s].st, e->key))) break;
            size_t vs = ans_dtype_size(e->dtype);
            if (!n) {
                per += (double)(vs + 4) * (double)c->in[s].n_vars * 0.5 + 4;
                cper += (double)(vs + 4) * (double)c->in[s].n_vars * 0.5 + 4;
            } else {
                ans_rows *r = NULL;
                rc = ans_element_read_range(h, 0, n, &r);
                tmp.len = 0;
                uint64_t kept = 0;
                rowview v;
                if (rc == ANS_OK) v = rowview_of(r);
                for (uint64_t i = 0; rc == ANS_OK && i < n; i++) {
                    uint32_t nk;
                    rc = encode_elem(e, &c->in[s], &v, i, &tmp, &x, &nk);
                    kept += nk;
                }
                if (rc == ANS_OK) {
                    if (ans_element_format(h) == ANS_FORMAT_DENSE)
                        per += (double)(vs + 4) * (double)c->in[s].n_vars * 0.5 + 4;
                    else
                        per += (double)kept / (double)n * (double)(vs + 4) + 4;
                    cper += (double)tmp.len / (double)n;
                }
                ans_rows_free(r);
            }
            ans_element_free(h);
        }
        total += per * (double)c->in[s].n_obs;
        ctotal += cper * (double)c->in[s].n_obs;
    }
    enc_scratch_free(&x);
    ans_buf_free(&tmp);
    if (rc != ANS_OK) return rc;
    *out = c->n_total ? total / (double)c->n_total : 64;
    *compact = c->n_total ? ctotal / (double)c->n_total : 64;
    if (*out < 1) *out = 1;
    if (*compact < 1) *compact = 1;
    return ANS_OK;
}

/* ---- permutation ------------------------------------------------------------------------------
 */

static uint64_t pos_of(const cv *c, uint64_t g)
{
    if (c->table) return c->table[g]; /* a shuffle, a groupby, or both */
    if (!c->o->shuffle) return g;
    return ans_perm_apply(&c->perm, g);
}

static int build_perm(cv *c)
{
    if (!c->o->shuffle || !c->n_total) return ANS_OK;
    if (c->n_total <= c->budget / 16 / 8) {
        if (!(c->table = ans_malloc(c->n_total * 8))) return ANS_ENOMEM;
        for (uint64_t i = 0; i < c->n_total; i++)
            c->table[i] = i;
        uint64_t st = ans_mix64(c->o->seed ^ 0x636f6e76ULL);
        for (uint64_t i = c->n_total - 1; i > 0; i--) {
            /* unbiased draw in [0, i] */
            uint64_t bound = i + 1, lim = UINT64_MAX - UINT64_MAX % bound, r;
            do {
                st += 0x9e3779b97f4a7c15ULL;
                r = ans_mix64(st);
            } while (r >= lim);
            uint64_t j = r % bound, t = c->table[i];
            c->table[i] = c->table[j];
            c->table[j] = t;
        }
    } else {
        ans_perm_init(&c->perm, c->n_total, ans_mix64(c->o->seed ^ 0x636f6e76ULL));
    }
    return ANS_OK;
}

/* ---- groupby: each dataset's rows stably sorted by obs columns --------------------------------
 *
 * After the permutation has given every row its dataset and place, the rows of each dataset are
 * sorted by the groupby columns with a stable merge sort, so that rows of a group keep their
 * shuffled order. Values compare as the output column holds them: categoricals by their unified
 * code (the output category order), numbers by value, strings bytewise; missing values (NaN, a
 * missing code, a masked value) last. Needs the permutation as a table: 16 bytes per row while it
 * runs, 8 after. */

typedef struct gb_key {
    const cv_col *col;
    ans_frame **frames; /* per input; NULL where src_path is constant */
    ans_column *vals;   /* per input */
} gb_key;

typedef struct gb_ctx {
    const cv *c;
    gb_key *keys;
    size_t nk;
} gb_ctx;

static size_t input_of(const cv *c, uint64_t g)
{
    size_t a = 0, b = c->n_in; /* offset[a] <= g < offset[b] */
    while (b - a > 1) {
        size_t m = a + (b - a) / 2;
        if (c->in[m].offset <= g)
            a = m;
        else
            b = m;
    }
    return a;
}

/* -1, 0, 1: row (s1, r1) against row (s2, r2) in key k */
static int gb_cmp_key(const gb_ctx *x, const gb_key *k, size_t s1, uint64_t r1, size_t s2,
                      uint64_t r2)
{
    (void)x;
    const cv_col *col = k->col;
    const ans_column *a = &k->vals[s1], *b = &k->vals[s2];
    switch (col->kind) {
    case OC_CAT: {
        uint64_t v[2];
        size_t ss[2] = {s1, s2};
        uint64_t rr[2] = {r1, r2};
        for (int i = 0; i < 2; i++) {
            size_t s = ss[i];
            v[i] = UINT64_MAX; /* missing: last */
            if (!k->frames[s]) {
                v[i] = col->cmap[s][0];
            } else {
                const ans_column *cc = &k->vals[s];
                int64_t ic = rd_i64(cc->dtype, cc->values, rr[i]);
                if (ic >= 0 && (uint64_t)ic < col->ncmap[s]) v[i] = col->cmap[s][ic];
            }
        }
        return (v[0] > v[1]) - (v[0] < v[1]);
    }
    case OC_STR: {
        uint64_t l1 = a->str_offsets[r1 + 1] - a->str_offsets[r1];
        uint64_t l2 = b->str_offsets[r2 + 1] - b->str_offsets[r2];
        int m = memcmp(a->str_data + a->str_offsets[r1], b->str_data + b->str_offsets[r2],
                       (size_t)(l1 < l2 ? l1 : l2));
        if (m) return m < 0 ? -1 : 1;
        return (l1 > l2) - (l1 < l2);
    }
    default: {
        int m1 = a->mask ? a->mask[r1] != 0 : 0, m2 = b->mask ? b->mask[r2] != 0 : 0;
        if (m1 || m2) return m1 - m2;
        if (col->dtype == ANS_DTYPE_FLOAT32 || col->dtype == ANS_DTYPE_FLOAT64 ||
            a->dtype != b->dtype) {
            double v1 = rd_f64(a->dtype, a->values, r1), v2 = rd_f64(b->dtype, b->values, r2);
            int n1 = v1 != v1, n2 = v2 != v2;
            if (n1 || n2) return n1 - n2;
            return (v1 > v2) - (v1 < v2);
        }
        if (a->dtype == ANS_DTYPE_UINT64) {
            uint64_t v1 = ((const uint64_t *)a->values)[r1], v2 = ((const uint64_t *)b->values)[r2];
            return (v1 > v2) - (v1 < v2);
        }
        int64_t v1 = rd_i64(a->dtype, a->values, r1), v2 = rd_i64(b->dtype, b->values, r2);
        return (v1 > v2) - (v1 < v2);
    }
    }
}

static int gb_cmp(const gb_ctx *x, uint64_t g1, uint64_t g2)
{
    size_t s1 = input_of(x->c, g1), s2 = input_of(x->c, g2);
    uint64_t r1 = g1 - x->c->in[s1].offset, r2 = g2 - x->c->in[s2].offset;
    for (size_t k = 0; k < x->nk; k++) {
        int d = gb_cmp_key(x, &x->keys[k], s1, r1, s2, r2);
        if (d) return d;
    }
    return 0;
}

/* Stable merge sort of a[0..n) (tmp: n entries), bottom-up. */
static void gb_sort(const gb_ctx *x, uint64_t *a, uint64_t *tmp, uint64_t n)
{
    uint64_t *src = a, *dst = tmp;
    for (uint64_t w = 1; w < n; w *= 2) {
        for (uint64_t lo = 0; lo < n; lo += 2 * w) {
            uint64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            uint64_t i = lo, j = mid, o = lo;
            while (i < mid && j < hi) dst[o++] = gb_cmp(x, src[j], src[i]) < 0 ? src[j++] : src[i++];
            while (i < mid) dst[o++] = src[i++];
            while (j < hi) dst[o++] = src[j++];
        }
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != a) memcpy(a, src, n * sizeof *a);
}

static int apply_groupby(cv *c)
{
    const ans_convert_options *o = c->o;
    if (!o->n_groupby || !c->n_total) return ANS_OK;
    if (!o->groupby) return ans_err(ANS_EINVAL, "ans_convert: groupby is NULL");
    uint64_t need;
    if (ans_mul_overflow(c->n_total, 16, &need) || need > c->budget / 2)
        return ans_err(ANS_EINVAL,
                       "ans_convert: groupby needs 16 bytes per row (%llu rows) within half of the "
                       "memory budget; raise memory",
                       (unsigned long long)c->n_total);
    gb_key *keys = ans_calloc(o->n_groupby, sizeof *keys);
    uint64_t *order = NULL, *tmp = NULL;
    int rc = keys ? ANS_OK : ANS_ENOMEM;
    for (size_t k = 0; rc == ANS_OK && k < o->n_groupby; k++) {
        const char *name = o->groupby[k];
        if (!name) {
            rc = ans_err(ANS_EINVAL, "ans_convert: groupby column %zu is NULL", k);
            break;
        }
        for (size_t j = 0; j < c->n_cols && !keys[k].col; j++)
            if (strcmp(c->cols[j].name, name) == 0) keys[k].col = &c->cols[j];
        if (!keys[k].col) {
            rc = ans_err(ANS_EINVAL,
                         "ans_convert: groupby column '%s' is not among the obs columns written",
                         name);
            break;
        }
        keys[k].frames = ans_calloc(c->n_in, sizeof *keys[k].frames);
        keys[k].vals = ans_calloc(c->n_in, sizeof *keys[k].vals);
        if (!keys[k].frames || !keys[k].vals) rc = ANS_ENOMEM;
        for (size_t s = 0; rc == ANS_OK && s < c->n_in; s++) {
            const cv_col *col = keys[k].col;
            if (col->is_src && col->ncmap[s] == UINT64_MAX) continue; /* constant per input */
            const char *one[1] = {name};
            rc = ans_store_read_frame(c->in[s].st, "obs", one, 1, &keys[k].frames[s]);
            if (rc == ANS_OK) rc = ans_frame_column(keys[k].frames[s], 0, &keys[k].vals[s]);
            if (rc == ANS_OK && keys[k].vals[s].length != c->in[s].n_obs)
                rc = ans_err(ANS_ECORRUPT, "%s: obs column '%s' has %llu rows, obs %llu",
                             c->in[s].path, name, (unsigned long long)keys[k].vals[s].length,
                             (unsigned long long)c->in[s].n_obs);
            if (rc != ANS_OK) err_name(c->in[s].path);
        }
    }
    if (rc == ANS_OK && !c->table) {
        if (!(c->table = ans_malloc(c->n_total * 8))) rc = ANS_ENOMEM;
        for (uint64_t g = 0; rc == ANS_OK && g < c->n_total; g++) {
            uint64_t p = !o->shuffle ? g : ans_perm_apply(&c->perm, g);
            c->table[g] = p;
        }
    }
    if (rc == ANS_OK) {
        order = ans_malloc(c->n_total * 8);
        tmp = ans_malloc((c->S < c->n_total ? c->S : c->n_total) * 8);
        if (!order || !tmp) rc = ANS_ENOMEM;
    }
    if (rc == ANS_OK) {
        gb_ctx x = {c, keys, o->n_groupby};
        for (uint64_t g = 0; g < c->n_total; g++) order[c->table[g]] = g;
        for (uint64_t d = 0; d < c->n_ds; d++) {
            uint64_t p0 = d * c->S, n = c->n_total - p0 < c->S ? c->n_total - p0 : c->S;
            gb_sort(&x, order + p0, tmp, n);
            for (uint64_t i = 0; i < n; i++) c->table[order[p0 + i]] = p0 + i;
        }
    }
    for (size_t k = 0; keys && k < o->n_groupby; k++) {
        for (size_t s = 0; keys[k].frames && s < c->n_in; s++) ans_frame_free(keys[k].frames[s]);
        free(keys[k].frames);
        free(keys[k].vals);
    }
    free(keys);
    free(order);
    free(tmp);
    return rc;
}

/* ---- run files ------------------------------------------------------------------------------
 *
 * Run files are written and read with O_DIRECT where the file system allows it: from and into our
 * own (reused) buffers, without copying every byte through the page cache, which on the
 * development VM cost more kernel time than the rest of the conversion. Every write but a slice's
 * last is a multiple of ALIGN bytes; the last is padded with zeros and the slice's real length
 * kept in c->slen. Without O_DIRECT (tmpfs, ...) the same calls are plain buffered I/O.
 */
#define ALIGN 4096

/* A byte buffer whose data is ALIGN-aligned. */
typedef struct abuf {
    uint8_t *p;
    size_t len, cap;
} abuf;

static int abuf_reserve(abuf *b, size_t n)
{
    if (n <= b->cap) return ANS_OK;
    size_t cap = b->cap ? b->cap : n; /* a first reservation is taken as the size wanted */
    while (cap < n)
        cap = cap > SIZE_MAX / 4 ? n : cap * 2;
    cap = (cap + ALIGN - 1) / ALIGN * ALIGN;
    void *q = NULL;
    if (posix_memalign(&q, ALIGN, cap) != 0 || !q) return ans_err(ANS_ENOMEM, "out of memory");
    if (b->len) memcpy(q, b->p, b->len);
    free(b->p);
    b->p = q;
    b->cap = cap;
    return ANS_OK;
}

static int abuf_append(abuf *b, const void *d, size_t n)
{
    int rc = abuf_reserve(b, b->len + n);
    if (rc) return rc;
    memcpy(b->p + b->len, d, n);
    b->len += n;
    return ANS_OK;
}

static void abuf_free(abuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* open(2) with O_DIRECT when the file system takes it, else without. */
static int open_direct(const char *path, int flags)
{
#ifdef O_DIRECT
    int fd = open(path, flags | O_DIRECT | O_CLOEXEC, 0600);
    if (fd >= 0 || errno != EINVAL) return fd;
#endif
    return open(path, flags | O_CLOEXEC, 0600);
}

/* pwrite all n bytes at off; a direct write refused for its alignment is retried buffered. */
static int write_all(int fd, const uint8_t *p, size_t n, uint64_t off)
{
    while (n) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
#ifdef O_DIRECT
        if (w < 0 && errno == EINVAL) {
            int fl = fcntl(fd, F_GETFL);
            if (fl >= 0 && (fl & O_DIRECT) && fcntl(fd, F_SETFL, fl & ~O_DIRECT) == 0) continue;
        }
#endif
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* ---- pass 1: scatter --------------------------------------------------------------------------
 */

/* Run slices: dataset d's positions [d S, d S + S) are cut into `kpd` slices of `R` rows, each
 * with its own run file "<runs>/d<d>.<j>", sized so that a slice's file fits the pass-2 budget. */
static uint64_t slice_of(const cv *c, uint64_t pos)
{
    uint64_t d = pos / c->S;
    return d * c->kpd + (pos - d * c->S) / c->R;
}

static void slice_range(const cv *c, uint64_t sid, uint64_t *lo, uint64_t *hi)
{
    uint64_t d = sid / c->kpd, j = sid % c->kpd;
    uint64_t dl = d * c->S, dh = dl + c->S < c->n_total ? dl + c->S : c->n_total;
    uint64_t a = dl + j * c->R, z = a + c->R;
    if (a > dh) a = dh;
    if (z > dh) z = dh;
    *lo = a;
    *hi = z;
}

static void slice_path(const cv *c, uint64_t sid, char *path, size_t cap)
{
    snprintf(path, cap, "%s/d%llu.%llu", c->runs, (unsigned long long)(sid / c->kpd),
             (unsigned long long)(sid % c->kpd));
}

typedef struct scatter {
    abuf *bufs;   /* per slice */
    uint64_t *off; /* per slice: bytes in its file */
    size_t cap;   /* flush threshold per slice */
} scatter;

/* Write slice sid's buffer: its whole ALIGN-sized blocks (the rest stays buffered), or with
 * `last`, everything (padded). */
static int flush_slice(cv *c, scatter *sc, uint64_t sid, int last)
{
    abuf *b = &sc->bufs[sid];
    size_t n = last ? (b->len + ALIGN - 1) / ALIGN * ALIGN : b->len / ALIGN * ALIGN;
    if (!n) return ANS_OK;
    int rc = abuf_reserve(b, n);
    if (rc) return rc;
    if (n > b->len) memset(b->p + b->len, 0, n - b->len);
    char path[4096];
    slice_path(c, sid, path, sizeof path);
    int fd = open_direct(path, O_WRONLY | O_CREAT);
    if (fd < 0)
        return ans_err(ANS_EIO, "%s: cannot open '%s': %s", c->output, path, strerror(errno));
    int bad = write_all(fd, b->p, n, sc->off[sid]);
    bad |= close(fd) != 0;
    if (bad)
        return ans_err(ANS_EIO, "%s: writing '%s' failed: %s", c->output, path, strerror(errno));
    sc->off[sid] += n;
    if (last) {
        c->slen[sid] += b->len;
        b->len = 0;
    } else {
        c->slen[sid] += n;
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
    if (b->cap > sc->cap * 2 + ALIGN) { /* keep the buffers bounded after a large record */
        abuf tmp = {0};
        if (b->len && (rc = abuf_append(&tmp, b->p, b->len))) return rc;
        abuf_free(b);
        *b = tmp;
    }
    return ANS_OK;
}

/* Encoding one block of rows: split into parts encoded in parallel on the pool, each part into
 * its own buffer (records back to back), then appended to the slice buffers in order. */
typedef struct enc_part {
    ans_buf out;
    enc_scratch x;
    uint64_t *nnz; /* per element and dataset: values kept */
} enc_part;

typedef struct enc_job {
    cv *c;
    size_t s;
    const ans_column *oc, *idx;
    const rowview *views;
    uint64_t r0, r1, per;
    const uint8_t *suffix; /* per row of the block: the obs name gets "-<s>" */
    const char *sfx;
    size_t sfx_len;
    enc_part *parts;
} enc_job;

static int encode_row(cv *c, size_t s, const ans_column *oc, const ans_column *idx,
                      const rowview *views, uint64_t r0, uint64_t r, int suffix, const char *sfx,
                      size_t sfx_len, enc_part *pt)
{
    cv_input *in = &c->in[s];
    ans_buf *rec = &pt->out;
    size_t start = rec->len;
    uint64_t g = in->offset + r, pos = pos_of(c, g), d = pos / c->S;
    int rc = ANS_OK;
    uint64_t hdr[2] = {pos, 0};
    PUT(rec, hdr, sizeof hdr);
    {
        const char *nm = idx->str_data + idx->str_offsets[r];
        uint32_t len = (uint32_t)(idx->str_offsets[r + 1] - idx->str_offsets[r]);
        uint32_t tl = len + (suffix ? (uint32_t)sfx_len : 0);
        PUT(rec, &tl, 4);
        PUT(rec, nm, len);
        if (suffix) PUT(rec, sfx, sfx_len);
    }
    for (size_t k = 0; k < c->n_cols; k++) {
        cv_col *col = &c->cols[k];
        const ans_column *a = &oc[k];
        if (col->kind == OC_CAT) {
            int32_t code = -1;
            if (col->is_src && col->ncmap[s] == UINT64_MAX) {
                code = (int32_t)col->cmap[s][0];
            } else {
                int64_t ic = rd_i64(a->dtype, a->values, r);
                if (ic >= 0 && (uint64_t)ic < col->ncmap[s]) code = (int32_t)col->cmap[s][ic];
            }
            PUT(rec, &code, 4);
        } else if (col->kind == OC_STR) {
            uint32_t len = (uint32_t)(a->str_offsets[r + 1] - a->str_offsets[r]);
            PUT(rec, &len, 4);
            PUT(rec, a->str_data + a->str_offsets[r], len);
        } else {
            uint8_t v[8];
            cast_one(v, col->dtype, a->values, a->dtype, r);
            PUT(rec, v, ans_dtype_size(col->dtype));
            if (col->kind != OC_NUM) {
                uint8_t m = a->mask ? a->mask[r] : 0;
                PUT(rec, &m, 1);
            }
        }
    }
    for (size_t k = 0; k < c->n_el; k++) {
        cv_elem *e = &c->el[k];
        uint64_t lr = r - r0;
        if (!e->var_aligned) {
            PUT(rec, views[k].data + lr * e->row_bytes, e->row_bytes);
            continue;
        }
        uint32_t nk;
        if ((rc = encode_elem(e, in, &views[k], lr, rec, &pt->x, &nk))) goto out;
        if (pt->nnz) pt->nnz[k * c->n_ds + d] += nk;
    }
    uint64_t len = rec->len - start;
    memcpy(rec->data + start + 8, &len, 8);
out:
    return rc;
}

static int enc_job_fn(void *ctx, size_t i, int slot)
{
    (void)slot;
    enc_job *j = ctx;
    enc_part *pt = &j->parts[i];
    pt->out.len = 0;
    uint64_t a = j->r0 + i * j->per, z = a + j->per < j->r1 ? a + j->per : j->r1;
    for (uint64_t r = a; r < z; r++) {
        int rc = encode_row(j->c, j->s, j->oc, j->idx, j->views, j->r0, r, j->suffix[r - j->r0],
                            j->sfx, j->sfx_len, pt);
        if (rc) return rc;
    }
    return ANS_OK;
}

/* Memory the kernel could give without swapping (MemAvailable: free + reclaimable cache). */
static uint64_t mem_available(void)
{
    uint64_t kb = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %" SCNu64 " kB", &kb) == 1) break;
        fclose(f);
    }
    if (kb) return kb * 1024;
    long pg = sysconf(_SC_PAGESIZE), av = sysconf(_SC_AVPHYS_PAGES);
    return pg > 0 && av > 0 ? (uint64_t)pg * (uint64_t)av : 0;
}

/* Ask the kernel to start reading a single-file input (.h5ad) in the background. Only when the
 * file is well within free memory; a hint, failures ignored. (Measured on the development VM,
 * kernel 6.18: one WILLNEED over the whole file reads only its first 8 MiB, the readahead window;
 * the input then streams through the kernel's sequential readahead of libhdf5's preads. Walking
 * the whole file with WILLNEED from a thread, all of it or one input at a time, kept the disk
 * busier but slowed the run files' writes and the run as a whole: not done.) */
static int prefetch_file(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    if ((uint64_t)st.st_size > mem_available() / 2) return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    int ok = posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED) == 0;
    close(fd);
    return ok;
}

/* Drop a file read once from the page cache (after prefetch_file): its pages go back to the free
 * lists at once instead of being reclaimed later, under the pressure of the next input's. */
static void release_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

/* One block of rows of every element, read by a reader thread into buffers reused from block to
 * block (fresh buffers would cost the kernel a page fault and a zeroed page per 4 KiB: 10% of the
 * time), while the previous block is encoded. */
typedef struct elbuf {
    ans_buf data, ind, ptr;
    ans_range scratch[1];
    ans_rows *rows; /* CSC elements: the public read, converted to CSR */
} elbuf;

typedef struct blockrd {
    cv *c;
    size_t s;
    ans_element **eh;
    elbuf *eb;     /* per element */
    rowview *view; /* per element */
    uint64_t r0, r1;
    int rc;
    char msg[1024];
} blockrd;

static int read_block(blockrd *b)
{
    cv *c = b->c;
    cv_input *in = &c->in[b->s];
    int rc = ANS_OK;
    for (size_t k = 0; k < c->n_el && rc == ANS_OK; k++) {
        elbuf *eb = &b->eb[k];
        rowview *v = &b->view[k];
        ans_rows_free(eb->rows);
        eb->rows = NULL;
        if (ans_element_format(b->eh[k]) == ANS_FORMAT_CSC) {
            if ((rc = ans_element_read_range(b->eh[k], b->r0, b->r1, &eb->rows))) break;
            *v = rowview_of(eb->rows);
            continue;
        }
        ans_range rg = {b->r0, b->r1 - b->r0};
        ans_dtype it = in->n_vars > INT32_MAX ? ANS_DTYPE_INT64 : ANS_DTYPE_INT32;
        ans_ad_read_size sz;
        if ((rc = ans_ad_element_size_ranges(b->eh[k], &rg, 1, it, &sz))) break;
        if ((rc = ans_buf_resize(&eb->data, sz.data_bytes + 8))) break;
        if ((rc = ans_buf_resize(&eb->ind, sz.indices_bytes + 8))) break;
        if ((rc = ans_buf_resize(&eb->ptr, (size_t)(rg.count + 1) * 8))) break;
        if ((rc = ans_ad_element_read_ranges_into(b->eh[k], &rg, 1, it, 0, eb->data.data,
                                                  eb->ind.data, (uint64_t *)(void *)eb->ptr.data,
                                                  eb->scratch)))
            break;
        v->dense = ans_element_format(b->eh[k]) == ANS_FORMAT_DENSE;
        v->dtype = ans_element_dtype(b->eh[k]);
        v->idx64 = it == ANS_DTYPE_INT64;
        v->ptr64 = 1;
        v->data = eb->data.data;
        v->indices = eb->ind.data;
        v->indptr = eb->ptr.data;
    }
    b->rc = rc;
    if (rc != ANS_OK) snprintf(b->msg, sizeof b->msg, "%s", ans_error_last());
    return rc;
}

static void *read_block_thread(void *arg)
{
    (void)read_block(arg);
    return NULL;
}

static void blockrd_free(blockrd *b, size_t n_el)
{
    for (size_t k = 0; b->eb && k < n_el; k++) {
        ans_buf_free(&b->eb[k].data);
        ans_buf_free(&b->eb[k].ind);
        ans_buf_free(&b->eb[k].ptr);
        ans_rows_free(b->eb[k].rows);
    }
    free(b->eb);
    free(b->view);
}

/* An input opened for pass 1: a store with the full decode pool (the inputs were opened with one
 * thread each for prepare; this one is closed when the input is done, so threads do not add up),
 * the obs columns carried, and the element handles. */
typedef struct p1in {
    size_t s;
    ans_store *full;
    ans_frame *obs;
    ans_column *oc, idx;
    ans_element **eh;
} p1in;

static void p1in_close(cv *c, p1in *x)
{
    for (size_t k = 0; x->eh && k < c->n_el; k++)
        ans_element_free(x->eh[k]);
    free(x->eh);
    free(x->oc);
    ans_frame_free(x->obs);
    ans_store_free(x->full);
    memset(x, 0, sizeof *x);
}

static int p1in_open(cv *c, size_t s, p1in *x)
{
    memset(x, 0, sizeof *x);
    x->s = s;
    ans_store_options so = ANS_STORE_OPTIONS_INIT;
    so.threads = c->o->threads;
    int rc = ans_store_open(&x->full, c->in[s].path, &so);
    const char **names = ans_calloc(c->n_cols + 1, sizeof *names);
    x->oc = ans_calloc(c->n_cols + 1, sizeof *x->oc);
    x->eh = ans_calloc(c->n_el + 1, sizeof *x->eh);
    if (rc == ANS_OK && (!names || !x->oc || !x->eh)) rc = ANS_ENOMEM;
    size_t nn = 0;
    for (size_t k = 0; rc == ANS_OK && k < c->n_cols; k++)
        if (!c->cols[k].is_src || c->cols[k].ncmap[s] != UINT64_MAX) names[nn++] = c->cols[k].name;
    if (rc == ANS_OK) rc = ans_store_read_frame(x->full, "obs", names, nn, &x->obs);
    if (rc == ANS_OK) rc = ans_frame_index(x->obs, &x->idx);
    for (size_t k = 0, q = 0; rc == ANS_OK && k < c->n_cols; k++) {
        if (c->cols[k].is_src && c->cols[k].ncmap[s] == UINT64_MAX) continue;
        rc = ans_frame_column(x->obs, q++, &x->oc[k]);
    }
    for (size_t k = 0; rc == ANS_OK && k < c->n_el; k++)
        rc = ans_store_element(&x->eh[k], x->full, c->el[k].key);
    free(names);
    if (rc != ANS_OK) p1in_close(c, x);
    return rc;
}

/* Pass 1's buffers, kept from one input to the next (fresh ones would be fresh pages again); and
 * the next input, opened while the current one's last block is encoded, its first block being
 * read meanwhile into bk[nbk] (so the disk does not wait at each input's start). */
typedef struct p1bufs {
    blockrd bk[2];
    enc_part *parts;
    size_t nparts;
    p1in next;
    int has_next, nreading, nbk;
    pthread_t nth;
} p1bufs;

/* Free the rows a CSC element's read made in bk[i] (they belong to that input's handles). */
static void bk_rows_free(blockrd *b, size_t n_el)
{
    for (size_t k = 0; b->eb && k < n_el; k++) {
        ans_rows_free(b->eb[k].rows);
        b->eb[k].rows = NULL;
    }
}

static void p1bufs_free(p1bufs *p, cv *c)
{
    size_t n_el = c->n_el;
    if (p->nreading) pthread_join(p->nth, NULL);
    p->nreading = 0;
    for (int i = 0; i < 2; i++)
        bk_rows_free(&p->bk[i], n_el);
    if (p->has_next) p1in_close(c, &p->next);
    p->has_next = 0;
    for (int i = 0; i < 2; i++)
        blockrd_free(&p->bk[i], n_el);
    for (size_t i = 0; p->parts && i < p->nparts; i++) {
        ans_buf_free(&p->parts[i].out);
        enc_scratch_free(&p->parts[i].x);
        free(p->parts[i].nnz);
    }
    free(p->parts);
    memset(p, 0, sizeof *p);
}

static int p1bufs_init(cv *c, p1bufs *p)
{
    memset(p, 0, sizeof *p);
    for (int i = 0; i < 2; i++) {
        p->bk[i].eb = ans_calloc(c->n_el + 1, sizeof *p->bk[i].eb);
        p->bk[i].view = ans_calloc(c->n_el + 1, sizeof *p->bk[i].view);
        if (!p->bk[i].eb || !p->bk[i].view) return ANS_ENOMEM;
    }
    p->nparts = (size_t)ans_pool_size(c->pool) * 4;
    if (!(p->parts = ans_calloc(p->nparts, sizeof *p->parts))) return ANS_ENOMEM;
    for (size_t i = 0; i < p->nparts; i++)
        if (c->n_el && !(p->parts[i].nnz = ans_calloc(c->n_el * c->n_ds + 1, 8))) return ANS_ENOMEM;
    return ANS_OK;
}

static int scatter_input(cv *c, size_t s, scatter *sc, uint64_t block, p1bufs *pb)
{
    cv_input *in = &c->in[s];
    int rc = ANS_OK;
    size_t nparts = pb->nparts;
    enc_part *parts = pb->parts;
    blockrd *bk = pb->bk;
    int reading = 0; /* the reader thread of the next block of this input is running */
    pthread_t th;
    int cur = 0, first = 0; /* first: bk[cur] holds (or is receiving) this input's first block */
    p1in x;
    memset(&x, 0, sizeof x);
    uint8_t *suffix = NULL;
    if (pb->has_next && pb->next.s == s) {
        x = pb->next;
        pb->has_next = 0;
        cur = pb->nbk;
        first = 1;
    } else if ((rc = p1in_open(c, s, &x))) {
        goto out;
    }
    const ans_column *oc = x.oc, *idx = &x.idx;
    if (!(suffix = ans_malloc(block + 1))) {
        rc = ANS_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < nparts; i++)
        if (parts[i].nnz) memset(parts[i].nnz, 0, (c->n_el * c->n_ds + 1) * 8);
    char sfx[32];
    int sfx_len = snprintf(sfx, sizeof sfx, "-%zu", s);

    if (first && pb->nreading) {
        pthread_join(pb->nth, NULL);
        pb->nreading = 0;
    }
    if (first && bk[cur].rc) {
        rc = ans_err(bk[cur].rc, "%s", bk[cur].msg);
        goto out;
    }
    if (!first && in->n_obs) {
        bk[cur].c = c;
        bk[cur].s = s;
        bk[cur].eh = x.eh;
        bk[cur].r0 = 0;
        bk[cur].r1 = in->n_obs < block ? in->n_obs : block;
        if ((rc = read_block(&bk[cur]))) goto out;
    }
    for (uint64_t r0 = 0; r0 < in->n_obs; r0 += block, cur ^= 1) {
        uint64_t r1 = in->n_obs - r0 < block ? in->n_obs : r0 + block;
        blockrd *nb = &bk[cur ^ 1];
        bk_rows_free(nb, c->n_el);
        if (r1 < in->n_obs) { /* start reading the next block */
            nb->c = c;
            nb->s = s;
            nb->eh = x.eh;
            nb->r0 = r1;
            nb->r1 = in->n_obs - r1 < block ? in->n_obs : r1 + block;
            nb->rc = ANS_OK;
            if (pthread_create(&th, NULL, read_block_thread, nb) == 0)
                reading = 1;
            else if ((rc = read_block(nb)))
                goto out;
        } else if (s + 1 < c->n_in && c->in[s + 1].n_obs && !pb->has_next) {
            /* the last block (read already): close this input's elements (their caches), open the
             * next input and start reading its first block (a failure here is left for that
             * input's own turn to report) */
            for (size_t k = 0; k < c->n_el; k++) {
                ans_element_free(x.eh[k]);
                x.eh[k] = NULL;
            }
            if (p1in_open(c, s + 1, &pb->next) == ANS_OK) {
                pb->has_next = 1;
                pb->nbk = cur ^ 1;
                nb->c = c;
                nb->s = s + 1;
                nb->eh = pb->next.eh;
                nb->r0 = 0;
                nb->r1 = c->in[s + 1].n_obs < block ? c->in[s + 1].n_obs : block;
                nb->rc = ANS_OK;
                if (pthread_create(&pb->nth, NULL, read_block_thread, nb) == 0)
                    pb->nreading = 1;
                else
                    (void)read_block(nb); /* (its failure is in nb->rc, reported then) */
            } else {
                ans_error_clear();
            }
        }
        /* obs names: a name seen in an earlier input gets the suffix (each input's names are in
         * the set before the next input starts) */
        for (uint64_t r = r0; r < r1; r++) {
            int sf = in->suffix_all;
            if (!c->names_fallback) {
                const char *nm = idx->str_data + idx->str_offsets[r];
                size_t len = (size_t)(idx->str_offsets[r + 1] - idx->str_offsets[r]);
                int present = 0;
                if ((rc = hset_insert(&c->names, fnv64(nm, len), &present))) goto out;
                sf = present && s > 0;
            }
            suffix[r - r0] = (uint8_t)sf;
        }
        uint64_t n = r1 - r0, per = (n + nparts - 1) / nparts;
        if (per < 64) per = 64;
        size_t njobs = (size_t)((n + per - 1) / per);
        enc_job job = {c, s, oc, idx, bk[cur].view, r0, r1, per, suffix, sfx, (size_t)sfx_len,
                       parts};
        if ((rc = ans_pool_for(c->pool, njobs, enc_job_fn, &job))) goto out;
        for (size_t i = 0; i < njobs; i++) {
            ans_buf *o = &parts[i].out;
            for (size_t at = 0; at < o->len;) {
                uint64_t hdr[2];
                memcpy(hdr, o->data + at, 16);
                uint64_t sid = slice_of(c, hdr[0]);
                /* room for a whole flush at once: growing in steps costs fresh pages each time */
                if (!sc->bufs[sid].cap && (rc = abuf_reserve(&sc->bufs[sid], sc->cap + (64 << 10))))
                    goto out;
                if ((rc = abuf_append(&sc->bufs[sid], o->data + at, (size_t)hdr[1]))) goto out;
                if (sc->bufs[sid].len >= sc->cap && (rc = flush_slice(c, sc, sid, 0))) goto out;
                at += (size_t)hdr[1];
            }
        }
        c->done1 += n;
        if ((rc = cv_progress(c))) goto out;
        if (reading) {
            pthread_join(th, NULL);
            reading = 0;
            if (bk[cur ^ 1].rc) {
                rc = ans_err(bk[cur ^ 1].rc, "%s", bk[cur ^ 1].msg);
                goto out;
            }
        }
    }
    for (size_t k = 0; k < c->n_el; k++)
        for (uint64_t d = 0; d < c->n_ds && c->el[k].var_aligned; d++)
            for (size_t i = 0; i < nparts; i++)
                c->el[k].ds_nnz[d] += parts[i].nnz ? parts[i].nnz[k * c->n_ds + d] : 0;
out:
    if (reading) pthread_join(th, NULL);
    if (rc != ANS_OK && rc != ANS_ECANCELLED) err_name(in->path);
    for (int i = 0; i < 2; i++) {
        if (pb->has_next && i == pb->nbk) continue; /* the next input's first block */
        bk_rows_free(&bk[i], c->n_el);
        bk[i].eh = NULL;
    }
    free(suffix);
    p1in_close(c, &x);
    return rc;
}

/* ---- pass 2: write ----------------------------------------------------------------------------
 */

static int open_dataset(cv *c, ans_zw *w, uint64_t d, uint64_t n)
{
    char p[512];
    int rc;
#define P(x) (snprintf(p, sizeof p, "dataset_%llu/%s", (unsigned long long)d, (x)), p)
    snprintf(p, sizeof p, "dataset_%llu", (unsigned long long)d);
    if ((rc = ans_adw_anndata(w, p))) return rc;
    uint64_t nv = c->var.n;
    for (size_t k = 0; k < c->n_el; k++) {
        cv_elem *e = &c->el[k];
        e->indptr.len = e->ind.len = e->data.len = 0;
        if (strncmp(e->key, "layers/", 7) != 0 && strncmp(e->key, "obsm/", 5) != 0 &&
            strcmp(e->key, "X") != 0)
            return ans_err(ANS_EINVAL, "ans_convert: element '%s' cannot be written", e->key);
        if (e->var_aligned && !e->out_dense) {
            rc = ans_adw_csr_begin(w, P(e->key), n, nv, e->ds_nnz[d], e->dtype, &c->aopts, &e->csr);
            if (rc == ANS_OK) {
                e->idx_t = ans_adw_csr_index_dtype(e->csr);
                e->isz = ans_dtype_size(e->idx_t);
            }
        } else if (e->var_aligned) {
            uint64_t shape[2] = {n, nv};
            rc = ans_adw_dense_begin(w, P(e->key), e->dtype, 2, shape, &c->aopts, &e->zwa);
        } else {
            uint64_t shape[ANS_ZW_MAX_NDIM];
            shape[0] = n;
            for (int q = 1; q < e->ndim; q++)
                shape[q] = e->tail[q];
            rc = ans_adw_dense_begin(w, P(e->key), e->dtype, e->ndim, shape, &c->aopts, &e->zwa);
        }
        if (rc) return rc;
    }
    return ANS_OK;
#undef P
    return rc;
}

typedef struct slice_ctx {
    ans_zwa *index;      /* obs/_index, streamed */
    ans_buf ioff, idata; /* obs names of the slice: offsets (u64) and bytes */
} slice_ctx;

/* Start the obs frame of dataset d: the group, the streamed index and NUM / STR columns. */
static int begin_obs(cv *c, ans_zw *w, uint64_t d, uint64_t n, slice_ctx *x)
{
    char p[600];
    const char **names = ans_calloc(c->n_cols + 1, sizeof *names);
    if (!names) return ANS_ENOMEM;
    for (size_t k = 0; k < c->n_cols; k++)
        names[k] = c->cols[k].name;
    snprintf(p, sizeof p, "dataset_%llu/obs", (unsigned long long)d);
    int rc = ans_adw_frame(w, p, NULL, names, c->n_cols);
    free(names);
    snprintf(p, sizeof p, "dataset_%llu/obs/_index", (unsigned long long)d);
    if (rc == ANS_OK) rc = ans_adw_column_begin(w, p, ANS_DTYPE_STRING, n, &c->aopts, &x->index);
    for (size_t k = 0; k < c->n_cols && rc == ANS_OK; k++) {
        cv_col *col = &c->cols[k];
        snprintf(p, sizeof p, "dataset_%llu/obs/%s", (unsigned long long)d, col->name);
        if (col->kind == OC_NUM)
            rc = ans_adw_column_begin(w, p, col->dtype, n, &c->aopts, &col->zwa);
        else if (col->kind == OC_STR)
            rc = ans_adw_column_begin(w, p, ANS_DTYPE_STRING, n, &c->aopts, &col->zwa);
    }
    return rc;
}

static int close_zwa(ans_zwa **a, int rc)
{
    if (*a) {
        int r2 = rc == ANS_OK ? ans_zwa_close(*a) : (ans_zwa_abort(*a), ANS_OK);
        if (rc == ANS_OK) rc = r2;
        *a = NULL;
    }
    return rc;
}

/* Finish obs (close the streamed arrays, write the categorical and nullable columns) and write
 * var. Called after the matrices are closed, and each column is finished in turn, so that the
 * consolidated metadata (nodes in the order they are finished) lists the children of each group
 * contiguously per depth, which zarr-python's reader of consolidated metadata requires. Always
 * closes or aborts every streamed array. */
static int finish_frames(cv *c, ans_zw *w, uint64_t d, uint64_t n, slice_ctx *x, int rc)
{
    char p[600];
    rc = close_zwa(&x->index, rc);
    for (size_t k = 0; k < c->n_cols; k++) {
        cv_col *col = &c->cols[k];
        rc = close_zwa(&col->zwa, rc);
        if (rc != ANS_OK || col->kind == OC_NUM || col->kind == OC_STR) continue;
        snprintf(p, sizeof p, "dataset_%llu/obs/%s", (unsigned long long)d, col->name);
        if (col->kind == OC_CAT) {
            uint64_t *off = NULL;
            char *data = NULL;
            if ((rc = strmap_strings(&col->cats, &off, &data))) continue;
            rc = ans_adw_categorical(w, p, n, col->vals.data, ANS_DTYPE_INT32, col->cats.n, off,
                                     data, col->ordered, &c->aopts);
            free(off);
            free(data);
        } else {
            rc = ans_adw_nullable(w, p, col->dtype, n, col->vals.data, col->mask.data, &c->aopts);
        }
    }
    snprintf(p, sizeof p, "dataset_%llu/var", (unsigned long long)d);
    if (rc == ANS_OK) rc = ans_adw_frame(w, p, NULL, NULL, 0);
    if (rc == ANS_OK) {
        uint64_t *off = NULL;
        char *data = NULL;
        if ((rc = strmap_strings(&c->var, &off, &data))) return rc;
        snprintf(p, sizeof p, "dataset_%llu/var/_index", (unsigned long long)d);
        rc = ans_adw_strings(w, p, c->var.n, off, data, &c->aopts);
        free(off);
        free(data);
    }
    return rc;
}

/* LEB128 column deltas at [p, ie) -> nk columns (each < nv) as unsigned integers of isz bytes.
 * The columns only grow, so the last one alone is checked against nv; runs of 8 one-byte deltas
 * (the usual case: a gene every few dozen) are taken 8 at a time. */
static int dec_cols(const uint8_t *p, const uint8_t *ie, uint32_t nk, uint64_t nv, void *out,
                    size_t isz)
{
#define DEC_COLS(T)                                                                                \
    do {                                                                                           \
        T *o = out;                                                                                \
        uint32_t q = 0;                                                                            \
        while (q < nk) {                                                                           \
            if (nk - q >= 8 && ie - p >= 8) {                                                      \
                uint64_t w8;                                                                       \
                memcpy(&w8, p, 8);                                                                 \
                if (!(w8 & 0x8080808080808080ULL)) {                                               \
                    for (int b8 = 0; b8 < 8; b8++) {                                               \
                        colv += p[b8];                                                             \
                        o[q + (uint32_t)b8] = (T)colv;                                             \
                    }                                                                              \
                    p += 8;                                                                        \
                    q += 8;                                                                        \
                    if (colv >= nv) goto bad;                                                      \
                    continue;                                                                      \
                }                                                                                  \
            }                                                                                      \
            if (p >= ie) goto bad;                                                                 \
            uint64_t b = *p++;                                                                     \
            if (b & 0x80) {                                                                        \
                uint64_t dlt = b & 0x7f;                                                           \
                int sh = 7;                                                                        \
                for (;;) {                                                                         \
                    if (p >= ie || sh > 28) goto bad;                                              \
                    b = *p++;                                                                      \
                    dlt |= (b & 0x7f) << sh;                                                       \
                    if (!(b & 0x80)) break;                                                        \
                    sh += 7;                                                                       \
                }                                                                                  \
                b = dlt;                                                                           \
            }                                                                                      \
            colv += b;                                                                             \
            if (colv >= nv) goto bad;                                                              \
            o[q++] = (T)colv;                                                                      \
        }                                                                                          \
    } while (0)
    uint64_t colv = 0;
    switch (isz) {
    case 1:
        DEC_COLS(uint8_t);
        break;
    case 2:
        DEC_COLS(uint16_t);
        break;
    case 4:
        DEC_COLS(uint32_t);
        break;
    default:
        DEC_COLS(uint64_t);
        break;
    }
#undef DEC_COLS
    if (p != ie) goto bad;
    return ANS_OK;
bad:
    return ans_err(ANS_ECORRUPT, "a run file record is damaged");
}

/* The header of a var-aligned element row at p (record end rend), checked: its value count, value
 * width, column bytes, and where the next element row starts. */
static int elem_header(const uint8_t *p, const uint8_t *rend, const cv_elem *e, uint64_t nv,
                       uint32_t *nk, int *width, uint32_t *ibytes, const uint8_t **next)
{
    if (rend - p < 9) return ans_err(ANS_ECORRUPT, "a run file record is damaged");
    memcpy(nk, p, 4);
    *width = p[4];
    memcpy(ibytes, p + 5, 4);
    size_t avail = (size_t)(rend - p) - 9;
    uint32_t nexc = 0;
    if (*nk > nv || *width > 3 || *ibytes > avail)
        return ans_err(ANS_ECORRUPT, "a run file record is damaged");
    if (*width == 3) {
        if (avail - *ibytes < 4) return ans_err(ANS_ECORRUPT, "a run file record is damaged");
        memcpy(&nexc, p + 9 + *ibytes, 4);
        if (nexc > *nk) return ans_err(ANS_ECORRUPT, "a run file record is damaged");
    }
    size_t vbytes = vals_bytes(*width, *nk, nexc, ans_dtype_size(e->dtype));
    if (vbytes > avail - *ibytes) return ans_err(ANS_ECORRUPT, "a run file record is damaged");
    *next = p + 9 + *ibytes + vbytes;
    return ANS_OK;
}

/* Pass 2 decodes a batch of records in two steps: a serial scan takes the obs values and notes
 * where each element row starts and how many values it has (their running sums are the CSR
 * indptr); the element rows are then decoded in parallel on the pool, each straight into its
 * place in the element's buffers (indices already in the type the writer stores). */
typedef struct emit_job {
    cv *c;
    const uint8_t *const *ep; /* element row k of record i: ep[i * n_el + k] */
    uint64_t n, per;
} emit_job;

static int emit_job_fn(void *ctx, size_t jn, int slot)
{
    emit_job *j = ctx;
    cv *c = j->c;
    uint64_t nv = c->var.n, a = (uint64_t)jn * j->per, z = a + j->per < j->n ? a + j->per : j->n;
    int rc = ANS_OK;
    for (uint64_t i = a; i < z && rc == ANS_OK; i++) {
        for (size_t k = 0; k < c->n_el && rc == ANS_OK; k++) {
            cv_elem *e = &c->el[k];
            const uint8_t *p = j->ep[i * c->n_el + k];
            if (!e->var_aligned) {
                memcpy(e->data.data + i * e->row_bytes, p, e->row_bytes);
                continue;
            }
            size_t osz = ans_dtype_size(e->dtype);
            uint32_t nk, ibytes;
            memcpy(&nk, p, 4);
            int width = p[4];
            memcpy(&ibytes, p + 5, 4);
            const uint8_t *cols = p + 9, *vals = cols + ibytes;
            if (!e->out_dense) {
                uint64_t off = (uint64_t)((const int64_t *)(const void *)e->indptr.data)[i];
                if ((rc = dec_cols(cols, vals, nk, nv, e->ind.data + off * e->isz, e->isz)))
                    break;
                if ((rc = vals_to(e->data.data + off * osz, e->dtype, osz, vals, width, nk)))
                    break;
            } else {
                uint8_t *row = e->data.data + i * nv * osz;
                memset(row, 0, (size_t)nv * osz);
                uint32_t *ip = (uint32_t *)(void *)c->dsc[2 * slot].data;
                uint8_t *vp = c->dsc[2 * slot + 1].data;
                if ((rc = dec_cols(cols, vals, nk, nv, ip, 4))) break;
                if ((rc = vals_to(vp, e->dtype, osz, vals, width, nk))) break;
                for (uint32_t q = 0; q < nk; q++)
                    memcpy(row + (size_t)ip[q] * osz, vp + (size_t)q * osz, osz);
            }
        }
    }
    return rc;
}

/* Append the records (in order) to the open writers. */
static int emit(cv *c, slice_ctx *x, uint8_t *const *recs, uint64_t n)
{
    int rc = ANS_OK;
    uint64_t zero = 0;
    x->ioff.len = x->idata.len = 0;
    PUT(&x->ioff, &zero, 8);
    for (size_t k = 0; k < c->n_cols; k++) {
        cv_col *col = &c->cols[k];
        if (col->kind == OC_NUM) col->vals.len = 0;
        if (col->kind == OC_STR) {
            col->vals.len = col->sdata.len = 0;
            PUT(&col->vals, &zero, 8);
        }
    }
    for (size_t k = 0; k < c->n_el; k++) {
        cv_elem *e = &c->el[k];
        e->indptr.len = e->ind.len = e->data.len = 0;
        PUT(&e->indptr, &zero, 8);
    }
    if ((rc = ans_buf_resize(&c->epb, (size_t)n * c->n_el * sizeof(uint8_t *) + 8))) goto out;
    const uint8_t **ep = (const uint8_t **)(void *)c->epb.data;
    uint64_t nv = c->var.n;
    uint32_t maxnk = 0;
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *p = recs[i] + 16;
        uint64_t rlen;
        memcpy(&rlen, recs[i] + 8, 8);
        const uint8_t *rend = recs[i] + rlen;
        uint32_t len;
        memcpy(&len, p, 4);
        PUT(&x->idata, p + 4, len);
        uint64_t end = x->idata.len;
        PUT(&x->ioff, &end, 8);
        p += 4 + len;
        for (size_t k = 0; k < c->n_cols; k++) {
            cv_col *col = &c->cols[k];
            if (col->kind == OC_CAT) {
                int32_t code;
                memcpy(&code, p, 4);
                p += 4;
                PUT(&col->vals, &code, 4);
            } else if (col->kind == OC_STR) {
                memcpy(&len, p, 4);
                PUT(&col->sdata, p + 4, len);
                p += 4 + len;
                uint64_t e2 = col->sdata.len;
                PUT(&col->vals, &e2, 8);
            } else {
                size_t sz = ans_dtype_size(col->dtype);
                PUT(&col->vals, p, sz);
                p += sz;
                if (col->kind != OC_NUM) {
                    PUT(&col->mask, p, 1);
                    p++;
                }
            }
        }
        for (size_t k = 0; k < c->n_el; k++) {
            cv_elem *e = &c->el[k];
            ep[i * c->n_el + k] = p;
            if (!e->var_aligned) {
                if ((size_t)(rend - p) < e->row_bytes) {
                    rc = ans_err(ANS_ECORRUPT, "a run file record is damaged");
                    goto out;
                }
                p += e->row_bytes;
                continue;
            }
            uint32_t nk = 0, ibytes = 0;
            int width = 0;
            if ((rc = elem_header(p, rend, e, nv, &nk, &width, &ibytes, &p))) goto out;
            if (nk > maxnk) maxnk = nk;
            if (!e->out_dense) {
                int64_t last;
                memcpy(&last, e->indptr.data + e->indptr.len - 8, 8);
                last += nk;
                PUT(&e->indptr, &last, 8);
            }
        }
    }
    /* room for the decoded rows, then decode them in parallel */
    for (size_t k = 0; k < c->n_el; k++) {
        cv_elem *e = &c->el[k];
        size_t osz = ans_dtype_size(e->dtype);
        if (!e->var_aligned) {
            rc = ans_buf_resize(&e->data, (size_t)n * e->row_bytes);
        } else if (e->out_dense) {
            rc = ans_buf_resize(&e->data, (size_t)n * (size_t)nv * osz);
        } else {
            int64_t tot;
            memcpy(&tot, e->indptr.data + e->indptr.len - 8, 8);
            rc = ans_buf_resize(&e->ind, (size_t)tot * e->isz + 8);
            if (rc == ANS_OK) rc = ans_buf_resize(&e->data, (size_t)tot * osz + 8);
        }
        if (rc) goto out;
        for (int q = 0; e->out_dense && e->var_aligned && q < c->n_dsc; q++) {
            size_t need = (size_t)maxnk * (q % 2 ? osz : 4) + 8;
            if ((rc = ans_buf_reserve(&c->dsc[q], need))) goto out;
        }
    }
    if (n) {
        uint64_t parts = (uint64_t)ans_pool_size(c->pool) * 4;
        uint64_t per = (n + parts - 1) / parts;
        if (per < 16) per = 16;
        emit_job job = {c, ep, n, per};
        if ((rc = ans_pool_for(c->pool, (size_t)((n + per - 1) / per), emit_job_fn, &job)))
            goto out;
    }
    if (n == 0) goto out;
    if ((rc = ans_zwa_append_strings(x->index, (const uint64_t *)x->ioff.data,
                                     (const char *)x->idata.data, n)))
        goto out;
    for (size_t k = 0; k < c->n_cols; k++) {
        cv_col *col = &c->cols[k];
        if (col->kind == OC_NUM)
            rc = ans_zwa_append(col->zwa, col->vals.data, n);
        else if (col->kind == OC_STR)
            rc = ans_zwa_append_strings(col->zwa, (const uint64_t *)col->vals.data,
                                        (const char *)col->sdata.data, n);
        if (rc) goto out;
    }
    for (size_t k = 0; k < c->n_el; k++) {
        cv_elem *e = &c->el[k];
        if (e->csr)
            rc = ans_adw_csr_append_checked(e->csr, n, (const int64_t *)e->indptr.data,
                                            e->ind.data, e->data.data); /* (dec_cols checked) */
        else
            rc = ans_zwa_append(e->zwa, e->data.data, n);
        if (rc) goto out;
    }
    c->done2 += n;
    rc = cv_progress(c);
out:
    return rc;
}

/* The first `len` bytes of the run file `path` into b (a missing file reads as empty). */
static int read_whole(const char *path, abuf *b, uint64_t len)
{
    b->len = 0;
    int fd = open_direct(path, O_RDONLY);
    if (fd < 0) {
        if (errno == ENOENT) return ANS_OK;
        return ans_err(ANS_EIO, "cannot open '%s': %s", path, strerror(errno));
    }
    struct stat stt;
    int rc = ANS_OK;
    if (fstat(fd, &stt) != 0)
        rc = ans_err(ANS_EIO, "cannot stat '%s': %s", path, strerror(errno));
    uint64_t want = rc == ANS_OK && (uint64_t)stt.st_size < len ? (uint64_t)stt.st_size : len;
    uint64_t span = (want + ALIGN - 1) / ALIGN * ALIGN; /* direct reads: whole blocks */
    if (rc == ANS_OK && span > SIZE_MAX) rc = ans_err(ANS_ENOMEM, "run file '%s' too large", path);
    if (rc == ANS_OK) rc = abuf_reserve(b, (size_t)span);
    uint64_t got = 0;
    while (rc == ANS_OK && got < want) {
        ssize_t r = pread(fd, b->p + got, (size_t)(span - got), (off_t)got);
        if (r < 0 && errno == EINTR) continue;
#ifdef O_DIRECT
        if (r < 0 && errno == EINVAL) {
            int fl = fcntl(fd, F_GETFL);
            if (fl >= 0 && (fl & O_DIRECT) && fcntl(fd, F_SETFL, fl & ~O_DIRECT) == 0) continue;
        }
#endif
        if (r <= 0) {
            rc = ans_err(ANS_EIO, "reading '%s' failed: %s", path, r < 0 ? strerror(errno) : "EOF");
            break;
        }
        got += (uint64_t)r;
    }
    close(fd);
    if (rc == ANS_OK) b->len = (size_t)want;
    return rc;
}

static uint64_t file_size(const char *path)
{
    struct stat stt;
    return stat(path, &stt) == 0 ? (uint64_t)stt.st_size : 0;
}

/* Process the run file `path` holding exactly the positions [lo, hi): load it when it fits
 * c->budget / 4, else split it by position into parts (streaming) and recurse. */
static int process_run(cv *c, slice_ctx *x, const char *path, uint64_t lo, uint64_t hi, abuf *b,
                       int depth, uint64_t len, int loaded)
{
    int rc = ANS_OK;
    uint64_t cap = c->budget / 4, sz = loaded ? b->len : file_size(path);
    if (len != UINT64_MAX && len < sz) sz = len; /* the rest is padding */
    if (!loaded && hi - lo > 1 && sz > cap && depth < 32) {
        uint64_t parts = sz / cap + 1;
        if (parts < 2) parts = 2;
        if (parts > 64) parts = 64;
        if (parts > hi - lo) parts = hi - lo;
        size_t plen = strlen(path) + 32;
        FILE *in = fopen(path, "rb");
        if (!in) return ans_err(ANS_EIO, "cannot open '%s': %s", path, strerror(errno));
        char *sub = ans_malloc(plen);
        FILE **outs = ans_calloc(parts, sizeof *outs);
        ans_buf r = {0};
        if (!sub || !outs) rc = ANS_ENOMEM;
        for (uint64_t q = 0; rc == ANS_OK && q < parts; q++) {
            snprintf(sub, plen, "%s.%llu", path, (unsigned long long)q);
            if (!(outs[q] = fopen(sub, "wb")))
                rc = ans_err(ANS_EIO, "cannot create '%s': %s", sub, strerror(errno));
        }
        uint64_t span = hi - lo;
        for (uint64_t done = 0; rc == ANS_OK && done < sz;) {
            uint64_t hdr[2];
            size_t got = fread(hdr, 1, sizeof hdr, in);
            if (got != sizeof hdr || hdr[1] < 16 || hdr[0] < lo || hdr[0] >= hi) {
                rc = ans_err(ANS_ECORRUPT, "run file '%s' is damaged", path);
                break;
            }
            if ((rc = ans_buf_resize(&r, (size_t)hdr[1]))) break;
            memcpy(r.data, hdr, 16);
            if (fread(r.data + 16, 1, r.len - 16, in) != r.len - 16) {
                rc = ans_err(ANS_ECORRUPT, "run file '%s' is truncated", path);
                break;
            }
            done += hdr[1];
            /* part q holds [lo + span*q/parts, lo + span*(q+1)/parts) */
            uint64_t rel = hdr[0] - lo;
            uint64_t q = (uint64_t)(((unsigned __int128)rel * parts) / span);
            while (q + 1 < parts &&
                   lo + (uint64_t)(((unsigned __int128)span * (q + 1)) / parts) <= hdr[0])
                q++;
            while (q > 0 && lo + (uint64_t)(((unsigned __int128)span * q) / parts) > hdr[0])
                q--;
            if (fwrite(r.data, 1, r.len, outs[q]) != r.len)
                rc = ans_err(ANS_EIO, "writing a run file failed: %s", strerror(errno));
        }
        fclose(in);
        for (uint64_t q = 0; outs && q < parts; q++)
            if (outs[q] && fclose(outs[q]) != 0 && rc == ANS_OK)
                rc = ans_err(ANS_EIO, "writing a run file failed: %s", strerror(errno));
        ans_buf_free(&r);
        free(outs);
        if (rc == ANS_OK) remove(path);
        for (uint64_t q = 0; rc == ANS_OK && q < parts; q++) {
            snprintf(sub, plen, "%s.%llu", path, (unsigned long long)q);
            uint64_t a = lo + (uint64_t)(((unsigned __int128)span * q) / parts);
            uint64_t z = lo + (uint64_t)(((unsigned __int128)span * (q + 1)) / parts);
            rc = process_run(c, x, sub, a, z, b, depth + 1, UINT64_MAX, 0);
        }
        free(sub);
        return rc;
    }
    if (!loaded && (rc = read_whole(path, b, sz))) return rc;
    uint64_t n = hi - lo;
    uint8_t **recs = ans_calloc(n + 1, sizeof *recs);
    if (!recs) return ANS_ENOMEM;
    size_t at = 0;
    while (rc == ANS_OK && at < b->len) {
        uint64_t hdr[2];
        if (b->len - at < 16) {
            rc = ans_err(ANS_ECORRUPT, "run file '%s' is truncated", path);
            break;
        }
        memcpy(hdr, b->p + at, 16);
        if (hdr[1] < 16 || hdr[1] > b->len - at || hdr[0] < lo || hdr[0] >= hi ||
            recs[hdr[0] - lo]) {
            rc = ans_err(ANS_ECORRUPT, "run file '%s' is damaged", path);
            break;
        }
        recs[hdr[0] - lo] = b->p + at;
        at += (size_t)hdr[1];
    }
    for (uint64_t i = 0; rc == ANS_OK && i < n; i++)
        if (!recs[i])
            rc = ans_err(ANS_ECORRUPT, "run file '%s' lacks position %llu", path,
                         (unsigned long long)(lo + i));
    for (uint64_t i = 0; rc == ANS_OK && i < n; i += c->emit_rows)
        rc = emit(c, x, recs + i, n - i < c->emit_rows ? n - i : c->emit_rows);
    free(recs);
    remove(path);
    return rc;
}

static int close_elem(cv_elem *e, int rc)
{
    if (e->csr) {
        int r2 = rc == ANS_OK ? ans_adw_csr_close(e->csr) : (ans_adw_csr_abort(e->csr), ANS_OK);
        if (rc == ANS_OK) rc = r2;
        e->csr = NULL;
    }
    if (e->zwa) {
        int r2 = rc == ANS_OK ? ans_zwa_close(e->zwa) : (ans_zwa_abort(e->zwa), ANS_OK);
        if (rc == ANS_OK) rc = r2;
        e->zwa = NULL;
    }
    return rc;
}

/* Pass 2 reads the next slice's run file on a thread while the current one is written. */
typedef struct prefetch {
    char path[4096];
    uint64_t sid, len;
    abuf buf;
    int running, rc;
    pthread_t th;
    char msg[1024];
} prefetch;

static void *prefetch_thread(void *arg)
{
    prefetch *p = arg;
    p->rc = read_whole(p->path, &p->buf, p->len);
    if (p->rc) snprintf(p->msg, sizeof p->msg, "%s", ans_error_last());
    return NULL;
}

/* Start reading slice sid (if it exists and will not need splitting). */
static void prefetch_start(cv *c, prefetch *p, uint64_t sid)
{
    if (p->running || sid >= c->n_ds * c->kpd || c->slen[sid] > c->budget / 4) return;
    p->sid = sid;
    p->len = c->slen[sid];
    slice_path(c, sid, p->path, sizeof p->path);
    if (pthread_create(&p->th, NULL, prefetch_thread, p) == 0) p->running = 1;
}

/* Wait for the prefetch; 1 when it holds slice sid (then b and its buffer are swapped). */
static int prefetch_take(prefetch *p, uint64_t sid, abuf *b, int *rc)
{
    *rc = ANS_OK;
    if (!p->running || p->sid != sid) return 0;
    pthread_join(p->th, NULL);
    p->running = 0;
    if (p->rc) {
        *rc = ans_err(p->rc, "%s", p->msg);
        return 0;
    }
    abuf t = *b;
    *b = p->buf;
    p->buf = t;
    return 1;
}

static void prefetch_stop(prefetch *p)
{
    if (p->running) pthread_join(p->th, NULL);
    p->running = 0;
    abuf_free(&p->buf);
}

static int write_dataset(cv *c, ans_zw *w, uint64_t d, abuf *b, prefetch *pf)
{
    uint64_t lo = d * c->S, hi = lo + c->S < c->n_total ? lo + c->S : c->n_total, n = hi - lo;
    slice_ctx x = {0};
    for (size_t k = 0; k < c->n_cols; k++) {
        cv_col *col = &c->cols[k];
        col->vals.len = col->mask.len = col->sdata.len = 0;
    }
    int rc = open_dataset(c, w, d, n);
    if (rc == ANS_OK) rc = begin_obs(c, w, d, n, &x);
    char path[4096];
    for (uint64_t j = 0; j < c->kpd && rc == ANS_OK; j++) {
        uint64_t a, z;
        slice_range(c, d * c->kpd + j, &a, &z);
        if (a == z) continue;
        uint64_t sid = d * c->kpd + j;
        slice_path(c, sid, path, sizeof path);
        int loaded = prefetch_take(pf, sid, b, &rc);
        if (rc) break;
        prefetch_start(c, pf, sid + 1);
        rc = process_run(c, &x, path, a, z, b, 0, c->slen[sid], loaded);
    }
    /* close the matrices (abort after a failure): layers, X, obsm; then obs and var */
    for (size_t k = 1; k < c->n_el; k++)
        if (c->el[k].var_aligned) rc = close_elem(&c->el[k], rc);
    if (c->n_el) rc = close_elem(&c->el[0], rc);
    for (size_t k = 1; k < c->n_el; k++)
        if (!c->el[k].var_aligned) rc = close_elem(&c->el[k], rc);
    rc = finish_frames(c, w, d, n, &x, rc);
    ans_buf_free(&x.ioff);
    ans_buf_free(&x.idata);
    for (size_t k = 0; k < c->n_cols; k++) {
        cv_col *col = &c->cols[k];
        col->vals.len = col->mask.len = col->sdata.len = 0;
    }
    return rc;
}

/* ---- driver -----------------------------------------------------------------------------------
 */

static void cv_free(cv *c)
{
    for (size_t s = 0; s < c->n_in; s++) {
        ans_store_free(c->in[s].st);
        free(c->in[s].vmap);
        free(c->in[s].path);
    }
    free(c->in);
    for (size_t k = 0; k < c->n_cols; k++) {
        cv_col *col = &c->cols[k];
        free(col->name);
        for (size_t s = 0; col->cmap && s < c->n_in; s++)
            free(col->cmap[s]);
        free(col->cmap);
        free(col->ncmap);
        strmap_free(&col->cats);
        ans_buf_free(&col->vals);
        ans_buf_free(&col->mask);
        ans_buf_free(&col->sdata);
    }
    free(c->cols);
    for (size_t k = 0; k < c->n_el; k++) {
        free(c->el[k].ds_nnz);
        ans_buf_free(&c->el[k].indptr);
        ans_buf_free(&c->el[k].ind);
        ans_buf_free(&c->el[k].data);
    }
    free(c->el);
    ans_buf_free(&c->epb);
    for (int q = 0; q < c->n_dsc; q++)
        ans_buf_free(&c->dsc[q]);
    free(c->dsc);
    free(c->slen);
    strmap_free(&c->var);
    free(c->table);
    free(c->names.slots);
    if (c->runs) {
        rm_rf(c->runs);
        free(c->runs);
    }
    ans_pool_free(c->pool);
}

static int add_input(cv *c, const char *path, int threads)
{
    cv_input *ni = ans_realloc(c->in, (c->n_in + 1) * sizeof *ni);
    if (!ni) return ANS_ENOMEM;
    c->in = ni;
    cv_input *in = &c->in[c->n_in++];
    memset(in, 0, sizeof *in);
    if (!(in->path = ans_strdup(path))) return ANS_ENOMEM;
    ans_store_options so = ANS_STORE_OPTIONS_INIT;
    so.threads = 1; /* metadata only; pass 1 reopens the input it reads with `threads` */
    (void)threads;
    int rc = ans_store_open(&in->st, path, &so);
    if (rc != ANS_OK) return rc;
    in->n_obs = ans_store_n_obs(in->st);
    in->n_vars = ans_store_n_vars(in->st);
    if (in->n_obs > 0) {
        /* Read X's last row first (CSR: its indptr's two ends): a shape the file cannot back
         * (an indptr that does not end at the stored values) fails here with a FormatError,
         * before obs and var are read at the claimed length. Not for CSC, where one row is a
         * pass over the whole matrix. */
        ans_element *x = NULL;
        rc = ans_store_element(&x, in->st, "X");
        if (rc == ANS_OK && ans_element_format(x) == ANS_FORMAT_CSC) {
            ans_element_free(x);
        } else if (rc == ANS_OK) {
            ans_rows *last = NULL;
            rc = ans_element_read_range(x, in->n_obs - 1, in->n_obs, &last);
            ans_rows_free(last);
            ans_element_free(x);
            if (rc != ANS_OK) return rc;
        } else if (rc != ANS_ENOTFOUND) {
            return rc;
        }
    }
    in->offset = c->n_total;
    if (ans_add_overflow(c->n_total, in->n_obs, &c->n_total))
        return ans_err(ANS_EINVAL, "ans_convert: too many rows");
    return ANS_OK;
}

static int path_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static int run_convert(cv *c, const char *const *inputs, size_t n_inputs, const char *output)
{
    const ans_convert_options *o = c->o;
    int rc = ANS_OK;
    int exists = path_exists(output);
    if (exists && !o->overwrite && !o->append)
        return ans_err(ANS_EINVAL, "%s: the output exists (pass overwrite or append)", output);
    if (o->append && exists) {
        char *p0 = NULL;
        for (uint64_t d = 0;; d++) {
            free(p0);
            if (!(p0 = ans_asprintf("%s/dataset_%llu", output, (unsigned long long)d)))
                return ANS_ENOMEM;
            if (!path_exists(p0)) break;
            if ((rc = add_input(c, p0, o->threads))) {
                free(p0);
                return rc;
            }
        }
        free(p0);
    }
    for (size_t i = 0; i < n_inputs; i++) {
        if (!inputs[i]) return ans_err(ANS_EINVAL, "ans_convert: input %zu is NULL", i);
        if ((rc = add_input(c, inputs[i], o->threads))) return rc;
    }
    if (!c->n_in) return ans_err(ANS_EINVAL, "ans_convert: no inputs");
    if ((rc = build_var(c))) return rc;
    if ((rc = build_obs(c))) return rc;
    /* elements (the dataset count is not known yet: ds_nnz is sized after) */
    c->n_ds = 0; /* ds_nnz is sized again once the dataset count is known */
    if ((rc = add_elem(c, "X", 1))) return rc;
    char key[300];
    for (size_t i = 0; i < o->n_layers; i++) {
        if (!o->layers || !o->layers[i])
            return ans_err(ANS_EINVAL, "ans_convert: layer %zu is NULL", i);
        snprintf(key, sizeof key, "layers/%s", o->layers[i]);
        if ((rc = add_elem(c, key, 1))) return rc;
    }
    for (size_t i = 0; i < o->n_obsm; i++) {
        if (!o->obsm || !o->obsm[i]) return ans_err(ANS_EINVAL, "ans_convert: obsm %zu is NULL", i);
        snprintf(key, sizeof key, "obsm/%s", o->obsm[i]);
        if ((rc = add_elem(c, key, 0))) return rc;
    }
    double rb, rbc;
    if ((rc = estimate_row_bytes(c, &rb, &rbc))) return rc;
    if (o->dataset_size_rows) {
        c->S = o->dataset_size_rows;
    } else {
        double s = (double)o->dataset_size_bytes / rb;
        c->S = s < 1 ? 1 : (uint64_t)s;
    }
    c->n_ds = c->n_total ? (c->n_total + c->S - 1) / c->S : 0;
    for (size_t k = 0; k < c->n_el; k++) {
        if (!c->el[k].var_aligned) continue;
        free(c->el[k].ds_nnz);
        if (!(c->el[k].ds_nnz = ans_calloc(c->n_ds + 1, 8))) return ANS_ENOMEM;
    }
    if ((rc = build_perm(c))) return rc;
    if ((rc = apply_groupby(c))) return rc;
    /* obs names: the hash set, or the suffix fallback */
    if ((uint64_t)c->n_total * 32 > c->budget / 8) {
        c->names_fallback = 1;
        for (size_t s = 1; s < c->n_in; s++)
            c->in[s].suffix_all = 1;
    }


    /* run directory */
    c->runs = ans_asprintf("%s.runs-XXXXXX", output);
    if (!c->runs) return ANS_ENOMEM;
    if (!mkdtemp(c->runs)) {
        rc = ans_err(ANS_EIO, "%s: cannot create the run directory '%s': %s", output, c->runs,
                     strerror(errno));
        free(c->runs);
        c->runs = NULL;
        return rc;
    }
    /* run slices: a slice's run file should fit pass 2's budget / 4 (with a margin for the
     * estimate; a larger file is split again in pass 2) */
    {
        double r = (double)(c->budget / 8) * 0.75 / rbc; /* two in memory: prefetch */
        c->R = r < 1 ? 1 : r > (double)c->S ? c->S : (uint64_t)r;
        c->kpd = (c->S + c->R - 1) / c->R;
        if (c->n_ds * c->kpd > 4096) {
            c->kpd = 4096 / (c->n_ds ? c->n_ds : 1);
            if (c->kpd < 1) c->kpd = 1;
            c->R = (c->S + c->kpd - 1) / c->kpd;
        }
        double er = (double)(c->budget / 16) / rb;
        c->emit_rows = er < 64 ? 64 : er > 1048576 ? 1048576 : (uint64_t)er;
    }
    uint64_t n_slices = c->n_ds * c->kpd;
    /* pass 1 */
    scatter sc = {0};
    sc.bufs = ans_calloc(n_slices + 1, sizeof *sc.bufs);
    sc.off = ans_calloc(n_slices + 1, sizeof *sc.off);
    c->slen = ans_calloc(n_slices + 1, sizeof *c->slen);
    if (!sc.bufs || !sc.off || !c->slen) {
        free(sc.bufs);
        free(sc.off);
        return ANS_ENOMEM;
    }
    uint64_t per = c->budget / 4 / (n_slices ? n_slices : 1);
    sc.cap = (size_t)(per < 2 * ALIGN ? 2 * ALIGN : per);
    double bl = (double)(c->budget / 8) / rb; /* two blocks: one read, one encoded */
    uint64_t block = bl < 1 ? 1 : bl > 1048576 ? 1048576 : (uint64_t)bl;
    p1bufs pb;
    rc = p1bufs_init(c, &pb);
    for (size_t s = 0; s < c->n_in && rc == ANS_OK; s++) {
        int pf = prefetch_file(c->in[s].path);
        rc = scatter_input(c, s, &sc, block, &pb);
        if (pf) release_file(c->in[s].path);
        /* names of input s are in the set now; the next input's duplicates get the suffix */
    }
    p1bufs_free(&pb, c);
    for (uint64_t i = 0; i < n_slices && rc == ANS_OK; i++)
        rc = flush_slice(c, &sc, i, 1);
    for (uint64_t i = 0; i < n_slices; i++)
        abuf_free(&sc.bufs[i]);
    free(sc.bufs);
    free(sc.off);
    free(c->names.slots);
    c->names.slots = NULL;
    c->names.n = c->names.nslots = 0;
    if (rc) return rc;

    /* pass 2: into `output`, or a staging sibling replacing it at the end */
    char *root = NULL;
    if (exists) {
        root = ans_asprintf("%s.staged-%ld", output, (long)getpid());
        if (!root) return ANS_ENOMEM;
        if (path_exists(root)) rm_rf(root);
    }
    ans_zw *w = NULL;
    if ((rc = ans_zw_create(&w, root ? root : output, c->pool))) {
        free(root);
        return rc;
    }
    rc = ans_adw_collection(w);
    abuf b = {0};
    prefetch *pf = ans_calloc(1, sizeof *pf);
    if (!pf) rc = ANS_ENOMEM;
    c->n_dsc = 2 * ans_pool_size(c->pool);
    if (!(c->dsc = ans_calloc((size_t)c->n_dsc, sizeof *c->dsc))) {
        c->n_dsc = 0;
        rc = ANS_ENOMEM;
    }
    for (uint64_t d = 0; d < c->n_ds && rc == ANS_OK; d++)
        rc = write_dataset(c, w, d, &b, pf);
    if (pf) prefetch_stop(pf);
    free(pf);
    abuf_free(&b);
    if (rc == ANS_OK) rc = ans_zw_finish(w);
    ans_zw_free(w);
    if (rc == ANS_OK && root) {
        char *old = ans_asprintf("%s.old-%ld", output, (long)getpid());
        if (!old) rc = ANS_ENOMEM;
        if (rc == ANS_OK && rename(output, old) != 0)
            rc = ans_err(ANS_EIO, "%s: cannot move the old output aside: %s", output,
                         strerror(errno));
        if (rc == ANS_OK && rename(root, output) != 0) {
            rc = ans_err(ANS_EIO, "%s: cannot rename '%s' into place: %s", output, root,
                         strerror(errno));
            (void)rename(old, output);
        }
        if (rc == ANS_OK) rm_rf(old);
        free(old);
    }
    if (rc != ANS_OK && root) rm_rf(root);
    free(root);
    return rc;
}

int ans_convert(const char *const *inputs, size_t n_inputs, const char *output,
                const ans_convert_options *opts)
{
    ans_convert_options def = ANS_CONVERT_OPTIONS_INIT;
    const ans_convert_options *o = opts ? opts : &def;
    if (o->version == 1) {
        /* version 1 ends before `groupby`: copy what it has, the rest keeps its default */
        memcpy(&def, o, offsetof(ans_convert_options, groupby));
        def.version = ANS_CONVERT_OPTIONS_VERSION;
        o = &def;
    }
    if (o->version != ANS_CONVERT_OPTIONS_VERSION)
        return ans_err(ANS_EINVAL, "ans_convert: options version %u (expected %u or 1)",
                       o->version, ANS_CONVERT_OPTIONS_VERSION);
    if (!output || !*output) return ans_err(ANS_EINVAL, "ans_convert: no output path");
    if (!inputs && n_inputs) return ans_err(ANS_EINVAL, "ans_convert: inputs is NULL");
    if (!o->n_obs_per_chunk || !o->shard_size || !o->memory ||
        (!o->dataset_size_rows && !o->dataset_size_bytes) || o->threads < 0)
        return ans_err(ANS_EINVAL, "ans_convert: n_obs_per_chunk, shard_size, memory and the "
                                   "dataset size must be positive, threads >= 0");
    if (o->compressor != ANS_CONVERT_LZ4 && o->compressor != ANS_CONVERT_ZSTD &&
        o->compressor != ANS_CONVERT_NONE)
        return ans_err(ANS_EINVAL, "ans_convert: unknown compressor %d", (int)o->compressor);
    cv c;
    memset(&c, 0, sizeof c);
    c.o = o;
    c.output = output;
    c.budget = o->memory < 65536 ? 65536 : o->memory;
    ans_adw_opts ao = ANS_ADW_OPTS_INIT;
    ao.n_obs_per_chunk = o->n_obs_per_chunk;
    /* Shard buffers live outside the budget's accounting: cap them so the total stays bounded. */
    uint64_t shard_cap = c.budget / 8 < ((uint64_t)1 << 20) ? ((uint64_t)1 << 20) : c.budget / 8;
    ao.shard_size = o->shard_size < shard_cap ? o->shard_size : shard_cap;
    if (o->compressor == ANS_CONVERT_ZSTD) {
        ao.codec.comp = ANS_ZW_COMP_ZSTD;
        ao.codec.clevel = 0;
    } else if (o->compressor == ANS_CONVERT_NONE) {
        ao.codec.comp = ANS_ZW_COMP_NONE;
    }
    c.aopts = ao;
    int threads = o->threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 && n < 1024 ? (int)n : 1;
    }
    /* "out/" -> "out": the temporary siblings are "<output>.runs-XXXXXX" etc. */
    char *out = ans_strdup(output);
    if (!out) return ANS_ENOMEM;
    for (size_t l = strlen(out); l > 1 && out[l - 1] == '/'; l--)
        out[l - 1] = '\0';
    c.output = out;
    int rc = ans_pool_new(&c.pool, threads);
    if (rc == ANS_OK) rc = run_convert(&c, inputs, n_inputs, out);
    cv_free(&c);
    free(out);
    return rc;
}
