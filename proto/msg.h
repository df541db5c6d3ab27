/* msg: the daemon <-> worker messages, built and parsed by both sides.
 *
 * Worker -> daemon: hello, heartbeat (with a running job's progress; an agent
 * running several jobs in one pass sends one per job, with the pack),
 * metric, event, checkpoint, done, failed. Daemon -> worker: assign, cancel,
 * ack (metrics up to seq are committed), heartbeat. Parsing checks every
 * field's type and range; strings point into the parsed JSON, which must
 * outlive the msg.
 *
 * How something ended travels as a code, never as words to match: DONE's
 * outcome (msg_outcome), FAILED's class of failure (lr_err's LR_E_* by name,
 * msg_code_name), and a lora-worker child's error object (msg_child_error),
 * so that the message stays free to say whatever helps the user. */
#ifndef LR_MSG_H
#define LR_MSG_H

#include <jansson.h>
#include <stdint.h>
#include "common/err.h"
#include "proto/jobspec.h"

#define MSG_PROTO_VERSION 1

typedef enum {
    MSG_HELLO, MSG_HEARTBEAT, MSG_METRIC, MSG_EVENT, MSG_CHECKPOINT, MSG_DONE, MSG_FAILED,
    MSG_ASSIGN, MSG_CANCEL, MSG_ACK, MSG_N_TYPES
} msg_type;

/* DONE's outcome; on the wire "succeeded", "cancelled", "stopped_early". */
typedef enum { MSG_SUCCEEDED, MSG_CANCELLED, MSG_STOPPED_EARLY, MSG_N_OUTCOMES } msg_outcome;

/* One struct per kind, so a reader sees which fields a kind has; msg_parse
 * fills only the union member its type names. "_body" keeps the names apart
 * from the builders (msg_hello() builds what msg_hello_body is parsed into). */
typedef struct {
    const char *worker, *backend;
    const char *device, *version; /* may be NULL */
    /* the CPU sgemm kernel in use ("OpenBLAS SkylakeX (avx512)"), may be NULL */
    const char *kernel;
    /* a remote worker: the name of its worker token, which lorad's relay
     * (daemon/remote.c) writes in after checking the token; else NULL */
    const char *remote;
    int64_t mem_bytes;
    int threads, proto;
    int pack_max; /* jobs the worker may co-train in one pass (absent: 1) */
} msg_hello_body;

typedef struct {
    int64_t step, total_steps; /* the job's progress (0 without a job) */
    double epoch;
    /* a job in a pack (issue 19): the pack's id (NULL when the job runs
     * alone), how many jobs share the pass now, and how many steps this job
     * has run packed */
    struct {
        const char *id;
        int jobs;
        int64_t steps;
    } pack;
} msg_heartbeat_body;

typedef struct {
    int64_t seq, step;
    double epoch, value; /* NAN when sent as null (a diverged loss) */
    const char *name;
} msg_metric_body;

typedef struct {
    const char *level, *message;
} msg_event_body;

typedef struct {
    int64_t step;
    const char *dir;
} msg_checkpoint_body;

typedef struct {
    msg_outcome outcome;
    const char *stop_reason; /* with MSG_STOPPED_EARLY: which rule ended the run (may be NULL) */
} msg_done_body;

typedef struct {
    int code; /* the class of the failure, LR_E_* (0: unclassified) */
    const char *error;
} msg_failed_body;

typedef struct {
    const json_t *spec;
    const char *model_dir, *run_dir;
    const char *validation_file, *reference_adapter_dir; /* may be NULL */
    const char *training_files[JOBSPEC_MAX_FILES];
    int n_training_files;
    int resume; /* continue from a checkpoint */
} msg_assign_body;

typedef struct {
    const char *reason; /* may be NULL */
    int resume;         /* checkpoint before stopping (msg_suspend) */
} msg_cancel_body;

typedef struct {
    int64_t seq; /* metrics up to seq are committed */
} msg_ack_body;

