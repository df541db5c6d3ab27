/* train: the training loop. Semantics follow Hugging Face's Trainer so that
 * numbers carry over:
 *  - one optimizer step = grad_accum micro-batches; the loss of the step is
 *    the mean token cross-entropy over ALL trained tokens of those
 *    micro-batches (each token weighs the same, not each micro-batch), and
 *    so are the gradients;
 *  - gradient-norm clipping on the global L2 norm, then AdamW;
 *  - the learning rate of optimizer step s (counting from 0) is
 *    lr * lambda(s), lambda as transformers' get_*_schedule_with_warmup;
 *  - logged "loss" is the mean of the step losses since the last log.
 * Why this file is long: the loop, its methods, evaluation, stopping rules,
 * checkpoints, the run log and co-training's step parts all work on the
 * one trainer struct of a run (the data side is worker/batch.c).
 * Methods (method.type):
 *  - sft: the loss above; also logs train_accuracy, the share of the step's
 *    trained tokens whose argmax logit is the target (TRL's
 *    mean_token_accuracy; averaged over the window like the loss), and
 *    eval_accuracy with the eval loss (sft, kl_sft);
 *  - kl_sft: loss = mean CE + kl_lambda * kl_tau^2 * mean KL(base || tuned)
 *    of softmax(logits / kl_tau), both means over all trained tokens of the
 *    step (token-weighted like the CE), the base distribution from the same
 *    model with its adapters switched off, computed in the same step without
 *    gradient (model_fwd_bwd_kl); also logs ce_loss and kl (the means) and
 *    train_accuracy as sft;
 *  - dpo: micro-batches of batch_size pairs; loss = mean over the step's
 *    pairs of TRL's sigmoid DPO loss -log sigmoid(beta ((pc - rc) - (pr -
 *    rr))), sequence log-probabilities summed over the answer tokens,
 *    against the base model or, with method.reference_adapter, that frozen
 *    adapter (the trained adapter then starts as a copy of it, with its own
 *    r, alpha, targets and DoRA setting; lora.dropout still applies). Logs
 *    rewards/accuracy (pairs with chosen reward > rejected), rewards/margin
 *    (mean chosen minus rejected reward, reward = beta (policy - reference)
 *    log-probability), rewards/chosen, rewards/rejected; eval_loss is the
 *    mean DPO loss of the validation pairs.
 *  - full_sft: the sft loss on every weight of the model (no adapters; the
 *    lora block is ignored); AdamW without weight decay on biases and norm
 *    weights (HF Trainer's rule); checkpoints hold the weights in f32 so
 *    a resumed run continues bit for bit, and the run directory ends with
 *    a full HF model folder (model.safetensors in the base's dtypes,
 *    config.json, tokenizer files) in place of the adapter.
 * lora.use_dora trains DoRA adapters (worker/model.h) with any method.
 * hyperparameters.activation_checkpointing recomputes each layer's
 * activations in the backward (model_set_recompute); auto turns it on for
 * max_seq_len >= 2048.
 * Every random draw derives from (seed, step), (seed, step, micro-batch) or
 * (seed, epoch), never from how many draws came before, so a run resumed
 * from a checkpoint continues bit for bit, on any number of ranks.
 * Data-parallel ranks (train.h, worker/dist.h) all load every micro-batch
 * of a step (the loader is cheap and deterministic, so the data position
 * is the same everywhere and a checkpoint does not depend on the rank
 * count) and each trains micro-batches k = rank, rank + size, ...; the
 * per-micro-batch loss terms are summed in k order after the exchange, so
 * the logged losses are the single process's to the bit, and the gradients
 * are its sum up to float rounding order. */
#include "worker/train.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/buf.h"
#include "common/rng.h"
#include "kernels/backend.h"
#include "formats/chat.h"
#include "worker/ckpt.h"
#include "worker/batch.h"
#include "worker/dist.h"
#include "worker/model.h"
#include "formats/tok.h"

#define LOG_MAX_ROWS 1000000

#define LOG_EXTRA 4 /* method-specific columns, named by extra_names() */
#define MB_STATS (1 + LOG_EXTRA) /* per micro-batch: loss term, extra terms */

typedef struct log_row {
    int64_t step;
    double epoch, loss, lr, grad_norm, tokens_per_s, eval_loss; /* NAN when absent */
    double x[LOG_EXTRA];                                        /* NAN when absent */
} log_row;

/* The steps since the last logged one. */
typedef struct logwin {
    double loss, x[LOG_EXTRA], t0;
    int64_t n, tokens;
} logwin;

