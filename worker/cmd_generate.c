/* lora-worker generate: text from a model (and optionally an adapter) with a
 * KV cache on the chosen backend (the CPU by default; generation runs the
 * training forward's layer code, worker/model_decode.c).
 *
 * Prompts go through the model's chat template as a user message with the
 * assistant header appended (add_generation_prompt), unless --raw (the text
 * tokenized as is, special tokens parsed) or --prompt-ids (ids, no
 * tokenizer needed). --logits-out writes the logits of every prompt
 * position (the prefill) as an F32 safetensors tensor "logits" [P, V], for
 * checking against an independent implementation. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "proto/msg.h"
#include "formats/chat.h"
#include "worker/commands.h"
#include "worker/generate.h"
#include "worker/model.h"
#include "worker/prompts.h"
#include "formats/safetensors.h"
#include "formats/tok.h"

#define GENCMD_MAX_IDS 65536

static void usage(FILE *f) {
    fprintf(f,
            "usage: lora-worker generate --model DIR [--adapter DIR] [--template auto]\n"
            "         --prompt TEXT | --prompts FILE.jsonl | --prompt-ids 1,2,3\n"
            "         [--max-new-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S]\n"
            "         [--stop STR]... [--system TEXT] [--raw] [--json] [--logits-out FILE] [--threads N]\n"
            "         [--backend cpu|cuda|cuda:N]\n"
            "  Generates a reply per prompt with a KV cache on the backend (default cpu). Prompts are rendered as a user\n"
            "  message by the chat template (auto|chatml|llama3|mistral|alpaca|plain) with the assistant\n"
            "  header appended; --raw tokenizes the text as is. --prompts takes JSONL rows (a string,\n"
            "  messages, prompt, instruction/input, input or question) or a dataset CSV.\n"
            "  Defaults: 256 new tokens, greedy (temperature 0), top-p 1, top-k 0 (off), seed 0.\n"
            "  Generation stops at EOS / end of turn, a stop string (cut from the text) or the limit.\n"
            "  --json prints one object per prompt: id, prompt_tokens, ids, text, stop; on a failure the\n"
            "  last line is {\"error\": {code, param, message}}, param naming the input refused (prompt, model,\n"
            "  adapter).\n");
}

/* A prompt that cannot be rendered or does not fit is the prompt's fault,
 * and the class says so to lorad; running out of memory or an I/O error is
 * not the prompt's. */
static void prompt_fault(lr_err *err, const char *id) {
    if (err->code == 0 || err->code == LR_E_INVALID || err->code == LR_E_TOOBIG) {
        err->code = LR_E_INVALID;
        snprintf(err->param, sizeof err->param, "prompt");
    }
    if (id) lr_err_prefix(err, "%s: ", id);
}

/* A failure while loading names the option whose folder it was. */
static void input_fault(lr_err *err, const char *option) { snprintf(err->param, sizeof err->param, "%s", option); }

static int parse_num(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

static int parse_ids(const char *s, int32_t **out, int *n, lr_err *err) {
    int32_t *v = malloc(GENCMD_MAX_IDS * sizeof *v);
    int k = 0;
    if (!v) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    while (*s) {
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (errno || end == s || x < 0 || x > INT32_MAX || k == GENCMD_MAX_IDS || (*end && *end != ',')) {
            free(v);
            return lr_errp(err, LR_E_INVALID, "prompt-ids", "--prompt-ids must be comma-separated token ids");
        }
        v[k++] = (int32_t)x;
        s = *end ? end + 1 : end;
    }
    *out = v, *n = k;
    return k ? 0 : (free(v), lr_errp(err, LR_E_INVALID, "prompt-ids", "--prompt-ids is empty"));
}

static int write_logits(model_kv *kv, const int32_t *ids, int n, const char *path, lr_err *err) {
    int V = model_config(model_kv_model(kv))->vocab_size;
    float *l = malloc((size_t)n * V * sizeof(float));
    st_writer *w = st_writer_new();
    int rc = -1;
    if (!l || !w) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory for %d x %d logits", n, V);
        goto done;
    }
    model_kv_reset(kv);
    int64_t shape[2] = {n, V};
    if (model_kv_append(kv, ids, n, l, 1, err) || st_writer_add(w, "logits", ST_F32, 2, shape, l, err) ||
        st_writer_meta(w, "format", "pt", err) || st_writer_write(w, path, err))
        goto done;
    rc = 0;
done:
    st_writer_free(w);
    free(l);
    return rc;
}

