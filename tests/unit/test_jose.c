/*
 * test_jose: base64url, JWK, PEM, RS256 verification and the JWS compact form. Independent
 * oracles wherever there is one: RFC 4648 section 10 and RFC 7515 appendix A.2 vectors,
 * OpenSSL's own base64 encoder, and an RSA key generated and used for signing by OpenSSL.
 * No token is needed: this module never touches the HSM.
 */
#include "jose/jose.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#define B64_ALPHABET "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#define ROUND_TRIP_MAX 300
#define KID "0123456789abcdef0123456789abcdef"

/* RFC 7515 appendix A.2: RS256 over a payload with CR LF in it, and the public key. */
#define A2_HEADER "{\"alg\":\"RS256\"}"
#define A2_PAYLOAD                                                                                 \
    "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}"
#define A2_SIGNING_INPUT                                                                           \
    "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxl"    \
    "LmNvbS9pc19yb290Ijp0cnVlfQ"
#define A2_SIGNATURE                                                                               \
    "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5" \
    "jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb" \
    "1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QO" \
    "YEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"
#define A2_N                                                                                       \
    "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4" \
    "d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5re" \
    "xMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxX" \
    "FvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"

/* The key the RSA tests share, generated once by OpenSSL. */
typedef struct {
    EVP_PKEY *pkey;
    uint8_t n[JOSE_SIG_MAX];
    size_t n_len;
    uint8_t e[8];
    size_t e_len;
} rsa_fixture;

static const struct {
    const char *plain;
    const char *b64url;
} rfc4648[] = {
    {"", ""},           {"f", "Zg"},          {"fo", "Zm8"},          {"foo", "Zm9v"},
    {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
};

/* ---- helpers ---------------------------------------------------------------------------- */

/* Decodes a NUL-terminated base64url string the test knows to be valid. */
static size_t decode_ok(const char *s, uint8_t *out, size_t cap)
{
    size_t len = 0;
    assert_int_equal(jose_b64url_decode(s, strlen(s), out, cap, &len), 0);
    return len;
}

static int decode_fails(const char *s, size_t n)
{
    uint8_t out[64];
    size_t len = 12345;
    int rc = jose_b64url_decode(s, n, out, sizeof(out), &len);
    if (rc != 0)
        assert_int_equal(len, 12345); /* *out_len untouched on failure */
    return rc == -1;
}

static size_t bn_bytes(const EVP_PKEY *pkey, const char *name, uint8_t *out, size_t cap)
{
    BIGNUM *bn = NULL;
    assert_int_equal(EVP_PKEY_get_bn_param(pkey, name, &bn), 1);
    assert_true((size_t)BN_num_bytes(bn) <= cap);
    size_t len = (size_t)BN_bn2bin(bn, out);
    BN_free(bn);
    return len;
}

/* An RS256 signature by OpenSSL with the fixture's private key. */
static size_t openssl_sign(EVP_PKEY *pkey, const void *msg, size_t len, uint8_t *sig, size_t cap)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t sig_len = cap;
    assert_non_null(md);
    assert_int_equal(EVP_DigestSignInit_ex(md, NULL, "SHA256", NULL, NULL, pkey, NULL), 1);
    assert_int_equal(EVP_DigestSign(md, sig, &sig_len, msg, len), 1);
    EVP_MD_CTX_free(md);
    return sig_len;
}

/* Builds header.payload.sig with begin/finish, signed by OpenSSL; malloc'd, NUL-terminated. */
static char *build_jws(rsa_fixture *k, const char *hdr, const char *payload, size_t plen,
                       size_t *total)
{
    size_t hlen = strlen(hdr), cap = jose_jws_max_len(hlen, plen, JOSE_SIG_MAX), slen;
    uint8_t sig[JOSE_SIG_MAX];
    char *jws = malloc(cap);
    assert_non_null(jws);
    assert_int_equal(jose_jws_begin(hdr, hlen, payload, plen, jws, cap, &slen), 0);
    assert_int_equal(strlen(jws), slen);
    size_t sig_len = openssl_sign(k->pkey, jws, slen, sig, sizeof(sig));
    assert_int_equal(jose_jws_finish(jws, cap, slen, sig, sig_len, total), 0);
    assert_int_equal(strlen(jws), *total);
    return jws;
}

/* Encodes raw bytes as a NUL-terminated base64url string into out. */
static void encode_into(const void *in, size_t n, char *out, size_t cap)
{
    size_t len = jose_b64url_encode(in, n, out, cap);
    assert_true(len > 0 || n == 0);
}

static int parse_fails(const char *compact)
{
    jose_jws p;
    memset(&p, 0xa5, sizeof(p));
    int rc = jose_jws_parse(compact, strlen(compact), &p);
    if (rc != 0) {
        assert_null(p.header);
        assert_null(p.payload);
        jose_jws_free(&p); /* safe after a failure */
    } else {
        jose_jws_free(&p);
    }
    return rc == -1;
}

/* A compact JWS with the given header JSON, payload "{}" and a one-byte signature. */
static void jws_with_header(const char *hdr_json, size_t hlen, char *out, size_t cap)
{
    char h[256];
    encode_into(hdr_json, hlen, h, sizeof(h));
    snprintf(out, cap, "%s.e30.AA", h);
}

/* ---- base64url ------------------------------------------------------------------------- */

