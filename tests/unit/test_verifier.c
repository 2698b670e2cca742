/*
 * test_verifier: the reference verifier without a network. Keys are generated in-process by
 * OpenSSL, tokens and feeds are crafted and signed here (OpenSSL signs, jose only encodes),
 * and a verifier is built from documents (vfy_open_documents), so every answer of
 * vfy_verify and every rule of the signed feed is pinned down directly: the algorithm
 * confusion attacks, tampering, time checks, malformed input, rollback and gaps. Status
 * lists are compressed here with zlib and signed like the feed; their bits, the token's
 * status and origin claims and the cache are pinned down the same way.
 */
#include "verifier/verifier.h"
#include "verifier/internal.h" /* vfy_sse_bytes: the stream's events, without a network */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <zlib.h>

#define KID_A "0123456789abcdef0123456789abcdef"
#define KID_B "fedcba9876543210fedcba9876543210"
#define KID_C "00000000000000000000000000000001"
#define KID_ENC "11111111111111111111111111111111"
#define PUB_KID "signd-publication-v1"
#define BASE_URL "https://signd.test:8443"
#define LIST0 BASE_URL "/v1/status-lists/0"
#define LIST1 BASE_URL "/v1/status-lists/1"
#define ORIGIN_A "https://a.example"
#define ORIGIN_B "https://b.example:8080"

/* What the tests share, generated once: two client keys, the publication key, a stranger. */
static struct {
    EVP_PKEY *a, *b, *pub, *other;
    vfy_pubkey pin, other_pin;
    char *jwks; /* KID_A, KID_B, the publication key (use kid-revocation), KID_ENC (use enc) */
} fx;

typedef enum { SIG_RS256, SIG_RS512, SIG_HS256_PEM, SIG_NONE } sig_kind;

/* ---- helpers ---------------------------------------------------------------------------- */

static EVP_PKEY *rsa_new(void)
{
    EVP_PKEY *k = EVP_RSA_gen(2048);
    assert_non_null(k);
    return k;
}

static size_t bn_bytes(const EVP_PKEY *pkey, const char *name, uint8_t *out)
{
    BIGNUM *bn = NULL;
    assert_int_equal(EVP_PKEY_get_bn_param(pkey, name, &bn), 1);
    assert_true(BN_num_bytes(bn) <= JOSE_RSA_MAX);
    size_t len = (size_t)BN_bn2bin(bn, out);
    BN_free(bn);
    return len;
}

static json_t *jwk_of(const EVP_PKEY *k, const char *kid, const char *use)
{
    uint8_t n[JOSE_RSA_MAX], e[JOSE_RSA_MAX];
    size_t n_len = bn_bytes(k, OSSL_PKEY_PARAM_RSA_N, n);
    size_t e_len = bn_bytes(k, OSSL_PKEY_PARAM_RSA_E, e);
    json_t *j = jose_jwk_rsa(n, n_len, e, e_len, kid);
    assert_non_null(j);
    json_object_set_new(j, "use", json_string(use));
    return j;
}

/* The public key as PEM text, malloc'd. */
static char *pem_of(const EVP_PKEY *k)
{
    BIO *mem = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(mem, (EVP_PKEY *)k), 1);
    char *data = NULL;
    long len = BIO_get_mem_data(mem, &data);
    char *pem = strndup(data, (size_t)len);
    BIO_free(mem);
    return pem;
}

static vfy_pubkey pin_of(const EVP_PKEY *k)
{
    vfy_pubkey p;
    char *pem = pem_of(k);
    assert_int_equal(jose_rsa_public_from_pem(pem, strlen(pem), p.n, &p.n_len, p.e, &p.e_len), 0);
    free(pem);
    return p;
}

/* header.payload.signature: RS256 or RS512 by key, HS256 keyed with key's public PEM (the
 * algorithm-confusion attack), or no signature at all. malloc'd. */
static char *jws_make(const char *hdr, const char *payload, EVP_PKEY *key, sig_kind kind)
{
    size_t hlen = strlen(hdr), plen = strlen(payload), slen, total;
    size_t cap = jose_jws_max_len(hlen, plen, JOSE_SIG_MAX);
    char *jws = malloc(cap);
    assert_non_null(jws);
    assert_int_equal(jose_jws_begin(hdr, hlen, payload, plen, jws, cap, &slen), 0);
    uint8_t sig[JOSE_SIG_MAX];
    size_t sig_len = sizeof(sig);
    if (kind == SIG_NONE) {
        jws[slen] = '.';
        jws[slen + 1] = '\0';
        return jws;
    }
    if (kind == SIG_HS256_PEM) {
        char *pem = pem_of(key);
        assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, pem, strlen(pem),
                                  (const uint8_t *)jws, slen, sig, sizeof(sig), &sig_len));
        free(pem);
    } else {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        assert_int_equal(EVP_DigestSignInit_ex(md, NULL, kind == SIG_RS512 ? "SHA512" : "SHA256",
                                               NULL, NULL, key, NULL),
                         1);
        assert_int_equal(EVP_DigestSign(md, sig, &sig_len, (const uint8_t *)jws, slen), 1);
        EVP_MD_CTX_free(md);
    }
    assert_int_equal(jose_jws_finish(jws, cap, slen, sig, sig_len, &total), 0);
    return jws;
}

/* A token with the given alg and kid over claims (a JSON object text). */
static char *token_make(const char *alg, const char *kid, const char *claims, EVP_PKEY *key,
                        sig_kind kind)
{
    char hdr[256];
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}", alg, kid);
    return jws_make(hdr, claims, key, kind);
}

/* An RS256 token by key with sub "video-1" and exp = now + exp_in (and nbf when nbf_in is
 * not 0: nbf = now + nbf_in). */
static char *token_timed(const char *kid, EVP_PKEY *key, long exp_in, long nbf_in)
{
    long now = (long)time(NULL);
    char claims[256];
    if (nbf_in != 0)
        snprintf(claims, sizeof(claims),
                 "{\"sub\":\"video-1\",\"iat\":%ld,\"exp\":%ld,\"nbf\":%ld}", now, now + exp_in,
                 now + nbf_in);
    else
        snprintf(claims, sizeof(claims), "{\"sub\":\"video-1\",\"iat\":%ld,\"exp\":%ld}", now,
                 now + exp_in);
    return token_make("RS256", kid, claims, key, SIG_RS256);
}

/* A feed payload: revoked lists kids[i] with seq after + 1 + i. */
static char *feed_payload(uint64_t seq, uint64_t after, long iat, long exp, const char **kids,
                          size_t n)
{
    json_t *revoked = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(revoked, json_pack("{s:I, s:s, s:I, s:s}", "seq",
                                                 (json_int_t)(after + 1 + i), "kid", kids[i],
                                                 "revoked_at", (json_int_t)iat, "reason", "test"));
    json_t *p = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:o}", "iss", "https://signd.test", "seq",
                          (json_int_t)seq, "after", (json_int_t)after, "iat", (json_int_t)iat,
                          "exp", (json_int_t)exp, "ttl", (json_int_t)60, "revoked", revoked);
    char *text = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    return text;
}

static char *feed_sign(const char *payload, EVP_PKEY *key, const char *typ)
{
    char hdr[256];
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"RS256\",\"typ\":\"%s\",\"kid\":\"%s\"}", typ, PUB_KID);
    return jws_make(hdr, payload, key, SIG_RS256);
}

/* A fresh feed signed by the publication key. */
static char *feed_make(uint64_t seq, uint64_t after, const char **kids, size_t n)
{
    long now = (long)time(NULL);
    char *p = feed_payload(seq, after, now, now + 900, kids, n);
    char *f = feed_sign(p, fx.pub, VFY_FEED_TYP);
    free(p);
    return f;
}

/* A fresh feed at seq, full (after 0), revoking no kid, with subjects_json (raw JSON, or
 * NULL for a feed without the member) as its "subjects". */
static char *feed_with_subjects(uint64_t seq, const char *subjects_json)
{
    long now = (long)time(NULL);
    char *p = feed_payload(seq, 0, now, now + 900, NULL, 0);
    json_t *j = json_loads(p, 0, NULL);
    free(p);
    if (subjects_json != NULL)
        json_object_set_new(j, "subjects", json_loads(subjects_json, JSON_DECODE_ANY, NULL));
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    char *f = feed_sign(text, fx.pub, VFY_FEED_TYP);
    free(text);
    return f;
}

/* A status list document: the bytes of bits (len of them, which need not be the right
 * size: the tests of the bound make it wrong on purpose) zlib-compressed, with sub, iat
 * and exp, signed by key under typ. extra (or NULL) is raw zlib bytes appended to the
 * stream. malloc'd. */
static char *slist_doc(const uint8_t *bits, size_t len, const char *sub, long iat, long exp,
                       EVP_PKEY *key, const char *typ, const char *extra)
{
    uLongf zlen = compressBound((uLong)len) + 16;
    uint8_t *z = malloc(zlen);
    assert_non_null(z);
    assert_int_equal(compress2(z, &zlen, bits, (uLong)len, 9), Z_OK);
    if (extra != NULL) {
        memcpy(z + zlen, extra, strlen(extra));
        zlen += strlen(extra);
    }
    char *lst = malloc(jose_b64url_encoded_len(zlen) + 1);
    assert_non_null(lst);
    assert_true(jose_b64url_encode(z, zlen, lst, jose_b64url_encoded_len(zlen) + 1) > 0);
    free(z);
    json_t *p = json_pack("{s:s, s:s, s:I, s:I, s:I, s:{s:i, s:s}}", "iss", "signd", "sub", sub,
                          "iat", (json_int_t)iat, "exp", (json_int_t)exp, "ttl", (json_int_t)60,
                          "status_list", "bits", 1, "lst", lst);
    free(lst);
    char *text = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    char hdr[256];
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"RS256\",\"kid\":\"%s\",\"typ\":\"%s\"}", PUB_KID, typ);
    char *doc = jws_make(hdr, text, key, SIG_RS256);
    free(text);
    return doc;
}

/* A fresh, well-formed list at sub with the given token indexes revoked (n of them). */
static char *slist_make(const char *sub, const uint32_t *revoked, size_t n)
{
    uint8_t *bits = calloc(1, VFY_STATUS_LIST_BYTES);
    assert_non_null(bits);
    for (size_t i = 0; i < n; i++)
        bits[revoked[i] / 8] |= (uint8_t)(1u << (revoked[i] % 8));
    long now = (long)time(NULL);
    char *doc = slist_doc(bits, VFY_STATUS_LIST_BYTES, sub, now, now + 900, fx.pub,
                          VFY_STATUS_LIST_TYP, NULL);
    free(bits);
    return doc;
}

/* An RS256 token by KID_A valid for 10 minutes, with extra claims (JSON members text, may be
 * empty) after sub, iat and exp. */
static char *token_with(const char *extra)
{
    long now = (long)time(NULL);
    char claims[1024];
    snprintf(claims, sizeof(claims), "{\"sub\":\"video-1\",\"iat\":%ld,\"exp\":%ld%s%s}", now,
             now + 600, extra[0] ? "," : "", extra);
    return token_make("RS256", KID_A, claims, fx.a, SIG_RS256);
}

/* A token revocable through entry idx of the list at uri. */
static char *token_in_list(const char *uri, long idx)
{
    char extra[512];
    snprintf(extra, sizeof(extra), "\"status\":{\"status_list\":{\"idx\":%ld,\"uri\":\"%s\"}}", idx,
             uri);
    return token_with(extra);
}

static vfy *open_with(const vfy_config *cfg, const char *feed)
{
    vfy *v = NULL;
    char err[256];
    vfy_err e = vfy_open_documents(cfg, &fx.pin, fx.jwks, strlen(fx.jwks), feed, strlen(feed), &v,
                                   err, sizeof(err));
    if (e != VFY_E_OK)
        fail_msg("vfy_open_documents: %s: %s", vfy_err_name(e), err);
    return v;
}

/* A verifier whose status lists must live under BASE_URL (none are there yet). */
static vfy *open_with_lists(void)
{
    vfy_config cfg;
    vfy_config_default(&cfg);
    cfg.url = BASE_URL "/";
    char *feed = feed_make(0, 0, NULL, 0);
    vfy *v = open_with(&cfg, feed);
    free(feed);
    return v;
}

/* A verifier with default settings and a feed revoking nothing. */
static vfy *open_default(void)
{
    vfy_config cfg;
    vfy_config_default(&cfg);
    char *feed = feed_make(0, 0, NULL, 0);
    vfy *v = open_with(&cfg, feed);
    free(feed);
    return v;
}

static vfy_result verify_str(vfy *v, const char *token)
{
    json_t *claims = (json_t *)1;
    vfy_result r = vfy_verify(v, token, &claims);
    if (r != VFY_OK)
        assert_null(claims);
    json_decref(claims);
    return r;
}

