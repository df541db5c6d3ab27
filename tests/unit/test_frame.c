/* Frames and messages: exact bytes on the wire, incremental decoding,
 * every protocol error, and a round trip of each message type. */
#include "tests/unit/test.h"

#include <sys/socket.h>
#include <unistd.h>

#include "proto/frame.h"
#include "proto/msg.h"

static void hdr(unsigned char *h, uint32_t n) {
    h[0] = n >> 24; h[1] = n >> 16; h[2] = n >> 8; h[3] = n;
}

TEST(encode_exact_bytes) {
    json_t *m = json_pack("{s:s}", "type", "ack");
    lr_buf b;
    lr_buf_init(&b, 1024);
    lr_err e = {0};
    REQUIRE(frame_encode(m, &b, &e) == 0);
    const char *body = "{\"type\":\"ack\"}";
    CHECK_EQ_INT(b.len, 4 + strlen(body));
    CHECK(memcmp(b.data, "\0\0\0\x0e", 4) == 0);
    CHECK(memcmp(b.data + 4, body, strlen(body)) == 0);
    lr_buf_free(&b);
    json_decref(m);
}

TEST(encode_rejects_untyped) {
    json_t *m = json_pack("{s:i}", "x", 1);
    lr_buf b;
    lr_buf_init(&b, 1024);
    lr_err e = {0};
    CHECK(frame_encode(m, &b, &e) == -1);
    CHECK_EQ_INT(b.len, 0);
    lr_buf_free(&b);
    json_decref(m);
}

TEST(decode_byte_by_byte_and_batched) {
    lr_buf b;
    lr_buf_init(&b, 1 << 16);
    lr_err e = {0};
    for (int i = 0; i < 3; i++) {
        json_t *m = msg_metric("ftjob-1", i, 10 * i, 0.5, "loss", 1.0 / (i + 1));
        REQUIRE(frame_encode(m, &b, &e) == 0);
        json_decref(m);
    }
    frame_dec d;
    frame_dec_init(&d, 4096);
    int got = 0;
    for (size_t i = 0; i < b.len; i++) {
        REQUIRE(frame_dec_feed(&d, b.data + i, 1, &e) == 0);
        json_t *j;
        int r;
        while ((r = frame_dec_next(&d, &j, &e)) == 1) {
            msg m;
            CHECK(msg_parse(j, &m, &e) == 0);
            CHECK_EQ_INT(m.type, MSG_METRIC);
            CHECK_EQ_INT(m.metric.seq, got);
            CHECK_EQ_INT(m.metric.step, 10 * got);
            CHECK_NEAR(m.metric.value, 1.0 / (got + 1), 1e-15);
            got++;
            json_decref(j);
        }
        CHECK(r == 0);
    }
    CHECK_EQ_INT(got, 3);
    /* The same bytes in one piece. */
    frame_dec_free(&d);
    frame_dec_init(&d, 4096);
    REQUIRE(frame_dec_feed(&d, b.data, b.len, &e) == 0);
    json_t *j;
    got = 0;
    while (frame_dec_next(&d, &j, &e) == 1) {
        got++;
        json_decref(j);
    }
    CHECK_EQ_INT(got, 3);
    frame_dec_free(&d);
    lr_buf_free(&b);
}

static int decode_error(const void *bytes, size_t n, size_t max, char *msgout) { /* msgout: 512 bytes */
    frame_dec d;
    frame_dec_init(&d, max);
    lr_err e = {0};
    int r = frame_dec_feed(&d, bytes, n, &e);
    json_t *j = NULL;
    if (r == 0) r = frame_dec_next(&d, &j, &e);
    if (j) json_decref(j);
    /* After an error the decoder refuses everything. */
    if (r == -1) {
        lr_err e2 = {0};
        if (frame_dec_feed(&d, "x", 1, &e2) != -1) r = 99;
    }
    if (msgout) snprintf(msgout, 512, "%s", e.msg);
    frame_dec_free(&d);
    return r;
}

