/* cli: what every `lora` command shares: the command's context (its parsed
 * arguments, the resolved server and token, the HTTP client, whether stdout
 * is a terminal) and the helpers for errors, JSON answers and table cells.
 * A command is `int lora_cmd_<name>(cli_ctx *c)` returning the exit status
 * (see client/main.c); on an error it prints c->err with cli_fail,
 * cli_usage_fail or cli_srv_fail and returns what that returns. */
#ifndef LR_CLIENT_CLI_H
#define LR_CLIENT_CLI_H

#include <jansson.h>
#include <stddef.h>
#include "client/args.h"
#include "client/cfg.h"
#include "client/http.h"
#include "client/table.h"
#include "common/err.h"

#define CLI_EXIT_USAGE 1

typedef struct cli_ctx {
    args a;
    const char *cmd;        /* "datasets upload": for messages */
    cfg conf;
    char cfg_path[1024];
    http_client h;
    int json, tty, err_tty, color, utf8;
    lr_err err;
} cli_ctx;

/* "lora: <c->err>" on stderr; returns code. */
int cli_fail(cli_ctx *c, int code);
/* The same with a pointer to the command's --help; returns CLI_EXIT_USAGE. */
int cli_usage_fail(cli_ctx *c);
/* The server said no or could not be reached: its words, one line.
 * Returns http_exit_code (2 or 3). */
int cli_srv_fail(cli_ctx *c);

/* j indented, on stdout. */
void cli_print_json(const json_t *j);
/* o[k] as a string (def when absent, not a string, or empty). */
const char *cli_jstr(const json_t *o, const char *k, const char *def);
/* o[k] as a number (NAN when absent or not a number). */
double cli_jnum(const json_t *o, const char *k);
/* Unix time in seconds. */
double cli_now_s(void);
/* The server's time as its last answer's Date said (mid-second), else the
 * client's: elapsed times measured against the server's started_at or
 * last_seen then do not carry the difference between the two clocks. */
double cli_server_now(const cli_ctx *c);
/* Local "YYYY-MM-DD HH:MM:SS" of unix time t ("-" when not a positive number). */
void cli_fmt_time(double t, char *out, size_t cap);
/* The SGR colour of a job or worker status, NULL for none. */
const char *cli_status_sgr(const char *st);
/* table_set without a colour. */
int cli_table_cell(table *t, int col, const char *text);
/* Path segment from user input, percent-encoded; returns buf. */
const char *cli_seg(const char *s, char *buf, size_t cap);

/* GETs a list route, following has_more/after until `limit` items (0 = all). */
int cli_fetch_list(cli_ctx *c, const char *path, long long limit, json_t **out) LR_WARN_UNUSED;
/* key: value lines for an object, nested objects flattened with dots. */
void cli_print_fields(const json_t *o, const char *prefix);

/* Reads a job file and applies --set overrides and --name; validates the
 * result with the same code as the server. On error: exit status 1. */
int cli_load_spec(cli_ctx *c, const char *file, json_t **out) LR_WARN_UNUSED;

#endif
