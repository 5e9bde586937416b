/* test_zarr.c - the local store, zarr metadata, chunk keys, codec chains, sharding and range reads.
 *
 * Hand-made stores (written with ans_kv_set into a temporary directory) cover what benefits from
 * exact bytes: the formats.md sharding example, corrupt indexes, byte orders, fill values, layouts.
 * Stores written by the real zarr-python come from tests/c/make_zarr_fixtures.py DIR: pass DIR as the
 * first argument or set ANS_ZARR_FIXTURES; without it those tests print "skip". */
#include "harness.h"

#include "codec/codec.h"
#include "common/error.h"
#include "common/json.h"
#include "common/pool.h"
#include "container/container.h"
#include "storage/store.h"
#include "zarr/zarr.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *g_fixtures;
static char g_tmproot[4096];

/* ---- helpers ---------------------------------------------------------------------------------- */

static void rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[4400];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            rm_rf(sub);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* A fresh temporary directory (in `buf`). */
static int tmpdir(char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/ans_zarr_XXXXXX", g_tmproot);
    return mkdtemp(buf) ? 0 : -1;
}

static void put(const char *dir, const char *key, const void *data, size_t len)
{
    ans_kv *kv = NULL;
    CHECK_OK(ans_kv_create_dir(&kv, dir));
    if (kv) CHECK_OK(ans_kv_set(kv, key, data, len));
    ans_kv_free(kv);
}

static void put_s(const char *dir, const char *key, const char *s)
{
    put(dir, key, s, strlen(s));
}

static const char *V3_GROUP = "{\"zarr_format\":3,\"node_type\":\"group\",\"attributes\":{}}";

/* zarr.json of a v3 array. */
static void put_v3(const char *dir, const char *path, const char *shape, const char *dtype,
                   const char *chunks, const char *fill, const char *codecs, const char *cke)
{
    char key[512], text[4096];
    snprintf(key, sizeof key, "%s%szarr.json", path, *path ? "/" : "");
    snprintf(text, sizeof text,
             "{\"zarr_format\":3,\"node_type\":\"array\",\"shape\":%s,\"data_type\":%s,"
             "\"chunk_grid\":{\"name\":\"regular\",\"configuration\":{\"chunk_shape\":%s}},"
             "\"chunk_key_encoding\":%s,\"fill_value\":%s,\"codecs\":%s,\"attributes\":{}}",
             shape, dtype, chunks,
             cke ? cke : "{\"name\":\"default\",\"configuration\":{\"separator\":\"/\"}}", fill,
             codecs);
    put_s(dir, key, text);
}

/* .zarray of a v2 array. */
static void put_v2(const char *dir, const char *path, const char *shape, const char *chunks,
                   const char *dtype, const char *fill, const char *compressor, const char *extra)
{
    char key[512], text[4096];
    snprintf(key, sizeof key, "%s%s.zarray", path, *path ? "/" : "");
    snprintf(text, sizeof text,
             "{\"zarr_format\":2,\"shape\":%s,\"chunks\":%s,\"dtype\":\"%s\",\"fill_value\":%s,"
             "\"order\":\"C\",\"filters\":null,\"compressor\":%s%s%s}",
             shape, chunks, dtype, fill, compressor, extra ? "," : "", extra ? extra : "");
    put_s(dir, key, text);
}

static ans_container *open_zarr(const char *dir, ans_pool *pool)
{
    ans_container *c = NULL;
    CHECK_OK(ans_zarr_open(&c, dir, pool));
    return c;
}

static ans_array *open_arr(ans_container *c, const char *path)
{
    ans_array *a = NULL;
    if (!c) return NULL;
    CHECK_OK(c->ops->open_array(c, path, &a));
    return a;
}

static void wr64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static const char *SHARD_CODECS_END =
    "[{\"name\":\"sharding_indexed\",\"configuration\":{\"chunk_shape\":[4],"
    "\"codecs\":[{\"name\":\"bytes\",\"configuration\":{\"endian\":\"little\"}}],"
    "\"index_codecs\":[{\"name\":\"bytes\",\"configuration\":{\"endian\":\"little\"}},"
    "{\"name\":\"crc32c\"}],\"index_location\":\"end\"}}]";

static const char *SHARD_CODECS_START =
    "[{\"name\":\"sharding_indexed\",\"configuration\":{\"chunk_shape\":[4],"
    "\"codecs\":[{\"name\":\"bytes\",\"configuration\":{\"endian\":\"little\"}}],"
    "\"index_codecs\":[{\"name\":\"bytes\",\"configuration\":{\"endian\":\"little\"}},"
    "{\"name\":\"crc32c\"}],\"index_location\":\"start\"}}]";

/* The formats.md section 3 shard: values 0..7, or 0..3 with inner chunk 1 empty (`empty`). */
static size_t example_shard(uint8_t *out, int empty, int at_start)
{
    uint8_t data[32], index[36];
    for (int i = 0; i < 8; i++) wr32(data + 4 * i, (uint32_t)i);
    size_t ndata = empty ? 16 : 32;
    uint64_t base = at_start ? 36 : 0;
    wr64(index, base + 0);
    wr64(index + 8, 16);
    if (empty) {
        wr64(index + 16, UINT64_MAX);
        wr64(index + 24, UINT64_MAX);
    } else {
        wr64(index + 16, base + 16);
        wr64(index + 24, 16);
    }
    wr32(index + 32, ans_crc32c(0, index, 32));
    if (at_start) {
        memcpy(out, index, 36);
        memcpy(out + 36, data, ndata);
    } else {
        memcpy(out, data, ndata);
        memcpy(out + ndata, index, 36);
    }
    return ndata + 36;
}

/* ---- store ------------------------------------------------------------------------------------ */

static void test_store_basic(void)
{
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    ans_kv *kv = NULL;
    CHECK_OK(ans_kv_open_dir(&kv, dir));
    if (!kv) return;
    CHECK_OK(ans_kv_set(kv, "a/b/c", "0123456789", 10));
    CHECK_OK(ans_kv_set(kv, "a/x", "xy", 2));
    CHECK_OK(ans_kv_set(kv, "a/x", "xyz", 3)); /* replace */
    ans_buf b = {0};
    CHECK_OK(ans_kv_get(kv, "a/b/c", &b, 0));
    CHECK(b.len == 10 && !memcmp(b.data, "0123456789", 10));
    CHECK_RC(ans_kv_get(kv, "a/b/c", &b, 5), ANS_ECORRUPT);
    char r[8];
    CHECK_OK(ans_kv_get_range(kv, "a/b/c", 3, 4, r));
    CHECK(!memcmp(r, "3456", 4));
    CHECK_RC(ans_kv_get_range(kv, "a/b/c", 8, 4, r), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "truncated");
    uint64_t total = 0;
    CHECK_OK(ans_kv_get_suffix(kv, "a/b/c", 3, r, &total));
    CHECK(!memcmp(r, "789", 3) && total == 10);
    CHECK_RC(ans_kv_get_suffix(kv, "a/b/c", 11, r, NULL), ANS_ECORRUPT);
    CHECK_OK(ans_kv_get_part(kv, "a/b/c", 0, 2, &b, &total));
    CHECK(b.len == 2 && !memcmp(b.data, "01", 2));
    CHECK_OK(ans_kv_get_part(kv, "a/b/c", 1, 2, &b, &total));
    CHECK(b.len == 2 && !memcmp(b.data, "89", 2));
    /* A bogus length from metadata: refused before any buffer is sized from it. */
    CHECK_RC(ans_kv_get_part(kv, "a/b/c", 1, (uint64_t)1 << 60, &b, &total), ANS_ECORRUPT);
    uint64_t sz = 0;
    CHECK_OK(ans_kv_size(kv, "a/x", &sz));
    CHECK_EQ_U64(sz, 3);
    char **names = NULL;
    size_t n = 0;
    CHECK_OK(ans_kv_list(kv, "a", &names, &n));
    CHECK(n == 2 && !strcmp(names[0], "b") && !strcmp(names[1], "x"));
    ans_kv_names_free(names, n);
    uint64_t bytes = 0, count = 0;
    CHECK_OK(ans_kv_du(kv, "", &bytes, &count));
    CHECK(bytes == 13 && count == 2);
    CHECK_OK(ans_kv_du(kv, "a/x", &bytes, &count));
    CHECK(bytes == 3 && count == 1);
    /* Missing keys: ANS_ENOTFOUND without a message. */
    ans_error_clear();
    CHECK_RC(ans_kv_get(kv, "nope", &b, 0), ANS_ENOTFOUND);
    CHECK_RC(ans_kv_get_range(kv, "a/x/deeper", 0, 1, r), ANS_ENOTFOUND);
    CHECK_RC(ans_kv_size(kv, "nope", &sz), ANS_ENOTFOUND);
    CHECK_RC(ans_kv_list(kv, "nope", &names, &n), ANS_ENOTFOUND);
    CHECK_RC(ans_kv_du(kv, "nope", &bytes, &count), ANS_ENOTFOUND);
    CHECK(ans_error_last()[0] == '\0');
    /* A directory where a value is expected: ANS_EIO naming the path. */
    CHECK_RC(ans_kv_get(kv, "a/b", &b, 0), ANS_EIO);
    CHECK_STR_CONTAINS(ans_error_last(), "a/b");
    CHECK_RC(ans_kv_get_range(kv, "a/b", 0, 1, r), ANS_EIO);
    /* A symlink loop: ANS_EIO with the system's reason. */
    char lp[4300];
    snprintf(lp, sizeof lp, "%s/loop", dir);
    CHECK(symlink("loop", lp) == 0);
    CHECK_RC(ans_kv_get(kv, "loop", &b, 0), ANS_EIO);
    CHECK_STR_CONTAINS(ans_error_last(), "loop");
    CHECK_STR_CONTAINS(ans_error_last(), "symbolic links");
    /* Keys that escape the root. */
    CHECK_RC(ans_kv_get(kv, "../x", &b, 0), ANS_EINVAL);
    CHECK_RC(ans_kv_get(kv, "/etc/passwd", &b, 0), ANS_EINVAL);
    CHECK_RC(ans_kv_get(kv, "a//x", &b, 0), ANS_EINVAL);
    ans_buf_free(&b);
    ans_kv_free(kv);
    CHECK_RC(ans_kv_open_dir(&kv, "/nonexistent/ans"), ANS_ENOTFOUND);
    rm_rf(dir);
}

