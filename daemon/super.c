/* super.c: lorad's event loop (daemon/super.h).
 * Why this file is long: frames, worker connections, worker processes,
 * scheduling and shutdown all work on one state (the workers, their
 * connections and jobs) owned by the loop thread; splitting them would
 * share that state through a header of internals. */
#include "daemon/super.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "common/buf.h"
#include "daemon/sched.h"
#include "daemon/slurm.h"
#include "daemon/store.h"
#include "proto/frame.h"
#include "proto/jobspec.h"
#include "proto/msg.h"
#include "proto/pack.h"

#define STABLE_RUN_MS 60000 /* a worker up this long resets its back-off */
/* Slots: the configured workers, then remote ones (daemon/remote.h) as they connect. */
#define REMOTE_SLOTS 48
#define MAX_SLOTS (CONFIG_MAX_WORKERS + REMOTE_SLOTS)
#define SLURM_MAX_JOBS 256  /* jobs in Slurm at once (more wait in lorad's queue) */
#define JOIN_BACKOFF_MS 30000 /* a worker that said busy to a join gets no other for this long */

typedef enum { W_STARTING, W_IDLE, W_BUSY, W_DEAD } wstate;
static const char *const wstate_names[] = {"starting", "idle", "busy", "dead"};

typedef struct conn conn;

/* How a job ended, as its worker said, kept until it is committed. */
/* OUT_BUSY: the worker had no room to join it to its pass (code busy). */
typedef enum { OUT_NONE, OUT_SUCCEEDED, OUT_STOPPED, OUT_CANCELLED, OUT_FAILED, OUT_SUSPENDED, OUT_PAUSED, OUT_BUSY } outcome;

/* A job on a worker; a worker co-training a pack holds several. */
typedef struct wjob {
    char id[32];
    int cancel_sent;
    int pause_sent;           /* its owner paused the job: a suspend went out */
    uint64_t cancel_at;       /* when the cancel went out: the kill deadline counts from here */
    int64_t ckpt_step;        /* the job's newest checkpoint in this run, -1 none */
    /* The job stays on its worker until its outcome is in the database, so
     * a failed commit (a full disk) is retried instead of losing the job. */
    outcome pend;
    char pend_text[512];      /* failed: the error; stopped: the reason; cancelled: the event */
    int pend_tries;
} wjob;

typedef struct wslot {
    super *s;
    char name[64];
    int remote;               /* a remote worker's connection, no process of lorad's */
    config_worker conf;
    uv_process_t proc;
    int proc_alive;
    uv_timer_t restart_timer;
    conn *c;
    wstate state;
    wjob jobs[CONFIG_MAX_PACK];
    int njobs;
    char pack_key[PACK_KEY_MAX]; /* its jobs' pack key (proto/pack.h); "" when they never pack */
    int pack_max;             /* jobs its hello says one pass may hold */
    char session[96];         /* "<name>-<hello time>": makes the agent's pack ids unique */
    uint64_t no_join_until;   /* it said busy to a join: none before this */
    int quick_restart;        /* killed on purpose: restart without back-off */
    uint64_t last_seen, spawned_at;
    int restarts, backoff_s;
    char device[128], version[64];
    int64_t mem_bytes;
    int threads;
} wslot;

struct conn {
    uv_pipe_t pipe;
    super *s;
    frame_dec dec;
    wslot *w;
    int closing;
};

struct super {
    const lorad_config *cfg;
    uv_loop_t loop;
    store *st;
    uv_pipe_t server;
    uv_async_t wake;
    uv_timer_t tick, grace;
    uv_signal_t sigterm, sigint;
    http_server *http;
    char sock_path[108];
    int n;
    wslot w[MAX_SLOTS];
    /* jobs lorad has put through Slurm, while they are queued or running */
    struct ssub {
        char job[32], id[32], state[32]; /* id "": none submitted now */
        char user[64];
        int tries;                      /* batch jobs that ended before its worker took the job */
        int started;                    /* its worker took the job in this attempt */
    } subs[SLURM_MAX_JOBS];
    int nsubs;
    /* wake is initialised: HTTP threads start before the loop does, and a
     * uv_async_send on an uninitialised handle crashed lorad (a submission
     * right after start on a loaded machine); run's first schedule() sees
     * whatever was submitted before */
    atomic_int ready;
    int shutting_down, stopping;
};

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lorad: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void schedule(super *s);
static void spawn_worker(wslot *w);
static void maybe_finish_shutdown(super *s);

