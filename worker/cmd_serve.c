/* lora-worker serve: a long-lived generation process (lorad keeps one per
 * generation slot, daemon/runner.c).
 *
 * Requests arrive on stdin, one JSON object per line; answers leave on
 * stdout, one JSON object per line, each carrying the request's "id". JSON
 * lines rather than proto/frame.h frames: every field is text that jansson
 * already reads and writes, a line per streamed piece of text is what the
 * SSE handler forwards, and a request or its answer is readable in a log or
 * typed by hand when debugging; frames would add a binary length prefix
 * for no field that needs one. A line is capped (SERVE_MAX_LINE): a longer
 * one is skipped to its newline and answered with an error.
 *
 * Request: {"id", "model": DIR, "adapter": DIR?, "template"?, "prompt": TEXT
 * | "prompts_file": FILE.jsonl (its first row), "system"?, "raw"?,
 * "max_new_tokens"?, "temperature"?, "top_p"?, "top_k"?, "seed"?, "stop"?:
 * [..], "stream"?}, with cmd_generate's meanings and defaults.
 * Answers: with "stream", {"id", "delta": TEXT} as the text grows (never a
 * piece of a stop string or of a UTF-8 character), then always one final
 * {"id", "text", "tokens", "stop", "prompt_tokens", "loaded": 0|1 (this
 * request loaded its model), "evicted": N (models unloaded for it), "loads",
 * "cached", "cache_bytes"} or, on a failure, {"id", "error": {code, param,
 * message}} (msg_child_error; param "prompt" is the request's fault, "model"
 * or "adapter" the folder's, "request" a line that is no request). A bad
 * request never ends the process.
 *
 * Loaded models (a base model, a base + adapter, or a tuned model folder)
 * stay in an LRU cache bounded by --max-bytes: a model's size is its
 * *.safetensors bytes on disk (twice that for 16-bit weights on the CPU,
 * which holds them in f32) plus its adapter's; before a load the least
 * recently used models are unloaded until the new one fits. A model larger
 * than the whole budget is still answered with, then unloaded at once. */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "formats/chat.h"
#include "formats/hfconfig.h"
#include "formats/tok.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "proto/msg.h"
#include "worker/commands.h"
#include "worker/generate.h"
#include "worker/model.h"
#include "worker/prompts.h"

#define SERVE_MAX_LINE (8u << 20) /* a request: prompts are at most a few MB */
#define SERVE_MAX_MODELS 64       /* cache entries, whatever the budget */
#define SERVE_READ_CHUNK 65536

typedef struct entry {
    char model_dir[PATH_MAX], adapter_dir[PATH_MAX]; /* adapter_dir "" = the model alone */
    kb_backend *be; /* one per model: a GPU backend stores one weight dtype */
    model *m;
    tok *t;         /* NULL when the folder has no tokenizer */
    lr_err tok_err; /* why not */
    size_t bytes;
    uint64_t used;  /* LRU clock */
} entry;

typedef struct server {
    char backend[32];
    int threads;
    size_t max_bytes, bytes;
    entry *e[SERVE_MAX_MODELS];
    int n;
    uint64_t clock;
    unsigned long long loads;
} server;

static void usage(FILE *f) {
    fprintf(f,
            "usage: lora-worker serve [--backend auto|cpu|cuda[:N]] [--max-bytes N] [--threads N]\n"
            "  Answers generation requests, one JSON object per stdin line, with JSON lines on stdout\n"
            "  (lorad starts this; see the top of worker/cmd_serve.c for the fields). Loaded models stay\n"
            "  in memory, least recently used unloaded first past --max-bytes (default 4G; K, M, G).\n"
            "  --backend auto: cuda:0 when this build has CUDA and a usable device, else cpu. On a GPU\n"
            "  the budget is at most 80%% of the device memory free at start.\n");
}

/* ---- answers ---- */

/* One line on stdout; a failed write means lorad is gone: exit. */
static void say(json_t *o) {
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(o);
    if (!s || printf("%s\n", s) < 0 || fflush(stdout)) {
        free(s);
        exit(2);
    }
    free(s);
}

