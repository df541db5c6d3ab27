/* rng: the one deterministic random source of lorad (weight init, LoRA init,
 * dropout masks, data shuffling).
 *
 * xoshiro256** (Blackman & Vigna) seeded through splitmix64, so any 64-bit
 * seed (0 included) gives a well-mixed state. A generator is a plain struct:
 * copy it to fork a sequence, use rng_stream() for independent streams keyed
 * by an id (a tensor name hash, a layer, a data-loader worker) so that results
 * do not depend on the order in which consumers draw. Not for cryptography. */
#ifndef LR_RNG_H
#define LR_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct lr_rng {
    uint64_t s[4];
    double spare;   /* Box-Muller's second value */
    int has_spare;
} lr_rng;

/* splitmix64 step: advances *x and returns the next output. */
uint64_t lr_splitmix64(uint64_t *x);
/* 64-bit FNV-1a of a string, for deriving stream ids from names. */
uint64_t lr_hash64(const char *s);

void rng_seed(lr_rng *r, uint64_t seed);
/* A generator for (seed, stream): different streams are independent. */
void rng_stream(lr_rng *r, uint64_t seed, uint64_t stream);
/* The xoshiro256** jump: equivalent to 2^128 calls of rng_u64. */
void rng_jump(lr_rng *r);

uint64_t rng_u64(lr_rng *r);
uint32_t rng_u32(lr_rng *r);
/* Uniform in [0, n), unbiased (Lemire's method); n > 0. */
uint64_t rng_below(lr_rng *r, uint64_t n);
/* Uniform in [0, 1) with 53 (double) or 24 (float) random bits. */
double rng_uniform(lr_rng *r);
float rng_uniform_f32(lr_rng *r);
/* Standard normal (Box-Muller, both values used). */
double rng_normal(lr_rng *r);

/* dst[i] = mean + std * N(0,1) */
void rng_fill_normal(lr_rng *r, float *dst, size_t n, float mean, float std);
/* dst[i] uniform in [lo, hi) */
void rng_fill_uniform(lr_rng *r, float *dst, size_t n, float lo, float hi);
/* Fisher-Yates shuffle of n ints. */
void rng_shuffle_int(lr_rng *r, int *a, size_t n);

#endif
