#include "base/hex.h"

#include <string.h>

void hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char digits[16] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0x0f];
    }
    out[2 * n] = '\0';
}

int hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int hex_decode(const char *in, size_t len, uint8_t *out, size_t n)
{
    if (in == NULL || len != 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_digit(in[2 * i]), lo = hex_digit(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

bool hex_digits(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (hex_digit(s[i]) < 0)
            return false;
    return true;
}

bool hex_string(const char *s, size_t n)
{
    return s != NULL && strnlen(s, n + 1) == n && hex_digits(s, n);
}