static void job_event(super *s, const char *job, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void job_event(super *s, const char *job, const char *level, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lr_err e = {0};
    if (store_event_add(s->st, job, level, msg, &e)) logf_("recording an event of %s: %s", job, e.msg);
}

static void save_worker(wslot *w) {
    lr_err e = {0};
    /* a pack's first job names it (the job pages list the others) */
    store_worker sw = {.name = w->name, .backend = w->conf.backend, .device = w->device,
                       .status = wstate_names[w->state], .job_id = w->njobs ? w->jobs[0].id : "", .version = w->version,
                       .pid = w->proc_alive ? w->proc.pid : 0, .mem_bytes = w->mem_bytes, .threads = w->threads,
                       .restarts = w->restarts};
    if (store_worker_set(w->s->st, &sw, &e)) logf_("worker %s: %s", w->name, e.msg);
}

/* ---- writing frames ---- */

typedef struct wreq {
    uv_write_t req;
    char *data;
} wreq;

static void on_written(uv_write_t *req, int status) {
    wreq *r = (wreq *)req;
    (void)status; /* a failed write shows up as a read error / EOF too */
    free(r->data);
    free(r);
}

static void conn_close(conn *c);
static void remote_gone(wslot *w);

static void send_msg(conn *c, json_t *m) {
    if (!c || c->closing || !m) {
        json_decref(m);
        return;
    }
    lr_buf b;
    lr_buf_init(&b, FRAME_MAX + 4);
    lr_err e = {0};
    int rc = frame_encode(m, &b, &e);
    json_decref(m);
    wreq *r = malloc(sizeof *r);
    if (rc || !r) {
        logf_("cannot send a frame: %s", rc ? e.msg : "out of memory");
        lr_buf_free(&b);
        free(r);
        conn_close(c);
        return;
    }
    size_t len;
    r->data = lr_buf_take(&b, &len);
    uv_buf_t ub = uv_buf_init(r->data, (unsigned)len);
    if (uv_write(&r->req, (uv_stream_t *)&c->pipe, &ub, 1, on_written)) {
        free(r->data);
        free(r);
        conn_close(c);
    }
}

/* ---- connections ---- */

static void on_conn_closed(uv_handle_t *h) {
    conn *c = h->data;
    frame_dec_free(&c->dec);
    free(c);
}

static void conn_close(conn *c) {
    if (c->closing) return;
    c->closing = 1;
    if (c->w && c->w->c == c) {
        wslot *w = c->w;
        w->c = NULL;
        /* The process is what counts: a worker without its socket is
         * useless, so end it; its exit requeues the job and restarts it. */
        if (w->proc_alive) uv_process_kill(&w->proc, SIGKILL);
        else if (w->remote) remote_gone(w);
    }
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

static wjob *slot_job(wslot *w, const char *id) {
    for (int i = 0; id && i < w->njobs; i++)
        if (!strcmp(w->jobs[i].id, id)) return &w->jobs[i];
    return NULL;
}

/* j leaves its worker; the worker is free when it was the last. */
static void job_ended(wslot *w, wjob *j) {
    *j = w->jobs[--w->njobs];
    if (!w->njobs) {
        w->pack_key[0] = 0;
        if (w->state == W_BUSY) w->state = W_IDLE; /* not a worker that died meanwhile */
    }
    save_worker(w);
}

/* The worker is gone: every job on it whose outcome is not known goes back
 * to the queue (a job whose outcome is known but not recorded keeps it). */
static void requeue_jobs(super *s, wslot *w, const char *why) {
    for (int i = w->njobs - 1; i >= 0; i--) {
        wjob *j = &w->jobs[i];
        if (j->pend != OUT_NONE) continue;
        lr_err e = {0};
        int failed = 0;
        if (store_job_requeue(s->st, j->id, why, &failed, &e)) logf_("requeue %s: %s", j->id, e.msg);
        else if (failed) job_event(s, j->id, "error", "%s; the job is not retried", why);
        else job_event(s, j->id, "warning", "%s; the job is queued again and resumes from its last checkpoint", why);
        job_ended(w, j);
    }
}

/* Writes j's pending outcome and its event in one transaction; only then
 * does it leave the worker. On failure the outcome stays pending and
 * on_tick retries. */
static int settle(wslot *w, wjob *j) {
    super *s = w->s;
    lr_err e = {0};
    char ev[700];
    const char *level = "info";
    if (store_begin(s->st, &e)) goto fail;
    int rc = 0;
    switch (j->pend) {
    case OUT_SUCCEEDED:
        rc = store_job_finish(s->st, j->id, "succeeded", NULL, NULL, &e);
        snprintf(ev, sizeof ev, "job succeeded");
        break;
    case OUT_STOPPED:
        rc = store_job_stopped(s->st, j->id, j->pend_text[0] ? j->pend_text : NULL, &e);
        snprintf(ev, sizeof ev, "job succeeded (stopped early)");
        break;
    case OUT_CANCELLED:
        rc = store_job_finish(s->st, j->id, "cancelled", NULL, NULL, &e);
        snprintf(ev, sizeof ev, "%s", j->pend_text[0] ? j->pend_text : "job cancelled");
        break;
    case OUT_FAILED:
        rc = store_job_finish(s->st, j->id, "failed", "training_failed", j->pend_text, &e);
        snprintf(ev, sizeof ev, "job failed: %s", j->pend_text);
        level = "error";
        break;
    case OUT_SUSPENDED:
        rc = store_job_release(s->st, j->id, &e);
        if (j->ckpt_step > 0)
            snprintf(ev, sizeof ev, "stopped for shutdown; will resume from the checkpoint at step %lld",
                     (long long)j->ckpt_step);
        else snprintf(ev, sizeof ev, "stopped for shutdown before its first checkpoint; will start again");
        break;
    case OUT_BUSY:
        rc = store_job_release(s->st, j->id, &e);
        snprintf(ev, sizeof ev, "worker %s had no room for it in its pass; queued again (not a retry)", w->name);
        break;
    case OUT_PAUSED:
        rc = store_job_paused(s->st, j->id, &e);
        if (j->ckpt_step > 0)
            snprintf(ev, sizeof ev, "paused at the checkpoint of step %lld; resume continues from it",
                     (long long)j->ckpt_step);
        else snprintf(ev, sizeof ev, "paused before its first checkpoint; resume starts it again");
        break;
    case OUT_NONE:
        store_rollback(s->st);
        return 0;
    }
    if (rc || store_event_add(s->st, j->id, level, ev, &e) || store_commit(s->st, &e)) {
        store_rollback(s->st);
        goto fail;
    }
    if (j->pend_tries) logf_("recorded the outcome of %s after %d failed tries", j->id, j->pend_tries);
    job_ended(w, j);
    return 0;
fail:
    if (!j->pend_tries++)
        logf_("cannot record the outcome of %s (%s); retrying every %d s", j->id, e.msg, s->cfg->heartbeat_interval_s);
    return -1;
}

static void settle_all(super *s) {
    for (int i = 0; i < s->n; i++)
        for (int k = s->w[i].njobs - 1; k >= 0; k--)
            if (s->w[i].jobs[k].pend != OUT_NONE) (void)settle(&s->w[i], &s->w[i].jobs[k]);
}

/* A DONE or FAILED frame: what to record (settle does, after the frames
 * of this read are committed). */
static void note_outcome(wslot *w, wjob *j, const msg *m) {
    super *s = w->s;
    j->pend_text[0] = 0;
    /* The shutdown asked it to stop: whatever it says, it goes back to the queue. */
    int shutdown = s->shutting_down && !j->cancel_sent;
    if (m->type == MSG_FAILED && m->failed.code == LR_E_BUSY && !j->cancel_sent) {
        /* no room in its pass: not the job's failure; no joins for a while */
        j->pend = shutdown ? OUT_SUSPENDED : OUT_BUSY;
        w->no_join_until = uv_now(&s->loop) + JOIN_BACKOFF_MS;
    } else if (m->type == MSG_FAILED) {
        j->pend = shutdown ? OUT_SUSPENDED : OUT_FAILED;
        snprintf(j->pend_text, sizeof j->pend_text, "%s", m->failed.error);
    } else if (m->done.outcome == MSG_CANCELLED) {
        j->pend = shutdown ? OUT_SUSPENDED : j->pause_sent && !j->cancel_sent ? OUT_PAUSED : OUT_CANCELLED;
    } else if (m->done.outcome == MSG_STOPPED_EARLY) {
        j->pend = OUT_STOPPED;
        snprintf(j->pend_text, sizeof j->pend_text, "%s", m->done.stop_reason ? m->done.stop_reason : "");
    } else {
        j->pend = OUT_SUCCEEDED;
    }
}

/* A remote worker's connection ended: its job goes back to the queue, as a
 * dead local worker's does; the slot waits for the next remote hello. */
static void remote_gone(wslot *w) {
    super *s = w->s;
    char why[160];
    snprintf(why, sizeof why, "remote worker %s disconnected", w->name);
    if (!s->stopping) logf_("%s", why);
    if (!s->stopping) requeue_jobs(s, w, why);
    w->state = W_DEAD;
    save_worker(w);
}

/* The slot of a remote worker's hello: its old one when it comes back, else
 * a free one; NULL when that name is connected already or all are taken. */
static wslot *remote_slot(super *s, const msg_hello_body *h) {
    char name[64];
    wslot *free_slot = NULL;
    snprintf(name, sizeof name, "%s", h->worker);
    for (int i = 0; i < s->n; i++) {
        wslot *w = &s->w[i];
        if (!strcmp(w->name, name)) return w->remote && !w->c && !w->njobs ? w : NULL;
        if (!free_slot && w->remote && !w->c && !w->njobs) free_slot = w;
    }
    if (!free_slot && s->n < MAX_SLOTS) free_slot = &s->w[s->n++];
    if (!free_slot) return NULL;
    memset(free_slot, 0, sizeof *free_slot);
    free_slot->s = s;
    free_slot->remote = 1;
    snprintf(free_slot->name, sizeof free_slot->name, "%s", name);
    snprintf(free_slot->conf.backend, sizeof free_slot->conf.backend, "%s", h->backend);
    return free_slot;
}

/* Remote workers have no process to watch: a silent one is disconnected. */
static void remote_tick(super *s, uint64_t now, uint64_t limit) {
    for (int i = 0; i < s->n; i++) {
        wslot *w = &s->w[i];
        if (!w->remote || !w->c) continue;
        if (now - w->last_seen > limit) {
            logf_("remote worker %s missed its heartbeats for %d s; disconnecting it", w->name,
                  s->cfg->heartbeat_timeout_s);
            conn_close(w->c);
        } else {
            send_msg(w->c, msg_heartbeat(NULL, 0, 0, 0));
        }
    }
}

static void handle_msg(conn *c, const msg *m, int64_t *ack) {
    super *s = c->s;
    wslot *w = c->w;
    lr_err e = {0};
    if (!w) {
        if (m->type != MSG_HELLO) {
            logf_("worker connection sent %s before hello; closing it", msg_type_name(m->type));
            conn_close(c);
            return;
        }
        const msg_hello_body *h = &m->hello;
        if (h->remote) w = remote_slot(s, h);
        else
            for (int i = 0; i < s->n; i++)
                if (!strcmp(s->w[i].name, h->worker) && s->w[i].proc_alive && !s->w[i].c) w = &s->w[i];
        if (!w) {
            logf_("hello from unknown or duplicate worker '%s'; closing it", h->worker);
            conn_close(c);
            return;
        }
        c->w = w;
        w->c = c;
        w->state = W_IDLE;
        w->last_seen = uv_now(&s->loop);
        if (h->remote) snprintf(w->device, sizeof w->device, "%s (remote, token %s)", h->device ? h->device : "", h->remote);
        else snprintf(w->device, sizeof w->device, "%s", h->device ? h->device : "");
        snprintf(w->version, sizeof w->version, "%s", h->version ? h->version : "");
        w->mem_bytes = h->mem_bytes;
        w->threads = h->threads;
        w->pack_max = h->pack_max;
        w->no_join_until = 0;
        snprintf(w->session, sizeof w->session, "%s-%llx", w->name, (unsigned long long)(store_now() * 1000));
        save_worker(w);
        logf_("worker %s ready (%s, %s)", w->name, w->conf.backend, w->device);
        schedule(s);
        return;
    }
    w->last_seen = uv_now(&s->loop);
    wjob *j = slot_job(w, m->job_id);
    if (m->type == MSG_HEARTBEAT) {
        const msg_heartbeat_body *hb = &m->heartbeat;
        if (j && hb->total_steps > 0 && store_job_progress(s->st, j->id, hb->step, hb->total_steps, hb->epoch, &e))
            logf_("progress of %s: %s", j->id, e.msg);
        if (j && hb->pack.id) {
            /* the agent's pack ids are its own: this connection's session makes them lorad's */
            char pack[192];
            snprintf(pack, sizeof pack, "%s-%s", w->session, hb->pack.id);
            if (store_job_pack(s->st, j->id, pack, hb->pack.steps, &e)) logf_("pack of %s: %s", j->id, e.msg);
        }
        if (store_worker_seen(s->st, w->name, store_now(), &e)) logf_("worker %s: %s", w->name, e.msg);
        return;
    }
    if (m->type == MSG_HELLO || m->type == MSG_ASSIGN || m->type == MSG_CANCEL || m->type == MSG_ACK) {
        logf_("worker %s sent an unexpected %s; closing it", w->name, msg_type_name(m->type));
        conn_close(c);
        return;
    }
    if (!j || j->pend != OUT_NONE) {
        logf_("worker %s sent %s for %s, which it does not run; ignored", w->name, msg_type_name(m->type), m->job_id);
        return;
    }
    switch (m->type) {
    case MSG_METRIC:
        if (store_metric_add(s->st, j->id, m->metric.step, m->metric.name, m->metric.value, store_now(), &e))
            logf_("metric of %s: %s", j->id, e.msg);
        else if (m->metric.seq > *ack) *ack = m->metric.seq;
        break;
    case MSG_EVENT:
        job_event(s, j->id, m->event.level, "%s", m->event.message);
        break;
    case MSG_CHECKPOINT:
        /* save_total_limit deleted the older ones: the list shows what exists */
        if (store_checkpoint_add(s->st, j->id, m->checkpoint.step, m->checkpoint.dir, &e) ||
            store_checkpoints_prune(s->st, j->id, &e))
            logf_("checkpoint of %s: %s", j->id, e.msg);
        if (m->checkpoint.step > j->ckpt_step) j->ckpt_step = m->checkpoint.step;
        break;
    case MSG_DONE:
    case MSG_FAILED:
        note_outcome(w, j, m);
        break;
    default:
        break;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)h;
    if (suggested > 65536) suggested = 65536;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    conn *c = stream->data;
    super *s = c->s;
    lr_err e = {0};
    if (nread < 0) {
        free(buf->base);
        if (c->w) logf_("worker %s closed its connection", c->w->name);
        conn_close(c);
        return;
    }
    if (nread == 0 || c->closing) {
        free(buf->base);
        return;
    }
    int rc = frame_dec_feed(&c->dec, buf->base, (size_t)nread, &e);
    free(buf->base);
    /* Every frame of this read in one transaction; acks go out after the
     * commit, so an acknowledged metric is on disk. */
    int64_t ack = -1;
    int in_tx = rc == 0 && store_begin(s->st, &e) == 0;
    json_t *j = NULL;
    while (rc == 0 && !c->closing && (rc = frame_dec_next(&c->dec, &j, &e)) == 1) {
        msg m;
        if (msg_parse(j, &m, &e)) {
            logf_("protocol error from %s: %s", c->w ? c->w->name : "a new connection", e.msg);
            json_decref(j);
            conn_close(c);
            break;
        }
        handle_msg(c, &m, &ack);
        json_decref(j);
        rc = 0;
    }
    if (in_tx && store_commit(s->st, &e)) {
        logf_("commit: %s", e.msg);
        store_rollback(s->st);
        ack = -1;
    }
    if (rc < 0) {
        logf_("protocol error from %s: %s", c->w ? c->w->name : "a new connection", e.msg);
        conn_close(c);
    }
    if (ack >= 0 && !c->closing) send_msg(c, msg_ack(ack));
    settle_all(s);
    schedule(s);
    maybe_finish_shutdown(s);
}

static void on_connection(uv_stream_t *server, int status) {
    super *s = server->data;
    if (status < 0) return;
    conn *c = calloc(1, sizeof *c);
    if (!c) return;
    c->s = s;
    frame_dec_init(&c->dec, FRAME_MAX);
    uv_pipe_init(&s->loop, &c->pipe, 0);
    c->pipe.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) || s->stopping) {
        c->closing = 1;
        uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
        return;
    }
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

/* ---- worker processes ---- */

static void on_proc_closed(uv_handle_t *h) { (void)h; }

static void on_restart_timer(uv_timer_t *t) {
    wslot *w = t->data;
    if (!w->s->shutting_down) spawn_worker(w);
}

static void on_worker_exit(uv_process_t *p, int64_t status, int sig) {
    wslot *w = p->data;
    super *s = w->s;
    w->proc_alive = 0;
    uv_close((uv_handle_t *)p, on_proc_closed);
    char why[160];
    if (sig) snprintf(why, sizeof why, "worker %s was killed by signal %d", w->name, sig);
    else snprintf(why, sizeof why, "worker %s exited with status %lld", w->name, (long long)status);
    if (!s->stopping) logf_("%s", why);
    if (w->c) {
        conn *c = w->c;
        w->c = NULL;
        c->w = NULL;
        conn_close(c);
    }
    /* A job whose outcome is known but not yet recorded keeps it. */
    if (!s->stopping) requeue_jobs(s, w, why);
    w->state = W_DEAD;
    save_worker(w);
    if (s->shutting_down) {
        maybe_finish_shutdown(s);
        return;
    }
    uint64_t up = uv_now(&s->loop) - w->spawned_at;
    w->backoff_s = up > STABLE_RUN_MS || w->quick_restart ? 1 : (w->backoff_s ? w->backoff_s * 2 : 1);
    w->quick_restart = 0;
    if (w->backoff_s > s->cfg->restart_backoff_max_s) w->backoff_s = s->cfg->restart_backoff_max_s;
    w->restarts++;
    uv_timer_start(&w->restart_timer, on_restart_timer, (uint64_t)w->backoff_s * 1000, 0);
    schedule(s);
}

static void spawn_worker(wslot *w) {
    super *s = w->s;
    char threads[16], hb[16];
    snprintf(threads, sizeof threads, "%d", w->conf.threads ? w->conf.threads : s->cfg->worker_threads);
    snprintf(hb, sizeof hb, "%d", s->cfg->heartbeat_interval_s);
    char *agent[] = {(char *)s->cfg->worker_bin, "agent", "--socket", s->sock_path, "--backend", w->conf.backend,
                     "--threads", threads, "--name", w->name, "--heartbeat", hb, NULL};
    /* A worker of N ranks (NxBACKEND) is N agents under mpirun; rank 0
     * connects, the others follow it (worker/agent_rank.c). Not bound to
     * cores: each rank runs its own threads. Killing mpirun ends the
     * ranks (they die with their parent). */
    char np[16], *args[32];
    int na = 0;
    snprintf(np, sizeof np, "%d", w->conf.ranks);
    if (w->conf.ranks > 1) {
        args[na++] = "mpirun";
        if (geteuid() == 0) args[na++] = "--allow-run-as-root";
        args[na++] = "--oversubscribe";
        args[na++] = "--bind-to";
        args[na++] = "none";
        args[na++] = "-np";
        args[na++] = np;
    }
    for (size_t i = 0; i < sizeof agent / sizeof agent[0]; i++) args[na++] = agent[i];
    uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE}, {.flags = UV_INHERIT_FD, .data.fd = 2},
                                     {.flags = UV_INHERIT_FD, .data.fd = 2}};
    uv_process_options_t o = {.file = args[0], .args = args, .exit_cb = on_worker_exit, .stdio_count = 3,
                              .stdio = stdio};
    w->proc.data = w;
    w->state = W_STARTING;
    w->spawned_at = w->last_seen = uv_now(&s->loop);
    int rc = uv_spawn(&s->loop, &w->proc, &o);
    if (rc) {
        /* uv_spawn initialised the handle even on failure; close it and
         * retry later like a crash. */
        logf_("cannot start worker %s (%s): %s", w->name, s->cfg->worker_bin, uv_strerror(rc));
        uv_close((uv_handle_t *)&w->proc, on_proc_closed);
        w->state = W_DEAD;
        w->backoff_s = w->backoff_s ? w->backoff_s * 2 : 1;
        if (w->backoff_s > s->cfg->restart_backoff_max_s) w->backoff_s = s->cfg->restart_backoff_max_s;
        uv_timer_start(&w->restart_timer, on_restart_timer, (uint64_t)w->backoff_s * 1000, 0);
    } else {
        w->proc_alive = 1;
    }
    save_worker(w);
}

