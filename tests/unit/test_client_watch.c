/* client/watch: the live view's rendering and exit codes (no server). */
#include "tests/unit/test.h"

#include <jansson.h>

#include "client/fmt.h"
#include "client/watch.h"

static const char *running_job =
    "{\"id\":\"ftjob-1\",\"name\":\"notes\",\"user\":\"alice\",\"status\":\"running\",\"worker\":\"w0\","
    "\"started_at\":1000,\"finished_at\":null,\"progress\":{\"step\":25,\"total_steps\":100,\"epoch\":0.5},"
    "\"metrics\":{\"loss\":1.5,\"eval_loss\":1.75,\"lr\":0.0002,\"tokens_per_s\":1234.4},\"error\":null}";

static char *render(const char *job_text, const double *loss, size_t n, int utf8, int color, int width, int *lines) {
    json_t *job = json_loads(job_text, 0, NULL);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    watch_view v = {.utf8 = utf8, .color = color, .width = width, .now = 1100};
    *lines = watch_render(f, job, loss, n, &v);
    fclose(f);
    json_decref(job);
    return out;
}

TEST(render_running_utf8) {
    double loss[] = {3, 2.5, 2, 1.8, 1.6, 1.5};
    int lines;
    char *s = render(running_job, loss, 6, 1, 0, 100, &lines);
    CHECK_EQ_INT(lines, 4);
    CHECK(strstr(s, "ftjob-1  notes  running  user alice  worker w0\n") != NULL);
    CHECK(strstr(s, " 25%  ETA 5m00s  step 25/100  elapsed 1m40s  epoch 0.50") != NULL);
    CHECK(strstr(s, "█") != NULL && strstr(s, "░") != NULL); /* the bar */
    CHECK(strstr(s, "loss 1.500  eval loss 1.750  lr 2.0e-04  tokens/s (last log window) 1234\n") != NULL);
    CHECK(strstr(s, "loss █▆▃▂▁▁  max 3.000 min 1.500\n") != NULL); /* the sparkline */
    /* no line wider than the terminal */
    for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) CHECK(fmt_width(line) <= 99);
    free(s);
}

TEST(render_ascii_and_narrow) {
    double loss[] = {2, 1};
    int lines;
    char *s = render(running_job, loss, 2, 0, 0, 40, &lines);
    CHECK(strstr(s, "[##--------]  25%  ETA 5m00s") != NULL); /* the bar keeps 10 cells */
    CHECK(strstr(s, "#_") != NULL);
    for (const char *p = s; *p; p++) CHECK((unsigned char)*p < 0x80); /* pure ASCII */
    for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) CHECK(fmt_width(line) <= 39);
    free(s);
}

TEST(render_colour_only_on_status) {
    int lines;
    char *s = render(running_job, NULL, 0, 1, 1, 100, &lines);
    CHECK(strstr(s, "\x1b[36mrunning\x1b[0m") != NULL);
    CHECK(strstr(s, "loss (no points yet)") != NULL);
    free(s);
}

TEST(render_failed_shows_reason) {
    int lines;
    char *s = render("{\"id\":\"j\",\"status\":\"failed\",\"started_at\":1000,\"finished_at\":1030,"
                     "\"progress\":{\"step\":3,\"total_steps\":10},\"metrics\":{},"
                     "\"error\":{\"code\":\"oom\",\"message\":\"out of memory at step 3\"}}",
                     NULL, 0, 0, 0, 80, &lines);
    CHECK_EQ_INT(lines, 5);
    CHECK(strstr(s, "failed: out of memory at step 3\n") != NULL);
    CHECK(strstr(s, "ETA -  step 3/10  elapsed 30s") != NULL);
    free(s);
}

static const char *stopped_job =
    "{\"id\":\"j\",\"status\":\"succeeded\",\"started_at\":1000,\"finished_at\":1030,"
    "\"progress\":{\"step\":12,\"total_steps\":100},\"metrics\":{},\"error\":null,"
    "\"stop_reason\":\"early stop at step 12: train loss did not improve by 0.01 for 3 evaluations (best 2.0000)\"}";

TEST(render_stopped_shows_reason) {
    int lines;
    char *s = render(stopped_job, NULL, 0, 0, 0, 120, &lines);
    CHECK_EQ_INT(lines, 5);
    CHECK(strstr(s, "succeeded: early stop at step 12: train loss did not improve by 0.01 for 3 evaluations "
                    "(best 2.0000)\n") != NULL);
    free(s);
    s = render(running_job, NULL, 0, 0, 0, 120, &lines);
    CHECK(strstr(s, "stop") == NULL); /* no reason, no line */
    free(s);
}