/* Replaces the payload part of a compact JWS, keeping header and signature. */
static char *swap_payload(const char *jws, const char *payload)
{
    const char *d1 = strchr(jws, '.'), *d2 = strchr(d1 + 1, '.');
    size_t plen = strlen(payload), cap = (size_t)(d1 - jws) + plen * 2 + strlen(d2) + 8;
    char *out = malloc(cap);
    memcpy(out, jws, (size_t)(d1 - jws) + 1);
    size_t at = (size_t)(d1 - jws) + 1;
    at += jose_b64url_encode(payload, plen, out + at, cap - at);
    strcpy(out + at, d2);
    return out;
}

/* Fills fx: the keys and the JWKS every test uses. */
static int group_setup(void **state)
{
    (void)state;
    fx.a = rsa_new();
    fx.b = rsa_new();
    fx.pub = rsa_new();
    fx.other = rsa_new();
    fx.pin = pin_of(fx.pub);
    fx.other_pin = pin_of(fx.other);
    json_t *keys = json_array();
    json_array_append_new(keys, jwk_of(fx.a, KID_A, "sig"));
    json_array_append_new(keys, jwk_of(fx.b, KID_B, "sig"));
    json_t *pub = jwk_of(fx.pub, PUB_KID, "kid-revocation");
    json_array_append_new(keys, pub);
    json_array_append_new(keys, jwk_of(fx.other, KID_ENC, "enc"));
    json_t *doc = json_pack("{s:o}", "keys", keys);
    fx.jwks = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(fx.a);
    EVP_PKEY_free(fx.b);
    EVP_PKEY_free(fx.pub);
    EVP_PKEY_free(fx.other);
    free(fx.jwks);
    return 0;
}

/* ---- tokens ----------------------------------------------------------------------------- */

static void test_valid_token_verifies_and_returns_its_claims(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *tok = token_timed(KID_A, fx.a, 600, -5);
    json_t *claims = NULL;
    assert_int_equal(vfy_verify(v, tok, &claims), VFY_OK);
    assert_string_equal(json_string_value(json_object_get(claims, "sub")), "video-1");
    json_decref(claims);
    free(tok);
    tok = token_timed(KID_B, fx.b, 600, 0);
    assert_int_equal(vfy_verify(v, tok, NULL), VFY_OK); /* claims_out is optional */
    free(tok);
    vfy_close(v);
}

static void test_alg_none_is_not_allowed(void **state)
{
    (void)state;
    vfy *v = open_default();
    char claims[128];
    snprintf(claims, sizeof(claims), "{\"sub\":\"x\",\"exp\":%ld}", (long)time(NULL) + 600);
    char *tok = token_make("none", KID_A, claims, NULL, SIG_NONE);
    assert_int_equal(verify_str(v, tok), VFY_ALG_NOT_ALLOWED);
    free(tok);
    /* Nor any other spelling of it. */
    tok = token_make("None", KID_A, claims, NULL, SIG_NONE);
    assert_int_equal(verify_str(v, tok), VFY_ALG_NOT_ALLOWED);
    free(tok);
    vfy_close(v);
}

static void test_hs256_keyed_with_the_public_key_pem_is_not_allowed(void **state)
{
    (void)state;
    vfy *v = open_default();
    char claims[128];
    snprintf(claims, sizeof(claims), "{\"sub\":\"x\",\"exp\":%ld}", (long)time(NULL) + 600);
    char *tok = token_make("HS256", KID_A, claims, fx.a, SIG_HS256_PEM);
    assert_int_equal(verify_str(v, tok), VFY_ALG_NOT_ALLOWED);
    free(tok);
    vfy_close(v);
}

static void test_rs512_and_lookalike_algs_are_not_allowed(void **state)
{
    (void)state;
    vfy *v = open_default();
    char claims[128];
    snprintf(claims, sizeof(claims), "{\"sub\":\"x\",\"exp\":%ld}", (long)time(NULL) + 600);
    char *tok = token_make("RS512", KID_A, claims, fx.a, SIG_RS512);
    assert_int_equal(verify_str(v, tok), VFY_ALG_NOT_ALLOWED);
    free(tok);
    static const char *const algs[] = {"rs256", "RS256 ", "PS256", "ES256", ""};
    for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
        tok = token_make(algs[i], KID_A, claims, fx.a, SIG_RS256);
        assert_int_equal(verify_str(v, tok), VFY_ALG_NOT_ALLOWED);
        free(tok);
    }
    vfy_close(v);
}

static void test_alg_is_refused_before_the_kid_is_looked_up(void **state)
{
    (void)state;
    vfy *v = open_default();
    char claims[128];
    snprintf(claims, sizeof(claims), "{\"sub\":\"x\",\"exp\":%ld}", (long)time(NULL) + 600);
    char *tok = token_make("HS256", KID_C, claims, fx.a, SIG_HS256_PEM); /* unknown kid too */
    assert_int_equal(verify_str(v, tok), VFY_ALG_NOT_ALLOWED);
    free(tok);
    vfy_close(v);
}

static void test_changed_payload_is_bad_signature(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *tok = token_timed(KID_A, fx.a, 600, 0);
    char claims[128];
    snprintf(claims, sizeof(claims), "{\"sub\":\"video-2\",\"exp\":%ld}", (long)time(NULL) + 600);
    char *forged = swap_payload(tok, claims);
    assert_int_equal(verify_str(v, forged), VFY_BAD_SIGNATURE);
    /* One flipped character of the signature. */
    size_t len = strlen(tok);
    tok[len - 5] = tok[len - 5] == 'A' ? 'B' : 'A';
    assert_int_equal(verify_str(v, tok), VFY_BAD_SIGNATURE);
    free(forged);
    free(tok);
    vfy_close(v);
}

static void test_token_signed_by_another_key_under_a_known_kid_is_bad_signature(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *tok = token_timed(KID_A, fx.b, 600, 0);
    assert_int_equal(verify_str(v, tok), VFY_BAD_SIGNATURE);
    free(tok);
    vfy_close(v);
}

static void test_expired_token_is_expired_and_leeway_forgives_skew(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *tok = token_timed(KID_A, fx.a, -30, 0);
    assert_int_equal(verify_str(v, tok), VFY_EXPIRED);
    vfy_close(v);

    vfy_config cfg;
    vfy_config_default(&cfg);
    cfg.leeway = 60;
    char *feed = feed_make(0, 0, NULL, 0);
    v = open_with(&cfg, feed);
    assert_int_equal(verify_str(v, tok), VFY_OK);
    vfy_close(v);
    cfg.leeway = 10;
    v = open_with(&cfg, feed);
    assert_int_equal(verify_str(v, tok), VFY_EXPIRED);
    vfy_close(v);
    free(feed);
    free(tok);
}

static void test_token_is_expired_at_exactly_exp(void **state)
{
    (void)state;
    vfy_config cfg;
    vfy_config_default(&cfg);
    char *feed = feed_make(0, 0, NULL, 0);
    char claims[128];
    snprintf(claims, sizeof(claims), "{\"exp\":%d}", 2000000000);
    char *tok = token_make("RS256", KID_A, claims, fx.a, SIG_RS256);
    cfg.now = 2000000000;
    vfy *v = open_with(&cfg, feed);
    assert_int_equal(verify_str(v, tok), VFY_EXPIRED);
    vfy_close(v);
    cfg.now = 1999999999;
    v = open_with(&cfg, feed);
    assert_int_equal(verify_str(v, tok), VFY_OK);
    vfy_close(v);
    free(tok);
    free(feed);
}

static void test_not_yet_valid_token_and_leeway(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *tok = token_timed(KID_A, fx.a, 600, 30);
    assert_int_equal(verify_str(v, tok), VFY_NOT_YET_VALID);
    vfy_close(v);
    vfy_config cfg;
    vfy_config_default(&cfg);
    cfg.leeway = 60;
    char *feed = feed_make(0, 0, NULL, 0);
    v = open_with(&cfg, feed);
    assert_int_equal(verify_str(v, tok), VFY_OK);
    vfy_close(v);
    free(feed);
    free(tok);
}

static void test_clock_override_decides_exp_and_nbf_but_not_the_feed(void **state)
{
    (void)state;
    vfy_config cfg;
    vfy_config_default(&cfg);
    char *feed = feed_make(0, 0, NULL, 0);
    char *tok = token_timed(KID_A, fx.a, 600, -5);
    cfg.now = (int64_t)time(NULL) + 3600; /* an hour on: the token has expired */
    vfy *v = open_with(&cfg, feed);
    assert_int_equal(verify_str(v, tok), VFY_EXPIRED);
    vfy_close(v);
    cfg.now = (int64_t)time(NULL) - 3600; /* an hour back: not valid yet */
    v = open_with(&cfg, feed);
    assert_int_equal(verify_str(v, tok), VFY_NOT_YET_VALID);
    vfy_close(v);
    free(tok);
    free(feed);
}

static void test_malformed_tokens_are_malformed(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *good = token_timed(KID_A, fx.a, 600, 0);
    const char *d1 = strchr(good, '.'), *d2 = strchr(d1 + 1, '.');
    char buf[4096];
    long exp = (long)time(NULL) + 600;
    char claims[128];
    snprintf(claims, sizeof(claims), "{\"exp\":%ld}", exp);

    assert_int_equal(verify_str(v, ""), VFY_MALFORMED);
    assert_int_equal(vfy_verify(v, NULL, NULL), VFY_MALFORMED);
    /* Two parts, four parts. */
    snprintf(buf, sizeof(buf), "%.*s", (int)(d2 - good), good);
    assert_int_equal(verify_str(v, buf), VFY_MALFORMED);
    snprintf(buf, sizeof(buf), "%s.AAAA", good);
    assert_int_equal(verify_str(v, buf), VFY_MALFORMED);
    assert_int_equal(verify_str(v, ".."), VFY_MALFORMED);
    /* Not base64url: padding, the standard alphabet, whitespace. */
    snprintf(buf, sizeof(buf), "%s=", good);
    assert_int_equal(verify_str(v, buf), VFY_MALFORMED);
    snprintf(buf, sizeof(buf), "%.*s+%s", (int)(d1 - good), good, d1);
    assert_int_equal(verify_str(v, buf), VFY_MALFORMED);
    snprintf(buf, sizeof(buf), " %s", good);
    assert_int_equal(verify_str(v, buf), VFY_MALFORMED);
    /* Header or payload not a JSON object. */
    static const char *const bad_headers[] = {
        "not json",
        "[\"RS256\"]",
        "{\"alg\":\"RS256\"}",                                     /* no kid */
        "{\"alg\":\"RS256\",\"kid\":7}",                           /* kid not a string */
        "{\"alg\":\"RS256\",\"kid\":\"\"}",                        /* empty kid */
        "{\"kid\":\"" KID_A "\"}",                                 /* no alg */
        "{\"alg\":\"RS256\",\"kid\":\"" KID_A "\",\"kid\":\"x\"}", /* duplicate key */
        "{\"alg\":\"RS256\",\"kid\":\"" KID_A "\",\"crit\":[\"x\"]}",
        "{\"alg\":\"RS256\",\"kid\":\"" KID_A "\"} trailing",
    };
    for (size_t i = 0; i < sizeof(bad_headers) / sizeof(bad_headers[0]); i++) {
        char *tok = jws_make(bad_headers[i], claims, fx.a, SIG_RS256);
        if (verify_str(v, tok) != VFY_MALFORMED)
            fail_msg("header %s was not malformed", bad_headers[i]);
        free(tok);
    }
    static const char *const bad_payloads[] = {
        "not json",
        "[1]",
        "{}",
        "{\"exp\":\"2000000000\"}",
        "{\"exp\":1,\"exp\":2}",
        "{\"exp\":4000000000,\"nbf\":\"0\"}",
    };
    for (size_t i = 0; i < sizeof(bad_payloads) / sizeof(bad_payloads[0]); i++) {
        char *tok = token_make("RS256", KID_A, bad_payloads[i], fx.a, SIG_RS256);
        if (verify_str(v, tok) != VFY_MALFORMED)
            fail_msg("payload %s was not malformed", bad_payloads[i]);
        free(tok);
    }
    /* Over VFY_TOKEN_MAX: refused before it is parsed, however well formed. */
    char *huge_claims = malloc(VFY_TOKEN_MAX + 64);
    int n = snprintf(huge_claims, VFY_TOKEN_MAX + 64, "{\"exp\":%ld,\"pad\":\"", exp);
    memset(huge_claims + n, 'x', VFY_TOKEN_MAX - 100);
    strcpy(huge_claims + n + VFY_TOKEN_MAX - 100, "\"}");
    char *huge = token_make("RS256", KID_A, huge_claims, fx.a, SIG_RS256);
    assert_true(strlen(huge) > VFY_TOKEN_MAX);
    assert_int_equal(verify_str(v, huge), VFY_MALFORMED);
    free(huge);
    free(huge_claims);
    /* A signature longer than any RSA key's. */
    char *longsig = malloc(strlen(good) + 2048);
    snprintf(longsig, strlen(good) + 2048, "%.*s.%0*d", (int)(d2 - good), good, 1400, 0);
    for (char *p = longsig + (d2 - good) + 1; *p; p++)
        *p = 'A';
    assert_int_equal(verify_str(v, longsig), VFY_MALFORMED);
    free(longsig);
    free(good);
    vfy_close(v);
}

