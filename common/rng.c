#include "common/rng.h"

#include <math.h>

uint64_t lr_splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t lr_hash64(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

void rng_seed(lr_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = lr_splitmix64(&x);
    r->has_spare = 0;
    r->spare = 0;
}

void rng_stream(lr_rng *r, uint64_t seed, uint64_t stream) {
    /* Mixing the stream id through splitmix first keeps nearby ids (0, 1, 2)
     * from giving nearby seeds. */
    uint64_t x = stream;
    rng_seed(r, seed ^ lr_splitmix64(&x));
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_u64(lr_rng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

void rng_jump(lr_rng *r) {
    static const uint64_t J[4] = {0x180ec6d33cfd0abaull, 0xd5a61266f0c9392cull,
                                  0xa9582618e03fc9aaull, 0x39abdc4529b1661cull};
    uint64_t t[4] = {0, 0, 0, 0};
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 64; b++) {
            if (J[i] & (1ull << b))
                for (int k = 0; k < 4; k++) t[k] ^= r->s[k];
            rng_u64(r);
        }
    for (int k = 0; k < 4; k++) r->s[k] = t[k];
    r->has_spare = 0;
}

uint32_t rng_u32(lr_rng *r) { return (uint32_t)(rng_u64(r) >> 32); }

uint64_t rng_below(lr_rng *r, uint64_t n) {
    /* Lemire: multiply-shift with rejection of the biased low region. */
    unsigned __int128 m = (unsigned __int128)rng_u64(r) * n;
    uint64_t lo = (uint64_t)m;
    if (lo < n) {
        uint64_t thresh = -n % n;
        while (lo < thresh) {
            m = (unsigned __int128)rng_u64(r) * n;
            lo = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

double rng_uniform(lr_rng *r) { return (double)(rng_u64(r) >> 11) * 0x1.0p-53; }

float rng_uniform_f32(lr_rng *r) { return (float)(rng_u64(r) >> 40) * 0x1.0p-24f; }

double rng_normal(lr_rng *r) {
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    /* 1 - u is in (0, 1], so the log is finite. */
    double u1 = 1.0 - rng_uniform(r), u2 = rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1)), th = 2.0 * M_PI * u2;
    r->spare = rad * sin(th);
    r->has_spare = 1;
    return rad * cos(th);
}

void rng_fill_normal(lr_rng *r, float *dst, size_t n, float mean, float std) {
    for (size_t i = 0; i < n; i++) dst[i] = mean + std * (float)rng_normal(r);
}

void rng_fill_uniform(lr_rng *r, float *dst, size_t n, float lo, float hi) {
    float w = hi - lo;
    for (size_t i = 0; i < n; i++) dst[i] = lo + w * rng_uniform_f32(r);
}

void rng_shuffle_int(lr_rng *r, int *a, size_t n) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)rng_below(r, i);
        int t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}