static void test_b64url_encodes_rfc4648_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
        char out[16];
        size_t n = strlen(rfc4648[i].plain);
        assert_int_equal(jose_b64url_encode(rfc4648[i].plain, n, out, sizeof(out)),
                         strlen(rfc4648[i].b64url));
        assert_string_equal(out, rfc4648[i].b64url);
        assert_int_equal(jose_b64url_encoded_len(n), strlen(rfc4648[i].b64url));
    }
}

static void test_b64url_uses_dash_and_underscore_for_62_and_63(void **state)
{
    (void)state;
    static const uint8_t dashes[] = {0xfb, 0xef, 0xbe}, unders[] = {0xff, 0xff, 0xff},
                         mixed[] = {0xfb, 0xff};
    char out[8];
    jose_b64url_encode(dashes, sizeof(dashes), out, sizeof(out));
    assert_string_equal(out, "----");
    jose_b64url_encode(unders, sizeof(unders), out, sizeof(out));
    assert_string_equal(out, "____");
    jose_b64url_encode(mixed, sizeof(mixed), out, sizeof(out));
    assert_string_equal(out, "-_8"); /* standard base64: "+/8=" */
}

static void test_b64url_decodes_rfc4648_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
        uint8_t out[16];
        size_t len = decode_ok(rfc4648[i].b64url, out, sizeof(out));
        assert_int_equal(len, strlen(rfc4648[i].plain));
        assert_memory_equal(out, rfc4648[i].plain, len);
    }
}

static void test_b64url_round_trips_random_lengths_0_to_300(void **state)
{
    (void)state;
    uint8_t in[ROUND_TRIP_MAX], back[ROUND_TRIP_MAX];
    char enc[ROUND_TRIP_MAX * 2], ossl[ROUND_TRIP_MAX * 2];
    for (size_t n = 0; n <= ROUND_TRIP_MAX; n++) {
        assert_int_equal(RAND_bytes(in, (int)sizeof(in)), 1);
        size_t len = jose_b64url_encode(in, n, enc, sizeof(enc));
        assert_int_equal(len, jose_b64url_encoded_len(n));
        assert_int_equal(strlen(enc), len);

        /* OpenSSL's standard base64, translated, is the oracle. */
        int olen = EVP_EncodeBlock((unsigned char *)ossl, in, (int)n);
        while (olen > 0 && ossl[olen - 1] == '=')
            ossl[--olen] = '\0';
        for (int i = 0; i < olen; i++)
            ossl[i] = ossl[i] == '+' ? '-' : ossl[i] == '/' ? '_' : ossl[i];
        assert_string_equal(enc, ossl);

        size_t blen = 0;
        assert_int_equal(jose_b64url_decode(enc, len, back, n, &blen), 0); /* exact cap */
        assert_int_equal(blen, n);
        assert_memory_equal(back, in, n);
    }
}

static void test_b64url_encode_refuses_buffer_without_room_for_nul(void **state)
{
    (void)state;
    char out[8];
    memset(out, 'x', sizeof(out));
    assert_int_equal(jose_b64url_encode("foob", 4, out, 6), 0); /* needs 6 + NUL */
    assert_int_equal(out[0], '\0');
    assert_int_equal(out[1], 'x');
    assert_int_equal(jose_b64url_encode("foob", 4, out, 7), 6);
    assert_string_equal(out, "Zm9vYg");
    assert_int_equal(jose_b64url_encode("", 0, out, 0), 0);
    assert_int_equal(jose_b64url_encode(NULL, 0, out, 1), 0);
    assert_string_equal(out, "");
}

static void test_b64url_encoded_len_guards_size_t_overflow(void **state)
{
    (void)state;
    assert_int_equal(jose_b64url_encoded_len(0), 0);
    assert_int_equal(jose_b64url_encoded_len(1), 2);
    assert_int_equal(jose_b64url_encoded_len(2), 3);
    assert_int_equal(jose_b64url_encoded_len(3), 4);
    assert_int_equal(jose_b64url_encoded_len(256), 342);
    assert_int_equal(jose_b64url_encoded_len(512), 683);
    assert_true(jose_b64url_encoded_len(SIZE_MAX) == SIZE_MAX);
    assert_true(jose_b64url_encoded_len(SIZE_MAX / 4 * 3 + 3) == SIZE_MAX);
    char out[4];
    assert_int_equal(jose_b64url_encode("x", SIZE_MAX, out, sizeof(out)), 0);
}

static void test_b64url_decode_accepts_empty_input(void **state)
{
    (void)state;
    size_t len = 99;
    assert_int_equal(jose_b64url_decode(NULL, 0, NULL, 0, &len), 0);
    assert_int_equal(len, 0);
    assert_int_equal(jose_b64url_decode("", 0, NULL, 0, NULL), 0);
}

static void test_b64url_decode_rejects_padding(void **state)
{
    (void)state;
    assert_true(decode_fails("Zg==", 4));
    assert_true(decode_fails("Zm8=", 4));
    assert_true(decode_fails("Zg=", 3));
    assert_true(decode_fails("Zm9v====", 8));
    assert_true(decode_fails("====", 4));
}

static void test_b64url_decode_rejects_standard_alphabet(void **state)
{
    (void)state;
    assert_true(decode_fails("+/8", 3));
    assert_true(decode_fails("++++", 4));
    assert_true(decode_fails("////", 4));
    assert_true(decode_fails("Zm9v+A", 6));
}