static void test_unknown_kid_is_unknown_kid(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *tok = token_timed(KID_C, fx.a, 600, 0);
    assert_int_equal(verify_str(v, tok), VFY_UNKNOWN_KID);
    free(tok);
    tok = token_timed("not-a-hex-kid", fx.a, 600, 0);
    assert_int_equal(verify_str(v, tok), VFY_UNKNOWN_KID);
    free(tok);
    struct vfy_stats s;
    vfy_stats(v, &s);
    assert_int_equal(s.keys, 2); /* KID_A and KID_B: the publication and enc keys are not */
    vfy_close(v);
}

static void test_publication_key_never_verifies_a_token(void **state)
{
    (void)state;
    vfy *v = open_default();
    /* Signed by the publication key and naming it: it is in the JWKS, but not for tokens. */
    char *tok = token_timed(PUB_KID, fx.pub, 600, 0);
    assert_int_equal(verify_str(v, tok), VFY_UNKNOWN_KID);
    free(tok);
    /* A JWKS entry with use "enc" is not a signing key either. */
    tok = token_timed(KID_ENC, fx.other, 600, 0);
    assert_int_equal(verify_str(v, tok), VFY_UNKNOWN_KID);
    free(tok);
    vfy_close(v);
}

static void test_kid_in_the_feed_is_revoked_kid(void **state)
{
    (void)state;
    vfy_config cfg;
    vfy_config_default(&cfg);
    const char *kids[] = {KID_A, KID_C};
    char *feed = feed_make(2, 0, kids, 2);
    vfy *v = open_with(&cfg, feed);
    char *tok = token_timed(KID_A, fx.a, 600, 0);
    assert_int_equal(verify_str(v, tok), VFY_REVOKED_KID);
    free(tok);
    /* KID_C has no key in the JWKS any more: still revoked_kid, not unknown_kid. */
    tok = token_timed(KID_C, fx.a, 600, 0);
    assert_int_equal(verify_str(v, tok), VFY_REVOKED_KID);
    free(tok);
    tok = token_timed(KID_B, fx.b, 600, 0);
    assert_int_equal(verify_str(v, tok), VFY_OK);
    free(tok);
    free(feed);
    vfy_close(v);
}

static void test_revocation_comes_before_the_signature_and_time_checks(void **state)
{
    (void)state;
    vfy_config cfg;
    vfy_config_default(&cfg);
    const char *kids[] = {KID_A};
    char *feed = feed_make(1, 0, kids, 1);
    vfy *v = open_with(&cfg, feed);
    char *tok = token_timed(KID_A, fx.b, -60, 0); /* wrong key and expired */
    assert_int_equal(verify_str(v, tok), VFY_REVOKED_KID);
    free(tok);
    free(feed);
    vfy_close(v);
}

static void test_delta_feed_adds_to_the_revoked_set(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *ta = token_timed(KID_A, fx.a, 600, 0), *tb = token_timed(KID_B, fx.b, 600, 0);
    const char *k1[] = {KID_A}, *k2[] = {KID_B};
    char *f1 = feed_make(1, 0, k1, 1), *f2 = feed_make(2, 1, k2, 1);
    assert_int_equal(vfy_apply_feed(v, f1, strlen(f1)), VFY_FEED_OK);
    assert_int_equal(verify_str(v, ta), VFY_REVOKED_KID);
    assert_int_equal(verify_str(v, tb), VFY_OK);
    assert_int_equal(vfy_apply_feed(v, f2, strlen(f2)), VFY_FEED_OK);
    assert_int_equal(verify_str(v, ta), VFY_REVOKED_KID); /* a delta never un-revokes */
    assert_int_equal(verify_str(v, tb), VFY_REVOKED_KID);
    struct vfy_stats s;
    vfy_stats(v, &s);
    assert_int_equal(s.seq, 2);
    assert_int_equal(s.revoked, 2);
    /* The same seq again (a refresh with no news) is accepted and changes nothing. */
    assert_int_equal(vfy_apply_feed(v, f2, strlen(f2)), VFY_FEED_OK);
    /* A full list at a later seq that repeats them is fine too. */
    const char *k3[] = {KID_A, KID_B, KID_C};
    char *f3 = feed_make(3, 0, k3, 3);
    assert_int_equal(vfy_apply_feed(v, f3, strlen(f3)), VFY_FEED_OK);
    vfy_stats(v, &s);
    assert_int_equal(s.seq, 3);
    assert_int_equal(s.revoked, 3);
    free(f1);
    free(f2);
    free(f3);
    free(ta);
    free(tb);
    vfy_close(v);
}

static void test_rollback_and_gap_are_refused_by_a_running_verifier(void **state)
{
    (void)state;
    vfy_config cfg;
    vfy_config_default(&cfg);
    const char *kids[] = {KID_A, KID_C};
    char *f2 = feed_make(2, 0, kids, 2);
    vfy *v = open_with(&cfg, f2);
    /* An older full feed (seq 1) would forget KID_C's revocation: refused. */
    char *f1 = feed_make(1, 0, kids, 1);
    assert_int_equal(vfy_apply_feed(v, f1, strlen(f1)), VFY_FEED_ROLLBACK);
    /* A delta from seq 5 when we are at 2: revocations 3..5 would be missed. */
    const char *k6[] = {KID_B};
    char *f6 = feed_make(6, 5, k6, 1);
    assert_int_equal(vfy_apply_feed(v, f6, strlen(f6)), VFY_FEED_GAP);
    char *tok = token_timed(KID_B, fx.b, 600, 0);
    assert_int_equal(verify_str(v, tok), VFY_OK);
    struct vfy_stats s;
    vfy_stats(v, &s);
    assert_int_equal(s.seq, 2);
    assert_int_equal(s.feeds_refused, 2);
    free(tok);
    free(f1);
    free(f2);
    free(f6);
    vfy_close(v);
}

static void test_feed_older_than_max_age_without_stream_is_feed_stale(void **state)
{
    (void)state;
    long now = (long)time(NULL);
    char *p = feed_payload(0, 0, now - 400, now + 500, NULL, 0);
    char *feed = feed_sign(p, fx.pub, VFY_FEED_TYP);
    char *tok = token_timed(KID_A, fx.a, 600, 0);
    vfy_config cfg;
    vfy_config_default(&cfg);
    cfg.max_feed_age = 300;
    vfy *v = open_with(&cfg, feed);
    assert_int_equal(verify_str(v, tok), VFY_FEED_STALE);
    vfy_close(v);
    cfg.max_feed_age = 600;
    v = open_with(&cfg, feed);
    assert_int_equal(verify_str(v, tok), VFY_OK);
    vfy_close(v);
    free(tok);
    free(feed);
    free(p);
}

static void test_feed_past_its_exp_fails_closed(void **state)
{
    (void)state;
    long now = (long)time(NULL);
    char *p = feed_payload(0, 0, now - 1, now + 2, NULL, 0);
    char *feed = feed_sign(p, fx.pub, VFY_FEED_TYP);
    vfy_config cfg;
    vfy_config_default(&cfg);
    vfy *v = open_with(&cfg, feed);
    char *tok = token_timed(KID_A, fx.a, 600, 0);
    assert_int_equal(verify_str(v, tok), VFY_OK);
    while ((long)time(NULL) < now + 2)
        usleep(50 * 1000);
    assert_int_equal(verify_str(v, tok), VFY_FEED_STALE);
    /* Stale comes before the kid: even an unknown kid answers feed_stale. */
    char *unknown = token_timed(KID_C, fx.a, 600, 0);
    assert_int_equal(verify_str(v, unknown), VFY_FEED_STALE);
    free(unknown);
    free(tok);
    free(feed);
    free(p);
    vfy_close(v);
}

/* Feeds one Server-Sent Event to v's parser, as the background thread would. */
static void sse_event(vfy *v, const char *event, const char *data)
{
    char text[512];
    snprintf(text, sizeof(text), "event: %s\ndata: %s\n\n", event, data);
    assert_int_equal(vfy_sse_bytes(v, text, strlen(text)), 0);
}

static void test_verifier_fails_closed_when_told_of_a_newer_seq_it_cannot_fetch(void **state)
{
    (void)state;
    vfy_config cfg;
    vfy_config_default(&cfg);
    cfg.behind_grace = 1;
    char *f0 = feed_make(0, 0, NULL, 0);
    vfy *v = open_with(&cfg, f0);
    char *tok = token_timed(KID_A, fx.a, 600, 0);
    /* A hello at our own seq says nothing new. */
    sse_event(v, "hello", "{\"seq\":0}");
    struct vfy_stats s;
    vfy_stats(v, &s);
    assert_false(s.behind);
    /* Told of seq 1: within the grace the feed we hold still answers... */
    sse_event(v, "revocation", "{\"seq\":1,\"kid\":\"" KID_A "\"}");
    vfy_stats(v, &s);
    assert_true(s.behind);
    assert_int_equal(s.announced_seq, 1);
    assert_int_equal(verify_str(v, tok), VFY_OK);
    /* ...past it, nothing does, whatever the old feed's exp says. */
    usleep(1100 * 1000);
    assert_int_equal(verify_str(v, tok), VFY_FEED_STALE);
    /* A copy of the old seq (what the appliance serves while it cannot sign) is accepted
     * and changes nothing. */
    char *f0b = feed_make(0, 0, NULL, 0);
    assert_int_equal(vfy_apply_feed(v, f0b, strlen(f0b)), VFY_FEED_OK);
    assert_int_equal(verify_str(v, tok), VFY_FEED_STALE);
    /* The feed that reaches the announced seq ends it. */
    const char *k1[] = {KID_A};
    char *f1 = feed_make(1, 0, k1, 1);
    assert_int_equal(vfy_apply_feed(v, f1, strlen(f1)), VFY_FEED_OK);
    vfy_stats(v, &s);
    assert_false(s.behind);
    assert_int_equal(verify_str(v, tok), VFY_REVOKED_KID);
    char *tb = token_timed(KID_B, fx.b, 600, 0);
    assert_int_equal(verify_str(v, tb), VFY_OK);
    free(tb);
    free(f1);
    free(f0b);
    free(f0);
    free(tok);
    vfy_close(v);
}

static void test_wait_seq_returns_once_the_feed_is_applied(void **state)
{
    (void)state;
    vfy *v = open_default();
    assert_true(vfy_wait_seq(v, 0, 0));
    assert_false(vfy_wait_seq(v, 1, 20));
    const char *kids[] = {KID_A};
    char *f = feed_make(1, 0, kids, 1);
    assert_int_equal(vfy_apply_feed(v, f, strlen(f)), VFY_FEED_OK);
    assert_true(vfy_wait_seq(v, 1, 0));
    free(f);
    vfy_close(v);
}

typedef struct {
    vfy *v;
    const char *token;
    int bad; /* answers other than ok */
} verify_loop;

static void *verify_loop_run(void *arg)
{
    verify_loop *l = arg;
    for (int i = 0; i < 200; i++)
        if (vfy_verify(l->v, l->token, NULL) != VFY_OK)
            l->bad++;
    return NULL;
}

static void test_concurrent_verification_while_feeds_apply(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *tok = token_timed(KID_B, fx.b, 600, 0);
    verify_loop loops[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        loops[i] = (verify_loop){v, tok, 0};
        assert_int_equal(pthread_create(&th[i], NULL, verify_loop_run, &loops[i]), 0);
    }
    /* Meanwhile, 50 feeds each revoke one more (made-up) kid. */
    char kids[50][VFY_KID_LEN + 1];
    for (int i = 0; i < 50; i++) {
        snprintf(kids[i], sizeof(kids[i]), "%032x", 0x1000 + i);
        const char *one[] = {kids[i]};
        char *f = feed_make((uint64_t)i + 1, (uint64_t)i, one, 1);
        assert_int_equal(vfy_apply_feed(v, f, strlen(f)), VFY_FEED_OK);
        free(f);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(loops[i].bad, 0);
    }
    struct vfy_stats s;
    vfy_stats(v, &s);
    assert_int_equal(s.seq, 50);
    assert_int_equal(s.revoked, 50);
    char *revoked = token_timed(kids[17], fx.a, 600, 0);
    assert_int_equal(verify_str(v, revoked), VFY_REVOKED_KID);
    free(revoked);
    free(tok);
    vfy_close(v);
}

