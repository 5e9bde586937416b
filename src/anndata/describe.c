/* describe.c - ans_store_describe: the element tree as JSON or as readable text (annstream info).
 *
 * The JSON document is built first; the text view is rendered from it, so both always agree:
 *
 *   {"path": ..., "container": "zarr-v3", "n_obs": N, "n_vars": M, "threads": T,
 *    "keys": ["X", ...], "stored_bytes": S, "nbytes": B,
 *    "root": NODE}
 *   NODE = {"path": "X", "name": "X", "kind": "group" | "array",
 *           "encoding-type": ..., "encoding-version": ...,          (when present)
 *           "shape": [...],                                         (arrays; sparse groups)
 *           "dtype": "float32", chunks, shards, codecs, ...         (arrays: the backend's facts)
 *           "stored_bytes": S, "nbytes": B,                         (groups: sums over children)
 *           "nbytes_partial": true,     (groups: some arrays, e.g. vlen strings, have no nbytes)
 *           "ratio": R,                 (nbytes / stored_bytes over the arrays knowing both)
 *           "children": [NODE, ...],                                (groups)
 *           "error": "..."}                                         (when the node is unreadable)
 *
 * One unreadable node does not fail the description: its error is recorded in the node. Out of
 * memory does. Recursion stops at DESCRIBE_MAX_DEPTH ("truncated": true), which also guards against
 * HDF5 link cycles. */
#include "anndata/anndata.h"

#include "storage/store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DESCRIBE_MAX_DEPTH 32

/* ---- JSON ----------------------------------------------------------------------------------- */

static int set_str(ans_json *obj, const char *key, const char *v)
{
    ans_json *j = ans_json_new_str(v);
    if (!j) return ANS_ENOMEM;
    return ans_json_set(obj, key, j);
}

static int set_u64(ans_json *obj, const char *key, uint64_t v)
{
    ans_json *j = ans_json_new_uint(v);
    if (!j) return ANS_ENOMEM;
    return ans_json_set(obj, key, j);
}

static int set_shape(ans_json *obj, const uint64_t *shape, int ndim)
{
    ans_json *arr = ans_json_new_array();
    if (!arr) return ANS_ENOMEM;
    for (int i = 0; i < ndim; i++) {
        ans_json *v = ans_json_new_uint(shape[i]);
        if (!v || ans_json_push(arr, v) < 0) {
            ans_json_free(arr);
            return ANS_ENOMEM;
        }
    }
    return ans_json_set(obj, "shape", arr);
}

/* Record the thread's last error in the node; out of memory is passed on. */
static int node_error(ans_json *obj, int rc)
{
    if (rc == ANS_ENOMEM) return rc;
    return set_str(obj, "error", ans_error_last());
}

/* Size accounting of a subtree. */
typedef struct sizes {
    uint64_t stored, nbytes;   /* sums (nbytes over the arrays that report it) */
    uint64_t kstored, knbytes; /* sums over the arrays reporting both: for the ratio */
    int partial;               /* some array did not report nbytes */
} sizes;

static void sizes_add(sizes *a, const sizes *b)
{
    if (ans_add_overflow(a->stored, b->stored, &a->stored)) a->stored = UINT64_MAX;
    if (ans_add_overflow(a->nbytes, b->nbytes, &a->nbytes)) a->nbytes = UINT64_MAX;
    if (ans_add_overflow(a->kstored, b->kstored, &a->kstored)) a->kstored = UINT64_MAX;
    if (ans_add_overflow(a->knbytes, b->knbytes, &a->knbytes)) a->knbytes = UINT64_MAX;
    a->partial |= b->partial;
}

/* stored_bytes, nbytes, nbytes_partial and ratio of a group or the document. */
static int set_sizes(ans_json *obj, const sizes *z)
{
    ANS_TRY(set_u64(obj, "stored_bytes", z->stored));
    ANS_TRY(set_u64(obj, "nbytes", z->nbytes));
    if (z->partial) {
        ans_json *t = ans_json_new_bool(1);
        if (!t) return ANS_ENOMEM;
        ANS_TRY(ans_json_set(obj, "nbytes_partial", t));
    }
    if (z->kstored > 0) {
        ans_json *r = ans_json_new_double((double)z->knbytes / (double)z->kstored);
        if (!r) return ANS_ENOMEM;
        ANS_TRY(ans_json_set(obj, "ratio", r));
    }
    return ANS_OK;
}

