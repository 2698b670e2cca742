/*
 * jose: the text formats of JOSE that the appliance and the verifier share. Unpadded
 * base64url (RFC 4648 section 5, strict on input), the RSA public key as a JWK (RFC 7517)
 * and as a SubjectPublicKeyInfo PEM, RS256 verification, and the JWS compact
 * serialisation (RFC 7515 section 7.1): built in place for the signing path, parsed with
 * bounds for the verifier. Random hex and base64url strings (jti, secrets) live here too.
 *
 * What it owns: no state, no locks; every function may be called from any number of
 * threads at once. Memory it hands out (json_t, PEM strings, the payload of a parsed
 * jose_jws) belongs to the caller afterwards. Bounds it enforces: a JWS it parses is at
 * most JOSE_JWS_MAX bytes, a signature at most JOSE_SIG_MAX bytes, an RSA modulus or
 * exponent at most JOSE_RSA_MAX bytes (leading zero bytes not counted).
 *
 * Lengths of byte and text inputs are explicit (only a kid is a C string), so an embedded
 * NUL is just a byte, and rejected wherever base64url or JSON forbids it. Size arithmetic is
 * checked for size_t overflow inside each function, never trusted from the caller.
 *
 * The signing path, without a copy of the signing input:
 *
 *   size_t cap = jose_jws_max_len(hlen, plen, JOSE_SIG_MAX), slen, total;
 *   char *jws = malloc(cap);
 *   jose_jws_begin(hdr, hlen, claims, plen, jws, cap, &slen);  // jws[0..slen) is signed
 *   ... sign jws, slen bytes -> sig, sig_len ...
 *   jose_jws_finish(jws, cap, slen, sig, sig_len, &total);     // jws is the token
 */
#ifndef JOSE_JOSE_H
#define JOSE_JOSE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define JOSE_SIG_MAX 512     /* bytes of signature: RSA-4096 */
#define JOSE_JWS_MAX 65536   /* bytes of a compact JWS that jose_jws_parse accepts */
#define JOSE_RSA_MAX 1024    /* bytes of modulus or exponent: RSA-8192 */
#define JOSE_RANDOM_MAX 4096 /* bytes of randomness per jose_random_* call */

/* ---- base64url (RFC 4648 section 5, no padding) ---------------------------------------- */

/* Number of characters (not counting the NUL) that n bytes encode to: 4*floor(n/3) plus
 * 0, 2 or 3. SIZE_MAX when that does not fit in a size_t (no buffer can hold it).
 *
 *   size_t cap = jose_b64url_encoded_len(len) + 1;   // check for SIZE_MAX first
 *   char *text = malloc(cap);
 */
size_t jose_b64url_encoded_len(size_t n);

/* Encodes n bytes of in as unpadded base64url into out and NUL-terminates it. Returns the
 * number of characters written (not counting the NUL), or 0 when out_cap cannot hold
 * jose_b64url_encoded_len(n) + 1 bytes (out is then left untouched, except that out[0]
 * is set to NUL when out_cap >= 1). n == 0 writes "" and also returns 0: callers that may
 * encode nothing tell the cases apart by n. in may be NULL when n == 0; in and out must
 * not overlap. Table-driven, no allocation: this is on the signing path.
 *
 *   char b64[JOSE_SIG_MAX * 4 / 3 + 4];
 *   if (jose_b64url_encode(sig, sig_len, b64, sizeof(b64)) == 0) ... too small ...
 */
size_t jose_b64url_encode(const void *in, size_t n, char *out, size_t out_cap);

/* Decodes exactly n characters of unpadded base64url. Strict: rejects '=', '+', '/',
 * whitespace, NUL and every other byte outside [A-Za-z0-9_-], a length with n % 4 == 1,
 * and a last character whose unused low bits are not zero (a non-canonical encoding, so
 * that every byte string has exactly one accepted text). The decoded length is
 * 3*floor(n/4) plus 0, 1 or 2; out_cap must be at least that (n / 4 * 3 + 2 always
 * suffices). Returns 0 and stores the length in *out_len (if out_len is non-NULL), or -1
 * on any rejection or a too-small out_cap; after -1 the contents of out are unspecified.
 * in may be NULL when n == 0, out may be NULL when the decoded length is 0.
 *
 *   uint8_t b[64]; size_t blen;
 *   if (jose_b64url_decode(text, text_len, b, sizeof(b), &blen) != 0) ... reject ...
 */
