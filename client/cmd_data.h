/* cmd_data: the commands on what the server holds besides jobs: `lora login`,
 * `lora datasets upload|ls|show|preview|rm`, `lora models ls|rm`, `lora workers`.
 * Each returns the command's exit status. */
#ifndef LR_CLIENT_CMD_DATA_H
#define LR_CLIENT_CMD_DATA_H

#include "client/cli.h"

int lora_cmd_login(cli_ctx *c);
int lora_cmd_ds_upload(cli_ctx *c);
int lora_cmd_ds_ls(cli_ctx *c);
int lora_cmd_ds_show(cli_ctx *c);
int lora_cmd_ds_preview(cli_ctx *c);
int lora_cmd_ds_rm(cli_ctx *c);
int lora_cmd_models(cli_ctx *c);
int lora_cmd_models_rm(cli_ctx *c);
int lora_cmd_workers(cli_ctx *c);

#endif
