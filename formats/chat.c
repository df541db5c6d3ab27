#include "formats/chat.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/buf.h"

#define CHAT_MAX_CONFIG (16u << 20)
#define CHAT_MAX_TEXT ((size_t)1 << 30)

static const char ALPACA_PRE[] =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n";
static const char ALPACA_PRE_INPUT[] =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n";
static const char LLAMA3_DATES[] =
    "\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";

int chat_role_parse(const char *s) {
    if (!strcmp(s, "system")) return CHAT_SYSTEM;
    if (!strcmp(s, "user")) return CHAT_USER;
    if (!strcmp(s, "assistant")) return CHAT_ASSISTANT;
    return -1;
}

const char *chat_role_name(chat_role r) {
    switch (r) {
    case CHAT_SYSTEM: return "system";
    case CHAT_USER: return "user";
    case CHAT_ASSISTANT: return "assistant";
    case CHAT_INPUT: return "input";
    }
    return "?";
}

/* ---- template resolution ---------------------------------------------- */

/* The folder holding the tokenizer's side files. */
static void model_dir(const char *path, char *dir, size_t cap) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(dir, cap, "%s", path);
        return;
    }
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, cap, ".");
    else snprintf(dir, cap, "%.*s", (int)(slash - path), path);
}

/* A JSON file beside the tokenizer, or NULL when absent or unreadable: these
 * files only refine the choice, so their absence is not an error. */
static json_t *load_side_json(const char *dir, const char *name) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) return NULL;
    char *text = NULL;
    size_t len = 0;
    lr_err e = {0};
    if (lr_read_file(path, CHAT_MAX_CONFIG, &text, &len, &e)) return NULL;
    json_t *j = json_loadb(text, len, JSON_DECODE_INT_AS_REAL, NULL); /* model_max_length can pass 2^63 */
    free(text);
    return j;
}

/* tokenizer_config.json's chat_template: a string, or a list of named
 * templates of which "default" is the chat one. */
static const char *template_text(json_t *cfg) {
    json_t *t = json_object_get(cfg, "chat_template");
    if (json_is_string(t)) return json_string_value(t);
    size_t i;
    json_t *v;
    json_array_foreach(t, i, v) {
        const char *name = json_string_value(json_object_get(v, "name"));
        json_t *tpl = json_object_get(v, "template");
        if (name && !strcmp(name, "default") && json_is_string(tpl)) return json_string_value(tpl);
    }
    return NULL;
}

/* The literal default system message of a ChatML jinja template: the first
 * '<|im_start|>system\n...<|im_end|>' whose middle is plain text (no quote,
 * brace, backslash or '+', i.e. not built from variables). */
static void chatml_default_system(const char *tpl, char *out, size_t cap) {
    static const char head[] = "<|im_start|>system\\n";
    out[0] = 0;
    for (const char *p = strstr(tpl, head); p; p = strstr(p + 1, head)) {
        const char *s = p + sizeof head - 1, *e = strstr(s, "<|im_end|>");
        if (!e || e == s || (size_t)(e - s) >= cap) continue;
        if (strcspn(s, "'\"{}\\+") < (size_t)(e - s)) continue;
        snprintf(out, cap, "%.*s", (int)(e - s), s);
        return;
    }
}

static int need_piece(const tok *t, const char *piece, const char *tpl, int32_t *id, lr_err *err) {
    *id = tok_piece_id(t, piece);
    if (*id < 0)
        return lr_errp(err, LR_E_INVALID, "chat_template",
                       "chat template %s needs the token %s, which this tokenizer does not have "
                       "(pick the template that matches the model)", tpl, piece);
    return 0;
}

