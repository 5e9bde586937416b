/* adw.c - AnnData element writers (see adw.h). */
#include "writer/adw.h"

#include "common/error.h"
#include "common/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ADW_PIECE ((uint64_t)1 << 16) /* values converted per step (bounded scratch) */
#define ADW_PATH_MAX 4096

static int jset(ans_json *obj, const char *key, ans_json *val)
{
    if (!val) return ANS_ENOMEM;
    return ans_json_set(obj, key, val);
}

/* {"encoding-type": type, "encoding-version": version} appended to `attrs` (or a new object). */
static ans_json *enc_attrs(ans_json *attrs, const char *type, const char *version)
{
    ans_json *a = attrs ? attrs : ans_json_new_object();
    if (!a) return NULL;
    if (jset(a, "encoding-type", ans_json_new_str(type)) < 0 ||
        jset(a, "encoding-version", ans_json_new_str(version)) < 0) {
        ans_json_free(a);
        return NULL;
    }
    return a;
}

static int adw_err(const ans_zw *w, const char *path, int rc)
{
    ans_err_prefix("%s: element '%s'", ans_zw_root(w), path);
    return rc;
}

static int join(char *buf, const char *a, const char *b)
{
    int n =
        a[0] ? snprintf(buf, ADW_PATH_MAX, "%s/%s", a, b) : snprintf(buf, ADW_PATH_MAX, "%s", b);
    if (n < 0 || n >= ADW_PATH_MAX)
        return ans_err(ANS_EINVAL, "element path too long: %s/%s", a, b);
    return ANS_OK;
}

static const ans_adw_opts *opts_or_default(const ans_adw_opts *o, ans_adw_opts *tmp)
{
    if (o) return o;
    const ans_adw_opts d = ANS_ADW_OPTS_INIT;
    *tmp = d;
    return tmp;
}

static int is_int_dtype(ans_dtype t)
{
    return t >= ANS_DTYPE_INT8 && t <= ANS_DTYPE_UINT64;
}

/* Value i of an integer array as int64; -1 when it does not fit. */
static int load_int(ans_dtype t, const void *p, uint64_t i, int64_t *v)
{
    switch (t) {
    case ANS_DTYPE_INT8:
        *v = ((const int8_t *)p)[i];
        return 0;
    case ANS_DTYPE_INT16:
        *v = ((const int16_t *)p)[i];
        return 0;
    case ANS_DTYPE_INT32:
        *v = ((const int32_t *)p)[i];
        return 0;
    case ANS_DTYPE_INT64:
        *v = ((const int64_t *)p)[i];
        return 0;
    case ANS_DTYPE_UINT8:
        *v = ((const uint8_t *)p)[i];
        return 0;
    case ANS_DTYPE_UINT16:
        *v = ((const uint16_t *)p)[i];
        return 0;
    case ANS_DTYPE_UINT32:
        *v = ((const uint32_t *)p)[i];
        return 0;
    case ANS_DTYPE_UINT64: {
        uint64_t u = ((const uint64_t *)p)[i];
        if (u > INT64_MAX) return -1;
        *v = (int64_t)u;
        return 0;
    }
    default:
        return -1;
    }
}

static void store_int(ans_dtype t, void *p, uint64_t i, int64_t v)
{
    switch (t) {
    case ANS_DTYPE_INT8:
        ((int8_t *)p)[i] = (int8_t)v;
        break;
    case ANS_DTYPE_INT16:
        ((int16_t *)p)[i] = (int16_t)v;
        break;
    case ANS_DTYPE_INT32:
        ((int32_t *)p)[i] = (int32_t)v;
        break;
    case ANS_DTYPE_INT64:
        ((int64_t *)p)[i] = v;
        break;
    case ANS_DTYPE_UINT8:
        ((uint8_t *)p)[i] = (uint8_t)v;
        break;
    case ANS_DTYPE_UINT16:
        ((uint16_t *)p)[i] = (uint16_t)v;
        break;
    case ANS_DTYPE_UINT32:
        ((uint32_t *)p)[i] = (uint32_t)v;
        break;
    default:
        ((uint64_t *)p)[i] = (uint64_t)v;
        break;
    }
}

/* Append n integers of `src_t` to `a` (an array of `dst_t`), each checked to lie in [lo, hi]; a
 * value out of range is reported against element `elem` of `w`. */
