/* runner: lora-worker runs the REST API asks for outside the scheduler:
 * generations (side-by-side, chat and text completions) and adapter merges
 * (or, for a full_sft run, registering its model folder as a new model).
 *
 * lorad never loads a model itself. Generations go to `lora-worker serve`
 * processes (worker/cmd_serve.c), one per generation slot, started on
 * first use and kept: each keeps the models it answered with loaded
 * (within its share of gen_cache_bytes), and a request goes to the idle
 * server that answered for the same model last. Requests and answers are
 * JSON lines on the server's stdin and stdout; a streamed answer arrives a
 * piece of text at a time (runner_stream_*). A generation runs in the
 * calling HTTP thread, bounded by a deadline (past it the server is killed
 * and the next request starts a fresh one) and by a cap on generations at
 * once, so at least some HTTP threads stay free. A server that died between
 * requests is restarted and the request sent again. A merge spawns
 * `lora-worker merge` (posix_spawn; stdin /dev/null; stdout and stderr on
 * close-on-exec pipes, stdout capped) on a thread of its own: the request
 * returns at once and the thread registers the model when the child
 * succeeds. Children are reaped with waitpid(pid): libuv's SIGCHLD handler
 * only waits for the pids uv_spawn started, so the supervisor and the
 * runner never take each other's children. runner_stop kills every child
 * at work (shutdown); runner_free joins the merge threads and ends the
 * servers. Thread-safe. */
#ifndef LR_RUNNER_H
#define LR_RUNNER_H

#include <jansson.h>
#include "common/err.h"

#define RUNNER_MAX_STOP 8         /* stop strings of one generation (lora-worker's limit) */
#define RUNNER_MAX_STOP_LEN 255   /* bytes in one */
#define RUNNER_MAX_OUTPUT (1u << 20) /* stdout of one generation */
#define RUNNER_GEN_QUEUE 8        /* the most runner_config.gen_queue may be */

typedef struct runner runner;

typedef struct runner_config {
    const char *worker_bin, *data_dir, *db_path;
    int max_generations; /* at once; one more is LR_E_BUSY */
    int gen_timeout_s;   /* both runs of one generation together; past it LR_E_TIMEOUT */
    int gen_threads;     /* --threads of a generation */
    int gen_queue;       /* runner_generate_one calls that may wait for a slot (0..RUNNER_GEN_QUEUE) */
    size_t gen_cache_bytes; /* models the servers keep loaded, all together; 0 = half the free memory */
    const char *gen_backend; /* lora-worker serve --backend: auto (NULL), cpu, cuda[:N] */
} runner_config;

/* Copies the strings; removes merge leftovers of a previous lorad
 * (<data_dir>/models/.merging-*). */
int runner_new(const runner_config *cfg, runner **out, lr_err *err) LR_WARN_UNUSED;
/* Kills every running child; generations fail, merges fail and clean up. */
void runner_stop(runner *r);
/* Waits until the merges under way have ended (without stopping them). */
void runner_wait(runner *r);
/* Stops, waits for the merge threads, frees. NULL is fine. */
void runner_free(runner *r);

typedef struct runner_gen {
    const char *model_dir;       /* the base model: the "base" side */
    const char *adapter_dir;     /* the "tuned" side is model_dir + this adapter, */
    const char *tuned_model_dir; /* or, when set, this model folder alone (a full_sft run directory) */
    const char *chat_template;   /* auto, chatml, llama3, mistral, alpaca, plain */
    const char *prompt, *system; /* system may be NULL */
    const char *prompts_file;    /* set: a JSONL file of one row ({"messages": [...]}) instead of prompt */
    int max_new_tokens, top_k;
    double temperature, top_p;
    long long seed;
    const char *stop[RUNNER_MAX_STOP];
    int n_stop;
} runner_gen;

/* Answers the prompt with the base model, then with base + adapter (or the
 * tuned model folder). *out:
 * {"prompt_tokens": n, "base": {"text", "tokens", "stop"}, "tuned": {...},
 * "seconds": wall time}. Errors: LR_E_BUSY (max_generations already run),
 * LR_E_TIMEOUT, LR_E_INVALID (the prompt does not fit the model), else
 * lora-worker's own message. */
int runner_generate(runner *r, const runner_gen *g, json_t **out, lr_err *err) LR_WARN_UNUSED;

/* One side only (tuned 0: model_dir; 1: the adapter or tuned model), under
 * the same cap and deadline: *out {"text", "tokens", "stop",
 * "prompt_tokens", "seconds", "model_loaded" (false: the server had it
 * loaded)}. For /v1/chat/completions and /v1/completions: when
 * max_generations run, up to gen_queue calls wait for a slot (the wait
 * counts in the deadline: LR_E_TIMEOUT); beyond, LR_E_BUSY. */
int runner_generate_one(runner *r, const runner_gen *g, int tuned, json_t **out, lr_err *err) LR_WARN_UNUSED;

/* runner_generate_one with the text as it is generated: start returns once
 * the first piece (or the whole answer) is there, with the same errors;
 * next gives 0 and the next piece of text (*delta, *n bytes, valid until
 * the next call; the pieces add up to the final text), then 1 and
 * runner_generate_one's object in *result (caller's), or -1 (LR_E_TIMEOUT
 * past the deadline, counted from start). free ends it at any point: an
 * answer still being generated is read to its end (within the deadline)
 * and dropped, and the slot is given back. */
typedef struct runner_stream runner_stream;
int runner_stream_start(runner *r, const runner_gen *g, int tuned, runner_stream **out, lr_err *err) LR_WARN_UNUSED;
int runner_stream_next(runner_stream *s, const char **delta, size_t *n, json_t **result, lr_err *err) LR_WARN_UNUSED;
void runner_stream_free(runner_stream *s);

/* Counters since start, for /metrics. */
typedef struct runner_gen_stats {
    unsigned long long model_loads;   /* models the servers loaded for a request */
    unsigned long long model_unloads; /* models they unloaded to make room */
    unsigned long long server_starts; /* lora-worker serve processes started */
    int running, waiting;             /* generations now, and requests waiting for a slot */
} runner_gen_stats;
void runner_stats(runner *r, runner_gen_stats *st);

typedef struct runner_merge {
    const char *job_id;          /* the events go to this job */
    const char *model_dir, *adapter_dir;
    const char *tuned_model_dir; /* set (a full_sft run directory): registered as is; the two above unused */
    const char *name;            /* a valid model name (models_name_ok) */
} runner_merge;

/* Starts `lora-worker merge` into <data_dir>/models/.merging-<name> (or,
 * with tuned_model_dir, a copy of that folder's model files: the
 * *.safetensors weights, config.json and the tokenizer and generation
 * files) and returns. When that succeeds the folder becomes models/<name>
 * and is registered like `lorad model add` does, with an info event on the
 * job ("merged into model NAME", or "registered the full_sft model as
 * NAME"); on failure the partial folder is removed and the job gets an
 * error event ("merge into model NAME failed: ...", or "registering the
 * full_sft model as NAME failed: ..."). The caller checks that no
 * registered model has the name; LR_E_CONFLICT here when a merge into name
 * is under way or models/<name> exists. */
int runner_merge_start(runner *r, const runner_merge *m, lr_err *err) LR_WARN_UNUSED;

#endif