static void say_error(const json_t *id, const lr_err *err) {
    json_t *o = msg_child_error(err);
    if (o) json_object_set_new(o, "id", id ? json_deep_copy(id) : json_null());
    say(o);
}

/* ---- the cache ---- */

static int has_suffix(const char *s, const char *suffix) {
    size_t l = strlen(s), sl = strlen(suffix);
    return l > sl && !strcmp(s + l - sl, suffix);
}

static size_t files_bytes(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    struct stat sb;
    size_t n = 0;
    while (d && (de = readdir(d)))
        if (has_suffix(de->d_name, ".safetensors") && !fstatat(dirfd(d), de->d_name, &sb, 0) && S_ISREG(sb.st_mode))
            n += (size_t)sb.st_size;
    if (d) closedir(d);
    return n;
}

/* What a model will take once loaded, known before loading it. */
static size_t model_bytes(const server *sv, const char *model_dir, const char *adapter_dir) {
    size_t n = files_bytes(model_dir);
    char p[PATH_MAX];
    hf_config c;
    lr_err e = {0};
    if (!strcmp(sv->backend, "cpu") && !lr_pathf(p, sizeof p, "%s/config.json", model_dir) &&
        !hf_config_load(p, &c, &e) && (!strcmp(c.torch_dtype, "bfloat16") || !strcmp(c.torch_dtype, "float16")))
        n *= 2;
    return n + (adapter_dir[0] ? files_bytes(adapter_dir) : 0);
}

static void entry_free(entry *x) {
    if (!x) return;
    model_free(x->m);
    tok_free(x->t);
    if (x->be) kb_destroy(x->be);
    free(x);
}

static void cache_drop(server *sv, int i) {
    sv->bytes -= sv->e[i]->bytes;
    entry_free(sv->e[i]);
    sv->e[i] = sv->e[--sv->n];
}

static int lru(const server *sv) {
    int best = 0;
    for (int i = 1; i < sv->n; i++)
        if (sv->e[i]->used < sv->e[best]->used) best = i;
    return best;
}

/* The loaded model for (model_dir, adapter_dir), loading it when needed
 * (*loaded 1) after unloading what must go to make room (*evicted). */
static int cache_get(server *sv, const char *model_dir, const char *adapter_dir, entry **out, int *loaded,
                     int *evicted, lr_err *err) {
    *out = NULL;
    *loaded = *evicted = 0;
    for (int i = 0; i < sv->n; i++)
        if (!strcmp(sv->e[i]->model_dir, model_dir) && !strcmp(sv->e[i]->adapter_dir, adapter_dir)) {
            sv->e[i]->used = ++sv->clock;
            *out = sv->e[i];
            return 0;
        }
    size_t need = model_bytes(sv, model_dir, adapter_dir);
    while (sv->n && (sv->n == SERVE_MAX_MODELS || sv->bytes + need > sv->max_bytes)) {
        cache_drop(sv, lru(sv));
        (*evicted)++;
    }
    entry *x = calloc(1, sizeof *x);
    if (!x) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    if (lr_pathf(x->model_dir, sizeof x->model_dir, "%s", model_dir) ||
        lr_pathf(x->adapter_dir, sizeof x->adapter_dir, "%s", adapter_dir)) {
        free(x);
        return lr_errp(err, LR_E_INVALID, "model", "model or adapter path too long");
    }
    int rc = -1;
    if (!strcmp(sv->backend, "cpu") ? kb_cpu_create(sv->threads, &x->be, err)
                                    : kb_create(sv->backend, sv->threads, &x->be, err))
        goto fail;
    if (model_load(model_dir, x->be, &x->m, err)) {
        snprintf(err->param, sizeof err->param, "model");
        goto fail;
    }
    if (adapter_dir[0] && model_lora_load(x->m, adapter_dir, err)) {
        snprintf(err->param, sizeof err->param, "adapter");
        goto fail;
    }
    /* A folder without tokenizer files still answers a raw-id request
     * nobody sends; remember why, for the text requests. */
    if (tok_load(model_dir, &x->t, &x->tok_err)) {
        x->t = NULL;
        lr_err_prefix(&x->tok_err, "model tokenizer: ");
        snprintf(x->tok_err.param, sizeof x->tok_err.param, "model");
    }
    x->bytes = need;
    x->used = ++sv->clock;
    sv->e[sv->n++] = x;
    sv->bytes += need;
    sv->loads++;
    *loaded = 1;
    *out = x;
    rc = 0;
fail:
    if (rc) entry_free(x);
    return rc;
}

