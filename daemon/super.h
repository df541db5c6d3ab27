/* super: lorad's event loop: the scheduler, the worker socket, the worker
 * processes, signals and timers, all on one libuv loop (the main thread).
 *
 * Other threads reach it only through super_wake (uv_async_send), after
 * writing to the database: the loop then assigns queued jobs to idle
 * workers and forwards cancels, so submit -> assign needs no polling. A
 * worker that exits or misses heartbeats is killed and restarted with
 * back-off, and its jobs go back to the queue (resuming from their last
 * checkpoints) until max_retries. A worker whose hello offers room
 * (pack_max > 1) may run several jobs that share a base model in one pass
 * (issue 19, lorad.yaml packing; the choice is daemon/sched.h's): each job
 * has its own frames, cancel and outcome; an agent with no room for a job
 * it was sent answers FAILED with code busy, and the job goes back to the
 * queue without counting a retry. A worker still running a job
 * cancel_grace_s after its cancel is killed and restarted; the job ends
 * cancelled. A job's outcome is committed before its worker is free; a
 * failed commit (a full disk) is retried every heartbeat interval.
 * SIGTERM/SIGINT: stop accepting HTTP connections, ask running jobs to
 * checkpoint where they are and stop (they go back to queued and resume
 * from that checkpoint), wait up to shutdown_grace_s, stop the workers,
 * return. */
#ifndef LR_SUPER_H
#define LR_SUPER_H

#include "common/err.h"
#include "daemon/config.h"
#include "daemon/http.h"

typedef struct super super;

int super_init(super **out, const lorad_config *cfg, const char *db_path, lr_err *err) LR_WARN_UNUSED;
/* Thread-safe: ask the loop to look at the queue and at cancels. */
void super_wake(void *s);
/* Runs until a signal asks to stop; http is quiesced then. */
int super_run(super *s, http_server *http, lr_err *err) LR_WARN_UNUSED;
void super_free(super *s);

#endif