/* The descriptor cache behind ans_kv_get_range / ans_kv_advise: more files than it holds, values
 * rewritten through the store, a file truncated in place, threads, a forked child, and running out
 * of descriptors. Every read must return the file's current bytes (or the truncation error). */
#define FDC_FILES 40

static void fdc_expect(ans_kv *kv, int f, int gen, uint64_t off)
{
    char key[32], want[32], got[32];
    snprintf(key, sizeof key, "d/f%02d", f);
    snprintf(want, sizeof want, "%02d:%04d:", f, gen);
    CHECK_OK(ans_kv_get_range(kv, key, off % 8, 8 - off % 8, got));
    CHECK(memcmp(got, want + off % 8, 8 - off % 8) == 0);
}

typedef struct fdc_arg {
    ans_kv *kv;
    unsigned seed;
    int bad;
} fdc_arg;

static void *fdc_thread(void *p)
{
    fdc_arg *a = p;
    for (int i = 0; i < 3000; i++) {
        a->seed = a->seed * 1103515245u + 12345u;
        int f = (int)((a->seed >> 8) % FDC_FILES);
        char key[32], want[32], got[32];
        snprintf(key, sizeof key, "d/f%02d", f);
        snprintf(want, sizeof want, "%02d:%04d:", f, 0);
        if (ans_kv_get_range(a->kv, key, 0, 8, got) != ANS_OK || memcmp(got, want, 8) != 0)
            a->bad++;
        if (i % 7 == 0) ans_kv_advise(a->kv, key, 0, 8);
    }
    return NULL;
}

/* Open descriptors of this process (entries of /proc/self/fd, less the one listing them), or -1. */
static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1;
}

static void test_store_fd_cache(void)
{
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    ans_kv *kv = NULL;
    CHECK_OK(ans_kv_open_dir(&kv, dir));
    if (!kv) return;
    char key[32], val[32];
    for (int f = 0; f < FDC_FILES; f++) {
        snprintf(key, sizeof key, "d/f%02d", f);
        snprintf(val, sizeof val, "%02d:%04d:", f, 0);
        CHECK_OK(ans_kv_set(kv, key, val, 8));
    }
    /* round after round over more files than the cache holds */
    for (int r = 0; r < 5; r++)
        for (int f = 0; f < FDC_FILES; f++) fdc_expect(kv, f, 0, (uint64_t)(r + f));
    /* threads reading at once (the TSan tier runs this too) */
    pthread_t th[4];
    fdc_arg args[4];
    for (int t = 0; t < 4; t++) {
        args[t] = (fdc_arg){kv, (unsigned)t + 1, 0};
        CHECK(pthread_create(&th[t], NULL, fdc_thread, &args[t]) == 0);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        CHECK(args[t].bad == 0);
    }
    /* rewritten through the store: the next read sees the new file, not the cached old one */
    fdc_expect(kv, 3, 0, 0);
    CHECK_OK(ans_kv_set(kv, "d/f03", "03:0001:", 8));
    fdc_expect(kv, 3, 1, 0);
    fdc_expect(kv, 3, 1, 5);
    /* truncated in place under the cached descriptor: an error, not stale bytes */
    fdc_expect(kv, 4, 0, 0);
    char path[4300];
    snprintf(path, sizeof path, "%s/d/f04", dir);
    CHECK(truncate(path, 4) == 0);
    char got[32];
    CHECK_RC(ans_kv_get_range(kv, "d/f04", 0, 8, got), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "truncated");
    CHECK_OK(ans_kv_get_range(kv, "d/f04", 0, 4, got));
    CHECK(memcmp(got, "04:0", 4) == 0);
    /* a forked child reads through the inherited store (its own descriptors), then opens a store of
     * its own under a descriptor limit that the cache alone would exhaust */
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int ok = 1;
        char w[32];
        for (int f = 5; f < FDC_FILES && ok; f++) {
            snprintf(key, sizeof key, "d/f%02d", f);
            snprintf(val, sizeof val, "%02d:%04d:", f, 0);
            ok = ans_kv_get_range(kv, key, 0, 8, w) == ANS_OK && memcmp(w, val, 8) == 0;
        }
        ans_kv *own = NULL;
        ok = ok && ans_kv_open_dir(&own, dir) == ANS_OK;
        int lowest = open("/dev/null", O_RDONLY); /* the next free descriptor number */
        if (lowest >= 0) close(lowest);
        struct rlimit rl = {(rlim_t)lowest + 6, (rlim_t)lowest + 6};
        int limited = ok && lowest >= 0 && setrlimit(RLIMIT_NOFILE, &rl) == 0;
        if (ok && !limited) /* valgrind refuses a lower descriptor limit: read without one */
            fprintf(stderr, "note: setrlimit(RLIMIT_NOFILE) refused: reading without the limit\n");
        for (int r = 0; r < 3 && ok; r++)
            for (int f = 5; f < FDC_FILES && ok; f++) {
                snprintf(key, sizeof key, "d/f%02d", f);
                snprintf(val, sizeof val, "%02d:%04d:", f, 0);
                ok = ans_kv_get_range(own, key, 0, 8, w) == ANS_OK && memcmp(w, val, 8) == 0;
            }
        _exit(ok ? 0 : 1);
    }
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* at the common soft limit of 1024 a store keeps at most 8 descriptors open */
    fflush(NULL);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        struct rlimit rl;
        int ok = getrlimit(RLIMIT_NOFILE, &rl) == 0;
        if (ok && rl.rlim_max >= 1024) {
            rl.rlim_cur = 1024;
            if (setrlimit(RLIMIT_NOFILE, &rl) != 0) _exit(0); /* valgrind: nothing to check */
        }
        int before = count_fds();
        ans_kv *own = NULL;
        ok = ok && before >= 0 && ans_kv_open_dir(&own, dir) == ANS_OK;
        char w[32];
        for (int f = 5; f < FDC_FILES && ok; f++) {
            snprintf(key, sizeof key, "d/f%02d", f);
            ok = ans_kv_get_range(own, key, 0, 8, w) == ANS_OK;
        }
        int held = count_fds() - before;
        if (own) ans_kv_free(own);
        _exit(ok && held >= 2 && held <= 8 && count_fds() == before ? 0 : 1);
    }
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    for (int f = 5; f < FDC_FILES; f++) fdc_expect(kv, f, 0, 1); /* the parent's cache still works */
    ans_kv_free(kv);
    rm_rf(dir);
}

/* ---- metadata --------------------------------------------------------------------------------- */

static ans_zarray *meta_array(ans_container *c, const char *json)
{
    ans_json *j = NULL;
    ans_array *a = NULL;
    CHECK_OK(ans_json_parse(json, strlen(json), &j));
    if (j) CHECK_OK(ans_zarray_open((ans_zstore *)c, "X/data", j, &a));
    ans_json_free(j);
    return (ans_zarray *)a;
}

static void check_key(ans_container *c, const char *cke, const char *shape, const char *chunks,
                      const uint64_t *coord, const char *want)
{
    char json[2048];
    snprintf(json, sizeof json,
             "{\"zarr_format\":3,\"node_type\":\"array\",\"shape\":%s,\"data_type\":\"int8\","
             "\"chunk_grid\":{\"name\":\"regular\",\"configuration\":{\"chunk_shape\":%s}},"
             "\"chunk_key_encoding\":%s,\"fill_value\":0,\"codecs\":[{\"name\":\"bytes\"}]}",
             shape, chunks, cke);
    ans_zarray *za = meta_array(c, json);
    if (!za) return;
    char key[256];
    CHECK_OK(ans_zkey(za, coord, key, sizeof key));
    if (strcmp(key, want)) {
        fprintf(stderr, "chunk key '%s', expected '%s'\n", key, want);
        CHECK(0);
    }
    ans_array_free(&za->base);
}

