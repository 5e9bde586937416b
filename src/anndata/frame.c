/* frame.c - dataframes (obs, var, raw/var): the index and the columns.
 *
 * Column encodings: numeric / bool arrays, string-array, categorical (codes of any integer width,
 * kept as stored; categories strings or numbers; `ordered` bool or int), nullable-integer,
 * nullable-boolean, nullable-string-array (also as the index), and for legacy dataframe 0.1.0 files
 * plain arrays with a "categories" attribute naming the categories array in the frame group.
 * Every column must have as many values as the index (ANS_ECORRUPT otherwise). Columns are read in
 * parallel on the store's pool; each owns its buffers. */
#include "anndata/anndata.h"

#include <stdlib.h>
#include <string.h>

typedef struct fcol {
    ans_column col; /* the view handed out; pointers into the buffers below */
    char *name;
    void *values;
    uint64_t *offsets;
    char *strdata;
    uint8_t *mask;
    void *cat_values;
    uint64_t *cat_offsets;
    char *cat_data;
} fcol;

struct ans_frame {
    uint64_t n_rows;
    size_t n_columns;
    fcol *cols;
    fcol index;
};

static void fcol_clear(fcol *c)
{
    free(c->name);
    free(c->values);
    free(c->offsets);
    free(c->strdata);
    free(c->mask);
    free(c->cat_values);
    free(c->cat_offsets);
    free(c->cat_data);
    memset(c, 0, sizeof *c);
}

/* A key usable as one path component. */
static int valid_key(const char *k)
{
    return k && *k && !strchr(k, '/') && strcmp(k, ".") != 0 && strcmp(k, "..") != 0;
}

/* A relative path inside the store: components that are valid keys. */
static int valid_relpath(const char *p)
{
    if (!p || !*p) return 0;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        if (!slash) return 1;
        p = slash + 1;
    }
}

/* ---- arrays --------------------------------------------------------------------------------- */

static int open_1d(ans_ad_core *core, const char *path, uint64_t expect, ans_array **out)
{
    *out = NULL;
    ans_node_kind kind;
    ANS_TRY(core->c->ops->node(core->c, path, &kind));
    if (kind != ANS_NODE_ARRAY)
        return ans_ad_err(core, ANS_ECORRUPT, path, kind == ANS_NODE_NONE ? "missing" :
                                                                             "expected an array");
    ANS_TRY(core->c->ops->open_array(core->c, path, out));
    ans_array *a = *out;
    int rc = ANS_OK;
    if (a->ndim != 1)
        rc = ans_ad_err(core, ANS_ECORRUPT, path, "has %d dimensions, expected 1", a->ndim);
    else if (expect != UINT64_MAX && a->shape[0] != expect)
        rc = ans_ad_err(core, ANS_ECORRUPT, path, "has %llu values but the index has %llu",
                        (unsigned long long)a->shape[0], (unsigned long long)expect);
    if (rc < 0) {
        ans_array_free(a);
        *out = NULL;
    }
    return rc;
}

static int read_numeric_of(ans_ad_core *core, ans_array *a, void **values, ans_dtype *dtype,
                           uint64_t *len)
{
    if (a->dtype == ANS_DTYPE_STRING || ans_dtype_size(a->dtype) == 0)
        return ans_ad_err(core, ANS_ECORRUPT, a->path, "expected numbers, found %s",
                          ans_dtype_name(a->dtype));
    size_t nbytes;
    ANS_TRY(ans_array_read_all(a, values, &nbytes));
    *dtype = a->dtype;
    *len = a->shape[0];
    return ANS_OK;
}

static int read_numeric(ans_ad_core *core, const char *path, uint64_t expect, void **values,
                        ans_dtype *dtype, uint64_t *len)
{
    ans_array *a;
    ANS_TRY(open_1d(core, path, expect, &a));
    int rc = read_numeric_of(core, a, values, dtype, len);
    ans_array_free(a);
    return rc;
}