/* A model over the whole budget on its own: answered with, not kept. */
static void drop_oversized(server *sv, const entry *x) {
    if (!x || x->bytes <= sv->max_bytes) return;
    for (int i = 0; i < sv->n; i++)
        if (sv->e[i] == x) {
            cache_drop(sv, i);
            return;
        }
}

/* ---- streaming ---- */

typedef struct streamer {
    const json_t *id;
    const tok *t;
    const gen_opts *o;
    lr_buf sent; /* the text sent so far */
    int off;     /* out of memory for it: the final answer carries the rest */
} streamer;

static long find_stop(const gen_opts *o, const char *text, size_t len) {
    long best = -1;
    for (int i = 0; i < o->n_stop; i++) {
        const char *p = memmem(text, len, o->stop[i], strlen(o->stop[i]));
        if (p && (best < 0 || p - text < best)) best = p - text;
    }
    return best;
}

/* How much of text is final: not a trailing partial UTF-8 character nor
 * U+FFFD (a byte-fallback character whose bytes have not all come yet
 * decodes as one, and turns into the character with the next token), not a
 * tail that a later token could complete into a stop string. */
static size_t settled(const gen_opts *o, const char *text, size_t len) {
    size_t n = len;
    for (size_t back = 1; back <= 3 && back <= len; back++) {
        unsigned char c = (unsigned char)text[len - back];
        if ((c & 0xC0) == 0x80) continue;
        size_t want = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        if (want > back) n = len - back;
        break;
    }
    while (n >= 3 && !memcmp(text + n - 3, "\xEF\xBF\xBD", 3)) n -= 3;
    size_t keep = n;
    for (int i = 0; i < o->n_stop; i++) {
        size_t sl = strlen(o->stop[i]);
        for (size_t k = sl - 1 < n ? sl - 1 : n; k > 0; k--)
            if (!memcmp(text + n - k, o->stop[i], k)) {
                if (n - k < keep) keep = n - k;
                break;
            }
    }
    return keep;
}

static int on_token(void *ud, const int32_t *ids, int n) {
    streamer *s = ud;
    char *text = NULL;
    size_t len = 0;
    lr_err e = {0};
    if (tok_decode(s->t, ids, (size_t)n, &text, &len, &e)) return 0; /* the final answer says it */
    long at = find_stop(s->o, text, len);
    if (at >= 0) len = (size_t)at;
    size_t ok = settled(s->o, text, len);
    /* Decoding more ids may rewrite what came before (rare); then wait:
     * the final text carries the rest. */
    if (!s->off && ok > s->sent.len && !memcmp(text, s->sent.data ? s->sent.data : "", s->sent.len)) {
        json_t *o = json_pack("{s:O, s:o}", "id", s->id, "delta",
                              json_stringn_nocheck(text + s->sent.len, ok - s->sent.len));
        if (lr_buf_add(&s->sent, text + s->sent.len, ok - s->sent.len)) s->off = 1;
        say(o);
    }
    free(text);
    return 0;
}

/* ---- one request ---- */

static int get_num(const json_t *rq, const char *k, double lo, double hi, double *v, lr_err *err) {
    json_t *x = json_object_get(rq, k);
    if (!x || json_is_null(x)) return 0;
    if (!json_is_number(x) || !(json_number_value(x) >= lo && json_number_value(x) <= hi))
        return lr_errp(err, LR_E_INVALID, k, "%s must be a number from %g to %g", k, lo, hi);
    *v = json_number_value(x);
    return 0;
}

