/* pool.h - a fixed thread pool running parallel-for jobs (internal).
 *
 * The calling thread always takes part in the work, so a pool with no worker thread runs jobs inline
 * and a job may itself call ans_pool_for on the same pool without deadlock. Several threads may submit
 * to one pool at once. Workers are started lazily (on the first call with more than one job) and
 * restarted in a child process after fork(); the child's first call must not race another thread of
 * the child. Worker threads block asynchronous signals. ans_pool_for allocates nothing. */
#ifndef ANS_COMMON_POOL_H
#define ANS_COMMON_POOL_H

#include <stddef.h>

typedef struct ans_pool ans_pool;

/* nthreads: total threads including the caller; 0 = number of online CPUs. ANS_EINVAL outside
 * 0..4096. If worker threads cannot be created, callers run the jobs themselves. */
int ans_pool_new(ans_pool **out, int nthreads);
/* Stop and join the workers. No ans_pool_for may be in flight. NULL-tolerant. */
void ans_pool_free(ans_pool *pool);
/* Total threads taking part in one ans_pool_for call (workers + caller), >= 1. */
int ans_pool_size(const ans_pool *pool);

/* Job i of n. `slot` identifies the participating thread within this call, in [0, ans_pool_size):
 * use it to index per-thread scratch space owned by the caller of ans_pool_for (slots are numbered
 * afresh in every call, so a nested call needs scratch of its own). Return ANS_OK or a
 * negative status after setting the thread's last error with ans_err. */
typedef int (*ans_job_fn)(void *ctx, size_t i, int slot);

/* Run fn(ctx, i, slot) for every i in [0, n). Returns ANS_OK, or the status of the first job that
 * failed (later jobs are skipped), with that job's message as the caller's last error. */
int ans_pool_for(ans_pool *pool, size_t n, ans_job_fn fn, void *ctx);

#endif