static int read_strings_of(ans_ad_core *core, ans_array *a, uint64_t **offsets, char **data)
{
    uint64_t n = a->shape[0], bytes;
    if (ans_add_overflow(n, 1, &bytes) || ans_mul_overflow(bytes, 8, &bytes) || bytes > SIZE_MAX)
        return ans_ad_err(core, ANS_ECORRUPT, a->path, "too many strings");
    uint64_t *off = ans_malloc((size_t)bytes);
    if (!off) return ANS_ENOMEM;
    ans_buf b = {0};
    int rc = ans_buf_reserve(&b, 1);
    off[0] = 0;
    if (rc == ANS_OK && n > 0) rc = a->ops->read_strings(a, 0, n, off, &b);
    if (rc == ANS_OK) rc = ans_buf_append(&b, "", 1); /* NUL-terminate (not counted) */
    if (rc < 0) {
        free(off);
        ans_buf_free(&b);
        return rc;
    }
    *offsets = off;
    *data = (char *)b.data;
    return ANS_OK;
}

static int read_strings(ans_ad_core *core, const char *path, uint64_t expect, uint64_t **offsets,
                        char **data, uint64_t *len)
{
    ans_array *a;
    ANS_TRY(open_1d(core, path, expect, &a));
    int rc;
    if (a->dtype != ANS_DTYPE_STRING)
        rc = ans_ad_err(core, ANS_ECORRUPT, path, "expected strings, found %s",
                        ans_dtype_name(a->dtype));
    else
        rc = read_strings_of(core, a, offsets, data);
    if (rc == ANS_OK) *len = a->shape[0];
    ans_array_free(a);
    return rc;
}

static int read_mask(ans_ad_core *core, const char *path, uint64_t expect, uint8_t **mask)
{
    void *v = NULL;
    ans_dtype dt;
    uint64_t n;
    ANS_TRY(read_numeric(core, path, expect, &v, &dt, &n));
    if (dt != ANS_DTYPE_BOOL && dt != ANS_DTYPE_UINT8 && dt != ANS_DTYPE_INT8) {
        free(v);
        return ans_ad_err(core, ANS_ECORRUPT, path, "mask has dtype %s, expected bool",
                          ans_dtype_name(dt));
    }
    uint8_t *m = v;
    for (uint64_t i = 0; i < n; i++) m[i] = m[i] != 0;
    *mask = m;
    return ANS_OK;
}

/* Check categorical codes: -1 (missing) or [0, ncat). */
static int check_codes(ans_ad_core *core, const char *path, const void *codes, ans_dtype dt,
                       uint64_t n, uint64_t ncat)
{
    for (uint64_t i = 0; i < n; i++) {
        int64_t s = 0;
        uint64_t u = 0;
        int is_signed = 1;
        switch (dt) {
        case ANS_DTYPE_INT8: s = ((const int8_t *)codes)[i]; break;
        case ANS_DTYPE_INT16: s = ((const int16_t *)codes)[i]; break;
        case ANS_DTYPE_INT32: s = ((const int32_t *)codes)[i]; break;
        case ANS_DTYPE_INT64: s = ((const int64_t *)codes)[i]; break;
        case ANS_DTYPE_UINT8: u = ((const uint8_t *)codes)[i]; is_signed = 0; break;
        case ANS_DTYPE_UINT16: u = ((const uint16_t *)codes)[i]; is_signed = 0; break;
        case ANS_DTYPE_UINT32: u = ((const uint32_t *)codes)[i]; is_signed = 0; break;
        case ANS_DTYPE_UINT64: u = ((const uint64_t *)codes)[i]; is_signed = 0; break;
        default:
            return ans_ad_err(core, ANS_ECORRUPT, path, "codes have dtype %s, expected integers",
                              ans_dtype_name(dt));
        }
        if (is_signed) {
            if (s == -1) continue;
            if (s < 0 || (uint64_t)s >= ncat)
                return ans_ad_err(core, ANS_ECORRUPT, path,
                                  "code %lld at row %llu is outside [-1, %llu)", (long long)s,
                                  (unsigned long long)i, (unsigned long long)ncat);
        } else if (u >= ncat) {
            return ans_ad_err(core, ANS_ECORRUPT, path,
                              "code %llu at row %llu is outside [0, %llu)", (unsigned long long)u,
                              (unsigned long long)i, (unsigned long long)ncat);
        }
    }
    return ANS_OK;
}

