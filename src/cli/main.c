/* main.c - the `annstream` command-line tool. Uses only the public header.
 *
 * Subcommands live in one table of {name, function, usage, summary}; adding one (convert, bench)
 * means writing its function and adding a row. Exit status: 0 success, 1 failure (the message is
 * printed as "annstream: <message>"), 2 usage error. */
#include "annstream.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXIT_USAGE 2

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv); /* argv[0] is the command name */
    const char *usage;                /* arguments, after the command name */
    const char *summary;
    const char *details;              /* option lines for `annstream help NAME` */
} command;

static int cmd_info(int argc, char **argv);
static int cmd_convert(int argc, char **argv);
static int cmd_help(int argc, char **argv);

static const command k_commands[] = {
    {"info", cmd_info, "PATH [--json] [--threads N]",
     "describe an AnnData store: shape, keys, elements, chunking, codecs and sizes",
     "  PATH           a zarr (v2 or v3) directory or an .h5ad file\n"
     "  --json         print the description as JSON\n"
     "  --threads N    decoding threads (0 = one per CPU; default 1)\n"},
    {"convert", cmd_convert,
     "INPUT... -o OUTPUT [--seed N] [--dataset-size ROWS|SIZE] [--var union|intersection|FILE] "
     "[--obs COL,...] [--groupby COL,...] [--layers K,...] [--obsm K,...] "
     "[--compressor lz4|zstd|none] "
     "[--memory 2GiB] [--threads N] [--no-shuffle] [--append] [--overwrite]",
     "write AnnData stores as a pre-shuffled annbatch collection (zarr v3, sharded)",
     "  INPUT...              AnnData stores (zarr v2/v3 directories or .h5ad files)\n"
     "  -o, --output OUTPUT   the collection to write (new, unless --overwrite or --append)\n"
     "  --seed N              seed of the row shuffle (default 0)\n"
     "  --no-shuffle          keep the rows in input order\n"
     "  --dataset-size N      rows per dataset (a plain number) or bytes per dataset (with a\n"
     "                        unit: 512MiB, 20GB; units are binary); default 20GiB\n"
     "  --var POLICY          union (default), intersection, or a FILE with one gene per line\n"
     "  --obs COL,...         obs columns to carry (default: the columns all inputs share)\n"
     "  --groupby COL,...     sort each dataset's rows by these obs columns (stable: the\n"
     "                        shuffled order is kept within a group)\n"
     "  --layers K,...        layers to carry; --obsm K,... obsm entries to carry\n"
     "  --n-obs-per-chunk N   rows per inner chunk (default 64); --shard-size SIZE (default 1GiB)\n"
     "  --compressor C        lz4 (blosc lz4, default), zstd or none\n"
     "  --memory SIZE         memory budget (default 2GiB)\n"
     "  --threads N           decode / encode threads (0 = one per CPU; default 0)\n"
     "  --append              add the inputs to the existing collection OUTPUT (reshuffled)\n"
     "  --overwrite           replace OUTPUT when it exists\n"
     "  --quiet               no progress bar (it is shown only when stderr is a terminal)\n"},
    {"help", cmd_help, "[COMMAND]", "show help for all commands or one", NULL},
};

#define N_COMMANDS (sizeof k_commands / sizeof k_commands[0])

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(k_commands[i].name, name) == 0) return &k_commands[i];
    return NULL;
}

static void print_usage(FILE *f)
{
    fprintf(f, "usage: annstream COMMAND [ARGS]\n       annstream --version\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-8s %s\n", k_commands[i].name, k_commands[i].summary);
    fprintf(f, "\nRun 'annstream help COMMAND' for the options of a command.\n");
}

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("annstream: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n", stderr);
    va_end(ap);
    return EXIT_USAGE;
}

static int fail(void)
{
    fprintf(stderr, "annstream: %s\n", ans_error_last());
    return 1;
}

/* Flush stdout and report a write failure (a closed pipe, a full disk). */
static int finish_output(void)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "annstream: writing the output failed: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}

static int parse_int(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > INT_MAX) return -1;
    *out = (int)v;
    return 0;
}

/* ---- info ----------------------------------------------------------------------------------- */