static void test_chunk_keys(void)
{
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, "zarr.json", V3_GROUP);
    ans_container *c = open_zarr(dir, NULL);
    if (!c) return;
    const uint64_t co[3] = {1, 23, 45};
    check_key(c, "{\"name\":\"default\",\"configuration\":{\"separator\":\"/\"}}", "[10,100,100]",
              "[1,1,1]", co, "X/data/c/1/23/45");
    check_key(c, "{\"name\":\"default\"}", "[10,100,100]", "[1,1,1]", co, "X/data/c/1/23/45");
    check_key(c, "{\"name\":\"default\",\"configuration\":{\"separator\":\".\"}}", "[10,100,100]",
              "[1,1,1]", co, "X/data/c.1.23.45");
    check_key(c, "{\"name\":\"v2\",\"configuration\":{\"separator\":\".\"}}", "[10,100,100]",
              "[1,1,1]", co, "X/data/1.23.45");
    check_key(c, "{\"name\":\"v2\"}", "[10,100,100]", "[1,1,1]", co, "X/data/1.23.45");
    check_key(c, "{\"name\":\"v2\",\"configuration\":{\"separator\":\"/\"}}", "[10,100,100]",
              "[1,1,1]", co, "X/data/1/23/45");
    const uint64_t big[1] = {UINT64_MAX - 1};
    check_key(c, "{\"name\":\"default\"}", "[18446744073709551615]", "[1]", big,
              "X/data/c/18446744073709551614");
    /* 0-d: "c" (default) and "0" (v2). */
    const uint64_t zero[1] = {0};
    check_key(c, "{\"name\":\"default\"}", "[]", "[]", zero, "X/data/c");
    check_key(c, "{\"name\":\"v2\"}", "[]", "[]", zero, "X/data/0");
    ans_container_free(c);
    rm_rf(dir);
}

static void test_fill_parse(void)
{
    uint8_t out[16];
    ans_json *j = NULL;
#define FILL(text, dt)                                                                             \
    do {                                                                                           \
        ans_json_free(j);                                                                          \
        j = NULL;                                                                                  \
        CHECK_OK(ans_json_parse(text, strlen(text), &j));                                          \
        CHECK_OK(ans_zmeta_parse_fill(j, dt, out, "t"));                                           \
    } while (0)
    float f;
    double d;
    uint64_t u;
    uint16_t h;
    FILL("\"NaN\"", ANS_DTYPE_FLOAT32);
    memcpy(&f, out, 4);
    CHECK(isnan(f));
    FILL("\"0x7fc00001\"", ANS_DTYPE_FLOAT32);
    uint32_t w;
    memcpy(&w, out, 4);
    CHECK(w == 0x7fc00001u);
    FILL("\"-Infinity\"", ANS_DTYPE_FLOAT64);
    memcpy(&d, out, 8);
    CHECK(isinf(d) && d < 0);
    FILL("\"Infinity\"", ANS_DTYPE_FLOAT64);
    memcpy(&d, out, 8);
    CHECK(isinf(d) && d > 0);
    FILL("18446744073709551615", ANS_DTYPE_UINT64);
    memcpy(&u, out, 8);
    CHECK(u == UINT64_MAX);
    FILL("null", ANS_DTYPE_INT32);
    CHECK(out[0] == 0 && out[3] == 0);
    FILL("1.5", ANS_DTYPE_FLOAT16);
    memcpy(&h, out, 2);
    CHECK(h == 0x3e00);
    FILL("-2.5", ANS_DTYPE_FLOAT16);
    memcpy(&h, out, 2);
    CHECK(h == 0xc100);
    FILL("\"NaN\"", ANS_DTYPE_FLOAT16);
    memcpy(&h, out, 2);
    CHECK(h == 0x7e00);
    FILL("65520", ANS_DTYPE_FLOAT16); /* rounds to infinity */
    memcpy(&h, out, 2);
    CHECK(h == 0x7c00);
    FILL("5.960464477539063e-08", ANS_DTYPE_FLOAT16); /* smallest subnormal */
    memcpy(&h, out, 2);
    CHECK(h == 0x0001);
    FILL("\"0x3c00\"", ANS_DTYPE_FLOAT16);
    memcpy(&h, out, 2);
    CHECK(h == 0x3c00);
    FILL("[1.0, \"NaN\"]", ANS_DTYPE_COMPLEX64);
    memcpy(&f, out, 4);
    CHECK(f == 1.0f);
    memcpy(&f, out + 4, 4);
    CHECK(isnan(f));
    FILL("true", ANS_DTYPE_BOOL);
    CHECK(out[0] == 1);
    FILL("-128", ANS_DTYPE_INT8);
    CHECK((int8_t)out[0] == -128);
    /* Out of range, malformed. */
    ans_json_free(j);
    j = NULL;
    CHECK_OK(ans_json_parse("300", 3, &j));
    CHECK_RC(ans_zmeta_parse_fill(j, ANS_DTYPE_INT8, out, "t"), ANS_ECORRUPT);
    CHECK_RC(ans_zmeta_parse_fill(j, ANS_DTYPE_UINT8, out, "t"), ANS_ECORRUPT);
    ans_json_free(j);
    j = NULL;
    CHECK_OK(ans_json_parse("\"bogus\"", 7, &j));
    CHECK_RC(ans_zmeta_parse_fill(j, ANS_DTYPE_FLOAT32, out, "t"), ANS_ECORRUPT);
    ans_json_free(j);
#undef FILL
}

static void test_typestr(void)
{
    ans_dtype dt;
    ans_zstr_kind sk;
    size_t es;
    int big;
    CHECK_OK(ans_zmeta_parse_typestr(">f8", &dt, &sk, &es, &big, "t"));
    CHECK(dt == ANS_DTYPE_FLOAT64 && es == 8 && big == 1 && sk == ANS_ZSTR_NONE);
    CHECK_OK(ans_zmeta_parse_typestr("|b1", &dt, &sk, &es, &big, "t"));
    CHECK(dt == ANS_DTYPE_BOOL && es == 1 && big == 0);
    CHECK_OK(ans_zmeta_parse_typestr("<c16", &dt, &sk, &es, &big, "t"));
    CHECK(dt == ANS_DTYPE_COMPLEX128 && es == 16);
    CHECK_OK(ans_zmeta_parse_typestr("<U12", &dt, &sk, &es, &big, "t"));
    CHECK(dt == ANS_DTYPE_STRING && sk == ANS_ZSTR_UTF32 && es == 48);
    CHECK_OK(ans_zmeta_parse_typestr("|S5", &dt, &sk, &es, &big, "t"));
    CHECK(dt == ANS_DTYPE_STRING && sk == ANS_ZSTR_BYTES && es == 5);
    CHECK_OK(ans_zmeta_parse_typestr("|O", &dt, &sk, &es, &big, "t"));
    CHECK(dt == ANS_DTYPE_STRING && sk == ANS_ZSTR_VLEN);
    CHECK_OK(ans_zmeta_parse_typestr("<f2", &dt, &sk, &es, &big, "t"));
    CHECK(dt == ANS_DTYPE_FLOAT16);
    CHECK_RC(ans_zmeta_parse_typestr("<M8", &dt, &sk, &es, &big, "arr"), ANS_EUNSUPPORTED);
    CHECK_STR_CONTAINS(ans_error_last(), "<M8");
    CHECK_RC(ans_zmeta_parse_typestr("<i3", &dt, &sk, &es, &big, "t"), ANS_EUNSUPPORTED);
    CHECK_RC(ans_zmeta_parse_typestr("i4", &dt, &sk, &es, &big, "t"), ANS_ECORRUPT);
    CHECK_RC(ans_zmeta_parse_typestr("<i4x", &dt, &sk, &es, &big, "t"), ANS_ECORRUPT);
}

/* ---- sharding --------------------------------------------------------------------------------- */

static void shard_store(char *dir, size_t cap, const char *codecs)
{
    CHECK(tmpdir(dir, cap) == 0);
    put_s(dir, "zarr.json", V3_GROUP);
    put_v3(dir, "a", "[8]", "\"int32\"", "[8]", "0", codecs, NULL);
}

static void test_shard_example(void)
{
    char dir[4200];
    shard_store(dir, sizeof dir, SHARD_CODECS_END);
    uint8_t shard[68];
    CHECK(example_shard(shard, 0, 0) == 68);
    static const uint8_t crc_full[4] = {0xda, 0x13, 0x6a, 0x9d};
    CHECK(!memcmp(shard + 64, crc_full, 4));
    put(dir, "a/c/0", shard, 68);
    ans_pool *pool = NULL;
    CHECK_OK(ans_pool_new(&pool, 3));
    ans_container *c = open_zarr(dir, pool);
    ans_array *a = open_arr(c, "a");
    if (a) {
        int32_t v[8] = {0};
        ans_range r = {0, 8};
        CHECK_OK(a->ops->read(a, &r, 1, v));
        for (int i = 0; i < 8; i++) CHECK(v[i] == i);
        /* Scattered, repeated, unordered ranges. */
        ans_range rs[4] = {{6, 2}, {1, 4}, {3, 1}, {6, 2}};
        int32_t w[9];
        CHECK_OK(a->ops->read(a, rs, 4, w));
        static const int32_t want[9] = {6, 7, 1, 2, 3, 4, 3, 6, 7};
        CHECK(!memcmp(w, want, sizeof want));
        ans_json *d = ans_json_new_object();
        CHECK_OK(a->ops->describe(a, d));
        uint64_t sb = 0;
        CHECK(ans_json_get_u64(ans_json_get(d, "stored_bytes"), &sb) == 0 && sb == 68);
        uint64_t ch = 0;
        CHECK(ans_json_get_u64(ans_json_at(ans_json_get(d, "chunks"), 0), &ch) == 0 && ch == 4);
        CHECK(ans_json_get_u64(ans_json_at(ans_json_get(d, "shards"), 0), &ch) == 0 && ch == 8);
        ans_json_free(d);
        ans_array_free(a);
    }
    ans_container_free(c);

    /* The 52-byte shard with inner chunk 1 omitted: 4..7 read as the fill value. */
    uint8_t shard2[52];
    CHECK(example_shard(shard2, 1, 0) == 52);
    static const uint8_t crc_empty[4] = {0x2b, 0xe4, 0x65, 0xa2};
    CHECK(!memcmp(shard2 + 48, crc_empty, 4));
    put(dir, "a/c/0", shard2, 52);
    c = open_zarr(dir, pool);
    a = open_arr(c, "a");
    if (a) {
        int32_t v[8];
        memset(v, 0x55, sizeof v);
        ans_range r = {0, 8};
        CHECK_OK(a->ops->read(a, &r, 1, v));
        for (int i = 0; i < 8; i++) CHECK(v[i] == (i < 4 ? i : 0));
        ans_array_free(a);
    }
    ans_container_free(c);
    ans_pool_free(pool);
    rm_rf(dir);
}