/* Categories at `path` (strings or numbers) into the column. */
static int read_categories(ans_ad_core *core, const char *path, fcol *out)
{
    ans_array *a;
    ANS_TRY(open_1d(core, path, UINT64_MAX, &a));
    int rc;
    if (a->dtype == ANS_DTYPE_STRING) {
        rc = read_strings_of(core, a, &out->cat_offsets, &out->cat_data);
    } else if (ans_dtype_size(a->dtype) == 0) {
        rc = ans_ad_err(core, ANS_EUNSUPPORTED, path, "unsupported dtype");
    } else {
        size_t nbytes;
        rc = ans_array_read_all(a, &out->cat_values, &nbytes);
    }
    if (rc == ANS_OK) {
        out->col.cat_dtype = a->dtype;
        out->col.n_categories = a->shape[0];
        out->col.cat_values = out->cat_values;
        out->col.cat_offsets = out->cat_offsets;
        out->col.cat_data = out->cat_data;
    }
    ans_array_free(a);
    return rc;
}

static int attr_flag(const ans_json *attrs, const char *name)
{
    const ans_json *v = ans_json_get(attrs, name);
    int b;
    int64_t i;
    if (ans_json_get_bool(v, &b) == 0) return b != 0;
    if (ans_json_get_i64(v, &i) == 0) return i != 0;
    return 0;
}

/* ---- series --------------------------------------------------------------------------------- */

/* Read the element at `path` as a column of `expect` values (UINT64_MAX: any length). `df` is the
 * frame's path (legacy categories live there); legacy_df: a dataframe 0.1.0. */
