/* test_common.c - tests for layer 0: error, mem, pool, json, stream. */
#include "harness.h"

#include "common/error.h"
#include "common/json.h"
#include "common/mem.h"
#include "common/pool.h"
#include "common/stream.h"

#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------- */
/* error                                                                                           */

static void test_error_roundtrip(void)
{
    CHECK_RC(ans_err(ANS_ECORRUPT, "bad chunk %d of %s", 7, "X/data"), ANS_ECORRUPT);
    CHECK(strcmp(ans_error_last(), "bad chunk 7 of X/data") == 0);
    CHECK_RC(ans_error_last_code(), ANS_ECORRUPT);

    CHECK_RC(ans_err_prefix("%s", "store.zarr"), ANS_ECORRUPT);
    CHECK(strcmp(ans_error_last(), "store.zarr: bad chunk 7 of X/data") == 0);

    ans_errinfo saved;
    ans_err_save(&saved);
    ans_error_clear();
    CHECK(strcmp(ans_error_last(), "") == 0);
    CHECK_RC(ans_error_last_code(), ANS_OK);
    CHECK_RC(ans_err_restore(&saved), ANS_ECORRUPT);
    CHECK(strcmp(ans_error_last(), "store.zarr: bad chunk 7 of X/data") == 0);

    /* A prefix on a clean state still yields a failure code. */
    ans_error_clear();
    CHECK(ans_err_prefix("ctx") < 0);

    /* Over-long messages are truncated, never overflow. */
    char big[3 * ANS_ERRMSG_MAX];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ans_err(ANS_EIO, "%s", big);
    CHECK(strlen(ans_error_last()) == ANS_ERRMSG_MAX - 1);
    ans_err_prefix("%s", big);
    CHECK(strlen(ans_error_last()) < ANS_ERRMSG_MAX);
    ans_error_clear();
}

static void *error_thread(void *arg)
{
    int *ok = arg;
    *ok = strcmp(ans_error_last(), "") == 0; /* a new thread starts clean */
    ans_err(ANS_EIO, "from the other thread");
    *ok = *ok && ans_error_last_code() == ANS_EIO;
    return NULL;
}

static void test_error_thread_local(void)
{
    ans_err(ANS_ENOTFOUND, "main thread");
    pthread_t t;
    int ok = 0;
    CHECK(pthread_create(&t, NULL, error_thread, &ok) == 0);
    pthread_join(t, NULL);
    CHECK(ok);
    CHECK_RC(ans_error_last_code(), ANS_ENOTFOUND);
    CHECK(strcmp(ans_error_last(), "main thread") == 0);
    ans_error_clear();
}

/* ---------------------------------------------------------------------------------------------- */
/* mem                                                                                             */

static void test_mem_buf(void)
{
    ans_buf b = {0};
    for (int i = 0; i < 10000; i++) CHECK_OK(ans_buf_append(&b, &i, sizeof i));
    CHECK_EQ_U64(b.len, 10000 * sizeof(int));
    CHECK(b.cap >= b.len);
    int bad = 0;
    for (int i = 0; i < 10000; i++) {
        int v;
        memcpy(&v, b.data + (size_t)i * sizeof v, sizeof v);
        bad += v != i;
    }
    CHECK(bad == 0);

    /* Reserving within capacity keeps the memory. */
    uint8_t *p = b.data;
    CHECK_OK(ans_buf_reserve(&b, b.cap));
    CHECK(b.data == p);
    CHECK_OK(ans_buf_resize(&b, 3));
    CHECK_EQ_U64(b.len, 3);
    CHECK(b.data == p);
    b.len = 0;
    CHECK_OK(ans_buf_printf(&b, "%s-%d", "ab", 12));
    CHECK_OK(ans_buf_printf(&b, "/%05.1f", 2.5));
    CHECK_EQ_U64(b.len, strlen("ab-12/002.5"));
    CHECK(memcmp(b.data, "ab-12/002.5", b.len) == 0);
    CHECK_OK(ans_buf_append(&b, NULL, 0));
    ans_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
    ans_buf_free(&b);

    char *s = ans_strndup("hello world", 5);
    CHECK(s && strcmp(s, "hello") == 0);
    free(s);
    s = ans_asprintf("%d-%s", 42, "x");
    CHECK(s && strcmp(s, "42-x") == 0);
    free(s);

    uint64_t r;
    CHECK(ans_mul_overflow(UINT64_MAX / 2, 2, &r) == 0 && r == UINT64_MAX - 1);
    CHECK(ans_mul_overflow(UINT64_MAX / 2, 3, &r) == -1);
    CHECK(ans_add_overflow(UINT64_MAX, 1, &r) == -1);
    CHECK(ans_add_overflow(UINT64_MAX - 1, 1, &r) == 0 && r == UINT64_MAX);
}

/* ---------------------------------------------------------------------------------------------- */
/* pool                                                                                            */

#define SLOTS_MAX 64

typedef struct sq_ctx {
    uint64_t *out;
    int size;
    atomic_int busy[SLOTS_MAX]; /* a slot is used by one thread at a time within a call */
    atomic_int bad_slot;
    atomic_int used[SLOTS_MAX];
} sq_ctx;

static int sq_job(void *ctx, size_t i, int slot)
{
    sq_ctx *c = ctx;
    if (slot < 0 || slot >= c->size || slot >= SLOTS_MAX) {
        atomic_store(&c->bad_slot, 1);
        return ANS_OK;
    }
    if (atomic_exchange(&c->busy[slot], 1) != 0) atomic_store(&c->bad_slot, 1);
    atomic_store(&c->used[slot], 1);
    c->out[i] = (uint64_t)i * i;
    atomic_store(&c->busy[slot], 0);
    return ANS_OK;
}