static int cmd_info(int argc, char **argv)
{
    const char *path = NULL;
    int json = 0;
    ans_store_options opts = ANS_STORE_OPTIONS_INIT;
    opts.threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--json") == 0) {
            json = 1;
        } else if (strcmp(a, "--threads") == 0) {
            if (i + 1 >= argc) return usage_error("info: --threads needs a value");
            if (parse_int(argv[++i], &opts.threads) != 0)
                return usage_error("info: invalid thread count '%s'", argv[i]);
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            char *hargv[] = {"help", "info", NULL};
            return cmd_help(2, hargv);
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage_error("info: unknown option '%s'", a);
        } else if (path) {
            return usage_error("info: unexpected argument '%s'", a);
        } else {
            path = a;
        }
    }
    if (!path) return usage_error("info: missing PATH (usage: annstream info PATH [--json])");

    ans_store *store = NULL;
    if (ans_store_open(&store, path, &opts) != ANS_OK) return fail();
    char *text = NULL;
    int rc = ans_store_describe(store, json, &text);
    ans_store_free(store);
    if (rc != ANS_OK) return fail();
    fputs(text, stdout);
    ans_free(text);
    return finish_output();
}

/* ---- convert -------------------------------------------------------------------------------- */

/* Set by SIGINT / SIGTERM during a conversion: the progress callback then cancels it, so the
 * library removes its temporary directories before the tool exits. */
static volatile sig_atomic_t g_interrupted;

static void on_signal(int sig)
{
    (void)sig;
    g_interrupted = 1;
}

/* "123", "4k", "512MiB", "1GB", "2.5G": binary units (k = 1024). *has_unit says whether one was
 * given. */
static int parse_size(const char *s, uint64_t *out, int *has_unit)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0) return -1;
    while (*end == ' ')
        end++;
    double mul = 1;
    *has_unit = *end != '\0';
    switch (*end) {
    case '\0':
        break;
    case 'b':
    case 'B':
        mul = 1;
        end++;
        break;
    case 'k':
    case 'K':
        mul = 1024.0;
        end++;
        break;
    case 'm':
    case 'M':
        mul = 1024.0 * 1024;
        end++;
        break;
    case 'g':
    case 'G':
        mul = 1024.0 * 1024 * 1024;
        end++;
        break;
    case 't':
    case 'T':
        mul = 1024.0 * 1024 * 1024 * 1024;
        end++;
        break;
    default:
        return -1;
    }
    if (mul > 1) {
        if (*end == 'i') end++;
        if (*end == 'B' || *end == 'b') end++;
    }
    if (*end) return -1;
    v *= mul;
    if (v >= 1.8e19) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* Split "a,b,c" in place into a NULL-terminated list (caller frees the array). */
static const char **split_list(char *s, size_t *n)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    const char **v = calloc(cap + 1, sizeof *v);
    if (!v) return NULL;
    *n = 0;
    for (char *tok = s, *next; tok; tok = next) {
        next = strchr(tok, ',');
        if (next) *next++ = '\0';
        if (*tok) v[(*n)++] = tok;
    }
    return v;
}

