/* pack: several LoRA jobs on one base model in lockstep (see pack.h). */
#include "worker/pack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/hfconfig.h"
#include "kernels/backend.h"
#include "proto/pack.h"
#include "worker/model.h"

typedef struct member {
    trainer *T;
    const jobspec *spec;
    pack_ended_fn ended;
    void *tag;
    int n;                /* micro-batches of the step under way */
    int64_t packed_steps; /* steps run with another job in the pass */
    train_outcome outcome;
} member;

struct pack {
    train_opts opts;
    kb_backend *be;
    model *m;
    member *mem;
    int n, max;
};

/* By name, before a backend exists (the agent's HELLO): both backends
 * kb_create knows have lora_fwd / lora_bwd. */
int pack_supported(const char *backend, lr_err *err) {
    if (backend && strcmp(backend, "cpu") && strncmp(backend, "cuda", 4))
        return lr_errp(err, LR_E_INVALID, "resources.co_train",
                       "co-training several jobs in one pass runs on the cpu and cuda backends, not %s", backend);
    return 0;
}

int pack_new(const train_opts *opts, int max_jobs, pack **out, lr_err *err) {
    *out = NULL;
    if (opts->dist) return lr_errp(err, LR_E_INVALID, NULL, "a pack runs in one process");
    if (max_jobs < 1 || max_jobs > MODEL_PACK_MAX)
        return lr_errp(err, LR_E_INVALID, NULL, "a pack holds 1..%d jobs", MODEL_PACK_MAX);
    if (pack_supported(opts->backend, err)) return -1;
    pack *p = calloc(1, sizeof *p);
    if (p) p->mem = calloc((size_t)max_jobs, sizeof *p->mem);
    if (!p || !p->mem) {
        free(p);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    p->opts = *opts;
    p->opts.resume = 0;
    p->max = max_jobs;
    if (kb_create(opts->backend ? opts->backend : "cpu", opts->threads, &p->be, err)) {
        free(p->mem);
        free(p);
        return -1;
    }
    *out = p;
    return 0;
}

/* Member i leaves: the trainer is closed, its owner told. */
static void leave(pack *p, int i, int failed, lr_err *err) {
    member mb = p->mem[i];
    lr_err e = {0};
    if (train_close(mb.T, failed, failed ? err : &e) && !failed) {
        failed = 1;
        err = &e;
    }
    memmove(&p->mem[i], &p->mem[i + 1], (size_t)(p->n - i - 1) * sizeof *p->mem);
    p->n--;
    mb.ended(mb.tag, failed, mb.outcome, failed ? err : NULL);
}

void pack_free(pack *p) {
    if (!p) return;
    while (p->n > 0) {
        lr_err e = {0};
        lr_errf(&e, "the job's pack was closed before it ended");
        leave(p, p->n - 1, 1, &e);
    }
    model_free(p->m);
    kb_destroy(p->be);
    free(p->mem);
    free(p);
}

int pack_add(pack *p, const jobspec *spec, const train_paths *paths, const train_hooks *hooks, int resume,
             pack_ended_fn ended, void *tag, lr_err *err) {
    if (p->n >= p->max) return lr_errp(err, LR_E_BUSY, NULL, "the pack is full (%d jobs)", p->max);
    lr_err why = {0};
    if (!pack_compatible(spec, spec, &why))
        return lr_errp(err, LR_E_INVALID, why.param[0] ? why.param : NULL, "this job cannot share a pass: %s", why.msg);
    for (int i = 0; i < p->n; i++)
        if (!pack_compatible(p->mem[i].spec, spec, &why))
            return lr_errp(err, LR_E_INVALID, why.param[0] ? why.param : NULL, "this job cannot join the pack: %s",
                           why.msg);
    train_outcome oc = TRAIN_DONE;
    lr_err e = {0};
    if (!p->m) {
        /* the first job's activation_checkpointing holds for the pack (the gradients are the same either way) */
        if (train_load_model(spec, paths->model_dir, p->be, &p->m, &e)) {
            if (hooks && hooks->event) hooks->event(hooks->ud, "error", e.msg);
            ended(tag, 1, oc, &e);
            return 0;
        }
    }
    train_opts o = p->opts;
    o.resume = resume;
    trainer *T;
    int rc = train_open_shared(spec, paths, &o, hooks, p->be, p->m, &T, &oc, &e);
    if (rc) {
        ended(tag, rc < 0, oc, rc < 0 ? &e : NULL);
        return 0;
    }
    p->mem[p->n++] = (member){T, spec, ended, tag, 0, 0, TRAIN_DONE};
    if (p->n > 1 && hooks && hooks->event) {
        char msg[160];
        snprintf(msg, sizeof msg, "co-training: from its next step this job shares each pass over the base model with %d other job%s",
                 p->n - 1, p->n > 2 ? "s" : "");
        hooks->event(hooks->ud, "info", msg);
    }
    return 0;
}

int64_t pack_job_bytes(const jobspec *s, const hf_config *c) {
    int64_t C = c->hidden, I = c->intermediate, Qd = (int64_t)c->n_heads * c->head_dim;
    int64_t KVd = (int64_t)c->n_kv_heads * c->head_dim, r = s->lora.r, L = c->n_layers;
    int64_t rows = (int64_t)s->hp.batch_size * s->hp.max_seq_len;
    /* r (in + out) over q, k, v, o, gate, up, down; params, grads, 2 moments */
    int64_t lora = 4 * L * r * (7 * C + 2 * Qd + 2 * KVd + 3 * I);
    /* per row and layer: input, 2 norms, q k v, attention, mid, 2 MLP, LoRA inputs; then the shared scratch */
    int64_t act = rows * (L * (5 * C + 2 * Qd + 2 * KVd + 2 * I + 7 * r) + 6 * C + 4 * I + Qd + 2 * KVd);
    return (lora + act) * (int64_t)sizeof(float);
}

int pack_jobs(const pack *p) { return p->n; }

int64_t pack_packed_steps(const pack *p, const void *tag) {
    for (int i = 0; i < p->n; i++)
        if (p->mem[i].tag == tag) return p->mem[i].packed_steps;
    return -1;
}

int pack_step(pack *p, lr_err *err) {
    model_pack_mb mbs[MODEL_PACK_MAX];
    int who[MODEL_PACK_MAX], rounds = 0, together = p->n > 1;
    for (int i = 0; i < p->n; i++) {
        lr_err e = {0};
        if (train_step_begin(p->mem[i].T, &p->mem[i].n, &e)) {
            leave(p, i--, 1, &e);
            continue;
        }
        if (p->mem[i].n > rounds) rounds = p->mem[i].n;
    }
    for (int k = 0; k < rounds && p->n > 0; k++) {
        int cnt = 0;
        for (int i = 0; i < p->n; i++) {
            member *mb = &p->mem[i];
            if (k >= mb->n) continue;
            lr_err e = {0};
            /* a stop is asked between a job's micro-batches, as alone */
            int how = k > 0 ? train_step_check(mb->T, &mb->outcome, &e) : 0;
            if (how) {
                leave(p, i--, how < 0, &e);
                continue;
            }
            train_step_micro(mb->T, k, &mbs[cnt]);
            who[cnt++] = i;
        }
        if (!cnt) continue;
        if (model_fwd_bwd_pack(p->m, mbs, cnt, err)) {
            while (p->n > 0) leave(p, p->n - 1, 1, err);
            return -1;
        }
        for (int j = 0; j < cnt; j++) train_step_micro_done(p->mem[who[j]].T, k, &mbs[j]);
    }
    for (int i = 0; i < p->n; i++) {
        member *mb = &p->mem[i];
        lr_err e = {0};
        mb->packed_steps += together;
        int rc = train_step_end(mb->T, &mb->outcome, &e);
        if (rc) leave(p, i--, rc < 0, &e);
    }
    return 0;
}