static int append_ints(ans_zw *w, const char *elem, ans_zwa *a, ans_buf *scratch, const void *src,
                       ans_dtype src_t, uint64_t n, ans_dtype dst_t, int64_t lo, int64_t hi,
                       const char *what)
{
    size_t dsz = ans_dtype_size(dst_t);
    if (src_t == dst_t && lo == 0 && hi >= 0 &&
        (src_t == ANS_DTYPE_UINT8 || src_t == ANS_DTYPE_UINT16 || src_t == ANS_DTYPE_UINT32)) {
        /* the caller already has the stored type (the converter's pass 2): check, no copy */
        uint64_t hu = (uint64_t)hi, bad = UINT64_MAX;
#define ADW_SCAN(T)                                                                                \
    do {                                                                                           \
        const T *v = src;                                                                          \
        T m = 0;                                                                                   \
        for (uint64_t i = 0; i < n; i++)                                                           \
            m = v[i] > m ? v[i] : m;                                                               \
        if ((uint64_t)m > hu)                                                                      \
            for (uint64_t i = 0; i < n && bad == UINT64_MAX; i++)                                  \
                if ((uint64_t)v[i] > hu) bad = i;                                                  \
    } while (0)
        if (src_t == ANS_DTYPE_UINT8)
            ADW_SCAN(uint8_t);
        else if (src_t == ANS_DTYPE_UINT16)
            ADW_SCAN(uint16_t);
        else
            ADW_SCAN(uint32_t);
#undef ADW_SCAN
        if (bad != UINT64_MAX)
            return adw_err(w, elem,
                           ans_err(ANS_EINVAL, "%s %llu is out of range [%lld, %lld]", what,
                                   (unsigned long long)bad, (long long)lo, (long long)hi));
        (void)scratch;
        return ans_zwa_append(a, src, n);
    }
    for (uint64_t s = 0; s < n; s += ADW_PIECE) {
        uint64_t m = n - s < ADW_PIECE ? n - s : ADW_PIECE;
        int rc = ans_buf_reserve(scratch, (size_t)m * dsz);
        if (rc < 0) return adw_err(w, elem, rc);
        for (uint64_t i = 0; i < m; i++) {
            int64_t v;
            if (load_int(src_t, src, s + i, &v) < 0 || v < lo || v > hi)
                return adw_err(w, elem,
                               ans_err(ANS_EINVAL, "%s %llu is out of range [%lld, %lld]", what,
                                       (unsigned long long)(s + i), (long long)lo, (long long)hi));
            store_int(dst_t, scratch->data, i, v);
        }
        if ((rc = ans_zwa_append(a, scratch->data, m)) < 0) return rc; /* names the array */
    }
    return ANS_OK;
}

/* annbatch's rules (write_sharded in annbatch 0.3): the rows of a shard are shard_size divided by
 * the uncompressed bytes per row, clamped to the element's length, rounded down to a multiple of
 * the chunk, and at least one chunk. Python floats are IEEE doubles: the same arithmetic here
 * gives the same numbers. */
static uint64_t round_down(uint64_t x, uint64_t d)
{
    return x - x % d;
}

static uint64_t obs_per_shard(uint64_t shard_size, double bytes_per_row)
{
    if (!(bytes_per_row > 0)) return 1;
    double v = (double)shard_size / bytes_per_row;
    if (v >= 18446744073709549568.0) return UINT64_MAX;
    return v < 1 ? 1 : (uint64_t)v;
}

/* Dense: chunk = min(n_obs_per_chunk, n), shard = max(chunk, round_down(min(per_shard, n), chunk)).
 * n = 0 (annbatch refuses it) gives chunk = shard = 1. */
static void dense_plan(uint64_t n, uint64_t row_bytes, const ans_adw_opts *o, uint64_t *chunk,
                       uint64_t *shard)
{
    uint64_t c = o->n_obs_per_chunk < n ? o->n_obs_per_chunk : n;
    if (c < 1) c = 1;
    uint64_t sh = obs_per_shard(o->shard_size, (double)row_bytes);
    if (sh > n) sh = n;
    sh = round_down(sh, c);
    *chunk = c;
    *shard = sh > c ? sh : c;
}

/* Sparse, in values: avg = nnz / n; chunk = max(1, int(n_obs_per_chunk * avg)) capped at nnz;
 * shard = max(1, int(per_shard * avg)) capped at nnz, rounded down to the chunk, at least one
 * chunk; per_shard from the bytes of data + indices + indptr per row. */
