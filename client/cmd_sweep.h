/* cmd_sweep: `lora sweep` (a job file and --grid/--range/--random into one
 * POST /v1/sweeps, points planned by client/sweep.h) and `lora sweep show`
 * (its jobs ranked by eval loss). Each returns the command's exit status. */
#ifndef LR_CLIENT_CMD_SWEEP_H
#define LR_CLIENT_CMD_SWEEP_H

#include "client/cli.h"

int lora_cmd_sweep(cli_ctx *c);
int lora_cmd_sweep_show(cli_ctx *c);

#endif
