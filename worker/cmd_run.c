/* lora-worker run: one job with no daemon, progress lines on stdout; with
 * --pack, several jobs that share a base model co-trained in one pass
 * (worker/pack.h). */
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "proto/jobspec.h"
#include "worker/commands.h"
#include "worker/dist.h"
#include "worker/job.h"
#include "worker/model.h"
#include "worker/pack.h"

static volatile sig_atomic_t run_interrupted;

/* The first Ctrl-C checkpoints and stops (--resume continues exactly);
 * a second one stops at once. */
static void on_sigint(int sig) {
    (void)sig;
    if (run_interrupted < 2) run_interrupted++;
}

typedef struct run_ui {
    int64_t total;
    double t0;
    double last[8]; /* loss, lr, grad_norm, tokens_per_s, eval_loss */
    int quiet;
    const char *tag; /* --pack: the job's name before each line; NULL alone */
} run_ui;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void ui_metric(void *ud, int64_t step, double epoch, const char *name, double v) {
    run_ui *u = ud;
    if (!strcmp(name, "loss")) u->last[0] = v;
    else if (!strcmp(name, "lr")) u->last[1] = v;
    else if (!strcmp(name, "grad_norm")) u->last[2] = v;
    else if (!strcmp(name, "tokens_per_s")) {
        u->last[3] = v;
        /* tokens_per_s is the last of a log step's metrics: print the line */
        if (!u->quiet)
            printf("%s%s%sstep %" PRId64 "/%" PRId64 "  epoch %.2f  loss %.4f  lr %.3e  grad_norm %.3f  tok/s %.0f  (%.0fs)\n",
                   u->tag ? "[" : "", u->tag ? u->tag : "", u->tag ? "] " : "", step, u->total, epoch, u->last[0],
                   u->last[1], u->last[2], u->last[3], mono() - u->t0);
    } else if (!strcmp(name, "eval_loss") && !u->quiet) {
        printf("%s%s%sstep %" PRId64 "/%" PRId64 "  eval_loss %.4f  perplexity %.2f\n", u->tag ? "[" : "",
               u->tag ? u->tag : "", u->tag ? "] " : "", step, u->total, v, exp(v));
    }
    fflush(stdout);
}

static void ui_event(void *ud, const char *level, const char *msg) {
    const run_ui *u = ud;
    if (strcmp(level, "error")) /* the failure itself is printed once, on exit */
        fprintf(stderr, "[%s]%s%s %s\n", level, u->tag ? " " : "", u->tag ? u->tag : "", msg);
}

static void ui_progress(void *ud, int64_t step, int64_t total, double epoch) {
    run_ui *u = ud;
    (void)step;
    (void)epoch;
    u->total = total;
}

static void ui_checkpoint(void *ud, int64_t step, const char *dir) {
    run_ui *u = ud;
    if (!u->quiet) printf("%s%s%scheckpoint at step %" PRId64 ": %s\n", u->tag ? "[" : "", u->tag ? u->tag : "",
                          u->tag ? "] " : "", step, dir);
}

static int ui_cancelled(void *ud) {
    (void)ud;
    return run_interrupted == 0 ? TRAIN_GO : run_interrupted == 1 ? TRAIN_SUSPEND : TRAIN_CANCEL;
}

/* A relative path in a job file means relative to that file. */
static void resolve(const char *base_dir, const char *p, char *out, size_t cap) {
    if (p[0] == '/' || access(p, F_OK) == 0 || lr_pathf(out, cap, "%s/%s", base_dir, p) || access(out, F_OK) != 0)
        snprintf(out, cap, "%s", p);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: lora-worker run --config JOB.yaml|JOB.json [options]\n"
            "       lora-worker run --pack JOB.yaml JOB.yaml... [options]\n"
            "Runs one training job with no daemon and writes its outputs to the run directory.\n"
            "In the job file, model is a model directory and training_file / validation_file are\n"
            "dataset paths (relative paths are taken relative to the job file).\n\n"
            "  --config FILE     the job spec (the same schema as POST /v1/jobs)\n"
            "  --out DIR         run directory (default: runs/<name or job file name>)\n"
            "  --set KEY=VALUE   override a field of the spec (repeatable), e.g. --set lora.r=32\n"
            "  --backend B       cpu (default) or cuda:N\n"
            "  --threads N       CPU threads (default: all cores)\n"
            "  --resume          continue from the newest checkpoint in the run directory\n"
            "  --quiet           no progress lines\n"
            "  --pack            co-train the job files given as arguments in one pass (CPU or CUDA):\n"
            "                    the base model runs once per step over all their micro-batches, each job keeps\n"
            "                    its own adapter, optimizer, logs, checkpoints and run directory\n"
            "                    (DIR/<name> with --out DIR), and ends with what it would alone. Plain\n"
            "                    LoRA sft jobs on the same model, quantize and compute_dtype only.\n"
            "Started by mpirun (or srun) as N processes, it is one rank of a data-parallel run:\n"
            "every rank trains its share of each step's micro-batches (the steps are those of\n"
            "one process), rank 0 prints and writes the run directory, e.g.\n"
            "  mpirun -np 2 lora-worker run --config job.yaml --threads 4\n"
            "Outputs: adapter_model.safetensors, adapter_config.json (method full_sft: model.safetensors,\n"
            "config.json and the tokenizer files instead; method eval: eval_results.jsonl,\n"
            "eval_summary.json), train_log.csv, train_log.json, time_metrics.json, checkpoints/.\n"
            "Ctrl-C saves a checkpoint at the last finished optimizer step and stops (--resume\n"
            "continues from it exactly); a second Ctrl-C stops at once.\n");
}

