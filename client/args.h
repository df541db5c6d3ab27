/* args: the option parser of every lora command.
 *
 * A command declares its options in a table; the global ones (--url, --json,
 * ...) are a second table accepted by every command, before or after the
 * command name. Accepted forms: --name value, --name=value, -x value, -f,
 * and "--" ending the options. An option that is not in either table is a
 * usage error naming it. Values point into argv (nothing is copied). */
#ifndef LR_CLIENT_ARGS_H
#define LR_CLIENT_ARGS_H

#include <stdio.h>
#include "common/err.h"

#define ARGS_MAX_OPTS 48
#define ARGS_MAX_POS 64
#define ARGS_MAX_LIST 64

typedef enum { ARG_FLAG, ARG_VALUE, ARG_LIST } arg_kind;

typedef struct arg_opt {
    const char *name;    /* long name without dashes; NULL ends a table */
    char short_name;     /* 0 when none */
    arg_kind kind;       /* ARG_LIST may repeat; ARG_VALUE keeps the last */
    const char *metavar; /* "S" in "--status S" */
    const char *help;
} arg_opt;

typedef struct args {
    const arg_opt *opt[ARGS_MAX_OPTS]; /* every option known, both tables */
    int nopt;
    int count[ARGS_MAX_OPTS];          /* times given */
    const char *value[ARGS_MAX_OPTS];  /* ARG_VALUE: last value */
    const char *list[ARGS_MAX_OPTS][ARGS_MAX_LIST];
    const char *pos[ARGS_MAX_POS];
    int npos;
} args;

/* Parses argv[0..argc) (no program or command name in it) against the two
 * tables (either may be NULL). */
int args_parse(args *a, const arg_opt *global, const arg_opt *cmd, int argc, char **argv,
               lr_err *err) LR_WARN_UNUSED;
/* Times the option was given (0 when absent or unknown). */
int args_count(const args *a, const char *name);
/* Value of an ARG_VALUE option, or def. */
const char *args_get(const args *a, const char *name, const char *def);
/* The values of an ARG_LIST option, in order; their count returned. */
int args_list(const args *a, const char *name, const char *const **out);
/* An integer option in [lo, hi]; def when absent. */
int args_int(const args *a, const char *name, long long def, long long lo, long long hi,
             long long *out, lr_err *err) LR_WARN_UNUSED;
/* Prints "  -x, --name METAVAR   help" lines for a table. */
void args_print_opts(FILE *f, const arg_opt *opts);

#endif
