/* jose: JWS compact serialisation, built in place and parsed with bounds. See jose.h for
 * contracts. */
#include "jose/jose.h"

#include <stdlib.h>
#include <string.h>

static size_t jws_add(size_t a, size_t b);
static uint8_t *jws_decode_alloc(const char *in, size_t n, size_t *out_len);

/* a + b, or SIZE_MAX when that overflows (SIZE_MAX in stays SIZE_MAX). */
static size_t jws_add(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

/* The decoding of n characters of strict base64url in a fresh buffer with a NUL after the
 * last byte, or NULL (bad base64url or out of memory). */
static uint8_t *jws_decode_alloc(const char *in, size_t n, size_t *out_len)
{
    uint8_t *buf = malloc(n / 4 * 3 + 3); /* n <= JOSE_JWS_MAX: no overflow */
    if (buf == NULL)
        return NULL;
    if (jose_b64url_decode(in, n, buf, n / 4 * 3 + 2, out_len) != 0) {
        free(buf);
        return NULL;
    }
    buf[*out_len] = '\0';
    return buf;
}

size_t jose_jws_max_len(size_t hlen, size_t plen, size_t sig_len)
{
    size_t len = jws_add(jose_b64url_encoded_len(hlen), jose_b64url_encoded_len(plen));
    len = jws_add(len, jose_b64url_encoded_len(sig_len));
    return jws_add(len, 3); /* two dots and the NUL */
}

int jose_jws_begin(const char *header_json, size_t hlen, const char *payload_json, size_t plen,
                   char *buf, size_t cap, size_t *signing_input_len)
{
    size_t h = jose_b64url_encoded_len(hlen), p = jose_b64url_encoded_len(plen);
    size_t need = jws_add(jws_add(h, p), 2); /* the dot and the NUL */
    if (need > cap) {
        if (cap >= 1)
            buf[0] = '\0';
        return -1;
    }
    jose_b64url_encode(header_json, hlen, buf, cap);
    buf[h] = '.';
    jose_b64url_encode(payload_json, plen, buf + h + 1, cap - h - 1);
    *signing_input_len = h + 1 + p;
    return 0;
}

int jose_jws_finish(char *buf, size_t cap, size_t signing_input_len, const uint8_t *sig,
                    size_t sig_len, size_t *total_len)
{
    if (sig == NULL || sig_len == 0 || sig_len > JOSE_SIG_MAX)
        return -1;
    size_t s = jose_b64url_encoded_len(sig_len);
    if (signing_input_len >= cap || cap - signing_input_len < s + 2) /* the dot and the NUL */
        return -1;
    buf[signing_input_len] = '.';
    jose_b64url_encode(sig, sig_len, buf + signing_input_len + 1, cap - signing_input_len - 1);
    if (total_len != NULL)
        *total_len = signing_input_len + 1 + s;
    return 0;
}

int jose_jws_parse(const char *compact, size_t len, jose_jws *out)
{
    memset(out, 0, sizeof(*out));
    if (compact == NULL || len == 0 || len > JOSE_JWS_MAX)
        return -1;
    const char *end = compact + len;
    const char *d1 = memchr(compact, '.', len);
    const char *d2 = d1 == NULL ? NULL : memchr(d1 + 1, '.', (size_t)(end - d1 - 1));
    if (d2 == NULL || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)) != NULL)
        return -1; /* not exactly two dots */

    /* The signature first: bounded, on no heap. */
    if (jose_b64url_decode(d2 + 1, (size_t)(end - d2 - 1), out->sig, sizeof(out->sig),
                           &out->sig_len) != 0 ||
        out->sig_len == 0)
        goto fail;

    size_t hlen;
    uint8_t *hjson = jws_decode_alloc(compact, (size_t)(d1 - compact), &hlen);
    if (hjson == NULL)
        goto fail;
    /* Nothing may follow the object (no JSON_DISABLE_EOF_CHECK); a NUL inside fails. */
    out->header = json_loadb((const char *)hjson, hlen, JSON_REJECT_DUPLICATES, NULL);
    free(hjson);
    if (!json_is_object(out->header))
        goto fail;

    out->payload = jws_decode_alloc(d1 + 1, (size_t)(d2 - d1 - 1), &out->payload_len);
    if (out->payload == NULL)
        goto fail;
    out->signing_input_len = (size_t)(d2 - compact);
    return 0;
fail:
    jose_jws_free(out);
    return -1;
}

void jose_jws_free(jose_jws *jws)
{
    if (jws == NULL)
        return;
    json_decref(jws->header);
    free(jws->payload);
    memset(jws, 0, sizeof(*jws));
}