TEST(decode_protocol_errors) {
    unsigned char f[64];
    char m[512];
    hdr(f, 0);
    CHECK_EQ_INT(decode_error(f, 4, 100, m), -1);
    hdr(f, 101); /* over max: fails on the header alone, before the body arrives */
    CHECK_EQ_INT(decode_error(f, 4, 100, m), -1);
    CHECK(strstr(m, "101") != NULL);
    hdr(f, 0xffffffffu);
    CHECK_EQ_INT(decode_error(f, 4, 100, m), -1);
    hdr(f, 5);
    memcpy(f + 4, "{\"a\":", 5); /* invalid JSON */
    CHECK_EQ_INT(decode_error(f, 9, 100, m), -1);
    hdr(f, 2);
    memcpy(f + 4, "[]", 2); /* not an object */
    CHECK_EQ_INT(decode_error(f, 6, 100, m), -1);
    hdr(f, 10);
    memcpy(f + 4, "{\"type\":1}", 10); /* type not a string */
    CHECK_EQ_INT(decode_error(f, 14, 100, m), -1);
    hdr(f, 14);
    memcpy(f + 4, "{\"type\":\"ack\"}", 14);
    CHECK_EQ_INT(decode_error(f, 3, 100, m), 0); /* partial header: need more */
    CHECK_EQ_INT(decode_error(f, 17, 100, m), 0); /* partial body */
    CHECK_EQ_INT(decode_error(f, 18, 100, m), 1);
}

TEST(feed_caps_pending_bytes) {
    frame_dec d;
    frame_dec_init(&d, 100);
    lr_err e = {0};
    char *big = calloc(1, 200000);
    CHECK(frame_dec_feed(&d, big, 200000, &e) == -1);
    free(big);
    frame_dec_free(&d);
}

