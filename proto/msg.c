#include "proto/msg.h"

#include <math.h>
#include <string.h>

static const char *const type_names[MSG_N_TYPES] = {
    [MSG_HELLO] = "hello", [MSG_HEARTBEAT] = "heartbeat", [MSG_METRIC] = "metric",
    [MSG_EVENT] = "event", [MSG_CHECKPOINT] = "checkpoint", [MSG_DONE] = "done",
    [MSG_FAILED] = "failed", [MSG_ASSIGN] = "assign", [MSG_CANCEL] = "cancel", [MSG_ACK] = "ack",
};

const char *msg_type_name(msg_type t) { return (unsigned)t < MSG_N_TYPES ? type_names[t] : "?"; }

static const char *const outcome_names[MSG_N_OUTCOMES] = {
    [MSG_SUCCEEDED] = "succeeded", [MSG_CANCELLED] = "cancelled", [MSG_STOPPED_EARLY] = "stopped_early",
};

const char *msg_outcome_name(msg_outcome o) { return (unsigned)o < MSG_N_OUTCOMES ? outcome_names[o] : "?"; }

/* Indexed by LR_E_*; a code added to err.h reads as "error" until it is named here. */
static const char *const code_names[] = {
    [LR_E_INVALID] = "invalid", [LR_E_NOTFOUND] = "not_found", [LR_E_CONFLICT] = "conflict",
    [LR_E_FORBIDDEN] = "forbidden", [LR_E_TOOBIG] = "too_big", [LR_E_IO] = "io",
    [LR_E_NOMEM] = "out_of_memory", [LR_E_INTERNAL] = "internal", [LR_E_BUSY] = "busy",
    [LR_E_TIMEOUT] = "timeout",
};
#define N_CODES ((int)(sizeof code_names / sizeof code_names[0]))

const char *msg_code_name(int code) { return code > 0 && code < N_CODES ? code_names[code] : "error"; }

int msg_code_parse(const char *name) {
    for (int c = 1; name && c < N_CODES; c++)
        if (!strcmp(name, code_names[c])) return c;
    return 0;
}

#define MSG_MAX_STR 4096
/* Jobs in one pass; the agent's own cap is far lower (--pack-max). */
#define MSG_MAX_PACK 256
/* A stop reason is one sentence the job object shows; the worker's is < 256. */
#define MSG_MAX_STOP_REASON 1024

static int get_str(const json_t *o, const char *key, int required, const char **out, lr_err *err) {
    const json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required) return lr_errp(err, LR_E_INVALID, key, "message lacks \"%s\"", key);
        return 0;
    }
    if (!json_is_string(v)) return lr_errp(err, LR_E_INVALID, key, "\"%s\" must be a string", key);
    size_t n = json_string_length(v);
    if (n > MSG_MAX_STR || strlen(json_string_value(v)) != n)
        return lr_errp(err, LR_E_INVALID, key, "\"%s\" is too long or holds a NUL", key);
    *out = json_string_value(v);
    return 0;
}

static int get_int(const json_t *o, const char *key, int required, int64_t lo, int64_t hi,
                   int64_t *out, lr_err *err) {
    const json_t *v = json_object_get(o, key);
    if (!v) {
        if (required) return lr_errp(err, LR_E_INVALID, key, "message lacks \"%s\"", key);
        return 0;
    }
    if (!json_is_integer(v)) return lr_errp(err, LR_E_INVALID, key, "\"%s\" must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return lr_errp(err, LR_E_INVALID, key, "\"%s\" = %lld is out of range", key, (long long)x);
    *out = x;
    return 0;
}

static int get_num(const json_t *o, const char *key, int required, double *out, lr_err *err) {
    const json_t *v = json_object_get(o, key);
    if (!v) {
        if (required) return lr_errp(err, LR_E_INVALID, key, "message lacks \"%s\"", key);
        return 0;
    }
    /* Non-finite metric values (a diverged loss) travel as null. */
    if (json_is_null(v)) {
        *out = NAN;
        return 0;
    }
    if (!json_is_number(v)) return lr_errp(err, LR_E_INVALID, key, "\"%s\" must be a number", key);
    *out = json_number_value(v);
    return 0;
}

