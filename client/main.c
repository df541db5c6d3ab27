/* lora: the command-line client of lorad.
 *
 * Exit statuses (documented in README.md's "The `lora` command line" and `lora --help`):
 *   0 ok, 1 usage or local error (unknown flag, missing file, bad --set),
 *   2 the server said no (4xx/5xx: its message is printed as it worded it),
 *   3 cannot connect, 4 the watched job failed (or, for merge --wait, the merge), 5 it was cancelled,
 *   130 interrupted.
 * Output: tables and plain lines for people, --json for programs (the
 * server's objects; lists as a JSON array). Colours and in-place redraws only
 * when stdout is a terminal. Ids go to stdout, commentary to stderr, so
 * `id=$(lora submit job.yaml)` works. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/args.h"
#include "client/cfg.h"
#include "client/cli.h"
#include "client/cmd_data.h"
#include "client/cmd_jobs.h"
#include "client/cmd_result.h"
#include "client/cmd_sweep.h"
#include "client/fmt.h"
#include "client/http.h"

#define LORA_VERSION "0.1.0"

typedef struct command {
    const char *name;       /* one or two words */
    int (*fn)(cli_ctx *c);
    int min_pos, max_pos;   /* positional arguments */
    const char *usage;      /* after "lora <name> " */
    const char *summary;
    const arg_opt *opts;
} command;

static const arg_opt global_opts[] = {
    {"url", 0, ARG_VALUE, "URL", "server URL (or LORA_URL, or `lora login`)"},
    {"token", 0, ARG_VALUE, "TOKEN", "API token (or LORA_TOKEN, or `lora login`)"},
    {"json", 0, ARG_FLAG, NULL, "machine-readable JSON on stdout"},
    {"no-color", 0, ARG_FLAG, NULL, "no colours even on a terminal (also NO_COLOR)"},
    {"help", 'h', ARG_FLAG, NULL, "this help"},
    {NULL, 0, 0, NULL, NULL},
};

/* ---- the command table ---- */

static const arg_opt upload_opts[] = {{"name", 0, ARG_VALUE, "N", "the dataset's name (default: the file name)"}, {0}};
static const arg_opt preview_opts[] = {
    {"model", 0, ARG_VALUE, "M", "render with this model's chat template"},
    {"chat-template", 0, ARG_VALUE, "T", "render with this template instead, as a job's chat_template would "
                                         "(auto, chatml, llama3, mistral, alpaca, plain)"},
    {"limit", 'n', ARG_VALUE, "N", "rows to show (default 3)"},
    {0}};
static const arg_opt submit_opts[] = {
    {"set", 's', ARG_LIST, "KEY=VALUE", "override a field (repeatable): --set lora.r=32 --set learning_rate=1e-4"},
    {"name", 0, ARG_VALUE, "N", "the job's name"},
    {"watch", 'w', ARG_FLAG, NULL, "follow the job like `lora watch` and exit with its outcome"},
    {"interval", 0, ARG_VALUE, "SECONDS", "refresh period with --watch (default 1)"},
    {0}};
static const arg_opt ls_opts[] = {
    {"status", 0, ARG_VALUE, "S", "queued, running, succeeded, failed or cancelled"},
    {"user", 0, ARG_VALUE, "U", "only this user's jobs"},
    {"sweep", 0, ARG_VALUE, "ID", "only this sweep's jobs"},
    {"limit", 'n', ARG_VALUE, "N", "at most N jobs, newest first (default 50)"},
    {0}};
static const arg_opt watch_cmd_opts[] = {{"interval", 0, ARG_VALUE, "SECONDS", "refresh period (default 1)"}, {0}};
static const arg_opt logs_opts[] = {
    {"follow", 'f', ARG_FLAG, NULL, "keep printing new events until the job ends"},
    {"interval", 0, ARG_VALUE, "SECONDS", "poll period with -f (default 1)"},
    {0}};
static const arg_opt metrics_opts[] = {
    {"csv", 0, ARG_FLAG, NULL, "CSV: step,loss,eval_loss,... (empty where a series has no point)"},
    {"names", 0, ARG_VALUE, "A,B", "only these series (e.g. loss,eval_loss)"},
    {0}};