static int run_squares(ans_pool *pool, size_t n, int *used_slots)
{
    sq_ctx *c = calloc(1, sizeof *c);
    c->out = calloc(n ? n : 1, sizeof *c->out);
    c->size = ans_pool_size(pool);
    int rc = ans_pool_for(pool, n, sq_job, c);
    int ok = rc == ANS_OK && !atomic_load(&c->bad_slot);
    for (size_t i = 0; i < n; i++) ok = ok && c->out[i] == (uint64_t)i * i;
    if (used_slots) {
        *used_slots = 0;
        for (int s = 0; s < SLOTS_MAX; s++) *used_slots += atomic_load(&c->used[s]);
    }
    free(c->out);
    free(c);
    return ok;
}

static void test_pool_many_jobs(void)
{
    ans_pool *pool;
    CHECK_OK(ans_pool_new(&pool, 4));
    CHECK(ans_pool_size(pool) == 4);
    int used = 0;
    CHECK(run_squares(pool, 200000, &used));
    CHECK(used >= 1 && used <= 4);
    for (size_t n = 0; n < 20; n++) CHECK(run_squares(pool, n, NULL)); /* small batches, reuse */
    ans_pool_free(pool);
    ans_pool_free(NULL);

    /* Freeing a pool that never started its workers. */
    CHECK_OK(ans_pool_new(&pool, 8));
    ans_pool_free(pool);
}

static void test_pool_sizes(void)
{
    ans_pool *pool = (ans_pool *)1;
    CHECK_RC(ans_pool_new(&pool, -1), ANS_EINVAL);
    CHECK(pool == NULL);
    CHECK_OK(ans_pool_new(&pool, 0));
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK(ans_pool_size(pool) >= 1);
    if (ncpu >= 1 && ncpu <= 4096) CHECK(ans_pool_size(pool) == (int)ncpu);
    CHECK(run_squares(pool, 10000, NULL));
    ans_pool_free(pool);
}

static void *submit_thread(void *arg)
{
    ans_pool *pool = arg;
    intptr_t ok = 1;
    for (int k = 0; k < 50; k++) ok = ok && run_squares(pool, 1000 + (size_t)k * 37, NULL);
    return (void *)ok;
}

static void test_pool_concurrent_submitters(void)
{
    ans_pool *pool;
    CHECK_OK(ans_pool_new(&pool, 4));
    pthread_t t[3];
    for (int i = 0; i < 3; i++) CHECK(pthread_create(&t[i], NULL, submit_thread, pool) == 0);
    for (int i = 0; i < 3; i++) {
        void *ok;
        pthread_join(t[i], &ok);
        CHECK(ok == (void *)1);
    }
    ans_pool_free(pool);
}

typedef struct nest_ctx {
    ans_pool *pool;
    atomic_uint_fast64_t sum;
    atomic_int bad;
} nest_ctx;

static int inner_job(void *ctx, size_t i, int slot)
{
    nest_ctx *c = ctx;
    if (slot < 0 || slot >= ans_pool_size(c->pool)) atomic_store(&c->bad, 1);
    atomic_fetch_add(&c->sum, i);
    return ANS_OK;
}

static int outer_job(void *ctx, size_t i, int slot)
{
    nest_ctx *c = ctx;
    if (slot < 0 || slot >= ans_pool_size(c->pool)) atomic_store(&c->bad, 1);
    (void)i;
    return ans_pool_for(c->pool, 100, inner_job, c); /* same pool, from inside a job */
}

static void test_pool_nested(void)
{
    for (int threads = 1; threads <= 4; threads += 3) {
        ans_pool *pool;
        CHECK_OK(ans_pool_new(&pool, threads));
        nest_ctx c = {.pool = pool};
        atomic_init(&c.sum, 0);
        atomic_init(&c.bad, 0);
        CHECK_OK(ans_pool_for(pool, 64, outer_job, &c));
        CHECK_EQ_U64(atomic_load(&c.sum), 64u * (99u * 100u / 2u));
        CHECK(!atomic_load(&c.bad));
        ans_pool_free(pool);
    }
}

typedef struct fail_ctx {
    size_t fail_at;
    atomic_size_t ran;
} fail_ctx;

static int fail_job(void *ctx, size_t i, int slot)
{
    fail_ctx *c = ctx;
    (void)slot;
    atomic_fetch_add(&c->ran, 1);
    if (i == c->fail_at) return ans_err(ANS_ECORRUPT, "job %zu is broken", i);
    if (i > c->fail_at) usleep(1); /* leave the failure time to stop the batch */
    return ANS_OK;
}

static void test_pool_error(void)
{
    for (int threads = 1; threads <= 4; threads += 3) {
        ans_pool *pool;
        CHECK_OK(ans_pool_new(&pool, threads));
        fail_ctx c = {.fail_at = 37};
        atomic_init(&c.ran, 0);
        ans_error_clear();
        CHECK_RC(ans_pool_for(pool, 100000, fail_job, &c), ANS_ECORRUPT);
        CHECK_RC(ans_error_last_code(), ANS_ECORRUPT);
        CHECK(strcmp(ans_error_last(), "job 37 is broken") == 0);
        CHECK(atomic_load(&c.ran) < 100000); /* later jobs were skipped */
        /* The pool is still usable afterwards. */
        CHECK(run_squares(pool, 5000, NULL));
        ans_pool_free(pool);
    }
}

typedef struct self_ctx {
    pthread_t caller;
    atomic_int foreign;
    atomic_int nonzero_slot;
} self_ctx;

static int self_job(void *ctx, size_t i, int slot)
{
    self_ctx *c = ctx;
    (void)i;
    if (!pthread_equal(pthread_self(), c->caller)) atomic_store(&c->foreign, 1);
    if (slot != 0) atomic_store(&c->nonzero_slot, 1);
    return ANS_OK;
}

