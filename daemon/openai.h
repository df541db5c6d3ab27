/* openai: OpenAI's fine-tuning and chat shapes on lorad's objects.
 *
 * lorad's jobs and datasets are OpenAI's fine-tuning jobs and files: one set
 * of rows, one set of handlers (daemon/api.c), the same objects on
 * /v1/jobs and /v1/fine_tuning/jobs. This module holds what is OpenAI's:
 * the create body (model, training_file, suffix, seed, metadata, method,
 * "auto" hyperparameters) turned into lorad's job spec, the fields a job
 * object gains from it, event and checkpoint objects, model names
 * ("ft:<base>:<user>:<suffix>:<job id>[:ckpt-step-N]") and the chat and
 * completion answers, streamed or not. No I/O: the API looks things up and
 * passes them in.
 *
 * "auto" resolves to (documented in README "Moving from OpenAI fine-tuning"):
 * n_epochs = clamp(ceil(1000 / rows), 3, 10); batch_size = the largest power
 * of two <= rows / 32, in 1..16; learning rate = a base rate by model size
 * (2e-4 below 1B parameters, 1e-4 below 10B, 5e-5 above) times
 * learning_rate_multiplier (auto: 1); LoRA on all linear layers; DPO beta 0.1. */
#ifndef LR_OPENAI_H
#define LR_OPENAI_H

#include <jansson.h>
#include <stdint.h>
#include "common/buf.h"
#include "common/err.h"
#include "proto/jobspec.h"

#define OAI_SUFFIX_MAX 64
#define OAI_METADATA_MAX 16

/* What the create needs to know that the body does not say. */
typedef struct oai_create_ctx {
    int64_t train_rows;     /* rows of training_file, 0 when unknown */
    double model_params;    /* the base model's parameter count, 0 when unknown */
    int openai_route;       /* 1: /v1/fine_tuning/jobs ("auto" defaults, generated seed) */
    uint64_t random_seed;   /* the seed recorded when the body has none (openai_route) */
} oai_create_ctx;

/* Turns an OpenAI create body into lorad's spec document, in place: the
 * OpenAI-only fields (suffix, metadata, integrations, seed, method's
 * supervised/dpo sections, learning_rate_multiplier, "auto") are taken out
 * and *meta (new reference) keeps them and what "auto" resolved to; lorad's
 * own spec fields pass through. Errors name the field (param), e.g.
 * method.type "reinforcement". */
int oai_create_prepare(json_t *body, const oai_create_ctx *x, json_t **meta, lr_err *err) LR_WARN_UNUSED;

/* The job's OpenAI record, stored with it (jobs.openai): training_file,
 * validation_file, hyperparameters, method, seed, suffix, metadata,
 * integrations and the fine_tuned_model name it will have. meta may be an
 * empty object (a sweep's point: no OpenAI fields, base rate 2e-4). */
json_t *oai_job_record(const jobspec *s, const json_t *meta, const char *job_id, const char *user);

/* Completes a job object (store's) with OpenAI's fields that follow its
 * state: fine_tuned_model only once succeeded, estimated_finish while it
 * runs, organization_id, result_files, trained_tokens. (A job created
 * before the record, migration 0007, has no training_file, seed...) */
void oai_job_complete(json_t *job, int64_t now);
/* OpenAI's status on its routes (/v1/fine_tuning/jobs): a running job is
 * "validating_files" until its worker reports the run's plan (a total step
 * count), which it does once the model is loaded and the files are
 * tokenized with its tokenizer and chat template (rows past max_seq_len,
 * none left, a template that fails them: the job fails there). Upload and
 * create check everything else at once (400s), so a job is queued first.
 * lorad's own routes keep "running"; an eval job (no steps) too. */
void oai_job_status(json_t *job);

/* A succeeded job's results file (OpenAI's result_files): a CSV of its
 * logged metrics, made when read; its id is "file-results-<hex>" for job
 * "ftjob-<hex>". Each returns -1 when the id is not of that form. */
int oai_results_file_id(const char *job_id, char *out, size_t cap);
int oai_results_file_job(const char *file_id, char *job_id, size_t cap);

/* "ft:<base>:<user>:<suffix>:<job id>" (suffix may be ""), into out. */
void oai_model_name(const char *base, const char *user, const char *suffix, const char *job_id, char *out, size_t cap);
/* A fine-tuned model or checkpoint name: 1 with its job id and step (-1:
 * the final adapter), 0 when name is not one (a base model's name). */
int oai_parse_model(const char *name, char *job_id, size_t cap, int64_t *step);

/* OpenAI's event object from lorad's ({"id": n, "created_at", "level",
 * "message"}): id "ftevent-<n>", whole seconds, level info|warn|error,
 * type "message". */
json_t *oai_event(const json_t *ev);
/* A metrics event for one logged step (train_loss, valid_loss, ...). */
json_t *oai_metrics_event(int64_t step, int64_t total_steps, double created_at, const json_t *values);
/* Adds OpenAI's checkpoint fields to lorad's checkpoint object ({"step",
 * "name", "created_at"}): id, fine_tuning_job_id, step_number,
 * fine_tuned_model_checkpoint ("<fine_tuned_model>:ckpt-step-N") and
 * metrics (stolen reference: what was logged at that step). */
void oai_checkpoint_complete(json_t *ck, const char *job_id, const char *fine_tuned_model, json_t *metrics);

/* OpenAI's error type for a status: invalid_request_error, authentication_error,
 * permission_error, not_found_error, conflict_error, rate_limit_error, server_error. */
const char *oai_error_type(int status);

/* A chat.completion (chat 1) or text_completion object from one generation
 * ({"text", "tokens", "stop", "prompt_tokens"}). */
json_t *oai_completion(int chat, const char *id, const char *model, int64_t created, const json_t *gen);
/* The same answer as server-sent events: the text in chunks of about
 * chunk_bytes (cut on UTF-8 boundaries), then the finish reason, then the
 * usage chunk when include_usage, then "data: [DONE]". malloc'd, *len. */
char *oai_sse(int chat, const char *id, const char *model, int64_t created, const json_t *gen, int include_usage,
              size_t chunk_bytes, size_t *len);
/* The same events one part at a time, appended to b, for an answer sent as
 * it is generated: the opening (a chat's role chunk; nothing for a text
 * completion), one chunk per piece of text (n > 0 bytes, whole UTF-8
 * characters), the end (finish reason, usage when include_usage, [DONE]).
 * 0, or -1 when b is full or out of memory. */
int oai_sse_open(lr_buf *b, int chat, const char *id, const char *model, int64_t created) LR_WARN_UNUSED;
int oai_sse_text(lr_buf *b, int chat, const char *id, const char *model, int64_t created, const char *text,
                 size_t n) LR_WARN_UNUSED;
int oai_sse_close(lr_buf *b, int chat, const char *id, const char *model, int64_t created, const json_t *gen,
                  int include_usage) LR_WARN_UNUSED;

#endif