/* ---- scheduling ---- */

static int resolve_dataset(super *s, const char *id, char *path, size_t cap, lr_err *e) {
    store_dataset d;
    if (store_dataset_get(s->st, id, &d, NULL, e)) return lr_err_prefix(e, "dataset: ");
    snprintf(path, cap, "%s", d.path);
    return 0;
}

/* A worker of NxBACKEND has N ranks; the others one. */
static int slot_ranks(const wslot *w) { return w->conf.ranks > 1 ? w->conf.ranks : 1; }

static int assign(super *s, wslot *w, const char *id) {
    lr_err e = {0};
    char *spec_txt = NULL, model[512], model_dir[1024], run_dir[1200], ref_dir[1700], val[1024];
    char files[JOBSPEC_MAX_FILES][1024];
    const char *fp[JOBSPEC_MAX_FILES];
    int64_t last_ckpt = -1;
    json_t *spec_json = NULL;
    jobspec *spec = malloc(sizeof *spec);
    int rc = -1;
    if (!spec) goto out;
    if (store_job_for_assign(s->st, id, &spec_txt, model, sizeof model, &last_ckpt, &e)) goto bad;
    spec_json = json_loads(spec_txt, 0, NULL);
    if (!spec_json || jobspec_from_json(spec_json, spec, &e)) goto bad;
    if (store_model_dir(s->st, model, model_dir, sizeof model_dir, &e)) goto bad;
    for (int i = 0; i < spec->n_training_files; i++) {
        if (resolve_dataset(s, spec->training_files[i].name, files[i], sizeof files[i], &e)) goto bad;
        fp[i] = files[i];
    }
    if (spec->validation_file[0] && resolve_dataset(s, spec->validation_file, val, sizeof val, &e)) goto bad;
    snprintf(run_dir, sizeof run_dir, "%s/runs/%s", s->cfg->data_dir, id);
    if (lr_mkdirs(run_dir, &e)) goto bad;
    const char *ref = NULL;
    /* dpo's reference adapter, or the adapter an eval job evaluates */
    const char *ref_id = spec->method.reference_adapter[0] ? spec->method.reference_adapter : spec->method.adapter;
    if (ref_id[0]) {
        /* A job id names that job's adapter; nothing else is a server path
         * a user may choose. */
        if (strncmp(ref_id, "ftjob-", 6) || strchr(ref_id, '/')) {
            lr_errf(&e, "method.%s must be the id of a finished job",
                    spec->method.reference_adapter[0] ? "reference_adapter" : "adapter");
            goto bad;
        }
        snprintf(ref_dir, sizeof ref_dir, "%s/runs/%s", s->cfg->data_dir, ref_id);
        ref = ref_dir;
    }
    char ck[1300];
    snprintf(ck, sizeof ck, "%s/checkpoints", run_dir);
    struct stat st;
    int resume = last_ckpt >= 0 || (stat(ck, &st) == 0 && S_ISDIR(st.st_mode));
    if (w->njobs == CONFIG_MAX_PACK) {
        lr_errp(&e, LR_E_INTERNAL, NULL, "worker %s holds %d jobs already", w->name, w->njobs);
        goto out;
    }
    if (store_job_start(s->st, id, w->name, &e)) goto out; /* cancelled meanwhile: not an error */
    char ranks[48] = "", mates[200] = "";
    if (slot_ranks(w) > 1) snprintf(ranks, sizeof ranks, " (%d ranks, mpirun)", slot_ranks(w));
    for (int i = 0; i < w->njobs; i++) { /* a join: the worker trains these already */
        size_t l = strlen(mates);
        snprintf(mates + l, sizeof mates - l, "%s%s", i ? ", " : "; sharing its pass with ", w->jobs[i].id);
    }
    if (!w->njobs) pack_key(spec, w->pack_key, sizeof w->pack_key);
    wjob *j = &w->jobs[w->njobs++];
    memset(j, 0, sizeof *j);
    snprintf(j->id, sizeof j->id, "%s", id);
    j->pend = OUT_NONE;
    j->ckpt_step = last_ckpt;
    w->state = W_BUSY;
    save_worker(w);
    if (resume) job_event(s, id, "info", "assigned to worker %s%s%s; resuming from checkpoint step %lld", w->name, ranks,
                          mates, (long long)last_ckpt);
    else job_event(s, id, "info", "assigned to worker %s%s%s", w->name, ranks, mates);
    send_msg(w->c, msg_assign(id, spec_json, model_dir, fp, spec->n_training_files,
                              spec->validation_file[0] ? val : NULL, ref, run_dir, resume));
    rc = 0;
    goto out;
bad:
    logf_("job %s cannot start: %s", id, e.msg);
    {
        lr_err e2 = {0};
        if (store_job_finish(s->st, id, "failed", "invalid_job", e.msg, &e2)) logf_("fail %s: %s", id, e2.msg);
    }
out:
    json_decref(spec_json);
    free(spec_txt);
    free(spec);
    return rc;
}

