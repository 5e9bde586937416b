/* zarr_container.c - ans_zarr_open / ans_zarr_probe and the zarr ans_container.
 *
 * Nodes (groups and arrays) are looked up through one hash table keyed by path. With consolidated
 * metadata (v2 .zmetadata, v3 inline consolidated_metadata in the root zarr.json) the table is filled
 * from it at open, once, so lookups never touch the disk; a path it does not know is looked up in the
 * per-node files (zarr.json, or .zarray / .zgroup + .zattrs) and cached, absent nodes included. The
 * JSON behind every node lives until the container is freed, which is what makes the borrowed
 * attribute objects of the attrs op safe.
 *
 * Arrays hold a reference on the container: it is freed when the last of the opener and its arrays
 * lets go. */
#include "zarr/zarr.h"

#include "common/error.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct znode {
    char *path;
    ans_node_kind kind;
    const ans_json *meta;  /* zarr.json / .zarray / .zgroup (NULL for NONE) */
    const ans_json *attrs; /* never NULL for groups and arrays */
    ans_json *own_meta;    /* when read from files */
    ans_json *own_attrs;
    int failed; /* loading failed: retry on the next lookup */
} znode;

struct ans_zstore {
    ans_container base;
    ans_kv *kv;
    int format;
    int consolidated;
    atomic_int refs;
    pthread_mutex_t mu; /* nodes */
    znode **tab;
    size_t cap, n;
    ans_json *root_doc;  /* v3: root zarr.json */
    ans_json *zmeta_doc; /* v2: .zmetadata */
    ans_json *empty;     /* {} for nodes without attributes */
    pthread_mutex_t ws_mu; /* free workspaces */
    ans_zws *free_ws;
};

/* ---- small accessors used by zarr_array.c ------------------------------------------------------ */

ans_kv *ans_zstore_kv(ans_zstore *zs)
{
    return zs->kv;
}

const char *ans_zstore_path(const ans_zstore *zs)
{
    return zs->base.path;
}

ans_pool *ans_zstore_pool(const ans_zstore *zs)
{
    return zs->base.pool;
}

int ans_zstore_ws_take(ans_zstore *zs, ans_zws **out)
{
    pthread_mutex_lock(&zs->ws_mu);
    ans_zws *ws = zs->free_ws;
    if (ws) zs->free_ws = ws->next;
    pthread_mutex_unlock(&zs->ws_mu);
    if (!ws) ANS_TRY(ans_zws_new(&ws));
    ws->next = NULL;
    *out = ws;
    return ANS_OK;
}

void ans_zstore_ws_give(ans_zstore *zs, ans_zws *ws)
{
    pthread_mutex_lock(&zs->ws_mu);
    ws->next = zs->free_ws;
    zs->free_ws = ws;
    pthread_mutex_unlock(&zs->ws_mu);
}

void ans_zstore_ref(ans_zstore *zs)
{
    atomic_fetch_add(&zs->refs, 1);
}

static void zs_destroy(ans_zstore *zs)
{
    for (size_t i = 0; i < zs->cap; i++) {
        znode *nd = zs->tab[i];
        if (!nd) continue;
        ans_json_free(nd->own_meta);
        ans_json_free(nd->own_attrs);
        free(nd->path);
        free(nd);
    }
    free(zs->tab);
    while (zs->free_ws) {
        ans_zws *ws = zs->free_ws;
        zs->free_ws = ws->next;
        ans_zws_free(ws);
    }
    ans_json_free(zs->root_doc);
    ans_json_free(zs->zmeta_doc);
    ans_json_free(zs->empty);
    ans_kv_free(zs->kv);
    pthread_mutex_destroy(&zs->mu);
    pthread_mutex_destroy(&zs->ws_mu);
    free(zs->base.path);
    free(zs);
}

void ans_zstore_unref(ans_zstore *zs)
{
    if (atomic_fetch_sub(&zs->refs, 1) == 1) zs_destroy(zs);
}

/* ---- node table ------------------------------------------------------------------------------- */

