/* cfg: where the lora CLI finds its server and token.
 *
 * Precedence: --url/--token flags, then LORA_URL/LORA_TOKEN, then the config
 * file that `lora login URL TOKEN` writes, then the default URL (no token).
 * The file is $LORA_CONFIG, else $XDG_CONFIG_HOME/lora/config, else
 * ~/.config/lora/config: "key = value" lines (url, token), '#' comments,
 * mode 0600 since it holds a secret. */
#ifndef LR_CLIENT_CFG_H
#define LR_CLIENT_CFG_H

#include <stddef.h>
#include "common/err.h"

#define CFG_DEFAULT_URL "http://127.0.0.1:8080"

typedef struct cfg {
    char url[512];
    char token[512];
    const char *url_from;   /* "--url", "LORA_URL", the file's path or "default" */
} cfg;

/* The config file's path from the environment (any variable may be NULL). */
int cfg_path(const char *lora_config, const char *xdg_config_home, const char *home, char *out, size_t cap,
             lr_err *err) LR_WARN_UNUSED;
/* Reads the file into c (fields not in it left as they are); a missing file
 * is not an error. */
int cfg_load(const char *path, cfg *c, lr_err *err) LR_WARN_UNUSED;
/* Writes url and token (creating the directory), mode 0600, atomically. */
int cfg_save(const char *path, const cfg *c, lr_err *err) LR_WARN_UNUSED;
/* Fills out by precedence from the flags, the environment and the file's
 * values (any may be NULL or empty). file_path names the file in url_from and
 * must outlive out. */
void cfg_resolve(cfg *out, const char *flag_url, const char *flag_token, const char *env_url,
                 const char *env_token, const cfg *file, const char *file_path);

#endif
