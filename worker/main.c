/* lora-worker: the training engine's entry point. One subcommand per job:
 * the table below is the whole command surface. */
#include <stdio.h>
#include <string.h>

#include "worker/commands.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} worker_cmd;

static const worker_cmd cmds[] = {
    /* name, function, one-line help — keep in this order in --help */
    {"agent", cmd_agent, "serve jobs for lorad over its Unix socket (lorad starts this)"},
    {"run", cmd_run, "run one training job from a job file, no daemon needed"},
    {"render", cmd_render, "show a dataset rendered by a chat template: text, ids, labels"},
    {"grads", cmd_grads, "loss and LoRA (or, --full, all weight) gradients of one batch, for checking against PyTorch"},
    {"generate", cmd_generate, "generate text from a model, with or without an adapter (KV cache, CPU)"},
    {"serve", cmd_serve, "answer generation requests from stdin, keeping models loaded (lorad starts this)"},
    {"merge", cmd_merge, "merge an adapter into its base model: a full Hugging Face model folder"},
    {"tokenize", cmd_tokenize, "print the token ids of each line of stdin with a model's tokenizer"},
    {"mkmodel", cmd_mkmodel, "write a randomly initialised model folder in Hugging Face format"},
    {"probe", cmd_probe, "show the CPU's sgemm kernel and the GPUs this lora-worker can train on"},
    {"bench", cmd_bench, "time LoRA training steps on a model (tokens/s, GFLOP/s) or sgemm"},
    {NULL, NULL, NULL},
};

static void usage(FILE *f) {
    fprintf(f, "usage: lora-worker COMMAND [options]   (lora-worker COMMAND --help for its options)\n\ncommands:\n");
    for (const worker_cmd *c = cmds; c->name; c++) fprintf(f, "  %-10s %s\n", c->name, c->help);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("lora-worker 0.1.0\n");
        return 0;
    }
    for (const worker_cmd *c = cmds; c->name; c++)
        if (!strcmp(c->name, argv[1])) return c->fn(argc - 1, argv + 1);
    fprintf(stderr, "lora-worker: unknown command '%s' (see lora-worker --help)\n", argv[1]);
    return 1;
}