static void send_cancels(super *s) {
    char ids[32][32], workers[32][64];
    int n = 0;
    lr_err e = {0};
    if (store_jobs_cancelling(s->st, ids, workers, 32, &n, &e)) {
        logf_("cancels: %s", e.msg);
        return;
    }
    for (int i = 0; i < n; i++)
        for (int k = 0; k < s->n; k++) {
            wslot *w = &s->w[k];
            wjob *j = slot_job(w, ids[i]);
            if (w->c && j && !j->cancel_sent && j->pend == OUT_NONE) {
                j->cancel_sent = 1;
                j->cancel_at = uv_now(&s->loop);
                send_msg(w->c, msg_cancel(j->id, "cancelled by its owner"));
                job_event(s, j->id, "info", "cancel sent to worker %s", w->name);
            }
        }
    /* A pause is a suspend: the worker checkpoints where it is and stops. */
    if (store_jobs_pausing(s->st, ids, workers, 32, &n, &e)) {
        logf_("pauses: %s", e.msg);
        return;
    }
    for (int i = 0; i < n; i++)
        for (int k = 0; k < s->n; k++) {
            wslot *w = &s->w[k];
            wjob *j = slot_job(w, ids[i]);
            if (w->c && j && !j->cancel_sent && !j->pause_sent && j->pend == OUT_NONE) {
                j->pause_sent = 1;
                send_msg(w->c, msg_suspend(j->id, "paused by its owner"));
                job_event(s, j->id, "info", "pause sent to worker %s", w->name);
            }
        }
}