static void test_pool_single(void)
{
    ans_pool *pool;
    CHECK_OK(ans_pool_new(&pool, 1));
    CHECK(ans_pool_size(pool) == 1);
    self_ctx c = {.caller = pthread_self()};
    atomic_init(&c.foreign, 0);
    atomic_init(&c.nonzero_slot, 0);
    CHECK_OK(ans_pool_for(pool, 1000, self_job, &c));
    CHECK(!atomic_load(&c.foreign) && !atomic_load(&c.nonzero_slot));
    fail_ctx f = {.fail_at = 3};
    atomic_init(&f.ran, 0);
    CHECK_RC(ans_pool_for(pool, 10, fail_job, &f), ANS_ECORRUPT);
    CHECK_EQ_U64(atomic_load(&f.ran), 4); /* inline: stops right at the failing job */
    CHECK_STR_CONTAINS(ans_error_last(), "job 3 is broken");
    CHECK_RC(ans_pool_for(NULL, 1, self_job, &c), ANS_EINVAL);
    ans_pool_free(pool);
    ans_error_clear();
}

/* ThreadSanitizer does not support starting threads in a child forked from a threaded process. */
#if defined(__SANITIZE_THREAD__)
#define ANS_T_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ANS_T_TSAN 1
#endif
#endif

static void test_pool_fork(void)
{
#ifdef ANS_T_TSAN
    printf("     (skipped under ThreadSanitizer)\n");
    return;
#endif
    ans_pool *pool;
    CHECK_OK(ans_pool_new(&pool, 4));
    CHECK(run_squares(pool, 50000, NULL)); /* workers running in the parent */
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(30); /* a deadlock in the child shows as a signal, not a hung test */
        int ok = run_squares(pool, 50000, NULL) && run_squares(pool, 1000, NULL);
        nest_ctx c = {.pool = pool};
        atomic_init(&c.sum, 0);
        atomic_init(&c.bad, 0);
        ok = ok && ans_pool_for(pool, 16, outer_job, &c) == ANS_OK &&
             atomic_load(&c.sum) == 16u * 4950u;
        ans_pool_free(pool);
        _exit(ok ? 0 : 3);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(run_squares(pool, 50000, NULL)); /* the parent's pool is untouched */
    ans_pool_free(pool);

    /* A pool freed in a child that never used it (its mutex belongs to the parent). */
    CHECK_OK(ans_pool_new(&pool, 3));
    CHECK(run_squares(pool, 1000, NULL));
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        alarm(30);
        ans_pool_free(pool);
        _exit(0);
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ans_pool_free(pool);
}

/* ---------------------------------------------------------------------------------------------- */
/* json                                                                                            */

static ans_json *parse(const char *s)
{
    ans_json *j = NULL;
    int rc = ans_json_parse(s, strlen(s), &j);
    if (rc != ANS_OK) {
        fprintf(stderr, "parse of %s failed: %s\n", s, ans_error_last());
        ans_t_failed_checks++;
    }
    return j;
}

/* Structural equality; doubles compare bit for bit (NaN == NaN, -0.0 != 0.0). */
static int json_equal(const ans_json *a, const ans_json *b)
{
    if (!a || !b || a->type != b->type) return 0;
    switch (a->type) {
    case ANS_JSON_NULL:
        return 1;
    case ANS_JSON_BOOL:
        return a->v.b == b->v.b;
    case ANS_JSON_INT:
        return a->v.i == b->v.i;
    case ANS_JSON_UINT:
        return a->v.u == b->v.u;
    case ANS_JSON_DOUBLE:
        return memcmp(&a->v.d, &b->v.d, sizeof(double)) == 0 || (isnan(a->v.d) && isnan(b->v.d));
    case ANS_JSON_STRING:
        return a->v.s.len == b->v.s.len && memcmp(a->v.s.ptr, b->v.s.ptr, a->v.s.len) == 0 &&
               a->v.s.ptr[a->v.s.len] == '\0';
    case ANS_JSON_ARRAY:
        if (a->v.a.n != b->v.a.n) return 0;
        for (size_t i = 0; i < a->v.a.n; i++)
            if (!json_equal(a->v.a.items[i], b->v.a.items[i])) return 0;
        return 1;
    case ANS_JSON_OBJECT:
        if (a->v.o.n != b->v.o.n) return 0;
        for (size_t i = 0; i < a->v.o.n; i++)
            if (strcmp(a->v.o.keys[i], b->v.o.keys[i]) || !json_equal(a->v.o.vals[i], b->v.o.vals[i]))
                return 0;
        return 1;
    }
    return 0;
}

/* Write `j` and compare with `want`. */
static void check_write(const ans_json *j, int indent, const char *want)
{
    ans_buf b = {0};
    CHECK_OK(ans_json_write(j, indent, &b));
    if (b.data && strcmp((const char *)b.data, want) != 0) {
        fprintf(stderr, "write gave  %s\n      wanted %s\n", (const char *)b.data, want);
        ans_t_failed_checks++;
    }
    CHECK(b.data && strlen((const char *)b.data) == b.len);
    ans_buf_free(&b);
}

