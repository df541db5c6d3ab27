/* rowcache: text made from a database row, kept by the row's id and handed
 * out again while the row is byte for byte the same.
 *
 * GET /v1/jobs builds each item from its row (a jansson object, the OpenAI
 * fields, the stored spec): ~6 us a job, most of a page's time, and
 * almost all of it is for finished jobs, whose rows never change again.
 * The key is the whole row (every column's type and bytes), so a changed
 * row is a miss, never a stale answer; what is cached must be a function of
 * the key alone. Bounded: at most max entries, and a full cache starts over.
 * Not thread-safe: one per store connection (one per thread). */
#ifndef LR_ROWCACHE_H
#define LR_ROWCACHE_H

#include <stddef.h>

typedef struct rowcache rowcache;

/* NULL when out of memory. */
rowcache *rowcache_new(size_t max);
void rowcache_free(rowcache *c);

/* The text kept for id under exactly this key (*len its length), valid
 * until the next rowcache_put or rowcache_free; NULL when there is none. */
const char *rowcache_get(const rowcache *c, const char *id, const void *key, size_t key_len, size_t *len);

/* Keeps text for id under key, in place of what id had. -1 when out of
 * memory (nothing is kept; the cache stays usable). */
int rowcache_put(rowcache *c, const char *id, const void *key, size_t key_len, const char *text, size_t len);

/* Entries held now (for tests). */
size_t rowcache_count(const rowcache *c);

#endif
