/* zarrw.c - the zarr v3 writer (see zarrw.h). */
#define _GNU_SOURCE /* O_DIRECT; nftw */
#include "writer/zarrw.h"

#include "codec/codec.h"
#include "common/error.h"
#include "common/mem.h"
#include "storage/store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ZW_OMIT UINT64_MAX /* index entry of an omitted unit */
#define ZW_KEY_MAX 4096

#define ZW_SPARES 6
#define ZW_ALIGN 4096                      /* direct I/O: buffer, size and offset alignment */
#define ZW_DIRECT_MIN ((size_t)1 << 20)    /* values from this size are written with O_DIRECT */
#define ZW_SPARE_MIN ((size_t)1 << 20)

typedef struct zw_task zw_task;
#define ZW_TASKS 1 /* shard tasks in flight at most */

struct ans_zw {
    ans_kv *kv;
    char *root;       /* the output path (messages name it) */
    char *tmp;        /* the temporary sibling directory written into until finish renames it */
    int committed;    /* tmp was renamed to root */
    ans_pool *pool;   /* borrowed, may be NULL */
    ans_json *cons;   /* path -> zarr.json of every node but the root, creation order */
    ans_json *rattrs; /* root group attributes (NULL until ans_zw_group(w, "")) */
    int root_made;
    int finished;
    int open_arrays;
    ans_zwa *open; /* arrays created and not yet closed (their paths are taken) */
    /* Large block / encode buffers of closed arrays, handed to the next arrays that need that
     * much: a collection writes the same arrays dataset after dataset, and fresh buffers cost a
     * page fault and a zeroed page per 4 KiB. Held memory never exceeds what the closed arrays
     * held. */
    ans_buf spare[ZW_SPARES];
    /* Shard tasks (see "shard tasks" below): a writer thread writes large encoded shards, one at
     * a time, while the caller goes on. Started with the first task; joined by ans_zw_finish /
     * ans_zw_free. The fields from wstop on are under wmu. */
    int wth_on;  /* the thread runs */
    int wsync;   /* wmu / wcv are initialised */
    int wfailed; /* no thread could be had: everything is written by the caller */
    pthread_t wth;
    pthread_mutex_t wmu;
    pthread_cond_t wcv;
    int wstop;        /* the thread should exit once nothing is pending */
    int wbusy;        /* tasks pending or running */
    zw_task *wtask;   /* pending tasks (FIFO through ->next), not yet taken */
    ans_buf wret[ZW_TASKS]; /* finished tasks' buffers, back to the caller */
    ans_errinfo werr; /* the first failed task (code 0: none) */
};

static int zw_drain(ans_zw *w, int limit);
static void zw_writer_stop(ans_zw *w);

struct ans_zwa {
    ans_zw *w;
    char *path;
    ans_zw_array_opts o; /* attrs moved into `attrs` */
    ans_json *attrs;
    size_t elsize;      /* bytes per element (0 for strings) */
    uint64_t row_elems; /* elements per row: product of shape[1..) */
    size_t row_bytes;
    uint64_t unit_rows;  /* rows per unit (chunk or inner chunk) */
    uint64_t block_rows; /* rows per stored value (shard or chunk) */
    uint64_t nunits;     /* units per block: block_rows / unit_rows */
    size_t unit_bytes;
    size_t block_bytes; /* block_rows * row_bytes: the most `buf` ever holds */
    size_t bound;       /* encoded bound of one unit */
    uint64_t nrows;     /* rows appended */
    uint64_t bfill;     /* rows in the current block */
    uint64_t bindex;    /* index of the current block along axis 0 */
    ans_buf buf;        /* numbers: the block's rows; strings: item bytes */
    ans_buf soff;       /* strings: item end offsets into buf (uint64 per item) */
    ans_buf vlen;       /* strings: the vlen-utf8 encoded chunk */
    ans_buf enc;        /* encoded block */
    uint64_t *lens;     /* encoded length of each unit (ZW_OMIT = omitted) */
    uint64_t *offs;     /* offset of each unit in the shard */
    int counted;        /* included in w->open_arrays and linked into w->open */
    ans_zwa *next;
};

/* ---- helpers ------------------------------------------------------------------------------------
 */

static int zw_err_node(const ans_zw *w, const char *path, int rc)
{
    ans_err_prefix("%s: %s", w->root, path[0] ? path : "(root)");
    return rc;
}

static int jset(ans_json *obj, const char *key, ans_json *val)
{
    if (!val) return ANS_ENOMEM; /* the builder recorded the message */
    return ans_json_set(obj, key, val);
}

static int jpush(ans_json *arr, ans_json *val)
{
    if (!val) return ANS_ENOMEM;
    return ans_json_push(arr, val);
}

