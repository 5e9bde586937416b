/* pool.c - the parallel-for thread pool (see pool.h).
 *
 * Design
 * - Each ans_pool_for call is a `batch` on the caller's stack, linked into the pool's FIFO queue, so
 *   submitting allocates nothing. Jobs are handed out with an atomic counter; the caller runs jobs of
 *   its own batch until none is left, then waits for the workers that joined it to leave.
 * - A worker joins the batch at the head of the queue (under the mutex, taking the next slot), runs
 *   its jobs, and unlinks it once exhausted. A worker therefore joins a batch at most once, so the
 *   slots of one batch are unique and below ans_pool_size (caller 0, workers 1..size-1).
 * - No deadlock with nested calls: a caller never waits for queued work, only for workers already
 *   inside its batch, and each of those is running a job that (by induction on the nesting depth)
 *   finishes because its own caller drives it.
 * - Lock order: one mutex, no other lock is taken under it. Jobs run without it.
 * - fork(): only the forking thread survives in the child, and the mutex may have been held by a
 *   thread that is gone. The pool remembers the pid that owns its mutex, condition variables and
 *   threads; a call from another pid rebuilds them and starts fresh workers (never joining the
 *   parent's). Assumes the first pool call in the child is not raced by another child thread. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* pthread_setname_np */
#endif

#include "common/pool.h"

#include "common/error.h"
#include "common/mem.h"
#include "common/stream.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

#define ANS_POOL_MAX_THREADS 4096

typedef struct ans_pool_call ans_pool_call;
struct ans_pool_call {
    ans_pool_call *prev, *next; /* queue links; under pool->mu */
    int queued;             /* under pool->mu */
    int active;             /* workers inside the batch; under pool->mu */
    int next_slot;          /* slot for the next joining worker; under pool->mu */
    ans_job_fn fn;
    void *ctx;
    size_t n;
    atomic_size_t next_job; /* next job index to hand out (may run past n) */
    atomic_int failed;      /* set once err holds the first failure: stop handing out jobs */
    ans_errinfo err;        /* written under pool->mu before `failed` is set */
};

typedef struct ans_worker {
    ans_pool *pool;
    pthread_t tid;
    int id;
} ans_worker;

struct ans_pool {
    int size;     /* threads per call, caller included */
    pid_t pid;    /* process owning mu, the condition variables and the workers */
    int started;  /* workers were started (or tried) in `pid`; under mu */
    int nworkers; /* workers actually running; under mu */
    int shutdown; /* under mu */
    ans_pool_call *head, *tail;
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* workers: a batch was queued, or shutdown */
    pthread_cond_t done_cv; /* callers: a worker left a batch */
    ans_worker *workers;    /* size - 1 */
};

static int sync_init(ans_pool *pool)
{
    if (pthread_mutex_init(&pool->mu, NULL) != 0) goto fail;
    if (pthread_cond_init(&pool->work_cv, NULL) != 0) goto fail_mu;
    if (pthread_cond_init(&pool->done_cv, NULL) != 0) goto fail_cv;
    return ANS_OK;
fail_cv:
    pthread_cond_destroy(&pool->work_cv);
fail_mu:
    pthread_mutex_destroy(&pool->mu);
fail:
    return ans_err(ANS_EGENERIC, "thread pool: cannot initialise synchronisation objects");
}

int ans_pool_new(ans_pool **out, int nthreads)
{
    *out = NULL;
    if (nthreads < 0 || nthreads > ANS_POOL_MAX_THREADS)
        return ans_err(ANS_EINVAL, "thread pool: invalid thread count %d (0..%d)", nthreads,
                       ANS_POOL_MAX_THREADS);
    if (nthreads == 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = ncpu < 1 ? 1 : ncpu > ANS_POOL_MAX_THREADS ? ANS_POOL_MAX_THREADS : (int)ncpu;
    }
    ans_pool *pool = ans_calloc(1, sizeof *pool);
    if (!pool) return ANS_ENOMEM;
    pool->size = nthreads;
    pool->pid = getpid();
    if (nthreads > 1) {
        pool->workers = ans_calloc((size_t)nthreads - 1, sizeof *pool->workers);
        if (!pool->workers) {
            free(pool);
            return ANS_ENOMEM;
        }
    }
    int rc = sync_init(pool);
    if (rc < 0) {
        free(pool->workers);
        free(pool);
        return rc;
    }
    *out = pool;
    return ANS_OK;
}

int ans_pool_size(const ans_pool *pool)
{
    return pool ? pool->size : 1;
}

static void batch_unlink(ans_pool *pool, ans_pool_call *b)
{
    if (!b->queued) return;
    if (b->prev) b->prev->next = b->next;
    else pool->head = b->next;
    if (b->next) b->next->prev = b->prev;
    else pool->tail = b->prev;
    b->prev = b->next = NULL;
    b->queued = 0;
}

static int batch_exhausted(ans_pool_call *b)
{
    return atomic_load_explicit(&b->failed, memory_order_relaxed) ||
           atomic_load_explicit(&b->next_job, memory_order_relaxed) >= b->n;
}