int jose_b64url_decode(const char *in, size_t n, uint8_t *out, size_t out_cap, size_t *out_len);

/* ---- randomness (OpenSSL RAND_bytes) --------------------------------------------------- */

/* Writes 2*nbytes lowercase hex characters of fresh randomness and a NUL to out, which
 * must hold 2*nbytes + 1 bytes. nbytes is at most JOSE_RANDOM_MAX; 0 writes "". Returns 0,
 * or -1 (out set to "" when nbytes is in range) if nbytes is too large or RAND_bytes
 * fails. The random bytes are wiped from the stack before return.
 *
 *   char jti[2 * 16 + 1];
 *   if (jose_random_hex(jti, 16) != 0) ... no randomness ...
 */
int jose_random_hex(char *out, size_t nbytes);

/* As jose_random_hex, but nbytes random bytes as unpadded base64url: out_cap must be at
 * least jose_b64url_encoded_len(nbytes) + 1. Returns 0, or -1 (out set to "" when
 * out_cap >= 1) on a too-small out_cap, nbytes above JOSE_RANDOM_MAX, or RAND_bytes
 * failure.
 *
 *   char secret[44];   // 32 bytes -> 43 characters
 *   jose_random_b64url(secret, sizeof(secret), 32);
 */
int jose_random_b64url(char *out, size_t out_cap, size_t nbytes);

/* ---- RSA public keys ------------------------------------------------------------------- */

/* (n, e) are big-endian unsigned integers as PKCS#11 and OpenSSL export them. Leading zero
 * bytes are ignored everywhere below; after them each must be non-empty (not zero) and at
 * most JOSE_RSA_MAX bytes, else the function fails. */

/* A new JWK object, members in this order:
 *   {"kty":"RSA","use":"sig","alg":"RS256","kid":kid,"n":b64url(n),"e":b64url(e)}
 * with n and e stripped of leading zero bytes (RFC 7518 section 6.3.1). NULL when kid is
 * NULL or not UTF-8, when n or e is out of range, or when out of memory. The caller owns
 * the reference.
 *
 *   json_t *jwk = jose_jwk_rsa(pub.n, pub.n_len, pub.e, pub.e_len, kid_hex);
 *   json_array_append_new(keys, jwk);
 */
json_t *jose_jwk_rsa(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len,
                     const char *kid);

/* The public key as a PEM SubjectPublicKeyInfo ("-----BEGIN PUBLIC KEY-----...\n"),
 * NUL-terminated, malloc'd: the caller frees it. Built with EVP_PKEY_fromdata (no
 * deprecated RSA_* calls). NULL when n or e is out of range or OpenSSL fails.
 *
 *   char *pem = jose_rsa_public_pem(pub.n, pub.n_len, pub.e, pub.e_len);
 *   ... free(pem);
 */
char *jose_rsa_public_pem(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len);

/* RS256 (RSASSA-PKCS1-v1_5 with SHA-256, RFC 7518 section 3.3): does sig over msg verify
 * under (n, e)? Returns 1 valid; 0 invalid, which includes a signature whose length is not
 * the modulus length or whose value is not below n; -1 when (n, e) is out of range or
 * OpenSSL cannot set up the check. Treat anything but 1 as a rejection. Builds the key on
 * each call and leaves nothing new on the thread's OpenSSL error queue. msg may be NULL
 * when msg_len == 0.
 *
 *   if (jose_rs256_verify(n, n_len, e, e_len, jws, p.signing_input_len, p.sig, p.sig_len)
 *       != 1) ... reject ...
 */
int jose_rs256_verify(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len,
                      const void *msg, size_t msg_len, const uint8_t *sig, size_t sig_len);

/* The reverse of jose_jwk_rsa, for verifiers: decodes the "n" and "e" members of an RSA
 * JWK (strict base64url) into n and e, big-endian with leading zero bytes dropped. Checks
 * only what the key itself needs (kty "RSA", n and e strings of 1..JOSE_RSA_MAX bytes after
 * the zeros); use, alg and kid are the caller's to judge. Returns 0 and the lengths, or -1
 * (lengths set to 0). Both buffers hold JOSE_RSA_MAX bytes.
 *
 *   uint8_t n[JOSE_RSA_MAX], e[JOSE_RSA_MAX]; size_t n_len, e_len;
 *   if (jose_jwk_rsa_decode(jwk, n, &n_len, e, &e_len) != 0) ... skip this key ...
 */