static int describe_node(ans_ad_core *core, const char *path, const char *name, int depth,
                         ans_json **out, sizes *z);

static int describe_array(ans_ad_core *core, const char *path, ans_json *obj, sizes *z)
{
    ans_array *a = NULL;
    int rc = core->c->ops->open_array(core->c, path, &a);
    if (rc < 0) return node_error(obj, rc);
    if ((rc = set_shape(obj, a->shape, a->ndim)) < 0 ||
        (rc = set_str(obj, "dtype", ans_dtype_name(a->dtype))) < 0) {
        ans_array_free(a);
        return rc;
    }
    rc = a->ops->describe(a, obj);
    ans_array_free(a);
    if (rc < 0) return node_error(obj, rc);
    uint64_t st = 0, nb = 0;
    int has_st = ans_json_get_u64(ans_json_get(obj, "stored_bytes"), &st) == 0;
    int has_nb = ans_json_get_u64(ans_json_get(obj, "nbytes"), &nb) == 0;
    z->stored = st;
    z->nbytes = nb;
    z->partial = !has_nb;
    if (has_st && has_nb) {
        z->kstored = st;
        z->knbytes = nb;
        if (st > 0) {
            ans_json *r = ans_json_new_double((double)nb / (double)st);
            if (!r) return ANS_ENOMEM;
            ANS_TRY(ans_json_set(obj, "ratio", r));
        }
    }
    return ANS_OK;
}

static int describe_group(ans_ad_core *core, const char *path, int depth, ans_json *obj,
                          sizes *z)
{
    if (depth >= DESCRIBE_MAX_DEPTH) {
        ans_json *t = ans_json_new_bool(1);
        return t ? ans_json_set(obj, "truncated", t) : ANS_ENOMEM;
    }
    char **names = NULL;
    size_t n = 0;
    int rc = core->c->ops->children(core->c, path, &names, &n);
    if (rc < 0) return node_error(obj, rc);
    ans_json *children = ans_json_new_array();
    if (!children) {
        ans_kv_names_free(names, n);
        return ANS_ENOMEM;
    }
    for (size_t i = 0; i < n && rc == ANS_OK; i++) {
        char *cp = ans_ad_join(path, names[i]);
        ans_json *child = NULL;
        sizes cz = {0};
        rc = cp ? describe_node(core, cp, names[i], depth + 1, &child, &cz) : ANS_ENOMEM;
        free(cp);
        if (rc == ANS_OK) rc = ans_json_push(children, child);
        sizes_add(z, &cz);
    }
    ans_kv_names_free(names, n);
    if (rc < 0) {
        ans_json_free(children);
        return rc;
    }
    if ((rc = set_sizes(obj, z)) < 0) {
        ans_json_free(children);
        return rc;
    }
    return ans_json_set(obj, "children", children);
}

static int describe_node(ans_ad_core *core, const char *path, const char *name, int depth,
                         ans_json **out, sizes *z)
{
    *out = NULL;
    memset(z, 0, sizeof *z);
    ans_json *obj = ans_json_new_object();
    if (!obj) return ANS_ENOMEM;
    int rc;
    if ((rc = set_str(obj, "path", path)) < 0 || (rc = set_str(obj, "name", name)) < 0) goto done;
    ans_node_kind kind;
    const ans_json *attrs = NULL;
    if ((rc = core->c->ops->node(core->c, path, &kind)) < 0) {
        rc = node_error(obj, rc);
        goto done;
    }
    if ((rc = set_str(obj, "kind", kind == ANS_NODE_GROUP   ? "group"
                                   : kind == ANS_NODE_ARRAY ? "array"
                                                            : "none")) < 0)
        goto done;
    if (kind == ANS_NODE_NONE) goto done;
    if ((rc = core->c->ops->attrs(core->c, path, &attrs)) < 0) {
        rc = node_error(obj, rc);
        goto done;
    }
    const char *et = ans_json_get_str(ans_json_get(attrs, "encoding-type"));
    const char *ev = ans_json_get_str(ans_json_get(attrs, "encoding-version"));
    if (et && (rc = set_str(obj, "encoding-type", et)) < 0) goto done;
    if (ev && (rc = set_str(obj, "encoding-version", ev)) < 0) goto done;
    if (kind == ANS_NODE_ARRAY) {
        rc = describe_array(core, path, obj, z);
    } else {
        uint64_t shape[2];
        const ans_json *sh = ans_json_get(attrs, "shape");
        if (!sh) sh = ans_json_get(attrs, "h5sparse_shape");
        if (ans_ad_json_u64s(sh, shape, 2) == 0 && (rc = set_shape(obj, shape, 2)) < 0) goto done;
        rc = describe_group(core, path, depth, obj, z);
    }
done:
    if (rc < 0) {
        ans_json_free(obj);
        return rc;
    }
    *out = obj;
    return ANS_OK;
}

