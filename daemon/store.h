/* store: lorad's SQLite database (one connection per thread).
 *
 * The database is opened in WAL mode with a busy timeout, so the HTTP
 * threads and the event loop each hold their own connection and write
 * concurrently. The schema comes from migrations/NNNN_name.sql, applied in
 * order and recorded in schema_migrations. Read functions return the REST
 * representation (jansson objects, new references) so the API layer does not
 * re-shape rows; write functions take plain values. Errors carry an LR_E_*
 * class (NOTFOUND, FORBIDDEN, CONFLICT) the API maps to a status. */
#ifndef LR_STORE_H
#define LR_STORE_H

#include <jansson.h>
#include <stdint.h>
#include "common/err.h"

typedef struct store store;

int store_open(const char *path, store **out, lr_err *err) LR_WARN_UNUSED;
void store_close(store *st);
/* Applies the migrations of dir not yet recorded; *applied counts them. */
int store_migrate(store *st, const char *dir, int *applied, lr_err *err) LR_WARN_UNUSED;
int store_begin(store *st, lr_err *err) LR_WARN_UNUSED;
int store_commit(store *st, lr_err *err) LR_WARN_UNUSED;
void store_rollback(store *st);

/* Copies the database, while lorad runs, into the new file dest (SQLite's
 * online backup API: one consistent snapshot; writers go on). The copy
 * records data_dir, where its datasets/, runs/ and models/ files live. */
int store_backup(store *st, const char *dest, const char *data_dir, lr_err *err) LR_WARN_UNUSED;
/* Makes data_dir/lorad.db from a store_backup file (LR_E_CONFLICT when it
 * exists), moving the recorded paths under the backup's data_dir to
 * data_dir. The files themselves are copied by the operator (README). */
int store_restore(const char *backup, const char *data_dir, lr_err *err) LR_WARN_UNUSED;

/* "<prefix>-<12 random hex digits>". */
void store_new_id(const char *prefix, char *out, size_t cap);
/* Unix time in seconds with sub-second part. */
double store_now(void);

/* users */
typedef struct store_user {
    char name[64];
    int admin;
} store_user;
/* token_hash: hex SHA-256. A duplicate name is LR_E_CONFLICT. */
int store_user_add(store *st, const char *name, int admin, const char *token_hash, lr_err *err) LR_WARN_UNUSED;
/* Finds the user whose token hash equals token_hash (an index lookup: see
 * store.c on why that is safe); LR_E_NOTFOUND when none. */
int store_user_auth(store *st, const char *token_hash, store_user *out, lr_err *err) LR_WARN_UNUSED;

/* worker tokens (remote workers, daemon/remote.c): add is LR_E_CONFLICT for
 * a taken name, rm LR_E_NOTFOUND for an unknown one; auth fills name (64
 * bytes) and is LR_E_NOTFOUND for a hash no worker token has. */
int store_worker_token_add(store *st, const char *name, const char *token_hash, lr_err *err) LR_WARN_UNUSED;
int store_worker_token_rm(store *st, const char *name, lr_err *err) LR_WARN_UNUSED;
int store_worker_token_auth(store *st, const char *token_hash, char *name, lr_err *err) LR_WARN_UNUSED;
/* 1 when path is a registered model's directory or inside one. */
int store_model_dir_holds(store *st, const char *path);

/* models */
/* Registers (or re-registers) a model. Its owner is the user of a pending
 * merge of that name (store_model_merge_begin; the record is used up), else
 * none: a model without owner is a base model every user may use. */
int store_model_add(store *st, const char *name, const char *dir, const json_t *info, lr_err *err) LR_WARN_UNUSED;
/* A merge into model name started (call it once the merge runs): the model
 * it registers belongs to user, also when it was registered just before.
 * merge_end forgets a record (an operator's `lorad model add` of the name). */