TEST(msg_roundtrip_all_types) {
    lr_err e = {0};
    json_t *spec = json_pack("{s:s}", "model", "m");
    const char *tf[2] = {"/d/a.jsonl", "/d/b.jsonl"};
    json_t *ms[] = {
        msg_hello("w0", "cpu", "x86", 1 << 20, 4, "0.1", "OpenBLAS SkylakeX (avx512)", 3),
        msg_heartbeat("ftjob-a", 3, 10, 0.3),
        msg_heartbeat(NULL, 0, 0, 0),
        msg_metric("ftjob-a", 7, 3, 0.3, "loss", 2.5),
        msg_event("ftjob-a", "info", "hello"),
        msg_checkpoint("ftjob-a", 3, "/r/checkpoints/step-3"),
        msg_done("ftjob-a", MSG_SUCCEEDED, NULL),
        msg_failed("ftjob-a", LR_E_NOMEM, "out of memory"),
        msg_assign("ftjob-a", spec, "/m", tf, 2, NULL, NULL, "/r", 1),
        msg_cancel("ftjob-a", "user"),
        msg_suspend("ftjob-a", "shutdown"),
        msg_ack(7),
    };
    msg_type want[] = {MSG_HELLO, MSG_HEARTBEAT, MSG_HEARTBEAT, MSG_METRIC, MSG_EVENT, MSG_CHECKPOINT,
                       MSG_DONE, MSG_FAILED, MSG_ASSIGN, MSG_CANCEL, MSG_CANCEL, MSG_ACK};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        REQUIRE(ms[i]);
        lr_buf b;
        lr_buf_init(&b, FRAME_MAX + 4);
        REQUIRE(frame_encode(ms[i], &b, &e) == 0);
        frame_dec d;
        frame_dec_init(&d, 0);
        REQUIRE(frame_dec_feed(&d, b.data, b.len, &e) == 0);
        json_t *j;
        REQUIRE(frame_dec_next(&d, &j, &e) == 1);
        msg m;
        CHECKF(msg_parse(j, &m, &e) == 0, "%s: %s", msg_type_name(want[i]), e.msg);
        CHECK_EQ_INT(m.type, want[i]);
        /* ms[2] is the heartbeat without a job */
        if (m.type != MSG_HELLO && m.type != MSG_ACK && i != 2) CHECK_STR(m.job_id, "ftjob-a");
        switch (m.type) {
        case MSG_HELLO:
            CHECK(m.job_id == NULL);
            CHECK_STR(m.hello.worker, "w0");
            CHECK_STR(m.hello.backend, "cpu");
            CHECK_STR(m.hello.device, "x86");
            CHECK_STR(m.hello.version, "0.1");
            CHECK_EQ_INT(m.hello.threads, 4);
            CHECK_EQ_INT(m.hello.mem_bytes, 1 << 20);
            CHECK_STR(m.hello.kernel, "OpenBLAS SkylakeX (avx512)");
            CHECK(m.hello.remote == NULL);
            CHECK_EQ_INT(m.hello.proto, MSG_PROTO_VERSION);
            CHECK_EQ_INT(m.hello.pack_max, 3);
            break;
        case MSG_HEARTBEAT:
            CHECK_EQ_INT(m.heartbeat.step, m.job_id ? 3 : 0);
            CHECK_EQ_INT(m.heartbeat.total_steps, m.job_id ? 10 : 0);
            CHECK(m.heartbeat.pack.id == NULL && m.heartbeat.pack.jobs == 0 && m.heartbeat.pack.steps == 0);
            break;
        case MSG_METRIC:
            CHECK_EQ_INT(m.metric.seq, 7);
            CHECK_EQ_INT(m.metric.step, 3);
            CHECK_NEAR(m.metric.epoch, 0.3, 1e-15);
            CHECK_STR(m.metric.name, "loss");
            CHECK_NEAR(m.metric.value, 2.5, 0);
            break;
        case MSG_EVENT:
            CHECK_STR(m.event.level, "info");
            CHECK_STR(m.event.message, "hello");
            break;
        case MSG_CHECKPOINT:
            CHECK_EQ_INT(m.checkpoint.step, 3);
            CHECK_STR(m.checkpoint.dir, "/r/checkpoints/step-3");
            break;
        case MSG_DONE:
            CHECK_EQ_INT(m.done.outcome, MSG_SUCCEEDED);
            CHECK(m.done.stop_reason == NULL);
            break;
        case MSG_FAILED:
            CHECK_EQ_INT(m.failed.code, LR_E_NOMEM);
            CHECK_STR(m.failed.error, "out of memory");
            break;
        case MSG_ASSIGN:
            CHECK_EQ_INT(m.assign.n_training_files, 2);
            CHECK_STR(m.assign.training_files[1], "/d/b.jsonl");
            CHECK_STR(m.assign.model_dir, "/m");
            CHECK_STR(m.assign.run_dir, "/r");
            CHECK(m.assign.resume == 1);
            CHECK(m.assign.validation_file == NULL && m.assign.reference_adapter_dir == NULL);
            CHECK_STR(json_string_value(json_object_get(m.assign.spec, "model")), "m");
            break;
        case MSG_CANCEL:
            CHECK(m.cancel.reason != NULL);
            CHECK_EQ_INT(m.cancel.resume, m.cancel.reason && !strcmp(m.cancel.reason, "shutdown")); /* msg_suspend */
            break;
        case MSG_ACK:
            CHECK(m.job_id == NULL);
            CHECK_EQ_INT(m.ack.seq, 7);
            break;
        default:
            CHECKF(0, "unexpected type %s", msg_type_name(m.type));
        }
        json_decref(j);
        frame_dec_free(&d);
        lr_buf_free(&b);
        json_decref(ms[i]);
    }
    json_decref(spec);
}

