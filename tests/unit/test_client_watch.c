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
    CHECK(strstr(s, "loss 1.500  eval loss 1.750  lr 2.0e-04  tokens/s 1234\n") != NULL);
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
