/*
 * fuzz_jose: libFuzzer target for the parsers of jose/ (jose.h) that see outside bytes:
 * every input goes to all of them.
 *   1. jose_b64url_decode: what it accepts must have the documented length and re-encode
 *      to exactly the input (strict, canonical); a buffer one byte short must be refused;
 *      and every input, encoded, must decode back to itself.
 *   2. jose_jws_parse: what it accepts must have the documented shape, and its payload and
 *      signature must re-encode to exactly the input's second and third parts.
 *   3. jose_jwk_rsa_decode, on the input as JSON (and on each member of its "keys", as a
 *      JWKS holds them): an accepted (n, e) must be in bounds, survive jose_jwk_rsa and
 *      decode to itself again, and as a PEM (when OpenSSL takes the key) read back equal.
 *   4. jose_rsa_public_from_pem, on inputs holding a "BEGIN PUBLIC KEY" line: an accepted
 *      key must be in bounds and round-trip the same way.
 * A broken invariant aborts, as does any sanitizer report or leak.
 *
 * Built and run by `make fuzz` (build/fuzz/fuzz_jose, seeds tests/fuzz/corpus/jose/,
 * dictionary tests/fuzz/jose.dict); its seeds and regression inputs are replayed by
 * `make test` (build/tests/test_fuzz_jose, tests/fuzz/replay.c).
 */
#include "jose/jose.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_jose: %s\n", what);
        abort();
    }
}

/* The decoded length of n base64url characters, for the n % 4 != 1 that decode accepts. */
static size_t decoded_len(size_t n)
{
    return n / 4 * 3 + (n % 4 == 0 ? 0 : n % 4 - 1);
}

static void fuzz_b64url(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    size_t cap = size / 4 * 3 + 2, n = 0;
    uint8_t *out = malloc(cap);
    check(out != NULL, "oom");
    if (jose_b64url_decode(text, size, out, cap, &n) == 0) {
        check(size % 4 != 1 && n == decoded_len(size), "decoded length is not the documented one");
        char *again = malloc(size + 1);
        check(again != NULL, "oom");
        size_t m = jose_b64url_encode(out, n, again, size + 1);
        check(m == size && memcmp(again, text, size) == 0, "accepted a non-canonical encoding");
        free(again);
        if (n > 0) {
            /* Exactly one byte too few: refused, and nothing written past it (ASan). */
            uint8_t *tight = malloc(n - 1 > 0 ? n - 1 : 1);
            check(tight != NULL, "oom");
            check(jose_b64url_decode(text, size, n - 1 > 0 ? tight : NULL, n - 1, NULL) != 0,
                  "decoded into a buffer too small");
            free(tight);
        }
    }
    free(out);

    /* Any bytes encode, and decode back to themselves. */
    size_t elen = jose_b64url_encoded_len(size);
    char *enc = malloc(elen + 1);
    check(enc != NULL, "oom");
    check(jose_b64url_encode(data, size, enc, elen + 1) == elen, "encode length");
    check(jose_b64url_encode(data, size, enc, elen) == 0 && (elen == 0 || enc[0] == '\0'),
          "encoded into a buffer without room for the NUL");
    jose_b64url_encode(data, size, enc, elen + 1);
    uint8_t *back = malloc(size > 0 ? size : 1);
    check(back != NULL, "oom");
    check(jose_b64url_decode(enc, elen, back, size, &n) == 0 && n == size &&
              memcmp(back, data, size) == 0,
          "encode then decode is not the identity");
    free(back);
    free(enc);
}

/* The part of the compact form between from and to re-encodes from bytes. */
static void same_part(const char *from, const char *to, const uint8_t *bytes, size_t n,
                      const char *what)
{
    size_t len = (size_t)(to - from);
    char *enc = malloc(len + 1);
    check(enc != NULL, "oom");
    check(jose_b64url_encode(bytes, n, enc, len + 1) == len && memcmp(enc, from, len) == 0, what);
    free(enc);
}

static void fuzz_jws(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    jose_jws p;
    if (jose_jws_parse(text, size, &p) != 0) {
        check(p.header == NULL && p.payload == NULL && p.sig_len == 0, "refusal left state");
        jose_jws_free(&p);
        return;
    }
    check(size <= JOSE_JWS_MAX, "accepted more than JOSE_JWS_MAX");
    check(json_is_object(p.header), "header is no object");
    check(p.sig_len >= 1 && p.sig_len <= JOSE_SIG_MAX, "signature length out of bounds");
    check(p.payload != NULL && p.payload[p.payload_len] == '\0', "payload not NUL-terminated");
    check(p.signing_input_len < size && text[p.signing_input_len] == '.', "signing input bounds");
    const char *d1 = memchr(text, '.', size);
    check(d1 != NULL && d1 < text + p.signing_input_len, "first dot");
    same_part(d1 + 1, text + p.signing_input_len, p.payload, p.payload_len,
              "payload part does not re-encode");
    same_part(text + p.signing_input_len + 1, text + size, p.sig, p.sig_len,
              "signature part does not re-encode");
    jose_jws_free(&p);
    jose_jws_free(&p); /* twice is fine */
}

