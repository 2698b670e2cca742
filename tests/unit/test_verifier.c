/*
 * test_verifier: the reference verifier without a network. Keys are generated in-process by
 * OpenSSL, tokens and feeds are crafted and signed here (OpenSSL signs, jose only encodes),
 * and a verifier is built from documents (vfy_open_documents), so every answer of
 * vfy_verify and every rule of the signed feed is pinned down directly: the algorithm
 * confusion attacks, tampering, time checks, malformed input, rollback and gaps.
 */
#include "verifier/verifier.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
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

#define KID_A "0123456789abcdef0123456789abcdef"
#define KID_B "fedcba9876543210fedcba9876543210"
#define KID_C "00000000000000000000000000000001"
#define KID_ENC "11111111111111111111111111111111"
#define PUB_KID "signd-publication-v1"

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
    assert_string_equal(vfy_result_name((vfy_result)99), "invalid");
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
    failed += cmocka_run_group_tests_name("verifier keys", keys, NULL, NULL);
    group_teardown(NULL);
    return failed == 0 ? 0 : 1;
}
