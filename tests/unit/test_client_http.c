/* client/http: error wording and transport failures, against a canned
 * one-shot server on a loopback port (no lorad needed). */
#include "tests/unit/test.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client/http.h"

TEST(error_message_wording) {
    lr_err err = {0};
    const char *b = "{\"error\":{\"code\":\"invalid_request\",\"message\":\"lora.r must be between 1 and 1024 (got -3)\","
                    "\"param\":\"lora.r\"}}";
    http_error_message(400, b, strlen(b), &err);
    CHECK_STR(err.msg, "lora.r must be between 1 and 1024 (got -3)");
    CHECK_STR(err.param, "lora.r");
    http_error_message(502, "<html>Bad Gateway</html>\nmore", 30, &err);
    CHECK_STR(err.msg, "HTTP 502: <html>Bad Gateway</html>");
    http_error_message(404, "", 0, &err);
    CHECK_STR(err.msg, "HTTP 404 from the server");
}

TEST(escape) {
    char b[64];
    http_escape("ftjob-abc_1.x~", b, sizeof b);
    CHECK_STR(b, "ftjob-abc_1.x~");
    http_escape("a/b c&d", b, sizeof b);
    CHECK_STR(b, "a%2Fb%20c%26d");
    http_escape("abcdef", b, 4);
    CHECK_STR(b, "abc");
}

typedef struct canned {
    int fd;
    const char *reply;
    char request[4096];
} canned;

/* Accepts one connection, records the request head, sends the reply. */
static void *serve_one(void *arg) {
    canned *c = arg;
    int s = accept(c->fd, NULL, NULL);
    if (s < 0) return NULL;
    size_t n = 0;
    while (n < sizeof c->request - 1) {
        ssize_t r = read(s, c->request + n, sizeof c->request - 1 - n);
        if (r <= 0) break;
        n += (size_t)r;
        c->request[n] = 0;
        if (strstr(c->request, "\r\n\r\n")) break;
    }
    if (write(s, c->reply, strlen(c->reply)) < 0) perror("write");
    close(s);
    return NULL;
}

static int listen_any(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 1) ||
        getsockname(fd, (struct sockaddr *)&a, &l))
        return -1;
    *port = ntohs(a.sin_port);
    return fd;
}

static int exchange(const char *reply, const char *token, json_t **out, http_client *h, canned *c, lr_err *err) {
    int port;
    c->fd = listen_any(&port);
    c->reply = reply;
    c->request[0] = 0;
    if (c->fd < 0) return -2;
    char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
    pthread_t th;
    pthread_create(&th, NULL, serve_one, c);
    int rc = http_init(h, base, token, err) ? -2 : http_json(h, "GET", "/v1/jobs?limit=1", NULL, out, err);
    pthread_join(th, NULL);
    close(c->fd);
    return rc;
}

TEST(ok_answer_and_auth_header) {
    http_client h;
    canned c;
    lr_err err = {0};
    json_t *out = NULL;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = exchange("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 28\r\nConnection: close\r\n\r\n"
                      "{\"object\":\"list\",\"data\":[]}\n",
                      "tok123", &out, &h, &c, &err);
    REQUIRE(rc != -2);
    CHECK_EQ_INT(rc, 0);
    CHECK(json_is_array(json_object_get(out, "data")));
    CHECK(strstr(c.request, "GET /v1/jobs?limit=1 HTTP/1.1\r\n") != NULL);
    CHECK(strstr(c.request, "Authorization: Bearer tok123\r\n") != NULL);
    CHECK_EQ_INT(h.status, 200);
    json_decref(out);
    http_free(&h);
}

TEST(server_error_is_exit_2) {
    http_client h;
    canned c;
    lr_err err = {0};
    json_t *out = NULL;
    const char *body = "{\"error\":{\"code\":\"unauthorized\",\"message\":\"the bearer token is not valid\",\"param\":null}}";
    char reply[512];
    snprintf(reply, sizeof reply, "HTTP/1.1 401 Unauthorized\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
             strlen(body), body);
    int rc = exchange(reply, "", &out, &h, &c, &err);
    REQUIRE(rc != -2);
    CHECK_EQ_INT(rc, -1);
    CHECK_STR(err.msg, "the bearer token is not valid");
    CHECK_EQ_INT(http_exit_code(&h), 2);
    CHECK_EQ_INT(h.status, 401);
    CHECK(strstr(c.request, "Authorization") == NULL); /* no token, no header */
    CHECK(out == NULL);
    http_free(&h);
}

TEST(non_json_answer) {
    http_client h;
    canned c;
    lr_err err = {0};
    json_t *out = NULL;
    int rc = exchange("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", "", &out, &h, &c, &err);
    REQUIRE(rc != -2);
    CHECK_EQ_INT(rc, -1);
    CHECK(strstr(err.msg, "not JSON") != NULL);
    CHECK_EQ_INT(http_exit_code(&h), 2);
    http_free(&h);
}

TEST(refused_is_exit_3) {
    int port;
    int fd = listen_any(&port);
    REQUIRE(fd >= 0);
    close(fd); /* now nothing listens there */
    char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
    http_client h;
    lr_err err = {0};
    json_t *out;
    REQUIRE(!http_init(&h, base, "", &err));
    CHECK_EQ_INT(http_json(&h, "GET", "/v1/jobs", NULL, &out, &err), -1);
    CHECK_EQ_INT(http_exit_code(&h), 3);
    CHECK(strstr(err.msg, "cannot connect to http://127.0.0.1:") != NULL);
    http_free(&h);
}
