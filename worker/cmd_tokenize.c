/* lora-worker tokenize: text to token ids with a model's own tokenizer, for
 * checking the tokenizer against Hugging Face and for scripts. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "worker/commands.h"
#include "formats/tok.h"

#define TOKENIZE_MAX_INPUT ((size_t)1 << 30)

static void usage(FILE *f) {
    fprintf(f,
            "usage: lora-worker tokenize --tokenizer PATH [--json] [--add-special] [--split-special] < TEXT\n"
            "  Prints the token ids of each line of stdin (the line without its '\\n'), space-separated,\n"
            "  one output line per input line.\n"
            "  --tokenizer PATH  a tokenizer.json, or a model folder holding tokenizer.json or\n"
            "                    vocab.json + merges.txt (with tokenizer_config.json)\n"
            "  --json            stdin is a JSON array of strings; prints a JSON array of id arrays\n"
            "  --add-special     prepend BOS where the model's template does (Llama, Mistral);\n"
            "                    by default no BOS/EOS is added\n"
            "  --split-special   special tokens written in the text (\"<|im_end|>\") are tokenized as\n"
            "                    plain text; by default they become their ids, as in Hugging Face\n"
            "Invalid UTF-8 in the text is read as U+FFFD. Exit status: 0 ok, 1 usage, 2 bad input\n"
            "(tokenizer or text).\n");
}

static int read_stdin(char **out, size_t *len) {
    lr_buf b;
    lr_buf_init(&b, TOKENIZE_MAX_INPUT);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
        if (lr_buf_add(&b, chunk, n)) {
            lr_buf_free(&b);
            return -1;
        }
    if (ferror(stdin) || lr_buf_add(&b, "", 0)) {
        lr_buf_free(&b);
        return -1;
    }
    *out = lr_buf_take(&b, len);
    return 0;
}

/* Ids of one text, with BOS first when asked for and the model adds one. */
static int encode_one(const tok *t, const char *s, size_t n, int add_special, int split_special, int32_t **ids,
                      size_t *nids, lr_err *err) {
    if (tok_encode(t, s, n, !split_special, ids, nids, err)) return -1;
    if (add_special && tok_adds_bos(t) && tok_bos_id(t) >= 0) {
        int32_t *v = realloc(*ids, (*nids + 1) * sizeof *v);
        if (!v) {
            free(*ids);
            *ids = NULL;
            return lr_errf(err, "out of memory");
        }
        memmove(v + 1, v, *nids * sizeof *v);
        v[0] = tok_bos_id(t);
        *ids = v;
        (*nids)++;
    }
    return 0;
}

static int run_lines(const tok *t, const char *in, size_t len, int add_special, int split_special, lr_err *err) {
    for (size_t pos = 0, line = 1; pos < len; line++) {
        const char *nl = memchr(in + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (in + pos)) : len - pos;
        int32_t *ids;
        size_t k;
        if (encode_one(t, in + pos, n, add_special, split_special, &ids, &k, err))
            return lr_err_prefix(err, "line %zu: ", line);
        for (size_t i = 0; i < k; i++) printf(i ? " %d" : "%d", (int)ids[i]);
        putchar('\n');
        free(ids);
        pos += n + 1;
    }
    return 0;
}

static int run_json(const tok *t, const char *in, size_t len, int add_special, int split_special, lr_err *err) {
    json_error_t je;
    json_t *arr = json_loadb(in, len, 0, &je);
    if (!arr) return lr_errf(err, "stdin: invalid JSON at line %d: %s", je.line, je.text);
    int rc = -1;
    if (!json_is_array(arr)) {
        lr_errf(err, "stdin: expected a JSON array of strings");
        goto out;
    }
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e) {
        if (!json_is_string(e)) {
            lr_errf(err, "stdin: element %zu is not a string", i);
            goto out;
        }
    }
    putchar('[');
    json_array_foreach(arr, i, e) {
        int32_t *ids;
        size_t k;
        if (encode_one(t, json_string_value(e), json_string_length(e), add_special, split_special, &ids, &k, err)) {
            lr_err_prefix(err, "element %zu: ", i);
            goto out;
        }
        printf(i ? ",[" : "[");
        for (size_t j = 0; j < k; j++) printf(j ? ",%d" : "%d", (int)ids[j]);
        putchar(']');
        free(ids);
    }
    printf("]\n");
    rc = 0;
out:
    json_decref(arr);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    const char *path = NULL;
    int json = 0, add_special = 0, split_special = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--tokenizer") && i + 1 < argc) {
            path = argv[++i];
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--add-special")) {
            add_special = 1;
        } else if (!strcmp(a, "--split-special")) {
            split_special = 1;
        } else {
            fprintf(stderr, "lora-worker tokenize: unknown or incomplete option '%s' (see --help)\n", a);
            return 1;
        }
    }
    if (!path) {
        fprintf(stderr, "lora-worker tokenize: --tokenizer PATH is required (see --help)\n");
        return 1;
    }
    lr_err err;
    lr_err_clear(&err);
    tok *t = NULL;
    if (tok_load(path, &t, &err)) {
        fprintf(stderr, "lora-worker tokenize: %s\n", err.msg);
        return 2;
    }
    char *in = NULL;
    size_t len = 0;
    int rc = 2;
    if (read_stdin(&in, &len)) {
        fprintf(stderr, "lora-worker tokenize: cannot read stdin (or it is over 1 GB)\n");
        goto out;
    }
    if ((json ? run_json : run_lines)(t, in, len, add_special, split_special, &err)) {
        fflush(stdout);
        fprintf(stderr, "lora-worker tokenize: %s\n", err.msg);
        goto out;
    }
    rc = fflush(stdout) ? 2 : 0;
out:
    free(in);
    tok_free(t);
    return rc;
}