int chat_init(chat *c, const tok *t, chat_tpl kind, const char *model_path, lr_err *err) {
    json_t *cfg = NULL, *mcfg = NULL;
    int rc = -1;
    memset(c, 0, sizeof *c);
    c->t = t;
    c->bos = c->eos = c->im_start = c->im_end = c->start_header = c->end_header = c->eot = -1;
    if (model_path && *model_path) {
        char dir[4096];
        model_dir(model_path, dir, sizeof dir);
        cfg = load_side_json(dir, "tokenizer_config.json");
        mcfg = load_side_json(dir, "config.json");
    }
    const char *tpl = cfg ? template_text(cfg) : NULL;
    const char *mtype = mcfg ? json_string_value(json_object_get(mcfg, "model_type")) : NULL;
    if (kind == TPL_AUTO) {
        if (tpl && strstr(tpl, "<|im_start|>")) kind = TPL_CHATML;
        else if (tpl && strstr(tpl, "<|start_header_id|>")) kind = TPL_LLAMA3;
        else if (tpl && strstr(tpl, "[INST]")) kind = TPL_MISTRAL;
        else if (tok_piece_id(t, "<|im_start|>") >= 0 && tok_piece_id(t, "<|im_end|>") >= 0) kind = TPL_CHATML;
        else if (tok_piece_id(t, "<|start_header_id|>") >= 0 && tok_piece_id(t, "<|eot_id|>") >= 0)
            kind = TPL_LLAMA3;
        else if (mtype && !strcmp(mtype, "mistral")) kind = TPL_MISTRAL;
        else kind = TPL_PLAIN;
    }
    c->kind = kind;
    switch (kind) {
    case TPL_CHATML:
        if (need_piece(t, "<|im_start|>", "chatml", &c->im_start, err) ||
            need_piece(t, "<|im_end|>", "chatml", &c->im_end, err))
            goto done;
        if (tpl && strstr(tpl, "<|im_start|>"))
            chatml_default_system(tpl, c->default_system, sizeof c->default_system);
        break;
    case TPL_LLAMA3:
        if (need_piece(t, "<|begin_of_text|>", "llama3", &c->bos, err) ||
            need_piece(t, "<|start_header_id|>", "llama3", &c->start_header, err) ||
            need_piece(t, "<|end_header_id|>", "llama3", &c->end_header, err) ||
            need_piece(t, "<|eot_id|>", "llama3", &c->eot, err))
            goto done;
        c->llama3_dated = tpl && strstr(tpl, "Cutting Knowledge Date") != NULL;
        break;
    case TPL_MISTRAL:
        c->bos = tok_bos_id(t);
        c->eos = tok_eos_id(t);
        if (c->bos < 0 && need_piece(t, "<s>", "mistral", &c->bos, err)) goto done;
        if (c->eos < 0 && need_piece(t, "</s>", "mistral", &c->eos, err)) goto done;
        break;
    case TPL_ALPACA:
    case TPL_PLAIN:
        c->eos = tok_eos_id(t);
        if (c->eos < 0) {
            lr_errp(err, LR_E_INVALID, "chat_template",
                    "the tokenizer has no EOS token, which the %s template ends each answer with",
                    jobspec_template_name(kind));
            goto done;
        }
        c->bos = tok_bos_id(t);
        c->add_bos = c->bos >= 0 && tok_adds_bos(t);
        break;
    case TPL_AUTO:
        lr_errf(err, "chat template: auto was not resolved");
        goto done;
    }
    rc = 0;
done:
    json_decref(cfg);
    json_decref(mcfg);
    return rc;
}

/* ---- rendering to pieces ------------------------------------------------ */

/* A piece is literal text or one special token, trained or not. Text pieces
 * point into the messages or into static strings. */
typedef struct piece {
    int32_t id; /* -1: text */
    const char *s;
    size_t len;
    int train;
} piece;

typedef struct pieces {
    piece *p;
    size_t n, cap;
    int oom;
} pieces;

static void put(pieces *ps, int32_t id, const char *s, size_t len, int train) {
    if (ps->oom || (id < 0 && len == 0)) return;
    if (ps->n == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 32;
        piece *p = realloc(ps->p, cap * sizeof *p);
        if (!p) {
            ps->oom = 1;
            return;
        }
        ps->p = p;
        ps->cap = cap;
    }
    ps->p[ps->n++] = (piece){id, s, len, train};
}