/* A queued job's resources.devices (1 for specs stored before it existed)
 * and, when key is not NULL, its pack key in key (proto/pack.h; "" when it
 * never shares a pass). */
static int job_devices(super *s, const char *id, char *key, size_t cap) {
    char *txt = NULL, model[512];
    int64_t ck;
    lr_err e = {0};
    if (key) key[0] = 0;
    if (store_job_for_assign(s->st, id, &txt, model, sizeof model, &ck, &e)) return 1;
    json_t *j = json_loads(txt, 0, NULL);
    json_int_t n = json_integer_value(json_object_get(json_object_get(j, "resources"), "devices"));
    jobspec *spec = key ? malloc(sizeof *spec) : NULL;
    if (spec && jobspec_from_json(j, spec, &e) == 0) pack_key(spec, key, cap);
    free(spec);
    json_decref(j);
    free(txt);
    return n > 1 ? (int)n : 1;
}

/* A worker Slurm started for one job (slurm.h): named slurm-<job id>. */
static int slurm_slot(const wslot *w) { return w->remote && !strncmp(w->name, "slurm-", 6); }

/* Jobs one pass on w may hold: more than one only with packing on, on a
 * one-rank worker of lorad's own whose hello offered room. */
static int slot_pack_limit(const super *s, const wslot *w) {
    if (strcmp(s->cfg->packing, "auto") || slot_ranks(w) > 1 || slurm_slot(w) || w->pack_max <= 1) return 1;
    return w->pack_max < s->cfg->pack_max_jobs ? w->pack_max : s->cfg->pack_max_jobs;
}

/* A job trains on a worker with as many ranks as its resources.devices:
 * one sched_pick per rank count among the idle workers. A job that no
 * worker of this lorad can take fails now, saying how to get one. */
