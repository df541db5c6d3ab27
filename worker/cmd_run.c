/* lora-worker run: one job with no daemon, progress lines on stdout. */
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
            printf("step %" PRId64 "/%" PRId64 "  epoch %.2f  loss %.4f  lr %.3e  grad_norm %.3f  tok/s %.0f  (%.0fs)\n",
                   step, u->total, epoch, u->last[0], u->last[1], u->last[2], u->last[3], mono() - u->t0);
    } else if (!strcmp(name, "eval_loss") && !u->quiet) {
        printf("step %" PRId64 "/%" PRId64 "  eval_loss %.4f  perplexity %.2f\n", step, u->total, v, exp(v));
    }
    fflush(stdout);
}

static void ui_event(void *ud, const char *level, const char *msg) {
    (void)ud;
    if (strcmp(level, "error")) /* the failure itself is printed once, on exit */
        fprintf(stderr, "[%s] %s\n", level, msg);
}

static void ui_progress(void *ud, int64_t step, int64_t total, double epoch) {
    run_ui *u = ud;
    (void)step;
    (void)epoch;
    u->total = total;
}

static void ui_checkpoint(void *ud, int64_t step, const char *dir) {
    run_ui *u = ud;
    if (!u->quiet) printf("checkpoint at step %" PRId64 ": %s\n", step, dir);
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

int cmd_run(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'}, {"out", required_argument, 0, 'o'},
                                         {"set", required_argument, 0, 's'},    {"backend", required_argument, 0, 'b'},
                                         {"threads", required_argument, 0, 't'}, {"resume", no_argument, 0, 'r'},
                                         {"quiet", no_argument, 0, 'q'},        {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *config = NULL, *out = NULL, *backend = "cpu";
    const char *sets[64];
    int nsets = 0, threads = 0, resume = 0, quiet = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:o:s:b:t:rqh", opts, NULL)) != -1) {
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
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (!config || optind != argc) {
        usage(stderr);
        return 1;
    }
    lr_err err = {0};
    char *text = NULL;
    size_t len;
    json_t *doc = NULL;
    jobspec spec;
    int rc = 2;
    dist *d = NULL;
    if (dist_init(&d, &err)) goto done;
    if (dist_rank(d)) quiet = 1; /* rank 0 speaks for the run */
    if (lr_read_file(config, JOBSPEC_MAX_TEXT, &text, &len, &err) || jobspec_parse_text(text, len, &doc, &err))
        goto done;
    for (int i = 0; i < nsets; i++)
        if (jobspec_set(doc, sets[i], &err)) goto done;
    if (jobspec_from_json(doc, &spec, &err)) goto done;

    char cfgcopy[PATH_MAX], base[PATH_MAX], model[PATH_MAX], files[JOBSPEC_MAX_FILES][PATH_MAX], val[PATH_MAX];
    char rundir[PATH_MAX], refdir[PATH_MAX];
    snprintf(cfgcopy, sizeof cfgcopy, "%s", config);
    snprintf(base, sizeof base, "%s", dirname(cfgcopy));
    resolve(base, spec.model, model, sizeof model);
    train_paths paths = {0};
    paths.model_dir = model;
    for (int i = 0; i < spec.n_training_files; i++) {
        resolve(base, spec.training_files[i].name, files[i], sizeof files[i]);
        paths.training_files[i] = files[i];
    }
    if (spec.validation_file[0]) {
        resolve(base, spec.validation_file, val, sizeof val);
        paths.validation_file = val;
    }
    if (spec.method.reference_adapter[0]) { /* dpo: an adapter directory */
        resolve(base, spec.method.reference_adapter, refdir, sizeof refdir);
        paths.reference_adapter_dir = refdir;
    }
    if (spec.method.adapter[0]) { /* eval: the adapter evaluated, a directory */
        resolve(base, spec.method.adapter, refdir, sizeof refdir);
        paths.reference_adapter_dir = refdir;
    }
    if (out) {
        snprintf(rundir, sizeof rundir, "%s", out);
    } else {
        snprintf(cfgcopy, sizeof cfgcopy, "%s", config);
        char *b = basename(cfgcopy), *dot = strrchr(b, '.');
        if (dot) *dot = 0;
        if (lr_pathf(rundir, sizeof rundir, "runs/%s", spec.name[0] ? spec.name : b)) {
            lr_errf(&err, "run directory name too long");
            goto done;
        }
    }
    paths.run_dir = rundir;

    run_ui ui = {.t0 = mono(), .quiet = quiet};
    train_hooks hooks = {.ud = &ui, .metric = ui_metric, .event = ui_event, .checkpoint = ui_checkpoint,
                         .progress = ui_progress, .cancelled = ui_cancelled};
    train_opts to = {backend, threads, resume, d};
    signal(SIGINT, on_sigint);
    train_outcome oc;
    if (!quiet) printf("run directory: %s\n", rundir);
    if (dist_rank(d) == 0 && spec.resources.devices > 1 && spec.resources.devices != dist_size(d)) /* same math, not speed */
        fprintf(stderr, "[info] resources.devices is %d and this run has %d rank%s (mpirun -np %d starts that many)\n",
                spec.resources.devices, dist_size(d), dist_size(d) > 1 ? "s" : "", spec.resources.devices);
    if (job_run(&spec, &paths, &to, &hooks, &oc, &err)) {
        rc = 2;
        goto done;
    }
    if (!quiet) {
        if (oc == TRAIN_CANCELLED) printf("interrupted; resume with --resume\n");
        else printf("done: %s in %s\n",
                    spec.method.type == METHOD_EVAL       ? "evaluation results"
                    : spec.method.type == METHOD_FULL_SFT ? "model"
                                                          : "adapter",
                    rundir);
    }
    rc = oc == TRAIN_CANCELLED ? 130 : 0;
done:
    if (rc && err.msg[0]) {
        if (dist_size(d) > 1) fprintf(stderr, "lora-worker run (rank %d): %s\n", dist_rank(d), err.msg);
        else fprintf(stderr, "lora-worker run: %s\n", err.msg);
    }
    /* a failed rank leaves without MPI_Finalize, so mpirun ends the others
     * instead of their waiting for it in the next exchange */
    if (rc == 0 || rc == 130) dist_finalize(d);
    json_decref(doc);
    free(text);
    return rc;
}