static void text(pieces *ps, const char *s, int train) { put(ps, -1, s, strlen(s), train); }
static void textn(pieces *ps, const char *s, size_t len, int train) { put(ps, -1, s, len, train); }
static void special(pieces *ps, int32_t id, int train) { put(ps, id, NULL, 0, train); }

/* Python's str.isspace() for one code point (what jinja's |trim strips). */
static int is_space_cp(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Decodes one UTF-8 sequence at s (n > 0 bytes left); returns its length, or
 * 0 when it is not valid UTF-8 (never whitespace then). */
static size_t utf8_at(const unsigned char *s, size_t n, uint32_t *cp) {
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t k = (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3 : (s[0] & 0xf8) == 0xf0 ? 4 : 0;
    if (!k || k > n) return 0;
    uint32_t c = s[0] & (0x7f >> k);
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        c = c << 6 | (s[i] & 0x3f);
    }
    *cp = c;
    return k;
}

static void trim_front(const char **s, size_t *len) {
    uint32_t cp;
    size_t k;
    while (*len && (k = utf8_at((const unsigned char *)*s, *len, &cp)) && is_space_cp(cp)) {
        *s += k;
        *len -= k;
    }
}

static void trim_back(const char *s, size_t *len) {
    while (*len) {
        size_t start = *len - 1;
        while (start > 0 && *len - start < 4 && ((unsigned char)s[start] & 0xc0) == 0x80) start--;
        uint32_t cp;
        size_t k = utf8_at((const unsigned char *)s + start, *len - start, &cp);
        if (k != *len - start || !is_space_cp(cp)) return;
        *len = start;
    }
}

/* A message as the templates see it: a user message carries the Alpaca
 * input that followed it. */
typedef struct turn {
    chat_role role;
    const char *s, *in;
    size_t len, in_len;
    int train;
} turn;

/* Writes a message's content: text, or text + "\n\n" + input; trimmed as a
 * whole (llama3) when asked. */
static void content(pieces *ps, const turn *m, int merge_input, int trim, int train) {
    const char *part[3] = {m->s, "\n\n", m->in};
    size_t len[3] = {m->len, 2, m->in_len};
    int np = merge_input && m->in && m->in_len ? 3 : 1, a = 0, b = np - 1;
    if (trim) {
        while (a <= b) {
            trim_front(&part[a], &len[a]);
            if (len[a]) break;
            a++;
        }
        while (b >= a) {
            trim_back(part[b], &len[b]);
            if (len[b]) break;
            b--;
        }
    }
    for (int i = a; i <= b; i++) textn(ps, part[i], len[i], train);
}

static int render_chatml(const chat *c, const turn *ts, int n, const char *sys, size_t sys_len,
                         int gen, pieces *ps) {
    if (sys) {
        special(ps, c->im_start, 0);
        text(ps, "system\n", 0);
        textn(ps, sys, sys_len, 0);
        special(ps, c->im_end, 0);
        text(ps, "\n", 0);
    }
    for (int i = 0; i < n; i++) {
        int tr = ts[i].role == CHAT_ASSISTANT && ts[i].train;
        special(ps, c->im_start, 0);
        text(ps, chat_role_name(ts[i].role), 0);
        text(ps, "\n", 0);
        content(ps, &ts[i], 1, 0, tr);
        special(ps, c->im_end, tr);
        text(ps, "\n", 0);
    }
    if (gen) {
        special(ps, c->im_start, 0);
        text(ps, "assistant\n", 0);
    }
    return 0;
}

static int render_llama3(const chat *c, const turn *ts, int n, const char *sys, size_t sys_len,
                         int gen, pieces *ps) {
    special(ps, c->bos, 0);
    if (sys || c->llama3_dated) {
        turn st = {CHAT_SYSTEM, sys ? sys : "", NULL, sys ? sys_len : 0, 0, 0};
        special(ps, c->start_header, 0);
        text(ps, "system", 0);
        special(ps, c->end_header, 0);
        text(ps, c->llama3_dated ? LLAMA3_DATES : "\n\n", 0);
        content(ps, &st, 0, 1, 0);
        special(ps, c->eot, 0);
    }
    for (int i = 0; i < n; i++) {
        int tr = ts[i].role == CHAT_ASSISTANT && ts[i].train;
        special(ps, c->start_header, 0);
        text(ps, chat_role_name(ts[i].role), 0);
        special(ps, c->end_header, 0);
        text(ps, "\n\n", 0);
        content(ps, &ts[i], 1, 1, tr);
        special(ps, c->eot, tr);
    }
    if (gen) {
        special(ps, c->start_header, 0);
        text(ps, "assistant", 0);
        special(ps, c->end_header, 0);
        text(ps, "\n\n", 0);
    }
    return 0;
}

static int render_mistral(const chat *c, const turn *ts, int n, const char *sys, size_t sys_len,
                          pieces *ps, lr_err *err) {
    special(ps, c->bos, 0);
    for (int i = 0; i < n; i++) {
        if (ts[i].role == CHAT_SYSTEM)
            return lr_errf(err, "mistral template: a system message is only allowed first");
        if ((ts[i].role == CHAT_USER) != (i % 2 == 0))
            return lr_errf(err, "mistral template: roles must alternate user/assistant, starting "
                                "with user (message %d is %s)", i + 1, chat_role_name(ts[i].role));
        if (ts[i].role == CHAT_USER) {
            text(ps, "[INST] ", 0);
            if (i == 0 && sys) {
                textn(ps, sys, sys_len, 0);
                text(ps, "\n\n", 0);
            }
            content(ps, &ts[i], 1, 0, 0);
            text(ps, " [/INST]", 0);
        } else {
            content(ps, &ts[i], 0, 0, ts[i].train);
            special(ps, c->eos, ts[i].train);
        }
    }
    return 0;
}

static int render_alpaca(const chat *c, const turn *ts, int n, const char *sys, size_t sys_len,
                         pieces *ps) {
    if (c->add_bos) special(ps, c->bos, 0);
    if (sys) {
        textn(ps, sys, sys_len, 0);
        text(ps, "\n\n", 0);
    } else {
        int first_input = 0;
        for (int i = 0; i < n; i++)
            if (ts[i].role == CHAT_USER) {
                first_input = ts[i].in && ts[i].in_len;
                break;
            }
        text(ps, first_input ? ALPACA_PRE_INPUT : ALPACA_PRE, 0);
    }
    int users = 0;
    for (int i = 0; i < n; i++) {
        switch (ts[i].role) {
        case CHAT_USER:
            if (users++) text(ps, "\n\n", 0);
            text(ps, "### Instruction:\n", 0);
            content(ps, &ts[i], 0, 0, 0);
            text(ps, "\n\n", 0);
            if (ts[i].in && ts[i].in_len) {
                text(ps, "### Input:\n", 0);
                textn(ps, ts[i].in, ts[i].in_len, 0);
                text(ps, "\n\n", 0);
            }
            text(ps, "### Response:\n", 0);
            break;
        case CHAT_ASSISTANT:
            content(ps, &ts[i], 0, 0, ts[i].train);
            special(ps, c->eos, ts[i].train);
            break;
        default:
            content(ps, &ts[i], 0, 0, 0);
            text(ps, "\n\n", 0);
        }
    }
    return 0;
}

static int render_plain(const chat *c, const turn *ts, int n, const char *sys, size_t sys_len,
                        pieces *ps) {
    if (c->add_bos) special(ps, c->bos, 0);
    if (sys) {
        textn(ps, sys, sys_len, 0);
        text(ps, "\n\n", 0);
    }
    for (int i = 0; i < n; i++) {
        if (ts[i].role == CHAT_ASSISTANT) {
            content(ps, &ts[i], 0, 0, ts[i].train);
            special(ps, c->eos, ts[i].train);
        } else {
            content(ps, &ts[i], 1, 0, 0);
            if (ts[i].role == CHAT_SYSTEM) text(ps, "\n\n", 0);
        }
    }
    return 0;
}

/* ---- pieces to ids ------------------------------------------------------ */

typedef struct idvec {
    int32_t *ids, *labels;
    size_t n, cap;
} idvec;

static int idvec_push(idvec *v, int32_t id, int32_t label) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        int32_t *a = realloc(v->ids, cap * sizeof *a);
        if (!a) return -1;
        v->ids = a;
        int32_t *b = realloc(v->labels, cap * sizeof *b);
        if (!b) return -1;
        v->labels = b;
        v->cap = cap;
    }
    v->ids[v->n] = id;
    v->labels[v->n] = label;
    v->n++;
    return 0;
}