/* A heartbeat's optional "pack": {"id", "jobs", "steps"}, all three required
 * when it is there; only a job's heartbeat carries one. */
static int get_pack(const json_t *f, const char *job_id, msg_heartbeat_body *hb, lr_err *err) {
    const json_t *p = json_object_get(f, "pack");
    if (!p || json_is_null(p)) return 0;
    if (!json_is_object(p)) return lr_errp(err, LR_E_INVALID, "pack", "\"pack\" must be an object");
    if (!job_id) return lr_errp(err, LR_E_INVALID, "pack", "a heartbeat without a job has no pack");
    int64_t jobs = 0;
    if (get_str(p, "id", 1, &hb->pack.id, err) || get_int(p, "jobs", 1, 1, MSG_MAX_PACK, &jobs, err) ||
        get_int(p, "steps", 1, 0, INT64_MAX, &hb->pack.steps, err))
        return -1;
    if (!hb->pack.id[0] || strlen(hb->pack.id) > 64)
        return lr_errp(err, LR_E_INVALID, "pack", "a pack id must have 1..64 characters");
    hb->pack.jobs = (int)jobs;
    return 0;
}

static int get_resume(const json_t *f, int *out, lr_err *err) {
    const json_t *r = json_object_get(f, "resume");
    if (r && !json_is_boolean(r)) return lr_errp(err, LR_E_INVALID, "resume", "\"resume\" must be a boolean");
    *out = json_is_true(r);
    return 0;
}

static int parse_hello(const json_t *f, msg_hello_body *h, lr_err *err) {
    int64_t threads = 0, proto = 0, pack_max = 1;
    /* An agent from before packing sends no pack_max: it runs one job at a time. */
    if (get_str(f, "worker", 1, &h->worker, err) || get_str(f, "backend", 1, &h->backend, err) ||
        get_str(f, "device", 0, &h->device, err) || get_str(f, "version", 0, &h->version, err) ||
        get_str(f, "kernel", 0, &h->kernel, err) || get_str(f, "remote", 0, &h->remote, err) ||
        get_int(f, "mem_bytes", 0, 0, INT64_MAX, &h->mem_bytes, err) ||
        get_int(f, "threads", 0, 0, 4096, &threads, err) || get_int(f, "proto", 1, 1, 1000, &proto, err))
        return -1;
    h->threads = (int)threads;
    h->proto = (int)proto;
    if (h->proto != MSG_PROTO_VERSION)
        return lr_errp(err, LR_E_INVALID, "proto", "protocol version %d, this side speaks %d", h->proto,
                       MSG_PROTO_VERSION);
    if (get_int(f, "pack_max", 0, 1, MSG_MAX_PACK, &pack_max, err)) return -1;
    h->pack_max = (int)pack_max;
    return 0;
}

static int parse_metric(const json_t *f, msg_metric_body *mt, lr_err *err) {
    if (get_int(f, "seq", 1, 0, INT64_MAX, &mt->seq, err) || get_int(f, "step", 1, 0, INT64_MAX, &mt->step, err) ||
        get_num(f, "epoch", 0, &mt->epoch, err) || get_str(f, "name", 1, &mt->name, err) ||
        get_num(f, "value", 1, &mt->value, err))
        return -1;
    if (!mt->name[0] || strlen(mt->name) > 64)
        return lr_errp(err, LR_E_INVALID, "name", "metric name must have 1..64 characters");
    return 0;
}

