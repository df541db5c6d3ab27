#include <stdint.h>

#include "common/buf.h"
#include "tests/unit/test.h"
#include "formats/data.h"
#include "worker/batch.h"

static int validate(const char *s, data_report *r) {
    lr_err e = {0};
    return data_validate(s, strlen(s), r, &e);
}

static int has_error(const data_report *r, const char *text) {
    for (int i = 0; i < r->n_errors; i++)
        if (strstr(r->errors[i], text)) return 1;
    return 0;
}

static const char *write_tmp(const char *name, const char *text) {
    static char path[8][512];
    static int k;
    char *p = path[k++ % 8];
    snprintf(p, 512, "%s/%s", test_tmpdir(), name);
    lr_err e = {0};
    if (lr_write_file_atomic(p, text, strlen(text), &e)) test_fail(__FILE__, __LINE__, "%s", e.msg);
    return p;
}

TEST(every_form_parses) {
    data_report r;
    CHECK_EQ_INT(validate("{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"u\"},"
                          "{\"role\":\"assistant\",\"content\":\"a\"}]}\n\n", &r), 0);
    CHECK_EQ_INT(r.format, DATA_FMT_MESSAGES);
    CHECK_EQ_INT(r.n_rows, 1);
    CHECK_EQ_INT(validate("{\"instruction\":\"i\",\"input\":\"\",\"output\":\"o\"}\n{\"instruction\":\"i\",\"output\":\"o\"}", &r), 0);
    CHECK_EQ_INT(r.format, DATA_FMT_ALPACA);
    CHECK_EQ_INT(r.n_rows, 2);
    CHECK_EQ_INT(validate("{\"prompt\":\"p\",\"completion\":\"c\"}\r\n", &r), 0);
    CHECK_EQ_INT(r.format, DATA_FMT_PROMPT_COMPLETION);
    CHECK_EQ_INT(validate("{\"input\":\"p\",\"output\":\"c\",\"id\":7}", &r), 0);
    CHECK_EQ_INT(r.format, DATA_FMT_INPUT_OUTPUT);
    CHECK_EQ_INT(validate("{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\"}\n"
                          "{\"prompt\":[{\"role\":\"user\",\"content\":\"p\"}],\"chosen\":[{\"role\":\"assistant\","
                          "\"content\":\"c\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"r\"}]}", &r), 0);
    CHECK_EQ_INT(r.format, DATA_FMT_DPO);
    CHECK_EQ_INT(r.n_rows, 2);
    CHECK_EQ_INT(validate("\xef\xbb\xbf  Question ,answer\nWhat?,\"It is, \"\"quoted\"\"\nover lines\"\r\nWhy?,Because\n", &r), 0);
    CHECK_EQ_INT(r.csv, 1);
    CHECK_EQ_INT(r.format, DATA_FMT_PROMPT_COMPLETION);
    CHECK_EQ_INT(r.n_rows, 2);
    CHECK_EQ_INT(validate("instruction,input,output\nDo,x,y\n", &r), 0);
    CHECK_EQ_INT(r.format, DATA_FMT_ALPACA);
    CHECK_EQ_INT(validate("prompt,chosen,rejected\np,c,r\n", &r), 0);
    CHECK_EQ_INT(r.format, DATA_FMT_DPO);
}