static int describe_json(ans_store *s, ans_json **out)
{
    ans_ad_core *core = s->core;
    ans_json *doc = ans_json_new_object();
    if (!doc) return ANS_ENOMEM;
    ans_json *keys = NULL, *root = NULL;
    sizes z = {0};
    int rc;
    if ((rc = set_str(doc, "path", core->path)) < 0 ||
        (rc = set_str(doc, "container", core->c->kind_name)) < 0 ||
        (rc = set_u64(doc, "n_obs", s->n_obs)) < 0 ||
        (rc = set_u64(doc, "n_vars", s->n_vars)) < 0 ||
        (rc = set_u64(doc, "threads", (uint64_t)s->threads)) < 0)
        goto fail;
    if (!(keys = ans_json_new_array())) {
        rc = ANS_ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < s->n_keys; i++) {
        ans_json *k = ans_json_new_str(s->keys[i]);
        if (!k || ans_json_push(keys, k) < 0) {
            rc = ANS_ENOMEM;
            goto fail;
        }
    }
    rc = ans_json_set(doc, "keys", keys);
    keys = NULL;
    if (rc < 0) goto fail;
    if ((rc = describe_node(core, "", "/", 0, &root, &z)) < 0) goto fail;
    if ((rc = set_sizes(doc, &z)) < 0) goto fail;
    rc = ans_json_set(doc, "root", root);
    root = NULL;
    if (rc < 0) goto fail;
    *out = doc;
    return ANS_OK;
fail:
    ans_json_free(keys);
    ans_json_free(root);
    ans_json_free(doc);
    return rc;
}

/* ---- text ----------------------------------------------------------------------------------- */

enum { C_NAME, C_ENC, C_SHAPE, C_DTYPE, C_CHUNKS, C_SHARDS, C_CODECS, C_STORED, C_NBYTES, C_RATIO,
       C_NOTE, NCOLS };

static const char *const k_heads[NCOLS] = {"element", "encoding", "shape",  "dtype",
                                           "chunks",  "shards",   "codecs", "stored",
                                           "nbytes",  "ratio",    "note"};
static const int k_right[NCOLS] = {0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0};

typedef struct trow {
    char *cell[NCOLS];
} trow;

typedef struct table {
    trow *rows;
    size_t n, cap;
} table;

static void table_free(table *t)
{
    for (size_t i = 0; i < t->n; i++)
        for (int c = 0; c < NCOLS; c++) free(t->rows[i].cell[c]);
    free(t->rows);
}

static trow *table_add(table *t)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 32;
        trow *r = ans_realloc(t->rows, cap * sizeof *r);
        if (!r) return NULL;
        t->rows = r;
        t->cap = cap;
    }
    trow *r = &t->rows[t->n++];
    memset(r, 0, sizeof *r);
    return r;
}

/* Display width of UTF-8 text (code points). */
static size_t text_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) w++;
    return w;
}

