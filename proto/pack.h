/* pack: which jobs may co-train in one worker pass (issue 19).
 *
 * A pack runs the frozen base once per step over the rows of every job in
 * it, so its jobs must agree on everything the base computes with: the same
 * model, its 4-bit format, the matmuls' dtype and the device. Each job keeps
 * its own LoRA path, so only plain LoRA SFT packs (DoRA rescales the base
 * weight per adapter; full_sft trains the base; dpo/kl_sft run a second,
 * reference forward; eval does not train) on one device. The rule lives here
 * because both sides use it: lorad to offer a job to a worker's pack, the
 * worker to accept it. */
#ifndef LR_PACK_H
#define LR_PACK_H

#include "common/err.h"
#include "proto/jobspec.h"

/* 1 when a and b may share a pass; 0 when not, with why->msg saying which
 * rule keeps them apart and why->param the spec field (why may be NULL).
 * Pure; a job is compatible with itself when it may pack at all. */
int pack_compatible(const jobspec *a, const jobspec *b, lr_err *why);

/* The rule as a key, for a scheduler that compares many jobs: 1 and the key
 * in buf when s may pack at all (0 and "" when not); two jobs are
 * pack_compatible exactly when both have a key and the keys are equal.
 * A key is at most PACK_KEY_MAX bytes with its NUL. */
#define PACK_KEY_MAX 600
int pack_key(const jobspec *s, char *buf, size_t cap);

#endif