TEST(msg_pack_fields) {
    lr_err e = {0};
    msg m;
    /* A hello from before packing has no pack_max: one job at a time. */
    json_t *h = json_loads("{\"type\":\"hello\",\"worker\":\"w\",\"backend\":\"cpu\",\"proto\":1}", 0, NULL);
    REQUIRE(h);
    CHECKF(msg_parse(h, &m, &e) == 0, "%s", e.msg);
    CHECK_EQ_INT(m.hello.pack_max, 1);
    json_decref(h);
    h = msg_hello("w", "cpu", NULL, 0, 1, NULL, NULL, 0); /* below 1 is sent as 1 */
    CHECK(msg_parse(h, &m, &e) == 0 && m.hello.pack_max == 1);
    json_decref(h);
    json_t *b = msg_heartbeat_pack("ftjob-a", 5, 20, 0.25, "pack-w0-3", 3, 4000000000LL);
    REQUIRE(b);
    CHECKF(msg_parse(b, &m, &e) == 0, "%s", e.msg);
    CHECK_STR(m.job_id, "ftjob-a");
    CHECK_EQ_INT(m.heartbeat.step, 5);
    CHECK_EQ_INT(m.heartbeat.total_steps, 20);
    CHECK_STR(m.heartbeat.pack.id, "pack-w0-3");
    CHECK_EQ_INT(m.heartbeat.pack.jobs, 3);
    CHECK_EQ_INT(m.heartbeat.pack.steps, 4000000000LL);
    json_decref(b);
    /* No pack id: a plain heartbeat. */
    b = msg_heartbeat_pack("ftjob-a", 5, 20, 0.25, NULL, 3, 4);
    CHECK(json_object_get(b, "pack") == NULL);
    CHECK(msg_parse(b, &m, &e) == 0 && m.heartbeat.pack.id == NULL);
    json_decref(b);
}

TEST(msg_nonfinite_metric_is_null) {
    json_t *m = msg_metric("ftjob-a", 1, 1, 0, "loss", NAN);
    CHECK(json_is_null(json_object_get(m, "value")));
    msg p;
    lr_err e = {0};
    CHECK(msg_parse(m, &p, &e) == 0);
    CHECK(isnan(p.metric.value));
    json_decref(m);
}

TEST(msg_parse_rejects_bad_fields) {
    const char *bad[] = {
        "{\"type\":\"nope\"}",
        "{\"type\":\"metric\",\"job_id\":\"j\",\"seq\":1,\"step\":-1,\"name\":\"loss\",\"value\":1}",
        "{\"type\":\"metric\",\"job_id\":\"j\",\"seq\":1,\"step\":1,\"name\":\"\",\"value\":1}",
        "{\"type\":\"metric\",\"job_id\":\"j\",\"seq\":1,\"step\":1,\"name\":\"loss\",\"value\":\"1\"}",
        "{\"type\":\"metric\",\"seq\":1,\"step\":1,\"name\":\"loss\",\"value\":1}",
        "{\"type\":\"done\",\"job_id\":\"j\",\"outcome\":\"maybe\"}",
        "{\"type\":\"done\",\"job_id\":\"j\",\"outcome\":\"succeeded\",\"stop_reason\":\"x\"}",
        "{\"type\":\"done\",\"job_id\":\"j\",\"outcome\":\"stopped_early\",\"stop_reason\":7}",
        "{\"type\":\"failed\",\"job_id\":\"j\",\"error\":\"x\",\"code\":7}",
        "{\"type\":\"hello\",\"worker\":\"w\",\"backend\":\"cpu\",\"proto\":99}",
        "{\"type\":\"hello\",\"worker\":\"w\",\"backend\":7,\"proto\":1}",
        "{\"type\":\"assign\",\"job_id\":\"j\",\"spec\":{},\"model_dir\":\"/m\",\"run_dir\":\"/r\",\"training_files\":[]}",
        "{\"type\":\"assign\",\"job_id\":\"j\",\"spec\":{},\"model_dir\":\"/m\",\"run_dir\":\"/r\",\"training_files\":[\"a\"],\"resume\":1}",
        "{\"type\":\"ack\"}",
        "{\"type\":\"hello\",\"worker\":\"w\",\"backend\":\"cpu\",\"proto\":1,\"pack_max\":0}",
        "{\"type\":\"hello\",\"worker\":\"w\",\"backend\":\"cpu\",\"proto\":1,\"pack_max\":\"4\"}",
        "{\"type\":\"heartbeat\",\"job_id\":\"j\",\"pack\":7}",
        "{\"type\":\"heartbeat\",\"job_id\":\"j\",\"pack\":{\"id\":\"p\",\"jobs\":0,\"steps\":1}}",
        "{\"type\":\"heartbeat\",\"job_id\":\"j\",\"pack\":{\"id\":\"p\",\"jobs\":2,\"steps\":-1}}",
        "{\"type\":\"heartbeat\",\"job_id\":\"j\",\"pack\":{\"id\":\"\",\"jobs\":2,\"steps\":1}}",
        "{\"type\":\"heartbeat\",\"job_id\":\"j\",\"pack\":{\"jobs\":2,\"steps\":1}}",
        "{\"type\":\"heartbeat\",\"pack\":{\"id\":\"p\",\"jobs\":2,\"steps\":1}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *j = json_loads(bad[i], 0, NULL);
        REQUIRE(j);
        msg m;
        lr_err e = {0};
        CHECKF(msg_parse(j, &m, &e) == -1, "accepted: %s", bad[i]);
        CHECKF(e.msg[0] != 0, "no message for: %s", bad[i]);
        json_decref(j);
    }
}