TEST(broken_lines_are_named) {
    data_report r;
    lr_err e = {0};
    const char *s =
        "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":\"a\"}]}\n"
        "{\"prompt\":\"p\",\"completion\":\"c\"}\n"
        "{\"messages\": [\n"
        "\n"
        "{\"messages\":[{\"role\":\"bot\",\"content\":\"u\"}]}\n"
        "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":\" \"}]}\n"
        "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}]}\n"
        "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":\"a\",\"weight\":0}]}\n"
        "[1]\n"
        "{\"messages\":[{\"role\":\"user\",\"content\":null},{\"role\":\"assistant\",\"content\":\"a\"}]}\n";
    CHECK_EQ_INT(data_validate(s, strlen(s), &r, &e), -1);
    CHECK_EQ_INT(r.n_rows, 9);
    CHECK_EQ_INT(r.n_invalid, 8);
    CHECK_EQ_INT(r.n_errors, 8);
    CHECK(has_error(&r, "line 2: missing field 'messages'"));
    CHECK(has_error(&r, "line 3: invalid JSON: "));
    CHECK(has_error(&r, "line 5: role 'bot' is not one of system, user, assistant"));
    CHECK(has_error(&r, "line 6: empty assistant content"));
    CHECK(has_error(&r, "line 7: 'messages' has no assistant message"));
    CHECK(has_error(&r, "line 8: no assistant message with weight 1"));
    CHECK(has_error(&r, "line 9: not a JSON object"));
    CHECK(has_error(&r, "line 10: 'messages' message 1: content"));
    CHECK(strstr(e.msg, "line 2: missing field 'messages'") && strstr(e.msg, "7 more"));
    /* CSV shape errors */
    const char *c = "prompt,completion\na,b\nonly one\n\"x,\"y\"\n\"never closed,z\n";
    CHECK_EQ_INT(data_validate(c, strlen(c), &r, &e), -1);
    CHECK(has_error(&r, "line 3: 1 fields, but the header has 2"));
    CHECK(has_error(&r, "line 5: unterminated quoted field"));
    CHECK(has_error(&r, "line 4: 1 fields, but the header has 2")); /* "x,"y" is one cell */
    /* whole-file problems */
    CHECK_EQ_INT(validate("", &r), -1);
    CHECK_EQ_INT(validate("[{\"prompt\":\"p\",\"completion\":\"c\"}]", &r), -1);
    CHECK_EQ_INT(validate("{\"id\":1,\"input\":\"only\"}", &r), -1);
    CHECK(has_error(&r, "line 1: no known fields"));
    CHECK_EQ_INT(validate("{\"instruction\":\"i\",\"output\":\"o\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}", &r), -1);
    CHECK(has_error(&r, "line 2: missing field 'instruction'"));
}

TEST(error_list_is_capped) {
    lr_buf b;
    lr_buf_init(&b, 1 << 20);
    for (int i = 0; i < 50; i++) CHECK(lr_buf_adds(&b, "{\"prompt\":\"p\"}\n") == 0);
    data_report r;
    lr_err e = {0};
    CHECK_EQ_INT(data_validate(b.data, b.len, &r, &e), -1);
    CHECK_EQ_INT(r.n_rows, 50);
    CHECK_EQ_INT(r.n_invalid, 50);
    CHECK_EQ_INT(r.n_errors, DATA_MAX_ERRORS);
    CHECK_STR(r.errors[19], "line 20: missing field 'completion'");
    lr_buf_free(&b);
}