static int read_series(ans_ad_core *core, const char *df, int legacy_df, const char *path,
                       uint64_t expect, fcol *out)
{
    ans_ad_node node;
    ANS_TRY(ans_ad_inspect(core, path, &node));
    ans_column *col = &out->col;
    char *sub = NULL;
    int rc = ANS_OK;
    uint64_t n = 0;
    switch (node.enc) {
    case ANS_ENC_NONE: return ans_ad_err(core, ANS_ECORRUPT, path, "column is missing");
    case ANS_ENC_UNKNOWN: return ans_ad_enc_unknown(core, path, &node);
    case ANS_ENC_ARRAY:
    case ANS_ENC_STRING_ARRAY: {
        ans_array *a;
        ANS_TRY(open_1d(core, path, expect, &a));
        const char *cats = legacy_df ? ans_json_get_str(ans_json_get(node.attrs, "categories"))
                                     : NULL;
        if (a->dtype == ANS_DTYPE_STRING) {
            rc = read_strings_of(core, a, &out->offsets, &out->strdata);
            n = a->shape[0];
            col->kind = ANS_COLUMN_STRING;
            col->dtype = ANS_DTYPE_STRING;
        } else if (node.enc == ANS_ENC_STRING_ARRAY) {
            rc = ans_ad_err(core, ANS_ECORRUPT, path, "string-array with dtype %s",
                            ans_dtype_name(a->dtype));
        } else {
            rc = read_numeric_of(core, a, &out->values, &col->dtype, &n);
            col->kind = ANS_COLUMN_NUMERIC;
        }
        ans_array_free(a);
        if (rc < 0 || !cats || col->kind != ANS_COLUMN_NUMERIC) break;
        if (!valid_relpath(cats)) {
            rc = ans_ad_err(core, ANS_ECORRUPT, path, "invalid 'categories' attribute");
            break;
        }
        /* Legacy categorical: the attribute names the categories array, e.g.
         * "__categories/cell_type", relative to the frame group. */
        if (!(sub = ans_ad_join(df, cats))) {
            rc = ANS_ENOMEM;
            break;
        }
        const ans_json *cattrs = NULL;
        if ((rc = read_categories(core, sub, out)) < 0) break;
        if ((rc = core->c->ops->attrs(core->c, sub, &cattrs)) < 0) break;
        col->kind = ANS_COLUMN_CATEGORICAL;
        col->ordered = attr_flag(cattrs, "ordered");
        rc = check_codes(core, path, out->values, col->dtype, n, col->n_categories);
        break;
    }
    case ANS_ENC_CATEGORICAL: {
        if (!(sub = ans_ad_join(path, "codes"))) return ANS_ENOMEM;
        if ((rc = read_numeric(core, sub, expect, &out->values, &col->dtype, &n)) < 0) break;
        free(sub);
        if (!(sub = ans_ad_join(path, "categories"))) {
            rc = ANS_ENOMEM;
            break;
        }
        if ((rc = read_categories(core, sub, out)) < 0) break;
        col->kind = ANS_COLUMN_CATEGORICAL;
        col->ordered = attr_flag(node.attrs, "ordered");
        rc = check_codes(core, path, out->values, col->dtype, n, col->n_categories);
        break;
    }
    case ANS_ENC_NULLABLE_INT:
    case ANS_ENC_NULLABLE_BOOL:
    case ANS_ENC_NULLABLE_STRING: {
        if (!(sub = ans_ad_join(path, "values"))) return ANS_ENOMEM;
        if (node.enc == ANS_ENC_NULLABLE_STRING) {
            rc = read_strings(core, sub, expect, &out->offsets, &out->strdata, &n);
            col->kind = ANS_COLUMN_NULLABLE_STRING;
            col->dtype = ANS_DTYPE_STRING;
            const char *na = ans_json_get_str(ans_json_get(node.attrs, "na-value"));
            col->na_value = na && strcmp(na, "NaN") == 0 ? "NaN" : "NA";
        } else {
            rc = read_numeric(core, sub, expect, &out->values, &col->dtype, &n);
            if (rc == ANS_OK && node.enc == ANS_ENC_NULLABLE_INT &&
                !(col->dtype >= ANS_DTYPE_INT8 && col->dtype <= ANS_DTYPE_UINT64))
                rc = ans_ad_err(core, ANS_ECORRUPT, path,
                                "nullable-integer values have dtype %s",
                                ans_dtype_name(col->dtype));
            if (rc == ANS_OK && node.enc == ANS_ENC_NULLABLE_BOOL && col->dtype != ANS_DTYPE_BOOL)
                rc = ans_ad_err(core, ANS_ECORRUPT, path,
                                "nullable-boolean values have dtype %s",
                                ans_dtype_name(col->dtype));
            col->kind = node.enc == ANS_ENC_NULLABLE_INT ? ANS_COLUMN_NULLABLE_INT
                                                         : ANS_COLUMN_NULLABLE_BOOL;
        }
        if (rc < 0) break;
        free(sub);
        if (!(sub = ans_ad_join(path, "mask"))) {
            rc = ANS_ENOMEM;
            break;
        }
        rc = read_mask(core, sub, n, &out->mask);
        break;
    }
    default:
        return ans_ad_err(core, ANS_EUNSUPPORTED, path,
                          "encoding '%s' is not a dataframe column",
                          node.etype ? node.etype : "(none)");
    }
    free(sub);
    if (rc < 0) return rc;
    col->length = n;
    col->values = out->values;
    col->str_offsets = out->offsets;
    col->str_data = out->strdata;
    col->mask = out->mask;
    return ANS_OK;
}

/* Length of a column without reading it. */
static int series_length(ans_ad_core *core, const char *path, uint64_t *n)
{
    ans_ad_node node;
    ANS_TRY(ans_ad_inspect(core, path, &node));
    const char *part = NULL;
    switch (node.enc) {
    case ANS_ENC_NONE: return ans_ad_err(core, ANS_ECORRUPT, path, "missing");
    case ANS_ENC_UNKNOWN: return ans_ad_enc_unknown(core, path, &node);
    case ANS_ENC_ARRAY:
    case ANS_ENC_STRING_ARRAY: break;
    case ANS_ENC_CATEGORICAL: part = "codes"; break;
    case ANS_ENC_NULLABLE_INT:
    case ANS_ENC_NULLABLE_BOOL:
    case ANS_ENC_NULLABLE_STRING: part = "values"; break;
    default:
        return ans_ad_err(core, ANS_EUNSUPPORTED, path, "encoding '%s' is not a dataframe column",
                          node.etype ? node.etype : "(none)");
    }
    char *p = part ? ans_ad_join(path, part) : ans_strdup(path);
    if (!p) return ANS_ENOMEM;
    ans_array *a;
    int rc = open_1d(core, p, UINT64_MAX, &a);
    free(p);
    if (rc < 0) return rc;
    *n = a->shape[0];
    ans_array_free(a);
    return ANS_OK;
}

