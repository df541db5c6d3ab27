#include "worker/dist.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef LR_HAVE_MPI
#include <mpi.h>
#endif
#if defined(LR_HAVE_MPI) && defined(LR_HAVE_NCCL)
#include <cuda_runtime.h>
#include <nccl.h>
#endif

struct dist {
    int rank, size, local_rank;
    int mpi;             /* 1: MPI_Init ran here */
    double reduce_s;
#if defined(LR_HAVE_MPI) && defined(LR_HAVE_NCCL)
    ncclComm_t nccl;     /* set while a CUDA backend is attached */
    cudaStream_t stream;
#endif
};

static dist the_dist;
static int the_dist_ready;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The first of the launchers' variables that is set. */
static int env_int(const char *const names[], int dflt) {
    for (int i = 0; names[i]; i++) {
        const char *v = getenv(names[i]);
        if (v && *v) return atoi(v);
    }
    return dflt;
}

/* How many ranks the launcher started: OpenMPI's mpirun, Slurm's srun with
 * PMI-2, or srun with PMIx (which sets PMIX_RANK but no size). SLURM_NTASKS
 * alone does not count: a lorad inside an allocation passes it on to
 * workers that are no ranks. */
static int env_size(void) {
    static const char *const size_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", NULL};
    static const char *const pmix_size[] = {"SLURM_NTASKS", NULL};
    int n = env_int(size_vars, 0);
    if (n > 0) return n;
    const char *r = getenv("PMIX_RANK");
    return r && *r ? env_int(pmix_size, 1) : 1;
}

int dist_init(dist **out, lr_err *err) {
    *out = NULL;
    if (the_dist_ready) {
        *out = &the_dist;
        return 0;
    }
    dist *d = &the_dist;
    memset(d, 0, sizeof *d);
    d->size = 1;
    int n = env_size();
    if (n > 1) {
#ifdef LR_HAVE_MPI
        static const char *const local_vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", NULL};
        /* the agent trains in a job thread and says goodbye from its main
         * thread, never both at once */
        int provided;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
            return lr_errf(err, "MPI_Init failed: start the ranks with mpirun from the same OpenMPI");
        if (provided < MPI_THREAD_SERIALIZED) {
            MPI_Finalize();
            return lr_errf(err, "this MPI library does not allow calls from more than one thread (MPI_THREAD_SERIALIZED)");
        }
        d->mpi = 1;
        MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
        MPI_Comm_size(MPI_COMM_WORLD, &d->size);
        d->local_rank = env_int(local_vars, 0);
#else
        return lr_errf(err, "started as one of %d ranks, but this lora-worker was built without OpenMPI "
                            "(install libopenmpi-dev and rebuild)", n);
#endif
    }
    the_dist_ready = 1;
    *out = d;
    return 0;
}

void dist_finalize(dist *d) {
    if (!d) return;
    dist_detach(d);
#ifdef LR_HAVE_MPI
    if (d->mpi) MPI_Finalize();
#endif
    d->mpi = 0;
}

int dist_rank(const dist *d) { return d ? d->rank : 0; }
int dist_size(const dist *d) { return d ? d->size : 1; }
int dist_local_rank(const dist *d) { return d ? d->local_rank : 0; }
double dist_reduce_seconds(const dist *d) { return d ? d->reduce_s : 0.0; }
void dist_reset_seconds(dist *d) {
    if (d) d->reduce_s = 0;
}

const char *dist_transport(const dist *d) {
    if (!d || d->size == 1) return "none";
#if defined(LR_HAVE_MPI) && defined(LR_HAVE_NCCL)
    if (d->nccl) return "NCCL";
#endif
    return "MPI";
}