static int parse_done(const json_t *f, msg_done_body *d, lr_err *err) {
    const char *name;
    if (get_str(f, "outcome", 1, &name, err)) return -1;
    int o = 0;
    while (o < MSG_N_OUTCOMES && strcmp(name, outcome_names[o])) o++;
    if (o == MSG_N_OUTCOMES) return lr_errp(err, LR_E_INVALID, "outcome", "unknown outcome \"%.64s\"", name);
    d->outcome = (msg_outcome)o;
    if (get_str(f, "stop_reason", 0, &d->stop_reason, err)) return -1;
    if (d->stop_reason && d->outcome != MSG_STOPPED_EARLY)
        return lr_errp(err, LR_E_INVALID, "stop_reason", "\"stop_reason\" goes with outcome \"stopped_early\" only");
    if (d->stop_reason && strlen(d->stop_reason) > MSG_MAX_STOP_REASON)
        return lr_errp(err, LR_E_INVALID, "stop_reason", "\"stop_reason\" is longer than %d bytes",
                       MSG_MAX_STOP_REASON);
    return 0;
}

static int parse_assign(const json_t *f, msg_assign_body *a, lr_err *err) {
    a->spec = json_object_get(f, "spec");
    if (!json_is_object(a->spec)) return lr_errp(err, LR_E_INVALID, "spec", "assign lacks a spec object");
    if (get_str(f, "model_dir", 1, &a->model_dir, err) || get_str(f, "run_dir", 1, &a->run_dir, err) ||
        get_str(f, "validation_file", 0, &a->validation_file, err) ||
        get_str(f, "reference_adapter_dir", 0, &a->reference_adapter_dir, err))
        return -1;
    const json_t *tf = json_object_get(f, "training_files");
    if (!json_is_array(tf) || json_array_size(tf) == 0 || json_array_size(tf) > JOBSPEC_MAX_FILES)
        return lr_errp(err, LR_E_INVALID, "training_files", "assign needs 1..%d training files", JOBSPEC_MAX_FILES);
    for (size_t i = 0; i < json_array_size(tf); i++) {
        const json_t *p = json_array_get(tf, i);
        if (!json_is_string(p))
            return lr_errp(err, LR_E_INVALID, "training_files", "training file paths are strings");
        a->training_files[i] = json_string_value(p);
    }
    a->n_training_files = (int)json_array_size(tf);
    return get_resume(f, &a->resume, err);
}

int msg_parse(const json_t *f, msg *m, lr_err *err) {
    memset(m, 0, sizeof *m);
    const char *t;
    if (!json_is_object(f)) return lr_errp(err, LR_E_INVALID, NULL, "message is not an object");
    if (get_str(f, "type", 1, &t, err)) return -1;
    int found = -1;
    for (int i = 0; i < MSG_N_TYPES; i++)
        if (!strcmp(t, type_names[i])) found = i;
    if (found < 0) return lr_errp(err, LR_E_INVALID, "type", "unknown message type \"%.64s\"", t);
    m->type = (msg_type)found;
    int need_job = m->type != MSG_HELLO && m->type != MSG_HEARTBEAT && m->type != MSG_ACK;
    if (get_str(f, "job_id", need_job, &m->job_id, err)) return -1;
    switch (m->type) {
    case MSG_HELLO:
        return parse_hello(f, &m->hello, err);
    case MSG_HEARTBEAT: {
        msg_heartbeat_body *hb = &m->heartbeat;
        if (get_int(f, "step", 0, 0, INT64_MAX, &hb->step, err) ||
            get_int(f, "total_steps", 0, 0, INT64_MAX, &hb->total_steps, err) ||
            get_num(f, "epoch", 0, &hb->epoch, err))
            return -1;
        return get_pack(f, m->job_id, hb, err);
    }
    case MSG_METRIC:
        return parse_metric(f, &m->metric, err);
    case MSG_EVENT:
        if (get_str(f, "level", 1, &m->event.level, err) || get_str(f, "message", 1, &m->event.message, err))
            return -1;
        return 0;
    case MSG_CHECKPOINT:
        if (get_int(f, "step", 1, 0, INT64_MAX, &m->checkpoint.step, err) ||
            get_str(f, "dir", 1, &m->checkpoint.dir, err))
            return -1;
        return 0;
    case MSG_DONE:
        return parse_done(f, &m->done, err);
    case MSG_FAILED: {
        /* Optional: a worker from before codes sends none, which reads as unclassified. */
        const char *code;
        if (get_str(f, "error", 1, &m->failed.error, err) || get_str(f, "code", 0, &code, err)) return -1;
        m->failed.code = msg_code_parse(code);
        return 0;
    }
    case MSG_CANCEL:
        if (get_str(f, "reason", 0, &m->cancel.reason, err)) return -1;
        return get_resume(f, &m->cancel.resume, err);
    case MSG_ACK:
        return get_int(f, "seq", 1, 0, INT64_MAX, &m->ack.seq, err);
    case MSG_ASSIGN:
        return parse_assign(f, &m->assign, err);
    default:
        return lr_errp(err, LR_E_INTERNAL, NULL, "unhandled message type");
    }
}