static void human_size(uint64_t v, char *buf, size_t cap)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (v < 1024) {
        snprintf(buf, cap, "%" PRIu64 " B", v);
        return;
    }
    double d = (double)v / 1024.0;
    size_t u = 0;
    while (d >= 1024.0 && u + 1 < sizeof units / sizeof units[0]) {
        d /= 1024.0;
        u++;
    }
    snprintf(buf, cap, "%.1f %s", d, units[u]);
}

/* The "ratio" member as "3.42x", or "-" without one. */
static void ratio_str(const ans_json *node, char *buf, size_t cap)
{
    double r;
    if (ans_json_get_double(ans_json_get(node, "ratio"), &r) != 0)
        snprintf(buf, cap, "-");
    else
        snprintf(buf, cap, "%.2fx", r);
}

/* "100 x 50" from a JSON list of integers; NULL if it is not one. */
static int dims_str(const ans_json *v, ans_buf *b)
{
    if (!v || v->type != ANS_JSON_ARRAY) return ANS_OK;
    if (ans_json_len(v) == 0) return ans_buf_printf(b, "()");
    for (size_t i = 0; i < ans_json_len(v); i++) {
        uint64_t x;
        if (ans_json_get_u64(ans_json_at(v, i), &x) != 0) x = 0;
        ANS_TRY(ans_buf_printf(b, "%s%" PRIu64, i ? " x " : "", x));
    }
    return ANS_OK;
}

static int codecs_str(const ans_json *v, ans_buf *b);

static int codec_str(const ans_json *c, ans_buf *b)
{
    const char *s = ans_json_get_str(c);
    if (s) return ans_buf_printf(b, "%s", s);
    const ans_json *cfg = ans_json_get(c, "configuration");
    const char *name = ans_json_get_str(ans_json_get(c, "name"));
    if (!name) {
        name = ans_json_get_str(ans_json_get(c, "id"));
        cfg = c; /* numcodecs: the options sit next to the id */
    }
    if (!name) return ans_buf_printf(b, "?");
    if (strcmp(name, "sharding_indexed") == 0) {
        ANS_TRY(ans_buf_printf(b, "shard["));
        ANS_TRY(codecs_str(ans_json_get(cfg, "codecs"), b));
        return ans_buf_printf(b, "]");
    }
    ANS_TRY(ans_buf_printf(b, "%s", name));
    const char *cname = ans_json_get_str(ans_json_get(cfg, "cname"));
    int64_t level;
    if (cname)
        ANS_TRY(ans_buf_printf(b, "(%s)", cname));
    else if (ans_json_get_i64(ans_json_get(cfg, "level"), &level) == 0)
        ANS_TRY(ans_buf_printf(b, "(%" PRId64 ")", level));
    return ANS_OK;
}

/* Codec names joined by '+', leaving out the plain "bytes" serialiser. */
static int codecs_str(const ans_json *v, ans_buf *b)
{
    if (!v || v->type != ANS_JSON_ARRAY) return ANS_OK;
    int first = 1;
    for (size_t i = 0; i < ans_json_len(v); i++) {
        const ans_json *c = ans_json_at(v, i);
        const char *name = ans_json_get_str(ans_json_get(c, "name"));
        if (!name) name = ans_json_get_str(c);
        if (name && strcmp(name, "bytes") == 0 && ans_json_len(v) > 1) continue;
        if (!first) ANS_TRY(ans_buf_printf(b, "+"));
        first = 0;
        ANS_TRY(codec_str(c, b));
    }
    return ANS_OK;
}

/* Move the buffer's text into a cell (an empty buffer gives NULL). */
static int take_cell(ans_buf *b, char **cell)
{
    if (b->len == 0) {
        ans_buf_free(b);
        return ANS_OK;
    }
    *cell = (char *)b->data; /* ans_buf_printf keeps it NUL-terminated */
    b->data = NULL;
    b->len = b->cap = 0;
    return ANS_OK;
}

static int dup_cell(const char *s, char **cell)
{
    if (!s || !*s) return ANS_OK;
    return (*cell = ans_strdup(s)) ? ANS_OK : ANS_ENOMEM;
}

