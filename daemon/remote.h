/* remote: lorad's door for workers on other machines (worker_listen).
 *
 * One thread accepts TCP connections (TLS with tls_cert/tls_key, plain on
 * loopback only), one thread per connection serves it (proto/tlink.h has
 * the requests). Every request carries a worker token (lorad worker-token
 * add), checked against the database; a user's API token, an unknown or a
 * revoked one is refused with a sentence saying which.
 *
 * "auth" relays the connection to the worker socket, after writing the
 * token's name into the worker's hello: the event loop (super.c) then sees
 * a worker like the ones it spawns, only without a process to restart.
 * "list"/"get" serve the files a job reads (datasets, runs, registered
 * models) with their sizes and SHA-256; "put" takes a running job's
 * checkpoints and artifacts into data_dir/runs/<job>/, written to a
 * temporary name and renamed only once the size and SHA-256 match. */
#ifndef LR_REMOTE_H
#define LR_REMOTE_H

#include "common/err.h"
#include "daemon/config.h"

typedef struct remote remote;

/* Listens on cfg->worker_listen (nothing when it is empty: *out = NULL). */
int remote_start(const lorad_config *cfg, const char *db_path, remote **out, lr_err *err) LR_WARN_UNUSED;
/* The bound port (worker_listen may ask for port 0). */
int remote_port(const remote *r);
/* Stops accepting, ends the open connections and waits for their threads. */
void remote_stop(remote *r);

#endif