static void test_b64url_decode_rejects_whitespace(void **state)
{
    (void)state;
    assert_true(decode_fails("Zm9v Yg", 7));
    assert_true(decode_fails("Zm9v\nYmFy", 9));
    assert_true(decode_fails("\tZm9v", 5));
    assert_true(decode_fails("Zm9v\r\n", 6));
    assert_true(decode_fails(" Zm9", 4));
}

static void test_b64url_decode_rejects_every_non_alphabet_byte_in_every_position(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        if (c != 0 && strchr(B64_ALPHABET, c) != NULL)
            continue;
        for (size_t pos = 0; pos < 4; pos++) {
            char full[4] = {'A', 'A', 'A', 'A'}, tail3[3] = {'A', 'A', 'A'};
            full[pos] = (char)c;
            assert_true(decode_fails(full, 4));
            if (pos < 3) {
                tail3[pos] = (char)c;
                assert_true(decode_fails(tail3, 3));
            }
        }
    }
}

static void test_b64url_decode_rejects_embedded_nul(void **state)
{
    (void)state;
    assert_true(decode_fails("Zm\0v", 4));
    assert_true(decode_fails("Zm9v\0", 5));
}

static void test_b64url_decode_rejects_length_one_mod_four(void **state)
{
    (void)state;
    assert_true(decode_fails("Z", 1));
    assert_true(decode_fails("Zm9vY", 5));
    assert_true(decode_fails("Zm9vYmFyZ", 9));
}

static void test_b64url_decode_rejects_nonzero_unused_trailing_bits(void **state)
{
    (void)state;
    /* "Zg" is 'f'; the 4 unused bits of the second character must be zero. */
    for (const char *c = B64_ALPHABET; *c != '\0'; c++) {
        char two[2] = {'Z', *c}, three[3] = {'Z', 'm', *c};
        size_t v = (size_t)(c - B64_ALPHABET);
        assert_int_equal(decode_fails(two, 2), (v & 0x0f) != 0);
        assert_int_equal(decode_fails(three, 3), (v & 0x03) != 0);
    }
    assert_true(decode_fails("Zh", 2));
    assert_true(decode_fails("Zm9", 3));
    assert_true(decode_fails("Zm9vYh", 6));
}

static void test_b64url_decode_refuses_too_small_output(void **state)
{
    (void)state;
    uint8_t out[6];
    size_t len = 0;
    assert_int_equal(jose_b64url_decode("Zm9vYmFy", 8, out, 5, &len), -1);
    assert_int_equal(jose_b64url_decode("Zm9vYmFy", 8, out, 6, &len), 0);
    assert_int_equal(len, 6);
    assert_int_equal(jose_b64url_decode("Zm9vYmE", 7, out, 4, &len), -1);
    assert_int_equal(jose_b64url_decode("Zm9vYmE", 7, out, 5, &len), 0);
    assert_int_equal(jose_b64url_decode("Zg", 2, NULL, 0, &len), -1);
}

/* ---- randomness ------------------------------------------------------------------------ */

static void test_random_hex_is_lowercase_hex_of_twice_the_bytes(void **state)
{
    (void)state;
    char a[2 * 16 + 1], b[2 * 16 + 1];
    assert_int_equal(jose_random_hex(a, 16), 0);
    assert_int_equal(jose_random_hex(b, 16), 0);
    assert_int_equal(strlen(a), 32);
    assert_int_equal(strspn(a, "0123456789abcdef"), 32);
    assert_string_not_equal(a, b);
    assert_int_equal(jose_random_hex(a, 0), 0);
    assert_string_equal(a, "");
}

static void test_random_b64url_fills_exactly_and_refuses_small_buffer(void **state)
{
    (void)state;
    char s[44], t[44];
    uint8_t raw[32];
    size_t len = 0;
    assert_int_equal(jose_random_b64url(s, sizeof(s), 32), 0);
    assert_int_equal(jose_random_b64url(t, sizeof(t), 32), 0);
    assert_int_equal(strlen(s), 43);
    assert_string_not_equal(s, t);
    assert_int_equal(jose_b64url_decode(s, 43, raw, sizeof(raw), &len), 0);
    assert_int_equal(len, 32);
    assert_int_equal(jose_random_b64url(s, 43, 32), -1);
    assert_string_equal(s, "");
}

static void test_random_refuses_more_than_random_max(void **state)
{
    (void)state;
    char *big = malloc(2 * (JOSE_RANDOM_MAX + 1) + 1);
    assert_non_null(big);
    assert_int_equal(jose_random_hex(big, JOSE_RANDOM_MAX + 1), -1);
    assert_int_equal(jose_random_b64url(big, 2 * (JOSE_RANDOM_MAX + 1) + 1, JOSE_RANDOM_MAX + 1),
                     -1);
    assert_int_equal(jose_random_hex(big, JOSE_RANDOM_MAX), 0);
    assert_int_equal(strlen(big), 2 * JOSE_RANDOM_MAX);
    free(big);
}

/* ---- RSA: JWK, PEM, RS256 -------------------------------------------------------------- */

static int rsa_setup(void **state)
{
    rsa_fixture *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return -1;
    k->pkey = EVP_RSA_gen(2048);
    if (k->pkey == NULL) {
        free(k);
        return -1;
    }
    k->n_len = bn_bytes(k->pkey, OSSL_PKEY_PARAM_RSA_N, k->n, sizeof(k->n));
    k->e_len = bn_bytes(k->pkey, OSSL_PKEY_PARAM_RSA_E, k->e, sizeof(k->e));
    *state = k;
    return 0;
}