int store_model_merge_begin(store *st, const char *name, const char *user, const char *job, lr_err *err) LR_WARN_UNUSED;
int store_model_merge_end(store *st, const char *name, lr_err *err) LR_WARN_UNUSED;
/* The model's directory; LR_E_NOTFOUND when not registered. */
int store_model_dir(store *st, const char *name, char *dir, size_t cap, lr_err *err) LR_WARN_UNUSED;
/* The model's owner, "" when it has none; LR_E_NOTFOUND when not registered. */
int store_model_owner(store *st, const char *name, char *owner, size_t cap, lr_err *err) LR_WARN_UNUSED;
/* Unregisters a model (its shares too) and fills dir with its directory;
 * LR_E_CONFLICT while a queued or running job names it. */
int store_model_delete(store *st, const char *name, char *dir, size_t cap, lr_err *err) LR_WARN_UNUSED;
/* visible_to: NULL = all; else only the models without owner, that user's
 * and those shared with them. */
json_t *store_models_list(store *st, const char *visible_to, lr_err *err);

/* shares (visibility: private): kind is dataset, job or model (id = its
 * name). Sharing what does not exist, or with an unknown user, is
 * LR_E_NOTFOUND; on = 0 takes a share back. */
int store_share(store *st, const char *kind, const char *id, const char *user, int on, lr_err *err) LR_WARN_UNUSED;
/* 1 when kind id is shared with user. */
int store_shared(store *st, const char *kind, const char *id, const char *user);

/* datasets */
typedef struct store_dataset {
    /* kind: data_format_name(), the longest "prompt_completion" */
    char id[40], user[64], filename[256], format[8], kind[32];
    int64_t rows, bytes;
    int64_t duplicates; /* rows equal to an earlier row: a job trains on the first only */
    char path[1024];
    char purpose[32];   /* OpenAI's file purpose; "" is stored as "fine-tune" */
} store_dataset;
int store_dataset_add(store *st, const store_dataset *d, const json_t *info, lr_err *err) LR_WARN_UNUSED;
/* Fills d (when non-NULL) and *obj (the REST object, when non-NULL). */
int store_dataset_get(store *st, const char *id, store_dataset *d, json_t **obj, lr_err *err) LR_WARN_UNUSED;
/* visible_to: NULL = all; else that user's datasets and those shared with them. */
json_t *store_datasets_list(store *st, int limit, const char *after, const char *visible_to, lr_err *err);
/* /v1/files: purpose filters when non-NULL; ascending: oldest first (else
 * newest first); after = a file id. store_datasets_list is this without a
 * purpose, newest first. */
json_t *store_files_list(store *st, int limit, const char *after, const char *visible_to, const char *purpose,
                         int ascending, lr_err *err);
/* LR_E_CONFLICT while a queued or running job names it. */
int store_dataset_delete(store *st, const char *id, lr_err *err) LR_WARN_UNUSED;

/* jobs */
typedef struct store_job_new {
    const char *id, *name, *user, *model, *device, *spec_json, *sweep_id;
    const char *openai_json; /* the job's OpenAI fields (daemon/openai.h); NULL: none */
    int priority, max_retries;
} store_job_new;
int store_job_insert(store *st, const store_job_new *j, lr_err *err) LR_WARN_UNUSED;
json_t *store_job_get(store *st, const char *id, lr_err *err);
/* status, user, sweep_id filter when non-NULL; newest first; after = a job id. */
json_t *store_jobs_list(store *st, const char *status, const char *user, const char *sweep_id,
                        int limit, const char *after, lr_err *err);
/* The same page serialized as the response body (caller frees; *len its
 * length): each job's stored spec text, canonical JSON the API wrote, is
 * copied in, not parsed and re-encoded, which was most of a list's cost;
 * an item's text is kept (up to 1024 per store) and reused while its row is
 * byte for byte the same, which finished jobs' rows stay. */
#define STORE_LIST_TEXT_MAX (64 << 20)
char *store_jobs_list_text(store *st, const char *status, const char *user, const char *sweep_id, int limit,
                           const char *after, size_t *len, lr_err *err);