static void test_shard_index_start(void)
{
    char dir[4200];
    shard_store(dir, sizeof dir, SHARD_CODECS_START);
    uint8_t shard[68];
    example_shard(shard, 0, 1);
    put(dir, "a/c/0", shard, 68);
    ans_container *c = open_zarr(dir, NULL);
    ans_array *a = open_arr(c, "a");
    if (a) {
        int32_t v[8] = {0};
        ans_range r = {2, 5};
        CHECK_OK(a->ops->read(a, &r, 1, v));
        for (int i = 0; i < 5; i++) CHECK(v[i] == i + 2);
        ans_array_free(a);
    }
    ans_container_free(c);
    rm_rf(dir);
}

/* Read [0, 8) from a store whose shard is `shard`; expect `want`. */
static void read_bad_shard(const uint8_t *shard, size_t n, int want, const char *msg)
{
    char dir[4200];
    shard_store(dir, sizeof dir, SHARD_CODECS_END);
    put(dir, "a/c/0", shard, n);
    ans_container *c = open_zarr(dir, NULL);
    ans_array *a = open_arr(c, "a");
    if (a) {
        int32_t v[8];
        ans_range r = {0, 8};
        CHECK_RC(a->ops->read(a, &r, 1, v), want);
        CHECK_STR_CONTAINS(ans_error_last(), msg);
        CHECK_STR_CONTAINS(ans_error_last(), dir);
        ans_array_free(a);
    }
    ans_container_free(c);
    rm_rf(dir);
}

static void test_shard_corrupt(void)
{
    uint8_t shard[68];
    /* CRC mismatch. */
    example_shard(shard, 0, 0);
    shard[40] ^= 1;
    read_bad_shard(shard, 68, ANS_ECORRUPT, "checksum");
    /* Offset past the end (CRC recomputed so that only the bounds check can catch it). */
    example_shard(shard, 0, 0);
    wr64(shard + 32 + 16, 60);
    wr32(shard + 64, ans_crc32c(0, shard + 32, 32));
    read_bad_shard(shard, 68, ANS_ECORRUPT, "outside");
    /* offset + nbytes overflows. */
    example_shard(shard, 0, 0);
    wr64(shard + 32 + 16, 16);
    wr64(shard + 32 + 24, UINT64_MAX - 8);
    wr32(shard + 64, ans_crc32c(0, shard + 32, 32));
    read_bad_shard(shard, 68, ANS_ECORRUPT, "outside");
    /* Shorter than its index. */
    example_shard(shard, 0, 0);
    read_bad_shard(shard, 20, ANS_ECORRUPT, "truncated");
    /* An inner chunk of the wrong size. */
    example_shard(shard, 0, 0);
    wr64(shard + 32 + 24, 12);
    wr32(shard + 64, ans_crc32c(0, shard + 32, 32));
    read_bad_shard(shard, 68, ANS_ECORRUPT, "inner chunk");
}

/* Reading sharded blosc units in part. Once a unit's head (header and block-start table) has been
 * read, a later read that needs only some of its blocks reads just those bytes and puts the cached
 * head in front of them. Shown here by damaging what such a read must skip: the head of the first
 * unit of a read (in place, same size: the shard index still matches), and the tail of the last
 * unit of a shard (truncated away; the shard index is cached). Reads that need those bytes fail. */
/* out[q] == first + q for q < n */
static int floats_from(const float *out, uint64_t n, uint64_t first)
{
    for (uint64_t q = 0; q < n; q++)
        if (out[q] != (float)(first + q)) return 0;
    return 1;
}

#define PART_U 262144 /* float32 values per unit: 1 MiB, 4 lz4 blocks of 256 KiB at clevel 3 */
static void test_shard_blosc_part(void)
{
    char dir[4200], path[4300];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, "zarr.json", V3_GROUP);
    char shape[64], codecs[1024];
    snprintf(shape, sizeof shape, "[%d]", 4 * PART_U);
    snprintf(codecs, sizeof codecs,
             "[{\"name\":\"sharding_indexed\",\"configuration\":{\"chunk_shape\":[%d],"
             "\"codecs\":[{\"name\":\"bytes\",\"configuration\":{\"endian\":\"little\"}},"
             "{\"name\":\"blosc\",\"configuration\":{\"typesize\":4,\"cname\":\"lz4\","
             "\"clevel\":3,\"shuffle\":\"shuffle\",\"blocksize\":0}}],"
             "\"index_codecs\":[{\"name\":\"bytes\",\"configuration\":{\"endian\":\"little\"}},"
             "{\"name\":\"crc32c\"}],\"index_location\":\"start\"}}]",
             PART_U);
    put_v3(dir, "a", shape, "\"float32\"", shape, "0", codecs, NULL);
    /* the shard: index (4 x 16 bytes + CRC) first, then the 4 units */
    size_t ub = (size_t)PART_U * 4, cap = 68 + 4 * ans_blosc_bound(ub), len = 68;
    float *v = malloc(4 * ub);
    uint8_t *shard = malloc(cap);
    uint64_t off[4], nb[4];
    uint32_t bstart1[4] = {0}; /* where each unit's block 1 starts */
    if (!v || !shard) return;
    for (size_t i = 0; i < 4 * (size_t)PART_U; i++) v[i] = (float)i;
    for (int u = 0; u < 4; u++) {
        size_t el = 0;
        CHECK_OK(ans_blosc_encode(v + (size_t)u * PART_U, ub, shard + len, cap - len, &el, "lz4",
                                  3, 1, 4, 1));
        off[u] = len;
        nb[u] = el;
        bstart1[u] = (uint32_t)shard[len + 20] | (uint32_t)shard[len + 21] << 8 |
                     (uint32_t)shard[len + 22] << 16 | (uint32_t)shard[len + 23] << 24;
        CHECK(shard[len + 8] == 0 && shard[len + 9] == 0 && shard[len + 10] == 4); /* 256 KiB */
        wr64(shard + 16 * u, off[u]);
        wr64(shard + 16 * u + 8, nb[u]);
        len += el;
    }
    wr32(shard + 64, ans_crc32c(0, shard, 64));
    put(dir, "a/c/0", shard, len);
    snprintf(path, sizeof path, "%s/a/c/0", dir);

    ans_pool *pool = NULL;
    CHECK_OK(ans_pool_new(&pool, 2));
    ans_container *c = open_zarr(dir, pool);
    ans_array *a = open_arr(c, "a");
    float *out = malloc(3 * 4 * ub); /* room for the largest set of ranges below */
    if (a && out) {
        /* random sets of ranges, twice: the second time most units are read in part */
        uint64_t rs = 5;
        for (int pass = 0; pass < 2; pass++)
            for (int t = 0; t < 30; t++) {
                ans_range r[6];
                uint64_t total = 0;
                for (int k = 0; k < 6; k++) {
                    r[k].start = rng_next(&rs) % (4 * (uint64_t)PART_U - 1);
                    uint64_t room = 4 * (uint64_t)PART_U - r[k].start;
                    r[k].count = 1 + rng_next(&rs) % (k < 3 ? 5000 : (room < 700000 ? room : 700000));
                    if (r[k].count > room) r[k].count = room;
                    total += r[k].count;
                }
                memset(out, 0xFF, (size_t)total * 4);
                CHECK_OK(a->ops->read(a, r, 6, out));
                uint64_t at = 0;
                int good = 1;
                for (int k = 0; k < 6; k++) {
                    good &= floats_from(out + at, r[k].count, r[k].start);
                    at += r[k].count;
                }
                CHECK(good);
            }
        /* unit 1 was read whole above (head cached): damage its head in place */
        int fd = open(path, O_WRONLY);
        CHECK(fd >= 0);
        uint8_t junk[48];
        memset(junk, 0xEE, sizeof junk);
        CHECK(pwrite(fd, junk, sizeof junk, (off_t)off[1]) == (ssize_t)sizeof junk);
        ans_range r1 = {PART_U + 70000, 100000}; /* blocks 1 and 2 of unit 1 */
        CHECK_OK(a->ops->read(a, &r1, 1, out));
        CHECK(floats_from(out, 100000, PART_U + 70000));
        /* the end of unit 1 and the start of unit 2: one read, unit 1 cut at its start */
        ans_range r2 = {2 * (uint64_t)PART_U - 10, 20};
        CHECK_OK(a->ops->read(a, &r2, 1, out));
        CHECK(floats_from(out, 20, 2 * (uint64_t)PART_U - 10));
        /* the end of unit 0 and the start of unit 1: unit 1's head is read with it */
        ans_range r3 = {PART_U - 10, 20};
        CHECK_RC(a->ops->read(a, &r3, 1, out), ANS_ECORRUPT);
        CHECK_STR_CONTAINS(ans_error_last(), "inner chunk '1'");
        /* cut the shard inside unit 3's block 1: block 0 still reads, block 1 does not */
        CHECK(ftruncate(fd, (off_t)(off[3] + bstart1[3] + 10)) == 0);
        close(fd);
        ans_range r4 = {3 * (uint64_t)PART_U + 5, 1000};
        CHECK_OK(a->ops->read(a, &r4, 1, out));
        CHECK(floats_from(out, 1000, 3 * (uint64_t)PART_U + 5));
        ans_range r5 = {3 * (uint64_t)PART_U + 65536, 10};
        CHECK(a->ops->read(a, &r5, 1, out) < 0);
        CHECK_STR_CONTAINS(ans_error_last(), path);
        ans_array_free(a);
    }
    free(out);
    ans_container_free(c);
    ans_pool_free(pool);
    free(v);
    free(shard);
    rm_rf(dir);
}