static int get_str(const json_t *rq, const char *k, const char **v, lr_err *err) {
    json_t *x = json_object_get(rq, k);
    if (!x || json_is_null(x)) return 0;
    if (!json_is_string(x)) return lr_errp(err, LR_E_INVALID, k, "%s must be a string", k);
    *v = json_string_value(x);
    return 0;
}

/* The request's fields into o and the strings; the param names the field. */
static int parse_request(const json_t *rq, gen_opts *o, const char **model_dir, const char **adapter,
                         const char **tpl, const char **prompt, const char **prompts_file, const char **system,
                         lr_err *err) {
    double mnt = 256, temp = 0, topp = 1, topk = 0, seed = 0;
    if (get_str(rq, "model", model_dir, err) || get_str(rq, "adapter", adapter, err) ||
        get_str(rq, "template", tpl, err) || get_str(rq, "prompt", prompt, err) ||
        get_str(rq, "prompts_file", prompts_file, err) || get_str(rq, "system", system, err) ||
        get_num(rq, "max_new_tokens", 1, GEN_MAX_NEW_TOKENS, &mnt, err) ||
        get_num(rq, "temperature", 0, 100, &temp, err) || get_num(rq, "top_p", 1e-9, 1, &topp, err) ||
        get_num(rq, "top_k", 0, 1e9, &topk, err) || get_num(rq, "seed", 0, 9e15, &seed, err))
        return -1;
    if (!*model_dir || !**model_dir) return lr_errp(err, LR_E_INVALID, "model", "a request needs \"model\": a folder");
    if (!*prompt == !*prompts_file)
        return lr_errp(err, LR_E_INVALID, "prompt", "a request needs one of \"prompt\" and \"prompts_file\"");
    o->max_new_tokens = (int)mnt;
    o->temperature = (float)temp;
    o->top_p = (float)topp;
    o->top_k = (int)topk;
    o->seed = (uint64_t)seed;
    json_t *stop = json_object_get(rq, "stop"), *s;
    size_t i;
    if (stop && !json_is_null(stop) && !json_is_array(stop))
        return lr_errp(err, LR_E_INVALID, "stop", "stop must be a list of strings");
    json_array_foreach(stop, i, s) {
        if (!json_is_string(s)) return lr_errp(err, LR_E_INVALID, "stop", "stop must be a list of strings");
        if (gen_add_stop(o, json_string_value(s), err)) return -1;
    }
    return 0;
}

/* A prompt that cannot be rendered or does not fit is the request's fault. */
static void prompt_fault(lr_err *err) {
    if (err->code == 0 || err->code == LR_E_INVALID || err->code == LR_E_TOOBIG) {
        err->code = LR_E_INVALID;
        snprintf(err->param, sizeof err->param, "prompt");
    }
}