typedef struct msg {
    msg_type type;
    /* every job message; heartbeat: the running job or NULL; hello, ack: NULL */
    const char *job_id;
    union {
        msg_hello_body hello;
        msg_heartbeat_body heartbeat;
        msg_metric_body metric;
        msg_event_body event;
        msg_checkpoint_body checkpoint;
        msg_done_body done;
        msg_failed_body failed;
        msg_assign_body assign;
        msg_cancel_body cancel;
        msg_ack_body ack;
    };
} msg;

const char *msg_type_name(msg_type t);
const char *msg_outcome_name(msg_outcome o);

/* The wire name of an LR_E_* code ("invalid", "out_of_memory"...); 0 and
 * codes this side does not know are "error" (unclassified). */
const char *msg_code_name(int code);
/* The LR_E_* code of a wire name; 0 for "error" and for a name this side
 * does not know (a newer peer's class reads as unclassified). */
int msg_code_parse(const char *name);

/* Validates a decoded frame into m: type, job_id and the type's member. */
int msg_parse(const json_t *frame, msg *m, lr_err *err) LR_WARN_UNUSED;

/* Builders return a new reference (NULL only on out of memory). */
/* pack_max: jobs the worker co-trains in one pass at most (1: no packing). */
json_t *msg_hello(const char *worker, const char *backend, const char *device, int64_t mem_bytes,
                  int threads, const char *version, const char *kernel, int pack_max);
json_t *msg_heartbeat(const char *job_id, int64_t step, int64_t total_steps, double epoch);
/* The heartbeat of a job running in pack pack_id, with pack_jobs jobs in the
 * pass now and packed_steps steps this job has run packed. */
json_t *msg_heartbeat_pack(const char *job_id, int64_t step, int64_t total_steps, double epoch,
                           const char *pack_id, int pack_jobs, int64_t packed_steps);
json_t *msg_metric(const char *job_id, int64_t seq, int64_t step, double epoch, const char *name,
                   double value);
json_t *msg_event(const char *job_id, const char *level, const char *text);
json_t *msg_checkpoint(const char *job_id, int64_t step, const char *dir);
/* stop_reason: with MSG_STOPPED_EARLY only; NULL leaves it out. */
json_t *msg_done(const char *job_id, msg_outcome outcome, const char *stop_reason);
/* code: the failure's LR_E_* class (0: unclassified), sent as "code". */
json_t *msg_failed(const char *job_id, int code, const char *error);
/* spec is borrowed (copied into the frame). */
json_t *msg_assign(const char *job_id, const json_t *spec, const char *model_dir,
                   const char *const *training_files, int n_training_files,
                   const char *validation_file, const char *reference_adapter_dir,
                   const char *run_dir, int resume);
json_t *msg_cancel(const char *job_id, const char *reason);
/* A cancel with "resume": true: stop soon, checkpoint where it stopped, and
 * end as cancelled; the daemon queues the job again (its shutdown). */
json_t *msg_suspend(const char *job_id, const char *reason);
json_t *msg_ack(int64_t seq);

/* ---- lora-worker commands run as children (lorad's generate and merge) ----
 * With --json, a command that fails prints, as the last line of its stdout,
 * {"error": {"code": NAME, "param": INPUT or null, "message": TEXT}}: code
 * is the class (msg_code_name) and param names which of the command's own
 * inputs was refused ("prompt", "model", "adapter", "out"), so lorad tells
 * a request's fault from the server's without reading the words. The exit
 * status stays 2 (1 for a bad command line). */

/* The error object for err (new reference; NULL on out of memory). */
json_t *msg_child_error(const lr_err *err);
/* Reads an error object from the last line of out (a child's stdout) into
 * err: code, param and message. 0 when there is one, -1 (err untouched)
 * when there is none: the child died before saying why. */
int msg_child_error_parse(const char *out, size_t len, lr_err *err);

#endif