TEST(plain_line_stopped) {
    json_t *job = json_loads(stopped_job, 0, NULL);
    char line[512];
    watch_line(job, 1100, line, sizeof line);
    CHECK(strstr(line, "j succeeded step 12/100 (12%) ") == line);
    CHECK(strstr(line, " stop_reason \"early stop at step 12: train loss did not improve by 0.01 for 3 evaluations "
                       "(best 2.0000)\"") != NULL);
    json_decref(job);
}

TEST(plain_line) {
    json_t *job = json_loads(running_job, 0, NULL);
    char line[512];
    watch_line(job, 1100, line, sizeof line);
    CHECK_STR(line, "ftjob-1 running step 25/100 (25%) loss 1.500 eval_loss 1.750 lr 2.0e-04 elapsed 1m40s eta 5m00s");
    json_decref(job);
}

TEST(exit_codes) {
    CHECK_EQ_INT(watch_exit_code("succeeded"), 0);
    CHECK_EQ_INT(watch_exit_code("failed"), WATCH_EXIT_FAILED);
    CHECK_EQ_INT(watch_exit_code("cancelled"), WATCH_EXIT_CANCELLED);
    CHECK_EQ_INT(watch_exit_code("running"), -1);
    CHECK_EQ_INT(watch_exit_code(NULL), -1);
    CHECK(watch_is_final("failed") && !watch_is_final("queued"));
}

/* tokens_per_s is the last logging window's rate: the label says so. */
TEST(tokens_per_s_labelled) {
    json_t *job = json_loads(running_job, 0, NULL);
    char l[64];
    watch_tps_label(job, l, sizeof l);
    CHECK_STR(l, "tokens/s (last log window)");
    json_object_set_new(job, "spec", json_pack("{s:{s:i}}", "hyperparameters", "logging_steps", 10));
    watch_tps_label(job, l, sizeof l);
    CHECK_STR(l, "tokens/s (last 10 steps)");
    json_decref(job);
}

TEST(queued_says_why_it_waits) {
    const char *q = "{\"id\":\"ftjob-2\",\"status\":\"queued\",\"user\":\"bob\",\"started_at\":null,"
                    "\"waiting_reason\":\"no worker of this lorad can run device cuda (its workers: cpu)\"}";
    int lines;
    char *s = render(q, NULL, 0, 1, 0, 120, &lines);
    CHECK_EQ_INT(lines, 5);
    CHECK(strstr(s, "queued: no worker of this lorad can run device cuda (its workers: cpu)\n") != NULL);
    free(s);
    json_t *job = json_loads(q, 0, NULL);
    char line[1024];
    watch_line(job, 1100, line, sizeof line);
    CHECK(strstr(line, " waiting \"no worker of this lorad can run device cuda") != NULL);
    json_decref(job);
}

/* The client's clock 30 s ahead of the server's: the elapsed time shown
 * while the job runs and once it ends never goes back (it did: 1m30s while
 * running, then 1m00s when it ended). */
TEST(elapsed_never_goes_back_with_skewed_clock) {
    json_t *job = json_loads(running_job, 0, NULL); /* started_at 1000 (server) */
    watch_clock clk = {0};
    double prev = -1, skew = 30;
    int back = 0;
    for (double server = 1000.3; server < 1060; server += 0.7) {
        watch_clock_sample(&clk, floor(server), server + skew + 0.01); /* Date, then the client's clock on receipt */
        double el, eta;
        watch_times(job, watch_clock_now(&clk, server + skew + 0.02), &el, &eta);
        back += el < prev;
        prev = el;
        CHECKF(el <= server - 1000 + 0.05, "elapsed %.2f at server time %.2f", el, server);
    }
    json_object_set_new(job, "status", json_string("succeeded"));
    json_object_set_new(job, "finished_at", json_integer(1060));
    double el, eta;
    watch_times(job, watch_clock_now(&clk, 1060.5 + skew), &el, &eta);
    back += el < prev;
    CHECK_EQ_INT(back, 0);
    CHECK(el == 60);
    /* without a Date header the client's clock is all there is */
    watch_clock none = {0};
    CHECK(watch_clock_now(&none, 5000) == 5000);
    CHECK(watch_clock_now(&none, 4000) == 5000); /* and it does not go back either */
    json_decref(job);
}