/* One job file, its spec and resolved paths. */
typedef struct run_job {
    json_t *doc;
    jobspec spec;
    char model[PATH_MAX], files[JOBSPEC_MAX_FILES][PATH_MAX], val[PATH_MAX], rundir[PATH_MAX], refdir[PATH_MAX];
    train_paths paths;
    run_ui ui;
    train_hooks hooks;
    int ended, failed;
    train_outcome outcome;
    lr_err err;
} run_job;

/* Reads config with the --set overrides and resolves its paths; the run
 * directory is out, out/<name> with in_dir, or runs/<name>. */
static int load_job(const char *config, const char *const *sets, int nsets, const char *out, int in_dir, run_job *j,
                    lr_err *err) {
    char *text = NULL;
    size_t len;
    int rc = -1;
    if (lr_read_file(config, JOBSPEC_MAX_TEXT, &text, &len, err) || jobspec_parse_text(text, len, &j->doc, err))
        goto done;
    for (int i = 0; i < nsets; i++)
        if (jobspec_set(j->doc, sets[i], err)) goto done;
    if (jobspec_from_json(j->doc, &j->spec, err)) goto done;
    char cfgcopy[PATH_MAX], base[PATH_MAX];
    snprintf(cfgcopy, sizeof cfgcopy, "%s", config);
    snprintf(base, sizeof base, "%s", dirname(cfgcopy));
    resolve(base, j->spec.model, j->model, sizeof j->model);
    j->paths.model_dir = j->model;
    for (int i = 0; i < j->spec.n_training_files; i++) {
        resolve(base, j->spec.training_files[i].name, j->files[i], sizeof j->files[i]);
        j->paths.training_files[i] = j->files[i];
    }
    if (j->spec.validation_file[0]) {
        resolve(base, j->spec.validation_file, j->val, sizeof j->val);
        j->paths.validation_file = j->val;
    }
    if (j->spec.method.reference_adapter[0]) { /* dpo: an adapter directory */
        resolve(base, j->spec.method.reference_adapter, j->refdir, sizeof j->refdir);
        j->paths.reference_adapter_dir = j->refdir;
    }
    if (j->spec.method.adapter[0]) { /* eval: the adapter evaluated, a directory */
        resolve(base, j->spec.method.adapter, j->refdir, sizeof j->refdir);
        j->paths.reference_adapter_dir = j->refdir;
    }
    snprintf(cfgcopy, sizeof cfgcopy, "%s", config);
    char *b = basename(cfgcopy), *dot = strrchr(b, '.');
    if (dot) *dot = 0;
    const char *name = j->spec.name[0] ? j->spec.name : b;
    if (out && !in_dir) snprintf(j->rundir, sizeof j->rundir, "%s", out);
    else if (lr_pathf(j->rundir, sizeof j->rundir, "%s/%s", out ? out : "runs", name)) {
        lr_errf(err, "run directory name too long");
        goto done;
    }
    j->paths.run_dir = j->rundir;
    rc = 0;
done:
    free(text);
    return rc;
}

static void pack_ended(void *tag, int failed, train_outcome oc, const lr_err *err) {
    run_job *j = tag;
    j->ended = 1, j->failed = failed, j->outcome = oc;
    if (failed && err) j->err = *err;
}

/* --pack: the jobs in one pass until all have ended. 0 when all finished,
 * 130 when one was interrupted, 2 when one failed. */
static int run_pack(run_job *js, int n, const char *backend, int threads, int resume, int quiet, lr_err *err) {
    train_opts to = {backend, threads, 0, NULL};
    pack *p;
    if (pack_new(&to, n, &p, err)) return 2;
    signal(SIGINT, on_sigint);
    for (int i = 0; i < n; i++) {
        if (pack_add(p, &js[i].spec, &js[i].paths, &js[i].hooks, resume, pack_ended, &js[i], err)) {
            lr_err_prefix(err, "%s: ", js[i].rundir);
            pack_free(p);
            return 2;
        }
        if (!quiet) printf("[%s] run directory: %s\n", js[i].ui.tag, js[i].rundir);
    }
    while (pack_jobs(p) > 0)
        if (pack_step(p, err)) break;
    pack_free(p);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (js[i].failed) fprintf(stderr, "lora-worker run: %s: %s\n", js[i].ui.tag, js[i].err.msg);
        else if (!quiet)
            printf("[%s] %s\n", js[i].ui.tag, js[i].outcome == TRAIN_CANCELLED ? "interrupted; resume with --resume" : "done");
        rc = js[i].failed ? 2 : rc ? rc : js[i].outcome == TRAIN_CANCELLED ? 130 : 0;
    }
    return rc;
}

