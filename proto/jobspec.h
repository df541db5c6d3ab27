/* jobspec: the one job schema of lorad.
 *
 * The REST body of POST /v1/jobs, the YAML/JSON file of `lora submit` and of
 * `lora-worker run --config` are the same document, validated here and only
 * here: unknown fields, wrong types and out-of-range values are errors whose
 * lr_err.param is the dotted path of the field. Defaults are filled in, so a
 * parsed spec is complete; jobspec_to_json writes it back whole. The fields,
 * their ranges, defaults and help are one table in jobspec.c; a field added
 * to the struct gets a row there. */
#ifndef LR_JOBSPEC_H
#define LR_JOBSPEC_H

#include <jansson.h>
#include <stdint.h>
#include "common/err.h"

#define JOBSPEC_MAX_TEXT (1u << 20)
#define JOBSPEC_MAX_TARGETS 16
#define JOBSPEC_MAX_FILES 8
#define JOBSPEC_MAX_SECTIONS 16
#define JOBSPEC_MAX_STOP 8
#define JOBSPEC_MAX_REGEX 1024
#define JOBSPEC_MAX_DEVICES 64

typedef enum { METHOD_SFT, METHOD_KL_SFT, METHOD_DPO, METHOD_FULL_SFT, METHOD_EVAL } job_method;
typedef enum { SCHED_COSINE, SCHED_LINEAR, SCHED_CONSTANT } lr_sched;
typedef enum { DEV_ANY, DEV_CPU, DEV_CUDA } job_device;
/* Arithmetic of the frozen base's matmuls: auto = bf16 where the CPU or
 * GPU has bf16 units and the model is stored in 16 bits, else f32. */
typedef enum { CDT_AUTO, CDT_F32, CDT_BF16 } compute_dt;
typedef enum { TPL_AUTO, TPL_CHATML, TPL_LLAMA3, TPL_MISTRAL, TPL_ALPACA, TPL_PLAIN } chat_tpl;

typedef struct jobspec_file {
    char name[512];   /* dataset id (daemon) or a path (lora-worker run) */
    double weight;    /* mixing weight, default 1 */
} jobspec_file;

/* eval: one required section of the output format (worker/fmtcheck.h). */
typedef struct jobspec_section {
    char name[64];
    int bullets;          /* exact number of bullet lines in it; -1 = not checked */
    char ends_with[16];   /* its text must end with this; "" = not checked */
} jobspec_section;

/* eval: the format rules an output must follow to count as compliant. */
typedef struct jobspec_format {
    int n_sections;
    jobspec_section sections[JOBSPEC_MAX_SECTIONS];
    int in_order;         /* the sections appear in the listed order (default true) */
    int exact_headers;    /* headers as written: case and no space before ':' (default false) */
    int nothing_after;    /* the final section is the end: one line of text, nothing after (default false) */
    char regex[JOBSPEC_MAX_REGEX]; /* PCRE2 that must match somewhere; "" = none */
} jobspec_format;

