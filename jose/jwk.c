/* jose: an RSA public key (n, e) as a JWK and as a PEM (both ways), and as the key that
 * checks an RS256 signature. See jose.h for contracts. */
#include "jose/jose.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

/* Enough for the base64url of JOSE_RSA_MAX bytes and its NUL. */
#define JWK_B64_CAP ((JOSE_RSA_MAX + 2) / 3 * 4 + 1)

static int rsa_trim(const uint8_t **p, size_t *len);
static EVP_PKEY *rsa_pkey(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len);
static int jwk_member(const json_t *jwk, const char *name, uint8_t *out, size_t *out_len);
static int pem_param(const EVP_PKEY *pkey, const char *name, uint8_t *out, size_t *out_len);

/* Drops leading zero bytes; -1 when nothing is left (zero or empty) or too much is. */
static int rsa_trim(const uint8_t **p, size_t *len)
{
    if (*p == NULL)
        return -1;
    while (*len > 0 && (*p)[0] == 0) {
        (*p)++;
        (*len)--;
    }
    return *len == 0 || *len > JOSE_RSA_MAX ? -1 : 0;
}

/* An OpenSSL public key for (n, e), or NULL. */
static EVP_PKEY *rsa_pkey(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len)
{
    if (rsa_trim(&n, &n_len) != 0 || rsa_trim(&e, &e_len) != 0)
        return NULL;
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    OSSL_PARAM *params = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    BIGNUM *bn = BN_bin2bn(n, (int)n_len, NULL);
    BIGNUM *be = BN_bin2bn(e, (int)e_len, NULL);
    if (bld == NULL || bn == NULL || be == NULL ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) != 1)
        goto out;
    params = OSSL_PARAM_BLD_to_param(bld);
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
out:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    return pkey;
}

json_t *jose_jwk_rsa(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len,
                     const char *kid)
{
    char nb[JWK_B64_CAP], eb[JWK_B64_CAP];
    if (kid == NULL || rsa_trim(&n, &n_len) != 0 || rsa_trim(&e, &e_len) != 0)
        return NULL;
    if (jose_b64url_encode(n, n_len, nb, sizeof(nb)) == 0 ||
        jose_b64url_encode(e, e_len, eb, sizeof(eb)) == 0)
        return NULL;
    /* json_pack fails (NULL) on a kid that is not UTF-8. */
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "RSA", "use", "sig", "alg", "RS256",
                     "kid", kid, "n", nb, "e", eb);
}

char *jose_rsa_public_pem(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len)
{
    char *pem = NULL;
    ERR_set_mark();
    EVP_PKEY *pkey = rsa_pkey(n, n_len, e, e_len);
    BIO *mem = BIO_new(BIO_s_mem());
    if (pkey == NULL || mem == NULL || PEM_write_bio_PUBKEY(mem, pkey) != 1)
        goto out;
    char *data = NULL;
    long len = BIO_get_mem_data(mem, &data);
    if (len <= 0 || data == NULL)
        goto out;
    pem = malloc((size_t)len + 1);
    if (pem == NULL)
        goto out;
    memcpy(pem, data, (size_t)len);
    pem[len] = '\0';
out:
    BIO_free(mem);
    EVP_PKEY_free(pkey);
    ERR_pop_to_mark();
    return pem;
}