TEST(msg_done_stop_reason) {
    lr_err e = {0};
    msg m;
    json_t *d = msg_done("ftjob-a", MSG_STOPPED_EARLY, "early stop at step 12: eval loss did not improve");
    REQUIRE(d);
    CHECKF(msg_parse(d, &m, &e) == 0, "%s", e.msg);
    CHECK_EQ_INT(m.done.outcome, MSG_STOPPED_EARLY);
    CHECK_STR(m.done.stop_reason, "early stop at step 12: eval loss did not improve");
    json_decref(d);
    /* No reason (an older worker): parses, NULL. */
    d = msg_done("ftjob-a", MSG_STOPPED_EARLY, NULL);
    CHECK(json_object_get(d, "stop_reason") == NULL);
    CHECK(msg_parse(d, &m, &e) == 0 && m.done.stop_reason == NULL);
    json_decref(d);
    /* A reason over the cap is cut by the builder, never rejected, and the cut
     * does not split a UTF-8 character ("é" is 2 bytes; 1025 of them). */
    char *big = malloc(2 * 1025 + 1);
    REQUIRE(big);
    for (int i = 0; i < 1025; i++) memcpy(big + 2 * i, "\xc3\xa9", 2);
    big[2 * 1025] = 0;
    d = msg_done("ftjob-a", MSG_STOPPED_EARLY, big);
    REQUIRE(d);
    CHECKF(msg_parse(d, &m, &e) == 0, "%s", e.msg);
    CHECK_EQ_INT((long long)strlen(m.done.stop_reason), 1024);
    json_decref(d);
    /* A peer that sends more than the cap is a protocol error. */
    json_t *raw = json_pack("{s:s, s:s, s:s, s:s%}", "type", "done", "job_id", "j", "outcome", "stopped_early",
                            "stop_reason", big, (size_t)1026);
    REQUIRE(raw);
    CHECK(msg_parse(raw, &m, &e) == -1 && strstr(e.msg, "stop_reason"));
    json_decref(raw);
    free(big);
}

