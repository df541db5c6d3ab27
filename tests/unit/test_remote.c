/* Remote workers and the Slurm executor without a network (issue 17): the
 * worker address parser and the loopback rule, the config checks that
 * refuse plain TCP off loopback, worker tokens in the store (hashed,
 * revocable, a user's token is not one), lorad's refusal of a plain
 * connection on a TLS listener, and which devices go to Slurm.
 * tests/integration/test_remote_worker.py and test_slurm.py run them for real. */
#include <pthread.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include "daemon/config.h"
#include "daemon/sha256.h"
#include "daemon/slurm.h"
#include "daemon/store.h"
#include "proto/tlink.h"
#include "tests/unit/test.h"

TEST(parse_url) {
    int tls;
    char host[64], port[16];
    lr_err e = {0};
    CHECK(tl_parse_url("https://gpu.example.org:8443", &tls, host, sizeof host, port, sizeof port, &e) == 0);
    CHECK(tls == 1);
    CHECK_STR(host, "gpu.example.org");
    CHECK_STR(port, "8443");
    CHECK(tl_parse_url("tcp://127.0.0.1:9", &tls, host, sizeof host, port, sizeof port, &e) == 0 && tls == 0);
    CHECK(tl_parse_url("https://[::1]:443", &tls, host, sizeof host, port, sizeof port, &e) == 0);
    CHECK_STR(host, "::1");
    CHECK(tl_parse_url("http://x:1", &tls, host, sizeof host, port, sizeof port, &e) == -1);
    CHECK(strstr(e.msg, "https://HOST:PORT") != NULL);
    CHECK(tl_parse_url("https://x", &tls, host, sizeof host, port, sizeof port, &e) == -1);
    CHECK(tl_parse_url("https://x:8a", &tls, host, sizeof host, port, sizeof port, &e) == -1);
    CHECK(tl_parse_url("https://:80", &tls, host, sizeof host, port, sizeof port, &e) == -1);
}

TEST(loopback_only_plain) {
    CHECK(tl_is_loopback("127.0.0.1") && tl_is_loopback("127.3.4.5") && tl_is_loopback("localhost") &&
          tl_is_loopback("::1"));
    CHECK(!tl_is_loopback("10.0.0.1") && !tl_is_loopback("0.0.0.0") && !tl_is_loopback("gpu01"));
    tl_conn c;
    lr_err e = {0};
    CHECK(tl_dial("tcp://10.1.2.3:9", NULL, 1, &c, &e) == -1);
    CHECK(strstr(e.msg, "loopback") != NULL);
}

TEST(config_refuses_plain_remote) {
    lorad_config c;
    lr_err e = {0};
    config_defaults(&c);
    CHECK(config_set(&c, "worker_listen", "0.0.0.0:8443", &e) == 0);
    CHECK(config_finish(&c, &e) == -1);
    CHECK(strstr(e.msg, "need TLS") != NULL);
    CHECK(config_set(&c, "tls_cert", "/x.pem", &e) == 0);
    CHECK(config_finish(&c, &e) == -1); /* a certificate without its key */
    CHECK(config_set(&c, "tls_key", "/x.key", &e) == 0);
    CHECK(config_finish(&c, &e) == 0);
    config_defaults(&c);
    CHECK(config_set(&c, "worker_listen", "127.0.0.1:0", &e) == 0);
    CHECK(config_finish(&c, &e) == 0);
    CHECK(config_set(&c, "slurm_devices", "cuda", &e) == 0);
    CHECK(config_finish(&c, &e) == -1); /* no slurm_token_file */
    CHECK(config_set(&c, "slurm_token_file", "/etc/lorad/slurm.token", &e) == 0);
    CHECK(config_finish(&c, &e) == 0);
}