static void test_result_names_are_stable(void **state)
{
    (void)state;
    assert_string_equal(vfy_result_name(VFY_OK), "ok");
    assert_string_equal(vfy_result_name(VFY_MALFORMED), "malformed");
    assert_string_equal(vfy_result_name(VFY_ALG_NOT_ALLOWED), "alg_not_allowed");
    assert_string_equal(vfy_result_name(VFY_FEED_STALE), "feed_stale");
    assert_string_equal(vfy_result_name(VFY_UNKNOWN_KID), "unknown_kid");
    assert_string_equal(vfy_result_name(VFY_REVOKED_KID), "revoked_kid");
    assert_string_equal(vfy_result_name(VFY_BAD_SIGNATURE), "bad_signature");
    assert_string_equal(vfy_result_name(VFY_EXPIRED), "expired");
    assert_string_equal(vfy_result_name(VFY_NOT_YET_VALID), "not_yet_valid");
    assert_string_equal(vfy_result_name(VFY_REVOKED_TOKEN), "revoked_token");
    assert_string_equal(vfy_result_name(VFY_WRONG_ORIGIN), "wrong_origin");
    assert_string_equal(vfy_result_name(VFY_ALREADY_USED), "already_used");
    assert_string_equal(vfy_result_name(VFY_REDEEM_FAILED), "redeem_failed");
    assert_string_equal(vfy_result_name((vfy_result)99), "invalid");
    assert_string_equal(vfy_err_name(VFY_E_CREDENTIAL), "credential");
}

/* ---- the feed, checked alone ------------------------------------------------------------ */

static void test_valid_feed_is_accepted_with_its_fields(void **state)
{
    (void)state;
    const char *kids[] = {KID_A, KID_B};
    long now = (long)time(NULL);
    char *p = feed_payload(7, 5, now, now + 900, kids, 2);
    char *f = feed_sign(p, fx.pub, VFY_FEED_TYP);
    vfy_feed out;
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 5, &out), VFY_FEED_OK);
    assert_int_equal(out.seq, 7);
    assert_int_equal(out.after, 5);
    assert_int_equal(out.iat, now);
    assert_int_equal(out.exp, now + 900);
    assert_int_equal(out.ttl, 60);
    assert_int_equal(out.n_revoked, 2);
    assert_string_equal(out.revoked[0].kid, KID_A);
    assert_int_equal(out.revoked[0].seq, 6);
    assert_string_equal(out.revoked[1].kid, KID_B);
    vfy_feed_free(&out);
    vfy_feed_free(&out); /* twice is fine */
    free(f);
    free(p);
}

static void test_feed_with_a_kid_removed_and_the_signature_kept_is_refused(void **state)
{
    (void)state;
    const char *kids[] = {KID_A, KID_B};
    long now = (long)time(NULL);
    char *p = feed_payload(2, 0, now, now + 900, kids, 2);
    char *f = feed_sign(p, fx.pub, VFY_FEED_TYP);
    /* The same document with KID_B's entry cut out (and seq kept): a censoring cache. */
    json_t *j = json_loads(p, 0, NULL);
    json_array_remove(json_object_get(j, "revoked"), 1);
    char *cut = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    char *forged = swap_payload(f, cut);
    vfy_feed out;
    assert_int_equal(vfy_feed_check(&fx.pin, forged, strlen(forged), now, 0, &out),
                     VFY_FEED_BAD_SIGNATURE);
    assert_null(out.revoked);
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 0, &out), VFY_FEED_OK);
    vfy_feed_free(&out);
    free(forged);
    free(cut);
    free(f);
    free(p);
}

static void test_feed_signed_by_another_key_is_refused(void **state)
{
    (void)state;
    long now = (long)time(NULL);
    char *p = feed_payload(0, 0, now, now + 900, NULL, 0);
    char *f = feed_sign(p, fx.other, VFY_FEED_TYP);
    vfy_feed out;
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 0, &out), VFY_FEED_BAD_SIGNATURE);
    /* By a client key of the JWKS: no better. */
    free(f);
    f = feed_sign(p, fx.a, VFY_FEED_TYP);
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 0, &out), VFY_FEED_BAD_SIGNATURE);
    /* And a verifier refuses to open on it. */
    vfy *v = NULL;
    vfy_config cfg;
    vfy_config_default(&cfg);
    char err[256];
    assert_int_equal(vfy_open_documents(&cfg, &fx.pin, fx.jwks, strlen(fx.jwks), f, strlen(f), &v,
                                        err, sizeof(err)),
                     VFY_E_FEED);
    assert_null(v);
    assert_non_null(strstr(err, "bad_signature"));
    free(f);
    free(p);
}

static void test_feed_with_wrong_typ_or_alg_is_refused(void **state)
{
    (void)state;
    long now = (long)time(NULL);
    char *p = feed_payload(0, 0, now, now + 900, NULL, 0);
    static const char *const typs[] = {"JWT", "kid-revocation+JWT", "kid-revocation+jwt ", ""};
    vfy_feed out;
    for (size_t i = 0; i < sizeof(typs) / sizeof(typs[0]); i++) {
        char *f = feed_sign(p, fx.pub, typs[i]);
        assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 0, &out), VFY_FEED_BAD_HEADER);
        free(f);
    }
    /* No typ at all; alg RS512 (signed with SHA-512); alg none. */
    char *f = jws_make("{\"alg\":\"RS256\"}", p, fx.pub, SIG_RS256);
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 0, &out), VFY_FEED_BAD_HEADER);
    free(f);
    f = jws_make("{\"alg\":\"RS512\",\"typ\":\"kid-revocation+jwt\"}", p, fx.pub, SIG_RS512);
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 0, &out), VFY_FEED_BAD_HEADER);
    free(f);
    f = jws_make("{\"alg\":\"none\",\"typ\":\"kid-revocation+jwt\"}", p, NULL, SIG_NONE);
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 0, &out), VFY_FEED_BAD_HEADER);
    free(f);
    free(p);
}

static void test_feed_with_lower_seq_than_accepted_is_a_rollback(void **state)
{
    (void)state;
    const char *kids[] = {KID_A};
    long now = (long)time(NULL);
    char *p = feed_payload(4, 0, now, now + 900, kids, 1);
    char *f = feed_sign(p, fx.pub, VFY_FEED_TYP);
    vfy_feed out;
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 5, &out), VFY_FEED_ROLLBACK);
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 4, &out), VFY_FEED_OK);
    vfy_feed_free(&out);
    free(f);
    free(p);
}

static void test_expired_feed_is_refused(void **state)
{
    (void)state;
    long now = (long)time(NULL);
    char *p = feed_payload(0, 0, now - 900, now - 1, NULL, 0);
    char *f = feed_sign(p, fx.pub, VFY_FEED_TYP);
    vfy_feed out;
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 0, &out), VFY_FEED_EXPIRED);
    /* Exactly at exp is too late. */
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now - 1, 0, &out), VFY_FEED_EXPIRED);
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now - 2, 0, &out), VFY_FEED_OK);
    vfy_feed_free(&out);
    free(f);
    free(p);
}

static void test_delta_starting_past_our_seq_is_a_gap(void **state)
{
    (void)state;
    const char *kids[] = {KID_A};
    long now = (long)time(NULL);
    char *p = feed_payload(9, 8, now, now + 900, kids, 1);
    char *f = feed_sign(p, fx.pub, VFY_FEED_TYP);
    vfy_feed out;
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 7, &out), VFY_FEED_GAP);
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 8, &out), VFY_FEED_OK);
    vfy_feed_free(&out);
    /* A server may answer with a smaller after than asked (or the full list): fine. */
    assert_int_equal(vfy_feed_check(&fx.pin, f, strlen(f), now, 9, &out), VFY_FEED_OK);
    vfy_feed_free(&out);
    free(f);
    free(p);
}

static void test_feed_payload_out_of_shape_is_malformed(void **state)
{
    (void)state;
    long now = (long)time(NULL), exp = now + 900;
    char bad[16][512];
    int k = 0;
    const char *e = "{\"seq\":1,\"kid\":\"" KID_A "\",\"revoked_at\":1,\"reason\":\"r\"}";
    snprintf(bad[k++], 512,
             "{\"seq\":1,\"after\":0,\"iat\":%ld,\"exp\":%ld,\"ttl\":1,\"revoked\":[%s]}", now, exp,
             e); /* no iss */
    snprintf(
        bad[k++], 512,
        "{\"iss\":\"i\",\"seq\":1,\"after\":2,\"iat\":%ld,\"exp\":%ld,\"ttl\":1,\"revoked\":[]}",
        now, exp); /* after > seq */
    snprintf(
        bad[k++], 512,
        "{\"iss\":\"i\",\"seq\":-1,\"after\":0,\"iat\":%ld,\"exp\":%ld,\"ttl\":1,\"revoked\":[]}",
        now, exp);
    snprintf(
        bad[k++], 512,
        "{\"iss\":\"i\",\"seq\":0,\"after\":0,\"iat\":%ld,\"exp\":%ld,\"ttl\":1,\"revoked\":[]}",
        now, now); /* exp not after iat */
    snprintf(
        bad[k++], 512,
        "{\"iss\":\"i\",\"seq\":0,\"after\":0,\"iat\":%ld,\"exp\":%ld,\"ttl\":1,\"revoked\":{}}",
        now, exp);
    snprintf(
        bad[k++], 512,
        "{\"iss\":\"i\",\"seq\":0,\"after\":0,\"iat\":%ld,\"exp\":%ld,\"ttl\":1,\"revoked\":[%s]}",
        now, exp, e); /* more entries than seq - after */
    snprintf(bad[k++], 512,
             "{\"iss\":\"i\",\"seq\":2,\"after\":0,\"iat\":%ld,\"exp\":%ld,\"ttl\":1,\"revoked\":[%"
             "s,%s]}",
             now, exp, e, e); /* the same seq twice */
    snprintf(bad[k++], 512,
             "{\"iss\":\"i\",\"seq\":1,\"after\":0,\"iat\":%ld,\"exp\":%ld,\"ttl\":1,\"revoked\":[{"
             "\"seq\":1,\"kid\":\"ABCDEF0123456789ABCDEF0123456789\",\"revoked_at\":1,\"reason\":"
             "\"r\"}]}",
             now, exp); /* kid not lowercase hex */
    snprintf(bad[k++], 512,
             "{\"iss\":\"i\",\"seq\":1,\"after\":0,\"iat\":%ld,\"exp\":%ld,\"ttl\":1,\"revoked\":[{"
             "\"seq\":1,\"kid\":\"" KID_A "\",\"revoked_at\":1}]}",
             now, exp); /* no reason */
    snprintf(bad[k++], 512,
             "{\"iss\":\"i\",\"seq\":1,\"after\":0,\"iat\":%ld,\"exp\":%ld,\"ttl\":1,\"revoked\":[{"
             "\"seq\":5,\"kid\":\"" KID_A "\",\"revoked_at\":1,\"reason\":\"r\"}]}",
             now, exp); /* entry seq past the feed's seq */
    snprintf(bad[k++], 512, "[1,2,3]");
    snprintf(bad[k++], 512, "{\"iss\":\"i\",\"iss\":\"j\"}");
    vfy_feed out;
    for (int i = 0; i < k; i++) {
        char *f = feed_sign(bad[i], fx.pub, VFY_FEED_TYP);
        if (vfy_feed_check(&fx.pin, f, strlen(f), now, 0, &out) != VFY_FEED_MALFORMED)
            fail_msg("payload %d was not malformed: %s", i, bad[i]);
        free(f);
    }
    assert_int_equal(vfy_feed_check(&fx.pin, "a.b", 3, now, 0, &out), VFY_FEED_MALFORMED);
    assert_int_equal(vfy_feed_check(&fx.pin, NULL, 0, now, 0, &out), VFY_FEED_MALFORMED);
    assert_int_equal(vfy_feed_check(NULL, "a.b.c", 5, now, 0, &out), VFY_FEED_MALFORMED);
}

/* ---- keys ------------------------------------------------------------------------------- */