typedef struct trainer {
    const jobspec *spec;
    const train_paths *paths;
    const train_hooks *hooks;
    kb_backend *be;
    tok *tk;
    chat ch;
    data_set ds;
    data_loader tl;
    data_batch *mb; /* grad_accum micro-batches of the current step */
    double *mbst;   /* [grad_accum][MB_STATS]: each micro-batch's sums, exchanged between ranks */
    dist *d;        /* NULL: one process */
    int rank, size;
    model *m;
    float *adam_m, *adam_v;
    size_t numel;
    int64_t total_steps, warmup, step;
    double epoch_f;
    log_row *log;
    size_t n_log, cap_log;
    double t_start, t_setup, t_train_start;
    int64_t tokens_seen;
    logwin win;          /* kept in checkpoints, so a resume logs what a straight run does */
    int64_t saved_step;  /* the newest checkpoint's step, -1 none */
    /* early stopping */
    double best;
    int64_t bad_evals;
    char stop_reason[256];
    double lr, gnorm;        /* the last step's */
    int64_t steps_per_epoch;
    /* the step under way: where its data began, its counts and loss scale */
    data_pos st_start;
    int64_t st_targets, st_pairs, st_tokens;
    float st_scale;
    int st_n;
    /* co-training (train_open_shared): the backend and model are the
     * pack's; this job's adapter lives in slot except while inside */
    int shared, inside;
    model_slot *slot;
} trainer;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void ev(trainer *T, const char *level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void ev(trainer *T, const char *level, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (T->hooks && T->hooks->event) T->hooks->event(T->hooks->ud, level, msg);
}

static void data_warn(void *ud, const char *msg) { ev(ud, "warning", "%s", msg); }

/* TRAIN_GO, TRAIN_CANCEL or TRAIN_SUSPEND (train.h). With ranks this is a
 * collective: every rank stops where rank 0 (the one lorad talks to) does. */
static int stop_asked(trainer *T) {
    int how = T->hooks && T->hooks->cancelled ? T->hooks->cancelled(T->hooks->ud) : TRAIN_GO;
    lr_err e = {0};
    if (T->size > 1 && dist_bcast(T->d, &how, sizeof how, &e)) how = TRAIN_CANCEL;
    return how;
}

static void metric(trainer *T, const char *name, double v) {
    if (T->hooks && T->hooks->metric) T->hooks->metric(T->hooks->ud, T->step, T->epoch_f, name, v);
}

/* transformers' schedules: s counts optimizer steps from 0. */
static double lr_lambda(const jobspec *spec, int64_t s, int64_t total, int64_t warmup) {
    if (s < warmup) return (double)s / (double)(warmup > 1 ? warmup : 1);
    double rest = (double)(total - warmup > 1 ? total - warmup : 1);
    switch (spec->hp.lr_scheduler) {
    case SCHED_CONSTANT:
        return 1.0;
    case SCHED_LINEAR: {
        double l = (double)(total - s) / rest;
        return l > 0 ? l : 0;
    }
    case SCHED_COSINE:
    default: {
        double progress = (double)(s - warmup) / rest;
        double l = 0.5 * (1.0 + cos(M_PI * progress));
        return l > 0 ? l : 0;
    }
    }
}

/* The module names of the target set, for this architecture. */
static void lora_targets(const jobspec *spec, hf_arch arch, model_lora_cfg *cfg) {
    static const char *const llama_attn[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    static const char *const llama_all[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    static const char *const gpt2_attn[] = {"c_attn", "attn.c_proj"};
    static const char *const gpt2_all[] = {"c_attn", "c_proj", "c_fc"};
    const char *const *names;
    int n;
    cfg->n_targets = 0;
    if (spec->lora.n_targets > 0) {
        for (int i = 0; i < spec->lora.n_targets && i < MODEL_MAX_TARGETS; i++)
            snprintf(cfg->targets[cfg->n_targets++], sizeof cfg->targets[0], "%s", spec->lora.targets[i]);
        return;
    }
    int attn_only = !strcmp(spec->lora.target_set, "attn");
    if (arch == ARCH_GPT2) {
        names = attn_only ? gpt2_attn : gpt2_all;
        n = attn_only ? 2 : 3;
    } else {
        names = attn_only ? llama_attn : llama_all;
        n = attn_only ? 4 : 7;
    }
    for (int i = 0; i < n; i++) snprintf(cfg->targets[cfg->n_targets++], sizeof cfg->targets[0], "%s", names[i]);
}

/* ---- the run log (train_log.csv / .json), rewritten whole at each log ---- */

/* The method's own logged values (the log_row.x columns and metrics). */
static const char *const *extra_names(const jobspec *spec, int *n) {
    static const char *const sft[] = {"train_accuracy"}; /* scored tokens whose argmax is the target */
    static const char *const kl[] = {"ce_loss", "kl", "train_accuracy"};
    static const char *const dpo[] = {"rewards/accuracy", "rewards/margin", "rewards/chosen", "rewards/rejected"};
    *n = spec->method.type == METHOD_KL_SFT ? 3 : spec->method.type == METHOD_DPO ? 4 : 1;
    return spec->method.type == METHOD_DPO ? dpo : spec->method.type == METHOD_KL_SFT ? kl : sft;
}

static log_row log_row_new(int64_t step, double epoch) {
    log_row r = {step, epoch, NAN, NAN, NAN, NAN, NAN, {NAN, NAN, NAN, NAN}};
    return r;
}

static int log_add(trainer *T, log_row r, lr_err *err) {
    if (T->n_log > 0 && T->log[T->n_log - 1].step == r.step) {
        /* the eval of a logged step joins its row */
        log_row *p = &T->log[T->n_log - 1];
        if (!isnan(r.eval_loss)) p->eval_loss = r.eval_loss;
        if (!isnan(r.loss)) {
            double e = p->eval_loss;
            *p = r;
            if (isnan(r.eval_loss)) p->eval_loss = e;
        }
        return 0;
    }
    if (T->n_log == T->cap_log) {
        size_t cap = T->cap_log ? T->cap_log * 2 : 256;
        if (cap > LOG_MAX_ROWS) return lr_errf(err, "training log is over %d rows", LOG_MAX_ROWS);
        log_row *p = realloc(T->log, cap * sizeof *p);
        if (!p) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        T->log = p;
        T->cap_log = cap;
    }
    T->log[T->n_log++] = r;
    return 0;
}

static json_t *num_or_null(double v) { return isnan(v) ? json_null() : json_real(v); }

static int log_write(trainer *T, lr_err *err) {
    if (T->rank) return 0; /* rank 0 writes run_dir */
    lr_buf csv;
    lr_buf_init(&csv, (size_t)1 << 30);
    json_t *arr = json_array();
    char path[4200];
    int rc = -1;
    char *js = NULL;
    int nx;
    const char *const *xn = extra_names(T->spec, &nx);
    if (lr_buf_adds(&csv, "step,epoch,loss,lr,grad_norm,tokens_per_s,eval_loss")) goto done;
    for (int k = 0; k < nx; k++)
        if (lr_buf_printf(&csv, ",%s", xn[k])) goto done;
    if (lr_buf_adds(&csv, "\n")) goto done;
    for (size_t i = 0; i < T->n_log; i++) {
        const log_row *r = &T->log[i];
        char ev_s[32] = "", l_s[32] = "", lr_s[32] = "", g_s[32] = "", t_s[32] = "";
        if (!isnan(r->eval_loss)) snprintf(ev_s, sizeof ev_s, "%.6f", r->eval_loss);
        if (!isnan(r->loss)) snprintf(l_s, sizeof l_s, "%.6f", r->loss);
        if (!isnan(r->lr)) snprintf(lr_s, sizeof lr_s, "%.6e", r->lr);
        if (!isnan(r->grad_norm)) snprintf(g_s, sizeof g_s, "%.6f", r->grad_norm);
        if (!isnan(r->tokens_per_s)) snprintf(t_s, sizeof t_s, "%.1f", r->tokens_per_s);
        if (lr_buf_printf(&csv, "%" PRId64 ",%.4f,%s,%s,%s,%s,%s", r->step, r->epoch, l_s, lr_s, g_s, t_s, ev_s))
            goto done;
        for (int k = 0; k < nx; k++) {
            char x_s[32] = "";
            if (!isnan(r->x[k])) snprintf(x_s, sizeof x_s, "%.6f", r->x[k]);
            if (lr_buf_printf(&csv, ",%s", x_s)) goto done;
        }
        if (lr_buf_adds(&csv, "\n")) goto done;
        json_t *o = json_pack("{s:I,s:f}", "step", (json_int_t)r->step, "epoch", r->epoch);
        json_object_set_new(o, "loss", num_or_null(r->loss));
        json_object_set_new(o, "lr", num_or_null(r->lr));
        json_object_set_new(o, "grad_norm", num_or_null(r->grad_norm));
        json_object_set_new(o, "tokens_per_s", num_or_null(r->tokens_per_s));
        json_object_set_new(o, "eval_loss", num_or_null(r->eval_loss));
        for (int k = 0; k < nx; k++) json_object_set_new(o, xn[k], num_or_null(r->x[k]));
        json_array_append_new(arr, o);
    }
    if (lr_pathf(path, sizeof path, "%s/train_log.csv", T->paths->run_dir) ||
        lr_write_file_atomic(path, csv.data, csv.len, err))
        goto done;
    js = json_dumps(arr, JSON_INDENT(1));
    if (!js || lr_pathf(path, sizeof path, "%s/train_log.json", T->paths->run_dir) ||
        lr_write_file_atomic(path, js, strlen(js), err))
        goto done;
    rc = 0;
done:
    if (rc && !err->msg[0]) lr_errf(err, "cannot write the training log in %s", T->paths->run_dir);
    free(js);
    json_decref(arr);
    lr_buf_free(&csv);
    return rc;
}

/* On resume the log is cut back to the checkpoint's step: what follows is
 * trained again, identically. */
static int log_reload(trainer *T, int64_t upto, lr_err *err) {
    char path[4200];
    char *text = NULL;
    size_t len;
    if (lr_pathf(path, sizeof path, "%s/train_log.json", T->paths->run_dir)) return 0;
    lr_err ignore = {0};
    if (lr_read_file(path, (size_t)1 << 30, &text, &len, &ignore)) return 0; /* none yet */
    json_t *arr = json_loadb(text, len, 0, NULL);
    free(text);
    if (!json_is_array(arr)) {
        json_decref(arr);
        return 0;
    }
    size_t i;
    json_t *o;
    int rc = 0;
    int nx;
    const char *const *xn = extra_names(T->spec, &nx);
    json_array_foreach(arr, i, o) {
        log_row r = log_row_new(0, 0);
        r.step = json_integer_value(json_object_get(o, "step"));
        if (r.step > upto) break;
#define F(k) (json_is_number(json_object_get(o, k)) ? json_number_value(json_object_get(o, k)) : NAN)
        r.epoch = F("epoch");
        r.loss = F("loss");
        r.lr = F("lr");
        r.grad_norm = F("grad_norm");
        r.tokens_per_s = F("tokens_per_s");
        r.eval_loss = F("eval_loss");
        for (int k = 0; k < nx; k++) r.x[k] = F(xn[k]);
#undef F
        if ((rc = log_add(T, r, err))) break;
    }
    json_decref(arr);
    return rc;
}

/* ---- pieces of the loop ---------------------------------------------------- */

static int64_t count_steps(trainer *T) {
    const jobspec *s = T->spec;
    if (s->hp.max_steps > 0) return s->hp.max_steps;
    int64_t total = 0;
    for (int e = 0; e < s->hp.n_epochs; e++) {
        int64_t b = data_epoch_batches(&T->tl, e);
        if (b < 0) return -1;
        total += (b + s->hp.grad_accum - 1) / s->hp.grad_accum;
    }
    return total;
}

/* Loads the grad_accum micro-batches of the next step, crossing into the
 * next epoch when one ends; *n gets how many (fewer only when the data end
 * in an epoch-bound run). */
static int next_step_batches(trainer *T, int *n, lr_err *err) {
    *n = 0;
    for (int k = 0; k < T->spec->hp.grad_accum; k++) {
        int got = data_next(&T->tl, &T->mb[k], err);
        if (got < 0) return -1;
        if (got == 0) {
            /* epoch boundary: a step never mixes epochs (as HF's Trainer) */
            if (k > 0) break;
            got = data_next(&T->tl, &T->mb[k], err);
            if (got < 0) return -1;
            if (got == 0) return lr_errf(err, "the training set produced no batch");
        }
        (*n)++;
    }
    return 0;
}

static model_ref dpo_ref(const trainer *T) {
    return T->spec->method.reference_adapter[0] ? MODEL_REF_ADAPTER : MODEL_REF_BASE;
}

/* The eval loss: mean CE per validation token (sft, kl_sft, which also
 * report eval_accuracy: the tokens whose argmax is the target) or mean DPO
 * loss per validation pair (dpo, which also reports eval_rewards/accuracy).
 * Returns 1 when cancelled part way (*out stays NAN). */
static int evaluate(trainer *T, double *out, lr_err *err) {
    *out = NAN;
    if (T->ds.n_val == 0) return 0;
    int dpo = T->spec->method.type == METHOD_DPO;
    data_loader vl;
    data_batch b = {0};
    if (data_loader_init(&vl, &T->ds, DATA_VAL, T->spec->hp.batch_size, 0, T->spec->hp.max_seq_len,
                         T->spec->hp.seed, err))
        return -1;
    /* per batch: loss sum, count, accurate pairs; batch i on rank i % size,
     * summed in batch order after the exchange (the single process's sums) */
    double *v = NULL, sum = 0, n = 0, acc = 0;
    size_t nb = 0, cap = 0;
    int rc = 0, got;
    model_set_train(T->m, 0, 0);
    while ((got = data_next(&vl, &b, err)) == 1) {
        /* a suspend waits for the eval: the step it belongs to must end whole */
        if (stop_asked(T) == TRAIN_CANCEL) {
            rc = 1;
            break;
        }
        if (nb == cap) {
            size_t nc = cap ? 2 * cap : 64;
            double *p = realloc(v, nc * 3 * sizeof *p);
            if (!p) {
                rc = lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
                break;
            }
            v = p, cap = nc;
        }
        double *r = v + 3 * nb;
        r[0] = r[1] = r[2] = 0;
        if ((int64_t)(nb++ % (size_t)T->size) != T->rank) continue;
        int64_t c;
        if (dpo) {
            model_dpo_out o;
            if ((rc = model_dpo(T->m, b.ids, b.labels, b.n_examples, b.T, (float)T->spec->method.beta, dpo_ref(T), 0,
                                0.0f, &o, err)))
                break;
            r[0] = o.loss_sum, r[1] = (double)o.pairs, r[2] = o.accurate;
        } else if ((rc = model_loss(T->m, b.ids, b.labels, b.rows, b.T, &r[0], &c, err))) {
            break;
        } else {
            r[1] = (double)c;
            r[2] = (double)model_last_correct(T->m);
        }
    }
    if (got < 0) rc = -1;
    if (!rc && dist_allreduce_f64(T->d, v, 3 * nb, err)) rc = -1;
    for (size_t i = 0; !rc && i < nb; i++) sum += v[3 * i], n += v[3 * i + 1], acc += v[3 * i + 2];
    free(v);
    data_batch_free(&b);
    data_loader_free(&vl);
    if (!rc && n > 0) *out = sum / n;
    if (!rc && n > 0) metric(T, dpo ? "eval_rewards/accuracy" : "eval_accuracy", acc / n);
    return rc;
}

static json_t *state_json(trainer *T) {
    data_pos p = data_tell(&T->tl);
    json_t *o = json_pack("{s:I,s:f,s:I,s:I,s:I,s:f,s:I,s:f}", "step", (json_int_t)T->step, "epoch", T->epoch_f,
                          "data_epoch", (json_int_t)p.epoch, "data_index", (json_int_t)p.index, "total_steps",
                          (json_int_t)T->total_steps, "best", isfinite(T->best) ? T->best : 1e308, "bad_evals",
                          (json_int_t)T->bad_evals, "tokens_seen", (double)T->tokens_seen);
    if (o && T->win.n) {
        /* the steps not logged yet: their sums, exact as doubles in JSON */
        json_t *x = json_array();
        for (int k = 0; k < LOG_EXTRA; k++) json_array_append_new(x, json_real(T->win.x[k]));
        json_object_set_new(o, "log_window", json_pack("{s:f,s:I,s:I,s:o}", "loss", T->win.loss, "n",
                                                       (json_int_t)T->win.n, "tokens", (json_int_t)T->win.tokens,
                                                       "x", x));
    }
    return o;
}

static void window_restore(trainer *T, const json_t *st) {
    const json_t *w = json_object_get(st, "log_window");
    T->win = (logwin){.t0 = now_s()};
    if (!json_is_object(w)) return;
    T->win.loss = json_number_value(json_object_get(w, "loss"));
    T->win.n = json_integer_value(json_object_get(w, "n"));
    T->win.tokens = json_integer_value(json_object_get(w, "tokens"));
    for (int k = 0; k < LOG_EXTRA; k++) T->win.x[k] = json_number_value(json_array_get(json_object_get(w, "x"), k));
}

/* What a checkpoint and the run directory hold: the adapter, or with
 * full_sft the whole model (f32 in checkpoints, so resuming is exact). */
static int write_adapter(void *ud, const char *dir, lr_err *err) {
    trainer *T = ud;
    if (model_is_full(T->m)) return model_full_save(T->m, T->paths->model_dir, dir, 1, err);
    return model_lora_save(T->m, dir, err);
}

static int write_result(trainer *T, lr_err *err) {
    if (T->rank) return 0;
    if (model_is_full(T->m)) return model_full_save(T->m, T->paths->model_dir, T->paths->run_dir, 0, err);
    return model_lora_save(T->m, T->paths->run_dir, err);
}

/* The moments live in backend memory; checkpoints hold host copies. */
static int host_moments(trainer *T, ckpt_tensor ex[2], lr_err *err) {
    ex[0] = (ckpt_tensor){"adam.exp_avg", malloc(T->numel * sizeof(float)), T->numel};
    ex[1] = (ckpt_tensor){"adam.exp_avg_sq", malloc(T->numel * sizeof(float)), T->numel};
    if (!ex[0].data || !ex[1].data) {
        free(ex[0].data);
        free(ex[1].data);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    return 0;
}

static int save_checkpoint(trainer *T, lr_err *err) {
    if (T->rank) {
        /* rank 0 writes it; the others know where a suspend stands */
        T->saved_step = T->step;
        return 0;
    }
    char cdir[4200];
    ckpt_tensor ex[2];
    if (host_moments(T, ex, err)) return -1;
    T->be->download(T->be, ex[0].data, T->adam_m, T->numel * sizeof(float));
    T->be->download(T->be, ex[1].data, T->adam_v, T->numel * sizeof(float));
    if (T->hooks && T->hooks->flush) T->hooks->flush(T->hooks->ud);
    json_t *st = state_json(T);
    int rc = ckpt_save(T->paths->run_dir, T->step, write_adapter, T, ex, 2, st, T->spec->hp.save_total_limit, cdir,
                       sizeof cdir, err);
    json_decref(st);
    free(ex[0].data);
    free(ex[1].data);
    if (rc == 0) T->saved_step = T->step;
    if (rc == 0 && T->hooks && T->hooks->checkpoint) T->hooks->checkpoint(T->hooks->ud, T->step, cdir);
    return rc;
}

static int resume(trainer *T, int *resumed, lr_err *err) {
    char dir[4200];
    int64_t step;
    *resumed = 0;
    int found = ckpt_latest(T->paths->run_dir, dir, sizeof dir, &step, err);
    if (found <= 0) return found;
    json_t *st = NULL;
    ckpt_tensor ex[2];
    if (host_moments(T, ex, err)) return -1;
    int rc = -1;
    if (ckpt_load(dir, ex, 2, &st, err)) goto done;
    if (model_is_full(T->m) ? model_full_restore(T->m, dir, err) : model_lora_load(T->m, dir, err)) goto done;
    T->be->upload(T->be, T->adam_m, ex[0].data, T->numel * sizeof(float));
    T->be->upload(T->be, T->adam_v, ex[1].data, T->numel * sizeof(float));
    T->step = json_integer_value(json_object_get(st, "step"));
    T->epoch_f = json_number_value(json_object_get(st, "epoch"));
    T->best = json_number_value(json_object_get(st, "best"));
    T->bad_evals = json_integer_value(json_object_get(st, "bad_evals"));
    T->tokens_seen = (int64_t)json_number_value(json_object_get(st, "tokens_seen"));
    data_pos p = {json_integer_value(json_object_get(st, "data_epoch")),
                  json_integer_value(json_object_get(st, "data_index"))};
    data_seek(&T->tl, p);
    window_restore(T, st);
    T->saved_step = T->step;
    if (log_reload(T, T->step, err)) goto done;
    ev(T, "info", "resumed from checkpoint at step %" PRId64, T->step);
    *resumed = 1;
    rc = 0;
done:
    free(ex[0].data);
    free(ex[1].data);
    json_decref(st);
    return rc;
}

/* Early stopping on the eval loss (or the train loss when there is no
 * validation set): patience evaluations without a min_delta improvement. */
static int plateau(trainer *T, double v) {
    if (T->spec->hp.patience <= 0 || isnan(v)) return 0;
    if (v < T->best - T->spec->hp.min_delta) {
        T->best = v;
        T->bad_evals = 0;
        return 0;
    }
    T->bad_evals++;
    if (T->step < T->spec->hp.min_steps || T->bad_evals < T->spec->hp.patience) return 0;
    snprintf(T->stop_reason, sizeof T->stop_reason,
             "early stop at step %" PRId64 ": %s loss did not improve by %g for %d evaluations (best %.4f)", T->step,
             T->ds.n_val ? "eval" : "train", T->spec->hp.min_delta, T->spec->hp.patience, T->best);
    return 1;
}

static int write_time_metrics(trainer *T, lr_err *err) {
    if (T->rank) return 0;
    double end = now_s();
    double train_s = end - T->t_train_start;
    json_t *o = json_pack("{s:f,s:f,s:f,s:I,s:f,s:f,s:I}", "setup_seconds", T->t_setup - T->t_start,
                          "train_seconds", train_s, "total_seconds", end - T->t_start, "steps",
                          (json_int_t)T->step, "steps_per_second", train_s > 0 ? T->step / train_s : 0.0,
                          "tokens_per_second", train_s > 0 ? T->tokens_seen / train_s : 0.0, "tokens",
                          (json_int_t)T->tokens_seen);
    if (o && T->size > 1) {
        /* the gradient exchange's share of training, as rank 0 saw it
         * (waiting for a slower rank included); grad_bytes per step */
        json_object_set_new(o, "ranks", json_integer(T->size));
        json_object_set_new(o, "allreduce_seconds", json_real(dist_reduce_seconds(T->d)));
        json_object_set_new(o, "grad_bytes", json_integer((json_int_t)(T->numel * sizeof(float))));
        json_object_set_new(o, "transport", json_string(dist_transport(T->d)));
    }
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
    char path[4200];
    int rc = !s || lr_pathf(path, sizeof path, "%s/time_metrics.json", T->paths->run_dir) ||
                     lr_write_file_atomic(path, s, strlen(s), err)
                 ? -1
                 : 0;
    free(s);
    json_decref(o);
    return rc;
}

int train_load_model(const jobspec *s, const char *model_dir, kb_backend *be, model **out, lr_err *err) {
    /* compute_dtype; auto stays f32 for full fine-tuning, which trains the weights themselves */
    int mm = s->compute_dtype == CDT_BF16                                        ? MODEL_MM_BF16
             : s->compute_dtype == CDT_F32 || s->method.type == METHOD_FULL_SFT ? MODEL_MM_F32
                                                                                 : MODEL_MM_AUTO;
    model_quant mq = {(kq_type)s->lora.quantize, s->lora.double_quant, mm};
    if (model_load_quant(model_dir, be, &mq, out, err)) return -1;
    /* auto: activation memory grows with the sequence; past 2048 tokens it
     * outweighs the LoRA model on every preset, so recompute instead */
    int ac = s->hp.activation_checkpointing;
    model_set_recompute(*out, ac < 0 ? s->hp.max_seq_len >= 2048 : ac);
    return 0;
}

/* Returns 1 when cancelled() asked to stop between its phases (tokenizer,
 * data, model), which are the long ones of a big dataset or model. */
static int setup(trainer *T, const train_opts *opts, lr_err *err) {
    const jobspec *s = T->spec;
    job_method mt = s->method.type;
    if (mt != METHOD_SFT && mt != METHOD_KL_SFT && mt != METHOD_DPO && mt != METHOD_FULL_SFT)
        return lr_errp(err, LR_E_INVALID, "method.type", "method '%s' is not available in this build of lora-worker yet",
                       jobspec_method_name(s->method.type));
    const char *ref_dir = mt == METHOD_DPO && s->method.reference_adapter[0] ? T->paths->reference_adapter_dir : NULL;
    if (mt == METHOD_DPO && s->method.reference_adapter[0] && !ref_dir)
        return lr_errp(err, LR_E_INVALID, "method.reference_adapter", "reference adapter '%s' was not resolved to a directory",
                       s->method.reference_adapter);
    if (lr_mkdirs(T->paths->run_dir, err)) return -1;
    const char *bn = opts->backend ? opts->backend : "cpu";
    char bname[64];
    if (T->size > 1 && !strncmp(bn, "cuda", 4)) {
        /* one GPU per rank on each host */
        snprintf(bname, sizeof bname, "cuda:%d", (bn[4] == ':' ? atoi(bn + 5) : 0) + dist_local_rank(T->d));
        bn = bname;
    }
    if (!T->shared && kb_create(bn, opts->threads, &T->be, err)) return -1;
    if (dist_attach(T->d, T->be, err)) return -1;
    if (mt == METHOD_KL_SFT && !T->be->lmhead_ce_kl)
        return lr_errp(err, LR_E_INVALID, "method.type", "kl_sft is not implemented by the %s backend yet", T->be->name);
    if (tok_load(T->paths->model_dir, &T->tk, err)) return lr_err_prefix(err, "model tokenizer: ");
    if (chat_init(&T->ch, T->tk, s->chat_template, T->paths->model_dir, err)) return -1;
    if (stop_asked(T)) return 1;

    data_opts o = {0};
    double weights[JOBSPEC_MAX_FILES];
    for (int i = 0; i < s->n_training_files; i++) weights[i] = s->training_files[i].weight;
    o.files = T->paths->training_files;
    o.weights = weights;
    o.n_files = s->n_training_files;
    o.validation_file = T->paths->validation_file;
    o.val_ratio = s->hp.val_ratio;
    o.seed = s->hp.seed;
    o.max_seq_len = s->hp.max_seq_len;
    o.system_prompt = s->system_prompt;
    o.dpo = mt == METHOD_DPO;
    o.warn = data_warn;
    o.ud = T;
    if (data_build(&T->ch, &o, &T->ds, err)) return -1;
    if (stop_asked(T)) return 1;
    if (T->ds.n_train == 0) return lr_errf(err, "no training rows left after rendering and truncation");
    if (data_loader_init(&T->tl, &T->ds, DATA_TRAIN, s->hp.batch_size, s->hp.packing, s->hp.max_seq_len,
                         s->hp.seed, err))
        return -1;
    T->mb = calloc((size_t)s->hp.grad_accum, sizeof *T->mb);
    T->mbst = calloc((size_t)s->hp.grad_accum * MB_STATS, sizeof *T->mbst);
    if (!T->mb || !T->mbst) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");

    if (!T->shared && train_load_model(s, T->paths->model_dir, T->be, &T->m, err)) return -1;
    if (model_bf16(T->m)) ev(T, "info", "frozen linear weights in bf16, their matmuls on the AVX512_BF16 kernel (compute_dtype %s)", jobspec_compute_dtype_name(s->compute_dtype));
    if (stop_asked(T)) return 1;
    model_lora_cfg lc = {0};
    lc.r = s->lora.r;
    lc.alpha = (float)s->lora.alpha;
    lc.dropout = (float)s->lora.dropout;
    lc.use_rslora = s->lora.use_rslora;
    lc.use_dora = s->lora.use_dora;
    lora_targets(s, model_config(T->m)->arch, &lc);
    if (ref_dir) {
        /* DPO on top of an adapter: the policy starts as that adapter, which stays frozen as the reference */
        if (model_lora_load(T->m, ref_dir, err) || model_ref_load(T->m, ref_dir, err)) return -1;
        model_set_dropout(T->m, lc.dropout);
        const model_lora_cfg *rc = model_lora(T->m);
        ev(T, "info", "DPO starts from the reference adapter %s (r %d, alpha %g%s); its settings replace lora.r, alpha, targets and use_dora",
           s->method.reference_adapter, rc->r, rc->alpha, rc->use_dora ? ", DoRA" : "");
    } else if (mt == METHOD_FULL_SFT) {
        if (model_full_init(T->m, err)) return -1;
    } else if (model_lora_init(T->m, &lc, s->hp.seed, err)) {
        return -1;
    }
    /* a shared model is planned by each packed pass */
    if (!T->shared &&
        model_reserve(T->m, mt == METHOD_DPO ? 2 * s->hp.batch_size : s->hp.batch_size, s->hp.max_seq_len, err))
        return -1;
    T->numel = model_numel(T->m);
    T->adam_m = T->be->alloc(T->be, T->numel * sizeof(float));
    T->adam_v = T->be->alloc(T->be, T->numel * sizeof(float));
    if (!T->adam_m || !T->adam_v) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory for optimizer state");

    T->total_steps = count_steps(T);
    if (T->total_steps <= 0) return lr_errf(err, "the job has no optimizer steps to run");
    T->warmup = s->hp.warmup_steps > 0 ? s->hp.warmup_steps : (int64_t)ceil(s->hp.warmup_ratio * T->total_steps);
    T->best = INFINITY;
    return 0;
}

/* The dropout masks of micro-batch k of the current step come from (seed,
 * step, k): the same whichever rank trains it. */
static uint64_t mb_seed(const trainer *T, int k) {
    uint64_t x = T->spec->hp.seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(T->step + 1));
    x ^= 0xd1b54a32d192ed03ULL * (uint64_t)(k + 1);
    return lr_splitmix64(&x);
}

/* The start of a step: its micro-batches (st_n of them), the step's counts
 * and loss scale, zeroed gradients. The counts scale every rank's
 * gradients (HF's token averaging over the whole step): each rank counts
 * its micro-batches, then the sum. */
static int step_begin(trainer *T, lr_err *err) {
    T->st_start = data_tell(&T->tl);
    if (next_step_batches(T, &T->st_n, err)) return -1;
    int64_t cnt[3] = {0, 0, 0}; /* trained tokens, pairs, tokens */
    for (int k = T->rank; k < T->st_n; k += T->size) {
        cnt[0] += T->mb[k].n_targets;
        cnt[1] += T->mb[k].n_examples;
        cnt[2] += T->mb[k].n_tokens;
    }
    if (dist_allreduce_i64(T->d, cnt, 3, err)) return -1;
    T->st_targets = cnt[0], T->st_pairs = cnt[1], T->st_tokens = cnt[2];
    model_zero_grad(T->m);
    memset(T->mbst, 0, (size_t)T->st_n * MB_STATS * sizeof *T->mbst);
    T->st_scale = T->st_targets > 0 ? 1.0f / (float)T->st_targets : 0.0f;
    return 0;
}

/* Trains micro-batch k of the step into the gradients and its mbst row. */
static int step_micro(trainer *T, int k, lr_err *err) {
    const jobspec *s = T->spec;
    double coef = s->method.kl_lambda * s->method.kl_tau * s->method.kl_tau;
    const data_batch *b = &T->mb[k];
    double *r = T->mbst + (size_t)k * MB_STATS, ls, kl;
    int64_t c;
    model_dpo_out o;
    model_set_train(T->m, 1, mb_seed(T, k));
    switch (s->method.type) {
    case METHOD_KL_SFT:
        if (model_fwd_bwd_kl(T->m, b->ids, b->labels, b->rows, b->T, (float)s->method.kl_lambda,
                             (float)s->method.kl_tau, T->st_scale, &ls, &kl, &c, err))
            return -1;
        r[0] = ls + coef * kl;
        r[1] = ls;
        r[2] = kl;
        r[3] = (double)model_last_correct(T->m);
        break;
    case METHOD_DPO:
        if (model_dpo(T->m, b->ids, b->labels, b->n_examples, b->T, (float)s->method.beta, dpo_ref(T), 1,
                      1.0f / (float)T->st_pairs, &o, err))
            return -1;
        r[0] = o.loss_sum;
        r[1] = o.accurate;
        r[2] = o.chosen_reward_sum - o.rejected_reward_sum;
        r[3] = o.chosen_reward_sum;
        r[4] = o.rejected_reward_sum;
        break;
    default:
        if (model_fwd_bwd(T->m, b->ids, b->labels, b->rows, b->T, T->st_scale, &ls, &c, err)) return -1;
        r[0] = ls;
        r[1] = (double)model_last_correct(T->m);
    }
    return 0;
}

/* The end of a step: the exchange, the step's losses (extra[] gets the
 * method's values, extra_names order), clipping, the optimizer. */
static int step_end(trainer *T, double *loss, double *extra, lr_err *err) {
    const jobspec *s = T->spec;
    int n = T->st_n;
    float *g = model_grads(T->m);
    if (dist_allreduce_f64(T->d, T->mbst, (size_t)n * MB_STATS, err) ||
        dist_allreduce_f32(T->d, g, T->numel, err))
        return -1;
    double sum = 0, xs[LOG_EXTRA] = {0};
    for (int k = 0; k < n; k++) {
        const double *r = T->mbst + (size_t)k * MB_STATS;
        sum += r[0];
        for (int i = 0; i < LOG_EXTRA; i++) xs[i] += r[1 + i];
    }
    /* per trained token (sft, kl_sft) or per pair (dpo) */
    double denom = s->method.type == METHOD_DPO ? (double)T->st_pairs : (double)T->st_targets;
    *loss = denom > 0 ? sum / denom : NAN;
    for (int k = 0; k < LOG_EXTRA; k++) extra[k] = denom > 0 ? xs[k] / denom : NAN;
    double norm = sqrt(T->be->sumsq(T->be, g, T->numel));
    T->gnorm = norm;
    if (s->hp.max_grad_norm > 0 && norm > s->hp.max_grad_norm)
        T->be->scale(T->be, g, (float)(s->hp.max_grad_norm / (norm + 1e-6)), T->numel);
    T->lr = s->hp.learning_rate * lr_lambda(s, T->step, T->total_steps, T->warmup);
    kb_adamw hp = {(float)T->lr, (float)s->hp.adam_beta1, (float)s->hp.adam_beta2, (float)s->hp.adam_eps,
                   (float)s->hp.weight_decay, T->step + 1};
    if (!model_is_full(T->m)) {
        T->be->adamw(T->be, model_params(T->m), g, T->adam_m, T->adam_v, T->numel, &hp);
    } else {
        kb_adamw nd = hp;
        nd.weight_decay = 0.0f;
        for (size_t i = 0; i < model_n_params(T->m); i++) {
            const model_param *p = model_param_at(T->m, i);
            T->be->adamw(T->be, model_params(T->m) + p->offset, g + p->offset, T->adam_m + p->offset,
                         T->adam_v + p->offset, p->numel, p->no_decay ? &nd : &hp);
        }
    }
    T->step++;
    return 0;
}

/* One step of this job alone. Returns TRAIN_CANCEL or TRAIN_SUSPEND when
 * that was asked between micro-batches: the step is abandoned (no update;
 * the data position is back at its start, where a resume begins it
 * again). */
static int step_once(trainer *T, double *loss, double *extra, lr_err *err) {
    if (step_begin(T, err)) return -1;
    /* round j trains micro-batch j * size + rank on each rank; a stop is
     * asked between rounds (between micro-batches for one process) */
    int rounds = (T->st_n + T->size - 1) / T->size;
    for (int j = 0; j < rounds; j++) {
        int how = j > 0 ? stop_asked(T) : TRAIN_GO;
        if (how != TRAIN_GO) {
            data_seek(&T->tl, T->st_start);
            return how;
        }
        int k = j * T->size + T->rank;
        if (k < T->st_n && step_micro(T, k, err)) return -1;
    }
    return step_end(T, loss, extra, err);
}

/* Logs the window's means as the current step's row ("loss" is the mean
 * of its step losses, tokens/s over its wall time) and starts a new one. */
static int log_window(trainer *T, logwin *w, double lr, double gnorm, lr_err *err) {
    int nx;
    const char *const *xn = extra_names(T->spec, &nx);
    double t = now_s();
    log_row r = log_row_new(T->step, T->epoch_f);
    r.loss = w->loss / w->n, r.lr = lr, r.grad_norm = gnorm, r.tokens_per_s = w->tokens / (t - w->t0 + 1e-9);
    metric(T, "loss", r.loss);
    metric(T, "lr", r.lr);
    metric(T, "grad_norm", r.grad_norm);
    metric(T, "tokens_per_s", r.tokens_per_s);
    for (int k = 0; k < nx; k++) {
        r.x[k] = w->x[k] / w->n;
        metric(T, xn[k], r.x[k]);
    }
    *w = (logwin){.t0 = t};
    return log_add(T, r, err);
}

/* Ends the run for cancelled()'s answer `how`. A suspend saves a
 * checkpoint at the last whole step unless one is there (its log window
 * goes with it, not into the log), so the job continues as if never
 * stopped; a cancel logs what it has. */
static int halt(trainer *T, int how, int mid_step, double lr, double gnorm, train_outcome *outcome, lr_err *err) {
    *outcome = TRAIN_CANCELLED;
    if (how == TRAIN_SUSPEND) {
        if (T->step > 0 && T->saved_step != T->step && save_checkpoint(T, err)) return -1;
        if (T->step > 0) ev(T, "info", "stopped after step %" PRId64 " with a checkpoint there, to resume from it", T->step);
        else ev(T, "info", "stopped before the first step ended; the job starts again when resumed");
        return log_write(T, err);
    }
    if (mid_step) ev(T, "info", "cancelled during step %" PRId64 " (not applied)", T->step + 1);
    else ev(T, "info", "cancelled after step %" PRId64, T->step);
    if (T->win.n && log_window(T, &T->win, lr, gnorm, err)) return -1;
    return log_write(T, err);
}

/* Where the loop starts, fresh or resumed. */
static void loop_start(trainer *T, train_outcome *outcome) {
    int64_t epoch_batches = data_epoch_batches(&T->tl, 0);
    int64_t ga = T->spec->hp.grad_accum;
    T->steps_per_epoch = epoch_batches > 0 ? (epoch_batches + ga - 1) / ga : 1;
    *outcome = TRAIN_DONE;
    T->win.t0 = now_s();
}

/* The end of a run that was not halted: the log, then the adapter (or model). */
static int finish(trainer *T, lr_err *err) {
    if (log_write(T, err)) return -1;
    return write_result(T, err);
}

/* What follows a finished step: logs, evaluation, stopping rules,
 * checkpoints, a stop asked. Returns 0 to go on, 1 when the job ended
 * here (*outcome; halted, or stopped early with its outputs written), -1
 * on failure. */
static int after_step(trainer *T, double loss, const double *x, train_outcome *outcome, lr_err *err) {
    const jobspec *s = T->spec;
    logwin *win = &T->win;
    double lr = T->lr, gnorm = T->gnorm;
    int64_t tokens = T->st_tokens;
    if (!isfinite(loss)) return lr_errf(err, "loss became %f at step %" PRId64 "; lower the learning rate", loss, T->step);
    T->tokens_seen += tokens;
    T->epoch_f = (double)T->step / (double)T->steps_per_epoch;
    win->loss += loss;
    for (int k = 0; k < LOG_EXTRA; k++) win->x[k] += x[k];
    win->n++;
    win->tokens += tokens;
    if (T->hooks && T->hooks->progress) T->hooks->progress(T->hooks->ud, T->step, T->total_steps, T->epoch_f);

    int last = T->step == T->total_steps;
    if ((T->step % s->hp.logging_steps == 0 || last) && log_window(T, win, lr, gnorm, err)) return -1;
    int stop = 0;
    if ((s->hp.eval_steps > 0 && T->step % s->hp.eval_steps == 0) || last) {
        double el;
        int rc = evaluate(T, &el, err);
        if (rc < 0) return -1;
        if (rc > 0) return halt(T, TRAIN_CANCEL, 0, lr, gnorm, outcome, err) ? -1 : 1;
        if (!isnan(el)) {
            metric(T, "eval_loss", el);
            if (s->method.type != METHOD_DPO) metric(T, "eval_ppl", exp(el)); /* a DPO loss is no perplexity */
            log_row r = log_row_new(T->step, T->epoch_f);
            r.eval_loss = el;
            if (log_add(T, r, err)) return -1;
            stop = plateau(T, el);
        }
    }
    if (T->ds.n_val == 0 && T->step % s->hp.logging_steps == 0) stop = stop || plateau(T, loss);
    if (s->hp.max_minutes > 0 && now_s() - T->t_train_start > s->hp.max_minutes * 60) {
        snprintf(T->stop_reason, sizeof T->stop_reason, "stopped at step %" PRId64 ": max_minutes (%g) reached",
                 T->step, s->hp.max_minutes);
        stop = 1;
    }
    /* the ranks' clocks differ: rank 0's decision holds for all */
    if (T->size > 1 && dist_bcast(T->d, &stop, sizeof stop, err)) return -1;
    /* a run that stops between logging steps logs its last window too */
    if (stop && win->n && log_window(T, win, lr, gnorm, err)) return -1;
    if (T->step % s->hp.logging_steps == 0 || last || stop)
        if (log_write(T, err)) return -1;
    if (!last && !stop && s->hp.save_steps > 0 && T->step % s->hp.save_steps == 0)
        if (save_checkpoint(T, err)) return -1;
    if (stop) {
        ev(T, "info", "%s", T->stop_reason);
        if (T->hooks && T->hooks->stopped) T->hooks->stopped(T->hooks->ud, T->stop_reason);
        *outcome = TRAIN_STOPPED_EARLY;
        return finish(T, err) ? -1 : 1;
    }
    int how = last ? TRAIN_GO : stop_asked(T);
    if (how != TRAIN_GO) return halt(T, how, 0, lr, gnorm, outcome, err) ? -1 : 1;
    return 0;
}

static int loop(trainer *T, train_outcome *outcome, lr_err *err) {
    loop_start(T, outcome);
    while (T->step < T->total_steps) {
        double loss, x[LOG_EXTRA];
        int how = step_once(T, &loss, x, err);
        if (how < 0) return -1;
        if (how != TRAIN_GO) return halt(T, how, 1, T->lr, T->gnorm, outcome, err);
        int rc = after_step(T, loss, x, outcome, err);
        if (rc) return rc < 0 ? -1 : 0;
    }
    return finish(T, err);
}

static void teardown(trainer *T) {
    if (T->mb)
        for (int k = 0; k < T->spec->hp.grad_accum; k++) data_batch_free(&T->mb[k]);
    free(T->mb);
    free(T->mbst);
    if (T->d) dist_detach(T->d);
    if (T->be) {
        if (T->adam_m) T->be->free(T->be, T->adam_m);
        if (T->adam_v) T->be->free(T->be, T->adam_v);
    }
    if (T->shared) {
        if (T->inside) model_slot_swap(T->m, T->slot);
        model_slot_free(T->m, T->slot); /* with the job's adapter; the model is the pack's */
    } else {
        model_free(T->m);
    }
    data_loader_free(&T->tl);
    data_set_free(&T->ds);
    tok_free(T->tk);
    if (T->be && !T->shared) kb_destroy(T->be);
    free(T->log);
}

static void trainer_init(trainer *T, const jobspec *spec, const train_paths *paths, const train_opts *opts,
                         const train_hooks *hooks, train_outcome *outcome) {
    static const train_hooks silent = {0};
    memset(T, 0, sizeof *T);
    T->spec = spec;
    T->paths = paths;
    T->d = opts->dist;
    T->rank = dist_rank(T->d);
    T->size = dist_size(T->d);
    T->hooks = T->rank ? &silent : hooks;
    T->t_start = now_s();
    T->saved_step = -1;
    *outcome = TRAIN_DONE;
}

/* Setup and resume. Returns 0 when ready to train, 1 when stopped before
 * training (*outcome TRAIN_CANCELLED), -1 on failure. */
static int trainer_open(trainer *T, const train_opts *opts, train_outcome *outcome, lr_err *err) {
    int set = setup(T, opts, err);
    if (set < 0) return -1;
    if (set > 0) {
        /* nothing trained yet: a resume starts where this one would have */
        ev(T, "info", "stopped while loading the model and data, before training");
        *outcome = TRAIN_CANCELLED;
        return 1;
    }
    int resumed = 0;
    if (opts->resume && resume(T, &resumed, err) < 0) return -1;
    char ranks[64] = "";
    if (T->size > 1) snprintf(ranks, sizeof ranks, ", on %d ranks (%s)", T->size, dist_transport(T->d));
    if (!resumed)
        ev(T, "info", "training on %zu rows (%zu held out) for %" PRId64 " steps, %zu %s parameters%s", T->ds.n_train,
           T->ds.n_val, T->total_steps, T->numel, model_is_full(T->m) ? "model" : "LoRA", ranks);
    /* the plan before the first step: for lorad, the files passed tokenizing
     * (OpenAI's validating_files ends, daemon/openai.h) */
    if (T->hooks->progress) T->hooks->progress(T->hooks->ud, T->step, T->total_steps, T->epoch_f);
    T->t_setup = now_s();
    T->t_train_start = T->t_setup;
    dist_reset_seconds(T->d);
    return 0;
}

int train_run(const jobspec *spec, const train_paths *paths, const train_opts *opts, const train_hooks *hooks,
              train_outcome *outcome, lr_err *err) {
    if (spec->method.type == METHOD_EVAL) /* nothing to train: job_run sends these to evaljob_run */
        return lr_errp(err, LR_E_INTERNAL, "method.type", "train_run does not run eval jobs (job_run does)");
    trainer T;
    trainer_init(&T, spec, paths, opts, hooks, outcome);
    int rc = trainer_open(&T, opts, outcome, err);
    if (rc > 0) rc = 0; /* stopped before training: no time metrics */
    else if (rc == 0) rc = loop(&T, outcome, err) || write_time_metrics(&T, err) ? -1 : 0;
    if (rc && err && err->msg[0] && T.hooks->event) T.hooks->event(T.hooks->ud, "error", err->msg);
    teardown(&T);
    return rc;
}

/* ---- co-training: the step in parts, on a shared model ---- */

/* A shared trainer's adapter is in the model only inside these calls. */
static void enter(trainer *T) {
    if (!T->inside) model_slot_swap(T->m, T->slot);
    T->inside = 1;
}
static void leave(trainer *T) {
    if (T->inside) model_slot_swap(T->m, T->slot);
    T->inside = 0;
}

int train_open_shared(const jobspec *spec, const train_paths *paths, const train_opts *opts,
                      const train_hooks *hooks, kb_backend *be, model *m, trainer **out, train_outcome *outcome,
                      lr_err *err) {
    *out = NULL;
    *outcome = TRAIN_DONE;
    if (spec->method.type != METHOD_SFT || spec->lora.use_dora || dist_size(opts->dist) > 1)
        return lr_errp(err, LR_E_INVALID, "method.type",
                       "only plain LoRA sft jobs of one process train on a shared model (method %s%s)",
                       jobspec_method_name(spec->method.type), spec->lora.use_dora ? ", DoRA" : "");
    trainer *T = calloc(1, sizeof *T);
    if (!T) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    trainer_init(T, spec, paths, opts, hooks, outcome);
    T->shared = 1;
    T->be = be;
    T->m = m;
    int rc = -1;
    if (model_slot_new(m, &T->slot, err) == 0) {
        enter(T); /* the model's empty adapter state goes to the slot, the job's comes back into it */
        rc = trainer_open(T, opts, outcome, err);
    }
    if (rc == 0) {
        loop_start(T, outcome);
        if (T->step >= T->total_steps) rc = finish(T, err) ? -1 : 2; /* resumed at its end */
    }
    if (rc == 0) {
        leave(T);
        *out = T;
        return 0;
    }
    if (rc == 2) return train_close(T, 0, err) ? -1 : 1;
    if (rc < 0 && err->msg[0] && T->hooks->event) T->hooks->event(T->hooks->ud, "error", err->msg);
    teardown(T);
    free(T);
    return rc;
}

int train_step_begin(trainer *T, int *n, lr_err *err) {
    enter(T);
    int rc = step_begin(T, err);
    leave(T);
    *n = T->st_n;
    return rc;
}

void train_step_micro(trainer *T, int k, model_pack_mb *mb) {
    const data_batch *b = &T->mb[k];
    model_slot_set_train(T->slot, 1, mb_seed(T, k));
    memset(mb, 0, sizeof *mb);
    mb->slot = T->slot;
    mb->ids = b->ids;
    mb->labels = b->labels;
    mb->B = b->rows;
    mb->T = b->T;
    mb->grad_scale = T->st_scale;
}

void train_step_micro_done(trainer *T, int k, const model_pack_mb *mb) {
    double *r = T->mbst + (size_t)k * MB_STATS;
    r[0] = mb->loss_sum;
    r[1] = (double)mb->n_correct;
}

int train_step_check(trainer *T, train_outcome *outcome, lr_err *err) {
    int how = stop_asked(T);
    if (how == TRAIN_GO) return 0;
    data_seek(&T->tl, T->st_start);
    enter(T);
    int rc = halt(T, how, 1, T->lr, T->gnorm, outcome, err);
    leave(T);
    return rc ? -1 : 1;
}

int train_step_end(trainer *T, train_outcome *outcome, lr_err *err) {
    double loss, x[LOG_EXTRA];
    enter(T);
    int rc = step_end(T, &loss, x, err);
    if (!rc) rc = after_step(T, loss, x, outcome, err);
    if (!rc && T->step >= T->total_steps) rc = finish(T, err) ? -1 : 1;
    leave(T);
    return rc;
}

int64_t train_steps(const trainer *T, int64_t *total) {
    if (total) *total = T->total_steps;
    return T->step;
}

int train_close(trainer *T, int failed, lr_err *err) {
    if (!T) return 0;
    int rc = failed ? -1 : write_time_metrics(T, err);
    if (rc && err->msg[0] && T->hooks->event) T->hooks->event(T->hooks->ud, "error", err->msg);
    teardown(T);
    free(T);
    return rc;
}