static int add_rows(table *t, const ans_json *node, int depth)
{
    trow *r = table_add(t);
    if (!r) return ANS_ENOMEM;
    ans_buf b = {0};
    int rc = ANS_OK;
    const char *name = ans_json_get_str(ans_json_get(node, "name"));
    const char *kind = ans_json_get_str(ans_json_get(node, "kind"));
    int is_group = kind && strcmp(kind, "group") == 0;
    for (int i = 0; i < depth && rc == ANS_OK; i++) rc = ans_buf_printf(&b, "  ");
    if (rc == ANS_OK) rc = ans_buf_printf(&b, "%s%s", name ? name : "?",
                                          is_group && depth > 0 ? "/" : "");
    if (rc == ANS_OK) rc = take_cell(&b, &r->cell[C_NAME]);

    const char *et = ans_json_get_str(ans_json_get(node, "encoding-type"));
    const char *ev = ans_json_get_str(ans_json_get(node, "encoding-version"));
    if (rc == ANS_OK && et) rc = ans_buf_printf(&b, "%s%s%s", et, ev ? " " : "", ev ? ev : "");
    if (rc == ANS_OK) rc = take_cell(&b, &r->cell[C_ENC]);
    if (rc == ANS_OK) rc = dims_str(ans_json_get(node, "shape"), &b);
    if (rc == ANS_OK) rc = take_cell(&b, &r->cell[C_SHAPE]);
    if (rc == ANS_OK && !is_group)
        rc = dup_cell(ans_json_get_str(ans_json_get(node, "dtype")), &r->cell[C_DTYPE]);
    if (rc == ANS_OK) rc = dims_str(ans_json_get(node, "chunks"), &b);
    if (rc == ANS_OK) rc = take_cell(&b, &r->cell[C_CHUNKS]);
    if (rc == ANS_OK) rc = dims_str(ans_json_get(node, "shards"), &b);
    if (rc == ANS_OK) rc = take_cell(&b, &r->cell[C_SHARDS]);
    if (rc == ANS_OK) rc = codecs_str(ans_json_get(node, "codecs"), &b);
    if (rc == ANS_OK) rc = take_cell(&b, &r->cell[C_CODECS]);

    uint64_t st = 0, nb = 0;
    int has_st = ans_json_get_u64(ans_json_get(node, "stored_bytes"), &st) == 0;
    int has_nb = ans_json_get_u64(ans_json_get(node, "nbytes"), &nb) == 0;
    char tmp[64];
    if (rc == ANS_OK && has_st) {
        human_size(st, tmp, sizeof tmp);
        rc = dup_cell(tmp, &r->cell[C_STORED]);
    }
    if (rc == ANS_OK && has_nb) {
        human_size(nb, tmp, sizeof tmp);
        if (ans_json_get(node, "nbytes_partial")) strncat(tmp, "+", sizeof tmp - strlen(tmp) - 1);
        rc = dup_cell(tmp, &r->cell[C_NBYTES]);
    }
    if (rc == ANS_OK && ans_json_get(node, "ratio")) {
        ratio_str(node, tmp, sizeof tmp);
        rc = dup_cell(tmp, &r->cell[C_RATIO]);
    }
    const char *err = ans_json_get_str(ans_json_get(node, "error"));
    if (rc == ANS_OK && err) {
        rc = ans_buf_printf(&b, "error: %s", err);
        if (rc == ANS_OK) rc = take_cell(&b, &r->cell[C_NOTE]);
    }
    if (rc == ANS_OK && !err && ans_json_get(node, "truncated"))
        rc = dup_cell("deeper levels not shown", &r->cell[C_NOTE]);
    ans_buf_free(&b);
    if (rc < 0) return rc;
    const ans_json *children = ans_json_get(node, "children");
    for (size_t i = 0; i < ans_json_len(children) && rc == ANS_OK; i++)
        rc = add_rows(t, ans_json_at(children, i), depth + 1);
    return rc;
}

static int pad(ans_buf *out, size_t n)
{
    for (size_t i = 0; i < n; i++) ANS_TRY(ans_buf_append(out, " ", 1));
    return ANS_OK;
}

