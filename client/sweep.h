/* sweep: the points of `lora sweep` and the ranking of `lora sweep show`.
 *
 * A plan is a set of parameters, each either a grid (`--grid lora.r=8,16,32`:
 * a list of values, commas inside [...] do not split) or a range
 * (`--range learning_rate=1e-5:1e-3:log`: lo:hi[:lin|log][:int]). Without
 * --random every point of the grid's cartesian product is made (ranges are
 * then an error); with --random N, N points each draw every grid parameter
 * uniformly from its values and every range parameter from its interval
 * (log-uniform for :log), from a seeded generator so a sweep is repeatable.
 * A point is a JSON array of "key=value" strings, ready for jobspec_set. */
#ifndef LR_CLIENT_SWEEP_H
#define LR_CLIENT_SWEEP_H

#include <jansson.h>
#include <stdint.h>
#include "common/err.h"

#define SWEEP_MAX_PARAMS 16
#define SWEEP_MAX_VALUES 64
#define SWEEP_MAX_POINTS 256

typedef struct sweep_param {
    char key[128];
    int nvalues;                               /* grid: > 0 */
    char values[SWEEP_MAX_VALUES][128];
    int is_range;                              /* range: lo..hi */
    double lo, hi;
    int log, integer;
} sweep_param;

typedef struct sweep_plan {
    sweep_param p[SWEEP_MAX_PARAMS];
    int n;
} sweep_plan;

void sweep_plan_init(sweep_plan *pl);
/* "key=v1,v2,..." */
int sweep_add_grid(sweep_plan *pl, const char *arg, lr_err *err) LR_WARN_UNUSED;
/* "key=lo:hi[:lin|:log][:int]" */
int sweep_add_range(sweep_plan *pl, const char *arg, lr_err *err) LR_WARN_UNUSED;
/* The points (new JSON array of arrays of "key=value"); n_random 0 = grid. */
int sweep_points(const sweep_plan *pl, int n_random, uint64_t seed, json_t **out, lr_err *err) LR_WARN_UNUSED;

/* The body of POST /v1/sweeps for tpl (a job spec) and points (from
 * sweep_points): a grid goes as parameters (canonical dotted path -> its
 * values; lorad makes the product), random points as explicit points (one
 * object of canonical dotted path -> typed value each), so a random search
 * may vary fields of any sections. Every point is checked with
 * jobspec_from_json first, as lorad will; *out is a new reference. */
int sweep_body(const json_t *tpl, const sweep_plan *pl, const json_t *points, int random, json_t **out,
               lr_err *err) LR_WARN_UNUSED;

/* The dotted paths of the leaves whose values differ between the objects of
 * specs (an array of job specs), sorted; a new JSON array of strings. Used to
 * show what a sweep varied without trusting how it was submitted. */
json_t *sweep_varied_paths(const json_t *specs);
/* The value at a dotted path ("lora.r") of obj, or NULL. */
const json_t *sweep_get_path(const json_t *obj, const char *path);
/* Sorts jobs (an array of job objects, in place) by metrics.eval_loss
 * ascending; jobs without one follow, by metrics.loss, then the rest;
 * ties keep their order. */
void sweep_rank(json_t *jobs);

#endif