int cmd_run(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'}, {"out", required_argument, 0, 'o'},
                                         {"set", required_argument, 0, 's'},    {"backend", required_argument, 0, 'b'},
                                         {"threads", required_argument, 0, 't'}, {"resume", no_argument, 0, 'r'},
                                         {"quiet", no_argument, 0, 'q'},        {"help", no_argument, 0, 'h'},
                                         {"pack", no_argument, 0, 'p'},         {0, 0, 0, 0}};
    const char *config = NULL, *out = NULL, *backend = "cpu";
    const char *sets[64];
    int nsets = 0, threads = 0, resume = 0, quiet = 0, packed = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:o:s:b:t:rqhp", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 'o': out = optarg; break;
        case 's':
            if (nsets == 64) {
                fprintf(stderr, "lora-worker run: too many --set\n");
                return 1;
            }
            sets[nsets++] = optarg;
            break;
        case 'b': backend = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'r': resume = 1; break;
        case 'q': quiet = 1; break;
        case 'p': packed = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    int njobs = packed ? argc - optind + (config != NULL) : 1;
    if (packed ? njobs < 1 || njobs > MODEL_PACK_MAX : !config || optind != argc) {
        if (packed) fprintf(stderr, "lora-worker run --pack: give 1..%d job files\n", MODEL_PACK_MAX);
        usage(stderr);
        return 1;
    }
    lr_err err = {0};
    int rc = 2;
    dist *d = NULL;
    run_job *js = calloc((size_t)njobs, sizeof *js);
    if (!js) {
        lr_errp(&err, LR_E_NOMEM, NULL, "out of memory");
        goto done;
    }
    if (!packed && dist_init(&d, &err)) goto done;
    if (dist_rank(d)) quiet = 1; /* rank 0 speaks for the run */
    for (int i = 0; i < njobs; i++) {
        const char *cfg = !packed || (config && i == 0) ? config : argv[optind + i - (config != NULL)];
        run_job *j = &js[i];
        if (load_job(cfg, sets, nsets, out, packed, j, &err)) {
            if (packed) lr_err_prefix(&err, "%s: ", cfg);
            goto done;
        }
        j->ui = (run_ui){.t0 = mono(), .quiet = quiet, .tag = packed ? strrchr(j->rundir, '/') + 1 : NULL};
        j->hooks = (train_hooks){.ud = &j->ui, .metric = ui_metric, .event = ui_event, .checkpoint = ui_checkpoint,
                                 .progress = ui_progress, .cancelled = ui_cancelled};
    }
    if (packed) {
        rc = run_pack(js, njobs, backend, threads, resume, quiet, &err);
        goto done;
    }
    run_job *j = &js[0];
    train_opts to = {backend, threads, resume, d};
    signal(SIGINT, on_sigint);
    train_outcome oc;
    if (!quiet) printf("run directory: %s\n", j->rundir);
    if (dist_rank(d) == 0 && j->spec.resources.devices > 1 && j->spec.resources.devices != dist_size(d)) /* same math, not speed */
        fprintf(stderr, "[info] resources.devices is %d and this run has %d rank%s (mpirun -np %d starts that many)\n",
                j->spec.resources.devices, dist_size(d), dist_size(d) > 1 ? "s" : "", j->spec.resources.devices);
    if (job_run(&j->spec, &j->paths, &to, &j->hooks, &oc, &err)) {
        rc = 2;
        goto done;
    }
    if (!quiet) {
        if (oc == TRAIN_CANCELLED) printf("interrupted; resume with --resume\n");
        else printf("done: %s in %s\n",
                    j->spec.method.type == METHOD_EVAL       ? "evaluation results"
                    : j->spec.method.type == METHOD_FULL_SFT ? "model"
                                                             : "adapter",
                    j->rundir);
    }
    rc = oc == TRAIN_CANCELLED ? 130 : 0;
done:
    if (rc == 2 && err.msg[0]) {
        if (dist_size(d) > 1) fprintf(stderr, "lora-worker run (rank %d): %s\n", dist_rank(d), err.msg);
        else fprintf(stderr, "lora-worker run: %s\n", err.msg);
    }
    /* a failed rank leaves without MPI_Finalize, so mpirun ends the others
     * instead of their waiting for it in the next exchange */
    if (!packed && (rc == 0 || rc == 130)) dist_finalize(d);
    for (int i = 0; js && i < njobs; i++) json_decref(js[i].doc);
    free(js);
    return rc;
}