int dist_attach(dist *d, kb_backend *be, lr_err *err) {
    if (!d || d->size == 1 || be->host_memory) return 0;
#if defined(LR_HAVE_MPI) && defined(LR_HAVE_NCCL)
    /* the backend made its device current on this thread; rank 0 makes
     * the id and MPI carries it to the others */
    ncclUniqueId id;
    ncclResult_t r = ncclSuccess;
    if (d->rank == 0) r = ncclGetUniqueId(&id);
    int ok = r == ncclSuccess;
    if (MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS || !ok)
        return lr_errf(err, "NCCL: rank 0 could not make a communicator id (%s)", ncclGetErrorString(r));
    if (MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
        return lr_errf(err, "MPI_Bcast of the NCCL id failed");
    if (cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking) != cudaSuccess)
        return lr_errf(err, "NCCL: cannot create a CUDA stream");
    r = ncclCommInitRank(&d->nccl, d->size, id, d->rank);
    if (r != ncclSuccess) {
        cudaStreamDestroy(d->stream);
        d->nccl = NULL;
        return lr_errf(err, "ncclCommInitRank (rank %d of %d): %s", d->rank, d->size, ncclGetErrorString(r));
    }
    return 0;
#else
    return lr_errf(err, "the %s backend needs NCCL for %d ranks, and this lora-worker was built without it",
                   be->name, d->size);
#endif
}

void dist_detach(dist *d) {
#if defined(LR_HAVE_MPI) && defined(LR_HAVE_NCCL)
    if (d && d->nccl) {
        ncclCommDestroy(d->nccl);
        cudaStreamDestroy(d->stream);
        d->nccl = NULL;
    }
#else
    (void)d;
#endif
}

#ifdef LR_HAVE_MPI
/* Reduce to rank 0, then broadcast: every rank gets rank 0's bits, which
 * MPI_Allreduce does not promise for floating point (its algorithms may
 * add in a different order on each rank, and the ranks' parameters would
 * drift apart). Counts over INT_MAX go in pieces. */
