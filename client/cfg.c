#include "client/cfg.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"

int cfg_path(const char *lora_config, const char *xdg, const char *home, char *out, size_t cap, lr_err *err) {
    int n;
    if (lora_config && *lora_config)
        n = snprintf(out, cap, "%s", lora_config);
    else if (xdg && *xdg)
        n = snprintf(out, cap, "%s/lora/config", xdg);
    else if (home && *home)
        n = snprintf(out, cap, "%s/.config/lora/config", home);
    else
        return lr_errp(err, LR_E_INVALID, "", "cannot place the config file: set HOME or LORA_CONFIG");
    if (n < 0 || (size_t)n >= cap) return lr_errp(err, LR_E_INVALID, "", "config file path too long");
    return 0;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
    return s;
}

int cfg_load(const char *path, cfg *c, lr_err *err) {
    char *text = NULL;
    size_t len;
    if (access(path, F_OK) != 0) return 0;
    if (lr_read_file(path, 64 * 1024, &text, &len, err)) return lr_err_prefix(err, "config file: ");
    int lineno = 0, rc = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char *l = trim(line);
        if (!*l || *l == '#') continue;
        char *eq = strchr(l, '=');
        if (!eq) {
            rc = lr_errp(err, LR_E_INVALID, "", "%s line %d: expected 'key = value'", path, lineno);
            break;
        }
        *eq = 0;
        char *k = trim(l), *v = trim(eq + 1);
        if (!strcmp(k, "url"))
            snprintf(c->url, sizeof c->url, "%s", v);
        else if (!strcmp(k, "token"))
            snprintf(c->token, sizeof c->token, "%s", v);
        /* other keys are left for newer versions of lora */
    }
    free(text);
    return rc;
}

int cfg_save(const char *path, const cfg *c, lr_err *err) {
    char dir[1024], tmp[1100];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        if (lr_mkdirs(dir, err)) return -1;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return lr_errp(err, LR_E_IO, "", "%s: %s", tmp, strerror(errno));
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(tmp);
        return lr_errp(err, LR_E_IO, "", "%s: %s", tmp, strerror(errno));
    }
    fprintf(f, "# written by `lora login`; holds a secret token\nurl = %s\ntoken = %s\n", c->url, c->token);
    if (fflush(f) || fsync(fileno(f)) || fclose(f)) {
        unlink(tmp);
        return lr_errp(err, LR_E_IO, "", "%s: write failed", path);
    }
    if (rename(tmp, path)) {
        unlink(tmp);
        return lr_errp(err, LR_E_IO, "", "%s: %s", path, strerror(errno));
    }
    return 0;
}

void cfg_resolve(cfg *out, const char *flag_url, const char *flag_token, const char *env_url, const char *env_token,
                 const cfg *file, const char *file_path) {
    memset(out, 0, sizeof *out);
    if (flag_url && *flag_url) {
        snprintf(out->url, sizeof out->url, "%s", flag_url);
        out->url_from = "--url";
    } else if (env_url && *env_url) {
        snprintf(out->url, sizeof out->url, "%s", env_url);
        out->url_from = "LORA_URL";
    } else if (file && file->url[0]) {
        snprintf(out->url, sizeof out->url, "%s", file->url);
        out->url_from = file_path ? file_path : "config file";
    } else {
        snprintf(out->url, sizeof out->url, "%s", CFG_DEFAULT_URL);
        out->url_from = "default";
    }
    const char *tok = flag_token && *flag_token ? flag_token
                      : env_token && *env_token ? env_token
                      : file && file->token[0] ? file->token
                                               : "";
    snprintf(out->token, sizeof out->token, "%s", tok);
    /* a URL typed without a scheme means plain HTTP, as curl assumes */
    if (!strstr(out->url, "://")) {
        size_t l = strlen(out->url);
        if (l + 7 < sizeof out->url) {
            memmove(out->url + 7, out->url, l + 1);
            memcpy(out->url, "http://", 7);
        }
    }
    size_t l = strlen(out->url);
    while (l > 0 && out->url[l - 1] == '/') out->url[--l] = 0;
}
