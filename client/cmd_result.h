/* cmd_result: the commands on what a job made: `lora generate` (the base
 * model and the tuned one side by side), `lora merge` (the adapter into a new
 * registered model; a full_sft job's model as is) and `lora download` (the
 * artifacts). Each returns the command's exit status (merge --wait: 4 when
 * the merge fails). */
#ifndef LR_CLIENT_CMD_RESULT_H
#define LR_CLIENT_CMD_RESULT_H

#include "client/cli.h"

int lora_cmd_generate(cli_ctx *c);
int lora_cmd_merge(cli_ctx *c);
int lora_cmd_download(cli_ctx *c);

#endif
