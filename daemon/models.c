#include "daemon/models.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/buf.h"
#include "formats/hfconfig.h"

int models_name_ok(const char *n) {
    size_t l = strlen(n);
    if (l == 0 || l > 63 || n[0] == '.' || n[0] == '-') return 0;
    for (size_t i = 0; i < l; i++)
        if (!((n[i] >= 'a' && n[i] <= 'z') || (n[i] >= 'A' && n[i] <= 'Z') || (n[i] >= '0' && n[i] <= '9') ||
              n[i] == '.' || n[i] == '_' || n[i] == '-'))
            return 0;
    return 1;
}

static int has_file(const char *dir, const char *name) {
    char p[PATH_MAX + 256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int has_suffix_file(const char *dir, const char *suffix) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    size_t sl = strlen(suffix);
    while (d && !found && (e = readdir(d))) {
        size_t l = strlen(e->d_name);
        found = l > sl && !strcmp(e->d_name + l - sl, suffix) && has_file(dir, e->d_name);
    }
    if (d) closedir(d);
    return found;
}

int models_inspect(const char *dir, json_t **info, lr_err *err) {
    *info = NULL;
    char cfgp[PATH_MAX + 16];
    if (lr_pathf(cfgp, sizeof cfgp, "%s/config.json", dir))
        return lr_errp(err, LR_E_INVALID, NULL, "model directory path too long");
    hf_config hc;
    if (hf_config_load(cfgp, &hc, err)) return lr_err_prefix(err, "%s is not a supported model: ", dir);
    if (!has_suffix_file(dir, ".safetensors"))
        return lr_errp(err, LR_E_INVALID, NULL, "%s has no *.safetensors weights", dir);
    if (!has_file(dir, "tokenizer.json") && !(has_file(dir, "vocab.json") && has_file(dir, "merges.txt")))
        return lr_errp(err, LR_E_INVALID, NULL, "%s has no tokenizer.json (nor vocab.json + merges.txt)", dir);
    *info = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:s}", "architecture", hc.arch_name, "model_type",
                      hc.model_type, "hidden_size", hc.hidden, "num_layers", hc.n_layers, "num_heads", hc.n_heads,
                      "vocab_size", hc.vocab_size, "max_position_embeddings", hc.max_pos, "torch_dtype",
                      hc.torch_dtype);
    if (!*info) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    return 0;
}
