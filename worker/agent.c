#include "worker/agent.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/gemm_select.h"
#include "kernels/cuda/cuda_backend.h"
#include "formats/hfconfig.h"
#include "proto/frame.h"
#include "proto/msg.h"
#include "proto/pack.h"
#include "proto/tlink.h"
#include "worker/commands.h"
#include "worker/dist.h"
#include "worker/fetch.h"
#include "worker/job.h"
#include "worker/model.h"
#include "worker/pack.h"

#define AGENT_VERSION "0.1"

typedef struct job {
    struct agent *ag;
    char id[32];
    jobspec spec;
    char model_dir[1024], run_dir[1024], val[1024], ref[1024];
    char files[JOBSPEC_MAX_FILES][1024];
    int n_files, resume;
    char stop_reason[256]; /* set by the stopped hook, sent with DONE */
    /* files copied (agent_opts.connect_url without shared_fs): run_dir is
     * local, remote_run lorad's; sent is what went up already */
    int files_remote;
    char remote_run[1024];
    fetch_sent sent;
    pthread_t thread;
    atomic_int cancel, finished;
    /* progress (agent.plock) and, in a pack, the steps it ran with others */
    int64_t step, total, packed_steps;
    double epoch;
    int packed;       /* trained by the pack thread, not a thread of its own */
    train_paths paths; /* what a pack reads until the job ends */
    train_hooks hooks;
} job;

/* A metric frame lorad has not acknowledged (committed) yet. */
typedef struct unacked {
    int64_t seq, sent_ms;
    json_t *frame;
} unacked;

#define UNACKED_MAX 65536   /* past this the oldest are dropped (a lorad that never acks) */
#define RESEND_AFTER_MS 2000
#define FLUSH_WAIT_S 120

typedef struct agent {
    const agent_opts *o;
    int fd;
    pthread_mutex_t wlock;     /* one writer at a time on the socket */
    atomic_long seq;
    /* Metrics are resent until lorad acknowledges them, and flushed before a
     * checkpoint or the job's end: a resume point or an outcome never exists
     * while a metric before it could still be lost (a failed commit on a
     * full disk, a lorad killed mid-read). lorad stores a metric by (job,
     * name, step), so a resent one replaces itself. */
    pthread_mutex_t alock;
    pthread_cond_t acked;
    unacked *pend;
    size_t n_pend;
    pthread_mutex_t plock;     /* the jobs' progress */
    job *jobs[MODEL_PACK_MAX]; /* running (main thread's list; finished ones are reaped) */
    int n_jobs;
    /* co-training (o->pack_max > 1): one pack thread trains every packable
     * job; ASSIGNs while it runs queue here and join at its next step */
    pthread_mutex_t qlock;
    job *queue[MODEL_PACK_MAX];
    int n_queue, pack_running, pack_started;
    pthread_t pack_thread;
    char pack_id[48];
    atomic_int pack_jobs;
    int pack_max;              /* what HELLO said: 1 when this worker cannot co-train */
    atomic_int write_failed;
    tl_conn link;              /* a remote agent's connection to lorad */
    int link_fd;               /* the relay's end of the socket pair, -1 none */
    pthread_t relay;
    char cache[1100];          /* data_dir/cache */
} agent;

static int64_t now_ms(void);

static void send_locked(agent *ag, json_t *m) {
    if (!m) return;
    lr_err e = {0};
    pthread_mutex_lock(&ag->wlock);
    if (!ag->write_failed && frame_write_fd(ag->fd, m, &e)) {
        ag->write_failed = 1;
        fprintf(stderr, "lora-worker %s: %s\n", ag->o->name, e.msg);
    }
    pthread_mutex_unlock(&ag->wlock);
    json_decref(m);
}

/* ---- hooks, called from the job thread ---- */

static void h_metric(void *ud, int64_t step, double epoch, const char *name, double value) {
    job *j = ud;
    agent *ag = j->ag;
    int64_t seq = atomic_fetch_add(&ag->seq, 1);
    json_t *m = msg_metric(j->id, seq, step, epoch, name, value);
    if (!m) return;
    pthread_mutex_lock(&ag->alock);
    if (ag->n_pend == UNACKED_MAX) {
        json_decref(ag->pend[0].frame);
        memmove(ag->pend, ag->pend + 1, (UNACKED_MAX - 1) * sizeof *ag->pend);
        ag->n_pend--;
    }
    ag->pend[ag->n_pend++] = (unacked){seq, now_ms(), json_incref(m)};
    pthread_mutex_unlock(&ag->alock);
    send_locked(ag, m);
}