typedef struct jobspec {
    char name[128];
    char model[512];                 /* registered model name, or a directory for lora-worker run */
    int n_training_files;
    jobspec_file training_files[JOBSPEC_MAX_FILES]; /* training_file: one id or a list of {file, weight} */
    char validation_file[512];       /* "" when none */

    struct {
        job_method type;
        double kl_lambda, kl_tau;    /* kl_sft */
        double beta;                 /* dpo */
        char reference_adapter[512]; /* dpo: "" = base model, else job id / adapter dir */
        char adapter[512];           /* eval: the adapter to evaluate: "" = base only, else job id / adapter dir */
    } method;

    struct {
        int n_epochs;                /* used when max_steps == 0 */
        int64_t max_steps;           /* 0 = derived from n_epochs */
        int batch_size, grad_accum;
        double learning_rate;
        lr_sched lr_scheduler;
        double warmup_ratio;
        int64_t warmup_steps;        /* wins over warmup_ratio when > 0 */
        double weight_decay, max_grad_norm;
        double adam_beta1, adam_beta2, adam_eps;
        int max_seq_len;
        int packing;                 /* 0: pad each micro-batch, 1: pack rows */
        double val_ratio;
        int logging_steps, eval_steps, save_steps, save_total_limit;
        uint64_t seed;
        int activation_checkpointing; /* -1 auto, 0 off, 1 on */
        /* stopping */
        int patience;                /* 0 = off: eval/train plateau early stop */
        double min_delta;
        int64_t min_steps;           /* no early stop before this step */
        double max_minutes;          /* 0 = no limit */
    } hp;

    struct {
        int r;
        double alpha, dropout;
        char targets[JOBSPEC_MAX_TARGETS][32]; /* expanded module names, e.g. "q_proj" */
        int n_targets;
        char target_set[16];         /* "attn", "attn_mlp", "all-linear" or "list" */
        int use_dora, use_rslora;
        /* QLoRA: the frozen base's linear weights quantized at load to 4
         * bits, as bitsandbytes: 0 none, 1 nf4, 2 fp4 (kernels/quant.h's
         * kq_type values); double_quant = bnb_4bit_use_double_quant. */
        int quantize, double_quant;
    } lora;

    struct {                         /* method eval */
        int max_rows;                /* rows of the file evaluated, 0 = all */
        struct {
            int max_new_tokens;
            double temperature;      /* 0 = greedy */
            double top_p;
            int top_k;               /* 0 = off */
            uint64_t seed;
            int n_stop;
            char stop[JOBSPEC_MAX_STOP][256];
        } generation;
        jobspec_format format;
    } eval;

    chat_tpl chat_template;
    char system_prompt[4096];        /* optional system message for every row */
    job_device device;
    int priority;                    /* -100..100, higher first */
    int max_retries;                 /* re-queues after a worker death, default 3 */
    struct {
        int devices;                 /* data-parallel ranks the job trains on (worker/dist.h), default 1 */
        /* 1 (default): the job may share a worker pass with other jobs on
         * the same base model (lorad's packing); 0: it trains alone. */
        int co_train;
    } resources;
    compute_dt compute_dtype;
} jobspec;

/* Fills every default. */
void jobspec_init(jobspec *s);
/* Validates a JSON object into s (defaults first). On error: message + param. */
int jobspec_from_json(const json_t *obj, jobspec *s, lr_err *err) LR_WARN_UNUSED;
/* The complete spec as a JSON object (new reference). */
json_t *jobspec_to_json(const jobspec *s);
/* YAML or JSON text (detected) into a JSON object; then use jobspec_from_json. */
int jobspec_parse_text(const char *text, size_t len, json_t **out, lr_err *err) LR_WARN_UNUSED;
/* The schema as proto/jobspec.c's table has it (new reference; GET /v1/jobspec):
 * {"object": "jobspec.schema", "fields": [...]}, one field per row in order, each
 * its JSON Schema property as proto/openapi.yaml writes it (type, enum, minimum,
 * maximum, exclusiveMinimum, maxLength, nullable, oneOf, default, description)
 * plus "path" (dotted), and where they hold "required", "auto" ("auto" accepted),
 * "form" (on the dashboard's submit form), "method" (the only method it applies to). */
json_t *jobspec_schema_json(void);
/* Applies "a.b.c=value" to a JSON document (value parsed as YAML scalar:
 * number, bool, null or string; "[a,b]" a list). */
int jobspec_set(json_t *doc, const char *assignment, lr_err *err) LR_WARN_UNUSED;

const char *jobspec_method_name(job_method m);
const char *jobspec_device_name(job_device d);
const char *jobspec_template_name(chat_tpl t);
const char *jobspec_sched_name(lr_sched s);
const char *jobspec_compute_dtype_name(compute_dt d);

#endif