static void test_shard_missing(void)
{
    /* No shard at all: everything is fill. */
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, "zarr.json", V3_GROUP);
    put_v3(dir, "a", "[20]", "\"int32\"", "[8]", "-5", SHARD_CODECS_END, NULL);
    uint8_t shard[68];
    example_shard(shard, 0, 0);
    put(dir, "a/c/1", shard, 68); /* rows 8..15; shards 0 and 2 (edge) missing */
    ans_container *c = open_zarr(dir, NULL);
    ans_array *a = open_arr(c, "a");
    if (a) {
        int32_t v[20];
        ans_range r = {0, 20};
        CHECK_OK(a->ops->read(a, &r, 1, v));
        for (int i = 0; i < 20; i++) CHECK(v[i] == (i >= 8 && i < 16 ? i - 8 : -5));
        /* Read-ahead advice over present and missing shards: OK, the last error untouched, and
         * the read after it unchanged; rows outside the array are refused. */
        ans_err(ANS_ECORRUPT, "sentinel");
        ans_range adv[2] = {{2, 10}, {15, 5}};
        CHECK_OK(ans_array_advise(a, adv, 2));
        CHECK(strcmp(ans_error_last(), "sentinel") == 0);
        int32_t w[20];
        CHECK_OK(a->ops->read(a, &r, 1, w));
        CHECK(memcmp(v, w, sizeof v) == 0);
        ans_range out_of = {18, 5};
        CHECK_RC(ans_array_advise(a, &out_of, 1), ANS_EINVAL);
        /* Many small reads of the same shard hit the index cache. */
        for (int k = 0; k < 50; k++) {
            ans_range q = {(uint64_t)(8 + k % 8), 1};
            int32_t x = -1;
            CHECK_OK(a->ops->read(a, &q, 1, &x));
            CHECK(x == k % 8);
        }
        ans_array_free(a);
    }
    ans_container_free(c);
    rm_rf(dir);
}

/* Several threads reading one sharded array at once (100 shards: the index cache evicts). */
typedef struct conc_arg {
    ans_array *a;
    unsigned seed;
    int errors;
} conc_arg;

static void *conc_reader(void *p)
{
    conc_arg *ca = p;
    int32_t v[300];
    uint64_t x = ca->seed;
    for (int it = 0; it < 300; it++) {
        ans_range rs[3];
        uint64_t total = 0;
        for (int k = 0; k < 3; k++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            rs[k].start = (x >> 33) % 800;
            rs[k].count = 1 + (x >> 13) % 100;
            if (rs[k].start + rs[k].count > 800) rs[k].count = 800 - rs[k].start;
            total += rs[k].count;
        }
        if (ca->a->ops->read(ca->a, rs, 3, v) != ANS_OK) {
            ca->errors++;
            continue;
        }
        uint64_t o = 0;
        for (int k = 0; k < 3; k++)
            for (uint64_t i = 0; i < rs[k].count; i++, o++)
                if (v[o] != (int32_t)((rs[k].start + i) % 8)) ca->errors++;
        (void)total;
    }
    return NULL;
}

static void test_concurrent_reads(void)
{
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, "zarr.json", V3_GROUP);
    put_v3(dir, "a", "[800]", "\"int32\"", "[8]", "0", SHARD_CODECS_END, NULL);
    uint8_t shard[68];
    example_shard(shard, 0, 0);
    for (int i = 0; i < 100; i++) {
        char key[64];
        snprintf(key, sizeof key, "a/c/%d", i);
        put(dir, key, shard, 68);
    }
    ans_pool *pool = NULL;
    CHECK_OK(ans_pool_new(&pool, 3));
    ans_container *c = open_zarr(dir, pool);
    ans_array *a = open_arr(c, "a");
    if (a) {
        pthread_t th[4];
        conc_arg args[4];
        for (int i = 0; i < 4; i++) {
            args[i].a = a;
            args[i].seed = 17u * (unsigned)i + 1;
            args[i].errors = 0;
            CHECK(pthread_create(&th[i], NULL, conc_reader, &args[i]) == 0);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            CHECK(args[i].errors == 0);
        }
        ans_array_free(a);
    }
    ans_container_free(c);
    ans_pool_free(pool);
    rm_rf(dir);
}

/* ---- v2 layouts ------------------------------------------------------------------------------- */

static void test_v2_big_endian_and_missing(void)
{
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, ".zgroup", "{\"zarr_format\":2}");
    put_v2(dir, "be", "[7]", "[3]", ">i4", "-1", "null", NULL);
    uint8_t chunk[12];
    for (int i = 0; i < 3; i++) {
        uint32_t v = (uint32_t)(1000 * i - 1);
        chunk[4 * i] = (uint8_t)(v >> 24);
        chunk[4 * i + 1] = (uint8_t)(v >> 16);
        chunk[4 * i + 2] = (uint8_t)(v >> 8);
        chunk[4 * i + 3] = (uint8_t)v;
    }
    put(dir, "be/0", chunk, 12);
    put(dir, "be/2", chunk, 12); /* edge chunk: rows 6..8, only row 6 exists */
    ans_container *c = open_zarr(dir, NULL);
    ans_array *a = open_arr(c, "be");
    if (a) {
        CHECK(a->dtype == ANS_DTYPE_INT32 && a->ndim == 1 && a->shape[0] == 7);
        int32_t v[7];
        ans_range r = {0, 7};
        CHECK_OK(a->ops->read(a, &r, 1, v));
        static const int32_t want[7] = {-1, 999, 1999, -1, -1, -1, -1};
        CHECK(!memcmp(v, want, sizeof want));
        /* advice on unsharded chunk files, one of them missing */
        CHECK_OK(ans_array_advise(a, &r, 1));
        memset(v, 0, sizeof v);
        CHECK_OK(a->ops->read(a, &r, 1, v));
        CHECK(!memcmp(v, want, sizeof want));
        ans_array_free(a);
    }
    ans_container_free(c);
    rm_rf(dir);
}

static void test_v2_fill_nan_u64(void)
{
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, ".zgroup", "{\"zarr_format\":2}");
    put_v2(dir, "f", "[5]", "[2]", "<f4", "\"NaN\"", "null", NULL);
    put_v2(dir, "u", "[3]", "[2]", "<u8", "18446744073709551615", "null", NULL);
    float two[2] = {1.5f, 2.5f};
    put(dir, "f/1", two, 8);
    ans_container *c = open_zarr(dir, NULL);
    ans_array *a = open_arr(c, "f");
    if (a) {
        float v[5];
        ans_range r = {0, 5};
        CHECK_OK(a->ops->read(a, &r, 1, v));
        CHECK(isnan(v[0]) && isnan(v[1]) && v[2] == 1.5f && v[3] == 2.5f && isnan(v[4]));
        ans_array_free(a);
    }
    a = open_arr(c, "u");
    if (a) {
        uint64_t v[3];
        ans_range r = {0, 3};
        CHECK_OK(a->ops->read(a, &r, 1, v));
        CHECK(v[0] == UINT64_MAX && v[1] == UINT64_MAX && v[2] == UINT64_MAX);
        ans_array_free(a);
    }
    ans_container_free(c);
    rm_rf(dir);
}

/* 2-D int32 13 x 11, value 100 i + j, chunked 4 x 3, raw chunks, order C or F, '.' or '/'. */
static void make_grid_v2(const char *dir, const char *path, int order_f, char sep,
                         int skip_chunk_1_1)
{
    char meta[1024], key[256];
    snprintf(meta, sizeof meta,
             "{\"zarr_format\":2,\"shape\":[13,11],\"chunks\":[4,3],\"dtype\":\"<i4\","
             "\"fill_value\":-9,\"order\":\"%s\",\"filters\":[],\"compressor\":null,"
             "\"dimension_separator\":\"%c\"}",
             order_f ? "F" : "C", sep);
    snprintf(key, sizeof key, "%s/.zarray", path);
    put_s(dir, key, meta);
    for (int ci = 0; ci < 4; ci++)
        for (int cj = 0; cj < 4; cj++) {
            if (skip_chunk_1_1 && ci == 1 && cj == 1) continue;
            int32_t buf[12];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 3; j++) {
                    int32_t v = 100 * (ci * 4 + i) + cj * 3 + j;
                    if (order_f) buf[j * 4 + i] = v;
                    else buf[i * 3 + j] = v;
                }
            snprintf(key, sizeof key, "%s/%d%c%d", path, ci, sep, cj);
            put(dir, key, buf, sizeof buf);
        }
}