static void on_ack(agent *ag, int64_t seq) {
    pthread_mutex_lock(&ag->alock);
    size_t k = 0;
    while (k < ag->n_pend && ag->pend[k].seq <= seq) json_decref(ag->pend[k++].frame);
    memmove(ag->pend, ag->pend + k, (ag->n_pend - k) * sizeof *ag->pend);
    ag->n_pend -= k;
    pthread_cond_broadcast(&ag->acked);
    pthread_mutex_unlock(&ag->alock);
}

/* From the main loop: metrics unacknowledged for a while go out again. */
static void resend(agent *ag) {
    int64_t now = now_ms();
    pthread_mutex_lock(&ag->alock);
    size_t n = ag->n_pend && now - ag->pend[0].sent_ms >= RESEND_AFTER_MS ? ag->n_pend : 0;
    json_t **again = n ? malloc(n * sizeof *again) : NULL;
    if (!again) n = 0;
    for (size_t i = 0; i < n; i++) {
        again[i] = json_incref(ag->pend[i].frame);
        ag->pend[i].sent_ms = now;
    }
    pthread_mutex_unlock(&ag->alock);
    for (size_t i = 0; i < n; i++) send_locked(ag, again[i]);
    free(again);
}

/* From the job thread: waits until lorad has every metric sent so far
 * (the main loop resends meanwhile); gives up on a lost connection, a
 * cancel, or after FLUSH_WAIT_S, saying so. */
static void flush_metrics(job *j) {
    agent *ag = j->ag;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += FLUSH_WAIT_S;
    pthread_mutex_lock(&ag->alock);
    while (ag->n_pend && !ag->write_failed && atomic_load(&j->cancel) != TRAIN_CANCEL)
        if (pthread_cond_timedwait(&ag->acked, &ag->alock, &until) == ETIMEDOUT) {
            fprintf(stderr, "lora-worker %s: lorad has not stored %zu metrics of %s for %d s; going on\n",
                    ag->o->name, ag->n_pend, j->id, FLUSH_WAIT_S);
            break;
        }
    pthread_mutex_unlock(&ag->alock);
}

static void h_flush(void *ud) { flush_metrics(ud); }

static void h_event(void *ud, const char *level, const char *text) {
    job *j = ud;
    send_locked(j->ag, msg_event(j->id, level, text));
}

static fetch_ctx fetch_of(const agent *ag) {
    return (fetch_ctx){.url = ag->o->connect_url, .token = ag->o->token, .ca = ag->o->ca_file, .cache_dir = ag->cache};
}

static void h_checkpoint(void *ud, int64_t step, const char *dir) {
    job *j = ud;
    if (!j->files_remote) {
        send_locked(j->ag, msg_checkpoint(j->id, step, dir));
        return;
    }
    /* lorad learns of a checkpoint once it holds it: a resume elsewhere needs its files */
    fetch_ctx f = fetch_of(j->ag);
    lr_err e = {0};
    char there[2100];
    size_t n = strlen(j->run_dir);
    if (fetch_push(&f, &j->sent, j->run_dir, j->remote_run, &e)) {
        char msg[700];
        snprintf(msg, sizeof msg, "checkpoint of step %lld not uploaded to lorad: %s", (long long)step, e.msg);
        send_locked(j->ag, msg_event(j->id, "warning", msg));
        return;
    }
    if (strncmp(dir, j->run_dir, n) || lr_pathf(there, sizeof there, "%s%s", j->remote_run, dir + n)) return;
    send_locked(j->ag, msg_checkpoint(j->id, step, there));
}

/* Makes a job's paths local: inputs into the cache (the model only when
 * its path does not exist here), the run directory from lorad's. */
static int remote_inputs(job *j, lr_err *err) {
    agent *ag = j->ag;
    fetch_ctx f = fetch_of(ag);
    char from[1024];
    if (access(j->model_dir, R_OK)) {
        snprintf(from, sizeof from, "%s", j->model_dir);
        if (fetch_input(&f, from, j->model_dir, sizeof j->model_dir, err)) return lr_err_prefix(err, "model: ");
    }
    for (int i = 0; i < j->n_files; i++) {
        snprintf(from, sizeof from, "%s", j->files[i]);
        if (fetch_input(&f, from, j->files[i], sizeof j->files[i], err)) return lr_err_prefix(err, "dataset: ");
    }
    if (j->val[0]) {
        snprintf(from, sizeof from, "%s", j->val);
        if (fetch_input(&f, from, j->val, sizeof j->val, err)) return lr_err_prefix(err, "validation file: ");
    }
    if (j->ref[0]) {
        snprintf(from, sizeof from, "%s", j->ref);
        if (fetch_input(&f, from, j->ref, sizeof j->ref, err)) return lr_err_prefix(err, "reference adapter: ");
    }
    snprintf(j->remote_run, sizeof j->remote_run, "%s", j->run_dir);
    if (lr_pathf(j->run_dir, sizeof j->run_dir, "%s/runs/%s", ag->o->data_dir, j->id))
        return lr_errf(err, "--data-dir is too long");
    /* lorad's copy is the one that counts: a local leftover may be older or newer */
    if (fetch_pull(&f, j->remote_run, j->run_dir, err) || fetch_mark_sent(&j->sent, j->run_dir, err))
        return lr_err_prefix(err, "the run's checkpoints: ");
    return 0;
}

