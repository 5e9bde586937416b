/* replay.c - run a fuzz target's LLVMFuzzerTestOneInput over files, without libFuzzer.
 *
 * usage: replay_<target> [-q] PATH...
 * Each PATH is a file or a directory (walked recursively, files in sorted order; names starting
 * with '.' are skipped, as are README files). Missing paths are skipped, so a target without
 * regressions needs no empty folder. Before each input the name is written to stderr (so the last
 * name printed before a sanitizer report is the culprit); -q silences that. Exit status 0 when
 * every input ran; a crash or a failed invariant ends the process (sanitizer / abort status).
 *
 * Built for every target by the meson option `fuzz` (with any compiler, with or without
 * sanitizers); tools/test.sh and tools/sanitize.sh run it over fuzz/corpus/<target> and
 * fuzz/regressions/<target>. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int quiet;
static unsigned long n_inputs;

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) abort();
    size_t r;
    while ((r = fread(buf + len, 1, cap - len, f)) > 0) {
        len += r;
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            if (!buf) abort();
        }
    }
    fclose(f);
    /* an exact-size copy, so that ASan catches reads past the end of the input */
    uint8_t *in = malloc(len ? len : 1);
    if (!in) abort();
    memcpy(in, buf, len);
    free(buf);
    if (!quiet) fprintf(stderr, "replay: %s (%zu bytes)\n", path, len);
    LLVMFuzzerTestOneInput(in, len);
    free(in);
    n_inputs++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) return 0; /* missing: nothing to replay */
    if (!S_ISDIR(st.st_mode)) return run_file(path);
    DIR *d = opendir(path);
    if (!d) return -1;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || !strncmp(de->d_name, "README", 6)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            names = realloc(names, cap * sizeof *names);
            if (!names) abort();
        }
        size_t l = strlen(path) + strlen(de->d_name) + 2;
        names[n] = malloc(l);
        if (!names[n]) abort();
        snprintf(names[n], l, "%s/%s", path, de->d_name);
        n++;
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, cmp_str);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (run_path(names[i]) < 0) rc = -1;
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    int rc = 0, npaths = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-q")) {
            quiet = 1;
            continue;
        }
        npaths++;
        if (run_path(argv[i]) < 0) rc = 1;
    }
    if (!npaths) {
        fprintf(stderr, "usage: %s [-q] FILE_OR_DIR...\n", argv[0]);
        return 2;
    }
    printf("replay: %lu inputs ran\n", n_inputs);
    return rc;
}