static const arg_opt sweep_opts[] = {
    {"grid", 'g', ARG_LIST, "KEY=V1,V2", "values of one field (repeatable; the points are the product)"},
    {"range", 'r', ARG_LIST, "KEY=LO:HI[:log][:int]", "an interval to draw from (with --random)"},
    {"random", 0, ARG_VALUE, "N", "draw N random points instead of the full grid"},
    {"seed", 0, ARG_VALUE, "S", "seed of --random (default: the clock)"},
    {"set", 's', ARG_LIST, "KEY=VALUE", "override a field of the template (repeatable)"},
    {"name", 0, ARG_VALUE, "N", "the template's name"},
    {0}};
static const arg_opt download_opts[] = {{"out", 'o', ARG_VALUE, "DIR", "directory to write into (default ./ID)"}, {0}};
static const arg_opt generate_opts[] = {
    {"max-new-tokens", 'n', ARG_VALUE, "N", "new tokens at most, 1..1024 (default 128)"},
    {"temperature", 't', ARG_VALUE, "T", "0..5; 0 (default) is greedy: the same text every time"},
    {"top-p", 0, ARG_VALUE, "P", "nucleus sampling, (0, 1] (default 1)"},
    {"top-k", 0, ARG_VALUE, "K", "sample from the K likeliest tokens (default 0: off)"},
    {"seed", 0, ARG_VALUE, "S", "sampling seed (default 0)"},
    {"stop", 0, ARG_LIST, "STR", "stop at this string, cut from the text (repeatable, at most 8)"},
    {"system", 0, ARG_VALUE, "TEXT", "system message (default the job's system_prompt)"},
    {0}};
static const arg_opt merge_opts[] = {
    {"name", 0, ARG_VALUE, "NAME", "the new model's name (default <job name or id>-merged)"},
    {"wait", 'w', ARG_FLAG, NULL, "wait until the model is registered; exit 4 if the merge fails"},
    {0}};

static int cmd_help(cli_ctx *c);

static const command commands[] = {
    {"login", lora_cmd_login, 2, 2, "URL TOKEN", "check a token with the server and save both in the config file", NULL},
    {"datasets upload", lora_cmd_ds_upload, 1, 1, "FILE [--name N]", "upload a JSONL/CSV dataset (validated by the server)", upload_opts},
    {"datasets ls", lora_cmd_ds_ls, 0, 0, "", "list datasets", NULL},
    {"datasets show", lora_cmd_ds_show, 1, 1, "ID", "a dataset's details and statistics", NULL},
    {"datasets preview", lora_cmd_ds_preview, 1, 1, "ID [--model M [--chat-template T]] [-n N]", "rows as the model will see them", preview_opts},
    {"datasets rm", lora_cmd_ds_rm, 1, ARGS_MAX_POS, "ID...", "delete datasets", NULL},
    {"models ls", lora_cmd_models, 0, 0, "", "list the models you can use (base models, merged ones)", NULL},
    {"models rm", lora_cmd_models_rm, 1, ARGS_MAX_POS, "NAME...", "unregister models (their owner or an admin)", NULL},
    {"submit", lora_cmd_submit, 1, 1, "JOB.yaml|JOB.json [--set K=V ...] [--watch]", "submit a job; prints its id", submit_opts},
    {"ls", lora_cmd_ls, 0, 0, "[--status S] [--user U] [--sweep ID]", "list jobs", ls_opts},
    {"show", lora_cmd_show, 1, 1, "ID", "a job's details and full spec", NULL},
    {"logs", lora_cmd_logs, 1, 1, "ID [-f]", "a job's events", logs_opts},
    {"cancel", lora_cmd_cancel, 1, ARGS_MAX_POS, "ID...", "cancel jobs (yours, or any as an admin)", NULL},
    {"watch", lora_cmd_watch, 1, 1, "ID", "follow a job live; exit 0 if it succeeds, 4 failed, 5 cancelled", watch_cmd_opts},
    {"metrics", lora_cmd_metrics, 1, 1, "ID [--csv]", "a job's metric series", metrics_opts},
    {"sweep", lora_cmd_sweep, 1, 1, "JOB.yaml --grid K=V1,V2 ... | --random N --range K=LO:HI[:log]", "submit a sweep; prints its id", sweep_opts},
    {"sweep show", lora_cmd_sweep_show, 1, 1, "ID", "a sweep's jobs ranked by eval loss", NULL},
    {"download", lora_cmd_download, 1, 1, "ID [--out DIR]", "the adapter (adapter_model.safetensors, adapter_config.json; full_sft: the model folder) and logs",
     download_opts},
    {"generate", lora_cmd_generate, 2, 2, "ID PROMPT [-n N] [-t T] [--stop STR]...",
     "answer PROMPT (or - for stdin) with the base model and with the job's adapter (full_sft: its model), side by side",
     generate_opts},
    {"merge", lora_cmd_merge, 1, 1, "ID [--name NAME] [--wait]",
     "merge the job's adapter into its base model (full_sft: take its model as is), registered as a new model (owner "
     "or admin)", merge_opts},
    {"workers", lora_cmd_workers, 0, 0, "", "the training workers and what they run", NULL},
    {"help", cmd_help, 0, 2, "[COMMAND]", "help on a command", NULL},
    {NULL, NULL, 0, 0, NULL, NULL, NULL},
};

