/* utf8: the few UTF-8 operations the tokenizer needs beyond utf8proc:
 * decoding that reports the maximal invalid subpart (so that invalid input
 * becomes U+FFFD exactly as Rust's String::from_utf8_lossy does it), Unicode
 * White_Space, and GPT-2's byte <-> printable character table. */
#ifndef LR_UTF8_H
#define LR_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Decodes one character of s (n > 0 bytes). Returns its length and sets *cp;
 * on invalid input returns the negated length of the maximal invalid
 * subpart (at least 1) and sets *cp to U+FFFD. */
int utf8_decode(const uint8_t *s, size_t n, int32_t *cp);
/* Encodes cp (U+FFFD when not a scalar value) into out; returns 1..4. */
int utf8_encode(int32_t cp, uint8_t out[4]);
/* Length of the character at s, or of its invalid subpart. */
int utf8_len(const uint8_t *s, size_t n);
/* Copies s with every invalid subpart replaced by U+FFFD. Returns a
 * NUL-terminated malloc'd string (*out_len excludes the NUL), NULL on OOM. */
char *utf8_sanitize(const char *s, size_t n, size_t *out_len);
/* Unicode White_Space (Rust's char::is_whitespace). */
int utf8_is_space(int32_t cp);
/* Bytes of leading whitespace of s; offset where trailing whitespace starts. */
size_t utf8_space_prefix(const uint8_t *s, size_t n);
size_t utf8_space_suffix_start(const uint8_t *s, size_t n);
/* GPT-2's bytes_to_unicode: the printable character standing for byte b,
 * and back (-1 when cp stands for no byte). */
int32_t utf8_byte_char(uint8_t b);
int utf8_char_byte(int32_t cp);

#endif
