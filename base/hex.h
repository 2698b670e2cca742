/*
 * hex: the one spelling of ids, kids, hashes and PINs as text: lowercase hex digits, two
 * per byte. Decoding accepts only that spelling (no uppercase, no separators), so the
 * same value never reads as two (a kid in SQL, a credential id in a URL).
 */
#ifndef BASE_HEX_H
#define BASE_HEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Writes the 2*n lowercase hex digits of in[0..n) and a NUL: out holds 2*n + 1 bytes. */
void hex_encode(const uint8_t *in, size_t n, char *out);

/* Decodes exactly 2*n lowercase hex digits (len must be 2*n; no NUL needed) into out[0..n).
 * 0, or -1 for any other length or character, uppercase included. out may be partly
 * written on failure. */
int hex_decode(const char *in, size_t len, uint8_t *out, size_t n);

/* The value of one lowercase hex digit, or -1. */
int hex_digit(char c);

/* Are the len bytes at s all lowercase hex digits? (len 0: true; s may be NULL then.) */
bool hex_digits(const char *s, size_t len);

/* Is s a string of exactly n lowercase hex digits? (NULL: false.) */
bool hex_string(const char *s, size_t n);

#endif