static void test_json_types(void)
{
    ans_json *j = parse(" {\"n\": null, \"t\": true, \"f\": false, \"i\": -42, \"z\": 0, "
                        "\"u\": 18446744073709551615, \"d\": 1.5, \"s\": \"hi\", "
                        "\"a\": [1, [], {}], \"o\": {\"k\": \"v\"}} \r\n\t");
    CHECK(j && j->type == ANS_JSON_OBJECT && ans_json_len(j) == 10);
    int b = -1;
    int64_t i;
    uint64_t u;
    double d;
    CHECK(ans_json_get(j, "n") && ans_json_get(j, "n")->type == ANS_JSON_NULL);
    CHECK(ans_json_get_bool(ans_json_get(j, "t"), &b) == 0 && b == 1);
    CHECK(ans_json_get_bool(ans_json_get(j, "f"), &b) == 0 && b == 0);
    CHECK(ans_json_get_i64(ans_json_get(j, "i"), &i) == 0 && i == -42);
    CHECK(ans_json_get_u64(ans_json_get(j, "i"), &u) == -1);
    CHECK(ans_json_get_u64(ans_json_get(j, "z"), &u) == 0 && u == 0);
    const ans_json *ju = ans_json_get(j, "u");
    CHECK(ju && ju->type == ANS_JSON_UINT);
    CHECK(ans_json_get_u64(ju, &u) == 0 && u == UINT64_MAX);
    CHECK(ans_json_get_i64(ju, &i) == -1);
    CHECK(ans_json_get_double(ans_json_get(j, "d"), &d) == 0 && d == 1.5);
    CHECK(ans_json_get_i64(ans_json_get(j, "d"), &i) == -1);
    CHECK(ans_json_get_str(ans_json_get(j, "s")) && strcmp(ans_json_get_str(ans_json_get(j, "s")), "hi") == 0);
    CHECK(ans_json_get_str(ans_json_get(j, "d")) == NULL);
    const ans_json *a = ans_json_get(j, "a");
    CHECK(ans_json_len(a) == 3 && ans_json_at(a, 3) == NULL);
    CHECK(ans_json_at(a, 1)->type == ANS_JSON_ARRAY && ans_json_len(ans_json_at(a, 1)) == 0);
    CHECK(ans_json_at(a, 2)->type == ANS_JSON_OBJECT && ans_json_len(ans_json_at(a, 2)) == 0);
    CHECK(strcmp(ans_json_get_str(ans_json_get(ans_json_get(j, "o"), "k")), "v") == 0);
    CHECK(ans_json_get(j, "missing") == NULL);
    /* NULL and type tolerance */
    CHECK(ans_json_get(NULL, "a") == NULL && ans_json_get(a, "a") == NULL);
    CHECK(ans_json_at(NULL, 0) == NULL && ans_json_at(j, 0) == NULL);
    CHECK(ans_json_len(NULL) == 0 && ans_json_get_str(NULL) == NULL);
    CHECK(ans_json_get_i64(NULL, &i) == -1 && ans_json_get_bool(NULL, &b) == -1);
    ans_json_free(j);

    /* Scalars at top level. */
    j = parse("\"top\"");
    CHECK(j && j->type == ANS_JSON_STRING && j->v.s.len == 3);
    ans_json_free(j);
    j = parse("\xEF\xBB\xBF 7"); /* BOM */
    CHECK(j && j->type == ANS_JSON_INT && j->v.i == 7);
    ans_json_free(j);
}

static void test_json_numbers(void)
{
    struct {
        const char *text;
        ans_json_type type;
        int64_t i;
        uint64_t u;
        double d;
    } cases[] = {
        {"0", ANS_JSON_INT, 0, 0, 0},
        {"-0", ANS_JSON_INT, 0, 0, 0},
        {"9223372036854775807", ANS_JSON_INT, INT64_MAX, 0, 0},
        {"-9223372036854775808", ANS_JSON_INT, INT64_MIN, 0, 0},
        {"9223372036854775808", ANS_JSON_UINT, 0, UINT64_C(9223372036854775808), 0},
        {"18446744073709551615", ANS_JSON_UINT, 0, UINT64_MAX, 0},
        {"18446744073709551616", ANS_JSON_DOUBLE, 0, 0, 18446744073709551616.0},
        {"-9223372036854775809", ANS_JSON_DOUBLE, 0, 0, -9223372036854775808.0},
        {"1.5", ANS_JSON_DOUBLE, 0, 0, 1.5},
        {"-0.0", ANS_JSON_DOUBLE, 0, 0, -0.0},
        {"0.1", ANS_JSON_DOUBLE, 0, 0, 0.1},
        {"1e3", ANS_JSON_DOUBLE, 0, 0, 1000.0},
        {"1E-2", ANS_JSON_DOUBLE, 0, 0, 0.01},
        {"2.5e+3", ANS_JSON_DOUBLE, 0, 0, 2500.0},
        {"1.7976931348623157e308", ANS_JSON_DOUBLE, 0, 0, 1.7976931348623157e308},
        {"5e-324", ANS_JSON_DOUBLE, 0, 0, 5e-324},
        {"1e400", ANS_JSON_DOUBLE, 0, 0, INFINITY},
        {"-1e400", ANS_JSON_DOUBLE, 0, 0, -INFINITY},
        {"1e-400", ANS_JSON_DOUBLE, 0, 0, 0.0},
        {"1e99999999999999999999999", ANS_JSON_DOUBLE, 0, 0, INFINITY},
        {"Infinity", ANS_JSON_DOUBLE, 0, 0, INFINITY},
        {"-Infinity", ANS_JSON_DOUBLE, 0, 0, -INFINITY},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ans_json *j = parse(cases[k].text);
        if (!j) continue;
        int ok = j->type == cases[k].type;
        if (ok && j->type == ANS_JSON_INT) ok = j->v.i == cases[k].i;
        if (ok && j->type == ANS_JSON_UINT) ok = j->v.u == cases[k].u;
        if (ok && j->type == ANS_JSON_DOUBLE)
            ok = j->v.d == cases[k].d && signbit(j->v.d) == signbit(cases[k].d);
        if (!ok) fprintf(stderr, "number case %s\n", cases[k].text);
        CHECK(ok);
        ans_json_free(j);
    }
    ans_json *j = parse("NaN");
    CHECK(j && j->type == ANS_JSON_DOUBLE && isnan(j->v.d));
    ans_json_free(j);

    /* A 400-digit mantissa (heap copy) still rounds correctly. */
    char big[512] = "0.";
    memset(big + 2, '0', 398);
    strcpy(big + 400, "15e399"); /* 0.00..015e399 = 1.5 */
    j = parse(big);
    CHECK(j && j->type == ANS_JSON_DOUBLE && j->v.d == 1.5);
    ans_json_free(j);

    /* Exact-integer doubles through the integer getters. */
    int64_t i;
    uint64_t u;
    j = parse("[1e3, -2.0, 3.5, 1e300, NaN, -1.0]");
    CHECK(ans_json_get_i64(ans_json_at(j, 0), &i) == 0 && i == 1000);
    CHECK(ans_json_get_i64(ans_json_at(j, 1), &i) == 0 && i == -2);
    CHECK(ans_json_get_i64(ans_json_at(j, 2), &i) == -1);
    CHECK(ans_json_get_i64(ans_json_at(j, 3), &i) == -1);
    CHECK(ans_json_get_i64(ans_json_at(j, 4), &i) == -1);
    CHECK(ans_json_get_u64(ans_json_at(j, 0), &u) == 0 && u == 1000);
    CHECK(ans_json_get_u64(ans_json_at(j, 5), &u) == -1);
    ans_json_free(j);

    /* The decimal point is not the locale's (only testable where such a locale is installed). */
    const char *locs[] = {"de_DE.UTF-8", "fr_FR.UTF-8", "de_DE", "fr_FR"};
    for (size_t k = 0; k < 4; k++) {
        if (!setlocale(LC_NUMERIC, locs[k])) continue;
        j = parse("[2.75, 1e-1]");
        CHECK(j && ans_json_at(j, 0)->v.d == 2.75 && ans_json_at(j, 1)->v.d == 0.1);
        check_write(j, -1, "[2.75,0.1]");
        ans_json_free(j);
        setlocale(LC_NUMERIC, "C");
        break;
    }
}