static void pick_by_ranks(super *s, const store_qjob *q, const sched_job *jobs, int nq, const sched_worker *sw,
                          const sched_user *users, int nu) {
    int *dev = malloc((size_t)nq * sizeof *dev), *idx = malloc((size_t)nq * sizeof *idx);
    sched_job *sub = malloc((size_t)nq * sizeof *sub);
    int packing = 0; /* the keys cost a parse of each spec: only when a worker may pack */
    for (int k = 0; k < s->n; k++) packing |= slot_pack_limit(s, &s->w[k]) > 1;
    char (*keys)[PACK_KEY_MAX] = packing ? malloc((size_t)nq * sizeof *keys) : NULL;
    if (!dev || !idx || !sub || (packing && !keys)) goto out;
    int fewest = 0; /* a one-device job runs on the smallest worker there is */
    for (int k = 0; k < s->n; k++)
        if (!fewest || slot_ranks(&s->w[k]) < fewest) fewest = slot_ranks(&s->w[k]);
    for (int i = 0; i < nq; i++) {
        dev[i] = job_devices(s, q[i].id, keys ? keys[i] : NULL, PACK_KEY_MAX);
        if (dev[i] == 1) dev[i] = fewest;
        int fits = 0;
        for (int k = 0; k < s->n && !fits; k++) fits = slot_ranks(&s->w[k]) == dev[i];
        if (fits) continue;
        char msg[300];
        snprintf(msg, sizeof msg,
                 "resources.devices is %d and no worker of this lorad has %d ranks (start lorad with --workers %dxcpu "
                 "or %dxcuda:0)", dev[i], dev[i], dev[i], dev[i]);
        lr_err e = {0};
        if (store_job_finish(s->st, q[i].id, "failed", "invalid_job", msg, &e)) logf_("fail %s: %s", q[i].id, e.msg);
        dev[i] = 0;
    }
    for (int k = 0; k < s->n; k++) {
        int r = slot_ranks(&s->w[k]), seen = 0;
        if (!sw[k].idle && !sw[k].room) continue;
        for (int m = 0; m < k && !seen; m++) seen = (sw[m].idle || sw[m].room) && slot_ranks(&s->w[m]) == r;
        if (seen) continue; /* this rank count was picked for already */
        sched_worker ws[MAX_SLOTS];
        for (int m = 0; m < s->n; m++) {
            int same = slot_ranks(&s->w[m]) == r;
            ws[m] = (sched_worker){sw[m].backend, sw[m].idle && same, same ? sw[m].room : 0, same ? sw[m].pack : NULL};
        }
        int ns = 0;
        for (int i = 0; i < nq; i++)
            if (dev[i] == r) {
                sub[ns] = jobs[i];
                sub[ns].pack = keys && keys[i][0] ? keys[i] : NULL;
                idx[ns++] = i;
            }
        static sched_assign as[MAX_SLOTS * CONFIG_MAX_PACK]; /* the loop's thread only */
        int na = ns ? sched_pick(sub, ns, ws, s->n, users, nu, s->cfg->max_running_per_user, as,
                                 MAX_SLOTS * CONFIG_MAX_PACK)
                    : 0;
        for (int i = 0; i < na; i++) assign(s, &s->w[as[i].worker], q[idx[as[i].job]].id);
    }
out:
    free(dev);
    free(idx);
    free(sub);
    free(keys);
}

/* Slurm's workers run only their own job: given it while it is queued,
 * sent away (they exit, freeing the allocation) when it is not. */
static void slurm_own(super *s) {
    for (int i = 0; i < s->n; i++) {
        wslot *w = &s->w[i];
        if (!slurm_slot(w) || !w->c || w->state != W_IDLE || w->njobs) continue;
        lr_err e = {0};
        json_t *j = store_job_get(s->st, w->name + 6, &e);
        const char *st = json_string_value(json_object_get(j, "status"));
        if (st && !strcmp(st, "queued")) assign(s, w, w->name + 6);
        else {
            /* after its job a --once worker is on its way out anyway */
            if (!st || !strcmp(st, "running"))
                logf_("Slurm's worker %s came for a job that is %s; sending it away", w->name, st ? st : "unknown");
            conn_close(w->c);
        }
        json_decref(j);
    }
}

static void schedule(super *s) {
    if (s->shutting_down) return;
    send_cancels(s);
    slurm_own(s);
    sched_worker sw[MAX_SLOTS];
    int room = 0; /* jobs the workers may take now, joins included */
    uint64_t now = uv_now(&s->loop);
    for (int i = 0; i < s->n; i++) {
        wslot *w = &s->w[i];
        int limit = slot_pack_limit(s, w), usable = w->c && !slurm_slot(w);
        sw[i] = (sched_worker){w->conf.backend, usable && w->state == W_IDLE && !w->njobs, 0, NULL};
        if (sw[i].idle) sw[i].room = limit;
        else if (usable && w->state == W_BUSY && w->njobs && w->pack_key[0] && now >= w->no_join_until &&
                 limit > w->njobs) {
            sw[i].room = limit - w->njobs;
            sw[i].pack = w->pack_key;
        }
        room += sw[i].room;
    }
    if (!room) return;
    lr_err e = {0};
    store_qjob *q = NULL;
    sched_job *jobs = NULL;
    json_t *running = NULL;
    sched_user *users = NULL;
    int nq = 0;
    /* The best `idle` jobs of each user and device class pick exactly what
     * the whole queue would (sched.h), at any depth. */
    if (store_jobs_queued(s->st, room, &q, &nq, &e) || nq == 0) goto out;
    /* jobs of the devices Slurm runs are not for lorad's own workers */
    int kept = 0;
    for (int i = 0; i < nq; i++)
        if (!slurm_routes(s->cfg, q[i].device)) q[kept++] = q[i];
    nq = kept;
    if (!nq) goto out;
    jobs = malloc((size_t)nq * sizeof *jobs);
    if (!jobs) goto out;
    running = store_running_by_user(s->st, &e);
    if (!running) goto out;
    users = calloc(json_object_size(running) + 1, sizeof *users);
    if (!users) goto out;
    int nu = 0;
    const char *k;
    json_t *v;
    json_object_foreach(running, k, v) {
        users[nu].name = k;
        users[nu++].running = (int)json_integer_value(v);
    }
    for (int i = 0; i < nq; i++) {
        jobs[i].user = q[i].user;
        jobs[i].device = q[i].device;
        jobs[i].priority = q[i].priority;
        jobs[i].seq = q[i].seq;
        jobs[i].pack = NULL; /* pick_by_ranks reads the keys */
    }
    pick_by_ranks(s, q, jobs, nq, sw, users, nu);
out:
    if (e.msg[0]) logf_("scheduler: %s", e.msg);
    free(users);
    json_decref(running);
    free(q);
    free(jobs);
}

static void on_wake(uv_async_t *a) { schedule(a->data); }

