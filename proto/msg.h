/* msg: the daemon <-> worker messages, built and parsed by both sides.
 *
 * Worker -> daemon: hello, heartbeat (with the running job's progress),
 * metric, event, checkpoint, done, failed. Daemon -> worker: assign, cancel,
 * ack (metrics up to seq are committed), heartbeat. Parsing checks every
 * field's type and range; strings point into the parsed JSON, which must
 * outlive the msg. */
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

typedef struct msg {
    msg_type type;
    const char *job_id;      /* every job message; heartbeat: the running job or NULL */
    /* hello; kernel: the CPU sgemm kernel in use ("OpenBLAS SkylakeX (avx512)"), may be NULL */
    const char *worker, *backend, *device, *version, *kernel;
    int64_t mem_bytes;
    int threads, proto;
    /* metric, checkpoint, heartbeat progress */
    int64_t seq, step, total_steps;
    double epoch, value;
    const char *name;        /* metric name */
    /* event / failed / cancel */
    const char *level, *text; /* event level and message; failed: the error; cancel: reason */
    const char *dir;         /* checkpoint directory */
    const char *outcome;     /* done: "succeeded", "cancelled", "stopped_early" */
    const char *stop_reason; /* done with "stopped_early": which rule ended the run (may be NULL) */
    /* assign */
    const json_t *spec;
    const char *model_dir, *validation_file, *reference_adapter_dir, *run_dir;
    const char *training_files[JOBSPEC_MAX_FILES];
    int n_training_files;
    int resume;              /* assign: continue from a checkpoint; cancel: checkpoint before stopping */
} msg;

const char *msg_type_name(msg_type t);

/* Validates a decoded frame into m. */
int msg_parse(const json_t *frame, msg *m, lr_err *err) LR_WARN_UNUSED;

/* Builders return a new reference (NULL only on out of memory). */
json_t *msg_hello(const char *worker, const char *backend, const char *device, int64_t mem_bytes,
                  int threads, const char *version, const char *kernel);
json_t *msg_heartbeat(const char *job_id, int64_t step, int64_t total_steps, double epoch);
json_t *msg_metric(const char *job_id, int64_t seq, int64_t step, double epoch, const char *name,
                   double value);
json_t *msg_event(const char *job_id, const char *level, const char *text);
json_t *msg_checkpoint(const char *job_id, int64_t step, const char *dir);
/* stop_reason: with outcome "stopped_early" only; NULL leaves it out. */
json_t *msg_done(const char *job_id, const char *outcome, const char *stop_reason);
json_t *msg_failed(const char *job_id, const char *error);
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

#endif
