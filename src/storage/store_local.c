/* store_local.c - the local directory store (store.h).
 *
 * Reads use pread on O_CLOEXEC descriptors. The hot reads (ans_kv_get_range, ans_kv_advise) go
 * through a small per-store cache of open descriptors (2-16 by the process's descriptor limit,
 * least recently used replaced, a mutex around the table only, never around I/O): a loader reads the same few shard files
 * thousands of times per epoch, and an open/close pair per read cost about 4% of its CPU. The
 * cache belongs to the process that opened the store: in a forked child (another pid) every read
 * opens and closes its own descriptor again and the inherited table is never touched. A value
 * written through the store (ans_kv_set) drops its cached descriptor; a file replaced behind the
 * store's back (renamed over by another program) keeps being read through the old descriptor until
 * it leaves the cache; one truncated in place is seen at once (a short read is an error).
 * The other reads open the file they need, read and close it.
 *
 * Errors: a missing key (ENOENT / ENOTDIR) is ANS_ENOTFOUND without touching the thread's last error,
 * because missing chunks are normal; every other failure (ELOOP, EACCES, EISDIR, EIO, ...) is ANS_EIO
 * with the full path and the system's reason. */
#include "storage/store.h"

#include "common/error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define KV_PATH_MAX 4096
#define KV_DU_MAX_DEPTH 64

#define KV_FDS 16 /* cached descriptors per store, at most (see kv_fd_budget) */

typedef struct kv_fd {
    char *path;  /* NULL: a free entry */
    int fd;
    unsigned refs;  /* reads using it now: not replaced while > 0 */
    int stale;      /* the path was written since: closed once no read uses it */
    uint64_t used;  /* the store's tick at its last use */
} kv_fd;

struct ans_kv {
    char *root; /* without a trailing '/', except for "/" itself */
    size_t rootlen;
    pid_t pid;  /* the process whose descriptor cache this is */
    int nfds;   /* entries of fds[] in use: kv_fd_budget() */
    pthread_mutex_t mu;
    uint64_t tick;
    kv_fd fds[KV_FDS];
};

static const char *kv_strerror(int e, char *buf, size_t n)
{
#if defined(_GNU_SOURCE)
    return strerror_r(e, buf, n);
#else
    if (strerror_r(e, buf, n) != 0) snprintf(buf, n, "errno %d", e);
    return buf;
#endif
}

/* Map an errno from open/stat/read to a status; ENOENT and ENOTDIR are silent ANS_ENOTFOUND. */
static int kv_errno(int e, const char *path, const char *what)
{
    if (e == ENOENT || e == ENOTDIR) return ANS_ENOTFOUND;
    if (e == ENOMEM) return ans_err(ANS_ENOMEM, "%s: out of memory (%s)", path, what);
    char msg[256];
    return ans_err(ANS_EIO, "%s: %s (%s)", path, kv_strerror(e, msg, sizeof msg), what);
}

/* Keys are relative '/'-separated paths: no leading '/', no "." or ".." component, no empty
 * component. "" names the root. */
static int kv_check_key(const char *key)
{
    const char *p = key;
    if (*p == '\0') return ANS_OK;
    if (*p == '/') return ans_err(ANS_EINVAL, "store key '%s' is absolute", key);
    while (*p) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return ans_err(ANS_EINVAL, "store key '%s' has an empty, '.' or '..' component", key);
        p += n;
        if (*p == '/') p++;
    }
    return ANS_OK;
}

static int kv_path(const ans_kv *kv, const char *key, char *buf, size_t cap)
{
    ANS_TRY(kv_check_key(key));
    size_t klen = strlen(key);
    int slash = kv->rootlen > 0 && kv->root[kv->rootlen - 1] != '/';
    if (kv->rootlen + (size_t)slash + klen + 1 > cap)
        return ans_err(ANS_EINVAL, "%s/%s: path too long", kv->root, key);
    memcpy(buf, kv->root, kv->rootlen);
    size_t n = kv->rootlen;
    if (klen) {
        if (slash) buf[n++] = '/';
        memcpy(buf + n, key, klen);
        n += klen;
    }
    buf[n] = '\0';
    return ANS_OK;
}

/* Read exactly `len` bytes at `off`. Returns the number of bytes read (short only at end of file)
 * or -1 with errno set. */