static int rsa_teardown(void **state)
{
    rsa_fixture *k = *state;
    if (k != NULL) {
        EVP_PKEY_free(k->pkey);
        free(k);
    }
    return 0;
}

static void test_jwk_has_rsa_members_for_a_real_key(void **state)
{
    rsa_fixture *k = *state;
    json_t *jwk = jose_jwk_rsa(k->n, k->n_len, k->e, k->e_len, KID);
    assert_non_null(jwk);
    assert_int_equal(json_object_size(jwk), 6);
    assert_string_equal(json_string_value(json_object_get(jwk, "kty")), "RSA");
    assert_string_equal(json_string_value(json_object_get(jwk, "use")), "sig");
    assert_string_equal(json_string_value(json_object_get(jwk, "alg")), "RS256");
    assert_string_equal(json_string_value(json_object_get(jwk, "kid")), KID);
    assert_string_equal(json_string_value(json_object_get(jwk, "e")), "AQAB");

    const char *n = json_string_value(json_object_get(jwk, "n"));
    uint8_t back[JOSE_SIG_MAX];
    assert_non_null(n);
    assert_int_equal(strlen(n), 342); /* 256 bytes, no leading zero */
    assert_int_equal(decode_ok(n, back, sizeof(back)), k->n_len);
    assert_memory_equal(back, k->n, k->n_len);

    /* Members in a stable order: JWKS output and its ETag do not churn. */
    char *text = json_dumps(jwk, JSON_COMPACT);
    assert_non_null(text);
    static const char head[] = "{\"kty\":\"RSA\",\"use\":\"sig\",\"alg\":\"RS256\",\"kid\":";
    assert_int_equal(strncmp(text, head, strlen(head)), 0);
    free(text);
    json_decref(jwk);
}

static void test_jwk_strips_leading_zero_bytes_of_n_and_e(void **state)
{
    rsa_fixture *k = *state;
    uint8_t n0[JOSE_SIG_MAX + 2] = {0, 0};
    static const uint8_t e0[] = {0, 0, 0, 0, 1, 0, 1};
    memcpy(n0 + 2, k->n, k->n_len);
    json_t *a = jose_jwk_rsa(k->n, k->n_len, k->e, k->e_len, KID);
    json_t *b = jose_jwk_rsa(n0, k->n_len + 2, e0, sizeof(e0), KID);
    assert_non_null(a);
    assert_non_null(b);
    assert_true(json_equal(a, b));
    json_decref(a);
    json_decref(b);
}

static void test_jwk_of_rfc7515_key_has_its_exact_n(void **state)
{
    (void)state;
    uint8_t n[256];
    size_t n_len = decode_ok(A2_N, n, sizeof(n));
    static const uint8_t e[] = {1, 0, 1};
    json_t *jwk = jose_jwk_rsa(n, n_len, e, sizeof(e), "a2");
    assert_non_null(jwk);
    assert_string_equal(json_string_value(json_object_get(jwk, "n")), A2_N);
    json_decref(jwk);
}

static void test_jwk_refuses_zero_modulus_null_kid_and_bad_utf8_kid(void **state)
{
    rsa_fixture *k = *state;
    static const uint8_t zeros[4] = {0};
    assert_null(jose_jwk_rsa(zeros, sizeof(zeros), k->e, k->e_len, KID));
    assert_null(jose_jwk_rsa(k->n, 0, k->e, k->e_len, KID));
    assert_null(jose_jwk_rsa(k->n, k->n_len, zeros, 1, KID));
    assert_null(jose_jwk_rsa(k->n, k->n_len, k->e, k->e_len, NULL));
    assert_null(jose_jwk_rsa(k->n, k->n_len, k->e, k->e_len, "\xff\xfe"));
}

static void test_pem_round_trips_to_the_same_n_and_e(void **state)
{
    rsa_fixture *k = *state;
    char *pem = jose_rsa_public_pem(k->n, k->n_len, k->e, k->e_len);
    assert_non_null(pem);
    assert_int_equal(strncmp(pem, "-----BEGIN PUBLIC KEY-----\n", 27), 0);
    assert_non_null(strstr(pem, "-----END PUBLIC KEY-----\n"));

    BIO *bio = BIO_new_mem_buf(pem, -1);
    assert_non_null(bio);
    EVP_PKEY *back = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    assert_non_null(back);
    uint8_t n[JOSE_SIG_MAX], e[8];
    size_t n_len = bn_bytes(back, OSSL_PKEY_PARAM_RSA_N, n, sizeof(n));
    size_t e_len = bn_bytes(back, OSSL_PKEY_PARAM_RSA_E, e, sizeof(e));
    assert_int_equal(n_len, k->n_len);
    assert_memory_equal(n, k->n, n_len);
    assert_int_equal(e_len, k->e_len);
    assert_memory_equal(e, k->e, e_len);
    assert_int_equal(EVP_PKEY_eq(back, k->pkey), 1);
    EVP_PKEY_free(back);
    BIO_free(bio);
    free(pem);
}

