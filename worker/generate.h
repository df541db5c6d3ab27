/* generate: text generation from a model with a KV cache (worker/model.h).
 *
 * The prompt runs through the model once (the prefill), then one token at a
 * time against the cache. Each new token is chosen from the logits of the
 * last position as transformers' generate() does: greedy (temperature 0)
 * takes the first highest logit; sampling divides the logits by the
 * temperature, keeps the top_k highest (0: all), then the smallest set of
 * highest-probability tokens whose mass reaches top_p (1: all; at least one
 * token always stays), renormalises and draws from a stream of seed.
 *
 * Generation stops at a stop token (EOS, the chat template's end of turn;
 * not part of the output), when the decoded text contains a stop string
 * (the text is cut before it, as in the OpenAI API; the ids keep the tokens
 * generated), after max_new_tokens, when the cache is full, or when the
 * cancelled hook says so (between tokens). */
#ifndef LR_GENERATE_H
#define LR_GENERATE_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"
#include "common/rng.h"
#include "formats/chat.h"
#include "formats/hfconfig.h"
#include "worker/model.h"
#include "formats/tok.h"

#define GEN_MAX_STOP 8         /* stop strings */
#define GEN_MAX_STOP_LEN 256   /* bytes in one stop string */
#define GEN_MAX_STOP_IDS 16    /* stop tokens */
#define GEN_MAX_NEW_TOKENS 65536

typedef struct gen_opts {
    int max_new_tokens;  /* default 256 */
    float temperature;   /* 0 = greedy (default) */
    float top_p;         /* (0, 1], default 1 */
    int top_k;           /* 0 = off (default) */
    uint64_t seed;
    int n_stop;
    char stop[GEN_MAX_STOP][GEN_MAX_STOP_LEN];
    int n_stop_ids;
    int32_t stop_ids[GEN_MAX_STOP_IDS];
    /* Optional: non-zero ends generation before the next token (a job's cancel). */
    int (*cancelled)(void *ud);
    void *cancel_ud;
    /* Optional: called with the output so far after each token kept
     * (lora-worker serve streams the text as it grows); non-zero ends
     * generation as cancelled. */
    int (*on_token)(void *ud, const int32_t *ids, int n);
    void *token_ud;
} gen_opts;

typedef enum { GEN_STOP_TOKEN, GEN_STOP_STRING, GEN_STOP_LENGTH, GEN_STOP_CANCELLED } gen_stop;

typedef struct gen_result {
    int32_t *ids;    /* the generated tokens, the stop token excluded */
    int n;
    char *text;      /* decoded (NULL without a tokenizer), NUL-terminated, cut before a stop string */
    size_t len;
    gen_stop stop;
    int n_prompt;    /* prompt tokens */
} gen_result;

/* Defaults: 256 new tokens, greedy, top_p 1, top_k 0, seed 0, no stops. */
void gen_opts_init(gen_opts *o);
/* Checks the ranges (param names are the CLI's / job spec's generation fields). */
int gen_opts_check(const gen_opts *o, lr_err *err) LR_WARN_UNUSED;
/* Adds a stop string; an error when there are GEN_MAX_STOP or it is empty or too long. */
int gen_add_stop(gen_opts *o, const char *s, lr_err *err) LR_WARN_UNUSED;
/* Adds the tokens that end a model's turn: the config's eos_token_id(s),
 * the tokenizer's EOS and the chat template's end of turn (<|im_end|>,
 * <|eot_id|>); ch and t may be NULL. Duplicates are skipped. */
void gen_add_model_stops(gen_opts *o, const hf_config *c, const tok *t, const chat *ch);

/* Generates from prompt ids with the model behind kv (reset first; its
 * capacity bounds prompt + output). t may be NULL (no text, no stop
 * strings). */
int gen_run(model_kv *kv, const tok *t, const int32_t *prompt, int n_prompt, const gen_opts *o, gen_result *out,
            lr_err *err) LR_WARN_UNUSED;
void gen_result_free(gen_result *r);

/* One token from logits [V] (modified in place) under o's settings. */
int32_t gen_pick(float *logits, int V, const gen_opts *o, lr_rng *rng);

const char *gen_stop_name(gen_stop s); /* "stop_token", "stop_string", "length", "cancelled" */

#endif