TEST(fd_helpers_over_socketpair) {
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    lr_err e = {0};
    json_t *m = msg_event("ftjob-x", "info", "step 1");
    REQUIRE(frame_write_fd(sv[0], m, &e) == 0);
    json_decref(m);
    frame_dec d;
    frame_dec_init(&d, 0);
    json_t *j = NULL;
    CHECK_EQ_INT(frame_read_fd(sv[1], &d, 1000, &j, &e), 1);
    CHECK(j && !strcmp(json_string_value(json_object_get(j, "message")), "step 1"));
    json_decref(j);
    CHECK_EQ_INT(frame_read_fd(sv[1], &d, 20, &j, &e), 0); /* timeout */
    close(sv[0]);
    CHECK_EQ_INT(frame_read_fd(sv[1], &d, 1000, &j, &e), FRAME_EOF); /* closed between frames: the normal end */
    close(sv[1]);
    frame_dec_free(&d);
    /* Closed after half a frame: an error, not the normal end. */
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    frame_dec_init(&d, 0);
    unsigned char half[6] = {0, 0, 0, 20, '{', '"'};
    CHECK(write(sv[0], half, sizeof half) == (ssize_t)sizeof half);
    close(sv[0]);
    CHECK_EQ_INT(frame_read_fd(sv[1], &d, 1000, &j, &e), -1);
    CHECKF(strstr(e.msg, "middle of a frame"), "%s", e.msg);
    close(sv[1]);
    frame_dec_free(&d);
}

/* FAILED carries the class of the failure: every LR_E_* code survives the
 * trip by name; a name this side does not know, or none (a worker from
 * before codes), reads as unclassified. */
TEST(msg_failed_codes) {
    lr_err e = {0};
    msg m;
    for (int code = 0; code <= LR_E_TIMEOUT; code++) {
        json_t *f = msg_failed("ftjob-a", code, "why");
        REQUIRE(f);
        CHECKF(msg_parse(f, &m, &e) == 0, "%s", e.msg);
        CHECKF(m.failed.code == code, "code %d came back as %d (%s)", code, m.failed.code, msg_code_name(code));
        CHECK(code == 0 || strcmp(msg_code_name(code), "error"));
        json_decref(f);
    }
    CHECK_STR(msg_code_name(LR_E_NOMEM), "out_of_memory");
    CHECK_EQ_INT(msg_code_parse("busy"), LR_E_BUSY);
    const char *other[] = {"{\"type\":\"failed\",\"job_id\":\"j\",\"error\":\"x\",\"code\":\"solar_flare\"}",
                           "{\"type\":\"failed\",\"job_id\":\"j\",\"error\":\"x\"}"};
    for (int i = 0; i < 2; i++) {
        json_t *j = json_loads(other[i], 0, NULL);
        REQUIRE(j);
        m.failed.code = -1;
        CHECK(msg_parse(j, &m, &e) == 0 && m.failed.code == 0);
        json_decref(j);
    }
}

/* A child's error object: written by msg_child_error as the last line of
 * stdout, read back with its class and input whatever came before it. */
TEST(child_error_object) {
    lr_err in = {0}, out = {0};
    lr_errp(&in, LR_E_INVALID, "prompt", "prompt: the prompt has 99 tokens; the model takes at most 10");
    json_t *o = msg_child_error(&in);
    REQUIRE(o);
    char *line = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    REQUIRE(line);
    char text[1024];
    snprintf(text, sizeof text, "{\"id\":\"a\",\"text\":\"ok\"}\n%s\n", line);
    free(line);
    CHECK(msg_child_error_parse(text, strlen(text), &out) == 0);
    CHECK_EQ_INT(out.code, LR_E_INVALID);
    CHECK_STR(out.param, "prompt");
    CHECK_STR(out.msg, in.msg);
    lr_err_clear(&in);
    lr_errf(&in, "no class");
    o = msg_child_error(&in);
    line = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    REQUIRE(line);
    CHECK(strstr(line, "\"param\":null") != NULL);
    CHECK(msg_child_error_parse(line, strlen(line), &out) == 0 && out.code == 0 && !out.param[0]);
    free(line);
    /* No error object (a result, nothing, a crash's garbage): -1, err untouched. */
    const char *none[] = {"{\"id\":\"a\",\"text\":\"ok\"}\n", "", "Segmentation fault", "{\"error\":{\"code\":\"io\"}}"};
    for (int i = 0; i < 4; i++) {
        lr_errp(&out, LR_E_TIMEOUT, NULL, "kept");
        CHECK(msg_child_error_parse(none[i], strlen(none[i]), &out) == -1);
        CHECK(out.code == LR_E_TIMEOUT && !strcmp(out.msg, "kept"));
    }
}