static int reduce_bcast(dist *d, void *x, size_t n, MPI_Datatype t, size_t esz, lr_err *err) {
    char *p = x;
    while (n > 0) {
        int k = n > (size_t)INT_MAX ? INT_MAX : (int)n;
        int rc = d->rank == 0 ? MPI_Reduce(MPI_IN_PLACE, p, k, t, MPI_SUM, 0, MPI_COMM_WORLD)
                              : MPI_Reduce(p, NULL, k, t, MPI_SUM, 0, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS || MPI_Bcast(p, k, t, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
            return lr_errf(err, "MPI all-reduce of %d values failed (a rank died?)", k);
        p += (size_t)k * esz;
        n -= (size_t)k;
    }
    return 0;
}
#endif

int dist_allreduce_f32(dist *d, float *x, size_t n, lr_err *err) {
    if (!d || d->size == 1) return 0;
    double t0 = now_s();
    int rc = -1;
#if defined(LR_HAVE_MPI) && defined(LR_HAVE_NCCL)
    if (d->nccl) {
        /* the backend queues ops on its own stream: wait for the gradients */
        if (cudaDeviceSynchronize() != cudaSuccess) {
            lr_errf(err, "CUDA error before the gradient all-reduce");
            goto done;
        }
        ncclResult_t r = ncclAllReduce(x, x, n, ncclFloat, ncclSum, d->nccl, d->stream);
        if (r != ncclSuccess || cudaStreamSynchronize(d->stream) != cudaSuccess) {
            lr_errf(err, "ncclAllReduce of %zu floats: %s", n, ncclGetErrorString(r));
            goto done;
        }
        rc = 0;
        goto done;
    }
#endif
#ifdef LR_HAVE_MPI
    rc = reduce_bcast(d, x, n, MPI_FLOAT, sizeof *x, err);
    goto done;
#else
    (void)x;
    (void)n;
    lr_errf(err, "no MPI in this build");
    goto done;
#endif
done:
    d->reduce_s += now_s() - t0;
    return rc;
}

int dist_allreduce_f64(dist *d, double *x, size_t n, lr_err *err) {
    if (!d || d->size == 1) return 0;
#ifdef LR_HAVE_MPI
    return reduce_bcast(d, x, n, MPI_DOUBLE, sizeof *x, err);
#else
    (void)x;
    (void)n;
    return lr_errf(err, "no MPI in this build");
#endif
}

int dist_allreduce_i64(dist *d, int64_t *x, size_t n, lr_err *err) {
    if (!d || d->size == 1) return 0;
#ifdef LR_HAVE_MPI
    return reduce_bcast(d, x, n, MPI_INT64_T, sizeof *x, err);
#else
    (void)x;
    (void)n;
    return lr_errf(err, "no MPI in this build");
#endif
}

int dist_bcast(dist *d, void *buf, size_t bytes, lr_err *err) {
    if (!d || d->size == 1) return 0;
#ifdef LR_HAVE_MPI
    char *p = buf;
    while (bytes > 0) {
        int k = bytes > (size_t)INT_MAX ? INT_MAX : (int)bytes;
        if (MPI_Bcast(p, k, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
            return lr_errf(err, "MPI broadcast of %d bytes failed (a rank died?)", k);
        p += k;
        bytes -= (size_t)k;
    }
    return 0;
#else
    (void)buf;
    (void)bytes;
    return lr_errf(err, "no MPI in this build");
#endif
}

int dist_barrier(dist *d, lr_err *err) {
    if (!d || d->size == 1) return 0;
#ifdef LR_HAVE_MPI
    if (MPI_Barrier(MPI_COMM_WORLD) != MPI_SUCCESS) return lr_errf(err, "MPI barrier failed (a rank died?)");
    return 0;
#else
    return lr_errf(err, "no MPI in this build");
#endif
}

/* A broadcast that may wait long (a follower between jobs): polled with
 * sleeps, since a blocking MPI call spins a core at 100% while it waits. */
static int bcast_idle(dist *d, void *buf, size_t bytes, lr_err *err) {
#ifdef LR_HAVE_MPI
    if (d->size == 1) return 0;
    MPI_Request rq;
    int done = 0;
    if (MPI_Ibcast(buf, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD, &rq) != MPI_SUCCESS)
        return lr_errf(err, "MPI broadcast failed (a rank died?)");
    while (!done) {
        if (MPI_Test(&rq, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return lr_errf(err, "MPI broadcast failed (a rank died?)");
        if (!done) {
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    return 0;
#else
    return dist_bcast(d, buf, bytes, err);
#endif
}

int dist_bcast_json(dist *d, json_t **doc, lr_err *err) {
    char *text = NULL;
    int64_t len = 0;
    int rc = -1;
    if (d->rank == 0 && *doc) {
        text = json_dumps(*doc, JSON_COMPACT);
        if (!text) return lr_errf(err, "out of memory");
        len = (int64_t)strlen(text);
    }
    if (bcast_idle(d, &len, sizeof len, err)) goto done;
    if (d->rank) {
        *doc = NULL;
        if (len == 0) return 0;
        if (len < 0 || len > DIST_JSON_MAX) {
            lr_errf(err, "rank 0 sent a document of %lld bytes", (long long)len);
            goto done;
        }
        text = malloc((size_t)len + 1);
        if (!text) {
            lr_errf(err, "out of memory");
            goto done;
        }
        text[len] = 0;
    }
    if (len > 0 && dist_bcast(d, text, (size_t)len, err)) goto done;
    if (d->rank && !(*doc = json_loads(text, 0, NULL))) {
        lr_errf(err, "rank 0 sent a document that is not JSON");
        goto done;
    }
    rc = 0;
done:
    free(text);
    return rc;
}

void dist_abort(dist *d) {
#ifdef LR_HAVE_MPI
    if (d && d->mpi) MPI_Abort(MPI_COMM_WORLD, 2);
#else
    (void)d;
#endif
    _exit(2);
}
