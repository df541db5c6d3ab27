/* evaljob: method eval — how a fine-tune changed a model's answers.
 *
 * The rows of a held-out file (validation_file when given, else the first
 * training_file; any form worker/prompts.h reads, the first eval.max_rows
 * of them, 0 = all) are rendered by the chat template with the assistant
 * header appended and answered by the base model, then by the base model
 * with the adapter (paths->reference_adapter_dir, the directory of
 * method.adapter; without one only the base is evaluated; a directory
 * holding a whole model, as a full_sft run leaves, is evaluated as the
 * tuned model itself), using
 * eval.generation's settings (the job's system_prompt applies; rows whose
 * prompt is longer than hyperparameters.max_seq_len or the model's
 * positions are skipped with a warning). Scores:
 *  - compliance: the share of outputs that pass eval.format
 *    (worker/fmtcheck.h), when it has rules;
 *  - f1: SQuAD's token-level F1 against the row's reference answer, when
 *    rows have one (mean over those rows);
 *  - kl: the mean over tokens of KL(tuned || base) between the two models'
 *    next-token distributions at every position of prompt + tuned output
 *    (positions that predict a token of that sequence).
 * Writes eval_results.jsonl (one object per row: prompt size, reference,
 * each model's output, stop reason, compliance with its reason, f1, the
 * row's kl) and eval_summary.json into the run directory, and reports
 * compliance_base, compliance_tuned, f1_base, f1_tuned and kl through the
 * metric hook (step = rows evaluated). Generation runs on the CPU backend
 * whatever opts->backend says (the KV cache is host code). */
#ifndef LR_EVALJOB_H
#define LR_EVALJOB_H

#include <stddef.h>
#include "common/err.h"
#include "proto/jobspec.h"
#include "worker/train.h"

int evaljob_run(const jobspec *spec, const train_paths *paths, const train_opts *opts, const train_hooks *hooks,
                train_outcome *outcome, lr_err *err) LR_WARN_UNUSED;

/* SQuAD v1.1's F1 of a prediction against a reference: both lower-cased
 * (Unicode), ASCII punctuation removed, the articles a/an/the dropped,
 * split on whitespace; F1 of the multiset overlap. Two empty answers score
 * 1, one empty answer 0. */
double evaljob_f1(const char *pred, size_t np, const char *ref, size_t nr);

#endif
