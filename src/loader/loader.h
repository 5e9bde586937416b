/* loader.h - the loader engine behind ans_loader_* (internal). Layer 4: depends on anndata/,
 * loader/sampler and common/.
 *
 * Design (the public contract is the "Loader" section of annstream.h)
 * ------
 * - One producer thread per loader, started by the first ans_loader_next of an epoch (or after a
 *   set_epoch / seek, which stop and join it). It walks the loads of the partition in order from
 *   the one holding the start batch. Per load:
 *   1. ans_sampler_plan into a reused plan;
 *   2. the plan's global row ranges are split at store boundaries into "pieces" and grouped by
 *      store (keeping plan order within a store);
 *   3. sizing (rows, nnz from the cached indptr), then ONE ans_ad_element_read_ranges_into per
 *      store into the recycled load buffer (data, indices, uint64 indptr), store after store; the
 *      position of every load row in that buffer (pos2row) and its global index (pos2glob) are
 *      tabulated;
 *   4. the batches are gathered, in groups that fit the queue, in parallel on the gather pool
 *      (slot i of a group = batch first + i, so the result does not depend on the thread count):
 *      each batch copies its rows in emission order into its own slot buffers (CSR: data,
 *      indices, indptr; dense: rows; densify: a zeroed rows x n_vars array the CSR values are
 *      scattered into), converting values to out_dtype;
 *   5. the group is appended to the ready queue in batch order.
 *   Direct mode (CSR batches, not densified: l->direct) replaces steps 3-5: the row lengths come
 *   from the cached indptr (ans_ad_element_row_lengths); the slots of all the load's remaining
 *   batches are taken at once (waiting for room); each batch is laid out (indptr, nnz, buffers)
 *   and every load row gets the address of its place in its batch; then ONE
 *   ans_ad_element_scatter_csr per store decodes each row straight there (values converted,
 *   indices widened and checked on the way), each chunk once, on the store's pool. Rows of
 *   skipped batches (seek) are not decoded; a row a custom plan emits twice is copied afterwards.
 *   There is no load buffer, so the queue may hold (prefetch + 1) loads of batches instead.
 * - Custom plans (custom_plans = 1): instead of computing plans, the producer pops plans pushed by
 *   ans_loader_push_plan (copied into recycled plan_node's, validated with
 *   ans_load_plan_validate) and executes them in push order; it waits on cv_space for the next
 *   plan and finishes the epoch after ans_loader_end_plans once the queue is empty.
 * - Back-pressure: at most prefetch * batches_per_load batches ((prefetch + 1) * batches_per_load
 *   in direct mode) are queued or being filled ("ahead"); the producer waits on cv_space when that
 *   many are ahead. Reading the next load does not wait (direct mode: its slots fit while the
 *   consumer still takes load k), so I/O of load k+1 overlaps the consumption of load k.
 * - Slots (struct ans_batch with grow-only buffers) are taken from a free list; a new one is made
 *   only when the free list is empty (every slot queued, filling or held). Held slots belong to the
 *   consumer until ans_batch_release.
 * - Lifetime: the loader struct is freed by whichever comes last, ans_loader_free or the release of
 *   the last held batch (`freed` + `held` under the mutex).
 * - Lock order: only one mutex (l->mu); the decode and gather pools are never called under it.
 * - Errors from the producer are saved as ans_errinfo and republished by ans_loader_next after the
 *   batches that were ready before the failure. */
#ifndef ANS_LOADER_LOADER_H
#define ANS_LOADER_LOADER_H

#include "annstream.h"

#include <stddef.h>

/* True for the types a loader can convert values from (bool, integers, float32, float64). */
int ans_loader_cast_from_ok(ans_dtype dt);
/* True for the types a loader can convert values to (integers, float32, float64). */
int ans_loader_cast_to_ok(ans_dtype dt);

/* dst[i] = (dt)src[i] for i < n (idx == NULL), or dst[idx[i]] = (dt)src[i] (idx: int32 or int64
 * per idx_wide). Same types copy bytes (any type); otherwise both must pass the checks above.
 * Returns 0, or -1 for an unsupported pair. */
int ans_loader_cast(void *dst, ans_dtype dt, const void *src, ans_dtype st, const void *idx,
                    int idx_wide, size_t n);

/* Number of batch slots the loader has made so far (for tests of the steady state). */
size_t ans_loader_n_slots(ans_loader *loader);

#endif
