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
#include <string.h>

#define EXIT_USAGE 2

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv); /* argv[0] is the command name */
    const char *usage;                /* arguments, after the command name */
    const char *summary;
    const char *details;              /* option lines for `annstream help NAME` */
} command;

static int cmd_info(int argc, char **argv);
static int cmd_help(int argc, char **argv);

static const command k_commands[] = {
    {"info", cmd_info, "PATH [--json] [--threads N]",
     "describe an AnnData store: shape, keys, elements, chunking, codecs and sizes",
     "  PATH           a zarr (v2 or v3) directory or an .h5ad file\n"
     "  --json         print the description as JSON\n"
     "  --threads N    decoding threads (0 = one per CPU; default 1)\n"},
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
