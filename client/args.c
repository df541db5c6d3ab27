#include "client/args.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int add_table(args *a, const arg_opt *t, lr_err *err) {
    for (; t && t->name; t++) {
        if (a->nopt == ARGS_MAX_OPTS) return lr_errp(err, LR_E_INTERNAL, "", "too many options declared");
        a->opt[a->nopt++] = t;
    }
    return 0;
}

static int find_long(const args *a, const char *name, size_t len) {
    for (int i = 0; i < a->nopt; i++)
        if (strlen(a->opt[i]->name) == len && !strncmp(a->opt[i]->name, name, len)) return i;
    return -1;
}

static int find_short(const args *a, char c) {
    for (int i = 0; i < a->nopt; i++)
        if (a->opt[i]->short_name == c) return i;
    return -1;
}

static int store(args *a, int i, const char *val, lr_err *err) {
    const arg_opt *o = a->opt[i];
    if (o->kind == ARG_LIST) {
        if (a->count[i] == ARGS_MAX_LIST)
            return lr_errp(err, LR_E_INVALID, o->name, "--%s given more than %d times", o->name, ARGS_MAX_LIST);
        a->list[i][a->count[i]] = val;
    } else if (o->kind == ARG_VALUE) {
        a->value[i] = val;
    }
    a->count[i]++;
    return 0;
}

int args_parse(args *a, const arg_opt *global, const arg_opt *cmd, int argc, char **argv, lr_err *err) {
    memset(a, 0, sizeof *a);
    if (add_table(a, global, err) || add_table(a, cmd, err)) return -1;
    int only_pos = 0;
    for (int k = 0; k < argc; k++) {
        const char *s = argv[k];
        if (only_pos || s[0] != '-' || !s[1]) {
            if (a->npos == ARGS_MAX_POS) return lr_errp(err, LR_E_INVALID, "", "too many arguments");
            a->pos[a->npos++] = s;
            continue;
        }
        if (!strcmp(s, "--")) {
            only_pos = 1;
            continue;
        }
        int i;
        const char *inl = NULL;
        if (s[1] == '-') {
            const char *name = s + 2, *eq = strchr(name, '=');
            i = find_long(a, name, eq ? (size_t)(eq - name) : strlen(name));
            if (i < 0) {
                if (eq) return lr_errp(err, LR_E_INVALID, "", "unknown flag --%.*s", (int)(eq - name), name);
                return lr_errp(err, LR_E_INVALID, "", "unknown flag %s", s);
            }
            if (eq) inl = eq + 1;
        } else {
            i = s[2] ? -1 : find_short(a, s[1]);
            if (i < 0) return lr_errp(err, LR_E_INVALID, "", "unknown flag %s", s);
        }
        const arg_opt *o = a->opt[i];
        if (o->kind == ARG_FLAG) {
            if (inl) return lr_errp(err, LR_E_INVALID, o->name, "--%s takes no value", o->name);
            if (store(a, i, NULL, err)) return -1;
            continue;
        }
        if (!inl) {
            if (k + 1 >= argc)
                return lr_errp(err, LR_E_INVALID, o->name, "--%s needs a value (%s)", o->name,
                               o->metavar ? o->metavar : "VALUE");
            inl = argv[++k];
        }
        if (store(a, i, inl, err)) return -1;
    }
    return 0;
}

static int find(const args *a, const char *name) { return find_long(a, name, strlen(name)); }

int args_count(const args *a, const char *name) {
    int i = find(a, name);
    return i < 0 ? 0 : a->count[i];
}

const char *args_get(const args *a, const char *name, const char *def) {
    int i = find(a, name);
    return i >= 0 && a->value[i] ? a->value[i] : def;
}

int args_list(const args *a, const char *name, const char *const **out) {
    int i = find(a, name);
    if (i < 0) {
        *out = NULL;
        return 0;
    }
    *out = a->list[i];
    return a->count[i];
}

int args_int(const args *a, const char *name, long long def, long long lo, long long hi, long long *out,
             lr_err *err) {
    const char *v = args_get(a, name, NULL);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return lr_errp(err, LR_E_INVALID, name, "--%s must be an integer between %lld and %lld (got '%s')",
                       name, lo, hi, v);
    *out = x;
    return 0;
}

void args_print_opts(FILE *f, const arg_opt *opts) {
    for (const arg_opt *o = opts; o && o->name; o++) {
        char left[80];
        int n = o->short_name ? snprintf(left, sizeof left, "-%c, ", o->short_name)
                              : snprintf(left, sizeof left, "    ");
        snprintf(left + n, sizeof left - (size_t)n, "--%s%s%s", o->name, o->kind == ARG_FLAG ? "" : " ",
                 o->kind == ARG_FLAG ? "" : (o->metavar ? o->metavar : "VALUE"));
        fprintf(f, "  %-28s %s\n", left, o->help ? o->help : "");
    }
}