static void h_progress(void *ud, int64_t step, int64_t total, double epoch) {
    job *j = ud;
    pthread_mutex_lock(&j->ag->plock);
    j->step = step;
    j->total = total;
    j->epoch = epoch;
    pthread_mutex_unlock(&j->ag->plock);
}

static int h_cancelled(void *ud) {
    job *j = ud;
    return atomic_load(&j->cancel);
}

static void h_stopped(void *ud, const char *reason) {
    job *j = ud;
    snprintf(j->stop_reason, sizeof j->stop_reason, "%s", reason);
}

/* The job's paths and hooks (pointing into j). */
static void job_wire(job *j) {
    j->paths = (train_paths){.model_dir = j->model_dir, .validation_file = j->val[0] ? j->val : NULL,
                             .reference_adapter_dir = j->ref[0] ? j->ref : NULL, .run_dir = j->run_dir};
    for (int i = 0; i < j->n_files; i++) j->paths.training_files[i] = j->files[i];
    j->hooks = (train_hooks){.ud = j, .metric = h_metric, .event = h_event, .checkpoint = h_checkpoint,
                             .flush = h_flush, .progress = h_progress, .cancelled = h_cancelled, .stopped = h_stopped};
}

static void job_end(job *j, int rc, train_outcome out, lr_err *e);

static void *job_main(void *arg) {
    job *j = arg;
    agent *ag = j->ag;
    lr_err e = {0};
    int inputs_failed = j->files_remote && remote_inputs(j, &e);
    job_wire(j);
    train_opts to = {.backend = ag->o->backend, .threads = ag->o->threads, .resume = j->resume, .dist = ag->o->dist};
    train_outcome out = TRAIN_DONE;
    /* the other ranks of this worker train it with us */
    int rc = inputs_failed || agent_rank_send(ag->o->dist, j->id, &j->spec, &j->paths, j->resume, &e)
                 ? -1
                 : ag->o->run(&j->spec, &j->paths, &to, &j->hooks, &out, &e);
    if (j->files_remote && !inputs_failed) {
        /* the adapter and logs: lorad serves them as a local worker's */
        fetch_ctx f = fetch_of(ag);
        lr_err pe = {0};
        if (fetch_push(&f, &j->sent, j->run_dir, j->remote_run, &pe) && !rc) {
            snprintf(e.msg, sizeof e.msg, "uploading the results to lorad: %.400s", pe.msg);
            rc = -1;
        }
    }
    job_end(j, rc, out, &e);
    return NULL;
}

/* The job's end as lorad hears it: its last progress, then DONE or FAILED
 * once its metrics are stored. From the thread that trained it. */
static void job_end(job *j, int rc, train_outcome out, lr_err *e) {
    agent *ag = j->ag;
    json_t *end, *last;
    /* The last progress, which a short job may finish before any heartbeat. */
    pthread_mutex_lock(&ag->plock);
    last = j->total <= 0 ? NULL
           : j->packed   ? msg_heartbeat_pack(j->id, j->step, j->total, j->epoch, ag->pack_id,
                                              atomic_load(&ag->pack_jobs), j->packed_steps)
                         : msg_heartbeat(j->id, j->step, j->total, j->epoch);
    pthread_mutex_unlock(&ag->plock);
    send_locked(ag, last);
    if (rc)
        end = msg_failed(j->id, e->code, e->msg[0] ? e->msg : "training failed");
    else if (out == TRAIN_STOPPED_EARLY)
        end = msg_done(j->id, MSG_STOPPED_EARLY, j->stop_reason[0] ? j->stop_reason : NULL);
    else
        end = msg_done(j->id, out == TRAIN_CANCELLED ? MSG_CANCELLED : MSG_SUCCEEDED, NULL);
    flush_metrics(j); /* the outcome is recorded only once the metrics are */
    /* Finished before the daemon can hear of it, so its next ASSIGN always
     * finds this job joinable. j is not touched after this. */
    atomic_store(&j->finished, 1);
    send_locked(ag, end);
    if (rc && dist_size(ag->o->dist) > 1) {
        /* the other ranks may still wait for this one in an exchange: the
         * worker ends (once lorad has had time to read the outcome) and
         * lorad starts it afresh */
        sleep(1);
        dist_abort(ag->o->dist);
    }
}