static void sparse_plan(uint64_t n, uint64_t nnz, uint64_t total_bytes, const ans_adw_opts *o,
                        uint64_t *chunk, uint64_t *shard)
{
    double avg = n ? (double)nnz / (double)n : 0.0;
    double cv = (double)o->n_obs_per_chunk * avg;
    uint64_t c = cv >= 1 ? (cv >= 18446744073709549568.0 ? UINT64_MAX : (uint64_t)cv) : 1;
    if (nnz > 0 && c > nnz) c = nnz;
    uint64_t per = obs_per_shard(o->shard_size, n ? (double)total_bytes / (double)n : 0.0);
    double sv = (double)per * avg;
    uint64_t sh = sv >= 1 ? (sv >= 18446744073709549568.0 ? UINT64_MAX : (uint64_t)sv) : 1;
    if (nnz > 0 && sh > nnz) sh = nnz;
    sh = round_down(sh, c);
    *chunk = c;
    *shard = sh > c ? sh : c;
}

/* ---- groups
 * ----------------------------------------------------------------------------------------- */

int ans_adw_dict(ans_zw *w, const char *path)
{
    return ans_zw_group(w, path, enc_attrs(NULL, "dict", "0.1.0"));
}

int ans_adw_anndata(ans_zw *w, const char *prefix)
{
    ans_json *a = enc_attrs(NULL, "anndata", "0.1.0");
    if (!a) return adw_err(w, prefix, ANS_ENOMEM);
    ANS_TRY(ans_zw_group(w, prefix, a));
    static const char *const dicts[] = {"layers", "obsm", "obsp", "varm", "varp", "uns"};
    char p[ADW_PATH_MAX];
    for (size_t i = 0; i < sizeof dicts / sizeof *dicts; i++) {
        ANS_TRY(join(p, prefix, dicts[i]));
        ANS_TRY(ans_adw_dict(w, p));
    }
    return ANS_OK;
}

int ans_adw_collection(ans_zw *w)
{
    ans_json *a = enc_attrs(NULL, "annbatch-preshuffled", "0.1.0");
    if (!a) return adw_err(w, "", ANS_ENOMEM);
    return ans_zw_group(w, "", a);
}

/* ---- dense
 * ------------------------------------------------------------------------------------------ */

int ans_adw_dense_begin(ans_zw *w, const char *path, ans_dtype dtype, int ndim,
                        const uint64_t *shape, const ans_adw_opts *opts, ans_zwa **out)
{
    *out = NULL;
    ans_adw_opts tmp;
    opts = opts_or_default(opts, &tmp);
    if (ndim < 1 || ndim > ANS_ZW_MAX_NDIM || dtype == ANS_DTYPE_STRING || !ans_dtype_size(dtype) ||
        opts->n_obs_per_chunk < 1)
        return adw_err(w, path, ans_err(ANS_EINVAL, "dense array: bad ndim, dtype or chunking"));
    ans_zw_array_opts o = {0};
    o.dtype = dtype;
    o.ndim = ndim;
    uint64_t row_bytes = ans_dtype_size(dtype);
    for (int d = 0; d < ndim; d++) {
        o.shape[d] = shape[d];
        if (d > 0 && ans_mul_overflow(row_bytes, shape[d], &row_bytes))
            return adw_err(w, path, ans_err(ANS_EINVAL, "dense array: row size overflows"));
    }
    dense_plan(shape[0], row_bytes, opts, &o.chunk_rows, &o.shard_rows);
    o.codec = opts->codec;
    o.attrs = enc_attrs(NULL, "array", "0.2.0");
    if (!o.attrs) return adw_err(w, path, ANS_ENOMEM);
    return ans_zw_array_new(w, path, &o, out);
}

int ans_adw_dense(ans_zw *w, const char *path, ans_dtype dtype, int ndim, const uint64_t *shape,
                  const void *data, const ans_adw_opts *opts)
{
    ans_zwa *a;
    ANS_TRY(ans_adw_dense_begin(w, path, dtype, ndim, shape, opts, &a));
    int rc = ans_zwa_append(a, data, shape[0]);
    if (rc < 0) {
        ans_zwa_abort(a);
        return rc;
    }
    return ans_zwa_close(a);
}

/* ---- CSR
 * -------------------------------------------------------------------------------------------- */