static int64_t kv_pread_full(int fd, void *dst, uint64_t len, uint64_t off)
{
    uint8_t *p = dst;
    uint64_t done = 0;
    while (done < len) {
        size_t want = (len - done) > (1u << 30) ? (1u << 30) : (size_t)(len - done);
        ssize_t r = pread(fd, p + done, want, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) break;
        done += (uint64_t)r;
    }
    return (int64_t)done;
}

/* Open `key` for reading; *size gets its size when `size` is not NULL (fstat). */
static int kv_open_read(ans_kv *kv, const char *key, char *path, int *fd_out, uint64_t *size)
{
    ANS_TRY(kv_path(kv, key, path, KV_PATH_MAX));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kv_errno(errno, path, "open");
    if (size) {
        struct stat st;
        if (fstat(fd, &st) != 0) {
            int e = errno;
            close(fd);
            return kv_errno(e, path, "fstat");
        }
        if (S_ISDIR(st.st_mode)) {
            close(fd);
            return kv_errno(EISDIR, path, "open");
        }
        *size = (uint64_t)st.st_size;
    }
    *fd_out = fd;
    return ANS_OK;
}

/* Descriptors one store may keep open: a 128th of the process's soft limit, 2 to KV_FDS (8 at the
 * common 1024), so that a collection of many datasets, each its own store, stays well inside it. */
static int kv_fd_budget(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return KV_FDS;
    rlim_t n = rl.rlim_cur / 128;
    return n < 2 ? 2 : n > KV_FDS ? KV_FDS : (int)n;
}

/* A read descriptor for `path` from the store's cache (*slot >= 0, give it back with kv_fd_put)
 * or, when the cache cannot take it, a fresh one (*slot -1: close it). */
static int kv_fd_get(ans_kv *kv, const char *path, int *fd_out, int *slot)
{
    *slot = -1;
    int cached = getpid() == kv->pid;
    if (cached) {
        pthread_mutex_lock(&kv->mu);
        for (int i = 0; i < kv->nfds; i++)
            if (kv->fds[i].path && !kv->fds[i].stale && strcmp(kv->fds[i].path, path) == 0) {
                kv->fds[i].refs++;
                kv->fds[i].used = ++kv->tick;
                *fd_out = kv->fds[i].fd;
                *slot = i;
                pthread_mutex_unlock(&kv->mu);
                return ANS_OK;
            }
        pthread_mutex_unlock(&kv->mu);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE) && cached) {
        /* out of descriptors: give back the idle cached ones, then try once more */
        pthread_mutex_lock(&kv->mu);
        for (int i = 0; i < kv->nfds; i++)
            if (kv->fds[i].path && kv->fds[i].refs == 0) {
                close(kv->fds[i].fd);
                free(kv->fds[i].path);
                kv->fds[i].path = NULL;
            }
        pthread_mutex_unlock(&kv->mu);
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) return kv_errno(errno, path, "open");
    *fd_out = fd;
    if (!cached) return ANS_OK;
    char *copy = ans_strdup(path);
    if (!copy) return ANS_OK; /* uncached then */
    pthread_mutex_lock(&kv->mu);
    int pick = -1;
    for (int i = 0; i < kv->nfds; i++) {
        if (kv->fds[i].path && !kv->fds[i].stale && strcmp(kv->fds[i].path, path) == 0) {
            /* another thread's, opened meanwhile */
            pick = -2;
            break;
        }
        if (kv->fds[i].refs) continue;
        if (pick < 0 || !kv->fds[i].path ||
            (kv->fds[pick].path && kv->fds[i].used < kv->fds[pick].used))
            pick = i;
    }
    int old_fd = -1;
    char *old_path = NULL;
    if (pick >= 0) {
        old_fd = kv->fds[pick].path ? kv->fds[pick].fd : -1;
        old_path = kv->fds[pick].path;
        kv->fds[pick] = (kv_fd){copy, fd, 1, 0, ++kv->tick};
        *slot = pick;
        copy = NULL;
    }
    pthread_mutex_unlock(&kv->mu);
    free(copy);
    free(old_path);
    if (old_fd >= 0) close(old_fd);
    return ANS_OK;
}

static void kv_fd_put(ans_kv *kv, int fd, int slot)
{
    if (slot < 0) {
        close(fd);
        return;
    }
    pthread_mutex_lock(&kv->mu);
    kv_fd *e = &kv->fds[slot];
    int close_fd = -1;
    char *path = NULL;
    if (--e->refs == 0 && e->stale) {
        close_fd = e->fd;
        path = e->path;
        e->path = NULL;
    }
    pthread_mutex_unlock(&kv->mu);
    free(path);
    if (close_fd >= 0) close(close_fd);
}

