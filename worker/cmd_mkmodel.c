/* lora-worker mkmodel: a randomly initialised model directory in real
 * Hugging Face format (config.json, model.safetensors with transformers'
 * tensor names and layouts, tokenizer.json, tokenizer_config.json,
 * generation_config.json), for tests, demos and benchmarks without
 * downloads.
 *
 * Presets give the shape (a tiny test model or the real shapes of GPT-2
 * small, Qwen2.5-0.5B and Llama-3-8B); --arch gives the layout. Weights are
 * drawn as transformers initialises them (normal(0, initializer_range),
 * GPT-2's c_proj scaled by 1/sqrt(2 n_layer), norms 1, biases 0), each
 * tensor from its own RNG stream keyed by (seed, name), and streamed to disk
 * a chunk at a time, so an 8B model never needs more than a few MB of
 * memory and the bytes do not depend on the chunking. Without --tokenizer a
 * byte-level BPE is trained on an embedded English corpus, with the
 * specials <|endoftext|>, <|im_start|>, <|im_end|> and a ChatML
 * chat_template (llama/mistral/qwen2; GPT-2 gets none, like the original). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/rng.h"
#include "worker/commands.h"
#include "worker/corpus.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#include "formats/tok.h"

#define MK_CHUNK (1u << 20) /* values generated per write */
#define MK_MERGES 445       /* 256 bytes + 445 merges + 3 specials = 704 = 11 * 64 */
#define MK_MAX_TOKFILE (64u << 20)

typedef struct mk_preset {
    const char *name;
    int hidden, layers, heads, kv_heads, head_dim, inter, inter_gpt2, vocab, max_pos;
    float rope_theta, eps;
    int tie; /* -1: per architecture */
} mk_preset;

static const mk_preset PRESETS[] = {
    /* vocab 0: the tokenizer's size rounded up to a multiple of 64 */
    {"tiny", 64, 2, 4, 2, 16, 128, 256, 0, 512, 10000.0f, 1e-6f, -1},
    {"gpt2-124m", 768, 12, 12, 12, 64, 3072, 3072, 50257, 1024, 10000.0f, 1e-5f, 1},
    {"qwen2.5-0.5b", 896, 24, 14, 2, 64, 4864, 4864, 151936, 32768, 1000000.0f, 1e-6f, 1},
    {"llama-3-8b", 4096, 32, 32, 8, 128, 14336, 14336, 128256, 8192, 500000.0f, 1e-5f, 0},
};