static int run_request(server *sv, const json_t *rq, const json_t *id, lr_err *err) {
    gen_opts o;
    gen_opts_init(&o);
    const char *model_dir = NULL, *adapter = NULL, *tpl = "auto", *prompt = NULL, *prompts_file = NULL,
               *system = NULL;
    int loaded = 0, evicted = 0, rc = -1, raw = json_is_true(json_object_get(rq, "raw"));
    entry *x = NULL;
    prompt_set ps = {0};
    chat_out co = {0};
    model_kv *kv = NULL;
    gen_result g = {0};
    streamer st = {.id = id, .o = &o};
    lr_buf_init(&st.sent, SIZE_MAX);
    if (parse_request(rq, &o, &model_dir, &adapter, &tpl, &prompt, &prompts_file, &system, err)) goto done;
    int kind = -1;
    for (int k = TPL_AUTO; k <= TPL_PLAIN; k++)
        if (!strcmp(tpl, jobspec_template_name((chat_tpl)k))) kind = k;
    if (kind < 0) {
        lr_errp(err, LR_E_INVALID, "template", "unknown template '%s' (auto, chatml, llama3, mistral, alpaca, plain)",
                tpl);
        goto done;
    }
    if (cache_get(sv, model_dir, adapter ? adapter : "", &x, &loaded, &evicted, err)) goto done;
    if (!x->t) {
        *err = x->tok_err;
        goto done;
    }
    chat ch;
    if (!raw && chat_init(&ch, x->t, (chat_tpl)kind, model_dir, err)) goto done;
    if (prompts_file && prompts_load(prompts_file, &ps, err)) {
        prompt_fault(err);
        goto done;
    }
    if (prompts_file && ps.n != 1) {
        lr_errp(err, LR_E_INVALID, "prompt", "%s holds %zu rows; a request answers one", prompts_file, ps.n);
        goto done;
    }
    chat_msg one = {.role = CHAT_USER, .text = prompt, .len = prompt ? strlen(prompt) : 0};
    const chat_msg *msgs = prompts_file ? ps.rows[0].msgs : &one;
    int nm = prompts_file ? ps.rows[0].n_msgs : 1;
    if (raw) {
        size_t n = 0;
        if (nm != 1 || msgs[0].role != CHAT_USER) {
            lr_errp(err, LR_E_INVALID, "prompt", "raw takes one user message");
            goto done;
        }
        if (tok_encode(x->t, msgs[0].text, msgs[0].len, 1, &co.ids, &n, err)) {
            prompt_fault(err);
            goto done;
        }
        co.n = n;
    } else if (chat_render(&ch, msgs, nm, system, 1, 0, &co, err)) {
        prompt_fault(err);
        goto done;
    }
    gen_add_model_stops(&o, model_config(x->m), x->t, raw ? NULL : &ch);
    const hf_config *c = model_config(x->m);
    int np = (int)co.n, cap = np + o.max_new_tokens;
    if (c->arch == ARCH_GPT2 && cap > c->max_pos) cap = c->max_pos;
    if (np >= cap) {
        lr_errp(err, LR_E_INVALID, "prompt", "the prompt has %d tokens; the model takes at most %d", np, cap);
        goto done;
    }
    if (json_is_true(json_object_get(rq, "stream"))) {
        st.t = x->t;
        o.on_token = on_token;
        o.token_ud = &st;
    }
    if (model_kv_new(x->m, cap, &kv, err) || gen_run(kv, x->t, co.ids, np, &o, &g, err)) goto done;
    /* The last token's text (one that ended in a stop string included)
     * goes out here: the pieces add up to the text. */
    if (o.on_token && !st.off && g.text && g.len > st.sent.len && !memcmp(g.text, st.sent.data ? st.sent.data : "",
                                                                          st.sent.len))
        say(json_pack("{s:O, s:o}", "id", id, "delta", json_stringn_nocheck(g.text + st.sent.len, g.len - st.sent.len)));
    model_kv_free(kv);
    kv = NULL;
    drop_oversized(sv, x);
    say(json_pack("{s:O, s:o, s:i, s:s, s:i, s:i, s:i, s:I, s:i, s:I}", "id", id, "text",
                  g.text ? json_stringn_nocheck(g.text, g.len) : json_string(""), "tokens", g.n, "stop",
                  gen_stop_name(g.stop), "prompt_tokens", g.n_prompt, "loaded", loaded, "evicted", evicted, "loads",
                  (json_int_t)sv->loads, "cached", sv->n, "cache_bytes", (json_int_t)sv->bytes));
    rc = 0;
done:
    gen_result_free(&g);
    model_kv_free(kv);
    chat_out_free(&co);
    prompts_free(&ps);
    lr_buf_free(&st.sent);
    if (rc) drop_oversized(sv, x);
    return rc;
}