/* Aliases people type from habit. */
static const char *const aliases[][2] = {
    {"datasets list", "datasets ls"}, {"models", "models ls"}, {"models list", "models ls"}, {"list", "ls"},
    {"jobs", "ls"}, {"datasets delete", "datasets rm"}, {"log", "logs"}, {"dataset upload", "datasets upload"},
};

static void usage_all(FILE *f) {
    fprintf(f, "lora: the command-line client of lorad (LoRA fine-tuning service)\n\nusage: lora COMMAND [options]\n\ncommands:\n");
    for (const command *k = commands; k->name; k++) {
        char left[128];
        snprintf(left, sizeof left, "%s %s", k->name, k->usage);
        if (strlen(left) > 40) snprintf(left, sizeof left, "%s ...", k->name);
        fprintf(f, "  %-40s %s\n", left, k->summary);
    }
    fprintf(f, "\noptions of every command:\n");
    args_print_opts(f, global_opts);
    fprintf(f, "\nserver: --url/--token, else LORA_URL/LORA_TOKEN, else `lora login` (%s)\n"
               "exit status: 0 ok, 1 usage or local error, 2 the server said no, 3 cannot connect,\n"
               "             4 job failed (watch, submit --watch) or merge failed (merge --wait),\n"
               "             5 job cancelled (watch, submit --watch), 130 interrupted\n",
            "~/.config/lora/config");
}

static void usage_cmd(FILE *f, const command *k) {
    fprintf(f, "usage: lora %s %s\n\n%s\n", k->name, k->usage, k->summary);
    if (k->opts) {
        fprintf(f, "\noptions:\n");
        args_print_opts(f, k->opts);
    }
    fprintf(f, "\noptions of every command:\n");
    args_print_opts(f, global_opts);
}

static const command *find_cmd(const char *name) {
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (!strcmp(aliases[i][0], name)) name = aliases[i][1];
    for (const command *k = commands; k->name; k++)
        if (!strcmp(k->name, name)) return k;
    return NULL;
}

static int cmd_help(cli_ctx *c) {
    char name[128] = "";
    for (int i = 0; i < c->a.npos; i++) {
        size_t l = strlen(name);
        snprintf(name + l, sizeof name - l, "%s%s", i ? " " : "", c->a.pos[i]);
    }
    if (!name[0]) {
        usage_all(stdout);
        return 0;
    }
    const command *k = find_cmd(name);
    if (!k) {
        lr_errf(&c->err, "no command '%s' (see 'lora --help')", name);
        return cli_fail(c, CLI_EXIT_USAGE);
    }
    usage_cmd(stdout, k);
    return 0;
}

/* Finds the command words in argv, skipping global options and their values;
 * removes them from argv. */