static void test_pinned_key_file_is_loaded_and_bad_ones_are_refused(void **state)
{
    (void)state;
    char dir[] = "/tmp/signd-vfy-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[PATH_MAX], err[256];
    snprintf(path, sizeof(path), "%s/pub.pem", dir);
    char *pem = pem_of(fx.pub);
    FILE *f = fopen(path, "w");
    fputs(pem, f);
    fclose(f);
    vfy_pubkey k;
    assert_int_equal(vfy_pubkey_load(path, &k, err, sizeof(err)), VFY_E_OK);
    assert_int_equal(k.n_len, fx.pin.n_len);
    assert_memory_equal(k.n, fx.pin.n, k.n_len);
    assert_memory_equal(k.e, fx.pin.e, k.e_len);

    /* Missing file: the message names it. */
    snprintf(path, sizeof(path), "%s/missing.pem", dir);
    assert_int_equal(vfy_pubkey_load(path, &k, err, sizeof(err)), VFY_E_KEY);
    assert_non_null(strstr(err, "missing.pem"));
    /* Not a PEM; an EC key; a 1024-bit RSA key. */
    snprintf(path, sizeof(path), "%s/junk.pem", dir);
    f = fopen(path, "w");
    fputs("hello\n", f);
    fclose(f);
    assert_int_equal(vfy_pubkey_load(path, &k, err, sizeof(err)), VFY_E_KEY);
    EVP_PKEY *ec = EVP_EC_gen("P-256");
    char *ecpem = pem_of(ec);
    f = fopen(path, "w");
    fputs(ecpem, f);
    fclose(f);
    assert_int_equal(vfy_pubkey_load(path, &k, err, sizeof(err)), VFY_E_KEY);
    EVP_PKEY *small = EVP_RSA_gen(1024);
    char *smallpem = pem_of(small);
    f = fopen(path, "w");
    fputs(smallpem, f);
    fclose(f);
    assert_int_equal(vfy_pubkey_load(path, &k, err, sizeof(err)), VFY_E_KEY);
    assert_non_null(strstr(err, "2048"));
    unlink(path);
    snprintf(path, sizeof(path), "%s/pub.pem", dir);
    unlink(path);
    rmdir(dir);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(small);
    free(ecpem);
    free(smallpem);
    free(pem);
}

static void test_jwk_decode_reverses_jose_jwk_rsa(void **state)
{
    (void)state;
    json_t *j = jwk_of(fx.a, KID_A, "sig");
    uint8_t n[JOSE_RSA_MAX], e[JOSE_RSA_MAX], n2[JOSE_RSA_MAX], e2[JOSE_RSA_MAX];
    size_t n_len, e_len;
    assert_int_equal(jose_jwk_rsa_decode(j, n, &n_len, e, &e_len), 0);
    size_t n2_len = bn_bytes(fx.a, OSSL_PKEY_PARAM_RSA_N, n2);
    size_t e2_len = bn_bytes(fx.a, OSSL_PKEY_PARAM_RSA_E, e2);
    assert_int_equal(n_len, n2_len);
    assert_memory_equal(n, n2, n_len);
    assert_int_equal(e_len, e2_len);
    assert_memory_equal(e, e2, e_len);
    /* Not RSA, padded base64url, missing e: refused. */
    json_object_set_new(j, "kty", json_string("EC"));
    assert_int_equal(jose_jwk_rsa_decode(j, n, &n_len, e, &e_len), -1);
    json_object_set_new(j, "kty", json_string("RSA"));
    json_object_set_new(j, "e", json_string("AQAB=="));
    assert_int_equal(jose_jwk_rsa_decode(j, n, &n_len, e, &e_len), -1);
    json_object_del(j, "e");
    assert_int_equal(jose_jwk_rsa_decode(j, n, &n_len, e, &e_len), -1);
    assert_int_equal(n_len, 0);
    json_decref(j);
}

static void test_config_out_of_range_and_documents_are_refused(void **state)
{
    (void)state;
    vfy_config cfg;
    vfy_config_default(&cfg);
    assert_int_equal(cfg.max_feed_age, 300);
    assert_int_equal(cfg.jwks_cooldown, 10);
    assert_int_equal(cfg.leeway, 0);
    char *feed = feed_make(0, 0, NULL, 0);
    vfy *v = NULL;
    char err[256];
    cfg.max_feed_age = 0;
    assert_int_equal(vfy_open_documents(&cfg, &fx.pin, fx.jwks, strlen(fx.jwks), feed, strlen(feed),
                                        &v, err, sizeof(err)),
                     VFY_E_CONFIG);
    vfy_config_default(&cfg);
    assert_int_equal(
        vfy_open_documents(&cfg, &fx.pin, "[]", 2, feed, strlen(feed), &v, err, sizeof(err)),
        VFY_E_JWKS);
    assert_int_equal(vfy_open_documents(&cfg, &fx.pin, "{\"keys\":{}}", 11, feed, strlen(feed), &v,
                                        err, sizeof(err)),
                     VFY_E_JWKS);
    /* vfy_open refuses a URL that is not https, and a missing CA file, before any request. */
    cfg.url = "http://127.0.0.1:1";
    cfg.cacert = "/nonexistent/ca.pem";
    cfg.feed_key = "/nonexistent/pub.pem";
    assert_int_equal(vfy_open(&cfg, &v, err, sizeof(err)), VFY_E_CONFIG);
    assert_non_null(strstr(err, "https"));
    cfg.url = "https://127.0.0.1:1";
    assert_int_equal(vfy_open(&cfg, &v, err, sizeof(err)), VFY_E_CONFIG);
    assert_non_null(strstr(err, "/nonexistent/ca.pem"));
    assert_null(v);
    free(feed);
}

/* ---- status lists, checked alone -------------------------------------------------------- */

static void test_valid_status_list_is_accepted_and_exposes_its_bits(void **state)
{
    (void)state;
    const uint32_t revoked[] = {0, 9, 4242, VFY_STATUS_LIST_BYTES * 8 - 1};
    char *doc = slist_make(LIST0, revoked, 4);
    long now = (long)time(NULL);
    vfy_status_list l;
    assert_int_equal(vfy_status_list_check(&fx.pin, doc, strlen(doc), now, &l), VFY_FEED_OK);
    assert_string_equal(l.sub, LIST0);
    assert_int_equal(l.iat, now);
    assert_int_equal(l.exp, now + 900);
    assert_int_equal(l.ttl, 60);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(vfy_status_list_bit(&l, revoked[i]), 1);
    /* Bit i is byte i / 8, bit i % 8 from the least significant: 9 is byte 1, bit 1. */
    assert_int_equal(l.bits[1], 0x02);
    assert_int_equal(l.bits[0], 0x01);
    assert_int_equal(vfy_status_list_bit(&l, 1), 0);
    assert_int_equal(vfy_status_list_bit(&l, 8), 0);
    assert_int_equal(vfy_status_list_bit(&l, 4243), 0);
    assert_int_equal(vfy_status_list_bit(&l, VFY_STATUS_LIST_BYTES * 8), -1);
    vfy_status_list_free(&l);
    vfy_status_list_free(&l); /* twice is fine */
    assert_null(l.bits);
    free(doc);
}

static void test_status_list_with_wrong_typ_alg_or_key_is_refused(void **state)
{
    (void)state;
    uint8_t *bits = calloc(1, VFY_STATUS_LIST_BYTES);
    long now = (long)time(NULL);
    vfy_status_list l;
    /* The feed's typ, signed by the same key: not a status list. */
    char *doc =
        slist_doc(bits, VFY_STATUS_LIST_BYTES, LIST0, now, now + 900, fx.pub, VFY_FEED_TYP, NULL);
    assert_int_equal(vfy_status_list_check(&fx.pin, doc, strlen(doc), now, &l),
                     VFY_FEED_BAD_HEADER);
    assert_null(l.bits);
    free(doc);
    /* Nor is a status list a feed. */
    doc = slist_doc(bits, VFY_STATUS_LIST_BYTES, LIST0, now, now + 900, fx.pub, VFY_STATUS_LIST_TYP,
                    NULL);
    vfy_feed f;
    assert_int_equal(vfy_feed_check(&fx.pin, doc, strlen(doc), now, 0, &f), VFY_FEED_BAD_HEADER);
    /* Checked under another key. */
    assert_int_equal(vfy_status_list_check(&fx.other_pin, doc, strlen(doc), now, &l),
                     VFY_FEED_BAD_SIGNATURE);
    free(doc);
    /* Signed by another key. */
    doc = slist_doc(bits, VFY_STATUS_LIST_BYTES, LIST0, now, now + 900, fx.other,
                    VFY_STATUS_LIST_TYP, NULL);
    assert_int_equal(vfy_status_list_check(&fx.pin, doc, strlen(doc), now, &l),
                     VFY_FEED_BAD_SIGNATURE);
    free(doc);
    /* alg none, and a lookalike typ. */
    const char *payload = "{\"sub\":\"x\",\"iat\":1,\"exp\":2,\"ttl\":1,\"status_list\":{}}";
    doc = jws_make("{\"alg\":\"none\",\"typ\":\"statuslist+jwt\"}", payload, NULL, SIG_NONE);
    assert_int_equal(vfy_status_list_check(&fx.pin, doc, strlen(doc), now, &l),
                     VFY_FEED_BAD_HEADER);
    free(doc);
    doc = jws_make("{\"alg\":\"RS256\",\"typ\":\"StatusList+JWT\"}", payload, fx.pub, SIG_RS256);
    assert_int_equal(vfy_status_list_check(&fx.pin, doc, strlen(doc), now, &l),
                     VFY_FEED_BAD_HEADER);
    free(doc);
    free(bits);
}

static void test_status_list_that_inflates_to_another_size_is_malformed(void **state)
{
    (void)state;
    long now = (long)time(NULL);
    vfy_status_list l;
    /* A zip bomb: 16 MiB of zeros, 16 KiB compressed. The inflater stops at the bound. */
    size_t big = 16u << 20;
    uint8_t *bits = calloc(1, big);
    assert_non_null(bits);
    const size_t sizes[] = {0, 1, VFY_STATUS_LIST_BYTES - 1, VFY_STATUS_LIST_BYTES + 1, big};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(*sizes); i++) {
        char *doc =
            slist_doc(bits, sizes[i], LIST0, now, now + 900, fx.pub, VFY_STATUS_LIST_TYP, NULL);
        assert_int_equal(vfy_status_list_check(&fx.pin, doc, strlen(doc), now, &l),
                         VFY_FEED_MALFORMED);
        assert_null(l.bits);
        free(doc);
    }
    /* The right size, and bytes after the end of the zlib stream. */
    char *doc = slist_doc(bits, VFY_STATUS_LIST_BYTES, LIST0, now, now + 900, fx.pub,
                          VFY_STATUS_LIST_TYP, "junk");
    assert_int_equal(vfy_status_list_check(&fx.pin, doc, strlen(doc), now, &l), VFY_FEED_MALFORMED);
    free(doc);
    free(bits);
}

static void test_status_list_payload_out_of_shape_is_malformed(void **state)
{
    (void)state;
    long now = (long)time(NULL);
    /* A good lst to put into payloads that are wrong elsewhere. */
    uint8_t *bits = calloc(1, VFY_STATUS_LIST_BYTES);
    uLongf zlen = compressBound(VFY_STATUS_LIST_BYTES);
    uint8_t *z = malloc(zlen);
    assert_int_equal(compress2(z, &zlen, bits, VFY_STATUS_LIST_BYTES, 9), Z_OK);
    char lst[4096];
    assert_true(jose_b64url_encode(z, zlen, lst, sizeof(lst)) > 0);
    /* Raw DEFLATE (no zlib header) is not what the appliance sends. */
    char raw[4096];
    assert_true(jose_b64url_encode(z + 2, zlen - 6, raw, sizeof(raw)) > 0);
    free(z);
    free(bits);
    char good[8192];
    snprintf(good, sizeof(good),
             "{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld,\"ttl\":60,"
             "\"status_list\":{\"bits\":1,\"lst\":\"%s\"}}",
             LIST0, now, now + 900, lst);
    char *doc = feed_sign(good, fx.pub, VFY_STATUS_LIST_TYP);
    vfy_status_list l;
    assert_int_equal(vfy_status_list_check(&fx.pin, doc, strlen(doc), now, &l), VFY_FEED_OK);
    vfy_status_list_free(&l);
    free(doc);
    char bad[16][8192];
    int n = 0;
#define BAD(...) snprintf(bad[n++], sizeof(bad[0]), __VA_ARGS__)
    BAD("{\"iat\":%ld,\"exp\":%ld,\"ttl\":60,\"status_list\":{\"bits\":1,\"lst\":\"%s\"}}", now,
        now + 900, lst);
    BAD("{\"sub\":\"\",\"iat\":%ld,\"exp\":%ld,\"ttl\":60,\"status_list\":{\"bits\":1,\"lst\":"
        "\"%s\"}}",
        now, now + 900, lst);
    BAD("{\"sub\":\"%s\",\"iss\":7,\"iat\":%ld,\"exp\":%ld,\"ttl\":60,\"status_list\":{\"bits\":1,"
        "\"lst\":\"%s\"}}",
        LIST0, now, now + 900, lst);
    BAD("{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld,\"ttl\":60,\"status_list\":{\"bits\":2,\"lst\":"
        "\"%s\"}}",
        LIST0, now, now + 900, lst);
    BAD("{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld,\"ttl\":60,\"status_list\":{\"lst\":\"%s\"}}",
        LIST0, now, now + 900, lst);
    BAD("{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld,\"ttl\":60,\"status_list\":{\"bits\":1,\"lst\":"
        "\"%s=\"}}",
        LIST0, now, now + 900, lst);
    BAD("{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld,\"ttl\":60,\"status_list\":{\"bits\":1,\"lst\":"
        "\"%s\"}}",
        LIST0, now, now + 900, raw);
    BAD("{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld,\"ttl\":60,\"status_list\":{\"bits\":1,\"lst\":"
        "\"\"}}",
        LIST0, now, now + 900);
    BAD("{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld,\"ttl\":60,\"status_list\":\"%s\"}", LIST0, now,
        now + 900, lst);
    BAD("{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld,\"ttl\":60,\"status_list\":{\"bits\":1,\"lst\":"
        "\"%s\"}}",
        LIST0, now, now, lst); /* exp == iat */
    BAD("{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld,\"ttl\":-1,\"status_list\":{\"bits\":1,\"lst\":"
        "\"%s\"}}",
        LIST0, now, now + 900, lst);
    BAD("{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld.5,\"ttl\":60,\"status_list\":{\"bits\":1,\"lst\":"
        "\"%s\"}}",
        LIST0, now, now + 900, lst);
    BAD("[1,2,3]");
#undef BAD
    for (int i = 0; i < n; i++) {
        doc = feed_sign(bad[i], fx.pub, VFY_STATUS_LIST_TYP);
        if (vfy_status_list_check(&fx.pin, doc, strlen(doc), now, &l) != VFY_FEED_MALFORMED)
            fail_msg("accepted: %s", bad[i]);
        assert_null(l.bits);
        free(doc);
    }
}