static uint64_t hash_path(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static znode *tab_find(ans_zstore *zs, const char *path, size_t n)
{
    if (!zs->cap) return NULL;
    size_t mask = zs->cap - 1;
    for (size_t i = (size_t)hash_path(path, n) & mask;; i = (i + 1) & mask) {
        znode *nd = zs->tab[i];
        if (!nd) return NULL;
        if (!strncmp(nd->path, path, n) && nd->path[n] == '\0') return nd;
    }
}

static int tab_grow(ans_zstore *zs)
{
    size_t ncap = zs->cap ? zs->cap * 2 : 64;
    znode **nt = ans_calloc(ncap, sizeof *nt);
    if (!nt) return ANS_ENOMEM;
    for (size_t i = 0; i < zs->cap; i++) {
        znode *nd = zs->tab[i];
        if (!nd) continue;
        size_t j = (size_t)hash_path(nd->path, strlen(nd->path)) & (ncap - 1);
        while (nt[j]) j = (j + 1) & (ncap - 1);
        nt[j] = nd;
    }
    free(zs->tab);
    zs->tab = nt;
    zs->cap = ncap;
    return ANS_OK;
}

/* Find or create the node for `path` (n bytes). */
static int tab_get(ans_zstore *zs, const char *path, size_t n, znode **out)
{
    znode *nd = tab_find(zs, path, n);
    if (nd) {
        *out = nd;
        return ANS_OK;
    }
    if ((zs->n + 1) * 2 > zs->cap) ANS_TRY(tab_grow(zs));
    nd = ans_calloc(1, sizeof *nd);
    if (!nd) return ANS_ENOMEM;
    if (!(nd->path = ans_strndup(path, n))) {
        free(nd);
        return ANS_ENOMEM;
    }
    size_t mask = zs->cap - 1, j = (size_t)hash_path(path, n) & mask;
    while (zs->tab[j]) j = (j + 1) & mask;
    zs->tab[j] = nd;
    zs->n++;
    *out = nd;
    return ANS_OK;
}

/* Read and parse the JSON value `key`; *out NULL when it does not exist. */
static int read_json(ans_zstore *zs, const char *key, ans_json **out)
{
    *out = NULL;
    ans_buf b = {0};
    int rc = ans_kv_get(zs->kv, key, &b, (uint64_t)1 << 31);
    if (rc == ANS_ENOTFOUND) return ANS_OK;
    if (rc == ANS_OK) {
        rc = ans_json_parse((const char *)b.data, b.len, out);
        if (rc < 0) ans_err_prefix("%s/%s", zs->base.path, key);
    }
    ans_buf_free(&b);
    return rc;
}

static ans_node_kind v3_kind(const ans_json *meta)
{
    const char *t = ans_json_get_str(ans_json_get(meta, "node_type"));
    if (t && !strcmp(t, "array")) return ANS_NODE_ARRAY;
    if (t && !strcmp(t, "group")) return ANS_NODE_GROUP;
    return ANS_NODE_NONE;
}

static const ans_json *attrs_or_empty(ans_zstore *zs, const ans_json *a)
{
    return a && a->type == ANS_JSON_OBJECT ? a : zs->empty;
}

/* Fill `nd` from the per-node files. */
static int node_load_files(ans_zstore *zs, znode *nd)
{
    char key[ANS_ZKEY_MAX + 16];
    const char *p = nd->path;
    const char *sl = *p ? "/" : "";
    if (strlen(p) > ANS_ZKEY_MAX) return ans_err(ANS_EINVAL, "path '%s' too long", p);
    if (zs->format == 3) {
        snprintf(key, sizeof key, "%s%szarr.json", p, sl);
        ANS_TRY(read_json(zs, key, &nd->own_meta));
        if (!nd->own_meta) return ANS_OK;
        nd->meta = nd->own_meta;
        nd->kind = v3_kind(nd->meta);
        if (nd->kind == ANS_NODE_NONE)
            return ans_err(ANS_ECORRUPT, "%s/%s: node_type is neither array nor group",
                           zs->base.path, key);
        nd->attrs = attrs_or_empty(zs, ans_json_get(nd->meta, "attributes"));
        return ANS_OK;
    }
    snprintf(key, sizeof key, "%s%s.zarray", p, sl);
    ANS_TRY(read_json(zs, key, &nd->own_meta));
    if (nd->own_meta) {
        nd->kind = ANS_NODE_ARRAY;
    } else {
        snprintf(key, sizeof key, "%s%s.zgroup", p, sl);
        ANS_TRY(read_json(zs, key, &nd->own_meta));
        if (!nd->own_meta) return ANS_OK;
        nd->kind = ANS_NODE_GROUP;
    }
    nd->meta = nd->own_meta;
    snprintf(key, sizeof key, "%s%s.zattrs", p, sl);
    ANS_TRY(read_json(zs, key, &nd->own_attrs));
    if (nd->own_attrs && nd->own_attrs->type != ANS_JSON_OBJECT)
        return ans_err(ANS_ECORRUPT, "%s/%s: attributes are not a JSON object", zs->base.path, key);
    nd->attrs = attrs_or_empty(zs, nd->own_attrs);
    return ANS_OK;
}

/* Strip leading and trailing '/'. */
static void norm_path(const char *path, const char **p, size_t *n)
{
    while (*path == '/') path++;
    size_t k = strlen(path);
    while (k && path[k - 1] == '/') k--;
    *p = path;
    *n = k;
}

static int zs_node(ans_zstore *zs, const char *path, znode **out)
{
    const char *p;
    size_t n;
    norm_path(path, &p, &n);
    pthread_mutex_lock(&zs->mu);
    znode *nd = tab_find(zs, p, n);
    int rc = ANS_OK;
    if (!nd || nd->failed) {
        if (!nd) rc = tab_get(zs, p, n, &nd);
        if (rc == ANS_OK) {
            nd->failed = 0;
            rc = node_load_files(zs, nd);
            if (rc < 0) {
                /* Keep the entry (the table has no deletion) as nothing, retried next time. */
                ans_json_free(nd->own_meta);
                ans_json_free(nd->own_attrs);
                nd->own_meta = nd->own_attrs = NULL;
                nd->meta = NULL;
                nd->attrs = NULL;
                nd->kind = ANS_NODE_NONE;
                nd->failed = 1;
            }
        }
    }
    pthread_mutex_unlock(&zs->mu);
    *out = nd;
    return rc;
}

/* ---- consolidated metadata -------------------------------------------------------------------- */

static int load_consolidated_v3(ans_zstore *zs)
{
    const ans_json *cm = ans_json_get(zs->root_doc, "consolidated_metadata");
    if (!cm || cm->type == ANS_JSON_NULL) return ANS_OK;
    const char *kind = ans_json_get_str(ans_json_get(cm, "kind"));
    const ans_json *md = ans_json_get(cm, "metadata");
    if (!kind || strcmp(kind, "inline") || !md || md->type != ANS_JSON_OBJECT)
        return ANS_OK; /* not something we understand: it is only a cache, read the files */
    for (size_t i = 0; i < md->v.o.n; i++) {
        const char *p;
        size_t n;
        norm_path(md->v.o.keys[i], &p, &n);
        const ans_json *meta = md->v.o.vals[i];
        ans_node_kind k = v3_kind(meta);
        if (k == ANS_NODE_NONE || n == 0) continue;
        znode *nd;
        ANS_TRY(tab_get(zs, p, n, &nd));
        nd->kind = k;
        nd->meta = meta;
        nd->attrs = attrs_or_empty(zs, ans_json_get(meta, "attributes"));
    }
    zs->consolidated = 1;
    return ANS_OK;
}

static int load_consolidated_v2(ans_zstore *zs)
{
    const ans_json *md = ans_json_get(zs->zmeta_doc, "metadata");
    if (!md || md->type != ANS_JSON_OBJECT)
        return ans_err(ANS_ECORRUPT, "%s/.zmetadata: no 'metadata' object", zs->base.path);
    /* Nodes first, then their attributes. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < md->v.o.n; i++) {
            const char *key = md->v.o.keys[i];
            const char *slash = strrchr(key, '/');
            const char *leaf = slash ? slash + 1 : key;
            size_t plen = slash ? (size_t)(slash - key) : 0;
            const ans_json *v = md->v.o.vals[i];
            ans_node_kind k = ANS_NODE_NONE;
            if (!strcmp(leaf, ".zarray")) k = ANS_NODE_ARRAY;
            else if (!strcmp(leaf, ".zgroup")) k = ANS_NODE_GROUP;
            else if (strcmp(leaf, ".zattrs")) continue;
            const char *p;
            size_t n;
            char tmp[ANS_ZKEY_MAX];
            if (plen >= sizeof tmp) continue;
            memcpy(tmp, key, plen);
            tmp[plen] = '\0';
            norm_path(tmp, &p, &n);
            if (v->type != ANS_JSON_OBJECT)
                return ans_err(ANS_ECORRUPT, "%s/.zmetadata: '%s' is not an object",
                               zs->base.path, key);
            if (pass == 0 && k != ANS_NODE_NONE) {
                znode *nd;
                ANS_TRY(tab_get(zs, p, n, &nd));
                if (nd->kind == ANS_NODE_ARRAY && k == ANS_NODE_GROUP) continue;
                nd->kind = k;
                nd->meta = v;
                if (!nd->attrs) nd->attrs = zs->empty;
            } else if (pass == 1 && k == ANS_NODE_NONE) {
                znode *nd = tab_find(zs, p, n);
                if (nd && nd->kind != ANS_NODE_NONE) nd->attrs = v;
            }
        }
    }
    zs->consolidated = 1;
    return ANS_OK;
}

/* ---- container ops ---------------------------------------------------------------------------- */

static ans_zstore *zs_of(ans_container *c)
{
    return (ans_zstore *)c;
}

static int zc_node(ans_container *c, const char *path, ans_node_kind *kind)
{
    znode *nd;
    *kind = ANS_NODE_NONE;
    ANS_TRY(zs_node(zs_of(c), path, &nd));
    *kind = nd->kind;
    return ANS_OK;
}

static int zc_attrs(ans_container *c, const char *path, const ans_json **out)
{
    ans_zstore *zs = zs_of(c);
    znode *nd;
    *out = NULL;
    ANS_TRY(zs_node(zs, path, &nd));
    if (nd->kind == ANS_NODE_NONE)
        return ans_err(ANS_ENOTFOUND, "%s: no group or array at '%s'", zs->base.path, path);
    *out = nd->attrs;
    return ANS_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int push_name(char ***v, size_t *n, size_t *cap, const char *s, size_t len)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        char **nv = ans_realloc(*v, nc * sizeof *nv);
        if (!nv) return ANS_ENOMEM;
        *v = nv;
        *cap = nc;
    }
    if (!((*v)[*n] = ans_strndup(s, len))) return ANS_ENOMEM;
    (*n)++;
    return ANS_OK;
}

static int zc_children(ans_container *c, const char *path, char ***names, size_t *count)
{
    ans_zstore *zs = zs_of(c);
    *names = NULL;
    *count = 0;
    znode *nd;
    ANS_TRY(zs_node(zs, path, &nd));
    if (nd->kind != ANS_NODE_GROUP)
        return ans_err(ANS_ENOTFOUND, "%s: no group at '%s'", zs->base.path, path);
    const char *p;
    size_t plen;
    norm_path(path, &p, &plen);
    char **v = NULL;
    size_t n = 0, cap = 0;
    int rc = ANS_OK;
    if (zs->consolidated) {
        pthread_mutex_lock(&zs->mu);
        for (size_t i = 0; i < zs->cap && rc == ANS_OK; i++) {
            znode *ch = zs->tab[i];
            if (!ch || ch->kind == ANS_NODE_NONE) continue;
            const char *cp = ch->path;
            if (plen) {
                if (strncmp(cp, p, plen) || cp[plen] != '/') continue;
                cp += plen + 1;
            }
            if (!*cp || strchr(cp, '/')) continue;
            rc = push_name(&v, &n, &cap, cp, strlen(cp));
        }
        pthread_mutex_unlock(&zs->mu);
    } else {
        char **ls = NULL;
        size_t nls = 0;
        char dir[ANS_ZKEY_MAX];
        if (plen >= sizeof dir) return ans_err(ANS_EINVAL, "path '%s' too long", path);
        memcpy(dir, p, plen);
        dir[plen] = '\0';
        rc = ans_kv_list(zs->kv, dir, &ls, &nls);
        if (rc == ANS_ENOTFOUND) rc = ANS_OK;
        for (size_t i = 0; i < nls && rc == ANS_OK; i++) {
            const char *name = ls[i];
            if (!strncmp(name, ".z", 2) || !strcmp(name, "zarr.json")) continue;
            char child[2 * ANS_ZKEY_MAX];
            size_t nlen = strlen(name);
            if (plen + nlen + 2 > sizeof child) continue;
            memcpy(child, dir, plen);
            size_t k = plen;
            if (plen) child[k++] = '/';
            memcpy(child + k, name, nlen + 1);
            znode *cn;
            rc = zs_node(zs, child, &cn);
            if (rc == ANS_OK && cn->kind != ANS_NODE_NONE)
                rc = push_name(&v, &n, &cap, name, strlen(name));
        }
        ans_kv_names_free(ls, nls);
    }
    if (rc < 0) {
        ans_kv_names_free(v, n);
        return rc;
    }
    if (n) qsort(v, n, sizeof *v, cmp_str);
    *names = v;
    *count = n;
    return ANS_OK;
}

static int zc_open_array(ans_container *c, const char *path, ans_array **out)
{
    ans_zstore *zs = zs_of(c);
    znode *nd;
    *out = NULL;
    ANS_TRY(zs_node(zs, path, &nd));
    if (nd->kind != ANS_NODE_ARRAY)
        return ans_err(ANS_ENOTFOUND, "%s: no array at '%s'", zs->base.path, path);
    if (zs->consolidated) {
        /* The consolidated metadata only repeats the array's own document: an array whose
         * document is gone was deleted (its chunks with it), and reading it would silently give
         * fill values. One stat per array opened. */
        const char *doc = zs->format == 3 ? "zarr.json" : ".zarray";
        char *key = *nd->path ? ans_asprintf("%s/%s", nd->path, doc) : ans_strdup(doc);
        if (!key) return ANS_ENOMEM;
        uint64_t size;
        int rc = ans_kv_size(zs->kv, key, &size);
        free(key);
        if (rc == ANS_ENOTFOUND)
            return ans_err(ANS_ECORRUPT,
                           "%s: array '%s' is in the consolidated metadata but its %s is missing "
                           "(the array was deleted?)",
                           zs->base.path, nd->path, doc);
        if (rc < 0) return ans_err_prefix("%s: array '%s'", zs->base.path, nd->path);
    }
    return ans_zarray_open(zs, nd->path, nd->meta, out);
}

static void zc_free(ans_container *c)
{
    if (c) ans_zstore_unref(zs_of(c));
}

static const struct ans_container_ops zarr_container_ops = {
    zc_node,
    zc_attrs,
    zc_children,
    zc_open_array,
    zc_free,
};

/* ---- open / probe ----------------------------------------------------------------------------- */

int ans_zarr_open(ans_container **out, const char *path, ans_pool *pool)
{
    *out = NULL;
    ans_zstore *zs = ans_calloc(1, sizeof *zs);
    if (!zs) return ANS_ENOMEM;
    if (pthread_mutex_init(&zs->mu, NULL) != 0) {
        free(zs);
        return ans_err(ANS_EGENERIC, "pthread_mutex_init failed");
    }
    if (pthread_mutex_init(&zs->ws_mu, NULL) != 0) {
        pthread_mutex_destroy(&zs->mu);
        free(zs);
        return ans_err(ANS_EGENERIC, "pthread_mutex_init failed");
    }
    atomic_init(&zs->refs, 1);
    zs->base.ops = &zarr_container_ops;
    zs->base.pool = pool;
    int rc = ANS_OK;
    if (!(zs->base.path = ans_strdup(path)) || !(zs->empty = ans_json_new_object())) {
        rc = ANS_ENOMEM;
        goto fail;
    }
    if ((rc = ans_kv_open_dir(&zs->kv, path)) < 0) goto fail;
    if ((rc = read_json(zs, "zarr.json", &zs->root_doc)) < 0) goto fail;
    if (zs->root_doc) {
        int64_t zf = 0;
        if (ans_json_get_i64(ans_json_get(zs->root_doc, "zarr_format"), &zf) != 0 || zf != 3) {
            rc = ans_err(ANS_EUNSUPPORTED, "%s/zarr.json: zarr_format %lld is not supported", path,
                         (long long)zf);
            goto fail;
        }
        zs->format = 3;
        zs->base.kind_name = "zarr-v3";
        znode *root;
        if ((rc = tab_get(zs, "", 0, &root)) < 0) goto fail;
        root->meta = zs->root_doc;
        root->kind = v3_kind(zs->root_doc);
        if (root->kind == ANS_NODE_NONE) {
            rc = ans_err(ANS_ECORRUPT, "%s/zarr.json: node_type is neither group nor array", path);
            goto fail;
        }
        root->attrs = attrs_or_empty(zs, ans_json_get(zs->root_doc, "attributes"));
        if ((rc = load_consolidated_v3(zs)) < 0) goto fail;
    } else {
        zs->format = 2;
        zs->base.kind_name = "zarr-v2";
        if ((rc = read_json(zs, ".zmetadata", &zs->zmeta_doc)) < 0) goto fail;
        if (zs->zmeta_doc) {
            if ((rc = load_consolidated_v2(zs)) < 0) goto fail;
        }
        znode *root;
        if ((rc = zs_node(zs, "", &root)) < 0) goto fail;
        if (root->kind == ANS_NODE_NONE) {
            rc = ans_err(ANS_ECORRUPT,
                         "%s: not a zarr store (no zarr.json, .zgroup, .zarray or .zmetadata)",
                         path);
            goto fail;
        }
    }
    *out = &zs->base;
    return ANS_OK;
fail:
    zs_destroy(zs);
    return rc;
}

int ans_zarr_probe(const char *path)
{
    static const char *const names[] = {"zarr.json", ".zgroup", ".zarray", ".zmetadata"};
    char buf[4096];
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if ((size_t)snprintf(buf, sizeof buf, "%s/%s", path, names[i]) >= sizeof buf) return 0;
        if (stat(buf, &st) == 0 && S_ISREG(st.st_mode)) return 1;
    }
    return 0;
}