/* Frees job i of the list (finished, or stopped at the agent's end). */
static void join_job(agent *ag, int i) {
    job *j = ag->jobs[i];
    if (!j->packed) pthread_join(j->thread, NULL);
    fetch_sent_free(&j->sent);
    pthread_mutex_lock(&ag->plock);
    memmove(&ag->jobs[i], &ag->jobs[i + 1], (size_t)(ag->n_jobs - i - 1) * sizeof *ag->jobs);
    ag->n_jobs--;
    pthread_mutex_unlock(&ag->plock);
    free(j);
}

/* Frees the finished jobs; returns how many there were. */
static int reap(agent *ag) {
    int n = 0;
    for (int i = 0; i < ag->n_jobs; i++)
        if (atomic_load(&ag->jobs[i]->finished)) {
            join_job(ag, i--);
            n++;
        }
    return n;
}

/* ---- co-training: the pack thread ---- */

static void pack_ended(void *tag, int failed, train_outcome out, const lr_err *err) {
    lr_err e = {0};
    if (failed && err) e = *err;
    job_end(tag, failed, out, &e);
}

/* Trains every packable job: queued ones join at a step boundary; ends
 * when no job is left and none waits. */
static void *pack_main(void *arg) {
    agent *ag = arg;
    train_opts to = {.backend = ag->o->backend, .threads = ag->o->threads};
    job *live[MODEL_PACK_MAX];
    int n_live = 0;
    pack *p = NULL;
    lr_err pe = {0};
    if (pack_new(&to, ag->pack_max, &p, &pe)) p = NULL;
    for (;;) {
        job *add[MODEL_PACK_MAX];
        pthread_mutex_lock(&ag->qlock);
        int na = ag->n_queue;
        memcpy(add, ag->queue, (size_t)na * sizeof *add);
        ag->n_queue = 0;
        if (na == 0 && (!p || pack_jobs(p) == 0)) ag->pack_running = 0;
        pthread_mutex_unlock(&ag->qlock);
        if (na == 0 && (!p || pack_jobs(p) == 0)) break;
        for (int i = 0; i < na; i++) {
            job *j = add[i];
            lr_err e = {0};
            if (!p) {
                e = pe;
                job_end(j, -1, TRAIN_DONE, &e);
            } else if (pack_add(p, &j->spec, &j->paths, &j->hooks, j->resume, pack_ended, j, &e)) {
                job_end(j, -1, TRAIN_DONE, &e); /* LR_E_BUSY: lorad requeues it */
            } else {
                live[n_live++] = j;
            }
        }
        /* the jobs that ended (in pack_add or the last step) are gone from live */
        if (!p) continue;
        for (int i = 0; i < n_live; i++)
            if (pack_packed_steps(p, live[i]) < 0) live[i--] = live[--n_live];
        atomic_store(&ag->pack_jobs, pack_jobs(p));
        if (pack_jobs(p) == 0) continue;
        lr_err e = {0};
        if (pack_step(p, &e)) fprintf(stderr, "lora-worker %s: a packed pass failed: %s\n", ag->o->name, e.msg);
        pthread_mutex_lock(&ag->plock);
        for (int i = 0; i < n_live; i++) {
            int64_t ps = pack_packed_steps(p, live[i]);
            if (ps >= 0) live[i]->packed_steps = ps;
        }
        pthread_mutex_unlock(&ag->plock);
    }
    pack_free(p);
    return NULL;
}

/* MemAvailable of /proc/meminfo in bytes, -1 when unknown. */
static int64_t mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb < 0 ? -1 : (int64_t)kb * 1024;
}

/* Free memory where a joining job's tensors would live: the GPU's on a
 * CUDA worker (the host's MemAvailable says nothing about the card), the
 * host's otherwise; -1 when unknown. */
static int64_t pack_free_bytes(const char *backend) {
    if (!backend || strncmp(backend, "cuda", 4)) return mem_available();
    kb_cuda_device devs[16];
    lr_err e = {0};
    int n = kb_cuda_devices(devs, 16, &e), want = backend[4] == ':' ? atoi(backend + 5) : 0;
    for (int i = 0; i < n; i++)
        if (devs[i].index == want) return (int64_t)devs[i].free_bytes;
    return -1;
}

#define PACK_MEM_MARGIN ((int64_t)256 << 20) /* left free besides a joining job's estimate */