struct ans_adw_csr {
    ans_zw *w;
    char *path;
    uint64_t n_rows, n_cols, nnz;
    ans_dtype dtype, idx_dtype;
    uint64_t rows_done, nnz_done;
    ans_zwa *data, *indices, *indptr;
    ans_buf scratch;
};

static ans_dtype index_dtype_for(uint64_t n_cols)
{
    if (n_cols < 256) return ANS_DTYPE_UINT8;
    if (n_cols < 65536) return ANS_DTYPE_UINT16;
    if (n_cols < ((uint64_t)1 << 32)) return ANS_DTYPE_UINT32;
    return ANS_DTYPE_UINT64;
}

ans_dtype ans_adw_csr_index_dtype(const ans_adw_csr *c)
{
    return c->idx_dtype;
}

void ans_adw_csr_abort(ans_adw_csr *c)
{
    if (!c) return;
    ans_zwa_abort(c->data);
    ans_zwa_abort(c->indices);
    ans_zwa_abort(c->indptr);
    ans_buf_free(&c->scratch);
    free(c->path);
    free(c);
}

static int csr_sub(ans_adw_csr *c, const char *name, ans_dtype dt, uint64_t len, uint64_t chunk,
                   uint64_t shard, const ans_zw_codec *codec, ans_zwa **out)
{
    char p[ADW_PATH_MAX];
    ANS_TRY(join(p, c->path, name));
    ans_zw_array_opts o = {0};
    o.dtype = dt;
    o.ndim = 1;
    o.shape[0] = len;
    o.chunk_rows = chunk;
    o.shard_rows = shard;
    o.codec = *codec;
    return ans_zw_array_new(c->w, p, &o, out);
}

int ans_adw_csr_begin(ans_zw *w, const char *path, uint64_t n_rows, uint64_t n_cols, uint64_t nnz,
                      ans_dtype dtype, const ans_adw_opts *opts, ans_adw_csr **out)
{
    *out = NULL;
    ans_adw_opts tmp;
    opts = opts_or_default(opts, &tmp);
    if (dtype == ANS_DTYPE_STRING || !ans_dtype_size(dtype) || opts->n_obs_per_chunk < 1 ||
        opts->frame_chunk < 1 || n_rows == UINT64_MAX || nnz > INT64_MAX || n_cols > INT64_MAX)
        return adw_err(w, path, ans_err(ANS_EINVAL, "csr_matrix: bad dtype, size or chunking"));
    ans_adw_csr *c = ans_calloc(1, sizeof *c);
    if (!c || !(c->path = ans_strdup(path))) {
        free(c);
        return adw_err(w, path, ANS_ENOMEM);
    }
    c->w = w;
    c->n_rows = n_rows;
    c->n_cols = n_cols;
    c->nnz = nnz;
    c->dtype = dtype;
    c->idx_dtype = index_dtype_for(n_cols);
    /* Group first: shape, then the encoding (anndata's attribute order). */
    ans_json *attrs = ans_json_new_object(), *shape = ans_json_new_array();
    int rc = attrs && shape ? ANS_OK : ANS_ENOMEM;
    if (rc == ANS_OK) rc = ans_json_push(shape, ans_json_new_uint(n_rows));
    if (rc == ANS_OK) rc = ans_json_push(shape, ans_json_new_uint(n_cols));
    if (rc == ANS_OK) {
        rc = ans_json_set(attrs, "shape", shape);
        shape = NULL;
    }
    if (rc == ANS_OK) {
        rc = (attrs = enc_attrs(attrs, "csr_matrix", "0.1.0")) ? ANS_OK : ANS_ENOMEM;
        if (rc < 0) attrs = NULL; /* freed by enc_attrs */
    }
    ans_json_free(shape);
    if (rc < 0) {
        ans_json_free(attrs);
        ans_adw_csr_abort(c);
        return adw_err(w, path, rc);
    }
    if ((rc = ans_zw_group(w, path, attrs)) < 0) {
        ans_adw_csr_abort(c);
        return rc;
    }
    /* annbatch: data, indices and indptr share one chunk and shard shape (in values). */
    uint64_t chunk, shard, total = 0, t;
    if (ans_mul_overflow(nnz, ans_dtype_size(dtype) + ans_dtype_size(c->idx_dtype), &total) ||
        ans_mul_overflow(n_rows + 1, 8, &t) || ans_add_overflow(total, t, &total))
        total = UINT64_MAX;
    sparse_plan(n_rows, nnz, total, opts, &chunk, &shard);
    if ((rc = csr_sub(c, "data", dtype, nnz, chunk, shard, &opts->codec, &c->data)) < 0 ||
        (rc = csr_sub(c, "indices", c->idx_dtype, nnz, chunk, shard, &opts->codec, &c->indices)) <
            0 ||
        (rc = csr_sub(c, "indptr", ANS_DTYPE_INT64, n_rows + 1, chunk, shard, &opts->codec,
                      &c->indptr)) < 0) {
        ans_adw_csr_abort(c);
        return rc;
    }
    const int64_t zero = 0;
    if ((rc = ans_zwa_append(c->indptr, &zero, 1)) < 0) {
        ans_adw_csr_abort(c);
        return rc;
    }
    *out = c;
    return ANS_OK;
}