/* A queued job is cancelled at once (*running = 0); a running one is marked
 * for the loop to tell its worker (*running = 1). Only the owner or an admin:
 * LR_E_FORBIDDEN; a finished job: LR_E_CONFLICT. */
int store_job_cancel(store *st, const char *id, const store_user *who, int *running, lr_err *err) LR_WARN_UNUSED;

/* Jobs whose OpenAI metadata has key = value (GET /v1/fine_tuning/jobs?
 * metadata[key]=value), newest first, as store_jobs_list; key is
 * [A-Za-z0-9_.-] (LR_E_INVALID otherwise). */
json_t *store_jobs_list_meta(store *st, const char *user, const char *key, const char *value, int limit,
                             const char *after, lr_err *err);
/* Pause: a queued job is paused at once (*running = 0); a running one is
 * marked for the loop to suspend at a checkpoint (*running = 1). resume: a
 * paused job is queued again (it continues from its newest checkpoint); a
 * running job whose pause has not reached its worker yet just keeps
 * running. Owner or admin (LR_E_FORBIDDEN); other states LR_E_CONFLICT. */
int store_job_pause(store *st, const char *id, const store_user *who, int *running, lr_err *err) LR_WARN_UNUSED;
int store_job_resume(store *st, const char *id, const store_user *who, lr_err *err) LR_WARN_UNUSED;
/* Running jobs whose owner asked to pause them (and not to cancel). */
int store_jobs_pausing(store *st, char (*ids)[32], char (*workers)[64], int max, int *n, lr_err *err) LR_WARN_UNUSED;
/* The worker of a pausing job stopped at a checkpoint: running -> paused
 * (queued when it was resumed meanwhile). */
int store_job_paused(store *st, const char *id, lr_err *err) LR_WARN_UNUSED;

/* The scheduler's view. */
typedef struct store_qjob {
    char id[32], user[64], device[8];
    int priority;
    int64_t seq;
} store_qjob;
/* For each user and device class, that user's best per_group queued jobs
 * (highest priority, then oldest); all of them sorted highest priority then
 * oldest into *out (malloc'd, caller frees; *n entries, at most
 * STORE_QUEUED_MAX). One index seek per group, so a deep queue of one user
 * does not hide another user's jobs and the cost follows the number of
 * users, not the queue's depth. */
#define STORE_QUEUED_MAX 65536
int store_jobs_queued(store *st, int per_group, store_qjob **out, int *n, lr_err *err) LR_WARN_UNUSED;
/* For the per-user submission limits: *queued counts user's queued jobs;
 * *kth_created is the created_at (unix seconds) of the user's kth most
 * recent job, 0 when there are fewer than kth (or kth < 1). */
int store_user_queue(store *st, const char *user, int kth, int *queued, int64_t *kth_created,
                     lr_err *err) LR_WARN_UNUSED;
/* {user: running job count}. */
json_t *store_running_by_user(store *st, lr_err *err);
/* What an ASSIGN needs: spec JSON text (caller frees), model name, the
 * newest recorded checkpoint step (-1 when none). */
int store_job_for_assign(store *st, const char *id, char **spec_json, char *model, size_t cap,
                         int64_t *last_ckpt, lr_err *err) LR_WARN_UNUSED;
int store_job_start(store *st, const char *id, const char *worker, lr_err *err) LR_WARN_UNUSED;
/* status: succeeded | failed | cancelled. error_code/message may be NULL. */
int store_job_finish(store *st, const char *id, const char *status, const char *error_code,
                     const char *error_message, lr_err *err) LR_WARN_UNUSED;
/* A job a stopping rule ended (patience, max_minutes) succeeded; reason
 * (may be NULL) says why and becomes the job object's stop_reason. */
int store_job_stopped(store *st, const char *id, const char *reason, lr_err *err) LR_WARN_UNUSED;
/* A running job goes back to queued (retries + 1), or to failed with reason
 * when it has used max_retries; *failed tells which. */