/* Whether job j may join the pack now: room left, compatible with every
 * job in it (all of ag->jobs are then the pack's) and, by pack_job_bytes,
 * memory for it. Otherwise *why says what is missing. */
static int pack_room(agent *ag, const job *j, char *why, size_t cap) {
    snprintf(why, cap, "worker's pack is full or trains jobs this one cannot share a pass with");
    if (ag->n_jobs >= ag->pack_max) return 0;
    for (int i = 0; i < ag->n_jobs; i++)
        if (!ag->jobs[i]->packed || !pack_compatible(&ag->jobs[i]->spec, &j->spec, NULL)) return 0;
    hf_config c;
    char cfg[1100];
    lr_err e = {0};
    int64_t avail = pack_free_bytes(ag->o->backend);
    if (avail < 0 || lr_pathf(cfg, sizeof cfg, "%s/config.json", j->model_dir) || hf_config_load(cfg, &c, &e))
        return 1; /* nothing to plan with: the job's own setup says what is wrong */
    int64_t need = pack_job_bytes(&j->spec, &c);
    if (avail >= need + PACK_MEM_MARGIN) return 1;
    snprintf(why, cap, "not enough free memory to add this job to the worker's pack (about %lld MB needed, %lld MB available)",
             (long long)((need + PACK_MEM_MARGIN) >> 20), (long long)(avail >> 20));
    return 0;
}

/* Hands j to the pack thread, starting one when none runs. */
static int pack_enqueue(agent *ag, job *j) {
    j->packed = 1;
    job_wire(j);
    pthread_mutex_lock(&ag->qlock);
    int running = ag->pack_running;
    if (running) ag->queue[ag->n_queue++] = j;
    pthread_mutex_unlock(&ag->qlock);
    if (running) return 0;
    if (ag->pack_started) pthread_join(ag->pack_thread, NULL); /* it ended with no job left */
    ag->pack_started = 0;
    snprintf(ag->pack_id, sizeof ag->pack_id, "%s-%s", ag->o->name, j->id); /* named after its first job */
    ag->queue[0] = j;
    ag->n_queue = 1;
    ag->pack_running = 1;
    if (pthread_create(&ag->pack_thread, NULL, pack_main, ag)) {
        ag->pack_running = 0;
        ag->n_queue = 0;
        return -1;
    }
    ag->pack_started = 1;
    return 0;
}

static int copy(char *dst, size_t cap, const char *src) {
    if (!src) {
        dst[0] = 0;
        return 0;
    }
    size_t n = strlen(src);
    if (n >= cap) return -1;
    memcpy(dst, src, n + 1);
    return 0;
}

static int start_job(agent *ag, const char *job_id, const msg_assign_body *a, lr_err *err) {
    reap(ag);
    if (ag->n_jobs && ag->pack_max <= 1) {
        send_locked(ag, msg_failed(job_id, LR_E_BUSY, "worker is busy with another job"));
        return 0;
    }
    job *j = calloc(1, sizeof *j);
    if (!j) return lr_errf(err, "out of memory");
    j->ag = ag;
    lr_err e = {0};
    int bad = copy(j->id, sizeof j->id, job_id) || copy(j->model_dir, sizeof j->model_dir, a->model_dir) ||
              copy(j->run_dir, sizeof j->run_dir, a->run_dir) || copy(j->val, sizeof j->val, a->validation_file) ||
              copy(j->ref, sizeof j->ref, a->reference_adapter_dir);
    for (int i = 0; i < a->n_training_files; i++) bad |= copy(j->files[i], sizeof j->files[i], a->training_files[i]);
    if (bad) lr_errp(&e, LR_E_INVALID, NULL, "a path in the assignment is too long");
    if (bad || jobspec_from_json(a->spec, &j->spec, &e)) {
        send_locked(ag, msg_failed(job_id, e.code, e.msg));
        free(j);
        return 0;
    }
    j->n_files = a->n_training_files;
    j->resume = a->resume;
    j->files_remote = ag->o->connect_url && !ag->o->shared_fs;
    /* co-training: a packable job joins (or starts) the pack when it fits;
     * anything else runs alone on an idle worker */
    int packable = ag->pack_max > 1 && pack_compatible(&j->spec, &j->spec, NULL);
    const char *busy = NULL;
    char why[200];
    if (ag->n_jobs && (!packable || !pack_room(ag, j, why, sizeof why)))
        busy = packable ? why : "worker is busy with another job";
    int failed = busy || (packable ? pack_enqueue(ag, j) : pthread_create(&j->thread, NULL, job_main, j));
    if (failed) {
        send_locked(ag, msg_failed(job_id, busy ? LR_E_BUSY : LR_E_NOMEM, busy ? busy : "cannot start the job thread"));
        free(j);
        return 0;
    }
    pthread_mutex_lock(&ag->plock);
    ag->jobs[ag->n_jobs++] = j;
    pthread_mutex_unlock(&ag->plock);
    return 0;
}