static void test_pem_refuses_empty_or_zero_key(void **state)
{
    rsa_fixture *k = *state;
    static const uint8_t zeros[2] = {0};
    assert_null(jose_rsa_public_pem(k->n, 0, k->e, k->e_len));
    assert_null(jose_rsa_public_pem(zeros, sizeof(zeros), k->e, k->e_len));
    assert_null(jose_rsa_public_pem(k->n, k->n_len, NULL, 0));
}

static void test_rs256_verifies_openssl_signature(void **state)
{
    rsa_fixture *k = *state;
    static const char msg[] = "the bytes a signer asked for";
    uint8_t sig[JOSE_SIG_MAX];
    size_t sig_len = openssl_sign(k->pkey, msg, sizeof(msg) - 1, sig, sizeof(sig));
    assert_int_equal(
        jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, msg, sizeof(msg) - 1, sig, sig_len), 1);
    sig_len = openssl_sign(k->pkey, "", 0, sig, sizeof(sig));
    assert_int_equal(jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, NULL, 0, sig, sig_len), 1);
}

static void test_rs256_verifies_rfc7515_a2_example(void **state)
{
    (void)state;
    uint8_t n[256], sig[256];
    static const uint8_t e[] = {1, 0, 1};
    size_t n_len = decode_ok(A2_N, n, sizeof(n));
    size_t sig_len = decode_ok(A2_SIGNATURE, sig, sizeof(sig));
    assert_int_equal(jose_rs256_verify(n, n_len, e, sizeof(e), A2_SIGNING_INPUT,
                                       strlen(A2_SIGNING_INPUT), sig, sig_len),
                     1);
}

static void test_rs256_rejects_flipped_bit_in_message_or_signature(void **state)
{
    rsa_fixture *k = *state;
    uint8_t msg[64], sig[JOSE_SIG_MAX];
    assert_int_equal(RAND_bytes(msg, sizeof(msg)), 1);
    size_t sig_len = openssl_sign(k->pkey, msg, sizeof(msg), sig, sizeof(sig));
    msg[17] ^= 0x01;
    assert_int_equal(
        jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, msg, sizeof(msg), sig, sig_len), 0);
    msg[17] ^= 0x01;
    sig[sig_len - 1] ^= 0x80;
    assert_int_equal(
        jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, msg, sizeof(msg), sig, sig_len), 0);
    sig[sig_len - 1] ^= 0x80;
    assert_int_equal(
        jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, msg, sizeof(msg), sig, sig_len), 1);
}

static void test_rs256_rejects_wrong_length_or_out_of_range_signature(void **state)
{
    rsa_fixture *k = *state;
    uint8_t sig[JOSE_SIG_MAX], padded[JOSE_SIG_MAX + 1] = {0};
    size_t sig_len = openssl_sign(k->pkey, "m", 1, sig, sizeof(sig));
    assert_int_equal(jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, "m", 1, sig, sig_len - 1),
                     0);
    assert_int_equal(jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, "m", 1, sig, 0), 0);
    memcpy(padded + 1, sig, sig_len); /* the same value with a leading zero byte */
    assert_int_equal(jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, "m", 1, padded, sig_len + 1),
                     0);
    memset(sig, 0xff, sig_len); /* a value above n */
    assert_int_equal(jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, "m", 1, sig, sig_len), 0);
}

static void test_rs256_rejects_signature_under_another_exponent(void **state)
{
    rsa_fixture *k = *state;
    static const uint8_t e3[] = {3};
    uint8_t sig[JOSE_SIG_MAX];
    size_t sig_len = openssl_sign(k->pkey, "m", 1, sig, sizeof(sig));
    assert_int_equal(jose_rs256_verify(k->n, k->n_len, e3, sizeof(e3), "m", 1, sig, sig_len), 0);
}

static void test_rs256_errors_on_unusable_key(void **state)
{
    rsa_fixture *k = *state;
    uint8_t sig[JOSE_SIG_MAX] = {1};
    static const uint8_t zeros[3] = {0};
    assert_int_equal(jose_rs256_verify(k->n, 0, k->e, k->e_len, "m", 1, sig, 256), -1);
    assert_int_equal(jose_rs256_verify(zeros, 3, k->e, k->e_len, "m", 1, sig, 256), -1);
    assert_int_equal(jose_rs256_verify(k->n, k->n_len, NULL, 0, "m", 1, sig, 256), -1);
}

/* ---- JWS compact ----------------------------------------------------------------------- */

static void test_jws_begin_writes_rfc7515_a2_signing_input(void **state)
{
    (void)state;
    char buf[256];
    size_t slen = 0;
    assert_int_equal(jose_jws_begin(A2_HEADER, strlen(A2_HEADER), A2_PAYLOAD, strlen(A2_PAYLOAD),
                                    buf, sizeof(buf), &slen),
                     0);
    assert_string_equal(buf, A2_SIGNING_INPUT);
    assert_int_equal(slen, strlen(A2_SIGNING_INPUT));
}

