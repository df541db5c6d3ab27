#include "daemon/slurm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"

#define MAX_ARGS 64

int slurm_routes(const lorad_config *c, const char *device) {
    const char *p = c->slurm_devices;
    size_t n = strlen(device);
    while (*p) {
        size_t l = strcspn(p, ",");
        if (l == n && !strncmp(p, device, n)) return 1;
        p += l + (p[l] == ',');
    }
    return 0;
}

/* Runs argv (PATH searched) with token, when not NULL, as LORA_WORKER_TOKEN;
 * out gets stdout and stderr. Returns the exit status, -1 when it could not
 * run or ran past SLURM_CMD_TIMEOUT_S. */
static int run(char *const argv[], const char *token, char *out, size_t cap, lr_err *err) {
    int pfd[2];
    out[0] = 0;
    if (pipe2(pfd, O_CLOEXEC)) return lr_errp(err, LR_E_IO, NULL, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return lr_errp(err, LR_E_IO, NULL, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        if (token) setenv("LORA_WORKER_TOKEN", token, 1);
        execvp(argv[0], argv);
        dprintf(2, "%s: %s", argv[0], strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    size_t len = 0;
    time_t end = time(NULL) + SLURM_CMD_TIMEOUT_S;
    int timed_out = 0;
    for (;;) {
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        int left = (int)(end - time(NULL));
        if (left <= 0 || poll(&p, 1, left * 1000) == 0) {
            timed_out = 1;
            kill(pid, SIGKILL);
            break;
        }
        char buf[512];
        ssize_t r = read(pfd[0], buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        size_t k = (size_t)r < cap - 1 - len ? (size_t)r : cap - 1 - len;
        memcpy(out + len, buf, k);
        len += k;
        out[len] = 0;
    }
    close(pfd[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    while (len && (out[len - 1] == '\n' || out[len - 1] == ' ')) out[--len] = 0;
    if (timed_out) return lr_errp(err, LR_E_TIMEOUT, NULL, "%s ran past %d s", argv[0], SLURM_CMD_TIMEOUT_S);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 127) return lr_errp(err, LR_E_IO, NULL, "%s", out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Splits a space-separated option list into argv (pointing into buf). */
static int split(char *buf, char **argv, int at, int max) {
    for (char *t = strtok(buf, " \t"); t && at < max; t = strtok(NULL, " \t")) argv[at++] = t;
    return at;
}

static void quote(FILE *f, const char *s) {
    fputc('\'', f);
    for (; *s; s++)
        if (*s == '\'') fputs("'\\''", f);
        else fputc(*s, f);
    fputs("' ", f);
}

int slurm_submit(const lorad_config *c, const char *job_id, int ranks, char *slurm_id, size_t cap, lr_err *err) {
    char dir[1100], script[1200], log[1200], url[300], name[64], jname[64], threads[16], ntasks[16], out[1024];
    char sargs[sizeof c->slurm_sbatch_args], wargs[sizeof c->slurm_worker_args], *tok = NULL;
    size_t tlen = 0;
    int rc = -1;
    if (lr_pathf(dir, sizeof dir, "%s/slurm", c->data_dir) || lr_pathf(script, sizeof script, "%s/%s.sh", dir, job_id) ||
        lr_pathf(log, sizeof log, "%s/%s-%%j.log", dir, job_id))
        return lr_errf(err, "data_dir is too long");
    if (lr_mkdirs(dir, err) || lr_read_file(c->slurm_token_file, 4096, &tok, &tlen, err))
        return lr_err_prefix(err, "slurm_token_file: ");
    tok[strcspn(tok, "\r\n")] = 0;
    if (c->slurm_worker_url[0]) snprintf(url, sizeof url, "%s", c->slurm_worker_url);
    else snprintf(url, sizeof url, "%s://%s", c->tls_cert[0] ? "https" : "tcp", c->worker_listen);
    snprintf(name, sizeof name, "slurm-%s", job_id);
    snprintf(jname, sizeof jname, "lorad-%s", job_id);
    snprintf(threads, sizeof threads, "%d", c->worker_threads);
    snprintf(wargs, sizeof wargs, "%s", c->slurm_worker_args);
    snprintf(sargs, sizeof sargs, "%s", c->slurm_sbatch_args);
    char *wv[MAX_ARGS] = {(char *)c->worker_bin, "agent", "--connect", url, "--once", "--name", name, "--threads", threads};
    int wn = split(wargs, wv, 9, MAX_ARGS - 1);
    FILE *f = fopen(script, "w");
    if (!f) {
        lr_errp(err, LR_E_IO, NULL, "%s: %s", script, strerror(errno));
        goto out;
    }
    /* exec: scancel's SIGTERM reaches the worker itself */
    if (ranks > 1)
        /* srun starts the ranks under Slurm's PMIx and ends them all when
         * one fails, so the job fails over like any dead worker */
        fprintf(f, "#!/bin/sh\n# written by lorad: one job of lorad's queue on %d ranks\n"
                   "exec srun --mpi=pmix --kill-on-bad-exit=1 ", ranks);
    else fputs("#!/bin/sh\n# written by lorad: one job of lorad's queue on this node\nexec ", f);
    for (int i = 0; i < wn; i++) quote(f, wv[i]);
    fputc('\n', f);
    if (fclose(f) || chmod(script, 0700)) {
        lr_errp(err, LR_E_IO, NULL, "%s: %s", script, strerror(errno));
        goto out;
    }
    char *sv[MAX_ARGS] = {"sbatch", "--parsable", "--job-name", jname, "--output", log};
    int sn = 6;
    snprintf(ntasks, sizeof ntasks, "%d", ranks);
    if (ranks > 1) sv[sn++] = "--ntasks", sv[sn++] = ntasks;
    if (c->slurm_partition[0]) sv[sn++] = "--partition", sv[sn++] = (char *)c->slurm_partition;
    sn = split(sargs, sv, sn, MAX_ARGS - 2);
    sv[sn++] = script;
    int st = run(sv, tok, out, sizeof out, err);
    if (st < 0) goto out;
    /* --parsable: "id" or "id;cluster" */
    out[strcspn(out, ";")] = 0;
    if (st || !out[0] || strspn(out, "0123456789") != strlen(out)) {
        lr_errf(err, "sbatch failed (status %d): %.300s", st, out);
        goto out;
    }
    snprintf(slurm_id, cap, "%s", out);
    rc = 0;
out:
    free(tok);
    return rc;
}

/* "Key=value" of scontrol's one-line output. */
static void field(const char *line, const char *key, char *out, size_t cap) {
    char k[64];
    snprintf(k, sizeof k, " %s=", key);
    const char *p = strstr(line, k);
    if (!p && !strncmp(line, k + 1, strlen(k + 1))) p = line - 1;
    out[0] = 0;
    if (p) snprintf(out, cap, "%.*s", (int)strcspn(p + strlen(k), " \n"), p + strlen(k));
}

int slurm_query(const char *slurm_id, char *state, size_t scap, char *reason, size_t rcap, lr_err *err) {
    char out[4096];
    char *sq[] = {"squeue", "-h", "-j", (char *)slurm_id, "-o", "%T|%r", NULL};
    int st = run(sq, NULL, out, sizeof out, err);
    if (st < 0) return -1;
    if (st == 0 && out[0] && strchr(out, '|')) {
        snprintf(state, scap, "%.*s", (int)strcspn(out, "|"), out);
        snprintf(reason, rcap, "%s", strchr(out, '|') + 1);
        return 0;
    }
    /* finished jobs leave squeue; scontrol knows them for MinJobAge */
    char *sc[] = {"scontrol", "-o", "show", "job", (char *)slurm_id, NULL};
    st = run(sc, NULL, out, sizeof out, err);
    if (st < 0) return -1;
    field(out, "JobState", state, scap);
    field(out, "Reason", reason, rcap);
    if (st || !state[0]) {
        snprintf(state, scap, "GONE");
        snprintf(reason, rcap, "Slurm no longer knows job %s", slurm_id);
    }
    return 0;
}

int slurm_state_final(const char *s) {
    return strcmp(s, "PENDING") && strcmp(s, "RUNNING") && strcmp(s, "CONFIGURING") && strcmp(s, "COMPLETING") &&
           strcmp(s, "SUSPENDED") && strcmp(s, "REQUEUED") && strcmp(s, "RESIZING") && strcmp(s, "SIGNALING") &&
           strcmp(s, "STAGE_OUT") && strcmp(s, "REQUEUE_HOLD") && strcmp(s, "REQUEUE_FED");
}

int slurm_cancel(const char *slurm_id, lr_err *err) {
    char out[1024];
    char *sc[] = {"scancel", (char *)slurm_id, NULL};
    int st = run(sc, NULL, out, sizeof out, err);
    if (st < 0) return -1;
    if (st) return lr_errf(err, "scancel %s failed (status %d): %.300s", slurm_id, st, out);
    return 0;
}