/* A cancelled job whose worker is stuck in a long step (one huge
 * micro-batch, a stopped process) ends now: the worker is killed and
 * restarted, and the job is cancelled, not re-queued (the other jobs of
 * its pack are, as after any death of their worker). */
static void enforce_cancel(wslot *w, uint64_t now) {
    super *s = w->s;
    wjob *j = NULL;
    for (int i = 0; i < w->njobs && !j; i++)
        if (w->jobs[i].cancel_sent && w->jobs[i].pend == OUT_NONE &&
            now - w->jobs[i].cancel_at >= (uint64_t)s->cfg->cancel_grace_s * 1000)
            j = &w->jobs[i];
    if (!j) return;
    logf_("worker %s has not stopped %s within %d s of the cancel; killing it", w->name, j->id, s->cfg->cancel_grace_s);
    j->pend = OUT_CANCELLED;
    snprintf(j->pend_text, sizeof j->pend_text,
             "job cancelled: worker %s did not stop within cancel_grace_s (%d s), so it was killed and restarted", w->name,
             s->cfg->cancel_grace_s);
    w->quick_restart = 1;
    /* Closing the connection kills the process; without it the worker is
     * not idle, so nothing is assigned to it before it is back. */
    if (w->c) conn_close(w->c);
    else uv_process_kill(&w->proc, SIGKILL);
    (void)settle(w, j);
}

static void slurm_note(super *s, struct ssub *u, const char *state, const char *reason) {
    lr_err e = {0};
    if (!strcmp(u->state, state)) return;
    snprintf(u->state, sizeof u->state, "%s", state);
    if (store_job_slurm(s->st, u->job, u->id, state, &e)) logf_("slurm state of %s: %s", u->job, e.msg);
    int why = reason[0] && strcmp(reason, "None");
    job_event(s, u->job, slurm_state_final(state) && strcmp(state, "COMPLETED") ? "warning" : "info",
              "Slurm job %s: %s%s%s%s", u->id, state, why ? " (" : "", why ? reason : "", why ? ")" : "");
}

/* Submits the queued jobs Slurm runs, follows their batch jobs, and treats
 * a batch job that ended under a job still queued or running (failed, node
 * lost, time limit, preempted, scancel) like a dead worker: the job runs
 * again from its last checkpoint, at most max_retries more times. */
static void slurm_tick(super *s) {
    if (!s->cfg->slurm_devices[0] || s->shutting_down) return;
    lr_err e = {0};
    store_qjob *q = NULL;
    int nq = 0;
    int limit = s->cfg->max_running_per_user;
    json_t *running = limit ? store_running_by_user(s->st, &e) : NULL;
    /* in lorad's queue order (priority, then age) */
    if (store_jobs_queued(s->st, SLURM_MAX_JOBS, &q, &nq, &e)) logf_("slurm: %s", e.msg);
    for (int i = 0; i < nq; i++) {
        if (!slurm_routes(s->cfg, q[i].device)) continue;
        if (limit) { /* batch jobs not started yet count as running: the limit holds in Slurm's queue too */
            int n = (int)json_integer_value(json_object_get(running, q[i].user));
            for (int k = 0; k < s->nsubs; k++)
                n += s->subs[k].id[0] && !s->subs[k].started && !strcmp(s->subs[k].user, q[i].user);
            if (n >= limit) continue;
        }
        struct ssub *u = NULL;
        for (int k = 0; k < s->nsubs && !u; k++)
            if (!strcmp(s->subs[k].job, q[i].id)) u = &s->subs[k];
        if (!u && s->nsubs == SLURM_MAX_JOBS) break;
        if (!u) {
            u = &s->subs[s->nsubs++];
            memset(u, 0, sizeof *u);
            snprintf(u->job, sizeof u->job, "%s", q[i].id);
            snprintf(u->user, sizeof u->user, "%s", q[i].user);
        }
        if (u->id[0]) continue;
        char id[32], ranks[96] = "";
        lr_err se = {0};
        int devices = job_devices(s, u->job, NULL, 0);
        if (devices > 1) snprintf(ranks, sizeof ranks, " for %d ranks (sbatch --ntasks %d, srun)", devices, devices);
        if (slurm_submit(s->cfg, u->job, devices, id, sizeof id, &se)) {
            /* a broken sbatch fails every job alike: say so once, on the job */
            lr_err fe = {0};
            if (store_job_finish(s->st, u->job, "failed", "slurm_submit_failed", se.msg, &fe)) logf_("%s", fe.msg);
            job_event(s, u->job, "error", "submitting to Slurm failed: %s", se.msg);
            *u = s->subs[--s->nsubs];
            continue;
        }
        snprintf(u->id, sizeof u->id, "%s", id);
        u->state[0] = 0;
        u->started = 0;
        job_event(s, u->job, "info", "submitted to Slurm as batch job %s%s%s%s", id,
                  s->cfg->slurm_partition[0] ? " in partition " : "", s->cfg->slurm_partition, ranks);
        slurm_note(s, u, "PENDING", "None");
    }
    free(q);
    json_decref(running);
    for (int k = 0; k < s->nsubs; k++) {
        struct ssub *u = &s->subs[k];
        json_t *j = store_job_get(s->st, u->job, &e);
        const char *st = json_string_value(json_object_get(j, "status"));
        int max_retries = (int)json_integer_value(json_object_get(j, "max_retries"));
        int live = st && (!strcmp(st, "queued") || !strcmp(st, "running"));
        char state[32] = "", reason[256] = "";
        if (u->id[0] && slurm_query(u->id, state, sizeof state, reason, sizeof reason, &e))
            logf_("slurm: %s", e.msg);
        else if (u->id[0])
            slurm_note(s, u, state, reason);
        if (st && !strcmp(st, "running")) u->started = 1;
        if (!live) {
            /* finished, cancelled or paused: a worker that took the job exits
             * by itself (--once); a batch job that has not started yet must
             * not take a node for nothing. Followed until Slurm ends it. */
            int ending = u->id[0] && state[0] && !slurm_state_final(state);
            if (ending && !u->started && slurm_cancel(u->id, &e)) logf_("slurm: %s", e.msg);
            json_decref(j);
            if (!ending) s->subs[k--] = s->subs[--s->nsubs];
            continue;
        }
        if (u->id[0] && state[0] && slurm_state_final(state)) {
            /* its worker is gone or going: end the connection now rather
             * than at the heartbeat timeout (node loss, time limit) */
            for (int i = 0; i < s->n; i++)
                if (slurm_slot(&s->w[i]) && !strcmp(s->w[i].name + 6, u->job) && s->w[i].c) conn_close(s->w[i].c);
            if (!u->started && ++u->tries > max_retries) {
                char msg[400];
                snprintf(msg, sizeof msg, "Slurm ended its batch job %d times before the job started (last: %s, %s)",
                         u->tries, state, reason);
                lr_err fe = {0};
                if (store_job_finish(s->st, u->job, "failed", "slurm_failed", msg, &fe)) logf_("%s", fe.msg);
                job_event(s, u->job, "error", "%s", msg);
            }
            u->id[0] = 0; /* a queued job is submitted again above, next tick */
        }
        json_decref(j);
    }
}

