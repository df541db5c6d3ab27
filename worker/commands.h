/* commands: the subcommands of lora-worker, one cmd_<name>(argc, argv) each,
 * argv[0] being the subcommand's name. Exit codes: 0 ok, 1 usage, 2 bad
 * input or failure. */
#ifndef LR_COMMANDS_H
#define LR_COMMANDS_H

#endif