/* `path` was just replaced: its cached descriptor (the old file) is not used again. */
static void kv_fd_forget(ans_kv *kv, const char *path)
{
    if (getpid() != kv->pid) return;
    int close_fd = -1;
    char *old = NULL;
    pthread_mutex_lock(&kv->mu);
    for (int i = 0; i < kv->nfds; i++) {
        kv_fd *e = &kv->fds[i];
        if (!e->path || e->stale || strcmp(e->path, path) != 0) continue;
        if (e->refs) {
            e->stale = 1; /* closed by the last kv_fd_put */
        } else {
            close_fd = e->fd;
            old = e->path;
            e->path = NULL;
        }
        break;
    }
    pthread_mutex_unlock(&kv->mu);
    free(old);
    if (close_fd >= 0) close(close_fd);
}

static int kv_read_at(int fd, const char *path, void *dst, uint64_t len, uint64_t off,
                      uint64_t size_hint)
{
    int64_t got = kv_pread_full(fd, dst, len, off);
    if (got < 0) return kv_errno(errno, path, "read");
    if ((uint64_t)got != len) {
        struct stat st;
        uint64_t size = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : size_hint;
        return ans_err(ANS_ECORRUPT,
                       "%s: truncated: %llu bytes long, wanted bytes [%llu, %llu)", path,
                       (unsigned long long)size, (unsigned long long)off,
                       (unsigned long long)(off + len));
    }
    return ANS_OK;
}

void ans_kv_advise(ans_kv *kv, const char *key, uint64_t offset, uint64_t len)
{
#if defined(POSIX_FADV_WILLNEED)
    char path[KV_PATH_MAX];
    if (offset > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - offset) return;
    ans_errinfo saved;
    ans_err_save(&saved);
    int bad = kv_path(kv, key, path, KV_PATH_MAX) < 0;
    ans_err_restore(&saved); /* a hint leaves the last error as it was */
    if (bad) return;
    int fd = -1, slot = -1;
    ans_err_save(&saved);
    bad = kv_fd_get(kv, path, &fd, &slot) < 0;
    ans_err_restore(&saved);
    if (bad) return;
    (void)posix_fadvise(fd, (off_t)offset, (off_t)len, POSIX_FADV_WILLNEED);
    kv_fd_put(kv, fd, slot);
#else
    (void)kv;
    (void)key;
    (void)offset;
    (void)len;
#endif
}

int ans_kv_open_dir(ans_kv **out, const char *root)
{
    *out = NULL;
    struct stat st;
    if (stat(root, &st) != 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR) return ans_err(ANS_ENOTFOUND, "%s: no such directory", root);
        return kv_errno(e, root, "stat");
    }
    if (!S_ISDIR(st.st_mode)) return ans_err(ANS_EINVAL, "%s: not a directory", root);
    ans_kv *kv = ans_calloc(1, sizeof *kv);
    if (!kv) return ANS_ENOMEM;
    size_t n = strlen(root);
    while (n > 1 && root[n - 1] == '/') n--;
    kv->root = ans_strndup(root, n);
    if (!kv->root) {
        free(kv);
        return ANS_ENOMEM;
    }
    kv->rootlen = n;
    kv->pid = getpid();
    kv->nfds = kv_fd_budget();
    if (pthread_mutex_init(&kv->mu, NULL) != 0) {
        free(kv->root);
        free(kv);
        return ans_err(ANS_ENOMEM, "%s: cannot create a mutex", root);
    }
    *out = kv;
    return ANS_OK;
}

/* mkdir -p on a writable copy of `path`. */
static int kv_mkdirs(char *path)
{
    size_t n = strlen(path);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0') continue;
        char c = path[i];
        path[i] = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST) {
            int e = errno;
            int rc = kv_errno(e, path, "mkdir");
            if (rc == ANS_ENOTFOUND) rc = ans_err(ANS_EIO, "%s: cannot create directory", path);
            path[i] = c;
            return rc;
        }
        path[i] = c;
    }
    return ANS_OK;
}

int ans_kv_create_dir(ans_kv **out, const char *root)
{
    *out = NULL;
    char *tmp = ans_strdup(root);
    if (!tmp) return ANS_ENOMEM;
    int rc = kv_mkdirs(tmp);
    free(tmp);
    if (rc < 0) return rc;
    return ans_kv_open_dir(out, root);
}