static const command *pick_cmd(int *argc, char **argv, char *name, size_t cap) {
    int words[2], nw = 0;
    for (int i = 1; i < *argc && nw < 2; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--")) break;
        if (s[0] == '-') {
            if ((!strcmp(s, "--url") || !strcmp(s, "--token")) && i + 1 < *argc) i++;
            continue;
        }
        if (nw == 1) {
            /* a second word only counts when it makes a known command */
            char two[128];
            snprintf(two, sizeof two, "%s %s", argv[words[0]], s);
            if (!find_cmd(two)) break;
        }
        words[nw++] = i;
        if (nw == 1 && strcmp(s, "datasets") && strcmp(s, "dataset") && strcmp(s, "models") && strcmp(s, "sweep")) break;
    }
    if (!nw) return NULL;
    if (nw == 2)
        snprintf(name, cap, "%s %s", argv[words[0]], argv[words[1]]);
    else
        snprintf(name, cap, "%s", argv[words[0]]);
    const command *k = find_cmd(name);
    if (!k) return NULL;
    for (int w = nw - 1; w >= 0; w--) {
        memmove(&argv[words[w]], &argv[words[w] + 1], (size_t)(*argc - words[w] - 1) * sizeof *argv);
        (*argc)--;
    }
    return k;
}

int main(int argc, char **argv) {
    static cli_ctx c; /* large (args tables): not on the stack */
    char name[128] = "";
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("lora %s\n", LORA_VERSION);
        return 0;
    }
    const command *k = pick_cmd(&argc, argv, name, sizeof name);
    if (!k) {
        /* no command: --help, nothing, or an unknown word */
        for (int i = 1; i < argc; i++)
            if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
                usage_all(stdout);
                return 0;
            }
        if (argc < 2 || name[0] == 0) {
            for (int i = 1; i < argc; i++)
                if (argv[i][0] != '-') {
                    fprintf(stderr, "lora: unknown command '%s' (see 'lora --help')\n", argv[i]);
                    return CLI_EXIT_USAGE;
                }
            usage_all(stderr);
            return CLI_EXIT_USAGE;
        }
        fprintf(stderr, "lora: unknown command '%s' (see 'lora --help')\n", name);
        return CLI_EXIT_USAGE;
    }
    c.cmd = k->name;
    if (args_parse(&c.a, global_opts, k->opts, argc - 1, argv + 1, &c.err)) return cli_usage_fail(&c);
    if (args_count(&c.a, "help")) {
        usage_cmd(stdout, k);
        return 0;
    }
    if (c.a.npos < k->min_pos || c.a.npos > k->max_pos) {
        if (c.a.npos < k->min_pos)
            lr_errf(&c.err, "missing argument: lora %s %s", k->name, k->usage);
        else
            lr_errf(&c.err, "unexpected argument '%s'", c.a.pos[k->max_pos]);
        return cli_usage_fail(&c);
    }
    c.json = args_count(&c.a, "json") > 0;
    c.tty = isatty(STDOUT_FILENO) && !c.json;
    c.err_tty = isatty(STDERR_FILENO);
    c.utf8 = fmt_locale_utf8(getenv("LC_ALL"), getenv("LC_CTYPE"), getenv("LANG"));
    const char *nc = getenv("NO_COLOR");
    c.color = c.tty && !args_count(&c.a, "no-color") && !(nc && *nc) && strcmp(getenv("TERM") ? getenv("TERM") : "", "dumb");

    cfg file = {0};
    if (cfg_path(getenv("LORA_CONFIG"), getenv("XDG_CONFIG_HOME"), getenv("HOME"), c.cfg_path, sizeof c.cfg_path,
                 &c.err))
        return cli_fail(&c, 1);
    if (k->fn != lora_cmd_login && k->fn != cmd_help && cfg_load(c.cfg_path, &file, &c.err)) return cli_fail(&c, 1);
    cfg_resolve(&c.conf, args_get(&c.a, "url", NULL), args_get(&c.a, "token", NULL), getenv("LORA_URL"),
                getenv("LORA_TOKEN"), &file, c.cfg_path);

    if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
        lr_errf(&c.err, "cannot initialise libcurl");
        return cli_fail(&c, 1);
    }
    int code;
    if (http_init(&c.h, c.conf.url, c.conf.token, &c.err)) {
        code = cli_fail(&c, 1);
    } else {
        code = k->fn(&c);
        http_free(&c.h);
    }
    curl_global_cleanup();
    fflush(stdout);
    return code;
}