static void test_json_strings(void)
{
    ans_json *j = parse("\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t \\u0041\\u00e9\\u20AC\\ud83d\\ude00\"");
    const char *want = "q\" b\\ s/ \b\f\n\r\t A\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";
    CHECK(j && j->v.s.len == strlen(want) && strcmp(j->v.s.ptr, want) == 0);
    ans_json_free(j);

    /* Lone surrogates are kept (3-byte form) and written back as escapes. */
    j = parse("[\"\\ud800\", \"x\\udc00y\", \"\\ud800\\u0041\", \"\\udbff\\udfff\"]");
    CHECK(j && ans_json_len(j) == 4);
    CHECK(strcmp(ans_json_at(j, 0)->v.s.ptr, "\xED\xA0\x80") == 0);
    CHECK(strcmp(ans_json_at(j, 1)->v.s.ptr, "x\xED\xB0\x80y") == 0);
    CHECK(strcmp(ans_json_at(j, 2)->v.s.ptr, "\xED\xA0\x80" "A") == 0);
    CHECK(strcmp(ans_json_at(j, 3)->v.s.ptr, "\xF4\x8F\xBF\xBF") == 0);
    check_write(j, -1, "[\"\\ud800\",\"x\\udc00y\",\"\\ud800A\",\"\xF4\x8F\xBF\xBF\"]");
    ans_json_free(j);

    /* Embedded NUL in a value; raw UTF-8 passes through. */
    j = parse("\"a\\u0000b \xC3\xA9\"");
    CHECK(j && j->v.s.len == 6 && memcmp(j->v.s.ptr, "a\0b \xC3\xA9", 7) == 0);
    check_write(j, -1, "\"a\\u0000b \xC3\xA9\"");
    ans_json_free(j);

    /* Control characters are escaped by the writer. */
    ans_json *s = ans_json_new_strn("\x01\x1f\"\\\n\t\x7f", 7);
    check_write(s, -1, "\"\\u0001\\u001f\\\"\\\\\\n\\t\x7f\"");
    ans_json_free(s);
}

static void check_corrupt(const char *text, size_t len)
{
    ans_json *j = (ans_json *)1;
    ans_error_clear();
    int rc = ans_json_parse(text, len, &j);
    if (rc != ANS_ECORRUPT || j != NULL) {
        fprintf(stderr, "accepted or wrong code %d for invalid JSON: %.*s\n", rc, (int)len, text);
        ans_t_failed_checks++;
        ans_json_free(rc == ANS_OK ? j : NULL);
        return;
    }
    const char *msg = ans_error_last();
    if (strncmp(msg, "JSON: ", 6) != 0 || !strstr(msg, " at byte ")) {
        fprintf(stderr, "bad message for %.*s: %s\n", (int)len, text, msg);
        ans_t_failed_checks++;
    }
}

static void test_json_invalid(void)
{
    static const char *bad[] = {
        "", " ", "{", "[", "[1,", "[1,]", "[,1]", "{\"a\"}", "{\"a\":}", "{a:1}", "{\"a\":1,}",
        "{\"a\":1 \"b\":2}", "{,}", "{\"a\" 1}", "{1:2}", "[1 2]", "1 2", "{}{}", "[\"a\"]]", "01",
        "-01", "1.", "1.e3", ".5", "+1", "-", "--1", "1e", "1e+", "1ee3", "0x10", "tru", "truex",
        "nul", "True", "nan", "inf", "-inf", "-NaN", "+Infinity", "Infinit", "-Infinit", "\"abc",
        "\"a\\", "\"\\x\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\U0041\"", "\"tab\there\"",
        "\"\x01\"", "\"a\nb\"", "'single'", "[1]x", "/* c */ 1", "{\"a\\u0000b\":1}", "\xEF\xBB",
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) check_corrupt(bad[k], strlen(bad[k]));
    check_corrupt("[1,\0 2]", 7);  /* embedded NUL in the text */
    check_corrupt("\"a\0b\"", 5); /* raw NUL is a control character */

    /* Every proper prefix of a document is truncated input. */
    const char *doc = "{\"zarr_format\": 3, \"shape\": [10, 20], \"fill_value\": -Infinity, "
                      "\"s\": \"\\u00e9\\ud83d\\ude00\", \"x\": [true, false, null, 1.5e-3]}";
    for (size_t n = 0; n < strlen(doc); n++) check_corrupt(doc, n);

    /* Offsets are reported. */
    ans_json *j;
    CHECK_RC(ans_json_parse("[1, 2, x]", 9, &j), ANS_ECORRUPT);
    CHECK(strcmp(ans_error_last(), "JSON: unexpected character at byte 7") == 0);
    CHECK_RC(ans_json_parse("[1, 2", 5, &j), ANS_ECORRUPT);
    CHECK(strcmp(ans_error_last(), "JSON: unexpected end of input at byte 5") == 0);
    ans_error_clear();
}