static void print_result(const char *id, const gen_result *g, int as_json, int many) {
    if (as_json) {
        json_t *a = json_array();
        for (int i = 0; i < g->n; i++) json_array_append_new(a, json_integer(g->ids[i]));
        json_t *o = json_pack("{s:s,s:i,s:o,s:s}", "id", id, "prompt_tokens", g->n_prompt, "ids", a, "stop",
                              gen_stop_name(g->stop));
        json_object_set_new(o, "text", g->text ? json_stringn_nocheck(g->text, g->len) : json_null());
        char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        if (s) printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        if (many) printf("=== %s\n", id);
        if (g->text) fwrite(g->text, 1, g->len, stdout);
        else
            for (int i = 0; i < g->n; i++) printf("%s%d", i ? " " : "", g->ids[i]);
        printf("\n");
    }
    fflush(stdout);
}

int cmd_generate(int argc, char **argv) {
    const char *model_dir = NULL, *adapter = NULL, *tpl = "auto", *prompt = NULL, *prompts_path = NULL;
    const char *ids_arg = NULL, *system = NULL, *logits_out = NULL, *backend = "cpu";
    int raw = 0, as_json = 0, threads = 0;
    gen_opts o;
    lr_err err = {0};
    gen_opts_init(&o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x;
        int takes = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--raw")) raw = 1, takes = 0;
        else if (!strcmp(a, "--json")) as_json = 1, takes = 0;
        else if (!v) {
            fprintf(stderr, "generate: %s needs a value (see --help)\n", a);
            return 1;
        } else if (!strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "--adapter")) adapter = v;
        else if (!strcmp(a, "--template")) tpl = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--prompts")) prompts_path = v;
        else if (!strcmp(a, "--prompt-ids")) ids_arg = v;
        else if (!strcmp(a, "--system")) system = v;
        else if (!strcmp(a, "--logits-out")) logits_out = v;
        else if (!strcmp(a, "--backend")) backend = v;
        else if (!strcmp(a, "--stop")) {
            if (gen_add_stop(&o, v, &err)) {
                fprintf(stderr, "generate: --stop: %s\n", err.msg);
                return 1;
            }
        } else if (!strcmp(a, "--max-new-tokens") && !parse_num(v, 1, GEN_MAX_NEW_TOKENS, &x)) o.max_new_tokens = (int)x;
        else if (!strcmp(a, "--temperature") && !parse_num(v, 0, 100, &x)) o.temperature = (float)x;
        else if (!strcmp(a, "--top-p") && !parse_num(v, 1e-9, 1, &x)) o.top_p = (float)x;
        else if (!strcmp(a, "--top-k") && !parse_num(v, 0, 1e9, &x)) o.top_k = (int)x;
        else if (!strcmp(a, "--seed") && !parse_num(v, 0, 9e15, &x)) o.seed = (uint64_t)x;
        else if (!strcmp(a, "--threads") && !parse_num(v, 0, 1024, &x)) threads = (int)x;
        else {
            fprintf(stderr, "generate: bad option or value: %s %s (see --help)\n", a, v);
            return 1;
        }
        i += takes;
    }
    if (!model_dir || (!!prompt + !!prompts_path + !!ids_arg) != 1) {
        usage(stderr);
        return 1;
    }
    int kind = -1;
    for (int k = TPL_AUTO; k <= TPL_PLAIN; k++)
        if (!strcmp(tpl, jobspec_template_name((chat_tpl)k))) kind = k;
    if (kind < 0) {
        fprintf(stderr, "generate: unknown template '%s' (auto, chatml, llama3, mistral, alpaca, plain)\n", tpl);
        return 1;
    }

    kb_backend *be = NULL;
    model *m = NULL;
    tok *t = NULL;
    chat ch;
    int have_chat = 0, rc = 2;
    model_kv *kv = NULL;
    prompt_set ps = {0};
    int32_t *ids = NULL;
    int n_ids = 0;
    if (kb_create(backend, threads, &be, &err)) goto done;
    if (model_load(model_dir, be, &m, &err)) {
        input_fault(&err, "model");
        goto done;
    }
    if (adapter && model_lora_load(m, adapter, &err)) {
        input_fault(&err, "adapter");
        goto done;
    }
    if (!ids_arg || o.n_stop) { /* --prompt-ids works on a model without tokenizer files */
        if (tok_load(model_dir, &t, &err)) {
            lr_err_prefix(&err, "model tokenizer: ");
            input_fault(&err, "model");
            goto done;
        }
        if (!raw && !ids_arg) {
            if (chat_init(&ch, t, (chat_tpl)kind, model_dir, &err)) goto done;
            have_chat = 1;
        }
    }
    gen_add_model_stops(&o, model_config(m), t, have_chat ? &ch : NULL);
    if ((prompts_path && prompts_load(prompts_path, &ps, &err)) || (ids_arg && parse_ids(ids_arg, &ids, &n_ids, &err))) {
        prompt_fault(&err, NULL);
        goto done;
    }

    size_t n_prompts = prompts_path ? ps.n : 1;
    for (size_t p = 0; p < n_prompts; p++) {
        const char *id = prompts_path ? ps.rows[p].id : "prompt";
        int32_t *pid = ids;
        int np = n_ids;
        chat_out co = {0};
        if (!ids_arg) {
            chat_msg one = {.role = CHAT_USER, .text = prompt, .len = prompt ? strlen(prompt) : 0};
            const chat_msg *msgs = prompts_path ? ps.rows[p].msgs : &one;
            int nm = prompts_path ? ps.rows[p].n_msgs : 1;
            if (raw) {
                size_t n = 0;
                if (nm != 1 || msgs[0].role != CHAT_USER) {
                    lr_errp(&err, LR_E_INVALID, "prompt", "%s: --raw takes one user message per prompt", id);
                    goto done;
                }
                if (tok_encode(t, msgs[0].text, msgs[0].len, 1, &co.ids, &n, &err)) {
                    prompt_fault(&err, id);
                    goto done;
                }
                co.n = n;
            } else if (chat_render(&ch, msgs, nm, system, 1, 0, &co, &err)) {
                prompt_fault(&err, id);
                goto done;
            }
            pid = co.ids, np = (int)co.n;
        }
        const hf_config *c = model_config(m);
        int cap = np + o.max_new_tokens;
        if (c->arch == ARCH_GPT2 && cap > c->max_pos) cap = c->max_pos;
        if (np >= cap) {
            lr_errp(&err, LR_E_INVALID, "prompt", "%s: the prompt has %d tokens; the model takes at most %d", id,
                    np, cap);
            chat_out_free(&co);
            goto done;
        }
        model_kv_free(kv);
        kv = NULL;
        gen_result g;
        int bad = model_kv_new(m, cap, &kv, &err) || (logits_out && write_logits(kv, pid, np, logits_out, &err)) ||
                  gen_run(kv, t, pid, np, &o, &g, &err);
        chat_out_free(&co);
        if (bad) {
            lr_err_prefix(&err, "%s: ", id);
            goto done;
        }
        print_result(id, &g, as_json, n_prompts > 1);
        gen_result_free(&g);
        logits_out = NULL; /* the first prompt's only */
    }
    rc = 0;
done:
    if (rc) fprintf(stderr, "lora-worker generate: %s\n", err.msg);
    json_t *eo = rc && as_json ? msg_child_error(&err) : NULL;
    char *line = eo ? json_dumps(eo, JSON_COMPACT) : NULL;
    if (line) printf("%s\n", line);
    free(line);
    json_decref(eo);
    free(ids);
    prompts_free(&ps);
    model_kv_free(kv);
    model_free(m);
    tok_free(t);
    if (be) kb_destroy(be);
    return rc;
}