static void test_jws_built_with_begin_finish_verifies_and_parses_back(void **state)
{
    rsa_fixture *k = *state;
    static const char hdr[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"" KID "\"}";
    static const char claims[] = "{\"sub\":\"alice\",\"iat\":1700000000,\"exp\":1700003600}";
    size_t total;
    char *jws = build_jws(k, hdr, claims, strlen(claims), &total);

    jose_jws p;
    assert_int_equal(jose_jws_parse(jws, total, &p), 0);
    assert_int_equal(p.payload_len, strlen(claims));
    assert_memory_equal(p.payload, claims, p.payload_len);
    assert_int_equal(p.payload[p.payload_len], '\0');
    json_t *want = json_loads(hdr, 0, NULL);
    assert_non_null(want);
    assert_true(json_equal(p.header, want));
    json_decref(want);
    assert_int_equal(p.sig_len, k->n_len);
    assert_int_equal(jws[p.signing_input_len], '.');
    assert_int_equal(jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, jws, p.signing_input_len,
                                       p.sig, p.sig_len),
                     1);
    jose_jws_free(&p);
    jose_jws_free(&p); /* twice is fine */
    free(jws);
}

static void test_jws_parse_reads_rfc7515_a2_example(void **state)
{
    (void)state;
    static const char jws[] = A2_SIGNING_INPUT "." A2_SIGNATURE;
    jose_jws p;
    assert_int_equal(jose_jws_parse(jws, strlen(jws), &p), 0);
    assert_string_equal(json_string_value(json_object_get(p.header, "alg")), "RS256");
    assert_int_equal(p.payload_len, strlen(A2_PAYLOAD));
    assert_memory_equal(p.payload, A2_PAYLOAD, p.payload_len);
    assert_int_equal(p.sig_len, 256);
    assert_int_equal(p.signing_input_len, strlen(A2_SIGNING_INPUT));
    jose_jws_free(&p);
}

static void test_jws_with_tampered_payload_or_signature_fails_verification(void **state)
{
    rsa_fixture *k = *state;
    static const char claims[] = "{\"sub\":\"alice\",\"admin\":false}";
    size_t total;
    char *jws = build_jws(k, "{\"alg\":\"RS256\"}", claims, strlen(claims), &total);
    jose_jws p;

    /* Swap the payload for another valid one: {"sub":"alice","admin":true}. */
    char forged[1024], payload_b64[128];
    static const char evil[] = "{\"sub\":\"alice\",\"admin\":true}";
    encode_into(evil, strlen(evil), payload_b64, sizeof(payload_b64));
    const char *d1 = strchr(jws, '.'), *d2 = strchr(d1 + 1, '.');
    snprintf(forged, sizeof(forged), "%.*s.%s%s", (int)(d1 - jws), jws, payload_b64, d2);
    assert_int_equal(jose_jws_parse(forged, strlen(forged), &p), 0);
    assert_int_equal(jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, forged, p.signing_input_len,
                                       p.sig, p.sig_len),
                     0);
    jose_jws_free(&p);

    /* Flip one bit of the signature bytes and re-encode. */
    assert_int_equal(jose_jws_parse(jws, total, &p), 0);
    p.sig[10] ^= 0x04;
    assert_int_equal(jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, jws, p.signing_input_len,
                                       p.sig, p.sig_len),
                     0);
    p.sig[10] ^= 0x04;
    assert_int_equal(jose_rs256_verify(k->n, k->n_len, k->e, k->e_len, jws, p.signing_input_len,
                                       p.sig, p.sig_len),
                     1);
    jose_jws_free(&p);
    free(jws);
}

static void test_jws_max_len_is_exact_and_begin_finish_refuse_one_byte_less(void **state)
{
    (void)state;
    static const uint8_t sig[256] = {7};
    const char *h = "{\"alg\":\"RS256\"}", *pl = "{\"a\":1}";
    size_t hlen = strlen(h), plen = strlen(pl);
    size_t cap = jose_jws_max_len(hlen, plen, sizeof(sig)), slen, total;
    assert_int_equal(cap, 20 + 1 + 10 + 1 + 342 + 1);
    char *buf = malloc(cap);
    assert_non_null(buf);

    assert_int_equal(jose_jws_begin(h, hlen, pl, plen, buf, 20 + 1 + 10, &slen), -1);
    assert_int_equal(jose_jws_begin(h, hlen, pl, plen, buf, 20 + 1 + 10 + 1, &slen), 0);
    assert_int_equal(slen, 31);
    assert_int_equal(jose_jws_finish(buf, cap - 1, slen, sig, sizeof(sig), &total), -1);
    assert_int_equal(buf[slen], '\0'); /* untouched */
    assert_int_equal(jose_jws_finish(buf, cap, slen, sig, sizeof(sig), &total), 0);
    assert_int_equal(total, cap - 1);
    assert_int_equal(strlen(buf), total);
    free(buf);
}

static void test_jws_finish_refuses_empty_or_oversized_signature(void **state)
{
    (void)state;
    static const uint8_t sig[JOSE_SIG_MAX + 1];
    char buf[2048];
    size_t slen, total;
    assert_int_equal(jose_jws_begin("{}", 2, "{}", 2, buf, sizeof(buf), &slen), 0);
    assert_int_equal(jose_jws_finish(buf, sizeof(buf), slen, sig, 0, &total), -1);
    assert_int_equal(jose_jws_finish(buf, sizeof(buf), slen, NULL, 1, &total), -1);
    assert_int_equal(jose_jws_finish(buf, sizeof(buf), slen, sig, JOSE_SIG_MAX + 1, &total), -1);
    assert_int_equal(jose_jws_finish(buf, sizeof(buf), sizeof(buf), sig, 1, &total), -1);
    assert_int_equal(jose_jws_finish(buf, sizeof(buf), slen, sig, JOSE_SIG_MAX, &total), 0);
}