static int host_little_endian(void)
{
    const uint16_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* Node paths: '/'-separated names, no empty or "."/".." components, no leading or trailing '/'. */
static int path_ok(const char *p)
{
    if (!p[0]) return 1;
    const char *s = p;
    for (;;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
        if (!e) break;
        s = e + 1;
    }
    return strlen(p) < ZW_KEY_MAX - 64;
}

static int path_taken(const ans_zw *w, const char *path)
{
    if (!path[0]) return w->root_made;
    for (const ans_zwa *a = w->open; a; a = a->next)
        if (!strcmp(a->path, path)) return 1;
    return ans_json_get(w->cons, path) != NULL;
}

static int write_json(ans_zw *w, const char *key, const ans_json *doc)
{
    ans_buf b = {0};
    int rc = ans_json_write(doc, 2, &b);
    if (rc == ANS_OK) rc = ans_kv_set(w->kv, key, b.data, b.len);
    ans_buf_free(&b);
    return rc;
}

/* Write `<path>/zarr.json` and record a copy for consolidation. Takes `doc`. */
static int put_node(ans_zw *w, const char *path, ans_json *doc)
{
    char key[ZW_KEY_MAX];
    snprintf(key, sizeof key, "%s/zarr.json", path);
    int rc = write_json(w, key, doc);
    if (rc == ANS_OK)
        rc = ans_json_set(w->cons, path, doc);
    else
        ans_json_free(doc);
    return rc;
}

/* ---- writer -------------------------------------------------------------------------------------
 */

/* mkdir -p of the directory holding `path` (its last component is left alone). */
static int make_parents(const char *path)
{
    char *p = ans_strdup(path);
    if (!p) return ANS_ENOMEM;
    char *last = strrchr(p, '/');
    int rc = ANS_OK;
    if (last && last != p) {
        *last = '\0';
        for (char *c = p + 1;; c++) {
            if (*c != '/' && *c != '\0') continue;
            char keep = *c;
            *c = '\0';
            if (mkdir(p, 0777) != 0 && errno != EEXIST) {
                rc = ans_err(ANS_EIO, "%s: cannot create directory: %s", p, strerror(errno));
                break;
            }
            *c = keep;
            if (!keep) break;
        }
    }
    free(p);
    return rc;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

int ans_zw_create(ans_zw **out, const char *root, ans_pool *pool)
{
    *out = NULL;
    if (!root || !root[0]) return ans_err(ANS_EINVAL, "zarr writer: empty output path");
    if (!host_little_endian())
        return ans_err(ANS_EUNSUPPORTED, "%s: the zarr writer needs a little-endian host", root);
    ans_zw *w = ans_calloc(1, sizeof *w);
    if (!w) return ANS_ENOMEM;
    int rc = ANS_ENOMEM;
    if (!(w->root = ans_strdup(root)) || !(w->cons = ans_json_new_object())) goto fail;
    size_t n = strlen(w->root);
    while (n > 1 && w->root[n - 1] == '/')
        w->root[--n] = '\0';
    struct stat st;
    if (stat(w->root, &st) == 0) {
        rc = ans_err(ANS_EINVAL, "%s: output already exists", w->root);
        goto fail;
    }
    if (errno != ENOENT) {
        rc = ans_err(ANS_EIO, "%s: cannot check the output path: %s", w->root, strerror(errno));
        goto fail;
    }
    if ((rc = make_parents(w->root)) < 0) goto fail;
    if (!(w->tmp = ans_asprintf("%s.tmp-XXXXXX", w->root))) {
        rc = ANS_ENOMEM;
        goto fail;
    }
    if (!mkdtemp(w->tmp)) {
        rc = ans_err(ANS_EIO, "%s: cannot create the temporary directory %s: %s", w->root, w->tmp,
                     strerror(errno));
        free(w->tmp);
        w->tmp = NULL;
        goto fail;
    }
    if ((rc = ans_kv_open_dir(&w->kv, w->tmp)) < 0) goto fail;
    w->pool = pool;
    *out = w;
    return ANS_OK;
fail:
    ans_zw_free(w);
    return rc;
}

/* Grow b to hold n bytes (contents up to keep kept) in a ZW_ALIGN-aligned allocation. */
static int zw_grow_aligned(ans_buf *b, size_t n, size_t keep)
{
    size_t cap = (n + ZW_ALIGN - 1) / ZW_ALIGN * ZW_ALIGN;
    void *q = NULL;
    if (posix_memalign(&q, ZW_ALIGN, cap) != 0 || !q) return ANS_ENOMEM;
    if (keep) memcpy(q, b->data, keep);
    free(b->data);
    b->data = q;
    b->cap = cap;
    return ANS_OK;
}

/* Store a large value like ans_kv_set (a temporary file renamed into place) but with O_DIRECT for
 * its whole ZW_ALIGN blocks, straight from `data` (aligned): copying gigabytes of shards through
 * the page cache cost more kernel time than compressing them. ANS_ENOTFOUND (nothing written)
 * when direct I/O is not possible here; the caller then uses ans_kv_set. */
static int zw_put_direct(ans_zw *w, const char *key, const uint8_t *data, size_t len)
{
#ifdef O_DIRECT
    if (len < ZW_DIRECT_MIN || ((uintptr_t)data % ZW_ALIGN) != 0) return ANS_ENOTFOUND;
    char *path = ans_asprintf("%s/%s", w->tmp, key);
    char *tmp = path ? ans_asprintf("%s.tmpXXXXXX", path) : NULL;
    int rc = path && tmp ? make_parents(path) : ANS_ENOMEM;
    int fd = -1;
    if (rc == ANS_OK && (fd = mkstemp(tmp)) < 0)
        rc = ans_err(ANS_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    int fl = fd >= 0 ? fcntl(fd, F_GETFL) : -1;
    if (rc == ANS_OK && (fl < 0 || fcntl(fd, F_SETFL, fl | O_DIRECT) != 0)) {
        rc = ANS_ENOTFOUND; /* no direct I/O on this file system */
    }
    if (rc == ANS_OK) {
        (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
        (void)fchmod(fd, 0644);
        size_t head = len / ZW_ALIGN * ZW_ALIGN, done = 0;
        int direct = 1;
        while (rc == ANS_OK && done < len) {
            if (done == head && direct) { /* the tail: buffered */
                if (fcntl(fd, F_SETFL, fl) != 0) {
                    rc = ans_err(ANS_EIO, "%s: fcntl: %s", tmp, strerror(errno));
                    break;
                }
                direct = 0;
            }
            size_t want = (direct ? head : len) - done;
            if (want > ((size_t)1 << 30)) want = (size_t)1 << 30;
            ssize_t r = pwrite(fd, data + done, want, (off_t)done);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && errno == EINVAL && direct && done == 0) {
                rc = ANS_ENOTFOUND; /* refused: let ans_kv_set write it */
                break;
            }
            if (r <= 0) {
                rc = ans_err(ANS_EIO, "%s: write: %s", tmp, r < 0 ? strerror(errno) : "no progress");
                break;
            }
            done += (size_t)r;
            if (direct && done % ZW_ALIGN) { /* a short direct write: finish buffered */
                if (fcntl(fd, F_SETFL, fl) != 0) {
                    rc = ans_err(ANS_EIO, "%s: fcntl: %s", tmp, strerror(errno));
                    break;
                }
                direct = 0;
            }
        }
    }
    if (fd >= 0 && close(fd) != 0 && rc == ANS_OK)
        rc = ans_err(ANS_EIO, "%s: close: %s", tmp, strerror(errno));
    if (rc == ANS_OK && rename(tmp, path) != 0)
        rc = ans_err(ANS_EIO, "%s: rename: %s", path, strerror(errno));
    if (rc != ANS_OK && fd >= 0) unlink(tmp);
    free(path);
    free(tmp);
    return rc;
#else
    (void)w;
    (void)key;
    (void)data;
    (void)len;
    return ANS_ENOTFOUND;
#endif
}

/* Keep b (emptied) as a spare if it is large, in place of a smaller spare; else free it. */
static void zw_spare_put(ans_zw *w, ans_buf *b)
{
    if (b->cap >= ZW_SPARE_MIN) {
        int k = 0;
        for (int i = 1; i < ZW_SPARES; i++)
            if (w->spare[i].cap < w->spare[k].cap) k = i;
        if (w->spare[k].cap < b->cap) {
            ans_buf t = w->spare[k];
            w->spare[k] = *b;
            w->spare[k].len = 0;
            *b = t;
        }
    }
    ans_buf_free(b);
}

/* Make b hold at least n bytes (contents up to keep kept), from the smallest fitting spare when
 * b is too small (one at most 4 times n: small arrays do not take large buffers). */
static int zw_spare_reserve(ans_zw *w, ans_buf *b, size_t n, size_t keep)
{
    if (n <= b->cap) return ANS_OK;
    int k = -1;
    for (int i = 0; i < ZW_SPARES; i++)
        if (w->spare[i].cap >= n && w->spare[i].cap / 4 <= n &&
            (k < 0 || w->spare[i].cap < w->spare[k].cap))
            k = i;
    if (k < 0) return ANS_ENOTFOUND;
    ans_buf t = w->spare[k];
    memset(&w->spare[k], 0, sizeof w->spare[k]);
    if (keep) memcpy(t.data, b->data, keep);
    t.len = b->len;
    zw_spare_put(w, b);
    *b = t;
    return ANS_OK;
}

void ans_zw_free(ans_zw *w)
{
    if (!w) return;
    zw_writer_stop(w);
    for (int i = 0; i < ZW_SPARES; i++)
        ans_buf_free(&w->spare[i]);
    ans_kv_free(w->kv);
    if (w->tmp && !w->committed) (void)nftw(w->tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(w->tmp);
    ans_json_free(w->cons);
    ans_json_free(w->rattrs);
    free(w->root);
    free(w);
}

const char *ans_zw_root(const ans_zw *w)
{
    return w->root;
}

static int check_new_node(ans_zw *w, const char *path)
{
    if (w->finished) return ans_err(ANS_EINVAL, "%s: writer already finished", w->root);
    if (!path || !path_ok(path))
        return ans_err(ANS_EINVAL, "%s: invalid node path '%s'", w->root, path ? path : "(null)");
    if (path_taken(w, path))
        return ans_err(ANS_EINVAL, "%s: %s: node written twice", w->root,
                       path[0] ? path : "(root)");
    return ANS_OK;
}

static int group_doc(ans_json *attrs, ans_json **out)
{
    *out = NULL;
    ans_json *d = ans_json_new_object();
    if (!d) {
        ans_json_free(attrs);
        return ANS_ENOMEM;
    }
    int rc = jset(d, "attributes", attrs ? attrs : ans_json_new_object());
    if (rc == ANS_OK) rc = jset(d, "zarr_format", ans_json_new_int(3));
    if (rc == ANS_OK) rc = jset(d, "node_type", ans_json_new_str("group"));
    if (rc < 0) {
        ans_json_free(d);
        return rc;
    }
    *out = d;
    return ANS_OK;
}

int ans_zw_group(ans_zw *w, const char *path, ans_json *attrs)
{
    int rc = check_new_node(w, path);
    if (rc == ANS_OK && attrs && attrs->type != ANS_JSON_OBJECT)
        rc = ans_err(ANS_EINVAL, "%s: %s: group attributes must be an object", w->root, path);
    if (rc < 0) {
        ans_json_free(attrs);
        return rc;
    }
    if (!path[0]) {
        w->rattrs = attrs ? attrs : ans_json_new_object();
        if (!w->rattrs) return zw_err_node(w, path, ANS_ENOMEM);
        w->root_made = 1;
        return ANS_OK;
    }
    ans_json *doc;
    if ((rc = group_doc(attrs, &doc)) == ANS_OK) rc = put_node(w, path, doc);
    return rc < 0 ? zw_err_node(w, path, rc) : ANS_OK;
}

/* Order of node paths as a tree walk: component by component ('/' sorts before any other byte).
 * zarr-python rebuilds nested consolidated metadata and needs each group's descendants together. */
static int path_cmp(const void *pa, const void *pb)
{
    const unsigned char *a = *(const unsigned char *const *)pa;
    const unsigned char *b = *(const unsigned char *const *)pb;
    for (;; a++, b++) {
        unsigned ca = *a == '/' ? 1u : *a ? (unsigned)*a + 1u : 0u;
        unsigned cb = *b == '/' ? 1u : *b ? (unsigned)*b + 1u : 0u;
        if (ca != cb || !ca) return ca < cb ? -1 : ca > cb;
    }
}

/* A copy of the consolidated entries sorted by path_cmp. */
static ans_json *sorted_entries(const ans_json *cons)
{
    size_t n = cons->v.o.n;
    const char **keys = ans_malloc((n ? n : 1) * sizeof *keys);
    ans_json *out = keys ? ans_json_new_object() : NULL;
    if (!out) {
        free(keys);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) keys[i] = cons->v.o.keys[i];
    qsort(keys, n, sizeof *keys, path_cmp);
    for (size_t i = 0; i < n; i++) {
        ans_json *v = ans_json_clone(ans_json_get(cons, keys[i]));
        if (!v || ans_json_set(out, keys[i], v) < 0) {
            ans_json_free(out);
            out = NULL;
            break;
        }
    }
    free(keys);
    return out;
}

int ans_zw_finish(ans_zw *w)
{
    if (w->finished) return ans_err(ANS_EINVAL, "%s: writer already finished", w->root);
    if (w->open_arrays)
        return ans_err(ANS_EINVAL, "%s: %d arrays still open at finish", w->root, w->open_arrays);
    {
        int drc = zw_drain(w, 0);
        zw_writer_stop(w);
        if (drc < 0) {
            w->finished = 1;
            return drc;
        }
    }
    ans_json *doc = NULL, *cm = NULL;
    ans_json *attrs = w->rattrs ? w->rattrs : ans_json_new_object();
    w->rattrs = NULL;
    int rc = group_doc(attrs, &doc);
    if (rc == ANS_OK) rc = (cm = ans_json_new_object()) ? ANS_OK : ANS_ENOMEM;
    /* (w->cons keeps creation order; the root document gets a tree-ordered copy.) */
    if (rc == ANS_OK) rc = jset(cm, "kind", ans_json_new_str("inline"));
    if (rc == ANS_OK) rc = jset(cm, "must_understand", ans_json_new_bool(0));
    if (rc == ANS_OK) {
        ans_json *sorted = sorted_entries(w->cons);
        rc = sorted ? ans_json_set(cm, "metadata", sorted) : ANS_ENOMEM;
    }
    if (rc == ANS_OK) {
        rc = ans_json_set(doc, "consolidated_metadata", cm);
        cm = NULL;
    }
    if (rc == ANS_OK) rc = write_json(w, "zarr.json", doc);
    ans_json_free(cm);
    ans_json_free(doc);
    w->finished = 1;
    if (rc < 0) return zw_err_node(w, "", rc);
    /* Publish: the output path appears complete or not at all. */
    if (rename(w->tmp, w->root) != 0)
        return ans_err(errno == EEXIST || errno == ENOTEMPTY ? ANS_EINVAL : ANS_EIO,
                       "%s: cannot move the finished store from %s: %s", w->root, w->tmp,
                       strerror(errno));
    w->committed = 1;
    return ANS_OK;
}

/* ---- arrays: encoding
 * ----------------------------------------------------------------------------- */

static size_t unit_bound(const ans_zwa *a, size_t n)
{
    switch (a->o.codec.comp) {
    case ANS_ZW_COMP_BLOSC:
        return ans_blosc_bound(n);
    case ANS_ZW_COMP_ZSTD:
        return ans_zstd_bound(n);
    default:
        return n;
    }
}

static int encode_unit(const ans_zw_codec *c, size_t elsize, const uint8_t *src, size_t n,
                       uint8_t *dst, size_t cap, uint64_t *outlen)
{
    size_t got = 0;
    int rc = ANS_OK;
    switch (c->comp) {
    case ANS_ZW_COMP_BLOSC: {
        size_t ts = elsize ? elsize : 1;
        int shuffle = ts == 1 ? 0 : c->shuffle;
        rc = ans_blosc_encode(src, n, dst, cap, &got, c->cname ? c->cname : "lz4", c->clevel,
                              shuffle, ts, 1);
        break;
    }
    case ANS_ZW_COMP_ZSTD:
        rc = ans_zstd_encode(src, n, dst, cap, &got, c->clevel);
        break;
    default:
        if (n) memcpy(dst, src, n);
        got = n;
        break;
    }
    *outlen = got;
    return rc;
}

static int all_zero(const uint8_t *p, size_t n)
{
    static const uint8_t zeros[256];
    while (n >= sizeof zeros) {
        if (memcmp(p, zeros, sizeof zeros)) return 0;
        p += sizeof zeros;
        n -= sizeof zeros;
    }
    return n == 0 || !memcmp(p, zeros, n);
}

/* One block to encode, unit by unit (what the pool jobs need of the array). */
typedef struct zw_enc {
    const uint8_t *src; /* the block: units of unit_bytes */
    uint8_t *enc;       /* unit u encoded at enc + u * bound */
    size_t unit_bytes, bound, elsize;
    ans_zw_codec codec;
    uint64_t *lens; /* per unit: encoded length, ZW_OMIT when all zero */
    int sharded;
    uint64_t bindex;
} zw_enc;

static int zw_job_fn(void *ctx, size_t u, int slot)
{
    (void)slot;
    zw_enc *j = ctx;
    const uint8_t *src = j->src + u * j->unit_bytes;
    if (all_zero(src, j->unit_bytes)) {
        j->lens[u] = ZW_OMIT;
        return ANS_OK;
    }
    int rc = encode_unit(&j->codec, j->elsize, src, j->unit_bytes, j->enc + u * j->bound, j->bound,
                         &j->lens[u]);
    if (rc < 0) {
        if (j->sharded)
            ans_err_prefix("shard %llu, inner chunk %zu", (unsigned long long)j->bindex, u);
        else
            ans_err_prefix("chunk %llu", (unsigned long long)j->bindex);
    }
    return rc;
}

/* Encode the `used` units of e (on the pool when there is one). */
static int zw_encode_units(ans_pool *pool, zw_enc *e, uint64_t used, uint64_t nunits)
{
    for (uint64_t u = 0; u < nunits; u++)
        e->lens[u] = ZW_OMIT;
    if (pool && used > 1) return ans_pool_for(pool, (size_t)used, zw_job_fn, e);
    int rc = ANS_OK;
    for (size_t u = 0; u < used && rc == ANS_OK; u++)
        rc = zw_job_fn(e, u, 0);
    return rc;
}

static void put_u64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* A shard from its encoded units (unit u at enc + u * bound): the units compacted in grid order
 * (each moves towards the start), then the index and its crc32c. Returns the shard's length, 0
 * when every unit is empty (no shard). */
static size_t zw_shard(uint8_t *enc, uint64_t used, uint64_t nunits, size_t bound,
                       const uint64_t *lens, uint64_t *offs)
{
    uint64_t pos = 0;
    for (uint64_t u = 0; u < used; u++) {
        offs[u] = ZW_OMIT;
        if (lens[u] == ZW_OMIT) continue;
        if (pos != u * bound) memmove(enc + pos, enc + u * bound, (size_t)lens[u]);
        offs[u] = pos;
        pos += lens[u];
    }
    if (pos == 0) return 0;
    uint8_t *idx = enc + pos;
    for (uint64_t u = 0; u < nunits; u++) {
        int present = u < used && lens[u] != ZW_OMIT;
        put_u64le(idx + 16 * u, present ? offs[u] : ZW_OMIT);
        put_u64le(idx + 16 * u + 8, present ? lens[u] : ZW_OMIT);
    }
    uint32_t crc = ans_crc32c(0, idx, (size_t)(16 * nunits));
    for (int i = 0; i < 4; i++)
        idx[16 * nunits + (uint64_t)i] = (uint8_t)(crc >> (8 * i));
    return (size_t)(pos + 16 * nunits + 4);
}

static int zw_store(ans_zw *w, const char *key, const uint8_t *data, size_t len)
{
    int rc = zw_put_direct(w, key, data, len);
    if (rc != ANS_ENOTFOUND) return rc;
    return ans_kv_set(w->kv, key, data, len);
}

/* ---- shard tasks: written by the writer thread ------------------------------------------------
 *
 * A large shard, once encoded (on the pool, by the caller), is handed with its buffer to the
 * writer thread, which writes it while the caller goes on with the next block: the shard writes
 * (O_DIRECT, a few hundred MiB each) overlap the encoding instead of leaving the CPUs idle. One
 * task at a time: the next hand-over waits for the previous write (zw_drain), whose buffer then
 * becomes a spare. (Tried: the thread also encoding the block, so that the caller's serial work
 * overlaps the compression: no faster on 2 CPUs and a block buffer more in memory.) */
struct zw_task {
    char *key, *node; /* the shard's key; the array (messages) */
    ans_buf enc;      /* the shard: len bytes (aligned) */
    size_t len;
    zw_task *next;
};

static void zw_task_free(zw_task *t)
{
    if (!t) return;
    free(t->key);
    free(t->node);
    ans_buf_free(&t->enc);
    free(t);
}

static int zw_task_run(ans_zw *w, zw_task *t)
{
    int rc = zw_store(w, t->key, t->enc.data, t->len);
    if (rc < 0) ans_err_prefix("%s: %s", w->root, t->node);
    return rc;
}

/* The writer thread: runs the pending task, hands its buffer back, waits for the next. */
static void *zw_writer_main(void *arg)
{
    ans_zw *w = arg;
    pthread_mutex_lock(&w->wmu);
    for (;;) {
        while (!w->wtask && !w->wstop)
            pthread_cond_wait(&w->wcv, &w->wmu);
        if (!w->wtask) break; /* stop, nothing pending */
        zw_task *t = w->wtask;
        int skip = w->werr.code != 0; /* after a failure nothing more is written */
        w->wtask = t->next;
        pthread_mutex_unlock(&w->wmu);
        int rc = skip ? ANS_OK : zw_task_run(w, t);
        ans_errinfo e;
        if (rc < 0) ans_err_save(&e);
        pthread_mutex_lock(&w->wmu);
        if (rc < 0 && !w->werr.code) w->werr = e;
        for (int k = 0; k < ZW_TASKS; k++)
            if (!w->wret[k].data) {
                w->wret[k] = t->enc;
                memset(&t->enc, 0, sizeof t->enc);
                break;
            }
        w->wbusy--;
        pthread_cond_broadcast(&w->wcv);
        pthread_mutex_unlock(&w->wmu);
        zw_task_free(t);
        pthread_mutex_lock(&w->wmu);
    }
    pthread_mutex_unlock(&w->wmu);
    return NULL;
}

/* Wait until at most `limit` tasks are pending or running; the written buffers become spares.
 * The first failed task's error, if any. */
static int zw_drain(ans_zw *w, int limit)
{
    if (!w->wth_on) return ANS_OK;
    pthread_mutex_lock(&w->wmu);
    while (w->wbusy > limit)
        pthread_cond_wait(&w->wcv, &w->wmu);
    ans_buf back[ZW_TASKS];
    memcpy(back, w->wret, sizeof back);
    memset(w->wret, 0, sizeof w->wret);
    ans_errinfo e = w->werr;
    pthread_mutex_unlock(&w->wmu);
    for (int k = 0; k < ZW_TASKS; k++)
        zw_spare_put(w, &back[k]);
    return e.code ? ans_err_restore(&e) : ANS_OK;
}

/* Whether shards can be handed to a writer thread (started here on first use). */
static int zw_writer_ready(ans_zw *w)
{
    if (w->wth_on) return 1;
    if (w->wfailed) return 0;
    if (!w->wsync) {
        if (pthread_mutex_init(&w->wmu, NULL) != 0) {
            w->wfailed = 1;
            return 0;
        }
        if (pthread_cond_init(&w->wcv, NULL) != 0) {
            pthread_mutex_destroy(&w->wmu);
            w->wfailed = 1;
            return 0;
        }
        w->wsync = 1;
    }
    if (pthread_create(&w->wth, NULL, zw_writer_main, w) != 0) {
        w->wfailed = 1;
        return 0;
    }
    w->wth_on = 1;
    return 1;
}

/* Stop and join the writer thread (after the pending task, if any, has run). */
static void zw_writer_stop(ans_zw *w)
{
    if (w->wth_on) {
        pthread_mutex_lock(&w->wmu);
        w->wstop = 1;
        pthread_cond_broadcast(&w->wcv);
        pthread_mutex_unlock(&w->wmu);
        pthread_join(w->wth, NULL);
        w->wth_on = 0;
    }
    while (w->wtask) {
        zw_task *t = w->wtask;
        w->wtask = t->next;
        zw_task_free(t);
    }
    for (int k = 0; k < ZW_TASKS; k++)
        ans_buf_free(&w->wret[k]);
    if (w->wsync) {
        pthread_cond_destroy(&w->wcv);
        pthread_mutex_destroy(&w->wmu);
        w->wsync = 0;
    }
}

static int block_key(const ans_zwa *a, char *key, size_t cap)
{
    int n = snprintf(key, cap, "%s/c/%llu", a->path, (unsigned long long)a->bindex);
    for (int d = 1; d < a->o.ndim && n > 0 && (size_t)n < cap; d++)
        n += snprintf(key + n, cap - (size_t)n, "/0");
    if (n < 0 || (size_t)n >= cap) return ans_err(ANS_EINVAL, "chunk key too long");
    return ANS_OK;
}

/* Make a->enc hold n bytes (aligned; from the spares when one fits). */
static int zw_enc_reserve(ans_zwa *a, size_t n)
{
    if (n <= a->enc.cap || zw_spare_reserve(a->w, &a->enc, n, 0) == ANS_OK) return ANS_OK;
    return zw_grow_aligned(&a->enc, n, 0);
}

/* Encode and store the current numeric block (bfill rows). */
static int flush_numeric(ans_zwa *a)
{
    ans_zw *w = a->w;
    uint64_t used = (a->bfill + a->unit_rows - 1) / a->unit_rows; /* units holding rows */
    size_t data_end = (size_t)(used * a->unit_bytes);
    size_t fill_end = (size_t)(a->bfill * a->row_bytes);
    if (data_end > fill_end) memset(a->buf.data + fill_end, 0, data_end - fill_end);
    int sharded = a->o.shard_rows != 0;
    size_t index_bytes = sharded ? (size_t)(16 * a->nunits + 4) : 0;
    size_t enc_need = (size_t)used * a->bound + index_bytes;
    char key[ZW_KEY_MAX];
    ANS_TRY(block_key(a, key, sizeof key));
    int rc = zw_enc_reserve(a, enc_need);
    if (rc < 0) return rc;
    zw_enc e = {a->buf.data, a->enc.data, a->unit_bytes, a->bound, a->elsize, a->o.codec,
                a->lens, sharded, a->bindex};
    if ((rc = zw_encode_units(w->pool, &e, used, a->nunits)) < 0) return rc;
    if (!sharded) {
        if (a->lens[0] == ZW_OMIT) return ANS_OK;
        return ans_kv_set(w->kv, key, a->enc.data, (size_t)a->lens[0]);
    }
    size_t len = zw_shard(a->enc.data, used, a->nunits, a->bound, a->lens, a->offs);
    if (!len) return ANS_OK;
    if (len < ZW_DIRECT_MIN || !zw_writer_ready(w)) return zw_store(w, key, a->enc.data, len);
    /* hand the shard to the writer thread (once the previous one is written) */
    zw_task *t = ans_calloc(1, sizeof *t);
    if (!t || !(t->key = ans_strdup(key)) || !(t->node = ans_strdup(a->path))) {
        zw_task_free(t);
        return ANS_ENOMEM;
    }
    if ((rc = zw_drain(w, ZW_TASKS - 1)) < 0) {
        zw_task_free(t);
        return rc;
    }
    t->enc = a->enc;
    t->len = len;
    memset(&a->enc, 0, sizeof a->enc);
    pthread_mutex_lock(&w->wmu);
    zw_task **tail = &w->wtask;
    while (*tail)
        tail = &(*tail)->next;
    *tail = t;
    w->wbusy++;
    pthread_cond_broadcast(&w->wcv);
    pthread_mutex_unlock(&w->wmu);
    return ANS_OK;
}

/* Encode and store the current string chunk (bfill items, padded with "" to unit_rows). */
static int flush_strings(ans_zwa *a)
{
    const uint64_t *ends = (const uint64_t *)(const void *)a->soff.data;
    uint64_t nbytes = a->bfill ? ends[a->bfill - 1] : 0;
    if (nbytes == 0) return ANS_OK; /* every item is "": the fill value, chunk omitted */
    uint64_t total = 4 + 4 * a->unit_rows + nbytes;
    if (total > SIZE_MAX / 2) return ans_err(ANS_ENOMEM, "string chunk too large");
    int rc = ans_buf_resize(&a->vlen, (size_t)total);
    if (rc < 0) return rc;
    uint8_t *p = a->vlen.data;
    if (a->unit_rows > UINT32_MAX) return ans_err(ANS_EINVAL, "vlen-utf8: too many items");
    uint32_t v = (uint32_t)a->unit_rows;
    memcpy(p, &v, 4);
    p += 4;
    uint64_t start = 0;
    for (uint64_t i = 0; i < a->unit_rows; i++) {
        uint64_t end = i < a->bfill ? ends[i] : start;
        uint64_t len = end - start;
        if (len > UINT32_MAX)
            return ans_err(ANS_EINVAL, "vlen-utf8: string %llu has %llu bytes (max 4 GiB)",
                           (unsigned long long)(a->nrows - a->bfill + i), (unsigned long long)len);
        v = (uint32_t)len;
        memcpy(p, &v, 4);
        if (len) memcpy(p + 4, a->buf.data + start, (size_t)len);
        p += 4 + len;
        start = end;
    }
    size_t bound = unit_bound(a, (size_t)total);
    if (!bound)
        return ans_err(ANS_EINVAL, "string chunk of %llu bytes too large to compress",
                       (unsigned long long)total);
    if ((rc = ans_buf_reserve(&a->enc, bound)) < 0) return rc;
    uint64_t got;
    if ((rc = encode_unit(&a->o.codec, a->elsize, a->vlen.data, (size_t)total, a->enc.data, bound,
                          &got)) < 0)
        return rc;
    char key[ZW_KEY_MAX];
    ANS_TRY(block_key(a, key, sizeof key));
    return ans_kv_set(a->w->kv, key, a->enc.data, (size_t)got);
}

static int flush_block(ans_zwa *a)
{
    if (a->bfill == 0) return ANS_OK;
    int rc = a->o.dtype == ANS_DTYPE_STRING ? flush_strings(a) : flush_numeric(a);
    if (rc < 0) return rc;
    a->bindex++;
    a->bfill = 0;
    a->buf.len = 0;
    a->soff.len = 0;
    return ANS_OK;
}

/* ---- arrays: API
 * ---------------------------------------------------------------------------------- */

int ans_zw_array_new(ans_zw *w, const char *path, const ans_zw_array_opts *opts, ans_zwa **out)
{
    *out = NULL;
    ans_json *attrs = opts ? opts->attrs : NULL;
    int rc = check_new_node(w, path);
    if (rc < 0) goto fail_attrs;
    const char *p = path;
#define BAD(...)                                                                                   \
    do {                                                                                           \
        rc = ans_err(ANS_EINVAL, __VA_ARGS__);                                                     \
        goto fail_attrs;                                                                           \
    } while (0)
    if (!opts) BAD("%s: %s: no array options", w->root, p);
    if (!p[0]) BAD("%s: an array cannot be the root", w->root);
    if (attrs && attrs->type != ANS_JSON_OBJECT)
        BAD("%s: %s: array attributes must be an object", w->root, p);
    if (opts->ndim < 1 || opts->ndim > ANS_ZW_MAX_NDIM)
        BAD("%s: %s: ndim %d outside 1..%d", w->root, p, opts->ndim, ANS_ZW_MAX_NDIM);
    if (opts->chunk_rows < 1) BAD("%s: %s: chunk_rows must be >= 1", w->root, p);
    if (opts->shard_rows % opts->chunk_rows)
        BAD("%s: %s: shard_rows %llu is not a multiple of chunk_rows %llu", w->root, p,
            (unsigned long long)opts->shard_rows, (unsigned long long)opts->chunk_rows);
    size_t elsize = ans_dtype_size(opts->dtype);
    if (opts->dtype == ANS_DTYPE_STRING) {
        if (opts->shard_rows) BAD("%s: %s: string arrays cannot be sharded", w->root, p);
        if (opts->ndim != 1) BAD("%s: %s: string arrays must be 1-D", w->root, p);
    } else if (!elsize) {
        BAD("%s: %s: invalid data type", w->root, p);
    }
    if (opts->codec.comp != ANS_ZW_COMP_NONE && opts->codec.comp != ANS_ZW_COMP_BLOSC &&
        opts->codec.comp != ANS_ZW_COMP_ZSTD)
        BAD("%s: %s: unknown compressor %d", w->root, p, (int)opts->codec.comp);
    if (opts->codec.comp == ANS_ZW_COMP_BLOSC &&
        (opts->codec.clevel < 0 || opts->codec.clevel > 9 || opts->codec.shuffle < 0 ||
         opts->codec.shuffle > 2))
        BAD("%s: %s: blosc clevel %d / shuffle %d out of range", w->root, p, opts->codec.clevel,
            opts->codec.shuffle);
#undef BAD
    ans_zwa *a = ans_calloc(1, sizeof *a);
    if (!a) {
        rc = ANS_ENOMEM;
        goto fail_attrs;
    }
    a->w = w;
    a->o = *opts;
    a->o.attrs = NULL;
    a->attrs = attrs;
    a->elsize = elsize;
    a->row_elems = 1;
    uint64_t rb = elsize ? elsize : 1, ub, blk;
    rc = ANS_OK;
    for (int d = 1; d < opts->ndim; d++)
        if (ans_mul_overflow(a->row_elems, opts->shape[d], &a->row_elems)) rc = ANS_EINVAL;
    a->unit_rows = opts->chunk_rows;
    a->block_rows = opts->shard_rows ? opts->shard_rows : opts->chunk_rows;
    a->nunits = a->block_rows / a->unit_rows;
    if (rc < 0 || ans_mul_overflow(rb, a->row_elems, &rb) ||
        ans_mul_overflow(rb, a->unit_rows, &ub) || ans_mul_overflow(rb, a->block_rows, &blk) ||
        blk > SIZE_MAX / 4 || a->nunits > SIZE_MAX / 32) {
        uint64_t br = a->block_rows;
        ans_zwa_abort(a);
        return ans_err(ANS_EINVAL, "%s: %s: block of %llu rows is too large", w->root, p,
                       (unsigned long long)br);
    }
    a->row_bytes = (size_t)rb;
    a->unit_bytes = (size_t)ub;
    a->block_bytes = (size_t)blk;
    if (elsize) {
        a->bound = unit_bound(a, a->unit_bytes);
        if ((!a->bound && a->unit_bytes) ||
            (a->o.codec.comp == ANS_ZW_COMP_BLOSC && a->unit_bytes > ((size_t)1 << 31) - 64)) {
            ans_zwa_abort(a);
            return ans_err(ANS_EINVAL,
                           "%s: %s: chunks of %zu bytes are too large for the compressor", w->root,
                           p, (size_t)ub);
        }
    }
    if (!(a->path = ans_strdup(path)) ||
        !(a->lens = ans_calloc((size_t)a->nunits, sizeof *a->lens)) ||
        !(a->offs = ans_calloc((size_t)a->nunits, sizeof *a->offs))) {
        ans_zwa_abort(a);
        return zw_err_node(w, path, ANS_ENOMEM);
    }
    w->open_arrays++;
    a->counted = 1;
    a->next = w->open;
    w->open = a;
    *out = a;
    return ANS_OK;
fail_attrs:
    ans_json_free(attrs);
    return rc;
}

/* Large appends are copied into the block buffer in pieces on the pool (a collection's matrices
 * arrive in batches of tens of MiB: a serial copy left the other CPU idle). */
#define ZW_COPY_PIECE ((size_t)4 << 20)

typedef struct zw_copy {
    uint8_t *dst;
    const uint8_t *src;
    size_t n;
} zw_copy;

static int zw_copy_fn(void *ctx, size_t i, int slot)
{
    (void)slot;
    zw_copy *c = ctx;
    size_t a = i * ZW_COPY_PIECE, z = a + ZW_COPY_PIECE < c->n ? a + ZW_COPY_PIECE : c->n;
    memcpy(c->dst + a, c->src + a, z - a);
    return ANS_OK;
}

static void zw_memcpy(ans_zw *w, uint8_t *dst, const uint8_t *src, size_t n)
{
    if (!w->pool || ans_pool_size(w->pool) < 2 || n < 2 * ZW_COPY_PIECE) {
        memcpy(dst, src, n);
        return;
    }
    zw_copy c = {dst, src, n};
    if (ans_pool_for(w->pool, (n + ZW_COPY_PIECE - 1) / ZW_COPY_PIECE, zw_copy_fn, &c) != ANS_OK)
        memcpy(dst, src, n); /* (cannot fail: the jobs do not) */
}

uint64_t ans_zwa_rows(const ans_zwa *a)
{
    return a->nrows;
}

int ans_zwa_append(ans_zwa *a, const void *rows, uint64_t nrows)
{
    if (a->o.dtype == ANS_DTYPE_STRING)
        return ans_err(ANS_EINVAL, "%s: %s: string array: use ans_zwa_append_strings", a->w->root,
                       a->path);
    const uint8_t *src = rows;
    while (nrows > 0) {
        uint64_t take = a->block_rows - a->bfill;
        if (take > nrows) take = nrows;
        /* The block buffer grows with the rows (whole units, doubling, at most one block), so a
         * small array never costs a full shard of memory. */
        uint64_t units = (a->bfill + take + a->unit_rows - 1) / a->unit_rows;
        size_t need = (size_t)(units * a->unit_bytes);
        if (need > a->block_bytes) need = a->block_bytes;
        if (need > a->buf.cap) {
            size_t keep = (size_t)(a->bfill * a->row_bytes);
            if (!a->o.grow) { /* the rows this block will get are known: room for all at once */
                uint64_t start = a->nrows - a->bfill;
                uint64_t left = a->o.shape[0] > start ? a->o.shape[0] - start : 0;
                uint64_t u = (left + a->unit_rows - 1) / a->unit_rows;
                size_t whole = u >= a->nunits ? a->block_bytes : (size_t)(u * a->unit_bytes);
                if (whole > need) need = whole;
            }
            if (zw_spare_reserve(a->w, &a->buf, need, keep) != ANS_OK) {
                size_t cap = a->buf.cap > a->block_bytes / 2 ? a->block_bytes : 2 * a->buf.cap;
                if (cap < need) cap = need;
                if (zw_grow_aligned(&a->buf, cap, keep) != ANS_OK)
                    return zw_err_node(a->w, a->path, ANS_ENOMEM);
            }
        }
        if (a->row_bytes) /* zero-width rows: nothing to copy (and buf.data may be NULL) */
            zw_memcpy(a->w, a->buf.data + a->bfill * a->row_bytes, src,
                      (size_t)(take * a->row_bytes));
        a->bfill += take;
        a->nrows += take;
        if (src) src += take * a->row_bytes;
        nrows -= take;
        if (a->bfill == a->block_rows) {
            int rc = flush_block(a);
            if (rc < 0) return zw_err_node(a->w, a->path, rc);
        }
    }
    return ANS_OK;
}

int ans_zwa_append_strings(ans_zwa *a, const uint64_t *offsets, const char *data, uint64_t n)
{
    if (a->o.dtype != ANS_DTYPE_STRING)
        return ans_err(ANS_EINVAL, "%s: %s: not a string array", a->w->root, a->path);
    for (uint64_t i = 0; i < n; i++) {
        if (offsets[i + 1] < offsets[i])
            return ans_err(ANS_EINVAL, "%s: %s: string offsets decrease at item %llu", a->w->root,
                           a->path, (unsigned long long)i);
        uint64_t len = offsets[i + 1] - offsets[i];
        int rc = len ? ans_buf_append(&a->buf, data + offsets[i], (size_t)len) : ANS_OK;
        uint64_t end = a->buf.len;
        if (rc == ANS_OK) rc = ans_buf_append(&a->soff, &end, sizeof end);
        if (rc < 0) return zw_err_node(a->w, a->path, rc);
        a->bfill++;
        a->nrows++;
        if (a->bfill == a->block_rows && (rc = flush_block(a)) < 0)
            return zw_err_node(a->w, a->path, rc);
    }
    return ANS_OK;
}

static const char *zarr_type_name(ans_dtype t)
{
    return t == ANS_DTYPE_STRING ? "string" : ans_dtype_name(t);
}

static ans_json *fill_json(ans_dtype t)
{
    switch (t) {
    case ANS_DTYPE_BOOL:
        return ans_json_new_bool(0);
    case ANS_DTYPE_STRING:
        return ans_json_new_str("");
    case ANS_DTYPE_FLOAT16:
    case ANS_DTYPE_FLOAT32:
    case ANS_DTYPE_FLOAT64:
        return ans_json_new_double(0.0);
    case ANS_DTYPE_COMPLEX64:
    case ANS_DTYPE_COMPLEX128: {
        ans_json *arr = ans_json_new_array();
        if (arr && (jpush(arr, ans_json_new_double(0.0)) < 0 ||
                    jpush(arr, ans_json_new_double(0.0)) < 0)) {
            ans_json_free(arr);
            return NULL;
        }
        return arr;
    }
    default:
        return ans_json_new_int(0);
    }
}

static ans_json *named(const char *name, ans_json *conf)
{
    ans_json *c = ans_json_new_object();
    if (!c || jset(c, "name", ans_json_new_str(name)) < 0 ||
        (conf && jset(c, "configuration", conf) < 0)) {
        ans_json_free(c);
        if (conf && !c) ans_json_free(conf);
        return NULL;
    }
    return c;
}

/* [array->bytes codec, compressor] for units of this array. */
static int inner_codecs(const ans_zwa *a, ans_json **out)
{
    ans_json *list = ans_json_new_array(), *conf = NULL;
    int rc = list ? ANS_OK : ANS_ENOMEM;
    if (rc == ANS_OK) {
        if (a->o.dtype == ANS_DTYPE_STRING) {
            rc = jpush(list, named("vlen-utf8", ans_json_new_object()));
        } else if (a->elsize == 1) {
            rc = jpush(list, named("bytes", NULL));
        } else {
            rc = (conf = ans_json_new_object()) ? jset(conf, "endian", ans_json_new_str("little"))
                                                : ANS_ENOMEM;
            if (rc == ANS_OK)
                rc = jpush(list, named("bytes", conf));
            else
                ans_json_free(conf);
        }
    }
    const ans_zw_codec *c = &a->o.codec;
    if (rc == ANS_OK && c->comp == ANS_ZW_COMP_BLOSC) {
        size_t ts = a->elsize ? a->elsize : 1;
        static const char *const shuf[] = {"noshuffle", "shuffle", "bitshuffle"};
        conf = ans_json_new_object();
        rc = conf ? ANS_OK : ANS_ENOMEM;
        if (rc == ANS_OK) rc = jset(conf, "typesize", ans_json_new_int((int64_t)ts));
        if (rc == ANS_OK) rc = jset(conf, "cname", ans_json_new_str(c->cname ? c->cname : "lz4"));
        if (rc == ANS_OK) rc = jset(conf, "clevel", ans_json_new_int(c->clevel));
        if (rc == ANS_OK)
            rc = jset(conf, "shuffle", ans_json_new_str(shuf[ts == 1 ? 0 : c->shuffle]));
        if (rc == ANS_OK) rc = jset(conf, "blocksize", ans_json_new_int(0));
        if (rc == ANS_OK)
            rc = jpush(list, named("blosc", conf));
        else
            ans_json_free(conf);
    } else if (rc == ANS_OK && c->comp == ANS_ZW_COMP_ZSTD) {
        conf = ans_json_new_object();
        rc = conf ? ANS_OK : ANS_ENOMEM;
        if (rc == ANS_OK) rc = jset(conf, "level", ans_json_new_int(c->clevel));
        if (rc == ANS_OK) rc = jset(conf, "checksum", ans_json_new_bool(0));
        if (rc == ANS_OK)
            rc = jpush(list, named("zstd", conf));
        else
            ans_json_free(conf);
    }
    if (rc < 0) {
        ans_json_free(list);
        return rc;
    }
    *out = list;
    return ANS_OK;
}

static ans_json *u64_list(const uint64_t *v, int n)
{
    ans_json *l = ans_json_new_array();
    for (int i = 0; l && i < n; i++)
        if (jpush(l, ans_json_new_uint(v[i])) < 0) {
            ans_json_free(l);
            return NULL;
        }
    return l;
}

static int array_doc(ans_zwa *a, ans_json **out)
{
    uint64_t shape[ANS_ZW_MAX_NDIM], grid[ANS_ZW_MAX_NDIM], unit[ANS_ZW_MAX_NDIM];
    int nd = a->o.ndim;
    for (int d = 0; d < nd; d++)
        shape[d] = grid[d] = unit[d] = a->o.shape[d];
    shape[0] = a->nrows;
    grid[0] = a->block_rows;
    unit[0] = a->unit_rows;
    for (int d = 1; d < nd; d++) /* zarr needs chunk sizes >= 1 */
        if (grid[d] == 0) grid[d] = unit[d] = 1;
    ans_json *doc = ans_json_new_object(), *x = NULL, *codecs = NULL;
    int rc = doc ? ANS_OK : ANS_ENOMEM;
    if (rc == ANS_OK) rc = jset(doc, "shape", u64_list(shape, nd));
    if (rc == ANS_OK) rc = jset(doc, "data_type", ans_json_new_str(zarr_type_name(a->o.dtype)));
    if (rc == ANS_OK)
        rc = (x = ans_json_new_object()) ? jset(x, "chunk_shape", u64_list(grid, nd)) : ANS_ENOMEM;
    if (rc == ANS_OK)
        rc = jset(doc, "chunk_grid", named("regular", x));
    else
        ans_json_free(x);
    x = NULL;
    if (rc == ANS_OK)
        rc = (x = ans_json_new_object()) ? jset(x, "separator", ans_json_new_str("/")) : ANS_ENOMEM;
    if (rc == ANS_OK)
        rc = jset(doc, "chunk_key_encoding", named("default", x));
    else
        ans_json_free(x);
    if (rc == ANS_OK) rc = jset(doc, "fill_value", fill_json(a->o.dtype));
    if (rc == ANS_OK) rc = inner_codecs(a, &codecs);
    if (rc == ANS_OK && a->o.shard_rows) {
        ans_json *conf = ans_json_new_object(), *ic = NULL, *ec = NULL, *outer = NULL;
        rc = conf ? ANS_OK : ANS_ENOMEM;
        if (rc == ANS_OK) rc = jset(conf, "chunk_shape", u64_list(unit, nd));
        if (rc == ANS_OK) {
            rc = ans_json_set(conf, "codecs", codecs);
            codecs = NULL;
        }
        if (rc == ANS_OK) rc = (ic = ans_json_new_array()) ? ANS_OK : ANS_ENOMEM;
        if (rc == ANS_OK)
            rc = (ec = ans_json_new_object()) ? jset(ec, "endian", ans_json_new_str("little"))
                                              : ANS_ENOMEM;
        if (rc == ANS_OK)
            rc = jpush(ic, named("bytes", ec));
        else
            ans_json_free(ec);
        if (rc == ANS_OK) rc = jpush(ic, named("crc32c", NULL));
        if (rc == ANS_OK) {
            rc = ans_json_set(conf, "index_codecs", ic);
            ic = NULL;
        }
        if (rc == ANS_OK) rc = jset(conf, "index_location", ans_json_new_str("end"));
        if (rc == ANS_OK) rc = (outer = ans_json_new_array()) ? ANS_OK : ANS_ENOMEM;
        if (rc == ANS_OK) {
            rc = jpush(outer, named("sharding_indexed", conf));
            conf = NULL;
        }
        ans_json_free(conf);
        ans_json_free(ic);
        codecs = outer;
    }
    if (rc == ANS_OK) {
        rc = ans_json_set(doc, "codecs", codecs);
        codecs = NULL;
    }
    if (rc == ANS_OK) {
        rc = jset(doc, "attributes", a->attrs ? a->attrs : ans_json_new_object());
        a->attrs = NULL;
    }
    if (rc == ANS_OK) rc = jset(doc, "zarr_format", ans_json_new_int(3));
    if (rc == ANS_OK) rc = jset(doc, "node_type", ans_json_new_str("array"));
    if (rc == ANS_OK) rc = jset(doc, "storage_transformers", ans_json_new_array());
    ans_json_free(codecs);
    if (rc < 0) {
        ans_json_free(doc);
        return rc;
    }
    *out = doc;
    return ANS_OK;
}

int ans_zwa_close(ans_zwa *a)
{
    ans_zw *w = a->w;
    int rc = ANS_OK;
    if (!a->o.grow && a->nrows != a->o.shape[0])
        rc = ans_err(ANS_EINVAL, "%s: %s: %llu rows written, the shape says %llu", w->root, a->path,
                     (unsigned long long)a->nrows, (unsigned long long)a->o.shape[0]);
    if (rc == ANS_OK && (rc = flush_block(a)) < 0) zw_err_node(w, a->path, rc);
    ans_json *doc = NULL;
    if (rc == ANS_OK && (rc = array_doc(a, &doc)) < 0) zw_err_node(w, a->path, rc);
    if (rc == ANS_OK && (rc = put_node(w, a->path, doc)) < 0) zw_err_node(w, a->path, rc);
    ans_zwa_abort(a);
    return rc;
}

void ans_zwa_abort(ans_zwa *a)
{
    if (!a) return;
    if (a->counted) {
        a->w->open_arrays--;
        for (ans_zwa **pp = &a->w->open; *pp; pp = &(*pp)->next)
            if (*pp == a) {
                *pp = a->next;
                break;
            }
    }
    ans_json_free(a->attrs);
    zw_spare_put(a->w, &a->buf);
    ans_buf_free(&a->soff);
    ans_buf_free(&a->vlen);
    zw_spare_put(a->w, &a->enc);
    free(a->lens);
    free(a->offs);
    free(a->path);
    free(a);
}