static void test_expired_status_list_is_refused(void **state)
{
    (void)state;
    uint8_t *bits = calloc(1, VFY_STATUS_LIST_BYTES);
    long now = (long)time(NULL);
    char *doc = slist_doc(bits, VFY_STATUS_LIST_BYTES, LIST0, now - 900, now, fx.pub,
                          VFY_STATUS_LIST_TYP, NULL);
    vfy_status_list l;
    assert_int_equal(vfy_status_list_check(&fx.pin, doc, strlen(doc), now, &l), VFY_FEED_EXPIRED);
    assert_int_equal(vfy_status_list_check(&fx.pin, doc, strlen(doc), now - 1, &l), VFY_FEED_OK);
    vfy_status_list_free(&l);
    free(doc);
    free(bits);
}

/* ---- status lists, in the verifier ---------------------------------------------------------- */

static void test_revoked_token_is_revoked_token_and_its_sibling_verifies(void **state)
{
    (void)state;
    vfy *v = open_with_lists();
    const uint32_t revoked[] = {5};
    char *doc = slist_make(LIST0, revoked, 1);
    assert_int_equal(vfy_apply_status_list(v, LIST0, doc, strlen(doc)), VFY_FEED_OK);
    char *t5 = token_in_list(LIST0, 5), *t6 = token_in_list(LIST0, 6), *plain = token_with("");
    assert_int_equal(verify_str(v, t5), VFY_REVOKED_TOKEN);
    assert_int_equal(verify_str(v, t6), VFY_OK);
    assert_int_equal(verify_str(v, plain), VFY_OK);
    struct vfy_stats st;
    vfy_stats(v, &st);
    assert_int_equal(st.status_lists, 1);
    assert_int_equal(st.status_refused, 0);
    free(t5);
    free(t6);
    free(plain);
    free(doc);
    vfy_close(v);
}

static void test_token_whose_list_is_missing_or_old_fails_closed(void **state)
{
    (void)state;
    vfy *v = open_with_lists();
    /* Offline, nothing can fetch list 1: a revocable token cannot be vouched for. */
    char *t = token_in_list(LIST1, 3);
    assert_int_equal(verify_str(v, t), VFY_FEED_STALE);
    /* A list older than max_feed_age (300) without a stream is stale too. */
    uint8_t *bits = calloc(1, VFY_STATUS_LIST_BYTES);
    long now = (long)time(NULL);
    char *doc = slist_doc(bits, VFY_STATUS_LIST_BYTES, LIST1, now - 400, now + 900, fx.pub,
                          VFY_STATUS_LIST_TYP, NULL);
    assert_int_equal(vfy_apply_status_list(v, LIST1, doc, strlen(doc)), VFY_FEED_OK);
    assert_int_equal(verify_str(v, t), VFY_FEED_STALE);
    free(doc);
    /* A fresh copy makes it answer. */
    doc = slist_make(LIST1, NULL, 0);
    assert_int_equal(vfy_apply_status_list(v, LIST1, doc, strlen(doc)), VFY_FEED_OK);
    assert_int_equal(verify_str(v, t), VFY_OK);
    free(doc);
    free(bits);
    free(t);
    vfy_close(v);
}

static void test_status_uri_outside_the_appliance_is_malformed(void **state)
{
    (void)state;
    vfy *v = open_with_lists();
    const char *uris[] = {
        "https://evil.test/v1/status-lists/0",
        BASE_URL ".evil.test/v1/status-lists/0", /* our url is a prefix of the host only */
        "http://signd.test:8443/v1/status-lists/0",
        BASE_URL "/v1/status-lists/",
        BASE_URL "/v1/status-lists/01",
        BASE_URL "/v1/status-lists/1024",
        BASE_URL "/v1/status-lists/-1",
        BASE_URL "/v1/status-lists/0?x=1",
        BASE_URL "/v1/status-lists/0/",
        BASE_URL "/v1/status-lists/../keys",
        BASE_URL "/v1/status-lists/1%30",
    };
    for (size_t i = 0; i < sizeof(uris) / sizeof(*uris); i++) {
        char *t = token_in_list(uris[i], 1);
        if (verify_str(v, t) != VFY_MALFORMED)
            fail_msg("not malformed: %s", uris[i]);
        free(t);
    }
    /* The shape of the claim, and the idx range. */
    char extra[512];
    const char *shapes[] = {
        "\"status\":\"revoked\"",
        "\"status\":{}",
        "\"status\":{\"status_list\":{\"uri\":\"" LIST0 "\"}}",
        "\"status\":{\"status_list\":{\"idx\":\"1\",\"uri\":\"" LIST0 "\"}}",
        "\"status\":{\"status_list\":{\"idx\":1.5,\"uri\":\"" LIST0 "\"}}",
        "\"status\":{\"status_list\":{\"idx\":-1,\"uri\":\"" LIST0 "\"}}",
        "\"status\":{\"status_list\":{\"idx\":1048576,\"uri\":\"" LIST0 "\"}}",
        "\"status\":{\"status_list\":{\"idx\":1}}",
        "\"origin\":7",
    };
    for (size_t i = 0; i < sizeof(shapes) / sizeof(*shapes); i++) {
        snprintf(extra, sizeof(extra), "%s", shapes[i]);
        char *t = token_with(extra);
        if (verify_str(v, t) != VFY_MALFORMED)
            fail_msg("not malformed: %s", shapes[i]);
        free(t);
    }
    /* The last index is fine (its list is not there: stale, not malformed). */
    char *t = token_in_list(LIST0, VFY_STATUS_LIST_BYTES * 8 - 1);
    assert_int_equal(verify_str(v, t), VFY_FEED_STALE);
    free(t);
    vfy_close(v);
    /* A verifier given no url accepts no status list at all. */
    v = open_default();
    t = token_in_list(LIST0, 1);
    assert_int_equal(verify_str(v, t), VFY_MALFORMED);
    free(t);
    vfy_close(v);
}

static void test_status_list_served_under_another_uri_is_refused(void **state)
{
    (void)state;
    vfy *v = open_with_lists();
    const uint32_t revoked[] = {2};
    char *doc0 = slist_make(LIST0, revoked, 1);
    assert_int_equal(vfy_apply_status_list(v, LIST1, doc0, strlen(doc0)), VFY_FEED_MALFORMED);
    assert_int_equal(
        vfy_apply_status_list(v, "https://evil.test/v1/status-lists/0", doc0, strlen(doc0)),
        VFY_FEED_MALFORMED);
    struct vfy_stats st;
    vfy_stats(v, &st);
    assert_int_equal(st.status_lists, 0);
    assert_int_equal(st.status_refused, 1);
    free(doc0);
    vfy_close(v);
}

static void test_older_copy_of_a_list_cannot_unrevoke_a_token(void **state)
{
    (void)state;
    vfy *v = open_with_lists();
    long now = (long)time(NULL);
    uint8_t *bits = calloc(1, VFY_STATUS_LIST_BYTES);
    char *older = slist_doc(bits, VFY_STATUS_LIST_BYTES, LIST0, now - 60, now + 840, fx.pub,
                            VFY_STATUS_LIST_TYP, NULL);
    bits[0] = 0x10; /* idx 4 */
    char *newer = slist_doc(bits, VFY_STATUS_LIST_BYTES, LIST0, now, now + 900, fx.pub,
                            VFY_STATUS_LIST_TYP, NULL);
    char *t4 = token_in_list(LIST0, 4);
    assert_int_equal(vfy_apply_status_list(v, LIST0, newer, strlen(newer)), VFY_FEED_OK);
    assert_int_equal(verify_str(v, t4), VFY_REVOKED_TOKEN);
    /* A cache hands out the copy from before the revocation: it checks out, and changes
     * nothing. */
    assert_int_equal(vfy_apply_status_list(v, LIST0, older, strlen(older)), VFY_FEED_OK);
    assert_int_equal(verify_str(v, t4), VFY_REVOKED_TOKEN);
    free(t4);
    free(older);
    free(newer);
    free(bits);
    vfy_close(v);
}

static void test_verifier_fails_closed_when_told_of_a_token_revocation_it_cannot_fetch(void **state)
{
    (void)state;
    vfy_config cfg;
    vfy_config_default(&cfg);
    cfg.url = BASE_URL "/";
    cfg.behind_grace = 1;
    char *feed = feed_make(0, 0, NULL, 0);
    vfy *v = open_with(&cfg, feed);
    char *doc = slist_make(LIST0, NULL, 0);
    char *t4 = token_in_list(LIST0, 4), *t5 = token_in_list(LIST0, 5);
    assert_int_equal(vfy_apply_status_list(v, LIST0, doc, strlen(doc)), VFY_FEED_OK);
    assert_int_equal(verify_str(v, t4), VFY_OK);
    /* Told that idx 4 of the list we keep was revoked: within the grace the list we hold
     * still answers; past it, no token of that list does. */
    sse_event(v, "token-revocation", "{\"seq\":1,\"list\":0,\"idx\":4,\"uri\":\"" LIST0 "\"}");
    assert_int_equal(verify_str(v, t4), VFY_OK);
    usleep(1100 * 1000);
    assert_int_equal(verify_str(v, t4), VFY_FEED_STALE);
    assert_int_equal(verify_str(v, t5), VFY_FEED_STALE);
    /* A copy without the bit (signed before the revocation) leaves it behind. */
    char *again = slist_make(LIST0, NULL, 0);
    assert_int_equal(vfy_apply_status_list(v, LIST0, again, strlen(again)), VFY_FEED_OK);
    assert_int_equal(verify_str(v, t5), VFY_FEED_STALE);
    /* The copy with the announced bit ends it. */
    const uint32_t revoked[] = {4};
    char *after = slist_make(LIST0, revoked, 1);
    assert_int_equal(vfy_apply_status_list(v, LIST0, after, strlen(after)), VFY_FEED_OK);
    assert_int_equal(verify_str(v, t4), VFY_REVOKED_TOKEN);
    assert_int_equal(verify_str(v, t5), VFY_OK);
    free(after);
    free(again);
    free(t4);
    free(t5);
    free(doc);
    free(feed);
    vfy_close(v);
}

static void test_revoked_token_comes_after_the_signature_and_time_checks(void **state)
{
    (void)state;
    vfy *v = open_with_lists();
    const uint32_t revoked[] = {7};
    char *doc = slist_make(LIST0, revoked, 1);
    assert_int_equal(vfy_apply_status_list(v, LIST0, doc, strlen(doc)), VFY_FEED_OK);
    long now = (long)time(NULL);
    char claims[512];
    snprintf(claims, sizeof(claims),
             "{\"sub\":\"v\",\"exp\":%ld,\"origin\":\"" ORIGIN_A "\","
             "\"status\":{\"status_list\":{\"idx\":7,\"uri\":\"" LIST0 "\"}}}",
             now - 1);
    char *expired = token_make("RS256", KID_A, claims, fx.a, SIG_RS256);
    assert_int_equal(verify_str(v, expired), VFY_EXPIRED);
    char *forged = token_make("RS256", KID_A, claims, fx.b, SIG_RS256);
    assert_int_equal(verify_str(v, forged), VFY_BAD_SIGNATURE);
    /* Revoked and from elsewhere: revoked first. */
    snprintf(claims, sizeof(claims),
             "{\"sub\":\"v\",\"exp\":%ld,\"origin\":\"" ORIGIN_A "\","
             "\"status\":{\"status_list\":{\"idx\":7,\"uri\":\"" LIST0 "\"}}}",
             now + 600);
    char *both = token_make("RS256", KID_A, claims, fx.a, SIG_RS256);
    assert_int_equal(vfy_verify_ex(v, both, ORIGIN_B, NULL), VFY_REVOKED_TOKEN);
    free(both);
    free(forged);
    free(expired);
    free(doc);
    vfy_close(v);
}