/* ---- dataframes ----------------------------------------------------------------------------- */

typedef struct frame_info {
    ans_ad_node node;
    const char *index_key; /* borrowed from the attributes */
    const ans_json *order; /* column-order: NULL, a string or an array of strings */
    size_t n_order;
} frame_info;

static const char *order_at(const frame_info *fi, size_t i)
{
    if (fi->order->type == ANS_JSON_STRING) return ans_json_get_str(fi->order);
    return ans_json_get_str(ans_json_at(fi->order, i));
}

static int frame_inspect(ans_ad_core *core, const char *path, frame_info *fi)
{
    memset(fi, 0, sizeof *fi);
    ANS_TRY(ans_ad_inspect(core, path, &fi->node));
    if (fi->node.kind == ANS_NODE_NONE) return ans_ad_err(core, ANS_ENOTFOUND, path, "not found");
    if (fi->node.kind == ANS_NODE_ARRAY)
        return ans_ad_err(core, ANS_EUNSUPPORTED, path,
                          "a structured-array dataframe (anndata < 0.7) is not supported");
    if (fi->node.enc == ANS_ENC_UNKNOWN) return ans_ad_enc_unknown(core, path, &fi->node);
    if (fi->node.enc != ANS_ENC_DATAFRAME && fi->node.enc != ANS_ENC_DATAFRAME_010)
        return ans_ad_err(core, ANS_ECORRUPT, path, "expected a dataframe, found encoding '%s'",
                          fi->node.etype ? fi->node.etype : "(none)");
    fi->index_key = ans_json_get_str(ans_json_get(fi->node.attrs, "_index"));
    if (!valid_key(fi->index_key))
        return ans_ad_err(core, ANS_ECORRUPT, path, "missing or invalid '_index' attribute");
    fi->order = ans_json_get(fi->node.attrs, "column-order");
    if (!fi->order) return ANS_OK;
    if (fi->order->type == ANS_JSON_STRING) {
        fi->n_order = 1;
    } else if (fi->order->type == ANS_JSON_ARRAY) {
        fi->n_order = ans_json_len(fi->order); /* an empty float64 array in h5ad is [] */
    } else {
        return ans_ad_err(core, ANS_ECORRUPT, path, "invalid 'column-order' attribute");
    }
    for (size_t i = 0; i < fi->n_order; i++)
        if (!valid_key(order_at(fi, i)))
            return ans_ad_err(core, ANS_ECORRUPT, path,
                              "'column-order' entry %zu is not a valid column name", i);
    return ANS_OK;
}

int ans_ad_frame_length(ans_ad_core *core, const char *path, uint64_t *n)
{
    frame_info fi;
    ANS_TRY(frame_inspect(core, path, &fi));
    char *ip = ans_ad_join(path, fi.index_key);
    if (!ip) return ANS_ENOMEM;
    int rc = series_length(core, ip, n);
    free(ip);
    return rc;
}

typedef struct frame_job {
    ans_ad_core *core;
    const char *df;
    int legacy;
    uint64_t n_rows;
    fcol *cols;
} frame_job;

static int frame_job_fn(void *ctx, size_t i, int slot)
{
    (void)slot;
    frame_job *j = ctx;
    fcol *c = &j->cols[i];
    char *p = ans_ad_join(j->df, c->name);
    if (!p) return ANS_ENOMEM;
    int rc = read_series(j->core, j->df, j->legacy, p, j->n_rows, c);
    free(p);
    if (rc == ANS_OK) c->col.name = c->name;
    return rc;
}

