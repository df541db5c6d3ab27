/* commands: the subcommands of lora-worker, one cmd_<name>(argc, argv) each,
 * argv[0] being the subcommand's name. Exit codes: 0 ok, 1 usage, 2 bad
 * input or failure. */
#ifndef LR_COMMANDS_H
#define LR_COMMANDS_H

int cmd_agent(int argc, char **argv); /* the worker mode lorad spawns (worker/agent.c) */
int cmd_render(int argc, char **argv); /* a dataset through a chat template (worker/cmd_render.c) */

int cmd_run(int argc, char **argv); /* one job without a daemon (worker/cmd_run.c) */
int cmd_grads(int argc, char **argv); /* loss and LoRA gradients of one batch (worker/cmd_grads.c) */
int cmd_tokenize(int argc, char **argv); /* text to token ids (worker/cmd_tokenize.c) */
int cmd_generate(int argc, char **argv); /* text from a model (+ adapter) with a KV cache (worker/cmd_generate.c) */
int cmd_serve(int argc, char **argv); /* generation requests on stdin, models kept loaded (worker/cmd_serve.c) */
int cmd_merge(int argc, char **argv); /* base + adapter into one HF model folder (worker/cmd_merge.c) */

int cmd_mkmodel(int argc, char **argv); /* a random model folder in HF format (worker/cmd_mkmodel.c) */

int cmd_probe(int argc, char **argv); /* the GPUs this worker can use (worker/cmd_probe.c) */

int cmd_bench(int argc, char **argv); /* training-step throughput and the sgemm roofline (worker/cmd_bench.c) */

#endif