static void test_jws_max_len_guards_size_t_overflow(void **state)
{
    (void)state;
    char buf[8];
    size_t slen;
    assert_true(jose_jws_max_len(SIZE_MAX, 0, 0) == SIZE_MAX);
    assert_true(jose_jws_max_len(SIZE_MAX / 2, SIZE_MAX / 2, 0) == SIZE_MAX);
    assert_true(jose_jws_max_len(0, 0, SIZE_MAX / 4 * 3) == SIZE_MAX);
    assert_int_equal(jose_jws_begin("x", SIZE_MAX / 2, "y", SIZE_MAX / 2, buf, sizeof(buf), &slen),
                     -1);
    assert_int_equal(jose_jws_max_len(0, 0, 0), 3);
}

static void test_jws_parse_accepts_empty_payload(void **state)
{
    (void)state;
    jose_jws p;
    assert_int_equal(jose_jws_parse("e30..AA", 7, &p), 0);
    assert_int_equal(p.payload_len, 0);
    assert_non_null(p.payload);
    assert_int_equal(p.sig_len, 1);
    assert_int_equal(p.signing_input_len, 4);
    jose_jws_free(&p);
}

static void test_jws_parse_rejects_other_than_two_dots(void **state)
{
    (void)state;
    assert_true(parse_fails("e30"));
    assert_true(parse_fails("e30.e30"));
    assert_true(parse_fails("e30.e30AA"));
    assert_true(parse_fails("e30.e30.AA.AA"));
    assert_true(parse_fails("e30.e30.AA."));
    assert_true(parse_fails("e30..e30.AA"));
    assert_true(parse_fails("..."));
    assert_true(parse_fails(""));
    assert_false(parse_fails("e30.e30.AA"));
}

static void test_jws_parse_rejects_bad_base64url_in_each_part(void **state)
{
    (void)state;
    assert_true(parse_fails("e30=.e30.AA"));
    assert_true(parse_fails("e30.e30=.AA"));
    assert_true(parse_fails("e30.e30.AA=="));
    assert_true(parse_fails("e30.e3+.AA"));
    assert_true(parse_fails("e30.e30.A/"));
    assert_true(parse_fails("e30.e30.A"));    /* length 1 mod 4 */
    assert_true(parse_fails("e30.e31.AA"));   /* non-canonical trailing bits */
    assert_true(parse_fails("e30.e30.AB"));   /* non-canonical trailing bits */
    assert_true(parse_fails("e30 .e30.AA"));  /* whitespace */
    assert_true(parse_fails("e30.e30.AA\n")); /* trailing newline */
    assert_true(parse_fails("e30.e30."));     /* empty signature */
    assert_false(parse_fails("e30.e30.AA"));
}

static void test_jws_parse_rejects_embedded_nul_in_compact_form(void **state)
{
    (void)state;
    jose_jws p;
    assert_int_equal(jose_jws_parse("e30.e30.AA\0", 11, &p), -1);
    assert_int_equal(jose_jws_parse("e30.e\0.AA", 9, &p), -1);
}

static void test_jws_parse_rejects_non_object_header(void **state)
{
    (void)state;
    static const char *const bad[] = {"[]", "\"RS256\"", "1",    "null",      "true",
                                      "",   "{} x",      "{}{}", "{\"alg\":", "{\"a\":1,}"};
    char jws[512];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        jws_with_header(bad[i], strlen(bad[i]), jws, sizeof(jws));
        assert_true(parse_fails(jws));
    }
    static const char nul[] = "{\"alg\":\"RS256\"}\0";
    jws_with_header(nul, sizeof(nul) - 1, jws, sizeof(jws));
    assert_true(parse_fails(jws));
    jws_with_header("{}", 2, jws, sizeof(jws));
    assert_false(parse_fails(jws));
}

static void test_jws_parse_rejects_duplicate_header_keys(void **state)
{
    (void)state;
    static const char dup[] = "{\"alg\":\"RS256\",\"alg\":\"none\"}";
    char jws[512];
    jws_with_header(dup, strlen(dup), jws, sizeof(jws));
    assert_true(parse_fails(jws));
    static const char nested_ok[] = "{\"alg\":\"RS256\",\"x\":{\"alg\":1}}";
    jws_with_header(nested_ok, strlen(nested_ok), jws, sizeof(jws));
    assert_false(parse_fails(jws));
}

static void test_jws_parse_bounds_signature_at_sig_max(void **state)
{
    (void)state;
    static const uint8_t sig[JOSE_SIG_MAX + 1] = {1};
    char jws[1024 + 16], s[1024];
    encode_into(sig, JOSE_SIG_MAX, s, sizeof(s));
    snprintf(jws, sizeof(jws), "e30.e30.%s", s);
    assert_false(parse_fails(jws));
    encode_into(sig, JOSE_SIG_MAX + 1, s, sizeof(s));
    snprintf(jws, sizeof(jws), "e30.e30.%s", s);
    assert_true(parse_fails(jws));
}

