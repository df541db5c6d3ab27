/* models: what makes a directory a model lorad can register, shared by
 * `lorad model add` and the merge route, so a merged model is registered
 * exactly as an admin's would be. */
#ifndef LR_MODELS_H
#define LR_MODELS_H

#include <jansson.h>
#include "common/err.h"

/* The rule for every name lorad stores as typed (models, users): 1..63
 * letters, digits, '.', '_' or '-', not starting with '.' or '-', so a name
 * is also a safe directory name. */
int models_name_ok(const char *name);

/* Checks dir holds a supported Hugging Face model (config.json of a known
 * architecture, *.safetensors weights, a tokenizer) and fills *info with the
 * fields GET /v1/models shows (architecture, model_type, hidden_size,
 * num_layers, num_heads, vocab_size, max_position_embeddings, torch_dtype). */
int models_inspect(const char *dir, json_t **info, lr_err *err) LR_WARN_UNUSED;

#endif
