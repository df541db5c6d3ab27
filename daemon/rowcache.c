#include "daemon/rowcache.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    uint64_t hash, epoch; /* epoch: when the key last matched */
    size_t id_len, key_len, len;
    char data[]; /* id, key, text, NUL */
} entry;

/* Open addressing with linear probing; nothing is ever deleted alone (a full
 * cache is emptied whole), so probes need no tombstones. */
struct rowcache {
    entry **slot;
    size_t mask, count, max;
};

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

rowcache *rowcache_new(size_t max) {
    rowcache *c = calloc(1, sizeof *c);
    size_t n = 16;
    while (n < 2 * max) n *= 2; /* at most half full */
    if (c) c->slot = calloc(n, sizeof *c->slot);
    if (!c || !c->slot) {
        free(c);
        return NULL;
    }
    c->mask = n - 1;
    c->max = max ? max : 1;
    return c;
}

static void clear(rowcache *c) {
    for (size_t i = 0; i <= c->mask; i++) {
        free(c->slot[i]);
        c->slot[i] = NULL;
    }
    c->count = 0;
}

void rowcache_free(rowcache *c) {
    if (!c) return;
    clear(c);
    free(c->slot);
    free(c);
}

/* The slot holding id, else the empty slot where it would go. */
static size_t find(const rowcache *c, const char *id, size_t id_len, uint64_t h) {
    size_t i = h & c->mask;
    for (const entry *e; (e = c->slot[i]); i = (i + 1) & c->mask)
        if (e->hash == h && e->id_len == id_len && !memcmp(e->data, id, id_len)) break;
    return i;
}

const char *rowcache_get(rowcache *c, const char *id, const void *key, size_t key_len, uint64_t epoch, size_t *len) {
    size_t id_len = strlen(id);
    entry *e = c->slot[find(c, id, id_len, fnv1a(id, id_len))];
    if (!e || e->key_len != key_len || memcmp(e->data + id_len, key, key_len)) return NULL;
    e->epoch = epoch;
    *len = e->len;
    return e->data + id_len + key_len;
}

const char *rowcache_get_at(const rowcache *c, const char *id, uint64_t epoch, size_t *len) {
    size_t id_len = strlen(id);
    const entry *e = c->slot[find(c, id, id_len, fnv1a(id, id_len))];
    if (!e || !epoch || e->epoch != epoch) return NULL;
    *len = e->len;
    return e->data + id_len + e->key_len;
}

int rowcache_put(rowcache *c, const char *id, const void *key, size_t key_len, uint64_t epoch, const char *text,
                 size_t len) {
    size_t id_len = strlen(id);
    if (key_len > SIZE_MAX / 4 || len > SIZE_MAX / 4 || id_len > SIZE_MAX / 4) return -1;
    entry *e = malloc(sizeof *e + id_len + key_len + len + 1);
    if (!e) return -1;
    e->hash = fnv1a(id, id_len);
    e->epoch = epoch;
    e->id_len = id_len;
    e->key_len = key_len;
    e->len = len;
    memcpy(e->data, id, id_len);
    memcpy(e->data + id_len, key, key_len);
    memcpy(e->data + id_len + key_len, text, len);
    e->data[id_len + key_len + len] = 0;
    size_t i = find(c, id, id_len, e->hash);
    if (c->slot[i]) {
        free(c->slot[i]);
    } else {
        if (c->count >= c->max) {
            clear(c);
            i = find(c, id, id_len, e->hash);
        }
        c->count++;
    }
    c->slot[i] = e;
    return 0;
}

size_t rowcache_count(const rowcache *c) { return c->count; }