static json_t *base(msg_type t, const char *job_id) {
    json_t *o = json_object();
    if (!o) return NULL;
    json_object_set_new(o, "type", json_string(type_names[t]));
    if (job_id) json_object_set_new(o, "job_id", json_string(job_id));
    return o;
}

static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

json_t *msg_hello(const char *worker, const char *backend, const char *device, int64_t mem_bytes,
                  int threads, const char *version, const char *kernel, int pack_max) {
    json_t *o = base(MSG_HELLO, NULL);
    if (!o) return NULL;
    json_object_set_new(o, "proto", json_integer(MSG_PROTO_VERSION));
    json_object_set_new(o, "worker", json_string(worker));
    json_object_set_new(o, "backend", json_string(backend));
    json_object_set_new(o, "device", json_string(device ? device : ""));
    json_object_set_new(o, "mem_bytes", json_integer(mem_bytes));
    json_object_set_new(o, "threads", json_integer(threads));
    json_object_set_new(o, "version", json_string(version ? version : ""));
    if (kernel) json_object_set_new(o, "kernel", json_string(kernel));
    json_object_set_new(o, "pack_max", json_integer(pack_max > 1 ? pack_max : 1));
    return o;
}

json_t *msg_heartbeat(const char *job_id, int64_t step, int64_t total_steps, double epoch) {
    json_t *o = base(MSG_HEARTBEAT, job_id);
    if (!o || !job_id) return o;
    json_object_set_new(o, "step", json_integer(step));
    json_object_set_new(o, "total_steps", json_integer(total_steps));
    json_object_set_new(o, "epoch", num(epoch));
    return o;
}

json_t *msg_heartbeat_pack(const char *job_id, int64_t step, int64_t total_steps, double epoch,
                           const char *pack_id, int pack_jobs, int64_t packed_steps) {
    json_t *o = msg_heartbeat(job_id, step, total_steps, epoch);
    if (!o || !job_id || !pack_id) return o;
    json_object_set_new(o, "pack", json_pack("{s:s, s:i, s:I}", "id", pack_id, "jobs", pack_jobs, "steps",
                                             (json_int_t)packed_steps));
    return o;
}

json_t *msg_metric(const char *job_id, int64_t seq, int64_t step, double epoch, const char *name,
                   double value) {
    json_t *o = base(MSG_METRIC, job_id);
    if (!o) return NULL;
    json_object_set_new(o, "seq", json_integer(seq));
    json_object_set_new(o, "step", json_integer(step));
    json_object_set_new(o, "epoch", num(epoch));
    json_object_set_new(o, "name", json_string(name));
    json_object_set_new(o, "value", num(value));
    return o;
}

json_t *msg_event(const char *job_id, const char *level, const char *text) {
    json_t *o = base(MSG_EVENT, job_id);
    if (!o) return NULL;
    json_object_set_new(o, "level", json_string(level));
    /* json_string rejects invalid UTF-8; a message from a file name must not
     * lose the whole event. */
    json_t *s = json_string(text);
    json_object_set_new(o, "message", s ? s : json_string("(message not UTF-8)"));
    return o;
}

