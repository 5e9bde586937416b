/* store.h - key/value storage under a root (internal). Layer 0: knows nothing of zarr or anndata.
 *
 * Keys are '/'-separated relative paths ("X/data/c/0/1", "zarr.json"). Only the local file system is
 * implemented; the interface is shaped so that object stores can be added (ranged gets, listing).
 * All functions are thread-safe for reads. Errors name the full file path. */
#ifndef ANS_STORAGE_STORE_H
#define ANS_STORAGE_STORE_H

#include "common/mem.h"

#include <stdint.h>

typedef struct ans_kv ans_kv;

/* Open the directory `root` as a store. ANS_ENOTFOUND if missing, ANS_EINVAL if not a directory. */
int ans_kv_open_dir(ans_kv **out, const char *root);
/* Open for writing (creates `root` if needed). */
int ans_kv_create_dir(ans_kv **out, const char *root);
void ans_kv_free(ans_kv *kv);
const char *ans_kv_root(const ans_kv *kv);

/* Whole value of `key` into `out` (out->len set). ANS_ENOTFOUND if the key does not exist (no message
 * is recorded as an error the caller must show; it is normal for missing chunks). Values larger than
 * `max` bytes are refused with ANS_ECORRUPT (max = 0: no limit). */
int ans_kv_get(ans_kv *kv, const char *key, ans_buf *out, uint64_t max);
/* Exactly `len` bytes at `offset` into `dst`. ANS_ENOTFOUND if missing; ANS_ECORRUPT if the value
 * is shorter than offset + len (truncated). */
int ans_kv_get_range(ans_kv *kv, const char *key, uint64_t offset, uint64_t len, void *dst);
/* The last `len` bytes (shard index at the end). ANS_ECORRUPT if the value is shorter. Sets *total to
 * the value's size when not NULL. */
int ans_kv_get_suffix(ans_kv *kv, const char *key, uint64_t len, void *dst, uint64_t *total);
/* Size of a value; ANS_ENOTFOUND if missing. */
int ans_kv_size(ans_kv *kv, const char *key, uint64_t *size);
/* Names of the direct children of `prefix` ("" = root), keys and sub-prefixes alike, sorted.
 * *names is an ans_malloc'd array of `*n` ans_strdup'd strings; ans_kv_names_free frees each string
 * and the array (any producer of such a list, e.g. the container children ops, must match). */
int ans_kv_list(ans_kv *kv, const char *prefix, char ***names, size_t *n);
void ans_kv_names_free(char **names, size_t n);
/* Part of a value into a growable buffer, sized only once the value's size is known (so a bogus `len`
 * taken from metadata never allocates more than the file holds): from_end = 0 gives the first `len`
 * bytes, from_end = 1 the last `len` bytes (a shard index at the start or end). out->len = len.
 * *total (if not NULL) receives the value's size. ANS_ENOTFOUND (no message) if missing;
 * ANS_ECORRUPT if the value is shorter than `len`. One open + fstat + pread. */
int ans_kv_get_part(ans_kv *kv, const char *key, int from_end, uint64_t len, ans_buf *out,
                    uint64_t *total);
/* Total size and number of the values under `prefix` ("" = everything), recursively. Missing prefix:
 * ANS_ENOTFOUND (no message). A prefix naming a value counts that value. */
int ans_kv_du(ans_kv *kv, const char *prefix, uint64_t *bytes, uint64_t *count);
/* Tell the storage that bytes [offset, offset + len) of `key` will be read soon (len 0: to the
 * end), so it can start fetching them in the background (local files: posix_fadvise WILLNEED, which
 * queues the reads and returns). Only a hint: a missing key or a refused advice is ignored, nothing
 * is recorded as an error, and the result never changes what a later read returns. */
void ans_kv_advise(ans_kv *kv, const char *key, uint64_t offset, uint64_t len);
/* Write a value atomically (temporary file + rename), creating parent directories. */
int ans_kv_set(ans_kv *kv, const char *key, const void *data, size_t len);

#endif
