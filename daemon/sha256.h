/* sha256: SHA-256 (FIPS 180-4), for hashing API tokens, plus a
 * constant-time comparison. */
#ifndef LR_SHA256_H
#define LR_SHA256_H

#include <stddef.h>
#include <stdint.h>

void sha256(const void *data, size_t len, uint8_t out[32]);
/* Lower-case hex of the digest into out (65 bytes with the NUL). */
void sha256_hex(const void *data, size_t len, char out[65]);

#endif
