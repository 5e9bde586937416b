/* store.c - opening an AnnData store: backend selection, root validation, n_obs / n_vars, discovery
 * of the row-aligned keys; the shared core; encoding classification; small public helpers. */
#include "anndata/anndata.h"

#include "storage/store.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- public helpers ------------------------------------------------------------------------- */

const char *ans_version(void)
{
    return ANS_VERSION_STRING;
}

void ans_free(void *ptr)
{
    free(ptr);
}

/* ---- core ----------------------------------------------------------------------------------- */

ans_ad_core *ans_ad_core_ref(ans_ad_core *core)
{
    atomic_fetch_add_explicit(&core->refs, 1, memory_order_relaxed);
    return core;
}

void ans_ad_core_unref(ans_ad_core *core)
{
    if (!core) return;
    if (atomic_fetch_sub_explicit(&core->refs, 1, memory_order_acq_rel) != 1) return;
    /* The container may use the pool while closing: free it first. */
    ans_container_free(core->c);
    if (core->pool) ans_pool_free(core->pool);
    free(core->path);
    free(core);
}

int ans_ad_err(const ans_ad_core *core, int code, const char *elem, const char *fmt, ...)
{
    char msg[ANS_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wformat-nonliteral"
#endif
    vsnprintf(msg, sizeof msg, fmt, ap);
#if defined(__clang__)
#pragma clang diagnostic pop
#endif
    va_end(ap);
    return ans_err(code, "%s: element '%s': %s", core ? core->path : "", elem ? elem : "", msg);
}

char *ans_ad_join(const char *a, const char *b)
{
    if (!a || !*a) return ans_strdup(b);
    return ans_asprintf("%s/%s", a, b);
}

int ans_ad_json_u64s(const ans_json *v, uint64_t *out, size_t n)
{
    if (!v || v->type != ANS_JSON_ARRAY || ans_json_len(v) != n) return -1;
    for (size_t i = 0; i < n; i++) {
        int64_t x;
        if (ans_json_get_i64(ans_json_at(v, i), &x) != 0 || x < 0) return -1;
        out[i] = (uint64_t)x;
    }
    return 0;
}

/* ---- encodings ------------------------------------------------------------------------------ */

typedef struct enc_entry {
    const char *type;
    const char *version;
    ans_enc enc;
    ans_node_kind kind; /* the node kind the encoding lives on */
} enc_entry;

static const enc_entry k_encodings[] = {
    {"anndata", "0.1.0", ANS_ENC_ANNDATA, ANS_NODE_GROUP},
    {"raw", "0.1.0", ANS_ENC_RAW, ANS_NODE_GROUP},
    {"dict", "0.1.0", ANS_ENC_DICT, ANS_NODE_GROUP},
    {"array", "0.2.0", ANS_ENC_ARRAY, ANS_NODE_ARRAY},
    {"csr_matrix", "0.1.0", ANS_ENC_CSR, ANS_NODE_GROUP},
    {"csc_matrix", "0.1.0", ANS_ENC_CSC, ANS_NODE_GROUP},
    {"dataframe", "0.2.0", ANS_ENC_DATAFRAME, ANS_NODE_GROUP},
    {"dataframe", "0.1.0", ANS_ENC_DATAFRAME_010, ANS_NODE_GROUP},
    {"categorical", "0.2.0", ANS_ENC_CATEGORICAL, ANS_NODE_GROUP},
    {"string-array", "0.2.0", ANS_ENC_STRING_ARRAY, ANS_NODE_ARRAY},
    {"nullable-integer", "0.1.0", ANS_ENC_NULLABLE_INT, ANS_NODE_GROUP},
    {"nullable-boolean", "0.1.0", ANS_ENC_NULLABLE_BOOL, ANS_NODE_GROUP},
    {"nullable-string-array", "0.1.0", ANS_ENC_NULLABLE_STRING, ANS_NODE_GROUP},
    {"numeric-scalar", "0.2.0", ANS_ENC_NUMERIC_SCALAR, ANS_NODE_ARRAY},
    {"string", "0.2.0", ANS_ENC_STRING_SCALAR, ANS_NODE_ARRAY},
    {"null", "0.1.0", ANS_ENC_NULL, ANS_NODE_NONE}, /* HDF5 null dataspace or zarr 0-d bool */
};

int ans_ad_inspect(ans_ad_core *core, const char *path, ans_ad_node *out)
{
    memset(out, 0, sizeof *out);
    ANS_TRY(core->c->ops->node(core->c, path, &out->kind));
    if (out->kind == ANS_NODE_NONE) return ANS_OK;
    ANS_TRY(core->c->ops->attrs(core->c, path, &out->attrs));
    const ans_json *et = ans_json_get(out->attrs, "encoding-type");
    const ans_json *ev = ans_json_get(out->attrs, "encoding-version");
    out->etype = ans_json_get_str(et);
    out->eversion = ans_json_get_str(ev);
    if (et) {
        out->enc = ANS_ENC_UNKNOWN;
        if (!out->etype || !out->eversion) return ANS_OK;
        for (size_t i = 0; i < sizeof k_encodings / sizeof k_encodings[0]; i++) {
            const enc_entry *e = &k_encodings[i];
            if (strcmp(e->type, out->etype) != 0 || strcmp(e->version, out->eversion) != 0)
                continue;
            if (e->kind != ANS_NODE_NONE && e->kind != out->kind)
                return ans_ad_err(core, ANS_ECORRUPT, path, "encoding '%s' stored on %s",
                                  out->etype,
                                  out->kind == ANS_NODE_GROUP ? "a group" : "an array");
            out->enc = e->enc;
            return ANS_OK;
        }
        return ANS_OK;
    }
    /* No encoding attributes: files written before anndata 0.7, or other writers. */
    out->legacy = 1;
    if (out->kind == ANS_NODE_ARRAY) {
        out->enc = ANS_ENC_ARRAY; /* or a string array: the caller checks the dtype */
        return ANS_OK;
    }
    const char *h5fmt = ans_json_get_str(ans_json_get(out->attrs, "h5sparse_format"));
    if (h5fmt) {
        if (strcmp(h5fmt, "csr") == 0)
            out->enc = ANS_ENC_CSR;
        else if (strcmp(h5fmt, "csc") == 0)
            out->enc = ANS_ENC_CSC;
        else
            out->enc = ANS_ENC_UNKNOWN;
        return ANS_OK;
    }
    if (ans_json_get(out->attrs, "_index"))
        out->enc = ANS_ENC_DATAFRAME;
    else
        out->enc = ANS_ENC_DICT;
    return ANS_OK;
}

int ans_ad_enc_unknown(const ans_ad_core *core, const char *path, const ans_ad_node *node)
{
    if (node->legacy) {
        const char *h5fmt = ans_json_get_str(ans_json_get(node->attrs, "h5sparse_format"));
        return ans_ad_err(core, ANS_EUNSUPPORTED, path, "unknown legacy sparse format '%s'",
                          h5fmt ? h5fmt : "?");
    }
    return ans_ad_err(core, ANS_EUNSUPPORTED, path, "unknown encoding '%s' (version %s)",
                      node->etype ? node->etype : "?", node->eversion ? node->eversion : "?");
}

int ans_ad_enc_is_matrix(ans_enc enc)
{
    return enc == ANS_ENC_ARRAY || enc == ANS_ENC_CSR || enc == ANS_ENC_CSC;
}

/* ---- store ---------------------------------------------------------------------------------- */

static int keys_push(ans_store *s, const char *key)
{
    char **k = ans_realloc(s->keys, (s->n_keys + 1) * sizeof *k);
    if (!k) return ANS_ENOMEM;
    s->keys = k;
    if (!(k[s->n_keys] = ans_strdup(key))) return ANS_ENOMEM;
    s->n_keys++;
    return ANS_OK;
}

/* Add `path` to the keys when it is a row-aligned matrix, or an encoding we cannot read (opening it
 * then reports the unknown encoding). Other elements (dataframes in obsm, ...) are skipped. */
static int maybe_add_key(ans_store *s, const char *path)
{
    ans_ad_node node;
    ANS_TRY(ans_ad_inspect(s->core, path, &node));
    if (node.kind == ANS_NODE_NONE) return ANS_OK;
    if (ans_ad_enc_is_matrix(node.enc) || node.enc == ANS_ENC_UNKNOWN) return keys_push(s, path);
    return ANS_OK;
}

/* Children of the dict group at `group` (e.g. "layers"), each considered as a key. */
static int add_dict_keys(ans_store *s, const char *group)
{
    ans_ad_node node;
    ANS_TRY(ans_ad_inspect(s->core, group, &node));
    if (node.kind != ANS_NODE_GROUP) return ANS_OK; /* absent (or not a dict): no keys */
    char **names = NULL;
    size_t n = 0;
    ANS_TRY(s->core->c->ops->children(s->core->c, group, &names, &n));
    int rc = ANS_OK;
    for (size_t i = 0; i < n && rc == ANS_OK; i++) {
        char *p = ans_ad_join(group, names[i]);
        if (!p) {
            rc = ANS_ENOMEM;
            break;
        }
        rc = maybe_add_key(s, p);
        free(p);
    }
    ans_kv_names_free(names, n);
    return rc;
}

/* n_obs / n_vars from the obs / var index, X cross-checked. */
static int discover_shape(ans_store *s)
{
    ans_ad_core *core = s->core;
    int have_obs = 0, have_var = 0;
    int rc = ans_ad_frame_length(core, "obs", &s->n_obs);
    if (rc == ANS_OK)
        have_obs = 1;
    else if (rc != ANS_ENOTFOUND)
        return rc;
    rc = ans_ad_frame_length(core, "var", &s->n_vars);
    if (rc == ANS_OK)
        have_var = 1;
    else if (rc != ANS_ENOTFOUND)
        return rc;

    ans_ad_node x;
    ANS_TRY(ans_ad_inspect(core, "X", &x));
    if (x.kind != ANS_NODE_NONE && ans_ad_enc_is_matrix(x.enc)) {
        ans_element *e = NULL;
        rc = ans_ad_element_open(&e, core, "X", have_obs ? s->n_obs : UINT64_MAX,
                                 have_var ? s->n_vars : UINT64_MAX);
        if (rc < 0) return rc;
        int nd = ans_element_ndim(e);
        const uint64_t *sh = ans_element_shape(e);
        if (nd != 2) {
            ans_element_free(e);
            return ans_ad_err(core, ANS_ECORRUPT, "X", "X has %d dimensions, expected 2", nd);
        }
        if (!have_obs) s->n_obs = sh[0];
        if (!have_var) s->n_vars = sh[1];
        have_obs = have_var = 1;
        ans_element_free(e);
    }
    if (!have_obs)
        return ans_ad_err(core, ANS_ECORRUPT, "obs", "missing (and no X to take n_obs from)");
    if (!have_var)
        return ans_ad_err(core, ANS_ECORRUPT, "var", "missing (and no X to take n_vars from)");
    return ANS_OK;
}

static int discover_keys(ans_store *s)
{
    ANS_TRY(maybe_add_key(s, "X"));
    ANS_TRY(add_dict_keys(s, "layers"));
    ANS_TRY(add_dict_keys(s, "obsm"));
    ans_ad_node raw;
    ANS_TRY(ans_ad_inspect(s->core, "raw", &raw));
    s->raw_n_vars = UINT64_MAX;
    if (raw.kind == ANS_NODE_GROUP) {
        if (raw.enc == ANS_ENC_UNKNOWN) return ans_ad_enc_unknown(s->core, "raw", &raw);
        if (raw.enc != ANS_ENC_RAW && !(raw.enc == ANS_ENC_DICT && raw.legacy))
            return ans_ad_err(s->core, ANS_ECORRUPT, "raw", "expected encoding 'raw', found '%s'",
                              raw.etype ? raw.etype : "?");
        s->has_raw = 1;
        int rc = ans_ad_frame_length(s->core, "raw/var", &s->raw_n_vars);
        if (rc == ANS_ENOTFOUND)
            s->raw_n_vars = UINT64_MAX;
        else if (rc < 0)
            return rc;
        ANS_TRY(maybe_add_key(s, "raw/X"));
    }
    return ANS_OK;
}

int ans_store_open(ans_store **out, const char *path, const ans_store_options *opts)
{
    if (!out) return ans_err(ANS_EINVAL, "ans_store_open: out is NULL");
    *out = NULL;
    if (!path || !*path) return ans_err(ANS_EINVAL, "ans_store_open: empty path");
    int threads = 0;
    if (opts) {
        if (opts->version != ANS_STORE_OPTIONS_VERSION)
            return ans_err(ANS_EINVAL, "%s: unsupported ans_store_options version %u", path,
                           opts->version);
        if (opts->threads < 0)
            return ans_err(ANS_EINVAL, "%s: threads must be >= 0 (got %d)", path, opts->threads);
        threads = opts->threads;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return ans_err(ANS_ENOTFOUND, "%s: no such file or directory", path);
        return ans_err(ANS_EIO, "%s: %s", path, strerror(errno));
    }

    ans_ad_core *core = ans_calloc(1, sizeof *core);
    if (!core) return ANS_ENOMEM;
    atomic_init(&core->refs, 1);
    ans_store *s = NULL;
    int rc;
    if (!(core->path = ans_strdup(path))) {
        rc = ANS_ENOMEM;
        goto fail;
    }
    if ((rc = ans_pool_new(&core->pool, threads)) < 0) goto fail;
    if (ans_h5_probe(path))
        rc = ans_h5_open(&core->c, path, core->pool);
    else if (ans_zarr_probe(path))
        rc = ans_zarr_open(&core->c, path, core->pool);
    else
        rc = ans_err(ANS_EUNSUPPORTED, "%s: not an AnnData store (neither zarr nor HDF5)", path);
    if (rc < 0) goto fail;

    if (!(s = ans_calloc(1, sizeof *s))) {
        rc = ANS_ENOMEM;
        goto fail;
    }
    s->core = core;
    core = NULL;
    s->threads = ans_pool_size(s->core->pool);

    ans_ad_node root;
    if ((rc = ans_ad_inspect(s->core, "", &root)) < 0) goto fail;
    if (root.kind != ANS_NODE_GROUP) {
        rc = ans_err(ANS_ECORRUPT, "%s: the root is not a group", path);
        goto fail;
    }
    if (root.enc == ANS_ENC_UNKNOWN && root.etype && strcmp(root.etype, "anndata") == 0) {
        rc = ans_ad_enc_unknown(s->core, "/", &root);
        goto fail;
    }
    if (root.enc != ANS_ENC_ANNDATA && !(root.enc == ANS_ENC_DICT && root.legacy)) {
        rc = ans_err(ANS_ECORRUPT, "%s: not an AnnData store (root encoding-type '%s')", path,
                     root.etype ? root.etype : "?");
        goto fail;
    }
    if ((rc = discover_shape(s)) < 0) goto fail;
    if ((rc = discover_keys(s)) < 0) goto fail;
    *out = s;
    return ANS_OK;

fail:
    ans_ad_core_unref(core);
    ans_store_free(s);
    return rc;
}

void ans_store_free(ans_store *store)
{
    if (!store) return;
    for (size_t i = 0; i < store->n_keys; i++) free(store->keys[i]);
    free(store->keys);
    ans_ad_core_unref(store->core);
    free(store);
}

const char *ans_store_path(const ans_store *store)
{
    return store->core->path;
}

const char *ans_store_container(const ans_store *store)
{
    return store->core->c->kind_name;
}

uint64_t ans_store_n_obs(const ans_store *store)
{
    return store->n_obs;
}

uint64_t ans_store_n_vars(const ans_store *store)
{
    return store->n_vars;
}

int ans_store_threads(const ans_store *store)
{
    return store->threads;
}

size_t ans_store_n_keys(const ans_store *store)
{
    return store->n_keys;
}

const char *ans_store_key(const ans_store *store, size_t i)
{
    return i < store->n_keys ? store->keys[i] : NULL;
}

int ans_store_element(ans_element **out, ans_store *store, const char *key)
{
    if (!out) return ans_err(ANS_EINVAL, "ans_store_element: out is NULL");
    *out = NULL;
    if (!store || !key) return ans_err(ANS_EINVAL, "ans_store_element: NULL argument");
    size_t i = 0;
    while (i < store->n_keys && strcmp(store->keys[i], key) != 0) i++;
    if (i == store->n_keys)
        return ans_ad_err(store->core, ANS_ENOTFOUND, key, "no such row-aligned element");
    uint64_t n_cols = UINT64_MAX;
    if (strcmp(key, "X") == 0 || strncmp(key, "layers/", 7) == 0)
        n_cols = store->n_vars;
    else if (strcmp(key, "raw/X") == 0)
        n_cols = store->raw_n_vars;
    return ans_ad_element_open(out, store->core, key, store->n_obs, n_cols);
}