int jose_jwk_rsa_decode(const json_t *jwk, uint8_t n[JOSE_RSA_MAX], size_t *n_len,
                        uint8_t e[JOSE_RSA_MAX], size_t *e_len);

/* The reverse of jose_rsa_public_pem: reads len bytes of one PEM SubjectPublicKeyInfo
 * ("-----BEGIN PUBLIC KEY-----") holding an RSA key into (n, e) as above. Returns 0, or
 * -1 (lengths set to 0) when it is not such a PEM, the key is not RSA, or n or e is out of
 * range. Leaves nothing new on the thread's OpenSSL error queue.
 *
 *   if (jose_rsa_public_from_pem(pem, pem_len, n, &n_len, e, &e_len) != 0) ... refuse ...
 */
int jose_rsa_public_from_pem(const char *pem, size_t len, uint8_t n[JOSE_RSA_MAX], size_t *n_len,
                             uint8_t e[JOSE_RSA_MAX], size_t *e_len);

/* ---- JWS compact serialisation --------------------------------------------------------- */

/* Bytes a buffer needs for b64url(header) "." b64url(payload) "." b64url(sig) and the
 * NUL: the cap to give jose_jws_begin and jose_jws_finish. SIZE_MAX on size_t overflow
 * (malloc then fails, and so would begin). Pass JOSE_SIG_MAX when the signature length is
 * not known yet. */
size_t jose_jws_max_len(size_t hlen, size_t plen, size_t sig_len);

/* Writes b64url(header_json) "." b64url(payload_json) and a NUL into buf; the bytes
 * before the NUL are the JWS signing input, and *signing_input_len receives their number.
 * The JSON is taken as given (not parsed or checked). Returns 0, or -1 when cap cannot
 * hold the signing input and its NUL (buf is then untouched but for buf[0] = NUL when
 * cap >= 1). A header or payload may be empty; its pointer may then be NULL. */
int jose_jws_begin(const char *header_json, size_t hlen, const char *payload_json, size_t plen,
                   char *buf, size_t cap, size_t *signing_input_len);

/* Appends "." b64url(sig) and a NUL to the signing input that jose_jws_begin left in
 * buf (signing_input_len bytes); *total_len (if non-NULL) receives the length of the
 * finished token, not counting the NUL. sig_len must be 1..JOSE_SIG_MAX. Returns 0, or -1
 * when sig_len is out of range or cap cannot hold the token and its NUL (buf is then
 * untouched). */
int jose_jws_finish(char *buf, size_t cap, size_t signing_input_len, const uint8_t *sig,
                    size_t sig_len, size_t *total_len);

/* A compact JWS taken apart by jose_jws_parse. */
typedef struct {
    json_t *header;            /* the protected header: a JSON object, duplicate keys refused */
    uint8_t *payload;          /* decoded payload, malloc'd, NUL-terminated for convenience */
    size_t payload_len;        /* its length, not counting that NUL */
    uint8_t sig[JOSE_SIG_MAX]; /* decoded signature */
    size_t sig_len;            /* 1..JOSE_SIG_MAX */
    size_t signing_input_len;  /* bytes of the compact form before the second '.' */
} jose_jws;

/* Parses len bytes of a compact JWS (no NUL needed; an embedded NUL is rejected). Accepts
 * exactly header "." payload "." signature with exactly two dots, each part strict
 * base64url (see jose_b64url_decode), len at most JOSE_JWS_MAX, a header that decodes to
 * a JSON object with no duplicate keys and nothing after it, and a signature of 1 to
 * JOSE_SIG_MAX bytes. The payload may be empty and is not interpreted. It checks the
 * form only: alg, kid and the signature are the caller's (verify compact[0..
 * signing_input_len) against sig). Returns 0 and fills *out, which the caller releases
 * with jose_jws_free; -1 on any rejection, with *out zeroed (jose_jws_free on it is
 * still safe).
 *
 *   jose_jws p;
 *   if (jose_jws_parse(tok, tok_len, &p) != 0) ... reject ...
 *   const char *alg = json_string_value(json_object_get(p.header, "alg"));
 *   ...
 *   jose_jws_free(&p);
 */
int jose_jws_parse(const char *compact, size_t len, jose_jws *out);

/* Releases what jose_jws_parse allocated and zeroes *jws. NULL and a zeroed struct are
 * fine; calling it twice is fine. */
void jose_jws_free(jose_jws *jws);

#endif
