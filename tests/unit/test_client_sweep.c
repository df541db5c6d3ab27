/* client/sweep: grid expansion, random points, ranking. */
#include "tests/unit/test.h"

#include "client/sweep.h"

static sweep_plan pl;

static const char *pt(json_t *pts, size_t i, size_t k) {
    return json_string_value(json_array_get(json_array_get(pts, i), k));
}

TEST(grid_product_in_order) {
    lr_err err = {0};
    json_t *pts;
    sweep_plan_init(&pl);
    REQUIRE(!sweep_add_grid(&pl, "lora.r=8,16", &err));
    REQUIRE(!sweep_add_grid(&pl, "learning_rate=1e-4, 2e-4", &err));
    REQUIRE(!sweep_points(&pl, 0, 1, &pts, &err));
    CHECK_EQ_INT(json_array_size(pts), 4);
    CHECK_STR(pt(pts, 0, 0), "lora.r=8");
    CHECK_STR(pt(pts, 0, 1), "learning_rate=1e-4");
    CHECK_STR(pt(pts, 1, 1), "learning_rate=2e-4");
    CHECK_STR(pt(pts, 3, 0), "lora.r=16");
    CHECK_STR(pt(pts, 3, 1), "learning_rate=2e-4");
    json_decref(pts);
}

TEST(grid_brackets_do_not_split) {
    lr_err err = {0};
    sweep_plan_init(&pl);
    REQUIRE(!sweep_add_grid(&pl, "lora.targets=[q_proj,v_proj],attn,\"a,b\"", &err));
    CHECK_EQ_INT(pl.p[0].nvalues, 3);
    CHECK_STR(pl.p[0].values[0], "[q_proj,v_proj]");
    CHECK_STR(pl.p[0].values[1], "attn");
    CHECK_STR(pl.p[0].values[2], "\"a,b\"");
}

TEST(grid_errors) {
    lr_err err = {0};
    sweep_plan_init(&pl);
    CHECK(sweep_add_grid(&pl, "lora.r", &err) == -1);
    CHECK(strstr(err.msg, "key=v1,v2") != NULL);
    CHECK(sweep_add_grid(&pl, "lora.r=8,,16", &err) == -1);
    CHECK(sweep_add_grid(&pl, "lora.targets=[a,b", &err) == -1);
    REQUIRE(!sweep_add_grid(&pl, "lora.r=8", &err));
    CHECK(sweep_add_grid(&pl, "lora.r=16", &err) == -1); /* swept twice */
    json_t *pts;
    sweep_plan_init(&pl);
    CHECK(sweep_points(&pl, 0, 1, &pts, &err) == -1); /* nothing to sweep */
    REQUIRE(!sweep_add_grid(&pl, "a=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16", &err));
    REQUIRE(!sweep_add_grid(&pl, "b=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17", &err));
    CHECK(sweep_points(&pl, 0, 1, &pts, &err) == -1); /* 272 > 256 */
    CHECK(strstr(err.msg, "more than 256") != NULL);
}

TEST(ranges_parse) {
    lr_err err = {0};
    sweep_plan_init(&pl);
    REQUIRE(!sweep_add_range(&pl, "learning_rate=1e-5:1e-3:log", &err));
    CHECK(pl.p[0].is_range && pl.p[0].log && !pl.p[0].integer);
    CHECK_NEAR(pl.p[0].lo, 1e-5, 1e-20);
    REQUIRE(!sweep_add_range(&pl, "lora.r=4:64:log:int", &err));
    CHECK(pl.p[1].integer && pl.p[1].log);
    CHECK(sweep_add_range(&pl, "x=1:0", &err) == -1);
    CHECK(sweep_add_range(&pl, "y=0:1:log", &err) == -1);
    CHECK(sweep_add_range(&pl, "z=0:1:cubic", &err) == -1);
    CHECK(strstr(err.msg, "unknown scale 'cubic'") != NULL);
    CHECK(sweep_add_range(&pl, "w=a:1", &err) == -1);
    json_t *pts;
    CHECK(sweep_points(&pl, 0, 1, &pts, &err) == -1); /* a range needs --random */
    CHECK(strstr(err.msg, "--random") != NULL);
}

TEST(random_points_in_range_and_repeatable) {
    lr_err err = {0};
    json_t *a, *b, *c;
    sweep_plan_init(&pl);
    REQUIRE(!sweep_add_range(&pl, "learning_rate=1e-5:1e-3:log", &err));
    REQUIRE(!sweep_add_range(&pl, "lora.r=4:64:int", &err));
    REQUIRE(!sweep_add_grid(&pl, "lora.dropout=0,0.1", &err));
    REQUIRE(!sweep_points(&pl, 50, 7, &a, &err));
    REQUIRE(!sweep_points(&pl, 50, 7, &b, &err));
    REQUIRE(!sweep_points(&pl, 50, 8, &c, &err));
    CHECK_EQ_INT(json_array_size(a), 50);
    CHECK(json_equal(a, b));
    CHECK(!json_equal(a, c));
    int small = 0, large = 0;
    for (size_t i = 0; i < 50; i++) {
        double lr = strtod(pt(a, i, 0) + strlen("learning_rate="), NULL);
        CHECK(lr >= 1e-5 * 0.999 && lr <= 1e-3 * 1.001);
        if (lr < 1e-4) small++;
        else large++;
        char *end;
        long r = strtol(pt(a, i, 1) + strlen("lora.r="), &end, 10);
        CHECK(*end == 0 && r >= 4 && r <= 64);
        const char *d = pt(a, i, 2);
        CHECK(!strcmp(d, "lora.dropout=0") || !strcmp(d, "lora.dropout=0.1"));
    }
    /* log-uniform: the lower decade gets about half the points */
    CHECK(small >= 10 && large >= 10);
    json_decref(a);
    json_decref(b);
    json_decref(c);
    CHECK(sweep_points(&pl, 1000, 1, &a, &err) == -1);
}