void ans_kv_free(ans_kv *kv)
{
    if (!kv) return;
    for (int i = 0; i < kv->nfds; i++)
        if (kv->fds[i].path) {
            if (getpid() == kv->pid) close(kv->fds[i].fd); /* a child leaves the parent's be */
            free(kv->fds[i].path);
        }
    pthread_mutex_destroy(&kv->mu);
    free(kv->root);
    free(kv);
}

const char *ans_kv_root(const ans_kv *kv)
{
    return kv->root;
}

int ans_kv_get(ans_kv *kv, const char *key, ans_buf *out, uint64_t max)
{
    char path[KV_PATH_MAX];
    int fd = -1;
    uint64_t size = 0;
    ANS_TRY(kv_open_read(kv, key, path, &fd, &size));
    int rc = ANS_OK;
    if (max && size > max)
        rc = ans_err(ANS_ECORRUPT, "%s: %llu bytes, more than the %llu allowed", path,
                     (unsigned long long)size, (unsigned long long)max);
    else if (size > SIZE_MAX)
        rc = ans_err(ANS_ENOMEM, "%s: too large for memory", path);
    else if ((rc = ans_buf_resize(out, (size_t)size)) == ANS_OK)
        rc = kv_read_at(fd, path, out->data, size, 0, size);
    close(fd);
    return rc;
}

int ans_kv_get_range(ans_kv *kv, const char *key, uint64_t offset, uint64_t len, void *dst)
{
    char path[KV_PATH_MAX];
    int fd = -1;
    uint64_t end;
    if (ans_add_overflow(offset, len, &end))
        return ans_err(ANS_ECORRUPT, "%s: byte range overflows", key);
    int slot = -1;
    ANS_TRY(kv_path(kv, key, path, KV_PATH_MAX));
    ANS_TRY(kv_fd_get(kv, path, &fd, &slot));
    int rc = kv_read_at(fd, path, dst, len, offset, 0);
    kv_fd_put(kv, fd, slot);
    return rc;
}

int ans_kv_get_suffix(ans_kv *kv, const char *key, uint64_t len, void *dst, uint64_t *total)
{
    char path[KV_PATH_MAX];
    int fd = -1;
    uint64_t size = 0;
    ANS_TRY(kv_open_read(kv, key, path, &fd, &size));
    int rc;
    if (size < len)
        rc = ans_err(ANS_ECORRUPT, "%s: truncated: %llu bytes long, wanted the last %llu", path,
                     (unsigned long long)size, (unsigned long long)len);
    else
        rc = kv_read_at(fd, path, dst, len, size - len, size);
    close(fd);
    if (rc == ANS_OK && total) *total = size;
    return rc;
}

int ans_kv_get_part(ans_kv *kv, const char *key, int from_end, uint64_t len, ans_buf *out,
                    uint64_t *total)
{
    char path[KV_PATH_MAX];
    int fd = -1;
    uint64_t size = 0;
    ANS_TRY(kv_open_read(kv, key, path, &fd, &size));
    int rc;
    if (size < len)
        rc = ans_err(ANS_ECORRUPT, "%s: truncated: %llu bytes long, wanted the %s %llu", path,
                     (unsigned long long)size, from_end ? "last" : "first",
                     (unsigned long long)len);
    else if (len > SIZE_MAX)
        rc = ans_err(ANS_ENOMEM, "%s: too large for memory", path);
    else if ((rc = ans_buf_resize(out, (size_t)len)) == ANS_OK)
        rc = kv_read_at(fd, path, out->data, len, from_end ? size - len : 0, size);
    close(fd);
    if (rc == ANS_OK && total) *total = size;
    return rc;
}

int ans_kv_size(ans_kv *kv, const char *key, uint64_t *size)
{
    char path[KV_PATH_MAX];
    ANS_TRY(kv_path(kv, key, path, sizeof path));
    struct stat st;
    if (stat(path, &st) != 0) return kv_errno(errno, path, "stat");
    if (S_ISDIR(st.st_mode)) return kv_errno(EISDIR, path, "stat");
    *size = (uint64_t)st.st_size;
    return ANS_OK;
}