static void test_jws_parse_accepts_jws_max_and_rejects_one_byte_more(void **state)
{
    (void)state;
    /* "e30" "." payload "." sig: 3 + 1 + 65528 + 1 + 3 = JOSE_JWS_MAX with a 2-byte sig. */
    size_t payload_chars = JOSE_JWS_MAX - 8, payload_bytes = payload_chars / 4 * 3;
    uint8_t *payload = calloc(1, payload_bytes);
    char *jws = malloc(JOSE_JWS_MAX + 2);
    assert_non_null(payload);
    assert_non_null(jws);
    memcpy(jws, "e30.", 4);
    assert_int_equal(jose_b64url_encode(payload, payload_bytes, jws + 4, JOSE_JWS_MAX),
                     payload_chars);
    memcpy(jws + 4 + payload_chars, ".AAA", 5); /* 2-byte signature */
    assert_int_equal(strlen(jws), JOSE_JWS_MAX);
    assert_false(parse_fails(jws));

    memcpy(jws + 4 + payload_chars, ".AAAA", 6); /* 3-byte signature: one byte too long */
    assert_int_equal(strlen(jws), JOSE_JWS_MAX + 1);
    assert_true(parse_fails(jws));
    free(jws);
    free(payload);
}

int main(void)
{
    const struct CMUnitTest b64url[] = {
        cmocka_unit_test(test_b64url_encodes_rfc4648_vectors),
        cmocka_unit_test(test_b64url_uses_dash_and_underscore_for_62_and_63),
        cmocka_unit_test(test_b64url_decodes_rfc4648_vectors),
        cmocka_unit_test(test_b64url_round_trips_random_lengths_0_to_300),
        cmocka_unit_test(test_b64url_encode_refuses_buffer_without_room_for_nul),
        cmocka_unit_test(test_b64url_encoded_len_guards_size_t_overflow),
        cmocka_unit_test(test_b64url_decode_accepts_empty_input),
        cmocka_unit_test(test_b64url_decode_rejects_padding),
        cmocka_unit_test(test_b64url_decode_rejects_standard_alphabet),
        cmocka_unit_test(test_b64url_decode_rejects_whitespace),
        cmocka_unit_test(test_b64url_decode_rejects_every_non_alphabet_byte_in_every_position),
        cmocka_unit_test(test_b64url_decode_rejects_embedded_nul),
        cmocka_unit_test(test_b64url_decode_rejects_length_one_mod_four),
        cmocka_unit_test(test_b64url_decode_rejects_nonzero_unused_trailing_bits),
        cmocka_unit_test(test_b64url_decode_refuses_too_small_output),
        cmocka_unit_test(test_random_hex_is_lowercase_hex_of_twice_the_bytes),
        cmocka_unit_test(test_random_b64url_fills_exactly_and_refuses_small_buffer),
        cmocka_unit_test(test_random_refuses_more_than_random_max),
    };
    const struct CMUnitTest rsa[] = {
        cmocka_unit_test(test_jwk_has_rsa_members_for_a_real_key),
        cmocka_unit_test(test_jwk_strips_leading_zero_bytes_of_n_and_e),
        cmocka_unit_test(test_jwk_of_rfc7515_key_has_its_exact_n),
        cmocka_unit_test(test_jwk_refuses_zero_modulus_null_kid_and_bad_utf8_kid),
        cmocka_unit_test(test_pem_round_trips_to_the_same_n_and_e),
        cmocka_unit_test(test_pem_refuses_empty_or_zero_key),
        cmocka_unit_test(test_rs256_verifies_openssl_signature),
        cmocka_unit_test(test_rs256_verifies_rfc7515_a2_example),
        cmocka_unit_test(test_rs256_rejects_flipped_bit_in_message_or_signature),
        cmocka_unit_test(test_rs256_rejects_wrong_length_or_out_of_range_signature),
        cmocka_unit_test(test_rs256_rejects_signature_under_another_exponent),
        cmocka_unit_test(test_rs256_errors_on_unusable_key),
    };
    const struct CMUnitTest jws[] = {
        cmocka_unit_test(test_jws_begin_writes_rfc7515_a2_signing_input),
        cmocka_unit_test(test_jws_built_with_begin_finish_verifies_and_parses_back),
        cmocka_unit_test(test_jws_parse_reads_rfc7515_a2_example),
        cmocka_unit_test(test_jws_with_tampered_payload_or_signature_fails_verification),
        cmocka_unit_test(test_jws_max_len_is_exact_and_begin_finish_refuse_one_byte_less),
        cmocka_unit_test(test_jws_finish_refuses_empty_or_oversized_signature),
        cmocka_unit_test(test_jws_max_len_guards_size_t_overflow),
        cmocka_unit_test(test_jws_parse_accepts_empty_payload),
        cmocka_unit_test(test_jws_parse_rejects_other_than_two_dots),
        cmocka_unit_test(test_jws_parse_rejects_bad_base64url_in_each_part),
        cmocka_unit_test(test_jws_parse_rejects_embedded_nul_in_compact_form),
        cmocka_unit_test(test_jws_parse_rejects_non_object_header),
        cmocka_unit_test(test_jws_parse_rejects_duplicate_header_keys),
        cmocka_unit_test(test_jws_parse_bounds_signature_at_sig_max),
        cmocka_unit_test(test_jws_parse_accepts_jws_max_and_rejects_one_byte_more),
    };
    int failed = 0;
    failed += cmocka_run_group_tests_name("jose b64url", b64url, NULL, NULL);
    failed += cmocka_run_group_tests_name("jose rsa", rsa, rsa_setup, rsa_teardown);
    failed += cmocka_run_group_tests_name("jose jws", jws, rsa_setup, rsa_teardown);
    return failed == 0 ? 0 : 1;
}