static void test_origin_bound_token_is_wrong_origin_elsewhere(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *bound = token_with("\"origin\":\"" ORIGIN_A "\"");
    char *free_token = token_with("");
    json_t *claims = (json_t *)1;
    assert_int_equal(vfy_verify_ex(v, bound, ORIGIN_B, &claims), VFY_WRONG_ORIGIN);
    assert_null(claims);
    assert_int_equal(vfy_verify_ex(v, bound, ORIGIN_A, &claims), VFY_OK);
    assert_string_equal(json_string_value(json_object_get(claims, "origin")), ORIGIN_A);
    json_decref(claims);
    /* Byte for byte: a trailing '/' or another case is another origin. */
    assert_int_equal(vfy_verify_ex(v, bound, ORIGIN_A "/", NULL), VFY_WRONG_ORIGIN);
    assert_int_equal(vfy_verify_ex(v, bound, "https://A.example", NULL), VFY_WRONG_ORIGIN);
    /* A token without origin passes anywhere, and with no origin named. */
    assert_int_equal(vfy_verify_ex(v, free_token, ORIGIN_B, NULL), VFY_OK);
    assert_int_equal(vfy_verify(v, free_token, NULL), VFY_OK);
    free(bound);
    free(free_token);
    vfy_close(v);
}

/* The fail-closed fix: a check that names no origin used to pass a bound token. */
static void test_an_origin_bound_token_checked_without_an_origin_is_origin_required(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *bound = token_with("\"origin\":\"" ORIGIN_A "\"");
    char *bound_many = token_with("\"origins\":[\"" ORIGIN_B "\",\"" ORIGIN_A "\"]");
    json_t *claims = (json_t *)1;
    assert_int_equal(vfy_verify(v, bound, &claims), VFY_ORIGIN_REQUIRED);
    assert_null(claims);
    assert_int_equal(vfy_verify_ex(v, bound, NULL, NULL), VFY_ORIGIN_REQUIRED);
    assert_int_equal(vfy_verify(v, bound_many, NULL), VFY_ORIGIN_REQUIRED);
    /* vfy_redeem checks first: nothing is sent for it either. */
    char detail[128];
    assert_int_equal(vfy_redeem(v, bound, NULL, NULL, detail, sizeof(detail)), VFY_ORIGIN_REQUIRED);
    assert_string_equal(vfy_result_name(VFY_ORIGIN_REQUIRED), "origin_required");
    free(bound);
    free(bound_many);
    vfy_close(v);
}

static void test_a_token_bound_to_origins_passes_from_each_and_no_other(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *bound = token_with("\"origins\":[\"" ORIGIN_B "\",\"" ORIGIN_A "\"]");
    assert_int_equal(vfy_verify_ex(v, bound, ORIGIN_A, NULL), VFY_OK);
    assert_int_equal(vfy_verify_ex(v, bound, ORIGIN_B, NULL), VFY_OK);
    assert_int_equal(vfy_verify_ex(v, bound, "https://c.example", NULL), VFY_WRONG_ORIGIN);
    assert_int_equal(vfy_verify_ex(v, bound, ORIGIN_A "/", NULL), VFY_WRONG_ORIGIN);
    /* Out of shape: empty, not strings, more than 16, or next to "origin". */
    const char *bad[] = {
        "\"origins\":[]",
        "\"origins\":\"" ORIGIN_A "\"",
        "\"origins\":[7]",
        "\"origins\":[\"" ORIGIN_A "\"],\"origin\":\"" ORIGIN_A "\"",
        "\"origins\":[\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\","
        "\"a\",\"a\",\"a\",\"a\",\"a\",\"a\"]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        char *t = token_with(bad[i]);
        if (vfy_verify_ex(v, t, ORIGIN_A, NULL) != VFY_MALFORMED)
            fail_msg("not malformed: %s", bad[i]);
        free(t);
    }
    free(bound);
    vfy_close(v);
}

static void test_a_token_for_another_audience_is_wrong_audience(void **state)
{
    (void)state;
    vfy_config cfg;
    vfy_config_default(&cfg);
    cfg.aud = "player";
    char *feed = feed_make(0, 0, NULL, 0);
    vfy *v = open_with(&cfg, feed);
    char *mine = token_with("\"aud\":\"player\"");
    char *in_list = token_with("\"aud\":[\"upload\",\"player\"]");
    char *other = token_with("\"aud\":\"upload\"");
    char *other_list = token_with("\"aud\":[\"upload\"]");
    char *none = token_with("");
    char *odd = token_with("\"aud\":7");
    assert_int_equal(verify_str(v, mine), VFY_OK);
    assert_int_equal(verify_str(v, in_list), VFY_OK);
    assert_int_equal(verify_str(v, other), VFY_WRONG_AUDIENCE);
    assert_int_equal(verify_str(v, other_list), VFY_WRONG_AUDIENCE);
    assert_int_equal(verify_str(v, none), VFY_WRONG_AUDIENCE);
    assert_int_equal(verify_str(v, odd), VFY_WRONG_AUDIENCE);
    assert_string_equal(vfy_result_name(VFY_WRONG_AUDIENCE), "wrong_audience");
    vfy_close(v);
    /* Without an audience of its own, aud is not looked at. */
    v = open_default();
    assert_int_equal(verify_str(v, other), VFY_OK);
    vfy_close(v);
    /* The setting is bounded like a minted aud. */
    char err[256];
    const char *bad[] = {"", "bad\x01"};
    for (size_t i = 0; i < 2; i++) {
        cfg.aud = bad[i];
        assert_int_equal(vfy_open_documents(&cfg, &fx.pin, fx.jwks, strlen(fx.jwks), feed,
                                            strlen(feed), &v, err, sizeof(err)),
                         VFY_E_CONFIG);
        assert_null(v);
    }
    free(feed);
    free(mine);
    free(in_list);
    free(other);
    free(other_list);
    free(none);
    free(odd);
}

static void test_a_token_minted_before_a_subject_revocation_is_revoked_subject(void **state)
{
    (void)state;
    long now = (long)time(NULL);
    char subjects[256];
    snprintf(subjects, sizeof(subjects),
             "[{\"seq\":1,\"sub\":\"video-123\",\"before\":%ld},"
             "{\"seq\":2,\"sub\":\"video-123\",\"before\":%ld}]",
             now - 100, now);
    char *feed = feed_with_subjects(2, subjects);
    vfy_config cfg;
    vfy_config_default(&cfg);
    vfy *v = open_with(&cfg, feed);
    char claims[256];
    snprintf(claims, sizeof(claims), "{\"sub\":\"video-123\",\"iat\":%ld,\"exp\":%ld}", now - 1,
             now + 600);
    char *old = token_make("RS256", KID_A, claims, fx.a, SIG_RS256);
    /* Minted at or after `before`: the new tokens of the rotated video pass at once. */
    snprintf(claims, sizeof(claims), "{\"sub\":\"video-123\",\"iat\":%ld,\"exp\":%ld}", now,
             now + 600);
    char *fresh = token_make("RS256", KID_A, claims, fx.a, SIG_RS256);
    snprintf(claims, sizeof(claims), "{\"sub\":\"video-124\",\"iat\":%ld,\"exp\":%ld}", now - 1,
             now + 600);
    char *other = token_make("RS256", KID_A, claims, fx.a, SIG_RS256);
    /* No iat: it cannot show it came after the revocation. */
    snprintf(claims, sizeof(claims), "{\"sub\":\"video-123\",\"exp\":%ld}", now + 600);
    char *no_iat = token_make("RS256", KID_A, claims, fx.a, SIG_RS256);
    /* Forged or expired first: the subject is looked at only for a good token in time. */
    snprintf(claims, sizeof(claims), "{\"sub\":\"video-123\",\"iat\":%ld,\"exp\":%ld}", now - 90,
             now - 1);
    char *expired = token_make("RS256", KID_A, claims, fx.a, SIG_RS256);
    char *forged = token_make(
        "RS256", KID_A, "{\"sub\":\"video-123\",\"iat\":1,\"exp\":9999999999}", fx.b, SIG_RS256);
    assert_int_equal(verify_str(v, old), VFY_REVOKED_SUBJECT);
    assert_int_equal(verify_str(v, fresh), VFY_OK);
    assert_int_equal(verify_str(v, other), VFY_OK);
    assert_int_equal(verify_str(v, no_iat), VFY_REVOKED_SUBJECT);
    assert_int_equal(verify_str(v, expired), VFY_EXPIRED);
    assert_int_equal(verify_str(v, forged), VFY_BAD_SIGNATURE);
    assert_string_equal(vfy_result_name(VFY_REVOKED_SUBJECT), "revoked_subject");
    /* A later feed without the revocation (it expired at the appliance) lets the set go:
     * each copy carries every subject that still matters. */
    char *later = feed_with_subjects(3, "[]");
    assert_int_equal(vfy_apply_feed(v, later, strlen(later)), VFY_FEED_OK);
    assert_int_equal(verify_str(v, old), VFY_OK);
    vfy_close(v);
    free(later);
    free(old);
    free(fresh);
    free(other);
    free(no_iat);
    free(expired);
    free(forged);
    free(feed);
}

static void test_a_feed_without_subjects_still_parses_and_bad_subjects_are_malformed(void **state)
{
    (void)state;
    int64_t now = (int64_t)time(NULL);
    vfy_feed f;
    char *plain = feed_with_subjects(3, NULL);
    assert_int_equal(vfy_feed_check(&fx.pin, plain, strlen(plain), now, 0, &f), VFY_FEED_OK);
    assert_int_equal(f.n_subjects, 0);
    vfy_feed_free(&f);
    char *good = feed_with_subjects(3, "[{\"seq\":3,\"sub\":\"v\",\"before\":5},"
                                       "{\"seq\":1,\"sub\":\"w\",\"before\":7}]");
    assert_int_equal(vfy_feed_check(&fx.pin, good, strlen(good), now, 0, &f), VFY_FEED_OK);
    assert_int_equal(f.n_subjects, 2);
    assert_int_equal(f.subjects[0].seq, 1);
    assert_string_equal(f.subjects[0].sub, "w");
    assert_int_equal(f.subjects[1].before, 5);
    vfy_feed_free(&f);
    const char *bad[] = {
        "{}",
        "[{\"seq\":4,\"sub\":\"v\",\"before\":5}]", /* above the feed's seq */
        "[{\"seq\":0,\"sub\":\"v\",\"before\":5}]",
        "[{\"seq\":1,\"sub\":\"\",\"before\":5}]",
        "[{\"seq\":1,\"sub\":7,\"before\":5}]",
        "[{\"seq\":1,\"sub\":\"v\",\"before\":-5}]",
        "[{\"seq\":1,\"sub\":\"v\"}]",
        "[{\"seq\":1,\"sub\":\"v\",\"before\":5},{\"seq\":1,\"sub\":\"w\",\"before\":5}]",
        "[1,2,3,4]", /* more entries than seqs */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        char *doc = feed_with_subjects(3, bad[i]);
        if (vfy_feed_check(&fx.pin, doc, strlen(doc), now, 0, &f) != VFY_FEED_MALFORMED)
            fail_msg("accepted: %s", bad[i]);
        free(doc);
    }
    free(plain);
    free(good);
}

static void test_origin_form_is_the_appliances(void **state)
{
    (void)state;
    const char *good[] = {"https://a.example", "http://127.0.0.1:8080", "https://x:1",
                          "https://x:65535", "https://a-b.c.d"};
    const char *bad[] = {"",
                         "a.example",
                         "ftp://a.example",
                         "https://",
                         "https://A.example",
                         "https://a.example/",
                         "https://a.example/path",
                         "https://a.example?q",
                         "https://a.example:",
                         "https://a.example:0",
                         "https://a.example:65536",
                         "https://a.example:080",
                         "https://a_b.example",
                         "https://user@a.example",
                         "https://[::1]:443"};
    for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++)
        if (!vfy_origin_ok(good[i]))
            fail_msg("refused: %s", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
        if (vfy_origin_ok(bad[i]))
            fail_msg("accepted: %s", bad[i]);
    char longest[300] = "https://";
    memset(longest + 8, 'a', 247);
    longest[255] = '\0';
    assert_true(vfy_origin_ok(longest));
    longest[255] = 'a';
    longest[256] = '\0';
    assert_false(vfy_origin_ok(longest));
    assert_false(vfy_origin_ok(NULL));
}

