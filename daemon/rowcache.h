/* rowcache: text made from a database row, kept by the row's id and handed
 * out again while the row is byte for byte the same.
 *
 * GET /v1/jobs builds each item from its row (a jansson object, the OpenAI
 * fields, the stored spec): ~6 us a job, most of a page's time, and
 * almost all of it is for finished jobs, whose rows never change again.
 * The key is the whole row (every column's type and bytes), so a changed
 * row is a miss, never a stale answer; what is cached must be a function of
 * the key alone. Bounded: at most max entries, and a full cache starts over.
 * Not thread-safe: one per store connection (one per thread).
 *
 * Building the key (every column of 50 rows) became most of a page's time
 * once the text was kept, so an entry also remembers the caller's epoch at
 * which its key last matched: a number the caller changes whenever any row
 * may have changed (the store: SQLite's data version). Under the same epoch
 * the row is the same, and the key need not be built. Epoch 0 is none. */
#ifndef LR_ROWCACHE_H
#define LR_ROWCACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct rowcache rowcache;

/* NULL when out of memory. */
rowcache *rowcache_new(size_t max);
void rowcache_free(rowcache *c);

/* The text kept for id under exactly this key (*len its length), valid
 * until the next rowcache_put or rowcache_free; NULL when there is none.
 * A hit records that the key matched at epoch. */
const char *rowcache_get(rowcache *c, const char *id, const void *key, size_t key_len, uint64_t epoch, size_t *len);

/* The text kept for id when its key last matched at this epoch (by
 * rowcache_get or rowcache_put), without a key; NULL otherwise and for
 * epoch 0. */
const char *rowcache_get_at(const rowcache *c, const char *id, uint64_t epoch, size_t *len);

/* Keeps text for id under key, in place of what id had, as matching at
 * epoch. -1 when out of memory (nothing is kept; the cache stays usable). */
int rowcache_put(rowcache *c, const char *id, const void *key, size_t key_len, uint64_t epoch, const char *text,
                 size_t len);

/* Entries held now (for tests). */
size_t rowcache_count(const rowcache *c);

#endif