static int csr_append(ans_adw_csr *c, uint64_t nrows, const int64_t *indptr, const void *indices,
                      ans_dtype index_dtype, const void *data, int checked)
{
    int rc = ANS_OK;
    if (nrows > c->n_rows - c->rows_done)
        return adw_err(c->w, c->path,
                       ans_err(ANS_EINVAL, "csr_matrix: more than %llu rows appended",
                               (unsigned long long)c->n_rows));
    if (!is_int_dtype(index_dtype))
        return adw_err(c->w, c->path, ans_err(ANS_EINVAL, "csr_matrix: indices must be integers"));
    for (uint64_t r = 0; r < nrows; r++)
        if (indptr[r + 1] < indptr[r])
            return adw_err(c->w, c->path,
                           ans_err(ANS_EINVAL, "csr_matrix: indptr decreases at row %llu",
                                   (unsigned long long)(c->rows_done + r)));
    uint64_t m = (uint64_t)(indptr[nrows] - indptr[0]);
    if (m > c->nnz - c->nnz_done)
        return adw_err(c->w, c->path,
                       ans_err(ANS_EINVAL, "csr_matrix: more than the announced %llu values",
                               (unsigned long long)c->nnz));
    if (checked && index_dtype == c->idx_dtype)
        rc = ans_zwa_append(c->indices, indices, m);
    else
        rc = append_ints(c->w, c->path, c->indices, &c->scratch, indices, index_dtype, m,
                         c->idx_dtype, 0, (int64_t)c->n_cols - 1, "column index");
    if (rc == ANS_OK) rc = ans_zwa_append(c->data, data, m);
    /* indptr: this piece's row ends shifted to the global value count */
    for (uint64_t s = 0; rc == ANS_OK && s < nrows; s += ADW_PIECE) {
        uint64_t k = nrows - s < ADW_PIECE ? nrows - s : ADW_PIECE;
        if ((rc = ans_buf_reserve(&c->scratch, (size_t)k * 8)) < 0) {
            adw_err(c->w, c->path, rc);
            break;
        }
        int64_t *ip = (int64_t *)(void *)c->scratch.data;
        for (uint64_t i = 0; i < k; i++)
            ip[i] = (int64_t)c->nnz_done + (indptr[s + i + 1] - indptr[0]);
        rc = ans_zwa_append(c->indptr, ip, k);
    }
    if (rc < 0) return rc; /* the element is incomplete: abort it */
    c->rows_done += nrows;
    c->nnz_done += m;
    return ANS_OK;
}

int ans_adw_csr_append(ans_adw_csr *c, uint64_t nrows, const int64_t *indptr, const void *indices,
                       ans_dtype index_dtype, const void *data)
{
    return csr_append(c, nrows, indptr, indices, index_dtype, data, 0);
}

int ans_adw_csr_append_checked(ans_adw_csr *c, uint64_t nrows, const int64_t *indptr,
                               const void *indices, const void *data)
{
    return csr_append(c, nrows, indptr, indices, c->idx_dtype, data, 1);
}

int ans_adw_csr_close(ans_adw_csr *c)
{
    int rc = ANS_OK;
    if (c->rows_done != c->n_rows || c->nnz_done != c->nnz)
        rc = adw_err(c->w, c->path,
                     ans_err(ANS_EINVAL,
                             "csr_matrix: %llu rows / %llu values written, %llu / %llu "
                             "announced",
                             (unsigned long long)c->rows_done, (unsigned long long)c->nnz_done,
                             (unsigned long long)c->n_rows, (unsigned long long)c->nnz));
    ans_zwa *arrs[3] = {c->data, c->indices, c->indptr};
    c->data = c->indices = c->indptr = NULL;
    for (int i = 0; i < 3; i++) {
        if (rc == ANS_OK)
            rc = ans_zwa_close(arrs[i]);
        else
            ans_zwa_abort(arrs[i]);
    }
    ans_adw_csr_abort(c);
    return rc;
}