static void handle_line(server *sv, const char *line, size_t len) {
    json_error_t je;
    lr_err err = {0};
    json_t *rq = json_loadb(line, len, 0, &je), *id = json_object_get(rq, "id");
    if (!json_is_object(rq)) {
        lr_errp(&err, LR_E_INVALID, "request", "not a JSON object: %s", je.text);
        say_error(NULL, &err);
    } else if (run_request(sv, rq, id, &err)) {
        say_error(id, &err);
    }
    json_decref(rq);
}

/* ---- main ---- */

static int parse_size(const char *s, size_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    int shift = *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : 0;
    if (shift) end++;
    if (errno || end == s || *end || *s == '-' || v > (SIZE_MAX >> shift)) return -1;
    *out = (size_t)v << shift;
    return 0;
}

static int parse_threads(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > 1024) return -1;
    *out = (int)v;
    return 0;
}

/* auto: cuda:0 when there is a usable one. On a GPU the models live in
 * device memory, so the budget is also held to 80% of what the device has
 * free now (lorad's gen_cache_bytes is sized from host memory). */
static void pick_backend(server *sv, const char *want) {
    kb_cuda_device d[8];
    lr_err e = {0};
    int n = strcmp(want, "cpu") ? kb_cuda_devices(d, 8, &e) : 0, dev = 0;
    if (strcmp(want, "auto")) snprintf(sv->backend, sizeof sv->backend, "%s", want);
    else snprintf(sv->backend, sizeof sv->backend, "%s", n > 0 && d[0].usable ? "cuda:0" : "cpu");
    if (!strncmp(sv->backend, "cuda:", 5)) dev = atoi(sv->backend + 5);
    if (strcmp(sv->backend, "cpu") && dev >= 0 && dev < n && dev < 8 && d[dev].free_bytes / 10 * 8 < sv->max_bytes)
        sv->max_bytes = d[dev].free_bytes / 10 * 8;
}

int cmd_serve(int argc, char **argv) {
    server sv = {.max_bytes = (size_t)4 << 30};
    const char *backend = "auto";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "serve: %s needs a value (see --help)\n", a);
            return 1;
        }
        int bad = 1;
        if (!strcmp(a, "--backend")) bad = strcmp(v, "auto") && strcmp(v, "cpu") && strncmp(v, "cuda", 4), backend = v;
        else if (!strcmp(a, "--max-bytes")) bad = parse_size(v, &sv.max_bytes);
        else if (!strcmp(a, "--threads")) bad = parse_threads(v, &sv.threads);
        if (bad) {
            fprintf(stderr, "serve: bad option or value: %s %s (see --help)\n", a, v);
            return 1;
        }
        i++;
    }
    pick_backend(&sv, backend);
    say(json_pack("{s:{s:s, s:I}}", "serve", "backend", sv.backend, "max_bytes", (json_int_t)sv.max_bytes));
    char *buf = malloc(SERVE_MAX_LINE);
    if (!buf) {
        fprintf(stderr, "lora-worker serve: out of memory\n");
        return 2;
    }
    size_t have = 0;
    int skipping = 0; /* inside a line over the cap: dropped up to its newline */
    for (;;) {
        if (have == SERVE_MAX_LINE) {
            have = 0;
            if (!skipping) {
                lr_err e = {0};
                lr_errp(&e, LR_E_TOOBIG, "request", "a request line is over %u bytes", SERVE_MAX_LINE);
                say_error(NULL, &e);
            }
            skipping = 1;
        }
        size_t want = SERVE_MAX_LINE - have < SERVE_READ_CHUNK ? SERVE_MAX_LINE - have : SERVE_READ_CHUNK;
        ssize_t got = read(0, buf + have, want);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break; /* lorad closed the pipe (or is gone): done */
        size_t end = have + (size_t)got, start = 0;
        for (size_t i = have; i < end; i++) {
            if (buf[i] != '\n') continue;
            if (!skipping && i > start) handle_line(&sv, buf + start, i - start);
            skipping = 0;
            start = i + 1;
        }
        memmove(buf, buf + start, end - start);
        have = end - start;
    }
    free(buf);
    while (sv.n) cache_drop(&sv, 0);
    return 0;
}