json_t *msg_checkpoint(const char *job_id, int64_t step, const char *dir) {
    json_t *o = base(MSG_CHECKPOINT, job_id);
    if (!o) return NULL;
    json_object_set_new(o, "step", json_integer(step));
    json_object_set_new(o, "dir", json_string(dir));
    return o;
}

json_t *msg_done(const char *job_id, msg_outcome outcome, const char *stop_reason) {
    json_t *o = base(MSG_DONE, job_id);
    if (!o) return NULL;
    json_object_set_new(o, "outcome", json_string(msg_outcome_name(outcome)));
    if (stop_reason) {
        /* Cut to what the daemon accepts, on a UTF-8 character boundary. */
        size_t len = strlen(stop_reason), n = len < MSG_MAX_STOP_REASON ? len : MSG_MAX_STOP_REASON;
        while (n > 0 && n < len && ((unsigned char)stop_reason[n] & 0xC0) == 0x80) n--;
        json_t *s = json_stringn(stop_reason, n);
        json_object_set_new(o, "stop_reason", s ? s : json_string("(stop reason not UTF-8)"));
    }
    return o;
}

json_t *msg_failed(const char *job_id, int code, const char *error) {
    json_t *o = base(MSG_FAILED, job_id);
    if (!o) return NULL;
    json_object_set_new(o, "code", json_string(msg_code_name(code)));
    json_t *s = json_string(error);
    json_object_set_new(o, "error", s ? s : json_string("(error message not UTF-8)"));
    return o;
}

json_t *msg_assign(const char *job_id, const json_t *spec, const char *model_dir,
                   const char *const *training_files, int n_training_files,
                   const char *validation_file, const char *reference_adapter_dir,
                   const char *run_dir, int resume) {
    json_t *o = base(MSG_ASSIGN, job_id);
    if (!o) return NULL;
    json_object_set_new(o, "spec", json_deep_copy(spec));
    json_object_set_new(o, "model_dir", json_string(model_dir));
    json_t *a = json_array();
    for (int i = 0; i < n_training_files; i++) json_array_append_new(a, json_string(training_files[i]));
    json_object_set_new(o, "training_files", a);
    if (validation_file) json_object_set_new(o, "validation_file", json_string(validation_file));
    if (reference_adapter_dir)
        json_object_set_new(o, "reference_adapter_dir", json_string(reference_adapter_dir));
    json_object_set_new(o, "run_dir", json_string(run_dir));
    json_object_set_new(o, "resume", json_boolean(resume));
    return o;
}

json_t *msg_cancel(const char *job_id, const char *reason) {
    json_t *o = base(MSG_CANCEL, job_id);
    if (o && reason) json_object_set_new(o, "reason", json_string(reason));
    return o;
}

json_t *msg_suspend(const char *job_id, const char *reason) {
    json_t *o = msg_cancel(job_id, reason);
    if (o) json_object_set_new(o, "resume", json_true());
    return o;
}

json_t *msg_ack(int64_t seq) {
    json_t *o = base(MSG_ACK, NULL);
    if (o) json_object_set_new(o, "seq", json_integer(seq));
    return o;
}

json_t *msg_child_error(const lr_err *err) {
    json_t *m = json_string(err->msg);
    return json_pack("{s:{s:s, s:s?, s:o}}", "error", "code", msg_code_name(err->code), "param",
                     err->param[0] ? err->param : NULL, "message", m ? m : json_string("(message not UTF-8)"));
}

int msg_child_error_parse(const char *out, size_t len, lr_err *err) {
    while (len && (out[len - 1] == '\n' || out[len - 1] == '\r')) len--;
    const char *nl = len ? memrchr(out, '\n', len) : NULL, *line = nl ? nl + 1 : out;
    json_t *o = json_loadb(line, len - (size_t)(line - out), 0, NULL), *e = json_object_get(o, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *param = json_string_value(json_object_get(e, "param"));
    const char *text = json_string_value(json_object_get(e, "message"));
    int found = text != NULL;
    if (found) lr_errp(err, msg_code_parse(code), param, "%s", text);
    json_decref(o);
    return found ? 0 : -1;
}