int store_job_requeue(store *st, const char *id, const char *reason, int *failed, lr_err *err) LR_WARN_UNUSED;
/* The Slurm batch job running a job's current attempt and its state
 * (slurm_id NULL: none); shown as the job object's "slurm". */
int store_job_slurm(store *st, const char *id, const char *slurm_id, const char *state, lr_err *err) LR_WARN_UNUSED;
int store_job_progress(store *st, const char *id, int64_t step, int64_t total_steps, double epoch,
                       lr_err *err) LR_WARN_UNUSED;
/* A heartbeat of a job running in pack pack_id (issue 19), steps = the
 * steps it has run in that pack: records the membership (a new member
 * updates every member's list of the jobs it shared a pass with, the job
 * object's "pack") and the job's packed_steps, summed over its packs. */
int store_job_pack(store *st, const char *id, const char *pack_id, int64_t steps, lr_err *err) LR_WARN_UNUSED;
/* A running job goes back to queued without counting a retry (the daemon
 * stopped it on purpose, at a step boundary, to shut down). */
int store_job_release(store *st, const char *id, lr_err *err) LR_WARN_UNUSED;
/* Running jobs whose owner asked to cancel: ids and workers, at most max. */
int store_jobs_cancelling(store *st, char (*ids)[32], char (*workers)[64], int max, int *n,
                          lr_err *err) LR_WARN_UNUSED;
/* Running jobs (all of them, after a daemon restart): requeue each. */
int store_recover(store *st, int *requeued, lr_err *err) LR_WARN_UNUSED;

/* metrics, events, checkpoints */
int store_metric_add(store *st, const char *job, int64_t step, const char *name, double value,
                     double wall, lr_err *err) LR_WARN_UNUSED;
/* names: comma-separated filter or NULL; max_points 0 = all. Each series is
 * downsampled to at most max_points, keeping the first and last points. */
json_t *store_metrics_query(store *st, const char *job, int64_t after_step, const char *names,
                            int max_points, lr_err *err);
int store_event_add(store *st, const char *job, const char *level, const char *message, lr_err *err) LR_WARN_UNUSED;
json_t *store_events_list(store *st, const char *job, int64_t after, int limit, lr_err *err);
int store_checkpoint_add(store *st, const char *job, int64_t step, const char *dir, lr_err *err) LR_WARN_UNUSED;
/* Deletes the job's checkpoint rows whose directory is gone (the worker's
 * save_total_limit removed it). */
int store_checkpoints_prune(store *st, const char *job, lr_err *err) LR_WARN_UNUSED;
/* Only checkpoints whose directory still holds a complete one (its DONE
 * marker), so the list never names a deleted checkpoint. */
json_t *store_checkpoints_list(store *st, const char *job, lr_err *err);

/* sweeps */
int store_sweep_insert(store *st, const char *id, const char *user, const char *template_json,
                       const char *params_json, lr_err *err) LR_WARN_UNUSED;
json_t *store_sweep_get(store *st, const char *id, lr_err *err);

/* workers */
typedef struct store_worker {
    const char *name, *backend, *device, *status, *job_id, *version;
    int64_t pid, mem_bytes;
    int threads, restarts;
} store_worker;
int store_worker_set(store *st, const store_worker *w, lr_err *err) LR_WARN_UNUSED;
/* A heartbeat: the worker's last_seen becomes t (Unix seconds). */
int store_worker_seen(store *st, const char *name, double t, lr_err *err) LR_WARN_UNUSED;
int store_workers_clear(store *st, lr_err *err) LR_WARN_UNUSED;
json_t *store_workers_list(store *st, lr_err *err);

/* {"jobs": {status: n}, "queue_depth": n, "workers": {status: n},
 *  "packed_steps": steps run packed, all jobs, "packs_running": worker
 *  passes with two or more running jobs} */
json_t *store_stats(store *st, lr_err *err);

#endif