static int render_table(const table *t, ans_buf *out)
{
    size_t w[NCOLS];
    int used[NCOLS];
    for (int c = 0; c < NCOLS; c++) {
        w[c] = text_width(k_heads[c]);
        used[c] = c == C_NAME;
        for (size_t i = 0; i < t->n; i++) {
            const char *s = t->rows[i].cell[c];
            if (!s) continue;
            used[c] = 1;
            size_t tw = text_width(s);
            if (tw > w[c]) w[c] = tw;
        }
    }
    for (size_t r = 0; r <= t->n; r++) {
        int first = 1;
        size_t pending = 0; /* spaces owed before the next cell */
        for (int c = 0; c < NCOLS; c++) {
            if (!used[c]) continue;
            const char *s = r == 0 ? k_heads[c] : t->rows[r - 1].cell[c];
            if (!s) s = "";
            size_t tw = text_width(s);
            if (!first) pending += 2;
            first = 0;
            if (k_right[c]) pending += w[c] - (tw < w[c] ? tw : w[c]);
            if (*s) {
                ANS_TRY(pad(out, pending));
                pending = 0;
                ANS_TRY(ans_buf_printf(out, "%s", s));
            }
            if (!k_right[c]) pending += w[c] - (tw < w[c] ? tw : w[c]);
        }
        ANS_TRY(ans_buf_printf(out, "\n"));
    }
    return ANS_OK;
}

static int describe_text(const ans_json *doc, ans_buf *out)
{
    uint64_t n_obs = 0, n_vars = 0, st = 0, nb = 0;
    ans_json_get_u64(ans_json_get(doc, "n_obs"), &n_obs);
    ans_json_get_u64(ans_json_get(doc, "n_vars"), &n_vars);
    ans_json_get_u64(ans_json_get(doc, "stored_bytes"), &st);
    ans_json_get_u64(ans_json_get(doc, "nbytes"), &nb);
    char s1[64], s2[64], s3[64];
    human_size(st, s1, sizeof s1);
    human_size(nb, s2, sizeof s2);
    ratio_str(doc, s3, sizeof s3);
    const char *path = ans_json_get_str(ans_json_get(doc, "path"));
    const char *container = ans_json_get_str(ans_json_get(doc, "container"));
    ANS_TRY(ans_buf_printf(out, "path       %s\n", path ? path : "?"));
    ANS_TRY(ans_buf_printf(out, "container  %s\n", container ? container : "?"));
    ANS_TRY(ans_buf_printf(out, "shape      %" PRIu64 " obs x %" PRIu64 " vars\n", n_obs, n_vars));
    ANS_TRY(ans_buf_printf(out, "keys       "));
    const ans_json *keys = ans_json_get(doc, "keys");
    if (ans_json_len(keys) == 0) ANS_TRY(ans_buf_printf(out, "(none)"));
    for (size_t i = 0; i < ans_json_len(keys); i++)
        ANS_TRY(ans_buf_printf(out, "%s%s", i ? ", " : "", ans_json_get_str(ans_json_at(keys, i))));
    ANS_TRY(ans_buf_printf(out, "\nsize       %s stored, %s%s uncompressed (ratio %s)\n\n", s1, s2,
                           ans_json_get(doc, "nbytes_partial") ? "+" : "", s3));
    table t = {0};
    int rc = add_rows(&t, ans_json_get(doc, "root"), 0);
    if (rc == ANS_OK) rc = render_table(&t, out);
    table_free(&t);
    return rc;
}

/* ---- entry point ---------------------------------------------------------------------------- */

int ans_store_describe(ans_store *store, int json, char **out)
{
    if (!out) return ans_err(ANS_EINVAL, "ans_store_describe: out is NULL");
    *out = NULL;
    if (!store) return ans_err(ANS_EINVAL, "ans_store_describe: store is NULL");
    ans_json *doc = NULL;
    ANS_TRY(describe_json(store, &doc));
    ans_buf b = {0};
    int rc = json ? ans_json_write(doc, 2, &b) : describe_text(doc, &b);
    if (rc == ANS_OK) rc = ans_buf_append(&b, json ? "\n" : "", json ? 2 : 1);
    ans_json_free(doc);
    if (rc < 0) {
        ans_buf_free(&b);
        return rc;
    }
    *out = (char *)b.data;
    return ANS_OK;
}