/* One heartbeat per running job (with its pack when packed), or one without a job. */
static void heartbeat(agent *ag) {
    json_t *m[MODEL_PACK_MAX];
    int n = 0;
    pthread_mutex_lock(&ag->plock);
    for (int i = 0; i < ag->n_jobs; i++) {
        const job *j = ag->jobs[i];
        if (atomic_load(&j->finished)) continue;
        m[n++] = j->packed ? msg_heartbeat_pack(j->id, j->step, j->total, j->epoch, ag->pack_id,
                                                atomic_load(&ag->pack_jobs), j->packed_steps)
                           : msg_heartbeat(j->id, j->step, j->total, j->epoch);
    }
    pthread_mutex_unlock(&ag->plock);
    if (!n) m[n++] = msg_heartbeat(NULL, 0, 0, 0);
    for (int i = 0; i < n; i++) send_locked(ag, m[i]);
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *relay_main(void *arg) {
    agent *ag = arg;
    tl_pump(&ag->link, ag->link_fd);
    /* the agent's reads end too: lorad is gone */
    shutdown(ag->link_fd, SHUT_RDWR);
    return NULL;
}

/* Dials lorad, shows the worker token and, once lorad takes it, relays a
 * socket pair over the link: the agent's end is returned, so the rest of
 * the agent is the local one. */
static int connect_remote(agent *ag, lr_err *err) {
    const agent_opts *o = ag->o;
    json_t *req = json_pack("{s:s, s:s}", "type", "auth", "token", o->token), *ans = NULL;
    int sp[2] = {-1, -1};
    if (tl_dial(o->connect_url, o->ca_file, 30, &ag->link, err)) goto fail;
    if (tl_send(&ag->link, req, err) || tl_recv(&ag->link, &ans, err)) {
        lr_err_prefix(err, "lorad at %s did not take this worker: ", o->connect_url);
        goto fail;
    }
    if (!json_is_true(json_object_get(ans, "ok"))) {
        const char *why = json_string_value(json_object_get(ans, "error"));
        lr_errp(err, LR_E_FORBIDDEN, NULL, "lorad at %s refused this worker: %s", o->connect_url, why ? why : "no reason given");
        goto fail;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp)) {
        lr_errf(err, "socketpair: %s", strerror(errno));
        goto fail;
    }
    ag->link_fd = sp[1];
    if (pthread_create(&ag->relay, NULL, relay_main, ag)) {
        lr_errf(err, "cannot start the relay thread");
        ag->link_fd = -1;
        goto fail;
    }
    json_decref(req);
    json_decref(ans);
    return sp[0];
fail:
    if (sp[0] >= 0) close(sp[0]), close(sp[1]);
    tl_close(&ag->link);
    json_decref(req);
    json_decref(ans);
    return -1;
}

/* What threads 0 ("all cores") means: the CPUs this process may run on,
 * as the CPU backend counts them (omp_get_num_procs). */
static int threads_used(int threads) {
    if (threads > 0) return threads;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void device_name(const char *backend, char *out, size_t cap) {
    snprintf(out, cap, "%s", backend);
    if (strcmp(backend, "cpu")) return;
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10)) {
            char *c = strchr(line, ':');
            if (c) {
                c++;
                while (*c == ' ') c++;
                c[strcspn(c, "\n")] = 0;
                snprintf(out, cap, "%s", c);
            }
            break;
        }
    }
    if (f) fclose(f);
}

/* HELLO's pack_max: --pack-max where this worker can co-train (one
 * process, CPU or GPU, its files on this machine, not --once), else 1. */
static int pack_max_of(const agent_opts *o) {
    if (o->pack_max <= 1 || o->once || dist_size(o->dist) > 1 || (o->connect_url && !o->shared_fs) ||
        pack_supported(o->backend, NULL))
        return 1;
    return o->pack_max < MODEL_PACK_MAX ? o->pack_max : MODEL_PACK_MAX;
}

