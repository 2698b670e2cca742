/*
 * fuzz_verifier: libFuzzer target for the reference verifier's parsers (verifier.h). Each
 * input is used four ways:
 *   1. as a whole revocation feed document (vfy_feed_check): the JWS splitter and header
 *      checks, which run before any signature;
 *   2. as the payload of a feed this harness signs with the pinned key, so that the payload
 *      parser (behind the signature check) sees arbitrary JSON and bytes too;
 *   3. as a whole token (vfy_verify);
 *   4. as the claims of a token this harness signs with a key of the JWKS, so that the
 *      claims checks (exp, nbf, their types) see arbitrary JSON.
 * Any crash, sanitizer report or leak is a finding. A feed or token the harness signed is
 * also checked for the one invariant a parser must keep: it never answers OK for what is
 * not a JSON object payload.
 *
 * Built and run by `make fuzz` (build/fuzz/fuzz_verifier, seeds tests/fuzz/corpus/verifier/,
 * dictionary tests/fuzz/verifier.dict); its seeds and regression inputs are replayed by
 * `make test` (build/tests/test_fuzz_verifier, tests/fuzz/replay.c). The event-stream
 * parser has a target of its own, fuzz_sse.
 */
#include "jose/jose.h"
#include "verifier/verifier.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KID "0123456789abcdef0123456789abcdef"
#define FEED_HEADER                                                                                \
    "{\"alg\":\"RS256\",\"kid\":\"signd-publication-v1\",\"typ\":\"kid-revocation+jwt\"}"
#define TOKEN_HEADER "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"" KID "\"}"

static EVP_PKEY *key;
static vfy_pubkey pin;
static vfy *v;

static void die(const char *what)
{
    fprintf(stderr, "fuzz_verifier: %s\n", what);
    abort();
}

/* header "." payload "." RS256 signature, all base64url, signed with key; malloc'd. */
static char *sign(const char *header, const uint8_t *payload, size_t plen)
{
    size_t hlen = strlen(header);
    size_t cap = jose_jws_max_len(hlen, plen, JOSE_SIG_MAX);
    char *buf = malloc(cap);
    size_t in_len = 0, total = 0;
    if (buf == NULL ||
        jose_jws_begin(header, hlen, (const char *)payload, plen, buf, cap, &in_len) != 0)
        die("jws_begin");
    uint8_t sig[JOSE_SIG_MAX];
    size_t sig_len = sizeof(sig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md == NULL || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(md, sig, &sig_len, (const uint8_t *)buf, in_len) != 1)
        die("sign");
    EVP_MD_CTX_free(md);
    if (jose_jws_finish(buf, cap, in_len, sig, sig_len, &total) != 0)
        die("jws_finish");
    return buf;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    key = EVP_RSA_gen(2048);
    BIGNUM *n = NULL, *e = NULL;
    if (key == NULL || EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n) != 1 ||
        EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &e) != 1)
        die("key");
    pin.n_len = (size_t)BN_bn2bin(n, pin.n);
    pin.e_len = (size_t)BN_bn2bin(e, pin.e);
    BN_free(n);
    BN_free(e);
    /* One client key in the JWKS (the same key pins the feed: a harness, not a deployment). */
    json_t *jwk = jose_jwk_rsa(pin.n, pin.n_len, pin.e, pin.e_len, KID);
    json_object_set_new(jwk, "use", json_string("sig"));
    json_object_set_new(jwk, "alg", json_string("RS256"));
    json_t *set = json_pack("{s:[o]}", "keys", jwk);
    char *jwks = json_dumps(set, JSON_COMPACT);
    json_decref(set);
    char payload[256];
    long long now = (long long)time(NULL);
    int plen = snprintf(payload, sizeof(payload),
                        "{\"iss\":\"signd\",\"seq\":0,\"after\":0,\"iat\":%lld,\"exp\":%lld,"
                        "\"ttl\":60,\"revoked\":[]}",
                        now, now + 100000000);
    char *feed = sign(FEED_HEADER, (const uint8_t *)payload, (size_t)plen);
    vfy_config cfg;
    vfy_config_default(&cfg);
    char err[256];
    if (jwks == NULL || vfy_open_documents(&cfg, &pin, jwks, strlen(jwks), feed, strlen(feed), &v,
                                           err, sizeof(err)) != VFY_E_OK)
        die(err);
    free(jwks);
    free(feed);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int64_t now = (int64_t)time(NULL);
    vfy_feed f;
    /* 1: the whole document. */
    vfy_feed_check(&pin, (const char *)data, size, now, 0, &f);
    vfy_feed_free(&f);
    /* 2: a signed feed around the input. */
    char *doc = sign(FEED_HEADER, data, size);
    if (vfy_feed_check(&pin, doc, strlen(doc), now, 0, &f) == VFY_FEED_OK && size > 0 &&
        data[0] != '{' && data[0] != ' ' && data[0] != '\t' && data[0] != '\n' && data[0] != '\r')
        die("a feed whose payload is no JSON object was accepted");
    vfy_feed_free(&f);
    free(doc);
    /* 3: the whole token (NUL-terminated; an embedded NUL just ends it early). */
    char *tok = malloc(size + 1);
    if (tok == NULL)
        die("oom");
    memcpy(tok, data, size);
    tok[size] = '\0';
    json_t *claims = NULL;
    if (vfy_verify(v, tok, &claims) == VFY_OK)
        json_decref(claims);
    free(tok);
    /* 4: a signed token around the input. */
    tok = sign(TOKEN_HEADER, data, size);
    claims = NULL;
    if (vfy_verify(v, tok, &claims) == VFY_OK) {
        if (!json_is_object(claims))
            die("OK without a claims object");
        json_decref(claims);
    }
    free(tok);
    return 0;
}