/* One name per line (blank lines and surrounding whitespace ignored). */
static int read_lines(const char *path, char **buf, const char ***names, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t cap = 4096, len = 0;
    char *b = malloc(cap);
    while (b) {
        if (len + 1 >= cap) {
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
        size_t got = fread(b + len, 1, cap - len - 1, f);
        if (got == 0) break;
        len += got;
    }
    int bad = ferror(f);
    fclose(f);
    if (!b || bad) {
        free(b);
        return -1;
    }
    b[len] = '\0';
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += b[i] == '\n';
    const char **v = calloc(lines + 1, sizeof *v);
    if (!v) {
        free(b);
        return -1;
    }
    *n = 0;
    for (char *tok = b, *next; tok; tok = next) {
        next = strchr(tok, '\n');
        if (next) *next++ = '\0';
        char *e = tok + strlen(tok);
        while (e > tok && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
            *--e = '\0';
        while (*tok == ' ' || *tok == '\t')
            tok++;
        if (*tok) v[(*n)++] = tok;
    }
    *buf = b;
    *names = v;
    return 0;
}

typedef struct progress_bar {
    int enabled;
    struct timespec start;
    double last;
} progress_bar;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void fmt_hms(char *buf, size_t cap, double s)
{
    if (s < 0 || s > 1e7) {
        snprintf(buf, cap, "--:--");
        return;
    }
    unsigned long t = (unsigned long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%lu:%02lu:%02lu", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, cap, "%02lu:%02lu", t / 60, t % 60);
}

static int on_progress(void *user, uint64_t done, uint64_t total)
{
    progress_bar *pb = user;
    if (g_interrupted) return 1;
    if (!pb->enabled) return 0;
    double t = now_s();
    if (done < total && t - pb->last < 0.2) return 0;
    pb->last = t;
    double el = t - ((double)pb->start.tv_sec + (double)pb->start.tv_nsec * 1e-9);
    double frac = total ? (double)done / (double)total : 1.0;
    char bar[31];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++)
        bar[i] = i < fill ? '#' : '-';
    bar[30] = '\0';
    double rate = el > 0 ? (double)done / el : 0;
    char eta[32];
    fmt_hms(eta, sizeof eta, rate > 0 ? (double)(total - done) / rate : -1);
    fprintf(stderr, "\r[%s] %3d%% %llu/%llu rows  %.0f rows/s  ETA %s ", bar, (int)(frac * 100),
            (unsigned long long)done, (unsigned long long)total, rate, eta);
    fflush(stderr);
    return 0;
}

static int cmd_convert(int argc, char **argv)
{
    ans_convert_options o = ANS_CONVERT_OPTIONS_INIT;
    const char *output = NULL;
    const char **inputs = calloc((size_t)argc + 1, sizeof *inputs);
    size_t n_inputs = 0;
    const char **obs = NULL, **layers = NULL, **obsm = NULL, **vars = NULL, **groupby = NULL;
    char *varbuf = NULL;
    int quiet = 0, rc = EXIT_USAGE;
    if (!inputs) {
        fprintf(stderr, "annstream: out of memory\n");
        return 1;
    }
#define NEED_VALUE()                                                                               \
    do {                                                                                           \
        if (i + 1 >= argc) {                                                                       \
            rc = usage_error("convert: %s needs a value", a);                                      \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        uint64_t v;
        int unit;
        if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            NEED_VALUE();
            output = argv[++i];
        } else if (strcmp(a, "--seed") == 0) {
            NEED_VALUE();
            char *end;
            errno = 0;
            unsigned long long sv = strtoull(argv[++i], &end, 10);
            if (errno || end == argv[i] || *end || argv[i][0] == '-') {
                rc = usage_error("convert: invalid seed '%s'", argv[i]);
                goto done;
            }
            o.seed = (uint64_t)sv;
        } else if (strcmp(a, "--dataset-size") == 0) {
            NEED_VALUE();
            if (parse_size(argv[++i], &v, &unit) != 0 || v == 0) {
                rc = usage_error("convert: invalid dataset size '%s'", argv[i]);
                goto done;
            }
            if (unit) {
                o.dataset_size_rows = 0;
                o.dataset_size_bytes = v;
            } else {
                o.dataset_size_rows = v;
            }
        } else if (strcmp(a, "--var") == 0) {
            NEED_VALUE();
            const char *p = argv[++i];
            if (strcmp(p, "union") == 0) {
                o.var = ANS_CONVERT_VAR_UNION;
            } else if (strcmp(p, "intersection") == 0) {
                o.var = ANS_CONVERT_VAR_INTERSECTION;
            } else {
                free(vars);
                free(varbuf);
                vars = NULL;
                varbuf = NULL;
                if (read_lines(p, &varbuf, &vars, &o.n_var_names) != 0) {
                    fprintf(stderr, "annstream: convert: cannot read the var list '%s': %s\n", p,
                            strerror(errno));
                    rc = 1;
                    goto done;
                }
                o.var = ANS_CONVERT_VAR_LIST;
                o.var_names = vars;
            }
        } else if (strcmp(a, "--obs") == 0 || strcmp(a, "--layers") == 0 ||
                   strcmp(a, "--obsm") == 0 || strcmp(a, "--groupby") == 0) {
            NEED_VALUE();
            size_t n = 0;
            const char **list = split_list(argv[++i], &n);
            if (!list) {
                fprintf(stderr, "annstream: out of memory\n");
                rc = 1;
                goto done;
            }
            if (a[2] == 'g') {
                free(groupby);
                groupby = list;
                o.groupby = groupby;
                o.n_groupby = n;
            } else if (a[2] == 'o' && a[5] == '\0') {
                free(obs);
                obs = list;
                o.obs_columns = obs;
                o.n_obs_columns = n;
            } else if (a[2] == 'l') {
                free(layers);
                layers = list;
                o.layers = layers;
                o.n_layers = n;
            } else {
                free(obsm);
                obsm = list;
                o.obsm = obsm;
                o.n_obsm = n;
            }
        } else if (strcmp(a, "--compressor") == 0) {
            NEED_VALUE();
            const char *c = argv[++i];
            if (strcmp(c, "lz4") == 0)
                o.compressor = ANS_CONVERT_LZ4;
            else if (strcmp(c, "zstd") == 0)
                o.compressor = ANS_CONVERT_ZSTD;
            else if (strcmp(c, "none") == 0)
                o.compressor = ANS_CONVERT_NONE;
            else {
                rc = usage_error("convert: unknown compressor '%s' (lz4, zstd, none)", c);
                goto done;
            }
        } else if (strcmp(a, "--memory") == 0 || strcmp(a, "--shard-size") == 0 ||
                   strcmp(a, "--n-obs-per-chunk") == 0) {
            NEED_VALUE();
            if (parse_size(argv[++i], &v, &unit) != 0 || v == 0) {
                rc = usage_error("convert: invalid value '%s' for %s", argv[i], a);
                goto done;
            }
            if (a[2] == 'm')
                o.memory = v;
            else if (a[2] == 's')
                o.shard_size = v;
            else
                o.n_obs_per_chunk = v;
        } else if (strcmp(a, "--threads") == 0) {
            NEED_VALUE();
            if (parse_int(argv[++i], &o.threads) != 0) {
                rc = usage_error("convert: invalid thread count '%s'", argv[i]);
                goto done;
            }
        } else if (strcmp(a, "--no-shuffle") == 0) {
            o.shuffle = 0;
        } else if (strcmp(a, "--append") == 0) {
            o.append = 1;
        } else if (strcmp(a, "--overwrite") == 0) {
            o.overwrite = 1;
        } else if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
            quiet = 1;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            char *hargv[] = {"help", "convert", NULL};
            rc = cmd_help(2, hargv);
            goto done;
        } else if (a[0] == '-' && a[1] != '\0') {
            rc = usage_error("convert: unknown option '%s'", a);
            goto done;
        } else {
            inputs[n_inputs++] = a;
        }
    }
#undef NEED_VALUE
    if (!output) {
        rc = usage_error("convert: missing -o OUTPUT");
        goto done;
    }
    if (!n_inputs && !o.append) {
        rc = usage_error("convert: no INPUT given");
        goto done;
    }
    progress_bar pb = {0};
    pb.enabled = !quiet && isatty(2);
    clock_gettime(CLOCK_MONOTONIC, &pb.start);
    o.progress = on_progress;
    o.progress_user = &pb;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    int st = ans_convert(inputs, n_inputs, output, &o);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (pb.enabled) fputs("\n", stderr);
    if (st != ANS_OK) {
        if (st == ANS_ECANCELLED && g_interrupted)
            fprintf(stderr, "annstream: convert: interrupted; %s was not written\n", output);
        else
            fail();
        rc = 1;
    } else {
        rc = 0;
    }
done:
    free(inputs);
    free(obs);
    free(groupby);
    free(layers);
    free(obsm);
    free(vars);
    free(varbuf);
    return rc;
}

/* ---- help ----------------------------------------------------------------------------------- */

static int cmd_help(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stdout);
        return finish_output();
    }
    const command *c = find_command(argv[1]);
    if (!c) return usage_error("help: unknown command '%s'", argv[1]);
    printf("usage: annstream %s %s\n\n%s\n", c->name, c->usage, c->summary);
    if (c->details) printf("\n%s", c->details);
    return finish_output();
}

/* ---- main ----------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0 ||
        strcmp(name, "version") == 0) {
        printf("annstream %s\n", ans_version());
        return finish_output();
    }
    if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0) name = "help";
    const command *c = find_command(name);
    if (!c) {
        fprintf(stderr, "annstream: unknown command '%s'\n\n", name);
        print_usage(stderr);
        return EXIT_USAGE;
    }
    return c->fn(argc - 1, argv + 1);
}
