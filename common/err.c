#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int lr_errf(lr_err *err, const char *fmt, ...) {
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return -1;
}

int lr_errp(lr_err *err, int code, const char *param, const char *fmt, ...) {
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = code;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    return -1;
}

int lr_err_prefix(lr_err *err, const char *fmt, ...) {
    if (!err) return -1;
    char pre[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    /* Shift the old message right and put the prefix in front; both are
     * cut to fit, the prefix first. */
    size_t np = strlen(pre), cap = sizeof err->msg - 1;
    if (np > cap) np = cap;
    size_t no = strnlen(err->msg, cap);
    if (np + no > cap) no = cap - np;
    memmove(err->msg + np, err->msg, no);
    memcpy(err->msg, pre, np);
    err->msg[np + no] = 0;
    return -1;
}

void lr_err_clear(lr_err *err) {
    if (!err) return;
    err->msg[0] = 0;
    err->param[0] = 0;
    err->code = 0;
}