static void check_grid(ans_array *a, int skip_chunk_1_1)
{
    if (!a) return;
    CHECK(a->ndim == 2 && a->shape[0] == 13 && a->shape[1] == 11 && a->row_bytes == 44);
    ans_range rs[5] = {{11, 2}, {0, 3}, {5, 1}, {2, 7}, {5, 1}};
    int32_t v[14 * 11];
    CHECK_OK(a->ops->read(a, rs, 5, v));
    size_t k = 0;
    for (int q = 0; q < 5; q++)
        for (uint64_t i = rs[q].start; i < rs[q].start + rs[q].count; i++, k++)
            for (int j = 0; j < 11; j++) {
                int32_t want = (int32_t)(100 * i + (uint64_t)j);
                if (skip_chunk_1_1 && i >= 4 && i < 8 && j >= 3 && j < 6) want = -9;
                if (v[k * 11 + (size_t)j] != want) {
                    fprintf(stderr, "row %llu col %d: %d != %d\n", (unsigned long long)i, j,
                            v[k * 11 + (size_t)j], want);
                    CHECK(0);
                    return;
                }
            }
}

static void test_v2_layouts(void)
{
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, ".zgroup", "{\"zarr_format\":2}");
    make_grid_v2(dir, "c_dot", 0, '.', 1);
    make_grid_v2(dir, "f_dot", 1, '.', 0);
    make_grid_v2(dir, "c_slash", 0, '/', 0);
    make_grid_v2(dir, "f_slash", 1, '/', 1);
    ans_pool *pool = NULL;
    CHECK_OK(ans_pool_new(&pool, 4));
    ans_container *c = open_zarr(dir, pool);
    const char *names[4] = {"c_dot", "f_dot", "c_slash", "f_slash"};
    for (int i = 0; i < 4; i++) {
        ans_array *a = open_arr(c, names[i]);
        check_grid(a, i == 0 || i == 3);
        ans_array_free(a);
    }
    /* Listing a v2 group without .zmetadata: chunk directories are not children. */
    char **ch = NULL;
    size_t n = 0;
    if (c) {
        CHECK_OK(c->ops->children(c, "", &ch, &n));
        CHECK(n == 4);
        if (n == 4) CHECK(!strcmp(ch[0], "c_dot") && !strcmp(ch[3], "f_slash"));
        ans_kv_names_free(ch, n);
    }
    ans_container_free(c);
    ans_pool_free(pool);
    rm_rf(dir);
}

static void test_v3_transpose(void)
{
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, "zarr.json", V3_GROUP);
    /* 2 x 3 x 4 uint16, one chunk stored transposed with order [2, 0, 1] big-endian. */
    put_v3(dir, "t", "[2,3,4]", "\"uint16\"", "[2,3,4]", "0",
           "[{\"name\":\"transpose\",\"configuration\":{\"order\":[2,0,1]}},"
           "{\"name\":\"bytes\",\"configuration\":{\"endian\":\"big\"}}]",
           NULL);
    uint8_t buf[48];
    size_t k = 0;
    /* Stored shape B = (4, 2, 3): B[l][i][j] = A[i][j][l]. */
    for (int l = 0; l < 4; l++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++) {
                uint16_t v = (uint16_t)(100 * i + 10 * j + l);
                buf[k++] = (uint8_t)(v >> 8);
                buf[k++] = (uint8_t)v;
            }
    put(dir, "t/c/0/0/0", buf, sizeof buf);
    ans_container *c = open_zarr(dir, NULL);
    ans_array *a = open_arr(c, "t");
    if (a) {
        uint16_t v[24];
        ans_range r = {0, 2};
        CHECK_OK(a->ops->read(a, &r, 1, v));
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++)
                for (int l = 0; l < 4; l++) CHECK(v[i * 12 + j * 4 + l] == 100 * i + 10 * j + l);
        ans_array_free(a);
    }
    ans_container_free(c);
    rm_rf(dir);
}

static void test_v3_fill_hex(void)
{
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, "zarr.json", V3_GROUP);
    put_v3(dir, "h", "[3]", "\"float32\"", "[2]", "\"0x7fc00000\"", "[{\"name\":\"bytes\"}]", NULL);
    put_v3(dir, "u", "[3]", "\"uint64\"", "[2]", "18446744073709551615", "[\"bytes\"]", NULL);
    ans_container *c = open_zarr(dir, NULL);
    ans_array *a = open_arr(c, "h");
    if (a) {
        uint32_t v[3];
        ans_range r = {0, 3};
        CHECK_OK(a->ops->read(a, &r, 1, v));
        CHECK(v[0] == 0x7fc00000u && v[2] == 0x7fc00000u);
        ans_array_free(a);
    }
    a = open_arr(c, "u");
    if (a) {
        uint64_t v[3];
        ans_range r = {0, 3};
        CHECK_OK(a->ops->read(a, &r, 1, v));
        CHECK(v[0] == UINT64_MAX && v[2] == UINT64_MAX);
        ans_array_free(a);
    }
    ans_container_free(c);
    rm_rf(dir);
}

static void test_v2_strings(void)
{
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, ".zgroup", "{\"zarr_format\":2}");
    put_s(dir, "s/.zarray",
          "{\"zarr_format\":2,\"shape\":[5],\"chunks\":[3],\"dtype\":\"|O\",\"fill_value\":0,"
          "\"order\":\"C\",\"filters\":[{\"id\":\"vlen-utf8\"}],\"compressor\":null}");
    /* chunk 0: "a", "", "héllo"; chunk 1 (edge): "xy", "z", "" (overhang) */
    static const uint8_t c0[] = {3, 0, 0, 0, 1, 0, 0, 0, 'a', 0, 0, 0, 0, 6, 0, 0, 0,
                                 'h', 0xc3, 0xa9, 'l', 'l', 'o'};
    static const uint8_t c1[] = {3, 0, 0, 0, 2, 0, 0, 0, 'x', 'y', 1, 0, 0, 0, 'z', 0, 0, 0, 0};
    put(dir, "s/0", c0, sizeof c0);
    put(dir, "s/1", c1, sizeof c1);
    put_s(dir, "t/.zarray",
          "{\"zarr_format\":2,\"shape\":[3],\"chunks\":[2],\"dtype\":\">U2\",\"fill_value\":\"\","
          "\"order\":\"C\",\"filters\":null,\"compressor\":null}");
    static const uint8_t t0[] = {0, 0, 0, 'a', 0, 0, 0x20, 0xac, 0, 0, 0, 'b', 0, 0, 0, 0};
    put(dir, "t/0", t0, sizeof t0);
    ans_container *c = open_zarr(dir, NULL);
    ans_array *a = open_arr(c, "s");
    if (a) {
        CHECK(a->dtype == ANS_DTYPE_STRING);
        uint64_t off[6];
        ans_buf data = {0};
        CHECK_OK(a->ops->read_strings(a, 0, 5, off, &data));
        CHECK(off[0] == 0 && off[1] == 1 && off[2] == 1 && off[3] == 7 && off[4] == 9 &&
              off[5] == 10);
        CHECK(data.len == 10 && !memcmp(data.data, "ah\xc3\xa9llo" "xyz", 10));
        /* Appending a slice: offsets start at the current length. */
        CHECK_OK(a->ops->read_strings(a, 2, 2, off, &data));
        CHECK(off[0] == 10 && off[1] == 16 && off[2] == 18);
        CHECK_RC(a->ops->read_strings(a, 4, 2, off, &data), ANS_EINVAL);
        int32_t dummy;
        ans_range r = {0, 1};
        CHECK_RC(a->ops->read(a, &r, 1, &dummy), ANS_EINVAL);
        ans_buf_free(&data);
        ans_array_free(a);
    }
    a = open_arr(c, "t");
    if (a) {
        uint64_t off[4];
        ans_buf data = {0};
        CHECK_OK(a->ops->read_strings(a, 0, 3, off, &data));
        CHECK(off[1] == 4 && off[2] == 5 && off[3] == 5); /* "a€", "b", "" (missing) */
        CHECK(!memcmp(data.data, "a\xe2\x82\xac" "b", 5));
        ans_buf_free(&data);
        ans_array_free(a);
    }
    ans_container_free(c);
    rm_rf(dir);
}