static void batch_fail(ans_pool *pool, ans_pool_call *b, int rc)
{
    /* The message is thread-local: copy it into the batch for the caller to publish. */
    pthread_mutex_lock(&pool->mu);
    if (!atomic_load_explicit(&b->failed, memory_order_relaxed)) {
        ans_err_save(&b->err);
        b->err.code = rc;
        atomic_store_explicit(&b->failed, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&pool->mu);
}

static void batch_run(ans_pool *pool, ans_pool_call *b, int slot)
{
    /* Relaxed atomics suffice: results reach the caller through the mutex when workers leave. */
    while (!atomic_load_explicit(&b->failed, memory_order_relaxed)) {
        size_t i = atomic_fetch_add_explicit(&b->next_job, 1, memory_order_relaxed);
        if (i >= b->n) break;
        int rc = b->fn(b->ctx, i, slot);
        if (rc < 0) {
            batch_fail(pool, b, rc);
            break;
        }
    }
    ans_stream_fence(); /* jobs may have written with streaming stores (common/stream.h) */
}

static void *worker_main(void *arg)
{
    ans_worker *w = arg;
    ans_pool *pool = w->pool;
#if defined(__GLIBC__) || defined(__APPLE__)
    char name[16];
    snprintf(name, sizeof name, "annstream-%d", w->id % 10000);
#if defined(__APPLE__)
    pthread_setname_np(name);
#else
    pthread_setname_np(pthread_self(), name);
#endif
#endif
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (!pool->shutdown && !pool->head) pthread_cond_wait(&pool->work_cv, &pool->mu);
        if (pool->shutdown) break;
        ans_pool_call *b = pool->head;
        if (batch_exhausted(b)) { /* all handed out: nothing to join, drop it from the queue */
            batch_unlink(pool, b);
            continue;
        }
        int slot = b->next_slot++;
        b->active++;
        pthread_mutex_unlock(&pool->mu);
        batch_run(pool, b, slot);
        pthread_mutex_lock(&pool->mu);
        batch_unlink(pool, b); /* exhausted now: never join it again (keeps slots unique) */
        if (--b->active == 0) pthread_cond_broadcast(&pool->done_cv);
        /* b may be gone as soon as the mutex is released. */
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

/* Start the workers (mu held). Failure to create threads is not an error: the callers do the work. */
static void pool_start(ans_pool *pool)
{
    pool->started = 1;
    /* Workers block all signals so that asynchronous ones go to the application's threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 0; i < pool->size - 1; i++) {
        ans_worker *w = &pool->workers[i];
        w->pool = pool;
        w->id = i + 1;
        if (pthread_create(&w->tid, NULL, worker_main, w) != 0) break;
        pool->nworkers++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* In a forked child: the parent's workers do not exist here and the mutex may be stuck locked by one
 * of them. Rebuild the synchronisation objects without touching (or destroying) the old ones. */
static int pool_adopt(ans_pool *pool, pid_t pid)
{
    ANS_TRY(sync_init(pool));
    pool->pid = pid;
    pool->started = 0;
    pool->nworkers = 0;
    pool->shutdown = 0;
    pool->head = pool->tail = NULL; /* batches of the parent's threads */
    return ANS_OK;
}

int ans_pool_for(ans_pool *pool, size_t n, ans_job_fn fn, void *ctx)
{
    if (!pool || !fn) return ans_err(ANS_EINVAL, "thread pool: NULL pool or job function");
    if (n == 0) return ANS_OK;
    if (pool->size > 1 && n > 1) {
        if (n > SIZE_MAX / 2) /* next_job may run past n by the number of threads */
            return ans_err(ANS_EINVAL, "thread pool: too many jobs (%zu)", n);
        pid_t pid = getpid();
        if (pool->pid != pid) ANS_TRY(pool_adopt(pool, pid));

        ans_pool_call b;
        b.prev = b.next = NULL;
        b.active = 0;
        b.next_slot = 1;
        b.fn = fn;
        b.ctx = ctx;
        b.n = n;
        atomic_init(&b.next_job, 0);
        atomic_init(&b.failed, 0);

        pthread_mutex_lock(&pool->mu);
        if (!pool->started) pool_start(pool);
        int wake = pool->nworkers;
        if (wake > 0) {
            b.queued = 1;
            b.prev = pool->tail;
            if (pool->tail) pool->tail->next = &b;
            else pool->head = &b;
            pool->tail = &b;
            if ((size_t)wake > n - 1) wake = (int)(n - 1);
            for (int k = 0; k < wake; k++) pthread_cond_signal(&pool->work_cv);
        } else {
            b.queued = 0;
        }
        pthread_mutex_unlock(&pool->mu);

        batch_run(pool, &b, 0);

        pthread_mutex_lock(&pool->mu);
        batch_unlink(pool, &b);
        while (b.active > 0) pthread_cond_wait(&pool->done_cv, &pool->mu);
        pthread_mutex_unlock(&pool->mu);
        return atomic_load_explicit(&b.failed, memory_order_relaxed) ? ans_err_restore(&b.err)
                                                                     : ANS_OK;
    }
    /* One thread or one job: inline, the job's error is already this thread's. */
    for (size_t i = 0; i < n; i++) ANS_TRY(fn(ctx, i, 0));
    return ANS_OK;
}

void ans_pool_free(ans_pool *pool)
{
    if (!pool) return;
    if (pool->pid == getpid()) {
        pthread_mutex_lock(&pool->mu);
        pool->shutdown = 1;
        pthread_cond_broadcast(&pool->work_cv);
        int nworkers = pool->nworkers;
        pthread_mutex_unlock(&pool->mu);
        for (int i = 0; i < nworkers; i++) pthread_join(pool->workers[i].tid, NULL);
        pthread_cond_destroy(&pool->done_cv);
        pthread_cond_destroy(&pool->work_cv);
        pthread_mutex_destroy(&pool->mu);
    }
    /* else: a forked child that never used the pool; its workers live only in the parent and its
     * mutex may be stuck locked, so there is nothing to join or destroy. */
    free(pool->workers);
    free(pool);
}