static int kv_cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void ans_kv_names_free(char **names, size_t n)
{
    if (!names) return;
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

int ans_kv_list(ans_kv *kv, const char *prefix, char ***names, size_t *n)
{
    *names = NULL;
    *n = 0;
    char path[KV_PATH_MAX];
    ANS_TRY(kv_path(kv, prefix, path, sizeof path));
    DIR *d = opendir(path);
    if (!d) return kv_errno(errno, path, "opendir");
    char **v = NULL;
    size_t cnt = 0, cap = 0;
    int rc = ANS_OK;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno) rc = kv_errno(errno, path, "readdir");
            break;
        }
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (cnt == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **nv = ans_realloc(v, ncap * sizeof *nv);
            if (!nv) {
                rc = ANS_ENOMEM;
                break;
            }
            v = nv;
            cap = ncap;
        }
        if (!(v[cnt] = ans_strdup(e->d_name))) {
            rc = ANS_ENOMEM;
            break;
        }
        cnt++;
    }
    closedir(d);
    if (rc < 0) {
        ans_kv_names_free(v, cnt);
        return rc;
    }
    if (cnt) qsort(v, cnt, sizeof *v, kv_cmp_names);
    *names = v;
    *n = cnt;
    return ANS_OK;
}

static int kv_du_dir(int dfd, const char *path, int depth, uint64_t *bytes, uint64_t *count)
{
    if (depth > KV_DU_MAX_DEPTH) {
        close(dfd);
        return ans_err(ANS_EIO, "%s: directories nested too deeply", path);
    }
    DIR *d = fdopendir(dfd);
    if (!d) {
        int e = errno;
        close(dfd);
        return kv_errno(e, path, "opendir");
    }
    int rc = ANS_OK;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno) rc = kv_errno(errno, path, "readdir");
            break;
        }
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, 0) != 0) {
            if (errno == ENOENT) continue; /* removed meanwhile */
            rc = kv_errno(errno, path, e->d_name);
            break;
        }
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (sub < 0) {
                rc = kv_errno(errno, path, e->d_name);
                if (rc == ANS_ENOTFOUND) {
                    rc = ANS_OK;
                    continue;
                }
                break;
            }
            if ((rc = kv_du_dir(sub, path, depth + 1, bytes, count)) < 0) break;
        } else if (S_ISREG(st.st_mode)) {
            *bytes += (uint64_t)st.st_size;
            *count += 1;
        }
    }
    closedir(d);
    return rc;
}

int ans_kv_du(ans_kv *kv, const char *prefix, uint64_t *bytes, uint64_t *count)
{
    *bytes = 0;
    *count = 0;
    char path[KV_PATH_MAX];
    ANS_TRY(kv_path(kv, prefix, path, sizeof path));
    struct stat st;
    if (stat(path, &st) != 0) return kv_errno(errno, path, "stat");
    if (!S_ISDIR(st.st_mode)) {
        *bytes = (uint64_t)st.st_size;
        *count = 1;
        return ANS_OK;
    }
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return kv_errno(errno, path, "open");
    return kv_du_dir(fd, path, 0, bytes, count);
}

int ans_kv_set(ans_kv *kv, const char *key, const void *data, size_t len)
{
    char path[KV_PATH_MAX];
    char tmp[KV_PATH_MAX + 16];
    ANS_TRY(kv_path(kv, key, path, sizeof path));
    if (!*key) return ans_err(ANS_EINVAL, "%s: cannot write a value at the store root", path);
    /* Parent directories. */
    char *slash = strrchr(path, '/');
    if (slash && slash != path) {
        *slash = '\0';
        int rc = kv_mkdirs(path);
        *slash = '/';
        if (rc < 0) return rc;
    }
    snprintf(tmp, sizeof tmp, "%s.tmpXXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int rc = kv_errno(errno, tmp, "mkstemp");
        return rc == ANS_ENOTFOUND ? ans_err(ANS_EIO, "%s: cannot create", tmp) : rc;
    }
    (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    (void)fchmod(fd, 0644);
    const uint8_t *p = data;
    size_t done = 0;
    int rc = ANS_OK;
    while (done < len) {
        ssize_t w = write(fd, p + done, len - done > (1u << 30) ? (1u << 30) : len - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            rc = kv_errno(errno, tmp, "write");
            break;
        }
        done += (size_t)w;
    }
    if (close(fd) != 0 && rc == ANS_OK) rc = kv_errno(errno, tmp, "close");
    if (rc == ANS_OK && rename(tmp, path) != 0) {
        rc = kv_errno(errno, path, "rename");
        if (rc == ANS_ENOTFOUND) rc = ans_err(ANS_EIO, "%s: rename failed", path);
    }
    if (rc < 0) unlink(tmp);
    if (rc == ANS_OK) kv_fd_forget(kv, path);
    return rc;
}