static void test_cache_keeps_the_newest_lists_and_drops_the_oldest(void **state)
{
    (void)state;
    vfy *v = open_with_lists();
    char uri[128];
    for (int i = 0; i <= VFY_STATUS_CACHE_MAX; i++) {
        snprintf(uri, sizeof(uri), BASE_URL "/v1/status-lists/%d", i);
        char *doc = slist_make(uri, NULL, 0);
        assert_int_equal(vfy_apply_status_list(v, uri, doc, strlen(doc)), VFY_FEED_OK);
        free(doc);
    }
    struct vfy_stats st;
    vfy_stats(v, &st);
    assert_int_equal(st.status_lists, VFY_STATUS_CACHE_MAX);
    char *first = token_in_list(LIST0, 1);
    snprintf(uri, sizeof(uri), BASE_URL "/v1/status-lists/%d", VFY_STATUS_CACHE_MAX);
    char *last = token_in_list(uri, 1), *second = token_in_list(LIST1, 1);
    assert_int_equal(verify_str(v, first), VFY_FEED_STALE); /* dropped; offline: not refetched */
    assert_int_equal(verify_str(v, second), VFY_OK);
    assert_int_equal(verify_str(v, last), VFY_OK);
    free(first);
    free(second);
    free(last);
    vfy_close(v);
}

typedef struct {
    vfy *v;
    const char *keep, *doomed;
    int keep_bad;   /* the token never revoked: answers other than ok */
    int doomed_bad; /* the revoked one: answers other than ok or revoked_token */
    bool seen_revoked;
} list_loop;

static void *list_loop_run(void *arg)
{
    list_loop *l = arg;
    for (int i = 0; i < 300; i++) {
        if (vfy_verify(l->v, l->keep, NULL) != VFY_OK)
            l->keep_bad++;
        vfy_result r = vfy_verify(l->v, l->doomed, NULL);
        /* Once revoked, never ok again: the bits only ever gain. */
        if (r == VFY_REVOKED_TOKEN)
            l->seen_revoked = true;
        else if (r != VFY_OK || l->seen_revoked)
            l->doomed_bad++;
    }
    return NULL;
}

static void test_concurrent_verification_while_status_lists_apply(void **state)
{
    (void)state;
    vfy *v = open_with_lists();
    char *first = slist_make(LIST0, NULL, 0);
    assert_int_equal(vfy_apply_status_list(v, LIST0, first, strlen(first)), VFY_FEED_OK);
    free(first);
    char *keep = token_in_list(LIST0, 1), *doomed = token_in_list(LIST0, 2);
    list_loop loops[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        loops[i] = (list_loop){.v = v, .keep = keep, .doomed = doomed};
        assert_int_equal(pthread_create(&th[i], NULL, list_loop_run, &loops[i]), 0);
    }
    /* Copies of list 0 arrive while they verify: clean ones, then one revoking idx 2, then
     * clean ones again (an older cache's): idx 2 stays revoked. */
    const uint32_t revoked[] = {2};
    for (int i = 0; i < 12; i++) {
        char *doc = slist_make(LIST0, i == 4 ? revoked : NULL, i == 4 ? 1 : 0);
        assert_int_equal(vfy_apply_status_list(v, LIST0, doc, strlen(doc)), VFY_FEED_OK);
        free(doc);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(loops[i].keep_bad, 0);
        assert_int_equal(loops[i].doomed_bad, 0);
    }
    assert_int_equal(verify_str(v, doomed), VFY_REVOKED_TOKEN);
    assert_int_equal(verify_str(v, keep), VFY_OK);
    free(keep);
    free(doomed);
    vfy_close(v);
}

static void test_redeem_without_a_credential_or_of_a_refused_token_sends_nothing(void **state)
{
    (void)state;
    vfy *v = open_default();
    char *tok = token_with("\"single_use\":true,\"origin\":\"" ORIGIN_A "\"");
    char detail[256];
    json_t *claims = (json_t *)1;
    assert_int_equal(vfy_redeem(v, tok, ORIGIN_A, &claims, detail, sizeof(detail)),
                     VFY_REDEEM_FAILED);
    assert_null(claims);
    assert_non_null(strstr(detail, "credential"));
    /* Refused here first: the local reason, nothing sent. */
    assert_int_equal(vfy_redeem(v, tok, ORIGIN_B, NULL, detail, sizeof(detail)), VFY_WRONG_ORIGIN);
    assert_int_equal(vfy_redeem(v, "x.y.z", NULL, NULL, detail, sizeof(detail)), VFY_MALFORMED);
    free(tok);
    vfy_close(v);
}

static void test_redeem_credential_file_is_checked_at_open(void **state)
{
    (void)state;
    char dir[] = "/tmp/signd-vfy-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char key[PATH_MAX], cred[PATH_MAX], err[512];
    snprintf(key, sizeof(key), "%s/pub.pem", dir);
    snprintf(cred, sizeof(cred), "%s/cred", dir);
    char *pem = pem_of(fx.pub);
    FILE *f = fopen(key, "w");
    fputs(pem, f);
    fclose(f);
    free(pem);
    vfy_config cfg;
    vfy_config_default(&cfg);
    cfg.url = "https://127.0.0.1:1";
    cfg.cacert = key; /* readable: the CA file is only used once a request is made */
    cfg.feed_key = key;
    cfg.redeem_credential = cred;
    vfy *v = (vfy *)1;
    /* Missing, empty, blank, a space inside, too long: refused before any request. */
    assert_int_equal(vfy_open(&cfg, &v, err, sizeof(err)), VFY_E_CREDENTIAL);
    assert_null(v);
    assert_non_null(strstr(err, cred));
    const char *bodies[] = {"", "\n", "sgd_abc def\n", "sgd_\x01\n"};
    for (size_t i = 0; i < sizeof(bodies) / sizeof(*bodies); i++) {
        f = fopen(cred, "w");
        fputs(bodies[i], f);
        fclose(f);
        assert_int_equal(vfy_open(&cfg, &v, err, sizeof(err)), VFY_E_CREDENTIAL);
        assert_non_null(strstr(err, cred));
    }
    f = fopen(cred, "w");
    for (int i = 0; i < 300; i++)
        fputc('a', f);
    fclose(f);
    assert_int_equal(vfy_open(&cfg, &v, err, sizeof(err)), VFY_E_CREDENTIAL);
    assert_non_null(strstr(err, "longer"));
    /* A good one gets past the credential: the appliance (port 1) is what fails now. */
    f = fopen(cred, "w");
    fputs("sgd_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n", f);
    fclose(f);
    assert_int_equal(vfy_open(&cfg, &v, err, sizeof(err)), VFY_E_NET);
    /* Never a secret in the message. */
    assert_null(strstr(err, "sgd_"));
    unlink(cred);
    unlink(key);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tokens[] = {
        cmocka_unit_test(test_valid_token_verifies_and_returns_its_claims),
        cmocka_unit_test(test_alg_none_is_not_allowed),
        cmocka_unit_test(test_hs256_keyed_with_the_public_key_pem_is_not_allowed),
        cmocka_unit_test(test_rs512_and_lookalike_algs_are_not_allowed),
        cmocka_unit_test(test_alg_is_refused_before_the_kid_is_looked_up),
        cmocka_unit_test(test_changed_payload_is_bad_signature),
        cmocka_unit_test(test_token_signed_by_another_key_under_a_known_kid_is_bad_signature),
        cmocka_unit_test(test_expired_token_is_expired_and_leeway_forgives_skew),
        cmocka_unit_test(test_token_is_expired_at_exactly_exp),
        cmocka_unit_test(test_not_yet_valid_token_and_leeway),
        cmocka_unit_test(test_clock_override_decides_exp_and_nbf_but_not_the_feed),
        cmocka_unit_test(test_malformed_tokens_are_malformed),
        cmocka_unit_test(test_unknown_kid_is_unknown_kid),
        cmocka_unit_test(test_publication_key_never_verifies_a_token),
        cmocka_unit_test(test_kid_in_the_feed_is_revoked_kid),
        cmocka_unit_test(test_revocation_comes_before_the_signature_and_time_checks),
        cmocka_unit_test(test_delta_feed_adds_to_the_revoked_set),
        cmocka_unit_test(test_rollback_and_gap_are_refused_by_a_running_verifier),
        cmocka_unit_test(test_feed_older_than_max_age_without_stream_is_feed_stale),
        cmocka_unit_test(test_verifier_fails_closed_when_told_of_a_newer_seq_it_cannot_fetch),
        cmocka_unit_test(test_feed_past_its_exp_fails_closed),
        cmocka_unit_test(test_wait_seq_returns_once_the_feed_is_applied),
        cmocka_unit_test(test_concurrent_verification_while_feeds_apply),
        cmocka_unit_test(test_result_names_are_stable),
    };
    const struct CMUnitTest feeds[] = {
        cmocka_unit_test(test_valid_feed_is_accepted_with_its_fields),
        cmocka_unit_test(test_feed_with_a_kid_removed_and_the_signature_kept_is_refused),
        cmocka_unit_test(test_feed_signed_by_another_key_is_refused),
        cmocka_unit_test(test_feed_with_wrong_typ_or_alg_is_refused),
        cmocka_unit_test(test_feed_with_lower_seq_than_accepted_is_a_rollback),
        cmocka_unit_test(test_expired_feed_is_refused),
        cmocka_unit_test(test_delta_starting_past_our_seq_is_a_gap),
        cmocka_unit_test(test_feed_payload_out_of_shape_is_malformed),
    };
    const struct CMUnitTest lists[] = {
        cmocka_unit_test(test_valid_status_list_is_accepted_and_exposes_its_bits),
        cmocka_unit_test(test_status_list_with_wrong_typ_alg_or_key_is_refused),
        cmocka_unit_test(test_status_list_that_inflates_to_another_size_is_malformed),
        cmocka_unit_test(test_status_list_payload_out_of_shape_is_malformed),
        cmocka_unit_test(test_expired_status_list_is_refused),
        cmocka_unit_test(test_revoked_token_is_revoked_token_and_its_sibling_verifies),
        cmocka_unit_test(test_token_whose_list_is_missing_or_old_fails_closed),
        cmocka_unit_test(test_status_uri_outside_the_appliance_is_malformed),
        cmocka_unit_test(test_status_list_served_under_another_uri_is_refused),
        cmocka_unit_test(test_older_copy_of_a_list_cannot_unrevoke_a_token),
        cmocka_unit_test(
            test_verifier_fails_closed_when_told_of_a_token_revocation_it_cannot_fetch),
        cmocka_unit_test(test_revoked_token_comes_after_the_signature_and_time_checks),
        cmocka_unit_test(test_origin_bound_token_is_wrong_origin_elsewhere),
        cmocka_unit_test(test_an_origin_bound_token_checked_without_an_origin_is_origin_required),
        cmocka_unit_test(test_a_token_bound_to_origins_passes_from_each_and_no_other),
        cmocka_unit_test(test_a_token_for_another_audience_is_wrong_audience),
        cmocka_unit_test(test_a_token_minted_before_a_subject_revocation_is_revoked_subject),
        cmocka_unit_test(test_a_feed_without_subjects_still_parses_and_bad_subjects_are_malformed),
        cmocka_unit_test(test_origin_form_is_the_appliances),
        cmocka_unit_test(test_cache_keeps_the_newest_lists_and_drops_the_oldest),
        cmocka_unit_test(test_concurrent_verification_while_status_lists_apply),
        cmocka_unit_test(test_redeem_without_a_credential_or_of_a_refused_token_sends_nothing),
        cmocka_unit_test(test_redeem_credential_file_is_checked_at_open),
    };
    const struct CMUnitTest keys[] = {
        cmocka_unit_test(test_pinned_key_file_is_loaded_and_bad_ones_are_refused),
        cmocka_unit_test(test_jwk_decode_reverses_jose_jwk_rsa),
        cmocka_unit_test(test_config_out_of_range_and_documents_are_refused),
    };
    /* RSA key generation is the slow part: once for every group. */
    group_setup(NULL);
    int failed = 0;
    failed += cmocka_run_group_tests_name("verifier tokens", tokens, NULL, NULL);
    failed += cmocka_run_group_tests_name("verifier feed", feeds, NULL, NULL);
    failed += cmocka_run_group_tests_name("verifier status lists", lists, NULL, NULL);
    failed += cmocka_run_group_tests_name("verifier keys", keys, NULL, NULL);
    group_teardown(NULL);
    return failed == 0 ? 0 : 1;
}
