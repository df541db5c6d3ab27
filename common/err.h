/* err: the one error convention of lorad.
 *
 * Fallible functions return 0 on success and -1 on failure, and fill an
 * lr_err the caller owns with a message a user can act on ("dataset line 17:
 * missing field 'messages'") and, where the failure is about one field of a
 * request, the dotted path of that field ("hyperparameters.learning_rate"),
 * which the REST layer returns as the error's "param". */
#ifndef LR_ERR_H
#define LR_ERR_H

#include <stddef.h>

#define LR_WARN_UNUSED __attribute__((warn_unused_result))

typedef struct lr_err {
    char msg[512];
    char param[128];
    int code; /* optional class of the failure, LR_E_*; 0 when unset */
} lr_err;

enum {
    LR_E_INVALID = 1,  /* bad input from the user: 400 */
    LR_E_NOTFOUND,     /* a named thing does not exist: 404 */
    LR_E_CONFLICT,     /* state forbids it: 409 */
    LR_E_FORBIDDEN,    /* 403 */
    LR_E_TOOBIG,       /* over a size limit: 413 */
    LR_E_IO,           /* file system or socket: 500 */
    LR_E_NOMEM,        /* out of memory (host or device): 500 / job failure */
    LR_E_INTERNAL,     /* a bug: 500 */
    LR_E_BUSY,         /* a capacity limit, try again later: 429 */
    LR_E_TIMEOUT,      /* ran past its deadline: 504 */
};

/* Sets the message (printf-style) and returns -1 so that callers can write
 * `return lr_errf(err, "...")`. err may be NULL. */
int lr_errf(lr_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Like lr_errf and also records the class and the parameter path. */
int lr_errp(lr_err *err, int code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Prefixes the existing message with more context: "loading model: " + msg. */
int lr_err_prefix(lr_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void lr_err_clear(lr_err *err);

#endif