int jose_rs256_verify(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len,
                      const void *msg, size_t msg_len, const uint8_t *sig, size_t sig_len)
{
    static const uint8_t empty[1];
    int ret = -1;
    EVP_MD_CTX *md = NULL;
    EVP_PKEY_CTX *pctx = NULL; /* owned by md */
    ERR_set_mark();
    EVP_PKEY *pkey = rsa_pkey(n, n_len, e, e_len);
    if (pkey == NULL)
        goto out;
    /* RFC 8017 section 8.2.2 step 1: a signature of the wrong length is invalid. */
    if (sig == NULL || sig_len != (size_t)EVP_PKEY_get_size(pkey)) {
        ret = 0;
        goto out;
    }
    md = EVP_MD_CTX_new();
    if (md == NULL || EVP_DigestVerifyInit_ex(md, &pctx, "SHA256", NULL, NULL, pkey, NULL) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0)
        goto out;
    /* Past set-up, OpenSSL reports a malformed signature (a value >= n, say) as 0 or as a
     * negative value: both mean this signature does not verify. */
    ret = EVP_DigestVerify(md, sig, sig_len, msg_len == 0 ? empty : msg, msg_len) == 1 ? 1 : 0;
out:
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pkey);
    ERR_pop_to_mark();
    return ret;
}

/* One base64url member of an RSA JWK into out (JOSE_RSA_MAX bytes), leading zeros dropped. */
static int jwk_member(const json_t *jwk, const char *name, uint8_t *out, size_t *out_len)
{
    /* Enough for any base64url text that could decode to JOSE_RSA_MAX bytes plus zeros. */
    uint8_t buf[JOSE_RSA_MAX * 2];
    const json_t *v = json_object_get(jwk, name);
    const char *text = json_string_value(v);
    size_t len = json_string_length(v), got = 0;
    if (text == NULL || len == 0 || len / 4 * 3 + 2 > sizeof(buf) ||
        jose_b64url_decode(text, len, buf, sizeof(buf), &got) != 0)
        return -1;
    const uint8_t *p = buf;
    if (rsa_trim(&p, &got) != 0)
        return -1;
    memcpy(out, p, got);
    *out_len = got;
    return 0;
}

int jose_jwk_rsa_decode(const json_t *jwk, uint8_t n[JOSE_RSA_MAX], size_t *n_len,
                        uint8_t e[JOSE_RSA_MAX], size_t *e_len)
{
    *n_len = *e_len = 0;
    const char *kty = json_string_value(json_object_get(jwk, "kty"));
    if (!json_is_object(jwk) || kty == NULL || strcmp(kty, "RSA") != 0 ||
        jwk_member(jwk, "n", n, n_len) != 0 || jwk_member(jwk, "e", e, e_len) != 0) {
        *n_len = *e_len = 0;
        return -1;
    }
    return 0;
}

/* A BIGNUM parameter of pkey, big-endian, into out (JOSE_RSA_MAX bytes). */
static int pem_param(const EVP_PKEY *pkey, const char *name, uint8_t *out, size_t *out_len)
{
    BIGNUM *bn = NULL;
    int ok = EVP_PKEY_get_bn_param(pkey, name, &bn) == 1 && !BN_is_zero(bn) &&
             BN_num_bytes(bn) <= JOSE_RSA_MAX && BN_bn2bin(bn, out) == BN_num_bytes(bn);
    if (ok)
        *out_len = (size_t)BN_num_bytes(bn);
    BN_free(bn);
    return ok ? 0 : -1;
}

int jose_rsa_public_from_pem(const char *pem, size_t len, uint8_t n[JOSE_RSA_MAX], size_t *n_len,
                             uint8_t e[JOSE_RSA_MAX], size_t *e_len)
{
    int ret = -1;
    *n_len = *e_len = 0;
    if (pem == NULL || len == 0 || len > INT_MAX)
        return -1;
    ERR_set_mark();
    BIO *mem = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pkey = mem != NULL ? PEM_read_bio_PUBKEY(mem, NULL, NULL, NULL) : NULL;
    if (pkey != NULL && EVP_PKEY_is_a(pkey, "RSA") &&
        pem_param(pkey, OSSL_PKEY_PARAM_RSA_N, n, n_len) == 0 &&
        pem_param(pkey, OSSL_PKEY_PARAM_RSA_E, e, e_len) == 0)
        ret = 0;
    else
        *n_len = *e_len = 0;
    EVP_PKEY_free(pkey);
    BIO_free(mem);
    ERR_pop_to_mark();
    return ret;
}
