/* agent: the worker's side of the daemon socket (`lora-worker agent`).
 *
 * Connects to lorad's Unix socket, says HELLO, then serves one job at a
 * time (or a pack of them, agent_opts.pack_max): an ASSIGN starts the job
 * in a thread through the run function
 * (job_run), whose hooks stream metric, event and checkpoint frames; the
 * end is a DONE or FAILED frame. CANCEL makes the job stop as soon as it
 * can (train.h's TRAIN_CANCEL); CANCEL with resume (lorad's shutdown) makes
 * it checkpoint and stop (TRAIN_SUSPEND); either ends as DONE "cancelled".
 * HELLO reports the threads the job will use (0 resolved to the CPU
 * count). Heartbeats (with the job's progress) go out every
 * heartbeat_s seconds. When the daemon goes away the job is stopped and the
 * agent exits: lorad restarts workers, and the job resumes from its last
 * checkpoint elsewhere. A remote agent (connect_url) dials lorad over TLS
 * and speaks the same frames through a relay thread. */
#ifndef LR_AGENT_H
#define LR_AGENT_H

#include "common/err.h"
#include "worker/train.h"

typedef int (*agent_run_fn)(const jobspec *spec, const train_paths *paths, const train_opts *opts,
                            const train_hooks *hooks, train_outcome *outcome, lr_err *err);

typedef struct agent_opts {
    const char *socket_path;
    const char *name;     /* the worker name lorad gave it */
    const char *backend;  /* "cpu" or "cuda:N" */
    int threads;
    int heartbeat_s;
    agent_run_fn run;     /* job_run, or a stand-in in tests */
    /* A remote worker (instead of socket_path): lorad's worker address
     * (https://HOST:PORT, proto/tlink.h), its worker token and a CA file
     * (NULL: the system's trust store). Unless shared_fs (the same paths on
     * every machine), a job's inputs are copied into data_dir's cache and
     * its run directory lives in data_dir/runs, its checkpoints and results
     * uploaded to lorad as they are written (worker/fetch.h). once: exit
     * after the first job (a batch scheduler's allocation). */
    const char *connect_url, *token, *ca_file, *data_dir;
    int shared_fs, once;
    struct dist *dist;    /* the ranks of this worker (worker/dist.h); NULL: one process */
    /* Co-training (worker/pack.h): up to pack_max plain LoRA sft jobs on
     * one base model train in one pass (0 or 1: one job at a time). An
     * ASSIGN while jobs run joins their pack at its next step when it fits
     * (pack_compatible, room), else it is answered FAILED LR_E_BUSY (lorad
     * requeues it); each job keeps its own frames, heartbeat (with the
     * pack) and cancel. HELLO says pack_max, or 1 where packing cannot run
     * (several ranks, files copied from a remote lorad). */
    int pack_max;
} agent_opts;

/* Returns when the daemon closes the connection (0) or on a protocol or
 * connection error (-1). */
int agent_run(const agent_opts *o, lr_err *err) LR_WARN_UNUSED;

/* The ranks of a worker started by mpirun (worker/agent_rank.c). Rank 0
 * sends each job to the others before it trains it, and "no more jobs"
 * when its agent ends; agent_follow is the other ranks' whole life: it
 * trains every job rank 0 sends and returns when told to stop. */
struct dist;
int agent_rank_send(struct dist *d, const char *job_id, const jobspec *spec, const train_paths *p, int resume,
                    lr_err *err) LR_WARN_UNUSED;
void agent_rank_quit(struct dist *d);
int agent_follow(const agent_opts *o, struct dist *d, lr_err *err) LR_WARN_UNUSED;

#endif