static void test_chunk_errors(void)
{
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, "zarr.json", V3_GROUP);
    put_v3(dir, "z", "[10]", "\"int32\"", "[4]", "0",
           "[{\"name\":\"bytes\"},{\"name\":\"zstd\",\"configuration\":{\"level\":0}}]", NULL);
    put_s(dir, "z/c/1", "this is not zstd");
    /* Raw chunk of the wrong size. */
    put_v3(dir, "r", "[10]", "\"int32\"", "[4]", "0", "[{\"name\":\"bytes\"}]", NULL);
    put_s(dir, "r/c/0", "short");
    /* A huge claimed chunk shape: nothing is allocated from it for a tiny chunk. */
    put_v3(dir, "huge", "[1000000000000]", "\"float64\"", "[1000000000000]", "0",
           "[{\"name\":\"bytes\"},{\"name\":\"blosc\",\"configuration\":{}}]", NULL);
    put_s(dir, "huge/c/0", "0123456789abcdef0123");
    ans_container *c = open_zarr(dir, NULL);
    ans_array *a = open_arr(c, "z");
    if (a) {
        int32_t v[10];
        ans_range r = {0, 10};
        CHECK_RC(a->ops->read(a, &r, 1, v), ANS_ECORRUPT);
        CHECK_STR_CONTAINS(ans_error_last(), dir);
        CHECK_STR_CONTAINS(ans_error_last(), "z: chunk 'c/1'");
        CHECK_STR_CONTAINS(ans_error_last(), "zstd");
        ans_array_free(a);
    }
    a = open_arr(c, "r");
    if (a) {
        int32_t v[4];
        ans_range r = {0, 4};
        CHECK_RC(a->ops->read(a, &r, 1, v), ANS_ECORRUPT);
        CHECK_STR_CONTAINS(ans_error_last(), "chunk 'c/0'");
        ans_array_free(a);
    }
    a = open_arr(c, "huge");
    if (a) {
        double v[2];
        ans_range r = {0, 2};
        CHECK_RC(a->ops->read(a, &r, 1, v), ANS_ECORRUPT);
        CHECK_STR_CONTAINS(ans_error_last(), "blosc");
        ans_array_free(a);
    }
    ans_container_free(c);
    rm_rf(dir);
}

static void test_unsupported_and_bad_json(void)
{
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, "zarr.json", V3_GROUP);
    put_v3(dir, "bz", "[4]", "\"int32\"", "[4]", "0",
           "[{\"name\":\"bytes\"},{\"name\":\"numcodecs.bz2\",\"configuration\":{}}]", NULL);
    put_s(dir, "mu/zarr.json",
          "{\"zarr_format\":3,\"node_type\":\"array\",\"shape\":[4],\"data_type\":\"int32\","
          "\"chunk_grid\":{\"name\":\"regular\",\"configuration\":{\"chunk_shape\":[4]}},"
          "\"chunk_key_encoding\":{\"name\":\"default\"},\"fill_value\":0,"
          "\"codecs\":[{\"name\":\"bytes\"}],\"future\":{\"x\":1}}");
    put_s(dir, "ok_mu/zarr.json",
          "{\"zarr_format\":3,\"node_type\":\"array\",\"shape\":[4],\"data_type\":\"int32\","
          "\"chunk_grid\":{\"name\":\"regular\",\"configuration\":{\"chunk_shape\":[4]}},"
          "\"chunk_key_encoding\":{\"name\":\"default\"},\"fill_value\":0,"
          "\"codecs\":[{\"name\":\"bytes\"}],\"future\":{\"must_understand\":false}}");
    put_s(dir, "st/zarr.json",
          "{\"zarr_format\":3,\"node_type\":\"array\",\"shape\":[4],\"data_type\":\"int32\","
          "\"chunk_grid\":{\"name\":\"regular\",\"configuration\":{\"chunk_shape\":[4]}},"
          "\"chunk_key_encoding\":{\"name\":\"default\"},\"fill_value\":0,"
          "\"codecs\":[{\"name\":\"bytes\"}],\"storage_transformers\":[{\"name\":\"x\"}]}");
    put_v3(dir, "dt", "[4]", "\"r24\"", "[4]", "0", "[{\"name\":\"bytes\"}]", NULL);
    put_s(dir, "bad/zarr.json", "{\"zarr_format\":3, \"node_type\": \"array\", ");
    ans_container *c = open_zarr(dir, NULL);
    if (c) {
        ans_array *a = NULL;
        CHECK_RC(c->ops->open_array(c, "bz", &a), ANS_EUNSUPPORTED);
        CHECK_STR_CONTAINS(ans_error_last(), "bz");
        CHECK_STR_CONTAINS(ans_error_last(), "numcodecs.bz2");
        CHECK_RC(c->ops->open_array(c, "mu", &a), ANS_EUNSUPPORTED);
        CHECK_STR_CONTAINS(ans_error_last(), "future");
        CHECK_OK(c->ops->open_array(c, "ok_mu", &a));
        ans_array_free(a);
        a = NULL;
        CHECK_RC(c->ops->open_array(c, "st", &a), ANS_EUNSUPPORTED);
        CHECK_STR_CONTAINS(ans_error_last(), "storage transformers");
        CHECK_RC(c->ops->open_array(c, "dt", &a), ANS_EUNSUPPORTED);
        CHECK_STR_CONTAINS(ans_error_last(), "r24");
        ans_node_kind k;
        CHECK_RC(c->ops->node(c, "bad", &k), ANS_ECORRUPT);
        CHECK_STR_CONTAINS(ans_error_last(), "bad/zarr.json");
        CHECK_OK(c->ops->node(c, "nothing", &k));
        CHECK(k == ANS_NODE_NONE);
        CHECK_RC(c->ops->open_array(c, "nothing", &a), ANS_ENOTFOUND);
        CHECK(a == NULL);
    }
    ans_container_free(c);
    rm_rf(dir);

    /* Broken consolidated metadata and broken root metadata fail the open. */
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, ".zgroup", "{\"zarr_format\":2}");
    put_s(dir, ".zmetadata", "{\"metadata\": {\".zgroup\": {\"zarr_format\": 2}");
    c = NULL;
    CHECK_RC(ans_zarr_open(&c, dir, NULL), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), ".zmetadata");
    rm_rf(dir);
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, "zarr.json", "nope");
    CHECK_RC(ans_zarr_open(&c, dir, NULL), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "zarr.json");
    rm_rf(dir);
    CHECK(tmpdir(dir, sizeof dir) == 0);
    CHECK(ans_zarr_probe(dir) == 0);
    CHECK_RC(ans_zarr_open(&c, dir, NULL), ANS_ECORRUPT);
    put_s(dir, ".zgroup", "{\"zarr_format\":2}");
    CHECK(ans_zarr_probe(dir) == 1);
    rm_rf(dir);
    CHECK_RC(ans_zarr_open(&c, "/nonexistent/ans.zarr", NULL), ANS_ENOTFOUND);
}

static void test_v2_tree(void)
{
    /* A v2 hierarchy without .zmetadata: nodes, attrs, children (a child group named "0"). */
    char dir[4200];
    CHECK(tmpdir(dir, sizeof dir) == 0);
    put_s(dir, ".zgroup", "{\"zarr_format\":2}");
    put_s(dir, ".zattrs", "{\"encoding-type\":\"anndata\",\"x\":NaN}");
    put_s(dir, "obs/.zgroup", "{\"zarr_format\":2}");
    put_s(dir, "obs/0/.zgroup", "{\"zarr_format\":2}");
    put_v2(dir, "obs/idx", "[2]", "[2]", "<i8", "0", "null", NULL);
    put_s(dir, "obs/stray.txt", "not a node");
    ans_container *c = open_zarr(dir, NULL);
    if (!c) return;
    CHECK(!strcmp(c->kind_name, "zarr-v2"));
    ans_node_kind k;
    CHECK_OK(c->ops->node(c, "obs", &k));
    CHECK(k == ANS_NODE_GROUP);
    CHECK_OK(c->ops->node(c, "/obs/idx/", &k));
    CHECK(k == ANS_NODE_ARRAY);
    const ans_json *at = NULL;
    CHECK_OK(c->ops->attrs(c, "", &at));
    CHECK(!strcmp(ans_json_get_str(ans_json_get(at, "encoding-type")), "anndata"));
    CHECK_OK(c->ops->attrs(c, "obs/idx", &at));
    CHECK(at && at->type == ANS_JSON_OBJECT && ans_json_len(at) == 0);
    CHECK_RC(c->ops->attrs(c, "missing", &at), ANS_ENOTFOUND);
    char **ch = NULL;
    size_t n = 0;
    CHECK_OK(c->ops->children(c, "obs", &ch, &n));
    CHECK(n == 2);
    if (n == 2) CHECK(!strcmp(ch[0], "0") && !strcmp(ch[1], "idx"));
    ans_kv_names_free(ch, n);
    CHECK_RC(c->ops->children(c, "obs/idx", &ch, &n), ANS_ENOTFOUND);
    ans_container_free(c);
    rm_rf(dir);
}

/* ---- fixtures written by zarr-python ------------------------------------------------------------ */

typedef struct fx_store {
    char name[64];
    ans_container *c;
} fx_store;