static void on_tick(uv_timer_t *t) {
    super *s = t->data;
    uint64_t now = uv_now(&s->loop), limit = (uint64_t)s->cfg->heartbeat_timeout_s * 1000;
    settle_all(s);
    remote_tick(s, now, limit);
    slurm_tick(s);
    for (int i = 0; i < s->n; i++) {
        wslot *w = &s->w[i];
        if (w->remote && w->c) enforce_cancel(w, now);
        if (!w->proc_alive) continue;
        enforce_cancel(w, now);
        if (!w->proc_alive || w->quick_restart) continue;
        if (now - w->last_seen > limit) {
            logf_("worker %s missed its heartbeats for %d s; killing it", w->name, s->cfg->heartbeat_timeout_s);
            uv_process_kill(&w->proc, SIGKILL);
            w->last_seen = now; /* one kill per timeout */
        } else if (w->c) {
            send_msg(w->c, msg_heartbeat(NULL, 0, 0, 0));
        }
    }
}

/* ---- shutdown ---- */

static void close_if_open(uv_handle_t *h) {
    if (h->loop && !uv_is_closing(h)) uv_close(h, NULL);
}

static void stop_all(super *s) {
    if (s->stopping) return;
    s->stopping = 1;
    close_if_open((uv_handle_t *)&s->server);
    close_if_open((uv_handle_t *)&s->wake);
    close_if_open((uv_handle_t *)&s->tick);
    close_if_open((uv_handle_t *)&s->grace);
    close_if_open((uv_handle_t *)&s->sigterm);
    close_if_open((uv_handle_t *)&s->sigint);
    for (int i = 0; i < s->n; i++) {
        wslot *w = &s->w[i];
        close_if_open((uv_handle_t *)&w->restart_timer);
        if (w->c) conn_close(w->c);
        if (w->proc_alive) uv_process_kill(&w->proc, SIGTERM);
    }
    unlink(s->sock_path);
}

static void maybe_finish_shutdown(super *s) {
    if (!s->shutting_down || s->stopping) return;
    for (int i = 0; i < s->n; i++)
        if (s->w[i].njobs && (s->w[i].proc_alive || s->w[i].c)) return;
    for (int i = 0; i < s->n; i++)
        for (int k = 0; k < s->w[i].njobs; k++)
            if (s->w[i].jobs[k].pend != OUT_NONE) return;
    logf_("every running job has stopped; exiting");
    stop_all(s);
}

static void on_grace(uv_timer_t *t) {
    super *s = t->data;
    logf_("shutdown grace of %d s is over; stopping the workers (their jobs resume at the next start)",
          s->cfg->shutdown_grace_s);
    stop_all(s);
}

static void on_signal(uv_signal_t *h, int signum) {
    super *s = h->data;
    if (s->shutting_down) {
        logf_("second signal; stopping now");
        stop_all(s);
        return;
    }
    logf_("signal %d: no new connections; running jobs checkpoint and stop", signum);
    s->shutting_down = 1;
    http_quiesce(s->http);
    for (int i = 0; i < s->n; i++) {
        wslot *w = &s->w[i];
        for (int k = 0; k < w->njobs; k++)
            if (w->c && !w->jobs[k].cancel_sent && w->jobs[k].pend == OUT_NONE)
                send_msg(w->c, msg_suspend(w->jobs[k].id, "lorad is shutting down"));
    }
    uv_timer_start(&s->grace, on_grace, (uint64_t)s->cfg->shutdown_grace_s * 1000, 0);
    maybe_finish_shutdown(s);
}

/* ---- life cycle ---- */

int super_init(super **out, const lorad_config *cfg, const char *db_path, lr_err *err) {
    *out = NULL;
    super *s = calloc(1, sizeof *s);
    if (!s) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    s->cfg = cfg;
    if (snprintf(s->sock_path, sizeof s->sock_path, "%s/lorad.sock", cfg->data_dir) >= (int)sizeof s->sock_path) {
        free(s);
        return lr_errp(err, LR_E_INVALID, "data_dir", "data_dir is too long for a Unix socket path (max ~95 chars)");
    }
    if (store_open(db_path, &s->st, err)) {
        free(s);
        return -1;
    }
    uv_loop_init(&s->loop);
    *out = s;
    return 0;
}

void super_wake(void *p) {
    super *s = p;
    if (!s->stopping && atomic_load(&s->ready)) uv_async_send(&s->wake);
}

int super_run(super *s, http_server *http, lr_err *err) {
    s->http = http;
    lr_err e = {0};
    int requeued = 0;
    if (store_workers_clear(s->st, &e) || store_recover(s->st, &requeued, &e))
        return lr_errf(err, "recovering jobs: %s", e.msg);
    if (requeued) logf_("%d job(s) were running when lorad stopped; queued again", requeued);
    unlink(s->sock_path);
    uv_pipe_init(&s->loop, &s->server, 0);
    s->server.data = s;
    int rc = uv_pipe_bind(&s->server, s->sock_path);
    if (rc == 0) {
        chmod(s->sock_path, 0600);
        rc = uv_listen((uv_stream_t *)&s->server, 16, on_connection);
    }
    if (rc) {
        uv_close((uv_handle_t *)&s->server, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        return lr_errp(err, LR_E_IO, NULL, "worker socket %s: %s", s->sock_path, uv_strerror(rc));
    }
    uv_async_init(&s->loop, &s->wake, on_wake);
    s->wake.data = s;
    atomic_store(&s->ready, 1);
    uv_timer_init(&s->loop, &s->tick);
    s->tick.data = s;
    uv_timer_init(&s->loop, &s->grace);
    s->grace.data = s;
    uv_signal_init(&s->loop, &s->sigterm);
    s->sigterm.data = s;
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_init(&s->loop, &s->sigint);
    s->sigint.data = s;
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uint64_t period = (uint64_t)s->cfg->heartbeat_interval_s * 1000;
    uv_timer_start(&s->tick, on_tick, period, period);
    s->n = s->cfg->n_workers;
    for (int i = 0; i < s->n; i++) {
        wslot *w = &s->w[i];
        w->s = s;
        w->conf = s->cfg->workers[i];
        snprintf(w->name, sizeof w->name, "w%d", i);
        uv_timer_init(&s->loop, &w->restart_timer);
        w->restart_timer.data = w;
        spawn_worker(w);
    }
    schedule(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return 0;
}

void super_free(super *s) {
    if (!s) return;
    uv_loop_close(&s->loop);
    store_close(s->st);
    free(s);
}