int ans_adw_csr_write(ans_zw *w, const char *path, uint64_t n_rows, uint64_t n_cols,
                      const int64_t *indptr, const void *indices, ans_dtype index_dtype,
                      const void *data, ans_dtype dtype, const ans_adw_opts *opts)
{
    if (indptr[0] != 0 || indptr[n_rows] < 0)
        return adw_err(w, path, ans_err(ANS_EINVAL, "csr_matrix: indptr must start at 0"));
    ans_adw_csr *c;
    ANS_TRY(ans_adw_csr_begin(w, path, n_rows, n_cols, (uint64_t)indptr[n_rows], dtype, opts, &c));
    int rc = ans_adw_csr_append(c, n_rows, indptr, indices, index_dtype, data);
    if (rc < 0) {
        ans_adw_csr_abort(c);
        return rc;
    }
    return ans_adw_csr_close(c);
}

/* ---- data frames --------------------------------------------------------------------------------
 */

int ans_adw_frame(ans_zw *w, const char *path, const char *index_name, const char *const *columns,
                  size_t ncolumns)
{
    ans_json *attrs = ans_json_new_object(), *order = ans_json_new_array();
    int rc = attrs && order ? ANS_OK : ANS_ENOMEM;
    for (size_t i = 0; rc == ANS_OK && i < ncolumns; i++) {
        ans_json *s = ans_json_new_str(columns[i]);
        rc = s ? ans_json_push(order, s) : ANS_ENOMEM;
    }
    if (rc == ANS_OK) {
        rc = ans_json_set(attrs, "column-order", order);
        order = NULL;
    }
    if (rc == ANS_OK)
        rc = jset(attrs, "_index", ans_json_new_str(index_name ? index_name : "_index"));
    ans_json_free(order);
    if (rc == ANS_OK) {
        ans_json *a = enc_attrs(attrs, "dataframe", "0.2.0");
        attrs = NULL;
        if (!a) return adw_err(w, path, ANS_ENOMEM);
        return ans_zw_group(w, path, a);
    }
    ans_json_free(attrs);
    return adw_err(w, path, rc);
}

int ans_adw_column_begin(ans_zw *w, const char *path, ans_dtype dtype, uint64_t n,
                         const ans_adw_opts *opts, ans_zwa **out)
{
    *out = NULL;
    if (dtype != ANS_DTYPE_STRING && !ans_dtype_size(dtype))
        return adw_err(w, path, ans_err(ANS_EINVAL, "column: invalid data type"));
    ans_adw_opts tmp;
    opts = opts_or_default(opts, &tmp);
    ans_zw_array_opts o = {0};
    o.dtype = dtype;
    o.ndim = 1;
    o.shape[0] = n;
    o.chunk_rows = opts->frame_chunk < n ? opts->frame_chunk : (n ? n : 1);
    if (o.chunk_rows < 1) o.chunk_rows = 1;
    o.codec = opts->frame_codec;
    o.attrs = dtype == ANS_DTYPE_STRING ? enc_attrs(NULL, "string-array", "0.2.0")
                                        : enc_attrs(NULL, "array", "0.2.0");
    if (!o.attrs) return adw_err(w, path, ANS_ENOMEM);
    return ans_zw_array_new(w, path, &o, out);
}

int ans_adw_strings(ans_zw *w, const char *path, uint64_t n, const uint64_t *offsets,
                    const char *data, const ans_adw_opts *opts)
{
    ans_zwa *a;
    ANS_TRY(ans_adw_column_begin(w, path, ANS_DTYPE_STRING, n, opts, &a));
    int rc = ans_zwa_append_strings(a, offsets, data, n);
    if (rc < 0) {
        ans_zwa_abort(a);
        return rc;
    }
    return ans_zwa_close(a);
}

int ans_adw_column(ans_zw *w, const char *path, ans_dtype dtype, uint64_t n, const void *values,
                   const ans_adw_opts *opts)
{
    if (dtype == ANS_DTYPE_STRING || !ans_dtype_size(dtype))
        return adw_err(w, path, ans_err(ANS_EINVAL, "column: not a numeric or bool type"));
    ans_zwa *a;
    ANS_TRY(ans_adw_column_begin(w, path, dtype, n, opts, &a));
    int rc = ans_zwa_append(a, values, n);
    if (rc < 0) {
        ans_zwa_abort(a);
        return rc;
    }
    return ans_zwa_close(a);
}