/* The run of text pieces [a, b) is one stretch between special tokens:
 * tokenized whole, so ids equal Hugging Face's on the rendered string. Where
 * the training flag changes inside it, the first token that differs between
 * the tokenization of the prefix and of the whole (the one that starts at
 * the boundary or straddles it) starts the new run. */
static int flush_text(const chat *c, const piece *p, size_t a, size_t b, idvec *v, lr_buf *seg,
                      lr_err *err) {
    int32_t *all = NULL, *pre = NULL;
    size_t n_all = 0, n_pre = 0, start = 0;
    int rc = -1;
    lr_buf_reset(seg);
    for (size_t i = a; i < b; i++)
        if (lr_buf_add(seg, p[i].s, p[i].len)) {
            lr_errp(err, LR_E_TOOBIG, NULL, "rendered conversation is too long");
            goto done;
        }
    if (!seg->len) return 0;
    if (tok_encode(c->t, seg->data, seg->len, 0, &all, &n_all, err)) goto done;
    size_t off = 0;
    int train = p[a].train;
    for (size_t i = a; i <= b; i++) {
        if (i < b && p[i].train == train) {
            off += p[i].len;
            continue;
        }
        size_t end = n_all;
        if (i < b) {
            free(pre);
            pre = NULL;
            if (tok_encode(c->t, seg->data, off, 0, &pre, &n_pre, err)) goto done;
            end = 0;
            while (end < n_pre && end < n_all && pre[end] == all[end]) end++;
            /* A regex lookahead can re-split text before the boundary
             * (GPT-2's "\s+(?!\S)"): tokens that still end at or before
             * it are not the new run's. */
            for (;;) {
                char *txt = NULL;
                size_t tl = 0;
                if (end >= n_all || tok_decode(c->t, all, end + 1, &txt, &tl, err)) {
                    free(txt);
                    if (end >= n_all) break;
                    goto done;
                }
                free(txt);
                if (tl > off) break;
                end++;
            }
            if (end < start) end = start;
        }
        for (size_t k = start; k < end; k++)
            if (idvec_push(v, all[k], train ? all[k] : CHAT_IGNORE)) {
                lr_errp(err, LR_E_NOMEM, NULL, "out of memory rendering a conversation");
                goto done;
            }
        start = end;
        if (i < b) {
            train = p[i].train;
            off += p[i].len;
        }
    }
    rc = 0;
done:
    free(all);
    free(pre);
    return rc;
}