static ans_container *fx_open(fx_store *stores, int *n, ans_pool *pool, const char *name)
{
    for (int i = 0; i < *n; i++)
        if (!strcmp(stores[i].name, name)) return stores[i].c;
    if (*n == 8) return NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", g_fixtures, name);
    fx_store *s = &stores[(*n)++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->c = NULL;
    CHECK_OK(ans_zarr_open(&s->c, path, pool));
    return s->c;
}

static uint8_t *fx_load(const char *name, size_t *len)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", g_fixtures, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

static int fx_failures;

static void fx_fail(const char *store, const char *path, const char *what)
{
    fprintf(stderr, "fixture %s %s: %s\n  last error: %s\n", store, path, what, ans_error_last());
    fx_failures++;
    CHECK(0);
}

static void fx_array(ans_container *c, const char *store, const char *path, const char *dtype,
                     int ndim, const uint64_t *shape, const uint8_t *want, size_t wlen)
{
    ans_array *a = NULL;
    if (c->ops->open_array(c, path, &a) != ANS_OK) {
        fx_fail(store, path, "open_array failed");
        return;
    }
    if (strcmp(ans_dtype_name(a->dtype), dtype) || a->ndim != ndim) {
        fx_fail(store, path, "dtype or ndim differs");
        ans_array_free(a);
        return;
    }
    for (int d = 0; d < ndim; d++)
        if (a->shape[d] != shape[d]) fx_fail(store, path, "shape differs");
    void *all = NULL;
    size_t n = 0;
    if (ans_array_read_all(a, &all, &n) != ANS_OK) {
        fx_fail(store, path, "read_all failed");
    } else if (n != wlen || (n && memcmp(all, want, n))) {
        fx_fail(store, path, "values differ (whole read)");
    }
    free(all);
    /* Scattered reads: unordered, overlapping, repeated ranges vs slices of the expectation. */
    uint64_t rows = ndim ? shape[0] : 1, rb = a->row_bytes;
    if (rows > 0 && rb > 0) {
        ans_range rs[12];
        uint64_t total = 0;
        uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)strlen(path);
        for (int i = 0; i < 12; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            uint64_t s = (x >> 33) % rows;
            uint64_t left = rows - s;
            uint64_t cnt = 1 + ((x >> 17) % (i % 3 == 0 ? left : (left < 5 ? left : 5)));
            rs[i].start = s;
            rs[i].count = cnt;
            total += cnt;
        }
        rs[11] = rs[3]; /* a repeat */
        total = 0;
        for (int i = 0; i < 12; i++) total += rs[i].count;
        uint8_t *got = malloc((size_t)(total * rb));
        if (got && a->ops->read(a, rs, 12, got) == ANS_OK) {
            uint64_t off = 0;
            for (int i = 0; i < 12; i++) {
                if (memcmp(got + off, want + rs[i].start * rb, (size_t)(rs[i].count * rb))) {
                    fx_fail(store, path, "values differ (scattered read)");
                    break;
                }
                off += rs[i].count * rb;
            }
        } else {
            fx_fail(store, path, "scattered read failed");
        }
        free(got);
    }
    ans_json *d = ans_json_new_object();
    if (a->ops->describe(a, d) != ANS_OK || !ans_json_get(d, "codecs") ||
        !ans_json_get(d, "stored_bytes"))
        fx_fail(store, path, "describe failed");
    ans_json_free(d);
    ans_array_free(a);
}

static void fx_strings(ans_container *c, const char *store, const char *path, uint64_t count,
                       const uint8_t *want, size_t wlen)
{
    ans_array *a = NULL;
    if (c->ops->open_array(c, path, &a) != ANS_OK) {
        fx_fail(store, path, "open_array failed");
        return;
    }
    uint64_t *off = malloc((count + 1) * sizeof *off);
    ans_buf data = {0};
    if (a->ops->read_strings(a, 0, count, off, &data) != ANS_OK) {
        fx_fail(store, path, "read_strings failed");
    } else {
        size_t pos = 0;
        for (uint64_t i = 0; i < count; i++) {
            uint32_t n;
            if (pos + 4 > wlen) break;
            memcpy(&n, want + pos, 4);
            pos += 4;
            if (off[i + 1] - off[i] != n || memcmp(data.data + off[i], want + pos, n)) {
                char msg[128];
                snprintf(msg, sizeof msg, "string %llu differs", (unsigned long long)i);
                fx_fail(store, path, msg);
                break;
            }
            pos += n;
        }
        /* A slice from the middle, appended. */
        if (count > 3) {
            size_t before = data.len;
            uint64_t o2[3];
            if (a->ops->read_strings(a, count / 2, 2, o2, &data) != ANS_OK || o2[0] != before ||
                o2[2] - o2[0] != off[count / 2 + 2] - off[count / 2] ||
                memcmp(data.data + o2[0], data.data + off[count / 2], (size_t)(o2[2] - o2[0])))
                fx_fail(store, path, "string slice differs");
        }
    }
    ans_buf_free(&data);
    free(off);
    ans_array_free(a);
}

static void fx_group(ans_container *c, const char *store, const char *path, const char *want)
{
    char **ch = NULL;
    size_t n = 0;
    if (c->ops->children(c, strcmp(path, "/") ? path : "", &ch, &n) != ANS_OK) {
        fx_fail(store, path, "children failed");
        return;
    }
    char got[8192] = "";
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(got + len, sizeof got - len, "%s%s", i ? "," : "", ch[i]);
    if (!n) snprintf(got, sizeof got, "-");
    if (strcmp(got, want)) {
        fprintf(stderr, "children of %s %s: got %s\n  want %s\n", store, path, got, want);
        fx_fail(store, path, "children differ");
    }
    ans_kv_names_free(ch, n);
}

static void test_fixtures(void)
{
    if (!g_fixtures) {
        printf("skip fixtures: no fixtures (run tests/c/make_zarr_fixtures.py DIR, pass DIR or set "
               "ANS_ZARR_FIXTURES)\n");
        return;
    }
    char mpath[4200];
    snprintf(mpath, sizeof mpath, "%s/manifest.txt", g_fixtures);
    FILE *m = fopen(mpath, "r");
    CHECK(m != NULL);
    if (!m) return;
    ans_pool *pool = NULL;
    CHECK_OK(ans_pool_new(&pool, 4));
    fx_store stores[8];
    int nstores = 0, lines = 0;
    char line[8192];
    while (fgets(line, sizeof line, m)) {
        char *save = NULL, *tok[64];
        int nt = 0;
        for (char *t = strtok_r(line, " \n", &save); t && nt < 64; t = strtok_r(NULL, " \n", &save))
            tok[nt++] = t;
        if (nt < 4) continue;
        ans_container *c = fx_open(stores, &nstores, pool, tok[1]);
        if (!c) continue;
        lines++;
        if (!strcmp(tok[0], "array")) {
            int ndim = atoi(tok[4]);
            uint64_t shape[ANS_MAX_NDIM];
            for (int d = 0; d < ndim; d++) shape[d] = strtoull(tok[5 + d], NULL, 10);
            size_t wlen = 0;
            uint8_t *want = fx_load(tok[5 + ndim], &wlen);
            if (!want) {
                fx_fail(tok[1], tok[2], "expectation file missing");
                continue;
            }
            fx_array(c, tok[1], tok[2], tok[3], ndim, shape, want, wlen);
            free(want);
        } else if (!strcmp(tok[0], "strings")) {
            size_t wlen = 0;
            uint8_t *want = fx_load(tok[4], &wlen);
            if (!want) continue;
            fx_strings(c, tok[1], tok[2], strtoull(tok[3], NULL, 10), want, wlen);
            free(want);
        } else if (!strcmp(tok[0], "group")) {
            fx_group(c, tok[1], tok[2], tok[3]);
        }
    }
    fclose(m);
    printf("     fixtures: %d manifest lines checked, %d failures\n", lines, fx_failures);
    CHECK(lines > 100);
    /* Attributes from consolidated metadata, bare NaN kept. */
    for (int i = 0; i < nstores; i++) {
        const ans_json *at = NULL;
        if (!stores[i].c) continue;
        CHECK_OK(stores[i].c->ops->attrs(stores[i].c, "", &at));
        CHECK(ans_json_get(at, "encoding-type") != NULL || !strcmp(stores[i].name, "v2plain.zarr"));
    }
    for (int i = 0; i < nstores; i++) ans_container_free(stores[i].c);
    ans_pool_free(pool);
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int main(int argc, char **argv)
{
    static const ans_t_case cases[] = {
        {"store_basic", test_store_basic},
        {"store_fd_cache", test_store_fd_cache},
        {"chunk_keys", test_chunk_keys},
        {"fill_parse", test_fill_parse},
        {"typestr", test_typestr},
        {"shard_example", test_shard_example},
        {"shard_index_start", test_shard_index_start},
        {"shard_corrupt", test_shard_corrupt},
        {"shard_missing", test_shard_missing},
        {"shard_blosc_part", test_shard_blosc_part},
        {"concurrent_reads", test_concurrent_reads},
        {"v2_big_endian_and_missing", test_v2_big_endian_and_missing},
        {"v2_fill_nan_u64", test_v2_fill_nan_u64},
        {"v2_layouts", test_v2_layouts},
        {"v3_transpose", test_v3_transpose},
        {"v3_fill_hex", test_v3_fill_hex},
        {"v2_strings", test_v2_strings},
        {"chunk_errors", test_chunk_errors},
        {"unsupported_and_bad_json", test_unsupported_and_bad_json},
        {"v2_tree", test_v2_tree},
        {"fixtures", test_fixtures},
    };
    const char *dir = getenv("ANS_ZARR_FIXTURES");
    if (argc > 1 && is_dir(argv[1])) {
        dir = argv[1];
        argv[1] = argv[0];
        argc--;
        argv++;
    }
    char mp[4200];
    snprintf(mp, sizeof mp, "%s/manifest.txt", dir ? dir : "");
    g_fixtures = dir && access(mp, R_OK) == 0 ? dir : NULL;
    const char *tmp = getenv("TMPDIR");
    snprintf(g_tmproot, sizeof g_tmproot, "%s/ans_test_zarr_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_tmproot)) {
        perror("mkdtemp");
        return 1;
    }
    int rc = ans_t_run(cases, sizeof cases / sizeof cases[0], argc, argv);
    rm_rf(g_tmproot);
    return rc;
}