static void test_json_depth(void)
{
    char buf[2 * (ANS_JSON_MAX_DEPTH + 1) + 1];
    for (int depth = ANS_JSON_MAX_DEPTH; depth <= ANS_JSON_MAX_DEPTH + 1; depth++) {
        memset(buf, '[', (size_t)depth);
        memset(buf + depth, ']', (size_t)depth);
        ans_json *j = NULL;
        int rc = ans_json_parse(buf, 2 * (size_t)depth, &j);
        if (depth <= ANS_JSON_MAX_DEPTH) {
            CHECK_OK(rc);
        } else {
            CHECK_RC(rc, ANS_ECORRUPT);
            CHECK_STR_CONTAINS(ans_error_last(), "nesting too deep");
        }
        ans_json_free(j);
    }
    /* Objects count too, and a huge nesting is rejected without recursing. */
    size_t n = 1000000;
    char *deep = malloc(n * 6);
    for (size_t k = 0; k < n; k++) memcpy(deep + 6 * k, "{\"a\":[", 6);
    ans_json *j;
    CHECK_RC(ans_json_parse(deep, n * 6, &j), ANS_ECORRUPT);
    CHECK_STR_CONTAINS(ans_error_last(), "nesting too deep");
    free(deep);
    ans_error_clear();
}

static void test_json_roundtrip(void)
{
    const char *doc =
        "{\"zarr_format\":3,\"node_type\":\"array\",\"shape\":[1000000,33538],\"data_type\":\"uint64\","
        "\"fill_value\":18446744073709551615,\"min\":-9223372036854775808,\"codecs\":[{\"name\":\"bytes\","
        "\"configuration\":{\"endian\":\"little\"}},{\"name\":\"zstd\",\"configuration\":{\"level\":0,"
        "\"checksum\":false}}],\"attributes\":{\"nan\":NaN,\"inf\":Infinity,\"ninf\":-Infinity,"
        "\"f\":[0.1,1.0,-0.0,1e300,5e-324,3.141592653589793,2.5e-7,1e16,123456789012345680000.0],"
        "\"s\":\"\\\"quoted\\\"\\n\\u0001\\u00e9\\ud83d\\ude00\\ud800\",\"e\":{},\"a\":[],"
        "\"n\":null,\"dup\":1,\"dup\":2}}";
    ans_json *a = parse(doc);
    for (int indent = -1; indent <= 4; indent += 3) {
        ans_buf b = {0};
        CHECK_OK(ans_json_write(a, indent, &b));
        ans_json *c = NULL;
        CHECK_OK(ans_json_parse((const char *)b.data, b.len, &c));
        CHECK(json_equal(a, c));
        ans_json *d = ans_json_clone(c);
        CHECK(json_equal(a, d));
        /* Writing is deterministic. */
        ans_buf b2 = {0};
        CHECK_OK(ans_json_write(d, indent, &b2));
        CHECK(b.len == b2.len && memcmp(b.data, b2.data, b.len) == 0);
        ans_buf_free(&b);
        ans_buf_free(&b2);
        ans_json_free(c);
        ans_json_free(d);
    }
    ans_json_free(a);

    /* Exact output, compact and pretty. */
    a = parse("{\"a\": [1, 2.5, \"x\", {}, []], \"b\": null, \"c\": {\"d\": true}}");
    check_write(a, -1, "{\"a\":[1,2.5,\"x\",{},[]],\"b\":null,\"c\":{\"d\":true}}");
    check_write(a, 2,
                "{\n  \"a\": [\n    1,\n    2.5,\n    \"x\",\n    {},\n    []\n  ],\n  \"b\": null,\n"
                "  \"c\": {\n    \"d\": true\n  }\n}");
    ans_json_free(a);

    /* Doubles: shortest round-trip text that still reads as a float. */
    a = parse("[1.0, 0.1, 1e300, -0.0, 0.3333333333333333, 1e16, 100.0, NaN, Infinity, -Infinity,"
              " 2.5e-7, 18446744073709551616]");
    check_write(a, -1,
                "[1.0,0.1,1e+300,-0.0,0.3333333333333333,1e+16,100.0,NaN,Infinity,-Infinity,2.5e-07,"
                "1.8446744073709552e+19]");
    ans_json_free(a);

    /* Integers are exact. */
    a = ans_json_new_array();
    CHECK_OK(ans_json_push(a, ans_json_new_int(INT64_MIN)));
    CHECK_OK(ans_json_push(a, ans_json_new_uint(UINT64_MAX)));
    CHECK_OK(ans_json_push(a, ans_json_new_uint(5)));
    CHECK(ans_json_at(a, 2)->type == ANS_JSON_INT);
    check_write(a, -1, "[-9223372036854775808,18446744073709551615,5]");
    ans_json_free(a);
}