static int pieces_to_ids(const chat *c, const pieces *ps, idvec *v, lr_err *err) {
    lr_buf seg;
    lr_buf_init(&seg, CHAT_MAX_TEXT);
    int rc = -1;
    size_t a = 0;
    for (size_t i = 0; i <= ps->n; i++) {
        if (i < ps->n && ps->p[i].id < 0) continue;
        if (flush_text(c, ps->p, a, i, v, &seg, err)) goto done;
        if (i < ps->n && idvec_push(v, ps->p[i].id, ps->p[i].train ? ps->p[i].id : CHAT_IGNORE)) {
            lr_errp(err, LR_E_NOMEM, NULL, "out of memory rendering a conversation");
            goto done;
        }
        a = i + 1;
    }
    rc = 0;
done:
    lr_buf_free(&seg);
    return rc;
}

static int pieces_to_text(const chat *c, const pieces *ps, chat_out *out, lr_err *err) {
    lr_buf b;
    lr_buf_init(&b, CHAT_MAX_TEXT);
    for (size_t i = 0; i < ps->n; i++) {
        const piece *p = &ps->p[i];
        const char *s = p->id >= 0 ? tok_id_piece(c->t, p->id) : NULL;
        if (p->id >= 0 ? lr_buf_adds(&b, s ? s : "") : lr_buf_add(&b, p->s, p->len)) {
            lr_buf_free(&b);
            return lr_errp(err, LR_E_TOOBIG, NULL, "rendered conversation is too long");
        }
    }
    if (!b.data && lr_buf_add(&b, "", 0)) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    out->text = lr_buf_take(&b, &out->text_len);
    return 0;
}