TEST(fixture_files_row_counts) {
    static const struct {
        const char *path;
        int rc, rows;
        data_format fmt;
    } f[] = {
        {"datasets/ra-llm-notes/data/dataset.jsonl", 0, 68, DATA_FMT_INPUT_OUTPUT},
        {"datasets/ra-llm-notes/data/sft_val.jsonl", 0, 75, DATA_FMT_INPUT_OUTPUT},
        {"datasets/ra-llm-notes/data/sft_test.jsonl", 0, 125, DATA_FMT_INPUT_OUTPUT},
        {"datasets/ra-llm-notes/data/dpo_pairs.head5.jsonl", 0, 5, DATA_FMT_DPO},
        /* prompts only: nothing to train on */
        {"datasets/ra-llm-notes/data/test_prompts.jsonl", -1, 11, DATA_FMT_UNKNOWN},
        /* no completion column: rows counted, the header named */
        {"datasets/cultural-qa/train_dataset_mcq.csv", -1, 836, DATA_FMT_UNKNOWN},
        {"datasets/cultural-qa/test_dataset_mcq.csv", -1, 419, DATA_FMT_UNKNOWN},
        {"datasets/cultural-qa/train_dataset_saq.csv", -1, 1333, DATA_FMT_UNKNOWN},
        {"datasets/cultural-qa/test_dataset_saq.csv", -1, 667, DATA_FMT_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        data_report r;
        lr_err e = {0};
        int rc = data_validate_file(test_fixture(f[i].path), &r, &e);
        CHECKF(rc == f[i].rc, "%s: rc %d (%s)", f[i].path, rc, e.msg);
        CHECKF(r.n_rows == f[i].rows, "%s: %lld rows, want %d", f[i].path, (long long)r.n_rows, f[i].rows);
        CHECKF(r.format == f[i].fmt, "%s: format %s", f[i].path, data_format_name(r.format));
    }
    data_report r;
    lr_err e = {0};
    CHECK(data_validate_file(test_fixture("datasets/cultural-qa/train_dataset_saq.csv"), &r, &e) == -1);
    /* the header quirk: "    ID" is read as "ID" */
    CHECK(has_error(&r, "found: ID, question, en_question"));
}

/* The cultural-qa MCQ file mapped to prompt/answer columns: multi-line
 * quoted cells with "" come through intact. */
TEST(csv_multiline_fixture_cells) {
    char *buf = NULL;
    size_t len = 0;
    lr_err e = {0};
    REQUIRE(lr_read_file(test_fixture("datasets/cultural-qa/train_dataset_mcq.csv"), 1 << 24, &buf, &len, &e) == 0);
    /* rename the header's answer_idx column to completion (same length + pad) */
    char *h = strstr(buf, "answer_idx");
    REQUIRE(h && h < strchr(buf, '\n'));
    char *fixed = malloc(len + 8);
    size_t k = (size_t)(h - buf);
    memcpy(fixed, buf, k);
    memcpy(fixed + k, "completion", 10);
    memcpy(fixed + k + 10, h + 10, len - k - 10);
    data_file f;
    REQUIRE(data_parse(fixed, len, &f, &e) == 0);
    CHECK_EQ_INT(f.n_rows, 836);
    CHECK_EQ_INT(f.rows[0].line, 2);
    CHECK_EQ_INT(f.rows[1].line, 20); /* record 1 spans lines 2-19 */
    CHECK(strstr(f.rows[0].msgs[0].text, "Provide as JSON format: {\"answer_choice\":\"\"}\n\nA. as usual\n"));
    CHECK_STR(f.rows[0].msgs[1].text, "A");
    data_file_free(&f);
    free(fixed);
    free(buf);
}

/* ---- with a tokenizer ---------------------------------------------------- */

static tok *gpt2(void) {
    tok *t = NULL;
    lr_err e = {0};
    if (tok_load(test_fixture("tokenizers/gpt2"), &t, &e)) test_fail(__FILE__, __LINE__, "%s", e.msg);
    return t;
}

static int n_warn;
static char last_warn[512];
static void on_warn(void *ud, const char *msg) {
    (void)ud;
    n_warn++;
    snprintf(last_warn, sizeof last_warn, "%s", msg);
}

static int build(const chat *c, const char *const *files, const double *w, int n, double ratio, uint64_t seed,
                 int max_len, data_set *ds) {
    data_opts o = {files, w, n, NULL, ratio, seed, max_len, 0, NULL, on_warn, NULL};
    lr_err e = {0};
    int rc = data_build(c, &o, ds, &e);
    if (rc) test_fail(__FILE__, __LINE__, "data_build: %s", e.msg);
    return rc;
}

TEST(build_split_is_deterministic) {
    tok *t = gpt2();
    REQUIRE(t);
    chat c;
    lr_err e = {0};
    REQUIRE(chat_init(&c, t, TPL_PLAIN, NULL, &e) == 0);
    const char *files[] = {test_fixture("datasets/ra-llm-notes/data/dataset.jsonl")};
    data_set a, b, d;
    REQUIRE(build(&c, files, NULL, 1, 0.1, 42, 0, &a) == 0);
    CHECK_EQ_INT(a.n_val, 7); /* ceil(68 * 0.1) */
    CHECK_EQ_INT(a.n_train, 61);
    REQUIRE(build(&c, files, NULL, 1, 0.1, 42, 0, &b) == 0);
    REQUIRE(build(&c, files, NULL, 1, 0.1, 43, 0, &d) == 0);
    int same = 1, differ = 0;
    for (size_t i = 0; i < a.n_val; i++) {
        same &= a.val[i].line == b.val[i].line;
        differ |= a.val[i].line != d.val[i].line;
    }
    CHECK(same);
    CHECK(differ);
    /* every row is in exactly one of the two sets */
    int seen[70] = {0};
    for (size_t i = 0; i < a.n_train; i++) seen[a.train[i].line]++;
    for (size_t i = 0; i < a.n_val; i++) seen[a.val[i].line]++;
    int ok = 1;
    for (int l = 1; l <= 68; l++) ok &= seen[l] == 1;
    CHECK(ok);
    /* labels: the output + EOS only */
    const data_example *x = &a.train[0];
    CHECK_EQ_INT(x->labels[0], CHAT_IGNORE);
    CHECK_EQ_INT(x->labels[x->n - 1], 50256);
    data_set_free(&a);
    data_set_free(&b);
    data_set_free(&d);
    tok_free(t);
}

TEST(truncation_drops_untrained_rows_and_dedupes) {
    tok *t = gpt2();
    REQUIRE(t);
    chat c;
    lr_err e = {0};
    REQUIRE(chat_init(&c, t, TPL_PLAIN, NULL, &e) == 0);
    const char *p = write_tmp("d.jsonl",
                              "{\"prompt\":\"a very long prompt that will not fit in eight tokens at all\",\"completion\":\" yes\"}\n"
                              "{\"prompt\":\"short\",\"completion\":\" answer that is long enough to be cut here\"}\n"
                              "{\"prompt\":\"short\",\"completion\":\" answer that is long enough to be cut here\"}\n"
                              "{\"prompt\":\"x\",\"completion\":\" y\"}\n");
    const char *files[] = {p};
    data_set ds;
    n_warn = 0;
    REQUIRE(build(&c, files, NULL, 1, 0, 1, 8, &ds) == 0);
    CHECK_EQ_INT(ds.n_dropped, 1);
    CHECK_EQ_INT(ds.n_duplicates, 1);
    CHECK_EQ_INT(ds.n_truncated, 3);
    CHECK_EQ_INT(ds.n_train, 2);
    CHECK(n_warn >= 2);
    for (size_t i = 0; i < ds.n_train; i++) CHECK(ds.train[i].n <= 8);
    data_set_free(&ds);
    tok_free(t);
}

TEST(loader_order_resume_and_weights) {
    tok *t = gpt2();
    REQUIRE(t);
    chat c;
    lr_err e = {0};
    REQUIRE(chat_init(&c, t, TPL_PLAIN, NULL, &e) == 0);
    lr_buf a, b2;
    lr_buf_init(&a, 1 << 20);
    lr_buf_init(&b2, 1 << 20);
    for (int i = 0; i < 20; i++) CHECK(lr_buf_printf(&a, "{\"prompt\":\"A%d\",\"completion\":\" x%d\"}\n", i, i) == 0);
    for (int i = 0; i < 10; i++) CHECK(lr_buf_printf(&b2, "{\"prompt\":\"B%d\",\"completion\":\" y%d\"}\n", i, i) == 0);
    const char *files[] = {write_tmp("a.jsonl", a.data), write_tmp("b.jsonl", b2.data)};
    double w[] = {0.5, 2};
    data_set ds;
    REQUIRE(build(&c, files, w, 2, 0, 7, 0, &ds) == 0);
    CHECK_EQ_INT(ds.n_train, 30);
    data_loader L;
    REQUIRE(data_loader_init(&L, &ds, DATA_TRAIN, 4, 0, 0, 7, &e) == 0);
    CHECK_EQ_INT(data_epoch_batches(&L, 0), 8); /* 10 + 20 = 30 examples, batches of 4 */
    /* epoch composition: file a 10 of 20 distinct rows, file b every row twice */
    data_batch bt = {0};
    int per_line_a[21] = {0}, per_line_b[11] = {0}, n_ex = 0, n_b = 0;
    while (data_next(&L, &bt, &e) == 1) {
        n_b++;
        CHECK(bt.rows <= 4);
        n_ex += bt.n_examples;
        for (int r = 0; r < bt.rows; r++) {
            CHECK(bt.lens[r] <= bt.T);
            for (int k = bt.lens[r]; k < bt.T; k++) {
                CHECK_EQ_INT(bt.labels[r * bt.T + k], CHAT_IGNORE);
                CHECK_EQ_INT(bt.ids[r * bt.T + k], ds.pad_id);
            }
        }
    }
    CHECK_EQ_INT(n_b, 8);
    CHECK_EQ_INT(n_ex, 30);
    CHECK_EQ_INT(data_tell(&L).epoch, 1);
    CHECK_EQ_INT(data_tell(&L).index, 0);
    for (int64_t i = 0; i < L.n_order; i++) {
        const data_example *x = &ds.train[L.order[i]];
        if (x->file == 0) per_line_a[x->line]++;
        else per_line_b[x->line]++;
    }
    /* the order just used is epoch 0's */
    int twice = 1;
    for (int l = 1; l <= 10; l++) twice &= per_line_b[l] == 2;
    CHECK(twice);
    int distinct = 0, over = 0;
    for (int l = 1; l <= 20; l++) {
        distinct += per_line_a[l] > 0;
        over |= per_line_a[l] > 1;
    }
    CHECK_EQ_INT(distinct, 10);
    CHECK(!over);

    /* resume: stop after 3 batches of epoch 1, seek a fresh loader there */
    data_loader L2;
    REQUIRE(data_loader_init(&L2, &ds, DATA_TRAIN, 4, 0, 0, 7, &e) == 0);
    data_seek(&L2, (data_pos){1, 0});
    data_batch x = {0}, y = {0};
    for (int i = 0; i < 3; i++) REQUIRE(data_next(&L2, &x, &e) == 1);
    data_pos saved = data_tell(&L2);
    CHECK_EQ_INT(saved.index, 12);
    data_loader L3;
    REQUIRE(data_loader_init(&L3, &ds, DATA_TRAIN, 4, 0, 0, 7, &e) == 0);
    data_seek(&L3, saved);
    int same = 1, n_same = 0;
    for (;;) {
        int r2 = data_next(&L2, &x, &e), r3 = data_next(&L3, &y, &e);
        CHECK_EQ_INT(r2, r3);
        if (r2 != 1 || r3 != 1) break;
        n_same++;
        same &= x.rows == y.rows && x.T == y.T && !memcmp(x.ids, y.ids, (size_t)x.rows * x.T * 4) &&
                !memcmp(x.labels, y.labels, (size_t)x.rows * x.T * 4);
    }
    CHECK(same);
    CHECK_EQ_INT(n_same, 5);
    /* epochs differ, the same epoch does not */
    data_loader L4;
    REQUIRE(data_loader_init(&L4, &ds, DATA_TRAIN, 4, 0, 0, 7, &e) == 0);
    REQUIRE(data_next(&L4, &x, &e) == 1);
    uint64_t first0 = (uint64_t)x.ids[0];
    data_seek(&L4, (data_pos){0, 0});
    REQUIRE(data_next(&L4, &y, &e) == 1);
    CHECK_EQ_INT(first0, (uint64_t)y.ids[0]);
    data_batch_free(&x);
    data_batch_free(&y);
    data_batch_free(&bt);
    data_loader_free(&L);
    data_loader_free(&L2);
    data_loader_free(&L3);
    data_loader_free(&L4);
    data_set_free(&ds);
    lr_buf_free(&a);
    lr_buf_free(&b2);
    tok_free(t);
}

TEST(packing_fills_rows) {
    tok *t = gpt2();
    REQUIRE(t);
    chat c;
    lr_err e = {0};
    REQUIRE(chat_init(&c, t, TPL_PLAIN, NULL, &e) == 0);
    const char *files[] = {test_fixture("datasets/ra-llm-notes/data/dataset.jsonl")};
    data_set ds;
    REQUIRE(build(&c, files, NULL, 1, 0, 3, 1024, &ds) == 0);
    data_loader L;
    REQUIRE(data_loader_init(&L, &ds, DATA_TRAIN, 2, 1, 1024, 3, &e) == 0);
    int64_t nb = data_epoch_batches(&L, 0);
    data_batch b = {0};
    int64_t n_ex = 0, tokens = 0, batches = 0, total = 0;
    for (size_t i = 0; i < ds.n_train; i++) total += ds.train[i].n;
    while (data_next(&L, &b, &e) == 1) {
        batches++;
        CHECK_EQ_INT(b.T, 1024);
        n_ex += b.n_examples;
        tokens += b.n_tokens;
        for (int r = 0; r < b.rows; r++) CHECK(b.lens[r] <= 1024 && b.lens[r] > 0);
    }
    CHECK_EQ_INT(batches, nb);
    CHECK_EQ_INT(n_ex, (int64_t)ds.n_train);
    CHECK_EQ_INT(tokens, total);
    CHECK(batches < (int64_t)ds.n_train / 2); /* several examples share a row */
    data_batch_free(&b);
    data_loader_free(&L);
    data_set_free(&ds);
    tok_free(t);
}

TEST(dpo_pairs_batch) {
    tok *t = gpt2();
    REQUIRE(t);
    chat c;
    lr_err e = {0};
    REQUIRE(chat_init(&c, t, TPL_PLAIN, NULL, &e) == 0);
    const char *files[] = {test_fixture("datasets/ra-llm-notes/data/dpo_pairs.head5.jsonl")};
    data_opts o = {files, NULL, 1, NULL, 0, 1, 0, 1, NULL, on_warn, NULL};
    data_set ds;
    REQUIRE(data_build(&c, &o, &ds, &e) == 0);
    CHECK_EQ_INT(ds.n_train, 5);
    const data_example *x = &ds.train[0];
    CHECK(x->rej_n > 0);
    /* the prompt is shared and untrained: both answers start training at
     * the same token, after identical ids */
    int k = 0, kr = 0;
    while (k < x->n && x->labels[k] == CHAT_IGNORE) k++;
    while (kr < x->rej_n && x->rej_labels[kr] == CHAT_IGNORE) kr++;
    CHECK(k > 10);
    CHECK_EQ_INT(k, kr);
    CHECK(!memcmp(x->ids, x->rej_ids, (size_t)k * sizeof *x->ids));
    int diff = x->n != x->rej_n;
    for (int i = k; i < x->n && i < x->rej_n && !diff; i++) diff = x->ids[i] != x->rej_ids[i];
    CHECK(diff);
    CHECK_EQ_INT(x->labels[x->n - 1], 50256);
    CHECK_EQ_INT(x->rej_labels[x->rej_n - 1], 50256);
    data_loader L;
    REQUIRE(data_loader_init(&L, &ds, DATA_TRAIN, 2, 0, 0, 1, &e) == 0);
    data_batch b = {0};
    REQUIRE(data_next(&L, &b, &e) == 1);
    CHECK_EQ_INT(b.rows, 4);
    CHECK_EQ_INT(b.n_examples, 2);
    data_loader_free(&L);
    CHECK(data_loader_init(&L, &ds, DATA_TRAIN, 2, 1, 64, 1, &e) == -1);
    data_batch_free(&b);
    data_set_free(&ds);
    /* SFT on DPO rows is refused */
    o.dpo = 0;
    CHECK(data_build(&c, &o, &ds, &e) == -1);
    CHECK(strstr(e.msg, "dpo") != NULL);
    tok_free(t);
}

TEST(validation_file_and_strict_rows) {
    tok *t = gpt2();
    REQUIRE(t);
    chat c;
    lr_err e = {0};
    REQUIRE(chat_init(&c, t, TPL_PLAIN, NULL, &e) == 0);
    const char *files[] = {test_fixture("datasets/ra-llm-notes/data/sft_test.jsonl")};
    data_opts o = {files, NULL, 1, test_fixture("datasets/ra-llm-notes/data/sft_val.jsonl"), 0.5, 1, 0, 0, NULL, NULL, NULL};
    data_set ds;
    REQUIRE(data_build(&c, &o, &ds, &e) == 0);
    CHECK_EQ_INT(ds.n_train, 125);
    CHECK_EQ_INT(ds.n_val, 75);
    data_loader L;
    REQUIRE(data_loader_init(&L, &ds, DATA_VAL, 8, 0, 0, 1, &e) == 0);
    CHECK_EQ_INT(data_epoch_batches(&L, 0), 10);
    data_loader_free(&L);
    data_set_free(&ds);
    const char *bad[] = {write_tmp("bad.jsonl", "{\"prompt\":\"p\",\"completion\":\"c\"}\n{\"prompt\":\"p\"}\n")};
    o.files = bad;
    o.validation_file = NULL;
    CHECK(data_build(&c, &o, &ds, &e) == -1);
    CHECK(strstr(e.msg, "line 2: missing field 'completion'") != NULL);
    tok_free(t);
}

/* {"text"} rows: no chat template whatever the job's (alpaca here), every
 * token trained, EOS last, and the file's form enforced row by row. */
TEST(text_rows_train_every_token) {
    data_report r;
    CHECK_EQ_INT(validate("{\"text\":\"hello world\"}\n{\"text\":\"again\",\"source\":\"x\"}\n", &r), 0);
    CHECK_EQ_INT(r.format, DATA_FMT_TEXT);
    CHECK_EQ_INT(r.n_rows, 2);
    CHECK(validate("{\"text\":\"hello\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n", &r) != 0);
    CHECK(has_error(&r, "line 2"));
    CHECK(validate("{\"text\":\"\"}\n", &r) != 0);
    CHECK(validate("{\"text\":7}\n", &r) != 0);
    tok *t = gpt2();
    REQUIRE(t);
    chat c;
    lr_err e = {0};
    REQUIRE(chat_init(&c, t, TPL_ALPACA, NULL, &e) == 0); /* the job's template must not apply */
    const char *files[] = {write_tmp("text.jsonl", "{\"text\":\"The cat sat.\"}\n")};
    data_set ds;
    REQUIRE(build(&c, files, NULL, 1, 0, 1, 0, &ds) == 0);
    REQUIRE(ds.n_train == 1);
    const data_example *x = &ds.train[0];
    int32_t *ids = NULL;
    size_t n = 0;
    REQUIRE(tok_encode(t, "The cat sat.", 12, 0, &ids, &n, &e) == 0);
    CHECK_EQ_INT(x->n, (int)n + 1);
    for (size_t i = 0; i < n && i < (size_t)x->n; i++) CHECK_EQ_INT(x->ids[i], ids[i]);
    CHECK_EQ_INT(x->ids[x->n - 1], 50256);
    for (int i = 0; i < x->n; i++) CHECK_EQ_INT(x->labels[i], x->ids[i]);
    free(ids);
    data_set_free(&ds);
    tok_free(t);
}
