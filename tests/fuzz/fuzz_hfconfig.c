/* Fuzz target: config.json text; a config that parses must render back to
 * JSON that parses to the same config. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/hfconfig.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lr_err err = {0};
    hf_config c, back;
    if (hf_config_parse((const char *)data, size, &c, &err)) return 0;
    char *text = hf_config_json(&c, &err);
    if (!text) return 0; /* combinations the writer refuses (e.g. Llama with bias only on q/k/v) */
    if (hf_config_parse(text, strlen(text), &back, &err)) abort();
    if (memcmp(&c, &back, sizeof c)) abort();
    free(text);
    return 0;
}
