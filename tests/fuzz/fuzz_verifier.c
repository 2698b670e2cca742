/*
 * fuzz_verifier: libFuzzer target for the reference verifier's parsers (verifier.h). Each
 * input is used seven ways:
 *   1. as a whole revocation feed document (vfy_feed_check): the JWS splitter and header
 *      checks, which run before any signature;
 *   2. as the payload of a feed this harness signs with the pinned key, so that the payload
 *      parser (behind the signature check) sees arbitrary JSON and bytes too;
 *   3. as a whole token (vfy_verify);
 *   4. as the claims of a token this harness signs with a key of the JWKS, so that the
 *      claims checks (exp, nbf, origin, the status claim and its uri) see arbitrary JSON
 *      (the handle's url is set, so a claim naming one of its lists reaches the cache);
 *   5. as a whole status list document (vfy_status_list_check): splitter and header;
 *   6. as the zlib stream of a status list (after its first byte): the harness puts it
 *      into lst and signs the list, so the inflater and its bound see arbitrary streams,
 *      zip bombs included;
 *   7. as the payload of a status list the harness signs.
 * 6 and 7 share one signature: the first input byte picks which (so an input costs three
 * RSA signatures, not four). Any crash, sanitizer report or leak is a finding. A feed,
 * list or token the harness signed is also checked for the invariants a parser must keep:
 * never OK for what is not a JSON object payload, and an accepted list has its bits.
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

#include <zlib.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KID "0123456789abcdef0123456789abcdef"
#define FEED_HEADER                                                                                \
    "{\"alg\":\"RS256\",\"kid\":\"signd-publication-v1\",\"typ\":\"kid-revocation+jwt\"}"
#define TOKEN_HEADER "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"" KID "\"}"
#define LIST_HEADER                                                                                \
    "{\"alg\":\"RS256\",\"kid\":\"signd-publication-v1\",\"typ\":\"statuslist+jwt\"}"
#define BASE_URL "https://signd.fuzz"
#define LIST_URI BASE_URL "/v1/status-lists/0"

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
    cfg.url = BASE_URL;
    cfg.max_feed_age = 86400; /* the list stays usable however long the fuzzer runs */
    char err[256];
    if (jwks == NULL || vfy_open_documents(&cfg, &pin, jwks, strlen(jwks), feed, strlen(feed), &v,
                                           err, sizeof(err)) != VFY_E_OK)
        die(err);
    free(jwks);
    free(feed);
    /* List 0 in the cache, with every bit clear, so that token claims naming it are looked
     * up (its exp is far: it stays usable while the fuzzer runs). */
    static uint8_t bits[VFY_STATUS_LIST_BYTES];
    uLongf zlen = compressBound(sizeof(bits));
    uint8_t *z = malloc(zlen);
    char *lst = malloc(jose_b64url_encoded_len(zlen) + 1);
    if (z == NULL || lst == NULL || compress2(z, &zlen, bits, sizeof(bits), 9) != Z_OK ||
        jose_b64url_encode(z, zlen, lst, jose_b64url_encoded_len(zlen) + 1) == 0)
        die("compress");
    size_t cap = strlen(lst) + 256;
    char *lp = malloc(cap);
    if (lp == NULL)
        die("oom");
    plen = snprintf(lp, cap,
                    "{\"sub\":\"" LIST_URI "\",\"iat\":%lld,\"exp\":%lld,\"ttl\":60,"
                    "\"status_list\":{\"bits\":1,\"lst\":\"%s\"}}",
                    now, now + 100000000, lst);
    char *list = sign(LIST_HEADER, (const uint8_t *)lp, (size_t)plen);
    if (vfy_apply_status_list(v, LIST_URI, list, strlen(list)) != VFY_FEED_OK)
        die("status list");
    free(list);
    free(lp);
    free(lst);
    free(z);
    return 0;
}

/* A signed status list whose lst is the base64url of the n bytes at z. */
static char *list_around(const uint8_t *z, size_t n, int64_t now)
{
    size_t b64 = jose_b64url_encoded_len(n) + 1, cap = b64 + 256;
    char *p = malloc(cap);
    if (p == NULL)
        die("oom");
    int at = snprintf(p, cap,
                      "{\"sub\":\"" LIST_URI "\",\"iat\":%lld,\"exp\":%lld,\"ttl\":60,"
                      "\"status_list\":{\"bits\":1,\"lst\":\"",
                      (long long)now, (long long)now + 600);
    at += (int)jose_b64url_encode(z, n, p + at, cap - (size_t)at);
    at += snprintf(p + at, cap - (size_t)at, "\"}}");
    char *doc = sign(LIST_HEADER, (const uint8_t *)p, (size_t)at);
    free(p);
    return doc;
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
    /* 5: the whole status list document. */
    vfy_status_list l;
    vfy_status_list_check(&pin, (const char *)data, size, now, &l);
    vfy_status_list_free(&l);
    /* 6 or 7: a signed list around the input, as its zlib stream or as its payload. */
    bool as_stream = size > 0 && (data[0] & 1);
    doc = as_stream ? list_around(data + 1, size - 1, now) : sign(LIST_HEADER, data, size);
    if (vfy_status_list_check(&pin, doc, strlen(doc), now, &l) == VFY_FEED_OK) {
        if (l.bits == NULL || vfy_status_list_bit(&l, VFY_STATUS_LIST_BYTES * 8 - 1) < 0)
            die("a list was accepted without its bits");
        if (!as_stream && size > 0 && data[0] != '{' && data[0] != ' ' && data[0] != '\t' &&
            data[0] != '\n' && data[0] != '\r')
            die("a list whose payload is no JSON object was accepted");
    }
    vfy_status_list_free(&l);
    free(doc);
    return 0;
}
