/* config: lorad's settings, from configs/lorad.yaml and command-line flags.
 *
 * One table lists every key with its type, default and help; the YAML file
 * (flat keys), the flags (--key-with-dashes VALUE) and `lorad --help` are all
 * driven by it, so they cannot disagree. Flags win over the file. */
#ifndef LR_CONFIG_H
#define LR_CONFIG_H

#include <stddef.h>
#include <stdio.h>
#include "common/err.h"

#define CONFIG_MAX_WORKERS 16
#define CONFIG_MAX_PACK 16

typedef struct config_worker {
    char backend[32]; /* "cpu" or "cuda:N" */
    int threads;      /* 0 = the config's worker_threads; per rank */
    int ranks;        /* 1, or N: lorad starts it as N ranks with mpirun (data-parallel jobs) */
} config_worker;

typedef struct lorad_config {
    char data_dir[1024];
    char listen[128];          /* ADDR:PORT */
    char web_dir[1024];        /* "" = <exe>/../web */
    char migrations_dir[1024]; /* "" = <exe>/../migrations */
    char worker_bin[1024];     /* "" = <exe dir>/lora-worker */
    int http_threads;
    int max_connections;
    int request_timeout_s;
    long long max_body_bytes;   /* JSON bodies */
    long long max_upload_bytes; /* dataset uploads */
    int header_timeout_s;       /* a request's headers must arrive within this */
    int max_connections_per_ip; /* 0 = no limit */
    int max_uploads_per_user;   /* uploads in progress at once */
    int max_running_per_user;   /* 0 = no limit */
    int max_queued_per_user;    /* 0 = no limit */
    int max_submits_per_minute; /* 0 = no limit */
    int max_user_priority;      /* non-admins' highest priority */
    char visibility[16];        /* "team" or "private" */
    int worker_threads;         /* default threads of a CPU worker; 0 = all cores */
    int heartbeat_interval_s;
    int heartbeat_timeout_s;
    int shutdown_grace_s;
    int cancel_grace_s;         /* after a cancel, kill a worker still running this long */
    long long min_free_bytes;   /* free-space floor of data_dir for uploads and new jobs; 0 = none */
    int restart_backoff_max_s;
    long long gen_cache_bytes;  /* loaded models of the generation servers; 0 = half the free memory */
    int gen_timeout_s;          /* one generation's time limit */
    char gen_backend[32];       /* lora-worker serve --backend: auto, cpu, cuda:N */
    char worker_listen[128];    /* remote workers' ADDR:PORT, "" = none (daemon/remote.h) */
    char tls_cert[1024], tls_key[1024]; /* "" = plain TCP, loopback only */
    /* Slurm executor (daemon/slurm.h); slurm_devices "" = off */
    char slurm_devices[64], slurm_partition[128], slurm_sbatch_args[1024], slurm_worker_args[1024];
    char slurm_worker_url[256], slurm_token_file[1024];
    /* Co-training (issue 19): "auto" packs compatible jobs onto a worker
     * that offers room (its hello's pack_max > 1), "off" never; at most
     * pack_max_jobs (<= CONFIG_MAX_PACK) jobs share one pass. */
    char packing[8];
    int pack_max_jobs;
    int n_workers;
    config_worker workers[CONFIG_MAX_WORKERS];
} lorad_config;

void config_defaults(lorad_config *c);
/* Reads a YAML file of flat keys; unknown keys are errors. */
int config_load_file(lorad_config *c, const char *path, lr_err *err) LR_WARN_UNUSED;
/* Sets one key from its text form (key with '_' or '-'). */
int config_set(lorad_config *c, const char *key, const char *value, lr_err *err) LR_WARN_UNUSED;
/* "cpu,cpu:4,cuda:0" (":N" after cpu is a thread count) */
int config_set_workers(lorad_config *c, const char *list, lr_err *err) LR_WARN_UNUSED;
/* Fills the "" paths from the executable's location and checks ranges. */
int config_finish(lorad_config *c, lr_err *err) LR_WARN_UNUSED;
/* One line per key for --help. */
void config_print_help(FILE *f);

#endif