static const char *const SPECIALS[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

static const char CHATML[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

static void usage(FILE *f) {
    fprintf(f,
            "usage: lora-worker mkmodel --arch llama|mistral|qwen2|gpt2 --out DIR\n"
            "         [--preset tiny|gpt2-124m|qwen2.5-0.5b|llama-3-8b] [--seed N] [--dtype f32|bf16|f16]\n"
            "         [--tokenizer PATH] [--vocab N] [--layers N] [--hidden N] [--heads N] [--kv-heads N]\n"
            "         [--intermediate N]\n"
            "  A random model folder in Hugging Face format. --preset sets the shape (default tiny),\n"
            "  --arch the tensor layout. --tokenizer copies a tokenizer.json (or a folder's tokenizer\n"
            "  files) instead of training a small byte-level BPE. Defaults: --seed 0 --dtype f32.\n");
}

static int parse_count(const char *opt, const char *v, int min, int max, int *out) {
    char *end;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < min || n > max) {
        fprintf(stderr, "mkmodel: %s wants an integer from %d to %d, not '%s'\n", opt, min, max, v);
        return -1;
    }
    *out = (int)n;
    return 0;
}

static int write_json(json_t *o, const char *path, int newline, lr_err *err) {
    char *s = o ? json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    if (!s) return lr_errp(err, LR_E_NOMEM, NULL, "%s: out of memory", path);
    lr_buf b;
    lr_buf_init(&b, 1u << 24);
    int rc = lr_buf_adds(&b, s) || (newline && lr_buf_add(&b, "\n", 1))
                 ? lr_errp(err, LR_E_NOMEM, NULL, "%s: out of memory", path)
                 : lr_write_file_atomic(path, b.data, b.len, err);
    lr_buf_free(&b);
    free(s);
    return rc;
}

static int copy_file(const char *from, const char *to, lr_err *err) {
    char *d;
    size_t n;
    if (lr_read_file(from, MK_MAX_TOKFILE, &d, &n, err)) return -1;
    int rc = lr_write_file_atomic(to, d, n, err);
    free(d);
    return rc;
}

/* --tokenizer: a tokenizer.json, or a folder whose tokenizer files are all
 * copied. Sets *own_config when the folder brought a tokenizer_config.json. */
static int copy_tokenizer(const char *src, const char *out, int *own_config, lr_err *err) {
    static const char *const side[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                       "vocab.json", "merges.txt", "tokenizer.model"};
    char from[4096], to[4096];
    *own_config = 0;
    if (access(src, F_OK)) return lr_errp(err, LR_E_NOTFOUND, "tokenizer", "--tokenizer %s: no such file", src);
    snprintf(from, sizeof from, "%s/.", src);
    if (access(from, F_OK)) { /* a file */
        snprintf(to, sizeof to, "%s/tokenizer.json", out);
        return copy_file(src, to, err);
    }
    int n = 0;
    for (size_t i = 0; i < sizeof side / sizeof *side; i++) {
        if (snprintf(from, sizeof from, "%s/%s", src, side[i]) >= (int)sizeof from) return lr_errf(err, "path too long");
        if (access(from, F_OK)) continue;
        snprintf(to, sizeof to, "%s/%s", out, side[i]);
        if (copy_file(from, to, err)) return -1;
        if (i == 1) *own_config = 1;
        n++;
    }
    return n ? 0 : lr_errp(err, LR_E_NOTFOUND, "tokenizer", "--tokenizer %s: no tokenizer files in it", src);
}

static int write_tokenizer_config(const char *dir, const tok *t, const hf_config *c, lr_err *err) {
    json_t *o = json_object(), *dec = json_object();
    for (size_t i = 0; i < sizeof SPECIALS / sizeof *SPECIALS; i++) {
        int32_t id = tok_piece_id(t, SPECIALS[i]);
        if (id < 0) continue;
        char key[16];
        snprintf(key, sizeof key, "%d", (int)id);
        json_object_set_new(dec, key, json_pack("{s:s,s:b,s:b,s:b,s:b,s:b}", "content", SPECIALS[i], "lstrip", 0,
                                                "normalized", 0, "rstrip", 0, "single_word", 0, "special", 1));
    }
    const char *bos = c->bos_id >= 0 ? tok_id_piece(t, c->bos_id) : NULL;
    const char *eos = c->eos_id >= 0 ? tok_id_piece(t, c->eos_id) : NULL;
    json_object_set_new(o, "add_bos_token", json_false());
    json_object_set_new(o, "add_eos_token", json_false());
    json_object_set_new(o, "added_tokens_decoder", dec);
    json_object_set_new(o, "bos_token", bos ? json_string(bos) : json_null());
    json_object_set_new(o, "eos_token", eos ? json_string(eos) : json_null());
    json_object_set_new(o, "pad_token", json_string(SPECIALS[0]));
    json_object_set_new(o, "unk_token", c->arch == ARCH_GPT2 ? json_string(SPECIALS[0]) : json_null());
    json_object_set_new(o, "clean_up_tokenization_spaces", json_false());
    json_object_set_new(o, "model_max_length", json_integer(c->max_pos));
    json_object_set_new(o, "tokenizer_class", json_string("PreTrainedTokenizerFast"));
    /* ChatML only where the tokenizer has its two tokens (a copied tokenizer may not) */
    if (c->arch != ARCH_GPT2 && tok_piece_id(t, SPECIALS[1]) >= 0 && tok_piece_id(t, SPECIALS[2]) >= 0)
        json_object_set_new(o, "chat_template", json_string(CHATML));
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    return write_json(o, path, 1, err);
}

static int write_generation_config(const char *dir, const hf_config *c, lr_err *err) {
    json_t *o = json_pack("{s:b,s:s}", "_from_model_config", 1, "transformers_version", "4.45.0");
    if (o) {
        json_object_set_new(o, "bos_token_id", c->bos_id >= 0 ? json_integer(c->bos_id) : json_null());
        json_object_set_new(o, "eos_token_id", c->eos_id >= 0 ? json_integer(c->eos_id) : json_null());
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    return write_json(o, path, 1, err);
}

/* ---- weights ---- */

static int add(st_writer *w, st_dtype dt, const char *name, int64_t d0, int64_t d1, uint64_t *bytes, lr_err *err) {
    int64_t shape[2] = {d0, d1};
    *bytes += (uint64_t)d0 * (uint64_t)(d1 ? d1 : 1) * st_dtype_size(dt);
    return st_writer_add(w, name, dt, d1 ? 2 : 1, shape, NULL, err);
}

/* Declares every tensor of the model, with transformers' names and shapes. */
static int declare(st_writer *w, const hf_config *c, st_dtype dt, uint64_t *bytes, lr_err *err) {
    char n[160];
    int64_t H = c->hidden, I = c->intermediate, V = c->vocab_size;
    int rc = 0;
#define T(d0, d1, ...) (snprintf(n, sizeof n, __VA_ARGS__), rc |= add(w, dt, n, d0, d1, bytes, err))
    if (c->arch == ARCH_GPT2) {
        T(V, H, "transformer.wte.weight");
        T(c->max_pos, H, "transformer.wpe.weight");
        for (int l = 0; l < c->n_layers && !rc; l++) {
            static const char *const ln[] = {"ln_1", "ln_2"};
            for (int k = 0; k < 2; k++) {
                T(H, 0, "transformer.h.%d.%s.weight", l, ln[k]);
                T(H, 0, "transformer.h.%d.%s.bias", l, ln[k]);
            }
            /* Conv1D: weight [in, out] */
            T(H, 3 * H, "transformer.h.%d.attn.c_attn.weight", l);
            T(3 * H, 0, "transformer.h.%d.attn.c_attn.bias", l);
            T(H, H, "transformer.h.%d.attn.c_proj.weight", l);
            T(H, 0, "transformer.h.%d.attn.c_proj.bias", l);
            T(H, I, "transformer.h.%d.mlp.c_fc.weight", l);
            T(I, 0, "transformer.h.%d.mlp.c_fc.bias", l);
            T(I, H, "transformer.h.%d.mlp.c_proj.weight", l);
            T(H, 0, "transformer.h.%d.mlp.c_proj.bias", l);
        }
        T(H, 0, "transformer.ln_f.weight");
        T(H, 0, "transformer.ln_f.bias");
    } else {
        int64_t Q = (int64_t)c->n_heads * c->head_dim, KV = (int64_t)c->n_kv_heads * c->head_dim;
        T(V, H, "model.embed_tokens.weight");
        for (int l = 0; l < c->n_layers && !rc; l++) {
            static const char *const proj[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
            const int64_t out[] = {Q, KV, KV, H}, in[] = {H, H, H, Q};
            T(H, 0, "model.layers.%d.input_layernorm.weight", l);
            T(H, 0, "model.layers.%d.post_attention_layernorm.weight", l);
            for (int k = 0; k < 4; k++) {
                T(out[k], in[k], "model.layers.%d.self_attn.%s.weight", l, proj[k]);
                if (k < 3 ? c->attn_bias : c->o_bias) T(out[k], 0, "model.layers.%d.self_attn.%s.bias", l, proj[k]);
            }
            static const char *const mlp[] = {"gate_proj", "up_proj", "down_proj"};
            const int64_t mo[] = {I, I, H}, mi[] = {H, H, I};
            for (int k = 0; k < 3; k++) {
                T(mo[k], mi[k], "model.layers.%d.mlp.%s.weight", l, mlp[k]);
                if (c->mlp_bias) T(mo[k], 0, "model.layers.%d.mlp.%s.bias", l, mlp[k]);
            }
        }
        T(H, 0, "model.norm.weight");
    }
    if (!c->tie_embeddings) T(V, H, "lm_head.weight");
#undef T
    return rc;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* How transformers initialises a parameter: 0 zeros, 1 ones, or the
 * standard deviation of a normal. */
static float init_std(const char *name, const hf_config *c, int *kind) {
    *kind = 2;
    if (ends_with(name, ".bias")) {
        *kind = 0;
        return 0;
    }
    if (ends_with(name, "norm.weight") || strstr(name, ".ln_")) {
        *kind = 1;
        return 0;
    }
    /* GPT-2: residual projections scaled by 1/sqrt(2 * n_layer) (GPT2PreTrainedModel._init_weights) */
    if (c->arch == ARCH_GPT2 && ends_with(name, "c_proj.weight")) return c->init_range / sqrtf(2.0f * (float)c->n_layers);
    return c->init_range;
}

static int write_weights(const char *dir, const hf_config *c, st_dtype dt, uint64_t seed, double *gb, lr_err *err) {
    char path[4096];
    int rc = -1;
    st_stream *s = NULL;
    float *f = malloc(MK_CHUNK * sizeof *f);
    uint16_t *h = malloc(MK_CHUNK * sizeof *h);
    st_writer *w = st_writer_new();
    if (!f || !h || !w) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto done;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    uint64_t total = 0, done_bytes = 0, next_report = 1ull << 30;
    if (declare(w, c, dt, &total, err) || st_writer_meta(w, "format", "pt", err) || st_stream_begin(w, path, &s, err)) goto done;
    for (const st_tensor *t; (t = st_stream_next(s));) {
        int kind;
        float std = init_std(t->name, c, &kind);
        lr_rng r;
        rng_stream(&r, seed, lr_hash64(t->name));
        int64_t left = st_numel(t);
        while (left > 0) {
            size_t n = left > (int64_t)MK_CHUNK ? MK_CHUNK : (size_t)left;
            if (kind == 2) rng_fill_normal(&r, f, n, 0.0f, std);
            else for (size_t k = 0; k < n; k++) f[k] = (float)kind;
            const void *p = f;
            if (dt != ST_F32) {
                for (size_t k = 0; k < n; k++) h[k] = dt == ST_BF16 ? st_f32_to_bf16(f[k]) : st_f32_to_f16(f[k]);
                p = h;
            }
            if (st_stream_put(s, p, n * st_dtype_size(dt), err)) goto done;
            left -= (int64_t)n;
            done_bytes += n * st_dtype_size(dt);
            if (done_bytes >= next_report) { /* big models take minutes: say how far */
                fprintf(stderr, "mkmodel: %.1f of %.1f GB\n", (double)done_bytes / 1e9, (double)total / 1e9);
                next_report += 1ull << 30;
            }
        }
    }
    *gb = (double)done_bytes / 1e9;
    rc = st_stream_finish(s, err);
    s = NULL;
done:
    st_stream_abort(s);
    st_writer_free(w);
    free(f);
    free(h);
    return rc;
}

/* ---- the command ---- */

typedef struct mk_opts {
    const char *arch, *preset, *out, *tokenizer, *dtype;
    uint64_t seed;
    int vocab, layers, hidden, heads, kv_heads, inter;
} mk_opts;

static int parse_args(int argc, char **argv, mk_opts *o) {
    memset(o, 0, sizeof *o);
    o->preset = "tiny";
    o->dtype = "f32";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        }
        if (!v) bad = 1;
        else if (!strcmp(a, "--arch")) o->arch = v;
        else if (!strcmp(a, "--preset")) o->preset = v;
        else if (!strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "--tokenizer")) o->tokenizer = v;
        else if (!strcmp(a, "--dtype")) o->dtype = v;
        else if (!strcmp(a, "--seed")) {
            char *end;
            unsigned long long s = strtoull(v, &end, 10);
            if (!*v || *end || *v == '-') {
                fprintf(stderr, "mkmodel: --seed wants a non-negative integer, not '%s'\n", v);
                return -1;
            }
            o->seed = s;
        } else if (!strcmp(a, "--vocab")) bad = parse_count(a, v, 1, 1 << 24, &o->vocab) ? 2 : 0;
        else if (!strcmp(a, "--layers")) bad = parse_count(a, v, 1, 1024, &o->layers) ? 2 : 0;
        else if (!strcmp(a, "--hidden")) bad = parse_count(a, v, 1, 1 << 16, &o->hidden) ? 2 : 0;
        else if (!strcmp(a, "--heads")) bad = parse_count(a, v, 1, 1024, &o->heads) ? 2 : 0;
        else if (!strcmp(a, "--kv-heads")) bad = parse_count(a, v, 1, 1024, &o->kv_heads) ? 2 : 0;
        else if (!strcmp(a, "--intermediate")) bad = parse_count(a, v, 1, 1 << 20, &o->inter) ? 2 : 0;
        else bad = 1;
        if (bad == 2) return -1;
        if (bad) {
            fprintf(stderr, "mkmodel: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return -1;
        }
        i++;
    }
    if (!o->arch || !o->out) {
        fprintf(stderr, "mkmodel: --arch and --out are required\n");
        usage(stderr);
        return -1;
    }
    return 0;
}

/* The config from arch + preset + overrides; vocab 0 = from the tokenizer. */
static int build_config(const mk_opts *o, hf_config *c, lr_err *err) {
    static const char *const archs[] = {[ARCH_LLAMA] = "llama", [ARCH_MISTRAL] = "mistral", [ARCH_QWEN2] = "qwen2",
                                        [ARCH_GPT2] = "gpt2"};
    int a, p;
    for (a = 0; a < 4 && strcmp(archs[a], o->arch); a++) {}
    if (a == 4) return lr_errp(err, LR_E_INVALID, "arch", "--arch '%s' is not one of llama, mistral, qwen2, gpt2", o->arch);
    for (p = 0; p < (int)(sizeof PRESETS / sizeof *PRESETS) && strcmp(PRESETS[p].name, o->preset); p++) {}
    if (p == (int)(sizeof PRESETS / sizeof *PRESETS))
        return lr_errp(err, LR_E_INVALID, "preset", "--preset '%s' is not one of tiny, gpt2-124m, qwen2.5-0.5b, llama-3-8b",
                       o->preset);
    const mk_preset *ps = &PRESETS[p];
    hf_arch arch = (hf_arch)a;
    hf_config_defaults(arch, c);
    c->hidden = o->hidden ? o->hidden : ps->hidden;
    c->n_layers = o->layers ? o->layers : ps->layers;
    c->n_heads = o->heads ? o->heads : ps->heads;
    c->n_kv_heads = o->kv_heads ? o->kv_heads : o->heads ? c->n_heads : ps->kv_heads;
    /* the test preset's GQA is there to exercise it where it exists */
    if (arch == ARCH_GPT2 && !strcmp(ps->name, "tiny") && !o->kv_heads) c->n_kv_heads = c->n_heads;
    c->head_dim = o->hidden || o->heads ? c->hidden / c->n_heads : ps->head_dim;
    c->intermediate = o->inter ? o->inter : arch == ARCH_GPT2 ? ps->inter_gpt2 : ps->inter;
    c->vocab_size = o->vocab ? o->vocab : ps->vocab;
    c->max_pos = ps->max_pos;
    c->norm_eps = arch == ARCH_GPT2 ? 1e-5f : ps->eps;
    c->rope_theta = ps->rope_theta;
    c->tie_embeddings = ps->tie >= 0 ? ps->tie : arch == ARCH_GPT2 || arch == ARCH_QWEN2;
    if (arch == ARCH_MISTRAL) c->sliding_window = 0; /* full attention, as Mistral v0.2+ */
    if ((o->hidden || o->heads) && c->hidden % c->n_heads)
        return lr_errp(err, LR_E_INVALID, "hidden", "--hidden %d is not a multiple of %d heads", c->hidden, c->n_heads);
    if (arch == ARCH_GPT2 && c->n_kv_heads != c->n_heads)
        return lr_errp(err, LR_E_INVALID, "arch",
                       "GPT-2 has no grouped-query attention: preset %s has %d heads and %d KV heads "
                       "(use --arch llama, mistral or qwen2, or --kv-heads %d)",
                       ps->name, c->n_heads, c->n_kv_heads, c->n_heads);
    if (arch == ARCH_GPT2 && c->head_dim * c->n_heads != c->hidden)
        return lr_errp(err, LR_E_INVALID, "arch", "GPT-2 needs hidden = heads x head_dim");
    if (!strcmp(o->dtype, "f32")) snprintf(c->torch_dtype, sizeof c->torch_dtype, "float32");
    else if (!strcmp(o->dtype, "bf16")) snprintf(c->torch_dtype, sizeof c->torch_dtype, "bfloat16");
    else if (!strcmp(o->dtype, "f16")) snprintf(c->torch_dtype, sizeof c->torch_dtype, "float16");
    else return lr_errp(err, LR_E_INVALID, "dtype", "--dtype '%s' is not f32, bf16 or f16", o->dtype);
    return 0;
}

static int mkmodel(const mk_opts *o, lr_err *err) {
    hf_config c;
    tok *t = NULL;
    char path[4096];
    int own_config = 0, rc = -1;
    if (build_config(o, &c, err) || lr_mkdirs(o->out, err)) return -1;
    if (snprintf(path, sizeof path, "%s/tokenizer.json", o->out) >= (int)sizeof path - 64)
        return lr_errf(err, "--out: path too long");
    if (o->tokenizer) {
        if (copy_tokenizer(o->tokenizer, o->out, &own_config, err) || tok_load(o->out, &t, err)) goto done;
        c.bos_id = tok_bos_id(t);
        c.eos_id = tok_eos_id(t);
    } else {
        size_t len;
        const char *text = corpus_text(&len);
        if (tok_train_bytelevel(text, len, MK_MERGES, SPECIALS, 3, path, err) || tok_load(path, &t, err)) goto done;
        int32_t eot = tok_piece_id(t, SPECIALS[0]), im_end = tok_piece_id(t, SPECIALS[2]);
        c.bos_id = eot;
        c.eos_id = c.arch == ARCH_GPT2 ? eot : im_end;
    }
    c.n_eos = c.eos_id >= 0;
    c.eos_ids[0] = c.eos_id;
    int tv = tok_vocab_size(t);
    if (!c.vocab_size) c.vocab_size = (tv + 63) / 64 * 64;
    if (c.vocab_size < tv) {
        lr_errp(err, LR_E_INVALID, "vocab", "the model's vocabulary (%d) is smaller than the tokenizer's (%d)",
                c.vocab_size, tv);
        goto done;
    }
    snprintf(path, sizeof path, "%s/config.json", o->out);
    if (hf_config_write(&c, path, err) || (!own_config && write_tokenizer_config(o->out, t, &c, err)) ||
        write_generation_config(o->out, &c, err))
        goto done;
    double gb;
    if (write_weights(o->out, &c, c.torch_dtype[0] == 'b' ? ST_BF16 : !strcmp(c.torch_dtype, "float16") ? ST_F16 : ST_F32, o->seed, &gb, err)) goto done;
    printf("mkmodel: %s: %s, %d layers, hidden %d, %d/%d heads, vocab %d, %s, %.3f GB\n", o->out, c.arch_name,
           c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.vocab_size, c.torch_dtype, gb);
    rc = 0;
done:
    tok_free(t);
    return rc;
}

int cmd_mkmodel(int argc, char **argv) {
    mk_opts o;
    int p = parse_args(argc, argv, &o);
    if (p) return p > 0 ? 0 : 1;
    lr_err err = {0};
    if (mkmodel(&o, &err)) {
        fprintf(stderr, "mkmodel: %s\n", err.msg);
        return 2;
    }
    return 0;
}