int agent_run(const agent_opts *o, lr_err *err) {
    agent ag;
    memset(&ag, 0, sizeof ag);
    ag.o = o;
    ag.fd = -1;
    ag.link_fd = -1;
    ag.link.fd = -1;
    ag.pack_max = pack_max_of(o);
    if (o->data_dir) snprintf(ag.cache, sizeof ag.cache, "%s/cache", o->data_dir);
    pthread_mutex_init(&ag.wlock, NULL);
    pthread_mutex_init(&ag.plock, NULL);
    pthread_mutex_init(&ag.qlock, NULL);
    pthread_mutex_init(&ag.alock, NULL);
    pthread_cond_init(&ag.acked, NULL);
    frame_dec d;
    frame_dec_init(&d, FRAME_MAX);
    int rc = -1;
    ag.pend = malloc(UNACKED_MAX * sizeof *ag.pend);
    if (!ag.pend) {
        lr_errf(err, "out of memory");
        goto out;
    }
    ag.fd = o->connect_url ? connect_remote(&ag, err) : frame_connect_unix(o->socket_path, err);
    if (ag.fd < 0) goto out;
    char dev[256];
    device_name(o->backend, dev, sizeof dev);
    if (dist_size(o->dist) > 1) { /* lorad shows a worker's ranks with its device */
        size_t l = strlen(dev);
        snprintf(dev + l, sizeof dev - l, " x %d ranks (%s)", dist_size(o->dist), o->backend);
    }
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    char kernel[96] = "";
    if (!strcmp(o->backend, "cpu")) { /* chosen and self-tested here, once, before any job */
        const kg_kernel *k = kg_current();
        const kbf_kernel *bf = kbf_current(NULL); /* compute_dtype auto uses it for 16-bit models */
        snprintf(kernel, sizeof kernel, "%s (%s)%s%s", k->name, k->isa, bf ? "; bf16 " : "", bf ? bf->name : "");
    }
    send_locked(&ag, msg_hello(o->name, o->backend, dev, pages > 0 && psz > 0 ? (int64_t)pages * psz : 0,
                               threads_used(o->threads), AGENT_VERSION, kernel[0] ? kernel : NULL, ag.pack_max));
    int64_t period = (int64_t)(o->heartbeat_s > 0 ? o->heartbeat_s : 2) * 1000, next_hb = now_ms() + period;
    for (;;) {
        if (ag.write_failed) {
            lr_errf(err, "lost the connection to lorad");
            goto out;
        }
        int64_t wait = next_hb - now_ms();
        json_t *f = NULL;
        int r = frame_read_fd(ag.fd, &d, wait > 0 ? (int)wait : 0, &f, err);
        if (r == FRAME_EOF) { /* lorad closed the socket (stopped or restarting): the normal end */
            rc = 0;
            goto out;
        }
        if (r < 0) goto out;
        if (now_ms() >= next_hb) {
            heartbeat(&ag);
            resend(&ag);
            next_hb = now_ms() + period;
        }
        if (reap(&ag) && o->once) { /* its outcome went out before finished was set */
            rc = 0;
            goto out;
        }
        if (r == 0) continue;
        msg m;
        if (msg_parse(f, &m, err)) {
            json_decref(f);
            lr_err_prefix(err, "protocol error: ");
            goto out;
        }
        if (m.type == MSG_ASSIGN) {
            if (start_job(&ag, m.job_id, &m.assign, err)) {
                json_decref(f);
                goto out;
            }
        } else if (m.type == MSG_CANCEL) {
            /* a cancel overrides a suspend, never the other way round */
            for (int i = 0; i < ag.n_jobs; i++) {
                job *j = ag.jobs[i];
                int go = TRAIN_GO;
                if (strcmp(j->id, m.job_id)) continue;
                if (!m.cancel.resume) atomic_store(&j->cancel, TRAIN_CANCEL);
                else atomic_compare_exchange_strong(&j->cancel, &go, TRAIN_SUSPEND);
            }
        } else if (m.type == MSG_ACK) {
            on_ack(&ag, m.ack.seq);
        } else if (m.type != MSG_HEARTBEAT) {
            lr_errf(err, "protocol error: lorad sent %s", msg_type_name(m.type));
            json_decref(f);
            goto out;
        }
        json_decref(f);
    }
out:
    for (int i = 0; i < ag.n_jobs; i++) atomic_store(&ag.jobs[i]->cancel, TRAIN_CANCEL);
    if (ag.pack_started) pthread_join(ag.pack_thread, NULL); /* its jobs stop at their next check */
    while (ag.n_jobs > 0) join_job(&ag, ag.n_jobs - 1);
    agent_rank_quit(o->dist);
    if (ag.fd >= 0) close(ag.fd);
    if (ag.link_fd >= 0) { /* the relay sends what the agent wrote, then sees it closed */
        pthread_join(ag.relay, NULL);
        close(ag.link_fd);
        tl_close(&ag.link);
    }
    frame_dec_free(&d);
    for (size_t i = 0; i < ag.n_pend; i++) json_decref(ag.pend[i].frame);
    free(ag.pend);
    pthread_cond_destroy(&ag.acked);
    pthread_mutex_destroy(&ag.alock);
    pthread_mutex_destroy(&ag.wlock);
    pthread_mutex_destroy(&ag.plock);
    pthread_mutex_destroy(&ag.qlock);
    return rc;
}

