#include "base/text.h"

bool txt_is_printable(char c)
{
    return (unsigned char)c >= 0x20 && (unsigned char)c <= 0x7e;
}

bool txt_is_visible(char c)
{
    return (unsigned char)c > 0x20 && (unsigned char)c <= 0x7e;
}

bool txt_printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!txt_is_printable(s[i]))
            return false;
    return true;
}

bool txt_visible(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!txt_is_visible(s[i]))
            return false;
    return true;
}

bool txt_printable_str(const char *s)
{
    for (; s != NULL && *s != '\0'; s++)
        if (!txt_is_printable(*s))
            return false;
    return true;
}

size_t txt_copy_printable(char *dst, size_t cap, const char *src, size_t max)
{
    if (cap == 0)
        return 0;
    size_t n = 0;
    for (; src != NULL && src[n] != '\0' && n < max && n + 1 < cap; n++)
        dst[n] = txt_is_printable(src[n]) ? src[n] : '?';
    dst[n] = '\0';
    return n;
}