static void test_json_objects(void)
{
    /* Duplicate keys: all kept in order, the last wins on lookup (small and indexed objects). */
    ans_json *j = parse("{\"a\": 1, \"b\": 2, \"a\": 3}");
    int64_t i;
    CHECK(ans_json_len(j) == 3);
    CHECK(ans_json_get_i64(ans_json_get(j, "a"), &i) == 0 && i == 3);
    CHECK_OK(ans_json_set(j, "a", ans_json_new_int(4))); /* replaces the one lookups see */
    CHECK(ans_json_len(j) == 3);
    CHECK(ans_json_get_i64(ans_json_get(j, "a"), &i) == 0 && i == 4);
    CHECK(ans_json_get_i64(j->v.o.vals[0], &i) == 0 && i == 1);
    ans_json_free(j);

    ans_buf text = {0};
    CHECK_OK(ans_buf_printf(&text, "{"));
    for (int k = 0; k < 40; k++) CHECK_OK(ans_buf_printf(&text, "\"k%d\": %d, ", k % 20, k));
    CHECK_OK(ans_buf_printf(&text, "\"\": -1}"));
    CHECK_OK(ans_json_parse((const char *)text.data, text.len, &j));
    ans_buf_free(&text);
    CHECK(ans_json_len(j) == 41);
    for (int k = 0; k < 20; k++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", k);
        CHECK(ans_json_get_i64(ans_json_get(j, key), &i) == 0 && i == k + 20);
    }
    CHECK(ans_json_get_i64(ans_json_get(j, ""), &i) == 0 && i == -1);
    CHECK(ans_json_get(j, "k20") == NULL);
    ans_json *c = ans_json_clone(j);
    CHECK(json_equal(j, c) && ans_json_get_i64(ans_json_get(c, "k3"), &i) == 0 && i == 23);
    ans_json_free(c);
    ans_json_free(j);

    /* Built objects, across the size where the index appears; set replaces. */
    j = ans_json_new_object();
    for (int k = 0; k < 3000; k++) {
        char key[32];
        snprintf(key, sizeof key, "obs/col%d/.zarray", k);
        CHECK_OK(ans_json_set(j, key, ans_json_new_int(k)));
        CHECK(ans_json_get_i64(ans_json_get(j, key), &i) == 0 && i == k);
    }
    CHECK_OK(ans_json_set(j, "obs/col7/.zarray", ans_json_new_str("replaced")));
    CHECK(ans_json_len(j) == 3000);
    int bad = 0;
    for (int k = 0; k < 3000; k++) {
        char key[32];
        snprintf(key, sizeof key, "obs/col%d/.zarray", k);
        const ans_json *v = ans_json_get(j, key);
        if (k == 7) bad += !v || !ans_json_get_str(v) || strcmp(ans_json_get_str(v), "replaced");
        else bad += ans_json_get_i64(v, &i) != 0 || i != k;
    }
    CHECK(bad == 0);
    CHECK(strcmp(j->v.o.keys[0], "obs/col0/.zarray") == 0); /* insertion order */
    CHECK(strcmp(j->v.o.keys[2999], "obs/col2999/.zarray") == 0);

    /* Ownership on misuse: the item is freed, EINVAL returned. */
    CHECK_RC(ans_json_push(j, ans_json_new_int(1)), ANS_EINVAL);
    ans_json *num = ans_json_new_int(1);
    CHECK_RC(ans_json_set(num, "x", ans_json_new_int(1)), ANS_EINVAL);
    CHECK_RC(ans_json_set(NULL, "x", ans_json_new_int(1)), ANS_EINVAL);
    ans_json_free(num);
    CHECK_RC(ans_json_set(j, "x", NULL), ANS_EINVAL);
    CHECK_RC(ans_json_write(NULL, -1, &text), ANS_EINVAL);
    ans_json_free(j);

    ans_json *s = ans_json_new_str(NULL);
    CHECK(s && s->v.s.len == 0 && s->v.s.ptr[0] == '\0');
    ans_json_free(s);
    ans_error_clear();
}

/* A consolidated-metadata-sized document parses in linear time (checked by eye via the runtime;
 * here: it parses, and every member is found). */
static void test_json_large(void)
{
    ans_buf text = {0};
    const int n = 50000;
    CHECK_OK(ans_buf_printf(&text, "{\"metadata\": {"));
    for (int k = 0; k < n; k++)
        CHECK_OK(ans_buf_printf(&text,
                                "%s\"obs/c%d/.zarray\": {\"chunks\": [%d], \"dtype\": \"<f8\", "
                                "\"fill_value\": NaN, \"filters\": null, \"shape\": [1000000]}",
                                k ? ", " : "", k, k + 1));
    CHECK_OK(ans_buf_printf(&text, "}, \"zarr_consolidated_format\": 1}"));
    ans_json *j = NULL;
    CHECK_OK(ans_json_parse((const char *)text.data, text.len, &j));
    const ans_json *md = ans_json_get(j, "metadata");
    CHECK(ans_json_len(md) == (size_t)n);
    int bad = 0;
    for (int k = 0; k < n; k++) {
        char key[32];
        int64_t c;
        snprintf(key, sizeof key, "obs/c%d/.zarray", k);
        bad += ans_json_get_i64(ans_json_at(ans_json_get(ans_json_get(md, key), "chunks"), 0), &c) ||
               c != k + 1;
    }
    CHECK(bad == 0);
    ans_buf out = {0};
    CHECK_OK(ans_json_write(j, -1, &out));
    ans_json *back = NULL;
    CHECK_OK(ans_json_parse((const char *)out.data, out.len, &back));
    CHECK(json_equal(j, back));
    ans_json_free(back);
    ans_buf_free(&out);
    ans_json_free(j);
    ans_buf_free(&text);
}

/* ---------------------------------------------------------------------------------------------- */
/* stream: streaming copies agree with plain ones at every alignment and length, and the range    */
/* checks find the first bad value wherever it sits (head, vector body, tail).                     */