/* A bounded integer flag; out of range or not a number gives lo. */
static long num_arg(const char *v, long lo, long hi) {
    char *end;
    long x = strtol(v, &end, 10);
    return *end || x < lo || x > hi ? lo : x;
}

int cmd_agent(int argc, char **argv) {
    agent_opts o = {.name = NULL, .backend = "cpu", .heartbeat_s = 2, .run = job_run, .pack_max = 4};
    static const char usage[] =
        "usage: lora-worker agent --socket PATH [--name N] [--backend cpu|cuda:N] [--threads N] [--heartbeat SECONDS]\n"
        "         [--pack-max N] (started by lorad on its own machine)\n"
        "       lora-worker agent --connect https://HOST:PORT --token TOKEN [--ca FILE] [--data-dir DIR]\n"
        "         [--shared-fs] [--once] [--name N] [--device cpu|cuda:N] [--threads N] [--heartbeat SECONDS]\n"
        "         (a remote worker; the token may come from LORA_WORKER_TOKEN instead)\n"
        "  --pack-max N: co-train up to N (default 4, 1 = never) plain LoRA sft jobs on the same base model in\n"
        "  one pass (CPU, one process, files on this machine); compatible jobs lorad assigns while it trains\n"
        "  join at the next step\n";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--shared-fs") || !strcmp(a, "--once")) {
            *(!strcmp(a, "--once") ? &o.once : &o.shared_fs) = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "lora-worker agent: %s needs a value\n", a);
            return 1;
        }
        if (!strcmp(a, "--socket")) o.socket_path = v;
        else if (!strcmp(a, "--name")) o.name = v;
        else if (!strcmp(a, "--backend") || !strcmp(a, "--device")) o.backend = v;
        else if (!strcmp(a, "--threads")) o.threads = (int)num_arg(v, 0, 4096);
        else if (!strcmp(a, "--heartbeat")) o.heartbeat_s = (int)num_arg(v, 1, 600);
        else if (!strcmp(a, "--pack-max")) o.pack_max = (int)num_arg(v, 1, MODEL_PACK_MAX);
        else if (!strcmp(a, "--connect")) o.connect_url = v;
        else if (!strcmp(a, "--token")) o.token = v;
        else if (!strcmp(a, "--ca")) o.ca_file = v;
        else if (!strcmp(a, "--data-dir")) o.data_dir = v;
        else {
            fputs(usage, stderr);
            return 1;
        }
        i++;
    }
    if (!o.socket_path == !o.connect_url) {
        fprintf(stderr, "lora-worker agent: --socket PATH (started by lorad) or --connect URL (a remote worker) is required\n%s",
                usage);
        return 1;
    }
    char host[64] = "w0", dd[1024];
    if (o.connect_url) {
        if (!o.token) o.token = getenv("LORA_WORKER_TOKEN");
        if (!o.token || !*o.token) {
            fprintf(stderr, "lora-worker agent: --connect needs --token (or LORA_WORKER_TOKEN): an admin makes one "
                            "with `lorad worker-token add NAME`\n");
            return 1;
        }
        if (!o.data_dir) {
            const char *home = getenv("HOME");
            snprintf(dd, sizeof dd, "%s/.cache/lora-worker", home && *home ? home : "/tmp");
            o.data_dir = dd;
        }
        /* lorad knows a remote worker by its name: the host's by default */
        if (!o.name && gethostname(host, sizeof host - 1)) snprintf(host, sizeof host, "remote");
        /* a lorad that vanishes mid-write must not kill the worker */
        signal(SIGPIPE, SIG_IGN);
    } else {
        /* Die with the daemon: a worker lorad no longer supervises must not
         * keep a GPU busy. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
    }
    if (!o.name) o.name = host;
    lr_err e = {0};
    /* started by mpirun (lorad's NxBACKEND workers): rank 0 is the agent */
    if (dist_init(&o.dist, &e)) {
        fprintf(stderr, "lora-worker %s: %s\n", o.name, e.msg);
        return 2;
    }
    int rc = dist_rank(o.dist) ? agent_follow(&o, o.dist, &e) : agent_run(&o, &e);
    if (rc) {
        fprintf(stderr, "lora-worker %s: %s\n", o.name, e.msg);
        return 2;
    }
    dist_finalize(o.dist);
    return 0;
}