TEST(slurm_routes_devices) {
    lorad_config c;
    config_defaults(&c);
    CHECK(!slurm_routes(&c, "cuda"));
    snprintf(c.slurm_devices, sizeof c.slurm_devices, "cuda,any");
    CHECK(slurm_routes(&c, "cuda") && slurm_routes(&c, "any") && !slurm_routes(&c, "cpu") && !slurm_routes(&c, "cud"));
    CHECK(slurm_state_final("CANCELLED") && slurm_state_final("NODE_FAIL") && slurm_state_final("TIMEOUT") &&
          slurm_state_final("PREEMPTED") && slurm_state_final("GONE") && slurm_state_final("COMPLETED"));
    CHECK(!slurm_state_final("PENDING") && !slurm_state_final("RUNNING") && !slurm_state_final("COMPLETING"));
}

TEST(worker_tokens) {
    char path[512], name[64], h1[65], h2[65], hu[65];
    snprintf(path, sizeof path, "%s/lorad.db", test_tmpdir());
    store *st = NULL;
    lr_err e = {0};
    int applied = 0;
    REQUIRE(store_open(path, &st, &e) == 0);
    REQUIRE(store_migrate(st, "migrations", &applied, &e) == 0);
    sha256_hex("lw_one", 6, h1);
    sha256_hex("lw_two", 6, h2);
    sha256_hex("lr_user", 7, hu);
    CHECK(store_user_add(st, "alice", 0, hu, &e) == 0);
    CHECK(store_worker_token_add(st, "box1", h1, &e) == 0);
    CHECK(store_worker_token_add(st, "box1", h2, &e) == -1 && e.code == LR_E_CONFLICT);
    CHECK(store_worker_token_auth(st, h1, name, &e) == 0);
    CHECK_STR(name, "box1");
    CHECK(store_worker_token_auth(st, hu, name, &e) == -1 && e.code == LR_E_NOTFOUND); /* a user's is not one */
    CHECK(store_worker_token_rm(st, "box1", &e) == 0);
    CHECK(store_worker_token_auth(st, h1, name, &e) == -1 && e.code == LR_E_NOTFOUND);
    CHECK(store_worker_token_rm(st, "box1", &e) == -1 && e.code == LR_E_NOTFOUND);
    store_close(st);
}

typedef struct plain_client {
    int port;
    char got[64];
} plain_client;

/* A worker that speaks no TLS: it sends a frame in the clear. */
static void *plain_main(void *arg) {
    plain_client *p = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        static const char frame[] = "\0\0\0\x0f{\"type\":\"auth\"}";
        if (write(fd, frame, sizeof frame - 1) < 0) p->got[0] = 0;
        ssize_t n = read(fd, p->got, sizeof p->got - 1);
        p->got[n > 0 ? n : 0] = 0;
    }
    close(fd);
    return NULL;
}

TEST(tls_listener_refuses_plain) {
    char cmd[2048], cert[512], key[512];
    snprintf(cert, sizeof cert, "%s/cert.pem", test_tmpdir());
    snprintf(key, sizeof key, "%s/key.pem", test_tmpdir());
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout %s -out %s "
             "-days 1 -subj /CN=localhost >/dev/null 2>&1", key, cert);
    if (system(cmd)) {
        SKIP("openssl cannot make a test certificate (apt-get install openssl)");
    }
    tl_server srv;
    lr_err e = {0};
    REQUIRE(tl_server_init(&srv, cert, key, &e) == 0);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    REQUIRE(bind(ls, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(ls, 1) == 0);
    getsockname(ls, (struct sockaddr *)&sa, &sl);
    plain_client p = {.port = ntohs(sa.sin_port)};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, plain_main, &p) == 0);
    int fd = accept(ls, NULL, NULL);
    tl_conn c;
    CHECK(tl_accept(&srv, fd, 5, &c, &e) == -1);
    CHECK(strstr(e.msg, "without a working TLS session") != NULL);
    pthread_join(t, NULL);
    CHECK(strstr(p.got, "auth") == NULL); /* nothing of the protocol answered */
    close(ls);
    tl_server_free(&srv);
}
