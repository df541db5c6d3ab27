/* cmd_jobs: the commands on jobs: `lora submit`, `ls`, `show`, `cancel`,
 * `watch`, `logs`, `metrics`. Each returns the command's exit status
 * (submit --watch and watch: the job's outcome, watch_exit_code). */
#ifndef LR_CLIENT_CMD_JOBS_H
#define LR_CLIENT_CMD_JOBS_H

#include "client/cli.h"

int lora_cmd_submit(cli_ctx *c);
int lora_cmd_ls(cli_ctx *c);
int lora_cmd_show(cli_ctx *c);
int lora_cmd_cancel(cli_ctx *c);
int lora_cmd_watch(cli_ctx *c);
int lora_cmd_logs(cli_ctx *c);
int lora_cmd_metrics(cli_ctx *c);

#endif
