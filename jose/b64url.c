/* jose: unpadded base64url, strict decoding, and random text. See jose.h for contracts. */
#include "jose/jose.h"
#include "base/hex.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#define B64_BAD 0xff

static const char b64_alphabet[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Byte -> 6-bit value, or B64_BAD for every byte outside [A-Za-z0-9_-]: '=', '+', '/',
 * whitespace and NUL included. */
#define X B64_BAD
static const uint8_t b64_value[256] = {
    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,
    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,
    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    0x3e, X,    X,
    0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, X,    X,    X,    X,    X,    X,
    X,    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
    0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, X,    X,    X,    X,    0x3f,
    X,    0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, X,    X,    X,    X,    X,
    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,
    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,
    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,
    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,
    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,
    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,
    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,
    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,    X,
};
#undef X

size_t jose_b64url_encoded_len(size_t n)
{
    size_t groups = n / 3, rem = n % 3;
    /* Catch size_t overflow: 4 * groups + 3 must fit. */
    if (groups > (SIZE_MAX - 3) / 4)
        return SIZE_MAX;
    return groups * 4 + (rem == 0 ? 0 : rem + 1);
}

size_t jose_b64url_encode(const void *in, size_t n, char *out, size_t out_cap)
{
    size_t need = jose_b64url_encoded_len(n);
    if (need == SIZE_MAX || need >= out_cap) {
        if (out != NULL && out_cap >= 1)
            out[0] = '\0';
        return 0;
    }
    const uint8_t *p = in;
    char *o = out;
    size_t i = 0;
    for (; n - i >= 3; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        o[0] = b64_alphabet[v >> 18];
        o[1] = b64_alphabet[(v >> 12) & 0x3f];
        o[2] = b64_alphabet[(v >> 6) & 0x3f];
        o[3] = b64_alphabet[v & 0x3f];
        o += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        o[0] = b64_alphabet[v >> 18];
        o[1] = b64_alphabet[(v >> 12) & 0x3f];
        o += 2;
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        o[0] = b64_alphabet[v >> 18];
        o[1] = b64_alphabet[(v >> 12) & 0x3f];
        o[2] = b64_alphabet[(v >> 6) & 0x3f];
        o += 3;
    }
    *o = '\0';
    return need;
}

int jose_b64url_decode(const char *in, size_t n, uint8_t *out, size_t out_cap, size_t *out_len)
{
    size_t rem = n % 4;
    if (rem == 1)
        return -1;
    size_t need = n / 4 * 3 + (rem == 0 ? 0 : rem - 1); /* <= n: no overflow */
    if (need > out_cap || (need > 0 && out == NULL))
        return -1;

    const unsigned char *s = (const unsigned char *)in;
    uint8_t *o = out;
    size_t i = 0;
    for (; n - i >= 4; i += 4) {
        uint8_t a = b64_value[s[i]], b = b64_value[s[i + 1]];
        uint8_t c = b64_value[s[i + 2]], d = b64_value[s[i + 3]];
        if (((a | b | c | d) & 0xc0) != 0) /* B64_BAD is the only value with these bits */
            return -1;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | d;
        o[0] = (uint8_t)(v >> 16);
        o[1] = (uint8_t)(v >> 8);
        o[2] = (uint8_t)v;
        o += 3;
    }
    if (rem == 2) {
        uint8_t a = b64_value[s[i]], b = b64_value[s[i + 1]];
        /* Invalid values have the top bits set; the low 4 bits of b are unused. */
        if (((a | b) & 0xc0) != 0 || (b & 0x0f) != 0)
            return -1;
        o[0] = (uint8_t)(a << 2 | b >> 4);
    } else if (rem == 3) {
        uint8_t a = b64_value[s[i]], b = b64_value[s[i + 1]], c = b64_value[s[i + 2]];
        /* The low 2 bits of c are unused. */
        if (((a | b | c) & 0xc0) != 0 || (c & 0x03) != 0)
            return -1;
        o[0] = (uint8_t)(a << 2 | b >> 4);
        o[1] = (uint8_t)(b << 4 | c >> 2);
    }
    if (out_len != NULL)
        *out_len = need;
    return 0;
}

int jose_random_hex(char *out, size_t nbytes)
{
    uint8_t buf[JOSE_RANDOM_MAX];
    if (nbytes > JOSE_RANDOM_MAX)
        return -1;
    if (RAND_bytes(buf, (int)nbytes) != 1) {
        OPENSSL_cleanse(buf, nbytes);
        out[0] = '\0';
        return -1;
    }
    hex_encode(buf, nbytes, out);
    OPENSSL_cleanse(buf, nbytes);
    return 0;
}

int jose_random_b64url(char *out, size_t out_cap, size_t nbytes)
{
    uint8_t buf[JOSE_RANDOM_MAX];
    if (out_cap >= 1)
        out[0] = '\0';
    if (nbytes > JOSE_RANDOM_MAX || jose_b64url_encoded_len(nbytes) >= out_cap)
        return -1;
    if (RAND_bytes(buf, (int)nbytes) != 1) {
        OPENSSL_cleanse(buf, nbytes);
        return -1;
    }
    jose_b64url_encode(buf, nbytes, out, out_cap);
    OPENSSL_cleanse(buf, nbytes);
    return 0;
}