static void test_stream_copy(void)
{
    enum { CAP = 5000 };
    uint8_t *src = malloc(CAP + 128), *dst = malloc(CAP + 128);
    CHECK(src && dst);
    if (!src || !dst) goto out;
    int best = ans_stream_isa();
    CHECK(best >= ANS_ISA_PLAIN && best <= ANS_ISA_AVX512);
    for (size_t i = 0; i < CAP + 128; i++)
        src[i] = (uint8_t)(i * 131 + 7);
    const size_t lens[] = {0, 1, 15, 255, 256, 257, 1000, 4096, CAP};
    for (int isa = ANS_ISA_PLAIN; isa <= best + 1; isa++) /* best + 1: the public function */
        for (size_t so = 0; so < 3; so++)
            for (size_t d0 = 0; d0 < 70; d0 += 23)
                for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
                    memset(dst, 0xEE, CAP + 128);
                    if (isa <= best)
                        ans_stream_copy_isa(isa, dst + d0, src + so, lens[k]);
                    else
                        ans_stream_copy(dst + d0, src + so, lens[k]);
                    ans_stream_fence();
                    CHECK(memcmp(dst + d0, src + so, lens[k]) == 0);
                    /* nothing outside the destination is touched */
                    for (size_t i = 0; i < d0; i++)
                        CHECK(dst[i] == 0xEE);
                    CHECK(dst[d0 + lens[k]] == 0xEE);
                }
out:
    free(src);
    free(dst);
}

static size_t u16_i32(int isa, void *dst, const void *src, size_t n, uint64_t lim)
{
    return isa <= ans_stream_isa() ? ans_stream_u16_i32_isa(isa, dst, src, n, lim)
                                   : ans_stream_u16_i32(dst, src, n, lim);
}

static void test_stream_u16_i32(void)
{
    enum { N = 777 };
    uint16_t src[N];
    int32_t out[N + 20];
    for (int isa = ANS_ISA_PLAIN; isa <= ans_stream_isa() + 1; isa++) {
        for (size_t i = 0; i < N; i++)
            src[i] = (uint16_t)((i * 37) % 1000);
        for (size_t off = 0; off < 17; off++) { /* every head length up to a 64-byte line */
            int32_t *dst = out + off;
            CHECK(u16_i32(isa, dst, src, N, 1000) == N);
            ans_stream_fence();
            int ok = 1;
            for (size_t i = 0; i < N; i++)
                ok &= dst[i] == (int32_t)src[i];
            CHECK(ok);
            /* limit above every uint16 value */
            CHECK(u16_i32(isa, dst, src, N, (uint64_t)1 << 40) == N);
            CHECK(u16_i32(isa, dst, src, N, 65536) == N);
        }
        /* the first value >= lim, placed in the head, the vector body and the tail */
        const size_t at[] = {0, 3, 14, 64, 100, 500, 770, N - 1};
        for (size_t k = 0; k < sizeof at / sizeof at[0]; k++)
            for (size_t off = 0; off < 17; off += 5) {
                uint16_t save = src[at[k]];
                src[at[k]] = 1000;
                CHECK(u16_i32(isa, out + off, src, N, 1000) == at[k]);
                src[at[k]] = 65535;
                CHECK(u16_i32(isa, out + off, src, N, 65535) == at[k]);
                CHECK(u16_i32(isa, out + off, src, N, 65536) == N);
                src[at[k]] = save;
            }
        CHECK(u16_i32(isa, out, src, N, 0) == 0);
        CHECK(u16_i32(isa, out, src, 0, 0) == 0);
        ans_stream_fence();
    }
}

static size_t i32_i32(int isa, void *dst, const void *src, size_t n, uint64_t lim)
{
    return isa <= ans_stream_isa() ? ans_stream_i32_i32_isa(isa, dst, src, n, lim)
                                   : ans_stream_i32_i32(dst, src, n, lim);
}

static void test_stream_i32_i32(void)
{
    enum { N = 555 };
    int32_t src[N], out[N + 20];
    for (int isa = ANS_ISA_PLAIN; isa <= ans_stream_isa() + 1; isa++) {
        for (size_t i = 0; i < N; i++)
            src[i] = (int32_t)((i * 7919) % 30000);
        for (size_t off = 0; off < 17; off++) {
            CHECK(i32_i32(isa, out + off, src, N, 30000) == N);
            ans_stream_fence();
            CHECK(memcmp(out + off, src, sizeof src) == 0);
        }
        const size_t at[] = {0, 2, 13, 64, 300, 553, N - 1};
        for (size_t k = 0; k < sizeof at / sizeof at[0]; k++)
            for (size_t off = 0; off < 17; off += 4) {
                int32_t save = src[at[k]];
                src[at[k]] = -1;
                CHECK(i32_i32(isa, out + off, src, N, 30000) == at[k]);
                src[at[k]] = INT32_MIN;
                CHECK(i32_i32(isa, out + off, src, N, (uint64_t)1 << 31) == at[k]);
                src[at[k]] = 30000;
                CHECK(i32_i32(isa, out + off, src, N, 30000) == at[k]);
                CHECK(i32_i32(isa, out + off, src, N, 30001) == N);
                src[at[k]] = INT32_MAX;
                CHECK(i32_i32(isa, out + off, src, N, (uint64_t)1 << 31) == N);
                CHECK(i32_i32(isa, out + off, src, N, (uint64_t)INT32_MAX) == at[k]);
                src[at[k]] = save;
            }
        CHECK(i32_i32(isa, out, src, N, 0) == 0);
        ans_stream_fence();
    }
}

ANS_TEST_MAIN({"error_roundtrip", test_error_roundtrip},
              {"error_thread_local", test_error_thread_local},
              {"mem_buf", test_mem_buf},
              {"pool_many_jobs", test_pool_many_jobs},
              {"pool_sizes", test_pool_sizes},
              {"pool_concurrent_submitters", test_pool_concurrent_submitters},
              {"pool_nested", test_pool_nested},
              {"pool_error", test_pool_error},
              {"pool_single", test_pool_single},
              {"pool_fork", test_pool_fork},
              {"json_types", test_json_types},
              {"json_numbers", test_json_numbers},
              {"json_strings", test_json_strings},
              {"json_invalid", test_json_invalid},
              {"json_depth", test_json_depth},
              {"json_roundtrip", test_json_roundtrip},
              {"json_objects", test_json_objects},
              {"json_large", test_json_large},
              {"stream_copy", test_stream_copy},
              {"stream_u16_i32", test_stream_u16_i32},
              {"stream_i32_i32", test_stream_i32_i32})
