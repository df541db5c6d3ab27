/* The ranks of an agent that lorad started with mpirun (a worker of N
 * ranks, for jobs with resources.devices N): rank 0 is the agent lorad
 * talks to; the others follow it. For each job rank 0 sends the spec and
 * the resolved paths over MPI before it trains, and every rank calls
 * the run function (job_run) with them (train.h: rank 0 alone calls the
 * hooks and writes).
 * When rank 0's agent ends it sends "no more jobs" and the followers exit
 * with it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/agent.h"
#include "worker/dist.h"

int agent_rank_send(struct dist *d, const char *job_id, const jobspec *spec, const train_paths *p, int resume,
                    lr_err *err) {
    if (dist_size(d) == 1) return 0;
    json_t *files = json_array();
    for (int i = 0; i < spec->n_training_files; i++) json_array_append_new(files, json_string(p->training_files[i]));
    json_t *doc = json_pack("{s:s,s:o,s:s,s:o,s:s?,s:s?,s:s,s:b}", "id", job_id, "spec", jobspec_to_json(spec),
                            "model_dir", p->model_dir, "files", files, "validation_file", p->validation_file,
                            "reference_adapter_dir", p->reference_adapter_dir, "run_dir", p->run_dir, "resume", resume);
    if (!doc) return lr_errf(err, "out of memory");
    int rc = dist_bcast_json(d, &doc, err);
    json_decref(doc);
    return rc;
}

void agent_rank_quit(struct dist *d) {
    if (dist_size(d) == 1 || dist_rank(d) != 0) return;
    json_t *none = NULL;
    lr_err e = {0};
    if (dist_bcast_json(d, &none, &e)) fprintf(stderr, "lora-worker: telling the other ranks to stop: %s\n", e.msg);
}

static const char *str_of(const json_t *doc, const char *key) {
    const char *s = json_string_value(json_object_get(doc, key));
    return s ? s : "";
}

/* One job of a follower: what rank 0 runs, with no hooks. */
static int follow_one(const agent_opts *o, struct dist *d, const json_t *doc, lr_err *err) {
    jobspec *spec = malloc(sizeof *spec);
    if (!spec) return lr_errf(err, "out of memory");
    int rc = -1;
    if (jobspec_from_json(json_object_get(doc, "spec"), spec, err)) goto done;
    train_paths p = {.model_dir = str_of(doc, "model_dir"), .run_dir = str_of(doc, "run_dir")};
    const json_t *files = json_object_get(doc, "files");
    for (size_t i = 0; i < json_array_size(files) && i < JOBSPEC_MAX_FILES; i++)
        p.training_files[i] = json_string_value(json_array_get(files, i));
    if (json_is_string(json_object_get(doc, "validation_file"))) p.validation_file = str_of(doc, "validation_file");
    if (json_is_string(json_object_get(doc, "reference_adapter_dir")))
        p.reference_adapter_dir = str_of(doc, "reference_adapter_dir");
    train_opts to = {.backend = o->backend, .threads = o->threads,
                     .resume = json_is_true(json_object_get(doc, "resume")), .dist = d};
    train_hooks none = {0};
    train_outcome out;
    rc = o->run(spec, &p, &to, &none, &out, err);
done:
    free(spec);
    return rc;
}

int agent_follow(const agent_opts *o, struct dist *d, lr_err *err) {
    for (;;) {
        json_t *doc = NULL;
        if (dist_bcast_json(d, &doc, err)) return -1;
        if (!doc) return 0; /* rank 0's agent ended */
        int rc = follow_one(o, d, doc, err);
        if (rc) {
            fprintf(stderr, "lora-worker %s rank %d: job %s: %s\n", o->name, dist_rank(d), str_of(doc, "id"), err->msg);
            json_decref(doc);
            /* rank 0 may wait for this rank in an exchange; when the failure
             * is the job's own (bad data), rank 0 failed the same way and
             * reports it meanwhile. Then the whole worker ends, like a dead
             * one, and lorad restarts it. */
            sleep(2);
            dist_abort(d);
        }
        json_decref(doc);
    }
}