/* (n, e) as the decoders return them: 1..JOSE_RSA_MAX bytes without leading zeros. */
static void check_key(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len)
{
    check(n_len >= 1 && n_len <= JOSE_RSA_MAX && n[0] != 0, "modulus out of bounds");
    check(e_len >= 1 && e_len <= JOSE_RSA_MAX && e[0] != 0, "exponent out of bounds");
}

/* FNV-1a over the lengths and bytes of (n, e). */
/* FNV-1a over (n, e) and their lengths. */
static uint64_t key_hash(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len)
{
    uint64_t h = 14695981039346656037u ^ (uint64_t)n_len ^ ((uint64_t)e_len << 32);
    for (size_t i = 0; i < n_len; i++)
        h = (h ^ n[i]) * 1099511628211u;
    for (size_t i = 0; i < e_len; i++)
        h = (h ^ e[i]) * 1099511628211u;
    return h;
}

/* A PEM of (n, e), when OpenSSL takes the key, reads back as (n, e). Costly (OpenSSL 3's
 * decoders take about a millisecond) and most mutations of a JWK make a new key, so only
 * one key in eight is checked, chosen by its hash so that a replay checks the same. */
static void pem_round_trip(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len)
{
    if (key_hash(n, n_len, e, e_len) % 8 != 0)
        return;
    char *pem = jose_rsa_public_pem(n, n_len, e, e_len);
    if (pem == NULL)
        return;
    static uint8_t n2[JOSE_RSA_MAX], e2[JOSE_RSA_MAX];
    size_t n2_len, e2_len;
    check(jose_rsa_public_from_pem(pem, strlen(pem), n2, &n2_len, e2, &e2_len) == 0,
          "own PEM refused");
    check(n2_len == n_len && memcmp(n2, n, n_len) == 0 && e2_len == e_len &&
              memcmp(e2, e, e_len) == 0,
          "PEM round trip changed the key");
    free(pem);
}

static void fuzz_one_jwk(const json_t *jwk)
{
    static uint8_t n[JOSE_RSA_MAX], e[JOSE_RSA_MAX], n2[JOSE_RSA_MAX], e2[JOSE_RSA_MAX];
    size_t n_len = 99, e_len = 99, n2_len, e2_len;
    if (jose_jwk_rsa_decode(jwk, n, &n_len, e, &e_len) != 0) {
        check(n_len == 0 && e_len == 0, "refusal left lengths");
        return;
    }
    check_key(n, n_len, e, e_len);
    json_t *again = jose_jwk_rsa(n, n_len, e, e_len, "fuzz");
    check(again != NULL, "accepted key has no JWK");
    check(jose_jwk_rsa_decode(again, n2, &n2_len, e2, &e2_len) == 0 && n2_len == n_len &&
              memcmp(n2, n, n_len) == 0 && e2_len == e_len && memcmp(e2, e, e_len) == 0,
          "JWK round trip changed the key");
    json_decref(again);
    pem_round_trip(n, n_len, e, e_len);
}

static void fuzz_jwk(const uint8_t *data, size_t size)
{
    json_t *j = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (j == NULL)
        return;
    fuzz_one_jwk(j);
    json_t *keys = json_object_get(j, "keys");
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k) fuzz_one_jwk(k);
    json_decref(j);
}

static void fuzz_pem(const uint8_t *data, size_t size)
{
    static const char begin[] = "-----BEGIN PUBLIC KEY-----";
    static uint8_t n[JOSE_RSA_MAX], e[JOSE_RSA_MAX];
    size_t n_len = 99, e_len = 99;
    /* OpenSSL 3 spends about a millisecond setting up its decoders for any input: only
     * what could be a public key PEM gets that far, or the cheap parsers above starve. */
    if (memmem(data, size, begin, sizeof(begin) - 1) == NULL)
        return;
    if (jose_rsa_public_from_pem((const char *)data, size, n, &n_len, e, &e_len) != 0) {
        check(n_len == 0 && e_len == 0, "refusal left lengths");
        return;
    }
    check_key(n, n_len, e, e_len);
    pem_round_trip(n, n_len, e, e_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_b64url(data, size);
    fuzz_jws(data, size);
    fuzz_jwk(data, size);
    fuzz_pem(data, size);
    return 0;
}