/* The request body: a grid goes as parameters (canonical paths, typed
 * values), random points as explicit points, which may mix sections; a bad
 * point is refused before anything is sent. */
TEST(body_grid_and_points) {
    lr_err err = {0};
    json_t *pts, *body;
    json_t *tpl = json_pack("{s:s, s:s}", "model", "tiny", "training_file", "file-000000000001");
    REQUIRE(tpl);
    sweep_plan_init(&pl);
    REQUIRE(!sweep_add_grid(&pl, "lora.r=8,16", &err));
    REQUIRE(!sweep_add_grid(&pl, "learning_rate=1e-4,2e-4", &err));
    REQUIRE(!sweep_points(&pl, 0, 1, &pts, &err));
    REQUIRE(!sweep_body(tpl, &pl, pts, 0, &body, &err));
    json_t *par = json_object_get(body, "parameters");
    CHECK(!json_object_get(body, "points") && json_equal(json_object_get(body, "template"), tpl));
    CHECK_EQ_INT(json_integer_value(json_array_get(json_object_get(par, "lora.r"), 1)), 16);
    CHECK(json_real_value(json_array_get(json_object_get(par, "hyperparameters.learning_rate"), 0)) == 1e-4);
    json_decref(body);
    json_decref(pts);

    sweep_plan_init(&pl);
    REQUIRE(!sweep_add_range(&pl, "learning_rate=1e-5:1e-3:log", &err));
    REQUIRE(!sweep_add_range(&pl, "lora.r=4:64:int", &err));
    REQUIRE(!sweep_add_grid(&pl, "seed=1,2", &err));
    REQUIRE(!sweep_points(&pl, 5, 3, &pts, &err));
    REQUIRE(!sweep_body(tpl, &pl, pts, 1, &body, &err));
    json_t *list = json_object_get(body, "points");
    CHECK(!json_object_get(body, "parameters"));
    REQUIRE(json_array_size(list) == 5);
    for (size_t i = 0; i < 5; i++) {
        json_t *p = json_array_get(list, i);
        CHECK_EQ_INT(json_object_size(p), 3);
        double lr = json_real_value(json_object_get(p, "hyperparameters.learning_rate"));
        json_int_t r = json_integer_value(json_object_get(p, "lora.r"));
        json_int_t seed = json_integer_value(json_object_get(p, "hyperparameters.seed"));
        CHECK(lr >= 1e-5 * 0.999 && lr <= 1e-3 * 1.001 && r >= 4 && r <= 64 && (seed == 1 || seed == 2));
        /* the point is the one drawn: same values as its "key=value" strings */
        CHECK(strtod(pt(pts, i, 0) + strlen("learning_rate="), NULL) == lr);
    }
    json_decref(body);
    json_decref(pts);

    sweep_plan_init(&pl);
    REQUIRE(!sweep_add_grid(&pl, "lora.r=8,-1", &err));
    REQUIRE(!sweep_points(&pl, 0, 1, &pts, &err));
    CHECK(sweep_body(tpl, &pl, pts, 0, &body, &err) == -1 && !body);
    CHECKF(strstr(err.msg, "sweep point 2"), "%s", err.msg);
    json_decref(pts);
    json_decref(tpl);
}

TEST(varied_paths) {
    json_t *specs = json_loads("[{\"name\":\"a\",\"lora\":{\"r\":8,\"alpha\":16},\"hyperparameters\":{\"learning_rate\":1e-4}},"
                               " {\"name\":\"a\",\"lora\":{\"r\":16,\"alpha\":16},\"hyperparameters\":{\"learning_rate\":1e-4}},"
                               " {\"name\":\"a\",\"lora\":{\"r\":8,\"alpha\":16},\"hyperparameters\":{\"learning_rate\":2e-4,\"x\":1}}]",
                               0, NULL);
    REQUIRE(specs);
    json_t *v = sweep_varied_paths(specs);
    CHECK_EQ_INT(json_array_size(v), 3);
    CHECK_STR(json_string_value(json_array_get(v, 0)), "hyperparameters.learning_rate");
    CHECK_STR(json_string_value(json_array_get(v, 1)), "hyperparameters.x"); /* absent vs present */
    CHECK_STR(json_string_value(json_array_get(v, 2)), "lora.r");
    CHECK(json_integer_value(sweep_get_path(json_array_get(specs, 1), "lora.r")) == 16);
    CHECK(sweep_get_path(json_array_get(specs, 0), "lora.nope") == NULL);
    json_decref(v);
    json_decref(specs);
}

TEST(rank_by_eval_loss) {
    json_t *jobs = json_loads("[{\"id\":\"a\",\"metrics\":{\"loss\":1.0,\"eval_loss\":null}},"
                              " {\"id\":\"b\",\"metrics\":{\"loss\":2.0,\"eval_loss\":1.5}},"
                              " {\"id\":\"c\",\"metrics\":{\"loss\":0.5,\"eval_loss\":1.2}},"
                              " {\"id\":\"d\",\"metrics\":{}},"
                              " {\"id\":\"e\",\"metrics\":{\"loss\":0.7}}]",
                              0, NULL);
    REQUIRE(jobs);
    sweep_rank(jobs);
    const char *want[] = {"c", "b", "e", "a", "d"};
    for (int i = 0; i < 5; i++)
        CHECK_STR(json_string_value(json_object_get(json_array_get(jobs, (size_t)i), "id")), want[i]);
    json_decref(jobs);
}