int ans_store_read_frame(ans_store *store, const char *which, const char *const *columns,
                         size_t ncolumns, ans_frame **out)
{
    if (!out) return ans_err(ANS_EINVAL, "ans_store_read_frame: out is NULL");
    *out = NULL;
    if (!store || !which) return ans_err(ANS_EINVAL, "ans_store_read_frame: NULL argument");
    ans_ad_core *core = store->core;
    if (strcmp(which, "obs") != 0 && strcmp(which, "var") != 0 && strcmp(which, "raw/var") != 0)
        return ans_err(ANS_EINVAL, "%s: unknown dataframe '%s' (expected obs, var or raw/var)",
                       core->path, which);
    frame_info fi;
    ANS_TRY(frame_inspect(core, which, &fi));

    /* The selection, validated before anything is read. */
    size_t ncol = columns ? ncolumns : fi.n_order;
    for (size_t i = 0; columns && i < ncolumns; i++) {
        if (!columns[i]) return ans_err(ANS_EINVAL, "ans_store_read_frame: column %zu is NULL", i);
        size_t k = 0;
        while (k < fi.n_order && strcmp(order_at(&fi, k), columns[i]) != 0) k++;
        if (k == fi.n_order)
            return ans_err(ANS_ENOTFOUND, "%s: element '%s' has no column '%s'", core->path,
                           which, columns[i]);
    }

    ans_frame *f = ans_calloc(1, sizeof *f);
    if (!f) return ANS_ENOMEM;
    int rc = ANS_OK;
    if (ncol > 0 && !(f->cols = ans_calloc(ncol, sizeof *f->cols))) {
        rc = ANS_ENOMEM;
        goto fail;
    }
    f->n_columns = ncol;
    for (size_t i = 0; i < ncol; i++)
        if (!(f->cols[i].name = ans_strdup(columns ? columns[i] : order_at(&fi, i)))) {
            rc = ANS_ENOMEM;
            goto fail;
        }

    /* The index decides the number of rows. */
    if (!(f->index.name = ans_strdup(fi.index_key))) {
        rc = ANS_ENOMEM;
        goto fail;
    }
    char *ip = ans_ad_join(which, fi.index_key);
    if (!ip) {
        rc = ANS_ENOMEM;
        goto fail;
    }
    int legacy = fi.node.enc == ANS_ENC_DATAFRAME_010;
    rc = read_series(core, which, legacy, ip, UINT64_MAX, &f->index);
    free(ip);
    if (rc < 0) goto fail;
    f->index.col.name = f->index.name;
    f->n_rows = f->index.col.length;

    if (ncol > 0) {
        frame_job job = {core, which, legacy, f->n_rows, f->cols};
        if ((rc = ans_pool_for(core->pool, ncol, frame_job_fn, &job)) < 0) goto fail;
    }
    *out = f;
    return ANS_OK;

fail:
    ans_frame_free(f);
    return rc;
}

void ans_frame_free(ans_frame *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n_columns; i++) fcol_clear(&f->cols[i]);
    free(f->cols);
    fcol_clear(&f->index);
    free(f);
}

uint64_t ans_frame_n_rows(const ans_frame *f)
{
    return f->n_rows;
}

size_t ans_frame_n_columns(const ans_frame *f)
{
    return f->n_columns;
}

int ans_frame_column(const ans_frame *f, size_t i, ans_column *out)
{
    if (!f || !out) return ans_err(ANS_EINVAL, "ans_frame_column: NULL argument");
    if (i >= f->n_columns)
        return ans_err(ANS_EINVAL, "ans_frame_column: column %zu of %zu", i, f->n_columns);
    *out = f->cols[i].col;
    return ANS_OK;
}

int ans_frame_index(const ans_frame *f, ans_column *out)
{
    if (!f || !out) return ans_err(ANS_EINVAL, "ans_frame_index: NULL argument");
    *out = f->index.col;
    return ANS_OK;
}