int chat_render(const chat *c, const chat_msg *msgs, int n, const char *system_prompt,
                int add_generation_prompt, int want_text, chat_out *out, lr_err *err) {
    pieces ps = {0};
    idvec v = {0};
    turn *ts = NULL;
    int nt = 0, rc = -1;
    memset(out, 0, sizeof *out);
    const char *sys = NULL;
    size_t sys_len = 0;
    int first = 0;
    if (n > 0 && msgs[0].role == CHAT_SYSTEM) {
        sys = msgs[0].text;
        sys_len = msgs[0].len;
        first = 1;
    } else if (system_prompt && *system_prompt) {
        sys = system_prompt;
        sys_len = strlen(system_prompt);
    } else if (c->kind == TPL_CHATML && c->default_system[0]) {
        sys = c->default_system;
        sys_len = strlen(sys);
    }
    ts = calloc(n > 0 ? (size_t)n : 1, sizeof *ts);
    if (!ts) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto done;
    }
    for (int i = first; i < n; i++) {
        const chat_msg *m = &msgs[i];
        if (m->role == CHAT_INPUT) {
            if (!nt || ts[nt - 1].role != CHAT_USER || ts[nt - 1].in) {
                lr_errf(err, "message %d: an input must follow a user message", i + 1);
                goto done;
            }
            ts[nt - 1].in = m->text;
            ts[nt - 1].in_len = m->len;
            continue;
        }
        ts[nt++] = (turn){m->role, m->text, NULL, m->len, 0, m->role == CHAT_ASSISTANT && m->train};
    }
    switch (c->kind) {
    case TPL_CHATML: rc = render_chatml(c, ts, nt, sys, sys_len, add_generation_prompt, &ps); break;
    case TPL_LLAMA3: rc = render_llama3(c, ts, nt, sys, sys_len, add_generation_prompt, &ps); break;
    case TPL_MISTRAL: rc = render_mistral(c, ts, nt, sys, sys_len, &ps, err); break;
    case TPL_ALPACA: rc = render_alpaca(c, ts, nt, sys, sys_len, &ps); break;
    case TPL_PLAIN: rc = render_plain(c, ts, nt, sys, sys_len, &ps); break;
    case TPL_AUTO: rc = lr_errf(err, "chat template: auto was not resolved"); break;
    }
    if (rc) goto done;
    rc = -1;
    if (ps.oom) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto done;
    }
    if (pieces_to_ids(c, &ps, &v, err)) goto done;
    if (want_text && pieces_to_text(c, &ps, out, err)) goto done;
    out->ids = v.ids;
    out->labels = v.labels;
    out->n = v.n;
    v.ids = v.labels = NULL;
    rc = 0;
done:
    if (rc) chat_out_free(out);
    free(v.ids);
    free(v.labels);
    free(ps.p);
    free(ts);
    return rc;
}

void chat_out_free(chat_out *o) {
    free(o->ids);
    free(o->labels);
    free(o->text);
    memset(o, 0, sizeof *o);
}