ans_dtype ans_adw_codes_dtype(uint64_t n_categories)
{
    return n_categories < 127          ? ANS_DTYPE_INT8
           : n_categories < 32767      ? ANS_DTYPE_INT16
           : n_categories < 2147483647 ? ANS_DTYPE_INT32
                                       : ANS_DTYPE_INT64;
}

int ans_adw_categorical_begin(ans_zw *w, const char *path, uint64_t n, uint64_t n_categories,
                              const uint64_t *cat_offsets, const char *cat_data, int ordered,
                              const ans_adw_opts *opts, ans_zwa **codes)
{
    *codes = NULL;
    if (n_categories > INT64_MAX)
        return adw_err(w, path, ans_err(ANS_EINVAL, "categorical: too many categories"));
    ans_json *attrs = ans_json_new_object();
    if (!attrs || jset(attrs, "ordered", ans_json_new_bool(ordered != 0)) < 0) {
        ans_json_free(attrs);
        return adw_err(w, path, ANS_ENOMEM);
    }
    ANS_TRY(ans_zw_group(w, path, enc_attrs(attrs, "categorical", "0.2.0")));
    char p[ADW_PATH_MAX];
    ANS_TRY(join(p, path, "categories"));
    ANS_TRY(ans_adw_strings(w, p, n_categories, cat_offsets, cat_data, opts));
    ANS_TRY(join(p, path, "codes"));
    return ans_adw_column_begin(w, p, ans_adw_codes_dtype(n_categories), n, opts, codes);
}

int ans_adw_categorical(ans_zw *w, const char *path, uint64_t n, const void *codes,
                        ans_dtype codes_dtype, uint64_t n_categories, const uint64_t *cat_offsets,
                        const char *cat_data, int ordered, const ans_adw_opts *opts)
{
    if (!is_int_dtype(codes_dtype))
        return adw_err(w, path, ans_err(ANS_EINVAL, "categorical: codes must be integers"));
    ans_zwa *a;
    ANS_TRY(ans_adw_categorical_begin(w, path, n, n_categories, cat_offsets, cat_data, ordered,
                                      opts, &a));
    char p[ADW_PATH_MAX];
    ANS_TRY(join(p, path, "codes"));
    ans_buf scratch = {0};
    int rc = append_ints(w, p, a, &scratch, codes, codes_dtype, n,
                         ans_adw_codes_dtype(n_categories), -1, (int64_t)n_categories - 1, "code");
    ans_buf_free(&scratch);
    if (rc < 0) {
        ans_zwa_abort(a);
        return rc;
    }
    return ans_zwa_close(a);
}

int ans_adw_nullable(ans_zw *w, const char *path, ans_dtype dtype, uint64_t n, const void *values,
                     const uint8_t *mask, const ans_adw_opts *opts)
{
    const char *type = dtype == ANS_DTYPE_BOOL ? "nullable-boolean"
                       : is_int_dtype(dtype)   ? "nullable-integer"
                                               : NULL;
    if (!type)
        return adw_err(w, path, ans_err(ANS_EINVAL, "nullable: values must be integers or bools"));
    ANS_TRY(ans_zw_group(w, path, enc_attrs(NULL, type, "0.1.0")));
    char p[ADW_PATH_MAX];
    ANS_TRY(join(p, path, "values"));
    ANS_TRY(ans_adw_column(w, p, dtype, n, values, opts));
    /* the mask as strict 0/1 bools */
    ANS_TRY(join(p, path, "mask"));
    ans_zwa *a;
    ANS_TRY(ans_adw_column_begin(w, p, ANS_DTYPE_BOOL, n, opts, &a));
    uint8_t tmp[4096];
    int rc = ANS_OK;
    for (uint64_t s = 0; rc == ANS_OK && s < n; s += sizeof tmp) {
        uint64_t k = n - s < sizeof tmp ? n - s : sizeof tmp;
        for (uint64_t i = 0; i < k; i++)
            tmp[i] = mask[s + i] != 0;
        rc = ans_zwa_append(a, tmp, k);
    }
    if (rc < 0) {
        ans_zwa_abort(a);
        return rc;
    }
    return ans_zwa_close(a);
}
